use super::*;
use alloc::string::ToString;
use alloc::vec::Vec;

fn valid(s: &str) -> bool {
    validate(s.as_bytes(), Limits::GUEST).is_ok()
}

#[test]
fn fixed_buf_refuses_past_capacity_and_counts() {
    let mut b = FixedBuf::<8>::new();
    assert!(b.push(b"hello"));
    assert!(!b.push(b"world"), "5 + 5 > 8: refused whole");
    assert_eq!((b.as_bytes(), b.dropped()), (&b"hello"[..], 5));
    assert!(b.push(b"abc"));
    assert_eq!(b.as_bytes(), b"helloabc");
    assert!(!b.push(b"!"));
    assert_eq!((b.dropped(), b.capacity()), (6, 8));
    b.clear();
    use core::fmt::Write;
    assert!(write!(b, "{}", -42i64).is_ok());
    assert_eq!(b.as_bytes(), b"-42");
    assert!(write!(b, "{}", 1234567).is_err(), "does not fit");
}

#[test]
fn validator_agrees_with_serde_json() {
    let cases = [
        "{}",
        "[]",
        " {\"a\" : 1 } ",
        "{\"a\":[1,2,{\"b\":null}],\"c\":\"x\"}",
        "0",
        "-0",
        "-0.5e+10",
        "1E5",
        "123.456",
        "true",
        "false",
        "null",
        "\"esc \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\ud83d\\ude00\"",
        "\"h\u{e9}llo \u{1f600}\"",
        "[[[[]]]]",
        "{\"a\":{}}",
        // Refused by both.
        "",
        " ",
        "{",
        "}",
        "[1,]",
        "[,1]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{a:1}",
        "{\"a\":1 \"b\":2}",
        "{1:2}",
        "01",
        "-",
        "1.",
        ".5",
        "1e",
        "1e+",
        "+1",
        "tru",
        "nul",
        "truex",
        "\"unterminated",
        "\"ctrl \u{1} char\"",
        "\"bad \\x escape\"",
        "\"\\u12\"",
        "\"\\u12g4\"",
        "\"lone high \\ud800\"",
        "\"lone high then text \\ud800x\"",
        "\"lone low \\udc00\"",
        "\"high then non-low \\ud800\\u0041\"",
        "{} {}",
        "1 2",
        "[1] x",
        "[}",
        "{]",
        "{\"a\":1]",
        "NaN",
        "1e400",
        "-1e400",
        "1e-400",
        "123456789012345678901234567890",
        "-0.0e0",
        "[\"a\"\"b\"]",
    ];
    for c in cases {
        let ours = valid(c);
        let serde = serde_json::from_str::<serde_json::Value>(c).is_ok();
        assert_eq!(ours, serde, "{c:?}");
    }
    // Invalid UTF-8 inside a string.
    for bytes in [
        &b"\"\xff\""[..],
        b"\"\xc3\"",
        b"\"\xed\xa0\x80\"",
        b"\"\xe2\x82\"",
    ] {
        assert!(validate(bytes, Limits::GUEST).is_err(), "{bytes:?}");
        assert!(serde_json::from_slice::<serde_json::Value>(bytes).is_err());
    }
}

#[test]
fn validator_limits_depth_and_size() {
    let nest = |n: usize| "[".repeat(n) + &"]".repeat(n);
    assert!(valid(&nest(MAX_JSON_DEPTH)));
    assert_eq!(
        validate(nest(MAX_JSON_DEPTH + 1).as_bytes(), Limits::GUEST),
        Err(JsonError::TooDeep)
    );
    let objs = |n: usize| "{\"k\":".repeat(n) + "1" + &"}".repeat(n);
    assert!(valid(&objs(MAX_JSON_DEPTH)));
    assert_eq!(
        validate(objs(MAX_JSON_DEPTH + 1).as_bytes(), Limits::GUEST),
        Err(JsonError::TooDeep)
    );
    // Depth counts open containers, not containers seen: many siblings are fine.
    assert!(valid(&("[".to_string() + &["[]"; 500].join(",") + "]")));
    let big = "[".to_string() + &"1,".repeat(3000) + "1]";
    assert_eq!(
        validate(big.as_bytes(), Limits::GUEST),
        Err(JsonError::TooLarge)
    );
    assert!(validate(
        big.as_bytes(),
        Limits {
            depth: 1,
            size: big.len()
        }
    )
    .is_ok());
    // A depth limit above 64 is treated as 64 (the bit stack's size).
    let wide = Limits {
        depth: 1000,
        size: 1 << 20,
    };
    assert!(validate(nest(64).as_bytes(), wide).is_ok());
    assert_eq!(validate(nest(65).as_bytes(), wide), Err(JsonError::TooDeep));
}

#[test]
fn deep_nesting_is_refused_without_recursion() {
    // 100,000 levels on a thread with a 32 KiB stack (half an AP's): a recursive parser would
    // overflow it
    // (serde_json refuses at 128 levels for the same reason); the validator uses the same few
    // bytes of stack at any depth, and refuses as soon as depth 9 opens.
    let handle = std::thread::Builder::new()
        .stack_size(32 * 1024)
        .spawn(|| {
            let deep = alloc::vec![b'['; 100_000];
            let deep_obj = b"{\"a\":".repeat(100_000);
            let unlimited = Limits {
                depth: 64,
                size: usize::MAX,
            };
            (
                validate(&deep, unlimited),
                validate(&deep_obj, unlimited),
                validate(&deep, Limits::GUEST),
            )
        })
        .unwrap();
    assert_eq!(
        handle.join().unwrap(),
        (
            Err(JsonError::TooDeep),
            Err(JsonError::TooDeep),
            Err(JsonError::TooLarge)
        )
    );
}

#[test]
fn members_are_the_top_level_pairs() {
    let json = br#" { "a" : 1 , "b\"q": {"x":[1,"}]"]}, "c":"s,}", "d" :true,"e":-1.5e3 } "#;
    assert!(validate_object(json, Limits::GUEST).is_ok());
    let m: Vec<(&[u8], &[u8])> = members(json).collect();
    assert_eq!(
        m,
        [
            (&b"a"[..], &b"1"[..]),
            (b"b\\\"q", br#"{"x":[1,"}]"]}"#),
            (b"c", br#""s,}""#),
            (b"d", b"true"),
            (b"e", b"-1.5e3"),
        ]
    );
    assert_eq!(members(b"{}").count(), 0);
    assert_eq!(members(b"[1,2]").count(), 0, "not an object: nothing");
    assert_eq!(members(b"{\"a\":{").count(), 0, "cut off: stops");
    assert_eq!(
        validate_object(b"[1]", Limits::GUEST),
        Err(JsonError::NotObject)
    );
    assert_eq!(
        validate_object(b"\"s\"", Limits::GUEST),
        Err(JsonError::NotObject)
    );
}

#[test]
fn report_merges_replaces_and_is_all_or_nothing() {
    let mut s = ReportStore::new(256);
    assert_eq!(s.report(br#"{"a":1,"b":"x"}"#), Ok(()));
    assert_eq!(s.report(br#"{"b":[true],"c":null}"#), Ok(()));
    let map = s.to_map();
    assert_eq!(
        serde_json::Value::Object(map),
        serde_json::json!({"a":1,"b":[true],"c":null})
    );
    // A key twice in one report: the last value, as serde_json's map keeps.
    assert_eq!(s.report(br#"{"d":1,"d":2}"#), Ok(()));
    assert_eq!(s.to_map()["d"], 2);
    assert_eq!(s.entries().filter(|(_, k, _)| *k == b"d").count(), 1);

    // Refused JSON: INVALID-worthy errors, nothing changes, nothing counted as dropped.
    let before = s.used();
    for bad in [
        &b"{\"a\":"[..],
        b"[1,2]",
        b"42",
        b"{\"a\":[[[[[[[[1]]]]]]]]}",
        b"not json",
    ] {
        assert!(matches!(s.report(bad), Err(StoreError::Json(_))), "{bad:?}");
    }
    assert_eq!((s.used(), s.dropped()), (before, 0));

    // Over the budget: refused whole (the key that would fit is not stored either), counted.
    let big = alloc::format!("{{\"small\":1,\"big\":\"{}\"}}", "x".repeat(300));
    assert_eq!(s.report(big.as_bytes()), Err(StoreError::Full));
    assert_eq!((s.used(), s.dropped()), (before, big.len() as u64));
    assert!(!s.to_map().contains_key("small"));
    // Replacing a value by a shorter one always fits, even when the store is full.
    let mut f = ReportStore::new(5 + 1 + 10);
    assert_eq!(f.report(br#"{"k":"12345678"}"#), Ok(()));
    assert_eq!(f.used(), f.capacity());
    assert_eq!(f.report(br#"{"j":1}"#), Err(StoreError::Full));
    assert_eq!(f.report(br#"{"k":1}"#), Ok(()));
    assert_eq!(f.to_map()["k"], 1);
}

#[test]
fn report_floods_stay_in_the_budget() {
    let mut s = ReportStore::new(REPORT_BUDGET);
    let base = s.data.as_ptr();
    let mut refused = 0u64;
    for i in 0..10_000 {
        let json = alloc::format!("{{\"key{i}\":\"{}\"}}", "v".repeat(i % 200));
        match s.report(json.as_bytes()) {
            Ok(()) => {}
            Err(StoreError::Full) => refused += json.len() as u64,
            Err(e) => panic!("{e:?}"),
        }
        assert!(s.used() <= REPORT_BUDGET);
    }
    assert_eq!(s.dropped(), refused);
    assert!(refused > 0, "the flood must exceed the budget");
    assert_eq!(s.capacity(), REPORT_BUDGET);
    assert_eq!(s.data.as_ptr(), base, "never reallocated");
    // What was kept is intact.
    let map = s.to_map();
    assert_eq!(map["key0"], "");
    assert_eq!(map["key3"], "vvv");
}

#[test]
fn insert_keeps_text_and_json_and_counts_drops() {
    let mut s = ReportStore::new(64);
    assert_eq!(
        s.insert("guest_check", b"not {json", ValueKind::Text),
        Ok(())
    );
    assert_eq!(s.to_map()["guest_check"], "not {json");
    assert_eq!(
        s.insert("guest_check", br#"{"ok":true}"#, ValueKind::Json),
        Ok(())
    );
    assert_eq!(s.to_map()["guest_check"]["ok"], true);
    assert_eq!(s.entries().count(), 1);
    assert_eq!(
        s.insert("x", &[b'1'; 100], ValueKind::Json),
        Err(StoreError::Full)
    );
    assert_eq!(s.dropped(), 100);
    // A value serde_json refuses at summary time (the callers validate first; `insert` does
    // not) shows as its text, never as a panic.
    assert_eq!(s.insert("n", b"1e400", ValueKind::Json), Ok(()));
    assert_eq!(s.to_map()["n"], "1e400");
}

/// What the guest suite reports (its format string, with typical values).
const GUEST_SUITE_REPORT: &str = concat!(
    "{\"suite_passed\":true,\"console_hypercall\":true,\"abi_version_ok\":true,\"unknown_hypercall_refused\":true,\"bad_buffer_refused\":true,",
    "\"cpuid_vmx_hidden\":true,\"cpuid_svm_hidden\":true,\"cpuid_hypervisor_bit\":true,\"cpuid_signature_ok\":true,",
    "\"msr_allowed_ok\":true,\"msr_denied_gp\":true,\"msr_passthrough_ok\":true,\"denied_port_value\":255,",
    "\"ram_bytes\":16777216,\"pages_checked\":4096,\"ram_passes\":1,\"bad_pages\":0,\"cpuid_cycles\":1234,\"hypercall_cycles\":5678,\"mode\":\"long64\"}"
);

/// The shape of atoll-check's line (guest-kit's `check::report`), with escapes and unicode.
const GUEST_CHECK: &str = r#"{"ok":true,"checks":{"cpus":true,"memory":true},"problems":[],"cpus":2,"cpus_online":"0-1","cpus_affinity":"0-1","memory_kib":250000,"memory_kernel_kib":262144,"apic_mode":"xapic","apic_mode_evidence":"dmesg: \"APIC: Switch\"","clocksource":"tsc","tsc_khz":2000000,"tsc_khz_source":"cpuinfo","cmdline":"console=ttyS0 atoll.tolerate=tsc-calibration \u00e9","hypervisor":"AtollHV","hypervisor_max_leaf":"0x40000001","compute":{"iterations_per_cpu":1000,"wall_ms":12.345,"per_cpu":[{"cpu":0,"ran_on":0,"iterations":1000,"ms":6.1,"checksum":"00ff00ff00ff00ff","error":null},{"cpu":1,"ran_on":1,"iterations":1000,"ms":6.2,"checksum":"00ff00ff00ff00ff","error":null}]},"kernel_log":"/dev/kmsg","dmesg_warnings":[],"dmesg_warnings_omitted":0,"dmesg_tolerated":["tsc: Fast TSC calibration failed"],"expect":{"cpus":2,"memory_mib":256,"tolerate":["tsc-calibration"]}}"#;

#[test]
fn known_reports_round_trip_as_serde_json_parses_them() {
    // REPORT: today's `results.extend(map)` against the store.
    let mut s = ReportStore::new(REPORT_BUDGET);
    assert_eq!(s.report(GUEST_SUITE_REPORT.as_bytes()), Ok(()));
    let serde_json::Value::Object(want) = serde_json::from_str(GUEST_SUITE_REPORT).unwrap() else {
        panic!()
    };
    assert_eq!(s.to_map(), want);
    // The guest check line: today's `from_str::<Value>` against a validated raw value.
    assert_eq!(validate(GUEST_CHECK.as_bytes(), Limits::GUEST), Ok(()));
    assert_eq!(
        s.insert("guest_check", GUEST_CHECK.as_bytes(), ValueKind::Json),
        Ok(())
    );
    let want_check: serde_json::Value = serde_json::from_str(GUEST_CHECK).unwrap();
    assert_eq!(s.to_map()["guest_check"], want_check);
    // And serialized the same (the summary line is serde_json's serialization of the map).
    let mut today = want.clone();
    today.insert("guest_check".into(), want_check);
    assert_eq!(
        serde_json::to_string(&s.to_map()).unwrap(),
        serde_json::to_string(&today).unwrap()
    );
}

#[test]
fn console_queue_keeps_order_and_drops_what_does_not_fit() {
    let mut q = ConsoleQueue::new(32);
    assert!(q.push_line(&["[a] ", "one"]));
    assert!(q.push_line(&["[a] ", "two"]));
    assert_eq!(q.front(), Some("[a] one"));
    q.pop_front();
    assert_eq!(q.front(), Some("[a] two"));
    // 2 + 7 waiting; a line of 24 needs 26: refused whole and counted.
    assert!(!q.push_line(&["[a] ", "twenty bytes of text"]));
    assert_eq!(q.dropped(), 24);
    // After the waiting line is printed, the queue moves to the front and it fits.
    q.pop_front();
    assert!(q.is_empty());
    assert!(q.push_line(&["[a] ", "twenty bytes of text"]));
    assert_eq!(q.front(), Some("[a] twenty bytes of text"));
    // Wrapping: the tail reaches the end while the head is not at 0.
    let mut q = ConsoleQueue::new(20);
    assert!(q.push_line(&["aaaa"])); // 0..6
    assert!(q.push_line(&["bbbb"])); // 6..12
    q.pop_front();
    assert!(q.push_line(&["cccccc"])); // needs 8: 12..20
    assert!(q.push_line(&["dd"])); // needs 4: moved to the front first
    let mut out = Vec::new();
    while let Some(l) = q.front() {
        out.push(l.to_string());
        q.pop_front();
    }
    assert_eq!(out, ["bbbb", "cccccc", "dd"]);
    assert!(
        !ConsoleQueue::new(4).push_line(&["abc"]),
        "larger than the whole queue"
    );
}

#[test]
fn console_floods_stay_in_the_budget() {
    let mut q = ConsoleQueue::new(CONSOLE_BUDGET);
    let base = q.data.as_ptr();
    let line = "x".repeat(crate::uart::LINE_MAX);
    let mut kept = 0u64;
    for i in 0..10_000 {
        if q.push_line(&["[flood] ", &line[..i % line.len()]]) {
            kept += 1;
        }
        // The port frees one line now and then.
        if i % 97 == 0 {
            q.pop_front();
        }
    }
    assert!(kept > 0 && q.dropped() > 0);
    assert_eq!((q.capacity(), q.data.as_ptr()), (CONSOLE_BUDGET, base));
}

#[test]
fn lossy_matches_from_utf8_lossy() {
    let cases: [&[u8]; 7] = [
        b"plain",
        b"caf\xc3\xa9",
        b"bad \xff byte",
        b"\xff\xfe\xfd",
        b"cut \xe2\x82",
        b"\xf0\x9f\x98\x80 emoji",
        b"",
    ];
    for c in cases {
        let mut out = [0u8; 64];
        assert_eq!(
            lossy_utf8_into(c, &mut out),
            String::from_utf8_lossy(c),
            "{c:?}"
        );
    }
    // Too small: cut at a character boundary.
    let mut out = [0u8; 5];
    assert_eq!(
        lossy_utf8_into("caf\u{e9}\u{e9}".as_bytes(), &mut out),
        "caf\u{e9}"
    );
    let mut out = [0u8; 4];
    assert_eq!(lossy_utf8_into(b"ab\xffc", &mut out), "ab");
}
