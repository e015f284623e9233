//! The two rtnetlink requests `atoll vf` makes, encoded by hand: set an interface up, and set
//! a virtual function's MAC on its physical function (what `ip link set DEV up` and
//! `ip link set DEV vf N mac M` send; the host's busybox `ip` cannot do the second, and the
//! host image has no iproute2).
//!
//! The encoders and the ack parser are pure functions, tested byte for byte against the
//! kernel's layouts (include/uapi/linux/netlink.h, rtnetlink.h, if_link.h); [`Rtnl`] sends
//! them over a `NETLINK_ROUTE` socket.

use crate::client::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// `RTM_SETLINK` (rtnetlink.h): change an existing link.
pub const RTM_SETLINK: u16 = 19;
/// `NLM_F_REQUEST` (netlink.h): a request.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK` (netlink.h): answer with an `NLMSG_ERROR` carrying 0 on success.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLMSG_ERROR` (netlink.h): an ack or an error.
pub const NLMSG_ERROR: u16 = 0x2;
/// `NLM_F_CAPPED` (netlink.h, in an ack): the echoed request is its header only.
pub const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS` (netlink.h, in an ack): extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG` (netlink.h): the extended ack's text.
pub const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLA_F_NESTED` (netlink.h): the attribute holds attributes. The kernel's strict parsing
/// wants it on every nested attribute and refuses it on others.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// `IFLA_VFINFO_LIST` (if_link.h): nested, one `IFLA_VF_INFO` per VF to change.
pub const IFLA_VFINFO_LIST: u16 = 22;
/// `IFLA_VF_INFO` (if_link.h): nested, one VF's settings.
pub const IFLA_VF_INFO: u16 = 1;
/// `IFLA_VF_MAC` (if_link.h): `struct ifla_vf_mac { __u32 vf; __u8 mac[32]; }`.
pub const IFLA_VF_MAC: u16 = 1;
/// `IFF_UP` (if.h).
pub const IFF_UP: u32 = 0x1;
/// `sizeof(struct nlmsghdr)`: len u32, type u16, flags u16, seq u32, pid u32.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct ifinfomsg)`: family u8, pad u8, type u16, index i32, flags u32, change u32.
pub const IFINFOMSG_LEN: usize = 16;
/// `sizeof(struct ifla_vf_mac)`.
pub const IFLA_VF_MAC_LEN: usize = 36;

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Whether a NIC may take it as its own: not multicast (bit 0 of the first octet; the
    /// broadcast address is multicast too) and not all zeroes (igb refuses both).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || format!("{s:?} is not a MAC address (six hex bytes, aa:bb:cc:dd:ee:ff)");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (b, p) in m.iter_mut().zip(parts) {
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        let mac = Mac(m);
        if !mac.is_unicast() {
            return Err(format!(
                "{s}: not a unicast address (a multicast or zero address is no NIC's own)"
            ));
        }
        Ok(mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// `NLA_ALIGN`/`RTA_ALIGN`: attributes and messages are padded to 4 bytes.
fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends an attribute header whose length is filled in by [`close`]; returns its offset.
fn open(buf: &mut Vec<u8>, kind: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    at
}

/// Sets the length of the attribute at `at` to what follows it, and pads the buffer.
fn close(buf: &mut Vec<u8>, at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    buf.resize(align(buf.len()), 0);
}

/// An `RTM_SETLINK` request for `ifindex` with `flags`/`change` in its ifinfomsg and room for
/// attributes; [`finish`] sets its length.
fn setlink(seq: u32, ifindex: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
    b.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills in ours
    b.push(0); // ifi_family AF_UNSPEC
    b.push(0); // padding
    b.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type (ARPHRD_*), not changed
    b.extend_from_slice(&ifindex.to_ne_bytes()); // ifi_index
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b
}

fn finish(mut b: Vec<u8>) -> Vec<u8> {
    let len = b.len() as u32;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b
}

/// `ip link set DEV up`: IFF_UP in ifi_flags, and only IFF_UP in ifi_change (the kernel
/// changes the flags in ifi_change alone, `rtnl_dev_combine_flags`).
pub fn encode_set_up(seq: u32, ifindex: u32) -> Vec<u8> {
    finish(setlink(seq, ifindex, IFF_UP, IFF_UP))
}

/// `ip link set PF vf VF mac MAC`: `IFLA_VFINFO_LIST { IFLA_VF_INFO { IFLA_VF_MAC } }` on the
/// PF's ifindex, the MAC in the first 6 of 32 bytes.
pub fn encode_set_vf_mac(seq: u32, ifindex: u32, vf: u32, mac: Mac) -> Vec<u8> {
    let mut b = setlink(seq, ifindex, 0, 0);
    let list = open(&mut b, IFLA_VFINFO_LIST | NLA_F_NESTED);
    let info = open(&mut b, IFLA_VF_INFO | NLA_F_NESTED);
    let m = open(&mut b, IFLA_VF_MAC);
    b.extend_from_slice(&vf.to_ne_bytes());
    let mut bytes = [0u8; 32];
    bytes[..6].copy_from_slice(&mac.0);
    b.extend_from_slice(&bytes);
    close(&mut b, m);
    close(&mut b, info);
    close(&mut b, list);
    finish(b)
}

/// What the kernel answered to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Done.
    Ok,
    /// Refused with this errno (positive), and the extended ack's text if the kernel gave one.
    Refused {
        /// The errno.
        errno: i32,
        /// `NLMSGERR_ATTR_MSG`.
        message: Option<String>,
    },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Finds the ack to request `seq` among the messages of one datagram: an `NLMSG_ERROR`
/// whose error is 0 (done) or a negative errno, then `struct nlmsghdr` of the request (its
/// whole body unless `NLM_F_CAPPED`), then extended-ack attributes if `NLM_F_ACK_TLVS`.
/// Messages of other sequence numbers are skipped; None if the ack is not in `b` or
/// `b` is malformed.
pub fn parse_ack(b: &[u8], seq: u32) -> Option<Ack> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= b.len() {
        let len = u32_at(b, at)? as usize;
        if len < NLMSG_HDRLEN || at + len > b.len() {
            return None;
        }
        let msg = &b[at..at + len];
        let kind = u16_at(msg, 4)?;
        let flags = u16_at(msg, 6)?;
        if kind == NLMSG_ERROR && u32_at(msg, 8)? == seq {
            let error = u32_at(msg, NLMSG_HDRLEN)? as i32;
            if error == 0 {
                return Some(Ack::Ok);
            }
            let mut message = None;
            if flags & NLM_F_ACK_TLVS != 0 {
                let echoed = NLMSG_HDRLEN + 4;
                let tlvs = if flags & NLM_F_CAPPED != 0 {
                    echoed + NLMSG_HDRLEN
                } else {
                    echoed + align(u32_at(msg, echoed)? as usize)
                };
                let mut a = tlvs;
                while a + 4 <= msg.len() {
                    let alen = u16_at(msg, a)? as usize;
                    let atype = u16_at(msg, a + 2)? & !NLA_F_NESTED;
                    if alen < 4 || a + alen > msg.len() {
                        break;
                    }
                    if atype == NLMSGERR_ATTR_MSG {
                        let text = &msg[a + 4..a + alen];
                        let text = text.split(|c| *c == 0).next().unwrap_or(&[]);
                        message = Some(String::from_utf8_lossy(text).into_owned());
                    }
                    a += align(alen);
                }
            }
            return Some(Ack::Refused {
                errno: error.checked_neg().unwrap_or(i32::MAX),
                message,
            });
        }
        at += align(len);
    }
    None
}

/// The link changes `atoll vf` makes (the kernel in `main`, a recorder in tests).
pub trait Net {
    /// Sets interface `ifindex` up.
    fn set_up(&mut self, ifindex: u32) -> Result<()>;
    /// Sets the MAC of VF `vf` of the PF whose interface is `ifindex`.
    fn set_vf_mac(&mut self, ifindex: u32, vf: u32, mac: Mac) -> Result<()>;
}

/// Turns an ack into a result, naming `what` was asked.
pub fn check(what: &str, ack: Ack) -> Result<()> {
    match ack {
        Ack::Ok => Ok(()),
        Ack::Refused { errno, message } => {
            let os = std::io::Error::from_raw_os_error(errno);
            let extra = message.map(|m| format!(" ({m})")).unwrap_or_default();
            Err(Error::Other(format!(
                "{what}: the kernel refused: {os}{extra}"
            )))
        }
    }
}

/// The kernel's rtnetlink.
#[cfg(target_os = "linux")]
pub struct Rtnl {
    seq: u32,
}

#[cfg(target_os = "linux")]
impl Default for Rtnl {
    fn default() -> Self {
        Rtnl {
            seq: std::process::id(),
        }
    }
}

#[cfg(target_os = "linux")]
impl Rtnl {
    /// Sends one request and waits for its ack.
    fn request(&mut self, what: &str, make: impl FnOnce(u32) -> Vec<u8>) -> Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = make(seq);
        let oserr = |step: &str| {
            Error::Other(format!(
                "{what}: netlink {step}: {}",
                std::io::Error::last_os_error()
            ))
        };
        // SAFETY: socket() takes no pointers; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(oserr("socket"));
        }
        // SAFETY: fd is a socket just opened and owned by nothing else; OwnedFd closes it.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let on: libc::c_int = 1;
        // Extended acks carry the kernel's text for a refusal; without them (older kernels)
        // the errno alone is reported, so a failure here is ignored.
        // SAFETY: the option value points to a live c_int of the length given.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_NETLINK,
                11, // NETLINK_EXT_ACK (netlink.h)
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // An ack that never comes (it always does) must not hang the command.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: the option value points to a live timeval of the length given.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value before the family is set.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t; // pid 0: the kernel
                                                                  // SAFETY: msg and kernel are live for the call, their lengths are the ones given.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 || sent as usize != msg.len() {
            return Err(oserr("send"));
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is live and writable for its whole length.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(oserr("receive"));
            }
            if let Some(ack) = parse_ack(&buf[..n as usize], seq) {
                return check(what, ack);
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl Net for Rtnl {
    fn set_up(&mut self, ifindex: u32) -> Result<()> {
        self.request(&format!("setting interface {ifindex} up"), |seq| {
            encode_set_up(seq, ifindex)
        })
    }
    fn set_vf_mac(&mut self, ifindex: u32, vf: u32, mac: Mac) -> Result<()> {
        self.request(&format!("setting VF {vf}'s MAC to {mac}"), |seq| {
            encode_set_vf_mac(seq, ifindex, vf, mac)
        })
    }
}
