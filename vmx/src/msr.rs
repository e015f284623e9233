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
/// IA32_VMX_VMCS_ENUM: highest index used in VMCS field encodings (A.9).
pub const IA32_VMX_VMCS_ENUM: Msr = Msr(0x48A);
/// IA32_VMX_TRUE_PINBASED_CTLS: pin-based controls without default-1 bits forced (A.3.1); read
/// instead of IA32_VMX_PINBASED_CTLS when IA32_VMX_BASIC bit 55 is set.
pub const IA32_VMX_TRUE_PINBASED_CTLS: Msr = Msr(0x48D);
/// IA32_VMX_TRUE_PROCBASED_CTLS (A.3.2).
pub const IA32_VMX_TRUE_PROCBASED_CTLS: Msr = Msr(0x48E);
/// IA32_VMX_TRUE_EXIT_CTLS (A.4).
pub const IA32_VMX_TRUE_EXIT_CTLS: Msr = Msr(0x48F);
/// IA32_VMX_TRUE_ENTRY_CTLS (A.5).
pub const IA32_VMX_TRUE_ENTRY_CTLS: Msr = Msr(0x490);
/// IA32_VMX_VMFUNC: allowed VM functions (A.11); exists only if "enable VM functions" may be 1.
pub const IA32_VMX_VMFUNC: Msr = Msr(0x491);
