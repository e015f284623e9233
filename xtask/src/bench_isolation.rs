//! `cargo xtask bench isolation`: the headline experiment (issue 15) — HPCG and a noise probe
//! on two cores while the rest of the machine is loaded, in each configuration, solo and under
//! load.
//!
//! Configurations (each one boot of the same 4-CPU emulated machine, the workload on cores 2
//! and 3, the loads on cores 0 and 1):
//!
//! * **native** (`isolation-native`): the guest image's Debian kernel booted without atoll; the
//!   workload pinned to cores 2 and 3 of the same kernel that runs the load — the shared-kernel
//!   case;
//! * **atoll** (`isolation-atoll`): the host's Linux on every core creates an enclave on cores 2
//!   and 3 (offlined for it) whose own kernel runs the workload, with atoll's exits counted
//!   around its HPCG run;
//! * **kvm-default** (`isolation-kvm`): the same kernel without atoll runs the workload in a KVM
//!   guest (Debian's `qemu-system-x86_64-microvm`, the enclave's kernel, initramfs and command
//!   line), its vCPU threads pinned to cores 2 and 3, KVM's exits counted around HPCG;
//! * **kvm-tuned**: the same with [`KVM_TUNING`] on the host's command line (isolcpus,
//!   nohz_full, rcu_nocbs, irqaffinity) — what a careful user does.
//!
//! In every boot the host's `/init` runs the guest image's `isolation` action: the workload
//! (`work`: `atoll-fwq`, `oslat`, `atoll-hpcg`) solo, then under each stress-ng profile the bench
//! names (`--load`), each run reported on lines of their own (`ATOLL-ISO-*`). HPCG runs on the
//! guest's tickless CPUs (the `nohz_full=` of [`Options::guest_cmdline`]; natively on the cores
//! they stand for, [`WORKLOAD_CORES`], booted with the same words), the probes on all the
//! workload's CPUs. This module turns the reports into a table (HPCG's rating and cycles, the
//! loaded/solo ratio of HPCG's timed cycles, FWQ's largest and 99th-percentile detour per CPU,
//! oslat's maximum, exits per second per core while HPCG computes and of HPCG's own vCPU —
//! atoll's per-vCPU counters —, the interrupts on the workload's and HPCG's CPUs),
//! `target/bench/isolation-EMU[-TAG].json` (every report in full) and a PNG beside it;
//! [`merge`] joins the JSON of runs made apart into one report.
//!
//! Bochs is the reference: a busy CPU's TSC there counts that CPU's own instructions, so the
//! loaded/solo ratio of HPCG's cycles is interference from software alone. On QEMU the cycles
//! are the host's wall clock and the figures show the pipeline, not isolation.

use crate::run::{run, RunOptions};
use crate::scenario::Emulator;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The load profiles the guest image's `isolation` action knows (stress-ng on the host's
/// cores): `all` runs every other one at once.
pub const PROFILES: &[&str] = &["cpu", "memory", "timers", "ipi", "io", "all"];

/// A configuration of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// The same kernel without atoll, the workload pinned beside the load.
    Native,
    /// The workload in an enclave, the load in the host.
    Atoll,
    /// The workload in a KVM guest (microvm), its vCPU threads pinned to the workload's cores.
    KvmDefault,
    /// The same with the host tuned for it: isolcpus, nohz_full, rcu_nocbs and IRQ affinity
    /// away from the guest's cores.
    KvmTuned,
}

/// What the kvm-tuned host adds to its command line: the guest's cores isolated from the
/// scheduler, tickless, without RCU callbacks, and no IRQ aimed at them by default.
pub const KVM_TUNING: &str = "isolcpus=2,3 nohz_full=2,3 rcu_nocbs=2,3 irqaffinity=0-1";

impl Config {
    pub const ALL: [Config; 4] = [
        Config::Native,
        Config::Atoll,
        Config::KvmDefault,
        Config::KvmTuned,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::Native => "native",
            Config::Atoll => "atoll",
            Config::KvmDefault => "kvm-default",
            Config::KvmTuned => "kvm-tuned",
        }
    }

    fn scenario(self) -> &'static str {
        match self {
            Config::Native => "isolation-native",
            Config::Atoll => "isolation-atoll",
            Config::KvmDefault | Config::KvmTuned => "isolation-kvm",
        }
    }

    fn from_name(s: &str) -> Option<Config> {
        Config::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// What the bench was asked.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub emulator: Emulator,
    /// Load profiles, each measured after the solo run.
    pub loads: Vec<String>,
    /// HPCG's grid side (NX = NY = NZ).
    pub size: u32,
    /// HPCG's run time in seconds (0: the quick path, one set).
    pub rt: u32,
    /// FWQ samples per CPU.
    pub fwq_samples: u32,
    /// oslat's seconds (0: none).
    pub oslat_s: u32,
    pub configs: Vec<Config>,
    /// Words for the workload guest's kernel (the enclave's and the KVM guest's alike).
    pub guest_cmdline: String,
    /// Configurations booted at once (each emulator is one process: on Bochs, one core).
    pub parallel: usize,
    /// Added to the output files' names (`isolation-EMU-TAG.json`), so that runs with other
    /// loads or configurations can be kept apart and merged (`--merge`).
    pub tag: Option<String>,
}

/// The workload guest's kernel words by default: its second CPU tickless while it computes
/// (the first keeps the tick: a kernel needs one housekeeping CPU) and without RCU callbacks.
pub const GUEST_CMDLINE: &str = "nohz_full=1 rcu_nocbs=1";

/// What every kernel that boots on the Bochs machine itself (native, KVM host, atoll's host)
/// is told of its idle loop: halt, not MWAIT (see [`boot_words`]).
const BOCHS_IDLE: &str = "idle=halt";

/// The machine's cores the workload gets (the enclave's, the KVM guest's vCPU threads', the
/// native workload's); guest CPU i is core `WORKLOAD_CORES[i]`.
pub const WORKLOAD_CORES: [u32; 2] = [2, 3];

/// A kernel's CPU list ("1", "0-2", "1,3"), sorted and without repeats (the guest kit's
/// parser, [`guest_kit::check::parse_cpu_list`]); an error for anything else, an empty list
/// and flags such as isolcpus' "domain," included.
pub fn parse_cpu_list(l: &str) -> Result<Vec<u32>> {
    let cpus = guest_kit::check::parse_cpu_list(l).map_err(|e| {
        let what = if e.contains("range") {
            "not a CPU range"
        } else {
            "not a CPU number"
        };
        anyhow::anyhow!("'{l}' is {what}: {e}")
    })?;
    if cpus.is_empty() {
        bail!("'{l}' is not a CPU number: an empty list");
    }
    Ok(cpus)
}

/// `cpus` as a kernel CPU list ("1,3", "2-3").
fn cpu_list_text(cpus: &[u32]) -> String {
    guest_kit::check::format_cpu_list(cpus)
}

/// The guest's CPUs `cpus` as the machine's cores ([`WORKLOAD_CORES`]).
pub fn guest_to_cores(cpus: &[u32]) -> Vec<u32> {
    cpus.iter()
        .filter_map(|c| WORKLOAD_CORES.get(*c as usize).copied())
        .collect()
}

impl Options {
    /// Checks and fills in the command line's values.
    pub fn new(
        emulator: Emulator,
        load: &str,
        size: u32,
        rt: u32,
        fwq_samples: u32,
        oslat_s: u32,
        configs: &str,
    ) -> Result<Options> {
        let loads: Vec<String> = load
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if loads.is_empty() {
            bail!(
                "--load: name at least one profile ({})",
                PROFILES.join(", ")
            );
        }
        for l in &loads {
            if !PROFILES.contains(&l.as_str()) {
                bail!("--load {l}: not a load profile ({})", PROFILES.join(", "));
            }
        }
        // 64³ is about 120 MiB of HPCG's data: what the workload guest's 256 MiB holds.
        if size < 16 || !size.is_multiple_of(8) || size > 64 {
            bail!(
                "--size {size}: HPCG's grid side must be a multiple of 8 from 16 to 64 (the \
                 workload's guest has 256 MiB)"
            );
        }
        if !(100..=1_000_000).contains(&fwq_samples) {
            bail!("--fwq-samples {fwq_samples}: from 100 to 1,000,000");
        }
        let mut cs = Vec::new();
        for c in configs.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            let Some(k) = Config::from_name(c) else {
                bail!(
                    "--configs {c}: not a configuration ({})",
                    Config::ALL.map(Config::name).join(", ")
                );
            };
            if !cs.contains(&k) {
                cs.push(k);
            }
        }
        if cs.is_empty() {
            bail!("--configs: name at least one configuration");
        }
        Ok(Options {
            emulator,
            loads,
            size,
            rt,
            fwq_samples,
            oslat_s,
            configs: cs,
            guest_cmdline: GUEST_CMDLINE.into(),
            parallel: 1,
            tag: None,
        })
    }

    /// The workload guest's CPUs HPCG runs on: its tickless ones (`nohz_full=` of the guest's
    /// command line), or all of them (None) when the guest has none.
    pub fn hpcg_guest_cpus(&self) -> Result<Option<Vec<u32>>> {
        match self
            .guest_cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("nohz_full="))
        {
            Some(l) => {
                let cpus =
                    parse_cpu_list(l).with_context(|| format!("--guest-cmdline nohz_full={l}"))?;
                if let Some(c) = cpus.iter().find(|c| **c as usize >= WORKLOAD_CORES.len()) {
                    bail!(
                        "--guest-cmdline nohz_full={l}: CPU {c}, but the workload's guest has {} \
                         CPUs (0-{})",
                        WORKLOAD_CORES.len(),
                        WORKLOAD_CORES.len() - 1
                    );
                }
                if cpus.contains(&0) {
                    bail!(
                        "--guest-cmdline nohz_full={l}: CPU 0 is the guest's housekeeping CPU \
                         (its shell and probes run there, HPCG on the tickless ones)"
                    );
                }
                if cpus.len() == WORKLOAD_CORES.len() {
                    bail!(
                        "--guest-cmdline nohz_full={l}: every CPU of the workload's guest; a \
                         kernel keeps one housekeeping CPU"
                    );
                }
                Ok(Some(cpus))
            }
            None => Ok(None),
        }
    }

    /// The words the host's `/init` reads (the workload's are passed on to its enclave).
    pub fn words(&self) -> String {
        let n = self.size;
        let mut w = format!(
            "atoll.iso_loads=none,{} atoll.hpcg={n},{n},{n} atoll.hpcg_rt={} atoll.fwq_samples={} \
             atoll.oslat_s={}",
            self.loads.join(","),
            self.rt,
            self.fwq_samples,
            self.oslat_s
        );
        let guest: Vec<&str> = self.guest_cmdline.split_whitespace().collect();
        if !guest.is_empty() {
            w.push_str(&format!(" atoll.work_guest={}", guest.join("+")));
        }
        w
    }
}

/// One FWQ CPU's figures (cycles).
#[derive(Clone, Debug, PartialEq)]
pub struct FwqCpu {
    pub cpu: u64,
    pub min: u64,
    pub max_detour: u64,
    pub p99_detour: u64,
}

/// One measurement: the workload under one load.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub load: String,
    pub problem: String,
    /// atoll-hpcg's report, whole.
    pub hpcg: Value,
    /// atoll-fwq's report, whole.
    pub fwq: Value,
    /// oslat's report without histograms (null without oslat).
    pub oslat: Value,
    /// atoll's stats of the enclave before and after HPCG (atoll only).
    pub stats: Option<(Value, Value)>,
    /// KVM's exits around HPCG (`{exits, uptime_before, uptime_after, vcpus}`; KVM only).
    pub kvm: Option<Value>,
    /// `/proc/interrupts` of the workload's kernel before and after HPCG (rows, spaces
    /// squeezed).
    pub irqs: (Vec<String>, Vec<String>),
    /// `atoll-fwq --exit-costs`'s report (CPUID's round trip, a timer wakeup's overshoot).
    pub exit_costs: Value,
}

/// Interrupts on `cpus` between two `/proc/interrupts` readings (all CPUs when `cpus` is
/// empty): by row name (`LOC`, `CAL`, `TLB`, an IRQ number…), the rows that moved, most first.
pub fn irq_deltas(before: &[String], after: &[String], cpus: &[u32]) -> Vec<(String, u64)> {
    // The header names the columns: "CPU0 CPU2 …" (only online CPUs).
    let columns = |rows: &[String]| -> Vec<u32> {
        rows.iter()
            .find(|r| r.trim_start().starts_with("CPU"))
            .map(|h| {
                h.split_whitespace()
                    .filter_map(|c| c.strip_prefix("CPU")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // A row the console replayed (`atoll console` starts from the oldest byte it kept) counts
    // once: the last reading of each name stands.
    let counts = |rows: &[String]| -> Vec<(String, Vec<(u32, u64)>)> {
        let cols = columns(rows);
        let mut out: Vec<(String, Vec<(u32, u64)>)> = Vec::new();
        for r in rows {
            let mut w = r.split_whitespace();
            let Some(name) = w.next().and_then(|n| n.strip_suffix(':')) else {
                continue;
            };
            let v: Vec<(u32, u64)> = cols
                .iter()
                .zip(w.map_while(|t| t.parse::<u64>().ok()))
                .map(|(c, n)| (*c, n))
                .collect();
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 = v,
                None => out.push((name.to_string(), v)),
            }
        }
        out
    };
    let (b, a) = (counts(before), counts(after));
    let mut out: Vec<(String, u64)> = Vec::new();
    for (name, after_v) in &a {
        let before_v = b.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
        let d: u64 = after_v
            .iter()
            .filter(|(c, _)| cpus.is_empty() || cpus.contains(c))
            .map(|(c, n)| {
                let was = before_v
                    .and_then(|v| v.iter().find(|(bc, _)| bc == c))
                    .map_or(0, |(_, n)| *n);
                n.saturating_sub(was)
            })
            .sum();
        if d > 0 {
            out.push((name.clone(), d));
        }
    }
    out.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    out
}

impl Measurement {
    /// HPCG's timed cycles (the TSC across its timed sets).
    pub fn cycles(&self) -> Result<u64> {
        self.hpcg
            .get("cycles")
            .and_then(Value::as_u64)
            .with_context(|| format!("{}: HPCG reported no cycles", self.load))
    }

    pub fn rating(&self) -> Option<f64> {
        self.hpcg.get("rating_gflops").and_then(Value::as_f64)
    }

    pub fn valid(&self) -> bool {
        self.hpcg.get("valid").and_then(Value::as_bool) == Some(true)
    }

    /// FWQ's figures per CPU.
    pub fn fwq_cpus(&self) -> Vec<FwqCpu> {
        let n = |c: &Value, k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
        self.fwq
            .get("cpus")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| FwqCpu {
                        cpu: n(c, "cpu"),
                        min: n(c, "min"),
                        max_detour: n(c, "max_detour"),
                        p99_detour: n(c, "p99_detour"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// CPUID's median round trip, TSC cycles.
    pub fn cpuid_cycles(&self) -> Option<u64> {
        self.exit_costs.get("cpuid")?.get("median")?.as_u64()
    }

    /// A timer wakeup's median overshoot, TSC cycles.
    pub fn timer_overshoot_cycles(&self) -> Option<u64> {
        self.exit_costs
            .get("timer")?
            .get("overshoot_cycles")?
            .get("median")?
            .as_u64()
    }

    /// oslat's largest latency over its threads, µs.
    pub fn oslat_max_us(&self) -> Option<u64> {
        self.oslat
            .get("thread")
            .and_then(Value::as_object)
            .map(|t| {
                t.values()
                    .filter_map(|v| v.get("max").and_then(Value::as_u64))
                    .max()
                    .unwrap_or(0)
            })
    }

    /// Exits per second per core of the enclave while HPCG computed (atoll only): its exits
    /// between the two snapshots over their interval, divided by its cores.
    pub fn exits_per_s_per_core(&self, cores: u32) -> Result<Option<f64>> {
        if let Some(k) = &self.kvm {
            let n = |f: &str| {
                k.get(f)
                    .and_then(Value::as_f64)
                    .with_context(|| format!("KVM's exits: no {f} in {k}"))
            };
            let seconds = n("uptime_after")? - n("uptime_before")?;
            if seconds <= 0.0 {
                return Ok(None);
            }
            return Ok(Some(n("exits")? / seconds / n("vcpus")?.max(1.0)));
        }
        let Some((b, e)) = &self.stats else {
            return Ok(None);
        };
        let w = crate::bench_net::Window::between(
            &crate::bench_net::Snapshot::parse(b, "stats before HPCG")?,
            &crate::bench_net::Snapshot::parse(e, "stats after HPCG")?,
        )?;
        if w.us == 0 {
            return Ok(None);
        }
        Ok(Some(
            w.total() as f64 / (w.us as f64 / 1e6) / f64::from(cores.max(1)),
        ))
    }
}

impl Measurement {
    /// Exits per second of each of the enclave's vCPUs while HPCG computed (atoll only): its
    /// per-vCPU counts between the two snapshots over their interval. None without stats or
    /// per-vCPU counts (an atoll before protocol version 2).
    pub fn vcpu_exits_per_s(&self) -> Option<Vec<f64>> {
        let (b, e) = self.stats.as_ref()?;
        let first = |v: &Value| v.get("enclaves")?.get(0).cloned();
        let (b, e) = (first(b)?, first(e)?);
        let counts = |v: &Value| -> Option<Vec<u64>> {
            v.get("vcpu_exits")?
                .as_array()?
                .iter()
                .map(Value::as_u64)
                .collect()
        };
        let (cb, ce) = (counts(&b)?, counts(&e)?);
        let us = e
            .get("uptime_us")?
            .as_u64()?
            .checked_sub(b.get("uptime_us")?.as_u64()?)?;
        (cb.len() == ce.len() && !ce.is_empty() && us > 0).then(|| {
            ce.iter()
                .zip(&cb)
                .map(|(a, b)| a.saturating_sub(*b) as f64 / (us as f64 / 1e6))
                .collect()
        })
    }

    /// The exits of the vCPUs `cpus` (HPCG's) between the two snapshots, by class (timer,
    /// ipi, hlt, other: atoll's per-vCPU classes), summed over them (atoll only).
    pub fn vcpu_exit_classes(&self, cpus: &[u32]) -> Option<BTreeMap<String, u64>> {
        let (b, e) = self.stats.as_ref()?;
        let classes = |v: &Value, cpu: u32| -> Option<serde_json::Map<String, Value>> {
            v.get("enclaves")?
                .get(0)?
                .get("vcpu_exit_classes")?
                .get(cpu as usize)?
                .as_object()
                .cloned()
        };
        let mut out = BTreeMap::new();
        for c in cpus {
            let (cb, ce) = (classes(b, *c)?, classes(e, *c)?);
            for (k, v) in &ce {
                let was = cb.get(k).and_then(Value::as_u64).unwrap_or(0);
                *out.entry(k.clone()).or_insert(0) += v.as_u64()?.saturating_sub(was);
            }
        }
        Some(out)
    }

    /// The largest exit rate of the vCPUs `cpus` (HPCG's) while HPCG computed (atoll only).
    pub fn hpcg_vcpu_exits_per_s(&self, cpus: &[u32]) -> Option<f64> {
        let per = self.vcpu_exits_per_s()?;
        cpus.iter()
            .map(|c| per.get(*c as usize).copied())
            .collect::<Option<Vec<f64>>>()?
            .into_iter()
            .reduce(f64::max)
    }
}

/// The measurements of one boot, from its console: `ATOLL-ISO-*` lines (on an atoll run the
/// host's lines come as `[host] …`), in run order. An error if a run's report is missing or
/// not JSON.
pub fn parse_console(serial: &str) -> Result<Vec<Measurement>> {
    let mut parts: BTreeMap<u32, BTreeMap<String, Value>> = BTreeMap::new();
    let mut irqs: BTreeMap<u32, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for raw in serial.lines() {
        let line = raw.trim_end_matches('\r');
        let line = line.strip_prefix("[host] ").unwrap_or(line);
        let Some(rest) = line.strip_prefix("ATOLL-ISO-") else {
            continue;
        };
        let Some((kind, rest)) = rest.split_once(' ') else {
            continue;
        };
        let Some((n, rest)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else {
            continue;
        };
        let (key, json) = match kind {
            "STATS" => {
                let Some((which, json)) = rest.split_once(' ') else {
                    bail!("ATOLL-ISO-STATS {n}: no begin/end: {line}");
                };
                (format!("STATS-{which}"), json)
            }
            "RUN" | "HPCG" | "FWQ" | "OSLAT" | "KVM" | "EXITCOST" => (kind.to_string(), rest),
            "IRQ" => {
                let Some((which, row)) = rest.split_once(' ') else {
                    continue;
                };
                let e = irqs.entry(n).or_default();
                match which {
                    "b" => e.0.push(row.to_string()),
                    "a" => e.1.push(row.to_string()),
                    _ => {}
                }
                continue;
            }
            _ => continue,
        };
        let v: Value = serde_json::from_str(json)
            .with_context(|| format!("ATOLL-ISO-{kind} {n} is not JSON: {json}"))?;
        parts.entry(n).or_default().insert(key, v);
    }
    let mut out = Vec::new();
    for (n, mut p) in parts {
        let run = p
            .remove("RUN")
            .with_context(|| format!("run {n}: no ATOLL-ISO-RUN line"))?;
        let text = |k: &str| run.get(k).and_then(Value::as_str).map(str::to_string);
        let mut take = |k: &str| p.remove(k).unwrap_or(Value::Null);
        let stats = match (take("STATS-begin"), take("STATS-end")) {
            (Value::Null, _) | (_, Value::Null) => None,
            (b, e) => Some((b, e)),
        };
        out.push(Measurement {
            load: text("load").with_context(|| format!("run {n}: no load"))?,
            problem: text("problem").with_context(|| format!("run {n}: no problem field"))?,
            hpcg: take("HPCG"),
            fwq: take("FWQ"),
            oslat: take("OSLAT"),
            stats,
            kvm: match take("KVM") {
                Value::Null => None,
                v => Some(v),
            },
            irqs: irqs.remove(&n).unwrap_or_default(),
            exit_costs: take("EXITCOST"),
        });
    }
    Ok(out)
}

/// One configuration's measurements.
#[derive(Clone, Debug)]
pub struct ConfigResult {
    pub config: Config,
    pub runs: Vec<Measurement>,
    pub wall_s: f64,
}

impl ConfigResult {
    /// The workload kernel's CPUs whose interrupts count: natively the workload's cores of the
    /// shared kernel, in a guest all of its CPUs.
    pub fn irq_cpus(&self) -> &'static [u32] {
        match self.config {
            Config::Native => &[2, 3],
            _ => &[],
        }
    }

    /// Interrupts on the workload's CPUs while HPCG ran.
    pub fn irqs_during_hpcg(&self, m: &Measurement) -> Vec<(String, u64)> {
        irq_deltas(&m.irqs.0, &m.irqs.1, self.irq_cpus())
    }

    /// The CPUs HPCG ran on, as its kernel numbers them (natively the machine's cores, in a
    /// guest the guest's); None when it ran on all the workload's CPUs.
    pub fn hpcg_cpus(&self, opts: &Options) -> Option<Vec<u32>> {
        let cpus = opts.hpcg_guest_cpus().ok()??;
        Some(match self.config {
            Config::Native => guest_to_cores(&cpus),
            _ => cpus,
        })
    }

    /// Interrupts on HPCG's CPUs while it ran (None when it ran on all the workload's).
    pub fn irqs_on_hpcg_cpus(&self, m: &Measurement, opts: &Options) -> Option<Vec<(String, u64)>> {
        let cpus = self.hpcg_cpus(opts)?;
        Some(irq_deltas(&m.irqs.0, &m.irqs.1, &cpus))
    }

    /// Exits per second of HPCG's vCPU(s) while it computed (atoll with HPCG on chosen CPUs).
    pub fn hpcg_exits_per_s(&self, m: &Measurement, opts: &Options) -> Option<f64> {
        if self.config != Config::Atoll {
            return None;
        }
        m.hpcg_vcpu_exits_per_s(&self.hpcg_cpus(opts)?)
    }

    /// The solo run.
    pub fn solo(&self) -> Option<&Measurement> {
        self.runs.iter().find(|m| m.load == "none")
    }

    /// HPCG's loaded/solo ratio of timed cycles (above 1: slower under load).
    pub fn ratio(&self, m: &Measurement) -> Option<f64> {
        let solo = self.solo()?.cycles().ok()?;
        let loaded = m.cycles().ok()?;
        (solo > 0).then(|| loaded as f64 / solo as f64)
    }
}

/// Checks what every configuration must show (every run valid and complete), the bench's
/// equivalent of a scenario's expectations.
pub fn check(results: &[ConfigResult], opts: &Options) -> Result<()> {
    for r in results {
        let want: Vec<&str> = std::iter::once("none")
            .chain(opts.loads.iter().map(String::as_str))
            .collect();
        let got: Vec<&str> = r.runs.iter().map(|m| m.load.as_str()).collect();
        if got != want {
            bail!(
                "{}: measured loads {got:?}, expected {want:?}",
                r.config.name()
            );
        }
        check_runs(r, opts)?;
    }
    Ok(())
}

/// Checks each run of one configuration: complete, valid, with its counts.
pub fn check_runs(r: &ConfigResult, opts: &Options) -> Result<()> {
    if r.solo().is_none() {
        bail!("{}: no solo run", r.config.name());
    }
    for m in &r.runs {
        if !m.problem.is_empty() {
            bail!("{} under {}: {}", r.config.name(), m.load, m.problem);
        }
        if !m.valid() {
            bail!(
                "{} under {}: HPCG did not validate: {}",
                r.config.name(),
                m.load,
                m.hpcg
            );
        }
        m.cycles()?;
        if m.fwq_cpus().is_empty() {
            bail!("{} under {}: no FWQ figures", r.config.name(), m.load);
        }
        if r.config == Config::Atoll && m.stats.is_none() {
            bail!(
                "{} under {}: no stats of the enclave around HPCG",
                r.config.name(),
                m.load
            );
        }
        if r.config != Config::Native && m.exits_per_s_per_core(2)?.is_none() {
            bail!(
                "{} under {}: no exit rate while HPCG computed (an empty window)",
                r.config.name(),
                m.load
            );
        }
        if r.config == Config::Atoll
            && r.hpcg_cpus(opts).is_some()
            && r.hpcg_exits_per_s(m, opts).is_none()
        {
            bail!(
                "{} under {}: no exit count of HPCG's vCPU around it (atoll's per-vCPU \
                 stats)",
                r.config.name(),
                m.load
            );
        }
        if matches!(r.config, Config::KvmDefault | Config::KvmTuned) && m.kvm.is_none() {
            bail!(
                "{} under {}: no count of KVM's exits around HPCG",
                r.config.name(),
                m.load
            );
        }
    }
    Ok(())
}

/// The table the bench prints.
pub fn table(results: &[ConfigResult], opts: &Options) -> String {
    let mut out = format!(
        "{:<11} {:<7} {:>9} {:>14} {:>11} {:>24} {:>24} {:>9} {:>12} {:>14}  {}\n",
        "config",
        "load",
        "GFLOP/s",
        "HPCG cycles",
        "loaded/solo",
        "FWQ max detour (cpu:%)",
        "FWQ p99 detour (cpu:%)",
        "oslat µs",
        "exits/s/core",
        "HPCG vCPU ex/s",
        "interrupts during HPCG (workload CPUs | HPCG's)"
    );
    for r in results {
        for m in &r.runs {
            let pct = |f: fn(&FwqCpu) -> u64| {
                m.fwq_cpus()
                    .iter()
                    .map(|c| {
                        format!(
                            "{}:{:.2}",
                            c.cpu,
                            if c.min == 0 {
                                0.0
                            } else {
                                100.0 * f(c) as f64 / c.min as f64
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let few = |v: &[(String, u64)]| {
                v.iter()
                    .take(4)
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut irqs = few(&r.irqs_during_hpcg(m));
            if let Some(h) = r.irqs_on_hpcg_cpus(m, opts) {
                irqs = format!(
                    "{} | {}",
                    if irqs.is_empty() { "-" } else { &irqs },
                    if h.is_empty() { "none".into() } else { few(&h) }
                );
            }
            out.push_str(&format!(
                "{:<11} {:<7} {:>9} {:>14} {:>11} {:>24} {:>24} {:>9} {:>12} {:>14}  {}\n",
                r.config.name(),
                m.load,
                m.rating().map_or("-".into(), |g| format!("{g:.4}")),
                m.cycles().map_or("-".into(), |c| c.to_string()),
                r.ratio(m).map_or("-".into(), |x| format!("{x:.4}")),
                pct(|c| c.max_detour),
                pct(|c| c.p99_detour),
                m.oslat_max_us().map_or("-".into(), |x| x.to_string()),
                match m.exits_per_s_per_core(2) {
                    Ok(Some(x)) => format!("{x:.1}"),
                    _ => "-".into(),
                },
                r.hpcg_exits_per_s(m, opts)
                    .map_or("-".into(), |x| format!("{x:.2}")),
                if irqs.is_empty() {
                    "-".to_string()
                } else {
                    irqs
                }
            ));
        }
    }
    out.push_str(&format!(
        "\n{:<11} {:>22} {:>30}\n",
        "exit costs", "CPUID round trip, cyc", "timer wakeup overshoot, cyc"
    ));
    for r in results {
        if let Some(m) = r.solo() {
            let c = |x: Option<u64>| x.map_or("-".into(), |v| v.to_string());
            out.push_str(&format!(
                "{:<11} {:>22} {:>30}\n",
                r.config.name(),
                c(m.cpuid_cycles()),
                c(m.timer_overshoot_cycles())
            ));
        }
    }
    if let Some(x) = cpuid_atoll_over_kvm(results) {
        out.push_str(&format!(
            "CPUID round trip, atoll / KVM (default): {x:.3} (target ≤ 0.333)\n"
        ));
    }
    out.push_str(&format!(
        "HPCG {0}×{0}×{0}, --rt {1}; FWQ: {2} samples of a {3} µs quantum per CPU, detours as % \
         of the fastest; loaded/solo: HPCG's timed cycles{4}\n",
        opts.size,
        opts.rt,
        opts.fwq_samples,
        100,
        if opts.emulator == Emulator::Bochs {
            " (Bochs: a busy CPU's own instructions)"
        } else {
            " (QEMU: the host's clock — the pipeline, not isolation)"
        }
    ));
    out
}

/// atoll's CPUID round trip over the KVM guest's (default setup), solo runs, when both ran.
pub fn cpuid_atoll_over_kvm(results: &[ConfigResult]) -> Option<f64> {
    let solo_cpuid = |c: Config| {
        results
            .iter()
            .find(|r| r.config == c)?
            .solo()?
            .cpuid_cycles()
    };
    let (a, k) = (solo_cpuid(Config::Atoll)?, solo_cpuid(Config::KvmDefault)?);
    (k > 0).then(|| a as f64 / k as f64)
}

/// The JSON the bench writes: every report in full.
pub fn to_json(results: &[ConfigResult], opts: &Options) -> Value {
    let configs: serde_json::Map<String, Value> = results
        .iter()
        .map(|r| {
            let runs: Vec<Value> = r
                .runs
                .iter()
                .map(|m| {
                    json!({
                        "load": m.load,
                        "problem": m.problem,
                        "loaded_over_solo_cycles": r.ratio(m),
                        "exits_per_s_per_core": m.exits_per_s_per_core(2).ok().flatten(),
                        "vcpu_exits_per_s": m.vcpu_exits_per_s(),
                        "hpcg_vcpu_exits_per_s": r.hpcg_exits_per_s(m, opts),
                        "hpcg_vcpu_exits_by_class": r
                            .hpcg_cpus(opts)
                            .and_then(|c| m.vcpu_exit_classes(&c)),
                        "interrupts_on_hpcg_cpus_during_hpcg": r
                            .irqs_on_hpcg_cpus(m, opts)
                            .map(|v| {
                                v.into_iter()
                                    .map(|(k, n)| (k, json!(n)))
                                    .collect::<serde_json::Map<String, Value>>()
                            }),
                        "hpcg": m.hpcg,
                        "fwq": m.fwq,
                        "oslat": m.oslat,
                        "stats_before_hpcg": m.stats.as_ref().map(|s| &s.0),
                        "stats_after_hpcg": m.stats.as_ref().map(|s| &s.1),
                        "kvm_exits_during_hpcg": m.kvm,
                        "exit_costs": m.exit_costs,
                        "interrupt_rows": {"before": m.irqs.0, "after": m.irqs.1},
                        "interrupts_during_hpcg": r
                            .irqs_during_hpcg(m)
                            .into_iter()
                            .map(|(k, n)| (k, json!(n)))
                            .collect::<serde_json::Map<String, Value>>(),
                    })
                })
                .collect();
            (
                r.config.name().to_string(),
                json!({
                    "scenario": r.config.scenario(),
                    "hpcg_cpus": r.hpcg_cpus(opts),
                    "host_cmdline_extra": if r.config == Config::KvmTuned { KVM_TUNING } else { "" },
                    "wall_s": r.wall_s,
                    "runs": runs
                }),
            )
        })
        .collect();
    json!({
        "bench": "isolation",
        "emulator": opts.emulator.name(),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "size": opts.size,
        "rt": opts.rt,
        "fwq_samples": opts.fwq_samples,
        "fwq_quantum_us": 100,
        "oslat_s": opts.oslat_s,
        "command": format!(
            "cargo xtask bench isolation --emulator {} --load {} --size {} --rt {} --fwq-samples {} --oslat {} --configs {} --guest-cmdline '{}'",
            opts.emulator.name(),
            opts.loads.join(","),
            opts.size,
            opts.rt,
            opts.fwq_samples,
            opts.oslat_s,
            opts.configs.iter().map(|c| c.name()).collect::<Vec<_>>().join(","),
            opts.guest_cmdline
        ),
        "workload_cores": WORKLOAD_CORES,
        "guest_cmdline": opts.guest_cmdline,
        "load_cores": [0, 1],
        "configs": configs,
        "cpuid_atoll_over_kvm": cpuid_atoll_over_kvm(results),
    })
}

/// What a configuration's boot adds to its scenario: words for the kernel that boots (a
/// native scenario's Linux: `extra`) or for the host partition (atoll: `host`).
#[derive(Clone, Debug, PartialEq)]
pub struct BootWords {
    pub extra: String,
    pub host: Option<String>,
}

/// The boot words of `config` under `opts`.
pub fn boot_words(config: Config, opts: &Options) -> Result<BootWords> {
    let mut words = opts.words();
    if config == Config::KvmTuned {
        words = format!("{words} {KVM_TUNING}");
    }
    // HPCG on the guest's tickless CPUs; natively on the cores they stand for, which get the
    // guest's tickless words too (the same kernel, told the same of the same cores).
    if let Some(cpus) = opts.hpcg_guest_cpus()? {
        if config == Config::Native {
            let cores = cpu_list_text(&guest_to_cores(&cpus));
            words = format!("{words} atoll.hpcg_cpus={cores} nohz_full={cores}");
            if let Some(l) = opts
                .guest_cmdline
                .split_whitespace()
                .find_map(|w| w.strip_prefix("rcu_nocbs="))
            {
                let rcu =
                    parse_cpu_list(l).with_context(|| format!("--guest-cmdline rcu_nocbs={l}"))?;
                words = format!("{words} rcu_nocbs={}", cpu_list_text(&guest_to_cores(&rcu)));
            }
        } else {
            words = format!("{words} atoll.hpcg_cpus={}", cpu_list_text(&cpus));
        }
    }
    Ok(match config {
        // The kernel's command line itself; on QEMU the timing warnings of its software CPUs
        // are tolerated as in every Linux scenario there, the KVM guest's too (atoll.lc_args:
        // words for the workload's guest, '+' for a space).
        Config::Native | Config::KvmDefault | Config::KvmTuned => BootWords {
            extra: if opts.emulator == Emulator::Qemu {
                let t = crate::guest_image::TCG_TOLERATED.join(",");
                format!("{words} atoll.tolerate={t} atoll.lc_args=atoll.tolerate={t}")
            } else {
                // Bochs' CPU model tells a natively booted kernel its TSC runs at 3.5 GHz; it
                // runs at Bochs' instructions per second. Told otherwise, the kernel's time
                // and timers are 35× off and its one-shot APIC timer storms (measured: 69 959
                // interrupts on the workload's cores in one HPCG run, 4 490 with this). atoll
                // calibrates the TSC itself, for its host and enclaves alike.
                // And its idle CPUs halt rather than MWAIT: Linux wakes a CPU in MWAIT by writing
                // the flag it monitors, a write Bochs' SMP model can miss; with a tick the CPU
                // wakes anyway, a tickless one (nohz_full) sleeps on — a stop_machine hung the
                // tuned KVM host's boot that way (CPU 3 "idling at mwait_idle", soft lockups).
                // atoll hides MONITOR/MWAIT from its partitions, which halt too.
                format!(
                    "{words} tsc_early_khz={} {BOCHS_IDLE}",
                    crate::run::BOCHS_IPS / 1000
                )
            },
            host: None,
        },
        // atoll's host sees MWAIT (its enclaves do not): on Bochs it halts too, for the
        // reason above (an offline of its CPU 2 for the enclave stalled ~50 s in stop_machine,
        // the CPU asleep in intel_idle's MWAIT).
        Config::Atoll => BootWords {
            extra: String::new(),
            host: Some(if opts.emulator == Emulator::Bochs {
                format!("{words} {BOCHS_IDLE}")
            } else {
                words
            }),
        },
    })
}

/// Runs one configuration's boot.
fn run_config(config: Config, opts: &Options) -> Result<ConfigResult> {
    let mut ro = RunOptions::new(opts.emulator, config.scenario());
    let w = boot_words(config, opts)?;
    ro.extra_cmdline = w.extra;
    if let Some(h) = w.host {
        ro.enclave_cmdline = vec![("host".into(), h)];
    }
    eprintln!(
        "bench isolation: {} ({}) on {}",
        config.name(),
        config.scenario(),
        opts.emulator.name()
    );
    let o = run(&ro)?;
    if o.timed_out {
        bail!("{}: {}", config.name(), o.failure());
    }
    let runs = parse_console(&o.serial)
        .with_context(|| format!("{}: its console ({})", config.name(), o.work_dir.display()))?;
    // atoll's verdict on the machine (its summary's expectations) matters only when there is
    // nothing to show: a failed run's own problem is in its measurement.
    if config == Config::Atoll && !o.passed() && runs.is_empty() {
        bail!("{}: {}", config.name(), o.failure());
    }
    Ok(ConfigResult {
        config,
        runs,
        wall_s: o.wall.as_secs_f64(),
    })
}

/// Boots every configuration of `opts`, `opts.parallel` at a time. Before parallel boots, what
/// the runs share is built once (atoll, the guest image, the bench tools): each run then builds
/// only its own ISO, in a directory of its own.
pub fn measure(opts: &Options) -> Result<Vec<ConfigResult>> {
    measure_each(opts)?.into_iter().collect()
}

/// Every configuration's outcome: one failing does not stop the others (on Bochs each is an
/// hour).
pub fn measure_each(opts: &Options) -> Result<Vec<Result<ConfigResult>>> {
    if opts.parallel <= 1 || opts.configs.len() <= 1 {
        return Ok(opts.configs.iter().map(|&c| run_config(c, opts)).collect());
    }
    crate::image::build()?;
    crate::guest_image::build(&crate::guest_image::KernelChoice::parse(None)?)?;
    crate::bench_tools::build()?;
    crate::bench_tools::build_guest()?;
    let mut results: Vec<Option<Result<ConfigResult>>> =
        opts.configs.iter().map(|_| None).collect();
    for chunk in (0..opts.configs.len())
        .collect::<Vec<_>>()
        .chunks(opts.parallel)
    {
        let done: Vec<(usize, Result<ConfigResult>)> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&i| (i, s.spawn(move || run_config(opts.configs[i], opts))))
                .collect();
            handles
                .into_iter()
                .map(|(i, h)| {
                    (
                        i,
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("the run's thread panicked"))),
                    )
                })
                .collect()
        });
        for (i, r) in done {
            results[i] = Some(r);
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("a configuration was not run"))))
        .collect())
}

/// Runs the bench: every configuration, then the table, the JSON and the plot of those that
/// ran, then the verdict (a configuration that failed, or [`check`]).
pub fn bench(opts: &Options) -> Result<()> {
    opts.hpcg_guest_cpus()?;
    check_tag(opts.tag.as_deref())?;
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for (c, r) in opts.configs.iter().zip(measure_each(opts)?) {
        match r {
            Ok(r) => results.push(r),
            Err(e) => failed.push(format!("{}: {e:#}", c.name())),
        }
    }
    report(&results, opts, None)?;
    if !failed.is_empty() {
        bail!(
            "{} configuration(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    check(&results, opts)
}

/// A tag is a plain word (it goes into file names).
fn check_tag(tag: Option<&str>) -> Result<()> {
    if let Some(t) = tag {
        if t.is_empty()
            || t.len() > 40
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("--tag {t:?}: letters, digits, '-' and '_' only, at most 40");
        }
    }
    Ok(())
}

/// Prints the table and writes the JSON and the plot (`target/bench/isolation-EMU[-TAG]`).
fn report(results: &[ConfigResult], opts: &Options, merged_from: Option<&[String]>) -> Result<()> {
    print!("{}", table(results, opts));
    let dir = crate::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let stem = match &opts.tag {
        Some(t) => format!("isolation-{}-{t}", opts.emulator.name()),
        None => format!("isolation-{}", opts.emulator.name()),
    };
    let path = dir.join(format!("{stem}.json"));
    let mut j = to_json(results, opts);
    if let Some(files) = merged_from {
        for f in files {
            if std::fs::canonicalize(f).ok() == std::fs::canonicalize(&path).ok() {
                bail!("--merge: {f} is where the merged report goes: give another --tag");
            }
        }
        j["merged_from"] = json!(files);
        j["command"] = json!(format!(
            "cargo xtask bench isolation --merge {} --tag {}",
            files.join(","),
            opts.tag.as_deref().unwrap_or_default()
        ));
    }
    std::fs::write(&path, serde_json::to_string_pretty(&j)?)?;
    println!("wrote {}", path.display());
    let png = dir.join(format!("{stem}.png"));
    if !results.is_empty() {
        crate::bench_plot::isolation(results, opts, &png)?;
        println!("wrote {}", png.display());
    }
    Ok(())
}

/// One configuration's results back from the bench's JSON (`configs.NAME`).
fn config_from_json(name: &str, c: &Value) -> Result<ConfigResult> {
    let config =
        Config::from_name(name).with_context(|| format!("unknown configuration {name}"))?;
    let runs = c["runs"]
        .as_array()
        .with_context(|| format!("{name}: no runs"))?
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let text = |k: &str| {
                r[k].as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{name} run {i}: no {k}"))
            };
            let rows = |k: &str| -> Result<Vec<String>> {
                r["interrupt_rows"][k]
                    .as_array()
                    .with_context(|| format!("{name} run {i}: no interrupt_rows.{k} (a JSON from before they were kept)"))?
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).context("an interrupt row that is not text"))
                    .collect()
            };
            Ok(Measurement {
                load: text("load")?,
                problem: text("problem")?,
                hpcg: r["hpcg"].clone(),
                fwq: r["fwq"].clone(),
                oslat: r["oslat"].clone(),
                stats: match (&r["stats_before_hpcg"], &r["stats_after_hpcg"]) {
                    (Value::Null, _) | (_, Value::Null) => None,
                    (b, e) => Some((b.clone(), e.clone())),
                },
                kvm: match &r["kvm_exits_during_hpcg"] {
                    Value::Null => None,
                    v => Some(v.clone()),
                },
                irqs: (rows("before")?, rows("after")?),
                exit_costs: r["exit_costs"].clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ConfigResult {
        config,
        runs,
        wall_s: c["wall_s"].as_f64().unwrap_or(0.0),
    })
}

/// The options and results of the bench's JSON documents `docs` (named `files`): the same
/// emulator, problem, samples and guest words in each; a configuration in several of them
/// has its runs joined (no load twice but the solo one).
pub fn merge_json(docs: &[(String, Value)]) -> Result<(Options, Vec<ConfigResult>)> {
    let Some((first_name, first)) = docs.first() else {
        bail!("--merge: name at least one JSON file");
    };
    let emulator = match first["emulator"].as_str() {
        Some("bochs") => Emulator::Bochs,
        Some("qemu") => Emulator::Qemu,
        e => bail!("{first_name}: emulator {e:?}"),
    };
    let num = |d: &Value, f: &str, k: &str| -> Result<u32> {
        d[k].as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .with_context(|| format!("{f}: no {k} (a JSON from before --merge existed?)"))
    };
    let mut opts = Options {
        emulator,
        loads: Vec::new(),
        size: num(first, first_name, "size")?,
        rt: num(first, first_name, "rt")?,
        fwq_samples: num(first, first_name, "fwq_samples")?,
        oslat_s: num(first, first_name, "oslat_s")?,
        configs: Vec::new(),
        guest_cmdline: first["guest_cmdline"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        parallel: 1,
        tag: None,
    };
    let mut results = Vec::new();
    for (f, d) in docs {
        for k in [
            "emulator",
            "size",
            "rt",
            "fwq_samples",
            "oslat_s",
            "guest_cmdline",
        ] {
            if d[k] != first[k] {
                bail!(
                    "{f}: {k} is {}, {first_name}'s {}: not one experiment",
                    d[k],
                    first[k]
                );
            }
        }
        let configs = d["configs"]
            .as_object()
            .with_context(|| format!("{f}: no configs"))?;
        for (name, c) in configs {
            let r = config_from_json(name, c).with_context(|| f.clone())?;
            for m in &r.runs {
                if m.load != "none" && !opts.loads.contains(&m.load) {
                    opts.loads.push(m.load.clone());
                }
            }
            // A configuration measured in several boots (other loads each): its runs joined,
            // the first boot's solo run the reference of every ratio, the later boots' solo
            // runs kept beside it as "none-2", … (on Bochs they should agree: shown).
            match results
                .iter_mut()
                .find(|x: &&mut ConfigResult| x.config == r.config)
            {
                Some(have) => {
                    let boot = 1 + have
                        .runs
                        .iter()
                        .filter(|h| h.load.starts_with("none"))
                        .count();
                    for mut m in r.runs {
                        if m.load == "none" {
                            // Shown beside the reference, named apart (it is not the ratios').
                            m.load = format!("none-{boot}");
                        } else if have.runs.iter().any(|h| h.load == m.load) {
                            bail!("{f}: {name} under {} is in an earlier file too", m.load);
                        }
                        have.runs.push(m);
                    }
                    have.wall_s += r.wall_s;
                }
                None => {
                    opts.configs.push(r.config);
                    results.push(r);
                }
            }
        }
    }
    // In the bench's order (native, atoll, kvm-default, kvm-tuned), whatever the files'.
    let rank = |c: &Config| {
        Config::ALL
            .iter()
            .position(|x| x == c)
            .unwrap_or(usize::MAX)
    };
    results.sort_by_key(|r| rank(&r.config));
    opts.configs.sort_by_key(rank);
    Ok((opts, results))
}

/// `--merge`: one table, JSON and plot of earlier runs (their JSON files), e.g. atoll under
/// every profile and the baselines under `all`, measured apart; each run is checked as the
/// bench checks it, but the configurations may have measured different loads.
pub fn merge(files: &[String], tag: Option<&str>) -> Result<()> {
    check_tag(tag)?;
    let docs = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
            let v: Value =
                serde_json::from_str(&text).with_context(|| format!("{f} is not JSON"))?;
            Ok((f.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut opts, results) = merge_json(&docs)?;
    opts.tag = tag.map(str::to_string);
    for r in &results {
        check_runs(r, &opts)?;
    }
    report(&results, &opts, Some(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(us: u64, hlt: u64, msr: u64) -> String {
        // Per vCPU: the first takes the exits, the second (HPCG's) a quarter of the msr ones.
        json!({"enclaves": [{"name": "work1", "uptime_us": us, "exits": {"hlt": hlt, "msr": msr},
            "vcpu_exits": [hlt + msr, msr / 4],
            "vcpu_exit_classes": [{"timer": msr, "ipi": 0, "hlt": hlt, "other": 0},
                                  {"timer": 0, "ipi": msr / 4, "hlt": 0, "other": 0}],
            "interrupts_injected": 1, "device_interrupts": 0}]})
        .to_string()
    }

    fn console(prefix: &str, cycles: [u64; 2]) -> String {
        let mut s = String::from("noise\n");
        for (n, (load, c)) in ["none", "cpu"].iter().zip(cycles).enumerate() {
            s.push_str(&format!(
                "{prefix}ATOLL-ISO-HPCG {n} {{\"valid\":true,\"cycles\":{c},\"rating_gflops\":0.5}}\n\
                 {prefix}ATOLL-ISO-FWQ {n} {{\"cpus\":[{{\"cpu\":0,\"min\":1000,\"max_detour\":20,\"p99_detour\":5}},{{\"cpu\":1,\"min\":2000,\"max_detour\":10,\"p99_detour\":0}}]}}\n\
                 {prefix}ATOLL-ISO-OSLAT {n} {{\"thread\":{{\"0\":{{\"max\":12}},\"1\":{{\"max\":30}}}}}}\n\
                 {prefix}ATOLL-ISO-EXITCOST {n} {{\"cpuid\":{{\"median\":{}}},\"timer\":{{\"overshoot_cycles\":{{\"median\":70}}}}}}\n",
                if prefix.is_empty() { 900 } else { 300 }
            ));
            if !prefix.is_empty() {
                s.push_str(&format!(
                    "{prefix}ATOLL-ISO-STATS {n} begin {}\n{prefix}ATOLL-ISO-STATS {n} end {}\n",
                    stats(1_000_000, 10, 5),
                    stats(3_000_000, 14, 9)
                ));
            }
            s.push_str(&format!(
                "{prefix}ATOLL-ISO-RUN {n} {{\"mode\":\"x\",\"load\":\"{load}\",\"problem\":\"\"}}\n"
            ));
        }
        s
    }

    /// A configuration's two runs (solo, cpu) as `console` writes them.
    fn result(config: Config, prefix: &str, cycles: [u64; 2], wall_s: f64) -> ConfigResult {
        ConfigResult {
            config,
            runs: parse_console(&console(prefix, cycles)).unwrap(),
            wall_s,
        }
    }

    fn opts() -> Options {
        Options::new(Emulator::Bochs, "cpu", 16, 0, 2000, 2, "native,atoll").unwrap()
    }

    #[test]
    fn the_console_gives_each_run_in_order() {
        let runs = parse_console(&console("[host] ", [1000, 1001])).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].load, "none");
        assert_eq!(runs[1].load, "cpu");
        assert_eq!(runs[1].cycles().unwrap(), 1001);
        assert_eq!(runs[0].oslat_max_us(), Some(30));
        assert_eq!(
            runs[0].fwq_cpus()[0],
            FwqCpu {
                cpu: 0,
                min: 1000,
                max_detour: 20,
                p99_detour: 5
            }
        );
        // 8 exits in 2 s on 2 cores.
        assert_eq!(runs[0].exits_per_s_per_core(2).unwrap(), Some(2.0));
        // A native boot: no prefix, no stats.
        let native = parse_console(&console("", [500, 600])).unwrap();
        assert_eq!(native[0].stats, None);
        assert_eq!(native[0].exits_per_s_per_core(2).unwrap(), None);
        let r = ConfigResult {
            config: Config::Native,
            runs: native,
            wall_s: 1.0,
        };
        assert!((r.ratio(&r.runs[1]).unwrap() - 1.2).abs() < 1e-12);
        // A report that is not JSON, a run without its RUN line: errors naming them.
        let e = parse_console("ATOLL-ISO-HPCG 0 {oops\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("ATOLL-ISO-HPCG 0 is not JSON"),
            "{e:#}"
        );
        let e = parse_console("ATOLL-ISO-HPCG 0 {}\n").unwrap_err();
        assert!(format!("{e:#}").contains("no ATOLL-ISO-RUN"), "{e:#}");
    }

    #[test]
    fn check_wants_every_load_valid_and_complete() {
        let o = opts();
        let good = |config, prefix| result(config, prefix, [1000, 1000], 1.0);
        let results = vec![good(Config::Native, ""), good(Config::Atoll, "[host] ")];
        check(&results, &o).unwrap();
        let t = table(&results, &o);
        assert!(t.contains("native      cpu"), "{t}");
        assert!(t.contains("1.0000"), "{t}");
        assert!(t.contains("0:2.00 1:0.50"), "FWQ max detour in %: {t}");
        assert!(t.contains("Bochs"), "{t}");
        // The exit costs of the solo runs; atoll's CPUID over KVM's once a KVM run is there.
        assert!(t.contains("exit costs"), "{t}");
        assert_eq!(cpuid_atoll_over_kvm(&results), None);
        let mut with_kvm = results.clone();
        with_kvm.push(ConfigResult {
            config: Config::KvmDefault,
            ..good(Config::Native, "")
        });
        assert_eq!(cpuid_atoll_over_kvm(&with_kvm), Some(300.0 / 900.0));
        assert!(table(&with_kvm, &o).contains("atoll / KVM (default): 0.333"));
        let j = to_json(&results, &o);
        assert_eq!(
            j["configs"]["native"]["runs"][0]["exit_costs"]["cpuid"]["median"],
            900
        );
        assert_eq!(
            j["configs"]["atoll"]["runs"][1]["exits_per_s_per_core"],
            2.0
        );
        // Per vCPU over the 2 s window: 8 exits on the first, 1 on HPCG's (nohz_full=1).
        assert_eq!(
            j["configs"]["atoll"]["runs"][1]["vcpu_exits_per_s"],
            json!([4.0, 0.5])
        );
        assert_eq!(
            j["configs"]["atoll"]["runs"][1]["hpcg_vcpu_exits_per_s"],
            0.5
        );
        assert_eq!(j["configs"]["atoll"]["hpcg_cpus"], json!([1]));
        assert_eq!(j["configs"]["native"]["hpcg_cpus"], json!([3]));
        assert_eq!(
            j["configs"]["native"]["runs"][1]["hpcg_vcpu_exits_per_s"],
            Value::Null
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("atoll       cpu") && l.contains(" 0.50 ")),
            "{t}"
        );
        assert_eq!(j["configs"]["native"]["runs"][0]["hpcg"]["cycles"], 1000);
        assert_eq!(
            j["configs"]["native"]["runs"][1]["loaded_over_solo_cycles"],
            1.0
        );
        // An invalid run, a failed one, a missing load, an enclave without stats: each refused.
        let mut bad = results.clone();
        bad[0].runs[1].hpcg["valid"] = json!(false);
        assert!(check(&bad, &o)
            .unwrap_err()
            .to_string()
            .contains("did not validate"));
        let mut bad = results.clone();
        bad[1].runs[0].problem = "the enclave did not reach HPCG".into();
        assert!(check(&bad, &o)
            .unwrap_err()
            .to_string()
            .contains("did not reach HPCG"));
        let mut bad = results.clone();
        bad[0].runs.pop();
        assert!(check(&bad, &o)
            .unwrap_err()
            .to_string()
            .contains("measured loads"));
        let mut bad = results.clone();
        bad[1].runs[1].stats = None;
        assert!(check(&bad, &o)
            .unwrap_err()
            .to_string()
            .contains("no stats"));
        // Stats without per-vCPU counts (an older atoll): HPCG's vCPU has no rate.
        let mut bad = results.clone();
        if let Some((b, _)) = bad[1].runs[1].stats.as_mut() {
            b["enclaves"][0]
                .as_object_mut()
                .unwrap()
                .remove("vcpu_exits");
        }
        assert!(check(&bad, &o)
            .unwrap_err()
            .to_string()
            .contains("no exit count of HPCG's vCPU"));
    }

    #[test]
    fn runs_measured_apart_merge_into_one_report() {
        let o = opts();
        let good = |config, prefix| result(config, prefix, [1000, 1010], 5.0);
        let mut atoll = good(Config::Atoll, "[host] ");
        atoll.runs[1].irqs = (
            vec![" CPU0 CPU1".into(), "LOC: 1 2".into()],
            vec![" CPU0 CPU1".into(), "LOC: 4 2".into()],
        );
        let a = to_json(std::slice::from_ref(&atoll), &o);
        // The baselines measured apart, under another load.
        let mut native = good(Config::Native, "");
        native.runs[1].load = "all".into();
        let n = to_json(
            &[native.clone()],
            &Options {
                loads: vec!["all".into()],
                ..o.clone()
            },
        );
        let (m, results) =
            merge_json(&[("a.json".into(), a.clone()), ("n.json".into(), n.clone())]).unwrap();
        assert_eq!(
            m.configs,
            [Config::Native, Config::Atoll],
            "in the bench's order"
        );
        assert_eq!(m.loads, ["cpu", "all"]);
        assert_eq!(
            (m.size, m.fwq_samples, m.emulator),
            (16, 2000, Emulator::Bochs)
        );
        assert_eq!(
            results[1].runs, atoll.runs,
            "every field back, interrupt rows included"
        );
        assert_eq!(results[0].runs, native.runs);
        assert_eq!(
            results[1].irqs_during_hpcg(&results[1].runs[1]),
            [("LOC".into(), 3)]
        );
        for r in &results {
            check_runs(r, &m).unwrap();
        }
        // Not one experiment, a configuration twice, an old JSON: refused, saying why.
        let mut other = n.clone();
        other["size"] = json!(24);
        let e = merge_json(&[("a.json".into(), a.clone()), ("o.json".into(), other)]).unwrap_err();
        assert!(format!("{e:#}").contains("o.json: size is 24"), "{e:#}");
        let e =
            merge_json(&[("a.json".into(), a.clone()), ("b.json".into(), a.clone())]).unwrap_err();
        assert!(
            format!("{e:#}").contains("atoll under cpu is in an earlier file"),
            "{e:#}"
        );
        // The same configuration under other loads in another boot: its runs joined, the
        // first solo run the reference.
        let mut later = good(Config::Atoll, "[host] ");
        later.runs[0].hpcg["cycles"] = json!(1001);
        later.runs[1].load = "io".into();
        later.runs[1].hpcg["cycles"] = json!(1020);
        let l = to_json(
            &[later],
            &Options {
                loads: vec!["io".into()],
                ..o.clone()
            },
        );
        let (m, joined) =
            merge_json(&[("a.json".into(), a.clone()), ("l.json".into(), l)]).unwrap();
        assert_eq!(m.configs, [Config::Atoll]);
        let loads: Vec<&str> = joined[0].runs.iter().map(|r| r.load.as_str()).collect();
        assert_eq!(loads, ["none", "cpu", "none-2", "io"]);
        assert_eq!(
            joined[0].ratio(&joined[0].runs[3]),
            Some(1.02),
            "over the first solo"
        );
        check_runs(&joined[0], &m).unwrap();
        let mut old = a.clone();
        old["configs"]["atoll"]["runs"][0]
            .as_object_mut()
            .unwrap()
            .remove("interrupt_rows");
        let e = merge_json(&[("old.json".into(), old)]).unwrap_err();
        assert!(format!("{e:#}").contains("interrupt_rows"), "{e:#}");
        assert!(merge_json(&[]).is_err());
        assert!(check_tag(Some("all-loads_2")).is_ok());
        for bad in ["", "../x", "a b", &"x".repeat(41)] {
            assert!(check_tag(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interrupts_are_counted_on_the_workload_s_cpus_only() {
        let rows = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let before = rows(&[
            " CPU0 CPU1 CPU2 CPU3",
            " 4: 10 0 0 0 IO-APIC 4-edge ttyS0",
            "LOC: 100 200 300 400 Local timer interrupts",
            "TLB: 5 5 5 5 TLB shootdowns",
            "ERR: 0",
        ]);
        let after = rows(&[
            " CPU0 CPU1 CPU2 CPU3",
            " 4: 90 0 1 0 IO-APIC 4-edge ttyS0",
            "LOC: 900 900 350 460 Local timer interrupts",
            "TLB: 5 5 9 5 TLB shootdowns",
            "RES: 0 0 2 2 Rescheduling interrupts",
            "ERR: 0",
        ]);
        assert_eq!(
            irq_deltas(&before, &after, &[2, 3]),
            [
                ("LOC".to_string(), 110),
                ("RES".into(), 4),
                ("TLB".into(), 4),
                ("4".into(), 1)
            ]
        );
        // A guest's own CPUs: all columns.
        assert_eq!(
            irq_deltas(&before, &after, &[])[0],
            ("LOC".to_string(), 1610)
        );
        // A replayed console repeats rows: each counts once.
        let mut twice = after.clone();
        twice.extend(after.iter().cloned());
        assert_eq!(
            irq_deltas(&before, &twice, &[2, 3]),
            irq_deltas(&before, &after, &[2, 3])
        );
        // Offline CPUs leave their columns out: the header says which is which.
        let b = rows(&[" CPU0 CPU3", "LOC: 1 10"]);
        let a = rows(&[" CPU0 CPU3", "LOC: 1 17"]);
        assert_eq!(irq_deltas(&b, &a, &[3]), [("LOC".to_string(), 7)]);
        assert!(irq_deltas(&[], &a, &[3]).contains(&("LOC".to_string(), 17)));
    }

    #[test]
    fn each_configuration_boots_with_its_words() {
        let q = Options::new(Emulator::Qemu, "cpu", 16, 0, 500, 0, "native").unwrap();
        let b = Options {
            emulator: Emulator::Bochs,
            ..q.clone()
        };
        let atoll = boot_words(Config::Atoll, &b).unwrap();
        assert_eq!(
            (atoll.extra.as_str(), atoll.host.as_deref()),
            (
                "",
                Some(format!("{} atoll.hpcg_cpus=1 idle=halt", b.words()).as_str())
            ),
            "HPCG on the guest's nohz_full CPU; the host halts when idle on Bochs"
        );
        let atoll_q = boot_words(Config::Atoll, &q).unwrap().host.unwrap();
        assert!(!atoll_q.contains("idle=halt"), "{atoll_q}");
        // Natively on Bochs the kernel is told the TSC's real rate; on QEMU, TCG's warnings.
        // HPCG runs on the core the guest's nohz_full CPU stands for, tickless there too.
        let n = boot_words(Config::Native, &b).unwrap();
        assert_eq!(
            n.extra,
            format!(
                "{} atoll.hpcg_cpus=3 nohz_full=3 rcu_nocbs=3 tsc_early_khz=100000 idle=halt",
                b.words()
            )
        );
        assert_eq!(n.host, None);
        // Without nohz_full in the guest's words HPCG runs on all the workload's CPUs.
        let plain = Options {
            guest_cmdline: "quiet".into(),
            ..b.clone()
        };
        let n = boot_words(Config::Native, &plain).unwrap();
        assert!(
            !n.extra.contains("hpcg_cpus") && !n.extra.contains("nohz_full"),
            "{n:?}"
        );
        assert!(!boot_words(Config::Atoll, &plain)
            .unwrap()
            .host
            .unwrap()
            .contains("hpcg_cpus"));
        for (bad, why) in [
            ("nohz_full=2", "CPU 2"),
            ("nohz_full=0-1", "housekeeping"),
            ("nohz_full=0", "housekeeping"),
            ("nohz_full=x", "not a CPU number"),
            ("nohz_full=1 rcu_nocbs=1-0", "not a CPU range"),
        ] {
            let o = Options {
                guest_cmdline: bad.into(),
                ..b.clone()
            };
            let e = boot_words(Config::Native, &o).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{bad}: {e:#}");
        }
        let n = boot_words(Config::Native, &q).unwrap();
        assert!(n.extra.contains("atoll.lc_args=atoll.tolerate="), "{n:?}");
        assert!(!n.extra.contains("tsc_early_khz"), "{n:?}");
        // Only the tuned KVM host isolates the guest's cores.
        let tuned = boot_words(Config::KvmTuned, &b).unwrap();
        assert!(tuned.extra.contains(KVM_TUNING));
        assert!(tuned.extra.contains("atoll.hpcg_cpus=1"), "{tuned:?}");
        assert!(!boot_words(Config::KvmDefault, &b)
            .unwrap()
            .extra
            .contains("isolcpus"));
    }

    #[test]
    fn options_are_checked_and_become_the_host_s_words() {
        let o = Options::new(Emulator::Qemu, "cpu,io", 24, 1, 500, 0, "atoll").unwrap();
        assert_eq!(
            o.words(),
            "atoll.iso_loads=none,cpu,io atoll.hpcg=24,24,24 atoll.hpcg_rt=1 \
             atoll.fwq_samples=500 atoll.oslat_s=0 atoll.work_guest=nohz_full=1+rcu_nocbs=1"
        );
        let mut plain = o.clone();
        plain.guest_cmdline = String::new();
        assert!(!plain.words().contains("work_guest"));
        assert_eq!(o.configs, [Config::Atoll]);
        let err = |load, size, samples, configs| {
            Options::new(Emulator::Qemu, load, size, 0, samples, 0, configs)
                .unwrap_err()
                .to_string()
        };
        assert!(err("disk", 16, 500, "atoll").contains("not a load profile"));
        assert!(err("", 16, 500, "atoll").contains("at least one profile"));
        assert!(err("cpu", 20, 500, "atoll").contains("multiple of 8"));
        assert!(err("cpu", 72, 500, "atoll").contains("256 MiB"));
        assert!(err("cpu", 8, 500, "atoll").contains("multiple of 8"));
        assert!(err("cpu", 16, 5, "atoll").contains("--fwq-samples"));
        assert!(err("cpu", 16, 500, "kvm").contains("not a configuration"));
        assert_eq!(
            Options::new(
                Emulator::Qemu,
                "cpu",
                16,
                0,
                500,
                0,
                "kvm-tuned,kvm-default"
            )
            .unwrap()
            .configs,
            [Config::KvmTuned, Config::KvmDefault]
        );
        assert!(err("cpu", 16, 500, "").contains("at least one configuration"));
        for p in PROFILES {
            assert!(Options::new(Emulator::Qemu, p, 16, 0, 500, 0, "native").is_ok());
        }
    }
}
