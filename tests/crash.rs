//! Crash safety: `apply` killed with SIGKILL at seeded points, then run
//! again, must end with exactly the source's records: none lost, none
//! duplicated, every value equal. 50,000 records from real chromadb 1.5.9,
//! in every mode (`create`, `append`, `replace` over an earlier copy,
//! `upsert`). A kill point is a place in the work, not a moment in time
//! (`LANCEFERRY_FAILPOINT`: after the checkpoint at N rows, while the commit
//! reaching N rows is written, before or after a named step), chosen by a
//! seeded generator: a failure reproduces exactly, on any machine.

mod common;

use common::text;

use std::path::Path;
use std::process::Command as Std;

const TRIALS: usize = 12;
const RECORDS: usize = 50_000;
const TABLE: &str = "canvas_explanations";

fn plan(dir: &Path, chroma: &Path, mode: &str) -> std::path::PathBuf {
    let plan = dir.join(format!("crash-{mode}.yaml"));
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: crash\nsource: {{ chroma: {{ path: {} }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ndefaults: {{ batch_size: 500, checkpoint_rows: 2000 }}\ncollections:\n  - source: canvas_explanations\n    mode: {mode}\n    columns:\n      - {{ name: vector, from: embedding }}\n      - {{ name: doc_id, from: id }}\n      - {{ name: content, from: document }}\n      - {{ name: canvas_file, from: metadata.canvas_file, type: string }}\n      - {{ name: node_id, from: metadata.node_id, type: string }}\n      - {{ name: metadata_json, from: metadata, type: json }}\n",
            chroma.display(),
            dir.join("lancedb").display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    plan
}

fn binary() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("lanceferry")
}

/// A small deterministic generator (xorshift), so kill points reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The kill point of one trial.
fn kill_point(rng: &mut Rng) -> String {
    let rows = 1 + rng.next() % RECORDS as u64;
    match rng.next() % 6 {
        0 | 1 => format!("checkpoint:{TABLE}@{rows}"),
        2 | 3 => format!("commit:{TABLE}@{rows}"),
        4 => format!("after:copy:{TABLE}"),
        _ => format!("before:validate:{TABLE}"),
    }
}

fn apply(p: &Path, failpoint: Option<&str>) -> std::process::Output {
    let mut cmd = Std::new(binary());
    cmd.args(["apply", p.to_str().unwrap(), "--auto-approve"])
        .env("NO_COLOR", "1");
    if let Some(f) = failpoint {
        cmd.env("LANCEFERRY_FAILPOINT", f);
    }
    cmd.output().unwrap()
}

#[test]
fn sigkill_at_seeded_points_then_resume_loses_and_duplicates_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let chroma = common::large_fixture(RECORDS, 16);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let modes = ["create", "append", "replace", "upsert"];
    for trial in 0..TRIALS {
        let mode = modes[trial % modes.len()];
        let point = kill_point(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        if mode == "replace" {
            // Something to replace: a finished copy of the same collection.
            let o = apply(&plan(dir.path(), &chroma, "create"), None);
            assert!(o.status.success(), "{}", text(&o));
        }
        let p = plan(dir.path(), &chroma, mode);
        let killed = apply(&p, Some(&point));
        assert_eq!(
            killed.status.signal(),
            Some(9),
            "trial {trial} ({mode}, {point}): the kill point was never reached:\n{}",
            text(&killed)
        );
        // Resume: the same command again.
        let o = apply(&p, None);
        let out = text(&o);
        assert!(
            o.status.success(),
            "trial {trial} ({mode}, {point}): resume failed:\n{out}"
        );
        assert!(
            out.contains("count and id set match the source"),
            "trial {trial} ({mode}, {point}): {out}"
        );
        // The validate step compared count and id set (duplicates and
        // losses); the independent reader compares every value.
        let copy = tempfile::tempdir().unwrap();
        common::copy_dir(&chroma, copy.path());
        let check = Std::new(common::python("1.5.9"))
            .arg(common::repo().join("tests/check_lance.py"))
            .arg(copy.path())
            .arg(dir.path().join("lancedb"))
            .arg(TABLE)
            .arg(TABLE)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "trial {trial} ({mode}, {point}): table differs from the source:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
        assert_eq!(r["rows"], RECORDS, "trial {trial} ({mode}, {point})");
    }
}
