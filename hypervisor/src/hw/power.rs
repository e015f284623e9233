//! Stopping the machine: ACPI S5 through the FADT's PM1 control registers (ACPI 6.5 §4.8.3.2.1,
//! SLP_TYP in bits 12:10, SLP_EN bit 13).

use crate::machine::platform::PmControl;
use x86_64::instructions::port::Port;

const SLP_EN: u16 = 1 << 13;

/// Powers off through ACPI if the platform says how; otherwise (or if that did not stop us)
/// halts this core forever.
pub fn power_off(pm: Option<PmControl>) -> ! {
    super::console::flush();
    if let Some(PmControl {
        pm1a,
        pm1b,
        s5: Some((typ_a, typ_b)),
    }) = pm
    {
        // SAFETY: the FADT names this port as the PM1a control register; writing SLP_TYP for
        // S5 with SLP_EN is the architected way to power off.
        unsafe { Port::<u16>::new(pm1a).write((u16::from(typ_a & 7) << 10) | SLP_EN) };
        if let Some(b) = pm1b {
            // SAFETY: as for PM1a: the FADT's PM1b control register, S5 with SLP_EN.
            unsafe { Port::<u16>::new(b).write((u16::from(typ_b & 7) << 10) | SLP_EN) };
        }
        super::tsc::delay_us(100_000);
        log::warn!("ACPI power-off did not take effect; halting");
    } else {
        log::warn!("the firmware gives no ACPI S5 sleep type; halting instead of powering off");
    }
    super::halt_forever()
}
