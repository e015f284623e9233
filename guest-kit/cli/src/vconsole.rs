//! `atoll console NAME` for an enclave with a virtio console: its `atoll-channeld` serves
//! the console on `/run/atoll/NAME/console.sock`; this connects there instead of going to
//! the enclave's UART through atoll.

use crate::client::{Error, Result};
use crate::console::{reader, timed_out, until_seen, Input, Options, RawMode, ESCAPE};
use crate::cpus::Root;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::TryRecvError;
use std::time::Instant;

/// The daemon's directory of enclave `name`.
pub fn run_dir(root: &Root, name: &str) -> PathBuf {
    root.0.join("run/atoll").join(name)
}

/// The console socket of enclave `name`.
pub fn socket(root: &Root, name: &str) -> PathBuf {
    run_dir(root, name).join("console.sock")
}

/// Runs the console over the socket; returns the exit code (as [`crate::console::run`]).
pub fn run(
    sock: &Path,
    o: &Options,
    input: Input,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let mut s = UnixStream::connect(sock).map_err(|e| Error::io(sock, e))?;
    // Short reads keep the loop turning for input, --timeout and --exit-after.
    s.set_read_timeout(Some(o.poll.max(std::time::Duration::from_millis(1))))
        .map_err(|e| Error::io(sock, e))?;
    let tty = matches!(input, Input::Tty);
    let _raw = if tty {
        let _ = write!(
            err,
            "[console of {} (virtio): leave with Ctrl-]]\r\n",
            o.name
        );
        Some(RawMode::enter()?)
    } else {
        None
    };
    let nl = if tty { "\r\n" } else { "\n" };
    let start = Instant::now();
    let mut input_ended = matches!(input, Input::None).then_some(start);
    let mut rx = reader(input);
    let mut window: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(r) = &rx {
            loop {
                match r.try_recv() {
                    Ok(chunk) => {
                        let (send, leave) = match chunk.iter().position(|b| tty && *b == ESCAPE) {
                            Some(i) => (&chunk[..i], true),
                            None => (&chunk[..], false),
                        };
                        s.write_all(send).map_err(|e| Error::io(sock, e))?;
                        if leave {
                            let _ = write!(err, "{nl}[left the console of {}]{nl}", o.name);
                            return Ok(0);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        rx = None;
                        input_ended = Some(Instant::now());
                        break;
                    }
                }
            }
        }
        let got = match s.read(&mut buf) {
            Ok(0) => {
                // The daemon closed: the enclave is gone.
                if let Some(t) = &o.until {
                    let _ = write!(
                        err,
                        "{nl}atoll: {} is no longer running and its output never contained {t:?}{nl}",
                        o.name
                    );
                    return Ok(1);
                }
                let _ = write!(err, "{nl}[{} is no longer running]{nl}", o.name);
                return Ok(0);
            }
            Ok(n) => &buf[..n],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                &buf[..0]
            }
            Err(e) => return Err(Error::io(sock, e)),
        };
        out.write_all(got).map_err(|e| Error::io("stdout", e))?;
        out.flush().map_err(|e| Error::io("stdout", e))?;
        if until_seen(o, &mut window, got) {
            return Ok(0);
        }
        if timed_out(o, start, nl, err) {
            return Ok(1);
        }
        if got.is_empty() {
            if let (Some(at), Some(after)) = (input_ended, o.exit_after) {
                if at.elapsed() >= after {
                    return Ok(0);
                }
            }
        }
    }
}
