//! The parts of atoll that touch the machine directly: port I/O, MSRs, the serial console, the
//! local APIC, the TSC and ACPI power-off. Everything here is small and typed; policy lives in
//! the host-tested modules above.

pub mod apic;
pub mod channel_window;
pub mod console;
pub mod contain;
pub mod core_tables;
pub mod device_irq;
pub mod enclave_run;
pub mod guest_state;
pub mod host;
pub mod host_ram;
pub mod host_run;
pub mod msr;
pub mod power;
pub mod rtc;
pub mod svm_backend;
pub mod tsc;
pub mod vmx_backend;
pub mod vtd;

use acpi::{AcpiHandler, PhysicalMapping};
use core::ptr::NonNull;

/// Highest physical address the boot page tables identity-map.
pub const IDENTITY_MAPPED_END: u64 = 4 << 30;

/// ACPI table access through the boot identity map.
#[derive(Clone, Copy, Debug)]
pub struct IdentityMapped;

impl AcpiHandler for IdentityMapped {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        // Tables above the identity map cannot be read yet: refuse loudly rather than fault.
        assert!(
            (phys as u64).saturating_add(size as u64) <= IDENTITY_MAPPED_END,
            "ACPI table at {phys:#x} lies above the 4 GiB identity map"
        );
        let ptr = NonNull::new(phys as *mut T).expect("ACPI table at physical address 0");
        // SAFETY: the range lies in the identity map (checked above), so the virtual address
        // equals the physical one; the caller vouches that a `T` lives there.
        unsafe { PhysicalMapping::new(phys, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Masks every line of the legacy 8259 PICs. atoll takes no device interrupts of its own yet,
/// and a timer tick left enabled by the BIOS would otherwise arrive as a host interrupt while a
/// guest runs.
pub fn mask_legacy_pic() {
    // SAFETY: 0x21 is the primary 8259's interrupt mask register on every PC; masking all
    // lines has no other effect.
    unsafe { x86_64::instructions::port::Port::<u8>::new(0x21).write(0xff) };
    // SAFETY: 0xa1 is the secondary 8259's mask register; as above.
    unsafe { x86_64::instructions::port::Port::<u8>::new(0xa1).write(0xff) };
}

/// Sets IA32_EFER.NXE on this core when the CPU has NX (CPUID 0x8000_0001 EDX bit 20), so
/// page-table NX bits (atoll's nested tables on SVM) are valid rather than reserved.
pub fn enable_nxe() {
    if core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 20) != 0 {
        let mut efer = x86_64::registers::model_specific::Msr::new(0xc000_0080);
        // SAFETY: IA32_EFER exists on every x86-64 CPU; reading it has no side effects.
        let v = unsafe { efer.read() };
        // SAFETY: setting NXE on a CPU that has NX only makes bit 63 of paging entries
        // meaningful; atoll's own tables never set it. The other bits are written back as read.
        unsafe { efer.write(v | (1 << 11)) };
    }
}

/// Sets CR4.OSXSAVE on this core when the CPU has XSAVE: XSETBV on behalf of guests needs it
/// (both backends call this when they enable virtualization on a core).
pub fn enable_osxsave() {
    if core::arch::x86_64::__cpuid(1).ecx & (1 << 26) != 0 {
        let mut cr4: u64;
        // SAFETY: reading CR4 at CPL 0 has no side effects.
        unsafe { core::arch::asm!("mov {}, cr4", out(reg) cr4) };
        cr4 |= 1 << 18;
        // SAFETY: the CPU has XSAVE, so CR4.OSXSAVE may be set; atoll uses no extended state.
        // The other bits are written back as read.
        unsafe { core::arch::asm!("mov cr4, {}", in(reg) cr4) };
    }
}

/// Sleeps on this core (interrupts on, HLT) until its APIC timer fires `us` microseconds from
/// now or another interrupt arrives: a waiting core then costs an emulator (Bochs runs its
/// processors in turn) nothing, unlike a spin loop.
pub fn idle_wait_us(us: u64) {
    if host_owns_this_core() {
        // The host's timer and interrupts: atoll neither arms the APIC timer nor enables
        // interrupts here (a host device interrupt would land in atoll's IDT). Spin.
        spin_wait_us(us);
        return;
    }
    let hz = tsc::hz();
    apic::timer_arm(
        crate::run::vplat::TIMER_VECTOR,
        us.saturating_mul(hz) / 1_000_000,
        hz,
    );
    halt_until_interrupt();
    apic::timer_stop();
}

/// Waits `us` microseconds of the TSC with interrupts off, touching nothing.
pub fn spin_wait_us(us: u64) {
    let end = tsc::now().saturating_add(us.saturating_mul(tsc::hz()) / 1_000_000);
    while tsc::now() < end {
        core::hint::spin_loop();
    }
}

/// Per core slot: whether the root partition owns this core's local APIC timer and interrupts
/// (set before the host first runs there, for good).
static HOST_CORE: [core::sync::atomic::AtomicBool; crate::machine::smp::MAX_CORES] =
    [const { core::sync::atomic::AtomicBool::new(false) }; crate::machine::smp::MAX_CORES];

/// Marks the calling core as the host's: atoll's idle waits spin from now on.
pub fn give_core_to_host() {
    if let Some(slot) = core_tables::this_slot() {
        HOST_CORE[slot].store(true, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Takes the calling core back from a host that has ended for good: atoll's idle waits halt
/// again (with its timer) instead of spinning.
pub fn take_core_back_from_host() {
    if let Some(slot) = core_tables::this_slot() {
        HOST_CORE[slot].store(false, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether the calling core is the host's ([`give_core_to_host`]).
pub fn host_owns_this_core() -> bool {
    core_tables::this_slot()
        .is_some_and(|slot| HOST_CORE[slot].load(core::sync::atomic::Ordering::Relaxed))
}

/// Enables interrupts and halts until one arrives, then disables them again. STI's
/// one-instruction shadow makes "enable and halt" atomic: an interrupt already pending (a kick
/// sent after the caller last looked) wakes the HLT at once.
pub fn halt_until_interrupt() {
    // SAFETY: every vector has a gate that returns (atoll's IDT); interrupts are off again
    // afterwards, as callers expect.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Stops the calling core for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
