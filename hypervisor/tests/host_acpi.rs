//! The host's ACPI tables (`atoll_devices::host_acpi`) built from captured firmware tables and
//! read back — together with the firmware tables they still point at — by atoll's own ACPI
//! discovery and by the `acpi` crate: what the host's Linux would see.

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, PhysicalMapping};
use atoll::machine::platform::{self, Platform};
use atoll_devices::host_acpi::*;
use boot::HostPhysAddr;
use core::ptr::NonNull;
use std::sync::Arc;

/// Where the made-up firmware keeps its tables, its DSDT and its FACS.
const FIRMWARE_TABLES: u64 = 0x7fe0_0000;
const FIRMWARE_DSDT: u64 = 0x7fd0_0000;
const FIRMWARE_FACS: u64 = 0x7fcf_0000;
/// Where the host's image goes.
const IMAGE: u64 = 0x9_f000;

/// Physical memory: (address, bytes) regions, mapped by lookup.
#[derive(Clone)]
struct Memory(Arc<Vec<(usize, Vec<u8>)>>);

impl AcpiHandler for Memory {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let (base, bytes) = self
            .0
            .iter()
            .find(|(b, v)| *b <= phys && phys + size <= b + v.len())
            .unwrap_or_else(|| panic!("no bytes at {phys:#x}+{size:#x}"));
        let ptr = bytes[phys - base..].as_ptr() as *mut T;
        // SAFETY: the bytes live as long as the Arc each handler clone holds, and `phys + size`
        // is inside the region found; the acpi crate only reads through the mapping.
        unsafe { PhysicalMapping::new(phys, NonNull::new(ptr).unwrap(), size, size, self.clone()) }
    }
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn fix_checksum(t: &mut [u8]) {
    t[9] = 0;
    t[9] = 0u8.wrapping_sub(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
}

/// A captured firmware: its root table's tables at made-up addresses (FADT pointed at the
/// DSDT and a FACS placed here), in name order.
struct Firmware {
    tables: Vec<(u64, Vec<u8>)>,
    dsdt: Vec<u8>,
    facs: Vec<u8>,
}

fn captured(dir: &str) -> Firmware {
    let path = format!(
        "{}/../tests/fixtures/acpi/{dir}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut dsdt = Vec::new();
    let mut tables = Vec::new();
    for n in names {
        let mut t = std::fs::read(format!("{path}/{n}")).unwrap();
        if n == "DSDT" {
            dsdt = t;
            continue;
        }
        if n == "FACP" {
            // FIRMWARE_CTRL (36), DSDT (40); X_FIRMWARE_CTRL (132), X_DSDT (140) from ACPI 2.0.
            t[36..40].copy_from_slice(&(FIRMWARE_FACS as u32).to_le_bytes());
            t[40..44].copy_from_slice(&(FIRMWARE_DSDT as u32).to_le_bytes());
            if t.len() >= 148 {
                t[132..140].copy_from_slice(&FIRMWARE_FACS.to_le_bytes());
                t[140..148].copy_from_slice(&FIRMWARE_DSDT.to_le_bytes());
            }
            fix_checksum(&mut t);
        }
        tables.push((FIRMWARE_TABLES + tables.len() as u64 * 0x1000, t));
    }
    // FACS (ACPI 6.5 §5.2.10): signature, length 64, the rest zero is fine for readers here.
    let mut facs = vec![0u8; 64];
    facs[0..4].copy_from_slice(b"FACS");
    facs[4..8].copy_from_slice(&64u32.to_le_bytes());
    Firmware { tables, dsdt, facs }
}

impl Firmware {
    fn input(&self) -> FirmwareAcpi<'_> {
        FirmwareAcpi {
            oem_id: *b"BOCHS ",
            tables: self
                .tables
                .iter()
                .map(|(a, b)| FirmwareTable {
                    address: HostPhysAddr::new(*a),
                    bytes: b,
                })
                .collect(),
        }
    }

    /// The firmware's memory with the host's image beside it.
    fn memory(&self, image: &HostAcpi) -> Memory {
        let mut regions: Vec<(usize, Vec<u8>)> = self
            .tables
            .iter()
            .map(|(a, b)| (*a as usize, b.clone()))
            .collect();
        regions.push((FIRMWARE_DSDT as usize, self.dsdt.clone()));
        regions.push((FIRMWARE_FACS as usize, self.facs.clone()));
        regions.push((image.base().as_u64() as usize, image.bytes().to_vec()));
        Memory(Arc::new(regions))
    }

    fn signature_at(&self, address: u64) -> Option<[u8; 4]> {
        self.tables
            .iter()
            .find(|(a, _)| *a == address)
            .map(|(_, b)| b[0..4].try_into().unwrap())
    }
}

/// Builds the host's image from a captured firmware and checks what both readers see.
fn check(dir: &str, host: &[u32], pool: &[u32]) {
    let fw = captured(dir);
    let cores = HostCores { host, pool };
    let image = build(&fw.input(), &cores, HostPhysAddr::new(IMAGE)).unwrap();
    let mem = fw.memory(&image);
    let rsdp = image.rsdp_address();

    // atoll's own discovery: only the host's cores are enabled processors, no DMAR.
    // SAFETY: the memory holds the RSDP and every table it leads to.
    let p = unsafe { Platform::discover(mem.clone(), rsdp) }.unwrap();
    let ids: Vec<u32> = p.cpus().iter().map(|c| c.apic_id).collect();
    assert_eq!(ids, host, "{dir}");
    assert!(!p.dmar_present, "{dir}");
    assert_eq!(p.ioapic_count, 1, "{dir}");
    assert!(
        p.power.is_some(),
        "{dir}: the kept FADT still leads to the DSDT"
    );
    assert_eq!(p.acpi_revision, 2);

    // Every table the new XSDT lists, and the DSDT through the kept FADT, with their
    // signatures: the firmware's list without the DMAR.
    let mut seen = Vec::new();
    // SAFETY: as above.
    unsafe { platform::for_each_table(mem.clone(), rsdp, |sig, _| seen.push(sig)) }.unwrap();
    let mut want: Vec<[u8; 4]> = Vec::new();
    for (_, t) in &fw.tables {
        let sig: [u8; 4] = t[0..4].try_into().unwrap();
        if &sig == b"FACP" {
            want.push(*b"DSDT");
        }
        if &sig != b"DMAR" {
            want.push(sig);
        }
    }
    assert_eq!(seen, want, "{dir}");
    for a in image.xsdt_entries() {
        assert_ne!(fw.signature_at(a.as_u64()), Some(*b"DMAR"));
    }

    // The acpi crate: every listed header validates (signature, checksum), the MADT's
    // processors are exactly the host's (enabled) and the pool's (online capable).
    // SAFETY: as above.
    let tables =
        unsafe { acpi::AcpiTables::from_rsdp(mem.clone(), rsdp.as_u64() as usize) }.unwrap();
    assert_eq!(
        tables.headers().count(),
        image.xsdt_entries().count(),
        "{dir}"
    );
    assert!(tables.headers().all(|h| h.signature.as_str() != "DMAR"));
    let dsdt = tables.dsdt().unwrap();
    // The AML stream starts after the DSDT's 36-byte header.
    assert_eq!(dsdt.address, FIRMWARE_DSDT as usize + 36);
    assert_eq!(dsdt.length as usize, fw.dsdt.len() - 36);
    let madt = tables.find_table::<Madt>().unwrap();
    assert_eq!(
        madt.physical_start(),
        image.madt_address().as_u64() as usize
    );
    let rev = madt.get().header.revision;
    assert!(
        pool.is_empty() || rev >= MADT_ONLINE_CAPABLE_REVISION,
        "{dir}: {rev}"
    );
    let mut enabled = Vec::new();
    let mut capable = Vec::new();
    for e in madt.get().entries() {
        let (id, flags) = match e {
            MadtEntry::LocalApic(e) => (u32::from(e.apic_id), { e.flags }),
            MadtEntry::LocalX2Apic(e) => ({ e.x2apic_id }, { e.flags }),
            _ => continue,
        };
        match flags & (MADT_ENABLED | MADT_ONLINE_CAPABLE) {
            MADT_ENABLED => enabled.push(id),
            MADT_ONLINE_CAPABLE => capable.push(id),
            other => panic!("{dir}: APIC id {id} has flags {other:#x}"),
        }
    }
    assert_eq!(enabled, host, "{dir}");
    assert_eq!(capable, pool, "{dir}");

    // The RSDP's two checksums, and the new tables' checksums, byte by byte.
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
    assert_eq!(sum(&image.rsdp()[..20]), 0);
    assert_eq!(sum(image.rsdp()), 0);
    assert_eq!(sum(image.xsdt()), 0);
    assert_eq!(sum(image.madt()), 0);
}

#[test]
fn qemu_host_with_a_pool_core_and_an_enclave_core() {
    // Core 1 is a boot-time enclave's; core 3 is the pool's.
    check("boot-qemu-4cpu", &[0, 2], &[3]);
}

#[test]
fn qemu_host_on_every_core() {
    check("boot-qemu-4cpu", &[0, 1, 2, 3], &[]);
}

#[test]
fn vtd_host_loses_the_dmar() {
    let fw = captured("boot-vtd-qemu-2cpu");
    assert!(fw.tables.iter().any(|(_, t)| &t[0..4] == b"DMAR"));
    check("boot-vtd-qemu-2cpu", &[0], &[1]);
}

#[test]
fn bochs_acpi_1_fadt_is_kept() {
    check("boot-bochs-2cpu", &[1], &[0]);
}
