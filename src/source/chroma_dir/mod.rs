//! Reading a Chroma persistent directory directly: no Python, no server.
//!
//! A collection's records are spread over three places, and all three are
//! needed (see `shared/docs/chroma-format.md`):
//!
//! - SQLite (`chroma.sqlite3`, opened read-only): the metadata segment's
//!   records (ids, documents, uris, metadata) in `embeddings` /
//!   `embedding_metadata` / `embedding_metadata_array`;
//! - the vector segment's HNSW files (`header.bin`, `data_level0.bin`,
//!   `length.bin`, `index_metadata.pickle`): the vectors, by label;
//! - the write-ahead queue (`embeddings_queue`): writes not yet consumed by
//!   a segment. Each segment has its own position (`max_seq_id`), and the
//!   queue rows above it are replayed on top of that segment (ADD if absent,
//!   UPDATE merges, UPSERT, DELETE), exactly as Chroma would on its next
//!   start. Skipping the replay loses recent writes.
//!
//! A directory holds databases of tenants (`default_database` of
//! `default_tenant` unless the writer chose others); a [`ChromaDir`] reads
//! the collections of exactly one of them.
//!
//! Records come out in the metadata segment's insertion order (SQLite rowid),
//! then the records that exist only in the queue, in queue order. Reads
//! without vectors (`read_ids`, `read_fields`) take the same pages and the
//! same replay of the queue's metadata view, and never open the vector
//! segment (no HNSW file, no pickle): they yield the same records. Memory is
//! one batch plus three per-collection maps that hold no vectors: the HNSW
//! label → slot map, the pickle's id ↔ label maps, and the replayed queue
//! (bounded by Chroma's sync threshold). The directory is never written:
//! SQLite is opened with `mode=ro`, files with read-only handles.
//!
//! The parts, each in its own module:
//!
//! - `catalog`: the schema check, databases, collections and their
//!   segments, settings (space, collection metadata) and queue positions;
//! - `pages`: the metadata segment's records, page by page, and their
//!   metadata rows;
//! - `hnsw`: the HNSW files (header, elements, norms, pickle, slot lookup);
//! - `overlay`: the queue, read and replayed on top of the compacted state;
//! - `reader`: one collection, assembled from the three.

mod catalog;
mod hnsw;
mod overlay;
mod pages;
mod pickle;
mod reader;

use std::path::{Path, PathBuf};

use futures::stream::BoxStream;
use rusqlite::{Connection, OpenFlags};

use super::record::SourceBatch;
use super::{CollectionInfo, Source, SourceError};
use crate::plan::model::{DEFAULT_DATABASE, DEFAULT_TENANT};
use reader::{CollectionCtx, Vectors};

const DOCUMENT_KEY: &str = "chroma:document";
const URI_KEY: &str = "chroma:uri";

/// A Chroma persistent directory: the collections of one tenant's database.
#[derive(Debug, Clone)]
pub struct ChromaDir {
    path: PathBuf,
    tenant: String,
    database: String,
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> SourceError + '_ {
    move |source| SourceError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

/// Opens `chroma.sqlite3` in `path` read-only.
fn connect(path: &Path) -> Result<Connection, SourceError> {
    let db = path.join("chroma.sqlite3");
    let uri = format!("file:{}?mode=ro", db.display());
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path))
}

impl ChromaDir {
    /// Checks that `path` is a Chroma directory this reader understands;
    /// reads the default tenant's default database.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SourceError> {
        Self::open_in(path, DEFAULT_TENANT, DEFAULT_DATABASE)
    }

    /// Checks that `path` is a Chroma directory this reader understands and
    /// that it holds `database` of `tenant`, whose collections it reads.
    /// The error for a missing database lists the ones the directory has.
    pub fn open_in(
        path: impl Into<PathBuf>,
        tenant: &str,
        database: &str,
    ) -> Result<Self, SourceError> {
        let path = path.into();
        let not_chroma = |reason: &str| SourceError::NotChroma {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        if !path.is_dir() {
            return Err(not_chroma(if path.exists() {
                "it is not a directory"
            } else {
                "it does not exist"
            }));
        }
        if !path.join("chroma.sqlite3").is_file() {
            return Err(not_chroma("it has no `chroma.sqlite3`"));
        }
        let conn = connect(&path)?;
        catalog::check_schema(&conn, &path)?;
        catalog::check_database(&conn, &path, tenant, database)?;
        Ok(ChromaDir {
            path,
            tenant: tenant.to_string(),
            database: database.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    fn connect(&self) -> Result<Connection, SourceError> {
        connect(&self.path)
    }

    fn collections(&self, conn: &Connection) -> Result<Vec<catalog::CollectionMeta>, SourceError> {
        catalog::collections(conn, &self.path, &self.tenant, &self.database)
    }

    /// Lists the collections of the tenant's database.
    pub fn list_sync(&self) -> Result<Vec<CollectionInfo>, SourceError> {
        let conn = self.connect()?;
        let mut out = Vec::new();
        for meta in self.collections(&conn)? {
            // The HNSW header may be the only record of the dimension.
            let ctx = CollectionCtx::load(&conn, &self.path, meta, Vectors::Read)?;
            out.push(ctx.info(&conn)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn ctx(
        &self,
        conn: &Connection,
        name: &str,
        vectors: Vectors,
    ) -> Result<CollectionCtx, SourceError> {
        let all = self.collections(conn)?;
        let names: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
        let Some(meta) = all.into_iter().find(|c| c.name == name) else {
            return Err(SourceError::no_such_collection(
                name,
                self.describe(),
                names.iter().map(String::as_str),
            ));
        };
        CollectionCtx::load(conn, &self.path, meta, vectors)
    }

    /// Reads a whole collection in batches, calling `sink` for each; stops
    /// early (without error) when `sink` returns false.
    pub fn read_sync(
        &self,
        name: &str,
        batch_size: usize,
        sink: impl FnMut(Result<SourceBatch, SourceError>) -> bool,
    ) {
        self.read_with(name, batch_size, Vectors::Read, sink)
    }

    /// [`ChromaDir::read_sync`], with or without the vectors.
    fn read_with(
        &self,
        name: &str,
        batch_size: usize,
        vectors: Vectors,
        mut sink: impl FnMut(Result<SourceBatch, SourceError>) -> bool,
    ) {
        let mut run = || -> Result<(), SourceError> {
            let conn = self.connect()?;
            let ctx = self.ctx(&conn, name, vectors)?;
            ctx.read(&conn, batch_size.max(1), &mut |b| sink(Ok(b)))
        };
        if let Err(e) = run() {
            sink(Err(e));
        }
    }

    /// Every live record's write sequence number, from SQLite and the
    /// queue alone.
    pub fn sequences_sync(&self, name: &str) -> Result<super::Sequences, SourceError> {
        let conn = self.connect()?;
        let ctx = self.ctx(&conn, name, Vectors::Skip)?;
        ctx.sequences(&conn)
    }

    /// The records with the given ids.
    pub fn get_sync(&self, name: &str, ids: &[String]) -> Result<SourceBatch, SourceError> {
        let conn = self.connect()?;
        let ctx = self.ctx(&conn, name, Vectors::Read)?;
        ctx.get(&conn, ids)
    }
}

#[async_trait::async_trait]
impl Source for ChromaDir {
    fn describe(&self) -> String {
        if self.tenant == DEFAULT_TENANT && self.database == DEFAULT_DATABASE {
            format!("chroma directory `{}`", self.path.display())
        } else {
            format!(
                "chroma directory `{}` (tenant `{}`, database `{}`)",
                self.path.display(),
                self.tenant,
                self.database
            )
        }
    }

    async fn list_collections(&self) -> Result<Vec<CollectionInfo>, SourceError> {
        let me = self.clone();
        super::run_blocking(move || me.list_sync()).await
    }

    /// Loads only the named collection: listing all of them would replay
    /// every collection's queue and map every HNSW file.
    async fn collection(&self, name: &str) -> Result<CollectionInfo, SourceError> {
        let me = self.clone();
        let name = name.to_string();
        super::run_blocking(move || {
            let conn = me.connect()?;
            me.ctx(&conn, &name, Vectors::Read)?.info(&conn)
        })
        .await
    }

    fn read(
        &self,
        collection: &str,
        batch_size: usize,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let me = self.clone();
        let name = collection.to_string();
        super::blocking_stream(move |sink| me.read_sync(&name, batch_size, sink))
    }

    /// Ids from SQLite and the queue replay alone: no vector or metadata
    /// is read, the vector segment is not even opened.
    fn read_ids(
        &self,
        collection: &str,
        batch_size: usize,
    ) -> BoxStream<'static, Result<Vec<String>, SourceError>> {
        use futures::{StreamExt, TryStreamExt};
        let me = self.clone();
        let name = collection.to_string();
        super::blocking_stream(move |sink| {
            let run = |sink: &mut dyn FnMut(Result<SourceBatch, SourceError>) -> bool| {
                let conn = me.connect()?;
                let ctx = me.ctx(&conn, &name, Vectors::Skip)?;
                ctx.read_ids(&conn, batch_size.max(1), &mut |ids| {
                    sink(Ok(SourceBatch {
                        ids,
                        ..SourceBatch::default()
                    }))
                })
            };
            if let Err(e) = run(sink) {
                sink(Err(e));
            }
        })
        .map_ok(|b| b.ids)
        .boxed()
    }

    /// The records of [`Source::read`] from SQLite and the queue replay
    /// alone: the vector segment (HNSW files, pickle) is never opened.
    fn read_fields(
        &self,
        collection: &str,
        batch_size: usize,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let me = self.clone();
        let name = collection.to_string();
        super::blocking_stream(move |sink| me.read_with(&name, batch_size, Vectors::Skip, sink))
    }

    async fn get(&self, collection: &str, ids: &[String]) -> Result<SourceBatch, SourceError> {
        let me = self.clone();
        let name = collection.to_string();
        let ids = ids.to_vec();
        super::run_blocking(move || me.get_sync(&name, &ids)).await
    }

    async fn sequences(&self, collection: &str) -> Result<Option<super::Sequences>, SourceError> {
        let me = self.clone();
        let name = collection.to_string();
        super::run_blocking(move || me.sequences_sync(&name).map(Some)).await
    }
}
