//! What runs inside atoll's partitions.
//!
//! Today: the bare-metal test guests that prove atoll's enclaves —
//! * `guest-suite` (64-bit, entered in long mode): prints through COM1 and the console
//!   hypercall, checks the filtered CPUID, allowed and denied MSRs, a denied I/O port, writes and
//!   reads back every page of its RAM, measures CPUID and hypercall round trips with RDTSC,
//!   reports the results as JSON, then, depending on its command line, exits, touches the byte
//!   past its RAM, or triple-faults; `dirty` writes a pattern over all its RAM outside its
//!   image and stack before it exits, `zero-check` first counts the bytes there that do not
//!   read zero (`nonzero_bytes`, `bytes_checked`): a successor must find nothing of a
//!   predecessor in reused RAM;
//! * `guest-adversary` (64-bit): a hostile guest — every MSR range and I/O port, CPUID, invalid
//!   CR0/CR4/CR8/XCR0 values, ring 3, debug traps, VMX and SVM instructions, bad hypercalls and
//!   JSON, floods, APIC ICR writes, the end of its RAM — that catches every exception it causes
//!   and reports per probe what happened; its command line selects the probes;
//! * `guest-real16` (entered in real mode, which needs unrestricted guest on VMX): prints,
//!   checks the hypercall ABI and CPUID from real mode, reports and exits.
//!
//! And the in-guest Linux programs:
//! * `atoll-check` (a static Linux binary the guest image's `/init` runs): checks the CPUs,
//!   memory, APIC mode, clocksource, TSC and kernel log a Linux guest sees, runs a pinned
//!   compute loop on every CPU, and prints one `ATOLL-GUEST-CHECK {json}` line; its logic is
//!   [`check`]. With `--idle-timer SECONDS` it idles instead, measuring the largest gap between
//!   the wake-ups of a periodic timer ([`check::idle`]), and prints `ATOLL-GUEST-IDLE {json}`.
//!   Its network modes ([`check::net`]) are the two TCP ends of the SR-IOV test, move a
//!   virtual function's receive ring, and count an interface's interrupts.
//!
//! The host CLI and the channel daemon come with later issues.
#![cfg_attr(target_os = "none", no_std)]

#[cfg(target_os = "linux")]
pub mod check;
