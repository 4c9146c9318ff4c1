//! The state record: what apply did, step by step, and the lock around it.
//!
//! **Keyed by plan and target.** The same plan is applied to dev, staging
//! and prod with only `LANCEDB_URI` changed; each target keeps its own
//! record, in `<state dir>/<plan>-<key>/` where `<key>` is 16 hex digits of
//! the SHA-256 of the resolved target URI (a local path made absolute and
//! normalized; an object-store URI as written, without a trailing `/`). The
//! directory's `target.json` names the target, and a record whose target is
//! not the plan's is refused, so `rollback` never touches another
//! environment's tables.
//!
//! **One document per apply.** `applies/<apply id>.json` holds one
//! [`ApplyRecord`]; a step update rewrites only the current apply's
//! document, never the history. Every write is atomic (temp file, fsync,
//! rename, fsync of the directory), so a crash leaves the old or the new
//! document, never half of one.
//!
//! **An OS advisory lock.** `lock` is held with `flock` (std's
//! `File::lock`) for the whole apply or rollback. The kernel releases it
//! when the holder's process ends, however it ends, so there is no stale
//! lock to detect, no window where a half-written lock file looks stale,
//! and no remove-then-create race on takeover; the file is never deleted.
//! The holder (apply id, pid, host, start) is written into the file while
//! the lock is held, for the message a waiting apply prints, and cleared on
//! release; a holder found there when the lock is taken ended without
//! releasing (a crash), which is said. Callers decide between a resume and
//! a new apply only after the lock is held.
//!
//! Secrets never enter state: the plan is recorded by fingerprint only.

mod key;

pub use key::{BadStepKey, StepKey};

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::target::TableVersion;

/// Format of `target.json` and the apply documents. Format 1 was one
/// `<plan>.state.json` per plan name; it is imported on first use.
pub const STATE_FORMAT: u32 = 2;

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
    #[error(
        "state `{path}` records target `{recorded}`, not this plan's `{target}`\nhint: the state directory was copied or edited by hand; move `{path}` aside, or point `state.path` elsewhere"
    )]
    OtherTarget {
        path: PathBuf,
        recorded: String,
        target: String,
    },
    #[error(
        "plan `{plan}`: its tables are being written by `lanceferry mirror` for more than {seconds} s\nhint: check `lanceferry mirror status` for that plan (a batch may be stuck on the target); stop the mirror, or run again"
    )]
    GateBusy { plan: String, seconds: u64 },
    #[error("plan `{plan}` on target `{target}` is locked by {}\nhint: wait for it to finish (`--lock-timeout SECONDS` waits longer); the lock is released when that process ends, however it ends", holder.as_ref().map(|h| format!("apply `{}` (pid {} on `{}`, since {})", h.apply_id, h.pid, h.host, h.started)).unwrap_or_else(|| "another lanceferry process".into()))]
    Locked {
        plan: String,
        target: String,
        holder: Option<LockHolder>,
    },
    #[error(
        "the lock of plan `{plan}` is held by apply `{}` (pid {} on `{}`), which is still running\nhint: a running holder cannot be unlocked; stop that process (the OS releases its lock when it ends)", holder.apply_id, holder.pid, holder.host
    )]
    HeldByLiveProcess { plan: String, holder: LockHolder },
    #[error(
        "no lock held by `{id}` for plan `{plan}`{}\nhint: `lanceferry unlock` takes the apply id printed in the lock error; a crashed holder's lock is already released", found.as_ref().map(|h| format!(" (the record names apply `{}`)", h.apply_id)).unwrap_or_default()
    )]
    NotLocked {
        plan: String,
        id: String,
        found: Option<LockHolder>,
    },
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
    /// An index step: the plan's settings of the index it built or kept,
    /// so a later sync knows whether the plan changed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
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
    pub steps: BTreeMap<StepKey, StepRecord>,
    #[serde(default)]
    pub rollback: Option<RollbackRecord>,
}

impl ApplyRecord {
    pub fn new(id: String, fingerprint: String) -> Self {
        ApplyRecord {
            id,
            fingerprint,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            started: Utc::now(),
            finished: None,
            status: ApplyStatus::Running,
            steps: BTreeMap::new(),
            rollback: None,
        }
    }

    pub fn step(&self, key: &StepKey) -> Option<&StepRecord> {
        self.steps.get(key)
    }

    /// The version this apply left `table` at: the newest version any of
    /// its steps on that table recorded (`None` if none wrote it).
    pub fn version_left(&self, table: &str) -> Option<TableVersion> {
        self.steps
            .iter()
            .filter(|(k, _)| k.table() == Some(table))
            .filter_map(|(_, r)| r.version_after)
            .max_by_key(|v| v.version)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackRecord {
    pub at: DateTime<Utc>,
    pub forced: bool,
    pub tables: BTreeMap<String, String>,
}

/// Every apply recorded for one plan and target, oldest first.
#[derive(Debug, Clone)]
pub struct State {
    pub plan: String,
    pub target: String,
    pub applies: Vec<ApplyRecord>,
}

impl State {
    /// The index settings the latest apply (other than `except`) recorded
    /// for an index step.
    pub fn index_settings(&self, step: &StepKey, except: Option<&str>) -> Option<String> {
        self.applies
            .iter()
            .rev()
            .filter(|a| Some(a.id.as_str()) != except)
            .find_map(|a| a.steps.get(step).and_then(|r| r.spec.clone()))
    }
}

/// `target.json`: what a state directory belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TargetDoc {
    format: u32,
    plan: String,
    target: String,
}

/// The state directory and lock of one plan on one target.
#[derive(Debug, Clone)]
pub struct StateStore {
    /// `<state dir>/<plan>-<key>`.
    pub dir: PathBuf,
    /// The plan's `state.path`.
    pub root: PathBuf,
    pub plan: String,
    /// The resolved target URI.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockHolder {
    pub apply_id: String,
    pub pid: u32,
    pub host: String,
    pub started: DateTime<Utc>,
}

/// A held lock; released (and its holder record cleared) on drop.
#[derive(Debug)]
pub struct Lock {
    file: std::fs::File,
    /// The plan's write gate, held with the lock (see [`StateStore::try_gate`]).
    _gate: std::fs::File,
    pub holder: LockHolder,
    /// The holder found in the file when the lock was taken: a process
    /// that ended without releasing it.
    pub crashed: Option<LockHolder>,
}

impl Lock {
    /// Names the apply holding the lock (known only after the lock is held
    /// and the state read).
    pub fn set_apply(&mut self, apply_id: &str) -> Result<(), std::io::Error> {
        self.holder.apply_id = apply_id.to_string();
        write_holder(&mut self.file, Some(&self.holder))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Still held here, so no other process reads a half-cleared record.
        let _ = write_holder(&mut self.file, None);
        let _ = self.file.unlock();
    }
}

fn write_holder(file: &mut std::fs::File, holder: Option<&LockHolder>) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(std::io::SeekFrom::Start(0))?;
    if let Some(h) = holder {
        file.write_all(&serde_json::to_vec(h).expect("holder serializes"))?;
    }
    file.sync_all()
}

fn read_holder(file: &mut std::fs::File) -> Option<LockHolder> {
    let mut text = String::new();
    file.seek(std::io::SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// How long an apply waits for a mirror's batch to release the write gate.
const GATE_WAIT: Duration = Duration::from_secs(60);

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
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

/// The target URI as the state keys it: a local path absolute and
/// normalized (`./out/../db` and `/abs/db` are one target when they name
/// the same path), an object-store URI as written without a trailing `/`.
/// Symlinks are not resolved: the key must not change when the directory
/// comes into existence.
pub fn resolve_target(uri: &str) -> String {
    let uri = uri.strip_prefix("file://").unwrap_or(uri);
    if uri.contains("://") {
        return uri.trim_end_matches('/').to_string();
    }
    let path = Path::new(uri);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.display().to_string()
}

/// 16 hex digits of the SHA-256 of the resolved target.
pub fn target_key(resolved: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(resolved.as_bytes())[..8])
}

impl StateStore {
    /// The record of `plan` on `target_uri` under the state directory `root`.
    pub fn new(root: impl Into<PathBuf>, plan: &str, target_uri: &str) -> Self {
        let root = root.into();
        let target = resolve_target(target_uri);
        StateStore {
            dir: root.join(format!("{plan}-{}", target_key(&target))),
            root,
            plan: plan.to_string(),
            target,
        }
    }

    pub fn for_plan(plan: &crate::plan::Plan) -> Self {
        StateStore::new(&plan.state_dir, &plan.name, &plan.target.uri)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn target_path(&self) -> PathBuf {
        self.dir.join("target.json")
    }

    fn apply_path(&self, id: &str) -> PathBuf {
        self.dir.join("applies").join(format!("{id}.json"))
    }

    fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StateError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let probe: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if let Some(found) = probe.get("format").and_then(|f| f.as_u64())
            && found > STATE_FORMAT as u64
        {
            return Err(StateError::TooNew {
                path: path.to_path_buf(),
                found: found as u32,
            });
        }
        serde_json::from_value(probe).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Every apply recorded for this plan and target, oldest first. A
    /// target never applied has none (and nothing is written).
    pub fn load(&self) -> Result<State, StateError> {
        let mut state = State {
            plan: self.plan.clone(),
            target: self.target.clone(),
            applies: Vec::new(),
        };
        let tpath = self.target_path();
        if !tpath.exists() {
            return self.legacy().map(|applies| State { applies, ..state });
        }
        let doc: TargetDoc = Self::read_json(&tpath)?;
        if doc.target != self.target {
            return Err(StateError::OtherTarget {
                path: self.dir.clone(),
                recorded: doc.target,
                target: self.target.clone(),
            });
        }
        let dir = self.dir.join("applies");
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(io(&dir)(e)),
        };
        for e in entries {
            let path = e.map_err(io(&dir))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                state.applies.push(Self::read_json(&path)?);
            }
        }
        state
            .applies
            .sort_by(|a, b| (a.started, &a.id).cmp(&(b.started, &b.id)));
        Ok(state)
    }

    /// The applies of a format-1 record (`<plan>.state.json`, one per plan
    /// name) if it was written for this target; they are imported when the
    /// next document is saved.
    fn legacy(&self) -> Result<Vec<ApplyRecord>, StateError> {
        #[derive(Deserialize)]
        struct V1 {
            target: String,
            applies: Vec<ApplyRecord>,
        }
        let path = self.root.join(format!("{}.state.json", self.plan));
        if !path.exists() {
            return Ok(Vec::new());
        }
        let v1: V1 = Self::read_json(&path)?;
        if resolve_target(&v1.target) != self.target {
            return Ok(Vec::new());
        }
        Ok(v1.applies)
    }

    /// Saves one apply's document (and, the first time, `target.json` and
    /// any format-1 history of this target).
    pub fn save(&self, rec: &ApplyRecord) -> Result<(), StateError> {
        if !self.target_path().exists() {
            // `target.json` first: an apply document is never written where
            // `load` would not look for it.
            let legacy = self.legacy()?;
            let doc = TargetDoc {
                format: STATE_FORMAT,
                plan: self.plan.clone(),
                target: self.target.clone(),
            };
            write_atomic(
                &self.target_path(),
                &serde_json::to_vec_pretty(&doc).expect("target serializes"),
            )?;
            for old in legacy {
                if old.id != rec.id {
                    self.write_apply(&old)?;
                }
            }
        }
        self.write_apply(rec)
    }

    fn write_apply(&self, rec: &ApplyRecord) -> Result<(), StateError> {
        // Ids become file names; one from a hand-edited record must not
        // name a path elsewhere.
        let safe = !rec.id.is_empty()
            && !rec.id.starts_with('.')
            && rec
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !safe {
            return Err(StateError::Corrupt {
                path: self.dir.clone(),
                reason: format!("apply id `{}` is not a plain name", rec.id),
            });
        }
        let mut value = serde_json::to_value(rec).expect("apply serializes");
        value["format"] = STATE_FORMAT.into();
        write_atomic(
            &self.apply_path(&rec.id),
            &serde_json::to_vec_pretty(&value).expect("apply serializes"),
        )
    }

    fn open_lock_file(&self) -> Result<std::fs::File, StateError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.lock_path();
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))
    }

    fn open_gate_file(&self) -> Result<std::fs::File, StateError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join("write.gate");
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))
    }

    /// The plan's write gate, if free right now (never waits): held by
    /// whoever writes the plan's tables, an apply or a rollback for its
    /// whole run (with [`StateStore::lock`]) and `lanceferry mirror`'s
    /// writer for one batch, so that neither overwrites the other with a
    /// state it read earlier. Released when the returned file is dropped.
    pub fn try_gate(&self) -> Result<Option<std::fs::File>, StateError> {
        let file = self.open_gate_file()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&self.dir.join("write.gate"))(e)),
        }
    }

    /// Takes the lock, waiting up to `timeout` for another holder, then
    /// the write gate (waiting up to a minute for a mirror's batch to
    /// end). Blocks: call it from a blocking thread in async code.
    pub fn lock(&self, timeout: Duration) -> Result<Lock, StateError> {
        let mut file = self.open_lock_file()?;
        let path = self.lock_path();
        let deadline = Instant::now() + timeout;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(StateError::Locked {
                            plan: self.plan.clone(),
                            target: self.target.clone(),
                            holder: read_holder(&mut file),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
        }
        let gate = self.open_gate_file()?;
        let gate_deadline = Instant::now() + GATE_WAIT;
        loop {
            match gate.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= gate_deadline {
                        return Err(StateError::GateBusy {
                            plan: self.plan.clone(),
                            seconds: GATE_WAIT.as_secs(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(io(&self.dir.join("write.gate"))(e));
                }
            }
        }
        let crashed = read_holder(&mut file);
        if let Some(c) = &crashed {
            tracing::warn!(
                "apply `{}` (pid {} on `{}`) ended without releasing its lock; taking it",
                c.apply_id,
                c.pid,
                c.host
            );
        }
        let holder = LockHolder {
            apply_id: String::new(),
            pid: std::process::id(),
            host: hostname(),
            started: Utc::now(),
        };
        write_holder(&mut file, Some(&holder)).map_err(io(&path))?;
        Ok(Lock {
            file,
            _gate: gate,
            holder,
            crashed,
        })
    }

    /// The holder of the lock if an apply or rollback holds it right now;
    /// writes nothing (for `plan`: the lock file is opened read-only if it
    /// exists, and a lock taken to test is released at once).
    pub fn running(&self) -> Option<LockHolder> {
        let mut file = std::fs::File::open(self.lock_path()).ok()?;
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                Some(read_holder(&mut file).unwrap_or(LockHolder {
                    apply_id: "?".into(),
                    pid: 0,
                    host: "?".into(),
                    started: Utc::now(),
                }))
            }
            Err(std::fs::TryLockError::Error(_)) => None,
        }
    }

    /// `lanceferry unlock`: clears the holder record of apply `id` when its
    /// process is gone. A running holder cannot be unlocked (its lock is
    /// the kernel's), and a crashed one already released it; this only
    /// tidies the record it left.
    pub fn unlock(&self, id: &str) -> Result<LockHolder, StateError> {
        let mut file = self.open_lock_file()?;
        let found = read_holder(&mut file);
        match file.try_lock() {
            Ok(()) => {
                let result = match found {
                    Some(h) if h.apply_id == id => {
                        write_holder(&mut file, None).map_err(io(&self.lock_path()))?;
                        Ok(h)
                    }
                    other => Err(StateError::NotLocked {
                        plan: self.plan.clone(),
                        id: id.to_string(),
                        found: other,
                    }),
                };
                let _ = file.unlock();
                result
            }
            Err(std::fs::TryLockError::WouldBlock) => match found {
                Some(holder) => Err(StateError::HeldByLiveProcess {
                    plan: self.plan.clone(),
                    holder,
                }),
                None => Err(StateError::Locked {
                    plan: self.plan.clone(),
                    target: self.target.clone(),
                    holder: None,
                }),
            },
            Err(std::fs::TryLockError::Error(e)) => Err(io(&self.lock_path())(e)),
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

    fn record(id: &str) -> ApplyRecord {
        ApplyRecord::new(id.into(), "f".into())
    }

    #[test]
    fn lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "p", "/db");
        let mut held = store.lock(Duration::from_millis(0)).unwrap();
        held.set_apply("a1").unwrap();
        assert_eq!(store.running().map(|h| h.apply_id), Some("a1".into()));
        let err = store.lock(Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("locked by apply `a1`"), "{err}");
        // A running holder is not unlocked by hand.
        let err = store.unlock("a1").unwrap_err();
        assert!(matches!(err, StateError::HeldByLiveProcess { .. }), "{err}");
        drop(held);
        assert!(store.running().is_none());
        let again = store.lock(Duration::from_millis(0)).unwrap();
        assert_eq!(again.crashed, None, "a released lock leaves no holder");
        assert!(store.lock_path().exists(), "the lock file is never deleted");
    }

    #[test]
    fn a_holder_that_vanished_is_reported_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "p", "/db");
        std::fs::create_dir_all(&store.dir).unwrap();
        let dead = LockHolder {
            apply_id: "old".into(),
            pid: 999_999_999,
            host: hostname(),
            started: Utc::now(),
        };
        // What a killed holder leaves: its record, and no kernel lock.
        std::fs::write(store.lock_path(), serde_json::to_vec(&dead).unwrap()).unwrap();
        let mut lock = store.lock(Duration::from_millis(0)).unwrap();
        assert_eq!(
            lock.crashed.as_ref().map(|h| h.apply_id.as_str()),
            Some("old")
        );
        lock.set_apply("new").unwrap();
        drop(lock);
        // `unlock` tidies a dead holder's record, and only the named one.
        std::fs::write(store.lock_path(), serde_json::to_vec(&dead).unwrap()).unwrap();
        assert!(matches!(
            store.unlock("other").unwrap_err(),
            StateError::NotLocked { .. }
        ));
        assert_eq!(store.unlock("old").unwrap().apply_id, "old");
    }

    #[test]
    fn the_lock_is_exclusive_between_processes_threads_and_handles() {
        // flock locks belong to open file descriptions: a second handle in
        // the same process is refused like another process would be.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "p", "/db");
        let held = std::sync::atomic::AtomicUsize::new(0);
        let max = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let _l = store.lock(Duration::from_secs(30)).unwrap();
                    let now = held.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    max.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        assert_eq!(max.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn state_is_one_document_per_apply_and_per_target() {
        let dir = tempfile::tempdir().unwrap();
        let dev = StateStore::new(dir.path(), "p", "/envs/dev/db");
        let prod = StateStore::new(dir.path(), "p", "/envs/prod/db");
        assert_ne!(dev.dir, prod.dir);
        assert!(dev.load().unwrap().applies.is_empty());
        assert!(!dev.dir.exists(), "loading writes nothing");
        let mut a = record("20260101T000000Z-0001");
        dev.save(&a).unwrap();
        a.status = ApplyStatus::Completed;
        dev.save(&a).unwrap();
        dev.save(&record("20260102T000000Z-0002")).unwrap();
        let loaded = dev.load().unwrap();
        assert_eq!(loaded.applies.len(), 2);
        assert_eq!(loaded.applies[0].status, ApplyStatus::Completed);
        assert!(prod.load().unwrap().applies.is_empty());
        let files: Vec<_> = std::fs::read_dir(dev.dir.join("applies"))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 2, "no temp files left behind");
    }

    #[test]
    fn a_record_of_another_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dev = StateStore::new(dir.path(), "p", "/envs/dev/db");
        dev.save(&record("x")).unwrap();
        let mut forged = StateStore::new(dir.path(), "p", "/envs/prod/db");
        forged.dir = dev.dir.clone();
        assert!(matches!(
            forged.load().unwrap_err(),
            StateError::OtherTarget { .. }
        ));
    }

    #[test]
    fn targets_resolve_to_one_key_per_location() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            resolve_target("./out/../db"),
            cwd.join("db").display().to_string()
        );
        assert_eq!(resolve_target("/a/./b/"), "/a/b");
        assert_eq!(resolve_target("s3://bucket/db/"), "s3://bucket/db");
        assert_eq!(resolve_target("file:///a/b"), "/a/b");
        assert_eq!(target_key("/a/b").len(), 16);
        assert_ne!(target_key("/a/b"), target_key("/a/c"));
    }

    #[test]
    fn format_1_history_of_this_target_is_imported() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = serde_json::json!({
            "format": 1, "plan": "p", "target": "/envs/dev/db",
            "applies": [record("old")],
        });
        std::fs::write(dir.path().join("p.state.json"), v1.to_string()).unwrap();
        let dev = StateStore::new(dir.path(), "p", "/envs/dev/db");
        let prod = StateStore::new(dir.path(), "p", "/envs/prod/db");
        assert_eq!(dev.load().unwrap().applies.len(), 1);
        assert!(prod.load().unwrap().applies.is_empty());
        dev.save(&record("new")).unwrap();
        let ids: Vec<String> = dev
            .load()
            .unwrap()
            .applies
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert!(ids.contains(&"old".to_string()) && ids.contains(&"new".to_string()));
    }

    #[test]
    fn version_left_belongs_to_the_named_table_only() {
        let mut a = record("x");
        let v = |version| Some(TableVersion { version, rows: 1 });
        a.steps.insert(
            StepKey::Index {
                table: "docs".into(),
                column: "vector".into(),
                index: crate::plan::IndexType::IvfPq,
            },
            StepRecord {
                version_after: v(9),
                ..Default::default()
            },
        );
        a.steps.insert(
            StepKey::copy("vector"),
            StepRecord {
                version_after: v(2),
                ..Default::default()
            },
        );
        assert_eq!(a.version_left("vector").map(|v| v.version), Some(2));
        assert_eq!(a.version_left("docs").map(|v| v.version), Some(9));
        assert_eq!(a.version_left("other"), None);
    }
}
