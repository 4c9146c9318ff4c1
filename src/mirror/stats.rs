//! The mirror's counters, and the three ways they are shown: JSON at
//! `GET /lanceferry/stats` (what `lanceferry mirror status` reads),
//! Prometheus text at `GET /metrics`, and a line a minute in the log.
//!
//! Counters are per process (they start at zero when the mirror starts);
//! `pending` and `lag_seconds` come from the journal, so they include what
//! an earlier run left.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::journal::Pending;

/// Who is mirroring what, where: also the content of `mirror.json`, which
/// `lanceferry mirror status` reads to find the running mirror.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MirrorInfo {
    pub plan: String,
    pub pid: u32,
    /// The address the proxy listens on (as bound: a port 0 resolved).
    pub listen: String,
    /// The upstream, shown without secrets.
    pub upstream: String,
    pub started: DateTime<Utc>,
}

/// The counters, shared by the proxy and the writer.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests proxied (not counting the mirror's own endpoints).
    pub requests: AtomicU64,
    /// Write requests (add, upsert, update, delete) on mirrored collections.
    pub writes: AtomicU64,
    /// Of those, the ones the upstream answered with a 2xx status.
    pub upstream_ok: AtomicU64,
    /// Of those, recorded in the journal before being forwarded.
    pub journaled: AtomicU64,
    /// Journal entries applied to LanceDB (whatever the upstream said).
    pub mirrored_ok: AtomicU64,
    /// Journal entries the upstream accepted and LanceDB now reflects.
    pub both_ok: AtomicU64,
    /// Attempts of the writer that failed (each retry counts).
    pub failed: AtomicU64,
    /// Writes forwarded without a journal entry (journal full or failing,
    /// collection or ids unknown) that the upstream did not refuse:
    /// LanceDB misses them until an `apply` in `mode: sync`.
    pub dropped: AtomicU64,
    /// Why a collection's entries are waiting (the writer's last error).
    waiting: Mutex<BTreeMap<String, String>>,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Stats {
    /// Records (or, with `None`, clears) why a collection's entries wait;
    /// true when that changed (so the reason is logged once, not at every
    /// retry).
    pub fn set_waiting(&self, collection: &str, why: Option<String>) -> bool {
        let mut w = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match why {
            None => w.remove(collection).is_some(),
            Some(why) => w.insert(collection.to_string(), why.clone()) != Some(why),
        }
    }

    pub fn snapshot(&self, info: &MirrorInfo, pending: &Pending) -> Snapshot {
        let upstream_ok = get(&self.upstream_ok);
        let both_ok = get(&self.both_ok);
        let now = Utc::now();
        Snapshot {
            plan: info.plan.clone(),
            listen: info.listen.clone(),
            upstream: info.upstream.clone(),
            pid: info.pid,
            started: info.started,
            uptime_seconds: seconds(now, info.started),
            requests: get(&self.requests),
            writes: get(&self.writes),
            upstream_ok,
            mirrored_ok: get(&self.mirrored_ok),
            both_ok,
            journaled: get(&self.journaled),
            pending: pending.entries,
            pending_ids: pending.ids,
            failed: get(&self.failed),
            dropped: get(&self.dropped),
            // Of the writes the upstream accepted, the share LanceDB
            // already reflects (pending ones lower it until applied).
            success_rate: if upstream_ok == 0 {
                1.0
            } else {
                (both_ok as f64 / upstream_ok as f64).min(1.0)
            },
            lag_seconds: pending.oldest.map_or(0.0, |o| seconds(now, o)),
            journal_bytes: pending.bytes,
            journal_max_bytes: pending.max_bytes,
            waiting: self
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

fn seconds(now: DateTime<Utc>, then: DateTime<Utc>) -> f64 {
    (now.signed_duration_since(then).num_milliseconds().max(0) as f64) / 1000.0
}

/// The statistics at one moment (`GET /lanceferry/stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub plan: String,
    pub listen: String,
    pub upstream: String,
    pub pid: u32,
    pub started: DateTime<Utc>,
    pub uptime_seconds: f64,
    pub requests: u64,
    pub writes: u64,
    pub upstream_ok: u64,
    pub mirrored_ok: u64,
    pub both_ok: u64,
    pub journaled: u64,
    /// Journal entries not yet applied to LanceDB.
    pub pending: u64,
    pub pending_ids: u64,
    pub failed: u64,
    pub dropped: u64,
    pub success_rate: f64,
    /// Age of the oldest pending entry (0 when none).
    pub lag_seconds: f64,
    pub journal_bytes: u64,
    pub journal_max_bytes: u64,
    /// Collection → why its entries wait.
    pub waiting: BTreeMap<String, String>,
}

impl Snapshot {
    /// Prometheus' text exposition format.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(s, "# HELP lanceferry_mirror_{name} {help}");
            let _ = writeln!(s, "# TYPE lanceferry_mirror_{name} {kind}");
            let _ = writeln!(s, "lanceferry_mirror_{name} {value}");
        };
        metric(
            "requests_total",
            "counter",
            "Requests proxied to the upstream Chroma.",
            self.requests as f64,
        );
        metric(
            "writes_total",
            "counter",
            "Write requests on mirrored collections.",
            self.writes as f64,
        );
        metric(
            "upstream_ok_total",
            "counter",
            "Writes the upstream accepted (2xx).",
            self.upstream_ok as f64,
        );
        metric(
            "journaled_total",
            "counter",
            "Writes recorded in the journal before being forwarded.",
            self.journaled as f64,
        );
        metric(
            "mirrored_ok_total",
            "counter",
            "Journal entries applied to LanceDB.",
            self.mirrored_ok as f64,
        );
        metric(
            "both_ok_total",
            "counter",
            "Writes the upstream accepted that LanceDB reflects.",
            self.both_ok as f64,
        );
        metric(
            "failed_total",
            "counter",
            "Failed attempts to write LanceDB (retried).",
            self.failed as f64,
        );
        metric(
            "dropped_total",
            "counter",
            "Writes forwarded without a journal entry (healed by apply in sync mode).",
            self.dropped as f64,
        );
        metric(
            "pending",
            "gauge",
            "Journal entries not yet applied to LanceDB.",
            self.pending as f64,
        );
        metric(
            "pending_ids",
            "gauge",
            "Ids touched by pending journal entries.",
            self.pending_ids as f64,
        );
        metric(
            "success_rate",
            "gauge",
            "Share of accepted writes LanceDB already reflects.",
            self.success_rate,
        );
        metric(
            "lag_seconds",
            "gauge",
            "Age of the oldest pending journal entry.",
            self.lag_seconds,
        );
        metric(
            "journal_bytes",
            "gauge",
            "Size of the journal's segment files.",
            self.journal_bytes as f64,
        );
        metric(
            "journal_max_bytes",
            "gauge",
            "The journal's size limit.",
            self.journal_max_bytes as f64,
        );
        metric(
            "waiting_collections",
            "gauge",
            "Collections whose entries wait on an error.",
            self.waiting.len() as f64,
        );
        s
    }

    /// The line a minute in the log.
    pub fn log_line(&self) -> String {
        let mut line = format!(
            "mirror `{}`: {} requests, {} writes ({} upstream ok, {} journaled, {} mirrored, {} both ok), {} pending, {} failed, {} dropped, success {:.1}%, lag {:.1} s, journal {:.1} of {:.0} MiB",
            self.plan,
            self.requests,
            self.writes,
            self.upstream_ok,
            self.journaled,
            self.mirrored_ok,
            self.both_ok,
            self.pending,
            self.failed,
            self.dropped,
            self.success_rate * 100.0,
            self.lag_seconds,
            self.journal_bytes as f64 / (1u64 << 20) as f64,
            self.journal_max_bytes as f64 / (1u64 << 20) as f64,
        );
        for (c, why) in &self.waiting {
            let first = why.lines().next().unwrap_or_default();
            let _ = write!(line, "; `{c}` waits: {first}");
        }
        if self.dropped > 0 {
            line.push_str(
                "; LanceDB misses the dropped writes until `lanceferry apply` (mode: sync)",
            );
        }
        line
    }

    /// What `lanceferry mirror status` prints.
    pub fn render(&self) -> String {
        let mut s = format!(
            "mirror of plan `{}`: listening on {} (pid {}), upstream {}, up {:.0} s\n",
            self.plan, self.listen, self.pid, self.upstream, self.uptime_seconds
        );
        let _ = writeln!(
            s,
            "  requests {}  writes {}  upstream ok {}  journaled {}  mirrored ok {}  both ok {}",
            self.requests,
            self.writes,
            self.upstream_ok,
            self.journaled,
            self.mirrored_ok,
            self.both_ok
        );
        let _ = writeln!(
            s,
            "  pending {} ({} ids)  failed {}  dropped {}  success rate {:.1}%  lag {:.1} s",
            self.pending,
            self.pending_ids,
            self.failed,
            self.dropped,
            self.success_rate * 100.0,
            self.lag_seconds
        );
        let _ = writeln!(
            s,
            "  journal {} of {} bytes",
            self.journal_bytes, self.journal_max_bytes
        );
        for (c, why) in &self.waiting {
            let _ = writeln!(s, "  `{c}` waits: {}", why.replace('\n', "\n    "));
        }
        if self.dropped > 0 {
            let _ = writeln!(
                s,
                "  {} write(s) were not journaled: LanceDB misses them until `lanceferry apply` of the plan (mode: sync)",
                self.dropped
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> MirrorInfo {
        MirrorInfo {
            plan: "p".into(),
            pid: 7,
            listen: "127.0.0.1:8001".into(),
            upstream: "http://127.0.0.1:8000".into(),
            started: Utc::now(),
        }
    }

    #[test]
    fn the_snapshot_counts_and_rates() {
        let s = Stats::default();
        for _ in 0..4 {
            inc(&s.writes);
            inc(&s.upstream_ok);
        }
        inc(&s.both_ok);
        assert!(s.set_waiting("docs", Some("no table\nhint: apply".into())));
        assert!(!s.set_waiting("docs", Some("no table\nhint: apply".into())));
        let pending = Pending {
            entries: 3,
            ids: 5,
            oldest: Some(Utc::now() - chrono::Duration::seconds(2)),
            ..Pending::default()
        };
        let snap = s.snapshot(&info(), &pending);
        assert_eq!((snap.writes, snap.pending, snap.pending_ids), (4, 3, 5));
        assert!((snap.success_rate - 0.25).abs() < 1e-9);
        assert!(snap.lag_seconds >= 2.0);
        let json = serde_json::to_value(&snap).unwrap();
        for key in [
            "requests",
            "writes",
            "upstream_ok",
            "mirrored_ok",
            "both_ok",
            "journaled",
            "pending",
            "failed",
            "dropped",
            "success_rate",
            "lag_seconds",
        ] {
            assert!(json.get(key).is_some(), "{key} missing in {json}");
        }
        let text = snap.prometheus();
        assert!(
            text.contains("lanceferry_mirror_writes_total 4\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lanceferry_mirror_pending gauge"),
            "{text}"
        );
        assert!(snap.log_line().contains("`docs` waits: no table"));
        assert!(s.set_waiting("docs", None));
    }
}
