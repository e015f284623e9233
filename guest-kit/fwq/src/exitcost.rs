//! `--exit-costs`: what an exit costs the guest this runs in, measured from Linux user space.
//!
//! Three kinds of sample, taken one after another by a thread pinned to one CPU:
//!
//! * **rdtsc pair**: two [`tsc::cycles`] reads with nothing between them. Not an exit; it is
//!   the timing's own cost, which every other sample also carries, reported so readers can
//!   subtract it (and so a hypervisor that traps RDTSC shows at once).
//! * **cpuid**: one `CPUID` of leaf 0 between two [`tsc::cycles`] reads. CPUID exits
//!   unconditionally under VMX (SDM Vol. 3C, 26.1.2 "Instructions That Cause VM Exits
//!   Unconditionally") and both atoll and KVM intercept it under SVM (APM Vol. 2, 15.9
//!   "Instruction Intercepts"), so in a guest the sample is one full exit round trip: the
//!   world switch out, the hypervisor's CPUID handling, the world switch back. Natively it is a
//!   few tens to hundreds of cycles. CPUID is itself serialising (SDM Vol. 2A, "CPUID"), so it
//!   cannot overlap the reads around it.
//! * **timer**: one `clock_nanosleep(CLOCK_MONOTONIC, 0, sleep_us)` between two reads. Its
//!   *overshoot* ([`overshoot`]: elapsed cycles minus the requested sleep in cycles) is what
//!   delivering one timer interrupt to the sleeper costs, as a whole: the guest kernel
//!   programming its timer (the LAPIC TSC-deadline MSR write or one-shot count, itself an exit
//!   under KVM), going idle (HLT, again an exit unless the hypervisor lets the guest halt), the
//!   hypervisor taking the host timer, deciding it is this guest's and injecting it (or, on a
//!   dedicated core, the interrupt reaching the guest directly), the guest's interrupt handler,
//!   and the scheduler's wakeup of this thread back to user space. The parts cannot be told
//!   apart from here, so the overshoot is comparable across native, atoll and KVM only as a
//!   whole — natively it is the same path without the hypervisor's steps.
//!
//! The sleeping thread's timer slack is set to 1 ns (`PR_SET_TIMERSLACK`; 0 would mean "the
//! default"): a normal thread's default slack of 50 µs lets the kernel fire its wakeup up to
//! 50 µs late to batch timers, which would be measured as overshoot and swamp the cost.
//! The slack in force is in the JSON.
//!
//! Statistics are nearest-rank ([`stats`]); cycles are TSC cycles; the TSC frequency comes
//! from [`tsc::measure_tsc_hz`] on the pinned thread, or `--tsc-hz`.

use crate::affinity;
use crate::args::{
    ArgError, Args, CpuList, DEFAULT_EXIT_COST_ITERATIONS, DEFAULT_QUANTUM_US, DEFAULT_SAMPLES,
    DEFAULT_SLEEP_US, MAX_EXIT_COST_ITERATIONS, MAX_SLEEP_US,
};
use crate::probe::TscSource;
use crate::stats::{self, Ppm, StatsError};
use crate::tsc::{self, CalibrationError};
use core::hint::black_box;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{self, Write};

/// The prefix of the JSON line that benches look for on a console.
pub const PREFIX: &str = "ATOLL-EXITCOST";
/// The CPUID leaf timed: leaf 0 (vendor and highest leaf) exists on every x86-64 CPU and is
/// the cheapest for a hypervisor to answer, so the sample is the exit, not the emulation.
pub const CPUID_LEAF: u32 = 0;
/// Untimed CPUIDs before the timed ones (caches, branch predictors, the hypervisor's path).
pub const CPUID_WARMUP: usize = 100;
/// Untimed sleeps before the timed ones (the same, and the timer's first programming).
pub const TIMER_WARMUP: usize = 10;
/// The timer slack asked for, ns: the smallest nonzero (0 restores the default).
pub const TIMER_SLACK_NS: u64 = 1;

/// The validated parameters of an `--exit-costs` run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitCostConfig {
    pub cpu: usize,
    pub iterations: usize,
    pub sleep_us: u64,
    pub tsc_hz: Option<u64>,
}

impl ExitCostConfig {
    /// Checks `args` (with `--exit-costs`) against the bounds and the process's `affinity`.
    pub fn new(args: Args, affinity: &CpuList) -> Result<ExitCostConfig, ArgError> {
        // clap refuses an FWQ option given with --exit-costs; this catches `Args` built by
        // hand (an FWQ value different from its default was certainly meant for FWQ).
        if args.cpus.is_some()
            || args.raw.is_some()
            || args.calibrate
            || args.table
            || args.quantum_us != DEFAULT_QUANTUM_US
            || args.samples != DEFAULT_SAMPLES
        {
            return Err(ArgError::NotExitCosts);
        }
        if affinity.cpus().is_empty() {
            return Err(ArgError::EmptyAffinity);
        }
        let iterations = args.iterations.unwrap_or(DEFAULT_EXIT_COST_ITERATIONS);
        if !(1..=MAX_EXIT_COST_ITERATIONS).contains(&iterations) {
            return Err(ArgError::Iterations(iterations));
        }
        let sleep_us = args.sleep_us.unwrap_or(DEFAULT_SLEEP_US);
        if !(1..=MAX_SLEEP_US).contains(&sleep_us) {
            return Err(ArgError::SleepUs(sleep_us));
        }
        if args.tsc_hz == Some(0) {
            return Err(ArgError::TscHz);
        }
        let cpu = match args.cpu {
            Some(cpu) if !affinity.contains(cpu) => {
                return Err(ArgError::CpuNotInAffinity {
                    cpu,
                    mask: affinity.clone(),
                })
            }
            Some(cpu) => cpu,
            // Non-empty, checked above.
            None => affinity.cpus()[0],
        };
        Ok(ExitCostConfig {
            cpu,
            iterations,
            sleep_us,
            tsc_hz: args.tsc_hz,
        })
    }
}

/// What can go wrong while measuring.
#[derive(Debug, thiserror::Error)]
pub enum ExitCostError {
    #[error("pinning a thread to CPU {cpu}: {source}")]
    Pin { cpu: usize, source: io::Error },
    #[error("cannot allocate {samples} samples of each kind")]
    Alloc { samples: usize },
    #[error("measuring the TSC frequency: {0}")]
    Calibration(#[from] CalibrationError),
    #[error("the TSC went backwards in {kind} sample {index}")]
    TscBackwards { kind: &'static str, index: usize },
    #[error("clock_nanosleep: {0}")]
    Sleep(io::Error),
    #[error("{kind}: {source}")]
    Stats {
        kind: &'static str,
        source: StatsError,
    },
    #[error("spawning the measuring thread: {0}")]
    Spawn(io::Error),
    #[error("the measuring thread panicked")]
    Panicked,
}

/// Min, nearest-rank median and 99th percentile, and max of some samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Quantiles<T> {
    pub min: T,
    pub median: T,
    pub p99: T,
    pub max: T,
}

impl<T> Quantiles<T> {
    /// The same quantiles through `f` (f monotonic, so the order is kept).
    pub fn map<U>(self, f: impl Fn(T) -> U) -> Quantiles<U> {
        Quantiles {
            min: f(self.min),
            median: f(self.median),
            p99: f(self.p99),
            max: f(self.max),
        }
    }
}

/// A sample count with its quantiles, in cycles.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub samples: usize,
    #[serde(flatten)]
    pub cycles: Quantiles<u64>,
}

/// The spread of `samples` (any order, not modified). Unlike [`stats::summarize`] a minimum of
/// 0 is fine: clamped overshoots are 0.
pub fn spread(samples: &[u64]) -> Result<Spread, StatsError> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) else {
        return Err(StatsError::Empty);
    };
    Ok(Spread {
        samples: sorted.len(),
        cycles: Quantiles {
            min,
            median: stats::percentile_sorted(&sorted, Ppm::MEDIAN)?,
            p99: stats::percentile_sorted(&sorted, Ppm::P99)?,
            max,
        },
    })
}

/// `sleep_us` microseconds in TSC cycles at `tsc_hz`, rounded down (so a rounding error can
/// only add less than a cycle to the overshoot, never hide one).
pub fn sleep_cycles(sleep_us: u64, tsc_hz: u64) -> u64 {
    let c = u128::from(sleep_us) * u128::from(tsc_hz) / 1_000_000;
    u64::try_from(c).unwrap_or(u64::MAX)
}

/// One sleep's overshoot in cycles: `elapsed − sleep_cycles`, and whether it was clamped.
///
/// The kernel never wakes a sleeper before its CLOCK_MONOTONIC deadline, but the sleep in
/// cycles comes from the measured TSC frequency and CLOCK_MONOTONIC is slewed by NTP, so an
/// elapsed time a little short of it is possible: that is clamped to 0 and counted, so that a
/// reader can see whether the frequency is off (many clamped samples) rather than the run
/// quietly reporting a too-small cost.
pub fn overshoot(elapsed: u64, sleep_cycles: u64) -> (u64, bool) {
    match elapsed.checked_sub(sleep_cycles) {
        Some(o) => (o, false),
        None => (0, true),
    }
}

/// The overshoots of sleeps that took `elapsed` cycles each, and how many were clamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overshoots {
    pub cycles: Vec<u64>,
    pub clamped: usize,
}

/// [`overshoot`] of every sleep in `elapsed`, each `sleep_us` long at `tsc_hz`.
pub fn overshoots(elapsed: &[u64], sleep_us: u64, tsc_hz: u64) -> Overshoots {
    let expected = sleep_cycles(sleep_us, tsc_hz);
    let mut clamped = 0;
    let cycles = elapsed
        .iter()
        .map(|&e| {
            let (o, c) = overshoot(e, expected);
            clamped += usize::from(c);
            o
        })
        .collect();
    Overshoots { cycles, clamped }
}

/// Cycles at `tsc_hz` in microseconds.
pub fn cycles_to_us(cycles: u64, tsc_hz: u64) -> f64 {
    cycles as f64 * 1e6 / tsc_hz as f64
}

/// The raw measurement: cycles per sample of each kind, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Samples {
    pub tsc_hz: u64,
    pub tsc_source: TscSource,
    /// The timer slack in force while sleeping, ns (`PR_GET_TIMERSLACK`).
    pub timer_slack_ns: u64,
    pub rdtsc_pair: Vec<u64>,
    pub cpuid: Vec<u64>,
    /// Elapsed cycles of each sleep (not yet the overshoot).
    pub sleep: Vec<u64>,
}

/// A zeroed buffer of `n` samples, every page touched now rather than inside the measurement.
fn buffer(n: usize) -> Result<Vec<u64>, ExitCostError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| ExitCostError::Alloc { samples: n })?;
    v.resize(n, 0);
    Ok(v)
}

/// CPUID of [`CPUID_LEAF`]; the result is passed through `black_box` by the caller.
#[inline(always)]
fn cpuid() -> core::arch::x86_64::CpuidResult {
    // CPUID exists on every x86-64 CPU and leaf 0 on every CPU that has CPUID (SDM Vol. 2A,
    // "CPUID"); it reads no memory and changes only the four output registers.
    core::arch::x86_64::__cpuid(CPUID_LEAF)
}

fn time_rdtsc_pairs(out: &mut [u64]) {
    for slot in out.iter_mut() {
        let start = tsc::cycles();
        let end = tsc::cycles();
        *slot = end.wrapping_sub(start);
    }
}

fn time_cpuids(out: &mut [u64]) {
    for _ in 0..CPUID_WARMUP {
        black_box(cpuid());
    }
    for slot in out.iter_mut() {
        let start = tsc::cycles();
        let r = cpuid();
        let end = tsc::cycles();
        black_box(r);
        *slot = end.wrapping_sub(start);
    }
}

/// Sets this thread's timer slack to [`TIMER_SLACK_NS`] and returns the slack now in force
/// (the setting may be refused, e.g. by a seccomp filter; the JSON then shows the default).
fn set_timer_slack() -> u64 {
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long by value and touches no memory of ours;
    // it only changes the calling thread's timer slack.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS as libc::c_ulong) };
    // SAFETY: PR_GET_TIMERSLACK takes no further arguments and returns the slack as the result.
    let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
    u64::try_from(slack).unwrap_or(0)
}

/// One timed `clock_nanosleep` of `ts`, in cycles. A sleep cut short by a signal (EINTR) is
/// not a timer wakeup, so it is taken again.
fn time_one_sleep(ts: &libc::timespec) -> Result<u64, ExitCostError> {
    loop {
        let start = tsc::cycles();
        // SAFETY: `ts` points to a valid timespec for the whole call; the remainder pointer
        // may be null (only written for a relative sleep interrupted by a signal, and we do
        // not want it); CLOCK_MONOTONIC always exists.
        let rc =
            unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, ts, std::ptr::null_mut()) };
        let end = tsc::cycles();
        match rc {
            0 => return Ok(end.wrapping_sub(start)),
            libc::EINTR => continue,
            // clock_nanosleep returns the error number rather than setting errno.
            e => return Err(ExitCostError::Sleep(io::Error::from_raw_os_error(e))),
        }
    }
}

fn time_sleeps(sleep_us: u64, out: &mut [u64]) -> Result<(), ExitCostError> {
    // sleep_us ≤ MAX_SLEEP_US (1 s), so both fields fit; computed without overflow regardless.
    let ts = libc::timespec {
        tv_sec: (sleep_us / 1_000_000) as libc::time_t,
        tv_nsec: ((sleep_us % 1_000_000) * 1000) as libc::c_long,
    };
    for _ in 0..TIMER_WARMUP {
        time_one_sleep(&ts)?;
    }
    for slot in out.iter_mut() {
        *slot = time_one_sleep(&ts)?;
    }
    Ok(())
}

/// A wrapped difference (the TSC read lower at the end than at the start) is above
/// `i64::MAX`; checked after each loop so the loops stay minimal.
fn check_forwards(kind: &'static str, samples: &[u64]) -> Result<(), ExitCostError> {
    match samples.iter().position(|&c| c > i64::MAX as u64) {
        Some(index) => Err(ExitCostError::TscBackwards { kind, index }),
        None => Ok(()),
    }
}

/// Takes every sample on a thread pinned to `config.cpu` (so the caller's mask is untouched).
pub fn measure(config: &ExitCostConfig) -> Result<Samples, ExitCostError> {
    let ExitCostConfig {
        cpu,
        iterations,
        sleep_us,
        tsc_hz,
    } = *config;
    let thread = std::thread::Builder::new()
        .name(format!("fwq-exitcost-{cpu}"))
        .spawn(move || -> Result<Samples, ExitCostError> {
            affinity::pin_current_thread(cpu)
                .map_err(|source| ExitCostError::Pin { cpu, source })?;
            let (tsc_hz, tsc_source) = match tsc_hz {
                Some(hz) => (hz, TscSource::Argument),
                None => (tsc::measure_tsc_hz()?, TscSource::Measured),
            };
            let timer_slack_ns = set_timer_slack();
            let mut rdtsc_pair = buffer(iterations)?;
            let mut cpuid = buffer(iterations)?;
            let mut sleep = buffer(iterations)?;
            time_rdtsc_pairs(&mut rdtsc_pair);
            check_forwards("rdtsc pair", &rdtsc_pair)?;
            time_cpuids(&mut cpuid);
            check_forwards("cpuid", &cpuid)?;
            time_sleeps(sleep_us, &mut sleep)?;
            check_forwards("timer", &sleep)?;
            Ok(Samples {
                tsc_hz,
                tsc_source,
                timer_slack_ns,
                rdtsc_pair,
                cpuid,
                sleep,
            })
        })
        .map_err(ExitCostError::Spawn)?;
    thread.join().map_err(|_| ExitCostError::Panicked)?
}

/// The CPUID round trip.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CpuidReport {
    pub leaf: u32,
    #[serde(flatten)]
    pub spread: Spread,
}

/// The timer wakeup: overshoot of each sleep beyond its requested length.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TimerReport {
    pub samples: usize,
    /// The requested sleep in cycles at `tsc_hz` (what is subtracted).
    pub sleep_cycles: u64,
    /// The sleeping thread's timer slack, ns.
    pub timer_slack_ns: u64,
    /// Sleeps shorter than `sleep_cycles`, whose overshoot was clamped to 0.
    pub clamped: usize,
    pub overshoot_cycles: Quantiles<u64>,
    pub overshoot_us: Quantiles<f64>,
}

/// Everything an `--exit-costs` run reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExitCostReport {
    pub cpu: usize,
    pub iterations: usize,
    pub sleep_us: u64,
    pub tsc_hz: u64,
    /// "clock_monotonic_raw" (measured) or "argument" (`--tsc-hz`).
    pub tsc_source: &'static str,
    /// Two TSC reads back to back: the timing overhead inside every other sample.
    pub rdtsc_pair: Spread,
    pub cpuid: CpuidReport,
    pub timer: TimerReport,
}

impl ExitCostReport {
    /// The statistics of `samples` taken with `config`.
    pub fn new(
        config: &ExitCostConfig,
        samples: &Samples,
    ) -> Result<ExitCostReport, ExitCostError> {
        let stats_err = |kind| move |source| ExitCostError::Stats { kind, source };
        let tsc_hz = samples.tsc_hz;
        let over = overshoots(&samples.sleep, config.sleep_us, tsc_hz);
        let over_spread = spread(&over.cycles).map_err(stats_err("timer"))?;
        Ok(ExitCostReport {
            cpu: config.cpu,
            iterations: config.iterations,
            sleep_us: config.sleep_us,
            tsc_hz,
            tsc_source: samples.tsc_source.name(),
            rdtsc_pair: spread(&samples.rdtsc_pair).map_err(stats_err("rdtsc pair"))?,
            cpuid: CpuidReport {
                leaf: CPUID_LEAF,
                spread: spread(&samples.cpuid).map_err(stats_err("cpuid"))?,
            },
            timer: TimerReport {
                samples: over_spread.samples,
                sleep_cycles: sleep_cycles(config.sleep_us, tsc_hz),
                timer_slack_ns: samples.timer_slack_ns,
                clamped: over.clamped,
                overshoot_cycles: over_spread.cycles,
                overshoot_us: over_spread.cycles.map(|c| cycles_to_us(c, tsc_hz)),
            },
        })
    }

    /// `ATOLL-EXITCOST {json}` (no newline).
    pub fn json_line(&self) -> String {
        crate::report::prefixed_json(PREFIX, self)
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "atoll-fwq --exit-costs: CPU {}, {} samples each, TSC {:.3} MHz ({}), timer slack {} ns",
            self.cpu,
            self.iterations,
            self.tsc_hz as f64 / 1e6,
            self.tsc_source,
            self.timer.timer_slack_ns,
        );
        let _ = writeln!(
            t,
            "{:<32} {:>12} {:>12} {:>12} {:>12}",
            "", "min", "median", "p99", "max"
        );
        let mut row = |name: &str, q: Quantiles<String>| {
            let _ = writeln!(
                t,
                "{name:<32} {:>12} {:>12} {:>12} {:>12}",
                q.min, q.median, q.p99, q.max
            );
        };
        row(
            "rdtsc pair, cycles",
            self.rdtsc_pair.cycles.map(|c| c.to_string()),
        );
        row(
            &format!("cpuid leaf {}, cycles", self.cpuid.leaf),
            self.cpuid.spread.cycles.map(|c| c.to_string()),
        );
        row(
            &format!("sleep {} µs overshoot, cycles", self.sleep_us),
            self.timer.overshoot_cycles.map(|c| c.to_string()),
        );
        row(
            &format!("sleep {} µs overshoot, µs", self.sleep_us),
            self.timer.overshoot_us.map(|u| format!("{u:.2}")),
        );
        let _ = writeln!(
            t,
            "{} of {} sleeps ended before {} cycles (overshoot clamped to 0)",
            self.timer.clamped, self.timer.samples, self.timer.sleep_cycles
        );
        t
    }
}

/// The `--exit-costs` program: validate, measure, print the JSON line (alone) to `out` and the
/// table to `err`.
pub fn main_with(
    args: Args,
    affinity: &CpuList,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), crate::Error> {
    let config = ExitCostConfig::new(args, affinity)?;
    let samples = measure(&config)?;
    let report = ExitCostReport::new(&config, &samples)?;
    // A closed stdout or stderr is not worth failing a finished measurement for.
    let _ = writeln!(out, "{}", report.json_line());
    let _ = out.flush();
    let _ = write!(err, "{}", report.table());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Config;
    use clap::error::ErrorKind;
    use clap::Parser;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("atoll-fwq").chain(argv.iter().copied()))
    }

    fn config(argv: &[&str], affinity: &str) -> Result<ExitCostConfig, ArgError> {
        ExitCostConfig::new(
            parse(argv).expect("clap accepts it"),
            &affinity.parse().unwrap(),
        )
    }

    #[test]
    fn defaults_take_the_first_cpu_of_the_mask() {
        assert_eq!(
            config(&["--exit-costs"], "2-3,7"),
            Ok(ExitCostConfig {
                cpu: 2,
                iterations: 2000,
                sleep_us: 50,
                tsc_hz: None
            })
        );
    }

    #[test]
    fn every_option() {
        assert_eq!(
            config(
                &[
                    "--exit-costs",
                    "--cpu",
                    "7",
                    "--iterations",
                    "50",
                    "--sleep-us",
                    "20",
                    "--tsc-hz",
                    "1000000000"
                ],
                "2-3,7"
            ),
            Ok(ExitCostConfig {
                cpu: 7,
                iterations: 50,
                sleep_us: 20,
                tsc_hz: Some(1_000_000_000)
            })
        );
    }

    #[test]
    fn fwq_options_conflict_with_exit_costs() {
        for fwq in [
            &["--samples", "5"][..],
            &["--samples", "10000"], // even the default, when given explicitly
            &["--quantum-us", "10"],
            &["--cpus", "0"],
            &["--raw", "/tmp/x.csv"],
            &["--calibrate"],
            &["--table"],
        ] {
            let argv: Vec<&str> = ["--exit-costs"].iter().chain(fwq).copied().collect();
            let e = parse(&argv).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ArgumentConflict, "{argv:?}: {e}");
            // clap's errors exit with 2, like the crate's own argument errors.
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn exit_cost_options_need_exit_costs() {
        for argv in [
            &["--cpu", "0"][..],
            &["--iterations", "5"],
            &["--sleep-us", "5"],
        ] {
            let e = parse(argv).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument, "{argv:?}");
            assert_eq!(e.exit_code(), 2);
        }
        assert_eq!(
            parse(&["--exit-costs", "--cpu", "x"]).unwrap_err().kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            parse(&["--exit-costs", "--sleep-us", "-1"])
                .unwrap_err()
                .kind(),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn args_built_by_hand_cannot_mix_the_modes() {
        let mask: CpuList = "0".parse().unwrap();
        // FWQ values on an exit-costs run.
        let mut a = parse(&["--exit-costs"]).unwrap();
        a.samples = 5;
        assert_eq!(ExitCostConfig::new(a, &mask), Err(ArgError::NotExitCosts));
        let mut a = parse(&["--exit-costs"]).unwrap();
        a.cpus = Some(mask.clone());
        assert_eq!(ExitCostConfig::new(a, &mask), Err(ArgError::NotExitCosts));
        // The FWQ configuration refuses exit-cost arguments.
        let a = parse(&["--exit-costs"]).unwrap();
        assert_eq!(Config::new(a, &mask), Err(ArgError::NotExitCosts));
        let mut a = parse(&[]).unwrap();
        a.sleep_us = Some(5);
        assert_eq!(Config::new(a, &mask), Err(ArgError::ExitCostsOnly));
    }

    #[test]
    fn bounds() {
        let c = |argv: &[&str]| {
            let argv: Vec<&str> = ["--exit-costs"].iter().chain(argv).copied().collect();
            config(&argv, "0-1")
        };
        assert_eq!(c(&["--iterations", "0"]), Err(ArgError::Iterations(0)));
        assert_eq!(
            c(&["--iterations", "10000001"]),
            Err(ArgError::Iterations(10_000_001))
        );
        assert!(c(&["--iterations", "1"]).is_ok());
        assert!(c(&["--iterations", "10000000"]).is_ok());
        assert_eq!(c(&["--sleep-us", "0"]), Err(ArgError::SleepUs(0)));
        assert_eq!(
            c(&["--sleep-us", "1000001"]),
            Err(ArgError::SleepUs(1_000_001))
        );
        assert!(c(&["--sleep-us", "1"]).is_ok());
        assert!(c(&["--sleep-us", "1000000"]).is_ok());
        assert_eq!(c(&["--tsc-hz", "0"]), Err(ArgError::TscHz));
        assert_eq!(
            c(&["--cpu", "2"]),
            Err(ArgError::CpuNotInAffinity {
                cpu: 2,
                mask: "0-1".parse().unwrap()
            })
        );
        assert_eq!(
            ExitCostConfig::new(parse(&["--exit-costs"]).unwrap(), &CpuList::from_cpus([])),
            Err(ArgError::EmptyAffinity)
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            ArgError::CpuNotInAffinity {
                cpu: 5,
                mask: "0-3".parse().unwrap()
            }
            .to_string(),
            "--cpu: CPU 5 is not in this process's affinity mask (0-3)"
        );
        assert_eq!(
            ArgError::Iterations(0).to_string(),
            "--iterations must be 1..=10000000, got 0"
        );
        assert_eq!(
            ArgError::SleepUs(2_000_000).to_string(),
            "--sleep-us must be 1..=1000000 (1 s), got 2000000"
        );
    }

    #[test]
    fn sleep_in_cycles() {
        // 50 µs at 2 GHz: 100 000 cycles.
        assert_eq!(sleep_cycles(50, 2_000_000_000), 100_000);
        // 1 µs at 1 999 999 Hz is 1.999999 cycles: rounded down.
        assert_eq!(sleep_cycles(1, 1_999_999), 1);
        // Bochs at ips = 50 000 000: 20 µs is 1000 cycles.
        assert_eq!(sleep_cycles(20, 50_000_000), 1000);
        assert_eq!(sleep_cycles(1_000_000, u64::MAX), u64::MAX);
    }

    #[test]
    fn overshoot_by_hand() {
        assert_eq!(overshoot(130_000, 100_000), (30_000, false));
        // Exactly the sleep: no overshoot, and not clamped.
        assert_eq!(overshoot(100_000, 100_000), (0, false));
        assert_eq!(overshoot(99_999, 100_000), (0, true));
        assert_eq!(overshoot(0, 1), (0, true));
        assert_eq!(overshoot(u64::MAX, 0), (u64::MAX, false));
    }

    #[test]
    fn overshoots_of_a_vector_count_the_clamped() {
        // 50 µs at 2 GHz = 100 000 cycles.
        let o = overshoots(
            &[100_000, 130_000, 99_999, 250_000, 0, 100_001],
            50,
            2_000_000_000,
        );
        assert_eq!(
            o,
            Overshoots {
                cycles: vec![0, 30_000, 0, 150_000, 0, 1],
                clamped: 2
            }
        );
        // Bochs: 20 µs at 50 MHz = 1000 cycles.
        let o = overshoots(&[1000, 1500, 999], 20, 50_000_000);
        assert_eq!((o.cycles, o.clamped), (vec![0, 500, 0], 1));
        assert_eq!(
            overshoots(&[], 50, 1),
            Overshoots {
                cycles: vec![],
                clamped: 0
            }
        );
    }

    #[test]
    fn spread_by_hand() {
        // Sorted 0 0 5 9: median rank ⌈2⌉ = 2 → 0; p99 rank ⌈3.96⌉ = 4 → 9.
        assert_eq!(
            spread(&[5, 0, 9, 0]),
            Ok(Spread {
                samples: 4,
                cycles: Quantiles {
                    min: 0,
                    median: 0,
                    p99: 9,
                    max: 9
                }
            })
        );
        // 100 samples 1..=100: median rank 50, p99 rank 99.
        let s: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(
            spread(&s).unwrap().cycles,
            Quantiles {
                min: 1,
                median: 50,
                p99: 99,
                max: 100
            }
        );
        assert_eq!(spread(&[]), Err(StatsError::Empty));
    }

    #[test]
    fn cycles_in_microseconds() {
        assert_eq!(cycles_to_us(30_000, 2_000_000_000), 15.0);
        assert_eq!(cycles_to_us(0, 1), 0.0);
    }

    fn hand_report() -> ExitCostReport {
        let config = ExitCostConfig {
            cpu: 3,
            iterations: 4,
            sleep_us: 50,
            tsc_hz: None,
        };
        let samples = Samples {
            tsc_hz: 2_000_000_000,
            tsc_source: TscSource::Measured,
            timer_slack_ns: 1,
            rdtsc_pair: vec![30, 28, 28, 60],
            cpuid: vec![1200, 1100, 5000, 1150],
            // Overshoots 30 000, 0 (clamped), 2 000, 200 000.
            sleep: vec![130_000, 99_000, 102_000, 300_000],
        };
        ExitCostReport::new(&config, &samples).unwrap()
    }

    #[test]
    fn json_line_fields() {
        let line = hand_report().json_line();
        let v: serde_json::Value =
            serde_json::from_str(line.strip_prefix("ATOLL-EXITCOST ").expect("prefix")).unwrap();
        assert_eq!(v["cpu"], 3);
        assert_eq!(v["iterations"], 4);
        assert_eq!(v["sleep_us"], 50);
        assert_eq!(v["tsc_hz"], 2_000_000_000u64);
        assert_eq!(v["tsc_source"], "clock_monotonic_raw");
        assert_eq!(v.as_object().unwrap().len(), 8);
        // Sorted 28 28 30 60: median rank 2 → 28, p99 rank 4 → 60.
        assert_eq!(
            v["rdtsc_pair"],
            serde_json::json!({"samples": 4, "min": 28, "median": 28, "p99": 60, "max": 60})
        );
        // Sorted 1100 1150 1200 5000.
        assert_eq!(
            v["cpuid"],
            serde_json::json!({"leaf": 0, "samples": 4, "min": 1100, "median": 1150, "p99": 5000, "max": 5000})
        );
        // Overshoots sorted 0 2000 30000 200000 → median 2000; µs at 2 GHz: /2000.
        assert_eq!(
            v["timer"],
            serde_json::json!({
                "samples": 4,
                "sleep_cycles": 100_000,
                "timer_slack_ns": 1,
                "clamped": 1,
                "overshoot_cycles": {"min": 0, "median": 2000, "p99": 200_000, "max": 200_000},
                "overshoot_us": {"min": 0.0, "median": 1.0, "p99": 100.0, "max": 100.0},
            })
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn table_rows() {
        let t = hand_report().table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7, "{t}");
        assert_eq!(
            lines[0],
            "atoll-fwq --exit-costs: CPU 3, 4 samples each, TSC 2000.000 MHz (clock_monotonic_raw), timer slack 1 ns"
        );
        let cells = |i: usize| {
            lines[i]
                .split_whitespace()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
        };
        assert_eq!(cells(3), ["5000", "5000", "1150", "1100"]);
        assert_eq!(cells(5), ["100.00", "100.00", "1.00", "0.00"]);
        assert_eq!(
            lines[6],
            "1 of 4 sleeps ended before 100000 cycles (overshoot clamped to 0)"
        );
    }

    #[test]
    fn report_of_no_samples_is_an_error() {
        let config = ExitCostConfig {
            cpu: 0,
            iterations: 1,
            sleep_us: 1,
            tsc_hz: None,
        };
        let samples = Samples {
            tsc_hz: 1,
            tsc_source: TscSource::Argument,
            timer_slack_ns: 1,
            rdtsc_pair: vec![1],
            cpuid: vec![],
            sleep: vec![1],
        };
        let e = ExitCostReport::new(&config, &samples).unwrap_err();
        assert_eq!(e.to_string(), "cpuid: no samples");
    }

    #[test]
    fn backwards_tsc_is_an_error() {
        assert!(check_forwards("cpuid", &[1, 2, i64::MAX as u64]).is_ok());
        let e = check_forwards("cpuid", &[1, 2, 1u64.wrapping_sub(3)]).unwrap_err();
        assert!(
            matches!(
                e,
                ExitCostError::TscBackwards {
                    kind: "cpuid",
                    index: 2
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn timer_slack_is_set_on_the_calling_thread_only() {
        std::thread::spawn(|| {
            assert_eq!(set_timer_slack(), TIMER_SLACK_NS);
        })
        .join()
        .unwrap();
    }
}
