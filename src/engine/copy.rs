//! The copy step: source batches → transform → streamed Lance commits,
//! one commit (and one state checkpoint) per `checkpoint_rows` rows.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::decide;
use super::{Ctx, StepError};
use crate::digest::Digests;
use crate::plan::{Collection, Mode};
use crate::source::{SourceBatch, SourceError};
use crate::state::StepKey;
use crate::target::{Commit, TableVersion};
use crate::transform::{Transformed, Transformer};

/// Where copy progress is shown (progress bars, log lines, or nothing).
pub trait CopyProgress: Send + Sync + std::fmt::Debug {
    fn start(&self, table: &str, total: u64, already: u64);
    fn advance(&self, table: &str, rows: u64);
    fn finish(&self, table: &str);
    fn message(&self, text: &str);
    /// Stage-by-stage progress for the build of the index `label`
    /// (`table.column`); `None`, the default, follows none.
    fn index_stages(&self, _label: &str) -> Option<Arc<dyn crate::target::StageProgress>> {
        None
    }
}

/// Rows an upsert commit holds in memory at most (merge_insert reads a
/// synchronous reader, so its input is buffered).
const UPSERT_BUFFER_BYTES: usize = 128 << 20;

pub(crate) async fn copy(ctx: &Arc<Ctx>, c: &Collection) -> Result<(), StepError> {
    let step = StepKey::copy(&c.table);
    let table = c.table.as_str();
    let info = ctx.source.collection(&c.source).await?;
    let vector = c.vector_column();
    let dim = match (vector.dim, info.dimension) {
        (Some(d), _) => d as usize,
        (None, Some(d)) => d as usize,
        (None, None) => {
            return Err(StepError::NoDimension {
                collection: c.source.clone(),
                column: vector.name.clone(),
            });
        }
    };
    let transformer = Transformer::new(c, dim);
    let schema = transformer.schema();
    let snap = ctx.record(&StepKey::snapshot(table)).await;
    let before = snap.version_before;
    let now = ctx.target.version(table).await?;
    if now.is_none() {
        // A create killed before its first commit leaves files but no table.
        ctx.target.clear_partial(table).await?;
    }
    // An append onto rows: are any of the source's ids there already?
    // What this apply's own checkpoints recorded of the table.
    let recorded = ctx.record(&step).await.version_after;
    // An append onto rows: were any of the source's ids there already
    // (at the snapshot, so this apply's own rows never count)?
    let overlap = match before {
        Some(b) if decide::needs_overlap(c.mode, before, recorded) && !ctx.allow_duplicates => {
            Some(
                crate::verify::source_ids_in_table(ctx.source.as_ref(), &ctx.target, c, b.version)
                    .await?,
            )
        }
        _ => None,
    };
    let start = decide::copy_start(
        table,
        c.mode,
        before,
        recorded,
        now,
        overlap,
        ctx.allow_duplicates,
    )?;
    if start.create_empty {
        ctx.target.create_empty(table, schema.clone()).await?;
    }
    let (mut written, mut how) = (start.committed, start.commit);
    // A sync onto its table writes only the difference.
    if c.mode == Mode::Sync
        && let Some(now) = now
    {
        ctx.update(&step, |r| r.source_count = Some(info.count))
            .await?;
        super::sync::sync(ctx, c, transformer, now).await?;
        return Ok(());
    }
    let resumed_at = written;
    // A sync's first copy records the source's write sequence numbers with
    // its digests, read before any record (a record written during the
    // copy then has a higher number, and the next sync reads it again).
    // Not after a resume: rows copied before the kill were read earlier.
    let sequences = if c.mode == Mode::Sync && written == 0 {
        ctx.source.sequences(&c.source).await?
    } else {
        None
    };
    // ... and the digests of the rows it writes, taken from the source as
    // they pass: validation then scans the table alone, and the next sync
    // compares with them. A resumed copy derives them from the table.
    let id_col = c
        .columns
        .iter()
        .position(|col| col.from == crate::plan::Field::Id);
    let mut source_digests: Option<Vec<(u64, u64)>> = match (c.mode, written, id_col) {
        (Mode::Sync, 0, Some(_)) => Some(Vec::with_capacity(info.count as usize)),
        _ => None,
    };
    // Other modes: the ids of a whole copy, kept for validation's id-set
    // check, which then need not read the source's ids a second time (a
    // server answers an ids-only pass about as slowly as the copy itself).
    let mut copied_ids: Option<Vec<String>> = match (c.mode, written, id_col) {
        (Mode::Sync, _, _) | (_, 1.., _) | (_, _, None) => None,
        _ => Some(Vec::with_capacity(info.count as usize)),
    };
    ctx.update(&step, |r| {
        r.source_count = Some(info.count);
        r.cursor = written;
    })
    .await?;
    ctx.progress.start(table, info.count, written);
    let rows_for_failpoint = |n| crate::failpoint::hit_rows("commit", table, n);

    let mut pull = Puller::start(
        ctx.source.read(&c.source, c.batch_size as usize),
        transformer,
        written,
    );
    let mut sending = Duration::ZERO;
    let mut committing = Duration::ZERO;
    let started = Instant::now();
    let checkpoint = ctx.plan.checkpoint_rows.max(1);
    // Transformed batches not yet sent to a commit.
    let mut next: Option<RecordBatch> = None;
    let mut exhausted = false;

    loop {
        let first = match next.take() {
            Some(b) => Some(b),
            None if exhausted => None,
            None => pull.next().await?,
        };
        let Some(first) = first else { break };

        if c.mode == Mode::Upsert {
            let key = c.id_column().expect("checked").name.clone();
            let mut buf = vec![first];
            let mut rows: u64 = buf[0].num_rows() as u64;
            let mut bytes = buf[0].get_array_memory_size();
            while rows < checkpoint && bytes < UPSERT_BUFFER_BYTES {
                match pull.next().await? {
                    Some(b) => {
                        rows += b.num_rows() as u64;
                        bytes += b.get_array_memory_size();
                        buf.push(b);
                    }
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            }
            rows_for_failpoint(written + rows);
            let v = ctx.target.upsert(table, schema.clone(), buf, &key).await?;
            written += rows;
            checkpoint_saved(ctx, &step, written, v).await?;
            ctx.progress.advance(table, rows);
            continue;
        }

        // One streamed commit: the writer consumes batches while we read.
        let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
        let target = ctx.target.clone();
        let name = table.to_string();
        let sch = schema.clone();
        let kind = how;
        let writer = tokio::spawn(async move {
            target
                .commit(
                    &name,
                    sch,
                    tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
                    kind,
                )
                .await
        });
        let mut in_commit = 0u64;
        let mut batch = Some(first);
        let mut failure = None;
        while let Some(b) = batch.take() {
            let n = b.num_rows() as u64;
            if let (Some(d), Some(id)) = (source_digests.as_mut(), id_col) {
                d.extend(crate::digest::row_digests(&b, id));
            }
            if let (Some(ids), Some(id)) = (copied_ids.as_mut(), id_col) {
                ids.extend(
                    crate::target::string_values(b.column(id).as_ref())
                        .unwrap_or_default()
                        .into_iter()
                        .map(|v| v.unwrap_or_default().to_string()),
                );
            }
            let t = Instant::now();
            let sent = tx.send(b).await;
            sending += t.elapsed();
            if sent.is_err() {
                break; // the writer stopped; its error is reported below
            }
            in_commit += n;
            ctx.progress.advance(table, n);
            if in_commit >= checkpoint {
                break;
            }
            // A transform error must not reach the commit: abort it, so
            // nothing of this batch (or this commit) is written.
            match pull.next().await {
                Ok(Some(b)) => batch = Some(b),
                Ok(None) => exhausted = true,
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            writer.abort();
            return Err(e);
        }
        rows_for_failpoint(written + in_commit);
        drop(tx);
        let t = Instant::now();
        let v = writer.await.map_err(|e| StepError::Internal {
            what: format!("the commit to `{table}`"),
            reason: e.to_string(),
        })??;
        committing += t.elapsed();
        written += in_commit;
        how = Commit::Append;
        checkpoint_saved(ctx, &step, written, v).await?;
    }

    if written == 0 && ctx.target.version(table).await?.is_none() {
        // An empty collection still becomes a table, with the planned schema.
        ctx.target.create_empty(table, schema.clone()).await?;
    }
    let after = ctx.target.version(table).await?;
    // A sync's first copy: the digests the next sync compares with, taken
    // from the table (so a resumed copy's rows are covered too).
    if c.mode == Mode::Sync
        && let Some(v) = after
    {
        let mut d = match source_digests.take() {
            Some(pairs) => Digests {
                from_source: true,
                ..Digests::new(v.version, pairs)
            },
            None => super::sync::derive(&ctx.target, c, v.version).await?,
        };
        if let Some(s) = &sequences {
            d.attach_seqs(s);
        }
        crate::digest::save(&crate::digest::path(&ctx.store.dir, table), &d)?;
    }
    // Where the copy's time went, for `-v`: a source-bound copy waits on
    // the reader, a writer-bound one on the channel and the commit.
    tracing::debug!(
        "{step}: {:.2} s; waited {:.2} s for transformed source batches (transforming took {:.2} s), {:.2} s to hand batches to the writer and {:.2} s for commits",
        started.elapsed().as_secs_f64(),
        pull.waited.as_secs_f64(),
        pull.transforming.as_secs_f64(),
        sending.as_secs_f64(),
        committing.as_secs_f64()
    );
    let skipped = pull.skipped_ids.len() as u64;
    if let Some(mut ids) = copied_ids.take() {
        ids.extend(pull.skipped_ids.iter().cloned());
        ctx.copied_ids
            .lock()
            .expect("copied ids lock")
            .insert(table.to_string(), ids);
    }
    ctx.skipped
        .lock()
        .expect("skipped lock")
        .insert(table.to_string(), pull.skipped_ids);
    ctx.progress.finish(table);
    let final_info = ctx.source.collection(&c.source).await?;
    if final_info.count != info.count {
        // What was copied is not the source now: validation reads it.
        ctx.copied_ids
            .lock()
            .expect("copied ids lock")
            .remove(table);
        ctx.warn(format!(
            "collection `{}` changed during the copy ({} records at the start, {} at the end); re-run apply when writes have stopped",
            c.source, info.count, final_info.count
        ));
    }
    if resumed_at > 0 {
        ctx.progress.message(&format!(
            "copy `{table}`: resumed after {resumed_at} rows already committed"
        ));
    }
    ctx.update(&step, |r| {
        r.rows = written;
        r.cursor = written;
        r.skipped = skipped;
        r.version_after = after;
    })
    .await?;
    if let StepKey::Copy { table } = step {
        crate::failpoint::hit_rows("checkpoint", table.as_str(), written);
    }
    Ok(())
}

/// Source batches, transformed, with the rows an earlier run already
/// committed skipped. Reading (the source's own thread), transforming (a
/// task of its own, two batches ahead) and writing (Lance's encoders) run
/// at the same time: on two cores no stage waits for another's CPU work.
pub(super) struct Puller {
    batches: tokio::sync::mpsc::Receiver<Result<(Transformed, Duration), StepError>>,
    /// Rows still to drop from the front (resume).
    skip: u64,
    pub(super) skipped_ids: HashSet<String>,
    waited: Duration,
    transforming: Duration,
}

impl Puller {
    pub(super) fn start(
        mut source: BoxStream<'static, Result<SourceBatch, SourceError>>,
        transformer: Transformer,
        skip: u64,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let transformer = Arc::new(transformer);
        // Ends when the source does, at the first error, or when the copy
        // stops listening (its receiver dropped), which also stops the reader.
        tokio::spawn(async move {
            loop {
                let b = match source.try_next().await {
                    Ok(Some(b)) => b,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let t = transformer.clone();
                let out = tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    t.transform(b).map(|out| (out, started.elapsed()))
                })
                .await;
                // A transform that panicked is an error of this copy, never
                // the end of the data.
                let out = match out {
                    Ok(r) => r.map_err(StepError::from),
                    Err(e) => Err(StepError::Internal {
                        what: "the transform".into(),
                        reason: e.to_string(),
                    }),
                };
                let failed = out.is_err();
                if tx.send(out).await.is_err() || failed {
                    return;
                }
            }
        });
        Puller {
            batches: rx,
            skip,
            skipped_ids: HashSet::new(),
            waited: Duration::ZERO,
            transforming: Duration::ZERO,
        }
    }

    pub(super) async fn next(&mut self) -> Result<Option<RecordBatch>, StepError> {
        loop {
            let t = Instant::now();
            let next = self.batches.recv().await;
            self.waited += t.elapsed();
            let Some(next) = next else {
                return Ok(None);
            };
            let (out, took) = next?;
            self.transforming += took;
            for s in &out.skipped {
                self.skipped_ids.insert(s.id.clone());
            }
            let mut batch = out.batch;
            if self.skip > 0 {
                let n = (self.skip as usize).min(batch.num_rows());
                self.skip -= n as u64;
                batch = batch.slice(n, batch.num_rows() - n);
            }
            if batch.num_rows() > 0 {
                return Ok(Some(batch));
            }
        }
    }
}

async fn checkpoint_saved(
    ctx: &Arc<Ctx>,
    step: &StepKey,
    written: u64,
    v: TableVersion,
) -> Result<(), StepError> {
    tracing::info!(
        "{step}: checkpoint at {written} rows (table version {})",
        v.version
    );
    ctx.update(step, |r| {
        r.cursor = written;
        r.rows = written;
        r.version_after = Some(v);
    })
    .await?;
    if let StepKey::Copy { table } = step {
        crate::failpoint::hit_rows("checkpoint", table.as_str(), written);
    }
    Ok(())
}
