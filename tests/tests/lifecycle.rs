//! Emulator tests of operating enclaves from the host (`atoll` over the control device).
//!
//! * `lifecycle` (QEMU/SVM and Bochs/VMX): the host's `/init` creates a Linux enclave on two
//!   CPUs it offlines, reads its check through `atoll console` and types a line it echoes,
//!   prints `atoll stats`, destroys it; a guest on the same cores and memory counts every byte that is not zero; every
//!   refusal (bad descriptions, busy cores, too much memory, garbage in the mailbox) leaves
//!   `atoll list` unchanged; a crashed guest stays listed as failed; a spinning guest is
//!   destroyed; two shells create and destroy at once; the pool is whole at the end.
//! * `lifecycle-soak` (QEMU): 1,000 create/destroy cycles; atoll's own counters show nothing
//!   leaked.
//!
//! Each scenario's own expectations must hold; the tests then check what spans several
//! figures (the pool before and after, the memory the two enclaves had).

use serde_json::Value;
use xtask::run::{run, RunOptions, RunOutcome};
use xtask::scenario::{lookup, Emulator};

fn boot(emulator: Emulator, scenario: &str) -> RunOutcome {
    let o =
        run(&RunOptions::new(emulator, scenario)).unwrap_or_else(|e| panic!("{scenario}: {e:#}"));
    eprintln!(
        "{emulator:?} {scenario}: {:.1} s wall",
        o.wall.as_secs_f64()
    );
    assert!(o.passed(), "{}\n{}", o.failure(), o.tail(60));
    o
}

fn get<'a>(o: &'a RunOutcome, path: &str) -> &'a Value {
    lookup(o.summary.as_ref().expect("summary"), path)
        .unwrap_or_else(|| panic!("no {path} in the summary:\n{}", o.tail(30)))
}

/// The RAM atoll's log says enclave `name` was built in (the first time), as [start, end).
fn ram_of(o: &RunOutcome, name: &str) -> (u64, u64) {
    let prefix = format!("enclave '{name}': ");
    let line = o
        .serial
        .lines()
        .find(|l| l.contains(&prefix) && l.contains(" MiB at ["))
        .unwrap_or_else(|| panic!("no build line for '{name}':\n{}", o.tail(40)));
    let range = line
        .split(" MiB at [")
        .nth(1)
        .and_then(|r| r.split(')').next());
    let (a, b) = range
        .and_then(|r| r.split_once(", "))
        .unwrap_or_else(|| panic!("no range in {line}"));
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap();
    (hex(a), hex(b))
}

fn lifecycle(emulator: Emulator) {
    let o = boot(emulator, "lifecycle");
    let r = |p: &str| get(&o, &format!("host.results.{p}"));
    // The pool and atoll's tables are as before the first create.
    assert_eq!(
        r("lifecycle_linux.info_start.pool_free_bytes"),
        r("lifecycle_end.info_end.pool_free_bytes"),
        "the pool is whole again"
    );
    assert_eq!(
        r("lifecycle_end.info_end.created"),
        r("lifecycle_end.info_end.destroyed")
    );
    // The Linux enclave ran on the two CPUs the host offlined for it.
    assert_eq!(r("lifecycle_linux.cpus_online_during"), "0");
    assert!(r("lifecycle_linux.create_linux.out")
        .as_str()
        .is_some_and(|s| s.contains("offlined CPU 1") && s.contains("offlined CPU 2")));
    // Its stats while listed: its cores, exits and injected interrupts counted.
    let stats = &r("lifecycle_stats.enclaves")[0];
    assert_eq!(stats["name"], "linux1");
    assert_eq!(stats["cores"], serde_json::json!([1, 2]));
    assert!(stats["exits"]["io"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(
        stats["interrupts_injected"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert!(stats["uptime_us"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(r("lifecycle_linux.prometheus_exits").as_u64().unwrap_or(0) > 0);
    // The console both ways: the line typed into `atoll console` came back from the guest.
    assert_eq!(r("lifecycle_linux.console_input_rc"), 0);
    assert!(xtask::console::enclave_lines(&o.serial, "linux1")
        .contains(&"ATOLL-GUEST-INPUT typed-through-atoll"));
    // The zero-check guest ran on memory the Linux enclave had used, and found only zeros.
    let (l0, l1) = ram_of(&o, "linux1");
    let (z0, z1) = ram_of(&o, "zero");
    assert!(
        z0 < l1 && l0 < z1,
        "zero's RAM overlaps linux1's: {z0:#x}..{z1:#x} vs {l0:#x}..{l1:#x}"
    );
    let zero = &r("lifecycle_zero.zero_list")[0];
    assert_eq!(zero["state"], "ended", "{zero}");
    assert!(
        zero["reason"]
            .as_str()
            .is_some_and(|s| s.contains("code 0")),
        "{zero}"
    );
    // Every refusal: exit code 1, the reason named, nothing changed.
    let refusals = r("lifecycle_refusals").as_object().expect("refusals");
    for (what, needle) in [
        ("bad_memory", "memory_mib"),
        ("bad_name", "name"),
        ("bad_field", "colour"),
        ("core_online", "online in the host"),
        ("core_bsp", "boot processor"),
        ("core_taken", "belongs to enclave 'zero'"),
        ("too_much_memory", "not enough memory"),
        ("device_absent", "device unavailable"),
        ("garbage", "malformed request"),
        ("unknown_kind", "unknown request"),
        ("no_such_enclave", "no enclave named 'nobody'"),
    ] {
        let v = &refusals[what];
        assert_eq!(v["rc"], 1, "{what}: {v}");
        assert_eq!(v["list_unchanged"], true, "{what}: {v}");
        assert!(
            v["out"].as_str().is_some_and(|s| s.contains(needle)),
            "{what}: the reason names '{needle}': {v}"
        );
    }
    // A function to pass through: absent where atoll has VT-d; anywhere without it, the
    // missing DMA isolation is the reason (issue 13: no assignment without VT-d unless the
    // machine allows unsafe DMA).
    let dev = refusals["device_absent"]["out"].as_str().unwrap_or("");
    let needle = match emulator {
        Emulator::Qemu => "no such function",
        Emulator::Bochs => "no DMA isolation",
    };
    assert!(
        dev.contains(needle),
        "device_absent names '{needle}': {dev}"
    );
    // The crashed guest was listed as failed with its reason until destroyed.
    let crash = &r("lifecycle_end.crash_list")[0];
    assert_eq!(crash["state"], "failed");
    assert!(
        crash["reason"]
            .as_str()
            .is_some_and(|s| s.contains("triple")),
        "{crash}"
    );
    // atoll logged every change of ownership with the enclave's name.
    for needle in [
        "enclave 'linux1': cores [1, 2] taken from the host",
        "enclave 'linux1': cores [1, 2] given back to the host",
        "enclave 'linux1' destroyed: its memory is zeroed",
    ] {
        assert!(o.serial.contains(needle), "atoll's log says '{needle}'");
    }
}

#[test]
fn lifecycle_qemu() {
    lifecycle(Emulator::Qemu);
}

#[test]
fn lifecycle_bochs() {
    lifecycle(Emulator::Bochs);
}

#[test]
fn lifecycle_soak_qemu() {
    let o = boot(Emulator::Qemu, "lifecycle-soak");
    let s = |p: &str| get(&o, &format!("host.results.soak.{p}"));
    assert_eq!(s("cycles"), 1000);
    assert_eq!(s("failed"), 0, "first failure: {}", s("first_failure"));
    assert_eq!(
        s("info_start.pool_free_bytes"),
        s("info_end.pool_free_bytes")
    );
    assert_eq!(s("info_end.enclaves"), 0);
    assert_eq!(s("info_end.staging_bytes"), 0);
    assert_eq!(s("info_end.slots_busy"), 0, "no mailbox slot left claimed");
    let created =
        s("info_end.created").as_u64().unwrap() - s("info_start.created").as_u64().unwrap();
    let destroyed =
        s("info_end.destroyed").as_u64().unwrap() - s("info_start.destroyed").as_u64().unwrap();
    assert_eq!((created, destroyed), (1000, 1000));
    assert_eq!(s("list_end"), &serde_json::json!([]));
    // Every doorbell served: no mailbox slot was left behind (the last requests got replies),
    // and nothing was refused.
    assert_eq!(
        s("info_end.requests_refused"),
        s("info_start.requests_refused")
    );
}
