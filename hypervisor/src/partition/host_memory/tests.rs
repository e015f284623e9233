use super::*;
use ept::{EptFormat, NptFormat, Translation};
use std::collections::HashMap;
use std::vec;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Where the fake IOMMU's registers are (a typical VT-d register page under 4 GiB).
const IOMMU: u64 = 0xfed9_0000;
const ATOLL: (u64, u64) = (2 * MIB, 8 * MIB);
const POOL: (u64, u64) = (64 * MIB, 128 * MIB);

fn region(s: u64, e: u64, kind: RegionKind) -> MemoryRegion {
    MemoryRegion {
        range: r(s, e),
        kind,
    }
}

fn r(s: u64, e: u64) -> PhysRange {
    PhysRange::new(HostPhysAddr::new(s), HostPhysAddr::new(e))
}

/// A memory map shaped like QEMU q35's with 1.25 GiB: low RAM, the EBDA and BIOS reserved,
/// 256 MiB below the PCI hole, the MMCONFIG window and the BIOS flash reserved, the rest of RAM
/// above 4 GiB.
fn qemu_map() -> Vec<MemoryRegion> {
    vec![
        region(0, 0x9fc00, RegionKind::Usable),
        region(0x9fc00, 0xa0000, RegionKind::Reserved),
        region(0xf0000, MIB, RegionKind::Reserved),
        region(MIB, 256 * MIB, RegionKind::Usable),
        region(0xb000_0000, 0xc000_0000, RegionKind::Reserved),
        region(0xfffc_0000, 4 * GIB, RegionKind::Reserved),
        region(4 * GIB, 5 * GIB, RegionKind::Usable),
    ]
}

struct Inputs {
    firmware: Vec<MemoryRegion>,
    atoll: Vec<PhysRange>,
    pool: Vec<PhysRange>,
    owned: Vec<PhysRange>,
    windows: Vec<PhysRange>,
}

impl Inputs {
    fn qemu() -> Self {
        Self {
            firmware: qemu_map(),
            atoll: vec![r(ATOLL.0, ATOLL.1)],
            pool: vec![r(POOL.0, POOL.1)],
            owned: vec![r(IOMMU, IOMMU + 0x1000)],
            windows: vec![],
        }
    }

    fn plan(&self) -> Result<HostMemoryPlan, HostMemoryError> {
        plan(&HostMemoryInput {
            firmware: &self.firmware,
            atoll: &self.atoll,
            pool: &self.pool,
            owned_mmio: &self.owned,
            mmio_windows: &self.windows,
        })
    }
}

/// Table memory from the heap, keyed by made-up physical addresses.
#[derive(Default)]
struct HeapFrames {
    frames: HashMap<u64, Box<[u64; 512]>>,
    next: u64,
}

// SAFETY: every frame is its own heap allocation, which stays in place (a box does not move when
// the map grows) until `free_frame` drops it; addresses only grow, so none is handed out twice;
// the tests take no reference to frame memory.
unsafe impl FrameSource for HeapFrames {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        self.next += PAGE;
        let addr = 0x100_0000_0000 + self.next;
        self.frames.insert(addr, Box::new([0; 512]));
        Some(HostPhysAddr::new(addr))
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        assert!(self.frames.remove(&frame.as_u64()).is_some());
    }

    fn table(&mut self, frame: HostPhysAddr) -> *mut [u64; 512] {
        let table = self
            .frames
            .get_mut(&frame.as_u64())
            .expect("the engine only asks for frames it was given");
        &mut **table
    }
}

/// The invariants every E820 must keep: sorted, non-empty entries, no overlaps, and no two
/// touching entries of one type.
fn check_e820(e820: &[E820Entry]) {
    for e in e820 {
        assert!(e.size > 0, "{e:?}");
    }
    for pair in e820.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(a.addr + a.size <= b.addr, "{a:?} overlaps {b:?}");
        assert!(
            a.addr + a.size < b.addr || a.kind != b.kind,
            "{a:?} and {b:?} should be merged"
        );
    }
}

/// The E820 type covering `addr`, if any.
fn e820_at(e820: &[E820Entry], addr: u64) -> Option<E820Kind> {
    e820.iter()
        .find(|e| e.addr <= addr && addr < e.addr + e.size)
        .map(|e| e.kind)
}

/// The plan's invariants: mappings sorted, page-aligned, identity, disjoint from the exclusions
/// and from each other, adjacent ones of different types, and together with the exclusions
/// exactly `[0, top)`.
fn check_plan(plan: &HostMemoryPlan) {
    check_e820(&plan.e820);
    let mut pieces: Vec<(u64, u64)> = plan
        .mappings
        .iter()
        .map(|m| (m.gpa.as_u64(), m.gpa.as_u64() + m.len))
        .chain(plan.excluded.iter().map(span))
        .collect();
    pieces.sort_unstable();
    let mut at = 0;
    for (s, e) in pieces {
        assert_eq!(s, at, "gap or overlap at {s:#x}");
        assert!(s < e && s % PAGE == 0 && e % PAGE == 0);
        at = e;
    }
    assert!(
        at >= plan.top.as_u64(),
        "nothing covers [{at:#x}, {})",
        plan.top
    );
    for m in &plan.mappings {
        assert_eq!(m.gpa.as_u64(), m.hpa.as_u64());
        assert_eq!(m.perms, Perms::all());
    }
    for pair in plan.mappings.windows(2) {
        if pair[0].gpa.as_u64() + pair[0].len == pair[1].gpa.as_u64() {
            assert_ne!(pair[0].mem, pair[1].mem, "{pair:?} should be one mapping");
        }
    }
}

fn mapping_at(plan: &HostMemoryPlan, addr: u64) -> Option<HostMapping> {
    plan.mappings
        .iter()
        .find(|m| m.gpa.as_u64() <= addr && addr < m.gpa.as_u64() + m.len)
        .copied()
}

#[test]
fn qemu_e820_reserves_atoll_and_the_pool() {
    let plan = Inputs::qemu().plan().unwrap();
    check_plan(&plan);
    use E820Kind::*;
    let expected = [
        (0, 0x9fc00, Ram),
        (0x9fc00, 0xa0000, Reserved),
        (0xf0000, MIB, Reserved),
        (MIB, ATOLL.0, Ram),
        (ATOLL.0, ATOLL.1, Reserved),
        (ATOLL.1, POOL.0, Ram),
        (POOL.0, POOL.1, Reserved),
        (POOL.1, 256 * MIB, Ram),
        (0xb000_0000, 0xc000_0000, Reserved),
        (0xfffc_0000, 4 * GIB, Reserved),
        (4 * GIB, 5 * GIB, Ram),
    ]
    .map(|(s, e, kind)| E820Entry {
        addr: s,
        size: e - s,
        kind,
    });
    assert_eq!(plan.e820, expected);
    // The IOMMU's page is not the host's, but it is MMIO, not memory: the E820 leaves it alone.
    assert_eq!(e820_at(&plan.e820, IOMMU), None);
    assert_eq!(plan.top.as_u64(), 5 * GIB);
}

#[test]
fn qemu_plan_maps_ram_write_back_and_the_rest_uncacheable() {
    let plan = Inputs::qemu().plan().unwrap();
    let wb = |a| mapping_at(&plan, a).map(|m| m.mem) == Some(MemType::WriteBack);
    let uc = |a| mapping_at(&plan, a).map(|m| m.mem) == Some(MemType::Uncacheable);
    assert!(wb(0) && wb(0x9e000) && wb(MIB) && wb(ATOLL.1) && wb(200 * MIB) && wb(4 * GIB));
    // The page holding 0x9fc00 is half RAM, half EBDA: not wholly RAM, so uncacheable.
    assert!(uc(0x9f000) && uc(0xa0000) && uc(0xf0000));
    assert!(uc(256 * MIB) && uc(0xb000_0000) && uc(0xfec0_0000) && uc(4 * GIB - PAGE));
    for a in [ATOLL.0, ATOLL.1 - PAGE, POOL.0, POOL.1 - PAGE, IOMMU] {
        assert_eq!(mapping_at(&plan, a), None, "{a:#x}");
    }
    assert_eq!(mapping_at(&plan, 5 * GIB), None, "past the top");
}

/// Builds the plan's tables in format `Fmt` and checks them against the plan by walking them.
fn check_tables<Fmt: Format>(inputs: &Inputs, max_page: PageSize) -> LeafCounts {
    let plan = inputs.plan().unwrap();
    check_plan(&plan);
    let (mut tables, counts) =
        build_tables::<Fmt, _>(&plan.mappings, HeapFrames::default(), max_page).unwrap();

    // The tree holds exactly the plan: its maximal uniform runs are the plan's mappings.
    let runs: Vec<HostMapping> = tables
        .regions()
        .map(|reg| HostMapping {
            gpa: reg.gpa,
            hpa: reg.hpa,
            len: reg.len,
            perms: reg.perms,
            mem: reg.mem,
        })
        .collect();
    assert_eq!(runs, plan.mappings);

    let at = |tables: &mut Tables<Fmt, HeapFrames>, a: u64| -> Option<Translation> {
        tables.translate(GuestPhysAddr::new(a + 0x123))
    };
    for o in inputs.atoll.iter().chain(&inputs.pool).chain(&inputs.owned) {
        let (first, last) = (o.start.as_u64(), o.end.as_u64() - 1);
        for a in [first, (first + last) / 2, last] {
            let page = a & !(PAGE - 1);
            assert_eq!(
                at(&mut tables, page),
                None,
                "{a:#x} in {o} is not the host's"
            );
        }
    }
    let ram = at(&mut tables, 200 * MIB).unwrap();
    assert_eq!(ram.hpa.as_u64(), 200 * MIB + 0x123);
    assert_eq!((ram.mem, ram.perms), (MemType::WriteBack, Perms::all()));
    let ioapic = at(&mut tables, 0xfec0_0000).unwrap();
    assert_eq!(ioapic.hpa.as_u64(), 0xfec0_0123);
    assert_eq!(ioapic.mem, MemType::Uncacheable);
    let high = at(&mut tables, 4 * GIB + 7 * MIB).unwrap();
    assert_eq!(high.hpa.as_u64(), 4 * GIB + 7 * MIB + 0x123);
    assert_eq!(high.mem, MemType::WriteBack);

    // Every mapped byte is counted exactly once, no leaf exceeds `max_page`, and small leaves
    // appear only where the plan has a boundary that is not 2 MiB-aligned: each such boundary
    // splits at most one 2 MiB block into at most 512 pages.
    let mapped: u64 = plan.mappings.iter().map(|m| m.len).sum();
    assert_eq!(counts.bytes(), mapped);
    if max_page < PageSize::Size1G {
        assert_eq!(counts.size_1g, 0);
    }
    let unaligned = plan
        .mappings
        .iter()
        .flat_map(|m| [m.gpa.as_u64(), m.gpa.as_u64() + m.len])
        .filter(|b| b % PageSize::Size2M.bytes() != 0)
        .count() as u64;
    assert!(
        counts.size_4k <= unaligned * 512,
        "{counts:?} for {unaligned} unaligned boundaries"
    );
    assert!(counts.size_4k < counts.size_2m * 512 + counts.size_1g * 512 * 512);
    counts
}

#[test]
fn ept_tables_map_the_plan_with_large_pages() {
    let counts = check_tables::<EptFormat>(&Inputs::qemu(), PageSize::Size1G);
    // 1-2 GiB, 2-3 GiB and 4-5 GiB are uniform and 1 GiB-aligned.
    assert!(counts.size_1g >= 3, "{counts:?}");
}

#[test]
fn npt_tables_map_the_plan_with_large_pages() {
    let counts = check_tables::<NptFormat>(&Inputs::qemu(), PageSize::Size1G);
    assert!(counts.size_1g >= 3, "{counts:?}");
}

#[test]
fn tables_limited_to_2m_pages() {
    check_tables::<EptFormat>(&Inputs::qemu(), PageSize::Size2M);
    check_tables::<NptFormat>(&Inputs::qemu(), PageSize::Size2M);
}

#[test]
fn iommu_page_is_mapped_when_not_owned() {
    let mut inputs = Inputs::qemu();
    let with = inputs.plan().unwrap();
    inputs.owned.clear();
    let without = inputs.plan().unwrap();
    check_plan(&without);
    assert_eq!(mapping_at(&with, IOMMU), None);
    assert_eq!(
        mapping_at(&without, IOMMU).map(|m| m.mem),
        Some(MemType::Uncacheable)
    );
    // Only the mapping changes: the IOMMU page was never in the E820.
    assert_eq!(with.e820, without.e820);
    let (_, c_with) =
        build_tables::<EptFormat, _>(&with.mappings, HeapFrames::default(), PageSize::Size1G)
            .unwrap();
    let (_, c_without) =
        build_tables::<EptFormat, _>(&without.mappings, HeapFrames::default(), PageSize::Size1G)
            .unwrap();
    // 3-4 GiB is all uncacheable (hole, then BIOS flash): one 1 GiB page. Cutting the IOMMU's
    // page out of it leaves 511 2 MiB pages and, in the 2 MiB block it was in, 511 small ones.
    assert_eq!(c_without.size_1g, c_with.size_1g + 1);
    assert_eq!(c_with.size_2m, c_without.size_2m + 511);
    assert_eq!(c_with.size_4k, c_without.size_4k + 511);
    assert_eq!(c_with.bytes() + PAGE, c_without.bytes());
}

#[test]
fn unaligned_atoll_ranges_are_widened_to_pages_in_both() {
    let mut inputs = Inputs::qemu();
    inputs.atoll = vec![r(ATOLL.0 + 0x10, ATOLL.1 - 0x10), r(0x900_0800, 0x900_0900)];
    let plan = inputs.plan().unwrap();
    check_plan(&plan);
    assert!(plan.excluded.contains(&r(ATOLL.0, ATOLL.1)));
    assert!(plan.excluded.contains(&r(0x900_0000, 0x900_1000)));
    assert_eq!(e820_at(&plan.e820, 0x900_0000), Some(E820Kind::Reserved));
    assert_eq!(e820_at(&plan.e820, 0x900_0fff), Some(E820Kind::Reserved));
    assert_eq!(e820_at(&plan.e820, 0x900_1000), Some(E820Kind::Ram));
    assert_eq!(mapping_at(&plan, 0x900_0000), None);
    assert!(mapping_at(&plan, 0x900_1000).is_some());
}

#[test]
fn overlapping_and_touching_atoll_ranges_merge() {
    let mut inputs = Inputs::qemu();
    inputs.atoll = vec![
        r(4 * MIB, 8 * MIB),
        r(2 * MIB, 5 * MIB),
        r(8 * MIB, 9 * MIB),
        r(0, 0),
    ];
    let plan = inputs.plan().unwrap();
    check_plan(&plan);
    assert!(plan.excluded.contains(&r(2 * MIB, 9 * MIB)));
    assert_eq!(e820_at(&plan.e820, 2 * MIB), Some(E820Kind::Reserved));
    assert_eq!(e820_at(&plan.e820, 9 * MIB - 1), Some(E820Kind::Reserved));
    assert_eq!(e820_at(&plan.e820, 9 * MIB), Some(E820Kind::Ram));
}

#[test]
fn overlapping_firmware_entries_keep_the_restrictive_type() {
    let mut inputs = Inputs::qemu();
    // A reserved range inside usable RAM (firmware maps do this), and ACPI tables at the end of
    // low RAM whose entry overlaps the usable one.
    inputs.firmware.push(region(
        0x1000_0000 - 0x8000,
        0x1000_0000,
        RegionKind::AcpiReclaimable,
    ));
    inputs
        .firmware
        .push(region(0x0a00_0000, 0x0a00_2800, RegionKind::Reserved));
    let plan = inputs.plan().unwrap();
    check_plan(&plan);
    assert_eq!(e820_at(&plan.e820, 0x0a00_0000), Some(E820Kind::Reserved));
    assert_eq!(e820_at(&plan.e820, 0x0a00_27ff), Some(E820Kind::Reserved));
    assert_eq!(e820_at(&plan.e820, 0x0a00_2800), Some(E820Kind::Ram));
    assert_eq!(e820_at(&plan.e820, 0x0fff_f000), Some(E820Kind::Acpi));
    // Reserved may be device memory: uncacheable, widened to the page 0x0a002000.
    for (a, mem) in [
        (0x0a00_0000, MemType::Uncacheable),
        (0x0a00_2000, MemType::Uncacheable),
        (0x0a00_3000, MemType::WriteBack),
        // ACPI tables are RAM.
        (0x0fff_f000, MemType::WriteBack),
    ] {
        assert_eq!(mapping_at(&plan, a).map(|m| m.mem), Some(mem), "{a:#x}");
    }
}

#[test]
fn firmware_types_become_e820_types() {
    let firmware = vec![
        region(0, MIB, RegionKind::Usable),
        region(MIB, 2 * MIB, RegionKind::AcpiNvs),
        region(2 * MIB, 3 * MIB, RegionKind::Defective),
        region(3 * MIB, 4 * MIB, RegionKind::Other(7)),
        region(4 * MIB, 5 * MIB, RegionKind::Other(20)),
    ];
    let inputs = Inputs {
        firmware,
        atoll: vec![],
        pool: vec![],
        owned: vec![],
        windows: vec![],
    };
    let plan = inputs.plan().unwrap();
    check_plan(&plan);
    let kinds: Vec<E820Kind> = plan.e820.iter().map(|e| e.kind).collect();
    use E820Kind::*;
    assert_eq!(kinds, [Ram, Nvs, Unusable, Pmem, Reserved]);
    let mems: Vec<MemType> = [0, MIB, 2 * MIB, 3 * MIB, 4 * MIB]
        .iter()
        .map(|&a| mapping_at(&plan, a).unwrap().mem)
        .collect();
    use MemType::*;
    assert_eq!(
        mems,
        [WriteBack, WriteBack, Uncacheable, Uncacheable, Uncacheable]
    );
}

#[test]
fn mmio_windows_extend_the_mapped_span() {
    let mut inputs = Inputs::qemu();
    let window = r(0x80_0000_0000, 0x80_4000_0000);
    let before = inputs.plan().unwrap();
    assert_eq!(mapping_at(&before, window.start.as_u64()), None);
    inputs.windows.push(window);
    let plan = inputs.plan().unwrap();
    check_plan(&plan);
    assert_eq!(plan.top, window.end);
    assert_eq!(plan.e820, before.e820, "windows are not memory");
    let m = mapping_at(&plan, window.start.as_u64()).unwrap();
    assert_eq!(m.mem, MemType::Uncacheable);
    let (mut tables, counts) =
        build_tables::<NptFormat, _>(&plan.mappings, HeapFrames::default(), PageSize::Size1G)
            .unwrap();
    assert_eq!(
        counts.bytes(),
        plan.mappings.iter().map(|m| m.len).sum::<u64>()
    );
    let t = tables
        .translate(GuestPhysAddr::new(0x80_3fff_ffff))
        .unwrap();
    assert_eq!(t.hpa.as_u64(), 0x80_3fff_ffff);
    assert_eq!(t.page, PageSize::Size1G);
    assert_eq!(
        tables.translate(GuestPhysAddr::new(window.end.as_u64())),
        None
    );
}

#[test]
fn several_pool_ranges_across_adjacent_usable_entries() {
    let mut inputs = Inputs::qemu();
    // Split low RAM into two usable entries at 100 MiB; a pool range across the seam is still RAM.
    inputs.firmware[3] = region(MIB, 100 * MIB, RegionKind::Usable);
    inputs
        .firmware
        .push(region(100 * MIB, 256 * MIB, RegionKind::Usable));
    inputs.pool = vec![r(96 * MIB, 104 * MIB), r(4 * GIB + 512 * MIB, 5 * GIB)];
    let plan = inputs.plan().unwrap();
    check_plan(&plan);
    assert_eq!(e820_at(&plan.e820, 96 * MIB), Some(E820Kind::Reserved));
    assert_eq!(e820_at(&plan.e820, 104 * MIB), Some(E820Kind::Ram));
    assert_eq!(e820_at(&plan.e820, 5 * GIB - 1), Some(E820Kind::Reserved));
    assert_eq!(mapping_at(&plan, 4 * GIB + 512 * MIB), None);
    // The seam between the two usable entries vanishes from the host's E820.
    assert_eq!(e820_at(&plan.e820, 100 * MIB), Some(E820Kind::Reserved));
    check_tables::<EptFormat>(&inputs, PageSize::Size1G);
}

#[test]
fn overlapping_inputs_are_refused() {
    /// An edit to the QEMU inputs, and the two roles whose overlap it creates.
    type Case = (fn(&mut Inputs), Role, Role);
    let cases: [Case; 4] = [
        (
            |i| i.pool.push(r(7 * MIB, 9 * MIB)),
            Role::Atoll,
            Role::Pool,
        ),
        (
            |i| i.atoll.push(r(IOMMU, IOMMU + 1)),
            Role::Atoll,
            Role::OwnedMmio,
        ),
        (
            |i| i.owned.push(r(POOL.1 - 1, POOL.1 + PAGE)),
            Role::Pool,
            Role::OwnedMmio,
        ),
        (
            |i| i.atoll.push(r(POOL.0 - 0x10, POOL.0 + 1)),
            Role::Atoll,
            Role::Pool,
        ),
    ];
    for (edit, a, b) in cases {
        let mut inputs = Inputs::qemu();
        edit(&mut inputs);
        match inputs.plan() {
            Err(HostMemoryError::Overlap { first, second, .. }) => {
                assert_eq!((first, second), (a, b))
            }
            other => panic!("expected an overlap of {a} and {b}, got {other:?}"),
        }
    }
    // Touching is not overlapping.
    let mut inputs = Inputs::qemu();
    inputs.pool.push(r(ATOLL.1, ATOLL.1 + 2 * MIB));
    check_plan(&inputs.plan().unwrap());
}

#[test]
fn pool_outside_usable_ram_is_refused() {
    for bad in [
        r(0xb000_0000, 0xb020_0000),   // the MMCONFIG window
        r(200 * MIB, 300 * MIB),       // runs off the end of low RAM
        r(0x9e000, 0xa0000),           // into the EBDA's page
        r(5 * GIB, 6 * GIB),           // past the top
        r(4 * GIB - 2 * MIB, 4 * GIB), // the BIOS flash
    ] {
        let mut inputs = Inputs::qemu();
        inputs.pool.push(bad);
        assert_eq!(
            inputs.plan(),
            Err(HostMemoryError::PoolNotRam { range: bad }),
            "{bad}"
        );
    }
    // ACPI tables are RAM but not the enclaves' to take.
    let mut inputs = Inputs::qemu();
    inputs
        .firmware
        .push(region(0xff0_0000, 256 * MIB, RegionKind::AcpiReclaimable));
    let acpi = r(0xfe0_0000, 256 * MIB);
    inputs.pool.push(acpi);
    assert_eq!(
        inputs.plan(),
        Err(HostMemoryError::PoolNotRam { range: acpi })
    );
}

#[test]
fn mmio_on_ram_is_refused() {
    let mut inputs = Inputs::qemu();
    let bad = r(200 * MIB, 200 * MIB + PAGE);
    inputs.owned.push(bad);
    assert_eq!(
        inputs.plan(),
        Err(HostMemoryError::MmioInRam {
            role: Role::OwnedMmio,
            range: bad
        })
    );
    let mut inputs = Inputs::qemu();
    let bad = r(3 * GIB, 4 * GIB + PAGE);
    inputs.windows.push(bad);
    assert_eq!(
        inputs.plan(),
        Err(HostMemoryError::MmioInRam {
            role: Role::MmioWindow,
            range: bad
        })
    );
}

#[test]
fn ranges_past_the_walk_limit_are_refused() {
    let far = r(GPA_LIMIT - PAGE, GPA_LIMIT + PAGE);
    let mut inputs = Inputs::qemu();
    inputs.windows.push(far);
    assert_eq!(
        inputs.plan(),
        Err(HostMemoryError::AddressTooHigh {
            role: Role::MmioWindow,
            range: far
        })
    );
    let mut inputs = Inputs::qemu();
    inputs
        .firmware
        .push(region(GPA_LIMIT, GPA_LIMIT + GIB, RegionKind::Reserved));
    assert!(matches!(
        inputs.plan(),
        Err(HostMemoryError::AddressTooHigh {
            role: Role::Firmware,
            ..
        })
    ));
    // Up to the limit itself is fine.
    let mut inputs = Inputs::qemu();
    inputs.windows.push(r(GPA_LIMIT - GIB, GPA_LIMIT));
    assert_eq!(inputs.plan().unwrap().top.as_u64(), GPA_LIMIT);
}

#[test]
fn empty_map_is_refused() {
    let mut inputs = Inputs::qemu();
    inputs.firmware.clear();
    inputs.atoll.clear();
    inputs.pool.clear();
    inputs.owned.clear();
    assert_eq!(inputs.plan(), Err(HostMemoryError::EmptyMap));
    inputs.firmware.push(region(0, 0, RegionKind::Usable));
    assert_eq!(inputs.plan(), Err(HostMemoryError::EmptyMap));
}

#[test]
fn too_many_e820_entries_are_refused() {
    // Alternating RAM and reserved pages, each its own entry.
    let mut inputs = Inputs::qemu();
    inputs.atoll.clear();
    inputs.pool.clear();
    let base = 16 * MIB;
    for i in 0..E820_MAX as u64 {
        if i % 2 == 1 {
            let s = base + i * PAGE;
            inputs
                .firmware
                .push(region(s, s + PAGE, RegionKind::Reserved));
        }
    }
    let count = match inputs.plan() {
        Err(HostMemoryError::TooManyE820 { count }) => count,
        other => panic!("expected too many entries, got {other:?}"),
    };
    assert!(count > E820_MAX);
    // One entry fewer in the firmware map fits.
    inputs
        .firmware
        .truncate(inputs.firmware.len() - (count - E820_MAX).div_ceil(2));
    assert!(inputs.plan().unwrap().e820.len() <= E820_MAX);
}

#[test]
fn errors_name_the_ranges() {
    let text = HostMemoryError::Overlap {
        first: Role::Atoll,
        a: r(0x1000, 0x2000),
        second: Role::Pool,
        b: r(0x1800, 0x3000),
    }
    .to_string();
    assert!(text.contains("atoll range [0x1000, 0x2000)"), "{text}");
    assert!(
        text.contains("enclave pool range [0x1800, 0x3000)"),
        "{text}"
    );
    let text = HostMemoryError::TooManyE820 { count: 200 }.to_string();
    assert!(text.contains("200") && text.contains(&E820_MAX.to_string()));
}

#[test]
fn set_arithmetic() {
    assert_eq!(
        normalize(vec![(5, 9), (0, 2), (2, 3), (8, 12), (20, 20)]),
        [(0, 3), (5, 12)]
    );
    assert_eq!(
        subtract(&[(0, 10), (20, 30)], &[(2, 4), (8, 22), (29, 40)]),
        [(0, 2), (4, 8), (22, 29)]
    );
    assert_eq!(subtract(&[(0, 10)], &[]), [(0, 10)]);
    assert_eq!(subtract(&[(4, 6)], &[(0, 10)]), []);
    assert_eq!(widen((0x1001, 0x2001)), (0x1000, 0x3000));
    assert_eq!(shrink((0x1001, 0x2fff)), (0x2000, 0x2000));
    assert_eq!(shrink((0x1000, 0x3000)), (0x1000, 0x3000));
}

#[test]
fn a_leaf_spanning_two_mappings_is_counted_once() {
    let half = |at: u64| HostMapping {
        gpa: GuestPhysAddr::new(at),
        hpa: HostPhysAddr::new(at),
        len: GIB / 2,
        perms: Perms::all(),
        mem: MemType::WriteBack,
    };
    let mappings = [half(GIB), half(GIB + GIB / 2)];
    let (_, counts) =
        build_tables::<EptFormat, _>(&mappings, HeapFrames::default(), PageSize::Size1G).unwrap();
    assert_eq!(
        counts,
        LeafCounts {
            size_1g: 1,
            size_2m: 0,
            size_4k: 0
        }
    );
    let (_, counts) =
        build_tables::<NptFormat, _>(&mappings, HeapFrames::default(), PageSize::Size2M).unwrap();
    assert_eq!((counts.size_1g, counts.size_2m), (0, 512));
}
