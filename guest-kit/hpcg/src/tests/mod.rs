//! Host tests. `dense` is an independent, deliberately naive model (dense
//! matrices built from grid geometry, textbook Gauss-Seidel and V-cycle) that
//! the sparse code is cross-checked against before any number is pinned.

mod cli;
mod dense;
mod kernels;
mod pinned;
mod pool;
mod problem;
mod solver;
mod validation;

use crate::par::Par;

/// Splits every kernel as finely as possible over `threads` threads, so
/// even 16³ exercises the threaded paths.
pub(crate) fn eager(threads: usize) -> Par<'static> {
    Par {
        threads,
        min_items: 1,
        pool: None,
    }
}

/// Deterministic test vectors (xorshift), independent of the benchmark's generator.
pub(crate) fn test_vector(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 0.5
        })
        .collect()
}

/// Largest |a − b| / max(1, |b|).
pub(crate) fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}
