//! Semantic checks: from a well-shaped `PlanSpec` to a trustworthy `Plan`.
//!
//! The JSON Schema catches shape (types, unknown keys, enums); this module
//! catches meaning: duplicate tables, the number of vector columns, indexes on
//! missing or unsuitable columns, an `upsert` with nothing to match on, a
//! secret written in clear, and fills in every default. It reports every
//! problem it finds, each at the position of the value that is wrong.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::diagnostic::Diagnostic;
use super::model::*;
use super::spec::{self, PlanSpec};
use super::vars;
use super::yaml::{Node, Pos};

/// Looks up positions in the plan's YAML tree by JSON pointer.
pub struct Locator<'a> {
    pub root: &'a Node,
    pub file: PathBuf,
}

impl Locator<'_> {
    /// Position of the value at `pointer`, or of its nearest written ancestor.
    pub fn value(&self, pointer: &str) -> Pos {
        let mut p = pointer.to_string();
        loop {
            if let Some(n) = self.root.at_pointer(&p) {
                return n.pos;
            }
            match p.rfind('/') {
                Some(i) => p.truncate(i),
                None => return self.root.pos,
            }
        }
    }

    /// Position of the key `key` in the mapping at `pointer` (else the mapping).
    pub fn key(&self, pointer: &str, key: &str) -> Pos {
        self.root
            .entry_at(pointer, key)
            .map(|e| e.key_pos)
            .unwrap_or_else(|| self.value(pointer))
    }

    pub fn diag(
        &self,
        pos: Pos,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            secret: false,
            file: self.file.clone(),
            pos,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a small edit distance.
pub fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Whether a raw YAML value is exactly one `${VAR}` with no default: the
/// only way a secret may appear in a plan.
fn is_whole_reference(raw_text: &str) -> bool {
    let refs = vars::references(raw_text);
    refs.len() == 1
        && refs[0].default.is_none()
        && raw_text.trim() == format!("${{{}}}", refs[0].name)
}

fn valid_plan_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
}

/// Checks a spec and resolves it into a [`Plan`]. `raw` is the tree before
/// interpolation, used to see how a secret was written.
pub fn check(spec: PlanSpec, loc: &Locator, raw: &Node) -> Result<Plan, Vec<Diagnostic>> {
    let mut errs = Vec::new();

    if spec.version != 1 {
        errs.push(loc.diag(
            loc.value("/version"),
            format!(
                "plan format version {} is not supported; this lanceferry reads version 1",
                spec.version
            ),
            "set `version: 1`, or upgrade lanceferry if the plan was written for a newer one",
        ));
    }

    // The name becomes a directory and file names under `state.path`.
    if !valid_plan_name(&spec.name) {
        errs.push(loc.diag(
            loc.value("/name"),
            format!("`{}` is not a usable plan name", spec.name),
            "use letters, digits, `_`, `-` and `.` (not first): the name becomes file names under `state.path`",
        ));
    }

    let source = check_source(&spec.source, loc, raw, &mut errs);

    let target = match &spec.target {
        spec::TargetSpec::Lancedb(t) => {
            if t.uri.trim().is_empty() {
                errs.push(loc.diag(
                    loc.value("/target/lancedb/uri"),
                    "the LanceDB `uri` is empty",
                    "set `target.lancedb.uri` to a directory such as `./lancedb`",
                ));
            } else if let Some(scheme) = unsupported_scheme(&t.uri) {
                errs.push(loc.diag(
                    loc.value("/target/lancedb/uri"),
                    format!("this build of lanceferry cannot write `{scheme}://` URIs"),
                    format!(
                        "this build writes to local directories and {SUPPORTED_SCHEMES}; for `{scheme}://`, build lanceferry with LanceDB's matching feature (see the README), or use a mounted bucket as a local path"
                    ),
                ));
            }
            let storage_options: Vec<(String, String)> = t
                .storage_options
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            for (key, _) in &storage_options {
                if !super::redact::looks_secret(key) {
                    continue;
                }
                let pointer = format!(
                    "/target/lancedb/storage_options/{}",
                    key.replace('~', "~0").replace('/', "~1")
                );
                let raw_text = match raw.at_pointer(&pointer).map(|n| &n.kind) {
                    Some(super::yaml::NodeKind::Scalar { text, .. }) => text.clone(),
                    _ => String::new(),
                };
                if !is_whole_reference(&raw_text) {
                    errs.push(loc.diag(
                        loc.value(&pointer),
                        format!("storage option `{key}` holds a secret written in the plan instead of coming from a variable"),
                        format!("write `{key}: ${{VAR}}` and pass the value with `--var`, `--var-file` or the environment; plans live in git and must hold no secrets"),
                    ).secret());
                }
            }
            Target {
                uri: t.uri.clone(),
                storage_options,
            }
        }
    };

    let defaults = spec.defaults.clone().unwrap_or_default();
    let default_mode = defaults.mode.unwrap_or(Mode::Create);
    let default_batch = defaults.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);

    let backup = spec.backup.as_ref().map(|b| Backup {
        dir: PathBuf::from(&b.dir),
        keep: b.keep.unwrap_or(DEFAULT_BACKUP_KEEP),
    });

    let mut collections = Vec::new();
    let mut tables: HashMap<String, usize> = HashMap::new();
    for (ci, cs) in spec.collections.iter().enumerate() {
        let cp = format!("/collections/{ci}");
        let table = cs.table.clone().unwrap_or_else(|| cs.source.clone());
        let table_pos = if cs.table.is_some() {
            loc.value(&format!("{cp}/table"))
        } else {
            loc.value(&format!("{cp}/source"))
        };
        if !valid_table_name(&table) {
            errs.push(loc.diag(
                table_pos,
                format!("`{table}` is not a valid LanceDB table name"),
                "use letters, digits, `_`, `-` and `.` (not first); set `table:` to rename the source collection",
            ));
        }
        if let Some(first) = tables.insert(table.clone(), ci) {
            errs.push(loc.diag(
                table_pos,
                format!(
                    "table `{table}` is written by collections {} and {}",
                    first + 1,
                    ci + 1
                ),
                "give each collection its own `table:`; two copies into one table would overwrite each other",
            ));
        }
        let mode = cs.mode.unwrap_or(default_mode);
        let ctx = format!("in collection `{}`", cs.source);
        let (columns, default_columns) = check_columns(cs, &cp, &ctx, loc, &mut errs);

        // A column whose `from` did not parse was already reported; counting
        // vector and id columns without it would only add a confusing error.
        let all_from_parsed = cs.columns.as_ref().is_none_or(|c| c.len() == columns.len());
        let vector_cols: Vec<&Column> = columns
            .iter()
            .filter(|c| c.from == Field::Embedding)
            .collect();
        if vector_cols.is_empty() && !columns.is_empty() && all_from_parsed {
            errs.push(loc.diag(
                loc.key(&cp, "columns"),
                format!("{ctx}: no column is mapped from `embedding`"),
                "add `- { name: vector, from: embedding }`; lanceferry migrates vectors and never re-embeds",
            ));
        }
        if vector_cols.len() > 1 {
            let second = columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.from == Field::Embedding)
                .nth(1)
                .map(|(i, _)| i)
                .unwrap_or(0);
            errs.push(loc.diag(
                loc.value(&format!("{cp}/columns/{second}/from")),
                format!(
                    "{ctx}: two columns (`{}` and `{}`) are mapped from `embedding`",
                    vector_cols[0].name, vector_cols[1].name
                ),
                "keep exactly one vector column per table",
            ));
        }
        if all_from_parsed && !columns.is_empty() && !columns.iter().any(|c| c.from == Field::Id) {
            // Resume, upsert and verification all match rows on the id.
            errs.push(loc.diag(
                loc.key(&cp, "columns"),
                format!("{ctx}: no column is mapped from `id`"),
                "add `- { name: id, from: id }`; apply resumes, upserts and verifies by record id",
            ));
        }

        let indexes = check_indexes(cs, &cp, &ctx, &columns, loc, &mut errs);
        let validate = check_validate(cs, &cp, &ctx, loc, &mut errs);
        let mut nolint = Vec::new();
        for (i, n) in cs.nolint.iter().flatten().enumerate() {
            if crate::diff::lint::Code::parse(&n.code).is_none() {
                errs.push(loc.diag(
                    loc.value(&format!("{cp}/nolint/{i}/code")),
                    format!("{ctx}: `{}` is not a lint code", n.code),
                    format!(
                        "the codes are {} (docs/lint.md)",
                        crate::diff::lint::Code::ALL
                            .iter()
                            .map(|c| format!("`{}`", c.id()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if let Some(code) = crate::diff::lint::Code::parse(&n.code)
                && !code.acceptable()
            {
                errs.push(loc.diag(
                    loc.value(&format!("{cp}/nolint/{i}/code")),
                    format!("{ctx}: `{}` cannot be accepted: it means apply would stop at this collection", n.code),
                    "fix what the finding names (docs/lint.md); for DS102 use `mode: upsert` or `apply --allow-duplicates`",
                ));
            }
            if n.reason.trim().is_empty() {
                errs.push(loc.diag(
                    loc.value(&format!("{cp}/nolint/{i}/reason")),
                    format!("{ctx}: accepting `{}` needs a reason", n.code),
                    "say why the finding is acceptable; reviewers read it in every plan",
                ));
            }
            nolint.push((n.code.clone(), n.reason.trim().to_string()));
        }

        collections.push(Collection {
            source: cs.source.clone(),
            table,
            mode,
            batch_size: cs.batch_size.unwrap_or(default_batch),
            columns,
            indexes,
            validate,
            default_columns,
            nolint,
        });
    }

    if !errs.is_empty() {
        errs.sort_by_key(|d| d.pos);
        return Err(errs);
    }
    Ok(Plan {
        name: spec.name,
        file: loc.file.clone(),
        source: source.expect("no errors means the source resolved"),
        target,
        state_dir: PathBuf::from(
            spec.state
                .as_ref()
                .map(|s| s.path.as_str())
                .unwrap_or(DEFAULT_STATE_DIR),
        ),
        backup,
        mirror_journal_max_mb: spec.mirror.as_ref().and_then(|m| m.journal_max_mb),
        concurrency: defaults.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
        checkpoint_rows: defaults.checkpoint_rows.unwrap_or(DEFAULT_CHECKPOINT_ROWS),
        collections,
    })
}

fn check_source(
    source: &spec::SourceSpec,
    loc: &Locator,
    raw: &Node,
    errs: &mut Vec<Diagnostic>,
) -> Option<Source> {
    match source {
        spec::SourceSpec::Chroma(c) => {
            let base = "/source/chroma";
            match (&c.path, &c.url) {
                (Some(_), Some(_)) => {
                    errs.push(loc.diag(
                        loc.key(base, "url"),
                        "the Chroma source has both `path` and `url`",
                        "keep `path` to read a persistent directory directly, or `url` to read a running server, not both",
                    ));
                    None
                }
                (None, None) => {
                    errs.push(loc.diag(
                        loc.key("/source", "chroma"),
                        "the Chroma source has neither `path` nor `url`",
                        "add `path: ./chroma_db` (a persistent directory) or `url: http://127.0.0.1:8000` (a server)",
                    ));
                    None
                }
                (Some(path), None) => {
                    // `tenant` and `database` choose which of the directory's
                    // databases is read, as they do on a server.
                    for key in ["token", "token_header", "timeout_secs", "ca_cert"] {
                        if raw.entry_at(base, key).is_some() {
                            errs.push(loc.diag(
                                loc.key(base, key),
                                format!("`{key}` only applies to a Chroma server (`url`), not to a directory (`path`)"),
                                format!("remove `{key}`, or read from a server with `url:`"),
                            ));
                        }
                    }
                    if path.trim().is_empty() {
                        errs.push(loc.diag(
                            loc.value(&format!("{base}/path")),
                            "the Chroma `path` is empty",
                            "set it to the directory holding `chroma.sqlite3`",
                        ));
                    }
                    Some(Source::ChromaDir {
                        path: PathBuf::from(path),
                        tenant: c.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.into()),
                        database: c
                            .database
                            .clone()
                            .unwrap_or_else(|| DEFAULT_DATABASE.into()),
                    })
                }
                (None, Some(url)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://"))
                        || url.len() <= "https://".len()
                    {
                        errs.push(loc.diag(
                            loc.value(&format!("{base}/url")),
                            format!(
                                "`{}` is not an http:// or https:// URL",
                                super::redact::url(url)
                            ),
                            "write the server's base URL, e.g. `http://127.0.0.1:8000`",
                        ));
                    }
                    let token = match &c.token {
                        None => None,
                        Some(value) => {
                            let raw_text = match raw
                                .at_pointer(&format!("{base}/token"))
                                .map(|n| &n.kind)
                            {
                                Some(super::yaml::NodeKind::Scalar { text, .. }) => text.clone(),
                                _ => String::new(),
                            };
                            let refs = vars::references(&raw_text);
                            if !is_whole_reference(&raw_text) {
                                errs.push(loc.diag(
                                    loc.value(&format!("{base}/token")),
                                    "the token is written in the plan instead of coming from a variable",
                                    "write `token: ${CHROMA_TOKEN}` and pass the value with `--var`, `--var-file` or the environment; plans live in git and must hold no secrets",
                                ).secret());
                                None
                            } else {
                                Some(Secret::new(value.clone(), refs[0].name.clone()))
                            }
                        }
                    };
                    Some(Source::ChromaHttp {
                        url: url.trim_end_matches('/').to_string(),
                        tenant: c.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.into()),
                        database: c
                            .database
                            .clone()
                            .unwrap_or_else(|| DEFAULT_DATABASE.into()),
                        token,
                        token_header: c.token_header.unwrap_or(TokenHeader::XChromaToken),
                        timeout_secs: c.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
                        ca_cert: c.ca_cert.as_ref().map(PathBuf::from),
                    })
                }
            }
        }
        spec::SourceSpec::Jsonl(j) => Some(Source::Jsonl {
            path: PathBuf::from(&j.path),
            space: j.space.unwrap_or(DistanceSpace::L2),
        }),
    }
}

/// The mapping used when a collection omits `columns`.
pub fn default_columns() -> Vec<Column> {
    let col = |name: &str, from: Field, ty: ColumnType| Column {
        name: name.into(),
        from,
        ty,
        dim: None,
        required: false,
        on_error: OnError::Fail,
        coerce: false,
    };
    vec![
        col("id", Field::Id, ColumnType::String),
        col("document", Field::Document, ColumnType::String),
        col("uri", Field::Uri, ColumnType::String),
        col("vector", Field::Embedding, ColumnType::Vector),
        col("metadata", Field::Metadata, ColumnType::Json),
    ]
}

fn allowed_types(from: &Field) -> &'static [ColumnType] {
    use ColumnType::*;
    match from {
        Field::Id => &[String],
        Field::Document | Field::Uri => &[String],
        Field::Embedding => &[Vector],
        Field::Metadata => &[Json, String],
        Field::MetadataKey(_) => &[
            String,
            Int64,
            Float64,
            Bool,
            Json,
            ListString,
            ListInt64,
            ListFloat64,
            ListBool,
        ],
    }
}

fn check_columns(
    cs: &spec::CollectionSpec,
    cp: &str,
    ctx: &str,
    loc: &Locator,
    errs: &mut Vec<Diagnostic>,
) -> (Vec<Column>, bool) {
    let Some(specs) = &cs.columns else {
        return (default_columns(), true);
    };
    let mut out = Vec::new();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in specs.iter().enumerate() {
        let p = format!("{cp}/columns/{i}");
        if let Some(first) = names.insert(c.name.as_str(), i) {
            errs.push(loc.diag(
                loc.value(&format!("{p}/name")),
                format!(
                    "{ctx}: column `{}` is defined twice (columns {} and {})",
                    c.name,
                    first + 1,
                    i + 1
                ),
                "give every column a distinct `name`",
            ));
        }
        let Some(from) = Field::parse(&c.from) else {
            let suggestion = closest(&c.from, ["id", "document", "uri", "embedding", "metadata"])
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default();
            errs.push(loc.diag(
                loc.value(&format!("{p}/from")),
                format!("{ctx}: `{}` is not a source field", c.from),
                format!(
                    "{suggestion}`from` takes {}",
                    Field::NAMES.map(|n| format!("`{n}`")).join(", ")
                ),
            ));
            continue;
        };
        let allowed = allowed_types(&from);
        let ty = match (c.ty, &from) {
            (Some(t), _) => {
                if !allowed.contains(&t) {
                    errs.push(loc.diag(
                        loc.value(&format!("{p}/type")),
                        format!(
                            "{ctx}: column `{}` from `{from}` cannot have type `{t}`",
                            c.name
                        ),
                        format!(
                                "use {}",
                                allowed
                                    .iter()
                                    .map(|t| format!("`{t}`"))
                                    .collect::<Vec<_>>()
                                    .join(" or ")
                            ),
                    ));
                }
                t
            }
            (None, Field::MetadataKey(key)) => {
                errs.push(loc.diag(
                    loc.value(&format!("{p}/from")),
                    format!("{ctx}: column `{}` from metadata key `{key}` needs a `type`", c.name),
                    "add `type: string` (or int64, float64, bool, json, list<...>); `lanceferry inspect` shows the types each key holds",
                ));
                ColumnType::String
            }
            (None, _) => allowed[0],
        };
        if c.dim.is_some() && from != Field::Embedding {
            errs.push(loc.diag(
                loc.key(&p, "dim"),
                format!(
                    "{ctx}: `dim` is only for the column from `embedding`, not `{}`",
                    c.name
                ),
                "remove `dim` from this column",
            ));
        }
        let required = c.required.unwrap_or(false);
        let on_error = c.on_error.unwrap_or(OnError::Fail);
        if on_error == OnError::SetNull
            && (required || from == Field::Id || from == Field::Embedding)
        {
            errs.push(loc.diag(
                loc.value(&format!("{p}/on_error")),
                format!("{ctx}: column `{}` cannot fall back to null", c.name),
                if from == Field::Id || from == Field::Embedding {
                    "ids and vectors are never null; use `on_error: skip` to leave bad records out, or `fail`"
                } else {
                    "a `required` column cannot be null; use `on_error: skip` or drop `required: true`"
                },
            ));
        }
        out.push(Column {
            name: c.name.clone(),
            from,
            ty,
            dim: c.dim,
            required,
            on_error,
            coerce: c.coerce.unwrap_or(false),
        });
    }
    (out, false)
}

/// The vector index kinds, `auto` among them.
const VECTOR_KINDS: &[IndexType] = &[
    IndexType::Auto,
    IndexType::IvfPq,
    IndexType::IvfFlat,
    IndexType::IvfSq,
    IndexType::IvfRq,
    IndexType::IvfHnswSq,
    IndexType::IvfHnswPq,
];

fn check_indexes(
    cs: &spec::CollectionSpec,
    cp: &str,
    ctx: &str,
    columns: &[Column],
    loc: &Locator,
    errs: &mut Vec<Diagnostic>,
) -> Vec<Index> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, ix) in cs.indexes.iter().flatten().enumerate() {
        let p = format!("{cp}/indexes/{i}");
        let Some(col) = columns.iter().find(|c| c.name == ix.column) else {
            if columns.is_empty() {
                continue;
            }
            let suggestion = closest(&ix.column, columns.iter().map(|c| c.name.as_str()))
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default();
            errs.push(loc.diag(
                loc.value(&format!("{p}/column")),
                format!(
                    "{ctx}: index on `{}`, which is not a column of the table",
                    ix.column
                ),
                format!(
                    "{suggestion}the columns are {}",
                    columns.iter().map(|c| format!("`{}`", c.name)).collect::<Vec<_>>().join(", ")
                ),
            ));
            continue;
        };
        // `auto` takes its kind from the column: a vector index on the
        // vector column (chosen when built, from rows and dimension), a
        // B-tree on a scalar, a label list on a list.
        let kind = match (ix.ty, col.ty) {
            (IndexType::Auto, ColumnType::Vector) => IndexType::Auto,
            (IndexType::Auto, t) if t.is_scalar() => IndexType::Btree,
            (IndexType::Auto, t) if t.is_list() => IndexType::LabelList,
            (kind, _) => kind,
        };
        let fits = if kind.is_vector() {
            col.ty == ColumnType::Vector
        } else {
            match kind {
                IndexType::Fts => col.ty == ColumnType::String,
                IndexType::Btree | IndexType::Bitmap => col.ty.is_scalar(),
                IndexType::LabelList => col.ty.is_list(),
                _ => false,
            }
        };
        if !fits {
            let wanted = if kind.is_vector() {
                "the vector column".to_string()
            } else {
                match kind {
                    IndexType::Fts => "a `string` column".into(),
                    IndexType::LabelList => "a `list<...>` column".into(),
                    _ => "a string, int64, float64 or bool column".into(),
                }
            };
            let better = match col.ty {
                ColumnType::Vector => {
                    "`auto` (or ivf_pq, ivf_flat, ivf_sq, ivf_rq, ivf_hnsw_sq, ivf_hnsw_pq)"
                }
                ColumnType::String => "`fts`, `btree` or `bitmap`",
                ColumnType::Int64 | ColumnType::Float64 | ColumnType::Bool => "`btree` or `bitmap`",
                ColumnType::Json => "no index (JSON text is not indexable)",
                _ => "`label_list`",
            };
            errs.push(loc.diag(
                loc.value(&format!("{p}/type")),
                format!(
                    "{ctx}: an index of type `{kind}` needs {wanted}, but `{}` is `{}`",
                    col.name, col.ty
                ),
                format!("for a `{}` column use {better}", col.ty),
            ));
        }
        if ix.metric.is_some() && !kind.is_vector() {
            errs.push(loc.diag(
                loc.key(&p, "metric"),
                format!("{ctx}: `metric` only applies to vector indexes, not `{kind}`"),
                "remove `metric` from this index",
            ));
        }
        // Each knob, the kinds it applies to. `auto` takes the IVF knobs
        // (every kind it may choose has them), not the quantizer's: those
        // need the kind named.
        let knobs: [(&str, bool, &[IndexType], &str); 5] = [
            (
                "num_sub_vectors",
                ix.num_sub_vectors.is_some(),
                &[IndexType::IvfPq, IndexType::IvfHnswPq],
                "remove it, or name the kind: `type: ivf_pq`",
            ),
            (
                "num_bits",
                ix.num_bits.is_some(),
                &[IndexType::IvfPq, IndexType::IvfHnswPq, IndexType::IvfRq],
                "remove it, or name the kind: `type: ivf_pq` or `ivf_rq`",
            ),
            (
                "num_partitions",
                ix.num_partitions.is_some(),
                VECTOR_KINDS,
                "remove it from this index",
            ),
            (
                "max_iterations",
                ix.max_iterations.is_some(),
                VECTOR_KINDS,
                "remove it from this index",
            ),
            (
                "sample_rate",
                ix.sample_rate.is_some(),
                VECTOR_KINDS,
                "remove it from this index",
            ),
        ];
        for (name, set, kinds, hint) in knobs {
            if set && !kinds.contains(&kind) {
                let what = if kinds == VECTOR_KINDS {
                    "vector indexes".to_string()
                } else {
                    kinds
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                errs.push(loc.diag(
                    loc.key(&p, name),
                    format!("{ctx}: `{name}` only applies to {what}, not `{kind}`"),
                    hint,
                ));
            }
        }
        if let Some(bits) = ix.num_bits {
            let pq = matches!(kind, IndexType::IvfPq | IndexType::IvfHnswPq);
            if pq && bits != 4 && bits != 8 {
                errs.push(loc.diag(
                    loc.value(&format!("{p}/num_bits")),
                    format!("{ctx}: `{kind}` codes with 4 or 8 bits, not {bits}"),
                    "use `num_bits: 8` (the default) or 4",
                ));
            }
        }
        // Lance keeps one index per column and family; a second would replace the first.
        let family = if kind.is_vector() {
            "vector".to_string()
        } else {
            kind.to_string()
        };
        if let Some(first) = seen.insert((col.name.clone(), family), i) {
            errs.push(loc.diag(
                loc.value(&format!("{p}/column")),
                format!(
                    "{ctx}: column `{}` is indexed twice (indexes {} and {})",
                    col.name,
                    first + 1,
                    i + 1
                ),
                "keep one index of each kind per column; the second would replace the first",
            ));
        }
        out.push(Index {
            column: ix.column.clone(),
            kind,
            metric: ix.metric.unwrap_or(Metric::Auto),
            num_partitions: ix.num_partitions,
            num_sub_vectors: ix.num_sub_vectors,
            num_bits: ix.num_bits,
            max_iterations: ix.max_iterations,
            sample_rate: ix.sample_rate,
        });
    }
    out
}

fn check_validate(
    cs: &spec::CollectionSpec,
    cp: &str,
    ctx: &str,
    loc: &Locator,
    errs: &mut Vec<Diagnostic>,
) -> Validate {
    let mut v = Validate::default();
    let Some(vs) = &cs.validate else {
        return v;
    };
    let p = format!("{cp}/validate");
    if let Some(m) = vs.min_cosine {
        if !(m > 0.0 && m <= 1.0) {
            errs.push(loc.diag(
                loc.value(&format!("{p}/min_cosine")),
                format!("{ctx}: `min_cosine: {m}` is outside (0, 1]"),
                "use a similarity such as 0.99 (the original tool's threshold) or 0.999999 for bit-exact copies",
            ));
        }
        v.min_cosine = m;
    }
    v.sample = match vs.sample {
        None | Some(spec::Sample::All(_)) => SampleSize::All,
        Some(spec::Sample::Count(n)) => SampleSize::Records(n),
    };
    v.seed = vs.seed.unwrap_or(0);
    v.count = match vs.count {
        None | Some(spec::CountCheck::Keyword(spec::CountKeyword::Exact)) => CountRule::Exact,
        Some(spec::CountCheck::Keyword(spec::CountKeyword::Skip)) => CountRule::Skip,
        Some(spec::CountCheck::Tolerance(t)) => CountRule::Tolerance(t.tolerance),
    };
    v.ids = vs.ids.unwrap_or(true);
    v.content = vs.content.unwrap_or(true);
    v.metadata = vs.metadata.unwrap_or(true);
    // A collection without a vector index may be searched too: LanceDB
    // then searches by brute force, and the check measures that path.
    if let Some(s) = &vs.search {
        let sp = format!("{p}/search");
        // The schema refuses 0 already; the rule is the model's, stated here.
        for (key, value) in [
            ("queries", s.queries),
            ("k", s.k),
            ("nprobes", s.nprobes),
            ("refine_factor", s.refine_factor),
        ] {
            if value == Some(0) {
                errs.push(loc.diag(
                    loc.value(&format!("{sp}/{key}")),
                    format!("{ctx}: `validate.search.{key}` must be at least 1"),
                    "write a positive number, or leave the key out for the default",
                ));
            }
        }
        if let Some(r) = s.min_recall
            && !(r > 0.0 && r <= 1.0)
        {
            errs.push(loc.diag(
                loc.value(&format!("{sp}/min_recall")),
                format!("{ctx}: `min_recall: {r}` is outside (0, 1]"),
                "use the share of the exact nearest neighbours LanceDB must find, such as 0.95; leave it out to report the recall without failing",
            ));
        }
        v.search = Some(SearchCheck {
            queries: s.queries.unwrap_or(DEFAULT_SEARCH_QUERIES),
            k: s.k.unwrap_or(DEFAULT_SEARCH_K),
            min_recall: s.min_recall,
            nprobes: s.nprobes,
            refine_factor: s.refine_factor,
        });
    }
    v
}

/// Object stores this build writes (LanceDB's `aws` feature).
const SUPPORTED_SCHEMES: &str =
    "`s3://` (also S3-compatible stores through `storage_options`), and `memory://`";

/// The scheme of a target URI this build cannot write (`gs`, `az`, ...);
/// `None` for a local path or a supported store.
fn unsupported_scheme(uri: &str) -> Option<&str> {
    let (scheme, _) = uri.split_once("://")?;
    match scheme.to_ascii_lowercase().as_str() {
        "file" | "s3" | "s3+ddb" | "memory" => None,
        _ => Some(scheme),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("colums", "columns"), 1);
        assert_eq!(closest("embeding", ["id", "embedding"]), Some("embedding"));
        assert_eq!(closest("zzz", ["id", "embedding"]), None);
    }

    #[test]
    fn fields_parse() {
        assert_eq!(
            Field::parse("metadata.node_id"),
            Some(Field::MetadataKey("node_id".into()))
        );
        assert_eq!(Field::parse("metadata."), None);
        assert_eq!(Field::parse("embeddings"), None);
    }
}
