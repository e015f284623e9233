//! Emulator tests of an unmodified Linux in an enclave (`linux-enclave`): the stock Debian
//! kernel on two cores beside the guest suite on a third, on both backends — SVM in QEMU, VMX
//! in Bochs — and a second kernel (Debian's cloud flavour) on QEMU, passed the way
//! `cargo xtask run --guest-kernel PATH` passes one.
//!
//! Each asserts what a user would check: the run passed, Linux powered off by itself after its
//! own check (`atoll-check`) reported `ok` and `/init` exited 0, it had its two vCPUs, atoll
//! measured its boot to init, the suite beside it passed, and the kernel printed no warning a
//! hypervisor causes on its console (`xtask::console`, the same patterns atoll-check applies
//! inside the guest).

use serde_json::Value;
use xtask::guest_image::{self, GuestKernel, KernelChoice};
use xtask::run::{run, RunOptions, RunOutcome};
use xtask::scenario::{lookup, Emulator};

fn boot(emulator: Emulator, kernel: GuestKernel) -> RunOutcome {
    let mut opts = RunOptions::new(emulator, "linux-enclave");
    opts.guest_kernel = kernel;
    let o = run(&opts).unwrap_or_else(|e| panic!("linux-enclave: {e:#}"));
    eprintln!(
        "{} linux-enclave ({}): {:.1} s wall",
        emulator.name(),
        o.guest_kernel.as_deref().unwrap_or("?"),
        o.wall.as_secs_f64()
    );
    o
}

fn get<'a>(o: &'a RunOutcome, path: &str) -> &'a Value {
    lookup(o.summary.as_ref().expect("summary"), path)
        .unwrap_or_else(|| panic!("no {path} in the summary:\n{}", o.tail(30)))
}

/// What the guest's check said went wrong, for failure messages.
fn guest_problems(o: &RunOutcome) -> String {
    let check = o
        .summary
        .as_ref()
        .and_then(|s| lookup(s, "enclaves.linux.results.guest_check"));
    match check {
        None => "no guest_check in the summary".into(),
        Some(c) => format!(
            "problems {}, kernel warnings {}",
            c["problems"], c["dmesg_warnings"]
        ),
    }
}

fn assert_linux_ran(o: &RunOutcome, cpu_virt: &str) {
    assert!(
        o.passed(),
        "{}\nguest check: {}",
        o.failure(),
        guest_problems(o)
    );
    assert_eq!(get(o, "cpu_virt"), cpu_virt);

    // Linux ran its check, reported, and powered the enclave off itself.
    assert_eq!(get(o, "enclaves.linux.end_reason"), "power_off");
    assert_eq!(
        get(o, "enclaves.linux.results.guest_check.ok"),
        true,
        "{}",
        guest_problems(o)
    );
    assert_eq!(get(o, "enclaves.linux.results.guest_exit_status"), 0);
    assert_eq!(get(o, "enclaves.linux.vcpus"), 2);
    assert_eq!(get(o, "enclaves.linux.cores"), &serde_json::json!([1, 2]));
    // What Linux saw: exactly its two CPUs, both running the pinned work, and its RAM.
    assert_eq!(get(o, "enclaves.linux.results.guest_check.cpus"), 2);
    assert_eq!(
        get(o, "enclaves.linux.results.guest_check.checks.expect_cpus"),
        true
    );
    assert_eq!(
        get(o, "enclaves.linux.results.guest_check.checks.expect_memory"),
        true
    );
    assert_eq!(
        get(o, "enclaves.linux.results.guest_check.checks.compute"),
        true
    );
    // atoll counted the guest's exits and measured its boot to init.
    let exits: u64 = get(o, "enclaves.linux.exits")
        .as_object()
        .expect("exits is a map")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert!(exits > 0, "a booting Linux exits to atoll");
    let cycles = get(o, "enclaves.linux.boot_to_init.cycles").as_u64();
    let us = get(o, "enclaves.linux.boot_to_init.us").as_u64();
    assert!(
        cycles.is_some_and(|c| c > 0) && us.is_some_and(|u| u > 0),
        "boot_to_init: {cycles:?} cycles, {us:?} us"
    );
    eprintln!(
        "{cpu_virt}: Linux reached init after {} us ({} cycles), {exits} exits in all",
        us.unwrap_or(0),
        cycles.unwrap_or(0)
    );

    // The suite beside it ran to the end on its own core.
    assert_eq!(get(o, "enclaves.suite.end_reason"), "exit");
    assert_eq!(get(o, "enclaves.suite.exit_code"), 0);
    assert_eq!(get(o, "enclaves.suite.results.suite_passed"), true);
    assert_eq!(get(o, "enclaves.suite.cores"), &serde_json::json!([0]));

    // The console: Linux's own lines came through atoll, with no hypervisor-caused warning.
    let lines = xtask::console::enclave_lines(&o.serial, "linux");
    assert!(
        lines.iter().any(|l| l.starts_with("atoll-init:")),
        "/init's first line is on the console:\n{}",
        o.tail(30)
    );
    assert!(lines.iter().any(|l| l.contains(guest_image::REPORT_PREFIX)));
    assert!(lines.contains(&"ATOLL-GUEST-EXIT status=0"));
    // The harness tolerates exactly what the guest was told to tolerate: on QEMU, the one
    // line its slow port exits cause (see the scenario's [enclave_cmdline.qemu]), on Bochs
    // nothing.
    let tolerate: Vec<String> = get(o, "enclaves.linux.results.guest_check.expect.tolerate")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let expected: &[&str] = if cpu_virt == "svm" {
        &["tsc-calibration"]
    } else {
        &[]
    };
    assert_eq!(tolerate, expected, "the scenario's tolerance list");
    let warnings = xtask::console::kernel_warnings(&o.serial, "linux", &tolerate);
    assert!(
        warnings.is_empty(),
        "kernel warnings on the Linux enclave's console ({}):\n{}",
        o.work_dir.join("serial.log").display(),
        warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn qemu_svm_linux_enclave_boots_the_stock_kernel_beside_the_suite() {
    let o = boot(Emulator::Qemu, GuestKernel::default());
    assert_linux_ran(&o, "svm");
}

#[test]
fn bochs_vmx_linux_enclave_boots_the_stock_kernel_beside_the_suite() {
    let o = boot(Emulator::Bochs, GuestKernel::default());
    assert_linux_ran(&o, "vmx");
}

#[test]
fn qemu_svm_linux_enclave_boots_a_second_kernel_the_cloud_flavour() {
    // Debian's cloud kernel (linux-image-6.1.0-N-cloud-amd64): a different configuration
    // (fewer drivers, other defaults), given as a file like `--guest-kernel PATH`.
    let cloud = guest_image::build(&KernelChoice::parse(Some("cloud")).unwrap())
        .unwrap_or_else(|e| panic!("building the cloud-kernel guest image: {e:#}"));
    assert!(cloud.package.contains("-cloud-"), "{}", cloud.package);
    let o = boot(Emulator::Qemu, GuestKernel::File(cloud.kernel.clone()));
    let used = o.guest_kernel.clone().unwrap_or_default();
    assert_eq!(
        std::path::Path::new(&used),
        std::fs::canonicalize(&cloud.kernel).unwrap(),
        "the image carried the cloud kernel"
    );
    assert_linux_ran(&o, "svm");
}

#[test]
fn qemu_svm_linux_enclave_reads_what_is_typed_on_atolls_serial_port() {
    // The enclave takes atoll's serial input (`serial_input = true`); its /init prompts and
    // reads a line from its console (atoll.echo_input=1). The harness types the line on the
    // machine's COM1 once the prompt is out: atoll reads it there and hands it to the enclave's
    // UART, whose receive interrupt wakes Linux's tty.
    let mut opts = RunOptions::new(Emulator::Qemu, "linux-enclave");
    opts.enclave_cmdline = vec![("linux".into(), "atoll.echo_input=1".into())];
    opts.serial_input = Some(("ATOLL-GUEST-INPUT?".into(), "typed-at-the-host\n".into()));
    let o = run(&opts).unwrap_or_else(|e| panic!("linux-enclave: {e:#}"));
    assert_linux_ran(&o, "svm");
    let lines = xtask::console::enclave_lines(&o.serial, "linux");
    assert!(
        lines.contains(&"ATOLL-GUEST-INPUT typed-at-the-host"),
        "the guest read the line typed on atoll's COM1:\n{}",
        o.tail(20)
    );
}

/// Linux's boot vCPU on the boot processor (run inside atoll's manager, where only its own
/// clock can stop it) idles after its check; the machine's deadline (`stop_after_ms`) stops both
/// its vCPUs where they are, its report stays, and the summary appears.
#[test]
fn qemu_svm_linux_on_the_boot_processor_is_stopped_at_the_deadline() {
    let o = run(&RunOptions::new(Emulator::Qemu, "linux-deadline"))
        .unwrap_or_else(|e| panic!("linux-deadline: {e:#}"));
    eprintln!("qemu linux-deadline: {:.1} s wall", o.wall.as_secs_f64());
    assert!(o.passed(), "{}", o.failure());
    assert_eq!(get(&o, "enclaves.linux.end_reason"), "stopped");
    let detail = get(&o, "enclaves.linux.detail").as_str().unwrap();
    assert!(detail.starts_with("stopped by atoll's manager"), "{detail}");
    assert_eq!(get(&o, "enclaves.linux.results.guest_check.ok"), true);
    assert_eq!(get(&o, "enclaves.linux.vcpus"), 2);
    assert!(
        o.serial.contains("[linux] ATOLL-IDLE begin"),
        "it was idling"
    );
    assert!(
        !o.serial.contains("[linux] ATOLL-IDLE end"),
        "stopped before its idle ended"
    );
    assert_eq!(get(&o, "problems").as_array().unwrap().len(), 0);
}
