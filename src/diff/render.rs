//! The three faces of a plan: text for a terminal, Markdown for a pull
//! request comment, JSON for machines.
//!
//! All three carry the same facts in the same order; the summary line is
//! the last line of the text and the first thing of the Markdown. The
//! Markdown stays under [`MARKDOWN_LIMIT`] characters whatever the plan's
//! size (GitHub refuses longer comments): it degrades by folding detail
//! (schema diffs, then checks, then whole collection blocks), never by
//! splitting into several comments.

use super::{Action, CollectionPlan, PlanReport, StartKind};
use crate::diff::lint::Severity;

/// GitHub's comment limit is 65,536 characters; keep a margin.
pub const MARKDOWN_LIMIT: usize = 60_000;

/// `101234` → `101,234`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn start_line(r: &PlanReport) -> String {
    match &r.start {
        StartKind::Fresh => "a fresh apply".into(),
        StartKind::Resume { apply_id } => {
            format!("resumes the interrupted apply `{apply_id}`")
        }
        StartKind::NothingToDo { apply_id } => {
            format!("nothing to do (apply `{apply_id}` left the target as the plan wants it)")
        }
    }
}

fn last_line(r: &PlanReport) -> String {
    match &r.last_apply {
        None => "never applied to this target".into(),
        Some(l) => format!(
            "apply `{}`, {}{}",
            l.id,
            l.status.replace('_', " "),
            if l.same_plan {
                ", with this plan"
            } else {
                ", with an earlier version of this plan"
            }
        ),
    }
}

fn rows_text(c: &CollectionPlan) -> String {
    let n = thousands(c.rows_to_copy.value);
    let mut s = if c.rows_to_copy.exact {
        format!("{n} (exact)")
    } else {
        format!("at most {n} (records the plan skips are left out)")
    };
    if let Some(done) = c.rows_committed {
        s.push_str(&format!("; {} already committed", thousands(done)));
    }
    if let Some(d) = c.rows_dropped {
        s.push_str(&format!("; {} rows dropped", thousands(d)));
    }
    if let Some(d) = c.rows_deleted {
        s.push_str(&format!("; {} rows to delete (exact)", thousands(d)));
    }
    s
}

struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn action(&self, a: Action) -> String {
        let code = match a {
            Action::Create => "32",
            Action::Change => "33",
            Action::Replace | Action::Blocked => "31",
            Action::None => "0",
        };
        self.wrap(code, a.symbol())
    }
    fn severity(&self, s: Severity) -> String {
        match s {
            Severity::Error => self.wrap("1;31", "error"),
            Severity::Warning => self.wrap("1;33", "warning"),
        }
    }
    fn diff_line(&self, l: &str) -> String {
        match l.chars().next() {
            Some('+') => self.wrap("32", l),
            Some('-') => self.wrap("31", l),
            Some('#') => self.wrap("2", l),
            _ => l.to_string(),
        }
    }
}

/// The terminal text (ANSI color only when `color`).
pub fn text(r: &PlanReport, color: bool) -> String {
    let p = Paint(color);
    let mut out = format!("lanceferry plan `{}`\n", r.plan);
    out.push_str(&format!("  source: {}\n", r.source));
    out.push_str(&format!("  target: lancedb `{}`\n", r.target));
    out.push_str(&format!("  last:   {}\n", last_line(r)));
    out.push_str(&format!("  apply:  {}\n", start_line(r)));
    if let Some(running) = &r.running {
        out.push_str(&format!("  note:   {running}\n"));
    }
    for c in &r.collections {
        out.push('\n');
        out.push_str(&format!(
            "{} `{}` -> table `{}` ({})\n",
            p.action(c.action),
            c.source,
            c.table,
            c.mode
        ));
        out.push_str(&format!("    {}\n", c.reason));
        if let Some(note) = &c.changed_outside {
            out.push_str(&format!("    note: {note}\n"));
        }
        if !matches!(c.action, Action::None | Action::Blocked) {
            out.push_str(&format!("    rows to copy: {}\n", rows_text(c)));
        }
        if !c.schema_diff.is_empty() {
            out.push_str("    schema:\n");
            for l in &c.schema_diff {
                out.push_str(&format!("      {}\n", p.diff_line(l)));
            }
        }
        if !c.indexes.is_empty() {
            out.push_str(&format!("    indexes: {}\n", c.indexes.join("; ")));
        }
        if !c.checks.is_empty() {
            out.push_str(&format!(
                "    checks (unknown until apply): {}\n",
                c.checks.join("; ")
            ));
        }
        for f in &c.lint {
            match &f.accepted {
                None => out.push_str(&format!(
                    "    {} {}: {}\n",
                    p.severity(f.severity),
                    f.code,
                    f.message
                )),
                Some(reason) => out.push_str(&format!(
                    "    accepted {} ({}): {} [nolint: {reason}]\n",
                    f.code, f.severity, f.message
                )),
            }
        }
    }
    out.push('\n');
    out.push_str(&r.summary_line());
    out.push('\n');
    out
}

/// How much detail a Markdown rendering keeps.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Detail {
    Full,
    NoSchema,
    NoChecks,
    TableOnly,
}

/// Markdown for a pull-request comment. `docs` is the address of
/// `docs/lint.md` that lint codes link to.
pub fn markdown(r: &PlanReport, docs: &str) -> String {
    for detail in [
        Detail::Full,
        Detail::NoSchema,
        Detail::NoChecks,
        Detail::TableOnly,
    ] {
        let s = markdown_at(r, docs, detail, usize::MAX);
        if s.len() <= MARKDOWN_LIMIT {
            return s;
        }
    }
    // Even the table alone is too long: list as many rows as fit.
    let mut rows = r.collections.len();
    loop {
        rows /= 2;
        let s = markdown_at(r, docs, Detail::TableOnly, rows);
        if s.len() <= MARKDOWN_LIMIT || rows == 0 {
            return s;
        }
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn markdown_at(r: &PlanReport, docs: &str, detail: Detail, max_rows: usize) -> String {
    let mut out = format!("<!-- lanceferry plan: {} -->\n", r.plan);
    out.push_str(&format!("### lanceferry plan `{}`\n\n", r.plan));
    out.push_str(&format!("**{}**\n\n", r.summary_line()));
    let s = &r.summary;
    if s.rows_dropped > 0 {
        let tables: Vec<String> = r
            .collections
            .iter()
            .filter(|c| c.rows_dropped.is_some())
            .map(|c| {
                format!(
                    "`{}` ({} rows)",
                    c.table,
                    thousands(c.rows_dropped.unwrap_or(0))
                )
            })
            .collect();
        out.push_str(&format!(
            "> [!WARNING]\n> This plan drops {} rows from the latest version of {}. `lanceferry rollback` restores them.\n\n",
            thousands(s.rows_dropped),
            tables.join(", ")
        ));
    }
    if let Some(running) = &r.running {
        out.push_str(&format!("> [!IMPORTANT]\n> {}\n\n", md_escape(running)));
    }
    if s.errors > 0 {
        out.push_str(&format!(
            "> [!CAUTION]\n> {} lint error{}: `apply` would stop or lose data. See below.\n\n",
            s.errors,
            if s.errors == 1 { "" } else { "s" }
        ));
    }
    out.push_str(&format!(
        "Apply: {}. Last apply to this target: {}. Source: {}. Target: lancedb `{}`.\n\n",
        start_line(r),
        last_line(r),
        md_escape(&r.source),
        md_escape(&r.target)
    ));
    out.push_str("| | Collection | Action | Rows | Lint |\n|---|---|---|---|---|\n");
    for c in r.collections.iter().take(max_rows) {
        let lint: Vec<String> = c
            .lint
            .iter()
            .map(|f| {
                let code = format!("[{}]({docs}#{})", f.code, f.code.anchor());
                if f.counts() {
                    format!("{} {code}", f.severity)
                } else {
                    format!("~~{code}~~ accepted")
                }
            })
            .collect();
        let rows = match c.action {
            Action::None | Action::Blocked => "—".to_string(),
            _ => {
                let mut s = thousands(c.rows_to_copy.value);
                if !c.rows_to_copy.exact {
                    s = format!("≤ {s}");
                }
                if let Some(d) = c.rows_dropped {
                    s.push_str(&format!(" (drops {})", thousands(d)));
                }
                if let Some(d) = c.rows_deleted {
                    s.push_str(&format!(" (deletes {})", thousands(d)));
                }
                s
            }
        };
        out.push_str(&format!(
            "| `{}` | `{}` → `{}` | {} | {} | {} |\n",
            c.action.symbol(),
            md_escape(&c.source),
            md_escape(&c.table),
            action_word(c.action, &c.mode),
            rows,
            if lint.is_empty() {
                "—".into()
            } else {
                lint.join(", ")
            }
        ));
    }
    if r.collections.len() > max_rows {
        out.push_str(&format!(
            "| | … and {} more collections | | | |\n",
            r.collections.len() - max_rows
        ));
    }
    out.push('\n');
    if detail < Detail::TableOnly {
        let open = r.collections.len() <= 3;
        for c in &r.collections {
            out.push_str(&format!(
                "<details{}><summary><code>{}</code> <b>{}</b> → <code>{}</code>: {}</summary>\n\n",
                if open { " open" } else { "" },
                c.action.symbol(),
                md_escape(&c.source),
                md_escape(&c.table),
                // Markdown is not rendered inside <summary>: HTML only.
                action_word(c.action, &c.mode).replace("**blocked**", "<b>blocked</b>")
            ));
            out.push_str(&format!("{}\n\n", md_escape(&c.reason)));
            if let Some(note) = &c.changed_outside {
                out.push_str(&format!("> [!NOTE]\n> {}\n\n", md_escape(note)));
            }
            if !matches!(c.action, Action::None | Action::Blocked) {
                out.push_str(&format!("- Rows to copy: {}\n", rows_text(c)));
            }
            if let Some(t) = &c.table_facts {
                out.push_str(&format!(
                    "- Table now: version {}, {} rows{}\n",
                    t.version,
                    thousands(t.rows),
                    if t.indexes.is_empty() {
                        String::new()
                    } else {
                        format!(", indexes: {}", t.indexes.join(", "))
                    }
                ));
            }
            if !c.indexes.is_empty() {
                out.push_str(&format!("- Indexes: {}\n", c.indexes.join("; ")));
            }
            if detail < Detail::NoChecks && !c.checks.is_empty() {
                out.push_str(&format!(
                    "- Checks (unknown until apply): {}\n",
                    c.checks.join("; ")
                ));
            }
            for f in &c.lint {
                let code = format!("[{}]({docs}#{})", f.code, f.code.anchor());
                match &f.accepted {
                    None => out.push_str(&format!(
                        "- **{} {code}** {}\n",
                        f.severity,
                        md_escape(&f.message)
                    )),
                    Some(reason) => out.push_str(&format!(
                        "- {code} accepted: {} (*nolint: {}*)\n",
                        md_escape(&f.message),
                        md_escape(reason)
                    )),
                }
            }
            if detail < Detail::NoSchema && !c.schema_diff.is_empty() {
                out.push_str("\n```diff\n");
                for l in &c.schema_diff {
                    out.push_str(l);
                    out.push('\n');
                }
                out.push_str("```\n");
            } else if !c.schema_diff.is_empty() {
                out.push_str(
                    "- Schema: folded to keep this comment short (`lanceferry plan` shows it)\n",
                );
            }
            out.push_str("\n</details>\n\n");
        }
    } else {
        out.push_str(
            "*Details folded to keep this comment short: run `lanceferry plan` for them.*\n\n",
        );
    }
    out.push_str(&format!(
        "<sub>plan fingerprint `{}` · format {}</sub>\n",
        r.fingerprint, r.format_version
    ));
    out
}

fn action_word(a: Action, mode: &str) -> String {
    match a {
        Action::Create => "create".into(),
        Action::Change => format!("change ({mode})"),
        Action::Replace => "replace".into(),
        Action::None => "no change".into(),
        Action::Blocked => "**blocked**".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(101_234), "101,234");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
