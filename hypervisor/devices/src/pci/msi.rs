//! The host's MSI and MSI-X, rewritten into remappable form (Intel VT-d spec §5.1.5.2).
//!
//! With compatibility-format interrupts blocked, a host device's interrupt reaches a core only
//! through an IRTE. The host does not know that: it programs compatibility-format messages
//! into its devices' MSI capabilities and MSI-X tables. atoll traps those writes, keeps what the
//! host wrote as a *shadow* (every read returns it — the host never sees a remappable value),
//! and writes the device the remappable message of an IRTE the caller points at the host's
//! interrupt. This module decides *what* to write; the caller does the physical accesses.
//!
//! * [`walk_capabilities`]: finds a function's MSI and MSI-X capabilities in its configuration
//!   space through a read closure, bounded against malformed lists.
//! * [`MsiShadow`]: one function's MSI capability, trapped in configuration space.
//! * [`MsixShadow`]: one function's MSI-X table, trapped on its page(s).
//!
//! **API: one step, with a [`Remapper`].** A write method takes the host's access and a
//! `&mut impl Remapper`; when the host's message for a source (MSI: 0, MSI-X: the entry
//! number) becomes a new valid interrupt, it calls [`Remapper::program`], which points the
//! source's IRTE at it (and invalidates the interrupt entry cache) and returns the IRTE's
//! handle — or `None` to refuse, having left the source's IRTE not present (the source is then
//! blocked). When the message becomes
//! undeliverable it calls [`Remapper::block`] (make the IRTE not present). It returns the
//! physical writes to make, in order ([`WriteList`]). A callback rather than a
//! request/apply pair means the caller cannot forget the second half and leave the device
//! pointing at a stale entry.
//!
//! **Multiple-message MSI is refused**: the shadow's Multiple Message Capable field reads 0
//! (one vector), so a host following the PCI specification never enables more than one, and
//! Multiple Message Enable is written 0 to the device whatever the host writes. Linux uses
//! one MSI vector for nearly every device (and MSI-X where it wants more). Extended message
//! data (PCI 4.0) is hidden the same way.

use iommu::irte::IrteIndex;
use iommu::remap::{Interrupt, RemapError, RemappableMsi};

/// Configuration-space capability IDs (PCI Local Bus Specification 3.0, Appendix H).
pub mod cap_id {
    /// MSI.
    pub const MSI: u8 = 0x05;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Most capabilities followed before the walk gives up (the bound Linux uses, 48).
pub const MAX_CAPABILITIES: usize = 48;

/// The caller's side of remapping: where the IRTE of an interrupt source goes.
pub trait Remapper {
    /// The host's interrupt for `source` is now `interrupt`: point the source's IRTE at it
    /// (setting it present, and invalidating the interrupt entry cache) and return the IRTE's
    /// handle; `None` refuses it (policy, table full) — the caller then leaves the source's IRTE
    /// not present, so the source is blocked.
    fn program(&mut self, source: u16, interrupt: &Interrupt) -> Option<IrteIndex>;
    /// The host's interrupt for `source` cannot be delivered: make its IRTE not present.
    fn block(&mut self, source: u16, reason: RemapError);
}

/// A short list of physical writes, in the order to make them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteList<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy + Default, const N: usize> Default for WriteList<T, N> {
    fn default() -> Self {
        Self {
            items: [T::default(); N],
            len: 0,
        }
    }
}

impl<T: Copy + Default, const N: usize> WriteList<T, N> {
    /// Appends; callers size `N` for the longest sequence they build, so nothing is lost (a
    /// full list drops the write, which a test would catch as a missing effect).
    pub fn push(&mut self, item: T) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = item;
            self.len += 1;
        }
    }

    /// The writes.
    pub fn as_slice(&self) -> &[T] {
        &self.items[..self.len]
    }

    /// No writes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One physical write: `size` bytes (1, 2 or 4) of `value` at `offset` (from the capability
/// for MSI, from the table for MSI-X).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysWrite {
    /// Byte offset.
    pub offset: u32,
    /// Bytes.
    pub size: u8,
    /// Value (low `size` bytes).
    pub value: u32,
}

/// What a read returns: the shadow's bits, and which bits come from the device instead (the
/// caller reads the same offset and size physically when `from_device` is not 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    /// The shadow's bits (0 where `from_device` is set).
    pub shadow: u32,
    /// Bits to take from the device.
    pub from_device: u32,
}

impl ReadPlan {
    /// Whether the caller must read the device.
    pub fn needs_device(&self) -> bool {
        self.from_device != 0
    }

    /// The value the host sees, given the device's value (ignored when not needed).
    pub fn complete(&self, device: u32) -> u32 {
        self.shadow | (device & self.from_device)
    }
}

/// A function's MSI capability (PCI 3.0 §6.8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCap {
    /// Configuration-space offset.
    pub offset: u8,
    /// Message Control as found.
    pub control: u16,
}

impl MsiCap {
    /// 64-bit address capable (control bit 7).
    pub fn is_64(&self) -> bool {
        self.control & msi_control::ADDRESS_64 != 0
    }

    /// Per-vector masking capable (control bit 8).
    pub fn per_vector_mask(&self) -> bool {
        self.control & msi_control::PER_VECTOR_MASK != 0
    }

    /// Multiple Message Capable: log2 of the vectors the function can use (control 3:1).
    pub fn multiple_capable(&self) -> u8 {
        ((self.control >> 1) & 7) as u8
    }

    /// Offset of Message Data from the capability.
    pub fn data_offset(&self) -> u32 {
        if self.is_64() {
            0x0c
        } else {
            0x08
        }
    }

    /// Offset of Mask Bits, when per-vector masking exists.
    pub fn mask_offset(&self) -> Option<u32> {
        self.per_vector_mask().then_some(self.data_offset() + 4)
    }

    /// Bytes of the capability.
    pub fn len(&self) -> u32 {
        self.data_offset() + 4 + if self.per_vector_mask() { 8 } else { 0 }
    }

    /// Never empty (the method exists for clippy's `len` convention).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// MSI Message Control bits.
pub mod msi_control {
    /// MSI enable.
    pub const ENABLE: u16 = 1 << 0;
    /// Multiple Message Capable, 3:1.
    pub const MMC: u16 = 7 << 1;
    /// Multiple Message Enable, 6:4.
    pub const MME: u16 = 7 << 4;
    /// 64-bit address capable.
    pub const ADDRESS_64: u16 = 1 << 7;
    /// Per-vector masking capable.
    pub const PER_VECTOR_MASK: u16 = 1 << 8;
    /// Extended message data capable (PCI 4.0).
    pub const EXT_DATA_CAPABLE: u16 = 1 << 9;
    /// Extended message data enable.
    pub const EXT_DATA_ENABLE: u16 = 1 << 10;
}

/// A function's MSI-X capability (PCI 3.0 §6.8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Configuration-space offset.
    pub offset: u8,
    /// Entries in the table (1–2048).
    pub table_size: u16,
    /// BAR holding the table (BIR).
    pub table_bar: u8,
    /// The table's offset in that BAR.
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// The PBA's offset in that BAR.
    pub pba_offset: u32,
}

/// What the walk found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The MSI capability, if any.
    pub msi: Option<MsiCap>,
    /// The MSI-X capability, if any.
    pub msix: Option<MsixCap>,
}

/// Why a capability walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapWalkError {
    /// A pointer below 0x40 (into the header), or to a capability that does not end inside
    /// the 256-byte space.
    BadPointer(u8),
    /// A pointer back to a capability already visited.
    Loop(u8),
    /// More than [`MAX_CAPABILITIES`].
    TooMany,
    /// A BIR that names no BAR (6 or 7).
    BadBir(u8),
}

/// Walks the capability list of a type-0 function. `read` returns the configuration dword at
/// a dword-aligned offset below 0x100. The pointer's two low bits are reserved and masked off,
/// as the PCI specification (§6.7) asks of software, so every pointer followed is dword
/// aligned; pointers into the header, revisits and overlong lists are errors, never hangs.
/// A function whose Status register has no Capabilities List bit has no capabilities.
pub fn walk_capabilities(mut read: impl FnMut(u8) -> u32) -> Result<Capabilities, CapWalkError> {
    let mut found = Capabilities::default();
    // Status (0x06) bit 4.
    if read(0x04) & (1 << 20) == 0 {
        return Ok(found);
    }
    let mut visited = [false; 64];
    let mut ptr = (read(0x34) & 0xfc) as u8;
    let mut count = 0;
    while ptr != 0 {
        if ptr < 0x40 {
            return Err(CapWalkError::BadPointer(ptr));
        }
        let slot = usize::from(ptr / 4);
        if visited[slot] {
            return Err(CapWalkError::Loop(ptr));
        }
        visited[slot] = true;
        count += 1;
        if count > MAX_CAPABILITIES {
            return Err(CapWalkError::TooMany);
        }
        let header = read(ptr);
        match header as u8 {
            cap_id::MSI if found.msi.is_none() => {
                let cap = MsiCap {
                    offset: ptr,
                    control: (header >> 16) as u16,
                };
                if u32::from(ptr) + cap.len() > 0x100 {
                    return Err(CapWalkError::BadPointer(ptr));
                }
                found.msi = Some(cap);
            }
            cap_id::MSIX if found.msix.is_none() => {
                // The capability is 12 bytes: it must end inside the 256-byte space.
                if ptr > 0xf4 {
                    return Err(CapWalkError::BadPointer(ptr));
                }
                let table = read(ptr + 4);
                let pba = read(ptr + 8);
                let table_bar = (table & 7) as u8;
                let pba_bar = (pba & 7) as u8;
                if table_bar > 5 {
                    return Err(CapWalkError::BadBir(table_bar));
                }
                if pba_bar > 5 {
                    return Err(CapWalkError::BadBir(pba_bar));
                }
                found.msix = Some(MsixCap {
                    offset: ptr,
                    table_size: ((header >> 16) & 0x7ff) as u16 + 1,
                    table_bar,
                    table_offset: table & !7,
                    pba_bar,
                    pba_offset: pba & !7,
                });
            }
            _ => {}
        }
        ptr = ((header >> 8) & 0xfc) as u8;
    }
    Ok(found)
}

/// Why a trapped access was refused (the caller drops the write or reads all ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// An access outside the structure, of a size not allowed, or crossing a dword (MSI) or
    /// not naturally aligned (MSI-X).
    Access {
        /// Offset from the structure.
        offset: u32,
        /// Bytes.
        size: u8,
    },
}

/// What the host's message currently is for one source, as last acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The host has not completed a message yet.
    Unprogrammed,
    /// Remapped through this handle.
    Programmed(Interrupt, IrteIndex),
    /// The caller refused this interrupt.
    Refused(Interrupt),
    /// The host's message cannot be remapped, for this reason.
    Invalid(RemapError),
}

/// One function's MSI capability as the host sees it, and what the device must hold instead.
///
/// Offsets are from the capability; the caller routes configuration accesses that fall in
/// `[cap.offset, cap.offset + cap.len())` here and adds `cap.offset` to the returned writes.
#[derive(Clone, Debug)]
pub struct MsiShadow {
    cap: MsiCap,
    /// The host's bytes of the capability (ID and next pointer, mask and pending bits are read
    /// from the device, not from here).
    shadow: [u8; 24],
    state: State,
    /// The remappable message the device holds, once atoll wrote one (until then, whatever
    /// the firmware left).
    physical: Option<RemappableMsi>,
    /// The enable bit the device holds.
    physical_enable: bool,
}

impl MsiShadow {
    /// The shadow of `cap`, starting from the values the host would read now (`read` gives
    /// the device's dword at a capability offset, as in [`walk_capabilities`]).
    pub fn new(cap: MsiCap, mut read: impl FnMut(u32) -> u32) -> Self {
        let mut shadow = [0u8; 24];
        for d in 0..(cap.len() / 4) {
            let v = read(d * 4);
            shadow[(d * 4) as usize..(d * 4 + 4) as usize].copy_from_slice(&v.to_le_bytes());
        }
        let mut s = Self {
            cap,
            shadow,
            state: State::Unprogrammed,
            physical: None,
            physical_enable: read(0) & (u32::from(msi_control::ENABLE) << 16) != 0,
        };
        // The host sees one vector and no extended data; what it wrote of them is dropped.
        let control = s.control()
            & !(msi_control::MMC
                | msi_control::MME
                | msi_control::EXT_DATA_CAPABLE
                | msi_control::EXT_DATA_ENABLE);
        s.shadow[2..4].copy_from_slice(&control.to_le_bytes());
        // Message bytes keep only what the host could have written: address bits 1:0 and the
        // hidden extended data read 0.
        for off in 4..cap.len() {
            if !s.device_byte(off) {
                s.shadow[off as usize] &= s.writable(off);
            }
        }
        s
    }

    /// The capability.
    pub fn cap(&self) -> &MsiCap {
        &self.cap
    }

    fn control(&self) -> u16 {
        u16::from_le_bytes([self.shadow[2], self.shadow[3]])
    }

    fn dword(&self, off: u32) -> u32 {
        let o = off as usize;
        u32::from_le_bytes([
            self.shadow[o],
            self.shadow[o + 1],
            self.shadow[o + 2],
            self.shadow[o + 3],
        ])
    }

    /// The host's message: address (with the upper half) and data.
    pub fn host_message(&self) -> (u64, u32) {
        let hi = if self.cap.is_64() {
            u64::from(self.dword(8))
        } else {
            0
        };
        let lo = u64::from(self.dword(4));
        let data = self.dword(self.cap.data_offset()) & 0xffff;
        (hi << 32 | lo, data)
    }

    /// Whether the host has MSI enabled.
    pub fn host_enabled(&self) -> bool {
        self.control() & msi_control::ENABLE != 0
    }

    /// The handle the device's message carries, if atoll programmed one.
    pub fn handle(&self) -> Option<IrteIndex> {
        self.physical
            .and_then(|m| RemappableMsi::decode(m.address))
            .map(|(h, _)| h)
    }

    /// Per byte of the capability: the bits the host can write (0 where the host cannot, or
    /// where the byte belongs to the device: ID, next, mask, pending).
    fn writable(&self, off: u32) -> u8 {
        let data = self.cap.data_offset();
        match off {
            // Control: only Enable (MME and extended data are refused, the rest read-only).
            2 => msi_control::ENABLE as u8,
            // Address low: bits 1:0 are hardwired 0.
            4 => 0xfc,
            5..=7 => 0xff,
            8..=11 if self.cap.is_64() => 0xff,
            // Message data, 16 bits (extended data above it hidden).
            o if o == data || o == data + 1 => 0xff,
            _ => 0,
        }
    }

    /// Bytes answered by the device.
    fn device_byte(&self, off: u32) -> bool {
        off < 2
            || self
                .cap
                .mask_offset()
                .is_some_and(|m| off >= m && off < m + 8)
    }

    fn check(&self, offset: u32, size: u8) -> Result<(), AccessError> {
        let ok = matches!(size, 1 | 2 | 4)
            && offset
                .checked_add(u32::from(size))
                .is_some_and(|end| end <= self.cap.len())
            && offset / 4 == (offset + u32::from(size) - 1) / 4;
        if ok {
            Ok(())
        } else {
            Err(AccessError::Access { offset, size })
        }
    }

    /// A host read of `size` bytes at `offset`: the shadow, except ID, next pointer, mask and
    /// pending bits, which the device answers.
    pub fn read(&self, offset: u32, size: u8) -> Result<ReadPlan, AccessError> {
        self.check(offset, size)?;
        let mut plan = ReadPlan {
            shadow: 0,
            from_device: 0,
        };
        for i in 0..u32::from(size) {
            let off = offset + i;
            if self.device_byte(off) {
                plan.from_device |= 0xff << (8 * i);
            } else {
                plan.shadow |= u32::from(self.shadow[off as usize]) << (8 * i);
            }
        }
        Ok(plan)
    }

    /// A host write of `size` bytes of `value` at `offset`: updates the shadow, asks `remap`
    /// for the IRTE when the message changed, and returns the physical writes (offsets from the
    /// capability): message first (address low, high, data), then control. Mask-bit writes pass
    /// through; pending bits are read-only.
    pub fn write(
        &mut self,
        offset: u32,
        size: u8,
        value: u32,
        remap: &mut impl Remapper,
    ) -> Result<WriteList<PhysWrite, 4>, AccessError> {
        self.check(offset, size)?;
        let mut out = WriteList::default();
        if let Some(m) = self.cap.mask_offset() {
            if offset >= m && offset < m + 4 {
                out.push(PhysWrite {
                    offset,
                    size,
                    value,
                });
                return Ok(out);
            }
        }
        let mut message_touched = false;
        let mut control_touched = false;
        for i in 0..u32::from(size) {
            let off = offset + i;
            let mask = self.writable(off);
            if mask == 0 {
                continue;
            }
            let byte = (value >> (8 * i)) as u8;
            let o = off as usize;
            self.shadow[o] = (self.shadow[o] & !mask) | (byte & mask);
            if off < 4 {
                control_touched = true;
            } else {
                message_touched = true;
            }
        }
        if message_touched {
            self.update_message(remap);
        }
        if let State::Programmed(_, h) = self.state {
            let msg = RemappableMsi::single(h);
            if self.physical != Some(msg) {
                self.push_message(&mut out, msg);
            }
        }
        // Once atoll wrote a remappable message the device may be enabled: whatever it sends
        // goes through an IRTE (present or not). Before, it may hold anything (a firmware's
        // compatibility-format message), so it stays disabled.
        let want_enable = self.host_enabled() && self.physical.is_some();
        if control_touched || want_enable != self.physical_enable {
            self.physical_enable = want_enable;
            out.push(PhysWrite {
                offset: 2,
                size: 2,
                value: u32::from(want_enable),
            });
        }
        Ok(out)
    }

    fn push_message(&mut self, out: &mut WriteList<PhysWrite, 4>, msg: RemappableMsi) {
        out.push(PhysWrite {
            offset: 4,
            size: 4,
            value: msg.address,
        });
        if self.cap.is_64() {
            out.push(PhysWrite {
                offset: 8,
                size: 4,
                value: 0,
            });
        }
        out.push(PhysWrite {
            offset: self.cap.data_offset(),
            size: 2,
            value: msg.data,
        });
        self.physical = Some(msg);
    }

    fn update_message(&mut self, remap: &mut impl Remapper) {
        let (address, data) = self.host_message();
        let decoded = Interrupt::from_msi(address, data);
        self.state = match (decoded, self.state) {
            (Ok(i), State::Programmed(old, h)) if old == i => State::Programmed(old, h),
            (Ok(i), _) => match remap.program(0, &i) {
                Some(h) => State::Programmed(i, h),
                None => State::Refused(i),
            },
            // Already blocked for this reason: the IRTE is not present, nothing to do.
            (Err(e), State::Invalid(old)) if old == e => State::Invalid(e),
            (Err(e), _) => {
                remap.block(0, e);
                State::Invalid(e)
            }
        };
    }
}

/// Bytes of one MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u32 = 16;
/// Vector control bit 0: masked.
pub const MSIX_MASKED: u32 = 1;

/// One table entry as the host wrote it, and what the device holds.
#[derive(Clone, Copy, Debug)]
struct MsixSlot {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
    /// The host wrote the address (low dword) since reset.
    address_written: bool,
    /// The host wrote the data since reset.
    data_written: bool,
    state: State,
    /// The remappable message the device holds (atoll wrote it).
    physical: Option<RemappableMsi>,
    /// The device's mask bit.
    physical_masked: bool,
}

impl Default for MsixSlot {
    fn default() -> Self {
        // Reset state (PCI 3.0 §6.8.2.9): masked; the device is assumed masked too, and atoll
        // keeps it so until it holds a remappable message.
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: MSIX_MASKED,
            address_written: false,
            data_written: false,
            state: State::Unprogrammed,
            physical: None,
            physical_masked: true,
        }
    }
}

/// One function's MSI-X table as the host sees it, and what the device must hold instead.
///
/// The caller traps the page(s) holding the table and routes accesses inside
/// `[table_offset, table_offset + 16 × table_size)` of the table's BAR here, with offsets from
/// the table; accesses to the PBA (and anything else on those pages) go to the device.
///
/// An entry reaches the device only in remappable form, and only once the host has written
/// both its address and its data (Linux writes address low, address high, data, then clears
/// the mask bit — with the entry masked while it changes, as PCI 3.0 §6.8.2.9 asks). The
/// device's mask bit is the host's mask bit, or set while the entry has no deliverable
/// message. Reads return the host's values.
#[derive(Clone, Debug)]
pub struct MsixShadow {
    cap: MsixCap,
    slots: alloc::vec::Vec<MsixSlot>,
}

impl MsixShadow {
    /// The table of `cap` in its reset state (every entry masked).
    pub fn new(cap: MsixCap) -> Self {
        let n = usize::from(cap.table_size.clamp(1, 2048));
        Self {
            cap,
            slots: alloc::vec![MsixSlot::default(); n],
        }
    }

    /// The capability.
    pub fn cap(&self) -> &MsixCap {
        &self.cap
    }

    /// Bytes of the table.
    pub fn table_len(&self) -> u32 {
        self.slots.len() as u32 * MSIX_ENTRY_SIZE
    }

    /// The handle entry `n`'s device message carries, if atoll wrote one.
    pub fn handle(&self, n: u16) -> Option<IrteIndex> {
        let slot = self.slots.get(usize::from(n))?;
        slot.physical
            .and_then(|m| RemappableMsi::decode(m.address))
            .map(|(h, _)| h)
    }

    fn check(&self, offset: u32, size: u8) -> Result<(), AccessError> {
        let ok = matches!(size, 4 | 8)
            && offset & (u32::from(size) - 1) == 0
            && offset
                .checked_add(u32::from(size))
                .is_some_and(|end| end <= self.table_len());
        if ok {
            Ok(())
        } else {
            Err(AccessError::Access { offset, size })
        }
    }

    /// A host read of 4 or 8 bytes (naturally aligned) inside the table: the shadow.
    pub fn read(&self, offset: u32, size: u8) -> Result<u64, AccessError> {
        self.check(offset, size)?;
        let mut v = 0u64;
        for d in 0..u32::from(size) / 4 {
            let off = offset + d * 4;
            let slot = &self.slots[(off / MSIX_ENTRY_SIZE) as usize];
            let dword = match off % MSIX_ENTRY_SIZE {
                0 => slot.addr_lo,
                4 => slot.addr_hi,
                8 => slot.data,
                _ => slot.ctrl,
            };
            v |= u64::from(dword) << (32 * d);
        }
        Ok(v)
    }

    /// A host write of 4 or 8 bytes (naturally aligned) inside the table: updates the shadow,
    /// asks `remap` for entry `n`'s IRTE when its message changed, and returns the device
    /// writes (dwords, offsets from the table): the entry masked first if it changes while
    /// the device has it unmasked, the message, then the mask bit.
    pub fn write(
        &mut self,
        offset: u32,
        size: u8,
        value: u64,
        remap: &mut impl Remapper,
    ) -> Result<WriteList<PhysWrite, 5>, AccessError> {
        self.check(offset, size)?;
        let n = (offset / MSIX_ENTRY_SIZE) as usize;
        let mut message_touched = false;
        {
            let slot = &mut self.slots[n];
            for d in 0..u32::from(size) / 4 {
                let dword = (value >> (32 * d)) as u32;
                match (offset + d * 4) % MSIX_ENTRY_SIZE {
                    0 => {
                        // A message is a dword write: address bits 1:0 are 0.
                        slot.addr_lo = dword & !3;
                        slot.address_written = true;
                        message_touched = true;
                    }
                    4 => {
                        slot.addr_hi = dword;
                        message_touched = true;
                    }
                    8 => {
                        slot.data = dword;
                        slot.data_written = true;
                        message_touched = true;
                    }
                    // Vector control: bit 0 is the mask; the others are reserved (read 0).
                    _ => slot.ctrl = dword & MSIX_MASKED,
                }
            }
        }
        let entry = n as u16;
        let slot = &mut self.slots[n];
        if message_touched && slot.address_written && slot.data_written {
            let address = u64::from(slot.addr_hi) << 32 | u64::from(slot.addr_lo);
            let decoded = Interrupt::from_msi(address, slot.data);
            slot.state = match (decoded, slot.state) {
                (Ok(i), State::Programmed(old, h)) if old == i => State::Programmed(old, h),
                (Ok(i), _) => match remap.program(entry, &i) {
                    Some(h) => State::Programmed(i, h),
                    None => State::Refused(i),
                },
                (Err(e), State::Invalid(old)) if old == e => State::Invalid(e),
                (Err(e), _) => {
                    remap.block(entry, e);
                    State::Invalid(e)
                }
            };
        }
        let base = n as u32 * MSIX_ENTRY_SIZE;
        let mut out = WriteList::default();
        let target = match slot.state {
            State::Programmed(_, h) => Some(RemappableMsi::single(h)),
            _ => None,
        };
        let want_masked = slot.ctrl & MSIX_MASKED != 0 || target.is_none();
        if let Some(msg) = target.filter(|m| slot.physical != Some(*m)) {
            if !slot.physical_masked {
                out.push(PhysWrite {
                    offset: base + 12,
                    size: 4,
                    value: MSIX_MASKED,
                });
                slot.physical_masked = true;
            }
            for (off, v) in [(0, msg.address), (4, 0), (8, msg.data)] {
                out.push(PhysWrite {
                    offset: base + off,
                    size: 4,
                    value: v,
                });
            }
            slot.physical = Some(msg);
        }
        if want_masked != slot.physical_masked {
            out.push(PhysWrite {
                offset: base + 12,
                size: 4,
                value: u32::from(want_masked),
            });
            slot.physical_masked = want_masked;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use iommu::irte::{DeliveryMode, DestMode, TriggerMode};

    /// Records what atoll asked of the IRTEs; hands out `base + source` or refuses.
    #[derive(Default)]
    struct Recorder {
        programmed: Vec<(u16, Interrupt)>,
        blocked: Vec<(u16, RemapError)>,
        refuse: bool,
    }

    impl Remapper for Recorder {
        fn program(&mut self, source: u16, interrupt: &Interrupt) -> Option<IrteIndex> {
            self.programmed.push((source, *interrupt));
            (!self.refuse).then_some(IrteIndex(0x8100 + source))
        }
        fn block(&mut self, source: u16, reason: RemapError) {
            self.blocked.push((source, reason));
        }
    }

    /// A 256-byte configuration space for the walk.
    struct Space([u8; 256]);

    impl Space {
        fn new() -> Self {
            let mut s = Self([0; 256]);
            s.0[0x06] = 0x10; // Status: capabilities list.
            s
        }
        fn cap(&mut self, at: u8, id: u8, next: u8, rest: &[u8]) {
            let a = usize::from(at);
            self.0[a] = id;
            self.0[a + 1] = next;
            self.0[a + 2..a + 2 + rest.len()].copy_from_slice(rest);
        }
        fn read(&self, off: u8) -> u32 {
            let o = usize::from(off);
            u32::from_le_bytes(self.0[o..o + 4].try_into().unwrap())
        }
    }

    #[test]
    fn walk_finds_msi_and_msix() {
        let mut s = Space::new();
        s.0[0x34] = 0x40;
        s.cap(0x40, 0x01, 0x50, &[0, 0]); // power management
                                          // MSI: 64-bit, per-vector mask, MMC = 8 vectors (3 << 1).
        s.cap(0x50, 0x05, 0x70, &[0x86, 0x01]);
        // MSI-X: 64 entries, table in BAR 2 at 0x2000, PBA in BAR 4 at 0x3000.
        s.cap(
            0x70,
            0x11,
            0x00,
            &[63, 0, 0x02, 0x20, 0, 0, 0x04, 0x30, 0, 0],
        );
        let found = walk_capabilities(|o| s.read(o)).unwrap();
        let msi = found.msi.unwrap();
        assert_eq!(
            (
                msi.offset,
                msi.is_64(),
                msi.per_vector_mask(),
                msi.multiple_capable()
            ),
            (0x50, true, true, 3)
        );
        assert_eq!(
            (msi.data_offset(), msi.mask_offset(), msi.len()),
            (0x0c, Some(0x10), 0x18)
        );
        assert_eq!(
            found.msix,
            Some(MsixCap {
                offset: 0x70,
                table_size: 64,
                table_bar: 2,
                table_offset: 0x2000,
                pba_bar: 4,
                pba_offset: 0x3000
            })
        );
    }

    #[test]
    fn msi_layouts() {
        let c = |control| MsiCap {
            offset: 0x50,
            control,
        };
        assert_eq!(
            (c(0).data_offset(), c(0).mask_offset(), c(0).len()),
            (8, None, 0x0c)
        );
        assert_eq!(
            (c(0x80).data_offset(), c(0x80).mask_offset(), c(0x80).len()),
            (0x0c, None, 0x10)
        );
        assert_eq!(
            (
                c(0x100).data_offset(),
                c(0x100).mask_offset(),
                c(0x100).len()
            ),
            (8, Some(0x0c), 0x14)
        );
    }

    #[test]
    fn walk_without_capabilities_bit_finds_nothing() {
        let mut s = Space::new();
        s.0[0x06] = 0;
        s.0[0x34] = 0x40;
        s.cap(0x40, 0x05, 0, &[0, 0]);
        assert_eq!(
            walk_capabilities(|o| s.read(o)),
            Ok(Capabilities::default())
        );
    }

    #[test]
    fn walk_refuses_bad_pointers_and_loops() {
        let mut s = Space::new();
        s.0[0x34] = 0x3c;
        assert_eq!(
            walk_capabilities(|o| s.read(o)),
            Err(CapWalkError::BadPointer(0x3c))
        );
        // Reserved low bits are masked off: 0x43 means 0x40.
        s.0[0x34] = 0x43;
        s.cap(0x40, 0x05, 0x00, &[0, 0]);
        assert_eq!(
            walk_capabilities(|o| s.read(o))
                .unwrap()
                .msi
                .unwrap()
                .offset,
            0x40
        );
        // A loop back to itself and a longer loop.
        s.cap(0x40, 0x09, 0x40, &[]);
        assert_eq!(
            walk_capabilities(|o| s.read(o)),
            Err(CapWalkError::Loop(0x40))
        );
        s.cap(0x40, 0x09, 0x80, &[]);
        s.cap(0x80, 0x09, 0x60, &[]);
        s.cap(0x60, 0x09, 0x40, &[]);
        assert_eq!(
            walk_capabilities(|o| s.read(o)),
            Err(CapWalkError::Loop(0x40))
        );
        // Into the header from the middle of the list.
        s.cap(0x60, 0x09, 0x08, &[]);
        assert_eq!(
            walk_capabilities(|o| s.read(o)),
            Err(CapWalkError::BadPointer(0x08))
        );
        // MSI-X too close to the end, and a BIR naming no BAR.
        s.cap(0x60, 0x09, 0xf8, &[]);
        s.cap(0xf8, 0x11, 0x00, &[0, 0]);
        assert_eq!(
            walk_capabilities(|o| s.read(o)),
            Err(CapWalkError::BadPointer(0xf8))
        );
        s.cap(0x60, 0x09, 0xa0, &[]);
        s.cap(0xa0, 0x11, 0x00, &[0, 0, 0x06, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            walk_capabilities(|o| s.read(o)),
            Err(CapWalkError::BadBir(6))
        );
        // A 64-bit MSI with masking needs 24 bytes: at 0xf0 it does not fit.
        s.cap(0xa0, 0x09, 0xf0, &[]);
        s.cap(0xf0, 0x05, 0x00, &[0x80, 0x01]);
        assert_eq!(
            walk_capabilities(|o| s.read(o)),
            Err(CapWalkError::BadPointer(0xf0))
        );
    }

    #[test]
    fn walk_follows_a_full_list_of_48() {
        let mut s = Space::new();
        s.0[0x34] = 0x40;
        for k in 0..48u8 {
            let at = 0x40 + 4 * k;
            let next = if k == 47 { 0 } else { at + 4 };
            s.cap(at, 0x09, next, &[]);
        }
        // The last slot (0xfc) holds a vendor capability; put MSI in the middle.
        s.0[0x80] = 0x05;
        assert_eq!(
            walk_capabilities(|o| s.read(o))
                .unwrap()
                .msi
                .unwrap()
                .offset,
            0x80
        );
        // Every dword slot visited once; a 49th would have to revisit one.
        let mut reads = 0;
        let _ = walk_capabilities(|o| {
            reads += 1;
            s.read(o)
        });
        assert!(reads <= 2 + 48, "{reads} reads");
    }

    fn msi64() -> MsiShadow {
        // 64-bit, per-vector masking, 4 vectors capable; firmware left MME = 2 and a message.
        let cap = MsiCap {
            offset: 0x50,
            control: 0x0184 | 0x20,
        };
        MsiShadow::new(cap, |off| match off {
            0 => u32::from(cap.control) << 16 | 0x7005,
            4 => 0xfee0_0003,
            // Extended data left set by firmware is hidden.
            0x0c => 0xabcd_0000,
            _ => 0,
        })
    }

    fn host_read(s: &MsiShadow, off: u32, size: u8, device: u32) -> u32 {
        s.read(off, size).unwrap().complete(device)
    }

    fn linux_interrupt(vector: u8, dest: u8) -> Interrupt {
        Interrupt::from_msi(0xfee0_0000 | u64::from(dest) << 12, u32::from(vector)).unwrap()
    }

    #[test]
    fn msi_linux_programming_order() {
        let mut s = msi64();
        let mut r = Recorder::default();
        // The host sees one vector, no MME, 64-bit and masking capable; the firmware's message
        // without its hidden bits.
        assert_eq!(host_read(&s, 2, 2, 0xffff), 0x0180);
        assert_eq!(host_read(&s, 4, 4, 0), 0xfee0_0000);
        assert_eq!(host_read(&s, 0x0c, 4, 0), 0);
        // pci_msi_init: disable.
        let w = s.write(2, 2, 0x0180, &mut r).unwrap();
        assert_eq!(
            w.as_slice(),
            &[PhysWrite {
                offset: 2,
                size: 2,
                value: 0
            }]
        );
        // __pci_write_msi_msg: control (MME 0), address low, address high, data (a word).
        let _ = s.write(2, 2, 0x0180, &mut r).unwrap();
        let w = s.write(4, 4, 0xfee0_3000, &mut r).unwrap();
        // Data still 0: vector 0 is illegal, nothing reaches the device.
        assert!(w.is_empty());
        assert_eq!(r.blocked, [(0, RemapError::IllegalVector(0))]);
        let w = s.write(8, 4, 0, &mut r).unwrap();
        assert!(w.is_empty());
        assert_eq!(r.blocked.len(), 1, "the same refusal is not repeated");
        let w = s.write(0x0c, 2, 0x0041, &mut r).unwrap();
        assert_eq!(r.programmed, [(0, linux_interrupt(0x41, 3))]);
        let msg = RemappableMsi::single(IrteIndex(0x8100));
        assert_eq!(
            w.as_slice(),
            &[
                PhysWrite {
                    offset: 4,
                    size: 4,
                    value: msg.address
                },
                PhysWrite {
                    offset: 8,
                    size: 4,
                    value: 0
                },
                PhysWrite {
                    offset: 0x0c,
                    size: 2,
                    value: 0
                },
            ]
        );
        assert_eq!(s.handle(), Some(IrteIndex(0x8100)));
        // pci_msi_set_enable(1).
        let w = s.write(2, 2, 0x0181, &mut r).unwrap();
        assert_eq!(
            w.as_slice(),
            &[PhysWrite {
                offset: 2,
                size: 2,
                value: 1
            }]
        );
        // Reads: the host's values, never the remappable ones.
        assert_eq!(host_read(&s, 4, 4, msg.address), 0xfee0_3000);
        assert_eq!(host_read(&s, 8, 4, 0xdead), 0);
        assert_eq!(host_read(&s, 0x0c, 2, 0), 0x41);
        assert_eq!(host_read(&s, 0, 4, 0x0000_7005), 0x0181_7005);
        // Mask and pending bits come from the device; mask writes pass through.
        assert_eq!(s.read(0x10, 4).unwrap().from_device, 0xffff_ffff);
        assert_eq!(host_read(&s, 0x14, 4, 1), 1);
        let w = s.write(0x10, 4, 1, &mut r).unwrap();
        assert_eq!(
            w.as_slice(),
            &[PhysWrite {
                offset: 0x10,
                size: 4,
                value: 1
            }]
        );
        assert!(
            s.write(0x14, 4, 1, &mut r).unwrap().is_empty(),
            "pending bits are read-only"
        );
    }

    #[test]
    fn msi_affinity_change_reprograms_the_irte_not_the_device() {
        let mut s = msi64();
        let mut r = Recorder::default();
        let _ = s.write(4, 4, 0xfee0_1000, &mut r).unwrap();
        let _ = s.write(0x0c, 2, 0x31, &mut r).unwrap();
        let _ = s.write(2, 2, 1, &mut r).unwrap();
        // x86 msi_set_affinity without masking: a new vector on the old CPU, then the new CPU.
        let w = s.write(0x0c, 2, 0x32, &mut r).unwrap();
        assert!(w.is_empty(), "same handle: the device keeps its message");
        let w = s.write(4, 4, 0xfee0_2000, &mut r).unwrap();
        assert!(w.is_empty());
        assert_eq!(
            r.programmed.iter().map(|p| p.1).collect::<Vec<_>>(),
            [
                linux_interrupt(0x31, 1),
                linux_interrupt(0x32, 1),
                linux_interrupt(0x32, 2)
            ]
        );
        // Rewriting the same message does not touch the IRTE.
        let _ = s.write(4, 4, 0xfee0_2000, &mut r).unwrap();
        assert_eq!(r.programmed.len(), 3);
    }

    #[test]
    fn msi_partial_writes_of_address_and_data() {
        let cap = MsiCap {
            offset: 0x60,
            control: 0,
        }; // 32-bit, no masking
        let mut s = MsiShadow::new(cap, |_| 0);
        let mut r = Recorder::default();
        for (i, b) in 0xfee0_5000u32.to_le_bytes().iter().enumerate() {
            let _ = s.write(4 + i as u32, 1, u32::from(*b), &mut r).unwrap();
        }
        let _ = s.write(9, 1, 0x80, &mut r).unwrap(); // data high byte: edge... trigger bit 15
        let w = s.write(8, 1, 0x50, &mut r).unwrap();
        let got = r.programmed.last().unwrap().1;
        assert_eq!(
            (got.vector, got.dest, got.trigger),
            (0x50, 5, TriggerMode::Level)
        );
        assert_eq!(
            w.as_slice()[0],
            PhysWrite {
                offset: 4,
                size: 4,
                value: RemappableMsi::single(IrteIndex(0x8100)).address
            }
        );
        assert_eq!(
            w.as_slice()[1],
            PhysWrite {
                offset: 8,
                size: 2,
                value: 0
            }
        );
        // A word write to the upper half of the address changes only those bytes.
        let _ = s.write(6, 2, 0xfee0, &mut r).unwrap();
        assert_eq!(host_read(&s, 4, 4, 0), 0xfee0_5000);
        let _ = s.write(4, 2, 0x7003, &mut r).unwrap();
        assert_eq!(
            host_read(&s, 4, 4, 0),
            0xfee0_7000,
            "address bits 1:0 read 0"
        );
        assert_eq!(r.programmed.last().unwrap().1.dest, 7);
        // Extended data (above the data word) is hidden.
        let _ = s.write(0x0a, 2, 0xffff, &mut r).unwrap();
        assert_eq!(host_read(&s, 8, 4, 0), 0x8050);
    }

    #[test]
    fn msi_invalid_accesses_change_nothing() {
        let mut s = msi64();
        let mut r = Recorder::default();
        let before = (s.host_message(), host_read(&s, 0, 4, 0));
        for (off, size) in [
            (3u32, 2u8),
            (2, 4),
            (0x16, 4),
            (0x18, 1),
            (4, 3),
            (u32::MAX, 1),
        ] {
            assert_eq!(
                s.write(off, size, 0xffff_ffff, &mut r).err(),
                Some(AccessError::Access { offset: off, size }),
                "{off} {size}"
            );
            assert_eq!(
                s.read(off, size).err(),
                Some(AccessError::Access { offset: off, size })
            );
        }
        assert_eq!((s.host_message(), host_read(&s, 0, 4, 0)), before);
        assert!(r.programmed.is_empty() && r.blocked.is_empty());
    }

    #[test]
    fn msi_unremappable_messages_are_blocked_with_reason() {
        let mut s = msi64();
        let mut r = Recorder::default();
        let _ = s.write(0x0c, 2, 0x41, &mut r).unwrap();
        let _ = s.write(4, 4, 0xfee0_0000, &mut r).unwrap();
        let _ = s.write(2, 2, 1, &mut r).unwrap();
        let programmed = s.handle();
        assert!(programmed.is_some());
        // The host tries to pass a remappable handle of its own.
        let w = s.write(4, 4, 0xfee0_0010 | 5 << 5, &mut r).unwrap();
        assert!(w.is_empty(), "the device keeps atoll's message");
        assert_eq!(r.blocked.last(), Some(&(0, RemapError::AlreadyRemappable)));
        assert_eq!(s.handle(), programmed);
        // Not an interrupt address; a reserved delivery mode.
        let _ = s.write(4, 4, 0xfed0_0000, &mut r).unwrap();
        let _ = s.write(4, 4, 0xfee0_0000, &mut r).unwrap();
        let _ = s.write(0x0c, 2, 0x341, &mut r).unwrap();
        assert_eq!(
            r.blocked.iter().map(|b| b.1).collect::<Vec<_>>(),
            [
                RemapError::AlreadyRemappable,
                RemapError::NotInterruptAddress(0xfed0_0000),
                RemapError::ReservedDeliveryMode(3)
            ]
        );
        // Back to valid: programmed again.
        let _ = s.write(0x0c, 2, 0x42, &mut r).unwrap();
        assert_eq!(r.programmed.last().unwrap().1.vector, 0x42);
        // The host still reads what it wrote.
        assert_eq!(host_read(&s, 0x0c, 2, 0), 0x42);
    }

    #[test]
    fn msi_refused_by_the_caller_stays_disabled() {
        let mut s = msi64();
        let mut r = Recorder {
            refuse: true,
            ..Default::default()
        };
        let _ = s.write(4, 4, 0xfee0_0000, &mut r).unwrap();
        let w = s.write(0x0c, 2, 0x41, &mut r).unwrap();
        assert!(w.is_empty());
        let w = s.write(2, 2, 1, &mut r).unwrap();
        assert_eq!(
            w.as_slice(),
            &[PhysWrite {
                offset: 2,
                size: 2,
                value: 0
            }],
            "no remappable message: not enabled"
        );
        assert!(s.host_enabled());
        assert_eq!(
            host_read(&s, 2, 2, 0) & 1,
            1,
            "the host sees its enable bit"
        );
        // Accepted later: message written, then the pending enable.
        r.refuse = false;
        let w = s.write(0x0c, 2, 0x43, &mut r).unwrap();
        let last = *w.as_slice().last().unwrap();
        assert_eq!(
            last,
            PhysWrite {
                offset: 2,
                size: 2,
                value: 1
            }
        );
        assert_eq!(w.as_slice()[0].offset, 4);
    }

    #[test]
    fn msi_multiple_message_is_refused() {
        let mut s = msi64();
        let mut r = Recorder::default();
        let _ = s.write(2, 2, 0x0030 | 1, &mut r).unwrap(); // MME = 8 vectors
        assert_eq!(host_read(&s, 2, 2, 0) & 0x7e, 0, "MMC and MME read 0");
        let _ = s.write(4, 4, 0xfee0_0000, &mut r).unwrap();
        let w = s.write(0x0c, 2, 0x41, &mut r).unwrap();
        assert!(w
            .as_slice()
            .iter()
            .all(|p| p.offset != 2 || p.value & 0x70 == 0));
        let msg = RemappableMsi::decode(w.as_slice()[0].value).unwrap();
        assert!(!msg.1, "no subhandle: one vector");
    }

    fn msix(entries: u16) -> MsixShadow {
        MsixShadow::new(MsixCap {
            offset: 0x70,
            table_size: entries,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        })
    }

    #[test]
    fn msix_linux_programming_order() {
        let mut t = msix(4);
        let mut r = Recorder::default();
        // msix_mask_all: every entry's vector control = masked.
        for n in 0..4u32 {
            assert!(
                t.write(n * 16 + 12, 4, 1, &mut r).unwrap().is_empty(),
                "already masked on the device"
            );
        }
        // __pci_write_msi_msg for entry 2 (masked): address low, high, data.
        assert!(t.write(32, 4, 0xfee0_1000, &mut r).unwrap().is_empty());
        assert!(t.write(36, 4, 0, &mut r).unwrap().is_empty());
        let w = t.write(40, 4, 0x0000_0051, &mut r).unwrap();
        let msg = RemappableMsi::single(IrteIndex(0x8102));
        assert_eq!(r.programmed, [(2, linux_interrupt(0x51, 1))]);
        assert_eq!(
            w.as_slice(),
            &[
                PhysWrite {
                    offset: 32,
                    size: 4,
                    value: msg.address
                },
                PhysWrite {
                    offset: 36,
                    size: 4,
                    value: 0
                },
                PhysWrite {
                    offset: 40,
                    size: 4,
                    value: 0
                },
            ]
        );
        // Unmask.
        let w = t.write(44, 4, 0, &mut r).unwrap();
        assert_eq!(
            w.as_slice(),
            &[PhysWrite {
                offset: 44,
                size: 4,
                value: 0
            }]
        );
        // Reads: the shadow.
        assert_eq!(t.read(32, 8).unwrap(), 0xfee0_1000);
        assert_eq!(t.read(40, 8).unwrap(), 0x51);
        assert_eq!(t.read(12, 4).unwrap(), 1);
        assert_eq!(t.handle(2), Some(IrteIndex(0x8102)));
        assert_eq!(t.handle(1), None);
        // Affinity change: mask, address, high, data, unmask — only the IRTE changes.
        let mut all = Vec::new();
        for (off, v) in [
            (44u32, 1u64),
            (32, 0xfee0_4000),
            (36, 0),
            (40, 0x52),
            (44, 0),
        ] {
            all.extend_from_slice(t.write(off, 4, v, &mut r).unwrap().as_slice());
        }
        assert_eq!(
            all,
            [
                PhysWrite {
                    offset: 44,
                    size: 4,
                    value: 1
                },
                PhysWrite {
                    offset: 44,
                    size: 4,
                    value: 0
                }
            ]
        );
        assert_eq!(r.programmed.last(), Some(&(2, linux_interrupt(0x52, 4))));
    }

    #[test]
    fn msix_qword_writes_and_unmasked_reprogramming() {
        let mut t = msix(2);
        let mut r = Recorder::default();
        // An unmasked entry whose message comes later stays masked on the device.
        assert!(t.write(12, 4, 0, &mut r).unwrap().is_empty());
        assert_eq!(t.read(12, 4).unwrap(), 0, "the host sees it unmasked");
        let w = t.write(0, 8, 0xfee0_2000, &mut r).unwrap();
        assert!(w.is_empty(), "data not written yet");
        // Data and vector control in one qword.
        let w = t.write(8, 8, 0x61, &mut r).unwrap();
        let msg = RemappableMsi::single(IrteIndex(0x8100));
        assert_eq!(
            w.as_slice(),
            &[
                PhysWrite {
                    offset: 0,
                    size: 4,
                    value: msg.address
                },
                PhysWrite {
                    offset: 4,
                    size: 4,
                    value: 0
                },
                PhysWrite {
                    offset: 8,
                    size: 4,
                    value: 0
                },
                PhysWrite {
                    offset: 12,
                    size: 4,
                    value: 0
                },
            ]
        );
        // The host makes the message invalid while unmasked: blocked and masked on the device.
        let w = t.write(8, 4, 0x05, &mut r).unwrap();
        assert_eq!(r.blocked, [(0, RemapError::IllegalVector(5))]);
        assert_eq!(
            w.as_slice(),
            &[PhysWrite {
                offset: 12,
                size: 4,
                value: 1
            }]
        );
        assert_eq!(t.read(8, 8).unwrap(), 0x05, "host sees its data, unmasked");
        // Valid again: the device already holds the handle, so only the unmask goes out.
        let w = t.write(8, 4, 0x62, &mut r).unwrap();
        assert_eq!(
            w.as_slice(),
            &[PhysWrite {
                offset: 12,
                size: 4,
                value: 0
            }]
        );
        // Reserved vector-control bits read 0.
        let _ = t.write(12, 4, 0xffff_fffe, &mut r).unwrap();
        assert_eq!(t.read(12, 4).unwrap(), 0);
    }

    #[test]
    fn msix_new_handle_while_unmasked_masks_first() {
        let mut t = msix(1);
        let mut r = Recorder::default();
        let _ = t.write(0, 4, 0xfee0_0000, &mut r).unwrap();
        let _ = t.write(8, 4, 0x40, &mut r).unwrap();
        let _ = t.write(12, 4, 0, &mut r).unwrap();
        // The caller now hands a different handle (e.g. after it moved the entry).
        struct Other;
        impl Remapper for Other {
            fn program(&mut self, _: u16, _: &Interrupt) -> Option<IrteIndex> {
                Some(IrteIndex(7))
            }
            fn block(&mut self, _: u16, _: RemapError) {}
        }
        let w = t.write(8, 4, 0x41, &mut Other).unwrap();
        let msg = RemappableMsi::single(IrteIndex(7));
        assert_eq!(
            w.as_slice(),
            &[
                PhysWrite {
                    offset: 12,
                    size: 4,
                    value: 1
                },
                PhysWrite {
                    offset: 0,
                    size: 4,
                    value: msg.address
                },
                PhysWrite {
                    offset: 4,
                    size: 4,
                    value: 0
                },
                PhysWrite {
                    offset: 8,
                    size: 4,
                    value: 0
                },
                PhysWrite {
                    offset: 12,
                    size: 4,
                    value: 0
                },
            ]
        );
    }

    #[test]
    fn msix_invalid_accesses_change_nothing() {
        let mut t = msix(2);
        let mut r = Recorder::default();
        for (off, size) in [
            (2u32, 4u8),
            (4, 8),
            (32, 4),
            (28, 8),
            (0, 2),
            (0, 1),
            (u32::MAX - 3, 4),
        ] {
            assert_eq!(
                t.write(off, size, u64::MAX, &mut r).err(),
                Some(AccessError::Access { offset: off, size })
            );
            assert_eq!(
                t.read(off, size).err(),
                Some(AccessError::Access { offset: off, size })
            );
        }
        assert_eq!(t.read(0, 8).unwrap(), 0);
        assert_eq!(t.read(8, 8).unwrap(), 1 << 32, "still masked, data 0");
        assert!(r.programmed.is_empty() && r.blocked.is_empty());
    }

    #[test]
    fn msix_modes_decode_for_the_irte() {
        let mut t = msix(1);
        let mut r = Recorder::default();
        let _ = t
            .write(0, 4, 0xfee0_3000 | 1 << 2 | 1 << 3, &mut r)
            .unwrap();
        let _ = t.write(8, 4, 0x0171, &mut r).unwrap();
        let i = r.programmed[0].1;
        assert_eq!(
            (i.dest_mode, i.redirection_hint, i.delivery, i.vector),
            (DestMode::Logical, true, DeliveryMode::LowestPriority, 0x71)
        );
    }
}
