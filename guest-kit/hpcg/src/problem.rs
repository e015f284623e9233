//! The HPCG problem: a 27-point stencil on a box, as the reference's
//! `GenerateProblem_ref` builds it for one process (no halo), and the
//! fine-to-coarse injection map of `GenerateCoarseProblem`.

/// At most 27 entries per row (the stencil point and its 26 neighbours).
pub const STENCIL: usize = 27;

/// The diagonal value the reference puts on every row.
pub const DIAGONAL: f64 = 26.0;

/// The off-diagonal value the reference puts on every neighbour.
pub const OFF_DIAGONAL: f64 = -1.0;

/// The local box: `nx × ny × nz` grid points, row index `x + nx*(y + ny*z)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub nx: usize,
    pub ny: usize,
    pub nz: usize,
}

impl Grid {
    pub const fn new(nx: usize, ny: usize, nz: usize) -> Self {
        Grid { nx, ny, nz }
    }

    pub const fn rows(&self) -> usize {
        self.nx * self.ny * self.nz
    }

    /// The grid of the next coarser multigrid level (each side halved).
    pub const fn coarse(&self) -> Self {
        Grid {
            nx: self.nx / 2,
            ny: self.ny / 2,
            nz: self.nz / 2,
        }
    }

    /// The reference's closed form for the number of nonzeros on a box with
    /// sides ≥ 2: per direction the stencil has `3n − 2` point pairs within the
    /// box (`n` centres, `n − 1` left, `n − 1` right neighbours), and the 3-D
    /// count is their product.
    pub const fn stencil_nonzeros(&self) -> usize {
        (3 * self.nx - 2) * (3 * self.ny - 2) * (3 * self.nz - 2)
    }
}

/// A sparse matrix stored like the reference's: up to 27 entries per row in
/// a fixed-width slot, in the stencil order (z, then y, then x offsets from −1
/// to +1), so the entries left of the diagonal are exactly the lower triangle.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseMatrix {
    pub grid: Grid,
    /// Number of rows (= columns; single process, so no halo columns).
    pub rows: usize,
    /// Total number of stored nonzeros.
    pub nonzeros: usize,
    /// Entries in row `i`: `row_len[i]` ≤ 27.
    pub row_len: Vec<u8>,
    /// Position of the diagonal entry within row `i`'s slot.
    pub diag_slot: Vec<u8>,
    /// Row `i`'s values are `values[27*i .. 27*i + row_len[i]]`.
    pub values: Vec<f64>,
    /// Column indices, same layout as `values`.
    pub cols: Vec<u32>,
}

impl SparseMatrix {
    /// Row `i`'s values and column indices.
    #[inline]
    pub fn row(&self, i: usize) -> (&[f64], &[u32]) {
        let base = i * STENCIL;
        let len = usize::from(self.row_len[i]);
        (&self.values[base..base + len], &self.cols[base..base + len])
    }

    /// Row `i`'s diagonal value.
    #[inline]
    pub fn diagonal(&self, i: usize) -> f64 {
        self.values[i * STENCIL + usize::from(self.diag_slot[i])]
    }

    /// Overwrites row `i`'s diagonal value (the reference's `ReplaceMatrixDiagonal`).
    pub fn set_diagonal(&mut self, i: usize, value: f64) {
        self.values[i * STENCIL + usize::from(self.diag_slot[i])] = value;
    }

    /// All diagonal values, in row order (the reference's `CopyMatrixDiagonal`).
    pub fn diagonal_vector(&self) -> Vec<f64> {
        (0..self.rows).map(|i| self.diagonal(i)).collect()
    }
}

/// The vectors `GenerateProblem_ref` creates beside the matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub a: SparseMatrix,
    /// Right-hand side: `b = A·1`, i.e. 26 − (row's neighbour count).
    pub b: Vec<f64>,
    /// Initial guess: zero.
    pub x: Vec<f64>,
    /// Exact solution: all ones.
    pub xexact: Vec<f64>,
}

/// Why a grid cannot be generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GridError {
    /// A side is zero.
    Empty,
    /// Rows or nonzeros would not fit the 32-bit column indices.
    TooLarge,
}

/// Builds the stencil matrix on `grid` (the reference's `GenerateProblem_ref`
/// with one process: global and local indices coincide).
pub fn generate_matrix(grid: Grid) -> Result<SparseMatrix, GridError> {
    let Grid { nx, ny, nz } = grid;
    if nx == 0 || ny == 0 || nz == 0 {
        return Err(GridError::Empty);
    }
    let rows = nx
        .checked_mul(ny)
        .and_then(|r| r.checked_mul(nz))
        .ok_or(GridError::TooLarge)?;
    if u32::try_from(rows).is_err() || rows.checked_mul(STENCIL).is_none() {
        return Err(GridError::TooLarge);
    }
    let mut row_len = vec![0u8; rows];
    let mut diag_slot = vec![0u8; rows];
    let mut values = vec![0.0f64; rows * STENCIL];
    let mut cols = vec![0u32; rows * STENCIL];
    let mut nonzeros = 0usize;
    // Offsets in {-1, 0, 1} along one axis that stay inside [0, n).
    let offsets = |pos: usize, n: usize| {
        (-1isize..=1).filter(move |d| pos.checked_add_signed(*d).is_some_and(|p| p < n))
    };
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let row = x + nx * (y + ny * z);
                let base = row * STENCIL;
                let mut len = 0usize;
                for dz in offsets(z, nz) {
                    for dy in offsets(y, ny) {
                        for dx in offsets(x, nx) {
                            // In range by construction of `offsets`.
                            let col = (x as isize + dx) as usize
                                + nx * ((y as isize + dy) as usize
                                    + ny * (z as isize + dz) as usize);
                            if col == row {
                                diag_slot[row] = len as u8;
                                values[base + len] = DIAGONAL;
                            } else {
                                values[base + len] = OFF_DIAGONAL;
                            }
                            cols[base + len] = col as u32;
                            len += 1;
                        }
                    }
                }
                row_len[row] = len as u8;
                nonzeros += len;
            }
        }
    }
    Ok(SparseMatrix {
        grid,
        rows,
        nonzeros,
        row_len,
        diag_slot,
        values,
        cols,
    })
}

/// The matrix plus `b`, `x = 0` and `xexact = 1`, as the reference generates
/// them for the finest level.
pub fn generate_problem(grid: Grid) -> Result<Problem, GridError> {
    let a = generate_matrix(grid)?;
    // The reference writes 26 − (nnz − 1): the row sum of A, so A·1 = b exactly.
    let b = a
        .row_len
        .iter()
        .map(|&len| DIAGONAL - f64::from(len - 1))
        .collect();
    let rows = a.rows;
    Ok(Problem {
        a,
        b,
        x: vec![0.0; rows],
        xexact: vec![1.0; rows],
    })
}

/// The injection map of `GenerateCoarseProblem`: coarse row `(xc, yc, zc)`
/// takes the fine row `(2xc, 2yc, 2zc)`.
pub fn fine_to_coarse(fine: Grid) -> Vec<u32> {
    let coarse = fine.coarse();
    let mut f2c = Vec::with_capacity(coarse.rows());
    for zc in 0..coarse.nz {
        for yc in 0..coarse.ny {
            for xc in 0..coarse.nx {
                let fine_row = 2 * xc + fine.nx * (2 * yc + fine.ny * 2 * zc);
                f2c.push(fine_row as u32);
            }
        }
    }
    f2c
}
