//! The net backend: a tap device with `virtio_net_hdr`s (`IFF_VNET_HDR`), one packet per record.
//!
//! Toward the host a record is the guest's header and packet ([`atoll_abi::channel`]): it goes
//! to the tap as it is, and the tap's kernel segments and checksums what the header asks for (a
//! 64 KiB packet when the guest offloads TCP segmentation), checking the header as it checks any
//! tap writer's. Toward the enclave the tap has no offloads (`TUNSETOFFLOAD` 0), so it hands
//! over whole, checksummed frames behind a header this backend drops: the record is the frame.

use super::{DevError, Log, Rings, Took, Want};
use atoll_abi::channel::{Kind, Record, NET_HEADER_LEN, NET_MAX_FRAME};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The longest interface name Linux takes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Frames read from the tap per round and held for the ring.
pub const BATCH: usize = 64;

/// `atl-NAME-I`, cut to [`IFNAME_MAX`] bytes (at a character boundary).
pub fn default_name(enclave: &str, index: usize) -> String {
    let suffix = format!("-{index}");
    let mut head = format!("atl-{enclave}");
    let keep = IFNAME_MAX - suffix.len();
    while head.len() > keep {
        head.pop();
    }
    head + &suffix
}

/// `struct ifreq` as far as TUNSETIFF and SIOC[GS]IFFLAGS use it: the name, then a short
/// (flags) in the union; 40 bytes on x86-64.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains('/') || name.contains('\0') {
        return Err(io::Error::other(format!("{name:?} is no interface name")));
    }
    let mut r = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(r)
}

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` in a header's flags (virtio 1.2 §5.1.6).
pub const HDR_F_NEEDS_CSUM: u8 = 1;

/// Creates (or attaches to) tap `name` without packet information, with [`NET_HEADER_LEN`]-byte
/// virtio headers and no offloads toward us, non-blocking, and sets it up. Returns its
/// descriptor and the name the kernel gave it.
pub fn open_tap(name: &str) -> io::Result<(OwnedFd, String)> {
    let mut req = ifreq(name)?;
    req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: open of a constant NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own alone.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads and writes an ifreq; `req` is a live one of the kernel's size.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let hdr_len = NET_HEADER_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer; `hdr_len` is a live one.
    if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // No offloads toward us, also on a persistent tap someone else set up: frames come whole
    // and checksummed, so the record needs no header (an enclave's device has no receive
    // offloads).
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let got_len = req.name.iter().position(|b| *b == 0).unwrap_or(16);
    let got = String::from_utf8_lossy(&req.name[..got_len]).into_owned();
    // SAFETY: a plain socket() call.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own alone (closed on return).
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut f = ifreq(&got)?;
    // SAFETY: SIOCGIFFLAGS fills the flags of a live ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut f) } < 0 {
        return Err(io::Error::last_os_error());
    }
    f.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a live ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &f) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((tap, got))
}

/// The tap (or, in tests, one end of a SOCK_SEQPACKET pair: packets keep their bounds).
pub struct Net {
    tap: OwnedFd,
    pending: std::collections::VecDeque<Vec<u8>>,
    /// A record on its way to the tap (the longest one, allocated once).
    out: Vec<u8>,
    /// Packets the tap did not take (its queue full, or a header its kernel refused).
    pub dropped_to_tap: u64,
    /// Frames from the tap longer than [`NET_MAX_FRAME`], shorter than their header, or with
    /// their checksum left to us (none while the tap has no offloads).
    pub dropped_oversize: u64,
    /// Times the to-enclave ring was full (the tap then waits: its own queue holds frames).
    pub ring_full: u64,
}

fn raw_read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: a read into a live buffer of buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn raw_write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: a write from a live buffer of buf.len() bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

impl Net {
    /// Serves `tap` (non-blocking).
    pub fn new(tap: OwnedFd) -> Net {
        Net {
            tap,
            pending: Default::default(),
            out: vec![0; Kind::Net.max_payload() as usize],
            dropped_to_tap: 0,
            dropped_oversize: 0,
            ring_full: 0,
        }
    }

    /// A header and packet from the enclave: to the tap.
    pub fn take(&mut self, r: &mut Rings<'_>, rec: &Record) -> Result<Took, DevError> {
        let n = r.rx.read(r.w, rec, 0, &mut self.out);
        match raw_write(&self.tap, &self.out[..n]) {
            Ok(m) if m == n => {}
            _ => self.dropped_to_tap += 1,
        }
        Ok(Took::Done)
    }

    /// Pushes the frame held back when the ring was full.
    pub fn flush(&mut self, r: &mut Rings<'_>) -> Result<Option<u32>, DevError> {
        while let Some(f) = self.pending.front() {
            if !r.push(0, &[f])? {
                self.ring_full += 1;
                return Ok(Some(f.len() as u32));
            }
            self.pending.pop_front();
        }
        Ok(None)
    }

    /// The tap, while fewer than [`BATCH`] frames wait for room.
    pub fn wants(&self, out: &mut Vec<Want>) {
        if self.pending.len() < BATCH {
            out.push(Want {
                fd: self.tap.as_raw_fd(),
                events: libc::POLLIN,
                tag: 0,
            });
        }
    }

    /// The tap is readable: takes up to [`BATCH`] frames (the round pushes them; while the
    /// ring is full the rest stay in the tap's queue, so the host is slowed down rather than
    /// frames lost here).
    pub fn ready(&mut self, _revents: i16, log: &mut Log) {
        while self.pending.len() < BATCH {
            if !self.read_one(log) {
                break;
            }
        }
    }

    /// Reads one frame (behind its header); false when the tap had none.
    fn read_one(&mut self, log: &mut Log) -> bool {
        const H: usize = NET_HEADER_LEN as usize;
        // One byte more than the longest frame, so a longer one shows.
        let mut buf = vec![0u8; H + NET_MAX_FRAME as usize + 1];
        match raw_read(&self.tap, &mut buf) {
            Ok(0) => false,
            Ok(n) if n <= H || n > H + NET_MAX_FRAME as usize || buf[0] & HDR_F_NEEDS_CSUM != 0 => {
                self.dropped_oversize += 1;
                if self.dropped_oversize.is_power_of_two() {
                    log.line(format!(
                        "net: {} frame(s) from the tap dropped (over {NET_MAX_FRAME} bytes, \
                         without a frame, or with their checksum left undone)",
                        self.dropped_oversize
                    ));
                }
                true
            }
            Ok(n) => {
                buf.truncate(n);
                buf.drain(..H);
                self.pending.push_back(buf);
                true
            }
            Err(_) => false,
        }
    }

    /// The rings were reset: frames held back are dropped.
    pub fn reset(&mut self) {
        self.pending.clear();
    }
}
