//! The `atoll-channeld` binary: finds an enclave's channel function, maps it (vfio-pci in
//! no-IOMMU mode, else sysfs with polling) and serves its virtio backends
//! ([`atoll_cli::channeld`]).

use atoll_abi::channel::{reg, state, WINDOW_BAR, WINDOW_SIZE};
use atoll_cli::channeld::{self, sysfs, uio, vfio, Daemon, Function, Options};
use clap::Parser;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Serve an enclave's virtio devices (console, net, blk) from the host.
#[derive(Debug, Parser)]
#[command(name = "atoll-channeld", version)]
struct Args {
    /// The enclave whose channel function to serve.
    #[arg(long, required_unless_present = "function")]
    enclave: Option<String>,
    /// The channel function's PCI address (0000:00:01.1) instead of searching by name.
    #[arg(long)]
    function: Option<String>,
    /// Stay in the foreground, logging to stderr (else: daemon, logging to
    /// /run/atoll/NAME/channeld.log).
    #[arg(long)]
    foreground: bool,
    /// Do not try vfio-pci: map through sysfs and poll every 10 ms.
    #[arg(long)]
    sysfs: bool,
    /// Where the daemons' directories are.
    #[arg(long, default_value = "/run/atoll")]
    run_dir: PathBuf,
    /// How long to wait for the enclave's window to appear.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    wait: f64,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("atoll-channeld: {msg}");
    std::process::exit(1)
}

fn find(sys: &Path, a: &Args, wait: Duration) -> PathBuf {
    let start = Instant::now();
    loop {
        let r = match (&a.function, &a.enclave) {
            (Some(f), _) => {
                let p = sys.join("bus/pci/devices").join(f);
                match sysfs::window_owner(&p) {
                    Ok((name, _, _)) if a.enclave.as_ref().is_none_or(|e| *e == name) => Ok(p),
                    Ok((name, _, _)) => {
                        Err(std::io::Error::other(format!("{f} holds enclave {name:?}")))
                    }
                    Err(e) => Err(e),
                }
            }
            (None, Some(e)) => sysfs::find_enclave(sys, e),
            (None, None) => fail("--enclave or --function is needed"),
        };
        match r {
            Ok(p) => return p,
            Err(e) if start.elapsed() >= wait => fail(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn map(sys: &Path, dev: &Path, use_vfio: bool) -> Box<dyn Function> {
    let mut log = |m: String| eprintln!("atoll-channeld: {m}");
    let addr = sysfs::base(dev);
    if use_vfio {
        let r = (|| -> std::io::Result<vfio::Vfio> {
            if !sysfs::ready_noiommu(sys, &mut log) {
                return Err(std::io::Error::other("vfio no-IOMMU mode is not available"));
            }
            sysfs::bind_vfio(sys, dev, &mut log)?;
            let group = vfio::group_of(dev)?;
            let file = vfio::group_file(Path::new("/dev/vfio"), &group).ok_or_else(|| {
                std::io::Error::other(format!("no /dev/vfio/noiommu-{group} or /dev/vfio/{group}"))
            })?;
            vfio::Vfio::open(&addr, &file, u32::from(WINDOW_BAR), WINDOW_SIZE as usize)
        })();
        match r {
            Ok(v) => return Box::new(v),
            Err(e) => log(format!("vfio-pci unusable ({e}); trying {}", uio::DRIVER)),
        }
        let r = if uio::ready(sys, &mut log) {
            uio::Uio::open(sys, dev, Path::new("/dev"), WINDOW_SIZE as usize, &mut log)
        } else {
            Err(std::io::Error::other(format!("no {} driver", uio::DRIVER)))
        };
        match r {
            Ok(u) => return Box::new(u),
            Err(e) => log(format!(
                "WARNING: {} unusable ({e}); falling back to sysfs: notifications are POLLED every 10 ms",
                uio::DRIVER
            )),
        }
    } else {
        log("WARNING: --sysfs: notifications are POLLED every 10 ms".into());
    }
    match sysfs::Sysfs::open(dev, WINDOW_SIZE as usize) {
        Ok(s) => Box::new(s),
        Err(e) => fail(format!("{addr}: {e}")),
    }
}

/// Forks: the parent writes the child's pid file and exits 0 (setup succeeded); the child
/// leaves the session and logs to `log`.
fn daemonize(pid_file: &Path, log: &Path) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| fail(format!("{}: {e}", log.display())));
    // SAFETY: fork in a single-threaded process; both sides continue with plain syscalls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        let _ = std::fs::write(pid_file, format!("{pid}\n"));
        // Not exit(): nothing of the parent's (mappings, fds now shared with the child) may be
        // torn down by destructors.
        // SAFETY: ends the process at once, as intended.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: setsid in the child, which is no process group leader.
    unsafe { libc::setsid() };
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto stderr of a descriptor we hold open.
    unsafe { libc::dup2(f.as_raw_fd(), 2) };
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        // SAFETY: as above, onto stdin and stdout.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
        // SAFETY: as above.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

fn main() {
    let a = Args::parse();
    let sys = PathBuf::from("/sys");
    let wait = Duration::try_from_secs_f64(a.wait).unwrap_or(Duration::from_secs(10));
    let dev = find(&sys, &a, wait);
    let mut f = map(&sys, &dev, !a.sysfs);
    // The window must belong to the attach the function reports now.
    let (magic, st) = (
        f.read_reg(reg::MAGIC).unwrap_or(0),
        f.read_reg(reg::STATE).unwrap_or(0),
    );
    if magic != reg::MAGIC_VALUE || st != state::ATTACHED {
        fail(format!(
            "{}: registers say magic {magic:#x} state {st}: no enclave attached",
            dev.display()
        ));
    }
    let gen_reg = f.read_reg(reg::GENERATION).unwrap_or(0);
    let (name, _, gen_win) = sysfs::window_owner(&dev).unwrap_or_else(|e| fail(e));
    if gen_reg != gen_win {
        fail(format!(
            "window generation {gen_win} but the function reports {gen_reg}: the enclave changed"
        ));
    }
    let dir = channeld::run_dir(&a.run_dir, &name);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        fail(format!("{}: {e}", dir.display()));
    }
    let pid_file = dir.join("channeld.pid");
    let o = Options {
        run_dir: dir.clone(),
        open_tap: Box::new(|n: &str| channeld::net::open_tap(n)),
        log: Box::new(std::io::stderr()),
    };
    let mut d = Daemon::new(f, o).unwrap_or_else(|e| fail(e));
    if a.foreground {
        let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));
    } else {
        daemonize(&pid_file, &dir.join("channeld.log"));
    }
    d.run();
    let _ = std::io::stderr().flush();
}
