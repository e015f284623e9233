//! The root partition's window markers are seen on its exit path (the COM1 write that ends an
//! `ATOLL-IDLE` / `ATOLL-LOAD` line): recognising a line and noting an edge never allocate
//! (docs/architecture.md, "What partitions share"); only building the report's map does.

use atoll::run::host_windows::{marker, Snapshot, Windows, KINDS};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting only touches a
// const-initialized thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

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
