//! The sharded apply (`apply --prepare RUN --shards N`, `apply --shard K/N
//! --run RUN`, `apply --commit RUN`, docs/scale-out.md) against a local
//! directory and against an S3 endpoint on loopback: 4 worker processes at
//! once, one of them SIGKILLed mid-way and run again, then the commit; the
//! table equals a single-process apply of the same plan record for record
//! (read back with Python `lancedb`, sorted by id, every column compared
//! exactly); a second commit writes nothing; a commit before every shard
//! reported, a worker with another N, and a worker after the commit are
//! refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::s3::S3;
use common::text;

const TABLE: &str = "canvas_explanations";
const RUN: &str = "r1";

fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("lanceferry")
}

/// The crash test's mapping, `mode: create`, a btree index, every value
/// validated; `target` is the plan's `target:` block.
fn plan(dir: &Path, name: &str, chroma: &Path, target: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: {name}\nsource: {{ chroma: {{ path: {} }} }}\n{target}state: {{ path: {} }}\ndefaults: {{ batch_size: 1000 }}\ncollections:\n  - source: {TABLE}\n    mode: create\n    columns:\n      - {{ name: vector, from: embedding }}\n      - {{ name: doc_id, from: id }}\n      - {{ name: content, from: document }}\n      - {{ name: canvas_file, from: metadata.canvas_file, type: string }}\n      - {{ name: page, from: metadata.page, type: int64 }}\n      - {{ name: metadata_json, from: metadata, type: json }}\n    indexes: [{{ column: doc_id, type: btree }}]\n    validate: {{ sample: all }}\n",
            chroma.display(),
            dir.join(format!("state-{name}")).display()
        ),
    )
    .unwrap();
    p
}

fn local_target(db: &Path) -> String {
    format!("target: {{ lancedb: {{ uri: {} }} }}\n", db.display())
}

/// `lanceferry apply PLAN ARGS...` as a command, with `env`.
fn apply_cmd(p: &Path, args: &[&str], env: &[(&'static str, String)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("apply")
        .arg(p)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("LANCEFERRY_FAILPOINT")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

fn apply(p: &Path, args: &[&str], env: &[(&'static str, String)]) -> Output {
    apply_cmd(p, args, env).output().unwrap()
}

/// A worker process, its output in files under `logs`.
fn spawn_shard(
    p: &Path,
    k: u32,
    n: u32,
    logs: &Path,
    env: &[(&'static str, String)],
    failpoint: Option<&str>,
) -> Child {
    let shard = format!("{k}/{n}");
    let mut cmd = apply_cmd(p, &["--shard", &shard, "--run", RUN], env);
    if let Some(f) = failpoint {
        cmd.env("LANCEFERRY_FAILPOINT", f);
    }
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.join(format!("shard-{k}.out"))).unwrap())
        .stderr(std::fs::File::create(logs.join(format!("shard-{k}.err"))).unwrap())
        .spawn()
        .unwrap()
}

fn log(logs: &Path, k: u32) -> String {
    format!(
        "{}{}",
        std::fs::read_to_string(logs.join(format!("shard-{k}.out"))).unwrap_or_default(),
        std::fs::read_to_string(logs.join(format!("shard-{k}.err"))).unwrap_or_default()
    )
}

/// Python `lancedb` on one or two tables: `info` (the database's table
/// names, the table's version and rows) or `compare` (both tables sorted
/// by `doc_id`, every column compared exactly).
const PY: &str = r#"
import json, sys
import lancedb
spec = json.loads(sys.argv[1])
def table(s):
    db = lancedb.connect(s["uri"], storage_options=s.get("storage_options"))
    return db, db.open_table(s["table"])
if spec["mode"] == "info":
    db, t = table(spec["a"])
    print(json.dumps({"tables": sorted(db.table_names()), "version": t.version, "rows": t.count_rows()}))
else:
    _, ta = table(spec["a"])
    _, tb = table(spec["b"])
    a = ta.to_arrow().sort_by("doc_id")
    b = tb.to_arrow().sort_by("doc_id")
    diffs = []
    if a.column_names != b.column_names:
        diffs.append(f"columns {a.column_names} != {b.column_names}")
    else:
        for col in a.column_names:
            x, y = a[col].to_pylist(), b[col].to_pylist()
            if x != y:
                first = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
                diffs.append(f"{col}: first difference at row {first}: {x[first] if first < len(x) else None!r} != {y[first] if first < len(y) else None!r}")
    print(json.dumps({"rows": [a.num_rows, b.num_rows], "diffs": diffs}))
"#;

fn py(spec: serde_json::Value, env: &[(&'static str, String)]) -> serde_json::Value {
    let o = Command::new(common::python("1.5.9"))
        .arg("-c")
        .arg(PY)
        .arg(spec.to_string())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python lancedb: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn local_db(db: &Path) -> serde_json::Value {
    serde_json::json!({ "uri": db.display().to_string(), "table": TABLE })
}

fn s3_db(s3: &S3, prefix: &str) -> serde_json::Value {
    serde_json::json!({
        "uri": format!("s3://{}/{prefix}", common::s3::BUCKET),
        "table": TABLE,
        "storage_options": {
            "aws_endpoint": s3.endpoint(),
            "aws_region": common::s3::REGION,
            "allow_http": "true",
        },
    })
}

fn info(db: serde_json::Value, env: &[(&'static str, String)]) -> serde_json::Value {
    py(serde_json::json!({ "mode": "info", "a": db }), env)
}

/// Both tables hold the same rows, value for value.
fn assert_same(
    a: serde_json::Value,
    b: serde_json::Value,
    rows: usize,
    env: &[(&'static str, String)],
) {
    let r = py(
        serde_json::json!({ "mode": "compare", "a": a, "b": b }),
        env,
    );
    assert_eq!(r["rows"], serde_json::json!([rows, rows]), "{r}");
    assert_eq!(r["diffs"], serde_json::json!([]), "{r}");
}

#[test]
fn a_sharded_apply_with_a_killed_worker_equals_a_single_apply() {
    use std::os::unix::process::ExitStatusExt;
    const RECORDS: usize = 200_000;
    let chroma = common::large_fixture(RECORDS, 16);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let logs = d.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let db = d.join("sharded");
    let p = plan(d, "sharded", &chroma, &local_target(&db));

    // Prepare: the table, empty, and the run beside it.
    let o = apply(
        &p,
        &["--prepare", RUN, "--shards", "4", "--auto-approve"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("prepared run `r1`"), "{}", text(&o));
    assert!(db.join("_lanceferry_runs/r1/run.json").is_file());
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(db.join("_lanceferry_runs/r1/run.json")).unwrap())
            .unwrap();
    assert_eq!(run["shards"], 4);
    assert_eq!(run["collections"][0]["count"], RECORDS);
    assert_eq!(run["collections"][0]["ranges"][2]["start"], 100_000);
    // Preparing the same run again is nothing to do; another N is refused.
    let o = apply(
        &p,
        &["--prepare", RUN, "--shards", "4", "--auto-approve"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("already prepared"), "{}", text(&o));
    let o = apply(
        &p,
        &["--prepare", RUN, "--shards", "3", "--auto-approve"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("with 4 shards, not 3"), "{}", text(&o));

    // A worker with another N is refused, and writes nothing.
    let o = apply(&p, &["--shard", "0/3", "--run", RUN], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("was prepared with 4 shards, not 3"),
        "{}",
        text(&o)
    );

    // Four workers at once; shard 2 kills itself (SIGKILL) after 20,000 rows.
    let workers: Vec<Child> = (0..4)
        .map(|k| spawn_shard(&p, k, 4, &logs, &[], (k == 2).then_some("shard:2@20000")))
        .collect();
    for (k, mut w) in workers.into_iter().enumerate() {
        let status = w.wait().unwrap();
        if k == 2 {
            assert_eq!(status.signal(), Some(9), "shard 2: {}", log(&logs, 2));
        } else {
            assert!(status.success(), "shard {k}: {}", log(&logs, k as u32));
        }
    }
    // Nothing is visible before the commit, and the commit waits for shard 2.
    assert_eq!(info(local_db(&db), &[])["rows"], 0);
    let o = apply(&p, &["--commit", RUN, "--auto-approve"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("missing shards: 2 "), "{}", text(&o));
    assert_eq!(info(local_db(&db), &[])["rows"], 0);

    // The dead shard is simply run again; shard 1 too (its first attempt
    // is superseded, and its files removed by the commit).
    for k in [2, 1] {
        let o = apply(&p, &["--shard", &format!("{k}/4"), "--run", RUN], &[]);
        assert!(o.status.success(), "shard {k} again: {}", text(&o));
    }
    let attempts = |k: u32| {
        std::fs::read_dir(db.join(format!("_lanceferry_runs/r1/shards/{k}")))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".json")
            })
            .count()
    };
    assert_eq!((attempts(0), attempts(1), attempts(2)), (1, 2, 1));

    let o = apply(&p, &["--commit", RUN, "--auto-approve"], &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("committed as version"), "{out}");
    assert!(out.contains("of superseded shard attempts"), "{out}");
    assert!(
        out.contains(&format!(
            "{RECORDS} rows; count and id set match the source"
        )),
        "{out}"
    );
    let first = info(local_db(&db), &[]);
    assert_eq!(first["rows"], RECORDS, "{first}");
    // `_lanceferry_runs` beside the table is not a table.
    assert_eq!(first["tables"], serde_json::json!([TABLE]), "{first}");

    // Commit again: already committed, nothing written.
    let o = apply(&p, &["--commit", RUN, "--auto-approve"], &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("already committed by this run at version"),
        "{out}"
    );
    assert!(out.contains("already built"), "{out}");
    let second = info(local_db(&db), &[]);
    assert_eq!(second["version"], first["version"], "{first} {second}");
    assert_eq!(second["rows"], RECORDS);
    // A worker after the commit would write for nothing: refused.
    let o = apply(&p, &["--shard", "3/4", "--run", RUN], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("was already committed"), "{}", text(&o));

    // The same plan, applied by one process into another directory.
    let single = d.join("single");
    let p1 = plan(d, "single", &chroma, &local_target(&single));
    let o = apply(&p1, &["--auto-approve"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same(local_db(&db), local_db(&single), RECORDS, &[]);
}

#[test]
fn sharded_modes_other_than_create_are_refused() {
    let chroma = common::large_fixture(200_000, 16);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, "upserting", &chroma, &local_target(&d.join("db")));
    let yaml = std::fs::read_to_string(&p)
        .unwrap()
        .replace("mode: create", "mode: upsert");
    std::fs::write(&p, yaml).unwrap();
    let o = apply(
        &p,
        &["--prepare", RUN, "--shards", "2", "--auto-approve"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("`mode: upsert` cannot be sharded"),
        "{}",
        text(&o)
    );
    assert!(!d.join("db").join(format!("{TABLE}.lance")).exists());
    // `--shard` needs `--run`; the three are exclusive.
    let o = apply(&p, &["--shard", "0/2"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = apply(
        &p,
        &["--prepare", RUN, "--shards", "2", "--commit", RUN],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn a_sharded_apply_to_s3_equals_a_single_apply() {
    const RECORDS: usize = 20_000;
    let s3 = S3::start();
    let env = s3.env();
    let chroma = common::large_fixture(RECORDS, 16);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let logs = d.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let p = plan(d, "shards3", &chroma, &s3.target_yaml("sharded"));

    let o = apply(
        &p,
        &["--prepare", RUN, "--shards", "4", "--auto-approve"],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let keys = s3.keys("sharded/_lanceferry_runs/r1/");
    assert_eq!(
        keys,
        vec!["sharded/_lanceferry_runs/r1/run.json".to_string()],
        "{keys:?}"
    );

    let workers: Vec<Child> = (0..4)
        .map(|k| spawn_shard(&p, k, 4, &logs, &env, None))
        .collect();
    for (k, mut w) in workers.into_iter().enumerate() {
        let status = w.wait().unwrap();
        assert!(status.success(), "shard {k}: {}", log(&logs, k as u32));
    }
    let attempts: Vec<String> = s3
        .keys("sharded/_lanceferry_runs/r1/shards/")
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .collect();
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    assert_eq!(info(s3_db(&s3, "sharded"), &env)["rows"], 0);

    let o = apply(&p, &["--commit", RUN, "--auto-approve"], &env);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "{RECORDS} rows; count and id set match the source"
        )),
        "{out}"
    );
    let first = info(s3_db(&s3, "sharded"), &env);
    assert_eq!(first["rows"], RECORDS, "{first}");
    assert_eq!(first["tables"], serde_json::json!([TABLE]), "{first}");

    let o = apply(&p, &["--commit", RUN, "--auto-approve"], &env);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("already committed by this run at version"),
        "{out}"
    );
    let second = info(s3_db(&s3, "sharded"), &env);
    assert_eq!(second["version"], first["version"], "{first} {second}");
    assert_eq!(second["rows"], RECORDS);

    let single = d.join("single");
    let p1 = plan(d, "single", &chroma, &local_target(&single));
    let o = apply(&p1, &["--auto-approve"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same(s3_db(&s3, "sharded"), local_db(&single), RECORDS, &env);
}
