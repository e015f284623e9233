//! The VT-d second-level format ([`VtdFormat`], VT-d spec §9.8): the generic scenarios that do
//! not need rights or memory types VT-d lacks, its entry bits, and what it refuses.

use super::*;
use crate::VtdFormat;

/// Makes, for each generic scenario `name::<S>()`, a test `name` for the VT-d format.
macro_rules! vtd_format {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                super::$name::<VtdFormat>();
            }
        )*
    };
}

// The generic scenarios that use only rights and types VT-d has (the others map RWX or a second
// memory type, which VT-d refuses; the randomized runs draw from `Spec::PERMS`).
vtd_format!(
    new_tree_is_one_empty_pml4,
    permissions_and_memory_types_per_mapping,
    randomized_1g,
    randomized_2m,
    randomized_4k,
);

const R: u64 = 1;
const W: u64 = 1 << 1;
const PS: u64 = 1 << 7;
const SNP: u64 = 1 << 11;
const RW: Perms = Perms::READ.union(Perms::WRITE);

#[test]
fn vtd_entries_have_the_expected_bits() {
    let mut sl = new_tree::<VtdFormat>(PageSize::Size1G);
    sl.map(g(GIB), h(5 * GIB), GIB, RW, WB).unwrap();
    sl.map(g(2 * GIB), h(7 * GIB), MIB2, Perms::READ, WB)
        .unwrap();
    sl.map(g(3 * GIB), h(0x1234_5000), PAGE, RW, WB).unwrap();
    sl.map(g(3 * GIB + PAGE), h(0x1234_7000), PAGE, Perms::READ, WB)
        .unwrap();
    for (gpa, leaf, len) in [
        // R bit 0, W bit 1, PS bit 7 on large leaves; nothing else (no SNP, no EMT, no X).
        (GIB, (5 * GIB) | R | W | PS, 2),
        (2 * GIB, (7 * GIB) | R | PS, 3),
        (3 * GIB, 0x1234_5000 | R | W, 4),
        (3 * GIB + PAGE, 0x1234_7000 | R, 4),
    ] {
        let path = walk_raw(&sl, gpa);
        assert_eq!(path.last(), Some(&leaf), "leaf for {gpa:#x}: {path:x?}");
        assert_eq!(path.len(), len, "{gpa:#x}: {path:x?}");
        // Table pointers: R|W only, so that leaves alone decide (§3.7.1); never PS (reserved in
        // a PML4E) nor SNP.
        for &t in &path[..path.len() - 1] {
            assert_eq!(t & !ADDR_MASK, R | W, "pointer {t:#x} for {gpa:#x}");
        }
        assert_eq!(leaf & SNP, 0);
    }
    audit(&mut sl);
}

#[test]
fn vtd_translate_split_and_merge() {
    let mut sl = new_tree::<VtdFormat>(PageSize::Size1G);
    sl.map(g(0), h(4 * GIB), GIB, RW, WB).unwrap();
    assert_eq!(
        sl.translate(g(0x1234)),
        Some(Translation {
            hpa: h(4 * GIB + 0x1234),
            perms: RW,
            mem: WB,
            page: PageSize::Size1G,
        })
    );
    assert_eq!(sl.table_pages(), 2);
    // Read-only one page in the middle: 1 GiB → 2 MiB → 4 KiB.
    sl.protect(g(MIB2 + PAGE), PAGE, Perms::READ).unwrap();
    assert_eq!(sl.table_pages(), 4);
    let t = sl.translate(g(MIB2 + PAGE + 8)).unwrap();
    assert_eq!(
        (t.hpa, t.perms, t.page),
        (h(4 * GIB + MIB2 + PAGE + 8), Perms::READ, PageSize::Size4K)
    );
    let t = sl.translate(g(MIB2)).unwrap();
    assert_eq!((t.perms, t.page), (RW, PageSize::Size4K));
    assert_eq!(sl.translate(g(0)).unwrap().page, PageSize::Size2M);
    audit(&mut sl);
    // Back to read-write: the tree merges to the single 1 GiB leaf again.
    sl.protect(g(MIB2 + PAGE), PAGE, RW).unwrap();
    assert_eq!(sl.table_pages(), 2);
    assert_eq!(walk_raw(&sl, 0).last(), Some(&((4 * GIB) | R | W | PS)));
    // Unmapping a page takes DMA to it away (not present = R and W clear).
    sl.unmap(g(GIB - PAGE), PAGE).unwrap();
    assert_eq!(sl.translate(g(GIB - PAGE)), None);
    assert_eq!(
        walk_raw(&sl, GIB - PAGE).last().map(|e| e & (R | W)),
        Some(0)
    );
    audit(&mut sl);
}

#[test]
fn vtd_refuses_execute_and_other_memory_types_and_changes_nothing() {
    let mut sl = new_tree::<VtdFormat>(PageSize::Size1G);
    sl.map(g(0), h(GIB), MIB2, RW, WB).unwrap();
    let before = state(&sl);
    let cases: Vec<(Result<(), EptError>, EptError, &str)> = vec![
        (
            sl.map(g(GIB), h(0), PAGE, Perms::READ | Perms::EXECUTE, WB),
            EptError::PermsNotExpressible {
                perms: Perms::READ | Perms::EXECUTE,
            },
            "no execute right",
        ),
        (
            sl.map(g(GIB), h(0), PAGE, RWX, WB),
            EptError::PermsNotExpressible { perms: RWX },
            "VT-d",
        ),
        (
            sl.map(g(GIB), h(0), PAGE, Perms::EXECUTE, WB),
            EptError::PermsNotExpressible {
                perms: Perms::EXECUTE,
            },
            "--x",
        ),
        (
            sl.map(g(GIB), h(0), PAGE, Perms::WRITE, WB),
            EptError::InvalidPerms {
                perms: Perms::WRITE,
            },
            "-w-",
        ),
        (
            sl.map(g(GIB), h(0), PAGE, RW, MemType::Uncacheable),
            EptError::MemTypeNotExpressible {
                mem: MemType::Uncacheable,
            },
            "WB only",
        ),
        (
            sl.map(g(GIB), h(0), PAGE, RW, MemType::WriteCombining),
            EptError::MemTypeNotExpressible {
                mem: MemType::WriteCombining,
            },
            "VT-d",
        ),
        (
            sl.protect(g(PAGE), PAGE, Perms::READ | Perms::EXECUTE),
            EptError::PermsNotExpressible {
                perms: Perms::READ | Perms::EXECUTE,
            },
            "r-x",
        ),
    ];
    for (got, want, text) in cases {
        assert_eq!(got, Err(want));
        let msg = want.to_string();
        assert!(msg.contains(text), "{msg:?} should name {text:?}");
    }
    assert_eq!(state(&sl), before);
    assert_eq!(sl.translate(g(PAGE)).unwrap().perms, RW);
    // What a caller mirroring an EPT passes: execute dropped, the rest kept.
    assert_eq!(VtdFormat::dma_perms(RWX), RW);
    assert_eq!(
        VtdFormat::dma_perms(Perms::READ | Perms::EXECUTE),
        Perms::READ
    );
    sl.map(g(GIB), h(0), PAGE, VtdFormat::dma_perms(RWX), WB)
        .unwrap();
    assert_eq!(sl.translate(g(GIB)).unwrap().perms, RW);
    audit(&mut sl);
}
