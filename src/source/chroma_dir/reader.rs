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
use super::hnsw::{Hnsw, PageVectors, Pickle};
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
    /// [`Vectors::Read`]) its vector.
    fn push_record(
        &self,
        batch: &mut SourceBatch,
        id: String,
        fields: Fields,
        page: Option<&PageVectors>,
    ) -> Result<(), SourceError> {
        if self.vectors == Vectors::Read {
            self.push_vector(batch, &id, page)?;
        }
        let metadata = (!fields.metadata.is_empty()).then_some(fields.metadata);
        batch.ids.push(id);
        batch.documents.push(fields.document);
        batch.uris.push(fields.uri);
        batch.metadatas.push(metadata);
        Ok(())
    }

    /// Appends the vector of record `id` to `batch`: from the queue
    /// overlay, from `page` (the page's slots, read in bulk) or, failing
    /// those, from the HNSW files directly.
    fn push_vector(
        &self,
        batch: &mut SourceBatch,
        id: &str,
        page: Option<&PageVectors>,
    ) -> Result<(), SourceError> {
        let before = batch.embeddings.len();
        match self.overlay.vectors.get(id) {
            Some(Some(v)) => batch.embeddings.extend_from_slice(v),
            Some(None) => {
                return Err(self
                    .place
                    .corrupt(format!("record `{id}` exists but its vector was deleted")));
            }
            None => {
                let found = match &self.hnsw {
                    Some(h) => {
                        let in_page = match (page, h.label_of(id)?) {
                            (Some(v), Some(label)) => h.likely_slot(label).is_some_and(|slot| {
                                h.vector_in(v, slot, label, &mut batch.embeddings)
                            }),
                            _ => false,
                        };
                        in_page || h.vector(id, &mut batch.embeddings)?
                    }
                    None => false,
                };
                if !found {
                    return Err(self.place.corrupt(format!(
                        "record `{id}` has no vector in the HNSW files or the queue"
                    )));
                }
            }
        }
        if batch.embeddings.len() - before != batch.dim {
            return Err(self.place.corrupt(format!(
                "record `{id}` has a vector of dimension {}, the collection has {}",
                batch.embeddings.len() - before,
                batch.dim
            )));
        }
        Ok(())
    }

    /// Every live record, in batches of `batch_size`: with vectors, or
    /// without them (dimension 0) as the context was loaded.
    pub(super) fn read(
        &self,
        conn: &Connection,
        batch_size: usize,
        sink: &mut dyn FnMut(SourceBatch) -> bool,
    ) -> Result<(), SourceError> {
        let dim = self.batch_dim();
        let mut batch = SourceBatch::with_capacity(batch_size, dim);
        let mut last = i64::MIN;
        let mut vectors = PageVectors::default();
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
            let needs_sqlite: Vec<i64> = page
                .iter()
                .filter(|(_, id)| !self.overlay.fields.contains_key(id))
                .map(|(rowid, _)| *rowid)
                .collect();
            let mut fields = pages::fields(conn, &self.dir, self.arrays, &needs_sqlite)?;
            // The page's vectors in a few large reads: slots sorted and cut
            // into runs without big gaps (records written together sit in
            // nearby slots, though not always in row order). Under
            // `Vectors::Skip` there are no HNSW files open.
            if let Some(h) = &self.hnsw {
                let labels = h.labels()?;
                // Check one guess first: where labels are scattered (1.x)
                // the map is built now, before a page of wrong slots is read.
                if let Some(l) = page.iter().find_map(|(_, id)| labels.get(id)) {
                    h.find_slot(*l as u64)?;
                }
                let mut slots: Vec<u64> = page
                    .iter()
                    .filter(|(_, id)| !self.overlay.vectors.contains_key(id))
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
                h.read_runs(&runs, &mut vectors)?;
            }
            for (rowid, id) in page {
                let f = match self.overlay.fields.get(&id) {
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
        for id in &self.overlay.queue_only {
            if let Some(Some(f)) = self.overlay.fields.get(id) {
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
        let mut batch = SourceBatch::with_capacity(ids.len(), self.batch_dim());
        let base = self.base(conn);
        for id in ids {
            if let Some(f) = self.overlay.fields_of(&base, id)? {
                self.push_record(&mut batch, id.clone(), f, None)?;
            }
        }
        Ok(batch)
    }
}
