//! The on-disk Chroma reader against directories written by real chromadb
//! 0.4.24, 0.5.23, 0.6.3 and 1.5.9: every record must equal what
//! `collection.get()` returned (ids, documents, uris, metadata exactly;
//! vectors within 1e-6 relative error), in the default database and in
//! another tenant's database of the same directory, and the directory must
//! not change by a byte.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use lanceferry::plan::DistanceSpace;
use lanceferry::source::SourceError;
use lanceferry::source::chroma_dir::ChromaDir;
use lanceferry::source::jsonl::JsonlDir;

fn file_hashes(dir: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                out.insert(
                    e.path().strip_prefix(dir).unwrap().display().to_string(),
                    hex::encode(Sha256::digest(&bytes)),
                );
            }
        }
    }
    out
}

fn compare_with_truth(version: &str) {
    let fx = common::fixture(version);
    let chroma = fx.join("chroma");
    let truth = common::truth(&fx);
    let before = file_hashes(&chroma);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = ChromaDir::open(&chroma).unwrap();
    rt.block_on(common::truth::assert_source_matches(
        &dir,
        &truth,
        &format!("chromadb {version} on disk"),
    ));
    // Another tenant's database: only its collections (one is named like a
    // default one, with other records).
    let other = &truth["other_database"];
    let (tenant, database) = (
        other["tenant"].as_str().unwrap(),
        other["database"].as_str().unwrap(),
    );
    let dir = ChromaDir::open_in(&chroma, tenant, database).unwrap();
    rt.block_on(common::truth::assert_source_matches(
        &dir,
        other,
        &format!("chromadb {version} on disk, database `{database}` of `{tenant}`"),
    ));
    assert_eq!(
        before,
        file_hashes(&chroma),
        "chromadb {version}: the reader changed the directory"
    );
}

#[test]
fn reads_chroma_1_5_9_exactly() {
    compare_with_truth("1.5.9");
}

#[test]
fn reads_chroma_0_6_3_exactly() {
    compare_with_truth("0.6.3");
}

#[test]
fn reads_chroma_0_5_23_exactly() {
    compare_with_truth("0.5.23");
}

#[test]
fn reads_chroma_0_4_24_exactly() {
    compare_with_truth("0.4.24");
}

#[test]
fn unknown_collection_lists_the_existing_ones() {
    let fx = common::fixture("1.5.9");
    let dir = ChromaDir::open(fx.join("chroma")).unwrap();
    let err = dir.get_sync("nope", &[]).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, SourceError::NoSuchCollection { .. }),
        "{text}"
    );
    assert!(text.contains("`basic`") && text.contains("hint:"), "{text}");
}

#[test]
fn a_directory_that_is_not_chroma_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ChromaDir::open(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("has no `chroma.sqlite3`") && err.contains("hint:"),
        "{err}"
    );
    std::fs::write(
        tmp.path().join("chroma.sqlite3"),
        b"definitely not sqlite, just text",
    )
    .unwrap();
    let err = ChromaDir::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not an SQLite database"), "{err}");
    let err = ChromaDir::open(tmp.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}

fn corrupted_copy(f: impl FnOnce(&Path)) -> (tempfile::TempDir, ChromaDir) {
    let fx = common::fixture("1.5.9");
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&fx.join("chroma"), tmp.path());
    f(tmp.path());
    let dir = ChromaDir::open(tmp.path()).unwrap();
    (tmp, dir)
}

/// The vector segment directory of a default-database collection.
fn vector_segment(root: &Path, collection: &str) -> PathBuf {
    let conn = rusqlite::Connection::open(root.join("chroma.sqlite3")).unwrap();
    let id: String = conn
        .query_row(
            "SELECT s.id FROM segments s JOIN collections c ON s.collection = c.id \
             JOIN databases d ON c.database_id = d.id \
             WHERE c.name = ?1 AND s.scope = 'VECTOR' AND d.name = 'default_database'",
            [collection],
            |r| r.get(0),
        )
        .unwrap();
    root.join(id)
}

/// The vector segment directory of `resized` (flushed HNSW files, l2).
fn resized_segment(root: &Path) -> PathBuf {
    let seg = vector_segment(root, "resized");
    assert!(
        seg.join("index_metadata.pickle").exists(),
        "{}",
        seg.display()
    );
    seg
}

#[test]
fn truncated_segment_file_is_reported_not_panicked() {
    let (_tmp, dir) = corrupted_copy(|root| {
        let f = resized_segment(root).join("data_level0.bin");
        let len = std::fs::metadata(&f).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.set_len(len / 3).unwrap();
    });
    let err = dir.list_sync().unwrap_err().to_string();
    assert!(
        err.contains("data_level0.bin") && err.contains("truncated") && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn missing_header_is_reported() {
    let (_tmp, dir) = corrupted_copy(|root| {
        std::fs::remove_file(resized_segment(root).join("header.bin")).unwrap();
    });
    let err = dir.list_sync().unwrap_err().to_string();
    assert!(
        err.contains("header.bin") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn newer_schema_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&common::fixture("1.5.9").join("chroma"), tmp.path());
    let conn = rusqlite::Connection::open(tmp.path().join("chroma.sqlite3")).unwrap();
    conn.execute(
        "INSERT INTO migrations (dir, version, filename, sql, hash) VALUES ('metadb', 99, 'x', '', '')",
        [],
    )
    .unwrap();
    drop(conn);
    let err = ChromaDir::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("`metadb` version 99"), "{err}");
}

#[test]
fn dimension_disagreement_is_reported() {
    let (_tmp, dir) = corrupted_copy(|root| {
        let conn = rusqlite::Connection::open(root.join("chroma.sqlite3")).unwrap();
        conn.execute(
            "UPDATE collections SET dimension = 9 WHERE name = 'resized'",
            [],
        )
        .unwrap();
    });
    let err = dir.list_sync().unwrap_err().to_string();
    assert!(
        err.contains("dimension") && err.contains("resized"),
        "{err}"
    );
}

#[test]
fn cosine_segment_without_length_bin_is_refused() {
    // `wide` is cosine with flushed HNSW files: its vectors on disk are unit
    // vectors, and only `length.bin` restores them.
    let (tmp, dir) = corrupted_copy(|root| {
        let seg = vector_segment(root, "wide");
        assert!(
            seg.join("index_metadata.pickle").exists(),
            "{}",
            seg.display()
        );
        std::fs::remove_file(seg.join("length.bin")).unwrap();
    });
    let named = |err: &str| {
        assert!(
            err.contains("length.bin")
                && err.contains("missing")
                && err.contains("cosine")
                && err.contains("`wide`")
                && err.contains("hint:"),
            "{err}"
        );
    };
    named(&dir.list_sync().unwrap_err().to_string());
    let mut read_err = None;
    dir.read_sync("wide", 100, |b| {
        read_err = b.err().map(|e| e.to_string());
        read_err.is_none()
    });
    named(&read_err.expect("reading `wide` fails"));
    // Collections of other spaces do not need it.
    let basic = dir.get_sync("basic", &["doc-0001".into()]).unwrap();
    assert_eq!(basic.ids, ["doc-0001"]);
    // And the command says so, with exit code 1.
    let o = Command::cargo_bin("lanceferry")
        .unwrap()
        .env("NO_COLOR", "1")
        .args(["inspect", "--collection", "wide", "--path"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    named(&String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_missing_database_is_named_with_the_ones_that_exist() {
    let fx = common::fixture("1.5.9");
    let err = ChromaDir::open_in(fx.join("chroma"), "team_tenant", "nope").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SourceError::NoSuchDatabase { .. }), "{text}");
    assert!(
        text.contains("`nope`")
            && text.contains("`team_db` in tenant `team_tenant`")
            && text.contains("`default_database` in tenant `default_tenant`")
            && text.contains("hint:"),
        "{text}"
    );
}

/// A plan reading database `database` of tenant `tenant` from `chroma`.
fn tenant_plan(dir: &Path, chroma: &Path, tenant: &str, database: &str) -> PathBuf {
    let plan = dir.join(format!("{database}.yaml"));
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: team\nsource:\n  chroma:\n    path: '{}'\n    tenant: {tenant}\n    database: {database}\ntarget:\n  lancedb:\n    uri: '{}'\ncollections:\n  - source: basic\n",
            chroma.display(),
            dir.join("lancedb").display()
        ),
    )
    .unwrap();
    plan
}

#[test]
fn a_plan_reads_another_tenants_database_from_a_directory() {
    let fx = common::fixture("1.5.9");
    let truth = common::truth(&fx);
    let other = &truth["other_database"];
    let (tenant, database) = (
        other["tenant"].as_str().unwrap(),
        other["database"].as_str().unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let plan = tenant_plan(tmp.path(), &fx.join("chroma"), tenant, database);
    let lanceferry = || {
        let mut cmd = Command::cargo_bin("lanceferry").unwrap();
        cmd.env("NO_COLOR", "1");
        cmd
    };

    // `basic` of that database, not the default database's `basic`.
    let o = lanceferry()
        .args(["inspect", "--json"])
        .arg(&plan)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = &other["collections"]["basic"];
    assert!(
        v["source"]
            .as_str()
            .unwrap()
            .contains(&format!("database `{database}`")),
        "{v}"
    );
    let cols = v["collections"].as_array().unwrap();
    assert_eq!(cols.len(), 1, "{v}");
    assert_eq!(cols[0]["count"], want["count"], "{v}");
    assert_eq!(cols[0]["id"], want["id"], "{v}");
    assert_eq!(cols[0]["space"], "cosine", "{v}");

    // Every record, exported through the plan, equals chromadb's own get().
    let out = tmp.path().join("export");
    let o = lanceferry()
        .arg("export")
        .arg(plan)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let source = JsonlDir::open(out, DistanceSpace::Cosine).unwrap();
    let got = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::truth::read_all(&source, "basic", 50));
    common::truth::assert_batch_matches(&got, want, "export of `basic` in `team_db`");

    // A database the directory does not have is named, with those it has.
    let missing = tenant_plan(tmp.path(), &fx.join("chroma"), tenant, "nope");
    let o = lanceferry().arg("inspect").arg(missing).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`nope`") && err.contains(&format!("`{database}` in tenant `{tenant}`")),
        "{err}"
    );
}

/// Every record `read_sync` yields from `dir`'s `name`, in order, with its
/// vector; and the error that ended the read, if one did.
fn read_all(
    dir: &ChromaDir,
    name: &str,
    batch: usize,
) -> (Vec<(String, Vec<f32>)>, Option<String>) {
    let mut got = Vec::new();
    let mut err = None;
    dir.read_sync(name, batch, |b| match b {
        Ok(b) => {
            for (i, id) in b.ids.iter().enumerate() {
                got.push((
                    id.clone(),
                    b.embeddings[i * b.dim..(i + 1) * b.dim].to_vec(),
                ));
            }
            true
        }
        Err(e) => {
            err = Some(e.to_string());
            false
        }
    });
    (got, err)
}

#[test]
fn a_damaged_element_mid_file_fails_the_read_in_order_after_whole_pages() {
    // The vectors of a page are read on a second thread while SQLite gives
    // the fields: an element whose label was overwritten, two thirds into
    // `wide` (cosine, 384 dimensions, read in pages of 100), must end the
    // read with an error naming the record, after the pages before it and
    // with none of its own page.
    let fx = common::fixture("1.5.9");
    let (clean, err) = read_all(&ChromaDir::open(fx.join("chroma")).unwrap(), "wide", 100);
    assert!(err.is_none(), "{err:?}");
    let (_tmp, dir) = corrupted_copy(|root| {
        let seg = vector_segment(root, "wide");
        let header = std::fs::read(seg.join("header.bin")).unwrap();
        let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap());
        let (count, spe, label_at) = (u64_at(20), u64_at(28), u64_at(36));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(seg.join("data_level0.bin"))
            .unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(&u64::MAX.to_le_bytes(), count * 2 / 3 * spe + label_at)
            .unwrap();
    });
    let (got, err) = read_all(&dir, "wide", 100);
    let err = err.expect("the damaged element fails the read");
    let (at, (id, _)) = clean
        .iter()
        .enumerate()
        .find(|(_, (id, _))| err.contains(&format!("`{id}`")))
        .unwrap_or_else(|| panic!("the error names a record of `wide`: {err}"));
    assert!(err.contains("no vector") && err.contains("hint:"), "{err}");
    assert!(
        got.len() >= 100 && got.len() <= at && at - got.len() < 100,
        "{} records yielded before the error at record {at} (`{id}`), pages of 100",
        got.len()
    );
    assert_eq!(
        got,
        clean[..got.len()],
        "what came before the error is intact"
    );
}
