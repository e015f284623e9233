//! `cargo xtask bench net`: the network over an SR-IOV virtual function passed through to an
//! enclave (issue 13), against the same NIC driven by the host itself.
//!
//! It boots the `bench-net` scenario (QEMU only: Bochs has no VT-d and no SR-IOV NIC), whose
//! host runs the guest image's `bench_net` action: igb on QEMU's `igb` PF, two VFs enabled with
//! `atoll vf`, then
//!
//! * the **baseline**, host ↔ host: VF 1 bound to the host's own `igbvf` and moved into a
//!   network namespace, so its packets go VF 1 → the NIC's switch → PF, the enclave's path
//!   without atoll; from there it pings the PF `atoll.net_pings` times and sends it
//!   `atoll.net_bytes` over TCP;
//! * the **enclave** with VF 0 doing the same (`vf_net`); the host takes `atoll stats --json`
//!   of it when its data phase begins and when it ends (it prints `ATOLL-NET begin` and
//!   `ATOLL-NET end` around its pings and transfer and pauses after each, so the window holds
//!   neither its boot nor the printing of its result), and the enclave counts its interface's
//!   packets across the phase;
//! * then **virtio-net** (issue 14): an enclave whose network is a virtio-net device on the
//!   host's tap `atl0`, served by `atoll-channeld` over a channel window, doing the same
//!   (the action `vnet`: `vf_net` over virtio_net), with the same stats window. Its throughput
//!   is compared with the VF enclave's (the goal: at least half) and its exits are
//!   counted per frame on the wire (the goal: below one, with event-index batching; the
//!   enclave's TCP segments and ICMP messages, since with segmentation offload one packet of
//!   the interface's is up to 45 frames) and per packet. A failure of this
//!   round is reported after the VF's figures, and makes the bench fail.
//!
//! QEMU's absolute figures measure its TCG emulation, so the bench reports the enclave's
//! round trip and throughput as ratios against the baseline of the same run, and what the
//! enclave cost atoll per 1,000 packets of its data phase: exits (by kind), device interrupts
//! delivered and interrupts injected. Throughput is the host receiver's (`atoll-check
//! --tcp-recv`: from its accept to the sender's end of file) for both sides, so one clock
//! measures both. This prints a table and writes `target/bench/net-qemu.json`.

use crate::run::run;
use crate::scenario::{lookup, Emulator, Scenario};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The scenario the bench boots.
pub const SCENARIO: &str = "bench-net";

/// Why the bench does not run on Bochs.
pub const BOCHS_REFUSAL: &str = "bench net needs QEMU: Bochs emulates no VT-d IOMMU and no \
    SR-IOV NIC, so there is no virtual function to pass through (run it with --emulator qemu)";

/// A JSON number at `key` of `v` (integers and floats).
fn num(v: &Value, key: &str, what: &str) -> Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("{what}: {key} is missing or not a number in {v}"))
}

/// A JSON count at `key` of `v`.
fn count(v: &Value, key: &str, what: &str) -> Result<u64> {
    v.get(key)
        .and_then(Value::as_u64)
        .with_context(|| format!("{what}: {key} is missing or not a count in {v}"))
}

/// An interface's packet counters before and after a data phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packets {
    pub rx_before: u64,
    pub rx_after: u64,
    pub tx_before: u64,
    pub tx_after: u64,
    /// Frames on the wire both ways (TCP segments and ICMP messages, as the stack counts
    /// them) before and after, when the side reported them: with segmentation offload one
    /// packet of the interface's is many frames.
    pub frames: Option<(u64, u64)>,
}

impl Packets {
    /// `{rx_before, tx_before, rx_after, tx_after}` as `/init` writes it, and
    /// `frames_before`/`frames_after` when both are counts.
    pub fn parse(v: &Value, what: &str) -> Result<Packets> {
        let frames = match (
            v.get("frames_before").and_then(Value::as_u64),
            v.get("frames_after").and_then(Value::as_u64),
        ) {
            (Some(b), Some(a)) => Some((b, a)),
            _ => None,
        };
        let p = Packets {
            rx_before: count(v, "rx_before", what)?,
            rx_after: count(v, "rx_after", what)?,
            tx_before: count(v, "tx_before", what)?,
            tx_after: count(v, "tx_after", what)?,
            frames,
        };
        if p.rx_after < p.rx_before
            || p.tx_after < p.tx_before
            || frames.is_some_and(|(b, a)| a < b)
        {
            bail!("{what}: a packet counter went backwards: {v}");
        }
        Ok(p)
    }

    /// Frames on the wire in the phase, when counted.
    pub fn frames(&self) -> Option<u64> {
        self.frames.map(|(b, a)| a - b)
    }

    /// Packets received in the phase.
    pub fn rx(&self) -> u64 {
        self.rx_after - self.rx_before
    }

    /// Packets sent in the phase.
    pub fn tx(&self) -> u64 {
        self.tx_after - self.tx_before
    }

    /// Both ways.
    pub fn total(&self) -> u64 {
        self.rx() + self.tx()
    }
}

/// One side's figures: the round trip of its pings and the TCP transfer as the host's
/// receiver saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    pub pings_sent: u64,
    pub pings_received: u64,
    /// Average round trip (busybox ping's summary), milliseconds.
    pub rtt_avg_ms: f64,
    /// Bytes the receiver got.
    pub tcp_bytes: u64,
    /// The receiver's seconds from accepting the connection to its end.
    pub tcp_seconds: f64,
    /// The interface's packets over the data phase.
    pub packets: Packets,
}

impl Side {
    /// `result` holds `pings_sent`, `pings_received`, `rtt_avg_ms` and `packets`; `recv` is the
    /// host receiver's report (`{bytes, seconds, matches, error}`), which must say the stream
    /// arrived intact.
    pub fn parse(result: &Value, recv: &Value, what: &str) -> Result<Side> {
        if recv.get("matches").and_then(Value::as_bool) != Some(true) {
            bail!("{what}: the TCP stream did not arrive intact: {recv}");
        }
        let side = Side {
            pings_sent: count(result, "pings_sent", what)?,
            pings_received: count(result, "pings_received", what)?,
            rtt_avg_ms: num(result, "rtt_avg_ms", what)?,
            tcp_bytes: count(recv, "bytes", what)?,
            tcp_seconds: num(recv, "seconds", what)?,
            packets: Packets::parse(
                result
                    .get("packets")
                    .with_context(|| format!("{what}: no packets in {result}"))?,
                what,
            )?,
        };
        if side.pings_sent == 0 || side.pings_received != side.pings_sent {
            bail!(
                "{what}: {} of {} pings came back",
                side.pings_received,
                side.pings_sent
            );
        }
        if side.tcp_seconds <= 0.0 {
            bail!("{what}: the transfer took no time: {recv}");
        }
        Ok(side)
    }

    /// TCP throughput in MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.tcp_bytes as f64 / self.tcp_seconds / 1e6
    }
}

/// What `atoll stats NAME --json` said of the enclave at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub uptime_us: u64,
    /// Exits by kind (every kind atoll counts).
    pub exits: BTreeMap<String, u64>,
    pub interrupts_injected: u64,
    pub device_interrupts: u64,
    /// Descriptor chains its virtio devices completed (when its stats count them).
    pub virtio_chains: Option<u64>,
}

impl Snapshot {
    /// The document `{enclaves: [one enclave]}`.
    pub fn parse(doc: &Value, what: &str) -> Result<Snapshot> {
        let enclaves = doc
            .get("enclaves")
            .and_then(Value::as_array)
            .with_context(|| format!("{what}: not atoll's stats (no enclaves): {doc}"))?;
        let [e] = enclaves.as_slice() else {
            bail!(
                "{what}: expected the stats of one enclave, got {}",
                enclaves.len()
            );
        };
        let exits = e
            .get("exits")
            .and_then(Value::as_object)
            .with_context(|| format!("{what}: no exits"))?
            .iter()
            .map(|(k, v)| {
                v.as_u64()
                    .map(|n| (k.clone(), n))
                    .with_context(|| format!("{what}: exits.{k} is not a count"))
            })
            .collect::<Result<_>>()?;
        Ok(Snapshot {
            uptime_us: count(e, "uptime_us", what)?,
            exits,
            interrupts_injected: count(e, "interrupts_injected", what)?,
            device_interrupts: count(e, "device_interrupts", what)?,
            virtio_chains: match e.get("virtio_chains") {
                None => None,
                Some(_) => Some(count(e, "virtio_chains", what)?),
            },
        })
    }
}

/// What happened in the enclave between two snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub us: u64,
    /// Exits by kind, the kinds with at least one, the most frequent first.
    pub exits: Vec<(String, u64)>,
    pub interrupts_injected: u64,
    pub device_interrupts: u64,
    /// Virtio descriptor chains completed, when both snapshots count them.
    pub virtio_chains: Option<u64>,
}

impl Window {
    /// `end` minus `begin`; an error if a counter went backwards (not the same enclave).
    pub fn between(begin: &Snapshot, end: &Snapshot) -> Result<Window> {
        let sub = |a: u64, b: u64, what: &str| {
            b.checked_sub(a)
                .with_context(|| format!("{what} went backwards between the snapshots: {a} → {b}"))
        };
        let mut exits = Vec::new();
        for (k, &n) in &end.exits {
            let d = sub(begin.exits.get(k).copied().unwrap_or(0), n, k)?;
            if d > 0 {
                exits.push((k.clone(), d));
            }
        }
        if let Some(k) = begin.exits.keys().find(|k| !end.exits.contains_key(*k)) {
            bail!("exit kind {k} is in the first snapshot only");
        }
        exits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(Window {
            us: sub(begin.uptime_us, end.uptime_us, "uptime_us")?,
            exits,
            interrupts_injected: sub(
                begin.interrupts_injected,
                end.interrupts_injected,
                "interrupts_injected",
            )?,
            device_interrupts: sub(
                begin.device_interrupts,
                end.device_interrupts,
                "device_interrupts",
            )?,
            virtio_chains: match (begin.virtio_chains, end.virtio_chains) {
                (Some(a), Some(b)) => Some(sub(a, b, "virtio_chains")?),
                _ => None,
            },
        })
    }

    /// Every exit in it.
    pub fn total(&self) -> u64 {
        self.exits.iter().map(|(_, n)| n).sum()
    }
}

/// `n` per 1,000 of `packets` (0 packets: none measured, so 0 rather than infinity).
pub fn per_1000(n: u64, packets: u64) -> f64 {
    if packets == 0 {
        return 0.0;
    }
    n as f64 * 1000.0 / packets as f64
}

/// The virtio-net round (issue 14): an enclave with a virtio-net device on the host's tap,
/// served by `atoll-channeld` over a channel window, doing what the VF's enclave does.
#[derive(Clone, Debug, PartialEq)]
pub struct VirtioNet {
    pub side: Side,
    pub window: Window,
}

impl VirtioNet {
    /// From the host's results `bench_net_virtio` (`recv`: its receiver of the enclave's
    /// transfer, `stats_begin`, `stats_end`, `problem`) and `bench_net_virtio_enclave` (the
    /// enclave's `vf_net` result).
    pub fn parse(round: &Value, enclave: &Value) -> Result<VirtioNet> {
        match round.get("problem").and_then(Value::as_str) {
            Some("") => {}
            Some(p) => bail!("bench_net_virtio: {p}"),
            None => bail!("bench_net_virtio: no problem field in {round}"),
        }
        let field = |k: &str| {
            round
                .get(k)
                .filter(|v| !v.is_null())
                .with_context(|| format!("bench_net_virtio: no {k}"))
        };
        if enclave.is_null() {
            bail!("bench_net_virtio_enclave: the enclave reported nothing");
        }
        Ok(VirtioNet {
            side: Side::parse(enclave, field("recv")?, "virtio-net enclave")?,
            window: Window::between(
                &Snapshot::parse(field("stats_begin")?, "virtio stats_begin")?,
                &Snapshot::parse(field("stats_end")?, "virtio stats_end")?,
            )?,
        })
    }

    /// Exits per packet of its data phase (both ways), packets as the interface counts them
    /// (a 64 KiB segmentation-offload packet is one).
    pub fn exits_per_packet(&self) -> f64 {
        per_1000(self.window.total(), self.side.packets.total()) / 1000.0
    }

    /// Exits per frame on the wire (TCP segments and ICMP messages both ways), when the
    /// enclave counted them: the same network work whether or not the guest offloads
    /// segmentation, so comparable with the VF's and an unoffloaded run's packets.
    pub fn exits_per_frame(&self) -> Option<f64> {
        self.side
            .packets
            .frames()
            .map(|f| per_1000(self.window.total(), f) / 1000.0)
    }

    /// What the exit goal is judged on: per frame on the wire when counted, else per
    /// packet; and its name.
    pub fn exits_per_unit(&self) -> (f64, &'static str) {
        match self.exits_per_frame() {
            Some(e) => (e, "frame on the wire"),
            None => (self.exits_per_packet(), "packet"),
        }
    }
}

/// The bench's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct NetBench {
    pub baseline: Side,
    pub enclave: Side,
    pub window: Window,
    /// The virtio-net round, when it was measured.
    pub virtio: Option<VirtioNet>,
}

impl NetBench {
    /// From the host's results: `bench_net` (`baseline` with its `recv`, `enclave`,
    /// `stats_begin`, `stats_end`, `problem`) and `bench_net_round` (`recv1`: the host's
    /// receiver of the enclave's transfer).
    pub fn parse(bench: &Value, round: &Value) -> Result<NetBench> {
        match bench.get("problem").and_then(Value::as_str) {
            Some("") => {}
            Some(p) => bail!("bench_net: {p}"),
            None => bail!("bench_net: no problem field in {bench}"),
        }
        let field = |k: &str| {
            bench
                .get(k)
                .filter(|v| !v.is_null())
                .with_context(|| format!("bench_net: no {k}"))
        };
        let baseline = field("baseline")?;
        let baseline = Side::parse(
            baseline,
            baseline
                .get("recv")
                .context("bench_net: the baseline has no recv")?,
            "baseline",
        )?;
        let enclave = Side::parse(
            field("enclave")?,
            round
                .get("recv1")
                .context("bench_net_round: no recv1 (the host's receiver of the enclave)")?,
            "enclave",
        )?;
        let window = Window::between(
            &Snapshot::parse(field("stats_begin")?, "stats_begin")?,
            &Snapshot::parse(field("stats_end")?, "stats_end")?,
        )?;
        Ok(NetBench {
            baseline,
            enclave,
            window,
            virtio: None,
        })
    }

    /// The enclave's round trip over the baseline's (above 1: slower).
    pub fn rtt_ratio(&self) -> f64 {
        self.enclave.rtt_avg_ms / self.baseline.rtt_avg_ms
    }

    /// The enclave's throughput over the baseline's (below 1: slower).
    pub fn throughput_ratio(&self) -> f64 {
        self.enclave.mb_per_s() / self.baseline.mb_per_s()
    }

    /// Packets of the enclave's data phase (both ways).
    pub fn packets(&self) -> u64 {
        self.enclave.packets.total()
    }

    /// The table the bench prints.
    pub fn table(&self) -> String {
        let (b, e) = (&self.baseline, &self.enclave);
        let mut out = format!(
            "{:<28} {:>12} {:>12} {:>8}\n",
            "", "enclave", "host↔host", "ratio"
        );
        out.push_str(&format!(
            "{:<28} {:>12.3} {:>12.3} {:>8.2}\n",
            format!("ping RTT avg, ms ({})", e.pings_sent),
            e.rtt_avg_ms,
            b.rtt_avg_ms,
            self.rtt_ratio()
        ));
        out.push_str(&format!(
            "{:<28} {:>12.2} {:>12.2} {:>8.2}\n",
            format!("TCP, MB/s ({} MiB)", e.tcp_bytes >> 20),
            e.mb_per_s(),
            b.mb_per_s(),
            self.throughput_ratio()
        ));
        out.push_str(&format!(
            "{:<28} {:>12} {:>12}\n",
            "packets (rx + tx)",
            format!("{} + {}", e.packets.rx(), e.packets.tx()),
            format!("{} + {}", b.packets.rx(), b.packets.tx()),
        ));
        let w = &self.window;
        let p = self.packets();
        out.push_str(&format!(
            "\nthe enclave's data phase: {:.1} s, {p} packets\n{:<28} {:>12} {:>14}\n",
            w.us as f64 / 1e6,
            "",
            "count",
            "per 1,000 pkts"
        ));
        let mut row = |k: &str, n: u64| {
            out.push_str(&format!("{:<28} {:>12} {:>14.1}\n", k, n, per_1000(n, p)));
        };
        row("exits", w.total());
        for (k, n) in &w.exits {
            row(&format!("  {k}"), *n);
        }
        row("device interrupts", w.device_interrupts);
        row("interrupts injected", w.interrupts_injected);
        if let Some(v) = &self.virtio {
            out.push('\n');
            out.push_str(&self.virtio_table(v));
        }
        out
    }

    /// The virtio-net enclave's throughput over the VF enclave's (issue 14's goal: ≥ 0.5).
    pub fn virtio_vs_vf(&self, v: &VirtioNet) -> f64 {
        v.side.mb_per_s() / self.enclave.mb_per_s()
    }

    /// The table's virtio-net part.
    fn virtio_table(&self, v: &VirtioNet) -> String {
        let (s, e, b) = (&v.side, &self.enclave, &self.baseline);
        let mut out = format!(
            "{:<28} {:>12} {:>12} {:>8} {:>12}\n",
            "", "virtio-net", "VF enclave", "ratio", "/host↔host"
        );
        out.push_str(&format!(
            "{:<28} {:>12.3} {:>12.3} {:>8.2} {:>12.2}\n",
            format!("ping RTT avg, ms ({})", s.pings_sent),
            s.rtt_avg_ms,
            e.rtt_avg_ms,
            s.rtt_avg_ms / e.rtt_avg_ms,
            s.rtt_avg_ms / b.rtt_avg_ms
        ));
        out.push_str(&format!(
            "{:<28} {:>12.2} {:>12.2} {:>8.2} {:>12.2}\n",
            format!("TCP, MB/s ({} MiB)", s.tcp_bytes >> 20),
            s.mb_per_s(),
            e.mb_per_s(),
            self.virtio_vs_vf(v),
            s.mb_per_s() / b.mb_per_s()
        ));
        out.push_str(&format!(
            "{:<28} {:>12} {:>12}\n",
            "packets (rx + tx)",
            format!("{} + {}", s.packets.rx(), s.packets.tx()),
            format!("{} + {}", e.packets.rx(), e.packets.tx()),
        ));
        let w = &v.window;
        let p = s.packets.total();
        out.push_str(&format!(
            "\nthe virtio-net enclave's data phase: {:.1} s, {p} packets\n{:<28} {:>12} {:>14}\n",
            w.us as f64 / 1e6,
            "",
            "count",
            "per 1,000 pkts"
        ));
        let mut row = |k: &str, n: u64| {
            out.push_str(&format!("{:<28} {:>12} {:>14.1}\n", k, n, per_1000(n, p)));
        };
        row("exits", w.total());
        for (k, n) in &w.exits {
            row(&format!("  {k}"), *n);
        }
        row("device interrupts", w.device_interrupts);
        row("interrupts injected", w.interrupts_injected);
        if let Some(c) = w.virtio_chains {
            row("virtio chains completed", c);
        }
        if let Some(f) = s.packets.frames() {
            out.push_str(&format!(
                "{:<28} {:>12} {:>14.2}\n",
                "frames on the wire",
                f,
                v.exits_per_frame().unwrap_or(0.0)
            ));
            out.push_str("  (TCP segments + ICMP messages; last column: exits per frame)\n");
        }
        let met = |ok: bool| if ok { "met" } else { "not met" };
        let ratio = self.virtio_vs_vf(v);
        let (per, unit) = v.exits_per_unit();
        out.push_str(&format!(
            "goal (issue 14): throughput ≥ 0.50 of the VF's: {ratio:.2}, {}; exits per {unit} < 1: {per:.2}, {}\n",
            met(ratio >= 0.5),
            met(per < 1.0)
        ));
        out
    }

    /// The JSON the bench writes (the figures; the caller adds the raw results).
    pub fn json(&self) -> Value {
        let mut j = self.vf_json();
        if let Some(v) = &self.virtio {
            let w = &v.window;
            let p = v.side.packets.total();
            j["virtio_net"] = json!({
                "pings": v.side.pings_sent,
                "rtt_avg_ms": v.side.rtt_avg_ms,
                "tcp_bytes": v.side.tcp_bytes,
                "tcp_seconds": v.side.tcp_seconds,
                "tcp_mb_per_s": v.side.mb_per_s(),
                "rx_packets": v.side.packets.rx(),
                "tx_packets": v.side.packets.tx(),
                "throughput_vs_vf": self.virtio_vs_vf(v),
                "throughput_vs_baseline": v.side.mb_per_s() / self.baseline.mb_per_s(),
                "rtt_vs_vf": v.side.rtt_avg_ms / self.enclave.rtt_avg_ms,
                "exits_per_packet": v.exits_per_packet(),
                "frames": v.side.packets.frames(),
                "exits_per_frame": v.exits_per_frame(),
                "data_phase": {
                    "seconds": w.us as f64 / 1e6,
                    "packets": p,
                    "exits": w.total(),
                    "exits_by_kind": w.exits.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
                    "device_interrupts": w.device_interrupts,
                    "interrupts_injected": w.interrupts_injected,
                    "virtio_chains": w.virtio_chains,
                },
            });
        }
        j
    }

    /// The VF's part of the JSON.
    fn vf_json(&self) -> Value {
        let p = self.packets();
        let side = |s: &Side| {
            json!({
                "pings": s.pings_sent,
                "rtt_avg_ms": s.rtt_avg_ms,
                "tcp_bytes": s.tcp_bytes,
                "tcp_seconds": s.tcp_seconds,
                "tcp_mb_per_s": s.mb_per_s(),
                "rx_packets": s.packets.rx(),
                "tx_packets": s.packets.tx(),
            })
        };
        let w = &self.window;
        json!({
            "enclave": side(&self.enclave),
            "baseline": side(&self.baseline),
            "rtt_ratio": self.rtt_ratio(),
            "throughput_ratio": self.throughput_ratio(),
            "data_phase": {
                "seconds": w.us as f64 / 1e6,
                "packets": p,
                "exits": w.total(),
                "exits_by_kind": w.exits.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "device_interrupts": w.device_interrupts,
                "interrupts_injected": w.interrupts_injected,
                "per_1000_packets": {
                    "exits": per_1000(w.total(), p),
                    "exits_by_kind": w.exits.iter().map(|(k, n)| (k.clone(), json!(per_1000(*n, p)))).collect::<serde_json::Map<_, _>>(),
                    "device_interrupts": per_1000(w.device_interrupts, p),
                    "interrupts_injected": per_1000(w.interrupts_injected, p),
                },
            },
        })
    }
}

/// Runs the bench and prints its table (`poll`: the virtio-net round with atoll-channeld
/// polling, see [`crate::bench_blk::POLL_WORD`]).
pub fn bench(emulator: Emulator, poll: bool) -> Result<()> {
    if emulator == Emulator::Bochs {
        bail!("{BOCHS_REFUSAL}");
    }
    let scenario = Scenario::load(SCENARIO)?;
    eprintln!(
        "bench net: {SCENARIO} on {} (timeout {} s)",
        emulator.name(),
        scenario.timeout_s.qemu
    );
    let o = run(&crate::bench_blk::run_options(emulator, SCENARIO, poll))?;
    if !o.passed() {
        bail!("{}", o.failure());
    }
    let summary = o.summary.as_ref().context("no summary")?;
    let bench = lookup(summary, "host.results.bench_net").context("no host result bench_net")?;
    let round = lookup(summary, "host.results.bench_net_round")
        .context("no host result bench_net_round")?;
    let mut figures = NetBench::parse(bench, round)?;
    // The virtio-net round: measured after the VF's; its failure is reported after the VF's
    // figures rather than instead of them.
    let virtio_round = lookup(summary, "host.results.bench_net_virtio");
    let virtio_enclave = lookup(summary, "host.results.bench_net_virtio_enclave");
    let virtio_problem = match (virtio_round, virtio_enclave) {
        (Some(r), Some(e)) => match VirtioNet::parse(r, e) {
            Ok(v) => {
                figures.virtio = Some(v);
                None
            }
            Err(e) => Some(format!("{e:#}")),
        },
        _ => Some("no host results bench_net_virtio and bench_net_virtio_enclave".to_string()),
    };
    println!(
        "the network over a passed-through VF (QEMU igb, {}), enclave ↔ host over VF 0 and \
         host ↔ host over VF 1, both through the NIC's switch to the PF; then an enclave ↔ the \
         host's tap over virtio-net served by atoll-channeld ({})",
        summary
            .get("cpu_virt")
            .and_then(Value::as_str)
            .unwrap_or("-"),
        crate::bench_blk::notify_note(poll)
    );
    print!("{}", figures.table());
    println!("wall {:.1} s", o.wall.as_secs_f64());
    let mut out = figures.json();
    crate::bench_blk::describe_run(&mut out, "net", emulator, summary, poll);
    out["results"] = json!({ "bench_net": bench, "bench_net_round": round,
        "bench_net_virtio": virtio_round, "bench_net_virtio_enclave": virtio_enclave });
    out["virtio_problem"] = json!(virtio_problem);
    out["wall_s"] = json!(o.wall.as_secs_f64());
    let path = crate::write_bench_json(&format!("net-{}", emulator.name()), &out)?;
    println!("wrote {}", path.display());
    if let Some(p) = virtio_problem {
        bail!("the virtio-net round: {p}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(uptime: u64, hlt: u64, ext: u64, msr: u64, inj: u64, dev: u64) -> Value {
        json!({"enclaves": [{"name": "vfnet1", "id": 0, "uptime_us": uptime,
            "exits": {"hlt": hlt, "external_interrupt": ext, "msr": msr, "cpuid": 7, "io": 0},
            "interrupts_injected": inj, "device_interrupts": dev, "dma_faults": 0}]})
    }

    fn side(rtt: f64, rx: (u64, u64), tx: (u64, u64)) -> Value {
        json!({"pings_sent": 100, "pings_received": 100, "rtt_avg_ms": rtt,
            "packets": {"rx_before": rx.0, "rx_after": rx.1, "tx_before": tx.0, "tx_after": tx.1}})
    }

    fn recv(bytes: u64, seconds: f64) -> Value {
        json!({"bytes": bytes, "seconds": seconds, "matches": true, "error": null, "sha256": "x"})
    }

    fn bench_doc() -> (Value, Value) {
        let mut baseline = side(1.0, (10, 1010), (20, 2020));
        baseline["recv"] = recv(16 << 20, 2.0);
        let bench = json!({
            "baseline": baseline,
            "enclave": side(2.5, (5, 1505), (7, 2507)),
            "stats_begin": stats(1_000_000, 10, 20, 30, 40, 50),
            "stats_end": stats(31_000_000, 310, 4020, 30, 5040, 3050),
            "problem": "",
        });
        let round = json!({"recv1": recv(16 << 20, 4.0), "create1": {"rc": 0}});
        (bench, round)
    }

    #[test]
    fn figures_and_ratios() {
        let (bench, round) = bench_doc();
        let f = NetBench::parse(&bench, &round).unwrap();
        assert!((f.rtt_ratio() - 2.5).abs() < 1e-9);
        assert!((f.baseline.mb_per_s() - 16.777216 / 2.0).abs() < 1e-9);
        assert!((f.throughput_ratio() - 0.5).abs() < 1e-9);
        assert_eq!(f.packets(), 1500 + 2500);
        let w = &f.window;
        assert_eq!(w.us, 30_000_000);
        // Kinds that did not change are left out; the most frequent first.
        assert_eq!(
            w.exits,
            vec![
                ("external_interrupt".to_string(), 4000),
                ("hlt".to_string(), 300)
            ]
        );
        assert_eq!(
            (w.total(), w.interrupts_injected, w.device_interrupts),
            (4300, 5000, 3000)
        );
        let j = f.json();
        assert_eq!(j["data_phase"]["per_1000_packets"]["exits"], json!(1075.0));
        assert_eq!(
            j["data_phase"]["per_1000_packets"]["device_interrupts"],
            json!(750.0)
        );
        assert_eq!(
            j["data_phase"]["per_1000_packets"]["exits_by_kind"]["hlt"],
            json!(75.0)
        );
        assert_eq!(j["enclave"]["rx_packets"], json!(1500));
        let t = f.table();
        for want in [
            "2.500",
            "1.000",
            "2.50",
            "0.50",
            "1075.0",
            "external_interrupt",
            "1250.0",
            "30.0 s, 4000 packets",
        ] {
            assert!(t.contains(want), "{want} not in\n{t}");
        }
        assert!(!t.contains("cpuid"), "{t}");
    }

    fn virtio_docs() -> (Value, Value) {
        let enclave = side(3.0, (0, 1000), (0, 3000));
        let mut round = json!({"create": {"rc": 0}, "recv": recv(16 << 20, 8.0),
            "stats_begin": stats(1_000_000, 10, 20, 30, 40, 0),
            "stats_end": stats(21_000_000, 1010, 2020, 30, 2040, 0), "problem": ""});
        round["stats_begin"]["enclaves"][0]["virtio_chains"] = json!(100);
        round["stats_end"]["enclaves"][0]["virtio_chains"] = json!(3100);
        (round, enclave)
    }

    #[test]
    fn with_segmentation_offload_exits_count_per_frame_on_the_wire() {
        let (bench, round) = bench_doc();
        let mut f = NetBench::parse(&bench, &round).unwrap();
        let (vr, mut ve) = virtio_docs();
        // 400 packets of the interface's, but 12,000 frames on the wire: TSO.
        ve["packets"] = json!({"rx_before": 0, "rx_after": 100, "tx_before": 0, "tx_after": 300,
            "frames_before": 500, "frames_after": 12_500});
        let v = VirtioNet::parse(&vr, &ve).unwrap();
        assert_eq!(v.side.packets.frames(), Some(12_000));
        assert!(
            (v.exits_per_packet() - 7.5).abs() < 1e-9,
            "3000 exits / 400 packets"
        );
        assert!((v.exits_per_frame().unwrap() - 0.25).abs() < 1e-9);
        assert_eq!(v.exits_per_unit().1, "frame on the wire");
        f.virtio = Some(v);
        let t = f.table();
        assert!(
            t.contains("exits per frame on the wire < 1: 0.25, met"),
            "{t}"
        );
        assert!(t.contains("frames on the wire"), "{t}");
        let j = f.json();
        assert_eq!(j["virtio_net"]["frames"], json!(12_000));
        assert_eq!(j["virtio_net"]["exits_per_frame"], json!(0.25));
        assert_eq!(j["virtio_net"]["exits_per_packet"], json!(7.5));
        // Frames that went backwards are refused; a side without them (the VF's) has none.
        ve["packets"]["frames_after"] = json!(400);
        let e = VirtioNet::parse(&vr, &ve).unwrap_err().to_string();
        assert!(e.contains("went backwards"), "{e}");
        assert_eq!(f.enclave.packets.frames(), None);
        assert_eq!(f.json()["virtio_net"]["frames"], json!(12_000));
    }

    #[test]
    fn the_virtio_round_beside_the_vf() {
        let (bench, round) = bench_doc();
        let mut f = NetBench::parse(&bench, &round).unwrap();
        assert_eq!(f.virtio, None);
        let vf_table = f.table();
        assert!(!vf_table.contains("virtio"), "{vf_table}");
        let (vr, ve) = virtio_docs();
        let v = VirtioNet::parse(&vr, &ve).unwrap();
        // 3000 exits over 4000 packets.
        assert!((v.exits_per_packet() - 0.75).abs() < 1e-9);
        f.virtio = Some(v);
        // 16 MiB in 8 s against the VF enclave's 4 s.
        assert!((f.virtio_vs_vf(f.virtio.as_ref().unwrap()) - 0.5).abs() < 1e-9);
        let t = f.table();
        assert!(t.starts_with(&vf_table), "{t}");
        for want in [
            "virtio-net",
            "VF enclave",
            "3.000",
            "1.20",
            "0.25",
            "the virtio-net enclave's data phase: 20.0 s, 4000 packets",
            "750.0",
            "throughput ≥ 0.50 of the VF's: 0.50, met; exits per packet < 1: 0.75, met",
        ] {
            assert!(t.contains(want), "{want} not in\n{t}");
        }
        let chains = t
            .lines()
            .find(|l| l.starts_with("virtio chains completed"))
            .unwrap();
        assert_eq!(
            chains.split_whitespace().collect::<Vec<_>>()[3..],
            ["3000", "750.0"]
        );
        let j = f.json();
        assert_eq!(j["virtio_net"]["throughput_vs_vf"], json!(0.5));
        assert_eq!(j["virtio_net"]["throughput_vs_baseline"], json!(0.25));
        assert_eq!(j["virtio_net"]["exits_per_packet"], json!(0.75));
        assert_eq!(
            j["virtio_net"]["data_phase"]["exits_by_kind"]["hlt"],
            json!(1000)
        );
        assert_eq!(j["virtio_net"]["data_phase"]["virtio_chains"], json!(3000));
        // Stats without the count (the VF's): none, not zero.
        assert_eq!(f.window.virtio_chains, None);
        let mut back = vr.clone();
        back["stats_end"]["enclaves"][0]["virtio_chains"] = json!(99);
        let e = VirtioNet::parse(&back, &ve).unwrap_err().to_string();
        assert!(e.contains("virtio_chains went backwards"), "{e}");
        // Goals missed are said so.
        let mut slow = f.clone();
        let v = slow.virtio.as_mut().unwrap();
        v.side.tcp_seconds = 16.0;
        v.side.packets.tx_after = 1000;
        let t = slow.table();
        assert!(
            t.contains("0.25, not met; exits per packet < 1: 1.50, not met"),
            "{t}"
        );
    }

    #[test]
    fn virtio_round_failures_are_reported() {
        let (vr, ve) = virtio_docs();
        let mut r = vr.clone();
        r["problem"] = json!("atoll create of the virtio-net enclave failed");
        let e = VirtioNet::parse(&r, &ve).unwrap_err().to_string();
        assert!(e.contains("create of the virtio-net enclave failed"), "{e}");
        let e = VirtioNet::parse(&vr, &Value::Null).unwrap_err().to_string();
        assert!(e.contains("reported nothing"), "{e}");
        let mut r = vr.clone();
        r["recv"]["matches"] = json!(false);
        let e = VirtioNet::parse(&r, &ve).unwrap_err().to_string();
        assert!(
            e.contains("virtio-net enclave") && e.contains("intact"),
            "{e}"
        );
        let mut r = vr;
        r["stats_begin"] = Value::Null;
        let e = VirtioNet::parse(&r, &ve).unwrap_err().to_string();
        assert!(e.contains("stats_begin"), "{e}");
    }

    #[test]
    fn per_1000_of_nothing_is_zero() {
        assert_eq!(per_1000(5, 0), 0.0);
        assert_eq!(per_1000(3, 1500), 2.0);
    }

    #[test]
    fn failures_are_reported() {
        let (bench, round) = bench_doc();
        let mut b = bench.clone();
        b["problem"] = json!("baseline: 99 of 100 pings came back");
        let e = NetBench::parse(&b, &round).unwrap_err().to_string();
        assert!(e.contains("99 of 100"), "{e}");
        // The enclave's stream did not arrive intact.
        let mut r = round.clone();
        r["recv1"]["matches"] = json!(false);
        let e = NetBench::parse(&bench, &r).unwrap_err().to_string();
        assert!(e.contains("enclave") && e.contains("intact"), "{e}");
        // A lost ping.
        let mut b = bench.clone();
        b["enclave"]["pings_received"] = json!(98);
        let e = NetBench::parse(&b, &round).unwrap_err().to_string();
        assert!(e.contains("98 of 100"), "{e}");
        // No snapshot (the host did not see the marker).
        let mut b = bench.clone();
        b["stats_begin"] = Value::Null;
        let e = NetBench::parse(&b, &round).unwrap_err().to_string();
        assert!(e.contains("stats_begin"), "{e}");
        // Snapshots of different enclaves: counters going backwards.
        let mut b = bench.clone();
        b["stats_end"] = stats(31_000_000, 5, 4020, 30, 5040, 3050);
        let e = NetBench::parse(&b, &round).unwrap_err().to_string();
        assert!(e.contains("hlt went backwards"), "{e}");
        // A packet counter going backwards.
        let mut b = bench.clone();
        b["enclave"]["packets"]["tx_after"] = json!(1);
        let e = NetBench::parse(&b, &round).unwrap_err().to_string();
        assert!(e.contains("backwards"), "{e}");
        // Two enclaves in a snapshot.
        let mut b = bench.clone();
        let one = b["stats_end"]["enclaves"][0].clone();
        b["stats_end"]["enclaves"] = json!([one.clone(), one]);
        let e = NetBench::parse(&b, &round).unwrap_err().to_string();
        assert!(e.contains("one enclave, got 2"), "{e}");
        // The ping summary missing (busybox printed none: rtt null).
        let mut b = bench;
        b["baseline"]["rtt_avg_ms"] = Value::Null;
        let e = NetBench::parse(&b, &round).unwrap_err().to_string();
        assert!(e.contains("rtt_avg_ms"), "{e}");
    }

    #[test]
    fn the_scenario_runs_the_action_on_qemu_only() {
        let s = Scenario::load(SCENARIO).unwrap();
        assert_eq!(s.emulators, vec!["qemu".to_string()]);
        let machine =
            std::fs::read_to_string(crate::root().join("tests/scenarios/machines/bench-net.toml"))
                .unwrap();
        assert!(machine.contains("atoll.actions=bench_net"), "{machine}");
        assert!(crate::guest_image::init_script().contains("bench_net) bench_net ;;"));
        let e = bench(Emulator::Bochs, false).unwrap_err().to_string();
        assert!(e.contains("--emulator qemu"), "{e}");
    }
}
