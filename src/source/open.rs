//! Opening the source a plan names.

use std::time::Duration;

use super::chroma_dir::ChromaDir;
use super::chroma_http::{ChromaHttp, HttpOptions, RetryPolicy};
use super::{Source, SourceError};
use crate::plan::Source as SourceSpec;

/// Opens the plan's source for reading. A server is not contacted until
/// the first call.
pub fn open(spec: &SourceSpec) -> Result<Box<dyn Source>, SourceError> {
    match spec {
        SourceSpec::ChromaDir {
            path,
            tenant,
            database,
        } => Ok(Box::new(ChromaDir::open_in(path, tenant, database)?)),
        SourceSpec::ChromaHttp {
            url,
            tenant,
            database,
            token,
            token_header,
            timeout_secs,
            ca_cert,
        } => Ok(Box::new(ChromaHttp::new(HttpOptions {
            url: url.clone(),
            tenant: tenant.clone(),
            database: database.clone(),
            token: token.clone(),
            token_header: *token_header,
            timeout: Duration::from_secs(*timeout_secs),
            ca_cert: ca_cert.clone(),
            retry: RetryPolicy::STANDARD,
        })?)),
        SourceSpec::Jsonl { path, space } => {
            Ok(Box::new(super::jsonl::JsonlDir::open(path, *space)?))
        }
    }
}
