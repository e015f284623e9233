//! The VMX instructions (SDM Vol. 3C Chapter 31), one wrapper each, target only.
//!
//! This module owns every VMXON, VMXOFF, VMCLEAR, VMPTRLD, VMREAD, VMWRITE and INVVPID atoll
//! executes (VMLAUNCH and VMRESUME live in the entry stub, `run`; INVEPT belongs to the `ept`
//! crate). Each returns `Result<_, VmFail>` decoded from RFLAGS (§31.2): CF = 1 is
//! VMfailInvalid, ZF = 1 is VMfailValid with the number read from the VM-instruction-error
//! field.
//!
//! Safety split: instructions that hand memory to the processor (VMXON, VMCLEAR, VMPTRLD) are
//! `unsafe`; the others only touch processor-owned VMCS data or TLBs and are safe. Outside VMX
//! operation they raise #UD, an exception atoll reports, not undefined behaviour. What a VMCS's
//! contents make the processor do happens at VM entry, whose wrapper (`run::vm_enter`) carries
//! that contract.

use crate::error::{VmFail, VmInstructionError};
use crate::fields::{Field, Field16, Field32, Field64, FieldNatural, VmcsAccess};
use boot::addr::{GuestVirtAddr, HostPhysAddr};
use core::arch::asm;

/// RFLAGS as the `setc`/`setz` pair after an instruction reports it.
fn rflags(cf: u8, zf: u8) -> u64 {
    (if cf != 0 { VmFail::RFLAGS_CF } else { 0 }) | (if zf != 0 { VmFail::RFLAGS_ZF } else { 0 })
}

/// Decodes the outcome of a VMX instruction.
fn outcome(cf: u8, zf: u8) -> Result<(), VmFail> {
    VmFail::from_rflags(rflags(cf, zf), instruction_error)
}

/// The VM-instruction-error field of the current VMCS; `Unknown(0)` if even that read fails.
pub(crate) fn instruction_error() -> VmInstructionError {
    match vmread_raw(Field32::VmInstructionError.encoding()) {
        (value, 0, 0) => VmInstructionError::from_raw(value as u32),
        _ => VmInstructionError::Unknown(0),
    }
}

/// VMREAD without decoding: (value, CF, ZF).
fn vmread_raw(encoding: u32) -> (u64, u8, u8) {
    let value: u64;
    let cf: u8;
    let zf: u8;
    // SAFETY: VMREAD copies a field of the current VMCS (processor-owned memory) into a
    // register and writes no memory; without a current VMCS it fails with VMfailInvalid and
    // outside VMX operation it raises #UD.
    unsafe {
        asm!(
            "vmread {value}, {encoding}",
            "setc {cf}",
            "setz {zf}",
            encoding = in(reg) u64::from(encoding),
            value = lateout(reg) value,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nomem, nostack),
        );
    }
    (value, cf, zf)
}

/// VMXON: enters VMX root operation with the VMXON region at `region` (SDM Vol. 3C §31.3).
/// Use `vmxon::enable_vmx`, which prepares the processor and the region first.
///
/// # Safety
///
/// `region` must be a 4 KiB-aligned region of at least the VMCS size (IA32_VMX_BASIC 44:32)
/// holding the revision identifier, owned by the caller and left to the processor until VMXOFF;
/// CR0, CR4 and IA32_FEATURE_CONTROL must allow VMXON.
pub unsafe fn vmxon(region: HostPhysAddr) -> Result<(), VmFail> {
    let pa = region.as_u64();
    let cf: u8;
    let zf: u8;
    // SAFETY: the caller hands the region to the processor (see the function's contract); the
    // operand is a pointer to a live local.
    unsafe {
        asm!(
            "vmxon qword ptr [{pa}]",
            "setc {cf}",
            "setz {zf}",
            pa = in(reg) &pa,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    outcome(cf, zf)
}

/// VMXOFF: leaves VMX operation. VMCSs still active should be cleared first (VMCLEAR) so their
/// data reaches memory.
pub fn vmxoff() -> Result<(), VmFail> {
    let cf: u8;
    let zf: u8;
    // SAFETY: VMXOFF changes no memory atoll can see; afterwards VMX instructions raise #UD.
    unsafe {
        asm!(
            "vmxoff",
            "setc {cf}",
            "setz {zf}",
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    outcome(cf, zf)
}

/// VMCLEAR: writes the VMCS at `vmcs` back to memory, marks it clear and inactive, and makes it
/// not current if it was.
///
/// # Safety
///
/// `vmcs` must be a 4 KiB-aligned VMCS region owned by the caller: the processor writes to it.
pub unsafe fn vmclear(vmcs: HostPhysAddr) -> Result<(), VmFail> {
    let pa = vmcs.as_u64();
    let cf: u8;
    let zf: u8;
    // SAFETY: the caller owns the region the processor writes; the operand is a live local.
    unsafe {
        asm!(
            "vmclear qword ptr [{pa}]",
            "setc {cf}",
            "setz {zf}",
            pa = in(reg) &pa,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    outcome(cf, zf)
}

/// VMPTRLD: makes the VMCS at `vmcs` current on this core.
///
/// # Safety
///
/// `vmcs` must be a 4 KiB-aligned VMCS region holding the revision identifier, owned by the
/// caller and left to the processor until it is cleared (VMCLEAR); it must not be current on
/// another core.
pub unsafe fn vmptrld(vmcs: HostPhysAddr) -> Result<(), VmFail> {
    let pa = vmcs.as_u64();
    let cf: u8;
    let zf: u8;
    // SAFETY: the caller hands the region to the processor; the operand is a live local.
    unsafe {
        asm!(
            "vmptrld qword ptr [{pa}]",
            "setc {cf}",
            "setz {zf}",
            pa = in(reg) &pa,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack),
        );
    }
    outcome(cf, zf)
}

/// VMREAD of `field` of the current VMCS.
pub fn vmread(field: Field) -> Result<u64, VmFail> {
    let (value, cf, zf) = vmread_raw(field.encoding());
    outcome(cf, zf).map(|()| value)
}

/// VMWRITE of `value` to `field` of the current VMCS.
pub fn vmwrite(field: Field, value: u64) -> Result<(), VmFail> {
    let cf: u8;
    let zf: u8;
    // SAFETY: VMWRITE changes a field of the current VMCS (processor-owned memory) and no
    // memory atoll can see; its effects happen at VM entry, under `vm_enter`'s contract.
    unsafe {
        asm!(
            "vmwrite {encoding}, {value}",
            "setc {cf}",
            "setz {zf}",
            encoding = in(reg) u64::from(field.encoding()),
            value = in(reg) value,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nomem, nostack),
        );
    }
    outcome(cf, zf)
}

/// The current VMCS of the calling core, through VMREAD and VMWRITE.
#[derive(Clone, Copy, Debug, Default)]
pub struct CurrentVmcs;

impl VmcsAccess for CurrentVmcs {
    fn read(&mut self, field: Field) -> Result<u64, VmFail> {
        vmread(field)
    }

    fn write(&mut self, field: Field, value: u64) -> Result<(), VmFail> {
        vmwrite(field, value)
    }
}

/// Reads a 16-bit field of the current VMCS.
pub fn read16(field: Field16) -> Result<u16, VmFail> {
    CurrentVmcs.read16(field)
}

/// Reads a 32-bit field of the current VMCS.
pub fn read32(field: Field32) -> Result<u32, VmFail> {
    CurrentVmcs.read32(field)
}

/// Reads a 64-bit field of the current VMCS.
pub fn read64(field: Field64) -> Result<u64, VmFail> {
    CurrentVmcs.read64(field)
}

/// Reads a natural-width field of the current VMCS.
pub fn read_natural(field: FieldNatural) -> Result<u64, VmFail> {
    CurrentVmcs.read_natural(field)
}

/// Writes a 16-bit field of the current VMCS.
pub fn write16(field: Field16, value: u16) -> Result<(), VmFail> {
    CurrentVmcs.write16(field, value)
}

/// Writes a 32-bit field of the current VMCS.
pub fn write32(field: Field32, value: u32) -> Result<(), VmFail> {
    CurrentVmcs.write32(field, value)
}

/// Writes a 64-bit field of the current VMCS.
pub fn write64(field: Field64, value: u64) -> Result<(), VmFail> {
    CurrentVmcs.write64(field, value)
}

/// Writes a natural-width field of the current VMCS.
pub fn write_natural(field: FieldNatural, value: u64) -> Result<(), VmFail> {
    CurrentVmcs.write_natural(field, value)
}

/// What INVVPID invalidates (SDM Vol. 3C §31.3 "INVVPID"; which kinds a processor supports is
/// in IA32_VMX_EPT_VPID_CAP bits 40–43).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvVpid {
    /// Type 0: mappings of one linear address tagged with `vpid`.
    IndividualAddress {
        /// The VPID (not 0).
        vpid: u16,
        /// The guest-linear address (canonical).
        address: GuestVirtAddr,
    },
    /// Type 1: all mappings tagged with `vpid`.
    SingleContext {
        /// The VPID (not 0).
        vpid: u16,
    },
    /// Type 2: all mappings tagged with any VPID but 0.
    AllContexts,
    /// Type 3: all mappings tagged with `vpid` except global translations.
    SingleContextRetainingGlobals {
        /// The VPID (not 0).
        vpid: u16,
    },
}

/// INVVPID: invalidates cached linear mappings tagged with a VPID. An unsupported type or a
/// VPID of 0 fails with VMfailValid 28 (invalid operand).
pub fn invvpid(what: InvVpid) -> Result<(), VmFail> {
    let (kind, vpid, address) = match what {
        InvVpid::IndividualAddress { vpid, address } => (0u64, vpid, address.as_u64()),
        InvVpid::SingleContext { vpid } => (1, vpid, 0),
        InvVpid::AllContexts => (2, 0, 0),
        InvVpid::SingleContextRetainingGlobals { vpid } => (3, vpid, 0),
    };
    // The 128-bit descriptor: bits 15:0 VPID, 63:16 reserved (0), 127:64 linear address.
    let descriptor: [u64; 2] = [u64::from(vpid), address];
    let cf: u8;
    let zf: u8;
    // SAFETY: INVVPID only drops cached translations (the processor refills them from the
    // guest's page tables) and reads the descriptor, a live local.
    unsafe {
        asm!(
            "invvpid {kind}, [{descriptor}]",
            "setc {cf}",
            "setz {zf}",
            kind = in(reg) kind,
            descriptor = in(reg) &descriptor,
            cf = out(reg_byte) cf,
            zf = out(reg_byte) zf,
            options(nostack, readonly),
        );
    }
    outcome(cf, zf)
}
