//! Emulator test of the root partition's measured windows (`bench-host`, QEMU/SVM): the host's
//! Linux alone on both cores idles 2 s and runs the guest image's build-like load for 2 s
//! (`atoll.actions=idle:2,load:2,poweroff`); atoll counts its exits by kind in each window
//! (`host.idle`, `host.load`), which is what `cargo xtask bench idle --partition host` reports
//! with longer windows.

use serde_json::Value;
use xtask::bench_host::{load_steps, Window};
use xtask::run::{run, RunOptions};
use xtask::scenario::{lookup, Emulator};

#[test]
fn qemu_svm_the_hosts_idle_and_load_windows_are_measured() {
    let o = run(&RunOptions::new(Emulator::Qemu, "bench-host"))
        .unwrap_or_else(|e| panic!("bench-host: {e:#}"));
    eprintln!("qemu bench-host: {:.1} s wall", o.wall.as_secs_f64());
    // The scenario's expectations: the check passed, both windows at least 1 s of TSC.
    assert!(o.passed(), "{}", o.failure());
    let summary = o.summary.as_ref().unwrap();
    let window = |name: &str| -> Window {
        let v: &Value = lookup(summary, &format!("host.{name}"))
            .unwrap_or_else(|| panic!("no host.{name}:\n{}", o.tail(30)));
        Window::parse(v, name).unwrap()
    };
    let (idle, load) = (window("idle"), window("load"));
    // The load ran on both CPUs, every step's gunzip gave back what gzip was given, and the
    // windows came in the order the actions ran.
    let (steps, cpus, failed) = load_steps(&o.serial).unwrap_or_else(|| panic!("{}", o.tail(30)));
    assert_eq!((cpus, failed), (2, 0), "{}", o.tail(30));
    assert!(steps >= 2, "{steps} build steps");
    assert!(!o.serial.contains("ATOLL-ACTION-FAILED"), "{}", o.tail(30));
    let at = |line: &str| o.serial.find(line).unwrap_or_else(|| panic!("no {line:?}"));
    assert!(at("[host] ATOLL-IDLE end") < at("[host] ATOLL-LOAD begin"));
    // Every process the load starts costs the host CPUID exits (its C library probes the CPU),
    // and a sleeping host exits far less than a busy one.
    assert!(load.count("cpuid") > 0, "{load:?}");
    assert!(load.total() > idle.total(), "idle {idle:?}, load {load:?}");
    assert!(idle.ipis_sent.is_some() && load.ipis_sent.is_some());
}
