//! A PCI function's configuration space: the type 0 header, capabilities and BARs.
//!
//! References: PCI Local Bus Specification 3.0 §6.1–6.2 (header, command and status, BARs),
//! §6.7 (capability list); PCI Express Base Specification 4.0 §7.2.2 (ECAM), §7.6 (extended
//! capabilities).
//!
//! The space is 4 KiB: the legacy 256 bytes that configuration mechanism #1 reaches, and the
//! extended space ECAM adds. Every byte has a write mask (bits a write may change) and a
//! write-one-to-clear mask (status bits a write of 1 clears); every other bit is read-only, so a
//! guest's write changes only what the device declared writable. A [`ConfigSpace`] is built by
//! its device — header, BARs, capabilities — and from then on only the masks decide.
//!
//! **Accesses.** An access is 1, 2 or 4 bytes inside one dword (a configuration transaction is
//! one dword with byte enables, so a word at offset 1 is legal but a word at offset 3 is not)
//! and below 4 KiB; anything else is a [`ConfigError`] that the bus turns into all ones or a
//! dropped write.
//!
//! **BARs.** A BAR's write mask is its address bits above its size, so the sizing probe — write
//! all ones, read back — returns the size mask with the type bits, as hardware does. A write
//! that changes where a BAR points is reported to the owner as [`ConfigEffect::BarMoved`]; so is
//! a change of the command register's decode bits ([`ConfigEffect::Command`]), because the
//! platform maps a BAR only while its decode bit is set (Linux clears the bit while it sizes
//! BARs, so the all-ones probe address is never mapped).

use alloc::vec;
use alloc::vec::Vec;

/// Bytes of configuration space configuration mechanism #1 reaches.
pub const LEGACY_SIZE: u16 = 0x100;
/// Bytes of configuration space (PCIe: legacy plus extended).
pub const CONFIG_SIZE: u16 = 0x1000;
/// Where capabilities may start (after the type 0 header).
pub const FIRST_CAPABILITY: u8 = 0x40;
/// Where the extended capabilities start (PCIe Base Spec §7.6).
pub const FIRST_EXTENDED_CAPABILITY: u16 = 0x100;
/// Number of BARs in a type 0 header.
pub const BAR_COUNT: u8 = 6;

/// Register offsets of the type 0 header (PCI 3.0 §6.1).
pub mod reg {
    /// Vendor ID (16 bits, read-only).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits, read-only).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status (16 bits; error bits are write-one-to-clear).
    pub const STATUS: u16 = 0x06;
    /// Revision ID, then programming interface, subclass and class (read-only).
    pub const REVISION: u16 = 0x08;
    /// Cache line size (read-write, no effect on a virtual device).
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    /// Header type; bit 7 says the device has more than one function.
    pub const HEADER_TYPE: u16 = 0x0e;
    /// BAR 0; BAR *n* is at `BAR0 + 4n`.
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor ID.
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Subsystem ID.
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Expansion ROM base address (not implemented: reads 0).
    pub const ROM: u16 = 0x30;
    /// Capabilities pointer (valid when the status register's capability-list bit is set).
    pub const CAPABILITIES: u16 = 0x34;
    /// Interrupt line (read-write scratch for the OS).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin (0 none, 1–4 INTA#–INTD#).
    pub const INTERRUPT_PIN: u16 = 0x3d;
}

/// Command register bits (PCI 3.0 §6.2.2).
pub mod command {
    /// The function decodes its I/O BARs.
    pub const IO: u16 = 1 << 0;
    /// The function decodes its memory BARs.
    pub const MEMORY: u16 = 1 << 1;
    /// The function may master (DMA, MSI).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Parity error response.
    pub const PARITY: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// INTx emulation disabled.
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// The bits a standard function lets software write.
    pub const WRITABLE: u16 = IO | MEMORY | BUS_MASTER | PARITY | SERR | INTX_DISABLE;
}

/// Status register bits (PCI 3.0 §6.2.3).
pub mod status {
    /// INTx asserted (read-only).
    pub const INTERRUPT: u16 = 1 << 3;
    /// The capabilities pointer is valid (read-only).
    pub const CAPABILITY_LIST: u16 = 1 << 4;
    /// Master data parity error (write one to clear).
    pub const MASTER_DATA_PARITY: u16 = 1 << 8;
    /// Signaled target abort (write one to clear).
    pub const SIGNALED_TARGET_ABORT: u16 = 1 << 11;
    /// Received target abort (write one to clear).
    pub const RECEIVED_TARGET_ABORT: u16 = 1 << 12;
    /// Received master abort (write one to clear).
    pub const RECEIVED_MASTER_ABORT: u16 = 1 << 13;
    /// Signaled system error (write one to clear).
    pub const SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
    /// Detected parity error (write one to clear).
    pub const DETECTED_PARITY: u16 = 1 << 15;
    /// The error bits: a write of 1 clears them, a write of 0 leaves them.
    pub const WRITE_ONE_TO_CLEAR: u16 = MASTER_DATA_PARITY
        | SIGNALED_TARGET_ABORT
        | RECEIVED_TARGET_ABORT
        | RECEIVED_MASTER_ABORT
        | SIGNALED_SYSTEM_ERROR
        | DETECTED_PARITY;
}

/// Class code: base class, subclass, programming interface (PCI Code and ID Assignment spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassCode {
    /// Base class (e.g. 0x06 bridge).
    pub class: u8,
    /// Subclass (e.g. 0x00 host bridge).
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
}

/// An INTx pin (the interrupt pin register's 1–4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum IntxPin {
    /// INTA#.
    A = 1,
    /// INTB#.
    B = 2,
    /// INTC#.
    C = 3,
    /// INTD#.
    D = 4,
}

/// The identity of a function: what its read-only header registers hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code.
    pub class: ClassCode,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// The INTx pin, if the function has one.
    pub interrupt_pin: Option<IntxPin>,
}

/// What a BAR decodes (PCI 3.0 §6.2.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports; atoll's I/O BARs decode 16 bits (x86 has 64 Ki ports), so the upper half of
    /// the register is hardwired to zero, as the specification allows.
    Io,
    /// Memory below 4 GiB.
    Memory32 {
        /// Reads have no side effects (the OS may map it write-combining).
        prefetchable: bool,
    },
    /// Memory anywhere; takes this BAR and the next one (the high dword).
    Memory64 {
        /// Reads have no side effects.
        prefetchable: bool,
    },
}

impl BarKind {
    /// The read-only type bits in the BAR's low dword.
    fn type_bits(self) -> u32 {
        match self {
            BarKind::Io => 0x1,
            BarKind::Memory32 { prefetchable } => u32::from(prefetchable) << 3,
            BarKind::Memory64 { prefetchable } => 0x4 | u32::from(prefetchable) << 3,
        }
    }

    /// The bits of the low dword that are not address bits.
    fn low_bits(self) -> u32 {
        match self {
            BarKind::Io => 0x3,
            _ => 0xf,
        }
    }

    /// The command register bit that turns decoding of this kind on.
    pub fn decode_bit(self) -> u16 {
        match self {
            BarKind::Io => command::IO,
            _ => command::MEMORY,
        }
    }
}

/// A BAR as its device declares it: what it decodes and how many bytes (a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// I/O or memory.
    pub kind: BarKind,
    /// Bytes (or ports) decoded.
    pub size: u64,
}

/// Where a BAR points now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// The BAR's index (of its low dword, for a 64-bit BAR).
    pub index: u8,
    /// I/O or memory.
    pub kind: BarKind,
    /// The address the guest programmed.
    pub base: u64,
    /// Bytes decoded.
    pub size: u64,
}

/// Why a configuration access or a construction step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// An access that is not 1, 2 or 4 bytes.
    Size(usize),
    /// An access that crosses a dword boundary.
    CrossesDword {
        /// Where it started.
        offset: u16,
    },
    /// An access or register beyond the 4 KiB space (or, for a capability, beyond its area).
    OutOfRange {
        /// Where it started.
        offset: u16,
    },
    /// A BAR index that is not 0–5 (0–4 for a 64-bit BAR).
    BarIndex(u8),
    /// The BAR (or, for a 64-bit BAR, the one after it) is taken.
    BarInUse(u8),
    /// A BAR size that is not a power of two in the kind's range (I/O 4–256 bytes, memory from
    /// 16 bytes, at most 2 GiB below 4 GiB).
    BarSize(u64),
    /// A base address that is not aligned to the BAR's size or does not fit its kind.
    BarBase(u64),
    /// A capability that does not fit in what is left of its area.
    NoRoom,
    /// A mask whose length differs from its register's.
    MaskLength,
}

/// What a configuration write changed that the device's owner must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigEffect {
    /// The command register changed (decode or bus-master bits turned on or off).
    Command {
        /// Before the write.
        old: u16,
        /// After it.
        new: u16,
    },
    /// A BAR now points elsewhere: the platform unmaps `from` and, if the kind's decode bit is
    /// set, maps `to`.
    BarMoved {
        /// The BAR's index.
        index: u8,
        /// I/O or memory.
        kind: BarKind,
        /// Bytes decoded.
        size: u64,
        /// The old base.
        from: u64,
        /// The new base.
        to: u64,
    },
}

/// One slot of the BAR array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarSlot {
    Unused,
    Bar(Bar),
    /// The high dword of the 64-bit BAR in the slot below.
    Upper,
}

/// Checks an access of `len` bytes at `offset` and returns the offset as an index.
pub fn check_access(offset: u16, len: usize) -> Result<usize, ConfigError> {
    if !matches!(len, 1 | 2 | 4) {
        return Err(ConfigError::Size(len));
    }
    let start = usize::from(offset);
    if start + len > usize::from(CONFIG_SIZE) {
        return Err(ConfigError::OutOfRange { offset });
    }
    if (start & 3) + len > 4 {
        return Err(ConfigError::CrossesDword { offset });
    }
    Ok(start)
}

/// A function's 4 KiB configuration space with its write masks.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    writable: Vec<u8>,
    clear: Vec<u8>,
    bars: [BarSlot; BAR_COUNT as usize],
    last_capability: Option<u8>,
    free_capability: u16,
    last_extended: Option<u16>,
    free_extended: u16,
}

impl ConfigSpace {
    /// The space of a type 0 function with `header`: identity registers read-only; command
    /// bits [`command::WRITABLE`], cache line size and interrupt line writable; status error
    /// bits write-one-to-clear; no BARs, no capabilities.
    pub fn new(header: &Header) -> Self {
        let size = usize::from(CONFIG_SIZE);
        let mut s = Self {
            bytes: vec![0; size],
            writable: vec![0; size],
            clear: vec![0; size],
            bars: [BarSlot::Unused; BAR_COUNT as usize],
            last_capability: None,
            free_capability: u16::from(FIRST_CAPABILITY),
            last_extended: None,
            free_extended: FIRST_EXTENDED_CAPABILITY,
        };
        s.put(reg::VENDOR_ID, &header.vendor_id.to_le_bytes());
        s.put(reg::DEVICE_ID, &header.device_id.to_le_bytes());
        s.put(
            reg::REVISION,
            &[
                header.revision,
                header.class.prog_if,
                header.class.subclass,
                header.class.class,
            ],
        );
        s.put(
            reg::SUBSYSTEM_VENDOR_ID,
            &header.subsystem_vendor_id.to_le_bytes(),
        );
        s.put(reg::SUBSYSTEM_ID, &header.subsystem_id.to_le_bytes());
        s.put(
            reg::INTERRUPT_PIN,
            &[header.interrupt_pin.map_or(0, |p| p as u8)],
        );
        s.mask(reg::COMMAND, &command::WRITABLE.to_le_bytes(), &[0, 0]);
        s.mask(
            reg::STATUS,
            &[0, 0],
            &status::WRITE_ONE_TO_CLEAR.to_le_bytes(),
        );
        s.mask(reg::CACHE_LINE_SIZE, &[0xff], &[0]);
        s.mask(reg::INTERRUPT_LINE, &[0xff], &[0]);
        s
    }

    /// Sets bytes at a constant, in-range offset (construction only).
    fn put(&mut self, offset: u16, value: &[u8]) {
        let at = usize::from(offset);
        self.bytes[at..at + value.len()].copy_from_slice(value);
    }

    /// Sets masks at a constant, in-range offset (construction only).
    fn mask(&mut self, offset: u16, writable: &[u8], clear: &[u8]) {
        let at = usize::from(offset);
        self.writable[at..at + writable.len()].copy_from_slice(writable);
        self.clear[at..at + clear.len()].copy_from_slice(clear);
    }

    /// Sets a register a device defines itself: its value, the bits a write may change and the
    /// bits a write of 1 clears (both masks as long as `value`; empty for "none").
    pub fn init_register(
        &mut self,
        offset: u16,
        value: &[u8],
        writable: &[u8],
        clear: &[u8],
    ) -> Result<(), ConfigError> {
        let at = usize::from(offset);
        if at + value.len() > usize::from(CONFIG_SIZE) {
            return Err(ConfigError::OutOfRange { offset });
        }
        for m in [writable, clear] {
            if !m.is_empty() && m.len() != value.len() {
                return Err(ConfigError::MaskLength);
            }
        }
        let n = value.len();
        self.bytes[at..at + n].copy_from_slice(value);
        for (i, slot) in self.writable[at..at + n].iter_mut().enumerate() {
            *slot = writable.get(i).copied().unwrap_or(0);
        }
        for (i, slot) in self.clear[at..at + n].iter_mut().enumerate() {
            *slot = clear.get(i).copied().unwrap_or(0);
        }
        Ok(())
    }

    /// Reads an access (see [`check_access`]) into `data`.
    pub fn read(&self, offset: u16, data: &mut [u8]) -> Result<(), ConfigError> {
        let at = check_access(offset, data.len())?;
        data.copy_from_slice(&self.bytes[at..at + data.len()]);
        Ok(())
    }

    /// Writes an access through the masks; returns what the owner must act on.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Result<Option<ConfigEffect>, ConfigError> {
        let at = check_access(offset, data.len())?;
        let end = at + data.len();
        let command_before = self.u16_at(reg::COMMAND);
        let bar = self.bar_of_register(at);
        let bar_before = bar.and_then(|i| self.bar_region(i));
        for (i, &v) in data.iter().enumerate() {
            let (w, c) = (self.writable[at + i], self.clear[at + i]);
            let b = &mut self.bytes[at + i];
            *b = ((*b & !w) | (v & w)) & !(v & c);
        }
        let command = usize::from(reg::COMMAND);
        if at < command + 2 && end > command {
            let new = self.u16_at(reg::COMMAND);
            return Ok((new != command_before).then_some(ConfigEffect::Command {
                old: command_before,
                new,
            }));
        }
        if let (Some(before), Some(after)) = (bar_before, bar.and_then(|i| self.bar_region(i))) {
            if before.base != after.base {
                return Ok(Some(ConfigEffect::BarMoved {
                    index: after.index,
                    kind: after.kind,
                    size: after.size,
                    from: before.base,
                    to: after.base,
                }));
            }
        }
        Ok(None)
    }

    /// The byte at `offset` (0 past the end).
    pub fn u8_at(&self, offset: u16) -> u8 {
        self.bytes.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// The little-endian word at `offset` (bytes past the end read 0).
    pub fn u16_at(&self, offset: u16) -> u16 {
        u16::from_le_bytes([self.u8_at(offset), self.u8_at(offset.wrapping_add(1))])
    }

    /// The little-endian dword at `offset` (bytes past the end read 0).
    pub fn u32_at(&self, offset: u16) -> u32 {
        u32::from(self.u16_at(offset)) | u32::from(self.u16_at(offset.wrapping_add(2))) << 16
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(reg::COMMAND)
    }

    /// Sets status bits the device raises itself (e.g. [`status::INTERRUPT`] or an error bit),
    /// or clears them when `on` is false; the guest cannot write them except by RW1C.
    pub fn set_status(&mut self, bits: u16, on: bool) {
        let s = self.u16_at(reg::STATUS);
        let s = if on { s | bits } else { s & !bits };
        self.put(reg::STATUS, &s.to_le_bytes());
    }

    /// The BAR slot a register byte at `at` belongs to, as the index of the BAR's low dword.
    fn bar_of_register(&self, at: usize) -> Option<u8> {
        let first = usize::from(reg::BAR0);
        if !(first..first + 4 * usize::from(BAR_COUNT)).contains(&at) {
            return None;
        }
        let slot = ((at - first) / 4) as u8;
        match self.bars[usize::from(slot)] {
            BarSlot::Unused => None,
            BarSlot::Bar(_) => Some(slot),
            BarSlot::Upper => Some(slot - 1),
        }
    }

    /// Declares BAR `index`. The register starts at address 0 with only its address bits above
    /// the size writable.
    pub fn add_bar(&mut self, index: u8, bar: Bar) -> Result<(), ConfigError> {
        let wide = matches!(bar.kind, BarKind::Memory64 { .. });
        if index >= BAR_COUNT || (wide && index + 1 >= BAR_COUNT) {
            return Err(ConfigError::BarIndex(index));
        }
        let i = usize::from(index);
        if self.bars[i] != BarSlot::Unused || (wide && self.bars[i + 1] != BarSlot::Unused) {
            return Err(ConfigError::BarInUse(index));
        }
        let (min, max) = match bar.kind {
            BarKind::Io => (4, 256),
            BarKind::Memory32 { .. } => (16, 1 << 31),
            BarKind::Memory64 { .. } => (16, 1 << 63),
        };
        if !bar.size.is_power_of_two() || bar.size < min || bar.size > max {
            return Err(ConfigError::BarSize(bar.size));
        }
        let address_bits: u64 = match bar.kind {
            BarKind::Io => 0xffff,
            BarKind::Memory32 { .. } => 0xffff_ffff,
            BarKind::Memory64 { .. } => u64::MAX,
        };
        let writable = !(bar.size - 1) & address_bits & !u64::from(bar.kind.low_bits());
        let offset = reg::BAR0 + 4 * u16::from(index);
        self.put(offset, &bar.kind.type_bits().to_le_bytes());
        self.mask(offset, &(writable as u32).to_le_bytes(), &[0; 4]);
        self.bars[i] = BarSlot::Bar(bar);
        if wide {
            self.put(offset + 4, &[0; 4]);
            self.mask(
                offset + 4,
                &((writable >> 32) as u32).to_le_bytes(),
                &[0; 4],
            );
            self.bars[i + 1] = BarSlot::Upper;
        }
        Ok(())
    }

    /// BAR `index` as declared (`None` for an unused slot or the high half of a 64-bit BAR).
    pub fn bar(&self, index: u8) -> Option<Bar> {
        match self.bars.get(usize::from(index))? {
            BarSlot::Bar(b) => Some(*b),
            _ => None,
        }
    }

    /// Where BAR `index` points now (whether or not its decode bit is set).
    pub fn bar_region(&self, index: u8) -> Option<BarRegion> {
        let bar = self.bar(index)?;
        let offset = reg::BAR0 + 4 * u16::from(index);
        let low = u64::from(self.u32_at(offset) & !bar.kind.low_bits());
        let base = match bar.kind {
            BarKind::Memory64 { .. } => low | u64::from(self.u32_at(offset + 4)) << 32,
            _ => low,
        };
        Some(BarRegion {
            index,
            kind: bar.kind,
            base,
            size: bar.size,
        })
    }

    /// Where BAR `index` points if the function decodes it now (its command bit is set).
    pub fn decoded_bar(&self, index: u8) -> Option<BarRegion> {
        self.bar_region(index)
            .filter(|r| self.command() & r.kind.decode_bit() != 0)
    }

    /// Places BAR `index` at `base`, as firmware would before the OS runs.
    pub fn set_bar_base(&mut self, index: u8, base: u64) -> Result<(), ConfigError> {
        let bar = self.bar(index).ok_or(ConfigError::BarIndex(index))?;
        let limit = match bar.kind {
            BarKind::Io => 0x1_0000,
            BarKind::Memory32 { .. } => 1 << 32,
            BarKind::Memory64 { .. } => u64::MAX,
        };
        if base & (bar.size - 1) != 0 || base > limit - bar.size {
            return Err(ConfigError::BarBase(base));
        }
        let offset = reg::BAR0 + 4 * u16::from(index);
        let low = base as u32 | bar.kind.type_bits();
        self.put(offset, &low.to_le_bytes());
        if let BarKind::Memory64 { .. } = bar.kind {
            self.put(offset + 4, &((base >> 32) as u32).to_le_bytes());
        }
        Ok(())
    }

    /// Appends a capability with `id` to the list (PCI 3.0 §6.7): `body` is what follows its
    /// ID and next-pointer bytes, `writable` its write mask (empty: read-only). Returns its
    /// offset. Capabilities are placed dword-aligned from 0x40 in the order added.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<u8, ConfigError> {
        if !writable.is_empty() && writable.len() != body.len() {
            return Err(ConfigError::MaskLength);
        }
        let at = self.free_capability;
        let end = usize::from(at) + 2 + body.len();
        if end > usize::from(LEGACY_SIZE) {
            return Err(ConfigError::NoRoom);
        }
        self.put(at, &[id, 0]);
        self.put(at + 2, body);
        self.mask(at, &[0, 0], &[]);
        if !writable.is_empty() {
            self.mask(at + 2, writable, &[]);
        }
        // `at` is below LEGACY_SIZE, so it fits the 8-bit pointer.
        let pointer = at as u8;
        match self.last_capability {
            Some(last) => self.put(u16::from(last) + 1, &[pointer]),
            None => self.put(reg::CAPABILITIES, &[pointer]),
        }
        self.set_status(status::CAPABILITY_LIST, true);
        self.last_capability = Some(pointer);
        self.free_capability = ((end + 3) & !3) as u16;
        Ok(pointer)
    }

    /// Appends an extended capability (PCIe Base Spec §7.6.3: a dword header of ID, version and
    /// next offset) with `body` after the header and `writable` its mask. Returns its offset.
    pub fn add_extended_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<u16, ConfigError> {
        if !writable.is_empty() && writable.len() != body.len() {
            return Err(ConfigError::MaskLength);
        }
        let at = self.free_extended;
        let end = usize::from(at) + 4 + body.len();
        if end > usize::from(CONFIG_SIZE) {
            return Err(ConfigError::NoRoom);
        }
        let header = u32::from(id) | u32::from(version & 0xf) << 16;
        self.put(at, &header.to_le_bytes());
        self.put(at + 4, body);
        if !writable.is_empty() {
            self.mask(at + 4, writable, &[]);
        }
        if let Some(last) = self.last_extended {
            let h = self.u32_at(last) & 0x000f_ffff | u32::from(at) << 20;
            self.put(last, &h.to_le_bytes());
        }
        self.last_extended = Some(at);
        self.free_extended = ((end + 3) & !3) as u16;
        Ok(at)
    }

    /// The capability list as the guest walks it: (offset, ID) pairs.
    pub fn capabilities(&self) -> Capabilities<'_> {
        let first = if self.u16_at(reg::STATUS) & status::CAPABILITY_LIST != 0 {
            self.u8_at(reg::CAPABILITIES)
        } else {
            0
        };
        Capabilities {
            space: self,
            next: first,
            left: MAX_CAPABILITIES,
        }
    }

    /// The offset of the first capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<u8> {
        self.capabilities().find(|&(_, i)| i == id).map(|(o, _)| o)
    }

    /// The extended capability list: (offset, ID, version) triples.
    pub fn extended_capabilities(&self) -> ExtendedCapabilities<'_> {
        ExtendedCapabilities {
            space: self,
            next: FIRST_EXTENDED_CAPABILITY,
            left: MAX_EXTENDED_CAPABILITIES,
        }
    }
}

/// The most capabilities the 192 bytes after the header can hold (a walk stops there, so a
/// looping list — possible in a passed-through device's space — ends).
const MAX_CAPABILITIES: u32 = 48;
/// The most extended capabilities 3840 bytes can hold.
const MAX_EXTENDED_CAPABILITIES: u32 = 960;

/// Iterator over the capability list.
#[derive(Debug)]
pub struct Capabilities<'a> {
    space: &'a ConfigSpace,
    next: u8,
    left: u32,
}

impl Iterator for Capabilities<'_> {
    type Item = (u8, u8);
    fn next(&mut self) -> Option<(u8, u8)> {
        // The low two bits of a pointer are reserved (PCI 3.0 §6.7); pointers into the header
        // end the list.
        let at = self.next & !3;
        if at < FIRST_CAPABILITY || self.left == 0 {
            return None;
        }
        self.left -= 1;
        let id = self.space.u8_at(u16::from(at));
        self.next = self.space.u8_at(u16::from(at) + 1);
        Some((at, id))
    }
}

/// Iterator over the extended capability list.
#[derive(Debug)]
pub struct ExtendedCapabilities<'a> {
    space: &'a ConfigSpace,
    next: u16,
    left: u32,
}

impl Iterator for ExtendedCapabilities<'_> {
    type Item = (u16, u16, u8);
    fn next(&mut self) -> Option<(u16, u16, u8)> {
        let at = self.next & !3;
        if at < FIRST_EXTENDED_CAPABILITY || self.left == 0 {
            return None;
        }
        self.left -= 1;
        let h = self.space.u32_at(at);
        // A header of 0 at 0x100 means no extended capabilities (§7.6.3).
        if h == 0 {
            return None;
        }
        self.next = (h >> 20) as u16;
        Some((at, h as u16, (h >> 16) as u8 & 0xf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            revision: 1,
            class: ClassCode {
                class: 0x02,
                subclass: 0x00,
                prog_if: 0x00,
            },
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x0001,
            interrupt_pin: Some(IntxPin::A),
        }
    }

    fn rd(c: &ConfigSpace, offset: u16, len: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(offset, &mut b[..len]).unwrap();
        u32::from_le_bytes(b)
    }

    fn wr(c: &mut ConfigSpace, offset: u16, len: usize, v: u32) -> Option<ConfigEffect> {
        c.write(offset, &v.to_le_bytes()[..len]).unwrap()
    }

    #[test]
    fn header_registers_read_back_at_every_size() {
        let c = ConfigSpace::new(&header());
        assert_eq!(rd(&c, 0, 4), 0x1041_1af4);
        assert_eq!(rd(&c, 0, 2), 0x1af4);
        assert_eq!(rd(&c, 2, 2), 0x1041);
        assert_eq!(rd(&c, 1, 2), 0x411a, "a word inside the dword");
        assert_eq!(rd(&c, 3, 1), 0x10);
        assert_eq!(rd(&c, 8, 4), 0x0200_0001);
        assert_eq!(rd(&c, reg::SUBSYSTEM_VENDOR_ID, 4), 0x0001_1af4);
        assert_eq!(rd(&c, reg::INTERRUPT_PIN, 1), 1);
        assert_eq!(rd(&c, reg::HEADER_TYPE, 1), 0);
        // The extended space exists and is empty.
        assert_eq!(rd(&c, 0xffc, 4), 0);
        assert_eq!(c.extended_capabilities().count(), 0);
    }

    #[test]
    fn bad_accesses_are_errors() {
        let mut c = ConfigSpace::new(&header());
        let mut b = [0u8; 8];
        for len in [0, 3, 8] {
            assert_eq!(c.read(0, &mut b[..len]), Err(ConfigError::Size(len)));
            assert_eq!(c.write(0, &b[..len]), Err(ConfigError::Size(len)));
        }
        for (offset, len) in [(1, 4), (2, 4), (3, 2), (0x3f, 2), (0xff, 2)] {
            assert_eq!(
                c.read(offset, &mut b[..len]),
                Err(ConfigError::CrossesDword { offset })
            );
            assert_eq!(
                c.write(offset, &b[..len]),
                Err(ConfigError::CrossesDword { offset })
            );
        }
        for (offset, len) in [(0x1000, 1), (0x1000, 4), (0xffff, 1)] {
            assert_eq!(
                c.read(offset, &mut b[..len]),
                Err(ConfigError::OutOfRange { offset })
            );
        }
        assert!(c.read(0xfff, &mut b[..1]).is_ok());
        assert!(c.read(0xffe, &mut b[..2]).is_ok());
    }

    #[test]
    fn read_only_bits_stay_and_status_errors_clear_on_one() {
        let mut c = ConfigSpace::new(&header());
        // Identity, class, header type, pin, subsystem: writes do nothing.
        for offset in [0u16, 8, 0x0c, 0x2c, 0x30, 0x34] {
            let before = rd(&c, offset, 4);
            assert_eq!(wr(&mut c, offset, 4, 0xffff_ffff), None);
            let after = rd(&c, offset, 4);
            // Only the cache line size (byte 0x0c) is writable among these.
            let expect = if offset == 0x0c {
                before | 0xff
            } else {
                before
            };
            assert_eq!(after, expect, "offset {offset:#x}");
        }
        // Command: only the defined bits stick.
        assert_eq!(
            wr(&mut c, reg::COMMAND, 2, 0xffff),
            Some(ConfigEffect::Command {
                old: 0,
                new: command::WRITABLE
            })
        );
        assert_eq!(rd(&c, reg::COMMAND, 2), u32::from(command::WRITABLE));
        assert_eq!(
            wr(&mut c, reg::COMMAND, 2, u32::from(command::WRITABLE)),
            None
        );
        // A byte write of the command's high byte changes only that byte.
        wr(&mut c, reg::COMMAND + 1, 1, 0);
        assert_eq!(rd(&c, reg::COMMAND, 2), u32::from(command::WRITABLE & 0xff));
        // Status: the device raises an error and the interrupt bit; writing 0 keeps them,
        // writing 1 clears the error only.
        c.set_status(status::RECEIVED_MASTER_ABORT | status::INTERRUPT, true);
        wr(&mut c, reg::STATUS, 2, 0);
        assert_eq!(
            rd(&c, reg::STATUS, 2) as u16,
            status::RECEIVED_MASTER_ABORT | status::INTERRUPT
        );
        // A dword write at the command register with the status half all ones: the command
        // takes its bits, the status loses its error bit, keeps the read-only one.
        wr(
            &mut c,
            reg::COMMAND,
            4,
            0xffff_0000 | u32::from(command::MEMORY),
        );
        assert_eq!(rd(&c, reg::STATUS, 2) as u16, status::INTERRUPT);
        assert_eq!(c.command(), command::MEMORY);
        // Interrupt line is scratch.
        wr(&mut c, reg::INTERRUPT_LINE, 1, 0x0b);
        assert_eq!(rd(&c, reg::INTERRUPT_LINE, 2), 0x010b, "pin stays 1");
    }

    #[test]
    fn bar_probes_return_size_masks() {
        let mut c = ConfigSpace::new(&header());
        c.add_bar(
            0,
            Bar {
                kind: BarKind::Io,
                size: 32,
            },
        )
        .unwrap();
        c.add_bar(
            1,
            Bar {
                kind: BarKind::Memory32 {
                    prefetchable: false,
                },
                size: 0x1000,
            },
        )
        .unwrap();
        c.add_bar(
            2,
            Bar {
                kind: BarKind::Memory64 { prefetchable: true },
                size: 0x2_0000_0000,
            },
        )
        .unwrap();
        c.add_bar(
            4,
            Bar {
                kind: BarKind::Memory64 {
                    prefetchable: false,
                },
                size: 0x4000,
            },
        )
        .unwrap();
        // Before the probe: address 0 with the type bits.
        assert_eq!(rd(&c, 0x10, 4), 0x1);
        assert_eq!(rd(&c, 0x14, 4), 0x0);
        assert_eq!(rd(&c, 0x18, 4), 0xc);
        assert_eq!(rd(&c, 0x20, 4), 0x4);
        for offset in (0x10..0x28).step_by(4) {
            wr(&mut c, offset, 4, 0xffff_ffff);
        }
        assert_eq!(rd(&c, 0x10, 4), 0x0000_ffe1, "32 ports, 16-bit decode");
        assert_eq!(rd(&c, 0x14, 4), 0xffff_f000);
        assert_eq!(
            rd(&c, 0x18, 4),
            0x0000_000c,
            "8 GiB: the low dword has no address bits"
        );
        assert_eq!(rd(&c, 0x1c, 4), 0xffff_fffe);
        assert_eq!(rd(&c, 0x20, 4), 0xffff_c004);
        assert_eq!(rd(&c, 0x24, 4), 0xffff_ffff);
        // The size follows from the probe as an OS computes it.
        let lo = u64::from(rd(&c, 0x18, 4) & !0xf);
        let hi = u64::from(rd(&c, 0x1c, 4));
        assert_eq!((!(lo | hi << 32)).wrapping_add(1), 0x2_0000_0000);
        // Unused BAR slots and the ROM BAR read 0 even after all-ones writes.
        let mut d = ConfigSpace::new(&header());
        wr(&mut d, 0x10, 4, 0xffff_ffff);
        wr(&mut d, 0x30, 4, 0xffff_ffff);
        assert_eq!((rd(&d, 0x10, 4), rd(&d, 0x30, 4)), (0, 0));
        // Byte-wise probes see the same mask.
        let mut e = ConfigSpace::new(&header());
        e.add_bar(
            1,
            Bar {
                kind: BarKind::Memory32 {
                    prefetchable: false,
                },
                size: 0x1000,
            },
        )
        .unwrap();
        for i in 0..4 {
            wr(&mut e, 0x14 + i, 1, 0xff);
        }
        assert_eq!(rd(&e, 0x14, 4), 0xffff_f000);
        assert_eq!(rd(&e, 0x16, 2), 0xffff);
    }

    #[test]
    fn bar_declarations_are_checked() {
        let mut c = ConfigSpace::new(&header());
        let mem = |size| Bar {
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            size,
        };
        let wide = |size| Bar {
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
            size,
        };
        assert_eq!(c.add_bar(6, mem(16)), Err(ConfigError::BarIndex(6)));
        assert_eq!(c.add_bar(5, wide(16)), Err(ConfigError::BarIndex(5)));
        assert_eq!(c.add_bar(0, mem(8)), Err(ConfigError::BarSize(8)));
        assert_eq!(c.add_bar(0, mem(0x3000)), Err(ConfigError::BarSize(0x3000)));
        assert_eq!(
            c.add_bar(0, mem(1 << 32)),
            Err(ConfigError::BarSize(1 << 32))
        );
        assert_eq!(c.add_bar(0, mem(0)), Err(ConfigError::BarSize(0)));
        let io = |size| Bar {
            kind: BarKind::Io,
            size,
        };
        assert_eq!(c.add_bar(0, io(2)), Err(ConfigError::BarSize(2)));
        assert_eq!(c.add_bar(0, io(512)), Err(ConfigError::BarSize(512)));
        c.add_bar(1, wide(0x1000)).unwrap();
        assert_eq!(c.add_bar(1, mem(16)), Err(ConfigError::BarInUse(1)));
        assert_eq!(
            c.add_bar(2, mem(16)),
            Err(ConfigError::BarInUse(2)),
            "the high half"
        );
        assert_eq!(c.add_bar(0, wide(16)), Err(ConfigError::BarInUse(0)));
        assert_eq!(c.bar(2), None);
        assert_eq!(c.bar(1), Some(wide(0x1000)));
        assert_eq!(c.set_bar_base(1, 0x1800), Err(ConfigError::BarBase(0x1800)));
        assert_eq!(c.set_bar_base(3, 0), Err(ConfigError::BarIndex(3)));
        c.add_bar(3, mem(0x1000)).unwrap();
        assert_eq!(c.set_bar_base(3, 0xffff_f000), Ok(()));
        assert_eq!(
            c.set_bar_base(3, 0x1_0000_0000),
            Err(ConfigError::BarBase(0x1_0000_0000))
        );
        c.add_bar(0, io(16)).unwrap();
        assert_eq!(
            c.set_bar_base(0, 0x1_0000),
            Err(ConfigError::BarBase(0x1_0000))
        );
        assert_eq!(c.set_bar_base(0, 0xfff0), Ok(()));
        assert_eq!(rd(&c, 0x10, 4), 0xfff1);
    }

    #[test]
    fn bar_relocation_is_reported() {
        let mut c = ConfigSpace::new(&header());
        let kind = BarKind::Memory64 {
            prefetchable: false,
        };
        c.add_bar(2, Bar { kind, size: 0x4000 }).unwrap();
        c.add_bar(
            0,
            Bar {
                kind: BarKind::Io,
                size: 16,
            },
        )
        .unwrap();
        c.set_bar_base(2, 0xfe00_0000).unwrap();
        assert_eq!(c.decoded_bar(2), None, "memory decode is off");
        assert_eq!(
            wr(&mut c, reg::COMMAND, 2, u32::from(command::MEMORY)),
            Some(ConfigEffect::Command {
                old: 0,
                new: command::MEMORY
            })
        );
        assert_eq!(
            c.decoded_bar(2),
            Some(BarRegion {
                index: 2,
                kind,
                base: 0xfe00_0000,
                size: 0x4000
            })
        );
        assert_eq!(c.decoded_bar(0), None, "I/O decode is off");
        // The low dword moves it, then the high dword.
        assert_eq!(
            wr(&mut c, 0x18, 4, 0xfd00_4000),
            Some(ConfigEffect::BarMoved {
                index: 2,
                kind,
                size: 0x4000,
                from: 0xfe00_0000,
                to: 0xfd00_4000
            })
        );
        assert_eq!(
            wr(&mut c, 0x1c, 4, 0x8),
            Some(ConfigEffect::BarMoved {
                index: 2,
                kind,
                size: 0x4000,
                from: 0xfd00_4000,
                to: 0x8_fd00_4000
            })
        );
        // Bits below the size are not address bits: writing them moves nothing.
        assert_eq!(wr(&mut c, 0x18, 4, 0xfd00_4fff), None);
        assert_eq!(c.bar_region(2).unwrap().base, 0x8_fd00_4000);
        // A byte write to an I/O BAR moves it too.
        assert_eq!(
            wr(&mut c, 0x11, 1, 0xc0),
            Some(ConfigEffect::BarMoved {
                index: 0,
                kind: BarKind::Io,
                size: 16,
                from: 0,
                to: 0xc000
            })
        );
        // Writes outside BARs and command report nothing.
        assert_eq!(wr(&mut c, reg::CACHE_LINE_SIZE, 1, 0x10), None);
    }

    #[test]
    fn capability_chain_walks_in_order() {
        let mut c = ConfigSpace::new(&header());
        assert_eq!(c.capabilities().count(), 0);
        assert_eq!(rd(&c, reg::STATUS, 2) as u16 & status::CAPABILITY_LIST, 0);
        // Vendor-specific (0x09) with 3 body bytes → 5 bytes, the next one is rounded up.
        let a = c.add_capability(0x09, &[3, 0xaa, 0xbb], &[]).unwrap();
        let b = c.add_capability(0x05, &[0; 12], &[0xff; 12]).unwrap();
        let d = c.add_capability(0x10, &[0; 2], &[]).unwrap();
        assert_eq!((a, b, d), (0x40, 0x48, 0x58));
        assert_eq!(rd(&c, reg::CAPABILITIES, 1), 0x40);
        assert_ne!(rd(&c, reg::STATUS, 2) as u16 & status::CAPABILITY_LIST, 0);
        let chain: Vec<(u8, u8)> = c.capabilities().collect();
        assert_eq!(chain, vec![(0x40, 0x09), (0x48, 0x05), (0x58, 0x10)]);
        assert_eq!(rd(&c, 0x41, 1), 0x48);
        assert_eq!(rd(&c, 0x59, 1), 0, "the last one ends the list");
        assert_eq!(c.find_capability(0x05), Some(0x48));
        assert_eq!(c.find_capability(0x11), None);
        // ID and next are read-only; the body is as writable as declared.
        wr(&mut c, 0x40, 4, 0xffff_ffff);
        assert_eq!(rd(&c, 0x40, 4), 0xaa03_4809);
        wr(&mut c, 0x48, 4, 0xffff_ffff);
        assert_eq!(rd(&c, 0x48, 4), 0xffff_5805);
        // Bad masks and overflow are refused; the list is unchanged by a refusal.
        assert_eq!(
            c.add_capability(0x09, &[1, 2], &[0xff]),
            Err(ConfigError::MaskLength)
        );
        assert_eq!(
            c.add_capability(0x09, &[0; 0xa6], &[]),
            Err(ConfigError::NoRoom)
        );
        let e = c.add_capability(0x09, &[0; 0xa2], &[]).unwrap();
        assert_eq!(e, 0x5c);
        assert_eq!(c.add_capability(0x09, &[], &[]), Err(ConfigError::NoRoom));
        assert_eq!(c.capabilities().count(), 4);
    }

    #[test]
    fn capability_walks_end_on_loops_and_bad_pointers() {
        let mut c = ConfigSpace::new(&header());
        c.add_capability(0x09, &[2], &[]).unwrap();
        // A device whose list loops (as a passed-through device's could) still ends.
        c.init_register(0x41, &[0x40], &[], &[]).unwrap();
        assert_eq!(c.capabilities().count(), MAX_CAPABILITIES as usize);
        // Pointers into the header end the list; reserved low bits are ignored.
        c.init_register(0x41, &[0x3c], &[], &[]).unwrap();
        assert_eq!(c.capabilities().count(), 1);
        c.init_register(0x41, &[0x43], &[], &[]).unwrap();
        let mut it = c.capabilities();
        assert_eq!(it.next(), Some((0x40, 0x09)));
        assert_eq!(it.next(), Some((0x40, 0x09)));
    }

    #[test]
    fn extended_capabilities_chain() {
        let mut c = ConfigSpace::new(&header());
        let a = c
            .add_extended_capability(0x000b, 1, &[1, 2, 3, 4], &[])
            .unwrap();
        let b = c
            .add_extended_capability(0x0010, 2, &[0; 6], &[0xff; 6])
            .unwrap();
        assert_eq!((a, b), (0x100, 0x108));
        assert_eq!(rd(&c, 0x100, 4), 0x1081_000b);
        let chain: Vec<_> = c.extended_capabilities().collect();
        assert_eq!(chain, vec![(0x100, 0x000b, 1), (0x108, 0x0010, 2)]);
        // Headers are read-only.
        wr(&mut c, 0x100, 4, 0);
        assert_eq!(c.extended_capabilities().count(), 2);
        assert_eq!(
            c.add_extended_capability(1, 1, &[0; 0xeec], &[]),
            Err(ConfigError::NoRoom)
        );
        assert!(c.add_extended_capability(1, 1, &[0; 0xee8], &[]).is_ok());
    }

    #[test]
    fn init_register_sets_custom_masks() {
        let mut c = ConfigSpace::new(&header());
        c.init_register(0x80, &[0x0f, 0xf0], &[0xff, 0x00], &[0x00, 0xf0])
            .unwrap();
        wr(&mut c, 0x80, 2, 0x3055);
        assert_eq!(rd(&c, 0x80, 2), 0xc055);
        assert_eq!(
            c.init_register(0xffe, &[0; 4], &[], &[]),
            Err(ConfigError::OutOfRange { offset: 0xffe })
        );
        assert_eq!(
            c.init_register(0x80, &[0; 2], &[0], &[]),
            Err(ConfigError::MaskLength)
        );
        // A device can make a standard register read-only (a host bridge's command).
        c.init_register(reg::COMMAND, &[0, 0], &[], &[]).unwrap();
        assert_eq!(wr(&mut c, reg::COMMAND, 2, 0xffff), None);
        assert_eq!(c.command(), 0);
    }
}
