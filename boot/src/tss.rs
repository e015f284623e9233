//! The 64-bit task-state segment atoll gives every core (SDM Vol. 3A §8.7): only its interrupt
//! stack table matters (IST1, the double-fault stack), and its GDT descriptor.

/// The 64-bit TSS (SDM Vol. 3A §8.7, Figure 8-11) as 26 dwords.
pub const TSS_DWORDS: usize = 26;
/// Dword index of IST1's low half (byte offset 36).
pub const IST1_DWORD: usize = 9;

/// The 16-byte GDT descriptor of an available 64-bit TSS at `base` (SDM Vol. 3A Figure 8-4:
/// type 9, present), as the two GDT entries it takes.
pub fn tss_descriptor(base: u64) -> [u64; 2] {
    let limit = (TSS_DWORDS * 4 - 1) as u64;
    [
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56),
        base >> 32,
    ]
}

/// The base address a TSS descriptor (two GDT entries) holds.
pub fn tss_base(descriptor: [u64; 2]) -> u64 {
    ((descriptor[0] >> 16) & 0xff_ffff)
        | (((descriptor[0] >> 56) & 0xff) << 24)
        | (descriptor[1] << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss_descriptors_round_trip_their_base() {
        for base in [0x1000u64, 0x0012_3456_789a_bcd0, 0xffff_8000_0000_0000, 0] {
            let d = tss_descriptor(base);
            assert_eq!(tss_base(d), base);
            assert_eq!(
                (d[0] >> 40) & 0xff,
                0x89,
                "present, type 9 (available 64-bit TSS)"
            );
            assert_eq!(d[0] & 0xffff, 103, "limit: 104 bytes");
        }
    }
}
