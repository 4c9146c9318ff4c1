//! Comparing what a source reads with what `collection.get()` returned
//! (`truth.json` of a fixture): ids, documents, uris and metadata exactly,
//! vectors within 1e-6 relative error. One comparison for every reader.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use lanceferry::source::{MetaValue, Source, SourceBatch};

/// Reads a whole collection through the `Source` interface, checking that
/// no batch exceeds `batch`.
pub async fn read_all(source: &dyn Source, name: &str, batch: usize) -> SourceBatch {
    let mut all = SourceBatch::default();
    let mut stream = source.read(name, batch);
    while let Some(b) = stream.next().await {
        let b = b.unwrap_or_else(|e| panic!("reading `{name}`: {e}"));
        assert!(
            b.len() <= batch,
            "a batch of {} exceeds the batch size {batch}",
            b.len()
        );
        all.append(b);
    }
    all
}

/// Every collection of `source` equals the fixture's truth.
pub async fn assert_source_matches(source: &dyn Source, truth: &serde_json::Value, what: &str) {
    let infos = source.list_collections().await.unwrap();
    let collections = truth["collections"].as_object().unwrap();
    assert_eq!(
        infos.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        collections.keys().cloned().collect::<Vec<_>>(),
        "{what}: collection names"
    );
    for info in &infos {
        let t = &collections[&info.name];
        let ctx = format!("{what}, collection `{}`", info.name);
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
        let one = source.collection(&info.name).await.unwrap();
        assert_eq!(&one, info, "{ctx}: lookup by name vs list");
        let got = read_all(source, &info.name, 97).await;
        assert_batch_matches(&got, t, &ctx);
        // The ids-only stream yields the same ids in the same order.
        let mut ids = Vec::new();
        let mut stream = source.read_ids(&info.name, 97);
        while let Some(b) = stream.next().await {
            let b = b.unwrap_or_else(|e| panic!("{ctx}: read_ids: {e}"));
            assert!(b.len() <= 97, "{ctx}: an id batch exceeds the batch size");
            ids.extend(b);
        }
        assert_eq!(ids, got.ids, "{ctx}: read_ids vs read");
        // Fetch by id returns the same records (and skips absent ids).
        if let Some(first) = got.ids.first() {
            let some = source
                .get(&info.name, &[first.clone(), "no-such-id".into()])
                .await
                .unwrap();
            assert_eq!(some.ids, vec![first.clone()], "{ctx}: get by id");
            assert_eq!(some.embedding(0), got.embedding(0), "{ctx}: get vector");
            assert_eq!(some.metadatas[0], got.metadatas[0], "{ctx}: get metadata");
        }
    }
}

/// One collection's records equal the truth's, in any order.
pub fn assert_batch_matches(got: &SourceBatch, t: &serde_json::Value, ctx: &str) {
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
        assert_eq!(
            got.documents[gi].as_deref(),
            t["documents"][ti].as_str(),
            "{ctx}: document of `{id}`"
        );
        assert_eq!(
            got.uris[gi].as_deref(),
            t["uris"][ti].as_str(),
            "{ctx}: uri of `{id}`"
        );
        let want: Option<BTreeMap<String, MetaValue>> = t["metadatas"][ti].as_object().map(|m| {
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
}
