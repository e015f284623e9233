//! `cargo xtask bench blk`: an enclave's virtio-blk disk, served by the host's `atoll-channeld`
//! over a channel window (issue 14), against the same file used by the host directly.
//!
//! It boots the `bench-blk` scenario (QEMU only, as `virtio`: the host's devices DMA through
//! atoll's VT-d domain), whose host runs the guest image's `bench_blk` action: a raw image of
//! `atoll.blk_mib` MiB in the host's memory, and fio's four 4 KiB jobs on it (`seqread`,
//! `seqwrite`, `randread`, `randwrite`; psync, one at a time, `atoll.blk_seconds` each,
//! `--time_based`), first
//!
//! * by the **host** on the file, O_DIRECT when its file system allows it (the initramfs's
//!   root file system refuses it on the guest kernel: then buffered, which there is the
//!   file's storage itself; the JSON says which and why), then
//! * by an **enclave** with the file as its virtio-blk disk, on `/dev/vda` with O_DIRECT, so
//!   every I/O is a request through the virtqueue to the daemon and back rather than a hit in
//!   the enclave's page cache. The host takes `atoll stats --json` of it when its jobs begin and
//!   end (it pauses after its `ATOLL-BLK begin` and `ATOLL-BLK end` markers).
//!
//! fio's JSON is cut in the guest to the numbers that open its `read` and `write` objects
//! (a console line carries 4 KiB, the whole document is some 6 KB); the parser reads fio's own
//! layout, so it reads the whole document as well. QEMU's absolute rates measure its TCG
//! emulation, so the bench reports the enclave's rates as ratios against the host's of the same
//! run, and what the enclave cost atoll per I/O (exits, interrupts injected, virtio chains).
//! It prints a table and writes `target/bench/blk-qemu.json`.
//!
//! `atoll-channeld` learns of the enclave's requests from its channel function's INTx; with
//! `--virtio-poll` the host unloads `uio_pci_generic` first (its `atoll.virtio_notify=poll`)
//! and the daemon polls the window every 10 ms instead, which then bounds a one-deep queue's
//! rate (docs/performance.md).

use crate::bench_net::{Snapshot, Window};
use crate::run::{run, RunOptions};
use crate::scenario::{lookup, Emulator, Scenario};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The scenario the bench boots.
pub const SCENARIO: &str = "bench-blk";

/// Why the bench does not run on Bochs.
pub const BOCHS_REFUSAL: &str = "bench blk needs QEMU: the host's devices DMA through atoll's \
    VT-d domain, and Bochs emulates no VT-d IOMMU (run it with --emulator qemu)";

/// Which of fio's objects a job's I/O is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

impl Dir {
    /// fio's key for it.
    pub fn key(self) -> &'static str {
        match self {
            Dir::Read => "read",
            Dir::Write => "write",
        }
    }
}

/// The jobs, in the order the guest image's `blk_jobs` runs them (name, direction).
pub const JOBS: [(&str, Dir); 4] = [
    ("seqread", Dir::Read),
    ("seqwrite", Dir::Write),
    ("randread", Dir::Read),
    ("randwrite", Dir::Write),
];

/// One job's figures, from fio's object for its direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// `bw_bytes`: bytes per second.
    pub bytes_per_s: f64,
    /// `iops`.
    pub iops: f64,
    /// `total_ios`.
    pub ios: u64,
    /// `runtime`, milliseconds.
    pub runtime_ms: u64,
}

impl Rate {
    /// MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes_per_s / 1e6
    }
}

/// The job named `name` in fio's JSON document `doc` (`{"jobs": [...]}`, whole or cut as the
/// guest cuts it): its figures in direction `dir`. An error if fio reported one, or if the job
/// did no I/O in that direction (a rate of nothing is no measurement).
pub fn fio_job(doc: &Value, name: &str, dir: Dir) -> Result<Rate> {
    let jobs = doc
        .get("jobs")
        .and_then(Value::as_array)
        .with_context(|| format!("{name}: not fio's JSON (no jobs)"))?;
    let job = jobs
        .iter()
        .find(|j| j.get("jobname").and_then(Value::as_str) == Some(name))
        .with_context(|| format!("fio ran no job {name}"))?;
    match job.get("error").and_then(Value::as_u64) {
        Some(0) => {}
        Some(e) => bail!("{name}: fio reported error {e}"),
        None => bail!("{name}: fio's job has no error field"),
    }
    let o = job
        .get(dir.key())
        .with_context(|| format!("{name}: fio's job has no {}", dir.key()))?;
    let num = |k: &str| {
        o.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("{name}: {}.{k} is missing or not a number", dir.key()))
    };
    let count = |k: &str| {
        o.get(k)
            .and_then(Value::as_u64)
            .with_context(|| format!("{name}: {}.{k} is missing or not a count", dir.key()))
    };
    let rate = Rate {
        bytes_per_s: num("bw_bytes")?,
        iops: num("iops")?,
        ios: count("total_ios")?,
        runtime_ms: count("runtime")?,
    };
    if rate.ios == 0 || rate.runtime_ms == 0 || rate.bytes_per_s <= 0.0 {
        bail!("{name}: fio did no {}s: {o}", dir.key());
    }
    Ok(rate)
}

/// One side's four jobs (the order of [`JOBS`]) and whether it ran with O_DIRECT.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    pub direct: bool,
    pub rates: Vec<Rate>,
}

impl Side {
    /// `{direct: 0|1, jobs: [one cut fio job each]}` as `/init` prints it.
    pub fn parse(v: &Value, what: &str) -> Result<Side> {
        let direct = match v.get("direct").and_then(Value::as_u64) {
            Some(0) => false,
            Some(1) => true,
            _ => bail!("{what}: direct is not 0 or 1 in {v}"),
        };
        let rates = JOBS
            .iter()
            .map(|&(name, dir)| fio_job(v, name, dir).with_context(|| what.to_string()))
            .collect::<Result<_>>()?;
        Ok(Side { direct, rates })
    }

    /// Its I/Os over all jobs.
    pub fn ios(&self) -> u64 {
        self.rates.iter().map(|r| r.ios).sum()
    }
}

/// The bench's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct BlkBench {
    pub host: Side,
    pub enclave: Side,
    /// Why the host's fio ran buffered (what fio said to O_DIRECT), empty when it did not.
    pub host_direct_refused: String,
    /// The enclave between its markers.
    pub window: Window,
}

impl BlkBench {
    /// From the host's results `bench_blk_host`, `bench_blk_enclave` (the enclave's
    /// `bench_blk_guest`) and `bench_blk` (`stats_begin`, `stats_end`, `problem`).
    pub fn parse(host: &Value, enclave: &Value, bench: &Value) -> Result<BlkBench> {
        match bench.get("problem").and_then(Value::as_str) {
            Some("") => {}
            Some(p) => bail!("bench_blk: {p}"),
            None => bail!("bench_blk: no problem field in {bench}"),
        }
        if host.is_null() {
            bail!("bench_blk_host: the host ran no jobs");
        }
        if enclave.is_null() {
            bail!("bench_blk_enclave: the enclave reported nothing");
        }
        let host_side = Side::parse(host, "the host's fio")?;
        let enclave_side = Side::parse(enclave, "the enclave's fio")?;
        if !enclave_side.direct {
            bail!(
                "the enclave's fio ran buffered: its page cache, not the disk, would be measured"
            );
        }
        let snapshot = |k: &str| {
            bench
                .get(k)
                .filter(|v| !v.is_null())
                .with_context(|| format!("bench_blk: no {k}"))
                .and_then(|v| Snapshot::parse(v, k))
        };
        let window = Window::between(&snapshot("stats_begin")?, &snapshot("stats_end")?)?;
        Ok(BlkBench {
            host: host_side,
            enclave: enclave_side,
            host_direct_refused: host
                .get("direct_refused")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            window,
        })
    }

    /// The enclave's rate of job `i` over the host's (below 1: slower).
    pub fn ratio(&self, i: usize) -> f64 {
        self.enclave.rates[i].bytes_per_s / self.host.rates[i].bytes_per_s
    }

    /// `n` per I/O of the enclave's jobs.
    pub fn per_io(&self, n: u64) -> f64 {
        n as f64 / self.enclave.ios() as f64
    }

    /// The table the bench prints.
    pub fn table(&self) -> String {
        let mode = |d: bool| if d { "O_DIRECT" } else { "buffered" };
        let mut out = format!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>8}\n",
            "4 KiB, psync", "enclave", "", "host", "", "ratio"
        );
        out.push_str(&format!(
            "{:<20} {:>10} {:>10} {:>10} {:>10}\n",
            format!("({}/{})", mode(self.enclave.direct), mode(self.host.direct)),
            "MB/s",
            "IOPS",
            "MB/s",
            "IOPS"
        ));
        for (i, (name, _)) in JOBS.iter().enumerate() {
            let (e, h) = (&self.enclave.rates[i], &self.host.rates[i]);
            out.push_str(&format!(
                "{:<20} {:>10.2} {:>10.0} {:>10.2} {:>10.0} {:>8.3}\n",
                name,
                e.mb_per_s(),
                e.iops,
                h.mb_per_s(),
                h.iops,
                self.ratio(i)
            ));
        }
        let w = &self.window;
        let ios = self.enclave.ios();
        out.push_str(&format!(
            "\nthe enclave's jobs: {:.1} s, {ios} I/Os\n{:<28} {:>12} {:>10}\n",
            w.us as f64 / 1e6,
            "",
            "count",
            "per I/O"
        ));
        let mut row = |k: &str, n: u64| {
            out.push_str(&format!("{:<28} {:>12} {:>10.2}\n", k, n, self.per_io(n)));
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
        out
    }

    /// The JSON the bench writes (the figures; the caller adds the raw results).
    pub fn json(&self) -> Value {
        let side = |s: &Side| {
            let jobs: serde_json::Map<_, _> = JOBS
                .iter()
                .zip(&s.rates)
                .map(|((name, _), r)| {
                    (
                        name.to_string(),
                        json!({"mb_per_s": r.mb_per_s(), "iops": r.iops, "ios": r.ios,
                               "runtime_ms": r.runtime_ms}),
                    )
                })
                .collect();
            json!({"direct": s.direct, "jobs": jobs})
        };
        let ratios: serde_json::Map<_, _> = JOBS
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.to_string(), json!(self.ratio(i))))
            .collect();
        let w = &self.window;
        json!({
            "enclave": side(&self.enclave),
            "host": side(&self.host),
            "host_direct_refused": self.host_direct_refused,
            "ratio": ratios,
            "jobs_window": {
                "seconds": w.us as f64 / 1e6,
                "ios": self.enclave.ios(),
                "exits": w.total(),
                "exits_by_kind": w.exits.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "device_interrupts": w.device_interrupts,
                "interrupts_injected": w.interrupts_injected,
                "virtio_chains": w.virtio_chains,
                "per_io": {
                    "exits": self.per_io(w.total()),
                    "device_interrupts": self.per_io(w.device_interrupts),
                    "interrupts_injected": self.per_io(w.interrupts_injected),
                },
            },
        })
    }
}

/// The host's command-line word that makes its `/init` unload `uio_pci_generic` before the
/// enclave is created, so `atoll-channeld` polls its channel (every 10 ms) instead of waiting
/// for the channel function's INTx (`--virtio-poll`).
pub const POLL_WORD: &str = "atoll.virtio_notify=poll";

/// The run's options: the scenario, and with `poll` the host's [`POLL_WORD`].
pub fn run_options(emulator: Emulator, scenario: &str, poll: bool) -> RunOptions {
    let mut o = RunOptions::new(emulator, scenario);
    if poll {
        o.enclave_cmdline.push(("host".into(), POLL_WORD.into()));
    }
    o
}

/// The fields every channel bench's JSON starts with: the bench, the emulator, the machine's
/// virtualization, how the daemon was notified and the command that reproduces the run.
pub fn describe_run(out: &mut Value, bench: &str, emulator: Emulator, summary: &Value, poll: bool) {
    out["bench"] = json!(bench);
    out["emulator"] = json!(emulator.name());
    out["cpu_virt"] = summary.get("cpu_virt").cloned().unwrap_or(Value::Null);
    out["notify"] = json!(if poll { "poll" } else { "interrupt" });
    out["command"] = json!(format!(
        "cargo xtask bench {bench} --emulator {}{}",
        emulator.name(),
        if poll { " --virtio-poll" } else { "" }
    ));
}

/// How atoll-channeld learnt of the enclave's requests, for the printout.
pub fn notify_note(poll: bool) -> &'static str {
    if poll {
        "atoll-channeld polling its channel every 10 ms (--virtio-poll)"
    } else {
        "atoll-channeld woken by the channel function's INTx"
    }
}

/// Runs the bench and prints its table.
pub fn bench(emulator: Emulator, poll: bool) -> Result<()> {
    if emulator == Emulator::Bochs {
        bail!("{BOCHS_REFUSAL}");
    }
    let scenario = Scenario::load(SCENARIO)?;
    eprintln!(
        "bench blk: {SCENARIO} on {} (timeout {} s), {}",
        emulator.name(),
        scenario.timeout_s.qemu,
        notify_note(poll)
    );
    let o = run(&run_options(emulator, SCENARIO, poll))?;
    if !o.passed() {
        bail!("{}", o.failure());
    }
    let summary = o.summary.as_ref().context("no summary")?;
    let result = |k: &str| {
        lookup(summary, &format!("host.results.{k}")).with_context(|| format!("no host result {k}"))
    };
    let (host, enclave, bench) = (
        result("bench_blk_host")?,
        result("bench_blk_enclave")?,
        result("bench_blk")?,
    );
    let figures = BlkBench::parse(host, enclave, bench)?;
    println!(
        "a virtio-blk disk over a channel window (QEMU, {}): fio in the enclave on /dev/vda, \
         served by atoll-channeld from a raw image in the host's memory, against fio in the host \
         on that file; {}",
        summary
            .get("cpu_virt")
            .and_then(Value::as_str)
            .unwrap_or("-"),
        notify_note(poll)
    );
    if !figures.host.direct {
        println!(
            "(the host's fio ran buffered: O_DIRECT was refused on its root file system: {})",
            figures.host_direct_refused.trim()
        );
    }
    print!("{}", figures.table());
    println!("wall {:.1} s", o.wall.as_secs_f64());
    let mut out = figures.json();
    crate::bench_blk::describe_run(&mut out, "blk", emulator, summary, poll);
    out["results"] =
        json!({ "bench_blk_host": host, "bench_blk_enclave": enclave, "bench_blk": bench });
    out["wall_s"] = json!(o.wall.as_secs_f64());
    let path = crate::write_bench_json(&format!("blk-{}", emulator.name()), &out)?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real fio 3.33 output (`--output-format=json`, a 1 s job on a file).
    fn fixture(name: &str) -> Value {
        let text =
            std::fs::read_to_string(crate::root().join(format!("xtask/testdata/fio-{name}.json")))
                .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn cut(name: &str, read: (u64, f64, u64), write: (u64, f64, u64)) -> Value {
        let dir = |(bw, iops, ios): (u64, f64, u64)| {
            json!({"io_bytes": ios * 4096, "io_kbytes": ios * 4, "bw_bytes": bw,
                   "bw": bw / 1024, "iops": iops, "runtime": if ios > 0 { 4000 } else { 0 },
                   "total_ios": ios, "short_ios": 0, "drop_ios": 0})
        };
        json!({"jobname": name, "error": 0, "read": dir(read), "write": dir(write)})
    }

    /// A side whose job i moves `bw[i]` bytes a second.
    fn side(direct: u64, bw: [u64; 4]) -> Value {
        let none = (0, 0.0, 0);
        let jobs: Vec<Value> = JOBS
            .iter()
            .zip(bw)
            .map(|(&(name, dir), bw)| {
                let io = (bw, bw as f64 / 4096.0, bw * 4 / 4096);
                match dir {
                    Dir::Read => cut(name, io, none),
                    Dir::Write => cut(name, none, io),
                }
            })
            .collect();
        json!({"direct": direct, "direct_refused": if direct == 0 { "seqread: fio: looks like your file system does not support direct=1/buffered=0" } else { "" }, "jobs": jobs, "fio_error": ""})
    }

    fn stats(uptime: u64, hlt: u64, npf: u64, inj: u64) -> Value {
        json!({"enclaves": [{"name": "blk1", "id": 0, "uptime_us": uptime,
            "exits": {"hlt": hlt, "npf": npf, "cpuid": 7},
            "interrupts_injected": inj, "device_interrupts": 0, "dma_faults": 0,
            "virtio_chains": npf / 2}]})
    }

    fn docs() -> (Value, Value, Value) {
        let host = side(0, [400_000_000, 200_000_000, 100_000_000, 80_000_000]);
        let mut enclave = side(1, [4_096_000, 2_048_000, 1_024_000, 409_600]);
        enclave["sectors"] = json!(65536);
        enclave["problem"] = json!("");
        let bench = json!({"create": {"rc": 0}, "stats_begin": stats(1_000_000, 10, 100, 5),
            "stats_end": stats(17_000_000, 1010, 7100, 3005), "problem": ""});
        (host, enclave, bench)
    }

    #[test]
    fn whole_fio_documents_parse() {
        let r = fio_job(&fixture("randread"), "randread", Dir::Read).unwrap();
        assert!(r.ios > 0 && r.runtime_ms > 0 && r.iops > 0.0, "{r:?}");
        // iops × runtime is the I/O count, bw is iops × 4 KiB (fio's own arithmetic).
        let ios = r.iops * r.runtime_ms as f64 / 1000.0;
        assert!((ios - r.ios as f64).abs() / (r.ios as f64) < 0.01, "{r:?}");
        assert!(
            (r.bytes_per_s / r.iops - 4096.0).abs() < 4096.0 * 0.01,
            "{r:?}"
        );
        let w = fio_job(&fixture("seqwrite"), "seqwrite", Dir::Write).unwrap();
        assert!(w.ios > 0, "{w:?}");
        // The other direction did nothing: no rate.
        let e = fio_job(&fixture("seqwrite"), "seqwrite", Dir::Read)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fio did no reads"), "{e}");
        let e = fio_job(&fixture("seqwrite"), "randwrite", Dir::Write)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no job randwrite"), "{e}");
    }

    /// The guest image's cut of fio's JSON keeps what the parser reads, with the same values.
    #[test]
    fn the_guests_cut_reads_as_the_whole_document() {
        let script = crate::guest_image::init_script();
        let start = script.find("blk_reduce() {").unwrap();
        let end = start + script[start..].find("\n}\n").unwrap() + 3;
        let reduce = &script[start..end];
        for (name, dir) in [("randread", Dir::Read), ("seqwrite", Dir::Write)] {
            let path = crate::root().join(format!("xtask/testdata/fio-{name}.json"));
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{reduce}blk_reduce \"$1\"; echo"))
                .arg("sh")
                .arg(&path)
                .output()
                .unwrap();
            let line = String::from_utf8(out.stdout).unwrap();
            assert_eq!(line.lines().count(), 1, "{line}");
            assert!(line.len() < 600, "{} bytes: {line}", line.len());
            let cut: Value = serde_json::from_str(&line).unwrap();
            let doc = json!({ "jobs": [cut] });
            assert_eq!(
                fio_job(&doc, name, dir).unwrap(),
                fio_job(&fixture(name), name, dir).unwrap()
            );
        }
    }

    #[test]
    fn figures_and_ratios() {
        let (host, enclave, bench) = docs();
        let f = BlkBench::parse(&host, &enclave, &bench).unwrap();
        assert!(!f.host.direct && f.enclave.direct);
        assert!((f.ratio(0) - 0.01024).abs() < 1e-9);
        assert!((f.ratio(3) - 0.00512).abs() < 1e-9);
        // I/Os: 4 s of each job at bw / 4096 a second.
        let ios = (4_096_000 + 2_048_000 + 1_024_000 + 409_600) * 4 / 4096;
        assert_eq!(f.enclave.ios(), ios);
        assert_eq!(f.window.total(), 8000);
        let j = f.json();
        assert_eq!(j["ratio"]["seqread"], json!(f.ratio(0)));
        assert_eq!(j["jobs_window"]["ios"], json!(ios));
        assert_eq!(
            j["jobs_window"]["per_io"]["exits"],
            json!(8000.0 / ios as f64)
        );
        assert_eq!(j["host"]["direct"], json!(false));
        assert_eq!(j["jobs_window"]["virtio_chains"], json!(3500));
        assert!(j["host_direct_refused"]
            .as_str()
            .unwrap()
            .contains("direct=1"));
        let t = f.table();
        for want in [
            "(O_DIRECT/buffered)",
            "seqread",
            "randwrite",
            "4.10",
            "400.00",
            "0.010",
            "16.0 s, 7400 I/Os",
            "npf",
            "0.95",
        ] {
            assert!(t.contains(want), "{want} not in\n{t}");
        }
        assert!(!t.contains("cpuid"), "{t}");
        // (7100 - 100) / 2 chains over 7400 I/Os.
        let chains = t
            .lines()
            .find(|l| l.starts_with("virtio chains completed"))
            .unwrap();
        assert_eq!(
            chains.split_whitespace().collect::<Vec<_>>()[3..],
            ["3500", "0.47"]
        );
    }

    #[test]
    fn failures_are_reported() {
        let (host, enclave, bench) = docs();
        let mut b = bench.clone();
        b["problem"] = json!("enclave: fio on /dev/vda failed");
        let e = BlkBench::parse(&host, &enclave, &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/vda failed"), "{e}");
        let e = BlkBench::parse(&host, &Value::Null, &bench)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reported nothing"), "{e}");
        // A job missing, or one fio failed.
        let mut en = enclave.clone();
        en["jobs"].as_array_mut().unwrap().pop();
        let e = format!("{:#}", BlkBench::parse(&host, &en, &bench).unwrap_err());
        assert!(
            e.contains("no job randwrite") && e.contains("enclave"),
            "{e}"
        );
        let mut en = enclave.clone();
        en["jobs"][1]["error"] = json!(5);
        let e = format!("{:#}", BlkBench::parse(&host, &en, &bench).unwrap_err());
        assert!(e.contains("seqwrite: fio reported error 5"), "{e}");
        // A buffered enclave measures its own page cache.
        let mut en = enclave.clone();
        en["direct"] = json!(0);
        let e = BlkBench::parse(&host, &en, &bench).unwrap_err().to_string();
        assert!(e.contains("buffered"), "{e}");
        // No stats snapshot; counters going backwards.
        let mut b = bench.clone();
        b["stats_end"] = Value::Null;
        let e = BlkBench::parse(&host, &enclave, &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stats_end"), "{e}");
        let mut b = bench;
        b["stats_end"] = stats(17_000_000, 5, 7100, 3005);
        let e = BlkBench::parse(&host, &enclave, &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hlt went backwards"), "{e}");
    }

    #[test]
    fn polling_is_asked_of_the_hosts_init() {
        let o = run_options(Emulator::Qemu, SCENARIO, true);
        assert_eq!(
            o.enclave_cmdline,
            vec![("host".to_string(), POLL_WORD.to_string())]
        );
        assert!(run_options(Emulator::Qemu, SCENARIO, false)
            .enclave_cmdline
            .is_empty());
        // /init reads the word and the benches' host actions act on it.
        let init = crate::guest_image::init_script();
        assert!(init.contains("atoll.virtio_notify=*) virtio_notify=${word#*=} ;;"));
        assert!(
            init.contains("if [ \"$virtio_notify\" = poll ]; then\n        rmmod uio_pci_generic")
        );
    }

    #[test]
    fn the_scenario_runs_the_action_on_qemu_only() {
        let s = Scenario::load(SCENARIO).unwrap();
        assert_eq!(s.emulators, vec!["qemu".to_string()]);
        let machine =
            std::fs::read_to_string(crate::root().join("tests/scenarios/machines/bench-blk.toml"))
                .unwrap();
        assert!(machine.contains("atoll.actions=bench_blk,"), "{machine}");
        let init = crate::guest_image::init_script();
        assert!(init.contains("bench_blk) bench_blk ;;"));
        assert!(init.contains("bench_blk_guest) bench_blk_guest; vf_then ;;"));
        // The jobs /init runs are the ones parsed, in the same order.
        let names: Vec<String> = JOBS.iter().map(|(n, _)| n.to_string()).collect();
        let line = init
            .lines()
            .find_map(|l| l.strip_prefix("blk_jobs=\""))
            .unwrap();
        let run: Vec<&str> = line
            .trim_end_matches('"')
            .split(' ')
            .map(|j| j.split(':').next().unwrap())
            .collect();
        assert_eq!(run, names);
        let e = bench(Emulator::Bochs, false).unwrap_err().to_string();
        assert!(e.contains("--emulator qemu"), "{e}");
    }
}
