//! The command line (clap).

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Operate atoll's enclaves from the host.
#[derive(Debug, Parser)]
#[command(
    name = "atoll",
    version,
    about = "Operate atoll's enclaves from the host (run as root)"
)]
pub struct Cli {
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of `stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// JSON.
    Json,
    /// Prometheus text exposition format.
    Prometheus,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an enclave from a description file, load its kernel and initrd, and start it.
    Create {
        /// The enclave description (TOML: one enclave).
        file: PathBuf,
        /// Offline the host's CPUs of the enclave's cores first.
        #[arg(long)]
        offline_cores: bool,
    },
    /// List the enclaves.
    List,
    /// Show enclaves' counters.
    Stats {
        /// Only this enclave.
        name: Option<String>,
        /// Print again every SECS seconds (default 1), with exits per second.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// Sample twice, 1 s apart, to show exits per second.
        #[arg(long)]
        rate: bool,
        /// Output format.
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Show atoll's own figures (pool, enclaves, requests).
    Info,
    /// Attach to an enclave's console (leave with Ctrl-]).
    Console {
        /// The enclave.
        name: String,
        /// Do not forward input.
        #[arg(long)]
        no_input: bool,
        /// Exit 0 as soon as the output contains TEXT (exit 1 if the enclave stops first).
        #[arg(long, value_name = "TEXT")]
        until: Option<String>,
        /// Exit 1 after SECS seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// When input is not a terminal: exit SECS seconds after its end.
        #[arg(long, value_name = "SECS")]
        exit_after: Option<f64>,
    },
    /// Destroy an enclave: stop it, zero its memory, return its cores.
    Destroy {
        /// The enclave.
        name: String,
        /// Online the host's CPUs of its cores afterwards.
        #[arg(long)]
        online_cores: bool,
    },
    /// Ready an SR-IOV physical function's virtual functions for enclaves (count, MACs).
    Vf {
        /// The physical function (0000:01:00.0 or 01:00.0).
        pf: crate::pci::PciAddress,
        /// How many VFs to enable (0 disables them).
        #[arg(long)]
        count: u32,
        /// A VF's MAC, once per VF in order (default 02:a7:BB:DD:FF:II from the PF's address).
        #[arg(long = "mac", value_name = "MAC")]
        macs: Vec<crate::netlink::Mac>,
    },
    /// Send a raw request (for tests).
    #[command(hide = true)]
    Raw {
        /// The kind number.
        #[arg(long, required_unless_present = "slot_garbage")]
        kind: Option<u16>,
        /// The payload (or with --slot-garbage the slot's bytes) in hex.
        #[arg(long, value_name = "BYTES")]
        hex: Option<String>,
        /// Write garbage (not a message) into a slot and ring the doorbell.
        #[arg(long)]
        slot_garbage: bool,
    },
}
