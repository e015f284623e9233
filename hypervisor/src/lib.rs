//! The atoll image crate: the hypervisor itself.
//!
//! The library holds atoll's logic as host-testable modules; `main.rs` and `boot_flow.rs` are
//! the image's entry and orchestration for `x86_64-unknown-none`, and [`hw`] the small set of
//! modules that touch the machine. Policy code here sees vCPUs only through the vendor-neutral
//! `atoll_vcpu` crate, and device models come from the pure `atoll_devices` crate.
//!
//! * [`machine`]: discovery and bring-up — the frame allocator, ACPI discovery, per-core
//!   virtualization probing, the core table and INIT-SIPI-SIPI, boot options.
//! * [`partition`]: partitions and their loaders — enclave descriptions, RAM and second-stage
//!   tables, the guest-image and Linux boot-protocol loaders.
//! * [`run`]: the vCPU run loop's policy — exit handlers, and a Linux enclave's virtual platform
//!   at run time.
//! * [`summary`]: the `ATOLL-SUMMARY` line.
//! * [`hw`] (target only): serial, APICs, TSC, MSRs, power-off, the VT-x and AMD-V backends and
//!   the per-core run of an enclave.
#![cfg_attr(target_os = "none", no_std)]

extern crate alloc;

#[cfg(target_os = "none")]
pub mod hw;
pub mod machine;
pub mod partition;
pub mod run;
pub mod summary;
