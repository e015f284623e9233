//! `atoll-channeld`: the host's side of an enclave's virtio devices.
//!
//! atoll runs the enclave's virtio devices on the enclave's cores and copies between the
//! guest's buffers and byte rings in a *channel window* ([`atoll_abi::channel`]), BAR2 of a
//! channel function in the host. This daemon maps that BAR (and nothing else of atoll's),
//! and serves one backend per device the window's header lists:
//!
//! * console — a pty (`/run/atoll/NAME/console.pty` links to it) and a unix socket
//!   `/run/atoll/NAME/console.sock` (`atoll console NAME` connects there); output goes to
//!   both, input from both goes to the enclave; a new socket client first gets the last
//!   [`console::HISTORY`] bytes;
//! * net — a tap device (the device's parameter, or `atl-NAME-I`), up, that the host can
//!   bridge or route;
//! * blk — an image file (the parameter), read-only when the device says so.
//!
//! One thread, one `poll` loop: it sleeps in `poll` while idle (each consumer armed with
//! `wait_for_data`, each blocked producer with `wait_for_room`) and wakes for the function's
//! interrupt (an eventfd through vfio-pci) or a backend's descriptor. Whatever the window
//! holds is checked: a device whose ring breaks the protocol is logged, counted and no longer
//! served until atoll reports it reset (RESETS).

pub mod blk;
pub mod console;
pub mod net;
pub mod sysfs;
pub mod uio;
pub mod vfio;
pub mod window;

#[cfg(test)]
mod tests;

use atoll_abi::channel::{
    read_device, read_summary, reg, Consumer, HostDevice, Kind, Producer, RingError, MAX_DEVICES,
};
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;
pub use window::{Function, Window};

/// How often a function without interrupt is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Where the daemon's files of enclave `name` go under `run` (`/run/atoll`).
pub fn run_dir(run: &std::path::Path, name: &str) -> PathBuf {
    run.join(name)
}

/// Opens a tap device by name; returns its descriptor (non-blocking) and its actual name.
pub type TapOpener = Box<dyn FnMut(&str) -> io::Result<(std::os::fd::OwnedFd, String)>>;

/// What the daemon needs besides the function.
pub struct Options {
    /// `/run/atoll/NAME`: the console's socket and pty link, the pid file.
    pub run_dir: PathBuf,
    /// Opens net devices' taps ([`net::open_tap`] on a machine).
    pub open_tap: TapOpener,
    /// Where log lines go.
    pub log: Box<dyn Write>,
}

/// The log: lines prefixed with the daemon's and the enclave's names.
pub struct Log {
    out: Box<dyn Write>,
    prefix: String,
}

impl Log {
    /// A log writing to `out` for enclave `name`.
    pub fn new(out: Box<dyn Write>, name: &str) -> Log {
        Log {
            out,
            prefix: format!("atoll-channeld[{name}]"),
        }
    }

    /// Writes one line.
    pub fn line(&mut self, msg: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{}: {msg}", self.prefix);
        let _ = self.out.flush();
    }
}

/// Why serving a device stopped.
#[derive(Debug)]
pub enum DevError {
    /// The ring broke the protocol.
    Ring(RingError),
    /// A record that cannot be what its device sends (e.g. a blk request shorter than its
    /// header).
    Record(String),
}

impl From<RingError> for DevError {
    fn from(e: RingError) -> Self {
        DevError::Ring(e)
    }
}

/// What a backend did with the record at the head of the to-host ring.
pub enum Took {
    /// Done: pop it.
    Done,
    /// The answer needs `len` bytes of room in the to-enclave ring: keep it and wait.
    NeedRoom(u32),
}

/// The rings of one device as a backend uses them, and the doorbell bits to ring.
pub struct Rings<'a> {
    /// The window.
    pub w: &'a Window,
    /// To host (the backend consumes).
    pub rx: &'a mut Consumer,
    /// To enclave (the backend produces).
    pub tx: &'a mut Producer,
    /// Set when atoll asked to be told (after a commit or pop).
    pub signal: &'a mut bool,
}

impl Rings<'_> {
    /// Pushes one record; `Ok(false)` when there was no room (then wait for it).
    pub fn push(&mut self, tag: u32, parts: &[&[u8]]) -> Result<bool, RingError> {
        match self.tx.push(self.w, tag, parts)? {
            Some(s) => {
                *self.signal |= s;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// A descriptor a backend wants polled, and what for.
pub struct Want {
    /// The descriptor.
    pub fd: RawFd,
    /// poll events.
    pub events: i16,
    /// The backend's own tag for it.
    pub tag: usize,
}

/// The backend of a device.
pub enum Backend {
    /// A console.
    Console(console::Console),
    /// A tap.
    Net(net::Net),
    /// An image file.
    Blk(blk::Blk),
}

impl Backend {
    /// Handles the head record of the to-host ring.
    fn take(
        &mut self,
        r: &mut Rings<'_>,
        rec: &atoll_abi::channel::Record,
    ) -> Result<Took, DevError> {
        match self {
            Backend::Console(c) => c.take(r, rec),
            Backend::Net(n) => n.take(r, rec),
            Backend::Blk(b) => b.take(r, rec),
        }
    }

    /// Pushes what the backend holds for the enclave; `Some(len)`: blocked, waiting for room
    /// for `len` bytes.
    fn flush(&mut self, r: &mut Rings<'_>) -> Result<Option<u32>, DevError> {
        match self {
            Backend::Console(c) => c.flush(r),
            Backend::Net(n) => n.flush(r),
            Backend::Blk(_) => Ok(None),
        }
    }

    fn wants(&self, out: &mut Vec<Want>) {
        match self {
            Backend::Console(c) => c.wants(out),
            Backend::Net(n) => n.wants(out),
            Backend::Blk(_) => {}
        }
    }

    fn ready(&mut self, tag: usize, revents: i16, log: &mut Log) {
        match self {
            Backend::Console(c) => c.ready(tag, revents, log),
            Backend::Net(n) => n.ready(revents, log),
            Backend::Blk(_) => {}
        }
    }

    /// Forgets what was in flight (the rings were reset).
    fn reset(&mut self) {
        match self {
            Backend::Console(c) => c.reset(),
            Backend::Net(n) => n.reset(),
            Backend::Blk(_) => {}
        }
    }
}

/// One device: its rings, its backend, its state.
pub struct Dev {
    /// The header's entry.
    pub info: HostDevice,
    rx: Consumer,
    tx: Producer,
    backend: Backend,
    /// Stopped after an error, until atoll resets the device.
    pub failed: bool,
    /// Errors counted against the device.
    pub errors: u64,
}

impl Dev {
    fn bit(&self) -> u32 {
        1 << self.info.index
    }

    /// Serves the rings until there is nothing to do and both directions are armed to be
    /// told (event index). Returns whether atoll must be signalled, and the error that
    /// stopped serving, if one did.
    fn service(&mut self, w: &Window) -> (bool, Option<DevError>) {
        if self.failed {
            return (false, None);
        }
        let mut signal = false;
        let r = self.serve(w, &mut signal);
        (signal, r.err())
    }

    fn fail(&mut self, e: DevError, log: &mut Log) {
        self.failed = true;
        self.errors += 1;
        log.line(format!(
            "device {} ({}): {e:?}: no longer served until atoll resets it",
            self.info.index,
            self.info.kind.name()
        ));
    }

    fn serve(&mut self, w: &Window, signal: &mut bool) -> Result<(), DevError> {
        // Bounded, so a producer that never stops cannot starve the other devices and fds.
        for _ in 0..64 {
            let mut r = Rings {
                w,
                rx: &mut self.rx,
                tx: &mut self.tx,
                signal,
            };
            let flush_blocked = self.backend.flush(&mut r)?;
            let mut take_blocked = None;
            while let Some(rec) = r.rx.peek(w)? {
                match self.backend.take(&mut r, &rec)? {
                    Took::Done => *r.signal |= r.rx.pop(w, &rec),
                    Took::NeedRoom(len) => {
                        take_blocked = Some(len);
                        break;
                    }
                }
            }
            // Arm both directions; either says whether something came meanwhile.
            let mut again = false;
            if take_blocked.is_none() {
                again |= r.rx.wait_for_data(w)?;
            }
            if let Some(len) = flush_blocked.or(take_blocked) {
                again |= r.tx.wait_for_room(w, len)?;
            }
            if !again {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The daemon: a function and its devices.
pub struct Daemon<F: Function> {
    f: F,
    /// The enclave.
    pub name: String,
    generation: u32,
    /// The devices, by index.
    pub devs: Vec<Dev>,
    log: Log,
    run_dir: PathBuf,
    /// Whether atoll said the enclave is gone.
    pub detached: bool,
}

fn make_backend(
    w: &Window,
    name: &str,
    info: &HostDevice,
    o: &mut Options,
    log: &mut Log,
) -> io::Result<Backend> {
    Ok(match info.kind {
        Kind::Console => Backend::Console(console::Console::open(&o.run_dir, log)?),
        Kind::Net => {
            let want = match info.param() {
                Some(p) if !p.is_empty() => p.to_string(),
                _ => net::default_name(name, info.index),
            };
            let (fd, got) = (o.open_tap)(&want)
                .map_err(|e| io::Error::new(e.kind(), format!("tap {want}: {e}")))?;
            log.line(format!("device {}: net on tap {got}", info.index));
            Backend::Net(net::Net::new(fd))
        }
        Kind::Blk => {
            let b = blk::Blk::open(w, info)?;
            log.line(format!(
                "device {}: blk on {} ({} bytes{})",
                info.index,
                info.param().unwrap_or("?"),
                b.capacity(),
                if b.read_only() { ", read-only" } else { "" }
            ));
            Backend::Blk(b)
        }
    })
}

impl<F: Function> Daemon<F> {
    /// Reads the window's header and opens every device's backend. A device whose entry or
    /// backend is unusable is logged and left out; the others are served.
    pub fn new(f: F, mut o: Options) -> io::Result<Daemon<F>> {
        let w = f.window();
        let mut buf = [0u8; atoll_abi::channel::layout::NAME_MAX];
        let (count, generation, name) = read_summary(w, &mut buf)
            .map_err(|e| io::Error::other(format!("window header: {e:?}")))?;
        let name = name.to_string();
        let mut log = Log::new(std::mem::replace(&mut o.log, Box::new(io::sink())), &name);
        log.line(format!(
            "serving {count} device(s), generation {generation}, on {}",
            f.describe()
        ));
        let mut devs = Vec::new();
        let mut bell = 0u32;
        for i in 0..count.min(MAX_DEVICES) {
            let info = match read_device(w, i) {
                Ok(d) => d,
                Err(e) => {
                    log.line(format!("device {i}: header entry unusable: {e:?}"));
                    continue;
                }
            };
            let backend = match make_backend(w, &name, &info, &mut o, &mut log) {
                Ok(b) => b,
                Err(e) => {
                    log.line(format!(
                        "device {i} ({}): no backend: {e}",
                        info.kind.name()
                    ));
                    continue;
                }
            };
            if info.kind == Kind::Blk {
                bell |= 1 << i;
            }
            devs.push(Dev {
                rx: Consumer::new(info.rings.to_host, w),
                tx: Producer::new(info.rings.to_enclave, w),
                info,
                backend,
                failed: false,
                errors: 0,
            });
        }
        let mut d = Daemon {
            f,
            name,
            generation,
            devs,
            log,
            run_dir: o.run_dir,
            detached: false,
        };
        if bell != 0 {
            d.ring(bell);
        }
        Ok(d)
    }

    /// The attach generation the header named.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The function.
    pub fn function(&mut self) -> &mut F {
        &mut self.f
    }

    fn ring(&mut self, mask: u32) {
        if let Err(e) = self.f.write_reg(reg::DOORBELL, mask) {
            self.log.line(format!("doorbell: {e}"));
        }
    }

    fn service_all(&mut self) {
        let mut bell = 0;
        for i in 0..self.devs.len() {
            let (signal, err) = self.devs[i].service(self.f.window());
            if signal {
                bell |= self.devs[i].bit();
            }
            if let Some(e) = err {
                // atoll may have reset the rings under us (the guest reset the device) and
                // not yet told us: indices that went back to zero look like garbage. RESETS
                // says which it was.
                let resets = self.read_resets();
                let mine = resets & self.devs[i].bit() != 0;
                if !mine {
                    self.devs[i].fail(e, &mut self.log);
                }
                self.apply_resets(resets);
            }
        }
        if bell != 0 {
            self.ring(bell);
        }
    }

    fn read_resets(&mut self) -> u32 {
        match self.f.read_reg(reg::RESETS) {
            Ok(r) => r,
            Err(e) => {
                self.log.line(format!("RESETS: {e}"));
                0
            }
        }
    }

    /// Starts over on the rings of the devices in `resets`.
    fn apply_resets(&mut self, resets: u32) {
        let w = self.f.window();
        let mut bell = 0;
        for d in &mut self.devs {
            if resets & d.bit() != 0 {
                d.rx = Consumer::new(d.info.rings.to_host, w);
                d.tx = Producer::new(d.info.rings.to_enclave, w);
                d.backend.reset();
                if d.failed {
                    self.log.line(format!(
                        "device {} ({}): reset by atoll, served again",
                        d.info.index,
                        d.info.kind.name()
                    ));
                }
                d.failed = false;
                if let Backend::Blk(b) = &d.backend {
                    b.announce(w, &d.info);
                    bell |= d.bit();
                }
            }
        }
        if bell != 0 {
            self.ring(bell);
        }
    }

    /// Looks at PENDING and RESETS (after an interrupt, or every round when polled).
    fn look_at_registers(&mut self) {
        let pending = match self.f.read_reg(reg::PENDING) {
            Ok(p) => p,
            Err(e) => {
                self.log.line(format!("PENDING: {e}"));
                0
            }
        };
        let resets = self.read_resets();
        if pending & reg::PENDING_DETACHED != 0 {
            self.detached = true;
            return;
        }
        self.apply_resets(resets);
    }

    /// One round: serve the rings, sleep in poll (at most `timeout`; `None`: until something
    /// happens, or [`POLL_INTERVAL`] without interrupt), handle what woke it. Returns false
    /// once the enclave is gone.
    pub fn step(&mut self, timeout: Option<Duration>) -> bool {
        if self.detached {
            return false;
        }
        self.service_all();
        let irq = self.f.irq_fd();
        let mut wants = Vec::new();
        let mut owner = Vec::new();
        if let Some(fd) = irq {
            wants.push(Want {
                fd,
                events: libc::POLLIN,
                tag: 0,
            });
            owner.push(usize::MAX);
        }
        for (i, d) in self.devs.iter().enumerate() {
            let before = wants.len();
            d.backend.wants(&mut wants);
            owner.extend(std::iter::repeat_n(i, wants.len() - before));
        }
        let mut fds: Vec<libc::pollfd> = wants
            .iter()
            .map(|w| libc::pollfd {
                fd: w.fd,
                events: w.events,
                revents: 0,
            })
            .collect();
        let ms = match (timeout, irq) {
            (Some(t), _) => t.as_millis().min(i32::MAX as u128) as i32,
            (None, Some(_)) => -1,
            (None, None) => POLL_INTERVAL.as_millis() as i32,
        };
        // SAFETY: `fds` is a live array of `fds.len()` pollfd entries the kernel fills in.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                self.log.line(format!("poll: {e}"));
                std::thread::sleep(POLL_INTERVAL);
            }
            return true;
        }
        let irq_fired = irq.is_some() && fds.first().is_some_and(|p| p.revents != 0);
        if irq_fired {
            self.f.ack_irq();
        }
        if irq_fired || irq.is_none() {
            self.look_at_registers();
            if self.detached {
                return false;
            }
            if irq_fired {
                self.f.rearm();
            }
        }
        for (k, p) in fds.iter().enumerate() {
            let i = owner[k];
            if p.revents == 0 || i == usize::MAX {
                continue;
            }
            if let Some(d) = self.devs.get_mut(i) {
                d.backend.ready(wants[k].tag, p.revents, &mut self.log);
            }
        }
        self.service_all();
        true
    }

    /// Runs until the enclave is gone, then removes the daemon's files.
    pub fn run(&mut self) {
        while self.step(None) {}
        self.log.line("the enclave is gone: exiting");
        self.cleanup();
    }

    /// Removes the console's socket and pty link and the pid file, and the directory when
    /// nothing else (the log) is left in it.
    pub fn cleanup(&mut self) {
        for f in ["console.sock", "console.pty", "channeld.pid"] {
            let _ = std::fs::remove_file(self.run_dir.join(f));
        }
        let _ = std::fs::remove_dir(&self.run_dir);
    }
}
