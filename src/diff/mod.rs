//! `lanceferry plan`: what `apply` would do, and why, without doing it.
//!
//! Both sides are read, never written: the source's collections (counts,
//! dimensions, spaces, and one pass over the metadata without vectors for
//! the metadata lint), the target's tables (schema, rows, version, indexes;
//! a local target that does not exist yet is not even connected to, since
//! connecting may create its directory), and the state's record of the last
//! apply to this target (read, never locked). What apply would do is decided
//! by the same pure functions `apply` uses ([`crate::engine::decide`]), so
//! the two cannot disagree. [`render`] turns the report into text, Markdown
//! or JSON.

pub mod lint;
pub mod render;
pub mod saved;

use std::collections::BTreeMap;

use futures::TryStreamExt;
use schemars::JsonSchema;
use serde::Serialize;

use crate::engine::decide::{self, CopyStart, Refusal, Start};
use crate::plan::{Collection, ColumnType, DistanceSpace, Field, Metric, Mode, Plan};
use crate::source::{CollectionInfo, Source};
use crate::state::{ApplyRecord, ApplyStatus, StateStore, StepKey, StepStatus};
use crate::target::{LanceTarget, MIN_ROWS_FOR_VECTOR_INDEX, TableVersion};
use lint::{Code, Finding};

/// The version of the JSON output: minor for additions, major for changes.
pub const FORMAT_VERSION: &str = "1.0";

/// The JSON Schema of `plan --format json` (`schemas/plan-output.schema.json`).
pub fn json_schema_text() -> String {
    let schema = schemars::schema_for!(PlanReport);
    let mut text = serde_json::to_string_pretty(&schema).expect("the schema serializes");
    text.push('\n');
    text
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
    #[error(transparent)]
    Step(#[from] crate::engine::StepError),
    #[error(
        "reading table `{table}`: {source}\nhint: retry; if it persists the table may be damaged"
    )]
    Read {
        table: String,
        #[source]
        source: lancedb::Error,
    },
}

/// How the next apply would start.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StartKind {
    /// A new apply (none before, the last one completed or was rolled
    /// back, or the plan changed what it writes).
    Fresh,
    /// The interrupted apply with this id would be resumed.
    Resume { apply_id: String },
    /// The last apply left everything as the plan wants it.
    NothingToDo { apply_id: String },
}

/// What apply would do to one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `+` the table would be created.
    Create,
    /// `~` rows added or merged, or indexes built.
    Change,
    /// `-/+` the table's rows replaced.
    Replace,
    /// `=` nothing.
    None,
    /// `!` apply would stop at this collection (an error finding says why).
    Blocked,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Change => "~",
            Action::Replace => "-/+",
            Action::None => "=",
            Action::Blocked => "!",
        }
    }
}

/// A count, and whether it is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Count {
    pub value: u64,
    /// False when records the plan may skip (`on_error: skip`) or a sample
    /// make it an upper bound or an estimate.
    pub exact: bool,
}

/// The table as it is now.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct TableFacts {
    pub version: u64,
    pub rows: u64,
    /// `name: type` per column, in table order.
    pub schema: Vec<String>,
    /// `type on column` per index.
    pub indexes: Vec<String>,
}

/// What the source holds for one collection.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SourceFacts {
    pub count: u64,
    pub dimension: Option<u32>,
    pub space: String,
    /// Metadata key → type → records holding it, over the records
    /// `metadata_records` counts (no vectors read; empty when apply would
    /// copy nothing).
    pub metadata_keys: BTreeMap<String, BTreeMap<String, u64>>,
    /// Records `metadata_keys` tallied.
    pub metadata_records: u64,
    /// Whether those are every record of the collection; `false` for a
    /// sync found by Chroma's sequence numbers, which tallies the records
    /// it writes.
    pub metadata_complete: bool,
}

/// The state's record of the last apply to this target.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct LastApply {
    pub id: String,
    pub status: String,
    pub fingerprint: String,
    /// Whether it was made with this plan (same fingerprint).
    pub same_plan: bool,
    /// Table → the version the apply left it at.
    pub versions_left: BTreeMap<String, u64>,
}

/// One collection's block of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CollectionPlan {
    pub source: String,
    pub table: String,
    pub mode: String,
    pub action: Action,
    /// Why, in one sentence.
    pub reason: String,
    pub source_facts: SourceFacts,
    /// `None`: the table does not exist.
    pub table_facts: Option<TableFacts>,
    /// Records apply would write (0 when nothing is copied).
    pub rows_to_copy: Count,
    /// Rows the table would lose from its latest version (`replace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_dropped: Option<u64>,
    /// Rows an interrupted apply already committed (a resume skips them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_committed: Option<u64>,
    /// Rows a sync would delete (their ids left the source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_deleted: Option<u64>,
    /// The unified diff of the table's schema against the planned one
    /// (unchanged columns folded), or the planned schema of a new table.
    pub schema_diff: Vec<String>,
    /// Indexes apply would build.
    pub indexes: Vec<String>,
    /// Checks apply would run; their result is unknown until then.
    pub checks: Vec<String>,
    /// Said when the table changed since the last apply left it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_outside: Option<String>,
    pub lint: Vec<Finding>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PlanReport {
    pub format_version: String,
    pub plan: String,
    pub fingerprint: String,
    pub source: String,
    pub target: String,
    pub start: StartKind,
    /// `None`: this plan was never applied to this target.
    pub last_apply: Option<LastApply>,
    /// Said when an apply or rollback of this plan holds the lock right
    /// now: the plan describes the moment, which that run is changing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    pub summary: Summary,
    pub collections: Vec<CollectionPlan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
pub struct Summary {
    pub create: u64,
    pub change: u64,
    pub replace: u64,
    pub unchanged: u64,
    pub blocked: u64,
    pub rows_to_copy: u64,
    /// False if any collection's count is not exact.
    pub rows_exact: bool,
    pub rows_dropped: u64,
    /// Rows syncs would delete.
    pub rows_to_delete: u64,
    /// Findings that count (not accepted with `nolint`).
    pub errors: u64,
    pub warnings: u64,
    /// Findings accepted with `nolint`.
    pub accepted: u64,
}

impl PlanReport {
    /// Whether apply would change anything.
    pub fn has_changes(&self) -> bool {
        let s = &self.summary;
        s.create + s.change + s.replace > 0
    }

    /// The last line of every output.
    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        if !self.has_changes() && s.blocked == 0 {
            return "No changes. The target matches the plan.".into();
        }
        let mut line = format!(
            "Plan: {} to create, {} to change, {} to replace; {} rows to copy{}",
            s.create,
            s.change,
            s.replace,
            render::thousands(s.rows_to_copy),
            if s.rows_exact { "" } else { " at most" }
        );
        if s.rows_to_delete > 0 {
            line.push_str(&format!(
                ", {} to delete",
                render::thousands(s.rows_to_delete)
            ));
        }
        if s.blocked > 0 {
            line.push_str(&format!(
                "; {} blocked (apply would stop: see the errors)",
                s.blocked
            ));
        }
        line.push('.');
        line
    }
}

/// A column type as users write it in plans (`vector<float32>[64]`).
pub fn type_name(t: &arrow_schema::DataType) -> String {
    use arrow_schema::DataType as D;
    match t {
        D::Utf8 => "string".into(),
        D::LargeUtf8 => "large_string".into(),
        D::Int64 => "int64".into(),
        D::Int32 => "int32".into(),
        D::Float64 => "float64".into(),
        D::Float32 => "float32".into(),
        D::Float16 => "float16".into(),
        D::Boolean => "bool".into(),
        D::FixedSizeList(f, n) => format!("vector<{}>[{n}]", type_name(f.data_type())),
        D::List(f) => format!("list<{}>", type_name(f.data_type())),
        D::LargeList(f) => format!("large_list<{}>", type_name(f.data_type())),
        other => other.to_string().to_ascii_lowercase(),
    }
}

fn schema_lines(schema: &arrow_schema::Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
        .collect()
}

/// A unified diff of two schemas, one column a line, runs of unchanged
/// columns folded into one `# (N unchanged columns hidden)` line.
pub fn schema_diff(old: &[String], new: &[String]) -> Vec<String> {
    let old_text = old.iter().map(|l| format!("{l}\n")).collect::<String>();
    let new_text = new.iter().map(|l| format!("{l}\n")).collect::<String>();
    let diff = similar::TextDiff::from_lines(&old_text, &new_text);
    let mut out = Vec::new();
    for op in diff.ops() {
        let changes: Vec<_> = diff.iter_changes(op).collect();
        if op.tag() == similar::DiffTag::Equal {
            let n = changes.len();
            out.push(format!(
                "# ({n} unchanged column{} hidden)",
                if n == 1 { "" } else { "s" }
            ));
            continue;
        }
        for ch in changes {
            let sign = match ch.tag() {
                similar::ChangeTag::Delete => "-",
                similar::ChangeTag::Insert => "+",
                similar::ChangeTag::Equal => " ",
            };
            out.push(format!("{sign} {}", ch.value().trim_end()));
        }
    }
    out
}

fn space_name(s: DistanceSpace) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The metric a vector index would use, as LanceDB names it.
fn metric_of(m: Metric, space: DistanceSpace) -> &'static str {
    match (m, space) {
        (Metric::Auto, DistanceSpace::L2) | (Metric::L2, _) => "l2",
        (Metric::Auto, DistanceSpace::Cosine) | (Metric::Cosine, _) => "cosine",
        (Metric::Auto, DistanceSpace::Ip) | (Metric::Dot, _) => "dot",
    }
}

/// Whether a local target directory exists (an object-store URI is
/// assumed to, and connected to).
fn target_exists(uri: &str) -> bool {
    let uri = uri.strip_prefix("file://").unwrap_or(uri);
    uri.contains("://") || std::path::Path::new(uri).exists()
}

/// What `plan` is asked, beyond the plan itself: the `apply` flags that
/// change what apply would do.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// As `apply --allow-duplicates`.
    pub allow_duplicates: bool,
}

/// Builds the plan report. Writes nothing, anywhere.
pub async fn plan(plan: &Plan, opts: PlanOptions) -> Result<PlanReport, DiffError> {
    let store = StateStore::for_plan(plan);
    let state = store.load()?;
    let last = state.applies.last();
    let fingerprint = plan.fingerprint();
    let source = crate::source::open(&plan.source)?;
    let target = if target_exists(&plan.target.uri) {
        Some(LanceTarget::connect(&plan.target).await?)
    } else {
        None
    };

    let mut infos = Vec::new();
    let mut nows = Vec::new();
    let mut syncs = Vec::new();
    for c in &plan.collections {
        let info = source.collection(&c.source).await?;
        let now = match &target {
            Some(t) => t.version(&c.table).await?,
            None => None,
        };
        // What a sync would write: the digests compared, read-only.
        let sync = match (c.mode, &target, now) {
            (Mode::Sync, Some(t), Some(v)) => {
                let dim = c.vector_column().dim.or(info.dimension).unwrap_or(0) as usize;
                Some(crate::engine::sync::changes(source.as_ref(), t, c, &store.dir, v, dim).await?)
            }
            _ => None,
        };
        // A sync's indexes: built anew where the plan changed their kind
        // or settings, even when no row changed.
        let mut rebuilds = Vec::new();
        if let (Mode::Sync, Some(t), Some(_)) = (c.mode, &target, now) {
            for ix in &c.indexes {
                let kind = ix.kind.to_string();
                let has = t.index_kind(&c.table, &ix.column).await?;
                let same_kind = has.as_deref().is_some_and(|h| ix.kind.matches_listed(h));
                let key = crate::state::StepKey::Index {
                    table: c.table.clone(),
                    column: ix.column.clone(),
                    index: ix.kind,
                };
                if !same_kind {
                    rebuilds.push(format!(
                        "build `{kind}` on `{}` (the table has {})",
                        ix.column,
                        has.map_or("no index there".to_string(), |h| format!("`{h}`"))
                    ));
                } else if state
                    .index_settings(&key, None)
                    .is_some_and(|p| p != ix.settings())
                {
                    rebuilds.push(format!(
                        "rebuild `{kind}` on `{}` (the plan changed its settings)",
                        ix.column
                    ));
                }
            }
        }
        infos.push(info);
        nows.push(now);
        syncs.push(sync.map(|(ch, derived, tally)| (ch, derived, rebuilds, tally)));
    }
    let observed: Vec<decide::Observed> = plan
        .collections
        .iter()
        .zip(infos.iter().zip(&nows))
        .zip(&syncs)
        .map(|((c, (info, now)), sync)| decide::Observed {
            table: c.table.clone(),
            source_count: info.count,
            now: *now,
            changes: sync
                .as_ref()
                .map(|(ch, _, rebuilds, _)| ch.total() + rebuilds.len() as u64),
        })
        .collect();
    let start = decide::apply_start(last, &fingerprint, Some(&observed));
    let start_kind = match &start {
        Start::Fresh => StartKind::Fresh,
        Start::Resume(id) => StartKind::Resume {
            apply_id: id.clone(),
        },
        Start::NothingToDo(id) => StartKind::NothingToDo {
            apply_id: id.clone(),
        },
    };
    let resumed = match &start {
        Start::Resume(id) => last.filter(|l| &l.id == id),
        _ => None,
    };

    let mut collections = Vec::new();
    for (((c, info), now), sync) in plan.collections.iter().zip(&infos).zip(&nows).zip(syncs) {
        let cp = collection_plan(
            sync,
            source.as_ref(),
            target.as_ref(),
            c,
            info,
            *now,
            &start,
            resumed,
            last,
            opts,
        )
        .await?;
        collections.push(cp);
    }
    let mut summary = Summary {
        rows_exact: true,
        ..Summary::default()
    };
    for c in &collections {
        match c.action {
            Action::Create => summary.create += 1,
            Action::Change => summary.change += 1,
            Action::Replace => summary.replace += 1,
            Action::None => summary.unchanged += 1,
            Action::Blocked => summary.blocked += 1,
        }
        summary.rows_to_copy += c.rows_to_copy.value;
        summary.rows_exact &= c.rows_to_copy.exact;
        summary.rows_dropped += c.rows_dropped.unwrap_or(0);
        summary.rows_to_delete += c.rows_deleted.unwrap_or(0);
        for f in &c.lint {
            match (f.counts(), f.severity) {
                (false, _) => summary.accepted += 1,
                (true, lint::Severity::Error) => summary.errors += 1,
                (true, lint::Severity::Warning) => summary.warnings += 1,
            }
        }
    }
    Ok(PlanReport {
        format_version: FORMAT_VERSION.into(),
        plan: plan.name.clone(),
        fingerprint: fingerprint.clone(),
        source: plan.source.describe(),
        target: crate::plan::redact::url(&store.target),
        start: start_kind,
        running: store.running().map(|h| {
            format!(
                "apply `{}` (pid {} on `{}`, since {}) is running now; plan again when it ends",
                h.apply_id, h.pid, h.host, h.started
            )
        }),
        last_apply: last.map(|l| LastApply {
            id: l.id.clone(),
            status: serde_json::to_value(l.status)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            fingerprint: l.fingerprint.clone(),
            same_plan: l.fingerprint == fingerprint,
            versions_left: plan
                .collections
                .iter()
                .filter_map(|c| {
                    l.version_left(&c.table)
                        .map(|v| (c.table.clone(), v.version))
                })
                .collect(),
        }),
        summary,
        collections,
    })
}

/// What one table looks like now: facts, schema lines, vector dimension.
async fn table_facts(
    target: &LanceTarget,
    name: &str,
    now: TableVersion,
) -> Result<(TableFacts, arrow_schema::SchemaRef), DiffError> {
    let read = |source| DiffError::Read {
        table: name.to_string(),
        source,
    };
    let t = target.open(name).await?.ok_or_else(|| DiffError::Read {
        table: name.to_string(),
        source: lancedb::Error::TableNotFound {
            name: name.to_string(),
            source: "dropped while lanceferry was reading it".into(),
        },
    })?;
    let schema = t.schema().await.map_err(read)?;
    let indexes = t
        .list_indices()
        .await
        .map_err(read)?
        .into_iter()
        .map(|i| format!("{} on {}", i.index_type, i.columns.join(", ")))
        .collect();
    Ok((
        TableFacts {
            version: now.version,
            rows: now.rows,
            schema: schema_lines(&schema),
            indexes,
        },
        schema,
    ))
}

/// What a sync would write: its changes, whether the old digests were
/// derived from the table, the index rebuilds, and the metadata tally of
/// the records it read deciding.
type SyncFindings = (crate::digest::Changes, bool, Vec<String>, MetadataTally);

#[allow(clippy::too_many_arguments)]
async fn collection_plan(
    sync: Option<SyncFindings>,
    source: &dyn Source,
    target: Option<&LanceTarget>,
    c: &Collection,
    info: &CollectionInfo,
    now: Option<TableVersion>,
    start: &Start,
    resumed: Option<&ApplyRecord>,
    last: Option<&ApplyRecord>,
    opts: PlanOptions,
) -> Result<CollectionPlan, DiffError> {
    let dim = c.vector_column().dim.or(info.dimension);
    let planned = dim.map(|d| crate::transform::Transformer::new(c, d as usize).schema());
    if planned.is_none() {
        // Apply's copy fails here (no vectors, no `dim:`): say so now.
        let mut lint = vec![Finding::new(
            Code::PH103,
            format!(
                "collection `{}` has no vectors yet, so its dimension is unknown; apply would stop here (set `dim:` on the `{}` column)",
                c.source,
                c.vector_column().name
            ),
        )];
        lint::accept(&mut lint, &c.nolint);
        return Ok(CollectionPlan {
            source: c.source.clone(),
            table: c.table.clone(),
            mode: c.mode.to_string(),
            action: Action::Blocked,
            reason: "apply would stop at this collection: see the error below".into(),
            source_facts: SourceFacts {
                count: info.count,
                dimension: None,
                space: space_name(info.space),
                metadata_keys: BTreeMap::new(),
                metadata_records: 0,
                metadata_complete: false,
            },
            table_facts: None,
            rows_to_copy: Count {
                value: 0,
                exact: true,
            },
            rows_dropped: None,
            rows_committed: None,
            rows_deleted: None,
            schema_diff: Vec::new(),
            indexes: Vec::new(),
            checks: Vec::new(),
            changed_outside: None,
            lint,
        });
    }
    let planned_lines = planned
        .as_ref()
        .map(|s| schema_lines(s))
        .unwrap_or_default();
    let (facts, existing) = match (target, now) {
        (Some(t), Some(v)) => {
            let (f, s) = table_facts(t, &c.table, v).await?;
            (Some(f), Some(s))
        }
        _ => (None, None),
    };
    let skips = c
        .columns
        .iter()
        .any(|col| col.on_error == crate::plan::OnError::Skip);
    let mut lint = Vec::new();

    // What apply would do, decided as apply decides it.
    let mut rows_committed = None;
    // Whether the next commit replaces the table's rows (a fresh `replace`;
    // a resumed one only appends to its own).
    let mut overwrites = false;
    let (action, mut reason, mut copied) = match start {
        Start::NothingToDo(id) => (
            Action::None,
            format!(
                "unchanged since apply `{id}`: the table is at the version it left, the source has the count it had"
            ),
            0,
        ),
        _ => {
            let (before, recorded, copy_done, steps_left) = match resumed {
                Some(rec) => {
                    let before = rec
                        .step(&StepKey::snapshot(&c.table))
                        .filter(|s| s.table_existed.is_some())
                        .map_or(now, |s| s.version_before);
                    let copy = rec.step(&StepKey::copy(&c.table));
                    let left: Vec<String> = rec
                        .steps
                        .iter()
                        .filter(|(k, r)| {
                            k.table() == Some(c.table.as_str())
                                && r.status != Some(StepStatus::Done)
                        })
                        .map(|(k, _)| k.to_string())
                        .collect();
                    (
                        before,
                        copy.and_then(|r| r.version_after),
                        copy.is_some_and(|r| r.status == Some(StepStatus::Done)),
                        left,
                    )
                }
                None => (now, None, false, Vec::new()),
            };
            if copy_done {
                let validated = resumed
                    .and_then(|r| r.step(&StepKey::validate(&c.table)))
                    .is_some_and(|r| r.status == Some(StepStatus::Done));
                if validated {
                    (
                        Action::None,
                        "finished by the interrupted apply".to_string(),
                        0,
                    )
                } else {
                    (
                        Action::Change,
                        format!(
                            "resume: the copy is done; left to do: {}",
                            if steps_left.is_empty() {
                                "indexes and validation".to_string()
                            } else {
                                steps_left.join(", ")
                            }
                        ),
                        0,
                    )
                }
            } else {
                let overlap = match before {
                    Some(b)
                        if decide::needs_overlap(c.mode, before, recorded)
                            && !opts.allow_duplicates =>
                    {
                        match target {
                            Some(t) => Some(
                                crate::verify::source_ids_in_table(source, t, c, b.version).await?,
                            ),
                            None => None,
                        }
                    }
                    _ => None,
                };
                match decide::copy_start(
                    &c.table,
                    c.mode,
                    before,
                    recorded,
                    now,
                    overlap,
                    opts.allow_duplicates,
                ) {
                    Ok(s) => {
                        rows_committed = (s.committed > 0).then_some(s.committed);
                        overwrites = s.commit == crate::target::Commit::Overwrite;
                        let (a, r) = describe(c.mode, now, &s, info.count);
                        (a, r, info.count.saturating_sub(s.committed))
                    }
                    Err(refusal) => {
                        lint.push(match &refusal {
                            Refusal::Exists { .. } => Finding::new(
                                Code::PH101,
                                format!(
                                    "table `{}` exists ({} rows at version {}) and the mode is `create`: apply would stop here",
                                    c.table,
                                    now.map_or(0, |v| v.rows),
                                    now.map_or(0, |v| v.version)
                                ),
                            ),
                            Refusal::Duplicates { overlap, .. } => Finding::new(
                                Code::DS102,
                                format!(
                                    "the table already holds {} of the source's {} ids (exact); appending would store them twice, so apply would stop here",
                                    render::thousands(*overlap),
                                    render::thousands(info.count)
                                ),
                            ),
                            Refusal::ChangedOutside { .. } => Finding::new(
                                Code::PH102,
                                refusal.to_string().lines().next().unwrap_or("").to_string(),
                            ),
                        });
                        (
                            Action::Blocked,
                            "apply would stop at this collection: see the error below".to_string(),
                            0,
                        )
                    }
                }
            }
        }
    };

    // The schema: a new table's planned columns, or the diff.
    let schema_diff = match (&facts, &planned) {
        (Some(f), Some(_)) if action == Action::Replace || action == Action::Change => {
            schema_diff(&f.schema, &planned_lines)
        }
        (None, Some(_)) => planned_lines.iter().map(|l| format!("+ {l}")).collect(),
        _ => Vec::new(),
    };

    // Lint over the facts.
    if let (Some(f), Action::Replace, true) = (&facts, action, overwrites)
        && f.rows > 0
    {
        lint.push(Finding::new(
            Code::DS101,
            format!(
                "replacing `{}` drops its {} rows from the latest version (rollback restores them)",
                c.table,
                render::thousands(f.rows)
            ),
        ));
    }
    let mut action = action;
    // A sync writes the difference only: its counts, exact, from digests.
    let mut rows_deleted = None;
    let mut rebuilds = Vec::new();
    let mut tally = None;
    if let (Some((ch, derived, r, t)), Action::Change) = (sync, action) {
        tally = Some(t);
        rebuilds = r;
        let derived = if derived {
            " (the recorded digests did not describe the table's version, so they were derived from the table)"
        } else {
            ""
        };
        if ch.total() == 0 && rebuilds.is_empty() {
            action = Action::None;
            reason = format!("`sync`: no record changed since the last apply (exact){derived}");
            copied = 0;
        } else if ch.total() == 0 {
            reason = format!(
                "`sync`: no record changed since the last apply (exact){derived}; indexes: {}",
                rebuilds.join(", ")
            );
            copied = 0;
        } else {
            reason = format!(
                "`sync`: {} to insert, {} to update, {} to delete (exact){derived}",
                render::thousands(ch.insert),
                render::thousands(ch.update),
                render::thousands(ch.delete)
            );
            copied = ch.insert + ch.update;
            rows_deleted = (ch.delete > 0).then_some(ch.delete);
        }
    }
    if let (Some(existing), Some(planned)) = (&existing, &planned)
        && matches!(c.mode, Mode::Append | Mode::Upsert | Mode::Sync)
        && action != Action::Blocked
    {
        let before = lint.len();
        schema_lint(c, existing, planned, &mut lint);
        if lint.len() > before {
            // LanceDB refuses rows of another shape: apply stops here.
            action = Action::Blocked;
            reason = "apply would stop at this collection: see the errors below".into();
            copied = 0;
            rows_committed = None;
        }
    }
    let space = info.space;
    for ix in c.indexes.iter().filter(|i| i.kind.is_vector()) {
        let metric = metric_of(ix.metric, space);
        if metric != metric_of(Metric::Auto, space) {
            lint.push(Finding::new(
                Code::VX102,
                format!(
                    "the `{}` index on `{}` uses `{metric}`, but the source's vectors live in `{}` space; results would be ranked differently than in Chroma",
                    ix.kind, ix.column, space_name(space)
                ),
            ));
        }
        let rows_after = match (c.mode, facts.as_ref()) {
            (Mode::Append, Some(f)) => f.rows + info.count,
            // At least the larger of the two; merged ids are not counted twice.
            (Mode::Upsert, Some(f)) => f.rows.max(info.count),
            _ => info.count,
        };
        if (rows_after as usize) < MIN_ROWS_FOR_VECTOR_INDEX
            && !matches!(action, Action::None | Action::Blocked)
        {
            lint.push(Finding::new(
                Code::VX104,
                format!(
                    "`{}` would hold {} rows; the `{}` index needs {MIN_ROWS_FOR_VECTOR_INDEX} to train, so apply skips it (searches stay exact, by brute force)",
                    c.table, rows_after, ix.kind
                ),
            ));
        }
    }
    let dot = space == DistanceSpace::Ip
        || c.indexes
            .iter()
            .any(|i| i.kind.is_vector() && metric_of(i.metric, space) == "dot");
    if dot && action != Action::None {
        norm_lint(source, c, &mut lint).await?;
    }
    let metadata_keys = if action != Action::None && action != Action::Blocked {
        // A sync tallied the records it read while deciding: no second
        // pass over the metadata.
        let tally = match tally {
            Some(t) => t,
            None => metadata_stats(source, c).await?,
        };
        metadata_lint(c, &tally, &mut lint);
        tally
    } else {
        MetadataTally::default()
    };
    lint::accept(&mut lint, &c.nolint);
    lint.sort_by_key(|f| f.code);

    // The changed-outside note.
    // (An interrupted apply's table is judged by `copy_start`: PH102.)
    let changed_outside = last
        .filter(|l| l.status == ApplyStatus::Completed)
        .and_then(|l| l.version_left(&c.table).map(|v| (l, v)))
        .and_then(|(l, left)| match now {
            Some(n) if n.version != left.version => Some(format!(
                "table `{}` is at version {}, and apply `{}` left it at version {}: something other than this plan's applies wrote to it since",
                c.table, n.version, l.id, left.version
            )),
            None => Some(format!(
                "table `{}` is gone: apply `{}` left it at version {}, and it was dropped since",
                c.table, l.id, left.version
            )),
            _ => None,
        });

    let indexes = if copied == 0 && !rebuilds.is_empty() {
        rebuilds
    } else if copied > 0 || matches!(action, Action::Create | Action::Replace) {
        c.indexes
            .iter()
            .map(|ix| {
                let exists = facts.as_ref().is_some_and(|f| {
                    f.indexes
                        .iter()
                        .any(|i| i.ends_with(&format!(" on {}", ix.column)))
                });
                let metric = if ix.kind.is_vector() {
                    format!(", metric {}", metric_of(ix.metric, space))
                } else {
                    String::new()
                };
                format!(
                    "{} `{}` on `{}`{metric}",
                    if exists { "rebuild" } else { "build" },
                    ix.kind,
                    ix.column
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let checks = if action == Action::None || action == Action::Blocked {
        Vec::new()
    } else {
        checks(c, info.count, skips)
    };
    Ok(CollectionPlan {
        source: c.source.clone(),
        table: c.table.clone(),
        mode: c.mode.to_string(),
        action,
        reason,
        source_facts: SourceFacts {
            count: info.count,
            dimension: info.dimension,
            space: space_name(space),
            metadata_keys: metadata_keys.keys,
            metadata_records: metadata_keys.records,
            metadata_complete: metadata_keys.all,
        },
        rows_dropped: (action == Action::Replace && overwrites)
            .then(|| facts.as_ref().map_or(0, |f| f.rows))
            .filter(|n| *n > 0),
        table_facts: facts,
        rows_to_copy: Count {
            value: copied,
            exact: !skips,
        },
        rows_committed,
        rows_deleted,
        schema_diff,
        indexes,
        checks,
        changed_outside,
        lint,
    })
}

/// The action and reason of a copy that would run.
fn describe(mode: Mode, now: Option<TableVersion>, s: &CopyStart, count: u64) -> (Action, String) {
    let resume = if s.committed > 0 {
        format!(
            " (resuming: {} rows already committed)",
            render::thousands(s.committed)
        )
    } else {
        String::new()
    };
    let n = render::thousands(count);
    match (mode, now) {
        (_, None) => (
            Action::Create,
            format!("`{mode}`: the table does not exist, so it is created with {n} rows"),
        ),
        (Mode::Create, Some(_)) => (
            Action::Create,
            format!("`create`: finishing the table an interrupted apply created{resume}"),
        ),
        (Mode::Replace, Some(v)) if s.committed == 0 => (
            Action::Replace,
            format!(
                "`replace`: the table's {} rows give way to the source's {n}",
                render::thousands(v.rows)
            ),
        ),
        (Mode::Replace, Some(_)) => (
            Action::Replace,
            format!("`replace`: finishing the replacement{resume}"),
        ),
        (Mode::Append, Some(v)) => (
            Action::Change,
            format!(
                "`append`: {n} rows added to the table's {}{resume}",
                render::thousands(v.rows.saturating_sub(s.committed))
            ),
        ),
        (Mode::Sync, Some(v)) => (
            Action::Change,
            format!(
                "`sync`: the table's {} rows are brought to the source's {n} records",
                render::thousands(v.rows)
            ),
        ),
        (Mode::Upsert, Some(v)) => (
            Action::Change,
            format!(
                "`upsert`: {n} records merged on the id into the table's {} rows (new ids inserted, existing ones updated)",
                render::thousands(v.rows)
            ),
        ),
    }
}

/// The checks apply's validate step would run.
fn checks(c: &Collection, count: u64, skips: bool) -> Vec<String> {
    let v = &c.validate;
    let mut out = Vec::new();
    let expected = if skips {
        format!("at most {}", render::thousands(count))
    } else {
        render::thousands(count)
    };
    match v.count {
        crate::plan::CountRule::Exact => out.push(format!("count = {expected}")),
        crate::plan::CountRule::Tolerance(t) => out.push(format!("count = {expected} ± {t}")),
        crate::plan::CountRule::Skip => {}
    }
    if v.ids {
        out.push("every source id exactly once".into());
    }
    let what = match v.sample {
        crate::plan::SampleSize::All => "every record".to_string(),
        crate::plan::SampleSize::Records(n) => format!("a seeded sample of {n} records"),
    };
    let mut fields = Vec::new();
    if v.content {
        fields.push("content");
    }
    if v.metadata {
        fields.push("metadata");
    }
    if !fields.is_empty() {
        out.push(format!("{} of {what} equal", fields.join(" and ")));
    }
    out.push(format!("vector cosine ≥ {} for {what}", v.min_cosine));
    if let Some(s) = &v.search {
        out.push(match s.min_recall {
            Some(r) => format!(
                "search recall@{} ≥ {r} on {} seeded queries",
                s.k, s.queries
            ),
            None => format!(
                "search recall@{} on {} seeded queries (reported)",
                s.k, s.queries
            ),
        });
    }
    out
}

/// SC101 and VX101: an existing table's columns against the planned ones
/// (compared by the type names users read, so field names and
/// nullability inside lists do not count).
fn schema_lint(
    c: &Collection,
    existing: &arrow_schema::Schema,
    planned: &arrow_schema::Schema,
    lint: &mut Vec<Finding>,
) {
    use arrow_schema::DataType as D;
    let norm = |t: &D| type_name(t).replace("large_string", "string");
    for want in planned.fields() {
        let Ok(have) = existing.field_with_name(want.name()) else {
            lint.push(Finding::new(
                Code::SC101,
                format!(
                    "`{}` has no column `{}`, which the plan writes",
                    c.table,
                    want.name()
                ),
            ));
            continue;
        };
        match (want.data_type(), have.data_type()) {
            (D::FixedSizeList(_, n), D::FixedSizeList(_, m)) if n != m => {
                lint.push(Finding::new(
                    Code::VX101,
                    format!(
                        "`{}.{}` holds vectors of dimension {m}; the source's are {n}",
                        c.table,
                        want.name()
                    ),
                ));
            }
            (a, b) if norm(a) != norm(b) => lint.push(Finding::new(
                Code::SC101,
                format!(
                    "`{}.{}` is `{}` in the table and `{}` in the plan",
                    c.table,
                    want.name(),
                    type_name(b),
                    type_name(a)
                ),
            )),
            _ => {}
        }
    }
    for have in existing.fields() {
        if planned.field_with_name(have.name()).is_err() && !have.is_nullable() {
            lint.push(Finding::new(
                Code::SC101,
                format!(
                    "`{}.{}` is a required (non-null) column the plan does not write",
                    c.table,
                    have.name()
                ),
            ));
        }
    }
}

/// VX103: norms of a sample of the source's vectors (its first batch).
async fn norm_lint(
    source: &dyn Source,
    c: &Collection,
    lint: &mut Vec<Finding>,
) -> Result<(), DiffError> {
    const SAMPLE: usize = 256;
    let mut stream = source.read(&c.source, SAMPLE);
    let Some(batch) = stream.try_next().await? else {
        return Ok(());
    };
    drop(stream);
    let dim = batch.dim.max(1);
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for v in batch.embeddings.chunks(dim) {
        let n = v
            .iter()
            .map(|x| (*x as f64) * (*x as f64))
            .sum::<f64>()
            .sqrt();
        lo = lo.min(n);
        hi = hi.max(n);
    }
    if hi > 0.0 && ((lo - 1.0).abs() > 1e-3 || (hi - 1.0).abs() > 1e-3) {
        lint.push(Finding::new(
            Code::VX103,
            format!(
                "inner-product search over vectors whose norms range {lo:.3}–{hi:.3} (estimated from the first {} records), not 1",
                batch.len()
            ),
        ));
    }
    Ok(())
}

/// Metadata keys with the records holding each type: what the metadata
/// lints (MD101–MD103) read, and what `plan` shows.
#[derive(Debug, Clone, Default)]
pub struct MetadataTally {
    /// Key → type → records holding it.
    pub keys: BTreeMap<String, BTreeMap<String, u64>>,
    /// Records tallied.
    pub records: u64,
    /// Every record of the collection (else: the records a sync writes).
    pub all: bool,
}

impl MetadataTally {
    pub fn add(&mut self, b: &crate::source::SourceBatch) {
        self.records += b.metadatas.len() as u64;
        for m in b.metadatas.iter().flatten() {
            for (k, v) in m {
                *self
                    .keys
                    .entry(k.clone())
                    .or_default()
                    .entry(v.type_name().to_string())
                    .or_default() += 1;
            }
        }
    }
}

/// Every metadata key of a collection, with the records holding each
/// type: one pass over the metadata, no vectors read.
async fn metadata_stats(source: &dyn Source, c: &Collection) -> Result<MetadataTally, DiffError> {
    let mut tally = MetadataTally {
        all: true,
        ..Default::default()
    };
    let mut stream = source.read_fields(&c.source, c.batch_size as usize);
    while let Some(b) = stream.try_next().await? {
        tally.add(&b);
    }
    Ok(tally)
}

/// MD101–MD103 from the metadata statistics.
fn metadata_lint(c: &Collection, tally: &MetadataTally, lint: &mut Vec<Finding>) {
    let (stats, count) = (&tally.keys, tally.records);
    if count == 0 {
        return;
    }
    // A sync found by sequence numbers reads only the records it writes:
    // the findings are about those.
    let scope = if tally.all {
        String::new()
    } else {
        format!(
            " (of the {} records this sync writes)",
            render::thousands(count)
        )
    };
    for col in &c.columns {
        let Field::MetadataKey(key) = &col.from else {
            continue;
        };
        if col.ty == ColumnType::Json {
            continue;
        }
        let Some(types) = stats.get(key) else {
            let text = if tally.all {
                format!(
                    "no record of `{}` has `metadata.{key}`: column `{}` would be all null",
                    c.source, col.name
                )
            } else {
                format!(
                    "none of the {} records this sync writes has `metadata.{key}`: column `{}` would be null in their rows",
                    render::thousands(count),
                    col.name
                )
            };
            lint.push(Finding::new(Code::MD102, text));
            continue;
        };
        let present: u64 = types.values().sum();
        let want = match col.ty {
            ColumnType::String => "string",
            ColumnType::Int64 => "int",
            ColumnType::Float64 => "float",
            ColumnType::Bool => "bool",
            ColumnType::ListString => "list<string>",
            ColumnType::ListInt64 => "list<int>",
            ColumnType::ListFloat64 => "list<float>",
            ColumnType::ListBool => "list<bool>",
            ColumnType::Json | ColumnType::Vector => "",
        };
        if types.len() > 1 || !types.contains_key(want) {
            let share = |n: u64| 100.0 * n as f64 / present as f64;
            let shares: Vec<String> = types
                .iter()
                .map(|(t, n)| format!("{t} {:.1}%", share(*n)))
                .collect();
            lint.push(Finding::new(
                Code::MD101,
                format!(
                    "`metadata.{key}` holds {} of the {} records that have it; column `{}` is `{}`{}{scope}",
                    shares.join(", "),
                    render::thousands(present),
                    col.name,
                    col.ty,
                    if col.coerce { " (coerce: true)" } else { "" }
                ),
            ));
        }
        if col.required && present < count {
            lint.push(Finding::new(
                Code::MD103,
                format!(
                    "{} of {} records lack `metadata.{key}`, which column `{}` requires; `on_error: {}` decides what happens to them{scope}",
                    render::thousands(count - present),
                    render::thousands(count),
                    col.name,
                    serde_json::to_value(col.on_error)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_diffs_fold_unchanged_columns() {
        let old: Vec<String> = [
            "id: string",
            "a: int64",
            "b: int64",
            "c: int64",
            "vector: vector<float32>[4]",
        ]
        .map(String::from)
        .into();
        let new: Vec<String> = [
            "id: string",
            "a: int64",
            "b: int64",
            "c: string",
            "vector: vector<float32>[4]",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            schema_diff(&old, &new),
            [
                "# (3 unchanged columns hidden)",
                "- c: int64",
                "+ c: string",
                "# (1 unchanged column hidden)"
            ]
        );
    }

    #[test]
    fn type_names_read_like_the_plan() {
        use arrow_schema::{DataType, Field};
        let v = DataType::FixedSizeList(Field::new("item", DataType::Float32, true).into(), 8);
        assert_eq!(type_name(&v), "vector<float32>[8]");
        let l = DataType::List(Field::new("item", DataType::Utf8, true).into());
        assert_eq!(type_name(&l), "list<string>");
    }

    #[test]
    fn the_summary_line_says_what_and_how_much() {
        let mut r = PlanReport {
            format_version: FORMAT_VERSION.into(),
            plan: "p".into(),
            fingerprint: "f".into(),
            source: "s".into(),
            target: "t".into(),
            start: StartKind::Fresh,
            running: None,
            last_apply: None,
            summary: Summary {
                rows_exact: true,
                ..Summary::default()
            },
            collections: Vec::new(),
        };
        assert_eq!(r.summary_line(), "No changes. The target matches the plan.");
        r.summary.create = 1;
        r.summary.change = 1;
        r.summary.rows_to_copy = 101_234;
        assert_eq!(
            r.summary_line(),
            "Plan: 1 to create, 1 to change, 0 to replace; 101,234 rows to copy."
        );
        r.summary.rows_exact = false;
        r.summary.blocked = 1;
        assert!(r.summary_line().contains("rows to copy at most; 1 blocked"));
    }
}
