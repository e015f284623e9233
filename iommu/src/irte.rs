//! Interrupt remapping table entries and the table itself (Intel VT-d spec rev 4.x §9.10,
//! "Interrupt Remapping Table Entry (IRTE) for Remapped Interrupts").
//!
//! An IRTE is 128 bits. In remapped format (bit 15, IM, clear) the low quadword holds:
//!
//! | bits  | field | meaning                                                            |
//! |-------|-------|--------------------------------------------------------------------|
//! | 0     | P     | present; a request through a not-present entry faults             |
//! | 1     | FPD   | fault processing disable: faults through this entry are not logged |
//! | 2     | DM    | destination mode: 0 physical, 1 logical                            |
//! | 3     | RH    | redirection hint (lowest-priority among the destinations)          |
//! | 4     | TM    | trigger mode: 0 edge, 1 level                                      |
//! | 7:5   | DLM   | delivery mode (same encoding as the I/O APIC and MSI data)         |
//! | 11:8  | AVAIL | available to software                                              |
//! | 14:12 |       | reserved, 0                                                        |
//! | 15    | IM    | IRTE mode: 0 remapped, 1 posted (atoll writes remapped only)       |
//! | 23:16 | V     | vector                                                             |
//! | 31:24 |       | reserved, 0                                                        |
//! | 63:32 | DST   | destination: xAPIC mode: APIC ID in bits 15:8 of DST (entry bits    |
//! |       |       | 47:40, the rest 0); x2APIC mode (IRTA.EIME = 1): all 32 bits        |
//!
//! and the high quadword: SID (bits 79:64), SQ (81:80), SVT (83:82), the rest reserved 0.
//! Bit positions agree with Linux's `struct irte` (include/linux/dmar.h) and with QEMU's
//! `VTD_IR_TableEntry` decoding (hw/i386/intel_iommu.c), which shifts DST right by 8 when EIM is
//! off.
//!
//! [`InterruptTable`] allocates entries to partitions over memory the caller gives; every
//! change returns the [`Invalidation`] the caller must issue (an index-selective interrupt entry
//! cache invalidation, §6.5.2.7) so that a cached copy of the old entry cannot survive.

use core::fmt;

/// Delivery mode (IRTE DLM, I/O APIC RTE bits 10:8, MSI data bits 10:8; Intel SDM vol. 3A
/// §11.11.2 and VT-d §9.10). The encodings 3 and 6 are reserved and never represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 000: the vector to the destination(s).
    Fixed,
    /// 001: the vector to the lowest-priority processor of the destinations.
    LowestPriority,
    /// 010: a system management interrupt (vector ignored).
    Smi,
    /// 100: a non-maskable interrupt (vector ignored).
    Nmi,
    /// 101: INIT (vector ignored).
    Init,
    /// 111: an 8259-compatible external interrupt (vector from the PIC).
    ExtInt,
}

impl DeliveryMode {
    /// From the 3-bit field; `None` for the reserved encodings 3 and 6.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits & 7 {
            0 => Some(Self::Fixed),
            1 => Some(Self::LowestPriority),
            2 => Some(Self::Smi),
            4 => Some(Self::Nmi),
            5 => Some(Self::Init),
            7 => Some(Self::ExtInt),
            _ => None,
        }
    }

    /// The 3-bit field.
    pub fn bits(self) -> u8 {
        match self {
            Self::Fixed => 0,
            Self::LowestPriority => 1,
            Self::Smi => 2,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::ExtInt => 7,
        }
    }

    /// Whether the vector field means something: a fixed or lowest-priority interrupt delivers
    /// it, the others ignore it (SDM vol. 3A §11.6.1).
    pub fn uses_vector(self) -> bool {
        matches!(self, Self::Fixed | Self::LowestPriority)
    }
}

/// Destination mode (IRTE DM, RTE bit 11, MSI address bit 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestMode {
    /// 0: the destination is an APIC ID.
    Physical,
    /// 1: the destination is a logical APIC mask (flat or cluster).
    Logical,
}

impl DestMode {
    /// From a one-bit flag.
    pub fn from_bit(bit: bool) -> Self {
        if bit {
            Self::Logical
        } else {
            Self::Physical
        }
    }

    /// As a one-bit flag.
    pub fn bit(self) -> bool {
        self == Self::Logical
    }
}

/// Trigger mode (IRTE TM, RTE bit 15, MSI data bit 15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerMode {
    /// 0: edge.
    Edge,
    /// 1: level (the I/O APIC waits for an EOI before it sends again).
    Level,
}

impl TriggerMode {
    /// From a one-bit flag.
    pub fn from_bit(bit: bool) -> Self {
        if bit {
            Self::Level
        } else {
            Self::Edge
        }
    }

    /// As a one-bit flag.
    pub fn bit(self) -> bool {
        self == Self::Level
    }
}

/// An IRTE's destination (§9.10 DST). Which form applies is a property of the whole table
/// (IRTA.EIME, §10.4.29), so the caller picks the one matching how it programmed IRTA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicDest {
    /// xAPIC mode: an 8-bit APIC ID (or logical mask), stored in DST bits 15:8.
    XApic(u8),
    /// x2APIC mode (EIME = 1): a 32-bit x2APIC ID (or logical ID).
    X2Apic(u32),
}

pub use crate::context::SourceId;

/// Which low bits of the requester ID source validation ignores (IRTE SQ, §9.10). Used for
/// devices that send interrupts under several function numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceQualifier {
    /// 00: compare all 16 bits.
    All,
    /// 01: ignore bit 2 of the function-and-device field.
    IgnoreBit2,
    /// 10: ignore bits 2:1.
    IgnoreBits2To1,
    /// 11: ignore bits 2:0 (any function of the device).
    IgnoreBits2To0,
}

impl SourceQualifier {
    fn bits(self) -> u64 {
        match self {
            Self::All => 0,
            Self::IgnoreBit2 => 1,
            Self::IgnoreBits2To1 => 2,
            Self::IgnoreBits2To0 => 3,
        }
    }

    fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => Self::All,
            1 => Self::IgnoreBit2,
            2 => Self::IgnoreBits2To1,
            _ => Self::IgnoreBits2To0,
        }
    }
}

/// Which interrupt requests may use an entry (IRTE SVT/SQ/SID, §9.10). Without validation any
/// device that can write 0xFEEx_xxxx could fire any entry, so atoll uses `None` only where no
/// source is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceValidation {
    /// SVT 00: no check.
    None,
    /// SVT 01, SQ 00: the requester ID must equal this one (a PCIe function; an I/O APIC's
    /// source ID from the DMAR device scope).
    RequesterId(SourceId),
    /// SVT 01 with a qualifier: the requester ID must equal this one in the bits SQ keeps.
    RequesterIdQualified(SourceId, SourceQualifier),
    /// SVT 10: the requester's bus must lie in `start..=end` — devices behind a PCIe-to-PCI
    /// bridge, whose requests carry the bridge's secondary bus and devfn 0 or their own ID. SID
    /// holds start in bits 15:8 and end in bits 7:0 (§9.10; Linux `set_irte_verify_bus` writes
    /// it so). QEMU's check reads bits 15:8 as the maximum instead, so a range is only checked
    /// consistently by both when `start == end` — what Linux's callers use in practice.
    BusRange {
        /// First bus allowed.
        start: u8,
        /// Last bus allowed.
        end: u8,
    },
}

/// An index into the interrupt remapping table: the 16-bit "handle" that remappable I/O APIC
/// entries and MSI addresses carry (§5.1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IrteIndex(pub u16);

/// Why an IRTE or a table operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrteError {
    /// The entry is in posted format (IM = 1), which atoll never writes.
    Posted,
    /// A reserved delivery mode encoding (3 or 6).
    ReservedDeliveryMode(u8),
    /// SVT = 11, reserved.
    ReservedSvt,
    /// Reserved bits set (the raw entry, masked to its reserved bits: low, high).
    Reserved(u64, u64),
    /// An xAPIC destination with bits other than 15:8 set.
    XApicDestination(u32),
    /// The table size is not 2^N entries with N in 0..=15, or the owner array differs in length.
    TableSize(usize),
    /// Every entry is allocated.
    Full,
    /// The index is past the table's end.
    OutOfRange(IrteIndex),
    /// The index is not allocated.
    NotAllocated(IrteIndex),
    /// The index belongs to another partition.
    NotOwner {
        /// The index.
        index: IrteIndex,
        /// Who owns it.
        owner: u16,
        /// Who asked.
        caller: u16,
    },
}

impl fmt::Display for IrteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Posted => write!(f, "posted-format IRTE"),
            Self::ReservedDeliveryMode(b) => write!(f, "reserved delivery mode {b}"),
            Self::ReservedSvt => write!(f, "reserved source validation type 3"),
            Self::Reserved(lo, hi) => write!(f, "reserved IRTE bits set: {lo:#x} {hi:#x}"),
            Self::XApicDestination(d) => write!(f, "xAPIC destination {d:#x} outside bits 15:8"),
            Self::TableSize(n) => write!(f, "interrupt table of {n} entries"),
            Self::Full => write!(f, "interrupt table full"),
            Self::OutOfRange(i) => write!(f, "IRTE index {} out of range", i.0),
            Self::NotAllocated(i) => write!(f, "IRTE index {} not allocated", i.0),
            Self::NotOwner {
                index,
                owner,
                caller,
            } => write!(
                f,
                "IRTE index {} belongs to partition {owner}, not {caller}",
                index.0
            ),
        }
    }
}

/// Bit positions of the low quadword (§9.10).
mod lo {
    pub const PRESENT: u64 = 1 << 0;
    pub const FPD: u64 = 1 << 1;
    pub const DM: u64 = 1 << 2;
    pub const RH: u64 = 1 << 3;
    pub const TM: u64 = 1 << 4;
    pub const DLM_SHIFT: u32 = 5;
    pub const AVAIL_SHIFT: u32 = 8;
    pub const IM: u64 = 1 << 15;
    pub const VECTOR_SHIFT: u32 = 16;
    pub const DST_SHIFT: u32 = 32;
    /// Bits 14:12 and 31:24.
    pub const RESERVED: u64 = 0x7000 | 0xff00_0000;
}

/// Bit positions of the high quadword (§9.10).
mod hi {
    pub const SQ_SHIFT: u32 = 16;
    pub const SVT_SHIFT: u32 = 18;
    /// Bits 127:84.
    pub const RESERVED: u64 = !0xf_ffff;
}

/// One interrupt remapping table entry in remapped format (§9.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irte {
    /// P: requests through the entry are remapped (else they fault).
    pub present: bool,
    /// FPD: faults through this entry are not recorded.
    pub fault_processing_disable: bool,
    /// DM.
    pub dest_mode: DestMode,
    /// RH: redirection hint.
    pub redirection_hint: bool,
    /// TM.
    pub trigger: TriggerMode,
    /// DLM.
    pub delivery: DeliveryMode,
    /// AVAIL: four bits for software.
    pub avail: u8,
    /// V.
    pub vector: u8,
    /// DST.
    pub dest: ApicDest,
    /// SVT, SQ, SID.
    pub source: SourceValidation,
}

impl Irte {
    /// A present, remapped-format entry with fault processing on, no redirection hint and
    /// AVAIL 0.
    pub fn remapped(
        vector: u8,
        dest: ApicDest,
        dest_mode: DestMode,
        delivery: DeliveryMode,
        trigger: TriggerMode,
        source: SourceValidation,
    ) -> Self {
        Self {
            present: true,
            fault_processing_disable: false,
            dest_mode,
            redirection_hint: false,
            trigger,
            delivery,
            avail: 0,
            vector,
            dest,
            source,
        }
    }

    /// The two quadwords, low first (the order they sit in memory).
    pub fn to_raw(&self) -> [u64; 2] {
        let mut l = 0u64;
        if self.present {
            l |= lo::PRESENT;
        }
        if self.fault_processing_disable {
            l |= lo::FPD;
        }
        if self.dest_mode.bit() {
            l |= lo::DM;
        }
        if self.redirection_hint {
            l |= lo::RH;
        }
        if self.trigger.bit() {
            l |= lo::TM;
        }
        l |= u64::from(self.delivery.bits()) << lo::DLM_SHIFT;
        l |= u64::from(self.avail & 0xf) << lo::AVAIL_SHIFT;
        l |= u64::from(self.vector) << lo::VECTOR_SHIFT;
        let dst = match self.dest {
            ApicDest::XApic(id) => u32::from(id) << 8,
            ApicDest::X2Apic(id) => id,
        };
        l |= u64::from(dst) << lo::DST_SHIFT;
        let (svt, sq, sid) = match self.source {
            SourceValidation::None => (0u64, 0u64, 0u16),
            SourceValidation::RequesterId(s) => (1, 0, s.0),
            SourceValidation::RequesterIdQualified(s, q) => (1, q.bits(), s.0),
            SourceValidation::BusRange { start, end } => {
                (2, 0, u16::from(start) << 8 | u16::from(end))
            }
        };
        let h = u64::from(sid) | sq << hi::SQ_SHIFT | svt << hi::SVT_SHIFT;
        [l, h]
    }

    /// Decodes an entry; `x2apic` says how DST is read (the table's IRTA.EIME). Refuses posted
    /// entries, reserved encodings and reserved bits, so what decodes re-encodes to the same
    /// bits.
    pub fn from_raw(raw: [u64; 2], x2apic: bool) -> Result<Self, IrteError> {
        let [l, h] = raw;
        if l & lo::IM != 0 {
            return Err(IrteError::Posted);
        }
        if l & lo::RESERVED != 0 || h & hi::RESERVED != 0 {
            return Err(IrteError::Reserved(l & lo::RESERVED, h & hi::RESERVED));
        }
        let dlm = ((l >> lo::DLM_SHIFT) & 7) as u8;
        let delivery = DeliveryMode::from_bits(dlm).ok_or(IrteError::ReservedDeliveryMode(dlm))?;
        let dst = (l >> lo::DST_SHIFT) as u32;
        let dest = if x2apic {
            ApicDest::X2Apic(dst)
        } else if dst & !0xff00 != 0 {
            return Err(IrteError::XApicDestination(dst));
        } else {
            ApicDest::XApic((dst >> 8) as u8)
        };
        let sid = SourceId(h as u16);
        let sq = SourceQualifier::from_bits(h >> hi::SQ_SHIFT);
        let source = match (h >> hi::SVT_SHIFT) & 3 {
            0 => SourceValidation::None,
            1 if sq == SourceQualifier::All => SourceValidation::RequesterId(sid),
            1 => SourceValidation::RequesterIdQualified(sid, sq),
            2 => SourceValidation::BusRange {
                start: sid.bus(),
                end: sid.0 as u8,
            },
            _ => return Err(IrteError::ReservedSvt),
        };
        Ok(Self {
            present: l & lo::PRESENT != 0,
            fault_processing_disable: l & lo::FPD != 0,
            dest_mode: DestMode::from_bit(l & lo::DM != 0),
            redirection_hint: l & lo::RH != 0,
            trigger: TriggerMode::from_bit(l & lo::TM != 0),
            delivery,
            avail: ((l >> lo::AVAIL_SHIFT) & 0xf) as u8,
            vector: (l >> lo::VECTOR_SHIFT) as u8,
            dest,
            source,
        })
    }

    /// Whether a raw entry has P set (without decoding the rest).
    pub fn raw_present(raw: [u64; 2]) -> bool {
        raw[0] & lo::PRESENT != 0
    }
}

/// The memory an interrupt remapping table lives in. The hardware reads entries while software
/// writes them, so each method must be one 64-bit access the compiler neither splits nor
/// reorders with the others (a volatile access on the target); [`InterruptTable`] orders the
/// two halves so that the hardware never uses a half-written present entry.
pub trait IrtMemory {
    /// Entries in the table.
    fn entries(&self) -> usize;
    /// Reads entry `index` (low, high).
    fn read(&self, index: usize) -> [u64; 2];
    /// Writes the low quadword of entry `index`.
    fn write_low(&mut self, index: usize, value: u64);
    /// Writes the high quadword of entry `index`.
    fn write_high(&mut self, index: usize, value: u64);
}

/// A plain slice: host tests, and any caller that hands in ordinary memory.
impl IrtMemory for [[u64; 2]] {
    fn entries(&self) -> usize {
        self.len()
    }

    fn read(&self, index: usize) -> [u64; 2] {
        self.get(index).copied().unwrap_or([0, 0])
    }

    fn write_low(&mut self, index: usize, value: u64) {
        if let Some(e) = self.get_mut(index) {
            e[0] = value;
        }
    }

    fn write_high(&mut self, index: usize, value: u64) {
        if let Some(e) = self.get_mut(index) {
            e[1] = value;
        }
    }
}

/// An interrupt entry cache invalidation the caller owes the hardware: index-selective, granule
/// 0, for this index (§6.5.2.7). Dropping it unused is a bug the compiler reports.
#[must_use = "issue an index-selective interrupt entry cache invalidation for this index"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalidation(pub IrteIndex);

/// The interrupt remapping table: 2^N entries (N in 0..=15; IRTA.S = N - 1 with N ≥ 1, and
/// atoll uses 256 or 4096) over caller memory, with which partition owns each entry.
///
/// Entries are written only through [`set`](Self::set) and [`free`](Self::free), after an
/// ownership check; a free entry is all zeros (not present), so a request through it faults.
pub struct InterruptTable<'a, M: IrtMemory + ?Sized> {
    memory: &'a mut M,
    owners: &'a mut [Option<u16>],
    allocated: usize,
    /// Where the next allocation search starts (keeps allocation O(1) amortised when entries
    /// are rarely freed).
    next: usize,
}

impl<'a, M: IrtMemory + ?Sized> InterruptTable<'a, M> {
    /// A table over `memory`, every entry cleared to not present. `owners` records who owns
    /// each entry and must have the same length.
    pub fn new(memory: &'a mut M, owners: &'a mut [Option<u16>]) -> Result<Self, IrteError> {
        let n = memory.entries();
        if !n.is_power_of_two() || n > 1 << 15 || owners.len() != n {
            return Err(IrteError::TableSize(n));
        }
        for i in 0..n {
            memory.write_low(i, 0);
            memory.write_high(i, 0);
        }
        owners.fill(None);
        Ok(Self {
            memory,
            owners,
            allocated: 0,
            next: 0,
        })
    }

    /// Entries in the table.
    pub fn capacity(&self) -> usize {
        self.owners.len()
    }

    /// Entries allocated.
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// IRTA.S for this table (§10.4.29): entries = 2^(S+1); `None` for a one-entry table, which
    /// the register cannot describe (useful only in tests).
    pub fn irta_size(&self) -> Option<u8> {
        let n = self.capacity().trailing_zeros();
        n.checked_sub(1).map(|s| s as u8)
    }

    /// Allocates a not-present entry to `owner`. The entry was cleared and invalidated when it
    /// was last freed, so no invalidation is owed.
    pub fn alloc(&mut self, owner: u16) -> Result<IrteIndex, IrteError> {
        let n = self.capacity();
        if self.allocated == n {
            return Err(IrteError::Full);
        }
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.owners[i].is_none() {
                self.owners[i] = Some(owner);
                self.allocated += 1;
                self.next = (i + 1) % n;
                return Ok(IrteIndex(i as u16));
            }
        }
        Err(IrteError::Full)
    }

    /// Allocates `count` consecutive entries starting at a multiple of `count` (a power of two),
    /// for a multiple-message MSI block addressed by handle + subhandle (§5.1.5.2).
    pub fn alloc_block(&mut self, owner: u16, count: usize) -> Result<IrteIndex, IrteError> {
        if !count.is_power_of_two() || count > self.capacity() {
            return Err(IrteError::TableSize(count));
        }
        let mut base = 0;
        while base + count <= self.capacity() {
            if self.owners[base..base + count].iter().all(Option::is_none) {
                self.owners[base..base + count].fill(Some(owner));
                self.allocated += count;
                return Ok(IrteIndex(base as u16));
            }
            base += count;
        }
        Err(IrteError::Full)
    }

    /// Who owns `index`.
    pub fn owner(&self, index: IrteIndex) -> Option<u16> {
        self.owners.get(usize::from(index.0)).copied().flatten()
    }

    /// The entry at `index` as the hardware sees it.
    pub fn raw(&self, index: IrteIndex) -> Option<[u64; 2]> {
        (usize::from(index.0) < self.capacity()).then(|| self.memory.read(usize::from(index.0)))
    }

    fn check(&self, caller: u16, index: IrteIndex) -> Result<usize, IrteError> {
        let i = usize::from(index.0);
        match self.owners.get(i) {
            None => Err(IrteError::OutOfRange(index)),
            Some(None) => Err(IrteError::NotAllocated(index)),
            Some(Some(owner)) if *owner != caller => Err(IrteError::NotOwner {
                index,
                owner: *owner,
                caller,
            }),
            Some(Some(_)) => Ok(i),
        }
    }

    /// Writes `entry` at `index`, which `caller` must own.
    ///
    /// Ordering, since the hardware may read the entry at any moment: a present entry whose
    /// high quadword (source validation) changes is first made not present, then the high half
    /// is written, then the low half with P; otherwise the high half goes first and the low
    /// half (one 64-bit store) last. So the hardware sees the old entry, a not-present entry, or
    /// the new entry — never a mix.
    pub fn set(
        &mut self,
        caller: u16,
        index: IrteIndex,
        entry: &Irte,
    ) -> Result<Invalidation, IrteError> {
        let i = self.check(caller, index)?;
        let [new_lo, new_hi] = entry.to_raw();
        let [old_lo, old_hi] = self.memory.read(i);
        if old_hi != new_hi {
            if old_lo & lo::PRESENT != 0 {
                self.memory.write_low(i, old_lo & !lo::PRESENT);
            }
            self.memory.write_high(i, new_hi);
        }
        self.memory.write_low(i, new_lo);
        Ok(Invalidation(index))
    }

    /// Clears and releases `index`, which `caller` must own.
    pub fn free(&mut self, caller: u16, index: IrteIndex) -> Result<Invalidation, IrteError> {
        let i = self.check(caller, index)?;
        // Not present first: the hardware must never see an old low half with a zero SID.
        self.memory.write_low(i, 0);
        self.memory.write_high(i, 0);
        self.owners[i] = None;
        self.allocated -= 1;
        Ok(Invalidation(index))
    }

    /// Frees every entry of `owner` (a partition going away), calling `invalidate` for each.
    pub fn free_all(&mut self, owner: u16, mut invalidate: impl FnMut(Invalidation)) {
        for i in 0..self.capacity() {
            if self.owners[i] == Some(owner) {
                if let Ok(inv) = self.free(owner, IrteIndex(i as u16)) {
                    invalidate(inv);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;

    fn sample() -> Irte {
        Irte::remapped(
            0x31,
            ApicDest::XApic(0x12),
            DestMode::Physical,
            DeliveryMode::Fixed,
            TriggerMode::Edge,
            SourceValidation::RequesterId(SourceId::from_bdf(0, 3, 0).unwrap()),
        )
    }

    #[test]
    fn source_id_fields_and_display() {
        let s = SourceId::from_bdf(0xe0, 0x1f, 7).unwrap();
        assert_eq!(s.0, 0xe0ff);
        assert_eq!((s.bus(), s.device(), s.function()), (0xe0, 0x1f, 7));
        assert_eq!(s.to_string(), "e0:1f.7");
        assert_eq!(SourceId::from_bdf(0, 2, 1).unwrap().to_string(), "00:02.1");
        assert_eq!(SourceId::from_bdf(0, 32, 0), None);
        assert_eq!(SourceId::from_bdf(0, 0, 8), None);
    }

    #[test]
    fn xapic_entry_bit_positions() {
        let e = sample();
        let [l, h] = e.to_raw();
        // P, vector 0x31 in 23:16, APIC ID 0x12 in 47:40.
        assert_eq!(l, 1 | 0x31 << 16 | 0x12 << 40);
        // SVT 01 in 83:82, SID 00:03.0 = 0x0018.
        assert_eq!(h, 1 << 18 | 0x18);
        assert_eq!(Irte::from_raw([l, h], false), Ok(e));
        assert!(Irte::raw_present([l, h]));
    }

    #[test]
    fn every_field_round_trips() {
        let modes = [
            DeliveryMode::Fixed,
            DeliveryMode::LowestPriority,
            DeliveryMode::Smi,
            DeliveryMode::Nmi,
            DeliveryMode::Init,
            DeliveryMode::ExtInt,
        ];
        let sources = [
            SourceValidation::None,
            SourceValidation::RequesterId(SourceId(0xabcd)),
            SourceValidation::RequesterIdQualified(SourceId(0x0108), SourceQualifier::IgnoreBit2),
            SourceValidation::RequesterIdQualified(
                SourceId(0x0108),
                SourceQualifier::IgnoreBits2To1,
            ),
            SourceValidation::RequesterIdQualified(
                SourceId(0x0108),
                SourceQualifier::IgnoreBits2To0,
            ),
            SourceValidation::BusRange { start: 3, end: 7 },
        ];
        for (k, &delivery) in modes.iter().enumerate() {
            for (j, &source) in sources.iter().enumerate() {
                for x2 in [false, true] {
                    let e = Irte {
                        present: k % 2 == 0,
                        fault_processing_disable: j % 2 == 1,
                        dest_mode: DestMode::from_bit(j % 3 == 0),
                        redirection_hint: k % 3 == 0,
                        trigger: TriggerMode::from_bit(k % 2 == 1),
                        delivery,
                        avail: (j + k) as u8 & 0xf,
                        vector: 0x20 + (k * 7 + j) as u8,
                        dest: if x2 {
                            ApicDest::X2Apic(0x1234_5678 + j as u32)
                        } else {
                            ApicDest::XApic(0xf0 + k as u8)
                        },
                        source,
                    };
                    assert_eq!(Irte::from_raw(e.to_raw(), x2), Ok(e), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn single_bits_land_where_the_spec_says() {
        let base = Irte {
            present: false,
            fault_processing_disable: false,
            dest_mode: DestMode::Physical,
            redirection_hint: false,
            trigger: TriggerMode::Edge,
            delivery: DeliveryMode::Fixed,
            avail: 0,
            vector: 0,
            dest: ApicDest::X2Apic(0),
            source: SourceValidation::None,
        };
        assert_eq!(base.to_raw(), [0, 0]);
        let with = |f: &dyn Fn(&mut Irte)| {
            let mut e = base;
            f(&mut e);
            e.to_raw()
        };
        assert_eq!(with(&|e| e.present = true)[0], 1 << 0);
        assert_eq!(with(&|e| e.fault_processing_disable = true)[0], 1 << 1);
        assert_eq!(with(&|e| e.dest_mode = DestMode::Logical)[0], 1 << 2);
        assert_eq!(with(&|e| e.redirection_hint = true)[0], 1 << 3);
        assert_eq!(with(&|e| e.trigger = TriggerMode::Level)[0], 1 << 4);
        assert_eq!(with(&|e| e.delivery = DeliveryMode::ExtInt)[0], 7 << 5);
        assert_eq!(with(&|e| e.delivery = DeliveryMode::Nmi)[0], 4 << 5);
        assert_eq!(with(&|e| e.avail = 0xf)[0], 0xf << 8);
        assert_eq!(with(&|e| e.avail = 0xff)[0], 0xf << 8, "AVAIL is four bits");
        assert_eq!(with(&|e| e.vector = 0xff)[0], 0xff << 16);
        assert_eq!(
            with(&|e| e.dest = ApicDest::X2Apic(0xffff_ffff))[0],
            0xffff_ffff << 32
        );
        assert_eq!(with(&|e| e.dest = ApicDest::XApic(0xff))[0], 0xff << 40);
        assert_eq!(
            with(&|e| e.source = SourceValidation::RequesterIdQualified(
                SourceId(0xffff),
                SourceQualifier::IgnoreBits2To0
            ))[1],
            0xffff | 3 << 16 | 1 << 18
        );
        // Linux's set_irte_verify_bus: start in SID 15:8, end in 7:0, SVT 10.
        assert_eq!(
            with(&|e| e.source = SourceValidation::BusRange {
                start: 0x12,
                end: 0x34
            })[1],
            0x1234 | 2 << 18
        );
    }

    #[test]
    fn invalid_raw_entries_refused_with_reason() {
        let [l, h] = sample().to_raw();
        assert_eq!(
            Irte::from_raw([l | 1 << 15, h], false),
            Err(IrteError::Posted)
        );
        assert_eq!(
            Irte::from_raw([l | 1 << 12, h], false),
            Err(IrteError::Reserved(1 << 12, 0))
        );
        assert_eq!(
            Irte::from_raw([l | 1 << 24, h], false),
            Err(IrteError::Reserved(1 << 24, 0))
        );
        assert_eq!(
            Irte::from_raw([l, h | 1 << 20], false),
            Err(IrteError::Reserved(0, 1 << 20))
        );
        assert_eq!(
            Irte::from_raw([l | 3 << 5, h], false),
            Err(IrteError::ReservedDeliveryMode(3))
        );
        assert_eq!(
            Irte::from_raw([l | 6 << 5, h], false),
            Err(IrteError::ReservedDeliveryMode(6))
        );
        assert_eq!(
            Irte::from_raw([l, h | 3 << 18], false),
            Err(IrteError::ReservedSvt)
        );
        assert_eq!(
            Irte::from_raw([l | 1 << 32, h], false),
            Err(IrteError::XApicDestination(0x1201))
        );
        // The same bits are a valid x2APIC destination.
        assert!(Irte::from_raw([l | 1 << 32, h], true).is_ok());
    }

    #[test]
    fn delivery_mode_encodings() {
        for b in 0..8u8 {
            match DeliveryMode::from_bits(b) {
                Some(m) => assert_eq!(m.bits(), b),
                None => assert!(b == 3 || b == 6),
            }
        }
        assert!(DeliveryMode::Fixed.uses_vector());
        assert!(DeliveryMode::LowestPriority.uses_vector());
        assert!(!DeliveryMode::Nmi.uses_vector());
    }

    #[test]
    fn table_sizes() {
        for n in [1usize, 2, 256, 4096] {
            let mut mem = vec![[7u64, 7]; n];
            let mut owners = vec![Some(9); n];
            let t = InterruptTable::new(&mut mem[..], &mut owners).unwrap();
            assert_eq!(t.capacity(), n);
            assert_eq!(t.allocated(), 0);
            assert_eq!(t.irta_size(), (n.trailing_zeros() as u8).checked_sub(1));
            assert!(mem.iter().all(|e| *e == [0, 0]), "new clears the table");
        }
        for n in [0usize, 3, 100, 1 << 16] {
            let mut mem = vec![[0u64, 0]; n];
            let mut owners = vec![None; n];
            assert_eq!(
                InterruptTable::new(&mut mem[..], &mut owners).err(),
                Some(IrteError::TableSize(n))
            );
        }
        let mut mem = [[0u64, 0]; 4];
        let mut owners = vec![None; 8];
        assert_eq!(
            InterruptTable::new(&mut mem[..], &mut owners).err(),
            Some(IrteError::TableSize(4))
        );
    }

    #[test]
    fn alloc_set_free_with_ownership() {
        let mut mem = [[0u64, 0]; 4];
        let mut owners = vec![None; 4];
        let mut t = InterruptTable::new(&mut mem[..], &mut owners).unwrap();
        let a = t.alloc(1).unwrap();
        let b = t.alloc(2).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.owner(a), Some(1));
        assert_eq!(t.raw(a), Some([0, 0]), "a new entry is not present");

        let e = sample();
        assert_eq!(t.set(1, a, &e), Ok(Invalidation(a)));
        assert_eq!(t.raw(a), Some(e.to_raw()));
        // Partition 2 may not touch partition 1's entry, and nothing changes.
        assert_eq!(
            t.set(2, a, &Irte { vector: 0x99, ..e }),
            Err(IrteError::NotOwner {
                index: a,
                owner: 1,
                caller: 2
            })
        );
        assert_eq!(
            t.free(2, a),
            Err(IrteError::NotOwner {
                index: a,
                owner: 1,
                caller: 2
            })
        );
        assert_eq!(t.raw(a), Some(e.to_raw()));
        assert_eq!(
            t.set(1, IrteIndex(9), &e),
            Err(IrteError::OutOfRange(IrteIndex(9)))
        );
        let unused = IrteIndex((0..4).find(|&i| i != a.0 && i != b.0).unwrap());
        assert_eq!(t.set(1, unused, &e), Err(IrteError::NotAllocated(unused)));
        assert_eq!(t.raw(unused), Some([0, 0]));

        assert_eq!(t.free(1, a), Ok(Invalidation(a)));
        assert_eq!(t.raw(a), Some([0, 0]));
        assert_eq!(t.owner(a), None);
        assert_eq!(t.free(1, a), Err(IrteError::NotAllocated(a)));
        assert_eq!(t.allocated(), 1);
    }

    #[test]
    fn capacity_is_bounded() {
        let mut mem = [[0u64, 0]; 8];
        let mut owners = vec![None; 8];
        let mut t = InterruptTable::new(&mut mem[..], &mut owners).unwrap();
        let got: Vec<_> = (0..8).map(|_| t.alloc(5).unwrap()).collect();
        let mut sorted: Vec<u16> = got.iter().map(|i| i.0).collect();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..8).collect::<Vec<u16>>());
        assert_eq!(t.alloc(5), Err(IrteError::Full));
        assert_eq!(t.alloc_block(5, 1), Err(IrteError::Full));
        let _ = t.free(5, IrteIndex(6)).unwrap();
        assert_eq!(t.alloc(6), Ok(IrteIndex(6)));
    }

    #[test]
    fn blocks_are_aligned_and_free_all_releases_an_owner() {
        let mut mem = vec![[0u64, 0]; 16];
        let mut owners = vec![None; 16];
        let mut t = InterruptTable::new(&mut mem[..], &mut owners).unwrap();
        let single = t.alloc(1).unwrap();
        assert_eq!(single, IrteIndex(0));
        let blk = t.alloc_block(2, 4).unwrap();
        assert_eq!(blk, IrteIndex(4), "first aligned block of 4 free entries");
        assert_eq!(t.alloc_block(2, 3), Err(IrteError::TableSize(3)));
        assert_eq!(t.alloc_block(2, 32), Err(IrteError::TableSize(32)));
        for i in 4..8 {
            assert_eq!(t.owner(IrteIndex(i)), Some(2));
            let _ = t.set(2, IrteIndex(i), &sample()).unwrap();
        }
        let mut invalidated = Vec::new();
        t.free_all(2, |inv| invalidated.push(inv.0 .0));
        assert_eq!(invalidated, vec![4, 5, 6, 7]);
        assert_eq!(t.allocated(), 1);
        for i in 4..8 {
            assert_eq!(t.raw(IrteIndex(i)), Some([0, 0]));
        }
        assert_eq!(t.owner(single), Some(1));
    }

    /// Records every 64-bit store, to check the hardware never sees a mixed entry.
    struct Logged {
        mem: Vec<[u64; 2]>,
        seen: Vec<[u64; 2]>,
    }

    impl IrtMemory for Logged {
        fn entries(&self) -> usize {
            self.mem.len()
        }
        fn read(&self, i: usize) -> [u64; 2] {
            self.mem[i]
        }
        fn write_low(&mut self, i: usize, v: u64) {
            self.mem[i][0] = v;
            self.seen.push(self.mem[i]);
        }
        fn write_high(&mut self, i: usize, v: u64) {
            self.mem[i][1] = v;
            self.seen.push(self.mem[i]);
        }
    }

    #[test]
    fn updates_never_expose_a_mixed_present_entry() {
        let mut mem = Logged {
            mem: vec![[0, 0]; 2],
            seen: Vec::new(),
        };
        let mut owners = vec![None; 2];
        let mut t = InterruptTable::new(&mut mem, &mut owners).unwrap();
        let i = t.alloc(1).unwrap();
        let old = sample();
        let _ = t.set(1, i, &old).unwrap();
        // Same source, new vector: one store of the low half.
        let new_vec = Irte {
            vector: 0x40,
            ..old
        };
        // New source: not present, high, low.
        let new_src = Irte {
            source: SourceValidation::RequesterId(SourceId(0x0100)),
            ..new_vec
        };
        mem.seen.clear();
        let mut t = InterruptTable::new(&mut mem, &mut owners).unwrap();
        let i = t.alloc(1).unwrap();
        let _ = t.set(1, i, &old).unwrap();
        let _ = t.set(1, i, &new_vec).unwrap();
        let _ = t.set(1, i, &new_src).unwrap();
        let allowed = [old.to_raw(), new_vec.to_raw(), new_src.to_raw()];
        for s in &mem.seen {
            assert!(
                !Irte::raw_present(*s) || allowed.contains(s),
                "hardware could read a mixed present entry {s:x?}"
            );
        }
        assert_eq!(mem.mem[usize::from(i.0)], new_src.to_raw());
    }
}
