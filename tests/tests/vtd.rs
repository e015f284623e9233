//! Emulator test of atoll's IOMMU (issue 12): `vtd-dma` (QEMU/SVM with VT-d and two `edu`
//! DMA engines).
//!
//! The scenario's own expectations say the run passed, the host's roundtrip matched, the
//! blocked device's target is unchanged and both canaries are intact. This test then sets each
//! fault atoll recorded beside the DMA the host says it made: same device, same address,
//! the reason the VT-d spec gives for it (Appendix A: 0x5 a write through a missing or
//! read-only second-level entry, 0x2 a context entry that is not present).

use serde_json::Value;
use xtask::run::{run, RunOptions};
use xtask::scenario::{lookup, Emulator};

#[test]
fn vtd_dma_qemu() {
    let o = run(&RunOptions::new(Emulator::Qemu, "vtd-dma")).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("vtd-dma: {:.1} s wall", o.wall.as_secs_f64());
    assert!(o.passed(), "{}\n{}", o.failure(), o.tail(60));
    let s = o.summary.as_ref().expect("summary");
    let get = |p: &str| -> &Value {
        lookup(s, p).unwrap_or_else(|| panic!("no {p} in the summary:\n{}", o.tail(30)))
    };
    let log = get("iommu.fault_log")
        .as_array()
        .expect("fault_log is a list");
    assert!(
        log.len() >= 4 + 1 + 8,
        "one fault per faulting DMA, the forged interrupt, the storm: {log:?}"
    );
    let steps = [
        "pool_write",
        "atoll_write",
        "unmapped_write",
        "blocked_write",
    ];
    for (fault, step) in log.iter().zip(steps) {
        let dma = get(&format!("host.results.dma.{step}"));
        assert_eq!(dma["ran"], true, "{step}: {dma}");
        let device = dma["device"].as_str().unwrap();
        assert!(
            device.ends_with(fault["source"].as_str().unwrap()),
            "{step}: fault from {} but the host used {device}",
            fault["source"]
        );
        assert_eq!(fault["kind"], "dma", "{step}: {fault}");
        assert_eq!(fault["write"], true, "{step}: {fault}");
        let want = u64::from_str_radix(
            dma["address"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        let got = u64::from_str_radix(
            fault["address"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        assert_eq!(got & !0xfff, want & !0xfff, "{step}: {fault}");
        let code = if step == "blocked_write" { 2 } else { 5 };
        assert_eq!(fault["code"], code, "{step}: {fault}");
    }
    // The forged interrupt names IRTE 4000, which atoll never wrote (VT-d reason 0x22).
    assert_eq!(log[4]["kind"], "interrupt");
    assert_eq!(log[4]["code"], 0x22);
    // The storm: the third device's writes until atoll stopped it, then nothing of it reaches
    // memory (the canaries above) and its bus mastering is off.
    let storm = get("host.results.dma.storm");
    let device = storm["device"].as_str().unwrap();
    let storm_faults = log[5..]
        .iter()
        .filter(|f| device.ends_with(f["source"].as_str().unwrap()))
        .count();
    assert!(storm_faults >= 8, "{storm_faults} storm faults recorded");
    assert_eq!(
        get("iommu.stopped")[0]
            .as_str()
            .map(|s| device.ends_with(s)),
        Some(true)
    );
    assert_eq!(get("host.last_fault.source"), &log[log.len() - 1]["source"]);
    // Its write after bus mastering was turned on again met the cleared context entry (VT-d
    // reason 0x2), not a cached translation of the host's domain.
    let last = &log[log.len() - 1];
    assert!(device.ends_with(last["source"].as_str().unwrap()), "{last}");
    assert_eq!(last["code"], 2, "{last}");
}
