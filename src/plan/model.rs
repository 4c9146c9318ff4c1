//! `Plan`: a checked, resolved plan that later stages can trust.
//!
//! Everything optional in [`PlanSpec`](super::spec::PlanSpec) has its default
//! filled in, every variable is substituted, every cross-reference (index →
//! column, upsert → id column) has been checked. Code after `check` never
//! re-validates; if it holds a `Plan`, the plan is valid.

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

pub use super::spec::{ColumnType, DistanceSpace, IndexType, Metric, Mode, OnError, TokenHeader};

/// Default directory for state records, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = "./.lanceferry";
pub const DEFAULT_BATCH_SIZE: u32 = 1000;
pub const DEFAULT_CONCURRENCY: u32 = 2;
pub const DEFAULT_CHECKPOINT_ROWS: u64 = 100_000;
pub const DEFAULT_BACKUP_KEEP: u32 = 5;
pub const DEFAULT_MIN_COSINE: f64 = 0.99;
pub const DEFAULT_SEARCH_QUERIES: u32 = 100;
pub const DEFAULT_SEARCH_K: u32 = 10;
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_TENANT: &str = "default_tenant";
pub const DEFAULT_DATABASE: &str = "default_database";

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    /// The plan file as given on the command line.
    pub file: PathBuf,
    pub source: Source,
    pub target: Target,
    pub state_dir: PathBuf,
    pub backup: Option<Backup>,
    /// `mirror.journal_max_mb`, if the plan sets it.
    pub mirror_journal_max_mb: Option<u64>,
    pub concurrency: u32,
    pub checkpoint_rows: u64,
    pub collections: Vec<Collection>,
}

/// A secret value (the Chroma token). It is never displayed, logged,
/// serialized or stored; only the name of the variable it came from is.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// The variable the value came from, e.g. `CHROMA_TOKEN`.
    pub variable: String,
}

impl Secret {
    pub fn new(value: String, variable: String) -> Self {
        Secret { value, variable }
    }
    /// The secret itself, for the one place that sends it (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${{{}}} (redacted)", self.variable)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("${{{}}}", self.variable))
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A Chroma persistent directory, read directly: the collections of one
    /// tenant's database. The defaults are left out when serialized, so a
    /// plan that does not name them keeps its fingerprint.
    ChromaDir {
        path: PathBuf,
        #[serde(skip_serializing_if = "Source::is_default_tenant")]
        tenant: String,
        #[serde(skip_serializing_if = "Source::is_default_database")]
        database: String,
    },
    /// A running Chroma server.
    ChromaHttp {
        /// Sent as written; shown and stored with its userinfo as `***`.
        #[serde(serialize_with = "crate::plan::redact::ser_url")]
        url: String,
        tenant: String,
        database: String,
        token: Option<Secret>,
        token_header: TokenHeader,
        timeout_secs: u64,
        ca_cert: Option<PathBuf>,
    },
    /// JSON Lines files, one per collection.
    Jsonl { path: PathBuf, space: DistanceSpace },
}

impl Source {
    /// A short human description, without secrets.
    pub fn describe(&self) -> String {
        match self {
            Source::ChromaDir {
                path,
                tenant,
                database,
            } => {
                if Self::is_default_tenant(tenant) && Self::is_default_database(database) {
                    format!("chroma directory `{}`", path.display())
                } else {
                    format!(
                        "chroma directory `{}` (tenant `{tenant}`, database `{database}`)",
                        path.display()
                    )
                }
            }
            Source::ChromaHttp { url, .. } => {
                format!("chroma server `{}`", crate::plan::redact::url(url))
            }
            Source::Jsonl { path, .. } => format!("JSON Lines in `{}`", path.display()),
        }
    }

    fn is_default_tenant(tenant: &str) -> bool {
        tenant == DEFAULT_TENANT
    }

    fn is_default_database(database: &str) -> bool {
        database == DEFAULT_DATABASE
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub uri: String,
    /// Passed to LanceDB as written; secret-looking values shown as `***`.
    #[serde(serialize_with = "crate::plan::redact::ser_options")]
    pub storage_options: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub dir: PathBuf,
    pub keep: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Collection {
    /// The source collection name.
    pub source: String,
    /// The LanceDB table name (unique within the plan).
    pub table: String,
    pub mode: Mode,
    pub batch_size: u32,
    pub columns: Vec<Column>,
    pub indexes: Vec<Index>,
    pub validate: Validate,
    /// True when `columns` was omitted and the default mapping applies.
    pub default_columns: bool,
    /// Lint findings accepted for this collection: code → reason.
    pub nolint: Vec<(String, String)>,
}

impl Collection {
    /// The column that holds the vector (exactly one exists).
    pub fn vector_column(&self) -> &Column {
        self.columns
            .iter()
            .find(|c| c.from == Field::Embedding)
            .expect("a checked plan has exactly one vector column")
    }

    /// The column mapped from the record id, if any.
    pub fn id_column(&self) -> Option<&Column> {
        self.columns.iter().find(|c| c.from == Field::Id)
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A source field a column reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    Id,
    Document,
    Uri,
    Embedding,
    /// The whole metadata map.
    Metadata,
    /// One metadata key, lifted to its own column.
    MetadataKey(String),
}

impl Field {
    pub const NAMES: [&'static str; 6] = [
        "id",
        "document",
        "uri",
        "embedding",
        "metadata",
        "metadata.<key>",
    ];

    pub fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "id" => Field::Id,
            "document" => Field::Document,
            "uri" => Field::Uri,
            "embedding" => Field::Embedding,
            "metadata" => Field::Metadata,
            _ => {
                let key = s.strip_prefix("metadata.")?;
                if key.is_empty() {
                    return None;
                }
                Field::MetadataKey(key.to_string())
            }
        })
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Id => f.write_str("id"),
            Field::Document => f.write_str("document"),
            Field::Uri => f.write_str("uri"),
            Field::Embedding => f.write_str("embedding"),
            Field::Metadata => f.write_str("metadata"),
            Field::MetadataKey(k) => write!(f, "metadata.{k}"),
        }
    }
}

impl Serialize for Field {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Bool => "bool",
            ColumnType::Json => "json",
            ColumnType::Vector => "vector",
            ColumnType::ListString => "list<string>",
            ColumnType::ListInt64 => "list<int64>",
            ColumnType::ListFloat64 => "list<float64>",
            ColumnType::ListBool => "list<bool>",
        })
    }
}

impl ColumnType {
    pub fn is_list(self) -> bool {
        matches!(
            self,
            ColumnType::ListString
                | ColumnType::ListInt64
                | ColumnType::ListFloat64
                | ColumnType::ListBool
        )
    }
    pub fn is_scalar(self) -> bool {
        matches!(
            self,
            ColumnType::String | ColumnType::Int64 | ColumnType::Float64 | ColumnType::Bool
        )
    }
}

impl fmt::Display for IndexType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IndexType::Auto => "auto",
            IndexType::IvfPq => "ivf_pq",
            IndexType::IvfFlat => "ivf_flat",
            IndexType::IvfSq => "ivf_sq",
            IndexType::IvfRq => "ivf_rq",
            IndexType::IvfHnswSq => "ivf_hnsw_sq",
            IndexType::IvfHnswPq => "ivf_hnsw_pq",
            IndexType::Fts => "fts",
            IndexType::Btree => "btree",
            IndexType::Bitmap => "bitmap",
            IndexType::LabelList => "label_list",
        })
    }
}

impl IndexType {
    /// A vector index kind. `auto` counts: after the checker it remains
    /// only on the vector column (on others it becomes a scalar kind).
    pub fn is_vector(self) -> bool {
        matches!(
            self,
            IndexType::Auto
                | IndexType::IvfPq
                | IndexType::IvfFlat
                | IndexType::IvfSq
                | IndexType::IvfRq
                | IndexType::IvfHnswSq
                | IndexType::IvfHnswPq
        )
    }

    /// Whether an index LanceDB lists as `listed` (`IVF_PQ`, …) is one
    /// of this kind: for `auto`, any vector index (what it chose, or one a
    /// plan chose before it said `auto`).
    pub fn matches_listed(self, listed: &str) -> bool {
        match self {
            IndexType::Auto => listed.starts_with("IVF_"),
            k => k.lance_name() == Some(listed),
        }
    }

    /// The name LanceDB lists this kind under (`IVF_PQ`, `FTS`, …); `None`
    /// for `auto`, which is not a kind LanceDB knows.
    pub fn lance_name(self) -> Option<&'static str> {
        Some(match self {
            IndexType::Auto => return None,
            IndexType::IvfPq => "IVF_PQ",
            IndexType::IvfFlat => "IVF_FLAT",
            IndexType::IvfSq => "IVF_SQ",
            IndexType::IvfRq => "IVF_RQ",
            IndexType::IvfHnswSq => "IVF_HNSW_SQ",
            IndexType::IvfHnswPq => "IVF_HNSW_PQ",
            IndexType::Fts => "FTS",
            IndexType::Btree => "BTREE",
            IndexType::Bitmap => "BITMAP",
            IndexType::LabelList => "LABEL_LIST",
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Create => "create",
            Mode::Replace => "replace",
            Mode::Append => "append",
            Mode::Upsert => "upsert",
            Mode::Sync => "sync",
        })
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Auto => "auto",
            Metric::L2 => "l2",
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub name: String,
    pub from: Field,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Only for the vector column; `None` = the source collection's dimension.
    pub dim: Option<u32>,
    pub required: bool,
    pub on_error: OnError,
    pub coerce: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Index {
    pub column: String,
    pub kind: IndexType,
    /// Only meaningful for vector indexes.
    pub metric: Metric,
    pub num_partitions: Option<u32>,
    pub num_sub_vectors: Option<u32>,
    // Absent when unset, so a plan that does not use them keeps the
    // fingerprint it had before they existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_bits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
}

impl Index {
    /// The settings that decide how the index is built, as recorded in the
    /// state: a sync rebuilds an index whose settings the plan changed.
    /// Settings added later appear only when set, so an index recorded
    /// before them is not rebuilt for their sake.
    pub fn settings(&self) -> String {
        let mut s = format!(
            "{:?} metric={:?} partitions={:?} sub_vectors={:?}",
            self.kind, self.metric, self.num_partitions, self.num_sub_vectors
        );
        for (name, v) in [
            ("bits", self.num_bits),
            ("max_iterations", self.max_iterations),
            ("sample_rate", self.sample_rate),
        ] {
            if let Some(v) = v {
                s.push_str(&format!(" {name}={v}"));
            }
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleSize {
    All,
    Records(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CountRule {
    Exact,
    Skip,
    Tolerance(u64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Validate {
    pub sample: SampleSize,
    pub seed: u64,
    pub min_cosine: f64,
    pub count: CountRule,
    pub ids: bool,
    pub content: bool,
    pub metadata: bool,
    /// `validate.search`; `None`: not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchCheck>,
}

/// `validate.search`: recall@k of LanceDB's vector search against an
/// exact search in the source's distance space (see `verify::search`).
/// Not part of the fingerprint: it decides nothing the tables hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SearchCheck {
    /// Records used as queries (a seeded sample, by `validate.seed`).
    pub queries: u32,
    /// Neighbours compared per query.
    pub k: u32,
    /// Lowest mean recall@k allowed; `None`: reported only.
    pub min_recall: Option<f64>,
    /// LanceDB query settings; `None`: LanceDB's own.
    pub nprobes: Option<u32>,
    pub refine_factor: Option<u32>,
}

impl Default for Validate {
    fn default() -> Self {
        Validate {
            sample: SampleSize::All,
            seed: 0,
            min_cosine: DEFAULT_MIN_COSINE,
            count: CountRule::Exact,
            ids: true,
            content: true,
            metadata: true,
            search: None,
        }
    }
}

impl Plan {
    /// A stable digest of what decides the tables' contents: the source's
    /// identity, and per collection its source, table, mode, column mapping
    /// and indexes. Two applies with the same fingerprint write the same
    /// tables, so an interrupted apply is resumed only under the same
    /// fingerprint, and a completed one makes a re-run "nothing to do".
    ///
    /// Left out on purpose, because they change how an apply runs but not
    /// what it writes: batch size, concurrency, checkpoint interval,
    /// validation thresholds, backup, state directory, timeouts, TLS roots,
    /// the token and the userinfo of a URL (a rotated password is the same
    /// source). The target is left out too: the state is already kept per
    /// target. So changing `batch_size` after a crash still resumes.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let source = match &self.source {
            Source::ChromaDir { .. } | Source::Jsonl { .. } => {
                serde_json::to_value(&self.source).expect("source serializes")
            }
            Source::ChromaHttp {
                url,
                tenant,
                database,
                ..
            } => serde_json::json!({
                "kind": "chroma_http",
                "url": crate::plan::redact::url_identity(url),
                "tenant": tenant,
                "database": database,
            }),
        };
        let collections: Vec<serde_json::Value> = self
            .collections
            .iter()
            .map(|c| {
                serde_json::json!({
                    "source": c.source,
                    "table": c.table,
                    "mode": c.mode,
                    "columns": c.columns,
                    "indexes": c.indexes,
                })
            })
            .collect();
        let what = serde_json::json!({ "source": source, "collections": collections });
        let json = serde_json::to_vec(&what).expect("plan serializes");
        format!("sha256:{}", hex::encode(Sha256::digest(&json)))
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use crate::plan::{Vars, load_str};
    use std::path::Path;

    fn plan(extra: &str, collection: &str) -> crate::plan::Plan {
        let text = format!(
            "version: 1\nname: t\nsource: {{ chroma: {{ path: ./db }} }}\ntarget: {{ lancedb: {{ uri: ./out }} }}\n{extra}collections:\n  - source: a\n{collection}"
        );
        load_str(&text, Path::new("t.yaml"), &Vars::empty()).unwrap()
    }

    #[test]
    fn only_what_decides_the_tables_changes_the_fingerprint() {
        let base = plan("", "").fingerprint();
        for (extra, coll) in [
            (
                "defaults: { batch_size: 7, concurrency: 1, checkpoint_rows: 10 }\n",
                "",
            ),
            ("", "    batch_size: 9\n"),
            ("", "    validate: { sample: 10, min_cosine: 0.5 }\n"),
            (
                "",
                "    validate: { search: { queries: 7, k: 3, min_recall: 0.5, nprobes: 9 } }\n",
            ),
            ("backup: { dir: ./b }\n", ""),
            ("state: { path: ./elsewhere }\n", ""),
        ] {
            assert_eq!(plan(extra, coll).fingerprint(), base, "{extra}{coll}");
        }
        for (extra, coll) in [
            ("", "    mode: append\n"),
            ("", "    table: other\n"),
            ("", "    indexes: [{ column: document, type: fts }]\n"),
        ] {
            assert_ne!(plan(extra, coll).fingerprint(), base, "{extra}{coll}");
        }
    }
}
