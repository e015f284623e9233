//! Emulator test of an enclave's virtio devices served from the host (issue 14): `virtio` on
//! QEMU/SVM with VT-d, and once on Bochs/VMX (no VT-d: atoll cannot raise the channel's INTx
//! there, so the daemon says it polls).
//!
//! The scenario's expectations say the enclave's console is hvc0 and the host read its result
//! and typed into it through `atoll console`, its 100 pings came back, the file it sent arrived
//! intact, it mounted the disk and unmounted it again. This test ties the pieces together as a
//! user would check them: the TCP stream's checksum is the same on both ends; the file the host
//! put on the image before the enclave existed reads the same in the enclave, and so does the
//! one the image was built with; the file the enclave wrote reads the same in the host after
//! destroy; the disk has the image's size; the tap carried the traffic; the daemon is gone
//! after destroy; notifications toward the host were interrupts the host's kernel counted; and
//! atoll's log names the channel.

use serde_json::Value;
use xtask::run::{run, RunOptions};
use xtask::scenario::{lookup, Emulator};

#[test]
fn virtio_qemu() {
    virtio(Emulator::Qemu);
}

#[test]
fn virtio_bochs() {
    virtio(Emulator::Bochs);
}

fn virtio(emulator: Emulator) {
    let o = run(&RunOptions::new(emulator, "virtio")).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("virtio: {:.1} s wall", o.wall.as_secs_f64());
    assert!(o.passed(), "{}\n{}", o.failure(), o.tail(60));
    let s = o.summary.as_ref().expect("summary");
    let get = |p: &str| -> &Value {
        lookup(s, p).unwrap_or_else(|| panic!("no {p} in the summary:\n{}", o.tail(30)))
    };
    let host = get("host.results.virtio_host");
    let e = get("host.results.virtio_host_enclave");
    // The console: hvc0 is one of the enclave's kernel consoles.
    let consoles = e["consoles"].as_str().unwrap_or("");
    assert!(
        consoles.split(' ').any(|c| c == "hvc0"),
        "consoles: {consoles}"
    );
    // The network: the sender's checksum is the receiver's, all 4 MiB of it.
    assert_eq!(e["tcp_sha256"], host["recv"]["sha256"], "{e}\n{host}");
    assert_eq!(e["tcp_bytes"], 4_194_304);
    assert!(e["iface"].as_str().is_some_and(|i| !i.is_empty()), "{e}");
    // The disk: 8 MiB of sectors; both files the host put there read the same in the enclave
    // (hello.txt from the image's build, host.bin written just before create).
    assert_eq!(e["disk_sectors"], 8 * 2048, "{e}");
    assert_eq!(
        e["hello"],
        xtask::guest_image::DISK_FILE.1.trim_end(),
        "the image's file as the enclave read it"
    );
    let host_sha = host["host_sha256"].as_str().unwrap_or("");
    assert_eq!(host_sha.len(), 64, "{host}");
    assert_eq!(e["host_sha256"], host_sha, "host.bin in the enclave");
    // The enclave's file, read back in the host after destroy.
    let enclave_sha = e["enclave_sha256"].as_str().unwrap_or("");
    assert_eq!(enclave_sha.len(), 64, "{e}");
    assert_eq!(
        host["enclave_file_sha256"], enclave_sha,
        "enclave.bin in the host"
    );
    assert_ne!(enclave_sha, host_sha);
    // The tap saw the traffic: at least the pings both ways.
    let tap = &host["tap_stats"];
    for k in ["rx_tap", "tx_tap"] {
        assert!(tap[k].as_u64().unwrap_or(0) >= 200, "{k}: {tap}");
    }
    // atoll-channeld exited with the enclave (its pid file removed).
    assert_eq!(host["channeld_after_destroy"], "", "{host}");
    let create = host["create"]["out"].as_str().unwrap_or("");
    if emulator == Emulator::Qemu {
        // Notifications toward the host came as INTx through uio_pci_generic (no polling):
        // the host's kernel counted its interrupts.
        assert_eq!(host["notify"], "interrupt");
        let irqs = host["host_interrupts"].as_str().unwrap_or("");
        let uio: u64 = irqs
            .split("uio_pci_generic")
            .next()
            .and_then(|l| l.split(':').nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(uio >= 10, "uio interrupts: {irqs}");
    } else {
        // Without interrupt remapping atoll cannot raise the channel's INTx, says so, and the
        // daemon says it polls.
        assert!(
            create.contains("cannot raise GSI") && create.contains("POLLED"),
            "channeld's fallback: {create}"
        );
    }
    // The console has its pty too (the host's /init mounts devpts).
    assert!(
        create.contains("and pty /dev/pts/"),
        "channeld's console: {create}"
    );
    // atoll's log names the channel it gave the enclave.
    assert!(
        o.serial.contains("enclave 'virtio1': channel ") && o.serial.contains("(3 virtio devices)"),
        "atoll's log names the channel"
    );
}
