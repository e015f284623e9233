use super::eager;
use crate::cg::CgVectors;
use crate::mg::{Hierarchy, LEVELS};
use crate::par::Par;
use crate::problem::{generate_problem, Grid};
use crate::symgs::Sweep;
use crate::validate::{test_cg, test_norms, test_symmetry, GlibcRand, RAND_MAX};

#[test]
fn glibc_rand_reproduces_the_default_seed_sequence() {
    // The first values of glibc's rand() without srand (published widely).
    let mut g = GlibcRand::new(1);
    let first: Vec<u32> = (0..5).map(|_| g.rand()).collect();
    assert_eq!(
        first,
        [
            1_804_289_383,
            846_930_886,
            1_681_692_777,
            1_714_636_915,
            1_957_747_793
        ]
    );
    // srand(0) behaves as srand(1).
    assert_eq!(GlibcRand::new(0).rand(), 1_804_289_383);
    let mut v = [0.0; 1000];
    GlibcRand::new(1).fill(&mut v);
    assert_eq!(v[0], 1_804_289_383.0 / f64::from(RAND_MAX) + 1.0);
    assert!(v.iter().all(|&e| (1.0..=2.0).contains(&e)));
}

fn setup(grid: Grid) -> (Hierarchy, Vec<f64>, Vec<f64>) {
    let p = generate_problem(grid).unwrap();
    (Hierarchy::new(p.a, LEVELS).unwrap(), p.b, p.xexact)
}

#[test]
fn spectral_test_passes_and_restores_the_problem() {
    let grid = Grid::new(16, 16, 16);
    let (mut h, mut b, _) = setup(grid);
    let before_a = h.fine().clone();
    let before_b = b.clone();
    let mut data = CgVectors::new(grid.rows());
    let mut x = vec![0.0; grid.rows()];
    let t = test_cg(&mut h, &mut data, &mut b, &mut x, Par::serial());
    assert!(t.passed);
    assert_eq!((t.count_pass, t.count_fail), (4, 0));
    assert_eq!((t.expected_iters_no_prec, t.expected_iters_prec), (12, 2));
    // Within the limits, and not trivially zero.
    assert!((1..=12).contains(&t.max_iters_no_prec) && (1..=2).contains(&t.max_iters_prec));
    assert!(t.max_iters_prec < t.max_iters_no_prec);
    assert_eq!(h.fine(), &before_a);
    assert_eq!(b, before_b);
}

#[test]
fn spectral_test_fails_on_a_system_it_does_not_make_easy() {
    // The test multiplies the diagonal by 10⁶ to make the system easy. Undo
    // that in advance (diagonal × 10⁻⁶): the test then solves the plain
    // problem with a scaled b, which unpreconditioned CG cannot finish to
    // 10⁻¹² in 12 iterations, so the verdict must be a failure.
    let grid = Grid::new(16, 16, 16);
    let (mut h, mut b, _) = setup(grid);
    for i in 0..h.fine().rows {
        let d = h.fine().diagonal(i);
        h.fine_mut().set_diagonal(i, d * 1e-6);
    }
    let mut data = CgVectors::new(grid.rows());
    let mut x = vec![0.0; grid.rows()];
    let t = test_cg(&mut h, &mut data, &mut b, &mut x, Par::serial());
    assert!(!t.passed);
    assert!(t.count_fail > 0 && t.max_iters_no_prec > 12, "{t:?}");
}

#[test]
fn symmetry_test_passes_on_the_correct_operators() {
    let grid = Grid::new(16, 16, 16);
    let (mut h, b, xexact) = setup(grid);
    for par in [Par::serial(), eager(3)] {
        let mut rng = GlibcRand::new(1);
        let t = test_symmetry(&mut h, &b, &xexact, &mut rng, par);
        assert!(t.passed, "{t:?}");
        assert!(t.depsym_spmv <= 1.0 && t.depsym_mg <= 1.0);
        assert_eq!(t.exact_residual, 0.0);
    }
}

#[test]
fn symmetry_test_catches_a_forward_only_smoother() {
    let grid = Grid::new(16, 16, 16);
    let (mut h, b, xexact) = setup(grid);
    h.sweep = Sweep::ForwardOnly;
    let t = test_symmetry(&mut h, &b, &xexact, &mut GlibcRand::new(1), Par::serial());
    assert!(!t.passed);
    assert_eq!(t.count_fail, 1, "only MG is broken: {t:?}");
    assert!(t.depsym_mg > 1.0 && t.depsym_spmv <= 1.0);
}

#[test]
fn symmetry_test_catches_an_asymmetric_matrix() {
    let grid = Grid::new(16, 16, 16);
    let (mut h, b, xexact) = setup(grid);
    // Change one off-diagonal entry a_ij but not a_ji.
    let row = 1000;
    let slot = row * crate::problem::STENCIL; // first entry: a lower neighbour
    assert_ne!(h.fine().cols[slot] as usize, row);
    h.fine_mut().values[slot] = -2.0;
    let t = test_symmetry(&mut h, &b, &xexact, &mut GlibcRand::new(1), Par::serial());
    assert!(!t.passed);
    assert!(t.depsym_spmv > 1.0, "{t:?}");
    // b no longer equals A·1.
    assert_eq!(t.exact_residual, 1.0);
}

#[test]
fn norms_test_checks_the_variance() {
    let same = test_norms(&[3.0e-12; 4]);
    assert!(same.passed);
    assert_eq!((same.mean, same.variance), (3.0e-12, 0.0));
    let spread = test_norms(&[0.0, 0.002, 0.004]);
    assert!(!spread.passed);
    assert!((spread.mean - 0.002).abs() < 1e-15);
    assert!((spread.variance - 8.0e-6 / 3.0).abs() < 1e-15);
    assert!(!test_norms(&[]).passed);
}
