//! MSRs (SDM Vol. 4): the indices the handlers know by name, the ones the guest reaches
//! directly ([`PASSTHROUGH_MSRS`]), and RDMSR/WRMSR of the rest: a short allowlist, emulated;
//! every other index is refused with #GP.

use super::{Action, EnclaveRun, HostCpu};
use atoll_vcpu::{vector, Gpr, Vcpu};

pub const IA32_TSC: u32 = 0x10;
pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_MTRRCAP: u32 = 0xfe;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const IA32_STAR: u32 = 0xc000_0081;
pub const IA32_LSTAR: u32 = 0xc000_0082;
pub const IA32_CSTAR: u32 = 0xc000_0083;
pub const IA32_FMASK: u32 = 0xc000_0084;
pub const IA32_FS_BASE: u32 = 0xc000_0100;
pub const IA32_GS_BASE: u32 = 0xc000_0101;
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const IA32_TSC_AUX: u32 = 0xc000_0103;
pub const IA32_SPEC_CTRL: u32 = 0x48;
pub const IA32_PRED_CMD: u32 = 0x49;
pub const IA32_FLUSH_CMD: u32 = 0x10b;

/// MSRs the guest reads and writes directly (no exit). Each is either switched by the
/// backends on every entry and exit (VMX: SYSENTER and FS/GS base through the VMCS guest and
/// host state; SVM: VMLOAD/VMSAVE, APM Vol. 2 §15.5.2, for SYSENTER, STAR/LSTAR/CSTAR/SFMASK,
/// KERNEL_GS_BASE and FS/GS base) or state atoll's own code never consumes (it runs at CPL 0
/// with no SYSCALL, SWAPGS, RDTSCP or RDPID, and leaves IA32_SPEC_CTRL at its reset value 0, so
/// a guest's value only adds restrictions for atoll while it handles an exit); the backends
/// reset every one of them when a vCPU is created, so the next partition on a core never sees
/// the last one's values. `docs/security.md` lists each. IA32_PAT is not here: the backends
/// keep the guest's PAT in their own state (VMCS guest PAT, VMCB G_PAT), so it is emulated.
/// IA32_TSC is emulated on top of the TSC offset (reads and writes exit; RDTSC does not).
pub const PASSTHROUGH_MSRS: &[u32] = &[
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
    IA32_TSC_AUX,
    // The speculation controls: per-core state of the enclave's own core (the guest sees them
    // only where the host's CPUID lists them). PRED_CMD and FLUSH_CMD are write-only commands
    // with no state.
    IA32_SPEC_CTRL,
    IA32_PRED_CMD,
    IA32_FLUSH_CMD,
];

fn deny_msr(vcpu: &mut impl Vcpu, run: &mut EnclaveRun) -> Action {
    if run.msr_denied < 16 {
        log::debug!(
            "enclave '{}': MSR {:#x} refused (#GP) at RIP {:#x}",
            run.name,
            vcpu.gpr(Gpr::Rcx) as u32,
            vcpu.rip()
        );
    }
    run.msr_denied += 1;
    vcpu.inject_exception(vector::GP, Some(0));
    Action::Resume
}

// Called from `handle` on every exit of its kind: inlined there, as it was before the
// handlers were split by kind (Bochs round trips count each instruction).
#[inline]
pub(super) fn msr_read(vcpu: &mut impl Vcpu, run: &mut EnclaveRun, host: &impl HostCpu) -> Action {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = match index {
        // The guest's TSC: the core's plus this vCPU's offset, as RDTSC gives it. (Reads exit
        // too: QEMU's SVM returned 0 for a pass-through RDMSR of IA32_TSC under an offset, and
        // guests read the TSC with RDTSC, which never exits.)
        IA32_TSC => host.rdtsc().wrapping_add(vcpu.tsc_offset()),
        IA32_MISC_ENABLE => 1, // fast strings
        IA32_MTRRCAP => 0,     // no variable or fixed MTRRs to program
        IA32_MTRR_DEF_TYPE => run.mtrr_def_type,
        IA32_EFER => vcpu.efer(),
        IA32_PAT => vcpu.pat(),
        _ => return deny_msr(vcpu, run),
    };
    vcpu.set_gpr(Gpr::Rax, value & 0xffff_ffff);
    vcpu.set_gpr(Gpr::Rdx, value >> 32);
    vcpu.skip_instruction();
    Action::Resume
}

// Called from `handle` on every exit of its kind: inlined there, as it was before the
// handlers were split by kind (Bochs round trips count each instruction).
#[inline]
pub(super) fn msr_write(vcpu: &mut impl Vcpu, run: &mut EnclaveRun, host: &impl HostCpu) -> Action {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = (vcpu.gpr(Gpr::Rdx) << 32) | (vcpu.gpr(Gpr::Rax) & 0xffff_ffff);
    match index {
        // A write moves this vCPU's offset, never the core's TSC, which atoll's timers and every
        // other vCPU's deadlines are measured in.
        IA32_TSC => vcpu.set_tsc_offset(crate::run::deny::tsc_offset_for(value, host.rdtsc())),
        IA32_EFER => {
            if !crate::run::deny::valid_efer(value, vcpu.efer(), vcpu.cr(0), host) {
                return deny_msr(vcpu, run);
            }
            if vcpu.set_efer(value).is_err() {
                return deny_msr(vcpu, run);
            }
        }
        IA32_MTRR_DEF_TYPE => {
            // Type in bits 7:0 (UC, WC, WT, WP, WB), FE bit 10, E bit 11; the rest reserved.
            let ty = value & 0xff;
            if value & !0xcff != 0 || !matches!(ty, 0 | 1 | 4 | 5 | 6) {
                return deny_msr(vcpu, run);
            }
            run.mtrr_def_type = value;
        }
        IA32_PAT => {
            // Each of the eight entries must be a valid type: UC, WC, WT, WP, WB, UC- (SDM Vol.
            // 3A §12.12.2).
            let valid = value
                .to_le_bytes()
                .iter()
                .all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7));
            if !valid {
                return deny_msr(vcpu, run);
            }
            vcpu.set_pat(value);
        }
        IA32_MISC_ENABLE if value == 1 => {}
        _ => return deny_msr(vcpu, run),
    }
    vcpu.skip_instruction();
    Action::Resume
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::config::IoPolicy;
    use crate::run::exits::testkit::*;
    use atoll_vcpu::Exit;

    #[test]
    fn msr_allowlist() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(IA32_MISC_ENABLE);
        w.exit(Exit::MsrRead);
        assert_eq!((w.vcpu.gprs[Gpr::Rax as usize], w.vcpu.injected), (1, None));
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(IA32_FEATURE_CONTROL);
        w.exit(Exit::MsrRead);
        assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))));
        assert_eq!(w.run.msr_denied, 1);
        // A bare-metal enclave has no local APIC (CPUID says so): IA32_APIC_BASE does not exist.
        for exit in [Exit::MsrRead, Exit::MsrWrite] {
            w.vcpu.injected = None;
            w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(IA32_APIC_BASE);
            w.vcpu.gprs[Gpr::Rax as usize] = 0xfee0_0900;
            w.exit(exit);
            assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))), "{exit:?}");
        }
        assert_eq!(w.run.msr_denied, 3);
        // EFER: NXE allowed, a reserved bit refused, LMA cannot be flipped by WRMSR.
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.efer = (1 << 8) | (1 << 10);
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(IA32_EFER);
        w.vcpu.gprs[Gpr::Rax as usize] = (1 << 8) | (1 << 10) | (1 << 11);
        w.exit(Exit::MsrWrite);
        assert_eq!(
            (w.vcpu.efer, w.vcpu.injected),
            ((1 << 8) | (1 << 10) | (1 << 11), None)
        );
        for bad in [1u64 << 15, 1 << 8] {
            w.vcpu.injected = None;
            w.vcpu.gprs[Gpr::Rax as usize] = bad;
            w.exit(Exit::MsrWrite);
            assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))), "{bad:#x}");
        }
        assert_eq!(
            w.vcpu.efer,
            (1 << 8) | (1 << 10) | (1 << 11),
            "refused writes change nothing"
        );
        assert!(PASSTHROUGH_MSRS.contains(&IA32_LSTAR) && !PASSTHROUGH_MSRS.contains(&IA32_EFER));
        // PAT: valid types accepted, a reserved type (2) refused.
        w.vcpu.injected = None;
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(IA32_PAT);
        w.vcpu.gprs[Gpr::Rax as usize] = 0x0007_0406;
        w.vcpu.gprs[Gpr::Rdx as usize] = 0x0007_0406;
        w.exit(Exit::MsrWrite);
        assert_eq!((w.vcpu.pat, w.vcpu.injected), (0x0007_0406_0007_0406, None));
        w.vcpu.gprs[Gpr::Rax as usize] = 0x0007_0402;
        w.exit(Exit::MsrWrite);
        assert_eq!(
            (w.vcpu.pat, w.vcpu.injected),
            (0x0007_0406_0007_0406, Some((vector::GP, Some(0))))
        );
        w.vcpu.gprs[Gpr::Rdx as usize] = 0;
        w.exit(Exit::MsrRead);
        assert_eq!(w.vcpu.gprs[Gpr::Rdx as usize], 0x0007_0406);
    }
}
