//! `apply PLAN --commit RUN`: once every shard reported, commit each
//! table's fragments (every shard's newest attempt, in shard order, so the
//! table holds the source's order) as one `Append` tagged with the run id,
//! then build the indexes and validate as `apply` does, and report.
//!
//! Run twice, it writes nothing the second time: before committing it
//! looks for the run id among the table's transactions since the start
//! version (Lance itself would take the same append again and double the
//! rows), and an index the plan asks for that is already there is kept.
//! A coordinator that died anywhere is therefore simply run again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, TransactionBuilder};
use lance::table::format::Fragment;
use object_store::path::Path;
use serde::Serialize;

use super::manifest::{RunStore, newest};
use super::{At, PLAN_PROPERTY, RUN_PROPERTY, SHARDS_PROPERTY, ShardError};
use crate::engine::CopyProgress;
use crate::plan::Plan;
use crate::target::{IndexOutcome, LanceTarget};

/// What `--commit` did, per table.
#[derive(Debug, Clone, Serialize)]
pub struct CommitReport {
    pub run: String,
    pub plan: String,
    pub shards: u32,
    pub tables: Vec<TableCommit>,
    /// Every table validated without a breach.
    pub ok: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableCommit {
    pub table: String,
    /// The version `--prepare` recorded (the empty table).
    pub start_version: u64,
    /// The version holding the run's rows (this commit's, or an earlier
    /// commit's of the same run); `None` if the run had no rows to commit.
    pub committed_version: Option<u64>,
    /// False when an earlier `--commit` of this run had committed it.
    pub committed_now: bool,
    /// The table's version after indexes.
    pub version: u64,
    pub rows: u64,
    pub skipped: u64,
    pub shards: Vec<ShardRows>,
    /// Attempts superseded by a newer one of the same shard.
    pub superseded_attempts: usize,
    /// Their data files removed after this commit (only the commit that
    /// writes the table removes any: at that moment nothing references
    /// them).
    pub files_removed: u64,
    pub indexes: Vec<String>,
    pub validation: String,
    pub breaches: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardRows {
    pub shard: u32,
    pub attempt: String,
    pub host: String,
    pub rows: u64,
    pub skipped: u64,
    pub fragments: usize,
}

/// Commits run `run` of `plan`.
pub async fn commit(
    plan: &Plan,
    run: &str,
    progress: Arc<dyn CopyProgress>,
) -> Result<CommitReport, ShardError> {
    super::check_run_name(run)?;
    super::check_modes(plan, run, "commit")?;
    let store = RunStore::open(&plan.target, run).await?;
    let manifest = store.prepared("commit").await?;
    let fingerprint = plan.fingerprint();
    if manifest.fingerprint != fingerprint {
        return Err(ShardError::PlanChanged {
            run: run.to_string(),
            at: "commit".into(),
            prepared: manifest.fingerprint,
            now: fingerprint,
        });
    }
    let n = manifest.shards;
    let (chosen, older) = newest(store.attempts("commit").await?, n);
    let missing: Vec<String> = (0..n)
        .filter(|k| !chosen.contains_key(k))
        .map(|k| k.to_string())
        .collect();
    if !missing.is_empty() {
        let reported: Vec<String> = chosen.keys().map(|k| k.to_string()).collect();
        return Err(ShardError::Missing {
            run: run.to_string(),
            shards: n,
            missing: missing.join(", "),
            reported: if reported.is_empty() {
                "none".into()
            } else {
                reported.join(", ")
            },
        });
    }

    let here = At::new(run, "commit");
    let source = crate::source::open(&plan.source).map_err(|e| here.source(e))?;
    let target = LanceTarget::connect(&plan.target)
        .await
        .map_err(|e| here.target(e))?;
    let mut warnings = Vec::new();
    let mut tables = Vec::with_capacity(plan.collections.len());

    // 1. The commits, one transaction per table.
    for c in &plan.collections {
        let at = At::new(run, format!("commit, table `{}`", c.table));
        let m = manifest
            .collection(&c.table)
            .ok_or_else(|| at.internal("the run manifest has no such table"))?;
        let mut shard_rows = Vec::with_capacity(n as usize);
        let mut fragments: Vec<Fragment> = Vec::new();
        // Data files of the chosen attempts, per shard (for the existence
        // check, and so that no chosen file is ever removed).
        let mut chosen_files: Vec<(u32, Vec<String>)> = Vec::new();
        let (mut rows, mut skipped) = (0u64, 0u64);
        let latest = super::open_dataset(&plan.target, &c.table, None)
            .await
            .map_err(at.lance(
                "opening the table",
                "the table is created by --prepare; check `target.lancedb.uri`, its credentials, and that nobody dropped it",
            ))?;
        let earlier = super::committed_at(&latest, m.start_version, run)
            .await
            .map_err(at.lance(
                "reading the table's transactions since the run was prepared",
                "retry; if a version was cleaned up meanwhile, the run cannot be checked: look at the table before committing again",
            ))?;
        for (k, a) in &chosen {
            // A shard re-run after this table was committed (another table
            // of the run was not) reports only the tables still to commit.
            let Some(t) = a.table(&c.table) else {
                if earlier.is_some() {
                    continue;
                }
                return Err(at.internal(format!(
                    "attempt `{}` of shard {k} has no table `{}`",
                    a.attempt, c.table
                )));
            };
            rows += t.rows;
            skipped += t.skipped;
            shard_rows.push(ShardRows {
                shard: *k,
                attempt: a.attempt.clone(),
                host: a.host.clone(),
                rows: t.rows,
                skipped: t.skipped,
                fragments: t.fragments.len(),
            });
            chosen_files.push((*k, t.files().map(String::from).collect()));
            fragments.extend(t.fragments.iter().cloned().map(|mut f| {
                // Fresh ids are given at commit: shards number theirs alike.
                f.id = 0;
                f
            }));
        }

        let (committed_version, committed_now, files_removed) = match earlier {
            Some(v) => {
                progress.message(&format!(
                    "commit `{}`: already committed by this run at version {v}; nothing written",
                    c.table
                ));
                (Some(v), false, 0)
            }
            None => {
                // A create: the table must still be the empty one.
                let there = latest.count_rows(None).await.map_err(
                    at.lance("counting the table's rows", "retry; nothing was committed"),
                )? as u64;
                if there > 0 {
                    return Err(ShardError::TableChanged {
                        run: run.to_string(),
                        at: at.at.clone(),
                        rows: there,
                    });
                }
                let data_store = latest
                    .object_store(None)
                    .await
                    .map_err(at.lance("opening the table's store", "retry"))?;
                let data_dir = latest.data_dir();
                let file_path = |f: &str| Path::from(format!("{data_dir}/{f}"));
                for (k, files) in &chosen_files {
                    for f in files {
                        let present = data_store.exists(&file_path(f)).await.map_err(at.lance(
                            format!("checking data file `{f}`"),
                            "retry; nothing was committed",
                        ))?;
                        if !present {
                            return Err(ShardError::MissingFile {
                                run: run.to_string(),
                                at: at.at.clone(),
                                shard: *k,
                                path: f.clone(),
                            });
                        }
                    }
                }
                if fragments.is_empty() {
                    progress.message(&format!(
                        "commit `{}`: the collection has no rows to commit; the table stays empty",
                        c.table
                    ));
                    (None, false, 0)
                } else {
                    let properties = HashMap::from([
                        (RUN_PROPERTY.to_string(), run.to_string()),
                        (SHARDS_PROPERTY.to_string(), n.to_string()),
                        (PLAN_PROPERTY.to_string(), plan.name.clone()),
                    ]);
                    // Lance 14's CommitBuilder keeps its own transaction
                    // properties but does not write them: they go on the
                    // transaction itself.
                    // A strict overwrite of the empty table the run was
                    // prepared on, with no retry: Lance writes version
                    // start+1 or fails if it exists. So of two coordinators
                    // committing at once exactly one succeeds (an append
                    // would be rebased over the other's and double the
                    // table), and nothing written since prepare is lost.
                    let schema = latest.schema().clone();
                    let transaction = TransactionBuilder::new(
                        m.start_version,
                        Operation::Overwrite {
                            fragments: std::mem::take(&mut fragments),
                            schema,
                            config_upsert_values: None,
                            initial_bases: None,
                        },
                    )
                    .transaction_properties(Some(Arc::new(properties)))
                    .build();
                    let done = CommitBuilder::new(Arc::new(latest))
                        .with_max_retries(0)
                        .execute(transaction)
                        .await
                        .map_err(at.lance(
                            "committing the shards",
                            format!(
                                "another commit may have won (two coordinators, or a write since --prepare): run `lanceferry apply PLAN --commit {run}` again; it first looks for this run among the table's transactions, so it never commits twice, and says if someone else wrote the table"
                            ),
                        ))?;
                    let version = done.manifest.version;
                    progress.message(&format!(
                        "commit `{}`: {rows} rows from {n} shard(s) committed as version {version} (prepared at version {})",
                        c.table, m.start_version
                    ));
                    // Superseded attempts of the shards: nothing references
                    // their files (this commit took the newest of each
                    // shard, and no earlier one committed this run).
                    let keep: HashSet<&str> = chosen_files
                        .iter()
                        .flat_map(|(_, fs)| fs.iter().map(String::as_str))
                        .collect();
                    let mut removed = 0u64;
                    for a in &older {
                        let Some(t) = a.table(&c.table) else { continue };
                        for f in t.files().filter(|f| !keep.contains(f)) {
                            match data_store.delete(&file_path(f)).await {
                                Ok(()) => removed += 1,
                                Err(lance::Error::NotFound { .. }) => {}
                                Err(e) => warnings.push(format!(
                                    "commit `{}`: could not remove `{f}` of superseded attempt `{}` of shard {}: {e} (an unreferenced file; Lance's cleanup removes it later)",
                                    c.table, a.attempt, a.shard
                                )),
                            }
                        }
                    }
                    if removed > 0 {
                        progress.message(&format!(
                            "commit `{}`: removed {removed} data file(s) of superseded shard attempts",
                            c.table
                        ));
                    }
                    (Some(version), true, removed)
                }
            }
        };
        for s in &shard_rows {
            progress.message(&format!(
                "  shard {}: {} rows in {} fragment(s) (attempt `{}` on `{}`)",
                s.shard, s.rows, s.fragments, s.attempt, s.host
            ));
        }
        tables.push(TableCommit {
            table: c.table.clone(),
            start_version: m.start_version,
            committed_version,
            committed_now,
            version: committed_version.unwrap_or(m.start_version),
            rows,
            skipped,
            shards: shard_rows,
            superseded_attempts: older.iter().filter(|a| a.table(&c.table).is_some()).count(),
            files_removed,
            indexes: Vec::new(),
            validation: String::new(),
            breaches: Vec::new(),
        });
    }

    // 2. The indexes, in plan order; one already built (a commit run again
    // after it died past this point) is kept, so a second commit writes
    // nothing.
    for (c, t) in plan.collections.iter().zip(tables.iter_mut()) {
        let at = At::new(run, format!("commit, table `{}`", c.table));
        if c.indexes.is_empty() {
            continue;
        }
        let space = source
            .collection(&c.source)
            .await
            .map_err(|e| at.source(e))?
            .space;
        for index in &c.indexes {
            let kind = index.kind;
            let there = target
                .index_kind(&c.table, &index.column)
                .await
                .map_err(|e| at.target(e))?;
            let what = format!("`{kind}` on `{}.{}`", c.table, index.column);
            if !t.committed_now && there.is_some_and(|listed| kind.matches_listed(&listed)) {
                progress.message(&format!("index: {what}: already built"));
                t.indexes.push(format!("{what}: already built"));
                continue;
            }
            match target
                .create_index(
                    &c.table,
                    index,
                    space,
                    progress.index_stages(&format!("{}.{}", c.table, index.column)),
                )
                .await
                .map_err(|e| at.target(e))?
            {
                IndexOutcome::Built(_) | IndexOutcome::Updated => {
                    progress.message(&format!("index: {what} built"));
                    t.indexes.push(format!("{what}: built"));
                }
                IndexOutcome::Skipped(why) => {
                    let w = format!("index {what} skipped: {why}");
                    progress.message(&format!("warning: {w}"));
                    warnings.push(w);
                    t.indexes.push(format!("{what}: skipped"));
                }
            }
        }
        if let Some(v) = target.version(&c.table).await.map_err(|e| at.target(e))? {
            t.version = v.version;
        }
    }

    // 3. Validation, exactly as apply's validate step (a `create` table is
    // exactly its source).
    let mut ok = true;
    for (c, t) in plan.collections.iter().zip(tables.iter_mut()) {
        let at = At::new(run, format!("commit, table `{}`", c.table));
        let skipped = crate::verify::skipped_ids(source.as_ref(), c)
            .await
            .map_err(|e| at.verify(e))?;
        let r = crate::verify::verify_collection(
            source.as_ref(),
            &target,
            c,
            &skipped,
            crate::verify::Others::None,
        )
        .await
        .map_err(|e| at.verify(e))?;
        if let Some(s) = &r.values.cosine {
            progress.message(&format!(
                "validate `{}`: {} records compared; cosine min {:.6} mean {:.6} p95 {:.6} max {:.6}",
                c.table, r.values.compared, s.min, s.mean, s.p95_low, s.max
            ));
        }
        for e in &r.values.examples {
            warnings.push(format!("validate `{}`: {e}", c.table));
        }
        let mut breaches = r.ids.breaches.clone();
        breaches.extend(r.values.breaches.iter().cloned());
        // `validate.search`: its breach fails the commit like the others.
        breaches.extend(r.search.iter().filter_map(|s| s.breach.clone()));
        let rows = r.ids.target_count;
        t.validation = if breaches.is_empty() {
            match r.values.compared {
                0 => format!("{rows} rows; count and id set match the source"),
                n => format!(
                    "{rows} rows; count and id set match the source, and the values of {n} records compared"
                ),
            }
        } else {
            breaches.join("; ")
        };
        if let Some(s) = &r.search {
            t.validation.push_str(&format!("; {}", s.render()));
        }
        progress.message(&format!("validate `{}`: {}", c.table, t.validation));
        ok &= breaches.is_empty();
        t.breaches = breaches;
    }
    Ok(CommitReport {
        run: run.to_string(),
        plan: plan.name.clone(),
        shards: n,
        tables,
        ok,
        warnings,
    })
}
