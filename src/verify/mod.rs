//! Verification: is everything that should be in the table there, exactly once?
//!
//! This is the `validate` step of apply (and, later, `lanceferry verify`).
//! It streams the source and the table and compares them by id: the count
//! rule, the id set (listing the first missing and extra ids), and
//! duplicates. It holds ids only, never vectors. Value-by-value checks
//! (content, metadata, cosine of vectors) are the next part of this module.

use std::collections::HashSet;

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

/// Compares a table with its source collection by count and id set.
pub async fn verify_ids(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    skipped_ids: &HashSet<String>,
    appended_to: Option<u64>,
) -> Result<Verification, VerifyError> {
    // `appended_to`: for `mode: append`, the rows the table had before the
    // apply. Those rows are not the source's business, so the count check
    // adds them and only missing source ids are breaches.
    let id_col = c
        .id_column()
        .expect("a checked plan has an id column")
        .name
        .clone();
    let mut expected: HashSet<String> = HashSet::new();
    let mut source_count = 0u64;
    let mut stream = source.read(&c.source, c.batch_size as usize);
    while let Some(batch) = stream.try_next().await? {
        source_count += batch.len() as u64;
        for id in batch.ids {
            if !skipped_ids.contains(&id) {
                expected.insert(id);
            }
        }
    }
    let expected_skipped = source_count - expected.len() as u64;

    let table = target.open(&c.table).await?;
    let mut target_count = 0u64;
    let mut duplicates = 0u64;
    let mut extra = Vec::new();
    let mut extra_count = 0u64;
    let mut seen: HashSet<String> = HashSet::new();
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
                if !seen.insert(id.to_string()) {
                    duplicates += 1;
                    continue;
                }
                if !expected.remove(id) {
                    extra_count += 1;
                    if extra.len() < EXAMPLES {
                        extra.push(id.to_string());
                    }
                }
            }
        }
    }
    let missing = expected.len() as u64;
    let mut missing_examples: Vec<String> = expected.into_iter().collect();
    missing_examples.sort();
    missing_examples.truncate(EXAMPLES);

    let mut breaches = Vec::new();
    let base = appended_to.unwrap_or(0);
    let want = source_count - expected_skipped + base;
    match c.validate.count {
        CountRule::Exact if target_count != want => breaches.push(format!(
            "count: table has {target_count} rows, source has {want} records to copy"
        )),
        CountRule::Tolerance(t) if target_count.abs_diff(want) > t => breaches.push(format!(
            "count: table has {target_count} rows, source has {want} (tolerance {t})"
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
        if extra_count > 0 && appended_to.is_none() {
            breaches.push(format!(
                "ids: {extra_count} rows not in the source, e.g. {}",
                quote(&extra)
            ));
        }
        if duplicates > 0 && appended_to.is_none() {
            breaches.push(format!("ids: {duplicates} duplicate rows"));
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
