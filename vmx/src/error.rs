//! How VMX instructions fail, and the crate's error type.
//!
//! This module owns [`VmFail`] (the outcome of a failed VMX instruction, decoded from RFLAGS as
//! SDM Vol. 3C §31.2 "Conventions" describes), [`VmInstructionError`] (the VM-instruction error
//! numbers of §31.4, Table 31-1) and [`Error`], which gathers every error this crate returns
//! so callers can use one type.

use crate::controls::ControlError;
use crate::vmxon::VmxOnError;
use core::fmt;

/// Defines [`VmInstructionError`] from its table, with an `Unknown` variant for any other number.
macro_rules! instruction_errors {
    ( $( $number:literal => $variant:ident, $text:literal; )* ) => {
        /// The VM-instruction error field after a VMfailValid (SDM Vol. 3C §31.4, Table 31-1).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum VmInstructionError {
            $( #[doc = concat!(stringify!($number), ": ", $text, ".")] $variant, )*
            /// A number Table 31-1 does not define (or 0, "no error", which VMfailValid never
            /// reports).
            Unknown(u32),
        }

        impl VmInstructionError {
            /// Decodes the VM-instruction error field; never fails.
            pub const fn from_raw(number: u32) -> Self {
                match number {
                    $( $number => Self::$variant, )*
                    other => Self::Unknown(other),
                }
            }

            /// The error number.
            pub const fn number(self) -> u32 {
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

instruction_errors! {
    1 => VmcallInVmxRoot, "VMCALL executed in VMX root operation";
    2 => VmclearInvalidAddress, "VMCLEAR with invalid physical address";
    3 => VmclearVmxonPointer, "VMCLEAR with VMXON pointer";
    4 => VmlaunchNonClearVmcs, "VMLAUNCH with non-clear VMCS";
    5 => VmresumeNonLaunchedVmcs, "VMRESUME with non-launched VMCS";
    6 => VmresumeAfterVmxoff, "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)";
    7 => EntryInvalidControlFields, "VM entry with invalid control field(s)";
    8 => EntryInvalidHostStateFields, "VM entry with invalid host-state field(s)";
    9 => VmptrldInvalidAddress, "VMPTRLD with invalid physical address";
    10 => VmptrldVmxonPointer, "VMPTRLD with VMXON pointer";
    11 => VmptrldIncorrectRevision, "VMPTRLD with incorrect VMCS revision identifier";
    12 => UnsupportedVmcsComponent, "VMREAD/VMWRITE from/to unsupported VMCS component";
    13 => VmwriteReadOnlyComponent, "VMWRITE to read-only VMCS component";
    15 => VmxonInVmxRoot, "VMXON executed in VMX root operation";
    16 => EntryInvalidExecutiveVmcsPointer, "VM entry with invalid executive-VMCS pointer";
    17 => EntryNonLaunchedExecutiveVmcs, "VM entry with non-launched executive VMCS";
    18 => EntryExecutiveVmcsNotVmxonPointer, "VM entry with executive-VMCS pointer not VMXON pointer";
    19 => VmcallNonClearVmcs, "VMCALL with non-clear VMCS";
    20 => VmcallInvalidExitControls, "VMCALL with invalid VM-exit control fields";
    22 => VmcallIncorrectMsegRevision, "VMCALL with incorrect MSEG revision identifier";
    23 => VmxoffUnderDualMonitor, "VMXOFF under dual-monitor treatment of SMIs and SMM";
    24 => VmcallInvalidSmmMonitorFeatures, "VMCALL with invalid SMM-monitor features";
    25 => EntryInvalidExecutiveControls, "VM entry with invalid VM-execution control fields in executive VMCS";
    26 => EntryEventsBlockedByMovSs, "VM entry with events blocked by MOV SS";
    28 => InvalidInveptInvvpidOperand, "invalid operand to INVEPT/INVVPID";
}

impl fmt::Display for VmInstructionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(text) => write!(f, "VM-instruction error {}: {}", self.number(), text),
            None => write!(f, "unknown VM-instruction error {}", self.number()),
        }
    }
}

/// A VMX instruction failed (SDM Vol. 3C §31.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmFail {
    /// VMfailInvalid (CF = 1): there is no current VMCS (or no valid VMXON region) to report
    /// an error number in.
    Invalid,
    /// VMfailValid (ZF = 1): the error number was stored in the current VMCS.
    Valid(VmInstructionError),
}

impl VmFail {
    /// RFLAGS.CF, set by VMfailInvalid.
    pub const RFLAGS_CF: u64 = 1 << 0;
    /// RFLAGS.ZF, set by VMfailValid.
    pub const RFLAGS_ZF: u64 = 1 << 6;

    /// Decodes the RFLAGS a VMX instruction left: CF → [`VmFail::Invalid`], else ZF →
    /// [`VmFail::Valid`] with the number `read_error` fetches from the VM-instruction-error
    /// field (called only in that case), else success.
    pub fn from_rflags(
        rflags: u64,
        read_error: impl FnOnce() -> VmInstructionError,
    ) -> Result<(), VmFail> {
        if rflags & Self::RFLAGS_CF != 0 {
            Err(VmFail::Invalid)
        } else if rflags & Self::RFLAGS_ZF != 0 {
            Err(VmFail::Valid(read_error()))
        } else {
            Ok(())
        }
    }
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid => f.write_str("VMfailInvalid (no current VMCS)"),
            Self::Valid(e) => write!(f, "VMfailValid: {e}"),
        }
    }
}

impl core::error::Error for VmFail {}

/// Every error the `vmx` crate returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The controls atoll needs do not fit this processor.
    Controls(ControlError),
    /// VMX operation could not be entered.
    VmxOn(VmxOnError),
    /// A VMX instruction failed.
    Instruction(VmFail),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Controls(e) => e.fmt(f),
            Self::VmxOn(e) => e.fmt(f),
            Self::Instruction(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for Error {}

impl From<ControlError> for Error {
    fn from(e: ControlError) -> Self {
        Self::Controls(e)
    }
}

impl From<VmxOnError> for Error {
    fn from(e: VmxOnError) -> Self {
        Self::VmxOn(e)
    }
}

impl From<VmFail> for Error {
    fn from(e: VmFail) -> Self {
        Self::Instruction(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_errors_round_trip_and_never_panic() {
        for n in (0..64).chain([u32::MAX, 0x8000_0000]) {
            let e = VmInstructionError::from_raw(n);
            assert_eq!(e.number(), n);
            let _ = e.to_string();
        }
        assert_eq!(
            VmInstructionError::from_raw(14),
            VmInstructionError::Unknown(14)
        );
        assert_eq!(
            VmInstructionError::from_raw(0),
            VmInstructionError::Unknown(0)
        );
        assert_eq!(
            VmInstructionError::from_raw(7).to_string(),
            "VM-instruction error 7: VM entry with invalid control field(s)"
        );
        assert_eq!(
            VmInstructionError::from_raw(28),
            VmInstructionError::InvalidInveptInvvpidOperand
        );
        assert_eq!(
            VmInstructionError::from_raw(99).to_string(),
            "unknown VM-instruction error 99"
        );
    }

    #[test]
    fn rflags_decoding() {
        let never = || -> VmInstructionError { panic!("error field read on success") };
        assert_eq!(VmFail::from_rflags(0x2, never), Ok(()));
        assert_eq!(VmFail::from_rflags(0x3, never), Err(VmFail::Invalid));
        // CF wins if both are set (the SDM never sets both).
        assert_eq!(VmFail::from_rflags(0x43, never), Err(VmFail::Invalid));
        assert_eq!(
            VmFail::from_rflags(0x42, || VmInstructionError::from_raw(8)),
            Err(VmFail::Valid(
                VmInstructionError::EntryInvalidHostStateFields
            ))
        );
        assert_eq!(
            VmFail::Valid(VmInstructionError::VmlaunchNonClearVmcs).to_string(),
            "VMfailValid: VM-instruction error 4: VMLAUNCH with non-clear VMCS"
        );
    }
}
