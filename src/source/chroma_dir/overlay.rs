//! The write-ahead queue (`embeddings_queue`) replayed on top of the
//! compacted state, as Chroma replays it on its next start.
//!
//! Each segment has consumed the queue up to its own position; the rows
//! above it are applied in order: ADD if the id is absent, UPDATE merges
//! (a `null` value deletes a key), UPSERT adds or merges, DELETE removes.
//! The result is an [`Overlay`]: for the ids the queue touched, their fields
//! (metadata view) and vectors (vector view), `None` where deleted, plus the
//! ids that exist only in the queue, in the order they were added.
//!
//! The replay itself ([`Overlay::replay`]) is pure: it asks the compacted
//! state only through [`Base`] (does the metadata segment have this record,
//! with which fields; does the vector segment have its vector), so it runs
//! on made-up operations in the tests below. Reading the queue rows from
//! SQLite and decoding them is separate ([`read_queue`], [`decode`]).
//!
//! What Chroma never writes is refused, never dropped: a metadata value
//! that is an object (or a list holding one), an operation code or vector
//! encoding this reader does not know, a vector whose dimension differs.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::{DOCUMENT_KEY, URI_KEY, sqlite_err};
use crate::source::SourceError;
use crate::source::record::{MetaValue, Metadata};

const QUEUE_HINT: &str = "the write-ahead queue holds a record this reader cannot use; read the collection through a running Chroma server (`source.chroma.url`)";

/// The state of a record's non-vector fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Fields {
    pub(super) document: Option<String>,
    pub(super) uri: Option<String>,
    pub(super) metadata: Metadata,
}

impl Fields {
    /// Applies a queue row's metadata JSON: `null` deletes a key. The
    /// error names the key whose value Chroma would never have written.
    fn merge(&mut self, json: &Map<String, Value>) -> Result<(), String> {
        for (k, v) in json {
            match k.as_str() {
                DOCUMENT_KEY | URI_KEY => {
                    let text = match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Null => None,
                        other => {
                            return Err(format!(
                                "`{k}` holds {}, not a string",
                                describe_json(other)
                            ));
                        }
                    };
                    if k == DOCUMENT_KEY {
                        self.document = text;
                    } else {
                        self.uri = text;
                    }
                }
                _ => match meta_value(v) {
                    Ok(Some(mv)) => {
                        self.metadata.insert(k.clone(), mv);
                    }
                    Ok(None) => {
                        self.metadata.remove(k);
                    }
                    Err(what) => {
                        return Err(format!(
                            "metadata key `{k}` holds {what}; this reader knows the values Chroma stores in a persistent directory: strings, numbers, booleans and (from 1.5) lists of those"
                        ));
                    }
                },
            }
        }
        Ok(())
    }
}

/// A JSON metadata value as Chroma types it: `Ok(None)` for `null` (which
/// deletes the key); an error naming what the value is when it is nothing
/// Chroma stores (an object, a list of anything but scalars).
fn meta_value(v: &Value) -> Result<Option<MetaValue>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Object(_) => Err("an object".into()),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                scalar(item).ok_or_else(|| format!("a list holding {}", describe_json(item)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| Some(MetaValue::List(items))),
        other => scalar(other)
            .map(Some)
            .ok_or_else(|| describe_json(other).to_string()),
    }
}

/// A string, number or boolean; integers in the JSON text stay integers.
fn scalar(v: &Value) -> Option<MetaValue> {
    match v {
        Value::Bool(b) => Some(MetaValue::Bool(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(MetaValue::Int(i)),
            None => n.as_f64().map(MetaValue::Float),
        },
        Value::String(s) => Some(MetaValue::Str(s.clone())),
        _ => None,
    }
}

fn describe_json(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A queue operation (`embeddings_queue.operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Add,
    Update,
    Upsert,
    Delete,
}

impl Op {
    fn from_code(code: i64) -> Option<Op> {
        match code {
            0 => Some(Op::Add),
            1 => Some(Op::Update),
            2 => Some(Op::Upsert),
            3 => Some(Op::Delete),
            _ => None,
        }
    }
}

/// A queue row, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct QueueOp {
    pub(super) seq: i64,
    pub(super) op: Op,
    pub(super) id: String,
    pub(super) vector: Option<Vec<f32>>,
    pub(super) metadata: Option<Map<String, Value>>,
}

/// Where a queue problem is reported: the SQLite file and the collection.
#[derive(Debug, Clone)]
pub(super) struct Place {
    pub(super) file: String,
    pub(super) collection: String,
}

impl Place {
    pub(super) fn corrupt(&self, reason: String) -> SourceError {
        SourceError::Corrupt {
            file: self.file.clone(),
            collection: self.collection.clone(),
            reason,
            hint: QUEUE_HINT.into(),
        }
    }
}

/// The compacted state the queue is replayed on, asked per id.
pub(super) trait Base {
    /// The record's fields in the metadata segment, if it has the record.
    fn fields(&self, id: &str) -> Result<Option<Fields>, SourceError>;
    /// Whether the metadata segment has the record.
    fn has_record(&self, id: &str) -> Result<bool, SourceError>;
    /// Whether the vector segment has a live vector for the id.
    fn has_vector(&self, id: &str) -> Result<bool, SourceError>;
}

/// How far each segment has consumed the queue (`max_seq_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Positions {
    pub(super) metadata: i64,
    pub(super) vector: i64,
}

impl Positions {
    /// Queue rows above this are replayed on at least one segment.
    pub(super) fn replay_after(&self) -> i64 {
        self.metadata.min(self.vector)
    }
}

/// The queue's effect on the compacted state.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    /// Metadata view: ids the queue changed above the metadata segment's
    /// position. `None` = deleted.
    pub(super) fields: HashMap<String, Option<Fields>>,
    /// Ids that exist only in the queue, in the order they were added.
    pub(super) queue_only: Vec<String>,
    queued: HashSet<String>,
    /// Vector view above the vector segment's position. `None` = deleted.
    pub(super) vectors: HashMap<String, Option<Vec<f32>>>,
}

impl Overlay {
    /// Replays `ops` (in queue order) on `base`. `dim` is the collection's
    /// dimension if known; the first queued vector sets it otherwise, and a
    /// vector of another dimension is refused.
    pub(super) fn replay(
        base: &dyn Base,
        ops: &[QueueOp],
        positions: Positions,
        dim: &mut Option<usize>,
        place: &Place,
    ) -> Result<Overlay, SourceError> {
        let mut overlay = Overlay::default();
        for op in ops {
            if let Some(v) = &op.vector {
                match *dim {
                    None => *dim = Some(v.len()),
                    Some(d) if d != v.len() => {
                        return Err(place.corrupt(format!(
                            "queue row {} (id `{}`) has a vector of dimension {}, the collection has {d}",
                            op.seq,
                            op.id,
                            v.len()
                        )));
                    }
                    _ => {}
                }
            }
            if op.seq > positions.metadata {
                overlay.apply_fields(base, op, place)?;
            }
            if op.seq > positions.vector {
                overlay.apply_vector(base, op)?;
            }
        }
        Ok(overlay)
    }

    /// The current fields of `id` in the metadata view, if it exists.
    pub(super) fn fields_of(
        &self,
        base: &dyn Base,
        id: &str,
    ) -> Result<Option<Fields>, SourceError> {
        match self.fields.get(id) {
            Some(state) => Ok(state.clone()),
            None => base.fields(id),
        }
    }

    fn apply_fields(
        &mut self,
        base: &dyn Base,
        op: &QueueOp,
        place: &Place,
    ) -> Result<(), SourceError> {
        let merge = |f: &mut Fields| match &op.metadata {
            Some(m) => f.merge(m).map_err(|reason| {
                place.corrupt(format!("queue row {} (id `{}`): {reason}", op.seq, op.id))
            }),
            None => Ok(()),
        };
        let current = self.fields_of(base, &op.id)?;
        let new_state = match (op.op, current) {
            (Op::Delete, _) => None,
            (Op::Add | Op::Upsert, None) => {
                let mut f = Fields::default();
                merge(&mut f)?;
                if !self.queued.contains(&op.id) && !base.has_record(&op.id)? {
                    self.queued.insert(op.id.clone());
                    self.queue_only.push(op.id.clone());
                }
                Some(f)
            }
            (Op::Update | Op::Upsert, Some(mut f)) => {
                merge(&mut f)?;
                Some(f)
            }
            // Chroma ignores an ADD of an existing id and an UPDATE of a
            // missing one (with a warning); so do we.
            (Op::Add, Some(_)) | (Op::Update, None) => return Ok(()),
        };
        self.fields.insert(op.id.clone(), new_state);
        Ok(())
    }

    fn vector_exists(&self, base: &dyn Base, id: &str) -> Result<bool, SourceError> {
        match self.vectors.get(id) {
            Some(state) => Ok(state.is_some()),
            None => base.has_vector(id),
        }
    }

    fn apply_vector(&mut self, base: &dyn Base, op: &QueueOp) -> Result<(), SourceError> {
        let set = match op.op {
            Op::Add => !self.vector_exists(base, &op.id)?,
            Op::Update => self.vector_exists(base, &op.id)?,
            Op::Upsert => true,
            Op::Delete => {
                self.vectors.insert(op.id.clone(), None);
                return Ok(());
            }
        };
        // A metadata-only UPDATE or UPSERT leaves the vector as it is.
        if set && let Some(v) = &op.vector {
            self.vectors.insert(op.id.clone(), Some(v.clone()));
        }
        Ok(())
    }
}

/// Decodes one queue row.
pub(super) fn decode(
    place: &Place,
    seq: i64,
    code: i64,
    id: String,
    vector: Option<Vec<u8>>,
    encoding: Option<String>,
    metadata: Option<String>,
) -> Result<QueueOp, SourceError> {
    let Some(op) = Op::from_code(code) else {
        return Err(place.corrupt(format!(
            "queue row {seq} (id `{id}`) has operation code {code}; this reader knows 0 (add) to 3 (delete)"
        )));
    };
    let vector = match vector {
        None => None,
        Some(bytes) => {
            if let Some(enc) = encoding.as_deref()
                && !enc.eq_ignore_ascii_case("FLOAT32")
            {
                return Err(place.corrupt(format!(
                    "queue row {seq} (id `{id}`) has vector encoding `{enc}`; only FLOAT32 is supported"
                )));
            }
            if !bytes.len().is_multiple_of(4) {
                return Err(place.corrupt(format!(
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
        Some(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => Some(m),
            Ok(Value::Null) => None,
            _ => {
                return Err(place.corrupt(format!(
                    "queue row {seq} (id `{id}`) has unreadable metadata"
                )));
            }
        },
    };
    Ok(QueueOp {
        seq,
        op,
        id,
        vector,
        metadata,
    })
}

/// The queue rows of collection `collection_id` above `after`, in order.
/// A row's `topic` ends with its collection's id.
pub(super) fn read_queue(
    conn: &Connection,
    dir: &Path,
    place: &Place,
    collection_id: &str,
    after: i64,
) -> Result<Vec<QueueOp>, SourceError> {
    let e = sqlite_err(dir);
    let has_queue: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='embeddings_queue'",
            [],
            |r| r.get(0),
        )
        .map_err(&e)?;
    if has_queue == 0 {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare(
            "SELECT seq_id, operation, id, vector, encoding, metadata FROM embeddings_queue \
             WHERE topic LIKE '%/' || ?1 AND seq_id > ?2 ORDER BY seq_id",
        )
        .map_err(&e)?;
    let rows = stmt
        .query_map(rusqlite::params![collection_id, after], |r| {
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
        let (seq, code, id, vector, encoding, metadata) = row.map_err(&e)?;
        ops.push(decode(place, seq, code, id, vector, encoding, metadata)?);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A made-up compacted state: records with their fields, and the ids
    /// whose vectors the HNSW files hold.
    #[derive(Default)]
    struct MemBase {
        records: HashMap<String, Fields>,
        vectors: HashSet<String>,
    }

    impl MemBase {
        fn with(mut self, id: &str, fields: Fields) -> Self {
            self.records.insert(id.into(), fields);
            self.vectors.insert(id.into());
            self
        }
    }

    impl Base for MemBase {
        fn fields(&self, id: &str) -> Result<Option<Fields>, SourceError> {
            Ok(self.records.get(id).cloned())
        }
        fn has_record(&self, id: &str) -> Result<bool, SourceError> {
            Ok(self.records.contains_key(id))
        }
        fn has_vector(&self, id: &str) -> Result<bool, SourceError> {
            Ok(self.vectors.contains(id))
        }
    }

    fn place() -> Place {
        Place {
            file: "/data/chroma.sqlite3".into(),
            collection: "docs".into(),
        }
    }

    fn op(seq: i64, op: Op, id: &str, vector: Option<Vec<f32>>, metadata: Value) -> QueueOp {
        QueueOp {
            seq,
            op,
            id: id.into(),
            vector,
            metadata: match metadata {
                Value::Object(m) => Some(m),
                _ => None,
            },
        }
    }

    fn fields(document: Option<&str>, metadata: &[(&str, MetaValue)]) -> Fields {
        Fields {
            document: document.map(String::from),
            uri: None,
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    /// Replays on both segments from position 0, dimension 2.
    fn replay(base: &MemBase, ops: &[QueueOp]) -> Result<Overlay, SourceError> {
        let positions = Positions {
            metadata: 0,
            vector: 0,
        };
        Overlay::replay(base, ops, positions, &mut Some(2), &place())
    }

    #[test]
    fn add_then_update_merges_metadata_keys() {
        let ops = [
            op(
                1,
                Op::Add,
                "a",
                Some(vec![1.0, 2.0]),
                json!({"k1": 1, "k2": "x", "chroma:document": "doc", "tags": ["t", "u"]}),
            ),
            op(2, Op::Update, "a", None, json!({"k2": "y", "k3": true})),
        ];
        let o = replay(&MemBase::default(), &ops).unwrap();
        let want = fields(
            Some("doc"),
            &[
                ("k1", MetaValue::Int(1)),
                ("k2", MetaValue::Str("y".into())),
                ("k3", MetaValue::Bool(true)),
                (
                    "tags",
                    MetaValue::List(vec![MetaValue::Str("t".into()), MetaValue::Str("u".into())]),
                ),
            ],
        );
        assert_eq!(o.fields["a"], Some(want));
        assert_eq!(o.queue_only, vec!["a".to_string()]);
        // The metadata-only update kept the added vector.
        assert_eq!(o.vectors["a"], Some(vec![1.0, 2.0]));
    }

    #[test]
    fn update_with_null_deletes_the_key_and_keeps_the_rest() {
        let base = MemBase::default().with(
            "a",
            fields(
                Some("old"),
                &[("k1", MetaValue::Int(1)), ("k2", MetaValue::Float(2.5))],
            ),
        );
        let ops = [op(
            5,
            Op::Update,
            "a",
            None,
            json!({"k1": null, "chroma:document": null}),
        )];
        let o = replay(&base, &ops).unwrap();
        assert_eq!(
            o.fields["a"],
            Some(fields(None, &[("k2", MetaValue::Float(2.5))]))
        );
        // In SQLite already: read at its own position, not as queue-only.
        assert!(o.queue_only.is_empty());
        // No vector in the update: the stored one stays.
        assert!(!o.vectors.contains_key("a"));
    }

    #[test]
    fn upsert_adds_an_absent_id_and_merges_a_present_one() {
        let base = MemBase::default().with("b", fields(None, &[("x", MetaValue::Int(1))]));
        let ops = [
            op(1, Op::Upsert, "c", Some(vec![0.5, 0.5]), json!({"n": 1})),
            op(2, Op::Upsert, "b", Some(vec![9.0, 9.0]), json!({"y": 2})),
        ];
        let o = replay(&base, &ops).unwrap();
        assert_eq!(
            o.fields["c"],
            Some(fields(None, &[("n", MetaValue::Int(1))]))
        );
        assert_eq!(o.vectors["c"], Some(vec![0.5, 0.5]));
        assert_eq!(
            o.fields["b"],
            Some(fields(
                None,
                &[("x", MetaValue::Int(1)), ("y", MetaValue::Int(2))]
            ))
        );
        assert_eq!(o.vectors["b"], Some(vec![9.0, 9.0]));
        assert_eq!(o.queue_only, vec!["c".to_string()]);
    }

    #[test]
    fn delete_then_add_re_adds_without_the_old_fields() {
        let base = MemBase::default().with(
            "a",
            fields(Some("old"), &[("stale", MetaValue::Bool(true))]),
        );
        let deleted = replay(&base, &[op(1, Op::Delete, "a", None, Value::Null)]).unwrap();
        assert_eq!(deleted.fields["a"], None);
        assert_eq!(deleted.vectors["a"], None);

        let ops = [
            op(1, Op::Delete, "a", None, Value::Null),
            op(2, Op::Add, "a", Some(vec![3.0, 4.0]), json!({"fresh": 1})),
        ];
        let o = replay(&base, &ops).unwrap();
        assert_eq!(
            o.fields["a"],
            Some(fields(None, &[("fresh", MetaValue::Int(1))]))
        );
        assert_eq!(o.vectors["a"], Some(vec![3.0, 4.0]));
        // Its SQLite row still places it; it is not queue-only.
        assert!(o.queue_only.is_empty());
    }

    #[test]
    fn add_of_an_existing_id_and_update_of_a_missing_one_are_ignored() {
        let base = MemBase::default().with("a", fields(Some("kept"), &[]));
        let ops = [
            op(
                1,
                Op::Add,
                "a",
                Some(vec![7.0, 7.0]),
                json!({"chroma:document": "lost"}),
            ),
            op(2, Op::Update, "zz", Some(vec![1.0, 1.0]), json!({"k": 1})),
        ];
        let o = replay(&base, &ops).unwrap();
        assert!(o.fields.is_empty(), "{:?}", o.fields);
        assert!(o.vectors.is_empty(), "{:?}", o.vectors);
        assert!(o.queue_only.is_empty());
        assert_eq!(
            o.fields_of(&base, "a").unwrap(),
            Some(fields(Some("kept"), &[]))
        );
        assert_eq!(o.fields_of(&base, "zz").unwrap(), None);
    }

    #[test]
    fn each_segment_replays_only_what_it_has_not_consumed() {
        // The metadata segment consumed rows 1–2, the vector segment row 1.
        let base = MemBase::default().with("a", fields(None, &[("v", MetaValue::Int(2))]));
        let ops = [
            op(2, Op::Update, "a", Some(vec![2.0, 2.0]), json!({"v": 2})),
            op(3, Op::Update, "a", None, json!({"v": 3})),
        ];
        let positions = Positions {
            metadata: 2,
            vector: 1,
        };
        let o = Overlay::replay(&base, &ops, positions, &mut Some(2), &place()).unwrap();
        assert_eq!(
            o.fields["a"],
            Some(fields(None, &[("v", MetaValue::Int(3))]))
        );
        assert_eq!(o.vectors["a"], Some(vec![2.0, 2.0]));
        assert_eq!(positions.replay_after(), 1);
    }

    #[test]
    fn object_metadata_values_are_refused_naming_collection_id_and_key() {
        for value in [json!({"x": 1}), json!([{"x": 1}]), json!(["a", null])] {
            let ops = [op(
                7,
                Op::Add,
                "rec-1",
                Some(vec![1.0, 1.0]),
                json!({"plain": 1, "nested": value}),
            )];
            let err = replay(&MemBase::default(), &ops).unwrap_err().to_string();
            assert!(
                err.contains("`docs`")
                    && err.contains("`rec-1`")
                    && err.contains("`nested`")
                    && err.contains("queue row 7")
                    && err.contains("chroma.sqlite3")
                    && err.contains("hint:"),
                "{err}"
            );
        }
        // The same on an update of a record in SQLite.
        let base = MemBase::default().with("a", Fields::default());
        let ops = [op(1, Op::Update, "a", None, json!({"deep": {"k": "v"}}))];
        let err = replay(&base, &ops).unwrap_err().to_string();
        assert!(err.contains("`deep`") && err.contains("an object"), "{err}");
    }

    #[test]
    fn a_vector_of_another_dimension_is_refused() {
        let ops = [op(4, Op::Add, "a", Some(vec![1.0, 2.0, 3.0]), Value::Null)];
        let err = replay(&MemBase::default(), &ops).unwrap_err().to_string();
        assert!(err.contains("dimension 3") && err.contains("`a`"), "{err}");
        // Without a known dimension the first vector sets it.
        let mut dim = None;
        let positions = Positions {
            metadata: 0,
            vector: 0,
        };
        Overlay::replay(&MemBase::default(), &ops, positions, &mut dim, &place()).unwrap();
        assert_eq!(dim, Some(3));
    }

    #[test]
    fn decode_reads_little_endian_floats_and_refuses_what_it_cannot_read() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let got = decode(
            &place(),
            3,
            0,
            "a".into(),
            Some(bytes.clone()),
            Some("FLOAT32".into()),
            Some(r#"{"n": 1}"#.into()),
        )
        .unwrap();
        assert_eq!(got.op, Op::Add);
        assert_eq!(got.vector, Some(vec![1.5, -2.0]));
        assert_eq!(got.metadata.unwrap()["n"], json!(1));

        let refused = [
            decode(&place(), 3, 9, "a".into(), None, None, None),
            decode(
                &place(),
                3,
                0,
                "a".into(),
                Some(bytes.clone()),
                Some("INT32".into()),
                None,
            ),
            decode(
                &place(),
                3,
                0,
                "a".into(),
                Some(bytes[..7].to_vec()),
                None,
                None,
            ),
            decode(
                &place(),
                3,
                0,
                "a".into(),
                None,
                None,
                Some("[1, 2]".into()),
            ),
        ];
        for (r, what) in
            refused
                .into_iter()
                .zip(["operation code 9", "INT32", "truncated", "unreadable"])
        {
            let err = r.unwrap_err().to_string();
            assert!(err.contains(what) && err.contains("queue row 3"), "{err}");
        }
    }

    #[test]
    fn queue_rows_of_other_collections_and_consumed_rows_are_not_read() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE embeddings_queue (seq_id INTEGER PRIMARY KEY, created_at TEXT, \
             operation INTEGER, topic TEXT, id TEXT, vector BLOB, encoding TEXT, metadata TEXT);",
        )
        .unwrap();
        let rows = [
            (1, "persistent://default/default/coll-a", "a1"),
            (2, "persistent://default/default/coll-b", "b1"),
            (3, "persistent://default/default/coll-a", "a2"),
            (4, "persistent://default/default/xcoll-a", "x1"),
            (5, "persistent://default/default/coll-a", "a3"),
        ];
        for (seq, topic, id) in rows {
            conn.execute(
                "INSERT INTO embeddings_queue (seq_id, operation, topic, id, metadata) VALUES (?1, 3, ?2, ?3, NULL)",
                rusqlite::params![seq, topic, id],
            )
            .unwrap();
        }
        let ops = read_queue(&conn, Path::new("/data"), &place(), "coll-a", 1).unwrap();
        let ids: Vec<&str> = ops.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["a2", "a3"]);
        assert!(
            ops.iter()
                .all(|o| o.op == Op::Delete && o.metadata.is_none())
        );
    }
}
