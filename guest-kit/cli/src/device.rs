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

/// How long a request may take before `atoll` gives up (a 2 GiB destroy zeroes memory);
/// `ATOLL_REQUEST_TIMEOUT` (seconds) changes it, for slow emulators.
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
    /// Where the per-slot lock files are (`/run/atoll`), if this process uses them: a slot
    /// is claimed only with its lock held, so a slot whose holder died (its lock gone with it)
    /// is taken over rather than lost.
    locks: Option<std::path::PathBuf>,
}

/// A slot's lock: an exclusive `flock` on its lock file, released when dropped (or when the
/// process dies).
struct SlotLock(#[allow(dead_code)] fs::File);

impl SlotLock {
    /// Takes slot `i`'s lock in `dir` without waiting; None if a live process holds it.
    fn try_take(dir: &Path, i: u32) -> Option<SlotLock> {
        use std::os::fd::AsRawFd;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("slot{i}.lock")))
            .ok()?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        (r == 0).then_some(SlotLock(f))
    }
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
            locks: None,
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
        unsafe {
            self.regs
                .wrapping_add(off as usize)
                .cast::<u32>()
                .read_volatile()
        }
    }

    fn ring(&self, slot: u32) {
        // SAFETY: DOORBELL is a 4-aligned register inside BAR0; the write is the 32-bit
        // access the device defines.
        unsafe {
            self.regs
                .wrapping_add(reg::DOORBELL as usize)
                .cast::<u32>()
                .write_volatile(slot)
        };
    }

    /// Slot `i`'s first byte (callers pass i < slots, inside the mailbox).
    fn slot(&self, i: u32) -> *mut u8 {
        self.mailbox.wrapping_add(i as usize * SLOT_SIZE as usize)
    }

    fn state(&self, i: u32) -> &AtomicU32 {
        // SAFETY: the state word is 4-aligned inside slot `i` and lives as long as `self`;
        // atoll and other clients change it only with atomic accesses, as the ABI says.
        unsafe { &*self.slot(i).wrapping_add(SLOT_STATE).cast::<AtomicU32>() }
    }

    /// Uses lock files in `dir` (created if missing) to claim slots.
    pub fn with_locks(mut self, dir: &Path) -> Mailbox {
        if fs::create_dir_all(dir).is_ok() {
            self.locks = Some(dir.to_path_buf());
        }
        self
    }

    /// Claims a free slot, waiting while all are busy. With lock files, a slot left CLAIMED,
    /// SUBMITTED or DONE by a process that died is taken over (never one atoll is WORKING on).
    fn claim(&self, deadline: Instant) -> Result<(u32, Option<SlotLock>)> {
        loop {
            for i in 0..self.slots {
                let lock = match &self.locks {
                    Some(dir) => match SlotLock::try_take(dir, i) {
                        Some(l) => Some(l),
                        None => continue,
                    },
                    None => None,
                };
                let from = match self.state(i).load(Ordering::Acquire) {
                    slot_state::FREE => slot_state::FREE,
                    s @ (slot_state::CLAIMED | slot_state::SUBMITTED | slot_state::DONE)
                        if lock.is_some() =>
                    {
                        s
                    }
                    _ => continue,
                };
                if self
                    .state(i)
                    .compare_exchange(
                        from,
                        slot_state::CLAIMED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    return Ok((i, lock));
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
            unsafe { base.wrapping_add(i * 8).cast::<u64>().write_volatile(v) };
        }
        for (i, b) in bytes[words * 8..].iter().enumerate() {
            // SAFETY: as above, a byte inside the claimed slot.
            unsafe { base.wrapping_add(words * 8 + i).write_volatile(*b) };
        }
    }

    fn read_message(&self, slot: u32, len: usize) -> Vec<u8> {
        let base = self.slot(slot).wrapping_add(SLOT_MESSAGE);
        let mut out = Vec::with_capacity(len + 8);
        for i in 0..len.div_ceil(8) {
            // SAFETY: len <= MAX_MESSAGE, so each 8-aligned word is inside the slot.
            let v = unsafe { base.wrapping_add(i * 8).cast::<u64>().read_volatile() };
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
        // Ctrl-C or kill while the slot is ours would leave it claimed for good: they wait
        // until it is free again.
        let _hold = crate::signals::Hold::new();
        let (slot, lock) = self.claim(start + self.timeout)?;
        let r = self.exchange_in(slot, request, start);
        // A timed-out slot stays claimed: atoll may still write its reply there (another
        // process takes it over once this one's lock is gone).
        if !matches!(r, Err(Error::Timeout(_))) {
            self.state(slot).store(slot_state::FREE, Ordering::Release);
        }
        drop(lock);
        r
    }
}

/// Where the slots' lock files live.
pub const LOCK_DIR: &str = "/run/atoll";

/// The control device: its two mappings and the mailbox over them.
pub struct Device {
    mailbox: Mailbox,
    // Kept for their Drop (munmap) after `mailbox`, which points into them.
    _regs: Mapping,
    _mail: Mapping,
}

impl Device {
    /// Finds, maps and checks the control device under `sys`.
    pub fn open(sys: &Path, timeout: Duration) -> Result<Device> {
        let dir = find(sys)?;
        // No driver binds the device, so its memory decoding is off until someone enables it
        // (the kernel's `pci_enable_device`, through sysfs): atoll maps the BARs only then.
        let enable = dir.join("enable");
        if fs::read_to_string(&enable).is_ok_and(|v| v.trim() == "0") {
            let _ = fs::write(&enable, "1");
        }
        let regs = Mapping::open(
            &dir.join("resource0"),
            atoll_abi::control::BAR0_SIZE as usize,
        )?;
        let mail = Mapping::open(
            &dir.join(format!("resource{MAILBOX_BAR}")),
            atoll_abi::control::MAILBOX_SIZE as usize,
        )?;
        // atoll maps the windows shortly after the host enabled the device: the registers may
        // read as nothing for a moment.
        let since = std::time::Instant::now();
        let mailbox = loop {
            // SAFETY: both mappings are page-aligned, of the sizes Mailbox needs, and live as
            // long as the Device that owns them and the Mailbox.
            match unsafe { Mailbox::new(regs.ptr, mail.ptr, timeout) } {
                Ok(m) => break m.with_locks(Path::new(LOCK_DIR)),
                Err(e) if since.elapsed() >= Duration::from_secs(2) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use atoll_abi::control::{
        parse_request, write_reply, Info, Kind, Status, BAR0_SIZE, MAILBOX_SIZE,
    };

    /// Registers and mailbox in plain memory, 8-byte aligned.
    struct Memory {
        regs: Vec<u64>,
        mail: Vec<u64>,
    }

    impl Memory {
        fn new(magic: u32, version: u32) -> Memory {
            let mut m = Memory {
                regs: vec![0; BAR0_SIZE as usize / 8],
                mail: vec![0; MAILBOX_SIZE as usize / 8],
            };
            m.regs[0] = u64::from(magic) | u64::from(version) << 32;
            m.regs[1] = u64::from(SLOTS) | u64::from(SLOT_SIZE) << 32;
            m
        }
        fn mailbox(&mut self, timeout: Duration) -> Result<Mailbox> {
            // SAFETY: both vectors outlive the Mailbox in every test, are 8-aligned and of the
            // sizes Mailbox needs; the test touches them only through atomics/volatile.
            unsafe {
                Mailbox::new(
                    self.regs.as_mut_ptr().cast(),
                    self.mail.as_mut_ptr().cast(),
                    timeout,
                )
            }
        }
        fn state(&self, slot: usize) -> u32 {
            (self.mail[slot * SLOT_SIZE as usize / 8] & 0xffff_ffff) as u32
        }
    }

    /// Plays atoll for `n` requests: takes SUBMITTED slots, answers Info with `pool_bytes`
    /// set to the slot index, anything else with the parse error's refusal.
    fn atoll(mail: usize, n: usize) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut done = 0;
            while done < n {
                for slot in 0..SLOTS as usize {
                    let base = (mail + slot * SLOT_SIZE as usize) as *mut u8;
                    // SAFETY: the state word of a slot inside the test's mailbox vector, which
                    // outlives this thread (joined before it is dropped).
                    let st = unsafe { &*(base.cast::<AtomicU32>()) };
                    if st
                        .compare_exchange(
                            slot_state::SUBMITTED,
                            slot_state::WORKING,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let mut msg = vec![0u8; MAX_MESSAGE];
                    // SAFETY: the message area of the slot, which the client handed over.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            base.wrapping_add(SLOT_MESSAGE),
                            msg.as_mut_ptr(),
                            MAX_MESSAGE,
                        )
                    };
                    let mut reply = vec![0u8; MAX_MESSAGE];
                    let len = match parse_request(&msg) {
                        Ok(r) => write_reply(&mut reply, r.kind as u16, r.seq, Status::Ok, |w| {
                            Info {
                                pool_bytes: slot as u64,
                                ..Default::default()
                            }
                            .write(w)
                        }),
                        Err((seq, kind, e)) => {
                            write_reply(&mut reply, kind, seq, Status::Malformed, |w| {
                                atoll_abi::control::Refusal {
                                    reason: &e.to_string(),
                                }
                                .write(w)
                            })
                        }
                    }
                    .unwrap();
                    // SAFETY: as above.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            reply.as_ptr(),
                            base.wrapping_add(SLOT_MESSAGE),
                            len,
                        )
                    };
                    st.store(slot_state::DONE, Ordering::Release);
                    done += 1;
                }
                std::thread::yield_now();
            }
        })
    }

    #[test]
    fn a_request_goes_through_a_slot_and_the_slot_is_freed() {
        let mut m = Memory::new(reg::MAGIC_VALUE, u32::from(VERSION));
        let mb = m.mailbox(Duration::from_secs(10)).unwrap();
        let t = atoll(m.mail.as_mut_ptr() as usize, 2);
        let mut c = Client::new(Box::new(mb), 1);
        let p = c.call(Kind::Info, |_| Ok(())).unwrap();
        assert_eq!(Info::read(&p).unwrap().pool_bytes, 0, "slot 0 answered");
        // Slot 0 busy with another client: the next request takes slot 1.
        // SAFETY: slot 0's state word in the mailbox vector; the atoll thread uses it only
        // atomically too.
        unsafe { &*(m.mail.as_mut_ptr().cast::<AtomicU32>()) }
            .store(slot_state::CLAIMED, Ordering::Release);
        let p = c.call(Kind::Info, |_| Ok(())).unwrap();
        assert_eq!(Info::read(&p).unwrap().pool_bytes, 1);
        t.join().unwrap();
        assert_eq!(
            (m.state(0), m.state(1)),
            (slot_state::CLAIMED, slot_state::FREE)
        );
        assert_eq!(m.regs[2] & 0xffff_ffff, 1, "the doorbell got slot 1");
        // Garbage gets atoll's refusal.
        let t = atoll(m.mail.as_mut_ptr() as usize, 1);
        let r = c.send_garbage(b"not a message at all, no magic").unwrap();
        assert_eq!(r.status, Status::Malformed);
        t.join().unwrap();
    }

    #[test]
    fn a_slot_whose_holder_died_is_taken_over_and_a_live_holders_is_not() {
        let dir = std::env::temp_dir().join(format!("atoll-cli-locks-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut m = Memory::new(reg::MAGIC_VALUE, u32::from(VERSION));
        let mb = m.mailbox(Duration::from_secs(10)).unwrap().with_locks(&dir);
        let mail = m.mail.as_mut_ptr().cast::<u8>();
        // SAFETY: the slots' state words in the mailbox vector, used only atomically here and
        // by the atoll thread.
        let st = |i: usize| unsafe {
            &*(mail
                .wrapping_add(i * SLOT_SIZE as usize)
                .cast::<AtomicU32>())
        };
        // Slot 0: left DONE by a client that died before freeing it (no lock held). (Not
        // SUBMITTED: the atoll thread would serve that one itself, racing the client for it.)
        // Slot 1: CLAIMED by a live client (its lock held). Slot 2: atoll is WORKING on it.
        st(0).store(slot_state::DONE, Ordering::Release);
        st(1).store(slot_state::CLAIMED, Ordering::Release);
        st(2).store(slot_state::WORKING, Ordering::Release);
        let live = SlotLock::try_take(&dir, 1).expect("slot 1's lock");
        let t = atoll(mail as usize, 1);
        let mut c = Client::new(Box::new(mb), 1);
        let p = c.call(Kind::Info, |_| Ok(())).unwrap();
        t.join().unwrap();
        assert_eq!(
            Info::read(&p).unwrap().pool_bytes,
            0,
            "the dead client's slot 0 reused"
        );
        assert_eq!(
            (m.state(0), m.state(1), m.state(2)),
            (slot_state::FREE, slot_state::CLAIMED, slot_state::WORKING),
            "the live holder's and atoll's slots untouched"
        );
        drop(live);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_answer_times_out_and_keeps_the_slot() {
        let mut m = Memory::new(reg::MAGIC_VALUE, u32::from(VERSION));
        let mb = m.mailbox(Duration::from_millis(30)).unwrap();
        let mut c = Client::new(Box::new(mb), 1);
        let e = c.call(Kind::Info, |_| Ok(())).unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{e}");
        assert_eq!(m.state(0), slot_state::SUBMITTED);
    }

    #[test]
    fn wrong_registers_are_refused() {
        for (magic, version, want) in [
            (0x1234, u32::from(VERSION), "magic"),
            (reg::MAGIC_VALUE, 1, "version 1"),
            (reg::MAGIC_VALUE, 3, "version 3"),
        ] {
            let mut m = Memory::new(magic, version);
            let e = m.mailbox(Duration::from_secs(1)).err().unwrap();
            let t = e.to_string();
            assert!(
                t.starts_with("atoll control device not found: are you root") && t.contains(want),
                "{t}"
            );
        }
        let mut m = Memory::new(reg::MAGIC_VALUE, u32::from(VERSION));
        m.regs[1] = 8 | u64::from(SLOT_SIZE) << 32;
        assert!(m
            .mailbox(Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string()
            .contains("8 slots"));
    }

    #[test]
    fn the_device_is_mapped_from_its_resource_files() {
        // Regular files map like the BARs' resource files (MAP_SHARED: a second mapping, the
        // "atoll" thread's, sees the client's writes).
        let root = std::env::temp_dir().join(format!("atoll-cli-mmap-{}", std::process::id()));
        let dir = root.join("bus/pci/devices/0000:00:05.0");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vendor"), "0x0a70\n").unwrap();
        fs::write(dir.join("device"), "0x0c71\n").unwrap();
        let mut regs = vec![0u8; BAR0_SIZE as usize];
        regs[0..4].copy_from_slice(&reg::MAGIC_VALUE.to_le_bytes());
        regs[4..8].copy_from_slice(&u32::from(VERSION).to_le_bytes());
        regs[8..12].copy_from_slice(&SLOTS.to_le_bytes());
        regs[12..16].copy_from_slice(&SLOT_SIZE.to_le_bytes());
        // Not a slot index: the doorbell write below must replace it.
        regs[0x10..0x14].copy_from_slice(&[0xff; 4]);
        fs::write(dir.join("resource0"), &regs).unwrap();
        fs::write(dir.join("resource2"), vec![0u8; MAILBOX_SIZE as usize]).unwrap();
        let theirs = Mapping::open(&dir.join("resource2"), MAILBOX_SIZE as usize).unwrap();
        let t = atoll(theirs.ptr as usize, 1);
        let mut c = Client::new(Box::new(Device::open(&root, TIMEOUT).unwrap()), 9);
        let p = c.call(Kind::Info, |_| Ok(())).unwrap();
        assert_eq!(Info::read(&p).unwrap().pool_bytes, 0);
        t.join().unwrap();
        drop(c);
        // The doorbell (slot 0) reached the register file.
        let r = fs::read(dir.join("resource0")).unwrap();
        assert_eq!(&r[0x10..0x14], &0u32.to_le_bytes());
        drop(theirs);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn the_device_is_found_by_its_ids() {
        let root = std::env::temp_dir().join(format!("atoll-cli-sysfs-{}", std::process::id()));
        let dev = |n: &str, v: &str, d: &str| {
            let p = root.join("bus/pci/devices").join(n);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("vendor"), v).unwrap();
            fs::write(p.join("device"), d).unwrap();
        };
        dev("0000:00:01.0", "0x8086\n", "0x0c71\n");
        dev("0000:00:02.0", "0x0a70\n", "0x1234\n");
        let e = find(&root).unwrap_err().to_string();
        assert!(e.contains("no PCI function 0a70:0c71"), "{e}");
        dev("0000:00:03.0", "0x0a70\n", "0x0c71\n");
        assert_eq!(
            find(&root).unwrap(),
            root.join("bus/pci/devices/0000:00:03.0")
        );
        // Mapping a resource file that is too small is refused before mmap.
        fs::write(
            root.join("bus/pci/devices/0000:00:03.0/resource0"),
            [0u8; 16],
        )
        .unwrap();
        let e = Device::open(&root, TIMEOUT).err().unwrap().to_string();
        assert!(e.contains("has 16 bytes, 4096 expected"), "{e}");
        let _ = fs::remove_dir_all(&root);
        assert!(find(&root).is_err());
    }
}
