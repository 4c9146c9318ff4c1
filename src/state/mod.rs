//! The state record: what apply did, step by step, and the lock around it.
//!
//! One JSON document per plan name and target (`<state dir>/<plan>.state.json`),
//! versioned, written atomically (temp file, fsync, rename, fsync of the
//! directory) so a crash leaves the old or the new record, never half of
//! one. A lock file (`<plan>.lock`, created with O_EXCL) names its holder:
//! apply id, pid, host and start time. A lock whose holder is a dead process
//! on this host is taken over with a warning, so a crash never needs a manual
//! step; `lanceferry unlock ID` breaks any other. Secrets never enter state:
//! the plan is recorded by fingerprint only.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::target::TableVersion;

pub const STATE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state `{path}`: {source}\nhint: check that the state directory (`state.path` in the plan) is writable"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state `{path}` is not readable: {reason}\nhint: it was written by another tool or damaged; move it aside to start afresh (the tables themselves are untouched)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "state `{path}` has format {found}, newer than this lanceferry ({STATE_FORMAT})\nhint: upgrade lanceferry"
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error("plan `{plan}` is locked by apply `{}` (pid {} on `{}`, since {})\nhint: wait for it to finish; if it is gone for good, run `lanceferry unlock {}`", holder.apply_id, holder.pid, holder.host, holder.started, holder.apply_id)]
    Locked { plan: String, holder: LockHolder },
    #[error(
        "no lock held by `{id}` for plan `{plan}`\nhint: `lanceferry unlock` takes the apply id printed in the lock error"
    )]
    NotLocked { plan: String, id: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

/// What one step did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepRecord {
    pub status: Option<StepStatus>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    /// Rows written by this apply (copy), or checked (validate).
    pub rows: u64,
    /// Rows committed at the last checkpoint (copy): the resume cursor.
    pub cursor: u64,
    /// Records left out by `on_error: skip`.
    pub skipped: u64,
    /// The table before the apply touched it (`None`: it did not exist).
    pub version_before: Option<TableVersion>,
    /// Whether the table existed before (snapshot).
    pub table_existed: Option<bool>,
    pub version_after: Option<TableVersion>,
    /// The source's count when the copy started (to detect a changing source).
    pub source_count: Option<u64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyStatus {
    Running,
    Completed,
    Failed,
    RolledBack,
}

/// One run of `apply` (and its resumptions).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRecord {
    pub id: String,
    pub fingerprint: String,
    pub tool_version: String,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub status: ApplyStatus,
    pub steps: BTreeMap<String, StepRecord>,
    #[serde(default)]
    pub rollback: Option<RollbackRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackRecord {
    pub at: DateTime<Utc>,
    pub forced: bool,
    pub tables: BTreeMap<String, String>,
}

/// The whole state document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub plan: String,
    pub target: String,
    pub applies: Vec<ApplyRecord>,
}

/// The state file and lock of one plan.
#[derive(Debug, Clone)]
pub struct StateStore {
    pub dir: PathBuf,
    pub plan: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockHolder {
    pub apply_id: String,
    pub pid: u32,
    pub host: String,
    pub started: DateTime<Utc>,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    pub holder: LockHolder,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether `pid` is a running process on this host. A zombie (killed, not
/// yet reaped) counts as dead: it will never release its lock.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // Format: `pid (comm) state ...`; comm may contain spaces.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>, plan: &str) -> Self {
        StateStore {
            dir: dir.into(),
            plan: plan.to_string(),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(format!("{}.state.json", self.plan))
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.plan))
    }

    pub fn load(&self, target: &str) -> Result<State, StateError> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    format: STATE_FORMAT,
                    plan: self.plan.clone(),
                    target: target.to_string(),
                    applies: Vec::new(),
                });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let probe: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let found = probe.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
        if found > STATE_FORMAT {
            return Err(StateError::TooNew { path, found });
        }
        serde_json::from_value(probe).map_err(|e| StateError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomic(&self.state_path(), &bytes)
    }

    fn read_holder(&self) -> Option<LockHolder> {
        let text = std::fs::read_to_string(self.lock_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Takes the lock, waiting up to `timeout` for another holder.
    pub fn lock(&self, apply_id: &str, timeout: Duration) -> Result<Lock, StateError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.lock_path();
        let holder = LockHolder {
            apply_id: apply_id.to_string(),
            pid: std::process::id(),
            host: hostname(),
            started: Utc::now(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let bytes = serde_json::to_vec(&holder).expect("holder serializes");
                    f.write_all(&bytes).map_err(io(&path))?;
                    f.sync_all().map_err(io(&path))?;
                    return Ok(Lock { path, holder });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    match self.read_holder() {
                        Some(other) if other.host == holder.host && !process_alive(other.pid) => {
                            tracing::warn!(
                                "taking over the lock of apply `{}` (pid {} is no longer running on this host)",
                                other.apply_id,
                                other.pid
                            );
                            eprintln!(
                                "warning: taking over the lock of apply `{}`: its process {} is no longer running",
                                other.apply_id, other.pid
                            );
                            let _ = std::fs::remove_file(&path);
                            continue;
                        }
                        Some(other) => {
                            if Instant::now() >= deadline {
                                return Err(StateError::Locked {
                                    plan: self.plan.clone(),
                                    holder: other,
                                });
                            }
                        }
                        // Being written right now, or unreadable: wait and look again.
                        None => {
                            if Instant::now() >= deadline {
                                let _ = std::fs::remove_file(&path);
                                continue;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
    }

    /// Breaks the lock held by apply `id`.
    pub fn unlock(&self, id: &str) -> Result<LockHolder, StateError> {
        match self.read_holder() {
            Some(h) if h.apply_id == id => {
                std::fs::remove_file(self.lock_path()).map_err(io(&self.lock_path()))?;
                Ok(h)
            }
            _ => Err(StateError::NotLocked {
                plan: self.plan.clone(),
                id: id.to_string(),
            }),
        }
    }
}

/// A new apply id: UTC time plus a random suffix, sortable and unique.
pub fn new_apply_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{:04x}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        (nanos ^ std::process::id()) & 0xffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "p");
        let held = store.lock("a1", Duration::from_millis(0)).unwrap();
        let err = store.lock("a2", Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("locked by apply `a1`"), "{err}");
        drop(held);
        store.lock("a2", Duration::from_millis(0)).unwrap();
    }

    #[test]
    fn a_dead_holder_on_this_host_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "p");
        let dead = LockHolder {
            apply_id: "old".into(),
            pid: 999_999_999,
            host: hostname(),
            started: Utc::now(),
        };
        std::fs::write(store.lock_path(), serde_json::to_vec(&dead).unwrap()).unwrap();
        let lock = store.lock("new", Duration::from_millis(0)).unwrap();
        assert_eq!(lock.holder.apply_id, "new");
    }

    #[test]
    fn state_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "p");
        let mut s = store.load("uri").unwrap();
        assert!(s.applies.is_empty());
        s.applies.push(ApplyRecord {
            id: "x".into(),
            fingerprint: "f".into(),
            tool_version: "0".into(),
            started: Utc::now(),
            finished: None,
            status: ApplyStatus::Running,
            steps: BTreeMap::new(),
            rollback: None,
        });
        store.save(&s).unwrap();
        assert_eq!(store.load("uri").unwrap().applies[0].id, "x");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }
}
