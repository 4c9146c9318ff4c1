//! Opening the source a plan names.

use super::chroma_dir::ChromaDir;
use super::{Source, SourceError};
use crate::plan::Source as SourceSpec;

/// Opens the plan's source for reading.
pub fn open(spec: &SourceSpec) -> Result<Box<dyn Source>, SourceError> {
    match spec {
        SourceSpec::ChromaDir { path } => Ok(Box::new(ChromaDir::open(path)?)),
        SourceSpec::ChromaHttp { url, .. } => Err(SourceError::Unsupported {
            what: format!("a Chroma server (`{url}`)"),
        }),
        SourceSpec::Jsonl { path, space } => {
            Ok(Box::new(super::jsonl::JsonlDir::open(path, *space)?))
        }
    }
}
