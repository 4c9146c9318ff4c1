//! `mode: sync`: a re-apply writes exactly what changed in the source
//! (added, changed, removed records), `plan` says how many of each, a
//! re-apply with nothing changed writes no Lance version, a killed sync
//! resumes to the same end, and rollback undoes a sync. JSON Lines sources
//! written here; real LanceDB; `verify` (every value) as the check.

mod common;

use std::path::{Path, PathBuf};

use common::{run, text};

#[derive(Clone)]
struct Rec {
    id: usize,
    doc: String,
    page: i64,
    v: [f32; 4],
}

fn rec(i: usize) -> Rec {
    Rec {
        id: i,
        doc: format!("document {i}"),
        page: i as i64,
        v: [i as f32 + 1.0, 1.0, 0.5, 0.25],
    }
}

fn write(dir: &Path, recs: &[Rec]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = String::new();
    for r in recs {
        out.push_str(
            &serde_json::json!({
                "doc_id": format!("doc-{:05}", r.id),
                "content": r.doc,
                "metadata": { "page": r.page },
                "embedding": r.v,
            })
            .to_string(),
        );
        out.push('\n');
    }
    std::fs::write(dir.join("docs.jsonl"), out).unwrap();
}

fn plan(d: &Path, checkpoint: u64) -> PathBuf {
    let p = d.join("sync.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: sync\nsource: {{ jsonl: {{ path: {} }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ndefaults: {{ batch_size: 50, checkpoint_rows: {checkpoint} }}\ncollections:\n  - source: docs\n    mode: sync\n    columns:\n      - {{ name: doc_id, from: id }}\n      - {{ name: content, from: document }}\n      - {{ name: vector, from: embedding }}\n      - {{ name: page, from: metadata.page, type: int64 }}\n    indexes: [{{ column: page, type: btree }}]\n",
            d.join("src").display(),
            d.join("lancedb").display(),
            d.join("state").display()
        ),
    )
    .unwrap();
    p
}

fn version(d: &Path) -> (u64, u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = lanceferry::target::LanceTarget::connect(&lanceferry::plan::Target {
            uri: d.join("lancedb").display().to_string(),
            storage_options: Vec::new(),
        })
        .await
        .unwrap();
        let v = t.version("docs").await.unwrap().unwrap();
        (v.version, v.rows)
    })
}

fn verify_ok(p: &Path) {
    let o = run(&["verify", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

/// 300 records, then: 20 added, 10 documents, 5 metadata and 3 vectors
/// changed, 2 rewritten with identical values, 10 removed.
fn changed(base: &[Rec]) -> Vec<Rec> {
    let mut recs: Vec<Rec> = base.iter().take(290).cloned().collect();
    for r in recs.iter_mut().take(10) {
        r.doc.push_str(" (edited)");
    }
    for r in recs.iter_mut().skip(10).take(5) {
        r.page += 1000;
    }
    for r in recs.iter_mut().skip(15).take(3) {
        r.v[1] = 9.0;
    }
    recs.extend((300..320).map(rec));
    recs
}

#[test]
fn a_sync_writes_exactly_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base: Vec<Rec> = (0..300).map(rec).collect();
    write(&d.join("src"), &base);
    let p = plan(d, 100_000);
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(version(d).1, 300);

    // Nothing changed: plan says so, apply writes no version.
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("No changes."), "{}", text(&o));
    let before = version(d);
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(text(&o).starts_with("nothing to do"), "{}", text(&o));
    assert_eq!(version(d), before);

    // The source changes.
    write(&d.join("src"), &changed(&base));
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("`sync`: 20 to insert, 18 to update, 10 to delete (exact)")
            && t.contains("38 rows to copy, 10 to delete."),
        "{t}"
    );
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("sync: 20 inserted, 18 updated, 10 deleted")
            && text(&o).contains("`btree` on `docs.page` updated with the synced rows")
            // Only the rows the sync wrote are digested: the others are
            // in Lance files the checked version already had.
            && text(&o).contains("310 rows; count and id set match the source, and every row equals its source record (the 38 rows written since version")
            && text(&o).contains("digested, the other 272 unchanged since checked there"),
        "{}",
        text(&o)
    );
    assert_eq!(version(d).1, 310);
    verify_ok(&p);

    // And again nothing: no version written (the index is left alone too).
    let before = version(d);
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(text(&o).starts_with("nothing to do"), "{}", text(&o));
    assert_eq!(version(d), before);

    // Rollback restores the table as it was before the sync.
    let o = run(&["rollback", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(version(d).1, 300);
}

#[test]
fn a_killed_sync_resumes_to_the_same_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base: Vec<Rec> = (0..300).map(rec).collect();
    write(&d.join("src"), &base);
    let p = plan(d, 5);
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    write(&d.join("src"), &changed(&base));
    let o = std::process::Command::new(assert_cmd::cargo::cargo_bin("lanceferry"))
        .args(["apply", ps, "--auto-approve"])
        .env("LANCEFERRY_FAILPOINT", "checkpoint:docs@10")
        .output()
        .unwrap();
    assert!(!o.status.success(), "killed: {}", text(&o));
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("derived them from the table"),
        "{}",
        text(&o)
    );
    // The rows merged before the kill reach the index too.
    assert!(
        text(&o).contains("`btree` on `docs.page` updated with the synced rows"),
        "{}",
        text(&o)
    );
    assert_eq!(version(d).1, 310);
    verify_ok(&p);
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// The real thing: a Chroma directory written by chromadb, an application's
/// weeks of changes made with chromadb itself (adds, document, metadata and
/// vector updates, identical upserts, deletes by id and by filter); `plan`
/// counts exactly those, `apply` writes exactly those, and Python `lancedb`
/// then reads a table equal to the source, record for record.
fn real_chroma_sync(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let chroma = d.join("chroma");
    let fixture = common::large_fixture(2000, 16);
    common::copy_dir(&fixture, &chroma);
    if version != "1.5.9" {
        // Rewrite the data with the older chromadb (its own layout).
        std::fs::remove_dir_all(&chroma).unwrap();
        let o = std::process::Command::new(common::python(version))
            .arg(common::repo().join("scripts/make_large.py"))
            .arg(&chroma)
            .args(["2000", "16"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let p = d.join("real.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: real\nsource: {{ chroma: {{ path: {} }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ndefaults: {{ batch_size: 500, checkpoint_rows: 400 }}\ncollections:\n  - source: canvas_explanations\n    mode: sync\n    columns:\n      - {{ name: vector, from: embedding }}\n      - {{ name: doc_id, from: id }}\n      - {{ name: content, from: document }}\n      - {{ name: canvas_file, from: metadata.canvas_file, type: string }}\n      - {{ name: node_id, from: metadata.node_id, type: string }}\n      - {{ name: metadata_json, from: metadata, type: json }}\n",
            chroma.display(),
            d.join("lancedb").display(),
            d.join("state").display()
        ),
    )
    .unwrap();
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));

    let o = std::process::Command::new(common::python(version))
        .arg(common::repo().join("tests/sync_mutate.py"))
        .arg(&chroma)
        .arg("canvas_explanations")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();

    let o = run(&["plan", ps, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &j["collections"][0];
    assert_eq!(c["rows_to_copy"]["value"], 1180, "{c}");
    assert_eq!(c["rows_deleted"], 250, "{c}");
    assert_eq!(want["insert"], 1000);

    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("sync: 1000 inserted, 180 updated, 250 deleted"),
        "{}",
        text(&o)
    );
    // Found by Chroma's sequence numbers (only the records written since
    // the copy were read), in merge commits of `checkpoint_rows` (400) and
    // one delete commit.
    assert!(
        text(&o).contains("3 merge commit(s) of 400, 400, 380 rows; 1 delete commit(s) of 250 ids; changes found by Chroma's sequence numbers"),
        "{}",
        text(&o)
    );
    let copy = tempfile::tempdir().unwrap();
    common::copy_dir(&chroma, copy.path());
    let check = std::process::Command::new(common::python("1.5.9"))
        .arg(common::repo().join("tests/check_lance.py"))
        .arg(copy.path())
        .arg(d.join("lancedb"))
        .arg("canvas_explanations")
        .arg("canvas_explanations")
        .output()
        .unwrap();
    assert!(
        check.status.success() || version != "1.5.9",
        "the table differs from the source:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // Whatever reads it, lanceferry's own full verification agrees.
    let o = run(&["verify", ps]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_sync_of_a_real_chroma_1_5_9_directory() {
    real_chroma_sync("1.5.9");
}

#[test]
fn a_sync_of_a_real_chroma_0_6_3_directory() {
    real_chroma_sync("0.6.3");
}

/// Runs every `lanceferry` command of docs/cutover.md, in order, on a copy
/// of the demo data, with chromadb changing the source where the page says
/// the application keeps writing; every command must succeed, and the page
/// and this test cannot drift apart (the commands are read from the page).
#[test]
fn the_cutover_in_docs_cutover_md_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let chroma = d.join("chroma");
    common::copy_dir(&common::repo().join("demo/chroma_db"), &chroma);
    let out = d.join("out");
    let page = std::fs::read_to_string(common::repo().join("docs/cutover.md")).unwrap();
    let mut in_sh = false;
    let mut ran = Vec::new();
    for line in page.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let line = line.trim();
        if line == "# (the application keeps writing)" {
            let o = std::process::Command::new(common::python("1.5.9"))
                .arg("-c")
                .arg(format!(
                    "import os\nos.environ['ANONYMIZED_TELEMETRY']='False'\nimport chromadb, numpy as np\ncol = chromadb.PersistentClient(path='{}').get_collection('canvas_explanations', embedding_function=None)\ng = col.get(limit=10, include=['embeddings'])\nids = g['ids']\ncol.update(ids=ids[:3], documents=['edited ' + i for i in ids[:3]], embeddings=g['embeddings'][:3])\ncol.delete(ids=ids[3:5])\ndim = len(g['embeddings'][0])\ncol.add(ids=[f'new-{{i}}' for i in range(5)], documents=['new'] * 5, metadatas=[{{'canvas_file': 'c', 'node_id': f'n{{i}}'}} for i in range(5)], embeddings=np.random.default_rng(1).standard_normal((5, dim)).astype('float32'))\n",
                    chroma.display()
                ))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            ran.push("(chromadb writes)".to_string());
            continue;
        }
        let Some(args) = line.strip_prefix("lanceferry ") else {
            continue;
        };
        let args: Vec<&str> = args.split_whitespace().collect();
        let o = common::lanceferry()
            .current_dir(common::repo())
            .env("DEMO_CHROMA", &chroma)
            .env("DEMO_OUT", &out)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "`lanceferry {}`:\n{}",
            args.join(" "),
            text(&o)
        );
        if ran.contains(&"(chromadb writes)".to_string()) && args[0] == "apply" {
            assert!(
                text(&o).contains("sync: 5 inserted, 3 updated, 2 deleted"),
                "{}",
                text(&o)
            );
        }
        ran.push(args.join(" "));
    }
    assert!(ran.len() >= 10, "{ran:?}");
    // The restore the page describes in prose, with an archive from the list.
    let o = common::lanceferry()
        .current_dir(common::repo())
        .env("DEMO_CHROMA", &chroma)
        .env("DEMO_OUT", &out)
        .args(["backup", "list", "plans/demo.yaml", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let archive = list.as_array().unwrap().last().unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let o = run(&[
        "backup",
        "restore",
        &archive,
        "--to",
        d.join("restored").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The same over HTTP: a `chroma run` server, changed through chromadb's
/// HttpClient between two applies.
#[test]
fn a_sync_over_http() {
    let server = common::server::ChromaServer::start("1.5.9");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("http.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: http\nsource: {{ chroma: {{ url: \"{}\" }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ncollections:\n  - source: basic\n    mode: sync\n",
            server.url(),
            d.join("lancedb").display(),
            d.join("state").display()
        ),
    )
    .unwrap();
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = std::process::Command::new(common::python("1.5.9"))
        .arg("-c")
        .arg(format!(
            "import os\nos.environ['ANONYMIZED_TELEMETRY']='False'\nimport chromadb\ncol = chromadb.HttpClient(host='127.0.0.1', port={}).get_collection('basic', embedding_function=None)\ng = col.get(limit=6, include=['embeddings'])\nids = g['ids']\ncol.update(ids=ids[:2], documents=['edited'] * 2, embeddings=g['embeddings'][:2])\ncol.delete(ids=ids[2:3])\ncol.add(ids=['http-new-1', 'http-new-2', 'http-new-3'], embeddings=g['embeddings'][3:6], documents=['n'] * 3)\n",
            server.port
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["plan", ps]);
    assert!(
        text(&o).contains("`sync`: 3 to insert, 2 to update, 1 to delete (exact)"),
        "{}",
        text(&o)
    );
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("sync: 3 inserted, 2 updated, 1 deleted"),
        "{}",
        text(&o)
    );
    let o = run(&["verify", ps]);
    assert!(o.status.success(), "{}", text(&o));
}

/// Validation by digests fails when a row differs: killed just before the
/// validate step of a sync, one saved digest flipped (as if the row had
/// been written wrong), the resumed apply names the difference.
#[test]
fn validation_by_digests_finds_a_row_that_differs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base: Vec<Rec> = (0..300).map(rec).collect();
    write(&d.join("src"), &base);
    let p = plan(d, 100_000);
    let ps = p.to_str().unwrap();
    assert!(run(&["apply", ps, "--auto-approve"]).status.success());
    write(&d.join("src"), &changed(&base));
    let o = std::process::Command::new(assert_cmd::cargo::cargo_bin("lanceferry"))
        .args(["apply", ps, "--auto-approve"])
        .env("LANCEFERRY_FAILPOINT", "before:validate:docs")
        .output()
        .unwrap();
    assert!(!o.status.success(), "killed: {}", text(&o));
    let store = std::fs::read_dir(d.join("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("sync-"))
        .unwrap()
        .path();
    let digests = store.join("digests/docs.bin");
    let mut bytes = std::fs::read(&digests).unwrap();
    // Header 40 bytes, then (id hash, digest) pairs (a JSON Lines source
    // has no sequence numbers): flip the first digest.
    assert_eq!(&bytes[..8], b"LFDIGST5");
    bytes[40 + 8] ^= 0xff;
    std::fs::write(&digests, bytes).unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("values: 1 rows differ from their source record"),
        "{}",
        text(&o)
    );
}

/// A source holding one id twice cannot be synced: refused, naming the id,
/// before anything is written.
#[test]
fn a_source_with_a_duplicate_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base: Vec<Rec> = (0..50).map(rec).collect();
    write(&d.join("src"), &base);
    let p = plan(d, 100_000);
    let ps = p.to_str().unwrap();
    assert!(run(&["apply", ps, "--auto-approve"]).status.success());
    let mut twice = base.clone();
    let mut again = rec(7);
    again.doc = "another record with the same id".into();
    twice.push(again);
    write(&d.join("src"), &twice);
    let before = version(d);
    let o = run(&["apply", ps, "--auto-approve"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("holds id `doc-00007` more than once"),
        "{}",
        text(&o)
    );
    assert_eq!(version(d), before, "nothing written");
}

/// A synced table whose plan changes an index's kind gets the new index
/// built (an existing index of another kind is not merely updated).
#[test]
fn a_changed_index_kind_is_built_on_a_synced_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base: Vec<Rec> = (0..60).map(rec).collect();
    write(&d.join("src"), &base);
    let p = plan(d, 100_000);
    let ps = p.to_str().unwrap();
    assert!(run(&["apply", ps, "--auto-approve"]).status.success());
    let text_plan = std::fs::read_to_string(&p)
        .unwrap()
        .replace("type: btree", "type: bitmap");
    std::fs::write(&p, text_plan).unwrap();
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("build `bitmap` on `page` (the table has `BTREE`)"),
        "{}",
        text(&o)
    );
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("index: `bitmap` on `docs.page` built"),
        "{}",
        text(&o)
    );
}

/// Chroma's sequence numbers are trusted only while they only grow: a
/// directory restored from a backup taken before the last sync (its mark
/// went back) is compared record by record instead, and the sync still
/// brings the table exactly to it.
#[test]
fn a_chroma_directory_restored_from_a_backup_is_synced_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let chroma = d.join("chroma");
    common::copy_dir(&common::large_fixture(2000, 16), &chroma);
    let p = d.join("restore.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: restore\nsource: {{ chroma: {{ path: {} }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ncollections:\n  - source: canvas_explanations\n    mode: sync\n",
            chroma.display(),
            d.join("lancedb").display(),
            d.join("state").display()
        ),
    )
    .unwrap();
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    let backup = d.join("backup");
    common::copy_dir(&chroma, &backup);
    let o = std::process::Command::new(common::python("1.5.9"))
        .arg(common::repo().join("tests/sync_mutate.py"))
        .arg(&chroma)
        .arg("canvas_explanations")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("changes found by Chroma's sequence numbers"),
        "{}",
        text(&o)
    );
    // The application's directory is restored from the backup.
    std::fs::remove_dir_all(&chroma).unwrap();
    std::fs::rename(&backup, &chroma).unwrap();
    let o = run(&["plan", ps]);
    assert!(
        text(&o).contains("250 to insert, 180 to update, 1,000 to delete (exact)"),
        "{}",
        text(&o)
    );
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("sync: 250 inserted, 180 updated, 1000 deleted")
            && !text(&o).contains("sequence numbers"),
        "{}",
        text(&o)
    );
    verify_ok(&p);
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// Killed right after a sync's deletes, or right after its digests were
/// saved (before its record says done): the next apply ends with the
/// table equal to the source, and nothing left to do.
#[test]
fn a_sync_killed_after_its_deletes_or_its_digests_ends_equal() {
    for point in ["sync-deleted:docs", "sync-digests:docs"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base: Vec<Rec> = (0..300).map(rec).collect();
        write(&d.join("src"), &base);
        let p = plan(d, 100_000);
        let ps = p.to_str().unwrap();
        assert!(run(&["apply", ps, "--auto-approve"]).status.success());
        write(&d.join("src"), &changed(&base));
        let o = std::process::Command::new(assert_cmd::cargo::cargo_bin("lanceferry"))
            .args(["apply", ps, "--auto-approve"])
            .env("LANCEFERRY_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{point}: killed: {}", text(&o));
        assert!(
            text(&o).contains(&format!("killed at `{point}`")),
            "{}",
            text(&o)
        );
        let o = run(&["apply", ps, "--auto-approve"]);
        assert!(o.status.success(), "{point}: {}", text(&o));
        assert_eq!(version(d).1, 310, "{point}");
        verify_ok(&p);
        let o = run(&["plan", ps, "--detailed-exitcode"]);
        assert_eq!(o.status.code(), Some(0), "{point}: {}", text(&o));
    }
}

/// The source unavailable (its directory moved away): `plan` and `apply`
/// fail with a hint and write nothing; moved back, the sync goes on.
#[test]
fn a_sync_whose_source_is_unavailable_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base: Vec<Rec> = (0..100).map(rec).collect();
    write(&d.join("src"), &base);
    let p = plan(d, 100_000);
    let ps = p.to_str().unwrap();
    assert!(run(&["apply", ps, "--auto-approve"]).status.success());
    write(&d.join("src"), &changed(&base[..100]));
    std::fs::rename(d.join("src"), d.join("away")).unwrap();
    let before = version(d);
    for cmd in [&["plan", ps][..], &["apply", ps, "--auto-approve"][..]] {
        let o = run(cmd);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {}", text(&o));
        assert!(text(&o).contains("hint:"), "{cmd:?}: {}", text(&o));
    }
    assert_eq!(version(d), before, "nothing written");
    std::fs::rename(d.join("away"), d.join("src")).unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    verify_ok(&p);
}

/// An application writing to a Chroma server while syncs run: each sync
/// either completes or stops with a hint, never leaves the table wrong;
/// once the writes stop, one more sync makes the table equal to the source.
#[test]
fn writes_during_a_sync_are_caught_by_the_next() {
    let server = common::server::ChromaServer::start("1.5.9");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("busy.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: busy\nsource: {{ chroma: {{ url: \"{}\" }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ncollections:\n  - source: basic\n    mode: sync\n",
            server.url(),
            d.join("lancedb").display(),
            d.join("state").display()
        ),
    )
    .unwrap();
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    // 60 rounds of adds, document edits and deletes, ~6 s in all.
    let mut writer = std::process::Command::new(common::python("1.5.9"))
        .arg("-c")
        .arg(format!(
            "import os, time\nos.environ['ANONYMIZED_TELEMETRY']='False'\nimport chromadb\ncol = chromadb.HttpClient(host='127.0.0.1', port={}).get_collection('basic', embedding_function=None)\ng = col.get(limit=1, include=['embeddings'])\nv = g['embeddings'][0]\nfor r in range(60):\n    ids = [f'busy-{{r}}-{{k}}' for k in range(5)]\n    col.add(ids=ids, embeddings=[v] * 5, documents=[f'round {{r}}'] * 5)\n    col.update(ids=ids[:2], documents=['edited'] * 2, embeddings=[v] * 2)\n    col.delete(ids=ids[4:])\n    time.sleep(0.1)\n",
            server.port
        ))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut outcomes = Vec::new();
    while writer.try_wait().unwrap().is_none() {
        let o = run(&["apply", ps, "--auto-approve"]);
        assert!(
            o.status.success() || (o.status.code() == Some(1) && text(&o).contains("hint:")),
            "{}",
            text(&o)
        );
        outcomes.push(o.status.success());
    }
    let w = writer.wait_with_output().unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert!(!outcomes.is_empty(), "no sync ran during the writes");
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["verify", ps]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A synced table whose plan changes an index's settings (same kind) gets
/// the index built anew with them; unchanged settings only update it.
#[test]
fn changed_index_settings_are_built_on_a_synced_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base: Vec<Rec> = (0..300).map(rec).collect();
    write(&d.join("src"), &base);
    let p = plan(d, 100_000);
    let with = |partitions: u32| {
        let t = std::fs::read_to_string(&p).unwrap();
        let t = match t.find("    indexes:") {
            Some(i) => t[..i].to_string(),
            None => t,
        };
        std::fs::write(
            &p,
            format!(
                "{t}    indexes: [{{ column: vector, type: ivf_pq, num_partitions: {partitions}, num_sub_vectors: 2 }}]\n"
            ),
        )
        .unwrap();
    };
    with(2);
    let ps = p.to_str().unwrap();
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("index: `ivf_pq` on `docs.vector` built"),
        "{}",
        text(&o)
    );
    // Rows change, settings do not: the index is updated, not rebuilt.
    write(&d.join("src"), &changed(&base));
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("`ivf_pq` on `docs.vector` updated with the synced rows"),
        "{}",
        text(&o)
    );
    // Settings change, rows do not: `plan` says so, and apply builds anew.
    with(4);
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("rebuild `ivf_pq` on `vector` (the plan changed its settings)"),
        "{}",
        text(&o)
    );
    let o = run(&["apply", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("the plan changed its settings")
            && text(&o).contains("index: `ivf_pq` on `docs.vector` built"),
        "{}",
        text(&o)
    );
    verify_ok(&p);
}

/// Repeated syncs do not pile up history: after each successful apply only
/// the pre-apply tags of the last `backup.keep` applies remain, versions
/// no tag holds are pruned, and the last sync can still be rolled back.
#[test]
fn syncs_keep_only_the_tags_and_versions_rollback_needs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut recs: Vec<Rec> = (0..100).map(rec).collect();
    write(&d.join("src"), &recs);
    let p = plan(d, 30);
    let text_plan = std::fs::read_to_string(&p).unwrap().replace(
        "defaults:",
        &format!(
            "backup: {{ dir: {}, keep: 2 }}\ndefaults:",
            d.join("backups").display()
        ),
    );
    std::fs::write(&p, text_plan).unwrap();
    let ps = p.to_str().unwrap();
    let facts = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let db = lancedb::connect(d.join("lancedb").to_str().unwrap())
                .execute()
                .await
                .unwrap();
            let t = db.open_table("docs").execute().await.unwrap();
            let mut tags: Vec<String> = t
                .tags()
                .await
                .unwrap()
                .list()
                .await
                .unwrap()
                .into_keys()
                .collect();
            tags.sort();
            (tags, t.list_versions().await.unwrap().len())
        })
    };
    let mut versions = Vec::new();
    for round in 0..5 {
        if round > 0 {
            // 40 records edited: two merge commits of 30 and 10 rows.
            for r in recs.iter_mut().take(40) {
                r.doc = format!("round {round} of {}", r.id);
            }
            write(&d.join("src"), &recs);
        }
        let o = run(&["apply", ps, "--auto-approve"]);
        assert!(o.status.success(), "{}", text(&o));
        let (tags, n) = facts();
        assert!(tags.len() <= 2, "round {round}: {tags:?}");
        versions.push(n);
    }
    eprintln!("versions kept after each apply: {versions:?}");
    // Every sync adds versions (merges, index update); pruning keeps their
    // number bounded instead of growing with every round.
    // Unpruned, each round would add at least three (two merges and the
    // index update): twelve or more after four syncs.
    assert!(
        versions[4] <= versions[2] + 1 && versions[4] < 12,
        "versions kept per round: {versions:?}"
    );
    let (tags, _) = facts();
    assert_eq!(tags.len(), 2, "{tags:?}");
    let o = run(&["rollback", ps, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the rolled-back edits show again: {}",
        text(&o)
    );
}
