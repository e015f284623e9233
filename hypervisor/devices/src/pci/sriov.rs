//! What atoll reads of a real function's configuration space to pass it (or one of its SR-IOV
//! virtual functions) through: the extended capability list, the sizes of BARs, and the
//! SR-IOV capability (PCIe r4.0 §9.3.3). Every access goes through closures (ECAM on the
//! target, a fake space in the tests), and nothing here trusts what it reads: walks are
//! bounded, sizes must be powers of two, requester ids must fit in 16 bits.

use super::config::BarKind;
use super::passthrough::HwBar;

/// The SR-IOV extended capability's ID (PCIe r4.0 §9.3.3).
pub const EXT_CAP_SRIOV: u16 = 0x0010;

/// SR-IOV capability registers, as offsets from it (PCIe r4.0 §9.3.3).
pub mod reg {
    /// SR-IOV Control (16 bits).
    pub const CONTROL: u16 = 0x08;
    /// NumVFs (16 bits).
    pub const NUM_VFS: u16 = 0x10;
    /// First VF Offset (16 bits).
    pub const FIRST_OFFSET: u16 = 0x14;
    /// VF Stride (16 bits).
    pub const STRIDE: u16 = 0x16;
    /// VF Device ID (16 bits).
    pub const VF_DEVICE: u16 = 0x1a;
    /// VF BAR0; VF BAR1–5 follow, a dword each.
    pub const VF_BAR0: u16 = 0x24;
    /// Bytes of the capability.
    pub const LEN: u16 = 0x40;
}

/// SR-IOV Control bits (§9.3.3.3).
pub mod control {
    /// VF Enable.
    pub const VF_ENABLE: u16 = 1 << 0;
    /// VF Memory Space Enable.
    pub const VF_MSE: u16 = 1 << 3;
}

/// The 16-bit register at `offset` through a dword read.
pub fn read16(read: &mut impl FnMut(u16) -> u32, offset: u16) -> u16 {
    (read(offset & !3) >> (8 * (offset & 2))) as u16
}

/// The offset of extended capability `id`, walking at most 64 headers from 0x100 (PCIe r4.0
/// §7.6.3: each header's next pointer must move forward, dword-aligned, inside 4 KiB).
pub fn find_ext_cap(mut read: impl FnMut(u16) -> u32, id: u16) -> Option<u16> {
    let mut at = 0x100u16;
    for _ in 0..64 {
        let h = read(at);
        if h == 0 || h == u32::MAX {
            return None;
        }
        if h & 0xffff == u32::from(id) {
            return Some(at);
        }
        let next = (h >> 20) as u16 & 0xffc;
        if next <= at {
            return None;
        }
        at = next;
    }
    None
}

/// Sizes the six BAR registers from `first` (the header's 0x10, or an SR-IOV capability's VF
/// BAR0) by writing all ones and restoring each (PCI 3.0 §6.2.5.1). The caller turns decoding
/// off first. I/O BARs are skipped (never passed through), and so is a BAR whose size is not a
/// power of two (a broken or absent register).
pub fn size_bars(
    mut read: impl FnMut(u16) -> u32,
    mut write: impl FnMut(u16, u32),
    first: u16,
) -> [Option<HwBar>; 6] {
    let mut out = [None; 6];
    let mut i = 0u16;
    while i < 6 {
        let off = first + 4 * i;
        let orig = read(off);
        write(off, u32::MAX);
        let v = read(off);
        write(off, orig);
        if v == 0 || orig & 1 != 0 {
            i += 1;
            continue;
        }
        let prefetchable = orig & 8 != 0;
        if (orig >> 1) & 3 == 2 && i < 5 {
            let orig_hi = read(off + 4);
            write(off + 4, u32::MAX);
            let vh = read(off + 4);
            write(off + 4, orig_hi);
            let mask = u64::from(vh) << 32 | u64::from(v & !0xf);
            let size = (!mask).wrapping_add(1);
            if size.is_power_of_two() {
                out[usize::from(i)] = Some(HwBar {
                    kind: BarKind::Memory64 { prefetchable },
                    size,
                });
            }
            i += 2;
        } else {
            let size = u64::from((!(v & !0xf)).wrapping_add(1));
            if size.is_power_of_two() {
                out[usize::from(i)] = Some(HwBar {
                    kind: BarKind::Memory32 { prefetchable },
                    size,
                });
            }
            i += 1;
        }
    }
    out
}

/// Where BAR `i` of the registers from `first` points (its low dword, and the high one for a
/// 64-bit BAR).
pub fn bar_base(mut read: impl FnMut(u16) -> u32, first: u16, i: usize, bar: &HwBar) -> u64 {
    let off = first + 4 * i as u16;
    let lo = u64::from(read(off) & !0xf);
    match bar.kind {
        BarKind::Memory64 { .. } => lo | u64::from(read(off + 4)) << 32,
        _ => lo,
    }
}

/// What a PF's SR-IOV capability says now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SriovState {
    /// SR-IOV Control.
    pub control: u16,
    /// NumVFs.
    pub num_vfs: u16,
    /// First VF Offset.
    pub first_offset: u16,
    /// VF Stride.
    pub stride: u16,
    /// VF Device ID.
    pub vf_device: u16,
}

impl SriovState {
    /// Reads the capability at `cap`.
    pub fn read(mut read: impl FnMut(u16) -> u32, cap: u16) -> Self {
        Self {
            control: read16(&mut read, cap + reg::CONTROL),
            num_vfs: read16(&mut read, cap + reg::NUM_VFS),
            first_offset: read16(&mut read, cap + reg::FIRST_OFFSET),
            stride: read16(&mut read, cap + reg::STRIDE),
            vf_device: read16(&mut read, cap + reg::VF_DEVICE),
        }
    }

    /// Which VF of PF `pf` (a requester id) has requester id `rid`, when VF Enable is set
    /// (§9.3.3.9–10: VF *i* is at PF + First VF Offset + *i* × VF Stride, within 16 bits).
    pub fn vf_index(&self, pf: u16, rid: u16) -> Option<u16> {
        if self.control & control::VF_ENABLE == 0 {
            return None;
        }
        (0..self.num_vfs).find(|&i| {
            u32::from(pf) + u32::from(self.first_offset) + u32::from(i) * u32::from(self.stride)
                == u32::from(rid)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A 4 KiB configuration space with BAR registers that answer sizing like hardware.
    struct Fake {
        space: [u32; 1024],
        /// Per dword: the writable mask (0 = read-only).
        masks: [u32; 1024],
        writes: Vec<(u16, u32)>,
    }

    impl Fake {
        fn new() -> Self {
            Self {
                space: [0; 1024],
                masks: [0; 1024],
                writes: Vec::new(),
            }
        }
        fn read(&self, off: u16) -> u32 {
            self.space[usize::from(off / 4)]
        }
        fn write(&mut self, off: u16, v: u32) {
            let i = usize::from(off / 4);
            self.space[i] = (self.space[i] & !self.masks[i]) | (v & self.masks[i]);
            self.writes.push((off, v));
        }
        /// A memory BAR at `off` of `size` bytes: type bits `ty`, at `base`.
        fn bar(&mut self, off: u16, size: u64, ty: u32, base: u64) {
            let i = usize::from(off / 4);
            let mask = !(size - 1);
            self.masks[i] = mask as u32 & !0xf;
            self.space[i] = (base as u32 & !0xf) | ty;
            if ty & 0x6 == 0x4 {
                self.masks[i + 1] = (mask >> 32) as u32;
                self.space[i + 1] = (base >> 32) as u32;
            }
        }
    }

    fn size(f: &mut Fake, first: u16) -> [Option<HwBar>; 6] {
        let f = core::cell::RefCell::new(f);
        size_bars(
            |o| f.borrow().read(o),
            |o, v| f.borrow_mut().write(o, v),
            first,
        )
    }

    #[test]
    fn bars_are_sized_and_restored() {
        let mut f = Fake::new();
        f.bar(0x10, 0x4000, 0xc, 0xfe00_0000); // 64-bit prefetchable, 16 KiB
        f.bar(0x18, 0x1000, 0x0, 0xfd00_0000); // 32-bit, 4 KiB
        f.space[0x1c / 4] = 0xc001; // an I/O BAR: skipped
        f.masks[0x1c / 4] = 0xffe0;
        let bars = size(&mut f, 0x10);
        assert_eq!(
            bars[0],
            Some(HwBar {
                kind: BarKind::Memory64 { prefetchable: true },
                size: 0x4000
            })
        );
        assert_eq!(bars[1], None, "the high half of BAR0");
        assert_eq!(
            bars[2],
            Some(HwBar {
                kind: BarKind::Memory32 {
                    prefetchable: false
                },
                size: 0x1000
            })
        );
        assert_eq!(bars[3], None, "I/O");
        assert_eq!(bars[4..], [None, None]);
        // Every register holds what it held before.
        assert_eq!(f.read(0x10), 0xfe00_000c);
        assert_eq!(f.read(0x14), 0);
        assert_eq!(f.read(0x18), 0xfd00_0000);
        assert_eq!(
            bar_base(|o| f.read(o), 0x10, 0, &bars[0].unwrap()),
            0xfe00_0000
        );
    }

    #[test]
    fn a_64_bit_bar_in_the_last_slot_and_broken_sizes_are_not_trusted() {
        let mut f = Fake::new();
        // BAR5 claims 64 bits: it has no high half, so it is read as 32-bit.
        f.bar(0x24, 0x2000, 0x4, 0xf000_0000);
        // BAR0 answers a size that is not a power of two.
        f.space[0x10 / 4] = 0;
        f.masks[0x10 / 4] = 0xfff0_f000;
        let bars = size(&mut f, 0x10);
        assert_eq!(bars[0], None);
        assert_eq!(bars[5].map(|b| b.size), Some(0x2000));
    }

    #[test]
    fn extended_capabilities_are_walked_forward_only() {
        let mut f = Fake::new();
        // AER at 0x100 → ARI at 0x150 → SR-IOV at 0x160.
        f.space[0x100 / 4] = 0x0001 | 1 << 16 | 0x150 << 20;
        f.space[0x150 / 4] = 0x000e | 1 << 16 | 0x160 << 20;
        f.space[0x160 / 4] = 0x0010 | 1 << 16;
        assert_eq!(find_ext_cap(|o| f.read(o), EXT_CAP_SRIOV), Some(0x160));
        assert_eq!(find_ext_cap(|o| f.read(o), 0x000d), None, "ACS absent");
        // A next pointer that loops back ends the walk.
        f.space[0x160 / 4] = 0x0019 | 0x100 << 20;
        assert_eq!(find_ext_cap(|o| f.read(o), EXT_CAP_SRIOV), None);
        // No extended space (all ones, or zero).
        assert_eq!(find_ext_cap(|_| u32::MAX, EXT_CAP_SRIOV), None);
        assert_eq!(find_ext_cap(|_| 0, EXT_CAP_SRIOV), None);
    }

    #[test]
    fn vf_requester_ids_follow_offset_and_stride() {
        let mut f = Fake::new();
        let cap = 0x160u16;
        f.space[usize::from((cap + reg::CONTROL) / 4)] = 0x19;
        f.space[usize::from((cap + reg::NUM_VFS) / 4)] = 2 << 16 | 2; // NumVFs 2 (TotalVFs above)
        f.space[usize::from((cap + reg::FIRST_OFFSET) / 4)] = 2 << 16 | 0x80;
        f.space[usize::from((cap + reg::VF_DEVICE) / 4)] = 0x10ca << 16;
        let s = SriovState::read(|o| f.read(o), cap);
        assert_eq!(
            (s.num_vfs, s.first_offset, s.stride, s.vf_device),
            (2, 0x80, 2, 0x10ca)
        );
        let pf = 0x0100; // 01:00.0
        assert_eq!(s.vf_index(pf, 0x0180), Some(0));
        assert_eq!(s.vf_index(pf, 0x0182), Some(1));
        assert_eq!(s.vf_index(pf, 0x0184), None, "only 2 VFs");
        assert_eq!(s.vf_index(pf, 0x0181), None, "between the strides");
        let off = SriovState { control: 0, ..s };
        assert_eq!(off.vf_index(pf, 0x0180), None, "VF Enable clear");
        // An offset that runs past 16 bits names nothing.
        let far = SriovState {
            first_offset: 0xffff,
            ..s
        };
        assert_eq!(far.vf_index(0xff00, 0xfeff), None);
    }
}
