//! `atoll console`: an enclave's UART both ways over ConsoleRead/ConsoleWrite.

use crate::client::{decode, Client, Error, Result};
use atoll_abi::control::{Accepted, ConsoleData, ConsoleRead, ConsoleWrite, Kind};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// The escape byte that leaves an interactive console: Ctrl-].
pub const ESCAPE: u8 = 0x1d;

/// Where typed input comes from.
pub enum Input {
    /// The terminal on fd 0, put in raw mode; Ctrl-] leaves.
    Tty,
    /// A pipe or file, forwarded line by line; at its end output is still read.
    Stream(Box<dyn Read + Send>),
    /// No input (`--no-input`).
    None,
}

/// What `atoll console` was asked.
pub struct Options {
    /// The enclave.
    pub name: String,
    /// Leave with 0 once the output contains this.
    pub until: Option<String>,
    /// Leave (1) after this long.
    pub timeout: Option<Duration>,
    /// After the input ended, leave (0) after this long.
    pub exit_after: Option<Duration>,
    /// Pause when nothing came.
    pub poll: Duration,
}

/// Restores the terminal's settings when dropped (on every way out, errors included).
pub(crate) struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    pub(crate) fn enter() -> Result<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it completely on success.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open (a tty, checked by the caller); `t` is a valid termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Err(Error::Other(format!(
                "stdin: {}",
                std::io::Error::last_os_error()
            )));
        }
        let saved = t;
        // SAFETY: `t` is a valid termios that cfmakeraw edits in place.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: fd 0 as above; `t` is a valid termios.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return Err(Error::Other(format!(
                "stdin: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings tcgetattr returned for the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// Reads input on a thread (reads block; the output loop must not), chunk by chunk.
pub(crate) fn reader(input: Input) -> Option<Receiver<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    match input {
        Input::None => return None,
        Input::Tty => {
            std::thread::spawn(move || {
                crate::signals::block_in_this_thread();
                let mut buf = [0u8; 1024];
                let mut stdin = std::io::stdin();
                while let Ok(n @ 1..) = stdin.read(&mut buf) {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
        }
        Input::Stream(r) => {
            std::thread::spawn(move || {
                crate::signals::block_in_this_thread();
                let mut r = BufReader::new(r);
                loop {
                    let mut line = Vec::new();
                    match r.read_until(b'\n', &mut line) {
                        Ok(1..) => {
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
            });
        }
    }
    Some(rx)
}

/// Appends `got` to `window` and says whether `--until`'s text has appeared in what the
/// console printed so far (an empty text at once); keeps only the tail that could still begin
/// it. Both consoles (the UART's and the virtio one's) end on it.
pub(crate) fn until_seen(o: &Options, window: &mut Vec<u8>, got: &[u8]) -> bool {
    let Some(t) = &o.until else {
        return false;
    };
    let t = t.as_bytes();
    window.extend_from_slice(got);
    if t.is_empty() || window.windows(t.len()).any(|w| w == t) {
        return true;
    }
    let keep = window.len().saturating_sub(t.len() - 1);
    window.drain(..keep);
    false
}

/// Whether `--timeout` has passed since `start` (said on `err` when it has).
pub(crate) fn timed_out(o: &Options, start: Instant, nl: &str, err: &mut dyn Write) -> bool {
    let Some(to) = o.timeout else {
        return false;
    };
    if start.elapsed() < to {
        return false;
    }
    let _ = write!(
        err,
        "{nl}atoll: console of {}: timed out after {} s{nl}",
        o.name,
        to.as_secs_f64()
    );
    true
}

/// Runs the console; returns the exit code.
pub fn run(
    client: &mut Client,
    o: &Options,
    input: Input,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let tty = matches!(input, Input::Tty);
    let _raw = if tty {
        let _ = write!(err, "[console of {}: leave with Ctrl-]]\r\n", o.name);
        Some(RawMode::enter()?)
    } else {
        None
    };
    let nl = if tty { "\r\n" } else { "\n" };
    let start = Instant::now();
    let mut input_ended = matches!(input, Input::None).then_some(start);
    let mut rx = reader(input);
    let mut pending: Vec<u8> = Vec::new();
    let mut leave = false;
    let mut cursor = 0u64;
    let mut window: Vec<u8> = Vec::new();
    loop {
        if let Some(r) = &rx {
            loop {
                match r.try_recv() {
                    Ok(chunk) => {
                        if let Some(i) = chunk.iter().position(|b| tty && *b == ESCAPE) {
                            pending.extend_from_slice(&chunk[..i]);
                            leave = true;
                            break;
                        }
                        pending.extend_from_slice(&chunk);
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
        // Forward what the receiver takes; the rest waits for the next round (its FIFO may
        // be full).
        if !pending.is_empty() {
            let n = pending.len().min(ConsoleWrite::MAX_DATA);
            let p = client.call(Kind::ConsoleWrite, |w| {
                ConsoleWrite {
                    name: &o.name,
                    data: &pending[..n],
                }
                .write(w)
            })?;
            let took = decode("console write reply", Accepted::read(&p))?.bytes as usize;
            pending.drain(..took.min(n));
        }
        if leave {
            let _ = write!(err, "{nl}[left the console of {}]{nl}", o.name);
            return Ok(0);
        }
        let p = client.call(Kind::ConsoleRead, |w| {
            ConsoleRead {
                name: &o.name,
                cursor,
                max: ConsoleData::MAX_DATA as u32,
            }
            .write(w)
        })?;
        let d = decode("console data", ConsoleData::read(&p))?;
        if d.start > cursor {
            let _ = write!(
                err,
                "{nl}[atoll: {} bytes of {}'s output were lost]{nl}",
                d.start - cursor,
                o.name
            );
        }
        out.write_all(d.data).map_err(|e| Error::io("stdout", e))?;
        out.flush().map_err(|e| Error::io("stdout", e))?;
        cursor = d.next;
        if until_seen(o, &mut window, d.data) {
            return Ok(0);
        }
        if timed_out(o, start, nl, err) {
            return Ok(1);
        }
        if d.data.is_empty() {
            if !d.running {
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
            if let (Some(at), Some(after)) = (input_ended, o.exit_after) {
                if at.elapsed() >= after {
                    return Ok(0);
                }
            }
            std::thread::sleep(o.poll);
        }
    }
}
