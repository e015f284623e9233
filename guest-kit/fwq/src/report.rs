//! Output: the `ATOLL-FWQ {json}` line, the human table and the raw CSV.

use crate::probe::{CpuSamples, Params};
use crate::stats::Summary;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{self, Write};

/// The prefix of the JSON line that benches look for on a console.
pub const PREFIX: &str = "ATOLL-FWQ";

/// Everything one run reports. Cycle counts are TSC cycles.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The requested quantum, µs.
    pub quantum_us: u64,
    /// Samples per CPU (0 with `--calibrate`).
    pub samples: usize,
    /// TSC frequency, Hz.
    pub tsc_hz: u64,
    /// "clock_monotonic_raw" (measured) or "argument" (`--tsc-hz`).
    pub tsc_source: &'static str,
    /// The quantum in cycles at `tsc_hz`: the calibration's target.
    pub quantum_cycles: u64,
    /// Iterations of the work loop per quantum (the same on every CPU).
    pub iterations: u64,
    /// The fastest calibration run at `iterations`, cycles.
    pub calibrated_cycles: u64,
    /// The CPU calibration ran on.
    pub calibration_cpu: usize,
    /// True for `--calibrate` (no samples taken, `cpus` empty).
    pub calibrate_only: bool,
    /// One entry per probed CPU, in the order of `--cpus`.
    pub cpus: Vec<CpuReport>,
}

/// One CPU's statistics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuReport {
    pub cpu: usize,
    #[serde(flatten)]
    pub summary: Summary,
}

impl Report {
    /// The report's head: parameters and calibration, no CPUs yet.
    pub fn new(quantum_us: u64, samples: usize, cpu: usize, params: &Params) -> Report {
        Report {
            quantum_us,
            samples,
            tsc_hz: params.tsc_hz,
            tsc_source: params.tsc_source.name(),
            quantum_cycles: params.quantum_cycles,
            iterations: params.calibration.iterations,
            calibrated_cycles: params.calibration.cycles,
            calibration_cpu: cpu,
            calibrate_only: samples == 0,
            cpus: Vec::new(),
        }
    }

    /// `ATOLL-FWQ {json}` (no newline).
    pub fn json_line(&self) -> String {
        prefixed_json(PREFIX, self)
    }

    /// The human table: a parameters line, then one row per CPU.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "atoll-fwq: quantum {} µs = {} cycles at {:.3} MHz ({}), {} iterations (calibrated {} cycles on CPU {}), {}",
            self.quantum_us,
            self.quantum_cycles,
            self.tsc_hz as f64 / 1e6,
            self.tsc_source,
            self.iterations,
            self.calibrated_cycles,
            self.calibration_cpu,
            if self.calibrate_only {
                "calibration only".to_string()
            } else {
                format!("{} samples per CPU", self.samples)
            },
        );
        if self.cpus.is_empty() {
            return t;
        }
        let _ = writeln!(
            t,
            "{:>4} {:>12} {:>12} {:>12} {:>12} {:>22} {:>22} {:>10} {:>6}",
            "cpu", "min", "median", "p99", "max", "p99 detour", "max detour", "mean det", ">1%"
        );
        for c in &self.cpus {
            let s = &c.summary;
            let _ = writeln!(
                t,
                "{:>4} {:>12} {:>12} {:>12} {:>12} {:>22} {:>22} {:>10} {:>6}",
                c.cpu,
                s.min,
                s.median,
                s.p99,
                s.max,
                format!("{} ({:.2}%)", s.p99_detour, 100.0 * s.p99_detour_frac),
                format!("{} ({:.2}%)", s.max_detour, 100.0 * s.max_detour_frac),
                format!("{:.1}", s.mean_detour),
                s.over_1pct,
            );
        }
        t
    }
}

/// Writes every sample as CSV: a header `cpu,index,cycles`, then one line per sample.
pub fn write_raw(out: &mut impl Write, runs: &[CpuSamples]) -> io::Result<()> {
    writeln!(out, "cpu,index,cycles")?;
    for run in runs {
        for (index, cycles) in run.cycles.iter().enumerate() {
            writeln!(out, "{},{index},{cycles}", run.cpu)?;
        }
    }
    out.flush()
}

/// `PREFIX {json}` (no newline), the one-line report both modes print. A struct of numbers,
/// strings and finite floats cannot fail to serialize; the fallback keeps the line parseable if
/// it ever did.
pub fn prefixed_json(prefix: &str, value: &impl serde::Serialize) -> String {
    let json = serde_json::to_string(value)
        .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
    format!("{prefix} {json}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::TscSource;
    use crate::stats::summarize;
    use crate::tsc::Calibration;

    fn params() -> Params {
        Params {
            tsc_hz: 2_000_000_000,
            tsc_source: TscSource::Measured,
            quantum_cycles: 200_000,
            calibration: Calibration {
                iterations: 49_000,
                cycles: 200_004,
            },
        }
    }

    fn report() -> Report {
        let mut r = Report::new(100, 4, 0, &params());
        r.cpus.push(CpuReport {
            cpu: 3,
            summary: summarize(&[400, 404, 800, 400]).unwrap(),
        });
        r
    }

    #[test]
    fn json_line_has_every_field() {
        let line = report().json_line();
        let json = line.strip_prefix("ATOLL-FWQ ").expect("prefix");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["quantum_us"], 100);
        assert_eq!(v["samples"], 4);
        assert_eq!(v["tsc_hz"], 2_000_000_000u64);
        assert_eq!(v["tsc_source"], "clock_monotonic_raw");
        assert_eq!(v["quantum_cycles"], 200_000);
        assert_eq!(v["iterations"], 49_000);
        assert_eq!(v["calibrated_cycles"], 200_004);
        assert_eq!(v["calibration_cpu"], 0);
        assert_eq!(v["calibrate_only"], false);
        let cpu = &v["cpus"][0];
        // Sorted 400 400 404 800: median rank 2 → 400, p99 rank ⌈3.96⌉ = 4 → 800,
        // mean 2004/4 = 501, over 1 %: only 800 (404 is exactly 1 %).
        assert_eq!(cpu["cpu"], 3);
        assert_eq!(cpu["count"], 4);
        assert_eq!(cpu["min"], 400);
        assert_eq!(cpu["median"], 400);
        assert_eq!(cpu["p99"], 800);
        assert_eq!(cpu["max"], 800);
        assert_eq!(cpu["mean"], 501.0);
        assert_eq!(cpu["max_detour"], 400);
        assert_eq!(cpu["p99_detour"], 400);
        assert_eq!(cpu["mean_detour"], 101.0);
        assert_eq!(cpu["max_detour_frac"], 1.0);
        assert_eq!(cpu["p99_detour_frac"], 1.0);
        assert_eq!(cpu["over_1pct"], 1);
        assert_eq!(cpu.as_object().unwrap().len(), 13);
        assert_eq!(v.as_object().unwrap().len(), 10);
    }

    #[test]
    fn calibrate_only_report() {
        let r = Report::new(100, 0, 2, &params());
        assert!(r.calibrate_only);
        let v: serde_json::Value =
            serde_json::from_str(r.json_line().strip_prefix("ATOLL-FWQ ").unwrap()).unwrap();
        assert_eq!(v["cpus"].as_array().unwrap().len(), 0);
        assert_eq!(v["calibration_cpu"], 2);
        // The table is just the parameters line.
        assert_eq!(r.table().lines().count(), 1);
        assert!(
            r.table()
                .trim_end()
                .ends_with("on CPU 2), calibration only"),
            "{}",
            r.table()
        );
    }

    #[test]
    fn table_rows() {
        let t = report().table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "atoll-fwq: quantum 100 µs = 200000 cycles at 2000.000 MHz (clock_monotonic_raw), \
             49000 iterations (calibrated 200004 cycles on CPU 0), 4 samples per CPU"
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "3",
                "400",
                "400",
                "800",
                "800",
                "400",
                "(100.00%)",
                "400",
                "(100.00%)",
                "101.0",
                "1"
            ]
        );
    }

    #[test]
    fn raw_csv() {
        let runs = [
            CpuSamples {
                cpu: 2,
                cycles: vec![10, 11],
            },
            CpuSamples {
                cpu: 5,
                cycles: vec![7],
            },
        ];
        let mut out = Vec::new();
        write_raw(&mut out, &runs).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "cpu,index,cycles\n2,0,10\n2,1,11\n5,0,7\n"
        );
    }
}
