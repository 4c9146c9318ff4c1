//! Variables: `${VAR}` and `${VAR:-default}` in plan values.
//!
//! One plan serves dev, staging and production; only variables change.
//! Values come, highest precedence first, from `--var KEY=VALUE`, from
//! `--var-file FILE` (later files win), then from the environment. Explicit
//! flags beat ambient environment so a CI job's arguments say what it does.
//! `$$` writes a literal `$`. Interpolation works on the parsed YAML scalars,
//! never on the raw text, so a value can't inject YAML structure, and a plain
//! scalar is re-resolved after substitution (`batch_size: ${N:-500}` is a
//! number).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::yaml::{Node, NodeKind, Pos};

/// The variables visible to a plan.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    explicit: BTreeMap<String, String>,
    use_env: bool,
}

/// A problem with a variable definition on the command line or in a var file.
#[derive(Debug, thiserror::Error)]
pub enum VarsError {
    #[error(
        "`--var {0}` is not of the form KEY=VALUE\nhint: write it as `--var NAME=value`, e.g. `--var CHROMA_PATH=./chroma_db`"
    )]
    BadFlag(String),
    #[error(
        "cannot read variable file `{path}`: {source}\nhint: check the path given to `--var-file`"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: not a `KEY=VALUE` line\nhint: a variable file holds lines like `CHROMA_PATH=/data/chroma`; `#` starts a comment"
    )]
    BadLine { path: PathBuf, line: usize },
    #[error(
        "`{name}` is not a valid variable name\nhint: variable names are letters, digits and `_`, not starting with a digit"
    )]
    BadName { name: String },
}

/// A variable problem found in the plan itself.
#[derive(Debug, Clone, PartialEq)]
pub struct InterpolationError {
    pub pos: Pos,
    pub message: String,
    pub hint: String,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Vars {
    /// Variables from the environment only.
    pub fn from_env() -> Self {
        Vars {
            explicit: BTreeMap::new(),
            use_env: true,
        }
    }

    /// No variables at all (tests, and tools that must not see the environment).
    pub fn empty() -> Self {
        Vars::default()
    }

    /// Adds `--var-file` files (in order) then `--var` flags, over the environment.
    pub fn with_cli(mut self, files: &[PathBuf], flags: &[String]) -> Result<Self, VarsError> {
        for file in files {
            for (k, v) in parse_var_file(file)? {
                self.explicit.insert(k, v);
            }
        }
        for flag in flags {
            let (k, v) = flag
                .split_once('=')
                .ok_or_else(|| VarsError::BadFlag(flag.clone()))?;
            let k = k.trim();
            if !valid_name(k) {
                return Err(VarsError::BadName { name: k.into() });
            }
            self.explicit.insert(k.to_string(), v.to_string());
        }
        Ok(self)
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.explicit.insert(key.into(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<String> {
        if let Some(v) = self.explicit.get(key) {
            return Some(v.clone());
        }
        if self.use_env {
            return std::env::var(key).ok();
        }
        None
    }
}

/// Reads a dotenv-style file: `KEY=VALUE` lines, `#` comments, optional
/// `export ` prefix, optional single or double quotes around the value.
pub fn parse_var_file(path: &Path) -> Result<Vec<(String, String)>, VarsError> {
    let text = std::fs::read_to_string(path).map_err(|source| VarsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(VarsError::BadLine {
                path: path.to_path_buf(),
                line: i + 1,
            });
        };
        let k = k.trim();
        if !valid_name(k) {
            return Err(VarsError::BadName { name: k.into() });
        }
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// A `${...}` reference found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarRef {
    pub name: String,
    pub default: Option<String>,
    /// Byte offset of the `$` within the scalar.
    pub offset: usize,
}

/// Substitutes variables in `text`. Errors carry the byte offset of the reference.
pub fn interpolate(text: &str, vars: &Vars) -> Result<String, (usize, String, String)> {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
            let Some(end) = text[i..].find('}') else {
                return Err((
                    i,
                    "unclosed variable reference `${`".into(),
                    "close it with `}`, or write `$$` for a literal `$`".into(),
                ));
            };
            let inner = &text[i + 2..i + end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                return Err((
                    i,
                    format!("`${{{inner}}}` is not a valid variable reference"),
                    "write `${NAME}` or `${NAME:-default}`; names are letters, digits and `_`"
                        .into(),
                ));
            }
            match (vars.get(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err((
                        i,
                        format!("variable `{name}` is not defined"),
                        format!(
                            "set it with `--var {name}=...`, in a `--var-file`, or in the environment; or give a default: `${{{name}:-value}}`"
                        ),
                    ));
                }
            }
            i += end + 1;
            continue;
        }
        let ch = text[i..].chars().next().expect("char boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    Ok(out)
}

/// Finds the `${...}` references in a string (for secrets and fingerprints).
pub fn references(text: &str) -> Vec<VarRef> {
    let mut refs = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find('$') {
        let at = i + off;
        if text[at..].starts_with("$$") {
            i = at + 2;
            continue;
        }
        if text[at..].starts_with("${")
            && let Some(end) = text[at..].find('}')
        {
            let inner = &text[at + 2..at + end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (inner.to_string(), None),
            };
            refs.push(VarRef {
                name,
                default,
                offset: at,
            });
            i = at + end + 1;
            continue;
        }
        i = at + 1;
    }
    refs
}

/// Interpolates every scalar value in the tree (keys are left alone).
/// Collects every error rather than stopping at the first.
pub fn interpolate_tree(node: &mut Node, vars: &Vars, errors: &mut Vec<InterpolationError>) {
    match &mut node.kind {
        NodeKind::Scalar { text, style } => {
            if !text.contains('$') {
                return;
            }
            match interpolate(text, vars) {
                Ok(new) => *text = new,
                Err((offset, message, hint)) => {
                    // Point at the reference itself when the scalar sits on one
                    // line; quoted scalars start one column before their text.
                    let mut pos = node.pos;
                    if !text[..offset].contains('\n') {
                        let quote = usize::from(*style == super::yaml::ScalarStyle::Quoted);
                        pos.column += text[..offset].chars().count() + quote;
                    }
                    errors.push(InterpolationError { pos, message, hint });
                }
            }
        }
        NodeKind::Sequence(items) => {
            for item in items {
                interpolate_tree(item, vars, errors);
            }
        }
        NodeKind::Mapping(entries) => {
            for entry in entries {
                interpolate_tree(&mut entry.value, vars, errors);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::empty();
        for (k, val) in pairs {
            v.set(k, val);
        }
        v
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let v = vars(&[("A", "x")]);
        assert_eq!(interpolate("${A}/${B:-y}/$$", &v).unwrap(), "x/y/$");
        assert_eq!(interpolate("${B:-}", &v).unwrap(), "");
    }

    #[test]
    fn undefined_variable_names_itself() {
        let err = interpolate("pre ${MISSING}", &Vars::empty()).unwrap_err();
        assert_eq!(err.0, 4);
        assert!(err.1.contains("`MISSING`"));
    }

    #[test]
    fn explicit_beats_environment() {
        // PATH is always set in the environment.
        let v = Vars::from_env()
            .with_cli(&[], &["PATH=mine".into()])
            .unwrap();
        assert_eq!(v.get("PATH").as_deref(), Some("mine"));
    }

    #[test]
    fn references_are_found() {
        let r = references("${A} $${B} ${C:-d}");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].default.as_deref(), Some("d"));
    }
}
