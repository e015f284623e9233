//! `atoll stats`: per-enclave counters as a table, JSON, or Prometheus text.

use crate::enclave::{cores_text, table, uptime_text, Enclave};
use atoll_abi::control::{Info, EXIT_KINDS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One enclave's counters and, with a previous sample, its exits per second.
#[derive(Clone, Debug, Serialize)]
pub struct EnclaveStats {
    /// The counters.
    #[serde(flatten)]
    pub enclave: Enclave,
    /// Exits per second by kind since the previous sample (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exits_per_second: Option<BTreeMap<&'static str, f64>>,
    /// Exits per second of each vCPU since the previous sample (absent without one, or when
    /// the enclave's vCPU count changed between the samples).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu_exits_per_second: Option<Vec<f64>>,
}

/// `atoll stats --json`'s document.
#[derive(Clone, Debug, Serialize)]
pub struct StatsDoc {
    /// Seconds between the two samples the rates come from (absent without rates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<f64>,
    /// Every enclave asked about.
    pub enclaves: Vec<EnclaveStats>,
}

/// Pairs `now` with `prev` (taken `secs` earlier) by id and name: rates for enclaves in both.
pub fn with_rates(now: Vec<Enclave>, prev: Option<(&[Enclave], f64)>) -> StatsDoc {
    let enclaves = now
        .into_iter()
        .map(|e| {
            let old = prev.and_then(|(p, secs)| {
                let old = p.iter().find(|o| o.id == e.id && o.name == e.name)?;
                (secs > 0.0).then_some((old, secs))
            });
            let vcpu_exits_per_second = old.and_then(|(old, secs)| {
                (old.vcpu_exits.len() == e.vcpu_exits.len() && !e.vcpu_exits.is_empty()).then(
                    || {
                        e.vcpu_exits
                            .iter()
                            .zip(&old.vcpu_exits)
                            .map(|(now, before)| now.saturating_sub(*before) as f64 / secs)
                            .collect()
                    },
                )
            });
            let exits_per_second = old.map(|(old, secs)| {
                e.exits
                    .iter()
                    .map(|(k, v)| {
                        let before = old.exits.get(k).copied().unwrap_or(0);
                        (*k, v.saturating_sub(before) as f64 / secs)
                    })
                    .collect()
            });
            EnclaveStats {
                enclave: e,
                exits_per_second,
                vcpu_exits_per_second,
            }
        })
        .collect();
    StatsDoc {
        interval_seconds: prev.map(|p| p.1),
        enclaves,
    }
}

/// The table for people: one block per enclave, its non-zero exit kinds in the order atoll
/// counts them.
pub fn render_table(doc: &StatsDoc) -> String {
    if doc.enclaves.is_empty() {
        return "no enclaves\n".into();
    }
    let mut out = String::new();
    for s in &doc.enclaves {
        let e = &s.enclave;
        let _ = writeln!(
            out,
            "{} (id {}): {}  cores {}  memory {} MiB  uptime {}  restarts {}",
            e.name,
            e.id,
            e.state,
            cores_text(&e.cores),
            e.memory_mib,
            uptime_text(e.uptime_us),
            e.restarts
        );
        if !e.reason.is_empty() {
            let _ = writeln!(out, "  reason: {}", e.reason);
        }
        let _ = writeln!(
            out,
            "  interrupts injected {}  IPIs dropped {}  console bytes dropped {}",
            e.interrupts_injected, e.ipis_dropped, e.console_bytes_dropped
        );
        if e.device_interrupts + e.dma_faults + e.interrupt_faults > 0 {
            let _ = writeln!(
                out,
                "  device interrupts {}  DMA faults {}  interrupt faults {}",
                e.device_interrupts, e.dma_faults, e.interrupt_faults
            );
        }
        if e.virtio_chains + e.virtio_bad_chains + e.virtio_host_errors > 0 {
            let _ = writeln!(
                out,
                "  virtio chains {}  bad chains {}  host errors {}",
                e.virtio_chains, e.virtio_bad_chains, e.virtio_host_errors
            );
        }
        if !e.vcpu_exits.is_empty() {
            let per: Vec<String> = e
                .vcpu_exits
                .iter()
                .enumerate()
                .map(
                    |(i, n)| match s.vcpu_exits_per_second.as_ref().and_then(|r| r.get(i)) {
                        Some(r) => format!("{i}: {n} ({r:.1}/s)"),
                        None => format!("{i}: {n}"),
                    },
                )
                .collect();
            let _ = writeln!(out, "  exits per vCPU  {}", per.join("  "));
        }
        let rows: Vec<Vec<String>> = EXIT_KINDS
            .iter()
            .filter_map(|k| {
                let total = *e.exits.get(k)?;
                let rate = s.exits_per_second.as_ref().and_then(|r| r.get(k).copied());
                (total > 0).then(|| {
                    vec![
                        format!("  {k}"),
                        total.to_string(),
                        rate.map_or("-".into(), |r| format!("{r:.1}")),
                    ]
                })
            })
            .collect();
        if rows.is_empty() {
            let _ = writeln!(out, "  no exits");
        } else {
            out.push_str(&table(&["  EXIT", "TOTAL", "PER_SEC"], &rows));
        }
    }
    out
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition format (for node_exporter's textfile collector).
pub fn render_prometheus(enclaves: &[Enclave], info: &Info) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    let per = |f: &dyn Fn(&Enclave) -> String| -> Vec<(String, String)> {
        enclaves
            .iter()
            .map(|e| (format!("enclave=\"{}\"", label(&e.name)), f(e)))
            .collect()
    };
    let mut exits = Vec::new();
    for e in enclaves {
        for k in EXIT_KINDS {
            let v = e.exits.get(k).copied().unwrap_or(0);
            exits.push((
                format!("enclave=\"{}\",kind=\"{k}\"", label(&e.name)),
                v.to_string(),
            ));
        }
    }
    family(
        "atoll_enclave_exits_total",
        "counter",
        "VM exits of the enclave's vCPUs by kind.",
        exits,
    );
    let mut vcpus = Vec::new();
    for e in enclaves {
        for (i, classes) in e.vcpu_exit_classes.iter().enumerate() {
            for (class, n) in classes {
                vcpus.push((
                    format!(
                        "enclave=\"{}\",vcpu=\"{i}\",class=\"{class}\"",
                        label(&e.name)
                    ),
                    n.to_string(),
                ));
            }
        }
    }
    family(
        "atoll_enclave_vcpu_exits_total",
        "counter",
        "VM exits of each of the enclave's vCPUs (vCPU i on its i-th core) by class: timer, ipi, hlt, other.",
        vcpus,
    );
    family(
        "atoll_enclave_uptime_seconds",
        "gauge",
        "Seconds since the enclave started (frozen when it ended).",
        per(&|e| format!("{}", e.uptime_us as f64 / 1e6)),
    );
    family(
        "atoll_enclave_memory_bytes",
        "gauge",
        "The enclave's RAM in bytes.",
        per(&|e| (e.memory_mib << 20).to_string()),
    );
    let mut states = Vec::new();
    for e in enclaves {
        for s in ["loading", "running", "ended", "failed"] {
            states.push((
                format!("enclave=\"{}\",state=\"{s}\"", label(&e.name)),
                u8::from(e.state == s).to_string(),
            ));
        }
    }
    family(
        "atoll_enclave_state",
        "gauge",
        "1 for the enclave's state, 0 for the others.",
        states,
    );
    family(
        "atoll_enclave_interrupts_injected_total",
        "counter",
        "Interrupts atoll injected into the enclave.",
        per(&|e| e.interrupts_injected.to_string()),
    );
    family(
        "atoll_enclave_ipis_dropped_total",
        "counter",
        "IPIs the enclave sent to cores not its own, dropped.",
        per(&|e| e.ipis_dropped.to_string()),
    );
    family(
        "atoll_enclave_console_bytes_dropped_total",
        "counter",
        "Console bytes past the enclave's budget, dropped.",
        per(&|e| e.console_bytes_dropped.to_string()),
    );
    family(
        "atoll_enclave_device_interrupts_total",
        "counter",
        "Interrupts of the enclave's passed-through functions delivered to it.",
        per(&|e| e.device_interrupts.to_string()),
    );
    family(
        "atoll_enclave_dma_faults_total",
        "counter",
        "VT-d DMA faults of the enclave's passed-through functions.",
        per(&|e| e.dma_faults.to_string()),
    );
    family(
        "atoll_enclave_virtio_chains_total",
        "counter",
        "Descriptor chains the enclave's virtio devices completed.",
        per(&|e| e.virtio_chains.to_string()),
    );
    family(
        "atoll_enclave_virtio_bad_chains_total",
        "counter",
        "Malformed descriptor chains of the enclave's guest (each needed a device reset).",
        per(&|e| e.virtio_bad_chains.to_string()),
    );
    family(
        "atoll_enclave_virtio_host_errors_total",
        "counter",
        "Malformed records or ring indices of the host's daemon on the enclave's channel.",
        per(&|e| e.virtio_host_errors.to_string()),
    );
    family(
        "atoll_enclave_interrupt_faults_total",
        "counter",
        "VT-d interrupt faults of the enclave's passed-through functions.",
        per(&|e| e.interrupt_faults.to_string()),
    );
    family(
        "atoll_enclave_restarts_total",
        "counter",
        "Times the enclave was restarted.",
        per(&|e| e.restarts.to_string()),
    );
    family(
        "atoll_pool_bytes",
        "gauge",
        "Bytes in atoll's enclave memory pool.",
        vec![(String::new(), info.pool_bytes.to_string())],
    );
    family(
        "atoll_pool_free_bytes",
        "gauge",
        "Bytes of the pool free now.",
        vec![(String::new(), info.pool_free_bytes.to_string())],
    );
    out
}
