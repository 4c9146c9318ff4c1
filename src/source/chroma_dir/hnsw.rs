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
    pub(super) id_to_label: FastMap<String, i64>,
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
        if let Some(p) = super::pickle::parse(&bytes) {
            return Ok(p);
        }
        tracing::debug!(
            "{}: not a pickle the fast reader knows; reading it with serde-pickle",
            self.path.display()
        );
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

pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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
    /// Labels mapped near failed guesses, before (or instead of) `slots`.
    near: std::sync::Mutex<Near>,
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
            near: Default::default(),
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
        Ok(self.id_to_label.get_or_init(|| p.id_to_label))
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

    /// Gets ready to read vectors: reads the pickle's id → label map and,
    /// where labels are not in their usual slots, the label → slot map.
    /// Each takes tens of milliseconds at 100,000 records and neither
    /// needs the other, so they run on two threads at once, before the
    /// first page is read.
    pub(super) fn prepare(&self) -> Result<(), SourceError> {
        let (slots, labels) = both(|| self.map_if_scattered(), || self.labels().map(|_| ()));
        labels.and(slots)
    }

    /// Builds the slot map unless the first, middle and last live
    /// elements hold labels 1, 2, 3… in slot order (Chroma 0.x, and 1.x
    /// collections written a record at a time). 1.x adds a batch's records
    /// on several threads, which scatters their labels over the batch's
    /// slots. A guess that still fails later builds the map then.
    fn map_if_scattered(&self) -> Result<(), SourceError> {
        if self.cur_count == 0 {
            return Ok(());
        }
        let mut element = vec![0u8; self.size_per_element as usize];
        for slot in [0, self.cur_count / 2, self.cur_count - 1] {
            self.data
                .read_exact_at(&mut element, slot * self.size_per_element)
                .map_err(|e| self.io_err(e))?;
            match self.live_label(&element) {
                Some(label) if label != slot + 1 => {
                    self.slot_map()?;
                    return Ok(());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The label → slot map of every live element, read once, the two
    /// halves of the file on two threads.
    fn slot_map(&self) -> Result<&FastMap<u64, u64>, SourceError> {
        if let Some(m) = self.slots.get() {
            return Ok(m);
        }
        tracing::debug!(
            "{}: labels are not in their usual slots; mapping all {} elements",
            self.data_path.display(),
            self.cur_count
        );
        let half = self.cur_count / 2;
        let (a, b) = both(
            || self.labels_in(half..self.cur_count),
            || self.labels_in(0..half),
        );
        let mut slots =
            FastMap::with_capacity_and_hasher(self.cur_count as usize, Default::default());
        slots.extend(a?.into_iter().chain(b?));
        Ok(self.slots.get_or_init(|| slots))
    }

    /// The slot of `label` among the elements near its usual slot, mapped
    /// [`BLOCK`] slots at a time outwards from it, up to [`NEAR`] slots
    /// away; `None` if it is not there. Chroma 1.x scatters a batch's labels
    /// over that batch's slots only, so the few records a sync fetches are
    /// found without mapping every element (a system call each for wide
    /// elements: 100,000 for 100,000 records, where a 1 % sync needs a
    /// few blocks). What was mapped is kept for the next label.
    fn near_slot(&self, label: u64) -> Result<Option<u64>, SourceError> {
        if self.cur_count == 0 {
            return Ok(None);
        }
        let mut near = self.near.lock().unwrap_or_else(|p| p.into_inner());
        if near.scanned.is_empty() {
            near.scanned = vec![false; self.cur_count.div_ceil(BLOCK) as usize];
        }
        if let Some(slot) = near.map.get(&label) {
            return Ok(Some(*slot));
        }
        let centre = (label.saturating_sub(1).min(self.cur_count - 1) / BLOCK) as i64;
        let reach = (NEAR / BLOCK) as i64;
        let blocks = near.scanned.len() as i64;
        // The centre block, then one each side, and so on outwards.
        for step in 0..=2 * reach {
            let b = centre
                + if step % 2 == 0 {
                    -step / 2
                } else {
                    (step + 1) / 2
                };
            if b < 0 || b >= blocks || near.scanned[b as usize] {
                continue;
            }
            let start = b as u64 * BLOCK;
            let found = self.labels_in(start..(start + BLOCK).min(self.cur_count))?;
            near.map.extend(found);
            near.scanned[b as usize] = true;
            if let Some(slot) = near.map.get(&label) {
                return Ok(Some(*slot));
            }
        }
        Ok(None)
    }

    /// (label, slot) of the live elements in `slots`.
    fn labels_in(&self, slots: std::ops::Range<u64>) -> Result<Vec<(u64, u64)>, SourceError> {
        let spe = self.size_per_element;
        let mut out = Vec::with_capacity((slots.end - slots.start) as usize);
        if spe >= 1024 && self.label_offset + 8 == spe {
            // Wide elements: read only what is needed. The label is an
            // element's last 8 bytes and the next element's link header
            // (with the deleted mark) follows it, so one 12-byte read per
            // element gives both.
            let mut header = [0u8; 4];
            if slots.start < slots.end {
                self.data
                    .read_exact_at(&mut header, slots.start * spe)
                    .map_err(|e| self.io_err(e))?;
            }
            let mut buf = [0u8; 12];
            for slot in slots {
                let len = if slot + 1 < self.cur_count { 12 } else { 8 };
                self.data
                    .read_exact_at(&mut buf[..len], slot * spe + self.label_offset)
                    .map_err(|e| self.io_err(e))?;
                if header[2] & 0x01 == 0 {
                    out.push((
                        u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")),
                        slot,
                    ));
                }
                header.copy_from_slice(&buf[8..12]);
            }
            return Ok(out);
        }
        // Small elements: whole, in chunks of about 4 MiB.
        let chunk_elems = (4 << 20) / spe.max(1) + 1;
        let mut buf = Vec::new();
        let mut slot = slots.start;
        while slot < slots.end {
            let n = chunk_elems.min(slots.end - slot);
            buf.resize((n * spe) as usize, 0);
            self.data
                .read_exact_at(&mut buf, slot * spe)
                .map_err(|e| self.io_err(e))?;
            for i in 0..n {
                let element = &buf[(i * spe) as usize..((i + 1) * spe) as usize];
                if let Some(label) = self.live_label(element) {
                    out.push((label, slot + i));
                }
            }
            slot += n;
        }
        Ok(out)
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
        self.locate(label)
    }

    /// The slot that holds `label`, without trying its usual slot first
    /// (the caller did): from the map if built, else near the usual slot,
    /// else from the map built now.
    fn locate(&self, label: u64) -> Result<Option<u64>, SourceError> {
        if let Some(m) = self.slots.get() {
            return Ok(m.get(&label).copied());
        }
        if let Some(slot) = self.near_slot(label)? {
            return Ok(Some(slot));
        }
        Ok(self.slot_map()?.get(&label).copied())
    }

    pub(super) fn contains(&self, id: &str) -> Result<bool, SourceError> {
        match self.label_of(id)? {
            Some(label) => Ok(self.find_slot(label)?.is_some()),
            None => Ok(false),
        }
    }

    /// How many unwanted slots between two wanted ones are read (into a
    /// scratch buffer) rather than skipped with another system call: up to
    /// a page (4 KiB) of them. None for elements larger than that (high
    /// dimensions): there, copying a gap costs more than the call it saves,
    /// and Chroma 1.x scatters a batch's labels over its slots, so a page's
    /// vectors are rarely neighbours.
    fn merge_gap(&self) -> u64 {
        4096 / self.size_per_element
    }

    /// Reads the vectors `wants` asks for straight into `out` (vector
    /// `w.at` is `out[w.at * dim..][..dim]`), de-normalised for cosine
    /// spaces, and returns which places were filled. A want is filled only
    /// if its slot holds its label and is not marked deleted; the caller
    /// looks the others up another way.
    ///
    /// One `preadv` per run of nearby slots scatters each element: the
    /// vector to its place in `out`, the link header and the label to
    /// scratch buffers where they are checked. The bytes of a vector are
    /// thus copied once, by the kernel, instead of into a buffer and then
    /// again into the batch.
    pub(super) fn read_into(
        &self,
        wants: &mut [Want],
        out: &mut [f32],
        bufs: &mut ReadBuffers,
    ) -> Result<Vec<bool>, SourceError> {
        let places = out.len().checked_div(self.dim).unwrap_or(0);
        let mut filled = vec![false; places];
        if wants.is_empty() {
            return Ok(filled);
        }
        assert!(
            wants.iter().all(|w| w.at < places),
            "a wanted vector's place is outside the output"
        );
        wants.sort_unstable_by_key(|w| w.slot);
        let spe = self.size_per_element as usize;
        let head = self.offset_data as usize;
        let body = self.dim * 4;
        let tail = spe - head - body;
        let gap = self.merge_gap();
        bufs.heads.resize(wants.len() * head, 0);
        bufs.tails.resize(wants.len() * tail, 0);
        bufs.gaps.resize(gap as usize * spe, 0);
        let mut i = 0;
        while i < wants.len() {
            // The group: wants[i..j], strictly increasing slots at most
            // `gap` apart, within the kernel's limit on iovecs per call.
            let mut j = i + 1;
            let mut iovs = 3;
            while j < wants.len() {
                let d = wants[j].slot.wrapping_sub(wants[j - 1].slot);
                let extra = if d > 1 { 4 } else { 3 };
                if d == 0 || d > gap + 1 || iovs + extra > MAX_IOVECS {
                    break;
                }
                iovs += extra;
                j += 1;
            }
            let first = wants[i].slot;
            let len = (wants[j - 1].slot - first + 1) as usize * spe;
            let out_base = out.as_mut_ptr().cast::<u8>();
            let heads = bufs.heads.as_mut_ptr();
            let tails = bufs.tails.as_mut_ptr();
            let gaps = bufs.gaps.as_mut_ptr();
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(iovs);
            for k in i..j {
                if k > i {
                    let skip = (wants[k].slot - wants[k - 1].slot - 1) as usize * spe;
                    if skip > 0 {
                        iov.push(libc::iovec {
                            iov_base: gaps.cast(),
                            iov_len: skip,
                        });
                    }
                }
                // SAFETY (pointer arithmetic): k < wants.len(), so the
                // scratch offsets are within the buffers resized above,
                // and `at < places` (asserted) keeps the vector within
                // `out`.
                let (h, v, t) = unsafe {
                    (
                        heads.add(k * head),
                        out_base.add(wants[k].at * body),
                        tails.add(k * tail),
                    )
                };
                iov.push(libc::iovec {
                    iov_base: h.cast(),
                    iov_len: head,
                });
                iov.push(libc::iovec {
                    iov_base: v.cast(),
                    iov_len: body,
                });
                iov.push(libc::iovec {
                    iov_base: t.cast(),
                    iov_len: tail,
                });
            }
            let offset = first * self.size_per_element;
            let read = preadv(&self.data, &iov, offset).map_err(|e| self.io_err(e))?;
            drop(iov);
            if read < len {
                // The file ended early (a writer shrank it meanwhile): read
                // the group element by element, which says where.
                self.read_each(&wants[i..j], i, out, bufs)?;
            }
            i = j;
        }
        for (k, w) in wants.iter().enumerate() {
            let deleted = bufs.heads[k * head + 2] & 0x01 != 0;
            let label = u64::from_le_bytes(
                bufs.tails[k * tail..k * tail + 8]
                    .try_into()
                    .expect("8 bytes"),
            );
            if !deleted && label == w.label {
                filled[w.at] = true;
            }
        }
        if cfg!(target_endian = "big") {
            for x in out.iter_mut() {
                *x = f32::from_bits(u32::from_le(x.to_bits()));
            }
        }
        if self.lengths.is_some() {
            self.scale_by_norms(wants, &filled, out, bufs)?;
        }
        Ok(filled)
    }

    /// [`Hnsw::read_into`]'s fallback for a group whose `preadv` came back
    /// short: one element at a time, failing with the offset that is gone.
    fn read_each(
        &self,
        group: &[Want],
        first_index: usize,
        out: &mut [f32],
        bufs: &mut ReadBuffers,
    ) -> Result<(), SourceError> {
        let spe = self.size_per_element as usize;
        let head = self.offset_data as usize;
        let body = self.dim * 4;
        let tail = spe - head - body;
        let mut element = vec![0u8; spe];
        for (n, w) in group.iter().enumerate() {
            let k = first_index + n;
            self.data
                .read_exact_at(&mut element, w.slot * self.size_per_element)
                .map_err(|e| self.io_err(e))?;
            bufs.heads[k * head..(k + 1) * head].copy_from_slice(&element[..head]);
            bufs.tails[k * tail..(k + 1) * tail].copy_from_slice(&element[head + body..]);
            for (x, c) in out[w.at * self.dim..(w.at + 1) * self.dim]
                .iter_mut()
                .zip(element[head..head + body].chunks_exact(4))
            {
                *x = f32::from_ne_bytes(c.try_into().expect("4 bytes"));
            }
        }
        Ok(())
    }

    /// Multiplies each filled vector by its norm from `length.bin`: one
    /// read per run of slots within 1,024 of each other (4 KiB of norms).
    fn scale_by_norms(
        &self,
        wants: &[Want],
        filled: &[bool],
        out: &mut [f32],
        bufs: &mut ReadBuffers,
    ) -> Result<(), SourceError> {
        let Some((file, path)) = &self.lengths else {
            return Ok(());
        };
        let mut i = 0;
        while i < wants.len() {
            let mut j = i + 1;
            while j < wants.len() && wants[j].slot <= wants[j - 1].slot + NORM_GAP {
                j += 1;
            }
            let first = wants[i].slot;
            let n = (wants[j - 1].slot - first + 1) as usize;
            bufs.norms.resize(n * 4, 0);
            file.read_exact_at(&mut bufs.norms, first * 4)
                .map_err(|source| SourceError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
            for w in &wants[i..j] {
                if !filled[w.at] {
                    continue;
                }
                let o = (w.slot - first) as usize * 4;
                let norm = f32::from_le_bytes(bufs.norms[o..o + 4].try_into().expect("4 bytes"));
                for x in &mut out[w.at * self.dim..(w.at + 1) * self.dim] {
                    *x *= norm;
                }
            }
            i = j;
        }
        Ok(())
    }

    /// Appends the vector of `id` (de-normalised for cosine spaces).
    /// Called for records whose usual slot [`Hnsw::read_into`] already
    /// found without their label, so that slot is not read again.
    pub(super) fn vector(&self, id: &str, out: &mut Vec<f32>) -> Result<bool, SourceError> {
        let Some(label) = self.label_of(id)? else {
            return Ok(false);
        };
        let Some(slot) = self.locate(label)? else {
            return Ok(false);
        };
        let before = out.len();
        out.resize(before + self.dim, 0.0);
        let mut want = [Want { slot, label, at: 0 }];
        let filled = self.read_into(&mut want, &mut out[before..], &mut ReadBuffers::default())?;
        if !filled[0] {
            out.truncate(before);
        }
        Ok(filled[0])
    }
}

/// Runs `a` on a scoped thread and `b` on this one, and returns both
/// results; a panic on the other thread becomes the reader's crash error
/// rather than ending the process.
fn both<A: Send, B>(
    a: impl FnOnce() -> Result<A, SourceError> + Send,
    b: impl FnOnce() -> Result<B, SourceError>,
) -> (Result<A, SourceError>, Result<B, SourceError>) {
    std::thread::scope(|s| {
        let a = s.spawn(a);
        let b = b();
        let a = a.join().unwrap_or_else(|panic| {
            Err(SourceError::ReaderCrashed {
                reason: crate::source::panic_text(&panic),
            })
        });
        (a, b)
    })
}

/// The labels of some blocks of slots, found by [`Hnsw::near_slot`].
#[derive(Default)]
struct Near {
    map: FastMap<u64, u64>,
    /// Per block of [`BLOCK`] slots: mapped yet?
    scanned: Vec<bool>,
}

/// Slots [`Hnsw::near_slot`] maps at a time.
const BLOCK: u64 = 1024;
/// How far from its usual slot [`Hnsw::near_slot`] looks for a label:
/// beyond a 1.x batch (chromadb's largest is 5,461 records) on each side.
const NEAR: u64 = 8192;

/// Linux's limit on iovecs per `preadv` (UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;
/// Slots apart whose norms are still read in one go (4 KiB of them).
const NORM_GAP: u64 = 1024;

/// `preadv(2)`, retried when a signal interrupts it.
fn preadv(file: &File, iov: &[libc::iovec], offset: u64) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: every iovec points into a live buffer that this thread
        // borrows mutably for the whole call (`read_into`), at least
        // `iov_len` bytes long, and no two overlap except the gap buffer,
        // whose contents are never read.
        let n = unsafe {
            libc::preadv(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A vector wanted from `data_level0.bin`: the slot that probably holds
/// its label, the label, and its place in the output (counted in vectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Want {
    pub(super) slot: u64,
    pub(super) label: u64,
    pub(super) at: usize,
}

/// Scratch buffers [`Hnsw::read_into`] reuses page after page: each
/// element's link header and label, skipped gaps, and norms.
#[derive(Default)]
pub(super) struct ReadBuffers {
    heads: Vec<u8>,
    tails: Vec<u8>,
    gaps: Vec<u8>,
    norms: Vec<u8>,
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
            id_to_label: FastMap::from_iter([("a".to_string(), 1)]),
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

    /// A segment of `n` elements of dimension `dim` whose labels are
    /// scattered as Chroma 1.x scatters them: shuffled within batches of
    /// `batch` slots. Element of label `l`: vector `[l, l + 0.5, …]`; the
    /// pickle maps `id-l` → `l`. Returns the slot of each label.
    fn scattered(dir: &Path, n: u64, dim: usize, batch: u64) -> (Hnsw, FastMap<u64, u64>) {
        let (head, spe) = (12u64, 12 + dim as u64 * 4 + 8);
        std::fs::write(
            dir.join("header.bin"),
            header_bytes(1, n, spe, head + dim as u64 * 4, head),
        )
        .unwrap();
        let mut labels: Vec<u64> = (1..=n).collect();
        for chunk in labels.chunks_mut(batch as usize) {
            // A fixed shuffle: reverse, then swap neighbours.
            chunk.reverse();
            for pair in chunk.chunks_mut(2) {
                pair.reverse();
            }
        }
        let mut data = Vec::with_capacity((n * spe) as usize);
        let mut where_ = FastMap::default();
        for (slot, l) in labels.iter().enumerate() {
            data.extend_from_slice(&[0u8; 12]);
            for j in 0..dim {
                data.extend_from_slice(&(*l as f32 + j as f32 * 0.5).to_le_bytes());
            }
            data.extend_from_slice(&l.to_le_bytes());
            where_.insert(*l, slot as u64);
        }
        std::fs::write(dir.join("data_level0.bin"), data).unwrap();
        let parsed = PersistentData {
            dimensionality: Some(dim as i64),
            max_seq_id: None,
            id_to_label: (1..=n).map(|l| (format!("id-{l}"), l as i64)).collect(),
        };
        let pickle = Pickle::new(dir.join("index_metadata.pickle"), "docs".into());
        let h = Hnsw::open(dir, pickle, Some(parsed), false)
            .unwrap()
            .unwrap();
        (h, where_)
    }

    #[test]
    fn scattered_labels_are_found_near_their_usual_slot_without_mapping_all() {
        // Narrow (whole-element reads) and wide (12-byte label reads).
        for dim in [4usize, 300] {
            let tmp = tempfile::tempdir().unwrap();
            let n = 40_000;
            let (h, slots) = scattered(tmp.path(), n, dim, 5000);
            // A few changed records of one batch: a few blocks around it.
            for l in [20_000u64, 20_001, 20_500, 24_999] {
                assert_eq!(
                    h.find_slot(l).unwrap(),
                    Some(slots[&l]),
                    "label {l}, dim {dim}"
                );
            }
            let mapped = |h: &Hnsw| {
                h.near
                    .lock()
                    .unwrap()
                    .scanned
                    .iter()
                    .filter(|b| **b)
                    .count()
            };
            assert!(
                mapped(&h) <= 2 * (NEAR / BLOCK) as usize + 1,
                "dim {dim}: {} blocks",
                mapped(&h)
            );
            for l in [1u64, 2, 4999, 5001, 39_999, 40_000] {
                assert_eq!(
                    h.find_slot(l).unwrap(),
                    Some(slots[&l]),
                    "label {l}, dim {dim}"
                );
                let v = vector_of(&h, &format!("id-{l}"));
                assert_eq!(v.len(), dim);
                assert_eq!(
                    (v[0], v[dim - 1]),
                    (l as f32, l as f32 + (dim - 1) as f32 * 0.5)
                );
            }
            assert!(
                h.slots.get().is_none(),
                "dim {dim}: only blocks near the labels were mapped"
            );
            assert!(
                mapped(&h) < h.near.lock().unwrap().scanned.len(),
                "dim {dim}"
            );
            // A label that is nowhere: the whole map, once, then `None`.
            assert_eq!(h.find_slot(n + 7).unwrap(), None);
            assert!(h.slots.get().is_some());
            assert_eq!(h.find_slot(20_000).unwrap(), Some(slots[&20_000]));
        }
    }

    #[test]
    fn a_page_read_scatters_each_vector_to_its_place() {
        for dim in [4usize, 1100] {
            let tmp = tempfile::tempdir().unwrap();
            let (h, slots) = scattered(tmp.path(), 3000, dim, 1000);
            h.prepare().unwrap();
            assert!(
                h.slots.get().is_some(),
                "scattered labels are mapped up front"
            );
            // Places out of label order, one label asked for twice, one
            // want whose slot holds another label (not filled).
            let asked = [17u64, 2999, 1, 1000, 1001, 17, 2500];
            let mut wants: Vec<Want> = asked
                .iter()
                .enumerate()
                .map(|(at, l)| Want {
                    slot: slots[l],
                    label: *l,
                    at,
                })
                .collect();
            wants.push(Want {
                slot: slots[&5],
                label: 6,
                at: asked.len(),
            });
            let mut out = vec![0f32; (asked.len() + 1) * dim];
            let filled = h
                .read_into(&mut wants, &mut out, &mut ReadBuffers::default())
                .unwrap();
            assert_eq!(filled, [true, true, true, true, true, true, true, false]);
            for (at, l) in asked.iter().enumerate() {
                let v = &out[at * dim..(at + 1) * dim];
                assert_eq!(
                    (v[0], v[dim - 1]),
                    (*l as f32, *l as f32 + (dim - 1) as f32 * 0.5),
                    "dim {dim}"
                );
            }
        }
    }
}
