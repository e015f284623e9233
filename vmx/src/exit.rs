//! Decoding what a VM exit reports.
//!
//! This module owns the exit reason (SDM Vol. 3C §25.9.1; basic reasons from Vol. 3D Appendix C,
//! Table C-1), the exit-qualification formats atoll handles (§28.2.1: control-register access,
//! Table 28-3; I/O instruction, Table 28-5; EPT violation, Table 28-7) and the
//! interruption-information format shared by the VM-entry interruption-information field
//! (§25.8.3), the VM-exit interruption information and the IDT-vectoring information (§25.9.2,
//! §25.9.3). Every decoder is total: any raw value decodes (undefined numbers into `Unknown`
//! variants, undefined encodings into `None`), nothing panics, since these values are produced
//! by guest behaviour.

use crate::regs::Gpr;
use core::fmt;

pub use crate::error::VmInstructionError;

/// Defines [`BasicExitReason`] from Table C-1.
macro_rules! exit_reasons {
    ( $( $number:literal => $variant:ident, $text:literal; )* ) => {
        /// A basic exit reason, bits 15:0 of the exit-reason field (SDM Vol. 3D Appendix C,
        /// Table C-1).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum BasicExitReason {
            $( #[doc = concat!(stringify!($number), ": ", $text, ".")] $variant, )*
            /// A number Table C-1 does not define.
            Unknown(u16),
        }

        impl BasicExitReason {
            /// The reason numbered `number`.
            pub const fn from_number(number: u16) -> Self {
                match number {
                    $( $number => Self::$variant, )*
                    other => Self::Unknown(other),
                }
            }

            /// Its number.
            pub const fn number(self) -> u16 {
                match self {
                    $( Self::$variant => $number, )*
                    Self::Unknown(n) => n,
                }
            }

            /// The SDM's description, `None` for an unknown number.
            pub const fn description(self) -> Option<&'static str> {
                match self {
                    $( Self::$variant => Some($text), )*
                    Self::Unknown(_) => None,
                }
            }
        }
    };
}

exit_reasons! {
    0 => ExceptionOrNmi, "exception or non-maskable interrupt (NMI)";
    1 => ExternalInterrupt, "external interrupt";
    2 => TripleFault, "triple fault";
    3 => InitSignal, "INIT signal";
    4 => StartupIpi, "start-up IPI (SIPI)";
    5 => IoSmi, "I/O system-management interrupt (SMI)";
    6 => OtherSmi, "other SMI";
    7 => InterruptWindow, "interrupt window";
    8 => NmiWindow, "NMI window";
    9 => TaskSwitch, "task switch";
    10 => Cpuid, "CPUID";
    11 => Getsec, "GETSEC";
    12 => Hlt, "HLT";
    13 => Invd, "INVD";
    14 => Invlpg, "INVLPG";
    15 => Rdpmc, "RDPMC";
    16 => Rdtsc, "RDTSC";
    17 => Rsm, "RSM";
    18 => Vmcall, "VMCALL";
    19 => Vmclear, "VMCLEAR";
    20 => Vmlaunch, "VMLAUNCH";
    21 => Vmptrld, "VMPTRLD";
    22 => Vmptrst, "VMPTRST";
    23 => Vmread, "VMREAD";
    24 => Vmresume, "VMRESUME";
    25 => Vmwrite, "VMWRITE";
    26 => Vmxoff, "VMXOFF";
    27 => Vmxon, "VMXON";
    28 => ControlRegisterAccess, "control-register access";
    29 => MovDr, "MOV DR";
    30 => IoInstruction, "I/O instruction";
    31 => Rdmsr, "RDMSR";
    32 => Wrmsr, "WRMSR";
    33 => EntryFailureInvalidGuestState, "VM-entry failure due to invalid guest state";
    34 => EntryFailureMsrLoading, "VM-entry failure due to MSR loading";
    36 => Mwait, "MWAIT";
    37 => MonitorTrapFlag, "monitor trap flag";
    39 => Monitor, "MONITOR";
    40 => Pause, "PAUSE";
    41 => EntryFailureMachineCheck, "VM-entry failure due to machine-check event";
    43 => TprBelowThreshold, "TPR below threshold";
    44 => ApicAccess, "APIC access";
    45 => VirtualizedEoi, "virtualized EOI";
    46 => GdtrIdtrAccess, "access to GDTR or IDTR";
    47 => LdtrTrAccess, "access to LDTR or TR";
    48 => EptViolation, "EPT violation";
    49 => EptMisconfiguration, "EPT misconfiguration";
    50 => Invept, "INVEPT";
    51 => Rdtscp, "RDTSCP";
    52 => PreemptionTimerExpired, "VMX-preemption timer expired";
    53 => Invvpid, "INVVPID";
    54 => Wbinvd, "WBINVD or WBNOINVD";
    55 => Xsetbv, "XSETBV";
    56 => ApicWrite, "APIC write";
    57 => Rdrand, "RDRAND";
    58 => Invpcid, "INVPCID";
    59 => Vmfunc, "VMFUNC";
    60 => Encls, "ENCLS";
    61 => Rdseed, "RDSEED";
    62 => PageModificationLogFull, "page-modification log full";
    63 => Xsaves, "XSAVES";
    64 => Xrstors, "XRSTORS";
    65 => Pconfig, "PCONFIG";
    66 => SppRelatedEvent, "SPP-related event";
    67 => Umwait, "UMWAIT";
    68 => Tpause, "TPAUSE";
    69 => Loadiwkey, "LOADIWKEY";
    70 => Enclv, "ENCLV";
    72 => EnqcmdPasidTranslationFailure, "ENQCMD PASID translation failure";
    73 => EnqcmdsPasidTranslationFailure, "ENQCMDS PASID translation failure";
    74 => BusLock, "bus lock";
    75 => InstructionTimeout, "instruction timeout";
    76 => Seamcall, "SEAMCALL";
    77 => Tdcall, "TDCALL";
    78 => Rdmsrlist, "RDMSRLIST";
    79 => Wrmsrlist, "WRMSRLIST";
}

impl BasicExitReason {
    /// The basic reason in an exit-reason field value (its bits 15:0; the flag bits are
    /// ignored, see [`ExitReason`]).
    pub const fn from_raw(exit_reason_field: u32) -> Self {
        Self::from_number(exit_reason_field as u16)
    }
}

impl fmt::Display for BasicExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(text) => write!(f, "{text} (exit reason {})", self.number()),
            None => write!(f, "unknown exit reason {}", self.number()),
        }
    }
}

/// The exit-reason field, decoded (SDM Vol. 3C §25.9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitReason {
    /// Bits 15:0.
    pub basic: BasicExitReason,
    /// Bit 26: a bus lock was asserted ("VMM bus-lock detection").
    pub bus_lock: bool,
    /// Bit 27: the exit happened in enclave mode.
    pub enclave_mode: bool,
    /// Bit 28: a pending MTF VM exit (SMM dual-monitor only).
    pub pending_mtf: bool,
    /// Bit 29: the exit came from VMX root operation (SMM dual-monitor only).
    pub from_vmx_root: bool,
    /// Bit 31: VM entry failed (the guest never ran; basic reason 33, 34 or 41).
    pub entry_failure: bool,
}

impl ExitReason {
    /// Decodes the exit-reason field; never fails.
    pub const fn from_raw(raw: u32) -> Self {
        Self {
            basic: BasicExitReason::from_raw(raw),
            bus_lock: raw & (1 << 26) != 0,
            enclave_mode: raw & (1 << 27) != 0,
            pending_mtf: raw & (1 << 28) != 0,
            from_vmx_root: raw & (1 << 29) != 0,
            entry_failure: raw & (1 << 31) != 0,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entry_failure {
            write!(f, "VM-entry failure: ")?;
        }
        self.basic.fmt(f)
    }
}

/// How a control register was accessed (Table 28-3, bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrAccessType {
    /// 0: MOV to CR.
    MovToCr,
    /// 1: MOV from CR.
    MovFromCr,
    /// 2: CLTS.
    Clts,
    /// 3: LMSW.
    Lmsw,
}

/// Exit qualification for control-register accesses (SDM Vol. 3C §28.2.1, Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrAccess {
    /// Bits 3:0: the control register (0 for CLTS and LMSW; 0, 3, 4 or 8 for MOV).
    pub cr: u8,
    /// Bits 5:4.
    pub access: CrAccessType,
    /// Bit 6, LMSW only: the operand was in memory (otherwise a register).
    pub lmsw_memory_operand: bool,
    /// Bits 11:8, MOV only: the general-purpose register moved to or from.
    pub gpr: Gpr,
    /// Bits 31:16, LMSW only: the source data.
    pub lmsw_source: u16,
}

impl CrAccess {
    /// Decodes the exit qualification; every value decodes.
    pub const fn from_qualification(q: u64) -> Self {
        Self {
            cr: (q & 0xf) as u8,
            access: match (q >> 4) & 3 {
                0 => CrAccessType::MovToCr,
                1 => CrAccessType::MovFromCr,
                2 => CrAccessType::Clts,
                _ => CrAccessType::Lmsw,
            },
            lmsw_memory_operand: q & (1 << 6) != 0,
            gpr: Gpr::from_low_bits(q >> 8),
            lmsw_source: (q >> 16) as u16,
        }
    }
}

/// Size of an I/O access (Table 28-5, bits 2:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoSize {
    /// 0: 1 byte.
    Byte,
    /// 1: 2 bytes.
    Word,
    /// 3: 4 bytes.
    Dword,
}

impl IoSize {
    /// Bytes per access.
    pub const fn bytes(self) -> u8 {
        match self {
            Self::Byte => 1,
            Self::Word => 2,
            Self::Dword => 4,
        }
    }
}

/// Direction of an I/O access (Table 28-5, bit 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoDirection {
    /// 0: OUT (guest writes the port).
    Out,
    /// 1: IN (guest reads the port).
    In,
}

/// Exit qualification for I/O instructions (SDM Vol. 3C §28.2.1, Table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoAccess {
    /// Bits 2:0.
    pub size: IoSize,
    /// Bit 3.
    pub direction: IoDirection,
    /// Bit 4: INS/OUTS.
    pub string: bool,
    /// Bit 5: REP prefixed.
    pub rep: bool,
    /// Bit 6: the port was an immediate operand (otherwise DX).
    pub immediate_operand: bool,
    /// Bits 31:16.
    pub port: u16,
}

impl IoAccess {
    /// Decodes the exit qualification; `None` when the size field holds a value Table 28-5
    /// leaves undefined (2, 4–7), which a processor does not report.
    pub const fn from_qualification(q: u64) -> Option<Self> {
        let size = match q & 7 {
            0 => IoSize::Byte,
            1 => IoSize::Word,
            3 => IoSize::Dword,
            _ => return None,
        };
        Some(Self {
            size,
            direction: if q & (1 << 3) != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            immediate_operand: q & (1 << 6) != 0,
            port: (q >> 16) as u16,
        })
    }
}

/// Exit qualification for EPT violations (SDM Vol. 3C §28.2.1, Table 28-7). The faulting
/// guest-physical address is in the VMCS field `GuestPhysicalAddress`, the linear address (when
/// `linear_address_valid`) in `GuestLinearAddress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EptViolation {
    /// Bit 0: the access was a data read.
    pub read: bool,
    /// Bit 1: the access was a data write.
    pub write: bool,
    /// Bit 2: the access was an instruction fetch.
    pub fetch: bool,
    /// Bit 3: the guest-physical address was readable (AND of bit 0 of the EPT entries used).
    pub readable: bool,
    /// Bit 4: it was writable.
    pub writable: bool,
    /// Bit 5: it was executable (for supervisor-mode linear addresses, with mode-based
    /// execute control).
    pub executable: bool,
    /// Bit 6: it was executable for user-mode linear addresses (mode-based execute control
    /// only; otherwise undefined).
    pub user_executable: bool,
    /// Bit 7: the guest-linear-address field is valid.
    pub linear_address_valid: bool,
    /// Bit 8, meaningful when `linear_address_valid`: the access was to the translation of the
    /// linear address (otherwise to a guest paging-structure entry).
    pub linear_address_translated: bool,
    /// Bit 12: the violation happened while IRET unblocked NMIs (with virtual NMIs, the
    /// handler must re-block NMIs before re-entering, SDM §28.2.3).
    pub nmi_unblocking: bool,
}

impl EptViolation {
    /// Decodes the exit qualification; every value decodes.
    pub const fn from_qualification(q: u64) -> Self {
        Self {
            read: q & (1 << 0) != 0,
            write: q & (1 << 1) != 0,
            fetch: q & (1 << 2) != 0,
            readable: q & (1 << 3) != 0,
            writable: q & (1 << 4) != 0,
            executable: q & (1 << 5) != 0,
            user_executable: q & (1 << 6) != 0,
            linear_address_valid: q & (1 << 7) != 0,
            linear_address_translated: q & (1 << 8) != 0,
            nmi_unblocking: q & (1 << 12) != 0,
        }
    }

    /// Whether the guest-physical address was not mapped at all (no read, write or execute
    /// permission): an access outside the partition's memory rather than a protection fault.
    pub const fn not_present(&self) -> bool {
        !(self.readable || self.writable || self.executable)
    }
}

/// Interruption type (SDM Vol. 3C §25.8.3, bits 10:8 of the interruption-information format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptionType {
    /// 0: external interrupt.
    ExternalInterrupt,
    /// 1: reserved.
    Reserved,
    /// 2: non-maskable interrupt.
    Nmi,
    /// 3: hardware exception (faults, traps and aborts other than #BP and #OF).
    HardwareException,
    /// 4: software interrupt (INT n).
    SoftwareInterrupt,
    /// 5: privileged software exception (INT1).
    PrivilegedSoftwareException,
    /// 6: software exception (INT3, INTO).
    SoftwareException,
    /// 7: other event (pending MTF VM exit on injection).
    OtherEvent,
}

impl InterruptionType {
    /// The type numbered by the low three bits of `n`.
    pub const fn from_low_bits(n: u32) -> Self {
        match n & 7 {
            0 => Self::ExternalInterrupt,
            1 => Self::Reserved,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            _ => Self::OtherEvent,
        }
    }

    /// Whether injecting an event of this type uses the VM-entry instruction-length field:
    /// software interrupts and software exceptions, privileged or not (types 4, 5, 6; SDM Vol.
    /// 3C §25.8.3, §27.6.1.1), whose delivery pushes the address after the instruction.
    pub const fn uses_instruction_length(self) -> bool {
        matches!(
            self,
            Self::SoftwareInterrupt | Self::PrivilegedSoftwareException | Self::SoftwareException
        )
    }

    /// Its number.
    pub const fn number(self) -> u32 {
        match self {
            Self::ExternalInterrupt => 0,
            Self::Reserved => 1,
            Self::Nmi => 2,
            Self::HardwareException => 3,
            Self::SoftwareInterrupt => 4,
            Self::PrivilegedSoftwareException => 5,
            Self::SoftwareException => 6,
            Self::OtherEvent => 7,
        }
    }
}

/// The interruption-information format (SDM Vol. 3C §25.8.3 for injection, §25.9.2 for VM-exit
/// interruption information, §25.9.3 for IDT-vectoring information).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterruptionInfo {
    /// Bits 7:0: the vector.
    pub vector: u8,
    /// Bits 10:8.
    pub kind: InterruptionType,
    /// Bit 11: an error code is delivered (injection) or was pushed (exit); it is in the
    /// matching error-code field.
    pub error_code_valid: bool,
    /// Bit 12, exit information only: NMI unblocking due to IRET.
    pub nmi_unblocking: bool,
    /// Bit 31: the field holds an event.
    pub valid: bool,
}

impl InterruptionInfo {
    /// Decodes the field; every value decodes (reserved bits 30:13 are ignored).
    pub const fn from_raw(raw: u32) -> Self {
        Self {
            vector: raw as u8,
            kind: InterruptionType::from_low_bits(raw >> 8),
            error_code_valid: raw & (1 << 11) != 0,
            nmi_unblocking: raw & (1 << 12) != 0,
            valid: raw & (1 << 31) != 0,
        }
    }

    /// Encodes the field, e.g. for the VM-entry interruption-information field.
    pub const fn to_raw(self) -> u32 {
        self.vector as u32
            | (self.kind.number() << 8)
            | ((self.error_code_valid as u32) << 11)
            | ((self.nmi_unblocking as u32) << 12)
            | ((self.valid as u32) << 31)
    }

    /// A valid event of `kind` with `vector`.
    pub const fn event(kind: InterruptionType, vector: u8, error_code_valid: bool) -> Self {
        Self {
            vector,
            kind,
            error_code_valid,
            nmi_unblocking: false,
            valid: true,
        }
    }

    /// An external interrupt with `vector`, for injection.
    pub const fn external_interrupt(vector: u8) -> Self {
        Self::event(InterruptionType::ExternalInterrupt, vector, false)
    }

    /// An NMI (vector 2), for injection.
    pub const fn nmi() -> Self {
        Self::event(InterruptionType::Nmi, 2, false)
    }

    /// A hardware exception, for injection; `error_code` says whether it delivers one (#DF, #TS,
    /// #NP, #SS, #GP, #PF, #AC do; the VMCS field VM-entry exception error code holds it).
    pub const fn hardware_exception(vector: u8, error_code: bool) -> Self {
        Self::event(InterruptionType::HardwareException, vector, error_code)
    }
}

/// An event whose delivery a VM exit interrupted, ready to be injected again at the next VM
/// entry (SDM Vol. 3C §28.2.4 "Information for VM Exits That Occur During Event Delivery",
/// §27.6 "Event Injection"). The IDT-vectoring information field (§25.9.3) describes the event;
/// copying it into the VM-entry fields delivers it as if the exit had not happened: the
/// processor does not do this on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Redelivery {
    /// For the VM-entry interruption-information field: the event, valid, with bits 30:12
    /// clear (bit 12 is undefined in IDT-vectoring information and reserved on entry,
    /// §27.2.1.3).
    pub info: InterruptionInfo,
    /// For the VM-entry exception error-code field, when the event delivers one.
    pub error_code: Option<u32>,
    /// For the VM-entry instruction-length field, for software interrupts and exceptions
    /// (types 4–6): the VM-exit instruction length, which the processor saves for exits
    /// during their delivery (§28.2.5).
    pub instruction_length: Option<u32>,
}

impl Redelivery {
    /// The event to re-inject from the IDT-vectoring information field `idt_vectoring_info`,
    /// the IDT-vectoring error code and the VM-exit instruction length read after an exit;
    /// `None` when the field is not valid (the exit did not interrupt an event delivery).
    pub const fn from_idt_vectoring(
        idt_vectoring_info: u32,
        idt_vectoring_error_code: u32,
        exit_instruction_length: u32,
    ) -> Option<Self> {
        let raw = InterruptionInfo::from_raw(idt_vectoring_info);
        if !raw.valid {
            return None;
        }
        let info = InterruptionInfo {
            nmi_unblocking: false,
            ..raw
        };
        Some(Self {
            info,
            error_code: if info.error_code_valid {
                Some(idt_vectoring_error_code)
            } else {
                None
            },
            instruction_length: if info.kind.uses_instruction_length() {
                Some(exit_instruction_length)
            } else {
                None
            },
        })
    }
}

/// DR6 after a debug exception (#DB) that caused a VM exit instead of being delivered (SDM Vol.
/// 3C §28.1: such an exit leaves DR6 unchanged, and the exit qualification, Table 28-1, says
/// what the exception would have written). `dr6` is the guest's DR6 before the exception,
/// `qualification` the exit qualification: B0–B3 (bits 3:0), BD (13) and BS (14) are set in DR6
/// as the processor sets them (they are sticky, SDM Vol. 3B §18.2.3: never cleared by the
/// processor); bit 16 of the qualification says the exception arose inside an RTM region, which
/// DR6 reports by *clearing* its bit 16 (RTM, active low). Reflecting the #DB to the guest with
/// this DR6 gives it what a processor without the interception would have.
pub const fn dr6_after_debug_exit(dr6: u64, qualification: u64) -> u64 {
    const TRAP_BITS: u64 = 0xf | (1 << 13) | (1 << 14);
    const RTM: u64 = 1 << 16;
    let mut v = dr6 | (qualification & TRAP_BITS);
    if qualification & RTM != 0 {
        v &= !RTM;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reason_numbers_match_table_c1() {
        let samples = [
            (0, BasicExitReason::ExceptionOrNmi),
            (1, BasicExitReason::ExternalInterrupt),
            (2, BasicExitReason::TripleFault),
            (3, BasicExitReason::InitSignal),
            (4, BasicExitReason::StartupIpi),
            (7, BasicExitReason::InterruptWindow),
            (10, BasicExitReason::Cpuid),
            (12, BasicExitReason::Hlt),
            (18, BasicExitReason::Vmcall),
            (28, BasicExitReason::ControlRegisterAccess),
            (30, BasicExitReason::IoInstruction),
            (31, BasicExitReason::Rdmsr),
            (32, BasicExitReason::Wrmsr),
            (33, BasicExitReason::EntryFailureInvalidGuestState),
            (34, BasicExitReason::EntryFailureMsrLoading),
            (41, BasicExitReason::EntryFailureMachineCheck),
            (48, BasicExitReason::EptViolation),
            (49, BasicExitReason::EptMisconfiguration),
            (52, BasicExitReason::PreemptionTimerExpired),
            (55, BasicExitReason::Xsetbv),
            (74, BasicExitReason::BusLock),
            (77, BasicExitReason::Tdcall),
        ];
        for (n, reason) in samples {
            assert_eq!(BasicExitReason::from_number(n), reason);
            assert_eq!(reason.number(), n);
        }
    }

    #[test]
    fn every_raw_value_decodes_and_round_trips() {
        for n in 0..=u16::MAX {
            let r = BasicExitReason::from_number(n);
            assert_eq!(r.number(), n);
            let _ = r.to_string();
        }
        // The numbers Table C-1 skips.
        for n in [35, 38, 42, 71, 80, 1000, u16::MAX] {
            assert_eq!(BasicExitReason::from_number(n), BasicExitReason::Unknown(n));
        }
        assert_eq!(
            BasicExitReason::from_number(35).to_string(),
            "unknown exit reason 35"
        );
    }

    #[test]
    fn exit_reason_field_splits_the_entry_failure_bit() {
        // VM-entry failure due to invalid guest state: 0x80000021.
        let r = ExitReason::from_raw(0x8000_0021);
        assert!(r.entry_failure);
        assert_eq!(r.basic, BasicExitReason::EntryFailureInvalidGuestState);
        assert_eq!(
            BasicExitReason::from_raw(0x8000_0021),
            BasicExitReason::EntryFailureInvalidGuestState
        );
        assert_eq!(
            r.to_string(),
            "VM-entry failure: VM-entry failure due to invalid guest state (exit reason 33)"
        );
        let r = ExitReason::from_raw(30);
        assert!(!r.entry_failure && !r.from_vmx_root && !r.pending_mtf && !r.enclave_mode);
        assert_eq!(r.basic, BasicExitReason::IoInstruction);
        let r = ExitReason::from_raw(0x3c00_0000 | 48);
        assert!(r.bus_lock && r.enclave_mode && r.pending_mtf && r.from_vmx_root);
        assert!(!r.entry_failure);
        assert_eq!(r.basic, BasicExitReason::EptViolation);
        let _ = ExitReason::from_raw(u32::MAX).to_string();
    }

    #[test]
    fn cr_access_qualifications() {
        // mov cr3, rbx: CR 3, type 0, GPR 3 -> 0x303.
        let q = CrAccess::from_qualification(0x303);
        assert_eq!(q.cr, 3);
        assert_eq!(q.access, CrAccessType::MovToCr);
        assert_eq!(q.gpr, Gpr::Rbx);
        // mov r12, cr8: CR 8, type 1 (0x10), GPR 12 (0xc00) -> 0xc18.
        let q = CrAccess::from_qualification(0xc18);
        assert_eq!(
            (q.cr, q.access, q.gpr),
            (8, CrAccessType::MovFromCr, Gpr::R12)
        );
        // clts: type 2 -> 0x20.
        assert_eq!(
            CrAccess::from_qualification(0x20).access,
            CrAccessType::Clts
        );
        // lmsw ax with AX = 0x0011 -> type 3 (0x30), register operand, source 0x0011 << 16.
        let q = CrAccess::from_qualification(0x0011_0030);
        assert_eq!(q.access, CrAccessType::Lmsw);
        assert!(!q.lmsw_memory_operand);
        assert_eq!(q.lmsw_source, 0x0011);
        // lmsw [mem] with source 0xfffe: memory operand bit 6 -> 0xfffe0070.
        let q = CrAccess::from_qualification(0xfffe_0070);
        assert!(q.lmsw_memory_operand);
        assert_eq!(q.lmsw_source, 0xfffe);
        // Reserved bits set never panic.
        let _ = CrAccess::from_qualification(u64::MAX);
    }

    #[test]
    fn io_qualifications() {
        // out 0x3f8, al: size 0, OUT, DX operand, port 0x3f8 -> 0x03f80000.
        let q = IoAccess::from_qualification(0x03f8_0000).unwrap();
        assert_eq!(q.size, IoSize::Byte);
        assert_eq!(q.direction, IoDirection::Out);
        assert_eq!(q.port, 0x3f8);
        assert!(!q.string && !q.rep && !q.immediate_operand);
        // in eax, 0x71: size 3, IN (0x8), immediate (0x40), port 0x71 -> 0x0071004b.
        let q = IoAccess::from_qualification(0x0071_004b).unwrap();
        assert_eq!(q.size.bytes(), 4);
        assert_eq!(q.direction, IoDirection::In);
        assert!(q.immediate_operand);
        assert_eq!(q.port, 0x71);
        // rep outsw to 0xcfc: size 1, OUT, string (0x10), rep (0x20) -> 0x0cfc0031.
        let q = IoAccess::from_qualification(0x0cfc_0031).unwrap();
        assert_eq!(q.size, IoSize::Word);
        assert!(q.string && q.rep);
        assert_eq!(q.port, 0xcfc);
        // Undefined sizes.
        assert_eq!(IoAccess::from_qualification(0x2), None);
        assert_eq!(IoAccess::from_qualification(0x7), None);
        assert_eq!(IoAccess::from_qualification(u64::MAX), None);
    }

    #[test]
    fn ept_violation_qualifications() {
        // A write to an unmapped page through a linear address: write (0x2), linear valid and
        // translated (0x180) -> 0x182.
        let q = EptViolation::from_qualification(0x182);
        assert!(q.write && !q.read && !q.fetch);
        assert!(q.not_present());
        assert!(q.linear_address_valid && q.linear_address_translated);
        assert!(!q.nmi_unblocking);
        // A write to a read/execute page (readable 0x8, executable 0x20), NMI unblocking
        // (0x1000), while walking guest paging structures (0x80 without 0x100) -> 0x10aa.
        let q = EptViolation::from_qualification(0x10aa);
        assert!(q.write && q.readable && q.executable && !q.writable);
        assert!(!q.not_present());
        assert!(q.linear_address_valid && !q.linear_address_translated);
        assert!(q.nmi_unblocking);
        // An instruction fetch from a readable/writable page: fetch (0x4), R (0x8), W (0x10).
        let q = EptViolation::from_qualification(0x1c);
        assert!(q.fetch && q.readable && q.writable && !q.executable);
        assert!(!q.linear_address_valid);
        let _ = EptViolation::from_qualification(u64::MAX);
    }

    #[test]
    fn interruption_information() {
        // #PF with error code, valid: vector 14, type 3 (0x300), error code (0x800), valid.
        let i = InterruptionInfo::from_raw(0x8000_0b0e);
        assert_eq!(i.vector, 14);
        assert_eq!(i.kind, InterruptionType::HardwareException);
        assert!(i.error_code_valid && i.valid && !i.nmi_unblocking);
        assert_eq!(
            InterruptionInfo::hardware_exception(14, true).to_raw(),
            0x8000_0b0e
        );
        // External interrupt 0x20 acknowledged on exit: 0x80000020.
        let i = InterruptionInfo::from_raw(0x8000_0020);
        assert_eq!(
            (i.kind, i.vector),
            (InterruptionType::ExternalInterrupt, 0x20)
        );
        assert_eq!(
            InterruptionInfo::external_interrupt(0x20).to_raw(),
            0x8000_0020
        );
        // NMI: vector 2, type 2 -> 0x80000202; with NMI unblocking (0x1000).
        assert_eq!(InterruptionInfo::nmi().to_raw(), 0x8000_0202);
        let i = InterruptionInfo::from_raw(0x8000_1202);
        assert_eq!(i.kind, InterruptionType::Nmi);
        assert!(i.nmi_unblocking);
        // Software interrupt int 0x80: type 4 -> 0x80000480.
        assert_eq!(
            InterruptionInfo::from_raw(0x8000_0480).kind,
            InterruptionType::SoftwareInterrupt
        );
        // int3: type 6 vector 3; INT1: type 5 vector 1; other event type 7.
        assert_eq!(
            InterruptionInfo::from_raw(0x8000_0603).kind,
            InterruptionType::SoftwareException
        );
        assert_eq!(
            InterruptionInfo::from_raw(0x8000_0501).kind,
            InterruptionType::PrivilegedSoftwareException
        );
        assert_eq!(
            InterruptionInfo::from_raw(0x700).kind,
            InterruptionType::OtherEvent
        );
        assert_eq!(
            InterruptionInfo::from_raw(0x100).kind,
            InterruptionType::Reserved
        );
        // Invalid field.
        assert!(!InterruptionInfo::from_raw(0).valid);
        // Only types 4-6 use the VM-entry instruction length.
        for n in 0..8 {
            assert_eq!(
                InterruptionType::from_low_bits(n).uses_instruction_length(),
                (4..=6).contains(&n)
            );
        }
        // Round trip of every type and flag combination.
        for raw in (0..0x2000u32).step_by(0x7f).chain([0x8000_1fff]) {
            assert_eq!(InterruptionInfo::from_raw(raw).to_raw(), raw);
        }
    }

    #[test]
    fn redelivery_of_interrupted_events() {
        // Nothing was being delivered.
        assert_eq!(Redelivery::from_idt_vectoring(0, 0, 0), None);
        assert_eq!(Redelivery::from_idt_vectoring(0x0000_0b0e, 6, 3), None);
        // An external interrupt 0x30 interrupted by an EPT violation on the guest's IDT:
        // re-injected as is, no error code, no length.
        let r = Redelivery::from_idt_vectoring(0x8000_0030, 0xdead, 7).unwrap();
        assert_eq!(r.info, InterruptionInfo::external_interrupt(0x30));
        assert_eq!(r.info.to_raw(), 0x8000_0030);
        assert_eq!((r.error_code, r.instruction_length), (None, None));
        // #PF with error code 6: the error code follows, no length.
        let r = Redelivery::from_idt_vectoring(0x8000_0b0e, 6, 4).unwrap();
        assert_eq!(r.info.to_raw(), 0x8000_0b0e);
        assert_eq!((r.error_code, r.instruction_length), (Some(6), None));
        // INT 0x80 (type 4), a two-byte instruction: the length follows.
        let r = Redelivery::from_idt_vectoring(0x8000_0480, 0, 2).unwrap();
        assert_eq!(r.info.kind, InterruptionType::SoftwareInterrupt);
        assert_eq!((r.error_code, r.instruction_length), (None, Some(2)));
        // INT3 (type 6) and INT1 (type 5), one byte each.
        let r = Redelivery::from_idt_vectoring(0x8000_0603, 0, 1).unwrap();
        assert_eq!(r.instruction_length, Some(1));
        let r = Redelivery::from_idt_vectoring(0x8000_0501, 0, 1).unwrap();
        assert_eq!(r.instruction_length, Some(1));
        // NMI with the undefined bit 12 and reserved bits 30:13 set: they are not copied
        // (bits 30:12 must be 0 on VM entry).
        let r = Redelivery::from_idt_vectoring(0xffff_f202, 0, 0).unwrap();
        assert_eq!(r.info, InterruptionInfo::nmi());
        assert_eq!(r.info.to_raw(), 0x8000_0202);
        // Any value decodes without panicking, and the result is always an enterable word.
        for raw in (0..=u32::MAX).step_by(0x0101_0101 / 7) {
            if let Some(r) = Redelivery::from_idt_vectoring(raw, 1, 15) {
                assert_eq!(r.info.to_raw() & 0x7fff_f000, 0);
                assert_eq!(r.info.to_raw() & 0xfff, raw & 0xfff);
            }
        }
    }

    #[test]
    fn debug_exit_sets_the_dr6_bits_the_exception_would_have() {
        // DR6's reset value 0xFFFF0FF0: single step (BS) and breakpoint 2 hit.
        assert_eq!(
            dr6_after_debug_exit(0xffff_0ff0, (1 << 14) | 0b100),
            0xffff_4ff4
        );
        // BD (general detect) alone; bits already set stay set (sticky).
        assert_eq!(dr6_after_debug_exit(0xffff_0ff1, 1 << 13), 0xffff_2ff1);
        // Inside an RTM region: DR6.RTM (bit 16) clears.
        assert_eq!(
            dr6_after_debug_exit(0xffff_0ff0, (1 << 16) | 1),
            0xfffe_0ff1
        );
        // Qualification bits outside the defined ones are ignored; a zero one (INT1) changes
        // nothing.
        assert_eq!(
            dr6_after_debug_exit(0xffff_0ff0, 0xffff_0000_0000_9ff0),
            0xffff_0ff0
        );
        assert_eq!(dr6_after_debug_exit(0xffff_0ff0, 0), 0xffff_0ff0);
    }
}
