//! Functions taken from the host for an enclave (issue 13): while an enclave owns a function,
//! the host's configuration accesses to it read all ones and write nothing — the function is
//! absent, as an empty slot is (PCI 3.0 §6.1) — whichever way the host reaches it:
//!
//! * its ECAM page is unmapped in the host's second stage (the manager does it), so an access
//!   faults and is answered as an unmapped address, or by the trapped-configuration path,
//!   which asks [`Hidden::contains`] first;
//! * configuration mechanism #1 (intercepted with the control device) checks
//!   [`Hidden::contains`] for the latched function before passing an access through.
//!
//! Its BARs' pages are unmapped in the host's second stage too (the manager again), so the
//! host's loads there read all ones and its stores are dropped and counted.
//!
//! The set is a fixed array of atomics: the manager adds and removes; the host's exits read it
//! without a lock.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Functions that can be hidden at once (every enclave's passed-through functions together).
pub const MAX_HIDDEN: usize = 64;

/// The hidden requester ids (bus << 8 | devfn), each stored + 1 (0: a free slot).
pub struct Hidden {
    slots: [AtomicU32; MAX_HIDDEN],
    /// Host configuration accesses to a hidden function answered as absent.
    pub refused: AtomicU64,
}

impl Default for Hidden {
    fn default() -> Self {
        Self {
            slots: [const { AtomicU32::new(0) }; MAX_HIDDEN],
            refused: AtomicU64::new(0),
        }
    }
}

/// Why a function could not be hidden.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HideError {
    /// Already hidden (an enclave owns it).
    AlreadyHidden,
    /// [`MAX_HIDDEN`] functions are hidden already.
    Full,
}

impl Hidden {
    /// Hides `sid` from the host's configuration accesses.
    pub fn hide(&self, sid: u16) -> Result<(), HideError> {
        if self.contains(sid) {
            return Err(HideError::AlreadyHidden);
        }
        let want = u32::from(sid) + 1;
        for s in &self.slots {
            if s
                .compare_exchange(0, want, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(HideError::Full)
    }

    /// Shows `sid` to the host again; false if it was not hidden.
    pub fn show(&self, sid: u16) -> bool {
        let want = u32::from(sid) + 1;
        self.slots.iter().any(|s| {
            s.compare_exchange(want, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    /// Whether `sid` is hidden.
    pub fn contains(&self, sid: u16) -> bool {
        let want = u32::from(sid) + 1;
        self.slots.iter().any(|s| s.load(Ordering::Acquire) == want)
    }

    /// Counts one access answered as absent; returns the count.
    pub fn refuse(&self) -> u64 {
        self.refused.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hide_show_and_bounds() {
        let h = Hidden::default();
        assert!(!h.contains(0x0180));
        h.hide(0x0180).unwrap();
        assert!(h.contains(0x0180));
        assert!(!h.contains(0x0182));
        assert_eq!(h.hide(0x0180), Err(HideError::AlreadyHidden));
        // 0:00.0 is a function like any other (stored + 1, so it is not a free slot).
        h.hide(0).unwrap();
        assert!(h.contains(0));
        assert!(h.show(0x0180));
        assert!(!h.show(0x0180));
        assert!(!h.contains(0x0180));
        for sid in 1..MAX_HIDDEN as u16 {
            h.hide(0x100 + sid).unwrap();
        }
        assert_eq!(h.hide(0x0fff), Err(HideError::Full));
    }
}
