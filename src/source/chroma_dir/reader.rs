//! One collection, assembled: its catalog entry and settings, its HNSW
//! files, the queue replayed on both, and the records read page by page
//! from SQLite with their vectors from the queue overlay or the HNSW files.
//!
//! Loaded with [`Vectors::Skip`], the same pages and the same replay of the
//! metadata view yield the same records without vectors, and the vector
//! segment is never opened: no HNSW file, no pickle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::catalog::{self, CollectionMeta};
use super::hnsw::{Hnsw, Pickle, ReadBuffers, Want};
use super::overlay::{self, Base, Fields, Overlay, Place, Positions};
use super::{pages, sqlite_err};
use crate::plan::DistanceSpace;
use crate::source::record::{MetaValue, SourceBatch};
use crate::source::{CollectionInfo, SourceError};

/// A `seq_id` cell as a number: 0.x writes 8 big-endian bytes, 1.x an
/// integer.
fn seq_value(v: rusqlite::types::ValueRef<'_>) -> u64 {
    match v {
        rusqlite::types::ValueRef::Integer(i) => i.max(0) as u64,
        rusqlite::types::ValueRef::Blob(b) => {
            let mut buf = [0u8; 8];
            let n = b.len().min(8);
            buf[8 - n..].copy_from_slice(&b[b.len() - n..]);
            u64::from_be_bytes(buf)
        }
        _ => 0,
    }
}

/// Whether a collection is read with its vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vectors {
    /// Whole records: the HNSW files are opened and the queue is replayed
    /// on both segments.
    Read,
    /// Ids, documents, uris and metadata only (`read_ids`, `read_fields`):
    /// the vector segment is left alone, and only the metadata view of the
    /// queue is replayed. That view never asks the vector segment anything,
    /// so the records are exactly those of [`Vectors::Read`].
    Skip,
}

/// Everything needed to read one collection.
pub(super) struct CollectionCtx {
    meta: CollectionMeta,
    dir: PathBuf,
    place: Place,
    space: DistanceSpace,
    vectors: Vectors,
    /// Under [`Vectors::Skip`] only what SQLite and the queue say.
    dim: Option<usize>,
    /// `None` under [`Vectors::Skip`].
    hnsw: Option<Hnsw>,
    /// The directory has list-valued metadata (`embedding_metadata_array`).
    arrays: bool,
    overlay: Overlay,
    collection_metadata: BTreeMap<String, MetaValue>,
    /// How far the metadata segment has consumed the queue.
    metadata_seq: i64,
}

/// The compacted state the queue is replayed on: the metadata segment in
/// SQLite and the vector segment's HNSW files.
struct Compacted<'a> {
    conn: &'a Connection,
    dir: &'a Path,
    segment: &'a str,
    arrays: bool,
    hnsw: Option<&'a Hnsw>,
}

impl Base for Compacted<'_> {
    fn fields(&self, id: &str) -> Result<Option<Fields>, SourceError> {
        match pages::rowid_of(self.conn, self.dir, self.segment, id)? {
            None => Ok(None),
            Some(rowid) => Ok(Some(
                pages::fields(self.conn, self.dir, self.arrays, &[rowid])?
                    .remove(&rowid)
                    .unwrap_or_default(),
            )),
        }
    }

    fn has_record(&self, id: &str) -> Result<bool, SourceError> {
        Ok(pages::rowid_of(self.conn, self.dir, self.segment, id)?.is_some())
    }

    fn has_vector(&self, id: &str) -> Result<bool, SourceError> {
        match self.hnsw {
            Some(h) => h.contains(id),
            None => Ok(false),
        }
    }
}

impl CollectionCtx {
    pub(super) fn load(
        conn: &Connection,
        dir: &Path,
        meta: CollectionMeta,
        vectors: Vectors,
    ) -> Result<Self, SourceError> {
        let e = sqlite_err(dir);
        let (collection_metadata, space) = catalog::settings(conn, dir, &meta)?;

        // The vector segment's files and position. Without vectors its
        // position does not matter either (it only decides which queue rows
        // reach the vector view), and finding it can mean parsing the
        // pickle (0.4.x keeps it there).
        let mut hnsw = None;
        let mut vector_seq = match vectors {
            Vectors::Read => 0i64,
            Vectors::Skip => i64::MAX,
        };
        if vectors == Vectors::Read
            && let Some(vs) = &meta.vector_segment
        {
            let seg_dir = dir.join(vs);
            let pickle = Pickle::new(seg_dir.join("index_metadata.pickle"), meta.name.clone());
            // The pickle (an id → label entry per vector) is read only when
            // vectors are; its position is needed up front only where SQLite
            // does not record the segment's (0.4.x).
            let mut parsed = None;
            vector_seq = match catalog::max_seq_id(conn, vs).map_err(&e)? {
                Some(seq) => seq,
                None if pickle.exists() => {
                    let p = pickle.read()?;
                    let seq = p.max_seq_id.unwrap_or(0);
                    parsed = Some(p);
                    seq
                }
                None => 0,
            };
            if pickle.exists() {
                let cosine = space == DistanceSpace::Cosine;
                hnsw = Hnsw::open(&seg_dir, pickle, parsed, cosine)?;
            }
        }
        let metadata_seq = catalog::max_seq_id(conn, &meta.metadata_segment)
            .map_err(&e)?
            .unwrap_or(0);

        let mut dim = meta.dimension.map(|d| d as usize);
        if let (Some(h), Some(d)) = (&hnsw, dim)
            && h.dim != d
        {
            return Err(SourceError::Corrupt {
                file: dir
                    .join(meta.vector_segment.clone().unwrap_or_default())
                    .join("header.bin")
                    .display()
                    .to_string(),
                collection: meta.name.clone(),
                reason: format!(
                    "vectors have dimension {} but the collection says {d}",
                    h.dim
                ),
                hint: "the directory is inconsistent; restore it from a backup".into(),
            });
        }
        if dim.is_none() {
            dim = hnsw.as_ref().map(|h| h.dim);
        }

        let place = Place {
            file: dir.join("chroma.sqlite3").display().to_string(),
            collection: meta.name.clone(),
        };
        let arrays = pages::has_array_table(conn, dir)?;
        // Under `Vectors::Skip` the vector position is `i64::MAX`: only the
        // rows above the metadata segment's are read, and no row reaches
        // the vector view, whose replay would ask the HNSW files (and the
        // pickle) whether they hold an id.
        let positions = Positions {
            metadata: metadata_seq,
            vector: vector_seq,
        };
        let ops = overlay::read_queue(conn, dir, &place, &meta.id, positions.replay_after())?;
        let base = Compacted {
            conn,
            dir,
            segment: &meta.metadata_segment,
            arrays,
            hnsw: hnsw.as_ref(),
        };
        let overlay = Overlay::replay(&base, &ops, positions, &mut dim, &place)?;

        Ok(CollectionCtx {
            meta,
            dir: dir.to_path_buf(),
            place,
            space,
            vectors,
            dim,
            hnsw,
            arrays,
            overlay,
            collection_metadata,
            metadata_seq,
        })
    }

    fn base<'a>(&'a self, conn: &'a Connection) -> Compacted<'a> {
        Compacted {
            conn,
            dir: &self.dir,
            segment: &self.meta.metadata_segment,
            arrays: self.arrays,
            hnsw: self.hnsw.as_ref(),
        }
    }

    /// The collection's facts; its dimension is known for sure only when
    /// loaded with [`Vectors::Read`] (the HNSW header may be its only record).
    pub(super) fn info(&self, conn: &Connection) -> Result<CollectionInfo, SourceError> {
        Ok(CollectionInfo {
            name: self.meta.name.clone(),
            id: self.meta.id.clone(),
            count: self.count(conn)?,
            dimension: self.dim.map(|d| d as u32),
            space: self.space,
            metadata: self.collection_metadata.clone(),
        })
    }

    /// Live records: the metadata segment's rows, adjusted by the replay.
    fn count(&self, conn: &Connection) -> Result<u64, SourceError> {
        let mut count = pages::count(conn, &self.dir, &self.meta.metadata_segment)?;
        let base = self.base(conn);
        for (id, state) in &self.overlay.fields {
            match (base.has_record(id)?, state.is_some()) {
                (true, false) => count -= 1,
                (false, true) => count += 1,
                _ => {}
            }
        }
        Ok(count.max(0) as u64)
    }

    /// The dimension of the batches read: 0 (no vectors) under
    /// [`Vectors::Skip`].
    fn batch_dim(&self) -> usize {
        match self.vectors {
            Vectors::Read => self.dim.unwrap_or(0),
            Vectors::Skip => 0,
        }
    }

    /// Appends record `id` to `batch`: its fields, and (under
    /// [`Vectors::Read`]) its vector from the queue overlay or the HNSW
    /// files.
    fn push_record(
        &self,
        batch: &mut SourceBatch,
        id: String,
        fields: Fields,
    ) -> Result<(), SourceError> {
        if self.vectors == Vectors::Read {
            self.push_vector(&mut batch.embeddings, batch.dim, &id)?;
        }
        push_fields(batch, id, fields);
        Ok(())
    }

    /// Appends the vector of record `id` to `out`: from the queue
    /// overlay or, failing that, from the HNSW files.
    fn push_vector(&self, out: &mut Vec<f32>, dim: usize, id: &str) -> Result<(), SourceError> {
        let before = out.len();
        match self.overlay.vectors.get(id) {
            Some(Some(v)) => out.extend_from_slice(v),
            Some(None) => {
                return Err(self
                    .place
                    .corrupt(format!("record `{id}` exists but its vector was deleted")));
            }
            None => {
                let found = match &self.hnsw {
                    Some(h) => h.vector(id, out)?,
                    None => false,
                };
                if !found {
                    return Err(self.place.corrupt(format!(
                        "record `{id}` has no vector in the HNSW files or the queue"
                    )));
                }
            }
        }
        if out.len() - before != dim {
            return Err(self.place.corrupt(format!(
                "record `{id}` has a vector of dimension {}, the collection has {dim}",
                out.len() - before,
            )));
        }
        Ok(())
    }

    /// The vectors of a page's records (`ids`, in order), back to back:
    /// read by [`Hnsw::read_into`] straight into place, one `preadv` per run
    /// of nearby slots, with `bufs` reused page after page. A record the
    /// queue gave a vector, or whose slot did not hold its label, goes
    /// through [`CollectionCtx::push_vector`].
    fn page_vectors(
        &self,
        h: &Hnsw,
        ids: &[String],
        bufs: &mut ReadBuffers,
    ) -> Result<Vec<f32>, SourceError> {
        let labels = h.labels()?;
        let mut wants: Vec<Want> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| !self.overlay.vectors.contains_key(*id))
            .filter_map(|(at, id)| {
                let label = *labels.get(id)? as u64;
                Some(Want {
                    slot: h.likely_slot(label)?,
                    label,
                    at,
                })
            })
            .collect();
        let dim = self.batch_dim();
        if dim != h.dim {
            wants.clear(); // refused when loaded; never read a wrong shape
        }
        let mut out = vec![0.0; ids.len() * dim];
        let filled = h.read_into(&mut wants, &mut out, bufs)?;
        // The rest (queued vectors, moved slots) one by one.
        let mut one = Vec::with_capacity(dim);
        for (at, id) in ids.iter().enumerate() {
            if !filled.get(at).copied().unwrap_or(false) {
                one.clear();
                self.push_vector(&mut one, dim, id)?;
                out[at * dim..(at + 1) * dim].copy_from_slice(&one);
            }
        }
        Ok(out)
    }

    /// The next page of live records after rowid `last` (advanced);
    /// `None` once the pages are done.
    fn next_page(
        &self,
        conn: &Connection,
        last: &mut i64,
        size: usize,
    ) -> Result<Option<PageRecords>, SourceError> {
        let page = pages::page(conn, &self.dir, &self.meta.metadata_segment, *last, size)?;
        let Some((l, _)) = page.last() else {
            return Ok(None);
        };
        *last = *l;
        let mut ids = Vec::with_capacity(page.len());
        let mut fields = Vec::with_capacity(page.len());
        for (rowid, id) in page {
            match self.overlay.fields.get(&id) {
                Some(None) => continue, // deleted in the queue
                Some(Some(f)) => fields.push(Ok(f.clone())),
                None => fields.push(Err(rowid)),
            }
            ids.push(id);
        }
        Ok(Some((ids, fields)))
    }

    /// The fields of a page from [`CollectionCtx::next_page`]: the
    /// queue's, or SQLite's read for the rest in one go.
    fn page_fields(
        &self,
        conn: &Connection,
        page: Vec<Result<Fields, i64>>,
    ) -> Result<Vec<Fields>, SourceError> {
        let rowids: Vec<i64> = page
            .iter()
            .filter_map(|f| f.as_ref().err().copied())
            .collect();
        let mut sqlite = pages::fields(conn, &self.dir, self.arrays, &rowids)?;
        Ok(page
            .into_iter()
            .map(|f| f.unwrap_or_else(|rowid| sqlite.remove(&rowid).unwrap_or_default()))
            .collect())
    }

    /// Every live record, in batches of `batch_size`: with vectors, or
    /// without them (dimension 0) as the context was loaded.
    ///
    /// With vectors from HNSW files, a second thread reads each page's
    /// vectors while this one reads its metadata from SQLite (about as
    /// long each: a copy from a directory waits on this reader), up to
    /// two pages ahead.
    pub(super) fn read(
        &self,
        conn: &Connection,
        batch_size: usize,
        sink: &mut dyn FnMut(SourceBatch) -> bool,
    ) -> Result<(), SourceError> {
        let mut out = Batches::new(batch_size, self.batch_dim(), sink);
        let hnsw = self.hnsw.as_ref().filter(|_| self.vectors == Vectors::Read);
        std::thread::scope(|scope| {
            // Pages out (their records' ids), vectors back, in order.
            let mut vectors = hnsw.map(|h| {
                let (ask, asked) = std::sync::mpsc::sync_channel::<Vec<String>>(2);
                let (give, given) = std::sync::mpsc::sync_channel(2);
                scope.spawn(move || {
                    let mut buf = ReadBuffers::default();
                    // Its error, if any, is the first page's.
                    let mut unready = h.prepare().err();
                    for ids in asked {
                        let v = match unready.take() {
                            Some(e) => Err(e),
                            None => self.page_vectors(h, &ids, &mut buf),
                        };
                        let failed = v.is_err();
                        if give.send((ids, v)).is_err() || failed {
                            return;
                        }
                    }
                });
                (ask, given)
            });
            let mut waiting: std::collections::VecDeque<Vec<Fields>> = Default::default();
            let mut last = i64::MIN;
            let mut pages_done = false;
            loop {
                let page = match pages_done {
                    true => None,
                    false => self.next_page(conn, &mut last, batch_size)?,
                };
                match page {
                    None => pages_done = true,
                    // The vectors are read while SQLite gives the fields.
                    Some((ids, queued)) => match &vectors {
                        Some((ask, _)) => {
                            // The thread ends only after an error it sends back.
                            let _ = ask.send(ids);
                            waiting.push_back(self.page_fields(conn, queued)?);
                        }
                        None => {
                            let fields = self.page_fields(conn, queued)?;
                            if !out.records(self, ids, fields)? {
                                return Ok(());
                            }
                        }
                    },
                }
                let ready = waiting.len() >= 2 || (pages_done && !waiting.is_empty());
                if let (true, Some((_, given))) = (ready, &mut vectors) {
                    let fields = waiting.pop_front().expect("a page waits");
                    let (ids, v) = given.recv().map_err(|_| SourceError::ReaderCrashed {
                        reason: "the HNSW reader thread stopped".into(),
                    })?;
                    if !out.page(ids, fields, v?) {
                        return Ok(());
                    }
                }
                if pages_done && waiting.is_empty() {
                    break;
                }
            }
            // Ids written only to the queue have no SQLite row, so the
            // pages above never yielded them.
            vectors.take();
            for id in &self.overlay.queue_only {
                if let Some(Some(f)) = self.overlay.fields.get(id)
                    && !out.records(self, vec![id.clone()], vec![f.clone()])?
                {
                    return Ok(());
                }
            }
            out.finish();
            Ok(())
        })
    }

    /// The ids [`CollectionCtx::read`] would yield, in the same order,
    /// without reading vectors or metadata.
    pub(super) fn read_ids(
        &self,
        conn: &Connection,
        batch_size: usize,
        sink: &mut dyn FnMut(Vec<String>) -> bool,
    ) -> Result<(), SourceError> {
        let mut out = Vec::with_capacity(batch_size);
        let mut last = i64::MIN;
        loop {
            let page = pages::page(
                conn,
                &self.dir,
                &self.meta.metadata_segment,
                last,
                batch_size,
            )?;
            let Some((l, _)) = page.last() else { break };
            last = *l;
            for (_, id) in page {
                if matches!(self.overlay.fields.get(&id), Some(None)) {
                    continue; // deleted in the queue
                }
                out.push(id);
                if out.len() >= batch_size && !sink(std::mem::take(&mut out)) {
                    return Ok(());
                }
            }
        }
        for id in &self.overlay.queue_only {
            if let Some(Some(_)) = self.overlay.fields.get(id) {
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

    /// Every live record's write sequence number: the metadata segment's
    /// `seq_id` (an 8-byte big-endian BLOB before 1.0, an INTEGER since),
    /// raised by the queue rows above the segment's position, and the
    /// collection's high-water mark.
    pub(super) fn sequences(
        &self,
        conn: &Connection,
    ) -> Result<crate::source::Sequences, SourceError> {
        let e = sqlite_err(&self.dir);
        let mut stmt = conn
            .prepare(
                "SELECT embedding_id, seq_id FROM embeddings WHERE +segment_id = ?1 ORDER BY id",
            )
            .map_err(&e)?;
        let mut mark = self.metadata_seq.max(0) as u64;
        let mut records: Vec<(String, u64)> = stmt
            .query_map([&self.meta.metadata_segment], |r| {
                Ok((r.get::<_, String>(0)?, seq_value(r.get_ref(1)?)))
            })
            .map_err(&e)?
            .collect::<Result<_, _>>()
            .map_err(&e)?;
        for (_, seq) in &records {
            mark = mark.max(*seq);
        }
        // Queue rows the metadata segment has not consumed: the replay
        // already decided which ids they leave alive; each such id takes
        // the number of its last row.
        if !self.overlay.fields.is_empty() {
            let ops = overlay::read_queue(
                conn,
                &self.dir,
                &self.place,
                &self.meta.id,
                self.metadata_seq,
            )?;
            let mut last: std::collections::HashMap<&str, u64> = Default::default();
            for op in &ops {
                last.insert(op.id.as_str(), op.seq.max(0) as u64);
                mark = mark.max(op.seq.max(0) as u64);
            }
            records.retain(|(id, _)| !matches!(self.overlay.fields.get(id), Some(None)));
            for (id, seq) in records.iter_mut() {
                if self.overlay.fields.contains_key(id)
                    && let Some(s) = last.get(id.as_str())
                {
                    *seq = *s;
                }
            }
            for id in &self.overlay.queue_only {
                if let Some(Some(_)) = self.overlay.fields.get(id) {
                    records.push((id.clone(), last.get(id.as_str()).copied().unwrap_or(mark)));
                }
            }
        }
        Ok(crate::source::Sequences { mark, records })
    }

    pub(super) fn get(
        &self,
        conn: &Connection,
        ids: &[String],
    ) -> Result<SourceBatch, SourceError> {
        let base = self.base(conn);
        let (mut found, mut fields) = (Vec::new(), Vec::new());
        for id in ids {
            if let Some(f) = self.overlay.fields_of(&base, id)? {
                found.push(id.clone());
                fields.push(f);
            }
        }
        let mut batch = SourceBatch::with_capacity(found.len(), self.batch_dim());
        // The vectors in one go, as a page's are read.
        if let (Vectors::Read, Some(h)) = (self.vectors, &self.hnsw) {
            batch.embeddings = self.page_vectors(h, &found, &mut ReadBuffers::default())?;
        }
        for (id, f) in found.into_iter().zip(fields) {
            match (self.vectors, &self.hnsw) {
                (Vectors::Read, None) => self.push_record(&mut batch, id, f)?,
                _ => push_fields(&mut batch, id, f),
            }
        }
        Ok(batch)
    }
}

/// A page's live records: their ids, and for each the fields the queue
/// gave it or (`Err`) its rowid, for SQLite's.
type PageRecords = (Vec<String>, Vec<Result<Fields, i64>>);

/// Appends a record's id, document, uri and metadata to `batch`.
fn push_fields(batch: &mut SourceBatch, id: String, fields: Fields) {
    let metadata = (!fields.metadata.is_empty()).then_some(fields.metadata);
    batch.ids.push(id);
    batch.documents.push(fields.document);
    batch.uris.push(fields.uri);
    batch.metadatas.push(metadata);
}

/// Records gathered into batches of `size` for the sink.
struct Batches<'s> {
    batch: SourceBatch,
    size: usize,
    dim: usize,
    sink: &'s mut dyn FnMut(SourceBatch) -> bool,
}

impl<'s> Batches<'s> {
    fn new(size: usize, dim: usize, sink: &'s mut dyn FnMut(SourceBatch) -> bool) -> Self {
        Batches {
            batch: SourceBatch::with_capacity(size, dim),
            size,
            dim,
            sink,
        }
    }

    /// Hands the batch on once full; false when the sink wants no more.
    fn flush_full(&mut self) -> bool {
        if self.batch.len() < self.size {
            return true;
        }
        let full = std::mem::replace(
            &mut self.batch,
            SourceBatch::with_capacity(self.size, self.dim),
        );
        (self.sink)(full)
    }

    /// Records whose vectors (if read) come from the overlay or one read
    /// each.
    fn records(
        &mut self,
        ctx: &CollectionCtx,
        ids: Vec<String>,
        fields: Vec<Fields>,
    ) -> Result<bool, SourceError> {
        for (id, f) in ids.into_iter().zip(fields) {
            ctx.push_record(&mut self.batch, id, f)?;
            if !self.flush_full() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A page's records with their vectors, back to back in `vectors`. A
    /// page that is a whole batch becomes one without copying its vectors.
    fn page(&mut self, ids: Vec<String>, fields: Vec<Fields>, vectors: Vec<f32>) -> bool {
        if self.batch.is_empty() && ids.len() == self.size {
            self.batch.embeddings = vectors;
            for (id, f) in ids.into_iter().zip(fields) {
                push_fields(&mut self.batch, id, f);
            }
            return self.flush_full();
        }
        for (i, (id, f)) in ids.into_iter().zip(fields).enumerate() {
            self.batch
                .embeddings
                .extend_from_slice(&vectors[i * self.dim..(i + 1) * self.dim]);
            push_fields(&mut self.batch, id, f);
            if !self.flush_full() {
                return false;
            }
        }
        true
    }

    /// Hands on the last, partial batch.
    fn finish(self) {
        if !self.batch.is_empty() {
            (self.sink)(self.batch);
        }
    }
}
