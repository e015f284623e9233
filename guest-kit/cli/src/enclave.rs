//! Owned copies of what atoll reports, for printing and JSON.

use crate::client::{decode, Client, Result};
use atoll_abi::control::{read_records, Info, Kind, Target, EXIT_KINDS, VCPU_EXIT_CLASSES};
use serde::Serialize;
use std::collections::BTreeMap;

/// One enclave as List and Stats report it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Enclave {
    /// Its name.
    pub name: String,
    /// Its partition id.
    pub id: u16,
    /// loading, running, ended or failed.
    pub state: &'static str,
    /// Its cores (APIC ids).
    pub cores: Vec<u32>,
    /// Its RAM in MiB.
    pub memory_mib: u64,
    /// Microseconds since it started (frozen at its end).
    pub uptime_us: u64,
    /// Exits by kind, every kind atoll counts.
    pub exits: BTreeMap<&'static str, u64>,
    /// Exits of each vCPU, in vCPU order (vCPU i on its i-th core); empty for a bare-metal
    /// enclave.
    pub vcpu_exits: Vec<u64>,
    /// The same by class (timer, ipi, hlt, other).
    pub vcpu_exit_classes: Vec<BTreeMap<&'static str, u64>>,
    /// Interrupts atoll injected.
    pub interrupts_injected: u64,
    /// IPIs dropped.
    pub ipis_dropped: u64,
    /// Console bytes dropped.
    pub console_bytes_dropped: u64,
    /// Interrupts of its passed-through functions delivered to it.
    pub device_interrupts: u64,
    /// DMA faults of its passed-through functions.
    pub dma_faults: u64,
    /// Interrupt faults of its passed-through functions.
    pub interrupt_faults: u64,
    /// Descriptor chains its virtio devices completed.
    pub virtio_chains: u64,
    /// Malformed descriptor chains of its guest.
    pub virtio_bad_chains: u64,
    /// Malformed records or indices of the host's daemon on its channel.
    pub virtio_host_errors: u64,
    /// Restarts.
    pub restarts: u32,
    /// Why it ended or failed.
    pub reason: String,
}

/// Asks `kind` (List or Stats) about `name` (empty: all) and decodes the records.
pub fn records(client: &mut Client, kind: Kind, name: &str) -> Result<Vec<Enclave>> {
    let p = client.call(kind, |w| {
        Target {
            id: Target::ANY,
            name,
        }
        .write(w)
    })?;
    let mut out = Vec::new();
    decode(
        "records",
        read_records(&p, |r| {
            out.push(Enclave {
                name: r.name.to_string(),
                id: r.id,
                state: r.state.name(),
                cores: r.cores.iter().collect(),
                memory_mib: r.memory_mib,
                uptime_us: r.uptime_us,
                exits: EXIT_KINDS.iter().copied().zip(r.exits).collect(),
                vcpu_exits: r.vcpu_exits.iter().map(|c| c.iter().sum()).collect(),
                vcpu_exit_classes: r
                    .vcpu_exits
                    .iter()
                    .map(|c| VCPU_EXIT_CLASSES.iter().copied().zip(c).collect())
                    .collect(),
                interrupts_injected: r.interrupts_injected,
                ipis_dropped: r.ipis_dropped,
                console_bytes_dropped: r.console_bytes_dropped,
                device_interrupts: r.device_interrupts,
                dma_faults: r.dma_faults,
                interrupt_faults: r.interrupt_faults,
                virtio_chains: r.virtio_chains,
                virtio_bad_chains: r.virtio_bad_chains,
                virtio_host_errors: r.virtio_host_errors,
                restarts: r.restarts,
                reason: r.reason.to_string(),
            })
        }),
    )?;
    Ok(out)
}

/// atoll's figures.
pub fn info(client: &mut Client) -> Result<Info> {
    let p = client.call(Kind::Info, |_| Ok(()))?;
    decode("info", Info::read(&p))
}

/// "1,2" for people.
pub fn cores_text(c: &[u32]) -> String {
    if c.is_empty() {
        return "-".into();
    }
    c.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// "3h04m05s", "4m05s", "5.2s".
pub fn uptime_text(us: u64) -> String {
    let s = us / 1_000_000;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, us / 100_000 % 10)
    }
}

/// A table: columns padded to their widest cell, two spaces apart, the last not padded.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}
