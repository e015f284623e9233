//! Emulator test of passing an SR-IOV NIC's virtual function through to an enclave (issue 13):
//! `vf-passthrough` (QEMU/SVM with VT-d and `igb` behind a PCIe root port).
//!
//! The scenario's expectations say both enclaves pinged the host 100 times and back, their
//! files arrived intact, the VF read as absent in the host while an enclave owned it and came
//! back after each destroy, and the held-back enclave's faults were counted. This test then
//! ties the pieces together: the enclave's igbvf got the MAC `atoll vf` gave the VF; the file's
//! checksum is the same on both ends; the VF's interrupts reached the enclave through atoll
//! (device interrupts counted); every VT-d fault came from the VF while the held-back enclave
//! owned it, at the page it pointed the ring at (atoll's pool canary), and nothing else faulted.

use serde_json::Value;
use xtask::run::{run, RunOptions};
use xtask::scenario::{lookup, Emulator};

#[test]
fn vf_passthrough_qemu() {
    let o =
        run(&RunOptions::new(Emulator::Qemu, "vf-passthrough")).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("vf-passthrough: {:.1} s wall", o.wall.as_secs_f64());
    assert!(o.passed(), "{}\n{}", o.failure(), o.tail(60));
    let s = o.summary.as_ref().expect("summary");
    let get = |p: &str| -> &Value {
        lookup(s, p).unwrap_or_else(|| panic!("no {p} in the summary:\n{}", o.tail(30)))
    };
    let host = get("host.results.vf_host");
    let vf = host["vf"].as_str().expect("the VF's address");
    assert!(vf.starts_with("0000:01:10."), "VF 0 of 01:00.0: {vf}");
    // `atoll vf` set the VF's MAC; igbvf in each enclave read that one (not a random one).
    let enable = host["enable"]["out"].as_str().unwrap_or("");
    for round in ["1", "2"] {
        let e = get(&format!("host.results.vf_host_enclave{round}"));
        let mac = e["mac"].as_str().expect("the enclave's MAC");
        assert!(
            enable.contains(&format!("MAC {mac}")),
            "enclave {round}'s MAC {mac} is the one atoll vf set: {enable}"
        );
        // The file: the sender's checksum is the receiver's.
        assert_eq!(
            e["tcp_sha256"],
            host[format!("recv{round}")]["sha256"],
            "round {round}"
        );
        assert_eq!(e["tcp_bytes"], 4_194_304);
        // The VF's interrupts (MSI-X, remapped to the enclave's core) reached its igbvf.
        let stats = &host[format!("stats{round}")]["enclaves"][0];
        let delivered = stats["device_interrupts"].as_u64().unwrap_or(0);
        assert!(
            delivered >= 100,
            "round {round}: {delivered} device interrupts"
        );
        assert_eq!(stats["dma_faults"], 0, "round {round}: {stats}");
        assert_eq!(stats["interrupt_faults"], 0, "round {round}: {stats}");
        // Absent in the host while owned; back (revision and class 02:00:00) after.
        assert_eq!(host[format!("class_while_owned{round}")], "ffffffff");
        let after = host[format!("class_after_destroy{round}")]
            .as_str()
            .unwrap_or("");
        assert!(after.ends_with("000002"), "round {round}: {after}");
    }
    // Held back: every fault is the VF's, attributed to the enclave that owned it, at the page
    // of atoll's pool canary (where the enclave pointed the ring), and the canary is intact.
    let canary = get("iommu.canaries.pool_address")
        .as_str()
        .unwrap()
        .to_string();
    let canary = u64::from_str_radix(canary.trim_start_matches("0x"), 16).unwrap();
    let log = get("iommu.fault_log").as_array().expect("fault_log");
    assert!(!log.is_empty(), "the held-back enclave's DMA faulted");
    let vf_source = &vf["0000:".len()..];
    for f in log {
        assert_eq!(f["source"], vf_source, "{f}");
        assert_eq!(f["owner"], "enclave vfnet1", "{f}");
        assert_eq!(f["kind"], "dma", "{f}");
        let a = f["address"].as_str().unwrap_or("0x0");
        let a = u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap();
        assert_eq!(a & !0xfff, canary & !0xfff, "{f}");
    }
    let outside = get("host.results.vf_host_outside_enclave1");
    assert_eq!(outside["first_ping_received"], 1, "{outside}");
    assert_eq!(outside["pings_received"], 0, "{outside}");
    assert_eq!(get("iommu.unowned_faults"), 0);
    assert_eq!(get("iommu.canaries.pool_intact"), true);
    // atoll logged each move of the VF.
    for needle in [
        "moved into enclave 'vfnet1''s domain",
        "is enclave 'vfnet1''s 00:01.0",
        "reset and back with the host",
    ] {
        assert!(o.serial.contains(needle), "atoll's log says '{needle}'");
    }
}
