//! The remapping unit's register set (VT-d spec rev 4.x §10.4, "Register Descriptions"), typed.
//!
//! The hypervisor reaches the registers through the [`Registers`] trait, which it implements over
//! the unit's MMIO page(s) with volatile accesses; host tests implement it with
//! `model`. Every offset the driver derives from a register (fault recording at
//! CAP.FRO × 16, IOTLB at ECAP.IRO × 16) is checked against the window the DMAR declares before
//! it is used ([`crate::Unit::probe`]), so a lying capability register cannot make atoll touch
//! memory beyond the register pages.

use bitflags::bitflags;
use boot::HostPhysAddr;

/// Register offsets from the unit's base (§10.4, Table 10-1 "Address Mapping for Remapping
/// Hardware Registers").
pub mod offset {
    /// Version (32 bits, §10.4.1).
    pub const VER: u32 = 0x00;
    /// Capability (64, §10.4.2).
    pub const CAP: u32 = 0x08;
    /// Extended capability (64, §10.4.3).
    pub const ECAP: u32 = 0x10;
    /// Global command (32, write-only, §10.4.4).
    pub const GCMD: u32 = 0x18;
    /// Global status (32, §10.4.5).
    pub const GSTS: u32 = 0x1c;
    /// Root table address (64, §10.4.6).
    pub const RTADDR: u32 = 0x20;
    /// Context command, register-based invalidation (64, §10.4.7); unused once QI is on.
    pub const CCMD: u32 = 0x28;
    /// Fault status (32, §10.4.9).
    pub const FSTS: u32 = 0x34;
    /// Fault event control (32, §10.4.10).
    pub const FECTL: u32 = 0x38;
    /// Fault event data (32, §10.4.11).
    pub const FEDATA: u32 = 0x3c;
    /// Fault event address (32, §10.4.12).
    pub const FEADDR: u32 = 0x40;
    /// Fault event upper address (32, §10.4.13).
    pub const FEUADDR: u32 = 0x44;
    /// Advanced fault log (64, §10.4.15).
    pub const AFLOG: u32 = 0x58;
    /// Protected memory enable (32, §10.4.16).
    pub const PMEN: u32 = 0x64;
    /// Invalidation queue head (64, §10.4.22).
    pub const IQH: u32 = 0x80;
    /// Invalidation queue tail (64, §10.4.23).
    pub const IQT: u32 = 0x88;
    /// Invalidation queue address (64, §10.4.24).
    pub const IQA: u32 = 0x90;
    /// Invalidation completion status (32, §10.4.25).
    pub const ICS: u32 = 0x9c;
    /// Invalidation event control (32, §10.4.26).
    pub const IECTL: u32 = 0xa0;
    /// Invalidation event data (32).
    pub const IEDATA: u32 = 0xa4;
    /// Invalidation event address (32).
    pub const IEADDR: u32 = 0xa8;
    /// Invalidation event upper address (32).
    pub const IEUADDR: u32 = 0xac;
    /// Invalidation queue error record (64, §10.4.30): why the last IQE happened.
    pub const IQERCD: u32 = 0xb0;
    /// Interrupt remapping table address (64, §10.4.31).
    pub const IRTA: u32 = 0xb8;
}

/// Access to one unit's registers. On the target: volatile loads and stores to the
/// uncached MMIO mapping of the register pages; 64-bit registers are accessed with one 64-bit
/// access (§10.2 allows it). In host tests: `model::Model`.
pub trait Registers {
    /// A 32-bit register at `off` bytes from the base.
    fn read32(&self, off: u32) -> u32;
    /// A 64-bit register at `off`.
    fn read64(&self, off: u32) -> u64;
    /// Writes a 32-bit register.
    fn write32(&mut self, off: u32, value: u32);
    /// Writes a 64-bit register.
    fn write64(&mut self, off: u32, value: u64);
}

impl<T: Registers + ?Sized> Registers for &mut T {
    fn read32(&self, off: u32) -> u32 {
        (**self).read32(off)
    }
    fn read64(&self, off: u32) -> u64 {
        (**self).read64(off)
    }
    fn write32(&mut self, off: u32, value: u32) {
        (**self).write32(off, value)
    }
    fn write64(&mut self, off: u32, value: u64) {
        (**self).write64(off, value)
    }
}

/// [`Registers`] over a mapping of the register pages, with volatile accesses. An access that
/// would fall outside the window (or is misaligned) reads as all ones and writes nothing, so a
/// driver bug cannot turn into a wild access.
pub struct MmioRegisters {
    base: *mut u8,
    len: u64,
}

// SAFETY: the window is physical MMIO mapped the same on every processor (the contract of
// `new`), not memory tied to one thread; `&mut self` on every write keeps accesses exclusive
// wherever the value moves.
unsafe impl Send for MmioRegisters {}

impl MmioRegisters {
    /// # Safety
    ///
    /// `base` must be the uncached (UC) mapping of the unit's `len` bytes of registers (the
    /// DRHD's register pages), 4 KiB aligned, valid for volatile 32- and 64-bit reads and writes
    /// for as long as the value lives, and used by nothing else that would race with it.
    pub unsafe fn new(base: *mut u8, len: u64) -> Self {
        Self { base, len }
    }

    /// The pointer to `size` bytes at `off`, if inside the window and aligned.
    fn at(&self, off: u32, size: u64) -> Option<*mut u8> {
        let off = u64::from(off);
        (off % size == 0 && off.checked_add(size)? <= self.len)
            .then(|| self.base.wrapping_add(off as usize))
    }
}

impl Registers for MmioRegisters {
    fn read32(&self, off: u32) -> u32 {
        match self.at(off, 4) {
            // SAFETY: `at` checked the access lies inside the window `new`'s contract makes
            // valid, 4-byte aligned.
            Some(p) => unsafe { core::ptr::read_volatile(p.cast::<u32>()) },
            None => u32::MAX,
        }
    }

    fn read64(&self, off: u32) -> u64 {
        match self.at(off, 8) {
            // SAFETY: as in `read32`, 8-byte aligned.
            Some(p) => unsafe { core::ptr::read_volatile(p.cast::<u64>()) },
            None => u64::MAX,
        }
    }

    fn write32(&mut self, off: u32, value: u32) {
        if let Some(p) = self.at(off, 4) {
            // SAFETY: as in `read32`.
            unsafe { core::ptr::write_volatile(p.cast::<u32>(), value) }
        }
    }

    fn write64(&mut self, off: u32, value: u64) {
        if let Some(p) = self.at(off, 8) {
            // SAFETY: as in `read64`.
            unsafe { core::ptr::write_volatile(p.cast::<u64>(), value) }
        }
    }
}

const fn bits(raw: u64, lo: u32, width: u32) -> u64 {
    (raw >> lo) & ((1 << width) - 1)
}

/// The capability register (§10.4.2). Accessors decode one field each; no value is invalid
/// (reserved encodings come back as they are and the driver refuses them where it matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cap(pub u64);

impl Cap {
    /// ND (bits 2:0): number of domains supported, encoded.
    pub const fn nd(self) -> u8 {
        bits(self.0, 0, 3) as u8
    }

    /// Domain ids the unit supports: 2^(4 + 2·ND) (16 … 65536); ND = 7 is reserved and read as
    /// the smallest, 16.
    pub const fn domains(self) -> u32 {
        let nd = self.nd();
        if nd > 6 {
            16
        } else {
            1 << (4 + 2 * nd as u32)
        }
    }

    /// RWBF (bit 4): software must flush the write buffer after changing tables.
    pub const fn rwbf(self) -> bool {
        self.0 & (1 << 4) != 0
    }

    /// PLMR (bit 5): protected low-memory region supported.
    pub const fn plmr(self) -> bool {
        self.0 & (1 << 5) != 0
    }

    /// PHMR (bit 6): protected high-memory region supported.
    pub const fn phmr(self) -> bool {
        self.0 & (1 << 6) != 0
    }

    /// CM (bit 7): caching mode — the unit may cache not-present and erroneous entries, so
    /// not-present → present changes must be invalidated too (a virtual IOMMU such as QEMU's
    /// reports it to see every change); domain id 0 is then reserved.
    pub const fn caching_mode(self) -> bool {
        self.0 & (1 << 7) != 0
    }

    /// SAGAW (bits 12:8): supported adjusted guest address widths; bit 1 = 39-bit 3-level,
    /// bit 2 = 48-bit 4-level, bit 3 = 57-bit 5-level tables.
    pub const fn sagaw(self) -> u8 {
        bits(self.0, 8, 5) as u8
    }

    /// MGAW (bits 21:16): the widest DMA address the unit translates, in bits (field + 1).
    pub const fn mgaw(self) -> u8 {
        bits(self.0, 16, 6) as u8 + 1
    }

    /// ZLR (bit 22): zero-length DMA reads are allowed to pages without read permission.
    pub const fn zlr(self) -> bool {
        self.0 & (1 << 22) != 0
    }

    /// FRO (bits 33:24) × 16: byte offset of the first fault recording register.
    pub const fn fault_record_offset(self) -> u64 {
        bits(self.0, 24, 10) * 16
    }

    /// Offset of fault recording register `index` (< [`Cap::nfr`]): FRO × 16 + index × 16.
    pub const fn fault_record_register(self, index: u16) -> u64 {
        self.fault_record_offset() + index as u64 * 16
    }

    /// SLLPS (bits 37:34): bit 0 = 2 MiB, bit 1 = 1 GiB second-level large pages.
    pub const fn sllps(self) -> u8 {
        bits(self.0, 34, 4) as u8
    }

    /// Whether 2 MiB second-level leaves are supported.
    pub const fn page_2m(self) -> bool {
        self.sllps() & 1 != 0
    }

    /// Whether 1 GiB second-level leaves are supported.
    pub const fn page_1g(self) -> bool {
        self.sllps() & 2 != 0
    }

    /// PSI (bit 39): page-selective IOTLB invalidation supported.
    pub const fn psi(self) -> bool {
        self.0 & (1 << 39) != 0
    }

    /// NFR (bits 47:40): number of fault recording registers (field + 1, 1 … 256).
    pub const fn nfr(self) -> u16 {
        bits(self.0, 40, 8) as u16 + 1
    }

    /// MAMV (bits 53:48): largest address mask of page-selective invalidation.
    pub const fn mamv(self) -> u8 {
        bits(self.0, 48, 6) as u8
    }

    /// DWD (bit 54): write draining.
    pub const fn dwd(self) -> bool {
        self.0 & (1 << 54) != 0
    }

    /// DRD (bit 55): read draining.
    pub const fn drd(self) -> bool {
        self.0 & (1 << 55) != 0
    }

    /// PI (bit 59): posted interrupts.
    pub const fn pi(self) -> bool {
        self.0 & (1 << 59) != 0
    }

    /// ESRTPS (bit 63): setting the root table pointer also invalidates all caches.
    pub const fn esrtps(self) -> bool {
        self.0 & (1 << 63) != 0
    }

    /// ESIRTPS (bit 62): setting the interrupt remapping table pointer invalidates the IEC.
    pub const fn esirtps(self) -> bool {
        self.0 & (1 << 62) != 0
    }
}

/// The extended capability register (§10.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ecap(pub u64);

impl Ecap {
    /// C (bit 0): page-walk coherency — the unit snoops the tables, no cache flush needed.
    pub const fn coherent(self) -> bool {
        self.0 & 1 != 0
    }

    /// QI (bit 1): queued invalidation.
    pub const fn qi(self) -> bool {
        self.0 & (1 << 1) != 0
    }

    /// DT (bit 2): device-TLBs (ATS).
    pub const fn dt(self) -> bool {
        self.0 & (1 << 2) != 0
    }

    /// IR (bit 3): interrupt remapping.
    pub const fn ir(self) -> bool {
        self.0 & (1 << 3) != 0
    }

    /// EIM (bit 4): extended interrupt mode (32-bit x2APIC destination ids).
    pub const fn eim(self) -> bool {
        self.0 & (1 << 4) != 0
    }

    /// PT (bit 6): pass-through translation type.
    pub const fn pt(self) -> bool {
        self.0 & (1 << 6) != 0
    }

    /// SC (bit 7): snoop control — the SNP bit of second-level entries exists.
    pub const fn sc(self) -> bool {
        self.0 & (1 << 7) != 0
    }

    /// IRO (bits 17:8) × 16: byte offset of the IOTLB registers (IVA; IOTLB is at +8).
    pub const fn iotlb_offset(self) -> u64 {
        bits(self.0, 8, 10) * 16
    }

    /// Offset of the IOTLB invalidate register (IRO × 16 + 8; register-based invalidation,
    /// which atoll does not use once the queue is on).
    pub const fn iotlb_register_offset(self) -> u64 {
        self.iotlb_offset() + 8
    }

    /// MHMV (bits 23:20): largest handle mask of interrupt-entry-cache invalidation.
    pub const fn mhmv(self) -> u8 {
        bits(self.0, 20, 4) as u8
    }

    /// NEST (bit 26): nested translation.
    pub const fn nest(self) -> bool {
        self.0 & (1 << 26) != 0
    }

    /// PASID (bit 40).
    pub const fn pasid(self) -> bool {
        self.0 & (1 << 40) != 0
    }

    /// SMTS (bit 43): scalable-mode translation (atoll uses legacy mode).
    pub const fn smts(self) -> bool {
        self.0 & (1 << 43) != 0
    }
}

bitflags! {
    /// Global command register bits (§10.4.4). The register is write-only and every write sets
    /// all of them, so software writes GSTS's persistent bits back with one bit changed
    /// ([`crate::Unit`] does).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct GlobalCommand: u32 {
        /// TE (31): translation enable.
        const TE = 1 << 31;
        /// SRTP (30): set root table pointer (one-shot).
        const SRTP = 1 << 30;
        /// SFL (29): set fault log (one-shot, deprecated).
        const SFL = 1 << 29;
        /// EAFL (28): enable advanced fault logging.
        const EAFL = 1 << 28;
        /// WBF (27): write buffer flush (one-shot).
        const WBF = 1 << 27;
        /// QIE (26): queued invalidation enable.
        const QIE = 1 << 26;
        /// IRE (25): interrupt remapping enable.
        const IRE = 1 << 25;
        /// SIRTP (24): set interrupt remap table pointer (one-shot).
        const SIRTP = 1 << 24;
        /// CFI (23): compatibility format interrupts pass through. atoll never sets it.
        const CFI = 1 << 23;
    }
}

impl GlobalCommand {
    /// The one-shot commands: their status bits report the last action, not a state, and must
    /// not be written back (§10.4.4 reads GSTS and ANDs it with 0x96FF_FFFF).
    pub const ONE_SHOT: Self = Self::SRTP
        .union(Self::SFL)
        .union(Self::WBF)
        .union(Self::SIRTP);
}

bitflags! {
    /// Global status register bits (§10.4.5), one per [`GlobalCommand`] bit at the same place.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct GlobalStatus: u32 {
        /// TES (31): translation is enabled.
        const TES = 1 << 31;
        /// RTPS (30): the root table pointer was latched.
        const RTPS = 1 << 30;
        /// FLS (29).
        const FLS = 1 << 29;
        /// AFLS (28).
        const AFLS = 1 << 28;
        /// WBFS (27): a write-buffer flush is in progress.
        const WBFS = 1 << 27;
        /// QIES (26): queued invalidation is enabled.
        const QIES = 1 << 26;
        /// IRES (25): interrupt remapping is enabled.
        const IRES = 1 << 25;
        /// IRTPS (24): the interrupt remap table pointer was latched.
        const IRTPS = 1 << 24;
        /// CFIS (23): compatibility format interrupts pass.
        const CFIS = 1 << 23;
    }
}

bitflags! {
    /// Fault status register (§10.4.9); FRI (bits 15:8) through [`FaultStatus::fri`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct FaultStatus: u32 {
        /// PFO (0, RW1C): primary fault overflow — a fault was lost, every record was full.
        const PFO = 1 << 0;
        /// PPF (1, RO): some fault record has its F bit set.
        const PPF = 1 << 1;
        /// AFO (2): advanced fault overflow.
        const AFO = 1 << 2;
        /// APF (3): advanced pending fault.
        const APF = 1 << 3;
        /// IQE (4, RW1C): invalidation queue error — a bad descriptor; the queue stopped at it.
        const IQE = 1 << 4;
        /// ICE (5, RW1C): invalidation completion error (device-TLB, ATS).
        const ICE = 1 << 5;
        /// ITE (6, RW1C): invalidation time-out error (device-TLB, ATS).
        const ITE = 1 << 6;
        /// FRI (15:8): index of the first fault record to look at.
        const FRI = 0xff << 8;
    }
}

impl FaultStatus {
    /// FRI: fault record index.
    pub const fn fri(self) -> u8 {
        (self.bits() >> 8) as u8
    }
}

bitflags! {
    /// Fault event control (§10.4.10).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct FaultEventControl: u32 {
        /// IM (31): interrupt mask. atoll sets it and polls the fault records.
        const IM = 1 << 31;
        /// IP (30, RO): an interrupt was held back by the mask.
        const IP = 1 << 30;
    }
}

/// PMEN (§10.4.16) bit 31, EPM: protected memory regions enabled (firmware may leave them on).
pub const PMEN_EPM: u32 = 1 << 31;
/// PMEN bit 0, PRS: the protected regions are in force.
pub const PMEN_PRS: u32 = 1;

/// RTADDR value (§10.4.6): the root table at `root` (4 KiB aligned; low bits dropped) in legacy
/// mode (TTM, bits 11:10, = 00).
pub const fn rtaddr(root: HostPhysAddr) -> u64 {
    root.as_u64() & !0xfff
}

/// IQA value (§10.4.24): the queue at `ring`, 128-bit descriptors (DW, bit 11, = 0), one 4 KiB
/// page of 256 descriptors (QS, bits 2:0, = 0).
pub const fn iqa(ring: HostPhysAddr) -> u64 {
    ring.as_u64() & !0xfff
}

/// IQH/IQT value (§10.4.22–23) for descriptor `index`: bits 18:4 (128-bit descriptors).
pub const fn queue_index_reg(index: u16) -> u64 {
    (index as u64) << 4
}

/// The descriptor index an IQH/IQT value names (bits 18:4).
pub const fn queue_index(reg: u64) -> u16 {
    ((reg >> 4) & 0x7fff) as u16
}

/// IRTA value (§10.4.31): the table at `table` with 2^(`size_log2` + 1) entries (S, bits 3:0)
/// and EIME (bit 11) for x2APIC (32-bit) destination ids.
pub const fn irta(table: HostPhysAddr, size_log2: u8, eime: bool) -> u64 {
    (table.as_u64() & !0xfff) | ((eime as u64) << 11) | (size_log2 as u64 & 0xf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_fields() {
        // ND 6, CM, SAGAW 39+48, MGAW 48, ZLR, FRO 0x22, SLLPS 2M+1G, PSI, NFR 8, MAMV 0x12,
        // assembled field by field.
        let cap = Cap(6
            | 1 << 7
            | 0b0110 << 8
            | 47 << 16
            | 1 << 22
            | 0x22 << 24
            | 0b11 << 34
            | 1 << 39
            | 7 << 40
            | 0x12 << 48);
        assert_eq!(cap.nd(), 6);
        assert_eq!(cap.domains(), 65536);
        assert!(cap.caching_mode());
        assert!(!cap.rwbf());
        assert_eq!(cap.sagaw(), 0b0110);
        assert_eq!(cap.mgaw(), 48);
        assert!(cap.zlr());
        assert_eq!(cap.fault_record_offset(), 0x220);
        assert_eq!(cap.fault_record_register(3), 0x250);
        assert!(cap.page_2m() && cap.page_1g());
        assert!(cap.psi());
        assert_eq!(cap.nfr(), 8);
        assert_eq!(cap.mamv(), 0x12);
        assert_eq!(Cap(0).domains(), 16);
        assert_eq!(Cap(7).domains(), 16, "reserved ND");
        assert_eq!(Cap(u64::MAX).nfr(), 256);
        assert_eq!(Cap(u64::MAX).mgaw(), 64);
    }

    #[test]
    fn extended_capability_fields() {
        let ecap = Ecap(1 << 1 | 1 << 3 | 1 << 4 | 1 << 6 | 0x20 << 8 | 0xf << 20);
        assert!(ecap.qi() && ecap.ir() && ecap.eim() && ecap.pt());
        assert!(!ecap.sc() && !ecap.coherent() && !ecap.dt());
        assert_eq!(ecap.iotlb_offset(), 0x200);
        assert_eq!(ecap.iotlb_register_offset(), 0x208);
        assert_eq!(ecap.mhmv(), 0xf);
    }

    #[test]
    fn one_shot_mask_is_the_spec_constant() {
        // §10.4.4: "Status = (GSTS_REG & 96FFFFFFh)".
        assert_eq!(!GlobalCommand::ONE_SHOT.bits(), 0x96ff_ffff);
        assert_eq!(GlobalCommand::all().bits(), GlobalStatus::all().bits());
    }

    #[test]
    fn mmio_registers_stay_inside_their_window() {
        let mut page = alloc::vec![0u64; 512];
        // SAFETY: `page` is 4 KiB of 8-byte-aligned memory owned by this test and outlives
        // `regs`; nothing else touches it meanwhile.
        let mut regs = unsafe { MmioRegisters::new(page.as_mut_ptr().cast(), 4096) };
        regs.write64(offset::RTADDR, 0x1234_5000);
        regs.write32(offset::GCMD, 0x4000_0000);
        assert_eq!(regs.read64(offset::RTADDR), 0x1234_5000);
        assert_eq!(regs.read32(offset::GCMD), 0x4000_0000);
        // Outside the window or misaligned: all ones, and nothing written.
        assert_eq!(regs.read32(4096), u32::MAX);
        assert_eq!(regs.read64(4092), u64::MAX);
        assert_eq!(regs.read64(0x1c), u64::MAX);
        regs.write64(4096, 1);
        regs.write32(u32::MAX, 1);
        regs.write64(0x1c, 1);
        assert_eq!(page[0x20 / 8], 0x1234_5000);
        assert_eq!(page[0x18 / 8], 0x4000_0000);
        assert_eq!(page.iter().filter(|&&w| w != 0).count(), 2);
    }

    #[test]
    fn register_values() {
        let a = HostPhysAddr::new(0x1234_5000);
        assert_eq!(rtaddr(HostPhysAddr::new(0x1234_5fff)), 0x1234_5000);
        assert_eq!(iqa(a), 0x1234_5000);
        assert_eq!(queue_index_reg(255), 0xff0);
        assert_eq!(queue_index(0xff0), 255);
        assert_eq!(irta(a, 15, true), 0x1234_5000 | 1 << 11 | 15);
        assert_eq!(irta(a, 0xff, false), 0x1234_5000 | 0xf);
        assert_eq!(FaultStatus::from_bits_retain(0x0312).fri(), 3);
    }
}
