//! Typed step keys: the one place a step's identity becomes a string.
//!
//! The state record is keyed by step, and several readers ask questions such
//! as "which version did this apply leave table `t` at?". Matching strings
//! for that (`ends_with(":t")`) confuses a table named `vector` with the
//! column of another table's `index:docs:vector:ivf_pq`; a typed key never
//! does. The string form (`copy:docs`, `index:docs:vector:ivf_pq`) is what
//! the state files, the report and `graph` show; it is written by
//! [`Display`](std::fmt::Display) and read by [`FromStr`] here, nowhere else.
//! Table names cannot hold `:` (the plan checker refuses them); a column
//! name may, so an index key is split at its first and last `:` only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::plan::IndexType;

/// Which step of an apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepKey {
    Backup,
    Snapshot {
        table: String,
    },
    Copy {
        table: String,
    },
    Index {
        table: String,
        column: String,
        index: IndexType,
    },
    Validate {
        table: String,
    },
    Report,
}

impl StepKey {
    /// The table the step belongs to, if any.
    pub fn table(&self) -> Option<&str> {
        match self {
            StepKey::Snapshot { table }
            | StepKey::Copy { table }
            | StepKey::Index { table, .. }
            | StepKey::Validate { table } => Some(table),
            StepKey::Backup | StepKey::Report => None,
        }
    }

    pub fn snapshot(table: &str) -> Self {
        StepKey::Snapshot {
            table: table.into(),
        }
    }

    pub fn copy(table: &str) -> Self {
        StepKey::Copy {
            table: table.into(),
        }
    }

    pub fn validate(table: &str) -> Self {
        StepKey::Validate {
            table: table.into(),
        }
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepKey::Backup => f.write_str("backup"),
            StepKey::Snapshot { table } => write!(f, "snapshot:{table}"),
            StepKey::Copy { table } => write!(f, "copy:{table}"),
            StepKey::Index {
                table,
                column,
                index,
            } => write!(f, "index:{table}:{column}:{index}"),
            StepKey::Validate { table } => write!(f, "validate:{table}"),
            StepKey::Report => f.write_str("report"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a step key (`backup`, `snapshot:T`, `copy:T`, `index:T:COLUMN:TYPE`, `validate:T`, `report`)"
)]
pub struct BadStepKey(pub String);

fn index_type(s: &str) -> Option<IndexType> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

impl FromStr for StepKey {
    type Err = BadStepKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadStepKey(s.to_string());
        let table = |t: &str| -> Result<String, BadStepKey> {
            if t.is_empty() || t.contains(':') {
                Err(bad())
            } else {
                Ok(t.to_string())
            }
        };
        match s {
            "backup" => return Ok(StepKey::Backup),
            "report" => return Ok(StepKey::Report),
            _ => {}
        }
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        Ok(match kind {
            "snapshot" => StepKey::Snapshot {
                table: table(rest)?,
            },
            "copy" => StepKey::Copy {
                table: table(rest)?,
            },
            "validate" => StepKey::Validate {
                table: table(rest)?,
            },
            "index" => {
                let (t, rest) = rest.split_once(':').ok_or_else(bad)?;
                let (column, index) = rest.rsplit_once(':').ok_or_else(bad)?;
                if column.is_empty() {
                    return Err(bad());
                }
                StepKey::Index {
                    table: table(t)?,
                    column: column.to_string(),
                    index: index_type(index).ok_or_else(bad)?,
                }
            }
            _ => return Err(bad()),
        })
    }
}

impl Serialize for StepKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StepKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_round_trip() {
        let keys = [
            StepKey::Backup,
            StepKey::Report,
            StepKey::snapshot("docs"),
            StepKey::copy("vector"),
            StepKey::validate("a.b-c"),
            StepKey::Index {
                table: "docs".into(),
                column: "vector".into(),
                index: IndexType::IvfPq,
            },
            // A column name holding `:` survives.
            StepKey::Index {
                table: "t".into(),
                column: "a:b".into(),
                index: IndexType::LabelList,
            },
        ];
        for k in keys {
            let s = k.to_string();
            assert_eq!(s.parse::<StepKey>().unwrap(), k, "{s}");
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<StepKey>(&json).unwrap(), k);
        }
        assert_eq!(
            StepKey::Index {
                table: "docs".into(),
                column: "vector".into(),
                index: IndexType::IvfPq
            }
            .to_string(),
            "index:docs:vector:ivf_pq"
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        for s in [
            "",
            "copy",
            "copy:",
            "index:t:c",
            "index:t::fts",
            "index:t:c:nope",
            "drop:t",
            "copy:a:b",
        ] {
            assert!(s.parse::<StepKey>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn a_table_named_like_a_column_is_its_own_table() {
        let k = StepKey::Index {
            table: "docs".into(),
            column: "vector".into(),
            index: IndexType::IvfPq,
        };
        assert_eq!(k.table(), Some("docs"));
        assert_ne!(k.table(), Some("vector"));
    }
}
