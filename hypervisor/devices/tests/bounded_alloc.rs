//! The exit-path API of `atoll_devices::bounded` never allocates: counted with a global allocator that
//! counts, per thread, every allocation and reallocation.

use atoll_devices::bounded::{
    lossy_utf8_into, members, validate, validate_object, ConsoleQueue, FixedBuf, Limits,
    ReportStore, ValueKind, CONSOLE_BUDGET, REPORT_BUDGET,
};

mod counting;
use counting::allocations;

#[test]
fn floods_allocate_nothing_after_creation() {
    // Inputs made before counting starts.
    let reports: Vec<String> = (0..5000)
        .map(|i| format!("{{\"k{i}\":{{\"n\":[{i},true,null,\"s\\u00e9\"]}},\"same\":{i}}}"))
        .collect();
    let bad: Vec<Vec<u8>> = vec![
        b"[".repeat(100_000),
        b"{\"a\":".repeat(1000),
        b"{\"a\":1,}".to_vec(),
        b"\"\\ud800\"".to_vec(),
    ];
    let line = "y".repeat(4096);
    let mut lossy_out = vec![0u8; 3 * 4096];

    // Creation allocates (once each).
    let mut store = ReportStore::new(REPORT_BUDGET);
    let mut queue = ConsoleQueue::new(CONSOLE_BUDGET);
    let mut uart = atoll_devices::uart::Uart16550::new();

    let before = allocations();
    for r in &reports {
        let _ = store.report(r.as_bytes());
        let _ = store.insert("guest_check", r.as_bytes(), ValueKind::Json);
        assert!(validate_object(r.as_bytes(), Limits::GUEST).is_ok());
        assert!(members(r.as_bytes()).count() == 2);
    }
    for b in &bad {
        assert!(store.report(b).is_err());
        assert!(validate(b, Limits::GUEST).is_err());
    }
    for i in 0..20_000 {
        let _ = queue.push_line(&["[flood] ", &line[..i % line.len()]]);
        if i % 50 == 0 {
            queue.pop_front();
        }
    }
    let _ = lossy_utf8_into(b"bad \xff bytes", &mut lossy_out);
    // COM1's model: lines (valid, invalid UTF-8, over-long) come out without allocating.
    for b in b"hello\n\xff\xfe bad\n".iter().chain(&[b'z'; 3 * 4096]) {
        let _ = uart.write(0, *b);
    }
    let _ = uart.flush();
    let mut small = FixedBuf::<24>::new();
    let _ = std::fmt::Write::write_fmt(&mut small, format_args!("{}", i64::MIN));
    let after = allocations();

    assert_eq!(after - before, 0, "no allocation on the exit-path API");
    assert!(
        store.dropped() > 0 && queue.dropped() > 0,
        "both budgets were exceeded"
    );
    assert!(store.used() <= REPORT_BUDGET);
    // The counter does count (the assertion above could fail).
    let probe = std::hint::black_box(vec![0u8; 16]);
    assert!(allocations() > after, "{probe:?}");
}
