//! The mirror's journal: every write to a mirrored collection, on disk
//! before it is forwarded, until LanceDB holds what Chroma holds for its ids.
//!
//! A directory of append-only segment files (`000000000001.jsonl`, ...) of
//! JSON lines. A request arrives: `{"kind":"write","seq":N,"collection":..,
//! "op":..,"ids":[..],"at":..}` is written and `fsync`ed before the request
//! goes on. The upstream answers: `{"kind":"outcome","seq":N,"ok":true}`
//! (`false`: it refused; `null`: nobody knows, the connection failed). The
//! writer made LanceDB match the upstream for those ids:
//! `{"kind":"applied","seq":N}`. Outcome and applied lines go to the
//! segment of their write line, so a segment is self-contained: once every
//! write in it is applied it is deleted whole, and no other segment refers
//! to it.
//!
//! Only the write line must be durable before the request is forwarded: a
//! lost outcome line makes the entry "unknown", a lost applied line makes
//! it pending again, and either only means its ids are read from the
//! upstream once more (the writer writes the upstream's current state, so
//! applying twice is harmless). One thread owns the files and writes
//! whatever queued meanwhile with one `fsync` for all of it (group commit),
//! so concurrent clients share the cost of a sync.
//!
//! On open the segments are replayed: a torn last line (a crash in the
//! middle of a write) is cut off, entries without an applied line are
//! pending, segments with none are deleted. The journal is bounded: a write
//! line that would take the files past the limit is refused, and the caller
//! forwards the request unjournaled (stats: `dropped`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

/// Errors of the journal. Each names the file and ends with a hint.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "mirror journal `{path}`: {source}\nhint: check that the state directory (`state.path` in the plan) exists, is writable and is not full"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "mirror journal `{path}`, line {line}: {reason}\nhint: the file was damaged or edited by hand; move it aside, start the mirror again, and run `lanceferry apply PLAN` (`mode: sync`) to bring the tables level with Chroma"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "mirror journal `{path}`: writing a write line failed: {reason}\nhint: check the disk holding the state directory; the request was forwarded without being journaled (counted as `dropped`), and `lanceferry apply PLAN` (`mode: sync`) heals it"
    )]
    Write { path: PathBuf, reason: String },
    #[error(
        "mirror journal `{path}`: its file thread has stopped\nhint: this is a bug in lanceferry (please report it); restart `lanceferry mirror`, which replays the journal"
    )]
    Stopped { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A write operation of Chroma's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Add,
    Upsert,
    Update,
    Delete,
}

impl Op {
    /// The operation a route ends with (`.../add`), if it is a write.
    pub fn from_route(last: &str) -> Option<Op> {
        Some(match last {
            "add" => Op::Add,
            "upsert" => Op::Upsert,
            "update" => Op::Update,
            "delete" => Op::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Upsert => "upsert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// A line as read back. Unknown fields (a newer writer's) are ignored.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Write {
        seq: u64,
        collection: String,
        op: Op,
        ids: Vec<String>,
        at: DateTime<Utc>,
    },
    Outcome {
        seq: u64,
        ok: Option<bool>,
        at: DateTime<Utc>,
    },
    Applied {
        seq: u64,
    },
}

// The lines as written: borrowed, so a large id list is not copied to be
// serialized.
#[derive(Serialize)]
#[serde(tag = "kind", rename = "write")]
struct WriteLine<'a> {
    seq: u64,
    collection: &'a str,
    op: Op,
    ids: &'a [String],
    at: DateTime<Utc>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename = "outcome")]
struct OutcomeLine {
    seq: u64,
    ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    at: DateTime<Utc>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename = "applied")]
struct AppliedLine {
    seq: u64,
}

fn json_line(value: &impl Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("a journal line serializes");
    bytes.push(b'\n');
    bytes
}

/// What is known of a journaled write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// Forwarded; the upstream has not answered yet. Not applied until it
    /// does: reading its ids now could see the records before the write.
    InFlight,
    /// The upstream answered (`ok`: a 2xx status).
    Answered { ok: bool },
    /// Nobody knows whether the upstream applied it, nor when: the proxy
    /// crashed or lost the connection. A request the upstream received may
    /// still be in its hands for a moment, so the entry waits `grace` from
    /// `since` before its ids are read.
    Unknown { since: DateTime<Utc> },
}

impl State {
    /// Whether the writer may read the entry's ids from the upstream now.
    pub fn ready(&self, now: DateTime<Utc>, grace: Duration) -> bool {
        match self {
            State::InFlight => false,
            State::Answered { .. } => true,
            // A clock that went back reads as "not yet".
            State::Unknown { since } => now
                .signed_duration_since(*since)
                .to_std()
                .is_ok_and(|d| d >= grace),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    collection: String,
    op: Op,
    ids: Vec<String>,
    at: DateTime<Utc>,
    state: State,
    segment: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    /// The file's size as written (or queued to be).
    bytes: u64,
    /// Entries of this segment not yet applied.
    live: usize,
}

/// One journaled write handed to the writer.
#[derive(Debug, Clone)]
pub struct Taken {
    pub seq: u64,
    pub op: Op,
    pub ids: Vec<String>,
    /// The upstream answered 2xx (for `both_ok`).
    pub upstream_ok: bool,
}

/// Journaled writes of one collection, oldest first.
#[derive(Debug, Clone)]
pub struct Batch {
    pub collection: String,
    pub entries: Vec<Taken>,
}

impl Batch {
    pub fn seqs(&self) -> Vec<u64> {
        self.entries.iter().map(|e| e.seq).collect()
    }

    /// The ids the entries touch, each once, in first-seen order.
    pub fn ids(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in &self.entries {
            for id in &e.ids {
                if seen.insert(id.as_str()) {
                    out.push(id.clone());
                }
            }
        }
        out
    }
}

/// How much the journal holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Entries not yet applied.
    pub entries: u64,
    /// Ids they touch (an id touched twice counts twice).
    pub ids: u64,
    /// When the oldest of them arrived.
    pub oldest: Option<DateTime<Utc>>,
    /// Entries per collection.
    pub by_collection: BTreeMap<String, u64>,
    /// The segment files' size, and its limit.
    pub bytes: u64,
    pub max_bytes: u64,
}

/// What replaying the journal found.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    /// Entries not yet applied.
    pub pending: u64,
    /// Of those, entries whose upstream outcome is unknown.
    pub unknown: u64,
    /// Segment files deleted because every entry in them was applied.
    pub removed: usize,
    /// Segment files whose torn last line was cut off.
    pub torn: Vec<PathBuf>,
}

/// The journal's in-memory index (the files are the truth; this is what
/// replaying them gives, kept up to date).
#[derive(Debug)]
struct Book {
    entries: BTreeMap<u64, Entry>,
    segments: BTreeMap<u64, Segment>,
    /// The segment new write lines go to.
    current: u64,
    next_seq: u64,
    /// All segments' bytes.
    bytes: u64,
    max_bytes: u64,
    segment_max: u64,
}

impl Book {
    /// The segment a new write line of `len` bytes goes to, counted there;
    /// and the segment it leaves behind if that holds no pending entry
    /// (the caller deletes it: nothing else would).
    fn place(&mut self, len: u64) -> (u64, Option<u64>) {
        let full = self
            .segments
            .get(&self.current)
            .is_some_and(|s| s.bytes > 0 && s.bytes + len > self.segment_max);
        let mut retired = None;
        if full {
            if self
                .segments
                .get(&self.current)
                .is_some_and(|s| s.live == 0)
            {
                retired = Some(self.current);
            }
            self.current += 1;
        }
        let s = self.segments.entry(self.current).or_default();
        s.bytes += len;
        s.live += 1;
        self.bytes += len;
        (self.current, retired)
    }

    /// Whether the current segment, now without pending entries, is big
    /// enough to delete rather than keep writing to.
    fn retire_current(&self) -> bool {
        let keep_below = self.segment_max.min(self.max_bytes / 4);
        self.segments
            .get(&self.current)
            .is_none_or(|s| s.bytes >= keep_below)
    }

    /// Counts `len` more bytes in a segment (an outcome or applied line).
    fn grow(&mut self, segment: u64, len: u64) {
        if let Some(s) = self.segments.get_mut(&segment) {
            s.bytes += len;
            self.bytes += len;
        }
    }

    /// Removes an entry: its segment, and whether that is now empty.
    fn release(&mut self, seq: u64) -> Option<(u64, bool)> {
        let e = self.entries.remove(&seq)?;
        let s = self.segments.get_mut(&e.segment)?;
        s.live = s.live.saturating_sub(1);
        Some((e.segment, s.live == 0))
    }

    /// Forgets an empty segment: its bytes no longer count, and no line
    /// goes to it again.
    fn forget_segment(&mut self, segment: u64) {
        if let Some(s) = self.segments.remove(&segment) {
            self.bytes = self.bytes.saturating_sub(s.bytes);
        }
        if segment >= self.current {
            self.current = segment + 1;
        }
    }

    fn pending(&self) -> Pending {
        let mut p = Pending {
            entries: self.entries.len() as u64,
            bytes: self.bytes,
            max_bytes: self.max_bytes,
            ..Pending::default()
        };
        for e in self.entries.values() {
            p.ids += e.ids.len() as u64;
            p.oldest = Some(p.oldest.map_or(e.at, |o| o.min(e.at)));
            *p.by_collection.entry(e.collection.clone()).or_default() += 1;
        }
        p
    }
}

/// Work for the file thread.
enum Cmd {
    Append {
        segment: u64,
        bytes: Vec<u8>,
        /// `fsync` before answering.
        durable: bool,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    Remove {
        segment: u64,
    },
    /// Syncs every open file, then answers.
    Sync {
        done: oneshot::Sender<()>,
    },
}

/// The journal of one plan's mirror. Cloning shares it.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    book: Mutex<Book>,
    tx: mpsc::Sender<Cmd>,
    /// Signalled when an entry may have become ready (an outcome arrived).
    ready: Notify,
}

pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}.jsonl"))
}

/// The segment files of a journal directory, by number.
fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io(dir))?;
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        if stem.len() == 12
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = stem.parse::<u64>()
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The lines of a segment, and the length of its valid prefix. An
/// unterminated or unparsable *last* line is a write a crash cut short and
/// is left out; an unparsable line with complete lines after it is damage.
fn parse_segment(path: &Path, data: &[u8]) -> Result<(Vec<Line>, usize), JournalError> {
    let mut lines = Vec::new();
    let mut pos = 0;
    let mut line_no = 0;
    while pos < data.len() {
        line_no += 1;
        let Some(n) = data[pos..].iter().position(|&b| b == b'\n') else {
            break; // unterminated: torn
        };
        let raw = &data[pos..pos + n];
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            pos += n + 1;
            continue;
        }
        match serde_json::from_slice::<Line>(raw) {
            Ok(l) => {
                lines.push(l);
                pos += n + 1;
            }
            Err(e) => {
                // A crash can leave zeros (a file extended, its data not
                // yet written) after a partial line: still the torn end.
                let rest = &data[pos + n + 1..];
                if rest.iter().all(|&b| b == 0 || b.is_ascii_whitespace()) {
                    break;
                }
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_no,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok((lines, pos))
}

#[derive(Default)]
struct Scan {
    entries: BTreeMap<u64, Entry>,
    segments: BTreeMap<u64, Segment>,
    last_seq: u64,
    last_segment: u64,
    removed: usize,
    torn: Vec<PathBuf>,
}

/// Replays every segment. With `repair`, torn tails are cut off and fully
/// applied segments deleted (only the journal's owner may do that).
fn scan(dir: &Path, repair: bool) -> Result<Scan, JournalError> {
    let mut scan = Scan::default();
    for (n, path) in segment_files(dir)? {
        scan.last_segment = scan.last_segment.max(n);
        let data = std::fs::read(&path).map_err(io(&path))?;
        let (lines, valid) = parse_segment(&path, &data)?;
        if valid < data.len() {
            scan.torn.push(path.clone());
            if repair {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(valid as u64).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
        }
        let mut writes: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut outcomes: BTreeMap<u64, State> = BTreeMap::new();
        let mut applied: HashSet<u64> = HashSet::new();
        for line in lines {
            match line {
                Line::Write {
                    seq,
                    collection,
                    op,
                    ids,
                    at,
                } => {
                    scan.last_seq = scan.last_seq.max(seq);
                    writes.insert(
                        seq,
                        Entry {
                            collection,
                            op,
                            ids,
                            at,
                            // No outcome: the proxy died before the answer.
                            state: State::Unknown { since: at },
                            segment: n,
                        },
                    );
                }
                Line::Outcome { seq, ok, at } => {
                    scan.last_seq = scan.last_seq.max(seq);
                    outcomes.insert(
                        seq,
                        match ok {
                            Some(ok) => State::Answered { ok },
                            None => State::Unknown { since: at },
                        },
                    );
                }
                Line::Applied { seq } => {
                    scan.last_seq = scan.last_seq.max(seq);
                    applied.insert(seq);
                }
            }
        }
        let mut live = 0;
        for (seq, mut e) in writes {
            if applied.contains(&seq) {
                continue;
            }
            if let Some(s) = outcomes.get(&seq) {
                e.state = *s;
            }
            scan.entries.insert(seq, e);
            live += 1;
        }
        if live == 0 {
            if repair {
                std::fs::remove_file(&path).map_err(io(&path))?;
                scan.removed += 1;
            }
            continue;
        }
        scan.segments.insert(
            n,
            Segment {
                bytes: valid as u64,
                live,
            },
        );
    }
    if repair && (scan.removed > 0 || !scan.torn.is_empty()) {
        sync_dir(dir).map_err(io(dir))?;
    }
    Ok(scan)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Refuses a directory the journal cannot write and sync (read-only,
/// full, not a directory): better said at start than at the first write.
fn probe(dir: &Path) -> Result<(), JournalError> {
    fn write_sync_remove(path: &Path) -> std::io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(b"probe\n")?;
        f.sync_data()?;
        std::fs::remove_file(path)
    }
    let path = dir.join(format!(".probe-{}", std::process::id()));
    write_sync_remove(&path).map_err(io(&path))
}

impl Journal {
    /// Opens (creating) the journal in `dir`, replays it, and starts its
    /// file thread. `max_bytes` bounds the segment files.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Journal, Replayed), JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        probe(dir)?;
        let scan = scan(dir, true)?;
        // Small enough that applied segments free space long before the
        // limit, large enough that a busy journal has few files.
        let segment_max = (max_bytes / 8).clamp(64 << 10, 64 << 20);
        let bytes = scan.segments.values().map(|s| s.bytes).sum();
        let book = Book {
            entries: scan.entries,
            segments: scan.segments,
            current: scan.last_segment + 1,
            next_seq: scan.last_seq + 1,
            bytes,
            max_bytes,
            segment_max,
        };
        let replayed = Replayed {
            pending: book.entries.len() as u64,
            unknown: book
                .entries
                .values()
                .filter(|e| matches!(e.state, State::Unknown { .. }))
                .count() as u64,
            removed: scan.removed,
            torn: scan.torn,
        };
        let (tx, rx) = mpsc::channel();
        let thread_dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("mirror-journal".into())
            .spawn(move || files(thread_dir, rx))
            .map_err(io(dir))?;
        Ok((
            Journal {
                inner: Arc::new(Inner {
                    dir: dir.to_path_buf(),
                    book: Mutex::new(book),
                    tx,
                    ready: Notify::new(),
                }),
            },
            replayed,
        ))
    }

    /// What a journal directory holds, read only (for `mirror status` when
    /// no mirror runs; nothing is repaired or deleted).
    pub fn inspect(dir: &Path, max_bytes: u64) -> Result<Pending, JournalError> {
        let scan = scan(dir, false)?;
        let book = Book {
            entries: scan.entries,
            bytes: scan.segments.values().map(|s| s.bytes).sum(),
            segments: scan.segments,
            current: scan.last_segment + 1,
            next_seq: scan.last_seq + 1,
            max_bytes,
            segment_max: 0,
        };
        Ok(book.pending())
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while the book was held leaves it consistent enough to
        // go on: every change to it is a few field updates.
        self.inner
            .book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a write before it is forwarded: returns its sequence number
    /// once its line is on disk (`fsync`ed), or `None` when the journal is
    /// full (the caller forwards the request unjournaled).
    pub async fn record(
        &self,
        collection: &str,
        op: Op,
        ids: Vec<String>,
    ) -> Result<Option<u64>, JournalError> {
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut book = self.book();
            let seq = book.next_seq;
            let at = Utc::now();
            let bytes = json_line(&WriteLine {
                seq,
                collection,
                op,
                ids: &ids,
                at,
            });
            let len = bytes.len() as u64;
            if book.bytes + len > book.max_bytes {
                return Ok(None);
            }
            book.next_seq += 1;
            let (segment, retired) = book.place(len);
            if let Some(old) = retired {
                book.forget_segment(old);
                let _ = self.inner.tx.send(Cmd::Remove { segment: old });
            }
            book.entries.insert(
                seq,
                Entry {
                    collection: collection.to_string(),
                    op,
                    ids,
                    at,
                    state: State::InFlight,
                    segment,
                },
            );
            // Sent while the book is held, so lines reach the files in
            // sequence order.
            let sent = self.inner.tx.send(Cmd::Append {
                segment,
                bytes,
                durable: true,
                done: Some(tx),
            });
            if sent.is_err() {
                self.release_locked(&mut book, &[seq]);
                return Err(JournalError::Stopped {
                    path: self.inner.dir.clone(),
                });
            }
            seq
        };
        match rx.await {
            Ok(Ok(())) => Ok(Some(seq)),
            Ok(Err(reason)) => {
                self.forget(seq);
                Err(JournalError::Write {
                    path: self.inner.dir.clone(),
                    reason,
                })
            }
            Err(_) => {
                self.forget(seq);
                Err(JournalError::Stopped {
                    path: self.inner.dir.clone(),
                })
            }
        }
    }

    /// Drops an entry whose write line may not be on disk. If it is after
    /// all, a replay finds it pending and its ids are read once more.
    fn forget(&self, seq: u64) {
        let mut book = self.book();
        self.release_locked(&mut book, &[seq]);
    }

    /// Marks the upstream's answer: `Some(ok)` (a 2xx status or not), or
    /// `None` when nobody knows whether it applied the write (the
    /// connection failed, the request was abandoned).
    pub fn outcome(&self, seq: u64, ok: Option<bool>, status: Option<u16>) {
        {
            let mut book = self.book();
            let Some(e) = book.entries.get_mut(&seq) else {
                return;
            };
            let at = Utc::now();
            e.state = match ok {
                Some(ok) => State::Answered { ok },
                None => State::Unknown { since: at },
            };
            let segment = e.segment;
            let bytes = json_line(&OutcomeLine {
                seq,
                ok,
                status,
                at,
            });
            book.grow(segment, bytes.len() as u64);
            // Queued before the writer can see the new state (it needs the
            // book), so the outcome line precedes any applied line.
            let _ = self.inner.tx.send(Cmd::Append {
                segment,
                bytes,
                durable: false,
                done: None,
            });
        }
        self.inner.ready.notify_one();
    }

    /// The oldest ready entries of one collection not in `skip`, up to
    /// `max_ids` ids (at least one entry, however large). They stay in the
    /// journal until [`Journal::applied`].
    pub fn take(
        &self,
        now: DateTime<Utc>,
        grace: Duration,
        max_ids: usize,
        skip: &HashSet<String>,
    ) -> Option<Batch> {
        let book = self.book();
        let mut batch: Option<Batch> = None;
        let mut n = 0;
        for (seq, e) in &book.entries {
            if !e.state.ready(now, grace) || skip.contains(&e.collection) {
                continue;
            }
            let taken = Taken {
                seq: *seq,
                op: e.op,
                ids: e.ids.clone(),
                upstream_ok: e.state == State::Answered { ok: true },
            };
            match &mut batch {
                None => {
                    n = e.ids.len();
                    batch = Some(Batch {
                        collection: e.collection.clone(),
                        entries: vec![taken],
                    });
                }
                Some(b) if b.collection == e.collection => {
                    if n + e.ids.len() > max_ids {
                        break;
                    }
                    n += e.ids.len();
                    b.entries.push(taken);
                }
                Some(_) => {}
            }
        }
        batch
    }

    /// Ids of ready entries whose collection is not in `skip`.
    pub fn ready_ids(&self, now: DateTime<Utc>, grace: Duration, skip: &HashSet<String>) -> usize {
        let book = self.book();
        book.entries
            .values()
            .filter(|e| e.state.ready(now, grace) && !skip.contains(&e.collection))
            // An entry without ids is work too (it must be marked applied).
            .map(|e| e.ids.len().max(1))
            .sum()
    }

    /// Signalled when an entry may have become ready.
    pub fn ready(&self) -> &Notify {
        &self.inner.ready
    }

    /// Marks entries applied: LanceDB holds what the upstream held for
    /// their ids. Segments left without pending entries are deleted.
    pub fn applied(&self, seqs: &[u64]) {
        let mut book = self.book();
        self.release_locked(&mut book, seqs);
    }

    fn release_locked(&self, book: &mut Book, seqs: &[u64]) {
        let mut lines: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut emptied = BTreeSet::new();
        for &seq in seqs {
            let Some((segment, empty)) = book.release(seq) else {
                continue;
            };
            lines
                .entry(segment)
                .or_default()
                .extend(json_line(&AppliedLine { seq }));
            // The segment new lines go to stays while it is small, however
            // empty: deleting it would cost a new file (and its directory
            // sync) for the next write, at every write when traffic is
            // light. Grown to a quarter of the bound (or its own size
            // limit), it goes, so its lines never keep the journal full.
            if empty && (segment != book.current || book.retire_current()) {
                emptied.insert(segment);
            }
        }
        for (segment, bytes) in lines {
            // A segment about to be deleted needs no more lines.
            if emptied.contains(&segment) {
                continue;
            }
            book.grow(segment, bytes.len() as u64);
            let _ = self.inner.tx.send(Cmd::Append {
                segment,
                bytes,
                durable: false,
                done: None,
            });
        }
        for segment in emptied {
            book.forget_segment(segment);
            let _ = self.inner.tx.send(Cmd::Remove { segment });
        }
    }

    /// What the journal holds now.
    pub fn pending(&self) -> Pending {
        self.book().pending()
    }

    /// Waits until every line queued so far is on disk.
    pub async fn sync(&self) {
        let (done, rx) = oneshot::channel();
        if self.inner.tx.send(Cmd::Sync { done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The file thread: owns the segment files, writes what queued with one
/// `fsync` per segment, and ends when the journal is dropped.
fn files(dir: PathBuf, rx: mpsc::Receiver<Cmd>) {
    let mut open: BTreeMap<u64, File> = BTreeMap::new();
    while let Ok(first) = rx.recv() {
        let mut cmds = vec![first];
        cmds.extend(rx.try_iter());
        let mut dirty = BTreeSet::new();
        let mut waiting = Vec::new();
        let mut synced = Vec::new();
        let mut created = false;
        let mut failed: BTreeMap<u64, String> = BTreeMap::new();
        for cmd in cmds {
            match cmd {
                Cmd::Append {
                    segment,
                    bytes,
                    durable,
                    done,
                } => match append(&dir, &mut open, segment, &bytes, &mut created) {
                    Ok(()) => {
                        if durable {
                            dirty.insert(segment);
                        }
                        if let Some(d) = done {
                            waiting.push((segment, d));
                        }
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        match done {
                            Some(d) => {
                                let _ = d.send(Err(reason));
                            }
                            None => tracing::warn!(
                                "mirror journal `{}`: {reason} (an outcome or applied mark; the entry is read from the upstream again later)",
                                segment_path(&dir, segment).display()
                            ),
                        }
                    }
                },
                Cmd::Remove { segment } => {
                    open.remove(&segment);
                    let path = segment_path(&dir, segment);
                    if let Err(e) = std::fs::remove_file(&path)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::warn!("mirror journal `{}`: {e}", path.display());
                    }
                }
                Cmd::Sync { done } => {
                    dirty.extend(open.keys().copied());
                    synced.push(done);
                }
            }
        }
        for seg in &dirty {
            if let Some(f) = open.get(seg)
                && let Err(e) = f.sync_data()
            {
                failed.insert(*seg, e.to_string());
            }
        }
        // A new file exists durably only once its directory entry does.
        if created && let Err(e) = sync_dir(&dir) {
            for seg in &dirty {
                failed
                    .entry(*seg)
                    .or_insert_with(|| format!("syncing the directory: {e}"));
            }
        }
        for (seg, done) in waiting {
            let _ = done.send(match failed.get(&seg) {
                Some(reason) => Err(reason.clone()),
                None => Ok(()),
            });
        }
        for done in synced {
            let _ = done.send(());
        }
        // Only the newest segment is written often: keep it open.
        if let Some(&last) = open.keys().next_back() {
            open.retain(|k, _| *k == last);
        }
    }
}

fn append(
    dir: &Path,
    open: &mut BTreeMap<u64, File>,
    segment: u64,
    bytes: &[u8],
    created: &mut bool,
) -> std::io::Result<()> {
    let f = match open.entry(segment) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => {
            let path = segment_path(dir, segment);
            let existed = path.exists();
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            if !existed {
                *created = true;
            }
            e.insert(f)
        }
    };
    // A failed write (a full disk) must not leave half a line in the
    // middle of the segment, which a replay would take for damage: cut
    // the file back to where it was.
    let before = f.metadata()?.len();
    if let Err(e) = f.write_all(bytes) {
        let _ = f.set_len(before);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn segments(dir: &Path) -> usize {
        segment_files(dir).unwrap().len()
    }

    #[tokio::test]
    async fn an_entry_is_pending_from_its_write_line_until_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, replayed) = Journal::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(replayed.pending, 0);
        let seq = j
            .record("docs", Op::Upsert, ids(&["a", "b"]))
            .await
            .unwrap()
            .unwrap();
        let now = Utc::now();
        let none = HashSet::new();
        // In flight: not ready, whatever the time.
        assert!(j.take(now, Duration::ZERO, 100, &none).is_none());
        j.outcome(seq, Some(true), Some(200));
        let b = j.take(now, GRACE, 100, &none).unwrap();
        assert_eq!((b.collection.as_str(), b.seqs()), ("docs", vec![seq]));
        assert!(b.entries[0].upstream_ok);
        assert_eq!(j.pending().entries, 1);
        j.applied(&b.seqs());
        j.sync().await;
        assert_eq!(j.pending().entries, 0);
        // Every entry applied, but the segment is the one being written
        // to, and small: it stays for the next write (no file per write).
        assert_eq!(segments(tmp.path()), 1);
        let next = j
            .record("docs", Op::Add, ids(&["c"]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(segments(tmp.path()), 1, "the same file");
        j.outcome(next, Some(true), Some(200));
        j.applied(&[next]);
        drop(j);
        // Reopened, a segment without pending entries is removed.
        let (_j, replayed) = Journal::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(replayed.pending, 0);
        assert_eq!(segments(tmp.path()), 0);
    }

    #[tokio::test]
    async fn a_crash_leaves_unknown_entries_that_wait_the_grace() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (j, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
            let a = j.record("docs", Op::Add, ids(&["a"])).await.unwrap();
            let b = j.record("docs", Op::Delete, ids(&["b"])).await.unwrap();
            let c = j.record("docs", Op::Update, ids(&["c"])).await.unwrap();
            j.outcome(a.unwrap(), Some(true), Some(200));
            j.outcome(c.unwrap(), Some(true), Some(200));
            j.applied(&[c.unwrap()]);
            let _ = b; // no outcome: the proxy "died" before the answer
            j.sync().await;
        }
        let (j, replayed) = Journal::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!((replayed.pending, replayed.unknown), (2, 1));
        let none = HashSet::new();
        let now = Utc::now();
        // The answered one at once, the unknown one only after the grace.
        let first = j.take(now, GRACE, 100, &none).unwrap();
        assert_eq!(first.ids(), ids(&["a"]));
        let later = now + chrono::Duration::seconds(11);
        let both = j.take(later, GRACE, 100, &none).unwrap();
        assert_eq!(both.ids(), ids(&["a", "b"]));
        // New sequence numbers continue after the replayed ones.
        let d = j
            .record("docs", Op::Add, ids(&["d"]))
            .await
            .unwrap()
            .unwrap();
        assert!(d > both.seqs().into_iter().max().unwrap());
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_and_damage_elsewhere_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (j, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
            j.record("docs", Op::Add, ids(&["a"])).await.unwrap();
            j.sync().await;
        }
        let path = segment_files(tmp.path()).unwrap()[0].1.clone();
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"kind":"write","seq":2,"collection":"docs","op":"ad"#);
        std::fs::write(&path, &torn).unwrap();
        let (j, replayed) = Journal::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(replayed.pending, 1);
        assert_eq!(replayed.torn, vec![path.clone()]);
        drop(j);
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the torn tail is cut");

        let mut damaged = b"not json\n".to_vec();
        damaged.extend_from_slice(&whole);
        std::fs::write(&path, &damaged).unwrap();
        let err = Journal::open(tmp.path(), 1 << 20).err().unwrap();
        assert!(
            matches!(err, JournalError::Corrupt { line: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("\nhint: "), "{err}");
    }

    #[tokio::test]
    async fn a_full_journal_refuses_and_applying_frees_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(tmp.path(), 400).unwrap();
        let long: Vec<String> = (0..20).map(|i| format!("id-{i:04}")).collect();
        let first = j.record("docs", Op::Add, long.clone()).await.unwrap();
        let seq = first.expect("the first fits");
        assert_eq!(j.record("docs", Op::Add, long.clone()).await.unwrap(), None);
        j.outcome(seq, Some(true), Some(200));
        j.applied(&[seq]);
        assert!(j.record("docs", Op::Add, long).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_batch_is_one_collection_oldest_first_within_its_id_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        let mut seqs = Vec::new();
        for (c, v) in [
            ("a", &["1", "2"][..]),
            ("b", &["3"][..]),
            ("a", &["2", "4"][..]),
            ("a", &["5", "6", "7"][..]),
        ] {
            let s = j.record(c, Op::Upsert, ids(v)).await.unwrap().unwrap();
            j.outcome(s, Some(true), Some(200));
            seqs.push(s);
        }
        let now = Utc::now();
        let b = j.take(now, GRACE, 4, &HashSet::new()).unwrap();
        assert_eq!(b.collection, "a");
        assert_eq!(b.seqs(), vec![seqs[0], seqs[2]]);
        assert_eq!(b.ids(), ids(&["1", "2", "4"]));
        let skip = HashSet::from(["a".to_string()]);
        assert_eq!(j.take(now, GRACE, 4, &skip).unwrap().collection, "b");
        assert_eq!(j.ready_ids(now, GRACE, &skip), 1);
    }

    #[test]
    fn unknown_waits_and_in_flight_never_is_ready() {
        let since = Utc::now();
        let u = State::Unknown { since };
        assert!(!u.ready(since + chrono::Duration::seconds(5), GRACE));
        assert!(u.ready(since + chrono::Duration::seconds(10), GRACE));
        assert!(!u.ready(since - chrono::Duration::seconds(60), GRACE));
        assert!(!State::InFlight.ready(since, Duration::ZERO));
        assert!(State::Answered { ok: false }.ready(since, GRACE));
    }
}
