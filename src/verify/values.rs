//! Value-by-value verification: every (or a seeded sample of) source record
//! transformed exactly as apply does, compared with its row in the table:
//! content columns (from document/uri), metadata columns (canonical JSON for
//! `json`), and the vector's cosine similarity (min, max, mean, p95).
//!
//! Memory stays bounded: the sampled ids are split into hash buckets sized
//! to a budget, and each bucket is one pass over the source and one over the
//! table, holding only that bucket's records.

use std::collections::{BinaryHeap, HashMap, HashSet};

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

/// The memory budget for held records: `LANCEFERRY_VERIFY_MEMORY` (bytes)
/// when set, for machines with little memory, else 256 MiB.
fn budget() -> usize {
    std::env::var("LANCEFERRY_VERIFY_MEMORY")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|b| *b > 0)
        .unwrap_or(BUCKET_BUDGET)
}
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

/// The seeded hash that picks a sample and splits buckets: fixed across
/// Rust releases (see [`crate::hash`]), so `seed: 7` samples the same
/// records on every machine and every version.
fn hash64(seed: u64, salt: u64, id: &str) -> u64 {
    crate::hash::hash64(&[&seed.to_le_bytes(), &salt.to_le_bytes(), id.as_bytes()])
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

/// One record's compared values: a cell per column (empty for columns the
/// check does not compare) and the vector.
struct Row {
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
    /// Per column: `Some(true)` content, `Some(false)` metadata, compared;
    /// `None` not compared as a value.
    compared: Vec<Option<bool>>,
    /// What one held row costs, roughly, and how much may be held.
    row_bytes: usize,
    budget: usize,
}

impl<'a> Layout<'a> {
    fn new(c: &'a Collection, dim: usize) -> Self {
        let v = &c.validate;
        let position = |f: Field| c.columns.iter().position(|col| col.from == f);
        Layout {
            c,
            names: c.columns.iter().map(|col| col.name.as_str()).collect(),
            id_idx: position(Field::Id).expect("id column"),
            vec_idx: position(Field::Embedding).expect("vector column"),
            compared: c
                .columns
                .iter()
                .map(|col| match col.from {
                    Field::Document | Field::Uri if v.content => Some(true),
                    Field::Metadata | Field::MetadataKey(_) if v.metadata => Some(false),
                    _ => None,
                })
                .collect(),
            row_bytes: dim * 4 + 64 * c.columns.len() + 64,
            budget: budget(),
        }
    }

    /// The table's rows in the plan's columns, those matching `filter` if
    /// given.
    async fn scan(
        &self,
        table: &lancedb::Table,
        filter: Option<String>,
    ) -> Result<lancedb::arrow::SendableRecordBatchStream, VerifyError> {
        let mut q = table.query().select(Select::columns(&self.names));
        if let Some(f) = filter {
            q = q.only_if(f);
        }
        q.execute().await.map_err(|source| VerifyError::Read {
            table: self.c.table.clone(),
            source,
        })
    }

    fn id(&self, batch: &RecordBatch, r: usize) -> String {
        cell(batch.column(self.id_idx).as_ref(), r)
    }

    /// Row `r` of a batch in the table's schema (source batches are
    /// transformed into it first).
    fn row(&self, batch: &RecordBatch, r: usize) -> Row {
        Row {
            cells: self
                .compared
                .iter()
                .enumerate()
                .map(|(ci, kind)| match kind {
                    Some(_) => cell(batch.column(ci).as_ref(), r),
                    None => String::new(),
                })
                .collect(),
            vector: vector(batch.column(self.vec_idx).as_ref(), r),
        }
    }

    /// Compares a record as the source has it with its row in the table.
    fn compare(&self, id: &str, exp: &Row, got: &Row, t: &mut Tally) {
        t.compared += 1;
        for (ci, kind) in self.compared.iter().enumerate() {
            let Some(is_content) = *kind else { continue };
            if got.cells[ci] != exp.cells[ci] {
                if is_content {
                    t.content_mismatches += 1;
                } else {
                    t.metadata_mismatches += 1;
                }
                if t.examples.len() < EXAMPLES {
                    t.examples.push(format!(
                        "`{id}`.`{}`: table has {:?}, source {:?}",
                        self.c.columns[ci].name, got.cells[ci], exp.cells[ci]
                    ));
                }
            }
        }
        t.cosines.push(cosine(&got.vector, &exp.vector));
    }

    /// Compares a table batch with the records of `expected` it holds.
    fn compare_batch(
        &self,
        batch: &RecordBatch,
        expected: &HashMap<String, Row>,
        seen: &mut HashSet<String>,
        t: &mut Tally,
    ) {
        for r in 0..batch.num_rows() {
            let id = self.id(batch, r);
            let Some(exp) = expected.get(&id) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                continue; // duplicates are the id check's business
            }
            self.compare(&id, exp, &self.row(batch, r), t);
        }
    }

    /// The wanted rows of a transformed source batch, into `out`.
    fn collect(
        &self,
        t: &RecordBatch,
        wanted: &dyn Fn(&str) -> bool,
        out: &mut HashMap<String, Row>,
    ) {
        for r in 0..t.num_rows() {
            let id = self.id(t, r);
            if wanted(&id) {
                out.insert(id, self.row(t, r));
            }
        }
    }
}

/// The `n` ids with the smallest seeded hash: an exact-size sample that is
/// the same on every run with the same seed, whatever order the source
/// yields its records in. Records the plan skips are never sampled.
/// `known`: the source's ids when the caller has them already (apply's
/// copy read them), so they are not read again.
async fn sample_ids(
    source: &dyn Source,
    c: &Collection,
    n: usize,
    skipped: &HashSet<String>,
    known: Option<&[String]>,
) -> Result<HashSet<String>, VerifyError> {
    let seed = c.validate.seed;
    let mut heap: BinaryHeap<(u64, String)> = BinaryHeap::with_capacity(n + 1);
    let mut offer = |id: &str| {
        if skipped.contains(id) {
            return;
        }
        let h = hash64(seed, 0, id);
        if heap.len() < n {
            heap.push((h, id.to_string()));
        } else if heap.peek().is_some_and(|(top, _)| h < *top) {
            heap.pop();
            heap.push((h, id.to_string()));
        }
    };
    match known {
        Some(ids) => ids.iter().for_each(|id| offer(id)),
        None => {
            let mut stream = source.read_ids(&c.source, c.batch_size as usize);
            while let Some(ids) = stream.try_next().await? {
                ids.iter().for_each(|id| offer(id));
            }
        }
    }
    Ok(heap.into_iter().map(|(_, id)| id).collect())
}

/// The rows of a side-by-side pass still waiting for their match.
#[derive(Default)]
struct Waiting {
    source: HashMap<String, Row>,
    table: HashMap<String, Row>,
    /// Ids compared already.
    seen: HashSet<String>,
    tally: Tally,
}

impl Waiting {
    /// A row read on one side: compared with its match if the other side
    /// left it waiting, else left waiting itself.
    fn arrive(&mut self, layout: &Layout<'_>, id: String, row: Row, from_source: bool) {
        let (mine, other) = if from_source {
            (&mut self.source, &mut self.table)
        } else {
            (&mut self.table, &mut self.source)
        };
        match other.remove(&id) {
            Some(o) => {
                let (exp, got) = if from_source { (&row, &o) } else { (&o, &row) };
                layout.compare(&id, exp, got, &mut self.tally);
                self.seen.insert(id);
            }
            None => {
                mine.insert(id, row);
            }
        }
    }
}

/// Source and table in one pass each, side by side. Rows seen on one side
/// wait for their match from the other; when both are in the same order
/// (a table apply wrote from this source) that is about one batch. Returns
/// `None`, having compared nothing for good, when the waiting rows outgrow
/// the memory budget: the orders differ (an append to an older table, an
/// upsert), and the caller compares in buckets instead.
async fn merge_pass(
    source: &dyn Source,
    table: &lancedb::Table,
    transformer: &Transformer,
    layout: &Layout<'_>,
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Option<Tally>, VerifyError> {
    let c = layout.c;
    let read_err = |source| VerifyError::Read {
        table: c.table.clone(),
        source,
    };
    let mut src = source.read(&c.source, c.batch_size as usize);
    let mut rows = layout.scan(table, None).await?;
    let mut w = Waiting::default();
    let (mut source_done, mut table_done) = (false, false);
    while !(source_done && table_done) {
        // Read from the side that is behind.
        if !source_done && (table_done || w.source.len() <= w.table.len()) {
            let Some(b) = src.try_next().await? else {
                source_done = true;
                continue;
            };
            let Ok(t) = transformer.transform(b) else {
                continue; // not comparable; apply's copy fails on it already
            };
            for r in 0..t.batch.num_rows() {
                let id = layout.id(&t.batch, r);
                if wanted(&id) {
                    let row = layout.row(&t.batch, r);
                    w.arrive(layout, id, row, true);
                }
            }
        } else {
            let Some(batch) = rows.try_next().await.map_err(read_err)? else {
                table_done = true;
                continue;
            };
            for r in 0..batch.num_rows() {
                let id = layout.id(&batch, r);
                // Not sampled, or a duplicate (the id check's business).
                if wanted(&id) && !w.seen.contains(&id) {
                    let row = layout.row(&batch, r);
                    w.arrive(layout, id, row, false);
                }
            }
        }
        if (w.source.len() + w.table.len()) * layout.row_bytes > layout.budget {
            return Ok(None);
        }
    }
    Ok(Some(w.tally))
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
    known_ids: Option<&[String]>,
) -> Result<ValueCheck, VerifyError> {
    let v = &c.validate;
    let transformer = Transformer::new(c, dim);
    let layout = Layout::new(c, dim);
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
            Some(sample_ids(source, c, n as usize, skipped, known_ids).await?)
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
                    layout.collect(&t.batch, &|_| true, &mut expected);
                }
                let filter = crate::target::id_filter(id_col, &chunk);
                let mut rows = layout.scan(&table, Some(filter)).await?;
                let mut seen = HashSet::new();
                while let Some(batch) = rows.try_next().await.map_err(read_err)? {
                    layout.compare_batch(&batch, &expected, &mut seen, &mut tally);
                }
            }
        }
        // Everything, or a large sample: one pass over both sides when the
        // table holds its rows in source order (as apply writes them), else
        // hash buckets that keep the held records within a memory budget.
        _ => {
            let wanted = |id: &str| sample.as_ref().is_none_or(|s| s.contains(id));
            match merge_pass(source, &table, &transformer, &layout, &wanted).await? {
                Some(t) => tally = t,
                None => {
                    tracing::debug!(
                        "verify `{}`: the table's row order differs from the source's; comparing in hash buckets",
                        c.table
                    );
                    let selected = sample.as_ref().map_or(expected_count, |s| s.len() as u64);
                    let buckets = ((selected as usize * layout.row_bytes).div_ceil(layout.budget))
                        .max(1) as u64;
                    for bucket in 0..buckets {
                        let in_bucket =
                            |id: &str| wanted(id) && hash64(v.seed, 1, id) % buckets == bucket;
                        let mut expected: HashMap<String, Row> = HashMap::new();
                        let mut stream = source.read(&c.source, c.batch_size as usize);
                        while let Some(b) = stream.try_next().await? {
                            if let Ok(t) = transformer.transform(b) {
                                layout.collect(&t.batch, &in_bucket, &mut expected);
                            }
                        }
                        let mut rows = layout.scan(&table, None).await?;
                        let mut seen: HashSet<String> = HashSet::new();
                        while let Some(batch) = rows.try_next().await.map_err(read_err)? {
                            layout.compare_batch(&batch, &expected, &mut seen, &mut tally);
                        }
                    }
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
