//! The local APIC, as far as bring-up needs it: this core's id and INIT/STARTUP IPIs.
//!
//! xAPIC registers are memory-mapped at the base in IA32_APIC_BASE (SDM Vol. 3A §11.4.1); in
//! x2APIC mode the ICR is MSR 0x830 (§11.12.9). atoll uses the mode firmware left the APIC in,
//! switching to x2APIC only when a target's id does not fit the 8-bit xAPIC destination.

use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const X2APIC_ICR: u32 = 0x830;
const X2APIC_SVR: u32 = 0x80f;

/// xAPIC register offsets (SDM Vol. 3A Table 11-1).
const XAPIC_SVR: usize = 0xf0;
const XAPIC_ICR_LOW: usize = 0x300;
const XAPIC_ICR_HIGH: usize = 0x310;

/// ICR delivery modes and flags (SDM Vol. 3A Figure 11-12).
const ICR_NMI: u32 = 0b100 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
/// SVR bit 8 software-enables the APIC; vector 0xff for spurious interrupts.
const SVR_ENABLE: u32 = (1 << 8) | 0xff;

/// The EOI register: xAPIC offset 0xB0, x2APIC MSR 0x80B (SDM Vol. 3A Table 11-6).
const EOI: (usize, u32) = (0xb0, 0x80b);

/// Signals end of interrupt to this core's local APIC, in whichever mode it is.
pub fn eoi() {
    reg_write(EOI, 0);
}

/// This core's local APIC.
pub enum LocalApic {
    /// Memory-mapped registers at this (identity-mapped) address.
    XApic(usize),
    /// MSR-based registers.
    X2Apic,
}

impl LocalApic {
    /// This core's APIC as it is now: the mode and base in IA32_APIC_BASE.
    pub fn current() -> Self {
        // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
        let base = unsafe { Msr::new(IA32_APIC_BASE).read() };
        if base & APIC_BASE_X2APIC != 0 {
            LocalApic::X2Apic
        } else {
            LocalApic::XApic((base & 0x000f_ffff_ffff_f000) as usize)
        }
    }

    /// Takes this core's APIC, enabled, in x2APIC mode when `need_x2apic` (and the CPU has it)
    /// or when firmware already chose it.
    pub fn init(need_x2apic: bool, has_x2apic: bool) -> Self {
        let mut base_msr = Msr::new(IA32_APIC_BASE);
        // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
        let base = unsafe { base_msr.read() };
        let apic = if base & APIC_BASE_X2APIC != 0 || (need_x2apic && has_x2apic) {
            // SAFETY: setting EN and EXTD together is the architected switch to x2APIC mode.
            unsafe { base_msr.write(base | APIC_BASE_ENABLE | APIC_BASE_X2APIC) };
            LocalApic::X2Apic
        } else {
            // SAFETY: keeps the current base and enables the xAPIC.
            unsafe { base_msr.write(base | APIC_BASE_ENABLE) };
            LocalApic::XApic((base & 0x000f_ffff_ffff_f000) as usize)
        };
        apic.write_svr(SVR_ENABLE);
        apic
    }

    fn write_svr(&self, v: u32) {
        match self {
            // SAFETY: the xAPIC page is identity-mapped below 4 GiB; SVR is a 32-bit register.
            LocalApic::XApic(base) => unsafe {
                core::ptr::write_volatile((base + XAPIC_SVR) as *mut u32, v)
            },
            // SAFETY: x2APIC mode is on, so the SVR MSR exists.
            LocalApic::X2Apic => unsafe { Msr::new(X2APIC_SVR).write(v.into()) },
        }
    }

    fn send(&self, dest: u32, low: u32) {
        match self {
            LocalApic::XApic(base) => {
                // SAFETY: ICR high, a 32-bit access to the identity-mapped APIC page; it only
                // sets the destination of the next IPI.
                unsafe {
                    core::ptr::write_volatile((base + XAPIC_ICR_HIGH) as *mut u32, dest << 24)
                };
                // SAFETY: ICR low, as above; this write sends the IPI.
                unsafe { core::ptr::write_volatile((base + XAPIC_ICR_LOW) as *mut u32, low) };
                for _ in 0..1_000_000 {
                    // SAFETY: as above, a read of ICR low.
                    let icr =
                        unsafe { core::ptr::read_volatile((base + XAPIC_ICR_LOW) as *const u32) };
                    if icr & ICR_DELIVERY_PENDING == 0 {
                        break;
                    }
                    core::hint::spin_loop();
                }
            }
            // SAFETY: x2APIC mode is on; one 64-bit ICR write sends the IPI (no pending bit).
            LocalApic::X2Apic => unsafe {
                Msr::new(X2APIC_ICR).write((u64::from(dest) << 32) | u64::from(low))
            },
        }
    }

    /// Sends INIT (level assert) to `apic_id`.
    pub fn send_init(&self, apic_id: u32) {
        self.send(apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
    }

    /// Sends STARTUP with `vector` to `apic_id`.
    pub fn send_startup(&self, apic_id: u32, vector: u8) {
        self.send(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(vector));
    }

    /// Sends a fixed interrupt with `vector` to this core (ICR destination shorthand "self",
    /// SDM Vol. 3A Figure 11-12).
    pub fn send_self(&self, vector: u8) {
        const SHORTHAND_SELF: u32 = 0b01 << 18;
        self.send(0, SHORTHAND_SELF | ICR_LEVEL_ASSERT | u32::from(vector));
    }
}

/// xAPIC offsets / x2APIC MSRs of the timer registers (SDM Vol. 3A §11.5.4, Table 11-6).
const LVT_TIMER: (usize, u32) = (0x320, 0x832);
const TIMER_INITIAL: (usize, u32) = (0x380, 0x838);
const TIMER_CURRENT: (usize, u32) = (0x390, 0x839);
const TIMER_DIVIDE: (usize, u32) = (0x3e0, 0x83e);
/// Divide configuration "divide by 1" (SDM Vol. 3A Figure 11-10: bits 3,1:0 = 111).
const DIVIDE_BY_1: u32 = 0b1011;
/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;

/// This core's APIC timer frequency (ticks per second with divide-by-1), measured at boot.
static TIMER_HZ: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A write of a register, given as (xAPIC offset, x2APIC MSR), in the mode the APIC is in.
fn reg_write(reg: (usize, u32), value: u32) {
    match LocalApic::current() {
        // SAFETY: x2APIC mode is on, so the register's MSR exists.
        LocalApic::X2Apic => unsafe { Msr::new(reg.1).write(value.into()) },
        // SAFETY: the xAPIC page is identity-mapped below 4 GiB; the register is 32 bits.
        LocalApic::XApic(page) => unsafe {
            core::ptr::write_volatile((page + reg.0) as *mut u32, value)
        },
    }
}

/// A read of a register, given as (xAPIC offset, x2APIC MSR), in the mode the APIC is in.
fn reg_read(reg: (usize, u32)) -> u32 {
    match LocalApic::current() {
        // SAFETY: x2APIC mode is on, so the register's MSR exists.
        LocalApic::X2Apic => unsafe { Msr::new(reg.1).read() as u32 },
        // SAFETY: the xAPIC page is identity-mapped below 4 GiB; the register is 32 bits.
        LocalApic::XApic(page) => unsafe { core::ptr::read_volatile((page + reg.0) as *const u32) },
    }
}

/// Measures this core's APIC timer against the TSC (running at `tsc_hz`) over about 10 ms and
/// keeps the result for [`timer_arm`]. Returns the timer frequency.
pub fn timer_calibrate(tsc_hz: u64) -> u64 {
    reg_write(LVT_TIMER, LVT_MASKED);
    reg_write(TIMER_DIVIDE, DIVIDE_BY_1);
    reg_write(TIMER_INITIAL, u32::MAX);
    let start = super::tsc::now();
    let wait = tsc_hz / 100;
    while super::tsc::now().wrapping_sub(start) < wait {
        core::hint::spin_loop();
    }
    let elapsed_ticks = u64::from(u32::MAX - reg_read(TIMER_CURRENT));
    let elapsed_tsc = super::tsc::now().wrapping_sub(start).max(1);
    reg_write(TIMER_INITIAL, 0);
    let hz = (u128::from(elapsed_ticks) * u128::from(tsc_hz) / u128::from(elapsed_tsc)) as u64;
    TIMER_HZ.store(hz.max(1), core::sync::atomic::Ordering::Relaxed);
    hz
}

/// Arms this core's APIC timer to raise `vector` once, `tsc_ticks` TSC ticks from now (TSC at
/// `tsc_hz`), in one-shot mode; the count saturates, so far deadlines fire early (and are
/// re-armed by the caller). Needs [`timer_calibrate`] first. Returns the TSC ticks until it
/// fires (fewer than `tsc_ticks` when the count saturated).
pub fn timer_arm(vector: u8, tsc_ticks: u64, tsc_hz: u64) -> u64 {
    let hz = TIMER_HZ.load(core::sync::atomic::Ordering::Relaxed).max(1);
    let tsc_hz = tsc_hz.max(1);
    let ticks = (u128::from(tsc_ticks) * u128::from(hz) / u128::from(tsc_hz)).max(1);
    let count = u32::try_from(ticks).unwrap_or(u32::MAX);
    reg_write(LVT_TIMER, u32::from(vector));
    reg_write(TIMER_DIVIDE, DIVIDE_BY_1);
    reg_write(TIMER_INITIAL, count);
    (u128::from(count) * u128::from(tsc_hz) / u128::from(hz)) as u64
}

/// Stops this core's APIC timer.
pub fn timer_stop() {
    reg_write(TIMER_INITIAL, 0);
}

/// Sends a fixed interrupt with `vector` to the core with APIC id `dest` (physical
/// destination), in whichever mode this core's APIC is.
pub fn send_fixed(dest: u32, vector: u8) {
    LocalApic::current().send(dest, ICR_LEVEL_ASSERT | u32::from(vector));
}

/// Sends an NMI to the core with APIC id `dest` (delivery mode NMI, SDM Vol. 3A §11.6.1): it
/// reaches a core whatever its interrupt flag, and exits a guest on both backends.
pub fn send_nmi(dest: u32) {
    LocalApic::current().send(dest, ICR_NMI | ICR_LEVEL_ASSERT);
}

/// Whether this core's APIC is in x2APIC mode.
pub fn is_x2apic() -> bool {
    matches!(LocalApic::current(), LocalApic::X2Apic)
}

/// This core's APIC id: CPUID leaf 0xB's x2APIC id where the CPU has it, else leaf 1's initial
/// APIC id (SDM Vol. 3A §11.4.6, §11.12.8.1).
pub fn current_id() -> u32 {
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max >= 0xb {
        let r = core::arch::x86_64::__cpuid_count(0xb, 0);
        if r.ebx != 0 {
            return r.edx;
        }
    }
    core::arch::x86_64::__cpuid(1).ebx >> 24
}

/// The local vector table and in-service registers, as (xAPIC offset, x2APIC MSR) (SDM Vol. 3A
/// Table 11-1, Table 11-6).
const LVT_CMCI: (usize, u32) = (0x2f0, 0x82f);
const LVT_THERMAL: (usize, u32) = (0x330, 0x833);
const LVT_PERF: (usize, u32) = (0x340, 0x834);
const LVT_LINT0: (usize, u32) = (0x350, 0x835);
const LVT_LINT1: (usize, u32) = (0x360, 0x836);
const LVT_ERROR: (usize, u32) = (0x370, 0x837);
const TPR: (usize, u32) = (0x80, 0x808);
/// ISR bits 255:0 in eight 32-bit registers from 0x100 (MSR 0x810).
const ISR0: (usize, u32) = (0x100, 0x810);
/// LVT delivery modes (§11.5.1): ExtINT for LINT0 on the boot processor (the 8259's virtual
/// wire, MP spec §3.6.2.2), NMI for LINT1.
const LVT_EXTINT: u32 = 0b111 << 8;
const LVT_NMI: u32 = 0b100 << 8;

/// IRR bits 255:0 from 0x200 (MSR 0x820); the version register (0x30, MSR 0x803) with the last
/// LVT entry's index in bits 23:16; the error status register (0x280, MSR 0x828).
const IRR0: (usize, u32) = (0x200, 0x820);
const VERSION: (usize, u32) = (0x30, 0x803);
const ESR: (usize, u32) = (0x280, 0x828);

fn any_bit(first: (usize, u32)) -> bool {
    (0..8).any(|i| reg_read((first.0 + 0x10 * i, first.1 + i as u32)) != 0)
}

/// Puts this core's local APIC back in the state a partition's fresh start expects, as far as
/// software can (an INIT or a reset would do it in hardware, but atoll emulates the host's INIT
/// and restarts the host without resetting the machine): every LVT entry masked but the PC
/// convention's LINT0 (ExtINT on the boot processor) and LINT1 (NMI), the timer stopped, TPR 0,
/// and the interrupts the partition before left pending or in service taken here and ended
/// (with interrupts briefly enabled: atoll's handlers count and end them).
pub fn reset_for_partition(bsp: bool) {
    reg_write(LVT_TIMER, LVT_MASKED);
    reg_write(TIMER_INITIAL, 0);
    // A TSC deadline the partition armed would fire as soon as the next one unmasks the timer
    // in TSC-deadline mode: disarmed by writing 0 (§11.5.4.1), where the CPU has it.
    if core::arch::x86_64::__cpuid(1).ecx & (1 << 24) != 0 {
        // SAFETY: IA32_TSC_DEADLINE exists (CPUID.1:ECX bit 24); 0 disarms this core's timer.
        unsafe { Msr::new(0x6e0).write(0) };
    }
    // Only the LVT entries this APIC has (the version register's max LVT index, §11.4.8): a
    // write to a missing one is an illegal register address in the ESR, which the partition's
    // next IPI would report as a delivery error.
    let max_lvt = (reg_read(VERSION) >> 16) & 0xff;
    for (r, index) in [(LVT_PERF, 4), (LVT_THERMAL, 5), (LVT_CMCI, 6)] {
        if max_lvt >= index {
            reg_write(r, LVT_MASKED);
        }
    }
    reg_write(LVT_ERROR, LVT_MASKED);
    reg_write(
        LVT_LINT0,
        if bsp {
            LVT_EXTINT
        } else {
            LVT_EXTINT | LVT_MASKED
        },
    );
    reg_write(LVT_LINT1, LVT_NMI);
    reg_write(TPR, 0);
    // A software-disabled APIC (the partition's shutdown clears SVR bit 8) holds its requests
    // without delivering them (§11.4.7.2): enabled again first.
    reg_write((XAPIC_SVR, X2APIC_SVR), SVR_ENABLE);
    // Pending requests are delivered into atoll's IDT (every vector's handler returns and sends
    // EOI); in-service ones the partition never ended are ended here. Bounded: 256 vectors.
    for _ in 0..256 {
        // A short loop with interrupts enabled (a loop, not a straight line: an emulator may
        // look for interrupts only where a branch ends a translated block).
        // SAFETY: interrupts enabled on atoll's own IDT, whose handlers all return; they are
        // off again after.
        unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
        for _ in 0..64 {
            core::hint::spin_loop();
        }
        // SAFETY: as above.
        unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        if any_bit(ISR0) {
            eoi();
        } else if !any_bit(IRR0) {
            break;
        }
    }
    if any_bit(IRR0) || any_bit(ISR0) {
        log::warn!("this core's APIC still has interrupts pending or in service after a reset");
    }
    // The error status: written, then read, clears it (§11.5.3).
    reg_write(ESR, 0);
    let _ = reg_read(ESR);
}

/// I/O APIC indirect registers (82093AA data sheet §3.1): IOREGSEL at the base, IOWIN at +0x10;
/// register 1 holds the last redirection entry's index in bits 23:16; entry `n` is registers
/// 0x10 + 2n (low) and 0x11 + 2n (high), the mask in bit 16 of the low half.
const IOAPIC_IOWIN: u64 = 0x10;
const IOAPIC_VERSION: u32 = 1;
const IOAPIC_REDTBL: u32 = 0x10;
const IOAPIC_MASK: u32 = 1 << 16;

/// One 32-bit access to the I/O APIC at `base` (its page), at `offset` (IOREGSEL 0x00, IOWIN
/// 0x10, EOI 0x40): a read's value, or 0 after a write. Any other offset, or a base outside
/// atoll's identity map, reads all ones and writes nothing. The caller serializes select and
/// window accesses (the host's I/O APIC lock, or the boot processor alone).
pub fn ioapic_mmio(base: u64, offset: u32, write: Option<u32>) -> u32 {
    if !matches!(offset, 0x00 | 0x10 | 0x40)
        || base & 0xfff != 0
        || base.saturating_add(0x1000) > super::IDENTITY_MAPPED_END
    {
        return u32::MAX;
    }
    let reg = (base + u64::from(offset)) as *mut u32;
    match write {
        Some(v) => {
            // SAFETY: an I/O APIC register from the firmware's MADT (page-aligned base,
            // identity-mapped uncacheable MMIO below atoll's identity-map end), one of the
            // three 32-bit registers the chip decodes.
            unsafe { core::ptr::write_volatile(reg, v) };
            0
        }
        // SAFETY: as above.
        None => unsafe { core::ptr::read_volatile(reg) },
    }
}

/// Masks every redirection entry of the I/O APIC at `base` (its state after reset), so a
/// restarted partition finds no route left by the one before it.
pub fn mask_ioapic(base: u64) {
    if base == 0 || base.saturating_add(0x20) > super::IDENTITY_MAPPED_END {
        return;
    }
    // One indirect register access: select, then read or write the window.
    let access = |reg: u32, write: Option<u32>| -> u32 {
        let sel = base as *mut u32;
        let win = (base + IOAPIC_IOWIN) as *mut u32;
        // SAFETY: the I/O APIC's select register, from the firmware's MADT, identity-mapped
        // below 4 GiB (uncacheable MMIO); only the boot processor calls this, while the host
        // is stopped, so no one else is using the select/window pair.
        unsafe { core::ptr::write_volatile(sel, reg) };
        match write {
            // SAFETY: its window register, as above, for the register just selected.
            Some(v) => unsafe { core::ptr::write_volatile(win, v) },
            // SAFETY: as above.
            None => return unsafe { core::ptr::read_volatile(win) },
        }
        0
    };
    let last = (access(IOAPIC_VERSION, None) >> 16) & 0xff;
    for n in 0..=last {
        let low = access(IOAPIC_REDTBL + 2 * n, None);
        access(IOAPIC_REDTBL + 2 * n, Some(low | IOAPIC_MASK));
    }
}
