//! A fixed set of worker threads that wait for jobs by spinning.
//!
//! [`Pool::scoped`] starts `size − 1` workers inside a `std::thread::scope`
//! and hands the pool to a closure; [`Pool::run`] broadcasts one job to the
//! first `n − 1` workers, runs share 0 on the caller and returns once every
//! share has finished. Workers spin on a generation counter for a while and
//! then call `sched_yield`, so an idle pool costs CPU time but makes no
//! blocking system calls (no futex wake-ups, hence no IPIs between the
//! benchmark's CPUs).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A job as the workers see it: its lifetime erased (see [`Pool::run`]).
type Job = &'static (dyn Fn(usize) + Sync);

/// Spins before a waiting thread starts yielding its CPU.
const SPINS_BEFORE_YIELD: u32 = 1 << 14;

/// Persistent workers; create with [`Pool::scoped`].
pub struct Pool {
    size: usize,
    /// Bumped once per job; workers run a job when they see it change.
    generation: AtomicUsize,
    /// The current job and how many shares it has (the caller's included).
    job: Mutex<Option<(Job, usize)>>,
    /// Worker shares of the current job not finished yet.
    pending: AtomicUsize,
    /// A worker share panicked (re-raised on the caller).
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Serialises `run` calls from different threads. A job must not call
    /// `run` itself: the nested call would wait for this lock forever.
    busy: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Pools compare by identity: two `Par`s are equal only on the same pool.
impl PartialEq for Pool {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for Pool {}

fn spin_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Pool {
    /// Runs `body` with a pool of `size` threads (the caller and `size − 1`
    /// workers); the workers stop when `body` returns.
    pub fn scoped<R>(size: usize, body: impl FnOnce(&Pool) -> R) -> R {
        let pool = Pool {
            size: size.max(1),
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            busy: Mutex::new(()),
        };
        std::thread::scope(|scope| {
            for worker in 1..pool.size {
                let pool = &pool;
                scope.spawn(move || pool.worker_loop(worker));
            }
            // Stop the workers however `body` ends, or the scope would wait forever.
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Release);
                }
            }
            let _stop = Stop(&pool.shutdown);
            body(&pool)
        })
    }

    /// Threads in the pool, the caller included.
    pub fn size(&self) -> usize {
        self.size
    }

    fn worker_loop(&self, worker: usize) {
        let mut seen = 0usize;
        loop {
            let mut current = seen;
            spin_until(|| {
                current = self.generation.load(Ordering::Acquire);
                current != seen || self.shutdown.load(Ordering::Acquire)
            });
            if current == seen {
                return; // shutdown
            }
            seen = current;
            let job = *self
                .job
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some((job, shares)) = job else { continue };
            if worker < shares {
                if catch_unwind(AssertUnwindSafe(|| job(worker))).is_err() {
                    self.panicked.store(true, Ordering::Relaxed);
                }
                // Last use of `job`: after this the caller may return and
                // the closure it points to may be gone.
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Runs `job(t)` for `t` in `0..shares` (at most the pool size) and
    /// returns when all have finished; `t = 0` runs on the caller.
    pub fn run(&self, shares: usize, job: &(dyn Fn(usize) + Sync)) {
        let shares = shares.clamp(1, self.size);
        if shares == 1 {
            job(0);
            return;
        }
        let _serial = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: only the lifetime is changed (same fat-pointer layout). The
        // erased reference is reachable by workers through `self.job` only
        // between here and the `Wait` guard's drop below, which — on normal
        // return and on unwinding alike — first waits until every worker share
        // has finished (`pending == 0`, each worker decrements after its last
        // use of the job) and then clears `self.job`. So no worker uses the
        // job after `run` returns, while `job` itself outlives this call.
        let erased: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        *self
            .job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((erased, shares));
        self.pending.store(shares - 1, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);

        struct Wait<'a>(&'a Pool);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                spin_until(|| self.0.pending.load(Ordering::Acquire) == 0);
                *self
                    .0
                    .job
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            }
        }
        let wait = Wait(self);
        job(0);
        drop(wait);
        if self.panicked.swap(false, Ordering::Relaxed) {
            resume_unwind(Box::new("a pool worker panicked"));
        }
    }
}
