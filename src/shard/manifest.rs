//! The run manifest: what `--prepare` decided and what each shard attempt
//! wrote, kept beside the target in its own object store, so machines that
//! share nothing but the target agree on it.
//!
//! ```text
//! <target uri>/_lanceferry_runs/<RUN>/run.json                  prepare (put-if-absent)
//! <target uri>/_lanceferry_runs/<RUN>/shards/<K>/<attempt>.json one per shard attempt (put-if-absent)
//! ```
//!
//! Every object is written once and never changed, with put-if-absent
//! (S3's `If-None-Match: *`; a link on a local filesystem), so two writers
//! can never overwrite each other: a second `prepare` of the same run finds
//! the first one's `run.json`, and every shard attempt has a name of its
//! own. LanceDB lists only `*.lance` directories as tables, so
//! `_lanceferry_runs` is never mistaken for one.
//!
//! The store is built the way Lance builds the tables' own (the target URI
//! and the plan's `storage_options`, credentials from the environment as
//! Lance finds them), so whatever can write the tables can write the
//! manifest.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use lance::io::{ObjectStore, ObjectStoreParams, ObjectStoreRegistry, StorageOptionsAccessor};
use lance::table::format::Fragment;
use object_store::path::Path;
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{At, ShardError};
use crate::plan::Target;

/// The directory beside the tables that holds every run.
pub const RUNS_DIR: &str = "_lanceferry_runs";
/// The format of `run.json` and the attempts; a reader refuses others.
pub const FORMAT: u32 = 1;

/// `run.json`: the run as `--prepare` decided it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub format: u32,
    pub run: String,
    /// The plan's name and fingerprint (what decides the tables): shards
    /// and the commit refuse another plan.
    pub plan: String,
    pub fingerprint: String,
    /// N: every collection is cut into this many shards.
    pub shards: u32,
    pub prepared_at: DateTime<Utc>,
    pub host: String,
    pub collections: Vec<CollectionRun>,
}

/// One collection of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionRun {
    pub source: String,
    pub table: String,
    /// The vector dimension the table was created with.
    pub dim: u32,
    /// The table's version when the run was prepared (empty, just
    /// created): shards write against it, the commit reads from it.
    pub start_version: u64,
    /// Records in the source's read order, counted by the ids pass.
    pub count: u64,
    /// Shard K covers source positions `[start, end)`.
    pub ranges: Vec<ShardRange>,
}

/// Shard K's part of a collection, with the ids at its edges, so a worker
/// can tell that it reads the records the run was cut from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRange {
    pub shard: u32,
    pub start: u64,
    pub end: u64,
    /// The id at position `start` (`None` when `start == count`).
    pub first_id: Option<String>,
    /// The id at position `end`, the next shard's first (`None` when
    /// `end == count`).
    pub end_id: Option<String>,
}

impl RunManifest {
    pub fn collection(&self, table: &str) -> Option<&CollectionRun> {
        self.collections.iter().find(|c| c.table == table)
    }
}

impl CollectionRun {
    pub fn range(&self, shard: u32) -> Option<&ShardRange> {
        self.ranges.iter().find(|r| r.shard == shard)
    }
}

/// `shards/<K>/<attempt>.json`: what one run of one shard wrote. Each is
/// complete (a worker records it only after every table's files are
/// written), so any attempt of a shard is a correct one; the commit takes
/// the newest, and the others' files are simply unreferenced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub format: u32,
    pub run: String,
    pub shard: u32,
    pub shards: u32,
    /// The attempt's name (its file name without `.json`): the finishing
    /// time, then a random part, so names sort by time.
    pub attempt: String,
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub tables: Vec<AttemptTable>,
}

/// One table's part of an attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptTable {
    pub table: String,
    /// The source positions read, `[start, end)`.
    pub start: u64,
    pub end: u64,
    /// Rows written (the records of the range the plan did not skip).
    pub rows: u64,
    /// Records left out by `on_error: skip`.
    pub skipped: u64,
    /// The uncommitted fragments, in Lance's own JSON form.
    pub fragments: Vec<Fragment>,
}

impl Attempt {
    pub fn table(&self, table: &str) -> Option<&AttemptTable> {
        self.tables.iter().find(|t| t.table == table)
    }
}

impl AttemptTable {
    /// The data files (relative to the table's `data/`) these fragments use.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.fragments
            .iter()
            .flat_map(|f| f.files.iter().map(|d| d.path.as_str()))
    }
}

/// The objects of one run.
pub struct RunStore {
    store: Arc<ObjectStore>,
    dir: Path,
    run: String,
    /// `<target uri>/_lanceferry_runs/<RUN>`, for messages.
    pub location: String,
}

impl RunStore {
    /// The run's directory beside the target.
    pub async fn open(target: &Target, run: &str) -> Result<Self, ShardError> {
        super::check_run_name(run)?;
        let options: HashMap<String, String> = super::storage_options(target);
        let mut params = ObjectStoreParams::default();
        if !options.is_empty() {
            params.storage_options_accessor = Some(Arc::new(
                StorageOptionsAccessor::with_static_options(options),
            ));
        }
        let location = format!(
            "{}/{RUNS_DIR}/{run}",
            crate::plan::redact::url(target.uri.trim_end_matches('/'))
        );
        let (store, base) = ObjectStore::from_uri_and_params(
            Arc::new(ObjectStoreRegistry::default()),
            &target.uri,
            &params,
        )
        .await
        .map_err(At::new(run, "opening the run manifest").lance(
            format!("opening `{location}`"),
            "check `target.lancedb.uri` and `storage_options` (the run manifest is kept beside the tables, in the same store)",
        ))?;
        let dir = base.join(RUNS_DIR).join(run);
        Ok(RunStore {
            store,
            dir,
            run: run.to_string(),
            location,
        })
    }

    fn store_err(&self, at: &str) -> impl FnOnce(object_store::Error) -> ShardError {
        let (run, at, location) = (self.run.clone(), at.to_string(), self.location.clone());
        move |e| ShardError::Store {
            run,
            at,
            location,
            source: Box::new(e),
        }
    }

    fn run_path(&self) -> Path {
        self.dir.clone().join("run.json")
    }

    /// Reads one JSON object; `None` if it does not exist.
    async fn get<T: DeserializeOwned>(
        &self,
        path: &Path,
        at: &str,
    ) -> Result<Option<T>, ShardError> {
        let got = match self.store.inner.get(path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_err(at)(e)),
        };
        let bytes = got.bytes().await.map_err(self.store_err(at))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ShardError::Corrupt {
                run: self.run.clone(),
                at: at.to_string(),
                path: path.to_string(),
                reason: e.to_string(),
            })
    }

    /// Writes `value` at `path` unless something is there; `false` if it was.
    async fn put_new<T: Serialize>(
        &self,
        path: &Path,
        value: &T,
        at: &str,
    ) -> Result<bool, ShardError> {
        let bytes = serde_json::to_vec_pretty(value).expect("manifests serialize");
        match self
            .store
            .put_if_absent(path, PutPayload::from(bytes))
            .await
        {
            Ok(()) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.store_err(at)(e)),
        }
    }

    /// `run.json`, if the run was prepared.
    pub async fn read_run(&self, at: &str) -> Result<Option<RunManifest>, ShardError> {
        let m: Option<RunManifest> = self.get(&self.run_path(), at).await?;
        match m {
            Some(m) if m.format != FORMAT => Err(ShardError::Corrupt {
                run: self.run.clone(),
                at: at.to_string(),
                path: self.run_path().to_string(),
                reason: format!("format {} (this lanceferry reads {FORMAT})", m.format),
            }),
            m => Ok(m),
        }
    }

    /// The run, which must have been prepared.
    pub async fn prepared(&self, at: &str) -> Result<RunManifest, ShardError> {
        self.read_run(at)
            .await?
            .ok_or_else(|| ShardError::NotPrepared {
                run: self.run.clone(),
                location: self.location.clone(),
            })
    }

    /// Writes `run.json` unless it exists; `false` if another prepare
    /// wrote it first.
    pub async fn create_run(&self, m: &RunManifest) -> Result<bool, ShardError> {
        self.put_new(&self.run_path(), m, "prepare").await
    }

    /// Records a finished attempt under a name of its own (a new name is
    /// drawn in the unlikely case that one is taken). Returns its path.
    pub async fn put_attempt(&self, a: &mut Attempt, at: &str) -> Result<String, ShardError> {
        for salt in 0..16u32 {
            let name = attempt_name(a.finished_at, a.pid, salt);
            a.attempt = name.clone();
            let path = self
                .dir
                .clone()
                .join("shards")
                .join(a.shard.to_string())
                .join(format!("{name}.json"));
            if self.put_new(&path, &*a, at).await? {
                return Ok(format!("{}/shards/{}/{name}.json", self.location, a.shard));
            }
        }
        Err(ShardError::Internal {
            run: self.run.clone(),
            at: at.to_string(),
            reason: "16 attempt names in a row were taken".into(),
        })
    }

    /// Every recorded attempt of the run (any shard, any N), unordered.
    pub async fn attempts(&self, at: &str) -> Result<Vec<Attempt>, ShardError> {
        let prefix = self.dir.clone().join("shards");
        let mut listing = self.store.inner.list(Some(&prefix));
        let mut paths = Vec::new();
        loop {
            match listing.try_next().await {
                Ok(Some(meta)) => {
                    // Only finished objects named `<attempt>.json`; a local
                    // put-if-absent's staging file ends in `.tmp.<uuid>`.
                    if meta
                        .location
                        .filename()
                        .is_some_and(|f| f.ends_with(".json"))
                    {
                        paths.push(meta.location);
                    }
                }
                Ok(None) => break,
                // A local directory that was never created: no attempts.
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(self.store_err(at)(e)),
            }
        }
        paths.sort();
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            let Some(a): Option<Attempt> = self.get(&p, at).await? else {
                continue; // removed meanwhile
            };
            if a.format != FORMAT || a.run != self.run {
                return Err(ShardError::Corrupt {
                    run: self.run.clone(),
                    at: at.to_string(),
                    path: p.to_string(),
                    reason: format!(
                        "format {} of run `{}` (expected format {FORMAT} of run `{}`)",
                        a.format, a.run, self.run
                    ),
                });
            }
            out.push(a);
        }
        Ok(out)
    }
}

/// `<finished, to the microsecond>-<16 hex>`: sorts by time; the hex part
/// (host, pid, clock and a salt, hashed) keeps two machines apart.
fn attempt_name(finished: DateTime<Utc>, pid: u32, salt: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = crate::hash::hash64(&[
        crate::state::hostname().as_bytes(),
        &pid.to_le_bytes(),
        &nanos.to_le_bytes(),
        &salt.to_le_bytes(),
    ]);
    format!("{}-{h:016x}", finished.format("%Y%m%dT%H%M%S%.6fZ"))
}

/// Each shard's newest attempt, and the attempts it supersedes, for a run
/// of `shards` shards. Attempts recorded for another shard count (a
/// refused worker never records one, so there are none) are ignored.
pub fn newest(
    attempts: Vec<Attempt>,
    shards: u32,
) -> (std::collections::BTreeMap<u32, Attempt>, Vec<Attempt>) {
    let mut best: std::collections::BTreeMap<u32, Attempt> = Default::default();
    let mut older = Vec::new();
    for a in attempts {
        if a.shards != shards || a.shard >= shards {
            continue;
        }
        match best.get(&a.shard) {
            Some(b) if (b.finished_at, &b.attempt) >= (a.finished_at, &a.attempt) => older.push(a),
            _ => {
                if let Some(prev) = best.insert(a.shard, a) {
                    older.push(prev);
                }
            }
        }
    }
    (best, older)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(shard: u32, secs: i64, name: &str) -> Attempt {
        let t = DateTime::from_timestamp(secs, 0).unwrap();
        Attempt {
            format: FORMAT,
            run: "r".into(),
            shard,
            shards: 4,
            attempt: name.into(),
            host: "h".into(),
            pid: 1,
            started_at: t,
            finished_at: t,
            tables: Vec::new(),
        }
    }

    #[test]
    fn the_newest_attempt_of_each_shard_wins() {
        let (best, older) = newest(
            vec![
                attempt(1, 10, "a"),
                attempt(1, 30, "c"),
                attempt(1, 20, "b"),
                attempt(0, 5, "x"),
                attempt(7, 5, "out of range"),
            ],
            4,
        );
        assert_eq!(best.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(best[&1].attempt, "c");
        let mut o: Vec<_> = older.iter().map(|a| a.attempt.as_str()).collect();
        o.sort();
        assert_eq!(o, vec!["a", "b"]);
    }

    #[test]
    fn an_attempt_keeps_lance_fragments_through_json() {
        let mut a = attempt(2, 10, "x");
        let mut f = Fragment::new(7);
        f.physical_rows = Some(50_000);
        a.tables.push(AttemptTable {
            table: "t".into(),
            start: 100,
            end: 150,
            rows: 50,
            skipped: 0,
            fragments: vec![f.clone()],
        });
        let back: Attempt =
            serde_json::from_slice(&serde_json::to_vec_pretty(&a).unwrap()).unwrap();
        assert_eq!(back.table("t").unwrap().fragments, vec![f]);
        assert_eq!(back.finished_at, a.finished_at);
    }

    #[test]
    fn attempt_names_sort_by_finishing_time() {
        let a = attempt_name(DateTime::from_timestamp(100, 0).unwrap(), 1, 0);
        let b = attempt_name(DateTime::from_timestamp(100, 1000).unwrap(), 1, 0);
        assert!(a < b, "{a} {b}");
        assert!(a.starts_with("19700101T000140.000000Z-"), "{a}");
    }
}
