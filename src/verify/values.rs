//! Value-by-value verification: every (or a seeded sample of) source record
//! transformed exactly as apply does, compared with its row in the table:
//! content columns (from document/uri), metadata columns (canonical JSON for
//! `json`), and the vector's cosine similarity (min, max, mean, p95).
//!
//! Memory stays bounded: the sampled ids are split into hash buckets sized
//! to a budget, and each bucket is one pass over the source and one over the
//! table, holding only that bucket's records.

use std::collections::{HashMap, HashSet};
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

/// Compares values; `expected_count` sizes the sample and the buckets.
pub async fn verify_values(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    dim: usize,
    expected_count: u64,
) -> Result<ValueCheck, VerifyError> {
    let v = &c.validate;
    let transformer = Transformer::new(c, dim);
    let id_idx = c
        .columns
        .iter()
        .position(|col| col.from == Field::Id)
        .expect("id column");
    let vec_idx = c
        .columns
        .iter()
        .position(|col| col.from == Field::Embedding)
        .expect("vector column");
    // Which columns each check covers.
    let kind = |f: &Field| match f {
        Field::Document | Field::Uri => Some(true),
        Field::Metadata | Field::MetadataKey(_) => Some(false),
        _ => None,
    };
    let threshold = match v.sample {
        SampleSize::All => u64::MAX,
        SampleSize::Records(n) if n >= expected_count => u64::MAX,
        SampleSize::Records(n) => {
            ((n as f64 / expected_count.max(1) as f64) * u64::MAX as f64) as u64
        }
    };
    let selected = match v.sample {
        SampleSize::All => expected_count,
        SampleSize::Records(n) => n.min(expected_count),
    };
    let per_record = dim * 4 + 64 * c.columns.len() + 64;
    let buckets = ((selected as usize * per_record).div_ceil(BUCKET_BUDGET)).max(1) as u64;

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
    let names: Vec<&str> = c.columns.iter().map(|col| col.name.as_str()).collect();
    let mut cosines: Vec<f64> = Vec::new();
    let mut content_mismatches = 0u64;
    let mut metadata_mismatches = 0u64;
    let mut examples = Vec::new();
    let mut compared = 0u64;

    for bucket in 0..buckets {
        let wanted = |id: &str| {
            (threshold == u64::MAX || hash64(v.seed, 0, id) <= threshold)
                && hash64(v.seed, 1, id) % buckets == bucket
        };
        let mut expected: HashMap<String, Expected> = HashMap::new();
        let mut stream = source.read(&c.source, c.batch_size as usize);
        while let Some(b) = stream.try_next().await? {
            let t = match transformer.transform(&b) {
                Ok(t) => t.batch,
                // A record apply could not transform fails apply's copy
                // already; here it is simply not comparable.
                Err(_) => continue,
            };
            collect(&t, id_idx, vec_idx, &wanted, &mut expected);
        }
        let mut rows = table
            .query()
            .select(Select::columns(&names))
            .execute()
            .await
            .map_err(|source| VerifyError::Read {
                table: c.table.clone(),
                source,
            })?;
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(batch) = rows.try_next().await.map_err(|source| VerifyError::Read {
            table: c.table.clone(),
            source,
        })? {
            let ids = batch.column(id_idx);
            for r in 0..batch.num_rows() {
                let id = cell(ids.as_ref(), r);
                let Some(exp) = expected.get(&id) else {
                    continue;
                };
                if !seen.insert(id.clone()) {
                    continue; // duplicates are the id check's business
                }
                compared += 1;
                for (ci, col) in c.columns.iter().enumerate() {
                    let Some(is_content) = kind(&col.from) else {
                        continue;
                    };
                    if (is_content && !v.content) || (!is_content && !v.metadata) {
                        continue;
                    }
                    let got = cell(batch.column(ci).as_ref(), r);
                    if got != exp.cells[ci] {
                        if is_content {
                            content_mismatches += 1;
                        } else {
                            metadata_mismatches += 1;
                        }
                        if examples.len() < EXAMPLES {
                            examples.push(format!(
                                "`{id}`.`{}`: table has {got:?}, source {:?}",
                                col.name, exp.cells[ci]
                            ));
                        }
                    }
                }
                cosines.push(cosine(
                    &vector(batch.column(vec_idx).as_ref(), r),
                    &exp.vector,
                ));
            }
        }
    }

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
        let mut sorted = cosines.clone();
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
