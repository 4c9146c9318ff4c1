//! Sources: where records come from, behind one interface.
//!
//! Every source (a Chroma persistent directory read directly, a Chroma server
//! over HTTP, JSON Lines files) lists its collections and streams a
//! collection as [`SourceBatch`]es whose size is bounded by the requested
//! batch size, never by the collection size. `read_ids` and `read_fields`
//! stream records without their vectors, for the checks and statistics that
//! need no more; a source that can overrides them so that the vectors are
//! not even read. The copy step, the verifier, `inspect` and `export` all
//! read through this interface, so a fact about Chroma is encoded in exactly
//! one place.

pub mod chroma_dir;
pub mod chroma_http;
pub mod inspect;
pub mod jsonl;
mod open;
pub mod record;
mod space;

pub use open::open;

use std::collections::BTreeMap;

use futures::stream::BoxStream;
use serde::Serialize;

pub use record::{MetaValue, Metadata, SourceBatch};

use crate::plan::DistanceSpace;

/// What a source knows about one collection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionInfo {
    pub name: String,
    pub id: String,
    /// Live records.
    pub count: u64,
    /// `None` until the first vector is written.
    pub dimension: Option<u32>,
    pub space: DistanceSpace,
    /// The collection's own metadata (without `hnsw:*` settings).
    pub metadata: BTreeMap<String, MetaValue>,
}

/// Errors from reading a source. Each names the source and ends with a hint.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "`{path}` is not a Chroma persistent directory: {reason}\nhint: point `source.chroma.path` at the directory that holds `chroma.sqlite3` (what `chromadb.PersistentClient(path=...)` was given)"
    )]
    NotChroma { path: String, reason: String },
    #[error(
        "`{path}` was written by a newer Chroma ({what}) than this lanceferry reads\nhint: upgrade lanceferry, or export the collection with that Chroma version over HTTP (`source.chroma.url`)"
    )]
    TooNew { path: String, what: String },
    #[error(
        "collection `{name}` does not exist in {source_desc}; it has: {available}\nhint: fix `source:` in the plan; `lanceferry inspect` lists the collections"
    )]
    NoSuchCollection {
        name: String,
        source_desc: String,
        available: String,
    },
    #[error("{file}: {reason} (collection `{collection}`)\nhint: {hint}")]
    Corrupt {
        file: String,
        collection: String,
        reason: String,
        hint: String,
    },
    #[error(
        "cannot reach the Chroma server at `{url}`: {reason} (tried {tries} times)\nhint: start the server (`chroma run --path DIR`) or fix `source.chroma.url`; to read without a server, use `source.chroma.path`"
    )]
    Unreachable {
        url: String,
        reason: String,
        tries: u32,
    },
    #[error(
        "the Chroma server at `{url}` refused the request (HTTP {status}): {message}\nhint: {hint}"
    )]
    Unauthorized {
        url: String,
        status: u16,
        message: String,
        hint: String,
    },
    #[error(
        "the Chroma server at `{url}` failed {what}{}: {message}\nhint: {hint}",
        status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
    )]
    Server {
        url: String,
        what: String,
        status: Option<u16>,
        message: String,
        hint: String,
    },
    #[error(
        "{source_desc} has no database `{database}` in tenant `{tenant}`: {message}\nhint: fix `source.chroma.tenant` / `source.chroma.database` (defaults `default_tenant` / `default_database`)"
    )]
    NoSuchDatabase {
        /// "the Chroma server at `URL`" or "the Chroma directory `PATH`".
        source_desc: String,
        tenant: String,
        database: String,
        message: String,
    },
    #[error(
        "collection `{collection}` in {source_desc} changed while it was read: {before} records before, {after} after, {read} read\nhint: stop the applications writing to it (or read a copy of its persistent directory with `source.chroma.path`), then run the command again"
    )]
    ChangedDuringRead {
        collection: String,
        source_desc: String,
        before: u64,
        after: u64,
        read: u64,
    },
    #[error(
        "the reader stopped on an internal error: {reason}\nhint: this is a bug in lanceferry (please report it); nothing was written from the unfinished read, and the command can be run again"
    )]
    ReaderCrashed { reason: String },
    #[error("cannot read `{path}`: {source}\nhint: check that the path exists and is readable")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "SQLite error reading `{path}`: {source}\nhint: the directory must not be written while lanceferry reads it; stop the application or copy the directory first"
    )]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

impl SourceError {
    /// "No such collection", listing the ones that exist.
    pub fn no_such_collection<'a>(
        name: &str,
        source_desc: String,
        existing: impl IntoIterator<Item = &'a str>,
    ) -> SourceError {
        let names: Vec<String> = existing.into_iter().map(|n| format!("`{n}`")).collect();
        SourceError::NoSuchCollection {
            name: name.to_string(),
            source_desc,
            available: if names.is_empty() {
                "no collections".into()
            } else {
                names.join(", ")
            },
        }
    }
}

/// A readable store of collections.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// A short description for messages (never containing secrets).
    fn describe(&self) -> String;

    /// Every collection, sorted by name.
    async fn list_collections(&self) -> Result<Vec<CollectionInfo>, SourceError>;

    /// One collection by name; the error lists the ones that exist.
    async fn collection(&self, name: &str) -> Result<CollectionInfo, SourceError> {
        let all = self.list_collections().await?;
        let names: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
        all.into_iter().find(|c| c.name == name).ok_or_else(|| {
            SourceError::no_such_collection(name, self.describe(), names.iter().map(String::as_str))
        })
    }

    /// Streams every live record of a collection in batches of at most `batch_size`.
    fn read(
        &self,
        collection: &str,
        batch_size: usize,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>>;

    /// Streams only the ids of every live record, in the order of
    /// [`Source::read`] (the verifier's id-set check needs nothing else).
    /// By default the records are read and all but the ids dropped.
    fn read_ids(
        &self,
        collection: &str,
        batch_size: usize,
    ) -> BoxStream<'static, Result<Vec<String>, SourceError>> {
        use futures::{StreamExt, TryStreamExt};
        self.read(collection, batch_size).map_ok(|b| b.ids).boxed()
    }

    /// Streams every live record without its vector (ids, documents, uris,
    /// metadata; `SourceBatch::embeddings` left empty, dimension 0), in the
    /// order of [`Source::read`]. By default the records are read and the
    /// vectors dropped.
    ///
    /// For statistics only (`plan` counts metadata keys, their types, and
    /// records without a key or a document): a batch without vectors must
    /// never be copied or exported. A source that overrides this reads no
    /// vector, so it checks none either: a record whose vector is missing
    /// or damaged is yielded here and makes [`Source::read`] fail.
    fn read_fields(
        &self,
        collection: &str,
        batch_size: usize,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        use futures::{StreamExt, TryStreamExt};
        self.read(collection, batch_size)
            .map_ok(SourceBatch::without_vectors)
            .boxed()
    }

    /// The records with the given ids (absent ids are left out).
    async fn get(&self, collection: &str, ids: &[String]) -> Result<SourceBatch, SourceError>;

    /// Every live record's write sequence number, where the store keeps
    /// one (a Chroma directory: the metadata segment's `seq_id`, and the
    /// write-ahead queue above it), without reading any record. `None`
    /// where the store has no such number (a server, JSON Lines): a sync
    /// then digests every record.
    async fn sequences(&self, _collection: &str) -> Result<Option<Sequences>, SourceError> {
        Ok(None)
    }

    /// The source's own nearest-neighbour search, where it has one (a
    /// Chroma server's query endpoint: its index, its distance space): for
    /// each vector, the ids of its `k` nearest records, nearest first.
    /// `None` where the source cannot be asked (a directory read without
    /// Chroma, JSON Lines): `validate.search` then reports LanceDB alone.
    async fn query_ids(
        &self,
        _collection: &str,
        _vectors: &[Vec<f32>],
        _k: usize,
    ) -> Result<Option<Vec<Vec<String>>>, SourceError> {
        Ok(None)
    }
}

/// Write sequence numbers of a collection's records: every write to a
/// record (add, update of any field, upsert, even with identical values)
/// gives it the next number of the store's queue, so a record whose number
/// is unchanged since it was last read is unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sequences {
    /// The highest number the collection has consumed (its segment's
    /// position, its records', its queue rows'): every later write to it
    /// gets a higher one, unless the numbers were reset.
    pub mark: u64,
    /// `(id, seq)` of every live record.
    pub records: Vec<(String, u64)>,
}

/// Runs a blocking reader on its own thread and turns what it hands to its
/// sink into a stream. The channel holds two batches, so at most about three
/// are alive; when the stream is dropped the sink returns false and the
/// reader stops.
pub(crate) fn blocking_stream(
    reader: impl FnOnce(&mut dyn FnMut(Result<SourceBatch, SourceError>) -> bool) + Send + 'static,
) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    std::thread::spawn(move || {
        let sink = tx.clone();
        let run =
            std::panic::AssertUnwindSafe(move || reader(&mut |b| sink.blocking_send(b).is_ok()));
        // A reader that panics must end the stream with an error: a stream
        // that simply ends would look like the end of the data.
        if let Err(panic) = std::panic::catch_unwind(run) {
            let _ = tx.blocking_send(Err(SourceError::ReaderCrashed {
                reason: panic_text(&panic),
            }));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// The message of a caught panic (a `&str` or `String` payload).
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Runs blocking source work (SQLite, file reads) off the async runtime.
pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r,
        Err(e) => Err(SourceError::ReaderCrashed {
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_reader_that_panics_ends_its_stream_with_an_error() {
        let mut s = blocking_stream(|sink| {
            sink(Ok(SourceBatch::default()));
            panic!("boom in the reader");
        });
        assert!(s.next().await.unwrap().is_ok());
        let err = s.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("boom in the reader"), "{err}");
        assert!(s.next().await.is_none());
    }

    /// A source holding one batch, for the trait's default methods.
    struct OneBatch(SourceBatch);

    #[async_trait::async_trait]
    impl Source for OneBatch {
        fn describe(&self) -> String {
            "one batch".into()
        }

        async fn list_collections(&self) -> Result<Vec<CollectionInfo>, SourceError> {
            Ok(Vec::new())
        }

        fn read(
            &self,
            _collection: &str,
            _batch_size: usize,
        ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
            futures::stream::iter([Ok(self.0.clone())]).boxed()
        }

        async fn get(
            &self,
            _collection: &str,
            _ids: &[String],
        ) -> Result<SourceBatch, SourceError> {
            Ok(self.0.clone())
        }
    }

    #[tokio::test]
    async fn the_default_read_fields_is_read_without_the_vectors() {
        let mut b = SourceBatch::with_capacity(2, 2);
        b.push(record::Record {
            id: "a".into(),
            document: Some("doc a".into()),
            uri: None,
            metadata: Some(BTreeMap::from([("k".to_string(), MetaValue::Int(1))])),
            embedding: vec![1.0, 2.0],
        });
        b.push(record::Record {
            id: "b".into(),
            document: None,
            uri: Some("s3://b".into()),
            metadata: None,
            embedding: vec![3.0, 4.0],
        });
        assert!(b.has_vectors());
        let source = OneBatch(b.clone());
        let mut stream = source.read_fields("c", 10);
        let f = stream.next().await.unwrap().unwrap();
        assert!(stream.next().await.is_none());
        assert_eq!(f.ids, b.ids);
        assert_eq!(f.documents, b.documents);
        assert_eq!(f.uris, b.uris);
        assert_eq!(f.metadatas, b.metadatas);
        assert!(f.embeddings.is_empty() && f.dim == 0 && !f.has_vectors());
        // Every record of it reads as having the empty vector, no panic.
        for i in 0..f.len() {
            assert!(f.embedding(i).is_empty());
            assert!(f.record(i).embedding.is_empty());
        }
    }

    #[tokio::test]
    async fn blocking_work_that_panics_is_an_error() {
        let r: Result<(), _> = run_blocking(|| panic!("boom")).await;
        assert!(matches!(r, Err(SourceError::ReaderCrashed { .. })));
    }
}
