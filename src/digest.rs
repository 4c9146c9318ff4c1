//! Per-record digests: how `mode: sync` knows exactly what changed.
//!
//! Every row a sync writes is reduced to `(id hash, digest)`: the 64-bit
//! [`crate::hash::id_hash`] of the id, and the [`crate::hash::row64`] (XXH3) of a
//! canonical encoding of the whole transformed row (every column of the
//! plan's mapping, in order). The
//! encoding is defined here, not by Arrow's in-memory layout, so it is the
//! same on every machine and every release: per cell a type tag, then the
//! value (UTF-8 strings and lists with their lengths, integers and float
//! bits little-endian, null as its own tag). A record whose document,
//! metadata or vector changed has another digest; one written again with
//! identical values has the same.
//!
//! The store is one file per table in the state directory,
//! `<state>/<plan>-<key>/digests/<table>.bin`: a header (magic, the table
//! version the digests describe, the count, and whether they were taken
//! from the source or derived from the table), then the pairs sorted by id
//! hash, 16 bytes a record, written atomically like the state. Where the
//! source keeps write sequence numbers (a Chroma directory), each record's
//! number follows its digest (24 bytes a record), with the collection's
//! high-water mark in the header: a later sync then digests only the
//! records whose number moved ([`crate::engine::sync`]). Two records
//! collide in a 64-bit digest with probability about n²/2⁶⁵ (3·10⁻⁸ for a
//! million); a collision would hide one change, which `verify` still finds.

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

const MAGIC: &[u8; 8] = b"LFDIGST1";
/// Format 2 adds a flags word after the count: bit 0, digests of the source.
const MAGIC2: &[u8; 8] = b"LFDIGST2";
/// Format 3 adds the sequence mark after the flags; flag bit 1: every
/// record carries its sequence number.
const MAGIC3: &[u8; 8] = b"LFDIGST3";
/// Format 4 is format 3 with row digests by `hash::wide64` (eight
/// bytes a step; formats 1–3 used the byte-wise FNV of `hash64`). A store
/// of an older format is not read: the digests are derived again from the
/// table, once. Flag bit 2 (added within format 4; older readers ignore
/// it): the table was checked row by row against these digests.
const MAGIC4: &[u8; 8] = b"LFDIGST4";
/// Format 5 is format 4 with row digests by [`crate::hash::row64`] (XXH3,
/// a fifth of the CPU of `wide64` on 6 KB vectors). Formats 1–4 are not
/// read: their digests are derived again from the table, once.
const MAGIC5: &[u8; 8] = b"LFDIGST5";

/// `(id hash, row digest)` for every row of a batch; `id` is the index of
/// the id column.
pub fn row_digests(batch: &RecordBatch, id: usize) -> Vec<(u64, u64)> {
    let ids = crate::target::string_values(batch.column(id).as_ref()).unwrap_or_default();
    let mut h = crate::hash::RowHasher::new();
    (0..batch.num_rows())
        .map(|r| {
            h.reset();
            for col in batch.columns() {
                encode(col.as_ref(), r, &mut h);
            }
            let id_hash = crate::hash::id_hash(ids.get(r).copied().flatten().unwrap_or(""));
            (id_hash, h.finish())
        })
        .collect()
}

/// Where a row's canonical encoding goes: the hasher, piece by piece, or
/// (in tests) a buffer that shows the bytes.
trait Feed {
    fn feed(&mut self, bytes: &[u8]);
}

impl Feed for crate::hash::RowHasher {
    fn feed(&mut self, bytes: &[u8]) {
        crate::hash::RowHasher::feed(self, bytes);
    }
}

impl Feed for Vec<u8> {
    fn feed(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Feeds the canonical encoding of cell `r` of `a`.
fn encode(a: &dyn Array, r: usize, out: &mut impl Feed) {
    if a.is_null(r) {
        out.feed(&[0]);
        return;
    }
    match a.data_type() {
        DataType::Utf8 => text(out, 1, a.as_string::<i32>().value(r)),
        DataType::LargeUtf8 => text(out, 1, a.as_string::<i64>().value(r)),
        DataType::Int64 => {
            let v = a.as_primitive::<arrow_array::types::Int64Type>().value(r);
            out.feed(&[2]);
            out.feed(&v.to_le_bytes());
        }
        DataType::Float64 => {
            let v = a.as_primitive::<arrow_array::types::Float64Type>().value(r);
            out.feed(&[3]);
            out.feed(&v.to_bits().to_le_bytes());
        }
        DataType::Float32 => {
            let v = a.as_primitive::<arrow_array::types::Float32Type>().value(r);
            out.feed(&[4]);
            out.feed(&v.to_bits().to_le_bytes());
        }
        DataType::Boolean => out.feed(&[5, u8::from(a.as_boolean().value(r))]),
        DataType::FixedSizeList(_, _) => {
            out.feed(&[6]);
            list_items(a.as_fixed_size_list().value(r).as_ref(), out);
        }
        DataType::List(_) => {
            out.feed(&[7]);
            list_items(a.as_list::<i32>().value(r).as_ref(), out);
        }
        other => {
            // Not a type a plan writes; its text still identifies it.
            let s = arrow::util::display::array_value_to_string(a, r)
                .unwrap_or_else(|_| format!("{other}"));
            text(out, 255, &s);
        }
    }
}

/// A tag, then a string with its length.
fn text(out: &mut impl Feed, tag: u8, s: &str) {
    out.feed(&[tag]);
    out.feed(&(s.len() as u64).to_le_bytes());
    out.feed(s.as_bytes());
}

fn list_items(items: &dyn Array, out: &mut impl Feed) {
    out.feed(&(items.len() as u64).to_le_bytes());
    // Vectors: their float bits in one run.
    if let DataType::Float32 = items.data_type()
        && items.null_count() == 0
    {
        let values = items
            .as_primitive::<arrow_array::types::Float32Type>()
            .values();
        if cfg!(target_endian = "little") {
            // Arrow keeps the floats in native order, which here is the
            // encoding's little-endian: hashed where they lie, in one run.
            out.feed(values.inner().as_slice());
        } else {
            for v in values {
                out.feed(&v.to_bits().to_le_bytes());
            }
        }
        return;
    }
    for i in 0..items.len() {
        encode(items, i, out);
    }
}

/// The digests of one table, as a sync left them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digests {
    /// The table version they describe.
    pub version: u64,
    /// Sorted by id hash.
    pub pairs: Vec<(u64, u64)>,
    /// Taken from the source (a sync's read), not derived from the table:
    /// only then can they validate the table.
    pub from_source: bool,
    /// The source's write sequence numbers of these records, where it
    /// keeps them.
    pub seqs: Option<Seqs>,
    /// The table at `version` was checked row by row to hold exactly
    /// these digests (a validation of every row passed): the next sync's
    /// validation then reads only the rows written since.
    pub checked: bool,
}

/// Write sequence numbers aligned with [`Digests::pairs`]: each row's
/// source record had that number (or a lower one: 0 where unknown) when
/// it was read, and the collection's numbers had reached `mark`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seqs {
    pub mark: u64,
    pub values: Vec<u64>,
}

impl Digests {
    pub fn new(version: u64, mut pairs: Vec<(u64, u64)>) -> Self {
        pairs.sort_unstable();
        pairs.dedup_by_key(|p| p.0);
        Digests {
            version,
            pairs,
            from_source: false,
            seqs: None,
            checked: false,
        }
    }

    /// Where an id hash is in [`Digests::pairs`].
    pub fn position(&self, id_hash: u64) -> Option<usize> {
        self.pairs.binary_search_by_key(&id_hash, |p| p.0).ok()
    }

    /// The digest recorded for an id hash.
    pub fn get(&self, id_hash: u64) -> Option<u64> {
        self.position(id_hash).map(|i| self.pairs[i].1)
    }

    /// Attaches the sequence numbers read from the source *before* the
    /// records these digests describe were read (so a record written in
    /// between has a number below its current one, and is looked at again).
    pub fn attach_seqs(&mut self, seqs: &crate::source::Sequences) {
        let by_hash: std::collections::HashMap<u64, u64> = seqs
            .records
            .iter()
            .map(|(id, s)| (crate::hash::id_hash(id), *s))
            .collect();
        self.seqs = Some(Seqs {
            mark: seqs.mark,
            values: self
                .pairs
                .iter()
                .map(|p| by_hash.get(&p.0).copied().unwrap_or(0))
                .collect(),
        });
    }
}

/// Where a table's digests live.
pub fn path(state_dir: &Path, table: &str) -> PathBuf {
    state_dir.join("digests").join(format!("{table}.bin"))
}

/// Reads a table's digests; `None` if there are none (or they are not
/// readable: they are then re-derived from the table).
pub fn load(path: &Path) -> Option<Digests> {
    let bytes = std::fs::read(path).ok()?;
    // Older formats hold digests of another hash: unusable, never wrong.
    let header = match bytes.get(..8)? {
        m if m == MAGIC5 => 40,
        m if m == MAGIC || m == MAGIC2 || m == MAGIC3 || m == MAGIC4 => return None,
        _ => return None,
    };
    if bytes.len() < header {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let version = word(8);
    let n = word(16) as usize;
    let flags = word(24);
    let from_source = flags & 1 == 1;
    let with_seqs = flags & 2 == 2;
    let checked = flags & 4 == 4;
    let width = if with_seqs { 24 } else { 16 };
    if bytes.len() != header + n.checked_mul(width)? {
        return None;
    }
    let at = |k: usize, i: usize| word(header + width * k + 8 * i);
    let pairs = (0..n).map(|k| (at(k, 0), at(k, 1))).collect();
    let seqs = with_seqs.then(|| Seqs {
        mark: word(32),
        values: (0..n).map(|k| at(k, 2)).collect(),
    });
    Some(Digests {
        version,
        pairs,
        from_source,
        seqs,
        checked,
    })
}

/// Writes a table's digests atomically.
pub fn save(path: &Path, d: &Digests) -> Result<(), crate::state::StateError> {
    let seqs = d.seqs.as_ref().filter(|s| s.values.len() == d.pairs.len());
    let mut bytes = Vec::with_capacity(40 + 24 * d.pairs.len());
    bytes.extend_from_slice(MAGIC5);
    bytes.extend_from_slice(&d.version.to_le_bytes());
    bytes.extend_from_slice(&(d.pairs.len() as u64).to_le_bytes());
    let flags =
        u64::from(d.from_source) | (u64::from(seqs.is_some()) << 1) | (u64::from(d.checked) << 2);
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes.extend_from_slice(&seqs.map_or(0, |s| s.mark).to_le_bytes());
    for (k, (a, b)) in d.pairs.iter().enumerate() {
        bytes.extend_from_slice(&a.to_le_bytes());
        bytes.extend_from_slice(&b.to_le_bytes());
        if let Some(s) = seqs {
            bytes.extend_from_slice(&s.values[k].to_le_bytes());
        }
    }
    crate::state::write_atomic(path, &bytes)
}

/// What a sync would change, from the old digests and the new ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Changes {
    pub insert: u64,
    pub update: u64,
    pub delete: u64,
}

impl Changes {
    pub fn total(&self) -> u64 {
        self.insert + self.update + self.delete
    }
}

/// Compares new digests (any order) with old ones: the counts, and the id
/// hashes that are gone.
pub fn compare(old: &Digests, new: &Digests) -> (Changes, Vec<u64>) {
    let mut c = Changes::default();
    for (id, digest) in &new.pairs {
        match old.get(*id) {
            None => c.insert += 1,
            Some(d) if d != *digest => c.update += 1,
            Some(_) => {}
        }
    }
    let gone: Vec<u64> = old
        .pairs
        .iter()
        .filter(|(id, _)| new.get(*id).is_none())
        .map(|(id, _)| *id)
        .collect();
    c.delete = gone.len() as u64;
    (c, gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn batch(ids: &[&str], docs: &[Option<&str>], vecs: &[[f32; 2]]) -> RecordBatch {
        use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
        let mut vb = FixedSizeListBuilder::new(Float32Builder::new(), 2);
        for v in vecs {
            vb.values().append_slice(v);
            vb.append(true);
        }
        RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(arrow_array::StringArray::from(ids.to_vec())) as arrow_array::ArrayRef,
            ),
            (
                "doc",
                Arc::new(arrow_array::StringArray::from(docs.to_vec())) as arrow_array::ArrayRef,
            ),
            ("vector", Arc::new(vb.finish()) as arrow_array::ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn a_changed_value_changes_the_digest_and_nothing_else_does() {
        let a = row_digests(
            &batch(&["x", "y"], &[Some("d"), None], &[[1.0, 2.0], [3.0, 4.0]]),
            0,
        );
        let same = row_digests(
            &batch(&["x", "y"], &[Some("d"), None], &[[1.0, 2.0], [3.0, 4.0]]),
            0,
        );
        assert_eq!(a, same);
        let doc = row_digests(&batch(&["x"], &[Some("e")], &[[1.0, 2.0]]), 0);
        let vec = row_digests(&batch(&["x"], &[Some("d")], &[[1.0, 2.5]]), 0);
        let null = row_digests(&batch(&["x"], &[None], &[[1.0, 2.0]]), 0);
        let empty = row_digests(&batch(&["x"], &[Some("")], &[[1.0, 2.0]]), 0);
        for other in [doc, vec, null.clone(), empty.clone()] {
            assert_eq!(other[0].0, a[0].0, "same id");
            assert_ne!(other[0].1, a[0].1);
        }
        assert_ne!(null[0].1, empty[0].1, "null is not the empty string");
    }

    #[test]
    fn the_row_encoding_is_the_documented_one() {
        // Pinned byte for byte (the digest store outlives releases): per
        // cell a tag, strings and lists with u64 lengths, float bits
        // little-endian; the second row's vector is a slice of the
        // column, read from its own offset.
        let b = batch(&["x", "y"], &[Some("d"), None], &[[1.0, -2.5], [0.5, 3.0]]);
        let mut want = Vec::new();
        for (id, doc, v) in [("x", Some("d"), [1.0f32, -2.5]), ("y", None, [0.5, 3.0])] {
            let mut row = vec![1u8];
            row.extend_from_slice(&1u64.to_le_bytes());
            row.extend_from_slice(id.as_bytes());
            match doc {
                Some(d) => {
                    row.push(1);
                    row.extend_from_slice(&(d.len() as u64).to_le_bytes());
                    row.extend_from_slice(d.as_bytes());
                }
                None => row.push(0),
            }
            row.push(6);
            row.extend_from_slice(&2u64.to_le_bytes());
            for f in v {
                row.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            want.push((crate::hash::id_hash(id), crate::hash::row64(&row)));
        }
        assert_eq!(row_digests(&b, 0), want);
        assert_eq!(row_digests(&b.slice(1, 1), 0), want[1..]);
    }

    #[test]
    fn compare_counts_inserts_updates_and_deletes() {
        let old = Digests::new(3, vec![(1, 10), (2, 20), (3, 30)]);
        let new = Digests::new(0, vec![(1, 10), (2, 21), (4, 40)]);
        let (c, gone) = compare(&old, &new);
        assert_eq!((c.insert, c.update, c.delete), (1, 1, 1));
        assert_eq!(gone, [3]);
    }

    #[test]
    fn the_store_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "t");
        let d = Digests::new(7, vec![(5, 50), (1, 10)]);
        save(&p, &d).unwrap();
        assert_eq!(load(&p), Some(d.clone()));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 40 + 2 * 16);
        let mut src = d.clone();
        src.from_source = true;
        save(&p, &src).unwrap();
        assert!(load(&p).unwrap().from_source);
        // With sequence numbers: 24 bytes a record, aligned by id hash.
        src.attach_seqs(&crate::source::Sequences {
            mark: 9,
            records: vec![("a".into(), 4)],
        });
        let a = crate::hash::id_hash("a");
        src.pairs.push((a, 77));
        src.pairs.sort_unstable();
        src.attach_seqs(&crate::source::Sequences {
            mark: 9,
            records: vec![("a".into(), 4)],
        });
        save(&p, &src).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 40 + 3 * 16 + 3 * 8);
        let back = load(&p).unwrap();
        assert_eq!(back, src);
        let seqs = back.seqs.clone().unwrap();
        assert_eq!(seqs.mark, 9);
        assert_eq!(seqs.values[back.position(a).unwrap()], 4);
        assert_eq!(seqs.values.iter().filter(|v| **v == 0).count(), 2);
        // A store of an older format (digests of another hash) is not used.
        let mut old = b"LFDIGST3".to_vec();
        for w in [7u64, 1, 1, 0, 5, 50] {
            old.extend_from_slice(&w.to_le_bytes());
        }
        std::fs::write(&p, &old).unwrap();
        assert_eq!(load(&p), None);
        // Nor is format 4 (digests by `wide64`), however whole.
        save(&p, &src).unwrap();
        let mut four = std::fs::read(&p).unwrap();
        four[..8].copy_from_slice(b"LFDIGST4");
        std::fs::write(&p, &four).unwrap();
        assert_eq!(load(&p), None);
        save(&p, &src).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.pop();
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(load(&p), None);
    }
}
