//! Lint: what a reviewer should know before `apply` runs.
//!
//! Each finding has a stable code of two capital letters and three digits,
//! in families (`DS` destructive, `VX` vectors, `MD` metadata, `PH` plan
//! hygiene, `SC` schema), a severity, and a section in `docs/lint.md`
//! (linked from the Markdown output). An `error` is something `apply` would
//! fail on or a loss; a `warning` deserves a second look. A collection may
//! accept a finding with `nolint: [{code, reason}]`; the finding is still
//! shown, with the reason, but no longer counts for `--fail-on`.

use std::fmt;

use schemars::JsonSchema;
use serde::Serialize;

/// Every lint code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
pub enum Code {
    /// `replace` drops the rows the table holds.
    DS101,
    /// `append` onto a table that already holds some of the source's ids.
    DS102,
    /// The vector dimension differs from the existing table's.
    VX101,
    /// An index metric differs from the source's distance space.
    VX102,
    /// Inner-product search over vectors that are not unit length.
    VX103,
    /// A vector index on fewer rows than it needs to train.
    VX104,
    /// A metadata key mapped to a typed column holds other types too.
    MD101,
    /// A mapped metadata key that no record has.
    MD102,
    /// A `required` column whose key some records lack.
    MD103,
    /// `create` of a table that already exists.
    PH101,
    /// A table written by others while an apply to it was interrupted.
    PH102,
    /// A collection without vectors and a plan without `dim:`.
    PH103,
    /// A column of the existing table has another type than the plan's.
    SC101,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

impl Code {
    pub const ALL: [Code; 13] = [
        Code::DS101,
        Code::DS102,
        Code::VX101,
        Code::VX102,
        Code::VX103,
        Code::VX104,
        Code::MD101,
        Code::MD102,
        Code::MD103,
        Code::PH101,
        Code::PH102,
        Code::PH103,
        Code::SC101,
    ];

    pub fn id(self) -> String {
        format!("{self:?}")
    }

    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.id() == s)
    }

    /// The one-line explanation (the title of its `docs/lint.md` section).
    pub fn title(self) -> &'static str {
        match self {
            Code::DS101 => "replace drops the rows the table holds",
            Code::DS102 => "append onto ids the table already holds",
            Code::VX101 => "vector dimension differs from the existing table's",
            Code::VX102 => "index metric differs from the source's distance space",
            Code::VX103 => "inner product over vectors that are not unit length",
            Code::VX104 => "vector index on too few rows to train",
            Code::MD101 => "metadata key of varying type mapped to a typed column",
            Code::MD102 => "mapped metadata key that no record has",
            Code::MD103 => "required column whose key some records lack",
            Code::PH101 => "create of a table that already exists",
            Code::PH102 => "table written by others during an interrupted apply",
            Code::PH103 => "no vectors yet and no `dim:`",
            Code::SC101 => "table's shape differs from the plan's",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Code::DS102 | Code::VX101 | Code::PH101 | Code::PH102 | Code::PH103 | Code::SC101 => {
                Severity::Error
            }
            Code::DS101
            | Code::VX102
            | Code::VX103
            | Code::VX104
            | Code::MD101
            | Code::MD102
            | Code::MD103 => Severity::Warning,
        }
    }

    /// Whether a plan may accept it with `nolint`. Not the findings that
    /// mean `apply` would stop: accepting them would only make `plan` say
    /// "no problem" about an apply that fails (`--allow-duplicates` is the
    /// deliberate way past DS102).
    pub fn acceptable(self) -> bool {
        !matches!(
            self,
            Code::DS102 | Code::VX101 | Code::PH101 | Code::PH102 | Code::PH103 | Code::SC101
        )
    }

    /// The anchor of its section in `docs/lint.md`.
    pub fn anchor(self) -> String {
        self.id().to_ascii_lowercase()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Finding {
    pub code: Code,
    pub severity: Severity,
    /// What was found, with the numbers.
    pub message: String,
    /// The reason given in the plan's `nolint`, if the finding is accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<String>,
}

impl Finding {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Finding {
            code,
            severity: code.severity(),
            message: message.into(),
            accepted: None,
        }
    }

    /// Whether it counts (not accepted in the plan).
    pub fn counts(&self) -> bool {
        self.accepted.is_none()
    }
}

/// Marks the findings a collection's `nolint` accepts.
pub fn accept(findings: &mut [Finding], nolint: &[(String, String)]) {
    for f in findings {
        if let Some((_, reason)) = nolint.iter().find(|(code, _)| *code == f.code.id()) {
            f.accepted = Some(reason.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_two_letters_and_three_digits_and_parse_back() {
        for c in Code::ALL {
            let id = c.id();
            assert_eq!(id.len(), 5);
            assert!(id[..2].chars().all(|c| c.is_ascii_uppercase()), "{id}");
            assert!(id[2..].chars().all(|c| c.is_ascii_digit()), "{id}");
            assert_eq!(Code::parse(&id), Some(c));
        }
        assert_eq!(Code::parse("XX999"), None);
    }

    #[test]
    fn every_code_has_a_section_in_the_docs() {
        let doc = include_str!("../../docs/lint.md");
        for c in Code::ALL {
            assert!(
                doc.contains(&format!("## {} ", c.id())),
                "docs/lint.md lacks a section for {c}"
            );
        }
    }

    #[test]
    fn accepted_findings_keep_their_reason_and_stop_counting() {
        let mut f = vec![
            Finding::new(Code::DS101, "drops 5 rows"),
            Finding::new(Code::VX104, "few rows"),
        ];
        accept(
            &mut f,
            &[("DS101".into(), "staging is rebuilt nightly".into())],
        );
        assert!(!f[0].counts());
        assert_eq!(f[0].accepted.as_deref(), Some("staging is rebuilt nightly"));
        assert!(f[1].counts());
    }
}
