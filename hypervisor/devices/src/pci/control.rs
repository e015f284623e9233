//! The control device: the PCI function through which the host's `atoll` command talks to
//! atoll, and the host's configuration accesses that reach it.
//!
//! The wire protocol, ids and BAR layout are [`atoll_abi::control`]'s; this module is the
//! device side of it, pure and host-tested:
//!
//! * [`ControlDevice`]: the function — a type 0 header with the ABI's ids and class, BAR0 (the
//!   registers, [`BAR0_SIZE`]) and BAR2 (the mailbox, [`MAILBOX_SIZE`]), both 32-bit
//!   non-prefetchable memory BARs starting unassigned so the host's Linux places them in its
//!   bridge window; the register semantics of BAR0 and the doorbell queue; where its BARs
//!   decode now ([`MappingChange`]), with the placement check that keeps atoll from mapping
//!   over RAM or its own memory.
//! * [`HostConfig`]: the host's configuration mechanism #1 (ports 0xCF8–0xCFF) and its ECAM
//!   page for the control function. The host reaches every real function on the hardware;
//!   atoll intercepts the ports and one 4 KiB ECAM page and answers only what names the
//!   control function, handing everything else back as a [`PassThrough`] to perform.
//! * [`pick_device`]: the device number the control function takes on bus 0.
//!
//! References: PCI Local Bus Specification 3.0 §3.2.2.3.2 (mechanism #1), §6.1–6.2 (header,
//! command, status, BARs; §6.2.5.1 BAR sizing); PCI Express Base Specification 4.0 §7.2.2
//! (ECAM); AMD BKDG for family 10h, D18F3x8C\[EnableCf8ExtCfg\] (CF8 bits 27:24 as register
//! bits 11:8).

use super::bus::PciDevice;
use super::config::{
    self, check_access, Bar, BarKind, ClassCode, ConfigEffect, ConfigSpace, Header,
};
use super::host::{ConfigAddress, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, CONFIG_PORTS};
use super::DevFn;
use atoll_abi::control::{self as abi, reg, BAR0_SIZE, MAILBOX_BAR, MAILBOX_SIZE, SLOTS};
use boot::GuestPhysAddr;

/// The control device's revision id.
pub const REVISION: u8 = 1;
/// Index of the registers BAR.
pub const REGISTERS_BAR: u8 = 0;
/// Index of the mailbox BAR (the ABI's [`MAILBOX_BAR`]).
pub const MAILBOX_BAR_INDEX: u8 = MAILBOX_BAR as u8;

/// The pending-doorbell bits a slot index may set (one per slot).
const SLOT_MASK: u32 = if SLOTS >= 32 {
    u32::MAX
} else {
    (1 << SLOTS) - 1
};
// The pending set is one bit per slot.
const _: () = assert!(SLOTS >= 1 && SLOTS <= 32);
// Both BARs are 32-bit memory BARs: a power of two from 16 bytes to 2 GiB (PCI 3.0 §6.2.5.1).
const _: () = assert!(BAR0_SIZE.is_power_of_two() && BAR0_SIZE >= 16 && BAR0_SIZE <= 1 << 31);
const _: () =
    assert!(MAILBOX_SIZE.is_power_of_two() && MAILBOX_SIZE >= 16 && MAILBOX_SIZE <= 1 << 31);

/// One of the control device's two memory windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// BAR0, the registers: every access must exit to atoll (the page is left unmapped or
    /// intercepted) and go to [`ControlDevice::register_read`] / `register_write`.
    Registers,
    /// BAR2, the mailbox: atoll maps its mailbox frames there (plain memory, no exits).
    Mailbox,
}

impl Window {
    /// The BAR behind the window.
    pub fn bar(self) -> u8 {
        match self {
            Window::Registers => REGISTERS_BAR,
            Window::Mailbox => MAILBOX_BAR_INDEX,
        }
    }

    fn slot(self) -> usize {
        match self {
            Window::Registers => 0,
            Window::Mailbox => 1,
        }
    }
}

/// Where a window decodes changed: the caller changes the host's second-stage tables.
///
/// `from` is where atoll mapped (or intercepted) it until now, `to` where it must from now on;
/// `None` is "nowhere". The caller gives back to the host what it had at `from` (for the
/// host's identity map: the identity mapping) and puts the window at `to`. When one call
/// reports two changes, every `from` is undone before any `to` is applied: the reported `to`s
/// never overlap each other, but a `to` may overlap the other window's `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingChange {
    /// Which function of the control device: 0 the control function, 1.. the channel
    /// functions.
    pub function: u8,
    /// Which window.
    pub window: Window,
    /// Where it was.
    pub from: Option<GuestPhysAddr>,
    /// Where it is now.
    pub to: Option<GuestPhysAddr>,
}

/// The changes one configuration write caused (at most one per window), in the order to
/// apply them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingChanges {
    items: [Option<MappingChange>; 2],
    next: usize,
}

impl MappingChanges {
    /// No change.
    pub const NONE: MappingChanges = MappingChanges {
        items: [None, None],
        next: 0,
    };

    fn push(&mut self, change: MappingChange) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some(change);
        }
    }

    /// Whether nothing changed (and nothing is left to take).
    pub fn is_empty(&self) -> bool {
        self.items[self.next.min(2)..].iter().all(Option::is_none)
    }
}

impl Iterator for MappingChanges {
    type Item = MappingChange;
    fn next(&mut self) -> Option<MappingChange> {
        while self.next < self.items.len() {
            let item = self.items[self.next].take();
            self.next += 1;
            if item.is_some() {
                return item;
            }
        }
        None
    }
}

/// The slot indices whose doorbell rang, lowest first (see [`ControlDevice::take_doorbells`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Doorbells(u32);

impl Doorbells {
    /// The set as a bitmask (bit *n*: slot *n*).
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl Iterator for Doorbells {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let slot = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(slot)
    }
}

/// What the control device counted (for atoll's log and statistics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Doorbells accepted.
    pub doorbells: u64,
    /// Register writes ignored: to a read-only register or to an offset with no register.
    pub ignored_writes: u64,
    /// Register accesses of a size other than 1, 2, 4 or 8 bytes, or past BAR0.
    pub bad_accesses: u64,
    /// BAR placements refused (over RAM or atoll's memory, or the two BARs over each other):
    /// the window then decodes nowhere. Counted once per refused address.
    pub placements_refused: u64,
}

/// Whether atoll may put a window of `size` bytes at `base`: not at 0 (unassigned), not past
/// the top of the address space, and not where `forbidden(base, size)` says — the caller's
/// test for any overlap with RAM (the host's or anyone's), atoll's own memory, and MMIO atoll
/// keeps (the ECAM window, interrupt controllers). atoll must never map the mailbox over those
/// or intercept there: the host is buggy or hostile, and a BAR written over atoll's memory
/// must not make atoll put its mailbox there.
pub fn placement_ok(
    base: GuestPhysAddr,
    size: u64,
    forbidden: impl Fn(GuestPhysAddr, u64) -> bool,
) -> bool {
    // A window may end exactly at the top of the space: its last byte must exist.
    base.as_u64() != 0
        && size != 0
        && base.checked_add(size - 1).is_some()
        && !forbidden(base, size)
}

/// The control function: configuration space, BAR0's registers, the doorbell set and where its
/// windows decode.
///
/// **Configuration space.** Type 0 header, [`abi::VENDOR_ID`]:[`abi::DEVICE_ID`], revision
/// [`REVISION`], class [`abi::CLASS_CODE`], subsystem ids the same as vendor and device (the
/// device is atoll's own). Only the command register's memory-space bit is writable (no I/O
/// BARs, no DMA, no interrupts); the status register reads 0 (no capability list, no error
/// ever raised); the capabilities pointer and the interrupt pin read 0. BAR0 and BAR2 are
/// 32-bit non-prefetchable memory BARs at address 0 until the host places them; sizing (write
/// all ones, read the size mask) and relocation behave as PCI 3.0 §6.2.5.1 says because the
/// BAR write masks hold only the address bits above the size. Cache line size and interrupt
/// line are the usual scratch registers.
///
/// **Registers** (BAR0; offsets and sizes of 1, 2, 4 or 8 bytes, as the exit decodes them).
/// BAR0 reads as memory holding the 32-bit little-endian registers at their offsets and zeros
/// elsewhere, so an aligned dword read returns the register and a narrower, misaligned or
/// 8-byte read returns those bytes (an 8-byte read at 0 is MAGIC | VERSION << 32). DOORBELL
/// reads 0; REFUSED reads [`Self::refused`]. Writes: a dword write at exactly DOORBELL rings the
/// slot it names; any other write touching DOORBELL's bytes (narrow, misaligned, 8-byte) is a
/// doorbell write atoll refuses, counted in REFUSED; every other write is ignored and counted
/// ([`ControlStats::ignored_writes`]).
///
/// **Doorbells.** At most one pending doorbell per slot: a set of [`SLOTS`] bits. A slot index
/// ≥ SLOTS or a slot already pending is refused (counted in REFUSED). atoll drains the set with
/// [`Self::take_doorbells`]; it checks each slot's state word itself (the model cannot see the
/// mailbox) and counts a slot that was not SUBMITTED with [`Self::note_refused`].
#[derive(Clone, Debug)]
pub struct ControlDevice {
    config: ConfigSpace,
    pending: u32,
    refused: u32,
    stats: ControlStats,
    /// Where each window decodes as last reported (index: [`Window::slot`]).
    reported: [Option<GuestPhysAddr>; 2],
    /// The address last refused for each window, so a refusal is counted once.
    refused_at: [Option<u64>; 2],
    /// Bytes of BAR2 (the mailbox, or a channel window).
    window_size: u64,
    /// The MSI capability's offset (channel functions).
    msi_cap: Option<u8>,
    /// The function number reported in [`MappingChange::function`].
    function: u8,
}

/// The MSI capability's id (PCI 3.0 §6.8.1).
const MSI_CAP_ID: u8 = 0x05;
/// Message control: 64-bit address capable (PCI 3.0 §6.8.1.3).
const MSI_64BIT: u16 = 1 << 7;
/// Message control: MSI enable.
const MSI_ENABLE: u16 = 1;

/// An MSI capability's state as the host programmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiState {
    /// MSI enable.
    pub enabled: bool,
    /// Message address (64 bits).
    pub address: u64,
    /// Message data.
    pub data: u16,
}

impl Default for ControlDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlDevice {
    /// The function as firmware leaves it: BARs unassigned, decoding off, nothing pending.
    pub fn new() -> Self {
        Self::build(abi::DEVICE_ID, MAILBOX_SIZE, 0)
    }

    fn build(device_id: u16, window_size: u64, function: u8) -> Self {
        let mut config = ConfigSpace::new(&Header {
            vendor_id: abi::VENDOR_ID,
            device_id,
            revision: REVISION,
            class: ClassCode {
                class: abi::CLASS_CODE[0],
                subclass: abi::CLASS_CODE[1],
                prog_if: abi::CLASS_CODE[2],
            },
            subsystem_vendor_id: abi::VENDOR_ID,
            subsystem_id: device_id,
            interrupt_pin: None,
        });
        let memory = BarKind::Memory32 {
            prefetchable: false,
        };
        // Constant, valid declarations (sizes checked at compile time above, distinct
        // in-range indices, in-range registers): these cannot fail.
        let _ = config.add_bar(
            REGISTERS_BAR,
            Bar {
                kind: memory,
                size: BAR0_SIZE,
            },
        );
        let _ = config.add_bar(
            MAILBOX_BAR_INDEX,
            Bar {
                kind: memory,
                size: window_size,
            },
        );
        let _ = config.init_register(
            config::reg::COMMAND,
            &[0, 0],
            &config::command::MEMORY.to_le_bytes(),
            &[],
        );
        // Nothing ever raises a status bit, so no write-one-to-clear bits either.
        let _ = config.init_register(config::reg::STATUS, &[0, 0], &[], &[]);
        Self {
            config,
            pending: 0,
            refused: 0,
            stats: ControlStats::default(),
            reported: [None, None],
            refused_at: [None, None],
            window_size,
            msi_cap: None,
            function,
        }
    }

    /// Channel function `function` (1..): the same header and BAR0 with
    /// [`atoll_abi::channel::DEVICE_ID`], BAR2 the channel window
    /// ([`atoll_abi::channel::WINDOW_SIZE`]), and an MSI capability with one vector and a
    /// 64-bit address (PCI 3.0 §6.8.1) — only its enable bit, address and data are writable.
    pub fn channel(function: u8) -> Self {
        let mut d = Self::build(
            atoll_abi::channel::DEVICE_ID,
            atoll_abi::channel::WINDOW_SIZE,
            function,
        );
        // INTx too, for hosts whose kernel has no vfio no-IOMMU mode (uio_pci_generic): pin
        // A, the command register's interrupt-disable bit writable (PCI 3.0 §6.2.2); the
        // status register's interrupt bit is atoll's to report at read time
        // (`HostConfig::channel_intx`).
        let _ = d.config.init_register(
            config::reg::INTERRUPT_PIN,
            &[super::config::IntxPin::A as u8],
            &[],
            &[],
        );
        let _ = d.config.init_register(
            config::reg::COMMAND,
            &[0, 0],
            &(config::command::MEMORY | config::command::INTX_DISABLE).to_le_bytes(),
            &[],
        );
        // Control, address low, address high, data, reserved.
        let mut body = [0u8; 14];
        body[..2].copy_from_slice(&MSI_64BIT.to_le_bytes());
        let mut mask = [0u8; 14];
        mask[..2].copy_from_slice(&MSI_ENABLE.to_le_bytes());
        mask[2..6].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
        mask[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        mask[10..12].copy_from_slice(&u16::MAX.to_le_bytes());
        d.msi_cap = d.config.add_capability(MSI_CAP_ID, &body, &mask).ok();
        d
    }

    /// Marks function 0 as one of several (header type bit 7), so the host probes 1–7.
    pub fn set_multi_function(&mut self) {
        let _ = self.config.init_register(
            config::reg::HEADER_TYPE,
            &[super::bus::MULTI_FUNCTION],
            &[],
            &[],
        );
    }

    /// The MSI capability's state (channel functions; the control function has none).
    pub fn msi(&self) -> Option<MsiState> {
        let at = u16::from(self.msi_cap?);
        let control = self.config.u16_at(at + 2);
        let lo = u64::from(self.config.u32_at(at + 4));
        let hi = u64::from(self.config.u32_at(at + 8));
        Some(MsiState {
            enabled: control & MSI_ENABLE != 0,
            address: hi << 32 | lo,
            data: self.config.u16_at(at + 12),
        })
    }

    /// Whether the host masked the function's INTx (command bit 10).
    pub fn intx_disabled(&self) -> bool {
        self.config.command() & config::command::INTX_DISABLE != 0
    }

    /// Bytes `window` decodes.
    pub fn window_size(&self, window: Window) -> u64 {
        match window {
            Window::Registers => BAR0_SIZE,
            Window::Mailbox => self.window_size,
        }
    }

    /// The counters.
    pub fn stats(&self) -> ControlStats {
        self.stats
    }

    /// The REFUSED register: doorbell writes refused (saturating, so it never appears to
    /// reset).
    pub fn refused(&self) -> u32 {
        self.refused
    }

    /// Counts one refused doorbell in REFUSED: for atoll, when a rung slot's state word was
    /// not SUBMITTED.
    pub fn note_refused(&mut self) {
        self.refused = self.refused.saturating_add(1);
    }

    /// The pending doorbells, without taking them.
    pub fn pending(&self) -> Doorbells {
        Doorbells(self.pending)
    }

    /// Takes the pending doorbells (the set is empty afterwards; a slot may ring again).
    pub fn take_doorbells(&mut self) -> Doorbells {
        Doorbells(core::mem::take(&mut self.pending))
    }

    /// Rings slot `slot`: queued unless out of range or already pending.
    fn ring(&mut self, slot: u32) {
        let bit = 1u32.checked_shl(slot).unwrap_or(0) & SLOT_MASK;
        if bit == 0 || self.pending & bit != 0 {
            self.note_refused();
            return;
        }
        self.pending |= bit;
        self.stats.doorbells += 1;
    }

    /// The byte of BAR0 at `offset` as a read sees it; `None` past BAR0.
    fn register_byte(&self, offset: u64) -> Option<u8> {
        if offset >= BAR0_SIZE {
            return None;
        }
        let value = match offset & !3 {
            reg::MAGIC => reg::MAGIC_VALUE,
            reg::VERSION => u32::from(abi::VERSION),
            reg::SLOTS => SLOTS,
            reg::SLOT_SIZE => abi::SLOT_SIZE,
            reg::REFUSED => self.refused,
            // DOORBELL is write-only and reads 0, as do offsets with no register.
            _ => 0,
        };
        Some(value.to_le_bytes()[(offset & 3) as usize])
    }

    /// A read of `data.len()` bytes at `offset` into BAR0. Sizes other than 1, 2, 4 and 8
    /// read all ones; bytes past BAR0 read all ones (nothing decodes there); both are counted.
    pub fn register_read(&mut self, offset: u64, data: &mut [u8]) {
        if !matches!(data.len(), 1 | 2 | 4 | 8) {
            data.fill(0xff);
            self.stats.bad_accesses += 1;
            return;
        }
        let mut past_end = false;
        for (i, b) in data.iter_mut().enumerate() {
            match offset
                .checked_add(i as u64)
                .and_then(|o| self.register_byte(o))
            {
                Some(v) => *b = v,
                None => {
                    *b = 0xff;
                    past_end = true;
                }
            }
        }
        if past_end {
            self.stats.bad_accesses += 1;
        }
    }

    /// A write of `data` at `offset` into BAR0 (see the type's documentation).
    pub fn register_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let Some(end) = offset.checked_add(len) else {
            self.stats.bad_accesses += 1;
            return;
        };
        if !matches!(len, 1 | 2 | 4 | 8) || end > BAR0_SIZE {
            self.stats.bad_accesses += 1;
            return;
        }
        if offset < reg::DOORBELL + 4 && end > reg::DOORBELL {
            match <[u8; 4]>::try_from(data) {
                Ok(v) if offset == reg::DOORBELL => self.ring(u32::from_le_bytes(v)),
                _ => self.note_refused(),
            }
            return;
        }
        self.stats.ignored_writes += 1;
    }

    /// Where `window` decodes as last reported.
    pub fn mapped(&self, window: Window) -> Option<GuestPhysAddr> {
        self.reported[window.slot()]
    }

    /// The offset into BAR0 of an access of `len` bytes at `addr`, if it lies inside the
    /// registers window as last reported (for the exit handler of that page).
    pub fn registers_offset(&self, addr: GuestPhysAddr, len: u64) -> Option<u64> {
        let base = self.mapped(Window::Registers)?.as_u64();
        let offset = addr.as_u64().checked_sub(base)?;
        (offset.checked_add(len)? <= BAR0_SIZE).then_some(offset)
    }

    /// Where `window` should decode now, and the refused address if its placement is refused.
    fn wanted(
        &self,
        window: Window,
        forbidden: &impl Fn(GuestPhysAddr, u64) -> bool,
    ) -> (Option<GuestPhysAddr>, Option<u64>) {
        let Some(region) = self.config.decoded_bar(window.bar()) else {
            return (None, None);
        };
        // The address a 32-bit BAR holds after the all-ones probe: every address bit set.
        // Linux turns decoding off while it probes, but a careless host might not.
        let sizing = (1u64 << 32) - region.size;
        if region.base == 0 || region.base == sizing {
            return (None, None);
        }
        let base = GuestPhysAddr::new(region.base);
        if placement_ok(base, region.size, forbidden) {
            (Some(base), None)
        } else {
            (None, Some(region.base))
        }
    }

    /// Recomputes where the windows decode and reports what changed since the last report.
    /// Call after every configuration write (the [`HostConfig`] write paths do). A window
    /// decodes when memory decoding is on and its BAR holds an assigned address (not 0, not the
    /// sizing pattern) that [`placement_ok`] accepts with `forbidden`; if the two windows
    /// would overlap, neither decodes (as [`BarMap`](super::bars::BarMap) treats a conflict).
    pub fn update_mappings(
        &mut self,
        forbidden: impl Fn(GuestPhysAddr, u64) -> bool,
    ) -> MappingChanges {
        let windows = [Window::Registers, Window::Mailbox];
        let mut want = [None, None];
        let mut refused = [None, None];
        for w in windows {
            (want[w.slot()], refused[w.slot()]) = self.wanted(w, &forbidden);
        }
        if let [Some(a), Some(b)] = want {
            // Inclusive ends: `placement_ok` checked that each last byte exists.
            let (a, b) = (a.as_u64(), b.as_u64());
            if a <= b + (self.window_size - 1) && b <= a + (BAR0_SIZE - 1) {
                refused = [Some(a), Some(b)];
                want = [None, None];
            }
        }
        for (now, before) in refused.iter().zip(self.refused_at.iter_mut()) {
            if now.is_some() && now != before {
                self.stats.placements_refused += 1;
            }
            *before = *now;
        }
        let mut changes = MappingChanges::NONE;
        for w in windows {
            let i = w.slot();
            if want[i] != self.reported[i] {
                changes.push(MappingChange {
                    function: self.function,
                    window: w,
                    from: self.reported[i],
                    to: want[i],
                });
                self.reported[i] = want[i];
            }
        }
        changes
    }
}

impl PciDevice for ControlDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    /// BAR0 is the registers; the mailbox is memory atoll maps, so an access to it that exits
    /// (it was not mapped: its placement was refused) reads all ones, as nothing decodes it.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == REGISTERS_BAR {
            self.register_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == REGISTERS_BAR {
            self.register_write(offset, data);
        }
    }
}

/// The first device number on bus 0, from 1 (device 0 is the host bridge's), whose function 0
/// does not answer: `vendor(device)` is the vendor id its function 0 reads on the hardware
/// (0xFFFF when nothing answers, PCI 3.0 §6.2.1). `None` if every slot is taken.
pub fn pick_device(mut vendor: impl FnMut(u8) -> u16) -> Option<u8> {
    (1..32).find(|&d| vendor(d) == 0xffff)
}

/// The address of the control function's 4 KiB ECAM page (bus 0, `device`, function 0) in an
/// ECAM window at `base` whose first bus is `start_bus` (the host's MCFG entry for segment 0);
/// atoll leaves this page unmapped so the host's accesses exit. `None` if the window does not
/// cover bus 0, the device number is not 0–31, or the page would pass the top of the space.
pub fn ecam_page(base: GuestPhysAddr, start_bus: u8, device: u8) -> Option<GuestPhysAddr> {
    if start_bus != 0 || device >= 32 {
        return None;
    }
    base.checked_add(u64::from(device) << 15)
        .filter(|p| p.checked_add(0xfff).is_some())
}

/// An access atoll performs on the hardware for the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassThrough {
    /// If set, first write this value to port 0xCF8 as a dword (the host's latch: atoll's own
    /// configuration accesses may have changed the hardware's register since the host wrote
    /// it). The two accesses must not be separated by another core's mechanism #1 access.
    pub latch: Option<u32>,
    /// Then do the host's access at this port …
    pub port: u16,
    /// … of this many bytes (the data is the host's, and a read's result goes to the host).
    pub len: u8,
}

/// What atoll does with a host's configuration access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAccess {
    /// atoll answered it: a read's bytes are filled in; a write is applied, and the changes are
    /// where the control device's windows now decode (empty for reads and most writes).
    Emulated(MappingChanges),
    /// atoll refuses it: a read's bytes are all ones, a write is dropped. Accesses no hardware
    /// decodes as one register: straddling 0xCFB/0xCFC or past 0xCFF, sizes other than 1, 2,
    /// 4 (8-byte ECAM accesses), crossing a dword.
    Refused,
    /// Not the control device's: perform it on the hardware as described.
    PassThrough(PassThrough),
    /// An ECAM access outside the control function's page: not the control device's (atoll
    /// should not have intercepted it; it may perform it on the hardware unchanged).
    NotControl,
}

/// What the host's configuration accesses reach: the control function on bus 0 at the device
/// number chosen at construction, everything else on the hardware.
///
/// **Mechanism #1** (ports 0xCF8–0xCFF, all intercepted). A dword write at 0xCF8 is the address
/// latch: atoll keeps it (one per host, as the hardware register is shared by all cores) and
/// writes nothing. A dword read at 0xCF8 is passed through after replaying the latch, so the
/// host reads the hardware's own masking of the value. Other accesses within 0xCF8–0xCFB are
/// not the address register on a PC (0xCF9 is the chipset's reset control): passed through
/// untouched. A data access within 0xCFC–0xCFF reaches the addressed register's bytes; when
/// the latch's enable bit (31) is set and it names bus 0, the control device's number,
/// function 0, the model answers (register = bits 27:24 as bits 11:8, AMD's extended
/// configuration access, and bits 7:2, plus the port's byte); functions 1..=n are the channel
/// functions ([`ControlDevice::channel`]), and the device's other functions read all ones and
/// drop writes; every other data access is
/// passed through after replaying the latch. An access straddling 0xCFB/0xCFC or running past
/// 0xCFF, or of a size other than 1, 2 or 4, is refused.
///
/// **ECAM.** Accesses inside the control function's page ([`ecam_page`]) or the channel
/// functions' pages after it ([`HostConfig::ecam_len`]) reach that function's 4 KiB
/// space at the page offset (offsets from 0x100 read 0 and ignore writes: no extended
/// capabilities); 1, 2 or 4 bytes inside one dword, else refused.
///
/// Every write that reaches the model returns [`ControlDevice::update_mappings`]'s changes.
#[derive(Clone, Debug)]
pub struct HostConfig {
    latch: u32,
    devfn: DevFn,
    ecam_page: Option<GuestPhysAddr>,
    control: ControlDevice,
    /// The channel functions, 1.. (`channels[i]` is function `i + 1`).
    channels: alloc::vec::Vec<ControlDevice>,
    refused: u64,
}

impl HostConfig {
    /// Register bits 11:8 in the latch (AMD's extended configuration access).
    const EXTENDED_REGISTER: u32 = 0x0f00_0000;

    /// The control device at bus 0, `device` (1–31), function 0; `ecam` is the host's segment 0
    /// ECAM window (base and first bus), if it has one.
    ///
    /// `channels` channel functions (at most [`atoll_abi::channel::MAX_CHANNELS`]) follow as
    /// functions 1.. of the same device; function 0 then says it is multi-function.
    pub fn new(device: u8, ecam: Option<(GuestPhysAddr, u8)>, channels: u8) -> Option<Self> {
        if device == 0 || usize::from(channels) > atoll_abi::channel::MAX_CHANNELS {
            return None;
        }
        let devfn = DevFn::new(device, 0)?;
        let mut control = ControlDevice::new();
        if channels > 0 {
            control.set_multi_function();
        }
        Some(Self {
            latch: 0,
            devfn,
            ecam_page: ecam.and_then(|(base, start)| ecam_page(base, start, device)),
            control,
            channels: (1..=channels).map(ControlDevice::channel).collect(),
            refused: 0,
        })
    }

    /// How many channel functions follow the control function.
    pub fn channels(&self) -> u8 {
        self.channels.len() as u8
    }

    /// Function `function` of the device: 0 the control function, 1.. a channel function.
    pub fn function(&self, function: u8) -> Option<&ControlDevice> {
        match function {
            0 => Some(&self.control),
            f => self.channels.get(usize::from(f) - 1),
        }
    }

    fn function_mut(&mut self, function: u8) -> Option<&mut ControlDevice> {
        match function {
            0 => Some(&mut self.control),
            f => self.channels.get_mut(usize::from(f) - 1),
        }
    }

    /// The channel function (1..) and configuration register a mechanism #1 data access at
    /// `port` reaches now, if any (for atoll to report the status register's interrupt bit).
    pub fn port_target(&self, port: u16) -> Option<(u8, u16)> {
        match self.data_target(port) {
            Some(Ok((f, register))) if f > 0 => Some((f, register)),
            _ => None,
        }
    }

    /// The channel function (1..) and register an ECAM access at `addr` reaches, if any.
    pub fn ecam_target(&self, addr: GuestPhysAddr) -> Option<(u8, u16)> {
        self.ecam_offset(addr).filter(|(f, _)| *f > 0)
    }

    /// Bytes of ECAM from [`Self::ecam_page`] that atoll keeps: one page per function it
    /// shows.
    pub fn ecam_len(&self) -> u64 {
        (1 + self.channels.len() as u64) * 4096
    }

    /// The control device's device number on bus 0.
    pub fn device(&self) -> u8 {
        self.devfn.device()
    }

    /// The ECAM page atoll leaves unmapped, if the host has ECAM over bus 0.
    pub fn ecam_page(&self) -> Option<GuestPhysAddr> {
        self.ecam_page
    }

    /// The host's address latch as it wrote it.
    pub fn latch(&self) -> u32 {
        self.latch
    }

    /// The control device.
    pub fn control(&self) -> &ControlDevice {
        &self.control
    }

    /// The control device, mutable (register accesses, doorbells).
    pub fn control_mut(&mut self) -> &mut ControlDevice {
        &mut self.control
    }

    /// Accesses refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn refuse(&mut self) -> HostAccess {
        self.refused += 1;
        HostAccess::Refused
    }

    /// Where a data access of `len` bytes at `port` goes: the control function's register, or
    /// `None` for the hardware. Only called for accesses inside 0xCFC–0xCFF.
    fn data_target(&self, port: u16) -> Option<Result<(u8, u16), ()>> {
        let l = self.latch;
        let bus = (l >> 16) as u8;
        let devfn = DevFn::from_bits((l >> 8) as u8);
        if l & ConfigAddress::ENABLE == 0 || bus != 0 || devfn.device() != self.devfn.device() {
            return None;
        }
        if usize::from(devfn.function()) > self.channels.len() {
            return Some(Err(()));
        }
        let register =
            ((l & Self::EXTENDED_REGISTER) >> 16) as u16 | (l & 0xfc) as u16 | (port & 3);
        Some(Ok((devfn.function(), register)))
    }

    /// Classifies a port access: `Err` with the answer for non-data accesses, `Ok` for a data
    /// access inside the window.
    fn classify(&mut self, port: u16, len: usize) -> Result<(), HostAccess> {
        let ports = CONFIG_ADDRESS_PORT..CONFIG_ADDRESS_PORT + CONFIG_PORTS;
        if !ports.contains(&port) {
            // Not mechanism #1 at all (atoll should not have routed it here).
            return Err(HostAccess::PassThrough(PassThrough {
                latch: None,
                port,
                len: len as u8,
            }));
        }
        if !matches!(len, 1 | 2 | 4) {
            return Err(self.refuse());
        }
        let end = port + len as u16;
        if port < CONFIG_DATA_PORT {
            if end > CONFIG_DATA_PORT {
                return Err(self.refuse());
            }
            return Err(HostAccess::PassThrough(PassThrough {
                latch: None,
                port,
                len: len as u8,
            }));
        }
        if end > CONFIG_ADDRESS_PORT + CONFIG_PORTS {
            return Err(self.refuse());
        }
        Ok(())
    }

    /// An `in` of `data.len()` bytes at `port` (0xCF8–0xCFF).
    pub fn io_read(&mut self, port: u16, data: &mut [u8]) -> HostAccess {
        if port == CONFIG_ADDRESS_PORT && data.len() == 4 {
            return HostAccess::PassThrough(PassThrough {
                latch: Some(self.latch),
                port,
                len: 4,
            });
        }
        if let Err(answer) = self.classify(port, data.len()) {
            if answer == HostAccess::Refused {
                data.fill(0xff);
            }
            return answer;
        }
        match self.data_target(port) {
            Some(Ok((f, register))) => {
                match self.function_mut(f) {
                    Some(d) => d.config_read(register, data),
                    None => data.fill(0xff),
                }
                HostAccess::Emulated(MappingChanges::NONE)
            }
            Some(Err(())) => {
                data.fill(0xff);
                HostAccess::Emulated(MappingChanges::NONE)
            }
            None => HostAccess::PassThrough(PassThrough {
                latch: Some(self.latch),
                port,
                len: data.len() as u8,
            }),
        }
    }

    /// An `out` of `data` at `port` (0xCF8–0xCFF); `forbidden` is [`placement_ok`]'s test.
    pub fn io_write(
        &mut self,
        port: u16,
        data: &[u8],
        forbidden: impl Fn(GuestPhysAddr, u64) -> bool,
    ) -> HostAccess {
        if port == CONFIG_ADDRESS_PORT {
            if let Ok(v) = <[u8; 4]>::try_from(data) {
                self.latch = u32::from_le_bytes(v);
                return HostAccess::Emulated(MappingChanges::NONE);
            }
        }
        if let Err(answer) = self.classify(port, data.len()) {
            return answer;
        }
        match self.data_target(port) {
            Some(Ok((f, register))) => self.control_config_write(f, register, data, forbidden),
            Some(Err(())) => HostAccess::Emulated(MappingChanges::NONE),
            None => HostAccess::PassThrough(PassThrough {
                latch: Some(self.latch),
                port,
                len: data.len() as u8,
            }),
        }
    }

    fn control_config_write(
        &mut self,
        function: u8,
        register: u16,
        data: &[u8],
        forbidden: impl Fn(GuestPhysAddr, u64) -> bool,
    ) -> HostAccess {
        let Some(d) = self.function_mut(function) else {
            return HostAccess::Emulated(MappingChanges::NONE);
        };
        // The effect itself is not needed: the windows are recomputed from the space.
        let _: Option<ConfigEffect> = d.config_write(register, data);
        HostAccess::Emulated(d.update_mappings(forbidden))
    }

    /// The function and offset into its ECAM page of an access at `addr`.
    fn ecam_offset(&self, addr: GuestPhysAddr) -> Option<(u8, u16)> {
        let offset = addr.as_u64().checked_sub(self.ecam_page?.as_u64())?;
        (offset < self.ecam_len()).then_some(((offset >> 12) as u8, (offset & 0xfff) as u16))
    }

    /// A read of `data.len()` bytes at `addr` in the ECAM window.
    pub fn ecam_read(&mut self, addr: GuestPhysAddr, data: &mut [u8]) -> HostAccess {
        let Some((f, offset)) = self.ecam_offset(addr) else {
            return HostAccess::NotControl;
        };
        if check_access(offset, data.len()).is_err() {
            data.fill(0xff);
            return self.refuse();
        }
        match self.function_mut(f) {
            Some(d) => d.config_read(offset, data),
            None => data.fill(0xff),
        }
        HostAccess::Emulated(MappingChanges::NONE)
    }

    /// A write of `data` at `addr` in the ECAM window; `forbidden` is [`placement_ok`]'s test.
    pub fn ecam_write(
        &mut self,
        addr: GuestPhysAddr,
        data: &[u8],
        forbidden: impl Fn(GuestPhysAddr, u64) -> bool,
    ) -> HostAccess {
        let Some((f, offset)) = self.ecam_offset(addr) else {
            return HostAccess::NotControl;
        };
        if check_access(offset, data.len()).is_err() {
            return self.refuse();
        }
        self.control_config_write(f, offset, data, forbidden)
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{command, reg as cfg, status};
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    const ECAM_BASE: u64 = 0xe000_0000;
    const DEVICE: u8 = 5;
    const DATA: u16 = CONFIG_DATA_PORT;

    /// The host's RAM in these tests: below 3 GiB and 4–8 GiB; atoll's own memory is inside.
    fn ram(base: GuestPhysAddr, size: u64) -> bool {
        let (s, e) = (base.as_u64(), base.as_u64() + size);
        [(0, 0xc000_0000), (1 << 32, 2 << 32)]
            .iter()
            .any(|&(a, b)| s < b && a < e)
    }

    fn host() -> HostConfig {
        HostConfig::new(DEVICE, Some((GuestPhysAddr::new(ECAM_BASE), 0)), 0).unwrap()
    }

    fn latch(bus: u32, dev: u32, func: u32, register: u32) -> u32 {
        1 << 31 | bus << 16 | dev << 11 | func << 8 | register
    }

    fn select(h: &mut HostConfig, bus: u32, dev: u32, func: u32, register: u32) {
        let l = latch(bus, dev, func, register);
        assert_eq!(
            h.io_write(CONFIG_ADDRESS_PORT, &l.to_le_bytes(), ram),
            HostAccess::Emulated(MappingChanges::NONE)
        );
        assert_eq!(h.latch(), l);
    }

    /// A dword of the control function's space through 0xCF8/0xCFC.
    fn cf8_read(h: &mut HostConfig, register: u16) -> u32 {
        select(h, 0, u32::from(DEVICE), 0, u32::from(register));
        let mut b = [0u8; 4];
        assert_eq!(
            h.io_read(DATA, &mut b),
            HostAccess::Emulated(MappingChanges::NONE)
        );
        u32::from_le_bytes(b)
    }

    fn cf8_write(h: &mut HostConfig, register: u16, data: &[u8]) -> Vec<MappingChange> {
        select(h, 0, u32::from(DEVICE), 0, u32::from(register & !3));
        match h.io_write(DATA + (register & 3), data, ram) {
            HostAccess::Emulated(c) => c.collect(),
            other => panic!("{other:?}"),
        }
    }

    fn page() -> u64 {
        ECAM_BASE + (u64::from(DEVICE) << 15)
    }

    fn ecam_read(h: &mut HostConfig, offset: u64, len: usize) -> (HostAccess, u64) {
        let mut b = [0u8; 8];
        let a = h.ecam_read(GuestPhysAddr::new(page() + offset), &mut b[..len]);
        (a, u64::from_le_bytes(b))
    }

    fn ecam_dword(h: &mut HostConfig, offset: u16) -> u32 {
        let (a, v) = ecam_read(h, u64::from(offset), 4);
        assert_eq!(a, HostAccess::Emulated(MappingChanges::NONE));
        v as u32
    }

    fn ecam_write(h: &mut HostConfig, offset: u16, v: u32) -> Vec<MappingChange> {
        let addr = GuestPhysAddr::new(page() + u64::from(offset));
        match h.ecam_write(addr, &v.to_le_bytes(), ram) {
            HostAccess::Emulated(c) => c.collect(),
            other => panic!("{other:?}"),
        }
    }

    fn gpa(v: u64) -> Option<GuestPhysAddr> {
        Some(GuestPhysAddr::new(v))
    }

    fn change(window: Window, from: Option<u64>, to: Option<u64>) -> MappingChange {
        MappingChange {
            function: 0,
            window,
            from: from.map(GuestPhysAddr::new),
            to: to.map(GuestPhysAddr::new),
        }
    }

    fn bar_offset(index: u8) -> u16 {
        cfg::BAR0 + 4 * u16::from(index)
    }

    #[test]
    fn identity_class_and_header_read_the_same_through_cf8_and_ecam() {
        let mut h = host();
        let ids = u32::from(abi::DEVICE_ID) << 16 | u32::from(abi::VENDOR_ID);
        let class = u32::from_le_bytes([
            REVISION,
            abi::CLASS_CODE[2],
            abi::CLASS_CODE[1],
            abi::CLASS_CODE[0],
        ]);
        assert_eq!(cf8_read(&mut h, cfg::VENDOR_ID), ids);
        assert_eq!(ecam_dword(&mut h, cfg::VENDOR_ID), ids);
        assert_eq!(cf8_read(&mut h, cfg::REVISION), class);
        assert_eq!(ecam_dword(&mut h, cfg::REVISION), class);
        assert_eq!(REVISION, 1);
        // Header type 0, single function; no capabilities; no interrupt pin; status 0.
        assert_eq!(cf8_read(&mut h, cfg::CACHE_LINE_SIZE) >> 16 & 0xff, 0);
        assert_eq!(cf8_read(&mut h, cfg::CAPABILITIES), 0);
        assert_eq!(cf8_read(&mut h, cfg::INTERRUPT_LINE) >> 8 & 0xff, 0);
        let status_word = cf8_read(&mut h, cfg::COMMAND) >> 16;
        assert_eq!(status_word & u32::from(status::CAPABILITY_LIST), 0);
        assert_eq!(status_word, 0);
        assert_eq!(
            cf8_read(&mut h, cfg::SUBSYSTEM_VENDOR_ID),
            ids,
            "subsystem ids are the device's own"
        );
        // Every dword of the legacy space reads the same through both paths.
        for offset in (0..config::LEGACY_SIZE).step_by(4) {
            assert_eq!(
                cf8_read(&mut h, offset),
                ecam_dword(&mut h, offset),
                "{offset:#x}"
            );
        }
        // Word and byte reads through the data window's other ports.
        select(&mut h, 0, u32::from(DEVICE), 0, 0);
        for (port, len, expect) in [
            (DATA + 1, 1, ids >> 8 & 0xff),
            (DATA + 2, 2, ids >> 16),
            (DATA + 3, 1, ids >> 24),
            (DATA + 1, 2, ids >> 8 & 0xffff),
        ] {
            let mut b = [0u8; 4];
            assert_eq!(
                h.io_read(port, &mut b[..len]),
                HostAccess::Emulated(MappingChanges::NONE)
            );
            assert_eq!(u32::from_le_bytes(b), expect, "{port:#x}/{len}");
        }
    }

    #[test]
    fn only_the_memory_bit_of_command_is_writable_and_status_stays_zero() {
        let mut h = host();
        cf8_write(&mut h, cfg::COMMAND, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(cf8_read(&mut h, cfg::COMMAND), u32::from(command::MEMORY));
        // A byte write through 0xCFD (the command's high byte) changes nothing there.
        cf8_write(&mut h, cfg::COMMAND + 1, &[0xff]);
        assert_eq!(cf8_read(&mut h, cfg::COMMAND), u32::from(command::MEMORY));
        cf8_write(&mut h, cfg::COMMAND, &[0]);
        assert_eq!(cf8_read(&mut h, cfg::COMMAND), 0);
        // Scratch registers stay writable; identity does not.
        cf8_write(&mut h, cfg::INTERRUPT_LINE, &[0x0b]);
        assert_eq!(cf8_read(&mut h, cfg::INTERRUPT_LINE), 0x0b);
        let ids = cf8_read(&mut h, 0);
        cf8_write(&mut h, 0, &[0; 4]);
        cf8_write(&mut h, cfg::CAPABILITIES, &[0x40]);
        assert_eq!(cf8_read(&mut h, 0), ids);
        assert_eq!(cf8_read(&mut h, cfg::CAPABILITIES), 0);
    }

    #[test]
    fn bars_size_and_relocate_as_the_spec_says() {
        let mut h = host();
        for (index, size) in [
            (REGISTERS_BAR, BAR0_SIZE),
            (MAILBOX_BAR_INDEX, MAILBOX_SIZE),
        ] {
            let at = bar_offset(index);
            // Unassigned: address 0, memory, 32-bit (type 00), not prefetchable.
            assert_eq!(cf8_read(&mut h, at), 0);
            // The probe: all ones, read the mask, compute the size as an OS does.
            cf8_write(&mut h, at, &u32::MAX.to_le_bytes());
            let probe = cf8_read(&mut h, at);
            assert_eq!(probe & 0xf, 0, "type bits");
            assert_eq!(u64::from(!(probe & !0xf)) + 1, size, "bar {index}");
            assert_eq!(ecam_dword(&mut h, at), probe);
            // Relocation: an aligned address sticks; bits below the size do not.
            let base = 0xd000_0000u32;
            cf8_write(&mut h, at, &(base | (size as u32 - 1)).to_le_bytes());
            assert_eq!(cf8_read(&mut h, at), base);
            ecam_write(&mut h, at, base + size as u32);
            assert_eq!(cf8_read(&mut h, at), base + size as u32);
            // Byte-wise relocation through 0xCFE/0xCFF.
            cf8_write(&mut h, at + 3, &[0xc0]);
            cf8_write(&mut h, at + 2, &[0x10]);
            let old = base + size as u32;
            assert_eq!(
                cf8_read(&mut h, at),
                (old & 0xffff | 0xc010_0000) & !(size as u32 - 1)
            );
        }
        // The other BAR slots and the ROM BAR are not implemented.
        for at in [1, 3, 4, 5].map(bar_offset).into_iter().chain([cfg::ROM]) {
            cf8_write(&mut h, at, &u32::MAX.to_le_bytes());
            assert_eq!(cf8_read(&mut h, at), 0, "{at:#x}");
        }
    }

    #[test]
    fn windows_map_only_while_decoded_at_an_assigned_place() {
        let mut h = host();
        let (r, m) = (0xfe00_0000u64, 0xfd00_0000u64);
        // Placing the BARs with decoding off maps nothing.
        assert!(cf8_write(&mut h, bar_offset(0), &(r as u32).to_le_bytes()).is_empty());
        assert!(cf8_write(&mut h, bar_offset(2), &(m as u32).to_le_bytes()).is_empty());
        // Decoding on: both windows appear.
        assert_eq!(
            cf8_write(&mut h, cfg::COMMAND, &command::MEMORY.to_le_bytes()),
            [
                change(Window::Registers, None, Some(r)),
                change(Window::Mailbox, None, Some(m))
            ]
        );
        assert_eq!(h.control().mapped(Window::Registers), gpa(r));
        assert_eq!(h.control().mapped(Window::Mailbox), gpa(m));
        // Writing the same value again changes nothing.
        assert!(cf8_write(&mut h, cfg::COMMAND, &command::MEMORY.to_le_bytes()).is_empty());
        assert!(ecam_write(&mut h, bar_offset(0), r as u32).is_empty());
        // Moved while decoding.
        let r2 = 0xfe01_0000u64;
        assert_eq!(
            ecam_write(&mut h, bar_offset(0), r2 as u32),
            [change(Window::Registers, Some(r), Some(r2))]
        );
        // Sizing while decoding (a careless host): the all-ones pattern is not mapped, and the
        // restored address is.
        assert_eq!(
            ecam_write(&mut h, bar_offset(2), u32::MAX),
            [change(Window::Mailbox, Some(m), None)]
        );
        assert_eq!(
            ecam_write(&mut h, bar_offset(2), m as u32),
            [change(Window::Mailbox, None, Some(m))]
        );
        // Unassigned (0) while decoding: not mapped.
        assert_eq!(
            ecam_write(&mut h, bar_offset(0), 0),
            [change(Window::Registers, Some(r2), None)]
        );
        assert_eq!(
            ecam_write(&mut h, bar_offset(0), r as u32),
            [change(Window::Registers, None, Some(r))]
        );
        // Decoding off: both go.
        assert_eq!(
            cf8_write(&mut h, cfg::COMMAND, &[0, 0]),
            [
                change(Window::Registers, Some(r), None),
                change(Window::Mailbox, Some(m), None)
            ]
        );
        assert_eq!(h.control().stats().placements_refused, 0);
    }

    #[test]
    fn placements_over_ram_or_over_each_other_are_refused_and_counted() {
        let mut h = host();
        cf8_write(&mut h, cfg::COMMAND, &command::MEMORY.to_le_bytes());
        // The mailbox over RAM (atoll's memory lies inside the host's RAM map here).
        assert!(ecam_write(&mut h, bar_offset(2), 0x0010_0000).is_empty());
        assert_eq!(h.control().mapped(Window::Mailbox), None);
        assert_eq!(h.control().stats().placements_refused, 1);
        // The same refused address written again is counted once; the registers page over the
        // last page of RAM below 3 GiB is refused too.
        ecam_write(&mut h, bar_offset(2), 0x0010_0000);
        assert_eq!(h.control().stats().placements_refused, 1);
        assert!(ecam_write(&mut h, bar_offset(0), 0xbfff_f000).is_empty());
        assert_eq!(h.control().stats().placements_refused, 2);
        // Just past RAM is fine.
        assert_eq!(
            ecam_write(&mut h, bar_offset(0), 0xc000_0000),
            [change(Window::Registers, None, Some(0xc000_0000))]
        );
        // The mailbox placed over the registers page: neither decodes.
        assert_eq!(
            ecam_write(&mut h, bar_offset(2), 0xc000_0000),
            [change(Window::Registers, Some(0xc000_0000), None)]
        );
        assert_eq!(h.control().mapped(Window::Mailbox), None);
        assert_eq!(h.control().stats().placements_refused, 4);
        // Moving the mailbox away brings both back.
        assert_eq!(
            ecam_write(&mut h, bar_offset(2), 0xc010_0000),
            [
                change(Window::Registers, None, Some(0xc000_0000)),
                change(Window::Mailbox, None, Some(0xc010_0000))
            ]
        );
        // The registers page placed inside the mailbox: neither.
        assert_eq!(
            ecam_write(&mut h, bar_offset(0), 0xc01f_f000),
            [
                change(Window::Registers, Some(0xc000_0000), None),
                change(Window::Mailbox, Some(0xc010_0000), None)
            ]
        );
        // The predicate itself.
        let none = |_: GuestPhysAddr, _: u64| false;
        assert!(!placement_ok(GuestPhysAddr::new(0), 16, none));
        assert!(!placement_ok(GuestPhysAddr::new(u64::MAX - 15), 32, none));
        assert!(placement_ok(GuestPhysAddr::new(u64::MAX - 31), 32, none));
        assert!(!placement_ok(GuestPhysAddr::new(0x1000), 0, none));
        assert!(!placement_ok(GuestPhysAddr::new(0x1000), 16, ram));
    }

    /// BAR0 as memory would hold it, built from the ABI's offsets.
    fn register_image(refused: u32) -> Vec<u8> {
        let mut image = vec![0u8; BAR0_SIZE as usize];
        for (offset, value) in [
            (reg::MAGIC, u32::from_le_bytes(*b"ATOL")),
            (reg::VERSION, u32::from(abi::VERSION)),
            (reg::SLOTS, SLOTS),
            (reg::SLOT_SIZE, abi::SLOT_SIZE),
            (reg::REFUSED, refused),
        ] {
            let o = offset as usize;
            image[o..o + 4].copy_from_slice(&value.to_le_bytes());
        }
        image
    }

    fn rd(d: &mut ControlDevice, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.register_read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn registers_read_as_memory_at_every_offset_and_width() {
        let mut d = ControlDevice::new();
        d.register_write(reg::DOORBELL, &SLOTS.to_le_bytes());
        d.register_write(reg::DOORBELL, &(SLOTS + 7).to_le_bytes());
        assert_eq!(d.refused(), 2);
        let image = register_image(2);
        for len in [1usize, 2, 4, 8] {
            for offset in 0..=(BAR0_SIZE as usize - len) {
                let mut expect = [0u8; 8];
                expect[..len].copy_from_slice(&image[offset..offset + len]);
                assert_eq!(
                    rd(&mut d, offset as u64, len),
                    u64::from_le_bytes(expect),
                    "{offset:#x}/{len}"
                );
            }
        }
        assert_eq!(d.stats().bad_accesses, 0);
        // The aligned dwords are the registers' values.
        assert_eq!(rd(&mut d, reg::MAGIC, 4), u64::from(reg::MAGIC_VALUE));
        assert_eq!(rd(&mut d, reg::DOORBELL, 4), 0);
        // Past BAR0: all ones for the bytes outside; odd sizes: all ones. Both counted.
        assert_eq!(rd(&mut d, BAR0_SIZE - 4, 8), 0xffff_ffff_0000_0000);
        assert_eq!(rd(&mut d, u64::MAX, 2), 0xffff);
        let mut three = [0u8; 3];
        d.register_read(0, &mut three);
        assert_eq!(three, [0xff; 3]);
        let mut sixteen = [0u8; 16];
        d.register_read(0, &mut sixteen);
        assert_eq!(sixteen, [0xff; 16]);
        assert_eq!(d.stats().bad_accesses, 4);
    }

    #[test]
    fn writes_other_than_the_doorbell_are_ignored_and_counted() {
        let mut d = ControlDevice::new();
        let before = register_image(0);
        let mut n = 0;
        for offset in [
            reg::MAGIC,
            reg::VERSION,
            reg::SLOTS,
            reg::SLOT_SIZE,
            reg::REFUSED,
            0x18,
            0x800,
            BAR0_SIZE - 8,
        ] {
            for len in [1, 2, 4, 8] {
                // 8-byte writes at SLOT_SIZE cover DOORBELL: that one is a doorbell write.
                if offset < reg::DOORBELL + 4 && offset + len as u64 > reg::DOORBELL {
                    continue;
                }
                d.register_write(offset, &[0xa5; 8][..len]);
                n += 1;
            }
        }
        assert_eq!(d.stats().ignored_writes, n);
        for (offset, byte) in before.iter().enumerate() {
            assert_eq!(rd(&mut d, offset as u64, 1), u64::from(*byte));
        }
        assert_eq!((d.refused(), d.pending().bits()), (0, 0));
        // Odd sizes and writes past BAR0 are bad accesses, not writes.
        d.register_write(reg::DOORBELL, &[0; 3]);
        d.register_write(BAR0_SIZE - 2, &[0; 4]);
        d.register_write(u64::MAX, &[0; 2]);
        assert_eq!(d.stats().bad_accesses, 3);
        assert_eq!((d.stats().ignored_writes, d.refused()), (n, 0));
    }

    #[test]
    fn doorbells_queue_once_per_slot_and_drain() {
        let mut d = ControlDevice::new();
        let ring = |d: &mut ControlDevice, slot: u32| {
            d.register_write(reg::DOORBELL, &slot.to_le_bytes());
        };
        // Rung out of order; drained lowest first, each once.
        for slot in (0..SLOTS).rev() {
            ring(&mut d, slot);
        }
        assert_eq!(d.stats().doorbells, u64::from(SLOTS));
        assert_eq!(d.refused(), 0);
        // Again while pending: refused, nothing queued twice.
        ring(&mut d, 0);
        ring(&mut d, SLOTS - 1);
        assert_eq!(d.refused(), 2);
        assert_eq!(rd(&mut d, reg::REFUSED, 4), 2);
        // Out of range.
        for slot in [SLOTS, 31, 32, 33, u32::MAX] {
            ring(&mut d, slot);
        }
        assert_eq!(d.refused(), 7);
        assert_eq!(d.pending().count(), SLOTS as usize);
        let drained: Vec<u32> = d.take_doorbells().collect();
        assert_eq!(drained, (0..SLOTS).collect::<Vec<_>>());
        assert_eq!(d.take_doorbells().count(), 0);
        // After the drain a slot may ring again.
        ring(&mut d, 1);
        assert_eq!(d.take_doorbells().bits(), 0b10);
        // Doorbell writes that are not one aligned dword are refused and queue nothing.
        for (offset, len) in [
            (reg::DOORBELL, 1),
            (reg::DOORBELL, 2),
            (reg::DOORBELL + 2, 2),
            (reg::DOORBELL + 3, 1),
            (reg::DOORBELL, 8),
            (reg::SLOT_SIZE, 8),
            (reg::DOORBELL - 2, 4),
            (reg::DOORBELL + 1, 4),
        ] {
            d.register_write(offset, &[0; 8][..len]);
        }
        assert_eq!(d.refused(), 15);
        assert_eq!(d.pending().bits(), 0);
        // atoll's own refusal (slot not SUBMITTED) shows in REFUSED; the count saturates.
        d.note_refused();
        assert_eq!(rd(&mut d, reg::REFUSED, 4), 16);
        d.refused = u32::MAX - 1;
        ring(&mut d, SLOTS);
        ring(&mut d, SLOTS);
        assert_eq!(d.refused(), u32::MAX);
        // Doorbell reads are 0 and have no effect.
        ring(&mut d, 2);
        assert_eq!(rd(&mut d, reg::DOORBELL, 4), 0);
        assert_eq!(d.pending().bits(), 0b100);
    }

    #[test]
    fn other_functions_and_a_disabled_latch_pass_through_with_the_latch() {
        let mut h = host();
        let dev = u32::from(DEVICE);
        for (bus, d, f) in [(0, 0, 0), (0, dev + 1, 0), (1, dev, 0), (0xff, 31, 7)] {
            select(&mut h, bus, d, f, 0x10);
            let l = latch(bus, d, f, 0x10);
            for (port, len) in [(DATA, 4), (DATA + 1, 1), (DATA + 2, 2), (DATA + 3, 1)] {
                let expect = HostAccess::PassThrough(PassThrough {
                    latch: Some(l),
                    port,
                    len,
                });
                let mut b = [0u8; 4];
                assert_eq!(h.io_read(port, &mut b[..usize::from(len)]), expect);
                assert_eq!(
                    h.io_write(port, &[0xff; 4][..usize::from(len)], ram),
                    expect
                );
            }
        }
        // The control device's number with the enable bit clear: the hardware's.
        let off = latch(0, dev, 0, 0) & !(1 << 31);
        h.io_write(CONFIG_ADDRESS_PORT, &off.to_le_bytes(), ram);
        let mut b = [0u8; 4];
        assert_eq!(
            h.io_read(DATA, &mut b),
            HostAccess::PassThrough(PassThrough {
                latch: Some(off),
                port: DATA,
                len: 4
            })
        );
        // None of it touched the control function.
        assert_eq!(cf8_read(&mut h, bar_offset(0)), 0);
        // Functions 1–7 of the control device: all ones, writes dropped.
        for f in 1..8 {
            select(&mut h, 0, dev, f, 0);
            let mut b = [0u8; 4];
            assert_eq!(
                h.io_read(DATA, &mut b),
                HostAccess::Emulated(MappingChanges::NONE)
            );
            assert_eq!(b, [0xff; 4]);
            select(&mut h, 0, dev, f, u32::from(cfg::COMMAND));
            h.io_write(DATA, &[0xff, 0xff], ram);
        }
        assert_eq!(cf8_read(&mut h, cfg::COMMAND), 0);
    }

    #[test]
    fn the_address_ports_other_than_a_dword_latch_pass_through() {
        let mut h = host();
        select(&mut h, 0, u32::from(DEVICE), 0, 0);
        let l = h.latch();
        // A dword read of 0xCF8 replays the latch and reads the hardware's register.
        let mut b = [0u8; 4];
        assert_eq!(
            h.io_read(CONFIG_ADDRESS_PORT, &mut b),
            HostAccess::PassThrough(PassThrough {
                latch: Some(l),
                port: CONFIG_ADDRESS_PORT,
                len: 4
            })
        );
        // Bytes and words in 0xCF8–0xCFB (0xCF9: the reset control register) go to the
        // hardware untouched, and leave the latch alone.
        for (port, len) in [
            (0xcf8u16, 1u8),
            (0xcf9, 1),
            (0xcf8, 2),
            (0xcfa, 2),
            (0xcfb, 1),
        ] {
            let expect = HostAccess::PassThrough(PassThrough {
                latch: None,
                port,
                len,
            });
            assert_eq!(h.io_read(port, &mut b[..usize::from(len)]), expect);
            assert_eq!(h.io_write(port, &[6; 4][..usize::from(len)], ram), expect);
            assert_eq!(h.latch(), l);
        }
        // Accesses straddling into the data window or past it, and odd sizes: refused.
        for (port, len) in [
            (0xcfbu16, 2usize),
            (0xcfa, 4),
            (0xcf9, 4),
            (0xcfd, 4),
            (0xcfe, 4),
            (0xcff, 2),
            (0xcfc, 3),
            (0xcfc, 8),
        ] {
            let mut r = [0u8; 8];
            assert_eq!(h.io_read(port, &mut r[..len]), HostAccess::Refused);
            assert!(r[..len].iter().all(|&x| x == 0xff));
            assert_eq!(h.io_write(port, &[0; 8][..len], ram), HostAccess::Refused);
        }
        assert_eq!(h.refused(), 16);
        assert_eq!(h.latch(), l);
        // A port outside mechanism #1 is not ours.
        assert_eq!(
            h.io_read(0xd00, &mut b[..1]),
            HostAccess::PassThrough(PassThrough {
                latch: None,
                port: 0xd00,
                len: 1
            })
        );
    }

    #[test]
    fn amd_extended_register_bits_reach_the_extended_space() {
        let mut h = host();
        // Register 0x104 (bits 27:24 = 1): the extended space, which reads 0.
        let l = latch(0, u32::from(DEVICE), 0, 0x04) | 1 << 24;
        h.io_write(CONFIG_ADDRESS_PORT, &l.to_le_bytes(), ram);
        h.io_write(DATA, &u32::MAX.to_le_bytes(), ram);
        let mut b = [0u8; 4];
        h.io_read(DATA, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(
            cf8_read(&mut h, cfg::COMMAND),
            0,
            "not the command register"
        );
    }

    #[test]
    fn ecam_page_accesses() {
        let mut h = host();
        assert_eq!(h.ecam_page(), gpa(page()));
        // Offsets from 0x100 read 0 and ignore writes.
        for offset in [0x100u16, 0x104, 0x800, 0xffc] {
            assert!(ecam_write(&mut h, offset, u32::MAX).is_empty());
            assert_eq!(ecam_dword(&mut h, offset), 0, "{offset:#x}");
        }
        // Bytes and words inside a dword.
        let ids = ecam_dword(&mut h, 0);
        assert_eq!(ecam_read(&mut h, 3, 1).1, u64::from(ids >> 24));
        assert_eq!(ecam_read(&mut h, 1, 2).1, u64::from(ids >> 8 & 0xffff));
        // 8 bytes, 3 bytes, crossing a dword: refused, all ones.
        for (offset, len) in [(0, 8), (0, 3), (2, 4), (3, 2), (0xffe, 4)] {
            let (a, v) = ecam_read(&mut h, offset, len);
            assert_eq!(a, HostAccess::Refused);
            assert_eq!(v, u64::MAX >> (64 - 8 * len), "{offset:#x}/{len}");
            let addr = GuestPhysAddr::new(page() + offset);
            assert_eq!(
                h.ecam_write(addr, &[0xff; 8][..len], ram),
                HostAccess::Refused
            );
        }
        assert_eq!(cf8_read(&mut h, cfg::COMMAND), 0);
        // Outside the page: not the control device's.
        for addr in [page() - 1, page() + 0x1000, ECAM_BASE] {
            let mut b = [0u8; 4];
            assert_eq!(
                h.ecam_read(GuestPhysAddr::new(addr), &mut b),
                HostAccess::NotControl
            );
            assert_eq!(
                h.ecam_write(GuestPhysAddr::new(addr), &b, ram),
                HostAccess::NotControl
            );
        }
        // No ECAM: every address is not ours.
        let mut no = HostConfig::new(DEVICE, None, 0).unwrap();
        assert_eq!(
            no.ecam_read(GuestPhysAddr::new(page()), &mut [0; 4]),
            HostAccess::NotControl
        );
    }

    #[test]
    fn ecam_page_and_device_numbers() {
        let base = GuestPhysAddr::new(ECAM_BASE);
        assert_eq!(ecam_page(base, 0, 0), gpa(ECAM_BASE));
        assert_eq!(ecam_page(base, 0, 31), gpa(ECAM_BASE + 31 * 0x8000));
        assert_eq!(ecam_page(base, 1, 3), None, "bus 0 not covered");
        assert_eq!(ecam_page(base, 0, 32), None);
        let top = GuestPhysAddr::new(u64::MAX - 0xfff);
        assert_eq!(
            ecam_page(top, 0, 0),
            Some(top),
            "the last page of the space"
        );
        assert_eq!(ecam_page(top, 0, 1), None);
        assert!(
            HostConfig::new(0, None, 0).is_none(),
            "the host bridge's number"
        );
        assert!(HostConfig::new(32, None, 0).is_none());
        let h = HostConfig::new(9, Some((base, 4)), 0).unwrap();
        assert_eq!((h.device(), h.ecam_page()), (9, None));
    }

    #[test]
    fn the_device_number_is_the_first_empty_slot_after_0() {
        // Devices 0–2 and 4 present, 3 absent.
        let bus = |present: &'static [u8]| {
            move |d: u8| {
                if present.contains(&d) {
                    0x8086
                } else {
                    0xffff
                }
            }
        };
        assert_eq!(pick_device(bus(&[0, 1, 2, 4])), Some(3));
        assert_eq!(pick_device(bus(&[])), Some(1), "device 0 is skipped");
        let full: Vec<u8> = (0..32).collect();
        let full: &'static [u8] = full.leak();
        assert_eq!(pick_device(bus(full)), None);
        // Only devices 1–31 are probed, each once, in order.
        let mut probed = Vec::new();
        pick_device(|d| {
            probed.push(d);
            0
        });
        assert_eq!(probed, (1..32).collect::<Vec<u8>>());
    }

    #[test]
    fn registers_offset_follows_the_mapped_window() {
        let mut h = host();
        let r = 0xfe00_0000u64;
        assert_eq!(h.control().registers_offset(GuestPhysAddr::new(r), 4), None);
        ecam_write(&mut h, bar_offset(0), r as u32);
        ecam_write(&mut h, cfg::COMMAND, u32::from(command::MEMORY));
        let c = h.control();
        assert_eq!(
            c.registers_offset(GuestPhysAddr::new(r + reg::DOORBELL), 4),
            Some(reg::DOORBELL)
        );
        assert_eq!(
            c.registers_offset(GuestPhysAddr::new(r + BAR0_SIZE - 4), 4),
            Some(BAR0_SIZE - 4)
        );
        assert_eq!(
            c.registers_offset(GuestPhysAddr::new(r + BAR0_SIZE - 4), 8),
            None
        );
        assert_eq!(c.registers_offset(GuestPhysAddr::new(r - 1), 1), None);
        assert_eq!(
            c.registers_offset(GuestPhysAddr::new(r + BAR0_SIZE), 1),
            None
        );
    }

    #[test]
    fn the_device_works_on_a_segment_through_the_bar_map() {
        use super::super::bars::BarMap;
        use super::super::host::{Ecam, PciSegment};
        use super::super::Bdf;
        use alloc::boxed::Box;
        let bdf = Bdf::new(0, DEVICE, 0).unwrap();
        let mut s = PciSegment::new(Ecam::new(0, 1).unwrap());
        s.insert(bdf, Box::new(ControlDevice::new())).unwrap();
        let mut map = BarMap::with_capacity(2, 0);
        s.config_write(bdf, bar_offset(0), &0xfe00_0000u32.to_le_bytes());
        s.config_write(bdf, bar_offset(2), &0xfd00_0000u32.to_le_bytes());
        s.config_write(bdf, cfg::COMMAND, &command::MEMORY.to_le_bytes());
        map.update(&mut s, bdf).unwrap();
        map.mmio_write(&mut s, 0xfe00_0000 + reg::DOORBELL, &1u32.to_le_bytes())
            .unwrap();
        let mut v = [0u8; 4];
        map.mmio_read(&mut s, 0xfe00_0000, &mut v).unwrap();
        assert_eq!(u32::from_le_bytes(v), reg::MAGIC_VALUE);
        // The mailbox does not exit normally; if it does, nothing answers.
        map.mmio_read(&mut s, 0xfd00_0000, &mut v).unwrap();
        assert_eq!(v, [0xff; 4]);
    }

    #[test]
    fn channel_functions_follow_the_control_function() {
        use atoll_abi::channel as ch;
        let mut h = HostConfig::new(DEVICE, Some((GuestPhysAddr::new(ECAM_BASE), 0)), 2).unwrap();
        assert_eq!(h.channels(), 2);
        assert_eq!(h.ecam_len(), 3 * 4096);
        assert!(HostConfig::new(DEVICE, None, ch::MAX_CHANNELS as u8 + 1).is_none());
        // Function 0 says it is multi-function; 1 and 2 are channels; 3 is absent.
        assert_eq!(cf8_read(&mut h, cfg::CACHE_LINE_SIZE) >> 16 & 0xff, 0x80);
        let read_fn = |h: &mut HostConfig, f: u32, reg: u16| {
            select(h, 0, u32::from(DEVICE), f, u32::from(reg));
            let mut b = [0u8; 4];
            assert!(matches!(h.io_read(DATA, &mut b), HostAccess::Emulated(_)));
            u32::from_le_bytes(b)
        };
        let ids = u32::from(ch::DEVICE_ID) << 16 | u32::from(abi::VENDOR_ID);
        assert_eq!(read_fn(&mut h, 1, cfg::VENDOR_ID), ids);
        assert_eq!(read_fn(&mut h, 2, cfg::VENDOR_ID), ids);
        assert_eq!(read_fn(&mut h, 3, cfg::VENDOR_ID), u32::MAX);
        // Through ECAM, function 2's page.
        let addr = GuestPhysAddr::new(page() + 2 * 4096);
        let mut b = [0u8; 4];
        assert!(matches!(h.ecam_read(addr, &mut b), HostAccess::Emulated(_)));
        assert_eq!(u32::from_le_bytes(b), ids);
        let past = GuestPhysAddr::new(page() + 3 * 4096);
        assert_eq!(h.ecam_read(past, &mut b), HostAccess::NotControl);
        // BAR2 is the window's size.
        let bar2 = bar_offset(MAILBOX_BAR_INDEX);
        let write_fn = |h: &mut HostConfig, f: u32, reg: u16, v: u32| {
            select(h, 0, u32::from(DEVICE), f, u32::from(reg));
            match h.io_write(DATA, &v.to_le_bytes(), ram) {
                HostAccess::Emulated(c) => c.collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            }
        };
        write_fn(&mut h, 1, bar2, u32::MAX);
        let probe = read_fn(&mut h, 1, bar2);
        assert_eq!(u64::from(!(probe & !0xf)) + 1, ch::WINDOW_SIZE);
        // Placing and enabling it reports a change for function 1's window.
        write_fn(&mut h, 1, bar2, 0xd040_0000);
        let changes = write_fn(&mut h, 1, cfg::COMMAND, u32::from(command::MEMORY));
        assert_eq!(
            changes,
            [MappingChange {
                function: 1,
                window: Window::Mailbox,
                from: None,
                to: gpa(0xd040_0000),
            }]
        );
        assert_eq!(
            h.function(1).unwrap().window_size(Window::Mailbox),
            ch::WINDOW_SIZE
        );
        // The MSI capability: only enable, address and data are writable.
        let cap = read_fn(&mut h, 1, cfg::CAPABILITIES) & 0xff;
        assert_ne!(cap, 0);
        let cap = cap as u16;
        assert_eq!(read_fn(&mut h, 1, cap) & 0xff, 0x05);
        write_fn(&mut h, 1, cap, 0xffff_0000);
        assert_eq!(
            read_fn(&mut h, 1, cap) >> 16,
            0x81,
            "enable and 64-bit only"
        );
        write_fn(&mut h, 1, cap + 4, 0xfee0_1003);
        write_fn(&mut h, 1, cap + 8, 0);
        write_fn(&mut h, 1, cap + 12, 0xffff_0041);
        assert_eq!(
            h.function(1).unwrap().msi(),
            Some(MsiState {
                enabled: true,
                address: 0xfee0_1000,
                data: 0x41,
            })
        );
        assert_eq!(h.function(2).unwrap().msi().map(|m| m.enabled), Some(false));
        assert_eq!(h.function(0).unwrap().msi(), None);
        // INTx: pin A, the interrupt-disable bit writable (and only then reported).
        assert_eq!(read_fn(&mut h, 1, cfg::INTERRUPT_LINE) >> 8 & 0xff, 1);
        assert_eq!(read_fn(&mut h, 0, cfg::INTERRUPT_LINE) >> 8 & 0xff, 0);
        assert!(!h.function(1).unwrap().intx_disabled());
        write_fn(
            &mut h,
            1,
            cfg::COMMAND,
            u32::from(command::MEMORY | command::INTX_DISABLE),
        );
        assert!(h.function(1).unwrap().intx_disabled());
        write_fn(&mut h, 0, cfg::COMMAND, u32::from(command::INTX_DISABLE));
        assert!(
            !h.function(0).unwrap().intx_disabled(),
            "not the control function's"
        );
        // Which channel function an access reaches.
        select(&mut h, 0, u32::from(DEVICE), 2, u32::from(cfg::COMMAND));
        assert_eq!(h.port_target(DATA + 2), Some((2, cfg::COMMAND + 2)));
        select(&mut h, 0, u32::from(DEVICE), 0, u32::from(cfg::COMMAND));
        assert_eq!(h.port_target(DATA), None);
        assert_eq!(
            h.ecam_target(GuestPhysAddr::new(page() + 4096 + 6)),
            Some((1, 6))
        );
        assert_eq!(h.ecam_target(GuestPhysAddr::new(page() + 6)), None);
    }
}
