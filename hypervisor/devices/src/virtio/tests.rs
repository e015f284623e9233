//! Host tests of the virtio devices: a fake guest memory, a fake driver that lays out split
//! rings in it, and the fake backend. The driver side is written from the specification's
//! layouts (§2.7), independently of the device code's helpers.

use super::backend::fake::FakeBackend;
use super::backend::Record;
use super::queue::{desc_flags, Chain, ChainError, CopyError, Queue, MAX_SEGMENTS};
use super::*;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use boot::GuestPhysAddr;

/// Guest RAM: `bytes` readable and writable; `covers` vouches for everything below `extent`
/// (normally the RAM's size; larger to test lengths no test can allocate).
pub(super) struct Mem {
    pub bytes: Vec<u8>,
    pub extent: u64,
}

impl Mem {
    pub fn new(size: usize) -> Self {
        Self {
            bytes: vec![0; size],
            extent: size as u64,
        }
    }

    pub fn put(&mut self, at: u64, b: &[u8]) {
        self.bytes[at as usize..at as usize + b.len()].copy_from_slice(b);
    }

    pub fn get(&self, at: u64, len: usize) -> &[u8] {
        &self.bytes[at as usize..at as usize + len]
    }

    pub fn u16(&self, at: u64) -> u16 {
        u16::from_le_bytes([self.bytes[at as usize], self.bytes[at as usize + 1]])
    }

    pub fn u32(&self, at: u64) -> u32 {
        let b = self.get(at, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl GuestMemory for Mem {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        let start = usize::try_from(gpa.as_u64()).ok()?;
        buf.copy_from_slice(self.bytes.get(start..start.checked_add(buf.len())?)?);
        Some(())
    }

    fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
        let start = usize::try_from(gpa.as_u64()).ok()?;
        self.bytes
            .get_mut(start..start.checked_add(buf.len())?)?
            .copy_from_slice(buf);
        Some(())
    }

    fn covers(&self, gpa: GuestPhysAddr, len: u64) -> bool {
        gpa.as_u64()
            .checked_add(len)
            .is_some_and(|end| end <= self.extent)
    }
}

/// A driver's view of one split queue: desc table at `base`, available ring at `base +
/// 0x1000`, used ring at `base + 0x2000` (room for 256 entries each).
pub(super) struct Vq {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
}

impl Vq {
    pub fn new(base: u64, size: u16) -> Self {
        Self {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
        }
    }

    /// Writes descriptor `i` of the table at `table`.
    pub fn desc_at(mem: &mut Mem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.put(table + 16 * u64::from(i), &d);
    }

    pub fn desc(&self, mem: &mut Mem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        Self::desc_at(mem, self.desc, i, addr, len, flags, next);
    }

    /// Makes `head` available and publishes the index.
    pub fn offer(&mut self, mem: &mut Mem, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.put(self.avail + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.put(self.avail + 2, &self.avail_idx.to_le_bytes());
    }

    pub fn set_avail_idx(&mut self, mem: &mut Mem, idx: u16) {
        self.avail_idx = idx;
        mem.put(self.avail + 2, &idx.to_le_bytes());
    }

    pub fn used_idx(&self, mem: &Mem) -> u16 {
        mem.u16(self.used + 2)
    }

    /// Used element `i` (as the ring index, not modulo).
    pub fn used_elem(&self, mem: &Mem, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (mem.u32(at), mem.u32(at + 4))
    }

    pub fn set_used_event(&self, mem: &mut Mem, v: u16) {
        mem.put(self.avail + 4 + 2 * u64::from(self.size), &v.to_le_bytes());
    }

    pub fn avail_event(&self, mem: &Mem) -> u16 {
        mem.u16(self.used + 4 + 8 * u64::from(self.size))
    }

    pub fn set_avail_flags(&self, mem: &mut Mem, v: u16) {
        mem.put(self.avail, &v.to_le_bytes());
    }

    /// A device-side queue over this ring.
    pub fn queue(&self, indirect: bool, event_idx: bool) -> Queue {
        let mut q = Queue::new(queue::MAX_QUEUE_SIZE);
        q.size = self.size;
        q.desc = GuestPhysAddr::new(self.desc);
        q.avail = GuestPhysAddr::new(self.avail);
        q.used = GuestPhysAddr::new(self.used);
        q.indirect = indirect;
        q.event_idx = event_idx;
        q.ready = true;
        q
    }
}

const R: u16 = 0;
const N: u16 = desc_flags::NEXT;
const W: u16 = desc_flags::WRITE;
const I: u16 = desc_flags::INDIRECT;

/// RAM of 1 MiB with one queue of `size` at 0x1000.
fn setup(size: u16) -> (Mem, Vq) {
    (Mem::new(0x10_0000), Vq::new(0x1000, size))
}

/// Offers a chain at head 0 and walks it.
fn walk_one(mem: &mut Mem, vq: &mut Vq, q: &mut Queue) -> Result<Option<Chain>, ChainError> {
    vq.offer(mem, 0);
    q.pop(mem)
}

mod queue_tests {
    use super::*;

    #[test]
    fn a_chain_is_walked_readable_then_writable_and_copied_across_segments() {
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 0, 0x8000, 4, R | N, 5);
        vq.desc(&mut mem, 5, 0x9000, 6, R | N, 2);
        vq.desc(&mut mem, 2, 0xa000, 3, W | N, 7);
        vq.desc(&mut mem, 7, 0xb000, 5, W, 0);
        mem.put(0x8000, b"abcd");
        mem.put(0x9000, b"efghij");
        let mut q = vq.queue(false, false);
        let chain = walk_one(&mut mem, &mut vq, &mut q).unwrap().unwrap();
        assert_eq!(chain.head(), 0);
        assert_eq!(chain.segments().len(), 4);
        assert_eq!((chain.readable_len(), chain.writable_len()), (10, 8));
        assert!(chain.segments()[2].writable && !chain.segments()[1].writable);
        let mut b = [0u8; 5];
        chain.read_at(&mem, 2, &mut b).unwrap();
        assert_eq!(&b, b"cdefg", "crosses the first segment's end");
        assert_eq!(
            chain.read_at(&mem, 6, &mut b),
            Err(CopyError::OutOfRange),
            "past the readable bytes"
        );
        chain.write_at(&mut mem, 1, b"XYZW").unwrap();
        assert_eq!(mem.get(0xa000, 3), b"\0XY");
        assert_eq!(mem.get(0xb000, 5), b"ZW\0\0\0");
        assert_eq!(
            chain.write_at(&mut mem, 5, b"1234"),
            Err(CopyError::OutOfRange)
        );
        assert_eq!(
            mem.get(0xb000, 5),
            b"ZW\0\0\0",
            "a refused copy writes nothing"
        );
        assert_eq!(q.last_avail(), 1);
        assert!(q.pop(&mut mem).unwrap().is_none(), "nothing more");
    }

    #[test]
    fn pieces_stay_inside_one_segment_and_the_limit() {
        let seg = |addr: u64, len: u32, writable: bool| queue::Segment {
            addr: GuestPhysAddr::new(addr),
            len,
            writable,
        };
        let segments = [
            seg(0x100, 4, false),
            seg(0x200, 3, true),
            seg(0x300, 5, true),
        ];
        let mut seen = Vec::new();
        queue::pieces::<CopyError>(&segments, true, 1, 6, 2, |addr, at, n| {
            seen.push((addr.as_u64(), at, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(0x201, 0, 2), (0x300, 2, 2), (0x302, 4, 2)],
            "readable segment skipped, offset 1, pieces of 2"
        );
        let r = queue::pieces::<CopyError>(&segments, true, 1, 8, 2, |_, _, _| Ok(()));
        assert_eq!(r, Err(CopyError::OutOfRange), "7 writable bytes from 1");
        let r = queue::pieces::<CopyError>(&segments, false, 0, 4, 0, |_, _, _| Ok(()));
        assert_eq!(r, Err(CopyError::OutOfRange), "no piece size");
        let mut calls = 0;
        queue::pieces::<CopyError>(&segments, false, 4, 0, 8, |_, _, _| {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 0, "an empty range at the end");
    }

    #[test]
    fn head_and_next_indices_past_the_table() {
        let (mut mem, mut vq) = setup(4);
        let mut q = vq.queue(false, false);
        vq.offer(&mut mem, 4);
        assert_eq!(
            q.pop(&mut mem).unwrap_err(),
            ChainError::DescIndex { index: 4, size: 4 }
        );
        let (mut mem, mut vq) = setup(4);
        vq.desc(&mut mem, 0, 0x8000, 1, R | N, 9);
        let mut q = vq.queue(false, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::DescIndex { index: 9, size: 4 }
        );
        assert_eq!(q.last_avail(), 0, "a refused chain is not taken");
    }

    #[test]
    fn loops_end_at_the_table_size() {
        let (mut mem, mut vq) = setup(4);
        vq.desc(&mut mem, 0, 0x8000, 1, R | N, 1);
        vq.desc(&mut mem, 1, 0x8000, 1, R | N, 0);
        let mut q = vq.queue(false, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::Loop
        );
        // A descriptor pointing at itself.
        let (mut mem, mut vq) = setup(64);
        vq.desc(&mut mem, 0, 0x8000, 1, R | N, 0);
        let mut q = vq.queue(false, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::Loop
        );
        // In a queue larger than MAX_SEGMENTS the segment bound ends the walk first.
        let (mut mem, mut vq) = setup(256);
        vq.desc(&mut mem, 0, 0x8000, 1, R | N, 0);
        let mut q = vq.queue(false, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::TooManySegments
        );
    }

    #[test]
    fn chains_longer_than_max_segments_are_refused_and_max_is_accepted() {
        for (n, ok) in [(MAX_SEGMENTS, true), (MAX_SEGMENTS + 1, false)] {
            let (mut mem, mut vq) = setup(256);
            for i in 0..n as u16 {
                let last = i as usize == n - 1;
                vq.desc(
                    &mut mem,
                    i,
                    0x8000 + u64::from(i),
                    1,
                    if last { R } else { R | N },
                    i + 1,
                );
            }
            let mut q = vq.queue(false, false);
            let r = walk_one(&mut mem, &mut vq, &mut q);
            if ok {
                assert_eq!(r.unwrap().unwrap().segments().len(), MAX_SEGMENTS);
            } else {
                assert_eq!(r.unwrap_err(), ChainError::TooManySegments);
            }
        }
    }

    #[test]
    fn zero_length_and_readable_after_writable() {
        let (mut mem, mut vq) = setup(4);
        vq.desc(&mut mem, 0, 0x8000, 4, R | N, 1);
        vq.desc(&mut mem, 1, 0x8000, 0, W, 0);
        let mut q = vq.queue(false, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::ZeroLength
        );
        let (mut mem, mut vq) = setup(4);
        vq.desc(&mut mem, 0, 0x8000, 4, W | N, 1);
        vq.desc(&mut mem, 1, 0x9000, 4, R, 0);
        let mut q = vq.queue(false, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::ReadableAfterWritable
        );
    }

    #[test]
    fn buffers_outside_ram_or_wrapping_are_refused() {
        for (addr, len) in [
            (0x10_0000 - 4, 5u32),
            (0x10_0000, 1),
            (u64::MAX - 2, 16),
            (u64::MAX, 1),
        ] {
            let (mut mem, mut vq) = setup(4);
            vq.desc(&mut mem, 0, addr, len, R, 0);
            let mut q = vq.queue(false, false);
            assert_eq!(
                walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
                ChainError::OutsideRam {
                    addr: GuestPhysAddr::new(addr),
                    len
                },
                "{addr:#x}+{len}"
            );
        }
        // The last byte of RAM is fine.
        let (mut mem, mut vq) = setup(4);
        vq.desc(&mut mem, 0, 0x10_0000 - 4, 4, R, 0);
        let mut q = vq.queue(false, false);
        assert!(walk_one(&mut mem, &mut vq, &mut q).unwrap().is_some());
    }

    #[test]
    fn total_length_beyond_u32_is_refused() {
        let (mut mem, mut vq) = setup(4);
        mem.extent = 1 << 40;
        vq.desc(&mut mem, 0, 0x1_0000_0000, 0xffff_ff00, R | N, 1);
        vq.desc(&mut mem, 1, 0x2_0000_0000, 0xff, W, 0);
        let mut q = vq.queue(false, false);
        let c = walk_one(&mut mem, &mut vq, &mut q).unwrap().unwrap();
        assert_eq!(c.readable_len() + c.writable_len(), u32::MAX);
        let (mut mem, mut vq) = setup(4);
        mem.extent = 1 << 40;
        vq.desc(&mut mem, 0, 0x1_0000_0000, 0xffff_ff00, R | N, 1);
        vq.desc(&mut mem, 1, 0x2_0000_0000, 0x100, W, 0);
        let mut q = vq.queue(false, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::TotalLength
        );
    }

    #[test]
    fn indirect_tables() {
        let table = 0x6000;
        let ind = |mem: &mut Mem, i, addr, len, flags, next| {
            Vq::desc_at(mem, table, i, addr, len, flags, next)
        };
        // A good one: the head names a table of three (its own WRITE flag ignored).
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 0, table, 48, I | W, 0);
        ind(&mut mem, 0, 0x8000, 16, R | N, 2);
        ind(&mut mem, 2, 0x9000, 100, W | N, 1);
        ind(&mut mem, 1, 0xa000, 1, W, 0);
        let mut q = vq.queue(true, false);
        let c = walk_one(&mut mem, &mut vq, &mut q).unwrap().unwrap();
        assert_eq!(
            (c.readable_len(), c.writable_len(), c.segments().len()),
            (16, 101, 3)
        );
        // A direct descriptor, then a table at the chain's end.
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 0, 0x7000, 8, R | N, 3);
        vq.desc(&mut mem, 3, table, 16, I, 0);
        ind(&mut mem, 0, 0x9000, 4, W, 0);
        let mut q = vq.queue(true, false);
        let c = walk_one(&mut mem, &mut vq, &mut q).unwrap().unwrap();
        assert_eq!((c.readable_len(), c.writable_len()), (8, 4));

        let cases: [(&str, u64, u32, u16, bool, ChainError); 6] = [
            (
                "not negotiated",
                table,
                48,
                I,
                false,
                ChainError::IndirectNotNegotiated,
            ),
            (
                "with next",
                table,
                48,
                I | N,
                true,
                ChainError::IndirectWithNext,
            ),
            ("length 0", table, 0, I, true, ChainError::IndirectLength(0)),
            (
                "not a multiple of 16",
                table,
                40,
                I,
                true,
                ChainError::IndirectLength(40),
            ),
            (
                "more entries than the queue",
                table,
                16 * 9,
                I,
                true,
                ChainError::IndirectLength(144),
            ),
            (
                "outside RAM",
                0x10_0000 - 32,
                48,
                I,
                true,
                ChainError::OutsideRam {
                    addr: GuestPhysAddr::new(0x10_0000 - 32),
                    len: 48,
                },
            ),
        ];
        for (what, addr, len, flags, negotiated, err) in cases {
            let (mut mem, mut vq) = setup(8);
            vq.desc(&mut mem, 0, addr, len, flags, 1);
            vq.desc(&mut mem, 1, 0x9000, 4, W, 0);
            ind(&mut mem, 0, 0x8000, 16, R, 0);
            let mut q = vq.queue(negotiated, false);
            assert_eq!(
                walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
                err,
                "{what}"
            );
        }
        // Nested: an indirect descriptor inside the table.
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 0, table, 32, I, 0);
        ind(&mut mem, 0, 0x8000, 16, R | N, 1);
        ind(&mut mem, 1, table, 32, I, 0);
        let mut q = vq.queue(true, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::NestedIndirect
        );
        // A loop inside the table, and a next index past the table's end.
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 0, table, 32, I, 0);
        ind(&mut mem, 0, 0x8000, 16, R | N, 1);
        ind(&mut mem, 1, 0x8000, 16, R | N, 0);
        let mut q = vq.queue(true, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::Loop
        );
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 0, table, 32, I, 0);
        ind(&mut mem, 0, 0x8000, 16, R | N, 2);
        let mut q = vq.queue(true, false);
        assert_eq!(
            walk_one(&mut mem, &mut vq, &mut q).unwrap_err(),
            ChainError::DescIndex { index: 2, size: 2 }
        );
    }

    #[test]
    fn an_available_index_running_ahead_is_refused() {
        for jump in [9u16, 0x100, 0x8000, 0xffff] {
            let (mut mem, mut vq) = setup(8);
            vq.set_avail_idx(&mut mem, jump);
            let mut q = vq.queue(false, false);
            assert_eq!(
                q.pop(&mut mem).unwrap_err(),
                ChainError::AvailIndex {
                    avail: jump,
                    last: 0
                },
                "{jump:#x}"
            );
        }
        // A whole queue ahead is fine, and so is a jump of 2^16 entries: it wraps to the same
        // index, which the device cannot tell from no change at all (the ring looks empty).
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 0, 0x8000, 1, R, 0);
        vq.set_avail_idx(&mut mem, 8);
        let mut q = vq.queue(false, false);
        assert!(q.pop(&mut mem).unwrap().is_some());
        let (mut mem, mut vq) = setup(8);
        vq.set_avail_idx(&mut mem, 0u16.wrapping_add((1u32 << 16) as u16));
        let mut q = vq.queue(false, false);
        assert!(q.pop(&mut mem).unwrap().is_none());
        // Across the 16-bit wrap: last_avail 0xfffe, 3 entries available.
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 0, 0x8000, 1, R, 0);
        let mut q = vq.queue(false, false);
        vq.set_avail_idx(&mut mem, 0xfffe);
        // Wind last_avail back to 0xfffe without walking 65534 chains.
        q.unpop();
        q.unpop();
        assert_eq!(q.last_avail(), 0xfffe);
        vq.offer(&mut mem, 0);
        vq.offer(&mut mem, 0);
        vq.offer(&mut mem, 0);
        for _ in 0..3 {
            assert!(q.pop(&mut mem).unwrap().is_some());
        }
        assert_eq!(q.last_avail(), 1);
        assert!(q.pop(&mut mem).unwrap().is_none());
    }

    #[test]
    fn rings_outside_ram_are_errors() {
        let (mut mem, vq) = setup(8);
        let mut q = vq.queue(false, false);
        q.avail = GuestPhysAddr::new(0x10_0000 - 3);
        assert!(matches!(
            q.pop(&mut mem).unwrap_err(),
            ChainError::RingOutsideRam { .. }
        ));
        q.avail = GuestPhysAddr::new(u64::MAX - 1);
        assert!(matches!(
            q.pop(&mut mem).unwrap_err(),
            ChainError::RingOutsideRam { .. }
        ));
        let (mut mem, mut vq) = setup(8);
        let mut q = vq.queue(false, false);
        q.desc = GuestPhysAddr::new(0x10_0000 - 16);
        vq.offer(&mut mem, 1);
        assert!(matches!(
            q.pop(&mut mem).unwrap_err(),
            ChainError::RingOutsideRam { .. }
        ));
        q.used = GuestPhysAddr::new(0x10_0000);
        assert!(q.add_used(&mut mem, 0, 0).is_err());
    }

    #[test]
    fn a_queue_not_ready_yields_nothing_and_unpop_walks_again() {
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 3, 0x8000, 2, R, 0);
        vq.offer(&mut mem, 3);
        let mut q = vq.queue(false, false);
        q.ready = false;
        assert!(q.pop(&mut mem).unwrap().is_none());
        q.ready = true;
        assert_eq!(q.pop(&mut mem).unwrap().unwrap().head(), 3);
        q.unpop();
        assert_eq!(q.pop(&mut mem).unwrap().unwrap().head(), 3);
        assert!(q.pop(&mut mem).unwrap().is_none());
    }

    #[test]
    fn used_elements_then_index_and_the_ring_wraps() {
        let (mut mem, vq) = setup(4);
        let mut q = vq.queue(false, false);
        for i in 0..6u16 {
            q.add_used(&mut mem, i, 100 + u32::from(i)).unwrap();
            assert_eq!(vq.used_idx(&mem), i + 1);
            assert_eq!(vq.used_elem(&mem, i), (u32::from(i), 100 + u32::from(i)));
        }
        assert_eq!(vq.used_elem(&mem, 0), (4, 104), "slot 0 reused after 4");
    }

    #[test]
    fn interrupt_suppression_without_event_index() {
        let (mut mem, vq) = setup(4);
        let mut q = vq.queue(false, false);
        assert!(!q.needs_interrupt(&mem).unwrap(), "nothing used");
        q.add_used(&mut mem, 0, 0).unwrap();
        assert!(q.needs_interrupt(&mem).unwrap());
        assert!(!q.needs_interrupt(&mem).unwrap(), "nothing new");
        vq.set_avail_flags(&mut mem, queue::AVAIL_F_NO_INTERRUPT);
        q.add_used(&mut mem, 0, 0).unwrap();
        assert!(!q.needs_interrupt(&mem).unwrap());
        vq.set_avail_flags(&mut mem, 0);
        q.add_used(&mut mem, 0, 0).unwrap();
        assert!(q.needs_interrupt(&mem).unwrap());
    }

    #[test]
    fn interrupt_suppression_with_event_index() {
        let (mut mem, vq) = setup(8);
        let mut q = vq.queue(false, true);
        // used_event 0: interrupt when the used index passes 0 (first completion).
        vq.set_used_event(&mut mem, 0);
        q.add_used(&mut mem, 0, 0).unwrap();
        assert!(q.needs_interrupt(&mem).unwrap());
        // Two more: used 1 -> 3, event still 0: already signalled past it.
        q.add_used(&mut mem, 0, 0).unwrap();
        q.add_used(&mut mem, 0, 0).unwrap();
        assert!(!q.needs_interrupt(&mem).unwrap());
        // The driver asks for an interrupt after entry 4 (used index 5).
        vq.set_used_event(&mut mem, 4);
        q.add_used(&mut mem, 0, 0).unwrap(); // 4
        assert!(!q.needs_interrupt(&mem).unwrap());
        q.add_used(&mut mem, 0, 0).unwrap(); // 5
        q.add_used(&mut mem, 0, 0).unwrap(); // 6: batch passing the event
        assert!(q.needs_interrupt(&mem).unwrap());
        // The flag is ignored with EVENT_IDX.
        vq.set_avail_flags(&mut mem, queue::AVAIL_F_NO_INTERRUPT);
        vq.set_used_event(&mut mem, 6);
        q.add_used(&mut mem, 0, 0).unwrap();
        assert!(q.needs_interrupt(&mem).unwrap());
    }

    #[test]
    fn event_index_across_the_16_bit_wrap() {
        let (mut mem, vq) = setup(8);
        let mut q = vq.queue(false, true);
        // Move used_idx to 0xfffe quietly (event far away).
        vq.set_used_event(&mut mem, 0x7fff);
        for _ in 0..0xfffeu32 {
            q.add_used(&mut mem, 0, 0).unwrap();
        }
        let _ = q.needs_interrupt(&mem).unwrap();
        vq.set_used_event(&mut mem, 0xffff);
        q.add_used(&mut mem, 0, 0).unwrap(); // 0xffff
        assert!(!q.needs_interrupt(&mem).unwrap());
        q.add_used(&mut mem, 0, 0).unwrap(); // 0x0000
        q.add_used(&mut mem, 0, 0).unwrap(); // 0x0001
        assert!(
            q.needs_interrupt(&mem).unwrap(),
            "event 0xffff passed over the wrap"
        );
    }

    #[test]
    fn an_empty_queue_with_event_index_sets_avail_event() {
        let (mut mem, mut vq) = setup(8);
        vq.desc(&mut mem, 0, 0x8000, 2, R, 0);
        let mut q = vq.queue(false, true);
        mem.put(vq.used + 4 + 8 * 8, &0xaaaau16.to_le_bytes());
        assert!(q.pop(&mut mem).unwrap().is_none());
        assert_eq!(vq.avail_event(&mem), 0);
        vq.offer(&mut mem, 0);
        vq.offer(&mut mem, 0);
        assert!(q.pop(&mut mem).unwrap().is_some());
        assert!(q.pop(&mut mem).unwrap().is_some());
        assert!(q.pop(&mut mem).unwrap().is_none());
        assert_eq!(vq.avail_event(&mem), 2, "notify me when entry 2 comes");
        // Without EVENT_IDX the field is the driver's to ignore: not written.
        let (mut mem, vq) = setup(8);
        let mut q = vq.queue(false, false);
        mem.put(vq.used + 4 + 8 * 8, &0xaaaau16.to_le_bytes());
        assert!(q.pop(&mut mem).unwrap().is_none());
        assert_eq!(vq.avail_event(&mem), 0xaaaa);
    }
}

/// Driving the transport as Linux's `virtio_pci_modern` does, through BAR and configuration
/// accesses only.
pub(super) mod drive {
    use super::*;
    use crate::pci::bus::PciDevice;
    use crate::pci::config::reg;
    use crate::pci::msix::MsiMessage;
    use pci::common;

    pub fn r(t: &mut dyn PciDevice, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        t.bar_read(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn w(t: &mut dyn PciDevice, off: u64, len: usize, v: u64) {
        t.bar_write(0, off, &v.to_le_bytes()[..len]);
    }

    pub fn cfg_r(t: &mut dyn PciDevice, off: u16, len: usize) -> u32 {
        let mut b = [0u8; 4];
        t.config_read(off, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    pub fn cfg_w(t: &mut dyn PciDevice, off: u16, len: usize, v: u32) {
        t.config_write(off, &v.to_le_bytes()[..len]);
    }

    pub fn status(t: &mut dyn PciDevice) -> u8 {
        r(t, common::DEVICE_STATUS, 1) as u8
    }

    /// The virtio capabilities found by walking the list: (offset, cfg_type, bar, offset in
    /// BAR, length, cap_len).
    pub fn virtio_caps(t: &mut dyn PciDevice) -> Vec<(u16, u8, u8, u32, u32, u8)> {
        let mut out = Vec::new();
        let mut at = cfg_r(t, reg::CAPABILITIES, 1) as u16;
        while at != 0 {
            if cfg_r(t, at, 1) == u32::from(pci::VENDOR_CAPABILITY) {
                out.push((
                    at,
                    cfg_r(t, at + 3, 1) as u8,
                    cfg_r(t, at + 4, 1) as u8,
                    cfg_r(t, at + 8, 4),
                    cfg_r(t, at + 12, 4),
                    cfg_r(t, at + 2, 1) as u8,
                ));
            }
            at = cfg_r(t, at + 1, 1) as u16;
        }
        out
    }

    /// The message vector `v` sends once programmed by [`enable_msix`].
    pub fn message(v: u16) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000 | u64::from(v) << 12,
            data: 0x40 + u32::from(v),
        }
    }

    /// MSI-X on, `vectors` entries programmed and unmasked.
    pub fn enable_msix(t: &mut dyn PciDevice, vectors: u16) {
        let cap = u16::from(t.config().find_capability(0x11).unwrap());
        cfg_w(t, cap + 2, 2, 0x8000);
        for v in 0..vectors {
            let m = message(v);
            let at = 16 * u64::from(v);
            t.bar_write(1, at, &(m.address as u32).to_le_bytes());
            t.bar_write(1, at + 4, &0u32.to_le_bytes());
            t.bar_write(1, at + 8, &m.data.to_le_bytes());
            t.bar_write(1, at + 12, &0u32.to_le_bytes());
        }
    }

    /// Negotiates `features`; returns the status read back after FEATURES_OK.
    pub fn negotiate(t: &mut dyn PciDevice, features: u64) -> u8 {
        w(t, common::DEVICE_STATUS, 1, 0);
        w(t, common::DEVICE_STATUS, 1, u64::from(status::ACKNOWLEDGE));
        w(
            t,
            common::DEVICE_STATUS,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER),
        );
        for sel in 0..2u64 {
            w(t, common::DRIVER_FEATURE_SELECT, 4, sel);
            w(
                t,
                common::DRIVER_FEATURE,
                4,
                (features >> (32 * sel)) & 0xffff_ffff,
            );
        }
        w(
            t,
            common::DEVICE_STATUS,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
        );
        status(t)
    }

    /// Sets up queue `q` over `vq` with vector `q + 1` and enables it.
    pub fn setup_queue(t: &mut dyn PciDevice, q: u16, vq: &Vq) {
        w(t, common::QUEUE_SELECT, 2, u64::from(q));
        w(t, common::QUEUE_SIZE, 2, u64::from(vq.size));
        w(t, common::QUEUE_MSIX_VECTOR, 2, u64::from(q) + 1);
        for (at, v) in [
            (common::QUEUE_DESC, vq.desc),
            (common::QUEUE_DRIVER, vq.avail),
            (common::QUEUE_DEVICE, vq.used),
        ] {
            w(t, at, 4, v & 0xffff_ffff);
            w(t, at + 4, 4, v >> 32);
        }
        w(t, common::QUEUE_ENABLE, 2, 1);
    }

    /// The whole bring-up: MSI-X, features, queues, config vector 0, DRIVER_OK.
    pub fn bring_up(t: &mut dyn PciDevice, features: u64, vqs: &[&Vq]) {
        enable_msix(t, vqs.len() as u16 + 1);
        let s = negotiate(t, features);
        assert_ne!(s & status::FEATURES_OK, 0, "features {features:#x} refused");
        w(t, common::MSIX_CONFIG, 2, 0);
        for (q, vq) in vqs.iter().enumerate() {
            setup_queue(t, q as u16, vq);
        }
        w(
            t,
            common::DEVICE_STATUS,
            1,
            u64::from(s | status::DRIVER_OK),
        );
    }

    /// Writes queue `q`'s notification as Linux does (a 16-bit write of the index at
    /// `notify_off * multiplier`).
    pub fn notify(t: &mut dyn PciDevice, q: u16) {
        w(t, common::QUEUE_SELECT, 2, u64::from(q));
        let off = r(t, common::QUEUE_NOTIFY_OFF, 2);
        w(
            t,
            pci::NOTIFY_OFFSET + off * u64::from(pci::NOTIFY_MULTIPLIER),
            2,
            u64::from(q),
        );
    }

    /// Every interrupt waiting.
    pub fn interrupts(f: &mut dyn VirtioFunction) -> Vec<MsiMessage> {
        core::iter::from_fn(|| f.next_interrupt()).collect()
    }
}

mod transport_tests {
    use super::drive::*;
    use super::*;
    use crate::pci::bus::PciDevice;
    use crate::pci::config::reg;
    use console::Console;
    use pci::{cfg_type, common, VirtioPci};

    fn console() -> VirtioPci<Console> {
        VirtioPci::new(Console::new(Some((80, 25)))).unwrap()
    }

    #[test]
    fn identity_bars_and_capabilities_are_what_linux_looks_for() {
        let cases: [(Box<dyn PciDevice>, u16, u32, u16); 3] = [
            (
                Box::new(VirtioPci::new(net::Net::new([2, 0, 0, 0, 0, 1])).unwrap()),
                0x1041,
                0x02_0000,
                2,
            ),
            (
                Box::new(VirtioPci::new(blk::Blk::new(8, false, b"x")).unwrap()),
                0x1042,
                0x01_0000,
                1,
            ),
            (Box::new(console()), 0x1043, 0x07_8000, 2),
        ];
        for (mut t, device, class, queues) in cases {
            let t = t.as_mut();
            assert_eq!(cfg_r(t, reg::VENDOR_ID, 2), 0x1af4);
            assert_eq!(cfg_r(t, reg::DEVICE_ID, 2), u32::from(device));
            assert_eq!(cfg_r(t, reg::REVISION, 1), 1, "non-transitional");
            assert_eq!(cfg_r(t, reg::REVISION, 4) >> 8, class);
            assert_eq!(cfg_r(t, reg::SUBSYSTEM_VENDOR_ID, 2), 0x1af4);
            assert_eq!(cfg_r(t, reg::SUBSYSTEM_ID, 2), u32::from(device - 0x1040));
            assert_eq!(cfg_r(t, reg::INTERRUPT_PIN, 1), 0, "MSI-X only");
            // BAR sizing: 16 KiB and 4 KiB 32-bit non-prefetchable memory.
            for (bar, mask) in [(0u16, 0xffff_c000u32), (1, 0xffff_f000)] {
                cfg_w(t, reg::BAR0 + 4 * bar, 4, u32::MAX);
                assert_eq!(cfg_r(t, reg::BAR0 + 4 * bar, 4), mask);
            }
            let caps = virtio_caps(t);
            let types: Vec<u8> = caps.iter().map(|c| c.1).collect();
            assert_eq!(
                types,
                vec![
                    cfg_type::COMMON,
                    cfg_type::NOTIFY,
                    cfg_type::ISR,
                    cfg_type::DEVICE,
                    cfg_type::PCI
                ]
            );
            for &(at, ty, bar, offset, length, cap_len) in &caps {
                assert_eq!(bar, 0);
                assert!(u64::from(offset) + u64::from(length) <= pci::BAR0_SIZE);
                let expect_len = if matches!(ty, cfg_type::NOTIFY | cfg_type::PCI) {
                    20
                } else {
                    16
                };
                assert_eq!(cap_len, expect_len);
                match ty {
                    cfg_type::COMMON => assert_eq!((offset, length), (0, 0x3c)),
                    cfg_type::ISR => assert_eq!((offset, length), (0x1000, 1)),
                    cfg_type::DEVICE => assert_eq!(offset, 0x2000),
                    cfg_type::NOTIFY => {
                        assert_eq!((offset, length), (0x3000, 4 * u32::from(queues)));
                        assert_eq!(cfg_r(t, at + 16, 4), 4, "notify_off_multiplier");
                    }
                    _ => {}
                }
            }
            let msix = t.config().find_capability(0x11).unwrap();
            assert_eq!(
                cfg_r(t, u16::from(msix) + 2, 2) & 0x7ff,
                u32::from(queues),
                "queues + 1 vectors"
            );
            assert_eq!(cfg_r(t, u16::from(msix) + 4, 4), 1, "table at 0 of BAR 1");
            assert_eq!(
                cfg_r(t, u16::from(msix) + 8, 4),
                0x801,
                "PBA at 0x800 of BAR 1"
            );
            assert_eq!(r(t, common::NUM_QUEUES, 2), u64::from(queues));
        }
    }

    #[test]
    fn feature_negotiation() {
        let mut t = console();
        let offered = feature::VERSION_1 | console::F_SIZE;
        w(&mut t, common::DEVICE_FEATURE_SELECT, 4, 0);
        assert_eq!(r(&mut t, common::DEVICE_FEATURE, 4), offered & 0xffff_ffff);
        w(&mut t, common::DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(r(&mut t, common::DEVICE_FEATURE, 4), offered >> 32);
        w(&mut t, common::DEVICE_FEATURE_SELECT, 4, 2);
        assert_eq!(r(&mut t, common::DEVICE_FEATURE, 4), 0);
        // Refused: an unoffered feature, or no VERSION_1.
        assert_eq!(
            negotiate(&mut t, offered | feature::RING_EVENT_IDX) & status::FEATURES_OK,
            0
        );
        assert_eq!(negotiate(&mut t, console::F_SIZE) & status::FEATURES_OK, 0);
        // Accepted: a subset with VERSION_1.
        assert_ne!(
            negotiate(&mut t, feature::VERSION_1) & status::FEATURES_OK,
            0
        );
        assert_eq!(t.driver_features(), feature::VERSION_1);
        // Driver features are frozen after FEATURES_OK.
        w(&mut t, common::DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut t, common::DRIVER_FEATURE, 4, 1);
        assert_eq!(t.driver_features(), feature::VERSION_1);
        w(&mut t, common::DRIVER_FEATURE_SELECT, 4, 1);
        assert_eq!(r(&mut t, common::DRIVER_FEATURE, 4), 1);
        // Selects past 1 drop the write.
        assert_ne!(negotiate(&mut t, offered) & status::FEATURES_OK, 0);
        let before = t.driver_features();
        w(&mut t, common::DEVICE_STATUS, 1, 0);
        w(&mut t, common::DRIVER_FEATURE_SELECT, 4, 7);
        w(&mut t, common::DRIVER_FEATURE, 4, 0xffff_ffff);
        assert_eq!(
            t.driver_features(),
            0,
            "reset cleared them and select 7 wrote nothing"
        );
        assert_ne!(before, 0);
    }

    #[test]
    fn queue_registers() {
        let mut t = console();
        let vq = Vq::new(0x1_2345_0000, 64);
        w(&mut t, common::QUEUE_SELECT, 2, 1);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 256, "max offered");
        assert_eq!(r(&mut t, common::QUEUE_NOTIFY_OFF, 2), 1);
        assert_eq!(r(&mut t, common::QUEUE_MSIX_VECTOR, 2), 0xffff);
        for bad in [0u64, 100, 512] {
            w(&mut t, common::QUEUE_SIZE, 2, bad);
            assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 256, "size {bad} ignored");
        }
        setup_queue(&mut t, 1, &vq);
        w(&mut t, common::QUEUE_SELECT, 2, 1);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 64);
        assert_eq!(r(&mut t, common::QUEUE_ENABLE, 2), 1);
        assert_eq!(r(&mut t, common::QUEUE_DESC, 8), vq.desc);
        assert_eq!(r(&mut t, common::QUEUE_DRIVER + 4, 4), vq.avail >> 32);
        assert_eq!(r(&mut t, common::QUEUE_DEVICE, 4), vq.used & 0xffff_ffff);
        assert_eq!(r(&mut t, common::QUEUE_MSIX_VECTOR, 2), 2);
        // Enabled: size and addresses no longer change.
        w(&mut t, common::QUEUE_SIZE, 2, 32);
        w(&mut t, common::QUEUE_DESC, 4, 0);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 64);
        assert_eq!(r(&mut t, common::QUEUE_DESC, 8), vq.desc);
        // An 8-byte write to a 64-bit register lands whole.
        w(&mut t, common::QUEUE_SELECT, 2, 0);
        w(&mut t, common::QUEUE_DEVICE, 8, 0xaabb_ccdd_0000_1000);
        assert_eq!(t.queue(0).unwrap().used.as_u64(), 0xaabb_ccdd_0000_1000);
        // Past the last queue: size 0, nothing written anywhere.
        w(&mut t, common::QUEUE_SELECT, 2, 2);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 0);
        assert_eq!(r(&mut t, common::QUEUE_MSIX_VECTOR, 2), 0xffff);
        w(&mut t, common::QUEUE_ENABLE, 2, 1);
        w(&mut t, common::QUEUE_SIZE, 2, 16);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 0);
        // queue_reset is not offered: reads 0, ignores writes; read-only registers stay.
        w(&mut t, common::QUEUE_SELECT, 2, 1);
        w(&mut t, common::QUEUE_RESET, 2, 1);
        assert_eq!(r(&mut t, common::QUEUE_RESET, 2), 0);
        assert_eq!(r(&mut t, common::QUEUE_ENABLE, 2), 1);
        w(&mut t, common::NUM_QUEUES, 2, 9);
        w(&mut t, common::QUEUE_NOTIFY_OFF, 2, 9);
        assert_eq!(r(&mut t, common::NUM_QUEUES, 2), 2);
        assert_eq!(r(&mut t, common::QUEUE_NOTIFY_OFF, 2), 1);
        assert_eq!(r(&mut t, common::QUEUE_NOTIFY_DATA, 2), 1);
    }

    #[test]
    fn msix_vectors_read_back_or_no_vector() {
        let mut t = console();
        for (v, expect) in [(0u64, 0u64), (2, 2), (3, 0xffff), (0xffff, 0xffff)] {
            w(&mut t, common::MSIX_CONFIG, 2, v);
            assert_eq!(r(&mut t, common::MSIX_CONFIG, 2), expect);
            w(&mut t, common::QUEUE_SELECT, 2, 0);
            w(&mut t, common::QUEUE_MSIX_VECTOR, 2, v);
            assert_eq!(r(&mut t, common::QUEUE_MSIX_VECTOR, 2), expect);
        }
    }

    #[test]
    fn reset_and_status() {
        let mut t = console();
        let vq = Vq::new(0x1000, 16);
        bring_up(&mut t, feature::VERSION_1, &[&vq, &vq]);
        let s = status(&mut t);
        assert_eq!(
            s,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
        // The driver cannot set DEVICE_NEEDS_RESET.
        w(
            &mut t,
            common::DEVICE_STATUS,
            1,
            u64::from(s | status::DEVICE_NEEDS_RESET),
        );
        assert_eq!(status(&mut t), s);
        notify(&mut t, 1);
        w(&mut t, common::DEVICE_STATUS, 1, 0);
        assert_eq!(status(&mut t), 0);
        assert_eq!(t.driver_features(), 0);
        assert_eq!(r(&mut t, common::MSIX_CONFIG, 2), 0xffff);
        w(&mut t, common::QUEUE_SELECT, 2, 1);
        assert_eq!(r(&mut t, common::QUEUE_ENABLE, 2), 0);
        assert_eq!(r(&mut t, common::QUEUE_SIZE, 2), 256);
        assert_eq!(r(&mut t, common::QUEUE_DESC, 8), 0);
        assert_eq!(t.take_notified(), 0, "reset forgets notifications");
        assert_eq!(t.stats().resets, 2, "negotiate's reset and this one");
        assert!(
            t.msix().enabled(),
            "MSI-X is the PCI function's, not virtio's"
        );
    }

    #[test]
    fn notifications_isr_and_generation() {
        let mut t = console();
        notify(&mut t, 1);
        notify(&mut t, 0);
        notify(&mut t, 1);
        w(&mut t, pci::NOTIFY_OFFSET + 8, 2, 2); // a queue that does not exist
        assert_eq!(t.take_notified(), 0b11);
        assert_eq!(t.take_notified(), 0);
        assert_eq!(t.stats().notifications, 3);
        assert_eq!(r(&mut t, pci::ISR_OFFSET, 1), 0);
        let g = r(&mut t, common::CONFIG_GENERATION, 1);
        t.change_config(|_| {});
        assert_eq!(r(&mut t, common::CONFIG_GENERATION, 1), (g + 1) & 0xff);
        assert_eq!(
            r(&mut t, pci::ISR_OFFSET, 1),
            0,
            "no driver yet: no notification"
        );
        assert!(interrupts(&mut t).is_empty());
        let vq = Vq::new(0x1000, 16);
        bring_up(&mut t, feature::VERSION_1, &[&vq, &vq]);
        // DRIVER_OK marks every queue: what was posted before it gets processed.
        assert_eq!(t.take_notified(), 0b11);
        assert_eq!(t.stats().notifications, 3, "not counted as the driver's");
        t.change_config(|_| {});
        assert_eq!(r(&mut t, common::CONFIG_GENERATION, 1), (g + 2) & 0xff);
        assert_eq!(
            interrupts(&mut t),
            vec![message(0)],
            "msix_config is vector 0"
        );
        assert_eq!(r(&mut t, pci::ISR_OFFSET, 1), 2, "configuration change");
        assert_eq!(r(&mut t, pci::ISR_OFFSET, 1), 0, "read to clear");
        w(&mut t, common::CONFIG_GENERATION, 1, 0x55);
        assert_eq!(
            r(&mut t, common::CONFIG_GENERATION, 1),
            (g + 2) & 0xff,
            "read-only"
        );
    }

    #[test]
    fn the_pci_cfg_window_reaches_bar_0() {
        let mut t = console();
        let caps = virtio_caps(&mut t);
        let at = caps.iter().find(|c| c.1 == cfg_type::PCI).unwrap().0;
        cfg_w(&mut t, at + 4, 1, 0);
        cfg_w(&mut t, at + 8, 4, common::NUM_QUEUES as u32);
        cfg_w(&mut t, at + 12, 4, 2);
        assert_eq!(
            cfg_r(&mut t, at + 16, 4),
            2,
            "num_queues through the window"
        );
        cfg_w(&mut t, at + 8, 4, common::QUEUE_SELECT as u32);
        cfg_w(&mut t, at + 16, 2, 1);
        assert_eq!(
            r(&mut t, common::QUEUE_SELECT, 2),
            1,
            "a write through the window"
        );
        // A length that is not 1, 2 or 4 does nothing.
        cfg_w(&mut t, at + 12, 4, 3);
        assert_eq!(cfg_r(&mut t, at + 16, 4), 0);
    }
}

mod device_tests {
    use super::drive::*;
    use super::*;
    use blk::{req, req_status, Blk, BlkRequest};
    use console::Console;
    use net::Net;
    use pci::{common, VirtioPci, DEVICE_OFFSET};

    fn device_config(t: &mut dyn crate::pci::bus::PciDevice, at: u64, len: usize) -> u64 {
        r(t, DEVICE_OFFSET + at, len)
    }

    #[test]
    fn configuration_spaces() {
        let mut n = VirtioPci::new(Net::new([0x52, 0x54, 0, 0x12, 0x34, 0x56])).unwrap();
        assert_eq!(device_config(&mut n, 0, 4), 0x1200_5452);
        assert_eq!(device_config(&mut n, 4, 2), 0x5634);
        assert_eq!(device_config(&mut n, 6, 2), u64::from(net::S_LINK_UP));
        n.change_config(|d| d.set_link(false));
        assert_eq!(device_config(&mut n, 6, 2), 0);
        assert_eq!(device_config(&mut n, 12, 4), 0, "past the structure");
        w(&mut n, common::DEVICE_FEATURE_SELECT, 4, 0);
        let lo = r(&mut n, common::DEVICE_FEATURE, 4);
        assert_eq!(
            lo,
            net::F_MAC
                | net::F_STATUS
                | net::F_CSUM
                | net::F_HOST_TSO4
                | net::F_HOST_TSO6
                | feature::RING_EVENT_IDX
                | feature::RING_INDIRECT_DESC
        );

        let mut b = VirtioPci::new(Blk::new(0x1_0000_0001, false, b"disk")).unwrap();
        assert_eq!(device_config(&mut b, 0, 8), 0x1_0000_0001, "capacity");
        assert_eq!(device_config(&mut b, 4, 4), 1, "capacity's high dword");
        assert_eq!(
            device_config(&mut b, 12, 4),
            queue::MAX_SEGMENTS as u64 - 2,
            "seg_max"
        );
        assert_eq!(device_config(&mut b, 20, 4), 512, "blk_size");
        assert_eq!(device_config(&mut b, 34, 2), 1, "num_queues");
        let features = r(&mut b, common::DEVICE_FEATURE, 4);
        assert_eq!(features & blk::F_RO, 0);
        assert_ne!(
            features & (blk::F_SEG_MAX | blk::F_BLK_SIZE | blk::F_FLUSH),
            0
        );
        let mut ro = VirtioPci::new(Blk::new(8, true, b"")).unwrap();
        assert_ne!(r(&mut ro, common::DEVICE_FEATURE, 4) & blk::F_RO, 0);

        let mut c = VirtioPci::new(Console::new(Some((132, 43)))).unwrap();
        assert_eq!(device_config(&mut c, 0, 2), 132);
        assert_eq!(device_config(&mut c, 2, 2), 43);
        assert_eq!(device_config(&mut c, 4, 4), 1, "max_nr_ports");
        assert_eq!(r(&mut c, common::DEVICE_FEATURE, 4), console::F_SIZE);
        let mut c = VirtioPci::new(Console::new(None)).unwrap();
        assert_eq!(
            r(&mut c, common::DEVICE_FEATURE, 4),
            0,
            "no SIZE without a size"
        );
        // Device configuration is read-only: writes change nothing.
        w(&mut c, DEVICE_OFFSET, 4, 0xffff_ffff);
        assert_eq!(device_config(&mut c, 0, 4), 0);
    }

    fn running_console() -> (VirtioPci<Console>, Mem, Vq, Vq, FakeBackend) {
        let mut t = VirtioPci::new(Console::new(None)).unwrap();
        let (mem, rx) = setup(16);
        let tx = Vq::new(0x10000, 16);
        bring_up(&mut t, feature::VERSION_1, &[&rx, &tx]);
        (t, mem, rx, tx, FakeBackend::default())
    }

    #[test]
    fn console_end_to_end() {
        let (mut t, mut mem, mut rx, mut tx, mut host) = running_console();
        // Transmit: bytes to the host, the chain used with length 0, vector 2 (queue 1).
        mem.put(0x40000, b"hel");
        mem.put(0x41000, b"lo");
        tx.desc(&mut mem, 4, 0x40000, 3, R | N, 9);
        tx.desc(&mut mem, 9, 0x41000, 2, R, 0);
        tx.offer(&mut mem, 4);
        assert_eq!(t.take_notified(), 0b11, "DRIVER_OK marked both");
        notify(&mut t, 1);
        assert_eq!(t.take_notified(), 0b10);
        t.process(&mut mem, &mut host);
        assert_eq!(host.to_host.pop_front(), Some((0, b"hello".to_vec())));
        assert_eq!(tx.used_idx(&mem), 1);
        assert_eq!(tx.used_elem(&mem, 0), (4, 0));
        assert_eq!(interrupts(&mut t), vec![message(2)]);
        assert_eq!(r(&mut t, pci::ISR_OFFSET, 1), 1);
        // Receive: nothing offered yet, the record waits.
        host.from_host.push_back((0, b"abcdefgh".to_vec()));
        t.process(&mut mem, &mut host);
        assert_eq!(host.from_host.len(), 1);
        assert!(interrupts(&mut t).is_empty());
        // Two 5-byte buffers: the record is split over them.
        rx.desc(&mut mem, 0, 0x50000, 5, W, 0);
        rx.desc(&mut mem, 1, 0x51000, 5, W, 0);
        rx.offer(&mut mem, 0);
        rx.offer(&mut mem, 1);
        t.process(&mut mem, &mut host);
        assert!(host.from_host.is_empty());
        assert_eq!(mem.get(0x50000, 5), b"abcde");
        assert_eq!(mem.get(0x51000, 5), b"fgh\0\0");
        assert_eq!(
            (rx.used_elem(&mem, 0), rx.used_elem(&mem, 1)),
            ((0, 5), (1, 3))
        );
        assert_eq!(
            interrupts(&mut t),
            vec![message(1)],
            "one interrupt for the batch"
        );
        assert_eq!(t.stats().chains, 3);
    }

    #[test]
    fn a_full_ring_toward_the_host_leaves_the_chain_available() {
        let (mut t, mut mem, _rx, mut tx, mut host) = running_console();
        host.capacity = Some(1);
        host.to_host.push_back((0, vec![1]));
        tx.desc(&mut mem, 0, 0x40000, 3, R, 0);
        tx.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert_eq!(tx.used_idx(&mem), 0, "not taken");
        assert_eq!(t.queue(1).unwrap().last_avail(), 0);
        host.to_host.clear();
        t.process(&mut mem, &mut host);
        assert_eq!(tx.used_idx(&mem), 1);
        assert_eq!(host.to_host.len(), 1);
        // A record that can never fit is dropped and counted; the chain is still used.
        host.max_record = Some(2);
        tx.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert_eq!(tx.used_idx(&mem), 2);
        assert_eq!(t.stats().dropped, 1);
    }

    #[test]
    fn console_output_goes_in_chunks_and_resumes_where_the_ring_filled() {
        let (mut t, mut mem, _rx, mut tx, mut host) = running_console();
        let text: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        mem.put(0x40000, &text[..5000]);
        mem.put(0x50000, &text[5000..]);
        tx.desc(&mut mem, 0, 0x40000, 5000, R | N, 1);
        tx.desc(&mut mem, 1, 0x50000, 5000, R, 0);
        tx.offer(&mut mem, 0);
        host.capacity = Some(1);
        t.process(&mut mem, &mut host);
        assert_eq!(host.to_host.len(), 1);
        assert_eq!(tx.used_idx(&mem), 0, "not all sent: not used");
        let mut got: Vec<u8> = Vec::new();
        while let Some((_, d)) = host.to_host.pop_front() {
            assert!(d.len() <= console::CONSOLE_MAX_CHUNK as usize);
            got.extend_from_slice(&d);
            t.process(&mut mem, &mut host);
        }
        assert_eq!(got, text, "every byte once, in order");
        assert_eq!(tx.used_idx(&mem), 1);
        assert_eq!(tx.used_elem(&mem, 0), (0, 0));
    }

    #[test]
    fn a_malformed_chain_needs_a_reset_and_stops_the_device() {
        let (mut t, mut mem, _rx, mut tx, mut host) = running_console();
        tx.desc(&mut mem, 0, 0x40000, 3, R | N, 1);
        tx.desc(&mut mem, 1, 0x40000, 3, R | N, 0);
        tx.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(t.stats().bad_chains, 1);
        assert_eq!(interrupts(&mut t), vec![message(0)], "configuration change");
        assert_eq!(r(&mut t, pci::ISR_OFFSET, 1), 2);
        // Nothing is processed any more, even a good chain or a host record.
        tx.desc(&mut mem, 2, 0x40000, 3, R, 0);
        tx.offer(&mut mem, 2);
        host.from_host.push_back((0, b"x".to_vec()));
        t.process(&mut mem, &mut host);
        assert!(host.to_host.is_empty() && host.from_host.len() == 1);
        assert_eq!(tx.used_idx(&mem), 0);
        assert_eq!(t.stats().bad_chains, 1, "counted once");
        // The driver resets and sets the device up again: it works.
        let (_, mut rx2) = setup(16);
        let mut tx2 = Vq::new(0x10000, 16);
        mem.bytes.fill(0);
        bring_up(&mut t, feature::VERSION_1, &[&rx2, &tx2]);
        assert_eq!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
        tx2.desc(&mut mem, 0, 0x40000, 3, R, 0);
        tx2.offer(&mut mem, 0);
        rx2.desc(&mut mem, 0, 0x50000, 8, W, 0);
        rx2.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert_eq!(host.to_host.len(), 1);
        assert_eq!(mem.get(0x50000, 1), b"x");
    }

    #[test]
    fn interrupts_wait_while_masked_and_follow_the_vector() {
        let (mut t, mut mem, _rx, mut tx, mut host) = running_console();
        // Mask vector 2 (queue 1's) in the table.
        t.bar_write_masked(2, true);
        tx.desc(&mut mem, 0, 0x40000, 1, R, 0);
        tx.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert!(interrupts(&mut t).is_empty());
        assert!(t.msix().is_pending(2));
        t.bar_write_masked(2, false);
        assert_eq!(interrupts(&mut t), vec![message(2)]);
        // A queue without a vector (the driver wrote NO_VECTOR): ISR bit 0, no message.
        w(&mut t, common::QUEUE_SELECT, 2, 1);
        w(
            &mut t,
            common::QUEUE_MSIX_VECTOR,
            2,
            u64::from(queue::NO_VECTOR),
        );
        let _ = r(&mut t, pci::ISR_OFFSET, 1);
        tx.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert_eq!(tx.used_idx(&mem), 2);
        assert!(interrupts(&mut t).is_empty());
        assert_eq!(r(&mut t, pci::ISR_OFFSET, 1), 1);
        // MSI-X disabled: nothing is sent or kept pending.
        w(&mut t, common::QUEUE_MSIX_VECTOR, 2, 2);
        let cap = u16::from(t.msix().capability());
        cfg_w(&mut t, cap + 2, 2, 0);
        tx.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert!(interrupts(&mut t).is_empty());
        assert!(!t.msix().is_pending(2));
    }

    trait MaskVector {
        fn bar_write_masked(&mut self, v: u16, masked: bool);
    }

    impl<D: VirtioDevice> MaskVector for VirtioPci<D> {
        fn bar_write_masked(&mut self, v: u16, masked: bool) {
            use crate::pci::bus::PciDevice;
            self.bar_write(1, 16 * u64::from(v) + 12, &u32::from(masked).to_le_bytes());
        }
    }

    fn running_net() -> (VirtioPci<Net>, Mem, Vq, Vq, FakeBackend) {
        let mut t = VirtioPci::new(Net::new([2, 0, 0, 0, 0, 1])).unwrap();
        let (mem, rx) = setup(16);
        let tx = Vq::new(0x10000, 16);
        let features = feature::VERSION_1
            | feature::RING_EVENT_IDX
            | feature::RING_INDIRECT_DESC
            | net::F_MAC
            | net::F_STATUS;
        bring_up(&mut t, features, &[&rx, &tx]);
        (t, mem, rx, tx, FakeBackend::default())
    }

    #[test]
    fn net_end_to_end() {
        let (mut t, mut mem, mut rx, mut tx, mut host) = running_net();
        let frame: Vec<u8> = (0..60u8).collect();
        // Header and frame in two descriptors.
        mem.put(0x40000, &[0xaa; 12]);
        mem.put(0x41000, &frame);
        tx.desc(&mut mem, 0, 0x40000, 12, R | N, 1);
        tx.desc(&mut mem, 1, 0x41000, 60, R, 0);
        tx.offer(&mut mem, 0);
        // Header and frame in one buffer, through an indirect table.
        mem.put(0x42000, &[0xbb; 12]);
        mem.put(0x4200c, &frame[..30]);
        Vq::desc_at(&mut mem, 0x43000, 0, 0x42000, 42, R, 0);
        tx.desc(&mut mem, 2, 0x43000, 16, I, 0);
        tx.offer(&mut mem, 2);
        // Only a header: nothing to send.
        tx.desc(&mut mem, 3, 0x40000, 12, R, 0);
        tx.offer(&mut mem, 3);
        tx.set_used_event(&mut mem, 0);
        t.process(&mut mem, &mut host);
        // Each record is the guest's header (passed on: the host's tap does the offloads it
        // asks for) and the frame.
        assert_eq!(
            host.to_host
                .iter()
                .map(|(_, d)| d.clone())
                .collect::<Vec<_>>(),
            vec![
                [&[0xaa; 12][..], &frame].concat(),
                [&[0xbb; 12][..], &frame[..30]].concat()
            ]
        );
        assert_eq!(tx.used_idx(&mem), 3);
        assert_eq!(t.stats().dropped, 1);
        assert_eq!(interrupts(&mut t), vec![message(2)]);
        assert_eq!(tx.avail_event(&mem), 3, "notify me at the next packet");
        // Receive: a frame waits for a buffer.
        host.from_host.push_back((0, frame.clone()));
        t.process(&mut mem, &mut host);
        assert_eq!(host.from_host.len(), 1);
        mem.put(0x50000, &[0xee; 1526]);
        rx.desc(&mut mem, 5, 0x50000, 1526, W, 0);
        rx.offer(&mut mem, 5);
        rx.set_used_event(&mut mem, 0);
        notify(&mut t, 0);
        t.process(&mut mem, &mut host);
        let mut header = [0u8; 12];
        header[10] = 1;
        assert_eq!(mem.get(0x50000, 12), header, "zeroed, num_buffers 1");
        assert_eq!(mem.get(0x5000c, 60), &frame[..]);
        assert_eq!(mem.get(0x5000c + 60, 1), [0xee], "nothing past the frame");
        assert_eq!(rx.used_elem(&mem, 0), (5, 72));
        assert_eq!(interrupts(&mut t), vec![message(1)]);
        // A frame too large for the buffer is dropped; the buffer takes the next frame. The
        // driver's used_event (0, already passed) suppresses the second interrupt.
        host.from_host.push_back((0, vec![1; 2000]));
        host.from_host.push_back((0, vec![7; 20]));
        rx.offer(&mut mem, 5);
        t.process(&mut mem, &mut host);
        assert!(host.from_host.is_empty());
        assert_eq!(rx.used_idx(&mem), 2);
        assert_eq!(rx.used_elem(&mem, 1), (5, 32));
        assert_eq!(mem.get(0x5000c, 20), [7; 20]);
        assert_eq!(t.stats().dropped, 2);
        assert!(interrupts(&mut t).is_empty(), "event index suppressed it");
    }

    #[test]
    fn net_sends_a_segmentation_offload_packet_as_one_record() {
        // What Linux sends with HOST_TSO4: a header asking for segmentation (flags
        // NEEDS_CSUM, gso_type TCPV4, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16)
        // and a packet of almost 64 KiB in 15 pieces of an indirect table (16 entries: the
        // queue's size, the longest chain the driver may make, §2.7.5.3.1).
        let (mut t, mut mem, _rx, mut tx, mut host) = running_net();
        host.max_record = Some(atoll_abi::channel::Kind::Net.max_payload());
        let mut header = [0u8; 12];
        header[0] = 1;
        header[1] = 1;
        header[2..4].copy_from_slice(&66u16.to_le_bytes());
        header[4..6].copy_from_slice(&1448u16.to_le_bytes());
        header[6..8].copy_from_slice(&34u16.to_le_bytes());
        header[8..10].copy_from_slice(&16u16.to_le_bytes());
        mem.put(0x40000, &header);
        let packet: Vec<u8> = (0..65_000u32).map(|i| (i * 7 / 5) as u8).collect();
        Vq::desc_at(&mut mem, 0x43000, 0, 0x40000, 12, R | N, 1);
        for (k, part) in packet.chunks(4400).enumerate() {
            let at = 0x60000 + 0x2000 * k as u64;
            mem.put(at, part);
            let flags = if (k + 1) * 4400 < packet.len() {
                R | N
            } else {
                R
            };
            Vq::desc_at(
                &mut mem,
                0x43000,
                k as u16 + 1,
                at,
                part.len() as u32,
                flags,
                k as u16 + 2,
            );
        }
        tx.desc(&mut mem, 0, 0x43000, 16 * 16, I, 0);
        tx.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert_eq!(
            (t.stats().dropped, t.stats().bad_chains, tx.used_idx(&mem)),
            (0, 0, 1)
        );
        assert_eq!(host.to_host.len(), 1, "one record for the whole packet");
        assert_eq!(host.to_host[0].1, [&header[..], &packet].concat());
        assert_eq!(tx.used_idx(&mem), 1);
        assert_eq!(t.stats().dropped, 0);
        // Past the channel's limit (a guest that ignores the 64 KiB bound): dropped, counted,
        // the chain still used.
        host.to_host.clear();
        host.max_record = Some(12 + 60_000);
        tx.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert!(host.to_host.is_empty());
        assert_eq!(tx.used_idx(&mem), 2);
        assert_eq!(t.stats().dropped, 1);
    }

    fn running_blk(capacity: u64, read_only: bool) -> (VirtioPci<Blk>, Mem, Vq, FakeBackend) {
        let mut t = VirtioPci::new(Blk::new(capacity, read_only, b"atoll-disk0")).unwrap();
        let (mem, vq) = setup(128);
        let mut features = feature::VERSION_1 | feature::RING_INDIRECT_DESC | blk::F_FLUSH;
        if read_only {
            features |= blk::F_RO;
        }
        bring_up(&mut t, features, &[&vq]);
        (t, mem, vq, FakeBackend::default())
    }

    /// A request at `head`: header at 0x40000 + 0x100 * head, then `data` segments
    /// (addr, len, writable), then the status byte at 0x7f000 + head.
    fn request(
        mem: &mut Mem,
        vq: &mut Vq,
        head: u16,
        kind: u32,
        sector: u64,
        data: &[(u64, u32, bool)],
    ) {
        let hdr_at = 0x40000 + 0x100 * u64::from(head);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.put(hdr_at, &h);
        let base = head * 4;
        let mut i = base;
        vq.desc(mem, i, hdr_at, 16, R | N, i + 1);
        for &(addr, len, writable) in data {
            i += 1;
            vq.desc(
                mem,
                i,
                addr,
                len,
                if writable { W | N } else { R | N },
                i + 1,
            );
        }
        i += 1;
        vq.desc(mem, i, 0x7f000 + u64::from(head), 1, W, 0);
        mem.put(0x7f000 + u64::from(head), &[0xff]);
        vq.offer(mem, base);
    }

    /// A reply as the channel carries it: status, 7 bytes of padding, data.
    fn reply(status: u8, data: &[u8]) -> Vec<u8> {
        let mut r = vec![status, 0, 0, 0, 0, 0, 0, 0];
        r.extend_from_slice(data);
        r
    }

    fn status_of(mem: &Mem, head: u16) -> u8 {
        mem.get(0x7f000 + u64::from(head), 1)[0]
    }

    #[test]
    fn blk_writes_reads_and_local_answers() {
        let (mut t, mut mem, mut vq, mut host) = running_blk(64, false);
        // A write of two sectors at sector 3.
        mem.put(0x60000, &[0x11; 1024]);
        request(&mut mem, &mut vq, 0, req::OUT, 3, &[(0x60000, 1024, false)]);
        t.process(&mut mem, &mut host);
        let (tag, payload) = host.to_host.pop_front().unwrap();
        assert_eq!(tag & 0xffff, 0, "head 0");
        let mut h = [0u8; 16];
        h.copy_from_slice(&payload[..16]);
        assert_eq!(
            BlkRequest::decode(&h).unwrap(),
            BlkRequest {
                kind: req::OUT,
                len: 1024,
                sector: 3
            }
        );
        assert_eq!(&payload[16..], &[0x11; 1024][..]);
        assert_eq!(vq.used_idx(&mem), 0, "outstanding until the host replies");
        assert_eq!(t.device().in_flight(), 1);
        host.from_host.push_back((tag, reply(req_status::OK, &[])));
        t.process(&mut mem, &mut host);
        assert_eq!(status_of(&mem, 0), req_status::OK);
        assert_eq!(vq.used_elem(&mem, 0), (0, 1));
        assert_eq!(interrupts(&mut t), vec![message(1)]);
        // A read of two sectors at 10 into two buffers.
        request(
            &mut mem,
            &mut vq,
            1,
            req::IN,
            10,
            &[(0x61000, 512, true), (0x62000, 512, true)],
        );
        t.process(&mut mem, &mut host);
        let (tag, payload) = host.to_host.pop_front().unwrap();
        assert_eq!(payload.len(), 16);
        h.copy_from_slice(&payload);
        assert_eq!(
            BlkRequest::decode(&h).unwrap(),
            BlkRequest {
                kind: req::IN,
                len: 1024,
                sector: 10
            }
        );
        let data: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        host.from_host
            .push_back((tag, reply(req_status::OK, &data)));
        t.process(&mut mem, &mut host);
        assert_eq!(mem.get(0x61000, 512), &data[..512]);
        assert_eq!(mem.get(0x62000, 512), &data[512..]);
        assert_eq!(status_of(&mem, 1), req_status::OK);
        assert_eq!(vq.used_elem(&mem, 1), (4, 1025));
        // Flush goes to the host; its reply is a status.
        request(&mut mem, &mut vq, 2, req::FLUSH, 99, &[]);
        t.process(&mut mem, &mut host);
        let (tag, payload) = host.to_host.pop_front().unwrap();
        h.copy_from_slice(&payload);
        assert_eq!(
            BlkRequest::decode(&h).unwrap(),
            BlkRequest {
                kind: req::FLUSH,
                len: 0,
                sector: 0
            }
        );
        host.from_host
            .push_back((tag, reply(req_status::IOERR, &[])));
        t.process(&mut mem, &mut host);
        assert_eq!(
            status_of(&mem, 2),
            req_status::IOERR,
            "the host's status passes through"
        );
        // Answered locally: GET_ID, past the capacity, partial sectors, unknown types.
        request(&mut mem, &mut vq, 3, req::GET_ID, 0, &[(0x63000, 20, true)]);
        request(&mut mem, &mut vq, 4, req::IN, 63, &[(0x64000, 1024, true)]);
        request(&mut mem, &mut vq, 5, req::OUT, 0, &[(0x64000, 100, false)]);
        request(&mut mem, &mut vq, 6, 11, 0, &[]);
        request(
            &mut mem,
            &mut vq,
            7,
            req::IN,
            u64::MAX,
            &[(0x64000, 512, true)],
        );
        t.process(&mut mem, &mut host);
        assert!(host.to_host.is_empty(), "nothing for the host");
        assert_eq!(mem.get(0x63000, 20), b"atoll-disk0\0\0\0\0\0\0\0\0\0");
        assert_eq!(status_of(&mem, 3), req_status::OK);
        assert_eq!(vq.used_elem(&mem, 3), (12, 21));
        assert_eq!(status_of(&mem, 4), req_status::IOERR);
        assert_eq!(vq.used_elem(&mem, 4), (16, 1));
        assert_eq!(status_of(&mem, 5), req_status::IOERR);
        assert_eq!(status_of(&mem, 6), req_status::UNSUPP);
        assert_eq!(
            status_of(&mem, 7),
            req_status::IOERR,
            "sector + length overflows"
        );
        // A failed read may carry less than asked (what it read before failing).
        request(&mut mem, &mut vq, 8, req::IN, 0, &[(0x65000, 1024, true)]);
        t.process(&mut mem, &mut host);
        let (tag, _) = host.to_host.pop_front().unwrap();
        host.from_host
            .push_back((tag, reply(req_status::IOERR, &[9; 512])));
        t.process(&mut mem, &mut host);
        assert_eq!(status_of(&mem, 8), req_status::IOERR);
        assert_eq!(mem.get(0x65000, 512), [9; 512]);
        assert_eq!(vq.used_elem(&mem, 8), (32, 513));
        // A status the protocol does not know reaches the guest as IOERR.
        request(&mut mem, &mut vq, 9, req::FLUSH, 0, &[]);
        t.process(&mut mem, &mut host);
        let (tag, _) = host.to_host.pop_front().unwrap();
        host.from_host.push_back((tag, reply(0x77, &[])));
        t.process(&mut mem, &mut host);
        assert_eq!(status_of(&mem, 9), req_status::IOERR);
        assert_eq!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn blk_read_only_refuses_writes() {
        let (mut t, mut mem, mut vq, mut host) = running_blk(64, true);
        request(&mut mem, &mut vq, 0, req::OUT, 0, &[(0x60000, 512, false)]);
        request(&mut mem, &mut vq, 1, req::IN, 0, &[(0x60000, 512, true)]);
        t.process(&mut mem, &mut host);
        assert_eq!(status_of(&mem, 0), req_status::IOERR);
        assert_eq!(host.to_host.len(), 1, "only the read");
    }

    #[test]
    fn blk_bad_host_replies_need_a_reset_and_write_nothing_outside() {
        type Reply = fn(u32) -> (u32, Vec<u8>);
        let cases: [(&str, Reply); 5] = [
            ("unknown tag", |tag| (tag ^ 5, reply(0, &[]))),
            ("longer than the buffers", |tag| (tag, reply(0, &[0; 513]))),
            ("an error status with too much data", |tag| {
                (tag, reply(1, &[0; 513]))
            }),
            ("OK but short", |tag| (tag, reply(0, &[0; 511]))),
            ("shorter than the status", |tag| (tag, vec![0; 7])),
        ];
        for (what, bad) in cases {
            let (mut t, mut mem, mut vq, mut host) = running_blk(64, false);
            mem.put(0x61000, &[0xcc; 0x1000]);
            request(&mut mem, &mut vq, 0, req::IN, 0, &[(0x61100, 512, true)]);
            t.process(&mut mem, &mut host);
            let (tag, _) = host.to_host.pop_front().unwrap();
            host.from_host.push_back(bad(tag));
            t.process(&mut mem, &mut host);
            assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0, "{what}");
            assert_eq!(t.stats().host_errors, 1, "{what}");
            assert!(
                host.from_host.is_empty(),
                "{what}: the bad record is consumed"
            );
            assert_eq!(interrupts(&mut t), vec![message(0)], "{what}");
            assert_eq!(
                mem.get(0x61000, 0x1000),
                &[0xcc; 0x1000][..],
                "{what}: RAM untouched"
            );
            assert_eq!(status_of(&mem, 0), 0xff, "{what}");
            assert_eq!(vq.used_idx(&mem), 0, "{what}");
        }
    }

    #[test]
    fn blk_replies_from_before_a_reset_are_stale_and_heads_are_not_reused_in_flight() {
        let (mut t, mut mem, mut vq, mut host) = running_blk(64, false);
        request(&mut mem, &mut vq, 0, req::FLUSH, 0, &[]);
        t.process(&mut mem, &mut host);
        let (old_tag, _) = host.to_host.pop_front().unwrap();
        // The driver resets and starts again; the old reply arrives afterwards.
        let (_, mut vq) = setup(128);
        mem.bytes.fill(0);
        bring_up(&mut t, feature::VERSION_1, &[&vq]);
        host.from_host.push_back((old_tag, reply(0, &[])));
        request(&mut mem, &mut vq, 0, req::FLUSH, 0, &[]);
        t.process(&mut mem, &mut host);
        assert_eq!(t.stats().stale, 1);
        assert_eq!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
        let (new_tag, _) = host.to_host.pop_front().unwrap();
        assert_ne!(new_tag, old_tag, "a new epoch");
        assert_eq!(new_tag & 0xffff, old_tag & 0xffff, "same head");
        // The guest offers head 0 again while it is outstanding: a malformed ring.
        vq.offer(&mut mem, 0);
        t.process(&mut mem, &mut host);
        assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(t.stats().bad_chains, 1);
    }

    #[test]
    fn blk_in_flight_requests_are_bounded() {
        let (mut t, mut mem, mut vq, mut host) = running_blk(64, false);
        let n = blk::MAX_INFLIGHT as u16 + 1;
        for head in 0..n {
            request(&mut mem, &mut vq, head, req::FLUSH, 0, &[]);
        }
        t.process(&mut mem, &mut host);
        assert_eq!(host.to_host.len(), blk::MAX_INFLIGHT);
        assert_eq!(t.queue(0).unwrap().last_avail(), blk::MAX_INFLIGHT as u16);
        let (tag, _) = host.to_host.pop_front().unwrap();
        host.from_host.push_back((tag, reply(0, &[])));
        t.process(&mut mem, &mut host);
        assert_eq!(
            host.to_host.len(),
            blk::MAX_INFLIGHT,
            "the last one went out"
        );
        assert_eq!(
            host.to_host.back().unwrap().0 & 0xffff,
            u32::from((n - 1) * 4)
        );
        assert_eq!(vq.used_idx(&mem), 1);
        assert_eq!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn blk_capacity_changes_at_run_time() {
        let (mut t, mut mem, mut vq, mut host) = running_blk(8, false);
        request(&mut mem, &mut vq, 0, req::IN, 8, &[(0x60000, 512, true)]);
        t.process(&mut mem, &mut host);
        assert_eq!(status_of(&mem, 0), req_status::IOERR);
        let _ = interrupts(&mut t);
        let g = r(&mut t, common::CONFIG_GENERATION, 1);
        t.change_config(|b| b.set_capacity(16));
        assert_eq!(device_config(&mut t, 0, 8), 16);
        assert_eq!(r(&mut t, common::CONFIG_GENERATION, 1), (g + 1) & 0xff);
        assert_eq!(interrupts(&mut t), vec![message(0)]);
        request(&mut mem, &mut vq, 1, req::IN, 8, &[(0x60000, 512, true)]);
        t.process(&mut mem, &mut host);
        assert_eq!(host.to_host.len(), 1, "sector 8 exists now");
    }

    #[test]
    fn the_platform_reaches_the_transport_through_the_bus() {
        use crate::pci::bus::PciBus;
        use crate::pci::DevFn;
        let mut bus = PciBus::new(0);
        let slot = DevFn::new(3, 0).unwrap();
        bus.insert(
            slot,
            Box::new(VirtioPci::new(Blk::new(8, false, b"")).unwrap()),
        )
        .unwrap();
        let f = bus.get_mut(slot).unwrap();
        let v = f.virtio().unwrap();
        assert_eq!(v.device_type(), DeviceType::Block);
        let blk = v.as_any_mut().downcast_mut::<VirtioPci<Blk>>().unwrap();
        blk.change_config(|b| b.set_capacity(99));
        assert_eq!(blk.device().capacity(), 99);
        let mut plain = crate::pci::bus::tests::Emulated::new(1);
        assert!(crate::pci::bus::PciDevice::virtio(&mut plain).is_none());
    }

    #[test]
    fn a_host_record_is_read_only_through_its_length() {
        // The fake refuses reads past a record; a device that trusted a length would fail here.
        let mut host = FakeBackend::default();
        host.from_host.push_back((1, vec![1, 2, 3]));
        assert_eq!(host.peek().unwrap(), Some(Record { tag: 1, len: 3 }));
        let mut b = [0u8; 4];
        assert!(host.read(0, &mut b).is_err());
    }
}

/// Random rings and random host records: nothing panics, every chain returned lies in RAM and
/// keeps the rules, and the host never gets a byte written outside what the guest offered.
mod random_tests {
    use super::drive::*;
    use super::*;
    use blk::{req, Blk};
    use pci::VirtioPci;

    /// xorshift64*: deterministic, no dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const RAM: u64 = 0x2_0000;

    /// An address that is often valid, sometimes at the edge, sometimes absurd.
    fn addr(rng: &mut Rng) -> u64 {
        match rng.below(8) {
            0 => RAM - rng.below(64),
            1 => u64::MAX - rng.below(64),
            2 => rng.next(),
            _ => 0x8000 + rng.below(RAM - 0x9000),
        }
    }

    fn len(rng: &mut Rng) -> u32 {
        match rng.below(8) {
            0 => 0,
            1 => u32::MAX - rng.below(4) as u32,
            2 => 16 * rng.below(40) as u32,
            _ => rng.below(300) as u32,
        }
    }

    #[test]
    fn random_rings_never_panic_and_chains_are_always_checked() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut outcomes = [0u32; 2];
        for _ in 0..10_000 {
            let size = 1u16 << rng.below(5);
            let mut mem = Mem::new(RAM as usize);
            let vq = Vq::new(0x1000, size);
            for i in 0..size {
                let flags = rng.below(8) as u16;
                let next = rng.below(u64::from(size) + 2) as u16;
                vq.desc(&mut mem, i, addr(&mut rng), len(&mut rng), flags, next);
            }
            // Indirect tables in the buffers' area, random too.
            for i in 0..64u64 {
                let d = [rng.next(), rng.next()];
                let at = 0x8000 + 16 * i;
                mem.put(at, &d[0].to_le_bytes());
                mem.put(
                    at + 8,
                    &((d[1] & 0xffff_0000_0000_00ff) | (u64::from(len(&mut rng)) << 8))
                        .to_le_bytes()[..8],
                );
            }
            for slot in 0..u64::from(size) {
                let head = rng.below(u64::from(size) + 1) as u16;
                mem.put(vq.avail + 4 + 2 * slot, &head.to_le_bytes());
            }
            let idx = if rng.below(4) == 0 {
                rng.next() as u16
            } else {
                rng.below(u64::from(size) + 1) as u16
            };
            mem.put(vq.avail + 2, &idx.to_le_bytes());
            let mut q = vq.queue(rng.below(2) == 0, rng.below(2) == 0);
            for _ in 0..4 {
                match q.pop(&mut mem) {
                    Ok(Some(chain)) => {
                        outcomes[0] += 1;
                        let mut seen_writable = false;
                        let (mut r, mut w) = (0u64, 0u64);
                        assert!(chain.segments().len() <= MAX_SEGMENTS);
                        for s in chain.segments() {
                            assert!(s.len > 0);
                            assert!(mem.covers(s.addr, u64::from(s.len)));
                            assert!(!seen_writable || s.writable, "readable after writable");
                            seen_writable |= s.writable;
                            if s.writable {
                                w += u64::from(s.len)
                            } else {
                                r += u64::from(s.len)
                            }
                        }
                        assert_eq!(
                            (r, w),
                            (
                                u64::from(chain.readable_len()),
                                u64::from(chain.writable_len())
                            )
                        );
                        q.add_used(&mut mem, chain.head(), rng.next() as u32)
                            .unwrap();
                        let _ = q.needs_interrupt(&mem);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        outcomes[1] += 1;
                        break;
                    }
                }
            }
        }
        assert!(
            outcomes[0] > 500 && outcomes[1] > 500,
            "both good and bad chains seen: {outcomes:?}"
        );
    }

    #[test]
    fn random_host_replies_write_only_into_offered_buffers() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut needs_reset = 0;
        for round in 0..150 {
            let mut t = VirtioPci::new(Blk::new(1 << 16, false, b"r")).unwrap();
            let (mut mem, mut vq) = setup(64);
            bring_up(
                &mut t,
                feature::VERSION_1 | feature::RING_INDIRECT_DESC,
                &[&vq],
            );
            let mut host = FakeBackend::default();
            // Four reads into distinct buffers; the rest of RAM is a pattern.
            for b in mem.bytes[0x8000..].iter_mut() {
                *b = 0xa5;
            }
            let mut offered = Vec::new();
            for k in 0..4u16 {
                let head = k * 3;
                let hdr = 0x8000 + 0x100 * u64::from(k);
                let data = 0x9000 + 0x1000 * u64::from(k);
                let status = 0xe000 + u64::from(k);
                let mut h = [0u8; 16];
                h[..4].copy_from_slice(&req::IN.to_le_bytes());
                mem.put(hdr, &h);
                let n = 512 * (1 + u32::from(k));
                vq.desc(&mut mem, head, hdr, 16, 1, head + 1);
                vq.desc(&mut mem, head + 1, data, n, 3, head + 2);
                vq.desc(&mut mem, head + 2, status, 1, 2, 0);
                vq.offer(&mut mem, head);
                offered.push((data, u64::from(n)));
                offered.push((status, 1));
            }
            t.process(&mut mem, &mut host);
            let tags: Vec<u32> = host.to_host.iter().map(|(t, _)| *t).collect();
            assert_eq!(tags.len(), 4);
            let before = mem.bytes.clone();
            if round % 3 == 0 {
                // An honest host: each read answered OK with exactly its bytes.
                for (k, &tag) in tags.iter().enumerate() {
                    let mut rec = vec![0u8; 8 + 512 * (1 + k)];
                    rec[8..].fill(k as u8 + 1);
                    host.from_host.push_back((tag, rec));
                }
            }
            for _ in 0..if round % 3 == 0 { 0 } else { 6 } {
                let tag = match rng.below(4) {
                    0 => rng.next() as u32,
                    _ => tags[rng.below(4) as usize],
                };
                let n = match rng.below(4) {
                    0 => rng.below(4000) as usize,
                    _ => 8 + 512 * (1 + rng.below(4) as usize),
                };
                let mut rec: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                if n > 0 && rng.below(2) == 0 {
                    rec[0] = 0;
                }
                host.from_host.push_back((tag, rec));
            }
            t.process(&mut mem, &mut host);
            if t.device_status() & status::DEVICE_NEEDS_RESET != 0 {
                needs_reset += 1;
            } else if round % 3 == 0 {
                assert_eq!(vq.used_idx(&mem), 4, "round {round}: all four completed");
                assert_eq!(mem.get(0x9000 + 0x3000, 4 * 512), &[4; 4 * 512][..]);
            }
            // Every changed byte is in an offered buffer or the used ring.
            for (i, (a, b)) in before.iter().zip(&mem.bytes).enumerate() {
                if a == b {
                    continue;
                }
                let i = i as u64;
                let in_used = (vq.used..vq.used + 4 + 8 * 64 + 2).contains(&i);
                let in_offered = offered.iter().any(|&(s, l)| (s..s + l).contains(&i));
                assert!(in_used || in_offered, "round {round}: byte {i:#x} written");
            }
        }
        assert!(
            needs_reset > 10 && needs_reset <= 100,
            "both outcomes seen: {needs_reset}"
        );
    }
}
