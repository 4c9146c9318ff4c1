//! Export: a collection as JSON Lines in the original tool's format, one
//! object per line, `{"doc_id","content","metadata","embedding"}` (plus
//! `"uri"` when the record has one), gzip-compressed when the file name ends
//! in `.gz`.
//!
//! Export streams: one source batch in memory at a time, whatever the
//! collection size. It writes to a hidden temporary name beside the output
//! and renames it when complete, so a file that exists is whole. Numbers
//! keep their exact values: metadata integers as integers (2^53 + 1 stays
//! 2^53 + 1), floats and vector components in their shortest round-trip
//! form, so export → `jsonl` source → verify compares equal. The same
//! writer makes the JSON Lines backup of a server source.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Serialize;

use crate::source::{Source, SourceBatch, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "cannot write `{path}`: {source}\nhint: check that the directory exists, is writable and has room"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub collection: String,
    pub path: PathBuf,
    pub records: u64,
    pub bytes: u64,
}

/// One line, borrowing from the batch.
#[derive(Serialize)]
struct Line<'a> {
    doc_id: &'a str,
    content: Option<&'a str>,
    metadata: Option<serde_json::Value>,
    embedding: &'a [f32],
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<&'a str>,
}

fn write_batch(out: &mut dyn Write, b: &SourceBatch) -> std::io::Result<()> {
    for i in 0..b.len() {
        let metadata = b.metadatas[i].as_ref().map(|m| {
            serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
        });
        let line = Line {
            doc_id: &b.ids[i],
            content: b.documents[i].as_deref(),
            metadata,
            embedding: b.embedding(i),
            uri: b.uris[i].as_deref(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The output file, compressed or not; `finish` completes the gzip
/// trailer, syncs, and returns the file's size.
enum Sink {
    Plain(BufWriter<std::fs::File>),
    Gz(BufWriter<flate2::write::GzEncoder<std::fs::File>>),
    Done,
}

impl Sink {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Plain(w) => w,
            Sink::Gz(w) => w,
            Sink::Done => unreachable!("written after finish"),
        }
    }

    fn finish(&mut self) -> std::io::Result<u64> {
        let file = match std::mem::replace(self, Sink::Done) {
            Sink::Plain(w) => w.into_inner().map_err(|e| e.into_error())?,
            Sink::Gz(w) => w.into_inner().map_err(|e| e.into_error())?.finish()?,
            Sink::Done => unreachable!("finished twice"),
        };
        file.sync_all()?;
        Ok(file.metadata()?.len())
    }
}

/// Streams `collection` of `source` into `path` (`.gz` compresses), calling
/// `progress` with the records written so far.
pub async fn export_collection(
    source: &dyn Source,
    collection: &str,
    path: &Path,
    batch_size: usize,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Exported, ExportError> {
    // Fails early, naming the existing collections, before a file is made.
    source.collection(collection).await?;
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "export".into());
    let tmp = path.with_file_name(format!(".{name}.partial"));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut out = if name.ends_with(".gz") {
        Sink::Gz(BufWriter::with_capacity(
            1 << 20,
            flate2::write::GzEncoder::new(file, flate2::Compression::fast()),
        ))
    } else {
        Sink::Plain(BufWriter::with_capacity(1 << 20, file))
    };
    let result: Result<(u64, u64), ExportError> = async {
        let mut records = 0u64;
        let mut stream = source.read(collection, batch_size);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            write_batch(out.writer(), &batch).map_err(io)?;
            records += batch.len() as u64;
            progress(records);
        }
        let bytes = out.finish().map_err(io)?;
        Ok((records, bytes))
    }
    .await;
    let (records, bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(Exported {
        collection: collection.to_string(),
        path: path.to_path_buf(),
        records,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{MetaValue, Metadata};

    #[test]
    fn lines_keep_exact_numbers_and_the_original_keys() {
        let mut m = Metadata::new();
        m.insert("big".into(), MetaValue::Int(9_007_199_254_740_993));
        m.insert("f".into(), MetaValue::Float(0.1));
        let b = SourceBatch {
            ids: vec!["a".into(), "b".into()],
            documents: vec![Some("x".into()), None],
            uris: vec![None, Some("s3://u".into())],
            metadatas: vec![Some(m), None],
            embeddings: vec![0.1, 1e-7, f32::MAX, -0.0],
            dim: 2,
        };
        let mut out = Vec::new();
        write_batch(&mut out, &b).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"doc_id":"a","content":"x","metadata":{"big":9007199254740993,"f":0.1},"embedding":[0.1,1e-7]}"#
        );
        assert_eq!(
            lines[1],
            r#"{"doc_id":"b","content":null,"metadata":null,"embedding":[3.4028235e+38,-0.0],"uri":"s3://u"}"#
        );
    }
}
