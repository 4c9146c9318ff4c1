//! Rollback: every table an apply touched goes back to where it was.
//!
//! A table that existed is restored to the version recorded (and tagged) by
//! the snapshot step; a table the apply created is dropped. If someone wrote
//! to a table after the apply, rollback refuses and names the versions,
//! unless forced. Rolling back twice is a no-op that says so.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use super::EngineError;
use crate::plan::Plan;
use crate::state::{ApplyStatus, RollbackRecord, StateStore, StepKey};
use crate::target::LanceTarget;

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "no apply of plan `{plan}` is recorded in `{state}`\nhint: nothing to roll back; check `state.path` (and variables) match the apply's"
    )]
    NothingApplied { plan: String, state: String },
    #[error(
        "apply `{id}` is not in the state of plan `{plan}`\nhint: the ids are in `{state}`; omit `--apply` to roll back the latest"
    )]
    UnknownApply {
        plan: String,
        id: String,
        state: String,
    },
    #[error(
        "table `{table}` was written after apply `{apply}`: it is at version {current}, the apply left version {left}\nhint: rolling back would discard those later writes; pass `--force` to do it anyway"
    )]
    WrittenSince {
        table: String,
        apply: String,
        current: u64,
        left: u64,
    },
    #[error(
        "table `{table}` did not exist before apply `{apply}`, and the apply recorded no write to it, yet it exists now\nhint: someone else may have created it (or a crash cut off the apply's record of its first commit); pass `--force` to drop it anyway"
    )]
    NotWrittenByApply { table: String, apply: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackSummary {
    pub apply_id: String,
    pub already: bool,
    /// table → what was done.
    pub tables: BTreeMap<String, String>,
}

pub async fn rollback(
    plan: &Plan,
    apply: Option<&str>,
    force: bool,
    lock_timeout: Duration,
) -> Result<RollbackSummary, RollbackError> {
    let store = StateStore::for_plan(plan);
    let state_path = store.dir.display().to_string();
    // The lock first, then the record: another apply may finish meanwhile.
    let mut lock = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.lock(lock_timeout))
            .await
            .expect("taking the lock does not panic")
            .map_err(EngineError::from)?
    };
    let state = store.load().map_err(EngineError::from)?;
    let index = match apply {
        Some(id) => state
            .applies
            .iter()
            .position(|a| a.id == id)
            .ok_or_else(|| RollbackError::UnknownApply {
                plan: plan.name.clone(),
                id: id.to_string(),
                state: state_path.clone(),
            })?,
        None => {
            state
                .applies
                .len()
                .checked_sub(1)
                .ok_or_else(|| RollbackError::NothingApplied {
                    plan: plan.name.clone(),
                    state: state_path.clone(),
                })?
        }
    };
    let apply_id = state.applies[index].id.clone();
    lock.set_apply(&apply_id).map_err(|source| {
        EngineError::from(crate::state::StateError::Io {
            path: store.lock_path(),
            source,
        })
    })?;
    let mut rec = state.applies[index].clone();
    if rec.status == ApplyStatus::RolledBack {
        return Ok(RollbackSummary {
            apply_id,
            already: true,
            tables: rec.rollback.map(|r| r.tables).unwrap_or_default(),
        });
    }
    let target = LanceTarget::connect(&plan.target)
        .await
        .map_err(EngineError::from)?;

    // First check every table, then change any: all or nothing refused.
    let mut work = Vec::new();
    for c in &plan.collections {
        let Some(snap) = rec.step(&StepKey::snapshot(&c.table)) else {
            continue;
        };
        let Some(existed) = snap.table_existed else {
            continue;
        };
        // Where the apply left the table: its last recorded write, or, if it
        // recorded none (it was refused, or failed first), the snapshot.
        let left = rec
            .version_left(&c.table)
            .or(snap.version_before)
            .map(|v| v.version);
        let current = target.version(&c.table).await.map_err(EngineError::from)?;
        if !force {
            match (current, left) {
                (Some(cur), Some(left)) if cur.version != left => {
                    return Err(RollbackError::WrittenSince {
                        table: c.table.clone(),
                        apply: apply_id.clone(),
                        current: cur.version,
                        left,
                    });
                }
                // Absent before, no write recorded, present now: made by
                // someone else, or by a commit whose record a crash cut off.
                (Some(_), None) => {
                    return Err(RollbackError::NotWrittenByApply {
                        table: c.table.clone(),
                        apply: apply_id.clone(),
                    });
                }
                _ => {}
            }
        }
        work.push((c.table.clone(), existed, snap.version_before, current));
    }

    let mut tables = BTreeMap::new();
    for (table, existed, before, current) in work {
        let what = match (existed, before, current) {
            (false, _, None) => {
                "absent (it was created by the apply and is already gone)".to_string()
            }
            (false, _, Some(_)) => {
                target.drop_table(&table).await.map_err(EngineError::from)?;
                "dropped (the apply created it)".to_string()
            }
            (true, Some(b), Some(cur)) if cur.version == b.version => {
                format!("unchanged at version {}", b.version)
            }
            (true, Some(b), Some(_)) => {
                let now = target
                    .restore(&table, b.version)
                    .await
                    .map_err(EngineError::from)?;
                format!(
                    "restored to version {} ({} rows) as version {}",
                    b.version, b.rows, now.version
                )
            }
            (true, _, None) => {
                "missing: it existed before the apply but was dropped since; nothing to restore"
                    .to_string()
            }
            (true, None, Some(_)) => "unchanged (no version was recorded)".to_string(),
        };
        tables.insert(table, what);
    }
    rec.status = ApplyStatus::RolledBack;
    rec.rollback = Some(RollbackRecord {
        at: Utc::now(),
        forced: force,
        tables: tables.clone(),
    });
    store.save(&rec).map_err(EngineError::from)?;
    Ok(RollbackSummary {
        apply_id,
        already: false,
        tables,
    })
}
