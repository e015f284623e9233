//! The root partition's measured windows: the host's `/init` prints `ATOLL-IDLE begin`/`end`
//! around a sleep and `ATOLL-LOAD begin`/`end` around a build-like load (the guest image's
//! `idle:N` and `load:N` actions); atoll snapshots the host's exit counts by kind and the TSC at
//! each line, and the summary's `host` object gets `idle` and `load`: the window's length
//! (`us`, `cycles`) and the exits of each kind seen in it (`cargo xtask bench idle --partition
//! host` turns them into exits per second).
//!
//! The snapshots are taken on the exit path (the COM1 write that ends the marker line), so they
//! are fixed arrays behind a lock and nothing allocates until [`Windows::measurements`] builds
//! the report's map.

use alloc::string::{String, ToString};
use atoll_vcpu::ExitKind;

/// The number of exit kinds a snapshot counts.
pub const KINDS: usize = ExitKind::ALL.len();

/// A point of the host's run: the TSC, its exits by kind (in [`ExitKind::ALL`] order) and the
/// IPIs atoll sent for it so far, summed over its vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub tsc: u64,
    pub exits: [u64; KINDS],
    /// `HostCounters::ipis_sent`: with the host's xAPIC page write-protected, each IPI the host
    /// sends costs it nested-page-fault exits (its ICR writes), so the window reports them to
    /// tell those exits apart from its EOIs and timer writes.
    pub ipis_sent: u64,
}

impl Snapshot {
    /// What happened from `begin` to `self`: the TSC cycles and the exits of each kind. The
    /// counters only grow and the TSC is invariant on the machines atoll runs on, but an
    /// emulator's TSC may step back between cores (QEMU's TCG warps it), so a difference that
    /// would be negative is 0 rather than a wrapped huge count.
    pub fn since(&self, begin: &Snapshot) -> Snapshot {
        let mut exits = [0; KINDS];
        for (d, (now, then)) in exits.iter_mut().zip(self.exits.iter().zip(&begin.exits)) {
            *d = now.saturating_sub(*then);
        }
        Snapshot {
            tsc: self.tsc.saturating_sub(begin.tsc),
            exits,
            ipis_sent: self.ipis_sent.saturating_sub(begin.ipis_sent),
        }
    }
}

/// A window the host's `/init` marks on its console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// `ATOLL-IDLE`: the host sleeps.
    Idle,
    /// `ATOLL-LOAD`: the host runs a build-like load on all its CPUs.
    Load,
}

impl Window {
    /// Every window, in the order of [`Windows`]' slots.
    pub const ALL: [Window; 2] = [Window::Idle, Window::Load];

    /// Its key in the report.
    pub fn name(self) -> &'static str {
        match self {
            Window::Idle => "idle",
            Window::Load => "load",
        }
    }

    /// The first word of its console lines.
    fn marker(self) -> &'static str {
        match self {
            Window::Idle => "ATOLL-IDLE",
            Window::Load => "ATOLL-LOAD",
        }
    }
}

/// Which end of a window a line marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    Begin,
    End,
}

/// The window edge a console line marks, if it is one: exactly `ATOLL-IDLE begin`, `ATOLL-IDLE
/// end`, `ATOLL-LOAD begin` or `ATOLL-LOAD end` (surrounding blanks and the serial line's CR
/// ignored, as for the enclaves' idle lines).
pub fn marker(line: &str) -> Option<(Window, Edge)> {
    let line = line.trim();
    Window::ALL.into_iter().find_map(|w| {
        match line.strip_prefix(w.marker())?.strip_prefix(' ')? {
            "begin" => Some((w, Edge::Begin)),
            "end" => Some((w, Edge::End)),
            _ => None,
        }
    })
}

/// The host's windows since its last start: an open window's beginning and a closed window's
/// difference, per [`Window`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    open: [Option<Snapshot>; 2],
    done: [Option<Snapshot>; 2],
}

impl Windows {
    /// No window yet (a new boot of the host).
    pub const fn new() -> Self {
        Self {
            open: [None; 2],
            done: [None; 2],
        }
    }

    /// Notes an edge of `window` at `at`. A `begin` (re)opens the window; an `end` closes the
    /// open one and keeps what happened in it (a later window of the same kind replaces it);
    /// an `end` with no `begin` before it is ignored, as the host's console is its own to
    /// write.
    pub fn mark(&mut self, window: Window, edge: Edge, at: Snapshot) {
        let i = window as usize;
        match edge {
            Edge::Begin => self.open[i] = Some(at),
            Edge::End => {
                if let Some(begin) = self.open[i].take() {
                    self.done[i] = Some(at.since(&begin));
                }
            }
        }
    }

    /// Adds the closed windows to the report's measurements: `"idle": {"us": …, "cycles": …,
    /// "ipis_sent": …, "<exit kind>": n, …}` (kinds not seen in the window left out), likewise
    /// `"load"`.
    pub fn measurements(&self, tsc_hz: u64, into: &mut serde_json::Map<String, serde_json::Value>) {
        for w in Window::ALL {
            let Some(d) = self.done[w as usize] else {
                continue;
            };
            let mut o = serde_json::Map::new();
            o.insert("cycles".into(), d.tsc.into());
            let us = u128::from(d.tsc) * 1_000_000 / u128::from(tsc_hz.max(1));
            o.insert("us".into(), u64::try_from(us).unwrap_or(u64::MAX).into());
            o.insert("ipis_sent".into(), d.ipis_sent.into());
            for (kind, n) in ExitKind::ALL.iter().zip(d.exits) {
                if n > 0 {
                    o.insert(kind.name().to_string(), n.into());
                }
            }
            into.insert(w.name().into(), o.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tsc: u64, counts: &[(ExitKind, u64)]) -> Snapshot {
        let mut exits = [0; KINDS];
        for (k, n) in counts {
            exits[*k as usize] = *n;
        }
        // As many IPIs so far as TSC ticks / 10, to see them carried through.
        Snapshot {
            tsc,
            exits,
            ipis_sent: tsc / 10,
        }
    }

    #[test]
    fn markers_are_the_four_exact_lines() {
        assert_eq!(
            marker("ATOLL-IDLE begin"),
            Some((Window::Idle, Edge::Begin))
        );
        assert_eq!(marker("ATOLL-IDLE end\r"), Some((Window::Idle, Edge::End)));
        assert_eq!(
            marker("  ATOLL-LOAD begin "),
            Some((Window::Load, Edge::Begin))
        );
        assert_eq!(marker("ATOLL-LOAD end"), Some((Window::Load, Edge::End)));
        for not in [
            "",
            "ATOLL-IDLE",
            "ATOLL-IDLE  begin",
            "ATOLL-IDLE begins",
            "ATOLL-IDLEbegin",
            "ATOLL-LOAD start",
            "atoll-idle begin",
            "echo ATOLL-LOAD end",
            "ATOLL-ACTION load:5",
        ] {
            assert_eq!(marker(not), None, "{not:?}");
        }
    }

    #[test]
    fn a_window_is_the_difference_of_its_edges() {
        let mut w = Windows::new();
        w.mark(
            Window::Idle,
            Edge::Begin,
            at(1_000, &[(ExitKind::Hlt, 10), (ExitKind::Io, 7)]),
        );
        w.mark(
            Window::Idle,
            Edge::End,
            at(
                3_001_000,
                &[
                    (ExitKind::Hlt, 310),
                    (ExitKind::Io, 7),
                    (ExitKind::NestedPageFault, 42),
                ],
            ),
        );
        let mut m = serde_json::Map::new();
        m.insert("boot_to_init".into(), 1.into());
        w.measurements(1_000_000, &mut m);
        assert_eq!(
            serde_json::Value::Object(m),
            serde_json::json!({
                "boot_to_init": 1,
                // 3 000 000 cycles at 1 MHz; Io did not change, so it is left out.
                "idle": {"cycles": 3_000_000, "us": 3_000_000, "ipis_sent": 300_000,
                         "hlt": 300, "nested_page_fault": 42}
            })
        );
    }

    #[test]
    fn windows_are_kept_apart_and_unmatched_edges_ignored() {
        let mut w = Windows::new();
        // An end with no begin, and a load end while only idle is open: nothing.
        w.mark(Window::Idle, Edge::End, at(5, &[(ExitKind::Hlt, 1)]));
        w.mark(Window::Idle, Edge::Begin, at(10, &[(ExitKind::Hlt, 1)]));
        w.mark(Window::Load, Edge::End, at(20, &[(ExitKind::Hlt, 2)]));
        let mut m = serde_json::Map::new();
        w.measurements(1_000, &mut m);
        assert!(m.is_empty(), "{m:?}");
        // A second begin restarts the window.
        w.mark(Window::Idle, Edge::Begin, at(30, &[(ExitKind::Hlt, 4)]));
        w.mark(Window::Idle, Edge::End, at(40, &[(ExitKind::Hlt, 9)]));
        // The end closed it: a second end changes nothing.
        w.mark(Window::Idle, Edge::End, at(90, &[(ExitKind::Hlt, 99)]));
        // Counters are cumulative: the load's HLTs all came before it.
        w.mark(
            Window::Load,
            Edge::Begin,
            at(100, &[(ExitKind::Cpuid, 1), (ExitKind::Hlt, 9)]),
        );
        w.mark(
            Window::Load,
            Edge::End,
            at(2_100, &[(ExitKind::Cpuid, 3), (ExitKind::Hlt, 9)]),
        );
        w.measurements(1_000, &mut m);
        assert_eq!(
            serde_json::Value::Object(m),
            serde_json::json!({
                "idle": {"cycles": 10, "us": 10_000, "ipis_sent": 1, "hlt": 5},
                "load": {"cycles": 2_000, "us": 2_000_000, "ipis_sent": 200, "cpuid": 2}
            })
        );
    }

    #[test]
    fn an_empty_window_has_its_length_only_and_a_backward_tsc_is_zero() {
        let mut w = Windows::new();
        w.mark(Window::Load, Edge::Begin, at(500, &[(ExitKind::Hlt, 3)]));
        // The end seen on a core whose TSC is behind (QEMU's warp), counters unchanged.
        w.mark(Window::Load, Edge::End, at(400, &[(ExitKind::Hlt, 3)]));
        let mut m = serde_json::Map::new();
        w.measurements(0, &mut m);
        assert_eq!(
            serde_json::Value::Object(m),
            serde_json::json!({"load": {"cycles": 0, "us": 0, "ipis_sent": 0}})
        );
        // A new boot forgets them.
        w = Windows::new();
        let mut m = serde_json::Map::new();
        w.measurements(1, &mut m);
        assert!(m.is_empty());
    }
}
