//! `lanceferry apply` and `rollback` end to end: the real binary, a Chroma
//! directory written by real chromadb 1.5.9 (the shipped demo), a real
//! LanceDB directory, and Python `lancedb` as the independent reader.

mod common;

use common::run;
use common::text;

use std::path::Path;
use std::process::Command as Std;

use assert_cmd::Command;

fn lanceferry(out: &Path) -> Command {
    let mut cmd = Command::cargo_bin("lanceferry").unwrap();
    cmd.current_dir(common::repo())
        .env("NO_COLOR", "1")
        .env("DEMO_OUT", out)
        .env_remove("DEMO_CHROMA");
    cmd
}

fn apply(out: &Path, extra: &[&str]) -> std::process::Output {
    lanceferry(out)
        .args(["apply", "plans/demo.yaml", "--auto-approve"])
        .args(extra)
        .output()
        .unwrap()
}

/// Runs the Python checker on one table; returns its JSON line.
fn python_check(out: &Path, collection: &str) -> serde_json::Value {
    let copy = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo().join("demo/chroma_db"), copy.path());
    let o = Std::new(common::python("1.5.9"))
        .arg(common::repo().join("tests/check_lance.py"))
        .arg(copy.path())
        .arg(out.join("lancedb"))
        .arg(collection)
        .arg(collection)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "python check of `{collection}` failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

fn count_rows(out: &Path, table: &str) -> u64 {
    let o = Std::new(common::python("1.5.9"))
        .arg("-c")
        .arg(format!(
            "import lancedb; print(lancedb.connect('{}').open_table('{table}').count_rows())",
            out.join("lancedb").display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

#[test]
fn demo_apply_is_read_back_exactly_by_python_lancedb() {
    let out = tempfile::tempdir().unwrap();
    let o = apply(out.path(), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("count and id set match the source"),
        "{}",
        text(&o)
    );
    for (collection, n) in [("canvas_explanations", 600), ("canvas_concepts", 400)] {
        let r = python_check(out.path(), collection);
        assert_eq!(r["rows"], n, "{r}");
        assert_eq!(
            r["schema"]["vector"], "fixed_size_list<item: float>[64]",
            "{r}"
        );
        assert_eq!(r["schema"]["doc_id"], "string", "{r}");
        assert_eq!(r["nearest_ok"], true, "{r}");
    }
    // A backup archive was written before the copy.
    let backups: Vec<_> = std::fs::read_dir(out.path().join("backups"))
        .unwrap()
        .collect();
    assert_eq!(backups.len(), 1);

    // Running it again does nothing, and says so.
    let again = apply(out.path(), &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).starts_with("nothing to do"),
        "{}",
        text(&again)
    );
    assert_eq!(
        std::fs::read_dir(out.path().join("backups"))
            .unwrap()
            .count(),
        1,
        "a no-op takes no backup"
    );

    // Rollback drops the tables the apply created; twice is a no-op.
    let rb = lanceferry(out.path())
        .args(["rollback", "plans/demo.yaml", "--auto-approve"])
        .output()
        .unwrap();
    assert!(rb.status.success(), "{}", text(&rb));
    assert!(
        text(&rb).contains("`canvas_concepts`: dropped (the apply created it)"),
        "{}",
        text(&rb)
    );
    let rb2 = lanceferry(out.path())
        .args(["rollback", "plans/demo.yaml", "--auto-approve"])
        .output()
        .unwrap();
    assert!(text(&rb2).contains("already rolled back"), "{}", text(&rb2));
}

/// A plan over the demo data with a chosen mode.
fn mode_plan(dir: &Path, mode: &str) -> std::path::PathBuf {
    let plan = dir.join(format!("{mode}.yaml"));
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: modes-{mode}\nsource: {{ chroma: {{ path: {} }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ncollections:\n  - source: canvas_concepts\n    mode: {mode}\n    columns:\n      - {{ name: doc_id, from: id }}\n      - {{ name: content, from: document }}\n      - {{ name: vector, from: embedding }}\n",
            common::repo().join("demo/chroma_db").display(),
            dir.join("lancedb").display(),
            dir.join("state").display(),
        ),
    )
    .unwrap();
    plan
}

#[test]
fn rollback_restores_each_mode_and_refuses_after_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let lance = dir.path().to_path_buf();
    // A first apply creates the table with 400 rows.
    let create = mode_plan(dir.path(), "create");
    let o = run(&["apply", create.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(count_rows(&lance, "canvas_concepts"), 400);

    // append onto the same ids is refused before writing; allowed, it
    // doubles the table; rollback restores 400.
    let append = mode_plan(dir.path(), "append");
    let o = run(&["apply", append.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("already holds 400"), "{}", text(&o));
    assert_eq!(count_rows(&lance, "canvas_concepts"), 400);
    let o = run(&[
        "apply",
        append.to_str().unwrap(),
        "--auto-approve",
        "--allow-duplicates",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(count_rows(&lance, "canvas_concepts"), 800);
    let o = run(&["rollback", append.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("restored to version"), "{}", text(&o));
    assert_eq!(count_rows(&lance, "canvas_concepts"), 400);

    // upsert over the same ids keeps 400 rows; rollback restores.
    let upsert = mode_plan(dir.path(), "upsert");
    let o = run(&["apply", upsert.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(count_rows(&lance, "canvas_concepts"), 400);
    let o = run(&["rollback", upsert.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));

    // replace, then someone appends: rollback refuses, naming versions;
    // --force goes ahead.
    let replace = mode_plan(dir.path(), "replace");
    let o = run(&["apply", replace.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&[
        "apply",
        append.to_str().unwrap(),
        "--auto-approve",
        "--allow-duplicates",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["rollback", replace.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("was written after apply") && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    let o = run(&[
        "rollback",
        replace.to_str().unwrap(),
        "--auto-approve",
        "--force",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(count_rows(&lance, "canvas_concepts"), 400);

    // Finally the create apply's rollback drops the table... but only with
    // --force, since later applies wrote to it.
    let o = run(&[
        "rollback",
        create.to_str().unwrap(),
        "--auto-approve",
        "--force",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dropped"), "{}", text(&o));
}

#[test]
fn create_mode_refuses_an_existing_table() {
    let dir = tempfile::tempdir().unwrap();
    let create = mode_plan(dir.path(), "create");
    assert!(
        run(&["apply", create.to_str().unwrap(), "--auto-approve"])
            .status
            .success()
    );
    // A new state directory: a different deployment that finds the table there.
    let other = dir.path().join("other.yaml");
    let text_plan = std::fs::read_to_string(&create)
        .unwrap()
        .replace("/state", "/state2");
    std::fs::write(&other, text_plan).unwrap();
    let o = run(&["apply", other.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("already exists and the mode is `create`"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("hint:"), "{}", text(&o));
}

#[test]
fn apply_without_terminal_or_auto_approve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let plan = mode_plan(dir.path(), "create");
    let o = run(&["apply", plan.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--auto-approve"), "{}", text(&o));
    assert!(!dir.path().join("lancedb").exists(), "nothing was written");
}

/// An object-store URI this build cannot write is refused by the checker,
/// with its position, before anything is read or written, with a hint that
/// names what this build supports.
#[test]
fn an_object_store_uri_the_build_lacks_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let plan = mode_plan(dir.path(), "create");
    let text_of = std::fs::read_to_string(&plan).unwrap().replace(
        &format!("uri: {}", dir.path().join("lancedb").display()),
        "uri: \"gs://bucket/lancedb\"",
    );
    std::fs::write(&plan, text_of).unwrap();
    for cmd in ["check", "apply"] {
        let o =
            run(&[cmd, plan.to_str().unwrap(), "--auto-approve"]
                [..if cmd == "check" { 2 } else { 3 }]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("cannot write `gs://` URIs")
                && text(&o).contains(&format!("--> {}:", plan.display()))
                && text(&o).contains("this build writes to local directories and `s3://`"),
            "{cmd}: {}",
            text(&o)
        );
    }
}

/// Upsert merges into a table that holds other rows too: validation checks
/// each source id is there exactly once and leaves the other rows alone;
/// `verify` still catches a lost or doubled source record.
#[test]
fn upsert_into_a_table_with_other_rows_validates_only_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let lance = dir.path().join("lancedb");
    let python = |script: &str| {
        let o = Std::new(common::python("1.5.9"))
            .arg("-c")
            .arg(format!(
                "import lancedb\nt = lancedb.connect('{}').open_table('canvas_concepts')\n{script}\n",
                lance.display()
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let create = mode_plan(dir.path(), "create");
    let o = run(&["apply", create.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    // Five rows from elsewhere.
    python(
        "r = t.search().limit(1).to_list()[0]\nrows = []\nfor i in range(5):\n    x = {k: v for k, v in r.items() if not k.startswith('_')}\n    x['doc_id'] = f'other-{i}'\n    rows.append(x)\nt.add(rows)",
    );
    let upsert = mode_plan(dir.path(), "upsert");
    let o = run(&["apply", upsert.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("405 rows; count and id set match the source"),
        "{}",
        text(&o)
    );
    assert_eq!(count_rows(dir.path(), "canvas_concepts"), 405);
    let o = run(&["verify", upsert.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    // A lost source record and a doubled one are still breaches.
    python(
        "ids = [r['doc_id'] for r in t.search().limit(2000).to_list() if not r['doc_id'].startswith('other')]\nids.sort()\nt.delete(f\"doc_id = '{ids[0]}'\")\nr = t.search().where(f\"doc_id = '{ids[1]}'\").limit(1).to_list()[0]\nt.add([{k: v for k, v in r.items() if not k.startswith('_')}])",
    );
    let o = run(&["verify", upsert.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("1 source records missing")
            && text(&o).contains("1 duplicate rows of source ids")
            && !text(&o).contains("not in the source"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_target_directory_that_disappeared_is_shown_in_the_plan_then_recreated() {
    // Decided (docs/plan-reference.md, "A table that is gone"): the tables
    // of a target that vanished are planned as created again, with a note
    // naming the apply that last left them, and `apply` rebuilds them from
    // the source.
    let out = tempfile::tempdir().unwrap();
    let o = apply(out.path(), &[]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::rename(out.path().join("lancedb"), out.path().join("moved")).unwrap();

    let plan = lanceferry(out.path())
        .args(["plan", "plans/demo.yaml", "--detailed-exitcode"])
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    let shown = text(&plan);
    for table in ["canvas_explanations", "canvas_concepts"] {
        assert!(
            shown.contains(&format!("+ `{table}` -> table `{table}`"))
                && shown.contains(&format!("table `{table}` is gone: apply `"))
                && shown.contains("dropped since"),
            "{shown}"
        );
    }
    assert!(shown.contains("Plan: 2 to create"), "{shown}");

    let again = apply(out.path(), &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(count_rows(out.path(), "canvas_explanations"), 600);
    assert_eq!(count_rows(out.path(), "canvas_concepts"), 400);
    // What was moved away is left as it was.
    assert!(out.path().join("moved/canvas_explanations.lance").is_dir());
    let third = apply(out.path(), &[]);
    assert!(
        String::from_utf8_lossy(&third.stdout).starts_with("nothing to do"),
        "{}",
        text(&third)
    );
}
