//! What `atoll stats` and `atoll console` read of an enclave while it runs: counters its vCPUs
//! bump on their exits and the tail of its console output, shared by that enclave's vCPUs
//! and the manager only (no other partition touches them).
//!
//! The counters are relaxed atomics (a sample is a snapshot of independent counts, not a
//! consistent cut); the console ring has its own lock, taken for one line at a time on the
//! exit path and for one copy by the manager, with a fixed buffer allocated with the enclave:
//! nothing is allocated while the enclave runs.

use alloc::vec;
use alloc::vec::Vec;
use atoll_vcpu::ExitKind;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

/// Bytes of console output an enclave keeps for `atoll console` (older bytes are overwritten).
pub const CONSOLE_RING: usize = 64 * 1024;

/// An enclave's live figures.
pub struct Live {
    exits: [AtomicU64; ExitKind::ALL.len()],
    /// TSC at its boot vCPU's first entry (0: not started).
    started_at: AtomicU64,
    /// TSC at its end (0: not ended).
    ended_at: AtomicU64,
    /// TSC at its boot vCPU's first VM entry (0: not yet), for `cargo xtask bench lifecycle`.
    first_entry: AtomicU64,
    console: Mutex<Ring>,
}

impl core::fmt::Debug for Live {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl Default for Live {
    fn default() -> Self {
        Self::new(CONSOLE_RING)
    }
}

impl Live {
    /// Counters at zero and a console ring of `ring` bytes (allocated here, once).
    pub fn new(ring: usize) -> Self {
        Self {
            exits: [const { AtomicU64::new(0) }; ExitKind::ALL.len()],
            started_at: AtomicU64::new(0),
            ended_at: AtomicU64::new(0),
            first_entry: AtomicU64::new(0),
            console: Mutex::new(Ring::new(ring)),
        }
    }

    /// Counts one exit.
    pub fn exit(&self, kind: ExitKind) {
        self.exits[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Exits by kind so far, in [`ExitKind::ALL`] order.
    pub fn exits(&self) -> [u64; ExitKind::ALL.len()] {
        core::array::from_fn(|i| self.exits[i].load(Ordering::Relaxed))
    }

    /// Notes the start (the first call counts).
    pub fn started(&self, tsc: u64) {
        let _ =
            self.started_at
                .compare_exchange(0, tsc.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Notes the end (the first call counts).
    pub fn ended(&self, tsc: u64) {
        let _ = self
            .ended_at
            .compare_exchange(0, tsc.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Notes the boot vCPU's first VM entry (the first call counts).
    pub fn entered(&self, tsc: u64) {
        let _ =
            self.first_entry
                .compare_exchange(0, tsc.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// TSC at the boot vCPU's first VM entry (0: not yet).
    pub fn first_entry(&self) -> u64 {
        self.first_entry.load(Ordering::Relaxed)
    }

    /// TSC ticks it has run (until its end, or `now`); 0 if it never started.
    pub fn uptime_ticks(&self, now: u64) -> u64 {
        let s = self.started_at.load(Ordering::Relaxed);
        if s == 0 {
            return 0;
        }
        let e = match self.ended_at.load(Ordering::Relaxed) {
            0 => now,
            e => e,
        };
        e.saturating_sub(s)
    }

    /// Appends one console line (and its newline) to the ring.
    pub fn console_line(&self, name_free_text: &str) {
        let mut r = self.console.lock();
        r.write(name_free_text.as_bytes());
        r.write(b"\n");
    }

    /// Copies output from byte `cursor` (counted since the enclave's start) into `out`:
    /// returns where the copy starts (later than `cursor` if those bytes were overwritten, or
    /// the end if `cursor` is past it) and how many bytes it copied.
    pub fn console_read(&self, cursor: u64, out: &mut [u8]) -> (u64, usize) {
        self.console.lock().read(cursor, out)
    }

    /// Bytes of console output so far.
    pub fn console_total(&self) -> u64 {
        self.console.lock().total
    }
}

/// A byte ring: the last `buf.len()` bytes written, and how many were written in all.
struct Ring {
    buf: Vec<u8>,
    total: u64,
}

impl Ring {
    fn new(size: usize) -> Self {
        Self {
            buf: vec![0; size.max(1)],
            total: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let cap = self.buf.len() as u64;
        for &b in bytes {
            self.buf[(self.total % cap) as usize] = b;
            self.total += 1;
        }
    }

    fn read(&self, cursor: u64, out: &mut [u8]) -> (u64, usize) {
        let cap = self.buf.len() as u64;
        let oldest = self.total.saturating_sub(cap);
        let start = cursor.clamp(oldest, self.total);
        let n = (self.total - start).min(out.len() as u64) as usize;
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = self.buf[((start + i as u64) % cap) as usize];
        }
        (start, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_bytes_and_says_where_a_read_starts() {
        let l = Live::new(8);
        l.console_line("abc");
        let mut out = [0u8; 16];
        assert_eq!(l.console_read(0, &mut out), (0, 4));
        assert_eq!(&out[..4], b"abc\n");
        assert_eq!(l.console_read(2, &mut out), (2, 2));
        assert_eq!(&out[..2], b"c\n");
        // Past the end: nothing, at the end.
        assert_eq!(l.console_read(99, &mut out), (4, 0));
        l.console_line("defghij");
        // 12 bytes written, 8 kept: a read from 0 starts at 4.
        assert_eq!(l.console_total(), 12);
        assert_eq!(l.console_read(0, &mut out), (4, 8));
        assert_eq!(&out[..8], b"defghij\n");
        // A small buffer takes what fits, from the start.
        let mut small = [0u8; 3];
        assert_eq!(l.console_read(5, &mut small), (5, 3));
        assert_eq!(&small, b"efg");
    }

    #[test]
    fn counters_and_uptime() {
        let l = Live::default();
        assert_eq!(l.uptime_ticks(100), 0);
        l.exit(ExitKind::Hlt);
        l.exit(ExitKind::Hlt);
        l.exit(ExitKind::Io);
        let e = l.exits();
        assert_eq!(e[ExitKind::Hlt as usize], 2);
        assert_eq!(e[ExitKind::Io as usize], 1);
        l.started(10);
        l.started(20);
        assert_eq!(l.uptime_ticks(50), 40);
        l.ended(70);
        l.ended(90);
        assert_eq!(l.uptime_ticks(1000), 60);
    }

    #[test]
    fn exit_kind_names_match_the_control_abi() {
        for k in ExitKind::ALL {
            assert_eq!(atoll_abi::control::EXIT_KINDS[k as usize], k.name());
        }
        assert_eq!(atoll_abi::control::EXIT_KINDS.len(), ExitKind::ALL.len());
    }
}
