//! The CPUID filter every enclave gets: atoll's own leaves, the hypervisor bit, and hidden what
//! the enclave does not own (the virtualization extensions, the host's topology, features
//! whose instructions or MSRs stay the host's); the bits that mirror the guest's CR4.

use super::{HostCpu, CPUID_HV_BASE, CPUID_SIGNATURE, HYPERCALL_ABI_VERSION};
use atoll_vcpu::CpuidTable;

/// CPUID as the enclave sees it: atoll's leaves at 0x4000_0000, the hypervisor bit set, and
/// hidden what the enclave does not own: VMX, SVM, SMX, MONITOR/MWAIT, the performance counters
/// and the other features whose instructions or MSRs stay the host's, and the host's topology
/// (APIC IDs, core and thread counts). A Linux enclave's platform describes its own topology on
/// top of this ([`crate::run::vplat::cpuid()`]).
// Called from `handle` on every exit of its kind: inlined there, as it was before the
// handlers were split by kind (Bochs round trips count each instruction).
#[inline]
pub fn filtered_cpuid(host: &impl HostCpu, leaf: u32, sub: u32) -> [u32; 4] {
    match leaf {
        CPUID_HV_BASE => {
            let sig = |i: usize| {
                u32::from_le_bytes([
                    CPUID_SIGNATURE[i],
                    CPUID_SIGNATURE[i + 1],
                    CPUID_SIGNATURE[i + 2],
                    CPUID_SIGNATURE[i + 3],
                ])
            };
            [CPUID_HV_BASE + 1, sig(0), sig(4), sig(8)]
        }
        0x4000_0001 => [HYPERCALL_ABI_VERSION as u32, 0, 0, 0],
        0x4000_0002..=0x4fff_ffff => [0; 4],
        _ => {
            let mut r = host.cpuid(leaf, sub);
            match leaf {
                1 => {
                    // ECX: MONITOR (3), DS-CPL (4), VMX (5), SMX (6), EIST (7), TM2 (8),
                    // PDCM (15) and x2APIC (21) hidden (their instructions or MSRs are the
                    // host's); bit 31 "hypervisor present".
                    r[2] = (r[2]
                        & !((1 << 3)
                            | (1 << 4)
                            | (1 << 5)
                            | (1 << 6)
                            | (1 << 7)
                            | (1 << 8)
                            | (1 << 15)
                            | (1 << 21)))
                        | (1 << 31);
                    // EDX: the local APIC (9) — a bare-metal enclave has none (the Linux
                    // platform offers its own and says so) — debug store (21), thermal MSRs
                    // (ACPI 22, TM 29), PBE (31) hidden.
                    r[3] &= !((1 << 9) | (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31));
                    // EBX: the host core's initial APIC ID (31:24) and its package's logical
                    // processor count (23:16) are host topology: one processor, ID 0, no HTT.
                    r[1] &= 0xffff;
                    r[1] |= 1 << 16;
                    r[3] &= !(1 << 28);
                }
                // Deterministic cache parameters: the cache descriptions stay, the sharing
                // and core counts (EAX 31:14) are the host's topology.
                4 => r[0] &= 0x3fff,
                // MONITOR/MWAIT, the architectural PMU, RDT monitoring and allocation, SGX,
                // processor trace, PCONFIG: features not offered, their leaves read 0.
                5 | 0xa | 0xf | 0x10 | 0x12 | 0x14 | 0x1b => r = [0; 4],
                // Thermal and power management: only ARAT (EAX bit 2).
                6 => r = [r[0] & (1 << 2), 0, 0, 0],
                7 if sub == 0 => {
                    // EBX: SGX (2), RDT-M (12), RDT-A (15), processor trace (25) hidden.
                    r[1] &= !((1 << 2) | (1 << 12) | (1 << 15) | (1 << 25));
                    // ECX: SGX launch control (30) hidden.
                    r[2] &= !(1 << 30);
                }
                // Extended topology: one logical processor, x2APIC ID 0 (the host's IDs and
                // level widths are not the enclave's business).
                0xb | 0x1f if leaf <= host.cpuid(0, 0)[0] => {
                    r = match sub {
                        0 => [0, 1, 0x100, 0],
                        1 => [0, 1, 0x201, 0],
                        _ => [0, 0, sub & 0xff, 0],
                    };
                }
                0x8000_0001 => {
                    // ECX: SVM (2), IBS (10), SKINIT (12), WDT (13), TOPOEXT (22), the core,
                    // northbridge and LLC performance counter extensions (23, 24, 28) and
                    // MONITORX (29) hidden.
                    r[2] &= !((1 << 2)
                        | (1 << 10)
                        | (1 << 12)
                        | (1 << 13)
                        | (1 << 22)
                        | (1 << 23)
                        | (1 << 24)
                        | (1 << 28)
                        | (1 << 29));
                    // EDX: AMD's copy of the local APIC bit (9), as in leaf 1.
                    r[3] &= !(1 << 9);
                }
                // ECX: the host's core count (NC, 7:0) and APIC ID size (15:12).
                0x8000_0008 => r[2] &= !0xf0ff,
                // SVM features, AMD extended APIC ID and topology, SEV, PMC v2, extended
                // topology: nothing to offer.
                0x8000_000a | 0x8000_001e | 0x8000_001f | 0x8000_0022 | 0x8000_0026 => r = [0; 4],
                // XSAVES/XRSTORS (EAX bit 3) and the supervisor states (IA32_XSS, ECX/EDX) are
                // not virtualized, and XSAVEC (bit 1) goes with them: guests use the standard
                // XSAVE layout, whose sizes leaf 0xD subleaf 0 gives (Bochs reports the compacted
                // size in subleaf 1 EBX wrongly, which Linux checks when it compacts).
                0xd if sub == 1 => {
                    r[0] &= !((1 << 1) | (1 << 3));
                    r[2] = 0;
                    r[3] = 0;
                }
                _ => {}
            }
            r
        }
    }
}

/// The leaves whose answer mirrors the guest's CR4 ([`reflect_guest_cr4`]): never answered
/// from a fast-path table.
pub const CR4_LEAVES: [u32; 2] = [1, 7];

/// The CPUID fast path's table for a vCPU whose CPUID is `answer(leaf, subleaf)` before the CR4
/// bits: every leaf of the table's ranges whose answer is fixed (the same for every subleaf,
/// independent of CR4). See [`atoll_vcpu::cpuid_table`].
pub fn fast_table(answer: impl FnMut(u32, u32) -> [u32; 4]) -> CpuidTable {
    CpuidTable::build(answer, |leaf| !CR4_LEAVES.contains(&leaf))
}

/// The CPUID bits that mirror the caller's own CR4 (SDM Vol. 2A "CPUID"): OSXSAVE (leaf 1 ECX
/// bit 27) is CR4.OSXSAVE (bit 18), OSPKE (leaf 7 ECX bit 4) is CR4.PKE (bit 22). The host's
/// values describe atoll's CR4, so they are replaced by the guest's.
// Called from `handle` on every exit of its kind: inlined there, as it was before the
// handlers were split by kind (Bochs round trips count each instruction).
#[inline]
pub fn reflect_guest_cr4(mut r: [u32; 4], leaf: u32, sub: u32, cr4: u64) -> [u32; 4] {
    let set = |word: &mut u32, bit: u32, on: bool| {
        if on {
            *word |= 1 << bit;
        } else {
            *word &= !(1 << bit);
        }
    };
    match (leaf, sub) {
        (1, _) => set(&mut r[2], 27, cr4 & (1 << 18) != 0),
        (7, 0) => set(&mut r[2], 4, cr4 & (1 << 22) != 0),
        _ => {}
    }
    r
}

/// Checks that every leaf `t` answers is answered as the exit handler would for a vCPU whose
/// CPUID is `cpuid(leaf, subleaf)` before the CR4 bits: over the table's ranges and past their
/// edges, for several subleaves and guest CR4 values (the fast-path tables' host tests, bare
/// metal and Linux platform alike).
#[cfg(test)]
pub(crate) fn assert_fast_table_answers_as(t: &CpuidTable, cpuid: impl Fn(u32, u32) -> [u32; 4]) {
    const SUBLEAVES: [u32; 5] = [0, 1, 2, 5, 0xffff_ffff];
    const CR4S: [u64; 4] = [0, 1 << 18, 1 << 22, (1 << 18) | (1 << 22)];
    let leaves = (0..0x24)
        .chain(0x4000_0000..0x4000_0024)
        .chain(0x8000_0000..0x8000_0024);
    for leaf in leaves {
        let Some(fast) = t.get(leaf) else { continue };
        for sub in SUBLEAVES {
            for cr4 in CR4S {
                let slow = reflect_guest_cr4(cpuid(leaf, sub), leaf, sub, cr4);
                assert_eq!(fast, slow, "leaf {leaf:#x} subleaf {sub:#x} CR4 {cr4:#x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Action;
    use super::*;
    use crate::partition::config::IoPolicy;
    use crate::run::exits::testkit::*;
    use atoll_vcpu::{Exit, Gpr};

    #[test]
    fn cpuid_hides_vmx_and_svm_and_names_atoll() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rax as usize] = 1;
        assert_eq!(w.exit(Exit::Cpuid), Action::Resume);
        let ecx = w.vcpu.gprs[Gpr::Rcx as usize];
        assert_eq!(ecx & (1 << 5), 0, "VMX hidden");
        assert_ne!(ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(ecx & (1 << 26), 0, "other features pass through");
        assert_eq!(w.vcpu.skipped, 1);
        w.vcpu.gprs[Gpr::Rax as usize] = 0x4000_0000;
        w.exit(Exit::Cpuid);
        assert_eq!(w.vcpu.gprs[Gpr::Rax as usize], 0x4000_0001);
        let mut sig = Vec::new();
        for r in [Gpr::Rbx, Gpr::Rcx, Gpr::Rdx] {
            sig.extend_from_slice(&(w.vcpu.gprs[r as usize] as u32).to_le_bytes());
        }
        assert_eq!(&sig[..7], b"AtollHV");
        w.vcpu.gprs[Gpr::Rax as usize] = 0x8000_0001;
        w.exit(Exit::Cpuid);
        assert_eq!(w.vcpu.gprs[Gpr::Rcx as usize] & (1 << 2), 0, "SVM hidden");
        assert_eq!(w.run.exit_counts()["cpuid"], 3);
        // XSAVE features: XSAVEOPT (bit 0) and XGETBV1 (2) kept, XSAVEC (1) and XSAVES (3)
        // hidden, no supervisor states.
        let host = Host { xcr0: None };
        assert_eq!(filtered_cpuid(&host, 0xd, 1), [0b101, 0, 0, 0]);
        assert_eq!(
            filtered_cpuid(&host, 0xd, 0)[0],
            0b111,
            "subleaf 0 untouched"
        );
        // OSXSAVE and OSPKE follow the guest's CR4, not atoll's.
        assert_eq!(reflect_guest_cr4([0, 0, 1 << 27, 0], 1, 0, 0)[2], 0);
        assert_eq!(reflect_guest_cr4([0, 0, 0, 0], 1, 0, 1 << 18)[2], 1 << 27);
        assert_eq!(reflect_guest_cr4([0, 0, 1 << 4, 0], 7, 0, 0)[2], 0);
        assert_eq!(reflect_guest_cr4([0, 0, 0, 0], 7, 0, 1 << 22)[2], 1 << 4);
        assert_eq!(reflect_guest_cr4([1, 2, 3, 4], 2, 0, 0), [1, 2, 3, 4]);
    }

    /// A host whose leaves 4, 0xb, 0xd and 0x8000_001d are indexed by the subleaf.
    struct Indexed;
    impl HostCpu for Indexed {
        fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
            match leaf {
                0 => [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
                4 | 0xb | 0xd | 0x8000_001d => [leaf ^ sub, sub, 1, 2],
                _ => [leaf, !leaf, leaf.rotate_left(7), 0x5a5a],
            }
        }
        fn xsetbv(&mut self, _value: u64) {}
        fn rdtsc(&self) -> u64 {
            0
        }
    }

    #[test]
    fn the_fast_table_answers_as_the_exit_handler_does() {
        let t = fast_table(|leaf, sub| filtered_cpuid(&Indexed, leaf, sub));
        assert_fast_table_answers_as(&t, |leaf, sub| filtered_cpuid(&Indexed, leaf, sub));
        // The leaves a guest times and probes most are in it; those indexed by the subleaf or
        // mirroring CR4 are not.
        for leaf in [0, 2, 0x4000_0000, 0x4000_0001, 0x8000_0000, 0x8000_0001] {
            assert!(t.get(leaf).is_some(), "{leaf:#x}");
        }
        for leaf in [1, 4, 7, 0xb, 0xd, 0x8000_001d] {
            assert_eq!(t.get(leaf), None, "{leaf:#x}");
        }
    }
}
