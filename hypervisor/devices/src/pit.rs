//! Channel 2 of an 8254 programmable interval timer and its gate (port 0x61), as Linux uses them
//! to measure the TSC frequency (`quick_pit_calibrate`, `pit_calibrate_tsc`).
//!
//! The enclave platform has no PIT interrupt (hardware-reduced ACPI: no IRQ 0), but Linux on
//! non-Intel processors still times the TSC against channel 2 early in boot. Without a counter
//! there, reads of an absent port (all ones) keep its fast calibration loop spinning for 50 000
//! iterations of two port reads each. This model counts down at 1.193182 MHz derived from the
//! TSC, so the loop ends as on a PC.
//!
//! Registers (Intel 8254 data sheet): port 0x43 takes control words (bits 7:6 counter, 5:4
//! access mode — 00 latch, 01 LSB, 10 MSB, 11 LSB then MSB — 3:1 mode, 0 BCD); port 0x42 is
//! counter 2's data; port 0x61 bit 0 is counter 2's gate, bit 1 the speaker enable, and reads
//! give counter 2's output in bit 5. Counters 0 and 1 and the BCD and read-back commands are not
//! modelled: their writes are accepted and ignored, their reads return 0.

/// The PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// Counter 2 and its gate.
#[derive(Clone, Debug, Default)]
pub struct Pit {
    tsc_hz: u64,
    access: u8,
    mode: u8,
    reload: u16,
    /// The low byte of a reload value whose high byte is still to come.
    pending_lsb: Option<u8>,
    /// TSC when counting started (gate high and reload written).
    started: Option<u64>,
    latched: Option<u16>,
    /// The next read of an LSB-then-MSB counter returns the MSB.
    read_msb: bool,
    port61: u8,
}

impl Pit {
    /// A PIT whose clock is derived from a TSC of `tsc_hz`.
    pub fn new(tsc_hz: u64) -> Self {
        Self {
            tsc_hz: tsc_hz.max(1),
            ..Default::default()
        }
    }

    fn ticks(&self, now: u64) -> Option<u64> {
        let start = self.started?;
        Some(
            (u128::from(now.saturating_sub(start)) * u128::from(PIT_HZ) / u128::from(self.tsc_hz))
                as u64,
        )
    }

    /// The counter's value at `now` (it keeps counting down through zero, wrapping).
    fn count(&self, now: u64) -> u16 {
        match self.ticks(now) {
            Some(t) => (self.period().wrapping_sub(t) & 0xffff) as u16,
            None => self.reload,
        }
    }

    /// Ticks from the reload value to the terminal count (a reload of 0 counts 0x10000).
    fn period(&self) -> u64 {
        if self.reload == 0 {
            0x1_0000
        } else {
            u64::from(self.reload)
        }
    }

    /// OUT2 in mode 0: low while counting, high from the terminal count on.
    fn output(&self, now: u64) -> bool {
        match self.ticks(now) {
            Some(t) => self.mode != 0 || t >= self.period(),
            None => self.mode != 0,
        }
    }

    fn gate(&self) -> bool {
        self.port61 & 1 != 0
    }

    /// A write of `value` to `port` (0x40–0x43 or 0x61) at TSC `now`.
    pub fn write(&mut self, port: u16, value: u8, now: u64) {
        match port {
            0x43 if value >> 6 == 2 => {
                let access = (value >> 4) & 3;
                if access == 0 {
                    self.latched.get_or_insert(self.count(now));
                } else {
                    self.access = access;
                    self.mode = (value >> 1) & 7;
                    self.pending_lsb = None;
                    self.started = None;
                    self.read_msb = false;
                }
            }
            0x42 => {
                let complete = match self.access {
                    1 => Some(u16::from(value)),
                    2 => Some(u16::from(value) << 8),
                    3 => match self.pending_lsb.take() {
                        Some(lsb) => Some(u16::from(lsb) | (u16::from(value) << 8)),
                        None => {
                            self.pending_lsb = Some(value);
                            None
                        }
                    },
                    _ => None,
                };
                if let Some(reload) = complete {
                    self.reload = reload;
                    self.started = self.gate().then_some(now);
                }
            }
            0x61 => {
                let rising = value & 1 != 0 && !self.gate();
                self.port61 = value & 0x0f;
                if rising {
                    self.started = Some(now);
                } else if value & 1 == 0 {
                    // Gate low: counting stops where it is.
                    if self.started.is_some() {
                        self.reload = self.count(now);
                    }
                    self.started = None;
                }
            }
            _ => {}
        }
    }

    /// A read of `port` (0x40–0x43 or 0x61) at TSC `now`.
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        match port {
            0x42 => {
                let value = self.latched.unwrap_or_else(|| self.count(now));
                match self.access {
                    1 => {
                        self.latched = None;
                        value as u8
                    }
                    2 => {
                        self.latched = None;
                        (value >> 8) as u8
                    }
                    _ => {
                        let byte = if self.read_msb {
                            (value >> 8) as u8
                        } else {
                            value as u8
                        };
                        if self.read_msb {
                            self.latched = None;
                        }
                        self.read_msb = !self.read_msb;
                        byte
                    }
                }
            }
            0x61 => {
                // Bit 4 (refresh request) toggles on every read; bit 5 is OUT2.
                self.port61 ^= 0x10;
                (self.port61 & 0x1f) | if self.output(now) { 0x20 } else { 0 }
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_193_182_000; // 1000 TSC ticks per PIT tick

    #[test]
    fn mode0_one_shot_as_linux_and_atoll_program_it() {
        let mut p = Pit::new(HZ);
        // Gate high, speaker off; counter 2, LSB then MSB, mode 0; 0xffff.
        p.write(0x61, 0x01, 0);
        p.write(0x43, 0xb0, 0);
        p.write(0x42, 0xff, 0);
        p.write(0x42, 0xff, 10);
        assert_eq!(p.read(0x61, 10) & 0x20, 0, "counting: OUT2 low");
        // 0x100 PIT ticks later the MSB has dropped by one.
        let t = 10 + 0x100 * 1000;
        assert_eq!(p.read(0x42, t), 0xff);
        assert_eq!(p.read(0x42, t), 0xfe);
        // At the terminal count OUT2 goes high and stays high.
        let end = 10 + 0x1_0000 * 1000;
        assert_ne!(p.read(0x61, end) & 0x20, 0);
        assert_ne!(p.read(0x61, end + 5_000_000) & 0x20, 0);
    }

    #[test]
    fn latch_freezes_the_count_until_both_bytes_are_read() {
        let mut p = Pit::new(HZ);
        p.write(0x61, 0x01, 0);
        p.write(0x43, 0xb0, 0);
        p.write(0x42, 0x34, 0);
        p.write(0x42, 0x12, 0);
        p.write(0x43, 0x80, 2000); // latch counter 2
        assert_eq!(p.read(0x42, 900_000), 0x32);
        assert_eq!(p.read(0x42, 900_000), 0x12);
        // Unlatched now: the live count.
        let lsb = p.read(0x42, 900_000);
        let msb = p.read(0x42, 900_000);
        assert_eq!(u16::from(lsb) | (u16::from(msb) << 8), 0x1234 - 900);
    }

    #[test]
    fn gate_low_stops_counting_and_other_counters_read_zero() {
        let mut p = Pit::new(HZ);
        p.write(0x43, 0xb0, 0);
        p.write(0x42, 0x00, 0);
        p.write(0x42, 0x10, 0);
        // Gate still low: nothing counts.
        p.write(0x43, 0x80, 50_000);
        assert_eq!((p.read(0x42, 50_000), p.read(0x42, 50_000)), (0x00, 0x10));
        assert_eq!(p.read(0x40, 0), 0);
        // The refresh bit toggles.
        let a = p.read(0x61, 0) & 0x10;
        let b = p.read(0x61, 0) & 0x10;
        assert_ne!(a, b);
    }
}
