//! Runs `atoll-check` on the machine the tests run on (a Linux host or VM): it must print one
//! well-formed report. The host's own kernel log may hold warnings, so `ok` is not required —
//! only that the exit status agrees with it.
#![cfg(target_os = "linux")]

use serde_json::Value;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_atoll-check");

fn run(args: &[&str]) -> (Value, i32) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("atoll-check runs");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line, got:\n{stdout}");
    let json = lines[0]
        .strip_prefix("ATOLL-GUEST-CHECK ")
        .unwrap_or_else(|| panic!("no prefix: {}", lines[0]));
    let v: Value = serde_json::from_str(json).expect("valid JSON");
    (v, out.status.code().expect("exited"))
}

#[test]
fn reports_this_machine() {
    let (v, code) = run(&["--iterations", "100000"]);
    let cpus = v["cpus"].as_u64().expect("cpus is a number");
    assert!(cpus >= 1);
    assert!(v["memory_kib"].as_u64().expect("memory_kib") > 0);
    assert!(["x2apic", "xapic", "none"].contains(&v["apic_mode"].as_str().unwrap()));
    assert!(v["cmdline"].is_string());
    assert!(v["dmesg_warnings"].is_array());
    let per_cpu = v["compute"]["per_cpu"].as_array().expect("per-CPU runs");
    assert_eq!(per_cpu.len() as u64, cpus);
    for r in per_cpu {
        assert!(r["cpu"].is_u64() && r["ms"].is_number());
    }
    let ok = v["ok"].as_bool().expect("ok is a bool");
    assert_eq!(code, if ok { 0 } else { 1 }, "{v}");
    assert_eq!(ok, v["problems"].as_array().unwrap().is_empty());
}

#[test]
fn an_unmet_expectation_fails() {
    let (v, code) = run(&["--iterations", "1000", "--expect-cpus", "4096"]);
    assert_eq!(v["ok"], false);
    assert_eq!(v["checks"]["expect_cpus"], false);
    assert_eq!(v["expect"]["cpus"], 4096);
    assert_eq!(code, 1);
}

#[test]
fn bad_arguments_are_refused() {
    let out = Command::new(BIN)
        .args(["--expect-cpus", "two"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a positive integer"));
}

#[test]
fn the_idle_timer_reports_its_wakeups() {
    // One second at 20 ms: about 50 wake-ups, each gap at least the period.
    let out = Command::new(BIN)
        .args(["--idle-timer", "1", "--period-ms", "20"])
        .output()
        .expect("atoll-check runs");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    // The report last; before it, only lines for gaps over five periods (a loaded machine).
    let lines: Vec<&str> = stdout.lines().collect();
    let (report, late) = lines.split_last().expect("a report line");
    assert!(
        late.iter().all(|l| l.starts_with("ATOLL-GUEST-IDLE-GAP {")),
        "{stdout}"
    );
    let json = report
        .strip_prefix("ATOLL-GUEST-IDLE ")
        .unwrap_or_else(|| panic!("no prefix: {report}"));
    let v: Value = serde_json::from_str(json).expect("valid JSON");
    let wakeups = v["wakeups"].as_u64().expect("wakeups");
    // A loaded build machine wakes late, never early or more often than the period allows.
    assert!((1..=51).contains(&wakeups), "{v}");
    assert_eq!(v["period_us"], 20_000);
    assert!(
        v["max_gap_us"].as_u64().expect("max_gap_us") >= 20_000,
        "{v}"
    );
    assert!(
        v["window_us"].as_u64().expect("window_us") >= 990_000,
        "{v}"
    );
    assert_eq!(v["backwards"], 0);
    assert!(["rdtsc", "clock_monotonic_raw"].contains(&v["source"].as_str().unwrap()));
    // Usage errors exit 2 without a report.
    let out = Command::new(BIN)
        .args(["--idle-timer", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}
