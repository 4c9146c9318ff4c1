//! A fast reader for `index_metadata.pickle`, the one pickle Chroma writes
//! per vector segment: a dict (1.x, written by Rust's serde-pickle,
//! protocol 3) or a `PersistentData` instance (0.x, Python's pickle,
//! protocol 4–5 with memo references). Only what the reader needs is kept:
//! `dimensionality`, `max_seq_id` and the id → label map.
//!
//! Why not serde-pickle alone: it builds a generic value for every entry of
//! every dict (id → label, label → id, id → sequence number) and then
//! converts; at 100,000 records that was 60 ms, most of a small sync's
//! reading. This walks the opcodes once and keeps strings in one arena.
//! It knows only the opcodes those writers use; on anything else it says
//! so (`None`) and the caller falls back to serde-pickle, so an unusual
//! pickle is read slowly, never wrongly. (It also reads what serde-pickle
//! refuses: an integer beyond 64 bits in a dict it does not need.)

use super::hnsw::{FastMap, PersistentData};

/// A value on the pickle machine's stack. Strings and dicts are indexes
/// into arenas, so a memo reference copies an index, and a dict filled
/// after it was memoised is the same dict wherever it is referenced.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val {
    Mark,
    None,
    Int(i64),
    Str(u32),
    Dict(u32),
    /// An object made by `NEWOBJ`, known only by the dict `BUILD` gives it.
    Obj,
    /// Anything this reader does not look into (floats, big integers,
    /// tuples, lists, classes, objects without a dict state).
    Other,
}

/// Parses `bytes`; `None` when they use anything this reader does not
/// know, or do not hold a dict of the expected shape.
pub(super) fn parse(bytes: &[u8]) -> Option<PersistentData> {
    let mut m = Machine {
        bytes,
        at: 0,
        stack: Vec::with_capacity(64),
        memo: Vec::new(),
        strings: Vec::new(),
        dicts: Vec::new(),
    };
    let top = m.run()?;
    let m = m;
    let Val::Dict(d) = top else {
        return None;
    };
    let mut out = PersistentData {
        dimensionality: None,
        max_seq_id: None,
        id_to_label: FastMap::default(),
    };
    for (k, v) in &m.dicts[d as usize] {
        let Val::Str(k) = k else { continue };
        match (m.strings[*k as usize].as_str(), v) {
            ("dimensionality", Val::Int(i)) => out.dimensionality = Some(*i),
            ("dimensionality", Val::None) => out.dimensionality = None,
            ("max_seq_id", Val::Int(i)) => out.max_seq_id = Some(*i),
            ("max_seq_id", Val::None) => out.max_seq_id = None,
            ("id_to_label", Val::Dict(labels)) => {
                // A key given twice: the last value wins, as in Python.
                let labels = &m.dicts[*labels as usize];
                out.id_to_label.clear();
                out.id_to_label.reserve(labels.len());
                for (id, label) in labels {
                    let (Val::Str(id), Val::Int(label)) = (id, label) else {
                        return None;
                    };
                    out.id_to_label
                        .insert(m.strings[*id as usize].clone(), *label);
                }
            }
            ("dimensionality" | "max_seq_id" | "id_to_label", _) => return None,
            _ => {}
        }
    }
    Some(out)
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Val>,
    /// `None`: an index never put (a reference to it is damage).
    memo: Vec<Option<Val>>,
    strings: Vec<String>,
    dicts: Vec<Vec<(Val, Val)>>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self, len: usize) -> Option<Val> {
        let s = std::str::from_utf8(self.take(len)?).ok()?.to_owned();
        self.strings.push(s);
        Some(Val::Str((self.strings.len() - 1) as u32))
    }

    fn pop(&mut self) -> Option<Val> {
        self.stack.pop().filter(|v| *v != Val::Mark)
    }

    /// The values above the topmost mark, and the mark gone.
    fn pop_mark(&mut self) -> Option<Vec<Val>> {
        let at = self.stack.iter().rposition(|v| *v == Val::Mark)?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Some(items)
    }

    fn memo_put(&mut self, index: usize) -> Option<()> {
        let top = *self.stack.last().filter(|v| **v != Val::Mark)?;
        // A writer numbers its memo entries from 0, one per opcode at most:
        // a larger index is damage, not a reason to allocate gigabytes.
        if index > self.bytes.len() {
            return None;
        }
        if index >= self.memo.len() {
            self.memo.resize(index + 1, None);
        }
        self.memo[index] = Some(top);
        Some(())
    }

    fn memo_get(&mut self, index: usize) -> Option<()> {
        let v = (*self.memo.get(index)?)?;
        self.stack.push(v);
        Some(())
    }

    fn set_items(&mut self, dict: Val, items: &[Val]) -> Option<()> {
        let Val::Dict(d) = dict else {
            return None;
        };
        if !items.len().is_multiple_of(2) {
            return None;
        }
        let d = &mut self.dicts[d as usize];
        d.reserve(items.len() / 2);
        d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
        Some(())
    }

    /// Runs to `STOP` and returns the value left on top.
    fn run(&mut self) -> Option<Val> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME: only a read-ahead hint
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.stack.push(Val::Mark),
                b'}' => {
                    self.dicts.push(Vec::new());
                    self.stack.push(Val::Dict((self.dicts.len() - 1) as u32));
                }
                b']' | b')' => self.stack.push(Val::Other), // EMPTY_LIST, EMPTY_TUPLE
                0x85 => {
                    self.pop()?; // TUPLE1
                    self.stack.push(Val::Other);
                }
                0x86 | 0x87 => {
                    // TUPLE2, TUPLE3
                    for _ in 0..(op - 0x84) {
                        self.pop()?;
                    }
                    self.stack.push(Val::Other);
                }
                b't' => {
                    self.pop_mark()?; // TUPLE
                    self.stack.push(Val::Other);
                }
                b'a' => {
                    self.pop()?; // APPEND to a list we do not keep
                }
                b'e' => {
                    self.pop_mark()?; // APPENDS
                }
                b's' => {
                    // SETITEM
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = *self.stack.last()?;
                    self.set_items(d, &[k, v])?;
                }
                b'u' => {
                    // SETITEMS
                    let items = self.pop_mark()?;
                    let d = *self.stack.last()?;
                    self.set_items(d, &items)?;
                }
                0x94 => {
                    let n = self.memo.len(); // MEMOIZE
                    self.memo_put(n)?;
                }
                b'q' => {
                    let i = self.u8()? as usize; // BINPUT
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()? as usize; // LONG_BINPUT
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as usize; // BINGET
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()? as usize; // LONG_BINGET
                    self.memo_get(i)?;
                }
                0x8c => {
                    let n = self.u8()? as usize; // SHORT_BINUNICODE
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                b'X' => {
                    let n = self.u32()? as usize; // BINUNICODE
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).ok()?; // BINUNICODE8
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                b'J' => {
                    let i = self.u32()? as i32; // BININT
                    self.stack.push(Val::Int(i as i64));
                }
                b'K' => {
                    let i = self.u8()?; // BININT1
                    self.stack.push(Val::Int(i as i64));
                }
                b'M' => {
                    let b = self.take(2)?; // BININT2
                    let i = u16::from_le_bytes([b[0], b[1]]);
                    self.stack.push(Val::Int(i as i64));
                }
                0x8a => {
                    // LONG1: little-endian two's complement, n bytes.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        Val::Int(0)
                    } else if n <= 8 {
                        let fill = if b[n - 1] & 0x80 != 0 { 0xff } else { 0 };
                        let mut w = [fill; 8];
                        w[..n].copy_from_slice(b);
                        Val::Int(i64::from_le_bytes(w))
                    } else {
                        Val::Other
                    };
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Val::None),
                0x88 | 0x89 => self.stack.push(Val::Other), // NEWTRUE, NEWFALSE
                b'G' => {
                    self.take(8)?; // BINFLOAT
                    self.stack.push(Val::Other);
                }
                0x93 => {
                    // STACK_GLOBAL: module and name, both strings.
                    self.pop()?;
                    self.pop()?;
                    self.stack.push(Val::Other);
                }
                0x81 => {
                    // NEWOBJ: class and arguments.
                    self.pop()?;
                    self.pop()?;
                    self.stack.push(Val::Obj);
                }
                b'b' => {
                    // BUILD: the object becomes its state, when a dict.
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    self.stack.push(match (obj, state) {
                        (Val::Obj, Val::Dict(_)) => state,
                        (Val::Obj, _) => Val::Other,
                        _ => return None,
                    });
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps(obj, protocol=5)` of an object of a class
    /// `PersistentData` with Chroma 0.x's fields: memoised strings
    /// referenced again by `BINGET`, integers of 1, 2, 4 and more bytes, a
    /// 71-bit one, a negative one, a frame.
    const PYTHON_OBJECT: &[u8] = b"\x80\x05\x95\xf6\x00\x00\x00\x00\x00\x00\x00\x8c\x08__main__\x94\x8c\x0ePersistentData\x94\x93\x94)\x81\x94}\x94(\x8c\x0edimensionality\x94K\x03\x8c\x14total_elements_added\x94M,\x01\x8c\nmax_seq_id\x94\x8a\x06\x00\x00\x00\x00\x00\x01\x8c\x0bid_to_label\x94}\x94(\x8c\x01a\x94K\x01\x8c\x01b\x94K\x02\x8c\tc-long-id\x94Jp\x11\x01\x00\x8c\x03neg\x94M,\x01u\x8c\x0blabel_to_id\x94}\x94(K\x01h\nK\x02h\x0bJp\x11\x01\x00h\x0cM,\x01h\ru\x8c\x0cid_to_seq_id\x94}\x94(h\nK\x05h\x0bK\x06h\x0c\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@h\rJ\xff\xff\xff\xffuub.";

    fn labels(p: &PersistentData) -> Vec<(String, i64)> {
        let mut v: Vec<_> = p.id_to_label.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    }

    #[test]
    fn reads_a_python_persistent_data_object() {
        let fast = parse(PYTHON_OBJECT).expect("a pickle of known opcodes");
        assert_eq!(fast.dimensionality, Some(3));
        assert_eq!(fast.max_seq_id, Some(1 << 40));
        assert_eq!(
            labels(&fast),
            [("a", 1), ("b", 2), ("c-long-id", 70000), ("neg", 300)]
                .map(|(k, v)| (k.to_string(), v))
        );
        // serde-pickle refuses the whole file over the 71-bit number in a
        // dict nobody asked for.
        let slow = serde_pickle::from_slice::<PersistentData>(PYTHON_OBJECT, Default::default());
        assert!(slow.is_err());
    }

    #[test]
    fn reads_a_dict_as_chroma_1x_writes_it() {
        // Chroma 1.x writes its metadata with Rust's serde-pickle.
        #[derive(serde::Serialize)]
        struct Written {
            dimensionality: Option<i64>,
            total_elements_added: u64,
            max_seq_id: Option<i64>,
            id_to_label: std::collections::BTreeMap<String, i64>,
            label_to_id: std::collections::BTreeMap<i64, String>,
        }
        let ids: std::collections::BTreeMap<String, i64> = (0..3000)
            .map(|i| (format!("id-{i}-é"), i as i64 * 7 - 5))
            .collect();
        let w = Written {
            dimensionality: None,
            total_elements_added: 3000,
            max_seq_id: Some(-3),
            label_to_id: ids.iter().map(|(k, v)| (*v, k.clone())).collect(),
            id_to_label: ids.clone(),
        };
        let bytes = serde_pickle::to_vec(&w, serde_pickle::SerOptions::new()).unwrap();
        let fast = parse(&bytes).expect("a pickle of known opcodes");
        assert_eq!((fast.dimensionality, fast.max_seq_id), (None, Some(-3)));
        let want: Vec<_> = ids.into_iter().collect();
        assert_eq!(labels(&fast), want);
    }

    #[test]
    fn anything_unknown_or_misshapen_is_left_to_serde_pickle() {
        // An opcode this reader does not know (LONG4).
        assert!(parse(b"\x80\x03}(X\x01\x00\x00\x00a\x8b\x01\x00\x00\x00\x01u.").is_none());
        // A label that is not an integer.
        assert!(parse(b"\x80\x03}(X\x0b\x00\x00\x00id_to_label}(X\x01\x00\x00\x00aNuu.").is_none());
        // Truncated, and empty.
        assert!(parse(&PYTHON_OBJECT[..PYTHON_OBJECT.len() / 2]).is_none());
        assert!(parse(b"").is_none());
        // Not a dict at the top.
        assert!(parse(b"\x80\x03K\x01.").is_none());
        // A memoised MARK, a reference to a memo entry never put, and a
        // BUILD on a list: all errors in Python too.
        assert!(parse(b"\x80\x03}(\x94h\x00X\x01\x00\x00\x00aK\x01u.").is_none());
        assert!(parse(b"\x80\x03}h\x05.").is_none());
        assert!(parse(b"\x80\x03]}b.").is_none());
        // A memo index of four billion: refused, not allocated.
        assert!(parse(b"\x80\x03}r\xff\xff\xff\xff.").is_none());
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value_as_in_python() {
        // {"id_to_label": {"a": 1}, "dimensionality": 3,
        //  "id_to_label": {"b": 2}, "dimensionality": None}
        let bytes = b"\x80\x03}(X\x0b\x00\x00\x00id_to_label}(X\x01\x00\x00\x00aK\x01uX\x0e\x00\x00\x00dimensionalityK\x03X\x0b\x00\x00\x00id_to_label}(X\x01\x00\x00\x00bK\x02uX\x0e\x00\x00\x00dimensionalityNu.";
        let p = parse(bytes).expect("known opcodes");
        assert_eq!(labels(&p), [("b".to_string(), 2)]);
        assert_eq!(p.dimensionality, None);
    }

    #[test]
    fn damaged_bytes_never_panic() {
        // Every byte of a real pickle replaced by each of a spread of
        // values: whatever comes out, the walker returns.
        let mut bytes = PYTHON_OBJECT.to_vec();
        let mut read = 0;
        for at in 0..bytes.len() {
            let was = bytes[at];
            for v in (0..=255u8)
                .step_by(3)
                .chain([b'r', b'j', b'X', 0x8d, 0x8a, b'(', b'u'])
            {
                bytes[at] = v;
                read += usize::from(parse(&bytes).is_some());
            }
            bytes[at] = was;
        }
        // Most changes to a string's or a number's bytes still parse.
        assert!(read > 0);
    }
}
