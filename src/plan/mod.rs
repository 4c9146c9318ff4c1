//! The plan language: spec types, loading, variables, checks.
//!
//! `PlanSpec` (spec.rs) mirrors the YAML and generates the JSON Schema;
//! `load` runs the pipeline YAML → tree → variables → schema → spec →
//! semantic checks, and yields a `Plan` (model.rs) that later stages trust.

pub mod check;
pub mod diagnostic;
pub mod load;
pub mod model;
pub mod redact;
pub mod spec;
pub mod vars;
pub mod yaml;

pub use diagnostic::{Diagnostic, PlanDiagnostics};
pub use load::{LoadError, load, load_str};
pub use model::*;
pub use vars::Vars;
