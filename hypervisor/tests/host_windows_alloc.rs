//! The root partition's window markers are seen on its exit path (the COM1 write that ends an
//! `ATOLL-IDLE` / `ATOLL-LOAD` line): recognising a line and noting an edge never allocate
//! (docs/architecture.md, "What partitions share"); only building the report's map does.

use atoll::run::host_windows::{marker, Snapshot, Windows, KINDS};
// The devices crate's counting allocator (one copy for every allocation test).
#[path = "../devices/tests/counting/mod.rs"]
mod counting;
use counting::allocations;

#[test]
fn marking_windows_allocates_nothing() {
    let lines = [
        "ATOLL-IDLE begin",
        "atoll-init: /atoll-check",
        "ATOLL-IDLE end\r",
        "ATOLL-LOAD begin",
        "load: 3 build steps on 2 CPUs, 0 failed",
        "ATOLL-LOAD end",
        "ATOLL-LOAD end",
    ];
    let mut w = Windows::new();
    let before = allocations();
    let mut seen = 0;
    for round in 0..1_000u64 {
        for (i, line) in lines.iter().enumerate() {
            if let Some((window, edge)) = marker(line) {
                let n = round * 10 + i as u64;
                w.mark(
                    window,
                    edge,
                    Snapshot {
                        tsc: n,
                        exits: [n; KINDS],
                        ipis_sent: n,
                    },
                );
                seen += 1;
            }
        }
    }
    assert_eq!(allocations() - before, 0, "the exit path allocated");
    assert_eq!(seen, 5_000);
    // The report's map is built outside the exit path, and holds both windows.
    let mut m = serde_json::Map::new();
    w.measurements(1_000, &mut m);
    assert!(allocations() > before);
    assert_eq!(m["idle"]["cycles"], 2);
    assert_eq!(m["load"]["cycles"], 2);
}
