//! SVM-related model-specific registers (AMD64 APM Vol. 2 §15.30 "SVM-Related MSRs", and EFER,
//! §3.1.7).

/// A model-specific register index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Msr(pub u32);

/// EFER, the extended feature enable register (APM Vol. 2 §3.1.7).
pub const EFER: Msr = Msr(0xC000_0080);
/// EFER.SVME, bit 12: SVM instructions enabled (APM Vol. 2 §15.4 "Enabling SVM").
pub const EFER_SVME: u64 = 1 << 12;
/// TSC_RATIO: guest TSC frequency multiplier (APM Vol. 2 §15.30.5), when CPUID Fn8000_000A
/// EDX.TscRateMsr is set.
pub const TSC_RATIO: Msr = Msr(0xC000_0104);
/// VM_CR: SVM lock and disable bits (APM Vol. 2 §15.30.1), decoded by [`crate::caps::VmCr`].
pub const VM_CR: Msr = Msr(0xC001_0114);
/// VM_HSAVE_PA: physical address of the 4 KiB host save area VMRUN writes the host state to
/// (APM Vol. 2 §15.30.4).
pub const VM_HSAVE_PA: Msr = Msr(0xC001_0117);
