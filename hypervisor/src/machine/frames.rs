//! The physical frame allocator.
//!
//! It starts from the loader's memory map, keeps only what is usable RAM in every entry that
//! mentions it (an address claimed by any non-usable entry is never handed out), removes the
//! ranges atoll must not reuse (the first MiB, the image, the modules, the boot information) and
//! then hands out page-aligned runs of 4 KiB frames. Freed runs go back and merge with their
//! neighbours; a run that was never the allocator's to give (outside the RAM it manages) or that
//! is already free is refused, so a bookkeeping slip in a partition's teardown cannot hand the
//! same frame to two owners. Storage is fixed, sorted arrays of ranges, so it works before any
//! heap exists and never allocates itself.

use boot::info::{MemoryRegion, RegionKind};
use boot::{HostPhysAddr, PhysRange};
use core::fmt;

/// Bytes in a frame.
pub const FRAME_SIZE: u64 = 4096;
/// Most disjoint free ranges tracked.
pub const MAX_FREE_RANGES: usize = 4096;
/// Most disjoint ranges of managed RAM (what the pool held when it was built; firmware memory
/// maps have tens of entries).
pub const MAX_MANAGED_RANGES: usize = 256;

/// Why an allocation or a free failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free run of the requested size and alignment exists.
    OutOfMemory { frames: u64, align: u64 },
    /// The alignment is not a power of two multiple of the frame size, or the count is zero.
    BadRequest,
    /// A freed range overlaps memory that is already free (a double free).
    DoubleFree(PhysRange),
    /// The free-range table is full (memory too fragmented).
    TooFragmented,
    /// A freed range is not (wholly) RAM this allocator manages: never handed out by it.
    Unknown(PhysRange),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { frames, align } => {
                write!(
                    f,
                    "out of physical memory: no free run of {frames} frames aligned to {align:#x}"
                )
            }
            Self::BadRequest => write!(
                f,
                "frame request must be at least one frame with a power-of-two alignment"
            ),
            Self::DoubleFree(r) => write!(f, "range {r} freed while (partly) free"),
            Self::TooFragmented => write!(
                f,
                "more than {MAX_FREE_RANGES} free ranges (or {MAX_MANAGED_RANGES} managed ones): memory too fragmented"
            ),
            Self::Unknown(r) => write!(f, "range {r} freed but never managed by the frame pool"),
        }
    }
}

/// The allocator.
pub struct FrameAllocator {
    free: [PhysRange; MAX_FREE_RANGES],
    count: usize,
    /// The free list as built by [`FrameAllocator::reset`]: what may ever come back.
    managed: [PhysRange; MAX_MANAGED_RANGES],
    managed_count: usize,
}

const EMPTY: PhysRange = PhysRange::new(HostPhysAddr::new(0), HostPhysAddr::new(0));

impl FrameAllocator {
    /// An allocator with nothing to give.
    pub const fn empty() -> Self {
        Self {
            free: [EMPTY; MAX_FREE_RANGES],
            count: 0,
            managed: [EMPTY; MAX_MANAGED_RANGES],
            managed_count: 0,
        }
    }

    /// Builds the free list from `map`, minus `excluded` ranges (each widened to whole frames).
    pub fn new(map: &[MemoryRegion], excluded: &[PhysRange]) -> Result<Self, FrameError> {
        let mut this = Self::empty();
        this.reset(map, excluded)?;
        Ok(this)
    }

    /// Like [`FrameAllocator::new`], in place (the table is 64 KiB: too big to move around on a
    /// boot stack).
    pub fn reset(
        &mut self,
        map: &[MemoryRegion],
        excluded: &[PhysRange],
    ) -> Result<(), FrameError> {
        let this = self;
        this.count = 0;
        this.managed_count = 0;
        for region in map.iter().filter(|r| r.kind == RegionKind::Usable) {
            // Only whole frames inside the region.
            let Some(start) = region.range.start.checked_align_up(FRAME_SIZE) else {
                continue;
            };
            let end = region.range.end.align_down(FRAME_SIZE);
            if start >= end {
                continue;
            }
            this.insert_merging(PhysRange::new(start, end), false)?;
        }
        // Anything a non-usable entry claims is not RAM we may use, whatever else says so.
        for region in map.iter().filter(|r| r.kind != RegionKind::Usable) {
            this.remove(widen(region.range))?;
        }
        for range in excluded {
            this.remove(widen(*range))?;
        }
        if this.count > MAX_MANAGED_RANGES {
            return Err(FrameError::TooFragmented);
        }
        this.managed[..this.count].copy_from_slice(&this.free[..this.count]);
        this.managed_count = this.count;
        Ok(())
    }

    /// The RAM this allocator manages (free or handed out), sorted and disjoint.
    pub fn managed(&self) -> &[PhysRange] {
        &self.managed[..self.managed_count]
    }

    /// Whether `range` lies wholly inside one managed range.
    fn manages(&self, range: &PhysRange) -> bool {
        self.managed()
            .iter()
            .any(|m| m.start <= range.start && range.end <= m.end)
    }

    /// Free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.ranges().iter().map(PhysRange::len).sum()
    }

    /// The free ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.free[..self.count]
    }

    /// Allocates `frames` contiguous frames starting at a multiple of `align` bytes, from the
    /// lowest address that fits.
    pub fn allocate(&mut self, frames: u64, align: u64) -> Result<PhysRange, FrameError> {
        if frames == 0 || !align.is_power_of_two() || align < FRAME_SIZE {
            return Err(FrameError::BadRequest);
        }
        let bytes = frames
            .checked_mul(FRAME_SIZE)
            .ok_or(FrameError::BadRequest)?;
        for i in 0..self.count {
            let r = self.free[i];
            let Some(start) = r.start.checked_align_up(align) else {
                continue;
            };
            let Some(end) = start.checked_add(bytes) else {
                continue;
            };
            if end <= r.end {
                let taken = PhysRange::new(start, end);
                self.remove(taken)?;
                return Ok(taken);
            }
        }
        Err(FrameError::OutOfMemory { frames, align })
    }

    /// Returns a range to the pool. It must be frame-aligned, managed by this allocator and
    /// wholly allocated; otherwise nothing changes.
    pub fn free(&mut self, range: PhysRange) -> Result<(), FrameError> {
        if !range.start.is_aligned(FRAME_SIZE)
            || !range.end.is_aligned(FRAME_SIZE)
            || range.is_empty()
        {
            return Err(FrameError::BadRequest);
        }
        if !self.manages(&range) {
            return Err(FrameError::Unknown(range));
        }
        self.insert_merging(range, true)
    }

    /// Keeps only the highest free memory, at least `keep` bytes of it starting at a multiple of
    /// `granule`, and gives up every free byte below that point for good: it leaves the free
    /// list and the managed list, so it is never handed out and never accepted back. Returns
    /// the split point. Memory handed out before stays handed out (the caller keeps owning it).
    ///
    /// This is how the root partition's memory is carved at boot: what is ceded becomes the
    /// host's; what is kept is the enclave pool (and atoll's own tables from then on).
    ///
    /// Fails with `OutOfMemory` (changing nothing) when less than `keep` bytes are free above
    /// every granule-aligned split point.
    pub fn keep_top(&mut self, keep: u64, granule: u64) -> Result<HostPhysAddr, FrameError> {
        if keep == 0 || !granule.is_power_of_two() || granule < FRAME_SIZE {
            return Err(FrameError::BadRequest);
        }
        let frames = keep.div_ceil(FRAME_SIZE);
        // Walk down from the top until enough is free above a granule-aligned point.
        let mut above = 0u64;
        let mut split = None;
        for r in self.ranges().iter().rev() {
            let candidate = r.end.as_u64().saturating_sub(keep.saturating_sub(above));
            let aligned = candidate & !(granule - 1);
            if candidate >= r.start.as_u64() {
                split = Some(aligned);
                break;
            }
            above += r.len();
        }
        let Some(at) = split else {
            return Err(FrameError::OutOfMemory {
                frames,
                align: granule,
            });
        };
        // Aligning down may reach into lower ranges: that only keeps more.
        let at = HostPhysAddr::new(at);
        let ceded = PhysRange::new(HostPhysAddr::new(0), at);
        // The managed list loses exactly the free memory below the point (handed-out memory
        // there stays managed: it may come back). Built aside, so a failure changes nothing.
        let mut managed = [EMPTY; MAX_MANAGED_RANGES];
        let mut n = 0;
        let mut push = |r: PhysRange| {
            if r.is_empty() {
                return Ok(());
            }
            if n == MAX_MANAGED_RANGES {
                return Err(FrameError::TooFragmented);
            }
            managed[n] = r;
            n += 1;
            Ok(())
        };
        for m in self.managed() {
            let mut cursor = m.start;
            for f in self.ranges() {
                let cut = PhysRange::new(f.start.max(m.start), f.end.min(m.end).min(at));
                if cut.is_empty() || cut.start < cursor {
                    continue;
                }
                push(PhysRange::new(cursor, cut.start))?;
                cursor = cut.end;
            }
            push(PhysRange::new(cursor, m.end))?;
        }
        self.remove(ceded)?;
        self.managed = managed;
        self.managed_count = n;
        Ok(at)
    }

    /// Gives up the highest `bytes` of free memory for good (as [`FrameAllocator::keep_top`]
    /// gives up the lowest): they must be free, at the top of the last free range, and end a
    /// managed range; `bytes` a multiple of the frame size. Returns the range given up.
    pub fn cede_top(&mut self, bytes: u64) -> Result<PhysRange, FrameError> {
        if bytes == 0 || !bytes.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::BadRequest);
        }
        let Some(last) = self.ranges().last().copied() else {
            return Err(FrameError::OutOfMemory {
                frames: bytes / FRAME_SIZE,
                align: FRAME_SIZE,
            });
        };
        if last.len() < bytes {
            return Err(FrameError::OutOfMemory {
                frames: bytes / FRAME_SIZE,
                align: FRAME_SIZE,
            });
        }
        let ceded = PhysRange::new(HostPhysAddr::new(last.end.as_u64() - bytes), last.end);
        let Some(m) = self.managed[..self.managed_count]
            .iter_mut()
            .find(|m| m.end == ceded.end && m.start <= ceded.start)
        else {
            return Err(FrameError::Unknown(ceded));
        };
        m.end = ceded.start;
        self.remove(ceded)?;
        Ok(ceded)
    }

    /// Inserts `range`, merging with neighbours. With `strict`, overlapping free memory is a
    /// double free; without, overlaps (from overlapping map entries) are merged.
    fn insert_merging(&mut self, range: PhysRange, strict: bool) -> Result<(), FrameError> {
        let mut new = range;
        // Indices of ranges that touch or overlap `new` form one contiguous run in sorted order.
        let first = self.free[..self.count].partition_point(|r| r.end < new.start);
        let mut last = first;
        while last < self.count && self.free[last].start <= new.end {
            let r = self.free[last];
            if strict && r.overlaps(&range) {
                return Err(FrameError::DoubleFree(range));
            }
            new = PhysRange::new(new.start.min(r.start), new.end.max(r.end));
            last += 1;
        }
        let removed = last - first;
        if removed == 0 && self.count == MAX_FREE_RANGES {
            return Err(FrameError::TooFragmented);
        }
        // Replace free[first..last] with the single merged range.
        if removed == 0 {
            self.free.copy_within(first..self.count, first + 1);
            self.count += 1;
        } else {
            self.free.copy_within(last..self.count, first + 1);
            self.count -= removed - 1;
        }
        self.free[first] = new;
        Ok(())
    }

    /// Removes every free byte inside `cut`.
    fn remove(&mut self, cut: PhysRange) -> Result<(), FrameError> {
        if cut.is_empty() {
            return Ok(());
        }
        let mut i = 0;
        while i < self.count {
            let r = self.free[i];
            if !r.overlaps(&cut) {
                i += 1;
                continue;
            }
            let left = PhysRange::new(r.start, cut.start.min(r.end));
            let right = PhysRange::new(cut.end.max(r.start), r.end);
            match (left.is_empty(), right.is_empty()) {
                // Keeps a piece on both sides: split.
                (false, false) => {
                    if self.count == MAX_FREE_RANGES {
                        return Err(FrameError::TooFragmented);
                    }
                    self.free.copy_within(i + 1..self.count, i + 2);
                    self.free[i] = left;
                    self.free[i + 1] = right;
                    self.count += 1;
                    i += 2;
                }
                (false, true) => {
                    self.free[i] = left;
                    i += 1;
                }
                (true, false) => {
                    self.free[i] = right;
                    i += 1;
                }
                (true, true) => {
                    self.free.copy_within(i + 1..self.count, i);
                    self.count -= 1;
                }
            }
        }
        Ok(())
    }
}

/// Widens a range to whole frames.
fn widen(r: PhysRange) -> PhysRange {
    let end = r
        .end
        .checked_align_up(FRAME_SIZE)
        .unwrap_or(HostPhysAddr::new(!(FRAME_SIZE - 1)));
    PhysRange::new(r.start.align_down(FRAME_SIZE), end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, e: u64) -> PhysRange {
        PhysRange::new(HostPhysAddr::new(s), HostPhysAddr::new(e))
    }
    fn region(s: u64, e: u64, kind: RegionKind) -> MemoryRegion {
        MemoryRegion {
            range: r(s, e),
            kind,
        }
    }

    /// A PC-like map: low RAM, a BIOS hole, high RAM up to 512 MiB with ACPI data at the top.
    fn pc_map() -> Vec<MemoryRegion> {
        vec![
            region(0, 0x9fc00, RegionKind::Usable),
            region(0x9fc00, 0xa0000, RegionKind::Reserved),
            region(0xf0000, 0x10_0000, RegionKind::Reserved),
            region(0x10_0000, 0x1ffe_0000, RegionKind::Usable),
            region(0x1ffe_0000, 0x2000_0000, RegionKind::AcpiReclaimable),
        ]
    }

    #[test]
    fn keep_top_cedes_the_free_memory_below_the_split_for_good() {
        let low = r(0, 0x10_0000);
        let mut fa = FrameAllocator::new(&pc_map(), &[low]).unwrap();
        // Something handed out low stays atoll's and may come back.
        let stack = fa.allocate(16, FRAME_SIZE).unwrap();
        let at = fa.keep_top(64 << 20, 2 << 20).unwrap();
        assert!(at.is_aligned(2 << 20));
        assert!(fa.free_bytes() >= 64 << 20);
        assert!(fa.free_bytes() < (64 << 20) + (2 << 20));
        assert!(fa.ranges().iter().all(|f| f.start >= at));
        // Ceded memory is neither handed out nor taken back; handed-out memory is.
        let ceded = r(0x20_0000, 0x20_1000);
        assert_eq!(fa.free(ceded), Err(FrameError::Unknown(ceded)));
        fa.free(stack).unwrap();
        assert_eq!(fa.allocate(16, FRAME_SIZE).unwrap(), stack);
        while let Ok(f) = fa.allocate(1, FRAME_SIZE) {
            assert!(f.start >= at || f.overlaps(&stack), "{f} below {at}");
        }
    }

    #[test]
    fn cede_top_gives_up_the_highest_free_frames() {
        let mut fa = FrameAllocator::new(&pc_map(), &[r(0, 0x10_0000)]).unwrap();
        let top = fa.ranges().last().unwrap().end;
        let before = fa.free_bytes();
        let ceded = fa.cede_top(16 << 20).unwrap();
        assert_eq!(ceded.end, top);
        assert_eq!(ceded.len(), 16 << 20);
        assert_eq!(fa.free_bytes(), before - (16 << 20));
        assert_eq!(fa.free(ceded), Err(FrameError::Unknown(ceded)));
        assert_eq!(fa.cede_top(3), Err(FrameError::BadRequest));
        assert!(matches!(
            fa.cede_top(1 << 40),
            Err(FrameError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn keep_top_refuses_more_than_is_free_and_changes_nothing() {
        let mut fa = FrameAllocator::new(&pc_map(), &[r(0, 0x10_0000)]).unwrap();
        let before: Vec<PhysRange> = fa.ranges().to_vec();
        assert!(matches!(
            fa.keep_top(1 << 30, 2 << 20),
            Err(FrameError::OutOfMemory { .. })
        ));
        assert_eq!(fa.keep_top(0, 2 << 20), Err(FrameError::BadRequest));
        assert_eq!(fa.keep_top(1 << 20, 3), Err(FrameError::BadRequest));
        assert_eq!(fa.ranges(), &before[..]);
        // Keeping everything cedes nothing.
        let all = fa.free_bytes();
        assert!(fa.keep_top(all - (1 << 20), FRAME_SIZE).is_ok());
        assert!(fa.free_bytes() >= all - (1 << 20));
    }

    #[test]
    fn exclusions_are_never_handed_out() {
        let image = r(0x20_0000, 0x31_2345);
        let module = r(0x40_0800, 0x40_1000);
        let low = r(0, 0x10_0000);
        let mut fa = FrameAllocator::new(&pc_map(), &[low, image, module]).unwrap();
        assert_eq!(
            fa.ranges(),
            &[
                r(0x10_0000, 0x20_0000),
                r(0x31_3000, 0x40_0000),
                r(0x40_1000, 0x1ffe_0000)
            ]
        );
        let mut got = Vec::new();
        while let Ok(f) = fa.allocate(1, FRAME_SIZE) {
            for x in [low, image, module] {
                assert!(!f.overlaps(&x), "{f} overlaps excluded {x}");
            }
            got.push(f);
        }
        assert_eq!(
            got.len() as u64 * FRAME_SIZE,
            0x10_0000 + (0x40_0000 - 0x31_3000) + (0x1ffe_0000 - 0x40_1000)
        );
    }

    #[test]
    fn overlapping_map_entries_count_once_and_reserved_wins() {
        let map = vec![
            region(0x10_0000, 0x50_0000, RegionKind::Usable),
            region(0x30_0000, 0x80_0000, RegionKind::Usable),
            // A reserved entry overlapping usable RAM: firmware says hands off.
            region(0x40_0000, 0x40_2000, RegionKind::Reserved),
            // Unaligned usable entry: only whole frames count.
            region(0x90_0100, 0x90_3000, RegionKind::Usable),
        ];
        let fa = FrameAllocator::new(&map, &[]).unwrap();
        assert_eq!(
            fa.ranges(),
            &[
                r(0x10_0000, 0x40_0000),
                r(0x40_2000, 0x80_0000),
                r(0x90_1000, 0x90_3000)
            ]
        );
        assert_eq!(fa.free_bytes(), 0x30_0000 + 0x3f_e000 + 0x2000);
    }

    #[test]
    fn exhaustion_is_an_error_not_a_panic() {
        let map = vec![region(0x10_0000, 0x10_4000, RegionKind::Usable)];
        let mut fa = FrameAllocator::new(&map, &[]).unwrap();
        assert_eq!(
            fa.allocate(5, FRAME_SIZE),
            Err(FrameError::OutOfMemory {
                frames: 5,
                align: FRAME_SIZE
            })
        );
        for _ in 0..4 {
            fa.allocate(1, FRAME_SIZE).unwrap();
        }
        assert_eq!(
            fa.allocate(1, FRAME_SIZE),
            Err(FrameError::OutOfMemory {
                frames: 1,
                align: FRAME_SIZE
            })
        );
        assert_eq!(fa.free_bytes(), 0);
        assert!(FrameError::OutOfMemory {
            frames: 1,
            align: 4096
        }
        .to_string()
        .contains("out of physical memory"));
    }

    #[test]
    fn alignment_and_bad_requests() {
        let map = vec![region(0x10_1000, 0x80_0000, RegionKind::Usable)];
        let mut fa = FrameAllocator::new(&map, &[]).unwrap();
        let big = fa.allocate(512, 0x20_0000).unwrap();
        assert_eq!(big, r(0x20_0000, 0x40_0000));
        assert_eq!(fa.allocate(0, FRAME_SIZE), Err(FrameError::BadRequest));
        assert_eq!(fa.allocate(1, 3 * FRAME_SIZE), Err(FrameError::BadRequest));
        assert_eq!(fa.allocate(1, 16), Err(FrameError::BadRequest));
    }

    #[test]
    fn free_merges_and_detects_double_free() {
        let map = vec![region(0x10_0000, 0x20_0000, RegionKind::Usable)];
        let mut fa = FrameAllocator::new(&map, &[]).unwrap();
        let a = fa.allocate(4, FRAME_SIZE).unwrap();
        let b = fa.allocate(4, FRAME_SIZE).unwrap();
        fa.free(a).unwrap();
        assert_eq!(fa.free(a), Err(FrameError::DoubleFree(a)));
        fa.free(b).unwrap();
        assert_eq!(fa.ranges(), &[r(0x10_0000, 0x20_0000)]);
        assert_eq!(fa.free(r(0x1000, 0x1800)), Err(FrameError::BadRequest));
        // Partly free: a double free too, and nothing changes.
        let c = fa.allocate(2, FRAME_SIZE).unwrap();
        let wider = r(c.start.as_u64(), c.end.as_u64() + FRAME_SIZE);
        assert_eq!(fa.free(wider), Err(FrameError::DoubleFree(wider)));
        fa.free(c).unwrap();
        assert_eq!(fa.ranges(), &[r(0x10_0000, 0x20_0000)]);
    }

    #[test]
    fn freed_ranges_are_handed_out_again() {
        let map = vec![region(0x20_0000, 0x60_0000, RegionKind::Usable)];
        let mut fa = FrameAllocator::new(&map, &[]).unwrap();
        let a = fa.allocate(512, 0x20_0000).unwrap();
        let b = fa.allocate(512, 0x20_0000).unwrap();
        assert!(fa.allocate(512, 0x20_0000).is_err());
        fa.free(a).unwrap();
        // The same request gets the same RAM back: the pool reuses what an enclave gave back.
        assert_eq!(fa.allocate(512, 0x20_0000), Ok(a));
        fa.free(b).unwrap();
        fa.free(a).unwrap();
        assert_eq!(fa.free_bytes(), 0x40_0000);
    }

    #[test]
    fn freeing_memory_it_never_managed_is_refused() {
        let map = pc_map();
        let image = r(0x20_0000, 0x30_0000);
        let mut fa = FrameAllocator::new(&map, &[r(0, 0x10_0000), image]).unwrap();
        let before = fa.ranges().to_vec();
        // atoll's image, the BIOS hole, the ACPI data and RAM past the map are nobody's to free.
        for bad in [
            image,
            r(0x20_0000, 0x20_1000),
            r(0x9f000, 0xa1000),
            r(0x1ffe_0000, 0x1ffe_1000),
            r(0x4000_0000, 0x4000_1000),
            // Straddles the excluded image and managed RAM.
            r(0x1f_f000, 0x20_1000),
        ] {
            assert_eq!(fa.free(bad), Err(FrameError::Unknown(bad)), "{bad}");
        }
        assert_eq!(fa.ranges(), &before[..]);
        assert_eq!(
            fa.managed(),
            &[r(0x10_0000, 0x20_0000), r(0x30_0000, 0x1ffe_0000)]
        );
        assert!(FrameError::Unknown(image)
            .to_string()
            .contains("never managed"));
    }

    #[test]
    fn randomized_allocations_never_overlap_and_all_return() {
        // A deterministic xorshift so failures reproduce.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let map = pc_map();
        let excluded = [r(0, 0x10_0000), r(0x20_0000, 0x30_0000)];
        let mut fa = FrameAllocator::new(&map, &excluded).unwrap();
        let total = fa.free_bytes();
        let mut live: Vec<PhysRange> = Vec::new();
        for _ in 0..5000 {
            if next() % 3 != 0 || live.is_empty() {
                let frames = 1 + next() % 64;
                let align = FRAME_SIZE << (next() % 6);
                if let Ok(got) = fa.allocate(frames, align) {
                    assert!(got.start.is_aligned(align));
                    assert!(
                        live.iter().all(|l| !l.overlaps(&got)),
                        "{got} handed out twice"
                    );
                    assert!(excluded.iter().all(|x| !x.overlaps(&got)));
                    live.push(got);
                }
            } else {
                let i = (next() as usize) % live.len();
                fa.free(live.swap_remove(i)).unwrap();
            }
            let held: u64 = live.iter().map(PhysRange::len).sum();
            assert_eq!(fa.free_bytes() + held, total);
        }
        for l in live.drain(..) {
            fa.free(l).unwrap();
        }
        assert_eq!(fa.free_bytes(), total);
    }
}
