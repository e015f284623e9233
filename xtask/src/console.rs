//! Reading a Linux enclave's console out of a run's COM1 log.
//!
//! atoll echoes each line an enclave prints as `[NAME] text`. [`enclave_lines`] takes those
//! back out; [`kernel_warnings`] finds the kernel messages among them that mean the platform
//! (that is, the hypervisor) misbehaves.
//!
//! **One list.** The patterns are `guest_kit::check::WARNING_PATTERNS`, the list `atoll-check`
//! applies to the kernel log inside the guest, matched the same way
//! (`guest_kit::check::warning_pattern`: exact kernel messages, never single words such as
//! "APIC" or "fallback", and never the kernel's echoes of its own command line). The two
//! readings complement each other: the guest's check sees the whole kernel log (every level)
//! up to the moment it runs; the console shows only what the console log level lets through
//! (the `linux-enclave` scenario boots with `loglevel=5`: warnings and worse) but covers the
//! whole run — the idle window and the power-off included — and survives a guest that dies
//! before its check reports.
//!
//! Lines that `/init` and `atoll-check` print (`atoll-init: …`, `ATOLL-…`) are not kernel
//! messages: they carry the command line and the report, which quote pattern ids and warning
//! text, so they are skipped (a report glued to the end of a kernel line is cut off).

use guest_kit::check::{syslog_message, warning_pattern};

/// The lines enclave `name` printed, without atoll's `[name] ` prefix or carriage returns.
pub fn enclave_lines<'a>(serial: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("[{name}] ");
    serial
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .collect()
}

/// A kernel console line that matched a warning pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelWarning {
    /// The pattern's id (`atoll.tolerate=` names).
    pub id: &'static str,
    /// The line, as the enclave printed it.
    pub line: String,
}

impl std::fmt::Display for KernelWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.id, self.line)
    }
}

/// The kernel warnings on enclave `name`'s console, except those whose pattern id is in
/// `tolerate` (the ids the guest was told to tolerate with `atoll.tolerate=`).
pub fn kernel_warnings(serial: &str, name: &str, tolerate: &[String]) -> Vec<KernelWarning> {
    enclave_lines(serial, name)
        .into_iter()
        .filter_map(|line| {
            // The report may follow a kernel message on the same line: keep only the kernel's.
            let kernel = line
                .find(crate::guest_image::REPORT_PREFIX)
                .map_or(line, |i| &line[..i]);
            let msg = syslog_message(kernel);
            if msg.starts_with("atoll-init:") || msg.starts_with("ATOLL-") {
                return None;
            }
            let p = warning_pattern(msg)?;
            (!tolerate.iter().any(|t| t == p.id)).then(|| KernelWarning {
                id: p.id,
                line: line.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
atoll: starting enclave linux on cores [1, 2]\r
[linux] [    0.000000] Linux version 6.1.0-56-amd64\r
[linux] [    0.000000] Command line: console=ttyS0 atoll.tolerate=clocksource-unstable\r
[suite] guest-suite: WARNING: CPU: this is not the kernel\r
[linux] [    0.912000] unchecked MSR access error: RDMSR from 0x123 at rIP: 0xffffffff81000000\r
[linux] [    1.000000] clocksource: timekeeping watchdog on CPU1: Marking clocksource 'tsc' as unstable because the skew is too large:\r
[linux] [    1.100000] x2apic: IRQ remapping doesn't support X2APIC mode\r
[linux] atoll-init: /atoll-check --expect-cpus 2 --tolerate clocksource-unstable\r
[linux] [    2.0] random: crng init doneATOLL-GUEST-CHECK {\"ok\":true,\"dmesg_tolerated\":[\"Marking clocksource 'tsc' as unstable\"]}\r
[linux] [    3.000000] Call Trace:\r
[linux] ATOLL-GUEST-EXIT status=0\r
";

    #[test]
    fn lines_of_one_enclave() {
        let l = enclave_lines(LOG, "linux");
        assert_eq!(l.len(), 9);
        assert_eq!(l[0], "[    0.000000] Linux version 6.1.0-56-amd64");
        assert_eq!(
            enclave_lines(LOG, "suite"),
            vec!["guest-suite: WARNING: CPU: this is not the kernel"]
        );
        assert!(enclave_lines(LOG, "lin").is_empty());
    }

    #[test]
    fn warnings_are_the_kernels_only() {
        let w = kernel_warnings(LOG, "linux", &[]);
        let ids: Vec<&str> = w.iter().map(|w| w.id).collect();
        // Not the command-line echo, not /init's line, not the report, not the healthy x2apic
        // line, not another enclave's line.
        assert_eq!(ids, vec!["msr", "clocksource-unstable", "call-trace"]);
        assert!(w[0].line.starts_with("[    0.912000] unchecked MSR access"));
        assert!(w[0].to_string().starts_with("[msr] "));
        let tolerated = kernel_warnings(LOG, "linux", &["clocksource-unstable".into()]);
        assert_eq!(tolerated.len(), 2);
        // Each enclave's console is read apart.
        assert_eq!(kernel_warnings(LOG, "suite", &[]).len(), 1);
        assert!(kernel_warnings("[linux] [ 1.0] all is well\n", "linux", &[]).is_empty());
    }
}
