//! The machine atoll runs on: what it discovers at boot and how it brings the cores up.
//!
//! * [`frames`]: physical frame allocator over the memory map.
//! * [`platform`]: ACPI discovery (processors, ECAM, DMAR, power-off).
//! * [`cpu`]: per-core virtualization probing (VMX, EPT, VPID, unrestricted guest, SVM, NPT).
//! * [`percpu`]: the per-core block: the command mailbox (start, stop, reclaim, with
//!   acknowledgement) and counters.
//! * [`smp`]: the core table and the INIT-SIPI-SIPI bring-up with its deadline.
//! * [`options`]: boot options from the command line.

pub mod cpu;
pub mod frames;
pub mod options;
pub mod percpu;
pub mod platform;
pub mod smp;
