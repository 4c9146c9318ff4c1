//! `PlanSpec`: the plan exactly as written in YAML (format version 1).
//!
//! These types are the public contract. They mirror the YAML one to one, are
//! the single source of `schemas/plan.schema.json` (via schemars: the doc
//! comments below become the schema's descriptions, which editors show), and
//! deny unknown keys so a typo cannot pass silently. Nothing here is
//! validated beyond shape; `check` turns a `PlanSpec` into a `Plan`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A lanceferry migration plan: what to move from ChromaDB into LanceDB, and how to prove it arrived.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "lanceferry plan")]
pub struct PlanSpec {
    /// Plan format version. Only `1` exists.
    pub version: u32,
    /// A short name for the plan; it names the state record and the reports.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Where the records come from.
    pub source: SourceSpec,
    /// Where the records go.
    pub target: TargetSpec,
    /// Where `apply` keeps its state record (default `./.lanceferry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,
    /// Back up the source before any copy (only for a Chroma `path` source; an HTTP source is exported as JSON Lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// Settings of `lanceferry mirror` for this plan (the dual-write proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
    /// Settings that apply to every collection unless it overrides them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<DefaultsSpec>,
    /// The collections to migrate, one LanceDB table each.
    #[schemars(length(min = 1))]
    pub collections: Vec<CollectionSpec>,
}

/// The source store. Exactly one kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SourceSpec {
    /// A ChromaDB persistent directory or server.
    Chroma(ChromaSourceSpec),
    /// JSON Lines files in the original migration script's export format.
    Jsonl(JsonlSourceSpec),
}

/// A ChromaDB source: exactly one of `path` (a persistent directory, read without a server) or `url` (a running server).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChromaSourceSpec {
    /// A Chroma persistent directory (the one holding `chroma.sqlite3`). Read-only; never modified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The base URL of a running Chroma server, e.g. `http://127.0.0.1:8000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Chroma tenant (default `default_tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Chroma database (default `default_database`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Auth token for `url`. Accepted only as a variable reference such as `${CHROMA_TOKEN}`; never printed or stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Which header carries the token (default `x-chroma-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_header: Option<TokenHeader>,
    /// Per-request timeout in seconds for `url` (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_secs: Option<u64>,
    /// A PEM file of certificates to trust for an `https://` `url` (a private CA), in addition to the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
}

/// The HTTP header used for the Chroma token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TokenHeader {
    /// `x-chroma-token: <token>` (Chroma 1.x and Chroma Cloud).
    #[serde(rename = "x-chroma-token")]
    XChromaToken,
    /// `Authorization: Bearer <token>` (a choice of Chroma 0.5/0.6 servers).
    #[serde(rename = "authorization")]
    Authorization,
}

/// JSON Lines files, one per collection: `<path>/<collection>.jsonl` or `.jsonl.gz`, each line `{"doc_id","content","metadata","embedding"}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSourceSpec {
    /// The directory holding the `.jsonl` / `.jsonl.gz` files.
    pub path: String,
    /// The distance space of the exported vectors (JSON Lines does not record it; default `l2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<DistanceSpace>,
}

/// A Chroma distance space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DistanceSpace {
    L2,
    Cosine,
    Ip,
}

/// The target store. Exactly one kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TargetSpec {
    /// A LanceDB database.
    Lancedb(LanceDbTargetSpec),
}

/// A LanceDB database: a local directory or an object-store URI.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LanceDbTargetSpec {
    /// Database URI: a directory such as `./lancedb`, or `s3://bucket/prefix` where the build supports it.
    #[schemars(length(min = 1))]
    pub uri: String,
    /// Object-store options passed to LanceDB (e.g. `region`). Values that are secrets should come from variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_options: Option<BTreeMap<String, String>>,
}

/// Where the state record and its lock live.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Directory for state records and locks (default `./.lanceferry`).
    pub path: String,
}

/// Backups of a Chroma persistent directory, taken before any copy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    /// Directory where timestamped `.tar.gz` backups are written.
    pub dir: String,
    /// How many backups to keep; older ones are pruned (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep: Option<u32>,
}

/// `lanceferry mirror`'s settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// The journal's size limit in MiB (default 256): when full, writes are forwarded without a journal entry (counted as `dropped`) until it drains; `--journal-max-mb` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub journal_max_mb: Option<u64>,
}

/// Settings shared by all collections.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    /// Records read from the source per batch (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub batch_size: Option<u32>,
    /// Collections copied at the same time (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: Option<u32>,
    /// Rows written per LanceDB commit; each commit is a resume checkpoint (default 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub checkpoint_rows: Option<u64>,
    /// Import mode for collections that do not set one (default `create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

/// One Chroma collection and the LanceDB table it becomes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    /// The source collection's name.
    #[schemars(length(min = 1))]
    pub source: String,
    /// The LanceDB table name (default: the source name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// How to write the table (default from `defaults.mode`, else `create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Records per source batch for this collection (default from `defaults.batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub batch_size: Option<u32>,
    /// The table's columns. Omitted: `id`, `document`, `uri`, `vector` and `metadata` (JSON), see the plan reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub columns: Option<Vec<ColumnSpec>>,
    /// Indexes built after the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexes: Option<Vec<IndexSpec>>,
    /// Checks run after the copy. Omitted: every check, over all records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<ValidateSpec>,
    /// Lint findings of `lanceferry plan` accepted for this collection, each with the reason (see docs/lint.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nolint: Option<Vec<NolintSpec>>,
}

/// One accepted lint finding.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NolintSpec {
    /// The lint code, e.g. `DS101`.
    #[schemars(regex(pattern = r"^[A-Z]{2}[0-9]{3}$"))]
    pub code: String,
    /// Why this finding is accepted; shown next to it in every plan output.
    #[schemars(length(min = 1))]
    pub reason: String,
}

/// How `apply` writes a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Create the table; fail if it exists.
    Create,
    /// Replace the table if it exists (rollback restores the old version).
    Replace,
    /// Append rows to the table, creating it if needed.
    Append,
    /// Insert or update rows, matched on the column mapped from `id`.
    Upsert,
    /// Make the table hold exactly the source: the first apply copies
    /// everything, later ones write only the records added, changed or
    /// removed since (found by per-record digests kept in the state).
    Sync,
}

/// One column of the target table and where its values come from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The column name in LanceDB.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The source field: `id`, `document`, `uri`, `embedding`, `metadata` (the whole map) or `metadata.<key>`.
    #[schemars(length(min = 1))]
    pub from: String,
    /// The column type. Default: `string` for id/document/uri, `vector` for embedding, `json` for metadata; required for `metadata.<key>`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<ColumnType>,
    /// Vector dimension (only for `from: embedding`); default: the source collection's dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub dim: Option<u32>,
    /// A record without this value is invalid (then `on_error` applies). Default false: a missing value becomes null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// What to do with a record whose value is invalid (wrong type, required but missing, NaN in a vector). Default `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
    /// Apply lossless conversions (int to float or string, numeric strings to numbers, a scalar to a one-element list) before declaring a type error. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coerce: Option<bool>,
}

/// A column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ColumnType {
    #[serde(rename = "string")]
    String,
    #[serde(rename = "int64")]
    Int64,
    #[serde(rename = "float64")]
    Float64,
    #[serde(rename = "bool")]
    Bool,
    /// Canonical JSON text (sorted keys), for whole metadata maps.
    #[serde(rename = "json")]
    Json,
    /// FixedSizeList<float32, dim>; only for `from: embedding`.
    #[serde(rename = "vector")]
    Vector,
    #[serde(rename = "list<string>")]
    ListString,
    #[serde(rename = "list<int64>")]
    ListInt64,
    #[serde(rename = "list<float64>")]
    ListFloat64,
    #[serde(rename = "list<bool>")]
    ListBool,
}

/// What happens to a record whose value for a column is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the collection before the offending batch is committed, naming the record id and key.
    Fail,
    /// Leave the record out; it is counted, listed in the report, and excluded from validation.
    Skip,
    /// Write null instead (not allowed for `required` columns, the id or the vector). Spelled `set_null` because a bare `null` is YAML's null.
    SetNull,
}

/// An index built after the copy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    /// The indexed column (a name from `columns`).
    #[schemars(length(min = 1))]
    pub column: String,
    /// The index kind; `auto` (the default) chooses from the column: on the vector column the vector index docs/plan-reference.md describes (chosen by rows and dimension when it is built), on a scalar column `btree`, on a list column `label_list`.
    #[serde(rename = "type", default)]
    pub ty: IndexType,
    /// Distance metric for vector indexes; `auto` (default) uses the source collection's distance space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// IVF partitions for vector indexes (default: chosen by LanceDB from the row count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub num_partitions: Option<u32>,
    /// PQ sub-vectors for `ivf_pq` and `ivf_hnsw_pq` (default: chosen by LanceDB from the dimension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub num_sub_vectors: Option<u32>,
    /// Bits a code: for `ivf_pq`/`ivf_hnsw_pq` 4 or 8 (default 8), for `ivf_rq` 1 to 8 bits a dimension (default: Lance's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub num_bits: Option<u32>,
    /// Most k-means iterations when training IVF partitions (and PQ codebooks) for vector indexes (LanceDB's default: 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_iterations: Option<u32>,
    /// Training vectors a partition for vector indexes: k-means trains on `sample_rate × num_partitions` vectors (LanceDB's default: 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2))]
    pub sample_rate: Option<u32>,
}

/// Index kinds.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IndexType {
    /// Chosen from the column (the default): see `type` above.
    #[default]
    Auto,
    /// Vector: IVF with product quantization (LanceDB's own default).
    IvfPq,
    /// Vector: IVF without quantization (exact distances within a partition).
    IvfFlat,
    /// Vector: IVF with 8-bit scalar quantization.
    IvfSq,
    /// Vector: IVF with RaBitQ quantization.
    IvfRq,
    /// Vector: IVF partitions with HNSW and scalar quantization.
    IvfHnswSq,
    /// Vector: IVF partitions with HNSW and product quantization.
    IvfHnswPq,
    /// Full-text search on a string column.
    Fts,
    /// Scalar: B-tree, for high-cardinality scalar columns.
    Btree,
    /// Scalar: bitmap, for low-cardinality scalar columns.
    Bitmap,
    /// Scalar: label list, for list columns.
    LabelList,
}

/// Vector distance metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The source collection's distance space (l2, cosine or ip → l2, cosine or dot).
    Auto,
    L2,
    Cosine,
    Dot,
}

/// Post-copy checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateSpec {
    /// Records compared value by value: `all` (default) or a number for a seeded random sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Sample>,
    /// Seed for the sample (default 0), so a sample is reproducible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Lowest cosine similarity allowed between a source vector and its copy (default 0.99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1.0, max = 1.0))]
    pub min_cosine: Option<f64>,
    /// Row count check: `exact` (default), `skip`, or `{ tolerance: N }` rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<CountCheck>,
    /// Check that the id sets are equal, listing missing and extra ids (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<bool>,
    /// Compare documents (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<bool>,
    /// Compare metadata-derived columns (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<bool>,
    /// Search quality: recall@k of LanceDB's vector search (through the index, with these query settings) against an exact search in the source's distance space, on a seeded sample of the records' own vectors (default: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchSpec>,
}

/// The search-quality check: each query is a record's own vector; its exact `k` nearest rows (brute force, in the source collection's distance space) are compared with LanceDB's answer.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    /// Records used as queries, chosen by a seeded hash of their ids (`validate.seed`) (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub queries: Option<u32>,
    /// Nearest neighbours compared per query: recall@k (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub k: Option<u32>,
    /// Lowest mean recall@k allowed, in (0, 1]; below it validation fails and names the settings that would reach it (default: none, the recall is only reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_recall: Option<f64>,
    /// IVF partitions LanceDB searches per query, as the application will query (default: LanceDB's own choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub nprobes: Option<u32>,
    /// Re-rank `k × refine_factor` candidates by their exact distance (default: none, quantized distances only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub refine_factor: Option<u32>,
}

/// How many records the value checks compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Sample {
    /// `all`: every record.
    All(AllKeyword),
    /// A seeded random sample of this many records.
    Count(#[schemars(range(min = 1))] u64),
}

/// The keyword `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllKeyword {
    All,
}

/// The row count check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CountCheck {
    /// `exact` or `skip`.
    Keyword(CountKeyword),
    /// Allow the counts to differ by at most `tolerance` rows.
    Tolerance(CountTolerance),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CountKeyword {
    Exact,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountTolerance {
    /// The largest allowed difference in rows.
    pub tolerance: u64,
}

/// The JSON Schema of the plan format, as committed in `schemas/plan.schema.json`.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(PlanSpec);
    let mut value = serde_json::to_value(schema).expect("schema serializes");
    strip_null(&mut value);
    value
}

/// Optional keys are written by omitting them, never as `null`: schemars
/// renders `Option<T>` as "T or null", which lets `backup: ~` pass and turns
/// every error inside an optional mapping into a vague "matches no
/// alternative". Dropping the null branch keeps errors precise.
fn strip_null(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types[0].clone();
                    map.insert("type".into(), only);
                }
            }
            let single = match map.get("anyOf") {
                Some(Value::Array(alts)) if alts.len() == 2 => {
                    let is_null = |a: &Value| a.get("type") == Some(&Value::from("null"));
                    match (is_null(&alts[0]), is_null(&alts[1])) {
                        (true, false) => Some(alts[1].clone()),
                        (false, true) => Some(alts[0].clone()),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let (Some(Value::Object(inner)), true) = (single, map.contains_key("anyOf")) {
                map.remove("anyOf");
                for (k, val) in inner {
                    map.entry(k).or_insert(val);
                }
            }
            for val in map.values_mut() {
                strip_null(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// The schema as the text of `schemas/plan.schema.json` (pretty, newline-terminated).
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).expect("schema serializes");
    text.push('\n');
    text
}
