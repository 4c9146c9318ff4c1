//! Loading a plan: file → YAML tree → variables → JSON Schema → `PlanSpec` → `Plan`.
//!
//! Each stage stops the pipeline when it finds problems and reports all of
//! them (sorted by position), so a user fixes a plan in one pass instead of
//! one error per run. Nothing is read from or written to either store here.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::check::{self, Locator, closest};
use super::diagnostic::{Diagnostic, PlanDiagnostics};
use super::model::Plan;
use super::spec::{self, PlanSpec};
use super::vars::{self, Vars};
use super::yaml::{self, Node};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cannot read plan `{path}`: {source}\nhint: check the path; plans are YAML files such as `plans/minimal.yaml`"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] PlanDiagnostics),
}

/// Loads and checks the plan file at `path`.
pub fn load(path: &Path, vars: &Vars) -> Result<Plan, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(load_str(&text, path, vars)?)
}

/// Loads and checks plan text; `file` is only used in messages.
pub fn load_str(text: &str, file: &Path, vars: &Vars) -> Result<Plan, PlanDiagnostics> {
    let fail = |diagnostics: Vec<Diagnostic>| PlanDiagnostics {
        diagnostics,
        source_text: text.to_string(),
    };
    let diag = |pos, message: String, hint: String| Diagnostic {
        secret: false,
        file: file.to_path_buf(),
        pos,
        message,
        hint,
    };

    let raw = yaml::parse(text).map_err(|e| fail(vec![diag(e.pos, e.message, e.hint)]))?;
    if !matches!(raw.kind, yaml::NodeKind::Mapping(_)) {
        return Err(fail(vec![diag(
            raw.pos,
            "a plan must be a YAML mapping (`key: value` lines)".into(),
            "start from `plans/minimal.yaml`; `lanceferry schema` prints every key".into(),
        )]));
    }

    let mut tree = raw.clone();
    let mut var_errors = Vec::new();
    vars::interpolate_tree(&mut tree, vars, &mut var_errors);
    if !var_errors.is_empty() {
        return Err(fail(
            var_errors
                .into_iter()
                .map(|e| diag(e.pos, e.message, e.hint))
                .collect(),
        ));
    }

    let loc = Locator {
        root: &tree,
        file: file.to_path_buf(),
    };
    let instance = tree.to_json();
    let schema_errors = schema_diagnostics(&instance, &loc);
    if !schema_errors.is_empty() {
        return Err(fail(schema_errors));
    }

    let spec: PlanSpec = serde_json::from_value(instance).map_err(|e| {
        // The schema accepted the document, so this means the schema and the
        // types disagree: a bug, reported as such rather than hidden.
        fail(vec![diag(
            tree.pos,
            format!("the plan passed the schema but not the plan types: {e}"),
            "this is a lanceferry bug; please report it with the plan attached".into(),
        )])
    })?;

    check::check(spec, &loc, &raw).map_err(fail)
}

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        jsonschema::validator_for(&spec::json_schema()).expect("the plan schema is valid")
    })
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    }
}

/// The schema node at a JSON pointer into the schema (following `$ref`s).
fn schema_at<'a>(schema: &'a Value, pointer: &str) -> Option<&'a Value> {
    schema.pointer(pointer)
}

fn resolve_ref<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .map(|n| resolve_ref(root, n))
            .unwrap_or(node),
        None => node,
    }
}

/// A short description of what a schema accepts (for anyOf/oneOf failures).
fn describe(root: &Value, node: &Value) -> Vec<String> {
    let node = resolve_ref(root, node);
    if let Some(c) = node.get("const") {
        return vec![show(c)];
    }
    if let Some(Value::Array(opts)) = node.get("enum") {
        return opts.iter().map(show).collect();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = node.get(key) {
            return subs.iter().flat_map(|s| describe(root, s)).collect();
        }
    }
    match node.get("type").and_then(Value::as_str) {
        Some("object") => {
            let keys: Vec<String> = node
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().map(|k| format!("`{k}`")).collect())
                .unwrap_or_default();
            vec![format!("a mapping with {}", keys.join(", "))]
        }
        Some("integer") => vec!["an integer".into()],
        Some("number") => vec!["a number".into()],
        Some("string") => vec!["a string".into()],
        Some("boolean") => vec!["`true` or `false`".into()],
        Some("array") => vec!["a list".into()],
        _ => vec![],
    }
}

fn last_key(pointer: &str) -> String {
    let seg = pointer.rsplit('/').next().unwrap_or("");
    if seg.is_empty() {
        "the plan".to_string()
    } else if seg.chars().all(|c| c.is_ascii_digit()) {
        let parent = pointer[..pointer.len() - seg.len() - 1]
            .rsplit('/')
            .next()
            .unwrap_or("");
        format!(
            "item {} of `{parent}`",
            seg.parse::<usize>().unwrap_or(0) + 1
        )
    } else {
        format!("`{seg}`")
    }
}

/// Properties allowed at a schema location (for unknown-key hints).
fn allowed_properties(root: &Value, schema_pointer: &str) -> Vec<String> {
    // schema_path ends in `/additionalProperties`; its parent holds `properties`.
    let parent = schema_pointer
        .strip_suffix("/additionalProperties")
        .unwrap_or(schema_pointer);
    schema_at(root, parent)
        .map(|n| resolve_ref(root, n))
        .and_then(|n| n.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn schema_diagnostics(instance: &Value, loc: &Locator) -> Vec<Diagnostic> {
    let root = spec::json_schema();
    let mut out: Vec<Diagnostic> = Vec::new();
    for err in validator().iter_errors(instance) {
        let ip = err.instance_path().as_str().to_string();
        let sp = err.schema_path().as_str().to_string();
        let what = last_key(&ip);
        let d = match err.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = allowed_properties(&root, &sp);
                for key in unexpected {
                    let suggestion = closest(key, allowed.iter().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    out.push(loc.diag(
                        loc.key(&ip, key),
                        format!("unknown key `{key}`"),
                        format!(
                            "{suggestion}allowed here: {}",
                            allowed.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                continue;
            }
            ValidationErrorKind::Required { property } => {
                let key = property.as_str().unwrap_or_default();
                let place = if ip.is_empty() {
                    "the plan".to_string()
                } else {
                    last_key(&ip)
                };
                loc.diag(
                    loc.value(&ip),
                    format!("{place} is missing the required key `{key}`"),
                    format!("add `{key}:`; see docs/plan-reference.md or `lanceferry schema`"),
                )
            }
            ValidationErrorKind::Type { .. } => {
                let expected = schema_at(&root, sp.trim_end_matches("/type"))
                    .map(|n| describe(&root, n))
                    .unwrap_or_default();
                let got = json_type_name(err.instance());
                loc.diag(
                    loc.value(&ip),
                    format!("{what} must be {}, not {got}", expected.join(" or ")),
                    type_hint(&ip, err.instance()),
                )
            }
            ValidationErrorKind::Enum { options } => {
                let opts: Vec<String> = options
                    .as_array()
                    .map(|a| a.iter().map(show).collect())
                    .unwrap_or_default();
                let got = err.instance();
                let suggestion = got
                    .as_str()
                    .and_then(|g| {
                        closest(
                            g,
                            options
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(Value::as_str),
                        )
                    })
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                loc.diag(
                    loc.value(&ip),
                    format!("{} is not a valid value for {what}", show(got)),
                    format!("{suggestion}use one of {}", opts.join(", ")),
                )
            }
            ValidationErrorKind::AnyOf { .. }
            | ValidationErrorKind::OneOfNotValid { .. }
            | ValidationErrorKind::OneOfMultipleValid { .. } => {
                let options = schema_at(&root, &sp)
                    .map(|n| {
                        let key = if sp.ends_with("anyOf") {
                            "anyOf"
                        } else {
                            "oneOf"
                        };
                        let wrapper = serde_json::json!({ key: n });
                        describe(&root, &wrapper)
                    })
                    .unwrap_or_default();
                // An enum-like choice of mappings (`source: {chroma: ...}`):
                // name the keys that are accepted.
                loc.diag(
                    loc.value(&ip),
                    format!("{} is not a valid value for {what}", short(err.instance())),
                    format!("use {}", options.join(" or ")),
                )
            }
            ValidationErrorKind::Minimum { limit }
            | ValidationErrorKind::ExclusiveMinimum { limit } => loc.diag(
                loc.value(&ip),
                format!("{what} is {}, below the minimum of {limit}", err.instance()),
                format!("use a value of at least {limit}"),
            ),
            ValidationErrorKind::Maximum { limit }
            | ValidationErrorKind::ExclusiveMaximum { limit } => loc.diag(
                loc.value(&ip),
                format!("{what} is {}, above the maximum of {limit}", err.instance()),
                format!("use a value of at most {limit}"),
            ),
            ValidationErrorKind::MinLength { .. } => loc.diag(
                loc.value(&ip),
                format!("{what} is empty"),
                "give it a value".to_string(),
            ),
            ValidationErrorKind::MinItems { .. } => loc.diag(
                loc.value(&ip),
                format!("{what} is an empty list"),
                "list at least one item, or remove the key to use the default".to_string(),
            ),
            ValidationErrorKind::MinProperties { .. }
            | ValidationErrorKind::MaxProperties { .. } => loc.diag(
                loc.value(&ip),
                format!("{what} must have exactly one kind"),
                "write one of the allowed keys, e.g. `chroma:` for a source".to_string(),
            ),
            _ => loc.diag(
                loc.value(&ip),
                format!("{what}: {err}"),
                "see docs/plan-reference.md or `lanceferry schema` for what is allowed here"
                    .to_string(),
            ),
        };
        out.push(d);
    }
    // A missing required key next to an unknown key that is its misspelling
    // is one mistake, not two: keep the "did you mean" error only.
    let misspelt: Vec<String> = out
        .iter()
        .filter(|d| d.message.starts_with("unknown key `"))
        .filter_map(|d| {
            d.hint
                .strip_prefix("did you mean `")?
                .split('`')
                .next()
                .map(String::from)
        })
        .collect();
    out.retain(|d| {
        !misspelt.iter().any(|m| {
            d.message
                .ends_with(&format!("missing the required key `{m}`"))
        })
    });
    // anyOf failures also report their branches' errors at the same place;
    // keep the first message per position.
    out.sort_by_key(|d| d.pos);
    out.dedup_by(|a, b| a.pos == b.pos);
    out
}

fn short(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().map(|k| format!("`{k}`")).collect();
            format!("a mapping with {}", keys.join(", "))
        }
        Value::Array(_) => "a list".into(),
        other => show(other),
    }
}

fn type_hint(pointer: &str, got: &Value) -> String {
    if let Value::String(s) = got
        && s.parse::<f64>().is_ok()
    {
        return format!("remove the quotes around {s} so YAML reads it as a number");
    }
    if pointer.is_empty() {
        "a plan is a mapping; start from `plans/minimal.yaml`".into()
    } else {
        "see docs/plan-reference.md for this key's type".into()
    }
}

/// The node tree of a plan file without interpolation (for `fmt`-like tools).
pub fn parse_tree(text: &str) -> Result<Node, yaml::YamlError> {
    yaml::parse(text)
}
