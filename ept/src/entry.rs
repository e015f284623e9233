//! EPT paging-structure entries and the EPT pointer.
//!
//! This module owns the bit layouts: the entries of the four EPT paging structures (SDM Vol. 3C
//! §29.3.2, "EPT Translation Mechanism", Figure 29-1 and Tables 29-1 to 29-6), the access
//! permissions ([`Perms`]) and memory types ([`MemType`], §29.3.7) a leaf carries, the leaf page
//! sizes ([`PageSize`]) and the EPT pointer ([`Eptp`], §25.6.11). It knows nothing about where
//! tables live; [`crate::table`] builds trees out of these entries.

use crate::EptCaps;
use bitflags::bitflags;
use boot::HostPhysAddr;
use core::fmt;

/// Bits 51:12: the physical address of the next table or of a 4 KiB page (Tables 29-1, 29-3,
/// 29-5, 29-6).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bits 51:21: the physical address of a 2 MiB page (Table 29-4; bits 20:12 are reserved).
pub const ADDR_MASK_2M: u64 = 0x000f_ffff_ffe0_0000;
/// Bits 51:30: the physical address of a 1 GiB page (Table 29-2; bits 29:12 are reserved).
pub const ADDR_MASK_1G: u64 = 0x000f_ffff_c000_0000;
/// Bits 5:3: the EPT memory type of a leaf (Tables 29-2, 29-4, 29-6).
pub const MEM_TYPE_MASK: u64 = 0b111 << MEM_TYPE_SHIFT;
const MEM_TYPE_SHIFT: u32 = 3;

bitflags! {
    /// The single-bit fields of an EPT paging-structure entry (SDM Vol. 3C §29.3.2, Tables 29-1
    /// to 29-6). The memory type (bits 5:3) and the address (bits 51:12) are fields, read and
    /// written through [`EptEntry`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct EntryFlags: u64 {
        /// Bit 0: reads allowed from the region this entry controls.
        const READ = 1 << 0;
        /// Bit 1: writes allowed.
        const WRITE = 1 << 1;
        /// Bit 2: instruction fetches allowed (supervisor-mode fetches when mode-based execute
        /// control is on).
        const EXECUTE = 1 << 2;
        /// Bit 6, leaves only: ignore the guest PAT memory type (§29.3.7).
        const IGNORE_PAT = 1 << 6;
        /// Bit 7 in a PDPTE or PDE: the entry maps a 1 GiB or 2 MiB page instead of referencing
        /// a table (Tables 29-2 and 29-4). Reserved in a PML4E, ignored in a PTE.
        const LARGE = 1 << 7;
        /// Bit 8: set by the processor when the entry is used, if the EPTP enables
        /// accessed/dirty flags (§29.3.5).
        const ACCESSED = 1 << 8;
        /// Bit 9, leaves only: set by the processor on a write, if accessed/dirty flags are on.
        const DIRTY = 1 << 9;
        /// Bit 10: user-mode instruction fetches allowed, if mode-based execute control is on.
        const USER_EXECUTE = 1 << 10;
    }
}

bitflags! {
    /// Access rights of a guest-physical page: bits 2:0 of an EPT entry (§29.3.2).
    ///
    /// An entry with all three clear is "not present". WRITE without READ is an EPT
    /// misconfiguration (§29.3.3.1), and EXECUTE without READ needs
    /// [`EptCaps::EXECUTE_ONLY`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Perms: u64 {
        /// Reads allowed.
        const READ = 1 << 0;
        /// Writes allowed.
        const WRITE = 1 << 1;
        /// Instruction fetches allowed.
        const EXECUTE = 1 << 2;
    }
}

impl Perms {
    /// Whether an EPT leaf may carry these rights: at least one of them, only known bits, and
    /// never WRITE without READ (an EPT misconfiguration, SDM Vol. 3C §29.3.3.1).
    pub const fn is_valid(self) -> bool {
        let bits = self.bits();
        bits != 0 && bits & !Self::all().bits() == 0 && bits & 0b11 != 0b10
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.contains(Self::READ) { 'r' } else { '-' };
        let w = if self.contains(Self::WRITE) { 'w' } else { '-' };
        let x = if self.contains(Self::EXECUTE) {
            'x'
        } else {
            '-'
        };
        write!(f, "{r}{w}{x}")?;
        let unknown = self.bits() & !Self::all().bits();
        if unknown != 0 {
            write!(f, "+{unknown:#x}")?;
        }
        Ok(())
    }
}

/// EPT memory type of a leaf (SDM Vol. 3C §29.3.7, "EPT and Memory Typing"; the encodings are
/// those of Table 12-8, "Memory Types That Can Be Encoded With PAT"). Values 2, 3 and 7 are
/// reserved and make the entry an EPT misconfiguration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MemType {
    /// 0: UC.
    Uncacheable = 0,
    /// 1: WC.
    WriteCombining = 1,
    /// 4: WT.
    WriteThrough = 4,
    /// 5: WP.
    WriteProtected = 5,
    /// 6: WB.
    WriteBack = 6,
}

impl MemType {
    /// Every valid memory type.
    pub const ALL: [MemType; 5] = [
        Self::Uncacheable,
        Self::WriteCombining,
        Self::WriteThrough,
        Self::WriteProtected,
        Self::WriteBack,
    ];

    /// The memory type encoded as `bits`, or `None` for a reserved or out-of-range value.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Uncacheable),
            1 => Some(Self::WriteCombining),
            4 => Some(Self::WriteThrough),
            5 => Some(Self::WriteProtected),
            6 => Some(Self::WriteBack),
            _ => None,
        }
    }

    /// The encoding.
    pub const fn bits(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for MemType {
    /// The rejected value.
    type Error = u8;

    fn try_from(bits: u8) -> Result<Self, u8> {
        Self::from_bits(bits).ok_or(bits)
    }
}

impl fmt::Display for MemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uncacheable => "UC",
            Self::WriteCombining => "WC",
            Self::WriteThrough => "WT",
            Self::WriteProtected => "WP",
            Self::WriteBack => "WB",
        })
    }
}

/// Size of the page a leaf maps: a PTE maps 4 KiB, a PDE with bit 7 set 2 MiB, a PDPTE with bit 7
/// set 1 GiB (SDM Vol. 3C §29.3.2). Ordered by size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB, mapped by a PTE (Table 29-6).
    Size4K,
    /// 2 MiB, mapped by a PDE (Table 29-4); needs [`EptCaps::PAGE_2M`].
    Size2M,
    /// 1 GiB, mapped by a PDPTE (Table 29-2); needs [`EptCaps::PAGE_1G`].
    Size1G,
}

impl PageSize {
    /// Bytes in a page of this size.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size1G => 1 << 30,
        }
    }

    /// The largest size the processor supports, from its capabilities.
    pub fn largest_supported(caps: &EptCaps) -> Self {
        if caps.contains(EptCaps::PAGE_1G) {
            Self::Size1G
        } else if caps.contains(EptCaps::PAGE_2M) {
            Self::Size2M
        } else {
            Self::Size4K
        }
    }

    /// The size a leaf in a table at `level` (1 = PT, 2 = PD, 3 = PDPT, 4 = PML4) maps, if
    /// leaves exist there.
    pub(crate) const fn at_level(level: u8) -> Option<Self> {
        match level {
            1 => Some(Self::Size4K),
            2 => Some(Self::Size2M),
            3 => Some(Self::Size1G),
            _ => None,
        }
    }

    const fn addr_mask(self) -> u64 {
        match self {
            Self::Size4K => ADDR_MASK,
            Self::Size2M => ADDR_MASK_2M,
            Self::Size1G => ADDR_MASK_1G,
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Size4K => "4 KiB",
            Self::Size2M => "2 MiB",
            Self::Size1G => "1 GiB",
        })
    }
}

/// One entry of an EPT paging structure (PML4E, PDPTE, PDE or PTE; SDM Vol. 3C §29.3.2,
/// Tables 29-1 to 29-6).
///
/// Whether an entry is a leaf depends on the level of the table holding it (bit 7 means
/// "maps a page" only in a PDPTE or PDE), so the accessors that need it take a [`PageSize`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct EptEntry(u64);

impl EptEntry {
    /// The all-zero, not-present entry.
    pub const EMPTY: Self = Self(0);

    /// The leaf-only bits that describe a mapping: permissions, memory type, ignore-PAT and
    /// user-execute. Two leaves with equal attributes translate alike; the accessed and dirty
    /// flags are history, not attributes.
    pub(crate) const ATTR_MASK: u64 = Perms::all().bits()
        | MEM_TYPE_MASK
        | EntryFlags::IGNORE_PAT.bits()
        | EntryFlags::USER_EXECUTE.bits();
    /// Accessed and dirty flags (§29.3.5).
    pub(crate) const AD_MASK: u64 = EntryFlags::ACCESSED.bits() | EntryFlags::DIRTY.bits();

    /// The entry whose bits are `raw`.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw bits.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// A non-leaf entry referencing the table at `next` (Tables 29-1, 29-3 and 29-5) with every
    /// access right, so that only leaves decide permissions (rights are ANDed along the walk).
    /// Bits of `next` outside 51:12 are dropped.
    pub const fn table(next: HostPhysAddr) -> Self {
        Self((next.as_u64() & ADDR_MASK) | Perms::all().bits())
    }

    /// A leaf mapping the `size` page at `hpa` (Tables 29-2, 29-4, 29-6); bits of `hpa` below the
    /// page size or above bit 51 are dropped. Bit 7 is set for 2 MiB and 1 GiB pages.
    pub const fn page(hpa: HostPhysAddr, size: PageSize, perms: Perms, mem: MemType) -> Self {
        let large = match size {
            PageSize::Size4K => 0,
            PageSize::Size2M | PageSize::Size1G => EntryFlags::LARGE.bits(),
        };
        Self(
            (hpa.as_u64() & size.addr_mask())
                | (perms.bits() & Perms::all().bits())
                | ((mem.bits() as u64) << MEM_TYPE_SHIFT)
                | large,
        )
    }

    /// The single-bit fields (unknown bits dropped).
    pub const fn flags(self) -> EntryFlags {
        EntryFlags::from_bits_truncate(self.0)
    }

    /// Bits 2:0.
    pub const fn perms(self) -> Perms {
        Perms::from_bits_truncate(self.0)
    }

    /// Whether the processor uses the entry: any of bits 2:0 set (§29.3.2; bit 10 also counts
    /// under mode-based execute control, which atoll does not enable).
    pub const fn is_present(self) -> bool {
        self.0 & Perms::all().bits() != 0
    }

    /// Bit 7.
    pub const fn is_large(self) -> bool {
        self.0 & EntryFlags::LARGE.bits() != 0
    }

    /// Bits 5:3 of a leaf, or `None` if they hold a reserved encoding.
    pub const fn mem_type(self) -> Option<MemType> {
        MemType::from_bits(((self.0 & MEM_TYPE_MASK) >> MEM_TYPE_SHIFT) as u8)
    }

    /// The address of the next table (bits 51:12) of a non-leaf entry.
    pub const fn table_addr(self) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & ADDR_MASK)
    }

    /// The address of the page a leaf of `size` maps.
    pub const fn page_addr(self, size: PageSize) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & size.addr_mask())
    }

    /// This entry with bits 2:0 replaced by `perms` (unknown bits of `perms` dropped).
    pub const fn with_perms(self, perms: Perms) -> Self {
        Self((self.0 & !Perms::all().bits()) | (perms.bits() & Perms::all().bits()))
    }

    /// A leaf at `level` mapping `hpa` with the attribute and accessed/dirty bits `attrs`.
    pub(crate) const fn leaf_at(level: u8, hpa: u64, attrs: u64) -> Self {
        let (mask, large) = match PageSize::at_level(level) {
            Some(PageSize::Size4K) | None => (ADDR_MASK, 0),
            Some(size) => (size.addr_mask(), EntryFlags::LARGE.bits()),
        };
        Self((hpa & mask) | (attrs & (Self::ATTR_MASK | Self::AD_MASK)) | large)
    }
}

impl fmt::Debug for EptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EptEntry({:#018x})", self.0)
    }
}

/// The extended-page-table pointer, a VM-execution control field (SDM Vol. 3C §25.6.11,
/// Table 25-9 "Format of Extended-Page-Table Pointer").
///
/// atoll always uses write-back paging structures and four-level walks.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Eptp(u64);

impl Eptp {
    /// Bits 2:0: memory type of the paging structures, 6 = write-back.
    pub const MEM_TYPE_WB: u64 = 6;
    /// Bits 5:3: page-walk length minus one; 3 for four-level tables.
    pub const WALK_LENGTH_4: u64 = 3 << 3;
    /// Bit 6: enable accessed and dirty flags (needs [`EptCaps::ACCESSED_DIRTY`]).
    pub const ACCESSED_DIRTY: u64 = 1 << 6;

    /// The EPTP of the four-level tree whose PML4 table is at `pml4` (bits outside 51:12
    /// dropped), with accessed/dirty flags on when `ad` is true.
    pub const fn new(pml4: HostPhysAddr, ad: bool) -> Self {
        let ad_bit = if ad { Self::ACCESSED_DIRTY } else { 0 };
        Self((pml4.as_u64() & ADDR_MASK) | Self::WALK_LENGTH_4 | Self::MEM_TYPE_WB | ad_bit)
    }

    /// The value for the VMCS field.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The PML4 table's address.
    pub const fn pml4(self) -> HostPhysAddr {
        HostPhysAddr::new(self.0 & ADDR_MASK)
    }

    /// Whether accessed/dirty flags are enabled.
    pub const fn accessed_dirty(self) -> bool {
        self.0 & Self::ACCESSED_DIRTY != 0
    }
}

impl fmt::Debug for Eptp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Eptp({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_encodings() {
        let pte = EptEntry::page(
            HostPhysAddr::new(0x1234_5000),
            PageSize::Size4K,
            Perms::READ | Perms::WRITE,
            MemType::WriteBack,
        );
        assert_eq!(pte.raw(), 0x1234_5000 | 0b11 | (6 << 3));
        assert!(pte.is_present() && !pte.is_large());
        assert_eq!(pte.mem_type(), Some(MemType::WriteBack));
        assert_eq!(pte.perms(), Perms::READ | Perms::WRITE);

        let pde = EptEntry::page(
            HostPhysAddr::new(0x4060_0000),
            PageSize::Size2M,
            Perms::all(),
            MemType::Uncacheable,
        );
        assert_eq!(pde.raw(), 0x4060_0000 | 0b111 | (1 << 7));
        assert!(pde.is_present() && pde.is_large());
        assert_eq!(
            pde.page_addr(PageSize::Size2M),
            HostPhysAddr::new(0x4060_0000)
        );

        // Bits below the page size are reserved (Tables 29-2, 29-4) and must never be set.
        let pdpte = EptEntry::page(
            HostPhysAddr::new(0x8_4060_1000),
            PageSize::Size1G,
            Perms::READ | Perms::EXECUTE,
            MemType::WriteThrough,
        );
        assert_eq!(pdpte.raw(), 0x8_4000_0000 | 0b101 | (4 << 3) | (1 << 7));
        assert_eq!(
            pdpte.flags(),
            EntryFlags::READ | EntryFlags::EXECUTE | EntryFlags::LARGE
        );

        // Address bits above 51 are dropped, not folded into the ignored bits 63:52.
        let high = EptEntry::page(
            HostPhysAddr::new(u64::MAX),
            PageSize::Size4K,
            Perms::READ,
            MemType::WriteBack,
        );
        assert_eq!(high.raw() >> 52, 0);
        assert_eq!(high.page_addr(PageSize::Size4K).as_u64(), ADDR_MASK);
    }

    #[test]
    fn table_entries() {
        let e = EptEntry::table(HostPhysAddr::new(0xabc_d000));
        assert_eq!(e.raw(), 0xabc_d007);
        assert_eq!(e.table_addr(), HostPhysAddr::new(0xabc_d000));
        assert!(e.is_present() && !e.is_large());
        assert!(!EptEntry::EMPTY.is_present());
        // Accessed/dirty do not make an entry present.
        assert!(!EptEntry::from_raw(0x300).is_present());
    }

    #[test]
    fn perms_and_mem_types() {
        for (bits, ok) in [
            (0, Some(MemType::Uncacheable)),
            (1, Some(MemType::WriteCombining)),
            (2, None),
            (3, None),
            (4, Some(MemType::WriteThrough)),
            (5, Some(MemType::WriteProtected)),
            (6, Some(MemType::WriteBack)),
            (7, None),
            (0xff, None),
        ] {
            assert_eq!(MemType::from_bits(bits), ok, "bits {bits}");
            assert_eq!(MemType::try_from(bits).ok(), ok);
        }
        for m in MemType::ALL {
            assert_eq!(MemType::from_bits(m.bits()), Some(m));
            let e = EptEntry::page(HostPhysAddr::new(0), PageSize::Size4K, Perms::READ, m);
            assert_eq!(e.mem_type(), Some(m));
        }
        assert_eq!(EptEntry::from_raw(3 << 3).mem_type(), None);

        assert!(Perms::READ.is_valid());
        assert!((Perms::READ | Perms::WRITE).is_valid());
        assert!(Perms::EXECUTE.is_valid());
        assert!(!Perms::empty().is_valid());
        assert!(!Perms::WRITE.is_valid());
        assert!(!(Perms::WRITE | Perms::EXECUTE).is_valid());
        assert!(!Perms::from_bits_retain(0x9).is_valid());
        assert_eq!(Perms::all().to_string(), "rwx");
        assert_eq!(Perms::from_bits_retain(0xa).to_string(), "-w-+0x8");
        let e = EptEntry::from_raw(0x1000 | 0x7 | (6 << 3) | 0x300).with_perms(Perms::READ);
        assert_eq!(e.raw(), 0x1000 | 0x1 | (6 << 3) | 0x300);
    }

    #[test]
    fn eptp_encoding() {
        let p = Eptp::new(HostPhysAddr::new(0x12_3456_7000), false);
        assert_eq!(p.as_u64(), 0x12_3456_7000 | (3 << 3) | 6);
        assert!(!p.accessed_dirty());
        let p = Eptp::new(HostPhysAddr::new(0x12_3456_7fff), true);
        assert_eq!(p.as_u64(), 0x12_3456_7000 | (1 << 6) | (3 << 3) | 6);
        assert_eq!(p.pml4(), HostPhysAddr::new(0x12_3456_7000));
        assert!(p.accessed_dirty());
    }

    #[test]
    fn page_sizes() {
        assert!(PageSize::Size4K < PageSize::Size2M && PageSize::Size2M < PageSize::Size1G);
        assert_eq!(PageSize::Size2M.bytes(), 0x20_0000);
        let caps = EptCaps::WALK_LENGTH_4 | EptCaps::PAGE_2M;
        assert_eq!(PageSize::largest_supported(&caps), PageSize::Size2M);
        assert_eq!(
            PageSize::largest_supported(&(caps | EptCaps::PAGE_1G)),
            PageSize::Size1G
        );
        assert_eq!(
            PageSize::largest_supported(&EptCaps::empty()),
            PageSize::Size4K
        );
        assert_eq!(PageSize::at_level(1), Some(PageSize::Size4K));
        assert_eq!(PageSize::at_level(3), Some(PageSize::Size1G));
        assert_eq!(PageSize::at_level(4), None);
    }
}
