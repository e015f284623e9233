//! The control device as the host's Linux shows it: a PCI function whose BAR0 (registers) and
//! BAR2 (mailbox) are mapped through sysfs `resourceN` files (root only, no kernel module).

use crate::client::{Channel, Error, Result};
use atoll_abi::control::{
    reg, slot_state, DEVICE_ID, HEADER_LEN, MAILBOX_BAR, MAX_MESSAGE, SLOTS, SLOT_MESSAGE,
    SLOT_SIZE, SLOT_STATE, VENDOR_ID, VERSION,
};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a request may take before `atoll` gives up (a 2 GiB destroy zeroes memory).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Between two looks at a slot's state word.
const POLL: Duration = Duration::from_millis(1);

/// Finds the control device's sysfs directory under `sys` (normally `/sys`).
pub fn find(sys: &Path) -> Result<PathBuf> {
    let dir = sys.join("bus/pci/devices");
    let entries =
        fs::read_dir(&dir).map_err(|e| Error::NoDevice(format!("{}: {e}", dir.display())))?;
    let id = |p: &Path, f: &str| -> Option<u16> {
        let t = fs::read_to_string(p.join(f)).ok()?;
        u16::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok()
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| id(p, "vendor") == Some(VENDOR_ID) && id(p, "device") == Some(DEVICE_ID))
        .collect();
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        Error::NoDevice(format!(
            "no PCI function {VENDOR_ID:04x}:{DEVICE_ID:04x} in {}",
            dir.display()
        ))
    })
}

/// A shared mapping of a `resourceN` file.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn open(path: &Path, len: usize) -> Result<Mapping> {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(path)
            .map_err(|e| Error::NoDevice(format!("{}: {e}", path.display())))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        if size < len as u64 {
            return Err(Error::NoDevice(format!(
                "{} has {size} bytes, {len} expected",
                path.display()
            )));
        }
        // SAFETY: a fresh shared mapping of `len` bytes of an open file the kernel lets us map
        // (it checks the length against the BAR); no Rust object aliases the new pages.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::NoDevice(format!(
                "mmap {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping `open` made, unmapped once here; the Device that
        // held raw pointers into it is being dropped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The registers and the mailbox, wherever they are mapped. Separate from the sysfs mapping so
/// that a test can run the handshake over plain memory with a thread playing atoll.
pub struct Mailbox {
    regs: *mut u8,
    mailbox: *mut u8,
    slots: u32,
    timeout: Duration,
}

impl Mailbox {
    /// Uses registers at `regs` ([`atoll_abi::control::BAR0_SIZE`] bytes) and a mailbox at
    /// `mailbox` (`SLOTS * SLOT_SIZE` bytes), checking the identification registers.
    ///
    /// # Safety
    /// Both pointers are valid for reads and writes of their sizes, 8-byte aligned, for as long
    /// as the Mailbox lives, and nothing else in this process accesses them.
    pub unsafe fn new(regs: *mut u8, mailbox: *mut u8, timeout: Duration) -> Result<Mailbox> {
        let m = Mailbox {
            regs,
            mailbox,
            slots: SLOTS,
            timeout,
        };
        let magic = m.reg(reg::MAGIC);
        let version = m.reg(reg::VERSION);
        let slots = m.reg(reg::SLOTS);
        let size = m.reg(reg::SLOT_SIZE);
        if magic != reg::MAGIC_VALUE {
            return Err(Error::NoDevice(format!(
                "magic {magic:#010x}, expected {:#010x}",
                reg::MAGIC_VALUE
            )));
        }
        if version != u32::from(VERSION) {
            return Err(Error::NoDevice(format!(
                "atoll speaks protocol version {version}, this atoll command {VERSION}"
            )));
        }
        if slots != SLOTS || size != SLOT_SIZE {
            return Err(Error::NoDevice(format!(
                "{slots} slots of {size} bytes, expected {SLOTS} of {SLOT_SIZE}"
            )));
        }
        Ok(m)
    }

    fn reg(&self, off: u64) -> u32 {
        // SAFETY: `off` is one of the ABI's register offsets, 4-aligned inside BAR0 (valid per
        // `new`'s contract); a volatile 32-bit read is the access the device defines.
        unsafe { self.regs.add(off as usize).cast::<u32>().read_volatile() }
    }

    fn ring(&self, slot: u32) {
        // SAFETY: DOORBELL is a 4-aligned register inside BAR0; the write is the 32-bit
        // access the device defines.
        unsafe {
            self.regs
                .add(reg::DOORBELL as usize)
                .cast::<u32>()
                .write_volatile(slot)
        };
    }

    fn slot(&self, i: u32) -> *mut u8 {
        // SAFETY: i < slots, so the offset stays inside the mailbox mapping.
        unsafe { self.mailbox.add(i as usize * SLOT_SIZE as usize) }
    }

    fn state(&self, i: u32) -> &AtomicU32 {
        // SAFETY: the state word is 4-aligned inside slot `i` and lives as long as `self`;
        // atoll and other clients change it only with atomic accesses, as the ABI says.
        unsafe { &*self.slot(i).add(SLOT_STATE).cast::<AtomicU32>() }
    }

    /// Claims a free slot, waiting while all are busy.
    fn claim(&self, deadline: Instant) -> Result<u32> {
        loop {
            for i in 0..self.slots {
                if self
                    .state(i)
                    .compare_exchange(
                        slot_state::FREE,
                        slot_state::CLAIMED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    return Ok(i);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Other(format!(
                    "all {} mailbox slots stayed busy for {} s",
                    self.slots,
                    self.timeout.as_secs()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn write_message(&self, slot: u32, bytes: &[u8]) {
        let base = self.slot(slot).wrapping_add(SLOT_MESSAGE);
        let words = bytes.len() / 8;
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            // SAFETY: SLOT_MESSAGE is 8-aligned and the message fits the slot (bytes is at most
            // MAX_MESSAGE), so every word is inside our claimed slot.
            unsafe { base.add(i * 8).cast::<u64>().write_volatile(v) };
        }
        for (i, b) in bytes[words * 8..].iter().enumerate() {
            // SAFETY: as above, a byte inside the claimed slot.
            unsafe { base.add(words * 8 + i).write_volatile(*b) };
        }
    }

    fn read_message(&self, slot: u32, len: usize) -> Vec<u8> {
        let base = self.slot(slot).wrapping_add(SLOT_MESSAGE);
        let mut out = Vec::with_capacity(len + 8);
        for i in 0..len.div_ceil(8) {
            // SAFETY: len <= MAX_MESSAGE, so each 8-aligned word is inside the slot.
            let v = unsafe { base.add(i * 8).cast::<u64>().read_volatile() };
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.truncate(len);
        out
    }

    fn exchange_in(&self, slot: u32, request: &[u8], start: Instant) -> Result<Vec<u8>> {
        self.write_message(slot, request);
        self.state(slot)
            .store(slot_state::SUBMITTED, Ordering::Release);
        self.ring(slot);
        loop {
            let s = self.state(slot).load(Ordering::Acquire);
            if s == slot_state::DONE {
                break;
            }
            if s != slot_state::SUBMITTED && s != slot_state::WORKING {
                return Err(Error::BadReply(format!(
                    "slot {slot}'s state became {s} while atoll had it"
                )));
            }
            if start.elapsed() >= self.timeout {
                return Err(Error::Timeout(self.timeout.as_secs()));
            }
            std::thread::sleep(POLL);
        }
        // Copy the header first to learn the length, then the whole message; parse_reply
        // checks everything afterwards on the copy, so atoll's later writes cannot change it.
        let head = self.read_message(slot, HEADER_LEN);
        let len = u32::from_le_bytes([head[16], head[17], head[18], head[19]]) as usize;
        let total = HEADER_LEN.saturating_add(len).min(MAX_MESSAGE);
        Ok(self.read_message(slot, total))
    }
}

impl Channel for Mailbox {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        if request.len() > MAX_MESSAGE {
            return Err(Error::Other(format!(
                "a request of {} bytes does not fit a slot ({MAX_MESSAGE})",
                request.len()
            )));
        }
        let start = Instant::now();
        let slot = self.claim(start + self.timeout)?;
        let r = self.exchange_in(slot, request, start);
        // A timed-out slot stays claimed: atoll may still write its reply there.
        if !matches!(r, Err(Error::Timeout(_))) {
            self.state(slot).store(slot_state::FREE, Ordering::Release);
        }
        r
    }
}

/// The control device: its two mappings and the mailbox over them.
pub struct Device {
    mailbox: Mailbox,
    // Kept for their Drop (munmap) after `mailbox`, which points into them.
    _regs: Mapping,
    _mail: Mapping,
}

impl Device {
    /// Finds, maps and checks the control device under `sys`.
    pub fn open(sys: &Path) -> Result<Device> {
        let dir = find(sys)?;
        let regs = Mapping::open(
            &dir.join("resource0"),
            atoll_abi::control::BAR0_SIZE as usize,
        )?;
        let mail = Mapping::open(
            &dir.join(format!("resource{MAILBOX_BAR}")),
            atoll_abi::control::MAILBOX_SIZE as usize,
        )?;
        // SAFETY: both mappings are page-aligned, of the sizes Mailbox needs, and live as long
        // as the Device that owns them and the Mailbox.
        let mailbox = unsafe { Mailbox::new(regs.ptr, mail.ptr, TIMEOUT)? };
        Ok(Device {
            mailbox,
            _regs: regs,
            _mail: mail,
        })
    }
}

impl Channel for Device {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.mailbox.exchange(request)
    }
}
