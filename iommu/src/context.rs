//! Root and context tables in legacy mode (VT-d spec rev 4.x §3.4.2, §9.1 "Root Entry", §9.3
//! "Context Entry"): which domain, and so which second-level tables, a device's DMA goes
//! through.
//!
//! A request from bus B, device/function DF is translated through root entry B (one 4 KiB
//! table of 256 entries), the context table it points to (256 entries, one per devfn) and the
//! second-level tables of the context entry. A context entry that is not present blocks the
//! device: its DMA faults with reason 2 ([`crate::FaultReason::ContextNotPresent`]).
//!
//! [`ContextTables`] keeps those tables in frames from an [`ept::FrameSource`]. Every change
//! returns a [`Flush`] naming the invalidations the unit needs before the change is in force
//! (§6.5.3.3, "Guidance to Software for Invalidations"); it is `#[must_use]` and
//! [`crate::Unit::flush`] performs it. Moving a device from one domain to another is two
//! changes, [`ContextTables::block`] and [`ContextTables::assign`], each flushed, so no cache can
//! hold a mix of the old and the new entry ([`crate::Unit::assign`] does both).

use crate::qi::Descriptor;
use crate::regs::Cap;
use crate::Error;
use boot::HostPhysAddr;
use core::fmt;
use ept::FrameSource;

/// Bits 63:12 of a table pointer.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// A PCI requester id, the source-id of DMA and interrupt requests (§3.4.1): bus (15:8), device
/// (7:3), function (2:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceId(pub u16);

impl SourceId {
    /// Bus and devfn (device << 3 | function).
    pub const fn new(bus: u8, devfn: u8) -> Self {
        Self((bus as u16) << 8 | devfn as u16)
    }

    /// Bus, device (0..32) and function (0..8); `None` when out of range.
    pub const fn from_bdf(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device >= 32 || function >= 8 {
            None
        } else {
            Some(Self::new(bus, device << 3 | function))
        }
    }

    /// Bus number.
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Device << 3 | function.
    pub const fn devfn(self) -> u8 {
        self.0 as u8
    }

    /// Device number.
    pub const fn device(self) -> u8 {
        self.devfn() >> 3
    }

    /// Function number.
    pub const fn function(self) -> u8 {
        self.devfn() & 7
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

/// A domain id (DID, §3.4.3): tags every cached translation; one per partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u16);

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domain {}", self.0)
    }
}

/// The AW field of a context entry (§9.3): how many levels the second-level walk has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressWidth {
    /// 1: 39-bit, 3-level tables.
    Bits39,
    /// 2: 48-bit, 4-level tables — what [`ept::SlTables`] builds.
    Bits48,
}

impl AddressWidth {
    /// The field value.
    pub const fn field(self) -> u64 {
        match self {
            Self::Bits39 => 1,
            Self::Bits48 => 2,
        }
    }

    /// Levels of the second-level walk.
    pub const fn levels(self) -> u8 {
        match self {
            Self::Bits39 => 3,
            Self::Bits48 => 4,
        }
    }

    /// The width atoll uses on a unit: 4-level (48-bit), the shape of [`ept::SlTables`], which
    /// the unit must list in CAP.SAGAW (bit 2); a unit with only 3- or 5-level walks is refused.
    pub const fn for_unit(cap: Cap) -> Result<Self, Error> {
        if cap.sagaw() & (1 << 2) != 0 {
            Ok(Self::Bits48)
        } else {
            Err(Error::NoFourLevelTables { sagaw: cap.sagaw() })
        }
    }
}

/// A root entry (§9.1): bit 0 P, bits 63:12 the context-table pointer; the upper 64 bits are
/// reserved in legacy mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RootEntry {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl RootEntry {
    /// A present entry pointing to the context table at `table`.
    pub const fn new(table: HostPhysAddr) -> Self {
        Self {
            lo: (table.as_u64() & ADDR_MASK) | 1,
            hi: 0,
        }
    }

    /// P.
    pub const fn present(self) -> bool {
        self.lo & 1 != 0
    }

    /// CTP.
    pub const fn context_table(self) -> HostPhysAddr {
        HostPhysAddr::new(self.lo & ADDR_MASK)
    }
}

/// The translation type of a context entry (TT, bits 3:2, §9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// 00: untranslated requests go through the second-level tables; translation requests
    /// (ATS) and translated requests are blocked. What atoll uses: no device-TLB can hold a
    /// translation atoll cannot invalidate through the IOTLB alone.
    Untranslated,
    /// 01: as 00, plus translation requests and translated requests (device-TLBs).
    WithDeviceTlb,
    /// 10: pass-through, no translation at all.
    PassThrough,
    /// 11: reserved.
    Reserved,
}

/// A legacy-mode context entry (§9.3): P (bit 0), FPD (1), TT (3:2), SLPTPTR (63:12); AW
/// (66:64), DID (87:72).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ContextEntry {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl ContextEntry {
    /// Not present: the device's DMA is blocked and faults.
    pub const BLOCKED: Self = Self { lo: 0, hi: 0 };

    /// A present entry translating the device's untranslated DMA through the second-level tables
    /// at `slptptr` with `aw`, tagged `domain`; fault reporting on (FPD clear).
    pub const fn translated(slptptr: HostPhysAddr, aw: AddressWidth, domain: DomainId) -> Self {
        Self {
            lo: (slptptr.as_u64() & ADDR_MASK) | 1,
            hi: aw.field() | (domain.0 as u64) << 8,
        }
    }

    /// P.
    pub const fn present(self) -> bool {
        self.lo & 1 != 0
    }

    /// FPD: fault processing disabled (faults are not recorded).
    pub const fn fault_processing_disabled(self) -> bool {
        self.lo & 2 != 0
    }

    /// TT.
    pub const fn translation_type(self) -> TranslationType {
        match (self.lo >> 2) & 3 {
            0 => TranslationType::Untranslated,
            1 => TranslationType::WithDeviceTlb,
            2 => TranslationType::PassThrough,
            _ => TranslationType::Reserved,
        }
    }

    /// SLPTPTR.
    pub const fn slptptr(self) -> HostPhysAddr {
        HostPhysAddr::new(self.lo & ADDR_MASK)
    }

    /// AW, raw (1 = 39-bit, 2 = 48-bit, 3 = 57-bit).
    pub const fn address_width(self) -> u8 {
        (self.hi & 7) as u8
    }

    /// DID.
    pub const fn domain(self) -> DomainId {
        DomainId((self.hi >> 8) as u16)
    }
}

/// Invalidations a table change needs before it is in force (§6.5.3.3), as queued-invalidation
/// descriptors; at most three. Hand it to [`crate::Unit::flush`].
#[must_use = "the change is not in force until the unit's caches are invalidated"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flush {
    descriptors: [Option<Descriptor>; 3],
}

impl Flush {
    /// Nothing to invalidate.
    pub const NONE: Self = Self {
        descriptors: [None; 3],
    };

    /// The descriptors, in the order they must be queued.
    pub fn descriptors(&self) -> impl Iterator<Item = Descriptor> + '_ {
        self.descriptors.iter().flatten().copied()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.descriptors.iter().all(Option::is_none)
    }

    fn push(&mut self, d: Descriptor) {
        if let Some(slot) = self.descriptors.iter_mut().find(|s| s.is_none()) {
            *slot = Some(d);
        }
    }
}

/// One unit's root table and the context tables under it, in frames from `F`.
///
/// Context tables are allocated on the first device of their bus and kept until
/// [`ContextTables::destroy`] (at most 256 frames, 1 MiB); entries are written with volatile
/// 64-bit stores, the half without P first when an entry becomes present, so a unit reading it
/// concurrently sees it not present or complete.
///
/// Dropping it frees every frame: do that only after the unit no longer uses the root table
/// (translation disabled or another root set), or the unit walks freed memory.
pub struct ContextTables<F: FrameSource> {
    frames: F,
    root: HostPhysAddr,
    context: [Option<HostPhysAddr>; 256],
    aw: AddressWidth,
    domains: u32,
    caching_mode: bool,
}

impl<F: FrameSource> ContextTables<F> {
    /// An empty root table (every device blocked) for a unit with capabilities `cap`.
    pub fn new(mut frames: F, cap: Cap) -> Result<Self, Error> {
        let aw = AddressWidth::for_unit(cap)?;
        let root = frames.alloc_frame().ok_or(Error::OutOfFrames)?;
        if root.as_u64() & !ADDR_MASK != 0 {
            frames.free_frame(root);
            return Err(Error::BadFrame { frame: root });
        }
        Ok(Self {
            frames,
            root,
            context: [None; 256],
            aw,
            domains: cap.domains(),
            caching_mode: cap.caching_mode(),
        })
    }

    /// The root table, for RTADDR.
    pub fn root_table(&self) -> HostPhysAddr {
        self.root
    }

    /// The address width of every context entry.
    pub fn address_width(&self) -> AddressWidth {
        self.aw
    }

    /// Frames in use (root and context tables).
    pub fn table_frames(&self) -> usize {
        1 + self.context.iter().flatten().count()
    }

    /// The frame source, for inspection.
    pub fn frame_source(&self) -> &F {
        &self.frames
    }

    /// Whether `domain` can tag a context entry on this unit: below 2^(4 + 2·CAP.ND), and not 0
    /// when CAP.CM reserves it (§10.4.2).
    pub fn check_domain(&self, domain: DomainId) -> Result<(), Error> {
        if u32::from(domain.0) >= self.domains {
            Err(Error::DomainOutOfRange {
                domain,
                limit: self.domains,
            })
        } else if domain.0 == 0 && self.caching_mode {
            Err(Error::DomainReserved { domain })
        } else {
            Ok(())
        }
    }

    /// Puts `source` into `domain`, whose second-level tables are at `slptptr` (4-level,
    /// [`ept::SlTables::slptptr`]). The device must be blocked (not present) or already in
    /// exactly this state; a device in another domain is refused with
    /// [`Error::DeviceAssigned`] — [`ContextTables::block`] and flush it first.
    ///
    /// The returned flush: context cache, device-selective (with domain 0 under caching mode,
    /// which tags cached not-present entries so, §6.1), and the IOTLB of `domain` (a unit in
    /// caching mode may hold not-present translations of it).
    pub fn assign(
        &mut self,
        source: SourceId,
        domain: DomainId,
        slptptr: HostPhysAddr,
    ) -> Result<Flush, Error> {
        self.check_domain(domain)?;
        if slptptr.as_u64() & !ADDR_MASK != 0 {
            return Err(Error::BadFrame { frame: slptptr });
        }
        let want = ContextEntry::translated(slptptr, self.aw, domain);
        let now = self.lookup(source);
        if now == want {
            return Ok(Flush::NONE);
        }
        if now.present() {
            return Err(Error::DeviceAssigned {
                source,
                domain: now.domain(),
            });
        }
        let table = self.context_table(source.bus())?;
        self.write_entry(table, source.devfn(), want);
        let mut flush = Flush::NONE;
        let tag = if self.caching_mode {
            DomainId(0)
        } else {
            domain
        };
        flush.push(Descriptor::context_device(tag, source, 0));
        flush.push(Descriptor::iotlb_domain(domain));
        Ok(flush)
    }

    /// Blocks `source`: its context entry becomes not present, so its DMA faults. The flush
    /// (when it was present): context cache device-selective and IOTLB domain-selective for the
    /// domain it left, so no cached entry or translation of the old domain survives for it.
    pub fn block(&mut self, source: SourceId) -> Flush {
        let now = self.lookup(source);
        let Some(table) = self.context[usize::from(source.bus())] else {
            return Flush::NONE;
        };
        if now == ContextEntry::BLOCKED {
            return Flush::NONE;
        }
        self.write_entry(table, source.devfn(), ContextEntry::BLOCKED);
        let mut flush = Flush::NONE;
        if now.present() {
            flush.push(Descriptor::context_device(now.domain(), source, 0));
            flush.push(Descriptor::iotlb_domain(now.domain()));
        } else {
            // Garbage in a not-present entry (never written by atoll): clear it, and drop
            // whatever a caching-mode unit may hold for the device.
            flush.push(Descriptor::context_global());
        }
        flush
    }

    /// The context entry of `source` ([`ContextEntry::BLOCKED`] when its bus has no table).
    pub fn lookup(&mut self, source: SourceId) -> ContextEntry {
        let Some(table) = self.context[usize::from(source.bus())] else {
            return ContextEntry::BLOCKED;
        };
        let ptr = self.frames.table(table);
        let i = usize::from(source.devfn()) * 2;
        // SAFETY: `table` is a frame this structure allocated and has not freed, so the
        // FrameSource contract makes `ptr` valid for 512 u64s; `i + 1 <= 511`. Volatile: the
        // unit reads (and may never write) the table concurrently.
        let lo = unsafe { core::ptr::read_volatile(ptr.cast::<u64>().wrapping_add(i)) };
        // SAFETY: as above.
        let hi = unsafe { core::ptr::read_volatile(ptr.cast::<u64>().wrapping_add(i + 1)) };
        ContextEntry { lo, hi }
    }

    /// The root entry of `bus`.
    pub fn root_entry(&mut self, bus: u8) -> RootEntry {
        let ptr = self.frames.table(self.root);
        let i = usize::from(bus) * 2;
        // SAFETY: the root frame is allocated for the life of `self`; `i + 1 <= 511`.
        let lo = unsafe { core::ptr::read_volatile(ptr.cast::<u64>().wrapping_add(i)) };
        // SAFETY: as above.
        let hi = unsafe { core::ptr::read_volatile(ptr.cast::<u64>().wrapping_add(i + 1)) };
        RootEntry { lo, hi }
    }

    /// Every present context entry, by source id.
    pub fn assigned(&mut self) -> impl Iterator<Item = (SourceId, ContextEntry)> + '_ {
        (0..=u16::MAX).filter_map(move |sid| {
            let source = SourceId(sid);
            if source.devfn() == 0 && self.context[usize::from(source.bus())].is_none() {
                return None;
            }
            let e = self.lookup(source);
            e.present().then_some((source, e))
        })
    }

    /// Frees every table and returns the frame source (see the type's note on when).
    pub fn destroy(self) -> F {
        let mut this = core::mem::ManuallyDrop::new(self);
        this.free_all();
        // SAFETY: `this` is never used or dropped again, so the frame source is moved out
        // exactly once.
        unsafe { core::ptr::read(&this.frames) }
    }

    fn free_all(&mut self) {
        for slot in self.context.iter_mut() {
            if let Some(frame) = slot.take() {
                self.frames.free_frame(frame);
            }
        }
        self.frames.free_frame(self.root);
    }

    /// The context table of `bus`, allocated (and linked from the root table, after it is
    /// zeroed) on first use.
    fn context_table(&mut self, bus: u8) -> Result<HostPhysAddr, Error> {
        if let Some(t) = self.context[usize::from(bus)] {
            return Ok(t);
        }
        let frame = self.frames.alloc_frame().ok_or(Error::OutOfFrames)?;
        if frame.as_u64() & !ADDR_MASK != 0 {
            self.frames.free_frame(frame);
            return Err(Error::BadFrame { frame });
        }
        let root = self.frames.table(self.root);
        let entry = RootEntry::new(frame);
        let i = usize::from(bus) * 2;
        // SAFETY: the root frame is allocated for the life of `self`; `i + 1 <= 511`. The
        // upper half first: the lower holds P.
        unsafe { core::ptr::write_volatile(root.cast::<u64>().wrapping_add(i + 1), entry.hi) };
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(root.cast::<u64>().wrapping_add(i), entry.lo) };
        self.context[usize::from(bus)] = Some(frame);
        Ok(frame)
    }

    fn write_entry(&mut self, table: HostPhysAddr, devfn: u8, e: ContextEntry) {
        let ptr = self.frames.table(table);
        let i = usize::from(devfn) * 2;
        if e.present() {
            // SAFETY: `table` is an allocated context-table frame; `i + 1 <= 511`. Upper half
            // first, then the half with P, so the unit never sees P with a stale DID or AW.
            unsafe { core::ptr::write_volatile(ptr.cast::<u64>().wrapping_add(i + 1), e.hi) };
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(ptr.cast::<u64>().wrapping_add(i), e.lo) };
        } else {
            // SAFETY: as above. P first: from then on the unit ignores the rest.
            unsafe { core::ptr::write_volatile(ptr.cast::<u64>().wrapping_add(i), e.lo) };
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(ptr.cast::<u64>().wrapping_add(i + 1), e.hi) };
        }
    }
}

impl<F: FrameSource> Drop for ContextTables<F> {
    fn drop(&mut self) {
        self.free_all();
    }
}
