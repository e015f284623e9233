//! The host's MSRs: every RDMSR and WRMSR of the host is decided here (SDM Vol. 4, AMD APM
//! Vol. 2 Appendix A and the family 17h/19h PPRs for the AMD indices). Deny by default.
//!
//! Handled in code, before the table:
//!
//! * **IA32_EFER** and **IA32_PAT** are the host vCPU's state in the VMCS/VMCB: reads and
//!   validated writes go to [`Vcpu::efer`]/[`Vcpu::set_efer`] and [`Vcpu::pat`]/
//!   [`Vcpu::set_pat`], never to the core (whose EFER.SVME, and PAT, are atoll's). EFER takes
//!   SCE, LME, NXE (as for enclaves) and AMD's AutomaticIBRS where CPUID lists it; SVME is
//!   hidden, so a host cannot set it (the SVM backend keeps the VMCB's SVME itself).
//! * **IA32_TSC** reads the core's TSC plus the vCPU's offset; writes are refused: the core's
//!   TSC is what atoll's deadlines run on. **IA32_TSC_DEADLINE** goes to the core (the host owns
//!   its cores' APIC timers) converted by the offset.
//! * **IA32_APIC_BASE**: reads from the core; a write may not move the base, clear EN or
//!   change BSP; EXTD (x2APIC mode) may change only when x2APIC is offered.
//! * **The x2APIC range** 0x800–0x8FF: the core's own APIC when x2APIC is offered (#GP
//!   otherwise), except the ICR (0x830), which goes through the IPI filter.
//! * **IA32_XSS**: to the core, when every set bit is a component the host's CPUID 0xD.1
//!   lists (SDM Vol. 1 §13.3).
//! * **State the backends switch** ([`SWITCHED_BY_BACKEND`]: SYSENTER, STAR/LSTAR/CSTAR/FMASK,
//!   FS/GS/KERNEL_GS base) must not exit for the host (the backend passes them through, as
//!   for enclaves): an exit for one is [`HostAction::Fail`], because neither answer — the
//!   core's register or #GP — would be right.
//!
//! Everything else is in [`HOST_MSRS`]: a read either goes to the core or is refused, a write
//! goes to the core, is accepted only when it leaves the register as it is, only when it
//! writes zero, or is refused. A refused access is #GP(0), counted in `msr_denied` and logged
//! once per index. An index in no entry is refused both ways.

use super::{apic, bump, gp, skip, HostAction, HostHw, HostShared, HostVcpu, HwCpu};
use crate::run::host_ipi::Icr;
use atoll_vcpu::{Gpr, Vcpu};

pub use crate::run::exits::msr::{
    IA32_APIC_BASE, IA32_EFER, IA32_FEATURE_CONTROL, IA32_FLUSH_CMD, IA32_MISC_ENABLE,
    IA32_MTRRCAP, IA32_MTRR_DEF_TYPE, IA32_PAT, IA32_PRED_CMD, IA32_SPEC_CTRL, IA32_TSC,
    IA32_TSC_AUX,
};
use crate::run::exits::msr::{
    IA32_CSTAR, IA32_FMASK, IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_LSTAR, IA32_STAR,
    IA32_SYSENTER_CS, IA32_SYSENTER_EIP, IA32_SYSENTER_ESP,
};

/// IA32_TSC_DEADLINE (SDM Vol. 3A §11.5.4.1).
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// IA32_XSS (SDM Vol. 1 §13.3).
pub const IA32_XSS: u32 = 0xda0;
/// The x2APIC MSR range (SDM Vol. 3A §11.12.1.2, Table 11-6).
pub const X2APIC_FIRST: u32 = 0x800;
/// Last of the x2APIC range.
pub const X2APIC_LAST: u32 = 0x8ff;
/// The x2APIC ICR.
pub const X2APIC_ICR: u32 = 0x830;
/// IA32_APIC_BASE: BSP (8), EXTD (10), EN (11), base (MAXPHYADDR-1:12) (SDM §11.4.4).
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_EXTD: u64 = 1 << 10;
/// EFER.AutomaticIBRS (APM Vol. 2 §3.1.7; CPUID 0x8000_0021 EAX bit 8).
const EFER_AUTOIBRS: u64 = 1 << 21;

/// The MSRs whose host values the backends switch on entry and exit (VMCS guest-state fields
/// and MSR lists; VMCB state saved by VMSAVE/VMLOAD): they must be passed through to the host
/// in the MSR bitmap. An exit for one is an atoll bug.
pub const SWITCHED_BY_BACKEND: &[u32] = &[
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_STAR,
    IA32_LSTAR,
    IA32_CSTAR,
    IA32_FMASK,
    IA32_FS_BASE,
    IA32_GS_BASE,
    IA32_KERNEL_GS_BASE,
];

/// What a host RDMSR of an entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The core's value (#GP if the core raises it).
    Hardware,
    /// #GP(0), counted.
    Deny,
}

/// IA32_MTRR_DEF_TYPE.E: MTRRs enabled (SDM Vol. 3A §11.11.2.1).
const MTRR_ENABLE: u64 = 1 << 11;

/// What a host WRMSR of an entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Written to the core.
    Hardware,
    /// Accepted (and not written) only when the value equals the core's current one: the
    /// "read, maybe change, write back" code Linux runs on every CPU then works on firmware
    /// that already set the register up, and no change reaches the core.
    Unchanged,
    /// Written to the core only when the value is 0 (a status clear).
    ZeroOnly,
    /// IA32_MTRR_DEF_TYPE: accepted unchanged as [`Write::Unchanged`]; written when it clears
    /// E (bit 11: every access of the core uncacheable — slow, never incoherent, the first
    /// step of the SDM's MTRR update, Vol. 3A §11.11.8) or when it is the value atoll loaded
    /// on every core at boot (the last step). No other default type reaches the core.
    DefType,
    /// #GP(0), counted.
    Deny,
}

/// One entry of [`HOST_MSRS`]: the indices `first..=last`.
#[derive(Clone, Copy, Debug)]
pub struct MsrRule {
    pub first: u32,
    pub last: u32,
    pub read: Read,
    pub write: Write,
    /// Why this is safe.
    pub why: &'static str,
}

const fn rule(first: u32, last: u32, read: Read, write: Write, why: &'static str) -> MsrRule {
    MsrRule {
        first,
        last,
        read,
        write,
        why,
    }
}

use Read::Hardware as R;
use Write::{Deny as NoW, Hardware as W, Unchanged as Same, ZeroOnly as Zero};

/// The host's MSR table (beyond the indices handled in code, see the module documentation).
/// Reads are of the host's own core: configuration and identification registers, nothing
/// another partition writes. Writes reach the core only where the register is per-core state
/// of the host's own core that atoll never relies on, or a command with no lasting state.
pub const HOST_MSRS: &[MsrRule] = &[
    // Intel and common.
    rule(0x17, 0x17, R, NoW, "IA32_PLATFORM_ID: identification (microcode loader)"),
    rule(0x34, 0x35, R, NoW, "SMI count, core/thread count: read-only information"),
    rule(IA32_FEATURE_CONTROL, IA32_FEATURE_CONTROL, R, Same,
        "IA32_FEATURE_CONTROL: atoll locked it before VMXON; Linux writes only an unlocked one"),
    rule(0x3b, 0x3b, R, Same,
        "IA32_TSC_ADJUST: a change would move the core's TSC under atoll's deadlines"),
    rule(IA32_SPEC_CTRL, IA32_SPEC_CTRL, R, W,
        "IA32_SPEC_CTRL: the core's speculation controls; a value only restricts atoll more"),
    rule(IA32_PRED_CMD, IA32_PRED_CMD, WO, W, "IA32_PRED_CMD: IBPB, a command without state"),
    rule(0x8b, 0x8b, R, Zero,
        "IA32_BIOS_SIGN_ID / AMD PATCH_LEVEL: revision; 0 written before CPUID is the idiom"),
    rule(0xcd, 0xce, R, NoW, "FSB frequency, PLATFORM_INFO: read-only ratios (TSC calibration)"),
    rule(0xe2, 0xe2, R, NoW, "PKG_CST_CONFIG_CONTROL: C-state limits, read by intel_idle"),
    rule(0xe7, 0xe8, R, NoW, "MPERF/APERF: frequency counters of the host's own core"),
    rule(0xe1, 0xe1, R, W,
        "IA32_UMWAIT_CONTROL: user-mode wait limits of the host's own core; atoll never waits"),
    rule(IA32_MTRRCAP, IA32_MTRRCAP, R, NoW, "IA32_MTRRCAP: read-only"),
    rule(0x10a, 0x10a, R, NoW, "IA32_ARCH_CAPABILITIES: read-only"),
    rule(IA32_FLUSH_CMD, IA32_FLUSH_CMD, WO, W, "IA32_FLUSH_CMD: L1D flush, a command"),
    rule(0x122, 0x123, R, W,
        "TSX_CTRL, MCU_OPT_CTRL: mitigations of the host's own core; atoll uses neither TSX nor RDRAND"),
    rule(0x179, 0x179, R, NoW, "IA32_MCG_CAP: read-only"),
    rule(0x17a, 0x17a, R, Zero, "IA32_MCG_STATUS: clearing MCIP after a machine check"),
    rule(0x17b, 0x17b, R, W, "IA32_MCG_CTL: the host runs the machine's machine-check handling"),
    rule(0x198, 0x198, R, NoW, "IA32_PERF_STATUS: the core's current ratio"),
    rule(0x19c, 0x19c, R, NoW, "IA32_THERM_STATUS: read-only sensor (coretemp)"),
    rule(IA32_MISC_ENABLE, IA32_MISC_ENABLE, R, Same,
        "IA32_MISC_ENABLE: fast strings, XD disable, CPUID limit — firmware's, kept"),
    rule(0x1a2, 0x1a2, R, NoW, "MSR_TEMPERATURE_TARGET: read-only (coretemp)"),
    rule(0x1ad, 0x1ad, R, NoW, "MSR_TURBO_RATIO_LIMIT: read-only ratios"),
    rule(0x1b1, 0x1b1, R, NoW, "IA32_PACKAGE_THERM_STATUS: read-only sensor"),
    rule(0x1fc, 0x1fc, R, Same, "MSR_POWER_CTL: C1E promotion of the package, firmware's"),
    rule(0x200, 0x21f, R, Same,
        "variable MTRRs: a change would retype atoll's memory on this core"),
    rule(0x250, 0x250, R, Same, "fixed MTRR 64K: as the variable ones"),
    rule(0x258, 0x259, R, Same, "fixed MTRRs 16K: as the variable ones"),
    rule(0x268, 0x26f, R, Same, "fixed MTRRs 4K: as the variable ones"),
    rule(0x280, 0x29f, R, W,
        "IA32_MCi_CTL2: corrected-error interrupt thresholds, the host's error handling"),
    rule(IA32_MTRR_DEF_TYPE, IA32_MTRR_DEF_TYPE, R, Write::DefType,
        "IA32_MTRR_DEF_TYPE: only disabling (all uncacheable) and restoring the boot value"),
    rule(0x400, 0x47f, R, W,
        "IA32_MCi_CTL/STATUS/ADDR/MISC (32 banks): the host runs machine-check handling \
         (status clears, bank enables); the banks report errors, they hold no other state"),
    rule(0x4d0, 0x4d0, R, W, "IA32_MCG_EXT_CTL: local machine-check delivery on this core"),
    rule(0x648, 0x64c, R, NoW, "config TDP levels and turbo activation: read-only ratios"),
    rule(IA32_TSC_AUX, IA32_TSC_AUX, R, W,
        "IA32_TSC_AUX: what RDTSCP/RDPID give; atoll uses neither"),
    // AMD.
    rule(0xc001_0010, 0xc001_0010, R, Same,
        "SYSCFG: memory-type and SME configuration of the machine, atoll's"),
    rule(0xc001_0015, 0xc001_0015, R, Same, "HWCR: configuration of the core, firmware's"),
    rule(0xc001_0016, 0xc001_0019, R, NoW, "IORRs: read-only to the host"),
    rule(0xc001_001a, 0xc001_001a, R, NoW, "TOP_MEM: read-only to the host"),
    rule(0xc001_001d, 0xc001_001d, R, NoW, "TOP_MEM2: read-only to the host"),
    rule(0xc001_001f, 0xc001_001f, R, Same, "NB_CFG: northbridge configuration, firmware's"),
    rule(0xc001_0058, 0xc001_0058, R, NoW, "MMIO_CONF_BASE: where ECAM is (read-only)"),
    rule(0xc001_0061, 0xc001_0061, R, NoW, "P-state current limit: read-only"),
    rule(0xc001_0063, 0xc001_0063, R, NoW, "P-state status: read-only"),
    rule(0xc001_0064, 0xc001_006b, R, NoW, "P-state definitions: read-only to the host"),
    rule(0xc001_0073, 0xc001_0073, R, NoW, "C-state base address: read-only (ACPI idle)"),
    rule(0xc001_011f, 0xc001_011f, R, W,
        "VIRT_SPEC_CTRL: SSBD of the host's own core, like IA32_SPEC_CTRL"),
    rule(0xc001_0131, 0xc001_0131, R, NoW, "SEV_STATUS: read-only"),
    rule(0xc001_0140, 0xc001_0141, R, NoW, "OSVW length and status: errata information"),
    rule(0xc001_1020, 0xc001_1020, R, Same, "LS_CFG: load-store configuration, firmware's"),
    rule(0xc001_1029, 0xc001_1029, R, W,
        "DE_CFG: this core's decode configuration; Linux sets LFENCE-serializing (bit 1)"),
];

/// PRED_CMD and FLUSH_CMD are write-only (SDM Vol. 4): a read raises #GP on the core.
const WO: Read = Read::Deny;

/// The table entry for `index`.
pub fn host_msr(index: u32) -> Option<&'static MsrRule> {
    HOST_MSRS
        .iter()
        .find(|r| (r.first..=r.last).contains(&index))
}

/// Refuses the access: #GP(0), counted, logged the first time for this index.
fn deny(vcpu: &mut impl Vcpu, shared: &HostShared, index: u32, write: Option<u64>) -> HostAction {
    let n = bump(&shared.counters.msr_denied);
    if shared.first_denial(index, n) {
        match write {
            Some(v) => log::info!(
                "host: WRMSR {index:#x} <- {v:#x} refused (#GP) at RIP {:#x}",
                vcpu.rip()
            ),
            None => log::info!(
                "host: RDMSR {index:#x} refused (#GP) at RIP {:#x}",
                vcpu.rip()
            ),
        }
    }
    gp(vcpu)
}

fn switched(vcpu: &impl Vcpu, index: u32) -> HostAction {
    HostAction::Fail(alloc::format!(
        "host MSR {index:#x} exited at RIP {:#x}: the backend must pass it through",
        vcpu.rip()
    ))
}

pub(super) fn read(
    vcpu: &mut impl Vcpu,
    me: &HostVcpu,
    shared: &HostShared,
    hw: &impl HostHw,
) -> HostAction {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = match index {
        IA32_EFER => Some(vcpu.efer()),
        IA32_PAT => Some(vcpu.pat()),
        IA32_TSC => hw.rdmsr(index).map(|t| t.wrapping_add(vcpu.tsc_offset())),
        IA32_TSC_DEADLINE => hw
            .rdmsr(index)
            .map(|t| crate::run::deny::host_tsc_to_guest(t, vcpu.tsc_offset())),
        IA32_APIC_BASE | IA32_XSS => hw.rdmsr(index),
        X2APIC_FIRST..=X2APIC_LAST if shared.x2apic_offered() && me.x2apic => hw.rdmsr(index),
        i if SWITCHED_BY_BACKEND.contains(&i) => return switched(vcpu, i),
        _ => match host_msr(index) {
            Some(r) if r.read == Read::Hardware => hw.rdmsr(index),
            _ => return deny(vcpu, shared, index, None),
        },
    };
    let Some(value) = value else {
        // The core raised #GP: the host gets what it would have got natively.
        return gp(vcpu);
    };
    vcpu.set_gpr(Gpr::Rax, value & 0xffff_ffff);
    vcpu.set_gpr(Gpr::Rdx, value >> 32);
    skip(vcpu)
}

pub(super) fn write(
    vcpu: &mut impl Vcpu,
    me: &mut HostVcpu,
    shared: &HostShared,
    hw: &impl HostHw,
) -> HostAction {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = (vcpu.gpr(Gpr::Rdx) << 32) | (vcpu.gpr(Gpr::Rax) & 0xffff_ffff);
    let done = match index {
        IA32_EFER => {
            if !valid_efer(value, vcpu, shared, hw) || vcpu.set_efer(value).is_err() {
                return deny(vcpu, shared, index, Some(value));
            }
            true
        }
        IA32_PAT => {
            // Each entry a defined type: UC, WC, WT, WP, WB, UC- (SDM Vol. 3A §12.12.2).
            if !value
                .to_le_bytes()
                .iter()
                .all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
            {
                return deny(vcpu, shared, index, Some(value));
            }
            vcpu.set_pat(value);
            true
        }
        IA32_TSC => return deny(vcpu, shared, index, Some(value)),
        IA32_TSC_DEADLINE => hw.wrmsr(
            index,
            crate::run::deny::guest_tsc_to_host(value, vcpu.tsc_offset()),
        ),
        IA32_APIC_BASE => return apic_base(vcpu, me, shared, hw, value),
        IA32_XSS => {
            let [_, _, ecx, edx] = super::host_cpuid(shared, hw, 0xd, 1);
            let supported = u64::from(ecx) | u64::from(edx) << 32;
            if value & !supported != 0 {
                return deny(vcpu, shared, index, Some(value));
            }
            hw.wrmsr(index, value)
        }
        X2APIC_ICR if shared.x2apic_offered() && me.x2apic => {
            return match Icr::from_x2apic(value) {
                Ok(icr) => {
                    let action = apic::send(icr, me, shared, hw);
                    vcpu.skip_instruction();
                    action
                }
                // Reserved bits set: the WRMSR raises #GP natively (SDM §11.12.9).
                Err(_) => gp(vcpu),
            };
        }
        X2APIC_FIRST..=X2APIC_LAST if shared.x2apic_offered() && me.x2apic => {
            hw.wrmsr(index, value)
        }
        i if SWITCHED_BY_BACKEND.contains(&i) => return switched(vcpu, i),
        _ => match host_msr(index).map(|r| r.write) {
            Some(Write::Hardware) => hw.wrmsr(index, value),
            Some(Write::ZeroOnly) if value == 0 => hw.wrmsr(index, 0),
            Some(Write::Unchanged) if hw.rdmsr(index) == Some(value) => true,
            Some(Write::DefType) if hw.rdmsr(index) == Some(value) => true,
            Some(Write::DefType)
                if value & MTRR_ENABLE == 0 || Some(value) == shared.boot_mtrr_def_type() =>
            {
                hw.wrmsr(index, value)
            }
            _ => return deny(vcpu, shared, index, Some(value)),
        },
    };
    if !done {
        return gp(vcpu);
    }
    skip(vcpu)
}

/// EFER for the host: what [`crate::run::deny::valid_efer`] allows an enclave, plus AMD's
/// AutomaticIBRS where CPUID 0x8000_0021 EAX bit 8 lists it (Linux sets it on Zen 4).
fn valid_efer(value: u64, vcpu: &impl Vcpu, shared: &HostShared, hw: &impl HostHw) -> bool {
    let cpu = HwCpu { hw, shared };
    let mut v = value;
    if hw.cpuid(0x8000_0000, 0)[0] >= 0x8000_0021 && hw.cpuid(0x8000_0021, 0)[0] & (1 << 8) != 0 {
        v &= !EFER_AUTOIBRS;
    }
    crate::run::deny::valid_efer(v, vcpu.efer() & !EFER_AUTOIBRS, vcpu.cr(0), &cpu)
}

/// WRMSR IA32_APIC_BASE: the base, EN and BSP must stay as the core has them (a moved base
/// would leave atoll's xAPIC page mapping behind, a disabled APIC would stop atoll's signals,
/// SDM §11.4.3); EXTD may change only when x2APIC is offered, and the core checks the
/// transition itself (x2APIC to xAPIC directly is #GP, §11.12.5).
fn apic_base(
    vcpu: &mut impl Vcpu,
    me: &mut HostVcpu,
    shared: &HostShared,
    hw: &impl HostHw,
    value: u64,
) -> HostAction {
    let Some(current) = hw.rdmsr(IA32_APIC_BASE) else {
        return gp(vcpu);
    };
    let fixed = !(APIC_BASE_EXTD | APIC_BASE_BSP);
    let extd_changes = (value ^ current) & APIC_BASE_EXTD != 0;
    if (value ^ current) & fixed != 0 || (extd_changes && !shared.x2apic_offered()) {
        return deny(vcpu, shared, IA32_APIC_BASE, Some(value));
    }
    if extd_changes {
        let value = (value & !APIC_BASE_BSP) | (current & APIC_BASE_BSP);
        if !hw.wrmsr(IA32_APIC_BASE, value) {
            return gp(vcpu);
        }
        me.x2apic = value & APIC_BASE_EXTD != 0;
    }
    skip(vcpu)
}
