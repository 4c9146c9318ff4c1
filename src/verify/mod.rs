//! Verification: is everything that should be in the table there, exactly once?
//!
//! This is the `validate` step of apply (and, later, `lanceferry verify`).
//! It streams the source and the table and compares them by id: the count
//! rule, the id set (listing the first missing and extra ids), and
//! duplicates, holding ids only, never vectors. [`values`] then compares
//! values (content, metadata, cosine of vectors) in bounded memory.

pub mod values;

use std::collections::{HashMap, HashSet};

use arrow_array::Array;
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use serde::Serialize;

use crate::plan::{Collection, CountRule};
use crate::source::{Source, SourceError};
use crate::target::{LanceTarget, TargetError};

/// How many example ids a report lists.
const EXAMPLES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(
        "reading table `{table}`: {source}\nhint: retry; if it persists the table may be damaged"
    )]
    Read {
        table: String,
        #[source]
        source: lancedb::Error,
    },
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

/// What the id check knows of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A source id the table has not shown yet.
    Expected,
    /// A source id found in the table.
    InTable,
    /// An id the table holds and the source does not.
    Other,
}

/// Rows a table may hold besides the source's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Others {
    /// None (`create`, `replace`): the table is exactly the source.
    None,
    /// `append`: the rows it had before the apply, however many.
    Before(u64),
    /// `upsert`: any rows with other ids (the merge keeps them); each
    /// source id must be there exactly once.
    Any,
}

impl Others {
    /// How a collection's mode scopes its table; `before` is the row count
    /// the apply's snapshot found.
    pub fn for_mode(mode: crate::plan::Mode, before: u64) -> Self {
        match mode {
            crate::plan::Mode::Append => Others::Before(before),
            crate::plan::Mode::Upsert => Others::Any,
            crate::plan::Mode::Create | crate::plan::Mode::Replace => Others::None,
        }
    }
}

/// Compares a table with its source collection by count and id set.
pub async fn verify_ids(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    skipped_ids: &HashSet<String>,
    others: Others,
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
    let mut stream = source.read_ids(&c.source, c.batch_size as usize);
    while let Some(batch) = stream.try_next().await? {
        source_count += batch.len() as u64;
        for id in batch {
            if !skipped_ids.contains(&id) {
                known.insert(id, Seen::Expected);
            }
        }
    }
    let expected_skipped = source_count - known.len() as u64;

    let table = target.open(&c.table).await?;
    let mut target_count = 0u64;
    // Rows whose id is a source id seen before, and rows of other ids
    // (first sightings and repeats).
    let mut dup_source = 0u64;
    let mut other_rows = 0u64;
    let mut dup_other = 0u64;
    let mut extra = Vec::new();
    let mut extra_count = 0u64;
    if let Some(t) = table {
        let mut batches = t
            .query()
            .select(Select::columns(&[id_col.as_str()]))
            .execute()
            .await
            .map_err(|source| VerifyError::Read {
                table: c.table.clone(),
                source,
            })?;
        while let Some(b) = batches
            .try_next()
            .await
            .map_err(|source| VerifyError::Read {
                table: c.table.clone(),
                source,
            })?
        {
            let ids = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .expect("the id column is a string column");
            for i in 0..ids.len() {
                target_count += 1;
                let id = ids.value(i);
                match known.get_mut(id) {
                    Some(seen @ &mut Seen::Expected) => *seen = Seen::InTable,
                    Some(Seen::InTable) => dup_source += 1,
                    Some(Seen::Other) => {
                        other_rows += 1;
                        dup_other += 1;
                    }
                    None => {
                        known.insert(id.to_string(), Seen::Other);
                        other_rows += 1;
                        extra_count += 1;
                        if extra.len() < EXAMPLES {
                            extra.push(id.to_string());
                        }
                    }
                }
            }
        }
    }
    let duplicates = dup_source + dup_other;
    let mut missing_examples: Vec<String> = known
        .into_iter()
        .filter(|(_, seen)| *seen == Seen::Expected)
        .map(|(id, _)| id)
        .collect();
    let missing = missing_examples.len() as u64;
    missing_examples.sort();
    missing_examples.truncate(EXAMPLES);

    let mut breaches = Vec::new();
    let want = source_count - expected_skipped;
    // The rows the count rule is about, and what they are compared with.
    let (rows, want, what) = match others {
        Others::None => (target_count, want, "rows"),
        Others::Before(n) => (
            target_count,
            want + n,
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
}

impl CollectionVerification {
    pub fn ok(&self) -> bool {
        self.ids.ok() && self.values.breaches.is_empty()
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
    let ids = verify_ids(source, target, c, skipped, others).await?;
    let dim = match c.vector_column().dim {
        Some(d) => d as usize,
        None => source.collection(&c.source).await?.dimension.unwrap_or(0) as usize,
    };
    let expected = ids.source_count - ids.expected_skipped;
    let values = values::verify_values(source, target, c, dim, expected, skipped).await?;
    Ok(CollectionVerification {
        collection: c.source.clone(),
        ids,
        values,
    })
}

/// `lanceferry verify`: every collection of a plan against its table.
/// `before` gives, per table, the rows it had before the last apply.
pub async fn verify_plan(
    plan: &crate::plan::Plan,
    before: &HashMap<String, u64>,
) -> Result<Vec<CollectionVerification>, VerifyError> {
    let source = crate::source::open(&plan.source)?;
    let target = LanceTarget::connect(&plan.target).await?;
    let mut out = Vec::new();
    for c in &plan.collections {
        // Records the plan itself leaves out (`on_error: skip`) are not expected.
        let info = source.collection(&c.source).await?;
        let dim = c.vector_column().dim.or(info.dimension).unwrap_or(0) as usize;
        let transformer = crate::transform::Transformer::new(c, dim);
        let mut skipped = HashSet::new();
        // Only a plan that skips records needs the source transformed to
        // know which; otherwise that would be one more full read.
        if c.columns
            .iter()
            .any(|col| col.on_error == crate::plan::OnError::Skip)
        {
            let mut stream = source.read(&c.source, c.batch_size as usize);
            while let Some(b) = stream.try_next().await? {
                if let Ok(t) = transformer.transform(b) {
                    skipped.extend(t.skipped.into_iter().map(|s| s.id));
                }
            }
        }
        let others = Others::for_mode(c.mode, before.get(&c.table).copied().unwrap_or(0));
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
        for b in r.ids.breaches.iter().chain(&r.values.breaches) {
            s.push_str(&format!("  breach: {b}\n"));
        }
        for e in &r.values.examples {
            s.push_str(&format!("  e.g. {e}\n"));
        }
    }
    s
}
