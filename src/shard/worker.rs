//! `apply PLAN --shard K/N --run RUN`: one worker. For every collection it
//! reads the source in its usual order, skips to the shard's first
//! position, checks the ids at the shard's edges against the run, keeps
//! the records of its range, transforms them exactly as the copy step does
//! (`on_error` included), and writes Lance data files without committing
//! them. Then it records the fragments in a new attempt of its own.
//!
//! A worker reads the source up to the end of its range: the last shard
//! reads all of it. That is the cost of reading by position through
//! `Source::read`, the same for every source; ranged reads are what would
//! cut it (docs/scale-out.md).

use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use chrono::Utc;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use lance::dataset::transaction::Operation;
use lance::dataset::{InsertBuilder, WriteMode, WriteParams};
use lance::deps::datafusion::error::DataFusionError;
use lance::deps::datafusion::physical_plan::SendableRecordBatchStream;
use lance::deps::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use serde::Serialize;
use tokio::sync::mpsc;

use super::manifest::{Attempt, AttemptTable, CollectionRun, FORMAT, RunStore, ShardRange};
use super::{At, ShardError};
use crate::engine::CopyProgress;
use crate::plan::{Collection, Plan};
use crate::source::{SourceBatch, SourceError};
use crate::transform::{Transformed, Transformer};

/// What one worker wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    pub run: String,
    pub shard: u32,
    pub shards: u32,
    pub attempt: String,
    /// Where the attempt is recorded.
    pub recorded: String,
    pub tables: Vec<ShardTable>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardTable {
    pub table: String,
    pub start: u64,
    pub end: u64,
    pub rows: u64,
    pub skipped: u64,
    pub fragments: usize,
}

/// Runs shard `k` of `n` of run `run`.
pub async fn shard(
    plan: &Plan,
    run: &str,
    k: u32,
    n: u32,
    progress: Arc<dyn CopyProgress>,
) -> Result<ShardReport, ShardError> {
    super::check_run_name(run)?;
    let step = format!("shard {k}/{n}");
    super::check_modes(plan, run, &step)?;
    let store = RunStore::open(&plan.target, run).await?;
    let manifest = store.prepared(&step).await?;
    if manifest.shards != n {
        return Err(ShardError::WrongShards {
            run: run.to_string(),
            shard: k,
            given: n,
            prepared: manifest.shards,
        });
    }
    if k >= n {
        return Err(ShardError::NoSuchShard {
            run: run.to_string(),
            shard: k,
            shards: n,
        });
    }
    let fingerprint = plan.fingerprint();
    if manifest.fingerprint != fingerprint {
        return Err(ShardError::PlanChanged {
            run: run.to_string(),
            at: step,
            prepared: manifest.fingerprint,
            now: fingerprint,
        });
    }
    let here = At::new(run, step.clone());
    let source = crate::source::open(&plan.source).map_err(|e| here.source(e))?;
    let started_at = Utc::now();
    let mut tables = Vec::with_capacity(plan.collections.len());
    let mut committed = Vec::new();
    for c in &plan.collections {
        let at = At::new(run, format!("{step}, table `{}`", c.table));
        let m = manifest.collection(&c.table).ok_or_else(|| {
            at.internal("the run manifest has no such table, though the plan's fingerprint matches")
        })?;
        let range = m
            .range(k)
            .ok_or_else(|| at.internal("the run manifest has no range for this shard"))?;
        // A shard of a committed run would never be used.
        let latest = super::open_dataset(&plan.target, &c.table, None)
            .await
            .map_err(at.lance(
                "opening the table",
                "the table is created by --prepare; check `target.lancedb.uri`, its credentials, and that nobody dropped it",
            ))?;
        if let Some(version) = super::committed_at(&latest, m.start_version, run)
            .await
            .map_err(at.lance("reading the table's transactions", "retry"))?
        {
            // Committed already: this shard need not (and must not) write
            // it again; refused only if every table of the run is.
            committed.push((at, version));
            continue;
        }
        drop(latest);
        let info = source
            .collection(&c.source)
            .await
            .map_err(|e| at.source(e))?;
        if info.count != m.count {
            return Err(at.changed(format!(
                "collection `{}` has {} records, the run was cut from {}",
                c.source, info.count, m.count
            )));
        }
        tables.push(
            write_range(
                plan,
                c,
                m,
                range,
                k,
                &at,
                source.as_ref(),
                progress.as_ref(),
            )
            .await?,
        );
    }
    if tables.is_empty()
        && let Some((at, version)) = committed.into_iter().next()
    {
        return Err(ShardError::Committed {
            run: run.to_string(),
            at: at.at.clone(),
            version,
        });
    }
    let mut attempt = Attempt {
        format: FORMAT,
        run: run.to_string(),
        shard: k,
        shards: n,
        attempt: String::new(),
        host: crate::state::hostname(),
        pid: std::process::id(),
        started_at,
        finished_at: Utc::now(),
        tables,
    };
    let recorded = store.put_attempt(&mut attempt, &step).await?;
    progress.message(&format!(
        "shard {k}/{n} of run `{run}` reported: {recorded}"
    ));
    Ok(ShardReport {
        run: run.to_string(),
        shard: k,
        shards: n,
        attempt: attempt.attempt.clone(),
        recorded,
        tables: attempt
            .tables
            .iter()
            .map(|t| ShardTable {
                table: t.table.clone(),
                start: t.start,
                end: t.end,
                rows: t.rows,
                skipped: t.skipped,
                fragments: t.fragments.len(),
            })
            .collect(),
    })
}

/// Reads, transforms and writes (uncommitted) one collection's range.
#[allow(clippy::too_many_arguments)]
async fn write_range(
    plan: &Plan,
    c: &Collection,
    m: &CollectionRun,
    range: &ShardRange,
    k: u32,
    at: &At,
    source: &dyn crate::source::Source,
    progress: &dyn CopyProgress,
) -> Result<AttemptTable, ShardError> {
    let table = c.table.as_str();
    let started = Instant::now();
    let transformer = Transformer::new(c, m.dim as usize);
    let schema = transformer.schema();
    progress.message(&format!(
        "shard {k}: `{table}`: records [{}, {}) of {} (reading the source from its start)",
        range.start, range.end, m.count
    ));
    let mut batches = spawn_reader(
        source.read(&c.source, c.batch_size.max(1) as usize),
        range.clone(),
        Arc::new(transformer),
        at.clone(),
    );
    let (mut rows, mut skipped) = (0u64, 0u64);
    // The first batch with rows; none at all: nothing to write.
    let first = loop {
        match batches.recv().await {
            None => break None,
            Some(Err(e)) => return Err(e),
            Some(Ok(t)) => {
                skipped += t.skipped.len() as u64;
                if t.batch.num_rows() > 0 {
                    break Some(t.batch);
                }
            }
        }
    };
    let fragments = match first {
        None => Vec::new(),
        Some(first) => {
            let dataset = super::open_dataset(&plan.target, table, Some(m.start_version))
                .await
                .map_err(at.lance(
                    format!("opening version {} of the table", m.start_version),
                    "the version --prepare recorded must stay: do not clean up old versions of a table while a run is unfinished",
                ))?;
            let (tx, rx) = mpsc::channel::<RecordBatch>(2);
            let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
                schema.clone(),
                tokio_stream::wrappers::ReceiverStream::new(rx)
                    .map(Ok::<RecordBatch, DataFusionError>),
            ));
            let dataset = Arc::new(dataset);
            // Lance encodes and writes while the next batches are read.
            let writer = tokio::spawn(async move {
                let params = WriteParams {
                    mode: WriteMode::Append,
                    ..Default::default()
                };
                InsertBuilder::new(dataset)
                    .with_params(&params)
                    .execute_uncommitted_stream(stream)
                    .await
            });
            let mut failure = None;
            let mut batch = Some(first);
            loop {
                if let Some(b) = batch.take()
                    && b.num_rows() > 0
                {
                    let n = b.num_rows() as u64;
                    if tx.send(b).await.is_err() {
                        break; // the writer stopped; its error is reported below
                    }
                    rows += n;
                    crate::failpoint::hit_rows("shard", &k.to_string(), rows);
                }
                match batches.recv().await {
                    None => break,
                    Some(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                    Some(Ok(t)) => {
                        skipped += t.skipped.len() as u64;
                        batch = Some(t.batch);
                    }
                }
            }
            if let Some(e) = failure {
                // Nothing is recorded, so what was written stays unreferenced.
                writer.abort();
                return Err(e);
            }
            drop(tx);
            let transaction = writer
                .await
                .map_err(|e| at.internal(format!("the Lance writer stopped: {e}")))?
                .map_err(at.lance(
                    "writing the shard's data files",
                    format!(
                        "nothing was recorded for this shard; run the same `--shard {k}/N --run {}` again (files of the failed attempt stay unreferenced; docs/scale-out.md says how they are removed)",
                        at.run
                    ),
                ))?;
            match transaction.operation {
                Operation::Append { fragments } => fragments,
                other => {
                    return Err(at.internal(format!(
                        "Lance prepared a `{}` transaction, not an append",
                        other.name()
                    )));
                }
            }
        }
    };
    // Every record of the range is a row or a skipped record.
    let written: u64 = fragments
        .iter()
        .map(|f| f.physical_rows.unwrap_or(0) as u64)
        .sum();
    if written != rows || rows + skipped != range.end - range.start {
        return Err(at.internal(format!(
            "the range [{}, {}) gave {rows} rows and {skipped} skipped records, and Lance wrote {written} rows",
            range.start, range.end
        )));
    }
    let secs = started.elapsed().as_secs_f64();
    progress.message(&format!(
        "shard {k}: `{table}`: {rows} rows written as {} uncommitted fragment(s) in {secs:.1}s ({:.0} rows/s){}",
        fragments.len(),
        rows as f64 / secs.max(1e-9),
        if skipped > 0 {
            format!("; {skipped} records left out by `on_error: skip`")
        } else {
            String::new()
        }
    ));
    Ok(AttemptTable {
        table: table.to_string(),
        start: range.start,
        end: range.end,
        rows,
        skipped,
        fragments,
    })
}

/// Reads the source from its start, keeps the records of `range`, checks
/// the ids at its edges, and transforms what it keeps (a blocking thread a
/// batch, two batches ahead of the writer). Ends at the range's end, at
/// the first error (sent as the last item), or when the receiver is gone.
fn spawn_reader(
    mut stream: BoxStream<'static, Result<SourceBatch, SourceError>>,
    range: ShardRange,
    transformer: Arc<Transformer>,
    at: At,
) -> mpsc::Receiver<Result<Transformed, ShardError>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let result: Result<(), ShardError> = async {
            let mut pos = 0u64;
            loop {
                let Some(b) = stream.try_next().await.map_err(|e| at.source(e))? else {
                    break;
                };
                let (lo_b, hi_b) = (pos, pos + b.len() as u64);
                pos = hi_b;
                for (want, p) in [(&range.first_id, range.start), (&range.end_id, range.end)] {
                    if let Some(id) = want
                        && p >= lo_b
                        && p < hi_b
                        && b.ids[(p - lo_b) as usize] != *id
                    {
                        return Err(at.changed(format!(
                            "record {p} is `{}`, where the run was cut at `{id}`",
                            b.ids[(p - lo_b) as usize]
                        )));
                    }
                }
                let (lo, hi) = (range.start.max(lo_b), range.end.min(hi_b));
                if lo < hi {
                    let part = slice(b, (lo - lo_b) as usize, (hi - lo_b) as usize);
                    let t = transformer.clone();
                    let out = match tokio::task::spawn_blocking(move || t.transform(part)).await {
                        Ok(Ok(out)) => out,
                        Ok(Err(e)) => return Err(at.transform(e)),
                        // A transform that panicked is an error of this
                        // shard, never the end of its data.
                        Err(e) => return Err(at.internal(format!("the transform stopped: {e}"))),
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        return Ok(());
                    }
                }
                // Past the end, with the next shard's first id checked (or
                // no next record to check).
                if hi_b > range.end || (hi_b == range.end && range.end_id.is_none()) {
                    return Ok(());
                }
            }
            if pos < range.end || range.end_id.is_some() {
                return Err(at.changed(format!(
                    "the source ended after {pos} records, before the end of this shard ({})",
                    range.end
                )));
            }
            Ok::<(), ShardError>(())
        }
        .await;
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// Records `[from, to)` of a batch.
fn slice(mut b: SourceBatch, from: usize, to: usize) -> SourceBatch {
    if from == 0 && to == b.len() {
        return b;
    }
    let dim = b.dim;
    let vectors = if b.embeddings.len() >= to * dim {
        b.embeddings[from * dim..to * dim].to_vec()
    } else {
        Vec::new()
    };
    SourceBatch {
        ids: b.ids.drain(from..to).collect(),
        documents: b.documents.drain(from..to).collect(),
        uris: b.uris.drain(from..to).collect(),
        metadatas: b.metadatas.drain(from..to).collect(),
        embeddings: vectors,
        dim,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::record::Record;

    fn batch(ids: &[&str]) -> SourceBatch {
        let mut b = SourceBatch::with_capacity(ids.len(), 2);
        for (i, id) in ids.iter().enumerate() {
            b.push(Record {
                id: id.to_string(),
                document: Some(format!("doc {id}")),
                uri: None,
                metadata: None,
                embedding: vec![i as f32, -(i as f32)],
            });
        }
        b
    }

    #[test]
    fn a_slice_keeps_its_records_and_their_vectors() {
        let s = slice(batch(&["a", "b", "c", "d"]), 1, 3);
        assert_eq!(s.ids, vec!["b", "c"]);
        assert_eq!(s.documents[1].as_deref(), Some("doc c"));
        assert_eq!(s.embeddings, vec![1.0, -1.0, 2.0, -2.0]);
        assert_eq!(s.dim, 2);
        let whole = slice(batch(&["a"]), 0, 1);
        assert_eq!(whole.ids, vec!["a"]);
    }
}
