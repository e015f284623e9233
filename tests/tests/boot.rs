//! Emulator tests of the `boot` scenario: atoll boots from GRUB, every core comes online, and
//! each emulator reports the virtualization it really offers (Bochs: VMX with EPT, VPID and
//! unrestricted guest; QEMU: SVM with nested paging and no VMX).

use serde_json::Value;
use xtask::run::{run, RunOptions, RunOutcome};
use xtask::scenario::Emulator;

fn boot(emulator: Emulator, scenario: &str, cpus: u32, extra: &str) -> RunOutcome {
    let mut opts = RunOptions::new(emulator, scenario);
    opts.cpus = Some(cpus);
    opts.extra_cmdline = extra.into();
    let outcome = run(&opts)
        .unwrap_or_else(|e| panic!("cannot run {scenario} on {}: {e:#}", emulator.name()));
    eprintln!(
        "{} {scenario} with {cpus} CPU(s): {:.1} s wall",
        emulator.name(),
        outcome.wall.as_secs_f64()
    );
    outcome
}

fn summary(o: &RunOutcome) -> &Value {
    o.summary
        .as_ref()
        .unwrap_or_else(|| panic!("{}", o.failure()))
}

/// Every listed core is online, each reports in by its own APIC id, and the BSP is among them.
fn assert_all_cores_online(o: &RunOutcome, cpus: u32) {
    assert!(o.passed(), "{}", o.failure());
    let s = summary(o);
    assert_eq!(s["cores_total"], cpus, "{}", o.failure());
    assert_eq!(s["cores_online"], cpus, "{}", o.failure());
    let cores = s["cores"].as_array().expect("cores array");
    assert_eq!(cores.len(), cpus as usize);
    let mut ids: Vec<u64> = cores
        .iter()
        .map(|c| {
            c["caps"]["apic_id"]
                .as_u64()
                .expect("each core reports its APIC id")
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        cpus as usize,
        "every core reported from a distinct APIC id"
    );
    assert_eq!(cores.iter().filter(|c| c["bsp"] == true).count(), 1);
    assert_eq!(o.halt_status, Some(0));
    assert!(
        s["memory_usable_bytes"].as_u64().unwrap() > 200 << 20,
        "256 MiB machine reports its RAM"
    );
}

fn assert_qemu_virtualization(o: &RunOutcome) {
    let s = summary(o);
    assert_eq!(s["vmx"], false, "QEMU emulates no VMX");
    assert_eq!(s["svm"], true, "QEMU -cpu max emulates SVM");
    assert_eq!(s["npt"], true, "QEMU -cpu max emulates nested paging");
    assert_eq!(s["cpu_vendor"], "AuthenticAMD");
}

#[test]
fn qemu_one_cpu() {
    let o = boot(Emulator::Qemu, "boot", 1, "");
    assert_all_cores_online(&o, 1);
    assert_qemu_virtualization(&o);
    assert_eq!(summary(&o)["ap_bringup_us"], 0, "no AP to start");
}

#[test]
fn qemu_two_cpus() {
    let o = boot(Emulator::Qemu, "boot", 2, "");
    assert_all_cores_online(&o, 2);
    assert_qemu_virtualization(&o);
}

#[test]
fn qemu_four_cpus() {
    let o = boot(Emulator::Qemu, "boot", 4, "");
    assert_all_cores_online(&o, 4);
    assert_qemu_virtualization(&o);
    assert_eq!(summary(&o)["ecam_windows"], 1, "q35 has one ECAM window");
}

#[test]
fn qemu_silent_core_is_named_and_fails_the_run() {
    // A processor the MADT (as amended by fake_apic_ids) lists but that never answers.
    let o = boot(
        Emulator::Qemu,
        "boot",
        2,
        "fake_apic_ids=7 ap_timeout_ms=300",
    );
    assert!(
        !o.passed(),
        "the boot scenario must fail when a core is missing"
    );
    assert!(
        !o.timed_out,
        "the run must end by itself, not by the harness' timeout"
    );
    assert_eq!(o.halt_status, Some(1));
    let s = summary(&o);
    assert_eq!(s["ok"], false);
    assert_eq!(s["missing_apic_ids"], serde_json::json!([7]));
    assert_eq!(s["cores_online"], 2);
    assert!(
        o.serial
            .contains("core apic_id=7 did not come online within 300 ms"),
        "{}",
        o.tail(20)
    );
    assert!(o
        .failure()
        .contains("core with APIC id 7 did not come online"));
    // The dedicated scenario expects exactly that failure, so as a scenario it passes.
    let o = boot(Emulator::Qemu, "missing-core", 2, "");
    assert!(o.passed(), "{}", o.failure());
}

#[test]
fn qemu_bad_boot_option_is_named() {
    let o = boot(Emulator::Qemu, "boot", 1, "frobnicate=1");
    let s = summary(&o);
    assert_eq!(s["ok"], false);
    let problems = s["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p
            .as_str()
            .unwrap()
            .contains("boot option 'frobnicate=1': unknown option")),
        "{problems:?}"
    );
    assert_eq!(s["cores_online"], 1, "a bad option changes nothing else");
}

#[test]
fn bochs_two_cpus_have_vmx_ept_vpid_unrestricted_guest() {
    let o = boot(Emulator::Bochs, "boot", 2, "");
    assert_all_cores_online(&o, 2);
    let s = summary(&o);
    for field in ["vmx", "ept", "vpid", "unrestricted_guest"] {
        assert_eq!(s[field], true, "Bochs corei7_skylake_x offers {field}");
        for core in s["cores"].as_array().unwrap() {
            assert_eq!(
                core["caps"][field], true,
                "core {} lacks {field}",
                core["apic_id"]
            );
        }
    }
    assert_eq!(s["svm"], false);
    assert_eq!(s["cpu_vendor"], "GenuineIntel");
}

#[test]
fn qemu_with_vtd_finds_the_dmar() {
    let o = boot(Emulator::Qemu, "boot-vtd", 2, "");
    assert!(o.passed(), "{}", o.failure());
    let s = summary(&o);
    assert_eq!(s["dmar"], true);
    assert_eq!(s["dmar_units"], 1);
    // Without the IOMMU device there is no DMAR.
    let plain = boot(Emulator::Qemu, "boot", 1, "");
    assert_eq!(summary(&plain)["dmar"], false);
}

#[test]
fn qemu_ram_above_4_gib_is_mapped() {
    let mut opts = RunOptions::new(Emulator::Qemu, "boot");
    opts.cpus = Some(2);
    opts.memory_mib = Some(6144);
    let o = run(&opts).unwrap();
    assert!(o.passed(), "{}", o.failure());
    let usable = summary(&o)["memory_usable_bytes"].as_u64().unwrap();
    assert!(
        usable > (6 << 30) - (64 << 20),
        "6 GiB machine reports {usable} bytes"
    );
    // atoll writes and reads back the highest free frame, which lies above 4 GiB here.
    let line = o
        .serial
        .lines()
        .find(|l| l.contains("reads back"))
        .unwrap_or_else(|| panic!("{}", o.tail(20)));
    let addr = line
        .split("top frame at ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap();
    assert!(addr > 4 << 30, "{line}");
}

#[test]
fn hard_timeout_kills_the_emulator_and_shows_the_last_lines() {
    // Bochs needs far more than 3 s to reach atoll's summary.
    let mut opts = RunOptions::new(Emulator::Bochs, "boot");
    opts.timeout_s = Some(3);
    let o = run(&opts).unwrap();
    assert!(o.timed_out && !o.passed());
    assert!(
        o.wall.as_secs() < 10,
        "the harness stops at its deadline, took {:?}",
        o.wall
    );
    let report = o.failure();
    assert!(report.contains("timed out after 3 s"), "{report}");
    assert!(report.contains("last lines of COM1"), "{report}");
    // Nothing of that run is left running.
    let conf = o.work_dir.join("bochsrc");
    let left = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(conf.to_str().unwrap())
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "emulator still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn qemu_without_svm_or_vmx_reports_it_and_runs_no_enclave() {
    // The scenario asserts the exact problems; here: the run ends by itself with status 1.
    let o = boot(Emulator::Qemu, "no-virt", 2, "");
    assert!(o.passed(), "{}", o.failure());
    assert_eq!(o.halt_status, Some(1));
    let s = summary(&o);
    assert_eq!(
        (s["vmx"].as_bool(), s["svm"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(s["cpu_virt"], "none");
    assert!(s["enclaves"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["end_reason"] == "failed"));
}
