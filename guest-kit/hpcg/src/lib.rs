//! An independent implementation of the HPCG 3.1 reference algorithm for one
//! process, threaded over the CPUs the process may run on.
//!
//! # What matches the reference
//!
//! * Problem ([`problem`]): the 27-point stencil on an `nx×ny×nz` box,
//!   diagonal 26, off-diagonals −1, entries stored per row in the
//!   reference's stencil order, `b` = 26 − (neighbours) so that `A·1 = b`,
//!   `x₀ = 0`; coarse levels regenerated on the halved grid; injection
//!   through the fine-to-coarse map `(2xc, 2yc, 2zc)`.
//! * Kernels ([`sparse`], [`symgs`], [`mg`], [`cg`]): SpMV, WAXPBY, the
//!   symmetric Gauss-Seidel smoother, the 4-level V-cycle (1 pre-, 1
//!   post-smoothing step, one smoothing on the coarsest level), CG with the
//!   reference's operation order; `CG_ref`'s and `CG`'s stopping rules.
//! * Driver ([`report::run`]): the reference phase (50 iterations,
//!   tolerance 0), `TestCG`, `TestSymmetry` (random vectors from glibc's
//!   `rand()` sequence with the default seed, as an unseeded reference run
//!   linked against glibc draws them), the optimized phase (iterations to
//!   reach the reference residual, at most 500, at least 50), the number of
//!   sets `⌊rt / t_opt⌋ + 1`, the timed sets, `TestNorms`, the FLOP model
//!   of `ReportResults` ([`flops`]) and its final GFLOP/s rating including
//!   the setup-time share.
//!
//! # What differs
//!
//! * One process only: no MPI, no halo exchange, no process grid
//!   (`--npx` etc., `--pz`/`--zl`/`--zu`, `hpcg.dat` are not supported).
//! * Arguments: sides that the reference would silently raise (below 16), or
//!   that do not halve three times (an `assert` in the reference), are
//!   rejected; the grid is capped at 2²³ points. As in the reference, a
//!   run given NX NY NZ without `--rt` takes the QuickPath (rt = 0).
//! * Nothing that changes a number: dot products are serial in index order
//!   (the reference's loop), SpMV and WAXPBY are threaded by rows, so every
//!   residual and departure equals a serial reference build's, whatever the
//!   thread count (checked against HPCG 3.1 built without FMA on 16³, 32³,
//!   16×24×32 and 32×16×16).
//! * The stopping rules are HPCG 3.1's (no slack on the optimized solve: that
//!   came to the reference's master later). A NaN symmetry departure fails
//!   here; the reference's `NaN > 1` comparison would let it pass.
//! * The smoother is the reference's sequential sweep on one thread; with
//!   more threads it is a plane-pipelined wavefront that performs every row
//!   update with the same operands in the same order ([`symgs`]), so it is
//!   bit-identical to the sequential sweep (the reference's OpenMP build
//!   keeps the smoother sequential).
//! * No fused multiply-add: Rust does not contract `a*b + c`, whereas a C++
//!   compiler may (GCC contracts by default when FMA is enabled), so a
//!   reference binary built with `-march=native` can differ in the last bits.
//! * The optimisation phase does nothing (this *is* the reference code path),
//!   so its time is taken as 0 in the rating.
//! * Output: one JSON line (`ATOLL-HPCG {…}`) instead of the YAML report;
//!   the memory-bandwidth model is not reported.
//!
//! # Threads
//!
//! `threads` (default: the CPUs in the process's affinity mask, or
//! `--threads N`) bounds how many threads one kernel call uses. The
//! benchmark runs on a persistent pool ([`pool`]) whose idle workers spin,
//! then `sched_yield`, so the timed phase makes no thread-creation or futex
//! system calls: right for dedicated CPUs (an enclave, a pinned guest),
//! wasteful when the CPUs are shared with other busy processes. A call is
//! split only when every thread gets at least [`par::DEFAULT_MIN_ITEMS`]
//! rows, so grids up to 32³ (and the coarse levels) run on one thread, and
//! the pool starts only as many threads as the finest level can use
//! (`workers` in the report). SpMV, WAXPBY, dot products and the smoother
//! are threaded; restriction and prolongation are cheap and stay on the
//! caller. Every reported number except the timings is bitwise the same for
//! every thread count (tested).
//!
//! # Output
//!
//! [`report::Report`] documents every field: the grid, `threads`,
//! `ref_residuals` (50 scaled residuals), `valid` and the `spectral`,
//! `symmetry`, `norms` details, `opt_iters`, `sets`, the FLOP breakdown,
//! `flops_per_set`, `total_flops`, `seconds` (the timed sets), `rating_gflops`
//! (the reference's final rating) and `cycles` (TSC ticks over the timed sets).
//! The process exits 0 for a valid run, 1 for an invalid one (the line is
//! still printed), 2 for bad arguments.

pub mod cg;
pub mod cli;
pub mod flops;
pub mod mg;
pub mod par;
pub mod pool;
pub mod problem;
pub mod report;
pub mod sparse;
pub mod symgs;
pub mod validate;

#[cfg(test)]
mod tests;
