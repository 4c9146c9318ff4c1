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
//! `upsert` simply starts again (merging on the id is idempotent).

mod copy;
pub mod rollback;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use petgraph::graph::NodeIndex;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::graph::{Step, StepGraph};
use crate::plan::{Collection, Plan, Source as SourceSpec};
use crate::source::Source;
use crate::state::{
    ApplyRecord, ApplyStatus, Lock, State, StateError, StateStore, StepRecord, StepStatus,
};
use crate::target::{IndexOutcome, LanceTarget};

pub use copy::CopyProgress;

/// Options of one `apply`.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub fail_fast: bool,
    pub lock_timeout: Duration,
    /// Progress lines / bars on stderr.
    pub progress: Arc<dyn CopyProgress>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
}

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
    pub state: Mutex<State>,
    pub apply_index: usize,
    pub progress: Arc<dyn CopyProgress>,
    pub warnings: std::sync::Mutex<Vec<String>>,
    /// Ids skipped by `on_error: skip`, per table (for validation).
    pub skipped: std::sync::Mutex<HashMap<String, HashSet<String>>>,
}

impl Ctx {
    pub async fn update(
        &self,
        step: &str,
        f: impl FnOnce(&mut StepRecord),
    ) -> Result<(), StateError> {
        let mut st = self.state.lock().await;
        let rec = st.applies[self.apply_index]
            .steps
            .entry(step.to_string())
            .or_default();
        f(rec);
        self.store.save(&st)
    }

    pub async fn record(&self, step: &str) -> StepRecord {
        let st = self.state.lock().await;
        st.applies[self.apply_index]
            .steps
            .get(step)
            .cloned()
            .unwrap_or_default()
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

/// Runs (or resumes) an apply of `plan`.
pub async fn apply(plan: Plan, opts: ApplyOptions) -> Result<ApplySummary, EngineError> {
    let store = StateStore::new(&plan.state_dir, &plan.name);
    let fingerprint = plan.fingerprint();
    let mut state = store.load(&plan.target.uri)?;

    // Resume the last apply when it did not finish and the plan is the same.
    let resumable = state.applies.last().is_some_and(|a| {
        matches!(a.status, ApplyStatus::Running | ApplyStatus::Failed)
            && a.fingerprint == fingerprint
    });
    let apply_id = if resumable {
        state.applies.last().expect("checked").id.clone()
    } else {
        crate::state::new_apply_id()
    };
    let _lock: Lock = store.lock(&apply_id, opts.lock_timeout)?;
    // Re-read under the lock: another apply may have finished meanwhile.
    state = store.load(&plan.target.uri)?;

    let source = crate::source::open(&plan.source)?;
    let target = LanceTarget::connect(&plan.target).await?;

    if !resumable
        && let Some(last) = state.applies.last()
        && last.status == ApplyStatus::Completed
        && last.fingerprint == fingerprint
        && unchanged_since(&plan, last, source.as_ref(), &target).await?
    {
        return Ok(ApplySummary {
            apply_id: last.id.clone(),
            nothing_to_do: true,
            resumed: false,
            done: Vec::new(),
            failed: Vec::new(),
            not_started: Vec::new(),
            report: None,
            warnings: Vec::new(),
        });
    }

    if !resumable {
        state.applies.push(ApplyRecord {
            id: apply_id.clone(),
            fingerprint: fingerprint.clone(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            started: Utc::now(),
            finished: None,
            status: ApplyStatus::Running,
            steps: BTreeMap::new(),
            rollback: None,
        });
    } else if let Some(last) = state.applies.last_mut() {
        last.status = ApplyStatus::Running;
    }
    let apply_index = state.applies.len() - 1;
    store.save(&state)?;

    let graph = StepGraph::compile(&plan);
    let ctx = Arc::new(Ctx {
        plan,
        source,
        target,
        store,
        state: Mutex::new(state),
        apply_index,
        progress: opts.progress.clone(),
        warnings: std::sync::Mutex::new(Vec::new()),
        skipped: std::sync::Mutex::new(HashMap::new()),
    });

    let (done, failed, not_started) = walk(&ctx, &graph, opts.fail_fast).await?;

    let ok = failed.is_empty() && not_started.is_empty();
    let report = {
        let mut st = ctx.state.lock().await;
        let rec = &mut st.applies[apply_index];
        rec.status = if ok {
            ApplyStatus::Completed
        } else {
            ApplyStatus::Failed
        };
        rec.finished = Some(Utc::now());
        ctx.store.save(&st)?;
        write_report(&ctx, &st.applies[apply_index])?
    };
    let warnings = ctx.warnings.lock().expect("warnings lock").clone();
    Ok(ApplySummary {
        apply_id,
        nothing_to_do: false,
        resumed: resumable,
        done,
        failed,
        not_started,
        report: Some(report),
        warnings,
    })
}

/// True when every table is still at the version the last apply left and
/// every source collection still has the count it had.
async fn unchanged_since(
    plan: &Plan,
    last: &ApplyRecord,
    source: &dyn Source,
    target: &LanceTarget,
) -> Result<bool, EngineError> {
    for c in &plan.collections {
        let Some(copy) = last.steps.get(&format!("copy:{}", c.table)) else {
            return Ok(false);
        };
        let info = source.collection(&c.source).await?;
        if copy.source_count != Some(info.count) {
            return Ok(false);
        }
        let now = target.version(&c.table).await?;
        let after = last
            .steps
            .iter()
            .filter(|(k, _)| {
                k.ends_with(&format!(":{}", c.table)) || k.contains(&format!(":{}:", c.table))
            })
            .filter_map(|(_, r)| r.version_after)
            .max_by_key(|v| v.version);
        if now.map(|v| v.version) != after.map(|v| v.version) {
            return Ok(false);
        }
    }
    Ok(true)
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
        let id = graph.graph[*n].id();
        let rec = ctx.record(&id).await;
        if rec.status == Some(StepStatus::Done) {
            status.insert(*n, StepStatus::Done);
            // A validation the interrupted run finished is not repeated,
            // but its result is the one a reader of this run needs.
            if let (Some(table), Some(message)) = (id.strip_prefix("validate:"), &rec.message) {
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
                    running.spawn(async move { (node, run_step(&ctx, &step).await) });
                }
            }
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (node, result) = joined.expect("a step task panicked");
        in_flight.remove(&node);
        let id = graph.graph[node].id();
        match result {
            Ok(()) => {
                status.insert(node, StepStatus::Done);
            }
            Err(message) => {
                status.insert(node, StepStatus::Failed);
                ctx.update(&id, |r| {
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
async fn run_step(ctx: &Arc<Ctx>, step: &Step) -> Result<(), String> {
    let id = step.id();
    ctx.update(&id, |r| {
        r.status = Some(StepStatus::Running);
        r.started.get_or_insert_with(Utc::now);
        r.message = None;
    })
    .await
    .map_err(|e| e.to_string())?;
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
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn backup(ctx: &Arc<Ctx>) -> Result<(), String> {
    let Some(b) = &ctx.plan.backup else {
        return Ok(());
    };
    let result = match &ctx.plan.source {
        SourceSpec::ChromaDir { path } => {
            let (path, dir, keep) = (path.clone(), b.dir.clone(), b.keep);
            tokio::task::spawn_blocking(move || crate::backup::create(&path, &dir, keep))
                .await
                .expect("backup thread panicked")
        }
        // No directory to archive: export the planned collections.
        SourceSpec::ChromaHttp { url, .. } => {
            let mut names: Vec<String> = ctx
                .plan
                .collections
                .iter()
                .map(|c| c.source.clone())
                .collect();
            names.sort();
            names.dedup();
            crate::backup::create_jsonl(
                ctx.source.as_ref(),
                &names,
                &crate::backup::url_stem(url),
                &b.dir,
                b.keep,
            )
            .await
        }
        SourceSpec::Jsonl { .. } => {
            ctx.warn("backup: a JSON Lines source is already a file backup; skipped".into());
            return Ok(());
        }
    }
    .map_err(|e| e.to_string())?;
    ctx.progress.message(&format!(
        "backup: {} ({} files, {:.1} MB)",
        result.archive.display(),
        result.files,
        result.bytes as f64 / 1e6
    ));
    let msg = format!("{}", result.archive.display());
    ctx.update("backup", |r| r.message = Some(msg))
        .await
        .map_err(|e| e.to_string())
}

fn pre_apply_tag(apply_id: &str) -> String {
    format!("lanceferry-before-{apply_id}")
}

async fn snapshot(ctx: &Arc<Ctx>, table: &str) -> Result<(), String> {
    let id = format!("snapshot:{table}");
    let version = ctx.target.version(table).await.map_err(|e| e.to_string())?;
    if let Some(v) = version {
        let apply_id = ctx.state.lock().await.applies[ctx.apply_index].id.clone();
        ctx.target
            .tag(table, &pre_apply_tag(&apply_id), v.version)
            .await
            .map_err(|e| e.to_string())?;
    }
    ctx.update(&id, |r| {
        r.table_existed = Some(version.is_some());
        r.version_before = version;
    })
    .await
    .map_err(|e| e.to_string())
}

async fn build_index(
    ctx: &Arc<Ctx>,
    table: &str,
    column: &str,
    kind: crate::plan::IndexType,
) -> Result<(), String> {
    let c = ctx.collection(table);
    let index = c
        .indexes
        .iter()
        .find(|i| i.column == column && i.kind == kind)
        .expect("index steps come from the plan");
    let space = ctx
        .source
        .collection(&c.source)
        .await
        .map_err(|e| e.to_string())?
        .space;
    let outcome = ctx
        .target
        .create_index(table, index, space)
        .await
        .map_err(|e| e.to_string())?;
    let id = format!("index:{table}:{column}:{kind}");
    match outcome {
        IndexOutcome::Built => ctx
            .progress
            .message(&format!("index: `{kind}` on `{table}.{column}` built")),
        IndexOutcome::Skipped(why) => ctx.warn(format!(
            "index `{kind}` on `{table}.{column}` skipped: {why}"
        )),
    }
    let after = ctx.target.version(table).await.map_err(|e| e.to_string())?;
    ctx.update(&id, |r| r.version_after = after)
        .await
        .map_err(|e| e.to_string())
}

async fn validate(ctx: &Arc<Ctx>, table: &str) -> Result<(), String> {
    let c = ctx.collection(table);
    let skipped = ctx
        .skipped
        .lock()
        .expect("skipped lock")
        .get(table)
        .cloned()
        .unwrap_or_default();
    let snap = ctx.record(&format!("snapshot:{table}")).await;
    let others =
        crate::verify::Others::for_mode(c.mode, snap.version_before.map(|v| v.rows).unwrap_or(0));
    let r = crate::verify::verify_collection(ctx.source.as_ref(), &ctx.target, c, &skipped, others)
        .await
        .map_err(|e| e.to_string())?;
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
    let rows = v.target_count;
    let message = if v.ok() {
        match values.compared {
            0 => format!("{rows} rows; count and id set match the source"),
            n => format!(
                "{rows} rows; count and id set match the source, and the values of {n} records compared"
            ),
        }
    } else {
        v.breaches.join("; ")
    };
    let m2 = message.clone();
    ctx.update(&format!("validate:{table}"), |r| {
        r.rows = rows;
        r.message = Some(m2);
    })
    .await
    .map_err(|e| e.to_string())?;
    if v.ok() {
        ctx.progress
            .message(&format!("validate `{table}`: {message}"));
        Ok(())
    } else {
        Err(format!(
            "validation of `{table}` failed: {message}\nhint: inspect the table; `lanceferry rollback {}` restores every table to its state before this apply",
            ctx.plan.file.display()
        ))
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
        "target": ctx.plan.target.uri,
        "steps": rec.steps,
        "warnings": *ctx.warnings.lock().expect("warnings lock"),
    });
    crate::state::write_atomic(
        &path,
        &serde_json::to_vec_pretty(&report).expect("report serializes"),
    )?;
    Ok(path)
}
