//! `atoll-check --idle-timer SECONDS [--period-ms MS]`: the idle window with a periodic timer
//! whose continuity is measured — does the partition's time keep flowing while something else
//! on the machine (the root partition panicking and restarting, say) happens?
//!
//! For SECONDS (by `CLOCK_MONOTONIC`, as `sleep` counts them) the program sleeps MS
//! milliseconds at a time with `clock_nanosleep(CLOCK_MONOTONIC)` and timestamps every wake-up
//! with `RDTSC`. The figure that matters is the largest gap between consecutive wake-ups (the
//! window's start counts as the first): a partition that lost its core, or whose timer
//! interrupt was held back, for 300 ms shows a gap of about 300 ms however long its window.
//! The report is one line, `ATOLL-GUEST-IDLE {json}`, which atoll files as the partition's
//! `idle_timer` result.
//!
//! **Why RDTSC.** The question is whether the core's own time ran on, which is what the TSC
//! counts; `CLOCK_MONOTONIC_RAW` is TSC-based only while the kernel's clocksource is the TSC,
//! and a kernel may leave it (under QEMU the root partition's Linux marks the TSC unstable and
//! runs on the HPET; the enclave's stays on the TSC, but the measurement should not depend on
//! that). Cycles become microseconds through the kernel's TSC frequency
//! (`tsc_freq_khz` in sysfs or the kernel log's calibration, as the check finds it); without
//! one the program falls back to `CLOCK_MONOTONIC_RAW` and says so (`"source"`). A TSC that
//! went backwards between two wake-ups is counted (`backwards`) and that step is no gap: the
//! timer's continuity cannot be judged across it, so a harness should expect zero.
//!
//! A gap over five periods is also printed when it ends (`ATOLL-GUEST-IDLE-GAP {json}`, at most
//! 32 a window), so that on atoll's console, which serializes every partition's lines, a stall
//! shows up next to whatever happened beside it.
//!
//! The gap includes the sleep itself: with a 10 ms period a perfect timer shows a gap of a
//! little over 10 ms.

use serde_json::{json, Value};

/// What the report line starts with.
pub const IDLE_PREFIX: &str = "ATOLL-GUEST-IDLE ";

/// The default sleep between wake-ups, in milliseconds: fine enough to resolve a 100 ms gap,
/// coarse enough that an idle guest stays mostly idle (100 wake-ups a second).
pub const DEFAULT_PERIOD_MS: u64 = 10;

/// The longest window accepted (a day): a typo should not idle a test for years.
pub const MAX_SECONDS: u64 = 86_400;

/// The longest period accepted: one wake-up a minute still measures something.
pub const MAX_PERIOD_MS: u64 = 60_000;

/// A gap longer than this many periods is printed the moment it ends, as
/// `ATOLL-GUEST-IDLE-GAP {"us", "at_us"}`: on atoll's console that line lands among the other
/// partitions' lines, so a stall can be placed next to what happened beside it (a restart, say)
/// without a common clock.
pub const LATE_PERIODS: u64 = 5;

/// At most this many `ATOLL-GUEST-IDLE-GAP` lines a window: a machine slow throughout should not
/// flood the console (and so the exits the window counts).
pub const MAX_LATE_LINES: u64 = 32;

/// What a late-gap line starts with (not [`IDLE_PREFIX`]: atoll files only the final report).
pub const GAP_PREFIX: &str = "ATOLL-GUEST-IDLE-GAP ";

/// How many of the largest gaps the report lists with where they happened: enough to tell one
/// stall (a restart next door) from a machine that is slow throughout.
pub const TOP_GAPS: usize = 5;

/// Usage of the idle mode.
pub const USAGE: &str = "usage: atoll-check --idle-timer SECONDS [--period-ms MS]\n\
Sleeps MS milliseconds (default 10) at a time for SECONDS, timestamps every wake-up with the TSC and\n\
prints one line `ATOLL-GUEST-IDLE {json}` with the largest gap between wake-ups.";

/// The idle mode's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleOptions {
    /// How long the window lasts, in seconds.
    pub seconds: u64,
    /// The sleep between wake-ups, in milliseconds.
    pub period_ms: u64,
}

/// Whether `args` ask for the idle mode (`--idle-timer` among them, in either form).
pub fn wants_idle<S: AsRef<str>>(args: &[S]) -> bool {
    args.iter().any(|a| {
        let a = a.as_ref();
        a == "--idle-timer" || a.starts_with("--idle-timer=")
    })
}

/// Parses the idle mode's arguments (without the program name). `Ok(None)` means `--help`.
pub fn parse_idle_args<S: AsRef<str>>(args: &[S]) -> Result<Option<IdleOptions>, String> {
    let mut seconds = None;
    let mut period_ms = DEFAULT_PERIOD_MS;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_ref();
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg, None),
        };
        if !matches!(name, "--idle-timer" | "--period-ms") {
            return Err(format!("unknown argument '{arg}' with --idle-timer"));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)
                    .map(|v| v.as_ref().to_string())
                    .ok_or_else(|| format!("{name} needs a value"))?
            }
        };
        let bounded = |max: u64| -> Result<u64, String> {
            match value.trim().parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{name}: '{value}' is not a whole number from 1 to {max}"
                )),
            }
        };
        if name == "--idle-timer" {
            seconds = Some(bounded(MAX_SECONDS)?);
        } else {
            period_ms = bounded(MAX_PERIOD_MS)?;
        }
        i += 1;
    }
    let seconds = seconds.ok_or("--idle-timer SECONDS is missing")?;
    Ok(Some(IdleOptions { seconds, period_ms }))
}

/// The clock wake-ups are stamped with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clock {
    /// `RDTSC`, at the kernel's TSC frequency.
    Tsc {
        /// TSC ticks per millisecond.
        khz: u64,
        /// Where the frequency came from.
        khz_source: String,
    },
    /// `CLOCK_MONOTONIC_RAW` in nanoseconds (no TSC frequency was found).
    MonotonicRaw,
}

impl Clock {
    /// The clock's name in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Clock::Tsc { .. } => "rdtsc",
            Clock::MonotonicRaw => "clock_monotonic_raw",
        }
    }

    /// Ticks per millisecond.
    fn per_ms(&self) -> u64 {
        match self {
            Clock::Tsc { khz, .. } => *khz,
            Clock::MonotonicRaw => 1_000_000,
        }
    }

    /// `ticks` in whole microseconds (rounded down); `None` at a frequency of zero.
    pub fn us(&self, ticks: u64) -> Option<u64> {
        let per_ms = self.per_ms();
        if per_ms == 0 {
            return None;
        }
        // u128: 2^64 cycles times 1000 does not fit u64.
        u64::try_from(u128::from(ticks) * 1000 / u128::from(per_ms)).ok()
    }
}

/// The gaps between consecutive wake-ups, kept as they come (no list of stamps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GapMeter {
    start: u64,
    last: u64,
    wakeups: u64,
    max_gap: u64,
    /// Where the largest gap ended, in ticks after the start.
    max_gap_end: u64,
    backwards: u64,
    /// The largest gaps as (gap, end after the start), largest first, at most [`TOP_GAPS`].
    top: Vec<(u64, u64)>,
}

impl GapMeter {
    /// A window starting at `start` (a clock reading).
    pub fn new(start: u64) -> Self {
        Self {
            start,
            last: start,
            wakeups: 0,
            max_gap: 0,
            max_gap_end: 0,
            backwards: 0,
            top: Vec::with_capacity(TOP_GAPS + 1),
        }
    }

    /// A wake-up at `now`. A clock that went backwards is counted and restarts the measuring
    /// from `now`: the step has no meaningful length. Returns the gap that ended here (`None`
    /// after a backwards step) with its end after the window's start.
    pub fn wake(&mut self, now: u64) -> Option<(u64, u64)> {
        self.wakeups += 1;
        let mut out = None;
        if now < self.last {
            self.backwards += 1;
        } else {
            let gap = now - self.last;
            let end = now.saturating_sub(self.start);
            if gap > self.max_gap {
                self.max_gap = gap;
                self.max_gap_end = end;
            }
            // Kept sorted, largest first; an equal gap keeps the earlier one ahead.
            if self.top.len() < TOP_GAPS || self.top.last().is_some_and(|&(g, _)| gap > g) {
                let at = self.top.partition_point(|&(g, _)| g >= gap);
                self.top.insert(at, (gap, end));
                self.top.truncate(TOP_GAPS);
            }
            out = Some((gap, end));
        }
        self.last = now;
        out
    }

    /// Wake-ups so far.
    pub fn wakeups(&self) -> u64 {
        self.wakeups
    }

    /// The largest gap so far, in ticks.
    pub fn max_gap(&self) -> u64 {
        self.max_gap
    }

    /// How often the clock went backwards.
    pub fn backwards(&self) -> u64 {
        self.backwards
    }

    /// The report: `source`, `period_us`, `wakeups`, `max_gap_us`, `max_gap_at_us` (the end of
    /// the largest gap after the window's start), `largest_gaps` (the [`TOP_GAPS`] largest as
    /// `{"us", "at_us"}`, largest first), `window_us` (start to last wake-up),
    /// `backwards`, and for the TSC its frequency and where that came from. `cpu` is the CPU
    /// the loop was pinned to, if it was.
    pub fn report(&self, clock: &Clock, period_ms: u64, cpu: Option<u32>) -> Value {
        let us = |t: u64| clock.us(t).map_or(Value::Null, Value::from);
        let mut r = json!({
            "source": clock.name(),
            "period_us": period_ms.saturating_mul(1000),
            "wakeups": self.wakeups,
            "max_gap_us": us(self.max_gap),
            "max_gap_at_us": us(self.max_gap_end),
            "largest_gaps": self
                .top
                .iter()
                .map(|&(g, at)| json!({ "us": us(g), "at_us": us(at) }))
                .collect::<Vec<_>>(),
            "window_us": us(self.last.saturating_sub(self.start)),
            "backwards": self.backwards,
            "cpu": cpu,
        });
        if let Clock::Tsc { khz, khz_source } = clock {
            r["tsc_khz"] = (*khz).into();
            r["tsc_khz_source"] = khz_source.as_str().into();
        }
        r
    }
}

/// Whether a gap of `gap` ticks at `clock`'s rate is late enough (over [`LATE_PERIODS`]
/// periods of `period_ms`) for a line of its own.
pub fn is_late(clock: &Clock, gap: u64, period_ms: u64) -> bool {
    clock
        .us(gap)
        .is_some_and(|us| us > period_ms.saturating_mul(1000).saturating_mul(LATE_PERIODS))
}

/// The line for a late gap: `ATOLL-GUEST-IDLE-GAP {"us": …, "at_us": …}`.
pub fn late_line(clock: &Clock, gap: u64, end: u64) -> String {
    let us = |t: u64| clock.us(t).map_or(Value::Null, Value::from);
    format!("{GAP_PREFIX}{}", json!({ "us": us(gap), "at_us": us(end) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_idle_arguments() {
        assert!(wants_idle(&["--idle-timer", "60"]));
        assert!(wants_idle(&["--period-ms", "5", "--idle-timer=3"]));
        assert!(!wants_idle(&["--expect-cpus", "1", "--idle-timers"]));
        assert_eq!(
            parse_idle_args(&["--idle-timer", "60"]).unwrap(),
            Some(IdleOptions {
                seconds: 60,
                period_ms: DEFAULT_PERIOD_MS
            })
        );
        assert_eq!(
            parse_idle_args(&["--period-ms=5", "--idle-timer=3"]).unwrap(),
            Some(IdleOptions {
                seconds: 3,
                period_ms: 5
            })
        );
        assert_eq!(parse_idle_args(&["--idle-timer", "1", "-h"]).unwrap(), None);
        for bad in [
            &["--idle-timer"][..],
            &["--idle-timer", "0"],
            &["--idle-timer", "-1"],
            &["--idle-timer", "86401"],
            &["--idle-timer", "5s"],
            &["--idle-timer", "5", "--period-ms", "0"],
            &["--idle-timer", "5", "--period-ms", "60001"],
            &["--idle-timer", "5", "--expect-cpus", "1"],
            &["--period-ms", "5"],
        ] {
            assert!(parse_idle_args(bad).is_err(), "{bad:?}");
        }
        assert!(parse_idle_args(&["--idle-timer", "86400"]).is_ok());
    }

    #[test]
    fn converts_ticks_at_the_clock_rate() {
        let tsc = Clock::Tsc {
            khz: 2_595_723,
            khz_source: "kernel log".into(),
        };
        assert_eq!(tsc.us(2_595_723), Some(1000));
        assert_eq!(tsc.us(2_595_723 * 100), Some(100_000));
        // Rounded down; the largest count does not overflow.
        assert_eq!(tsc.us(2_595_722), Some(999));
        assert_eq!(
            tsc.us(u64::MAX),
            Some((u128::from(u64::MAX) * 1000 / 2_595_723) as u64)
        );
        assert_eq!(Clock::MonotonicRaw.us(10_000_999), Some(10_000));
        assert_eq!(
            Clock::Tsc {
                khz: 0,
                khz_source: String::new()
            }
            .us(5),
            None
        );
        // At 1 kHz a tick is a millisecond: u64::MAX ticks in µs does not fit.
        assert_eq!(
            Clock::Tsc {
                khz: 1,
                khz_source: String::new()
            }
            .us(u64::MAX),
            None
        );
    }

    #[test]
    fn finds_the_largest_gap_between_wakeups() {
        // A 1000 kHz "TSC": a tick is a microsecond.
        let clock = Clock::Tsc {
            khz: 1000,
            khz_source: "test".into(),
        };
        let mut m = GapMeter::new(5_000);
        for t in [15_000, 25_100, 35_000, 185_000, 195_000, 205_000] {
            m.wake(t);
        }
        assert_eq!(m.wakeups(), 6);
        assert_eq!(m.max_gap(), 150_000);
        let r = m.report(&clock, 10, Some(0));
        assert_eq!(r["max_gap_us"], 150_000);
        assert_eq!(r["max_gap_at_us"], 180_000);
        assert_eq!(r["window_us"], 200_000);
        assert_eq!(r["wakeups"], 6);
        assert_eq!(r["period_us"], 10_000);
        assert_eq!(r["backwards"], 0);
        assert_eq!(r["source"], "rdtsc");
        assert_eq!(r["tsc_khz"], 1000);
        assert_eq!(r["tsc_khz_source"], "test");
        assert_eq!(r["cpu"], 0);
        assert_eq!(
            r["largest_gaps"],
            json!([
                {"us": 150_000, "at_us": 180_000},
                {"us": 10_100, "at_us": 20_100},
                {"us": 10_000, "at_us": 10_000},
                {"us": 10_000, "at_us": 190_000},
                {"us": 10_000, "at_us": 200_000},
            ])
        );
    }

    #[test]
    fn late_gaps_get_a_line_of_their_own() {
        let clock = Clock::Tsc {
            khz: 1000,
            khz_source: "test".into(),
        };
        let mut m = GapMeter::new(0);
        assert_eq!(m.wake(10_000), Some((10_000, 10_000)));
        // Five periods exactly is not late; a tick more is.
        assert!(!is_late(&clock, 50_000, 10));
        assert!(is_late(&clock, 50_001, 10));
        let (gap, end) = m.wake(423_654).unwrap();
        assert!(is_late(&clock, gap, 10));
        assert_eq!(
            late_line(&clock, gap, end),
            "ATOLL-GUEST-IDLE-GAP {\"at_us\":423654,\"us\":413654}"
        );
        // Not the final report's prefix: atoll does not file it as the result.
        assert!(!late_line(&clock, gap, end).starts_with(IDLE_PREFIX));
        // Backwards: no gap to judge.
        assert_eq!(m.wake(5), None);
        // Without a rate nothing is late (and nothing is printed as a number).
        let none = Clock::Tsc {
            khz: 0,
            khz_source: String::new(),
        };
        assert!(!is_late(&none, u64::MAX, 10));
    }

    #[test]
    fn keeps_only_the_largest_gaps() {
        let mut m = GapMeter::new(0);
        let mut t = 0;
        // Gaps 1..=20 ticks, then a flood of small ones: the five largest stay, in order.
        for g in (1..=20).chain(core::iter::repeat_n(1, 1000)) {
            t += g;
            m.wake(t);
        }
        let gaps: Vec<u64> = m.top.iter().map(|&(g, _)| g).collect();
        assert_eq!(gaps, [20, 19, 18, 17, 16]);
        assert_eq!(m.top[0].1, (1..=20).sum::<u64>());
        assert_eq!(m.max_gap(), 20);
        assert_eq!(m.wakeups(), 1020);
    }

    #[test]
    fn the_window_start_counts_as_a_wakeup() {
        // The first wake-up came late: that is the gap.
        let mut m = GapMeter::new(0);
        m.wake(400_000);
        m.wake(410_000);
        assert_eq!(m.max_gap(), 400_000);
        // No wake-up at all: no gap measured, and the report says none happened.
        let m = GapMeter::new(77);
        let r = m.report(&Clock::MonotonicRaw, 10, None);
        assert_eq!(r["wakeups"], 0);
        assert_eq!(r["max_gap_us"], 0);
        assert_eq!(r["window_us"], 0);
        assert_eq!(r["source"], "clock_monotonic_raw");
        assert!(r["cpu"].is_null());
        assert!(r.get("tsc_khz").is_none());
    }

    #[test]
    fn a_clock_going_backwards_is_counted_not_measured() {
        let mut m = GapMeter::new(1_000_000);
        m.wake(1_010_000);
        // Back to near zero (a TSC reset), then on at the period.
        m.wake(100);
        m.wake(10_100);
        m.wake(20_200);
        assert_eq!(m.backwards(), 1);
        // The wrapped-around difference is not taken for a gap.
        assert_eq!(m.max_gap(), 10_100);
        let r = m.report(&Clock::MonotonicRaw, 10, None);
        assert_eq!(r["backwards"], 1);
        assert_eq!(r["wakeups"], 4);
        // The window ends before it started: zero, not a wrapped-around figure.
        assert_eq!(r["window_us"], 0);
    }
}
