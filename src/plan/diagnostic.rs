//! Diagnostics: what is wrong with a plan, where, and what to do about it.
//!
//! Every problem found while loading a plan becomes a [`Diagnostic`]: a file
//! position, a one-sentence message, and a `hint:` line. They render as a
//! compact, compiler-style snippet that fits on one screen, in plain text
//! (for logs, tests and `NO_COLOR`) or with ANSI color on a terminal.

use std::fmt;
use std::path::PathBuf;

use super::yaml::Pos;

#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
    pub hint: String,
    /// The value at `pos` is a secret: its snippet shows `*` in its place.
    pub secret: bool,
}

impl Diagnostic {
    /// Marks the value this diagnostic points at as a secret, so the
    /// snippet never prints it (error output ends up in CI logs).
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }
}

/// One or more diagnostics for the same plan file, with its text for snippets.
#[derive(Debug, Clone)]
pub struct PlanDiagnostics {
    pub diagnostics: Vec<Diagnostic>,
    pub source_text: String,
}

impl PlanDiagnostics {
    /// Renders all diagnostics; `color` adds ANSI styling.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&render_one(d, &self.source_text, color));
        }
        if self.diagnostics.len() > 1 {
            out.push_str(&format!(
                "\n{} errors in `{}`\n",
                self.diagnostics.len(),
                self.diagnostics[0].file.display()
            ));
        }
        out
    }
}

impl fmt::Display for PlanDiagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The `error: ` prefix of the first line is added by whoever prints.
        let text = self.render(false);
        f.write_str(text.strip_prefix("error: ").unwrap_or(&text).trim_end())
    }
}

impl std::error::Error for PlanDiagnostics {}

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn red_bold(&self, s: &str) -> String {
        self.wrap("1;31", s)
    }
    fn blue(&self, s: &str) -> String {
        self.wrap("34", s)
    }
    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
    fn cyan_bold(&self, s: &str) -> String {
        self.wrap("1;36", s)
    }
}

/// The width of the token starting at `col` (1-based) on `line`, for the underline.
fn token_width(line: &str, col: usize) -> usize {
    let rest: String = line.chars().skip(col.saturating_sub(1)).collect();
    let mut chars = rest.chars();
    match chars.next() {
        None => 1,
        Some(q @ ('"' | '\'')) => rest[1..].find(q).map(|e| e + 2).unwrap_or(rest.len()),
        Some(_) => {
            let mut width = 0;
            let mut prev = ' ';
            for (i, c) in rest.chars().enumerate() {
                let stop = matches!(c, ',' | ']' | '}')
                    || (c == ':' && rest.chars().nth(i + 1).is_none_or(|n| n == ' '))
                    || (c == '#' && prev == ' ');
                if stop {
                    break;
                }
                width += 1;
                prev = c;
            }
            let trimmed = rest.chars().take(width).collect::<String>();
            trimmed.trim_end().chars().count().max(1)
        }
    }
}

fn render_one(d: &Diagnostic, source: &str, color: bool) -> String {
    let p = Paint { on: color };
    let mut out = String::new();
    out.push_str(&format!(
        "{} {}\n",
        p.red_bold("error:"),
        p.bold(&d.message)
    ));
    let gutter = d.pos.line.to_string().len();
    let pad = " ".repeat(gutter);
    out.push_str(&format!(
        "{pad}{} {}:{}:{}\n",
        p.blue("-->"),
        d.file.display(),
        d.pos.line,
        d.pos.column
    ));
    if let Some(line) = source.lines().nth(d.pos.line.saturating_sub(1)) {
        let width = token_width(line, d.pos.column);
        let masked;
        let line = if d.secret {
            let start = line
                .char_indices()
                .nth(d.pos.column.saturating_sub(1))
                .map_or(line.len(), |(i, _)| i);
            let end = line[start..]
                .char_indices()
                .nth(width)
                .map_or(line.len(), |(i, _)| start + i);
            masked = format!("{}{}{}", &line[..start], "*".repeat(width), &line[end..]);
            masked.as_str()
        } else {
            line
        };
        out.push_str(&format!("{pad} {}\n", p.blue("|")));
        out.push_str(&format!(
            "{} {} {}\n",
            p.blue(&d.pos.line.to_string()),
            p.blue("|"),
            line.trim_end()
        ));
        out.push_str(&format!(
            "{pad} {} {}{}\n",
            p.blue("|"),
            " ".repeat(d.pos.column.saturating_sub(1)),
            p.red_bold(&"^".repeat(width))
        ));
    }
    out.push_str(&format!("{} {}\n", p.cyan_bold("hint:"), d.hint));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underline_covers_the_token() {
        assert_eq!(token_width("    colums:", 5), 6);
        assert_eq!(token_width("  - { name: x, from: id }", 13), 1);
        assert_eq!(token_width("  mode: \"creat\"", 9), 7);
        assert_eq!(token_width("  uri: http://x:80 # c", 8), 11);
    }
}
