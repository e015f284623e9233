//! The time-stamp counter, calibrated against PIT channel 2.
//!
//! The PIT runs at 1.193182 MHz on every PC (and in both emulators); counting TSC ticks over a
//! 10 ms one-shot of channel 2, gated through port 0x61, gives the TSC frequency without
//! trusting CPUID leaves that emulators fill inconsistently.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 10;
/// Used when the PIT never fires (a machine without one).
const FALLBACK_HZ: u64 = 2_000_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(FALLBACK_HZ);

/// Reads the TSC.
pub fn now() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC frequency; returns it and keeps it for [`micros`] and [`delay_us`].
pub fn calibrate() -> u64 {
    let count = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
    let mut gate: Port<u8> = Port::new(0x61);
    let mut mode: Port<u8> = Port::new(0x43);
    let mut ch2: Port<u8> = Port::new(0x42);
    // SAFETY: ports 0x42, 0x43 and 0x61 are the PIT and its gate on every PC; channel 2 drives
    // only the speaker gate, which stays off (bit 1 clear).
    let hz = unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01);
        mode.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write(count as u8);
        ch2.write((count >> 8) as u8);
        let start = now();
        let mut spins = 0u64;
        while gate.read() & 0x20 == 0 && spins < 50_000_000 {
            spins += 1;
        }
        let end = now();
        if gate.read() & 0x20 == 0 {
            log::warn!(
                "PIT channel 2 never fired; assuming a {} MHz TSC",
                FALLBACK_HZ / 1_000_000
            );
            FALLBACK_HZ
        } else {
            (end - start) * (1000 / CALIBRATION_MS)
        }
    };
    TSC_HZ.store(hz.max(1_000_000), Ordering::Relaxed);
    hz
}

/// Microseconds since the TSC started.
pub fn micros() -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed);
    ((now() as u128) * 1_000_000 / hz as u128) as u64
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    let end = micros() + us;
    while micros() < end {
        core::hint::spin_loop();
    }
}

/// The TSC frequency [`calibrate`] measured.
pub fn hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}
