//! `apply PLAN --prepare RUN --shards N`: create the tables empty with
//! their final schema, cut every collection into N ranges by an ids-only
//! pass, and record the run beside the target.

use std::collections::BTreeMap;

use chrono::Utc;
use futures::TryStreamExt;
use serde::Serialize;

use super::manifest::{CollectionRun, FORMAT, RunManifest, RunStore, ShardRange};
use super::{At, MAX_SHARDS, ShardError, bound};
use crate::engine::CopyProgress;
use crate::plan::Plan;
use crate::source::Source;
use crate::target::LanceTarget;
use crate::transform::Transformer;

/// What `--prepare` did.
#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    /// Where the run is recorded (`<target>/_lanceferry_runs/<RUN>`).
    pub location: String,
    /// The run had already been prepared, by this plan with this N: nothing
    /// was done (a retried prepare Job, say).
    pub already: bool,
    pub manifest: RunManifest,
}

/// Prepares run `run` of `plan` in `shards` shards.
pub async fn prepare(
    plan: &Plan,
    run: &str,
    shards: u32,
    progress: &dyn CopyProgress,
) -> Result<PrepareReport, ShardError> {
    super::check_run_name(run)?;
    if shards == 0 || shards > MAX_SHARDS {
        return Err(ShardError::BadShards {
            run: run.to_string(),
            shards,
            max: MAX_SHARDS,
        });
    }
    super::check_modes(plan, run, "prepare")?;
    let store = RunStore::open(&plan.target, run).await?;
    let fingerprint = plan.fingerprint();
    if let Some(existing) = store.read_run("prepare").await? {
        return same_run(existing, plan, &fingerprint, shards, &store);
    }

    let here = At::new(run, "prepare");
    let source = crate::source::open(&plan.source).map_err(|e| here.source(e))?;
    let target = LanceTarget::connect(&plan.target)
        .await
        .map_err(|e| here.target(e))?;
    let mut collections = Vec::with_capacity(plan.collections.len());
    for c in &plan.collections {
        let at = At::new(run, format!("prepare, table `{}`", c.table));
        let info = source
            .collection(&c.source)
            .await
            .map_err(|e| at.source(e))?;
        let vector = c.vector_column();
        let dim = match vector.dim.or(info.dimension) {
            Some(d) => d,
            None => {
                return Err(ShardError::NoDimension {
                    run: run.to_string(),
                    at: at.at.clone(),
                    column: vector.name.clone(),
                });
            }
        };
        let schema = Transformer::new(c, dim as usize).schema();

        // The table: created empty now, or an empty one with this schema
        // (an earlier prepare that died before recording the run).
        match target.version(&c.table).await.map_err(|e| at.target(e))? {
            None => {
                // A create killed before its first commit leaves files.
                target
                    .clear_partial(&c.table)
                    .await
                    .map_err(|e| at.target(e))?;
                target
                    .create_empty(&c.table, schema.clone())
                    .await
                    .map_err(|e| at.target(e))?;
            }
            Some(v) if v.rows == 0 => {
                let t = target
                    .open(&c.table)
                    .await
                    .map_err(|e| at.target(e))?
                    .ok_or_else(|| at.internal("the table vanished while it was prepared"))?;
                let have = t.schema().await.map_err(|e| {
                    at.target(crate::target::TargetError::Lance {
                        uri: target.uri().to_string(),
                        action: format!("reading the schema of `{}`", c.table),
                        hint: "retry".into(),
                        source: e,
                    })
                })?;
                let fields = |s: &arrow_schema::Schema| -> Vec<(String, arrow_schema::DataType)> {
                    s.fields()
                        .iter()
                        .map(|f| (f.name().clone(), f.data_type().clone()))
                        .collect()
                };
                if fields(have.as_ref()) != fields(schema.as_ref()) {
                    return Err(ShardError::TableSchema {
                        run: run.to_string(),
                        at: at.at.clone(),
                        table: c.table.clone(),
                        detail: format!("it has {have}, the plan writes {schema}"),
                    });
                }
                progress.message(&format!(
                    "prepare `{}`: the table exists, empty, with the plan's schema; it is used as it is",
                    c.table
                ));
            }
            Some(v) => {
                return Err(ShardError::TableExists {
                    run: run.to_string(),
                    at: at.at.clone(),
                    table: c.table.clone(),
                    rows: v.rows,
                });
            }
        }
        let start_version = target
            .version(&c.table)
            .await
            .map_err(|e| at.target(e))?
            .ok_or_else(|| at.internal("the table vanished right after it was created"))?
            .version;

        let (count, ids) = boundary_ids(source.as_ref(), c, info.count, shards, &at).await?;
        let ranges = (0..shards)
            .map(|k| {
                let (start, end) = (bound(count, shards, k), bound(count, shards, k + 1));
                ShardRange {
                    shard: k,
                    start,
                    end,
                    first_id: ids.get(&start).cloned(),
                    end_id: ids.get(&end).cloned(),
                }
            })
            .collect();
        progress.message(&format!(
            "prepare `{}`: {count} records in {shards} shards of about {} each; table created empty at version {start_version}",
            c.table,
            count / u64::from(shards)
        ));
        collections.push(CollectionRun {
            source: c.source.clone(),
            table: c.table.clone(),
            dim,
            start_version,
            count,
            ranges,
        });
    }

    let manifest = RunManifest {
        format: FORMAT,
        run: run.to_string(),
        plan: plan.name.clone(),
        fingerprint: fingerprint.clone(),
        shards,
        prepared_at: Utc::now(),
        host: crate::state::hostname(),
        collections,
    };
    if !store.create_run(&manifest).await? {
        // Another prepare of the same run got there first: fine if it
        // prepared the same thing.
        let existing = store.prepared("prepare").await?;
        return same_run(existing, plan, &fingerprint, shards, &store);
    }
    progress.message(&format!(
        "prepared run `{run}` ({shards} shards) at `{}`",
        store.location
    ));
    Ok(PrepareReport {
        location: store.location.clone(),
        already: false,
        manifest,
    })
}

/// A run prepared before: the same plan and N is "already prepared"
/// (nothing to do), anything else is refused.
fn same_run(
    existing: RunManifest,
    plan: &Plan,
    fingerprint: &str,
    shards: u32,
    store: &RunStore,
) -> Result<PrepareReport, ShardError> {
    let mut what = Vec::new();
    if existing.fingerprint != fingerprint {
        what.push(format!(
            "by plan `{}` ({}), not this plan `{}` ({fingerprint})",
            existing.plan, existing.fingerprint, plan.name
        ));
    }
    if existing.shards != shards {
        what.push(format!("with {} shards, not {shards}", existing.shards));
    }
    if !what.is_empty() {
        return Err(ShardError::PreparedDifferently {
            run: existing.run,
            location: store.location.clone(),
            what: what.join("; "),
        });
    }
    Ok(PrepareReport {
        location: store.location.clone(),
        already: true,
        manifest: existing,
    })
}

/// One pass over the collection's ids (no vectors): how many records the
/// read order holds, and the id at each shard boundary. The boundaries are
/// computed from the count the source reports and checked against the
/// records actually read, so the pass holds only N + 1 ids in memory.
async fn boundary_ids(
    source: &dyn Source,
    c: &crate::plan::Collection,
    expected: u64,
    shards: u32,
    at: &At,
) -> Result<(u64, BTreeMap<u64, String>), ShardError> {
    let mut wanted: Vec<u64> = (0..=shards)
        .map(|k| bound(expected, shards, k))
        .filter(|p| *p < expected)
        .collect();
    wanted.dedup();
    let mut want = wanted.into_iter().peekable();
    let mut ids = BTreeMap::new();
    let mut pos = 0u64;
    let mut stream = source.read_ids(&c.source, c.batch_size.max(1) as usize);
    while let Some(batch) = stream.try_next().await.map_err(|e| at.source(e))? {
        let end = pos + batch.len() as u64;
        while let Some(p) = want.peek().copied().filter(|p| *p < end) {
            ids.insert(p, batch[(p - pos) as usize].clone());
            want.next();
        }
        pos = end;
    }
    if pos != expected {
        return Err(at.changed(format!(
            "collection `{}` reports {expected} records, and a read of its ids found {pos}",
            c.source
        )));
    }
    Ok((pos, ids))
}
