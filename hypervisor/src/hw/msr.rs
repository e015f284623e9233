//! RDMSR for the capability probes.

use vmx::caps::MsrReader;
use vmx::msr::Msr;

/// Reads MSRs with RDMSR. Only MSRs whose existence CPUID has confirmed may be asked for: the
/// probes in `cpu` and `vmx::caps` guarantee that.
pub struct HwMsrs;

impl MsrReader for HwMsrs {
    fn read(&mut self, msr: Msr) -> Option<u64> {
        // SAFETY: callers only name MSRs that CPUID says exist (see the type's contract); reading
        // an MSR has no side effects for the ones atoll probes.
        Some(unsafe { x86_64::registers::model_specific::Msr::new(msr.0).read() })
    }
}

/// What this core's VMX capability MSRs allow (`cpuid_vmx`: CPUID.1:ECX.VMX; without it no VMX
/// MSR is read).
pub fn vmx_features(cpuid_vmx: bool) -> crate::machine::cpu::VmxFeatures {
    let caps = vmx::caps::VmxCaps::probe(cpuid_vmx, &mut HwMsrs);
    crate::machine::cpu::VmxFeatures {
        usable: caps.usable(),
        ept: caps.ept(),
        vpid: caps.vpid(),
        unrestricted_guest: caps.unrestricted_guest(),
        ept_1g: ept::EptCaps::from_msr(caps.ept_vpid_cap).contains(ept::EptCaps::PAGE_1G),
    }
}

/// VM_CR (only read when CPUID says the core has SVM).
pub fn vm_cr() -> u64 {
    HwMsrs
        .read(Msr(crate::machine::cpu::MSR_VM_CR))
        .unwrap_or(0)
}
