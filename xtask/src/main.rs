//! `cargo xtask …` — see `cargo xtask --help`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use xtask::guest_image::GuestKernel;
use xtask::image::ImageOptions;
use xtask::run::{run, RunOptions, RunOutcome};
use xtask::scenario::{lookup, Emulator, Scenario};

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
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Boot a scenario in an emulator, stream COM1, exit with the run's verdict.
    Run(RunArgs),
    /// Build the Linux guest image: a Debian kernel and an initramfs that runs atoll-check.
    GuestImage(GuestImageArgs),
    /// Lints (rustfmt, clippy on the host and for the image and guests), host unit tests of
    /// every crate, then the emulator tests.
    Test {
        /// Only the lints and the host unit tests.
        #[arg(long)]
        unit_only: bool,
    },
    /// rustfmt --check, then clippy with warnings denied on the host and for the bare-metal
    /// image and guests (x86_64-unknown-none).
    Lint,
    /// Set up, build and boot the demo scenario in QEMU (the host's Linux as the root
    /// partition with a Linux enclave beside it; the host creates, lists, inspects and destroys
    /// an enclave with the `atoll` command, then gives a Linux enclave an SR-IOV NIC's VF and
    /// pings it), and show the core report, each partition's end, the checks and the host's
    /// session.
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
    /// atoll's share of creating and destroying a 256 MiB and a 2 GiB enclave from the host
    /// (the doorbell to the guest's first instruction; to the cores parked and the memory
    /// zeroed), in cycles, and bytes zeroed per cycle.
    Lifecycle {
        /// qemu (SVM) or bochs (VMX).
        #[arg(long, value_enum, default_value = "qemu")]
        emulator: Emulator,
    },
    /// The network over an SR-IOV VF passed through to an enclave (QEMU only): ping round
    /// trip and TCP throughput enclave ↔ host against host ↔ host over the same NIC, and the
    /// enclave's exits and interrupts per 1,000 packets.
    Net {
        /// qemu (SVM with VT-d and an igb NIC); bochs is refused (no VT-d, no SR-IOV).
        #[arg(long, value_enum, default_value = "qemu")]
        emulator: Emulator,
        /// The virtio-net round with atoll-channeld polling its channel every 10 ms instead
        /// of waiting for its INTx.
        #[arg(long)]
        virtio_poll: bool,
    },
    /// A virtio-blk disk over a channel window (QEMU only): fio's 4 KiB sequential and random
    /// reads and writes in an enclave on its disk, served by atoll-channeld from a raw image,
    /// against the host's on the same file, and the enclave's exits per I/O.
    Blk {
        /// qemu (SVM with VT-d); bochs is refused (no VT-d).
        #[arg(long, value_enum, default_value = "qemu")]
        emulator: Emulator,
        /// atoll-channeld polls its channel every 10 ms instead of waiting for its INTx.
        #[arg(long)]
        virtio_poll: bool,
    },
    /// The headline experiment (issue 15): HPCG, the FWQ/oslat noise probes and exit costs on
    /// cores 2 and 3, solo and under each stress-ng load on cores 0 and 1, natively, in an
    /// atoll enclave and in a KVM guest (default and tuned host): a table (HPCG's rating and
    /// loaded/solo cycles, FWQ detours, oslat, exits per second per core, interrupts, exit
    /// costs), target/bench/isolation-EMU.json and .png.
    Isolation {
        /// bochs (the reference: a busy CPU's TSC counts its own instructions) or qemu (the
        /// pipeline).
        #[arg(long, value_enum, default_value = "qemu")]
        emulator: Emulator,
        /// Load profiles, comma-separated: cpu, memory, timers, ipi, io, all (every one at once).
        #[arg(long, default_value = "all")]
        load: String,
        /// HPCG's grid side (NX = NY = NZ): a multiple of 8 from 16.
        #[arg(long, default_value_t = 16)]
        size: u32,
        /// HPCG's run time in seconds (0: its quick path, one set).
        #[arg(long, default_value_t = 0)]
        rt: u32,
        /// FWQ's samples per CPU (100 µs quanta).
        #[arg(long, default_value_t = 2000)]
        fwq_samples: u32,
        /// oslat's seconds per run (0: none).
        #[arg(long, default_value_t = 2)]
        oslat: u32,
        /// Configurations, comma-separated: native, atoll, kvm-default, kvm-tuned.
        #[arg(long, default_value = "native,atoll,kvm-default,kvm-tuned")]
        configs: String,
        /// The workload guest's extra kernel words, the enclave's and the KVM guest's alike.
        #[arg(long, default_value = xtask::bench_isolation::GUEST_CMDLINE)]
        guest_cmdline: String,
        /// Configurations booted at once (an emulator takes a host core: Bochs runs long).
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// Names the output files target/bench/isolation-EMU-TAG.{json,png} (runs with other
        /// loads or configurations kept apart, for --merge).
        #[arg(long)]
        tag: Option<String>,
        /// Boots nothing: one table, JSON and plot (named by --tag, which it needs) from earlier
        /// runs' JSON files, comma-separated: e.g. atoll under every profile and the baselines
        /// under `all`, measured apart; a configuration's runs from several files are joined.
        #[arg(long, value_delimiter = ',', requires = "tag",
              conflicts_with_all = ["load", "size", "rt", "fwq_samples", "oslat", "configs",
                                    "guest_cmdline", "parallel"])]
        merge: Vec<String>,
    },
    /// Idle Linux: boot linux-enclave with atoll.idle=N and report the exits per second (timer,
    /// IPI, HLT, other) atoll counted while the guest slept, and its boot-to-init time. With
    /// `--partition host`: boot the host's Linux alone as the root partition (scenario
    /// bench-host) and report its boot-to-init time and its exits per second by kind while it
    /// idles N s and while it runs a build-like load N s on all its CPUs.
    Idle {
        /// qemu (SVM) or bochs (VMX).
        #[arg(long, value_enum, default_value = "qemu")]
        emulator: Emulator,
        /// Seconds the guest idles (and, for the host, runs its load) (default: 10 on QEMU, 3
        /// on Bochs).
        #[arg(long)]
        seconds: Option<u32>,
        /// Which partition: a Linux enclave, or the host's Linux as the root partition.
        #[arg(long, value_enum, default_value = "enclave")]
        partition: Partition,
        #[command(flatten)]
        kernel: KernelArgs,
    },
}

/// The partition `bench idle` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Partition {
    /// A Linux enclave (scenario linux-enclave).
    Enclave,
    /// The host's Linux as the root partition (scenario bench-host).
    Host,
}

/// Which Linux kernel a scenario's `linux = "kernel"` module holds.
#[derive(clap::Args, Clone, Debug, Default)]
struct KernelArgs {
    /// A bzImage to use as the Linux guest's kernel instead of the guest image's (the
    /// initramfs stays the guest image's).
    #[arg(long, value_name = "PATH")]
    guest_kernel: Option<PathBuf>,
    /// The guest image's kernel from this Debian package (e.g.
    /// linux-image-6.1.0-56-cloud-amd64) or flavour (amd64, cloud, rt); default: the newest
    /// stock 6.1 kernel.
    #[arg(long, value_name = "NAME", conflicts_with = "guest_kernel")]
    guest_kernel_package: Option<String>,
}

impl KernelArgs {
    fn choice(&self) -> Result<GuestKernel> {
        GuestKernel::from_args(
            self.guest_kernel.as_deref(),
            self.guest_kernel_package.as_deref(),
        )
    }
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
    /// Words appended to an enclave's command line: NAME=WORDS, e.g. "linux=atoll.idle=5"
    /// (repeatable); in a scenario with a machine description, "host=WORDS" goes to the root
    /// partition's.
    #[arg(long, value_name = "NAME=WORDS")]
    enclave_cmdline: Vec<String>,
    /// Types TEXT (and a newline) on the machine's COM1 once a console line contains PROMPT
    /// (QEMU only); e.g. "ATOLL-GUEST-INPUT?=hello" with "--enclave-cmdline
    /// linux=atoll.echo_input=1" and an enclave with `serial_input = true`.
    #[arg(long, value_name = "PROMPT=TEXT")]
    serial_input: Option<String>,
    #[command(flatten)]
    kernel: KernelArgs,
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
        Cmd::Image { scenario, kernel } => image_cmd(&scenario, &kernel),
        Cmd::Run(args) => run_cmd(args),
        Cmd::GuestImage(args) => guest_image(args),
        Cmd::Test { unit_only } => test(unit_only),
        Cmd::Lint => xtask::lint::lint().map(drop),
        Cmd::Demo => demo(),
        Cmd::CaptureAcpi {
            scenario,
            emulator,
            cpus,
        } => capture_acpi(&scenario, emulator, cpus),
        Cmd::Bench {
            which: Bench::Boot { runs, no_bochs },
        } => bench_boot(runs, no_bochs),
        Cmd::Bench {
            which: Bench::Lifecycle { emulator },
        } => xtask::bench_lifecycle::bench(emulator),
        Cmd::Bench {
            which: Bench::Isolation { tag, merge, .. },
        } if !merge.is_empty() => xtask::bench_isolation::merge(&merge, tag.as_deref()),
        Cmd::Bench {
            which:
                Bench::Isolation {
                    emulator,
                    load,
                    size,
                    rt,
                    fwq_samples,
                    oslat,
                    configs,
                    guest_cmdline,
                    parallel,
                    tag,
                    merge: _,
                },
        } => xtask::bench_isolation::Options::new(
            emulator,
            &load,
            size,
            rt,
            fwq_samples,
            oslat,
            &configs,
        )
        .and_then(|mut o| {
            o.guest_cmdline = guest_cmdline;
            o.parallel = parallel;
            o.tag = tag;
            xtask::bench_isolation::bench(&o)
        }),
        Cmd::Bench {
            which: Bench::Net {
                emulator,
                virtio_poll,
            },
        } => xtask::bench_net::bench(emulator, virtio_poll),
        Cmd::Bench {
            which: Bench::Blk {
                emulator,
                virtio_poll,
            },
        } => xtask::bench_blk::bench(emulator, virtio_poll),
        Cmd::Bench {
            which:
                Bench::Idle {
                    emulator,
                    seconds,
                    partition: Partition::Enclave,
                    kernel,
                },
        } => bench_idle(emulator, seconds, &kernel),
        Cmd::Bench {
            which:
                Bench::Idle {
                    emulator,
                    seconds,
                    partition: Partition::Host,
                    kernel,
                },
        } => kernel.choice().and_then(|k| {
            xtask::bench_host::bench(
                emulator,
                seconds.unwrap_or(default_idle_seconds(emulator)),
                k,
            )
        }),
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

fn image_cmd(scenario: &str, kernel: &KernelArgs) -> Result<()> {
    let s = Scenario::load(scenario)?;
    let opts = ImageOptions {
        guest_kernel: kernel.choice()?,
        ..ImageOptions::default()
    };
    let iso = xtask::image::iso(&s, &opts)?;
    if let Some(k) = &iso.guest_kernel {
        eprintln!("xtask: Linux kernel {k}");
    }
    println!("{}", iso.path.display());
    Ok(())
}

/// `NAME=WORDS` of `--enclave-cmdline`.
fn parse_enclave_cmdline(arg: &str) -> Result<(String, String)> {
    match arg.split_once('=') {
        Some((name, words)) if !name.is_empty() && !words.trim().is_empty() => {
            Ok((name.to_string(), words.trim().to_string()))
        }
        _ => bail!("--enclave-cmdline {arg}: expected NAME=WORDS, e.g. linux=atoll.idle=5"),
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
        guest_kernel: args.kernel.choice()?,
        enclave_cmdline: args
            .enclave_cmdline
            .iter()
            .map(|a| parse_enclave_cmdline(a))
            .collect::<Result<_>>()?,
        stream: true,
        serial_input: match args.serial_input.as_deref().map(|a| a.split_once('=')) {
            None => None,
            Some(Some((prompt, text))) if !prompt.is_empty() => {
                Some((prompt.to_string(), format!("{text}\n")))
            }
            Some(_) => {
                bail!("--serial-input: expected PROMPT=TEXT, e.g. \"ATOLL-GUEST-INPUT?=hello\"")
            }
        },
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
        "host    the same kernel and initramfs: /init runs atoll-check --role host when atoll.role=host is on the command line"
    );
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
    xtask::lint::lint().context("lints failed")?;
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
    // The Linux tests boot the guest image with the stock and the cloud kernel: build (download)
    // both here, where the progress shows, rather than inside a test whose output is captured.
    for flavour in [None, Some("cloud")] {
        let choice = xtask::guest_image::KernelChoice::parse(flavour)?;
        eprintln!(
            "xtask: Linux guest image ({} kernel)",
            flavour.unwrap_or("stock")
        );
        xtask::guest_image::build(&choice)?;
    }
    eprintln!(
        "xtask: emulator tests, QEMU first, one at a time (each boots atoll and checks its \
         summary)"
    );
    let status = cargo()
        .args([
            "test",
            "-p",
            "atoll-emulator-tests",
            "--",
            "--skip",
            "bochs",
            "--test-threads=1",
        ])
        .status()?;
    if !status.success() {
        bail!("emulator tests failed (QEMU's, and those without an emulator of their own)");
    }
    bochs_lanes()?;
    eprintln!("xtask: all tests passed");
    Ok(())
}

/// The Bochs tests, in two lanes at once (one on a single-core machine): Bochs' clock is its instruction count (`sync=none`),
/// so a test's emulated time does not depend on what else runs, and each Bochs takes one core
/// of its own (QEMU's guests run on the host's clock: their tests run alone, before). The test
/// files are split by their Bochs tests' weight (minutes each); a file not named here goes to
/// the lighter lane.
fn bochs_lanes() -> Result<()> {
    const WEIGHT: [(&str, u32); 6] = [
        ("lifecycle", 7),
        ("virtio", 6),
        ("root", 4),
        ("enclaves", 3),
        ("linux", 2),
        ("boot", 1),
    ];
    // The test executables (built by the run before), by file name.
    let out = cargo()
        .args([
            "test",
            "-p",
            "atoll-emulator-tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the emulator tests failed");
    }
    let mut exes: Vec<(String, PathBuf)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["kind"][0] == "test")
        .filter_map(|v| {
            Some((
                v["target"]["name"].as_str()?.to_string(),
                PathBuf::from(v["executable"].as_str()?),
            ))
        })
        .collect();
    if !exes.iter().any(|(n, _)| WEIGHT.iter().any(|(w, _)| w == n)) {
        bail!(
            "the emulator tests' executables were not found (cargo --no-run named {:?})",
            exes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
        );
    }
    exes.sort_by_key(|(n, _)| {
        std::cmp::Reverse(WEIGHT.iter().find(|(w, _)| w == n).map_or(0, |(_, x)| *x))
    });
    let mut lanes: [(u32, Vec<(String, PathBuf)>); 2] = Default::default();
    for (name, exe) in exes {
        let w = WEIGHT
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, x)| *x);
        let lane = if lanes[0].0 <= lanes[1].0 { 0 } else { 1 };
        lanes[lane].0 += w;
        lanes[lane].1.push((name, exe));
    }
    eprintln!(
        "xtask: Bochs tests in two lanes at once: {} | {}",
        lanes[0]
            .1
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        lanes[1]
            .1
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let dir = xtask::root().join("tests");
    let failed = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .enumerate()
            .map(|(i, (_, files))| {
                let dir = &dir;
                scope.spawn(move || -> Vec<String> {
                    let mut failed = Vec::new();
                    for (name, exe) in files {
                        let ok = run_prefixed(
                            Command::new(exe)
                                .args(["bochs", "--test-threads=1"])
                                .current_dir(dir),
                            &format!("[bochs {}: {name}] ", i + 1),
                        );
                        if !ok {
                            failed.push(name.clone());
                        }
                    }
                    failed
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| vec!["a lane panicked".into()]))
            .collect::<Vec<_>>()
    });
    if !failed.is_empty() {
        bail!("emulator tests failed (Bochs): {}", failed.join(", "));
    }
    Ok(())
}

/// Runs `cmd` with each line of its output (stdout and stderr) printed whole behind `prefix`:
/// two lanes' lines never mix. Whether it succeeded.
fn run_prefixed(cmd: &mut Command, prefix: &str) -> bool {
    use std::io::BufRead;
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{prefix}cannot start: {e}");
            return false;
        }
    };
    let (out, err) = (child.stdout.take(), child.stderr.take());
    // Whole lines, made valid UTF-8 (a stray byte must not stop the reading: the child would
    // then die on a closed pipe); a read error ends the copy.
    fn each_line(r: impl std::io::Read, mut f: impl FnMut(&str)) {
        let mut r = std::io::BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => f(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r'])),
            }
        }
    }
    std::thread::scope(|s| {
        if let Some(err) = err {
            s.spawn(move || each_line(err, |l| eprintln!("{prefix}{l}")));
        }
        if let Some(out) = out {
            each_line(out, |l| println!("{prefix}{l}"));
        }
    });
    child.wait().is_ok_and(|s| s.success())
}

/// A summary value for a table cell: numbers and strings as they are, `-` when absent.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.into(),
        Some(v) => v.to_string(),
    }
}

/// The scenario `cargo xtask demo` boots: the host's Linux as the root partition on two cores
/// beside a Linux enclave on the third, whose `/init` operates an enclave with the `atoll`
/// command and passes a VF of QEMU's igb through to another; the tables show the cores, the
/// enclaves and the host, then the host's session.
const DEMO_SCENARIO: &str = "demo";

/// The partition table's line for the root partition (same columns as the enclaves'), when the
/// summary has one.
fn host_row(summary: &Value) -> Option<String> {
    let h = summary.get("host")?;
    let check = match h["results"]["guest_check"]["ok"].as_bool() {
        None => "-",
        Some(true) => "passed",
        Some(false) => "FAILED",
    };
    let cores: Vec<String> = h["cores"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| cell(Some(c)))
        .collect();
    Some(format!(
        "  {:<9} {:<8} {:<8} {:<12} {:<12} {:<40}",
        "host",
        cores.join(","),
        cell(h.get("memory_mib")),
        cell(h.get("end_reason")),
        check,
        format!(
            "restarts {}, refused reads {} writes {}, IPIs dropped {}, DMA isolated {}",
            cell(h.get("restarts")),
            cell(h.get("refused_reads")),
            cell(h.get("refused_writes")),
            cell(h.get("ipis_dropped")),
            cell(summary.get("dma_isolation"))
        )
    ))
}

fn demo() -> Result<()> {
    xtask::setup::setup()?;
    // In QEMU (SVM): the fast emulator.
    let mut opts = RunOptions::new(Emulator::Qemu, DEMO_SCENARIO);
    opts.stream = true;
    let outcome = run(&opts)?;
    let Some(summary) = &outcome.summary else {
        bail!("{}", outcome.failure())
    };
    let at = |path: &str| cell(lookup(summary, path));
    println!();
    println!(
        "atoll in QEMU ({} CPUs, backend {}), {:.0} s wall; Linux kernel {}:",
        outcome.cpus,
        at("cpu_virt"),
        outcome.wall.as_secs_f64(),
        outcome.guest_kernel.as_deref().unwrap_or("-")
    );
    println!(
        "  {:<6} {:<6} {:<7} {:<4} {:<4} {:<4} {:<4}",
        "APIC", "role", "online", "VMX", "EPT", "SVM", "NPT"
    );
    for core in summary["cores"].as_array().into_iter().flatten() {
        let caps = |k: &str| cell(core.get("caps").and_then(|c| c.get(k)));
        println!(
            "  {:<6} {:<6} {:<7} {:<4} {:<4} {:<4} {:<4}",
            cell(core.get("apic_id")),
            if core["bsp"].as_bool() == Some(true) {
                "BSP"
            } else {
                "AP"
            },
            cell(core.get("online")),
            caps("vmx"),
            caps("ept"),
            caps("svm"),
            caps("npt")
        );
    }
    println!(
        "  {} of {} cores online; {} MiB usable RAM",
        at("cores_online"),
        at("cores_total"),
        summary["memory_usable_bytes"].as_u64().unwrap_or(0) >> 20
    );
    let enclaves: Vec<&Value> = summary["enclaves"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    println!();
    println!(
        "  {:<9} {:<8} {:<8} {:<12} {:<12} {:<40}",
        "partition", "cores", "RAM MiB", "ended by", "own check", "detail"
    );
    if let Some(row) = host_row(summary) {
        println!("{row}");
    }
    for e in &enclaves {
        let results = &e["results"];
        let check = [
            &results["suite_passed"],
            &results["real_mode_passed"],
            &results["guest_check"]["ok"],
        ]
        .into_iter()
        .find(|v| !v.is_null())
        .map_or("-", |v| {
            if v.as_bool() == Some(true) {
                "passed"
            } else {
                "FAILED"
            }
        });
        let cores: Vec<String> = e["cores"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| cell(Some(c)))
            .collect();
        println!(
            "  {:<9} {:<8} {:<8} {:<12} {:<12} {:<40}",
            cell(e.get("name")),
            cores.join(","),
            cell(e.get("memory_mib")),
            cell(e.get("end_reason")),
            check,
            cell(e.get("detail"))
        );
    }
    // Exits by kind, one column per enclave.
    let mut kinds: Vec<&String> = enclaves
        .iter()
        .filter_map(|e| e["exits"].as_object())
        .flat_map(|m| m.keys())
        .collect();
    kinds.sort();
    kinds.dedup();
    println!();
    print!("  {:<18}", "exits");
    for e in &enclaves {
        print!(" {:>12}", cell(e.get("name")));
    }
    println!();
    for k in &kinds {
        print!("  {k:<18}");
        for e in &enclaves {
            print!(" {:>12}", cell(e["exits"].get(k.as_str())));
        }
        println!();
    }
    if kinds.is_empty() {
        println!("  (the summary counts no exits)");
    }
    // What Linux itself saw.
    let g = |k: &str| at(&format!("enclaves.linux.results.guest_check.{k}"));
    println!();
    println!("  Linux enclave, as atoll-check saw it:");
    println!("    check ok          {}", g("ok"));
    println!(
        "    CPUs online       {} (expected {})",
        g("cpus_online"),
        g("expect.cpus")
    );
    println!(
        "    memory            {} KiB seen by the kernel, MemTotal {} KiB",
        g("memory_kernel_kib"),
        g("memory_kib")
    );
    println!("    APIC mode         {}", g("apic_mode"));
    println!("    clocksource       {}", g("clocksource"));
    println!(
        "    TSC kHz           {} ({})",
        g("tsc_khz"),
        g("tsc_khz_source")
    );
    println!("    hypervisor        {}", g("hypervisor"));
    println!(
        "    /init exit status {}",
        at("enclaves.linux.results.guest_exit_status")
    );
    println!(
        "    boot to init      {} us ({} cycles)",
        at("enclaves.linux.boot_to_init.us"),
        at("enclaves.linux.boot_to_init.cycles")
    );
    if summary.get("host").is_some() {
        let h = |k: &str| at(&format!("host.results.guest_check.{k}"));
        println!();
        println!("  host (root partition), as atoll-check --role host saw it:");
        println!("    check ok          {}", h("ok"));
        println!(
            "    CPUs online       {} (atoll said {})",
            h("cpus_online"),
            h("host_expect.cpus")
        );
        println!(
            "    memory            {} KiB seen by the kernel (atoll said {} MiB)",
            h("memory_kernel_kib"),
            h("host_expect.memory_mib")
        );
        println!(
            "    enclave pool      {}; /dev/mem read {} bytes of it, all ones: {}",
            lookup(summary, "host.results.guest_check.host_expect.pool")
                .and_then(Value::as_array)
                .map_or("-".into(), |a| a
                    .iter()
                    .map(|v| cell(Some(v)))
                    .collect::<Vec<_>>()
                    .join(",")),
            h("pool_probe.bytes"),
            h("pool_probe.all_ones")
        );
        println!("    PCI devices       {}", h("pci.count"));
        for p in lookup(summary, "host.results.guest_check.problems")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            println!("    problem: {}", cell(Some(p)));
        }
    }
    for p in lookup(summary, "enclaves.linux.results.guest_check.problems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!("    problem: {}", cell(Some(p)));
    }
    // The operator's session on the host: the atoll command's own output.
    let session: Vec<&str> = xtask::console::enclave_lines(&outcome.serial, "host")
        .into_iter()
        .filter_map(|l| l.strip_prefix("ATOLL-DEMO"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    if !session.is_empty() {
        println!();
        println!(
            "  the host's shell (its /init ran these; see README, \"Using atoll on a machine\"):"
        );
        for l in session {
            println!("    {l}");
        }
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

/// Exit reasons `bench idle` reports, as keys of the summary's `enclaves.linux.idle`.
const IDLE_REASONS: &[(&str, &str)] = &[
    ("timer", "timer"),
    ("ipi", "IPI"),
    ("hlt", "HLT"),
    ("other", "other"),
];

/// The rows of `bench idle`: `(label, exits, exits per second)` for each reason and the total,
/// from the summary's `idle` object of the Linux enclave.
fn idle_rows(idle: &Value) -> Result<Vec<(&'static str, u64, f64)>> {
    let us = idle["us"]
        .as_u64()
        .filter(|&us| us > 0)
        .context("enclaves.linux.idle.us is missing or 0: the idle window was not measured")?;
    let secs = us as f64 / 1e6;
    let mut rows = Vec::new();
    let mut total = 0;
    for (key, label) in IDLE_REASONS {
        let n = idle[*key]
            .as_u64()
            .with_context(|| format!("enclaves.linux.idle.{key} is missing"))?;
        total += n;
        rows.push((*label, n, n as f64 / secs));
    }
    rows.push(("total", total, total as f64 / secs));
    Ok(rows)
}

/// `bench idle`'s window when `--seconds` is not given.
fn default_idle_seconds(emulator: Emulator) -> u32 {
    match emulator {
        Emulator::Qemu => 10,
        Emulator::Bochs => 3,
    }
}

fn bench_idle(emulator: Emulator, seconds: Option<u32>, kernel: &KernelArgs) -> Result<()> {
    let seconds = seconds.unwrap_or(default_idle_seconds(emulator));
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let scenario = Scenario::load("linux-enclave")?;
    let mut opts = RunOptions::new(emulator, "linux-enclave");
    opts.guest_kernel = kernel.choice()?;
    opts.enclave_cmdline = vec![("linux".into(), format!("atoll.idle={seconds}"))];
    // The guest's seconds may pass slower than the host's in an emulator.
    let base = match emulator {
        Emulator::Qemu => scenario.timeout_s.qemu,
        Emulator::Bochs => scenario.timeout_s.bochs,
    };
    opts.timeout_s = Some(base + 10 * u64::from(seconds));
    eprintln!(
        "bench idle: linux-enclave on {} with atoll.idle={seconds} (timeout {} s)",
        emulator.name(),
        base + 10 * u64::from(seconds)
    );
    let o: RunOutcome = run(&opts)?;
    if !o.passed() {
        bail!("{}", o.failure());
    }
    let summary = o.summary.as_ref().context("no summary")?;
    let idle = lookup(summary, "enclaves.linux.idle").with_context(|| {
        format!(
            "the summary has no enclaves.linux.idle (did the guest print ATOLL-IDLE begin/end? \
             see {})",
            o.work_dir.join("serial.log").display()
        )
    })?;
    let rows = idle_rows(idle)?;
    let boot = lookup(summary, "enclaves.linux.boot_to_init");
    let num = |v: Option<&Value>, k: &str| v.and_then(|v| v[k].as_u64());
    println!(
        "Linux idle for {seconds} s in {} ({} CPUs, {}), kernel {}",
        emulator.name(),
        o.cpus,
        cell(summary.get("cpu_virt")),
        o.guest_kernel.as_deref().unwrap_or("-")
    );
    println!("{:<8} {:>10} {:>12}", "exits", "count", "per second");
    for (label, n, rate) in &rows {
        println!("{label:<8} {n:>10} {rate:>12.1}");
    }
    println!(
        "idle window   {} us, {} cycles (measured by atoll)",
        cell(idle.get("us")),
        cell(idle.get("cycles"))
    );
    println!(
        "boot to init  {} us, {} cycles",
        num(boot, "us").map_or("-".into(), |v| v.to_string()),
        num(boot, "cycles").map_or("-".into(), |v| v.to_string())
    );
    println!("wall          {:.1} s", o.wall.as_secs_f64());
    let json = serde_json::json!({
        "bench": "idle",
        "emulator": emulator.name(),
        "cpus": o.cpus,
        "cpu_virt": summary.get("cpu_virt"),
        "kernel": o.guest_kernel,
        "idle_seconds_requested": seconds,
        "idle": idle,
        "exits_per_second": rows
            .iter()
            .map(|(label, _, rate)| (label.to_lowercase(), serde_json::json!(rate)))
            .collect::<serde_json::Map<_, _>>(),
        "boot_to_init": boot,
        "wall_s": o.wall.as_secs_f64(),
    });
    let dir = xtask::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("idle-{}.json", emulator.name()));
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn idle_rows_are_exits_per_second_of_the_window() {
        let idle = json!({"us": 2_000_000, "cycles": 5_000_000_000u64, "timer": 500, "ipi": 40, "hlt": 520, "other": 6});
        let rows = idle_rows(&idle).unwrap();
        let labels: Vec<&str> = rows.iter().map(|r| r.0).collect();
        assert_eq!(labels, ["timer", "IPI", "HLT", "other", "total"]);
        assert_eq!(rows[0].1, 500);
        assert!((rows[0].2 - 250.0).abs() < 1e-9);
        assert_eq!(rows[4].1, 1066);
        assert!((rows[4].2 - 533.0).abs() < 1e-9);
        // A window that was not measured, or a missing reason, is an error naming the field.
        let e = idle_rows(&json!({"us": 0, "timer": 1, "ipi": 0, "hlt": 0, "other": 0}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("idle.us"), "{e}");
        let e = idle_rows(&json!({"us": 10, "timer": 1, "hlt": 0, "other": 0}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("idle.ipi"), "{e}");
    }

    #[test]
    fn enclave_cmdline_arguments() {
        assert_eq!(
            parse_enclave_cmdline("linux=atoll.idle=5 quiet").unwrap(),
            ("linux".to_string(), "atoll.idle=5 quiet".to_string())
        );
        for bad in ["linux", "=x", "linux=", "linux=  "] {
            assert!(parse_enclave_cmdline(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_demo_shows_the_host_when_there_is_one() {
        assert_eq!(host_row(&json!({"enclaves": []})), None);
        let row = host_row(&json!({
            "dma_isolation": false,
            "host": {"cores": [0, 1], "memory_mib": 700, "end_reason": "power_off", "restarts": 1,
                     "refused_reads": 2, "refused_writes": 0, "ipis_dropped": 0,
                     "results": {"guest_check": {"ok": true}}}
        }))
        .unwrap();
        let words: Vec<&str> = row.split_whitespace().take(5).collect();
        assert_eq!(
            words,
            ["host", "0,1", "700", "power_off", "passed"],
            "{row}"
        );
        assert!(
            row.contains("restarts 1, refused reads 2 writes 0, IPIs dropped 0, DMA isolated no"),
            "{row}"
        );
        let row = host_row(&json!({"host": {"results": {"guest_check": {"ok": false}}}})).unwrap();
        assert!(
            row.contains("FAILED") && row.contains("restarts -"),
            "{row}"
        );
    }

    #[test]
    fn table_cells_show_a_dash_for_missing_fields() {
        let v = json!({"n": 3, "s": "svm", "b": true, "z": null});
        assert_eq!(cell(v.get("n")), "3");
        assert_eq!(cell(v.get("s")), "svm");
        assert_eq!(cell(v.get("b")), "yes");
        assert_eq!(cell(v.get("z")), "-");
        assert_eq!(cell(v.get("absent")), "-");
    }

    #[test]
    fn guest_kernel_arguments_are_checked_before_anything_is_built() {
        let cli = Cli::try_parse_from([
            "xtask",
            "run",
            "--emulator",
            "qemu",
            "--guest-kernel",
            "/nonexistent/bzImage",
        ])
        .unwrap();
        let Cmd::Run(args) = cli.command else {
            panic!("not run")
        };
        let e = format!("{:#}", args.kernel.choice().unwrap_err());
        assert!(e.contains("--guest-kernel /nonexistent/bzImage"), "{e}");
        // Both at once are refused by the parser.
        assert!(Cli::try_parse_from([
            "xtask",
            "run",
            "--emulator",
            "qemu",
            "--guest-kernel",
            "/x",
            "--guest-kernel-package",
            "cloud",
        ])
        .is_err());
        let cli = Cli::try_parse_from(["xtask", "bench", "idle", "--seconds", "4"]).unwrap();
        let Cmd::Bench {
            which: Bench::Idle {
                emulator, seconds, ..
            },
        } = cli.command
        else {
            panic!("not bench idle")
        };
        assert_eq!((emulator, seconds), (Emulator::Qemu, Some(4)));
        // The enclave is the default partition; the host is asked for by name.
        for (args, want) in [
            (&["xtask", "bench", "idle"][..], Partition::Enclave),
            (
                &[
                    "xtask",
                    "bench",
                    "idle",
                    "--partition",
                    "host",
                    "--emulator",
                    "bochs",
                ][..],
                Partition::Host,
            ),
        ] {
            let Cmd::Bench {
                which: Bench::Idle { partition, .. },
            } = Cli::try_parse_from(args).unwrap().command
            else {
                panic!("not bench idle")
            };
            assert_eq!(partition, want, "{args:?}");
        }
        assert!(Cli::try_parse_from(["xtask", "bench", "idle", "--partition", "guest"]).is_err());
        for (args, want) in [
            (&["xtask", "bench", "net"][..], Emulator::Qemu),
            (
                &["xtask", "bench", "net", "--emulator", "bochs"][..],
                Emulator::Bochs,
            ),
        ] {
            let Cmd::Bench {
                which:
                    Bench::Net {
                        emulator,
                        virtio_poll,
                    },
            } = Cli::try_parse_from(args).unwrap().command
            else {
                panic!("not bench net")
            };
            assert_eq!((emulator, virtio_poll), (want, false), "{args:?}");
        }
        for (args, want) in [
            (&["xtask", "bench", "blk"][..], (Emulator::Qemu, false)),
            (
                &["xtask", "bench", "blk", "--virtio-poll"][..],
                (Emulator::Qemu, true),
            ),
            (
                &["xtask", "bench", "net", "--virtio-poll"][..],
                (Emulator::Qemu, true),
            ),
        ] {
            let (emulator, virtio_poll) = match Cli::try_parse_from(args).unwrap().command {
                Cmd::Bench {
                    which:
                        Bench::Blk {
                            emulator,
                            virtio_poll,
                        }
                        | Bench::Net {
                            emulator,
                            virtio_poll,
                        },
                } => (emulator, virtio_poll),
                _ => panic!("not bench blk or net"),
            };
            assert_eq!((emulator, virtio_poll), want, "{args:?}");
        }
    }
}
