//! `cargo xtask bench lifecycle`: atoll's share of creating and destroying an enclave from
//! the host, for 256 MiB and 2 GiB enclaves.
//!
//! It boots the `bench-lifecycle` scenario: the host's Linux alone with a 2.3 GiB pool, whose
//! `/init` (action `bench_lifecycle`) creates and destroys a bare-metal enclave of each size
//! twice with the `atoll` command: `cold` on memory the machine never touched (an emulator
//! then also pays for backing its guest's RAM on first touch), `warm` on the same memory again. atoll times its own part of each (TSC cycles on the manager's
//! core; on Bochs the TSC counts instructions) and reports it in the summary's
//! `control.timings`: Create, every Load, from Start's doorbell to the guest's first
//! instruction (the RAM zeroed, the image loaded, the tables made, the core started), and
//! Destroy (the vCPU stopped, the core parked, the tables freed and the RAM zeroed), with the
//! zeroing on its own. This prints a table and writes `target/bench/lifecycle-EMULATOR.json`.

use crate::run::{run, RunOptions};
use crate::scenario::{lookup, Emulator, Scenario};
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The scenario the bench boots.
pub const SCENARIO: &str = "bench-lifecycle";

/// The scenario the bench boots on Bochs: the 256 MiB enclaves only.
pub const SCENARIO_SMALL: &str = "bench-lifecycle-small";

/// The most memory Debian's Bochs 2.7 gives a machine (`host_size` out of range above).
pub const BOCHS_MAX_MEMORY_MIB: u32 = 2048;

/// One enclave's timings from the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// The enclave.
    pub name: String,
    /// Its RAM.
    pub memory_mib: u64,
    /// Cycles: create, load, start to guest, destroy, zeroing.
    pub create: u64,
    pub load: u64,
    pub start: u64,
    pub destroy: u64,
    pub zero: u64,
}

impl Timing {
    /// One entry of `control.timings`.
    pub fn parse(v: &Value) -> Result<Timing> {
        let n = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .with_context(|| format!("control.timings: {k} is missing in {v}"))
        };
        Ok(Timing {
            name: v
                .get("name")
                .and_then(Value::as_str)
                .context("control.timings: no name")?
                .to_string(),
            memory_mib: n("memory_mib")?,
            create: n("create_cycles")?,
            load: n("load_cycles")?,
            start: n("start_to_guest_cycles")?,
            destroy: n("destroy_cycles")?,
            zero: n("zero_cycles")?,
        })
    }

    /// Bytes of RAM zeroed per cycle when it was destroyed.
    pub fn zero_bytes_per_cycle(&self) -> f64 {
        if self.zero == 0 {
            return 0.0;
        }
        (self.memory_mib << 20) as f64 / self.zero as f64
    }
}

/// The table: one row per enclave, cycles and milliseconds at `hz`.
pub fn table(timings: &[Timing], hz: u64) -> String {
    let ms = |c: u64| c as f64 * 1e3 / hz.max(1) as f64;
    let mut out = format!(
        "{:<10} {:>8} {:>14} {:>14} {:>16} {:>16} {:>16} {:>12}\n",
        "enclave",
        "MiB",
        "create",
        "load",
        "start→guest",
        "destroy",
        "of it zeroing",
        "bytes/cycle"
    );
    for t in timings {
        out.push_str(&format!(
            "{:<10} {:>8} {:>14} {:>14} {:>16} {:>16} {:>16} {:>12.2}\n",
            t.name,
            t.memory_mib,
            t.create,
            t.load,
            t.start,
            t.destroy,
            t.zero,
            t.zero_bytes_per_cycle()
        ));
        out.push_str(&format!(
            "{:<10} {:>8} {:>11.1} ms {:>11.1} ms {:>13.1} ms {:>13.1} ms {:>13.1} ms\n",
            "",
            "",
            ms(t.create),
            ms(t.load),
            ms(t.start),
            ms(t.destroy),
            ms(t.zero)
        ));
    }
    out
}

/// Runs the bench and prints its table.
pub fn bench(emulator: Emulator) -> Result<()> {
    // Bochs gives a machine at most 2 GiB: there, the 256 MiB enclaves only.
    let (name, expected) = match emulator {
        Emulator::Qemu => (SCENARIO, 4),
        Emulator::Bochs => (SCENARIO_SMALL, 2),
    };
    let scenario = Scenario::load(name)?;
    if emulator == Emulator::Bochs && scenario.memory_mib > BOCHS_MAX_MEMORY_MIB {
        bail!(
            "Bochs caps a machine's memory at {BOCHS_MAX_MEMORY_MIB} MiB, and {name} asks for {} MiB",
            scenario.memory_mib
        );
    }
    let opts = RunOptions::new(emulator, name);
    eprintln!(
        "bench lifecycle: {name} on {} (timeout {} s)",
        emulator.name(),
        match emulator {
            Emulator::Qemu => scenario.timeout_s.qemu,
            Emulator::Bochs => scenario.timeout_s.bochs,
        }
    );
    let o = run(&opts)?;
    if !o.passed() {
        bail!("{}", o.failure());
    }
    let summary = o.summary.as_ref().context("no summary")?;
    let timings: Vec<Timing> = lookup(summary, "control.timings")
        .and_then(Value::as_array)
        .context("the summary has no control.timings")?
        .iter()
        .map(Timing::parse)
        .collect::<Result<_>>()?;
    if timings.len() != expected {
        bail!(
            "expected {expected} enclaves' timings, got {}",
            timings.len()
        );
    }
    let hz = summary.get("tsc_hz").and_then(Value::as_u64).unwrap_or(0);
    println!(
        "atoll's share of creating and destroying an enclave from the host, {} ({}), TSC {} MHz{}",
        emulator.name(),
        summary
            .get("cpu_virt")
            .and_then(Value::as_str)
            .unwrap_or("-"),
        hz / 1_000_000,
        if emulator == Emulator::Bochs {
            " (Bochs: cycles are instructions)"
        } else {
            ""
        }
    );
    print!("{}", table(&timings, hz));
    println!("wall          {:.1} s", o.wall.as_secs_f64());
    let json = serde_json::json!({
        "bench": "lifecycle",
        "emulator": emulator.name(),
        "cpu_virt": summary.get("cpu_virt"),
        "tsc_hz": hz,
        "command": format!("cargo xtask bench lifecycle --emulator {}", emulator.name()),
        "timings": lookup(summary, "control.timings"),
        "zero_bytes_per_cycle": timings.iter().map(|t| (t.name.clone(), serde_json::json!(t.zero_bytes_per_cycle()))).collect::<serde_json::Map<String, Value>>(),
        "wall_s": o.wall.as_secs_f64(),
    });
    let path = crate::write_bench_json(&format!("lifecycle-{}", emulator.name()), &json)?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timings_parse_and_tabulate() {
        let v = json!({"name": "e256", "memory_mib": 256, "create_cycles": 1000,
            "load_cycles": 2000, "start_to_guest_cycles": 3000, "destroy_cycles": 5000,
            "zero_cycles": 4096});
        let t = Timing::parse(&v).unwrap();
        assert_eq!(
            (t.create, t.load, t.start, t.destroy, t.zero),
            (1000, 2000, 3000, 5000, 4096)
        );
        assert!((t.zero_bytes_per_cycle() - 65536.0).abs() < 1e-9);
        let s = table(&[t], 1_000_000);
        assert!(s.contains("e256") && s.contains("65536.00"), "{s}");
        assert!(s.contains("5.0 ms"), "{s}");
        let e = Timing::parse(&json!({"name": "x"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory_mib"), "{e}");
    }

    #[test]
    fn the_scenario_asks_for_both_sizes() {
        let machine = std::fs::read_to_string(
            crate::root().join("tests/scenarios/machines/bench-lifecycle.toml"),
        )
        .unwrap();
        assert!(machine.contains("bench_lifecycle"), "{machine}");
    }
}
