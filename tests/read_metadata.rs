//! `Source::read_fields`, the stream without vectors that `plan` gathers its
//! metadata statistics from, against directories written by real chromadb
//! 0.4.24, 0.5.23, 0.6.3 and 1.5.9 and against real servers (1.5.9 on the
//! v2 API, 0.4.24 on v1): for every collection it must yield exactly the
//! ids, documents, uris and metadata of `read`, in the same order, and no
//! vector. The directory reader must not need the vector segment at all:
//! with every HNSW file and pickle replaced by junk, `read` fails and
//! `read_fields` still yields the same records.

mod common;

use std::path::Path;

use common::server::ChromaServer;
use futures::StreamExt;
use lanceferry::source::chroma_dir::ChromaDir;
use lanceferry::source::chroma_http::{ChromaHttp, HttpOptions};
use lanceferry::source::{Source, SourceBatch};

/// A prime, so pages end in the middle of everything.
const BATCH: usize = 97;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A collection read through `read_fields`; every batch must be within the
/// batch size, with its columns of one length, and without vectors.
async fn read_fields_all(source: &dyn Source, name: &str, ctx: &str) -> SourceBatch {
    let mut all = SourceBatch::default();
    let mut stream = source.read_fields(name, BATCH);
    while let Some(b) = stream.next().await {
        let b = b.unwrap_or_else(|e| panic!("{ctx}: read_fields: {e}"));
        assert!(
            b.len() <= BATCH,
            "{ctx}: a batch of {} exceeds the batch size {BATCH}",
            b.len()
        );
        let n = b.len();
        assert!(
            b.documents.len() == n && b.uris.len() == n && b.metadatas.len() == n,
            "{ctx}: columns of different lengths in one batch"
        );
        assert!(
            b.embeddings.is_empty() && b.dim == 0 && !b.has_vectors(),
            "{ctx}: read_fields yielded vectors ({} values, dimension {})",
            b.embeddings.len(),
            b.dim
        );
        all.append(b);
    }
    all
}

/// `fields` holds exactly the records of `read`, in its order, without
/// their vectors.
fn assert_same_fields(fields: &SourceBatch, read: &SourceBatch, ctx: &str) {
    assert_eq!(fields.ids, read.ids, "{ctx}: ids, in read's order");
    assert_eq!(fields.documents, read.documents, "{ctx}: documents");
    assert_eq!(fields.uris, read.uris, "{ctx}: uris");
    assert_eq!(fields.metadatas, read.metadatas, "{ctx}: metadatas");
    assert!(
        fields.embeddings.is_empty() && fields.dim == 0,
        "{ctx}: vectors"
    );
}

/// Compares `read_fields` with `read` on every collection of `source`;
/// returns how many records were compared.
async fn compare_all(source: &dyn Source, what: &str) -> usize {
    let mut records = 0;
    for info in source.list_collections().await.unwrap() {
        let ctx = format!("{what}, collection `{}`", info.name);
        let read = common::truth::read_all(source, &info.name, BATCH).await;
        let fields = read_fields_all(source, &info.name, &ctx).await;
        assert_same_fields(&fields, &read, &ctx);
        assert_eq!(fields.len() as u64, info.count, "{ctx}: count");
        records += fields.len();
    }
    records
}

fn on_disk(version: &str) {
    let fx = common::fixture(version);
    let chroma = fx.join("chroma");
    let truth = common::truth(&fx);
    let other = &truth["other_database"];
    let (tenant, database) = (
        other["tenant"].as_str().unwrap(),
        other["database"].as_str().unwrap(),
    );
    rt().block_on(async {
        let what = format!("chromadb {version} on disk");
        let dir = ChromaDir::open(&chroma).unwrap();
        assert!(compare_all(&dir, &what).await > 0, "{what}: no records");
        let dir = ChromaDir::open_in(&chroma, tenant, database).unwrap();
        let what = format!("{what}, database `{database}` of `{tenant}`");
        assert!(compare_all(&dir, &what).await > 0, "{what}: no records");
    });
}

#[test]
fn read_fields_is_read_without_vectors_on_chroma_1_5_9() {
    on_disk("1.5.9");
}

#[test]
fn read_fields_is_read_without_vectors_on_chroma_0_6_3() {
    on_disk("0.6.3");
}

#[test]
fn read_fields_is_read_without_vectors_on_chroma_0_5_23() {
    on_disk("0.5.23");
}

#[test]
fn read_fields_is_read_without_vectors_on_chroma_0_4_24() {
    on_disk("0.4.24");
}

/// Overwrites every file of every vector segment (the subdirectories of a
/// Chroma directory: HNSW files and pickles) with a few junk bytes.
fn junk_vector_segments(chroma: &Path) -> usize {
    let mut junked = 0;
    for entry in std::fs::read_dir(chroma).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(entry.path()).unwrap() {
            let file = file.unwrap();
            if file.file_type().unwrap().is_file() {
                std::fs::write(file.path(), b"junk, not a segment file").unwrap();
                junked += 1;
            }
        }
    }
    junked
}

/// The vector segment is never opened: `read_fields` on a copy whose HNSW
/// files and pickles are junk yields what `read` yields on the original.
fn without_vector_segment(version: &str) {
    let chroma = common::fixture(version).join("chroma");
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&chroma, tmp.path());
    assert!(
        junk_vector_segments(tmp.path()) > 0,
        "chromadb {version}: the fixture has no vector segment files"
    );
    rt().block_on(async {
        let original = ChromaDir::open(&chroma).unwrap();
        let junked = ChromaDir::open(tmp.path()).unwrap();
        let mut read_failed = 0;
        for info in original.list_collections().await.unwrap() {
            let ctx = format!(
                "chromadb {version}, vector segments junked, collection `{}`",
                info.name
            );
            let want = common::truth::read_all(&original, &info.name, BATCH).await;
            let got = read_fields_all(&junked, &info.name, &ctx).await;
            assert_same_fields(&got, &want, &ctx);
            // The junk is real: reading vectors from it fails.
            let mut stream = junked.read(&info.name, BATCH);
            while let Some(b) = stream.next().await {
                if b.is_err() {
                    read_failed += 1;
                    break;
                }
            }
        }
        assert!(
            read_failed > 0,
            "chromadb {version}: `read` never failed on junked vector segments, so this test proves nothing"
        );
    });
}

#[test]
fn read_fields_never_opens_the_vector_segment_1_5_9() {
    without_vector_segment("1.5.9");
}

/// 0.4.x keeps the vector segment's queue position in the pickle only.
#[test]
fn read_fields_never_opens_the_vector_segment_0_4_24() {
    without_vector_segment("0.4.24");
}

fn over_http(version: &str) {
    let server = ChromaServer::start(version);
    let source = ChromaHttp::new(HttpOptions::new(server.url())).unwrap();
    rt().block_on(async {
        let what = format!("chromadb {version} over HTTP");
        assert!(compare_all(&source, &what).await > 0, "{what}: no records");
    });
}

#[test]
fn read_fields_is_read_without_vectors_over_http_1_5_9() {
    over_http("1.5.9");
}

/// The v1 API: `uris` without `embeddings` in `include`.
#[test]
fn read_fields_is_read_without_vectors_over_http_0_4_24() {
    over_http("0.4.24");
}
