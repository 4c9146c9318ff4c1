//! Export: a collection as JSON Lines in the original tool's format, one
//! object per line, `{"doc_id","content","metadata","embedding"}` (plus
//! `"uri"` when the record has one), gzip-compressed when the file name ends
//! in `.gz`.
//!
//! Export streams: one source batch in memory at a time, whatever the
//! collection size. It writes to a hidden temporary name beside the output
//! and renames it only when the stream ended without an error and the
//! records written are as many as the source counted before the export,
//! so a file that exists is whole: a reader that fails, or ends early
//! without saying why, leaves no file under the final name. Numbers
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
    #[error(
        "the export of collection `{collection}` read {written} records, but the source counted {expected}; `{path}` was left as it was\nhint: the collection changed during the export or its reader stopped early; stop the applications writing to it and run the export again"
    )]
    Incomplete {
        collection: String,
        path: PathBuf,
        expected: u64,
        written: u64,
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
    // Fails early, naming the existing collections, before a file is made;
    // the count is what a complete export must have written.
    let expected = source.collection(collection).await?.count;
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
    let result: Result<(u64, u64), ExportError> = async move {
        let mut records = 0u64;
        let mut stream = source.read(collection, batch_size);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            records += batch.len() as u64;
            // JSON formatting and gzip are CPU work: off the async runtime,
            // the sink handed to a blocking thread and back.
            let (back, written) = tokio::task::spawn_blocking(move || {
                let mut out = out;
                let r = write_batch(out.writer(), &batch);
                (out, r)
            })
            .await
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            out = back;
            written.map_err(io)?;
            progress(records);
        }
        // A stream can end without an error and still be short (a reader
        // that stopped early): never rename that into place as complete.
        if records != expected {
            return Err(ExportError::Incomplete {
                collection: collection.to_string(),
                path: path.to_path_buf(),
                expected,
                written: records,
            });
        }
        let bytes = tokio::task::spawn_blocking(move || {
            let mut out = out;
            out.finish()
        })
        .await
        .map_err(|e| io(std::io::Error::other(e.to_string())))?
        .map_err(io)?;
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
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(Exported {
        collection: collection.to_string(),
        path: path.to_path_buf(),
        records,
        bytes,
    })
}

/// A source that yields what a test tells it to, for the export and backup
/// tests (no Chroma needed).
#[cfg(test)]
pub(crate) mod fake {
    use futures::StreamExt;
    use futures::stream::BoxStream;

    use crate::plan::DistanceSpace;
    use crate::source::{CollectionInfo, Source, SourceBatch, SourceError};

    /// The one collection a [`FakeSource`] has.
    pub(crate) const NAME: &str = "docs";

    pub(crate) struct FakeSource {
        /// The count `collection` reports.
        pub count: u64,
        /// The records of each batch the stream yields, in order.
        pub batches: Vec<usize>,
        /// Whether the stream ends with an error after the batches.
        pub fail: bool,
    }

    fn batch(first: usize, n: usize) -> SourceBatch {
        SourceBatch {
            ids: (first..first + n).map(|i| format!("id{i}")).collect(),
            documents: vec![None; n],
            uris: vec![None; n],
            metadatas: vec![None; n],
            embeddings: (0..n * 2).map(|i| i as f32).collect(),
            dim: 2,
        }
    }

    #[async_trait::async_trait]
    impl Source for FakeSource {
        fn describe(&self) -> String {
            "fake source".into()
        }

        async fn list_collections(&self) -> Result<Vec<CollectionInfo>, SourceError> {
            Ok(vec![CollectionInfo {
                name: NAME.into(),
                id: "fake-id".into(),
                count: self.count,
                dimension: Some(2),
                space: DistanceSpace::L2,
                metadata: Default::default(),
            }])
        }

        fn read(
            &self,
            _collection: &str,
            _batch_size: usize,
        ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
            let mut items = Vec::new();
            let mut first = 0;
            for &n in &self.batches {
                items.push(Ok(batch(first, n)));
                first += n;
            }
            if self.fail {
                items.push(Err(SourceError::Io {
                    path: "fake".into(),
                    source: std::io::Error::other("the reader failed"),
                }));
            }
            futures::stream::iter(items).boxed()
        }

        async fn get(
            &self,
            _collection: &str,
            _ids: &[String],
        ) -> Result<SourceBatch, SourceError> {
            // Export never looks records up; none found is a valid answer.
            Ok(batch(0, 0))
        }
    }
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

    /// The names in `dir`, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_stream_error_leaves_no_file() {
        use super::fake::{FakeSource, NAME};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.jsonl.gz");
        let source = FakeSource {
            count: 4,
            batches: vec![2],
            fail: true,
        };
        let err = export_collection(&source, NAME, &path, 2, &mut |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ExportError::Source(_)), "{err}");
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );
    }

    #[tokio::test]
    async fn a_stream_that_ends_short_leaves_no_file() {
        use super::fake::{FakeSource, NAME};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.jsonl");
        // Ends cleanly after 2 records of the 3 counted: what a reader
        // thread that died without an error looks like.
        let source = FakeSource {
            count: 3,
            batches: vec![2],
            fail: false,
        };
        let err = export_collection(&source, NAME, &path, 2, &mut |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ExportError::Incomplete { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("`docs`") && msg.contains("read 2 records") && msg.contains("counted 3"),
            "{msg}"
        );
        assert!(msg.contains("\nhint: "), "{msg}");
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );
    }

    #[tokio::test]
    async fn a_complete_stream_is_renamed_into_place() {
        use super::fake::{FakeSource, NAME};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.jsonl");
        let source = FakeSource {
            count: 3,
            batches: vec![2, 1],
            fail: false,
        };
        let r = export_collection(&source, NAME, &path, 2, &mut |_| {})
            .await
            .unwrap();
        assert_eq!(r.records, 3);
        assert_eq!(names_in(dir.path()), ["docs.jsonl"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
