//! The official floating-point operation count of `ReportResults`.
//!
//! Everything is counted per CG iteration from the algorithm, not measured:
//! per iteration 3 dot products and 3 WAXPBYs of `2·rows` flops each, one
//! SpMV of `2·nnz`, and per V-cycle level above the coarsest a pre- and a
//! post-smoother (`4·nnz` each: forward and backward sweep) and the residual
//! SpMV (`2·nnz`), plus one smoother (`4·nnz`) on the coarsest level. Each
//! set adds one dot, one WAXPBY and one SpMV for the initial residual. The
//! total is then scaled by `ref_iters / opt_iters`, so a code needing more
//! iterations than the reference to reach its residual gets no credit for
//! the extra ones.

use serde::Serialize;

use crate::mg::{POSTSMOOTHER_STEPS, PRESMOOTHER_STEPS};

/// The reference's number of benchmark sets: `int(rt / t_opt) + 1`, where
/// `t_opt` is the duration of the optimized-phase solve. Saturates instead
/// of overflowing if `t_opt` is 0 or tiny.
pub fn number_of_sets(runtime_seconds: u32, opt_seconds: f64) -> usize {
    let ratio = f64::from(runtime_seconds) / opt_seconds;
    // `as` truncates toward zero like C's int() and saturates (NaN → 0). An
    // optimized solve too fast for the clock (0 s) would ask for endless
    // sets: at most one per microsecond of the run time, plus one.
    let most = u64::from(runtime_seconds).saturating_mul(1_000_000);
    (ratio as usize).min(most as usize).saturating_add(1)
}

/// The reference's final rating in GFLOP/s ("with convergence and
/// optimization phase overhead"): the official FLOP total over the timed
/// sets' time plus, per set, a tenth of the optimisation and setup times.
pub fn rating_gflops(
    total_flops: f64,
    seconds: f64,
    sets: usize,
    optimisation_seconds: f64,
    setup_seconds: f64,
) -> f64 {
    total_flops
        / (seconds + sets as f64 * (optimisation_seconds / 10.0 + setup_seconds / 10.0))
        / 1.0e9
}

/// Rows and nonzeros of one multigrid level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelSize {
    pub rows: f64,
    pub nonzeros: f64,
}

/// The reference's FLOP model for a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlopCount {
    /// Dot products ("Raw DDOT").
    pub ddot: f64,
    /// Vector updates ("Raw WAXPBY").
    pub waxpby: f64,
    /// The CG's own SpMVs ("Raw SpMV").
    pub spmv: f64,
    /// The preconditioner on all levels ("Raw MG").
    pub mg: f64,
    /// Their sum ("Total").
    pub raw_total: f64,
    /// `raw_total · ref_iters / opt_iters` ("Total with convergence overhead"):
    /// the count the rating is based on.
    pub total: f64,
}

impl FlopCount {
    /// `levels[0]` is the finest level; `sets` CG runs of `opt_iters`
    /// iterations each, against the reference's `ref_iters`.
    pub fn new(levels: &[LevelSize], sets: usize, opt_iters: usize, ref_iters: usize) -> Self {
        let sets_f = sets as f64;
        let iters = sets_f * opt_iters as f64;
        let fine = levels.first().copied().unwrap_or(LevelSize {
            rows: 0.0,
            nonzeros: 0.0,
        });
        // "+ sets": the initial residual r = b − A·x of every set.
        let ddot = (3.0 * iters + sets_f) * 2.0 * fine.rows;
        let waxpby = (3.0 * iters + sets_f) * 2.0 * fine.rows;
        let spmv = (iters + sets_f) * 2.0 * fine.nonzeros;
        let mut mg = 0.0;
        if let Some((coarsest, upper)) = levels.split_last() {
            for level in upper {
                mg += PRESMOOTHER_STEPS as f64 * iters * 4.0 * level.nonzeros;
                mg += iters * 2.0 * level.nonzeros;
                mg += POSTSMOOTHER_STEPS as f64 * iters * 4.0 * level.nonzeros;
            }
            mg += iters * 4.0 * coarsest.nonzeros;
        }
        let raw_total = ddot + waxpby + spmv + mg;
        let total = if opt_iters == 0 {
            0.0
        } else {
            raw_total * ref_iters as f64 / opt_iters as f64
        };
        FlopCount {
            ddot,
            waxpby,
            spmv,
            mg,
            raw_total,
            total,
        }
    }
}
