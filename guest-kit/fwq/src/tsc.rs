//! The clock (the TSC), the work quantum, and calibrating both.
//!
//! * **Cycles** are read with `LFENCE; RDTSC`: RDTSC alone may execute before earlier
//!   instructions finish (SDM Vol. 2B, "RDTSC"; the LFENCE orders it after them), which would
//!   let a quantum's tail leak into the next sample.
//! * **TSC frequency** (only to turn `--quantum-us` into cycles, and for readers of the JSON):
//!   measured by spinning ~50 ms against `CLOCK_MONOTONIC_RAW` (not slewed by NTP, unlike
//!   `CLOCK_MONOTONIC`), or given with `--tsc-hz`. `/proc/cpuinfo`'s "cpu MHz" is the core's
//!   current frequency, not the TSC's, so it is not used. In Bochs with `clock: sync=none` the
//!   TSC counts instructions at `ips` per second, and Linux's clocks follow the same virtual
//!   time, so the measurement gives `ips`.
//! * **Work**: a chain of dependent 64-bit multiply-adds (an LCG step), each result passed
//!   through [`black_box`] so the compiler can neither fold the loop into a closed form nor
//!   drop it; the quantum is a fixed *number of iterations*, the same on every CPU, found once
//!   by [`calibrate_iterations`] so it takes about the requested time.

use core::hint::black_box;

/// Cycles now (the time-stamp counter), ordered after every earlier instruction.
#[inline(always)]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_lfence, _rdtsc};
        // SAFETY: LFENCE is part of SSE2, which every x86-64 CPU has; it only orders loads.
        unsafe { _mm_lfence() };
        // SAFETY: RDTSC is available on every x86-64 CPU and Linux leaves CR4.TSD clear for
        // user space (reading the TSC is what the vDSO clock does).
        unsafe { _rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    compile_error!("atoll-fwq reads the x86 TSC; other architectures are not supported")
}

/// Multiplier and increment of the work's LCG step (Knuth's MMIX constants): any odd
/// multiplier would do; these just keep the values from collapsing to a fixed point.
const MUL: u64 = 6_364_136_223_846_793_005;
const INC: u64 = 1_442_695_040_888_963_407;

/// One quantum's worth of work: `iterations` dependent multiply-adds. Returns the final value
/// so callers can `black_box` it too.
#[inline(never)]
pub fn work(iterations: u64) -> u64 {
    let mut x = black_box(1u64);
    for _ in 0..iterations {
        x = black_box(x.wrapping_mul(MUL).wrapping_add(INC));
    }
    x
}

/// The TSC frequency in Hz from two readings of (cycles, nanoseconds).
pub fn hz_from(c0: u64, c1: u64, t0_ns: u64, t1_ns: u64) -> Result<u64, CalibrationError> {
    if t1_ns <= t0_ns || c1 <= c0 {
        return Err(CalibrationError::ClockStalled);
    }
    let hz = u128::from(c1 - c0) * 1_000_000_000 / u128::from(t1_ns - t0_ns);
    u64::try_from(hz).map_err(|_| CalibrationError::ClockStalled)
}

/// Nanoseconds of `CLOCK_MONOTONIC_RAW`.
fn monotonic_raw_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_RAW exists since Linux 2.6.28
    // and cannot fail with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// How long [`measure_tsc_hz`] spins.
pub const TSC_CALIBRATION_NS: u64 = 50_000_000;

/// Measures the TSC frequency by spinning [`TSC_CALIBRATION_NS`] against
/// `CLOCK_MONOTONIC_RAW`. Each end pairs a TSC read with the clock read right after it; over
/// 50 ms the few hundred cycles between them are an error of parts per million.
pub fn measure_tsc_hz() -> Result<u64, CalibrationError> {
    let c0 = cycles();
    let t0 = monotonic_raw_ns();
    let (mut c1, mut t1) = (c0, t0);
    while t1.saturating_sub(t0) < TSC_CALIBRATION_NS {
        c1 = cycles();
        t1 = monotonic_raw_ns();
    }
    hz_from(c0, c1, t0, t1)
}

/// `quantum_us` microseconds in cycles at `tsc_hz`, at least 1.
pub fn quantum_cycles(quantum_us: u64, tsc_hz: u64) -> u64 {
    let c = u128::from(quantum_us) * u128::from(tsc_hz) / 1_000_000;
    u64::try_from(c).unwrap_or(u64::MAX).max(1)
}

/// Why calibration failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalibrationError {
    #[error("the TSC or CLOCK_MONOTONIC_RAW did not advance while calibrating")]
    ClockStalled,
    #[error("{0} iterations of work took 0 cycles: the TSC does not advance")]
    ZeroCycles(u64),
    #[error("even {iterations} iterations took only {cycles} cycles, short of the {target}-cycle quantum")]
    TooFast {
        iterations: u64,
        cycles: u64,
        target: u64,
    },
}

/// The outcome of [`calibrate_iterations`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calibration {
    /// Iterations of [`work`] per quantum.
    pub iterations: u64,
    /// The fastest of the final check's runs at `iterations`, cycles: how close the quantum
    /// came to the target.
    pub cycles: u64,
}

/// Runs per measurement; the fastest counts (the others may have been interrupted).
const RUNS: usize = 5;
/// First trial size and the cap of the doubling search.
const START_ITERATIONS: u64 = 256;
const MAX_ITERATIONS: u64 = 1 << 40;

/// Finds how many iterations take `target` cycles. `measure(k)` returns the cycles of `k`
/// iterations (in production: [`work`] timed with [`cycles`]).
///
/// Doubles `k` from 256 until the fastest of 5 runs reaches `target` (so the estimate comes
/// from a run at least a quantum long, where the timer's own overhead is small), scales
/// linearly to `target`, then re-measures at that count and scales once more to absorb the
/// fixed per-measurement overhead. Counts round to nearest; at least 1.
pub fn calibrate_iterations(
    target: u64,
    mut measure: impl FnMut(u64) -> u64,
) -> Result<Calibration, CalibrationError> {
    let mut fastest = |k: u64| -> Result<u64, CalibrationError> {
        let c = (0..RUNS).map(|_| measure(k)).min().unwrap_or(0);
        if c == 0 {
            return Err(CalibrationError::ZeroCycles(k));
        }
        Ok(c)
    };
    let scale = |k: u64, c: u64| -> u64 {
        let v = (u128::from(k) * u128::from(target) + u128::from(c) / 2) / u128::from(c);
        u64::try_from(v).unwrap_or(u64::MAX).max(1)
    };
    let mut k = START_ITERATIONS;
    let c = loop {
        let c = fastest(k)?;
        if c >= target {
            break c;
        }
        if k >= MAX_ITERATIONS {
            return Err(CalibrationError::TooFast {
                iterations: k,
                cycles: c,
                target,
            });
        }
        k *= 2;
    };
    let first = scale(k, c);
    let iterations = scale(first, fastest(first)?);
    Ok(Calibration {
        iterations,
        cycles: fastest(iterations)?,
    })
}

/// Cycles of one quantum of `iterations`, timed with the TSC.
pub fn time_work(iterations: u64) -> u64 {
    let start = cycles();
    black_box(work(iterations));
    cycles().wrapping_sub(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hz_by_hand() {
        // 3 000 000 cycles in 1.5 ms → 2 GHz.
        assert_eq!(hz_from(1_000, 3_001_000, 10, 1_500_010), Ok(2_000_000_000));
        assert_eq!(hz_from(5, 5, 0, 10), Err(CalibrationError::ClockStalled));
        assert_eq!(hz_from(5, 9, 10, 10), Err(CalibrationError::ClockStalled));
        assert_eq!(hz_from(9, 5, 0, 10), Err(CalibrationError::ClockStalled));
    }

    #[test]
    fn quantum_in_cycles() {
        assert_eq!(quantum_cycles(100, 2_000_000_000), 200_000);
        // Bochs at ips = 50 000 000: 100 µs is 5000 instructions' worth.
        assert_eq!(quantum_cycles(100, 50_000_000), 5_000);
        assert_eq!(quantum_cycles(1, 1), 1);
        assert_eq!(quantum_cycles(1_000_000, u64::MAX), u64::MAX);
    }

    #[test]
    fn calibration_against_a_linear_model() {
        // cycles(k) = 3k + 60, target 30 000.
        // Doubling: k = 16384 is the first with 3k+60 = 49212 ≥ 30000.
        // Scale: round(16384·30000/49212) = round(9987.8) = 9988 → 3·9988+60 = 30024.
        // Rescale: round(9988·30000/30024) = round(9980.02) = 9980 → 29940+60 = 30000.
        let cal = calibrate_iterations(30_000, |k| 3 * k + 60).unwrap();
        assert_eq!(
            cal,
            Calibration {
                iterations: 9980,
                cycles: 30_000
            }
        );
    }

    #[test]
    fn calibration_takes_the_fastest_run() {
        // Every 5th measurement is disturbed by 1000 cycles; the fastest of 5 never is.
        let mut n = 0u64;
        let cal = calibrate_iterations(30_000, |k| {
            n += 1;
            3 * k + 60 + if n % 5 == 3 { 1000 } else { 0 }
        })
        .unwrap();
        assert_eq!(
            cal,
            Calibration {
                iterations: 9980,
                cycles: 30_000
            }
        );
    }

    #[test]
    fn calibration_of_a_tiny_target_gives_at_least_one_iteration() {
        // 256 iterations take 10 000 cycles ≥ 1: round(256/10000) = 0 → 1.
        let cal = calibrate_iterations(1, |k| 10_000 + k).unwrap();
        assert_eq!(cal.iterations, 1);
        assert_eq!(cal.cycles, 10_001);
    }

    #[test]
    fn calibration_errors() {
        assert_eq!(
            calibrate_iterations(100, |_| 0),
            Err(CalibrationError::ZeroCycles(256))
        );
        assert_eq!(
            calibrate_iterations(u64::MAX, |_| 1),
            Err(CalibrationError::TooFast {
                iterations: 1 << 40,
                cycles: 1,
                target: u64::MAX
            })
        );
    }

    #[test]
    fn work_depends_on_its_count() {
        // x₁ = MUL + INC (mod 2⁶⁴); the chain is not constant, so it cannot be skipped.
        assert_eq!(work(0), 1);
        assert_eq!(work(1), MUL.wrapping_add(INC));
        assert_eq!(work(2), work(1).wrapping_mul(MUL).wrapping_add(INC));
        assert_ne!(work(1000), work(1001));
    }

    #[test]
    fn the_tsc_advances() {
        let a = cycles();
        black_box(work(1000));
        let b = cycles();
        assert!(b > a, "TSC went from {a} to {b}");
    }
}
