//! `lanceferry verify` against real tables written by apply from the real
//! demo Chroma directory, corrupted on purpose with Python `lancedb`: each
//! corruption must be caught and named, and exit 1.

mod common;

use std::path::Path;
use std::process::Command as Std;

use assert_cmd::Command;

fn lanceferry(out: &Path) -> Command {
    let mut cmd = Command::cargo_bin("lanceferry").unwrap();
    cmd.current_dir(common::repo())
        .env("NO_COLOR", "1")
        .env("DEMO_OUT", out);
    cmd
}

/// Runs `python` with Python `lancedb`, `t` being table `table` of the
/// LanceDB at `uri`.
fn with_table(uri: &Path, table: &str, python: &str) {
    let script = format!(
        "import lancedb\nt = lancedb.connect('{}').open_table('{table}')\n{python}\n",
        uri.display()
    );
    let o = Std::new(common::python("1.5.9"))
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `lanceferry apply plans/demo.yaml` into `out`.
fn apply_demo(out: &Path) -> std::process::Output {
    lanceferry(out)
        .args(["apply", "plans/demo.yaml", "--auto-approve"])
        .output()
        .unwrap()
}

/// Changes the demo's `canvas_explanations` table.
fn corrupt(out: &Path, python: &str) {
    with_table(&out.join("lancedb"), "canvas_explanations", python);
}

/// `lanceferry ARGS PLAN`.
fn run_plan(plan: &Path, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("lanceferry")
        .unwrap()
        .env("NO_COLOR", "1")
        .args(args)
        .arg(plan)
        .output()
        .unwrap()
}

#[test]
fn every_corruption_is_caught_and_named() {
    let cases: [(&str, &str, &str); 4] = [
        (
            "t.delete(\"doc_id = 'expl-00010'\")",
            "1 source records missing",
            "`expl-00010`",
        ),
        (
            "t.update(where=\"doc_id = 'expl-00011'\", values={'content': 'tampered'})",
            "content: 1 values differ",
            "`expl-00011`.`content`",
        ),
        (
            "r = t.search().where(\"doc_id = 'expl-00012'\").limit(1).to_list()[0]\nt.update(where=\"doc_id = 'expl-00012'\", values={'vector': [-x for x in r['vector']]})",
            "vectors: 1 below min_cosine",
            "lowest -1.0",
        ),
        (
            "r = t.search().where(\"doc_id = 'expl-00013'\").limit(1).to_list()[0]\nr['doc_id'] = 'intruder'\nt.add([{k: v for k, v in r.items() if not k.startswith('_')}])",
            "1 rows not in the source",
            "`intruder`",
        ),
    ];
    for (python, breach, named) in cases {
        let out = tempfile::tempdir().unwrap();
        let o = apply_demo(out.path());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let clean = lanceferry(out.path())
            .args(["verify", "plans/demo.yaml"])
            .output()
            .unwrap();
        assert!(
            clean.status.success(),
            "{}",
            String::from_utf8_lossy(&clean.stdout)
        );
        corrupt(out.path(), python);
        let o = lanceferry(out.path())
            .args(["verify", "plans/demo.yaml"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(1), "{python}: {text}");
        assert!(
            text.contains(breach) && text.contains(named),
            "{python}: expected `{breach}` naming {named}:\n{text}"
        );
        assert!(
            text.contains("FAILED: `canvas_explanations`")
                && text.contains("ok: `canvas_concepts`"),
            "{text}"
        );
        assert!(text.contains("hint: `lanceferry rollback"), "{text}");
    }
}

#[test]
fn verify_json_and_report_file() {
    let out = tempfile::tempdir().unwrap();
    assert!(apply_demo(out.path()).status.success());
    let report = out.path().join("verify.json");
    let o = lanceferry(out.path())
        .args(["verify", "plans/demo.yaml", "--json", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["ids"]["target_count"], 600);
    assert_eq!(v[0]["values"]["compared"], 600);
    assert!(v[0]["values"]["cosine"]["min"].as_f64().unwrap() > 0.999999);
    let from_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    assert_eq!(from_file, v);
}

/// Records a plan skips (`on_error: skip`) are not expected in the table:
/// `verify` must know which, and still catch a real loss.
#[test]
fn verify_knows_the_records_the_plan_skips() {
    let fx = common::fixture("1.5.9");
    let out = tempfile::tempdir().unwrap();
    let plan = out.path().join("skip.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: skip\nsource:\n  chroma:\n    path: {chroma}\ntarget:\n  lancedb:\n    uri: {out}/lancedb\nstate:\n  path: {out}/state\ncollections:\n  - source: basic\n    columns:\n      - {{ name: id, from: id }}\n      - {{ name: vector, from: embedding }}\n      - {{ name: page, from: metadata.page, type: int64, required: true, on_error: skip }}\n",
            chroma = fx.join("chroma").display(),
            out = out.path().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| run_plan(&plan, args);
    let o = run(&["apply", "--auto-approve"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["verify", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let skipped = report[0]["ids"]["expected_skipped"].as_u64().unwrap();
    assert!(
        skipped > 0,
        "the fixture has records without `page`: {report}"
    );
    // A real loss is still caught.
    with_table(
        &out.path().join("lancedb"),
        "basic",
        "t.delete(\"id = 'doc-0001'\")",
    );
    let o = run(&["verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("`doc-0001`"));
}

/// `sample: N` compares exactly N records, looked up by id on both sides,
/// whatever characters the ids hold; and a tampered value among them is
/// caught.
#[test]
fn a_sample_compares_exactly_that_many_records_by_id() {
    let out = tempfile::tempdir().unwrap();
    let src = out.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let awkward = ["it's", "back\\slash", "semi;colon", "\"quoted\"", "ünï ✓"];
    let mut lines = String::new();
    for i in 0..200 {
        let id = format!("{}-{i}", awkward[i % awkward.len()]);
        lines.push_str(
            &serde_json::json!({
                "doc_id": id,
                "content": format!("text {i}"),
                "metadata": {"n": i},
                "embedding": [i as f32 + 1.0, 1.0, 2.0],
            })
            .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(src.join("odd.jsonl"), lines).unwrap();
    let plan = out.path().join("sample.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: sample\nsource: {{ jsonl: {{ path: {src} }} }}\ntarget: {{ lancedb: {{ uri: {out}/lancedb }} }}\nstate: {{ path: {out}/state }}\ncollections:\n  - source: odd\n    columns:\n      - {{ name: id, from: id }}\n      - {{ name: vector, from: embedding }}\n      - {{ name: content, from: document }}\n    validate: {{ sample: 7, seed: 3 }}\n",
            src = src.display(),
            out = out.path().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| run_plan(&plan, args);
    let o = run(&["apply", "--auto-approve"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the values of 7 records compared"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&["verify", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report[0]["values"]["compared"], 7, "{report}");
    // Tamper every row's content: all 7 sampled records must differ.
    with_table(
        &out.path().join("lancedb"),
        "odd",
        "t.update(values={'content': 'tampered'})",
    );
    let o = run(&["verify", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report[0]["values"]["content_mismatches"], 7, "{report}");
}

/// With too little memory for the one-pass comparison, verification falls
/// back to hash buckets (one pass of each side per bucket) and still
/// compares every record and catches a changed one.
#[test]
fn a_small_memory_budget_compares_in_buckets() {
    let out = tempfile::tempdir().unwrap();
    let o = apply_demo(out.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let verify = || {
        lanceferry(out.path())
            .env("LANCEFERRY_VERIFY_MEMORY", "100000")
            .env("RUST_LOG", "lanceferry=debug")
            .args(["verify", "plans/demo.yaml", "--json"])
            .output()
            .unwrap()
    };
    let o = verify();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("comparing in hash buckets"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["values"]["compared"], 600, "{v}");
    corrupt(
        out.path(),
        "t.update(where=\"doc_id = 'expl-00042'\", values={'content': 'tampered'})",
    );
    let o = verify();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["values"]["compared"], 600, "{v}");
    assert_eq!(v[0]["values"]["content_mismatches"], 1, "{v}");
    assert!(
        v[0]["values"]["examples"][0]
            .as_str()
            .unwrap()
            .contains("`expl-00042`.`content`")
    );
}
