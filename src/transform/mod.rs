//! Transform: a plan's column mapping applied to source batches, giving
//! Arrow record batches in the exact schema the table will have.
//!
//! The rules (documented in docs/plan-reference.md): a missing value in a
//! non-required column is null; a required one that is missing, a value of
//! the wrong type (after lossless coercion when `coerce: true`), and a vector
//! with NaN/inf components or the wrong dimension are invalid and handled by
//! the column's `on_error`. The transform is deterministic: the same source
//! batch always yields the same rows, which is what lets a resumed copy skip
//! exactly the rows already committed.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field as ArrowField, Schema, SchemaRef};

use crate::plan::{Collection, Column, ColumnType, Field, OnError};
use crate::source::{MetaValue, Metadata, SourceBatch};

/// A record that could not be converted, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "collection `{collection}`, record `{id}`, column `{column}` (from `{from}`): {reason}\nhint: fix the record in the source, or set `on_error: skip` (leave such records out) or `coerce: true` on column `{column}` in the plan"
)]
pub struct TransformError {
    pub collection: String,
    pub id: String,
    pub column: String,
    pub from: String,
    pub reason: String,
}

/// The result of transforming one source batch.
#[derive(Debug)]
pub struct Transformed {
    pub batch: RecordBatch,
    /// Records left out by `on_error: skip`, with the reason.
    pub skipped: Vec<TransformError>,
}

/// Converts source batches for one collection.
#[derive(Debug, Clone)]
pub struct Transformer {
    collection: String,
    columns: Vec<Column>,
    dim: usize,
    schema: SchemaRef,
}

/// A value extracted for one cell, borrowing from the source batch where
/// it can (ids, documents and string metadata are not copied twice).
enum Cell<'a> {
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    List(Cow<'a, [MetaValue]>),
    Vector,
}

fn arrow_type(ty: ColumnType, dim: usize) -> DataType {
    let item = |t: DataType| DataType::List(Arc::new(ArrowField::new("item", t, true)));
    match ty {
        ColumnType::String | ColumnType::Json => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Vector => DataType::FixedSizeList(
            Arc::new(ArrowField::new("item", DataType::Float32, true)),
            dim as i32,
        ),
        ColumnType::ListString => item(DataType::Utf8),
        ColumnType::ListInt64 => item(DataType::Int64),
        ColumnType::ListFloat64 => item(DataType::Float64),
        ColumnType::ListBool => item(DataType::Boolean),
    }
}

/// Whether no component is NaN or infinite. Branch-free over chunks so
/// the compiler vectorizes it: this runs over every float of the copy.
fn all_finite(v: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    v.chunks(64).all(|chunk| {
        chunk
            .iter()
            .fold(true, |ok, x| ok & (x.to_bits() & EXP != EXP))
    })
}

/// Canonical JSON of a metadata map: keys sorted (the map is ordered),
/// numbers in serde_json's shortest round-trip form.
pub fn canonical_json(m: &Metadata) -> String {
    let mut out = String::with_capacity(32 * m.len() + 2);
    out.push('{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(&mut out, k);
        out.push(':');
        write_json(&mut out, v);
    }
    out.push('}');
    out
}

/// `v` as compact JSON, exactly as `serde_json::to_string(&v.to_json())`
/// writes it, without building the JSON value.
fn write_json(out: &mut String, v: &MetaValue) {
    match v {
        MetaValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        MetaValue::Int(i) => {
            let _ = write!(out, "{i}");
        }
        MetaValue::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        },
        MetaValue::Str(s) => write_json_str(out, s),
        MetaValue::List(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, it);
            }
            out.push(']');
        }
    }
}

fn write_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

impl Transformer {
    /// `dim` is the vector dimension: the plan's `dim`, else the source's.
    pub fn new(collection: &Collection, dim: usize) -> Self {
        let fields: Vec<ArrowField> = collection
            .columns
            .iter()
            .map(|c| {
                let nullable = !(c.from == Field::Id || c.from == Field::Embedding);
                ArrowField::new(&c.name, arrow_type(c.ty, dim), nullable)
            })
            .collect();
        Transformer {
            collection: collection.source.clone(),
            columns: collection.columns.clone(),
            dim,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn err(&self, id: &str, c: &Column, reason: String) -> TransformError {
        TransformError {
            collection: self.collection.clone(),
            id: id.to_string(),
            column: c.name.clone(),
            from: c.from.to_string(),
            reason,
        }
    }

    /// Extracts one cell, applying the type rules (not the error policy).
    fn cell<'a>(
        &self,
        b: &'a SourceBatch,
        vectors: &[f32],
        i: usize,
        c: &Column,
    ) -> Result<Cell<'a>, String> {
        let text = |s: &'a Option<String>| s.as_deref().map(Cow::Borrowed);
        let raw: Option<Cow<'a, MetaValue>> = match &c.from {
            Field::Id if c.ty == ColumnType::String => {
                return Ok(Cell::Str(Cow::Borrowed(&b.ids[i])));
            }
            Field::Document | Field::Uri if c.ty == ColumnType::String => {
                let v = if c.from == Field::Document {
                    &b.documents[i]
                } else {
                    &b.uris[i]
                };
                match text(v) {
                    Some(s) => return Ok(Cell::Str(s)),
                    None => None,
                }
            }
            Field::Id => Some(Cow::Owned(MetaValue::Str(b.ids[i].clone()))),
            Field::Document => b.documents[i]
                .clone()
                .map(|s| Cow::Owned(MetaValue::Str(s))),
            Field::Uri => b.uris[i].clone().map(|s| Cow::Owned(MetaValue::Str(s))),
            Field::Embedding => {
                if b.dim != self.dim {
                    return Err(format!(
                        "vector has dimension {}, the table has {}",
                        b.dim, self.dim
                    ));
                }
                let v = &vectors[i * b.dim..(i + 1) * b.dim];
                if !all_finite(v) {
                    let pos = v.iter().position(|x| !x.is_finite()).expect("one is not");
                    return Err(format!("vector component {pos} is {}", v[pos]));
                }
                return Ok(Cell::Vector);
            }
            Field::Metadata => {
                return Ok(match &b.metadatas[i] {
                    None => Cell::Null,
                    Some(m) => Cell::Str(Cow::Owned(canonical_json(m))),
                });
            }
            Field::MetadataKey(k) => b.metadatas[i]
                .as_ref()
                .and_then(|m| m.get(k))
                .map(Cow::Borrowed),
        };
        let Some(v) = raw else {
            return if c.required {
                Err("required value is missing".into())
            } else {
                Ok(Cell::Null)
            };
        };
        convert(v, c.ty, c.coerce)
    }

    /// Converts a batch. With `on_error: fail` the first invalid value is an error.
    pub fn transform(&self, mut b: SourceBatch) -> Result<Transformed, TransformError> {
        let n = b.len();
        // The vectors leave the batch first, so that, when no record is
        // skipped, their buffer becomes the Arrow column without a copy.
        let vectors = std::mem::take(&mut b.embeddings);
        let mut keep: Vec<usize> = Vec::with_capacity(n);
        let mut cells: Vec<Vec<Cell>> =
            self.columns.iter().map(|_| Vec::with_capacity(n)).collect();
        let mut skipped = Vec::new();
        let mut row = Vec::with_capacity(self.columns.len());
        'rows: for i in 0..n {
            row.clear();
            for c in &self.columns {
                match self.cell(&b, &vectors, i, c) {
                    Ok(cell) => row.push(cell),
                    Err(reason) => {
                        let e = self.err(&b.ids[i], c, reason);
                        match c.on_error {
                            OnError::Fail => return Err(e),
                            OnError::Skip => {
                                skipped.push(e);
                                continue 'rows;
                            }
                            OnError::SetNull => row.push(Cell::Null),
                        }
                    }
                }
            }
            keep.push(i);
            for (ci, cell) in row.drain(..).enumerate() {
                cells[ci].push(cell);
            }
        }
        let mut vectors = Some(vectors);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (c, col) in self.columns.iter().zip(cells) {
            let array = match c.ty {
                ColumnType::Vector => {
                    let all = vectors.take().expect("one vector column");
                    self.vector_array(all, b.dim, &keep)
                }
                _ => build(c.ty, col),
            };
            arrays.push(array);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .expect("columns are built to the schema");
        Ok(Transformed { batch, skipped })
    }

    /// The vector column: the batch's buffer itself when every record is
    /// kept, else the kept records' vectors.
    fn vector_array(&self, all: Vec<f32>, dim: usize, keep: &[usize]) -> ArrayRef {
        let values = if keep.len() * dim == all.len() {
            all
        } else {
            let mut v = Vec::with_capacity(keep.len() * self.dim);
            for &i in keep {
                v.extend_from_slice(&all[i * dim..(i + 1) * dim]);
            }
            v
        };
        let field = Arc::new(ArrowField::new("item", DataType::Float32, true));
        Arc::new(
            FixedSizeListArray::try_new(
                field,
                self.dim as i32,
                Arc::new(Float32Array::from(values)),
                None,
            )
            .expect("vector lengths were checked"),
        )
    }
}

/// One non-vector column from its cells.
fn build(ty: ColumnType, cells: Vec<Cell>) -> ArrayRef {
    match ty {
        ColumnType::Vector => unreachable!("vectors are built by Transformer::vector_array"),
        ColumnType::String | ColumnType::Json => {
            let mut bld = StringBuilder::new();
            for cell in cells {
                match cell {
                    Cell::Str(s) => bld.append_value(s),
                    _ => bld.append_null(),
                }
            }
            Arc::new(bld.finish())
        }
        ColumnType::Int64 => {
            let mut bld = Int64Builder::new();
            for cell in cells {
                match cell {
                    Cell::Int(v) => bld.append_value(v),
                    _ => bld.append_null(),
                }
            }
            Arc::new(bld.finish())
        }
        ColumnType::Float64 => {
            let mut bld = Float64Builder::new();
            for cell in cells {
                match cell {
                    Cell::Float(v) => bld.append_value(v),
                    _ => bld.append_null(),
                }
            }
            Arc::new(bld.finish())
        }
        ColumnType::Bool => {
            let mut bld = BooleanBuilder::new();
            for cell in cells {
                match cell {
                    Cell::Bool(v) => bld.append_value(v),
                    _ => bld.append_null(),
                }
            }
            Arc::new(bld.finish())
        }
        ColumnType::ListString => list_column(cells, StringBuilder::new(), |b, it| match it {
            MetaValue::Str(s) => b.append_value(s),
            _ => b.append_null(),
        }),
        ColumnType::ListInt64 => list_column(cells, Int64Builder::new(), |b, it| match it {
            MetaValue::Int(v) => b.append_value(*v),
            _ => b.append_null(),
        }),
        ColumnType::ListFloat64 => list_column(cells, Float64Builder::new(), |b, it| match it {
            MetaValue::Float(v) => b.append_value(*v),
            MetaValue::Int(v) => b.append_value(*v as f64),
            _ => b.append_null(),
        }),
        ColumnType::ListBool => list_column(cells, BooleanBuilder::new(), |b, it| match it {
            MetaValue::Bool(v) => b.append_value(*v),
            _ => b.append_null(),
        }),
    }
}

/// A list column: `push` appends one item to the values builder.
fn list_column<B: ArrayBuilder>(
    cells: Vec<Cell>,
    values: B,
    push: impl Fn(&mut B, &MetaValue),
) -> ArrayRef {
    let mut bld = ListBuilder::new(values);
    for cell in cells {
        match cell {
            Cell::List(items) => {
                for it in items.iter() {
                    push(bld.values(), it);
                }
                bld.append(true);
            }
            _ => bld.append(false),
        }
    }
    Arc::new(bld.finish())
}

/// The largest magnitude below which every integer is exactly a float64.
const EXACT_FLOAT_INT: i64 = 1 << 53;

/// An int as float64, only if the conversion is exact: beyond 2^53 a
/// float64 cannot hold every integer, and rounding is not a coercion.
fn exact_float(i: i64) -> Result<f64, String> {
    if i.unsigned_abs() <= EXACT_FLOAT_INT as u64 {
        Ok(i as f64)
    } else {
        Err(format!(
            "int `{i}` is beyond 2^53 and would be rounded as float64; use an `int64` column (or `string`) for it"
        ))
    }
}

/// Type rules for one metadata value (see the module docs).
fn convert<'a>(v: Cow<'a, MetaValue>, ty: ColumnType, coerce: bool) -> Result<Cell<'a>, String> {
    let wrong = |v: &MetaValue| format!("expected {ty}, found {} `{}`", v.type_name(), v.to_json());
    let str_of = |v: Cow<'a, MetaValue>| match v {
        Cow::Borrowed(MetaValue::Str(s)) => Cow::Borrowed(s.as_str()),
        Cow::Owned(MetaValue::Str(s)) => Cow::Owned(s),
        _ => unreachable!("checked to be a string"),
    };
    let list_of = |v: Cow<'a, MetaValue>| match v {
        Cow::Borrowed(MetaValue::List(items)) => Cow::Borrowed(items.as_slice()),
        Cow::Owned(MetaValue::List(items)) => Cow::Owned(items),
        _ => unreachable!("checked to be a list"),
    };
    Ok(match (ty, v.as_ref()) {
        (ColumnType::String, MetaValue::Str(_)) => Cell::Str(str_of(v)),
        (ColumnType::Int64, MetaValue::Int(i)) => Cell::Int(*i),
        (ColumnType::Float64, MetaValue::Float(f)) => Cell::Float(*f),
        (ColumnType::Bool, MetaValue::Bool(b)) => Cell::Bool(*b),
        (ColumnType::Json, v) => {
            let mut out = String::new();
            write_json(&mut out, v);
            Cell::Str(Cow::Owned(out))
        }
        (t, MetaValue::List(items)) if t.is_list() => {
            let want = match t {
                ColumnType::ListString => "string",
                ColumnType::ListInt64 => "int",
                ColumnType::ListFloat64 => "float",
                _ => "bool",
            };
            for it in items {
                if coerce
                    && want == "float"
                    && let MetaValue::Int(i) = it
                {
                    exact_float(*i)?;
                    continue;
                }
                if it.type_name() != want {
                    return Err(format!(
                        "expected {t}, found a list holding {} `{}`",
                        it.type_name(),
                        it.to_json()
                    ));
                }
            }
            Cell::List(list_of(v))
        }
        (t, val) if coerce => match (t, val) {
            (ColumnType::Float64, MetaValue::Int(i)) => Cell::Float(exact_float(*i)?),
            (ColumnType::String, MetaValue::Int(i)) => Cell::Str(Cow::Owned(i.to_string())),
            // A float becomes the same text JSON prints for it.
            (ColumnType::String, MetaValue::Float(f)) => Cell::Str(Cow::Owned(
                serde_json::Number::from_f64(*f)
                    .map(|n| n.to_string())
                    .ok_or_else(|| wrong(val))?,
            )),
            (ColumnType::String, MetaValue::Bool(b)) => Cell::Str(Cow::Owned(b.to_string())),
            (ColumnType::Int64, MetaValue::Str(s)) => {
                Cell::Int(s.trim().parse().map_err(|_| wrong(val))?)
            }
            (ColumnType::Float64, MetaValue::Str(s)) => {
                Cell::Float(s.trim().parse().map_err(|_| wrong(val))?)
            }
            (ColumnType::Bool, MetaValue::Str(s)) if s == "true" || s == "false" => {
                Cell::Bool(s == "true")
            }
            (t, scalar) if t.is_list() => {
                return convert(Cow::Owned(MetaValue::List(vec![scalar.clone()])), t, coerce);
            }
            _ => return Err(wrong(val)),
        },
        (_, val) => return Err(wrong(val)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Vars, load_str};
    use crate::source::record::Record;
    use arrow_array::Array;

    fn collection(columns: &str) -> Collection {
        let text = format!(
            "version: 1\nname: t\nsource: {{ chroma: {{ path: ./db }} }}\ntarget: {{ lancedb: {{ uri: ./o }} }}\ncollections:\n  - source: c\n    columns:\n{columns}"
        );
        load_str(&text, std::path::Path::new("t.yaml"), &Vars::empty())
            .unwrap()
            .collections
            .remove(0)
    }

    fn batch(records: Vec<(&str, Option<Metadata>, Vec<f32>)>) -> SourceBatch {
        let dim = records[0].2.len();
        let mut b = SourceBatch::with_capacity(records.len(), dim);
        for (id, metadata, embedding) in records {
            b.push(Record {
                id: id.into(),
                document: Some(format!("doc {id}")),
                uri: None,
                metadata,
                embedding,
            });
        }
        b
    }

    fn meta(pairs: &[(&str, MetaValue)]) -> Option<Metadata> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    const BASE: &str =
        "      - { name: id, from: id }\n      - { name: vector, from: embedding }\n";

    #[test]
    fn maps_columns_and_canonical_json() {
        let c = collection(&format!(
            "{BASE}      - {{ name: page, from: metadata.page, type: int64 }}\n      - {{ name: m, from: metadata, type: json }}\n"
        ));
        let t = Transformer::new(&c, 2);
        let b = batch(vec![
            (
                "a",
                meta(&[
                    ("page", MetaValue::Int(9007199254740993)),
                    ("b", MetaValue::Float(0.5)),
                ]),
                vec![1.0, 2.0],
            ),
            ("b", None, vec![3.0, 4.0]),
        ]);
        let out = t.transform(b).unwrap();
        assert_eq!(out.batch.num_rows(), 2);
        let page = out
            .batch
            .column(2)
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        assert_eq!(page.value(0), 9007199254740993);
        assert!(page.is_null(1));
        let m = out
            .batch
            .column(3)
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        assert_eq!(m.value(0), r#"{"b":0.5,"page":9007199254740993}"#);
        assert!(matches!(
            out.batch.schema().field(1).data_type(),
            DataType::FixedSizeList(_, 2)
        ));
    }

    #[test]
    fn wrong_type_fails_naming_record_and_key() {
        let c = collection(&format!(
            "{BASE}      - {{ name: page, from: metadata.page, type: int64 }}\n"
        ));
        let t = Transformer::new(&c, 1);
        let b = batch(vec![(
            "rec-7",
            meta(&[("page", MetaValue::Str("iv".into()))]),
            vec![1.0],
        )]);
        let e = t.transform(b).unwrap_err();
        assert_eq!(e.id, "rec-7");
        assert!(
            e.to_string()
                .contains("column `page` (from `metadata.page`)"),
            "{e}"
        );
    }

    #[test]
    fn skip_and_set_null_and_coerce() {
        let c = collection(&format!(
            "{BASE}      - {{ name: node, from: metadata.node, type: string, required: true, on_error: skip }}\n      - {{ name: p, from: metadata.p, type: float64, on_error: set_null }}\n      - {{ name: q, from: metadata.q, type: int64, coerce: true }}\n"
        ));
        let t = Transformer::new(&c, 1);
        let b = batch(vec![
            (
                "keep",
                meta(&[
                    ("node", MetaValue::Str("n".into())),
                    ("p", MetaValue::Str("x".into())),
                    ("q", MetaValue::Str("12".into())),
                ]),
                vec![1.0],
            ),
            ("drop", meta(&[]), vec![1.0]),
        ]);
        let out = t.transform(b).unwrap();
        assert_eq!(out.batch.num_rows(), 1);
        assert_eq!(out.skipped.len(), 1);
        assert_eq!(out.skipped[0].id, "drop");
        assert!(out.batch.column(3).is_null(0));
        let q = out
            .batch
            .column(4)
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        assert_eq!(q.value(0), 12);
    }

    #[test]
    fn nan_and_wrong_dimension_are_invalid() {
        let c = collection(BASE);
        let t = Transformer::new(&c, 2);
        let e = t
            .transform(batch(vec![("x", None, vec![1.0, f32::NAN])]))
            .unwrap_err();
        assert!(e.reason.contains("NaN"), "{e}");
        let e = t
            .transform(batch(vec![("y", None, vec![1.0, 2.0, 3.0])]))
            .unwrap_err();
        assert!(e.reason.contains("dimension 3"), "{e}");
    }

    #[test]
    fn list_columns_keep_their_items_and_coerce() {
        let c = collection(&format!(
            "{BASE}      - {{ name: tags, from: metadata.tags, type: \"list<string>\" }}\n      - {{ name: nums, from: metadata.nums, type: \"list<int64>\" }}\n      - {{ name: ratios, from: metadata.ratios, type: \"list<float64>\", coerce: true }}\n      - {{ name: bits, from: metadata.bits, type: \"list<bool>\" }}\n      - {{ name: one, from: metadata.one, type: \"list<string>\", coerce: true }}\n"
        ));
        let t = Transformer::new(&c, 1);
        let list = |items: Vec<MetaValue>| MetaValue::List(items);
        let b = batch(vec![
            (
                "a",
                meta(&[
                    (
                        "tags",
                        list(vec![MetaValue::Str("x".into()), MetaValue::Str("y".into())]),
                    ),
                    ("nums", list(vec![MetaValue::Int(9007199254740993)])),
                    (
                        "ratios",
                        list(vec![MetaValue::Float(0.5), MetaValue::Int(2)]),
                    ),
                    (
                        "bits",
                        list(vec![MetaValue::Bool(true), MetaValue::Bool(false)]),
                    ),
                    ("one", MetaValue::Str("solo".into())),
                ]),
                vec![1.0],
            ),
            ("b", None, vec![2.0]),
        ]);
        let out = t.transform(b).unwrap().batch;
        let text = |col: usize, row: usize| {
            arrow::util::display::array_value_to_string(out.column(col).as_ref(), row).unwrap()
        };
        assert_eq!(text(2, 0), "[x, y]");
        assert_eq!(text(3, 0), "[9007199254740993]");
        assert_eq!(text(4, 0), "[0.5, 2.0]");
        assert_eq!(text(5, 0), "[true, false]");
        assert_eq!(text(6, 0), "[solo]");
        for col in 2..7 {
            assert!(
                out.column(col).is_null(1),
                "column {col} of a record without metadata"
            );
        }
        // Without coerce, an int inside a float list is the wrong type.
        let strict = collection(&format!(
            "{BASE}      - {{ name: ratios, from: metadata.ratios, type: \"list<float64>\" }}\n"
        ));
        let e = Transformer::new(&strict, 1)
            .transform(batch(vec![(
                "c",
                meta(&[("ratios", list(vec![MetaValue::Int(2)]))]),
                vec![1.0],
            )]))
            .unwrap_err();
        assert!(e.reason.contains("list holding int"), "{e}");
    }

    #[test]
    fn coerce_to_float_refuses_what_it_would_round() {
        assert_eq!(exact_float(1 << 53), Ok(9_007_199_254_740_992.0));
        assert_eq!(exact_float(-(1 << 53)), Ok(-9_007_199_254_740_992.0));
        let err = exact_float((1 << 53) + 1).unwrap_err();
        assert!(err.contains("2^53"), "{err}");
        assert!(exact_float(i64::MIN).is_err());
        let one = |v| convert(Cow::Owned(MetaValue::Int(v)), ColumnType::Float64, true);
        assert!(matches!(one(3), Ok(Cell::Float(f)) if f == 3.0));
        assert!(one(9_007_199_254_740_993).is_err());
        let list = convert(
            Cow::Owned(MetaValue::List(vec![
                MetaValue::Int(1),
                MetaValue::Int(i64::MAX),
            ])),
            ColumnType::ListFloat64,
            true,
        );
        assert!(list.is_err());
    }
}
