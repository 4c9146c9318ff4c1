//! lanceferry: declarative, plan-and-apply migrations from ChromaDB to LanceDB.
//!
//! The one way through: YAML → [`plan::PlanSpec`](plan::spec::PlanSpec) →
//! checked [`plan::Plan`] → [`graph::StepGraph`] → executor. The CLI in
//! [`cli`] is a thin layer over these modules.

pub mod backup;
pub mod cli;
pub mod diff;
pub mod digest;
pub mod engine;
pub mod export;
pub mod failpoint;
pub mod graph;
pub mod hash;
pub mod mirror;
pub mod plan;
pub mod shard;
pub mod source;
pub mod state;
pub mod target;
pub mod transform;
pub mod verify;
