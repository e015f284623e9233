//! Test builds only (feature `fault-injection`): atoll faults on purpose while it handles a
//! guest's `FAULT_INJECT` hypercall, so the emulator tests can show that a fault in atoll ends
//! only the partition it was handling (`hw::contain`). A production image has no such code.

use atoll_abi::hypercall::fault;
use atoll_abi::status;

/// An address atoll's page tables never map (canonical, in the upper half, where atoll has
/// nothing): reading it raises #PF in atoll.
#[cfg(target_os = "none")]
const UNMAPPED: u64 = 0xffff_a000_0000_0000;

/// Faults as `kind` asks; returns a status only for a kind it does not know.
pub fn inject(kind: u64) -> u64 {
    match kind {
        fault::PANIC => panic!("fault injection: a panic in the hypercall handler"),
        fault::PAGE_FAULT => {
            #[cfg(target_os = "none")]
            // SAFETY: deliberately not sound: the read faults (atoll maps nothing at UNMAPPED)
            // and the exception handler ends this partition; this code exists only in
            // fault-injection test images.
            unsafe {
                core::ptr::read_volatile(UNMAPPED as *const u64);
            }
            status::INVALID
        }
        fault::ALLOCATION => {
            // More than any heap has: the allocator fails and the allocation-error path panics.
            let v = alloc::vec![0u8; core::hint::black_box(1 << 40)];
            core::hint::black_box(&v);
            status::INVALID
        }
        fault::INVALID_OPCODE => {
            #[cfg(target_os = "none")]
            // SAFETY: deliberately raises #UD in atoll, contained as above; test images only.
            unsafe {
                core::arch::asm!("ud2", options(nomem, nostack));
            }
            status::INVALID
        }
        fault::STACK_OVERFLOW => recurse(0) as u64,
        _ => status::INVALID,
    }
}

/// Recurses with a 4 KiB frame until the stack runs into its guard page (never returns in
/// practice; the depth bound only keeps the compiler from proving that).
#[inline(never)]
fn recurse(depth: u64) -> u8 {
    let frame = core::hint::black_box([depth as u8; 4096]);
    if depth == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1).wrapping_add(frame[(depth % 4096) as usize])
}
