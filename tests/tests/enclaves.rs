//! Emulator tests of enclaves on both backends — VMX in Bochs, SVM in QEMU — with the same
//! assertions: two enclaves side by side on two cores, the guest suite's results, and
//! containment: an enclave that reads past its RAM or triple-faults is stopped and reported while
//! the other one runs its suite to the end; reclaim: an enclave's core and RAM go back when it
//! ends and the next one, started on them in the same boot, finds the RAM zeroed.

use serde_json::Value;
use xtask::run::{run, RunOptions, RunOutcome};
use xtask::scenario::{lookup, Emulator};

fn boot(emulator: Emulator, scenario: &str) -> RunOutcome {
    let o =
        run(&RunOptions::new(emulator, scenario)).unwrap_or_else(|e| panic!("{scenario}: {e:#}"));
    eprintln!(
        "{} {scenario}: {:.1} s wall",
        emulator.name(),
        o.wall.as_secs_f64()
    );
    assert!(o.passed(), "{}", o.failure());
    o
}

fn get<'a>(o: &'a RunOutcome, path: &str) -> &'a Value {
    lookup(o.summary.as_ref().expect("summary"), path)
        .unwrap_or_else(|| panic!("no {path} in the summary:\n{}", o.tail(30)))
}

/// The 64-bit suite's own checks, as reported through the REPORT hypercall.
fn assert_suite_passed(o: &RunOutcome, name: &str) {
    for check in [
        "suite_passed",
        "console_hypercall",
        "abi_version_ok",
        "unknown_hypercall_refused",
        "bad_buffer_refused",
        "cpuid_vmx_hidden",
        "cpuid_hypervisor_bit",
        "cpuid_signature_ok",
        "msr_allowed_ok",
        "msr_denied_gp",
        "msr_passthrough_ok",
    ] {
        assert_eq!(
            get(o, &format!("enclaves.{name}.results.{check}")),
            &Value::Bool(true),
            "{name}: {check}"
        );
    }
    let ram = get(o, &format!("enclaves.{name}.results.ram_bytes"))
        .as_u64()
        .unwrap();
    assert_eq!(
        get(o, &format!("enclaves.{name}.results.pages_checked")).as_u64(),
        Some(ram / 4096),
        "every page of RAM"
    );
    assert_eq!(
        get(o, &format!("enclaves.{name}.results.bad_pages")).as_u64(),
        Some(0)
    );
    assert_eq!(
        get(o, &format!("enclaves.{name}.results.denied_port_value")).as_u64(),
        Some(0xff)
    );
    // What atoll counted agrees with what the guest did.
    assert_eq!(
        get(o, &format!("enclaves.{name}.msr_denied")).as_u64(),
        Some(2),
        "RDMSR and WRMSR of 0x3a"
    );
    assert!(
        get(o, &format!("enclaves.{name}.exits.cpuid"))
            .as_u64()
            .unwrap()
            >= 200,
        "the cost probe's CPUIDs exit"
    );
    assert!(
        get(o, &format!("enclaves.{name}.exits.hypercall"))
            .as_u64()
            .unwrap()
            >= 200
    );
}

fn guest_suite(emulator: Emulator, cpu_virt: &str) {
    let o = boot(emulator, "guest-suite");
    assert_eq!(get(&o, "cpu_virt"), cpu_virt);
    assert_suite_passed(&o, "alpha");
    assert_eq!(get(&o, "enclaves.alpha.exit_code"), 0);
    assert_eq!(get(&o, "enclaves.alpha.cores"), &serde_json::json!([0]));
    assert_eq!(get(&o, "enclaves.beta.cores"), &serde_json::json!([1]));
    // The real-mode guest ran (unrestricted guest on VMX) and printed through COM1 with its prefix.
    assert_eq!(get(&o, "enclaves.beta.results.real_mode_passed"), true);
    assert!(o
        .serial
        .contains("[beta] guest-real16: hello from real mode"));
    assert!(o
        .serial
        .contains("[alpha] guest-suite: hello through the console hypercall"));
    // The exit-cost probe (in Bochs, cycles are instructions; in QEMU, host time).
    let cpuid = get(&o, "enclaves.alpha.results.cpuid_cycles")
        .as_u64()
        .unwrap();
    let hcall = get(&o, "enclaves.alpha.results.hypercall_cycles")
        .as_u64()
        .unwrap();
    eprintln!(
        "exit costs on {cpu_virt}: CPUID {cpuid} cycles, hypercall round trip {hcall} cycles"
    );
    assert!(
        cpuid > 50 && hcall > 50,
        "an exit costs more than a plain instruction"
    );
}

#[test]
fn bochs_vmx_two_enclaves_run_the_guest_suite_side_by_side() {
    guest_suite(Emulator::Bochs, "vmx");
}

#[test]
fn qemu_svm_two_enclaves_run_the_guest_suite_side_by_side() {
    guest_suite(Emulator::Qemu, "svm");
}

/// `victim` ended by `reason` strictly before `survivor` finished its suite.
fn assert_contained(o: &RunOutcome, victim: &str, reason: &str, survivor: &str) {
    assert_eq!(get(o, &format!("enclaves.{victim}.end_reason")), reason);
    assert_eq!(get(o, &format!("enclaves.{survivor}.end_reason")), "exit");
    assert_eq!(get(o, &format!("enclaves.{survivor}.exit_code")), 0);
    assert_suite_passed(o, survivor);
    let v = get(o, &format!("enclaves.{victim}.ended_at_us"))
        .as_u64()
        .unwrap();
    let s = get(o, &format!("enclaves.{survivor}.ended_at_us"))
        .as_u64()
        .unwrap();
    assert!(
        v < s,
        "{victim} (ended at {v} us) must be stopped while {survivor} still runs (ended at {s} us)"
    );
    assert_eq!(get(o, "ok"), true, "a guest's crash is not atoll's failure");
}

fn reading_past_ram(emulator: Emulator) {
    let o = boot(emulator, "containment-ept");
    assert_contained(&o, "beta", "ept_violation", "alpha");
    // Exactly the byte past beta's 8 MiB, a read, from guest code.
    assert_eq!(
        get(&o, "enclaves.beta.violation.gpa").as_u64(),
        Some(8 << 20)
    );
    assert_eq!(get(&o, "enclaves.beta.violation.access"), "read");
    let rip = get(&o, "enclaves.beta.violation.rip").as_u64().unwrap();
    assert!(
        (0x10_0000..0x20_0000).contains(&rip),
        "RIP {rip:#x} lies in the guest image"
    );
    assert!(get(&o, "enclaves.beta.detail")
        .as_str()
        .unwrap()
        .contains("guest-physical 0x800000"));
    // It got that far: its own suite passed first.
    assert_suite_passed(&o, "beta");
}

#[test]
fn bochs_vmx_reading_past_ram_stops_only_that_enclave() {
    reading_past_ram(Emulator::Bochs);
}

#[test]
fn qemu_svm_reading_past_ram_stops_only_that_enclave() {
    reading_past_ram(Emulator::Qemu);
}

fn triple_fault(emulator: Emulator) {
    let o = boot(emulator, "containment-triple-fault");
    assert_contained(&o, "beta", "triple_fault", "alpha");
    assert_suite_passed(&o, "beta");
}

#[test]
fn bochs_vmx_a_triple_fault_stops_only_that_enclave() {
    triple_fault(Emulator::Bochs);
}

#[test]
fn qemu_svm_a_triple_fault_stops_only_that_enclave() {
    triple_fault(Emulator::Qemu);
}

#[test]
fn qemu_svm_acpi_power_off_and_reset_end_enclaves_cleanly() {
    let o = boot(Emulator::Qemu, "acpi-power");
    assert_eq!(get(&o, "enclaves.alpha.end_reason"), "power_off");
    assert_eq!(get(&o, "enclaves.beta.end_reason"), "reset");
    // The ports are the platform's, not unemulated ones.
    assert_eq!(
        get(&o, "enclaves.alpha.io_denied"),
        1,
        "only the suite's own denied-port probe"
    );
    assert!(o
        .serial
        .contains("[alpha] guest-suite: powering off through the ACPI sleep control register"));
}

/// A fault-injection image: atoll faults on purpose while handling five enclaves' hypercalls
/// (#UD on the BSP's own core, a panic, a page fault, a failed allocation, a stack overflow into
/// the guard page, which double-faults onto the IST stack). Each ends alone as
/// `failed` with the fault and where it happened, keeps what it reported before, and the victim
/// beside them passes its suite; the summary appears.
fn atoll_faults_end_only_their_enclave(emulator: Emulator) {
    let o = boot(emulator, "fault-injection");
    assert_suite_passed(&o, "victim");
    for (name, what) in [
        ("bsp-ud", "#UD invalid opcode (vector 6)"),
        ("panic", "panic at hypervisor/src/run/fault_injection.rs"),
        ("page-fault", "#PF page fault (vector 14)"),
        (
            "allocation",
            "memory allocation of 1099511627776 bytes failed",
        ),
    ] {
        assert_eq!(get(&o, &format!("enclaves.{name}.end_reason")), "failed");
        let detail = get(&o, &format!("enclaves.{name}.detail"))
            .as_str()
            .unwrap();
        assert!(
            detail.starts_with("atoll fault while handling this enclave: ")
                && detail.contains(what),
            "{name}: {detail}"
        );
        assert_eq!(
            get(&o, &format!("enclaves.{name}.results.suite_passed")),
            &Value::Bool(true),
            "{name}: what it reported before the fault is kept"
        );
        let problems = get(&o, "problems").as_array().unwrap();
        assert!(
            problems.iter().any(|p| p
                .as_str()
                .unwrap()
                .starts_with(&format!("enclave '{name}' failed: "))),
            "{name} is a problem of the run: {problems:?}"
        );
    }
    assert_eq!(get(&o, "problems").as_array().unwrap().len(), 5);
}

#[test]
fn bochs_vmx_atoll_faults_end_only_their_enclave() {
    atoll_faults_end_only_their_enclave(Emulator::Bochs);
}

#[test]
fn qemu_svm_atoll_faults_end_only_their_enclave() {
    atoll_faults_end_only_their_enclave(Emulator::Qemu);
}

/// `a` dirties its RAM and ends; its core and RAM are reclaimed; `b` runs on the same core in
/// the same RAM and finds every byte outside its image zero.
fn reclaim(emulator: Emulator) {
    let o = boot(emulator, "reclaim");
    for name in ["a", "b"] {
        assert_eq!(get(&o, &format!("enclaves.{name}.state")), "ended");
        assert_eq!(get(&o, &format!("enclaves.{name}.end_reason")), "exit");
        assert_eq!(get(&o, &format!("enclaves.{name}.exit_code")), 0);
        assert_eq!(get(&o, &format!("enclaves.{name}.reclaimed")), true);
        assert_eq!(
            get(&o, &format!("enclaves.{name}.cores")),
            &serde_json::json!([1])
        );
        assert_suite_passed(&o, name);
    }
    // The same host-physical RAM, and atoll knows it reused a's.
    let base = |n: &str| get(&o, &format!("enclaves.{n}.ram_base")).as_u64().unwrap();
    assert_eq!(base("a"), base("b"), "b got a's RAM");
    assert_eq!(
        get(&o, "enclaves.b.ram_reused_from"),
        &serde_json::json!(["a"])
    );
    assert!(
        lookup(o.summary.as_ref().unwrap(), "enclaves.a.ram_reused_from").is_none(),
        "a was built from RAM nobody had used"
    );
    // a dirtied exactly what b checked: all of its RAM but the loader area, the image and the
    // stack reserve.
    let ram = get(&o, "enclaves.b.results.ram_bytes").as_u64().unwrap();
    let image_end = get(&o, "enclaves.b.results.image_end").as_u64().unwrap();
    let checked = get(&o, "enclaves.b.results.bytes_checked")
        .as_u64()
        .unwrap();
    assert_eq!(
        checked + 0x8000 + (image_end - 0x10_0000) + (64 << 10),
        ram,
        "every byte outside the image, the loader area and the stack"
    );
    assert_eq!(
        get(&o, "enclaves.a.results.bytes_dirtied").as_u64(),
        Some(checked)
    );
    assert_eq!(
        get(&o, "enclaves.b.results.nonzero_bytes").as_u64(),
        Some(0)
    );
    assert_eq!(
        get(&o, "enclaves.b.results.first_nonzero_gpa").as_i64(),
        Some(-1)
    );
    assert_eq!(get(&o, "enclaves.b.results.stack_within_reserve"), true);
    // One after the other: a's end, then b's whole run.
    let a_end = get(&o, "enclaves.a.ended_at_us").as_u64().unwrap();
    let b_end = get(&o, "enclaves.b.ended_at_us").as_u64().unwrap();
    assert!(a_end < b_end, "a ended at {a_end} us, b at {b_end} us");
    let dirtied = o
        .serial
        .find("[a] guest-suite: wrote 0xa5 over")
        .expect("a dirtied its RAM");
    let b_hello = o
        .serial
        .find("[b] guest-suite: hello through COM1")
        .expect("b ran");
    assert!(dirtied < b_hello, "b started after a ended");
    // Core 1's mailbox: two starts, two reclaims, nothing refused.
    let core1 = get(&o, "cores.1.mailbox");
    assert_eq!(core1["starts"], 2, "{core1}");
    assert_eq!(core1["reclaims"], 2, "{core1}");
    assert_eq!(core1["refused"], 0, "{core1}");
    assert_eq!(get(&o, "ok"), true);
}

#[test]
fn bochs_vmx_an_ended_enclaves_core_and_zeroed_ram_run_the_next() {
    reclaim(Emulator::Bochs);
}

#[test]
fn qemu_svm_an_ended_enclaves_core_and_zeroed_ram_run_the_next() {
    reclaim(Emulator::Qemu);
}

/// The adversarial guest's non-terminal probe groups (guest-kit/src/bin/guest-adversary.rs).
const ADVERSARY_GROUPS: [&str; 16] = [
    "cpuid", "msr", "apic", "ports", "cr", "cr8", "xcr0", "debug", "ring3", "misc", "wbinvd",
    "hcall", "json", "flood", "mem-edge", "tsc",
];

/// The adversary beside the guest suite: the machine stays up, the victim passes, every probe
/// group ran and reported, atoll's answers to the probes that do not depend on the emulator are
/// the architectural ones, and the last probe (a write straddling the end of its RAM) stops it.
fn adversary(emulator: Emulator) {
    let o = boot(emulator, "adversary");
    assert_eq!(get(&o, "ok"), true, "the machine survived");
    assert_eq!(get(&o, "enclaves.victim.end_reason"), "exit");
    assert_eq!(get(&o, "enclaves.victim.exit_code"), 0);
    assert_suite_passed(&o, "victim");
    let r = |path: &str| get(&o, &format!("enclaves.adversary.results.{path}")).clone();
    assert_eq!(r("adversary_done"), true);
    let ran: Vec<String> = r("groups_ran")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ran, ADVERSARY_GROUPS, "every non-terminal group ran");
    // CPUID: the filter holds over every probed leaf.
    for (k, v) in [
        ("vmx", false),
        ("svm", false),
        ("smx", false),
        ("hv_bit", true),
    ] {
        assert_eq!(r(&format!("g_cpuid.{k}")), v, "cpuid {k}");
    }
    // MSRs: nothing readable beyond atoll's list except what the emulator's own pass-through
    // MSRs do (QEMU reads the write-only PRED_CMD and FLUSH_CMD as 0).
    let unexpected: Vec<Value> = r("g_msr.unexpected_readable")
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| !matches!(v.as_str(), Some("0x49" | "0x10b")))
        .cloned()
        .collect();
    assert!(
        unexpected.is_empty(),
        "MSRs readable beyond the list: {unexpected:?}"
    );
    assert!(
        r("g_msr.read.GP").as_u64().unwrap() > 25_000,
        "the MSR sweep ran"
    );
    // No APIC for a bare-metal enclave: every ICR write is #GP.
    assert_eq!(r("g_apic.icr_writes"), serde_json::json!({"GP": 257 * 9}));
    // Ports: only COM1 and the ACPI PM registers answer; everything else is #GP (policy
    // `fault`), writes included.
    assert_eq!(r("g_ports.ports"), 65536, "every port");
    assert_eq!(r("g_ports.unexpected"), 0, "{}", r("g_ports.odd"));
    assert_eq!(
        r("g_ports.readable8"),
        serde_json::json!([
            "0x3f8", "0x3f9", "0x3fa", "0x3fb", "0x3fc", "0x3fd", "0x3fe", "0x3ff", "0x600",
            "0x601", "0x604"
        ])
    );
    // Control registers and XCR0: invalid values are #GP and change nothing.
    assert_eq!(r("g_cr.unexpected"), 0, "{}", r("g_cr.odd"));
    assert_eq!(r("g_cr.cr4_changed_bits"), serde_json::json!([]));
    assert_eq!(r("g_xcr0.unexpected"), 0, "{}", r("g_xcr0.odd"));
    assert_eq!(
        r("g_cr8.readback"),
        serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
    );
    // Hypercalls: bad numbers, pointers, lengths and JSON get their status codes.
    assert_eq!(r("g_hcall.unexpected"), 0, "{}", r("g_hcall.odd"));
    assert_eq!(r("g_json.unexpected"), 0, "{}", r("g_json.odd"));
    assert_eq!(r("g_flood.unexpected"), 0, "{}", r("g_flood.odd"));
    assert_eq!(r("g_mem_edge.read_write_ok"), true);
    // Ring 3: the hypercall is #UD there, privileged instructions #GP.
    for (k, v) in [
        ("hypercall", "UD"),
        ("rdmsr", "GP"),
        ("in_com1", "GP"),
        ("hlt", "GP"),
    ] {
        assert_eq!(r(&format!("g_ring3.{k}")), v, "ring 3 {k}");
    }
    // The end: stopped at the first byte past its 16 MiB, a write.
    assert_eq!(get(&o, "enclaves.adversary.end_reason"), "ept_violation");
    assert_eq!(r("last_probe"), "past-ram");
    assert_eq!(
        get(&o, "enclaves.adversary.violation.gpa").as_u64(),
        Some(16 << 20)
    );
    assert_eq!(get(&o, "enclaves.adversary.violation.access"), "write");
}

#[test]
fn qemu_svm_the_adversary_leaves_the_machine_and_its_neighbour_running() {
    adversary(Emulator::Qemu);
}

#[test]
fn bochs_vmx_the_adversary_leaves_the_machine_and_its_neighbour_running() {
    adversary(Emulator::Bochs);
}

/// Two enclaves spin forever with interrupts masked, one on the boot processor (which runs its
/// vCPU inside the manager: its APIC timer and stop check end it) on CPUID, which VMX answers on
/// its fast path without going back to the run loop, and one on an application processor
/// without an exit (the manager's Stop, with its kick): at the machine's deadline both are
/// stopped where they spin, keep what they reported, and the victim's suite has passed.
fn spinners_are_stopped_at_the_deadline(emulator: Emulator) {
    let o = boot(emulator, "spin");
    assert_suite_passed(&o, "victim");
    // The boot processor's spinner did spin on CPUID, and each one was counted (those the fast
    // path answered too).
    let spun = get(&o, "enclaves.spin-bsp.exits.cpuid").as_u64().unwrap();
    assert!(spun > 10_000, "spin-bsp's CPUIDs: {spun}");
    for name in ["spin-bsp", "spin-ap"] {
        assert_eq!(get(&o, &format!("enclaves.{name}.end_reason")), "stopped");
        let detail = get(&o, &format!("enclaves.{name}.detail"))
            .as_str()
            .unwrap();
        assert!(
            detail.starts_with("stopped by atoll's manager at RIP 0x"),
            "{name}: {detail}"
        );
        assert_eq!(
            get(&o, &format!("enclaves.{name}.results.suite_passed")),
            &Value::Bool(true)
        );
        assert_eq!(get(&o, &format!("enclaves.{name}.reclaimed")), true);
    }
    assert!(o
        .serial
        .contains("the machine's deadline passed: stopping every enclave still running"));
    assert_eq!(get(&o, "problems").as_array().unwrap().len(), 0);
}

#[test]
fn bochs_vmx_spinning_enclaves_are_stopped_at_the_deadline() {
    spinners_are_stopped_at_the_deadline(Emulator::Bochs);
}

#[test]
fn qemu_svm_spinning_enclaves_are_stopped_at_the_deadline() {
    spinners_are_stopped_at_the_deadline(Emulator::Qemu);
}

/// The adversary floods REPORT (a new 4 KiB key 256 times, one key 256 times), the console
/// (256 × 4 KiB) and VERSION (100 000 calls) beside the victim: the machine stays up, the
/// victim passes, every console write is answered, and what atoll could not keep is refused
/// and counted, not stored.
#[test]
fn qemu_svm_floods_stay_within_the_enclaves_budgets() {
    let o = boot(Emulator::Qemu, "flood");
    assert_suite_passed(&o, "victim");
    let a = |path: &str| get(&o, &format!("enclaves.adversary.{path}")).clone();
    assert_eq!(a("results.g_flood.count"), 256);
    assert_eq!(a("results.g_flood.console_refused"), 0);
    assert_eq!(
        a("results.g_flood.unexpected"),
        0,
        "{}",
        a("results.g_flood.odd")
    );
    let refused = a("results.g_flood.report_refused").as_u64().unwrap();
    assert!(
        refused > 0 && refused < 512,
        "some REPORTs refused past the budget: {refused}"
    );
    assert!(
        a("report_bytes_dropped").as_u64().unwrap() >= refused * 4000,
        "the refused REPORTs are counted"
    );
    assert_eq!(a("end_reason"), "exit");
}
