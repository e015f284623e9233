//! AMD nested page table (NPT) entries.
//!
//! This module owns the bit layout of the second-stage tables of SVM partitions. Nested paging
//! (AMD64 APM Vol. 2 §15.25, "Nested Paging") walks a second tree that has exactly the format
//! of the host's long-mode four-level page tables (§5.3, "Long-Mode Page Translation"; the
//! fields are in §5.4, "Page-Translation-Table Entry Fields"; Figures 5-20 to 5-23 show the
//! entries of a 4 KiB translation). Differences from EPT that the rest of the crate must respect:
//!
//! * **Rights.** A present entry (P, bit 0) is always readable: write is R/W (bit 1), execute
//!   is the absence of NX (bit 63). So write-only and execute-only mappings do not exist.
//! * **User bit.** The processor treats every access of the nested walk as a user access
//!   (§15.25.5, "Nested Table Walk"), so U/S (bit 2) is set in every entry, tables included:
//!   a clear U/S anywhere makes every access through that entry a nested page fault.
//! * **Memory type.** There is no memory-type field. A leaf selects an entry of the host's PAT
//!   through its PWT (bit 3), PCD (bit 4) and PAT bits (§7.8, "Page-Attribute Table Mechanism"),
//!   and the PAT bit
//!   is bit 7 of a PTE but bit 12 of a 2 MiB or 1 GiB leaf, where bit 7 is PS. Nested entries
//!   use the host PAT, the guest's own tables the VMCB's G_PAT (§15.25.8, "Combining Memory
//!   Types, MTRRs"). **atoll assumes the host's IA32_PAT keeps its reset value**
//!   ([`DEFAULT_PAT`]): WB is index 0, WT index 1, UC index 3; WC and WP
//!   have no index there and cannot be mapped.
//! * **Execute-disable.** NX is a reserved bit unless the host's EFER.NXE is set when VMRUN runs
//!   (the nested walk uses the host's paging mode, §15.25.4): the SVM backend must set NXE, or
//!   every non-executable leaf faults.
//! * **No EPTP.** The root is named by its physical address in the VMCB's N_CR3 field
//!   (§15.25.3, "Enabling Nested Paging"); see [`crate::Npt::nested_cr3`].
//! * **Invalidation** is not done here and not by INVEPT: after `unmap`, `protect` or a `map`
//!   that merged tables, the SVM backend flushes the partition's ASID (the VMCB TLB_CONTROL
//!   field, §15.16.1, "TLB Flush", or INVLPGA, §15.16.2 and Vol. 3 "INVLPGA") on every core that
//!   runs it, before relying on the change and before the freed frames are reused.
//!
//! [`crate::table`] builds trees out of these entries through [`crate::NptFormat`].

use crate::entry::{MemType, PageSize, Perms};
use bitflags::bitflags;
use boot::HostPhysAddr;
use core::fmt;

/// Bits 51:12: the address of the next table or of a 4 KiB page (Figures 5-20 to 5-23).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bits 51:21: the address of a 2 MiB page (bits 20:13 are reserved, bit 12 is PAT).
pub const ADDR_MASK_2M: u64 = 0x000f_ffff_ffe0_0000;
/// Bits 51:30: the address of a 1 GiB page (bits 29:13 are reserved, bit 12 is PAT).
pub const ADDR_MASK_1G: u64 = 0x000f_ffff_c000_0000;

/// The reset value of IA32_PAT (MSR 0x277; APM Vol. 2 §7.8, "Page-Attribute Table Mechanism"):
/// entries 0 to 7 are WB, WT, UC-, UC, WB, WT, UC-, UC. atoll never writes the host's PAT and
/// assumes this value.
pub const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

bitflags! {
    /// The single-bit fields of a long-mode paging entry used as a nested page table entry
    /// (APM Vol. 2 §5.4.1, "Field Definitions"). The address (bits 51:12, or 51:21 and 51:30 in
    /// large leaves) is a field, read and written through [`NptEntry`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct NptFlags: u64 {
        /// Bit 0, P: the entry is used. A present leaf always allows reads.
        const PRESENT = 1 << 0;
        /// Bit 1, R/W: writes allowed (rights are ANDed along the walk).
        const WRITABLE = 1 << 1;
        /// Bit 2, U/S: user accesses allowed. Nested walks are user accesses (§15.25.5), so
        /// atoll sets it in every entry.
        const USER = 1 << 2;
        /// Bit 3, PWT: bit 0 of the PAT index in a leaf (write-through in a table entry).
        const WRITE_THROUGH = 1 << 3;
        /// Bit 4, PCD: bit 1 of the PAT index in a leaf (cache-disable in a table entry).
        const CACHE_DISABLE = 1 << 4;
        /// Bit 5, A: set by the processor when the entry is used (§5.4.2).
        const ACCESSED = 1 << 5;
        /// Bit 6, D, leaves only: set by the processor on a write (§5.4.2).
        const DIRTY = 1 << 6;
        /// Bit 7, PS, in a PDPE or PDE: the entry maps a 1 GiB or 2 MiB page. Reserved (must be
        /// zero) in a PML4E.
        const LARGE = 1 << 7;
        /// Bit 7 in a PTE: bit 2 of the PAT index (the same bit as [`NptFlags::LARGE`]).
        const PAT_4K = 1 << 7;
        /// Bit 8, G: global; ignored by nested walks, never set by atoll.
        const GLOBAL = 1 << 8;
        /// Bit 12 in a 2 MiB or 1 GiB leaf: bit 2 of the PAT index.
        const PAT_LARGE = 1 << 12;
        /// Bit 63, NX: instruction fetches not allowed (needs the host's EFER.NXE).
        const NO_EXECUTE = 1 << 63;
    }
}

/// An index into the PAT, 0 to 7: the PAT, PCD and PWT bits of a leaf, in that order from the
/// most significant (APM Vol. 2 §7.8, "Page-Attribute Table Mechanism").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatIndex(u8);

impl PatIndex {
    /// The index `index`, if it is below 8.
    pub const fn new(index: u8) -> Option<Self> {
        if index < 8 {
            Some(Self(index))
        } else {
            None
        }
    }

    /// The index.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The lowest index selecting `mem` in [`DEFAULT_PAT`]: WB 0, WT 1, UC 3. `None` for WC and
    /// WP, which the default PAT does not hold.
    pub const fn for_default_pat(mem: MemType) -> Option<Self> {
        match mem {
            MemType::WriteBack => Some(Self(0)),
            MemType::WriteThrough => Some(Self(1)),
            MemType::Uncacheable => Some(Self(3)),
            MemType::WriteCombining | MemType::WriteProtected => None,
        }
    }

    /// The memory type this index selects in [`DEFAULT_PAT`]; `None` for UC- (indices 2 and 6),
    /// which has no [`MemType`] and which atoll never writes.
    pub const fn default_pat_type(self) -> Option<MemType> {
        // PAT entry encodings (§7.8): 0 UC, 1 WC, 4 WT, 5 WP, 6 WB, 7 UC-; the same values as
        // the EPT memory types (SDM Vol. 3C Table 12-8), so `MemType` decodes them.
        let encoding = (DEFAULT_PAT >> (8 * (self.0 & 7) as u32)) as u8 & 7;
        MemType::from_bits(encoding)
    }

    /// The PWT, PCD and PAT bits of a leaf of `size` selecting this index.
    pub const fn leaf_bits(self, size: PageSize) -> u64 {
        let pat = match size {
            PageSize::Size4K => NptFlags::PAT_4K.bits(),
            PageSize::Size2M | PageSize::Size1G => NptFlags::PAT_LARGE.bits(),
        };
        let mut bits = 0;
        if self.0 & 1 != 0 {
            bits |= NptFlags::WRITE_THROUGH.bits();
        }
        if self.0 & 2 != 0 {
            bits |= NptFlags::CACHE_DISABLE.bits();
        }
        if self.0 & 4 != 0 {
            bits |= pat;
        }
        bits
    }

    /// The index a leaf of `size` whose bits are `raw` selects.
    pub const fn of_leaf(raw: u64, size: PageSize) -> Self {
        let pat = match size {
            PageSize::Size4K => NptFlags::PAT_4K.bits(),
            PageSize::Size2M | PageSize::Size1G => NptFlags::PAT_LARGE.bits(),
        };
        let mut index = 0;
        if raw & NptFlags::WRITE_THROUGH.bits() != 0 {
            index |= 1;
        }
        if raw & NptFlags::CACHE_DISABLE.bits() != 0 {
            index |= 2;
        }
        if raw & pat != 0 {
            index |= 4;
        }
        Self(index)
    }
}

impl fmt::Display for PatIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PAT{}", self.0)
    }
}

/// One entry of a nested page table (PML4E, PDPE, PDE or PTE in long mode; APM Vol. 2 §5.3
/// and §5.4).
///
/// As with EPT, whether an entry is a leaf depends on the level of the table holding it, and
/// here so does where its PAT bit is, so the accessors that need it take a [`PageSize`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct NptEntry(u64);

impl NptEntry {
    /// The all-zero, not-present entry.
    pub const EMPTY: Self = Self(0);

    /// The bits every entry atoll writes carries: present and user (§15.25.5).
    const BASE: u64 = NptFlags::PRESENT.bits() | NptFlags::USER.bits();

    /// The entry whose bits are `raw`.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw bits.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// A non-leaf entry referencing the table at `next`: P, R/W and U/S set, NX clear, so that
    /// only leaves decide rights (they are ANDed along the walk, §5.6, "Page-Protection
    /// Checks"), and PWT = PCD = 0 (the table itself is write-back under the default PAT).
    /// Bits of `next` outside 51:12 are dropped.
    pub const fn table(next: HostPhysAddr) -> Self {
        Self((next.as_u64() & ADDR_MASK) | Self::BASE | NptFlags::WRITABLE.bits())
    }

    /// A leaf mapping the `size` page at `hpa` with `perms` and the default-PAT index of `mem`,
    /// or `None` if NPT cannot express them: `perms` without READ, with unknown bits, or a
    /// memory type without a default-PAT index (WC, WP). Bits of `hpa` below the page size or
    /// above bit 51 are dropped; PS is set for 2 MiB and 1 GiB pages.
    pub const fn page(
        hpa: HostPhysAddr,
        size: PageSize,
        perms: Perms,
        mem: MemType,
    ) -> Option<Self> {
        let Some(index) = PatIndex::for_default_pat(mem) else {
            return None;
        };
        if !perms.contains(Perms::READ) || perms.bits() & !Perms::all().bits() != 0 {
            return None;
        }
        let large = match size {
            PageSize::Size4K => 0,
            PageSize::Size2M | PageSize::Size1G => NptFlags::LARGE.bits(),
        };
        let raw = (hpa.as_u64() & addr_mask(size)) | Self::BASE | index.leaf_bits(size) | large;
        Some(Self(raw).with_perms(perms))
    }

    /// The single-bit fields (unknown bits dropped).
    pub const fn flags(self) -> NptFlags {
        NptFlags::from_bits_truncate(self.0)
    }

    /// Whether the processor uses the entry: P (bit 0).
    pub const fn is_present(self) -> bool {
        self.0 & NptFlags::PRESENT.bits() != 0
    }

    /// Bit 7: PS in a PDPE or PDE (in a PTE the same bit is PAT).
    pub const fn is_large(self) -> bool {
        self.0 & NptFlags::LARGE.bits() != 0
    }

    /// The rights of a present leaf at any level: READ, WRITE if R/W, EXECUTE unless NX. Empty
    /// when not present.
    pub const fn perms(self) -> Perms {
        if !self.is_present() {
            return Perms::empty();
        }
        let mut bits = Perms::READ.bits();
        if self.0 & NptFlags::WRITABLE.bits() != 0 {
            bits |= Perms::WRITE.bits();
        }
        if self.0 & NptFlags::NO_EXECUTE.bits() == 0 {
            bits |= Perms::EXECUTE.bits();
        }
        Perms::from_bits_truncate(bits)
    }

    /// This entry with R/W and NX set from `perms` (every other bit, P included, kept; READ is
    /// implied by P and cannot be taken away here).
    pub const fn with_perms(self, perms: Perms) -> Self {
        let mut raw = self.0 & !(NptFlags::WRITABLE.bits() | NptFlags::NO_EXECUTE.bits());
        if perms.contains(Perms::WRITE) {
            raw |= NptFlags::WRITABLE.bits();
        }
        if !perms.contains(Perms::EXECUTE) {
            raw |= NptFlags::NO_EXECUTE.bits();
        }
        Self(raw)
    }

    /// The PAT index of a leaf of `size`.
    pub const fn pat_index(self, size: PageSize) -> PatIndex {
        PatIndex::of_leaf(self.0, size)
    }

    /// The memory type a leaf of `size` selects under [`DEFAULT_PAT`] (`None` for UC-).
    pub const fn mem_type(self, size: PageSize) -> Option<MemType> {
        self.pat_index(size).default_pat_type()
    }

    /// The address of the next table (bits 51:12) of a non-leaf entry.
    pub const fn table_addr(self) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & ADDR_MASK)
    }

    /// The address of the page a leaf of `size` maps.
    pub const fn page_addr(self, size: PageSize) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & addr_mask(size))
    }
}

impl fmt::Debug for NptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NptEntry({:#018x})", self.0)
    }
}

/// The address field of a leaf of `size`.
pub(crate) const fn addr_mask(size: PageSize) -> u64 {
    match size {
        PageSize::Size4K => ADDR_MASK,
        PageSize::Size2M => ADDR_MASK_2M,
        PageSize::Size1G => ADDR_MASK_1G,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 1;
    const RW: u64 = 1 << 1;
    const US: u64 = 1 << 2;
    const PWT: u64 = 1 << 3;
    const PCD: u64 = 1 << 4;
    const PS: u64 = 1 << 7;
    const NX: u64 = 1 << 63;

    #[test]
    fn default_pat_indices() {
        let want = [
            Some(MemType::WriteBack),
            Some(MemType::WriteThrough),
            None,
            Some(MemType::Uncacheable),
        ];
        for i in 0..8 {
            let index = PatIndex::new(i).unwrap();
            assert_eq!(index.default_pat_type(), want[i as usize % 4], "{index}");
        }
        assert_eq!(PatIndex::new(8), None);
        for (mem, index) in [
            (MemType::WriteBack, Some(0)),
            (MemType::WriteThrough, Some(1)),
            (MemType::Uncacheable, Some(3)),
            (MemType::WriteCombining, None),
            (MemType::WriteProtected, None),
        ] {
            let got = PatIndex::for_default_pat(mem);
            assert_eq!(got.map(PatIndex::get), index, "{mem}");
            if let Some(i) = got {
                assert_eq!(i.default_pat_type(), Some(mem));
            }
        }
    }

    #[test]
    fn pat_bit_moves_with_the_page_size() {
        let seven = PatIndex::new(7).unwrap();
        assert_eq!(seven.leaf_bits(PageSize::Size4K), PWT | PCD | (1 << 7));
        assert_eq!(seven.leaf_bits(PageSize::Size2M), PWT | PCD | (1 << 12));
        assert_eq!(seven.leaf_bits(PageSize::Size1G), PWT | PCD | (1 << 12));
        for i in 0..8 {
            let index = PatIndex::new(i).unwrap();
            for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
                assert_eq!(PatIndex::of_leaf(index.leaf_bits(size), size), index);
            }
        }
        // In a PTE bit 12 is address; in a large leaf bit 7 is PS: neither is PAT there.
        assert_eq!(PatIndex::of_leaf(1 << 12, PageSize::Size4K).get(), 0);
        assert_eq!(PatIndex::of_leaf(PS, PageSize::Size2M).get(), 0);
    }

    #[test]
    fn leaf_and_table_encodings() {
        let h = HostPhysAddr::new;
        let pde = NptEntry::page(
            h(0x4060_0000),
            PageSize::Size2M,
            Perms::READ | Perms::WRITE | Perms::EXECUTE,
            MemType::WriteBack,
        )
        .unwrap();
        assert_eq!(pde.raw(), 0x4060_0000 | P | RW | US | PS);
        assert_eq!(pde.perms(), Perms::all());
        assert_eq!(pde.mem_type(PageSize::Size2M), Some(MemType::WriteBack));

        let pte = NptEntry::page(
            h(0x1234_5fff),
            PageSize::Size4K,
            Perms::READ,
            MemType::Uncacheable,
        )
        .unwrap();
        assert_eq!(pte.raw(), 0x1234_5000 | P | US | PWT | PCD | NX);
        assert_eq!(pte.perms(), Perms::READ);
        assert_eq!(pte.mem_type(PageSize::Size4K), Some(MemType::Uncacheable));

        let pdpe = NptEntry::page(
            h(0x8_4060_1000),
            PageSize::Size1G,
            Perms::READ | Perms::EXECUTE,
            MemType::WriteThrough,
        )
        .unwrap();
        assert_eq!(pdpe.raw(), 0x8_4000_0000 | P | US | PWT | PS);
        assert_eq!(
            pdpe.flags(),
            NptFlags::PRESENT | NptFlags::USER | NptFlags::WRITE_THROUGH | NptFlags::LARGE
        );
        assert_eq!(pdpe.page_addr(PageSize::Size1G), h(0x8_4000_0000));

        // Address bits above 51 are dropped, never folded into NX or the ignored bits.
        let high = NptEntry::page(
            h(u64::MAX),
            PageSize::Size4K,
            Perms::all(),
            MemType::WriteBack,
        )
        .unwrap();
        assert_eq!(high.raw() >> 52, 0);
        assert_eq!(high.page_addr(PageSize::Size4K).as_u64(), ADDR_MASK);

        let table = NptEntry::table(h(0xabc_dfff));
        assert_eq!(table.raw(), 0xabc_d000 | P | RW | US);
        assert_eq!(table.table_addr(), h(0xabc_d000));
        assert!(table.is_present() && !table.is_large());
        assert!(!NptEntry::EMPTY.is_present());
        assert_eq!(NptEntry::EMPTY.perms(), Perms::empty());
        // Accessed and dirty alone do not make an entry present.
        assert!(!NptEntry::from_raw(0x60).is_present());
    }

    #[test]
    fn unrepresentable_leaves_are_refused() {
        let h = HostPhysAddr::new(0);
        for perms in [
            Perms::empty(),
            Perms::WRITE,
            Perms::EXECUTE,
            Perms::WRITE | Perms::EXECUTE,
            Perms::from_bits_retain(0x9),
        ] {
            assert_eq!(
                NptEntry::page(h, PageSize::Size4K, perms, MemType::WriteBack),
                None,
                "{perms}"
            );
        }
        for mem in [MemType::WriteCombining, MemType::WriteProtected] {
            assert_eq!(NptEntry::page(h, PageSize::Size2M, Perms::READ, mem), None);
        }
    }

    #[test]
    fn rights_change_in_place() {
        let e = NptEntry::from_raw(0x20_0000 | P | US | PS | (1 << 12) | 0x60 | NX);
        assert_eq!(e.perms(), Perms::READ);
        let rw = e.with_perms(Perms::READ | Perms::WRITE);
        assert_eq!(
            rw.raw(),
            0x20_0000 | P | RW | US | PS | (1 << 12) | 0x60 | NX
        );
        let rx = rw.with_perms(Perms::READ | Perms::EXECUTE);
        assert_eq!(rx.raw(), 0x20_0000 | P | US | PS | (1 << 12) | 0x60);
        assert_eq!(rx.perms(), Perms::READ | Perms::EXECUTE);
        assert_eq!(rx.pat_index(PageSize::Size2M).get(), 4);
        assert_eq!(rx.mem_type(PageSize::Size2M), Some(MemType::WriteBack));
    }
}
