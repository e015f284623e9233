use std::sync::atomic::{AtomicUsize, Ordering};

use super::{eager, test_vector};
use crate::par::{Par, Pool};
use crate::problem::{generate_matrix, Grid};
use crate::sparse::{dot, spmv};
use crate::symgs::{symgs, symgs_sequential};

#[test]
fn every_share_runs_once_per_job_and_its_writes_are_visible() {
    Pool::scoped(4, |pool| {
        assert_eq!(pool.size(), 4);
        for shares in [1, 2, 3, 4, 9] {
            for _round in 0..50 {
                let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
                pool.run(shares, &|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                let counts: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
                let ran = shares.min(4);
                assert!(
                    counts[..ran].iter().all(|&c| c == 1),
                    "{shares}: {counts:?}"
                );
                assert!(
                    counts[ran..].iter().all(|&c| c == 0),
                    "{shares}: {counts:?}"
                );
            }
        }
        // Pieces written on workers are complete when for_each_piece returns.
        let par = eager(4).on_pool(pool);
        let mut v = vec![0usize; 1001];
        par.for_each_piece(&mut v, |start, piece| {
            for (k, e) in piece.iter_mut().enumerate() {
                *e = start + k;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &e)| i == e));
    });
}

#[test]
fn a_panicking_worker_share_reaches_the_caller_and_the_pool_survives() {
    Pool::scoped(3, |pool| {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(3, &|t| assert_ne!(t, 2, "share 2 fails"));
        }));
        assert!(caught.is_err());
        let ran = AtomicUsize::new(0);
        pool.run(3, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 3);
    });
}

#[test]
fn pool_kernels_are_bitwise_the_serial_ones() {
    let a = generate_matrix(Grid::new(16, 16, 24)).unwrap();
    let r = test_vector(a.rows, 21);
    let x0 = test_vector(a.rows, 22);
    let mut serial_gs = x0.clone();
    symgs_sequential(&a, &r, &mut serial_gs, true);
    let mut serial_y = vec![0.0; a.rows];
    spmv(&a, &x0, &mut serial_y, Par::serial());
    let long_x = test_vector(7 * 8192 + 5, 23);
    let long_y = test_vector(7 * 8192 + 5, 24);
    let serial_dot = dot(&long_x, &long_y, Par::serial());
    for size in [2, 3, 5] {
        Pool::scoped(size, |pool| {
            let par = eager(size).on_pool(pool);
            let mut x = x0.clone();
            symgs(&a, &r, &mut x, par);
            assert!(
                x.iter()
                    .zip(&serial_gs)
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "symgs, {size}"
            );
            let mut y = vec![0.0; a.rows];
            spmv(&a, &x0, &mut y, par);
            assert_eq!(y, serial_y);
            assert_eq!(dot(&long_x, &long_y, par).to_bits(), serial_dot.to_bits());
        });
    }
}
