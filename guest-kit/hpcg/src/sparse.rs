//! The vector and matrix kernels of the reference (`ComputeSPMV_ref`,
//! `ComputeDotProduct_ref`, `ComputeWAXPBY_ref`): SpMV and WAXPBY threaded by
//! rows (each row's result independent of the others), the dot product serial,
//! so results are the same for every thread count and equal the reference's.

use crate::par::Par;
use crate::problem::SparseMatrix;

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

/// `x·y`, summed from 0.0 in index order on the calling thread: the reference's
/// serial `ComputeDotProduct_ref`, bit for bit on every grid. A parallel sum would
/// change the order of the additions, and CG amplifies the last bits into residuals
/// and symmetry departures that no longer match a reference log (a 7× different
/// `depsym_spmv` at 32³); three dots per iteration are a few percent of its work.
pub fn dot(x: &[f64], y: &[f64], _par: Par) -> f64 {
    assert_eq!(x.len(), y.len(), "dot: length mismatch");
    x.iter().zip(y).fold(0.0, |acc, (a, b)| acc + a * b)
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
