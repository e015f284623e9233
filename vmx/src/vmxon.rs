//! Entering VMX operation.
//!
//! This module owns the steps before VMXON (SDM Vol. 3C §24.7 "Enabling and Entering VMX
//! Operation", §24.8 "Restrictions on VMX Operation", Vol. 3D §A.7–A.8): enabling VMXON in
//! IA32_FEATURE_CONTROL, fitting CR0 and CR4 to the fixed bits VMX operation needs, and writing
//! the VMCS revision identifier into the VMXON region. The decisions are pure functions
//! ([`feature_control_update`], [`fixed_bits_ok`]) tested on the host; `enable_vmx` (target
//! only) reads and writes the registers and executes VMXON.

use crate::caps::{FeatureControl, MsrReader};
use crate::error::VmFail;
use crate::msr::*;
use boot::addr::HostPhysAddr;
use core::fmt;

/// IA32_VMX_BASIC bit 48: VMXON, VMCS and other VMX structure addresses are limited to 32 bits.
const BASIC_32BIT_ADDRESSES: u64 = 1 << 48;

/// Why VMX operation could not be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxOnError {
    /// An MSR VMX operation depends on could not be read.
    MsrUnreadable(Msr),
    /// Firmware locked IA32_FEATURE_CONTROL without allowing VMXON outside SMX.
    DisabledByFirmware,
    /// A CR0 or CR4 bit must change for VMX operation and atoll cannot change it.
    FixedBit(FixedBitConflict),
    /// The VMXON region is not 4 KiB aligned, or is above 4 GiB on a processor limited to
    /// 32-bit VMX addresses (IA32_VMX_BASIC bit 48).
    BadRegion(HostPhysAddr),
    /// VMXON itself failed (e.g. VMfailValid 15: already in VMX operation).
    Vmxon(VmFail),
}

impl fmt::Display for VmxOnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MsrUnreadable(msr) => write!(f, "MSR {:#x} cannot be read", msr.0),
            Self::DisabledByFirmware => f.write_str(
                "VMX is disabled by firmware: IA32_FEATURE_CONTROL is locked with 'enable VMXON \
                 outside SMX' (bit 2) clear; enable Intel VT-x in the firmware setup",
            ),
            Self::FixedBit(c) => c.fmt(f),
            Self::BadRegion(addr) => write!(
                f,
                "VMXON region at {addr} is not 4 KiB aligned or not addressable by this CPU's VMX"
            ),
            Self::Vmxon(e) => write!(f, "VMXON failed: {e}"),
        }
    }
}

impl core::error::Error for VmxOnError {}

/// A control register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlRegister {
    /// CR0.
    Cr0,
    /// CR4.
    Cr4,
}

/// A fixed bit of CR0 or CR4 that VMX operation needs changed and atoll cannot change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FixedBitConflict {
    /// The register.
    pub register: ControlRegister,
    /// The bit number.
    pub bit: u32,
    /// The value VMX operation requires.
    pub required: bool,
}

impl ControlRegister {
    /// The architectural name of `bit` (SDM Vol. 3A §2.5), `None` for a reserved bit.
    pub const fn bit_name(self, bit: u32) -> Option<&'static str> {
        match (self, bit) {
            (Self::Cr0, 0) => Some("PE"),
            (Self::Cr0, 1) => Some("MP"),
            (Self::Cr0, 2) => Some("EM"),
            (Self::Cr0, 3) => Some("TS"),
            (Self::Cr0, 4) => Some("ET"),
            (Self::Cr0, 5) => Some("NE"),
            (Self::Cr0, 16) => Some("WP"),
            (Self::Cr0, 18) => Some("AM"),
            (Self::Cr0, 29) => Some("NW"),
            (Self::Cr0, 30) => Some("CD"),
            (Self::Cr0, 31) => Some("PG"),
            (Self::Cr4, 0) => Some("VME"),
            (Self::Cr4, 1) => Some("PVI"),
            (Self::Cr4, 2) => Some("TSD"),
            (Self::Cr4, 3) => Some("DE"),
            (Self::Cr4, 4) => Some("PSE"),
            (Self::Cr4, 5) => Some("PAE"),
            (Self::Cr4, 6) => Some("MCE"),
            (Self::Cr4, 7) => Some("PGE"),
            (Self::Cr4, 8) => Some("PCE"),
            (Self::Cr4, 9) => Some("OSFXSR"),
            (Self::Cr4, 10) => Some("OSXMMEXCPT"),
            (Self::Cr4, 11) => Some("UMIP"),
            (Self::Cr4, 12) => Some("LA57"),
            (Self::Cr4, 13) => Some("VMXE"),
            (Self::Cr4, 14) => Some("SMXE"),
            (Self::Cr4, 16) => Some("FSGSBASE"),
            (Self::Cr4, 17) => Some("PCIDE"),
            (Self::Cr4, 18) => Some("OSXSAVE"),
            (Self::Cr4, 19) => Some("KL"),
            (Self::Cr4, 20) => Some("SMEP"),
            (Self::Cr4, 21) => Some("SMAP"),
            (Self::Cr4, 22) => Some("PKE"),
            (Self::Cr4, 23) => Some("CET"),
            (Self::Cr4, 24) => Some("PKS"),
            (Self::Cr4, 25) => Some("UINTR"),
            (Self::Cr4, 28) => Some("LAM_SUP"),
            _ => None,
        }
    }
}

impl fmt::Display for FixedBitConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (reg, msr) = match (self.register, self.required) {
            (ControlRegister::Cr0, true) => ("CR0", "IA32_VMX_CR0_FIXED0"),
            (ControlRegister::Cr0, false) => ("CR0", "IA32_VMX_CR0_FIXED1"),
            (ControlRegister::Cr4, true) => ("CR4", "IA32_VMX_CR4_FIXED0"),
            (ControlRegister::Cr4, false) => ("CR4", "IA32_VMX_CR4_FIXED1"),
        };
        write!(f, "VMX operation requires {reg} bit {}", self.bit)?;
        if let Some(name) = self.register.bit_name(self.bit) {
            write!(f, " ({name})")?;
        }
        write!(
            f,
            " to be {} ({msr}), but it is {} and atoll cannot change it",
            self.required as u8, !self.required as u8
        )
    }
}

/// The VMX fixed-bit MSRs (SDM Vol. 3D §A.7, §A.8): a bit set in FIXED0 must be 1 in VMX
/// operation, a bit clear in FIXED1 must be 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FixedBits {
    /// IA32_VMX_CR0_FIXED0.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1.
    pub cr4_fixed1: u64,
}

impl FixedBits {
    /// Reads the four MSRs.
    pub fn read(msrs: &mut impl MsrReader) -> Result<Self, VmxOnError> {
        let mut read = |msr: Msr| msrs.read(msr).ok_or(VmxOnError::MsrUnreadable(msr));
        Ok(Self {
            cr0_fixed0: read(IA32_VMX_CR0_FIXED0)?,
            cr0_fixed1: read(IA32_VMX_CR0_FIXED1)?,
            cr4_fixed0: read(IA32_VMX_CR4_FIXED0)?,
            cr4_fixed1: read(IA32_VMX_CR4_FIXED1)?,
        })
    }
}

/// CR0 and CR4 values for VMX operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlRegisters {
    /// CR0.
    pub cr0: u64,
    /// CR4.
    pub cr4: u64,
}

/// CR0.NE: atoll may set it (it only selects native x87 error reporting, which atoll never
/// triggers; every VMX processor requires it).
const CR0_SETTABLE: u64 = 1 << 5;
/// CR4.VMXE: the bit that enables VMX itself.
const CR4_SETTABLE: u64 = 1 << 13;

/// Fits `cr0` and `cr4` (the current values) to `fixed`, setting CR4.VMXE. atoll may set
/// CR0.NE and CR4.VMXE; any other bit that would have to change (a required bit that is clear,
/// such as CR0.PG, or a forbidden bit that is set) is an error naming it, since changing paging,
/// caching or feature enables under running code is not safe. Returns the values to load.
pub fn fixed_bits_ok(
    cr0: u64,
    cr4: u64,
    fixed: &FixedBits,
) -> Result<ControlRegisters, VmxOnError> {
    let cr0 = fit(
        ControlRegister::Cr0,
        cr0,
        fixed.cr0_fixed0,
        fixed.cr0_fixed1,
        CR0_SETTABLE,
    )?;
    let cr4 = fit(
        ControlRegister::Cr4,
        cr4 | CR4_SETTABLE,
        fixed.cr4_fixed0,
        fixed.cr4_fixed1,
        CR4_SETTABLE,
    )?;
    Ok(ControlRegisters { cr0, cr4 })
}

fn fit(
    register: ControlRegister,
    value: u64,
    fixed0: u64,
    fixed1: u64,
    settable: u64,
) -> Result<u64, VmxOnError> {
    let conflict = |bits: u64, required: bool| {
        VmxOnError::FixedBit(FixedBitConflict {
            register,
            bit: bits.trailing_zeros(),
            required,
        })
    };
    // Bits that must be 0 but are 1 (or that FIXED0 and FIXED1 contradict on): atoll clears
    // nothing.
    let must_clear = value & !fixed1;
    if must_clear != 0 {
        return Err(conflict(must_clear, false));
    }
    let must_set = fixed0 & !value;
    let unsettable = must_set & !settable;
    if unsettable != 0 {
        return Err(conflict(unsettable, true));
    }
    let fitted = value | must_set;
    // A required bit that FIXED1 forbids: the MSRs contradict each other.
    let contradicting = fitted & !fixed1;
    if contradicting != 0 {
        return Err(conflict(contradicting, false));
    }
    Ok(fitted)
}

/// The IA32_FEATURE_CONTROL value to write before VMXON, `None` if it is fine as it is
/// (SDM Vol. 3C §24.7): unlocked → set "enable VMXON outside SMX" and lock; locked with it set →
/// nothing to do; locked without it → firmware disabled VMX.
pub fn feature_control_update(current: u64) -> Result<Option<u64>, VmxOnError> {
    let fc = FeatureControl::from_bits_retain(current);
    if fc.contains(FeatureControl::LOCKED) {
        if fc.contains(FeatureControl::VMXON_OUTSIDE_SMX) {
            Ok(None)
        } else {
            Err(VmxOnError::DisabledByFirmware)
        }
    } else {
        Ok(Some(
            (fc | FeatureControl::VMXON_OUTSIDE_SMX | FeatureControl::LOCKED).bits(),
        ))
    }
}

/// Checks a VMXON region or VMCS address: 4 KiB aligned, and below 4 GiB when IA32_VMX_BASIC
/// bit 48 limits VMX addresses to 32 bits (SDM Vol. 3D §A.1).
pub fn region_ok(basic: u64, region: HostPhysAddr) -> Result<(), VmxOnError> {
    let too_high = basic & BASIC_32BIT_ADDRESSES != 0 && region.as_u64() >> 32 != 0;
    if !region.is_aligned(4096) || too_high {
        return Err(VmxOnError::BadRegion(region));
    }
    Ok(())
}

/// The VMCS revision identifier, IA32_VMX_BASIC bits 30:0.
pub const fn revision_id(basic: u64) -> u32 {
    (basic & 0x7fff_ffff) as u32
}

/// Writes the VMCS revision identifier into the first four bytes of a VMXON region or VMCS
/// (SDM Vol. 3C §25.2; bit 31, the shadow-VMCS indicator, is 0).
///
/// # Safety
///
/// `region_ptr` must be valid for writes of 4 bytes and 4-byte aligned (it is the start of a
/// 4 KiB-aligned region the caller owns).
pub unsafe fn write_revision_id(region_ptr: *mut u8, revision: u32) {
    // SAFETY: the caller guarantees `region_ptr` is valid and aligned for a 4-byte write.
    unsafe {
        region_ptr
            .cast::<u32>()
            .write_volatile(revision & 0x7fff_ffff)
    };
}

#[cfg(target_os = "none")]
pub use hw::enable_vmx;

#[cfg(target_os = "none")]
mod hw {
    use super::*;
    use core::arch::asm;

    /// Enters VMX root operation on the calling core (SDM Vol. 3C §24.7): enables VMXON in
    /// IA32_FEATURE_CONTROL if firmware left it unlocked (and locks it), fits CR0/CR4 to the
    /// fixed bits with CR4.VMXE set, writes the revision identifier into the region and
    /// executes VMXON. Every check happens before any register is changed, so a refusal
    /// leaves the core as it was.
    ///
    /// # Safety
    ///
    /// * `vmxon_region` is the host-physical address of `region_ptr`'s memory: at least 4 KiB,
    ///   4 KiB aligned, owned by the caller, used for nothing else until VMXOFF (the processor
    ///   may write it at any time in VMX operation);
    /// * the caller runs at CPL 0 on a processor that has VMX (CPUID.1:ECX.VMX), in long mode,
    ///   and stays on this core until it leaves VMX operation.
    pub unsafe fn enable_vmx(
        msrs: &mut impl MsrReader,
        vmxon_region: HostPhysAddr,
        region_ptr: *mut u8,
    ) -> Result<(), VmxOnError> {
        let basic = msrs
            .read(IA32_VMX_BASIC)
            .ok_or(VmxOnError::MsrUnreadable(IA32_VMX_BASIC))?;
        region_ok(basic, vmxon_region)?;
        let feature_control = msrs
            .read(IA32_FEATURE_CONTROL)
            .ok_or(VmxOnError::MsrUnreadable(IA32_FEATURE_CONTROL))?;
        let feature_control = feature_control_update(feature_control)?;
        let fixed = FixedBits::read(msrs)?;
        let (cr0, cr4) = (read_cr0(), read_cr4());
        let fitted = fixed_bits_ok(cr0, cr4, &fixed)?;

        if let Some(value) = feature_control {
            // SAFETY: IA32_FEATURE_CONTROL exists on every VMX processor (the caller's
            // contract); setting the VMXON enable and the lock bit only permits VMXON.
            unsafe { wrmsr(IA32_FEATURE_CONTROL, value) };
        }
        if fitted.cr0 != cr0 {
            // SAFETY: `fixed_bits_ok` changes at most CR0.NE, which selects x87 error reporting
            // and does not affect memory or control flow.
            unsafe { asm!("mov cr0, {}", in(reg) fitted.cr0, options(nostack, preserves_flags)) };
        }
        if fitted.cr4 != cr4 {
            // SAFETY: `fixed_bits_ok` changes at most CR4.VMXE, which only permits VMXON.
            unsafe { asm!("mov cr4, {}", in(reg) fitted.cr4, options(nostack, preserves_flags)) };
        }
        // SAFETY: the caller guarantees `region_ptr` is the start of a 4 KiB-aligned region it
        // owns.
        unsafe { write_revision_id(region_ptr, revision_id(basic)) };
        // SAFETY: the region is prepared, CR0/CR4 and IA32_FEATURE_CONTROL allow VMXON, and the
        // caller hands the region to the processor until VMXOFF.
        unsafe { crate::instructions::vmxon(vmxon_region) }.map_err(VmxOnError::Vmxon)
    }

    fn read_cr0() -> u64 {
        let v: u64;
        // SAFETY: reading CR0 has no side effects (CPL 0 is the caller's contract).
        unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }

    fn read_cr4() -> u64 {
        let v: u64;
        // SAFETY: reading CR4 has no side effects (CPL 0 is the caller's contract).
        unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }

    /// # Safety
    ///
    /// `msr` must exist and `value` must be valid for it.
    unsafe fn wrmsr(msr: Msr, value: u64) {
        // SAFETY: the caller guarantees the MSR exists and the value is valid.
        unsafe {
            asm!(
                "wrmsr",
                in("ecx") msr.0,
                in("eax") value as u32,
                in("edx") (value >> 32) as u32,
                options(nostack, preserves_flags),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::bochs;

    /// CR0 and CR4 as atoll's boot path leaves them: PG | WP | ET | PE (ET reads as 1), and PAE.
    const BOOT_CR0: u64 = 0x8001_0011;
    const BOOT_CR4: u64 = 0x20;

    #[test]
    fn bochs_fixed_bits_set_ne_and_vmxe() {
        let fixed = FixedBits::read(&mut bochs()).unwrap();
        assert_eq!(fixed.cr0_fixed0, 0x8000_0021);
        let regs = fixed_bits_ok(BOOT_CR0, BOOT_CR4, &fixed).unwrap();
        assert_eq!(regs.cr0, BOOT_CR0 | 0x20); // NE
        assert_eq!(regs.cr4, BOOT_CR4 | 0x2000); // VMXE
    }

    #[test]
    fn already_fitting_values_are_unchanged() {
        let fixed = FixedBits::read(&mut bochs()).unwrap();
        let regs = fixed_bits_ok(0x8005_0033, 0x2020, &fixed).unwrap();
        assert_eq!(
            regs,
            ControlRegisters {
                cr0: 0x8005_0033,
                cr4: 0x2020
            }
        );
    }

    #[test]
    fn a_required_bit_atoll_cannot_set_is_named() {
        let fixed = FixedBits::read(&mut bochs()).unwrap();
        // Paging off (never the case in long mode, but the check must hold).
        let err = fixed_bits_ok(0x11, BOOT_CR4, &fixed).unwrap_err();
        assert_eq!(
            err,
            VmxOnError::FixedBit(FixedBitConflict {
                register: ControlRegister::Cr0,
                bit: 31,
                required: true
            })
        );
        assert_eq!(
            err.to_string(),
            "VMX operation requires CR0 bit 31 (PG) to be 1 (IA32_VMX_CR0_FIXED0), but it is 0 \
             and atoll cannot change it"
        );
    }

    #[test]
    fn a_forbidden_bit_that_is_set_is_named() {
        let fixed = FixedBits::read(&mut bochs()).unwrap();
        // Bochs' CR4_FIXED1 0x3727ff does not allow UMIP (bit 11).
        let err = fixed_bits_ok(BOOT_CR0, BOOT_CR4 | (1 << 11), &fixed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VMX operation requires CR4 bit 11 (UMIP) to be 0 (IA32_VMX_CR4_FIXED1), but it is 1 \
             and atoll cannot change it"
        );
    }

    #[test]
    fn a_processor_forbidding_vmxe_is_reported() {
        let mut fixed = FixedBits::read(&mut bochs()).unwrap();
        fixed.cr4_fixed1 &= !(1 << 13);
        let err = fixed_bits_ok(BOOT_CR0, BOOT_CR4, &fixed).unwrap_err();
        assert_eq!(
            err,
            VmxOnError::FixedBit(FixedBitConflict {
                register: ControlRegister::Cr4,
                bit: 13,
                required: false
            })
        );
    }

    #[test]
    fn feature_control_decisions() {
        // Bochs: locked with VMXON outside SMX.
        assert_eq!(feature_control_update(0x5), Ok(None));
        // Unlocked: enable and lock, keeping other bits.
        assert_eq!(feature_control_update(0x0), Ok(Some(0x5)));
        assert_eq!(feature_control_update(0x2), Ok(Some(0x7)));
        assert_eq!(feature_control_update(0x10_0000), Ok(Some(0x10_0005)));
        // Locked without it.
        assert_eq!(
            feature_control_update(0x1),
            Err(VmxOnError::DisabledByFirmware)
        );
        assert_eq!(
            feature_control_update(0x3).unwrap_err().to_string(),
            "VMX is disabled by firmware: IA32_FEATURE_CONTROL is locked with 'enable VMXON \
             outside SMX' (bit 2) clear; enable Intel VT-x in the firmware setup"
        );
    }

    #[test]
    fn regions_and_revision() {
        let basic = 0x00d8_1000_0000_002b;
        assert_eq!(revision_id(basic), 0x2b);
        assert_eq!(revision_id(u64::MAX), 0x7fff_ffff);
        assert_eq!(region_ok(basic, HostPhysAddr::new(0x1_0000_0000)), Ok(()));
        assert_eq!(
            region_ok(basic, HostPhysAddr::new(0x1008)),
            Err(VmxOnError::BadRegion(HostPhysAddr::new(0x1008)))
        );
        let narrow = basic | BASIC_32BIT_ADDRESSES;
        assert_eq!(region_ok(narrow, HostPhysAddr::new(0xffff_f000)), Ok(()));
        assert!(region_ok(narrow, HostPhysAddr::new(0x1_0000_0000)).is_err());

        let mut region = [0xffu8; 8];
        let ptr = region.as_mut_ptr();
        let aligned = ptr.align_offset(4);
        // SAFETY: `aligned` < 4, so the offset stays inside the 8-byte array.
        let at = unsafe { ptr.add(aligned) };
        // SAFETY: `at` is 4-byte aligned with at least 4 bytes of the array after it (see above).
        unsafe { write_revision_id(at, 0x8000_002b) };
        assert_eq!(region[aligned..aligned + 4], 0x2bu32.to_le_bytes());
    }
}
