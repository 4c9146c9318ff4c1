//! The on-disk Chroma reader against directories written by real chromadb
//! 0.4.24, 0.6.3 and 1.5.9: every record must equal what `collection.get()`
//! returned (ids, documents, uris, metadata exactly; vectors within 1e-6
//! relative error), and the directory must not change by a byte.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use lanceferry::source::chroma_dir::ChromaDir;
use lanceferry::source::{MetaValue, SourceBatch, SourceError};

fn read_all(dir: &ChromaDir, name: &str, batch: usize) -> SourceBatch {
    let mut all = SourceBatch::default();
    let mut max_batch = 0;
    dir.read_sync(name, batch, |b| {
        let b = b.unwrap_or_else(|e| panic!("reading `{name}`: {e}"));
        max_batch = max_batch.max(b.len());
        all.dim = b.dim;
        all.ids.extend(b.ids);
        all.documents.extend(b.documents);
        all.uris.extend(b.uris);
        all.metadatas.extend(b.metadatas);
        all.embeddings.extend(b.embeddings);
        true
    });
    assert!(
        max_batch <= batch,
        "a batch of {max_batch} exceeds the batch size {batch}"
    );
    all
}

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
    let dir = ChromaDir::open(&chroma).unwrap();
    let infos = dir.list_sync().unwrap();
    let collections = truth["collections"].as_object().unwrap();
    assert_eq!(
        infos.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        collections.keys().cloned().collect::<Vec<_>>(),
        "collection names"
    );
    for info in &infos {
        let t = &collections[&info.name];
        let ctx = format!("chromadb {version}, collection `{}`", info.name);
        assert_eq!(info.count, t["count"].as_u64().unwrap(), "{ctx}: count");
        assert_eq!(info.id, t["id"].as_str().unwrap(), "{ctx}: id");
        assert_eq!(
            serde_json::to_value(info.space).unwrap(),
            t["space"],
            "{ctx}: space"
        );
        if let Some(d) = t["dimension"].as_u64() {
            assert_eq!(info.dimension, Some(d as u32), "{ctx}: dimension");
        }
        let got = read_all(&dir, &info.name, 97);
        assert_eq!(got.len() as u64, info.count, "{ctx}: records read vs count");
        let index: HashMap<&str, usize> = got
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        assert_eq!(index.len(), got.len(), "{ctx}: duplicate ids");
        let ids = t["ids"].as_array().unwrap();
        assert_eq!(ids.len(), got.len(), "{ctx}: number of records");
        for (ti, id) in ids.iter().enumerate() {
            let id = id.as_str().unwrap();
            let gi = *index
                .get(id)
                .unwrap_or_else(|| panic!("{ctx}: id `{id}` missing"));
            let doc = &t["documents"][ti];
            assert_eq!(
                got.documents[gi].as_deref(),
                doc.as_str(),
                "{ctx}: document of `{id}`"
            );
            let uri = &t["uris"][ti];
            assert_eq!(
                got.uris[gi].as_deref(),
                uri.as_str(),
                "{ctx}: uri of `{id}`"
            );
            let meta = &t["metadatas"][ti];
            let want: Option<BTreeMap<String, MetaValue>> = meta.as_object().map(|m| {
                m.iter()
                    .filter_map(|(k, v)| MetaValue::from_json(v).map(|mv| (k.clone(), mv)))
                    .collect()
            });
            let want = want.filter(|m| !m.is_empty());
            assert_eq!(got.metadatas[gi], want, "{ctx}: metadata of `{id}`");
            let emb: Vec<f64> = t["embeddings"][ti]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let g = got.embedding(gi);
            assert_eq!(g.len(), emb.len(), "{ctx}: dimension of `{id}`");
            for (a, b) in g.iter().zip(&emb) {
                let err = (*a as f64 - b).abs() / b.abs().max(1e-30);
                assert!(
                    err <= 1e-6 || (*a as f64 - b).abs() < 1e-12,
                    "{ctx}: vector of `{id}`: {a} vs {b}"
                );
            }
        }
        // Fetch by id returns the same records (and skips absent ids).
        if let Some(first) = got.ids.first() {
            let some = dir
                .get_sync(&info.name, &[first.clone(), "no-such-id".into()])
                .unwrap();
            assert_eq!(some.ids, vec![first.clone()], "{ctx}: get by id");
            assert_eq!(some.embedding(0), got.embedding(0), "{ctx}: get vector");
        }
    }
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
