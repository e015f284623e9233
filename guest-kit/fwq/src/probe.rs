//! Calibration and sampling threads.
//!
//! Sampling is back to back: each sample is the TSC difference between the end of one
//! quantum and the end of the next, so every cycle of the run belongs to some sample and a
//! disturbance between quanta cannot hide in a gap (a sample also carries the loop's few
//! cycles of bookkeeping — the same in every sample, so they cancel in the detour).

use crate::affinity;
use crate::tsc::{self, Calibration, CalibrationError};
use core::hint::black_box;
use std::io;
use std::sync::{Condvar, Mutex};

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// Measured against CLOCK_MONOTONIC_RAW.
    Measured,
    /// Given with `--tsc-hz`.
    Argument,
}

impl TscSource {
    /// The name in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            TscSource::Measured => "clock_monotonic_raw",
            TscSource::Argument => "argument",
        }
    }
}

/// The result of calibrating on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub tsc_hz: u64,
    pub tsc_source: TscSource,
    /// The quantum in cycles at `tsc_hz`: the calibration's target.
    pub quantum_cycles: u64,
    /// Iterations of work per quantum and what they took at calibration.
    pub calibration: Calibration,
}

/// What can go wrong while probing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("pinning a thread to CPU {cpu}: {source}")]
    Pin { cpu: usize, source: io::Error },
    #[error("CPU {cpu}: cannot allocate {samples} samples ({bytes} bytes)")]
    Alloc {
        cpu: usize,
        samples: usize,
        bytes: usize,
    },
    #[error("calibrating on CPU {cpu}: {source}")]
    Calibration {
        cpu: usize,
        source: CalibrationError,
    },
    #[error("CPU {cpu}: the TSC went backwards at sample {index}")]
    TscBackwards { cpu: usize, index: usize },
    #[error("the thread for CPU {0} panicked")]
    Panicked(usize),
    #[error("spawning a thread: {0}")]
    Spawn(io::Error),
    #[error("the run was aborted before it started")]
    Aborted,
}

/// How long threads run the work before measuring, so that clock frequency and caches have
/// settled: 10 ms, at least 10 quanta.
const WARMUP_US: u64 = 10_000;

fn warm_up(iterations: u64, quantum_us: u64) {
    let quanta = (WARMUP_US / quantum_us).max(10);
    for _ in 0..quanta {
        black_box(tsc::work(iterations));
    }
}

/// Calibrates on `cpu` (a thread pinned there, so this thread's mask is untouched): the TSC
/// frequency (unless given) and the iterations of work for one `quantum_us` quantum.
pub fn calibrate(cpu: usize, quantum_us: u64, tsc_hz: Option<u64>) -> Result<Params, ProbeError> {
    let thread = std::thread::Builder::new()
        .name(format!("fwq-cal-{cpu}"))
        .spawn(move || -> Result<Params, ProbeError> {
            affinity::pin_current_thread(cpu).map_err(|source| ProbeError::Pin { cpu, source })?;
            let cal_err = |source| ProbeError::Calibration { cpu, source };
            let (tsc_hz, tsc_source) = match tsc_hz {
                Some(hz) => (hz, TscSource::Argument),
                None => (tsc::measure_tsc_hz().map_err(cal_err)?, TscSource::Measured),
            };
            let quantum_cycles = tsc::quantum_cycles(quantum_us, tsc_hz);
            // Warm up with a rough count (about a quantum if the loop runs ~1 iteration per
            // ns) before the measurements that count.
            warm_up(quantum_cycles / 4, quantum_us);
            let calibration =
                tsc::calibrate_iterations(quantum_cycles, tsc::time_work).map_err(cal_err)?;
            Ok(Params {
                tsc_hz,
                tsc_source,
                quantum_cycles,
                calibration,
            })
        })
        .map_err(ProbeError::Spawn)?;
    thread.join().map_err(|_| ProbeError::Panicked(cpu))?
}

/// One CPU's samples: cycles per quantum, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSamples {
    pub cpu: usize,
    pub cycles: Vec<u64>,
}

/// Pins one thread to each of `cpus`, lets each allocate and touch its sample buffer and warm
/// up, starts them together (a [`StartGate`]) and takes `samples` back-to-back samples of
/// `iterations` of work on each. Results are in the order of `cpus`.
pub fn sample(
    cpus: &[usize],
    iterations: u64,
    quantum_us: u64,
    samples: usize,
) -> Result<Vec<CpuSamples>, ProbeError> {
    let gate = StartGate::default();
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(cpus.len());
        let mut spawn_error = None;
        for &cpu in cpus {
            let gate = &gate;
            let spawned = std::thread::Builder::new()
                .name(format!("fwq-{cpu}"))
                .spawn_scoped(scope, move || -> Result<Option<CpuSamples>, ProbeError> {
                    // Every thread reports at the gate, even after a failed setup, so the
                    // start never waits for a thread that will not come.
                    let setup = prepare(cpu, iterations, quantum_us, samples);
                    if !gate.ready_and_wait() {
                        return setup.map(|_| None);
                    }
                    let mut buffer = setup?;
                    measure(cpu, iterations, &mut buffer)?;
                    Ok(Some(CpuSamples {
                        cpu,
                        cycles: buffer,
                    }))
                });
            match spawned {
                Ok(h) => handles.push((cpu, h)),
                Err(e) => {
                    spawn_error = Some(ProbeError::Spawn(e));
                    break;
                }
            }
        }
        gate.open_when_ready(handles.len(), spawn_error.is_none());
        let mut results = Vec::with_capacity(handles.len());
        for (cpu, h) in handles {
            results.push(h.join().map_err(|_| ProbeError::Panicked(cpu))?);
        }
        if let Some(e) = spawn_error {
            return Err(e);
        }
        results
            .into_iter()
            .map(|r| r.and_then(|s| s.ok_or(ProbeError::Aborted)))
            .collect()
    })
}

/// The start line: threads check in when prepared and wait; the spawning thread opens the
/// gate once all have checked in (or aborts it if not all threads could be started).
#[derive(Default)]
struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    ready: usize,
    /// None: closed; Some(true): go; Some(false): aborted.
    open: Option<bool>,
}

impl StartGate {
    /// Checks in and waits for the gate; true to go, false if aborted.
    fn ready_and_wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.ready += 1;
        self.changed.notify_all();
        loop {
            if let Some(go) = s.open {
                return go;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until `threads` have checked in, then opens (`go`) or aborts the gate.
    fn open_when_ready(&self, threads: usize, go: bool) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.ready < threads {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.open = Some(go);
        self.changed.notify_all();
    }
}

/// Before the start: pin, allocate and touch the buffer (so no page fault lands inside a
/// sample), warm up.
fn prepare(
    cpu: usize,
    iterations: u64,
    quantum_us: u64,
    samples: usize,
) -> Result<Vec<u64>, ProbeError> {
    affinity::pin_current_thread(cpu).map_err(|source| ProbeError::Pin { cpu, source })?;
    let mut buffer = Vec::new();
    let bytes = samples.saturating_mul(size_of::<u64>());
    buffer
        .try_reserve_exact(samples)
        .map_err(|_| ProbeError::Alloc {
            cpu,
            samples,
            bytes,
        })?;
    // Writes every page now; a freshly mapped page would fault on its first write.
    buffer.resize(samples, u64::MAX);
    warm_up(iterations, quantum_us);
    Ok(buffer)
}

/// The measurement loop: nothing in it allocates, faults or makes a system call.
fn measure(cpu: usize, iterations: u64, buffer: &mut [u64]) -> Result<(), ProbeError> {
    let mut previous = tsc::cycles();
    for slot in buffer.iter_mut() {
        black_box(tsc::work(iterations));
        let now = tsc::cycles();
        *slot = now.wrapping_sub(previous);
        previous = now;
    }
    // A backwards step shows as a wrapped, enormous difference; checked after the loop so the
    // loop stays minimal. (The TSC of one CPU never goes backwards unless something writes it.)
    if let Some(index) = buffer.iter().position(|&c| c > i64::MAX as u64) {
        return Err(ProbeError::TscBackwards { cpu, index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::MAX_CPU;
    use std::sync::Arc;

    fn first_and_outside() -> (usize, usize) {
        let mask = affinity::current().unwrap();
        let outside = (0..=MAX_CPU).find(|&c| !mask.contains(c)).unwrap();
        (mask.cpus()[0], outside)
    }

    #[test]
    fn a_thread_that_cannot_pin_fails_the_run_without_hanging_the_others() {
        let (first, outside) = first_and_outside();
        let e = sample(&[first, outside], 10, 10, 5).unwrap_err();
        assert!(
            matches!(e, ProbeError::Pin { cpu, .. } if cpu == outside),
            "{e:?}"
        );
    }

    #[test]
    fn an_unallocatable_buffer_is_an_error_not_an_abort() {
        let (first, _) = first_and_outside();
        let samples = usize::MAX / 8;
        let e = std::thread::spawn(move || prepare(first, 1, 10, samples))
            .join()
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(e, ProbeError::Alloc { cpu, samples: s, .. } if cpu == first && s == samples),
            "{e:?}"
        );
    }

    #[test]
    fn samples_come_back_in_the_order_of_the_cpus() {
        let mask = affinity::current().unwrap();
        let mut cpus = mask.cpus().to_vec();
        cpus.reverse();
        let runs = sample(&cpus, 10, 10, 3).unwrap();
        assert_eq!(runs.iter().map(|r| r.cpu).collect::<Vec<_>>(), cpus);
        assert!(runs
            .iter()
            .all(|r| r.cycles.len() == 3 && r.cycles.iter().all(|&c| c > 0)));
    }

    #[test]
    fn gate_opens_only_when_every_thread_is_ready_or_aborts() {
        for go in [true, false] {
            let gate = Arc::new(StartGate::default());
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let gate = Arc::clone(&gate);
                    std::thread::spawn(move || gate.ready_and_wait())
                })
                .collect();
            gate.open_when_ready(3, go);
            assert_eq!(gate.state.lock().unwrap().ready, 3);
            for t in threads {
                assert_eq!(t.join().unwrap(), go);
            }
        }
    }
}
