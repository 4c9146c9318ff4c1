//! The mirror's writer: makes LanceDB match the upstream for the ids the
//! journal holds, in few commits.
//!
//! It is state-based: for a batch of journaled ids it reads their current
//! records from the upstream by id (the HTTP source's `get`), transforms
//! them with the plan's mapping, merges them into the table on the id
//! column, and deletes the ids the upstream no longer has (or the plan
//! leaves out, `on_error: skip`), exactly as a sync writes a difference.
//! Because it always writes the upstream's state at the time of the read,
//! applying an entry late, twice, or again after a crash gives the same
//! table; changes to one id cannot be applied out of order (the last read
//! wins, and an entry is marked applied only after a read that followed
//! the upstream's answer); and crash recovery is this same path: entries
//! not marked applied are simply applied again.
//!
//! Entries wait for a short window (by default 200 ms, or until 5,000 ids
//! are ready) so that concurrent clients share one merge commit and at most
//! one delete commit. A collection whose write fails (LanceDB unavailable,
//! the table not created yet, the upstream down) keeps its entries in the
//! journal and is retried with exponential backoff; the others go on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;

use super::MirrorError;
use super::journal::{Batch, Journal};
use super::stats::{Stats, inc};
use crate::plan::{Collection, Field, Plan};
use crate::source::chroma_http::ChromaHttp;
use crate::source::{Source, SourceError};
use crate::target::{LanceTarget, TargetError};
use crate::transform::{TransformError, Transformed, Transformer};

/// How often the writer looks again when nothing signalled it (entries
/// whose grace ran out, backoffs that ended).
const TICK: Duration = Duration::from_millis(250);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often a table is checked for small fragments to compact.
const COMPACT_EVERY: Duration = Duration::from_secs(60);
/// How often the writer counts ready entries while a window gathers.
const RECOUNT: Duration = Duration::from_millis(20);
/// The longest one batch (read back, merge, delete) may take.
const BATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Consecutive failures of one collection after which `--drain` gives up.
const DRAIN_TRIES: u32 = 6;

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// How long ready entries wait for more to share their commit.
    pub window: Duration,
    /// Ids after which a batch is written without waiting.
    pub max_ids: usize,
    /// How long an entry whose upstream outcome is unknown waits before
    /// its ids are read (a request the upstream received may still be in
    /// its hands).
    pub grace: Duration,
}

/// Why a batch could not be written; its entries stay in the journal.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "table `{table}` (collection `{collection}`) does not exist in LanceDB `{uri}`, or LanceDB is not reachable; the journal keeps the changes\nhint: run `lanceferry apply {plan_file}` to create the table (or bring the target back); the mirror applies the waiting changes as soon as it can"
    )]
    NoTable {
        table: String,
        collection: String,
        uri: String,
        plan_file: String,
    },
    #[error(
        "table `{table}` has no fixed-size vector column `{column}`, so the dimension of collection `{collection}` is unknown\nhint: set `dim:` on the `{column}` column in the plan, or re-create the table with `lanceferry apply`"
    )]
    NoDimension {
        table: String,
        column: String,
        collection: String,
    },
    #[error(
        "reading the schema of table `{table}`: {source}\nhint: retry; if it persists the table may be damaged"
    )]
    Schema {
        table: String,
        #[source]
        source: lancedb::Error,
    },
    #[error(
        "an apply or rollback of the plan is writing the tables (it holds the plan's write gate); the journal keeps the changes\nhint: nothing to do: the mirror writes them, read again from the upstream, as soon as it ends"
    )]
    ApplyRunning,
    #[error(
        "writing {ids} id(s) of collection `{collection}` to LanceDB took more than {seconds} s; the journal keeps the changes\nhint: check that the target answers (`lanceferry plan` reads it); the mirror retries with backoff"
    )]
    TimedOut {
        collection: String,
        ids: usize,
        seconds: u64,
    },
    #[error(transparent)]
    Source(Box<SourceError>),
    #[error(transparent)]
    Target(Box<TargetError>),
    #[error(transparent)]
    Transform(Box<TransformError>),
    #[error(transparent)]
    State(Box<crate::state::StateError>),
}

impl From<SourceError> for WriteError {
    fn from(e: SourceError) -> Self {
        WriteError::Source(Box::new(e))
    }
}
impl From<TargetError> for WriteError {
    fn from(e: TargetError) -> Self {
        WriteError::Target(Box::new(e))
    }
}
impl From<TransformError> for WriteError {
    fn from(e: TransformError) -> Self {
        WriteError::Transform(Box::new(e))
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

fn backoff_delay(failures: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default)]
struct Applied {
    written: u64,
    deleted: u64,
}

/// What one round (a batch per ready collection) did.
#[derive(Debug, Clone, Default)]
struct Round {
    entries: u64,
    written: u64,
    deleted: u64,
}

/// What `--drain` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Drained {
    /// Journal entries applied.
    pub entries: u64,
    /// Ids written (present upstream) and deleted (absent upstream).
    pub written: u64,
    pub deleted: u64,
    pub journal: std::path::PathBuf,
}

impl Drained {
    pub fn render(&self) -> String {
        if self.entries == 0 {
            return format!(
                "the mirror journal `{}` was empty; nothing to do",
                self.journal.display()
            );
        }
        format!(
            "drained {} journal entr{} into LanceDB ({} ids written, {} deleted as the upstream no longer has them); the journal `{}` is empty",
            self.entries,
            if self.entries == 1 { "y" } else { "ies" },
            self.written,
            self.deleted,
            self.journal.display()
        )
    }
}

pub struct Writer {
    plan_file: String,
    /// The plan's state, whose write gate each batch holds.
    store: crate::state::StateStore,
    collections: HashMap<String, Collection>,
    source: ChromaHttp,
    target: LanceTarget,
    journal: Journal,
    stats: Arc<Stats>,
    opts: WriterOptions,
    /// Vector dimension per table, when the plan does not say (read from
    /// the table's schema once).
    dims: HashMap<String, usize>,
    backoff: HashMap<String, Backoff>,
    compacted: HashMap<String, Instant>,
}

impl Writer {
    pub fn new(
        plan: &Plan,
        source: ChromaHttp,
        target: LanceTarget,
        journal: Journal,
        stats: Arc<Stats>,
        opts: WriterOptions,
    ) -> Self {
        Writer {
            plan_file: plan.file.display().to_string(),
            store: crate::state::StateStore::for_plan(plan),
            collections: plan
                .collections
                .iter()
                .map(|c| (c.source.clone(), c.clone()))
                .collect(),
            source,
            target,
            journal,
            stats,
            opts,
            dims: HashMap::new(),
            backoff: HashMap::new(),
            compacted: HashMap::new(),
        }
    }

    /// Collections in backoff now.
    fn blocked(&self) -> HashSet<String> {
        let now = Instant::now();
        self.backoff
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(c, _)| c.clone())
            .collect()
    }

    fn ready_ids(&self) -> usize {
        self.journal
            .ready_ids(Utc::now(), self.opts.grace, &self.blocked())
    }

    /// Serves until `stop` says so: waits for ready entries, lets a window
    /// gather more, writes a round. A last round runs on the way out.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let stopped = |stop: &watch::Receiver<bool>| *stop.borrow() || stop.has_changed().is_err();
        loop {
            if stopped(&stop) {
                break;
            }
            if self.ready_ids() == 0 {
                tokio::select! {
                    _ = self.journal.ready().notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            // A short window: the writes of concurrent clients share a commit.
            let deadline = tokio::time::Instant::now() + self.opts.window;
            while self.ready_ids() < self.opts.max_ids {
                tokio::select! {
                    _ = self.journal.ready().notified() => {
                        // Counting walks the journal under its lock, which
                        // the proxy needs for every write: at most every
                        // RECOUNT, however fast outcomes arrive.
                        tokio::time::sleep(RECOUNT.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = stop.changed() => break,
                }
            }
            self.round().await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.round())
            .await
            .is_err()
        {
            tracing::warn!(
                "mirror: the last write to LanceDB did not finish within 10 s; the journal keeps its entries for the next start"
            );
        }
    }

    /// Applies everything the journal holds, then returns (`--drain`).
    /// Gives up when a collection failed [`DRAIN_TRIES`] times in a row;
    /// its entries stay in the journal.
    pub async fn drain(mut self) -> Result<Drained, MirrorError> {
        let mut drained = Drained {
            journal: self.journal.dir().to_path_buf(),
            ..Drained::default()
        };
        loop {
            let pending = self.journal.pending();
            if pending.entries == 0 {
                self.journal.sync().await;
                return Ok(drained);
            }
            let round = self.round().await;
            drained.entries += round.entries;
            drained.written += round.written;
            drained.deleted += round.deleted;
            if round.entries == 0 {
                if self.backoff.values().any(|b| b.failures >= DRAIN_TRIES) {
                    self.journal.sync().await;
                    let reasons = self
                        .stats
                        .snapshot(&drain_info(), &pending)
                        .waiting
                        .into_iter()
                        .map(|(c, why)| {
                            format!("`{c}`: {}", why.lines().next().unwrap_or_default())
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(MirrorError::DrainStuck {
                        path: self.journal.dir().to_path_buf(),
                        pending: pending.entries,
                        reasons,
                    });
                }
                // Waiting on a backoff, or on the grace of entries whose
                // outcome is unknown.
                tokio::time::sleep(TICK).await;
            }
        }
    }

    /// One batch per collection that has ready entries and is not in
    /// backoff.
    async fn round(&mut self) -> Round {
        let now = Utc::now();
        let mut skip = self.blocked();
        let mut round = Round::default();
        while let Some(batch) = self
            .journal
            .take(now, self.opts.grace, self.opts.max_ids, &skip)
        {
            skip.insert(batch.collection.clone());
            self.batch(batch, &mut round).await;
        }
        round
    }

    async fn batch(&mut self, batch: Batch, round: &mut Round) {
        let seqs = batch.seqs();
        let Some(c) = self.collections.get(&batch.collection).cloned() else {
            // Journaled under a plan that mirrored this collection; this
            // one does not, so there is no table to apply it to.
            tracing::warn!(
                "mirror: {} journaled write(s) to collection `{}`, which the plan no longer mirrors, are discarded",
                seqs.len(),
                batch.collection
            );
            self.journal.applied(&seqs);
            return;
        };
        let ids = batch.ids();
        let started = Instant::now();
        // Never while an apply or rollback writes the tables: it may be
        // writing a state read before these writes; they wait, and are
        // read again from the upstream once it ends.
        let store = self.store.clone();
        let gate = tokio::task::spawn_blocking(move || store.try_gate())
            .await
            .expect("trying the gate does not panic");
        let result = match gate {
            Ok(Some(gate)) => {
                // A hung call (a stalled object store) must not stall the
                // other collections, nor shutdown, forever.
                let r = match tokio::time::timeout(BATCH_TIMEOUT, self.apply(&c, &ids)).await {
                    Ok(r) => r,
                    Err(_) => Err(WriteError::TimedOut {
                        collection: c.source.clone(),
                        ids: ids.len(),
                        seconds: BATCH_TIMEOUT.as_secs(),
                    }),
                };
                drop(gate);
                r
            }
            Ok(None) => Err(WriteError::ApplyRunning),
            Err(e) => Err(WriteError::State(Box::new(e))),
        };
        match result {
            Ok(a) => {
                // Counted (and the waiting reason cleared) before the
                // entries leave the journal, so a reader that sees
                // `pending` at 0 sees them counted.
                for e in &batch.entries {
                    inc(&self.stats.mirrored_ok);
                    if e.upstream_ok {
                        inc(&self.stats.both_ok);
                    }
                }
                if let Some(b) = self.backoff.remove(&c.source) {
                    tracing::info!(
                        "mirror: writes of collection `{}` reach LanceDB again (after {} failed attempt(s))",
                        c.source,
                        b.failures
                    );
                }
                self.stats.set_waiting(&c.source, None);
                self.journal.applied(&seqs);
                tracing::debug!(
                    "mirror: `{}` -> `{}`: {} entr(ies) ({}), {} ids written, {} deleted in {:.0} ms",
                    c.source,
                    c.table,
                    seqs.len(),
                    batch
                        .entries
                        .iter()
                        .map(|e| e.op.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    a.written,
                    a.deleted,
                    started.elapsed().as_secs_f64() * 1000.0
                );
                round.entries += seqs.len() as u64;
                round.written += a.written;
                round.deleted += a.deleted;
            }
            Err(e) => {
                // The table may have been re-created meanwhile.
                self.dims.remove(&c.table);
                // Waiting for an apply is not a failure.
                if !matches!(e, WriteError::ApplyRunning) {
                    inc(&self.stats.failed);
                }
                let b = self.backoff.entry(c.source.clone()).or_insert(Backoff {
                    failures: 0,
                    until: Instant::now(),
                });
                b.failures += 1;
                let delay = backoff_delay(b.failures);
                b.until = Instant::now() + delay;
                let text = e.to_string();
                if self.stats.set_waiting(&c.source, Some(text.clone())) {
                    tracing::warn!(
                        "mirror: {} id(s) of collection `{}` could not be written to LanceDB (kept in the journal, retried with backoff): {text}",
                        ids.len(),
                        c.source
                    );
                } else {
                    tracing::debug!(
                        "mirror: `{}` still failing (attempt {}, next in {:.1} s)",
                        c.source,
                        b.failures,
                        delay.as_secs_f64()
                    );
                }
            }
        }
    }

    /// Makes the table hold, for `ids`, exactly what the upstream holds now.
    async fn apply(&mut self, c: &Collection, ids: &[String]) -> Result<Applied, WriteError> {
        if ids.is_empty() {
            return Ok(Applied::default());
        }
        // A LanceDB directory moved away reads as "no table" (or an error):
        // either way nothing is written and the entries wait.
        let Some(table) = self.target.open(&c.table).await? else {
            return Err(WriteError::NoTable {
                table: c.table.clone(),
                collection: c.source.clone(),
                uri: self.target.uri().to_string(),
                plan_file: self.plan_file.clone(),
            });
        };
        let dim = self.dim(c, &table).await?;
        let records = self.source.get(&c.source, ids).await?;
        let transformer = Transformer::new(c, dim);
        let Transformed { batch, skipped } = transformer.transform(records)?;
        let id_col = c
            .columns
            .iter()
            .position(|col| col.from == Field::Id)
            .expect("the mirror checks at start that every collection maps its id");
        let key = c.columns[id_col].name.clone();
        // Ids the upstream no longer has, and ids the plan leaves out
        // (`on_error: skip`): neither may stay in the table (a sync deletes
        // them too).
        let gone: Vec<String> = {
            let present: HashSet<&str> =
                crate::target::string_values(batch.column(id_col).as_ref())
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                    .collect();
            ids.iter()
                .filter(|id| !present.contains(id.as_str()))
                .cloned()
                .collect()
        };
        if !skipped.is_empty() {
            tracing::debug!(
                "mirror: {} record(s) of `{}` left out by the plan (`on_error: skip`)",
                skipped.len(),
                c.source
            );
        }
        let written = batch.num_rows() as u64;
        if written > 0 {
            self.target
                .upsert(&c.table, transformer.schema(), vec![batch], &key)
                .await?;
        }
        if !gone.is_empty() {
            self.target.delete_ids(&c.table, &key, &gone).await?;
        }
        self.maybe_compact(&c.table).await;
        Ok(Applied {
            written,
            deleted: gone.len() as u64,
        })
    }

    /// The table's vector dimension: the plan's `dim`, else the table's.
    async fn dim(&mut self, c: &Collection, table: &lancedb::Table) -> Result<usize, WriteError> {
        let vector = c.vector_column();
        if let Some(d) = vector.dim {
            return Ok(d as usize);
        }
        if let Some(d) = self.dims.get(&c.table) {
            return Ok(*d);
        }
        let schema = table.schema().await.map_err(|source| WriteError::Schema {
            table: c.table.clone(),
            source,
        })?;
        let d = match schema.field_with_name(&vector.name).map(|f| f.data_type()) {
            Ok(arrow_schema::DataType::FixedSizeList(_, n)) if *n > 0 => *n as usize,
            _ => {
                return Err(WriteError::NoDimension {
                    table: c.table.clone(),
                    column: vector.name.clone(),
                    collection: c.source.clone(),
                });
            }
        };
        self.dims.insert(c.table.clone(), d);
        Ok(d)
    }

    /// Many small merges leave many small fragments: compact them now and
    /// then (only once enough gathered, see `LanceTarget::compact`).
    async fn maybe_compact(&mut self, table: &str) {
        let due = self
            .compacted
            .get(table)
            .is_none_or(|t| t.elapsed() >= COMPACT_EVERY);
        if !due {
            return;
        }
        self.compacted.insert(table.to_string(), Instant::now());
        match self.target.compact(table).await {
            Ok(true) => tracing::info!("mirror: small fragments of `{table}` compacted"),
            Ok(false) => {}
            // Not a failure of the mirror: the rows are written.
            Err(e) => tracing::warn!("mirror: compacting `{table}` failed (retried later): {e}"),
        }
    }
}

/// A placeholder identity for snapshots taken while draining (only the
/// `waiting` reasons are read from them).
fn drain_info() -> super::stats::MirrorInfo {
    super::stats::MirrorInfo {
        plan: String::new(),
        pid: std::process::id(),
        listen: String::new(),
        upstream: String::new(),
        started: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap() {
        assert_eq!(backoff_delay(1), Duration::from_millis(250));
        assert_eq!(backoff_delay(2), Duration::from_millis(500));
        assert_eq!(backoff_delay(4), Duration::from_secs(2));
        assert_eq!(backoff_delay(30), BACKOFF_MAX);
        let drain: Duration = (1..=DRAIN_TRIES).map(backoff_delay).sum();
        assert!(drain <= Duration::from_secs(30), "{drain:?}");
    }
}
