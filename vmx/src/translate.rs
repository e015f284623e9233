//! VM-exit translation: the exit-information fields of a VMCS (SDM Vol. 3C §25.9), read through
//! [`VmcsAccess`], turned into atoll's vendor-neutral [`Exit`] and the bookkeeping the backend
//! owes the processor before the next entry (an interrupted event to deliver again, DR6 for an
//! intercepted #DB, …).
//!
//! [`translate`] only reads; hardware is behind the trait (`instructions::CurrentVmcs` on the
//! target, a table in tests), so every exit atoll handles is tested on the host. A failed VMREAD
//! is a [`TranslateError`] naming the field, never a 0 that would decode as a different exit
//! (basic reason 0 is "exception or NMI").

use crate::error::VmFail;
use crate::exit::{
    BasicExitReason, CrAccess, CrAccessType, EptViolation, InterruptionInfo, InterruptionType,
    IoAccess, IoDirection, Redelivery,
};
use crate::fields::{Field, Field32, Field64, FieldNatural, VmcsAccess};
use atoll_vcpu::{Access, Exit};
use boot::GuestPhysAddr;
use core::fmt;

/// A VMREAD of the exit information failed: the exit cannot be known, so the vCPU must not be
/// entered again (the backend ends the enclave with this).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslateError {
    /// The field whose read failed.
    pub field: Field,
    /// How VMREAD failed (VMfailValid 12, "unsupported VMCS component", for a field the
    /// processor lacks; VMfailInvalid without a current VMCS).
    pub error: VmFail,
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VMREAD of ")?;
        write_field(f, self.field)?;
        write!(f, " failed: {}", self.error)
    }
}

impl core::error::Error for TranslateError {}

/// Writes a field as its name and encoding, e.g. `ExitQualification (0x6400)`.
pub fn write_field(f: &mut fmt::Formatter<'_>, field: Field) -> fmt::Result {
    match field {
        Field::Field16(x) => write!(f, "{x:?}"),
        Field::Field32(x) => write!(f, "{x:?}"),
        Field::Field64(x) => write!(f, "{x:?}"),
        Field::FieldNatural(x) => write!(f, "{x:?}"),
    }?;
    write!(f, " ({:#06x})", field.encoding())
}

/// What the backend does after an exit, besides handling [`VmxExit::exit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowUp {
    /// An intercepted #DB: the exception did not update DR6 (SDM Vol. 3C §28.1); the guest's
    /// DR6 becomes `exit::dr6_after_debug_exit(dr6, qualification)` before it is reflected.
    pub debug_qualification: Option<u64>,
    /// INT1 (ICEBP) exited as a privileged software exception: RIP still points at it, and the
    /// #DB it raises is a trap, so RIP moves past it (by the instruction length) before the #DB
    /// is reflected as a hardware exception.
    pub step_over_int1: bool,
    /// An EPT violation hit while the guest's IRET lifted NMI blocking, and no event is being
    /// re-delivered: with virtual NMIs the backend sets "blocking by NMI" again, since the IRET
    /// executes once more (SDM Vol. 3C §28.2.3).
    pub reblock_nmi: bool,
}

/// One VM exit, translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxExit {
    /// The exit, vendor-neutral.
    pub exit: Exit,
    /// The exit-reason field as read.
    pub raw_reason: u32,
    /// Its bit 31: VM entry failed, the guest never ran.
    pub entry_failure: bool,
    /// The VM-exit instruction length (SDM Vol. 3C §25.9.4): how far `skip_instruction` moves
    /// RIP. Meaningful for instruction exits; read for every exit (it is also the length of an
    /// interrupted software event, §28.2.5).
    pub instruction_length: u32,
    /// The event whose delivery this exit interrupted, to be injected again at the next entry
    /// (none after a failed entry: no event was being delivered).
    pub redelivery: Option<Redelivery>,
    /// The bookkeeping the exit asks for.
    pub follow_up: FollowUp,
}

fn read32(vmcs: &mut impl VmcsAccess, field: Field32) -> Result<u32, TranslateError> {
    vmcs.read32(field).map_err(|error| TranslateError {
        field: field.into(),
        error,
    })
}

fn read64(vmcs: &mut impl VmcsAccess, field: Field64) -> Result<u64, TranslateError> {
    vmcs.read64(field).map_err(|error| TranslateError {
        field: field.into(),
        error,
    })
}

fn read_natural(vmcs: &mut impl VmcsAccess, field: FieldNatural) -> Result<u64, TranslateError> {
    vmcs.read_natural(field).map_err(|error| TranslateError {
        field: field.into(),
        error,
    })
}

fn qualification(vmcs: &mut impl VmcsAccess) -> Result<u64, TranslateError> {
    read_natural(vmcs, FieldNatural::ExitQualification)
}

/// Reads the exit information of the last VM exit from `vmcs` and translates it: its
/// exit-reason field ([`exit_reason`]), then [`translate_reason`].
#[inline(always)]
pub fn translate(vmcs: &mut impl VmcsAccess) -> Result<VmxExit, TranslateError> {
    let raw = exit_reason(vmcs)?;
    translate_reason(vmcs, raw)
}

/// The last VM exit's exit-reason field (SDM Vol. 3C §25.9.1), raw.
#[inline(always)]
pub fn exit_reason(vmcs: &mut impl VmcsAccess) -> Result<u32, TranslateError> {
    read32(vmcs, Field32::ExitReason)
}

/// [`translate`] for a caller that has read the exit-reason field already (`raw`: the backend,
/// whose CPUID fast path looks at it first). Reads only the fields the exit reason makes
/// meaningful (each VMREAD costs an exit's worth of time in an emulator), and no field after
/// the first failed read. Inlined into the backend's run loop, whose cost per exit is a
/// measured figure.
#[inline(always)]
pub fn translate_reason(vmcs: &mut impl VmcsAccess, raw: u32) -> Result<VmxExit, TranslateError> {
    // Only the basic reason and bit 31 (VM-entry failure) matter here (§25.9.1); the other flag
    // bits are not decoded on every exit.
    let basic = BasicExitReason::from_raw(raw);
    let entry_failure = raw & (1 << 31) != 0;
    let instruction_length = read32(vmcs, Field32::VmExitInstructionLength)?;
    // IDT-vectoring information is valid only for exits during event delivery; a failed entry
    // delivered nothing (SDM Vol. 3C §28.2.4, §27.8).
    // Valid is bit 31, "error code valid" bit 11 (§25.9.3); tested directly, since most exits
    // interrupt no event and this runs on every exit.
    let redelivery = if entry_failure {
        None
    } else {
        let info = read32(vmcs, Field32::IdtVectoringInformation)?;
        if info & (1 << 31) == 0 {
            None
        } else {
            let error_code = if info & (1 << 11) != 0 {
                read32(vmcs, Field32::IdtVectoringErrorCode)?
            } else {
                0
            };
            Redelivery::from_idt_vectoring(info, error_code, instruction_length)
        }
    };
    let mut follow_up = FollowUp::default();
    let exit = match basic {
        BasicExitReason::EntryFailureInvalidGuestState => Exit::InvalidGuestState,
        _ if entry_failure => Exit::Unknown {
            code: raw,
            name: basic.description().unwrap_or("VM-entry failure"),
        },
        BasicExitReason::ExceptionOrNmi => {
            let info =
                InterruptionInfo::from_raw(read32(vmcs, Field32::VmExitInterruptionInformation)?);
            match info.kind {
                InterruptionType::Nmi => Exit::Nmi,
                InterruptionType::HardwareException
                | InterruptionType::PrivilegedSoftwareException => {
                    if info.vector == 1 {
                        follow_up.debug_qualification = Some(qualification(vmcs)?);
                    }
                    follow_up.step_over_int1 =
                        info.kind == InterruptionType::PrivilegedSoftwareException;
                    let error_code = if info.error_code_valid {
                        Some(read32(vmcs, Field32::VmExitInterruptionErrorCode)?)
                    } else {
                        None
                    };
                    Exit::Exception {
                        vector: info.vector,
                        error_code,
                    }
                }
                // Software interrupts and exceptions (INT n, INT3, INTO) exit only when their
                // vector is in the exception bitmap, and atoll's holds #DB and #AC alone.
                _ => Exit::Unknown {
                    code: raw,
                    name: "exception",
                },
            }
        }
        BasicExitReason::ExternalInterrupt => {
            // With "acknowledge interrupt on exit" the vector is valid (SDM Vol. 3C §25.9.2);
            // without it the interrupt is still pending in the local APIC.
            let info =
                InterruptionInfo::from_raw(read32(vmcs, Field32::VmExitInterruptionInformation)?);
            Exit::ExternalInterrupt {
                vector: info.valid.then_some(info.vector),
            }
        }
        BasicExitReason::TripleFault => Exit::TripleFault,
        BasicExitReason::InitSignal => Exit::Init,
        // The SIPI vector is bits 7:0 of the exit qualification (Table 28-1).
        BasicExitReason::StartupIpi => Exit::Sipi {
            vector: qualification(vmcs)? as u8,
        },
        BasicExitReason::InterruptWindow => Exit::InterruptWindow,
        BasicExitReason::Cpuid => Exit::Cpuid,
        BasicExitReason::Hlt => Exit::Hlt,
        BasicExitReason::Vmcall => Exit::Hypercall,
        BasicExitReason::ControlRegisterAccess => {
            let a = CrAccess::from_qualification(qualification(vmcs)?);
            match a.access {
                CrAccessType::MovToCr => Exit::CrWrite {
                    cr: a.cr,
                    gpr: a.gpr,
                },
                CrAccessType::MovFromCr => Exit::CrRead {
                    cr: a.cr,
                    gpr: a.gpr,
                },
                CrAccessType::Clts => Exit::Clts,
                CrAccessType::Lmsw => Exit::Lmsw(a.lmsw_source),
            }
        }
        BasicExitReason::IoInstruction => {
            match IoAccess::from_qualification(qualification(vmcs)?) {
                Some(io) => Exit::Io {
                    port: io.port,
                    size: io.size.bytes(),
                    write: io.direction == IoDirection::Out,
                    string: io.string,
                    rep: io.rep,
                },
                None => Exit::Unknown {
                    code: raw,
                    name: "I/O instruction with an undefined size",
                },
            }
        }
        BasicExitReason::Rdmsr => Exit::MsrRead,
        BasicExitReason::Wrmsr => Exit::MsrWrite,
        BasicExitReason::EptViolation => {
            let v = EptViolation::from_qualification(qualification(vmcs)?);
            follow_up.reblock_nmi = v.nmi_unblocking && redelivery.is_none();
            let gpa = read64(vmcs, Field64::GuestPhysicalAddress)?;
            let linear = if v.linear_address_valid {
                Some(read_natural(vmcs, FieldNatural::GuestLinearAddress)?)
            } else {
                None
            };
            Exit::NestedPageFault {
                gpa: GuestPhysAddr::new(gpa),
                access: Access {
                    read: v.read,
                    write: v.write,
                    fetch: v.fetch,
                },
                linear,
            }
        }
        BasicExitReason::Xsetbv => Exit::Xsetbv,
        BasicExitReason::Invd => Exit::Invd,
        BasicExitReason::Wbinvd => Exit::Wbinvd,
        BasicExitReason::Rdpmc => Exit::Rdpmc,
        BasicExitReason::Monitor | BasicExitReason::Mwait => Exit::MonitorMwait,
        // The VMX instructions exit unconditionally in VMX non-root operation, and GETSEC does
        // too (SDM Vol. 3C §26.1.2); CPUID hides VMX and SMX, so they are #UD.
        BasicExitReason::Vmclear
        | BasicExitReason::Vmlaunch
        | BasicExitReason::Vmptrld
        | BasicExitReason::Vmptrst
        | BasicExitReason::Vmread
        | BasicExitReason::Vmresume
        | BasicExitReason::Vmwrite
        | BasicExitReason::Vmxoff
        | BasicExitReason::Vmxon
        | BasicExitReason::Invept
        | BasicExitReason::Invvpid
        | BasicExitReason::Vmfunc
        | BasicExitReason::Getsec => Exit::VirtualizationInstruction,
        other => Exit::Unknown {
            code: raw,
            name: other.description().unwrap_or("unknown exit reason"),
        },
    };
    Ok(VmxExit {
        exit,
        raw_reason: raw,
        entry_failure,
        instruction_length,
        redelivery,
        follow_up,
    })
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
