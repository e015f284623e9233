//! The multigrid V-cycle preconditioner of `ComputeMG_ref` over the levels
//! `GenerateCoarseProblem` builds.

use crate::par::Par;
use crate::problem::{fine_to_coarse, generate_matrix, GridError, SparseMatrix};
use crate::sparse::spmv;
use crate::symgs::{symgs_with, Sweep};

/// Levels in the reference's V-cycle, the finest included.
pub const LEVELS: usize = 4;

/// Smoother applications before and after the coarse-grid correction
/// (the reference's `numberOfPresmootherSteps` / `numberOfPostsmootherSteps`).
pub const PRESMOOTHER_STEPS: usize = 1;
pub const POSTSMOOTHER_STEPS: usize = 1;

/// One multigrid level: its matrix and, except on the coarsest, the
/// injection map to the next level and that level's work vectors.
#[derive(Clone, Debug)]
pub struct Level {
    pub a: SparseMatrix,
    /// Coarse row `k` is fine row `f2c[k]` (empty on the coarsest level).
    pub f2c: Vec<u32>,
    /// Coarse right-hand side (restricted residual).
    rc: Vec<f64>,
    /// Coarse correction.
    xc: Vec<f64>,
    /// `A·x` on this level after pre-smoothing.
    axf: Vec<f64>,
}

/// The matrices of all levels, finest first.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    pub levels: Vec<Level>,
    /// The smoother's sweeps (symmetric except in tests that break it).
    pub(crate) sweep: Sweep,
}

impl Hierarchy {
    /// Wraps the finest matrix and generates `levels − 1` coarser ones, each
    /// the same stencil regenerated on the halved grid.
    pub fn new(fine: SparseMatrix, levels: usize) -> Result<Self, GridError> {
        let mut out: Vec<Level> = Vec::with_capacity(levels);
        let mut current = fine;
        for depth in 1..=levels {
            if depth == levels {
                out.push(Level {
                    a: current,
                    f2c: Vec::new(),
                    rc: Vec::new(),
                    xc: Vec::new(),
                    axf: Vec::new(),
                });
                break;
            }
            let coarse_grid = current.grid.coarse();
            let coarse = generate_matrix(coarse_grid)?;
            let f2c = fine_to_coarse(current.grid);
            let level = Level {
                rc: vec![0.0; coarse.rows],
                xc: vec![0.0; coarse.rows],
                axf: vec![0.0; current.rows],
                f2c,
                a: current,
            };
            out.push(level);
            current = coarse;
        }
        Ok(Hierarchy {
            levels: out,
            sweep: Sweep::Symmetric,
        })
    }

    /// The finest matrix (the one CG solves with).
    pub fn fine(&self) -> &SparseMatrix {
        &self.levels[0].a
    }

    pub fn fine_mut(&mut self) -> &mut SparseMatrix {
        &mut self.levels[0].a
    }

    /// `x = M⁻¹·r`: one V-cycle from a zero initial guess.
    pub fn apply(&mut self, r: &[f64], x: &mut [f64], par: Par) {
        let sweep = self.sweep;
        v_cycle(&mut self.levels, r, x, par, sweep);
    }
}

fn v_cycle(levels: &mut [Level], r: &[f64], x: &mut [f64], par: Par, sweep: Sweep) {
    let Some((level, coarser)) = levels.split_first_mut() else {
        return;
    };
    let rows = level.a.rows;
    x[..rows].fill(0.0);
    if coarser.is_empty() {
        symgs_with(&level.a, r, x, par, sweep);
        return;
    }
    for _ in 0..PRESMOOTHER_STEPS {
        symgs_with(&level.a, r, x, par, sweep);
    }
    spmv(&level.a, x, &mut level.axf, par);
    // Restriction by injection: only the residual at the injected points is formed.
    for (rc, &f) in level.rc.iter_mut().zip(&level.f2c) {
        let f = f as usize;
        *rc = r[f] - level.axf[f];
    }
    v_cycle(coarser, &level.rc, &mut level.xc, par, sweep);
    // Prolongation: add the coarse correction back at the injected points.
    for (&xc, &f) in level.xc.iter().zip(&level.f2c) {
        x[f as usize] += xc;
    }
    for _ in 0..POSTSMOOTHER_STEPS {
        symgs_with(&level.a, r, x, par, sweep);
    }
}
