use super::{dense, eager, max_rel_diff, test_vector};
use crate::cg::{cg, CgVectors, Stop};
use crate::mg::{Hierarchy, LEVELS};
use crate::par::Par;
use crate::problem::{generate_problem, Grid};
use crate::sparse::spmv;

fn dense_levels(fine: Grid) -> (Vec<Grid>, Vec<dense::Dense>) {
    let mut grids = vec![fine];
    for _ in 1..LEVELS {
        let g = *grids.last().unwrap();
        grids.push(Grid::new(g.nx / 2, g.ny / 2, g.nz / 2));
    }
    let mats = grids.iter().map(|&g| dense::stencil(g)).collect();
    (grids, mats)
}

#[test]
fn hierarchy_has_four_levels_of_halved_grids() {
    let p = generate_problem(Grid::new(32, 16, 24)).unwrap();
    let h = Hierarchy::new(p.a, LEVELS).unwrap();
    let grids: Vec<Grid> = h.levels.iter().map(|l| l.a.grid).collect();
    assert_eq!(
        grids,
        [
            Grid::new(32, 16, 24),
            Grid::new(16, 8, 12),
            Grid::new(8, 4, 6),
            Grid::new(4, 2, 3)
        ]
    );
    assert_eq!(h.levels[3].f2c.len(), 0);
    assert_eq!(h.levels[0].f2c.len(), 16 * 8 * 12);
}

#[test]
fn v_cycle_matches_the_dense_model() {
    for fine in [Grid::new(8, 8, 8), Grid::new(16, 8, 8)] {
        let p = generate_problem(fine).unwrap();
        let mut h = Hierarchy::new(p.a, LEVELS).unwrap();
        let (grids, mats) = dense_levels(fine);
        let r = test_vector(fine.rows(), 11);
        let expected = dense::v_cycle(&grids, &mats, &r);
        for par in [Par::serial(), eager(3)] {
            // Garbage in x must not matter: the V-cycle starts from zero.
            let mut x = test_vector(fine.rows(), 12);
            h.apply(&r, &mut x, par);
            assert!(max_rel_diff(&x, &expected) < 1e-13, "grid {fine:?}");
        }
    }
}

#[test]
fn preconditioned_cg_matches_dense_pcg() {
    let fine = Grid::new(8, 8, 8);
    let p = generate_problem(fine).unwrap();
    let mut h = Hierarchy::new(p.a, LEVELS).unwrap();
    let (grids, mats) = dense_levels(fine);
    let iters = 10;
    let expected = dense::pcg(&mats[0], &p.b, iters, &|r| dense::v_cycle(&grids, &mats, r));
    let mut data = CgVectors::new(fine.rows());
    let mut x = vec![0.0; fine.rows()];
    let run = cg(
        &mut h,
        &mut data,
        &p.b,
        &mut x,
        iters,
        Stop::Reference(0.0),
        true,
        Par::serial(),
    );
    assert_eq!(run.iterations, iters);
    for (k, (got, want)) in run.scaled_residuals.iter().zip(&expected).enumerate() {
        assert!(
            (got - want).abs() <= 1e-7 * want,
            "iteration {}: {got} vs {want}",
            k + 1
        );
    }
}

#[test]
fn unpreconditioned_cg_matches_dense_cg() {
    let fine = Grid::new(8, 8, 8);
    let p = generate_problem(fine).unwrap();
    let mut h = Hierarchy::new(p.a, LEVELS).unwrap();
    let d = dense::stencil(fine);
    let iters = 12;
    let expected = dense::pcg(&d, &p.b, iters, &|r| r.to_vec());
    let mut data = CgVectors::new(fine.rows());
    let mut x = vec![0.0; fine.rows()];
    let run = cg(
        &mut h,
        &mut data,
        &p.b,
        &mut x,
        iters,
        Stop::Reference(0.0),
        false,
        Par::serial(),
    );
    for (got, want) in run.scaled_residuals.iter().zip(&expected) {
        assert!((got - want).abs() <= 1e-7 * want, "{got} vs {want}");
    }
    // Preconditioning must help: after 12 iterations it is far ahead.
    let mut x = vec![0.0; fine.rows()];
    let pre = cg(
        &mut h,
        &mut data,
        &p.b,
        &mut x,
        iters,
        Stop::Reference(0.0),
        true,
        Par::serial(),
    );
    assert!(pre.scaled_residual() < 1e-3 * run.scaled_residual());
}

#[test]
fn recorded_residual_is_the_true_residual_early_on_and_x_converges_to_ones() {
    let grid = Grid::new(16, 16, 16);
    let p = generate_problem(grid).unwrap();
    let mut h = Hierarchy::new(p.a, LEVELS).unwrap();
    let mut data = CgVectors::new(grid.rows());
    for k in [1, 2, 5] {
        let mut x = vec![0.0; grid.rows()];
        let run = cg(
            &mut h,
            &mut data,
            &p.b,
            &mut x,
            k,
            Stop::Reference(0.0),
            true,
            Par::serial(),
        );
        let mut ax = vec![0.0; grid.rows()];
        spmv(h.fine(), &x, &mut ax, Par::serial());
        let true_norm =
            p.b.iter()
                .zip(&ax)
                .map(|(b, a)| (b - a) * (b - a))
                .sum::<f64>()
                .sqrt();
        let recorded = run.scaled_residuals[k - 1];
        assert!(
            (true_norm / run.normr0 - recorded).abs() < 1e-10 * recorded.max(1e-3),
            "k = {k}"
        );
        // r0 = b since x0 = 0.
        let b_norm = p.b.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert_eq!(run.normr0, b_norm);
    }
    let mut x = vec![0.0; grid.rows()];
    let run = cg(
        &mut h,
        &mut data,
        &p.b,
        &mut x,
        50,
        Stop::Reference(0.0),
        true,
        Par::serial(),
    );
    assert_eq!(run.iterations, 50);
    assert!(x.iter().all(|&v| (v - 1.0).abs() < 1e-13));
}

#[test]
fn optimized_stop_rule_stops_at_the_reference_residual() {
    let grid = Grid::new(16, 16, 16);
    let p = generate_problem(grid).unwrap();
    let mut h = Hierarchy::new(p.a, LEVELS).unwrap();
    let mut data = CgVectors::new(grid.rows());
    let mut x = vec![0.0; grid.rows()];
    let reference = cg(
        &mut h,
        &mut data,
        &p.b,
        &mut x,
        20,
        Stop::Reference(0.0),
        true,
        Par::serial(),
    );
    let target = reference.scaled_residual();
    x.fill(0.0);
    let opt = cg(
        &mut h,
        &mut data,
        &p.b,
        &mut x,
        500,
        Stop::Optimized(target),
        true,
        Par::serial(),
    );
    assert_eq!(opt.iterations, 20);
    assert_eq!(opt.scaled_residuals, reference.scaled_residuals);
    // A reference tolerance equal to iteration 19's residual stops there.
    x.fill(0.0);
    let early = cg(
        &mut h,
        &mut data,
        &p.b,
        &mut x,
        500,
        Stop::Reference(reference.scaled_residuals[18]),
        true,
        Par::serial(),
    );
    assert_eq!(early.iterations, 19);
}

fn reference_history(grid: Grid, par: Par) -> Vec<f64> {
    let p = generate_problem(grid).unwrap();
    let mut h = Hierarchy::new(p.a, LEVELS).unwrap();
    let mut data = CgVectors::new(grid.rows());
    let mut x = vec![0.0; grid.rows()];
    cg(
        &mut h,
        &mut data,
        &p.b,
        &mut x,
        50,
        Stop::Reference(0.0),
        true,
        par,
    )
    .scaled_residuals
}

#[test]
fn reference_cg_is_bitwise_independent_of_thread_count() {
    // 16×16×48 spans two dot chunks, so the chunked sum is exercised too.
    // (~2 s in a debug build.)
    for grid in [Grid::new(16, 16, 16), Grid::new(16, 16, 48)] {
        let serial = reference_history(grid, Par::serial());
        for threads in [2, 3] {
            let threaded = reference_history(grid, eager(threads));
            let same = serial
                .iter()
                .zip(&threaded)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && serial.len() == 50, "{grid:?}, {threads} threads");
        }
    }
}
