use super::{dense, eager, max_rel_diff, test_vector};
use crate::par::Par;
use crate::problem::{generate_matrix, Grid};
use crate::sparse::{axpby_into_first, axpby_into_second, dot, spmv, waxpby};
use crate::symgs::{symgs, symgs_sequential};

#[test]
fn spmv_matches_dense_product_and_thread_counts() {
    let grid = Grid::new(4, 3, 5);
    let a = generate_matrix(grid).unwrap();
    let d = dense::stencil(grid);
    let x = test_vector(a.rows, 1);
    let expected = d.mul(&x);
    for threads in [1, 2, 3, 7] {
        let mut y = vec![0.0; a.rows];
        spmv(&a, &x, &mut y, eager(threads));
        assert!(max_rel_diff(&y, &expected) < 1e-14, "threads {threads}");
    }
    // Bitwise identical between thread counts on a bigger grid.
    let a = generate_matrix(Grid::new(16, 16, 16)).unwrap();
    let x = test_vector(a.rows, 2);
    let mut y1 = vec![0.0; a.rows];
    spmv(&a, &x, &mut y1, Par::serial());
    for threads in [2, 3, 5] {
        let mut y = vec![0.0; a.rows];
        spmv(&a, &x, &mut y, eager(threads));
        assert_eq!(y, y1);
    }
}

#[test]
fn dot_is_the_serial_left_to_right_sum_for_any_threads() {
    let n = 5 * 8192 + 123;
    let x = test_vector(n, 3);
    let y = test_vector(n, 4);
    // The reference's loop: one accumulator from 0.0, in index order.
    let plain = x.iter().zip(&y).fold(0.0, |s, (p, q)| s + p * q);
    for threads in [1, 2, 3, 4, 6, 9] {
        assert_eq!(
            dot(&x, &y, eager(threads)).to_bits(),
            plain.to_bits(),
            "threads {threads}"
        );
    }
    // Not a chunked sum: that order gives other bits on this vector.
    let chunked = x
        .chunks(8192)
        .zip(y.chunks(8192))
        .map(|(a, b)| a.iter().zip(b).fold(0.0, |s, (p, q)| s + p * q))
        .fold(0.0, |s, c| s + c);
    assert_ne!(
        chunked.to_bits(),
        plain.to_bits(),
        "pick another test vector"
    );
    assert_eq!(dot(&[], &[], eager(3)), 0.0);
}

#[test]
fn waxpby_variants_compute_the_same_formula() {
    let n = 1000;
    let x = test_vector(n, 5);
    let y = test_vector(n, 6);
    let (alpha, beta) = (1.25, -0.375);
    let expected: Vec<f64> = x
        .iter()
        .zip(&y)
        .map(|(a, b)| alpha * a + beta * b)
        .collect();
    for threads in [1, 3] {
        let mut w = vec![0.0; n];
        waxpby(alpha, &x, beta, &y, &mut w, eager(threads));
        assert_eq!(w, expected);
        let mut w = x.clone();
        axpby_into_first(alpha, &mut w, beta, &y, eager(threads));
        assert_eq!(w, expected);
        let mut w = y.clone();
        axpby_into_second(alpha, &x, beta, &mut w, eager(threads));
        assert_eq!(w, expected);
    }
}

#[test]
fn symgs_matches_textbook_dense_gauss_seidel() {
    for (nx, ny, nz) in [(4, 3, 5), (2, 2, 2), (3, 1, 4)] {
        let grid = Grid::new(nx, ny, nz);
        let a = generate_matrix(grid).unwrap();
        let d = dense::stencil(grid);
        let r = test_vector(a.rows, 7);
        let x0 = test_vector(a.rows, 8);
        let mut x = x0.clone();
        symgs(&a, &r, &mut x, Par::serial());
        let mut expected = x0.clone();
        dense::symmetric_gauss_seidel(&d, &r, &mut expected);
        assert!(max_rel_diff(&x, &expected) < 1e-14, "grid {nx}x{ny}x{nz}");
        // And it is not a no-op or a single sweep.
        let mut forward = x0.clone();
        dense::gauss_seidel(&d, &r, &mut forward, 0..d.n);
        assert!(max_rel_diff(&x, &forward) > 1e-6);
    }
}

#[test]
fn symgs_wavefront_is_bitwise_identical_to_the_sequential_sweep() {
    for (nx, ny, nz) in [
        (16, 16, 16),
        (8, 24, 16),
        (16, 8, 3),
        (5, 1, 9),
        (16, 16, 2),
    ] {
        let a = generate_matrix(Grid::new(nx, ny, nz)).unwrap();
        let r = test_vector(a.rows, 9);
        let x0 = test_vector(a.rows, 10);
        let mut expected = x0.clone();
        symgs_sequential(&a, &r, &mut expected, true);
        for threads in [2, 3, 4, 8] {
            let mut x = x0.clone();
            symgs(&a, &r, &mut x, eager(threads));
            let same = x
                .iter()
                .zip(&expected)
                .all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "grid {nx}x{ny}x{nz}, {threads} threads");
        }
    }
}
