//! Preconditioned conjugate gradients, as `CG_ref` and `CG` run it.

use crate::mg::Hierarchy;
use crate::par::Par;
use crate::sparse::{axpby_into_first, axpby_into_second, dot, spmv, waxpby};

/// How the iteration decides it has converged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// `CG_ref`: iterate while `‖r‖/‖r₀‖ > tolerance`.
    Reference(f64),
    /// `CG` (the "optimized" entry point): in HPCG 3.1 the same rule,
    /// iterate while `‖r‖/‖r₀‖ > tolerance` (the reference's later master
    /// added a 10⁻⁶ slack, commit 1819918; 3.1 has none).
    Optimized(f64),
}

impl Stop {
    fn keep_going(self, scaled: f64) -> bool {
        match self {
            Stop::Reference(tol) | Stop::Optimized(tol) => scaled > tol,
        }
    }
}

/// The work vectors of one CG solve (the reference's `CGData`).
#[derive(Clone, Debug)]
pub struct CgVectors {
    r: Vec<f64>,
    z: Vec<f64>,
    p: Vec<f64>,
    ap: Vec<f64>,
}

impl CgVectors {
    pub fn new(rows: usize) -> Self {
        CgVectors {
            r: vec![0.0; rows],
            z: vec![0.0; rows],
            p: vec![0.0; rows],
            ap: vec![0.0; rows],
        }
    }
}

/// What one CG solve did.
#[derive(Clone, Debug, PartialEq)]
pub struct CgOutcome {
    /// Iterations performed.
    pub iterations: usize,
    /// ‖b − A·x₀‖.
    pub normr0: f64,
    /// ‖r‖ after the last iteration.
    pub normr: f64,
    /// ‖r‖/‖r₀‖ after each iteration, in order.
    pub scaled_residuals: Vec<f64>,
}

impl CgOutcome {
    pub fn scaled_residual(&self) -> f64 {
        self.normr / self.normr0
    }
}

/// Solves `A·x = b` from the `x` given, at most `max_iter` iterations, with
/// (`precondition`) or without the multigrid preconditioner. The operation
/// order is the reference's, including its first-iteration copy `p = z`.
// The argument list mirrors the reference's `CG`/`CG_ref` signature on purpose.
#[allow(clippy::too_many_arguments)]
pub fn cg(
    h: &mut Hierarchy,
    data: &mut CgVectors,
    b: &[f64],
    x: &mut [f64],
    max_iter: usize,
    stop: Stop,
    precondition: bool,
    par: Par,
) -> CgOutcome {
    let CgVectors { r, z, p, ap } = data;
    let a = h.fine();
    // r = b − A·x, computed through p as the reference does.
    p.copy_from_slice(x);
    spmv(a, p, ap, par);
    waxpby(1.0, b, -1.0, ap, r, par);
    let normr0 = dot(r, r, par).sqrt();
    let mut normr = normr0;
    let mut rtz = 0.0;
    let mut scaled_residuals = Vec::with_capacity(max_iter.min(1024));
    let mut iterations = 0;
    let mut k = 1;
    while k <= max_iter && stop.keep_going(normr / normr0) {
        if precondition {
            h.apply(r, z, par);
        } else {
            z.copy_from_slice(r);
        }
        if k == 1 {
            p.copy_from_slice(z);
            rtz = dot(r, z, par);
        } else {
            let old_rtz = rtz;
            rtz = dot(r, z, par);
            let beta = rtz / old_rtz;
            axpby_into_second(1.0, z, beta, p, par);
        }
        let a = h.fine();
        spmv(a, p, ap, par);
        let pap = dot(p, ap, par);
        let alpha = rtz / pap;
        axpby_into_first(1.0, x, alpha, p, par);
        axpby_into_first(1.0, r, -alpha, ap, par);
        normr = dot(r, r, par).sqrt();
        scaled_residuals.push(normr / normr0);
        iterations = k;
        k += 1;
    }
    CgOutcome {
        iterations,
        normr0,
        normr,
        scaled_residuals,
    }
}
