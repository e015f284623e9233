//! The `atoll` binary: the library's [`atoll_cli::run`] on the real machine.

use atoll_cli::{client::Channel, console::Input, cpus::Root, Env};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// Runs `atoll-channeld --enclave NAME` (next to this binary, else from PATH) and waits for
/// it to finish its setup (it forks into the background then).
fn start_channeld(name: &str) -> std::io::Result<()> {
    let here = std::env::current_exe()
        .ok()
        .map(|p| p.with_file_name("atoll-channeld"))
        .filter(|p| p.exists());
    let prog = here.unwrap_or_else(|| PathBuf::from("atoll-channeld"));
    let st = std::process::Command::new(&prog)
        .args(["--enclave", name])
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", prog.display())))?;
    if !st.success() {
        return Err(std::io::Error::other(format!("{}: {st}", prog.display())));
    }
    Ok(())
}

fn main() {
    let root = Root(PathBuf::from("/"));
    let sys = root.sys();
    let mut connect = move || -> atoll_cli::client::Result<Box<dyn Channel>> {
        let timeout = match std::env::var("ATOLL_REQUEST_TIMEOUT") {
            Ok(v) => v
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| {
                    atoll_cli::client::Error::Other(format!(
                        "ATOLL_REQUEST_TIMEOUT={v:?} is not a number of seconds"
                    ))
                })?,
            Err(_) => atoll_cli::device::TIMEOUT,
        };
        Ok(Box::new(atoll_cli::device::Device::open(&sys, timeout)?))
    };
    let stdin = std::io::stdin();
    let input = if stdin.is_terminal() {
        Input::Tty
    } else {
        Input::Stream(Box::new(stdin))
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let stderr_tty = err.is_terminal();
    let mut net = atoll_cli::netlink::Rtnl::default();
    let mut env = Env {
        connect: &mut connect,
        out: &mut out,
        err: &mut err,
        root,
        input: Some(input),
        stderr_tty,
        poll: Duration::from_millis(20),
        rate_gap: Duration::from_secs(1),
        // Requests of two shells differ in their sequence numbers.
        seq: std::process::id().wrapping_shl(16),
        net: &mut net,
        channeld: &mut start_channeld,
    };
    std::process::exit(atoll_cli::run(std::env::args_os(), &mut env));
}
