//! What an apply will do, decided from facts, with no I/O.
//!
//! Two questions decide every apply, and `apply` and `plan` must answer them
//! the same way, so they are answered here, by pure functions that are unit
//! tested case by case:
//!
//! - [`apply_start`]: from the last recorded apply of this plan on this
//!   target, the plan's fingerprint and (when needed) what the source and
//!   the tables look like now: resume that apply, do nothing, or start a
//!   fresh one.
//! - [`copy_start`]: for one collection, from its mode, the table's version
//!   before the apply (the snapshot), the table now, and for an `append`
//!   the number of source ids already in the table: how many rows this
//!   apply already committed (the resume cursor) and how the next commit
//!   writes, or why the copy must not write at all.
//!
//! The callers gather the facts (state, `version()`, an id scan) and act on
//! the answer; nothing here reads a store.

use crate::plan::Mode;
use crate::state::{ApplyRecord, ApplyStatus, StepKey};
use crate::target::{Commit, TableVersion};

/// What the source and a table look like now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub table: String,
    pub source_count: u64,
    pub now: Option<TableVersion>,
    /// Rows a sync would write (`mode: sync` only; `None` otherwise).
    pub changes: Option<u64>,
}

/// How an apply starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Continue the interrupted apply with this id.
    Resume(String),
    /// The last apply (this id) left every table as the plan wants it and
    /// nothing changed since.
    NothingToDo(String),
    /// A new apply.
    Fresh,
}

/// Decides how an apply starts. `observed` is needed only when the last
/// apply completed with this fingerprint (see [`needs_observation`]); with
/// `None` then, the apply is fresh.
pub fn apply_start(
    last: Option<&ApplyRecord>,
    fingerprint: &str,
    observed: Option<&[Observed]>,
) -> Start {
    let Some(last) = last else {
        return Start::Fresh;
    };
    if last.fingerprint != fingerprint {
        return Start::Fresh;
    }
    match last.status {
        ApplyStatus::Running | ApplyStatus::Failed => Start::Resume(last.id.clone()),
        ApplyStatus::RolledBack => Start::Fresh,
        ApplyStatus::Completed => match observed {
            Some(obs) if !obs.is_empty() && obs.iter().all(|o| unchanged(last, o)) => {
                Start::NothingToDo(last.id.clone())
            }
            _ => Start::Fresh,
        },
    }
}

/// Whether [`apply_start`] needs the source and tables observed.
pub fn needs_observation(last: Option<&ApplyRecord>, fingerprint: &str) -> bool {
    last.is_some_and(|l| l.fingerprint == fingerprint && l.status == ApplyStatus::Completed)
}

/// A table is as the last apply left it, and its source has the count the
/// copy saw.
fn unchanged(last: &ApplyRecord, o: &Observed) -> bool {
    let Some(copy) = last.step(&StepKey::copy(&o.table)) else {
        return false;
    };
    copy.source_count == Some(o.source_count)
        && o.now.map(|v| v.version) == last.version_left(&o.table).map(|v| v.version)
        && o.changes.is_none_or(|n| n == 0)
}

/// Where a copy starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyStart {
    /// Rows this apply already committed (skipped from the source's front).
    pub committed: u64,
    /// How the next commit writes.
    pub commit: Commit,
    /// `upsert` into a table that does not exist yet: create it empty first.
    pub create_empty: bool,
}

/// Why a copy must not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "table `{table}` already exists and the mode is `create`\nhint: use `mode: replace` (rollback can restore the old table), `upsert` or `append`, or choose another `table:`"
    )]
    Exists { table: String },
    #[error(
        "table `{table}` already holds {overlap} of the source's ids; appending would store those records twice\nhint: use `mode: upsert` to update them in place, or pass `--allow-duplicates` if the table is meant to hold repeats"
    )]
    Duplicates { table: String, overlap: u64 },
    #[error(
        "table `{table}` changed outside this apply while it was interrupted: it is at version {now}, and this apply last left it at {known}\nhint: the rows this apply already committed can no longer be told from the others; `lanceferry rollback` restores the table to its state before the apply (add `--force` to discard the outside writes), then apply again"
    )]
    ChangedOutside { table: String, known: u64, now: u64 },
}

/// Whether [`copy_start`] needs the count of source ids the table held at
/// the snapshot: an `append` onto rows that, by the state, has committed
/// nothing yet. (By the state, not by the table's version: a table written
/// by someone else meanwhile must not make the guard look satisfied.)
pub fn needs_overlap(
    mode: Mode,
    before: Option<TableVersion>,
    recorded: Option<TableVersion>,
) -> bool {
    mode == Mode::Append && recorded.is_none() && before.is_some_and(|b| b.rows > 0)
}

/// Decides where one collection's copy starts. `before` is the table at
/// this apply's snapshot, `recorded` the version of this apply's last copy
/// checkpoint in the state, `now` the table as it is; `overlap` the source
/// ids the table held at the snapshot (asked for by [`needs_overlap`]).
///
/// The rows this apply committed are the table's rows beyond the snapshot's
/// (each Lance commit is atomic and the source is read in the same order
/// every time), so a resume skips exactly that many source records. That
/// holds only if nobody else wrote the table meanwhile: the table may be at
/// the version this apply last recorded, or one further (a commit whose
/// checkpoint a kill cut off), and anything else is refused. `upsert` is
/// exempt: merging on the id is idempotent, so it simply starts again.
pub fn copy_start(
    table: &str,
    mode: Mode,
    before: Option<TableVersion>,
    recorded: Option<TableVersion>,
    now: Option<TableVersion>,
    overlap: Option<u64>,
    allow_duplicates: bool,
) -> Result<CopyStart, Refusal> {
    let start = |committed, commit| CopyStart {
        committed,
        commit,
        create_empty: false,
    };
    if mode == Mode::Upsert {
        return Ok(CopyStart {
            committed: 0,
            commit: Commit::Append,
            create_empty: now.is_none(),
        });
    }
    // `sync` onto an existing table writes only the difference, found by
    // digests, and merging and deleting by id are idempotent: it simply
    // starts again. Onto no table it is a plain first copy.
    if mode == Mode::Sync {
        return Ok(match now {
            Some(_) => start(0, Commit::Append),
            None => start(0, Commit::Create),
        });
    }
    if let Some(n) = now {
        // Lance numbers a new table's first version 1.
        let known = recorded.or(before).map_or(0, |v| v.version);
        if n.version < known || n.version > known + 1 {
            return Err(Refusal::ChangedOutside {
                table: table.into(),
                known,
                now: n.version,
            });
        }
    }
    match mode {
        Mode::Create => match (before, now) {
            (Some(_), _) => Err(Refusal::Exists {
                table: table.into(),
            }),
            (None, None) => Ok(start(0, Commit::Create)),
            (None, Some(v)) => Ok(start(v.rows, Commit::Append)),
        },
        Mode::Replace => match (before, now) {
            (_, None) => Ok(start(0, Commit::Create)),
            // Untouched since the snapshot: the first commit replaces it.
            (Some(b), Some(v)) if v.version == b.version => Ok(start(0, Commit::Overwrite)),
            // Written by this apply (the overwrite, then appends).
            (_, Some(v)) => Ok(start(v.rows, Commit::Append)),
        },
        Mode::Append => {
            if !allow_duplicates
                && let Some(n) = overlap
                && n > 0
            {
                return Err(Refusal::Duplicates {
                    table: table.into(),
                    overlap: n,
                });
            }
            match now {
                None => Ok(start(0, Commit::Create)),
                Some(v) => {
                    let base = before.map(|b| b.rows).unwrap_or(0);
                    Ok(start(v.rows.saturating_sub(base), Commit::Append))
                }
            }
        }
        Mode::Upsert | Mode::Sync => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StepRecord;

    fn v(version: u64, rows: u64) -> Option<TableVersion> {
        Some(TableVersion { version, rows })
    }

    fn completed(fp: &str, table: &str, count: u64, left: u64) -> ApplyRecord {
        let mut a = ApplyRecord::new("a1".into(), fp.into());
        a.status = ApplyStatus::Completed;
        a.steps.insert(
            StepKey::copy(table),
            StepRecord {
                source_count: Some(count),
                version_after: v(left, count),
                ..Default::default()
            },
        );
        a
    }

    fn obs(table: &str, count: u64, now: Option<TableVersion>) -> Observed {
        Observed {
            table: table.into(),
            source_count: count,
            now,
            changes: None,
        }
    }

    #[test]
    fn apply_start_cases() {
        assert_eq!(apply_start(None, "f", None), Start::Fresh);
        let done = completed("f", "t", 10, 3);
        assert!(needs_observation(Some(&done), "f"));
        assert!(!needs_observation(Some(&done), "g"));
        assert_eq!(
            apply_start(Some(&done), "f", Some(&[obs("t", 10, v(3, 10))])),
            Start::NothingToDo("a1".into())
        );
        // The source grew, someone wrote the table, or the plan changed.
        assert_eq!(
            apply_start(Some(&done), "f", Some(&[obs("t", 11, v(3, 10))])),
            Start::Fresh
        );
        assert_eq!(
            apply_start(Some(&done), "f", Some(&[obs("t", 10, v(4, 10))])),
            Start::Fresh
        );
        assert_eq!(apply_start(Some(&done), "g", None), Start::Fresh);
        // A table the last apply never copied is not "unchanged".
        assert_eq!(
            apply_start(Some(&done), "f", Some(&[obs("u", 10, v(3, 10))])),
            Start::Fresh
        );
        let mut failed = done.clone();
        failed.status = ApplyStatus::Failed;
        assert_eq!(
            apply_start(Some(&failed), "f", None),
            Start::Resume("a1".into())
        );
        assert_eq!(apply_start(Some(&failed), "g", None), Start::Fresh);
        let mut running = done.clone();
        running.status = ApplyStatus::Running;
        assert_eq!(
            apply_start(Some(&running), "f", None),
            Start::Resume("a1".into())
        );
        let mut rolled = done;
        rolled.status = ApplyStatus::RolledBack;
        assert_eq!(apply_start(Some(&rolled), "f", None), Start::Fresh);
    }

    #[test]
    fn create() {
        let c = |b, r, n| copy_start("t", Mode::Create, b, r, n, None, false);
        assert_eq!(c(None, None, None).unwrap().commit, Commit::Create);
        // Killed after the first commit, before its checkpoint was saved.
        let r = c(None, None, v(1, 1000)).unwrap();
        assert_eq!((r.committed, r.commit), (1000, Commit::Append));
        // Killed after 2 recorded commits (and maybe one more).
        assert_eq!(c(None, v(2, 2000), v(2, 2000)).unwrap().committed, 2000);
        assert_eq!(c(None, v(2, 2000), v(3, 3000)).unwrap().committed, 3000);
        assert!(matches!(
            c(v(1, 5), None, v(1, 5)),
            Err(Refusal::Exists { .. })
        ));
    }

    #[test]
    fn replace() {
        let c = |b, r, n| copy_start("t", Mode::Replace, b, r, n, None, false);
        let r = c(v(4, 50), None, v(4, 50)).unwrap();
        assert_eq!((r.committed, r.commit), (0, Commit::Overwrite));
        // Resumed after the overwrite (1000 rows) and one append.
        let r = c(v(4, 50), v(6, 2000), v(6, 2000)).unwrap();
        assert_eq!((r.committed, r.commit), (2000, Commit::Append));
        assert_eq!(c(None, None, None).unwrap().commit, Commit::Create);
    }

    #[test]
    fn a_table_written_by_someone_else_meanwhile_is_refused() {
        // The snapshot saw version 4; nothing recorded; now version 7.
        for mode in [Mode::Create, Mode::Replace, Mode::Append] {
            let before = if mode == Mode::Create { None } else { v(4, 50) };
            let known = if mode == Mode::Create { 0 } else { 4 };
            let r = copy_start("t", mode, before, None, v(known + 3, 60), Some(0), false);
            assert!(
                matches!(r, Err(Refusal::ChangedOutside { .. })),
                "{mode}: {r:?}"
            );
            // Rolled back under us: older than what we recorded.
            let r = copy_start(
                "t",
                mode,
                before,
                v(known + 5, 90),
                v(known + 2, 60),
                Some(0),
                false,
            );
            assert!(
                matches!(r, Err(Refusal::ChangedOutside { .. })),
                "{mode}: {r:?}"
            );
        }
        // Upsert merges again whatever happened.
        assert!(copy_start("t", Mode::Upsert, v(4, 50), None, v(9, 1), None, false).is_ok());
    }

    #[test]
    fn append() {
        let c = |b, r, n, overlap, allow| copy_start("t", Mode::Append, b, r, n, overlap, allow);
        assert!(needs_overlap(Mode::Append, v(4, 298), None));
        // Decided by the state, not by whether the table moved.
        assert!(!needs_overlap(Mode::Append, v(4, 298), v(5, 596)));
        assert!(!needs_overlap(Mode::Append, None, None));
        assert!(!needs_overlap(Mode::Append, v(4, 0), None));
        assert!(!needs_overlap(Mode::Upsert, v(4, 298), None));
        // Fresh onto rows holding the source's ids: refused before writing.
        assert_eq!(
            c(v(4, 298), None, v(4, 298), Some(298), false),
            Err(Refusal::Duplicates {
                table: "t".into(),
                overlap: 298
            })
        );
        let r = c(v(4, 298), None, v(4, 298), Some(298), true).unwrap();
        assert_eq!((r.committed, r.commit), (0, Commit::Append));
        let r = c(v(4, 298), None, v(4, 298), Some(0), false).unwrap();
        assert_eq!(r.committed, 0);
        // Resumed: the rows beyond the snapshot are this apply's.
        let r = c(v(4, 298), v(6, 1298), v(6, 1298), None, false).unwrap();
        assert_eq!((r.committed, r.commit), (1000, Commit::Append));
        assert_eq!(
            c(None, None, None, None, false).unwrap().commit,
            Commit::Create
        );
    }

    #[test]
    fn upsert() {
        let r = copy_start("t", Mode::Upsert, None, None, None, None, false).unwrap();
        assert!(r.create_empty);
        let r = copy_start("t", Mode::Upsert, v(1, 5), None, v(3, 9), None, false).unwrap();
        assert_eq!((r.committed, r.create_empty), (0, false));
    }
}
