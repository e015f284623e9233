//! Splitting work over the process's CPUs with scoped threads.
//!
//! Every kernel that runs in parallel writes disjoint, contiguous pieces of one
//! output slice, and each element is computed by exactly the same arithmetic
//! whatever the piece boundaries are, so results never depend on the thread count.
//! Reductions go through [`crate::sparse::dot`], which sums fixed-size chunks and
//! then the chunk sums in order, for the same reason.
//!
//! Threads are spawned per call (`std::thread::scope`) rather than kept in a pool:
//! it needs no `unsafe` lifetime juggling, and a call is only split when every
//! thread gets at least [`Par::min_items`] elements, so the spawn (tens of
//! microseconds) stays small next to the work.

use std::num::NonZeroUsize;

/// How to split a kernel over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Par {
    /// Upper bound on the threads one kernel call uses (the calling thread counts).
    pub threads: usize,
    /// A call is split only so far that every thread gets at least this many
    /// elements (rows for SpMV, vector entries for WAXPBY, chunks for dot).
    pub min_items: usize,
}

/// Default lower bound on the rows per thread: below it the spawn costs more
/// than the work (a 27-point SpMV row is ~54 flops, a few nanoseconds).
pub const DEFAULT_MIN_ITEMS: usize = 32 * 1024;

impl Par {
    /// One thread: every kernel runs on the caller.
    pub const fn serial() -> Self {
        Par { threads: 1, min_items: usize::MAX }
    }

    /// `threads` threads with the default split threshold.
    pub fn with_threads(threads: usize) -> Self {
        Par { threads: threads.max(1), min_items: DEFAULT_MIN_ITEMS }
    }

    /// As many threads as the process may run on: on Linux
    /// `available_parallelism` reads the affinity mask (sched_getaffinity) and
    /// cgroup quota, so an enclave or `taskset` restriction is honoured.
    pub fn from_affinity() -> Self {
        Self::with_threads(std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
    }

    /// How many threads a call over `items` elements uses.
    pub fn workers_for(&self, items: usize) -> usize {
        if self.threads <= 1 || self.min_items == 0 {
            return self.threads.max(1);
        }
        (items / self.min_items).clamp(1, self.threads)
    }

    /// Calls `f(start, piece)` for contiguous pieces of `out` covering it in
    /// order, `piece` starting at element `start`, on up to
    /// [`workers_for`](Self::workers_for) threads. The caller runs the last piece.
    pub fn for_each_piece<T, F>(&self, out: &mut [T], f: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync,
    {
        let n = out.len();
        let workers = self.workers_for(n);
        if workers <= 1 {
            f(0, out);
            return;
        }
        let piece = n.div_ceil(workers);
        std::thread::scope(|scope| {
            let f = &f;
            let mut rest = out;
            let mut start = 0;
            while rest.len() > piece {
                let (head, tail) = rest.split_at_mut(piece);
                let s = start;
                scope.spawn(move || f(s, head));
                start += piece;
                rest = tail;
            }
            f(start, rest);
        });
    }
}
