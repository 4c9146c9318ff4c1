//! Search quality (`validate.search`): does LanceDB find what an exact
//! search finds?
//!
//! A seeded sample of the table's own records is used as queries (their
//! vectors read from the table by id: the validate step runs after the
//! count, id and value checks, so they are the source's vectors). For each
//! query the exact `k` nearest rows are found by brute force over every row
//! of the table, in the source collection's distance space as Chroma
//! defines it (`l2`: squared euclidean, `cosine`: 1 − cos, `ip`: 1 − dot),
//! and compared with what LanceDB's vector search returns through its index
//! with the plan's query settings (`nprobes`, `refine_factor`) and the
//! index's metric. Recall@k per query is |LanceDB ∩ exact| / k (k, or the
//! table's rows if fewer); the report gives its mean, its worst decile (the
//! mean of the lowest tenth of the per-query recalls, at least one query),
//! and how often LanceDB's first answer is the query itself. A Chroma
//! server is asked the same queries through its own query endpoint, so its
//! recall is shown beside LanceDB's.
//!
//! The brute force streams the table once, holding one batch being
//! searched and the next being read, plus a bounded max-heap of `k`
//! candidates per query: memory is O(queries × k) and two batches, never
//! the table. Each batch is searched on a blocking thread, its queries
//! split over the machine's cores (`std::thread::scope`), while the next
//! batch is read. Cost: queries × rows × dimension multiply-adds (100
//! queries over 1M × 1536 vectors: about 1.5·10^11, tens of seconds on two
//! cores).
//!
//! Below `min_recall`, the cause is looked for: an index metric other than
//! the source's space (no query setting repairs that), else the query
//! settings are tried on the same queries in ascending cost (`nprobes` 20,
//! 50, 100, 200, each with `refine_factor` none, 5, 10, 20) until one
//! reaches it, and the failure names it, or says that none did and which
//! index parameters to rebuild with.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{Array, FixedSizeListArray, RecordBatch};
use futures::{StreamExt, TryStreamExt};
use lancedb::DistanceType;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use serde::Serialize;

use super::VerifyError;
use crate::plan::{Collection, DistanceSpace, Index, Metric, SearchCheck};
use crate::source::Source;
use crate::target::LanceTarget;

/// LanceDB searches run at once.
const ANN_IN_FLIGHT: usize = 4;
/// Ids per lookup of the query vectors (one `IN (…)` filter each).
const LOOKUP_CHUNK: usize = 1000;
/// The salt of the query sample's seeded hash (the values check uses 0 for
/// its sample and 1 for its buckets), so the queries are not the records
/// the values check compares.
const SALT: u64 = 2;
/// Query settings tried when `min_recall` is not reached, in this order
/// (the scan of more partitions costs most, so `nprobes` leads).
const TRY_NPROBES: [u32; 4] = [20, 50, 100, 200];
const TRY_REFINE: [Option<u32>; 4] = [None, Some(5), Some(10), Some(20)];

/// What `validate.search` found for one table.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    /// Queries searched (fewer than asked when the table has fewer rows).
    pub queries: usize,
    pub k: usize,
    /// The source's distance space, in which the exact neighbours are found.
    pub space: String,
    /// The table's vector index on the vector column (LanceDB's name, e.g.
    /// `IVF_PQ`); `None`: LanceDB searched by brute force.
    pub index: Option<String>,
    /// The metric LanceDB was queried with (the index's, from the plan).
    pub metric: String,
    /// Index, metric and query settings, as one phrase.
    pub settings: String,
    /// Mean recall@k over the queries.
    pub recall_mean: f64,
    /// Mean recall@k of the worst tenth of the queries (at least one).
    pub recall_worst_decile: f64,
    /// Share of queries whose first LanceDB answer is the query itself.
    pub top1_self: f64,
    /// LanceDB's answers a second, at the plan's query settings, with
    /// several queries in flight (a timing: in the JSON report only, not
    /// in the rendered line).
    pub lance_queries_per_second: f64,
    /// Chroma's own mean recall@k on the same queries (a server source).
    pub chroma_recall: Option<f64>,
    /// Why Chroma was not compared, when it was asked but could not be.
    pub chroma_note: Option<String>,
    pub min_recall: Option<f64>,
    /// Below `min_recall`: what would reach it.
    pub suggestion: Option<String>,
    /// Below `min_recall`: the breach, as validation reports it.
    pub breach: Option<String>,
    /// The records used as queries, in the order searched.
    pub query_ids: Vec<String>,
}

impl SearchReport {
    pub fn ok(&self) -> bool {
        self.breach.is_none()
    }

    /// One line, e.g. `search: recall@10 LanceDB 0.962 (worst decile
    /// 0.810), Chroma 0.978; top-1 is the query itself for 99.5 % of 200
    /// queries (IVF_PQ index, metric cosine, nprobes 20, refine_factor none)`.
    pub fn render(&self) -> String {
        if self.queries == 0 {
            return "search: no rows to search".into();
        }
        let chroma = match (self.chroma_recall, &self.chroma_note) {
            (Some(r), _) => format!(", Chroma {r:.3}"),
            (None, Some(note)) => format!(" (Chroma not compared: {note})"),
            (None, None) => String::new(),
        };
        format!(
            "search: recall@{} LanceDB {:.3} (worst decile {:.3}){chroma}; top-1 is the query itself for {:.1} % of {} queries ({})",
            self.k,
            self.recall_mean,
            self.recall_worst_decile,
            self.top1_self * 100.0,
            self.queries,
            self.settings
        )
    }
}

/// `validate.search` for a collection, if its plan asks for it: the
/// source's distance space is looked up, then [`search_quality`].
pub async fn for_collection(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
) -> Result<Option<SearchReport>, VerifyError> {
    let Some(check) = c.validate.search else {
        return Ok(None);
    };
    let space = source.collection(&c.source).await?.space;
    search_quality(source, target, c, space, &check)
        .await
        .map(Some)
}

/// LanceDB's query settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Setting {
    nprobes: Option<u32>,
    refine_factor: Option<u32>,
}

impl Setting {
    fn describe(&self) -> String {
        format!(
            "nprobes {}, refine_factor {}",
            self.nprobes
                .map_or_else(|| "LanceDB's default".to_string(), |n| n.to_string()),
            self.refine_factor
                .map_or_else(|| "none".to_string(), |r| r.to_string())
        )
    }

    /// As it is written in `validate.search`.
    fn as_plan(&self) -> String {
        let mut keys = Vec::new();
        if let Some(n) = self.nprobes {
            keys.push(format!("nprobes: {n}"));
        }
        if let Some(r) = self.refine_factor {
            keys.push(format!("refine_factor: {r}"));
        }
        keys.join(", ")
    }

    /// Whether `self` searches no more than `other` in both respects (so
    /// trying it cannot do better). An unset `nprobes` is LanceDB's
    /// adaptive default, which bounds nothing.
    fn within(&self, other: &Setting) -> bool {
        other
            .nprobes
            .is_some_and(|o| self.nprobes.is_some_and(|n| n <= o))
            && self.refine_factor.unwrap_or(0) <= other.refine_factor.unwrap_or(0)
    }
}

/// One query: a record of the table and its vector.
struct QueryVec {
    id: String,
    vector: Vec<f32>,
    /// Euclidean norm (for `cosine`).
    norm: f64,
}

/// A candidate neighbour: ordered by distance, then id, so ties are
/// broken the same way on every run (and by the Python cross-check).
#[derive(Debug, Clone)]
struct Cand {
    d: f64,
    id: String,
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Cand {}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.d
            .total_cmp(&other.d)
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What the brute force needs, owned (it runs on blocking threads).
struct Scan {
    table: String,
    id_col: String,
    vec_col: String,
    space: DistanceSpace,
    k: usize,
}

/// Recall statistics of a set of answers against the exact neighbours.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Recall {
    mean: f64,
    worst_decile: f64,
    top1_self: f64,
}

/// The first `k` ids other than `query`.
fn others_than<'a>(v: &'a [String], query: &str, k: usize) -> HashSet<&'a str> {
    v.iter()
        .map(String::as_str)
        .filter(|id| *id != query)
        .take(k)
        .collect()
}

/// Compares answers (nearest first) with the exact neighbours of each query.
fn recall(query_ids: &[&str], exact: &[Vec<String>], got: &[Vec<String>], k: usize) -> Recall {
    let n = query_ids.len();
    if n == 0 {
        return Recall {
            mean: 1.0,
            worst_decile: 1.0,
            top1_self: 1.0,
        };
    }
    let mut per: Vec<f64> = Vec::with_capacity(n);
    let mut self_first = 0usize;
    for (i, qid) in query_ids.iter().enumerate() {
        // The query is a row of the table: both sides find it, and
        // counting it would add up to 1/k to every recall. Both are asked
        // for k + 1 and the query's own id is left out of each.
        let truth = others_than(&exact[i], qid, k);
        let answers = got
            .get(i)
            .map(|g| others_than(g, qid, k))
            .unwrap_or_default();
        per.push(if truth.is_empty() {
            1.0
        } else {
            truth.intersection(&answers).count() as f64 / truth.len() as f64
        });
        if got.get(i).and_then(|g| g.first()).map(String::as_str) == Some(*qid) {
            self_first += 1;
        }
    }
    let mean = per.iter().sum::<f64>() / n as f64;
    per.sort_by(|a, b| a.total_cmp(b));
    let tenth = n.div_ceil(10).max(1);
    let worst_decile = per[..tenth].iter().sum::<f64>() / tenth as f64;
    Recall {
        mean,
        worst_decile,
        top1_self: self_first as f64 / n as f64,
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, a), b) in acc.iter_mut().zip(x).zip(y) {
            *s += f64::from(*a) * f64::from(*b);
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += f64::from(*x) * f64::from(*y);
    }
    s
}

fn squared_l2(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, a), b) in acc.iter_mut().zip(x).zip(y) {
            let d = f64::from(*a) - f64::from(*b);
            *s += d * d;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        let d = f64::from(*x) - f64::from(*y);
        s += d * d;
    }
    s
}

/// Chroma's distance of a space: `l2` squared euclidean, `cosine` 1 − cos
/// (1 when either vector is zero), `ip` 1 − dot. `qn`, `rn`: the norms
/// (used by `cosine` only).
fn distance(space: DistanceSpace, q: &[f32], qn: f64, r: &[f32], rn: f64) -> f64 {
    match space {
        DistanceSpace::L2 => squared_l2(q, r),
        DistanceSpace::Ip => 1.0 - dot(q, r),
        DistanceSpace::Cosine => {
            if qn == 0.0 || rn == 0.0 {
                1.0
            } else {
                1.0 - dot(q, r) / (qn * rn)
            }
        }
    }
}

/// Offers a row to a query's heap of its `k` nearest so far (a max-heap:
/// the farthest on top). The id is copied only when the row gets in.
fn offer(heap: &mut BinaryHeap<Cand>, k: usize, d: f64, id: &str) {
    if heap.len() < k {
        heap.push(Cand {
            d,
            id: id.to_string(),
        });
        return;
    }
    let Some(mut top) = heap.peek_mut() else {
        return; // k = 0: nothing is kept
    };
    let closer = match d.total_cmp(&top.d) {
        Ordering::Less => true,
        Ordering::Equal => id < top.id.as_str(),
        Ordering::Greater => false,
    };
    if closer {
        *top = Cand {
            d,
            id: id.to_string(),
        };
    }
}

/// The vector column of a batch, as one flat slice.
struct Vectors<'a> {
    list: &'a FixedSizeListArray,
    flat: &'a [f32],
    dim: usize,
}

impl Vectors<'_> {
    fn row(&self, r: usize) -> Option<&[f32]> {
        if self.list.is_null(r) {
            return None;
        }
        self.flat.get(r * self.dim..(r + 1) * self.dim)
    }
}

fn vectors<'a>(table: &str, column: &str, a: &'a dyn Array) -> Result<Vectors<'a>, VerifyError> {
    let bad = || VerifyError::Schema {
        table: table.to_string(),
        column: column.to_string(),
        expected: "FixedSizeList<Float32>".into(),
        found: a.data_type().to_string(),
    };
    let list = a.as_fixed_size_list_opt().ok_or_else(bad)?;
    let flat: &[f32] = list
        .values()
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(bad)?
        .values();
    Ok(Vectors {
        list,
        flat,
        dim: list.value_length().max(0) as usize,
    })
}

/// The string values of a named column of a batch.
fn id_values<'a>(
    target: Option<&LanceTarget>,
    table: &str,
    batch: &'a RecordBatch,
    column: &str,
) -> Result<Vec<Option<&'a str>>, VerifyError> {
    let col = batch
        .column_by_name(column)
        .ok_or_else(|| missing_column(table, column))?;
    crate::target::string_values(col.as_ref()).ok_or_else(|| match target {
        Some(t) => VerifyError::Target(Box::new(t.not_string(table, column, col.data_type()))),
        None => VerifyError::Schema {
            table: table.to_string(),
            column: column.to_string(),
            expected: "Utf8".into(),
            found: col.data_type().to_string(),
        },
    })
}

fn missing_column(table: &str, column: &str) -> VerifyError {
    VerifyError::Read {
        table: table.to_string(),
        source: lancedb::Error::Runtime {
            message: format!("the answer has no column `{column}`"),
        },
    }
}

/// Searches one batch for every query, the queries split over the cores.
fn scan_batch(
    scan: &Scan,
    queries: &[QueryVec],
    heaps: &mut [BinaryHeap<Cand>],
    batch: &RecordBatch,
) -> Result<(), VerifyError> {
    let ids = id_values(None, &scan.table, batch, &scan.id_col)?;
    let col = batch
        .column_by_name(&scan.vec_col)
        .ok_or_else(|| missing_column(&scan.table, &scan.vec_col))?;
    let v = vectors(&scan.table, &scan.vec_col, col.as_ref())?;
    if queries.is_empty() || batch.num_rows() == 0 {
        return Ok(());
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, queries.len());
    let per = queries.len().div_ceil(threads);
    let (ids, v) = (&ids, &v);
    std::thread::scope(|s| {
        let mut parts = queries.chunks(per).zip(heaps.chunks_mut(per));
        let first = parts.next();
        for (qs, hs) in parts {
            s.spawn(move || nearest(scan, qs, hs, ids, v));
        }
        if let Some((qs, hs)) = first {
            nearest(scan, qs, hs, ids, v);
        }
    });
    Ok(())
}

/// Rows outside, queries inside: a row is read from memory once per
/// thread, whatever the number of queries.
fn nearest(
    scan: &Scan,
    queries: &[QueryVec],
    heaps: &mut [BinaryHeap<Cand>],
    ids: &[Option<&str>],
    v: &Vectors<'_>,
) {
    for (r, id) in ids.iter().enumerate() {
        let (Some(id), Some(row)) = (id, v.row(r)) else {
            continue;
        };
        let rn = if scan.space == DistanceSpace::Cosine {
            dot(row, row).sqrt()
        } else {
            0.0
        };
        for (q, heap) in queries.iter().zip(heaps.iter_mut()) {
            if q.vector.len() != row.len() {
                continue;
            }
            offer(
                heap,
                scan.k,
                distance(scan.space, &q.vector, q.norm, row, rn),
                id,
            );
        }
    }
}

/// The exact `k` nearest rows of every query (nearest first), and the rows
/// of the table. One pass: each batch is searched on a blocking thread
/// while the next is read.
async fn exact_top_k(
    table: &lancedb::Table,
    scan: Arc<Scan>,
    queries: Arc<Vec<QueryVec>>,
) -> Result<(Vec<Vec<String>>, u64), VerifyError> {
    let read_err = |source| VerifyError::Read {
        table: scan.table.clone(),
        source,
    };
    let mut stream = table
        .query()
        .select(Select::columns(&[
            scan.id_col.as_str(),
            scan.vec_col.as_str(),
        ]))
        .execute()
        .await
        .map_err(read_err)?;
    let mut heaps: Vec<BinaryHeap<Cand>> = (0..queries.len())
        .map(|_| BinaryHeap::with_capacity(scan.k + 1))
        .collect();
    let mut rows = 0u64;
    let mut next = stream.try_next().await.map_err(read_err)?;
    while let Some(batch) = next {
        rows += batch.num_rows() as u64;
        let (s, q) = (scan.clone(), queries.clone());
        let work = tokio::task::spawn_blocking(move || {
            let mut heaps = heaps;
            scan_batch(&s, &q, &mut heaps, &batch).map(|()| heaps)
        });
        let (done, following) = tokio::join!(work, stream.try_next());
        heaps = done.map_err(|e| VerifyError::Read {
            table: scan.table.clone(),
            source: lancedb::Error::Runtime {
                message: format!("the exact search stopped: {e}"),
            },
        })??;
        next = following.map_err(read_err)?;
    }
    let exact = heaps
        .into_iter()
        .map(|h| h.into_sorted_vec().into_iter().map(|c| c.id).collect())
        .collect();
    Ok((exact, rows))
}

/// LanceDB's answer to one query: ids, nearest first.
async fn ann_one(
    table: &lancedb::Table,
    scan: &Scan,
    vector: &[f32],
    distance: DistanceType,
    s: Setting,
) -> Result<Vec<String>, VerifyError> {
    let read_err = |source| VerifyError::Read {
        table: scan.table.clone(),
        source,
    };
    let mut q = table
        .vector_search(vector)
        .map_err(read_err)?
        .column(&scan.vec_col)
        .distance_type(distance)
        .limit(scan.k)
        // `_distance` named: Lance warns once a query when it is added
        // without being asked for.
        .select(Select::columns(&[scan.id_col.as_str(), "_distance"]));
    if let Some(n) = s.nprobes {
        q = q.nprobes(n as usize).map_err(read_err)?;
    }
    if let Some(r) = s.refine_factor {
        q = q.refine_factor(r);
    }
    let batches: Vec<RecordBatch> = q
        .execute()
        .await
        .map_err(read_err)?
        .try_collect()
        .await
        .map_err(read_err)?;
    let mut found: Vec<(f32, String)> = Vec::with_capacity(scan.k);
    for b in &batches {
        let ids = id_values(None, &scan.table, b, &scan.id_col)?;
        let dist = b
            .column_by_name("_distance")
            .and_then(|d| d.as_primitive_opt::<Float32Type>().cloned());
        for (i, id) in ids.into_iter().enumerate() {
            let d = dist.as_ref().map_or(0.0, |d| d.value(i));
            found.push((d, id.unwrap_or("").to_string()));
        }
    }
    // Nearest first (the answer's rows need not come in order); a stable
    // sort keeps LanceDB's order among equal distances.
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// LanceDB's answers to every query.
async fn ann_top_k(
    table: &lancedb::Table,
    scan: &Scan,
    queries: &[QueryVec],
    distance: DistanceType,
    s: Setting,
) -> Result<Vec<Vec<String>>, VerifyError> {
    // Collected first, boxed: a stream over a borrowing closure's futures
    // is not provably `Send`, which the apply's step tasks must be.
    let searches: Vec<futures::future::BoxFuture<'_, Result<Vec<String>, VerifyError>>> = queries
        .iter()
        .map(|q| {
            Box::pin(ann_one(table, scan, &q.vector, distance, s))
                as futures::future::BoxFuture<'_, _>
        })
        .collect();
    futures::stream::iter(searches)
        .buffered(ANN_IN_FLIGHT)
        .try_collect()
        .await
}

/// The `n` ids of the table with the smallest seeded hash (the values
/// check's way of sampling, with its own salt), in hash order.
async fn sample_ids(
    target: &LanceTarget,
    table: &lancedb::Table,
    c: &Collection,
    id_col: &str,
    n: usize,
) -> Result<Vec<String>, VerifyError> {
    let read_err = |source| VerifyError::Read {
        table: c.table.clone(),
        source,
    };
    let seed = c.validate.seed;
    let hash =
        |id: &str| crate::hash::hash64(&[&seed.to_le_bytes(), &SALT.to_le_bytes(), id.as_bytes()]);
    let mut heap: BinaryHeap<(u64, String)> = BinaryHeap::with_capacity(n + 1);
    let mut batches = table
        .query()
        .select(Select::columns(&[id_col]))
        .execute()
        .await
        .map_err(read_err)?;
    while let Some(b) = batches.try_next().await.map_err(read_err)? {
        let ids = id_values(Some(target), &c.table, &b, id_col)?;
        for id in ids.into_iter().flatten() {
            let h = hash(id);
            if heap.len() < n {
                heap.push((h, id.to_string()));
            } else if heap
                .peek()
                .is_some_and(|(top, tid)| (h, id) < (*top, tid.as_str()))
            {
                heap.pop();
                heap.push((h, id.to_string()));
            }
        }
    }
    let mut picked = heap.into_vec();
    picked.sort();
    picked.dedup_by(|a, b| a.1 == b.1); // an id the table holds twice
    Ok(picked.into_iter().map(|(_, id)| id).collect())
}

/// Keeps the vectors of the wanted ids found in a batch.
fn keep_vectors(
    scan: &Scan,
    batch: &RecordBatch,
    wanted: &HashSet<&str>,
    found: &mut HashMap<String, Vec<f32>>,
) -> Result<(), VerifyError> {
    let ids = id_values(None, &scan.table, batch, &scan.id_col)?;
    let col = batch
        .column_by_name(&scan.vec_col)
        .ok_or_else(|| missing_column(&scan.table, &scan.vec_col))?;
    let v = vectors(&scan.table, &scan.vec_col, col.as_ref())?;
    for (r, id) in ids.into_iter().enumerate() {
        if let (Some(id), Some(row)) = (id, v.row(r))
            && wanted.contains(id)
            && !found.contains_key(id)
        {
            found.insert(id.to_string(), row.to_vec());
        }
    }
    Ok(())
}

/// The vectors of the sampled ids, read from the table by id (an `IN`
/// filter per chunk; one scan when the id column's name cannot be quoted).
async fn query_vectors(
    table: &lancedb::Table,
    scan: &Scan,
    ids: Vec<String>,
) -> Result<Vec<QueryVec>, VerifyError> {
    let read_err = |source| VerifyError::Read {
        table: scan.table.clone(),
        source,
    };
    let mut found: HashMap<String, Vec<f32>> = HashMap::with_capacity(ids.len());
    let columns = [scan.id_col.as_str(), scan.vec_col.as_str()];
    let chunks: Vec<Option<String>> = if scan.id_col.contains('`') {
        vec![None]
    } else {
        ids.chunks(LOOKUP_CHUNK)
            .map(|chunk| Some(crate::target::id_filter(&scan.id_col, chunk)))
            .collect()
    };
    for (i, filter) in chunks.into_iter().enumerate() {
        let wanted: HashSet<&str> = match filter {
            Some(_) => ids
                .iter()
                .skip(i * LOOKUP_CHUNK)
                .take(LOOKUP_CHUNK)
                .map(String::as_str)
                .collect(),
            None => ids.iter().map(String::as_str).collect(),
        };
        let mut q = table.query().select(Select::columns(&columns));
        if let Some(f) = filter {
            q = q.only_if(f);
        }
        let mut rows = q.execute().await.map_err(read_err)?;
        while let Some(b) = rows.try_next().await.map_err(read_err)? {
            keep_vectors(scan, &b, &wanted, &mut found)?;
        }
    }
    Ok(ids
        .into_iter()
        .filter_map(|id| {
            let vector = found.remove(&id)?;
            let norm = dot(&vector, &vector).sqrt();
            Some(QueryVec { id, vector, norm })
        })
        .collect())
}

fn space_name(s: DistanceSpace) -> &'static str {
    match s {
        DistanceSpace::L2 => "l2",
        DistanceSpace::Cosine => "cosine",
        DistanceSpace::Ip => "ip",
    }
}

/// The distance LanceDB uses for a metric over a source space, and its
/// name: the mapping of `LanceTarget::create_index`.
fn lance_metric(m: Metric, space: DistanceSpace) -> (DistanceType, &'static str) {
    match (m, space) {
        (Metric::Auto, DistanceSpace::L2) | (Metric::L2, _) => (DistanceType::L2, "l2"),
        (Metric::Auto, DistanceSpace::Cosine) | (Metric::Cosine, _) => {
            (DistanceType::Cosine, "cosine")
        }
        (Metric::Auto, DistanceSpace::Ip) | (Metric::Dot, _) => (DistanceType::Dot, "dot"),
    }
}

/// A query setting tried, and the recall it reached.
type Tried = Option<(Setting, f64)>;

/// The first query setting (in ascending cost) that reaches `min`, and the
/// best one tried.
async fn tune(
    table: &lancedb::Table,
    scan: &Scan,
    queries: &[QueryVec],
    exact: &[Vec<String>],
    distance: DistanceType,
    planned: Setting,
    min: f64,
) -> Result<(Tried, Tried), VerifyError> {
    let qids: Vec<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    let mut best: Tried = None;
    for n in TRY_NPROBES {
        for r in TRY_REFINE {
            let s = Setting {
                nprobes: Some(n),
                refine_factor: r,
            };
            if s == planned || s.within(&planned) {
                continue;
            }
            let got = ann_top_k(table, scan, queries, distance, s).await?;
            let m = recall(&qids, exact, &got, scan.k - 1).mean;
            if best.is_none_or(|(_, b)| m > b) {
                best = Some((s, m));
            }
            if m >= min {
                return Ok((Some((s, m)), best));
            }
        }
    }
    Ok((None, best))
}

/// Search quality of `c`'s table: see the module documentation. `space`
/// is the source collection's distance space; `check` the plan's
/// `validate.search`.
pub async fn search_quality(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    space: DistanceSpace,
    check: &SearchCheck,
) -> Result<SearchReport, VerifyError> {
    let k = (check.k as usize).max(1);
    let vec_col = c.vector_column().name.clone();
    let id_col = c
        .id_column()
        .expect("a checked plan has an id column")
        .name
        .clone();
    let index: Option<&Index> = c
        .indexes
        .iter()
        .find(|i| i.kind.is_vector() && i.column == vec_col);
    let metric = index.map_or(Metric::Auto, |i| i.metric);
    let (mut distance, mut metric_name) = lance_metric(metric, space);
    // An index answers only queries in its own metric (another falls back
    // to brute force, silently): query with the metric it was built with,
    // which may not be the plan's (changed since, or built elsewhere).
    if let Some(built) = target.index_distance(&c.table, &vec_col).await? {
        distance = built;
        metric_name = match built {
            DistanceType::L2 => "l2",
            DistanceType::Cosine => "cosine",
            DistanceType::Dot => "dot",
            _ => "hamming",
        };
    }
    let (_, space_metric) = lance_metric(Metric::Auto, space);
    let planned = Setting {
        nprobes: check.nprobes,
        refine_factor: check.refine_factor,
    };
    let built = target.index_kind(&c.table, &vec_col).await?;
    let settings = match &built {
        Some(kind) => format!("{kind} index, metric {metric_name}, {}", planned.describe()),
        None => format!("no vector index: brute force, metric {metric_name}"),
    };
    let mut report = SearchReport {
        queries: 0,
        k,
        space: space_name(space).into(),
        index: built.clone(),
        metric: metric_name.into(),
        settings,
        recall_mean: 1.0,
        recall_worst_decile: 1.0,
        top1_self: 1.0,
        lance_queries_per_second: 0.0,
        chroma_recall: None,
        chroma_note: None,
        min_recall: check.min_recall,
        suggestion: None,
        breach: None,
        query_ids: Vec::new(),
    };
    let Some(table) = target.open(&c.table).await? else {
        return Ok(report);
    };
    // k + 1: each query finds itself, which recall leaves out.
    let scan = Arc::new(Scan {
        table: c.table.clone(),
        id_col,
        vec_col,
        space,
        k: k + 1,
    });

    let ids = sample_ids(target, &table, c, &scan.id_col, check.queries as usize).await?;
    let queries = Arc::new(query_vectors(&table, &scan, ids).await?);
    if queries.is_empty() {
        return Ok(report);
    }
    let qids: Vec<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    let (exact, rows) = exact_top_k(&table, scan.clone(), queries.clone()).await?;
    let started = std::time::Instant::now();
    let got = ann_top_k(&table, &scan, &queries, distance, planned).await?;
    report.lance_queries_per_second =
        queries.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let lance = recall(&qids, &exact, &got, k);

    // Chroma's own answers, from a server; compared only when the table
    // holds exactly the collection's records (else the exact neighbours
    // over the table are not the collection's).
    let vectors: Vec<Vec<f32>> = queries.iter().map(|q| q.vector.clone()).collect();
    match source.query_ids(&c.source, &vectors, k + 1).await {
        Ok(None) => {}
        Ok(Some(answers)) => {
            let count = source.collection(&c.source).await?.count;
            if count == rows {
                report.chroma_recall = Some(recall(&qids, &exact, &answers, k).mean);
            } else {
                report.chroma_note = Some(format!(
                    "the table holds {rows} rows and the collection {count} records"
                ));
            }
        }
        Err(e) => {
            let text = e.to_string();
            report.chroma_note = Some(format!(
                "its query failed: {}",
                text.lines().next().unwrap_or_default()
            ));
        }
    }

    report.queries = queries.len();
    report.recall_mean = lance.mean;
    report.recall_worst_decile = lance.worst_decile;
    report.top1_self = lance.top1_self;
    report.query_ids = queries.iter().map(|q| q.id.clone()).collect();

    if let Some(min) = check.min_recall
        && lance.mean < min
    {
        let suggestion = if metric_name != space_metric {
            let kind = index.map_or_else(|| "vector".to_string(), |i| i.kind.to_string());
            format!(
                "the `{kind}` index on `{}` uses metric `{metric_name}`, but the collection's vectors live in `{}` space, so LanceDB ranks them differently than Chroma (lint VX102) and no query setting can repair that: set `metric: auto` (or `{space_metric}`) on that index (`indexes[].metric`) and apply again",
                scan.vec_col,
                space_name(space)
            )
        } else if built.is_none() {
            "LanceDB searched without a vector index, so its answers are exact: the misses are rows at equal distances (duplicate vectors) ranked differently; lower `min_recall`, or remove the duplicates".to_string()
        } else {
            match tune(&table, &scan, &queries, &exact, distance, planned, min).await? {
                (Some((s, m)), _) => format!(
                    "on the same queries LanceDB reaches {m:.3} with `{}`: query with these settings in the application, and write them in `validate.search`",
                    s.as_plan()
                ),
                (None, best) => format!(
                    "no query setting tried (`nprobes` up to {}, `refine_factor` up to {}) reaches it{}: rebuild the index with finer codes or other partitions (`indexes[].num_sub_vectors`, `indexes[].num_partitions`), or use `type: ivf_sq` (8-bit codes, the default) or `ivf_flat` (vectors not compressed)",
                    TRY_NPROBES[TRY_NPROBES.len() - 1],
                    TRY_REFINE[TRY_REFINE.len() - 1].unwrap_or(0),
                    best.map(|(s, m)| format!(" (the best, {m:.3}, with `{}`)", s.as_plan()))
                        .unwrap_or_default()
                ),
            }
        };
        report.breach = Some(format!(
            "search: recall@{k} {:.3} is below min_recall {min} ({}): {suggestion}",
            lance.mean, report.settings
        ));
        report.suggestion = Some(suggestion);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_heap_keeps_the_k_nearest_ties_broken_by_id() {
        let mut h = BinaryHeap::new();
        for (d, id) in [(3.0, "c"), (1.0, "z"), (2.0, "b"), (1.0, "a"), (0.5, "q")] {
            offer(&mut h, 3, d, id);
        }
        let kept: Vec<String> = h.into_sorted_vec().into_iter().map(|c| c.id).collect();
        assert_eq!(kept, ids(&["q", "a", "z"]));
    }

    #[test]
    fn distances_are_chromas() {
        let (a, b) = ([1.0f32, 0.0, 0.0, 0.0, 2.0], [0.0f32, 1.0, 0.0, 0.0, 2.0]);
        let (na, nb) = (dot(&a, &a).sqrt(), dot(&b, &b).sqrt());
        assert_eq!(distance(DistanceSpace::L2, &a, na, &b, nb), 2.0);
        assert_eq!(distance(DistanceSpace::Ip, &a, na, &b, nb), 1.0 - 4.0);
        assert!(
            (distance(DistanceSpace::Cosine, &a, na, &b, nb) - (1.0 - 4.0 / 5.0)).abs() < 1e-12
        );
        let zero = [0.0f32; 5];
        assert_eq!(distance(DistanceSpace::Cosine, &zero, 0.0, &b, nb), 1.0);
    }

    #[test]
    fn recall_mean_worst_decile_and_self_first() {
        let q: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
        let qids: Vec<&str> = q.iter().map(String::as_str).collect();
        let exact: Vec<Vec<String>> = q.iter().map(|id| vec![id.clone(), "x".into()]).collect();
        let mut got = exact.clone();
        got[0] = ids(&["y", "q0"]); // itself found, not first; `x` missed
        got[1] = ids(&["y", "z"]); // none found
        got[2] = ids(&["q2", "w"]); // only itself: no credit for it
        // k = 1: the nearest other than the query itself.
        let r = recall(&qids, &exact, &got, 1);
        assert!((r.mean - 7.0 / 10.0).abs() < 1e-12, "{}", r.mean);
        assert_eq!(r.worst_decile, 0.0); // the lowest tenth: one query
        assert!((r.top1_self - 0.8).abs() < 1e-12);
    }

    #[test]
    fn settings_within_the_planned_ones_are_not_tried() {
        let planned = Setting {
            nprobes: Some(50),
            refine_factor: Some(5),
        };
        let s = |n, r| Setting {
            nprobes: Some(n),
            refine_factor: r,
        };
        assert!(s(20, None).within(&planned));
        assert!(s(50, Some(5)).within(&planned));
        assert!(!s(20, Some(10)).within(&planned));
        assert!(!s(100, None).within(&planned));
        let default = Setting {
            nprobes: None,
            refine_factor: None,
        };
        assert!(!s(20, None).within(&default));
    }
}
