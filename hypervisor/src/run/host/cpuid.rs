//! CPUID for the host: the core's own answer (the host runs 1:1 on its cores, so topology,
//! caches and features are its own), with hidden what atoll keeps or does not switch for it.

use super::{HostAction, HostHw, HostShared};
use atoll_vcpu::{Gpr, Vcpu};

const fn bits(list: &[u32]) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < list.len() {
        m |= 1 << list[i];
        i += 1;
    }
    m
}

/// Leaf 1 ECX bits hidden: DS-CPL (4) and PDCM (15), the performance-monitoring side (see
/// leaf 0xA); VMX (5, SDM Vol. 3C §24.6 / Vol. 2A "CPUID" Table 3-10) and SMX (6): the
/// core is atoll's, its VMX and GETSEC exit and raise #UD; EIST (7) and TM2 (8): frequency
/// and thermal control of cores shared with enclaves' packages stay atoll's (the host's cpufreq
/// drivers find no interface). x2APIC (21) is added by [`host_cpuid`] when not offered.
pub const LEAF1_ECX_HIDDEN: u32 = bits(&[4, 5, 6, 7, 8, 15]);
/// Leaf 1 ECX: x2APIC (SDM Vol. 3A §11.12.1).
pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// Leaf 1 EDX bits hidden: DS (21), thermal monitor and its MSRs (ACPI 22, TM 29): the host's
/// thermal-interrupt setup writes MSRs atoll refuses; Linux checks these bits first.
pub const LEAF1_EDX_HIDDEN: u32 = bits(&[21, 22, 29]);
/// Leaf 6 EAX bits hidden: HWP (7–11) and HDC (13) (SDM Vol. 3B §15.4): their MSRs are refused.
pub const LEAF6_EAX_HIDDEN: u32 = bits(&[7, 8, 9, 10, 11, 13]);
/// Leaf 6 ECX bits hidden: the energy/performance bias (3, IA32_ENERGY_PERF_BIAS).
pub const LEAF6_ECX_HIDDEN: u32 = bits(&[3]);
/// Leaf 7.0 EBX: Intel PT (25), whose MSRs are refused.
pub const LEAF7_EBX_HIDDEN: u32 = bits(&[25]);
/// Leaf 7.0 ECX: CET shadow stacks (7): IA32_S_CET/U_CET and the SSP are guest state the
/// backends do not switch for the host yet.
pub const LEAF7_ECX_HIDDEN: u32 = bits(&[7]);
/// Leaf 7.0 EDX: architectural LBRs (19) and CET IBT (20), as above.
pub const LEAF7_EDX_HIDDEN: u32 = bits(&[19, 20]);
/// Leaf 0xD.1 ECX (IA32_XSS components): PT (8), CET user and supervisor (11, 12), arch LBR
/// (15) — the features hidden above.
pub const LEAF_D1_ECX_HIDDEN: u32 = bits(&[8, 11, 12, 15]);
/// Leaf 0xD.1 EAX: XSAVEC (1) and XSAVES/XRSTORS (3). On VMX XSAVES raises #UD in a guest
/// unless "enable XSAVES/XRSTORS" is set (SDM Vol. 3C §26.3, §25.6.20), which atoll leaves clear
/// (it would need the XSS-exiting bitmap); with both hidden the host keeps the standard XSAVE
/// layout, whose size leaf 0xD.0 gives — Bochs reports the compacted size in 0xD.1 EBX wrongly,
/// which Linux checks whenever it compacts (as enclaves see it, `run::exits::cpuid`). The
/// supervisor components XSAVES exists for are hidden above anyway.
pub const LEAF_D1_EAX_HIDDEN: u32 = bits(&[1, 3]);
/// Leaf 0x8000_0001 ECX hidden: SVM (2, APM Vol. 2 §15.4), IBS (10), SKINIT (12), and the
/// AMD performance-counter extensions (23 core, 24 northbridge, 28 LLC).
pub const EXT1_ECX_HIDDEN: u32 = bits(&[2, 10, 12, 23, 24, 28]);

/// Leaves answered with zeros: the architectural PMU (0xA), Intel PT (0x14), arch LBR (0x1C),
/// SVM features (0x8000_000A, APM Vol. 3 Appendix E.4.9), IBS (0x8000_001B), AMD PerfMonV2
/// (0x8000_0022), and the hypervisor range 0x4000_0000–0x4FFF_FFFF: under a nested hypervisor
/// the core's answer there names that hypervisor, whose paravirtual MSRs the host must not
/// reach. (The "hypervisor present" bit, leaf 1 ECX 31, is the hardware's.)
fn zeroed(leaf: u32) -> bool {
    matches!(
        leaf,
        0xa | 0x14 | 0x1c | 0x8000_000a | 0x8000_001b | 0x8000_0022 | 0x4000_0000..=0x4fff_ffff
    )
}

/// CPUID leaf `leaf`, subleaf `sub`, as the host sees it: [`HostHw::cpuid`] with the bits above
/// hidden, and x2APIC hidden unless [`HostShared::x2apic_offered`]. The caller reflects the
/// host's own CR4 (OSXSAVE, OSPKE) on top ([`crate::run::exits::reflect_guest_cr4`]).
pub fn host_cpuid(shared: &HostShared, hw: &impl HostHw, leaf: u32, sub: u32) -> [u32; 4] {
    if zeroed(leaf) {
        return [0; 4];
    }
    let mut r = hw.cpuid(leaf, sub);
    match (leaf, sub) {
        (1, _) => {
            r[2] &= !LEAF1_ECX_HIDDEN;
            if !shared.x2apic_offered() {
                r[2] &= !LEAF1_ECX_X2APIC;
            }
            r[3] &= !LEAF1_EDX_HIDDEN;
        }
        (6, _) => {
            r[0] &= !LEAF6_EAX_HIDDEN;
            r[2] &= !LEAF6_ECX_HIDDEN;
        }
        (7, 0) => {
            r[1] &= !LEAF7_EBX_HIDDEN;
            r[2] &= !LEAF7_ECX_HIDDEN;
            r[3] &= !LEAF7_EDX_HIDDEN;
        }
        (0xd, 1) => {
            r[0] &= !LEAF_D1_EAX_HIDDEN;
            r[2] &= !LEAF_D1_ECX_HIDDEN;
        }
        (0x8000_0001, _) => r[2] &= !EXT1_ECX_HIDDEN,
        _ => {}
    }
    r
}

pub(super) fn cpuid_exit(
    vcpu: &mut impl Vcpu,
    shared: &HostShared,
    hw: &impl HostHw,
) -> HostAction {
    let leaf = vcpu.gpr(Gpr::Rax) as u32;
    let sub = vcpu.gpr(Gpr::Rcx) as u32;
    let [a, b, c, d] = crate::run::exits::reflect_guest_cr4(
        host_cpuid(shared, hw, leaf, sub),
        leaf,
        sub,
        vcpu.cr(4),
    );
    // CPUID writes all four registers zero-extended (SDM Vol. 2A "CPUID").
    vcpu.set_gpr(Gpr::Rax, a.into());
    vcpu.set_gpr(Gpr::Rbx, b.into());
    vcpu.set_gpr(Gpr::Rcx, c.into());
    vcpu.set_gpr(Gpr::Rdx, d.into());
    vcpu.skip_instruction();
    HostAction::Resume
}
