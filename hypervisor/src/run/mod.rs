//! What a core does with a partition's exits: vendor-neutral policy over `atoll_vcpu`.
//!
//! * [`channel`]: the channel functions' shared state (registers, doorbells, the host's
//!   interrupt) — the only state two partitions share.
//! * [`deny`]: deny by default — what the guest gets for the instructions, exceptions and
//!   registers atoll intercepts so they never reach the host or another partition
//!   (`docs/security.md` has the table).
//! * [`exits`]: the exit handlers every enclave shares: the dispatcher, run state and
//!   containment in `exits/mod.rs`, and one file per kind: `cpuid` (the CPUID filter), `io`
//!   (ports, COM1, string I/O), `msr` (MSR indices, pass-through list, allowlist), `cr` (control
//!   registers, XSETBV), `hypercalls` (the hypercall ABI).
//! * [`failure`]: the text of a fault atoll took while handling a partition, in a fixed buffer.
//! * [`host`]: the root partition's exit handling as policy (CPUID, MSR tables, intercepted
//!   ports, the xAPIC page's ICR, refused accesses to atoll's and the pool's memory); not
//!   wired yet.
//! * [`host_ipi`]: the root partition's IPI filter — which host ICR writes go out, which INIT
//!   and STARTUP are emulated, what is dropped and counted (not wired yet).
//! * [`host_windows`]: the root partition's `ATOLL-IDLE` / `ATOLL-LOAD` windows (exits by kind
//!   between its console's marker lines) for the summary and `cargo xtask bench idle`.
//! * [`host_reset`]: which of the host's writes (and triple faults) reset or power off the
//!   machine — ACPI reset register, 0xCF9, keyboard controller, S5; not wired yet.
//! * [`live`]: an enclave's counters and console tail while it runs, for `atoll stats` and
//!   `atoll console`.
//! * [`vplat`]: a Linux enclave's virtual platform at run time: `vplat/mod.rs` the layout, what
//!   its vCPUs share and own, the exits it handles first, entry and HLT; `apic` (mailboxes, xAPIC
//!   page, x2APIC MSRs, IPI routing), `io` (port and MMIO dispatch through the buses, COM1, PIT,
//!   RTC, PCI), `console` (the guest's result and measurement lines), `cpuid`, `linux` (E820,
//!   ACPI layout, loading the kernel).

pub mod channel;
pub mod deny;
pub mod exits;
pub mod failure;
#[cfg(feature = "fault-injection")]
pub mod fault_injection;
pub mod host;
pub mod host_ipi;
pub mod host_reset;
pub mod host_windows;
pub mod live;
pub mod vplat;
