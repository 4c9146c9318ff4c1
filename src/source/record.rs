//! The records a source yields: ids, documents, uris, metadata and vectors.
//!
//! Metadata values keep Chroma's own types (str, int, float, bool, and from
//! 1.5 lists of those) so an int stays an i64 all the way (2^53 + 1 must
//! arrive as 2^53 + 1) and a float is never mistaken for an int. Vectors of a
//! batch are one flat `f32` buffer with the dimension: one allocation per
//! batch, ready to become an Arrow `FixedSizeList` without copying twice.
//! A batch from `Source::read_fields` carries no vectors at all: dimension 0
//! and an empty buffer (see [`SourceBatch::has_vectors`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One metadata value, as Chroma types it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetaValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<MetaValue>),
}

impl MetaValue {
    /// The type name used by `inspect` and in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::Bool(_) => "bool",
            MetaValue::Int(_) => "int",
            MetaValue::Float(_) => "float",
            MetaValue::Str(_) => "string",
            MetaValue::List(items) => match items.first() {
                Some(MetaValue::Bool(_)) => "list<bool>",
                Some(MetaValue::Int(_)) => "list<int>",
                Some(MetaValue::Float(_)) => "list<float>",
                Some(MetaValue::Str(_)) => "list<string>",
                _ => "list",
            },
        }
    }

    /// Converts a JSON value (from the queue or the HTTP API). Numbers that
    /// are integers in the JSON text stay integers; `null` is `None`.
    pub fn from_json(v: &serde_json::Value) -> Option<MetaValue> {
        use serde_json::Value;
        Some(match v {
            Value::Null => return None,
            Value::Bool(b) => MetaValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => MetaValue::Int(i),
                None => MetaValue::Float(n.as_f64()?),
            },
            Value::String(s) => MetaValue::Str(s.clone()),
            Value::Array(items) => {
                MetaValue::List(items.iter().filter_map(MetaValue::from_json).collect())
            }
            Value::Object(_) => return None,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            MetaValue::Bool(b) => Value::Bool(*b),
            MetaValue::Int(i) => Value::from(*i),
            MetaValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            MetaValue::Str(s) => Value::String(s.clone()),
            MetaValue::List(items) => Value::Array(items.iter().map(MetaValue::to_json).collect()),
        }
    }
}

/// A record's metadata, keys sorted.
pub type Metadata = BTreeMap<String, MetaValue>;

/// A batch of records, column by column.
///
/// Vectors are either all there or all absent. A batch *without vectors*
/// (from `Source::read_fields`, for statistics) has `dim == 0` and empty
/// `embeddings`, so every record's [`SourceBatch::embedding`] is the empty
/// slice and nothing indexes past the buffer. Such a batch is for counting
/// fields only: the transform finds every one of its vectors invalid (no
/// table has dimension 0), so it never becomes rows by mistake.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceBatch {
    pub ids: Vec<String>,
    pub documents: Vec<Option<String>>,
    pub uris: Vec<Option<String>>,
    pub metadatas: Vec<Option<Metadata>>,
    /// `len() == ids.len() * dim`, record after record.
    pub embeddings: Vec<f32>,
    /// 0 in a batch without vectors.
    pub dim: usize,
}

/// One record, for building batches.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub document: Option<String>,
    pub uri: Option<String>,
    pub metadata: Option<Metadata>,
    pub embedding: Vec<f32>,
}

impl SourceBatch {
    pub fn with_capacity(n: usize, dim: usize) -> Self {
        SourceBatch {
            ids: Vec::with_capacity(n),
            documents: Vec::with_capacity(n),
            uris: Vec::with_capacity(n),
            metadatas: Vec::with_capacity(n),
            embeddings: Vec::with_capacity(n * dim),
            dim,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the records carry vectors (`dim > 0`). An empty batch from
    /// `Source::read` may say no as well: it had no record to say how long.
    pub fn has_vectors(&self) -> bool {
        self.dim > 0
    }

    /// The batch without its vectors: dimension 0, buffer freed.
    pub fn without_vectors(mut self) -> Self {
        self.embeddings = Vec::new();
        self.dim = 0;
        self
    }

    pub fn push(&mut self, r: Record) {
        self.ids.push(r.id);
        self.documents.push(r.document);
        self.uris.push(r.uri);
        self.metadatas.push(r.metadata);
        self.embeddings.extend_from_slice(&r.embedding);
    }

    /// Moves `other`'s records to the end of this batch.
    pub fn append(&mut self, other: SourceBatch) {
        if self.is_empty() {
            self.dim = other.dim;
        }
        self.ids.extend(other.ids);
        self.documents.extend(other.documents);
        self.uris.extend(other.uris);
        self.metadatas.extend(other.metadatas);
        self.embeddings.extend(other.embeddings);
    }

    /// The vector of record `i`.
    pub fn embedding(&self, i: usize) -> &[f32] {
        &self.embeddings[i * self.dim..(i + 1) * self.dim]
    }

    /// Record `i` as an owned [`Record`].
    pub fn record(&self, i: usize) -> Record {
        Record {
            id: self.ids[i].clone(),
            document: self.documents[i].clone(),
            uri: self.uris[i].clone(),
            metadata: self.metadatas[i].clone(),
            embedding: self.embedding(i).to_vec(),
        }
    }
}
