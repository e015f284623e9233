//! The functions passed through to a Linux enclave (issue 13), as its vCPUs reach them: their
//! BARs in the platform's PCI memory window and their interrupts.
//!
//! **BARs.** atoll places a passed-through function's BARs in [`PCI_MMIO_BASE`]..[`PCI_MMIO_END`]
//! (what firmware would do) and maps their pages straight to the device in the enclave's
//! second stage, uncacheable, except the pages that hold the MSI-X table. An access that exits
//! in the window — the table's pages, or a BAR the guest moved elsewhere in it — reaches the
//! function through the segment's [`BarMap`] (its `bar_read`/`bar_write`), so a moved BAR keeps
//! working (every access trapped) and the guest never reaches anything that is not its own.
//!
//! **Interrupts.** No interrupt remapping entry is written while the enclave runs. At create
//! atoll writes, for every MSI-X entry *k* of the enclave's functions and every vCPU *d*, one
//! IRTE (owned by the enclave, source-validated to the function) that sends host vector
//! [`DEVICE_VECTOR_BASE`] + *k* to the core of vCPU *d*. When the guest programs entry *k* to
//! send guest vector *g* to vCPU *d*, the device gets the handle of IRTE (*k*, *d*) and this
//! table records *g* for host vector *k* on vCPU *d* ([`DeviceRoutes`]). On that core atoll's
//! interrupt handler marks the vector pending (`hw::device_irq`); before the vCPU's next entry
//! (or while it halts) the marks become guest interrupts in its local APIC — injected, and
//! counted in `device_interrupts` (QEMU's VT-d has no posted interrupts, so every device
//! interrupt costs one exit).

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// The first host vector of passed-through functions' interrupts (the block up to the timer and
/// kick vectors at 0xF1/0xF2; the boot self-test's 0x40 is below it).
pub const DEVICE_VECTOR_BASE: u8 = 0x50;
/// Host vectors for passed-through functions' MSI-X entries: at most this many entries per
/// enclave, whatever its functions.
pub const DEVICE_VECTORS: usize = 0xf0 - DEVICE_VECTOR_BASE as usize;
/// Where the platform places passed-through functions' BARs (guest-physical): above the ECAM
/// window, below the I/O APIC.
pub const PCI_MMIO_BASE: u64 = 0xe100_0000;
/// End of that window.
pub const PCI_MMIO_END: u64 = 0xfe00_0000;

/// Whether `vector` is one of the device block's host vectors.
pub fn is_device_vector(vector: u8) -> bool {
    (DEVICE_VECTOR_BASE..DEVICE_VECTOR_BASE + DEVICE_VECTORS as u8).contains(&vector)
}

/// Per vCPU, the guest vector each device host vector stands for (0: none).
#[derive(Debug)]
pub struct DeviceRoutes {
    vcpus: usize,
    guest: alloc::vec::Vec<AtomicU8>,
}

impl DeviceRoutes {
    /// No routes for `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Self {
        Self {
            vcpus,
            guest: (0..vcpus * DEVICE_VECTORS)
                .map(|_| AtomicU8::new(0))
                .collect(),
        }
    }

    fn slot(&self, vcpu: usize, host_vector: u8) -> Option<&AtomicU8> {
        if vcpu >= self.vcpus || !is_device_vector(host_vector) {
            return None;
        }
        self.guest
            .get(vcpu * DEVICE_VECTORS + usize::from(host_vector - DEVICE_VECTOR_BASE))
    }

    /// Host vector `host_vector` arriving on vCPU `vcpu`'s core means guest vector `guest`
    /// (16–255; anything else clears the route). False when either is out of range.
    pub fn set(&self, vcpu: usize, host_vector: u8, guest: u8) -> bool {
        match self.slot(vcpu, host_vector) {
            Some(s) => {
                s.store(if guest >= 16 { guest } else { 0 }, Ordering::Release);
                guest >= 16
            }
            None => false,
        }
    }

    /// The guest vector of `host_vector` on vCPU `vcpu`, if one is routed.
    pub fn guest_vector(&self, vcpu: usize, host_vector: u8) -> Option<u8> {
        self.slot(vcpu, host_vector)
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&g| g >= 16)
    }

    /// Forgets every route (the enclave's functions were reset).
    pub fn clear(&self) {
        for s in &self.guest {
            s.store(0, Ordering::Release);
        }
    }
}

/// Device interrupts as the enclave's vCPUs received them.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Host vectors turned into guest interrupts (each injected at an entry).
    pub delivered: AtomicU64,
    /// Host vectors that arrived with no route (a vector the guest unprogrammed while it was in
    /// flight): dropped.
    pub unrouted: AtomicU64,
}

/// Turns the device vectors that arrived on this vCPU's core (`pending`, a 256-bit set of host
/// vectors) into guest interrupts in its local APIC. Returns how many were delivered.
pub(super) fn deliver(pending: [u64; 4], local: &mut super::Local, shared: &super::Shared) -> u64 {
    let mut delivered = 0;
    for (w, word) in pending.iter().enumerate() {
        let mut bits = *word;
        while bits != 0 {
            let b = bits.trailing_zeros();
            bits &= bits - 1;
            let host_vector = (w as u32 * 64 + b) as u8;
            match shared.device_routes.guest_vector(local.index, host_vector) {
                Some(g) => {
                    local.apic.accept(g, false);
                    delivered += 1;
                }
                None => {
                    shared
                        .device_counters
                        .unrouted
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    shared
        .device_counters
        .delivered
        .fetch_add(delivered, Ordering::Relaxed);
    delivered
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{before_entry, halt, Local, Shared};
    use super::*;
    use crate::run::exits::Action;
    use iommu::irte::DestMode;

    fn mark(h: &mut FakeHost, vector: u8) {
        h.device_vectors[usize::from(vector / 64)] |= 1 << (vector % 64);
    }

    #[test]
    fn a_device_vector_becomes_the_routed_guest_vector_at_the_next_entry() {
        let s = Shared::new("nic", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(1, s.tsc_hz);
        let mut v = vcpu();
        enable_apic(&mut v, &mut l, &s, &mut h);
        assert!(s.device_routes.set(1, DEVICE_VECTOR_BASE + 1, 0x41));
        mark(&mut h, DEVICE_VECTOR_BASE + 1);
        // Unrouted (another entry's vector; vCPU 0's route does not apply on vCPU 1): dropped.
        assert!(s.device_routes.set(0, DEVICE_VECTOR_BASE + 2, 0x42));
        mark(&mut h, DEVICE_VECTOR_BASE + 2);
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(v.injected_irqs, [0x41]);
        assert_eq!(s.device_counters.delivered.load(Ordering::Relaxed), 1);
        assert_eq!(s.device_counters.unrouted.load(Ordering::Relaxed), 1);
        // Taken once: the next entry injects nothing more.
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(v.injected_irqs, [0x41]);
    }

    #[test]
    fn a_device_vector_wakes_a_halted_vcpu() {
        let s = Shared::new("nic", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        enable_apic(&mut v, &mut l, &s, &mut h);
        s.device_routes.set(0, DEVICE_VECTOR_BASE, 0x50);
        mark(&mut h, DEVICE_VECTOR_BASE);
        assert_eq!(
            halt(
                &mut v,
                &mut atoll_vcpu::SliceMemory(&mut []),
                &mut l,
                &s,
                &mut h
            ),
            Action::Resume
        );
        assert_eq!(h.waits, 0, "the interrupt was there before the wait");
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(v.injected_irqs, [0x50]);
    }

    #[test]
    fn a_message_reaches_the_vcpu_it_names_or_none() {
        let s = Shared::new("nic", &[4, 5, 6], 1_000_000_000);
        let mut h = FakeHost::default();
        for i in 0..3 {
            let mut l = Local::new(i, s.tsc_hz);
            let mut v = vcpu();
            enable_apic(&mut v, &mut l, &s, &mut h);
        }
        assert_eq!(s.vcpu_for(2, DestMode::Physical), Some(2));
        assert_eq!(s.vcpu_for(0, DestMode::Physical), Some(0));
        assert_eq!(s.vcpu_for(3, DestMode::Physical), None, "no such vCPU");
        assert_eq!(s.vcpu_for(0xff, DestMode::Physical), None, "a broadcast");
    }

    #[test]
    fn routes_are_per_vcpu_and_bounded() {
        let r = DeviceRoutes::new(2);
        assert!(r.set(1, DEVICE_VECTOR_BASE + 2, 0x41));
        assert_eq!(r.guest_vector(1, DEVICE_VECTOR_BASE + 2), Some(0x41));
        assert_eq!(r.guest_vector(0, DEVICE_VECTOR_BASE + 2), None);
        // Outside the block, a vCPU that does not exist, an exception vector: refused.
        assert!(!r.set(0, DEVICE_VECTOR_BASE - 1, 0x41));
        assert!(!r.set(0, 0xf1, 0x41));
        assert!(!r.set(2, DEVICE_VECTOR_BASE, 0x41));
        assert!(!r.set(0, DEVICE_VECTOR_BASE, 14));
        assert_eq!(r.guest_vector(0, DEVICE_VECTOR_BASE), None);
        r.clear();
        assert_eq!(r.guest_vector(1, DEVICE_VECTOR_BASE + 2), None);
        assert!(is_device_vector(0xef) && !is_device_vector(0xf0) && !is_device_vector(0x4f));
    }
}
