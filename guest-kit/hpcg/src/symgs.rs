//! The symmetric Gauss-Seidel smoother of `ComputeSYMGS_ref`: one forward
//! sweep over the rows in index order, then one backward sweep, each row
//! updated in place from the newest values of its neighbours.
//!
//! Row update, exactly as the reference orders it: `sum = r[i]`, subtract
//! `a_ij·x_j` for every stored entry in stencil order (the diagonal
//! included), add `x_i·a_ii` back, and store `sum / a_ii`.
//!
//! # Threads
//!
//! Gauss-Seidel in lexicographic order is sequential in the reference. With
//! more than one thread this module runs a *wavefront* that performs every row
//! update with exactly the same operands as the sequential order, so results
//! are bit-identical (tested against the sequential sweep):
//!
//! * z-planes are dealt round-robin to threads; a thread walks its planes in
//!   sweep order and each plane line by line (y), each line in x order;
//! * forward: line `y` of plane `z` starts once plane `z−1` has finished lines
//!   `0..=y+1` (the lower neighbours it reads are then final). That same rule,
//!   applied to plane `z+1`, keeps plane `z+1` from touching lines `y−1..=y+1`
//!   before plane `z`'s line `y` has read their old values;
//! * a barrier separates the sweeps; backward is the mirror image (planes from
//!   the top, lines from `ny−1` down, rows from `nx−1` down).
//!
//! The vector is shared as `AtomicU64` bit patterns with relaxed accesses, and
//! the per-plane progress counters publish the values (release/acquire), so
//! even a wrong schedule could only produce wrong numbers, never a data race.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;

use crate::par::Par;
use crate::problem::SparseMatrix;

/// Which sweeps one smoother application performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sweep {
    /// Forward then backward: the reference's symmetric smoother.
    #[default]
    Symmetric,
    /// Forward only: a deliberately non-symmetric smoother, for the test
    /// that the symmetry check catches a broken preconditioner.
    #[cfg(test)]
    ForwardOnly,
}

/// One symmetric Gauss-Seidel step with right-hand side `r`, updating `x`.
pub fn symgs(a: &SparseMatrix, r: &[f64], x: &mut [f64], par: Par) {
    symgs_with(a, r, x, par, Sweep::Symmetric);
}

/// [`symgs`] with a choice of sweeps (see [`Sweep`]).
pub fn symgs_with(a: &SparseMatrix, r: &[f64], x: &mut [f64], par: Par, sweep: Sweep) {
    assert!(
        r.len() >= a.rows && x.len() >= a.rows,
        "symgs: vector shorter than the matrix"
    );
    let backward = match sweep {
        Sweep::Symmetric => true,
        #[cfg(test)]
        Sweep::ForwardOnly => false,
    };
    let workers = par.workers_for(a.rows).min(a.grid.nz);
    if workers <= 1 {
        symgs_sequential(a, r, x, backward);
    } else {
        symgs_wavefront(a, r, x, workers, backward, par);
    }
}

#[inline(always)]
fn relax(a: &SparseMatrix, r: &[f64], x: &mut [f64], i: usize) {
    let (vals, cols) = a.row(i);
    let diag = a.diagonal(i);
    let mut sum = r[i];
    for (v, &c) in vals.iter().zip(cols) {
        sum -= v * x[c as usize];
    }
    sum += x[i] * diag;
    x[i] = sum / diag;
}

/// The reference's loop order, on one thread.
pub fn symgs_sequential(a: &SparseMatrix, r: &[f64], x: &mut [f64], backward: bool) {
    for i in 0..a.rows {
        relax(a, r, x, i);
    }
    if backward {
        for i in (0..a.rows).rev() {
            relax(a, r, x, i);
        }
    }
}

// The cast in `as_atomic` needs AtomicU64 to be no stricter aligned than f64
// (true on x86-64, where both are 8); refuse to build where it is not.
const _: () = assert!(core::mem::align_of::<AtomicU64>() <= core::mem::align_of::<f64>());
const _: () = assert!(core::mem::size_of::<AtomicU64>() == core::mem::size_of::<f64>());

fn as_atomic(x: &mut [f64]) -> &[AtomicU64] {
    let len = x.len();
    let ptr = x.as_mut_ptr().cast::<AtomicU64>();
    // SAFETY: `ptr` comes from a live `&mut [f64]` of `len` elements, borrowed
    // exclusively for the returned lifetime; AtomicU64 has the size of f64 and
    // no stricter alignment (checked at compile time above), every bit
    // pattern is a valid u64, and from here on the memory is only accessed
    // through the atomics.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

#[inline(always)]
fn relax_shared(a: &SparseMatrix, r: &[f64], x: &[AtomicU64], i: usize) {
    let load = |j: usize| f64::from_bits(x[j].load(Ordering::Relaxed));
    let (vals, cols) = a.row(i);
    let diag = a.diagonal(i);
    let mut sum = r[i];
    for (v, &c) in vals.iter().zip(cols) {
        sum -= v * load(c as usize);
    }
    sum += load(i) * diag;
    x[i].store((sum / diag).to_bits(), Ordering::Relaxed);
}

/// Waits until `counter` reaches `target`: spins briefly (the producer is
/// usually a line ahead), then yields so a shared CPU is not monopolised.
fn wait_for(counter: &AtomicUsize, target: usize) {
    let mut spins = 0u32;
    while counter.load(Ordering::Acquire) < target {
        if spins < 4096 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn symgs_wavefront(
    a: &SparseMatrix,
    r: &[f64],
    x: &mut [f64],
    workers: usize,
    backward: bool,
    par: Par,
) {
    let (nx, ny, nz) = (a.grid.nx, a.grid.ny, a.grid.nz);
    debug_assert_eq!(nx * ny * nz, a.rows);
    let x = as_atomic(&mut x[..a.rows]);
    // Lines finished per plane, one array per sweep so neither needs a reset.
    let forward_done: Vec<AtomicUsize> = (0..nz).map(|_| AtomicUsize::new(0)).collect();
    let backward_done: Vec<AtomicUsize> = (0..nz).map(|_| AtomicUsize::new(0)).collect();
    let barrier = Barrier::new(workers);
    let work = |t: usize| {
        for z in (t..nz).step_by(workers) {
            for y in 0..ny {
                if z > 0 {
                    wait_for(&forward_done[z - 1], (y + 2).min(ny));
                }
                let first = nx * (y + ny * z);
                for i in first..first + nx {
                    relax_shared(a, r, x, i);
                }
                forward_done[z].store(y + 1, Ordering::Release);
            }
        }
        if !backward {
            return;
        }
        // Every forward value must be final before any backward update reads it.
        barrier.wait();
        let top = nz - 1;
        for z in (0..nz).rev().filter(|z| (top - z) % workers == t) {
            for y in (0..ny).rev() {
                if z < top {
                    wait_for(&backward_done[z + 1], (ny - y + 1).min(ny));
                }
                let first = nx * (y + ny * z);
                for i in (first..first + nx).rev() {
                    relax_shared(a, r, x, i);
                }
                backward_done[z].store(ny - y, Ordering::Release);
            }
        }
    };
    // Needs `workers` threads running at once (they wait on each other);
    // both the pool and the scoped-thread fallback provide that.
    par.broadcast(workers, &work);
}
