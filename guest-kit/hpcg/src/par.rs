//! Splitting work over the process's CPUs with scoped threads.
//!
//! Every kernel that runs in parallel writes disjoint, contiguous pieces of one
//! output slice, and each element is computed by exactly the same arithmetic
//! whatever the piece boundaries are, so results never depend on the thread count.
//! Reductions go through [`crate::sparse::dot`], which sums fixed-size chunks and
//! then the chunk sums in order, for the same reason.
//!
//! The benchmark runs its kernels on a [`Pool`] of persistent worker threads
//! that wait by spinning (then yielding), like an OpenMP runtime with an
//! active wait policy: the timed phase makes no thread-creation, futex or
//! stack-mapping system calls, which would otherwise add scheduler IPIs and
//! TLB shootdowns to the noise the isolation experiment measures. Without a
//! pool (`Par::pool == None`, e.g. in unit tests), a split call spawns scoped
//! threads instead. Either way a call is only split when every thread gets at
//! least [`Par::min_items`] elements.

use std::num::NonZeroUsize;
use std::sync::Mutex;

pub use crate::pool::Pool;

/// How to split a kernel over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Par<'p> {
    /// Upper bound on the threads one kernel call uses (the calling thread counts).
    pub threads: usize,
    /// A call is split only so far that every thread gets at least this many
    /// elements (rows for SpMV, vector entries for WAXPBY, chunks for dot).
    pub min_items: usize,
    /// Persistent workers to run on; `None` spawns scoped threads per call.
    pub pool: Option<&'p Pool>,
}

/// Default lower bound on the rows per thread: below it the spawn costs more
/// than the work (a 27-point SpMV row is ~54 flops, a few nanoseconds).
pub const DEFAULT_MIN_ITEMS: usize = 32 * 1024;

impl<'p> Par<'p> {
    /// One thread: every kernel runs on the caller.
    pub const fn serial() -> Self {
        Par {
            threads: 1,
            min_items: usize::MAX,
            pool: None,
        }
    }

    /// `threads` threads with the default split threshold (no pool).
    pub fn with_threads(threads: usize) -> Self {
        Par {
            threads: threads.max(1),
            min_items: DEFAULT_MIN_ITEMS,
            pool: None,
        }
    }

    /// The same split on `pool`'s workers (at most its size).
    pub fn on_pool<'q>(&self, pool: &'q Pool) -> Par<'q> {
        Par {
            threads: self.threads.min(pool.size()),
            min_items: self.min_items,
            pool: Some(pool),
        }
    }

    /// Runs `job(t)` for `t` in `0..workers` concurrently, `t = 0` on the caller.
    pub fn broadcast(&self, workers: usize, job: &(dyn Fn(usize) + Sync)) {
        if workers <= 1 {
            job(0);
            return;
        }
        match self.pool {
            Some(pool) => pool.run(workers, job),
            None => std::thread::scope(|scope| {
                for t in 1..workers {
                    scope.spawn(move || job(t));
                }
                job(0);
            }),
        }
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
    /// [`workers_for`](Self::workers_for) threads. The caller runs the first piece.
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
        // Each worker takes its own piece out of its own (uncontended) slot.
        let pieces: Vec<Mutex<(usize, &mut [T])>> = out
            .chunks_mut(piece)
            .enumerate()
            .map(|(k, p)| Mutex::new((k * piece, p)))
            .collect();
        let job = |t: usize| {
            if let Some(slot) = pieces.get(t) {
                let mut guard = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (start, ref mut piece) = *guard;
                f(start, piece);
            }
        };
        self.broadcast(pieces.len(), &job);
    }
}
