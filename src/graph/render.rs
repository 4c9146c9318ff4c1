//! Rendering a [`StepGraph`] as text, Graphviz DOT or Mermaid.
//!
//! All three list steps in the same deterministic topological order, so the
//! output is stable across runs and diffs cleanly in pull requests.

use super::{Step, StepGraph};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per step with what it waits for.
    Text,
    /// Graphviz DOT (`| dot -Tsvg`).
    Dot,
    /// Mermaid flowchart (renders in GitHub Markdown).
    Mermaid,
}

pub fn render(g: &StepGraph, format: Format) -> String {
    match format {
        Format::Text => text(g),
        Format::Dot => dot(g),
        Format::Mermaid => mermaid(g),
    }
}

fn text(g: &StepGraph) -> String {
    let order = g.ordered();
    let width = order
        .iter()
        .map(|n| g.graph[*n].id().len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for n in &order {
        let step = &g.graph[*n];
        let deps: Vec<String> = g
            .dependencies(*n)
            .iter()
            .map(|d| g.graph[*d].id())
            .collect();
        let after = if deps.is_empty() {
            String::new()
        } else {
            format!("  (after {})", deps.join(", "))
        };
        out.push_str(&format!("{:<width$}  {step}{after}\n", step.id()));
    }
    out
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn dot(g: &StepGraph) -> String {
    let mut out = String::from(
        "digraph apply {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    let order = g.ordered();
    for n in &order {
        let step = &g.graph[*n];
        let shape = match step {
            Step::Backup | Step::Report => ", shape=ellipse",
            _ => "",
        };
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\"{shape}];\n",
            quote(&step.id()),
            quote(&step.to_string().replace('`', ""))
        ));
    }
    for n in &order {
        for d in g.dependencies(*n) {
            out.push_str(&format!(
                "  \"{}\" -> \"{}\";\n",
                quote(&g.graph[d].id()),
                quote(&g.graph[*n].id())
            ));
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid(g: &StepGraph) -> String {
    let order = g.ordered();
    let mut out = String::from("flowchart TD\n");
    for n in &order {
        let label = g.graph[*n].to_string().replace('`', "").replace('"', "'");
        out.push_str(&format!("  s{}[\"{label}\"]\n", n.index()));
    }
    for n in &order {
        for d in g.dependencies(*n) {
            out.push_str(&format!("  s{} --> s{}\n", d.index(), n.index()));
        }
    }
    out
}
