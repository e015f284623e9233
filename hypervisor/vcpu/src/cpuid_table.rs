//! CPUID answers a backend gives without leaving its run loop: the fast path.
//!
//! A CPUID exit normally goes all the way out to the policy code (translation, counters, the
//! exit handler, the virtual platform's checks before the next entry). Most leaves a guest asks
//! have one fixed answer for the vCPU's whole life: they depend neither on the subleaf in ECX
//! nor on the guest's own state. The policy code computes those answers once, with the same
//! function its exit handler uses, and hands the backend this table; the backend answers a
//! CPUID whose leaf the table holds right after the exit and enters the guest again (SDM
//! Vol. 3C §26.1.2: CPUID exits unconditionally; APM Vol. 2 §15.9). Every other leaf, and a
//! leaf the table lacks, takes the normal path.
//!
//! The table is filled through [`CpuidTable::build`], which keeps a leaf only when the caller
//! allows it and its answer is the same for every subleaf probed, so a leaf that turns out to
//! be indexed by ECX stays on the normal path even if the caller forgot it.

/// A range of leaves the table can hold, from `base`, `LEN` of them.
const LEN: usize = 32;

/// The ranges: the basic leaves, atoll's own (hypervisor) leaves, the extended leaves.
const BASES: [u32; 3] = [0, 0x4000_0000, 0x8000_0000];

/// The subleaves [`CpuidTable::build`] compares: a leaf whose answer differs between them
/// depends on ECX and is not kept.
pub const PROBED_SUBLEAVES: [u32; 6] = [0, 1, 2, 3, 0x20, 0xffff_ffff];

/// Per-vCPU CPUID answers by leaf, for the leaves whose answer is fixed (see the module).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuidTable {
    ranges: [[Option<[u32; 4]>; LEN]; BASES.len()],
}

impl Default for CpuidTable {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl CpuidTable {
    /// No leaf answered here: every CPUID takes the normal path.
    pub const EMPTY: Self = Self {
        ranges: [[None; LEN]; BASES.len()],
    };

    /// The table of `answer(leaf, subleaf)` for every leaf in its ranges that `fixed(leaf)`
    /// allows and whose answer is the same for every subleaf in [`PROBED_SUBLEAVES`].
    pub fn build(
        mut answer: impl FnMut(u32, u32) -> [u32; 4],
        fixed: impl Fn(u32) -> bool,
    ) -> Self {
        let mut t = Self::EMPTY;
        for (range, base) in t.ranges.iter_mut().zip(BASES) {
            for (slot, leaf) in range.iter_mut().zip(base..) {
                if !fixed(leaf) {
                    continue;
                }
                let first = answer(leaf, PROBED_SUBLEAVES[0]);
                if PROBED_SUBLEAVES[1..]
                    .iter()
                    .all(|&sub| answer(leaf, sub) == first)
                {
                    *slot = Some(first);
                }
            }
        }
        t
    }

    /// The answer for `leaf` (EAX, EBX, ECX, EDX), if the table holds it.
    #[inline(always)]
    pub fn get(&self, leaf: u32) -> Option<[u32; 4]> {
        // The range by the leaf's top bits (0x0…, 0x4…, 0x8…), then the offset within it.
        let range = match leaf >> 28 {
            0 => 0,
            4 => 1,
            8 => 2,
            _ => return None,
        };
        let offset = leaf.wrapping_sub(BASES[range]) as usize;
        self.ranges[range].get(offset).copied().flatten()
    }

    /// How many leaves the table answers.
    pub fn len(&self) -> usize {
        self.ranges.iter().flatten().filter(|s| s.is_some()).count()
    }

    /// Whether it answers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU whose leaves 4 and 0x8000_001d are indexed by ECX and whose other answers name
    /// the leaf.
    fn answer(leaf: u32, sub: u32) -> [u32; 4] {
        match leaf {
            4 | 0x8000_001d => [leaf, sub, 0, 0],
            _ => [leaf, !leaf, 7, 9],
        }
    }

    #[test]
    fn keeps_the_fixed_leaves_of_each_range() {
        let t = CpuidTable::build(answer, |_| true);
        for leaf in [
            0,
            1,
            0x1f,
            0x4000_0000,
            0x4000_001f,
            0x8000_0000,
            0x8000_0008,
        ] {
            assert_eq!(t.get(leaf), Some(answer(leaf, 0)), "{leaf:#x}");
        }
        assert_eq!(t.len(), 3 * LEN - 2);
    }

    #[test]
    fn a_leaf_indexed_by_ecx_is_not_kept_even_if_allowed() {
        let t = CpuidTable::build(answer, |_| true);
        assert_eq!(t.get(4), None);
        assert_eq!(t.get(0x8000_001d), None);
    }

    #[test]
    fn a_leaf_the_caller_excludes_is_not_kept() {
        let t = CpuidTable::build(answer, |leaf| leaf != 1 && leaf != 0x4000_0001);
        assert_eq!(t.get(1), None);
        assert_eq!(t.get(0x4000_0001), None);
        assert_eq!(t.get(2), Some(answer(2, 0)));
    }

    #[test]
    fn leaves_outside_the_ranges_are_not_answered() {
        let t = CpuidTable::build(answer, |_| true);
        for leaf in [
            0x20,
            0x1000_0000,
            0x3fff_ffff,
            0x4000_0020,
            0x7fff_ffff,
            0x8000_0020,
            0xc000_0000,
            0xffff_ffff,
        ] {
            assert_eq!(t.get(leaf), None, "{leaf:#x}");
        }
    }

    #[test]
    fn the_empty_table_answers_nothing() {
        assert!(CpuidTable::EMPTY.is_empty());
        assert_eq!(CpuidTable::default().get(0), None);
    }
}
