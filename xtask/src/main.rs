//! `cargo xtask …` — see `cargo xtask --help`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::process::Command;
use xtask::run::{run, RunOptions};
use xtask::scenario::{Emulator, Scenario};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, boot and test atoll")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (emulators, GRUB tools, the bare-metal Rust target). Needs root.
    Setup,
    /// Build the atoll image (x86_64-unknown-none ELF).
    Build,
    /// Build a bootable GRUB ISO for a scenario.
    Image {
        /// Scenario under tests/scenarios/.
        #[arg(long, default_value = "boot")]
        scenario: String,
    },
    /// Boot a scenario in an emulator, stream COM1, exit with the run's verdict.
    Run(RunArgs),
    /// Build the Linux guest image: a Debian kernel and an initramfs that runs atoll-check.
    GuestImage(GuestImageArgs),
    /// Host unit tests of every crate, then the emulator tests.
    Test {
        /// Only the host unit tests.
        #[arg(long)]
        unit_only: bool,
    },
    /// Set up, build and boot atoll in Bochs with 2 CPUs, and show the core and VMX report.
    Demo,
    /// Boot with `dump_acpi` and save every ACPI table under tests/fixtures/acpi/.
    CaptureAcpi {
        /// Scenario whose machine to capture (its qemu_args apply).
        #[arg(long, default_value = "boot")]
        scenario: String,
        #[arg(long, value_enum)]
        emulator: Emulator,
        #[arg(long, default_value_t = 2)]
        cpus: u32,
    },
    /// List the scenarios.
    Scenarios,
    /// Benchmarks: print a table and write JSON under target/bench/.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Boot time: the boot scenario on QEMU (1, 2, 4 CPUs) and Bochs (2 CPUs).
    Boot {
        /// Runs per configuration.
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Skip Bochs (about 20 s a run).
        #[arg(long)]
        no_bochs: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// bochs (VMX) or qemu (SVM).
    #[arg(long, value_enum)]
    emulator: Emulator,
    /// Scenario under tests/scenarios/.
    #[arg(long, default_value = "boot")]
    scenario: String,
    /// Processors (default: the scenario's).
    #[arg(long)]
    cpus: Option<u32>,
    /// RAM in MiB (default: the scenario's).
    #[arg(long)]
    memory: Option<u32>,
    /// Hard timeout in seconds (default: the scenario's).
    #[arg(long)]
    timeout: Option<u64>,
    /// Extra atoll boot options, e.g. "log=debug".
    #[arg(long, default_value = "")]
    cmdline: String,
}

#[derive(clap::Args)]
struct GuestImageArgs {
    /// Kernel package (e.g. linux-image-6.1.0-56-cloud-amd64) or flavour (amd64, cloud, rt);
    /// default: the newest linux-image-6.1.0-N-amd64 apt knows.
    #[arg(long)]
    kernel: Option<String>,
    /// Then boot it in QEMU directly (no atoll) and fail unless it reports ok and powers off.
    #[arg(long)]
    smoke_test: bool,
    /// Processors for the smoke test.
    #[arg(long, default_value_t = 2, requires = "smoke_test")]
    cpus: u32,
    /// RAM in MiB for the smoke test.
    #[arg(long, default_value_t = 512, requires = "smoke_test")]
    memory: u32,
    /// Smoke-test timeout in seconds.
    #[arg(long, default_value_t = 180, requires = "smoke_test")]
    timeout: u64,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => xtask::setup::setup(),
        Cmd::Build => xtask::image::build().map(|elf| println!("{}", elf.display())),
        Cmd::Image { scenario } => Scenario::load(&scenario)
            .and_then(|s| xtask::image::iso(&s, ""))
            .map(|iso| println!("{}", iso.display())),
        Cmd::Run(args) => run_cmd(args),
        Cmd::GuestImage(args) => guest_image(args),
        Cmd::Test { unit_only } => test(unit_only),
        Cmd::Demo => demo(),
        Cmd::CaptureAcpi {
            scenario,
            emulator,
            cpus,
        } => capture_acpi(&scenario, emulator, cpus),
        Cmd::Bench {
            which: Bench::Boot { runs, no_bochs },
        } => bench_boot(runs, no_bochs),
        Cmd::Scenarios => Scenario::names().map(|names| {
            for n in names {
                let d = Scenario::load(&n)
                    .map(|s| s.description)
                    .unwrap_or_else(|e| format!("(invalid: {e:#})"));
                println!("{n:16} {d}");
            }
        }),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run_cmd(args: RunArgs) -> Result<()> {
    let opts = RunOptions {
        emulator: args.emulator,
        scenario: args.scenario,
        cpus: args.cpus,
        memory_mib: args.memory,
        timeout_s: args.timeout,
        extra_cmdline: args.cmdline,
        stream: true,
    };
    let outcome = run(&opts)?;
    if outcome.passed() {
        eprintln!(
            "xtask: run passed in {:.1} s ({})",
            outcome.wall.as_secs_f64(),
            outcome.work_dir.display()
        );
        Ok(())
    } else {
        bail!("{}", outcome.failure())
    }
}

fn guest_image(args: GuestImageArgs) -> Result<()> {
    use xtask::guest_image::{self, GuestImage, KernelChoice};
    let choice = KernelChoice::parse(args.kernel.as_deref())?;
    let img = guest_image::build(&choice)?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    println!(
        "kernel  {} ({} {})",
        img.kernel.display(),
        img.package,
        img.version
    );
    println!("initrd  {}", img.initrd.display());
    println!(
        "sizes   vmlinuz {:.1} MB, initrd {:.1} MB (package {:.1} MB)",
        size(&img.kernel) as f64 / 1e6,
        size(&img.initrd) as f64 / 1e6,
        img.deb_bytes as f64 / 1e6
    );
    println!("cmdline {}", GuestImage::cmdline(2, 512));
    if !args.smoke_test {
        return Ok(());
    }
    let timeout = std::time::Duration::from_secs(args.timeout);
    let o = guest_image::smoke_test(&img, args.cpus, args.memory, timeout, true)?;
    if !o.passed() {
        bail!("{}", o.failure());
    }
    let secs = |d: Option<std::time::Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    eprintln!(
        "xtask: guest image smoke test passed: report after {:.1} s, powered off after {:.1} s ({} CPUs, {} MiB)",
        secs(o.to_report),
        secs(o.to_poweroff),
        args.cpus,
        args.memory
    );
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(xtask::root());
    c
}

fn test(unit_only: bool) -> Result<()> {
    xtask::setup::setup()?;
    eprintln!("xtask: host unit tests");
    let status = cargo()
        .args(["test", "--workspace", "--exclude", "atoll-emulator-tests"])
        .status()?;
    if !status.success() {
        bail!("host unit tests failed");
    }
    if unit_only {
        return Ok(());
    }
    eprintln!("xtask: building the image");
    xtask::image::build()?;
    eprintln!("xtask: emulator tests (QEMU, then Bochs; each boots atoll and checks its summary)");
    let status = cargo()
        .args([
            "test",
            "-p",
            "atoll-emulator-tests",
            "--",
            "--test-threads=1",
        ])
        .status()?;
    if !status.success() {
        bail!("emulator tests failed");
    }
    eprintln!("xtask: all tests passed");
    Ok(())
}

fn demo() -> Result<()> {
    xtask::setup::setup()?;
    // Two enclaves on the two cores of a Bochs machine with VMX: the default scenario.
    let mut opts = RunOptions::new(Emulator::Bochs, "guest-suite");
    opts.cpus = Some(2);
    opts.stream = true;
    let outcome = run(&opts)?;
    let Some(summary) = &outcome.summary else {
        bail!("{}", outcome.failure())
    };
    let yes = |v: &Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    println!();
    println!(
        "atoll in Bochs ({} CPUs), {:.0} s wall:",
        outcome.cpus,
        outcome.wall.as_secs_f64()
    );
    println!(
        "  {:<6} {:<6} {:<7} {:<4} {:<4} {:<5} {:<18}",
        "APIC", "role", "online", "VMX", "EPT", "VPID", "unrestricted guest"
    );
    for core in summary["cores"].as_array().into_iter().flatten() {
        let caps = &core["caps"];
        println!(
            "  {:<6} {:<6} {:<7} {:<4} {:<4} {:<5} {:<18}",
            core["apic_id"].as_u64().unwrap_or(0),
            if core["bsp"].as_bool() == Some(true) {
                "BSP"
            } else {
                "AP"
            },
            yes(&core["online"]),
            yes(&caps["vmx"]),
            yes(&caps["ept"]),
            yes(&caps["vpid"]),
            yes(&caps["unrestricted_guest"])
        );
    }
    println!(
        "  {} of {} cores online; {} MiB usable RAM; DMAR {}",
        summary["cores_online"],
        summary["cores_total"],
        summary["memory_usable_bytes"].as_u64().unwrap_or(0) >> 20,
        if summary["dmar"].as_bool() == Some(true) {
            "present"
        } else {
            "absent"
        }
    );
    println!();
    println!(
        "  {:<8} {:<6} {:<8} {:<34} {:<8} {:<10} {:<10}",
        "enclave", "core", "RAM MiB", "how it ended", "suite", "CPUID cyc", "VMCALL cyc"
    );
    for e in summary["enclaves"].as_array().into_iter().flatten() {
        let results = &e["results"];
        let suite = [&results["suite_passed"], &results["real_mode_passed"]]
            .into_iter()
            .find(|v| !v.is_null())
            .map_or("-", |v| {
                if v.as_bool() == Some(true) {
                    "passed"
                } else {
                    "FAILED"
                }
            });
        let cycles = |k: &str| {
            results[k]
                .as_u64()
                .map_or("-".to_string(), |c| c.to_string())
        };
        println!(
            "  {:<8} {:<6} {:<8} {:<34} {:<8} {:<10} {:<10}",
            e["name"].as_str().unwrap_or("?"),
            e["cores"][0].as_u64().map_or("?".into(), |c| c.to_string()),
            e["memory_mib"].as_u64().unwrap_or(0),
            e["detail"].as_str().unwrap_or(""),
            suite,
            cycles("cpuid_cycles"),
            cycles("hypercall_cycles")
        );
    }
    if outcome.passed() {
        Ok(())
    } else {
        bail!("{}", outcome.failure())
    }
}

fn bench_boot(runs: u32, no_bochs: bool) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut configs = vec![
        (Emulator::Qemu, 1),
        (Emulator::Qemu, 2),
        (Emulator::Qemu, 4),
    ];
    if !no_bochs {
        configs.push((Emulator::Bochs, 2));
    }
    let mut rows = Vec::new();
    for (emulator, cpus) in configs {
        let mut walls = Vec::new();
        let mut bringup = Vec::new();
        for i in 0..runs {
            eprintln!(
                "bench boot: {} {cpus} CPU(s), run {}/{runs}",
                emulator.name(),
                i + 1
            );
            let mut opts = RunOptions::new(emulator, "boot");
            opts.cpus = Some(cpus);
            let o = run(&opts)?;
            if !o.passed() {
                bail!("{}", o.failure());
            }
            walls.push(o.wall.as_secs_f64());
            bringup.push(
                o.summary
                    .as_ref()
                    .and_then(|s| s["ap_bringup_us"].as_u64())
                    .unwrap_or(0),
            );
        }
        walls.sort_by(f64::total_cmp);
        bringup.sort();
        rows.push(serde_json::json!({
            "emulator": emulator.name(),
            "cpus": cpus,
            "runs": runs,
            "wall_s_median": walls[walls.len() / 2],
            "wall_s_min": walls[0],
            "wall_s_max": walls[walls.len() - 1],
            "ap_bringup_us_median": bringup[bringup.len() / 2],
        }));
    }
    println!(
        "{:<8} {:>4} {:>5} {:>14} {:>10} {:>10} {:>18}",
        "emulator", "cpus", "runs", "wall s median", "min", "max", "AP bring-up us"
    );
    for r in &rows {
        println!(
            "{:<8} {:>4} {:>5} {:>14.2} {:>10.2} {:>10.2} {:>18}",
            r["emulator"].as_str().unwrap_or(""),
            r["cpus"].as_u64().unwrap_or(0),
            r["runs"].as_u64().unwrap_or(0),
            r["wall_s_median"].as_f64().unwrap_or(0.0),
            r["wall_s_min"].as_f64().unwrap_or(0.0),
            r["wall_s_max"].as_f64().unwrap_or(0.0),
            r["ap_bringup_us_median"].as_u64().unwrap_or(0)
        );
    }
    let dir = xtask::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("boot.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({ "bench": "boot", "rows": rows }))?,
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

fn capture_acpi(scenario: &str, emulator: Emulator, cpus: u32) -> Result<()> {
    let mut opts = RunOptions::new(emulator, scenario);
    opts.cpus = Some(cpus);
    opts.extra_cmdline = "dump_acpi".into();
    let outcome = run(&opts)?;
    let dir = xtask::root()
        .join("tests/fixtures/acpi")
        .join(format!("{scenario}-{}-{cpus}cpu", emulator.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut count = 0;
    for line in outcome.serial.lines() {
        let Some(rest) = line.strip_prefix("ATOLL-ACPI ") else {
            continue;
        };
        let (sig, hex) = rest.split_once(' ').context("malformed ATOLL-ACPI line")?;
        let bytes: Result<Vec<u8>, _> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect();
        let mut path = dir.join(sig);
        let mut n = 1;
        while path.exists() && n < 100 {
            path = dir.join(format!("{sig}.{n}"));
            n += 1;
        }
        std::fs::write(&path, bytes.context("bad hex in ATOLL-ACPI line")?)?;
        count += 1;
    }
    if count == 0 {
        bail!("the run printed no ACPI tables:\n{}", outcome.tail(20));
    }
    println!("saved {count} tables in {}", dir.display());
    Ok(())
}
