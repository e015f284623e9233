use super::dense;
use crate::problem::{fine_to_coarse, generate_matrix, generate_problem, Grid, GridError, STENCIL};

const SHAPES: [(usize, usize, usize); 5] = [(1, 1, 1), (2, 3, 4), (4, 3, 5), (8, 8, 8), (5, 1, 2)];

#[test]
fn matrix_equals_the_dense_geometric_stencil() {
    for (nx, ny, nz) in SHAPES {
        let grid = Grid::new(nx, ny, nz);
        let a = generate_matrix(grid).unwrap();
        let d = dense::stencil(grid);
        let mut rebuilt = vec![0.0; d.n * d.n];
        for i in 0..a.rows {
            let (vals, cols) = a.row(i);
            for (v, &c) in vals.iter().zip(cols) {
                assert_eq!(
                    rebuilt[i * d.n + c as usize],
                    0.0,
                    "duplicate entry ({i},{c})"
                );
                rebuilt[i * d.n + c as usize] = *v;
            }
            assert_eq!(a.diagonal(i), 26.0);
        }
        assert_eq!(rebuilt, d.a, "grid {nx}x{ny}x{nz}");
        // The dense matrix is symmetric, so the sparse one is too.
        for i in 0..d.n {
            for j in 0..d.n {
                assert_eq!(d.at(i, j), d.at(j, i));
            }
        }
    }
}

#[test]
fn rows_are_in_stencil_order_lower_triangle_first() {
    let a = generate_matrix(Grid::new(4, 3, 5)).unwrap();
    for i in 0..a.rows {
        let (_, cols) = a.row(i);
        // Stencil order (z, y, x offsets ascending) is ascending column order.
        assert!(cols.windows(2).all(|w| w[0] < w[1]), "row {i}: {cols:?}");
        let d = usize::from(a.diag_slot[i]);
        assert_eq!(cols[d] as usize, i);
        assert!(cols[..d].iter().all(|&c| (c as usize) < i));
        assert!(cols[d + 1..].iter().all(|&c| (c as usize) > i));
    }
}

#[test]
fn nonzero_count_matches_the_closed_form_and_row_lengths() {
    for (nx, ny, nz) in SHAPES.into_iter().chain([(16, 16, 16), (16, 24, 32)]) {
        let grid = Grid::new(nx, ny, nz);
        let a = generate_matrix(grid).unwrap();
        let summed: usize = a.row_len.iter().map(|&l| usize::from(l)).sum();
        assert_eq!(a.nonzeros, summed);
        assert_eq!(a.nonzeros, grid.stencil_nonzeros(), "grid {nx}x{ny}x{nz}");
    }
    // By hand: 16³ has 46³ nonzeros; interior rows 27, corners 8, edges 12, faces 18.
    let a = generate_matrix(Grid::new(16, 16, 16)).unwrap();
    assert_eq!(a.nonzeros, 97_336);
    let count = |len: u8| a.row_len.iter().filter(|&&l| l == len).count();
    assert_eq!(count(27), 14 * 14 * 14);
    assert_eq!(count(8), 8);
    assert_eq!(count(12), 12 * 14);
    assert_eq!(count(18), 6 * 14 * 14);
    assert_eq!(a.values.len(), a.rows * STENCIL);
}

#[test]
fn rhs_is_the_row_sum_so_the_exact_solution_is_ones() {
    for (nx, ny, nz) in SHAPES.into_iter().chain([(16, 16, 16)]) {
        let p = generate_problem(Grid::new(nx, ny, nz)).unwrap();
        for i in 0..p.a.rows {
            let (vals, _) = p.a.row(i);
            let row_sum: f64 = vals.iter().sum();
            assert_eq!(p.b[i], row_sum);
            assert_eq!(p.b[i], 27.0 - f64::from(p.a.row_len[i]));
        }
        assert!(p.x.iter().all(|&v| v == 0.0));
        assert!(p.xexact.iter().all(|&v| v == 1.0));
    }
    // An interior row sums to 0, a corner to 26 − 7 = 19.
    let p = generate_problem(Grid::new(16, 16, 16)).unwrap();
    assert_eq!(p.b[0], 19.0);
    assert_eq!(p.b[1 + 16 * (1 + 16)], 0.0);
}

#[test]
fn injection_maps_coarse_points_to_even_fine_points() {
    for (nx, ny, nz) in [(8, 8, 8), (4, 6, 2), (16, 8, 24)] {
        let fine = Grid::new(nx, ny, nz);
        let f2c: Vec<usize> = fine_to_coarse(fine)
            .into_iter()
            .map(|f| f as usize)
            .collect();
        assert_eq!(f2c, dense::injection(fine));
    }
}

#[test]
fn generation_rejects_empty_grids() {
    assert_eq!(generate_matrix(Grid::new(0, 4, 4)), Err(GridError::Empty));
    assert_eq!(
        generate_matrix(Grid::new(1 << 20, 1 << 20, 1 << 20)),
        Err(GridError::TooLarge)
    );
}
