//! A dense, geometry-driven model of the HPCG problem and its multigrid,
//! written without reference to the sparse code's data layout.

use crate::problem::Grid;

/// Dense row-major `n×n` matrix.
pub(crate) struct Dense {
    pub n: usize,
    pub a: Vec<f64>,
}

impl Dense {
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.a[i * self.n + j]
    }

    pub fn mul(&self, x: &[f64]) -> Vec<f64> {
        (0..self.n)
            .map(|i| (0..self.n).map(|j| self.at(i, j) * x[j]).sum())
            .collect()
    }
}

pub(crate) fn coords(grid: Grid, i: usize) -> (usize, usize, usize) {
    (
        i % grid.nx,
        (i / grid.nx) % grid.ny,
        i / (grid.nx * grid.ny),
    )
}

/// 26 on the diagonal, −1 between points at Chebyshev distance 1.
pub(crate) fn stencil(grid: Grid) -> Dense {
    let n = grid.rows();
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        let (xi, yi, zi) = coords(grid, i);
        for j in 0..n {
            let (xj, yj, zj) = coords(grid, j);
            let near = xi.abs_diff(xj) <= 1 && yi.abs_diff(yj) <= 1 && zi.abs_diff(zj) <= 1;
            a[i * n + j] = if i == j {
                26.0
            } else if near {
                -1.0
            } else {
                0.0
            };
        }
    }
    Dense { n, a }
}

/// Textbook Gauss-Seidel sweep: x_i = (r_i − Σ_{j≠i} a_ij x_j) / a_ii.
pub(crate) fn gauss_seidel(
    a: &Dense,
    r: &[f64],
    x: &mut [f64],
    order: impl Iterator<Item = usize>,
) {
    for i in order {
        let off: f64 = (0..a.n)
            .filter(|&j| j != i)
            .map(|j| a.at(i, j) * x[j])
            .sum();
        x[i] = (r[i] - off) / a.at(i, i);
    }
}

pub(crate) fn symmetric_gauss_seidel(a: &Dense, r: &[f64], x: &mut [f64]) {
    gauss_seidel(a, r, x, 0..a.n);
    gauss_seidel(a, r, x, (0..a.n).rev());
}

/// Coarse point (xc, yc, zc) ↔ fine point (2xc, 2yc, 2zc), from coordinates.
pub(crate) fn injection(fine: Grid) -> Vec<usize> {
    let coarse = Grid::new(fine.nx / 2, fine.ny / 2, fine.nz / 2);
    (0..coarse.rows())
        .map(|k| {
            let (x, y, z) = coords(coarse, k);
            let (fx, fy, fz) = (2 * x, 2 * y, 2 * z);
            (0..fine.rows())
                .find(|&i| coords(fine, i) == (fx, fy, fz))
                .expect("fine point exists")
        })
        .collect()
}

/// The V-cycle written out recursively on dense matrices.
pub(crate) fn v_cycle(grids: &[Grid], mats: &[Dense], r: &[f64]) -> Vec<f64> {
    let a = &mats[0];
    let mut x = vec![0.0; a.n];
    if mats.len() == 1 {
        symmetric_gauss_seidel(a, r, &mut x);
        return x;
    }
    symmetric_gauss_seidel(a, r, &mut x);
    let ax = a.mul(&x);
    let map = injection(grids[0]);
    let rc: Vec<f64> = map.iter().map(|&f| r[f] - ax[f]).collect();
    let xc = v_cycle(&grids[1..], &mats[1..], &rc);
    for (k, &f) in map.iter().enumerate() {
        x[f] += xc[k];
    }
    symmetric_gauss_seidel(a, r, &mut x);
    x
}

/// Textbook preconditioned CG (Saad, Alg. 9.1), returning ‖r_k‖/‖r_0‖.
pub(crate) fn pcg(
    a: &Dense,
    b: &[f64],
    iters: usize,
    precond: &dyn Fn(&[f64]) -> Vec<f64>,
) -> Vec<f64> {
    let dotp = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(p, q)| p * q).sum::<f64>();
    let n = a.n;
    let mut x = vec![0.0; n];
    let mut r = b.to_vec();
    let r0 = dotp(&r, &r).sqrt();
    let mut z = precond(&r);
    let mut p = z.clone();
    let mut rz = dotp(&r, &z);
    let mut out = Vec::new();
    for _ in 0..iters {
        let ap = a.mul(&p);
        let alpha = rz / dotp(&p, &ap);
        for i in 0..n {
            x[i] += alpha * p[i];
            r[i] -= alpha * ap[i];
        }
        out.push(dotp(&r, &r).sqrt() / r0);
        z = precond(&r);
        let rz_new = dotp(&r, &z);
        let beta = rz_new / rz;
        rz = rz_new;
        for i in 0..n {
            p[i] = z[i] + beta * p[i];
        }
    }
    out
}
