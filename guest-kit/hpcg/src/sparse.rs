//! The vector and matrix kernels of the reference (`ComputeSPMV_ref`,
//! `ComputeDotProduct_ref`, `ComputeWAXPBY_ref`), threaded so that results are
//! the same for every thread count.

use crate::par::Par;
use crate::problem::SparseMatrix;

/// Entries per partial sum of [`dot`]. Fixed, so the summation order does not
/// depend on the thread count; 8192 makes grids up to 16×16×32 a single
/// chunk, i.e. exactly the reference's sequential sum.
pub const DOT_CHUNK: usize = 8192;

/// `y = A·x`: each row summed from 0.0 in the row's stored (stencil) order, as
/// the reference does.
pub fn spmv(a: &SparseMatrix, x: &[f64], y: &mut [f64], par: Par) {
    assert!(
        x.len() >= a.rows && y.len() >= a.rows,
        "spmv: vector shorter than the matrix"
    );
    par.for_each_piece(&mut y[..a.rows], |start, piece| {
        for (k, out) in piece.iter_mut().enumerate() {
            let (vals, cols) = a.row(start + k);
            let mut sum = 0.0;
            for (v, &c) in vals.iter().zip(cols) {
                sum += v * x[c as usize];
            }
            *out = sum;
        }
    });
}

/// `x·y`: sums of [`DOT_CHUNK`]-entry chunks (each from 0.0, in index order),
/// then the chunk sums in order. Threads compute disjoint runs of chunks.
pub fn dot(x: &[f64], y: &[f64], par: Par) -> f64 {
    assert_eq!(x.len(), y.len(), "dot: length mismatch");
    let chunks = x.len().div_ceil(DOT_CHUNK);
    let mut partial = vec![0.0f64; chunks];
    // Threads split the chunk sums; the threshold is in chunks, so convert
    // the per-thread minimum from entries.
    let chunk_par = Par {
        min_items: (par.min_items / DOT_CHUNK).max(1),
        ..par
    };
    let chunk_par = if par.min_items == usize::MAX {
        Par::serial()
    } else {
        chunk_par
    };
    chunk_par.for_each_piece(&mut partial, |first, piece| {
        for (k, out) in piece.iter_mut().enumerate() {
            let lo = (first + k) * DOT_CHUNK;
            let hi = (lo + DOT_CHUNK).min(x.len());
            let mut sum = 0.0;
            for (a, b) in x[lo..hi].iter().zip(&y[lo..hi]) {
                sum += a * b;
            }
            *out = sum;
        }
    });
    partial.iter().fold(0.0, |acc, s| acc + s)
}

/// `w = alpha·x + beta·y` into a separate `w`.
///
/// The reference special-cases `alpha == 1` and `beta == 1`; multiplying by
/// 1.0 is exact in IEEE arithmetic, so the general form gives the same bits.
pub fn waxpby(alpha: f64, x: &[f64], beta: f64, y: &[f64], w: &mut [f64], par: Par) {
    assert!(
        x.len() == w.len() && y.len() == w.len(),
        "waxpby: length mismatch"
    );
    par.for_each_piece(w, |start, piece| {
        for (k, out) in piece.iter_mut().enumerate() {
            *out = alpha * x[start + k] + beta * y[start + k];
        }
    });
}

/// `w = alpha·w + beta·y` (the reference's WAXPBY with `w` aliasing `x`).
pub fn axpby_into_first(alpha: f64, w: &mut [f64], beta: f64, y: &[f64], par: Par) {
    assert_eq!(w.len(), y.len(), "waxpby: length mismatch");
    par.for_each_piece(w, |start, piece| {
        for (k, out) in piece.iter_mut().enumerate() {
            *out = alpha * *out + beta * y[start + k];
        }
    });
}

/// `w = alpha·x + beta·w` (the reference's WAXPBY with `w` aliasing `y`).
pub fn axpby_into_second(alpha: f64, x: &[f64], beta: f64, w: &mut [f64], par: Par) {
    assert_eq!(w.len(), x.len(), "waxpby: length mismatch");
    par.for_each_piece(w, |start, piece| {
        for (k, out) in piece.iter_mut().enumerate() {
            *out = alpha * x[start + k] + beta * *out;
        }
    });
}
