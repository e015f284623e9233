//! Core state a guest reaches directly, put back to its reset values before a new vCPU runs on
//! the core.
//!
//! Some registers are the guest's own while it runs and are not switched on every exit because
//! atoll's code never consumes them (see [`crate::run::exits::PASSTHROUGH_MSRS`] and
//! `docs/security.md`): the SYSCALL MSRs and KERNEL_GS_BASE (VMX only; SVM switches them with
//! VMLOAD/VMSAVE), IA32_TSC_AUX, IA32_SPEC_CTRL, XCR0 and the debug address and status
//! registers. They stay as the last guest left them, so a core that ran one partition and then
//! runs another (a reclaimed core) would show the new one the old one's values. Both backends
//! call [`reset`] when they build a vCPU.

use crate::run::exits::msr;

/// Writes `value` to `index`.
///
/// # Safety
///
/// `index` must exist on this processor and `value` be valid for it, and the MSR must not be
/// one atoll's own code depends on.
unsafe fn wrmsr(index: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR exists and takes this value.
    unsafe { x86_64::registers::model_specific::Msr::new(index).write(value) };
}

/// Puts the guest-reachable state of this core back to its reset values (SDM Vol. 3A §10.1
/// Table 10-1): STAR, LSTAR, CSTAR, FMASK and KERNEL_GS_BASE 0; TSC_AUX 0 where RDTSCP or RDPID
/// exists; SPEC_CTRL 0 where the CPU has it; every user state component (x87, SSE, AVX, …) in
/// its initial configuration and XCR0 = 1 (x87 only); DR0–DR3 0 and DR6 0xFFFF0FF0.
pub fn reset() {
    let cpuid = |leaf: u32, sub: u32| {
        let r = core::arch::x86_64::__cpuid_count(leaf, sub);
        [r.eax, r.ebx, r.ecx, r.edx]
    };
    let max = cpuid(0, 0)[0];
    let max_ext = cpuid(0x8000_0000, 0)[0];
    let leaf7 = if max >= 7 { cpuid(7, 0) } else { [0; 4] };
    let ext1 = if max_ext >= 0x8000_0001 {
        cpuid(0x8000_0001, 0)
    } else {
        [0; 4]
    };
    let ext8 = if max_ext >= 0x8000_0008 {
        cpuid(0x8000_0008, 0)
    } else {
        [0; 4]
    };
    // SAFETY: the SYSCALL MSRs and KERNEL_GS_BASE exist on every 64-bit processor (atoll runs in
    // long mode) and 0 is their reset value; atoll never executes SYSCALL, SYSRET or SWAPGS.
    unsafe {
        for m in [
            msr::IA32_STAR,
            msr::IA32_LSTAR,
            msr::IA32_CSTAR,
            msr::IA32_FMASK,
            msr::IA32_KERNEL_GS_BASE,
        ] {
            wrmsr(m, 0);
        }
    }
    // RDTSCP (0x8000_0001 EDX 27) or RDPID (7.0 ECX 22) means IA32_TSC_AUX exists.
    if ext1[3] & (1 << 27) != 0 || leaf7[2] & (1 << 22) != 0 {
        // SAFETY: IA32_TSC_AUX exists (checked above); atoll never reads it (no RDTSCP/RDPID).
        unsafe { wrmsr(msr::IA32_TSC_AUX, 0) };
    }
    // IA32_SPEC_CTRL exists with IBRS or SSBD (7.0 EDX 26, 31; AMD 0x8000_0008 EBX 14, 24).
    let spec_ctrl =
        leaf7[3] & ((1 << 26) | (1 << 31)) != 0 || ext8[1] & ((1 << 14) | (1 << 24)) != 0;
    if spec_ctrl {
        // SAFETY: the MSR exists (checked above) and 0, its reset value, is always valid.
        unsafe { wrmsr(msr::IA32_SPEC_CTRL, 0) };
    }
    reset_extended_state(max);
    // SAFETY: atoll uses no debug registers (DR7 is the guest's in the VMCS/VMCB and breakpoints
    // are disabled in the host's on every exit), so their values only matter to the guest.
    unsafe {
        core::arch::asm!(
            "mov dr0, {z}",
            "mov dr1, {z}",
            "mov dr2, {z}",
            "mov dr3, {z}",
            "mov dr6, {r}",
            z = in(reg) 0u64,
            r = in(reg) 0xffff_0ff0u64,
            options(nomem, nostack)
        );
    }
}

/// An all-zero XSAVE area in the standard format: legacy region with MXCSR 0 and an XSAVE header
/// whose XSTATE_BV is 0, so XRSTOR from it puts every requested component in its initial
/// configuration (SDM Vol. 1 §13.8.1). Only read, by any core.
#[repr(C, align(64))]
struct InitArea([u8; INIT_AREA_BYTES]);

/// Large enough for every user component of current processors (AMX's tile data included).
const INIT_AREA_BYTES: usize = 16 * 1024;

static INIT_AREA: InitArea = InitArea([0; INIT_AREA_BYTES]);

/// Initializes the x87, SSE, AVX, … registers, so a guest never sees values the core's last
/// guest left in them, and leaves XCR0 at its reset value 1.
fn reset_extended_state(max_basic: u32) {
    let mut cr4: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack)) };
    let area = INIT_AREA.0.as_ptr();
    if cr4 & (1 << 18) == 0 || max_basic < 0xd {
        // No XSAVE: FXRSTOR of the zeroed area clears x87 and SSE registers, then FNINIT and
        // MXCSR give their reset control values.
        // SAFETY: FXRSTOR reads 512 bytes of the 16-byte aligned, zeroed, static area (MXCSR 0
        // has no reserved bit set); CR4.OSFXSR is set in long mode with SSE.
        unsafe {
            core::arch::asm!(
                "fxrstor64 [{a}]",
                "fninit",
                "push 0x1f80",
                "ldmxcsr [rsp]",
                "add rsp, 8",
                a = in(reg) area,
            );
        }
        return;
    }
    let r = core::arch::x86_64::__cpuid_count(0xd, 0);
    let supported = u64::from(r.eax) | (u64::from(r.edx) << 32);
    // ECX: the area size for every supported component.
    if r.ecx as usize > INIT_AREA_BYTES {
        log::warn!(
            "XSAVE area of {} bytes exceeds atoll's initial area: extended registers not cleared",
            r.ecx
        );
    } else {
        // SAFETY: XCR0 = every supported user component is a valid value (CPUID lists them;
        // paired components are listed together); XRSTOR reads the header and legacy region of
        // the 64-byte aligned, zeroed area, which is at least as large as the CPU's XSAVE area;
        // with XSTATE_BV = 0 it initializes every component; atoll uses no extended state.
        unsafe {
            core::arch::asm!(
                "xsetbv",
                "mov eax, -1",
                "mov edx, -1",
                "xrstor64 [{a}]",
                a = in(reg) area,
                inout("ecx") 0u32 => _,
                inout("eax") supported as u32 => _,
                inout("edx") (supported >> 32) as u32 => _,
            );
        }
    }
    // SAFETY: CR4.OSXSAVE is set, so XSETBV is valid; XCR0 = 1 (x87) is always allowed.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") 1u32, in("edx") 0u32, options(nomem, nostack));
    }
}

/// The guest's DR6 while it runs on this core (DR6 is not switched: it is the guest's).
pub fn dr6() -> u64 {
    let v: u64;
    // SAFETY: reading DR6 at CPL 0 has no side effects.
    unsafe { core::arch::asm!("mov {}, dr6", out(reg) v, options(nomem, nostack)) };
    v
}

/// Sets the guest's DR6 (see [`dr6`]).
pub fn set_dr6(value: u64) {
    // SAFETY: atoll does not use DR6 itself; bits 63:32 must be 0, which callers keep (they
    // only set bits of the low half).
    unsafe {
        core::arch::asm!("mov dr6, {}", in(reg) value & 0xffff_ffff, options(nomem, nostack))
    };
}
