//! The MSR and I/O permission maps.
//!
//! This module owns the layout of the two bitmaps the VMCB points at, as builders over
//! caller-provided buffers (no allocation): [`MsrPermissionMap`] (MSRPM_BASE_PA, 8 KiB, AMD64
//! APM Vol. 2 §15.11 "MSR Intercepts") and [`IoPermissionMap`] (IOPM_BASE_PA, 12 KiB, §15.10.1
//! "I/O Permissions Map"). A set bit intercepts, a clear bit lets the access through; the maps
//! are consulted only when [`crate::intercepts::MiscIntercepts1::MSR_PROT`] and
//! [`crate::intercepts::MiscIntercepts1::IOIO_PROT`] are set. [`PermissionMapPages`] is a
//! 4 KiB-aligned home for both, since the hardware takes their physical addresses.

use crate::error::Error;

/// Size of the MSR permission map.
pub const MSRPM_SIZE: usize = 8 * 1024;
/// Size of the I/O permission map.
pub const IOPM_SIZE: usize = 12 * 1024;

/// The MSR ranges the map covers, as (first MSR, byte offset of its two-bit entries)
/// (APM Vol. 2 §15.11). Bytes 1800h–1FFFh are reserved.
const MSR_RANGES: [(u32, usize); 3] = [
    (0x0000_0000, 0x0000),
    (0xC000_0000, 0x0800),
    (0xC001_0000, 0x1000),
];
/// MSRs per range: 2 bits each in 2 KiB.
const MSRS_PER_RANGE: u32 = 0x2000;

/// Where the read-intercept bit of `msr` lives in the MSR permission map, as (byte index, bit
/// in that byte); the write-intercept bit is the next bit. `None` for an MSR outside the three
/// ranges (§15.11: such accesses always exit).
pub const fn msr_bit(msr: u32) -> Option<(usize, u32)> {
    let mut i = 0;
    while i < MSR_RANGES.len() {
        let (first, byte_offset) = MSR_RANGES[i];
        if msr >= first && msr - first < MSRS_PER_RANGE {
            let n = (msr - first) as usize;
            return Some((byte_offset + n / 4, ((n % 4) * 2) as u32));
        }
        i += 1;
    }
    None
}

/// A builder over an 8 KiB MSR permission map (APM Vol. 2 §15.11): two bits per MSR, read
/// intercept then write intercept.
#[derive(Debug)]
pub struct MsrPermissionMap<'a> {
    bytes: &'a mut [u8; MSRPM_SIZE],
}

impl<'a> MsrPermissionMap<'a> {
    /// Wraps `bytes`, keeping what they hold.
    pub fn new(bytes: &'a mut [u8; MSRPM_SIZE]) -> Self {
        Self { bytes }
    }

    /// Intercepts every read and write of every MSR (all bits set, reserved bytes included).
    pub fn intercept_all(&mut self) -> &mut Self {
        self.bytes.fill(0xFF);
        self
    }

    /// Sets both bits of `msr`: reads pass through without a #VMEXIT iff `read`, writes iff
    /// `write` (so `allow(msr, true, false)` also re-intercepts writes). An MSR outside the
    /// three ranges is [`Error::MsrOutOfRange`] and changes nothing.
    pub fn allow(&mut self, msr: u32, read: bool, write: bool) -> Result<&mut Self, Error> {
        let (byte, bit) = msr_bit(msr).ok_or(Error::MsrOutOfRange(msr))?;
        let mut value = self.bytes[byte] & !(0b11 << bit);
        if !read {
            value |= 1 << bit;
        }
        if !write {
            value |= 1 << (bit + 1);
        }
        self.bytes[byte] = value;
        Ok(self)
    }

    /// Intercepts reads and writes of `msr` (`allow(msr, false, false)`).
    pub fn intercept(&mut self, msr: u32) -> Result<&mut Self, Error> {
        self.allow(msr, false, false)
    }

    /// Whether an RDMSR (`write` false) or WRMSR (`write` true) of `msr` exits; always true
    /// outside the three ranges.
    pub fn is_intercepted(&self, msr: u32, write: bool) -> bool {
        match msr_bit(msr) {
            Some((byte, bit)) => self.bytes[byte] & (1 << (bit + write as u32)) != 0,
            None => true,
        }
    }

    /// The map's bytes.
    pub fn as_bytes(&self) -> &[u8; MSRPM_SIZE] {
        self.bytes
    }
}

/// A builder over a 12 KiB I/O permission map (APM Vol. 2 §15.10.1): one bit per port, bit
/// *p* of the map for port *p*. A multi-byte access checks the bit of every byte it touches,
/// so an access starting at port FFFFh reads bits past 64K: the third 4 KiB page exists for
/// them and [`IoPermissionMap::intercept_all`] sets it too.
#[derive(Debug)]
pub struct IoPermissionMap<'a> {
    bytes: &'a mut [u8; IOPM_SIZE],
}

impl<'a> IoPermissionMap<'a> {
    /// Wraps `bytes`, keeping what they hold.
    pub fn new(bytes: &'a mut [u8; IOPM_SIZE]) -> Self {
        Self { bytes }
    }

    /// Intercepts every port (all bits set).
    pub fn intercept_all(&mut self) -> &mut Self {
        self.bytes.fill(0xFF);
        self
    }

    /// Lets accesses to `port` through (clears its bit).
    pub fn allow(&mut self, port: u16) -> &mut Self {
        self.bytes[port as usize / 8] &= !(1 << (port % 8));
        self
    }

    /// Intercepts accesses to `port` (sets its bit).
    pub fn intercept(&mut self, port: u16) -> &mut Self {
        self.bytes[port as usize / 8] |= 1 << (port % 8);
        self
    }

    /// Lets `count` ports from `first` through; stops at port FFFFh.
    pub fn allow_range(&mut self, first: u16, count: u32) -> &mut Self {
        for port in
            (first as u32..(first as u32).saturating_add(count)).take_while(|&p| p <= 0xFFFF)
        {
            self.allow(port as u16);
        }
        self
    }

    /// Whether `port`'s own bit is set.
    pub fn is_intercepted(&self, port: u16) -> bool {
        self.bytes[port as usize / 8] & (1 << (port % 8)) != 0
    }

    /// Whether an access of `size` bytes (1, 2 or 4; other values are treated as 4) at
    /// `port` exits: any of the bits for `port..port + size` is set, as the processor checks
    /// them (§15.10.1), including bits past FFFFh.
    pub fn is_access_intercepted(&self, port: u16, size: u8) -> bool {
        let size = match size {
            1 | 2 => size as usize,
            _ => 4,
        };
        (port as usize..port as usize + size).any(|bit| self.bytes[bit / 8] & (1 << (bit % 8)) != 0)
    }

    /// The map's bytes.
    pub fn as_bytes(&self) -> &[u8; IOPM_SIZE] {
        self.bytes
    }
}

/// Page-aligned storage for an MSR and an I/O permission map, in one 20 KiB block: the I/O map
/// first (12 KiB), then the MSR map (8 KiB). Both start on a 4 KiB boundary, as IOPM_BASE_PA and
/// MSRPM_BASE_PA require.
#[repr(C, align(4096))]
#[derive(Clone)]
pub struct PermissionMapPages {
    /// The I/O permission map.
    pub iopm: [u8; IOPM_SIZE],
    /// The MSR permission map.
    pub msrpm: [u8; MSRPM_SIZE],
}

impl PermissionMapPages {
    /// Byte offset of the MSR permission map from the start of the block.
    pub const MSRPM_OFFSET: usize = IOPM_SIZE;

    /// Both maps intercepting everything.
    pub const fn intercept_all() -> Self {
        Self {
            iopm: [0xFF; IOPM_SIZE],
            msrpm: [0xFF; MSRPM_SIZE],
        }
    }

    /// A builder over the MSR map.
    pub fn msr_map(&mut self) -> MsrPermissionMap<'_> {
        MsrPermissionMap::new(&mut self.msrpm)
    }

    /// A builder over the I/O map.
    pub fn io_map(&mut self) -> IoPermissionMap<'_> {
        IoPermissionMap::new(&mut self.iopm)
    }
}

const _: () = assert!(core::mem::offset_of!(PermissionMapPages, msrpm) == IOPM_SIZE);
const _: () = assert!(core::mem::size_of::<PermissionMapPages>() == IOPM_SIZE + MSRPM_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_bit_positions() {
        // MSR 0: first byte, bits 0 (read) and 1 (write).
        assert_eq!(msr_bit(0), Some((0, 0)));
        // IA32_TSC (10h): MSR 16 → byte 4, bit 0.
        assert_eq!(msr_bit(0x10), Some((4, 0)));
        // IA32_APIC_BASE (1Bh): 27 → byte 6, bits 6/7.
        assert_eq!(msr_bit(0x1B), Some((6, 6)));
        // x2APIC ID (802h): 0x802 / 4 = 0x200, remainder 2 → bits 4/5.
        assert_eq!(msr_bit(0x802), Some((0x200, 4)));
        // Last of the first range.
        assert_eq!(msr_bit(0x1FFF), Some((0x7FF, 6)));
        // EFER (C000_0080h): 0x800 + 0x80 / 4 = 0x820, bit 0.
        assert_eq!(msr_bit(0xC000_0080), Some((0x820, 0)));
        // LSTAR (C000_0082h): byte 0x820, bits 4/5.
        assert_eq!(msr_bit(0xC000_0082), Some((0x820, 4)));
        // KernelGSbase (C000_0102h): 0x800 + 0x40, bits 4/5.
        assert_eq!(msr_bit(0xC000_0102), Some((0x840, 4)));
        assert_eq!(msr_bit(0xC000_1FFF), Some((0xFFF, 6)));
        // VM_CR (C001_0114h): 0x1000 + 0x45, bit 0.
        assert_eq!(msr_bit(0xC001_0114), Some((0x1045, 0)));
        // VM_HSAVE_PA (C001_0117h): same byte, bits 6/7.
        assert_eq!(msr_bit(0xC001_0117), Some((0x1045, 6)));
        assert_eq!(msr_bit(0xC001_1FFF), Some((0x17FF, 6)));
        // Outside the ranges.
        for msr in [
            0x2000,
            0x4000_0000,
            0xBFFF_FFFF,
            0xC000_2000,
            0xC000_FFFF,
            0xC001_2000,
            u32::MAX,
        ] {
            assert_eq!(msr_bit(msr), None, "{msr:#x}");
        }
    }

    #[test]
    fn msr_map_allow_and_query() {
        let mut buf = [0u8; MSRPM_SIZE];
        let mut map = MsrPermissionMap::new(&mut buf);
        map.intercept_all();
        assert!(map.as_bytes().iter().all(|&b| b == 0xFF));
        assert!(map.is_intercepted(0xC000_0100, false));

        // FS_BASE: reads and writes through.
        map.allow(0xC000_0100, true, true).unwrap();
        assert!(!map.is_intercepted(0xC000_0100, false));
        assert!(!map.is_intercepted(0xC000_0100, true));
        // 0xC000_0100 → byte 0x840, bits 0/1 cleared, the rest of the byte untouched.
        assert_eq!(map.as_bytes()[0x840], 0xFC);

        // IA32_TSC: reads through, writes intercepted.
        map.allow(0x10, true, false).unwrap();
        assert!(!map.is_intercepted(0x10, false));
        assert!(map.is_intercepted(0x10, true));
        assert_eq!(map.as_bytes()[4], 0xFE);

        // Re-allowing with different flags replaces both bits.
        map.allow(0x10, false, true).unwrap();
        assert!(map.is_intercepted(0x10, false));
        assert!(!map.is_intercepted(0x10, true));
        assert_eq!(map.as_bytes()[4], 0xFD);
        map.intercept(0x10).unwrap();
        assert_eq!(map.as_bytes()[4], 0xFF);

        // Neighbours are untouched.
        assert!(map.is_intercepted(0xC000_0101, false));
        assert!(map.is_intercepted(0x11, true));

        // Out of range: an error, nothing changes, and the query says "intercepted".
        let before = *map.as_bytes();
        assert_eq!(
            map.allow(0x4000_0000, true, true).map(|_| ()),
            Err(Error::MsrOutOfRange(0x4000_0000))
        );
        assert_eq!(
            map.allow(0xC000_2000, true, true).map(|_| ()),
            Err(Error::MsrOutOfRange(0xC000_2000))
        );
        assert_eq!(*map.as_bytes(), before);
        assert!(map.is_intercepted(0x4000_0000, false));
        assert!(map.is_intercepted(u32::MAX, true));
    }

    #[test]
    fn msr_map_on_zeroed_buffer_allows_everything_in_range() {
        let mut buf = [0u8; MSRPM_SIZE];
        let mut map = MsrPermissionMap::new(&mut buf);
        assert!(!map.is_intercepted(0xC001_0114, true));
        map.intercept(0xC001_0117).unwrap();
        assert_eq!(map.as_bytes()[0x1045], 0b1100_0000);
        assert!(map.is_intercepted(0xC001_0117, false));
        assert!(!map.is_intercepted(0xC001_0114, false));
    }

    #[test]
    fn io_map_bits() {
        let mut buf = [0u8; IOPM_SIZE];
        let mut map = IoPermissionMap::new(&mut buf);
        map.intercept_all();
        assert!(map.as_bytes().iter().all(|&b| b == 0xFF));
        // COM1 data port 0x3F8: byte 0x7F, bit 0.
        map.allow(0x3F8);
        assert_eq!(map.as_bytes()[0x7F], 0xFE);
        assert!(!map.is_intercepted(0x3F8));
        assert!(map.is_intercepted(0x3F9));
        // 0x80 (POST code): byte 0x10, bit 0.
        map.allow(0x80);
        assert_eq!(map.as_bytes()[0x10], 0xFE);
        map.intercept(0x80);
        assert_eq!(map.as_bytes()[0x10], 0xFF);
        // Port 0xFFFF: byte 0x1FFF, bit 7.
        map.allow(0xFFFF);
        assert_eq!(map.as_bytes()[0x1FFF], 0x7F);
        // Range 0x3F8..0x400.
        map.allow_range(0x3F8, 8);
        assert_eq!(map.as_bytes()[0x7F], 0x00);
        assert!(map.is_intercepted(0x400));
        // A range running past 0xFFFF stops there.
        map.allow_range(0xFFF0, 100);
        assert_eq!(map.as_bytes()[0x1FFE], 0x00);
        assert_eq!(map.as_bytes()[0x2000], 0xFF);
    }

    #[test]
    fn io_accesses_check_every_byte() {
        let mut buf = [0xFFu8; IOPM_SIZE];
        let mut map = IoPermissionMap::new(&mut buf);
        map.allow_range(0xCF8, 4);
        assert!(!map.is_access_intercepted(0xCF8, 4));
        assert!(!map.is_access_intercepted(0xCFA, 2));
        // A dword at 0xCFA also touches 0xCFC and 0xCFD.
        assert!(map.is_access_intercepted(0xCFA, 4));
        // At the top, a word at 0xFFFF reads bit 0x10000 in the third page.
        map.allow(0xFFFF);
        assert!(!map.is_access_intercepted(0xFFFF, 1));
        assert!(map.is_access_intercepted(0xFFFF, 2));
        buf[0x2000] = 0xF8;
        let map = IoPermissionMap::new(&mut buf);
        assert!(!map.is_access_intercepted(0xFFFF, 4));
        // Odd sizes are treated as 4 and never index out of the map.
        for size in [0, 3, 5, 255] {
            let _ = map.is_access_intercepted(0xFFFF, size);
        }
    }

    #[test]
    fn pages_are_aligned() {
        let mut pages = Box::new(PermissionMapPages::intercept_all());
        assert_eq!((&*pages as *const PermissionMapPages as usize) % 4096, 0);
        assert_eq!(PermissionMapPages::MSRPM_OFFSET % 4096, 0);
        pages.msr_map().allow(0xC000_0100, true, true).unwrap();
        pages.io_map().allow(0x80);
        assert_eq!(pages.msrpm[0x840], 0xFC);
        assert_eq!(pages.iopm[0x10], 0xFE);
    }
}
