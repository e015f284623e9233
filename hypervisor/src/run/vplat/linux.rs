//! Laying out a Linux enclave before it runs: the E820 map of the platform's layout, the ACPI
//! description of its devices, and the kernel, initrd and command line loaded through the boot
//! protocol ([`crate::partition::linux`]).

use super::{ACPI_GPA, ECAM_BASE, ECAM_BUSES, IOAPIC_BASE, IOAPIC_ID, LOW_RAM_END, MAX_RAM};
use crate::partition::linux::{E820Entry, E820Kind};
use alloc::string::String;
use alloc::vec::Vec;
use atoll_vcpu::GuestMemory;

/// The E820 map of a Linux enclave with `ram` bytes: low RAM, the reserved BIOS area (with the
/// ACPI tables), RAM from 1 MiB, and the ECAM window reserved (Linux uses MMCONFIG only where
/// the firmware reserved it).
pub fn e820(ram: u64) -> Vec<E820Entry> {
    let mut map = alloc::vec![
        E820Entry {
            addr: 0,
            size: LOW_RAM_END,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: LOW_RAM_END,
            size: 0x10_0000 - LOW_RAM_END,
            kind: E820Kind::Reserved,
        },
    ];
    if ram > 0x10_0000 {
        map.push(E820Entry {
            addr: 0x10_0000,
            size: ram - 0x10_0000,
            kind: E820Kind::Ram,
        });
    }
    map.push(E820Entry {
        addr: ECAM_BASE,
        size: u64::from(ECAM_BUSES) << 20,
        kind: E820Kind::Reserved,
    });
    map
}

/// The ACPI description of a Linux enclave with `vcpus` vCPUs; `pci_bus`: functions are passed
/// through to it or it has virtio devices, so its DSDT has a PCI host bridge with the BAR window
/// ([`super::passthrough::PCI_MMIO_BASE`]..[`super::passthrough::PCI_MMIO_END`]).
pub fn platform_layout(vcpus: usize, pci_bus: bool) -> atoll_devices::acpi::PlatformLayout {
    atoll_devices::acpi::PlatformLayout {
        vcpu_apic_ids: (0..vcpus as u32).collect(),
        ioapic_id: IOAPIC_ID,
        ioapic_base: IOAPIC_BASE,
        ecam_base: ECAM_BASE,
        ecam_buses: ECAM_BUSES,
        oem_id: *b"ATOLL ",
        pci_window: pci_bus.then_some((
            super::passthrough::PCI_MMIO_BASE,
            super::passthrough::PCI_MMIO_END,
        )),
    }
}

/// Lays out a Linux enclave in its RAM (`ram` bytes from GPA 0): ACPI tables for `vcpus`
/// vCPUs at [`ACPI_GPA`], then the kernel, initrd, boot_params and command line through the
/// boot protocol ([`crate::partition::linux::load`]). Every check runs before the kernel is
/// written. `pci_bus`: see [`platform_layout`].
#[allow(clippy::too_many_arguments)]
pub fn load_linux(
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    vcpus: usize,
    pci_bus: bool,
    ram: u64,
    mem: &mut impl GuestMemory,
) -> Result<crate::partition::loader::BootState, String> {
    if ram > MAX_RAM {
        return Err(alloc::format!(
            "{} MiB of RAM; a Linux enclave has at most {} MiB",
            ram >> 20,
            MAX_RAM >> 20
        ));
    }
    let image = crate::partition::linux::LinuxImage::parse(kernel)
        .map_err(|e| alloc::format!("kernel: {e}"))?;
    let tables = atoll_devices::acpi::build(&platform_layout(vcpus, pci_bus), ACPI_GPA)
        .map_err(|e| alloc::format!("ACPI tables: {e}"))?;
    if ACPI_GPA + tables.len() as u64 > 0x10_0000 {
        return Err("ACPI tables do not fit below 1 MiB".into());
    }
    let map = e820(ram);
    // Check the kernel's layout before writing anything.
    crate::partition::linux::plan(&image, initrd, cmdline, ram, &map, Some(tables.rsdp_gpa()))
        .map_err(|e| alloc::format!("kernel: {e}"))?;
    tables
        .write_to(mem)
        .ok_or_else(|| String::from("guest RAM too small for the ACPI tables"))?;
    crate::partition::linux::load(
        &image,
        initrd,
        cmdline,
        ram,
        &map,
        Some(tables.rsdp_gpa()),
        mem,
    )
    .map_err(|e| alloc::format!("kernel: {e}"))
}
