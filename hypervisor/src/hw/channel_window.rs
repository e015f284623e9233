//! A channel window as atoll reaches it: frames of the pool, identity-mapped, that the host
//! maps too (`atoll_abi::channel`). Every access is a copy or an atomic on raw pointers: the
//! host writes the same bytes concurrently, so no Rust reference ever covers them, and every
//! offset is checked against the window's size first.

use atoll_abi::channel::SharedMem;
use boot::PhysRange;
use core::sync::atomic::{fence, AtomicU32, Ordering};

/// The window at `range` (identity-mapped below atoll's identity limit).
#[derive(Debug)]
pub struct WindowMem {
    base: *mut u8,
    size: usize,
}

// SAFETY: the window is plain memory reached only through copies and atomics, from any core.
unsafe impl Send for WindowMem {}
// SAFETY: as above: no method hands out references into the window.
unsafe impl Sync for WindowMem {}

impl WindowMem {
    /// The window over `range`.
    ///
    /// # Safety
    ///
    /// `range` must be identity-mapped memory atoll allocated for this window and keeps
    /// allocated for as long as the value lives.
    pub unsafe fn new(range: PhysRange) -> Self {
        Self {
            base: range.start.as_u64() as *mut u8,
            size: range.len() as usize,
        }
    }

    fn fits(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|e| e <= self.size)
    }

    fn word(&self, offset: usize) -> Option<&AtomicU32> {
        if !offset.is_multiple_of(4) || !self.fits(offset, 4) {
            return None;
        }
        // SAFETY: the word is 4-aligned and inside the window (checked), which stays allocated
        // while `self` lives (the constructor's contract); an AtomicU32 has u32's layout and
        // every access through it is atomic, which is what a word the host writes
        // concurrently needs.
        Some(unsafe { &*(self.base.wrapping_add(offset) as *const AtomicU32) })
    }
}

impl SharedMem for WindowMem {
    fn size(&self) -> usize {
        self.size
    }

    fn load_acquire(&self, offset: usize) -> u32 {
        self.word(offset).map_or(0, |w| w.load(Ordering::Acquire))
    }

    fn store_release(&self, offset: usize, value: u32) {
        if let Some(w) = self.word(offset) {
            w.store(value, Ordering::Release);
        }
    }

    fn fence(&self) {
        fence(Ordering::SeqCst);
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        if !self.fits(offset, buf.len()) {
            buf.fill(0);
            return;
        }
        // SAFETY: the bytes are inside the window (checked) and `buf` is atoll's own; a
        // concurrent host write only changes which bytes are copied.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.base.wrapping_add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        fence(Ordering::Acquire);
    }

    fn write(&self, offset: usize, buf: &[u8]) {
        if !self.fits(offset, buf.len()) {
            return;
        }
        fence(Ordering::Release);
        // SAFETY: as for `read`, the other way.
        unsafe {
            core::ptr::copy_nonoverlapping(buf.as_ptr(), self.base.wrapping_add(offset), buf.len())
        };
    }
}
