//! Verification: is everything that should be in the table there, exactly once?
//!
//! This is the `validate` step of apply (and, later, `lanceferry verify`).
//! It streams the source and the table and compares them by id: the count
//! rule, the id set (listing the first missing and extra ids), and
//! duplicates, holding ids only, never vectors. [`values`] then compares
//! values (content, metadata, cosine of vectors) in bounded memory, and
//! [`search`] (`validate.search`) measures LanceDB's search recall.

pub mod search;
pub mod values;

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use serde::Serialize;

use crate::plan::{Collection, CountRule};
use crate::source::{Source, SourceError};
use crate::target::{LanceTarget, TableVersion, TargetError};

/// How many example ids a report lists.
const EXAMPLES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Boxed: a target error is large, and this type is every check's error.
    #[error(transparent)]
    Target(Box<TargetError>),
    #[error(
        "table `{table}` has column `{column}` of type `{found}`, where this plan writes `{expected}`\nhint: the table was not made by this plan (or its mapping changed): choose another `table:`, or `mode: replace` to rewrite it"
    )]
    Schema {
        table: String,
        column: String,
        expected: String,
        found: String,
    },
    #[error(
        "reading table `{table}`: {source}\nhint: retry; if it persists the table may be damaged"
    )]
    Read {
        table: String,
        #[source]
        source: lancedb::Error,
    },
}

impl From<TargetError> for VerifyError {
    fn from(e: TargetError) -> Self {
        VerifyError::Target(Box::new(e))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub table: String,
    pub source_count: u64,
    pub target_count: u64,
    /// Source records the plan leaves out (`on_error: skip`).
    pub expected_skipped: u64,
    pub missing: u64,
    pub extra: u64,
    pub duplicates: u64,
    pub missing_examples: Vec<String>,
    pub extra_examples: Vec<String>,
    pub breaches: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.breaches.is_empty()
    }
}

/// What the id check knows of an id: whether the source has it (to copy),
/// and how many rows hold it in the table, before the apply (`append`) and
/// now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    source: bool,
    before: u32,
    now: u32,
}

/// Rows a table may hold besides the source's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Others {
    /// None (`create`, `replace`): the table is exactly the source.
    None,
    /// `append`: the rows of the table at this version (before the apply),
    /// whatever they are. The rows the apply added hold every source id
    /// exactly once: an id's rows now minus its rows then is 1.
    Before(TableVersion),
    /// `upsert`: any rows with other ids (the merge keeps them); each
    /// source id must be there exactly once.
    Any,
}

impl Others {
    /// How a collection's mode scopes its table; `before` is the table the
    /// apply's snapshot found.
    pub fn for_mode(mode: crate::plan::Mode, before: Option<TableVersion>) -> Self {
        match (mode, before) {
            (crate::plan::Mode::Append, Some(b)) if b.rows > 0 => Others::Before(b),
            (crate::plan::Mode::Append, _) => Others::None,
            (crate::plan::Mode::Upsert, _) => Others::Any,
            // A synced table is exactly the source.
            (crate::plan::Mode::Sync, _) => Others::None,
            (crate::plan::Mode::Create | crate::plan::Mode::Replace, _) => Others::None,
        }
    }
}

/// Streams the id column of `table`, calling `each` with every id.
async fn scan_ids(
    target: &LanceTarget,
    table: &lancedb::Table,
    name: &str,
    id_col: &str,
    mut each: impl FnMut(&str),
) -> Result<(), VerifyError> {
    let read_err = |source| VerifyError::Read {
        table: name.to_string(),
        source,
    };
    let mut batches = table
        .query()
        .select(Select::columns(&[id_col]))
        .execute()
        .await
        .map_err(read_err)?;
    while let Some(b) = batches.try_next().await.map_err(read_err)? {
        let col = b.column(0);
        let ids = crate::target::string_values(col.as_ref())
            .ok_or_else(|| target.not_string(name, id_col, col.data_type()))?;
        for id in ids {
            each(id.unwrap_or(""));
        }
    }
    Ok(())
}

/// Compares a table with its source collection by count and id set.
pub async fn verify_ids(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    skipped_ids: &HashSet<String>,
    others: Others,
) -> Result<Verification, VerifyError> {
    verify_ids_with(source, target, c, skipped_ids, others, None).await
}

/// [`verify_ids`], with the source's ids given (`None`: read them).
async fn verify_ids_with(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    skipped_ids: &HashSet<String>,
    others: Others,
    source_ids: Option<&[String]>,
) -> Result<Verification, VerifyError> {
    let id_col = c
        .id_column()
        .expect("a checked plan has an id column")
        .name
        .clone();
    // One map for both sides (half the memory of a set per side): every
    // source id to copy, then every id the table holds.
    let mut known: HashMap<String, Seen> = HashMap::new();
    let mut source_count = 0u64;
    let mut add = |batch: Vec<String>| {
        source_count += batch.len() as u64;
        for id in batch {
            if !skipped_ids.contains(&id) {
                known.entry(id).or_default().source = true;
            }
        }
    };
    match source_ids {
        Some(ids) => add(ids.to_vec()),
        None => {
            let mut stream = source.read_ids(&c.source, c.batch_size as usize);
            while let Some(batch) = stream.try_next().await? {
                add(batch);
            }
        }
    }
    let expected_skipped = source_count - known.len() as u64;

    // `append`: how often each source id was in the table before.
    if let Others::Before(b) = others
        && let Some(t) = target.open_at(&c.table, b.version).await?
    {
        scan_ids(target, &t, &c.table, &id_col, |id| {
            if let Some(seen) = known.get_mut(id) {
                seen.before += 1;
            }
        })
        .await?;
    }

    let mut target_count = 0u64;
    let mut extra = Vec::new();
    if let Some(t) = target.open(&c.table).await? {
        scan_ids(target, &t, &c.table, &id_col, |id| {
            target_count += 1;
            match known.get_mut(id) {
                Some(seen) => seen.now += 1,
                None => {
                    if extra.len() < EXAMPLES {
                        extra.push(id.to_string());
                    }
                    known.insert(
                        id.to_string(),
                        Seen {
                            now: 1,
                            ..Default::default()
                        },
                    );
                }
            }
        })
        .await?;
    }
    // Per source id, the rows this check is about: all of them, or (append)
    // those beyond the ones it had before.
    let added = |s: &Seen| match others {
        Others::Before(_) => s.now.saturating_sub(s.before),
        _ => s.now,
    };
    let mut missing_examples = Vec::new();
    let (mut missing, mut dup_source, mut other_rows, mut extra_count, mut dup_other) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (id, s) in &known {
        if s.source {
            match added(s) {
                0 => {
                    missing += 1;
                    missing_examples.push(id.clone());
                }
                n => dup_source += u64::from(n - 1),
            }
        } else {
            other_rows += u64::from(s.now);
            extra_count += 1;
            dup_other += u64::from(s.now.saturating_sub(1));
        }
    }
    let duplicates = dup_source + dup_other;
    missing_examples.sort();
    missing_examples.truncate(EXAMPLES);

    let mut breaches = Vec::new();
    let want = source_count - expected_skipped;
    // The rows the count rule is about, and what they are compared with.
    let (rows, want, what) = match others {
        Others::None => (target_count, want, "rows"),
        Others::Before(b) => (
            target_count,
            want + b.rows,
            "rows (with those from before the apply)",
        ),
        Others::Any => (target_count - other_rows, want, "rows with source ids"),
    };
    match c.validate.count {
        CountRule::Exact if rows != want => breaches.push(format!(
            "count: table has {rows} {what}, source has {want} records to copy"
        )),
        CountRule::Tolerance(t) if rows.abs_diff(want) > t => breaches.push(format!(
            "count: table has {rows} {what}, source has {want} (tolerance {t})"
        )),
        _ => {}
    }
    if c.validate.ids {
        if missing > 0 {
            breaches.push(format!(
                "ids: {missing} source records missing, e.g. {}",
                quote(&missing_examples)
            ));
        }
        if extra_count > 0 && others == Others::None {
            breaches.push(format!(
                "ids: {extra_count} rows not in the source, e.g. {}",
                quote(&extra)
            ));
        }
        match others {
            Others::None if duplicates > 0 => {
                breaches.push(format!("ids: {duplicates} duplicate rows"))
            }
            Others::Any if dup_source > 0 => {
                breaches.push(format!("ids: {dup_source} duplicate rows of source ids"))
            }
            Others::Before(_) if dup_source > 0 => breaches.push(format!(
                "ids: {dup_source} source records were added more than once"
            )),
            _ => {}
        }
    }
    Ok(Verification {
        table: c.table.clone(),
        source_count,
        target_count,
        expected_skipped,
        missing,
        extra: extra_count,
        duplicates,
        missing_examples,
        extra_examples: extra,
        breaches,
    })
}

fn quote(ids: &[String]) -> String {
    ids.iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The result of verifying one collection.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionVerification {
    pub collection: String,
    pub ids: Verification,
    pub values: values::ValueCheck,
    /// `validate.search`, when the plan asks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<search::SearchReport>,
}

impl CollectionVerification {
    pub fn ok(&self) -> bool {
        self.ids.ok()
            && self.values.breaches.is_empty()
            && self.search.as_ref().is_none_or(|s| s.ok())
    }
}

/// One collection against its table: the id check, then the values
/// (`validate.sample` records, or all). Apply's validate step and
/// `lanceferry verify` both come here. `skipped`: records the plan leaves
/// out; `others`: what else the table may hold, by the collection's mode.
pub async fn verify_collection(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    skipped: &HashSet<String>,
    others: Others,
) -> Result<CollectionVerification, VerifyError> {
    verify_collection_with(source, target, c, skipped, others, None).await
}

/// [`verify_collection`], with the source's ids already read (by apply's
/// copy, which read every record): the id-set check does not read them
/// from the source again.
pub async fn verify_collection_with(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    skipped: &HashSet<String>,
    others: Others,
    source_ids: Option<Vec<String>>,
) -> Result<CollectionVerification, VerifyError> {
    let dim = match c.vector_column().dim {
        Some(d) => d as usize,
        None => source.collection(&c.source).await?.dimension.unwrap_or(0) as usize,
    };
    check_schema(target, c, dim).await?;
    let ids = verify_ids_with(source, target, c, skipped, others, source_ids.as_deref()).await?;
    let expected = ids.source_count - ids.expected_skipped;
    let values = values::verify_values(
        source,
        target,
        c,
        dim,
        expected,
        skipped,
        source_ids.as_deref(),
    )
    .await?;
    // Last: the table's vectors, used as queries, are then known to be
    // the source's.
    let search = if ids.target_count > 0 {
        search::for_collection(source, target, c).await?
    } else {
        None
    };
    Ok(CollectionVerification {
        collection: c.source.clone(),
        ids,
        values,
        search,
    })
}

/// Refuses a table whose columns are not of the types the plan writes (a
/// table made elsewhere), so the comparison never meets a column it cannot
/// read. Columns the table lacks are left to the comparison to report.
async fn check_schema(target: &LanceTarget, c: &Collection, dim: usize) -> Result<(), VerifyError> {
    let Some(t) = target.open(&c.table).await? else {
        return Ok(());
    };
    let schema = t.schema().await.map_err(|source| VerifyError::Read {
        table: c.table.clone(),
        source,
    })?;
    let planned = crate::transform::Transformer::new(c, dim).schema();
    for want in planned.fields() {
        let Ok(have) = schema.field_with_name(want.name()) else {
            continue;
        };
        let same = match (want.data_type(), have.data_type()) {
            // The dimension may differ when the plan leaves it to the source.
            (
                arrow_schema::DataType::FixedSizeList(a, _),
                arrow_schema::DataType::FixedSizeList(b, _),
            ) => a.data_type() == b.data_type(),
            (arrow_schema::DataType::Utf8, arrow_schema::DataType::LargeUtf8) => true,
            (a, b) => a == b,
        };
        if !same {
            return Err(VerifyError::Schema {
                table: c.table.clone(),
                column: want.name().clone(),
                expected: want.data_type().to_string(),
                found: have.data_type().to_string(),
            });
        }
    }
    Ok(())
}

/// The source records the plan itself leaves out (`on_error: skip`): they
/// are not expected in the table. Only a plan that skips records needs the
/// source transformed to know which; otherwise that would be one more full
/// read.
pub async fn skipped_ids(
    source: &dyn Source,
    c: &Collection,
) -> Result<HashSet<String>, VerifyError> {
    let mut skipped = HashSet::new();
    if !c
        .columns
        .iter()
        .any(|col| col.on_error == crate::plan::OnError::Skip)
    {
        return Ok(skipped);
    }
    let info = source.collection(&c.source).await?;
    let dim = c.vector_column().dim.or(info.dimension).unwrap_or(0) as usize;
    let transformer = crate::transform::Transformer::new(c, dim);
    let mut stream = source.read(&c.source, c.batch_size as usize);
    while let Some(b) = stream.try_next().await? {
        if let Ok(t) = transformer.transform(b) {
            skipped.extend(t.skipped.into_iter().map(|s| s.id));
        }
    }
    Ok(skipped)
}

/// How many of the source's ids table `c.table` held at `version` (the
/// guard of a fresh `append`, and `plan`'s DS102). The table's id column is
/// scanned into 64-bit hashes (8 bytes a row), then the source's ids are
/// streamed against them; a hash match is confirmed by asking the table for
/// those exact ids, so a collision never refuses an apply.
pub async fn source_ids_in_table(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    version: u64,
) -> Result<u64, VerifyError> {
    let key = c
        .id_column()
        .expect("a checked plan has an id column")
        .name
        .clone();
    let in_table = target.id_hashes(&c.table, &key, version).await?;
    let mut candidates: Vec<String> = Vec::new();
    let mut ids = source.read_ids(&c.source, c.batch_size as usize);
    while let Some(batch) = ids.try_next().await? {
        for id in batch {
            if in_table.contains(&crate::target::id_hash(&id)) {
                candidates.push(id);
            }
        }
    }
    if candidates.is_empty() {
        return Ok(0);
    }
    Ok(target
        .count_ids(&c.table, &key, &candidates, version)
        .await?)
}

/// `lanceferry verify`: every collection of a plan against its table.
/// `before` gives, per table, the table before the last apply.
pub async fn verify_plan(
    plan: &crate::plan::Plan,
    before: &HashMap<String, TableVersion>,
) -> Result<Vec<CollectionVerification>, VerifyError> {
    let source = crate::source::open(&plan.source)?;
    let target = LanceTarget::connect(&plan.target).await?;
    let mut out = Vec::new();
    for c in &plan.collections {
        let skipped = skipped_ids(source.as_ref(), c).await?;
        let others = Others::for_mode(c.mode, before.get(&c.table).copied());
        out.push(verify_collection(source.as_ref(), &target, c, &skipped, others).await?);
    }
    Ok(out)
}

/// The text report of `lanceferry verify`.
pub fn render(results: &[CollectionVerification]) -> String {
    let mut s = String::new();
    for r in results {
        let status = if r.ok() { "ok" } else { "FAILED" };
        s.push_str(&format!(
            "{status}: `{}` -> `{}`: {} source records, {} rows; {} compared",
            r.collection, r.ids.table, r.ids.source_count, r.ids.target_count, r.values.compared
        ));
        if let Some(c) = &r.values.cosine {
            s.push_str(&format!(
                "; cosine min {:.6} mean {:.6} p95 {:.6} max {:.6}",
                c.min, c.mean, c.p95_low, c.max
            ));
        }
        s.push('\n');
        if let Some(search) = &r.search {
            s.push_str(&format!("  {}\n", search.render()));
        }
        let search_breach = r.search.as_ref().and_then(|s| s.breach.as_ref());
        for b in r
            .ids
            .breaches
            .iter()
            .chain(&r.values.breaches)
            .chain(search_breach)
        {
            s.push_str(&format!("  breach: {b}\n"));
        }
        for e in &r.values.examples {
            s.push_str(&format!("  e.g. {e}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    //! The id check against a real local LanceDB table and a JSON Lines
    //! source in a temporary directory: no Python, no server.
    use super::*;
    use crate::plan::{Vars, load_str};
    use crate::source::jsonl::JsonlDir;
    use crate::target::Commit;
    use futures::StreamExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        source: JsonlDir,
        target: LanceTarget,
        plan: crate::plan::Plan,
        src: std::path::PathBuf,
    }

    fn write(dir: &std::path::Path, name: &str, ids: &[&str]) {
        let mut text = String::new();
        for (i, id) in ids.iter().enumerate() {
            text.push_str(
                &serde_json::json!({"doc_id": id, "content": "c", "metadata": {}, "embedding": [i as f32 + 1.0, 1.0]})
                    .to_string(),
            );
            text.push('\n');
        }
        std::fs::write(dir.join(format!("{name}.jsonl")), text).unwrap();
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let yaml = format!(
            "version: 1\nname: t\nsource: {{ jsonl: {{ path: {} }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\ncollections:\n  - source: docs\n    mode: append\n",
            src.display(),
            dir.path().join("db").display()
        );
        let plan = load_str(&yaml, std::path::Path::new("t.yaml"), &Vars::empty()).unwrap();
        let target = LanceTarget::connect(&plan.target).await.unwrap();
        Fixture {
            source: JsonlDir::open(&src, crate::plan::DistanceSpace::L2).unwrap(),
            _dir: dir,
            target,
            plan,
            src,
        }
    }

    impl Fixture {
        /// Writes `ids` into the table `docs` (through the plan's mapping).
        async fn add(&self, ids: &[&str], how: Commit) -> TableVersion {
            write(&self.src, "scratch", ids);
            let scratch = JsonlDir::open(&self.src, crate::plan::DistanceSpace::L2).unwrap();
            let c = &self.plan.collections[0];
            let t = crate::transform::Transformer::new(c, 2);
            let batches: Vec<_> = scratch
                .read("scratch", 100)
                .map(|b| t.transform(b.unwrap()).unwrap().batch)
                .collect()
                .await;
            std::fs::remove_file(self.src.join("scratch.jsonl")).unwrap();
            self.target
                .commit(
                    "docs",
                    t.schema(),
                    futures::stream::iter(batches).boxed(),
                    how,
                )
                .await
                .unwrap()
        }

        async fn check(&self, others: Others) -> Verification {
            let c = &self.plan.collections[0];
            verify_ids(&self.source, &self.target, c, &HashSet::new(), others)
                .await
                .unwrap()
        }
    }

    #[tokio::test]
    async fn an_append_is_checked_against_the_table_at_its_snapshot() {
        let f = fixture().await;
        write(&f.src, "docs", &["a", "b", "c"]);
        // The table's own rows, one of which shares an id with the source
        // (an earlier apply with --allow-duplicates, say).
        let before = f.add(&["old-1", "old-2", "b"], Commit::Create).await;
        f.add(&["a", "b", "c"], Commit::Append).await;
        let v = f.check(Others::Before(before)).await;
        assert!(v.ok(), "{:?}", v.breaches);

        // One more copy of `c`: the count is one over, and `c` was added twice.
        f.add(&["c"], Commit::Append).await;
        let v = f.check(Others::Before(before)).await;
        assert!(
            v.breaches
                .iter()
                .any(|b| b.contains("1 source records were added more than once")),
            "{:?}",
            v.breaches
        );
        assert!(
            v.breaches.iter().any(|b| b.starts_with("count:")),
            "{:?}",
            v.breaches
        );
    }

    #[tokio::test]
    async fn a_doubled_record_hidden_behind_a_lost_one_is_still_a_breach() {
        let f = fixture().await;
        write(&f.src, "docs", &["a", "b", "c"]);
        let before = f.add(&["old-1"], Commit::Create).await;
        // `a` twice and `c` never: the total (1 + 3) adds up.
        f.add(&["a", "a", "b"], Commit::Append).await;
        let v = f.check(Others::Before(before)).await;
        assert_eq!(v.target_count, 4);
        assert_eq!(v.missing, 1);
        assert!(
            !v.breaches.iter().any(|b| b.starts_with("count:")),
            "{:?}",
            v.breaches
        );
        assert!(
            v.breaches
                .iter()
                .any(|b| b.contains("added more than once")),
            "{:?}",
            v.breaches
        );
    }

    #[tokio::test]
    async fn other_modes_see_extra_and_duplicate_rows() {
        let f = fixture().await;
        write(&f.src, "docs", &["a", "b"]);
        f.add(&["a", "b", "b", "zzz"], Commit::Create).await;
        let v = f.check(Others::None).await;
        assert_eq!((v.extra, v.duplicates), (1, 1), "{:?}", v.breaches);
        let v = f.check(Others::Any).await;
        assert!(
            v.breaches
                .iter()
                .any(|b| b.contains("1 duplicate rows of source ids")),
            "{:?}",
            v.breaches
        );
        assert!(!v.breaches.iter().any(|b| b.contains("not in the source")));
    }
}
