//! Whether a host vCPU is offline in the host's Linux: the test atoll applies before it lends
//! the core to an enclave (`atoll create`).
//!
//! Linux parks a CPU it offlined in `play_dead`: interrupts disabled, then HLT (or MONITOR and
//! MWAIT where the CPU has them) in a loop it never leaves (arch/x86 `hlt_play_dead`,
//! `mwait_play_dead`). A host vCPU that atoll stopped by NMI is offline when RFLAGS.IF is clear
//! and the instruction it stopped at, or the one just before it, is HLT or MWAIT: on VMX and
//! SVM an exit taken while the core is halted saves the RIP after the HLT (the instruction
//! has completed), and a vCPU may also be stopped just before it executes one. A vCPU that
//! runs with interrupts enabled, or at any other instruction, is online and is not taken.
//! Whatever the host's code does, a wrong answer here only costs the host: a core it
//! believed online is gone (its Linux reports the CPU stuck), never another partition.

use atoll_vcpu::decode;
use atoll_vcpu::{GuestMemory, Vcpu};

/// RFLAGS.IF (SDM Vol. 1 §3.4.3.3).
const RFLAGS_IF: u64 = 1 << 9;
/// HLT (SDM Vol. 2A, "HLT").
const HLT: [u8; 1] = [0xf4];
/// MWAIT (SDM Vol. 2B, "MWAIT").
const MWAIT: [u8; 3] = [0x0f, 0x01, 0xc9];

/// Whether the vCPU sits in Linux's offline loop (see the module documentation).
pub fn parked_in_play_dead(vcpu: &impl Vcpu, mem: &impl GuestMemory) -> bool {
    if vcpu.rflags() & RFLAGS_IF != 0 {
        return false;
    }
    let (paging, _, rip) = decode::site_of(vcpu);
    // Three bytes before RIP and the first bytes at it, read through the host's own tables.
    let from = rip.wrapping_sub(3);
    let (bytes, n) = decode::fetch(mem, paging, from);
    let at = |offset: usize, want: &[u8]| {
        offset + want.len() <= n && bytes[offset..offset + want.len()] == *want
    };
    at(2, &HLT) || at(0, &MWAIT) || at(3, &HLT) || at(3, &MWAIT)
}
