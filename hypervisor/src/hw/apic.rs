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
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
/// SVR bit 8 software-enables the APIC; vector 0xff for spurious interrupts.
const SVR_ENABLE: u32 = (1 << 8) | 0xff;

/// Signals end of interrupt to this core's local APIC, in whichever mode it is.
pub fn eoi() {
    let base_msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { base_msr.read() };
    if base & APIC_BASE_X2APIC != 0 {
        // SAFETY: x2APIC mode is on, so the EOI MSR exists; writing 0 acknowledges.
        unsafe { Msr::new(0x80b).write(0) };
    } else {
        let page = (base & 0x000f_ffff_ffff_f000) as usize;
        // SAFETY: the xAPIC page is identity-mapped below 4 GiB; EOI is a 32-bit register at 0xb0.
        unsafe { core::ptr::write_volatile((page + 0xb0) as *mut u32, 0) };
    }
}

/// This core's local APIC.
pub enum LocalApic {
    /// Memory-mapped registers at this (identity-mapped) address.
    XApic(usize),
    /// MSR-based registers.
    X2Apic,
}

impl LocalApic {
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
                // SAFETY: ICR high then low, 32-bit accesses to the identity-mapped APIC page;
                // the low write sends the IPI.
                unsafe {
                    core::ptr::write_volatile((base + XAPIC_ICR_HIGH) as *mut u32, dest << 24);
                    core::ptr::write_volatile((base + XAPIC_ICR_LOW) as *mut u32, low);
                }
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
