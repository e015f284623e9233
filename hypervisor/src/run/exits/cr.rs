//! MOV to a control register and XSETBV: a value is checked against every architectural rule
//! ([`crate::run::deny`] for CR0/CR4/CR8, [`valid_xcr0`] for XCR0) before it reaches the vCPU or
//! the core; a refused one is #GP(0) (#UD for XSETBV without CR4.OSXSAVE), as the processor
//! would raise.

use super::{Action, HostCpu};
use atoll_vcpu::{vector, Gpr, Vcpu};

// Called from `handle` on every exit of its kind: inlined there, as it was before the
// handlers were split by kind (Bochs round trips count each instruction).
#[inline]
pub(super) fn cr_write(vcpu: &mut impl Vcpu, host: &impl HostCpu, cr: u8, value: u64) -> Action {
    use crate::run::deny;
    let ok = match cr {
        0 => deny::valid_cr0(
            value,
            vcpu.cr(4),
            vcpu.efer(),
            vcpu.efer() & (1 << 10) != 0 && vcpu.code_segment().long,
        ),
        4 => deny::valid_cr4(
            value,
            vcpu.cr(4),
            vcpu.efer(),
            vcpu.cr(3),
            deny::cr4_supported(host),
        ),
        // CR3: any value the second-stage tables then confine; reserved bits above MAXPHYADDR
        // are the processor's to check at the next walk (CR3 writes do not exit today).
        3 => true,
        8 => deny::tpr_from_cr8(value).is_some(),
        _ => false,
    };
    if !ok || vcpu.set_cr(cr, value).is_err() {
        vcpu.inject_exception(vector::GP, Some(0));
        return Action::Resume;
    }
    vcpu.skip_instruction();
    Action::Resume
}

pub(super) fn xsetbv(vcpu: &mut impl Vcpu, host: &mut impl HostCpu) -> Action {
    // CR4.OSXSAVE clear: XSETBV is #UD (SDM Vol. 2D "XSETBV").
    if vcpu.cr(4) & (1 << 18) == 0 {
        vcpu.inject_exception(vector::UD, None);
        return Action::Resume;
    }
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = (vcpu.gpr(Gpr::Rdx) << 32) | (vcpu.gpr(Gpr::Rax) & 0xffff_ffff);
    let [lo, _, _, hi] = host.cpuid(0xd, 0);
    let supported = u64::from(lo) | (u64::from(hi) << 32);
    if vcpu.cpl() != 0 || index != 0 || !valid_xcr0(value, supported) {
        vcpu.inject_exception(vector::GP, Some(0));
        return Action::Resume;
    }
    host.xsetbv(value);
    vcpu.skip_instruction();
    Action::Resume
}

/// XCR0 rules (SDM Vol. 1 §13.3, Vol. 2D "XSETBV"): x87 (bit 0) set; only components CPUID
/// 0xD.0 EDX:EAX lists (so never a supervisor component); AVX (2) needs SSE (1); the two MPX
/// bits (3, 4) together; the three AVX-512 bits (5–7) together and only with AVX; the two AMX
/// bits (TILECFG 17, TILEDATA 18) together. The processor would raise #GP for any other value
/// at XSETBV, so atoll checks them all before it executes XSETBV on the guest's behalf.
pub fn valid_xcr0(value: u64, supported: u64) -> bool {
    let has = |bits: u64| value & bits == bits;
    let any = |bits: u64| value & bits != 0;
    let together = |bits: u64| has(bits) || !any(bits);
    value & 1 != 0
        && value & !supported == 0
        && (!any(1 << 2) || has(1 << 1))
        && together(0b11 << 3)
        && together(0b111 << 5)
        && (!any(0b111 << 5) || has(1 << 2))
        && together(0b11 << 17)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::config::IoPolicy;
    use crate::run::exits::testkit::*;
    use atoll_vcpu::Exit;

    #[test]
    fn control_registers_and_xcr0() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x8000_0001;
        w.exit(Exit::CrWrite {
            cr: 0,
            gpr: Gpr::Rbx,
        });
        assert_eq!((w.vcpu.cr[0], w.vcpu.injected), (0x8000_0001, None));
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x8000_0000; // PG without PE
        w.exit(Exit::CrWrite {
            cr: 0,
            gpr: Gpr::Rbx,
        });
        assert_eq!(
            (w.vcpu.cr[0], w.vcpu.injected),
            (0x8000_0001, Some((vector::GP, Some(0))))
        );
        w.vcpu.injected = None;
        w.vcpu.gprs[Gpr::Rbx as usize] = 1 << 13; // CR4.VMXE
        w.exit(Exit::CrWrite {
            cr: 4,
            gpr: Gpr::Rbx,
        });
        assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))));

        // XSETBV: #UD without OSXSAVE; then valid and invalid values.
        w.vcpu.injected = None;
        w.vcpu.gprs[Gpr::Rax as usize] = 0b11;
        w.exit(Exit::Xsetbv);
        assert_eq!(w.vcpu.injected, Some((vector::UD, None)));
        w.vcpu.cr[4] = 1 << 18;
        w.vcpu.injected = None;
        w.exit(Exit::Xsetbv);
        assert_eq!((w.host.xcr0, w.vcpu.injected), (Some(0b11), None));
        w.vcpu.gprs[Gpr::Rax as usize] = 0b101; // AVX without SSE
        w.exit(Exit::Xsetbv);
        assert_eq!(
            (w.host.xcr0, w.vcpu.injected),
            (Some(0b11), Some((vector::GP, Some(0))))
        );
        assert!(valid_xcr0(0b111, 0b111));
        assert!(!valid_xcr0(0b1111, 0b111), "unsupported component");
        assert!(!valid_xcr0(0b110, 0b111), "x87 must stay on");
        assert!(
            !valid_xcr0(0b11 | (1 << 5), u64::MAX),
            "AVX-512 bits together"
        );
    }
}
