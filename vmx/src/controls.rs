//! VM-execution, VM-exit and VM-entry controls, and fitting what atoll wants to what a processor
//! allows.
//!
//! This module owns the control bit definitions (SDM Vol. 3C §25.6.1 Table 25-5, §25.6.2
//! Tables 25-6 and 25-7, §25.7.1 Table 25-13, §25.8.1 Table 25-15), their SDM names, and
//! [`ControlSet::compute`], which turns a [`Wanted`] (required and optional bits per control
//! field) into the values written to the VMCS, using the capability MSRs (SDM Vol. 3D §A.3–A.5):
//! bits the processor requires are forced on, optional bits it lacks are dropped, and a required
//! bit it lacks is an error that names the control.

use crate::caps::MsrReader;
use crate::error::VmFail;
use crate::fields::{Field32, VmcsAccess};
use crate::msr::*;
use bitflags::bitflags;
use core::fmt;

/// Defines a control field's bitflags with one SDM name per bit, so the names used in error
/// messages cannot drift from the flags.
macro_rules! controls {
    (
        $(#[$meta:meta])*
        pub struct $name:ident;
        $( $flag:ident = $bit:literal, $desc:literal; )*
    ) => {
        bitflags! {
            $(#[$meta])*
            #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
            pub struct $name: u32 {
                $(
                    #[doc = concat!("Bit ", stringify!($bit), ": ", $desc, ".")]
                    const $flag = 1 << $bit;
                )*
            }
        }

        impl $name {
            /// The SDM's name of control bit `bit`, or `None` for a bit the SDM leaves reserved.
            pub const fn name_of(bit: u32) -> Option<&'static str> {
                match bit {
                    $( $bit => Some($desc), )*
                    _ => None,
                }
            }
        }
    };
}

controls! {
    /// Pin-based VM-execution controls (SDM Vol. 3C §25.6.1, Table 25-5). Bits 1, 2 and 4 are
    /// reserved with default setting 1.
    pub struct PinBasedControls;
    EXTERNAL_INTERRUPT_EXITING = 0, "external-interrupt exiting";
    NMI_EXITING = 3, "NMI exiting";
    VIRTUAL_NMIS = 5, "virtual NMIs";
    ACTIVATE_PREEMPTION_TIMER = 6, "activate VMX-preemption timer";
    PROCESS_POSTED_INTERRUPTS = 7, "process posted interrupts";
}

controls! {
    /// Primary processor-based VM-execution controls (SDM Vol. 3C §25.6.2, Table 25-6). Bits
    /// 1, 4–6, 8, 13–16 and 26 are default-1 (15 and 16 only without the TRUE MSRs).
    pub struct PrimaryControls;
    INTERRUPT_WINDOW_EXITING = 2, "interrupt-window exiting";
    USE_TSC_OFFSETTING = 3, "use TSC offsetting";
    HLT_EXITING = 7, "HLT exiting";
    INVLPG_EXITING = 9, "INVLPG exiting";
    MWAIT_EXITING = 10, "MWAIT exiting";
    RDPMC_EXITING = 11, "RDPMC exiting";
    RDTSC_EXITING = 12, "RDTSC exiting";
    CR3_LOAD_EXITING = 15, "CR3-load exiting";
    CR3_STORE_EXITING = 16, "CR3-store exiting";
    ACTIVATE_TERTIARY_CONTROLS = 17, "activate tertiary controls";
    CR8_LOAD_EXITING = 19, "CR8-load exiting";
    CR8_STORE_EXITING = 20, "CR8-store exiting";
    USE_TPR_SHADOW = 21, "use TPR shadow";
    NMI_WINDOW_EXITING = 22, "NMI-window exiting";
    MOV_DR_EXITING = 23, "MOV-DR exiting";
    UNCONDITIONAL_IO_EXITING = 24, "unconditional I/O exiting";
    USE_IO_BITMAPS = 25, "use I/O bitmaps";
    MONITOR_TRAP_FLAG = 27, "monitor trap flag";
    USE_MSR_BITMAPS = 28, "use MSR bitmaps";
    MONITOR_EXITING = 29, "MONITOR exiting";
    PAUSE_EXITING = 30, "PAUSE exiting";
    ACTIVATE_SECONDARY_CONTROLS = 31, "activate secondary controls";
}

controls! {
    /// Secondary processor-based VM-execution controls (SDM Vol. 3C §25.6.2, Table 25-7). They
    /// apply only when the primary control "activate secondary controls" is 1; none is
    /// default-1.
    pub struct SecondaryControls;
    VIRTUALIZE_APIC_ACCESSES = 0, "virtualize APIC accesses";
    ENABLE_EPT = 1, "enable EPT";
    DESCRIPTOR_TABLE_EXITING = 2, "descriptor-table exiting";
    ENABLE_RDTSCP = 3, "enable RDTSCP";
    VIRTUALIZE_X2APIC = 4, "virtualize x2APIC mode";
    ENABLE_VPID = 5, "enable VPID";
    WBINVD_EXITING = 6, "WBINVD exiting";
    UNRESTRICTED_GUEST = 7, "unrestricted guest";
    APIC_REGISTER_VIRTUALIZATION = 8, "APIC-register virtualization";
    VIRTUAL_INTERRUPT_DELIVERY = 9, "virtual-interrupt delivery";
    PAUSE_LOOP_EXITING = 10, "PAUSE-loop exiting";
    RDRAND_EXITING = 11, "RDRAND exiting";
    ENABLE_INVPCID = 12, "enable INVPCID";
    ENABLE_VM_FUNCTIONS = 13, "enable VM functions";
    VMCS_SHADOWING = 14, "VMCS shadowing";
    ENABLE_ENCLS_EXITING = 15, "enable ENCLS exiting";
    RDSEED_EXITING = 16, "RDSEED exiting";
    ENABLE_PML = 17, "enable PML";
    EPT_VIOLATION_VE = 18, "EPT-violation #VE";
    CONCEAL_VMX_FROM_PT = 19, "conceal VMX from PT";
    ENABLE_XSAVES = 20, "enable XSAVES/XRSTORS";
    PASID_TRANSLATION = 21, "PASID translation";
    MODE_BASED_EPT_EXECUTE = 22, "mode-based execute control for EPT";
    SUB_PAGE_WRITE_PERMISSIONS = 23, "sub-page write permissions for EPT";
    PT_USES_GUEST_PHYSICAL = 24, "Intel PT uses guest physical addresses";
    USE_TSC_SCALING = 25, "use TSC scaling";
    ENABLE_USER_WAIT_PAUSE = 26, "enable user wait and pause";
    ENABLE_PCONFIG = 27, "enable PCONFIG";
    ENABLE_ENCLV_EXITING = 28, "enable ENCLV exiting";
    VMM_BUS_LOCK_DETECTION = 30, "VMM bus-lock detection";
    INSTRUCTION_TIMEOUT = 31, "instruction timeout";
}

controls! {
    /// Primary VM-exit controls (SDM Vol. 3C §25.7.1, Table 25-13). Bits 0–8, 10, 11, 13, 14,
    /// 16 and 17 are default-1 (2 only without the TRUE MSRs).
    pub struct ExitControls;
    SAVE_DEBUG_CONTROLS = 2, "save debug controls";
    HOST_ADDRESS_SPACE_SIZE = 9, "host address-space size";
    LOAD_IA32_PERF_GLOBAL_CTRL = 12, "load IA32_PERF_GLOBAL_CTRL";
    ACKNOWLEDGE_INTERRUPT_ON_EXIT = 15, "acknowledge interrupt on exit";
    SAVE_IA32_PAT = 18, "save IA32_PAT";
    LOAD_IA32_PAT = 19, "load IA32_PAT";
    SAVE_IA32_EFER = 20, "save IA32_EFER";
    LOAD_IA32_EFER = 21, "load IA32_EFER";
    SAVE_PREEMPTION_TIMER = 22, "save VMX-preemption timer value";
    CLEAR_IA32_BNDCFGS = 23, "clear IA32_BNDCFGS";
    CONCEAL_VMX_FROM_PT = 24, "conceal VMX from PT";
    CLEAR_IA32_RTIT_CTL = 25, "clear IA32_RTIT_CTL";
    CLEAR_IA32_LBR_CTL = 26, "clear IA32_LBR_CTL";
    CLEAR_UINV = 27, "clear UINV";
    LOAD_CET_STATE = 28, "load CET state";
    LOAD_PKRS = 29, "load PKRS";
    SAVE_IA32_PERF_GLOBAL_CTL = 30, "save IA32_PERF_GLOBAL_CTL";
    ACTIVATE_SECONDARY_CONTROLS = 31, "activate secondary controls";
}

controls! {
    /// VM-entry controls (SDM Vol. 3C §25.8.1, Table 25-15). Bits 0–8 and 12 are default-1 (2
    /// only without the TRUE MSRs).
    pub struct EntryControls;
    LOAD_DEBUG_CONTROLS = 2, "load debug controls";
    IA32E_MODE_GUEST = 9, "IA-32e mode guest";
    ENTRY_TO_SMM = 10, "entry to SMM";
    DEACTIVATE_DUAL_MONITOR = 11, "deactivate dual-monitor treatment";
    LOAD_IA32_PERF_GLOBAL_CTRL = 13, "load IA32_PERF_GLOBAL_CTRL";
    LOAD_IA32_PAT = 14, "load IA32_PAT";
    LOAD_IA32_EFER = 15, "load IA32_EFER";
    LOAD_IA32_BNDCFGS = 16, "load IA32_BNDCFGS";
    CONCEAL_VMX_FROM_PT = 17, "conceal VMX from PT";
    LOAD_IA32_RTIT_CTL = 18, "load IA32_RTIT_CTL";
    LOAD_UINV = 19, "load UINV";
    LOAD_CET_STATE = 20, "load CET state";
    LOAD_GUEST_IA32_LBR_CTL = 21, "load guest IA32_LBR_CTL";
    LOAD_PKRS = 22, "load PKRS";
}

/// One of the five 32-bit control fields; names the field in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlClass {
    /// Pin-based VM-execution controls.
    PinBased,
    /// Primary processor-based VM-execution controls.
    Primary,
    /// Secondary processor-based VM-execution controls.
    Secondary,
    /// Primary VM-exit controls.
    Exit,
    /// VM-entry controls.
    Entry,
}

impl ControlClass {
    /// How the SDM refers to the field's controls, e.g. "secondary processor-based control".
    pub const fn describe(self) -> &'static str {
        match self {
            Self::PinBased => "pin-based control",
            Self::Primary => "primary processor-based control",
            Self::Secondary => "secondary processor-based control",
            Self::Exit => "VM-exit control",
            Self::Entry => "VM-entry control",
        }
    }

    /// The SDM's name of bit `bit` of this field, `None` for a reserved bit.
    pub const fn name_of(self, bit: u32) -> Option<&'static str> {
        match self {
            Self::PinBased => PinBasedControls::name_of(bit),
            Self::Primary => PrimaryControls::name_of(bit),
            Self::Secondary => SecondaryControls::name_of(bit),
            Self::Exit => ExitControls::name_of(bit),
            Self::Entry => EntryControls::name_of(bit),
        }
    }

    /// The capability MSR that reports this field's allowed settings (SDM Vol. 3D §A.3–A.5).
    /// `true_ctls` is IA32_VMX_BASIC bit 55; the secondary controls have no TRUE MSR.
    pub const fn capability_msr(self, true_ctls: bool) -> Msr {
        match (self, true_ctls) {
            (Self::PinBased, false) => IA32_VMX_PINBASED_CTLS,
            (Self::PinBased, true) => IA32_VMX_TRUE_PINBASED_CTLS,
            (Self::Primary, false) => IA32_VMX_PROCBASED_CTLS,
            (Self::Primary, true) => IA32_VMX_TRUE_PROCBASED_CTLS,
            (Self::Secondary, _) => IA32_VMX_PROCBASED_CTLS2,
            (Self::Exit, false) => IA32_VMX_EXIT_CTLS,
            (Self::Exit, true) => IA32_VMX_TRUE_EXIT_CTLS,
            (Self::Entry, false) => IA32_VMX_ENTRY_CTLS,
            (Self::Entry, true) => IA32_VMX_TRUE_ENTRY_CTLS,
        }
    }
}

/// One control bit, printed as "secondary processor-based control 'enable EPT' (bit 1)".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Control {
    /// The field it belongs to.
    pub class: ControlClass,
    /// Its bit number, 0..=31.
    pub bit: u32,
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.class.name_of(self.bit) {
            Some(name) => write!(f, "{} '{}' (bit {})", self.class.describe(), name, self.bit),
            None => write!(f, "{} bit {}", self.class.describe(), self.bit),
        }
    }
}

/// Why a set of controls cannot be used on this processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// A capability MSR could not be read.
    MsrUnreadable(Msr),
    /// atoll requires this control to be 1 and the processor does not allow it.
    Unsupported(Control),
    /// The capability MSR says the bit must be 1 and must be 0 at the same time (a broken or
    /// badly emulated processor); no VM entry could succeed.
    Inconsistent(Control),
    /// `control` is required, but `requires` (which it depends on, SDM Vol. 3C §27.2.1.1) is
    /// not available.
    Dependency {
        /// The control atoll asked for.
        control: Control,
        /// The control it cannot work without.
        requires: Control,
    },
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MsrUnreadable(msr) => {
                write!(f, "VMX capability MSR {:#x} cannot be read", msr.0)
            }
            Self::Unsupported(c) => write!(f, "{c} is not supported by this CPU"),
            Self::Inconsistent(c) => write!(
                f,
                "the CPU reports {c} as both required and not allowed; VM entry cannot succeed"
            ),
            Self::Dependency { control, requires } => write!(
                f,
                "{control} requires {requires}, which is not supported by this CPU"
            ),
        }
    }
}

impl core::error::Error for ControlError {}

/// Bits of one control field that atoll needs (`required`) and bits it uses when the processor
/// offers them (`optional`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Want<T> {
    /// Bits that must end up 1, or [`ControlSet::compute`] fails.
    pub required: T,
    /// Bits set to 1 only if the processor allows it.
    pub optional: T,
}

impl<T> Want<T> {
    /// `required` and `optional` bits.
    pub const fn new(required: T, optional: T) -> Self {
        Self { required, optional }
    }
}

/// What atoll asks of each control field. Bits not named here end up 0 unless the processor
/// requires them to be 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Wanted {
    /// Pin-based VM-execution controls.
    pub pin: Want<PinBasedControls>,
    /// Primary processor-based VM-execution controls. "Activate secondary controls" is added by
    /// [`ControlSet::compute`] when `secondary` asks for anything.
    pub primary: Want<PrimaryControls>,
    /// Secondary processor-based VM-execution controls.
    pub secondary: Want<SecondaryControls>,
    /// VM-exit controls.
    pub exit: Want<ExitControls>,
    /// VM-entry controls.
    pub entry: Want<EntryControls>,
}

impl Wanted {
    /// What every atoll vCPU relies on, VMX backend side:
    ///
    /// * external interrupts and NMIs exit (they belong to atoll or to the partition that owns
    ///   the device, never silently to whichever guest runs); virtual NMIs when available, so
    ///   NMIs can be injected with NMI-window exiting;
    /// * HLT exits (the virtual APIC timer wakes the vCPU), I/O and MSR accesses go through
    ///   bitmaps so only emulated ports and MSRs exit;
    /// * deny by default: CR8 loads and stores exit (the guest never reaches the real TPR, which
    ///   masks the host's interrupts on this core), RDPMC, MONITOR and MWAIT exit (the guest gets
    ///   #GP / #UD, the counters and the monitor hardware are the host's), WBINVD exits (a
    ///   flush of a shared last-level cache evicts other partitions' lines), and TSC offsetting
    ///   is on (a guest's WRMSR to IA32_TSC moves its own offset, never the core's TSC);
    /// * EPT and unrestricted guest (partition memory isolation; APs start in real mode after
    ///   SIPI); VPID, RDTSCP, INVPCID and XSAVES when available so Linux guests keep them;
    /// * a 64-bit host, EFER saved and loaded on exit and loaded on entry (guests switch modes
    ///   under unrestricted guest), PAT saved and loaded when available.
    ///
    /// "IA-32e mode guest" is per vCPU state (it follows the guest's EFER.LMA), so it is not
    /// here: the caller sets it in [`ControlSet::entry`] before writing the VMCS. Every enabled
    /// control comes with the fields it uses, which the caller writes: EPT pointer, VPID, I/O
    /// and MSR bitmap addresses, XSS-exiting bitmap (0 lets the guest use every XSS component).
    /// The VMX-preemption timer is left to callers that program its value.
    pub const ATOLL_BASELINE: Self = Self {
        pin: Want::new(
            PinBasedControls::EXTERNAL_INTERRUPT_EXITING.union(PinBasedControls::NMI_EXITING),
            PinBasedControls::VIRTUAL_NMIS,
        ),
        primary: Want::new(
            PrimaryControls::HLT_EXITING
                .union(PrimaryControls::USE_IO_BITMAPS)
                .union(PrimaryControls::USE_MSR_BITMAPS)
                .union(PrimaryControls::CR8_LOAD_EXITING)
                .union(PrimaryControls::CR8_STORE_EXITING)
                .union(PrimaryControls::RDPMC_EXITING)
                .union(PrimaryControls::MWAIT_EXITING)
                .union(PrimaryControls::MONITOR_EXITING)
                .union(PrimaryControls::USE_TSC_OFFSETTING),
            PrimaryControls::empty(),
        ),
        secondary: Want::new(
            SecondaryControls::ENABLE_EPT
                .union(SecondaryControls::UNRESTRICTED_GUEST)
                .union(SecondaryControls::WBINVD_EXITING),
            SecondaryControls::ENABLE_VPID
                .union(SecondaryControls::ENABLE_RDTSCP)
                .union(SecondaryControls::ENABLE_INVPCID)
                .union(SecondaryControls::ENABLE_XSAVES),
        ),
        exit: Want::new(
            ExitControls::HOST_ADDRESS_SPACE_SIZE
                .union(ExitControls::SAVE_IA32_EFER)
                .union(ExitControls::LOAD_IA32_EFER),
            ExitControls::SAVE_IA32_PAT.union(ExitControls::LOAD_IA32_PAT),
        ),
        entry: Want::new(EntryControls::LOAD_IA32_EFER, EntryControls::LOAD_IA32_PAT),
    };
}

/// The control field values to write into a VMCS, fitted to one processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlSet {
    /// Pin-based VM-execution controls.
    pub pin: PinBasedControls,
    /// Primary processor-based VM-execution controls; "activate secondary controls" is set
    /// exactly when `secondary` is `Some`.
    pub primary: PrimaryControls,
    /// Secondary processor-based VM-execution controls, `None` when they are not activated.
    pub secondary: Option<SecondaryControls>,
    /// VM-exit controls.
    pub exit: ExitControls,
    /// VM-entry controls.
    pub entry: EntryControls,
    /// Whether the TRUE capability MSRs were used (IA32_VMX_BASIC bit 55).
    pub true_controls: bool,
}

/// Fits one control field: `cap` is its capability MSR (SDM Vol. 3D §A.3: bits 31:0 are the
/// allowed-0 settings, a 1 there means the control must be 1; bits 63:32 are the allowed-1
/// settings, a 0 there means the control must be 0). Returns `must-be-1 | required |
/// (optional & may-be-1)`.
pub fn adjust(
    class: ControlClass,
    cap: u64,
    required: u32,
    optional: u32,
) -> Result<u32, ControlError> {
    let must_be_one = cap as u32;
    let may_be_one = (cap >> 32) as u32;
    if let Some(bit) = lowest_bit(must_be_one & !may_be_one) {
        return Err(ControlError::Inconsistent(Control { class, bit }));
    }
    if let Some(bit) = lowest_bit(required & !may_be_one) {
        return Err(ControlError::Unsupported(Control { class, bit }));
    }
    Ok(must_be_one | required | (optional & may_be_one))
}

fn lowest_bit(bits: u32) -> Option<u32> {
    (bits != 0).then(|| bits.trailing_zeros())
}

/// "Control `dependent` may be 1 only if `prerequisite` is 1" (SDM Vol. 3C §27.2.1.1, checks
/// on VM-execution control fields, and §27.2.1.2 for the exit control).
const DEPENDENCIES: &[(ControlClass, u32, ControlClass, u32)] = {
    use ControlClass::*;
    &[
        (PinBased, 5, PinBased, 3),    // virtual NMIs → NMI exiting
        (Primary, 22, PinBased, 5),    // NMI-window exiting → virtual NMIs
        (Secondary, 7, Secondary, 1),  // unrestricted guest → enable EPT
        (Secondary, 17, Secondary, 1), // enable PML → enable EPT
        (Secondary, 22, Secondary, 1), // mode-based execute control → enable EPT
        (Secondary, 23, Secondary, 1), // sub-page write permissions → enable EPT
        (Secondary, 4, Primary, 21),   // virtualize x2APIC mode → use TPR shadow
        (Secondary, 8, Primary, 21),   // APIC-register virtualization → use TPR shadow
        (Secondary, 9, Primary, 21),   // virtual-interrupt delivery → use TPR shadow
        (Secondary, 9, PinBased, 0),   // virtual-interrupt delivery → external-interrupt exiting
        (PinBased, 7, Secondary, 9),   // posted interrupts → virtual-interrupt delivery
        (PinBased, 7, Exit, 15),       // posted interrupts → acknowledge interrupt on exit
        (Exit, 22, PinBased, 6),       // save preemption timer → activate preemption timer
    ]
};

/// The five control values while they are being fitted, indexed by [`ControlClass`].
struct Values {
    value: [u32; 5],
    required: [u32; 5],
    must_be_one: [u32; 5],
}

impl Values {
    const fn index(class: ControlClass) -> usize {
        match class {
            ControlClass::PinBased => 0,
            ControlClass::Primary => 1,
            ControlClass::Secondary => 2,
            ControlClass::Exit => 3,
            ControlClass::Entry => 4,
        }
    }

    fn is_set(&self, class: ControlClass, bit: u32) -> bool {
        self.value[Self::index(class)] & (1 << bit) != 0
    }

    /// Drops optional controls whose prerequisite is missing; fails if such a control is
    /// required (or forced on by the processor, which no real processor does).
    fn resolve_dependencies(&mut self) -> Result<(), ControlError> {
        // Dropping one control can orphan another (virtual NMIs → NMI-window exiting), so
        // repeat until nothing changes; each pass clears at least one bit, so this ends.
        loop {
            let mut changed = false;
            for &(class, bit, pre_class, pre_bit) in DEPENDENCIES {
                if !self.is_set(class, bit) || self.is_set(pre_class, pre_bit) {
                    continue;
                }
                let i = Self::index(class);
                if (self.required[i] | self.must_be_one[i]) & (1 << bit) != 0 {
                    return Err(ControlError::Dependency {
                        control: Control { class, bit },
                        requires: Control {
                            class: pre_class,
                            bit: pre_bit,
                        },
                    });
                }
                self.value[i] &= !(1 << bit);
                changed = true;
            }
            if !changed {
                return Ok(());
            }
        }
    }
}

impl ControlSet {
    /// Fits `wanted` to the processor whose capability MSRs `msrs` reads (SDM Vol. 3D §A.3–A.5),
    /// using the TRUE MSRs when IA32_VMX_BASIC bit 55 says they exist. The secondary controls
    /// are activated when `wanted.secondary` names any bit and the processor allows it; if it
    /// does not, a required secondary control is reported as unsupported.
    pub fn compute(msrs: &mut impl MsrReader, wanted: &Wanted) -> Result<Self, ControlError> {
        let mut read = |msr: Msr| msrs.read(msr).ok_or(ControlError::MsrUnreadable(msr));
        let basic = read(IA32_VMX_BASIC)?;
        let true_controls = basic & (1 << 55) != 0;

        let mut primary_want = wanted.primary;
        let secondary_wanted = !(wanted.secondary.required | wanted.secondary.optional).is_empty();
        if !wanted.secondary.required.is_empty() {
            primary_want.required |= PrimaryControls::ACTIVATE_SECONDARY_CONTROLS;
        } else if secondary_wanted {
            primary_want.optional |= PrimaryControls::ACTIVATE_SECONDARY_CONTROLS;
        }

        let pin_cap = read(ControlClass::PinBased.capability_msr(true_controls))?;
        let primary_cap = read(ControlClass::Primary.capability_msr(true_controls))?;
        let exit_cap = read(ControlClass::Exit.capability_msr(true_controls))?;
        let entry_cap = read(ControlClass::Entry.capability_msr(true_controls))?;
        let activate_allowed = (primary_cap >> 32)
            & u64::from(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits())
            != 0;
        // Without "activate secondary controls" no secondary control can be 1: fitting against
        // an all-zero capability names the first required one, which is the useful message.
        let secondary_cap = if activate_allowed {
            read(IA32_VMX_PROCBASED_CTLS2)?
        } else {
            0
        };

        let fields = [
            (
                ControlClass::PinBased,
                pin_cap,
                wanted.pin.required.bits(),
                wanted.pin.optional.bits(),
            ),
            (
                ControlClass::Secondary,
                secondary_cap,
                wanted.secondary.required.bits(),
                wanted.secondary.optional.bits(),
            ),
            (
                ControlClass::Primary,
                primary_cap,
                primary_want.required.bits(),
                primary_want.optional.bits(),
            ),
            (
                ControlClass::Exit,
                exit_cap,
                wanted.exit.required.bits(),
                wanted.exit.optional.bits(),
            ),
            (
                ControlClass::Entry,
                entry_cap,
                wanted.entry.required.bits(),
                wanted.entry.optional.bits(),
            ),
        ];
        let mut values = Values {
            value: [0; 5],
            required: [0; 5],
            must_be_one: [0; 5],
        };
        for (class, cap, required, optional) in fields {
            let i = Values::index(class);
            values.value[i] = adjust(class, cap, required, optional)?;
            values.required[i] = required;
            values.must_be_one[i] = cap as u32;
        }
        // Secondary controls that are not activated count as 0 for the dependency checks.
        if values.value[1] & PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits() == 0 {
            values.value[2] = 0;
        }
        values.resolve_dependencies()?;

        let primary = PrimaryControls::from_bits_retain(values.value[1]);
        let secondary = primary
            .contains(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS)
            .then(|| SecondaryControls::from_bits_retain(values.value[2]));
        Ok(Self {
            pin: PinBasedControls::from_bits_retain(values.value[0]),
            primary,
            secondary,
            exit: ExitControls::from_bits_retain(values.value[3]),
            entry: EntryControls::from_bits_retain(values.value[4]),
            true_controls,
        })
    }

    /// Writes the five control fields into `vmcs` (the secondary one only when activated).
    pub fn write(&self, vmcs: &mut impl VmcsAccess) -> Result<(), VmFail> {
        vmcs.write32(Field32::PinBasedVmExecutionControls, self.pin.bits())?;
        vmcs.write32(
            Field32::PrimaryProcessorBasedVmExecutionControls,
            self.primary.bits(),
        )?;
        if let Some(secondary) = self.secondary {
            vmcs.write32(
                Field32::SecondaryProcessorBasedVmExecutionControls,
                secondary.bits(),
            )?;
        }
        vmcs.write32(Field32::PrimaryVmExitControls, self.exit.bits())?;
        vmcs.write32(Field32::VmEntryControls, self.entry.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{bochs, MsrTable};

    #[test]
    fn adjust_forces_must_be_one_and_drops_unavailable_optional_bits() {
        // must be 1: bits 1, 2; may be 1: bits 0..=7.
        let cap = (0xffu64 << 32) | 0b110;
        assert_eq!(adjust(ControlClass::PinBased, cap, 0b1, 0).unwrap(), 0b111);
        // optional bit 9 is not allowed and silently dropped; optional bit 5 is kept.
        assert_eq!(
            adjust(ControlClass::PinBased, cap, 0, (1 << 9) | (1 << 5)).unwrap(),
            0b110 | (1 << 5)
        );
        // required bit 9 is an error naming it.
        assert_eq!(
            adjust(ControlClass::PinBased, cap, 1 << 9, 0),
            Err(ControlError::Unsupported(Control {
                class: ControlClass::PinBased,
                bit: 9
            }))
        );
    }

    #[test]
    fn adjust_reports_a_self_contradicting_capability() {
        // bit 3 must be 1 but may not be 1.
        let cap = (0xf7u64 << 32) | 0b1000;
        let err = adjust(ControlClass::Entry, cap, 0, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the CPU reports VM-entry control bit 3 as both required and not allowed; VM entry \
             cannot succeed"
        );
    }

    #[test]
    fn names_cover_every_defined_flag() {
        fn check<T: bitflags::Flags<Bits = u32>>(name_of: fn(u32) -> Option<&'static str>) {
            for flag in T::FLAGS {
                let bits = flag.value().bits();
                assert_eq!(bits.count_ones(), 1, "{}", flag.name());
                assert!(name_of(bits.trailing_zeros()).is_some(), "{}", flag.name());
            }
            let named = (0..32).filter(|&b| name_of(b).is_some()).count();
            assert_eq!(named, T::FLAGS.len());
        }
        check::<PinBasedControls>(PinBasedControls::name_of);
        check::<PrimaryControls>(PrimaryControls::name_of);
        check::<SecondaryControls>(SecondaryControls::name_of);
        check::<ExitControls>(ExitControls::name_of);
        check::<EntryControls>(EntryControls::name_of);
    }

    #[test]
    fn bit_positions_match_the_sdm_tables() {
        assert_eq!(PinBasedControls::NMI_EXITING.bits(), 1 << 3);
        assert_eq!(PinBasedControls::PROCESS_POSTED_INTERRUPTS.bits(), 1 << 7);
        assert_eq!(PrimaryControls::HLT_EXITING.bits(), 0x80);
        assert_eq!(PrimaryControls::USE_IO_BITMAPS.bits(), 0x0200_0000);
        assert_eq!(PrimaryControls::USE_MSR_BITMAPS.bits(), 0x1000_0000);
        assert_eq!(
            PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits(),
            0x8000_0000
        );
        assert_eq!(SecondaryControls::UNRESTRICTED_GUEST.bits(), 0x80);
        assert_eq!(SecondaryControls::ENABLE_XSAVES.bits(), 0x10_0000);
        assert_eq!(ExitControls::HOST_ADDRESS_SPACE_SIZE.bits(), 0x200);
        assert_eq!(ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT.bits(), 0x8000);
        assert_eq!(ExitControls::LOAD_IA32_EFER.bits(), 0x20_0000);
        assert_eq!(EntryControls::IA32E_MODE_GUEST.bits(), 0x200);
        assert_eq!(EntryControls::LOAD_IA32_EFER.bits(), 0x8000);
    }

    #[test]
    fn bochs_skylake_x_baseline() {
        let set = ControlSet::compute(&mut bochs(), &Wanted::ATOLL_BASELINE).unwrap();
        assert!(set.true_controls);
        // TRUE_PINBASED 0x0000007f_00000016: default-1 bits 1, 2, 4, plus external-interrupt
        // (0) and NMI exiting (3), plus optional virtual NMIs (5).
        assert_eq!(set.pin.bits(), 0x3f);
        // TRUE_PROCBASED 0xf7f9fffe_04006172: default-1 0x04006172, plus HLT (7), I/O bitmaps
        // (25), MSR bitmaps (28), activate secondary (31), and deny by default: TSC offsetting
        // (3), MWAIT (10), RDPMC (11), CR8 load/store (19, 20), MONITOR (29) exiting;
        // CR3-load/store exiting stay 0.
        assert_eq!(set.primary.bits(), 0xb618_6dfa);
        for c in [
            PrimaryControls::CR8_LOAD_EXITING,
            PrimaryControls::CR8_STORE_EXITING,
            PrimaryControls::RDPMC_EXITING,
            PrimaryControls::MWAIT_EXITING,
            PrimaryControls::MONITOR_EXITING,
            PrimaryControls::USE_TSC_OFFSETTING,
        ] {
            assert!(set.primary.contains(c), "{c:?}");
        }
        assert!(!set.primary.contains(PrimaryControls::USE_TPR_SHADOW));
        assert!(!set.primary.contains(PrimaryControls::CR3_LOAD_EXITING));
        // PROCBASED_CTLS2 allowed-1 0x02177fff: EPT (1), RDTSCP (3), VPID (5), unrestricted
        // guest (7), INVPCID (12), XSAVES (20), WBINVD exiting (6).
        assert_eq!(set.secondary.map(|s| s.bits()), Some(0x0010_10ea));
        // TRUE_EXIT 0x007fffff_00036dfb: default-1 0x36dfb, plus host address-space size (9),
        // save/load PAT (18, 19) and EFER (20, 21).
        assert_eq!(set.exit.bits(), 0x003f_6ffb);
        // TRUE_ENTRY 0x0000ffff_000011fb: default-1 0x11fb, plus load PAT (14) and EFER (15).
        assert_eq!(set.entry.bits(), 0xd1fb);
    }

    #[test]
    fn interrupt_window_exiting_is_allowed_and_never_forced() {
        // Required, it fits (Bochs allows primary bit 2: allowed-1 0xf7f9fffe)...
        let mut wanted = Wanted::ATOLL_BASELINE;
        wanted.primary.required |= PrimaryControls::INTERRUPT_WINDOW_EXITING;
        let set = ControlSet::compute(&mut bochs(), &wanted).unwrap();
        assert!(set
            .primary
            .contains(PrimaryControls::INTERRUPT_WINDOW_EXITING));
        // ...and it is not a default-1 bit (SDM Vol. 3D §A.3.2), so clearing it is allowed.
        let set = ControlSet::compute(&mut bochs(), &Wanted::ATOLL_BASELINE).unwrap();
        assert!(!set
            .primary
            .contains(PrimaryControls::INTERRUPT_WINDOW_EXITING));
        assert_eq!(PrimaryControls::INTERRUPT_WINDOW_EXITING.bits(), 1 << 2);
    }

    #[test]
    fn without_true_msrs_the_default_one_bits_are_forced() {
        let mut t = bochs();
        t.set(0x480, 0x0058_1000_0000_002b); // bit 55 clear
        t.remove(0x48D); // the TRUE MSRs must not be read
        t.remove(0x48E);
        t.remove(0x48F);
        t.remove(0x490);
        let set = ControlSet::compute(&mut t, &Wanted::ATOLL_BASELINE).unwrap();
        assert!(!set.true_controls);
        // PROCBASED_CTLS forces CR3-load and CR3-store exiting (bits 15, 16).
        assert!(set
            .primary
            .contains(PrimaryControls::CR3_LOAD_EXITING | PrimaryControls::CR3_STORE_EXITING));
        assert_eq!(set.primary.bits(), 0xb619_edfa);
        // EXIT_CTLS and ENTRY_CTLS force the debug-controls bit 2.
        assert!(set.exit.contains(ExitControls::SAVE_DEBUG_CONTROLS));
        assert!(set.entry.contains(EntryControls::LOAD_DEBUG_CONTROLS));
        assert_eq!(set.exit.bits(), 0x003f_6fff);
        assert_eq!(set.entry.bits(), 0xd1ff);
    }

    /// A processor with VMX but without EPT (early Core 2 class): secondary controls exist and
    /// offer only virtualize-APIC-accesses and descriptor-table exiting.
    fn no_ept() -> MsrTable {
        MsrTable::new(&[
            (0x480, 0x00da_0400_0000_0004),
            (0x481, 0x0000_003f_0000_0016),
            (0x482, 0xfff9_fffe_0401_e172),
            (0x483, 0x003f_ffff_0003_6dff),
            (0x484, 0x0000_ffff_0000_11ff),
            (0x48B, 0x0000_0005_0000_0000),
            (0x48D, 0x0000_003f_0000_0016),
            (0x48E, 0xfff9_fffe_0400_6172),
            (0x48F, 0x003f_ffff_0003_6dfb),
            (0x490, 0x0000_ffff_0000_11fb),
        ])
    }

    #[test]
    fn missing_ept_is_named() {
        let err = ControlSet::compute(&mut no_ept(), &Wanted::ATOLL_BASELINE).unwrap_err();
        assert_eq!(
            err,
            ControlError::Unsupported(Control {
                class: ControlClass::Secondary,
                bit: 1
            })
        );
        assert_eq!(
            err.to_string(),
            "secondary processor-based control 'enable EPT' (bit 1) is not supported by this CPU"
        );
    }

    #[test]
    fn missing_unrestricted_guest_is_named() {
        let mut t = bochs();
        t.set(0x48B, 0x0217_7f7f_0000_0000); // bit 7 (unrestricted guest) not allowed
        let err = ControlSet::compute(&mut t, &Wanted::ATOLL_BASELINE).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secondary processor-based control 'unrestricted guest' (bit 7) is not supported by \
             this CPU"
        );
    }

    #[test]
    fn without_secondary_controls_a_required_one_is_named() {
        let mut t = no_ept();
        t.set(0x48E, 0x7ff9_fffe_0400_6172); // activate secondary controls not allowed
        t.remove(0x48B); // and so must not be read
        let err = ControlSet::compute(&mut t, &Wanted::ATOLL_BASELINE).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secondary processor-based control 'enable EPT' (bit 1) is not supported by this CPU"
        );

        // Only optional secondary controls: they are left out, and so is the activate bit.
        let mut wanted = Wanted::ATOLL_BASELINE;
        wanted.secondary = Want::new(SecondaryControls::empty(), SecondaryControls::ENABLE_VPID);
        let set = ControlSet::compute(&mut t, &wanted).unwrap();
        assert_eq!(set.secondary, None);
        assert!(!set
            .primary
            .contains(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS));
    }

    #[test]
    fn nothing_secondary_wanted_leaves_them_off() {
        let mut wanted = Wanted::ATOLL_BASELINE;
        wanted.secondary = Want::default();
        let set = ControlSet::compute(&mut bochs(), &wanted).unwrap();
        assert_eq!(set.secondary, None);
        assert!(!set
            .primary
            .contains(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS));
    }

    #[test]
    fn required_primary_and_exit_controls_are_named() {
        let mut wanted = Wanted::ATOLL_BASELINE;
        wanted.primary.required |= PrimaryControls::MONITOR_TRAP_FLAG; // Bochs lacks bit 27
        assert_eq!(
            ControlSet::compute(&mut bochs(), &wanted)
                .unwrap_err()
                .to_string(),
            "primary processor-based control 'monitor trap flag' (bit 27) is not supported by \
             this CPU"
        );
        let mut wanted = Wanted::ATOLL_BASELINE;
        wanted.exit.required |= ExitControls::LOAD_CET_STATE; // Bochs allows bits 0..=22 only
        assert_eq!(
            ControlSet::compute(&mut bochs(), &wanted)
                .unwrap_err()
                .to_string(),
            "VM-exit control 'load CET state' (bit 28) is not supported by this CPU"
        );
    }

    #[test]
    fn optional_controls_without_their_prerequisite_are_dropped() {
        let mut t = bochs();
        t.set(0x48D, 0x0000_0077_0000_0016); // NMI exiting (3) not allowed, virtual NMIs (5) is
        let mut wanted = Wanted::ATOLL_BASELINE;
        wanted.pin = Want::new(
            PinBasedControls::EXTERNAL_INTERRUPT_EXITING,
            PinBasedControls::NMI_EXITING | PinBasedControls::VIRTUAL_NMIS,
        );
        wanted.primary.optional |= PrimaryControls::NMI_WINDOW_EXITING;
        let set = ControlSet::compute(&mut t, &wanted).unwrap();
        // virtual NMIs needs NMI exiting, NMI-window exiting needs virtual NMIs: both go.
        assert!(!set.pin.contains(PinBasedControls::VIRTUAL_NMIS));
        assert!(!set.primary.contains(PrimaryControls::NMI_WINDOW_EXITING));
    }

    #[test]
    fn required_controls_without_their_prerequisite_are_named() {
        let mut t = bochs();
        t.set(0x48B, 0x0217_7ffd_0000_0000); // unrestricted guest allowed, EPT (1) not
        let mut wanted = Wanted::ATOLL_BASELINE;
        wanted.secondary = Want::new(
            SecondaryControls::UNRESTRICTED_GUEST,
            SecondaryControls::ENABLE_EPT,
        );
        assert_eq!(
            ControlSet::compute(&mut t, &wanted)
                .unwrap_err()
                .to_string(),
            "secondary processor-based control 'unrestricted guest' (bit 7) requires secondary \
             processor-based control 'enable EPT' (bit 1), which is not supported by this CPU"
        );
        // Optional unrestricted guest is simply dropped.
        wanted.secondary = Want::new(
            SecondaryControls::empty(),
            SecondaryControls::UNRESTRICTED_GUEST | SecondaryControls::ENABLE_EPT,
        );
        let set = ControlSet::compute(&mut t, &wanted).unwrap();
        assert_eq!(set.secondary, Some(SecondaryControls::empty()));
    }

    #[test]
    fn unreadable_msr_is_named() {
        let mut t = bochs();
        t.remove(0x48F);
        assert_eq!(
            ControlSet::compute(&mut t, &Wanted::ATOLL_BASELINE)
                .unwrap_err()
                .to_string(),
            "VMX capability MSR 0x48f cannot be read"
        );
    }

    #[test]
    fn write_puts_each_value_in_its_field() {
        use crate::test_util::FakeVmcs;
        let set = ControlSet::compute(&mut bochs(), &Wanted::ATOLL_BASELINE).unwrap();
        let mut vmcs = FakeVmcs::default();
        set.write(&mut vmcs).unwrap();
        assert_eq!(vmcs.get(0x4000), Some(0x3f));
        assert_eq!(vmcs.get(0x4002), Some(0xb618_6dfa));
        assert_eq!(vmcs.get(0x401E), Some(0x0010_10ea));
        assert_eq!(vmcs.get(0x400C), Some(0x003f_6ffb));
        assert_eq!(vmcs.get(0x4012), Some(0xd1fb));

        let mut wanted = Wanted::ATOLL_BASELINE;
        wanted.secondary = Want::default();
        let set = ControlSet::compute(&mut bochs(), &wanted).unwrap();
        let mut vmcs = FakeVmcs::default();
        set.write(&mut vmcs).unwrap();
        assert_eq!(vmcs.get(0x401E), None);
    }
}
