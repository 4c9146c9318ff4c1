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
//! Records come out in the metadata segment's insertion order (SQLite rowid),
//! then the records that exist only in the queue, in queue order. Memory is
//! one batch plus three per-collection maps that hold no vectors: the HNSW
//! label → slot map, the pickle's id ↔ label maps, and the replayed queue
//! (bounded by Chroma's sync threshold). The directory is never written:
//! SQLite is opened with `mode=ro`, files with read-only handles.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use futures::stream::BoxStream;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params_from_iter};
use serde::Deserialize;

use super::record::{MetaValue, Metadata, SourceBatch};
use super::{CollectionInfo, Source, SourceError};
use crate::plan::DistanceSpace;

/// Schema versions (table `migrations`) this reader understands.
const KNOWN_MIGRATIONS: [(&str, i64); 3] = [("metadb", 6), ("sysdb", 10), ("embeddings_queue", 2)];
const DOCUMENT_KEY: &str = "chroma:document";
const URI_KEY: &str = "chroma:uri";
const DEFAULT_TENANT: &str = "default_tenant";
const DEFAULT_DATABASE: &str = "default_database";

/// A Chroma persistent directory.
#[derive(Debug, Clone)]
pub struct ChromaDir {
    path: PathBuf,
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> SourceError + '_ {
    move |source| SourceError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

impl ChromaDir {
    /// Checks that `path` is a Chroma directory this reader understands.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, SourceError> {
        let path = path.into();
        let shown = path.display().to_string();
        let not_chroma = |reason: &str| SourceError::NotChroma {
            path: shown.clone(),
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
        let dir = ChromaDir { path };
        let conn = dir.connect()?;
        let has_migrations: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN ('migrations','collections','segments','embeddings')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n == 4)
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                    not_chroma("`chroma.sqlite3` is not an SQLite database")
                }
                other => sqlite_err(&dir.path)(other),
            })?;
        if !has_migrations {
            return Err(not_chroma("`chroma.sqlite3` lacks Chroma's tables"));
        }
        let mut stmt = conn
            .prepare("SELECT dir, max(version) FROM migrations GROUP BY dir")
            .map_err(sqlite_err(&dir.path))?;
        let versions: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sqlite_err(&dir.path))?
            .collect::<Result<_, _>>()
            .map_err(sqlite_err(&dir.path))?;
        for (name, version) in versions {
            if let Some((_, known)) = KNOWN_MIGRATIONS.iter().find(|(n, _)| *n == name)
                && version > *known
            {
                return Err(SourceError::TooNew {
                    path: dir.path.display().to_string(),
                    what: format!(
                        "schema `{name}` version {version}; this reader knows up to {known}"
                    ),
                });
            }
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&self) -> Result<Connection, SourceError> {
        let db = self.path.join("chroma.sqlite3");
        let uri = format!("file:{}?mode=ro", db.display());
        Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_err(&self.path))
    }

    /// Lists the collections of the default tenant and database.
    pub fn list_sync(&self) -> Result<Vec<CollectionInfo>, SourceError> {
        let conn = self.connect()?;
        let mut out = Vec::new();
        for meta in collections(&conn, &self.path)? {
            let ctx = CollectionCtx::load(&conn, &self.path, meta)?;
            out.push(ctx.info()?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn ctx(&self, conn: &Connection, name: &str) -> Result<CollectionCtx, SourceError> {
        let all = collections(conn, &self.path)?;
        let names: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
        let Some(meta) = all.into_iter().find(|c| c.name == name) else {
            return Err(SourceError::no_such_collection(
                name,
                format!("chroma directory `{}`", self.path.display()),
                names.iter().map(String::as_str),
            ));
        };
        CollectionCtx::load(conn, &self.path, meta)
    }

    /// Reads a whole collection in batches, calling `sink` for each; stops
    /// early (without error) when `sink` returns false.
    pub fn read_sync(
        &self,
        name: &str,
        batch_size: usize,
        mut sink: impl FnMut(Result<SourceBatch, SourceError>) -> bool,
    ) {
        let mut run = || -> Result<(), SourceError> {
            let conn = self.connect()?;
            let ctx = self.ctx(&conn, name)?;
            ctx.read(&conn, batch_size.max(1), &mut |b| sink(Ok(b)))
        };
        if let Err(e) = run() {
            sink(Err(e));
        }
    }

    /// The records with the given ids.
    pub fn get_sync(&self, name: &str, ids: &[String]) -> Result<SourceBatch, SourceError> {
        let conn = self.connect()?;
        let ctx = self.ctx(&conn, name)?;
        ctx.get(&conn, ids)
    }
}

#[async_trait::async_trait]
impl Source for ChromaDir {
    fn describe(&self) -> String {
        format!("chroma directory `{}`", self.path.display())
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
        super::run_blocking(move || me.ctx(&me.connect()?, &name)?.info()).await
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
    /// is read.
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
                let ctx = me.ctx(&conn, &name)?;
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

    async fn get(&self, collection: &str, ids: &[String]) -> Result<SourceBatch, SourceError> {
        let me = self.clone();
        let name = collection.to_string();
        let ids = ids.to_vec();
        super::run_blocking(move || me.get_sync(&name, &ids)).await
    }
}

/// A collection row and its segments.
#[derive(Debug, Clone)]
struct CollectionMeta {
    id: String,
    name: String,
    dimension: Option<i64>,
    config_json: Option<String>,
    schema_json: Option<String>,
    metadata_segment: String,
    vector_segment: Option<String>,
}

fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    stmt.query_map([], |r| r.get::<_, String>(1))?.collect()
}

fn collections(conn: &Connection, path: &Path) -> Result<Vec<CollectionMeta>, SourceError> {
    let e = sqlite_err(path);
    let cols = table_columns(conn, "collections").map_err(&e)?;
    let pick = |c: &str| {
        if cols.iter().any(|x| x == c) {
            format!("c.{c}")
        } else {
            "NULL".to_string()
        }
    };
    let sql = format!(
        "SELECT c.id, c.name, c.dimension, {}, {} FROM collections c \
         JOIN databases d ON c.database_id = d.id \
         WHERE d.name = ?1 AND d.tenant_id = ?2 ORDER BY c.name",
        pick("config_json_str"),
        pick("schema_str")
    );
    let mut stmt = conn.prepare(&sql).map_err(&e)?;
    type Row = (String, String, Option<i64>, Option<String>, Option<String>);
    let rows: Vec<Row> = stmt
        .query_map([DEFAULT_DATABASE, DEFAULT_TENANT], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(&e)?
        .collect::<Result<_, _>>()
        .map_err(&e)?;
    let mut out = Vec::new();
    for (id, name, dimension, config_json, schema_json) in rows {
        let mut seg = conn
            .prepare("SELECT id, scope FROM segments WHERE collection = ?1")
            .map_err(&e)?;
        let segs: Vec<(String, String)> = seg
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&e)?
            .collect::<Result<_, _>>()
            .map_err(&e)?;
        let metadata_segment = segs
            .iter()
            .find(|(_, s)| s == "METADATA")
            .map(|(i, _)| i.clone());
        let vector_segment = segs
            .iter()
            .find(|(_, s)| s == "VECTOR")
            .map(|(i, _)| i.clone());
        let Some(metadata_segment) = metadata_segment else {
            return Err(SourceError::Corrupt {
                file: path.join("chroma.sqlite3").display().to_string(),
                collection: name,
                reason: "the collection has no metadata segment".into(),
                hint: "the directory is damaged; restore it from a backup".into(),
            });
        };
        out.push(CollectionMeta {
            id,
            name,
            dimension,
            config_json,
            schema_json,
            metadata_segment,
            vector_segment,
        });
    }
    Ok(out)
}

/// A segment's position in the queue: 0.x stores an 8-byte big-endian blob,
/// 1.x an integer; upgraded databases mix both.
fn max_seq_id(conn: &Connection, segment: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT seq_id FROM max_seq_id WHERE segment_id = ?1",
        [segment],
        |r| {
            Ok(match r.get_ref(0)? {
                rusqlite::types::ValueRef::Integer(i) => i,
                rusqlite::types::ValueRef::Blob(b) => {
                    let mut buf = [0u8; 8];
                    let n = b.len().min(8);
                    buf[8 - n..].copy_from_slice(&b[b.len() - n..]);
                    i64::from_be_bytes(buf)
                }
                _ => 0,
            })
        },
    )
    .optional()
}

/// What `index_metadata.pickle` holds (a dict in 1.x, a `PersistentData`
/// instance in 0.x; serde-pickle reads both as a map).
#[derive(Debug, Deserialize)]
struct PersistentData {
    #[serde(default)]
    dimensionality: Option<i64>,
    #[serde(default)]
    max_seq_id: Option<i64>,
    #[serde(default)]
    id_to_label: HashMap<String, i64>,
}

/// The HNSW files of a vector segment.
///
/// Finding a vector: the pickle maps id → label, and `data_level0.bin`
/// holds one element per slot, each carrying its label. Chroma hands out
/// labels 1, 2, 3… in insertion order and hnswlib fills slots 0, 1, 2… in
/// the same order, so label `l` is almost always in slot `l - 1`. That guess
/// is checked against the label (and the deleted mark) stored in the slot
/// itself, so it can never return another record's vector; only when a
/// guess fails (slots reused after deletes) is the whole file scanned once
/// for the label → slot map. A directory written in the usual way is thus
/// never read twice.
struct Hnsw {
    data: File,
    data_path: PathBuf,
    lengths: Option<File>,
    size_per_element: u64,
    offset_data: u64,
    label_offset: u64,
    cur_count: u64,
    dim: usize,
    /// label → slot, built on the first failed guess.
    slots: OnceLock<FastMap<u64, u64>>,
    pickle: Pickle,
    /// id → label, from the pickle, read on first use.
    id_to_label: OnceLock<FastMap<String, i64>>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A segment's `index_metadata.pickle`.
struct Pickle {
    path: PathBuf,
    collection: String,
}

impl Pickle {
    fn read(&self) -> Result<PersistentData, SourceError> {
        let bytes = std::fs::read(&self.path).map_err(|source| SourceError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        serde_pickle::from_slice::<PersistentData>(&bytes, Default::default()).map_err(|err| {
            SourceError::Corrupt {
                file: self.path.display().to_string(),
                collection: self.collection.clone(),
                reason: format!("cannot be read: {err}"),
                hint: "the file is damaged or truncated; restore the directory from a backup"
                    .into(),
            }
        })
    }
}

impl Hnsw {
    /// `parsed`: the pickle, if the caller had to read it already.
    fn open(
        dir: &Path,
        pickle: Pickle,
        parsed: Option<PersistentData>,
    ) -> Result<Option<Hnsw>, SourceError> {
        let collection = pickle.collection.clone();
        let corrupt = |file: &Path, reason: String| {
            SourceError::Corrupt {
            file: file.display().to_string(),
            collection: collection.to_string(),
            reason,
            hint: "the segment files are incomplete or damaged; restore the directory from a backup, or read the collection through a running Chroma server (`source.chroma.url`)".into(),
        }
        };
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| SourceError::Io {
                path: p.clone(),
                source,
            }
        };
        let header_path = dir.join("header.bin");
        if !header_path.exists() {
            let p = match parsed {
                Some(p) => p,
                None => pickle.read()?,
            };
            if p.id_to_label.is_empty() {
                return Ok(None);
            }
            return Err(corrupt(
                &header_path,
                "missing, but `index_metadata.pickle` lists vectors".into(),
            ));
        }
        let header = std::fs::read(&header_path).map_err(io(&header_path))?;
        if header.len() < 100 {
            return Err(corrupt(
                &header_path,
                format!("{} bytes; an HNSW header has 100", header.len()),
            ));
        }
        let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
        let cur_count = u64_at(20);
        let size_per_element = u64_at(28);
        let label_offset = u64_at(36);
        let offset_data = u64_at(44);
        if label_offset <= offset_data
            || (label_offset - offset_data) % 4 != 0
            || size_per_element < label_offset + 8
        {
            return Err(corrupt(&header_path, "inconsistent element layout".into()));
        }
        let dim = ((label_offset - offset_data) / 4) as usize;
        let data_path = dir.join("data_level0.bin");
        let data = File::open(&data_path).map_err(io(&data_path))?;
        let len = data.metadata().map_err(io(&data_path))?.len();
        if len < cur_count * size_per_element {
            return Err(corrupt(
                &data_path,
                format!(
                    "truncated: {len} bytes, but the header lists {cur_count} elements of {size_per_element} bytes"
                ),
            ));
        }
        let lengths_path = dir.join("length.bin");
        let lengths = File::open(&lengths_path).ok();
        let hnsw = Hnsw {
            data,
            data_path,
            lengths,
            size_per_element,
            offset_data,
            label_offset,
            cur_count,
            dim,
            slots: OnceLock::new(),
            pickle,
            id_to_label: OnceLock::new(),
        };
        if let Some(p) = parsed {
            hnsw.take_pickle(p)?;
        }
        Ok(Some(hnsw))
    }

    /// Checks a read pickle against the header and keeps its id → label map.
    fn take_pickle(&self, p: PersistentData) -> Result<&FastMap<String, i64>, SourceError> {
        if let Some(d) = p.dimensionality
            && d as usize != self.dim
            && d > 0
        {
            return Err(SourceError::Corrupt {
                file: self.pickle.path.display().to_string(),
                collection: self.pickle.collection.clone(),
                reason: format!(
                    "dimension {d} disagrees with `header.bin` ({})",
                    self.dim
                ),
                hint: "the segment files are incomplete or damaged; restore the directory from a backup, or read the collection through a running Chroma server (`source.chroma.url`)".into(),
            });
        }
        Ok(self
            .id_to_label
            .get_or_init(|| p.id_to_label.into_iter().collect()))
    }

    fn labels(&self) -> Result<&FastMap<String, i64>, SourceError> {
        match self.id_to_label.get() {
            Some(m) => Ok(m),
            None => self.take_pickle(self.pickle.read()?),
        }
    }

    fn io_err(&self, source: std::io::Error) -> SourceError {
        SourceError::Io {
            path: self.data_path.display().to_string(),
            source,
        }
    }

    /// The label → slot map of every live element, read once, in large
    /// sequential chunks.
    fn slot_map(&self) -> Result<&FastMap<u64, u64>, SourceError> {
        if let Some(m) = self.slots.get() {
            return Ok(m);
        }
        tracing::debug!(
            "{}: labels are not in their usual slots; mapping all {} elements",
            self.data_path.display(),
            self.cur_count
        );
        let spe = self.size_per_element;
        let mut slots =
            FastMap::with_capacity_and_hasher(self.cur_count as usize, Default::default());
        if spe >= 1024 && self.label_offset + 8 == spe {
            // Large elements (high dimensions): read only what is needed.
            // An element's label is its last 8 bytes and the next element's
            // link header (with the deleted mark) follows it, so one 12-byte
            // read per element gives both.
            let mut header = [0u8; 4];
            if self.cur_count > 0 {
                self.data
                    .read_exact_at(&mut header, 0)
                    .map_err(|e| self.io_err(e))?;
            }
            let mut buf = [0u8; 12];
            for slot in 0..self.cur_count {
                let len = if slot + 1 < self.cur_count { 12 } else { 8 };
                self.data
                    .read_exact_at(&mut buf[..len], slot * spe + self.label_offset)
                    .map_err(|e| self.io_err(e))?;
                if header[2] & 0x01 == 0 {
                    let label = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                    slots.insert(label, slot);
                }
                header.copy_from_slice(&buf[8..12]);
            }
            return Ok(self.slots.get_or_init(|| slots));
        }
        let chunk_elems = (4 << 20) / spe.max(1) + 1;
        let mut buf = Vec::new();
        let mut slot = 0u64;
        while slot < self.cur_count {
            let n = chunk_elems.min(self.cur_count - slot);
            buf.resize((n * spe) as usize, 0);
            self.data
                .read_exact_at(&mut buf, slot * spe)
                .map_err(|e| self.io_err(e))?;
            for i in 0..n {
                let element = &buf[(i * spe) as usize..((i + 1) * spe) as usize];
                if let Some(label) = self.live_label(element) {
                    slots.insert(label, slot + i);
                }
            }
            slot += n;
        }
        Ok(self.slots.get_or_init(|| slots))
    }

    /// The label an element holds, unless it is marked deleted.
    fn live_label(&self, element: &[u8]) -> Option<u64> {
        // hnswlib keeps the deleted mark in byte 2 of the level-0 link header.
        if element[2] & 0x01 != 0 {
            return None;
        }
        let lo = self.label_offset as usize;
        Some(u64::from_le_bytes(
            element[lo..lo + 8].try_into().expect("8 bytes"),
        ))
    }

    fn label_of(&self, id: &str) -> Result<Option<u64>, SourceError> {
        Ok(self.labels()?.get(id).map(|l| *l as u64))
    }

    /// Where `label` probably is: its mapped slot once the map exists,
    /// before that the usual slot `label - 1` (checked by the caller).
    fn likely_slot(&self, label: u64) -> Option<u64> {
        match self.slots.get() {
            Some(m) => m.get(&label).copied(),
            None => label.checked_sub(1).filter(|s| *s < self.cur_count),
        }
    }

    /// The slot that holds `label`, checked against the element itself.
    fn find_slot(&self, label: u64) -> Result<Option<u64>, SourceError> {
        if self.slots.get().is_none()
            && let Some(slot) = self.likely_slot(label)
        {
            let mut element = vec![0u8; self.size_per_element as usize];
            self.data
                .read_exact_at(&mut element, slot * self.size_per_element)
                .map_err(|e| self.io_err(e))?;
            if self.live_label(&element) == Some(label) {
                return Ok(Some(slot));
            }
        }
        Ok(self.slot_map()?.get(&label).copied())
    }

    fn contains(&self, id: &str) -> Result<bool, SourceError> {
        match self.label_of(id)? {
            Some(label) => Ok(self.find_slot(label)?.is_some()),
            None => Ok(false),
        }
    }

    /// Reads runs of consecutive slots (`first..=last` each) with one read
    /// of `data_level0.bin` (and one of `length.bin`) per run, into `into`'s
    /// buffers: records written together sit in nearby slots, so a page
    /// takes a few large reads instead of two small ones per record. The
    /// buffers are reused page after page (grown, never zeroed again).
    fn read_runs(
        &self,
        runs: &[(u64, u64)],
        cosine: bool,
        into: &mut PageVectors,
    ) -> Result<(), SourceError> {
        let spe = self.size_per_element as usize;
        let total: usize = runs.iter().map(|(lo, hi)| (hi - lo + 1) as usize).sum();
        if into.bytes.len() < total * spe {
            into.bytes.resize(total * spe, 0);
        }
        into.runs.clear();
        into.norms.clear();
        let lengths = self.lengths.as_ref().filter(|_| cosine);
        let mut start = 0usize;
        let mut norm_bytes = Vec::new();
        for &(first, last) in runs {
            let n = (last - first + 1) as usize;
            self.data
                .read_exact_at(
                    &mut into.bytes[start * spe..(start + n) * spe],
                    first * self.size_per_element,
                )
                .map_err(|e| self.io_err(e))?;
            if let Some(f) = lengths {
                norm_bytes.resize(n * 4, 0);
                f.read_exact_at(&mut norm_bytes, first * 4)
                    .map_err(|source| SourceError::Io {
                        path: "length.bin".into(),
                        source,
                    })?;
                into.norms.extend(
                    norm_bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
                );
            }
            into.runs.push(Run { first, last, start });
            start += n;
        }
        Ok(())
    }

    /// Appends the vector of `label` from slots read by
    /// [`Hnsw::read_runs`], if they hold it in `slot`.
    fn vector_in(&self, v: &PageVectors, slot: u64, label: u64, out: &mut Vec<f32>) -> bool {
        // The run holding the slot: the last starting at or before it.
        let i = v.runs.partition_point(|r| r.first <= slot);
        let Some(r) = v.runs[..i].last().filter(|r| slot <= r.last) else {
            return false;
        };
        let e = r.start + (slot - r.first) as usize;
        let spe = self.size_per_element as usize;
        let element = &v.bytes[e * spe..(e + 1) * spe];
        if self.live_label(element) != Some(label) {
            return false;
        }
        let at = self.offset_data as usize;
        let scale = v.norms.get(e).copied().unwrap_or(1.0);
        out.extend(
            element[at..at + self.dim * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) * scale),
        );
        true
    }

    /// Appends the stored vector of `id`, de-normalised for cosine spaces
    /// (they store the unit vector, and its norm in `length.bin`).
    fn vector(&self, id: &str, cosine: bool, out: &mut Vec<f32>) -> Result<bool, SourceError> {
        let Some(label) = self.label_of(id)? else {
            return Ok(false);
        };
        let Some(slot) = self.find_slot(label)? else {
            return Ok(false);
        };
        let mut v = PageVectors::default();
        self.read_runs(&[(slot, slot)], cosine, &mut v)?;
        Ok(self.vector_in(&v, slot, label, out))
    }
}

/// Slots read by [`Hnsw::read_runs`]: the elements of every run back to
/// back in `bytes`, and their cosine norms (empty when not cosine).
#[derive(Default)]
struct PageVectors {
    bytes: Vec<u8>,
    norms: Vec<f32>,
    runs: Vec<Run>,
}

/// Slots `first..=last`, stored from element `start` of the buffer.
struct Run {
    first: u64,
    last: u64,
    start: usize,
}

/// The state of a record's non-vector fields after the queue.
#[derive(Debug, Clone, Default, PartialEq)]
struct Fields {
    document: Option<String>,
    uri: Option<String>,
    metadata: Metadata,
}

impl Fields {
    /// Applies a queue row's metadata JSON: `null` deletes a key.
    fn merge(&mut self, json: &serde_json::Map<String, serde_json::Value>) {
        for (k, v) in json {
            match (k.as_str(), v) {
                (DOCUMENT_KEY, serde_json::Value::String(s)) => self.document = Some(s.clone()),
                (DOCUMENT_KEY, _) => self.document = None,
                (URI_KEY, serde_json::Value::String(s)) => self.uri = Some(s.clone()),
                (URI_KEY, _) => self.uri = None,
                (_, v) => match MetaValue::from_json(v) {
                    Some(mv) => {
                        self.metadata.insert(k.clone(), mv);
                    }
                    None => {
                        self.metadata.remove(k);
                    }
                },
            }
        }
    }
}

/// A queue row, decoded.
struct QueueOp {
    seq: i64,
    op: i64,
    id: String,
    vector: Option<Vec<f32>>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

const OP_ADD: i64 = 0;
const OP_UPDATE: i64 = 1;
const OP_UPSERT: i64 = 2;
const OP_DELETE: i64 = 3;

/// Everything needed to read one collection.
struct CollectionCtx {
    meta: CollectionMeta,
    dir: PathBuf,
    space: DistanceSpace,
    dim: Option<usize>,
    hnsw: Option<Hnsw>,
    /// Metadata view: ids the queue changed above the metadata segment's
    /// position. `None` = deleted.
    fields_overlay: HashMap<String, Option<Fields>>,
    /// Ids that exist only in the queue, in the order they were added.
    queue_only: Vec<String>,
    /// Vector view above the vector segment's position. `None` = deleted.
    vector_overlay: HashMap<String, Option<Vec<f32>>>,
    collection_metadata: BTreeMap<String, MetaValue>,
}

type MetadataRow = (i64, String, Option<MetaValue>);

/// Typed metadata rows of `table` for the given record rowids (sorted), in
/// rowid order. A page of records is usually a dense run of rowids, read as
/// one index range; scattered rowids are looked up one by one.
fn metadata_rows(
    conn: &Connection,
    dir: &Path,
    table: &str,
    ids: &[i64],
) -> Result<Vec<MetadataRow>, SourceError> {
    let e = sqlite_err(dir);
    let (Some(&lo), Some(&hi)) = (ids.first(), ids.last()) else {
        return Ok(Vec::new());
    };
    let columns = "id, key, string_value, int_value, float_value, bool_value";
    let row = |r: &rusqlite::Row| -> rusqlite::Result<MetadataRow> {
        Ok((r.get(0)?, r.get(1)?, typed_value(r, 2)?))
    };
    // Rows of other collections may sit between a page's rowids; a range at
    // most twice the page reads few of them, and they are dropped here.
    let dense = hi >= lo && ((hi - lo) as usize) < 2 * ids.len();
    let rows: Vec<MetadataRow> = if dense {
        let sql =
            format!("SELECT {columns} FROM {table} WHERE id BETWEEN ?1 AND ?2 ORDER BY rowid");
        let mut stmt = conn.prepare_cached(&sql).map_err(&e)?;
        let rows = stmt.query_map([lo, hi], row).map_err(&e)?;
        let mut out = Vec::with_capacity(ids.len() * 4);
        for r in rows {
            let r = r.map_err(&e)?;
            if ids.binary_search(&r.0).is_ok() {
                out.push(r);
            }
        }
        out
    } else {
        let marks = vec!["?"; ids.len()].join(",");
        let sql = format!("SELECT {columns} FROM {table} WHERE id IN ({marks}) ORDER BY rowid");
        let mut stmt = conn.prepare_cached(&sql).map_err(&e)?;
        let rows = stmt
            .query_map(params_from_iter(ids.iter().copied()), row)
            .map_err(&e)?;
        rows.collect::<Result<_, _>>().map_err(e)?
    };
    Ok(rows)
}

fn typed_value(r: &rusqlite::Row, base: usize) -> rusqlite::Result<Option<MetaValue>> {
    // Exactly one of string/int/float/bool is set.
    if let Some(s) = r.get::<_, Option<String>>(base)? {
        return Ok(Some(MetaValue::Str(s)));
    }
    if let Some(i) = r.get::<_, Option<i64>>(base + 1)? {
        return Ok(Some(MetaValue::Int(i)));
    }
    if let Some(f) = r.get::<_, Option<f64>>(base + 2)? {
        return Ok(Some(MetaValue::Float(f)));
    }
    if let Some(b) = r.get::<_, Option<i64>>(base + 3)? {
        return Ok(Some(MetaValue::Bool(b != 0)));
    }
    Ok(None)
}

impl CollectionCtx {
    fn load(conn: &Connection, dir: &Path, meta: CollectionMeta) -> Result<Self, SourceError> {
        let e = sqlite_err(dir);
        // Collection metadata (and the 0.x space setting).
        let mut collection_metadata = BTreeMap::new();
        // 0.4.x has no bool_value column in collection_metadata.
        let bool_col = if table_columns(conn, "collection_metadata")
            .map_err(&e)?
            .iter()
            .any(|c| c == "bool_value")
        {
            "bool_value"
        } else {
            "NULL"
        };
        let mut stmt = conn
            .prepare(&format!(
                "SELECT key, str_value, int_value, float_value, {bool_col} FROM collection_metadata WHERE collection_id = ?1"
            ))
            .map_err(&e)?;
        let rows = stmt
            .query_map([&meta.id], |r| {
                Ok((r.get::<_, String>(0)?, typed_value(r, 1)?))
            })
            .map_err(&e)?;
        for row in rows {
            let (k, v) = row.map_err(&e)?;
            if let Some(v) = v {
                collection_metadata.insert(k, v);
            }
        }
        let mut segment_space = None;
        if let Some(vs) = &meta.vector_segment {
            segment_space = conn
                .query_row(
                    "SELECT str_value FROM segment_metadata WHERE segment_id = ?1 AND key = 'hnsw:space'",
                    [vs],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()
                .map_err(&e)?
                .flatten();
        }
        let json = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        };
        let space = super::space::resolve_space(
            &collection_metadata,
            segment_space.as_deref(),
            json(&meta.schema_json).as_ref(),
            json(&meta.config_json).as_ref(),
        );
        collection_metadata.retain(|k, _| !k.starts_with("hnsw:"));

        // The vector segment's files and position.
        let mut hnsw = None;
        let mut vector_seq = 0i64;
        if let Some(vs) = &meta.vector_segment {
            let seg_dir = dir.join(vs);
            let pickle_path = seg_dir.join("index_metadata.pickle");
            let pickle = Pickle {
                path: pickle_path.clone(),
                collection: meta.name.clone(),
            };
            // The pickle (an id → label entry per vector) is read only when
            // vectors are; its position is needed up front only where SQLite
            // does not record the segment's (0.4.x).
            let mut parsed = None;
            vector_seq = match max_seq_id(conn, vs).map_err(&e)? {
                Some(seq) => seq,
                None if pickle_path.exists() => {
                    let p = pickle.read()?;
                    let seq = p.max_seq_id.unwrap_or(0);
                    parsed = Some(p);
                    seq
                }
                None => 0,
            };
            if pickle_path.exists() {
                hnsw = Hnsw::open(&seg_dir, pickle, parsed)?;
            }
        }
        let metadata_seq = max_seq_id(conn, &meta.metadata_segment)
            .map_err(&e)?
            .unwrap_or(0);

        let mut ctx = CollectionCtx {
            dim: meta.dimension.map(|d| d as usize),
            meta,
            dir: dir.to_path_buf(),
            space,
            hnsw,
            fields_overlay: HashMap::new(),
            queue_only: Vec::new(),
            vector_overlay: HashMap::new(),
            collection_metadata,
        };
        if let (Some(h), Some(d)) = (&ctx.hnsw, ctx.dim)
            && h.dim != d
        {
            return Err(SourceError::Corrupt {
                file: dir
                    .join(ctx.meta.vector_segment.clone().unwrap_or_default())
                    .join("header.bin")
                    .display()
                    .to_string(),
                collection: ctx.meta.name.clone(),
                reason: format!(
                    "vectors have dimension {} but the collection says {d}",
                    h.dim
                ),
                hint: "the directory is inconsistent; restore it from a backup".into(),
            });
        }
        if ctx.dim.is_none() {
            ctx.dim = ctx.hnsw.as_ref().map(|h| h.dim);
        }
        ctx.replay(conn, metadata_seq, vector_seq)?;
        Ok(ctx)
    }

    fn corrupt(&self, reason: String) -> SourceError {
        SourceError::Corrupt {
            file: self.dir.join("chroma.sqlite3").display().to_string(),
            collection: self.meta.name.clone(),
            reason,
            hint: "the write-ahead queue holds a record this reader cannot use; read the collection through a running Chroma server (`source.chroma.url`)".into(),
        }
    }

    /// Reads a record's fields from SQLite (the metadata segment).
    fn sqlite_fields(
        &self,
        conn: &Connection,
        rowids: &[(i64, String)],
    ) -> Result<HashMap<i64, Fields>, SourceError> {
        let mut out: HashMap<i64, Fields> = rowids
            .iter()
            .map(|(r, _)| (*r, Fields::default()))
            .collect();
        if rowids.is_empty() {
            return Ok(out);
        }
        let arrays = self.has_array_table(conn)?;
        for chunk in rowids.chunks(900) {
            let mut ids: Vec<i64> = chunk.iter().map(|(r, _)| *r).collect();
            ids.sort_unstable();
            for (rowid, key, value) in metadata_rows(conn, &self.dir, "embedding_metadata", &ids)? {
                let f = out.entry(rowid).or_default();
                match (key.as_str(), value) {
                    (DOCUMENT_KEY, Some(MetaValue::Str(s))) => f.document = Some(s),
                    (URI_KEY, Some(MetaValue::Str(s))) => f.uri = Some(s),
                    (_, Some(v)) => {
                        f.metadata.insert(key, v);
                    }
                    (_, None) => {}
                }
            }
            if !arrays {
                continue;
            }
            // List values (1.5+): one row per element, in rowid order.
            for (rowid, key, value) in
                metadata_rows(conn, &self.dir, "embedding_metadata_array", &ids)?
            {
                let f = out.entry(rowid).or_default();
                let entry = f
                    .metadata
                    .entry(key)
                    .or_insert_with(|| MetaValue::List(Vec::new()));
                if let (MetaValue::List(items), Some(v)) = (entry, value) {
                    items.push(v);
                }
            }
        }
        Ok(out)
    }

    fn has_array_table(&self, conn: &Connection) -> Result<bool, SourceError> {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='embedding_metadata_array'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(sqlite_err(&self.dir))
    }

    fn sqlite_rowid(&self, conn: &Connection, id: &str) -> Result<Option<i64>, SourceError> {
        conn.prepare_cached("SELECT id FROM embeddings WHERE segment_id = ?1 AND embedding_id = ?2")
            .and_then(|mut s| {
                s.query_row([&self.meta.metadata_segment, id], |r| r.get(0))
                    .optional()
            })
            .map_err(sqlite_err(&self.dir))
    }

    /// Replays the queue rows above each segment's position.
    fn replay(
        &mut self,
        conn: &Connection,
        metadata_seq: i64,
        vector_seq: i64,
    ) -> Result<(), SourceError> {
        let dir = self.dir.clone();
        let e = sqlite_err(&dir);
        let from = metadata_seq.min(vector_seq);
        let has_queue: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='embeddings_queue'",
                [],
                |r| r.get(0),
            )
            .map_err(&e)?;
        if has_queue == 0 {
            return Ok(());
        }
        let mut stmt = conn
            .prepare(
                "SELECT seq_id, operation, id, vector, encoding, metadata FROM embeddings_queue \
                 WHERE topic LIKE '%/' || ?1 AND seq_id > ?2 ORDER BY seq_id",
            )
            .map_err(&e)?;
        let rows = stmt
            .query_map(rusqlite::params![self.meta.id, from], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(&e)?;
        let mut ops = Vec::new();
        for row in rows {
            let (seq, op, id, vector, encoding, metadata) = row.map_err(&e)?;
            let vector = match vector {
                None => None,
                Some(bytes) => {
                    if encoding
                        .as_deref()
                        .is_some_and(|enc| !enc.eq_ignore_ascii_case("FLOAT32"))
                    {
                        return Err(self.corrupt(format!(
                            "queue row {seq} (id `{id}`) has vector encoding `{}`; only FLOAT32 is supported",
                            encoding.unwrap_or_default()
                        )));
                    }
                    if bytes.len() % 4 != 0 {
                        return Err(self.corrupt(format!(
                            "queue row {seq} (id `{id}`) has a truncated vector"
                        )));
                    }
                    Some(
                        bytes
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                            .collect::<Vec<f32>>(),
                    )
                }
            };
            let metadata = match metadata {
                None => None,
                Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Object(m)) => Some(m),
                    Ok(serde_json::Value::Null) => None,
                    _ => {
                        return Err(self.corrupt(format!(
                            "queue row {seq} (id `{id}`) has unreadable metadata"
                        )));
                    }
                },
            };
            ops.push(QueueOp {
                seq,
                op,
                id,
                vector,
                metadata,
            });
        }

        for op in &ops {
            if let Some(v) = &op.vector {
                match self.dim {
                    None => self.dim = Some(v.len()),
                    Some(d) if d != v.len() => {
                        return Err(self.corrupt(format!(
                            "queue row {} (id `{}`) has a vector of dimension {}, the collection has {d}",
                            op.seq,
                            op.id,
                            v.len()
                        )));
                    }
                    _ => {}
                }
            }
            if op.seq > metadata_seq {
                self.apply_fields(conn, op)?;
            }
            if op.seq > vector_seq {
                self.apply_vector(op)?;
            }
        }
        Ok(())
    }

    /// The current fields of `id` in the metadata view, if it exists.
    fn current_fields(&self, conn: &Connection, id: &str) -> Result<Option<Fields>, SourceError> {
        if let Some(state) = self.fields_overlay.get(id) {
            return Ok(state.clone());
        }
        match self.sqlite_rowid(conn, id)? {
            None => Ok(None),
            Some(rowid) => Ok(self
                .sqlite_fields(conn, &[(rowid, id.to_string())])?
                .remove(&rowid)),
        }
    }

    fn apply_fields(&mut self, conn: &Connection, op: &QueueOp) -> Result<(), SourceError> {
        let current = self.current_fields(conn, &op.id)?;
        let new_state = match (op.op, current) {
            (OP_DELETE, _) => None,
            (OP_ADD | OP_UPSERT, None) => {
                let mut f = Fields::default();
                if let Some(m) = &op.metadata {
                    f.merge(m);
                }
                if !self.queue_only.contains(&op.id) && self.sqlite_rowid(conn, &op.id)?.is_none() {
                    self.queue_only.push(op.id.clone());
                }
                Some(f)
            }
            (OP_UPDATE | OP_UPSERT, Some(mut f)) => {
                if let Some(m) = &op.metadata {
                    f.merge(m);
                }
                Some(f)
            }
            // Chroma ignores an ADD of an existing id and an UPDATE of a
            // missing one (with a warning); so do we.
            _ => return Ok(()),
        };
        self.fields_overlay.insert(op.id.clone(), new_state);
        Ok(())
    }

    fn vector_exists(&self, id: &str) -> Result<bool, SourceError> {
        match self.vector_overlay.get(id) {
            Some(state) => Ok(state.is_some()),
            None => match &self.hnsw {
                Some(h) => h.contains(id),
                None => Ok(false),
            },
        }
    }

    fn apply_vector(&mut self, op: &QueueOp) -> Result<(), SourceError> {
        let exists = self.vector_exists(&op.id)?;
        match op.op {
            OP_ADD if !exists => {
                if let Some(v) = &op.vector {
                    self.vector_overlay.insert(op.id.clone(), Some(v.clone()));
                }
            }
            OP_UPDATE | OP_UPSERT if exists || op.op == OP_UPSERT => {
                if let Some(v) = &op.vector {
                    self.vector_overlay.insert(op.id.clone(), Some(v.clone()));
                }
            }
            OP_DELETE => {
                self.vector_overlay.insert(op.id.clone(), None);
            }
            _ => {}
        }
        Ok(())
    }

    fn info(&self) -> Result<CollectionInfo, SourceError> {
        Ok(CollectionInfo {
            name: self.meta.name.clone(),
            id: self.meta.id.clone(),
            count: self.count_with(None)?,
            dimension: self.dim.map(|d| d as u32),
            space: self.space,
            metadata: self.collection_metadata.clone(),
        })
    }

    /// Live records: the metadata segment's rows, adjusted by the replay.
    fn count_with(&self, conn: Option<&Connection>) -> Result<u64, SourceError> {
        let owned;
        let conn = match conn {
            Some(c) => c,
            None => {
                owned = ChromaDir {
                    path: self.dir.clone(),
                }
                .connect()?;
                &owned
            }
        };
        let base: i64 = conn
            .query_row(
                "SELECT count(*) FROM embeddings WHERE segment_id = ?1",
                [&self.meta.metadata_segment],
                |r| r.get(0),
            )
            .map_err(sqlite_err(&self.dir))?;
        let mut count = base;
        for (id, state) in &self.fields_overlay {
            let in_sqlite = self.sqlite_rowid(conn, id)?.is_some();
            match (in_sqlite, state.is_some()) {
                (true, false) => count -= 1,
                (false, true) => count += 1,
                _ => {}
            }
        }
        Ok(count.max(0) as u64)
    }

    /// Appends record `id` to `batch`: its fields, and its vector from the
    /// queue overlay, from `page` (the page's slots, read in bulk) or,
    /// failing those, from the HNSW files directly.
    fn push_record(
        &self,
        batch: &mut SourceBatch,
        id: String,
        fields: Fields,
        page: Option<&PageVectors>,
    ) -> Result<(), SourceError> {
        let cosine = self.space == DistanceSpace::Cosine;
        let before = batch.embeddings.len();
        match self.vector_overlay.get(&id) {
            Some(Some(v)) => batch.embeddings.extend_from_slice(v),
            Some(None) => {
                return Err(
                    self.corrupt(format!("record `{id}` exists but its vector was deleted"))
                );
            }
            None => {
                let found = match &self.hnsw {
                    Some(h) => {
                        let in_page = match (page, h.label_of(&id)?) {
                            (Some(v), Some(label)) => h.likely_slot(label).is_some_and(|slot| {
                                h.vector_in(v, slot, label, &mut batch.embeddings)
                            }),
                            _ => false,
                        };
                        in_page || h.vector(&id, cosine, &mut batch.embeddings)?
                    }
                    None => false,
                };
                if !found {
                    return Err(self.corrupt(format!(
                        "record `{id}` has no vector in the HNSW files or the queue"
                    )));
                }
            }
        }
        if batch.embeddings.len() - before != batch.dim {
            return Err(self.corrupt(format!(
                "record `{id}` has a vector of dimension {}, the collection has {}",
                batch.embeddings.len() - before,
                batch.dim
            )));
        }
        let metadata = (!fields.metadata.is_empty()).then_some(fields.metadata);
        batch.ids.push(id);
        batch.documents.push(fields.document);
        batch.uris.push(fields.uri);
        batch.metadatas.push(metadata);
        Ok(())
    }

    fn read(
        &self,
        conn: &Connection,
        batch_size: usize,
        sink: &mut dyn FnMut(SourceBatch) -> bool,
    ) -> Result<(), SourceError> {
        let dim = self.dim.unwrap_or(0);
        let mut batch = SourceBatch::with_capacity(batch_size, dim);
        let mut last = i64::MIN;
        let cosine = self.space == DistanceSpace::Cosine;
        let mut vectors = PageVectors::default();
        loop {
            let page = self.page(conn, last, batch_size)?;
            let Some((l, _)) = page.last() else { break };
            last = *l;
            let needs_sqlite: Vec<(i64, String)> = page
                .iter()
                .filter(|(_, id)| !self.fields_overlay.contains_key(id))
                .cloned()
                .collect();
            let mut fields = self.sqlite_fields(conn, &needs_sqlite)?;
            // The page's vectors in a few large reads: slots sorted and cut
            // into runs without big gaps (records written together sit in
            // nearby slots, though not always in row order).
            if let Some(h) = &self.hnsw {
                let labels = h.labels()?;
                // Check one guess first: where labels are scattered (1.x)
                // the map is built now, before a page of wrong slots is read.
                if let Some(l) = page.iter().find_map(|(_, id)| labels.get(id)) {
                    h.find_slot(*l as u64)?;
                }
                let mut slots: Vec<u64> = page
                    .iter()
                    .filter(|(_, id)| !self.vector_overlay.contains_key(id))
                    .filter_map(|(_, id)| labels.get(id).and_then(|l| h.likely_slot(*l as u64)))
                    .collect();
                slots.sort_unstable();
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for s in slots {
                    match runs.last_mut() {
                        Some((_, hi)) if s <= *hi + 8 => *hi = s,
                        _ => runs.push((s, s)),
                    }
                }
                h.read_runs(&runs, cosine, &mut vectors)?;
            }
            for (rowid, id) in page {
                let f = match self.fields_overlay.get(&id) {
                    Some(None) => continue,
                    Some(Some(f)) => f.clone(),
                    None => fields.remove(&rowid).unwrap_or_default(),
                };
                self.push_record(&mut batch, id, f, Some(&vectors))?;
                if batch.len() >= batch_size {
                    let full =
                        std::mem::replace(&mut batch, SourceBatch::with_capacity(batch_size, dim));
                    if !sink(full) {
                        return Ok(());
                    }
                }
            }
        }
        // Ids written only to the queue have no SQLite row, so the pages
        // above never yielded them.
        for id in &self.queue_only {
            if let Some(Some(f)) = self.fields_overlay.get(id) {
                self.push_record(&mut batch, id.clone(), f.clone(), None)?;
                if batch.len() >= batch_size {
                    let full =
                        std::mem::replace(&mut batch, SourceBatch::with_capacity(batch_size, dim));
                    if !sink(full) {
                        return Ok(());
                    }
                }
            }
        }
        if !batch.is_empty() {
            sink(batch);
        }
        Ok(())
    }

    /// The next `limit` (rowid, id) rows of the metadata segment after
    /// rowid `after`. `+segment_id` keeps SQLite off Chroma's
    /// `(segment_id, embedding_id)` index: with it, every page scanned and
    /// sorted the whole segment (quadratic in the collection size).
    fn page(
        &self,
        conn: &Connection,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, SourceError> {
        let e = sqlite_err(&self.dir);
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, embedding_id FROM embeddings WHERE +segment_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(&e)?;
        stmt.query_map(
            rusqlite::params![self.meta.metadata_segment, after, limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(&e)?
        .collect::<Result<_, _>>()
        .map_err(&e)
    }

    /// The ids [`CollectionCtx::read`] would yield, in the same order,
    /// without reading vectors or metadata.
    fn read_ids(
        &self,
        conn: &Connection,
        batch_size: usize,
        sink: &mut dyn FnMut(Vec<String>) -> bool,
    ) -> Result<(), SourceError> {
        let mut out = Vec::with_capacity(batch_size);
        let mut last = i64::MIN;
        loop {
            let page = self.page(conn, last, batch_size)?;
            let Some((l, _)) = page.last() else { break };
            last = *l;
            for (_, id) in page {
                if matches!(self.fields_overlay.get(&id), Some(None)) {
                    continue; // deleted in the queue
                }
                out.push(id);
                if out.len() >= batch_size && !sink(std::mem::take(&mut out)) {
                    return Ok(());
                }
            }
        }
        for id in &self.queue_only {
            if let Some(Some(_)) = self.fields_overlay.get(id) {
                out.push(id.clone());
                if out.len() >= batch_size && !sink(std::mem::take(&mut out)) {
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            sink(out);
        }
        Ok(())
    }

    fn get(&self, conn: &Connection, ids: &[String]) -> Result<SourceBatch, SourceError> {
        let mut batch = SourceBatch::with_capacity(ids.len(), self.dim.unwrap_or(0));
        for id in ids {
            if let Some(f) = self.current_fields(conn, id)? {
                self.push_record(&mut batch, id.clone(), f, None)?;
            }
        }
        Ok(batch)
    }
}
