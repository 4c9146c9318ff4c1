//! Crash safety: `apply` killed with SIGKILL at random moments, then run
//! again, must end with exactly the source's records: none lost, none
//! duplicated, every value equal. 50,000 records from real chromadb 1.5.9;
//! the kill points come from a seeded generator, so a failure reproduces.

mod common;

use std::path::Path;
use std::process::Command as Std;
use std::time::{Duration, Instant};

const TRIALS: usize = 10;
const RECORDS: usize = 50_000;

fn plan(dir: &Path, chroma: &Path) -> std::path::PathBuf {
    let plan = dir.join("crash.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: crash\nsource: {{ chroma: {{ path: {} }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ndefaults: {{ batch_size: 500, checkpoint_rows: 2000 }}\ncollections:\n  - source: canvas_explanations\n    columns:\n      - {{ name: vector, from: embedding }}\n      - {{ name: doc_id, from: id }}\n      - {{ name: content, from: document }}\n      - {{ name: canvas_file, from: metadata.canvas_file, type: string }}\n      - {{ name: node_id, from: metadata.node_id, type: string }}\n      - {{ name: metadata_json, from: metadata, type: json }}\n",
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
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 1_000_000) as f64 / 1_000_000.0
    }
}

#[test]
fn sigkill_at_random_moments_then_resume_loses_and_duplicates_nothing() {
    let chroma = common::large_fixture(RECORDS, 16);
    // How long an uninterrupted apply takes, to spread the kills over it.
    let probe = tempfile::tempdir().unwrap();
    let p = plan(probe.path(), &chroma);
    let t0 = Instant::now();
    let o = Std::new(binary())
        .args(["apply", p.to_str().unwrap(), "--auto-approve"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = t0.elapsed().as_secs_f64();

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut killed_mid_copy = 0;
    for trial in 0..TRIALS {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(dir.path(), &chroma);
        // Kill somewhere between 5% and 95% of a full run.
        let at = Duration::from_secs_f64(full * (0.05 + 0.9 * rng.next()));
        let mut child = Std::new(binary())
            .args(["apply", p.to_str().unwrap(), "--auto-approve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let finished_before_kill = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if !finished_before_kill {
            killed_mid_copy += 1;
        }
        // Resume: the same command again.
        let o = Std::new(binary())
            .args(["apply", p.to_str().unwrap(), "--auto-approve"])
            .output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success(),
            "trial {trial} (killed at {at:?}): resume failed:\n{out}"
        );
        // The validate step compared count and id set (duplicates and
        // losses); the independent reader compares every value.
        // A kill after validation but before the report leaves only the
        // report to do: the resumed run repeats the recorded result.
        assert!(
            out.contains("count and id set match the source") || out.starts_with("nothing to do"),
            "trial {trial}: {out}"
        );
        let copy = tempfile::tempdir().unwrap();
        common::copy_dir(&chroma, copy.path());
        let check = Std::new(common::python("1.5.9"))
            .arg(common::repo().join("tests/check_lance.py"))
            .arg(copy.path())
            .arg(dir.path().join("lancedb"))
            .arg("canvas_explanations")
            .arg("canvas_explanations")
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "trial {trial} (killed at {at:?}): table differs from the source:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
        assert_eq!(r["rows"], RECORDS, "trial {trial}");
    }
    assert!(
        killed_mid_copy >= TRIALS / 2,
        "most kills must land while apply runs ({killed_mid_copy}/{TRIALS})"
    );
}
