//! The atoll hypervisor.
//!
//! The library holds atoll's logic as host-testable modules; `main.rs` is the image's entry for
//! `x86_64-unknown-none`, and [`hw`] the small set of modules that touch the machine.
//!
//! * [`frames`]: physical frame allocator over the memory map.
//! * [`platform`]: ACPI discovery (processors, ECAM, DMAR, power-off).
//! * [`cpu`]: per-core virtualization probing (VMX, EPT, VPID, unrestricted guest, SVM, NPT).
//! * [`smp`]: the core table and the INIT-SIPI-SIPI bring-up with its deadline.
//! * [`options`]: boot options from the command line.
//! * [`summary`]: the `ATOLL-SUMMARY` line.
#![cfg_attr(target_os = "none", no_std)]

extern crate alloc;

pub mod config;
pub mod cpu;
pub mod decode;
pub mod exits;
pub mod frames;
#[cfg(target_os = "none")]
pub mod hw;
pub mod loader;
pub mod options;
pub mod partition;
pub mod platform;
pub mod smp;
pub mod summary;
pub mod vcpu;
