//! `atoll-fwq`: a fixed-work-quantum (FWQ) noise probe, after LLNL's FWQ benchmark as used in
//! the Pisces and mOS evaluations.
//!
//! One thread per CPU, pinned there, runs the same fixed amount of work (a quantum, calibrated
//! once to about `--quantum-us` of TSC time) again and again and records how many TSC cycles
//! each repetition took. An undisturbed CPU takes the same cycles every time; anything the
//! system makes the CPU do besides the work — timer ticks, IPIs, interrupts, VM exits, other
//! tasks — lengthens some quanta. The report per CPU is the distribution of cycles per quantum
//! and its *detours* (cycles beyond the fastest quantum); see [`stats`] for the definitions.
//!
//! In Bochs (`clock: sync=none`) a busy CPU's TSC counts its own instructions, so a detour
//! there is exactly the instructions something else made that CPU execute.
//!
//! # `--exit-costs`
//!
//! A second mode, `atoll-fwq --exit-costs [--cpu N] [--iterations N] [--sleep-us N]
//! [--tsc-hz HZ]`, measures on one CPU (pinned; default the first of the affinity mask) what
//! an exit costs the guest it runs in, as seen from user space: the round trip of `CPUID`
//! leaf 0 (always an exit under a hypervisor, tens of cycles natively) and the overshoot of a
//! short `clock_nanosleep` (the whole cost of a timer interrupt's delivery and the wakeup).
//! It prints exactly one line `ATOLL-EXITCOST {json}` on stdout (`cpu`, `iterations`,
//! `sleep_us`, `tsc_hz`, `tsc_source`, `rdtsc_pair`, `cpuid`, `timer`) and a table on
//! stderr. It excludes the FWQ options. See [`exitcost`] for what each number includes.
//!
//! Modules: [`args`] (command line), [`stats`] (pure statistics), [`tsc`] (clock, work,
//! calibration), [`affinity`] (pinning), [`probe`] (threads), [`report`] (JSON, table, CSV),
//! [`exitcost`] (the `--exit-costs` mode).

pub mod affinity;
pub mod args;
pub mod exitcost;
pub mod probe;
pub mod report;
pub mod stats;
pub mod tsc;

use args::{ArgError, Args, Config};
use probe::{CpuSamples, ProbeError};
use report::{CpuReport, Report};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

/// Anything that stops a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Args(#[from] ArgError),
    #[error("reading the process's CPU affinity: {0}")]
    Affinity(io::Error),
    #[error("{0}")]
    Probe(#[from] ProbeError),
    #[error("CPU {cpu}: {source}")]
    Stats {
        cpu: usize,
        source: stats::StatsError,
    },
    #[error("--exit-costs: {0}")]
    ExitCost(#[from] exitcost::ExitCostError),
    #[error("--raw {path}: {source}", path = path.display())]
    Raw { path: PathBuf, source: io::Error },
}

impl Error {
    /// The process exit status: 2 for a bad command line, 1 for a failed run.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Args(_) => 2,
            _ => 1,
        }
    }
}

/// Calibrates on the first CPU of `config`, then (unless `--calibrate`) samples every CPU.
/// Returns the report and the raw samples (empty with `--calibrate`).
pub fn run(config: &Config) -> Result<(Report, Vec<CpuSamples>), Error> {
    // Config::new guarantees a non-empty list; an empty one would have nothing to report.
    let Some(&first) = config.cpus.cpus().first() else {
        return Err(ArgError::CpuList {
            list: String::new(),
            why: "no CPUs".into(),
        }
        .into());
    };
    let params = probe::calibrate(first, config.quantum_us, config.tsc_hz)?;
    let samples = if config.calibrate_only {
        0
    } else {
        config.samples
    };
    let mut report = Report::new(config.quantum_us, samples, first, &params);
    if config.calibrate_only {
        return Ok((report, Vec::new()));
    }
    let runs = probe::sample(
        config.cpus.cpus(),
        params.calibration.iterations,
        config.quantum_us,
        config.samples,
    )?;
    for run in &runs {
        let summary = stats::summarize(&run.cycles).map_err(|source| Error::Stats {
            cpu: run.cpu,
            source,
        })?;
        report.cpus.push(CpuReport {
            cpu: run.cpu,
            summary,
        });
    }
    Ok((report, runs))
}

/// The whole program after clap: validate, run, print the JSON line to `out` and the table to
/// `err` (or to `out` with `--table`), write `--raw` (created before the run). The binary passes stdout and stderr.
pub fn main_with(args: Args, out: &mut impl Write, err: &mut impl Write) -> Result<(), Error> {
    let affinity = affinity::current().map_err(Error::Affinity)?;
    if args.exit_costs {
        return exitcost::main_with(args, &affinity, out, err);
    }
    let config = Config::new(args, &affinity)?;
    // Created before measuring, so a bad path fails at once rather than after the run.
    let raw = match &config.raw {
        Some(path) => Some(std::fs::File::create(path).map_err(|source| Error::Raw {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let (report, runs) = run(&config)?;
    let table = report.table();
    // A closed stdout or stderr is not worth failing a finished measurement for.
    let _ = writeln!(out, "{}", report.json_line());
    if config.table_to_stdout {
        let _ = write!(out, "{table}");
    } else {
        let _ = write!(err, "{table}");
    }
    let _ = out.flush();
    if let (Some(file), Some(path)) = (raw, &config.raw) {
        report::write_raw(&mut BufWriter::new(file), &runs).map_err(|source| Error::Raw {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
