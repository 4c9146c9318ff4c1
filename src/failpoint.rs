//! Named crash points, so crash tests reproduce exactly.
//!
//! A test sets `LANCEFERRY_FAILPOINT` to one point and the process kills
//! itself with SIGKILL there: no destructor runs, nothing is flushed, as when
//! an operator or the OOM killer ends it. Points:
//!
//! - `before:<step key>` / `after:<step key>`: when a step starts (before
//!   its record says so) or right after its record says done;
//! - `checkpoint:<table>@<rows>`: right after the first copy checkpoint at
//!   or past `rows` rows was saved in state;
//! - `commit:<table>@<rows>`: while the commit that reaches `rows` rows is
//!   still being written (the batches sent, the commit not finished);
//! - `sync-deleted:<table>` / `sync-digests:<table>`: in a sync, right
//!   after the ids gone from the source were deleted, and right after the
//!   new digests were saved (before the step's record says done);
//! - `index-stage:<table>.<column>:<stage>`: in the middle of a vector
//!   index's build, as Lance starts that stage (`train_ivf`, `shuffle`,
//!   `merge_partitions`, …): its files partly written, nothing committed;
//! - `shard:<K>@<rows>`: in a sharded apply's worker for shard K, right
//!   after the batch that brings one table's rows written to `rows` was
//!   handed to Lance's (uncommitted) writer;
//! - `panic:<step key>`: that step panics as it starts (instead of a kill),
//!   to prove a panic fails its step only.
//!
//! Unset (always, outside tests), every check is one comparison with a
//! cached `None`.

use std::sync::OnceLock;

fn point() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var("LANCEFERRY_FAILPOINT").ok())
        .as_deref()
}

fn die(at: &str) -> ! {
    eprintln!("failpoint: killed at `{at}`");
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    // The signal is on its way; never go on meanwhile.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Dies if the point is exactly `name`.
pub fn hit(name: &str) {
    if point() == Some(name) {
        die(name);
    }
}

/// Panics if the point is `panic:<step>`.
pub fn panic_at(step: &str) {
    if let Some(p) = point()
        && p.strip_prefix("panic:") == Some(step)
    {
        panic!("failpoint `{p}`");
    }
}

/// Dies if the point is `<kind>:<table>@<n>` with `n <= rows`.
pub fn hit_rows(kind: &str, table: &str, rows: u64) {
    let Some(p) = point() else { return };
    let Some(rest) = p
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|r| r.strip_prefix(table))
        .and_then(|r| r.strip_prefix('@'))
    else {
        return;
    };
    if rest.parse::<u64>().is_ok_and(|n| n <= rows) {
        die(p);
    }
}
