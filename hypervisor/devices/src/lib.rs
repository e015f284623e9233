//! Pure device models of atoll's virtual platforms.
//!
//! Everything here is safe Rust (`forbid(unsafe_code)`) and tested on the host: a model holds
//! its registers and answers accesses; it never touches the machine. The image crate wires the
//! models to exits and to the partition's cores.
//!
//! * [`uart`], [`pit`], [`rtc`]: the legacy devices — COM1 (a 16550A), PIT channel 2 and its
//!   gate, the CMOS clock's time registers.
//! * [`lapic`], [`ioapic`]: the interrupt controllers — a vCPU's local APIC (xAPIC and x2APIC)
//!   and the platform's I/O APIC.
//! * [`acpi`]: an enclave's ACPI tables (RSDP, XSDT, FADT, DSDT, MADT, MCFG).
//! * [`host_acpi`]: the host's (root partition's) ACPI tables — the firmware's, without the
//!   DMAR, under a new RSDP and XSDT, with a MADT of the host's cores (pool cores online
//!   capable). Not used by the boot yet.
//! * [`host_ioapic`]: the host's physical I/O APIC trapped, its entries written to the chip in
//!   interrupt-remapping form ([`pci::msi`] does the same for MSI and MSI-X).
//! * [`bounded`]: what exit paths keep of guest data without allocating — fixed-capacity result
//!   store and console queue that count what they drop, and an iterative JSON validator with a
//!   depth limit.
//! * [`bus`]: the port and MMIO buses — non-overlapping address ranges mapped to devices,
//!   allocation-free lookups, explicit errors for odd sizes and accesses past a range's end.
//! * [`pci`]: PCI — configuration spaces with write masks, BARs and capability lists, MSI-X,
//!   functions on buses ([`pci::bus::PciDevice`], [`pci::bus::PciBus`]), the host bridge, and
//!   the segment reached through ECAM and through ports 0xCF8/0xCFC
//!   ([`pci::host::PciSegment`]), and the map of decoded BARs ([`pci::bars::BarMap`]); the
//!   control device and the host's configuration accesses to it ([`pci::control`]). The
//!   control device, virtio devices and passed-through
//!   virtual functions plug in as `PciDevice`s.
//! * [`virtio`]: virtio 1.2 devices over PCI (console, net, blk) that unmodified Linux drivers
//!   bind to: split virtqueues walked and checked without allocating, the modern PCI transport
//!   with MSI-X, and device models that copy between guest buffers and record rings toward the
//!   host (which never sees enclave memory).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod bounded;
pub mod bus;
pub mod host_acpi;
pub mod host_ioapic;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pit;
pub mod rtc;
pub mod uart;
pub mod virtio;
