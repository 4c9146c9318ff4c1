//! The JSON Lines source: the original tool's export format, plain and
//! gzip-compressed, read back exactly; malformed lines name file and line.

mod common;

use std::io::Write;

use futures::TryStreamExt;
use lanceferry::plan::DistanceSpace;
use lanceferry::source::jsonl::JsonlDir;
use lanceferry::source::{MetaValue, Source};

/// Writes the truth of a fixture collection as the original tool's JSONL.
fn export_truth(dir: &std::path::Path, collection: &str, gz: bool) -> serde_json::Value {
    let truth = common::truth(&common::fixture("1.5.9"));
    let t = truth["collections"][collection].clone();
    let mut text = String::new();
    for (i, id) in t["ids"].as_array().unwrap().iter().enumerate() {
        let line = serde_json::json!({
            "doc_id": id,
            "content": t["documents"][i],
            "metadata": t["metadatas"][i],
            "embedding": t["embeddings"][i],
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    if gz {
        let f = std::fs::File::create(dir.join(format!("{collection}.jsonl.gz"))).unwrap();
        let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
    } else {
        std::fs::write(dir.join(format!("{collection}.jsonl")), text).unwrap();
    }
    t
}

#[tokio::test]
async fn reads_plain_and_gzip_exports_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let basic = export_truth(dir.path(), "basic", false);
    let lists = export_truth(dir.path(), "lists", true);
    let src = JsonlDir::open(dir.path(), DistanceSpace::Cosine).unwrap();
    let infos = src.list_collections().await.unwrap();
    assert_eq!(
        infos.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["basic", "lists"]
    );
    assert_eq!(infos[0].count, 300);
    assert_eq!(infos[0].dimension, Some(8));
    assert_eq!(infos[0].space, DistanceSpace::Cosine);
    for (name, t) in [("basic", basic), ("lists", lists)] {
        let batches: Vec<_> = src.read(name, 64).try_collect().await.unwrap();
        let mut n = 0;
        for b in &batches {
            assert!(b.len() <= 64);
            for i in 0..b.len() {
                assert_eq!(b.ids[i], t["ids"][n].as_str().unwrap());
                assert_eq!(b.documents[i].as_deref(), t["documents"][n].as_str());
                // An empty metadata map and no metadata are the same record.
                let want: Option<lanceferry::source::Metadata> = t["metadatas"][n]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| MetaValue::from_json(v).map(|mv| (k.clone(), mv)))
                            .collect()
                    })
                    .filter(|m: &lanceferry::source::Metadata| !m.is_empty());
                assert_eq!(b.metadatas[i], want, "{name} record {n}");
                let e: Vec<f32> = t["embeddings"][n]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(b.embedding(i), e.as_slice());
                n += 1;
            }
        }
        assert_eq!(n, t["ids"].as_array().unwrap().len());
    }
    let some = src
        .get("basic", &["doc-0005".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(some.ids, ["doc-0005"]);
}

/// The error reading `collection` ends with.
async fn read_error(src: &JsonlDir, collection: &str) -> String {
    src.read(collection, 10)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn a_malformed_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.jsonl"),
        "{\"doc_id\":\"a\",\"content\":\"x\",\"metadata\":null,\"embedding\":[1,2]}\n{\"doc_id\":\"b\",\"embedding\":[1,2,3]}\n",
    )
    .unwrap();
    let src = JsonlDir::open(dir.path(), DistanceSpace::L2).unwrap();
    let err = read_error(&src, "c").await;
    assert!(
        err.contains("c.jsonl:2") && err.contains("dimension 3") && err.contains("hint:"),
        "{err}"
    );
    let err = src.collection("d").await.unwrap_err().to_string();
    assert!(err.contains("`c`"), "{err}");
    // A field of the wrong type names the field, the record and the line.
    for (field, line) in [("content", "\"content\":5"), ("uri", "\"uri\":[1]")] {
        std::fs::write(
            dir.path().join("c.jsonl"),
            format!("{{\"doc_id\":\"a\",\"embedding\":[1,2]}}\n{{\"doc_id\":\"b\",{line},\"embedding\":[1,2]}}\n"),
        )
        .unwrap();
        let err = read_error(&src, "c").await;
        assert!(
            err.contains("c.jsonl:2") && err.contains(&format!("`{field}` of `b` is not a string")),
            "{err}"
        );
    }
}

#[test]
fn apply_from_jsonl_source() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("export");
    std::fs::create_dir(&data).unwrap();
    export_truth(&data, "basic", true);
    let plan = dir.path().join("p.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: j\nsource: {{ jsonl: {{ path: {}, space: l2 }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\nstate: {{ path: {} }}\ncollections:\n  - source: basic\n",
            data.display(),
            dir.path().join("lancedb").display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let o = assert_cmd::Command::cargo_bin("lanceferry")
        .unwrap()
        .args(["apply", "--auto-approve"])
        .arg(&plan)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    assert!(text.contains("validate `basic`: 300 rows"), "{text}");
}
