//! The vector segment's HNSW files, in chroma-hnswlib's persistence format
//! (version 1, the same from Chroma 0.4 to 1.x): `header.bin` (the element
//! layout and count), `data_level0.bin` (one element per slot: link header
//! with the deleted mark, links, the vector, the label), `length.bin` (one
//! f32 norm per element) and `index_metadata.pickle` (id ↔ label).
//!
//! Every size the header claims is checked before a byte is read on its
//! word: an unknown version, a layout that does not fit, a count whose bytes
//! overflow or exceed `data_level0.bin`, a cosine segment without its norms
//! are errors naming the file. Cosine spaces store unit vectors, so their
//! original vectors exist only as stored × `length.bin`; returning the unit
//! vectors would "succeed" with wrong data.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::source::SourceError;

/// The persistence version chroma-hnswlib writes; it refuses to load any
/// other, and so does this reader.
const PERSISTENCE_VERSION: i32 = 1;
/// `header.bin`: i32 version, u64 offsetLevel0, u64 max_elements, u64
/// cur_element_count, u64 size_data_per_element, u64 label_offset, u64
/// offsetData, i32 maxlevel, u32 enterpoint, u64 maxM, u64 maxM0, u64 M,
/// f64 mult, u64 ef_construction; little-endian, packed.
const HEADER_LEN: usize = 100;

const SEGMENT_HINT: &str = "the segment files are incomplete or damaged; restore the directory from a backup, or read the collection through a running Chroma server (`source.chroma.url`)";

/// What `header.bin` says about the elements of `data_level0.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) cur_count: u64,
    pub(super) size_per_element: u64,
    pub(super) label_offset: u64,
    pub(super) offset_data: u64,
    pub(super) dim: usize,
}

impl Header {
    /// Parses and checks `header.bin`; the error is the reason, for an
    /// error naming the file.
    pub(super) fn parse(bytes: &[u8]) -> Result<Header, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "{} bytes; an HNSW header has {HEADER_LEN}",
                bytes.len()
            ));
        }
        let version = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        if version != PERSISTENCE_VERSION {
            return Err(format!(
                "HNSW persistence version {version}; this reader knows version {PERSISTENCE_VERSION}"
            ));
        }
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let offset_level0 = u64_at(4);
        let cur_count = u64_at(20);
        let size_per_element = u64_at(28);
        let label_offset = u64_at(36);
        let offset_data = u64_at(44);
        if offset_level0 != 0 {
            return Err(format!(
                "level-0 offset {offset_level0}; hnswlib always writes 0"
            ));
        }
        // An element: a 4-byte link header (with the deleted mark) and the
        // links, then `dim` f32 at offset_data, then the u64 label at
        // label_offset, all within size_per_element.
        let fits = offset_data >= 4
            && label_offset > offset_data
            && (label_offset - offset_data).is_multiple_of(4)
            && label_offset
                .checked_add(8)
                .is_some_and(|end| end <= size_per_element);
        if !fits {
            return Err(format!(
                "inconsistent element layout: vector at byte {offset_data}, label at byte {label_offset}, {size_per_element} bytes per element"
            ));
        }
        if cur_count.checked_mul(size_per_element).is_none() {
            return Err(format!(
                "the header lists {cur_count} elements of {size_per_element} bytes, which overflows a 64-bit size"
            ));
        }
        Ok(Header {
            cur_count,
            size_per_element,
            label_offset,
            offset_data,
            dim: ((label_offset - offset_data) / 4) as usize,
        })
    }

    /// Checks that `data_level0.bin` (`len` bytes) holds every element.
    pub(super) fn check_data_len(&self, len: u64) -> Result<(), String> {
        // `parse` checked that the product fits.
        let need = self.cur_count * self.size_per_element;
        if len < need {
            return Err(format!(
                "truncated: {len} bytes, but the header lists {} elements of {} bytes",
                self.cur_count, self.size_per_element
            ));
        }
        Ok(())
    }

    /// Checks that `length.bin` (`len` bytes) holds a norm per element.
    pub(super) fn check_lengths_len(&self, len: u64) -> Result<(), String> {
        // At most the data's size (an element is over 4 bytes): no overflow.
        let need = self.cur_count * 4;
        if len < need {
            return Err(format!(
                "truncated: {len} bytes, but the header lists {} elements of one 4-byte norm each",
                self.cur_count
            ));
        }
        Ok(())
    }
}

/// What `index_metadata.pickle` holds (a dict in 1.x, a `PersistentData`
/// instance in 0.x; serde-pickle reads both as a map).
#[derive(Debug, Deserialize)]
pub(super) struct PersistentData {
    #[serde(default)]
    pub(super) dimensionality: Option<i64>,
    #[serde(default)]
    pub(super) max_seq_id: Option<i64>,
    #[serde(default)]
    pub(super) id_to_label: HashMap<String, i64>,
}

/// A segment's `index_metadata.pickle`.
pub(super) struct Pickle {
    path: PathBuf,
    collection: String,
}

impl Pickle {
    pub(super) fn new(path: PathBuf, collection: String) -> Pickle {
        Pickle { path, collection }
    }

    pub(super) fn exists(&self) -> bool {
        self.path.exists()
    }

    pub(super) fn read(&self) -> Result<PersistentData, SourceError> {
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

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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
pub(super) struct Hnsw {
    data: File,
    data_path: PathBuf,
    /// `length.bin`, opened for cosine spaces only: their stored vectors
    /// are unit vectors, and this holds the norms that restore them.
    lengths: Option<(File, PathBuf)>,
    size_per_element: u64,
    offset_data: u64,
    label_offset: u64,
    cur_count: u64,
    pub(super) dim: usize,
    /// label → slot, built on the first failed guess.
    slots: OnceLock<FastMap<u64, u64>>,
    pickle: Pickle,
    /// id → label, from the pickle, read on first use.
    id_to_label: OnceLock<FastMap<String, i64>>,
}

impl Hnsw {
    /// Opens the files in `dir`. `parsed`: the pickle, if the caller had to
    /// read it already. `cosine`: the collection's space is cosine, so the
    /// vectors are de-normalised with `length.bin`, which must exist.
    pub(super) fn open(
        dir: &Path,
        pickle: Pickle,
        parsed: Option<PersistentData>,
        cosine: bool,
    ) -> Result<Option<Hnsw>, SourceError> {
        let collection = pickle.collection.clone();
        let corrupt = |file: &Path, reason: String| SourceError::Corrupt {
            file: file.display().to_string(),
            collection: collection.clone(),
            reason,
            hint: SEGMENT_HINT.into(),
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
        let bytes = std::fs::read(&header_path).map_err(io(&header_path))?;
        let header = Header::parse(&bytes).map_err(|reason| corrupt(&header_path, reason))?;
        let data_path = dir.join("data_level0.bin");
        let data = File::open(&data_path).map_err(io(&data_path))?;
        let len = data.metadata().map_err(io(&data_path))?.len();
        header
            .check_data_len(len)
            .map_err(|reason| corrupt(&data_path, reason))?;
        // chroma-hnswlib writes `length.bin` for every space (and refuses to
        // load an index without it); only cosine needs it to restore vectors.
        let lengths = if cosine {
            let path = dir.join("length.bin");
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(corrupt(
                        &path,
                        "missing; the collection's space is cosine, so its vectors are stored normalised and this file holds their norms: without it the original vectors cannot be restored".into(),
                    ));
                }
                Err(e) => return Err(io(&path)(e)),
            };
            let len = file.metadata().map_err(io(&path))?.len();
            header
                .check_lengths_len(len)
                .map_err(|reason| corrupt(&path, reason))?;
            Some((file, path))
        } else {
            None
        };
        let hnsw = Hnsw {
            data,
            data_path,
            lengths,
            size_per_element: header.size_per_element,
            offset_data: header.offset_data,
            label_offset: header.label_offset,
            cur_count: header.cur_count,
            dim: header.dim,
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
                reason: format!("dimension {d} disagrees with `header.bin` ({})", self.dim),
                hint: SEGMENT_HINT.into(),
            });
        }
        Ok(self
            .id_to_label
            .get_or_init(|| p.id_to_label.into_iter().collect()))
    }

    pub(super) fn labels(&self) -> Result<&FastMap<String, i64>, SourceError> {
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

    pub(super) fn label_of(&self, id: &str) -> Result<Option<u64>, SourceError> {
        Ok(self.labels()?.get(id).map(|l| *l as u64))
    }

    /// Where `label` probably is: its mapped slot once the map exists,
    /// before that the usual slot `label - 1` (checked by the caller).
    pub(super) fn likely_slot(&self, label: u64) -> Option<u64> {
        match self.slots.get() {
            Some(m) => m.get(&label).copied(),
            None => label.checked_sub(1).filter(|s| *s < self.cur_count),
        }
    }

    /// The slot that holds `label`, checked against the element itself.
    pub(super) fn find_slot(&self, label: u64) -> Result<Option<u64>, SourceError> {
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

    pub(super) fn contains(&self, id: &str) -> Result<bool, SourceError> {
        match self.label_of(id)? {
            Some(label) => Ok(self.find_slot(label)?.is_some()),
            None => Ok(false),
        }
    }

    /// Reads runs of consecutive slots (`first..=last` each) with one read
    /// of `data_level0.bin` (and, for cosine, one of `length.bin`) per run,
    /// into `into`'s buffers: records written together sit in nearby slots,
    /// so a page takes a few large reads instead of two small ones per
    /// record. The buffers are reused page after page (grown, never zeroed
    /// again).
    pub(super) fn read_runs(
        &self,
        runs: &[(u64, u64)],
        into: &mut PageVectors,
    ) -> Result<(), SourceError> {
        let spe = self.size_per_element as usize;
        let total: usize = runs.iter().map(|(lo, hi)| (hi - lo + 1) as usize).sum();
        if into.bytes.len() < total * spe {
            into.bytes.resize(total * spe, 0);
        }
        into.runs.clear();
        into.norms.clear();
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
            if let Some((f, path)) = &self.lengths {
                norm_bytes.resize(n * 4, 0);
                f.read_exact_at(&mut norm_bytes, first * 4)
                    .map_err(|source| SourceError::Io {
                        path: path.display().to_string(),
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
    /// [`Hnsw::read_runs`], if they hold it in `slot`; de-normalised for
    /// cosine spaces (stored unit vector × its norm from `length.bin`).
    pub(super) fn vector_in(
        &self,
        v: &PageVectors,
        slot: u64,
        label: u64,
        out: &mut Vec<f32>,
    ) -> bool {
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
        // `read_runs` read a norm for every element when `length.bin` is open.
        let scale = if self.lengths.is_some() {
            v.norms[e]
        } else {
            1.0
        };
        out.extend(
            element[at..at + self.dim * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) * scale),
        );
        true
    }

    /// Appends the vector of `id` (de-normalised for cosine spaces).
    pub(super) fn vector(&self, id: &str, out: &mut Vec<f32>) -> Result<bool, SourceError> {
        let Some(label) = self.label_of(id)? else {
            return Ok(false);
        };
        let Some(slot) = self.find_slot(label)? else {
            return Ok(false);
        };
        let mut v = PageVectors::default();
        self.read_runs(&[(slot, slot)], &mut v)?;
        Ok(self.vector_in(&v, slot, label, out))
    }
}

/// Slots read by [`Hnsw::read_runs`]: the elements of every run back to
/// back in `bytes`, and their cosine norms (empty when not cosine).
#[derive(Default)]
pub(super) struct PageVectors {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A `header.bin` as chroma-hnswlib writes it.
    fn header_bytes(
        version: i32,
        cur: u64,
        spe: u64,
        label_offset: u64,
        offset_data: u64,
    ) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // offsetLevel0
        b.extend_from_slice(&cur.saturating_add(100).to_le_bytes()); // max_elements
        b.extend_from_slice(&cur.to_le_bytes());
        b.extend_from_slice(&spe.to_le_bytes());
        b.extend_from_slice(&label_offset.to_le_bytes());
        b.extend_from_slice(&offset_data.to_le_bytes());
        b.extend_from_slice(&0i32.to_le_bytes()); // maxlevel
        b.extend_from_slice(&0u32.to_le_bytes()); // enterpoint
        for m in [16u64, 32, 16] {
            b.extend_from_slice(&m.to_le_bytes()); // maxM, maxM0, M
        }
        b.extend_from_slice(&(1.0 / 16f64.ln()).to_le_bytes()); // mult
        b.extend_from_slice(&100u64.to_le_bytes()); // ef_construction
        assert_eq!(b.len(), HEADER_LEN);
        b
    }

    /// Dimension 8 with maxM0 32, as Chroma writes it: 172-byte elements.
    fn dim8(version: i32, cur: u64) -> Vec<u8> {
        header_bytes(version, cur, 172, 164, 132)
    }

    #[test]
    fn a_valid_header_parses() {
        let h = Header::parse(&dim8(1, 10)).unwrap();
        assert_eq!(
            h,
            Header {
                cur_count: 10,
                size_per_element: 172,
                label_offset: 164,
                offset_data: 132,
                dim: 8,
            }
        );
        h.check_data_len(1720).unwrap();
        h.check_lengths_len(40).unwrap();
        // Files grow ahead of the count (resizes, max_elements).
        h.check_data_len(172_000).unwrap();
    }

    #[test]
    fn an_unknown_persistence_version_is_refused() {
        for version in [0, 2, -1, 0x7fff_ffff] {
            let err = Header::parse(&dim8(version, 10)).unwrap_err();
            assert!(
                err.contains(&format!("version {version}")) && err.contains("knows version 1"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_truncated_header_is_refused() {
        let full = dim8(1, 10);
        for n in [0, 3, 4, 60, 99] {
            let err = Header::parse(&full[..n]).unwrap_err();
            assert!(
                err.contains(&format!("{n} bytes")) && err.contains("has 100"),
                "{err}"
            );
        }
    }

    #[test]
    fn element_bytes_that_overflow_or_exceed_the_file_are_refused() {
        // count × element size beyond u64.
        let err = Header::parse(&dim8(1, u64::MAX / 100)).unwrap_err();
        assert!(err.contains("overflows"), "{err}");
        let err = Header::parse(&header_bytes(1, 2, u64::MAX / 2 + 1, 164, 132)).unwrap_err();
        assert!(err.contains("overflows"), "{err}");
        // count × element size beyond the file.
        let h = Header::parse(&dim8(1, 10)).unwrap();
        let err = h.check_data_len(1719).unwrap_err();
        assert!(
            err.contains("truncated") && err.contains("1719 bytes") && err.contains("10 elements"),
            "{err}"
        );
        let err = h.check_lengths_len(39).unwrap_err();
        assert!(
            err.contains("truncated") && err.contains("39 bytes"),
            "{err}"
        );
    }

    #[test]
    fn an_inconsistent_layout_is_refused_without_panicking() {
        for (spe, label_offset, offset_data) in [
            (172, 132, 164),               // label before the vector
            (172, 165, 132),               // a vector of 33 bytes
            (168, 164, 132),               // the label does not fit
            (u64::MAX, u64::MAX - 3, 132), // label end beyond u64
            (28, 20, 0),                   // no room for the link header
        ] {
            let err =
                Header::parse(&header_bytes(1, 1, spe, label_offset, offset_data)).unwrap_err();
            assert!(err.contains("inconsistent element layout"), "{err}");
        }
        let mut level0 = dim8(1, 1);
        level0[4] = 8;
        let err = Header::parse(&level0).unwrap_err();
        assert!(err.contains("level-0 offset 8"), "{err}");
    }

    /// Writes a one-element segment of dimension 2 (maxM0 2: a 4-byte link
    /// header and two links, then the vector, then the label): id `a`,
    /// label 1, in slot 0, stored vector `stored`; and `length.bin` with
    /// `norm` if given.
    fn segment(dir: &Path, stored: [f32; 2], norm: Option<f32>) {
        std::fs::write(dir.join("header.bin"), header_bytes(1, 1, 28, 20, 12)).unwrap();
        let mut element = vec![0u8; 12];
        for x in stored {
            element.extend_from_slice(&x.to_le_bytes());
        }
        element.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(element.len(), 28);
        std::fs::write(dir.join("data_level0.bin"), element).unwrap();
        if let Some(n) = norm {
            std::fs::write(dir.join("length.bin"), n.to_le_bytes()).unwrap();
        }
    }

    fn open(dir: &Path, cosine: bool) -> Result<Option<Hnsw>, SourceError> {
        let pickle = Pickle::new(dir.join("index_metadata.pickle"), "docs".into());
        let parsed = PersistentData {
            dimensionality: Some(2),
            max_seq_id: None,
            id_to_label: HashMap::from([("a".to_string(), 1)]),
        };
        Hnsw::open(dir, pickle, Some(parsed), cosine)
    }

    fn vector_of(h: &Hnsw, id: &str) -> Vec<f32> {
        let mut out = Vec::new();
        assert!(h.vector(id, &mut out).unwrap(), "no vector for `{id}`");
        out
    }

    fn error_of(r: Result<Option<Hnsw>, SourceError>) -> String {
        match r {
            Ok(_) => panic!("the segment opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn cosine_vectors_are_restored_with_their_norms() {
        let tmp = tempfile::tempdir().unwrap();
        segment(tmp.path(), [0.5, 0.25], Some(4.0));
        let h = open(tmp.path(), true).unwrap().expect("a segment");
        assert_eq!(vector_of(&h, "a"), [2.0, 1.0]);
        assert!(h.contains("a").unwrap() && !h.contains("b").unwrap());
        // Other spaces store the vector itself and never read the norms.
        let h = open(tmp.path(), false).unwrap().expect("a segment");
        assert_eq!(vector_of(&h, "a"), [0.5, 0.25]);
    }

    #[test]
    fn a_cosine_segment_without_length_bin_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        segment(tmp.path(), [0.5, 0.25], None);
        let err = error_of(open(tmp.path(), true));
        assert!(
            err.contains("length.bin")
                && err.contains("missing")
                && err.contains("cosine")
                && err.contains("`docs`")
                && err.contains("hint:"),
            "{err}"
        );
        // An l2 segment does not need it.
        let h = open(tmp.path(), false).unwrap().expect("a segment");
        assert_eq!(vector_of(&h, "a"), [0.5, 0.25]);
    }

    #[test]
    fn short_segment_files_are_refused_naming_them() {
        let tmp = tempfile::tempdir().unwrap();
        segment(tmp.path(), [0.5, 0.25], Some(4.0));
        std::fs::write(tmp.path().join("length.bin"), [0u8; 3]).unwrap();
        let err = error_of(open(tmp.path(), true));
        assert!(
            err.contains("length.bin") && err.contains("truncated"),
            "{err}"
        );

        segment(tmp.path(), [0.5, 0.25], Some(4.0));
        std::fs::write(tmp.path().join("data_level0.bin"), [0u8; 27]).unwrap();
        let err = error_of(open(tmp.path(), false));
        assert!(
            err.contains("data_level0.bin") && err.contains("truncated"),
            "{err}"
        );

        segment(tmp.path(), [0.5, 0.25], Some(4.0));
        std::fs::write(
            tmp.path().join("header.bin"),
            header_bytes(2, 1, 28, 20, 12),
        )
        .unwrap();
        let err = error_of(open(tmp.path(), false));
        assert!(
            err.contains("header.bin") && err.contains("version 2"),
            "{err}"
        );
    }
}
