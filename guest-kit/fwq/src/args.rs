//! Command line: parsing (clap) and validation against the process's CPU affinity.

use clap::Parser;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Largest CPU number accepted: glibc's `cpu_set_t` holds CPUs `0..CPU_SETSIZE` (1024).
pub const MAX_CPU: usize = 1023;
/// Upper bound on `--samples` per CPU: 10⁷ samples are 80 MB per CPU, already more than a
/// small enclave may have; the buffer is also allocated fallibly, so a smaller machine gets an
/// error rather than an abort.
pub const MAX_SAMPLES: usize = 10_000_000;
/// Upper bound on `--quantum-us`: one second. Longer quanta average the noise away, which is
/// the opposite of what the probe is for.
pub const MAX_QUANTUM_US: u64 = 1_000_000;
/// Upper bound on `--iterations` of `--exit-costs`: as for `--samples`, and for the same reason.
pub const MAX_EXIT_COST_ITERATIONS: usize = MAX_SAMPLES;
/// Upper bound on `--sleep-us`: one second. A longer sleep measures nothing more about the
/// timer's wakeup, it only makes the run take hours.
pub const MAX_SLEEP_US: u64 = 1_000_000;
/// `--quantum-us` and `--samples` when not given.
pub const DEFAULT_QUANTUM_US: u64 = 100;
pub const DEFAULT_SAMPLES: usize = 10_000;
/// `--iterations` and `--sleep-us` when not given.
pub const DEFAULT_EXIT_COST_ITERATIONS: usize = 2000;
pub const DEFAULT_SLEEP_US: u64 = 50;

/// `atoll-fwq`: a fixed-work-quantum (FWQ) noise probe.
///
/// One thread per CPU, pinned, repeats a fixed amount of work (calibrated to one quantum) and
/// records the TSC cycles each repetition took. On an undisturbed CPU every quantum takes the
/// same time; whatever else runs on the CPU (interrupts, exits, the scheduler) shows as a
/// detour: a sample's cycles beyond the fastest one. Prints one line `ATOLL-FWQ {json}`.
///
/// With `--exit-costs` it instead measures, on one CPU, the round trip of CPUID and the
/// overshoot of a short sleep (a timer interrupt's delivery), and prints `ATOLL-EXITCOST {json}`.
#[derive(Clone, Debug, Parser)]
#[command(name = "atoll-fwq", version)]
pub struct Args {
    /// CPUs to probe, e.g. "0-3,5" (default: every CPU the process may run on)
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<CpuList>,
    /// Measure exit costs (CPUID round trip, timer wakeup overshoot) on one CPU instead of FWQ
    #[arg(long, conflicts_with_all = ["cpus", "quantum_us", "samples", "raw", "calibrate", "table"])]
    pub exit_costs: bool,
    /// --exit-costs: the CPU to measure on (default: the first of the affinity mask)
    #[arg(long, value_name = "N", requires = "exit_costs")]
    pub cpu: Option<usize>,
    /// --exit-costs: samples of each kind [default: 2000]
    #[arg(long, value_name = "N", requires = "exit_costs")]
    pub iterations: Option<usize>,
    /// --exit-costs: length of each timed sleep, µs [default: 50]
    #[arg(long, value_name = "N", requires = "exit_costs")]
    pub sleep_us: Option<u64>,
    /// Length of one quantum in microseconds of TSC time, at calibration
    #[arg(long, value_name = "N", default_value_t = DEFAULT_QUANTUM_US)]
    pub quantum_us: u64,
    /// Samples (quanta) per CPU
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SAMPLES)]
    pub samples: usize,
    /// Only calibrate (TSC frequency and iterations per quantum), report and exit
    #[arg(long)]
    pub calibrate: bool,
    /// TSC frequency in Hz instead of measuring it against CLOCK_MONOTONIC_RAW
    #[arg(long, value_name = "HZ")]
    pub tsc_hz: Option<u64>,
    /// Print the human table to stdout (after the JSON line) instead of stderr
    #[arg(long)]
    pub table: bool,
    /// Write every sample to FILE as CSV (cpu,index,cycles)
    #[arg(long, value_name = "FILE")]
    pub raw: Option<PathBuf>,
}

/// A bad argument, with what is wrong in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("--cpus {list:?}: {why}")]
    CpuList { list: String, why: String },
    #[error("--cpus: CPU {cpu} is not in this process's affinity mask ({mask})")]
    NotInAffinity { cpu: usize, mask: CpuList },
    #[error("the process's affinity mask is empty")]
    EmptyAffinity,
    #[error("--quantum-us must be 1..={MAX_QUANTUM_US}, got {0}")]
    Quantum(u64),
    #[error("--samples must be 1..={MAX_SAMPLES}, got {0}")]
    Samples(usize),
    #[error("--tsc-hz must not be 0")]
    TscHz,
    #[error("--cpu: CPU {cpu} is not in this process's affinity mask ({mask})")]
    CpuNotInAffinity { cpu: usize, mask: CpuList },
    #[error("--iterations must be 1..={MAX_EXIT_COST_ITERATIONS}, got {0}")]
    Iterations(usize),
    #[error("--sleep-us must be 1..={MAX_SLEEP_US} (1 s), got {0}")]
    SleepUs(u64),
    #[error("--cpu, --iterations and --sleep-us need --exit-costs")]
    ExitCostsOnly,
    #[error("--exit-costs cannot be combined with the FWQ options (--cpus, --quantum-us, --samples, --raw, --calibrate, --table)")]
    NotExitCosts,
}

/// A set of CPU numbers, ascending, each once; written like Linux's cpulists ("0-3,5").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// From CPU numbers in any order; duplicates are dropped.
    pub fn from_cpus(cpus: impl IntoIterator<Item = usize>) -> CpuList {
        let mut v: Vec<usize> = cpus.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        CpuList(v)
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// Whether `cpu` is in the list.
    pub fn contains(&self, cpu: usize) -> bool {
        self.0.binary_search(&cpu).is_ok()
    }
}

impl FromStr for CpuList {
    type Err = ArgError;

    /// "0-3,5": comma-separated CPUs and inclusive ranges. Spaces around items are allowed; an
    /// empty item, a reversed range, a CPU above [`MAX_CPU`] or a CPU listed twice is an error
    /// (a repeated CPU is most likely a typo, and silently probing it once would hide it).
    fn from_str(s: &str) -> Result<CpuList, ArgError> {
        let bad = |why: String| ArgError::CpuList {
            list: s.to_string(),
            why,
        };
        let number = |t: &str| -> Result<usize, ArgError> {
            let t = t.trim();
            let n: usize = t
                .parse()
                .map_err(|_| bad(format!("{t:?} is not a CPU number")))?;
            if n > MAX_CPU {
                return Err(bad(format!("CPU {n} is above {MAX_CPU}")));
            }
            Ok(n)
        };
        let mut cpus = Vec::new();
        for item in s.split(',') {
            if item.trim().is_empty() {
                return Err(bad("empty item".into()));
            }
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => {
                    let n = number(item)?;
                    (n, n)
                }
            };
            if first > last {
                return Err(bad(format!("range {first}-{last} is reversed")));
            }
            cpus.extend(first..=last);
        }
        let list = CpuList::from_cpus(cpus.iter().copied());
        if list.0.len() != cpus.len() {
            let dup = cpus
                .iter()
                .enumerate()
                .find(|(i, c)| cpus[..*i].contains(c))
                .map(|(_, c)| *c)
                .unwrap_or_default();
            return Err(bad(format!("CPU {dup} is listed twice")));
        }
        Ok(list)
    }
}

impl fmt::Display for CpuList {
    /// Linux cpulist form: ranges of consecutive CPUs joined by commas, e.g. "0-3,5".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let mut first = true;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end = self.0[i];
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// The validated run parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub cpus: CpuList,
    pub quantum_us: u64,
    pub samples: usize,
    pub calibrate_only: bool,
    pub tsc_hz: Option<u64>,
    pub table_to_stdout: bool,
    pub raw: Option<PathBuf>,
}

impl Config {
    /// Checks `args` against the bounds and the process's `affinity` (which CPUs it may use).
    pub fn new(args: Args, affinity: &CpuList) -> Result<Config, ArgError> {
        // clap refuses these combinations; this catches `Args` built by hand.
        if args.exit_costs {
            return Err(ArgError::NotExitCosts);
        }
        if args.cpu.is_some() || args.iterations.is_some() || args.sleep_us.is_some() {
            return Err(ArgError::ExitCostsOnly);
        }
        if affinity.cpus().is_empty() {
            return Err(ArgError::EmptyAffinity);
        }
        if !(1..=MAX_QUANTUM_US).contains(&args.quantum_us) {
            return Err(ArgError::Quantum(args.quantum_us));
        }
        if !(1..=MAX_SAMPLES).contains(&args.samples) {
            return Err(ArgError::Samples(args.samples));
        }
        if args.tsc_hz == Some(0) {
            return Err(ArgError::TscHz);
        }
        let cpus = args.cpus.unwrap_or_else(|| affinity.clone());
        if let Some(&cpu) = cpus.cpus().iter().find(|&&c| !affinity.contains(c)) {
            return Err(ArgError::NotInAffinity {
                cpu,
                mask: affinity.clone(),
            });
        }
        Ok(Config {
            cpus,
            quantum_us: args.quantum_us,
            samples: args.samples,
            calibrate_only: args.calibrate,
            tsc_hz: args.tsc_hz,
            table_to_stdout: args.table,
            raw: args.raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Result<CpuList, ArgError> {
        s.parse()
    }

    fn why(s: &str) -> String {
        match list(s) {
            Err(ArgError::CpuList { why, .. }) => why,
            other => panic!("{s:?}: expected a list error, got {other:?}"),
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(list("0-3,5").unwrap().cpus(), &[0, 1, 2, 3, 5]);
        assert_eq!(list("7").unwrap().cpus(), &[7]);
        assert_eq!(list("2-2").unwrap().cpus(), &[2]);
        assert_eq!(list(" 5 , 1 - 2 ").unwrap().cpus(), &[1, 2, 5]);
        assert_eq!(list("9,3").unwrap().cpus(), &[3, 9]);
        assert_eq!(list("1023").unwrap().cpus(), &[1023]);
    }

    #[test]
    fn bad_cpu_lists() {
        assert_eq!(why(""), "empty item");
        assert_eq!(why("1,,2"), "empty item");
        assert_eq!(why("1,"), "empty item");
        assert_eq!(why("3-1"), "range 3-1 is reversed");
        assert_eq!(why("x"), "\"x\" is not a CPU number");
        assert_eq!(why("-1"), "\"\" is not a CPU number");
        assert_eq!(why("1-"), "\"\" is not a CPU number");
        assert_eq!(why("1-2-3"), "\"2-3\" is not a CPU number");
        assert_eq!(why("1024"), "CPU 1024 is above 1023");
        assert_eq!(why("0-3,2"), "CPU 2 is listed twice");
        assert_eq!(why("4,4"), "CPU 4 is listed twice");
    }

    #[test]
    fn cpu_list_display_round_trips() {
        for s in ["0-3,5", "0", "1,3,5", "0-1,3-4,7-9", "1023"] {
            assert_eq!(list(s).unwrap().to_string(), s);
        }
        assert_eq!(CpuList::from_cpus([4, 2, 3, 2]).to_string(), "2-4");
        assert_eq!(CpuList::from_cpus([]).to_string(), "");
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("atoll-fwq").chain(argv.iter().copied()))
    }

    fn config(argv: &[&str], affinity: &str) -> Result<Config, ArgError> {
        Config::new(
            parse(argv).expect("clap accepts it"),
            &list(affinity).unwrap(),
        )
    }

    #[test]
    fn defaults() {
        let c = config(&[], "0-3").unwrap();
        assert_eq!(
            c,
            Config {
                cpus: list("0-3").unwrap(),
                quantum_us: 100,
                samples: 10_000,
                calibrate_only: false,
                tsc_hz: None,
                table_to_stdout: false,
                raw: None,
            }
        );
    }

    #[test]
    fn every_option() {
        let c = config(
            &[
                "--cpus",
                "1,3",
                "--quantum-us",
                "50",
                "--samples",
                "20",
                "--calibrate",
                "--tsc-hz",
                "2000000000",
                "--table",
                "--raw",
                "/tmp/x.csv",
            ],
            "0-3",
        )
        .unwrap();
        assert_eq!(c.cpus.cpus(), &[1, 3]);
        assert_eq!((c.quantum_us, c.samples), (50, 20));
        assert!(c.calibrate_only && c.table_to_stdout);
        assert_eq!(c.tsc_hz, Some(2_000_000_000));
        assert_eq!(c.raw, Some(PathBuf::from("/tmp/x.csv")));
    }

    #[test]
    fn cpu_outside_the_affinity_mask() {
        assert_eq!(
            config(&["--cpus", "0-2"], "0-1,4"),
            Err(ArgError::NotInAffinity {
                cpu: 2,
                mask: list("0-1,4").unwrap()
            })
        );
        assert_eq!(
            ArgError::NotInAffinity {
                cpu: 2,
                mask: list("0-1,4").unwrap()
            }
            .to_string(),
            "--cpus: CPU 2 is not in this process's affinity mask (0-1,4)"
        );
    }

    #[test]
    fn empty_affinity() {
        assert_eq!(
            Config::new(parse(&[]).unwrap(), &CpuList::from_cpus([])),
            Err(ArgError::EmptyAffinity)
        );
    }

    #[test]
    fn bounds() {
        assert_eq!(
            config(&["--quantum-us", "0"], "0"),
            Err(ArgError::Quantum(0))
        );
        assert_eq!(
            config(&["--quantum-us", "1000001"], "0"),
            Err(ArgError::Quantum(1_000_001))
        );
        assert!(config(&["--quantum-us", "1"], "0").is_ok());
        assert!(config(&["--quantum-us", "1000000"], "0").is_ok());
        assert_eq!(config(&["--samples", "0"], "0"), Err(ArgError::Samples(0)));
        assert_eq!(
            config(&["--samples", "10000001"], "0"),
            Err(ArgError::Samples(10_000_001))
        );
        assert!(config(&["--samples", "10000000"], "0").is_ok());
        assert_eq!(config(&["--tsc-hz", "0"], "0"), Err(ArgError::TscHz));
    }

    #[test]
    fn clap_rejects_malformed_values() {
        use clap::error::ErrorKind;
        let kind = |argv: &[&str]| parse(argv).unwrap_err().kind();
        assert_eq!(kind(&["--cpus", "3-1"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--samples", "-5"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["--samples", "many"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--quantum-us", "1.5"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--bogus"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["extra"]), ErrorKind::UnknownArgument);
        // The list's own reason reaches the user.
        let msg = parse(&["--cpus", "3-1"]).unwrap_err().to_string();
        assert!(msg.contains("range 3-1 is reversed"), "{msg}");
    }
}
