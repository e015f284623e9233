//! CPUID for a Linux enclave: the common filter ([`crate::run::exits::filtered_cpuid`]) and
//! then the platform on top: its topology, its local APIC (x2APIC, TSC-deadline), the features
//! it does not offer, and the TSC's frequency and invariance.

/// CPUID for a Linux enclave of `vcpus` vCPUs, as seen by vCPU `index`: the common filter
/// ([`crate::run::exits::filtered_cpuid`]) and then the topology (one package, one core per vCPU,
/// no SMT), x2APIC and TSC-deadline on, MONITOR/MWAIT, machine checks, the PMU, LA57 and the
/// speculation-control MSRs off, TSC_ADJUST and the invariant TSC on, and the TSC frequency in
/// leaves 0x15/0x16.
pub fn cpuid(
    host: &impl crate::run::exits::HostCpu,
    leaf: u32,
    sub: u32,
    index: u32,
    vcpus: u32,
    tsc_hz: u64,
) -> [u32; 4] {
    let max_basic = host.cpuid(0, 0)[0];
    let core_bits = 32 - vcpus.saturating_sub(1).leading_zeros();
    let mut r = crate::run::exits::filtered_cpuid(host, leaf, sub);
    match leaf {
        0 => r[0] = max_basic.max(0x16),
        // Leaves the host lacks but atoll defines read as zero (not the host's highest leaf).
        2..=0x14 if leaf > max_basic && leaf != 0xb => r = [0; 4],
        1 => {
            // EBX: initial APIC id, logical processors per package; CLFLUSH size kept.
            r[1] = (r[1] & 0xffff) | (vcpus.min(255) << 16) | (index.min(255) << 24);
            // ECX: x2APIC (21) and TSC-deadline (24) on; MONITOR (3), EIST (7), TM2 (8) and
            // PDCM (15) off (their MSRs are the host's).
            r[2] = (r[2] | (1 << 21) | (1 << 24)) & !((1 << 3) | (1 << 7) | (1 << 8) | (1 << 15));
            // EDX: the platform's local APIC (9) on; no machine-check architecture (MCE 7, MCA
            // 14): its banks are the host's; no thermal monitor or its MSRs (ACPI 22, TM 29).
            r[3] = (r[3] | (1 << 9)) & !((1 << 7) | (1 << 14) | (1 << 22) | (1 << 29));
            // EDX: HTT when the package has more than one logical processor.
            if vcpus > 1 {
                r[3] |= 1 << 28;
            } else {
                r[3] &= !(1 << 28);
            }
        }
        // Cores per package - 1 in EAX 31:26; one thread per cache in 25:14 (for every cache
        // the host lists; type 0 ends the list).
        4 if r[0] & 0x1f != 0 => {
            r[0] = (r[0] & 0x3fff) | ((vcpus.saturating_sub(1).min(63)) << 26);
        }
        // MONITOR/MWAIT leaf and the architectural PMU: nothing.
        5 | 0xa => r = [0; 4],
        // Thermal and power: only ARAT (EAX bit 2), the APIC timer keeps running in idle states
        // (it is atoll's model, driven by the TSC). Without it Linux needs a broadcast timer to
        // stop the tick in idle and, having none, ticks at HZ on every idle vCPU.
        6 => r = [1 << 2, 0, 0, 0],
        7 if sub == 0 => {
            // EDX: the speculation controls (IBRS/IBPB 26, STIBP 27, L1D_FLUSH 28, SSBD 31) stay
            // as the host has them: their MSRs are the guest's own (passed through, the core is
            // the enclave's). ARCH_CAPABILITIES (29) and CORE_CAPABILITIES (30) off: atoll does
            // not emulate them.
            r[3] &= !((1 << 29) | (1 << 30));
            // EBX: IA32_TSC_ADJUST (1) on (emulated: it reads 0), so Linux trusts the TSC
            // without a watchdog.
            r[1] |= 1 << 1;
            // ECX: WAITPKG (5) off; LA57 (16) off: atoll decodes guest instructions through
            // 4-level tables only.
            r[2] &= !((1 << 5) | (1 << 16));
        }
        0xb | 0x1f => {
            r = match sub {
                0 => [0, 1, 0x100, index],
                1 => [core_bits, vcpus, 0x201, index],
                _ => [0, 0, sub & 0xff, index],
            };
            if leaf == 0x1f && leaf > max_basic {
                r = [0; 4];
            }
        }
        0x15 => {
            // Denominator 1, numerator 1, crystal = TSC frequency.
            r = [1, 1, tsc_hz.min(u64::from(u32::MAX)) as u32, 0];
        }
        0x16 => {
            let mhz = (tsc_hz / 1_000_000).min(0xffff) as u32;
            r = [mhz, mhz, 100, 0];
        }
        0x8000_0001 => {
            // ECX: CmpLegacy (1) with several cores; TOPOEXT (22) and PERFCTR_CORE (23) off.
            r[2] &= !((1 << 22) | (1 << 23));
            // EDX: AMD's copy of the local APIC bit (9), as in leaf 1.
            r[3] |= 1 << 9;
            if vcpus > 1 {
                r[2] |= 1 << 1;
            } else {
                r[2] &= !(1 << 1);
            }
        }
        0x8000_0007 => {
            // Invariant TSC.
            r[3] |= 1 << 8;
        }
        0x8000_0008 => {
            // EBX: VIRT_SSBD (25) off (its MSR is not emulated); IBPB, IBRS, STIBP and SSBD
            // stay, as for leaf 7.
            r[1] &= !(1 << 25);
            // ECX: NC = cores - 1, ApicIdCoreIdSize.
            r[2] = (r[2] & !0xf0ff) | (vcpus.saturating_sub(1) & 0xff) | (core_bits << 12);
        }
        _ => {}
    }
    r
}

/// The CPUID fast path's table of vCPU `index` (see [`crate::run::exits::fast_table`]).
pub fn fast_table(
    host: &impl crate::run::exits::HostCpu,
    index: u32,
    vcpus: u32,
    tsc_hz: u64,
) -> atoll_vcpu::CpuidTable {
    crate::run::exits::fast_table(|leaf, sub| cpuid(host, leaf, sub, index, vcpus, tsc_hz))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::vplat::testkit::*;

    #[test]
    fn the_fast_table_answers_as_the_platform_does() {
        for (index, vcpus) in [(0, 1), (0, 3), (2, 3), (5, 64)] {
            let t = fast_table(&Cpu, index, vcpus, 2_500_000_000);
            crate::run::exits::assert_fast_table_answers_as(&t, |leaf, sub| {
                cpuid(&Cpu, leaf, sub, index, vcpus, 2_500_000_000)
            });
            // The bench's leaf and the TSC leaves are fast; the topology and CR4 ones are not.
            for leaf in [0, 0x15, 0x16, 0x4000_0000, 0x8000_0008] {
                assert!(t.get(leaf).is_some(), "{leaf:#x}");
            }
            for leaf in [1, 7, 0xb] {
                assert_eq!(t.get(leaf), None, "{leaf:#x}");
            }
        }
    }

    #[test]
    fn cpuid_describes_the_enclave() {
        let c = |leaf, sub, index| cpuid(&Cpu, leaf, sub, index, 3, 2_500_000_000);
        assert_eq!(c(0, 0, 0)[0], 0x16);
        let l1 = c(1, 0, 2);
        assert_eq!(l1[1] >> 24, 2, "initial APIC id");
        assert_eq!((l1[1] >> 16) & 0xff, 3, "logical processors");
        assert_ne!(l1[2] & (1 << 21), 0, "x2APIC");
        assert_ne!(l1[2] & (1 << 24), 0, "TSC deadline");
        assert_eq!(l1[2] & ((1 << 3) | (1 << 5)), 0, "no MWAIT, no VMX");
        assert_ne!(l1[2] & (1 << 31), 0, "hypervisor");
        assert_eq!(c(4, 0, 0)[0] >> 26, 2);
        assert_eq!(c(0xb, 0, 1), [0, 1, 0x100, 1]);
        assert_eq!(c(0xb, 1, 1), [2, 3, 0x201, 1]);
        assert_eq!(c(0xb, 2, 1), [0, 0, 2, 1]);
        assert_eq!(c(0x1f, 1, 1), [0; 4], "beyond the host's leaves");
        assert_eq!(c(0x15, 0, 0), [1, 1, 2_500_000_000, 0]);
        assert_eq!(c(0x16, 0, 0), [2500, 2500, 100, 0]);
        assert_eq!(c(0xe, 0, 0), [0; 4]);
        assert_eq!(c(6, 0, 0), [1 << 2, 0, 0, 0], "ARAT only");
        let l7 = c(7, 0, 0);
        assert_eq!(l7[3], (1 << 10) | (1 << 26));
        assert_eq!(l7[1] & 2, 2, "TSC_ADJUST");
        assert_eq!(l7[2], 0);
        assert_eq!(c(0x8000_0001, 0, 0)[2] & ((1 << 22) | (1 << 2)), 0);
        assert_ne!(c(0x8000_0007, 0, 0)[3] & (1 << 8), 0);
        assert_eq!(c(0x8000_0008, 0, 0)[2] & 0xf0ff, 2 | (2 << 12));
        assert_eq!(c(0x4000_0000, 0, 0)[0], 0x4000_0001);
    }
}
