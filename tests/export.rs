//! `lanceferry export` against the real chromadb 1.5.9 fixture: the JSON
//! Lines it writes read back through the `jsonl` source equal the truth, and
//! export → import (apply from JSON Lines) → verify against the original
//! Chroma directory is exact.

mod common;

use std::path::Path;

use assert_cmd::Command;
use lanceferry::plan::DistanceSpace;
use lanceferry::source::jsonl::JsonlDir;

fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn every_collection_exports_and_reads_back_exactly() {
    let fx = common::fixture("1.5.9");
    let truth = common::truth(&fx);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("export");
    let o = run_ok(
        common::lanceferry()
            .args(["export", "--json", "--path"])
            .arg(fx.join("chroma"))
            .arg("--out")
            .arg(&dir),
    );
    let written: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let collections = truth["collections"].as_object().unwrap();
    assert_eq!(written.as_array().unwrap().len(), collections.len());
    let source = JsonlDir::open(&dir, DistanceSpace::L2).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (name, t) in collections {
        assert!(dir.join(format!("{name}.jsonl.gz")).is_file(), "{name}");
        let got = rt.block_on(common::truth::read_all(&source, name, 50));
        common::truth::assert_batch_matches(&got, t, &format!("export of `{name}`"));
    }
    // Nothing half-written is left behind.
    for e in std::fs::read_dir(&dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!n.starts_with('.'), "leftover {n}");
    }
}

fn write_plan(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn export_import_verify_round_trip_is_exact() {
    let fx = common::fixture("1.5.9");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // Plain and compressed files both read back.
    run_ok(
        common::lanceferry()
            .args(["export", "--collection", "basic", "--path"])
            .arg(fx.join("chroma"))
            .arg("--out")
            .arg(t.join("jsonl/basic.jsonl")),
    );
    run_ok(
        common::lanceferry()
            .args(["export", "--collection", "mutated", "--path"])
            .arg(fx.join("chroma"))
            .arg("--out")
            .arg(t.join("jsonl/mutated.jsonl.gz")),
    );
    let columns = r#"    columns:
      - { name: id, from: id }
      - { name: vector, from: embedding }
      - { name: document, from: document }
      - { name: uri, from: uri }
      - { name: metadata, from: metadata, type: json }
    validate: { sample: all, min_cosine: 0.999999, count: exact, ids: true, content: true, metadata: true }
"#;
    let import = t.join("import.yaml");
    write_plan(
        &import,
        &format!(
            "version: 1\nname: import\nsource:\n  jsonl:\n    path: {jsonl}\n    space: cosine\ntarget:\n  lancedb:\n    uri: {out}/lancedb\nstate:\n  path: {out}/state\ncollections:\n  - source: basic\n{columns}  - source: mutated\n{columns}",
            jsonl = t.join("jsonl").display(),
            out = t.display()
        ),
    );
    run_ok(
        common::lanceferry()
            .args(["apply", "--auto-approve"])
            .arg(&import),
    );
    // The same tables checked against the original Chroma directory.
    let original = t.join("original.yaml");
    write_plan(
        &original,
        &format!(
            "version: 1\nname: original\nsource:\n  chroma:\n    path: {chroma}\ntarget:\n  lancedb:\n    uri: {out}/lancedb\nstate:\n  path: {out}/state\ncollections:\n  - source: basic\n{columns}  - source: mutated\n{columns}",
            chroma = fx.join("chroma").display(),
            out = t.display()
        ),
    );
    let o = run_ok(
        common::lanceferry()
            .args(["verify", "--json"])
            .arg(&original),
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = report.to_string();
    assert!(
        text.contains("\"basic\"") && text.contains("\"mutated\""),
        "{text}"
    );
}

#[test]
fn export_errors_name_the_problem() {
    let fx = common::fixture("1.5.9");
    let tmp = tempfile::tempdir().unwrap();
    let o = common::lanceferry()
        .args(["export", "--path"])
        .arg(fx.join("chroma"))
        .arg("--out")
        .arg(tmp.path().join("all.jsonl"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is one file but") && err.contains("hint: add `--collection NAME`"),
        "{err}"
    );

    let o = common::lanceferry()
        .args(["export", "--collection", "nope", "--path"])
        .arg(fx.join("chroma"))
        .arg("--out")
        .arg(tmp.path().join("nope.jsonl"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`nope` does not exist") && err.contains("`basic`"),
        "{err}"
    );
    assert!(!tmp.path().join("nope.jsonl").exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing written"
    );
}
