//! Entry formats of second-stage tables: what the table engine ([`crate::table::Tables`]) must
//! know about the bits of an entry, and the three formats atoll uses, [`EptFormat`] (Intel EPT,
//! [`crate::entry`]), [`NptFormat`] (AMD nested paging, [`crate::npt`]) and [`VtdFormat`] (the
//! second-level tables of Intel VT-d DMA remapping, VT-d spec §9.8).
//!
//! All are four-level radix trees with 512 entries a table, leaves at the PDPT (1 GiB), PD
//! (2 MiB, both with bit 7 set) and PT (4 KiB), so the walk, map, unmap, protect, split and merge
//! logic is shared. What differs is said here: how presence, rights and memory types are
//! encoded, which rights and types exist at all, and where a leaf keeps its bits at each level.
//!
//! **Attributes.** The engine handles a leaf's non-address bits as *attributes in the 4 KiB
//! layout*: the bits a 4 KiB leaf with the same meaning would carry, address cleared.
//! [`Format::leaf_attrs`] reads them out of a leaf at any level and [`Format::leaf`] writes them
//! into one. A split therefore gives each of the 512 children `leaf(child size, piece,
//! leaf_attrs(parent size, parent))`, and a merge gives the new large leaf the attributes its
//! children share. For EPT that is a plain copy of the bits (the layout is the same at every
//! level); for NPT it moves the PAT bit between bit 12 (2 MiB, 1 GiB) and bit 7 (4 KiB), where
//! bit 7 of a large leaf is PS.
//!
//! **Accessed and dirty flags** ([`Format::HISTORY_MASK`]) are history, not attributes: a split
//! copies the parent's to every child (each piece was possibly accessed or written), a merge ORs
//! the children's (no write is forgotten), and leaves that differ only in them still merge.

use crate::entry::{EptEntry, MemType, PageSize, Perms, ADDR_MASK, ADDR_MASK_1G, ADDR_MASK_2M};
use crate::npt::{self, NptEntry, NptFlags};
use crate::table::EptError;
use boot::HostPhysAddr;

mod sealed {
    /// Only this crate's formats: the engine trusts a format's addresses to name tables it
    /// allocated, so a foreign implementation could make it touch memory it does not own.
    pub trait Sealed {}
}

/// An entry format of a four-level second-stage table (see the module documentation).
///
/// Sealed: implemented by [`EptFormat`], [`NptFormat`] and [`VtdFormat`] only.
pub trait Format: sealed::Sealed {
    /// The attribute bits (4 KiB layout) that decide what a translation does. Two leaves whose
    /// attributes are equal and whose addresses are contiguous may be merged.
    const ATTR_MASK: u64;
    /// The accessed and dirty flags of a leaf (4 KiB layout; in both formats they sit at the
    /// same place in large leaves).
    const HISTORY_MASK: u64;

    /// Whether a leaf may carry `perms`, or why not.
    fn check_perms(perms: Perms) -> Result<(), EptError>;

    /// The attributes (4 KiB layout) of a leaf with `perms` and memory type `mem`, or why this
    /// format cannot express them (after [`Format::check_perms`], the memory type).
    fn attrs(perms: Perms, mem: MemType) -> Result<u64, EptError>;

    /// A non-leaf entry referencing the table at `next` and granting every right, so that only
    /// leaves decide what is allowed.
    fn table(next: HostPhysAddr) -> u64;

    /// Whether the processor uses the entry.
    fn is_present(raw: u64) -> bool;

    /// Whether bit 7 says "maps a page" (meaningful in a PDPT or PD entry only).
    fn is_large(raw: u64) -> bool;

    /// The table a present non-leaf entry references.
    fn table_addr(raw: u64) -> HostPhysAddr;

    /// A leaf of `size` mapping `hpa` (bits below the page size or above bit 51 dropped) with
    /// `attrs` in the 4 KiB layout (bits outside [`Format::ATTR_MASK`] and
    /// [`Format::HISTORY_MASK`] dropped).
    fn leaf(size: PageSize, hpa: u64, attrs: u64) -> u64;

    /// The address a leaf of `size` maps.
    fn leaf_addr(size: PageSize, raw: u64) -> u64;

    /// The attributes and history of a leaf of `size`, in the 4 KiB layout.
    fn leaf_attrs(size: PageSize, raw: u64) -> u64;

    /// The rights of a leaf (its raw bits at any level, or attributes).
    fn perms(raw: u64) -> Perms;

    /// A leaf (at any level) with its rights replaced by `perms`, which passed
    /// [`Format::check_perms`]; every other bit is kept.
    fn with_perms(raw: u64, perms: Perms) -> u64;

    /// The memory type attributes (4 KiB layout) select, or `None` for an encoding this crate
    /// never writes.
    fn mem_type(attrs: u64) -> Option<MemType>;
}

/// Intel EPT entries (SDM Vol. 3C §29.3.2, Tables 29-1 to 29-6; bits in [`crate::entry`]).
///
/// Present is any of bits 2:0; the rights are those bits, so execute-only is expressible (if
/// [`crate::EptCaps::EXECUTE_ONLY`]) and write-without-read is not (§29.3.3.1); the memory type
/// is a field (bits 5:3) and every [`MemType`] exists; the layout is the same at every level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EptFormat;

impl sealed::Sealed for EptFormat {}

impl Format for EptFormat {
    const ATTR_MASK: u64 = EptEntry::ATTR_MASK;
    const HISTORY_MASK: u64 = EptEntry::AD_MASK;

    fn check_perms(perms: Perms) -> Result<(), EptError> {
        if perms.is_valid() {
            Ok(())
        } else {
            Err(EptError::InvalidPerms { perms })
        }
    }

    fn attrs(perms: Perms, mem: MemType) -> Result<u64, EptError> {
        Self::check_perms(perms)?;
        Ok(EptEntry::page(HostPhysAddr::new(0), PageSize::Size4K, perms, mem).raw())
    }

    fn table(next: HostPhysAddr) -> u64 {
        EptEntry::table(next).raw()
    }

    fn is_present(raw: u64) -> bool {
        EptEntry::from_raw(raw).is_present()
    }

    fn is_large(raw: u64) -> bool {
        EptEntry::from_raw(raw).is_large()
    }

    fn table_addr(raw: u64) -> HostPhysAddr {
        EptEntry::from_raw(raw).table_addr()
    }

    fn leaf(size: PageSize, hpa: u64, attrs: u64) -> u64 {
        EptEntry::leaf_at(level_of(size), hpa, attrs).raw()
    }

    fn leaf_addr(size: PageSize, raw: u64) -> u64 {
        EptEntry::from_raw(raw).page_addr(size).as_u64()
    }

    fn leaf_attrs(_size: PageSize, raw: u64) -> u64 {
        raw & (Self::ATTR_MASK | Self::HISTORY_MASK)
    }

    fn perms(raw: u64) -> Perms {
        EptEntry::from_raw(raw).perms()
    }

    fn with_perms(raw: u64, perms: Perms) -> u64 {
        EptEntry::from_raw(raw).with_perms(perms).raw()
    }

    fn mem_type(attrs: u64) -> Option<MemType> {
        EptEntry::from_raw(attrs).mem_type()
    }
}

/// AMD nested page table entries: the long-mode page-table format (AMD64 APM Vol. 2 §15.25,
/// §5.3 and §5.4; bits in [`crate::npt`]).
///
/// Present is P (bit 0) and implies read, so only READ, READ|WRITE, READ|EXECUTE and all three
/// exist ([`EptError::PermsNotExpressible`] for execute-only); U/S is set everywhere (§15.25.5);
/// the memory type is a default-PAT index, so only WB, WT and UC exist
/// ([`EptError::MemTypeNotExpressible`]); the PAT bit moves between bit 7 (4 KiB) and bit 12
/// (2 MiB, 1 GiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NptFormat;

impl sealed::Sealed for NptFormat {}

impl NptFormat {
    /// Bits of a leaf, in the 4 KiB layout, that are not the address.
    const LEAF_4K: u64 = NptFormat::ATTR_MASK | NptFormat::HISTORY_MASK;
}

impl Format for NptFormat {
    const ATTR_MASK: u64 = NptFlags::PRESENT.bits()
        | NptFlags::WRITABLE.bits()
        | NptFlags::USER.bits()
        | NptFlags::WRITE_THROUGH.bits()
        | NptFlags::CACHE_DISABLE.bits()
        | NptFlags::PAT_4K.bits()
        | NptFlags::NO_EXECUTE.bits();
    const HISTORY_MASK: u64 = NptFlags::ACCESSED.bits() | NptFlags::DIRTY.bits();

    fn check_perms(perms: Perms) -> Result<(), EptError> {
        if !perms.is_valid() {
            Err(EptError::InvalidPerms { perms })
        } else if !perms.contains(Perms::READ) {
            Err(EptError::PermsNotExpressible { perms })
        } else {
            Ok(())
        }
    }

    fn attrs(perms: Perms, mem: MemType) -> Result<u64, EptError> {
        Self::check_perms(perms)?;
        NptEntry::page(HostPhysAddr::new(0), PageSize::Size4K, perms, mem)
            .map(NptEntry::raw)
            .ok_or(EptError::MemTypeNotExpressible { mem })
    }

    fn table(next: HostPhysAddr) -> u64 {
        NptEntry::table(next).raw()
    }

    fn is_present(raw: u64) -> bool {
        NptEntry::from_raw(raw).is_present()
    }

    fn is_large(raw: u64) -> bool {
        NptEntry::from_raw(raw).is_large()
    }

    fn table_addr(raw: u64) -> HostPhysAddr {
        NptEntry::from_raw(raw).table_addr()
    }

    fn leaf(size: PageSize, hpa: u64, attrs: u64) -> u64 {
        let bits = attrs & Self::LEAF_4K;
        let addr = hpa & npt::addr_mask(size);
        match size {
            PageSize::Size4K => addr | bits,
            PageSize::Size2M | PageSize::Size1G => {
                // Bit 7 is PS here; the PAT bit moves to bit 12 (§5.4.1).
                let pat = if bits & NptFlags::PAT_4K.bits() != 0 {
                    NptFlags::PAT_LARGE.bits()
                } else {
                    0
                };
                addr | (bits & !NptFlags::PAT_4K.bits()) | NptFlags::LARGE.bits() | pat
            }
        }
    }

    fn leaf_addr(size: PageSize, raw: u64) -> u64 {
        NptEntry::from_raw(raw).page_addr(size).as_u64()
    }

    fn leaf_attrs(size: PageSize, raw: u64) -> u64 {
        match size {
            PageSize::Size4K => raw & Self::LEAF_4K,
            PageSize::Size2M | PageSize::Size1G => {
                let pat = if raw & NptFlags::PAT_LARGE.bits() != 0 {
                    NptFlags::PAT_4K.bits()
                } else {
                    0
                };
                (raw & Self::LEAF_4K & !NptFlags::LARGE.bits()) | pat
            }
        }
    }

    fn perms(raw: u64) -> Perms {
        NptEntry::from_raw(raw).perms()
    }

    fn with_perms(raw: u64, perms: Perms) -> u64 {
        NptEntry::from_raw(raw).with_perms(perms).raw()
    }

    fn mem_type(attrs: u64) -> Option<MemType> {
        NptEntry::from_raw(attrs).mem_type(PageSize::Size4K)
    }
}

/// Intel VT-d second-level paging entries in legacy (non-scalable) mode (VT-d spec rev 4.x §9.8,
/// "Second-Level Paging Entries"; the walk in §3.7): what an IOMMU domain's DMA goes through.
///
/// * **Rights**: R (bit 0) and W (bit 1); an entry with both clear is not present (§9.8). There
///   is no execute right for DMA: bit 2 (X) is only used for requests-with-PASID in scalable
///   mode, which atoll does not enable. A map or protect asking for [`Perms::EXECUTE`] is refused
///   with [`EptError::PermsNotExpressible`] rather than silently narrowed, so that every mapping
///   translates back to exactly the rights it was given; callers mirroring an EPT take
///   [`VtdFormat::dma_perms`] of its rights. Write-without-read is refused like in EPT
///   ([`EptError::InvalidPerms`]): a device is never given a write-only buffer by atoll.
/// * **Memory type**: none. In legacy mode DMA is snooped or not according to the platform and
///   the EMT/IPAT fields (bits 6:3) are ignored, so only [`MemType::WriteBack`] is accepted
///   (others: [`EptError::MemTypeNotExpressible`]).
/// * **SNP (bit 11) is never written**: it may be set only when ECAP.SC says snoop control exists
///   (§10.4.3); elsewhere it is a reserved bit and a DMA through such an entry faults with
///   reason 0xC (QEMU, which reports SC=0, checks exactly that). atoll does not rely on forcing
///   snoops: the memory it maps is ordinary write-back RAM.
/// * **Accessed/dirty** flags (bits 8, 9) exist only with scalable-mode SLADE, so
///   [`Format::HISTORY_MASK`] is 0.
/// * **Page size**: PS (bit 7) in PD and PDPT leaves (2 MiB, 1 GiB), which the unit must support
///   (CAP.SLLPS, §10.4.2); the caller picks `max_page` accordingly. Non-leaf entries carry R|W
///   so that only leaves decide (rights are ANDed along the walk, §3.7.1).
///
/// Host addresses must lie below the unit's host address width (the DMAR's HAW): address bits
/// above it are reserved (§9.8) and the engine only checks the architectural 2^52.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VtdFormat;

impl sealed::Sealed for VtdFormat {}

impl VtdFormat {
    /// R (bit 0): DMA reads allowed.
    pub const READ: u64 = 1 << 0;
    /// W (bit 1): DMA writes allowed.
    pub const WRITE: u64 = 1 << 1;
    /// PS (bit 7): a 2 MiB or 1 GiB leaf in a PD or PDPT.
    pub const PAGE_SIZE: u64 = 1 << 7;
    /// SNP (bit 11): snoop behaviour; documented here only because it is never written.
    pub const SNOOP: u64 = 1 << 11;

    /// The rights a DMA mapping mirroring a CPU mapping with `perms` gets: execute dropped (a
    /// device has no instruction fetch). Pass the result to `map`/`protect`.
    pub const fn dma_perms(perms: Perms) -> Perms {
        perms.difference(Perms::EXECUTE)
    }

    const fn addr_mask(size: PageSize) -> u64 {
        match size {
            PageSize::Size4K => ADDR_MASK,
            PageSize::Size2M => ADDR_MASK_2M,
            PageSize::Size1G => ADDR_MASK_1G,
        }
    }
}

impl Format for VtdFormat {
    const ATTR_MASK: u64 = Self::READ | Self::WRITE;
    const HISTORY_MASK: u64 = 0;

    fn check_perms(perms: Perms) -> Result<(), EptError> {
        if !perms.is_valid() {
            Err(EptError::InvalidPerms { perms })
        } else if perms.contains(Perms::EXECUTE) {
            Err(EptError::PermsNotExpressible { perms })
        } else {
            Ok(())
        }
    }

    fn attrs(perms: Perms, mem: MemType) -> Result<u64, EptError> {
        Self::check_perms(perms)?;
        if mem != MemType::WriteBack {
            return Err(EptError::MemTypeNotExpressible { mem });
        }
        Ok(perms.bits() & Self::ATTR_MASK)
    }

    fn table(next: HostPhysAddr) -> u64 {
        (next.as_u64() & ADDR_MASK) | Self::READ | Self::WRITE
    }

    fn is_present(raw: u64) -> bool {
        raw & (Self::READ | Self::WRITE) != 0
    }

    fn is_large(raw: u64) -> bool {
        raw & Self::PAGE_SIZE != 0
    }

    fn table_addr(raw: u64) -> HostPhysAddr {
        HostPhysAddr::new(raw & ADDR_MASK)
    }

    fn leaf(size: PageSize, hpa: u64, attrs: u64) -> u64 {
        let ps = match size {
            PageSize::Size4K => 0,
            PageSize::Size2M | PageSize::Size1G => Self::PAGE_SIZE,
        };
        (hpa & Self::addr_mask(size)) | (attrs & Self::ATTR_MASK) | ps
    }

    fn leaf_addr(size: PageSize, raw: u64) -> u64 {
        raw & Self::addr_mask(size)
    }

    fn leaf_attrs(_size: PageSize, raw: u64) -> u64 {
        raw & Self::ATTR_MASK
    }

    fn perms(raw: u64) -> Perms {
        Perms::from_bits_truncate(raw & Self::ATTR_MASK)
    }

    fn with_perms(raw: u64, perms: Perms) -> u64 {
        (raw & !Self::ATTR_MASK) | (perms.bits() & Self::ATTR_MASK)
    }

    fn mem_type(_attrs: u64) -> Option<MemType> {
        // Legacy-mode second-level entries have no memory type: what is mapped is WB RAM.
        Some(MemType::WriteBack)
    }
}

/// The level (1 = PT, 2 = PD, 3 = PDPT) whose leaves have `size`.
const fn level_of(size: PageSize) -> u8 {
    match size {
        PageSize::Size4K => 1,
        PageSize::Size2M => 2,
        PageSize::Size1G => 3,
    }
}
