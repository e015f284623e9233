//! Host tests of the engine: a fake frame source, a reference model of what should be mapped,
//! a structural audit of the tree, fixed scenarios and long randomized runs. Everything that is
//! not about one format's bits runs for both: [`Spec`] is each format's rules written out again
//! independently of [`crate::format`], and `both_formats!` makes an `ept` and an `npt` test of
//! each generic scenario.

use super::*;
use crate::entry::{ADDR_MASK, ADDR_MASK_1G, ADDR_MASK_2M};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

mod spec;
mod vtd;
use spec::Spec;

/// Makes, for each generic scenario `name::<S>()`, tests `name::ept` and `name::npt`.
macro_rules! both_formats {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn ept() {
                    super::$name::<crate::EptFormat>();
                }

                #[test]
                fn npt() {
                    super::$name::<crate::NptFormat>();
                }
            }
        )*
    };
}

const PAGE: u64 = PAGE_SIZE;
const MIB2: u64 = 1 << 21;
const GIB: u64 = 1 << 30;
const RWX: Perms = Perms::all();
const WB: MemType = MemType::WriteBack;

fn g(addr: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(addr)
}

fn h(addr: u64) -> HostPhysAddr {
    HostPhysAddr::new(addr)
}

/// Frame address → table, hashed by a multiply (SipHash dominates unoptimized test runs).
type Frames = HashMap<u64, Box<[u64; 512]>, BuildHasherDefault<FrameHasher>>;

#[derive(Default)]
struct FrameHasher(u64);

impl Hasher for FrameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Table memory from the heap: frames are boxed arrays keyed by a made-up physical address.
/// Freed addresses are reused (last freed, first reused) so that stale pointers would show.
struct FakeFrames {
    frames: Frames,
    next: u64,
    free: Vec<u64>,
    /// Frames that may still be handed out, when limited.
    budget: Option<usize>,
}

impl FakeFrames {
    fn new() -> Self {
        Self {
            frames: Frames::default(),
            next: 0x7_0000_0000,
            free: Vec::new(),
            budget: None,
        }
    }

    fn live(&self) -> usize {
        self.frames.len()
    }

    /// Every live frame and its contents, by address.
    fn snapshot(&self) -> Snapshot {
        let mut all: Vec<_> = self.frames.iter().map(|(&a, t)| (a, t.clone())).collect();
        all.sort_unstable_by_key(|&(a, _)| a);
        all
    }
}

// SAFETY: every frame is a separate heap allocation that stays in place (boxes do not move when
// the map rehashes) until `free_frame` drops it, and addresses are never handed out twice while
// live. Test code reads frame contents only through a shared borrow of the `Ept`, so never
// while one of its methods is writing through the pointers.
unsafe impl FrameSource for FakeFrames {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        if let Some(budget) = &mut self.budget {
            *budget = budget.checked_sub(1)?;
        }
        let addr = self.free.pop().unwrap_or_else(|| {
            self.next += PAGE;
            self.next
        });
        assert!(self.frames.insert(addr, Box::new([0; 512])).is_none());
        Some(h(addr))
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        assert!(
            self.frames.remove(&frame.as_u64()).is_some(),
            "freeing {frame:?}, which is not allocated"
        );
        self.free.push(frame.as_u64());
    }

    fn table(&mut self, frame: HostPhysAddr) -> *mut [u64; 512] {
        let table = self
            .frames
            .get_mut(&frame.as_u64())
            .unwrap_or_else(|| panic!("table of unallocated frame {frame:?}"));
        &mut **table
    }
}

/// A tree of format `S` over fake frames.
type Tree<S> = Tables<S, FakeFrames>;

fn new_tree<S: Spec>(max: PageSize) -> Tree<S> {
    Tables::new(FakeFrames::new(), max).expect("PML4")
}

/// Every live frame with its contents, by address.
type Snapshot = Vec<(u64, Box<[u64; 512]>)>;

/// Everything that must stay put when an operation fails.
fn state<S: Spec>(ept: &Tree<S>) -> (Snapshot, usize) {
    (ept.frame_source().snapshot(), ept.table_pages())
}

/// The mapped regions as the processor would find them, read straight from the fake's memory
/// by a walk written independently of the builder's (SDM Vol. 3C §29.3.2, APM Vol. 2
/// §15.25.5), with the format's bits read by [`Spec`]. Kept lean: it runs after every
/// randomized step.
fn raw_regions<S: Spec>(ept: &Tree<S>) -> Vec<Region> {
    /// A region being built: first gpa, first hpa, length, attribute bits.
    type Open = Option<(u64, u64, u64, u64)>;
    fn close<S: Spec>(open: Open, out: &mut Vec<Region>) {
        if let Some((gpa, hpa, len, attrs)) = open {
            let (perms, mem) = S::decode(attrs);
            out.push(Region {
                gpa: g(gpa),
                hpa: h(hpa),
                len,
                perms,
                mem,
            });
        }
    }
    fn walk<S: Spec>(
        frames: &Frames,
        table: u64,
        level: u32,
        base: u64,
        open: &mut Open,
        out: &mut Vec<Region>,
    ) {
        let span = 1u64 << (12 + 9 * (level - 1));
        let t: &[u64; 512] = &frames[&table];
        let mut i = 0;
        while i < 512 {
            if i % 64 == 0 && t[i..i + 64] == [0; 64] {
                i += 64; // memcmp, fast even unoptimized
                continue;
            }
            let raw = t[i];
            if level == 1 && i > 0 && S::present(raw) && raw == t[i - 1] + PAGE {
                // The previous leaf, one page on: it extends the open region.
                if let Some((.., len, _)) = open {
                    *len += PAGE;
                }
                i += 1;
                continue;
            }
            let gpa = base + i as u64 * span;
            i += 1;
            if !S::present(raw) {
                continue;
            }
            // Bit 7 is "maps a page" in a PDPT or PD entry of both formats.
            if level == 4 || (level > 1 && raw & (1 << 7) == 0) {
                walk::<S>(frames, raw & ADDR_MASK, level - 1, gpa, open, out);
                continue;
            }
            let hpa = raw & ADDR_MASK & !(span - 1);
            let attrs = S::key(raw, level as u8);
            match open {
                Some((g0, h0, len, a)) if *g0 + *len == gpa && *h0 + *len == hpa && *a == attrs => {
                    *len += span
                }
                _ => close::<S>(open.replace((gpa, hpa, span, attrs)), out),
            }
        }
    }
    let (mut open, mut out) = (None, Vec::new());
    walk::<S>(
        &ept.frames.frames,
        ept.pml4().as_u64(),
        4,
        0,
        &mut open,
        &mut out,
    );
    close::<S>(open, &mut out);
    out
}

fn page_of<S: Spec>(ept: &mut Tree<S>, gpa: u64) -> Option<PageSize> {
    ept.translate(g(gpa)).map(|t| t.page)
}

// ---------------------------------------------------------------------------------------------
// Structural audit.

/// Walks the whole tree and checks what the manuals require of every entry (no reserved bit
/// set, rights and memory types the format has, SDM Vol. 3C §29.3.3.1, APM Vol. 2 §5.4; table
/// pointers granting everything, with U/S for NPT, APM §15.25.5) and what the builder promises
/// (no empty table but the PML4, no table that should have been merged, `table_pages` equal to
/// the tables reachable and to the frames the source has out).
fn audit<S: Spec>(ept: &mut Tree<S>) {
    let mut seen = HashSet::new();
    let root = ept.pml4();
    audit_table(ept, root, ROOT_LEVEL, 0, &mut seen);
    assert_eq!(seen.len(), ept.table_pages(), "tables reachable");
    assert_eq!(ept.frame_source().live(), ept.table_pages(), "frames out");
}

fn audit_table<S: Spec>(
    ept: &mut Tree<S>,
    frame: HostPhysAddr,
    level: u8,
    base: u64,
    seen: &mut HashSet<u64>,
) {
    assert!(seen.insert(frame.as_u64()), "table {frame:?} linked twice");
    let t = ept.table(frame);
    let mut present = 0;
    for i in 0..ENTRIES {
        let e = t.get(i);
        let raw = e.raw();
        let gpa = base + i as u64 * span(level);
        assert_eq!(e.is_present(), S::present(raw), "presence of {e:?}");
        if !e.is_present() {
            assert_eq!(raw, 0, "stale bits in not-present entry for {gpa:#x}");
            continue;
        }
        present += 1;
        if e.is_leaf_at(level) {
            let size = PageSize::at_level(level).expect("leaf level");
            assert!(
                size <= ept.max_page(),
                "{size} leaf at {gpa:#x} beyond max page"
            );
            let (perms, _) = S::decode(S::key(raw, level));
            assert!(S::PERMS.contains(&perms), "leaf {e:?} at {gpa:#x}");
            assert_eq!(e.perms(), perms, "leaf {e:?} at {gpa:#x}");
            if level >= 2 {
                assert_ne!(raw & (1 << 7), 0, "bit 7 of leaf {e:?} at {gpa:#x}");
            }
            let mask = [ADDR_MASK, ADDR_MASK_2M, ADDR_MASK_1G][level as usize - 1];
            let allowed = mask | S::leaf_bits(level);
            assert_eq!(raw & !allowed, 0, "reserved bits in leaf {e:?} at {gpa:#x}");
            assert!(e.leaf_addr_at(level) + span(level) <= HPA_LIMIT);
        } else {
            assert!(level >= 2, "non-leaf in a page table");
            assert_eq!(
                raw & !(ADDR_MASK | S::TABLE_BITS),
                0,
                "reserved bits in {e:?} at {gpa:#x}"
            );
            assert_eq!(
                raw & S::TABLE_BITS,
                S::TABLE_BITS,
                "table entry {e:?} restricts rights"
            );
            audit_table(ept, e.table_addr(), level - 1, gpa, seen);
            if ept.leaf_allowed(level) {
                assert!(
                    !uniform(ept, e.table_addr(), level - 1),
                    "table under {gpa:#x} (level {level}) should have been merged"
                );
            }
        }
    }
    if level != ROOT_LEVEL {
        assert!(present > 0, "empty table for {base:#x} at level {level}");
    }
}

/// Whether the table at `frame` (at `level`) holds 512 leaves that one page could replace;
/// written independently of `merged`.
fn uniform<S: Spec>(ept: &mut Tree<S>, frame: HostPhysAddr, level: u8) -> bool {
    let t = ept.table(frame);
    let first = t.get(0);
    let key = |e: Entry<S>| S::key(e.raw(), level);
    (0..ENTRIES).all(|i| {
        let e = t.get(i);
        e.is_leaf_at(level)
            && key(e) == key(first)
            && e.leaf_addr_at(level) == first.leaf_addr_at(level) + i as u64 * span(level)
    }) && first.leaf_addr_at(level) % span(level + 1) == 0
}

// ---------------------------------------------------------------------------------------------
// Fixed scenarios.

fn new_tree_is_one_empty_pml4<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    assert_eq!(ept.table_pages(), 1);
    assert_eq!(ept.frame_source().live(), 1);
    assert_eq!(ept.translate(g(0)), None);
    assert_eq!(ept.regions().count(), 0);
    S::check_root(&ept);
    audit(&mut ept);
    let frames = ept.destroy();
    assert_eq!(frames.live(), 0);
}

fn one_gib_aligned_is_one_pdpt_leaf<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    ept.map(g(GIB), h(5 * GIB), GIB, RWX, WB).unwrap();
    assert_eq!(ept.table_pages(), 2);
    let t = ept.translate(g(GIB + 0x12_3456)).unwrap();
    assert_eq!(
        t,
        Translation {
            hpa: h(5 * GIB + 0x12_3456),
            perms: RWX,
            mem: WB,
            page: PageSize::Size1G
        }
    );
    assert_eq!(ept.translate(g(GIB - 1)), None);
    assert_eq!(ept.translate(g(2 * GIB)), None);
    audit(&mut ept);
}

fn two_mib_aligned_is_one_pd_leaf<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    ept.map(
        g(3 * MIB2),
        h(7 * MIB2),
        MIB2,
        Perms::READ,
        MemType::Uncacheable,
    )
    .unwrap();
    assert_eq!(ept.table_pages(), 3);
    let t = ept.translate(g(3 * MIB2 + 0x1000)).unwrap();
    assert_eq!(t.page, PageSize::Size2M);
    assert_eq!(t.hpa, h(7 * MIB2 + 0x1000));
    assert_eq!(t.mem, MemType::Uncacheable);
    assert_eq!(t.perms, Perms::READ);
    audit(&mut ept);
}

/// 3 pages, 2 MiB, 1 GiB, 2 MiB, 5 pages, with host and guest addresses congruent modulo
/// 1 GiB, 2 MiB and 4 KiB in turn.
fn unaligned_mix_uses_expected_pages_and_tables<S: Spec>() {
    let gpa = 0x3fe0_0000 - 3 * PAGE;
    let len = 3 * PAGE + MIB2 + GIB + MIB2 + 5 * PAGE;
    let pieces = [
        (gpa, PageSize::Size4K),
        (gpa + 2 * PAGE, PageSize::Size4K),
        (0x3fe0_0000, PageSize::Size2M),
        (GIB, PageSize::Size1G),
        (2 * GIB - PAGE, PageSize::Size1G),
        (2 * GIB, PageSize::Size2M),
        (2 * GIB + MIB2, PageSize::Size4K),
        (2 * GIB + MIB2 + 4 * PAGE, PageSize::Size4K),
    ];
    for (host_shift, tables, force) in [
        // PML4, PDPT, PD of GiB 0 and its PT, PD of GiB 2 and its PT.
        (64 * GIB, 6, None),
        // GiB 1 becomes a PD of 2 MiB leaves.
        (64 * GIB + MIB2, 7, Some(PageSize::Size2M)),
        // Everything 4 KiB: 3 PDs and 2 + 512 + 2 PTs.
        (64 * GIB + PAGE, 2 + 3 + 516, Some(PageSize::Size4K)),
    ] {
        let mut ept = new_tree::<S>(PageSize::Size1G);
        ept.map(g(gpa), h(gpa + host_shift), len, RWX, WB).unwrap();
        assert_eq!(ept.table_pages(), tables, "host shift {host_shift:#x}");
        for (at, size) in pieces {
            let t = ept.translate(g(at)).unwrap();
            let want = force.map_or(size, |f| f.min(size));
            assert_eq!(t.page, want, "page at {at:#x}, host shift {host_shift:#x}");
            assert_eq!(t.hpa, h(at + host_shift));
        }
        assert_eq!(ept.translate(g(gpa - PAGE)), None);
        assert_eq!(ept.translate(g(gpa + len)), None);
        let regions: Vec<_> = ept.regions().collect();
        assert_eq!(
            regions,
            [Region {
                gpa: g(gpa),
                hpa: h(gpa + host_shift),
                len,
                perms: RWX,
                mem: WB
            }]
        );
        audit(&mut ept);
        assert_eq!(ept.destroy().live(), 0);
    }
}

fn max_page_is_respected<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size2M);
    ept.map(g(GIB), h(4 * GIB), 2 * GIB, RWX, WB).unwrap();
    // PML4, PDPT and one PD of 2 MiB leaves per GiB.
    assert_eq!(ept.table_pages(), 4);
    assert_eq!(page_of(&mut ept, GIB), Some(PageSize::Size2M));
    assert_eq!(page_of(&mut ept, 3 * GIB - PAGE), Some(PageSize::Size2M));
    audit(&mut ept);
    // Completing a GiB out of 2 MiB pieces does not merge either.
    for i in 0..512 {
        ept.map(g(8 * GIB + i * MIB2), h(16 * GIB + i * MIB2), MIB2, RWX, WB)
            .unwrap();
    }
    assert_eq!(ept.table_pages(), 5);
    assert_eq!(page_of(&mut ept, 8 * GIB), Some(PageSize::Size2M));
    audit(&mut ept);

    let mut ept = new_tree::<S>(PageSize::Size4K);
    ept.map(g(GIB), h(GIB), 2 * MIB2, RWX, WB).unwrap();
    assert_eq!(ept.table_pages(), 5);
    assert_eq!(page_of(&mut ept, GIB + MIB2), Some(PageSize::Size4K));
    audit(&mut ept);
}

fn unmapping_one_page_splits_and_remapping_merges_back<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    ept.map(g(GIB), h(5 * GIB), GIB, RWX, WB).unwrap();
    let hole = GIB + 0x12_3000;
    ept.unmap(g(hole), PAGE).unwrap();
    assert_eq!(ept.table_pages(), 4); // PML4, PDPT, PD, PT
    assert_eq!(ept.translate(g(hole)), None);
    for (at, size) in [
        (GIB, PageSize::Size4K),
        (hole - PAGE, PageSize::Size4K),
        (hole + PAGE, PageSize::Size4K),
        (GIB + MIB2 - PAGE, PageSize::Size4K),
        (GIB + MIB2, PageSize::Size2M),
        (2 * GIB - PAGE, PageSize::Size2M),
    ] {
        let t = ept.translate(g(at)).unwrap();
        assert_eq!((t.hpa, t.page), (h(at + 4 * GIB), size), "at {at:#x}");
    }
    assert_eq!(ept.regions().count(), 2);
    audit(&mut ept);

    ept.map(g(hole), h(hole + 4 * GIB), PAGE, RWX, WB).unwrap();
    assert_eq!(ept.table_pages(), 2);
    assert_eq!(page_of(&mut ept, hole), Some(PageSize::Size1G));
    audit(&mut ept);

    // The same with a different host page or attributes must not merge.
    ept.unmap(g(hole), PAGE).unwrap();
    ept.map(g(hole), h(hole + 4 * GIB), PAGE, RWX, MemType::WriteThrough)
        .unwrap();
    assert_eq!(ept.table_pages(), 4);
    ept.unmap(g(hole), PAGE).unwrap();
    ept.map(g(hole), h(hole + 8 * GIB), PAGE, RWX, WB).unwrap();
    assert_eq!(ept.table_pages(), 4);
    audit(&mut ept);
}

fn protect_splits_and_merges_back<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    ept.map(g(0), h(GIB), GIB, RWX, S::OTHER_MEM).unwrap();
    ept.protect(g(0x40_0000), PAGE, Perms::READ).unwrap();
    assert_eq!(ept.table_pages(), 4);
    let t = ept.translate(g(0x40_0000)).unwrap();
    assert_eq!(
        (t.perms, t.mem, t.page),
        (Perms::READ, S::OTHER_MEM, PageSize::Size4K)
    );
    assert_eq!(ept.translate(g(0x40_1000)).unwrap().perms, RWX);
    audit(&mut ept);
    // Same rights: nothing to split.
    ept.protect(g(0x80_0000), 3 * PAGE, RWX).unwrap();
    assert_eq!(ept.table_pages(), 4);
    ept.protect(g(0x40_0000), PAGE, RWX).unwrap();
    assert_eq!(ept.table_pages(), 2);
    assert_eq!(page_of(&mut ept, 0x40_0000), Some(PageSize::Size1G));
    // Whole large pages change in place.
    ept.protect(g(0), GIB, Perms::READ | Perms::EXECUTE)
        .unwrap();
    assert_eq!(ept.table_pages(), 2);
    assert_eq!(
        ept.translate(g(0x1000)).unwrap().perms,
        Perms::READ | Perms::EXECUTE
    );
    audit(&mut ept);
}

fn merging_cascades_from_pages_to_a_gib<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    let host = 9 * GIB;
    // All of a GiB but its last 2 MiB, in 2 MiB steps, out of order.
    for i in (0..511).rev() {
        ept.map(g(GIB + i * MIB2), h(host + i * MIB2), MIB2, RWX, WB)
            .unwrap();
    }
    assert_eq!(ept.table_pages(), 3);
    // The last 2 MiB page by page; the last page completes a PT (merged into a 2 MiB leaf),
    // which completes the PD (merged into a 1 GiB leaf).
    let last = GIB + 511 * MIB2;
    for i in 0..512 {
        ept.map(
            g(last + i * PAGE),
            h(host + 511 * MIB2 + i * PAGE),
            PAGE,
            RWX,
            WB,
        )
        .unwrap();
        if i < 511 {
            assert_eq!(ept.table_pages(), 4);
        }
    }
    assert_eq!(ept.table_pages(), 2);
    assert_eq!(page_of(&mut ept, GIB), Some(PageSize::Size1G));
    audit(&mut ept);
}

fn unmap_frees_emptied_tables<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    ept.map(g(GIB), h(3 * GIB), GIB, RWX, WB).unwrap();
    ept.unmap(g(GIB + PAGE), GIB - 2 * PAGE).unwrap();
    // PML4, PDPT, PD and the two end PTs.
    assert_eq!(ept.table_pages(), 5);
    assert_eq!(ept.translate(g(GIB)).unwrap().hpa, h(3 * GIB));
    assert_eq!(
        ept.translate(g(2 * GIB - PAGE)).unwrap().hpa,
        h(4 * GIB - PAGE)
    );
    assert_eq!(ept.translate(g(GIB + PAGE)), None);
    audit(&mut ept);
    ept.unmap(g(GIB), PAGE).unwrap();
    assert_eq!(ept.table_pages(), 4);
    // Unmapping holes is fine, and everything left goes.
    ept.unmap(g(0), 4 * GIB).unwrap();
    assert_eq!(ept.table_pages(), 1);
    assert_eq!(ept.frame_source().live(), 1);
    ept.unmap(g(0), 4 * GIB).unwrap();
    audit(&mut ept);
}

fn permissions_and_memory_types_per_mapping<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    // Every right and every memory type of the format, in distinct pairs.
    let n = S::PERMS.len().max(S::MEMS.len());
    let cases: Vec<_> = (0..n)
        .map(|i| (S::PERMS[i % S::PERMS.len()], S::MEMS[i % S::MEMS.len()]))
        .collect();
    for (i, &(perms, mem)) in cases.iter().enumerate() {
        let i = i as u64;
        ept.map(g(i * MIB2), h(GIB + i * MIB2), MIB2, perms, mem)
            .unwrap();
        ept.map(g(GIB + i * PAGE), h(8 * GIB + i * PAGE), PAGE, perms, mem)
            .unwrap();
    }
    for (i, &(perms, mem)) in cases.iter().enumerate() {
        let i = i as u64;
        for (at, size) in [
            (i * MIB2 + 0x5000, PageSize::Size2M),
            (GIB + i * PAGE, PageSize::Size4K),
        ] {
            let t = ept.translate(g(at)).unwrap();
            assert_eq!((t.perms, t.mem, t.page), (perms, mem, size), "at {at:#x}");
        }
    }
    // Differing attributes keep neighbours apart.
    assert_eq!(ept.regions().count(), 2 * n);
    audit(&mut ept);
}

fn regions_coalesce_across_page_sizes<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    ept.map(
        g(GIB - 2 * PAGE),
        h(9 * GIB - 2 * PAGE),
        GIB + MIB2 + 4 * PAGE,
        RWX,
        WB,
    )
    .unwrap();
    ept.map(g(8 * GIB), h(0), PAGE, Perms::READ, WB).unwrap();
    ept.map(
        g(8 * GIB + PAGE),
        h(PAGE),
        PAGE,
        Perms::READ,
        MemType::Uncacheable,
    )
    .unwrap();
    let got: Vec<_> = ept.regions().collect();
    assert_eq!(
        got,
        [
            Region {
                gpa: g(GIB - 2 * PAGE),
                hpa: h(9 * GIB - 2 * PAGE),
                len: GIB + MIB2 + 4 * PAGE,
                perms: RWX,
                mem: WB
            },
            Region {
                gpa: g(8 * GIB),
                hpa: h(0),
                len: PAGE,
                perms: Perms::READ,
                mem: WB
            },
            Region {
                gpa: g(8 * GIB + PAGE),
                hpa: h(PAGE),
                len: PAGE,
                perms: Perms::READ,
                mem: MemType::Uncacheable
            },
        ]
    );
}

fn top_of_the_address_spaces<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    ept.map(g(GPA_LIMIT - GIB), h(HPA_LIMIT - GIB), GIB, RWX, WB)
        .unwrap();
    let t = ept.translate(g(GPA_LIMIT - 1)).unwrap();
    assert_eq!((t.hpa, t.page), (h(HPA_LIMIT - 1), PageSize::Size1G));
    assert_eq!(ept.translate(g(GPA_LIMIT)), None);
    assert_eq!(ept.translate(g(u64::MAX)), None);
    ept.unmap(g(GPA_LIMIT - PAGE), PAGE).unwrap();
    assert_eq!(
        ept.translate(g(GPA_LIMIT - 2 * PAGE)).unwrap().hpa,
        h(HPA_LIMIT - 2 * PAGE)
    );
    audit(&mut ept);
}

fn errors_name_the_value_and_change_nothing<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    ept.map(g(GIB), h(GIB), 2 * PAGE, RWX, WB).unwrap();
    ept.map(g(GIB + 3 * PAGE), h(GIB), PAGE, RWX, WB).unwrap();
    let before = state(&ept);
    let cases: Vec<(Result<(), EptError>, EptError, &str)> = vec![
        (
            ept.map(g(0x1234), h(0), PAGE, RWX, WB),
            EptError::Misaligned {
                what: Operand::Gpa,
                value: 0x1234,
            },
            "guest-physical address 0x1234",
        ),
        (
            ept.map(g(0), h(0xabc_d010), PAGE, RWX, WB),
            EptError::Misaligned {
                what: Operand::Hpa,
                value: 0xabc_d010,
            },
            "host-physical address 0xabcd010",
        ),
        (
            ept.map(g(0), h(0), 0x1800, RWX, WB),
            EptError::Misaligned {
                what: Operand::Len,
                value: 0x1800,
            },
            "length 0x1800",
        ),
        (
            ept.unmap(g(0x77_7000), 0),
            EptError::ZeroLength { gpa: g(0x77_7000) },
            "0x777000",
        ),
        (
            ept.map(g(GPA_LIMIT - PAGE), h(0), 2 * PAGE, RWX, WB),
            EptError::AddressTooHigh {
                what: Operand::Gpa,
                start: GPA_LIMIT - PAGE,
                len: 2 * PAGE,
            },
            "0xfffffffff000 + 0x2000",
        ),
        (
            ept.protect(g(PAGE), u64::MAX - 0xfff, RWX),
            EptError::AddressTooHigh {
                what: Operand::Gpa,
                start: PAGE,
                len: u64::MAX - 0xfff,
            },
            "0x1000 + 0xfffffffffffff000",
        ),
        (
            ept.map(g(0), h(HPA_LIMIT - PAGE), 2 * PAGE, RWX, WB),
            EptError::AddressTooHigh {
                what: Operand::Hpa,
                start: HPA_LIMIT - PAGE,
                len: 2 * PAGE,
            },
            "host-physical range 0xffffffffff000 + 0x2000",
        ),
        (
            ept.map(g(0), h(0), PAGE, Perms::WRITE, WB),
            EptError::InvalidPerms {
                perms: Perms::WRITE,
            },
            "-w-",
        ),
        (
            ept.protect(g(GIB), PAGE, Perms::empty()),
            EptError::InvalidPerms {
                perms: Perms::empty(),
            },
            "---",
        ),
        (
            ept.map(g(GIB - 4 * PAGE), h(0), 8 * PAGE, RWX, WB),
            EptError::AlreadyMapped { gpa: g(GIB) },
            "page 0x40000000 is already mapped",
        ),
        (
            ept.map(g(GIB + 2 * PAGE), h(0), 4 * PAGE, RWX, WB),
            EptError::AlreadyMapped {
                gpa: g(GIB + 3 * PAGE),
            },
            "0x40003000",
        ),
        (
            ept.protect(g(GIB), 4 * PAGE, Perms::READ),
            EptError::NotMapped {
                gpa: g(GIB + 2 * PAGE),
            },
            "page 0x40002000 is not mapped",
        ),
    ];
    for (got, want, text) in cases {
        assert_eq!(got, Err(want));
        let msg = want.to_string();
        assert!(msg.contains(text), "{msg:?} should name {text:?}");
    }
    assert!(
        EptError::OutOfFrames { needed: 17 }
            .to_string()
            .contains("17"),
        "OutOfFrames names the count"
    );
    assert!(EptError::BadFrame { frame: h(0x123) }
        .to_string()
        .contains("0x123"));
    assert_eq!(state(&ept), before);
    audit(&mut ept);
}

/// Every prefix of a change's frame needs fails with `OutOfFrames` and leaves the tree as it
/// was; exactly the needed frames succeed.
fn exhaust<S: Spec>(
    setup: impl Fn(&mut Tree<S>),
    op: impl Fn(&mut Tree<S>) -> Result<(), EptError>,
    needed: usize,
) {
    for budget in 0..=needed {
        let mut ept = new_tree::<S>(PageSize::Size1G);
        setup(&mut ept);
        let before = state(&ept);
        ept.frames.budget = Some(budget);
        let result = op(&mut ept);
        ept.frames.budget = None;
        if budget < needed {
            assert_eq!(
                result,
                Err(EptError::OutOfFrames { needed }),
                "budget {budget}"
            );
            assert_eq!(state(&ept), before, "budget {budget}");
        } else {
            assert_eq!(result, Ok(()), "budget {budget}");
        }
        audit(&mut ept);
        assert_eq!(ept.undercounts, 0);
    }
}

fn out_of_frames_changes_nothing<S: Spec>() {
    // PDPT, PD, PT for the 4 KiB head; PD for the GiB that lands on 2 MiB pages; PD and PT for
    // the tail: 6 tables.
    exhaust::<S>(
        |_| {},
        |e| {
            e.map(
                g(GIB - PAGE),
                h(8 * GIB - PAGE + MIB2),
                PAGE + GIB + MIB2 + PAGE,
                RWX,
                WB,
            )
        },
        1 + 2 + 1 + 2,
    );
    // Splitting a GiB page for a 4 KiB hole in the middle of it: a PD and a PT.
    exhaust::<S>(
        |e| e.map(g(0), h(GIB), GIB, RWX, WB).unwrap(),
        |e| e.unmap(g(0x1234_5000), PAGE),
        2,
    );
    // Unmapping all but both ends: a PD and two PTs.
    exhaust::<S>(
        |e| e.map(g(0), h(GIB), GIB, RWX, WB).unwrap(),
        |e| e.unmap(g(PAGE), GIB - 2 * PAGE),
        3,
    );
    // Protecting across two 2 MiB pages of a 1 GiB page: a PD and two PTs.
    exhaust::<S>(
        |e| e.map(g(0), h(GIB), GIB, RWX, WB).unwrap(),
        |e| e.protect(g(MIB2 - PAGE), 2 * PAGE, Perms::READ),
        3,
    );
    // No frames at all for the PML4.
    let mut frames = FakeFrames::new();
    frames.budget = Some(0);
    assert_eq!(
        Tree::<S>::new(frames, PageSize::Size1G).err(),
        Some(EptError::OutOfFrames { needed: 1 })
    );
}

/// A frame source handing out frames an EPT entry cannot point to.
struct Crooked {
    inner: FakeFrames,
    bad_after: usize,
}

// SAFETY: forwards to `FakeFrames`; the crooked frame is never mapped, only returned.
unsafe impl FrameSource for Crooked {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        if self.bad_after == 0 {
            return Some(h(0x1_0000_0800));
        }
        self.bad_after -= 1;
        self.inner.alloc_frame()
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        if frame != h(0x1_0000_0800) {
            self.inner.free_frame(frame);
        }
    }

    fn table(&mut self, frame: HostPhysAddr) -> *mut [u64; 512] {
        self.inner.table(frame)
    }
}

fn bad_frames_are_refused<S: Spec>() {
    let crooked = Crooked {
        inner: FakeFrames::new(),
        bad_after: 0,
    };
    assert_eq!(
        Tables::<S, _>::new(crooked, PageSize::Size1G).err(),
        Some(EptError::BadFrame {
            frame: h(0x1_0000_0800)
        })
    );
    let mut ept = Tables::<S, _>::new(
        Crooked {
            inner: FakeFrames::new(),
            bad_after: 2,
        },
        PageSize::Size1G,
    )
    .unwrap();
    assert_eq!(
        ept.map(g(0), h(0), PAGE, RWX, WB),
        Err(EptError::BadFrame {
            frame: h(0x1_0000_0800)
        })
    );
    assert_eq!(ept.table_pages(), 1);
    assert_eq!(ept.frame_source().inner.live(), 1);
    assert_eq!(ept.translate(g(0)), None);
}

fn dropping_frees_every_table_and_destroy_returns_the_source<S: Spec>() {
    let mut frames = FakeFrames::new();
    {
        let mut ept = Tables::<S, _>::new(&mut frames, PageSize::Size2M).unwrap();
        ept.map(g(PAGE), h(PAGE), 3 * MIB2, RWX, WB).unwrap();
        ept.map(g(100 * GIB), h(PAGE), PAGE, RWX, WB).unwrap();
        assert!(ept.table_pages() > 5);
    }
    assert_eq!(frames.live(), 0);
    let mut ept = Tree::<S>::new(frames, PageSize::Size1G).unwrap();
    ept.map(g(PAGE), h(PAGE), 3 * GIB, RWX, WB).unwrap();
    assert_eq!(ept.frame_source().live(), ept.table_pages());
    assert_eq!(ept.destroy().live(), 0);
}

fn accessed_and_dirty_survive_split_and_merge<S: Spec>() {
    let mut ept = new_tree::<S>(PageSize::Size1G);
    ept.map(g(0), h(GIB), MIB2, RWX, WB).unwrap();
    // Play the processor: mark the 2 MiB leaf accessed and dirty.
    let pdpt = ept.table(ept.pml4()).get(0).table_addr();
    let pd = ept.table(pdpt).get(0).table_addr();
    let leaf = ept.table(pd).get(0);
    ept.table(pd).set(0, Entry::from_raw(leaf.raw() | S::AD));
    ept.protect(g(PAGE), PAGE, Perms::READ).unwrap();
    let pt = ept.table(pd).get(0).table_addr();
    assert!((0..ENTRIES).all(|i| ept.table(pt).get(i).raw() & S::AD == S::AD));
    ept.protect(g(PAGE), PAGE, RWX).unwrap();
    assert_eq!(ept.table_pages(), 3);
    assert_eq!(ept.table(pd).get(0).raw() & S::AD, S::AD);
    assert_eq!(page_of(&mut ept, 0), Some(PageSize::Size2M));
}

both_formats!(
    new_tree_is_one_empty_pml4,
    one_gib_aligned_is_one_pdpt_leaf,
    two_mib_aligned_is_one_pd_leaf,
    unaligned_mix_uses_expected_pages_and_tables,
    max_page_is_respected,
    unmapping_one_page_splits_and_remapping_merges_back,
    protect_splits_and_merges_back,
    merging_cascades_from_pages_to_a_gib,
    unmap_frees_emptied_tables,
    permissions_and_memory_types_per_mapping,
    regions_coalesce_across_page_sizes,
    top_of_the_address_spaces,
    errors_name_the_value_and_change_nothing,
    out_of_frames_changes_nothing,
    bad_frames_are_refused,
    dropping_frees_every_table_and_destroy_returns_the_source,
    accessed_and_dirty_survive_split_and_merge
);

// ---------------------------------------------------------------------------------------------
// Format-specific bits, read straight from the fake's memory.

/// The raw entries a walk for `gpa` reads, PML4E first, down to the leaf or a non-present
/// entry (bit 7 means "maps a page" in a PDPTE or PDE of both formats).
fn walk_raw<S: Spec>(tree: &Tree<S>, gpa: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut table = tree.pml4().as_u64();
    for level in (1..=4u32).rev() {
        let raw = tree.frames.frames[&table][(gpa >> (12 + 9 * (level - 1))) as usize & 511];
        out.push(raw);
        if !S::present(raw) || level == 1 || (level < 4 && raw & (1 << 7) != 0) {
            break;
        }
        table = raw & ADDR_MASK;
    }
    out
}

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const PS: u64 = 1 << 7;
const PAT_4K: u64 = 1 << 7;
const PAT_LARGE: u64 = 1 << 12;
const NX: u64 = 1 << 63;

#[test]
fn npt_entries_have_the_expected_bits() {
    let mut npt = new_tree::<NptFormat>(PageSize::Size1G);
    let rw = Perms::READ | Perms::WRITE;
    let rx = Perms::READ | Perms::EXECUTE;
    npt.map(g(GIB), h(5 * GIB), GIB, RWX, WB).unwrap();
    npt.map(g(2 * GIB), h(7 * GIB), GIB, rw, MemType::Uncacheable)
        .unwrap();
    npt.map(g(4 * GIB), h(9 * GIB + MIB2), MIB2, rw, WB)
        .unwrap();
    npt.map(g(4 * GIB + MIB2), h(9 * GIB), MIB2, RWX, WB)
        .unwrap();
    npt.map(
        g(4 * GIB + 2 * MIB2),
        h(0x1234_5000),
        PAGE,
        Perms::READ,
        MemType::Uncacheable,
    )
    .unwrap();
    npt.map(
        g(4 * GIB + 2 * MIB2 + PAGE),
        h(0x1234_7000),
        PAGE,
        rx,
        MemType::WriteThrough,
    )
    .unwrap();
    npt.map(
        g(4 * GIB + 2 * MIB2 + 2 * PAGE),
        h(0x1234_8000),
        PAGE,
        RWX,
        WB,
    )
    .unwrap();
    for (gpa, leaf) in [
        // 1 GiB: PS; RWX WB is P | R/W | U/S alone; read-write has NX; UC is PCD | PWT.
        (GIB, (5 * GIB) | P | RW | US | PS),
        (2 * GIB, (7 * GIB) | P | RW | US | PCD | PWT | PS | NX),
        // 2 MiB.
        (4 * GIB, (9 * GIB + MIB2) | P | RW | US | PS | NX),
        (4 * GIB + MIB2, (9 * GIB) | P | RW | US | PS),
        // 4 KiB: no PS, and a read-only leaf has no R/W.
        (4 * GIB + 2 * MIB2, 0x1234_5000 | P | US | PCD | PWT | NX),
        (4 * GIB + 2 * MIB2 + PAGE, 0x1234_7000 | P | US | PWT),
        (4 * GIB + 2 * MIB2 + 2 * PAGE, 0x1234_8000 | P | RW | US),
    ] {
        let path = walk_raw(&npt, gpa);
        assert_eq!(path.last(), Some(&leaf), "leaf for {gpa:#x}: {path:x?}");
        // Table pointers: P, R/W, U/S (nested walks are user accesses, APM §15.25.5), no NX,
        // no PWT/PCD, nothing else.
        for &t in &path[..path.len() - 1] {
            assert_eq!(t & !ADDR_MASK, P | RW | US, "pointer {t:#x} for {gpa:#x}");
        }
        let want_len = match leaf & PS != 0 {
            true if gpa < 4 * GIB => 2,
            true => 3,
            false => 4,
        };
        assert_eq!(path.len(), want_len, "{gpa:#x}: {path:x?}");
    }
    audit(&mut npt);
}

#[test]
fn ept_entries_have_the_expected_bits() {
    let mut ept = new_tree::<EptFormat>(PageSize::Size1G);
    ept.map(g(GIB), h(5 * GIB), GIB, RWX, WB).unwrap();
    ept.map(
        g(2 * GIB),
        h(7 * GIB),
        MIB2,
        Perms::EXECUTE,
        MemType::WriteCombining,
    )
    .unwrap();
    ept.map(
        g(3 * GIB),
        h(0x1234_5000),
        PAGE,
        Perms::READ,
        MemType::Uncacheable,
    )
    .unwrap();
    for (gpa, leaf) in [
        // Rights in bits 2:0, the memory type in bits 5:3, bit 7 on large leaves.
        (GIB, (5 * GIB) | 0x7 | (6 << 3) | (1 << 7)),
        (2 * GIB, (7 * GIB) | 0x4 | (1 << 3) | (1 << 7)),
        (3 * GIB, 0x1234_5000 | 0x1),
    ] {
        let path = walk_raw(&ept, gpa);
        assert_eq!(path.last(), Some(&leaf), "leaf for {gpa:#x}: {path:x?}");
        for &t in &path[..path.len() - 1] {
            assert_eq!(t & !ADDR_MASK, 0x7, "pointer {t:#x} for {gpa:#x}");
        }
    }
    audit(&mut ept);
}

#[test]
fn npt_refuses_what_it_cannot_express_and_changes_nothing() {
    let mut npt = new_tree::<NptFormat>(PageSize::Size1G);
    npt.map(g(0), h(GIB), MIB2, RWX, WB).unwrap();
    let before = state(&npt);
    let cases: Vec<(Result<(), EptError>, EptError, &str)> = vec![
        (
            npt.map(g(GIB), h(0), PAGE, Perms::EXECUTE, WB),
            EptError::PermsNotExpressible {
                perms: Perms::EXECUTE,
            },
            "--x",
        ),
        (
            npt.map(g(GIB), h(0), PAGE, Perms::WRITE, WB),
            EptError::InvalidPerms {
                perms: Perms::WRITE,
            },
            "-w-",
        ),
        (
            npt.map(g(GIB), h(0), PAGE, Perms::WRITE | Perms::EXECUTE, WB),
            EptError::InvalidPerms {
                perms: Perms::WRITE | Perms::EXECUTE,
            },
            "-wx",
        ),
        (
            npt.map(g(GIB), h(0), MIB2, RWX, MemType::WriteCombining),
            EptError::MemTypeNotExpressible {
                mem: MemType::WriteCombining,
            },
            "memory type WC",
        ),
        (
            npt.map(g(GIB), h(0), PAGE, Perms::READ, MemType::WriteProtected),
            EptError::MemTypeNotExpressible {
                mem: MemType::WriteProtected,
            },
            "memory type WP",
        ),
        // Rights are checked before the memory type and before overlaps.
        (
            npt.map(g(0), h(0), PAGE, Perms::EXECUTE, MemType::WriteCombining),
            EptError::PermsNotExpressible {
                perms: Perms::EXECUTE,
            },
            "nested page tables",
        ),
        (
            npt.map(g(0), h(0), PAGE, RWX, MemType::WriteCombining),
            EptError::MemTypeNotExpressible {
                mem: MemType::WriteCombining,
            },
            "nested page tables",
        ),
        // A protect that would split the 2 MiB page is refused before any frame is taken.
        (
            npt.protect(g(PAGE), PAGE, Perms::EXECUTE),
            EptError::PermsNotExpressible {
                perms: Perms::EXECUTE,
            },
            "execute-only",
        ),
        (
            npt.protect(g(0), MIB2, Perms::empty()),
            EptError::InvalidPerms {
                perms: Perms::empty(),
            },
            "---",
        ),
    ];
    for (got, want, text) in cases {
        assert_eq!(got, Err(want));
        let msg = want.to_string();
        assert!(msg.contains(text), "{msg:?} should name {text:?}");
    }
    assert_eq!(state(&npt), before);
    assert_eq!(npt.translate(g(PAGE)).unwrap().perms, RWX);
    audit(&mut npt);
}

#[test]
fn npt_pat_bit_moves_between_bit_12_and_bit_7_on_split_and_merge() {
    let mut npt = new_tree::<NptFormat>(PageSize::Size1G);
    npt.map(g(0), h(GIB), GIB, RWX, MemType::Uncacheable)
        .unwrap();
    // Play a host with PAT index 7 (UC under the default PAT too): set the 1 GiB leaf's PAT bit.
    let pdpt = npt.table(npt.pml4()).get(0).table_addr();
    let leaf = npt.table(pdpt).get(0);
    assert_eq!(leaf.raw(), GIB | P | RW | US | PCD | PWT | PS);
    npt.table(pdpt)
        .set(0, Entry::from_raw(leaf.raw() | PAT_LARGE));
    assert_eq!(npt.translate(g(0)).unwrap().mem, MemType::Uncacheable);

    // Splitting the 1 GiB page gives 2 MiB leaves with PAT in bit 12, and one of those gives
    // 4 KiB leaves with PAT in bit 7, where it is not PS.
    npt.protect(g(PAGE), PAGE, Perms::READ).unwrap();
    assert_eq!(npt.table_pages(), 4);
    let pd = npt.table(pdpt).get(0).table_addr();
    for i in 1..ENTRIES {
        let pde = npt.table(pd).get(i).raw();
        let addr = GIB + i as u64 * MIB2;
        assert_eq!(
            pde,
            addr | P | RW | US | PCD | PWT | PS | PAT_LARGE,
            "PDE {i}"
        );
    }
    let pt = npt.table(pd).get(0).table_addr();
    for i in 0..ENTRIES {
        let pte = npt.table(pt).get(i).raw();
        let addr = GIB + i as u64 * PAGE; // bit 12 of odd pages is address, not PAT
        let rights = if i == 1 { NX } else { RW };
        assert_eq!(pte, addr | P | US | PCD | PWT | PAT_4K | rights, "PTE {i}");
    }
    for gpa in [0, PAGE, MIB2, GIB - PAGE] {
        let t = npt.translate(g(gpa)).unwrap();
        assert_eq!(t.mem, MemType::Uncacheable, "{gpa:#x}");
    }
    audit(&mut npt);

    // Merging back moves the PAT bit up again: one 1 GiB leaf, as before.
    npt.protect(g(PAGE), PAGE, RWX).unwrap();
    assert_eq!(npt.table_pages(), 2);
    assert_eq!(
        npt.table(pdpt).get(0).raw(),
        GIB | P | RW | US | PCD | PWT | PS | PAT_LARGE
    );
    // A leaf whose PAT index differs (3 against 7) is not merged with the rest, although
    // both are UC under the default PAT: attributes are compared, not their meaning.
    npt.unmap(g(PAGE), PAGE).unwrap();
    npt.map(g(PAGE), h(GIB + PAGE), PAGE, RWX, MemType::Uncacheable)
        .unwrap();
    assert_eq!(npt.table_pages(), 4);
    audit(&mut npt);
}

// ---------------------------------------------------------------------------------------------
// Randomized runs against a reference model.

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A run of mapped pages in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    pages: u64,
    /// Host page of the first page.
    hpa: u64,
    perms: Perms,
    mem: MemType,
}

/// What should be mapped: guest page number of a run's first page → the run. Runs are kept
/// maximal (adjacent runs that continue each other are joined), which is the shape the tree
/// promises, so the page size of every translation is predictable too.
#[derive(Clone, Default)]
struct Model {
    runs: BTreeMap<u64, Run>,
}

impl Model {
    fn run_at(&self, page: u64) -> Option<(u64, Run)> {
        let (&start, &run) = self.runs.range(..=page).next_back()?;
        (page < start + run.pages).then_some((start, run))
    }

    fn lookup(&self, page: u64) -> Option<(u64, Perms, MemType)> {
        self.run_at(page)
            .map(|(start, run)| (run.hpa + page - start, run.perms, run.mem))
    }

    fn first_mapped(&self, s: u64, e: u64) -> Option<u64> {
        if self.run_at(s).is_some() {
            return Some(s);
        }
        self.runs.range(s..e).next().map(|(&start, _)| start)
    }

    fn first_unmapped(&self, s: u64, e: u64) -> Option<u64> {
        let mut p = s;
        while p < e {
            p = match self.run_at(p) {
                Some((start, run)) => start + run.pages,
                None => return Some(p),
            };
        }
        None
    }

    fn split_at(&mut self, page: u64) {
        if let Some((start, run)) = self.run_at(page) {
            if start < page {
                let head = page - start;
                self.runs.insert(start, Run { pages: head, ..run });
                self.runs.insert(
                    page,
                    Run {
                        pages: run.pages - head,
                        hpa: run.hpa + head,
                        ..run
                    },
                );
            }
        }
    }

    /// The runs inside `[s, e)`, clipped.
    fn clipped(&mut self, s: u64, e: u64) -> Vec<(u64, Run)> {
        self.split_at(s);
        self.split_at(e);
        let out = self.runs.range(s..e).map(|(&k, &r)| (k, r)).collect();
        self.normalize();
        out
    }

    fn remove(&mut self, s: u64, e: u64) {
        self.split_at(s);
        self.split_at(e);
        let keys: Vec<u64> = self.runs.range(s..e).map(|(&k, _)| k).collect();
        for k in keys {
            self.runs.remove(&k);
        }
        self.normalize();
    }

    fn protect(&mut self, s: u64, e: u64, perms: Perms) {
        self.split_at(s);
        self.split_at(e);
        for (_, run) in self.runs.range_mut(s..e) {
            run.perms = perms;
        }
        self.normalize();
    }

    fn insert(&mut self, s: u64, run: Run) {
        self.runs.insert(s, run);
        self.normalize();
    }

    fn normalize(&mut self) {
        let mut out: BTreeMap<u64, Run> = BTreeMap::new();
        let mut last: Option<(u64, Run)> = None;
        for (&start, &run) in &self.runs {
            match &mut last {
                Some((ls, lr))
                    if *ls + lr.pages == start
                        && lr.hpa + lr.pages == run.hpa
                        && (lr.perms, lr.mem) == (run.perms, run.mem) =>
                {
                    lr.pages += run.pages;
                }
                _ => {
                    if let Some((ls, lr)) = last.replace((start, run)) {
                        out.insert(ls, lr);
                    }
                }
            }
        }
        if let Some((ls, lr)) = last {
            out.insert(ls, lr);
        }
        self.runs = out;
    }

    fn regions(&self) -> Vec<Region> {
        self.runs
            .iter()
            .map(|(&start, run)| Region {
                gpa: g(start * PAGE),
                hpa: h(run.hpa * PAGE),
                len: run.pages * PAGE,
                perms: run.perms,
                mem: run.mem,
            })
            .collect()
    }

    /// The page size the canonical tree uses for `page`: the largest allowed size whose
    /// naturally aligned block around `page` lies in one run with a host address aligned alike.
    fn page_size(&self, page: u64, max: PageSize) -> PageSize {
        for size in [PageSize::Size1G, PageSize::Size2M] {
            if size > max {
                continue;
            }
            let n = size.bytes() / PAGE;
            let block = page / n * n;
            if let Some((start, run)) = self.run_at(block) {
                if start + run.pages >= block + n && (run.hpa + block - start) % n == 0 {
                    return size;
                }
            }
        }
        PageSize::Size4K
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Map {
        gpa: u64,
        hpa: u64,
        len: u64,
        perms: Perms,
        mem: MemType,
    },
    Unmap {
        gpa: u64,
        len: u64,
    },
    Protect {
        gpa: u64,
        len: u64,
        perms: Perms,
    },
}

#[derive(Default, Debug)]
struct Stats {
    ok: usize,
    refused: usize,
    out_of_frames: usize,
    max_tables: usize,
    sum_tables: usize,
    leaves: [usize; 3],
}

struct Harness<S: Spec> {
    ept: Tree<S>,
    model: Model,
    rng: Rng,
    max: PageSize,
    /// Runs removed by recent unmaps, to map back (which should merge again).
    removed: Vec<(u64, Run)>,
    stats: Stats,
    step: usize,
}

impl<S: Spec> Harness<S> {
    fn new(max: PageSize, seed: u64) -> Self {
        Self {
            ept: new_tree::<S>(max),
            model: Model::default(),
            rng: Rng(seed),
            max,
            removed: Vec::new(),
            stats: Stats::default(),
            step: 0,
        }
    }

    /// A guest address aligned to `align`. Windows are narrow for small alignments (32 MiB at
    /// 0 and around the 1 GiB boundary) and wide for large ones (4 and 8 GiB), with a few
    /// addresses just below 2^48, so that ranges collide and trees stay small enough to check
    /// completely after every step.
    fn gpa(&mut self, align: u64) -> u64 {
        let top = self.rng.chance(8);
        let (base, size) = match align {
            PAGE if top => (GPA_LIMIT - 16 * MIB2, 16 * MIB2),
            PAGE if self.rng.chance(50) => (0, 16 * MIB2),
            PAGE => (GIB - 8 * MIB2, 16 * MIB2),
            MIB2 if top => (GPA_LIMIT - GIB, GIB),
            MIB2 => (0, 2 * GIB),
            _ if top => (GPA_LIMIT - 4 * GIB, 4 * GIB),
            _ => (0, 8 * GIB),
        };
        base + self.rng.below(size / align) * align
    }

    /// A host address congruent to `gpa` modulo `congruence`: mostly below 64 GiB, sometimes
    /// just below 2^52.
    fn hpa(&mut self, gpa: u64, congruence: u64) -> u64 {
        let (base, size) = if self.rng.chance(8) {
            (HPA_LIMIT - 4 * GIB, 4 * GIB)
        } else {
            (0, 64 * GIB)
        };
        base + self.rng.below(size / congruence - 1) * congruence + gpa % congruence
    }

    /// A length: mostly a few pages, often some 2 MiB pages, sometimes a GiB or two (not with
    /// 4 KiB pages only, where that would be 512 page tables).
    fn len(&mut self) -> u64 {
        let gib = if self.max == PageSize::Size4K {
            4 * MIB2
        } else {
            GIB
        };
        match self.rng.below(100) {
            0..=59 => (1 + self.rng.below(24)) * PAGE,
            60..=89 => {
                let extra = if self.rng.chance(50) {
                    self.rng.below(512) * PAGE
                } else {
                    0
                };
                (1 + self.rng.below(3)) * MIB2 + extra
            }
            _ => {
                let extra = if self.rng.chance(50) {
                    self.rng.below(4) * MIB2
                } else {
                    0
                };
                (1 + self.rng.below(2)) * gib + extra
            }
        }
    }

    fn some_run(&mut self) -> Option<(u64, Run)> {
        if self.model.runs.is_empty() {
            return None;
        }
        let nth = self.rng.below(self.model.runs.len() as u64) as usize;
        self.model.runs.iter().nth(nth).map(|(&k, &r)| (k, r))
    }

    /// A range inside (or running past) an existing run, else a random one.
    fn target(&mut self) -> (u64, u64) {
        match self.some_run() {
            Some((start, run)) if self.rng.chance(75) => {
                let offset = self.rng.below(run.pages);
                let max = if self.rng.chance(85) {
                    run.pages - offset
                } else {
                    run.pages + 64
                };
                let cap = if self.rng.chance(80) { 1024 } else { 1 << 19 };
                let pages = 1 + self.rng.below(max.min(cap));
                ((start + offset) * PAGE, pages * PAGE)
            }
            _ => {
                let align = self.rng.pick(&[PAGE, MIB2, GIB]);
                (self.gpa(align), self.len())
            }
        }
    }

    fn gen(&mut self) -> Op {
        let roll = self.rng.below(100);
        let mut op = match roll {
            0..=4 => {
                // Big: a GiB or two at a GiB boundary, mostly congruent to the host modulo 1 GiB.
                let gpa = self.gpa(GIB);
                let extra = if self.rng.chance(30) {
                    self.rng.below(3) * MIB2
                } else {
                    0
                };
                let len = if self.max == PageSize::Size4K {
                    2 * MIB2
                } else {
                    (1 + self.rng.below(2)) * GIB + extra
                };
                let congruence = self.rng.pick(&[GIB, GIB, MIB2]);
                let hpa = self.hpa(gpa, congruence);
                Op::Map {
                    gpa,
                    hpa,
                    len,
                    perms: self.rng.pick(S::PERMS),
                    mem: self.rng.pick(S::MEMS),
                }
            }
            5..=11 => {
                // Wipe: unmap a few aligned GiB, mostly in the crowded low ones, freeing whole
                // subtrees (and keeping trees small enough to check fully after every step).
                let gpa = match self.rng.below(10) {
                    0..=4 => self.rng.below(2) * GIB,
                    5..=7 => self.rng.below(10) * GIB,
                    _ => GPA_LIMIT - (1 + self.rng.below(4)) * GIB,
                };
                let len = ((1 + self.rng.below(4)) * GIB).min(GPA_LIMIT - gpa);
                Op::Unmap { gpa, len }
            }
            12..=34 => {
                let gpa_align = self.rng.pick(&[PAGE, PAGE, MIB2, MIB2, GIB]);
                let gpa = self.gpa(gpa_align);
                let len = self.len();
                let mut congruence = self.rng.pick(&[GIB, GIB, GIB, MIB2, MIB2, PAGE]);
                if len >= MIB2 {
                    congruence = congruence.max(MIB2); // at most two page tables per map
                }
                let hpa = self.hpa(gpa, congruence);
                let perms = self.rng.pick(S::PERMS);
                let mem = self.rng.pick(S::MEMS);
                Op::Map {
                    gpa,
                    hpa,
                    len,
                    perms,
                    mem,
                }
            }
            35..=47 => self.gen_merging_map(),
            48..=72 => {
                let (gpa, len) = self.target();
                Op::Unmap { gpa, len }
            }
            _ => {
                let (gpa, len) = self.target();
                let perms = self.rng.pick(S::PERMS);
                Op::Protect { gpa, len, perms }
            }
        };
        if self.rng.chance(5) {
            self.corrupt(&mut op);
        }
        op
    }

    /// A map that continues an existing run (up to the next large-page boundary) or restores
    /// what an unmap took: the kind that lets tables merge.
    fn gen_merging_map(&mut self) -> Op {
        if !self.removed.is_empty() && self.rng.chance(50) {
            let i = self.rng.below(self.removed.len() as u64) as usize;
            let (start, run) = self.removed.swap_remove(i);
            return Op::Map {
                gpa: start * PAGE,
                hpa: run.hpa * PAGE,
                len: run.pages * PAGE,
                perms: run.perms,
                mem: run.mem,
            };
        }
        let Some((start, run)) = self.some_run() else {
            return Op::Unmap { gpa: 0, len: PAGE };
        };
        let end = (start + run.pages) * PAGE;
        let host_end = (run.hpa + run.pages) * PAGE;
        // Up to the next GiB only when that takes 2 MiB pages (congruent addresses, and allowed);
        // filling a GiB with 4 KiB pages would make hundreds of page tables.
        let big = self.max >= PageSize::Size2M
            && end.wrapping_sub(host_end) % MIB2 == 0
            && self.rng.chance(50);
        let boundary = if big { GIB } else { MIB2 };
        let mut len = end.next_multiple_of(boundary) - end;
        if len == 0 {
            len = (1 + self.rng.below(16)) * PAGE;
        }
        Op::Map {
            gpa: end,
            hpa: (run.hpa + run.pages) * PAGE,
            len,
            perms: run.perms,
            mem: run.mem,
        }
    }

    /// Breaks one argument.
    fn corrupt(&mut self, op: &mut Op) {
        let (gpa, len, perms, mem) = match op {
            Op::Map {
                gpa,
                len,
                perms,
                mem,
                ..
            } => (gpa, len, Some(perms), Some(mem)),
            Op::Unmap { gpa, len } => (gpa, len, None, None),
            Op::Protect { gpa, len, perms } => (gpa, len, Some(perms), None),
        };
        match self.rng.below(7) {
            0 => *gpa |= 1 + self.rng.below(PAGE - 1),
            1 => *len |= 1 + self.rng.below(PAGE - 1),
            2 => *len = 0,
            3 => *gpa = GPA_LIMIT - PAGE * (1 + self.rng.below(4)),
            4 => *len = !(PAGE - 1),
            5 => match (perms, mem) {
                // A memory type the format lacks (none for EPT, which keeps its sequences).
                (_, Some(m)) if !S::BAD_MEMS.is_empty() && self.rng.chance(50) => {
                    *m = self.rng.pick(S::BAD_MEMS);
                }
                (Some(p), _) => *p = self.rng.pick(S::BAD_PERMS),
                _ => {}
            },
            _ => {
                if let Op::Map { hpa, .. } = op {
                    if self.rng.chance(50) {
                        *hpa |= 8;
                    } else {
                        *hpa = HPA_LIMIT - PAGE;
                    }
                }
            }
        }
    }

    /// What the operation must return, from the model alone.
    fn expect(&self, op: Op) -> Result<(), EptError> {
        let check_range = |gpa: u64, len: u64| -> Result<u64, EptError> {
            if gpa % PAGE != 0 {
                return Err(EptError::Misaligned {
                    what: Operand::Gpa,
                    value: gpa,
                });
            }
            if len % PAGE != 0 {
                return Err(EptError::Misaligned {
                    what: Operand::Len,
                    value: len,
                });
            }
            if len == 0 {
                return Err(EptError::ZeroLength { gpa: g(gpa) });
            }
            match gpa.checked_add(len) {
                Some(end) if end <= GPA_LIMIT => Ok(end),
                _ => Err(EptError::AddressTooHigh {
                    what: Operand::Gpa,
                    start: gpa,
                    len,
                }),
            }
        };
        match op {
            Op::Map {
                gpa,
                hpa,
                len,
                perms,
                mem,
            } => {
                if gpa % PAGE != 0 {
                    return Err(EptError::Misaligned {
                        what: Operand::Gpa,
                        value: gpa,
                    });
                }
                if hpa % PAGE != 0 {
                    return Err(EptError::Misaligned {
                        what: Operand::Hpa,
                        value: hpa,
                    });
                }
                let end = check_range(gpa, len)?;
                if hpa.checked_add(len).is_none_or(|e| e > HPA_LIMIT) {
                    return Err(EptError::AddressTooHigh {
                        what: Operand::Hpa,
                        start: hpa,
                        len,
                    });
                }
                S::expect_attrs(perms, mem)?;
                match self.model.first_mapped(gpa / PAGE, end / PAGE) {
                    Some(p) => Err(EptError::AlreadyMapped { gpa: g(p * PAGE) }),
                    None => Ok(()),
                }
            }
            Op::Unmap { gpa, len } => check_range(gpa, len).map(|_| ()),
            Op::Protect { gpa, len, perms } => {
                let end = check_range(gpa, len)?;
                S::expect_perms(perms)?;
                match self.model.first_unmapped(gpa / PAGE, end / PAGE) {
                    Some(p) => Err(EptError::NotMapped { gpa: g(p * PAGE) }),
                    None => Ok(()),
                }
            }
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), EptError> {
        match op {
            Op::Map {
                gpa,
                hpa,
                len,
                perms,
                mem,
            } => self.ept.map(g(gpa), h(hpa), len, perms, mem),
            Op::Unmap { gpa, len } => self.ept.unmap(g(gpa), len),
            Op::Protect { gpa, len, perms } => self.ept.protect(g(gpa), len, perms),
        }
    }

    fn step(&mut self) {
        self.step += 1;
        let op = self.gen();
        let expected = self.expect(op);
        let limited = self.rng.chance(8);
        let before = (expected.is_err() || limited).then(|| state(&self.ept));
        if limited {
            self.ept.frames.budget = Some(self.rng.below(4) as usize);
        }
        let got = self.apply(op);
        self.ept.frames.budget = None;
        match (got, expected) {
            (Err(EptError::OutOfFrames { .. }), Ok(())) if limited => {
                self.stats.out_of_frames += 1;
            }
            (got, expected) => assert_eq!(got, expected, "step {} {op:?}", self.step),
        }
        if got.is_err() {
            assert!(
                before.as_ref() == Some(&state(&self.ept)),
                "step {} {op:?} failed with {got:?} but changed the tree",
                self.step
            );
            self.stats.refused += 1;
            self.check(None);
            return;
        }
        self.stats.ok += 1;
        let touched = match op {
            Op::Map {
                gpa,
                hpa,
                len,
                perms,
                mem,
            } => {
                self.model.insert(
                    gpa / PAGE,
                    Run {
                        pages: len / PAGE,
                        hpa: hpa / PAGE,
                        perms,
                        mem,
                    },
                );
                (gpa, gpa + len)
            }
            Op::Unmap { gpa, len } => {
                let (s, e) = (gpa / PAGE, (gpa + len) / PAGE);
                let gone = self.model.clipped(s, e);
                self.removed.extend(gone.into_iter().take(4));
                if self.removed.len() > 16 {
                    self.removed.drain(..self.removed.len() - 16);
                }
                self.model.remove(s, e);
                (gpa, gpa + len)
            }
            Op::Protect { gpa, len, perms } => {
                self.model.protect(gpa / PAGE, (gpa + len) / PAGE, perms);
                (gpa, gpa + len)
            }
        };
        self.check(Some(touched));
    }

    fn check_page(&mut self, page: u64) {
        if page >= GPA_LIMIT / PAGE {
            return;
        }
        let offset = self.rng.below(PAGE);
        let got = self.ept.translate(g(page * PAGE + offset));
        let want = self
            .model
            .lookup(page)
            .map(|(hpa, perms, mem)| Translation {
                hpa: h(hpa * PAGE + offset),
                perms,
                mem,
                page: self.model.page_size(page, self.max),
            });
        assert_eq!(got, want, "step {}: page {:#x}", self.step, page * PAGE);
        if let Some(t) = got {
            self.stats.leaves[t.page as usize] += 1;
        }
    }

    fn check(&mut self, touched: Option<(u64, u64)>) {
        assert_eq!(
            self.ept.frame_source().live(),
            self.ept.table_pages(),
            "step {}",
            self.step
        );
        assert_eq!(self.ept.undercounts, 0);
        self.stats.max_tables = self.stats.max_tables.max(self.ept.table_pages());
        self.stats.sum_tables += self.ept.table_pages();
        let want = self.model.regions();
        assert_eq!(raw_regions(&self.ept), want, "step {}", self.step);
        let thorough = self.ept.table_pages() < 8 || self.step % 64 == 0;
        if thorough {
            let got: Vec<Region> = self.ept.regions().collect();
            assert_eq!(got, want, "step {}", self.step);
            audit(&mut self.ept);
        }

        let mut pages = Vec::new();
        if let Some((s, e)) = touched {
            let (s, e) = (s / PAGE, e / PAGE);
            pages.extend([s, e - 1, s.wrapping_sub(1), e]);
            for _ in 0..8 {
                pages.push(s + self.rng.below(e - s));
            }
        }
        for _ in 0..8 {
            if let Some((start, run)) = self.some_run() {
                pages.extend([
                    start,
                    start + run.pages - 1,
                    start.wrapping_sub(1),
                    start + run.pages,
                ]);
                pages.push(start + self.rng.below(run.pages));
            }
        }
        for _ in 0..8 {
            let gpa = self.gpa(PAGE);
            pages.push(gpa / PAGE);
        }
        for page in pages {
            self.check_page(page);
        }
    }

    fn run(mut self, steps: usize) -> Stats {
        for _ in 0..steps {
            self.step();
        }
        // Tear down through unmap, then destroy whatever is left: no leaks either way.
        let (s, run) = (self.rng.below(8) * GIB, 4 * GIB);
        self.ept.unmap(g(s), run).unwrap();
        self.model.remove(s / PAGE, (s + run) / PAGE);
        self.check(None);
        let frames = self.ept.destroy();
        assert_eq!(frames.live(), 0);
        self.stats
    }
}

fn randomized<S: Spec>(max: PageSize, seed: u64, steps: usize) {
    let stats = Harness::<S>::new(max, seed).run(steps);
    std::eprintln!(
        "{} {max}: {stats:?} mean tables {}",
        std::any::type_name::<S>(),
        stats.sum_tables / steps
    );
    // The run must have exercised what it claims to.
    assert!(stats.ok > steps / 3, "{stats:?}");
    assert!(stats.refused > steps / 20, "{stats:?}");
    assert!(stats.out_of_frames > 0, "{stats:?}");
    for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
        assert_eq!(
            stats.leaves[size as usize] > 0,
            size <= max,
            "{size}: {stats:?}"
        );
    }
}

/// The same seeds and lengths for both formats: they differ in the rights and memory types
/// drawn and in the bits written, not in the shapes exercised.
fn randomized_1g<S: Spec>() {
    randomized::<S>(PageSize::Size1G, 0x9e37_79b9_7f4a_7c15, 2500);
}

fn randomized_2m<S: Spec>() {
    randomized::<S>(PageSize::Size2M, 0xdead_beef_cafe_f00d, 1000);
}

fn randomized_4k<S: Spec>() {
    randomized::<S>(PageSize::Size4K, 0x0123_4567_89ab_cdef, 500);
}

both_formats!(randomized_1g, randomized_2m, randomized_4k);
