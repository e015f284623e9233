//! Statistics over one CPU's samples (cycles per quantum): pure functions, no I/O.
//!
//! # Percentile definition
//!
//! Percentiles are **nearest-rank**: for `n` samples sorted ascending (`x[1] ≤ … ≤ x[n]`,
//! 1-based) the `p`-th percentile is `x[r]` with `r = ⌈p·n/100⌉`, and `r = 1` for `p = 0`.
//! The result is always one of the samples (cycle counts stay integers, no interpolation),
//! and `p = 100` is the maximum. The median is the 50th percentile under the same rule, so for
//! an even `n` it is the *lower* of the two middle samples, not their average.
//!
//! `p` is given in parts per million ([`Ppm`]) and the rank is computed in integers: in
//! floating point `0.99 · 100` is not exactly `99`, and `⌈·⌉` of it would pick the wrong rank
//! for exactly the sample counts people choose (100, 1000, …).
//!
//! # Detour
//!
//! A quantum's *detour* is `sample − min`: the cycles it took beyond the fastest quantum of
//! the same CPU, i.e. what something other than the work (interrupts, exits, the scheduler)
//! cost it. Fractions are relative to that minimum (the quantum's undisturbed length).
//!
//! The input slice is never modified: [`summarize`] sorts a copy (its allocation happens after
//! the measurement, never inside it).

use serde::Serialize;

/// A percentile in parts per million: 990 000 is the 99th percentile, 999 000 the 99.9th.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ppm(u32);

impl Ppm {
    /// The largest value: the 100th percentile (the maximum).
    pub const MAX: u32 = 1_000_000;
    /// The median (50th percentile).
    pub const MEDIAN: Ppm = Ppm(500_000);
    /// The 99th percentile.
    pub const P99: Ppm = Ppm(990_000);

    /// `ppm` parts per million; above 1 000 000 (beyond the maximum) is an error.
    pub fn new(ppm: u32) -> Result<Ppm, StatsError> {
        if ppm > Self::MAX {
            return Err(StatsError::PercentileOutOfRange(ppm));
        }
        Ok(Ppm(ppm))
    }
}

/// Why a statistic could not be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// No samples: there is no minimum, median or anything else to report.
    #[error("no samples")]
    Empty,
    /// A percentile beyond 100 %.
    #[error("percentile {0} ppm is above 1000000 ppm (100 %)")]
    PercentileOutOfRange(u32),
    /// The fastest quantum took 0 cycles: the counter did not advance, and detours relative to
    /// it have no meaning.
    #[error("the fastest sample is 0 cycles: the cycle counter did not advance")]
    ZeroMinimum,
}

/// The 1-based nearest rank of percentile `p` among `n ≥ 1` samples: `⌈p·n/10⁶⌉`, at least 1.
pub fn nearest_rank(p: Ppm, n: usize) -> usize {
    // u128: p ≤ 10⁶ and n ≤ usize::MAX cannot overflow it.
    let product = u128::from(p.0) * n as u128;
    let rank = product.div_ceil(u128::from(Ppm::MAX));
    // rank ≤ n because p ≤ 10⁶, so it fits back into usize.
    (rank as usize).max(1)
}

/// Percentile `p` of `sorted` (ascending), by nearest rank; `Empty` for no samples.
/// The caller guarantees the order (checked in debug builds).
pub fn percentile_sorted(sorted: &[u64], p: Ppm) -> Result<u64, StatsError> {
    debug_assert!(
        sorted.windows(2).all(|w| w[0] <= w[1]),
        "input is not sorted"
    );
    if sorted.is_empty() {
        return Err(StatsError::Empty);
    }
    Ok(sorted[nearest_rank(p, sorted.len()) - 1])
}

/// Percentile `p` of samples in any order; the input is left as it is (a copy is sorted).
pub fn percentile(samples: &[u64], p: Ppm) -> Result<u64, StatsError> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    percentile_sorted(&sorted, p)
}

/// Everything reported for one CPU's samples (cycles per quantum).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Fastest quantum, cycles.
    pub min: u64,
    /// Nearest-rank median, cycles.
    pub median: u64,
    /// Nearest-rank 99th percentile, cycles.
    pub p99: u64,
    /// Slowest quantum, cycles.
    pub max: u64,
    /// Arithmetic mean, cycles.
    pub mean: f64,
    /// `max − min`: the worst detour, cycles.
    pub max_detour: u64,
    /// `p99 − min`: the 99th-percentile detour, cycles (detours have the same order as
    /// samples, so this is also the 99th percentile of the detours).
    pub p99_detour: u64,
    /// `mean − min`: the average detour, cycles.
    pub mean_detour: f64,
    /// `max_detour / min`.
    pub max_detour_frac: f64,
    /// `p99_detour / min`.
    pub p99_detour_frac: f64,
    /// Samples whose detour exceeds 1 % of `min` (strictly: `100·(sample − min) > min`).
    pub over_1pct: usize,
}

/// Summarizes `samples` (any order, not modified). Errors: no samples, or a minimum of 0.
pub fn summarize(samples: &[u64]) -> Result<Summary, StatsError> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) else {
        return Err(StatsError::Empty);
    };
    if min == 0 {
        return Err(StatsError::ZeroMinimum);
    }
    let median = percentile_sorted(&sorted, Ppm::MEDIAN)?;
    let p99 = percentile_sorted(&sorted, Ppm::P99)?;
    // u128: even u64::MAX cycles times usize::MAX samples fits.
    let sum: u128 = sorted.iter().map(|&s| u128::from(s)).sum();
    let count = sorted.len();
    let mean = sum as f64 / count as f64;
    // Integers, so "exactly 1 %" is not counted and no rounding decides it.
    let over_1pct = sorted
        .iter()
        .filter(|&&s| 100 * u128::from(s - min) > u128::from(min))
        .count();
    let frac = |detour: u64| detour as f64 / min as f64;
    Ok(Summary {
        count,
        min,
        median,
        p99,
        max,
        mean,
        max_detour: max - min,
        p99_detour: p99 - min,
        mean_detour: mean - min as f64,
        max_detour_frac: frac(max - min),
        p99_detour_frac: frac(p99 - min),
        over_1pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ppm(p: u32) -> Ppm {
        Ppm::new(p).unwrap()
    }

    #[test]
    fn nearest_rank_by_hand() {
        // ⌈0.5·10⌉ = 5, ⌈0.99·10⌉ = ⌈9.9⌉ = 10, ⌈0.99·100⌉ = 99, ⌈0.99·1000⌉ = 990.
        assert_eq!(nearest_rank(Ppm::MEDIAN, 10), 5);
        assert_eq!(nearest_rank(Ppm::P99, 10), 10);
        assert_eq!(nearest_rank(Ppm::P99, 100), 99);
        assert_eq!(nearest_rank(Ppm::P99, 1000), 990);
        assert_eq!(nearest_rank(Ppm::P99, 10_000), 9900);
        // ⌈0.5·3⌉ = 2 (the middle), ⌈0.5·1⌉ = 1.
        assert_eq!(nearest_rank(Ppm::MEDIAN, 3), 2);
        assert_eq!(nearest_rank(Ppm::MEDIAN, 1), 1);
        // p = 0 → rank 1 (the minimum); p = 100 % → rank n (the maximum).
        assert_eq!(nearest_rank(ppm(0), 7), 1);
        assert_eq!(nearest_rank(ppm(Ppm::MAX), 7), 7);
        // Just above a rank boundary moves to the next rank: ⌈0.200001·5⌉ = ⌈1.000005⌉ = 2.
        assert_eq!(nearest_rank(ppm(200_000), 5), 1);
        assert_eq!(nearest_rank(ppm(200_001), 5), 2);
    }

    #[test]
    fn nearest_rank_does_not_overflow() {
        assert_eq!(nearest_rank(ppm(Ppm::MAX), usize::MAX), usize::MAX);
        assert_eq!(nearest_rank(Ppm::MEDIAN, usize::MAX), usize::MAX / 2 + 1);
    }

    #[test]
    fn percentile_out_of_range_is_an_error() {
        assert_eq!(
            Ppm::new(1_000_001),
            Err(StatsError::PercentileOutOfRange(1_000_001))
        );
        assert!(Ppm::new(1_000_000).is_ok());
    }

    #[test]
    fn percentile_of_empty_is_an_error() {
        assert_eq!(percentile(&[], Ppm::MEDIAN), Err(StatsError::Empty));
        assert_eq!(percentile_sorted(&[], Ppm::P99), Err(StatsError::Empty));
        assert_eq!(summarize(&[]), Err(StatsError::Empty));
    }

    #[test]
    fn median_of_even_count_is_the_lower_middle() {
        // Sorted: 10 20 30 40 → rank ⌈0.5·4⌉ = 2 → 20 (not 25).
        assert_eq!(percentile(&[40, 10, 30, 20], Ppm::MEDIAN), Ok(20));
    }

    #[test]
    fn percentile_with_ties() {
        // Sorted: 5 5 5 9 9 → ranks 1..3 are 5, 4..5 are 9.
        let s = [9, 5, 5, 9, 5];
        assert_eq!(percentile(&s, ppm(600_000)), Ok(5)); // ⌈3⌉ = 3
        assert_eq!(percentile(&s, ppm(600_001)), Ok(9)); // ⌈3.000005⌉ = 4
        assert_eq!(percentile(&s, Ppm::MEDIAN), Ok(5)); // ⌈2.5⌉ = 3
    }

    #[test]
    fn percentile_does_not_mutate_its_input() {
        let s = [3, 1, 2];
        let before = s;
        assert_eq!(percentile(&s, Ppm::MEDIAN), Ok(2));
        assert_eq!(s, before);
    }

    #[test]
    fn summary_of_a_single_sample() {
        let s = summarize(&[1000]).unwrap();
        assert_eq!(
            s,
            Summary {
                count: 1,
                min: 1000,
                median: 1000,
                p99: 1000,
                max: 1000,
                mean: 1000.0,
                max_detour: 0,
                p99_detour: 0,
                mean_detour: 0.0,
                max_detour_frac: 0.0,
                p99_detour_frac: 0.0,
                over_1pct: 0,
            }
        );
    }

    #[test]
    fn summary_of_ten_samples_by_hand() {
        // Sorted: 1000 1000 1005 1010 1010 1011 1020 1050 1100 2000.
        // min 1000, max 2000; median rank ⌈5⌉ = 5 → 1010; p99 rank ⌈9.9⌉ = 10 → 2000.
        // Sum 11206 → mean 1120.6. Over 1 % (detour > 10): 1011, 1020, 1050, 1100, 2000 = 5
        // (1010 is exactly 1 %, not counted).
        let samples = [1010, 2000, 1000, 1050, 1005, 1011, 1000, 1100, 1020, 1010];
        let s = summarize(&samples).unwrap();
        assert_eq!(
            (s.count, s.min, s.median, s.p99, s.max),
            (10, 1000, 1010, 2000, 2000)
        );
        assert_eq!(s.mean, 1120.6);
        assert_eq!((s.max_detour, s.p99_detour), (1000, 1000));
        assert_eq!(s.mean_detour, 1120.6 - 1000.0);
        assert_eq!((s.max_detour_frac, s.p99_detour_frac), (1.0, 1.0));
        assert_eq!(s.over_1pct, 5);
        // Not sorted in place.
        assert_eq!(samples[0], 1010);
    }

    #[test]
    fn summary_of_a_hundred_samples_separates_p99_from_max() {
        // 98 quanta of 400 cycles, one of 404 (exactly 1 %), one of 800.
        // Sorted ranks: 1..98 = 400, 99 = 404, 100 = 800. p99 rank ⌈99⌉ = 99 → 404.
        let mut samples = vec![400u64; 98];
        samples.insert(17, 800);
        samples.insert(60, 404);
        let s = summarize(&samples).unwrap();
        assert_eq!((s.min, s.median, s.p99, s.max), (400, 400, 404, 800));
        assert_eq!((s.p99_detour, s.max_detour), (4, 400));
        assert_eq!(s.p99_detour_frac, 0.01);
        assert_eq!(s.max_detour_frac, 1.0);
        // Sum 98·400 + 404 + 800 = 40404 → mean 404.04.
        assert_eq!(s.mean, 404.04);
        // 404 is exactly 1 %: not over; 800 is.
        assert_eq!(s.over_1pct, 1);
    }

    #[test]
    fn summary_of_all_equal_samples_has_no_detour() {
        let s = summarize(&[7, 7, 7, 7]).unwrap();
        assert_eq!((s.min, s.median, s.p99, s.max), (7, 7, 7, 7));
        assert_eq!((s.max_detour, s.p99_detour, s.over_1pct), (0, 0, 0));
    }

    #[test]
    fn one_percent_threshold_for_small_minimum() {
        // min 150: 1 % is 1.5 cycles, so a detour of 1 is under and 2 is over.
        let s = summarize(&[150, 151, 152]).unwrap();
        assert_eq!(s.over_1pct, 1);
    }

    #[test]
    fn summary_with_zero_minimum_is_an_error() {
        assert_eq!(summarize(&[5, 0, 3]), Err(StatsError::ZeroMinimum));
    }

    #[test]
    fn summary_of_huge_samples_does_not_overflow() {
        let s = summarize(&[u64::MAX, u64::MAX - 1]).unwrap();
        assert_eq!(
            (s.min, s.max, s.max_detour, s.over_1pct),
            (u64::MAX - 1, u64::MAX, 1, 0)
        );
    }
}
