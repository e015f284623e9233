//! `atoll`: operate atoll's enclaves from the host's shell.
//!
//! The command talks to atoll through its control device (a PCI function only the host
//! partition has, [`atoll_abi::control`]), mapped from
//! `/sys/bus/pci/devices/*/resource0` and `resource2`: it must run as root, on a host atoll
//! booted, and needs no kernel module. It is a static binary for the host's initramfs.
//!
//! # Commands
//!
//! Every command takes `--json` (JSON on stdout for scripts instead of a table).
//!
//! * `atoll create FILE.toml [--offline-cores]` — creates an enclave from a description, loads
//!   its kernel and initrd and starts it. The file is one enclave in the boot-time format
//!   (`name`, `cores` (APIC ids), `memory_mib`, `image`, `initrd`, `entry`, `cmdline`,
//!   `serial_input`, `io_unknown`), either as top-level keys or as a single `[[enclave]]`.
//!   `image` and `initrd` are files; relative paths are taken from the description's
//!   directory. atoll checks the description and refuses it naming the field and the reason.
//!   A core must be offline in the host before atoll takes it: `--offline-cores` does that
//!   first (it writes 0 to `/sys/devices/system/cpu/cpuN/online` for each core still online
//!   and prints `offlined CPU N (APIC id A)`); without it nothing is offlined and atoll refuses
//!   a core still online. (A core not listed in `/proc/cpuinfo` is already offline, or no
//!   core: it is left to atoll, with a note.) If loading or starting fails, the half-created
//!   enclave is destroyed again and the first error is reported; if the enclave is not
//!   created after all, the CPUs `--offline-cores` took are onlined again. Files over 1 MiB show progress on a terminal.
//!   Prints `created NAME (id N): running`; JSON: `name`, `id`, `image_bytes`,
//!   `initrd_bytes`, `offlined_cpus`, `devices`.
//!
//!   An enclave with `[[enclave.virtio]]` devices gets its host side from `atoll-channeld
//!   --enclave NAME` ([`channeld`]), which `create` starts after the enclave runs (next to this
//!   binary, else from PATH) and reports (`started atoll-channeld for NAME: N virtio
//!   device(s)`; on stderr with `--json`). If it fails to start, the enclave stays and a note
//!   says how to start it by hand. `destroy` waits up to 5 s for that daemon to exit
//!   (`/run/atoll/NAME/channeld.pid`), and `console` of such an enclave connects to the
//!   daemon's `/run/atoll/NAME/console.sock` (the virtio console, `hvc0`) instead of its UART.
//!
//!   PCI functions to pass through are `devices = ["0000:01:00.1"]` and/or
//!   `vf = { pf = "0000:01:00.0", index = 0 }` (or a list of such tables): the command
//!   resolves each VF through `/sys/bus/pci/devices/PF/virtfnI` (refused if absent: run
//!   `atoll vf` first), writes `none` to every function's `driver_override` (no host driver
//!   binds it again), unbinds a bound driver (`unbound 0000:01:10.0 from igbvf`) and sends atoll
//!   a plain `devices` list ([`passthrough`]). `destroy` does not rebind; an empty line written
//!   to `driver_override` gives a function back to the host's drivers.
//!
//!   ```text
//!   # atoll create /etc/atoll/linux.toml --offline-cores
//!   offlined CPU 2 (APIC id 2)
//!   offlined CPU 3 (APIC id 3)
//!   created linux (id 1): running
//!   ```
//! * `atoll vf PF --count N [--mac MAC ...]` — readies an SR-IOV PF's virtual functions
//!   for enclaves, idempotently, printing each step on stderr ([`sriov`]): checks the PF
//!   (`0000:01:00.0` or `01:00.0`) has a driver and `sriov_totalvfs` ≥ N, writes 0 to
//!   `sriov_drivers_autoprobe`, sets `sriov_numvfs` to N (through 0; refused while a VF is an
//!   enclave's), sets the PF's interface up (the VF mailbox and switch need it) and each VF's
//!   MAC by rtnetlink ([`netlink`], what `ip link set IF vf I mac M` does). MACs: `--mac`
//!   once per VF, or `02:a7:BB:DD:FF:II` from the PF's bus, device, function and the VF
//!   index. Prints `INDEX VF MAC DRIVER` (DRIVER the host driver bound, or `none`); JSON:
//!   `{pf, interface, steps, vfs: [{index, address, mac, driver}]}`. Needs no atoll.
//!
//!   ```text
//!   # atoll vf 01:00.0 --count 1
//!   0000:01:00.0: sriov_drivers_autoprobe 1 -> 0 (no host driver probes new VFs)
//!   0000:01:00.0: sriov_numvfs 0 -> 1 (igb)
//!   eth0: set up (the VFs' switch and mailbox need the PF up)
//!   eth0: VF 0 (0000:01:10.0) MAC 02:a7:01:00:00:00
//!   INDEX  VF            MAC                DRIVER
//!   0      0000:01:10.0  02:a7:01:00:00:00  none
//!   ```
//! * `atoll list` — columns `NAME ID STATE CORES MEMORY UPTIME REASON`; STATE is `loading`,
//!   `running`, `ended` or `failed`; REASON says why an enclave ended or failed. JSON: an
//!   array of `{name, id, state, cores, memory_mib, uptime_us, reason}`.
//! * `atoll stats [NAME] [--watch [SECS]] [--rate] [--format table|json|prometheus]` — per
//!   enclave: state, cores, memory, uptime, restarts, interrupts injected, IPIs dropped,
//!   console bytes dropped, exits by kind (the table shows kinds with exits: `EXIT TOTAL
//!   PER_SEC`) and, for a Linux enclave, exits per vCPU (`exits per vCPU  0: N (R/s)  1: …`;
//!   vCPU i runs on the enclave's i-th core). Exits per second need two samples: `--rate` takes them 1 s apart, `--watch`
//!   prints every SECS seconds (default 1) until interrupted, with rates from the second
//!   print on (write `atoll stats NAME --watch`: a NAME after `--watch` would be read as
//!   SECS). `--json` equals `--format json`: `{interval_seconds?, enclaves: [{name, id, state,
//!   cores, memory_mib, uptime_us, exits: {kind: n}, vcpu_exits: [n per vCPU],
//!   vcpu_exit_classes: [{timer, ipi, hlt, other} per vCPU], exits_per_second?: {kind: x},
//!   vcpu_exits_per_second?: [x per vCPU], interrupts_injected, ipis_dropped,
//!   console_bytes_dropped, restarts, reason}]}` (the vCPU lists are empty for a bare-metal
//!   enclave).
//!   `--format prometheus` prints the text exposition format for node_exporter's textfile
//!   collector (`atoll stats --format prometheus > /var/lib/node_exporter/atoll.prom`):
//!   `atoll_enclave_exits_total{enclave,kind}`,
//!   `atoll_enclave_vcpu_exits_total{enclave,vcpu,class}`, `atoll_enclave_uptime_seconds{enclave}`,
//!   `atoll_enclave_memory_bytes{enclave}`, `atoll_enclave_state{enclave,state}` (1 for the
//!   current state, 0 for the others), `atoll_enclave_interrupts_injected_total`,
//!   `atoll_enclave_ipis_dropped_total`, `atoll_enclave_console_bytes_dropped_total`,
//!   `atoll_enclave_restarts_total` (each `{enclave}`), `atoll_pool_bytes`,
//!   `atoll_pool_free_bytes`.
//! * `atoll info` — atoll's figures: pool size and free bytes, enclaves in use of the
//!   maximum, bytes staged for loading, requests carried out and refused, enclaves created and
//!   destroyed since boot (compare before and after work to see that nothing leaked).
//! * `atoll console NAME [--no-input] [--until TEXT] [--timeout SECS] [--exit-after SECS]` —
//!   prints the enclave's console output from the oldest byte atoll kept (a note on stderr
//!   says when bytes were lost) and forwards input to its UART. On a terminal, input is raw
//!   and Ctrl-] leaves. Other input is forwarded line by line; after its end the output is
//!   followed until the enclave stops running or `--exit-after SECS` passed. The command
//!   leaves when the enclave is no longer running. `--until TEXT` exits 0 as soon as the
//!   output contains TEXT, and 1 if the enclave stopped first or `--timeout` passed.
//!
//!   ```text
//!   # atoll console linux --no-input --until ATOLL-GUEST-CHECK --timeout 120
//!   ```
//! * `atoll destroy NAME [--online-cores]` — stops the enclave, zeroes its memory and parks
//!   its cores. `--online-cores` then onlines the host's CPUs of those cores (the mapping of
//!   APIC ids to CPU numbers is learnt from `/proc/cpuinfo` while they were online and kept
//!   in `/run/atoll/cpus`).
//! * `atoll raw --kind N [--hex BYTES]`, `atoll raw --slot-garbage [--hex BYTES]` (hidden;
//!   for tests) — sends a request of any kind number with a raw payload, or writes bytes
//!   that are no message into a slot, and prints the reply's status.
//!
//! # Environment
//!
//! * `ATOLL_REQUEST_TIMEOUT` — seconds one request may take (default 60; destroying a large
//!   enclave zeroes its memory, which is slow on an emulator). A request that times out keeps
//!   its mailbox slot (atoll may still answer into it).
//!
//! Ctrl-C and `kill` are held back while a request is in a mailbox slot, so an interrupted
//! `atoll` never leaves a slot claimed; they take effect right after.
//!
//! # Exit codes
//!
//! * 0 — done.
//! * 1 — atoll refused (stderr: `atoll: STATUS: REASON`, e.g. `atoll: core busy: core 2 is
//!   online in the host`), the control device is missing, a reply was malformed, a file could
//!   not be read, or `console --until` did not see its text.
//! * 2 — usage error (unknown option, missing argument).

#[cfg(target_os = "linux")]
pub mod channeld;
pub mod cli;
pub mod client;
pub mod commands;
pub mod console;
pub mod cpus;
#[cfg(target_os = "linux")]
pub mod device;
pub mod enclave;
pub mod netlink;
pub mod passthrough;
pub mod pci;
#[cfg(unix)]
pub mod signals;
pub mod sriov;
pub mod stats;
#[cfg(unix)]
pub mod vconsole;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_channeld;
#[cfg(test)]
mod tests_vf;

use clap::Parser;
use client::{Channel, Client, Result};
use std::io::Write;
use std::time::Duration;

/// What a run of `atoll` works with: the real machine in `main`, fakes in tests.
pub struct Env<'a> {
    /// Opens the channel to atoll (only commands that need it call this).
    pub connect: &'a mut dyn FnMut() -> Result<Box<dyn Channel>>,
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error.
    pub err: &'a mut dyn Write,
    /// Where `/proc`, `/sys` and `/run` are.
    pub root: cpus::Root,
    /// `console`'s input.
    pub input: Option<console::Input>,
    /// Whether stderr is a terminal (progress).
    pub stderr_tty: bool,
    /// `console`'s pause when nothing came.
    pub poll: Duration,
    /// `stats --rate`'s gap between samples.
    pub rate_gap: Duration,
    /// The first sequence number.
    pub seq: u32,
    /// The kernel's rtnetlink (`vf`).
    pub net: &'a mut dyn netlink::Net,
    /// Starts `atoll-channeld --enclave NAME` (`create` of an enclave with virtio devices);
    /// returns once it serves (it daemonizes after its setup).
    pub channeld: &'a mut dyn FnMut(&str) -> std::io::Result<()>,
}

/// Runs `atoll` with `args` (the program name first); returns the exit code.
pub fn run<I, T>(args: I, env: &mut Env<'_>) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let text = e.render().to_string();
            if e.use_stderr() {
                let _ = write!(env.err, "{text}");
            } else {
                let _ = write!(env.out, "{text}");
            }
            return e.exit_code();
        }
    };
    match dispatch(cli, env) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(env.err, "atoll: {e}");
            1
        }
    }
}

fn secs(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| client::Error::Other(format!("{what}: {s} is not a number of seconds")))
}

fn dispatch(cli: cli::Cli, env: &mut Env<'_>) -> Result<i32> {
    use cli::Command;
    // `vf` works on the host's PCI functions alone: it needs no atoll.
    if let Command::Vf { pf, count, macs } = cli.command {
        let a = sriov::VfArgs { pf, count, macs };
        sriov::vf(&env.root, env.net, &a, cli.json, env.out, env.err)?;
        return Ok(0);
    }
    // An enclave with a virtio console is reached through its daemon's socket: no atoll.
    if let Command::Console {
        name,
        no_input,
        until,
        timeout,
        exit_after,
    } = &cli.command
    {
        let sock = vconsole::socket(&env.root, name);
        if sock.exists() {
            let o = console::Options {
                name: name.clone(),
                until: until.clone(),
                timeout: timeout.map(|t| secs("--timeout", t)).transpose()?,
                exit_after: exit_after.map(|t| secs("--exit-after", t)).transpose()?,
                poll: env.poll,
            };
            let input = if *no_input {
                console::Input::None
            } else {
                env.input.take().unwrap_or(console::Input::None)
            };
            return vconsole::run(&sock, &o, input, env.out, env.err);
        }
    }
    let mut client = Client::new((env.connect)()?, env.seq);
    let json = cli.json;
    match cli.command {
        Command::Create {
            file,
            offline_cores,
        } => commands::create(
            &mut client,
            &env.root,
            &file,
            offline_cores,
            json,
            env.out,
            env.err,
            env.stderr_tty,
            env.channeld,
        )?,
        Command::List => commands::list(&mut client, json, env.out)?,
        Command::Info => commands::info(&mut client, json, env.out)?,
        Command::Stats {
            name,
            watch,
            rate,
            format,
        } => {
            let format = format.unwrap_or(if json {
                cli::Format::Json
            } else {
                cli::Format::Table
            });
            let a = commands::StatsArgs {
                name: name.as_deref().unwrap_or(""),
                watch: watch.map(|w| secs("--watch", w)).transpose()?,
                rate: rate.then_some(env.rate_gap),
                format,
            };
            commands::stats(&mut client, &a, env.out)?
        }
        Command::Console {
            name,
            no_input,
            until,
            timeout,
            exit_after,
        } => {
            let o = console::Options {
                name,
                until,
                timeout: timeout.map(|t| secs("--timeout", t)).transpose()?,
                exit_after: exit_after.map(|t| secs("--exit-after", t)).transpose()?,
                poll: env.poll,
            };
            let input = if no_input {
                console::Input::None
            } else {
                env.input.take().unwrap_or(console::Input::None)
            };
            return console::run(&mut client, &o, input, env.out, env.err);
        }
        Command::Destroy { name, online_cores } => commands::destroy(
            &mut client,
            &env.root,
            &name,
            online_cores,
            json,
            env.out,
            env.err,
        )?,
        // Carried out above, before connecting.
        Command::Vf { .. } => {}
        Command::Raw {
            kind,
            hex,
            slot_garbage,
        } => {
            let payload = hex
                .as_deref()
                .map(commands::hex)
                .transpose()?
                .unwrap_or_default();
            commands::raw(&mut client, kind, &payload, slot_garbage, json, env.out)?
        }
    }
    Ok(0)
}
