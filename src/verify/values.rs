//! Value-by-value verification: every (or a seeded sample of) source record
//! transformed exactly as apply does, compared with its row in the table:
//! content columns (from document/uri), metadata columns (canonical JSON for
//! `json`), and the vector's cosine similarity (min, max, mean, p95).
//!
//! Memory stays bounded: the sampled ids are split into hash buckets sized
//! to a budget, and each bucket is one pass over the source and one over the
//! table, holding only that bucket's records.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use arrow::util::display::array_value_to_string;
use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch};
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use serde::Serialize;

use super::VerifyError;
use crate::plan::{Collection, Field, SampleSize};
use crate::source::Source;
use crate::target::LanceTarget;
use crate::transform::Transformer;

/// Bytes of source records one bucket may hold.
const BUCKET_BUDGET: usize = 256 << 20;
const EXAMPLES: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct CosineStats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub p95_low: f64,
    /// Vectors below `min_cosine`.
    pub below: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValueCheck {
    /// Records compared.
    pub compared: u64,
    pub content_mismatches: u64,
    pub metadata_mismatches: u64,
    pub examples: Vec<String>,
    pub cosine: Option<CosineStats>,
    pub breaches: Vec<String>,
}

fn hash64(seed: u64, salt: u64, id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, salt, id).hash(&mut h);
    h.finish()
}

fn cell(a: &dyn Array, i: usize) -> String {
    if a.is_null(i) {
        "<null>".into()
    } else {
        array_value_to_string(a, i).unwrap_or_else(|e| format!("<{e}>"))
    }
}

fn vector(a: &dyn Array, i: usize) -> Vec<f32> {
    let l = a
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .expect("vector column");
    let v = l.value(i);
    v.as_any()
        .downcast_ref::<Float32Array>()
        .expect("float32 items")
        .values()
        .to_vec()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        dot += *x as f64 * *y as f64;
        na += *x as f64 * *x as f64;
        nb += *y as f64 * *y as f64;
    }
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

struct Expected {
    cells: Vec<String>,
    vector: Vec<f32>,
}

/// Samples smaller than this share of the collection are looked up by id
/// (source `get` and a filtered table scan); larger ones stream both sides.
const LOOKUP_SHARE: u64 = 4;
/// Ids per lookup: one source `get` and one `IN (…)` filter each.
const LOOKUP_CHUNK: usize = 1000;

/// What the comparison found so far.
#[derive(Default)]
struct Tally {
    compared: u64,
    content_mismatches: u64,
    metadata_mismatches: u64,
    examples: Vec<String>,
    cosines: Vec<f64>,
}

/// The plan's columns, as the comparison needs them.
struct Layout<'a> {
    c: &'a Collection,
    names: Vec<&'a str>,
    id_idx: usize,
    vec_idx: usize,
}

impl Layout<'_> {
    /// Whether a column is content (true), metadata (false) or neither.
    fn kind(f: &Field) -> Option<bool> {
        match f {
            Field::Document | Field::Uri => Some(true),
            Field::Metadata | Field::MetadataKey(_) => Some(false),
            _ => None,
        }
    }

    /// Compares one table batch with the expected records it holds.
    fn compare(
        &self,
        batch: &RecordBatch,
        expected: &HashMap<String, Expected>,
        seen: &mut HashSet<String>,
        t: &mut Tally,
    ) {
        let v = &self.c.validate;
        let ids = batch.column(self.id_idx);
        for r in 0..batch.num_rows() {
            let id = cell(ids.as_ref(), r);
            let Some(exp) = expected.get(&id) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                continue; // duplicates are the id check's business
            }
            t.compared += 1;
            for (ci, col) in self.c.columns.iter().enumerate() {
                let Some(is_content) = Self::kind(&col.from) else {
                    continue;
                };
                if (is_content && !v.content) || (!is_content && !v.metadata) {
                    continue;
                }
                let got = cell(batch.column(ci).as_ref(), r);
                if got != exp.cells[ci] {
                    if is_content {
                        t.content_mismatches += 1;
                    } else {
                        t.metadata_mismatches += 1;
                    }
                    if t.examples.len() < EXAMPLES {
                        t.examples.push(format!(
                            "`{id}`.`{}`: table has {got:?}, source {:?}",
                            col.name, exp.cells[ci]
                        ));
                    }
                }
            }
            t.cosines.push(cosine(
                &vector(batch.column(self.vec_idx).as_ref(), r),
                &exp.vector,
            ));
        }
    }
}

/// The `n` ids with the smallest seeded hash: an exact-size sample that is
/// the same on every run with the same seed, whatever order the source
/// yields its records in. Records the plan skips are never sampled.
async fn sample_ids(
    source: &dyn Source,
    c: &Collection,
    n: usize,
    skipped: &HashSet<String>,
) -> Result<HashSet<String>, VerifyError> {
    let seed = c.validate.seed;
    let mut heap: BinaryHeap<(u64, String)> = BinaryHeap::with_capacity(n + 1);
    let mut stream = source.read_ids(&c.source, c.batch_size as usize);
    while let Some(ids) = stream.try_next().await? {
        for id in ids {
            if skipped.contains(&id) {
                continue;
            }
            let h = hash64(seed, 0, &id);
            if heap.len() < n {
                heap.push((h, id));
            } else if heap.peek().is_some_and(|(top, _)| h < *top) {
                heap.pop();
                heap.push((h, id));
            }
        }
    }
    Ok(heap.into_iter().map(|(_, id)| id).collect())
}

/// Compares values of every record, or of `sample` records (see
/// [`sample_ids`]); `expected_count` (records the table should hold) sizes
/// the sample and the buckets, `skipped` are records the plan leaves out.
pub async fn verify_values(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    dim: usize,
    expected_count: u64,
    skipped: &HashSet<String>,
) -> Result<ValueCheck, VerifyError> {
    let v = &c.validate;
    let transformer = Transformer::new(c, dim);
    let layout = Layout {
        c,
        names: c.columns.iter().map(|col| col.name.as_str()).collect(),
        id_idx: c
            .columns
            .iter()
            .position(|col| col.from == Field::Id)
            .expect("id column"),
        vec_idx: c
            .columns
            .iter()
            .position(|col| col.from == Field::Embedding)
            .expect("vector column"),
    };
    let Some(table) = target.open(&c.table).await? else {
        return Ok(ValueCheck {
            compared: 0,
            content_mismatches: 0,
            metadata_mismatches: 0,
            examples: vec![],
            cosine: None,
            breaches: vec![format!("table `{}` does not exist", c.table)],
        });
    };
    let read_err = |source| VerifyError::Read {
        table: c.table.clone(),
        source,
    };
    let sample = match v.sample {
        SampleSize::Records(n) if n < expected_count => {
            Some(sample_ids(source, c, n as usize, skipped).await?)
        }
        _ => None,
    };
    let id_col = &c.columns[layout.id_idx].name;
    let mut tally = Tally::default();
    match &sample {
        // A small sample: fetch its records from both sides by id.
        Some(ids)
            if (ids.len() as u64) * LOOKUP_SHARE <= expected_count && !id_col.contains('`') =>
        {
            let mut ids: Vec<&String> = ids.iter().collect();
            ids.sort();
            for chunk in ids.chunks(LOOKUP_CHUNK) {
                let chunk: Vec<String> = chunk.iter().map(|s| s.to_string()).collect();
                let mut expected = HashMap::new();
                let b = source.get(&c.source, &chunk).await?;
                // A record apply could not transform fails apply's copy
                // already; here it is simply not comparable.
                if let Ok(t) = transformer.transform(b) {
                    collect(
                        &t.batch,
                        layout.id_idx,
                        layout.vec_idx,
                        &|_| true,
                        &mut expected,
                    );
                }
                let list: Vec<String> = chunk
                    .iter()
                    .map(|id| format!("'{}'", id.replace('\'', "''")))
                    .collect();
                let mut rows = table
                    .query()
                    .only_if(format!("`{id_col}` IN ({})", list.join(",")))
                    .select(Select::columns(&layout.names))
                    .execute()
                    .await
                    .map_err(read_err)?;
                let mut seen = HashSet::new();
                while let Some(batch) = rows.try_next().await.map_err(read_err)? {
                    layout.compare(&batch, &expected, &mut seen, &mut tally);
                }
            }
        }
        // Everything, or a large sample: stream both sides, in hash
        // buckets that keep the expected records within a memory budget.
        _ => {
            let selected = sample.as_ref().map_or(expected_count, |s| s.len() as u64);
            let per_record = dim * 4 + 64 * c.columns.len() + 64;
            let buckets = ((selected as usize * per_record).div_ceil(BUCKET_BUDGET)).max(1) as u64;
            for bucket in 0..buckets {
                let wanted = |id: &str| {
                    sample.as_ref().is_none_or(|s| s.contains(id))
                        && hash64(v.seed, 1, id) % buckets == bucket
                };
                let mut expected: HashMap<String, Expected> = HashMap::new();
                let mut stream = source.read(&c.source, c.batch_size as usize);
                while let Some(b) = stream.try_next().await? {
                    if let Ok(t) = transformer.transform(b) {
                        collect(
                            &t.batch,
                            layout.id_idx,
                            layout.vec_idx,
                            &wanted,
                            &mut expected,
                        );
                    }
                }
                let mut rows = table
                    .query()
                    .select(Select::columns(&layout.names))
                    .execute()
                    .await
                    .map_err(read_err)?;
                let mut seen: HashSet<String> = HashSet::new();
                while let Some(batch) = rows.try_next().await.map_err(read_err)? {
                    layout.compare(&batch, &expected, &mut seen, &mut tally);
                }
            }
        }
    }

    let Tally {
        compared,
        content_mismatches,
        metadata_mismatches,
        examples,
        cosines,
    } = tally;
    let mut breaches = Vec::new();
    if content_mismatches > 0 {
        breaches.push(format!("content: {content_mismatches} values differ"));
    }
    if metadata_mismatches > 0 {
        breaches.push(format!("metadata: {metadata_mismatches} values differ"));
    }
    let stats = if cosines.is_empty() {
        None
    } else {
        let below = cosines.iter().filter(|x| **x < v.min_cosine).count() as u64;
        let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
        let mut sorted = cosines;
        sorted.sort_by(|a, b| a.total_cmp(b));
        // The 5th percentile from the bottom: 95% of vectors are at least this similar.
        let p95_low = sorted[((sorted.len() as f64) * 0.05).floor() as usize];
        if below > 0 {
            breaches.push(format!(
                "vectors: {below} below min_cosine {} (lowest {:.6})",
                v.min_cosine, sorted[0]
            ));
        }
        Some(CosineStats {
            min: sorted[0],
            max: *sorted.last().expect("non-empty"),
            mean,
            p95_low,
            below,
        })
    };
    Ok(ValueCheck {
        compared,
        content_mismatches,
        metadata_mismatches,
        examples,
        cosine: stats,
        breaches,
    })
}

fn collect(
    t: &RecordBatch,
    id_idx: usize,
    vec_idx: usize,
    wanted: &dyn Fn(&str) -> bool,
    out: &mut HashMap<String, Expected>,
) {
    let ids = t.column(id_idx);
    for r in 0..t.num_rows() {
        let id = cell(ids.as_ref(), r);
        if !wanted(&id) {
            continue;
        }
        let cells = (0..t.num_columns())
            .map(|ci| {
                if ci == vec_idx {
                    String::new()
                } else {
                    cell(t.column(ci).as_ref(), r)
                }
            })
            .collect();
        out.insert(
            id,
            Expected {
                cells,
                vector: vector(t.column(vec_idx).as_ref(), r),
            },
        );
    }
}
