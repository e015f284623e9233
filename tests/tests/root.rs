//! Emulator tests of the root partition: the host's Linux booted by atoll on the cores no
//! enclave owns, beside a boot-time Linux enclave (QEMU/SVM, and Bochs/VMX for `root-partition`).
//!
//! * `root-partition`: both checks pass, the host's `/dev/mem` probe of the enclave pool reads
//!   all ones and atoll counts every read, the host offlines and onlines a core, powers off after
//!   the enclave, and the machine stops.
//! * `root-host-panic`: the host panics (`panic=1`) while the enclave idles; atoll restarts it
//!   from the kernel and initrd it kept, the restarted host's check passes, and the enclave's
//!   periodic timer ran through it all without a gap beyond 100 ms of its TSC.
//!
//! * `root-serial-input`: the host alone takes atoll's serial input: a line typed on atoll's COM1
//!   reaches its `/init` through its COM1 model and comes back.
//!
//! Each scenario's own expectations must hold (`RunOutcome::passed`); the tests then assert,
//! from the summary and the console, what a user would look at.

use serde_json::{json, Value};
use xtask::run::{run, RunOptions, RunOutcome};
use xtask::scenario::{lookup, Emulator};

fn boot(scenario: &str) -> RunOutcome {
    boot_on(Emulator::Qemu, scenario)
}

fn boot_on(emulator: Emulator, scenario: &str) -> RunOutcome {
    let o =
        run(&RunOptions::new(emulator, scenario)).unwrap_or_else(|e| panic!("{scenario}: {e:#}"));
    eprintln!(
        "{emulator:?} {scenario}: {:.1} s wall",
        o.wall.as_secs_f64()
    );
    o
}

fn get<'a>(o: &'a RunOutcome, path: &str) -> &'a Value {
    lookup(o.summary.as_ref().expect("summary"), path)
        .unwrap_or_else(|| panic!("no {path} in the summary:\n{}", o.tail(30)))
}

fn u64_at(o: &RunOutcome, path: &str) -> u64 {
    get(o, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a whole number: {}", get(o, path)))
}

/// What the two checks said went wrong, for failure messages.
fn problems(o: &RunOutcome) -> String {
    let at = |p: &str| {
        o.summary
            .as_ref()
            .and_then(|s| lookup(s, p))
            .map_or("-".to_string(), ToString::to_string)
    };
    format!(
        "host check problems {}, enclave check problems {}",
        at("host.results.guest_check.problems"),
        at("enclaves.linux.results.guest_check.problems")
    )
}

/// What holds for both scenarios: the run passed its expectations, the host ran on cores 0-1
/// and powered off with its check passing, the enclave's check passed, DMA is not confined yet.
fn assert_host_beside_enclave(o: &RunOutcome) {
    assert!(o.passed(), "{}\n{}", o.failure(), problems(o));
    assert_eq!(get(o, "host.cores"), &json!([0, 1]));
    assert_eq!(get(o, "host.end_reason"), "power_off");
    assert_eq!(
        get(o, "host.results.guest_check.ok"),
        true,
        "{}",
        problems(o)
    );
    assert_eq!(get(o, "host.results.guest_check.role"), "host");
    assert_eq!(get(o, "host.results.guest_exit_status"), 0);
    assert_eq!(
        get(o, "enclaves.linux.results.guest_check.ok"),
        true,
        "{}",
        problems(o)
    );
    assert_eq!(get(o, "enclaves.linux.results.guest_exit_status"), 0);
    assert_eq!(get(o, "enclaves.linux.end_reason"), "power_off");
    assert_eq!(get(o, "enclaves.linux.cores"), &json!([2]));
    // DMA isolation exactly where the machine has a VT-d IOMMU (QEMU's intel-iommu; Bochs has
    // none), and then the host's interrupts remapped without a fault of its devices.
    assert_eq!(get(o, "dma_isolation"), get(o, "dmar"));
    if get(o, "dmar") == true {
        assert_eq!(get(o, "iommu.interrupt_remapping"), true);
        assert_eq!(get(o, "host.dma_faults"), 0);
        assert_eq!(get(o, "host.interrupt_faults"), 0);
        assert!(get(o, "iommu.host_irtes_written").as_u64().unwrap_or(0) > 0);
    }
    // The host's memory is the machine's: its own RAM 1:1 in the second stage, so its exits
    // are the few nested page faults of what atoll refuses or emulates, and port I/O (COM1,
    // the PIC, the PIT...).
    let exits = get(o, "host.exits")
        .as_object()
        .expect("host.exits is a map");
    for class in ["nested_page_fault", "io"] {
        assert!(
            exits
                .get(class)
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 0),
            "the host's exits include {class}: {exits:?}"
        );
    }
}

/// The host's `/dev/mem` probe of the enclave pool: two 4 KiB pages, each read by the kernel in
/// 8-byte accesses, all refused by atoll (read as all ones) and counted: 1024 per boot.
fn assert_pool_probe_refused(o: &RunOutcome, boots: u64) {
    let probe = get(o, "host.results.guest_check.pool_probe");
    assert_eq!(
        probe["all_ones"], true,
        "the pool read as all ones: {probe}"
    );
    assert_eq!(probe["bytes"], 8192, "two pages were read: {probe}");
    let refused = u64_at(o, "host.refused_reads");
    assert!(
        refused >= 1024 * boots,
        "atoll counted {refused} refused reads; the probe alone makes 1024 a boot ({boots} boots)"
    );
    assert_eq!(
        u64_at(o, "host.refused_writes"),
        0,
        "the host wrote nothing it does not own"
    );
}

#[test]
fn root_partition_qemu() {
    let o = boot("root-partition");
    assert_eq!(get(&o, "cpu_virt"), "svm");
    root_partition(&o);
}

/// The same machine on VMX: the host's vCPUs in host-mode VMCSs, its second stage in EPT.
#[test]
fn root_partition_bochs() {
    let o = boot_on(Emulator::Bochs, "root-partition");
    assert_eq!(get(&o, "cpu_virt"), "vmx");
    root_partition(&o);
}

#[test]
fn root_serial_input_qemu() {
    let mut opts = RunOptions::new(Emulator::Qemu, "root-serial-input");
    opts.serial_input = Some(("ATOLL-GUEST-INPUT?".into(), "typed-at-atoll\n".into()));
    let o = run(&opts).unwrap_or_else(|e| panic!("root-serial-input: {e:#}"));
    assert!(o.passed(), "{}\n{}", o.failure(), problems(&o));
    let host = xtask::console::enclave_lines(&o.serial, "host");
    assert!(
        host.contains(&"ATOLL-GUEST-INPUT typed-at-atoll"),
        "the host echoed the typed line:\n{}",
        o.tail(20)
    );
    assert_eq!(
        get(&o, "enclaves"),
        &json!([]),
        "a machine with the host alone"
    );
}

fn root_partition(o: &RunOutcome) {
    assert_host_beside_enclave(o);
    assert_eq!(u64_at(o, "host.restarts"), 0);
    assert_eq!(get(o, "host.results.guest_check.restarts"), 0);
    assert_pool_probe_refused(o, 1);
    assert_eq!(get(o, "host.results.guest_check.pool_probe.all_ones"), true);
    // The host's CPU hotplug: it offlined and onlined one of its own cores, and no action failed.
    let host = xtask::console::enclave_lines(&o.serial, "host");
    for action in ["offline:1", "online:1"] {
        assert!(
            host.contains(&format!("ATOLL-ACTION {action}").as_str()),
            "the host ran {action}:\n{}",
            o.tail(30)
        );
        assert!(
            !host.iter().any(|l| l.starts_with("ATOLL-ACTION-FAILED")),
            "an action failed:\n{}",
            host.join("\n")
        );
    }
    eprintln!(
        "root-partition: host refused reads {}, exits {}",
        get(o, "host.refused_reads"),
        get(o, "host.exits")
    );
}

#[test]
fn root_host_panic_qemu() {
    let o = boot("root-host-panic");
    assert_eq!(get(&o, "cpu_virt"), "svm");
    assert_host_beside_enclave(&o);
    // One restart, and the results are the restarted boot's: its check saw atoll.restarts=1.
    assert_eq!(u64_at(&o, "host.restarts"), 1);
    assert_eq!(get(&o, "host.results.guest_check.restarts"), 1);
    assert_pool_probe_refused(&o, 2);

    // The panic and the restart happened while the enclave idled: on atoll's one console (which
    // serializes both partitions' lines), between the enclave's window markers.
    let at = |needle: &str| {
        o.serial
            .find(needle)
            .unwrap_or_else(|| panic!("no '{needle}' on the console:\n{}", o.tail(40)))
    };
    let begin = at("[linux] ATOLL-IDLE begin");
    // The kernel's panic message (its console output can cut into /init's own "ATOLL-ACTION
    // panic" line, which is echoed just before: seen as "ATOLL-ACTION pan[ 12.76] Call Trace:").
    let panic = at("Kernel panic - not syncing");
    let restart = at("(restart 1)");
    let second_check = o.serial[restart..]
        .find("[host] ATOLL-GUEST-CHECK ")
        .map(|i| restart + i)
        .unwrap_or_else(|| panic!("the restarted host printed no check:\n{}", o.tail(40)));
    let end = at("[linux] ATOLL-IDLE end");
    // The restarted host powers off while the enclave still idles (see the machine
    // description): the machine stays up for the enclave, which finishes its window, and
    // powers off only when the enclave has ended too.
    let host_off = at("host: the host powered off");
    let enclave_off = at("enclave 'linux' ended");
    assert!(
        begin < panic
            && panic < restart
            && restart < second_check
            && second_check < host_off
            && host_off < end
            && end < enclave_off,
        "expected idle begin < host panic < restart < the restarted host's check < the host's \
         power-off < idle end < the enclave's end, got offsets {begin}, {panic}, {restart}, \
         {second_check}, {host_off}, {end}, {enclave_off}"
    );

    // The enclave's time ran on through it: its 10 ms timer never waited more than 100 ms.
    let timer = get(&o, "enclaves.linux.results.idle_timer");
    assert_eq!(timer["source"], "rdtsc", "{timer}");
    assert_eq!(timer["period_us"], 10_000, "{timer}");
    assert_eq!(timer["backwards"], 0, "{timer}");
    let gap = u64_at(&o, "enclaves.linux.results.idle_timer.max_gap_us");
    let wakeups = u64_at(&o, "enclaves.linux.results.idle_timer.wakeups");
    // A 60 s window at 10 ms: a few thousand wake-ups (fewer when each runs late), never more
    // than 6000.
    assert!(
        (1000..=6001).contains(&wakeups),
        "{wakeups} wake-ups in a 60 s window at 10 ms: {timer}"
    );
    // Gaps over five periods were also printed as they ended: each with the console line
    // before it, which places the stall among the host's lines.
    let lines: Vec<&str> = o.serial.lines().collect();
    let late: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("[linux] ATOLL-GUEST-IDLE-GAP "))
        .map(|(i, l)| format!("{l} (after: {})", lines[i.saturating_sub(1)]))
        .collect();
    assert!(
        (10_000..=100_000).contains(&gap),
        "the enclave's largest timer gap was {gap} us (at least the 10 ms period, at most \
         100 ms): {timer}\nlate gaps:\n{}",
        late.join("\n")
    );
    eprintln!("root-host-panic: enclave idle timer {timer}; late gaps: {late:?}");
}
