//! The clock (the TSC), the work quantum, and calibrating both.
//!
//! * **Cycles** are read with `LFENCE; RDTSC`: RDTSC alone may execute before earlier
//!   instructions finish (SDM Vol. 2B, "RDTSC"; the LFENCE orders it after them), which would
//!   let a quantum's tail leak into the next sample.
//! * **TSC frequency** (only to turn `--quantum-us` into cycles, and for readers of the JSON):
//!   measured by spinning ~50 ms against `CLOCK_MONOTONIC_RAW` (not slewed by NTP, unlike
//!   `CLOCK_MONOTONIC`), with each clock read bracketed by TSC reads so a preemption in the
//!   middle is seen and skipped ([`tsc_hz_from_readings`]), or given with `--tsc-hz`. `/proc/cpuinfo`'s "cpu MHz" is the core's
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
/// [`measure_tsc_hz`] gives up waiting for an undisturbed end reading this many times
/// [`TSC_CALIBRATION_NS`] after the span has passed, and takes the least disturbed one it saw.
const TSC_CALIBRATION_PATIENCE: u64 = 10;
/// Readings taken for the start; the least disturbed one counts.
const START_READINGS: usize = 8;
/// An end reading counts as undisturbed when its two TSC reads are at most 1/this of the
/// span apart (100 ppm): then where inside them the clock was read cannot move the result by
/// more than that.
const MAX_WIDTH_DIVISOR: u64 = 10_000;

/// One reading of both clocks: `CLOCK_MONOTONIC_RAW` read between two TSC reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub tsc_before: u64,
    pub ns: u64,
    pub tsc_after: u64,
}

impl Reading {
    /// Cycles between the two TSC reads: large when the thread was preempted (or the vCPU
    /// descheduled) in the middle, so the clock's value belongs to no single TSC value.
    pub fn width(&self) -> u64 {
        self.tsc_after.saturating_sub(self.tsc_before)
    }

    /// The TSC value the clock reading is paired with: the middle of the two reads.
    pub fn tsc(&self) -> u64 {
        self.tsc_before + self.width() / 2
    }

    fn read() -> Reading {
        let tsc_before = cycles();
        let ns = monotonic_raw_ns();
        let tsc_after = cycles();
        Reading {
            tsc_before,
            ns,
            tsc_after,
        }
    }
}

/// Measures the TSC frequency by spinning [`TSC_CALIBRATION_NS`] against
/// `CLOCK_MONOTONIC_RAW`.
pub fn measure_tsc_hz() -> Result<u64, CalibrationError> {
    tsc_hz_from_readings(TSC_CALIBRATION_NS, Reading::read)
}

/// The TSC frequency from readings of both clocks (in production [`Reading::read`]), the end
/// at least `span_ns` after the start.
///
/// Each reading brackets the clock read with two TSC reads and pairs it with their middle. A
/// thread preempted between a TSC read and the clock read (likely on a loaded machine, and in
/// a guest whose vCPU the host deschedules) would otherwise pair the clock with a TSC value
/// from long before or after it: a 1 s preemption at the end of a 50 ms spin made the
/// frequency 30 times too low. So the start is the narrowest of [`START_READINGS`] readings,
/// and the end is the first reading past `span_ns` whose width is at most 1/10 000 of the
/// span; if none comes within [`TSC_CALIBRATION_PATIENCE`] further spans, the narrowest one
/// seen.
pub fn tsc_hz_from_readings(
    span_ns: u64,
    mut read: impl FnMut() -> Reading,
) -> Result<u64, CalibrationError> {
    let mut start = read();
    for _ in 1..START_READINGS {
        let r = read();
        if r.width() < start.width() {
            start = r;
        }
    }
    let mut best: Option<Reading> = None;
    // The clock time of the first reading past the span: patience is counted from there, so
    // that one long preemption (which itself carries the clock past any deadline) still
    // leaves time for an undisturbed reading after it.
    let mut first_past_ns = None;
    loop {
        let r = read();
        let elapsed_ns = r.ns.saturating_sub(start.ns);
        if elapsed_ns < span_ns {
            // A clock or TSC that went backwards would keep this loop below the span
            // forever; it is an error instead (hz_from reports it as such).
            if r.ns < start.ns || r.tsc_after < start.tsc_before {
                return hz_from(start.tsc(), r.tsc(), start.ns, r.ns);
            }
            continue;
        }
        if best.is_none_or(|b| r.width() < b.width()) {
            best = Some(r);
        }
        let waited_ns = r.ns.saturating_sub(*first_past_ns.get_or_insert(r.ns));
        let span_cycles = r.tsc().saturating_sub(start.tsc());
        if r.width() <= span_cycles / MAX_WIDTH_DIVISOR
            || waited_ns >= span_ns.saturating_mul(TSC_CALIBRATION_PATIENCE)
        {
            let end = best.unwrap_or(r);
            return hz_from(start.tsc(), end.tsc(), start.ns, end.ns);
        }
    }
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

    /// A simulated pair of clocks: the TSC runs at `k` cycles per ns; each read advances time
    /// by `step` ns; the two TSC reads are `width(call)` ns apart with the clock read in their
    /// middle, plus `preempt(call)` ns of preemption between the first TSC read and the clock.
    fn sim(
        k: u64,
        step: u64,
        width: impl Fn(usize) -> u64,
        preempt: impl Fn(usize) -> u64,
    ) -> impl FnMut() -> Reading {
        let (mut t, mut call) = (1_000u64, 0usize);
        move || {
            let (w, p) = (width(call), preempt(call));
            call += 1;
            let r = Reading {
                tsc_before: k * t,
                ns: t + p + w / 2,
                tsc_after: k * (t + p + w),
            };
            t += p + w + step;
            r
        }
    }

    #[test]
    fn tsc_hz_from_undisturbed_readings() {
        // 3 cycles per ns, reads 10 ns wide: the middle of the TSC reads is exactly the clock.
        assert_eq!(
            tsc_hz_from_readings(1_000_000, sim(3, 1000, |_| 10, |_| 0)),
            Ok(3_000_000_000)
        );
    }

    #[test]
    fn tsc_hz_skips_a_preempted_end_reading() {
        // Reads every 1010 ns from call 0 (the start, in both methods below); call 990 is the
        // first past the 1 ms span, and it is preempted for 1 s before its clock read.
        // Pairing the clock with the TSC read before it, as a plain "TSC, then clock" loop
        // does, gives about 1 ms·3 GHz / 1.001 s ≈ 3 MHz; the bracketed reading is 1 s wide,
        // so it is skipped for the next one.
        let preempt = |call: usize| if call == 990 { 1_000_000_000 } else { 0 };
        let naive = {
            let mut read = sim(3, 1000, |_| 10, preempt);
            let start = read();
            let mut end = read();
            while end.ns - start.ns < 1_000_000 {
                end = read();
            }
            hz_from(start.tsc_before, end.tsc_before, start.ns, end.ns).unwrap()
        };
        assert!(naive < 3_000_000_000 / 100, "{naive}");
        assert_eq!(
            tsc_hz_from_readings(1_000_000, sim(3, 1000, |_| 10, preempt)),
            Ok(3_000_000_000)
        );
    }

    #[test]
    fn tsc_hz_takes_the_narrowest_start_reading() {
        // The first start reading is preempted for 1 ms; the next 7 are not.
        let preempt = |call: usize| if call == 0 { 1_000_000 } else { 0 };
        assert_eq!(
            tsc_hz_from_readings(1_000_000, sim(3, 1000, |_| 10, preempt)),
            Ok(3_000_000_000)
        );
    }

    #[test]
    fn tsc_hz_settles_for_the_narrowest_when_every_end_reading_is_wide() {
        // After the 8 start readings every reading is preempted for 1 ms (3 000 030 cycles
        // wide, its middle 1.5 M cycles off the clock), except call 11: 500 µs wide, not
        // preempted, so its middle is exact. None is within 1/10 000 of a span of ≥ 1 ms
        // (≤ 300 cycles), so the search runs its 10 spans and takes call 11.
        let calls = std::cell::Cell::new(0usize);
        let mut inner = sim(
            3,
            1000,
            |call| if call == 11 { 500_000 } else { 10 },
            |call| {
                if call >= 8 && call != 11 {
                    1_000_000
                } else {
                    0
                }
            },
        );
        let read = || {
            calls.set(calls.get() + 1);
            inner()
        };
        assert_eq!(tsc_hz_from_readings(1_000_000, read), Ok(3_000_000_000));
        // About one call per ms after the start: 10 spans are ~10 calls.
        assert!(calls.get() >= 8 + 9, "{}", calls.get());
    }

    #[test]
    fn tsc_hz_of_a_backwards_clock_is_an_error() {
        let mut n = 0u64;
        let read = || {
            n += 1;
            Reading {
                tsc_before: 100 * n,
                ns: if n > 8 { 0 } else { 1000 + n },
                tsc_after: 100 * n + 1,
            }
        };
        assert_eq!(
            tsc_hz_from_readings(1_000_000, read),
            Err(CalibrationError::ClockStalled)
        );
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
