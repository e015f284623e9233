//! The root partition's memory: the E820 the host's Linux is given and the identity mappings of
//! its second-stage tables (design brief, "Root partition"; issue 10, item 2).
//!
//! The host owns the machine minus what atoll keeps for itself. From the firmware's memory map,
//! atoll's own ranges (image, heap, frames), the enclave pool and the MMIO ranges atoll owns or
//! emulates (the IOMMU's registers), [`plan`] computes
//!
//! * the host's E820: the firmware's entries, with atoll's ranges and the pool carved out as
//!   `reserved` (so the host's Linux neither allocates there nor puts a PCI BAR there), sorted,
//!   with no overlaps and adjacent entries of one type merged;
//! * its second-stage mapping plan: guest-physical = host-physical for every page from 0 to the
//!   top of what the firmware map and the MMIO windows reach, except atoll's ranges, the pool and
//!   the owned MMIO. Pages wholly RAM by the firmware map are write-back; every other page (MMIO,
//!   firmware-reserved, holes, and a page only partly RAM) is uncacheable.
//!
//! and [`build_tables`] writes the plan into second-stage tables of either format with the
//! largest pages the alignment allows.
//!
//! **Why uncacheable for everything not known to be RAM.** The second-stage memory type takes
//! the place of the MTRRs (SDM Vol. 3C §29.3.7.2; for nested paging it combines with the guest's
//! PAT, APM Vol. 2 §15.25.8). A device register mapped write-back would be cached whatever the
//! host's own page tables say, which breaks the device; RAM mapped uncacheable is only slow. So a
//! page is write-back only when the firmware says every byte of it is RAM (usable, ACPI
//! reclaimable or ACPI NVS) and no entry claims it for anything else.
//!
//! **Page granularity.** Exclusions are widened to whole 4 KiB pages (a page that holds one byte
//! of atoll's is not the host's), and the E820 reserves the widened range, so the host is never
//! told a byte is RAM that its tables do not map.
//!
//! Pure: no unsafe, no hardware; tested on the host.

use super::linux::{E820Entry, E820Kind, E820_MAX};
use alloc::vec::Vec;
use boot::info::{MemoryRegion, RegionKind};
use boot::{GuestPhysAddr, HostPhysAddr, PhysRange};
use core::fmt;
use ept::{EptError, Format, FrameSource, MemType, PageSize, Perms, Tables, GPA_LIMIT};

/// Granularity of the mapping plan: the smallest second-stage page.
const PAGE: u64 = ept::PAGE_SIZE;

/// What atoll tells [`plan`] about the machine and about itself.
#[derive(Clone, Copy, Debug)]
pub struct HostMemoryInput<'a> {
    /// The firmware's memory map (`boot::info::BootInfo::regions`). Entries may overlap; where
    /// they do, the more restrictive type wins (see [`plan`]).
    pub firmware: &'a [MemoryRegion],
    /// atoll's own memory: its image, heap, the frames it uses, the boot information and
    /// modules it keeps. Within each of these lists overlaps are fine (they are merged); ranges
    /// of different lists must be disjoint.
    pub atoll: &'a [PhysRange],
    /// The enclave memory pool. It must be usable RAM by the firmware map.
    pub pool: &'a [PhysRange],
    /// MMIO ranges atoll owns or emulates (the IOMMU's register pages): never mapped for the
    /// host. They must not be RAM.
    pub owned_mmio: &'a [PhysRange],
    /// MMIO windows the host's devices decode (PCI host bridge windows, BARs); they extend the
    /// mapped span past the top of the firmware map. They must not be RAM.
    pub mmio_windows: &'a [PhysRange],
}

/// Which input a range came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The firmware memory map.
    Firmware,
    /// atoll's own memory.
    Atoll,
    /// The enclave pool.
    Pool,
    /// MMIO atoll owns or emulates.
    OwnedMmio,
    /// An MMIO window of the host's devices.
    MmioWindow,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Firmware => "firmware memory map entry",
            Self::Atoll => "atoll range",
            Self::Pool => "enclave pool range",
            Self::OwnedMmio => "atoll-owned MMIO range",
            Self::MmioWindow => "MMIO window",
        })
    }
}

/// Why the host's memory could not be planned. Each names the offending range(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMemoryError {
    /// Ranges of two different roles share a byte (atoll's memory given to enclaves, or an owned
    /// MMIO range on top of memory): one of the inputs is wrong.
    Overlap {
        first: Role,
        a: PhysRange,
        second: Role,
        b: PhysRange,
    },
    /// A pool range is not wholly usable RAM by the firmware map: an enclave would get MMIO or
    /// firmware memory.
    PoolNotRam { range: PhysRange },
    /// An MMIO range (owned or a window) covers usable RAM.
    MmioInRam { role: Role, range: PhysRange },
    /// A range reaches past 2^48, which four-level second-stage tables cannot map.
    AddressTooHigh { role: Role, range: PhysRange },
    /// The firmware map holds no memory at all.
    EmptyMap,
    /// The host's E820 has more entries than `boot_params` holds.
    TooManyE820 { count: usize },
}

impl fmt::Display for HostMemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overlap {
                first,
                a,
                second,
                b,
            } => write!(f, "{first} {a} overlaps {second} {b}"),
            Self::PoolNotRam { range } => write!(
                f,
                "enclave pool range {range} is not wholly usable RAM in the firmware memory map"
            ),
            Self::MmioInRam { role, range } => {
                write!(f, "{role} {range} covers usable RAM")
            }
            Self::AddressTooHigh { role, range } => write!(
                f,
                "{role} {range} reaches past 2^48, beyond what second-stage tables map"
            ),
            Self::EmptyMap => write!(f, "the firmware memory map holds no memory"),
            Self::TooManyE820 { count } => write!(
                f,
                "the host's E820 needs {count} entries, more than the {E820_MAX} boot_params holds"
            ),
        }
    }
}

/// One identity mapping of the host's second-stage tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMapping {
    /// First guest-physical byte (4 KiB-aligned).
    pub gpa: GuestPhysAddr,
    /// Where it lives: the same address.
    pub hpa: HostPhysAddr,
    /// Bytes, a multiple of 4 KiB.
    pub len: u64,
    /// Access rights: all of them (the host owns what it is given, firmware code included).
    pub perms: Perms,
    /// Write-back for RAM, uncacheable for everything else.
    pub mem: MemType,
}

/// The host's memory, as [`plan`] computes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMemoryPlan {
    /// The host's E820: sorted, no overlaps, adjacent entries of one type merged.
    pub e820: Vec<E820Entry>,
    /// The identity mappings, sorted; adjacent ones differ in memory type.
    pub mappings: Vec<HostMapping>,
    /// What the host does not get, widened to pages, sorted and merged.
    pub excluded: Vec<PhysRange>,
    /// One past the last byte the plan covers (mapped or excluded).
    pub top: HostPhysAddr,
}

/// A half-open `[start, end)` in plain numbers, for the set arithmetic below.
type Span = (u64, u64);

/// Sorts, drops empty spans and merges overlapping or touching ones.
fn normalize(mut spans: Vec<Span>) -> Vec<Span> {
    spans.retain(|&(s, e)| s < e);
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a` minus `b`, both normalized; the result is normalized.
fn subtract(a: &[Span], b: &[Span]) -> Vec<Span> {
    let mut out = Vec::new();
    for &(start, e) in a {
        let mut s = start;
        for &(bs, be) in b {
            if be <= s || e <= bs {
                continue;
            }
            if bs > s {
                out.push((s, bs));
            }
            s = s.max(be);
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// Whether normalized `outer` wholly covers `span`.
fn covers(outer: &[Span], span: Span) -> bool {
    outer.iter().any(|&(s, e)| s <= span.0 && span.1 <= e)
}

/// Whether any span of normalized `set` shares a byte with `span`.
fn touches(set: &[Span], span: Span) -> bool {
    set.iter().any(|&(s, e)| s < span.1 && span.0 < e)
}

/// The whole pages around `span` (callers have checked it ends below 2^48, so no overflow).
fn widen(span: Span) -> Span {
    (span.0 & !(PAGE - 1), span.1.next_multiple_of(PAGE))
}

/// The whole pages inside `span` (possibly empty).
fn shrink(span: Span) -> Span {
    (span.0.next_multiple_of(PAGE), span.1 & !(PAGE - 1))
}

fn span(r: &PhysRange) -> Span {
    (r.start.as_u64(), r.end.as_u64())
}

fn range(s: Span) -> PhysRange {
    PhysRange::new(HostPhysAddr::new(s.0), HostPhysAddr::new(s.1))
}

/// The E820 type a firmware entry becomes (ACPI "Address Range Types"; 7 is persistent memory).
fn e820_kind(kind: RegionKind) -> E820Kind {
    match kind {
        RegionKind::Usable => E820Kind::Ram,
        RegionKind::Reserved => E820Kind::Reserved,
        RegionKind::AcpiReclaimable => E820Kind::Acpi,
        RegionKind::AcpiNvs => E820Kind::Nvs,
        RegionKind::Defective => E820Kind::Unusable,
        RegionKind::Other(7) => E820Kind::Pmem,
        // A type this version does not know: the firmware means "not for you", as Linux reads it.
        RegionKind::Other(_) => E820Kind::Reserved,
    }
}

/// Which type wins where entries overlap: the more restrictive one, so that memory some entry
/// withholds is never offered as RAM (Linux's own sanitizing prefers the higher type likewise).
fn precedence(kind: E820Kind) -> u8 {
    match kind {
        E820Kind::Ram => 0,
        E820Kind::Acpi => 1,
        E820Kind::Nvs => 2,
        E820Kind::Pmem => 3,
        E820Kind::Unusable => 4,
        E820Kind::Reserved => 5,
    }
}

/// Whether the firmware's type means RAM the processor may cache write-back. Persistent memory
/// and reserved ranges may be device memory, so they are not.
fn is_cacheable_ram(kind: RegionKind) -> bool {
    matches!(
        kind,
        RegionKind::Usable | RegionKind::AcpiReclaimable | RegionKind::AcpiNvs
    )
}

/// Checks every range of `ranges` ends below 2^48 and returns them as spans.
fn spans_of(role: Role, ranges: &[PhysRange]) -> Result<Vec<Span>, HostMemoryError> {
    ranges
        .iter()
        .map(|r| {
            if r.end.as_u64() > GPA_LIMIT {
                Err(HostMemoryError::AddressTooHigh { role, range: *r })
            } else {
                Ok(span(r))
            }
        })
        .collect()
}

/// Computes the host's E820 and second-stage mapping plan; see the module documentation.
///
/// Fails, naming the range, when ranges of different roles overlap, a pool range is not usable
/// RAM, an MMIO range covers usable RAM, anything reaches past 2^48, the firmware map is empty,
/// or the E820 would not fit in `boot_params`.
pub fn plan(input: &HostMemoryInput<'_>) -> Result<HostMemoryPlan, HostMemoryError> {
    let firmware_ranges: Vec<PhysRange> = input.firmware.iter().map(|r| r.range).collect();
    spans_of(Role::Firmware, &firmware_ranges)?;
    let atoll = spans_of(Role::Atoll, input.atoll)?;
    let pool = spans_of(Role::Pool, input.pool)?;
    let owned = spans_of(Role::OwnedMmio, input.owned_mmio)?;
    let windows = spans_of(Role::MmioWindow, input.mmio_windows)?;

    // Ranges of different roles must be disjoint; within one role, overlaps are merged.
    let roles = [
        (Role::Atoll, input.atoll),
        (Role::Pool, input.pool),
        (Role::OwnedMmio, input.owned_mmio),
    ];
    for (i, &(first, xs)) in roles.iter().enumerate() {
        for &(second, ys) in &roles[i + 1..] {
            for a in xs.iter().filter(|a| !a.is_empty()) {
                if let Some(b) = ys.iter().find(|b| a.overlaps(b)) {
                    return Err(HostMemoryError::Overlap {
                        first,
                        a: *a,
                        second,
                        b: *b,
                    });
                }
            }
        }
    }

    // Whole pages that entries of the kinds `keep` accepts cover and no other entry claims.
    let pages_of = |keep: fn(RegionKind) -> bool| -> Vec<Span> {
        let spans = |want: bool, edge: fn(Span) -> Span| {
            normalize(
                input
                    .firmware
                    .iter()
                    .filter(|r| keep(r.kind) == want)
                    .map(|r| span(&r.range))
                    .collect(),
            )
            .into_iter()
            .map(edge)
            .collect::<Vec<Span>>()
        };
        // Merged before shrinking, so a page split between two entries of kept kinds counts.
        let kept = normalize(spans(true, shrink));
        subtract(&kept, &normalize(spans(false, widen)))
    };
    let ram_pages = pages_of(is_cacheable_ram);
    let usable_pages = pages_of(|k| k == RegionKind::Usable);

    for (r, s) in input.pool.iter().zip(&pool) {
        if !r.is_empty() && !covers(&usable_pages, widen(*s)) {
            return Err(HostMemoryError::PoolNotRam { range: *r });
        }
    }
    for (role, ranges, spans) in [
        (Role::OwnedMmio, input.owned_mmio, &owned),
        (Role::MmioWindow, input.mmio_windows, &windows),
    ] {
        for (r, s) in ranges.iter().zip(spans.iter()) {
            if touches(&usable_pages, *s) {
                return Err(HostMemoryError::MmioInRam { role, range: *r });
            }
        }
    }

    let top = input
        .firmware
        .iter()
        .map(|r| r.range.end.as_u64())
        .chain(windows.iter().map(|w| w.1))
        .max()
        .unwrap_or(0)
        .next_multiple_of(PAGE);
    if top == 0 {
        return Err(HostMemoryError::EmptyMap);
    }

    let carved = normalize(atoll.iter().chain(&pool).map(|&s| widen(s)).collect());
    let excluded = normalize(
        atoll
            .iter()
            .chain(&pool)
            .chain(&owned)
            .map(|&s| widen(s))
            .collect(),
    );

    let e820 = host_e820(input.firmware, &carved)?;

    let mapped = subtract(&[(0, top)], &excluded);
    // RAM pages all lie below `top`, which is at least the end of every firmware entry.
    let wb = subtract(&ram_pages, &excluded);
    let uc = subtract(&mapped, &ram_pages);
    let mut mappings: Vec<HostMapping> = wb
        .iter()
        .map(|&s| (s, MemType::WriteBack))
        .chain(uc.iter().map(|&s| (s, MemType::Uncacheable)))
        .map(|((s, e), mem)| HostMapping {
            gpa: GuestPhysAddr::new(s),
            hpa: HostPhysAddr::new(s),
            len: e - s,
            perms: Perms::all(),
            mem,
        })
        .collect();
    mappings.sort_unstable_by_key(|m| m.gpa.as_u64());

    Ok(HostMemoryPlan {
        e820,
        mappings,
        excluded: excluded.into_iter().map(range).collect(),
        top: HostPhysAddr::new(top),
    })
}

/// The firmware's entries with `carved` (page-widened atoll and pool ranges) reserved: each
/// elementary interval between entry boundaries takes the winning type of what covers it.
fn host_e820(
    firmware: &[MemoryRegion],
    carved: &[Span],
) -> Result<Vec<E820Entry>, HostMemoryError> {
    let typed: Vec<(Span, E820Kind)> = firmware
        .iter()
        .map(|r| (span(&r.range), e820_kind(r.kind)))
        .chain(carved.iter().map(|&s| (s, E820Kind::Reserved)))
        .filter(|((s, e), _)| s < e)
        .collect();
    let mut bounds: Vec<u64> = typed.iter().flat_map(|&((s, e), _)| [s, e]).collect();
    bounds.sort_unstable();
    bounds.dedup();

    let mut out: Vec<E820Entry> = Vec::new();
    for pair in bounds.windows(2) {
        let (s, e) = (pair[0], pair[1]);
        let Some(kind) = typed
            .iter()
            .filter(|&&((ts, te), _)| ts <= s && e <= te)
            .map(|&(_, k)| k)
            .max_by_key(|&k| precedence(k))
        else {
            continue; // A hole: the host's E820 leaves it out, as the firmware's did.
        };
        match out.last_mut() {
            Some(last) if last.kind == kind && last.addr + last.size == s => last.size += e - s,
            _ => out.push(E820Entry {
                addr: s,
                size: e - s,
                kind,
            }),
        }
    }
    if out.len() > E820_MAX {
        return Err(HostMemoryError::TooManyE820 { count: out.len() });
    }
    Ok(out)
}

/// How many leaves of each size a built tree uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeafCounts {
    /// 1 GiB pages.
    pub size_1g: u64,
    /// 2 MiB pages.
    pub size_2m: u64,
    /// 4 KiB pages.
    pub size_4k: u64,
}

impl LeafCounts {
    /// Bytes the counted leaves map.
    pub fn bytes(&self) -> u64 {
        self.size_1g * PageSize::Size1G.bytes()
            + self.size_2m * PageSize::Size2M.bytes()
            + self.size_4k * PageSize::Size4K.bytes()
    }
}

/// Builds the host's second-stage tables from `mappings` (a [`HostMemoryPlan`]'s), with table
/// frames from `frames` and leaves no larger than `max_page` (see [`Tables::new`] for what each
/// format allows). The engine uses the largest page each piece's alignment allows. Returns the
/// tables and the leaves they use, counted by walking them.
pub fn build_tables<Fmt: Format, F: FrameSource>(
    mappings: &[HostMapping],
    frames: F,
    max_page: PageSize,
) -> Result<(Tables<Fmt, F>, LeafCounts), EptError> {
    let mut tables = Tables::new(frames, max_page)?;
    for m in mappings {
        tables.map(m.gpa, m.hpa, m.len, m.perms, m.mem)?;
    }
    let counts = count_leaves(&mut tables, mappings);
    Ok((tables, counts))
}

/// Counts the leaves that map `mappings` (sorted by address) by walking `tables` as the
/// processor does, one leaf at a time; a leaf reaching into the next mapping is counted once.
pub fn count_leaves<Fmt: Format, F: FrameSource>(
    tables: &mut Tables<Fmt, F>,
    mappings: &[HostMapping],
) -> LeafCounts {
    let mut counts = LeafCounts::default();
    // One past the last byte of the last leaf counted.
    let mut at = 0;
    for m in mappings {
        let start = m.gpa.as_u64();
        let end = start.saturating_add(m.len);
        at = at.max(start);
        while at < end {
            let size = match tables.translate(GuestPhysAddr::new(at)) {
                Some(t) => {
                    match t.page {
                        PageSize::Size1G => counts.size_1g += 1,
                        PageSize::Size2M => counts.size_2m += 1,
                        PageSize::Size4K => counts.size_4k += 1,
                    }
                    t.page.bytes()
                }
                None => PAGE,
            };
            at = (at & !(size - 1)) + size;
        }
    }
    counts
}

#[cfg(test)]
mod tests;
