//! Boot options: the words of the Multiboot2 command line after the image path.
//!
//! `log=LEVEL` sets the console level; `ap_timeout_ms=N` how long the BSP waits for APs;
//! `fake_apic_ids=ID[,ID…]` adds processors that do not exist to the list to start, which is how
//! the emulator tests prove that a silent core is reported instead of hanging the boot;
//! `dump_acpi` prints every ACPI table in hex (to capture test fixtures); `stop_after_ms=N` asks
//! every enclave still running N milliseconds after the enclaves start to stop (the machine's
//! deadline: a vCPU that spins with interrupts masked is stopped too, and the summary appears).
//! An unknown or malformed
//! option is an error that names it; atoll reports it and fails the run rather than guessing.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Parsed boot options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Console log level.
    pub log_level: log::LevelFilter,
    /// Milliseconds to wait for APs after the last SIPI.
    pub ap_timeout_ms: u64,
    /// Processor APIC ids to pretend the MADT listed.
    pub fake_apic_ids: Vec<u32>,
    /// Print every ACPI table.
    pub dump_acpi: bool,
    /// Stop every enclave still running this many milliseconds after the enclaves start.
    pub stop_after_ms: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            log_level: log::LevelFilter::Info,
            ap_timeout_ms: 1000,
            fake_apic_ids: Vec::new(),
            dump_acpi: false,
            stop_after_ms: None,
        }
    }
}

/// A command-line word atoll cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    /// The offending word.
    pub word: String,
    /// Why.
    pub reason: &'static str,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boot option '{}': {}", self.word, self.reason)
    }
}

impl Options {
    /// Parses `cmdline`. Every bad word is reported; the options are the defaults overridden by
    /// the good words only.
    pub fn parse(cmdline: &str) -> (Self, Vec<OptionError>) {
        let mut o = Self::default();
        let mut errors = Vec::new();
        for word in cmdline.split_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            let err = |reason| OptionError {
                word: word.to_string(),
                reason,
            };
            match (key, value) {
                ("log", Some(v)) => match v.parse() {
                    Ok(level) => o.log_level = level,
                    Err(_) => {
                        errors.push(err("level must be off, error, warn, info, debug or trace"))
                    }
                },
                ("ap_timeout_ms", Some(v)) => match v.parse::<u64>() {
                    Ok(ms) if (1..=60_000).contains(&ms) => o.ap_timeout_ms = ms,
                    _ => errors.push(err("must be a number of milliseconds from 1 to 60000")),
                },
                ("fake_apic_ids", Some(v)) => {
                    let ids: Result<Vec<u32>, _> = v.split(',').map(str::parse).collect();
                    match ids {
                        Ok(ids) if !ids.is_empty() => o.fake_apic_ids = ids,
                        _ => errors.push(err("must be a comma-separated list of APIC ids")),
                    }
                }
                ("dump_acpi", None) => o.dump_acpi = true,
                ("stop_after_ms", Some(v)) => match v.parse::<u64>() {
                    Ok(ms) if (1..=86_400_000).contains(&ms) => o.stop_after_ms = Some(ms),
                    _ => errors.push(err("must be a number of milliseconds from 1 to 86400000")),
                },
                ("log" | "ap_timeout_ms" | "fake_apic_ids" | "stop_after_ms", None) => {
                    errors.push(err("needs a value"))
                }
                _ => errors.push(err(
                    "unknown option (known: log=, ap_timeout_ms=, fake_apic_ids=, dump_acpi, \
                     stop_after_ms=)",
                )),
            }
        }
        (o, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_options() {
        let (o, e) = Options::parse(
            "log=debug  ap_timeout_ms=250 fake_apic_ids=7,9 dump_acpi stop_after_ms=1500",
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.stop_after_ms, Some(1500));
        assert_eq!(o.log_level, log::LevelFilter::Debug);
        assert_eq!(o.ap_timeout_ms, 250);
        assert_eq!(o.fake_apic_ids, vec![7, 9]);
        assert!(o.dump_acpi);
        assert_eq!(Options::parse("").0, Options::default());
    }

    #[test]
    fn bad_options_are_named_and_change_nothing() {
        let (o, e) = Options::parse(
            "log=loud ap_timeout_ms=0 fake_apic_ids=7,x frobnicate log stop_after_ms=0 \
             stop_after_ms=soon stop_after_ms",
        );
        assert_eq!(o, Options::default());
        let words: Vec<_> = e.iter().map(|e| e.word.as_str()).collect();
        assert_eq!(
            words,
            vec![
                "log=loud",
                "ap_timeout_ms=0",
                "fake_apic_ids=7,x",
                "frobnicate",
                "log",
                "stop_after_ms=0",
                "stop_after_ms=soon",
                "stop_after_ms"
            ]
        );
        assert!(e[3].to_string().contains("unknown option"));
    }
}
