//! The enclave's CMOS real-time clock, read-only: the time-of-day registers of an MC146818 at
//! ports 0x70 (index) and 0x71 (data), so Linux reads the wall clock at boot
//! (`mach_get_cmos_time`) instead of polling an absent port for the update flag.
//!
//! The time is the host's RTC as atoll read it at boot, advanced by the TSC. Registers (MC146818
//! data sheet): 0x00 seconds, 0x02 minutes, 0x04 hours, 0x06 day of week (1 = Sunday), 0x07 day
//! of month, 0x08 month, 0x09 year, 0x32 century, all BCD; 0x0A status A (update in progress
//! never set, the 32.768 kHz divider), 0x0B status B (24-hour, BCD), 0x0C status C (no
//! interrupt flags), 0x0D status D (valid RAM and time). The alarm registers and the rest of the
//! CMOS RAM read 0; writes (setting the clock, alarms, CMOS RAM) are ignored: the guest cannot
//! change the host's notion of time. The FADT still says "CMOS RTC not present", so Linux binds
//! no RTC driver (no alarms, no periodic interrupt), which this model does not offer.

/// Seconds since 1970-01-01 00:00:00 UTC of a civil date and time (proleptic Gregorian).
pub fn unix_seconds(year: i64, month: u32, day: u32, h: u32, m: u32, s: u32) -> i64 {
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s)
}

/// The civil date and time of `secs` since the epoch: (year, month, day, hour, minute, second,
/// day of week with 0 = Sunday).
pub fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 4).rem_euclid(7) as u32;
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
        weekday,
    )
}

fn bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// The decimal value of BCD byte `b`, or `None` if it is not BCD.
pub fn from_bcd(b: u8) -> Option<u32> {
    let (hi, lo) = (b >> 4, b & 0xf);
    (hi < 10 && lo < 10).then(|| u32::from(hi) * 10 + u32::from(lo))
}

/// The clock.
#[derive(Clone, Debug)]
pub struct Rtc {
    /// Unix seconds at TSC `anchor_tsc`.
    anchor_secs: i64,
    anchor_tsc: u64,
    tsc_hz: u64,
    index: u8,
}

impl Rtc {
    /// A clock reading `secs` (Unix time) at TSC `tsc`, advancing with a TSC of `tsc_hz`.
    pub fn new(secs: i64, tsc: u64, tsc_hz: u64) -> Self {
        Self {
            anchor_secs: secs,
            anchor_tsc: tsc,
            tsc_hz: tsc_hz.max(1),
            index: 0,
        }
    }

    /// A write to port 0x70 (index; bit 7 is the NMI mask, ignored) or 0x71 (ignored).
    pub fn write(&mut self, port: u16, value: u8) {
        if port == 0x70 {
            self.index = value & 0x7f;
        }
    }

    /// A read of port 0x71 (the selected register) or 0x70 (the index) at TSC `now`.
    pub fn read(&self, port: u16, now: u64) -> u8 {
        if port == 0x70 {
            return self.index;
        }
        let secs = self.anchor_secs + (now.saturating_sub(self.anchor_tsc) / self.tsc_hz) as i64;
        let (year, month, day, h, m, s, wd) = civil(secs);
        match self.index {
            0x00 => bcd(s),
            0x02 => bcd(m),
            0x04 => bcd(h),
            0x06 => bcd(wd + 1),
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd(year.rem_euclid(100) as u32),
            0x32 => bcd((year.div_euclid(100)).rem_euclid(100) as u32),
            // Status A: no update in progress, 32.768 kHz time base, 1024 Hz rate.
            0x0a => 0x26,
            // Status B: 24-hour mode, BCD, no interrupts.
            0x0b => 0x02,
            // Status D: valid RAM and time.
            0x0d => 0x80,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips() {
        assert_eq!(unix_seconds(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(unix_seconds(2000, 3, 1, 0, 0, 0), 951_868_800);
        assert_eq!(unix_seconds(2026, 11, 22, 6, 14, 5), 1_795_328_045);
        assert_eq!(
            civil(1_795_328_045),
            (2026, 11, 22, 6, 14, 5, 0),
            "a Sunday"
        );
        for secs in [0i64, 68_169_600, 951_782_400, 4_107_542_399, 1_795_328_045] {
            let (y, mo, d, h, mi, s, _) = civil(secs);
            assert_eq!(unix_seconds(y, mo, d, h, mi, s), secs);
        }
        // 2000-02-29 exists, 1900 was not a leap year.
        assert_eq!(civil(unix_seconds(2000, 2, 29, 0, 0, 0)).2, 29);
        assert_eq!(civil(unix_seconds(1900, 3, 1, 0, 0, 0) - 1).1, 2);
        assert_eq!(civil(unix_seconds(1900, 3, 1, 0, 0, 0) - 1).2, 28);
    }

    #[test]
    fn registers_read_the_time_in_bcd_and_advance() {
        let t0 = unix_seconds(2026, 11, 22, 23, 59, 58);
        let mut r = Rtc::new(t0, 1000, 100);
        let reg = |r: &mut Rtc, i: u8, now: u64| {
            r.write(0x70, 0x80 | i);
            r.read(0x71, now)
        };
        assert_eq!(reg(&mut r, 0x00, 1000), 0x58);
        assert_eq!(reg(&mut r, 0x04, 1000), 0x23);
        assert_eq!(reg(&mut r, 0x07, 1000), 0x22);
        assert_eq!(reg(&mut r, 0x08, 1000), 0x11);
        assert_eq!(reg(&mut r, 0x09, 1000), 0x26);
        assert_eq!(reg(&mut r, 0x32, 1000), 0x20);
        assert_eq!(reg(&mut r, 0x06, 1000), 0x01, "Sunday");
        // Three seconds later it is the next day.
        assert_eq!(reg(&mut r, 0x00, 1300), 0x01);
        assert_eq!(reg(&mut r, 0x07, 1300), 0x23);
        assert_eq!(reg(&mut r, 0x04, 1300), 0x00);
        assert_eq!(reg(&mut r, 0x0a, 1300) & 0x80, 0, "never updating");
        assert_eq!(reg(&mut r, 0x0b, 1300), 0x02);
        assert_eq!(reg(&mut r, 0x0d, 1300), 0x80);
        assert_eq!(r.read(0x70, 0), 0x0d);
        // Writes do not set the clock.
        r.write(0x70, 0);
        r.write(0x71, 0x11);
        assert_eq!(r.read(0x71, 1300), 0x01);
        assert_eq!(from_bcd(0x59), Some(59));
        assert_eq!(from_bcd(0x5a), None);
    }
}
