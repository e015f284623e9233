//! Turning SVM on, target only.
//!
//! This module owns the steps of AMD64 APM Vol. 2 §15.4 "Enabling SVM" on the calling core:
//! check CPUID Fn8000_0001 ECX.SVM and VM_CR.SVMDIS (§15.30.1), set EFER.SVME, and name the host
//! save area in VM_HSAVE_PA (§15.30.4), where VMRUN saves the host state it restores at
//! #VMEXIT. The decisions are the pure functions of [`crate::caps`]; this module only executes
//! CPUID, RDMSR and WRMSR.

use crate::caps::{check_svm_present, vm_cr_update, SvmCaps, SvmFeatures, CPUID_SVM_LEAF};
use crate::error::{check_page_aligned, Error, Structure};
use crate::msr::{Msr, EFER, EFER_SVME, VM_CR, VM_HSAVE_PA};
use boot::addr::HostPhysAddr;
use core::arch::asm;
use core::arch::x86_64::__cpuid;

/// CPUID Fn8000_000A decoded, or `None` when the processor has no SVM (so the leaf means
/// nothing). Reads CPUID only; usable before [`enable_svm`].
pub fn read_caps() -> Option<SvmCaps> {
    let max_extended = __cpuid(0x8000_0000).eax;
    let ecx = if max_extended >= 0x8000_0001 {
        __cpuid(0x8000_0001).ecx
    } else {
        0
    };
    check_svm_present(max_extended, ecx).ok()?;
    let leaf = __cpuid(CPUID_SVM_LEAF);
    Some(SvmCaps::from_cpuid(leaf.eax, leaf.ebx, leaf.edx))
}

/// Enables SVM on the calling core: checks that the processor has SVM and that firmware did
/// not lock it off, clears VM_CR.SVMDIS if firmware left it set but unlocked, sets EFER.SVME and
/// writes `host_save_area` to VM_HSAVE_PA. Returns what CPUID Fn8000_000A says. Every check
/// happens before any register is written, so a refusal leaves the core as it was. Calling it
/// again on an enabled core only rewrites VM_HSAVE_PA.
///
/// # Safety
///
/// * The caller runs at CPL 0 in long mode and stays on this core while SVM is used.
/// * `host_save_area` is the host-physical address of a 4 KiB page owned by the caller and
///   used for nothing else while SVM is enabled on this core: VMRUN writes the host state
///   there in a format software must not rely on (§15.30.4).
pub unsafe fn enable_svm(host_save_area: HostPhysAddr) -> Result<SvmCaps, Error> {
    check_page_aligned(Structure::HostSaveArea, host_save_area)?;
    let caps = read_caps().ok_or(Error::SvmAbsent)?;
    // SAFETY: VM_CR exists on every processor with SVM (§15.30.1), checked just above.
    let vm_cr = unsafe { rdmsr(VM_CR) };
    let vm_cr_write = vm_cr_update(vm_cr, caps.features.contains(SvmFeatures::SVM_LOCK))?;

    if let Some(value) = vm_cr_write {
        // SAFETY: VM_CR.LOCK is clear, so SVMDIS is writable (§15.30.1); `value` is the value
        // read with only SVMDIS cleared.
        unsafe { wrmsr(VM_CR, value) };
    }
    // SAFETY: EFER exists in long mode; SVME is allowed now that SVMDIS is clear, and setting
    // it only enables the SVM instructions.
    let efer = unsafe { rdmsr(EFER) };
    if efer & EFER_SVME == 0 {
        // SAFETY: as above; every other EFER bit is written back unchanged.
        unsafe { wrmsr(EFER, efer | EFER_SVME) };
    }
    // SAFETY: the address is 4 KiB aligned (checked above) and the caller hands the page to
    // the processor for as long as SVM is enabled on this core.
    unsafe { wrmsr(VM_HSAVE_PA, host_save_area.as_u64()) };
    Ok(caps)
}

/// # Safety
///
/// `msr` must exist (RDMSR of a missing MSR raises #GP).
unsafe fn rdmsr(msr: Msr) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR has no other effect.
    unsafe {
        asm!(
            "rdmsr",
            in("ecx") msr.0,
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        )
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
///
/// `msr` must exist and `value` must be valid for it, with effects the caller accounts for.
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
