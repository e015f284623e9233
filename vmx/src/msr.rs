//! VMX-related model-specific registers (SDM Vol. 4 Table 2-2; Vol. 3D Appendix A).

/// A model-specific register index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msr(pub u32);

/// IA32_FEATURE_CONTROL: lock bit and VMXON enables (SDM Vol. 3C §24.7).
pub const IA32_FEATURE_CONTROL: Msr = Msr(0x3A);
/// IA32_VMX_BASIC (SDM Vol. 3D Appendix A.1).
pub const IA32_VMX_BASIC: Msr = Msr(0x480);
/// IA32_VMX_PINBASED_CTLS (A.3.1).
pub const IA32_VMX_PINBASED_CTLS: Msr = Msr(0x481);
/// IA32_VMX_PROCBASED_CTLS (A.3.2).
pub const IA32_VMX_PROCBASED_CTLS: Msr = Msr(0x482);
/// IA32_VMX_EXIT_CTLS (A.4).
pub const IA32_VMX_EXIT_CTLS: Msr = Msr(0x483);
/// IA32_VMX_ENTRY_CTLS (A.5).
pub const IA32_VMX_ENTRY_CTLS: Msr = Msr(0x484);
/// IA32_VMX_MISC (A.6).
pub const IA32_VMX_MISC: Msr = Msr(0x485);
/// IA32_VMX_CR0_FIXED0 (A.7).
pub const IA32_VMX_CR0_FIXED0: Msr = Msr(0x486);
/// IA32_VMX_CR0_FIXED1 (A.7).
pub const IA32_VMX_CR0_FIXED1: Msr = Msr(0x487);
/// IA32_VMX_CR4_FIXED0 (A.8).
pub const IA32_VMX_CR4_FIXED0: Msr = Msr(0x488);
/// IA32_VMX_CR4_FIXED1 (A.8).
pub const IA32_VMX_CR4_FIXED1: Msr = Msr(0x489);
/// IA32_VMX_PROCBASED_CTLS2 (A.3.3).
pub const IA32_VMX_PROCBASED_CTLS2: Msr = Msr(0x48B);
/// IA32_VMX_EPT_VPID_CAP (A.10).
pub const IA32_VMX_EPT_VPID_CAP: Msr = Msr(0x48C);
