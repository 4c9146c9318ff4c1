//! The safety promises under unlucky timing and hostile input: state kept
//! per target, typed step keys, a real lock under eight concurrent applies,
//! `append` that never doubles a table, and no credential in any output or
//! file. The sources are JSON Lines files written here (no Python needed to
//! make them) or the shipped demo directory; the target is real LanceDB.

mod common;

use common::text;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::cargo_bin("lanceferry").unwrap();
    cmd.current_dir(dir).env("NO_COLOR", "1").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn run(args: &[&str]) -> std::process::Output {
    run_in(&common::repo(), args, &[])
}

/// Writes `docs.jsonl` with records `first..first+n` (dimension 4).
fn write_jsonl(dir: &Path, name: &str, ids: std::ops::Range<usize>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for i in ids {
        let line = serde_json::json!({
            "doc_id": format!("doc-{i:05}"),
            "content": format!("content {i}"),
            "metadata": { "n": i },
            "embedding": [i as f32 + 1.0, 1.0, 0.5, 0.25],
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(dir.join(format!("{name}.jsonl")), text).unwrap();
}

/// A plan over the JSON Lines directory `src` with one collection per
/// `(source, table, mode, extra)`.
fn jsonl_plan(dir: &Path, name: &str, collections: &[(&str, &str, &str, &str)]) -> PathBuf {
    let mut yaml = format!(
        "version: 1\nname: {name}\nsource: {{ jsonl: {{ path: {} }} }}\ntarget:\n  lancedb:\n    uri: ${{LANCEDB_URI:-{}}}\nstate: {{ path: {} }}\ndefaults:\n  batch_size: ${{BATCH:-100}}\n  checkpoint_rows: 200\ncollections:\n",
        dir.join("src").display(),
        dir.join("lancedb").display(),
        dir.join("state").display(),
    );
    for (source, table, mode, extra) in collections {
        yaml.push_str(&format!(
            "  - source: {source}\n    table: {table}\n    mode: {mode}\n    columns:\n      - {{ name: doc_id, from: id }}\n      - {{ name: content, from: document }}\n      - {{ name: vector, from: embedding }}\n{extra}"
        ));
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Rows of a table, read with lanceferry's own target (not through the CLI).
fn rows(uri: &Path, table: &str) -> Option<(u64, u64)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = lanceferry::target::LanceTarget::connect(&lanceferry::plan::Target {
            uri: uri.display().to_string(),
            storage_options: Vec::new(),
        })
        .await
        .unwrap();
        t.version(table).await.unwrap().map(|v| (v.rows, v.version))
    })
}

#[test]
fn append_never_doubles_a_table_and_batch_size_does_not_restart_it() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("src"), "docs", 0..298);
    let plan = jsonl_plan(dir.path(), "app", &[("docs", "docs", "append", "")]);
    let p = plan.to_str().unwrap();
    let lance = dir.path().join("lancedb");
    let o = run(&["apply", p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(rows(&lance, "docs").unwrap().0, 298);

    // Only the batch size changed: the same tables, so nothing to do.
    let o = run_in(
        &common::repo(),
        &["apply", p, "--auto-approve"],
        &[("BATCH", "37")],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).starts_with("nothing to do"), "{}", text(&o));
    assert_eq!(rows(&lance, "docs").unwrap().0, 298);

    // The source grew: a fresh append would write its 298 old ids again.
    write_jsonl(&dir.path().join("src"), "docs", 0..300);
    let o = run(&["apply", p, "--auto-approve"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("already holds 298 of the source's ids")
            && t.contains("mode: upsert")
            && t.contains("--allow-duplicates"),
        "{t}"
    );
    assert_eq!(rows(&lance, "docs").unwrap().0, 298, "nothing was written");

    // Someone deletes a row meanwhile: the table moved, yet the guard still
    // holds (it asks the state whether this apply wrote, and looks at the
    // table as the snapshot saw it).
    let o = std::process::Command::new(common::python("1.5.9"))
        .arg("-c")
        .arg(format!(
            "import lancedb\nlancedb.connect('{}').open_table('docs').delete(\"doc_id = 'doc-00000'\")",
            lance.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["apply", p, "--auto-approve"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("already holds 298"), "{}", text(&o));
    assert_eq!(rows(&lance, "docs").unwrap().0, 297);
    // Rolling back the refused apply would discard that outside write.
    let o = run(&["rollback", p, "--auto-approve"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("was written after apply"), "{}", text(&o));
    let o = run(&["rollback", p, "--auto-approve", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(rows(&lance, "docs").unwrap().0, 298);

    // Asked for, it appends every record once more, and validation counts
    // each source id exactly once among the rows it added.
    let o = run(&["apply", p, "--auto-approve", "--allow-duplicates"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("598 rows; count and id set match the source"),
        "{}",
        text(&o)
    );
    assert_eq!(rows(&lance, "docs").unwrap().0, 598);
}

#[test]
fn validation_of_an_append_counts_each_source_id_once_among_the_added_rows() {
    // A table with other rows gets the source appended, then one of the
    // appended records is written a second time by someone else: `verify`
    // must call it a breach, where a count of "rows before + source" would
    // have hidden it behind a lost record.
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("src"), "seed", 1000..1050);
    write_jsonl(&dir.path().join("src"), "docs", 0..100);
    let seed = jsonl_plan(dir.path(), "seed", &[("seed", "docs", "create", "")]);
    let o = run(&["apply", seed.to_str().unwrap(), "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    let plan = jsonl_plan(dir.path(), "app2", &[("docs", "docs", "append", "")]);
    let p = plan.to_str().unwrap();
    let o = run(&["apply", p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("150 rows; count and id set match the source"),
        "{}",
        text(&o)
    );
    let o = run(&["verify", p]);
    assert!(o.status.success(), "{}", text(&o));

    // Double one record and drop another: the count still adds up.
    let o = std::process::Command::new(common::python("1.5.9"))
        .arg("-c")
        .arg(format!(
            "import lancedb\nt = lancedb.connect('{}').open_table('docs')\nr = t.search().where(\"doc_id = 'doc-00007'\").limit(1).to_list()[0]\nt.add([{{k: v for k, v in r.items() if not k.startswith('_')}}])\nt.delete(\"doc_id = 'doc-00009'\")\n",
            dir.path().join("lancedb").display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["verify", p]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("1 source records missing, e.g. `doc-00009`")
            && t.contains("1 source records were added more than once"),
        "{t}"
    );
}

#[test]
fn the_same_plan_on_two_targets_keeps_two_records_and_rollback_touches_one() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("src"), "docs", 0..120);
    let plan = jsonl_plan(dir.path(), "envs", &[("docs", "docs", "create", "")]);
    let p = plan.to_str().unwrap();
    let dev = dir.path().join("dev");
    let prod = dir.path().join("prod");
    for target in [&dev, &prod] {
        let o = run_in(
            &common::repo(),
            &["apply", p, "--auto-approve"],
            &[("LANCEDB_URI", target.to_str().unwrap())],
        );
        assert!(o.status.success(), "{}", text(&o));
        // A first apply on each target: a copy, never "nothing to do".
        assert!(
            text(&o).contains("120 rows; count and id set"),
            "{}",
            text(&o)
        );
    }
    let prod_before = rows(&prod, "docs").unwrap();
    let o = run_in(
        &common::repo(),
        &["rollback", p, "--auto-approve"],
        &[("LANCEDB_URI", dev.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dropped"), "{}", text(&o));
    assert_eq!(rows(&dev, "docs"), None);
    assert_eq!(rows(&prod, "docs"), Some(prod_before), "prod is untouched");
    // Two records in the state directory, one per target.
    let records = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("envs-"))
        .count();
    assert_eq!(records, 2);
    // The same target named by another path is the same record.
    let o = run_in(
        dir.path(),
        &["apply", p, "--auto-approve"],
        &[("LANCEDB_URI", "./prod/../prod")],
    );
    assert!(text(&o).starts_with("nothing to do"), "{}", text(&o));
}

#[test]
fn tables_named_like_columns_and_indexes_keep_their_own_versions() {
    // Table `vector` next to table `docs`, whose index step key
    // `index:docs:vector:ivf_pq` names a column `vector`: string matching
    // once took that step's version (the index commit) for table `vector`'s,
    // so a re-run saw `vector` "changed" and tried to create it again.
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("src"), "a", 0..50);
    write_jsonl(&dir.path().join("src"), "b", 100..400);
    let plan = jsonl_plan(
        dir.path(),
        "names",
        &[
            ("a", "vector", "create", ""),
            (
                "b",
                "docs",
                "create",
                "    indexes: [{ column: vector, type: ivf_pq, num_partitions: 2, num_sub_vectors: 2 }]\n",
            ),
        ],
    );
    let p = plan.to_str().unwrap();
    let o = run(&["apply", p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("`ivf_pq` on `docs.vector` built"),
        "{}",
        text(&o)
    );
    let (_, docs_version) = rows(&dir.path().join("lancedb"), "docs").unwrap();
    let (_, vector_version) = rows(&dir.path().join("lancedb"), "vector").unwrap();
    assert_ne!(docs_version, vector_version, "the index moved `docs` on");
    let o = run(&["apply", p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).starts_with("nothing to do"), "{}", text(&o));
    let o = run(&["rollback", p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("`vector`: dropped") && text(&o).contains("`docs`: dropped"),
        "{}",
        text(&o)
    );
}

#[test]
fn eight_concurrent_applies_copy_once() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("src"), "docs", 0..3000);
    let plan = jsonl_plan(dir.path(), "race", &[("docs", "docs", "create", "")]);
    let bin = assert_cmd::cargo::cargo_bin("lanceferry");
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(&bin)
                .args([
                    "apply",
                    plan.to_str().unwrap(),
                    "--auto-approve",
                    "--lock-timeout",
                    "300",
                ])
                .env("NO_COLOR", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut copied = 0;
    for o in &outs {
        assert!(o.status.success(), "{}", text(o));
        if text(o).contains("3000 rows; count and id set match the source") {
            copied += 1;
        } else {
            assert!(text(o).starts_with("nothing to do"), "{}", text(o));
        }
    }
    assert_eq!(copied, 1, "exactly one apply copies");
    assert_eq!(rows(&dir.path().join("lancedb"), "docs").unwrap().0, 3000);
}

/// A lock held by a live process makes apply wait, then fail naming it; a
/// holder that died without releasing is said, and its lock taken.
#[test]
fn a_second_apply_waits_then_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("src"), "docs", 0..10);
    let plan = jsonl_plan(dir.path(), "lockme", &[("docs", "docs", "create", "")]);
    let p = plan.to_str().unwrap();
    let store = lanceferry::state::StateStore::new(
        dir.path().join("state"),
        "lockme",
        dir.path().join("lancedb").to_str().unwrap(),
    );
    let mut held = store.lock(std::time::Duration::ZERO).unwrap();
    held.set_apply("20260101T000000Z-beef").unwrap();
    let started = std::time::Instant::now();
    let o = run(&["apply", p, "--auto-approve", "--lock-timeout", "2"]);
    assert!(started.elapsed().as_secs_f64() >= 2.0, "it waited");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("locked by apply `20260101T000000Z-beef`")
            && t.contains(&format!("pid {}", std::process::id())),
        "{t}"
    );
    assert!(rows(&dir.path().join("lancedb"), "docs").is_none());
    drop(held);

    // What a killed holder leaves: its record in the file, no kernel lock.
    std::fs::write(
        store.lock_path(),
        serde_json::json!({
            "apply_id": "20260101T000000Z-dead",
            "pid": 999_999_999u32,
            "host": lanceferry::state::hostname(),
            "started": "2026-01-01T00:00:00Z"
        })
        .to_string(),
    )
    .unwrap();
    let o = run(&["apply", p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("apply `20260101T000000Z-dead` (pid 999999999"),
        "{}",
        text(&o)
    );
}

/// Plants a distinctive secret in every place a credential can enter (URL
/// userinfo, the token, a secret storage option) and greps every output and
/// every file lanceferry wrote for it.
#[test]
fn no_credential_reaches_any_output_or_file() {
    const PASSWORD: &str = "PW-7f3a9c-userinfo";
    const TOKEN: &str = "TOK-51bd2e-token";
    const KEY: &str = "KEY-c0ffee-storage";
    let server = common::server::ChromaServer::start("1.5.9");
    let dir = tempfile::tempdir().unwrap();
    let url = server
        .url()
        .replace("http://", &format!("http://alice:{PASSWORD}@"));
    let plan = dir.path().join("secret.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: secret\nsource: {{ chroma: {{ url: \"{url}\", token: \"${{CHROMA_TOKEN}}\" }} }}\ntarget:\n  lancedb:\n    uri: {}\n    storage_options: {{ aws_secret_access_key: \"${{AWS_SECRET}}\", region: eu-west-1 }}\nstate: {{ path: {} }}\nbackup: {{ dir: {} }}\ncollections:\n  - source: basic\n",
            dir.path().join("lancedb").display(),
            dir.path().join("state").display(),
            dir.path().join("backups").display(),
        ),
    )
    .unwrap();
    let p = plan.to_str().unwrap();
    let env = [("CHROMA_TOKEN", TOKEN), ("AWS_SECRET", KEY)];
    let mut outputs = Vec::new();
    for args in [
        vec!["check", p],
        vec!["check", p, "--json"],
        vec!["graph", p],
        vec!["apply", p],
        vec!["apply", p, "--auto-approve"],
        vec!["apply", p, "--auto-approve", "--json"],
        vec!["verify", p, "--json"],
        vec!["inspect", p],
        vec!["rollback", p, "--auto-approve"],
    ] {
        let o = run_in(dir.path(), &args, &env);
        outputs.push((args.join(" "), text(&o)));
    }
    // An unreachable server with credentials: the error names it without them.
    let dead = plan.with_file_name("dead.yaml");
    std::fs::write(
        &dead,
        std::fs::read_to_string(&plan)
            .unwrap()
            .replace(&server.url().replace("http://", ""), "127.0.0.1:9"),
    )
    .unwrap();
    let o = run_in(
        dir.path(),
        &["apply", dead.to_str().unwrap(), "--auto-approve"],
        &env,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("***@127.0.0.1:9"), "{}", text(&o));
    outputs.push(("apply dead".into(), text(&o)));
    assert!(
        outputs[4].1.contains("count and id set match the source"),
        "the apply ran: {}",
        outputs[4].1
    );
    for (cmd, out) in &outputs {
        for secret in [PASSWORD, TOKEN, KEY] {
            assert!(!out.contains(secret), "`{cmd}` printed {secret}:\n{out}");
        }
    }
    // Every file lanceferry wrote: state, report, backups, tables.
    let mut stack = vec![
        dir.path().join("state"),
        dir.path().join("backups"),
        dir.path().join("lancedb"),
    ];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            // Backups are gzip: look inside too.
            let mut text = bytes.clone();
            if path.to_string_lossy().ends_with(".gz") {
                use std::io::Read;
                let mut out = Vec::new();
                if flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut out)
                    .is_ok()
                {
                    text = out;
                }
            }
            let hay = String::from_utf8_lossy(&text);
            for secret in [PASSWORD, TOKEN, KEY] {
                assert!(!hay.contains(secret), "{} holds {secret}", path.display());
            }
        }
    }
    assert!(files > 5, "the apply wrote state, a report and a table");
}

#[test]
fn a_secret_storage_option_written_in_the_plan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("p.yaml");
    std::fs::write(
        &plan,
        "version: 1\nname: p\nsource: { chroma: { path: ./db } }\ntarget:\n  lancedb:\n    uri: ./out\n    storage_options: { aws_secret_access_key: AKIA-written-here }\ncollections:\n  - source: a\n",
    )
    .unwrap();
    let o = run(&["check", plan.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("p.yaml:7:") && t.contains("aws_secret_access_key") && t.contains("${VAR}"),
        "{t}"
    );
    assert!(!t.contains("AKIA-written-here"), "{t}");
}

/// A step that panics fails that step only: its branch stops, the other
/// collection is copied and validated, the apply exits 1 naming the step,
/// and a re-run (no panic) finishes the work.
#[test]
fn a_panicking_step_fails_that_step_only() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("src"), "a", 0..20);
    write_jsonl(&dir.path().join("src"), "b", 100..130);
    let plan = jsonl_plan(
        dir.path(),
        "panics",
        &[("a", "a", "create", ""), ("b", "b", "create", "")],
    );
    let p = plan.to_str().unwrap();
    let o = run_in(
        &common::repo(),
        &["apply", p, "--auto-approve"],
        &[("LANCEFERRY_FAILPOINT", "panic:copy:a")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("step `copy:a` stopped on an internal error")
            && t.contains("30 rows; count and id set"),
        "{t}"
    );
    assert!(rows(&dir.path().join("lancedb"), "a").is_none());
    assert_eq!(rows(&dir.path().join("lancedb"), "b").unwrap().0, 30);
    let o = run(&["apply", p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(rows(&dir.path().join("lancedb"), "a").unwrap().0, 20);
}
