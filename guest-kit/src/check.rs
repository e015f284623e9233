//! The core of `atoll-check`, the program a Linux guest runs to show that the platform it was
//! given works: pure functions over what Linux exposes (`/proc` and `/sys` text, kernel log
//! records), the compute kernel, the argument parser, and the verdict. The binary
//! (`src/bin/atoll-check.rs`) only gathers the facts and prints the report; everything that
//! decides something lives here so the host tests can check it.
//!
//! The report is one line, `ATOLL-GUEST-CHECK {json}`, so a harness reading a serial console
//! finds it with a prefix match. `ok` is true when every check passes:
//!
//! | check | passes when |
//! | --- | --- |
//! | `cpus` | at least one CPU is online |
//! | `memory` | `MemTotal` in `/proc/meminfo` is above zero |
//! | `compute` | one thread pinned to each online CPU ran the fixed work there (`sched_getcpu` agreed) and every thread got the same checksum |
//! | `kernel_log` | the kernel log could be read (`/dev/kmsg`, else `syslog(2)`), so the next check means something |
//! | `dmesg` | no kernel log line matches [`WARNING_PATTERNS`] |
//! | `clocksource` | the current clocksource is not `jiffies`/`refined-jiffies` (no usable timer) |
//! | `expect_cpus` | (with `--expect-cpus N`) exactly N CPUs are online |
//! | `expect_memory` | (with `--expect-memory-mib M`) the RAM the kernel saw is within 10 % of M |
//!
//! With `--role host` (the root partition: the host's Linux beside the enclaves) the checks of
//! [`host`] follow: CPUs, memory and the enclave pool's reservation as atoll's words on the
//! kernel command line say, PCI devices, and a `/dev/mem` probe of the pool. The report says
//! `"role": "enclave"` or `"host"`.
//!
//! For `expect_memory` "the RAM the kernel saw" is the second figure of the kernel's boot line
//! `Memory: 466556K/523768K available (…)` — every page of RAM the firmware (or hypervisor)
//! handed over — and `MemTotal` only when that line is gone. `MemTotal` is smaller by the
//! kernel's image, its page structures and reservations (about 30 MiB for Debian's kernel),
//! which at 256 MiB is already more than 10 %, so it would judge the kernel rather than the
//! platform.
//!
//! **APIC mode.** `x2apic` when `/proc/cpuinfo` has the `x2apic` flag *and* the kernel log
//! says Linux switched to it (`x2apic enabled`, `x2apic: enabled by BIOS, switching to x2apic
//! ops`, or `… APIC routing to … x2apic`); `xapic` when the CPU has an APIC but the log shows no
//! x2APIC switch (or says it was disabled); `none` without the `apic` flag. When the kernel log
//! cannot be read the flag alone decides, and `apic_mode_evidence` says so.
//!
//! **TSC frequency.** `/sys/devices/system/cpu/cpu0/tsc_freq_khz` when the kernel has it (not
//! mainline), else the refined calibration (`tsc: Refined TSC clocksource calibration: X MHz`),
//! else the early figure (`tsc: Detected X MHz processor` / `… MHz TSC`) from the kernel log.

use serde_json::{json, Value};

#[cfg(target_os = "linux")]
pub mod channel;
pub mod dma;
pub mod host;
pub mod idle;
pub mod net;

/// What the report line starts with.
pub const REPORT_PREFIX: &str = "ATOLL-GUEST-CHECK ";

/// Default amount of work per CPU (iterations of [`compute_work`]): about 0.2 s of QEMU TCG.
pub const DEFAULT_ITERATIONS: u64 = 20_000_000;

/// At most this many warning lines go into the report (the rest are counted).
pub const MAX_WARNINGS: usize = 64;

/// Parses a kernel CPU list (`/sys/devices/system/cpu/online`): `0-3,5`, `0`, or empty.
/// Returns the CPUs in ascending order without duplicates.
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("bad CPU number '{t}' in CPU list '{}'", s.trim()))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("bad range '{part}' in CPU list '{}'", s.trim()));
                }
                if b - a > 65_535 {
                    return Err(format!("range '{part}' is too large"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// The inverse of [`parse_cpu_list`]: `[0, 1, 2, 3, 5]` → `0-3,5`.
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// A field of `/proc/meminfo` in KiB (`MemTotal:  8048864 kB`).
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        let mut words = v.split_whitespace();
        let n = words.next()?.parse::<u64>().ok()?;
        match words.next() {
            None | Some("kB") => Some(n),
            Some(_) => None,
        }
    })
}

/// The message of one `/dev/kmsg` record (`PRI,SEQ,TIME,FLAGS;message\n KEY=value…`): the text
/// after the first `;` up to the first newline (what follows are dictionary lines), with the
/// kernel's `\xNN` escapes undone — a message of several lines comes back as several lines,
/// as `dmesg` shows it.
pub fn kmsg_message(record: &str) -> Option<Vec<String>> {
    let (header, rest) = record.split_once(';')?;
    if !header
        .split(',')
        .next()?
        .chars()
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let escaped = rest.split('\n').next().unwrap_or(rest);
    let mut bytes = Vec::with_capacity(escaped.len());
    let raw = escaped.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 2..i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], raw.get(i + 1), hex) {
            (b'\\', Some(b'x'), Some(b)) => {
                bytes.push(b);
                i += 4;
            }
            (b, _, _) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    Some(
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// The message of one `syslog(2)`/`dmesg -r` line: `<6>[    0.000000] text` → `text`.
pub fn syslog_message(line: &str) -> &str {
    let mut s = line;
    if let Some(rest) = s.strip_prefix('<') {
        if let Some((lvl, after)) = rest.split_once('>') {
            if lvl.chars().all(|c| c.is_ascii_digit()) {
                s = after;
            }
        }
    }
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((ts, after)) = rest.split_once(']') {
            if ts.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                s = after.strip_prefix(' ').unwrap_or(after);
            }
        }
    }
    s
}

/// A kernel log line that means the platform (that is, the hypervisor) misbehaves.
#[derive(Debug)]
pub struct WarningPattern {
    /// Its name for `--tolerate`.
    pub id: &'static str,
    /// Substrings that must all appear, in this order, case-sensitive.
    pub parts: &'static [&'static str],
}

/// The kernel log lines `atoll-check` counts as hypervisor-caused trouble. They are exact
/// kernel messages (Linux 6.1, `arch/x86` and core code), not single words: "APIC", "timer",
/// "error" and "fallback" alone match dozens of healthy boot lines (`x2apic enabled`, `TSC
/// deadline timer available`, `APIC: Switch to symmetric I/O mode setup`, `ACPI: LAPIC_NMI …`,
/// `RETBleed: WARNING: …`), so each entry names one failure:
///
/// * MSR emulation: `unchecked MSR access` (a RDMSR/WRMSR the kernel expected to work faulted);
/// * time: `clocksource … unstable` and `TSC … unstable` (the watchdog or the TSC sync check
///   threw the TSC out), `calibration failed` (`tsc: Fast TSC calibration failed` — no CPUID
///   frequency leaf and no usable PIT), `calibrate_delay_direct() failed` (the timer interrupt
///   and the TSC disagree), `TSC_DEADLINE disabled`, `APIC calibration not
///   consistent`, `APIC timer disabled`, `Spurious LAPIC timer`, `timer doesn't work`,
///   `timer not connected` (IO-APIC/8254 routing);
/// * interrupts: `APIC error on CPU`, `spurious APIC interrupt`, `No irq handler for vector`,
///   `NMI received for unknown reason`, `nobody cared` (`irq N: nobody cared`: an interrupt
///   line stuck asserted, so the kernel disabled it);
/// * the tables atoll writes: `[Firmware Bug]`, `ACPI Error`, `ACPI BIOS Error`;
/// * processor start-up: `do_boot_cpu failed`, `Stuck ??`, `Not responding`;
/// * the kernel hurting: `WARNING: CPU:` (a WARN splat), `BUG: `, `Oops`, `general protection
///   fault`, `Kernel panic`, `soft lockup`, `hard LOCKUP`, `detected stall` (RCU stalls, a
///   symptom of lost timer interrupts), `blocked for more than` (hung tasks),
///   `[Hardware Error]` (machine checks), `Call Trace:` (any stack dump, including those whose
///   header line is not in this list).
///
/// The same list judges a Linux enclave's console in `cargo xtask`'s harness (`xtask::console`),
/// so the guest's own check and the host's reading of its console agree.
///
/// The kernel's echoes of its command line (`Command line: …`) are never warnings: they repeat
/// whatever the user typed.
///
/// `--tolerate ID,…` moves the lines of the named patterns to `dmesg_tolerated`, where they do
/// not fail the check: for platforms known to cause them, such as QEMU's TCG emulation (whose
/// timing warnings `cargo xtask guest-image --smoke-test` tolerates).
pub const WARNING_PATTERNS: &[WarningPattern] = &[
    pat("msr", &["unchecked MSR access"]),
    pat("clocksource-unstable", &["clocksource", "unstable"]),
    pat("tsc-unstable", &["TSC", "unstable"]),
    pat("tsc-calibration", &["calibration failed"]),
    pat("delay-calibration", &["calibrate_delay_direct() failed"]),
    pat("tsc-deadline", &["TSC_DEADLINE disabled"]),
    pat("apic-calibration", &["APIC calibration not consistent"]),
    pat("apic-timer", &["APIC timer disabled"]),
    pat("spurious-lapic-timer", &["Spurious LAPIC timer"]),
    pat("timer-broken", &["timer doesn't work"]),
    pat("timer-not-connected", &["timer not connected"]),
    pat("apic-error", &["APIC error on CPU"]),
    pat("spurious-apic", &["spurious APIC interrupt"]),
    pat("unhandled-vector", &["No irq handler for vector"]),
    pat("unknown-nmi", &["NMI received for unknown reason"]),
    pat("irq-nobody-cared", &["nobody cared"]),
    pat("firmware-bug", &["[Firmware Bug]"]),
    pat("acpi-error", &["ACPI Error"]),
    pat("acpi-bios-error", &["ACPI BIOS Error"]),
    pat("cpu-boot", &["do_boot_cpu failed"]),
    pat("cpu-stuck", &["Stuck ??"]),
    pat("cpu-not-responding", &["Not responding"]),
    pat("kernel-warning", &["WARNING: CPU:"]),
    pat("kernel-bug", &["BUG: "]),
    pat("oops", &["Oops"]),
    pat("general-protection", &["general protection fault"]),
    pat("panic", &["Kernel panic"]),
    pat("soft-lockup", &["soft lockup"]),
    pat("hard-lockup", &["hard LOCKUP"]),
    pat("rcu-stall", &["detected stall"]),
    pat("hung-task", &["blocked for more than"]),
    pat("machine-check", &["[Hardware Error]"]),
    pat("call-trace", &["Call Trace:"]),
];

const fn pat(id: &'static str, parts: &'static [&'static str]) -> WarningPattern {
    WarningPattern { id, parts }
}

fn contains_in_order(line: &str, parts: &[&str]) -> bool {
    let mut rest = line;
    for p in parts {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// The kernel's echoes of its command line, which hold whatever the user typed (such as
/// `atoll.tolerate=clocksource-unstable`) and so are never warnings.
const COMMAND_LINE_ECHOES: &[&str] = &[
    "Command line:",
    "Kernel command line:",
    "Unknown kernel command line parameters",
];

/// The first [`WARNING_PATTERNS`] entry `line` matches.
pub fn warning_pattern(line: &str) -> Option<&'static WarningPattern> {
    if COMMAND_LINE_ECHOES
        .iter()
        .any(|e| line.trim_start().starts_with(e))
    {
        return None;
    }
    WARNING_PATTERNS
        .iter()
        .find(|p| contains_in_order(line, p.parts))
}

/// Splits warning lines into those that fail the check and those `tolerate` (pattern ids)
/// lets pass.
pub fn split_warnings<'a>(
    lines: &'a [String],
    tolerate: &[String],
) -> (Vec<&'a str>, Vec<&'a str>) {
    lines
        .iter()
        .map(String::as_str)
        .partition(|l| !warning_pattern(l).is_some_and(|p| tolerate.iter().any(|t| t == p.id)))
}

/// The kernel log lines that match [`WARNING_PATTERNS`], in log order.
pub fn dmesg_warnings<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| warning_pattern(l).is_some())
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// `2999.998` (MHz) → `2999998` (kHz), without floating point.
pub fn mhz_to_khz(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut khz = int.parse::<u64>().ok()?.checked_mul(1000)?;
    let digits: Vec<u64> = frac.chars().map(|c| u64::from(c as u8 - b'0')).collect();
    for (i, scale) in [100, 10, 1].into_iter().enumerate() {
        khz += digits.get(i).copied().unwrap_or(0) * scale;
    }
    Some(khz)
}

/// The number before ` MHz` after `marker` in `line`.
fn mhz_after(line: &str, marker: &str) -> Option<u64> {
    let rest = line[line.find(marker)? + marker.len()..].trim_start();
    let num = rest.split_whitespace().next()?;
    if !rest[num.len()..].trim_start().starts_with("MHz") {
        return None;
    }
    mhz_to_khz(num)
}

/// The TSC frequency the kernel settled on, from its log: the refined calibration if it ran,
/// else the early one.
pub fn tsc_khz_from_log<'a>(lines: impl IntoIterator<Item = &'a str> + Clone) -> Option<u64> {
    let refined = lines
        .clone()
        .into_iter()
        .filter_map(|l| mhz_after(l, "Refined TSC clocksource calibration:"))
        .last();
    refined.or_else(|| {
        lines
            .into_iter()
            .filter(|l| l.contains("tsc:"))
            .filter_map(|l| mhz_after(l, "Detected"))
            .last()
    })
}

/// The total of the kernel's `Memory: 466556K/523768K available (…)` boot line, in KiB.
pub fn kernel_memory_total_kib<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<u64> {
    lines.into_iter().find_map(|l| {
        let rest = l.trim_start().strip_prefix("Memory: ")?;
        let (_, total) = rest.split_whitespace().next()?.split_once('/')?;
        total.strip_suffix('K')?.parse().ok()
    })
}

/// Whether the first `flags` line of `/proc/cpuinfo` lists `flag`.
pub fn cpuinfo_has_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "flags").then_some(v)
        })
        .is_some_and(|flags| flags.split_whitespace().any(|f| f == flag))
}

/// What the kernel log says about x2APIC mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum X2apicLog {
    /// Linux switched to x2APIC; the line that says so.
    Enabled(String),
    /// Linux turned it off; the line that says so.
    Disabled(String),
    /// The log says nothing either way.
    Silent,
}

/// Looks for the kernel's x2APIC decision in its log.
pub fn x2apic_log<'a>(lines: impl IntoIterator<Item = &'a str>) -> X2apicLog {
    let mut verdict = X2apicLog::Silent;
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if lower.contains("x2apic disabled")
            || lower.contains("x2apic: disabled")
            || lower.contains("doesn't support x2apic mode")
        {
            verdict = X2apicLog::Disabled(l.trim().to_string());
        } else if (lower.contains("x2apic enabled")
            || lower.contains("switching to x2apic ops")
            || contains_in_order(&lower, &["apic routing to", "x2apic"]))
            && !matches!(verdict, X2apicLog::Disabled(_))
        {
            verdict = X2apicLog::Enabled(l.trim().to_string());
        }
    }
    verdict
}

/// The APIC mode and the evidence for it (see the module docs). `log` is `None` when the
/// kernel log could not be read.
pub fn apic_mode(cpuinfo: &str, log: Option<&X2apicLog>) -> (&'static str, String) {
    let x2 = cpuinfo_has_flag(cpuinfo, "x2apic");
    if !x2 && !cpuinfo_has_flag(cpuinfo, "apic") {
        return ("none", "no apic flag in /proc/cpuinfo".into());
    }
    match (x2, log) {
        (false, _) => ("xapic", "no x2apic flag in /proc/cpuinfo".into()),
        (true, None) => (
            "x2apic",
            "x2apic flag in /proc/cpuinfo (kernel log unreadable)".into(),
        ),
        (true, Some(X2apicLog::Enabled(line))) => ("x2apic", line.clone()),
        (true, Some(X2apicLog::Disabled(line))) => ("xapic", line.clone()),
        (true, Some(X2apicLog::Silent)) => (
            "xapic",
            "x2apic flag in /proc/cpuinfo but no x2APIC switch in the kernel log".into(),
        ),
    }
}

/// The hypervisor signature of CPUID leaf 0x4000_0000 (EBX, ECX, EDX), trailing NULs removed.
pub fn hypervisor_signature(ebx: u32, ecx: u32, edx: u32) -> String {
    let mut bytes = Vec::with_capacity(12);
    for r in [ebx, ecx, edx] {
        bytes.extend_from_slice(&r.to_le_bytes());
    }
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end]
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

/// The fixed integer work each CPU does: `iterations` rounds of xorshift64 folded into a
/// checksum. Every CPU must get the same checksum for the same count.
pub fn compute_work(iterations: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut acc: u64 = 0;
    for i in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc = (acc ^ x.wrapping_add(i)).rotate_left(5);
        // Keep the loop a loop: no vectorizing or closed-form folding of the count.
        acc = std::hint::black_box(acc);
    }
    acc
}

/// Command-line options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `--expect-cpus N`: exactly N CPUs must be online.
    pub expect_cpus: Option<u32>,
    /// `--expect-memory-mib M`: the kernel's RAM must be within 10 % of M MiB.
    pub expect_memory_mib: Option<u64>,
    /// `--iterations N`: the work per CPU.
    pub iterations: u64,
    /// `--tolerate ID,…`: warning patterns that do not fail the check.
    pub tolerate: Vec<String>,
    /// `--role enclave|host`: which partition this Linux is ([`host`] adds the root
    /// partition's checks).
    pub role: Role,
}

/// Which partition the check runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// An enclave (the default).
    #[default]
    Enclave,
    /// The root partition: the host's Linux ([`host`]).
    Host,
}

impl Role {
    /// Its name in arguments and the report.
    pub fn name(self) -> &'static str {
        match self {
            Role::Enclave => "enclave",
            Role::Host => "host",
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            expect_cpus: None,
            expect_memory_mib: None,
            iterations: DEFAULT_ITERATIONS,
            tolerate: Vec::new(),
            role: Role::Enclave,
        }
    }
}

/// Usage text.
pub const USAGE: &str = "usage: atoll-check [--role enclave|host] [--expect-cpus N] [--expect-memory-mib M] [--iterations N] [--tolerate ID,...]\n\
With --role host, also checks what atoll put on the kernel command line (atoll.cpus, atoll.memory_mib, atoll.pool).\n\
Prints one line `ATOLL-GUEST-CHECK {json}` and exits 0 when every check passed, 1 when one failed,\n\
2 on a usage error.";

/// Parses the arguments (without the program name). `Ok(None)` means `--help`.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Option<Options>, String> {
    let mut opts = Options::default();
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
        if !matches!(
            name,
            "--expect-cpus" | "--expect-memory-mib" | "--iterations" | "--tolerate" | "--role"
        ) {
            return Err(format!("unknown argument '{arg}'"));
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
        let positive = |v: &str| -> Result<u64, String> {
            match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{name}: '{v}' is not a positive integer")),
            }
        };
        match name {
            "--expect-cpus" => {
                let n = positive(&value)?;
                opts.expect_cpus =
                    Some(u32::try_from(n).map_err(|_| format!("{name}: {n} is too large"))?);
            }
            "--expect-memory-mib" => opts.expect_memory_mib = Some(positive(&value)?),
            "--role" => {
                opts.role = match value.as_str() {
                    "enclave" => Role::Enclave,
                    "host" => Role::Host,
                    _ => return Err(format!("--role: '{value}' is not enclave or host")),
                }
            }
            "--tolerate" => {
                for id in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    if !WARNING_PATTERNS.iter().any(|p| p.id == id) {
                        let ids: Vec<&str> = WARNING_PATTERNS.iter().map(|p| p.id).collect();
                        return Err(format!(
                            "--tolerate: unknown warning '{id}' (known: {})",
                            ids.join(", ")
                        ));
                    }
                    if !opts.tolerate.iter().any(|t| t == id) {
                        opts.tolerate.push(id.to_string());
                    }
                }
            }
            _ => opts.iterations = positive(&value)?,
        }
        i += 1;
    }
    Ok(Some(opts))
}

/// What one compute thread did.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuRun {
    /// The CPU it was pinned to.
    pub cpu: u32,
    /// `sched_getcpu()` after the work (`None` if pinning failed).
    pub ran_on: Option<u32>,
    /// Iterations of [`compute_work`].
    pub iterations: u64,
    /// Wall time of the work in milliseconds.
    pub ms: f64,
    /// The work's result.
    pub checksum: u64,
    /// Why the thread could not run there.
    pub error: Option<String>,
}

/// Everything `atoll-check` gathered.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// `/sys/devices/system/cpu/online`, parsed (`None` if unreadable).
    pub online: Option<Vec<u32>>,
    /// `sched_getaffinity` of the process.
    pub affinity: Vec<u32>,
    /// `MemTotal` in KiB.
    pub mem_total_kib: Option<u64>,
    /// The total of the kernel's `Memory:` boot line in KiB.
    pub kernel_memory_kib: Option<u64>,
    /// `x2apic`, `xapic` or `none`.
    pub apic_mode: String,
    /// Why.
    pub apic_mode_evidence: String,
    /// The current clocksource.
    pub clocksource: Option<String>,
    /// TSC frequency in kHz.
    pub tsc_khz: Option<u64>,
    /// Where `tsc_khz` came from.
    pub tsc_khz_source: Option<String>,
    /// `/proc/cmdline`.
    pub cmdline: Option<String>,
    /// CPUID 0x4000_0000 signature, when CPUID.1:ECX[31] is set.
    pub hypervisor: Option<String>,
    /// Highest hypervisor leaf (EAX of 0x4000_0000).
    pub hypervisor_max_leaf: Option<u32>,
    /// Per-CPU compute runs.
    pub compute: Vec<CpuRun>,
    /// Wall time of the whole compute phase in milliseconds.
    pub compute_wall_ms: f64,
    /// `/dev/kmsg`, `syslog`, or `None` when unreadable.
    pub kernel_log_source: Option<String>,
    /// Kernel log lines matching [`WARNING_PATTERNS`].
    pub dmesg_warnings: Vec<String>,
    /// What the host role gathered (`--role host`).
    pub host: Option<host::HostFacts>,
}

impl Facts {
    /// The online CPUs: sysfs, else the affinity mask.
    pub fn cpus(&self) -> &[u32] {
        self.online.as_deref().unwrap_or(&self.affinity)
    }
}

/// One check's outcome: its name and, when it failed, why.
pub type CheckResult = (&'static str, Result<(), String>);

/// Every check (see the module docs), in a fixed order.
pub fn checks(f: &Facts, o: &Options) -> Vec<CheckResult> {
    let cpus = f.cpus();
    let mut out: Vec<CheckResult> = Vec::new();
    let fail = |cond: bool, why: String| if cond { Ok(()) } else { Err(why) };
    out.push(("cpus", fail(!cpus.is_empty(), "no online CPU found".into())));
    out.push((
        "memory",
        fail(
            f.mem_total_kib.unwrap_or(0) > 0,
            "MemTotal missing or zero in /proc/meminfo".into(),
        ),
    ));
    let compute = {
        let mut why = Vec::new();
        for &c in cpus {
            match f.compute.iter().find(|r| r.cpu == c) {
                None => why.push(format!("CPU {c}: no compute thread")),
                Some(CpuRun { error: Some(e), .. }) => why.push(format!("CPU {c}: {e}")),
                Some(r) if r.ran_on != Some(c) => why.push(format!(
                    "CPU {c}: thread pinned there ran on {}",
                    r.ran_on
                        .map_or("an unknown CPU".into(), |x| format!("CPU {x}"))
                )),
                Some(_) => {}
            }
        }
        let mut sums: Vec<u64> = f.compute.iter().map(|r| r.checksum).collect();
        sums.sort_unstable();
        sums.dedup();
        if sums.len() > 1 {
            why.push(format!(
                "CPUs disagree on the compute checksum ({} different results)",
                sums.len()
            ));
        }
        if cpus.is_empty() {
            why.push("no CPU to run on".into());
        }
        fail(why.is_empty(), why.join("; "))
    };
    out.push(("compute", compute));
    out.push((
        "kernel_log",
        fail(
            f.kernel_log_source.is_some(),
            "kernel log unreadable (/dev/kmsg and syslog(2)); dmesg not checked".into(),
        ),
    ));
    let (failing, _) = split_warnings(&f.dmesg_warnings, &o.tolerate);
    out.push((
        "dmesg",
        fail(
            failing.is_empty(),
            format!("{} kernel log warning(s)", failing.len()),
        ),
    ));
    out.push((
        "clocksource",
        match f.clocksource.as_deref() {
            Some("jiffies" | "refined-jiffies") => Err(format!(
                "clocksource is {}: no usable hardware timer",
                f.clocksource.as_deref().unwrap_or_default()
            )),
            Some(_) => Ok(()),
            None => Err("no current clocksource in sysfs".into()),
        },
    ));
    if let Some(n) = o.expect_cpus {
        out.push((
            "expect_cpus",
            fail(
                cpus.len() == n as usize,
                format!("expected {n} CPUs, {} online", cpus.len()),
            ),
        ));
    }
    if let Some(m) = o.expect_memory_mib {
        out.push(("expect_memory", memory_within(f, m)));
    }
    if o.role == Role::Host {
        match &f.host {
            Some(h) => out.extend(host::checks(f, h, o)),
            None => out.push(("host", Err("the host role gathered nothing".into()))),
        }
    }
    out
}

/// Whether the RAM the kernel saw (its `Memory:` line's total, else `MemTotal`) is within
/// 10 % of `m` MiB (see the module docs).
pub fn memory_within(f: &Facts, m: u64) -> Result<(), String> {
    let (kib, what) = match (f.kernel_memory_kib, f.mem_total_kib) {
        (Some(k), _) => (k, "kernel RAM"),
        (None, Some(k)) => (k, "MemTotal"),
        (None, None) => (0, "no memory figure"),
    };
    let want = m * 1024;
    let diff = kib.abs_diff(want);
    if diff * 10 <= want {
        Ok(())
    } else {
        Err(format!(
            "expected {m} MiB ± 10 %, {what} is {} MiB",
            kib / 1024
        ))
    }
}

/// The report (the JSON after [`REPORT_PREFIX`]) and whether every check passed.
pub fn report(f: &Facts, o: &Options) -> (Value, bool) {
    let results = checks(f, o);
    let ok = results.iter().all(|(_, r)| r.is_ok());
    let mut check_map = serde_json::Map::new();
    for (name, r) in &results {
        check_map.insert((*name).into(), Value::Bool(r.is_ok()));
    }
    let problems: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    let compute: Vec<Value> = f
        .compute
        .iter()
        .map(|r| {
            json!({
                "cpu": r.cpu,
                "ran_on": r.ran_on,
                "iterations": r.iterations,
                "ms": (r.ms * 1000.0).round() / 1000.0,
                "checksum": format!("{:016x}", r.checksum),
                "error": r.error,
            })
        })
        .collect();
    let (failing, tolerated) = split_warnings(&f.dmesg_warnings, &o.tolerate);
    let shown = failing.len().min(MAX_WARNINGS);
    let mut value = json!({
        "ok": ok,
        "role": o.role.name(),
        "checks": check_map,
        "problems": problems,
        "cpus": f.cpus().len(),
        "cpus_online": f.online.as_deref().map(format_cpu_list),
        "cpus_affinity": format_cpu_list(&f.affinity),
        "memory_kib": f.mem_total_kib,
        "memory_kernel_kib": f.kernel_memory_kib,
        "apic_mode": f.apic_mode,
        "apic_mode_evidence": f.apic_mode_evidence,
        "clocksource": f.clocksource,
        "tsc_khz": f.tsc_khz,
        "tsc_khz_source": f.tsc_khz_source,
        "cmdline": f.cmdline,
        "hypervisor": f.hypervisor,
        "hypervisor_max_leaf": f.hypervisor_max_leaf.map(|l| format!("{l:#x}")),
        "compute": {
            "iterations_per_cpu": o.iterations,
            "wall_ms": (f.compute_wall_ms * 1000.0).round() / 1000.0,
            "per_cpu": compute,
        },
        "kernel_log": f.kernel_log_source,
        "dmesg_warnings": failing[..shown],
        "dmesg_warnings_omitted": failing.len() - shown,
        "dmesg_tolerated": tolerated[..tolerated.len().min(MAX_WARNINGS)],
        "expect": {
            "cpus": o.expect_cpus,
            "memory_mib": o.expect_memory_mib,
            "tolerate": o.tolerate,
        },
    });
    if let (Some(h), Some(map)) = (&f.host, value.as_object_mut()) {
        map.extend(host::report_fields(h));
    }
    (value, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5\n").unwrap(), vec![0, 1, 2, 3, 5]);
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("2,0-1,1").unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_cpu_list(" 8-9 , 12 ").unwrap(), vec![8, 9, 12]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("1-").is_err());
        assert!(parse_cpu_list("0-4294967295").is_err());
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 5]), "0-3,5");
        assert_eq!(format_cpu_list(&[7, 0, 6]), "0,6-7");
        assert_eq!(format_cpu_list(&[]), "");
        for s in ["0", "0-1", "0-3,5,7-9"] {
            assert_eq!(format_cpu_list(&parse_cpu_list(s).unwrap()), s);
        }
    }

    #[test]
    fn meminfo() {
        let text =
            "MemTotal:         492556 kB\nMemFree:          470000 kB\nHugePages_Total:       0\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(492_556));
        assert_eq!(meminfo_kib(text, "MemFree"), Some(470_000));
        assert_eq!(meminfo_kib(text, "HugePages_Total"), Some(0));
        assert_eq!(meminfo_kib(text, "Mem"), None);
        assert_eq!(meminfo_kib("MemTotal: lots kB", "MemTotal"), None);
        assert_eq!(meminfo_kib("MemTotal: 5 MB", "MemTotal"), None);
    }

    #[test]
    fn kmsg_records() {
        assert_eq!(
            kmsg_message("6,339,5140900,-;NET: Registered protocol family 10\n").unwrap(),
            ["NET: Registered protocol family 10"]
        );
        assert_eq!(
            kmsg_message("3,1,2,c;usb 1-1: error\n SUBSYSTEM=usb\n DEVICE=c189:1\n").unwrap(),
            ["usb 1-1: error"]
        );
        // Escaped newlines (a message of several lines) and other escapes.
        assert_eq!(
            kmsg_message(
                "4,9,1,-;calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.\\x0aProbably due to long platform interrupts.\n"
            )
            .unwrap(),
            [
                "calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.",
                "Probably due to long platform interrupts."
            ]
        );
        assert_eq!(
            kmsg_message("6,1,1,-;a\\x5cb \\xzz\n").unwrap(),
            ["a\\b \\xzz"]
        );
        assert_eq!(kmsg_message("no header"), None);
        assert_eq!(kmsg_message("x,1;text"), None);
        assert_eq!(
            syslog_message("<6>[    0.000000] Linux version 6.1.0"),
            "Linux version 6.1.0"
        );
        assert_eq!(syslog_message("[   12.5] x"), "x");
        assert_eq!(syslog_message("plain"), "plain");
    }

    #[test]
    fn warnings_match_trouble_only() {
        let bad = [
            "unchecked MSR access error: WRMSR to 0x48 (tried to write 0x0000000000000001) at rIP: 0xffffffff8107b4a4",
            "clocksource: timekeeping watchdog on CPU1: Marking clocksource 'tsc' as unstable because the skew is too large:",
            "tsc: Marking TSC unstable due to check_tsc_sync_source failed",
            "tsc: Fast TSC calibration failed",
            "calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.",
            "APIC calibration not consistent with PM-Timer: 139ms instead of 100ms",
            "APIC timer disabled due to verification failure",
            "Spurious LAPIC timer interrupt on cpu 1",
            "Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot with apic=debug",
            "..MP-BIOS bug: 8254 timer not connected to IO-APIC",
            "APIC error on CPU0: 00(40)",
            "spurious APIC interrupt through vector ff on CPU#0, should never happen.",
            "__common_interrupt: 1.55 No irq handler for vector",
            "Uhhuh. NMI received for unknown reason 30 on CPU 0.",
            "[Firmware Bug]: TSC_DEADLINE disabled due to Errata; please update microcode",
            "ACPI Error: AE_NOT_FOUND, While resolving a named reference package element",
            "ACPI BIOS Error (bug): Could not resolve symbol [\\_SB.PCI0], AE_NOT_FOUND",
            "smpboot: do_boot_cpu failed(-1) to wakeup CPU#1",
            "WARNING: CPU: 0 PID: 1 at arch/x86/kernel/apic/apic.c:1234 setup_local_APIC+0x1/0x2",
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP",
            "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [swapper/1:0]",
            "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
            "mce: [Hardware Error]: Machine check events logged",
            "irq 9: nobody cared (try booting with the \"irqpoll\" option)",
            " Call Trace:",
        ];
        for l in bad {
            assert!(warning_pattern(l).is_some(), "should match: {l}");
        }
        let good = [
            "x2apic enabled",
            "APIC: Switch to symmetric I/O mode setup",
            "Switched APIC routing to physical x2apic.",
            "ACPI: LAPIC_NMI (acpi_id[0xff] dfl dfl lint[0x1])",
            "clocksource: tsc-early: mask: 0xffffffffffffffff max_cycles: 0x2b3e459bf4c, max_idle_ns: 440795289890 ns",
            "clocksource: Switched to clocksource tsc",
            "tsc: Detected 2999.998 MHz processor",
            "TSC deadline timer available",
            "..TIMER: vector=0x30 apic1=0 pin1=2 apic2=-1 pin2=-1",
            "RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks, data leaks possible!",
            "rcu: RCU calculated value of scheduler-enlistment delay is 25 jiffies.",
            "hpet0: 3 comparators, 64-bit 100.000000 MHz counter",
            "IOAPIC[0]: apic_id 0, version 32, address 0xfec00000, GSI 0-23",
            "Freeing unused kernel image (initmem) memory: 2752K",
            "ACPI: Added _OSI(Processor Aggregator Device)",
            "tsc: Refined TSC clocksource calibration: 2999.991 MHz",
            "Calibrating delay loop (skipped), value calculated using timer frequency.. 3999.98 BogoMIPS (lpj=7999960)",
            "x2apic: IRQ remapping doesn't support X2APIC mode",
            "tsc: Unable to calibrate against PIT",
            "Command line: console=ttyS0 atoll.tolerate=clocksource-unstable,apic-calibration",
            "Kernel command line: console=ttyS0 atoll.tolerate=clocksource-unstable Oops",
        ];
        for l in good {
            assert!(warning_pattern(l).is_none(), "should not match: {l}");
        }
        let lines = ["ok line", bad[0], "another", bad[2]];
        assert_eq!(dmesg_warnings(lines), vec![bad[0], bad[2]]);
        // Order matters within a pattern.
        assert!(warning_pattern("unstable clocksource").is_none());
    }

    #[test]
    fn tsc_frequency() {
        assert_eq!(mhz_to_khz("2999.998"), Some(2_999_998));
        assert_eq!(mhz_to_khz("3000"), Some(3_000_000));
        assert_eq!(mhz_to_khz("2294.6"), Some(2_294_600));
        assert_eq!(mhz_to_khz("1.23456"), Some(1_234));
        assert_eq!(mhz_to_khz(".5"), None);
        assert_eq!(mhz_to_khz("x"), None);
        let early = [
            "tsc: Fast TSC calibration using PIT",
            "tsc: Detected 2999.998 MHz processor",
        ];
        assert_eq!(tsc_khz_from_log(early), Some(2_999_998));
        let refined = [
            "tsc: Detected 3000.000 MHz TSC",
            "clocksource: tsc-early: mask: …",
            "tsc: Refined TSC clocksource calibration: 2999.991 MHz",
        ];
        assert_eq!(tsc_khz_from_log(refined), Some(2_999_991));
        assert_eq!(tsc_khz_from_log(["hpet0: 100.000000 MHz counter"]), None);
        assert_eq!(tsc_khz_from_log(["tsc: Detected garbage"]), None);
    }

    #[test]
    fn kernel_memory_line() {
        let lines = [
            "Zone ranges:",
            "Memory: 466556K/523768K available (14336K kernel code, 2342K rwdata, 9068K rodata, 2792K init, 17440K bss, 56952K reserved, 0K cma-reserved)",
        ];
        assert_eq!(kernel_memory_total_kib(lines), Some(523_768));
        assert_eq!(kernel_memory_total_kib(["Memory: lots"]), None);
    }

    const CPUINFO_X2: &str = "processor\t: 0\nflags\t\t: fpu vme apic sep x2apic tsc_deadline_timer hypervisor\n\nprocessor\t: 1\nflags\t\t: fpu\n";
    const CPUINFO_X: &str = "flags\t\t: fpu vme apic sep\n";

    #[test]
    fn apic_modes() {
        assert!(cpuinfo_has_flag(CPUINFO_X2, "x2apic"));
        assert!(!cpuinfo_has_flag(CPUINFO_X2, "x2"));
        assert!(!cpuinfo_has_flag(CPUINFO_X, "x2apic"));
        let enabled = x2apic_log(["DMAR: …", "x2apic enabled", "other"]);
        assert_eq!(enabled, X2apicLog::Enabled("x2apic enabled".into()));
        assert!(matches!(
            x2apic_log(["x2apic: enabled by BIOS, switching to x2apic ops"]),
            X2apicLog::Enabled(_)
        ));
        assert!(matches!(
            x2apic_log(["APIC: Switched APIC routing to: physical x2apic"]),
            X2apicLog::Enabled(_)
        ));
        let disabled = x2apic_log(["x2apic disabled"]);
        assert!(matches!(disabled, X2apicLog::Disabled(_)));
        // QEMU without interrupt remapping, where Linux stays in xAPIC mode.
        assert_eq!(
            x2apic_log(["x2apic: IRQ remapping doesn't support X2APIC mode"]),
            X2apicLog::Disabled("x2apic: IRQ remapping doesn't support X2APIC mode".into())
        );
        assert_eq!(x2apic_log(["nothing"]), X2apicLog::Silent);

        assert_eq!(apic_mode(CPUINFO_X2, Some(&enabled)).0, "x2apic");
        assert_eq!(apic_mode(CPUINFO_X2, Some(&disabled)).0, "xapic");
        assert_eq!(apic_mode(CPUINFO_X2, Some(&X2apicLog::Silent)).0, "xapic");
        let (mode, why) = apic_mode(CPUINFO_X2, None);
        assert_eq!(mode, "x2apic");
        assert!(why.contains("unreadable"));
        assert_eq!(apic_mode(CPUINFO_X, Some(&enabled)).0, "xapic");
        assert_eq!(apic_mode("flags : fpu\n", None).0, "none");
    }

    #[test]
    fn signatures() {
        let w = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap());
        let sig = b"AtollHV\0\0\0\0\0";
        assert_eq!(
            hypervisor_signature(w(&sig[0..4]), w(&sig[4..8]), w(&sig[8..12])),
            "AtollHV"
        );
        let kvm = b"KVMKVMKVM\0\0\0";
        assert_eq!(
            hypervisor_signature(w(&kvm[0..4]), w(&kvm[4..8]), w(&kvm[8..12])),
            "KVMKVMKVM"
        );
        assert_eq!(hypervisor_signature(0, 0, 0), "");
        assert_eq!(hypervisor_signature(1, 0, 0), ".");
    }

    #[test]
    fn compute_is_deterministic() {
        assert_eq!(compute_work(0), 0);
        assert_eq!(compute_work(1000), compute_work(1000));
        assert_ne!(compute_work(1000), compute_work(1001));
    }

    #[test]
    fn arguments() {
        assert_eq!(parse_args::<&str>(&[]).unwrap(), Some(Options::default()));
        let o = parse_args(&[
            "--expect-cpus",
            "2",
            "--expect-memory-mib=256",
            "--iterations",
            "10",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.expect_cpus, Some(2));
        assert_eq!(o.expect_memory_mib, Some(256));
        assert_eq!(o.iterations, 10);
        assert!(o.tolerate.is_empty());
        let o = parse_args(&[
            "--tolerate",
            "tsc-unstable,tsc-calibration",
            "--tolerate=tsc-unstable",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.tolerate, ["tsc-unstable", "tsc-calibration"]);
        let e = parse_args(&["--tolerate", "tsc-unstable,everything"]).unwrap_err();
        assert!(
            e.contains("unknown warning 'everything'") && e.contains("msr"),
            "{e}"
        );
        assert_eq!(parse_args(&["--help"]).unwrap(), None);
        assert_eq!(
            parse_args(&["--role", "host"]).unwrap().unwrap().role,
            Role::Host
        );
        assert_eq!(
            parse_args(&["--role=enclave"]).unwrap().unwrap().role,
            Role::Enclave
        );
        assert!(parse_args(&["--role", "root"])
            .unwrap_err()
            .contains("not enclave or host"));
        // The host role without what it gathered fails rather than passing silently.
        let host = Options {
            role: Role::Host,
            ..Options::default()
        };
        let (v, ok) = report(&healthy(), &host);
        assert!(!ok);
        assert_eq!(v["role"], "host");
        assert_eq!(v["checks"]["host"], false);
        for bad in [
            &["--expect-cpus"][..],
            &["--expect-cpus", "0"],
            &["--expect-cpus", "two"],
            &["--expect-cpus", "99999999999"],
            &["--expect-memory-mib", "-5"],
            &["--frobnicate"],
            &["2"],
        ] {
            assert!(parse_args(bad).is_err(), "{bad:?}");
        }
    }

    pub(crate) fn healthy() -> Facts {
        let run = |cpu| CpuRun {
            cpu,
            ran_on: Some(cpu),
            iterations: 10,
            ms: 1.5,
            checksum: 42,
            error: None,
        };
        Facts {
            online: Some(vec![0, 1]),
            affinity: vec![0, 1],
            mem_total_kib: Some(480 * 1024),
            kernel_memory_kib: Some(511 * 1024),
            apic_mode: "x2apic".into(),
            apic_mode_evidence: "x2apic enabled".into(),
            clocksource: Some("tsc".into()),
            tsc_khz: Some(3_000_000),
            tsc_khz_source: Some("kernel log".into()),
            cmdline: Some("console=ttyS0".into()),
            hypervisor: Some("AtollHV".into()),
            hypervisor_max_leaf: Some(0x4000_0001),
            compute: vec![run(0), run(1)],
            compute_wall_ms: 2.0,
            kernel_log_source: Some("/dev/kmsg".into()),
            dmesg_warnings: vec![],
            host: None,
        }
    }

    fn failed(f: &Facts, o: &Options) -> Vec<&'static str> {
        checks(f, o)
            .into_iter()
            .filter(|(_, r)| r.is_err())
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn verdicts() {
        let o = Options {
            expect_cpus: Some(2),
            expect_memory_mib: Some(512),
            iterations: 10,
            tolerate: vec![],
            role: Role::Enclave,
        };
        let f = healthy();
        assert!(failed(&f, &o).is_empty(), "{:?}", checks(&f, &o));
        let (v, ok) = report(&f, &o);
        assert!(ok);
        assert_eq!(v["ok"], true);
        assert_eq!(v["cpus"], 2);
        assert_eq!(v["cpus_online"], "0-1");
        assert_eq!(v["checks"]["expect_memory"], true);
        assert_eq!(v["compute"]["per_cpu"][1]["checksum"], "000000000000002a");
        assert_eq!(v["hypervisor_max_leaf"], "0x40000001");

        let mut f2 = healthy();
        f2.compute.pop();
        assert_eq!(failed(&f2, &o), ["compute"]);
        let mut f2 = healthy();
        f2.compute[1].ran_on = Some(0);
        assert_eq!(failed(&f2, &o), ["compute"]);
        let mut f2 = healthy();
        f2.compute[1].checksum = 7;
        assert_eq!(failed(&f2, &o), ["compute"]);
        let mut f2 = healthy();
        f2.compute[0].error = Some("sched_setaffinity: EINVAL".into());
        assert_eq!(failed(&f2, &o), ["compute"]);
        let mut f2 = healthy();
        f2.dmesg_warnings
            .push("tsc: Fast TSC calibration failed".into());
        assert_eq!(failed(&f2, &o), ["dmesg"]);
        let (v, ok) = report(&f2, &o);
        assert!(!ok);
        assert_eq!(v["problems"][0], "dmesg: 1 kernel log warning(s)");
        assert_eq!(v["dmesg_warnings"][0], "tsc: Fast TSC calibration failed");
        // Tolerated, the line moves aside and the check passes.
        let tolerant = Options {
            tolerate: vec!["tsc-calibration".into()],
            ..o.clone()
        };
        let (v, ok) = report(&f2, &tolerant);
        assert!(ok, "{v}");
        assert_eq!(v["dmesg_warnings"].as_array().unwrap().len(), 0);
        assert_eq!(v["dmesg_tolerated"][0], "tsc: Fast TSC calibration failed");
        f2.dmesg_warnings
            .push("unchecked MSR access error: RDMSR from 0x1a0".into());
        assert_eq!(failed(&f2, &tolerant), ["dmesg"]);
        let mut f2 = healthy();
        f2.kernel_log_source = None;
        assert_eq!(failed(&f2, &o), ["kernel_log"]);
        let mut f2 = healthy();
        f2.clocksource = Some("refined-jiffies".into());
        assert_eq!(failed(&f2, &o), ["clocksource"]);
        let mut f2 = healthy();
        f2.mem_total_kib = None;
        assert_eq!(failed(&f2, &o), ["memory"]);
        let mut f2 = healthy();
        f2.online = Some(vec![]);
        f2.compute.clear();
        assert_eq!(failed(&f2, &o), ["cpus", "compute", "expect_cpus"]);

        // Expectations.
        let four = Options {
            expect_cpus: Some(4),
            ..o.clone()
        };
        assert_eq!(failed(&f, &four), ["expect_cpus"]);
        let mem = |m| Options {
            expect_memory_mib: Some(m),
            ..o.clone()
        };
        assert!(failed(&f, &mem(560)).is_empty()); // 511 is within 10 % of 560
        assert_eq!(failed(&f, &mem(580)), ["expect_memory"]);
        assert_eq!(failed(&f, &mem(460)), ["expect_memory"]);
        // Without the kernel's figure, MemTotal is used.
        let mut f2 = healthy();
        f2.kernel_memory_kib = None;
        assert!(failed(&f2, &mem(512)).is_empty()); // 480 of 512
        assert_eq!(failed(&f2, &mem(600)), ["expect_memory"]);
        // No expectations: no expectation checks.
        let none = Options::default();
        let names: Vec<_> = checks(&f, &none).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "cpus",
                "memory",
                "compute",
                "kernel_log",
                "dmesg",
                "clocksource"
            ]
        );
    }

    #[test]
    fn warnings_are_capped_in_the_report() {
        let mut f = healthy();
        f.dmesg_warnings = (0..100).map(|i| format!("Oops {i}")).collect();
        let (v, _) = report(&f, &Options::default());
        assert_eq!(v["dmesg_warnings"].as_array().unwrap().len(), MAX_WARNINGS);
        assert_eq!(v["dmesg_warnings_omitted"], 100 - MAX_WARNINGS);
    }
}
