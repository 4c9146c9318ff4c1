//! LanceDB on S3: the demo, a sync, a kill and resume, rollback, `plan` and
//! `verify` against an S3 endpoint on loopback (`moto_server`, started and
//! stopped by PID), and Python `lancedb` reading the table from the same
//! endpoint. Everything that works on a local directory works there.

mod common;

use std::path::Path;

use common::s3::S3;
use common::{lanceferry, text};

const COLLECTION: &str = "canvas_explanations";

fn run(s3: &S3, args: &[&str]) -> std::process::Output {
    lanceferry().envs(s3.env()).args(args).output().unwrap()
}

fn run_killed_at(s3: &S3, args: &[&str], point: &str) -> std::process::Output {
    lanceferry()
        .envs(s3.env())
        .env("LANCEFERRY_FAILPOINT", point)
        .args(args)
        .output()
        .unwrap()
}

/// The demo's mapping, `mode: sync`, into `s3://lanceferry/<prefix>`.
fn plan(d: &Path, s3: &S3, prefix: &str, checkpoint: u64) -> String {
    let chroma = d.join("chroma");
    if !chroma.exists() {
        common::copy_dir(&common::repo().join("demo/chroma_db"), &chroma);
    }
    let p = d.join(format!("{prefix}.yaml"));
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: {prefix}\nsource: {{ chroma: {{ path: {} }} }}\n{}state: {{ path: {} }}\ndefaults: {{ batch_size: 100, checkpoint_rows: {checkpoint} }}\ncollections:\n  - source: {COLLECTION}\n    mode: sync\n    columns:\n      - {{ name: vector, from: embedding }}\n      - {{ name: doc_id, from: id }}\n      - {{ name: content, from: document }}\n      - {{ name: canvas_file, from: metadata.canvas_file, type: string }}\n      - {{ name: metadata_json, from: metadata, type: json }}\n    indexes: [{{ column: vector, type: ivf_pq }}, {{ column: content, type: fts }}]\n    validate: {{ sample: all }}\n",
            chroma.display(),
            s3.target_yaml(prefix),
            d.join("state").display()
        ),
    )
    .unwrap();
    p.display().to_string()
}

/// Python `lancedb` on the same endpoint: the table's ids, sorted.
fn python_ids(s3: &S3, prefix: &str) -> Vec<String> {
    let o = std::process::Command::new(common::python("1.5.9"))
        .envs(s3.env())
        .arg("-c")
        .arg(format!(
            "import lancedb\ndb = lancedb.connect('s3://{}/{prefix}', storage_options={{'aws_endpoint': '{}', 'aws_region': '{}', 'allow_http': 'true'}})\nt = db.open_table('{COLLECTION}')\nfor i in sorted(t.to_arrow()['doc_id'].to_pylist()):\n    print(i)\n",
            common::s3::BUCKET,
            s3.endpoint(),
            common::s3::REGION
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The source's ids, sorted, as chromadb reads them.
fn chroma_ids(d: &Path) -> Vec<String> {
    let o = std::process::Command::new(common::python("1.5.9"))
        .arg("-c")
        .arg(format!(
            "import os\nos.environ['ANONYMIZED_TELEMETRY']='False'\nimport chromadb\nc = chromadb.PersistentClient(path='{}').get_collection('{COLLECTION}')\nfor i in sorted(c.get(include=[])['ids']):\n    print(i)\n",
            d.join("chroma").display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_demo_syncs_verifies_and_rolls_back_on_s3() {
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &s3, "demo", 100_000);
    let o = run(&s3, &["apply", &p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("every row equals its source record"),
        "{}",
        text(&o)
    );
    assert!(
        s3.keys("demo/").iter().any(|k| k.ends_with(".lance")),
        "no data file in the bucket: {:?}",
        s3.keys("demo/")
    );
    // Python finds every record where lanceferry wrote it.
    assert_eq!(python_ids(&s3, "demo"), chroma_ids(d));
    let o = run(&s3, &["plan", &p, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&s3, &["verify", &p]);
    assert!(o.status.success(), "{}", text(&o));

    // The application writes; the sync brings exactly that.
    let o = std::process::Command::new(common::python("1.5.9"))
        .arg("-c")
        .arg(format!(
            "import os\nos.environ['ANONYMIZED_TELEMETRY']='False'\nimport chromadb\nc = chromadb.PersistentClient(path='{}').get_collection('{COLLECTION}', embedding_function=None)\ng = c.get(limit=5, include=['embeddings'])\nc.update(ids=g['ids'][:3], documents=['edited'] * 3, embeddings=g['embeddings'][:3])\nc.delete(ids=g['ids'][3:5])\nc.add(ids=['s3-new-1', 's3-new-2'], embeddings=g['embeddings'][:2], documents=['new'] * 2)\n",
            d.join("chroma").display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&s3, &["plan", &p, "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("2 to insert, 3 to update, 2 to delete (exact)"),
        "{}",
        text(&o)
    );
    let o = run(&s3, &["apply", &p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("sync: 2 inserted, 3 updated, 2 deleted"),
        "{}",
        text(&o)
    );
    assert_eq!(python_ids(&s3, "demo"), chroma_ids(d));
    let o = run(&s3, &["verify", &p]);
    assert!(o.status.success(), "{}", text(&o));

    // Rollback restores the version before the sync.
    let o = run(&s3, &["rollback", &p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&s3, &["plan", &p]);
    assert!(
        text(&o).contains("2 to insert, 3 to update, 2 to delete (exact)"),
        "{}",
        text(&o)
    );
}

/// Killed after a checkpoint of the first copy to S3, the re-run resumes
/// from it and ends with every record, once.
#[test]
fn a_killed_copy_to_s3_resumes() {
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &s3, "crash", 100);
    let o = run_killed_at(
        &s3,
        &["apply", &p, "--auto-approve"],
        &format!("checkpoint:{COLLECTION}@300"),
    );
    assert!(!o.status.success(), "killed: {}", text(&o));
    let o = run(&s3, &["apply", &p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resum"), "{}", text(&o));
    assert_eq!(python_ids(&s3, "crash"), chroma_ids(d));
    let o = run(&s3, &["verify", &p]);
    assert!(o.status.success(), "{}", text(&o));
}

/// An endpoint that does not answer: `plan` and `apply` fail with a hint;
/// nothing is recorded as done, and the same plan works once it answers.
#[test]
fn an_unreachable_s3_endpoint_fails_with_a_hint() {
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = plan(d, &s3, "away", 100_000);
    let live = std::fs::read_to_string(&p).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &p,
        live.replace(&s3.endpoint(), &format!("http://127.0.0.1:{dead}")),
    )
    .unwrap();
    for cmd in [&["plan", &p][..], &["apply", &p, "--auto-approve"][..]] {
        let o = run(&s3, cmd);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {}", text(&o));
        assert!(
            text(&o).contains("hint: check that the object store answers at the endpoint"),
            "{cmd:?}: {}",
            text(&o)
        );
    }
    std::fs::write(&p, live).unwrap();
    let o = run(&s3, &["apply", &p, "--auto-approve"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(python_ids(&s3, "away"), chroma_ids(d));
}
