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
//! * [`bounded`]: what exit paths keep of guest data without allocating — fixed-capacity result
//!   store and console queue that count what they drop, and an iterative JSON validator with a
//!   depth limit.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod bounded;
pub mod ioapic;
pub mod lapic;
pub mod pit;
pub mod rtc;
pub mod uart;
