//! The step graph: what `apply` does, as a petgraph DAG.
//!
//! A checked [`Plan`] compiles into steps with explicit dependencies: an
//! optional backup before every copy; per collection a chain
//! snapshot (record the table's pre-apply version) → copy → each index →
//! validate; and one report after everything. Collections share no edges, so
//! the executor can run them concurrently and a failure in one branch leaves
//! the others alone. Each step has a typed [`StepKey`] that keys the state
//! record; its string form (`copy:canvas_concepts`) is what users see.

mod render;

use std::fmt;

use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::plan::{IndexType, Plan};
use crate::state::StepKey;

pub use render::Format;

/// One unit of work in an apply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// Archive the source directory (or export an HTTP source) before any copy.
    Backup,
    /// Record (and tag) the target table's version before anything writes it.
    Snapshot { table: String },
    /// Stream the source collection into the table.
    Copy { collection: String, table: String },
    /// Build one index on one column.
    Index {
        table: String,
        column: String,
        index: IndexType,
    },
    /// Check the table against the source.
    Validate { table: String },
    /// Write the apply report.
    Report,
}

impl Step {
    /// The key of this step in the state record.
    pub fn key(&self) -> StepKey {
        match self {
            Step::Backup => StepKey::Backup,
            Step::Snapshot { table } => StepKey::snapshot(table),
            Step::Copy { table, .. } => StepKey::copy(table),
            Step::Index {
                table,
                column,
                index,
            } => StepKey::Index {
                table: table.clone(),
                column: column.clone(),
                index: *index,
            },
            Step::Validate { table } => StepKey::validate(table),
            Step::Report => StepKey::Report,
        }
    }

    /// The key's string form, as `graph` and the report show it.
    pub fn id(&self) -> String {
        self.key().to_string()
    }

    /// The table a step belongs to, if any.
    pub fn table(&self) -> Option<&str> {
        match self {
            Step::Snapshot { table }
            | Step::Copy { table, .. }
            | Step::Index { table, .. }
            | Step::Validate { table } => Some(table),
            Step::Backup | Step::Report => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Backup => write!(f, "back up the source"),
            Step::Snapshot { table } => write!(f, "record the version of table `{table}`"),
            Step::Copy { collection, table } => write!(f, "copy `{collection}` into `{table}`"),
            Step::Index {
                table,
                column,
                index,
            } => {
                write!(f, "build a `{index}` index on `{table}.{column}`")
            }
            Step::Validate { table } => write!(f, "validate `{table}` against the source"),
            Step::Report => write!(f, "write the apply report"),
        }
    }
}

/// The compiled plan: a DAG of steps. Edges point from a step to the steps
/// that depend on it.
#[derive(Debug, Clone)]
pub struct StepGraph {
    pub graph: DiGraph<Step, ()>,
}

impl StepGraph {
    /// Compiles a checked plan.
    pub fn compile(plan: &Plan) -> StepGraph {
        let mut graph = DiGraph::new();
        let backup = plan.backup.as_ref().map(|_| graph.add_node(Step::Backup));
        let mut tails = Vec::new();
        for c in &plan.collections {
            let snapshot = graph.add_node(Step::Snapshot {
                table: c.table.clone(),
            });
            if let Some(b) = backup {
                graph.add_edge(b, snapshot, ());
            }
            let copy = graph.add_node(Step::Copy {
                collection: c.source.clone(),
                table: c.table.clone(),
            });
            graph.add_edge(snapshot, copy, ());
            // Indexes on one table run one after another: each is a Lance
            // commit, and concurrent commits to one table only conflict.
            let mut prev = copy;
            for ix in &c.indexes {
                let node = graph.add_node(Step::Index {
                    table: c.table.clone(),
                    column: ix.column.clone(),
                    index: ix.kind,
                });
                graph.add_edge(prev, node, ());
                prev = node;
            }
            let validate = graph.add_node(Step::Validate {
                table: c.table.clone(),
            });
            graph.add_edge(prev, validate, ());
            tails.push(validate);
        }
        let report = graph.add_node(Step::Report);
        for t in tails {
            graph.add_edge(t, report, ());
        }
        StepGraph { graph }
    }

    /// Steps in a deterministic topological order (ties broken by insertion order).
    pub fn ordered(&self) -> Vec<NodeIndex> {
        let mut indegree: Vec<usize> = self
            .graph
            .node_indices()
            .map(|n| {
                self.graph
                    .neighbors_directed(n, petgraph::Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: std::collections::BTreeSet<NodeIndex> = self
            .graph
            .node_indices()
            .filter(|n| indegree[n.index()] == 0)
            .collect();
        let mut out = Vec::with_capacity(indegree.len());
        while let Some(&n) = ready.iter().next() {
            ready.remove(&n);
            out.push(n);
            for m in self
                .graph
                .neighbors_directed(n, petgraph::Direction::Outgoing)
            {
                indegree[m.index()] -= 1;
                if indegree[m.index()] == 0 {
                    ready.insert(m);
                }
            }
        }
        out
    }

    /// The steps a step waits for, in insertion order.
    pub fn dependencies(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut deps: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(n, petgraph::Direction::Incoming)
            .collect();
        deps.sort();
        deps
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    pub fn render(&self, format: Format) -> String {
        render::render(self, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Vars, load_str};
    use std::path::Path;

    const PLAN: &str = r#"
version: 1
name: t
source: { chroma: { path: ./db } }
target: { lancedb: { uri: ./out } }
backup: { dir: ./b }
collections:
  - source: a
    indexes: [{ column: vector, type: ivf_pq }, { column: document, type: fts }]
  - source: b
"#;

    #[test]
    fn compiles_backup_branches_and_report() {
        let plan = load_str(PLAN, Path::new("t.yaml"), &Vars::empty()).unwrap();
        let g = StepGraph::compile(&plan);
        let ids: Vec<String> = g.ordered().iter().map(|n| g.graph[*n].id()).collect();
        assert_eq!(ids.first().map(String::as_str), Some("backup"));
        assert_eq!(ids.last().map(String::as_str), Some("report"));
        assert_eq!(g.len(), 1 + 5 + 3 + 1);
        assert!(!petgraph::algo::is_cyclic_directed(&g.graph));
        // The two collections share no path: b's copy does not wait for a's.
        let find = |id: &str| {
            g.graph
                .node_indices()
                .find(|n| g.graph[*n].id() == id)
                .unwrap()
        };
        assert!(!petgraph::algo::has_path_connecting(
            &g.graph,
            find("copy:a"),
            find("copy:b"),
            None
        ));
        assert!(petgraph::algo::has_path_connecting(
            &g.graph,
            find("backup"),
            find("copy:b"),
            None
        ));
        let pos = |id: &str| ids.iter().position(|x| x == id).unwrap();
        assert!(pos("copy:a") < pos("index:a:vector:ivf_pq"));
        assert!(pos("index:a:vector:ivf_pq") < pos("index:a:document:fts"));
        assert!(pos("index:a:document:fts") < pos("validate:a"));
    }
}
