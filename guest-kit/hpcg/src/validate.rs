//! The reference's validation: the spectral test (`TestCG`), the symmetry
//! test (`TestSymmetry`) and the reproducibility test (`TestNorms`), plus the
//! random vectors they use (`FillRandomVector`).

use serde::Serialize;

use crate::cg::{cg, CgVectors, Stop};
use crate::mg::Hierarchy;
use crate::par::Par;
use crate::sparse::{dot, spmv};

/// The C library's `rand()` as glibc implements it (the additive feedback
/// generator `r[i] = r[i−3] + r[i−31] mod 2³²`, seeded through the
/// multiplier 16807 modulo 2³¹−1, first 344 outputs discarded, results shifted
/// right by one). The reference never calls `srand`, so its vectors come from
/// seed 1; using the same generator makes the random vectors identical to a
/// reference run linked against glibc.
#[derive(Clone, Debug)]
pub struct GlibcRand {
    ring: [u32; 31],
    next: usize,
}

/// glibc's `RAND_MAX`.
pub const RAND_MAX: u32 = 0x7fff_ffff;

impl GlibcRand {
    pub fn new(seed: u32) -> Self {
        let mut ring = [0u32; 31];
        // glibc maps seed 0 to 1.
        ring[0] = if seed == 0 { 1 } else { seed };
        for i in 1..31 {
            // Park–Miller step on the signed 32-bit previous value, as glibc
            // does (Schrage's method there; 64-bit arithmetic here).
            let prev = i64::from(ring[i - 1] as i32);
            let mut word = (16807 * prev) % 2_147_483_647;
            if word < 0 {
                word += 2_147_483_647;
            }
            ring[i] = word as u32;
        }
        // r[31..34] = r[0..3] leaves the ring as it is; outputs 34..=343 are discarded.
        let mut g = GlibcRand { ring, next: 34 };
        for _ in 34..344 {
            g.step();
        }
        g
    }

    fn step(&mut self) -> u32 {
        let i = self.next;
        let value = self.ring[i % 31].wrapping_add(self.ring[(i - 3) % 31]);
        self.ring[i % 31] = value;
        self.next = 31 + (i + 1) % 31; // keep the index small but ≥ 3 with the same residue
        value
    }

    /// The next `rand()` value, in `0..=RAND_MAX`.
    pub fn rand(&mut self) -> u32 {
        self.step() >> 1
    }

    /// The reference's `FillRandomVector`: entries in `[1, 2]`.
    pub fn fill(&mut self, v: &mut [f64]) {
        for e in v {
            *e = f64::from(self.rand()) / f64::from(RAND_MAX) + 1.0;
        }
    }
}

/// Result of the spectral convergence test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpectralTest {
    pub passed: bool,
    pub count_pass: u32,
    pub count_fail: u32,
    pub expected_iters_no_prec: usize,
    pub expected_iters_prec: usize,
    pub max_iters_no_prec: usize,
    pub max_iters_prec: usize,
    /// ‖r‖ of the last test solve.
    pub normr: f64,
}

/// Iterations the reference allows without preconditioning ("about 10, permit 12").
pub const EXPECTED_ITERS_NO_PREC: usize = 12;
/// Iterations the reference allows with preconditioning ("about 1, permit 2").
pub const EXPECTED_ITERS_PREC: usize = 2;

/// `TestCG`: makes the fine matrix strongly diagonally dominant (diagonal and
/// `b` scaled by 10⁶, rows with global id < 9 by `(id+2)·10⁶` so the
/// spectrum has a few distinct eigenvalue clusters), solves twice without and
/// twice with the preconditioner to tolerance 10⁻¹² and compares the
/// iteration counts with the reference's limits. The matrix and `b` are
/// restored exactly afterwards.
pub fn test_cg(
    h: &mut Hierarchy,
    data: &mut CgVectors,
    b: &mut [f64],
    x: &mut [f64],
    par: Par,
) -> SpectralTest {
    let original_diag = h.fine().diagonal_vector();
    let original_b = b.to_vec();
    for (i, (&d, bi)) in original_diag.iter().zip(b.iter_mut()).enumerate() {
        // Single process: the local row is the global row id.
        let scale = if i < 9 {
            (i as f64 + 2.0) * 1.0e6
        } else {
            1.0e6
        };
        h.fine_mut().set_diagonal(i, d * scale);
        *bi *= scale;
    }
    let mut out = SpectralTest {
        passed: false,
        count_pass: 0,
        count_fail: 0,
        expected_iters_no_prec: EXPECTED_ITERS_NO_PREC,
        expected_iters_prec: EXPECTED_ITERS_PREC,
        max_iters_no_prec: 0,
        max_iters_prec: 0,
        normr: 0.0,
    };
    for precondition in [false, true] {
        let expected = if precondition {
            EXPECTED_ITERS_PREC
        } else {
            EXPECTED_ITERS_NO_PREC
        };
        for _call in 0..2 {
            x.fill(0.0);
            let run = cg(
                h,
                data,
                b,
                x,
                50,
                Stop::Optimized(1.0e-12),
                precondition,
                par,
            );
            if run.iterations <= expected {
                out.count_pass += 1;
            } else {
                out.count_fail += 1;
            }
            let max = if precondition {
                &mut out.max_iters_prec
            } else {
                &mut out.max_iters_no_prec
            };
            *max = (*max).max(run.iterations);
            out.normr = run.normr;
        }
    }
    for (i, &d) in original_diag.iter().enumerate() {
        h.fine_mut().set_diagonal(i, d);
    }
    b.copy_from_slice(&original_b);
    out.passed = out.count_fail == 0;
    out
}

/// Result of the symmetry test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SymmetryTest {
    pub passed: bool,
    pub count_fail: u32,
    /// |x'Ay − y'Ax| / ((‖x‖²·‖A‖·‖y‖² + ‖y‖²·‖A‖·‖x‖²)·ε), must be ≤ 1.
    pub depsym_spmv: f64,
    /// The same with the preconditioner M⁻¹ in place of A.
    pub depsym_mg: f64,
    /// max |A·xexact − b| (the reference logs it; 0 for this problem).
    pub exact_residual: f64,
}

/// The reference's bound on ‖A‖ for the departure formula (twice the diagonal).
pub const A_NORM: f64 = 2.0 * 26.0;

/// `TestSymmetry`: x'Ay against y'Ax, and x'M⁻¹y against y'M⁻¹x, for two
/// random vectors drawn from `rng` (x first, then y), with the reference's
/// scaling and threshold (departure > 1 fails).
pub fn test_symmetry(
    h: &mut Hierarchy,
    b: &[f64],
    xexact: &[f64],
    rng: &mut GlibcRand,
    par: Par,
) -> SymmetryTest {
    let n = h.fine().rows;
    let mut x = vec![0.0; n];
    let mut y = vec![0.0; n];
    let mut z = vec![0.0; n];
    rng.fill(&mut x);
    rng.fill(&mut y);
    // The formula uses the squared norms (the dot products) as the reference does.
    let y_norm2 = dot(&y, &y, par);
    spmv(h.fine(), &y, &mut z, par);
    let xt_ay = dot(&x, &z, par);
    let x_norm2 = dot(&x, &x, par);
    spmv(h.fine(), &x, &mut z, par);
    let yt_ax = dot(&y, &z, par);
    let scale = (x_norm2 * A_NORM * y_norm2 + y_norm2 * A_NORM * x_norm2) * f64::EPSILON;
    let depsym_spmv = (xt_ay - yt_ax).abs() / scale;
    h.apply(&y, &mut z, par);
    let xt_minv_y = dot(&x, &z, par);
    h.apply(&x, &mut z, par);
    let yt_minv_x = dot(&y, &z, par);
    let depsym_mg = (xt_minv_y - yt_minv_x).abs() / scale;
    let mut count_fail = 0;
    // A NaN departure (e.g. from an infinite result) fails too.
    for dep in [depsym_spmv, depsym_mg] {
        if dep.is_nan() || dep > 1.0 {
            count_fail += 1;
        }
    }
    spmv(h.fine(), xexact, &mut z, par);
    let exact_residual = b
        .iter()
        .zip(&z)
        .map(|(bi, zi)| (bi - zi).abs())
        .fold(0.0, f64::max);
    SymmetryTest {
        passed: count_fail == 0,
        count_fail,
        depsym_spmv,
        depsym_mg,
        exact_residual,
    }
}

/// Result of the reproducibility test over the benchmark sets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NormsTest {
    pub passed: bool,
    pub mean: f64,
    pub variance: f64,
}

/// `TestNorms`: mean and (population) variance of the sets' final scaled
/// residuals; passes when the variance is below 10⁻⁶.
pub fn test_norms(values: &[f64]) -> NormsTest {
    let Some(&first) = values.first() else {
        return NormsTest {
            passed: false,
            mean: f64::NAN,
            variance: f64::NAN,
        };
    };
    let count = values.len() as f64;
    // Mean through deltas from the first sample, as the reference computes it.
    let mean = first + values.iter().fold(0.0, |acc, v| acc + (v - first)) / count;
    let variance = values
        .iter()
        .fold(0.0, |acc, v| acc + (v - mean) * (v - mean))
        / count;
    NormsTest {
        passed: variance < 1.0e-6,
        mean,
        variance,
    }
}
