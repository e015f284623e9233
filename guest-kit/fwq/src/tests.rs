//! Real runs on this host: structure only, no timing asserted (the host is shared and noisy).

use super::*;
use clap::Parser;

fn args(argv: &[&str]) -> Args {
    Args::try_parse_from(std::iter::once("atoll-fwq").chain(argv.iter().copied())).unwrap()
}

fn first_cpu() -> usize {
    affinity::current().unwrap().cpus()[0]
}

fn config(argv: &[&str]) -> Config {
    Config::new(args(argv), &affinity::current().unwrap()).unwrap()
}

fn check_structure(report: &Report, runs: &[CpuSamples], cpus: &[usize], samples: usize) {
    assert_eq!(report.samples, samples);
    assert!(!report.calibrate_only);
    assert!(report.tsc_hz > 0 && report.iterations > 0 && report.quantum_cycles > 0);
    assert_eq!(runs.iter().map(|r| r.cpu).collect::<Vec<_>>(), cpus);
    assert_eq!(report.cpus.iter().map(|c| c.cpu).collect::<Vec<_>>(), cpus);
    for (c, run) in report.cpus.iter().zip(runs) {
        let s = &c.summary;
        assert_eq!(run.cycles.len(), samples);
        assert_eq!(s.count, samples);
        assert!(s.min > 0);
        assert!(
            s.min <= s.median && s.median <= s.p99 && s.p99 <= s.max,
            "{s:?}"
        );
        assert_eq!(s.min, *run.cycles.iter().min().unwrap());
        assert_eq!(s.max, *run.cycles.iter().max().unwrap());
        assert_eq!(s.max_detour, s.max - s.min);
        assert_eq!(s.p99_detour, s.p99 - s.min);
        assert!(s.p99_detour <= s.max_detour);
        assert!(s.mean >= s.min as f64 && s.mean <= s.max as f64);
        assert!(s.mean_detour >= 0.0 && s.max_detour_frac >= s.p99_detour_frac);
        assert!(s.p99_detour_frac >= 0.0);
        assert!(s.over_1pct <= samples);
        let over = run
            .cycles
            .iter()
            .filter(|&&x| (x - s.min) * 100 > s.min)
            .count();
        assert_eq!(s.over_1pct, over);
    }
}

#[test]
fn short_run_on_one_cpu() {
    let cpu = first_cpu();
    let c = config(&[
        "--cpus",
        &cpu.to_string(),
        "--quantum-us",
        "20",
        "--samples",
        "50",
    ]);
    let (report, runs) = run(&c).unwrap();
    check_structure(&report, &runs, &[cpu], 50);
    assert_eq!(report.tsc_source, "clock_monotonic_raw");
    assert_eq!(report.calibration_cpu, cpu);
    // The JSON line parses back with the same per-CPU count.
    let v: serde_json::Value =
        serde_json::from_str(report.json_line().strip_prefix("ATOLL-FWQ ").unwrap()).unwrap();
    assert_eq!(v["cpus"][0]["count"], 50);
}

#[test]
fn short_run_on_every_cpu() {
    let all = affinity::current().unwrap();
    let c = config(&[
        "--quantum-us",
        "10",
        "--samples",
        "20",
        "--tsc-hz",
        "1000000000",
    ]);
    assert_eq!(c.cpus, all);
    let (report, runs) = run(&c).unwrap();
    check_structure(&report, &runs, all.cpus(), 20);
    // --tsc-hz is taken as given: 10 µs at 1 GHz is 10 000 cycles.
    assert_eq!(
        (report.tsc_hz, report.tsc_source, report.quantum_cycles),
        (1_000_000_000, "argument", 10_000)
    );
}

#[test]
fn calibrate_only_takes_no_samples() {
    let c = config(&[
        "--cpus",
        &first_cpu().to_string(),
        "--calibrate",
        "--quantum-us",
        "10",
    ]);
    let (report, runs) = run(&c).unwrap();
    assert!(report.calibrate_only && report.cpus.is_empty() && runs.is_empty());
    assert_eq!(report.samples, 0);
    assert!(report.iterations >= 1);
}

#[test]
fn raw_file_and_json_through_main_with() {
    let dir = std::env::temp_dir().join(format!("atoll-fwq-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("raw.csv");
    let cpu = first_cpu().to_string();
    let p = path.to_str().unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let a = args(&[
        "--cpus",
        &cpu,
        "--quantum-us",
        "10",
        "--samples",
        "7",
        "--raw",
        p,
    ]);
    main_with(a, &mut out, &mut err).unwrap();
    // stdout: exactly the JSON line; stderr: the table (parameters, header, one row).
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.lines().count(), 1);
    let v: serde_json::Value =
        serde_json::from_str(out.trim_end().strip_prefix("ATOLL-FWQ ").unwrap()).unwrap();
    assert_eq!(v["cpus"][0]["count"], 7);
    assert_eq!(String::from_utf8(err).unwrap().lines().count(), 3);
    let csv = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[0], "cpu,index,cycles");
    for (i, line) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!((f[0], f[1].parse::<usize>().unwrap()), (cpu.as_str(), i));
        assert!(f[2].parse::<u64>().unwrap() > 0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn raw_file_that_cannot_be_created() {
    let cpu = first_cpu().to_string();
    let a = args(&[
        "--cpus",
        &cpu,
        "--quantum-us",
        "10",
        "--samples",
        "3",
        "--raw",
        "/nonexistent-dir/x.csv",
    ]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let e = main_with(a, &mut out, &mut err).unwrap_err();
    // Refused before measuring: nothing printed.
    assert!(out.is_empty() && err.is_empty());
    assert!(matches!(e, Error::Raw { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 1);
    assert!(
        e.to_string().starts_with("--raw /nonexistent-dir/x.csv: "),
        "{e}"
    );
}

#[test]
fn table_to_stdout() {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let a = args(&[
        "--cpus",
        &first_cpu().to_string(),
        "--quantum-us",
        "10",
        "--samples",
        "5",
        "--table",
    ]);
    main_with(a, &mut out, &mut err).unwrap();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("ATOLL-FWQ {"));
    assert!(lines[1].starts_with("atoll-fwq: quantum 10 µs"));
    assert!(err.is_empty());
}

fn main_err(argv: &[&str]) -> Error {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let e = main_with(args(argv), &mut out, &mut err).unwrap_err();
    // Nothing is printed before the arguments are known to be good.
    assert!(out.is_empty() && err.is_empty());
    e
}

#[test]
fn bad_arguments_through_main_with() {
    let mask = affinity::current().unwrap();
    let outside = (0..=args::MAX_CPU).find(|&c| !mask.contains(c)).unwrap();
    let e = main_err(&["--cpus", &outside.to_string()]);
    assert_eq!(e.exit_code(), 2);
    assert_eq!(
        e.to_string(),
        format!("--cpus: CPU {outside} is not in this process's affinity mask ({mask})")
    );
    let e = main_err(&["--samples", "0"]);
    assert_eq!(
        (e.exit_code(), e.to_string()),
        (2, "--samples must be 1..=10000000, got 0".into())
    );
    let e = main_err(&["--quantum-us", "0"]);
    assert_eq!(e.to_string(), "--quantum-us must be 1..=1000000, got 0");
}

fn exit_cost_run(argv: &[&str]) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    main_with(args(argv), &mut out, &mut err).unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn ordered(q: &serde_json::Value) {
    let f = |k: &str| q[k].as_f64().unwrap_or_else(|| panic!("{k} in {q}"));
    assert!(
        f("min") <= f("median") && f("median") <= f("p99") && f("p99") <= f("max"),
        "{q}"
    );
}

#[test]
fn exit_costs_short_run() {
    let cpu = first_cpu();
    let (out, err) = exit_cost_run(&["--exit-costs", "--iterations", "50", "--sleep-us", "20"]);
    // stdout: exactly the one JSON line.
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.ends_with('\n'));
    let v: serde_json::Value =
        serde_json::from_str(out.trim_end().strip_prefix("ATOLL-EXITCOST ").unwrap()).unwrap();
    assert_eq!(v["cpu"], cpu);
    assert_eq!(
        (v["iterations"].as_u64(), v["sleep_us"].as_u64()),
        (Some(50), Some(20))
    );
    assert_eq!(v["tsc_source"], "clock_monotonic_raw");
    let tsc_hz = v["tsc_hz"].as_u64().unwrap();
    assert!(tsc_hz > 0);
    for kind in ["rdtsc_pair", "cpuid"] {
        assert_eq!(v[kind]["samples"], 50, "{kind}");
        assert!(v[kind]["min"].as_u64().unwrap() > 0, "{kind}");
        ordered(&v[kind]);
    }
    assert_eq!(v["cpuid"]["leaf"], 0);
    let t = &v["timer"];
    assert_eq!(t["samples"], 50);
    assert!(t["clamped"].as_u64().unwrap() <= 50);
    assert_eq!(t["timer_slack_ns"], 1);
    assert_eq!(
        t["sleep_cycles"].as_u64(),
        Some(exitcost::sleep_cycles(20, tsc_hz))
    );
    ordered(&t["overshoot_cycles"]);
    ordered(&t["overshoot_us"]);
    // The µs are the cycles converted at tsc_hz.
    let max = t["overshoot_cycles"]["max"].as_u64().unwrap();
    assert_eq!(
        t["overshoot_us"]["max"].as_f64(),
        Some(exitcost::cycles_to_us(max, tsc_hz))
    );
    // stderr: the table (parameters, header, four rows, the clamped line).
    assert_eq!(err.lines().count(), 7, "{err}");
}

#[test]
fn exit_costs_on_a_chosen_cpu_with_a_given_tsc_frequency() {
    let cpu = affinity::current().unwrap().cpus().last().copied().unwrap();
    let (out, _) = exit_cost_run(&[
        "--exit-costs",
        "--cpu",
        &cpu.to_string(),
        "--iterations",
        "5",
        "--sleep-us",
        "10",
        "--tsc-hz",
        "1000000000",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(out.trim_end().strip_prefix("ATOLL-EXITCOST ").unwrap()).unwrap();
    assert_eq!(v["cpu"], cpu);
    assert_eq!(
        (v["tsc_hz"].as_u64(), v["tsc_source"].as_str()),
        (Some(1_000_000_000), Some("argument"))
    );
    // 10 µs at 1 GHz.
    assert_eq!(v["timer"]["sleep_cycles"], 10_000);
    assert_eq!(v["cpuid"]["samples"], 5);
}

#[test]
fn exit_costs_bad_arguments_through_main_with() {
    let mask = affinity::current().unwrap();
    let outside = (0..=args::MAX_CPU).find(|&c| !mask.contains(c)).unwrap();
    let e = main_err(&["--exit-costs", "--cpu", &outside.to_string()]);
    assert_eq!(e.exit_code(), 2);
    assert_eq!(
        e.to_string(),
        format!("--cpu: CPU {outside} is not in this process's affinity mask ({mask})")
    );
    let e = main_err(&["--exit-costs", "--iterations", "0"]);
    assert_eq!(
        (e.exit_code(), e.to_string()),
        (2, "--iterations must be 1..=10000000, got 0".into())
    );
    let e = main_err(&["--exit-costs", "--sleep-us", "1000001"]);
    assert_eq!(
        (e.exit_code(), e.to_string()),
        (
            2,
            "--sleep-us must be 1..=1000000 (1 s), got 1000001".into()
        )
    );
}
