//! The isolation bench's pipeline (issue 15) on QEMU with a tiny problem: every configuration
//! (native, atoll, KVM default and tuned) boots and runs the workload solo and under a load,
//! HPCG validates, and the bench's JSON and plot have everything the bench reports. No timing
//! is asserted: QEMU's timing is its host's.

use serde_json::Value;
use xtask::bench_isolation::{check, measure, to_json, Config, Options};
use xtask::scenario::Emulator;

#[test]
fn isolation_pipeline_qemu() {
    let opts = Options::new(
        Emulator::Qemu,
        "cpu",
        16,
        0,
        200,
        1,
        "native,atoll,kvm-default,kvm-tuned",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let results = measure(&opts).unwrap_or_else(|e| panic!("{e:#}"));
    check(&results, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    let j = to_json(&results, &opts);
    for config in Config::ALL {
        let runs = j["configs"][config.name()]["runs"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no runs in {j}", config.name()));
        let loads: Vec<&str> = runs.iter().filter_map(|r| r["load"].as_str()).collect();
        assert_eq!(loads, ["none", "cpu"], "{}", config.name());
        for r in runs {
            let what = format!("{} under {}", config.name(), r["load"]);
            let h = &r["hpcg"];
            assert_eq!(
                (&h["nx"], &h["ny"], &h["nz"]),
                (&16.into(), &16.into(), &16.into()),
                "{what}"
            );
            assert_eq!(h["valid"], true, "{what}: {h}");
            let residuals = h["ref_residuals"].as_array().expect("ref_residuals");
            assert_eq!(residuals.len(), 50, "{what}");
            // The same problem and code: the reference phase's history does not depend on the
            // configuration or the load.
            assert_eq!(residuals[0].as_f64(), Some(0.17528847365267122), "{what}");
            for k in ["flops_per_set", "rating_gflops", "cycles"] {
                assert!(h[k].as_f64().is_some_and(|x| x > 0.0), "{what}: {k} in {h}");
            }
            // FWQ on both of the workload's CPUs, its statistics ordered.
            let cpus = r["fwq"]["cpus"].as_array().expect("fwq cpus");
            assert_eq!(cpus.len(), 2, "{what}: {}", r["fwq"]);
            for c in cpus {
                let n = |k: &str| {
                    c[k].as_u64()
                        .unwrap_or_else(|| panic!("{what}: {k} in {c}"))
                };
                assert!(n("min") <= n("median") && n("median") <= n("p99") && n("p99") <= n("max"));
                assert_eq!(n("count"), 200);
            }
            assert!(
                r["oslat"]["thread"]
                    .as_object()
                    .is_some_and(|t| t.len() == 2),
                "{what}: {}",
                r["oslat"]
            );
            // What an exit costs there: CPUID's round trip and a timer wakeup's overshoot.
            let ec = &r["exit_costs"];
            assert!(ec["cpuid"]["median"].as_u64().is_some(), "{what}: {ec}");
            assert!(
                ec["timer"]["overshoot_cycles"]["median"].as_u64().is_some(),
                "{what}: {ec}"
            );
            // Where its lost cycles went: the workload kernel's interrupts while HPCG ran.
            assert!(
                r["interrupts_during_hpcg"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty()),
                "{what}: {r}"
            );
            match config {
                Config::Atoll => {
                    assert!(r["exits_per_s_per_core"].as_f64().is_some(), "{what}: {r}");
                    assert!(r["stats_before_hpcg"]["enclaves"].is_array(), "{what}");
                    // atoll's counts per vCPU: one rate each, HPCG's (the nohz_full one) among
                    // them.
                    let per = r["vcpu_exits_per_s"].as_array().expect("vcpu_exits_per_s");
                    assert_eq!(per.len(), 2, "{what}: {r}");
                    assert_eq!(r["hpcg_vcpu_exits_per_s"], per[1], "{what}");
                    let by_class = r["hpcg_vcpu_exits_by_class"].as_object().expect("classes");
                    assert_eq!(
                        by_class.keys().collect::<Vec<_>>(),
                        ["hlt", "ipi", "other", "timer"],
                        "{what}"
                    );
                }
                Config::KvmDefault | Config::KvmTuned => {
                    assert!(r["exits_per_s_per_core"].as_f64().is_some(), "{what}: {r}");
                    assert!(r["kvm_exits_during_hpcg"]["exits"].is_u64(), "{what}: {r}");
                }
                Config::Native => assert_eq!(r["exits_per_s_per_core"], Value::Null, "{what}"),
            }
            // HPCG ran on the guest's nohz_full CPU (natively: the core it stands for) and the
            // interrupts there are counted on their own.
            assert!(
                r["interrupts_on_hpcg_cpus_during_hpcg"].is_object(),
                "{what}: {r}"
            );
            // …as HPCG itself saw it (its allowed CPUs, from its own /proc/self/status).
            assert_eq!(
                h["cpus_allowed"],
                if config == Config::Native { "3" } else { "1" },
                "{what}: {h}"
            );
            assert_eq!(
                j["configs"][config.name()]["hpcg_cpus"],
                if config == Config::Native {
                    serde_json::json!([3])
                } else {
                    serde_json::json!([1])
                },
                "{what}"
            );
            if r["load"] == "cpu" {
                assert!(r["loaded_over_solo_cycles"].as_f64().is_some(), "{what}");
            }
        }
    }
    let png = xtask::target_dir().join("isolation-pipeline-test.png");
    xtask::bench_plot::isolation(&results, &opts, &png).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    let _ = std::fs::remove_file(&png);
}
