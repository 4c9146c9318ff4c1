//! Saved plans: `plan --out FILE`, then `apply FILE` applies exactly that.
//!
//! A saved plan holds the plan file's text as written (its `${VAR}`
//! references intact), the values of the variables it resolved with, and
//! the facts it was made against: the fingerprint, the target, each table's
//! version, rows and schema hash, each source collection's count and
//! fingerprint, and the report the reviewer read. `apply FILE` loads the
//! text with exactly those values (`--var` and `--var-file` are refused:
//! other values are another plan, to be planned and reviewed), requires the
//! same fingerprint, and, holding the lock, requires the same facts:
//! anything that moved is named, and no table is written. A plan made
//! against staging therefore never applies to prod.
//!
//! Secrets never enter the file: a variable used by the token or by a
//! secret-looking storage option, a variable whose name looks secret, and
//! one whose value is a URL with userinfo are recorded by name only and
//! read from the environment at apply. The file is created with mode 0600.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DiffError, PlanReport};
use crate::plan::{Plan, Source as SourceSpec, Vars, redact};
use crate::source::Source;
use crate::target::LanceTarget;

pub const KIND: &str = "lanceferry-saved-plan";
pub const SAVED_FORMAT: &str = "1.0";

#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("cannot read saved plan `{path}`: {source}\nhint: check the path")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{path}` is not a saved plan of this lanceferry: {reason}\nhint: make one with `lanceferry plan PLAN --out {path}`"
    )]
    NotSaved { path: PathBuf, reason: String },
    #[error(
        "cannot write saved plan `{path}`: {source}\nhint: check that the directory is writable"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "saved plan `{path}` is stale: {}\nhint: the target or the source moved since the plan was made; run `lanceferry plan {plan_file} --out {path}` again, review it, and apply that",
        moved.join("; ")
    )]
    Stale {
        path: PathBuf,
        plan_file: String,
        moved: Vec<String>,
    },
}

/// What one table was when the plan was made (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableAt {
    pub version: u64,
    pub rows: u64,
    /// SHA-256 of its `name: type` schema lines.
    pub schema: String,
}

/// What one source collection was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionAt {
    pub count: u64,
    /// SHA-256 of its id, count, dimension, space and metadata.
    pub fingerprint: String,
}

/// Everything a saved plan was made against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub fingerprint: String,
    pub target: String,
    pub tables: BTreeMap<String, Option<TableAt>>,
    pub collections: BTreeMap<String, CollectionAt>,
}

/// The file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    pub kind: String,
    pub format_version: String,
    pub tool_version: String,
    pub created: chrono::DateTime<chrono::Utc>,
    /// The plan file as given to `plan`.
    pub plan_file: String,
    /// Its text, as written.
    pub plan_yaml: String,
    /// Values of the variables it resolved with (secrets excluded).
    pub variables: BTreeMap<String, String>,
    /// Variables read from the environment at apply (their values are secret).
    pub secret_variables: Vec<String>,
    /// Planned as `apply --allow-duplicates` (and so applied).
    #[serde(default)]
    pub allow_duplicates: bool,
    pub facts: Facts,
    /// What the reviewer read.
    pub report: serde_json::Value,
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Gathers the facts a saved plan pins, reading both sides (no writes).
pub async fn facts(
    plan: &Plan,
    source: &dyn Source,
    target: Option<&LanceTarget>,
) -> Result<Facts, DiffError> {
    let mut tables = BTreeMap::new();
    let mut collections = BTreeMap::new();
    for c in &plan.collections {
        let info = source.collection(&c.source).await?;
        let fp = serde_json::json!({
            "id": info.id, "count": info.count, "dimension": info.dimension,
            "space": info.space, "metadata": info.metadata,
        });
        collections.insert(
            c.source.clone(),
            CollectionAt {
                count: info.count,
                fingerprint: sha256(fp.to_string().as_bytes()),
            },
        );
        let at = match target {
            Some(t) => match t.version(&c.table).await? {
                Some(v) => {
                    let (f, _) = super::table_facts(t, &c.table, v).await?;
                    Some(TableAt {
                        version: v.version,
                        rows: v.rows,
                        schema: sha256(f.schema.join("\n").as_bytes()),
                    })
                }
                None => None,
            },
            None => None,
        };
        tables.insert(c.table.clone(), at);
    }
    Ok(Facts {
        fingerprint: plan.fingerprint(),
        target: redact::url(&crate::state::resolve_target(&plan.target.uri)),
        tables,
        collections,
    })
}

/// [`facts`] of a plan, opening both sides (a local target that does not
/// exist yet is not connected to, as in [`super::plan`]).
pub async fn current_facts(plan: &Plan) -> Result<Facts, DiffError> {
    let source = crate::source::open(&plan.source)?;
    let target = if super::target_exists(&plan.target.uri) {
        Some(LanceTarget::connect(&plan.target).await?)
    } else {
        None
    };
    facts(plan, source.as_ref(), target.as_ref()).await
}

/// What moved between the saved facts and now, in words.
pub fn moved(saved: &Facts, now: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    if saved.fingerprint != now.fingerprint {
        out.push("the plan resolves to something else now (its file or variables changed)".into());
    }
    for (table, then) in &saved.tables {
        let now_t = now.tables.get(table).cloned().flatten();
        match (then, &now_t) {
            (None, Some(n)) => out.push(format!(
                "table `{table}` exists now (version {}, {} rows); the plan was made without it",
                n.version, n.rows
            )),
            (Some(t), None) => out.push(format!(
                "table `{table}` is gone; the plan was made at version {}",
                t.version
            )),
            (Some(t), Some(n)) if t.version != n.version => out.push(format!(
                "table `{table}` is at version {}; the plan was made at version {}",
                n.version, t.version
            )),
            (Some(t), Some(n)) if t.schema != n.schema => out.push(format!(
                "table `{table}` has another schema than when the plan was made"
            )),
            _ => {}
        }
    }
    for (name, then) in &saved.collections {
        match now.collections.get(name) {
            None => out.push(format!("source collection `{name}` is gone")),
            Some(n) if n.count != then.count => out.push(format!(
                "source collection `{name}` has {} records; the plan was made with {}",
                n.count, then.count
            )),
            Some(n) if n.fingerprint != then.fingerprint => out.push(format!(
                "source collection `{name}` changed (its id, dimension, space or metadata)"
            )),
            _ => {}
        }
    }
    out
}

/// The names of the variables whose values must not be written down.
fn secret_variables(text: &str, plan: &Plan, vars: &Vars) -> Vec<String> {
    let mut secret = std::collections::BTreeSet::new();
    if let SourceSpec::ChromaHttp { token: Some(t), .. } = &plan.source {
        secret.insert(t.variable.clone());
    }
    if let Ok(raw) = crate::plan::yaml::parse(text) {
        // A variable written inside a URL's userinfo (`https://u:${PW}@h`).
        for pointer in ["/source/chroma/url", "/target/lancedb/uri"] {
            if let Some(crate::plan::yaml::NodeKind::Scalar { text, .. }) =
                raw.at_pointer(pointer).map(|n| &n.kind)
                && let Some(at) = text.rfind('@')
            {
                secret.extend(
                    crate::plan::vars::references(text)
                        .into_iter()
                        .filter(|r| r.offset < at)
                        .map(|r| r.name),
                );
            }
        }
        for (key, _) in &plan.target.storage_options {
            if !redact::looks_secret(key) {
                continue;
            }
            let pointer = format!(
                "/target/lancedb/storage_options/{}",
                key.replace('~', "~0").replace('/', "~1")
            );
            if let Some(crate::plan::yaml::NodeKind::Scalar { text, .. }) =
                raw.at_pointer(&pointer).map(|n| &n.kind)
            {
                secret.extend(
                    crate::plan::vars::references(text)
                        .into_iter()
                        .map(|r| r.name),
                );
            }
        }
    }
    for r in crate::plan::vars::references(text) {
        let value = vars.get(&r.name).unwrap_or_default();
        if redact::looks_secret(&r.name) || redact::url(&value) != value {
            secret.insert(r.name);
        }
    }
    secret.into_iter().collect()
}

/// Writes a saved plan (mode 0600, atomically).
pub fn save(
    path: &Path,
    plan_file: &Path,
    plan: &Plan,
    vars: &Vars,
    facts: Facts,
    report: &PlanReport,
    opts: super::PlanOptions,
) -> Result<(), SavedError> {
    let text = std::fs::read_to_string(plan_file).map_err(|source| SavedError::Read {
        path: plan_file.to_path_buf(),
        source,
    })?;
    let secret = secret_variables(&text, plan, vars);
    let mut variables = BTreeMap::new();
    for r in crate::plan::vars::references(&text) {
        if secret.contains(&r.name) {
            continue;
        }
        if let Some(v) = vars.get(&r.name).or(r.default) {
            variables.insert(r.name, v);
        }
    }
    let saved = SavedPlan {
        kind: KIND.into(),
        format_version: SAVED_FORMAT.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created: chrono::Utc::now(),
        plan_file: plan_file.display().to_string(),
        plan_yaml: text,
        variables,
        secret_variables: secret,
        allow_duplicates: opts.allow_duplicates,
        facts,
        report: serde_json::to_value(report).expect("the report serializes"),
    };
    let bytes = serde_json::to_vec_pretty(&saved).expect("a saved plan serializes");
    let write = |source| SavedError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = path.with_extension(format!("partial.{}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(d) = dir {
            std::fs::create_dir_all(d).map_err(write)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write)?;
        f.write_all(&bytes).map_err(write)?;
        f.sync_all().map_err(write)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write(e)
    })
}

/// Reads `path` if it is a saved plan; `None` if it is something else (a
/// plan's YAML).
pub fn read(path: &Path) -> Result<Option<SavedPlan>, SavedError> {
    let text = std::fs::read_to_string(path).map_err(|source| SavedError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !text.trim_start().starts_with('{') {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| SavedError::NotSaved {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if value.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
        return Ok(None);
    }
    let major = |v: &str| v.split('.').next().unwrap_or("").to_string();
    let found = value
        .get("format_version")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if major(found) != major(SAVED_FORMAT) {
        return Err(SavedError::NotSaved {
            path: path.to_path_buf(),
            reason: format!("format {found}, this lanceferry reads {SAVED_FORMAT}"),
        });
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| SavedError::NotSaved {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

impl SavedPlan {
    /// The variables to load the plan with: the saved values, and the
    /// environment for the secret ones (which only it holds).
    pub fn vars(&self) -> Vars {
        let mut vars = Vars::from_env();
        for (k, v) in &self.variables {
            vars.set(k, v);
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            fingerprint: "f".into(),
            target: "/db".into(),
            tables: BTreeMap::from([
                (
                    "a".to_string(),
                    Some(TableAt {
                        version: 5,
                        rows: 10,
                        schema: "s".into(),
                    }),
                ),
                ("b".to_string(), None),
            ]),
            collections: BTreeMap::from([(
                "a".to_string(),
                CollectionAt {
                    count: 10,
                    fingerprint: "c".into(),
                },
            )]),
        }
    }

    #[test]
    fn what_moved_is_named() {
        let saved = facts();
        assert!(moved(&saved, &saved).is_empty());
        let mut now = facts();
        now.tables.get_mut("a").unwrap().as_mut().unwrap().version = 7;
        now.tables.insert(
            "b".into(),
            Some(TableAt {
                version: 1,
                rows: 3,
                schema: "s".into(),
            }),
        );
        now.collections.get_mut("a").unwrap().count = 11;
        let m = moved(&saved, &now);
        assert_eq!(
            m,
            [
                "table `a` is at version 7; the plan was made at version 5",
                "table `b` exists now (version 1, 3 rows); the plan was made without it",
                "source collection `a` has 11 records; the plan was made with 10"
            ]
        );
        // Another target in the same state is the same state.
        let mut prod = facts();
        prod.target = "/prod".into();
        assert!(moved(&saved, &prod).is_empty());
    }
}
