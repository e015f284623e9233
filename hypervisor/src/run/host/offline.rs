//! Whether a host vCPU is offline in the host's Linux: the test atoll applies before it lends
//! the core to an enclave (`atoll create`).
//!
//! Linux parks a CPU it offlined in `play_dead`: interrupts disabled, then HLT (or MONITOR and
//! MWAIT where the CPU has them) in a loop it never leaves (arch/x86 `hlt_play_dead`,
//! `mwait_play_dead`). A host vCPU that atoll stopped by NMI is offline when RFLAGS.IF is clear
//! and the instruction it stopped at, or the one just before it, is HLT, or MWAIT without the
//! interrupt-break extension (ECX bit 0 clear): on VMX and SVM an exit taken while the core is
//! halted saves the RIP after the HLT (the instruction has completed), and a vCPU may also be
//! stopped just before it executes one. An idle *online* CPU waits with interrupts enabled
//! (`sti; hlt`) or, under intel_idle and ACPI C-states, in MWAIT with interrupts disabled but
//! ECX bit 0 set, so that an interrupt still wakes it (SDM Vol. 2B, "MWAIT", ECX[0]); Bochs's
//! Skylake model showed the latter. Anything else is online and is not taken.
//! One look can be fooled (see [`confirm_parked`]): atoll takes a core only after two.
//! Whatever the host's code does, a wrong answer here only costs the host: a core it
//! believed online is gone (its Linux reports the CPU stuck), never another partition.

use atoll_vcpu::decode;
use atoll_vcpu::{Gpr, GuestMemory, Vcpu};

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
    // MWAIT's extensions: bit 0 of ECX treats interrupts as break events even when masked.
    let mwait_dead = vcpu.gpr(Gpr::Rcx) & 1 == 0;
    at(2, &HLT) || at(3, &HLT) || mwait_dead && (at(0, &MWAIT) || at(3, &MWAIT))
}

/// What [`confirm_parked`] makes of one look at a host vCPU atoll asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parked {
    /// Not in the offline loop: refused.
    No,
    /// In it, for the first time at this RIP: look again.
    Once,
    /// In it at the same RIP as the last look, a signal apart: offline.
    Confirmed,
}

/// The offline test over two looks: a vCPU is taken only when two looks, each after a stop
/// of its own, both find it parked in the offline loop at the same RIP. One look can be
/// fooled: an online CPU stopped with interrupts disabled just past an instruction whose last
/// byte is 0xF4 (HLT's opcode) looks parked (CI once saw atoll take an online host CPU). A CPU
/// in Linux's offline loop never leaves it and is found at the same place again; an online
/// one has moved on. `last` is the RIP of the last look that found it parked.
pub fn confirm_parked(last: &mut Option<u64>, parked: bool, rip: u64) -> Parked {
    if !parked {
        *last = None;
        return Parked::No;
    }
    if last.replace(rip) == Some(rip) {
        *last = None;
        Parked::Confirmed
    } else {
        Parked::Once
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `looks` (parked?, RIP, what the look must give) from no earlier look.
    fn looks(looks: &[(bool, u64, Parked)]) {
        let mut last = None;
        for (i, &(parked, rip, want)) in looks.iter().enumerate() {
            assert_eq!(
                confirm_parked(&mut last, parked, rip),
                want,
                "look {i}: {looks:?}"
            );
        }
    }

    #[test]
    fn a_core_is_taken_only_when_two_looks_find_it_parked_at_the_same_place() {
        // Each confirmation starts over.
        looks(&[
            (true, 0x1000, Parked::Once),
            (true, 0x1000, Parked::Confirmed),
            (true, 0x1000, Parked::Once),
        ]);
    }

    #[test]
    fn an_online_cpu_that_once_looked_parked_is_refused_at_the_next_look() {
        // The earlier look no longer counts.
        looks(&[
            (true, 0x1000, Parked::Once),
            (false, 0x2345, Parked::No),
            (true, 0x1000, Parked::Once),
        ]);
    }

    #[test]
    fn a_look_parked_elsewhere_starts_over() {
        // Stopped once just before the HLT, once just after it: looked at again.
        looks(&[
            (true, 0x1000, Parked::Once),
            (true, 0x1001, Parked::Once),
            (true, 0x1001, Parked::Confirmed),
        ]);
    }
}
