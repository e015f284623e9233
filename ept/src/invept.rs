//! INVEPT: invalidating what processors cached from EPT tables (SDM Vol. 3C §31.3, "INVEPT —
//! Invalidate Translations Derived from EPT"; the caching itself is §29.4).
//!
//! This module owns the instruction and its descriptor. The builder in [`crate::table`] never
//! flushes; whoever changes a live tree calls [`invept_single_context`] with its EPTP on every
//! core that may have cached it. Compiled only for the bare-metal target.

use crate::entry::Eptp;
use core::arch::asm;
use core::fmt;

/// INVEPT type 1: invalidate mappings tagged with one EPTP.
const SINGLE_CONTEXT: u64 = 1;
/// INVEPT type 2: invalidate mappings of every EPTP.
const ALL_CONTEXT: u64 = 2;

/// How INVEPT failed (SDM Vol. 3C §31.2, "Conventions": the VMfail outcomes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InveptError {
    /// VMfailInvalid (CF = 1): there is no current VMCS to hold an error number.
    FailInvalid,
    /// VMfailValid (ZF = 1): the VM-instruction error field of the current VMCS says why
    /// (28, "invalid operand to INVEPT/INVVPID", for an unsupported type or a bad EPTP).
    FailValid,
}

impl fmt::Display for InveptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FailInvalid => write!(f, "INVEPT failed (VMfailInvalid: no current VMCS)"),
            Self::FailValid => write!(
                f,
                "INVEPT failed (VMfailValid: see the VM-instruction error field)"
            ),
        }
    }
}

/// The 128-bit INVEPT descriptor: the EPTP, then 64 reserved bits that must be zero.
#[repr(C, align(16))]
struct Descriptor {
    eptp: u64,
    reserved: u64,
}

fn invept(kind: u64, eptp: u64) -> Result<(), InveptError> {
    let descriptor = Descriptor { eptp, reserved: 0 };
    let cf: u8;
    let zf: u8;
    // SAFETY: INVEPT reads only the 16-byte descriptor, which lives in this frame for the whole
    // asm block, writes no memory and changes only RFLAGS, which are read into `cf` and `zf`.
    // Outside VMX root operation it raises #UD (or #GP at CPL > 0), an exception, not undefined
    // behaviour.
    unsafe {
        asm!(
            "invept {kind}, [{desc}]",
            "setc {cf}",
            "setz {zf}",
            kind = in(reg) kind,
            desc = in(reg) &descriptor as *const Descriptor,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    if cf != 0 {
        Err(InveptError::FailInvalid)
    } else if zf != 0 {
        Err(InveptError::FailValid)
    } else {
        Ok(())
    }
}

/// Single-context INVEPT: drops the guest-physical and combined mappings tagged with `eptp`
/// (needs [`crate::EptCaps::INVEPT_SINGLE_CONTEXT`]). Must run in VMX root operation.
pub fn invept_single_context(eptp: Eptp) -> Result<(), InveptError> {
    invept(SINGLE_CONTEXT, eptp.as_u64())
}

/// All-context INVEPT: drops the mappings of every EPTP (needs
/// [`crate::EptCaps::INVEPT_ALL_CONTEXT`]). Must run in VMX root operation.
pub fn invept_all_context() -> Result<(), InveptError> {
    invept(ALL_CONTEXT, 0)
}
