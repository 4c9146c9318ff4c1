//! `validate.search`: recall@k of LanceDB's vector search against an exact
//! search in the source's distance space. lanceferry's numbers are checked
//! against an independent computation (`tests/search_recall.py`: numpy
//! brute force, Python `lancedb` search with the same settings) on the
//! same query ids; an index with the wrong metric fails validation with a
//! hint naming `metric`, and `plan` warns about it beforehand; a server
//! source reports Chroma's own recall beside LanceDB's.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{run, text};
use serde_json::{Value, json};

const LARGE: &str = "canvas_explanations";

/// A plan reading `source` (the inside of `chroma: { … }`) into a LanceDB
/// under `d`, with the default mapping (`id`, `document`, `uri`, `vector`,
/// `metadata`) and `extra` lines for the collection.
fn plan(d: &Path, source: &str, collection: &str, extra: &str) -> PathBuf {
    let p = d.join("search.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: search\nsource: {{ chroma: {source} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ncollections:\n  - source: {collection}\n{extra}",
            d.join("lancedb").display(),
            d.join("state").display()
        ),
    )
    .unwrap();
    p
}

/// `lanceferry verify PLAN --json`: the search report of the first
/// collection, and the exit code.
fn verify_search(p: &str) -> (Value, Option<i32>) {
    let o = run(&["verify", p, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("verify --json: {e}\n{}", text(&o)));
    (v[0]["search"].clone(), o.status.code())
}

/// Runs `tests/search_recall.py` with `params` on stdin.
fn python_recall(params: &Value) -> Value {
    let mut child = Command::new(common::python("1.5.9"))
        .arg(common::repo().join("tests/search_recall.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(params.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "search_recall.py failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Asserts that lanceferry's search report `s` and the independent
/// computation `py` agree on each of `fields` (ours, theirs).
fn assert_agree(label: &str, s: &Value, py: &Value, fields: &[(&str, &str)]) {
    for (ours, theirs) in fields {
        let (a, b) = (s[ours].as_f64().unwrap(), py[theirs].as_f64().unwrap());
        assert!(
            (a - b).abs() < 1e-9,
            "{label}{ours}: lanceferry {a}, numpy + Python lancedb {b}\n{s}\n{py}"
        );
    }
}

/// Mean, worst decile and top-1: everything the two computations share.
const ALL_FIELDS: &[(&str, &str)] = &[
    ("recall_mean", "mean"),
    ("recall_worst_decile", "worst_decile"),
    ("top1_self", "top1_self"),
];

#[test]
fn recall_agrees_with_an_independent_computation() {
    let chroma = common::large_fixture(3000, 32);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(
        d,
        &format!("{{ path: {} }}", chroma.display()),
        LARGE,
        "    indexes: [{ column: vector, type: ivf_pq, num_partitions: 16, num_sub_vectors: 8 }]\n    validate: { sample: 100, search: { queries: 50, k: 10, nprobes: 4, refine_factor: 2 } }\n",
    );
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("search: recall@10 LanceDB"),
        "the validate step reports the search: {}",
        text(&o)
    );

    let (s, code) = verify_search(ps);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["queries"], 50, "{s}");
    assert_eq!(s["k"], 10, "{s}");
    assert_eq!(s["space"], "cosine", "{s}");
    assert_eq!(s["metric"], "cosine", "{s}");
    assert_eq!(s["index"], "IVF_PQ", "{s}");
    assert!(
        s["chroma_recall"].is_null(),
        "a directory has no query endpoint: {s}"
    );
    let ids = s["query_ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 50, "{s}");

    // The sample is seeded: the same queries every time.
    let (again, _) = verify_search(ps);
    assert_eq!(again["query_ids"], s["query_ids"]);

    let py = python_recall(&json!({
        "uri": d.join("lancedb").display().to_string(),
        "table": LARGE,
        "id_column": "id",
        "vector_column": "vector",
        "space": "cosine",
        "metric": "cosine",
        "k": 10,
        "nprobes": 4,
        "refine_factor": 2,
        "ids": ids,
    }));
    assert_agree("", &s, &py, ALL_FIELDS);
    assert!(s["recall_mean"].as_f64().unwrap() > 0.0, "{s}");
}

#[test]
fn the_default_index_is_chosen_shows_its_stages_and_agrees_with_python() {
    // No `type`: `auto` chooses the vector index (IVF-SQ, from the
    // measurements in docs/performance.md), built through Lance with its
    // stages on stderr; Python `lancedb` searches the same index and finds
    // the same recall.
    let chroma = common::large_fixture(3000, 32);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(
        d,
        &format!("{{ path: {} }}", chroma.display()),
        LARGE,
        "    mode: sync\n    indexes: [{ column: vector }, { column: id }]\n    validate: { sample: 100, search: { queries: 50, k: 10 } }\n",
    );
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("index: `auto` on `canvas_explanations.vector` built as `ivf_sq`"),
        "auto says what it built: {t}"
    );
    assert!(
        t.contains("index `canvas_explanations.vector`: train_ivf"),
        "the build's stages are shown (plain lines off a terminal): {t}"
    );
    assert!(
        t.contains("index: `btree` on `canvas_explanations.id` built"),
        "auto on a string column is a B-tree: {t}"
    );

    let (s, code) = verify_search(ps);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["index"], "IVF_SQ", "{s}");
    assert!(s["lance_queries_per_second"].as_f64().unwrap() > 0.0, "{s}");
    let py = python_recall(&json!({
        "uri": d.join("lancedb").display().to_string(),
        "table": LARGE,
        "id_column": "id",
        "vector_column": "vector",
        "space": "cosine",
        "metric": "cosine",
        "k": 10,
        "nprobes": null,
        "refine_factor": null,
        "ids": s["query_ids"],
    }));
    assert_agree(
        "",
        &s,
        &py,
        &[("recall_mean", "mean"), ("top1_self", "top1_self")],
    );
    assert!(s["recall_mean"].as_f64().unwrap() > 0.8, "{s}");

    // A re-apply keeps the index `auto` built: nothing changed, so nothing
    // is rebuilt or retrained.
    let o = run(&["apply", ps, "--auto-approve"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(!t.contains("built as"), "not rebuilt: {t}");
}

#[test]
fn l2_and_ip_recall_agree_with_an_independent_computation() {
    // The other two distance spaces, each checked against numpy: `basic`
    // (l2, 300 records, searched through the default index) and `inner`
    // (ip, 120 records: too few for an index, so LanceDB searches by
    // brute force with `dot`).
    let chroma = common::fixture("1.5.9").join("chroma");
    for (collection, space, metric, index) in [
        ("basic", "l2", "l2", Some("IVF_SQ")),
        ("inner", "ip", "dot", None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = plan(
            d,
            &format!("{{ path: {} }}", chroma.display()),
            collection,
            "    indexes: [{ column: vector }]\n    validate: { sample: 10, search: { queries: 40, k: 5 } }\n",
        );
        let ps = p.to_str().unwrap();
        let o = run(&["apply", ps, "--auto-approve"]);
        assert!(o.status.success(), "{collection}: {}", text(&o));
        let (s, code) = verify_search(ps);
        assert_eq!(code, Some(0), "{collection}: {s}");
        assert_eq!(s["space"], space, "{s}");
        assert_eq!(s["metric"], metric, "{s}");
        assert_eq!(s["index"].as_str(), index, "{s}");
        assert_eq!(s["queries"], 40, "{s}");
        let py = python_recall(&json!({
            "uri": d.join("lancedb").display().to_string(),
            "table": collection,
            "id_column": "id",
            "vector_column": "vector",
            "space": space,
            "metric": metric,
            "k": 5,
            "nprobes": null,
            "refine_factor": null,
            "ids": s["query_ids"],
        }));
        assert_agree(&format!("{collection} "), &s, &py, ALL_FIELDS);
    }
}

#[test]
fn a_kill_in_the_middle_of_an_index_build_and_a_missing_target_lose_nothing() {
    let chroma = common::large_fixture(3000, 32);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(
        d,
        &format!("{{ path: {} }}", chroma.display()),
        LARGE,
        "    indexes: [{ column: vector }]\n    validate: { sample: 100, search: { queries: 20, k: 10 } }\n",
    );
    let ps = p.to_str().unwrap();
    // Killed while Lance shuffles rows into partitions: index files partly
    // written, nothing committed.
    let point = "index-stage:canvas_explanations.vector:shuffle";
    let o = assert_cmd::Command::cargo_bin("lanceferry")
        .unwrap()
        .args(["apply", ps, "--auto-approve"])
        .env("LANCEFERRY_FAILPOINT", point)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("failpoint: killed at `{point}`")),
        "{t}"
    );

    // The target gone while the apply is resumed: refused with a hint,
    // and the copy kept for when it is back.
    let away = d.join("lancedb.away");
    std::fs::rename(d.join("lancedb"), &away).unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("index:canvas_explanations:vector:auto")
            && t.contains("hint: the table disappeared meanwhile"),
        "the index step fails, naming what to do: {t}"
    );
    // (Connecting to a local target makes its directory: an empty one.)
    if d.join("lancedb").exists() {
        std::fs::remove_dir_all(d.join("lancedb")).unwrap();
    }
    std::fs::rename(&away, d.join("lancedb")).unwrap();

    // Back: the resume builds the index once, and everything checks.
    let o = run(&["apply", ps, "--auto-approve"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("built as `ivf_sq`"), "{t}");
    assert!(
        t.contains("completed (resumed)") && !t.contains("rows written"),
        "the same apply resumed, without copying again: {t}"
    );
    let (s, code) = verify_search(ps);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["index"], "IVF_SQ", "{s}");
}

#[test]
fn a_wrong_metric_fails_validation_and_plan_warns_first() {
    // Gaussian vectors, not unit length, in a cosine collection: ranking
    // them by dot product is not ranking them by cosine.
    let chroma = common::large_fixture(3000, 32);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(
        d,
        &format!("{{ path: {} }}", chroma.display()),
        LARGE,
        "    indexes: [{ column: vector, type: ivf_pq, metric: dot, num_partitions: 16, num_sub_vectors: 8 }]\n    validate: { sample: 100, search: { queries: 50, k: 10, min_recall: 0.9 } }\n",
    );
    let ps = p.to_str().unwrap();

    let o = run(&["plan", ps]);
    let t = text(&o);
    assert!(
        t.contains("VX102")
            && t.contains("uses `dot`, but the source's vectors live in `cosine` space"),
        "plan warns about the metric: {t}"
    );
    assert!(t.contains("VX103"), "and about the norms: {t}");
    assert!(
        t.contains("search recall@10 ≥ 0.9 on 50 seeded queries"),
        "and lists the check: {t}"
    );

    let o = run(&["apply", ps, "--auto-approve"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("validation of `canvas_explanations` failed")
            && t.contains("is below min_recall 0.9")
            && t.contains("uses metric `dot`")
            && t.contains("`metric: auto`"),
        "the failure names the metric: {t}"
    );

    let (s, code) = verify_search(ps);
    assert_eq!(code, Some(1), "{s}");
    assert!(s["recall_mean"].as_f64().unwrap() < 0.9, "{s}");
    assert_eq!(s["metric"], "dot", "{s}");
    assert!(
        s["suggestion"]
            .as_str()
            .unwrap()
            .contains("indexes[].metric"),
        "{s}"
    );
    assert!(
        s["breach"]
            .as_str()
            .unwrap()
            .starts_with("search: recall@10"),
        "{s}"
    );
}

#[test]
fn a_server_source_reports_chromas_recall_beside_lancedbs() {
    let server = common::server::ChromaServer::start("1.5.9");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `basic`: 300 records, l2. No vector index in the plan, so LanceDB
    // searches by brute force and its recall is exact.
    let p = plan(
        d,
        &format!("{{ url: \"{}\" }}", server.url()),
        "basic",
        "    validate: { search: { queries: 20, k: 5 } }\n",
    );
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("search: recall@5 LanceDB 1.000 (worst decile 1.000), Chroma "),
        "{}",
        text(&o)
    );

    let (s, code) = verify_search(ps);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["queries"], 20, "{s}");
    assert_eq!(s["space"], "l2", "{s}");
    assert!(s["index"].is_null(), "{s}");
    assert_eq!(s["recall_mean"].as_f64(), Some(1.0), "{s}");
    assert_eq!(s["top1_self"].as_f64(), Some(1.0), "{s}");
    let chroma = s["chroma_recall"]
        .as_f64()
        .unwrap_or_else(|| panic!("Chroma's recall is reported: {s}"));
    assert!(chroma > 0.8 && chroma <= 1.0, "{s}");
}
