//! VT-d memory atoll hands the remapping hardware: the interrupt remapping table, in frames of
//! atoll's own, written with volatile 64-bit stores (the unit reads it by DMA while atoll
//! writes; `iommu::irte::InterruptTable` orders the two halves of an entry).

use iommu::irte::IrtMemory;

/// An interrupt remapping table at a fixed place in atoll's identity map.
pub struct RawIrt {
    base: *mut u64,
    entries: usize,
}

// SAFETY: the table is physical memory identity-mapped the same on every processor (the
// contract of `new`), owned by this value alone; moving it moves that ownership.
unsafe impl Send for RawIrt {}

impl RawIrt {
    /// # Safety
    ///
    /// `base` must be the identity-mapped address of `entries` × 16 bytes of atoll's memory,
    /// 4 KiB-aligned, never a partition's, that nothing else refers to for as long as the value
    /// lives (atoll keeps it for good).
    pub unsafe fn new(base: *mut u64, entries: usize) -> Self {
        Self { base, entries }
    }
}

impl IrtMemory for RawIrt {
    fn entries(&self) -> usize {
        self.entries
    }

    fn read(&self, index: usize) -> [u64; 2] {
        if index >= self.entries {
            return [0, 0];
        }
        // SAFETY: `index` is inside the table (`new`'s contract covers 2 × entries u64s).
        let lo = unsafe { core::ptr::read_volatile(self.base.wrapping_add(2 * index)) };
        // SAFETY: as above.
        let hi = unsafe { core::ptr::read_volatile(self.base.wrapping_add(2 * index + 1)) };
        [lo, hi]
    }

    fn write_low(&mut self, index: usize, value: u64) {
        if index < self.entries {
            // SAFETY: inside the table, see `read`.
            unsafe { core::ptr::write_volatile(self.base.wrapping_add(2 * index), value) };
        }
    }

    fn write_high(&mut self, index: usize, value: u64) {
        if index < self.entries {
            // SAFETY: inside the table, see `read`.
            unsafe { core::ptr::write_volatile(self.base.wrapping_add(2 * index + 1), value) };
        }
    }
}
