//! `cargo xtask bench idle --partition host`: the root partition's boot-to-init time and its
//! exits per second by kind while idle and while running a build-like load.
//!
//! It boots the `bench-host` scenario (the host's Linux alone on every core, no enclave) with
//! the host actions `idle:N,load:N,poweroff` (the guest image's `/init`: a sleep between
//! `ATOLL-IDLE begin`/`end` lines, then N seconds of gzip/gunzip/cmp build steps in a tmpfs on
//! every CPU between `ATOLL-LOAD begin`/`end` lines). atoll snapshots the host's exit counts by
//! kind at those lines and reports each window under `host.idle` and `host.load` (`us`,
//! `cycles` and one count per exit kind seen); this turns them into a table of exits per second
//! and writes `target/bench/idle-host-EMULATOR.json`.

use crate::guest_image::GuestKernel;
use crate::run::{run, RunOptions};
use crate::scenario::{lookup, Emulator, Scenario};
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The scenario the bench boots.
pub const SCENARIO: &str = "bench-host";

/// One measured window of the host: its length and its exits by kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Its length in microseconds (atoll's TSC).
    pub us: u64,
    /// Exits by kind (the kinds atoll saw in the window).
    pub exits: Vec<(String, u64)>,
    /// IPIs atoll sent for the host in the window (each cost the host nested-page-fault exits:
    /// its writes to the write-protected xAPIC ICR), if the summary says.
    pub ipis_sent: Option<u64>,
}

impl Window {
    /// The summary's `host.<name>` object: `us` (> 0), `cycles`, `ipis_sent`, and every other
    /// key an exit kind with its count.
    pub fn parse(v: &Value, name: &str) -> Result<Window> {
        let o = v
            .as_object()
            .with_context(|| format!("host.{name} is not an object"))?;
        let us = o
            .get("us")
            .and_then(Value::as_u64)
            .filter(|&us| us > 0)
            .with_context(|| {
                format!("host.{name}.us is missing or 0: the {name} window was not measured")
            })?;
        let mut exits = Vec::new();
        let mut ipis_sent = None;
        for (k, n) in o.iter().filter(|(k, _)| *k != "us" && *k != "cycles") {
            let n = n
                .as_u64()
                .with_context(|| format!("host.{name}.{k} is not a count"))?;
            if k == "ipis_sent" {
                ipis_sent = Some(n);
            } else {
                exits.push((k.clone(), n));
            }
        }
        Ok(Window {
            us,
            exits,
            ipis_sent,
        })
    }

    /// Its exits of `kind` (0 if atoll saw none).
    pub fn count(&self, kind: &str) -> u64 {
        self.exits
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| *n)
    }

    /// Every exit in it.
    pub fn total(&self) -> u64 {
        self.exits.iter().map(|(_, n)| n).sum()
    }

    /// `n` exits over the window, per second.
    pub fn rate(&self, n: u64) -> f64 {
        n as f64 * 1e6 / self.us as f64
    }
}

/// A row of the table: an exit kind (or `total`) and its count in each window.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub kind: String,
    pub idle: u64,
    pub load: u64,
}

/// The table's rows: every kind seen in either window, the most frequent (idle and load
/// rates added) first, then `total`.
pub fn rows(idle: &Window, load: &Window) -> Vec<Row> {
    let mut kinds: Vec<&str> = idle
        .exits
        .iter()
        .chain(&load.exits)
        .map(|(k, _)| k.as_str())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    let weight = |k: &str| idle.rate(idle.count(k)) + load.rate(load.count(k));
    kinds.sort_by(|a, b| weight(b).total_cmp(&weight(a)).then(a.cmp(b)));
    let mut rows: Vec<Row> = kinds
        .into_iter()
        .map(|k| Row {
            kind: k.to_string(),
            idle: idle.count(k),
            load: load.count(k),
        })
        .collect();
    rows.push(Row {
        kind: "total".into(),
        idle: idle.total(),
        load: load.total(),
    });
    rows
}

/// The table `bench idle --partition host` prints under its heading.
pub fn table(idle: &Window, load: &Window) -> String {
    let mut out = format!(
        "{:<20} {:>22} {:>22}\n{:<20} {:>10} {:>11} {:>10} {:>11}\n",
        "host exits",
        format!("idle ({:.1} s)", idle.us as f64 / 1e6),
        format!("load ({:.1} s)", load.us as f64 / 1e6),
        "kind",
        "count",
        "per second",
        "count",
        "per second"
    );
    for r in rows(idle, load) {
        out.push_str(&format!(
            "{:<20} {:>10} {:>11.1} {:>10} {:>11.1}\n",
            r.kind,
            r.idle,
            idle.rate(r.idle),
            r.load,
            load.rate(r.load)
        ));
    }
    if let (Some(i), Some(l)) = (idle.ipis_sent, load.ipis_sent) {
        out.push_str(&format!(
            "{:<20} {:>10} {:>11.1} {:>10} {:>11.1}\n",
            "(IPIs sent)",
            i,
            idle.rate(i),
            l,
            load.rate(l)
        ));
    }
    out
}

/// What the host's load did, from its console's `load: S build steps on C CPUs, F failed`
/// line: `(steps, cpus, failed)`.
pub fn load_steps(serial: &str) -> Option<(u64, u64, u64)> {
    serial.lines().find_map(|l| {
        let rest = l.split_once("load: ")?.1.trim_end();
        let (steps, rest) = rest.split_once(" build steps on ")?;
        let (cpus, rest) = rest.split_once(" CPUs, ")?;
        let failed = rest.strip_suffix(" failed")?;
        Some((
            steps.parse().ok()?,
            cpus.parse().ok()?,
            failed.parse().ok()?,
        ))
    })
}

/// The host's command-line words for windows of `seconds` each (the last `atoll.actions` on
/// the command line is the one `/init` runs).
pub fn host_actions(seconds: u32) -> String {
    format!("atoll.actions=idle:{seconds},load:{seconds},poweroff")
}

/// Runs the bench and prints its table.
pub fn bench(emulator: Emulator, seconds: u32, guest_kernel: GuestKernel) -> Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let scenario = Scenario::load(SCENARIO)?;
    let mut opts = RunOptions::new(emulator, SCENARIO);
    opts.guest_kernel = guest_kernel;
    opts.enclave_cmdline = vec![("host".into(), host_actions(seconds))];
    // Two windows, and the guest's seconds may pass slower than the host's in an emulator.
    let base = match emulator {
        Emulator::Qemu => scenario.timeout_s.qemu,
        Emulator::Bochs => scenario.timeout_s.bochs,
    };
    let timeout = base + 20 * u64::from(seconds);
    opts.timeout_s = Some(timeout);
    eprintln!(
        "bench idle: the root partition alone ({SCENARIO}) on {} with {} (timeout {timeout} s)",
        emulator.name(),
        host_actions(seconds)
    );
    let o = run(&opts)?;
    if !o.passed() {
        bail!("{}", o.failure());
    }
    if let Some(l) = o.serial.lines().find(|l| l.contains("ATOLL-ACTION-FAILED")) {
        bail!("the host's action failed: {}", l.trim());
    }
    let summary = o.summary.as_ref().context("no summary")?;
    let log = o.work_dir.join("serial.log");
    let window = |name: &str| {
        lookup(summary, &format!("host.{name}"))
            .with_context(|| {
                format!(
                    "the summary has no host.{name} (did the host print ATOLL-{} begin/end? see {})",
                    name.to_uppercase(),
                    log.display()
                )
            })
            .and_then(|v| Window::parse(v, name))
    };
    let (idle, load) = (window("idle")?, window("load")?);
    let boot = lookup(summary, "host.boot_to_init");
    let boot_us = boot.and_then(|b| b["us"].as_u64());
    let steps = load_steps(&o.serial);
    println!(
        "The root partition alone on {} CPUs in {} ({}), kernel {}",
        o.cpus,
        emulator.name(),
        summary
            .get("cpu_virt")
            .and_then(Value::as_str)
            .unwrap_or("-"),
        o.guest_kernel.as_deref().unwrap_or("-")
    );
    println!(
        "boot to init  {} ms (atoll's TSC, from the host's start to its first atoll-init: line)",
        boot_us.map_or("-".into(), |us| format!("{:.0}", us as f64 / 1e3))
    );
    if let Some((s, cpus, _)) = steps {
        println!(
            "load          {s} build steps on {cpus} CPUs ({:.2} per second)",
            load.rate(s)
        );
    }
    print!("{}", table(&idle, &load));
    println!("wall          {:.1} s", o.wall.as_secs_f64());
    let rates = |w: &Window| {
        let mut m: serde_json::Map<String, Value> = w
            .exits
            .iter()
            .map(|(k, n)| (k.clone(), serde_json::json!(w.rate(*n))))
            .collect();
        m.insert("total".into(), serde_json::json!(w.rate(w.total())));
        if let Some(n) = w.ipis_sent {
            m.insert("ipis_sent".into(), serde_json::json!(w.rate(n)));
        }
        m
    };
    let json = serde_json::json!({
        "bench": "idle",
        "partition": "host",
        "emulator": emulator.name(),
        "cpus": o.cpus,
        "cpu_virt": summary.get("cpu_virt"),
        "kernel": o.guest_kernel,
        "seconds_requested": seconds,
        "command": format!(
            "cargo xtask bench idle --partition host --emulator {} --seconds {seconds}",
            emulator.name()
        ),
        "boot_to_init": boot,
        "idle": summary["host"]["idle"],
        "load": summary["host"]["load"],
        "exits_per_second": { "idle": rates(&idle), "load": rates(&load) },
        "load_steps": steps.map(|(s, c, f)| serde_json::json!({"steps": s, "cpus": c, "failed": f})),
        "wall_s": o.wall.as_secs_f64(),
    });
    let path = crate::write_bench_json(&format!("idle-host-{}", emulator.name()), &json)?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn windows_are_read_from_the_summary() {
        let w = Window::parse(
            &json!({"us": 2_000_000, "cycles": 7, "hlt": 400, "nested_page_fault": 30}),
            "idle",
        )
        .unwrap();
        assert_eq!(w.us, 2_000_000);
        assert_eq!(w.count("hlt"), 400);
        assert_eq!(w.count("io"), 0);
        assert_eq!(w.total(), 430);
        assert!((w.rate(400) - 200.0).abs() < 1e-9);
        assert_eq!(w.ipis_sent, None);
        // IPIs sent are not an exit kind.
        let w = Window::parse(&json!({"us": 10, "ipis_sent": 3, "io": 1}), "load").unwrap();
        assert_eq!((w.ipis_sent, w.total()), (Some(3), 1));
        // Not measured, or malformed: an error naming the field.
        for (v, field) in [
            (json!({"us": 0, "hlt": 1}), "host.idle.us"),
            (json!({"cycles": 5}), "host.idle.us"),
            (json!({"us": 5, "hlt": "x"}), "host.idle.hlt"),
            (json!([1]), "host.idle"),
        ] {
            let e = Window::parse(&v, "idle").unwrap_err().to_string();
            assert!(e.contains(field), "{v}: {e}");
        }
    }

    #[test]
    fn rows_cover_both_windows_most_frequent_first() {
        let idle = Window {
            us: 1_000_000,
            exits: vec![("hlt".into(), 100), ("nested_page_fault".into(), 100)],
            ipis_sent: Some(4),
        };
        let load = Window {
            us: 2_000_000,
            exits: vec![
                ("nested_page_fault".into(), 2_000),
                ("io".into(), 10),
                ("cpuid".into(), 10),
            ],
            ipis_sent: Some(300),
        };
        let r = rows(&idle, &load);
        let kinds: Vec<&str> = r.iter().map(|r| r.kind.as_str()).collect();
        // 1100/s, 100/s, then 5/s twice in name order, then the total.
        assert_eq!(kinds, ["nested_page_fault", "hlt", "cpuid", "io", "total"]);
        assert_eq!(
            r[1],
            Row {
                kind: "hlt".into(),
                idle: 100,
                load: 0
            }
        );
        assert_eq!((r[4].idle, r[4].load), (200, 2_020));
        let t = table(&idle, &load);
        assert!(
            t.contains("idle (1.0 s)") && t.contains("load (2.0 s)"),
            "{t}"
        );
        let last: Vec<Vec<&str>> = t
            .lines()
            .rev()
            .take(2)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(last[1], ["total", "200", "200.0", "2020", "1010.0"], "{t}");
        // IPIs are not exits: a line of their own, after the total.
        assert_eq!(
            last[0],
            ["(IPIs", "sent)", "4", "4.0", "300", "150.0"],
            "{t}"
        );
    }

    #[test]
    fn the_load_line_is_found_on_the_console() {
        let serial =
            "[host] ATOLL-LOAD end\r\n[host] load: 123 build steps on 2 CPUs, 0 failed\r\n";
        assert_eq!(load_steps(serial), Some((123, 2, 0)));
        assert_eq!(
            load_steps("[host] load: x build steps on 2 CPUs, 0 failed"),
            None
        );
        assert_eq!(load_steps("[host] ATOLL-LOAD end"), None);
    }

    #[test]
    fn the_host_runs_both_windows_then_powers_off() {
        assert_eq!(host_actions(7), "atoll.actions=idle:7,load:7,poweroff");
        // The scenario's own actions are the same shape, so it tests what the bench runs.
        let machine =
            std::fs::read_to_string(crate::root().join("tests/scenarios/machines/bench-host.toml"))
                .unwrap();
        assert!(machine.contains(&host_actions(2)), "{machine}");
    }
}
