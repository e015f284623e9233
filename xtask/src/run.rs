//! `cargo xtask run`: boots a scenario in Bochs or QEMU, streams COM1, stops at atoll's
//! `ATOLL-HALT` line (or a hard timeout), and judges the `ATOLL-SUMMARY` line against the
//! scenario's expectations.

use crate::guest_image::GuestKernel;
use crate::image::ImageOptions;
use crate::scenario::{check, Emulator, Scenario};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Which emulator.
    pub emulator: Emulator,
    /// Scenario name.
    pub scenario: String,
    /// CPUs (default: the scenario's).
    pub cpus: Option<u32>,
    /// RAM in MiB (default: the scenario's).
    pub memory_mib: Option<u32>,
    /// Hard timeout in seconds (default: the scenario's for this emulator).
    pub timeout_s: Option<u64>,
    /// Boot options added to the scenario's.
    pub extra_cmdline: String,
    /// The kernel of the scenario's `linux = "kernel"` module (default: the guest image's).
    pub guest_kernel: GuestKernel,
    /// Words appended to an enclave's command line, by enclave name.
    pub enclave_cmdline: Vec<(String, String)>,
    /// Stream COM1 to stdout as it arrives.
    pub stream: bool,
    /// Typed on COM1 (QEMU only): once a console line containing `.0` has appeared, `.1` is sent to
    /// the machine's serial port.
    pub serial_input: Option<(String, String)>,
}

impl RunOptions {
    /// Defaults for `scenario` on `emulator`, not streaming.
    pub fn new(emulator: Emulator, scenario: &str) -> Self {
        Self {
            emulator,
            scenario: scenario.into(),
            cpus: None,
            memory_mib: None,
            timeout_s: None,
            extra_cmdline: String::new(),
            guest_kernel: GuestKernel::default(),
            enclave_cmdline: Vec::new(),
            stream: false,
            serial_input: None,
        }
    }
}

/// What a run showed.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// Emulator used.
    pub emulator: Emulator,
    /// CPUs given.
    pub cpus: u32,
    /// The parsed `ATOLL-SUMMARY`, if printed.
    pub summary: Option<Value>,
    /// The status on the `ATOLL-HALT` line, if printed.
    pub halt_status: Option<i32>,
    /// The `ATOLL-PANIC` message, if atoll panicked.
    pub panic: Option<String>,
    /// Expectations the summary did not meet.
    pub mismatches: Vec<String>,
    /// The hard timeout struck.
    pub timed_out: bool,
    /// Wall time from emulator start to halt or kill.
    pub wall: Duration,
    /// Everything COM1 printed.
    pub serial: String,
    /// Where the run's files are.
    pub work_dir: PathBuf,
    /// The Linux kernel the image carried (`PACKAGE VERSION` or a path), if any.
    pub guest_kernel: Option<String>,
}

impl RunOutcome {
    /// The run showed what its scenario requires.
    pub fn passed(&self) -> bool {
        self.summary.is_some()
            && self.panic.is_none()
            && !self.timed_out
            && self.mismatches.is_empty()
    }

    /// The last `n` lines of COM1.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.serial.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Why it failed, for a human.
    pub fn failure(&self) -> String {
        let mut why = Vec::new();
        if self.timed_out {
            why.push(format!("timed out after {:.0} s", self.wall.as_secs_f64()));
        }
        if let Some(p) = &self.panic {
            why.push(format!("atoll panicked: {p}"));
        }
        if self.summary.is_none() && !self.timed_out {
            why.push("the run ended without an ATOLL-SUMMARY line".into());
        }
        if let Some(problems) = self
            .summary
            .as_ref()
            .and_then(|s| s.get("problems"))
            .and_then(Value::as_array)
        {
            for p in problems {
                why.push(format!("atoll reports: {}", p.as_str().unwrap_or_default()));
            }
        }
        why.extend(self.mismatches.iter().map(|m| format!("expected {m}")));
        format!(
            "{} run failed:\n  {}\nlast lines of COM1 ({}):\n{}",
            self.emulator.name(),
            why.join("\n  "),
            self.work_dir.join("serial.log").display(),
            self.tail(20)
        )
    }
}

/// Boots and judges one run.
pub fn run(opts: &RunOptions) -> Result<RunOutcome> {
    let scenario = Scenario::load(&opts.scenario)?;
    if !scenario.supports(opts.emulator) {
        bail!(
            "scenario '{}' runs only on {}",
            scenario.name,
            scenario.emulators.join(", ")
        );
    }
    let cpus = opts.cpus.unwrap_or(scenario.cpus);
    let memory = opts.memory_mib.unwrap_or(scenario.memory_mib);
    if !(1..=64).contains(&cpus) {
        bail!("--cpus {cpus}: must be between 1 and 64");
    }
    if !(64..=16384).contains(&memory) {
        bail!("--memory {memory}: must be between 64 and 16384 MiB");
    }
    let timeout = Duration::from_secs(opts.timeout_s.unwrap_or(match opts.emulator {
        Emulator::Qemu => scenario.timeout_s.qemu,
        Emulator::Bochs => scenario.timeout_s.bochs,
    }));
    let expectations = scenario.expectations(opts.emulator, cpus)?;
    // The scenario's own additions for this emulator come first, then the caller's.
    let mut enclave_cmdline: Vec<(String, String)> = scenario
        .enclave_cmdline
        .get(opts.emulator.name())
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    enclave_cmdline.extend(opts.enclave_cmdline.iter().cloned());
    let image_opts = ImageOptions {
        extra_cmdline: opts.extra_cmdline.clone(),
        guest_kernel: opts.guest_kernel.clone(),
        enclave_cmdline: enclave_cmdline.clone(),
    };
    // Everything that can be wrong with the options is found before anything is built.
    image_opts.check(&scenario)?;
    crate::image::check_enclaves_with(&scenario, Some(cpus), &enclave_cmdline)?;
    let built = crate::image::iso(&scenario, &image_opts)?;
    let iso = built.path;

    let work = crate::target_dir().join("runs").join(format!(
        "{}-{}-{cpus}cpu{}",
        scenario.name,
        opts.emulator.name(),
        built.tag
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let serial = work.join("serial.log");
    std::fs::write(&serial, "")?;

    // Serial input goes through a FIFO QEMU reads (opened here for reading and writing first,
    // so neither side blocks on open).
    let mut input = match (&opts.serial_input, opts.emulator) {
        (None, _) => None,
        (Some(_), Emulator::Bochs) => {
            bail!("serial input needs QEMU (Bochs' COM1 is output only here)")
        }
        (Some((prompt, text)), Emulator::Qemu) => {
            let fifo = work.join("serial-in");
            let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
            // SAFETY: a NUL-terminated path; mkfifo only creates a file system node.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                bail!(
                    "mkfifo {}: {}",
                    fifo.display(),
                    std::io::Error::last_os_error()
                );
            }
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)?;
            Some((fifo, f, prompt.clone(), text.clone(), false))
        }
    };
    let mut child = match opts.emulator {
        Emulator::Qemu => spawn_qemu(
            &iso,
            &serial,
            input.as_ref().map(|i| i.0.as_path()),
            &work,
            cpus,
            memory,
            &scenario,
        )?,
        Emulator::Bochs => spawn_bochs(&iso, &serial, &work, cpus, memory)?,
    };
    if opts.stream {
        eprintln!(
            "xtask: booting scenario '{}' in {} with {cpus} CPU(s), {memory} MiB (timeout {} s){}; COM1 follows",
            scenario.name,
            opts.emulator.name(),
            timeout.as_secs(),
            built
                .guest_kernel
                .as_ref()
                .map_or(String::new(), |k| format!(", Linux kernel {k}"))
        );
    }
    let start = Instant::now();
    let mut seen = 0usize;
    let mut text = String::new();
    let mut halted_at: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        let bytes = std::fs::read(&serial).unwrap_or_default();
        if bytes.len() > seen {
            let new = String::from_utf8_lossy(&bytes[seen..]).into_owned();
            // Only whole lines: keep a partial last line for the next poll.
            if let Some(end) = new.rfind('\n') {
                let chunk = &new[..=end];
                if opts.stream {
                    print!("{}", strip_terminal_codes(chunk));
                    let _ = std::io::stdout().flush();
                }
                text.push_str(chunk);
                seen += chunk.len();
                if let Some((_, f, prompt, typed, sent)) = input.as_mut() {
                    if !*sent && chunk.lines().any(|l| l.contains(prompt.as_str())) {
                        f.write_all(typed.as_bytes())?;
                        f.flush()?;
                        *sent = true;
                    }
                }
                if halted_at.is_none() && chunk.lines().any(|l| l.starts_with("ATOLL-HALT")) {
                    halted_at = Some(Instant::now());
                }
            }
        }
        let exited = child.try_wait()?.is_some();
        if exited && halted_at.is_none() {
            // Pick up anything written just before exit.
            let bytes = std::fs::read(&serial).unwrap_or_default();
            if bytes.len() > seen {
                let rest = String::from_utf8_lossy(&bytes[seen..]).into_owned();
                if opts.stream {
                    print!("{}", strip_terminal_codes(&rest));
                }
                text.push_str(&rest);
            }
            break;
        }
        if let Some(t) = halted_at {
            if exited || t.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        if start.elapsed() > timeout {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = start.elapsed();
    stop_emulator(&mut child, &work);

    let summary = text
        .lines()
        .find_map(|l| l.strip_prefix("ATOLL-SUMMARY "))
        .map(|json| {
            serde_json::from_str::<Value>(json)
                .with_context(|| format!("ATOLL-SUMMARY is not JSON: {json}"))
        })
        .transpose()?;
    let halt_status = text
        .lines()
        .find_map(|l| l.strip_prefix("ATOLL-HALT status="))
        .and_then(|s| s.trim().parse().ok());
    let panic = text
        .lines()
        .find_map(|l| l.strip_prefix("ATOLL-PANIC "))
        .map(str::to_string);
    let mismatches = summary
        .as_ref()
        .map(|s| check(s, &expectations))
        .unwrap_or_default();
    Ok(RunOutcome {
        emulator: opts.emulator,
        cpus,
        summary,
        halt_status,
        panic,
        mismatches,
        timed_out,
        wall,
        serial: text,
        work_dir: work,
        guest_kernel: built.guest_kernel,
    })
}

/// Removes the cursor and clear-screen sequences GRUB sends to its serial terminal.
fn strip_terminal_codes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn spawn_qemu(
    iso: &Path,
    serial: &Path,
    input: Option<&Path>,
    work: &Path,
    cpus: u32,
    memory: u32,
    scenario: &Scenario,
) -> Result<Child> {
    let log = std::fs::File::create(work.join("qemu.log"))?;
    Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-cpu",
            &scenario.qemu_cpu,
            "-accel",
            "tcg",
        ])
        .args(["-smp", &cpus.to_string(), "-m", &memory.to_string()])
        .arg("-cdrom")
        .arg(iso)
        .args([
            "-boot",
            "d",
            "-display",
            "none",
            "-vga",
            "none",
            "-net",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .args(match input {
            None => vec!["-serial".to_string(), format!("file:{}", serial.display())],
            Some(fifo) => vec![
                "-chardev".to_string(),
                format!(
                    "file,id=com1,path={},input-path={}",
                    serial.display(),
                    fifo.display()
                ),
                "-serial".to_string(),
                "chardev:com1".to_string(),
            ],
        })
        .args(&scenario.qemu_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")
}

/// Bochs' instructions per emulated second: its TSC's rate (a busy CPU's TSC counts its own
/// instructions). Its CPU model tells a natively booted Linux 3.5 GHz instead; atoll calibrates.
pub const BOCHS_IPS: u64 = 100_000_000;

/// Bochs' configuration for a run.
pub fn bochsrc(iso: &Path, serial: &Path, log: &Path, cpus: u32, memory: u32) -> String {
    format!(
        "megs: {memory}\n\
         cpu: model=corei7_skylake_x, count={cpus}, ips={BOCHS_IPS}, reset_on_triple_fault=0\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
         ata0-master: type=cdrom, path={iso}, status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev={serial}\n\
         display_library: term\n\
         clock: sync=none, time0=local\n\
         log: {log}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=report\n\
         debug: action=ignore\n",
        iso = iso.display(),
        serial = serial.display(),
        log = log.display(),
    )
}

fn spawn_bochs(iso: &Path, serial: &Path, work: &Path, cpus: u32, memory: u32) -> Result<Child> {
    let conf = work.join("bochsrc");
    std::fs::write(
        &conf,
        bochsrc(iso, serial, &work.join("bochs.log"), cpus, memory),
    )?;
    // Bochs starts at its debugger prompt: an rc file with `c` continues.
    let rc = work.join("bochs-debugger.rc");
    std::fs::write(&rc, "c\n")?;
    // Its only display here is `term`, which needs a terminal: `script` provides a pty.
    let inner = format!("bochs -q -f {} -rc {}", conf.display(), rc.display());
    let term_log = work.join("bochs-term.log");
    let term = std::fs::File::create(&term_log)?;
    let child = Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(term.try_clone()?)
        .stderr(term)
        .process_group(0)
        .spawn()
        .context("starting bochs under script (run `cargo xtask setup`)")?;
    drain_bochs_screen(term_log);
    Ok(child)
}

/// Bochs's `term` display draws the guest's text screen on a pseudo-terminal of its own and
/// says which (`Bochs connected to screen "/dev/pts/N"` on its output). Nobody reads it, so
/// after a few minutes of screen updates the terminal's buffer is full and Bochs blocks in
/// that write for good (seen as a run that stops after about seven minutes). A thread reads
/// and discards it until Bochs closes it.
fn drain_bochs_screen(term_log: PathBuf) {
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let pts = loop {
            let text = std::fs::read_to_string(&term_log).unwrap_or_default();
            if let Some(p) = screen_path(&text) {
                break p;
            }
            if start.elapsed() > Duration::from_secs(120) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        use std::os::unix::fs::OpenOptionsExt;
        let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&pts)
        else {
            return;
        };
        // Raw: a canonical terminal would hold everything back until a newline.
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            let fd = f.as_raw_fd();
            // SAFETY: tcgetattr on a terminal descriptor this thread owns, into its own termios.
            if unsafe { libc::tcgetattr(fd, &mut t) } == 0 {
                // SAFETY: cfmakeraw only edits the termios this thread owns.
                unsafe { libc::cfmakeraw(&mut t) };
                // SAFETY: tcsetattr on the same descriptor with that termios.
                unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
            }
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
            if n == 0 {
                break;
            }
        }
    });
}

/// The screen terminal Bochs names on its output, if it did.
fn screen_path(text: &str) -> Option<PathBuf> {
    let rest = text.split("Bochs connected to screen \"").nth(1)?;
    let path = rest.split('"').next()?;
    path.starts_with("/dev/pts/").then(|| PathBuf::from(path))
}

/// Stops an emulator and everything it started.
///
/// QEMU is the child's process group (spawned with `process_group(0)`); Bochs runs under
/// `script`, which puts it in a session of its own, so it is found by the run's unique work
/// directory on its command line.
fn stop_emulator(child: &mut Child, work: &Path) {
    if child.try_wait().ok().flatten().is_none() {
        let pgid = child.id() as libc::pid_t;
        // SAFETY: getpgrp has no preconditions; it only returns our process group.
        let ours = unsafe { libc::getpgrp() };
        if pgid > 1 && pgid != ours {
            // SAFETY: killpg has no memory-safety preconditions. The group is the one created
            // for the child; it is never ours or init's (checked), so nothing else is hit.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
        let _ = child.kill();
    }
    let _ = child.wait();
    let marker = format!("{}/", work.display());
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", "--"])
        .arg(&marker)
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_escape_codes_are_removed() {
        assert_eq!(
            strip_terminal_codes("\x1b[H\x1b[J\x1b[1;1H  Booting `atoll'\n"),
            "  Booting `atoll'\n"
        );
    }

    #[test]
    fn bochsrc_names_cpus_memory_and_serial() {
        let rc = bochsrc(
            Path::new("/a.iso"),
            Path::new("/s.log"),
            Path::new("/b.log"),
            2,
            256,
        );
        assert!(rc.contains("count=2,"));
        assert!(rc.contains("megs: 256"));
        assert!(rc.contains("com1: enabled=1, mode=file, dev=/s.log"));
        assert!(rc.contains("model=corei7_skylake_x"));
    }

    #[test]
    fn the_bochs_screen_terminal_is_found_in_its_output() {
        let out = "Bochs x86 Emulator\r\nBochs connected to screen \"/dev/pts/7\"\r\nNext at t=0";
        assert_eq!(screen_path(out), Some(PathBuf::from("/dev/pts/7")));
        assert_eq!(
            screen_path("Bochs connected to screen \"/etc/passwd\""),
            None
        );
        assert_eq!(screen_path("no screen"), None);
    }
}
