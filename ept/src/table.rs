//! The table engine: one partition's four-level second-stage tables, in either format.
//!
//! [`Tables`] owns a tree of second-stage paging structures whose entry format is a type
//! parameter: [`Ept`] is the Intel instance (SDM Vol. 3C §29.3, "The Extended Page Table
//! Mechanism"), [`Npt`] the AMD one (AMD64 APM Vol. 2 §15.25, "Nested Paging"), and
//! [`crate::format`] says what differs. It takes and returns table frames through a
//! [`FrameSource`], maps guest-physical ranges with the largest pages their alignment allows,
//! unmaps and re-protects ranges (splitting large pages that are only partly covered), merges
//! tables back into large pages when they become uniform, and translates addresses the way the
//! processor's page walk does (SDM §29.3.2, APM §15.25.5).
//!
//! **All or nothing.** Every change first checks its whole range, then walks the tree once as a
//! dry run that counts the tables it will need, reserves that many frames, and only then walks
//! again writing entries, with the same code deciding both walks. Bad input, an overlap, a hole
//! or a frame source that runs dry therefore returns an error before the first entry is
//! written.
//!
//! **Canonical shape.** No table but the PML4 is ever empty, and after `map` and `protect` no
//! table whose 512 entries could be one page of the level above (within `max_page`) survives, so
//! the tree for a given set of mappings is always the same and uses the fewest frames.
//!
//! **TLBs.** The builder writes entries with volatile 64-bit stores, fills a new table before
//! linking it and unlinks a table before freeing it, so a processor walking the tree
//! concurrently sees either the old or the new translation of every page. It never flushes:
//! after `unmap`, `protect`, or a `map` that merged tables, the caller must invalidate on every
//! core that uses the tree, before relying on the change and before the frame source hands out
//! the frames the change freed (processors cache translations and paging-structure entries).
//! For EPT that is INVEPT for this EPTP (the `invept` module, on the target; SDM Vol. 3C
//! §29.4); for NPT it is the SVM backend's business: a flush of the partition's ASID through the
//! VMCB's TLB_CONTROL, or INVLPGA (APM Vol. 2 §15.16), not anything in this crate.

use crate::entry::{Eptp, MemType, PageSize, Perms};
use crate::format::{EptFormat, Format, NptFormat, VtdFormat};
use boot::{GuestPhysAddr, HostPhysAddr};
use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;

/// Bytes in the smallest page and in a table frame.
pub const PAGE_SIZE: u64 = 1 << 12;
/// First guest-physical address a four-level walk cannot reach: it uses bits 47:0 (SDM Vol. 3C
/// §29.3.2; the same for nested paging, APM Vol. 2 §5.3).
pub const GPA_LIMIT: u64 = 1 << 48;
/// First host-physical address an entry cannot hold: its address field is bits 51:12 in both
/// formats (SDM Vol. 3C Tables 29-1 to 29-6, APM Vol. 2 §5.4).
pub const HPA_LIMIT: u64 = 1 << 52;

/// Entries in every paging structure of either format.
const ENTRIES: usize = 512;
/// Level of the PML4 table; 3 is the PDPT, 2 the page directory, 1 the page table.
const ROOT_LEVEL: u8 = 4;

/// Where the tables live: the frames of the paging structures and a way to reach them.
///
/// On the target this is the hypervisor's frame allocator with identity-mapped memory; in host
/// tests a map of boxed arrays.
///
/// # Safety
///
/// [`Tables`] reads and writes tables through the raw pointers [`FrameSource::table`] returns, so
/// an implementation must guarantee, for every frame it returned from
/// [`FrameSource::alloc_frame`] and that has not yet been passed to
/// [`FrameSource::free_frame`]:
///
/// * `table(frame)` returns a pointer, aligned to 8 bytes, valid for reads and writes of 512
///   `u64`s, and that memory stays valid and in place until the frame is freed, whatever other
///   calls are made on the source in between;
/// * no Rust reference to that memory exists while the frame is allocated (the processor's page
///   walker may read it);
/// * `alloc_frame` never returns a frame that is still allocated.
pub unsafe trait FrameSource {
    /// A zeroed 4 KiB frame, or None when out of memory.
    fn alloc_frame(&mut self) -> Option<HostPhysAddr>;
    /// Gives back a frame `alloc_frame` returned.
    fn free_frame(&mut self, frame: HostPhysAddr);
    /// Pointer through which the 512 entries of the table at `frame` can be read and written.
    fn table(&mut self, frame: HostPhysAddr) -> *mut [u64; 512];
}

// SAFETY: every call goes to `S`, whose own implementation gives the guarantees; lending the
// source out does not change which frames are allocated or where their memory is.
unsafe impl<S: FrameSource + ?Sized> FrameSource for &mut S {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        (**self).alloc_frame()
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        (**self).free_frame(frame)
    }

    fn table(&mut self, frame: HostPhysAddr) -> *mut [u64; 512] {
        (**self).table(frame)
    }
}

/// Which argument of a call an [`EptError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// The guest-physical address.
    Gpa,
    /// The host-physical address.
    Hpa,
    /// The length in bytes.
    Len,
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gpa => "guest-physical address",
            Self::Hpa => "host-physical address",
            Self::Len => "length",
        })
    }
}

/// Why a change to second-stage tables (EPT or NPT) was refused. Whenever one is returned the
/// tables are exactly as they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    /// An address or the length is not a multiple of 4 KiB.
    Misaligned { what: Operand, value: u64 },
    /// The length is zero.
    ZeroLength { gpa: GuestPhysAddr },
    /// The range ends beyond [`GPA_LIMIT`] (guest side) or [`HPA_LIMIT`] (host side), or wraps.
    AddressTooHigh { what: Operand, start: u64, len: u64 },
    /// The permissions cannot be put in a leaf: none at all, unknown bits, or write without read
    /// (an EPT misconfiguration, SDM Vol. 3C §29.3.3.1). To take every right away, unmap.
    InvalidPerms { perms: Perms },
    /// NPT and VT-d only: the permissions are valid for EPT but have no encoding in this format.
    /// A present NPT entry always allows reads (AMD64 APM Vol. 2 §5.4.1), so execute-only does
    /// not exist; VT-d second-level entries have no execute right at all (VT-d spec §9.8).
    PermsNotExpressible { perms: Perms },
    /// NPT and VT-d only: the memory type has no index in the default PAT that nested page
    /// tables select types from (WC and WP; APM Vol. 2 §7.8, §15.25.8), or is not WB in a VT-d
    /// second-level entry, which has no memory type in legacy mode (VT-d spec §9.8).
    MemTypeNotExpressible { mem: MemType },
    /// `map` found this page of the range already mapped (the first such page).
    AlreadyMapped { gpa: GuestPhysAddr },
    /// `protect` found this page of the range unmapped (the first such page).
    NotMapped { gpa: GuestPhysAddr },
    /// The frame source could not supply the `needed` table frames the change requires.
    OutOfFrames { needed: usize },
    /// The frame source returned a frame that is not 4 KiB aligned or lies beyond 2^52.
    BadFrame { frame: HostPhysAddr },
}

impl fmt::Display for EptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned { what, value } => {
                write!(f, "{what} {value:#x} is not a multiple of 4 KiB")
            }
            Self::ZeroLength { gpa } => {
                write!(f, "range at guest-physical address {gpa} has length 0")
            }
            Self::AddressTooHigh {
                what: Operand::Hpa,
                start,
                len,
            } => write!(
                f,
                "host-physical range {start:#x} + {len:#x} ends beyond {HPA_LIMIT:#x}, \
                 the reach of the EPT address field"
            ),
            Self::AddressTooHigh { what, start, len } => write!(
                f,
                "{what} range {start:#x} + {len:#x} ends beyond {GPA_LIMIT:#x}, \
                 the reach of a four-level EPT walk"
            ),
            Self::InvalidPerms { perms } => write!(
                f,
                "permissions {perms} ({:#x}) cannot be mapped: a mapping needs at least one \
                 right, write needs read, and only bits 2:0 exist",
                perms.bits()
            ),
            Self::PermsNotExpressible { perms } => write!(
                f,
                "permissions {perms} cannot be mapped in nested page tables or VT-d \
                 second-level tables: a present NPT entry is always readable, so execute-only \
                 does not exist, and DMA has no execute right"
            ),
            Self::MemTypeNotExpressible { mem } => write!(
                f,
                "memory type {mem} cannot be mapped in nested page tables (the default host PAT \
                 that atoll assumes has only WB, WT, UC- and UC) or VT-d second-level tables \
                 (WB only)"
            ),
            Self::AlreadyMapped { gpa } => {
                write!(f, "guest-physical page {gpa} is already mapped")
            }
            Self::NotMapped { gpa } => write!(f, "guest-physical page {gpa} is not mapped"),
            Self::OutOfFrames { needed } => write!(
                f,
                "out of frames: the EPT tables for this change need {needed} new 4 KiB frames"
            ),
            Self::BadFrame { frame } => write!(
                f,
                "frame source returned {frame}, which is not a 4 KiB-aligned address below 2^52"
            ),
        }
    }
}

/// What a guest-physical address translates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address of the very byte asked about (page offset included).
    pub hpa: HostPhysAddr,
    /// The leaf's access rights.
    pub perms: Perms,
    /// The leaf's memory type.
    pub mem: MemType,
    /// The size of the page that maps it.
    pub page: PageSize,
}

/// A maximal run of mapped guest-physical memory: contiguous on both sides, with one set of
/// permissions and one memory type (it may span leaves of several sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub gpa: GuestPhysAddr,
    /// Where that byte lives.
    pub hpa: HostPhysAddr,
    /// Bytes, a multiple of 4 KiB.
    pub len: u64,
    /// Access rights.
    pub perms: Perms,
    /// Memory type.
    pub mem: MemType,
}

/// One partition's second-stage tree (four levels) in the entry format `Fmt`, with its table
/// frames from `F`. Use it as [`Ept`] or [`Npt`].
///
/// Dropping it frees every table; [`Tables::destroy`] does the same and returns the frame
/// source.
pub struct Tables<Fmt: Format, F: FrameSource> {
    frames: F,
    pml4: HostPhysAddr,
    max_page: PageSize,
    /// Frames in the tree, the PML4 included.
    tables: usize,
    /// Tables the dry run failed to foresee (always 0 unless this module has a bug); tests check.
    undercounts: usize,
    format: PhantomData<Fmt>,
}

/// One partition's EPT tree (SDM Vol. 3C §29.3.2), for VMX partitions.
pub type Ept<F> = Tables<EptFormat, F>;

/// One partition's nested page tables (AMD64 APM Vol. 2 §15.25), for SVM partitions. Its root
/// goes in the VMCB's N_CR3 field ([`Tables::nested_cr3`]); the SVM backend flushes the
/// partition's ASID after changes (see the module documentation).
pub type Npt<F> = Tables<NptFormat, F>;

/// One IOMMU domain's VT-d second-level tables (VT-d spec §9.8): IOVA (= guest-physical) to
/// host-physical for DMA. Its root goes in context entries ([`Tables::slptptr`]); after
/// `unmap`/`protect` (and after `map` on a unit in caching mode, CAP.CM) the caller invalidates
/// the domain's IOTLB (`iommu::Unit::invalidate_domain`), as for EPT.
pub type SlTables<F> = Tables<VtdFormat, F>;

/// Bit position of the first address bit an entry at `level` translates.
const fn shift(level: u8) -> u32 {
    12 + 9 * (level.saturating_sub(1) as u32)
}

/// Bytes one entry at `level` covers.
const fn span(level: u8) -> u64 {
    1 << shift(level)
}

/// Index of the entry at `level` that covers `addr`.
const fn index(addr: u64, level: u8) -> usize {
    ((addr >> shift(level)) as usize) & (ENTRIES - 1)
}

/// Whether a frame can hold a table an entry points to (both formats have address bits 51:12).
const fn frame_ok(frame: HostPhysAddr) -> bool {
    frame.is_aligned(PAGE_SIZE) && frame.as_u64() < HPA_LIMIT
}

/// Checks `start + len` stays within `limit`, returning the end.
fn range_end(what: Operand, start: u64, len: u64, limit: u64) -> Result<u64, EptError> {
    match start.checked_add(len) {
        Some(end) if end <= limit => Ok(end),
        _ => Err(EptError::AddressTooHigh { what, start, len }),
    }
}

/// An entry of a table in format `Fmt`, with the level-dependent questions the engine asks.
struct Entry<Fmt: Format> {
    raw: u64,
    format: PhantomData<Fmt>,
}

impl<Fmt: Format> Clone for Entry<Fmt> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Fmt: Format> Copy for Entry<Fmt> {}

impl<Fmt: Format> PartialEq for Entry<Fmt> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<Fmt: Format> fmt::Debug for Entry<Fmt> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Entry({:#018x})", self.raw)
    }
}

impl<Fmt: Format> Entry<Fmt> {
    /// The all-zero entry, not present in either format.
    const EMPTY: Self = Self::from_raw(0);

    const fn from_raw(raw: u64) -> Self {
        Self {
            raw,
            format: PhantomData,
        }
    }

    const fn raw(self) -> u64 {
        self.raw
    }

    /// A table pointer to `frame`.
    fn table(frame: HostPhysAddr) -> Self {
        Self::from_raw(Fmt::table(frame))
    }

    /// A leaf at `level` mapping `hpa` with `attrs` (4 KiB layout, history included); a page-
    /// table leaf for any level without leaves (never asked for).
    fn leaf_at(level: u8, hpa: u64, attrs: u64) -> Self {
        let size = PageSize::at_level(level).unwrap_or(PageSize::Size4K);
        Self::from_raw(Fmt::leaf(size, hpa, attrs))
    }

    fn is_present(self) -> bool {
        Fmt::is_present(self.raw)
    }

    /// Whether, sitting in a table at `level` (1 = PT … 4 = PML4), the entry maps a page.
    fn is_leaf_at(self, level: u8) -> bool {
        self.is_present() && (level == 1 || (Fmt::is_large(self.raw) && (level == 2 || level == 3)))
    }

    fn table_addr(self) -> HostPhysAddr {
        Fmt::table_addr(self.raw)
    }

    /// The address a leaf at `level` maps.
    fn leaf_addr_at(self, level: u8) -> u64 {
        match PageSize::at_level(level) {
            Some(size) => Fmt::leaf_addr(size, self.raw),
            None => self.table_addr().as_u64(),
        }
    }

    /// The attributes and history of a leaf at `level`, in the 4 KiB layout.
    fn attrs_at(self, level: u8) -> u64 {
        Fmt::leaf_attrs(
            PageSize::at_level(level).unwrap_or(PageSize::Size4K),
            self.raw,
        )
    }

    fn perms(self) -> Perms {
        Fmt::perms(self.raw)
    }

    fn with_perms(self, perms: Perms) -> Self {
        Self::from_raw(Fmt::with_perms(self.raw, perms))
    }
}

/// The entry a split of `parent` (a leaf at `parent_level`) puts at `idx` of the new table: the
/// same attributes and accessed/dirty history, mapping the `idx`-th piece. Empty when `parent`
/// is not a leaf (a table made for an unmapped region starts empty).
///
/// The attributes go through the 4 KiB layout ([`Format::leaf_attrs`], then [`Format::leaf`]),
/// so a format whose bits move with the page size (NPT's PAT bit) gets them right.
fn split_child<Fmt: Format>(parent: Entry<Fmt>, parent_level: u8, idx: usize) -> Entry<Fmt> {
    if parent_level < 2 || !parent.is_leaf_at(parent_level) {
        return Entry::EMPTY;
    }
    let level = parent_level - 1;
    let hpa = parent.leaf_addr_at(parent_level) + idx as u64 * span(level);
    Entry::leaf_at(level, hpa, parent.attrs_at(parent_level))
}

/// The entry, at `level`, of one large page that maps exactly what the 512 leaves of `child`
/// map, if they are uniform: same attributes, contiguous host memory, aligned to the large page.
/// Accessed and dirty flags are ORed so that no write is forgotten.
fn merged<Fmt: Format>(child: Table<Fmt>, level: u8) -> Option<Entry<Fmt>> {
    let child_level = level.checked_sub(1)?;
    let first = child.get(0);
    if !first.is_leaf_at(child_level) {
        return None;
    }
    let base = first.leaf_addr_at(child_level);
    if base % span(level) != 0 {
        return None;
    }
    let attrs = first.attrs_at(child_level) & Fmt::ATTR_MASK;
    let mut history = first.attrs_at(child_level) & Fmt::HISTORY_MASK;
    for i in 1..ENTRIES {
        let e = child.get(i);
        if !e.is_leaf_at(child_level)
            || e.attrs_at(child_level) & Fmt::ATTR_MASK != attrs
            || e.leaf_addr_at(child_level) != base + i as u64 * span(child_level)
        {
            return None;
        }
        history |= e.attrs_at(child_level) & Fmt::HISTORY_MASK;
    }
    Some(Entry::leaf_at(level, base, attrs | history))
}

/// The part of a range `[s, e)` that falls in one entry of a table.
#[derive(Clone, Copy)]
struct Slot {
    /// The entry's index.
    idx: usize,
    /// First address the entry covers.
    base: u64,
    /// The range clipped to the entry.
    start: u64,
    end: u64,
    /// Whether the range covers the whole entry.
    full: bool,
}

/// The entries of the table at `level` covering `base..` that `[s, e)` touches (`s < e`, both
/// inside the table's reach).
fn slots(base: u64, level: u8, s: u64, e: u64) -> impl Iterator<Item = Slot> {
    let span = span(level);
    (index(s, level)..=index(e.saturating_sub(1), level)).map(move |idx| {
        let eb = base + idx as u64 * span;
        Slot {
            idx,
            base: eb,
            start: s.max(eb),
            end: e.min(eb + span),
            full: s <= eb && eb + span <= e,
        }
    })
}

/// A table this `Tables` owns, reachable through the pointer its frame source gave.
struct Table<Fmt: Format> {
    frame: HostPhysAddr,
    ptr: *mut u64,
    format: PhantomData<Fmt>,
}

impl<Fmt: Format> Clone for Table<Fmt> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Fmt: Format> Copy for Table<Fmt> {}

impl<Fmt: Format> Table<Fmt> {
    /// The entry `idx` (modulo the table's size) points at.
    fn slot(self, idx: usize) -> *mut u64 {
        // SAFETY: `self.ptr` is the start of a 512-entry table (see `get`) and `idx % ENTRIES`
        // < 512, so the offset stays inside that allocation.
        unsafe { self.ptr.add(idx % ENTRIES) }
    }

    fn get(self, idx: usize) -> Entry<Fmt> {
        let slot = self.slot(idx);
        // SAFETY: a `Table` is only made by `Tables::table` for a frame the `Tables` allocated
        // and has not freed, and none is used after its frame is freed; by the `FrameSource`
        // contract the pointer is valid for 512 aligned `u64`s until then, and `slot` is one of
        // them. Volatile: the processor's page walker reads these entries behind the
        // compiler's back.
        Entry::from_raw(unsafe { slot.read_volatile() })
    }

    fn set(self, idx: usize, entry: Entry<Fmt>) {
        let slot = self.slot(idx);
        // SAFETY: as in `get`: an entry of a live table of this `Tables`. Volatile 64-bit
        // stores so the page walker never sees a torn or elided entry.
        unsafe { slot.write_volatile(entry.raw()) }
    }

    fn is_empty(self) -> bool {
        (0..ENTRIES).all(|i| !self.get(i).is_present())
    }
}

/// A table as a walk sees it.
enum Node<Fmt: Format> {
    /// A table that exists.
    Real(Table<Fmt>),
    /// Only in a dry run: the table a split of `parent` (at `level`) would create, or, when
    /// `parent` is not present, a new empty table. Its entries are computed, never stored.
    Virtual { parent: Entry<Fmt>, level: u8 },
}

impl<Fmt: Format> Clone for Node<Fmt> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Fmt: Format> Copy for Node<Fmt> {}

/// One walk of a two-pass change.
struct Pass {
    /// Dry run: count tables, write nothing.
    counting: bool,
    /// Tables the dry run found necessary.
    needed: usize,
    /// Head of the list of reserved frames, linked through their entry 0.
    reserve: Option<HostPhysAddr>,
    /// A table could not be had (only after an undercount and an empty frame source).
    short: bool,
}

impl Pass {
    const fn new(counting: bool) -> Self {
        Self {
            counting,
            needed: 0,
            reserve: None,
            short: false,
        }
    }
}

/// Bit 0 of a reserved frame's entry 0 marks a link (frame addresses are 4 KiB aligned, and
/// frame 0 is a valid frame).
const LINK: u64 = 1;

/// Arguments of a map walk.
struct MapArgs {
    /// `hpa - gpa`, wrapping.
    offset: u64,
    /// Attribute bits of the leaves.
    attrs: u64,
}

impl<Fmt: Format, F: FrameSource> Tables<Fmt, F> {
    /// An empty tree: allocates (and zeroes) the PML4. Leaves never exceed `max_page`. For EPT
    /// pass [`PageSize::largest_supported`] of the processor's [`crate::EptCaps`] or less; for
    /// NPT, 2 MiB, or 1 GiB if CPUID Fn8000_0001_EDX\[Page1GB\] (bit 26) is set (nested tables
    /// use the host's paging features, APM Vol. 2 §15.25).
    pub fn new(mut frames: F, max_page: PageSize) -> Result<Self, EptError> {
        let pml4 = frames
            .alloc_frame()
            .ok_or(EptError::OutOfFrames { needed: 1 })?;
        if !frame_ok(pml4) {
            frames.free_frame(pml4);
            return Err(EptError::BadFrame { frame: pml4 });
        }
        let mut ept = Self {
            frames,
            pml4,
            max_page,
            tables: 1,
            undercounts: 0,
            format: PhantomData,
        };
        let root = ept.table(pml4);
        for i in 0..ENTRIES {
            root.set(i, Entry::EMPTY);
        }
        Ok(ept)
    }

    /// The largest leaf this tree uses.
    pub fn max_page(&self) -> PageSize {
        self.max_page
    }

    /// The PML4 table's frame.
    pub fn pml4(&self) -> HostPhysAddr {
        self.pml4
    }

    /// Paging-structure frames in use, the PML4 included.
    pub fn table_pages(&self) -> usize {
        self.tables
    }

    /// The frame source (read only: freeing a frame behind the tree's back would break it).
    pub fn frame_source(&self) -> &F {
        &self.frames
    }

    /// Maps `len` bytes at `gpa` to `hpa` with `perms` and memory type `mem`.
    ///
    /// Each piece uses the largest page, up to `max_page`, that both addresses are aligned to
    /// and that fits in what remains; afterwards tables that became uniform are merged into
    /// larger pages. EPT: execute-only `perms` need [`crate::EptCaps::EXECUTE_ONLY`]; that is
    /// the caller's to check. NPT: `perms` must include READ and `mem` be WB, WT or UC. Fails,
    /// changing nothing, on misaligned or zero-length input, a range beyond 2^48 (guest) or 2^52
    /// (host), `perms` or `mem` the format cannot express, any page of the range already mapped,
    /// or too few frames for the tables.
    pub fn map(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        perms: Perms,
        mem: MemType,
    ) -> Result<(), EptError> {
        let (g, h) = (gpa.as_u64(), hpa.as_u64());
        if !gpa.is_aligned(PAGE_SIZE) {
            return Err(EptError::Misaligned {
                what: Operand::Gpa,
                value: g,
            });
        }
        if !hpa.is_aligned(PAGE_SIZE) {
            return Err(EptError::Misaligned {
                what: Operand::Hpa,
                value: h,
            });
        }
        let end = Self::check_range(gpa, len)?;
        range_end(Operand::Hpa, h, len, HPA_LIMIT)?;
        let attrs = Fmt::attrs(perms, mem)?;
        if let Some(page) = self.find(g, end, true) {
            return Err(EptError::AlreadyMapped {
                gpa: GuestPhysAddr::new(page),
            });
        }
        let args = MapArgs {
            offset: h.wrapping_sub(g),
            attrs,
        };
        self.two_pass(|ept, pass| {
            let root = Node::Real(ept.table(ept.pml4));
            ept.map_level(root, ROOT_LEVEL, 0, g, end, &args, pass);
        })?;
        self.merge(g, end);
        Ok(())
    }

    /// Removes every mapping in `len` bytes at `gpa`; holes in the range are fine. A large page
    /// only partly inside is split first, and tables left empty are freed. Fails, changing
    /// nothing, on misaligned, zero-length or too-high input, or when the splits need more
    /// frames than the source has.
    pub fn unmap(&mut self, gpa: GuestPhysAddr, len: u64) -> Result<(), EptError> {
        let (g, end) = (gpa.as_u64(), Self::check_range(gpa, len)?);
        self.two_pass(|ept, pass| {
            let root = Node::Real(ept.table(ept.pml4));
            ept.unmap_level(root, ROOT_LEVEL, 0, g, end, pass);
        })
    }

    /// Gives every page in `len` bytes at `gpa` the rights `perms` (memory types stay). Large
    /// pages only partly inside are split when their rights change; tables that become uniform
    /// are merged. Fails, changing nothing, on bad input, `perms` the format cannot express (see
    /// [`Tables::map`]), any page of the range unmapped ([`EptError::NotMapped`] names the
    /// first), or too few frames for the splits.
    pub fn protect(&mut self, gpa: GuestPhysAddr, len: u64, perms: Perms) -> Result<(), EptError> {
        let (g, end) = (gpa.as_u64(), Self::check_range(gpa, len)?);
        Fmt::check_perms(perms)?;
        if let Some(page) = self.find(g, end, false) {
            return Err(EptError::NotMapped {
                gpa: GuestPhysAddr::new(page),
            });
        }
        self.two_pass(|ept, pass| {
            let root = Node::Real(ept.table(ept.pml4));
            ept.protect_level(root, ROOT_LEVEL, 0, g, end, perms, pass);
        })?;
        self.merge(g, end);
        Ok(())
    }

    /// What `gpa` translates to, walking the tree as the processor does (SDM Vol. 3C §29.3.2,
    /// APM Vol. 2 §15.25.5); `None` if it is unmapped or beyond 2^48.
    pub fn translate(&mut self, gpa: GuestPhysAddr) -> Option<Translation> {
        let g = gpa.as_u64();
        if g >= GPA_LIMIT {
            return None;
        }
        let mut table = self.table(self.pml4);
        let mut level = ROOT_LEVEL;
        loop {
            let e = table.get(index(g, level));
            if !e.is_present() {
                return None;
            }
            if e.is_leaf_at(level) {
                return Some(Translation {
                    hpa: HostPhysAddr::new(e.leaf_addr_at(level) | (g & (span(level) - 1))),
                    perms: e.perms(),
                    mem: Fmt::mem_type(e.attrs_at(level))?,
                    page: PageSize::at_level(level)?,
                });
            }
            // Present entries of a page table are leaves, so `level` stays at least 2 here.
            table = self.table(e.table_addr());
            level = level.checked_sub(1)?;
        }
    }

    /// The mapped memory in guest-physical order, as maximal uniform runs.
    pub fn regions(&mut self) -> Regions<'_, Fmt, F> {
        let root = Cursor {
            table: self.table(self.pml4),
            base: 0,
            next: 0,
        };
        Regions {
            ept: self,
            stack: [root; ROOT_LEVEL as usize],
            depth: 1,
            peeked: None,
        }
    }

    /// Frees every table and returns the frame source.
    pub fn destroy(self) -> F {
        let mut this = ManuallyDrop::new(self);
        this.free_all();
        // SAFETY: `this` is never used again and, being in a `ManuallyDrop`, never dropped, so
        // `frames` is moved out exactly once; the other fields are plain data with no drop glue.
        unsafe { core::ptr::read(&this.frames) }
    }

    /// Validates a guest range shared by every operation, returning its end.
    fn check_range(gpa: GuestPhysAddr, len: u64) -> Result<u64, EptError> {
        let g = gpa.as_u64();
        if !gpa.is_aligned(PAGE_SIZE) {
            return Err(EptError::Misaligned {
                what: Operand::Gpa,
                value: g,
            });
        }
        if len % PAGE_SIZE != 0 {
            return Err(EptError::Misaligned {
                what: Operand::Len,
                value: len,
            });
        }
        if len == 0 {
            return Err(EptError::ZeroLength { gpa });
        }
        range_end(Operand::Gpa, g, len, GPA_LIMIT)
    }

    fn table(&mut self, frame: HostPhysAddr) -> Table<Fmt> {
        Table {
            frame,
            ptr: self.frames.table(frame).cast::<u64>(),
            format: PhantomData,
        }
    }

    fn leaf_allowed(&self, level: u8) -> bool {
        PageSize::at_level(level).is_some_and(|size| size <= self.max_page)
    }

    /// Runs `walk` as a dry run, reserves the frames it counted, then runs it for real.
    fn two_pass(&mut self, mut walk: impl FnMut(&mut Self, &mut Pass)) -> Result<(), EptError> {
        let mut dry = Pass::new(true);
        walk(self, &mut dry);
        let mut real = self.reserve(dry.needed)?;
        walk(self, &mut real);
        self.release(&mut real);
        if real.short {
            return Err(EptError::OutOfFrames { needed: dry.needed });
        }
        Ok(())
    }

    /// Takes `needed` frames from the source up front, or none at all.
    fn reserve(&mut self, needed: usize) -> Result<Pass, EptError> {
        let mut pass = Pass::new(false);
        for _ in 0..needed {
            match self.frames.alloc_frame() {
                Some(frame) if frame_ok(frame) => {
                    let link = pass.reserve.map_or(0, |next| next.as_u64() | LINK);
                    self.table(frame).set(0, Entry::from_raw(link));
                    pass.reserve = Some(frame);
                }
                bad => {
                    if let Some(frame) = bad {
                        self.frames.free_frame(frame);
                    }
                    self.release(&mut pass);
                    return Err(match bad {
                        Some(frame) => EptError::BadFrame { frame },
                        None => EptError::OutOfFrames { needed },
                    });
                }
            }
        }
        Ok(pass)
    }

    fn pop_reserved(&mut self, pass: &mut Pass) -> Option<HostPhysAddr> {
        let frame = pass.reserve?;
        let t = self.table(frame);
        let link = t.get(0).raw();
        t.set(0, Entry::EMPTY);
        pass.reserve = (link & LINK != 0).then(|| HostPhysAddr::new(link & !LINK));
        Some(frame)
    }

    /// Returns reserved frames the walk did not use (none, when the dry run was exact).
    fn release(&mut self, pass: &mut Pass) {
        while let Some(frame) = self.pop_reserved(pass) {
            self.frames.free_frame(frame);
        }
    }

    /// A frame for a new table: from the reserve, or, should the dry run have under-counted,
    /// straight from the source.
    fn take_frame(&mut self, pass: &mut Pass) -> Option<HostPhysAddr> {
        if let Some(frame) = self.pop_reserved(pass) {
            return Some(frame);
        }
        self.undercounts += 1;
        match self.frames.alloc_frame() {
            Some(frame) if frame_ok(frame) => Some(frame),
            other => {
                if let Some(frame) = other {
                    self.frames.free_frame(frame);
                }
                pass.short = true;
                None
            }
        }
    }

    fn free_table(&mut self, frame: HostPhysAddr) {
        self.frames.free_frame(frame);
        self.tables = self.tables.saturating_sub(1);
    }

    /// Frees the table at `frame` (at `level`) and every table below it.
    fn free_tree(&mut self, frame: HostPhysAddr, level: u8) {
        if level >= 2 {
            let t = self.table(frame);
            for i in 0..ENTRIES {
                let e = t.get(i);
                if e.is_present() && !e.is_leaf_at(level) {
                    self.free_tree(e.table_addr(), level - 1);
                }
            }
        }
        self.free_table(frame);
    }

    fn free_all(&mut self) {
        if self.tables > 0 {
            self.free_tree(self.pml4, ROOT_LEVEL);
            self.tables = 0;
        }
    }

    fn node_get(node: Node<Fmt>, idx: usize) -> Entry<Fmt> {
        match node {
            Node::Real(t) => t.get(idx),
            Node::Virtual { parent, level } => split_child(parent, level, idx),
        }
    }

    fn node_set(pass: &Pass, node: Node<Fmt>, idx: usize, entry: Entry<Fmt>) {
        if let (false, Node::Real(t)) = (pass.counting, node) {
            t.set(idx, entry);
        }
    }

    /// The table below `entry` (at `idx` of `node`, at `level`), creating it when `entry` is a
    /// leaf (split into 512 smaller leaves) or not present (empty). In a dry run a created table
    /// is only counted. `None` only when no frame could be had.
    fn child(
        &mut self,
        pass: &mut Pass,
        node: Node<Fmt>,
        idx: usize,
        entry: Entry<Fmt>,
        level: u8,
    ) -> Option<Node<Fmt>> {
        if level < 2 {
            return None;
        }
        if entry.is_present() && !entry.is_leaf_at(level) {
            return Some(Node::Real(self.table(entry.table_addr())));
        }
        if pass.counting {
            pass.needed += 1;
            return Some(Node::Virtual {
                parent: entry,
                level,
            });
        }
        let Node::Real(parent) = node else {
            return None;
        };
        let frame = self.take_frame(pass)?;
        let t = self.table(frame);
        // Fill the whole table before linking it: a concurrent walk must see either the old
        // leaf or the equivalent new table, and a frame source's zeroing is not trusted.
        for i in 0..ENTRIES {
            t.set(i, split_child(entry, level, i));
        }
        parent.set(idx, Entry::table(frame));
        self.tables += 1;
        Some(Node::Real(t))
    }

    /// First page of `[s, e)` that is mapped (`mapped`) or unmapped (`!mapped`).
    fn find(&mut self, s: u64, e: u64, mapped: bool) -> Option<u64> {
        let root = self.table(self.pml4);
        self.find_in(root, ROOT_LEVEL, 0, s, e, mapped)
    }

    fn find_in(
        &mut self,
        t: Table<Fmt>,
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        mapped: bool,
    ) -> Option<u64> {
        for slot in slots(base, level, s, e) {
            let entry = t.get(slot.idx);
            if !entry.is_present() {
                if !mapped {
                    return Some(slot.start);
                }
            } else if entry.is_leaf_at(level) || level < 2 {
                if mapped {
                    return Some(slot.start);
                }
            } else {
                let child = self.table(entry.table_addr());
                let found = self.find_in(child, level - 1, slot.base, slot.start, slot.end, mapped);
                if found.is_some() {
                    return found;
                }
            }
        }
        None
    }

    /// Maps `[s, e)` (known to be unmapped) below `node`.
    #[allow(clippy::too_many_arguments)]
    fn map_level(
        &mut self,
        node: Node<Fmt>,
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        args: &MapArgs,
        pass: &mut Pass,
    ) {
        if pass.counting && level < 2 {
            return; // Page-table entries never need a new table.
        }
        for slot in slots(base, level, s, e) {
            let hpa = slot.base.wrapping_add(args.offset);
            if level < 2 || (slot.full && self.leaf_allowed(level) && hpa % span(level) == 0) {
                Self::node_set(pass, node, slot.idx, Entry::leaf_at(level, hpa, args.attrs));
                continue;
            }
            let entry = Self::node_get(node, slot.idx);
            if let Some(child) = self.child(pass, node, slot.idx, entry, level) {
                self.map_level(
                    child,
                    level - 1,
                    slot.base,
                    slot.start,
                    slot.end,
                    args,
                    pass,
                );
            }
        }
    }

    /// Unmaps `[s, e)` below `node`, splitting partly covered leaves and freeing emptied tables.
    fn unmap_level(
        &mut self,
        node: Node<Fmt>,
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        pass: &mut Pass,
    ) {
        if pass.counting && level < 2 {
            return;
        }
        for slot in slots(base, level, s, e) {
            let entry = Self::node_get(node, slot.idx);
            if !entry.is_present() {
                continue;
            }
            if slot.full || level < 2 {
                if !pass.counting {
                    // Unlink first, then free: a concurrent walk never enters a freed table.
                    Self::node_set(pass, node, slot.idx, Entry::EMPTY);
                    if !entry.is_leaf_at(level) {
                        self.free_tree(entry.table_addr(), level - 1);
                    }
                }
                continue;
            }
            let Some(child) = self.child(pass, node, slot.idx, entry, level) else {
                continue;
            };
            self.unmap_level(child, level - 1, slot.base, slot.start, slot.end, pass);
            if let (false, Node::Real(t)) = (pass.counting, child) {
                if t.is_empty() {
                    Self::node_set(pass, node, slot.idx, Entry::EMPTY);
                    self.free_table(t.frame);
                }
            }
        }
    }

    /// Sets the rights of every leaf in `[s, e)` below `node`, splitting partly covered leaves
    /// whose rights change.
    #[allow(clippy::too_many_arguments)]
    fn protect_level(
        &mut self,
        node: Node<Fmt>,
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        perms: Perms,
        pass: &mut Pass,
    ) {
        if pass.counting && level < 2 {
            return;
        }
        for slot in slots(base, level, s, e) {
            let entry = Self::node_get(node, slot.idx);
            if !entry.is_present() {
                continue;
            }
            if entry.is_leaf_at(level) {
                if entry.perms() == perms {
                    continue;
                }
                if slot.full || level < 2 {
                    Self::node_set(pass, node, slot.idx, entry.with_perms(perms));
                    continue;
                }
            }
            if let Some(child) = self.child(pass, node, slot.idx, entry, level) {
                self.protect_level(
                    child,
                    level - 1,
                    slot.base,
                    slot.start,
                    slot.end,
                    perms,
                    pass,
                );
            }
        }
    }

    /// Replaces uniform tables touched by `[s, e)` by large pages, bottom up.
    fn merge(&mut self, s: u64, e: u64) {
        let root = self.table(self.pml4);
        self.merge_in(root, ROOT_LEVEL, 0, s, e);
    }

    fn merge_in(&mut self, t: Table<Fmt>, level: u8, base: u64, s: u64, e: u64) {
        if level < 2 {
            return;
        }
        for slot in slots(base, level, s, e) {
            let entry = t.get(slot.idx);
            if !entry.is_present() || entry.is_leaf_at(level) {
                continue;
            }
            let child = self.table(entry.table_addr());
            self.merge_in(child, level - 1, slot.base, slot.start, slot.end);
            if !self.leaf_allowed(level) {
                continue;
            }
            if let Some(leaf) = merged(child, level) {
                t.set(slot.idx, leaf);
                self.free_table(child.frame);
            }
        }
    }
}

impl<F: FrameSource> Tables<EptFormat, F> {
    /// The EPT pointer for the VMCS (SDM Vol. 3C §25.6.11): write-back tables, four-level walk,
    /// accessed/dirty flags if `ad`.
    pub fn eptp(&self, ad: bool) -> Eptp {
        Eptp::new(self.pml4, ad)
    }
}

impl<F: FrameSource> Tables<NptFormat, F> {
    /// The value for the VMCB's N_CR3 field (AMD64 APM Vol. 2 §15.25.3, "Enabling Nested
    /// Paging"): the physical address of the PML4 table. N_CR3 has the layout of CR3; its PWT
    /// and PCD bits, which would pick the PML4's memory type, are left clear (write-back under
    /// the default PAT). Nested walks use the host's paging mode (see §15.25.4), so there is no
    /// walk length or accessed/dirty switch to encode as in an EPTP.
    pub fn nested_cr3(&self) -> HostPhysAddr {
        self.pml4
    }
}

impl<F: FrameSource> Tables<VtdFormat, F> {
    /// The second-level page-table pointer for a VT-d context entry (SLPTPTR, VT-d spec §9.3):
    /// the 4-level root, used with address width AW = 2 (48 bits).
    pub fn slptptr(&self) -> HostPhysAddr {
        self.pml4
    }
}

impl<Fmt: Format, F: FrameSource> Drop for Tables<Fmt, F> {
    fn drop(&mut self) {
        self.free_all();
    }
}

/// Where a [`Regions`] walk stands in one table.
struct Cursor<Fmt: Format> {
    table: Table<Fmt>,
    base: u64,
    next: usize,
}

impl<Fmt: Format> Clone for Cursor<Fmt> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Fmt: Format> Copy for Cursor<Fmt> {}

/// One leaf met by a [`Regions`] walk.
#[derive(Clone, Copy)]
struct Leaf {
    gpa: u64,
    hpa: u64,
    len: u64,
    /// Attributes in the 4 KiB layout, without history.
    attrs: u64,
}

/// Iterator over the mapped [`Region`]s of a [`Tables`], from [`Tables::regions`]. It walks
/// the tree depth first with a fixed four-entry stack, so it needs no allocation.
pub struct Regions<'a, Fmt: Format, F: FrameSource> {
    ept: &'a mut Tables<Fmt, F>,
    stack: [Cursor<Fmt>; ROOT_LEVEL as usize],
    depth: usize,
    peeked: Option<Leaf>,
}

impl<Fmt: Format, F: FrameSource> Regions<'_, Fmt, F> {
    fn next_leaf(&mut self) -> Option<Leaf> {
        if let Some(leaf) = self.peeked.take() {
            return Some(leaf);
        }
        loop {
            let top = self.stack.get_mut(self.depth.checked_sub(1)?)?;
            let level = ROOT_LEVEL - (self.depth as u8 - 1);
            if top.next >= ENTRIES {
                self.depth -= 1;
                continue;
            }
            let idx = top.next;
            top.next += 1;
            let entry = top.table.get(idx);
            let gpa = top.base + idx as u64 * span(level);
            if !entry.is_present() {
                continue;
            }
            if entry.is_leaf_at(level) {
                let attrs = entry.attrs_at(level) & Fmt::ATTR_MASK;
                if Fmt::mem_type(attrs).is_none() {
                    continue; // Never written by this module; no `Region` can describe it.
                }
                return Some(Leaf {
                    gpa,
                    hpa: entry.leaf_addr_at(level),
                    len: span(level),
                    attrs,
                });
            }
            if level < 2 || self.depth >= self.stack.len() {
                continue;
            }
            let table = self.ept.table(entry.table_addr());
            self.stack[self.depth] = Cursor {
                table,
                base: gpa,
                next: 0,
            };
            self.depth += 1;
        }
    }
}

impl<Fmt: Format, F: FrameSource> Iterator for Regions<'_, Fmt, F> {
    type Item = Region;

    fn next(&mut self) -> Option<Region> {
        let mut run = self.next_leaf()?;
        while let Some(leaf) = self.next_leaf() {
            if leaf.gpa == run.gpa + run.len
                && leaf.hpa == run.hpa + run.len
                && leaf.attrs == run.attrs
            {
                run.len += leaf.len;
            } else {
                self.peeked = Some(leaf);
                break;
            }
        }
        Some(Region {
            gpa: GuestPhysAddr::new(run.gpa),
            hpa: HostPhysAddr::new(run.hpa),
            len: run.len,
            perms: Fmt::perms(run.attrs),
            mem: Fmt::mem_type(run.attrs).unwrap_or(MemType::Uncacheable),
        })
    }
}

#[cfg(test)]
mod tests;
