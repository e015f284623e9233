//! The boot-information handoff: what GRUB told us, parsed once into plain data.
//!
//! `multiboot2` does the parsing (Multiboot2 spec §3.6); this module turns its tags into the
//! fixed-capacity [`BootInfo`] that the rest of atoll consumes, so nothing above `boot` depends on
//! the loader's format. Strings (command line, module names) borrow the boot information
//! structure, which atoll keeps reserved for its whole life.

use crate::addr::{HostPhysAddr, PhysRange};
use core::fmt;
use multiboot2::{BootInformation, MemoryAreaType};

/// Most memory-map entries kept; real firmware gives a few dozen.
pub const MAX_REGIONS: usize = 128;
/// Most modules kept.
pub const MAX_MODULES: usize = 16;

/// What a memory-map entry says about its range (Multiboot2 spec §3.6.8, ACPI E820 types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// RAM free for use.
    Usable,
    /// Not to be touched.
    Reserved,
    /// RAM holding ACPI tables; reclaimable once they are parsed.
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// Bad RAM.
    Defective,
    /// A type this version does not know; treated as reserved.
    Other(u32),
}

/// One memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// The physical range.
    pub range: PhysRange,
    /// What it is.
    pub kind: RegionKind,
}

/// A module GRUB loaded (`module2` line): its bytes and its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    /// Where its bytes are.
    pub range: PhysRange,
    /// The text after the path on the `module2` line; atoll uses its first word as the name.
    pub cmdline: &'a str,
}

impl Module<'_> {
    /// The module's name: the first word of its command line.
    pub fn name(&self) -> &str {
        self.cmdline.split_whitespace().next().unwrap_or("")
    }
}

/// Why the boot information could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// The magic in EAX was not the Multiboot2 one: not started by a Multiboot2 loader.
    BadMagic(u32),
    /// The structure could not be read.
    Malformed,
    /// No memory map tag: atoll cannot know where RAM is.
    NoMemoryMap,
    /// The memory map has more entries than [`MAX_REGIONS`].
    TooManyRegions(usize),
    /// More modules than [`MAX_MODULES`].
    TooManyModules(usize),
    /// A string tag is not valid UTF-8.
    BadString(&'static str),
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(
                f,
                "boot magic {m:#x} is not {MULTIBOOT2_MAGIC:#x}: atoll must be loaded by a Multiboot2 loader (GRUB `multiboot2`)"
            ),
            Self::Malformed => write!(f, "the Multiboot2 boot information is malformed"),
            Self::NoMemoryMap => write!(f, "the boot information has no memory map tag"),
            Self::TooManyRegions(n) => {
                write!(f, "the memory map has {n} entries, more than the {MAX_REGIONS} atoll keeps")
            }
            Self::TooManyModules(n) => {
                write!(f, "{n} modules were loaded, more than the {MAX_MODULES} atoll accepts")
            }
            Self::BadString(what) => write!(f, "the {what} is not valid UTF-8"),
        }
    }
}

/// The value a Multiboot2 loader leaves in EAX (Multiboot2 spec §3.3).
pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;

/// Everything atoll takes from the loader.
#[derive(Debug)]
pub struct BootInfo<'a> {
    regions: [MemoryRegion; MAX_REGIONS],
    region_count: usize,
    modules: [Module<'a>; MAX_MODULES],
    module_count: usize,
    /// The kernel command line (`multiboot2` line after the path).
    pub cmdline: &'a str,
    /// Where the RSDP copy the loader gave us lives, if it gave one (ACPI 2.0+ preferred).
    pub rsdp: Option<HostPhysAddr>,
    /// The boot information structure itself, which must stay untouched while `BootInfo` lives.
    pub info_range: PhysRange,
}

const EMPTY_REGION: MemoryRegion = MemoryRegion {
    range: PhysRange::new(HostPhysAddr::new(0), HostPhysAddr::new(0)),
    kind: RegionKind::Reserved,
};
const EMPTY_MODULE: Module<'static> = Module {
    range: PhysRange::new(HostPhysAddr::new(0), HostPhysAddr::new(0)),
    cmdline: "",
};

/// Size of a tag header; a tag's payload starts after it.
const TAG_HEADER_SIZE: u64 = 8;

impl<'a> BootInfo<'a> {
    /// Parses what the loader handed over. `info` must point at the structure whose address the
    /// loader passed; the RSDP address returned points into it.
    pub fn parse(magic: u32, info: &'a BootInformation<'a>) -> Result<Self, BootInfoError> {
        if magic != MULTIBOOT2_MAGIC {
            return Err(BootInfoError::BadMagic(magic));
        }
        let mut this = BootInfo {
            regions: [EMPTY_REGION; MAX_REGIONS],
            region_count: 0,
            modules: [EMPTY_MODULE; MAX_MODULES],
            module_count: 0,
            cmdline: "",
            rsdp: None,
            info_range: PhysRange::new(
                HostPhysAddr::new(info.start_address() as u64),
                HostPhysAddr::new(info.end_address() as u64),
            ),
        };

        let mmap = info.memory_map_tag().ok_or(BootInfoError::NoMemoryMap)?;
        let areas = mmap.memory_areas();
        if areas.len() > MAX_REGIONS {
            return Err(BootInfoError::TooManyRegions(areas.len()));
        }
        for area in areas {
            let kind = match MemoryAreaType::from(area.typ()) {
                MemoryAreaType::Available => RegionKind::Usable,
                MemoryAreaType::Reserved => RegionKind::Reserved,
                MemoryAreaType::AcpiAvailable => RegionKind::AcpiReclaimable,
                MemoryAreaType::ReservedHibernate => RegionKind::AcpiNvs,
                MemoryAreaType::Defective => RegionKind::Defective,
                MemoryAreaType::Custom(t) => RegionKind::Other(t),
            };
            this.regions[this.region_count] = MemoryRegion {
                range: PhysRange::from_len(HostPhysAddr::new(area.start_address()), area.size()),
                kind,
            };
            this.region_count += 1;
        }

        for module in info.module_tags() {
            if this.module_count == MAX_MODULES {
                return Err(BootInfoError::TooManyModules(info.module_tags().count()));
            }
            let cmdline = module
                .cmdline()
                .map_err(|_| BootInfoError::BadString("module command line"))?;
            this.modules[this.module_count] = Module {
                range: PhysRange::new(
                    HostPhysAddr::new(module.start_address().into()),
                    HostPhysAddr::new(module.end_address().into()),
                ),
                cmdline,
            };
            this.module_count += 1;
        }

        if let Some(tag) = info.command_line_tag() {
            this.cmdline = tag
                .cmdline()
                .map_err(|_| BootInfoError::BadString("command line"))?;
        }

        // The loader copies the RSDP into the tag; the copy's address is what ACPI parsing needs.
        let rsdp_tag = info
            .rsdp_v2_tag()
            .map(|t| t as *const _ as *const u8 as u64)
            .or_else(|| {
                info.rsdp_v1_tag()
                    .map(|t| t as *const _ as *const u8 as u64)
            });
        this.rsdp = rsdp_tag.map(|tag| HostPhysAddr::new(tag + TAG_HEADER_SIZE));
        Ok(this)
    }

    /// The memory map as the loader gave it.
    pub fn memory_map(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    /// The loaded modules, in `module2` order.
    pub fn modules(&self) -> &[Module<'a>] {
        &self.modules[..self.module_count]
    }

    /// The module whose name (first word of its command line) is `name`.
    pub fn module(&self, name: &str) -> Option<&Module<'a>> {
        self.modules().iter().find(|m| m.name() == name)
    }

    /// Total bytes of usable RAM in the map (overlaps counted once).
    pub fn usable_bytes(&self) -> u64 {
        crate::info::usable_bytes(self.memory_map())
    }
}

/// Bytes of usable RAM described by `map`, counting overlapping usable entries once and
/// removing what any non-usable entry also claims.
pub fn usable_bytes(map: &[MemoryRegion]) -> u64 {
    // Sweep the boundaries: O(n²) on at most MAX_REGIONS entries, fine at boot.
    let mut points = [0u64; 2 * MAX_REGIONS];
    let mut n = 0;
    for r in map.iter().take(MAX_REGIONS) {
        points[n] = r.range.start.as_u64();
        points[n + 1] = r.range.end.as_u64();
        n += 2;
    }
    let points = &mut points[..n];
    points.sort_unstable();
    let mut total = 0;
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a == b {
            continue;
        }
        let covers = |r: &&MemoryRegion| r.range.start.as_u64() <= a && b <= r.range.end.as_u64();
        let usable = map
            .iter()
            .filter(covers)
            .any(|r| r.kind == RegionKind::Usable);
        let reserved = map
            .iter()
            .filter(covers)
            .any(|r| r.kind != RegionKind::Usable);
        if usable && !reserved {
            total += b - a;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use multiboot2::Builder as InformationBuilder;
    use multiboot2::{BootInformationHeader, CommandLineTag, MemoryArea, MemoryMapTag, ModuleTag};

    fn build(areas: &[MemoryArea], modules: &[(u32, u32, &str)], cmdline: &str) -> Vec<u8> {
        let mut b = InformationBuilder::new()
            .mmap(MemoryMapTag::new(areas))
            .cmdline(CommandLineTag::new(cmdline));
        for &(s, e, c) in modules {
            b = b.add_module(ModuleTag::new(s, e, c));
        }
        let boxed = b.build();
        let start = &*boxed as *const _ as *const u8;
        // SAFETY: the builder's structure starts with its header, whose first field is the
        // structure's `total_size` (a u32); the box is allocated and aligned for that header.
        let total_size =
            unsafe { *(&*boxed as *const _ as *const BootInformationHeader as *const u32) };
        // SAFETY: the builder returns a valid, initialized structure of `total_size` bytes,
        // alive while `boxed` is.
        let bytes = unsafe { core::slice::from_raw_parts(start, total_size as usize) };
        bytes.to_vec()
    }

    fn load(bytes: &[u8]) -> BootInformation<'_> {
        // The structure must be 8-byte aligned.
        assert_eq!(bytes.as_ptr() as usize % 8, 0);
        // SAFETY: `bytes` holds a complete structure made by the builder and outlives the result.
        unsafe { BootInformation::load(bytes.as_ptr().cast()).expect("valid structure") }
    }

    fn aligned(bytes: Vec<u8>) -> Vec<u64> {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `v` has at least `bytes.len()` bytes of storage.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast(), bytes.len())
        };
        v
    }

    #[test]
    fn handoff_carries_map_modules_and_cmdline() {
        let areas = [
            MemoryArea::new(0, 0x9f000, MemoryAreaType::Available),
            MemoryArea::new(0x9f000, 0x1000, MemoryAreaType::Reserved),
            MemoryArea::new(0x10_0000, 0x1fef_0000, MemoryAreaType::Available),
            MemoryArea::new(0x1fff_0000, 0x1_0000, MemoryAreaType::AcpiAvailable),
        ];
        let words = aligned(build(
            &areas,
            &[(0x40_0000, 0x40_1234, "config extra")],
            "log=debug",
        ));
        // SAFETY: reinterpreting the u64 storage as bytes of the same length.
        let bytes =
            unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) };
        let mbi = load(bytes);
        let info = BootInfo::parse(MULTIBOOT2_MAGIC, &mbi).unwrap();
        assert_eq!(info.memory_map().len(), 4);
        assert_eq!(info.memory_map()[2].kind, RegionKind::Usable);
        assert_eq!(info.memory_map()[3].kind, RegionKind::AcpiReclaimable);
        assert_eq!(
            info.memory_map()[2].range.start,
            HostPhysAddr::new(0x10_0000)
        );
        assert_eq!(info.modules().len(), 1);
        assert_eq!(info.module("config").unwrap().range.len(), 0x1234);
        assert_eq!(info.cmdline, "log=debug");
        assert_eq!(info.rsdp, None);
        assert_eq!(info.usable_bytes(), 0x9f000 + 0x1fef_0000);
        assert_eq!(info.info_range.start.as_u64(), bytes.as_ptr() as u64);
    }

    #[test]
    fn wrong_magic_is_refused() {
        let words = aligned(build(
            &[MemoryArea::new(0, 0x1000, MemoryAreaType::Available)],
            &[],
            "",
        ));
        // SAFETY: as above.
        let bytes =
            unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) };
        let mbi = load(bytes);
        let err = BootInfo::parse(0x2bad_b002, &mbi).unwrap_err();
        assert_eq!(err, BootInfoError::BadMagic(0x2bad_b002));
        assert!(err.to_string().contains("Multiboot2"));
    }

    #[test]
    fn usable_bytes_handles_overlaps() {
        let r = |s: u64, e: u64, kind| MemoryRegion {
            range: PhysRange::new(HostPhysAddr::new(s), HostPhysAddr::new(e)),
            kind,
        };
        // Two overlapping usable entries and a reserved hole punched into them.
        let map = [
            r(0x1000, 0x5000, RegionKind::Usable),
            r(0x3000, 0x8000, RegionKind::Usable),
            r(0x4000, 0x6000, RegionKind::Reserved),
        ];
        assert_eq!(usable_bytes(&map), 0x3000 + 0x2000);
    }
}
