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
//! **Guarded registers.** While a VF is an enclave's, the host keeps its PF but may not write
//! the PF's SR-IOV capability (VF Enable, NumVFs, the VF BARs: PCIe r4.0 §9.3.3): disabling
//! the VFs or moving their BARs would leave the enclave's second stage pointing at addresses
//! the VF no longer decodes, where the host could then place a device of its own. The PF's ECAM
//! page is trapped (the trapped-configuration path), reads pass through, and a write touching a
//! guarded range is dropped and counted ([`Hidden::guarded`]). The SR-IOV capability is in
//! extended configuration space, which mechanism #1 cannot reach.
//!
//! The sets are fixed arrays of atomics: the manager adds and removes; the host's exits read
//! them without a lock.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Functions that can be hidden at once (every enclave's passed-through functions together).
pub const MAX_HIDDEN: usize = 64;

/// Guarded ranges at once.
pub const MAX_GUARDS: usize = 16;

/// The hidden requester ids (bus << 8 | devfn), each stored + 1 (0: a free slot), and the
/// guarded register ranges: `1 << 63 | sid << 32 | start << 16 | end`.
pub struct Hidden {
    slots: [AtomicU32; MAX_HIDDEN],
    guards: [AtomicU64; MAX_GUARDS],
    /// Host configuration accesses to a hidden function answered as absent.
    pub refused: AtomicU64,
}

impl Default for Hidden {
    fn default() -> Self {
        Self {
            slots: [const { AtomicU32::new(0) }; MAX_HIDDEN],
            guards: [const { AtomicU64::new(0) }; MAX_GUARDS],
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
            if s.compare_exchange(0, want, Ordering::AcqRel, Ordering::Acquire)
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

    /// Refuses the host's writes to `sid`'s configuration registers `[start, end)` (offsets
    /// below 4096) from now on.
    pub fn guard(&self, sid: u16, start: u16, end: u16) -> Result<(), HideError> {
        let want = 1u64 << 63 | u64::from(sid) << 32 | u64::from(start) << 16 | u64::from(end);
        if self
            .guards
            .iter()
            .any(|g| g.load(Ordering::Acquire) == want)
        {
            return Err(HideError::AlreadyHidden);
        }
        for g in &self.guards {
            if g.compare_exchange(0, want, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(HideError::Full)
    }

    /// Drops every guard of `sid`.
    pub fn unguard(&self, sid: u16) {
        for g in &self.guards {
            let v = g.load(Ordering::Acquire);
            if v >> 63 == 1 && (v >> 32) as u16 == sid {
                let _ = g.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Acquire);
            }
        }
    }

    /// Whether `sid` has a guarded range at all (its ECAM page is then trapped).
    pub fn has_guard(&self, sid: u16) -> bool {
        self.guards.iter().any(|g| {
            let v = g.load(Ordering::Acquire);
            v >> 63 == 1 && (v >> 32) as u16 == sid
        })
    }

    /// Whether a write of `size` bytes at `offset` of `sid`'s configuration space touches a
    /// guarded range.
    pub fn guarded(&self, sid: u16, offset: u32, size: u8) -> bool {
        let end = offset.saturating_add(u32::from(size));
        self.guards.iter().any(|g| {
            let v = g.load(Ordering::Acquire);
            v >> 63 == 1
                && (v >> 32) as u16 == sid
                && offset < u32::from(v as u16)
                && u32::from((v >> 16) as u16) < end
        })
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

    #[test]
    fn guarded_ranges_refuse_only_what_they_cover() {
        let h = Hidden::default();
        assert!(!h.has_guard(0x0100));
        h.guard(0x0100, 0x160, 0x1a0).unwrap();
        assert_eq!(h.guard(0x0100, 0x160, 0x1a0), Err(HideError::AlreadyHidden));
        assert!(h.has_guard(0x0100));
        // Inside, straddling either end, and the neighbours just outside.
        assert!(h.guarded(0x0100, 0x168, 2));
        assert!(!h.guarded(0x015c, 0, 4));
        assert!(h.guarded(0x0100, 0x15e, 4));
        assert!(h.guarded(0x0100, 0x19e, 4));
        assert!(!h.guarded(0x0100, 0x15c, 4));
        assert!(!h.guarded(0x0100, 0x1a0, 4));
        // Another function's same offsets are not guarded.
        assert!(!h.guarded(0x0180, 0x168, 2));
        h.unguard(0x0100);
        assert!(!h.guarded(0x0100, 0x168, 2));
        assert!(!h.has_guard(0x0100));
        for i in 0..MAX_GUARDS as u16 {
            h.guard(0x200 + i, 0, 4).unwrap();
        }
        assert_eq!(h.guard(0x0300, 0, 4), Err(HideError::Full));
    }
}
