//! `lanceferry plan`: the dry run, pinned as reviewers read it (text,
//! Markdown, JSON) for each situation a plan meets, against real LanceDB
//! tables and JSON Lines sources written here (no Python needed). Paths,
//! fingerprints and apply ids are replaced by placeholders.

mod common;

use std::path::{Path, PathBuf};

use common::text;

/// One JSON Lines collection: ids `doc-<first..first+n>`, vectors of `dim`
/// (scaled by `scale`: 1.0 gives unit-length vectors), and metadata from
/// `meta(i)`.
fn collection(
    dir: &Path,
    name: &str,
    ids: std::ops::Range<usize>,
    dim: usize,
    scale: f32,
    meta: impl Fn(usize) -> serde_json::Value,
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = String::new();
    for i in ids {
        // A unit vector along axis i % dim, times `scale`.
        let mut v = vec![0.0f32; dim];
        v[i % dim] = scale;
        let line = serde_json::json!({
            "doc_id": format!("doc-{i:05}"),
            "content": format!("content {i}"),
            "metadata": meta(i),
            "embedding": v,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    std::fs::write(dir.join(format!("{name}.jsonl")), out).unwrap();
}

fn plain(i: usize) -> serde_json::Value {
    serde_json::json!({ "page": i as i64, "topic": "t" })
}

/// A plan over `<dir>/src` (JSON Lines, `space`) into `<dir>/lancedb`;
/// `collections` is the YAML of the `collections:` list.
fn plan_file(dir: &Path, name: &str, space: &str, collections: &str) -> PathBuf {
    let yaml = format!(
        "version: 1\nname: {name}\nsource: {{ jsonl: {{ path: {}, space: {space} }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ndefaults: {{ batch_size: 100 }}\ncollections:\n{collections}",
        dir.join("src").display(),
        dir.join("lancedb").display(),
        dir.join("state").display(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

const COLUMNS: &str = "    columns:\n      - { name: doc_id, from: id }\n      - { name: content, from: document }\n      - { name: vector, from: embedding }\n      - { name: page, from: metadata.page, type: int64 }\n";

fn docs(mode: &str) -> String {
    format!("  - source: docs\n    mode: {mode}\n{COLUMNS}")
}

/// Replaces what differs between runs: the directory, fingerprints, apply ids.
fn normalize(s: &str, dir: &Path) -> String {
    let mut s = s.replace(&dir.display().to_string(), "[DIR]");
    // sha256:<64 hex>
    while let Some(i) = s.find("sha256:") {
        let end = i + 7 + 64;
        if end > s.len() || !s[i + 7..end].bytes().all(|b| b.is_ascii_hexdigit()) {
            break;
        }
        s.replace_range(i..end, "[FINGERPRINT]");
    }
    // Apply ids: 20261128T193325Z-6c44 (ASCII, so byte windows are safe
    // to test; the text is copied a char at a time).
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(c) = rest.chars().next() {
        let b = rest.as_bytes();
        let id = b.get(..21).is_some_and(|w| {
            w[..8].iter().all(u8::is_ascii_digit)
                && w[8] == b'T'
                && w[9..15].iter().all(u8::is_ascii_digit)
                && w[15] == b'Z'
                && w[16] == b'-'
                && w[17..].iter().all(u8::is_ascii_hexdigit)
        });
        if id {
            out.push_str("[APPLY]");
            rest = &rest[21..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn run(args: &[&str]) -> std::process::Output {
    common::run(args)
}

fn apply(p: &Path) {
    let o = run(&["apply", p.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// Runs `plan` in the three formats and pins each; returns the JSON.
fn pin(name: &str, p: &Path, dir: &Path) -> serde_json::Value {
    let mut json = serde_json::Value::Null;
    for format in ["text", "markdown", "json"] {
        let o = run(&["plan", p.to_str().unwrap(), "--format", format]);
        let out = normalize(&String::from_utf8_lossy(&o.stdout), dir);
        assert!(
            o.status.code().is_some_and(|c| c == 0 || c == 1),
            "{}",
            text(&o)
        );
        if format == "json" {
            json = serde_json::from_str(&out).unwrap();
        }
        insta::assert_snapshot!(format!("{name}.{format}"), out);
    }
    json
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_fresh_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    collection(&d.join("src"), "docs", 0..300, 8, 1.0, plain);
    let p = plan_file(
        d,
        "fresh",
        "cosine",
        &format!(
            "{}    indexes: [{{ column: vector, type: ivf_pq, num_sub_vectors: 2 }}]\n",
            docs("create")
        ),
    );
    let before = files(d);
    let j = pin("fresh", &p, d);
    assert_eq!(files(d), before, "plan wrote nothing");
    assert!(!d.join("lancedb").exists() && !d.join("state").exists());
    assert_eq!(j["summary"]["create"], 1);
    assert_eq!(j["summary"]["rows_to_copy"], 300);
    // --detailed-exitcode: 2 for changes.
    let o = run(&["plan", p.to_str().unwrap(), "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn no_changes_then_a_table_changed_outside() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    collection(&d.join("src"), "docs", 0..50, 8, 1.0, plain);
    collection(&d.join("src"), "more", 500..505, 8, 1.0, plain);
    let p = plan_file(d, "same", "l2", &docs("create"));
    apply(&p);
    let before = files(d);
    let j = pin("no_changes", &p, d);
    assert_eq!(
        files(d),
        before,
        "plan wrote nothing: source, target, state"
    );
    assert_eq!(j["start"]["kind"], "nothing_to_do");
    let o = run(&["plan", p.to_str().unwrap(), "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Another plan (its own state) appends to the same table.
    let other = plan_file(
        d,
        "other",
        "l2",
        &format!("  - source: more\n    table: docs\n    mode: append\n{COLUMNS}"),
    );
    let text_other = std::fs::read_to_string(&other)
        .unwrap()
        .replace("/state }", "/state-other }");
    std::fs::write(&other, text_other).unwrap();
    apply(&other);
    let j = pin("changed_outside", &p, d);
    assert!(
        j["collections"][0]["changed_outside"]
            .as_str()
            .unwrap()
            .contains("something other than this plan's applies wrote to it"),
        "{j}"
    );
}

#[test]
fn an_existing_compatible_table_and_replace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    collection(&d.join("src"), "docs", 0..120, 8, 1.0, plain);
    let create = plan_file(d, "base", "l2", &docs("create"));
    apply(&create);
    collection(&d.join("src"), "docs", 0..130, 8, 1.0, plain);
    let upsert = plan_file(d, "upsert", "l2", &docs("upsert"));
    let j = pin("upsert_existing", &upsert, d);
    assert_eq!(j["collections"][0]["action"], "change");
    let replace = plan_file(d, "replace", "l2", &docs("replace"));
    let j = pin("replace", &replace, d);
    assert_eq!(j["collections"][0]["action"], "replace");
    assert_eq!(j["collections"][0]["rows_dropped"], 120);
    assert_eq!(j["summary"]["warnings"], 1, "DS101");
    // Accepted with a reason: shown, no longer counted.
    let accepted = plan_file(
        d,
        "replace_ok",
        "l2",
        &format!(
            "{}    nolint: [{{ code: DS101, reason: \"staging is rebuilt nightly\" }}]\n",
            docs("replace")
        ),
    );
    let o = run(&["plan", accepted.to_str().unwrap(), "--fail-on", "warning"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("[nolint: staging is rebuilt nightly]"),
        "{}",
        text(&o)
    );
    let o = run(&["plan", replace.to_str().unwrap(), "--fail-on", "warning"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn an_incompatible_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The table was made with dimension 4 and `page` as a string.
    collection(
        &d.join("src"),
        "old",
        1000..1010,
        4,
        1.0,
        |i| serde_json::json!({ "page": format!("p{i}") }),
    );
    let old = plan_file(
        d,
        "old",
        "l2",
        "  - source: old\n    table: docs\n    columns:\n      - { name: doc_id, from: id }\n      - { name: content, from: document }\n      - { name: vector, from: embedding }\n      - { name: page, from: metadata.page, type: string }\n",
    );
    apply(&old);
    collection(&d.join("src"), "docs", 0..40, 8, 1.0, plain);
    let p = plan_file(d, "incompatible", "l2", &docs("append"));
    let j = pin("incompatible", &p, d);
    let codes: Vec<&str> = j["collections"][0]["lint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"VX101") && codes.contains(&"SC101"),
        "{codes:?}"
    );
    let o = run(&["plan", p.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "errors fail the plan: {}",
        text(&o)
    );
}

#[test]
fn an_interrupted_apply_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    collection(&d.join("src"), "docs", 0..500, 8, 1.0, plain);
    let p = plan_file(
        d,
        "resume",
        "l2",
        &docs("create").replace("mode: create", "mode: create\n    batch_size: 50"),
    );
    let p = {
        let t = std::fs::read_to_string(&p).unwrap().replace(
            "defaults: { batch_size: 100 }",
            "defaults: { batch_size: 100, checkpoint_rows: 100 }",
        );
        std::fs::write(&p, t).unwrap();
        p
    };
    let o = std::process::Command::new(assert_cmd::cargo::cargo_bin("lanceferry"))
        .args(["apply", p.to_str().unwrap(), "--auto-approve"])
        .env("LANCEFERRY_FAILPOINT", "checkpoint:docs@200")
        .output()
        .unwrap();
    assert!(!o.status.success(), "killed: {}", text(&o));
    let j = pin("resume", &p, d);
    assert_eq!(j["start"]["kind"], "resume");
    assert_eq!(j["collections"][0]["rows_committed"], 200);
    assert_eq!(j["collections"][0]["rows_to_copy"]["value"], 300);
}

#[test]
fn every_lint_code() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    // Existing tables: `taken` (for PH101), `dup` (for DS102).
    collection(&src, "taken", 0..10, 8, 1.0, plain);
    collection(&src, "dup", 0..30, 8, 1.0, plain);
    let seed = plan_file(
        d,
        "seed",
        "ip",
        &format!("  - source: taken\n{COLUMNS}  - source: dup\n    table: dupt\n{COLUMNS}"),
    );
    apply(&seed);
    // Long vectors (VX103), mixed and missing metadata (MD101-MD103).
    collection(&src, "vectors", 0..40, 8, 3.0, |i| {
        if i % 4 == 0 {
            serde_json::json!({ "page": format!("p{i}") })
        } else if i % 5 == 0 {
            serde_json::json!({})
        } else {
            serde_json::json!({ "page": i as i64 })
        }
    });
    let p = plan_file(
        d,
        "lint",
        "ip",
        &format!(
            "  - source: taken\n{COLUMNS}  - source: dup\n    table: dupt\n    mode: append\n{COLUMNS}  - source: vectors\n    columns:\n      - {{ name: doc_id, from: id }}\n      - {{ name: vector, from: embedding }}\n      - {{ name: page, from: metadata.page, type: int64, required: true, on_error: skip }}\n      - {{ name: nowhere, from: metadata.nowhere, type: string }}\n    indexes: [{{ column: vector, type: ivf_pq, metric: l2, num_sub_vectors: 2 }}]\n    nolint: [{{ code: VX104, reason: \"a demo table\" }}]\n"
        ),
    );
    let j = pin("lint", &p, d);
    let mut codes: Vec<String> = j["collections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["lint"].as_array().unwrap().clone())
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "DS102", "MD101", "MD102", "MD103", "PH101", "VX102", "VX103", "VX104"
        ],
        "{j}"
    );
}

#[test]
fn the_committed_output_schema_matches_the_code() {
    let committed = std::fs::read_to_string(common::repo().join("schemas/plan-output.schema.json"))
        .unwrap_or_default();
    let o = run(&["schema", "--plan-output"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        committed,
        "schemas/plan-output.schema.json is stale: run `cargo run -- schema --plan-output > schemas/plan-output.schema.json`"
    );
}

#[test]
fn markdown_stays_under_the_comment_limit() {
    // 400 collections: the details fold, the comment is never split.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut yaml = String::new();
    for k in 0..400 {
        collection(&d.join("src"), &format!("c{k:03}"), 0..3, 4, 1.0, plain);
        yaml.push_str(&format!("  - source: c{k:03}\n{COLUMNS}"));
    }
    let p = plan_file(d, "many", "l2", &yaml);
    let o = run(&["plan", p.to_str().unwrap(), "--format", "markdown"]);
    assert!(o.status.success(), "{}", text(&o));
    let md = String::from_utf8(o.stdout).unwrap();
    assert!(md.len() <= 60_000, "{}", md.len());
    assert!(md.starts_with("<!-- lanceferry plan: many -->"));
    assert!(md.contains("**Plan: 400 to create, 0 to change, 0 to replace; 1,200 rows to copy.**"));
}

/// The commands of the pull-request job in docs/ci.md, in order: plan as
/// Markdown with `--detailed-exitcode` and `--out`, then (on merge) apply
/// exactly the saved plan; a saved plan whose target moved is refused,
/// naming what moved, and writes nothing.
#[test]
fn the_ci_job_plans_saves_and_applies_exactly_that() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    collection(&d.join("src"), "docs", 0..80, 8, 1.0, plain);
    collection(&d.join("src"), "more", 500..510, 8, 1.0, plain);
    // The target comes from a variable, as in every environment; a
    // secret-named variable is never written into the saved plan.
    let p = plan_file(d, "ci", "l2", &docs("upsert"));
    let text_p = std::fs::read_to_string(&p).unwrap().replace(
        &format!("uri: {} }}", d.join("lancedb").display()),
        "uri: \"${LANCEDB_URI}\", storage_options: { api_key: \"${LANCE_API_KEY}\" } }",
    );
    std::fs::write(&p, text_p).unwrap();
    let saved = d.join("plan.saved.json");
    let lance = d.join("lancedb");
    let env = [
        ("LANCEDB_URI", lance.to_str().unwrap()),
        ("LANCE_API_KEY", "KEY-5ec2e7-never-saved"),
    ];
    let plan_cmd = |out: &Path| {
        let mut cmd = common::lanceferry();
        cmd.args([
            "plan",
            p.to_str().unwrap(),
            "--format",
            "markdown",
            "--detailed-exitcode",
            "--out",
            out.to_str().unwrap(),
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let o = plan_cmd(&saved);
    assert_eq!(o.status.code(), Some(2), "changes: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("<!-- lanceferry plan: ci -->"));
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let body = std::fs::read_to_string(&saved).unwrap();
    assert!(!body.contains("KEY-5ec2e7"), "{body}");
    assert!(body.contains("LANCE_API_KEY"), "recorded by name");

    // Merge: apply exactly the saved plan (the secret from the environment,
    // the rest from the file; no question asked).
    let o = common::lanceferry()
        .args(["apply", saved.to_str().unwrap()])
        .env("LANCE_API_KEY", "KEY-5ec2e7-never-saved")
        .env_remove("LANCEDB_URI")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("80 rows; count and id set match"),
        "{}",
        text(&o)
    );

    // A new saved plan, then the table moves before it is applied.
    collection(&d.join("src"), "docs", 0..90, 8, 1.0, plain);
    let second = d.join("second.saved.json");
    assert_eq!(plan_cmd(&second).status.code(), Some(2));
    let other = plan_file(
        d,
        "other",
        "l2",
        &format!("  - source: more\n    table: docs\n    mode: append\n{COLUMNS}"),
    );
    let t = std::fs::read_to_string(&other)
        .unwrap()
        .replace("/state }", "/state-other }");
    std::fs::write(&other, t).unwrap();
    apply(&other);
    let before = files(&lance);
    let o = common::lanceferry()
        .args(["apply", second.to_str().unwrap()])
        .env("LANCE_API_KEY", "x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("is stale")
            && t.contains("table `docs` is at version")
            && t.contains("the plan was made at version"),
        "{t}"
    );
    assert_eq!(files(&lance), before, "nothing written");

    // A saved plan applies with its own values only.
    let o = common::lanceferry()
        .args([
            "apply",
            second.to_str().unwrap(),
            "--var",
            "LANCEDB_URI=/elsewhere",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("`--var` and `--var-file` are refused"),
        "{}",
        text(&o)
    );
}

/// An interrupted apply whose table someone else wrote meanwhile: the
/// rows it committed can no longer be told apart, so a resume would stop
/// (PH102), and `plan` says so before anyone runs it.
#[test]
fn a_table_written_during_an_interrupted_apply() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    collection(&d.join("src"), "docs", 0..500, 8, 1.0, plain);
    collection(&d.join("src"), "more", 900..905, 8, 1.0, plain);
    let p = plan_file(d, "torn", "l2", &docs("create"));
    let t = std::fs::read_to_string(&p).unwrap().replace(
        "defaults: { batch_size: 100 }",
        "defaults: { batch_size: 100, checkpoint_rows: 100 }",
    );
    std::fs::write(&p, t).unwrap();
    let o = std::process::Command::new(assert_cmd::cargo::cargo_bin("lanceferry"))
        .args(["apply", p.to_str().unwrap(), "--auto-approve"])
        .env("LANCEFERRY_FAILPOINT", "checkpoint:docs@200")
        .output()
        .unwrap();
    assert!(!o.status.success(), "killed: {}", text(&o));
    // Someone else appends to the half-made table, in two commits (one
    // commit past the last checkpoint could be the apply's own).
    let other = plan_file(
        d,
        "other",
        "l2",
        &format!("  - source: more\n    table: docs\n    mode: append\n{COLUMNS}"),
    );
    let t = std::fs::read_to_string(&other)
        .unwrap()
        .replace("/state }", "/state-other }")
        .replace(
            "defaults: { batch_size: 100 }",
            "defaults: { batch_size: 2, checkpoint_rows: 3 }",
        );
    std::fs::write(&other, t).unwrap();
    apply(&other);
    let j = pin("torn", &p, d);
    assert_eq!(j["collections"][0]["action"], "blocked");
    assert_eq!(j["collections"][0]["lint"][0]["code"], "PH102");
    // And apply does stop there, writing nothing.
    let o = run(&["apply", p.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("changed outside this apply"),
        "{}",
        text(&o)
    );
}

/// Every file and directory under `dir` (directories as empty entries).
fn tree(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.push((p.clone(), None));
                stack.push(p);
            } else {
                out.push((p.clone(), Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

/// `plan` over a real Chroma directory (written by chromadb 1.5.9) and an
/// existing LanceDB target with its state: no file or directory of any of
/// them is created, changed or removed (no SQLite `-wal`/`-shm`, no lock).
#[test]
fn plan_writes_nothing_to_a_chroma_directory_a_target_or_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let chroma = d.join("chroma");
    common::copy_dir(&common::repo().join("demo/chroma_db"), &chroma);
    let yaml = format!(
        "version: 1\nname: ro\nsource: {{ chroma: {{ path: {} }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ncollections:\n  - source: canvas_concepts\n    mode: upsert\n",
        chroma.display(),
        d.join("lancedb").display(),
        d.join("state").display()
    );
    let p = d.join("ro.yaml");
    std::fs::write(&p, yaml).unwrap();
    apply(&p);
    let before = tree(d);
    for format in ["text", "markdown", "json"] {
        let o = run(&["plan", p.to_str().unwrap(), "--format", format]);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(tree(d), before, "plan changed something");
}
