//! The benchmark driver (the reference's `main.cpp` with one process) and
//! the one-line JSON report.

use std::time::Instant;

use serde::Serialize;

use crate::cg::{cg, CgVectors, Stop};
use crate::flops::{number_of_sets, rating_gflops, FlopCount, LevelSize};
use crate::mg::{Hierarchy, LEVELS};
use crate::par::{Par, Pool};
use crate::problem::{generate_problem, Grid, GridError};
use crate::sparse::spmv;
use crate::validate::{
    test_cg, test_norms, test_symmetry, GlibcRand, NormsTest, SpectralTest, SymmetryTest,
};

/// Iterations of the reference CG run that fixes the target residual.
pub const REF_MAX_ITERS: usize = 50;

/// Prefix of the report line.
pub const REPORT_PREFIX: &str = "ATOLL-HPCG ";

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub grid: Grid,
    /// Requested benchmark time in seconds; 0 is the reference's QuickPath
    /// (one set, one call of each timing block).
    pub runtime_seconds: u32,
    /// Thread count and split threshold; `run` adds the worker pool.
    pub par: Par<'static>,
}

/// Everything the run found, serialised as the report line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub nx: usize,
    pub ny: usize,
    pub nz: usize,
    /// Threads allowed (affinity mask or `--threads`).
    pub threads: usize,
    /// Threads actually started: fewer when the grid is too small to split
    /// that far (see [`crate::par::DEFAULT_MIN_ITEMS`]).
    pub workers: usize,
    pub rt: u32,
    pub quick_path: bool,
    pub levels: usize,
    pub rows: usize,
    pub nonzeros: usize,
    /// Iterations of the reference CG run (50 unless the residual hit 0).
    pub ref_iters: usize,
    /// ‖r‖/‖r₀‖ after each reference CG iteration.
    pub ref_residuals: Vec<f64>,
    /// All of the reference's checks passed (spectral, symmetry,
    /// reproducibility, optimized CG reached the reference residual).
    pub valid: bool,
    pub spectral: SpectralTest,
    pub symmetry: SymmetryTest,
    pub norms: NormsTest,
    /// Optimized-phase runs that failed to reach the reference residual.
    pub tolerance_failures: u32,
    /// Iterations per benchmark set.
    pub opt_iters: usize,
    /// Duration of the optimized-phase CG run that fixed `opt_iters`.
    pub opt_seconds: f64,
    /// Number of benchmark sets: ⌊rt / opt_seconds⌋ + 1.
    pub sets: usize,
    /// ‖r‖/‖r₀‖ at the end of each set.
    pub set_residuals: Vec<f64>,
    pub flops: FlopCount,
    /// `flops.total / sets`.
    pub flops_per_set: f64,
    /// `flops.total`: the official count the rating divides.
    pub total_flops: f64,
    /// Wall time of the benchmark sets' CG solves.
    pub seconds: f64,
    /// Problem and multigrid generation (the reference's setup time).
    pub setup_seconds: f64,
    /// Time of one SpMV + V-cycle pair before the reference phase.
    pub spmv_mg_seconds: f64,
    /// The official rating: `total_flops / (seconds + sets·setup_seconds/10)`
    /// (the optimisation-phase term is 0: nothing is optimised), in GFLOP/s.
    pub rating_gflops: f64,
    /// `total_flops / seconds` in GFLOP/s ("with convergence overhead", no setup share).
    pub gflops_timed: f64,
    /// TSC ticks across the benchmark sets (0 where there is no TSC).
    pub cycles: u64,
    /// The CPUs the process was allowed to run on, as Linux lists them
    /// (`Cpus_allowed_list` of `/proc/self/status`; absent where there is none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_allowed: Option<String>,
}

impl Report {
    /// The line the binary prints: the prefix and the JSON object.
    pub fn line(&self) -> String {
        // Serialising plain numbers, strings, bools and arrays cannot fail.
        let json = serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        format!("{REPORT_PREFIX}{json}")
    }
}

/// `Cpus_allowed_list` from a `/proc/PID/status` text.
pub fn cpus_allowed(status: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The time-stamp counter, for cycle counts that do not depend on the clock
/// source the guest kernel picked.
pub fn read_tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads the time-stamp counter and has no memory
        // effects; every x86-64 CPU implements it. The only way it can fault
        // is CR4.TSD set by the kernel for user mode, which Linux leaves clear
        // unless a process asks for it via prctl(PR_SET_TSC), which this one
        // never does.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// Runs the benchmark as the reference's `main` does with one process, on
/// a pool of `config.par.threads` threads.
pub fn run(config: Config) -> Result<Report, GridError> {
    // No kernel splits wider than the finest level allows, so threads beyond
    // that would only spin (and steal a shared CPU from the ones working).
    let size = config.par.workers_for(config.grid.rows());
    Pool::scoped(size, |pool| run_on(config, config.par, pool))
}

fn run_on(config: Config, requested: Par<'static>, pool: &Pool) -> Result<Report, GridError> {
    let par = requested.on_pool(pool);
    let quick_path = config.runtime_seconds == 0;

    let setup_start = Instant::now();
    let problem = generate_problem(config.grid)?;
    let rows = problem.a.rows;
    let nonzeros = problem.a.nonzeros;
    let (mut b, mut x, xexact) = (problem.b, problem.x, problem.xexact);
    let mut h = Hierarchy::new(problem.a, LEVELS)?;
    let setup_seconds = setup_start.elapsed().as_secs_f64();

    let mut data = CgVectors::new(rows);
    let mut rng = GlibcRand::new(1);

    // The reference times SpMV + MG on a random vector (10 calls, 1 on the
    // QuickPath); it only reports the time, but it also draws the first
    // random vector, which the symmetry test's vectors follow.
    let mut x_overlap = vec![0.0; rows];
    let mut b_computed = vec![0.0; rows];
    rng.fill(&mut x_overlap);
    let calls = if quick_path { 1 } else { 10 };
    let t = Instant::now();
    for _ in 0..calls {
        spmv(h.fine(), &x_overlap, &mut b_computed, par);
        h.apply(&b_computed, &mut x_overlap, par);
    }
    let spmv_mg_seconds = t.elapsed().as_secs_f64() / f64::from(calls);

    // Reference phase: 50 iterations, tolerance 0.
    x.fill(0.0);
    let reference = cg(
        &mut h,
        &mut data,
        &b,
        &mut x,
        REF_MAX_ITERS,
        Stop::Reference(0.0),
        true,
        par,
    );
    let ref_tolerance = reference.scaled_residual();

    // Validation.
    let spectral = test_cg(&mut h, &mut data, &mut b, &mut x, par);
    let symmetry = test_symmetry(&mut h, &b, &xexact, &mut rng, par);

    // Optimized phase: how many iterations the (same) kernels need to reach
    // the reference's residual, at most 10× the reference's.
    x.fill(0.0);
    let t = Instant::now();
    let opt = cg(
        &mut h,
        &mut data,
        &b,
        &mut x,
        10 * REF_MAX_ITERS,
        Stop::Optimized(ref_tolerance),
        true,
        par,
    );
    let opt_seconds = t.elapsed().as_secs_f64();
    // HPCG 3.1's main.cpp: a failure when the optimized solve ends above the
    // reference's residual (no slack in 3.1).
    let tolerance_failures = u32::from(opt.scaled_residual() > ref_tolerance);
    let opt_iters = opt.iterations.max(REF_MAX_ITERS);
    let sets = number_of_sets(config.runtime_seconds, opt_seconds);

    // The timed sets: each a full opt_iters-iteration solve from zero.
    let mut seconds = 0.0;
    let mut set_residuals = Vec::with_capacity(sets);
    let tsc_start = read_tsc();
    for _ in 0..sets {
        x.fill(0.0);
        let t = Instant::now();
        let run = cg(
            &mut h,
            &mut data,
            &b,
            &mut x,
            opt_iters,
            Stop::Optimized(0.0),
            true,
            par,
        );
        seconds += t.elapsed().as_secs_f64();
        set_residuals.push(run.scaled_residual());
    }
    let cycles = read_tsc().wrapping_sub(tsc_start);
    let norms = test_norms(&set_residuals);

    let level_sizes: Vec<LevelSize> = h
        .levels
        .iter()
        .map(|l| LevelSize {
            rows: l.a.rows as f64,
            nonzeros: l.a.nonzeros as f64,
        })
        .collect();
    let flops = FlopCount::new(&level_sizes, sets, opt_iters, REF_MAX_ITERS);
    let total_flops = flops.total;
    // Nothing is optimised, so the optimisation phase takes no time.
    let rating_gflops = rating_gflops(total_flops, seconds, sets, 0.0, setup_seconds);
    let gflops_timed = total_flops / seconds / 1.0e9;
    let valid = spectral.passed && symmetry.passed && norms.passed && tolerance_failures == 0;

    Ok(Report {
        nx: config.grid.nx,
        ny: config.grid.ny,
        nz: config.grid.nz,
        threads: requested.threads,
        workers: pool.size(),
        rt: config.runtime_seconds,
        quick_path,
        levels: h.levels.len(),
        rows,
        nonzeros,
        ref_iters: reference.iterations,
        ref_residuals: reference.scaled_residuals,
        valid,
        spectral,
        symmetry,
        norms,
        tolerance_failures,
        opt_iters,
        opt_seconds,
        sets,
        set_residuals,
        flops_per_set: total_flops / sets as f64,
        total_flops,
        flops,
        seconds,
        setup_seconds,
        spmv_mg_seconds,
        rating_gflops,
        gflops_timed,
        cycles,
        cpus_allowed: None,
    })
}
