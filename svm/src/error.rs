//! The crate's error type.
//!
//! This module owns [`Error`], every error the `svm` crate returns: SVM not present or disabled
//! (APM Vol. 2 §15.4 "Enabling SVM"), a physical address the hardware cannot take, and an MSR the
//! MSR permission map does not cover (§15.11).

use boot::addr::HostPhysAddr;
use core::fmt;

/// Which SVM structure an address was meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Structure {
    /// The host save area named by VM_HSAVE_PA (APM Vol. 2 §15.30.4).
    HostSaveArea,
    /// A VMCB (APM Vol. 2 §15.5.1: VMRUN takes a 4 KiB-aligned VMCB address in RAX).
    Vmcb,
    /// The I/O permission map (IOPM_BASE_PA, §15.10.1).
    IoPermissionMap,
    /// The MSR permission map (MSRPM_BASE_PA, §15.11).
    MsrPermissionMap,
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HostSaveArea => "host save area (VM_HSAVE_PA)",
            Self::Vmcb => "VMCB",
            Self::IoPermissionMap => "I/O permission map",
            Self::MsrPermissionMap => "MSR permission map",
        })
    }
}

/// Every error the `svm` crate returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The processor has no SVM: CPUID Fn8000_0001 ECX bit 2 is clear, or the extended CPUID
    /// leaves stop before Fn8000_000A (APM Vol. 2 §15.4).
    SvmAbsent,
    /// VM_CR.SVMDIS is set and VM_CR.LOCK is set, so SVM stays off until reset (APM Vol. 2
    /// §15.4, §15.30.1). `unlockable_with_key` is CPUID Fn8000_000A EDX.SVML: the lock may be
    /// opened with a key through the SVM_KEY MSR (§15.31); otherwise only a firmware setting
    /// can enable SVM.
    DisabledByFirmware {
        /// SVM lock with a key is supported.
        unlockable_with_key: bool,
    },
    /// A physical address for `structure` is not 4 KiB aligned (the hardware requires page
    /// alignment for all of them).
    Misaligned {
        /// What the address was for.
        structure: Structure,
        /// The address.
        addr: HostPhysAddr,
    },
    /// An MSR outside the three ranges the MSR permission map covers (0000_0000–0000_1FFF,
    /// C000_0000–C000_1FFF, C001_0000–C001_1FFF; APM Vol. 2 §15.11). Accesses to such MSRs
    /// always cause a #VMEXIT when MSR_PROT is intercepted, so they cannot be allowed.
    MsrOutOfRange(u32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SvmAbsent => f.write_str(
                "the processor does not support AMD SVM (CPUID Fn8000_0001 ECX bit 2 is clear)",
            ),
            Self::DisabledByFirmware {
                unlockable_with_key: false,
            } => f.write_str(
                "SVM is disabled by firmware and locked (VM_CR.SVMDIS = 1, VM_CR.LOCK = 1); \
                 enable SVM / AMD-V in the firmware setup",
            ),
            Self::DisabledByFirmware {
                unlockable_with_key: true,
            } => f.write_str(
                "SVM is disabled by firmware and locked (VM_CR.SVMDIS = 1, VM_CR.LOCK = 1); \
                 the lock can only be opened with the platform's SVM key, or enable SVM / AMD-V \
                 in the firmware setup",
            ),
            Self::Misaligned { structure, addr } => {
                write!(f, "the {structure} at {addr} is not 4 KiB aligned")
            }
            Self::MsrOutOfRange(msr) => write!(
                f,
                "MSR {msr:#x} is outside the ranges the MSR permission map covers \
                 (0-0x1fff, 0xc0000000-0xc0001fff, 0xc0010000-0xc0011fff)"
            ),
        }
    }
}

impl core::error::Error for Error {}

/// `Ok` when `addr` is 4 KiB aligned, otherwise [`Error::Misaligned`] naming `structure`.
pub const fn check_page_aligned(structure: Structure, addr: HostPhysAddr) -> Result<(), Error> {
    if addr.is_aligned(4096) {
        Ok(())
    } else {
        Err(Error::Misaligned { structure, addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_reason() {
        assert_eq!(
            Error::DisabledByFirmware {
                unlockable_with_key: false
            }
            .to_string(),
            "SVM is disabled by firmware and locked (VM_CR.SVMDIS = 1, VM_CR.LOCK = 1); enable \
             SVM / AMD-V in the firmware setup"
        );
        assert!(Error::SvmAbsent
            .to_string()
            .contains("does not support AMD SVM"));
        assert_eq!(
            Error::MsrOutOfRange(0x4000_0000).to_string(),
            "MSR 0x40000000 is outside the ranges the MSR permission map covers (0-0x1fff, \
             0xc0000000-0xc0001fff, 0xc0010000-0xc0011fff)"
        );
        assert_eq!(
            check_page_aligned(Structure::HostSaveArea, HostPhysAddr::new(0x1008))
                .unwrap_err()
                .to_string(),
            "the host save area (VM_HSAVE_PA) at 0x1008 is not 4 KiB aligned"
        );
        assert_eq!(
            check_page_aligned(Structure::Vmcb, HostPhysAddr::new(0x7000)),
            Ok(())
        );
    }
}
