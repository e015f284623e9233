//! What a core does with a partition's exits: vendor-neutral policy over `atoll_vcpu`.
//!
//! * [`exits`]: the exit handlers every enclave shares — CPUID filter, ports, MSRs, control
//!   registers, XSETBV, hypercalls, containment.
//! * [`vplat`]: a Linux enclave's virtual platform at run time (what its vCPUs share, the exits
//!   it handles first, interrupt delivery).

pub mod exits;
pub mod vplat;
