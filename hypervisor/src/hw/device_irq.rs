//! The passed-through functions' host vectors that arrived on each core
//! ([`crate::run::vplat::passthrough`]): atoll's interrupt handler (or, on VMX, the exit that
//! acknowledged the interrupt) marks the vector here; the vCPU running on the core takes the
//! marks before its next entry and turns them into guest interrupts. A core runs one enclave's
//! vCPU at a time and the marks are cleared when a vCPU starts there, so a mark is always the
//! running enclave's.

use core::sync::atomic::{AtomicU64, Ordering};

/// Per core slot: a 256-bit set of host vectors.
static PENDING: [[AtomicU64; 4]; crate::machine::smp::MAX_CORES] =
    [const { [const { AtomicU64::new(0) }; 4] }; crate::machine::smp::MAX_CORES];

fn this_core() -> Option<&'static [AtomicU64; 4]> {
    super::core_tables::this_slot().and_then(|s| PENDING.get(s))
}

/// Marks `vector` pending on this core (interrupt context: one atomic OR).
pub fn note(vector: u8) {
    if let Some(p) = this_core() {
        p[usize::from(vector / 64)].fetch_or(1 << (vector % 64), Ordering::AcqRel);
    }
}

/// Takes this core's marks.
pub fn take() -> [u64; 4] {
    match this_core() {
        Some(p) => core::array::from_fn(|i| p[i].swap(0, Ordering::AcqRel)),
        None => [0; 4],
    }
}
