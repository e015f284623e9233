//! The enclave platform's ACPI tables (`atoll_devices::acpi`) read back by atoll's own ACPI
//! discovery and by the `acpi` crate: what a guest's firmware parser sees.

use acpi::{AcpiHandler, PhysicalMapping};
use atoll::machine::platform::{self, Platform};
use atoll_devices::acpi::*;
use boot::HostPhysAddr;
use core::ptr::NonNull;
use std::sync::Arc;

const BASE: u64 = 0xe_0000;

fn layout(ids: &[u32]) -> PlatformLayout {
    PlatformLayout {
        vcpu_apic_ids: ids.to_vec(),
        ioapic_id: 2,
        ioapic_base: 0xfec0_0000,
        ecam_base: 0xb000_0000,
        ecam_buses: 4,
        oem_id: *b"ATOLL ",
        pci_window: None,
    }
}

fn built(ids: &[u32]) -> AcpiTables {
    build(&layout(ids), BASE).unwrap()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Guest-physical memory holding exactly the generated image.
#[derive(Clone)]
struct ImageMemory(Arc<(usize, Vec<u8>)>);

impl ImageMemory {
    fn new(t: &AcpiTables) -> Self {
        ImageMemory(Arc::new((t.gpa() as usize, t.bytes().to_vec())))
    }
}

impl AcpiHandler for ImageMemory {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let (base, bytes) = &*self.0;
        let offset = phys
            .checked_sub(*base)
            .filter(|o| o + size <= bytes.len())
            .unwrap_or_else(|| panic!("no table bytes at {phys:#x}+{size:#x}"));
        let ptr = bytes[offset..].as_ptr() as *mut T;
        // SAFETY: the bytes live as long as the Arc each handler clone holds, and `offset +
        // size` is inside them; the acpi crate only reads through the mapping.
        unsafe { PhysicalMapping::new(phys, NonNull::new(ptr).unwrap(), size, size, self.clone()) }
    }
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

#[test]
fn parsed_back_by_atolls_own_discovery() {
    let ids = [0, 1, 255, 256, 300, 4096];
    let t = built(&ids);
    let mem = ImageMemory::new(&t);
    let rsdp = HostPhysAddr::new(t.rsdp_gpa());
    // SAFETY: the image memory holds the RSDP and every table it leads to.
    let p = unsafe { Platform::discover(mem.clone(), rsdp) }.unwrap();
    let cpus: Vec<(u32, u32, bool)> = p
        .cpus()
        .iter()
        .map(|c| (c.apic_id, c.uid, c.x2apic_entry))
        .collect();
    let want: Vec<(u32, u32, bool)> = ids
        .iter()
        .enumerate()
        .map(|(uid, id)| (*id, uid as u32, true))
        .collect();
    assert_eq!(cpus, want);
    assert_eq!(p.cpus_ignored, 0);
    assert_eq!(p.ioapic_count, 1);
    assert_eq!(p.local_apic_base, HostPhysAddr::new(0xfee0_0000));
    assert_eq!(p.acpi_revision, 2);
    assert!(!p.dmar_present);
    let ecam: Vec<_> = p.ecam().copied().collect();
    assert_eq!(
        ecam,
        [platform::Ecam {
            base: HostPhysAddr::new(0xb000_0000),
            segment: 0,
            bus_start: 0,
            bus_end: 3,
        }]
    );

    // The power registers, through the acpi crate's FADT.
    // SAFETY: as above.
    let tables =
        unsafe { acpi::AcpiTables::from_rsdp(mem.clone(), t.rsdp_gpa() as usize) }.unwrap();
    let fadt = tables.find_table::<acpi::fadt::Fadt>().unwrap();
    let flags = { fadt.flags };
    assert!(flags.system_is_hw_reduced_acpi());
    assert!(flags.supports_system_reset_via_fadt());
    assert!(flags.local_xapics_must_use_physical_destination_mode());
    let io = |g: acpi::address::GenericAddress| {
        assert_eq!(g.address_space, acpi::address::AddressSpace::SystemIo);
        assert_eq!(g.bit_width, 8);
        g.address
    };
    assert_eq!(io(fadt.reset_register().unwrap()), u64::from(RESET_PORT));
    assert_eq!(fadt.reset_value, RESET_VALUE);
    let ctl = fadt.sleep_control_register().unwrap().unwrap();
    assert_eq!(io(ctl), u64::from(SLEEP_CONTROL_PORT));
    let sts = fadt.sleep_status_register().unwrap().unwrap();
    assert_eq!(io(sts), u64::from(SLEEP_STATUS_PORT));

    // \_S5 from the DSDT the FADT leads to.
    let mut seen = Vec::new();
    let mut s5 = None;
    // SAFETY: as above.
    unsafe {
        platform::for_each_table(mem, rsdp, |sig, bytes| {
            seen.push(sig);
            if &sig == b"DSDT" {
                s5 = platform::find_s5(bytes);
            }
        })
    }
    .unwrap();
    assert_eq!(seen, [*b"DSDT", *b"FACP", *b"APIC", *b"MCFG"]);
    assert_eq!(s5, Some((S5_SLP_TYP, S5_SLP_TYP)));
    assert_eq!(
        requested_sleep_type(S5_SLEEP_CONTROL_VALUE),
        Some(S5_SLP_TYP)
    );
}

#[test]
fn tables_above_4g_leave_the_32_bit_dsdt_field_zero() {
    let t = build(&layout(&[0]), 0x1_0000_0000).unwrap();
    let f = t.table(b"FACP").unwrap();
    assert_eq!(u32_at(f, 40), 0);
    assert!(u64_at(f, 140) > 0x1_0000_0000);
    let mem = ImageMemory::new(&t);
    // SAFETY: the image memory holds every table.
    let p = unsafe { Platform::discover(mem, HostPhysAddr::new(t.rsdp_gpa())) }.unwrap();
    assert_eq!(p.cpus().len(), 1);
}

#[test]
fn atolls_s5_finder_reads_the_dsdt_for_one_and_for_the_most_vcpus() {
    let most: Vec<u32> = (0..MAX_VCPUS as u32).map(|i| i * 2).collect();
    for ids in [&[0u32][..], &most[..]] {
        let t = built(ids);
        let d = t.table(b"DSDT").unwrap();
        assert_eq!(
            platform::find_s5(d),
            Some((S5_SLP_TYP, S5_SLP_TYP)),
            "{} vCPUs",
            ids.len()
        );
    }
}
