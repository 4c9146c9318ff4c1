//! JSON Lines files as a source: the original migration script's export
//! format, one object per line, `{"doc_id", "content", "metadata",
//! "embedding"}`, one file per collection (`<dir>/<name>.jsonl` or
//! `.jsonl.gz`). Lets an export be re-imported elsewhere.
//!
//! lanceferry's own export adds `"uri"` to a line when the record has one;
//! readers of the original format ignore it.
//!
//! JSON Lines records no distance space, so the plan states it
//! (`source.jsonl.space`, default `l2`). Integers in metadata are read as
//! i64 exactly (serde_json keeps them), floats as f64.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use futures::stream::BoxStream;

use super::record::{MetaValue, Metadata, Record, SourceBatch};
use super::{CollectionInfo, Source, SourceError};
use crate::plan::DistanceSpace;

#[derive(Debug, Clone)]
pub struct JsonlDir {
    path: PathBuf,
    space: DistanceSpace,
}

fn bad(file: &Path, line: usize, collection: &str, reason: impl Into<String>) -> SourceError {
    SourceError::Corrupt {
        file: format!("{}:{line}", file.display()),
        collection: collection.to_string(),
        reason: reason.into(),
        hint: "each line must be one JSON object {\"doc_id\": string, \"content\": string|null, \"metadata\": object|null, \"embedding\": [numbers]}; fix or remove the line".into(),
    }
}

impl JsonlDir {
    pub fn open(path: impl Into<PathBuf>, space: DistanceSpace) -> Result<Self, SourceError> {
        let path = path.into();
        if !path.is_dir() {
            return Err(SourceError::NotChroma {
                path: path.display().to_string(),
                reason: "it is not a directory of `.jsonl` files".into(),
            });
        }
        Ok(JsonlDir { path, space })
    }

    fn files(&self) -> Result<Vec<(String, PathBuf)>, SourceError> {
        let io = |source| SourceError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path).map_err(io)? {
            let p = e.map_err(io)?.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if let Some(stem) = name
                .strip_suffix(".jsonl.gz")
                .or_else(|| name.strip_suffix(".jsonl"))
            {
                out.push((stem.to_string(), p));
            }
        }
        out.sort();
        Ok(out)
    }

    fn file(&self, name: &str) -> Result<PathBuf, SourceError> {
        let files = self.files()?;
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| {
                SourceError::no_such_collection(
                    name,
                    format!("JSON Lines in `{}`", self.path.display()),
                    files.iter().map(|(n, _)| n.as_str()),
                )
            })
    }

    fn lines(file: &Path) -> Result<Box<dyn BufRead + Send>, SourceError> {
        let f = std::fs::File::open(file).map_err(|source| SourceError::Io {
            path: file.display().to_string(),
            source,
        })?;
        Ok(if file.extension().is_some_and(|e| e == "gz") {
            Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f)))
        } else {
            Box::new(BufReader::new(f))
        })
    }

    /// Parses one line into a record.
    fn parse(file: &Path, n: usize, collection: &str, line: &str) -> Result<Record, SourceError> {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| bad(file, n, collection, format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad(file, n, collection, "not a JSON object"))?;
        let id = obj
            .get("doc_id")
            .and_then(|x| x.as_str())
            .ok_or_else(|| bad(file, n, collection, "`doc_id` is missing or not a string"))?
            .to_string();
        // An optional string field: absent or null is none.
        let text = |key: &str| match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(
                file,
                n,
                collection,
                format!("`{key}` of `{id}` is not a string"),
            )),
        };
        let document = text("content")?;
        let metadata: Option<Metadata> = match obj.get("metadata") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Object(m)) => {
                let mut out = Metadata::new();
                for (k, val) in m {
                    if val.is_object() {
                        return Err(bad(
                            file,
                            n,
                            collection,
                            format!(
                                "metadata key `{k}` of `{id}` is an object; Chroma metadata holds scalars and lists"
                            ),
                        ));
                    }
                    if let Some(mv) = MetaValue::from_json(val) {
                        out.insert(k.clone(), mv);
                    }
                }
                (!out.is_empty()).then_some(out)
            }
            Some(_) => {
                return Err(bad(
                    file,
                    n,
                    collection,
                    format!("`metadata` of `{id}` is not an object"),
                ));
            }
        };
        let embedding: Vec<f32> = obj
            .get("embedding")
            .and_then(|e| e.as_array())
            .ok_or_else(|| {
                bad(
                    file,
                    n,
                    collection,
                    format!("`embedding` of `{id}` is missing or not a list"),
                )
            })?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                bad(
                    file,
                    n,
                    collection,
                    format!("`embedding` of `{id}` holds a non-number"),
                )
            })?;
        // Not in the original format; lanceferry's export adds it when set.
        let uri = text("uri")?;
        Ok(Record {
            id,
            document,
            uri,
            metadata,
            embedding,
        })
    }

    /// Streams a file's records in batches through `sink`.
    fn read_sync(
        &self,
        name: &str,
        batch_size: usize,
        sink: &mut dyn FnMut(Result<SourceBatch, SourceError>) -> bool,
        only: Option<&HashSet<String>>,
    ) {
        let run = |sink: &mut dyn FnMut(Result<SourceBatch, SourceError>) -> bool| -> Result<(), SourceError> {
            let file = self.file(name)?;
            let mut dim: Option<usize> = None;
            let mut batch = SourceBatch::default();
            for (i, line) in Self::lines(&file)?.lines().enumerate() {
                let line = line.map_err(|source| SourceError::Io { path: file.display().to_string(), source })?;
                if line.trim().is_empty() {
                    continue;
                }
                let r = Self::parse(&file, i + 1, name, &line)?;
                match dim {
                    None => {
                        dim = Some(r.embedding.len());
                        batch.dim = r.embedding.len();
                    }
                    Some(d) if d != r.embedding.len() => {
                        return Err(bad(&file, i + 1, name, format!("`{}` has a vector of dimension {}, earlier lines have {d}", r.id, r.embedding.len())));
                    }
                    _ => {}
                }
                if only.is_some_and(|ids| !ids.contains(&r.id)) {
                    continue;
                }
                batch.push(r);
                if batch.len() >= batch_size {
                    let d = batch.dim;
                    let full = std::mem::replace(&mut batch, SourceBatch::with_capacity(batch_size, d));
                    if !sink(Ok(full)) {
                        return Ok(());
                    }
                }
            }
            if !batch.is_empty() {
                sink(Ok(batch));
            }
            Ok(())
        };
        if let Err(e) = run(sink) {
            sink(Err(e));
        }
    }

    fn info_sync(&self, name: &str, id: &str) -> Result<CollectionInfo, SourceError> {
        let mut count = 0u64;
        let mut dimension = None;
        let mut failure = None;
        self.read_sync(
            name,
            4096,
            &mut |b| match b {
                Ok(b) => {
                    count += b.len() as u64;
                    dimension = dimension.or(Some(b.dim as u32));
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
            None,
        );
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(CollectionInfo {
            name: name.into(),
            id: id.into(),
            count,
            dimension,
            space: self.space,
            metadata: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl Source for JsonlDir {
    fn describe(&self) -> String {
        format!("JSON Lines in `{}`", self.path.display())
    }

    async fn list_collections(&self) -> Result<Vec<CollectionInfo>, SourceError> {
        let me = self.clone();
        super::run_blocking(move || {
            me.files()?
                .into_iter()
                .map(|(n, p)| {
                    me.info_sync(&n, &p.file_name().unwrap_or_default().to_string_lossy())
                })
                .collect()
        })
        .await
    }

    /// Counts only the named file: listing would read every file in full.
    async fn collection(&self, name: &str) -> Result<CollectionInfo, SourceError> {
        let me = self.clone();
        let name = name.to_string();
        super::run_blocking(move || {
            let file = me.file(&name)?;
            me.info_sync(
                &name,
                &file.file_name().unwrap_or_default().to_string_lossy(),
            )
        })
        .await
    }

    fn read(
        &self,
        collection: &str,
        batch_size: usize,
    ) -> BoxStream<'static, Result<SourceBatch, SourceError>> {
        let me = self.clone();
        let name = collection.to_string();
        super::blocking_stream(move |sink| me.read_sync(&name, batch_size.max(1), sink, None))
    }

    async fn get(&self, collection: &str, ids: &[String]) -> Result<SourceBatch, SourceError> {
        let me = self.clone();
        let name = collection.to_string();
        let wanted: HashSet<String> = ids.iter().cloned().collect();
        super::run_blocking(move || {
            let mut all = SourceBatch::default();
            let mut failure = None;
            me.read_sync(
                &name,
                4096,
                &mut |b| match b {
                    Ok(b) => {
                        all.dim = b.dim;
                        for i in 0..b.len() {
                            all.push(b.record(i));
                        }
                        true
                    }
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                },
                Some(&wanted),
            );
            match failure {
                Some(e) => Err(e),
                None => Ok(all),
            }
        })
        .await
    }
}
