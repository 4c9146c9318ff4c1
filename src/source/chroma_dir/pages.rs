//! The metadata segment's records in SQLite: pages of (rowid, id) in
//! insertion order, one record's rowid, and the typed metadata rows of a
//! page (`embedding_metadata`, and from 1.5 `embedding_metadata_array` for
//! list values), folded into each record's document, uri and metadata.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::overlay::Fields;
use super::{DOCUMENT_KEY, URI_KEY, sqlite_err};
use crate::source::SourceError;
use crate::source::record::MetaValue;

type MetadataRow = (i64, String, Option<MetaValue>);

/// Typed metadata rows of `table` for the given record rowids (sorted), in
/// rowid order. A page of records is usually a dense run of rowids, whose
/// rows are read by one walk of the table; scattered rowids are looked up
/// one by one.
fn metadata_rows(
    conn: &Connection,
    dir: &Path,
    table: &str,
    ids: &[i64],
) -> Result<Vec<MetadataRow>, SourceError> {
    let e = sqlite_err(dir);
    let (Some(&lo), Some(&hi)) = (ids.first(), ids.last()) else {
        return Ok(Vec::new());
    };
    let columns = "id, key, string_value, int_value, float_value, bool_value";
    let row = |r: &rusqlite::Row| -> rusqlite::Result<MetadataRow> {
        Ok((r.get(0)?, r.get(1)?, typed_value(r, 2)?))
    };
    // Rows of other collections may sit between a page's rowids; a range at
    // most twice the page reads few of them, and they are dropped here.
    let dense = hi >= lo && ((hi - lo) as usize) < 2 * ids.len();
    let keep = |r: rusqlite::Result<MetadataRow>, out: &mut Vec<MetadataRow>| {
        let r = r.map_err(&e)?;
        if ids.binary_search(&r.0).is_ok() {
            out.push(r);
        }
        Ok::<_, SourceError>(())
    };
    let mut out = Vec::with_capacity(ids.len() * 4);
    if dense {
        // Where the page's rows sit in the table, from the (id, key) index
        // alone (it holds the rowid): rows written together are
        // neighbours, and a walk of the table over that rowid range costs
        // a seventh of fetching each row through the index and sorting
        // them (measured on 600,000 rows). Rows updated since sit
        // elsewhere and spread the range; past twice the rows, the index
        // is used after all.
        let span = format!(
            "SELECT min(rowid), max(rowid), count(*) FROM {table} WHERE id BETWEEN ?1 AND ?2"
        );
        let (first, last, n): (Option<i64>, Option<i64>, i64) = conn
            .prepare_cached(&span)
            .and_then(|mut s| s.query_row([lo, hi], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
            .map_err(&e)?;
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(out);
        };
        let sql = if last - first < 2 * n {
            format!("SELECT {columns} FROM {table} WHERE rowid BETWEEN ?3 AND ?4")
        } else {
            format!(
                "SELECT {columns} FROM {table} WHERE id BETWEEN ?1 AND ?2 AND rowid BETWEEN ?3 AND ?4 ORDER BY rowid"
            )
        };
        let mut stmt = conn.prepare_cached(&sql).map_err(&e)?;
        for r in stmt.query_map([lo, hi, first, last], row).map_err(&e)? {
            keep(r, &mut out)?;
        }
    } else {
        let marks = vec!["?"; ids.len()].join(",");
        let sql = format!("SELECT {columns} FROM {table} WHERE id IN ({marks}) ORDER BY rowid");
        let mut stmt = conn.prepare_cached(&sql).map_err(&e)?;
        for r in stmt
            .query_map(params_from_iter(ids.iter().copied()), row)
            .map_err(&e)?
        {
            keep(r, &mut out)?;
        }
    }
    Ok(out)
}

/// The value of a metadata row whose string, int, float and bool columns
/// start at column `base`.
pub(super) fn typed_value(r: &rusqlite::Row, base: usize) -> rusqlite::Result<Option<MetaValue>> {
    // Exactly one of string/int/float/bool is set.
    if let Some(s) = r.get::<_, Option<String>>(base)? {
        return Ok(Some(MetaValue::Str(s)));
    }
    if let Some(i) = r.get::<_, Option<i64>>(base + 1)? {
        return Ok(Some(MetaValue::Int(i)));
    }
    if let Some(f) = r.get::<_, Option<f64>>(base + 2)? {
        return Ok(Some(MetaValue::Float(f)));
    }
    if let Some(b) = r.get::<_, Option<i64>>(base + 3)? {
        return Ok(Some(MetaValue::Bool(b != 0)));
    }
    Ok(None)
}

/// Whether the directory has list-valued metadata (`embedding_metadata_array`, 1.5+).
pub(super) fn has_array_table(conn: &Connection, dir: &Path) -> Result<bool, SourceError> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='embedding_metadata_array'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(sqlite_err(dir))
}

/// The fields of the records with the given rowids (every rowid gets an
/// entry, empty for a record without document, uri or metadata).
pub(super) fn fields(
    conn: &Connection,
    dir: &Path,
    arrays: bool,
    rowids: &[i64],
) -> Result<HashMap<i64, Fields>, SourceError> {
    let mut out: HashMap<i64, Fields> = rowids.iter().map(|r| (*r, Fields::default())).collect();
    for chunk in rowids.chunks(900) {
        let mut ids: Vec<i64> = chunk.to_vec();
        ids.sort_unstable();
        for (rowid, key, value) in metadata_rows(conn, dir, "embedding_metadata", &ids)? {
            let f = out.entry(rowid).or_default();
            match (key.as_str(), value) {
                (DOCUMENT_KEY, Some(MetaValue::Str(s))) => f.document = Some(s),
                (URI_KEY, Some(MetaValue::Str(s))) => f.uri = Some(s),
                (_, Some(v)) => {
                    f.metadata.insert(key, v);
                }
                (_, None) => {}
            }
        }
        if !arrays {
            continue;
        }
        // List values (1.5+): one row per element, in rowid order.
        for (rowid, key, value) in metadata_rows(conn, dir, "embedding_metadata_array", &ids)? {
            let f = out.entry(rowid).or_default();
            let entry = f
                .metadata
                .entry(key)
                .or_insert_with(|| MetaValue::List(Vec::new()));
            if let (MetaValue::List(items), Some(v)) = (entry, value) {
                items.push(v);
            }
        }
    }
    Ok(out)
}

/// The rowid of record `id` in the metadata segment, if it has the record.
pub(super) fn rowid_of(
    conn: &Connection,
    dir: &Path,
    segment: &str,
    id: &str,
) -> Result<Option<i64>, SourceError> {
    conn.prepare_cached("SELECT id FROM embeddings WHERE segment_id = ?1 AND embedding_id = ?2")
        .and_then(|mut s| s.query_row([segment, id], |r| r.get(0)).optional())
        .map_err(sqlite_err(dir))
}

/// The number of records in the metadata segment.
pub(super) fn count(conn: &Connection, dir: &Path, segment: &str) -> Result<i64, SourceError> {
    conn.query_row(
        "SELECT count(*) FROM embeddings WHERE segment_id = ?1",
        [segment],
        |r| r.get(0),
    )
    .map_err(sqlite_err(dir))
}

/// The next `limit` (rowid, id) rows of the metadata segment after
/// rowid `after`. `+segment_id` keeps SQLite off Chroma's
/// `(segment_id, embedding_id)` index: with it, every page scanned and
/// sorted the whole segment (quadratic in the collection size).
pub(super) fn page(
    conn: &Connection,
    dir: &Path,
    segment: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<(i64, String)>, SourceError> {
    let e = sqlite_err(dir);
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, embedding_id FROM embeddings WHERE +segment_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .map_err(&e)?;
    stmt.query_map(rusqlite::params![segment, after, limit as i64], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .map_err(&e)?
    .collect::<Result<_, _>>()
    .map_err(&e)
}
