//! The directory's catalog in SQLite: which schema wrote it, its tenants'
//! databases, the collections of one database with their two segments,
//! each collection's settings (distance space, collection metadata) and
//! each segment's position in the write-ahead queue.
//!
//! Columns appeared over Chroma's versions (`config_json_str` in 0.5,
//! `schema_str` in 1.3, `bool_value` in `collection_metadata` after 0.4),
//! so the queries ask SQLite which columns exist rather than guess from a
//! version number.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::pages::typed_value;
use super::sqlite_err;
use crate::plan::DistanceSpace;
use crate::source::SourceError;
use crate::source::record::MetaValue;

/// Schema versions (table `migrations`) this reader understands.
const KNOWN_MIGRATIONS: [(&str, i64); 3] = [("metadb", 6), ("sysdb", 10), ("embeddings_queue", 2)];

/// Checks that `chroma.sqlite3` is an SQLite database with Chroma's tables,
/// written by a schema this reader knows.
pub(super) fn check_schema(conn: &Connection, path: &Path) -> Result<(), SourceError> {
    let not_chroma = |reason: &str| SourceError::NotChroma {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    // Every version this reader knows has these five.
    let present: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN \
             ('migrations','databases','collections','segments','embeddings')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                not_chroma("`chroma.sqlite3` is not an SQLite database")
            }
            other => sqlite_err(path)(other),
        })?;
    if present != 5 {
        return Err(not_chroma("`chroma.sqlite3` lacks Chroma's tables"));
    }
    let e = sqlite_err(path);
    let mut stmt = conn
        .prepare("SELECT dir, max(version) FROM migrations GROUP BY dir")
        .map_err(&e)?;
    let versions: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(&e)?
        .collect::<Result<_, _>>()
        .map_err(&e)?;
    for (name, version) in versions {
        if let Some((_, known)) = KNOWN_MIGRATIONS.iter().find(|(n, _)| *n == name)
            && version > *known
        {
            return Err(SourceError::TooNew {
                path: path.display().to_string(),
                what: format!("schema `{name}` version {version}; this reader knows up to {known}"),
            });
        }
    }
    Ok(())
}

/// Checks that the directory has `database` in `tenant`; the error lists
/// the databases it has.
pub(super) fn check_database(
    conn: &Connection,
    path: &Path,
    tenant: &str,
    database: &str,
) -> Result<(), SourceError> {
    let e = sqlite_err(path);
    let mut stmt = conn
        .prepare("SELECT tenant_id, name FROM databases ORDER BY tenant_id, name")
        .map_err(&e)?;
    let all: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(&e)?
        .collect::<Result<_, _>>()
        .map_err(&e)?;
    if all.iter().any(|(t, d)| t == tenant && d == database) {
        return Ok(());
    }
    let existing: Vec<String> = all
        .iter()
        .map(|(t, d)| format!("`{d}` in tenant `{t}`"))
        .collect();
    Err(SourceError::NoSuchDatabase {
        source_desc: format!("the Chroma directory `{}`", path.display()),
        tenant: tenant.to_string(),
        database: database.to_string(),
        message: if existing.is_empty() {
            "the directory has no databases".into()
        } else {
            format!("the directory has {}", existing.join(", "))
        },
    })
}

/// A collection row and its segments.
#[derive(Debug, Clone)]
pub(super) struct CollectionMeta {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) dimension: Option<i64>,
    pub(super) config_json: Option<String>,
    pub(super) schema_json: Option<String>,
    pub(super) metadata_segment: String,
    pub(super) vector_segment: Option<String>,
}

pub(super) fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    stmt.query_map([], |r| r.get::<_, String>(1))?.collect()
}

/// The collections of `database` in `tenant`, sorted by name.
pub(super) fn collections(
    conn: &Connection,
    path: &Path,
    tenant: &str,
    database: &str,
) -> Result<Vec<CollectionMeta>, SourceError> {
    let e = sqlite_err(path);
    let cols = table_columns(conn, "collections").map_err(&e)?;
    let pick = |c: &str| {
        if cols.iter().any(|x| x == c) {
            format!("c.{c}")
        } else {
            "NULL".to_string()
        }
    };
    let sql = format!(
        "SELECT c.id, c.name, c.dimension, {}, {} FROM collections c \
         JOIN databases d ON c.database_id = d.id \
         WHERE d.name = ?1 AND d.tenant_id = ?2 ORDER BY c.name",
        pick("config_json_str"),
        pick("schema_str")
    );
    let mut stmt = conn.prepare(&sql).map_err(&e)?;
    type Row = (String, String, Option<i64>, Option<String>, Option<String>);
    let rows: Vec<Row> = stmt
        .query_map([database, tenant], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(&e)?
        .collect::<Result<_, _>>()
        .map_err(&e)?;
    let mut out = Vec::new();
    for (id, name, dimension, config_json, schema_json) in rows {
        let mut seg = conn
            .prepare("SELECT id, scope FROM segments WHERE collection = ?1")
            .map_err(&e)?;
        let segs: Vec<(String, String)> = seg
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&e)?
            .collect::<Result<_, _>>()
            .map_err(&e)?;
        let metadata_segment = segs
            .iter()
            .find(|(_, s)| s == "METADATA")
            .map(|(i, _)| i.clone());
        let vector_segment = segs
            .iter()
            .find(|(_, s)| s == "VECTOR")
            .map(|(i, _)| i.clone());
        let Some(metadata_segment) = metadata_segment else {
            return Err(SourceError::Corrupt {
                file: path.join("chroma.sqlite3").display().to_string(),
                collection: name,
                reason: "the collection has no metadata segment".into(),
                hint: "the directory is damaged; restore it from a backup".into(),
            });
        };
        out.push(CollectionMeta {
            id,
            name,
            dimension,
            config_json,
            schema_json,
            metadata_segment,
            vector_segment,
        });
    }
    Ok(out)
}

/// A collection's own metadata (without `hnsw:*` settings) and its
/// distance space, from wherever the writing version kept it.
pub(super) fn settings(
    conn: &Connection,
    dir: &Path,
    meta: &CollectionMeta,
) -> Result<(BTreeMap<String, MetaValue>, DistanceSpace), SourceError> {
    let e = sqlite_err(dir);
    // Collection metadata (and the 0.x space setting).
    let mut collection_metadata = BTreeMap::new();
    // 0.4.x has no bool_value column in collection_metadata.
    let bool_col = if table_columns(conn, "collection_metadata")
        .map_err(&e)?
        .iter()
        .any(|c| c == "bool_value")
    {
        "bool_value"
    } else {
        "NULL"
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT key, str_value, int_value, float_value, {bool_col} FROM collection_metadata WHERE collection_id = ?1"
        ))
        .map_err(&e)?;
    let rows = stmt
        .query_map([&meta.id], |r| {
            Ok((r.get::<_, String>(0)?, typed_value(r, 1)?))
        })
        .map_err(&e)?;
    for row in rows {
        let (k, v) = row.map_err(&e)?;
        if let Some(v) = v {
            collection_metadata.insert(k, v);
        }
    }
    let mut segment_space = None;
    if let Some(vs) = &meta.vector_segment {
        segment_space = conn
            .query_row(
                "SELECT str_value FROM segment_metadata WHERE segment_id = ?1 AND key = 'hnsw:space'",
                [vs],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map_err(&e)?
            .flatten();
    }
    let json = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
    };
    let space = crate::source::space::resolve_space(
        &collection_metadata,
        segment_space.as_deref(),
        json(&meta.schema_json).as_ref(),
        json(&meta.config_json).as_ref(),
    );
    collection_metadata.retain(|k, _| !k.starts_with("hnsw:"));
    Ok((collection_metadata, space))
}

/// A segment's position in the queue: 0.x stores an 8-byte big-endian blob,
/// 1.x an integer; upgraded databases mix both.
pub(super) fn max_seq_id(conn: &Connection, segment: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT seq_id FROM max_seq_id WHERE segment_id = ?1",
        [segment],
        |r| {
            Ok(match r.get_ref(0)? {
                rusqlite::types::ValueRef::Integer(i) => i,
                rusqlite::types::ValueRef::Blob(b) => {
                    let mut buf = [0u8; 8];
                    let n = b.len().min(8);
                    buf[8 - n..].copy_from_slice(&b[b.len() - n..]);
                    i64::from_be_bytes(buf)
                }
                _ => 0,
            })
        },
    )
    .optional()
}
