//! The root partition's layout at boot: its memory plan with a place for its ACPI tables, and
//! the facts atoll appends to its kernel command line (issue 10, items 1–3 and 7).
//!
//! [`layout`] runs [`super::host_memory::plan`] with what atoll keeps, the pool, the local
//! APIC page (trapped: mapped read-only by the caller, so writes exit and are filtered) and one
//! MMIO window from the top of the firmware map to the top of the physical address space (so
//! every BAR the host's firmware or Linux places up there is mapped, uncacheable), then takes
//! the last pages of the highest host RAM entry below 4 GiB for the host's ACPI image
//! ([`atoll_devices::host_acpi`]) and marks them `ACPI` in the host's E820: the host's own
//! memory, which its Linux reads and may reclaim, rebuilt at every restart.
//!
//! Pure: no unsafe, no hardware; tested on the host.

use super::host_memory::{self, HostMapping, HostMemoryError, HostMemoryInput};
use super::linux::{E820Entry, E820Kind, E820_MAX};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use boot::info::MemoryRegion;
use boot::{HostPhysAddr, PhysRange};
use core::fmt;
use ept::MemType;

const PAGE: u64 = 4096;
const GIB: u64 = 1 << 30;
/// The host's ACPI image and its kernel's entry tables must lie below 4 GiB (the identity
/// tables of the Linux loader cover only that much).
const LOW_4G: u64 = 1 << 32;

/// The root partition's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLayout {
    /// Its E820, the ACPI image's pages marked `ACPI`.
    pub e820: Vec<E820Entry>,
    /// Its second-stage identity mappings (the APIC page not among them).
    pub mappings: Vec<HostMapping>,
    /// Where its ACPI image goes (inside its RAM).
    pub acpi_base: HostPhysAddr,
    /// Its RAM: every write-back mapping (whole pages the firmware calls RAM), where atoll may
    /// read and write on its behalf (loading its kernel, fetching an instruction to decode).
    pub ram: Vec<PhysRange>,
    /// Bytes of usable RAM its E820 gives it.
    pub usable_bytes: u64,
}

/// Why the root partition's memory could not be laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostLayoutError {
    /// The memory plan refused its inputs.
    Plan(HostMemoryError),
    /// No RAM entry below 4 GiB has room for the ACPI image.
    NoRoomForAcpi { len: u64 },
}

impl fmt::Display for HostLayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plan(e) => write!(f, "the host's memory: {e}"),
            Self::NoRoomForAcpi { len } => write!(
                f,
                "the host has no RAM below 4 GiB with room for its {len}-byte ACPI tables"
            ),
        }
    }
}

/// What [`layout`] needs.
#[derive(Clone, Copy, Debug)]
pub struct HostLayoutInput<'a> {
    /// The firmware's memory map.
    pub firmware: &'a [MemoryRegion],
    /// atoll's own memory (image, modules, boot information, its frames).
    pub atoll: &'a [PhysRange],
    /// The enclave pool.
    pub pool: &'a [PhysRange],
    /// The local APIC's page: left out of the mappings (the caller maps it read-only).
    pub apic_page: PhysRange,
    /// The IOMMUs' register sets: atoll's, never mapped for the host.
    pub iommu: &'a [PhysRange],
    /// One past the highest physical address the processors decode (`1 << MAXPHYADDR`).
    pub phys_top: u64,
    /// Bytes of the host's ACPI image.
    pub acpi_len: u64,
}

/// Lays out the root partition's memory; see the module documentation.
pub fn layout(input: &HostLayoutInput<'_>) -> Result<HostLayout, HostLayoutError> {
    let firmware_top = input
        .firmware
        .iter()
        .map(|r| r.range.end.as_u64())
        .max()
        .unwrap_or(0);
    let window_start = firmware_top.next_multiple_of(GIB);
    let phys_top = input.phys_top.min(ept::GPA_LIMIT);
    let window: Vec<PhysRange> = (window_start < phys_top)
        .then(|| PhysRange::new(HostPhysAddr::new(window_start), HostPhysAddr::new(phys_top)))
        .into_iter()
        .collect();
    let mut owned: Vec<PhysRange> = input.iommu.to_vec();
    owned.push(input.apic_page);
    let plan = host_memory::plan(&HostMemoryInput {
        firmware: input.firmware,
        atoll: input.atoll,
        pool: input.pool,
        owned_mmio: &owned,
        mmio_windows: &window,
    })
    .map_err(HostLayoutError::Plan)?;
    let ram: Vec<PhysRange> = plan
        .mappings
        .iter()
        .filter(|m| m.mem == MemType::WriteBack)
        .map(|m| PhysRange::from_len(m.hpa, m.len))
        .collect();
    let len = input.acpi_len.next_multiple_of(PAGE).max(PAGE);
    // The highest usable E820 entry below 4 GiB that holds the image above 1 MiB, and wholly
    // inside write-back mappings (it is plain RAM the host owns).
    let acpi_base = plan
        .e820
        .iter()
        .filter(|e| e.kind == E820Kind::Ram)
        .filter_map(|e| {
            let end = (e.addr + e.size).min(LOW_4G) & !(PAGE - 1);
            let base = end.checked_sub(len)?;
            let fits = base >= e.addr.max(1 << 20)
                && ram
                    .iter()
                    .any(|r| r.start.as_u64() <= base && base + len <= r.end.as_u64());
            fits.then_some(base)
        })
        .max()
        .ok_or(HostLayoutError::NoRoomForAcpi { len })?;
    let e820 = mark(&plan.e820, acpi_base, len, E820Kind::Acpi);
    if e820.len() > E820_MAX {
        return Err(HostLayoutError::Plan(HostMemoryError::TooManyE820 {
            count: e820.len(),
        }));
    }
    let usable_bytes = e820
        .iter()
        .filter(|e| e.kind == E820Kind::Ram)
        .map(|e| e.size)
        .sum();
    Ok(HostLayout {
        e820,
        mappings: plan.mappings,
        acpi_base: HostPhysAddr::new(acpi_base),
        ram,
        usable_bytes,
    })
}

/// `e820` with `[base, base + len)` (inside one entry) given type `kind`: that entry split in
/// up to three.
fn mark(e820: &[E820Entry], base: u64, len: u64, kind: E820Kind) -> Vec<E820Entry> {
    let end = base + len;
    let mut out = Vec::with_capacity(e820.len() + 2);
    for e in e820 {
        let e_end = e.addr + e.size;
        if e.addr <= base && end <= e_end {
            for (a, b, k) in [
                (e.addr, base, e.kind),
                (base, end, kind),
                (end, e_end, e.kind),
            ] {
                if a < b {
                    out.push(E820Entry {
                        addr: a,
                        size: b - a,
                        kind: k,
                    });
                }
            }
        } else {
            out.push(*e);
        }
    }
    out
}

/// The facts atoll appends to the host's command line, for its `atoll-check --role host`:
/// `atoll.role=host`, `atoll.cpus=0-N` (the host's logical CPUs, numbered as its Linux numbers
/// them: one per core it was given), `atoll.memory_mib` (its usable RAM), `atoll.pool=S-E,…`
/// (the enclave pool's ranges, hex, both ends inclusive: `…000-…fff`) and `atoll.restarts=N` (how many times it
/// was restarted: a test that panics the host does so on its first boot only).
pub fn cmdline_facts(cpus: usize, usable_bytes: u64, pool: &[PhysRange], restarts: u32) -> String {
    let cpus = match cpus {
        0 | 1 => String::from("0"),
        n => format!("0-{}", n - 1),
    };
    let pool: Vec<String> = pool
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| format!("{:#x}-{:#x}", r.start.as_u64(), r.end.as_u64() - 1))
        .collect();
    format!(
        "atoll.role=host atoll.cpus={cpus} atoll.memory_mib={} atoll.pool={} atoll.restarts={restarts}",
        usable_bytes >> 20,
        pool.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot::info::RegionKind;

    fn r(s: u64, e: u64) -> PhysRange {
        PhysRange::new(HostPhysAddr::new(s), HostPhysAddr::new(e))
    }

    fn region(s: u64, e: u64, kind: RegionKind) -> MemoryRegion {
        MemoryRegion {
            range: r(s, e),
            kind,
        }
    }

    /// QEMU q35 with 1 GiB: low RAM, the BIOS area, RAM to 1 GiB minus the ACPI tables.
    fn qemu() -> Vec<MemoryRegion> {
        vec![
            region(0, 0x9_fc00, RegionKind::Usable),
            region(0x9_fc00, 0xa_0000, RegionKind::Reserved),
            region(0xf_0000, 0x10_0000, RegionKind::Reserved),
            region(0x10_0000, 0x3ffe_0000, RegionKind::Usable),
            region(0x3ffe_0000, 0x4000_0000, RegionKind::Reserved),
            region(0xb000_0000, 0xc000_0000, RegionKind::Reserved),
            region(0xfed1_c000, 0xfed2_0000, RegionKind::Reserved),
            region(0xfeff_c000, 0xff00_0000, RegionKind::Reserved),
            region(0xfffc_0000, 0x1_0000_0000, RegionKind::Reserved),
        ]
    }

    const APIC: u64 = 0xfee0_0000;

    fn input<'a>(
        fw: &'a [MemoryRegion],
        atoll: &'a [PhysRange],
        pool: &'a [PhysRange],
    ) -> HostLayoutInput<'a> {
        HostLayoutInput {
            firmware: fw,
            atoll,
            pool,
            apic_page: r(APIC, APIC + PAGE),
            iommu: &[],
            phys_top: 1 << 40,
            acpi_len: 0x1234,
        }
    }

    #[test]
    fn qemu_host_layout_reserves_atoll_and_the_pool_and_places_acpi_in_its_ram() {
        let fw = qemu();
        let atoll = [r(0x20_0000, 0x80_0000), r(0x2000_0000, 0x2020_0000)];
        let pool = [r(0x2020_0000, 0x3fe0_0000)];
        let l = layout(&input(&fw, &atoll, &pool)).unwrap();
        let kind_at = |a: u64| {
            l.e820
                .iter()
                .find(|e| e.addr <= a && a < e.addr + e.size)
                .map(|e| e.kind)
        };
        assert_eq!(kind_at(0x1000), Some(E820Kind::Ram));
        assert_eq!(
            kind_at(0x30_0000),
            Some(E820Kind::Reserved),
            "atoll's image"
        );
        assert_eq!(kind_at(0x3000_0000), Some(E820Kind::Reserved), "the pool");
        // The ACPI image: two pages at the top of the highest RAM (above the pool here).
        let top = 0x3ffe_0000;
        assert_eq!(l.acpi_base.as_u64(), top - 0x2000);
        assert_eq!(kind_at(top - 0x2000), Some(E820Kind::Acpi));
        assert_eq!(kind_at(top - 0x1), Some(E820Kind::Acpi));
        assert_eq!(kind_at(top - 0x2001), Some(E820Kind::Ram));
        // Nothing maps atoll, the pool or the APIC page; the RAM list is what is mapped WB.
        for m in &l.mappings {
            let m = PhysRange::from_len(m.hpa, m.len);
            for x in atoll.iter().chain(&pool).chain([&r(APIC, APIC + PAGE)]) {
                assert!(!m.overlaps(x), "{m} maps {x}");
            }
        }
        assert!(l.ram.iter().any(|x| x.start.as_u64() == 0));
        // The MMIO window reaches the top of the physical address space.
        let last = l.mappings.last().unwrap();
        assert_eq!(last.gpa.as_u64() + last.len, 1 << 40);
        assert_eq!(last.mem, MemType::Uncacheable);
        let ram_bytes: u64 = 0x9_fc00
            + (0x20_0000 - 0x10_0000)
            + (0x2000_0000 - 0x80_0000)
            + (top - 0x2000 - 0x3fe0_0000);
        assert_eq!(l.usable_bytes, ram_bytes);
    }

    #[test]
    fn the_iommu_registers_are_never_the_hosts() {
        let fw = qemu();
        let vtd = [r(0xfed9_0000, 0xfed9_1000)];
        let mut i = input(&fw, &[], &[]);
        i.iommu = &vtd;
        let l = layout(&i).unwrap();
        for m in &l.mappings {
            let m = PhysRange::from_len(m.hpa, m.len);
            assert!(!m.overlaps(&vtd[0]), "{m} maps the VT-d registers");
        }
        // Its neighbours stay mapped (1:1 uncacheable MMIO).
        let mapped = |a: u64| {
            l.mappings
                .iter()
                .any(|m| m.gpa.as_u64() <= a && a < m.gpa.as_u64() + m.len)
        };
        assert!(mapped(0xfed9_1000) && mapped(0xfed8_f000));
    }

    #[test]
    fn acpi_needs_room_below_4g() {
        let fw = [
            region(0, 0x9_fc00, RegionKind::Usable),
            region(0x1_0000_0000, 0x2_0000_0000, RegionKind::Usable),
        ];
        assert_eq!(
            layout(&input(&fw, &[], &[])),
            Err(HostLayoutError::NoRoomForAcpi { len: 0x2000 })
        );
    }

    #[test]
    fn plan_errors_pass_through() {
        let fw = qemu();
        // The pool overlapping atoll's memory.
        let e = layout(&input(
            &fw,
            &[r(0x20_0000, 0x80_0000)],
            &[r(0x40_0000, 0x60_0000)],
        ));
        assert!(matches!(
            e,
            Err(HostLayoutError::Plan(HostMemoryError::Overlap { .. }))
        ));
    }

    /// A firmware memory map as atoll logs it at `log=debug` ("firmware memory map: START END
    /// KIND" lines, captured from QEMU and Bochs runs into tests/fixtures/e820/).
    fn captured(text: &str) -> Vec<MemoryRegion> {
        text.lines()
            .filter_map(|l| l.split_once("firmware memory map: ").map(|(_, r)| r))
            .map(|l| {
                let mut w = l.split_whitespace();
                let num = |s: Option<&str>| {
                    u64::from_str_radix(s.unwrap().trim_start_matches("0x"), 16).unwrap()
                };
                let (s, e) = (num(w.next()), num(w.next()));
                let kind = match w.next().unwrap() {
                    "Usable" => RegionKind::Usable,
                    "AcpiReclaimable" => RegionKind::AcpiReclaimable,
                    "AcpiNvs" => RegionKind::AcpiNvs,
                    "Defective" => RegionKind::Defective,
                    _ => RegionKind::Reserved,
                };
                region(s, e, kind)
            })
            .collect()
    }

    /// The host's layout from a captured map, with atoll's image low and the pool carved from the
    /// top of the largest usable range below 16 MiB of host RAM (as the boot does): every
    /// invariant a host's Linux relies on.
    fn check_captured(fw: &[MemoryRegion]) {
        assert!(fw.len() >= 3, "the fixture has a map");
        let big = fw
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
            .max_by_key(|r| r.range.len())
            .unwrap()
            .range;
        let atoll = [r(0x20_0000, 0x80_0000)];
        let pool_end = (big.end.as_u64() - (16 << 20)) & !0x1f_ffff;
        let pool = [r(pool_end - (128 << 20), pool_end)];
        let l = layout(&input(fw, &atoll, &pool)).unwrap();
        // Sorted, disjoint, and within the 128 entries boot_params holds.
        assert!(l.e820.len() <= E820_MAX);
        for w in l.e820.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "{w:?}");
        }
        let kind_at = |a: u64| {
            l.e820
                .iter()
                .find(|e| e.addr <= a && a < e.addr + e.size)
                .map(|e| e.kind)
        };
        for x in atoll.iter().chain(&pool) {
            for a in [x.start.as_u64(), x.end.as_u64() - 1] {
                assert_eq!(kind_at(a), Some(E820Kind::Reserved), "{a:#x}");
            }
            for m in &l.mappings {
                assert!(
                    !PhysRange::from_len(m.hpa, m.len).overlaps(x),
                    "{m:?} maps {x}"
                );
            }
        }
        // Every other usable whole page is the host's RAM, mapped write-back (a page only partly
        // RAM is mapped uncacheable, see `host_memory`).
        for f in fw.iter().filter(|f| f.kind == RegionKind::Usable) {
            let start = f.range.start.as_u64().next_multiple_of(PAGE);
            let last = (f.range.end.as_u64() & !(PAGE - 1)).saturating_sub(PAGE);
            for a in [start, last] {
                let outside = atoll
                    .iter()
                    .chain(&pool)
                    .all(|x| !x.contains(HostPhysAddr::new(a)));
                let acpi = l.acpi_base.as_u64()..l.acpi_base.as_u64() + 0x2000;
                if outside && a < f.range.end.as_u64() && !acpi.contains(&a) {
                    assert_eq!(kind_at(a), Some(E820Kind::Ram), "{a:#x}");
                    assert!(
                        l.ram.iter().any(|x| x.contains(HostPhysAddr::new(a))),
                        "{a:#x}"
                    );
                }
            }
        }
        // The firmware's own reservations stay reserved (its ACPI tables, the BIOS).
        for f in fw.iter().filter(|f| f.kind != RegionKind::Usable) {
            assert_ne!(
                kind_at(f.range.start.as_u64()),
                Some(E820Kind::Ram),
                "{f:?}"
            );
        }
        // The ACPI image is in the host's RAM, below 4 GiB, typed ACPI.
        assert_eq!(kind_at(l.acpi_base.as_u64()), Some(E820Kind::Acpi));
        assert!(l.acpi_base.as_u64() < 1 << 32);
        // The APIC page is never mapped (the boot maps it read-only itself).
        assert!(l
            .mappings
            .iter()
            .all(|m| !PhysRange::from_len(m.hpa, m.len).overlaps(&r(APIC, APIC + PAGE))));
    }

    #[test]
    fn captured_qemu_and_bochs_maps_give_a_sound_host_e820() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/e820/");
        for name in ["qemu-q35-1024.log", "bochs-1024.log"] {
            let text = std::fs::read_to_string(alloc::format!("{dir}{name}")).unwrap();
            check_captured(&captured(&text));
        }
    }

    #[test]
    fn command_line_facts() {
        assert_eq!(
            cmdline_facts(2, 700 << 20, &[r(0x2020_0000, 0x3fe0_0000)], 0),
            "atoll.role=host atoll.cpus=0-1 atoll.memory_mib=700 atoll.pool=0x20200000-0x3fdfffff atoll.restarts=0"
        );
        assert!(cmdline_facts(1, 0, &[], 3).contains("atoll.cpus=0 "));
        assert!(cmdline_facts(1, 0, &[], 3).ends_with("atoll.restarts=3"));
    }
}
