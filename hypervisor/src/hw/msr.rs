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
