//! Vector indexes: what `type: auto` builds, each kind's Lance parameters,
//! and the build itself with its progress.
//!
//! Vector indexes are built through Lance's own index builder on the
//! dataset LanceDB opened, not through LanceDB's `create_index`, because
//! only Lance's builder reports its stages (k-means iterations, rows
//! shuffled into partitions, partitions written), and a build of minutes
//! with no sign of life looks hung. The parameters are LanceDB's own
//! defaults wherever the plan sets none, so an index built here is the one
//! LanceDB would build: the same partition count (from Lance), sub-vector
//! count (dimension / 16, else / 8), sample rate 256 and 50 iterations.
//!
//! `auto` is chosen from measurements (docs/performance.md, "Index
//! defaults", `scripts/bench_index.sh`): see [`choose`].

use std::fmt;
use std::sync::Arc;

use lance::index::DatasetIndexExt;
use lance::index::vector::VectorIndexParams;
use lance_index::vector::bq::RQBuildParams;
use lance_index::vector::hnsw::builder::HnswBuildParams;
use lance_index::vector::ivf::IvfBuildParams;
use lance_index::vector::pq::PQBuildParams;
use lance_index::vector::sq::builder::SQBuildParams;
use lance_linalg::distance::DistanceType;

use crate::plan::{Index, IndexType};

/// LanceDB's defaults for IVF training (`IvfPqIndexBuilder::default()`).
const DEFAULT_SAMPLE_RATE: u32 = 256;
const DEFAULT_MAX_ITERATIONS: u32 = 50;
/// LanceDB's HNSW defaults (`IvfHnswSqIndexBuilder::default()`), which
/// are not Lance's own (`ef_construction` 150).
const HNSW_EDGES: usize = 20;
const HNSW_EF_CONSTRUCTION: usize = 300;

/// What `type: auto` builds on a vector column of `rows` rows of `dim`
/// dimensions. The measurements behind it are in docs/performance.md
/// ("Index defaults"): IVF with 8-bit scalar quantization builds several
/// times faster than LanceDB's default IVF-PQ (it trains no PQ codebooks,
/// which is most of IVF-PQ's build at 1,536 dimensions) and, its codes
/// being nearly exact, finds at least as many true neighbours at the same
/// query settings.
pub fn choose(_rows: u64, _dim: u32) -> IndexType {
    IndexType::IvfSq
}

/// Sub-vectors of a PQ code: the plan's, else LanceDB's rule (dimension
/// / 16, else / 8, else 1; even with 4-bit codes).
fn sub_vectors(index: &Index, dim: u32) -> u32 {
    if let Some(n) = index.num_sub_vectors {
        return n;
    }
    let n = if dim.is_multiple_of(16) {
        dim / 16
    } else if dim.is_multiple_of(8) {
        dim / 8
    } else {
        1
    };
    if index.num_bits == Some(4) && !n.is_multiple_of(2) {
        n + 1
    } else {
        n
    }
}

/// The Lance parameters of a vector index of `kind` (never `auto`: it is
/// resolved by [`choose`] first).
pub fn params(
    kind: IndexType,
    index: &Index,
    dim: u32,
    distance: DistanceType,
) -> VectorIndexParams {
    let sample_rate = index.sample_rate.unwrap_or(DEFAULT_SAMPLE_RATE);
    let max_iterations = index.max_iterations.unwrap_or(DEFAULT_MAX_ITERATIONS);
    let mut ivf = match index.num_partitions {
        Some(p) => IvfBuildParams::new(p as usize),
        None => IvfBuildParams::default(),
    };
    ivf.sample_rate = sample_rate as usize;
    ivf.max_iters = max_iterations as usize;
    let pq = || {
        let mut pq = PQBuildParams::new(
            sub_vectors(index, dim) as usize,
            index.num_bits.unwrap_or(8) as usize,
        );
        pq.max_iters = max_iterations as usize;
        pq
    };
    let hnsw = || {
        HnswBuildParams::default()
            .num_edges(HNSW_EDGES)
            .ef_construction(HNSW_EF_CONSTRUCTION)
    };
    let sq = || SQBuildParams {
        sample_rate: sample_rate as usize,
        ..Default::default()
    };
    match kind {
        IndexType::IvfPq => VectorIndexParams::with_ivf_pq_params(distance, ivf, pq()),
        IndexType::IvfFlat => VectorIndexParams::with_ivf_flat_params(distance, ivf),
        IndexType::IvfSq => VectorIndexParams::with_ivf_sq_params(distance, ivf, sq()),
        IndexType::IvfRq => {
            let rq = index
                .num_bits
                .map(|b| RQBuildParams::new(b as u8))
                .unwrap_or_default();
            VectorIndexParams::with_ivf_rq_params(distance, ivf, rq)
        }
        IndexType::IvfHnswSq => {
            VectorIndexParams::with_ivf_hnsw_sq_params(distance, ivf, hnsw(), sq())
        }
        IndexType::IvfHnswPq => {
            VectorIndexParams::with_ivf_hnsw_pq_params(distance, ivf, hnsw(), pq())
        }
        other => unreachable!("`{other}` is not a vector index kind"),
    }
}

/// Stage-by-stage progress of one index build (Lance's stages:
/// `train_ivf` in iterations, `train_quantizer`, `shuffle` in rows,
/// `merge_partitions` in partitions, …).
pub trait StageProgress: Send + Sync + fmt::Debug {
    fn stage_start(&self, stage: &str, total: Option<u64>, unit: &str);
    fn stage_progress(&self, stage: &str, done: u64);
    fn stage_done(&self, stage: &str);
}

/// Lance's progress callback: forwarded to a [`StageProgress`], and the
/// crash point `index-stage:<table>.<column>:<stage>` (a kill in the middle
/// of a build, for the tests).
#[derive(Debug)]
struct LanceProgress {
    label: String,
    to: Option<Arc<dyn StageProgress>>,
}

#[async_trait::async_trait]
impl lance::index::IndexBuildProgress for LanceProgress {
    async fn stage_start(&self, stage: &str, total: Option<u64>, unit: &str) -> lance::Result<()> {
        crate::failpoint::hit(&format!("index-stage:{}:{stage}", self.label));
        if let Some(p) = &self.to {
            p.stage_start(stage, total, unit);
        }
        Ok(())
    }
    async fn stage_progress(&self, stage: &str, completed: u64) -> lance::Result<()> {
        if let Some(p) = &self.to {
            p.stage_progress(stage, completed);
        }
        Ok(())
    }
    async fn stage_complete(&self, stage: &str) -> lance::Result<()> {
        if let Some(p) = &self.to {
            p.stage_done(stage);
        }
        Ok(())
    }
}

/// Builds (or replaces) the vector index of `column` on the table's
/// dataset, and hands the new version to LanceDB's handle.
pub(crate) async fn build(
    table: &lancedb::Table,
    name: &str,
    column: &str,
    params: &VectorIndexParams,
    progress: Option<Arc<dyn StageProgress>>,
) -> lancedb::Result<()> {
    let wrapper = table
        .dataset()
        .expect("a local or object-store LanceDB table is a native table");
    let mut ds = (*wrapper.get().await?).clone();
    let columns = [column];
    ds.create_index_builder(&columns, lance_index::IndexType::Vector, params)
        .replace(true)
        .progress(Arc::new(LanceProgress {
            label: format!("{name}.{column}"),
            to: progress,
        }))
        .await?;
    wrapper.update(ds);
    Ok(())
}

/// The dimension of a fixed-size-list vector column, from the table's
/// schema.
pub(crate) fn dimension(schema: &arrow_schema::Schema, column: &str) -> Option<u32> {
    match schema.field_with_name(column).ok()?.data_type() {
        arrow_schema::DataType::FixedSizeList(_, n) => Some(*n as u32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Metric;

    fn index(kind: IndexType) -> Index {
        Index {
            column: "vector".into(),
            kind,
            metric: Metric::Auto,
            num_partitions: None,
            num_sub_vectors: None,
            num_bits: None,
            max_iterations: None,
            sample_rate: None,
        }
    }

    #[test]
    fn sub_vectors_follow_lancedb_rule_unless_the_plan_sets_them() {
        let ix = index(IndexType::IvfPq);
        assert_eq!(sub_vectors(&ix, 1536), 96);
        assert_eq!(sub_vectors(&ix, 128), 8);
        assert_eq!(sub_vectors(&ix, 24), 3);
        assert_eq!(sub_vectors(&ix, 30), 1);
        let four_bits = Index {
            num_bits: Some(4),
            ..index(IndexType::IvfPq)
        };
        assert_eq!(sub_vectors(&four_bits, 24), 4);
        let set = Index {
            num_sub_vectors: Some(48),
            ..index(IndexType::IvfPq)
        };
        assert_eq!(sub_vectors(&set, 1536), 48);
    }

    #[test]
    fn the_plans_knobs_reach_the_lance_parameters() {
        let ix = Index {
            num_partitions: Some(64),
            max_iterations: Some(7),
            sample_rate: Some(32),
            ..index(IndexType::IvfPq)
        };
        let p = params(IndexType::IvfPq, &ix, 128, DistanceType::Cosine);
        assert_eq!(p.metric_type, DistanceType::Cosine);
        let text = format!("{:?}", p.stages);
        assert!(text.contains("num_partitions: Some(64)"), "{text}");
        assert!(text.contains("max_iters: 7"), "{text}");
        assert!(text.contains("sample_rate: 32"), "{text}");
        assert!(text.contains("num_sub_vectors: 8"), "{text}");
    }
}
