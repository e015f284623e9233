//! The host's CMOS real-time clock, read once at boot for the enclaves' wall clock.

use x86_64::instructions::port::Port;

fn cmos(reg: u8) -> u8 {
    let mut index: Port<u8> = Port::new(0x70);
    let mut data: Port<u8> = Port::new(0x71);
    // SAFETY: port 0x70 is the CMOS index register on every PC; selecting a register has no
    // other effect. Bit 7 of the index disables NMIs from the chipset, which atoll does not
    // rely on.
    unsafe { index.write(0x80 | reg) };
    // SAFETY: port 0x71 is the CMOS data register; reading the clock registers has no side
    // effects.
    unsafe { data.read() }
}

/// The host's time as Unix seconds, or `None` when the clock does not answer sensibly.
pub fn read_unix_seconds() -> Option<i64> {
    // Wait (bounded) for the end of an update cycle, then read twice until both agree.
    for _ in 0..1_000_000 {
        if cmos(0x0a) & 0x80 == 0 {
            break;
        }
        core::hint::spin_loop();
    }
    let read = || [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(cmos);
    let mut a = read();
    for _ in 0..4 {
        let b = read();
        if a == b {
            break;
        }
        a = b;
    }
    let status_b = cmos(0x0b);
    let binary = status_b & 0x04 != 0;
    let h24 = status_b & 0x02 != 0;
    let num = |v: u8| {
        if binary {
            Some(u32::from(v))
        } else {
            atoll_devices::rtc::from_bcd(v)
        }
    };
    let [s, m, h_raw, d, mo, y, c] = a;
    let pm = !h24 && h_raw & 0x80 != 0;
    let mut h = num(h_raw & 0x7f)?;
    if !h24 {
        h = (h % 12) + if pm { 12 } else { 0 };
    }
    let century = num(c).filter(|c| (19..=30).contains(c)).unwrap_or(20);
    let year = i64::from(century) * 100 + i64::from(num(y)?);
    let (mo, d, m, s) = (num(mo)?, num(d)?, num(m)?, num(s)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(atoll_devices::rtc::unix_seconds(year, mo, d, h, m, s))
}
