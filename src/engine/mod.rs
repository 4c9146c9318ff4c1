//! The executor: walks the step graph, records every step in state, resumes.
//!
//! Steps whose dependencies are done run as soon as a slot is free (at most
//! `defaults.concurrency` at once), so independent collections copy in
//! parallel. A failed step blocks the steps that depend on it; independent
//! branches finish unless `--fail-fast`. Every change of a step's status,
//! and every copy checkpoint, is saved to state before anything else
//! happens, so a run killed at any moment is finished by running apply again.
//!
//! Resume without duplicates or losses: the transform is deterministic and a
//! source directory that nobody writes yields its records in the same order
//! every time, and each Lance commit is atomic. So the rows this apply has
//! committed are exactly the first `rows(table) - rows(before apply)` rows
//! of the transformed source: a resumed copy skips that many and continues.
//! `upsert` simply starts again (merging on the id is idempotent). What to
//! do (fresh, resume, nothing; where a copy starts, or why it must not
//! write) is decided by the pure functions of [`decide`], which `plan` uses
//! too.
//!
//! The lock is taken before the state is read, so the decision to resume
//! or start afresh is made by the only process that may act on it. A step
//! that panics fails that step only; its branch stops, the others go on.

mod copy;
pub mod decide;
pub mod rollback;
pub mod sync;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use petgraph::graph::NodeIndex;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::graph::{Step, StepGraph};
use crate::plan::{Collection, Plan};
use crate::source::Source;
use crate::state::{
    ApplyRecord, ApplyStatus, StateError, StateStore, StepKey, StepRecord, StepStatus,
};
use crate::target::{IndexOutcome, LanceTarget};

pub use copy::CopyProgress;

/// Options of one `apply`.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub fail_fast: bool,
    pub lock_timeout: Duration,
    /// Let an `append` write onto a table that already holds source ids.
    pub allow_duplicates: bool,
    /// Applying a saved plan: what it was made against, checked under the
    /// lock before anything is written.
    pub expect: Option<Expected>,
    /// Progress lines / bars on stderr.
    pub progress: Arc<dyn CopyProgress>,
}

/// The facts a saved plan was made against, and where it came from.
#[derive(Debug, Clone)]
pub struct Expected {
    pub facts: crate::diff::saved::Facts,
    pub path: std::path::PathBuf,
    pub plan_file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Step(Box<StepError>),
    #[error(transparent)]
    Saved(#[from] crate::diff::saved::SavedError),
    #[error(transparent)]
    Diff(#[from] crate::diff::DiffError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
}

/// Why a step failed. Each variant's message names the collection, table
/// or step involved and ends with a `hint:`; the walker records the text in
/// state and the report.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    // The large errors are boxed: a step's `Result` stays small.
    #[error(transparent)]
    Source(Box<crate::source::SourceError>),
    #[error(transparent)]
    Target(Box<crate::target::TargetError>),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Verify(Box<crate::verify::VerifyError>),
    #[error(transparent)]
    Backup(Box<crate::backup::BackupError>),
    #[error(transparent)]
    Transform(#[from] crate::transform::TransformError),
    #[error(transparent)]
    Refused(#[from] decide::Refusal),
    #[error(
        "collection `{collection}` has no vectors yet, so its dimension is unknown\nhint: set `dim:` on the `{column}` column in the plan"
    )]
    NoDimension { collection: String, column: String },
    #[error(
        "collection `{collection}` holds id `{id}` more than once, so `mode: sync` cannot tell which record the table's row should be\nhint: remove the duplicate from the source, or use `mode: append` with `--allow-duplicates` if repeats are meant"
    )]
    DuplicateId { collection: String, id: String },
    #[error(
        "validation of `{table}` failed: {breaches}\nhint: inspect the table; `lanceferry rollback {plan_file}` restores every table to its state before this apply"
    )]
    Validation {
        table: String,
        breaches: String,
        plan_file: String,
    },
    #[error(
        "{what} stopped on an internal error: {reason}\nhint: this is a bug in lanceferry (please report it); nothing of an unfinished commit was written, and `lanceferry apply` resumes"
    )]
    Internal { what: String, reason: String },
}

macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),*) => {$(
        impl From<$ty> for StepError {
            fn from(e: $ty) -> Self {
                StepError::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    Source: crate::source::SourceError,
    Target: crate::target::TargetError,
    Verify: crate::verify::VerifyError,
    Backup: crate::backup::BackupError
);

/// The outcome of an apply, per step.
#[derive(Debug, Clone, Serialize)]
pub struct ApplySummary {
    pub apply_id: String,
    pub nothing_to_do: bool,
    pub resumed: bool,
    pub done: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub not_started: Vec<String>,
    pub report: Option<std::path::PathBuf>,
    pub warnings: Vec<String>,
}

impl ApplySummary {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.not_started.is_empty()
    }
}

/// Everything a step needs.
pub(crate) struct Ctx {
    pub plan: Plan,
    pub source: Box<dyn Source>,
    pub target: LanceTarget,
    pub store: StateStore,
    /// This apply's record; every change is saved before the step goes on.
    pub record: Mutex<ApplyRecord>,
    pub allow_duplicates: bool,
    pub progress: Arc<dyn CopyProgress>,
    pub warnings: std::sync::Mutex<Vec<String>>,
    /// Ids skipped by `on_error: skip`, per table (for validation).
    pub skipped: std::sync::Mutex<HashMap<String, HashSet<String>>>,
    /// Sync differences found while deciding whether there is anything to
    /// do, per table: the sync writes them without reading the source again.
    pub sync_diffs: std::sync::Mutex<HashMap<String, sync::Diff>>,
    /// Every source id a whole copy read, per table (a sync: the ids read
    /// with Chroma's sequence numbers): the validate step's id-set check
    /// uses them instead of reading them again.
    pub copied_ids: std::sync::Mutex<HashMap<String, Vec<String>>>,
    /// What each sync started from, when checked: validation after the
    /// sync digests only the rows written since.
    pub sync_base: std::sync::Mutex<HashMap<String, sync::SyncBase>>,
}

impl Ctx {
    /// Changes this apply's record of one step and saves it (on a blocking
    /// thread: the save fsyncs) before returning.
    pub async fn update(
        &self,
        step: &StepKey,
        f: impl FnOnce(&mut StepRecord),
    ) -> Result<(), StateError> {
        let mut rec = self.record.lock().await;
        f(rec.steps.entry(step.clone()).or_default());
        save(&self.store, &rec).await
    }

    pub async fn record(&self, step: &StepKey) -> StepRecord {
        let rec = self.record.lock().await;
        rec.steps.get(step).cloned().unwrap_or_default()
    }

    pub async fn apply_id(&self) -> String {
        self.record.lock().await.id.clone()
    }

    pub fn warn(&self, w: String) {
        tracing::warn!("{w}");
        self.warnings.lock().expect("warnings lock").push(w);
    }

    fn collection(&self, table: &str) -> &Collection {
        self.plan
            .collections
            .iter()
            .find(|c| c.table == table)
            .expect("step tables come from the plan")
    }
}

/// Saves an apply's record on a blocking thread (it fsyncs twice).
async fn save(store: &StateStore, rec: &ApplyRecord) -> Result<(), StateError> {
    let (store, rec) = (store.clone(), rec.clone());
    tokio::task::spawn_blocking(move || store.save(&rec))
        .await
        .expect("saving state does not panic")
}

/// Runs (or resumes) an apply of `plan`.
pub async fn apply(plan: Plan, opts: ApplyOptions) -> Result<ApplySummary, EngineError> {
    let store = StateStore::for_plan(&plan);
    let fingerprint = plan.fingerprint();
    // The lock first: whether to resume is decided by its holder only.
    let mut lock = {
        let (store, timeout) = (store.clone(), opts.lock_timeout);
        tokio::task::spawn_blocking(move || store.lock(timeout))
            .await
            .expect("taking the lock does not panic")?
    };
    if let Some(c) = &lock.crashed {
        opts.progress.message(&format!(
            "warning: apply `{}` (pid {} on `{}`) ended without finishing; its record decides what happens next",
            c.apply_id, c.pid, c.host
        ));
    }
    let state = store.load()?;
    let last = state.applies.last();

    let source = crate::source::open(&plan.source)?;
    let target = LanceTarget::connect(&plan.target).await?;

    // A saved plan applies only to what it was made against.
    if let Some(exp) = &opts.expect {
        let now = crate::diff::saved::facts(&plan, source.as_ref(), Some(&target)).await?;
        let moved = crate::diff::saved::moved(&exp.facts, &now);
        if !moved.is_empty() {
            return Err(crate::diff::saved::SavedError::Stale {
                path: exp.path.clone(),
                plan_file: exp.plan_file.clone(),
                moved,
            }
            .into());
        }
    }

    let mut sync_diffs = HashMap::new();
    let observed = if decide::needs_observation(last, &fingerprint) {
        let mut obs = Vec::new();
        for c in &plan.collections {
            let info = source.collection(&c.source).await?;
            let now = target.version(&c.table).await?;
            // A sync table is unchanged only if no record changed, which
            // counts and versions cannot tell: compare the digests.
            let changes = match (c.mode, now) {
                (crate::plan::Mode::Sync, Some(v)) => {
                    let dim = c.vector_column().dim.or(info.dimension).unwrap_or(0) as usize;
                    let d = sync::diff(source.as_ref(), &target, c, &store.dir, v, dim)
                        .await
                        .map_err(|e| EngineError::Step(Box::new(e)))?;
                    let total = d.changes.total();
                    sync_diffs.insert(c.table.clone(), d);
                    Some(total)
                }
                _ => None,
            };
            obs.push(decide::Observed {
                table: c.table.clone(),
                source_count: info.count,
                now,
                changes,
            });
        }
        Some(obs)
    } else {
        None
    };
    let record = match decide::apply_start(last, &fingerprint, observed.as_deref()) {
        decide::Start::NothingToDo(id) => {
            return Ok(ApplySummary {
                apply_id: id,
                nothing_to_do: true,
                resumed: false,
                done: Vec::new(),
                failed: Vec::new(),
                not_started: Vec::new(),
                report: None,
                warnings: Vec::new(),
            });
        }
        decide::Start::Resume(id) => {
            let mut rec = last
                .filter(|l| l.id == id)
                .cloned()
                .expect("resumes the last apply");
            rec.status = ApplyStatus::Running;
            rec
        }
        decide::Start::Fresh => ApplyRecord::new(crate::state::new_apply_id(), fingerprint),
    };
    let resumed = last.is_some_and(|l| l.id == record.id);
    let apply_id = record.id.clone();
    lock.set_apply(&apply_id).map_err(|source| StateError::Io {
        path: store.lock_path(),
        source,
    })?;
    save(&store, &record).await?;

    // Rollback needs the pre-apply tags of the last `backup.keep` applies
    // (this one included); older ones are dropped after a successful run.
    let keep = plan
        .backup
        .as_ref()
        .map_or(crate::plan::DEFAULT_BACKUP_KEEP, |b| b.keep)
        .max(1) as usize;
    let mut keep_tags: HashSet<String> = state
        .applies
        .iter()
        .rev()
        .filter(|a| a.id != apply_id)
        .take(keep - 1)
        .map(|a| pre_apply_tag(&a.id))
        .collect();
    keep_tags.insert(pre_apply_tag(&apply_id));
    let graph = StepGraph::compile(&plan);
    let ctx = Arc::new(Ctx {
        plan,
        source,
        target,
        store,
        record: Mutex::new(record),
        allow_duplicates: opts.allow_duplicates,
        progress: opts.progress.clone(),
        warnings: std::sync::Mutex::new(Vec::new()),
        skipped: std::sync::Mutex::new(HashMap::new()),
        sync_diffs: std::sync::Mutex::new(sync_diffs),
        copied_ids: std::sync::Mutex::new(HashMap::new()),
        sync_base: std::sync::Mutex::new(HashMap::new()),
    });

    let (done, failed, not_started) = walk(&ctx, &graph, opts.fail_fast).await?;
    if failed.is_empty() && not_started.is_empty() {
        housekeeping(&ctx, &keep_tags).await;
    }

    let ok = failed.is_empty() && not_started.is_empty();
    let report = {
        let mut rec = ctx.record.lock().await;
        rec.status = if ok {
            ApplyStatus::Completed
        } else {
            ApplyStatus::Failed
        };
        rec.finished = Some(Utc::now());
        save(&ctx.store, &rec).await?;
        write_report(&ctx, &rec)?
    };
    drop(lock);
    let warnings = ctx.warnings.lock().expect("warnings lock").clone();
    Ok(ApplySummary {
        apply_id,
        nothing_to_do: false,
        resumed,
        done,
        failed,
        not_started,
        report: Some(report),
        warnings,
    })
}

type WalkResult = (Vec<String>, Vec<(String, String)>, Vec<String>);

async fn walk(
    ctx: &Arc<Ctx>,
    graph: &StepGraph,
    fail_fast: bool,
) -> Result<WalkResult, EngineError> {
    let order = graph.ordered();
    let mut status: HashMap<NodeIndex, StepStatus> = HashMap::new();
    // Steps finished by an earlier, interrupted run of this apply stay done.
    for n in &order {
        let key = graph.graph[*n].key();
        let rec = ctx.record(&key).await;
        if rec.status == Some(StepStatus::Done) {
            status.insert(*n, StepStatus::Done);
            // A validation the interrupted run finished is not repeated,
            // but its result is the one a reader of this run needs.
            if let (StepKey::Validate { table }, Some(message)) = (&key, &rec.message) {
                ctx.progress.message(&format!(
                    "validate `{table}`: {message} (validated before the interruption)"
                ));
            }
        }
    }
    let limit = ctx.plan.concurrency.max(1) as usize;
    let mut running = tokio::task::JoinSet::new();
    let mut in_flight: HashSet<NodeIndex> = HashSet::new();
    let mut failed = Vec::new();
    let mut stop = false;
    loop {
        if !stop {
            for n in &order {
                if in_flight.len() >= limit {
                    break;
                }
                if status.contains_key(n) || in_flight.contains(n) {
                    continue;
                }
                let deps = graph.dependencies(*n);
                if deps
                    .iter()
                    .all(|d| status.get(d) == Some(&StepStatus::Done))
                {
                    let step = graph.graph[*n].clone();
                    let ctx = ctx.clone();
                    let node = *n;
                    in_flight.insert(node);
                    running.spawn(async move {
                        // A panic fails this step only: its branch stops,
                        // the other collections go on.
                        let result = std::panic::AssertUnwindSafe(run_step(&ctx, &step))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|panic| {
                                Err(StepError::Internal {
                                    what: format!("step `{}`", step.key()),
                                    reason: crate::source::panic_text(&panic),
                                })
                            });
                        (node, result)
                    });
                }
            }
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (node, result) = joined.expect("step tasks catch their panics");
        in_flight.remove(&node);
        let key = graph.graph[node].key();
        let id = key.to_string();
        match result {
            Ok(()) => {
                status.insert(node, StepStatus::Done);
            }
            Err(e) => {
                let message = e.to_string();
                status.insert(node, StepStatus::Failed);
                ctx.update(&key, |r| {
                    r.status = Some(StepStatus::Failed);
                    r.finished = Some(Utc::now());
                    r.message = Some(message.clone());
                })
                .await?;
                failed.push((id, message));
                if fail_fast {
                    stop = true;
                }
            }
        }
    }
    let mut done = Vec::new();
    let mut not_started = Vec::new();
    for n in &order {
        let id = graph.graph[*n].id();
        match status.get(n) {
            Some(StepStatus::Done) => done.push(id),
            Some(StepStatus::Failed) => {}
            _ => not_started.push(id),
        }
    }
    Ok((done, failed, not_started))
}

/// Runs one step; the error is the message recorded in state and shown.
async fn run_step(ctx: &Arc<Ctx>, step: &Step) -> Result<(), StepError> {
    let id = step.key();
    crate::failpoint::hit(&format!("before:{id}"));
    crate::failpoint::panic_at(&id.to_string());
    ctx.update(&id, |r| {
        r.status = Some(StepStatus::Running);
        r.started.get_or_insert_with(Utc::now);
        r.message = None;
    })
    .await?;
    let result = match step {
        Step::Backup => backup(ctx).await,
        Step::Snapshot { table } => snapshot(ctx, table).await,
        Step::Copy { table, .. } => copy::copy(ctx, ctx.collection(table)).await,
        Step::Index {
            table,
            column,
            index,
        } => build_index(ctx, table, column, *index).await,
        Step::Validate { table } => validate(ctx, table).await,
        Step::Report => Ok(()),
    };
    match result {
        Ok(()) => {
            ctx.update(&id, |r| {
                r.status = Some(StepStatus::Done);
                r.finished = Some(Utc::now());
            })
            .await?;
            crate::failpoint::hit(&format!("after:{id}"));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn backup(ctx: &Arc<Ctx>) -> Result<(), StepError> {
    let Some(b) = &ctx.plan.backup else {
        return Ok(());
    };
    let mut names: Vec<String> = ctx
        .plan
        .collections
        .iter()
        .map(|c| c.source.clone())
        .collect();
    names.sort();
    names.dedup();
    let result = crate::backup::take(&ctx.plan.source, ctx.source.as_ref(), &names, b).await?;
    let Some(result) = result else {
        ctx.warn("backup: a JSON Lines source is already a file backup; skipped".into());
        return Ok(());
    };
    ctx.progress.message(&format!(
        "backup: {} ({} files, {:.1} MB)",
        result.archive.display(),
        result.files,
        result.bytes as f64 / 1e6
    ));
    let msg = format!("{}", result.archive.display());
    Ok(ctx
        .update(&StepKey::Backup, |r| r.message = Some(msg))
        .await?)
}

/// After a successful apply: the pre-apply tags of applies older than the
/// last `backup.keep` are removed, and on sync tables (re-applied again and
/// again, each sync adding versions) the versions older than this apply
/// that no tag holds are pruned, so replaced data is freed. Append and
/// overwrite tables keep their history: it may be the application's.
/// Failures are warnings: the data is already where it belongs.
async fn housekeeping(ctx: &Arc<Ctx>, keep: &HashSet<String>) {
    let started = ctx.record.lock().await.started;
    for c in &ctx.plan.collections {
        let table = c.table.as_str();
        match ctx.target.drop_tags(table, TAG_PREFIX, keep).await {
            Ok(dropped) if !dropped.is_empty() => ctx.progress.message(&format!(
                "housekeeping `{table}`: removed {} pre-apply tag(s) older than the last {} applies ({})",
                dropped.len(),
                keep.len(),
                dropped.join(", ")
            )),
            Ok(_) => {}
            Err(e) => ctx.warn(format!("housekeeping `{table}`: {e}")),
        }
        if c.mode != crate::plan::Mode::Sync {
            continue;
        }
        let age = (Utc::now() - started).max(chrono::Duration::zero());
        match ctx.target.prune_versions(table, age).await {
            Ok(0) => {}
            Ok(n) => ctx.progress.message(&format!(
                "housekeeping `{table}`: removed {n} old version(s) no rollback needs"
            )),
            Err(e) => ctx.warn(format!("housekeeping `{table}`: {e}")),
        }
    }
}

const TAG_PREFIX: &str = "lanceferry-before-";

fn pre_apply_tag(apply_id: &str) -> String {
    format!("{TAG_PREFIX}{apply_id}")
}

async fn snapshot(ctx: &Arc<Ctx>, table: &str) -> Result<(), StepError> {
    let id = StepKey::snapshot(table);
    let version = ctx.target.version(table).await?;
    if let Some(v) = version {
        let apply_id = ctx.apply_id().await;
        ctx.target
            .tag(table, &pre_apply_tag(&apply_id), v.version)
            .await?;
    }
    Ok(ctx
        .update(&id, |r| {
            r.table_existed = Some(version.is_some());
            r.version_before = version;
        })
        .await?)
}

async fn build_index(
    ctx: &Arc<Ctx>,
    table: &str,
    column: &str,
    kind: crate::plan::IndexType,
) -> Result<(), StepError> {
    let c = ctx.collection(table);
    let index = c
        .indexes
        .iter()
        .find(|i| i.column == column && i.kind == kind)
        .expect("index steps come from the plan");
    let space = ctx.source.collection(&c.source).await?.space;
    // After a sync onto an indexed table, the index is kept whole without
    // retraining: the rows the sync wrote are added to it (LanceDB's
    // optimize of indices); a sync that changed nothing leaves it alone.
    let copied = ctx.record(&StepKey::copy(table)).await;
    let synced = c.mode == crate::plan::Mode::Sync
        && copied
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("sync:"));
    // Whether rows changed is judged by the table, not by this run's count:
    // a sync resumed after its merges counts nothing new, yet its rows
    // still have to reach the index.
    let moved = ctx.target.version(table).await?.map(|v| v.version)
        != ctx
            .record(&StepKey::snapshot(table))
            .await
            .version_before
            .map(|v| v.version);
    // The same kind of index as the plan's, with the settings recorded
    // when it was last built; otherwise it is built anew (the plan changed
    // it). An index built before settings were recorded is kept.
    let same_kind = ctx
        .target
        .index_kind(table, column)
        .await?
        .is_some_and(|listed| kind.matches_listed(&listed));
    let spec = index.settings();
    let id = StepKey::Index {
        table: table.into(),
        column: column.into(),
        index: kind,
    };
    let apply_id = ctx.apply_id().await;
    let previous = ctx.store.load()?.index_settings(&id, Some(&apply_id));
    let same_spec = previous.as_ref().is_none_or(|p| *p == spec);
    if synced && same_kind && !same_spec {
        ctx.progress.message(&format!(
            "index: `{kind}` on `{table}.{column}`: the plan changed its settings ({} → {spec}); built anew",
            previous.as_deref().unwrap_or("?")
        ));
    }
    let outcome = if synced && same_kind && same_spec {
        if !moved {
            IndexOutcome::Skipped("the sync changed no row; the index is up to date".into())
        } else {
            ctx.target.optimize_indexes(table).await?;
            ctx.progress.message(&format!(
                "index: `{kind}` on `{table}.{column}` updated with the synced rows"
            ));
            IndexOutcome::Updated
        }
    } else {
        let stages = ctx.progress.index_stages(&format!("{table}.{column}"));
        ctx.target.create_index(table, index, space, stages).await?
    };
    match outcome {
        IndexOutcome::Built(built) if built != kind => ctx.progress.message(&format!(
            "index: `{kind}` on `{table}.{column}` built as `{built}`"
        )),
        IndexOutcome::Built(_) => ctx
            .progress
            .message(&format!("index: `{kind}` on `{table}.{column}` built")),
        IndexOutcome::Updated => {}
        // Up to date after a sync that changed nothing: not a warning.
        IndexOutcome::Skipped(why) if synced => ctx
            .progress
            .message(&format!("index: `{kind}` on `{table}.{column}`: {why}")),
        IndexOutcome::Skipped(why) => ctx.warn(format!(
            "index `{kind}` on `{table}.{column}` skipped: {why}"
        )),
    }
    let after = ctx.target.version(table).await?;
    Ok(ctx
        .update(&id, |r| {
            r.version_after = after;
            r.spec = Some(spec);
        })
        .await?)
}

async fn validate(ctx: &Arc<Ctx>, table: &str) -> Result<(), StepError> {
    let started = std::time::Instant::now();
    let c = ctx.collection(table);
    let known = ctx
        .skipped
        .lock()
        .expect("skipped lock")
        .get(table)
        .cloned();
    // A copy finished by an earlier, interrupted run left no list in
    // memory: find the skipped records again.
    let skipped = match known {
        Some(s) => s,
        None => crate::verify::skipped_ids(ctx.source.as_ref(), c).await?,
    };
    // The digests the copy step saved describe the table it left; the
    // index steps since only added commits (no row changed): move them on.
    let copy_rec = ctx.record(&StepKey::copy(table)).await;
    // Only if nothing but this apply wrote the table since.
    let last_recorded = ctx.record.lock().await.version_left(table);
    let current = if c.mode == crate::plan::Mode::Sync {
        ctx.target.version(table).await?
    } else {
        None
    };
    if let (Some(left), Some(now)) = (copy_rec.version_after, current)
        && last_recorded.map(|v| v.version) == Some(now.version)
    {
        sync::promote(&ctx.store.dir, table, left.version, now.version)?;
    }
    // After a sync or its first copy (digests of the source, taken as the
    // rows were written), every row is checked against them: all values
    // bit for bit, the source not read again.
    if c.mode == crate::plan::Mode::Sync
        && c.validate.sample == crate::plan::SampleSize::All
        && let Some(now) = current
        && let Some(check) = {
            let base = ctx.sync_base.lock().expect("sync base lock").remove(table);
            sync::validate_by_digests(&ctx.target, c, &ctx.store.dir, now, base.as_ref()).await?
        }
    {
        let digested = started.elapsed();
        let mut breaches = check.breaches;
        let search =
            crate::verify::search::for_collection(ctx.source.as_ref(), &ctx.target, c).await?;
        // Where validation's time went, for `-v`.
        tracing::debug!(
            "validate:{table}: {:.2} s reading the table against the digests, {:.2} s the search check",
            digested.as_secs_f64(),
            (started.elapsed() - digested).as_secs_f64()
        );
        // Shown in full when it fails (the breach alone leaves out the
        // worst decile and Chroma's recall); otherwise in the message.
        if let Some(s) = search.as_ref().filter(|s| !s.ok()) {
            ctx.progress
                .message(&format!("validate `{table}`: {}", s.render()));
        }
        let rows_ok = breaches.is_empty();
        breaches.extend(search.iter().filter_map(|s| s.breach.clone()));
        let message = if breaches.is_empty() {
            let base = format!(
                "{} rows; count and id set match the source, and every row equals its source record ({})",
                now.rows, check.how
            );
            match &search {
                Some(s) => format!("{base}; {}", s.render()),
                None => base,
            }
        } else {
            breaches.join("; ")
        };
        // Every row matched: the next sync's validation starts here.
        if rows_ok {
            sync::mark_checked(&ctx.store.dir, table, check.digests)?;
        }
        let m2 = message.clone();
        ctx.update(&StepKey::validate(table), |r| {
            r.rows = now.rows;
            r.message = Some(m2);
        })
        .await?;
        if breaches.is_empty() {
            ctx.progress
                .message(&format!("validate `{table}`: {message}"));
            return Ok(());
        }
        return Err(StepError::Validation {
            table: table.to_string(),
            breaches: message,
            plan_file: ctx.plan.file.display().to_string(),
        });
    }
    let snap = ctx.record(&StepKey::snapshot(table)).await;
    let others = crate::verify::Others::for_mode(c.mode, snap.version_before);
    let copied = ctx
        .copied_ids
        .lock()
        .expect("copied ids lock")
        .remove(table);
    let r = crate::verify::verify_collection_with(
        ctx.source.as_ref(),
        &ctx.target,
        c,
        &skipped,
        others,
        copied,
    )
    .await?;
    let values = &r.values;
    if let Some(s) = &values.cosine {
        ctx.progress.message(&format!(
            "validate `{table}`: {} records compared; cosine min {:.6} mean {:.6} p95 {:.6} max {:.6}",
            values.compared, s.min, s.mean, s.p95_low, s.max
        ));
    }
    for e in &values.examples {
        ctx.warn(format!("validate `{table}`: {e}"));
    }
    let mut v = r.ids.clone();
    v.breaches.extend(values.breaches.iter().cloned());
    // Shown in full when it fails (the breach alone leaves out the worst
    // decile and Chroma's recall); otherwise in the message.
    if let Some(s) = r.search.as_ref().filter(|s| !s.ok()) {
        ctx.progress
            .message(&format!("validate `{table}`: {}", s.render()));
    }
    v.breaches
        .extend(r.search.iter().filter_map(|s| s.breach.clone()));
    let rows = v.target_count;
    let message = if v.ok() {
        let base = match values.compared {
            0 => format!("{rows} rows; count and id set match the source"),
            n => format!(
                "{rows} rows; count and id set match the source, and the values of {n} records compared"
            ),
        };
        match &r.search {
            Some(s) => format!("{base}; {}", s.render()),
            None => base,
        }
    } else {
        v.breaches.join("; ")
    };
    let m2 = message.clone();
    ctx.update(&StepKey::validate(table), |r| {
        r.rows = rows;
        r.message = Some(m2);
    })
    .await?;
    if v.ok() {
        ctx.progress
            .message(&format!("validate `{table}`: {message}"));
        Ok(())
    } else {
        Err(StepError::Validation {
            table: table.to_string(),
            breaches: message,
            plan_file: ctx.plan.file.display().to_string(),
        })
    }
}

/// Writes the JSON report of an apply next to the state; returns its path.
fn write_report(ctx: &Ctx, rec: &ApplyRecord) -> Result<std::path::PathBuf, StateError> {
    let path = ctx
        .plan
        .state_dir
        .join("reports")
        .join(format!("{}-{}.json", ctx.plan.name, rec.id));
    let report = serde_json::json!({
        "plan": ctx.plan.name,
        "fingerprint": rec.fingerprint,
        "apply_id": rec.id,
        "status": rec.status,
        "started": rec.started,
        "finished": rec.finished,
        "source": ctx.plan.source.describe(),
        "target": ctx.store.target,
        "steps": rec.steps,
        "warnings": *ctx.warnings.lock().expect("warnings lock"),
    });
    crate::state::write_atomic(
        &path,
        &serde_json::to_vec_pretty(&report).expect("report serializes"),
    )?;
    Ok(path)
}
