//! Channels at run time (`atoll_abi::channel`): what the host's exits and an enclave's cores
//! share about each channel function — the only state two partitions share.
//!
//! Each channel function has a [`ChannelState`] of atomics in [`CHANNELS`]: no lock, so neither
//! side ever waits for the other. The host's exits read and write the registers
//! ([`register_read`], [`register_write`]); a doorbell sets bits in [`ChannelState::doorbell`]
//! and asks for the enclave's core to be kicked. The enclave's core takes the doorbell bits
//! ([`ChannelState::take_doorbell`]) before it enters its vCPU, and tells the host about new
//! records with [`ChannelState::signal`], which sets PENDING and returns the interrupt to send
//! — an interrupt atoll checked when the host programmed the function's MSI capability
//! ([`ChannelState::set_msi`]), so the enclave's core never looks at the host's state.

use atoll_abi::channel::{reg, state, MAX_CHANNELS, MAX_DEVICES, REGISTERS_SIZE};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The device bits a doorbell, PENDING or RESETS may carry.
const DEVICE_BITS: u32 = (1 << MAX_DEVICES) - 1;

/// One channel function's shared state.
#[derive(Debug)]
pub struct ChannelState {
    /// [`state`]: IDLE or ATTACHED.
    state: AtomicU32,
    /// Bumped at every attach.
    generation: AtomicU32,
    /// Bits for the host's PENDING register (read-to-clear by the host).
    pending: AtomicU32,
    /// Bits for the host's RESETS register.
    resets: AtomicU32,
    /// Errors counted against the host (its rings or fields were malformed).
    host_errors: AtomicU32,
    /// Devices the host rang, not yet taken by the enclave's core.
    doorbell: AtomicU32,
    /// The interrupt to send to the host: APIC id << 8 | vector, with bit 63 set when valid.
    msi: AtomicU64,
    /// The physical APIC id of the enclave core to kick on a doorbell (bit 32: none).
    kick: AtomicU64,
    /// How many devices the attached enclave has (bits past them are refused).
    devices: AtomicU32,
    /// Doorbell writes refused (bits past the devices, or while idle).
    refused: AtomicU32,
    /// INTx: the GSI the host said it routed pin A to (`u32::MAX`: none).
    intx_gsi: AtomicU32,
    /// INTx: the interrupt that GSI's I/O APIC entry names, checked (as `msi`).
    intx: AtomicU64,
    /// INTx: the host's command register has interrupt-disable set.
    intx_masked: core::sync::atomic::AtomicBool,
}

impl ChannelState {
    const fn new() -> Self {
        Self {
            state: AtomicU32::new(state::IDLE),
            generation: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            resets: AtomicU32::new(0),
            host_errors: AtomicU32::new(0),
            doorbell: AtomicU32::new(0),
            msi: AtomicU64::new(0),
            kick: AtomicU64::new(1 << 32),
            devices: AtomicU32::new(0),
            refused: AtomicU32::new(0),
            intx_gsi: AtomicU32::new(u32::MAX),
            intx: AtomicU64::new(0),
            intx_masked: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The GSI the host routed INTx to, if it said.
    pub fn intx_gsi(&self) -> Option<u32> {
        let g = self.intx_gsi.load(Ordering::Acquire);
        (g != u32::MAX).then_some(g)
    }

    /// The interrupt the host's I/O APIC entry for [`Self::intx_gsi`] names, checked
    /// (`None`: masked, not a host core, or no such entry).
    pub fn set_intx(&self, target: Option<(u32, u8)>) {
        self.intx.store(pack(target), Ordering::Release);
    }

    /// The host wrote the command register: whether INTx is masked now. Returns the interrupt
    /// to send when it unmasked while the line is asserted (PENDING not zero).
    pub fn set_intx_masked(&self, masked: bool) -> Option<(u32, u8)> {
        let was = self.intx_masked.swap(masked, Ordering::AcqRel);
        if was && !masked && self.pending.load(Ordering::Acquire) != 0 {
            return unpack(self.intx.load(Ordering::Acquire));
        }
        None
    }

    /// The status register's interrupt bit: the line is asserted (PENDING not zero) and
    /// someone listens on INTx.
    pub fn intx_asserted(&self) -> bool {
        self.pending.load(Ordering::Acquire) != 0 && self.intx_gsi().is_some()
    }

    /// Whether an enclave holds the function.
    pub fn attached(&self) -> bool {
        self.state.load(Ordering::Acquire) == state::ATTACHED
    }

    /// An enclave with `devices` devices takes the function; its doorbells kick the core with
    /// physical APIC id `kick`. Returns the new generation.
    pub fn attach(&self, devices: usize, kick: u32) -> u32 {
        self.doorbell.store(0, Ordering::Relaxed);
        self.pending.store(0, Ordering::Relaxed);
        self.resets.store(0, Ordering::Relaxed);
        self.devices
            .store(devices.min(MAX_DEVICES) as u32, Ordering::Relaxed);
        self.kick.store(u64::from(kick), Ordering::Relaxed);
        let g = self
            .generation
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        self.state.store(state::ATTACHED, Ordering::Release);
        g
    }

    /// The enclave is gone: doorbells are refused from now on and the host learns it through
    /// PENDING's detach bit. Returns the interrupt to send, if the host asked for one.
    pub fn detach(&self) -> Option<(u32, u8)> {
        self.state.store(state::IDLE, Ordering::Release);
        self.kick.store(1 << 32, Ordering::Relaxed);
        self.devices.store(0, Ordering::Relaxed);
        self.doorbell.store(0, Ordering::Relaxed);
        self.pending
            .fetch_or(reg::PENDING_DETACHED, Ordering::AcqRel);
        self.interrupt()
    }

    /// The interrupt to send for new PENDING bits: the MSI the host asked for; else INTx,
    /// when the line was not asserted before (`old`: PENDING before) and is not masked.
    fn interrupt_for(&self, old: u32) -> Option<(u32, u8)> {
        if let Some(t) = unpack(self.msi.load(Ordering::Acquire)) {
            return Some(t);
        }
        if old == 0 && !self.intx_masked.load(Ordering::Acquire) {
            return unpack(self.intx.load(Ordering::Acquire));
        }
        None
    }

    /// The interrupt the host asked for, whatever PENDING held (detach, resets).
    fn interrupt(&self) -> Option<(u32, u8)> {
        self.interrupt_for(0)
    }

    /// The host programmed the function's MSI: atoll checked that it names one host core and a
    /// fixed vector (`None`: disabled or refused).
    pub fn set_msi(&self, target: Option<(u32, u8)>) {
        self.msi.store(pack(target), Ordering::Release);
    }

    /// The enclave side has news for the host on `devices` (a mask): sets PENDING and returns
    /// the interrupt to send (none if PENDING already held all of them, or nothing listens).
    pub fn signal(&self, devices: u32) -> Option<(u32, u8)> {
        let old = self
            .pending
            .fetch_or(devices & DEVICE_BITS, Ordering::AcqRel);
        if old & devices == devices {
            return None;
        }
        self.interrupt_for(old)
    }

    /// The enclave side reset `devices`' rings: RESETS, then an interrupt.
    pub fn reset(&self, devices: u32) -> Option<(u32, u8)> {
        self.resets
            .fetch_or(devices & DEVICE_BITS, Ordering::AcqRel);
        self.pending
            .fetch_or(devices & DEVICE_BITS, Ordering::AcqRel);
        self.interrupt()
    }

    /// Counts a protocol error of the host's.
    pub fn host_error(&self) {
        self.host_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the devices the host rang (the enclave's core, before entering its vCPU).
    pub fn take_doorbell(&self) -> u32 {
        if self.doorbell.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.doorbell.swap(0, Ordering::AcqRel)
    }
}

/// An interrupt target in one word: valid bit 63, APIC id in bits 8..40, vector in 0..8.
fn pack(target: Option<(u32, u8)>) -> u64 {
    target.map_or(0, |(apic, vector)| {
        1 << 63 | u64::from(apic) << 8 | u64::from(vector)
    })
}

fn unpack(word: u64) -> Option<(u32, u8)> {
    (word >> 63 != 0).then_some(((word >> 8) as u32, word as u8))
}

/// The channel functions' states (function `i + 1` of the control device is `CHANNELS[i]`).
pub static CHANNELS: [ChannelState; MAX_CHANNELS] = [const { ChannelState::new() }; MAX_CHANNELS];

/// A host read of `len` (1, 2, 4 or 8) bytes at `offset` of channel `index`'s BAR0. Registers
/// read as little-endian dwords at their offsets (a read covers their bytes); PENDING and
/// RESETS clear what a read returns.
pub fn register_read(index: usize, offset: u64, len: usize) -> u64 {
    let Some(c) = CHANNELS.get(index) else {
        return u64::MAX;
    };
    if !matches!(len, 1 | 2 | 4 | 8)
        || offset
            .checked_add(len as u64)
            .is_none_or(|e| e > REGISTERS_SIZE)
    {
        return u64::MAX;
    }
    let mut bytes = [0u8; 16];
    let first = offset & !3;
    for (k, at) in [first, first + 4, first + 8].into_iter().enumerate() {
        let v = match at {
            reg::MAGIC => reg::MAGIC_VALUE,
            reg::VERSION => atoll_abi::channel::VERSION,
            reg::STATE => c.state.load(Ordering::Acquire),
            reg::GENERATION => c.generation.load(Ordering::Acquire),
            reg::PENDING if at < offset + len as u64 => c.pending.swap(0, Ordering::AcqRel),
            reg::RESETS if at < offset + len as u64 => c.resets.swap(0, Ordering::AcqRel),
            reg::HOST_ERRORS => c.host_errors.load(Ordering::Relaxed),
            reg::INTX_GSI => c.intx_gsi.load(Ordering::Acquire),
            reg::INTX_ROUTED => u32::from(unpack(c.intx.load(Ordering::Acquire)).is_some()),
            _ => 0,
        };
        bytes[k * 4..k * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    let start = (offset - first) as usize;
    let mut out = [0u8; 8];
    out[..len].copy_from_slice(&bytes[start..start + len]);
    u64::from_le_bytes(out)
}

/// What a host register write asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterEffect {
    /// Kick the enclave core with this APIC id (a doorbell).
    Kick(u32),
    /// The host named the GSI of its INTx: resolve its I/O APIC entry
    /// ([`ChannelState::set_intx`]).
    IntxRouted,
}

/// A host write at `offset` of channel `index`'s BAR0. A dword write at DOORBELL with bits of
/// the attached enclave's devices queues them and asks for the enclave's core to be kicked; a
/// dword write at INTX_GSI records the GSI; anything else is ignored (a doorbell with other
/// bits, or while idle, is counted as refused).
pub fn register_write(index: usize, offset: u64, len: usize, value: u64) -> Option<RegisterEffect> {
    let c = CHANNELS.get(index)?;
    if offset == reg::INTX_GSI && len == 4 {
        c.intx_gsi.store(value as u32, Ordering::Release);
        c.set_intx(None);
        return Some(RegisterEffect::IntxRouted);
    }
    if offset != reg::DOORBELL || len != 4 {
        return None;
    }
    let bits = value as u32;
    let allowed = (1u32 << c.devices.load(Ordering::Acquire)) - 1;
    if !c.attached() || bits & !allowed != 0 || bits == 0 {
        c.refused.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    c.doorbell.fetch_or(bits, Ordering::AcqRel);
    let k = c.kick.load(Ordering::Acquire);
    (k >> 32 == 0).then_some(RegisterEffect::Kick(k as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test uses its own channel index: CHANNELS is shared by the test threads.

    #[test]
    fn registers_read_as_dwords_and_pending_clears() {
        let i = 0;
        assert_eq!(register_read(i, reg::MAGIC, 4) as u32, reg::MAGIC_VALUE);
        assert_eq!(
            register_read(i, reg::VERSION, 4),
            u64::from(atoll_abi::channel::VERSION)
        );
        assert_eq!(register_read(i, reg::STATE, 4) as u32, state::IDLE);
        let g = CHANNELS[i].attach(3, 5);
        assert_eq!(register_read(i, reg::STATE, 4) as u32, state::ATTACHED);
        assert_eq!(register_read(i, reg::GENERATION, 4) as u32, g);
        // 8-byte read at MAGIC: MAGIC | VERSION << 32; a byte of MAGIC.
        assert_eq!(
            register_read(i, reg::MAGIC, 8),
            u64::from(reg::MAGIC_VALUE) | u64::from(atoll_abi::channel::VERSION) << 32
        );
        assert_eq!(register_read(i, reg::MAGIC + 1, 1), u64::from(b'C'));
        // Nothing programmed: no interrupt, but PENDING is set and cleared by a read.
        assert_eq!(CHANNELS[i].signal(0b101), None);
        assert_eq!(register_read(i, reg::PENDING, 4), 0b101);
        assert_eq!(register_read(i, reg::PENDING, 4), 0);
        // Past BAR0, odd sizes: all ones.
        assert_eq!(register_read(i, REGISTERS_SIZE - 2, 4), u64::MAX);
        assert_eq!(register_read(i, 0, 3), u64::MAX);
        assert_eq!(register_read(MAX_CHANNELS, 0, 4), u64::MAX);
    }

    #[test]
    fn doorbells_name_only_the_enclaves_devices() {
        let i = 1;
        // Idle: refused.
        assert_eq!(register_write(i, reg::DOORBELL, 4, 1), None);
        CHANNELS[i].attach(2, 7);
        assert_eq!(register_write(i, reg::DOORBELL, 4, 0b100), None, "device 2");
        assert_eq!(register_write(i, reg::DOORBELL, 4, 0), None);
        assert_eq!(register_write(i, reg::DOORBELL, 2, 1), None, "narrow");
        assert_eq!(register_write(i, reg::DOORBELL + 4, 4, 1), None);
        assert_eq!(CHANNELS[i].take_doorbell(), 0);
        assert_eq!(
            register_write(i, reg::DOORBELL, 4, 0b10),
            Some(RegisterEffect::Kick(7))
        );
        assert_eq!(
            register_write(i, reg::DOORBELL, 4, 0b01),
            Some(RegisterEffect::Kick(7))
        );
        assert_eq!(CHANNELS[i].take_doorbell(), 0b11);
        assert_eq!(CHANNELS[i].take_doorbell(), 0);
        // Detached: refused again, and PENDING carries the detach bit.
        CHANNELS[i].set_msi(Some((2, 0x41)));
        assert_eq!(CHANNELS[i].detach(), Some((2, 0x41)));
        assert_eq!(register_write(i, reg::DOORBELL, 4, 1), None);
        assert_eq!(
            register_read(i, reg::PENDING, 4) as u32,
            reg::PENDING_DETACHED
        );
    }

    #[test]
    fn signals_interrupt_once_until_the_host_reads_pending() {
        let i = 2;
        CHANNELS[i].attach(3, 0);
        CHANNELS[i].set_msi(Some((1, 0x30)));
        assert_eq!(CHANNELS[i].signal(0b1), Some((1, 0x30)));
        assert_eq!(CHANNELS[i].signal(0b1), None, "already pending");
        assert_eq!(CHANNELS[i].signal(0b11), Some((1, 0x30)), "a new bit");
        assert_eq!(register_read(i, reg::PENDING, 4), 0b11);
        assert_eq!(CHANNELS[i].signal(0b1), Some((1, 0x30)));
        // Bits past the devices never reach PENDING.
        register_read(i, reg::PENDING, 4);
        CHANNELS[i].signal(1 << 20);
        assert_eq!(register_read(i, reg::PENDING, 4), 0);
        assert_eq!(CHANNELS[i].reset(0b100), Some((1, 0x30)));
        assert_eq!(register_read(i, reg::RESETS, 4), 0b100);
        CHANNELS[i].set_msi(None);
        assert_eq!(CHANNELS[i].signal(0b10), None);
    }

    #[test]
    fn intx_is_a_level_the_host_masks_and_unmasks() {
        let i = 3;
        CHANNELS[i].attach(2, 0);
        assert_eq!(register_read(i, reg::INTX_GSI, 4) as u32, u32::MAX);
        assert!(!CHANNELS[i].intx_asserted());
        assert_eq!(
            register_write(i, reg::INTX_GSI, 4, 219),
            Some(RegisterEffect::IntxRouted)
        );
        assert_eq!(CHANNELS[i].intx_gsi(), Some(219));
        assert_eq!(register_read(i, reg::INTX_GSI, 4), 219);
        // Not resolved yet: PENDING is set, nothing is sent, the status bit says asserted.
        assert_eq!(CHANNELS[i].signal(0b1), None);
        assert!(CHANNELS[i].intx_asserted());
        register_read(i, reg::PENDING, 4);
        assert!(!CHANNELS[i].intx_asserted());
        assert_eq!(register_read(i, reg::INTX_ROUTED, 4), 0);
        CHANNELS[i].set_intx(Some((1, 0x61)));
        assert_eq!(register_read(i, reg::INTX_ROUTED, 4), 1);
        // The rising edge sends; more bits while asserted do not.
        assert_eq!(CHANNELS[i].signal(0b1), Some((1, 0x61)));
        assert_eq!(CHANNELS[i].signal(0b10), None);
        // The host's handler masks; a new bit stays quiet; unmasking while asserted sends.
        assert_eq!(CHANNELS[i].set_intx_masked(true), None);
        register_read(i, reg::PENDING, 4);
        assert_eq!(CHANNELS[i].signal(0b1), None);
        assert_eq!(CHANNELS[i].set_intx_masked(false), Some((1, 0x61)));
        // Unmasking with nothing pending sends nothing.
        register_read(i, reg::PENDING, 4);
        CHANNELS[i].set_intx_masked(true);
        assert_eq!(CHANNELS[i].set_intx_masked(false), None);
        // MSI, when the host programs it, wins.
        CHANNELS[i].set_msi(Some((2, 0x40)));
        assert_eq!(CHANNELS[i].signal(0b1), Some((2, 0x40)));
        CHANNELS[i].set_msi(None);
    }
}
