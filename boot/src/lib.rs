//! atoll's boot path.
//!
//! * [`entry`]: the Multiboot2 header, the 32-bit entry GRUB jumps to, the switch to long mode
//!   with identity page tables for the first 4 GiB, and the call into the hypervisor's
//!   `atoll_bsp_main`.
//! * [`trampoline`]: the real-mode AP start-up code copied below 1 MiB for INIT-SIPI-SIPI.
//! * [`idt`]: the exception IDT every core loads.
//! * [`info`]: the boot-information handoff (memory map, modules, command line, RSDP).
//! * [`addr`]: the address newtypes every crate uses.
//!
//! Everything that executes privileged instructions is compiled only for `target_os = "none"`;
//! the rest is plain Rust with host unit tests.
#![cfg_attr(target_os = "none", no_std)]

pub mod addr;
#[cfg(target_os = "none")]
pub mod entry;
pub mod idt;
pub mod info;
pub mod paging;
pub mod regs;
pub mod trampoline;
pub mod tss;

pub use addr::{GuestPhysAddr, GuestVirtAddr, HostPhysAddr, PhysRange};
