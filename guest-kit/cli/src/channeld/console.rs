//! The console backend: a pty and a unix socket, both ways.

use super::{DevError, Log, Rings, Took, Want};
use atoll_abi::channel::{Record, CONSOLE_MAX_CHUNK};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Output a new socket client gets first (what the enclave printed before it came).
pub const HISTORY: usize = 64 << 10;
/// Input held while the to-enclave ring is full; sources are not read beyond it.
const INPUT_MAX: usize = 64 << 10;
/// Output held for a slow socket client before its oldest bytes are dropped.
const CLIENT_MAX: usize = 256 << 10;

const TAG_PTY: usize = 0;
const TAG_LISTENER: usize = 1;
const TAG_CLIENT0: usize = 2;

struct Client {
    s: UnixStream,
    out: VecDeque<u8>,
    /// Left (removed after the round, so the round's poll indices stay valid).
    gone: bool,
}

/// The console: pty master (with its slave held open, raw, so writes never fail for want of
/// a reader), listening socket, clients, history and pending input.
pub struct Console {
    master: Option<std::fs::File>,
    _slave: Option<OwnedFd>,
    listener: UnixListener,
    clients: Vec<Client>,
    history: VecDeque<u8>,
    input: Vec<u8>,
    /// Output bytes a slow client or a full pty did not take.
    pub dropped: u64,
}

/// Opens a pty pair with the slave in raw mode (no echo: output written to the master must
/// not come back as input). Returns master, slave and the slave's path.
fn open_pty() -> io::Result<(std::fs::File, OwnedFd, String)> {
    let mut m: libc::c_int = -1;
    let mut s: libc::c_int = -1;
    // SAFETY: openpty writes two descriptors into the locals; name, termios and winsize may
    // be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours alone.
    let master = unsafe { std::fs::File::from_raw_fd(m) };
    // SAFETY: as above.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: termios is plain data, filled by tcgetattr on success.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a valid termios.
    if unsafe { libc::tcgetattr(s, &mut t) } == 0 {
        // SAFETY: edits the local termios in place.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: a valid descriptor and a valid termios.
        unsafe { libc::tcsetattr(s, libc::TCSANOW, &t) };
    }
    set_nonblocking(m)?;
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: ttyname_r writes at most buf.len() bytes, NUL-terminated, into the local.
    let r = unsafe { libc::ttyname_r(s, buf.as_mut_ptr(), buf.len()) };
    let name = if r == 0 {
        // SAFETY: ttyname_r succeeded, so buf holds a NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    Ok((master, slave, name))
}

/// Sets O_NONBLOCK on a descriptor.
pub fn set_nonblocking(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; no memory involved.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Console {
    /// Creates `dir` (mode 0700), the pty (linked from `dir/console.pty`) and the socket
    /// `dir/console.sock`.
    pub fn open(dir: &Path, log: &mut Log) -> io::Result<Console> {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let (master, slave, tty) = match open_pty() {
            Ok((m, s, n)) => (Some(m), Some(s), n),
            Err(e) => {
                log.line(format!("console: no pty ({e}); socket only"));
                (None, None, String::new())
            }
        };
        let link = dir.join("console.pty");
        let _ = std::fs::remove_file(&link);
        if !tty.is_empty() {
            std::os::unix::fs::symlink(&tty, &link)?;
        }
        let sock = dir.join("console.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", sock.display())))?;
        listener.set_nonblocking(true)?;
        log.line(format!(
            "console: {} and pty {}",
            sock.display(),
            if tty.is_empty() { "none" } else { &tty }
        ));
        Ok(Console {
            master,
            _slave: slave,
            listener,
            clients: Vec::new(),
            history: VecDeque::new(),
            input: Vec::new(),
            dropped: 0,
        })
    }

    /// Connected socket clients.
    pub fn clients(&self) -> usize {
        self.clients.iter().filter(|c| !c.gone).count()
    }

    fn output(&mut self, bytes: &[u8]) {
        self.history.extend(bytes);
        let over = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..over);
        if let Some(m) = &mut self.master {
            // Nobody reading the pty fills its buffer: the rest is dropped (the socket and
            // the history still have it).
            match m.write(bytes) {
                Ok(n) => self.dropped += (bytes.len() - n) as u64,
                Err(_) => self.dropped += bytes.len() as u64,
            }
        }
        for c in &mut self.clients {
            c.out.extend(bytes);
            let over = c.out.len().saturating_sub(CLIENT_MAX);
            c.out.drain(..over);
            self.dropped += over as u64;
        }
        self.flush_clients();
    }

    fn flush_clients(&mut self) {
        self.clients.retain_mut(|c| {
            if c.gone {
                return false;
            }
            while !c.out.is_empty() {
                let (a, _) = c.out.as_slices();
                match c.s.write(a) {
                    Ok(0) => return false,
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            true
        });
    }

    /// A to-host record: output bytes.
    pub fn take(&mut self, r: &mut Rings<'_>, rec: &Record) -> Result<Took, DevError> {
        let mut buf = [0u8; CONSOLE_MAX_CHUNK as usize];
        let n = r.rx.read(r.w, rec, 0, &mut buf);
        self.output(&buf[..n]);
        Ok(Took::Done)
    }

    /// Pushes pending input in chunks of at most [`CONSOLE_MAX_CHUNK`].
    pub fn flush(&mut self, r: &mut Rings<'_>) -> Result<Option<u32>, DevError> {
        // Clients that left or can take more output are dealt with here too, once a round.
        self.flush_clients();
        while !self.input.is_empty() {
            let n = self.input.len().min(CONSOLE_MAX_CHUNK as usize);
            if !r.push(0, &[&self.input[..n]])? {
                return Ok(Some(n as u32));
            }
            self.input.drain(..n);
        }
        Ok(None)
    }

    /// The descriptors to poll: input sources while there is room for input, the listener,
    /// clients with output waiting.
    pub fn wants(&self, out: &mut Vec<Want>) {
        let room = self.input.len() < INPUT_MAX;
        if let (Some(m), true) = (&self.master, room) {
            out.push(Want {
                fd: m.as_raw_fd(),
                events: libc::POLLIN,
                tag: TAG_PTY,
            });
        }
        out.push(Want {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            tag: TAG_LISTENER,
        });
        for (i, c) in self.clients.iter().enumerate() {
            let mut ev = 0;
            if room {
                ev |= libc::POLLIN;
            }
            if !c.out.is_empty() {
                ev |= libc::POLLOUT;
            }
            out.push(Want {
                fd: c.s.as_raw_fd(),
                events: ev,
                tag: TAG_CLIENT0 + i,
            });
        }
    }

    fn read_input(src: &mut dyn Read, input: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; 4096];
        let room = INPUT_MAX.saturating_sub(input.len()).min(buf.len());
        if room == 0 {
            return true;
        }
        match src.read(&mut buf[..room]) {
            Ok(0) => false,
            Ok(n) => {
                input.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        }
    }

    /// A descriptor is ready.
    pub fn ready(&mut self, tag: usize, revents: i16, log: &mut Log) {
        match tag {
            TAG_PTY => {
                if let Some(m) = &mut self.master {
                    // EIO when no one holds the slave: nothing to read (we hold it, so rare).
                    let _ = Self::read_input(m, &mut self.input);
                }
            }
            TAG_LISTENER => {
                while let Ok((s, _)) = self.listener.accept() {
                    if s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    log.line("console: a client connected");
                    self.clients.push(Client {
                        s,
                        out: self.history.iter().copied().collect(),
                        gone: false,
                    });
                }
                self.flush_clients();
            }
            t => {
                if let Some(c) = self.clients.get_mut(t - TAG_CLIENT0) {
                    if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                        && !Self::read_input(&mut c.s, &mut self.input)
                    {
                        c.gone = true;
                        log.line("console: a client left");
                    }
                }
            }
        }
    }

    /// The rings were reset: input not yet sent is dropped with them.
    pub fn reset(&mut self) {
        self.input.clear();
    }
}
