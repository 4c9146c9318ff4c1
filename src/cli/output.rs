//! What the CLI prints: summaries on stdout, errors and hints on stderr.
//!
//! Color is used only when stderr is a terminal, `--color` allows it and
//! `NO_COLOR` is unset; all text reads the same without it.

use std::io::IsTerminal;
use std::path::Path;

use serde_json::json;

use super::ColorChoice;
use crate::graph::StepGraph;
use crate::plan::{LoadError, Plan, PlanDiagnostics, Source};

/// Marker error: the details were already printed.
#[derive(Debug, thiserror::Error)]
#[error("the plan is not valid")]
pub struct Reported;

pub struct Output {
    color: bool,
    /// `--color always`, or `auto` without `NO_COLOR`: color may go to a
    /// stream that is a terminal.
    choice: ColorChoice,
    no_color: bool,
}

impl Output {
    pub fn new(choice: ColorChoice) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => !no_color && std::io::stderr().is_terminal(),
        };
        Output {
            color,
            choice,
            no_color,
        }
    }

    /// Whether data printed on stdout may be colored: a terminal, and
    /// neither `NO_COLOR` nor `--color never` (never when piped).
    pub fn stdout_color(&self) -> bool {
        match self.choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => !self.no_color && std::io::stdout().is_terminal(),
        }
    }

    /// Whether stderr output may be colored.
    pub fn stderr_color(&self) -> bool {
        self.color
    }

    pub fn stderr_is_terminal(&self) -> bool {
        std::io::stderr().is_terminal()
    }

    pub fn diagnostics(&self, d: &PlanDiagnostics) {
        eprint!("{}", d.render(self.color));
    }

    pub fn error(&self, e: &anyhow::Error) {
        if e.downcast_ref::<Reported>().is_some() {
            return;
        }
        let label = if self.color {
            "\x1b[1;31merror:\x1b[0m"
        } else {
            "error:"
        };
        let mut text = e.to_string();
        for cause in e.chain().skip(1) {
            text.push_str(&format!("\n  caused by: {cause}"));
        }
        // Put a hint line (from any error in the chain) last.
        let (body, hint) = match text.split_once("\nhint: ") {
            Some((b, h)) => (b.to_string(), Some(h.to_string())),
            None => (text, None),
        };
        eprintln!("{label} {body}");
        if let Some(h) = hint {
            let label = if self.color {
                "\x1b[1;36mhint:\x1b[0m"
            } else {
                "hint:"
            };
            eprintln!("{label} {h}");
        }
    }
}

/// The human summary of a valid plan, printed by `check`.
pub fn check_summary(plan: &Plan, graph: &StepGraph) -> String {
    let mut s = format!("plan `{}` is valid ({})\n", plan.name, plan.file.display());
    s.push_str(&format!("  source: {}\n", plan.source.describe()));
    if let Source::ChromaHttp { token: Some(t), .. } = &plan.source {
        s.push_str(&format!("  token:  from variable `{}`\n", t.variable));
    }
    s.push_str(&format!("  target: lancedb `{}`\n", plan.target.uri));
    if let Some(b) = &plan.backup {
        s.push_str(&format!(
            "  backup: `{}` (keep {})\n",
            b.dir.display(),
            b.keep
        ));
    }
    s.push_str(&format!("  state:  `{}`\n", plan.state_dir.display()));
    for c in &plan.collections {
        let arrow = if c.source == c.table {
            format!("`{}`", c.table)
        } else {
            format!("`{}` -> `{}`", c.source, c.table)
        };
        s.push_str(&format!(
            "  collection {arrow}: {}, {} columns{}, {} indexes, validate {}\n",
            c.mode,
            c.columns.len(),
            if c.default_columns {
                " (default mapping)"
            } else {
                ""
            },
            c.indexes.len(),
            match c.validate.sample {
                crate::plan::SampleSize::All => "all records".to_string(),
                crate::plan::SampleSize::Records(n) => format!("a sample of {n}"),
            }
        ));
    }
    s.push_str(&format!("  steps: {}\n", graph.len()));
    s.push_str(&format!("  fingerprint: {}\n", plan.fingerprint()));
    s
}

/// The `check --json` document and whether the plan is valid.
pub fn check_json(
    file: &Path,
    result: Result<Plan, LoadError>,
) -> anyhow::Result<(serde_json::Value, bool)> {
    Ok(match result {
        Ok(plan) => {
            let graph = StepGraph::compile(&plan);
            let steps: Vec<String> = graph
                .ordered()
                .iter()
                .map(|n| graph.graph[*n].id())
                .collect();
            (
                json!({
                    "valid": true,
                    "file": file,
                    "name": plan.name,
                    "fingerprint": plan.fingerprint(),
                    "plan": plan,
                    "steps": steps,
                }),
                true,
            )
        }
        Err(LoadError::Invalid(d)) => {
            let errors: Vec<_> = d
                .diagnostics
                .iter()
                .map(|d| {
                    json!({
                        "file": d.file,
                        "line": d.pos.line,
                        "column": d.pos.column,
                        "message": d.message,
                        "hint": d.hint,
                    })
                })
                .collect();
            (
                json!({ "valid": false, "file": file, "errors": errors }),
                false,
            )
        }
        Err(e) => return Err(e.into()),
    })
}

/// The short human summary of an apply.
pub fn apply_summary(s: &crate::engine::ApplySummary) -> String {
    if s.nothing_to_do {
        return format!(
            "nothing to do: apply `{}` already brought the target up to date with this plan and the source has not changed\n",
            s.apply_id
        );
    }
    let mut out = format!(
        "apply `{}` {}{}\n",
        s.apply_id,
        if s.ok() { "completed" } else { "failed" },
        if s.resumed { " (resumed)" } else { "" }
    );
    out.push_str(&format!("  done: {} step(s)\n", s.done.len()));
    for (id, msg) in &s.failed {
        out.push_str(&format!("  failed: {id}: {msg}\n"));
    }
    if !s.not_started.is_empty() {
        out.push_str(&format!("  not started: {}\n", s.not_started.join(", ")));
    }
    for w in &s.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    if let Some(r) = &s.report {
        out.push_str(&format!("  report: {}\n", r.display()));
    }
    if !s.ok() {
        out.push_str("hint: fix the cause above and run `lanceferry apply` again to resume, or `lanceferry rollback` to undo\n");
    }
    out
}
