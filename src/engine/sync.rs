//! `mode: sync`: write only what changed since the last apply.
//!
//! The first apply of a sync collection is a plain copy (the table does not
//! exist); its digests are then taken from the table. Every later apply
//! streams the source through the plan's mapping, digests each row
//! ([`crate::digest`]) and compares with the digests recorded for the table:
//! new ids and changed rows are merged on the id column (`merge_insert`) in
//! commits of `checkpoint_rows`, ids no longer in the source are deleted,
//! and the new digests are saved with the table version they describe.
//!
//! Killed at any point, a sync is simply run again: merging and deleting by
//! id are idempotent, and the old digests are replaced only at the end. If
//! the recorded digests do not describe the table's current version (a kill
//! after a commit, or a write outside lanceferry), they are re-derived from
//! the table itself before anything is decided, and that is said.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::{StreamExt, TryStreamExt};

use super::{Ctx, StepError};
use crate::digest::{self, Changes, Digests};
use crate::plan::Collection;
use crate::source::Source;
use crate::state::StepKey;
use crate::target::{LanceTarget, TableVersion};
use crate::transform::Transformer;

/// Rows buffered for one merge at most, by memory (merge_insert reads a
/// synchronous reader, so its input is held).
const MERGE_BUFFER_BYTES: usize = 128 << 20;

/// Batches digested at once when validation reads a whole table.
const DIGEST_IN_FLIGHT: usize = 3;

fn id_index(c: &Collection) -> usize {
    c.columns
        .iter()
        .position(|col| col.from == crate::plan::Field::Id)
        .expect("a checked plan has an id column")
}

/// The digests of a table's rows, read from the table itself.
pub async fn derive(
    target: &LanceTarget,
    c: &Collection,
    version: u64,
) -> Result<Digests, StepError> {
    let names: Vec<&str> = c.columns.iter().map(|col| col.name.as_str()).collect();
    let id = id_index(c);
    let mut pairs = Vec::new();
    target
        .for_each_batch(&c.table, Some(version), &names, |b| {
            pairs.extend(digest::row_digests(b, id));
            Ok(())
        })
        .await?;
    // The table's own digests: they describe it by construction.
    Ok(Digests {
        checked: true,
        ..Digests::new(version, pairs)
    })
}

/// Moves the digests the copy step saved at version `from` to version `to`
/// (what the index steps left: they add commits, never change a row), so
/// the next sync and validation find digests of the table as it is.
pub fn promote(
    state_dir: &std::path::Path,
    table: &str,
    from: u64,
    to: u64,
) -> Result<(), StepError> {
    let path = digest::path(state_dir, table);
    if let Some(mut d) = digest::load(&path)
        && d.version == from
        && from != to
    {
        d.version = to;
        digest::save(&path, &d)?;
    }
    Ok(())
}

/// What a sync started from, when it is known to be checked: the table
/// at `version` held exactly the rows `old` describes (a validation of
/// every row passed there, or `old` was derived from the table itself).
/// Validation after the sync then reads only the rows written since.
#[derive(Debug, Clone)]
pub struct SyncBase {
    pub version: u64,
    pub old: Digests,
}

/// How validation by digests went: the breaches (none: it passed), what
/// was read, for the report, and the digests the rows were checked
/// against.
#[derive(Debug)]
pub struct DigestCheck {
    pub breaches: Vec<String>,
    pub how: String,
    pub digests: Digests,
}

/// Validation after a sync, without reading the source again: the table's
/// rows compared with the source's digests the sync saved (every value,
/// bit for bit, where the ordinary check compares vectors by cosine).
///
/// With a [`SyncBase`], only the rows in Lance fragments written since the
/// base are digested; the other rows sit in data files the base already
/// had (Lance never rewrites a data file), which were checked then, so
/// each needs only its id: its digest at the base must be its source
/// record's digest now. Every id is read either way, for the count, the
/// id set and duplicates. Without a base (or if its version is gone),
/// every row is digested. `None` when the digests cannot serve (not from
/// the source, or not of the table's current version).
pub async fn validate_by_digests(
    target: &LanceTarget,
    c: &Collection,
    state_dir: &std::path::Path,
    now: TableVersion,
    base: Option<&SyncBase>,
) -> Result<Option<DigestCheck>, StepError> {
    let Some(saved) = digest::load(&digest::path(state_dir, &c.table)) else {
        return Ok(None);
    };
    if !saved.from_source || saved.version != now.version {
        return Ok(None);
    }
    let since = match base.filter(|b| b.version < now.version) {
        Some(b) => read_since(target, c, &saved, b, now).await?,
        None => None,
    };
    let (mut seen, differ, how) = match since {
        Some(read) => read,
        None => {
            let (seen, differ) = read_all(target, c, &saved, now).await?;
            (seen, differ, "digests: all values, bit for bit".to_string())
        }
    };
    let rows = seen.len() as u64;
    seen.sort_unstable();
    seen.dedup();
    let duplicates = rows - seen.len() as u64;
    let mut breaches = Vec::new();
    if rows != saved.pairs.len() as u64 {
        breaches.push(format!(
            "count: table has {rows} rows, source has {} records to copy",
            saved.pairs.len()
        ));
    }
    if duplicates > 0 {
        breaches.push(format!("ids: {duplicates} duplicate rows"));
    }
    let extra = seen.iter().filter(|h| saved.get(**h).is_none()).count();
    if extra > 0 {
        breaches.push(format!("ids: {extra} rows not in the source"));
    }
    let missing = saved
        .pairs
        .iter()
        .filter(|(h, _)| seen.binary_search(h).is_err())
        .count();
    if missing > 0 {
        breaches.push(format!("ids: {missing} source records missing"));
    }
    // (Rows not in the source are counted as ids above, not as values.)
    if differ > 0 {
        breaches.push(format!(
            "values: {differ} rows differ from their source record"
        ));
    }
    Ok(Some(DigestCheck {
        breaches,
        how,
        digests: saved,
    }))
}

/// The rows of `now` read against `base` ([`LanceTarget::scan_since`]):
/// the id hash of every row, the rows whose values differ from their
/// source record's saved digest, and what was read. `None` when the base
/// version is gone.
async fn read_since(
    target: &LanceTarget,
    c: &Collection,
    saved: &Digests,
    base: &SyncBase,
    now: TableVersion,
) -> Result<Option<(Vec<u64>, u64, String)>, StepError> {
    let names: Vec<&str> = c.columns.iter().map(|col| col.name.as_str()).collect();
    let id = id_index(c);
    let mut seen: Vec<u64> = Vec::with_capacity(now.rows as usize);
    let (mut differ, mut fresh, mut kept) = (0u64, 0u64, 0u64);
    let read = target
        .scan_since(
            &c.table,
            base.version,
            now.version,
            &names,
            names[id],
            |b, is_new| {
                if is_new {
                    for (h, d) in digest::row_digests(b, id) {
                        fresh += 1;
                        seen.push(h);
                        differ += u64::from(saved.get(h).is_some_and(|s| s != d));
                    }
                    return;
                }
                let ids = crate::target::string_values(b.column(0).as_ref()).unwrap_or_default();
                for rid in ids {
                    let h = crate::hash::id_hash(rid.unwrap_or(""));
                    kept += 1;
                    seen.push(h);
                    if let Some(now) = saved.get(h) {
                        differ += u64::from(base.old.get(h) != Some(now));
                    }
                }
            },
        )
        .await?;
    Ok(read.then(|| {
        let how = format!(
            "the {fresh} rows written since version {} digested, the other {kept} unchanged since checked there (same Lance files): every value, bit for bit",
            base.version
        );
        (seen, differ, how)
    }))
}

/// Every row of `now` digested (on blocking threads, a few batches at a
/// time, while Lance decodes the next ones: both cores work): the id hash
/// of every row, and the rows whose values differ from their source
/// record's saved digest.
async fn read_all(
    target: &LanceTarget,
    c: &Collection,
    saved: &Digests,
    now: TableVersion,
) -> Result<(Vec<u64>, u64), StepError> {
    let names: Vec<&str> = c.columns.iter().map(|col| col.name.as_str()).collect();
    let id = id_index(c);
    let table = c.table.clone();
    let mut digests = target
        .batches(&c.table, Some(now.version), &names)
        .await?
        .map(|b| {
            let table = table.clone();
            async move {
                let b = b?;
                tokio::task::spawn_blocking(move || digest::row_digests(&b, id))
                    .await
                    .map_err(|e| StepError::Internal {
                        what: format!("digesting the rows of `{table}`"),
                        reason: e.to_string(),
                    })
            }
        })
        .buffered(DIGEST_IN_FLIGHT);
    let mut seen: Vec<u64> = Vec::with_capacity(now.rows as usize);
    let mut differ = 0u64;
    while let Some(pairs) = digests.try_next().await? {
        for (h, d) in pairs {
            seen.push(h);
            differ += u64::from(saved.get(h).is_some_and(|s| s != d));
        }
    }
    Ok((seen, differ))
}

/// Saves a table's digests marked as checked (every row of the table at
/// their version matched them): the next sync's validation starts from
/// there.
pub fn mark_checked(
    state_dir: &std::path::Path,
    table: &str,
    mut d: Digests,
) -> Result<(), StepError> {
    if !d.checked {
        d.checked = true;
        digest::save(&digest::path(state_dir, table), &d)?;
    }
    Ok(())
}

/// The digests recorded for a table if they describe `now`; otherwise
/// derived from the table (the flag says so).
pub async fn recorded_or_derived(
    target: &LanceTarget,
    c: &Collection,
    state_dir: &std::path::Path,
    now: TableVersion,
) -> Result<(Digests, bool), StepError> {
    match digest::load(&digest::path(state_dir, &c.table)) {
        Some(d) if d.version == now.version => Ok((d, false)),
        _ => Ok((derive(target, c, now.version).await?, true)),
    }
}

/// What one read of the source found against a table's digests: enough
/// for `plan` to count, and for apply to write the difference without
/// reading the source a second time (only the changed records are fetched
/// again, by id).
#[derive(Debug, Clone)]
pub struct Diff {
    pub changes: Changes,
    /// The old digests were derived from the table (not the recorded ones).
    pub derived: bool,
    /// The table version the old digests describe.
    pub version: u64,
    pub old: Digests,
    pub new: Digests,
    /// Ids of the records to insert or update.
    pub changed_ids: Vec<String>,
    /// Records the plan leaves out (`on_error: skip`).
    pub skipped: HashSet<String>,
    /// The source's write sequence numbers, read before its records.
    pub sequences: Option<crate::source::Sequences>,
    /// Found by sequence numbers: only the records written since the
    /// last sync were read.
    pub by_sequence: bool,
    /// The metadata of the records read deciding (every record, or the
    /// ones fetched by sequence number), for the plan's lints.
    pub tally: crate::diff::MetadataTally,
    /// The changed rows, transformed, when the decision fetched them (the
    /// fast path): written as they are, not fetched again.
    pub rows: Option<Vec<RecordBatch>>,
}

/// Reads the source once, digests it, and compares (read-only).
pub async fn diff(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    state_dir: &std::path::Path,
    now: TableVersion,
    dim: usize,
) -> Result<Diff, StepError> {
    let (old, derived) = recorded_or_derived(target, c, state_dir, now).await?;
    // Read before any record, so that a record written while this runs
    // has a higher number than the one saved with it, and is looked at
    // again by the next sync.
    let sequences = source.sequences(&c.source).await?;
    if let Some(seqs) = &sequences
        && let Some(d) = by_sequence(source, c, dim, &old, seqs).await?
    {
        return Ok(Diff {
            derived,
            version: now.version,
            sequences,
            ..d
        });
    }
    let transformer = Transformer::new(c, dim);
    let id = id_index(c);
    let mut pairs = Vec::new();
    let mut changed_ids = Vec::new();
    let mut skipped = HashSet::new();
    let mut tally = crate::diff::MetadataTally {
        all: true,
        ..Default::default()
    };
    let mut stream = source.read(&c.source, c.batch_size as usize);
    while let Some(b) = stream.try_next().await? {
        tally.add(&b);
        let t = transformer.transform(b)?;
        skipped.extend(t.skipped.into_iter().map(|s| s.id));
        let digests = digest::row_digests(&t.batch, id);
        let ids = crate::target::string_values(t.batch.column(id).as_ref()).unwrap_or_default();
        for ((h, d), rid) in digests.iter().zip(ids) {
            if old.get(*h) != Some(*d) {
                changed_ids.push(rid.unwrap_or_default().to_string());
            }
        }
        pairs.extend(digests);
    }
    refuse_duplicates(c, &pairs, source).await?;
    let new = Digests::new(0, pairs);
    let (changes, _) = digest::compare(&old, &new);
    Ok(Diff {
        changes,
        derived,
        version: now.version,
        old,
        new,
        changed_ids,
        skipped,
        sequences,
        by_sequence: false,
        rows: None,
        tally,
    })
}

/// Splits the source's records by their sequence numbers against the
/// recorded ones: the `(id hash, digest)` pairs that stand (same number),
/// and the ids to read again. `None` when the numbers cannot be trusted.
fn by_sequence_split(old: &Digests, seqs: &crate::source::Sequences) -> Option<Split> {
    let recorded = old.seqs.as_ref()?;
    if seqs.mark < recorded.mark || recorded.values.len() != old.pairs.len() {
        return None;
    }
    let mut keep = Vec::with_capacity(old.pairs.len());
    let mut look = Vec::new();
    for (rid, seq) in &seqs.records {
        let h = crate::hash::id_hash(rid);
        match old.position(h) {
            Some(i) if recorded.values[i] == *seq => keep.push(old.pairs[i]),
            // Written since the last sync: its number passed the mark.
            _ if *seq > recorded.mark => look.push(rid.clone()),
            // Another number, not above the mark: renumbered.
            Some(_) => return None,
            // No digest: left out by the plan last time (or restored).
            None => look.push(rid.clone()),
        }
    }
    Some(Split { keep, look })
}

/// Records whose digests stand, and ids to read again.
struct Split {
    keep: Vec<(u64, u64)>,
    look: Vec<String>,
}

/// The fast path of [`diff`]: a record whose write sequence number is the
/// one recorded with its digest is unchanged and not read; records with a
/// number above the recorded mark (written since) and records without a
/// digest (new, or left out by the plan) are fetched by id and digested;
/// recorded ids the source no longer has are gone. `None` (digest every
/// record instead) whenever the numbers cannot be trusted: none recorded,
/// the mark went back (the directory restored from a backup, the queue
/// reset), or a record's number changed without passing the mark.
async fn by_sequence(
    source: &dyn Source,
    c: &Collection,
    dim: usize,
    old: &Digests,
    seqs: &crate::source::Sequences,
) -> Result<Option<Diff>, StepError> {
    let Some(Split { keep, look }) = by_sequence_split(old, seqs) else {
        return Ok(None);
    };
    let transformer = Transformer::new(c, dim);
    let id = id_index(c);
    let mut pairs = keep;
    let mut changed_ids = Vec::new();
    let mut skipped = HashSet::new();
    // The changed rows themselves are kept (a fraction of the collection
    // by construction), so the write need not fetch them again.
    let mut rows = Vec::new();
    let mut tally = crate::diff::MetadataTally::default();
    for chunk in look.chunks(1000) {
        let b = source.get(&c.source, chunk).await?;
        tally.add(&b);
        let t = transformer.transform(b)?;
        skipped.extend(t.skipped.into_iter().map(|s| s.id));
        let digests = digest::row_digests(&t.batch, id);
        let ids = crate::target::string_values(t.batch.column(id).as_ref()).unwrap_or_default();
        let mut keep = Vec::with_capacity(digests.len());
        for ((h, d), rid) in digests.iter().zip(ids) {
            let changed = old.get(*h) != Some(*d);
            if changed {
                changed_ids.push(rid.unwrap_or_default().to_string());
            }
            keep.push(changed);
        }
        if keep.iter().any(|k| *k) {
            let mask = arrow_array::BooleanArray::from(keep);
            rows.push(
                arrow::compute::filter_record_batch(&t.batch, &mask).map_err(|e| {
                    StepError::Internal {
                        what: format!("the sync of `{}`", c.table),
                        reason: e.to_string(),
                    }
                })?,
            );
        }
        pairs.extend(digests);
    }
    refuse_duplicates(c, &pairs, source).await?;
    let new = Digests::new(0, pairs);
    let (changes, _) = digest::compare(old, &new);
    Ok(Some(Diff {
        rows: Some(rows),
        changes,
        derived: false,
        version: old.version,
        old: old.clone(),
        new,
        changed_ids,
        skipped,
        sequences: None,
        by_sequence: true,
        tally,
    }))
}

/// A source that holds one id twice cannot be synced (which record is the
/// table's row?): refused, naming the id.
async fn refuse_duplicates(
    c: &Collection,
    pairs: &[(u64, u64)],
    source: &dyn Source,
) -> Result<(), StepError> {
    let mut seen = HashSet::with_capacity(pairs.len());
    let dups: HashSet<u64> = pairs
        .iter()
        .filter(|p| !seen.insert(p.0))
        .map(|p| p.0)
        .collect();
    if dups.is_empty() {
        return Ok(());
    }
    let mut ids = source.read_ids(&c.source, c.batch_size as usize);
    while let Some(batch) = ids.try_next().await? {
        if let Some(id) = batch
            .into_iter()
            .find(|id| dups.contains(&crate::hash::id_hash(id)))
        {
            return Err(StepError::DuplicateId {
                collection: c.source.clone(),
                id,
            });
        }
    }
    Err(StepError::DuplicateId {
        collection: c.source.clone(),
        id: "?".into(),
    })
}

/// What a sync of `c` would write now (read-only: for `plan`).
pub async fn changes(
    source: &dyn Source,
    target: &LanceTarget,
    c: &Collection,
    state_dir: &std::path::Path,
    now: TableVersion,
    dim: usize,
) -> Result<(Changes, bool, crate::diff::MetadataTally), StepError> {
    let d = diff(source, target, c, state_dir, now, dim).await?;
    Ok((d.changes, d.derived, d.tally))
}

/// One merge commit of `buf` on the id column, recorded as the copy
/// step's checkpoint; `written` and `commits` count it.
async fn merge(
    ctx: &Arc<Ctx>,
    table: &str,
    schema: &arrow_schema::SchemaRef,
    key: &str,
    buf: Vec<RecordBatch>,
    written: &mut u64,
    commits: &mut Vec<u64>,
) -> Result<(), StepError> {
    let rows: u64 = buf.iter().map(|b| b.num_rows() as u64).sum();
    let v = ctx.target.upsert(table, schema.clone(), buf, key).await?;
    commits.push(rows);
    *written += rows;
    ctx.progress.advance(table, rows);
    let done = *written;
    ctx.update(&StepKey::copy(table), |r| {
        r.rows = done;
        r.cursor = done;
        r.version_after = Some(v);
    })
    .await?;
    crate::failpoint::hit_rows("checkpoint", table, done);
    Ok(())
}

/// Writes a difference found by [`diff`]: the changed records fetched by
/// id, merged in commits of `checkpoint_rows`. The source may have been
/// written since the difference was found, so the digests of what was
/// fetched (and so written) replace those of the read, and an id the fetch
/// no longer returns is taken as gone from the source: the new digests
/// returned describe exactly the table this leaves.
async fn write_diff(
    ctx: &Arc<Ctx>,
    c: &Collection,
    transformer: &Transformer,
    d: &Diff,
) -> Result<(Digests, Vec<u64>), StepError> {
    let id = id_index(c);
    let mut new: std::collections::HashMap<u64, u64> = d.new.pairs.iter().copied().collect();
    let table = c.table.as_str();
    let schema = transformer.schema();
    let key = c
        .id_column()
        .expect("a checked plan has an id column")
        .name
        .clone();
    let checkpoint = ctx.plan.checkpoint_rows.max(1) as usize;
    let mut written = 0u64;
    let mut commits = Vec::new();
    if let Some(rows) = &d.rows {
        // Fetched by the decision, digested there (`d.new` has their
        // digests): merged in commits of `checkpoint_rows`.
        let mut groups: Vec<Vec<RecordBatch>> = vec![Vec::new()];
        let mut n = 0usize;
        for b in rows {
            let mut at = 0;
            while at < b.num_rows() {
                if n == checkpoint {
                    groups.push(Vec::new());
                    n = 0;
                }
                let take = (checkpoint - n).min(b.num_rows() - at);
                groups
                    .last_mut()
                    .expect("one group")
                    .push(b.slice(at, take));
                n += take;
                at += take;
            }
        }
        for buf in groups.into_iter().filter(|g| !g.is_empty()) {
            merge(ctx, table, &schema, &key, buf, &mut written, &mut commits).await?;
        }
        let mut out = Digests::new(0, d.new.pairs.clone());
        if let Some(s) = &d.sequences {
            out.attach_seqs(s);
        }
        return Ok((out, commits));
    }
    for group in d.changed_ids.chunks(checkpoint) {
        let mut buf = Vec::new();
        for chunk in group.chunks(1000) {
            let b = ctx.source.get(&c.source, chunk).await?;
            let t = transformer.transform(b)?;
            let fetched = digest::row_digests(&t.batch, id);
            let returned: HashSet<u64> = fetched.iter().map(|p| p.0).collect();
            for rid in chunk {
                let h = crate::hash::id_hash(rid);
                if !returned.contains(&h) {
                    new.remove(&h);
                }
            }
            new.extend(fetched);
            buf.push(t.batch);
        }
        merge(ctx, table, &schema, &key, buf, &mut written, &mut commits).await?;
    }
    let mut out = Digests::new(0, new.into_iter().collect());
    if let Some(s) = &d.sequences {
        out.attach_seqs(s);
    }
    Ok((out, commits))
}

/// The sync of one collection onto its existing table (apply's copy step).
pub(crate) async fn sync(
    ctx: &Arc<Ctx>,
    c: &Collection,
    transformer: Transformer,
    now: TableVersion,
) -> Result<Changes, StepError> {
    let table = c.table.as_str();
    // Apply already read the source to decide whether anything changed:
    // write that difference, fetching only the changed records again.
    let known = ctx
        .sync_diffs
        .lock()
        .expect("sync diffs lock")
        .remove(table)
        .filter(|d| d.version == now.version);
    if let Some(d) = known {
        if d.derived {
            ctx.progress.message(&format!(
                "sync `{table}`: the recorded digests do not describe version {} of the table (first sync, an interrupted one, a store from an older lanceferry, or a write outside lanceferry); derived them from the table",
                now.version
            ));
        }
        let (new, commits) = write_diff(ctx, c, &transformer, &d).await?;
        let (mut changes, _) = digest::compare(&d.old, &new);
        changes.delete = 0; // counted by `finish`, which deletes
        let done = Written {
            changes,
            commits,
            by_sequence: d.by_sequence,
        };
        // Every source id was read with the sequence numbers, before the
        // records the sync wrote: validation's id-set check uses them
        // rather than reading the ids again.
        if let Some(seqs) = &d.sequences {
            ctx.copied_ids.lock().expect("copied ids lock").insert(
                table.to_string(),
                seqs.records.iter().map(|(id, _)| id.clone()).collect(),
            );
        }
        return finish(ctx, c, d.old, new, done, d.skipped, now).await;
    }
    let (old, derived) = recorded_or_derived(&ctx.target, c, &ctx.store.dir, now).await?;
    let sequences = ctx.source.sequences(&c.source).await?;
    if derived {
        ctx.progress.message(&format!(
            "sync `{table}`: the recorded digests do not describe version {} of the table (first sync, an interrupted one, a store from an older lanceferry, or a write outside lanceferry); derived them from the table",
            now.version
        ));
    }
    let schema = transformer.schema();
    let key = c
        .id_column()
        .expect("a checked plan has an id column")
        .name
        .clone();
    let id = id_index(c);
    let checkpoint = ctx.plan.checkpoint_rows.max(1);
    let mut pull = super::copy::Puller::start(
        ctx.source.read(&c.source, c.batch_size as usize),
        transformer,
        0,
    );
    let mut changes = Changes::default();
    let mut new_pairs = Vec::new();
    let mut buf: Vec<RecordBatch> = Vec::new();
    let (mut rows, mut bytes) = (0u64, 0usize);
    let mut written = 0u64;
    let mut commits = Vec::new();
    loop {
        let next = pull.next().await?;
        if let Some(b) = &next {
            let pairs = digest::row_digests(b, id);
            let mut keep = Vec::with_capacity(pairs.len());
            for (h, d) in &pairs {
                let changed = match old.get(*h) {
                    None => {
                        changes.insert += 1;
                        true
                    }
                    Some(o) if o != *d => {
                        changes.update += 1;
                        true
                    }
                    Some(_) => false,
                };
                keep.push(changed);
            }
            new_pairs.extend(pairs);
            if keep.iter().any(|k| *k) {
                let mask = arrow_array::BooleanArray::from(keep);
                let part = arrow::compute::filter_record_batch(b, &mask).map_err(|e| {
                    StepError::Internal {
                        what: format!("the sync of `{table}`"),
                        reason: e.to_string(),
                    }
                })?;
                rows += part.num_rows() as u64;
                bytes += part.get_array_memory_size();
                buf.push(part);
            }
        }
        let flush = match next {
            None => !buf.is_empty(),
            Some(_) => rows >= checkpoint || bytes >= MERGE_BUFFER_BYTES,
        };
        if flush {
            let b = std::mem::take(&mut buf);
            merge(ctx, table, &schema, &key, b, &mut written, &mut commits).await?;
            (rows, bytes) = (0, 0);
        }
        if next.is_none() {
            break;
        }
    }
    refuse_duplicates(c, &new_pairs, ctx.source.as_ref()).await?;
    let mut new = Digests::new(0, new_pairs);
    if let Some(s) = &sequences {
        new.attach_seqs(s);
    }
    let done = Written {
        changes,
        commits,
        by_sequence: false,
    };
    finish(ctx, c, old, new, done, pull.skipped_ids, now).await
}

/// What a sync merged: the counts, and the rows of each merge commit.
struct Written {
    changes: Changes,
    commits: Vec<u64>,
    by_sequence: bool,
}

/// The end of a sync: ids no longer in the source deleted (found by hash
/// in the table's id column), small fragments compacted, the new digests
/// saved with the table version they describe, the step recorded.
async fn finish(
    ctx: &Arc<Ctx>,
    c: &Collection,
    old: Digests,
    new: Digests,
    done: Written,
    skipped_ids: HashSet<String>,
    now: TableVersion,
) -> Result<Changes, StepError> {
    let mut changes = done.changes;
    let table = c.table.as_str();
    let step = StepKey::copy(table);
    let key = c
        .id_column()
        .expect("a checked plan has an id column")
        .name
        .clone();
    let (_, gone) = digest::compare(&old, &new);
    changes.delete = 0;
    let mut deletes = Vec::new();
    if !gone.is_empty() {
        let gone: HashSet<u64> = gone.into_iter().collect();
        let mut ids = Vec::new();
        ctx.target
            .for_each_batch(table, None, &[key.as_str()], |b| {
                let values = crate::target::string_values(b.column(0).as_ref()).unwrap_or_default();
                ids.extend(
                    values
                        .into_iter()
                        .flatten()
                        .filter(|id| gone.contains(&crate::hash::id_hash(id)))
                        .map(String::from),
                );
                Ok(())
            })
            .await?;
        changes.delete = ids.len() as u64;
        deletes = ctx.target.delete_ids(table, &key, &ids).await?;
        crate::failpoint::hit(&format!("sync-deleted:{table}"));
    }
    // Many small syncs leave many small fragments: merge them (the
    // indexes are remapped), so reads stay as fast as after a full copy.
    if changes.total() > 0 && ctx.target.compact(table).await? {
        ctx.progress
            .message(&format!("sync `{table}`: small fragments compacted"));
    }
    let after = ctx.target.version(table).await?.unwrap_or(now);
    digest::save(
        &digest::path(&ctx.store.dir, table),
        &Digests {
            version: after.version,
            pairs: new.pairs,
            from_source: true,
            seqs: new.seqs,
            checked: false,
        },
    )?;
    // What the sync started from, if checked: validation reads only what
    // it wrote (kept in memory: a resumed apply validates every row).
    if old.checked && old.version == now.version {
        ctx.sync_base.lock().expect("sync base lock").insert(
            table.to_string(),
            SyncBase {
                version: now.version,
                old,
            },
        );
    }
    crate::failpoint::hit(&format!("sync-digests:{table}"));
    let skipped = skipped_ids.len() as u64;
    ctx.skipped
        .lock()
        .expect("skipped lock")
        .insert(table.to_string(), skipped_ids);
    let mut message = format!(
        "sync: {} inserted, {} updated, {} deleted",
        changes.insert, changes.update, changes.delete
    );
    let list = |v: &[u64]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !done.commits.is_empty() {
        message += &format!(
            "; {} merge commit(s) of {} rows",
            done.commits.len(),
            list(&done.commits)
        );
    }
    if !deletes.is_empty() {
        message += &format!(
            "; {} delete commit(s) of {} ids",
            deletes.len(),
            list(&deletes)
        );
    }
    if done.by_sequence {
        message += "; changes found by Chroma's sequence numbers";
    }
    ctx.progress.message(&format!("copy `{table}`: {message}"));
    ctx.update(&step, |r| {
        r.rows = changes.total();
        r.cursor = changes.total();
        r.skipped = skipped;
        r.version_after = Some(after);
        r.message = Some(message);
    })
    .await?;
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Sequences;
    use crate::target::Commit;

    fn recorded(mark: u64, recs: &[(&str, u64, u64)]) -> Digests {
        let mut d = Digests::new(
            1,
            recs.iter()
                .map(|(id, dg, _)| (crate::hash::id_hash(id), *dg))
                .collect(),
        );
        d.attach_seqs(&Sequences {
            mark,
            records: recs.iter().map(|(id, _, s)| (id.to_string(), *s)).collect(),
        });
        d
    }

    fn now(mark: u64, recs: &[(&str, u64)]) -> Sequences {
        Sequences {
            mark,
            records: recs.iter().map(|(id, s)| (id.to_string(), *s)).collect(),
        }
    }

    /// A plan of one sync collection into `dir/lancedb`, 2-d vectors.
    fn sync_plan(dir: &std::path::Path) -> crate::plan::Plan {
        let text = format!(
            "version: 1\nname: t\nsource: {{ chroma: {{ path: ./db }} }}\ntarget: {{ lancedb: {{ uri: {} }} }}\ncollections:\n  - source: docs\n    mode: sync\n    columns:\n      - {{ name: vector, from: embedding, dim: 2 }}\n      - {{ name: id, from: id }}\n      - {{ name: doc, from: document }}\n",
            dir.join("lancedb").display()
        );
        crate::plan::load_str(
            &text,
            std::path::Path::new("t.yaml"),
            &crate::plan::Vars::empty(),
        )
        .unwrap()
    }

    /// The rows of `recs` (`id`, document, first vector value), as the
    /// plan writes them.
    fn rows(c: &Collection, recs: &[(&str, &str, f32)]) -> RecordBatch {
        let mut b = crate::source::SourceBatch::with_capacity(recs.len(), 2);
        for (id, doc, x) in recs {
            b.ids.push(id.to_string());
            b.documents.push(Some(doc.to_string()));
            b.uris.push(None);
            b.metadatas.push(None);
            b.embeddings.extend([*x, 1.0]);
        }
        Transformer::new(c, 2).transform(b).unwrap().batch
    }

    #[tokio::test]
    async fn validation_after_a_sync_reads_new_fragments_and_still_finds_every_breach() {
        let dir = tempfile::tempdir().unwrap();
        let plan = sync_plan(dir.path());
        let c = &plan.collections[0];
        let target = LanceTarget::connect(&plan.target).await.unwrap();
        let state = dir.path().join("state");
        let base_rows = rows(c, &[("a", "x", 1.0), ("b", "y", 2.0), ("c", "z", 3.0)]);
        let schema = base_rows.schema();
        let one = |b: RecordBatch| futures::stream::iter(vec![b]).boxed();
        let v1 = target
            .commit(
                "docs",
                schema.clone(),
                one(base_rows.clone()),
                Commit::Create,
            )
            .await
            .unwrap();
        // Checked at v1: the table's own digests.
        let old = derive(&target, c, v1.version).await.unwrap();
        assert!(old.checked);
        // The sync: `d` added in a fragment of its own.
        let v2 = target
            .commit(
                "docs",
                schema.clone(),
                one(rows(c, &[("d", "w", 4.0)])),
                Commit::Append,
            )
            .await
            .unwrap();
        let base = SyncBase {
            version: v1.version,
            old: old.clone(),
        };
        let source = |recs: &[(&str, &str, f32)]| {
            let mut d = Digests::new(v2.version, digest::row_digests(&rows(c, recs), 1));
            d.from_source = true;
            d
        };
        let check = |d: Digests, base: Option<SyncBase>| {
            let (target, state, c) = (&target, &state, c);
            async move {
                digest::save(&digest::path(state, "docs"), &d).unwrap();
                validate_by_digests(target, c, state, v2, base.as_ref())
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let all = [
            ("a", "x", 1.0),
            ("b", "y", 2.0),
            ("c", "z", 3.0),
            ("d", "w", 4.0),
        ];

        // Equal: only `d` is digested, the rest by id.
        let ok = check(source(&all), Some(base.clone())).await;
        assert!(ok.breaches.is_empty(), "{ok:?}");
        assert!(
            ok.how
                .contains("the 1 rows written since version 1 digested, the other 3 unchanged"),
            "{ok:?}"
        );

        // The source's `b` changed, but the sync did not rewrite its row:
        // `b` sits in a kept fragment, and is still caught.
        let stale = check(
            source(&[
                ("a", "x", 1.0),
                ("b", "EDITED", 2.0),
                ("c", "z", 3.0),
                ("d", "w", 4.0),
            ]),
            Some(base.clone()),
        )
        .await;
        assert_eq!(
            stale.breaches,
            ["values: 1 rows differ from their source record"]
        );

        // A written row that differs from its source record.
        let wrong = check(
            source(&[
                ("a", "x", 1.0),
                ("b", "y", 2.0),
                ("c", "z", 3.0),
                ("d", "w", 9.0),
            ]),
            Some(base.clone()),
        )
        .await;
        assert_eq!(
            wrong.breaches,
            ["values: 1 rows differ from their source record"]
        );

        // A source record missing from the table, and a row not in the source.
        let ids = check(
            source(&[
                ("a", "x", 1.0),
                ("b", "y", 2.0),
                ("d", "w", 4.0),
                ("e", "v", 5.0),
            ]),
            Some(base.clone()),
        )
        .await;
        assert!(
            ids.breaches
                .contains(&"ids: 1 rows not in the source".to_string()),
            "{ids:?}"
        );
        assert!(
            ids.breaches
                .contains(&"ids: 1 source records missing".to_string()),
            "{ids:?}"
        );

        // Without a base (or a base the table no longer has): every row.
        let full = check(source(&all), None).await;
        assert!(full.breaches.is_empty(), "{full:?}");
        assert_eq!(full.how, "digests: all values, bit for bit");
        let gone = check(
            source(&all),
            Some(SyncBase {
                version: 999,
                ..base.clone()
            }),
        )
        .await;
        assert!(gone.how.starts_with("digests: all values"), "{gone:?}");

        // A duplicate written by the sync: `a` twice.
        let v3 = target
            .commit(
                "docs",
                schema.clone(),
                one(rows(c, &[("a", "x", 1.0)])),
                Commit::Append,
            )
            .await
            .unwrap();
        let mut d = source(&all);
        d.version = v3.version;
        digest::save(&digest::path(&state, "docs"), &d).unwrap();
        let dup = validate_by_digests(&target, c, &state, v3, Some(&base))
            .await
            .unwrap()
            .unwrap();
        assert!(
            dup.breaches.contains(&"ids: 1 duplicate rows".to_string()),
            "{dup:?}"
        );
        assert!(
            dup.breaches
                .iter()
                .any(|b| b.starts_with("count: table has 5 rows")),
            "{dup:?}"
        );
    }

    #[test]
    fn only_records_written_since_the_mark_are_read_again() {
        let old = recorded(10, &[("a", 1, 3), ("b", 2, 7), ("c", 3, 10)]);
        // b rewritten (12), c gone, d new (13).
        let s = by_sequence_split(&old, &now(13, &[("a", 3), ("b", 12), ("d", 13)])).unwrap();
        assert_eq!(s.keep, vec![(crate::hash::id_hash("a"), 1)]);
        assert_eq!(s.look, vec!["b".to_string(), "d".to_string()]);
        // Nothing written: nothing read.
        let s = by_sequence_split(&old, &now(10, &[("a", 3), ("b", 7), ("c", 10)])).unwrap();
        assert_eq!((s.keep.len(), s.look.len()), (3, 0));
    }

    #[test]
    fn numbers_that_cannot_be_trusted_fall_back_to_digesting_everything() {
        let old = recorded(10, &[("a", 1, 3), ("b", 2, 7)]);
        // The mark went back: restored from a backup, or the queue reset.
        assert!(by_sequence_split(&old, &now(9, &[("a", 3), ("b", 7)])).is_none());
        // A record renumbered below the mark.
        assert!(by_sequence_split(&old, &now(12, &[("a", 3), ("b", 5)])).is_none());
        // No numbers recorded (a JSON Lines or server source before).
        let mut none = old.clone();
        none.seqs = None;
        assert!(by_sequence_split(&none, &now(10, &[("a", 3)])).is_none());
        // A record without a digest is read again, whatever its number.
        let s = by_sequence_split(&old, &now(10, &[("a", 3), ("b", 7), ("z", 2)])).unwrap();
        assert_eq!(s.look, vec!["z".to_string()]);
    }
}
