//! The on-disk Chroma reader against directories written by real chromadb
//! 0.4.24, 0.6.3 and 1.5.9: every record must equal what `collection.get()`
//! returned (ids, documents, uris, metadata exactly; vectors within 1e-6
//! relative error), and the directory must not change by a byte.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use lanceferry::source::SourceError;
use lanceferry::source::chroma_dir::ChromaDir;

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
    let before = file_hashes(&chroma);
    let dir = ChromaDir::open(&chroma).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::truth::assert_source_matches(
            &dir,
            &common::truth(&fx),
            &format!("chromadb {version} on disk"),
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

/// The vector segment directory of `resized` (the one with HNSW files).
fn resized_segment(root: &Path) -> std::path::PathBuf {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("index_metadata.pickle").exists())
        .expect("a segment with HNSW files")
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
