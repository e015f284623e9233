//! What a core does with a partition's exits: vendor-neutral policy over `atoll_vcpu`.
//!
//! * [`deny`]: deny by default — what the guest gets for the instructions, exceptions and
//!   registers atoll intercepts so they never reach the host or another partition
//!   (`docs/security.md` has the table).
//! * [`exits`]: the exit handlers every enclave shares — CPUID filter, ports, MSRs, control
//!   registers, XSETBV, hypercalls, containment.
//! * [`failure`]: the text of a fault atoll took while handling a partition, in a fixed buffer.
//! * [`vplat`]: a Linux enclave's virtual platform at run time (what its vCPUs share, the exits
//!   it handles first, interrupt delivery).

pub mod deny;
pub mod exits;
pub mod failure;
#[cfg(feature = "fault-injection")]
pub mod fault_injection;
pub mod vplat;
