//! Sharded apply on Lance's distributed write: one `--prepare`, many
//! `--shard K/N` workers (any machines), one `--commit`.
//!
//! - `prepare` ([`prepare::prepare`]) creates every table empty with its
//!   final schema, reads each collection's ids once (no vectors) to cut it
//!   into N ranges of source positions, and records the run — the version
//!   each table starts from, each collection's count, every shard's range
//!   and the ids at its edges — in `run.json` beside the target
//!   (`<target uri>/_lanceferry_runs/<RUN>/`, written put-if-absent).
//! - a worker ([`worker::shard`]) reads the source in its usual order,
//!   skips to its range, checks the ids at its edges, transforms exactly as
//!   the copy step does, and writes Lance data files *without committing*
//!   (`InsertBuilder::execute_uncommitted_stream`); then it records the
//!   fragments it wrote in `shards/<K>/<attempt>.json` (put-if-absent, a new
//!   name per attempt). Running a shard again writes a new attempt and never
//!   touches another shard's.
//! - `commit` ([`commit::commit`]) takes each shard's newest attempt, and
//!   only when all N reported, commits every table's fragments in one
//!   `Append` transaction tagged `lanceferry.run = RUN` (read version: the
//!   start version), then builds the indexes and validates as `apply` does.
//!   Before committing it looks for the run id among the table's
//!   transactions since the start version: Lance accepts the same
//!   transaction twice (and doubles the rows), so that check is what makes
//!   a second `--commit` write nothing.
//!
//! Only `mode: create` (and `mode: replace` onto a table that does not
//! exist yet, which is the same thing) can be sharded: every shard's rows
//! are new rows of a new table. docs/scale-out.md is the user's guide.

pub mod commit;
pub mod manifest;
pub mod prepare;
pub mod worker;

use std::collections::HashMap;

use lance::Dataset;

use crate::plan::{Mode, Plan, Target};

pub use commit::{CommitReport, commit};
pub use prepare::{PrepareReport, prepare};
pub use worker::{ShardReport, shard};

/// The transaction property that names the run a commit belongs to.
pub const RUN_PROPERTY: &str = "lanceferry.run";
/// The transaction property holding the run's shard count.
pub const SHARDS_PROPERTY: &str = "lanceferry.shards";
/// The transaction property holding the plan's name.
pub const PLAN_PROPERTY: &str = "lanceferry.plan";

/// Why a sharded command refused or failed. Every message names the run
/// and where it happened (`prepare`, `shard K/N`, `commit`, and the table),
/// and ends with `\nhint: ` and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(
        "run name `{run}` is not allowed: use 1 to 64 letters, digits, `_`, `-` or `.`, not starting with `.`\nhint: pick a name such as `canvas-2025-06-01`; it becomes part of an object path beside the target"
    )]
    BadRun { run: String },
    #[error(
        "run `{run}`: {shards} shards is not a shard count\nhint: give `--shards N` with N from 1 to {max}"
    )]
    BadShards { run: String, shards: u32, max: u32 },
    #[error(
        "run `{run}`: shard {shard}/{shards} does not exist: shards count from 0, so K must be below N\nhint: run `--shard K/{shards}` for K = 0 .. {last}",
        last = shards.saturating_sub(1)
    )]
    NoSuchShard {
        run: String,
        shard: u32,
        shards: u32,
    },
    #[error(
        "run `{run}`, {at}: `mode: {mode}` cannot be sharded\nhint: a sharded apply writes new rows into a new table: it supports `mode: create` (and `mode: replace` onto a table that does not exist yet); sharding a sync, an upsert or an append is not defined. Apply this plan without --prepare/--shard/--commit, or split the collection into its own plan"
    )]
    Mode {
        run: String,
        at: String,
        mode: String,
    },
    #[error(
        "run `{run}` is not prepared: there is no `{location}/run.json`\nhint: run `lanceferry apply PLAN --prepare {run} --shards N` first (once), then the shards, then `--commit {run}`"
    )]
    NotPrepared { run: String, location: String },
    #[error(
        "run `{run}` was already prepared differently at `{location}`: {what}\nhint: a run is prepared once; give a new run name for another plan or shard count, or finish run `{run}` with the plan and shard count it was prepared with"
    )]
    PreparedDifferently {
        run: String,
        location: String,
        what: String,
    },
    #[error(
        "run `{run}`, {at}: the plan changed since the run was prepared (prepared with {prepared}, now {now})\nhint: the shards and the commit must use the plan `--prepare` used (same source, tables, modes, columns, indexes; batch size and thresholds may differ); restore it, or prepare a new run"
    )]
    PlanChanged {
        run: String,
        at: String,
        prepared: String,
        now: String,
    },
    #[error(
        "run `{run}` was prepared with {prepared} shards, not {given} (shard {shard}/{given} refused)\nhint: run `--shard K/{prepared} --run {run}` for K = 0 .. {last}; the shard count is fixed when the run is prepared",
        last = prepared.saturating_sub(1)
    )]
    WrongShards {
        run: String,
        shard: u32,
        given: u32,
        prepared: u32,
    },
    #[error(
        "run `{run}`, {at}: table `{table}` already exists and holds {rows} rows\nhint: a sharded apply creates its tables: choose another `table:`, or drop `{table}` first if it is not needed (a table an earlier apply created is dropped by `lanceferry rollback`)"
    )]
    TableExists {
        run: String,
        at: String,
        table: String,
        rows: u64,
    },
    #[error(
        "run `{run}`, {at}: the empty table `{table}` has another schema than the plan writes ({detail})\nhint: drop the empty table `{table}`, or fix the plan's columns, then prepare again"
    )]
    TableSchema {
        run: String,
        at: String,
        table: String,
        detail: String,
    },
    #[error(
        "run `{run}`, {at}: the source changed since the run was prepared: {what}\nhint: shards are cut by position in the source's read order, so the source must not be written between --prepare and the last shard; stop the writers (or read a copy of the Chroma directory) and prepare a new run; nothing is committed until --commit, so the tables are still empty"
    )]
    SourceChanged {
        run: String,
        at: String,
        what: String,
    },
    #[error(
        "run `{run}`, {at}: the collection has no vectors yet, so its dimension is unknown\nhint: set `dim:` on the `{column}` column in the plan"
    )]
    NoDimension {
        run: String,
        at: String,
        column: String,
    },
    #[error(
        "run `{run}`, commit: missing shards: {missing} (of {shards}; reported: {reported})\nhint: run `lanceferry apply PLAN --shard K/{shards} --run {run}` for each missing K (a shard whose worker died is simply run again), then `--commit {run}` again; nothing was committed"
    )]
    Missing {
        run: String,
        shards: u32,
        missing: String,
        reported: String,
    },
    #[error(
        "run `{run}`, {at}: the run was already committed (table version {version}), so what this shard writes would never be used\nhint: nothing to do: the run is complete. To migrate again, prepare a new run into a new table"
    )]
    Committed {
        run: String,
        at: String,
        version: u64,
    },
    #[error(
        "run `{run}`, {at}: the table holds {rows} rows this run did not write (another run or another writer committed to it since --prepare)\nhint: nothing was committed; look at the table's history (`lance` `versions()`): if those rows are another run's, this run is not needed; otherwise drop the table and prepare a new run"
    )]
    TableChanged { run: String, at: String, rows: u64 },
    #[error(
        "run `{run}`, {at}: data file `{path}` written by shard {shard} is missing\nhint: run that shard again (`lanceferry apply PLAN --shard {shard}/N --run {run}`: it writes a new attempt), then `--commit {run}` again; never run Lance's cleanup with `delete_unverified` while a run is unfinished (docs/scale-out.md)"
    )]
    MissingFile {
        run: String,
        at: String,
        shard: u32,
        path: String,
    },
    #[error(
        "run `{run}`, {at}: the run manifest at `{location}`: {source}\nhint: check that the object store answers and that the credentials may read, list and write under `{location}`; then run the same command again"
    )]
    Store {
        run: String,
        at: String,
        location: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error(
        "run `{run}`, {at}: `{path}` in the run manifest cannot be read: {reason}\nhint: it was not written by this version of lanceferry, or it is damaged; if it is a shard attempt, remove it and run that shard again"
    )]
    Corrupt {
        run: String,
        at: String,
        path: String,
        reason: String,
    },
    #[error("run `{run}`, {at}: {what} failed: {source}\nhint: {hint}")]
    Lance {
        run: String,
        at: String,
        what: String,
        hint: String,
        #[source]
        source: Box<lance::Error>,
    },
    #[error("run `{run}`, {at}: {source}")]
    Source {
        run: String,
        at: String,
        #[source]
        source: Box<crate::source::SourceError>,
    },
    #[error("run `{run}`, {at}: {source}")]
    Target {
        run: String,
        at: String,
        #[source]
        source: Box<crate::target::TargetError>,
    },
    #[error("run `{run}`, {at}: {source}")]
    Transform {
        run: String,
        at: String,
        #[source]
        source: Box<crate::transform::TransformError>,
    },
    #[error("run `{run}`, {at}: {source}")]
    Verify {
        run: String,
        at: String,
        #[source]
        source: Box<crate::verify::VerifyError>,
    },
    #[error(
        "run `{run}`, {at}: {reason}\nhint: this is a bug in lanceferry (please report it); nothing was committed by the failed step, and the same command can be run again"
    )]
    Internal {
        run: String,
        at: String,
        reason: String,
    },
}

/// Where an error happened: the run, and `prepare`, `shard K/N` or
/// `commit` with the table. Cheap to clone into tasks.
#[derive(Debug, Clone)]
pub(crate) struct At {
    pub run: String,
    pub at: String,
}

impl At {
    pub fn new(run: &str, at: impl Into<String>) -> Self {
        At {
            run: run.to_string(),
            at: at.into(),
        }
    }

    pub fn source(&self, e: crate::source::SourceError) -> ShardError {
        ShardError::Source {
            run: self.run.clone(),
            at: self.at.clone(),
            source: Box::new(e),
        }
    }

    pub fn target(&self, e: crate::target::TargetError) -> ShardError {
        ShardError::Target {
            run: self.run.clone(),
            at: self.at.clone(),
            source: Box::new(e),
        }
    }

    pub fn transform(&self, e: crate::transform::TransformError) -> ShardError {
        ShardError::Transform {
            run: self.run.clone(),
            at: self.at.clone(),
            source: Box::new(e),
        }
    }

    pub fn verify(&self, e: crate::verify::VerifyError) -> ShardError {
        ShardError::Verify {
            run: self.run.clone(),
            at: self.at.clone(),
            source: Box::new(e),
        }
    }

    pub fn lance(
        &self,
        what: impl Into<String>,
        hint: impl Into<String>,
    ) -> impl FnOnce(lance::Error) -> ShardError {
        let (run, at, what, hint) = (self.run.clone(), self.at.clone(), what.into(), hint.into());
        move |e| ShardError::Lance {
            run,
            at,
            what,
            hint,
            source: Box::new(e),
        }
    }

    pub fn changed(&self, what: impl Into<String>) -> ShardError {
        ShardError::SourceChanged {
            run: self.run.clone(),
            at: self.at.clone(),
            what: what.into(),
        }
    }

    pub fn internal(&self, reason: impl Into<String>) -> ShardError {
        ShardError::Internal {
            run: self.run.clone(),
            at: self.at.clone(),
            reason: reason.into(),
        }
    }
}

/// The most shards a run may have (a sanity bound, not a tuning knob).
pub const MAX_SHARDS: u32 = 100_000;

/// Run names become object paths: letters, digits, `_`, `-`, `.`, at most
/// 64, not starting with `.`.
pub fn check_run_name(run: &str) -> Result<(), ShardError> {
    let ok = !run.is_empty()
        && run.len() <= 64
        && !run.starts_with('.')
        && run
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ShardError::BadRun {
            run: run.to_string(),
        })
    }
}

/// Refuses collections whose mode cannot be sharded (everything but
/// `create` and `replace`; a `replace` onto an existing table is refused
/// by `prepare`, which finds the table).
pub fn check_modes(plan: &Plan, run: &str, step: &str) -> Result<(), ShardError> {
    for c in &plan.collections {
        if !matches!(c.mode, Mode::Create | Mode::Replace) {
            return Err(ShardError::Mode {
                run: run.to_string(),
                at: format!("{step}, table `{}`", c.table),
                mode: c.mode.to_string(),
            });
        }
    }
    Ok(())
}

/// The plan's storage options as Lance takes them.
pub fn storage_options(target: &Target) -> HashMap<String, String> {
    target.storage_options.iter().cloned().collect()
}

/// The URI of a table's Lance dataset: `<db uri>/<table>.lance`, as
/// LanceDB's directory database names it.
pub fn table_uri(db_uri: &str, table: &str) -> String {
    format!("{}/{table}.lance", db_uri.trim_end_matches('/'))
}

/// Opens a table's dataset directly with Lance, at `version` or the latest.
pub async fn open_dataset(
    target: &Target,
    table: &str,
    version: Option<u64>,
) -> lance::Result<Dataset> {
    let mut b = lance::dataset::builder::DatasetBuilder::from_uri(table_uri(&target.uri, table));
    let options = storage_options(target);
    if !options.is_empty() {
        b = b.with_storage_options(options);
    }
    if let Some(v) = version {
        b = b.with_version(v);
    }
    b.load().await
}

/// The version at which `run` committed to this table, looking at every
/// transaction after `start` up to the dataset's version (its latest, as
/// opened): Lance takes the same append twice, so this is the only guard
/// against a second commit doubling the table.
pub async fn committed_at(ds: &Dataset, start: u64, run: &str) -> lance::Result<Option<u64>> {
    let latest = ds.manifest.version;
    for v in (start + 1)..=latest {
        let Some(t) = ds.read_transaction_by_version(v).await? else {
            continue;
        };
        let by_run = t
            .transaction_properties
            .as_ref()
            .and_then(|p| p.get(RUN_PROPERTY))
            .is_some_and(|r| r == run);
        if by_run {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Where shard K of N starts, of a collection of `count` records:
/// `K * count / N` (so shard K is `[bound(K), bound(K + 1))`).
pub fn bound(count: u64, shards: u32, k: u32) -> u64 {
    ((u128::from(count) * u128::from(k)) / u128::from(shards.max(1))) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_position_once_in_order() {
        for (count, n) in [(0u64, 4u32), (3, 4), (10, 3), (200_000, 4), (7, 1), (1, 7)] {
            let mut next = 0;
            for k in 0..n {
                let (s, e) = (bound(count, n, k), bound(count, n, k + 1));
                assert_eq!(s, next, "count {count}, {k}/{n}");
                assert!(e >= s);
                next = e;
            }
            assert_eq!(next, count);
        }
        assert_eq!(bound(200_000, 4, 2), 100_000);
    }

    #[test]
    fn run_names_are_safe_object_path_parts() {
        for ok in ["r1", "canvas-2025-06-01", "a.b_c"] {
            assert!(check_run_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in ["", ".hidden", "a/b", "a b", "..", long.as_str()] {
            assert!(check_run_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_uris_are_beside_the_database() {
        assert_eq!(table_uri("s3://b/p/", "t"), "s3://b/p/t.lance");
        assert_eq!(table_uri("./db", "t"), "./db/t.lance");
    }
}
