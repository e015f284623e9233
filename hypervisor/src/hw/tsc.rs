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
    // Ports 0x42, 0x43 and 0x61 are the PIT and its gate on every PC; channel 2 drives only the
    // speaker gate, which stays off (bit 1 clear).
    // SAFETY: reading the gate register has no side effects.
    let g = unsafe { gate.read() };
    // SAFETY: sets channel 2's gate and leaves the speaker off (bit 1 clear); nothing else hangs
    // off this register's low bits.
    unsafe { gate.write((g & !0x02) | 0x01) };
    // SAFETY: the mode command programs channel 2 only, whose output reaches nothing but the
    // speaker, which stays off.
    unsafe { mode.write(0b1011_0000) }; // channel 2, lobyte/hibyte, mode 0, binary
                                        // SAFETY: channel 2's count, low byte first as the mode command said; channel 2 only.
    unsafe { ch2.write(count as u8) };
    // SAFETY: channel 2's count, high byte; channel 2 only.
    unsafe { ch2.write((count >> 8) as u8) };
    // SAFETY: reading the gate register has no side effects; bit 5 is channel 2's output.
    let mut fired = || unsafe { gate.read() } & 0x20 != 0;
    let start = now();
    let mut spins = 0u64;
    while !fired() && spins < 50_000_000 {
        spins += 1;
    }
    let end = now();
    let hz = if !fired() {
        log::warn!(
            "PIT channel 2 never fired; assuming a {} MHz TSC",
            FALLBACK_HZ / 1_000_000
        );
        FALLBACK_HZ
    } else {
        (end - start) * (1000 / CALIBRATION_MS)
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
