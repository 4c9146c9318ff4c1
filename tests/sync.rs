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
        text(&o).contains("sync: 20 inserted, 18 updated, 10 deleted"),
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
    assert!(text(&o).contains("derived them from the table"), "{}", text(&o));
    assert_eq!(version(d).1, 310);
    verify_ok(&p);
    let o = run(&["plan", ps, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
