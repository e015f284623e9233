//! Numbers pinned from this implementation on 16³, after the cross-checks in
//! the sibling modules passed (sparse = dense model, V-cycle = dense V-cycle,
//! PCG = textbook dense PCG, thread-count independence). They catch any
//! change of operation order; the FLOP counts are derived by hand from
//! `ReportResults.cpp`'s formulas.

use crate::flops::{number_of_sets, rating_gflops, FlopCount, LevelSize};
use crate::mg::{Hierarchy, LEVELS};
use crate::par::Par;
use crate::problem::{generate_matrix, Grid};
use crate::report::{run, Config, REPORT_PREFIX};

/// ‖r_k‖/‖r_0‖ of the reference CG on 16³, k = 1..=50.
const REF_RESIDUALS_16: [f64; 50] = [
    0.17528847365267122,
    0.08359501836947533,
    0.031171082868920542,
    0.0028449612073994743,
    0.00041734738539736917,
    0.00008698802726895126,
    0.000021373078177362326,
    4.953871747967286e-6,
    7.222398510127551e-7,
    1.6353119008197327e-7,
    1.0761612967192945e-8,
    3.4934910439735604e-9,
    8.461542732555198e-10,
    8.785128207723437e-11,
    1.2505711685013491e-11,
    1.4205735896421984e-12,
    1.8412383915975827e-13,
    6.176131250980817e-14,
    9.899094532310064e-15,
    2.0126852393572105e-15,
    3.529333559215405e-16,
    3.5075680931694744e-17,
    3.913082217538935e-18,
    4.1966436819436815e-19,
    8.864583980196413e-20,
    1.27365971932268e-20,
    3.914310815639769e-21,
    2.8025711255536323e-21,
    1.764049037296392e-22,
    1.685035484926605e-23,
    1.2036855908416116e-24,
    1.4179902361528162e-25,
    1.3936199288117193e-26,
    1.5690680852836466e-27,
    2.0443072766453225e-28,
    1.900518463371038e-29,
    2.1083969030262796e-30,
    1.9380839767380137e-31,
    1.9640585203671457e-32,
    2.797028269473837e-33,
    9.684883769504539e-34,
    1.243655561249438e-34,
    1.0006215099277298e-35,
    7.603896926957422e-37,
    8.789097854430412e-38,
    5.780610469788689e-39,
    2.5557986754684907e-39,
    3.5223552522012853e-40,
    2.6414623787593423e-40,
    3.662342160856094e-41,
];

#[test]
fn full_run_on_16_cubed_is_valid_and_pinned() {
    for par in [Par::serial(), super::eager(3)] {
        let report = run(Config {
            grid: Grid::new(16, 16, 16),
            runtime_seconds: 0,
            par,
        })
        .unwrap();
        assert_eq!(report.ref_residuals, REF_RESIDUALS_16);
        assert_eq!(report.ref_iters, 50);
        assert!(report.valid, "{report:?}");
        assert_eq!(
            (
                report.spectral.max_iters_no_prec,
                report.spectral.max_iters_prec
            ),
            (11, 1)
        );
        assert_eq!(report.symmetry.depsym_spmv, 6.296316350064186e-5);
        assert_eq!(report.symmetry.depsym_mg, 3.716575623301776e-6);
        // Same kernels, so the optimized phase needs exactly the reference's 50.
        assert_eq!((report.opt_iters, report.tolerance_failures), (50, 0));
        assert_eq!(report.sets, 1);
        assert!(report.quick_path);
        assert_eq!(report.set_residuals, [REF_RESIDUALS_16[49]]);
        assert_eq!(report.total_flops, 66_907_056.0);
        assert_eq!(report.flops_per_set, 66_907_056.0);
        assert!(report.seconds > 0.0 && report.rating_gflops > 0.0);
        assert!(report.rating_gflops <= report.gflops_timed);
        #[cfg(target_arch = "x86_64")]
        assert!(report.cycles > 0);

        let line = report.line();
        let json = line.strip_prefix(REPORT_PREFIX).expect("prefix");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        for key in [
            "nx",
            "ny",
            "nz",
            "threads",
            "ref_residuals",
            "valid",
            "spectral",
            "symmetry",
            "opt_iters",
            "sets",
            "flops_per_set",
            "total_flops",
            "seconds",
            "rating_gflops",
            "cycles",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let parsed: Vec<f64> = v["ref_residuals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(
            parsed, REF_RESIDUALS_16,
            "JSON must round-trip the doubles exactly"
        );
        assert_eq!(v["threads"], par.threads);
        // min_items = 1 lets every kernel split, so the pool has all threads.
        assert_eq!(v["workers"], par.threads);
    }
}

/// The HPCG 3.1 reference itself (tag HPCG-release-3-1-0, serial, built without
/// FMA, its log printed to 17 digits) on 16×24×32: 12 288 rows, beyond any
/// chunking of the dot product, so this pins the summation order to the
/// reference's on a grid where another order gives other residuals.
#[test]
fn a_larger_grid_gives_the_reference_build_s_numbers() {
    let report = run(Config {
        grid: Grid::new(16, 24, 32),
        runtime_seconds: 0,
        par: super::eager(2),
    })
    .unwrap();
    assert_eq!(report.ref_residuals[0], 0.17914633667678728);
    assert_eq!(report.ref_residuals[9], 7.519772194561327e-6);
    assert_eq!(report.ref_residuals[49], 2.3447899726582256e-29);
    assert_eq!(report.symmetry.depsym_spmv, 1.0389867665477817e-5);
    assert_eq!(report.symmetry.depsym_mg, 1.0582272622245924e-6);
    assert!(report.valid);
}

#[test]
fn flop_count_for_16_cubed_by_hand() {
    // Level sizes: 16³, 8³, 4³, 2³ rows; nonzeros (3n−2)³ = 46³, 22³, 10³, 4³.
    let grids = [16, 8, 4, 2];
    let h = Hierarchy::new(generate_matrix(Grid::new(16, 16, 16)).unwrap(), LEVELS).unwrap();
    let nnz: Vec<usize> = h.levels.iter().map(|l| l.a.nonzeros).collect();
    assert_eq!(nnz, [97_336, 10_648, 1_000, 64]);
    let sizes: Vec<LevelSize> = grids
        .iter()
        .zip(&nnz)
        .map(|(&n, &z)| LevelSize {
            rows: (n * n * n) as f64,
            nonzeros: z as f64,
        })
        .collect();

    // One set of 50: ddot = waxpby = (3·50 + 1)·2·4096 = 1 236 992;
    // spmv = (50 + 1)·2·97 336 = 9 928 272;
    // mg = 50·[(4+2+4)·(97 336 + 10 648 + 1 000) + 4·64] = 50·1 090 096 = 54 504 800.
    let f = FlopCount::new(&sizes, 1, 50, 50);
    assert_eq!(f.ddot, 1_236_992.0);
    assert_eq!(f.waxpby, 1_236_992.0);
    assert_eq!(f.spmv, 9_928_272.0);
    assert_eq!(f.mg, 54_504_800.0);
    assert_eq!(f.raw_total, 66_907_056.0);
    assert_eq!(f.total, 66_907_056.0);

    // Three sets of 55 iterations (an optimised code that converges slower):
    // raw counts use 165 iterations + 3 preambles, the total is scaled by 50/55.
    let f = FlopCount::new(&sizes, 3, 55, 50);
    assert_eq!(f.ddot, (3.0 * 165.0 + 3.0) * 2.0 * 4096.0);
    assert_eq!(f.spmv, (165.0 + 3.0) * 2.0 * 97_336.0);
    assert_eq!(f.mg, 165.0 * 1_090_096.0);
    assert_eq!(f.total, f.raw_total * 50.0 / 55.0);
}

#[test]
fn sets_and_rating_follow_the_reference_formulas() {
    // QuickPath: rt = 0 gives one set whatever the solve time.
    assert_eq!(number_of_sets(0, 0.25), 1);
    // int(60 / 0.7) + 1 = 85 + 1.
    assert_eq!(number_of_sets(60, 0.7), 86);
    // Exact division still adds one: int(10 / 2.5) + 1 = 5.
    assert_eq!(number_of_sets(10, 2.5), 5);
    // A zero duration is capped (one set per microsecond of the run time)
    // instead of asking for endless sets.
    assert_eq!(number_of_sets(1, 0.0), 1_000_001);
    assert_eq!(number_of_sets(60, 1e-12), 60_000_001);
    assert_eq!(number_of_sets(0, 0.0), 1);
    // 2·10⁹ flops in 1.8 s of sets, 2 sets, setup 1 s, optimisation 0:
    // 2e9 / (1.8 + 2·0.1) / 1e9 = 1 GFLOP/s.
    assert!((rating_gflops(2.0e9, 1.8, 2, 0.0, 1.0) - 1.0).abs() < 1e-15);
    assert!((rating_gflops(2.0e9, 1.0, 2, 2.0, 3.0) - 1.0).abs() < 1e-15);
}
