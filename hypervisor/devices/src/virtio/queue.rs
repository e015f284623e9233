//! A split virtqueue as the device sees it (virtio 1.2 §2.7).
//!
//! The driver owns three areas of guest RAM per queue: the **descriptor table** (16 bytes per
//! entry: `le64 addr, le32 len, le16 flags, le16 next`, §2.7.5), the **available ring**
//! (`le16 flags, le16 idx, le16 ring[size], le16 used_event`, §2.7.6) and the **used ring**
//! (`le16 flags, le16 idx, {le32 id, le32 len}[size], le16 avail_event`, §2.7.8). The device
//! keeps two counters of its own: `last_avail` (the next available entry it will take) and
//! `used_idx` (the next used entry it will fill).
//!
//! **Chains.** [`Queue::pop`] takes the next available head and walks its descriptors into a
//! [`Chain`]: a fixed array of at most [`MAX_SEGMENTS`] segments, so the exit path that walks
//! it never allocates. Everything the guest controls is checked before a chain is returned:
//! every descriptor index against the table, every buffer against the guest's RAM
//! ([`GuestMemory::covers`]), the walk bounded by the table's size (a loop ends as
//! [`ChainError::Loop`]), and the rules of §2.7.4–§2.7.5.3 (readable before writable, no
//! zero-length buffer, indirect tables only when negotiated, never nested, never with `NEXT`).
//! A malformed chain is a [`ChainError`], never a panic; the transport then sets
//! DEVICE_NEEDS_RESET.
//!
//! **Ordering.** Guest RAM is shared with the guest's other vCPUs, so reads and writes of the
//! rings are ordered with fences the way §2.7.7 and §2.7.13 ask: the available index is read
//! before the ring entries it publishes (acquire), a used element is written before the used
//! index that publishes it (release), and the index is published before the device reads the
//! driver's suppression fields (a full fence), so a driver racing with the device never misses
//! an interrupt or a notification.
//!
//! **Notification suppression** (§2.7.7, §2.7.10). Without `VIRTIO_F_EVENT_IDX` the device
//! interrupts unless the driver set `VIRTQ_AVAIL_F_NO_INTERRUPT`; with it, the device
//! interrupts when the used index passes the driver's `used_event`, and writes `avail_event`
//! (the available index it wants a notification at) when it runs out of work.

use atoll_vcpu::GuestMemory;
use boot::GuestPhysAddr;
use core::sync::atomic::{fence, Ordering};

/// The largest queue atoll offers (a power of two; Linux's drivers take what is offered, at most
/// 1024 for a split ring). 256 keeps a blk request's indirect table and a net queue's worth of
/// buffers while bounding every walk.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Segments one chain may have: the fixed capacity of a [`Chain`]. Virtio-blk advertises
/// `seg_max = MAX_SEGMENTS - 2` (the header and status descriptors come on top).
pub const MAX_SEGMENTS: usize = 128;
/// Bytes of one descriptor (§2.7.5).
pub const DESC_SIZE: u64 = 16;
/// The vector value meaning "no MSI-X vector" (§4.1.4.3).
pub const NO_VECTOR: u16 = 0xffff;

/// Descriptor flags (§2.7.5).
pub mod desc_flags {
    /// The chain continues at `next`.
    pub const NEXT: u16 = 1;
    /// The buffer is device-writable (otherwise device-readable).
    pub const WRITE: u16 = 2;
    /// The buffer holds a table of indirect descriptors (§2.7.5.3).
    pub const INDIRECT: u16 = 4;
}

/// Available-ring flag: the driver asks for no interrupt (without EVENT_IDX, §2.7.7).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One buffer of a chain: where, how long, and which way the data goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// The buffer's guest-physical address.
    pub addr: GuestPhysAddr,
    /// Its length in bytes (never 0).
    pub len: u32,
    /// Device-writable (the driver reads it); otherwise device-readable.
    pub writable: bool,
}

/// Why a chain (or a ring access) was refused. Every variant is the guest's doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// A ring or descriptor-table access outside guest RAM (`at` is where).
    RingOutsideRam {
        /// The guest-physical address that could not be read or written.
        at: GuestPhysAddr,
    },
    /// The available index ran more than the queue size ahead of what the device took.
    AvailIndex {
        /// The driver's available index.
        avail: u16,
        /// The device's last_avail.
        last: u16,
    },
    /// A head or `next` index past the end of its table.
    DescIndex {
        /// The index.
        index: u16,
        /// Entries of the table it indexes.
        size: u32,
    },
    /// The walk visited more descriptors than its table holds: a loop.
    Loop,
    /// More than [`MAX_SEGMENTS`] buffers.
    TooManySegments,
    /// A descriptor with length 0.
    ZeroLength,
    /// A device-readable buffer after a device-writable one (§2.7.4.2).
    ReadableAfterWritable,
    /// `VIRTQ_DESC_F_INDIRECT` without `VIRTIO_F_INDIRECT_DESC` negotiated.
    IndirectNotNegotiated,
    /// `INDIRECT` together with `NEXT` (§2.7.5.3.1).
    IndirectWithNext,
    /// An indirect descriptor inside an indirect table.
    NestedIndirect,
    /// An indirect table whose length is 0, not a multiple of 16, or more entries than the queue.
    IndirectLength(u32),
    /// A buffer or indirect table that wraps past the top of the address space or leaves RAM.
    OutsideRam {
        /// Its address.
        addr: GuestPhysAddr,
        /// Its length.
        len: u32,
    },
    /// The chain's total length exceeds `u32::MAX`.
    TotalLength,
    /// A head made available again while the device still holds it (§2.7.13.3).
    HeadInUse(u16),
}

/// Why a copy between a chain and a buffer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyError {
    /// The range is beyond the chain's readable (or writable) bytes.
    OutOfRange,
    /// Guest memory refused the access (cannot happen for a chain [`Queue::pop`] checked,
    /// unless guest RAM shrank).
    Memory,
}

/// A descriptor chain, walked and checked: its head index and its buffers, readable first.
#[derive(Clone, Debug)]
pub struct Chain {
    head: u16,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
    readable: u32,
    writable: u32,
}

impl Chain {
    /// An empty chain for `head`.
    pub fn new(head: u16) -> Self {
        Self {
            head,
            segments: [Segment::default(); MAX_SEGMENTS],
            count: 0,
            readable: 0,
            writable: 0,
        }
    }

    /// The head descriptor's index: what the used ring names the chain by.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The buffers, readable ones first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// Total bytes of the readable buffers.
    pub fn readable_len(&self) -> u32 {
        self.readable
    }

    /// Total bytes of the writable buffers.
    pub fn writable_len(&self) -> u32 {
        self.writable
    }

    /// Appends a buffer already checked against RAM (the walk enforces the order).
    fn push(&mut self, segment: Segment) -> Result<(), ChainError> {
        let slot = self
            .segments
            .get_mut(self.count)
            .ok_or(ChainError::TooManySegments)?;
        let total = u64::from(self.readable) + u64::from(self.writable) + u64::from(segment.len);
        if total > u64::from(u32::MAX) {
            return Err(ChainError::TotalLength);
        }
        *slot = segment;
        self.count += 1;
        if segment.writable {
            self.writable += segment.len;
        } else {
            self.readable += segment.len;
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes starting `offset` bytes into the readable buffers.
    pub fn read_at(
        &self,
        mem: &dyn GuestMemory,
        offset: u32,
        buf: &mut [u8],
    ) -> Result<(), CopyError> {
        pieces(
            self.segments(),
            false,
            offset,
            buf.len(),
            usize::MAX,
            |addr, at, n| {
                mem.read(addr, &mut buf[at..at + n])
                    .ok_or(CopyError::Memory)
            },
        )
    }

    /// Copies `buf` to `offset` bytes into the writable buffers.
    pub fn write_at(
        &self,
        mem: &mut dyn GuestMemory,
        offset: u32,
        buf: &[u8],
    ) -> Result<(), CopyError> {
        write_segments(self.segments(), mem, offset, buf)
    }
}

/// Copies `buf` to `offset` bytes into the writable ones of `segments` (also used for the
/// writable buffers a device keeps of an outstanding chain).
pub fn write_segments(
    segments: &[Segment],
    mem: &mut dyn GuestMemory,
    offset: u32,
    buf: &[u8],
) -> Result<(), CopyError> {
    pieces(
        segments,
        true,
        offset,
        buf.len(),
        usize::MAX,
        |addr, at, n| mem.write(addr, &buf[at..at + n]).ok_or(CopyError::Memory),
    )
}

/// Walks `len` bytes of the writable (or readable) ones of `segments` from byte `offset`,
/// calling `step(address, offset into the range, bytes)` per piece of at most `max` bytes that
/// lies in one segment. The whole range is checked first, so nothing is done when it does not
/// fit. One pass over the segments, however many pieces: streaming a large chain through a
/// small bounce buffer costs no more than copying it.
pub fn pieces<E: From<CopyError>>(
    segments: &[Segment],
    writable: bool,
    offset: u32,
    len: usize,
    max: usize,
    mut step: impl FnMut(GuestPhysAddr, usize, usize) -> Result<(), E>,
) -> Result<(), E> {
    let total: u64 = segments
        .iter()
        .filter(|s| s.writable == writable)
        .map(|s| u64::from(s.len))
        .sum();
    let end = u64::from(offset)
        .checked_add(len as u64)
        .ok_or(CopyError::OutOfRange)?;
    if end > total || max == 0 {
        return Err(CopyError::OutOfRange.into());
    }
    let mut skip = u64::from(offset);
    let mut done = 0usize;
    for s in segments.iter().filter(|s| s.writable == writable) {
        if done == len {
            break;
        }
        let seg_len = u64::from(s.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        // Segment lengths are u32s, so these casts are exact.
        let mut at = skip;
        let last = ((seg_len - skip) as usize).min(len - done) as u64 + skip;
        while at < last {
            let n = ((last - at) as usize).min(max);
            let addr = s.addr.checked_add(at).ok_or(CopyError::Memory)?;
            step(addr, done, n)?;
            done += n;
            at += n as u64;
        }
        skip = 0;
    }
    Ok(())
}

/// One descriptor as read from guest RAM.
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// One queue: the transport's registers (§4.1.4.3) and the device's ring state.
#[derive(Clone, Debug)]
pub struct Queue {
    /// The largest size the device offers (the reset value of `size`).
    pub max_size: u16,
    /// The size the driver chose (a power of two, at most `max_size`).
    pub size: u16,
    /// `queue_enable`: the driver set the queue up and the device may use it.
    pub ready: bool,
    /// `queue_msix_vector`, or [`NO_VECTOR`].
    pub msix_vector: u16,
    /// The descriptor table.
    pub desc: GuestPhysAddr,
    /// The available ring ("driver area").
    pub avail: GuestPhysAddr,
    /// The used ring ("device area").
    pub used: GuestPhysAddr,
    /// `VIRTIO_F_EVENT_IDX` negotiated.
    pub event_idx: bool,
    /// `VIRTIO_F_INDIRECT_DESC` negotiated.
    pub indirect: bool,
    last_avail: u16,
    used_idx: u16,
    /// The used index when the device last decided whether to interrupt.
    signalled_used: u16,
}

impl Queue {
    /// A queue of at most `max_size` entries in its reset state.
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            msix_vector: NO_VECTOR,
            desc: GuestPhysAddr::new(0),
            avail: GuestPhysAddr::new(0),
            used: GuestPhysAddr::new(0),
            event_idx: false,
            indirect: false,
            last_avail: 0,
            used_idx: 0,
            signalled_used: 0,
        }
    }

    /// Back to the reset state (device reset or queue reset).
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// The next available entry the device will take.
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    /// The next used entry the device will fill.
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    fn read_u16(mem: &dyn GuestMemory, at: GuestPhysAddr) -> Result<u16, ChainError> {
        let mut b = [0u8; 2];
        mem.read(at, &mut b)
            .ok_or(ChainError::RingOutsideRam { at })?;
        Ok(u16::from_le_bytes(b))
    }

    fn write_bytes(
        mem: &mut dyn GuestMemory,
        at: GuestPhysAddr,
        b: &[u8],
    ) -> Result<(), ChainError> {
        mem.write(at, b).ok_or(ChainError::RingOutsideRam { at })
    }

    /// `base + offset`, an error naming `base` if it wraps.
    fn at(base: GuestPhysAddr, offset: u64) -> Result<GuestPhysAddr, ChainError> {
        base.checked_add(offset)
            .ok_or(ChainError::RingOutsideRam { at: base })
    }

    /// The available ring's `idx`.
    fn avail_idx(&self, mem: &dyn GuestMemory) -> Result<u16, ChainError> {
        Self::read_u16(mem, Self::at(self.avail, 2)?)
    }

    /// Entries the driver made available that the device has not taken; an error if the
    /// driver's index is more than a queue's worth ahead (§2.7.6: the ring cannot hold more).
    fn pending(&self, mem: &dyn GuestMemory) -> Result<u16, ChainError> {
        let avail = self.avail_idx(mem)?;
        let pending = avail.wrapping_sub(self.last_avail);
        if pending > self.size {
            return Err(ChainError::AvailIndex {
                avail,
                last: self.last_avail,
            });
        }
        Ok(pending)
    }

    /// Takes the next available chain: `Ok(None)` when the queue is not ready or empty. With
    /// EVENT_IDX, an empty queue writes `avail_event` (asking the driver to notify at the next
    /// entry) and looks once more, so an entry added meanwhile is not left unnotified.
    pub fn pop(&mut self, mem: &mut dyn GuestMemory) -> Result<Option<Chain>, ChainError> {
        if !self.ready || self.size == 0 {
            return Ok(None);
        }
        let mut pending = self.pending(mem)?;
        if pending == 0 && self.event_idx {
            self.set_avail_event(mem, self.last_avail)?;
            fence(Ordering::SeqCst);
            pending = self.pending(mem)?;
        }
        if pending == 0 {
            return Ok(None);
        }
        // The ring entry is read only after the index that published it.
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_avail % self.size);
        let head = Self::read_u16(mem, Self::at(self.avail, 4 + 2 * slot)?)?;
        let chain = self.walk(mem, head)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    /// Gives the last popped chain back (the device could not use it now, e.g. the host ring
    /// is full); the next [`Queue::pop`] walks it again.
    pub fn unpop(&mut self) {
        self.last_avail = self.last_avail.wrapping_sub(1);
    }

    /// Writes `avail_event` (EVENT_IDX only): the driver notifies once its index passes `idx`.
    pub fn set_avail_event(
        &mut self,
        mem: &mut dyn GuestMemory,
        idx: u16,
    ) -> Result<(), ChainError> {
        if !self.event_idx {
            return Ok(());
        }
        let at = Self::at(self.used, 4 + 8 * u64::from(self.size))?;
        Self::write_bytes(mem, at, &idx.to_le_bytes())
    }

    /// Reads descriptor `index` of the table at `table`.
    fn desc(mem: &dyn GuestMemory, table: GuestPhysAddr, index: u16) -> Result<Desc, ChainError> {
        let at = Self::at(table, DESC_SIZE * u64::from(index))?;
        let mut b = [0u8; 16];
        mem.read(at, &mut b)
            .ok_or(ChainError::RingOutsideRam { at })?;
        let mut q = [0u8; 8];
        q.copy_from_slice(&b[..8]);
        Ok(Desc {
            addr: u64::from_le_bytes(q),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        })
    }

    /// Walks the chain at `head` (§2.7.5): every index, buffer and flag checked; the walk of
    /// each table bounded by its entries.
    pub fn walk(&self, mem: &dyn GuestMemory, head: u16) -> Result<Chain, ChainError> {
        let mut table = self.desc;
        let mut entries = u32::from(self.size);
        let mut index = head;
        let mut visited = 0u32;
        let mut indirect = false;
        let mut chain = Chain::new(head);
        loop {
            if u32::from(index) >= entries {
                return Err(ChainError::DescIndex {
                    index,
                    size: entries,
                });
            }
            if visited >= entries {
                return Err(ChainError::Loop);
            }
            visited += 1;
            let d = Self::desc(mem, table, index)?;
            if d.flags & desc_flags::INDIRECT != 0 {
                if !self.indirect {
                    return Err(ChainError::IndirectNotNegotiated);
                }
                if indirect {
                    return Err(ChainError::NestedIndirect);
                }
                if d.flags & desc_flags::NEXT != 0 {
                    return Err(ChainError::IndirectWithNext);
                }
                let n = u64::from(d.len) / DESC_SIZE;
                if d.len == 0 || u64::from(d.len) % DESC_SIZE != 0 || n > u64::from(self.size) {
                    return Err(ChainError::IndirectLength(d.len));
                }
                let addr = GuestPhysAddr::new(d.addr);
                if !mem.covers(addr, u64::from(d.len)) {
                    return Err(ChainError::OutsideRam { addr, len: d.len });
                }
                // The write flag of the descriptor naming the table means nothing (§2.7.5.3.1).
                table = addr;
                entries = n as u32;
                index = 0;
                visited = 0;
                indirect = true;
                continue;
            }
            if d.len == 0 {
                return Err(ChainError::ZeroLength);
            }
            let writable = d.flags & desc_flags::WRITE != 0;
            if !writable && chain.writable > 0 {
                return Err(ChainError::ReadableAfterWritable);
            }
            let addr = GuestPhysAddr::new(d.addr);
            if !mem.covers(addr, u64::from(d.len)) {
                return Err(ChainError::OutsideRam { addr, len: d.len });
            }
            chain.push(Segment {
                addr,
                len: d.len,
                writable,
            })?;
            if d.flags & desc_flags::NEXT == 0 {
                return Ok(chain);
            }
            index = d.next;
        }
    }

    /// Puts `(head, len)` in the used ring and publishes it: the element first, then the index
    /// (§2.7.8.2), so the driver never sees an index covering an element not yet written.
    pub fn add_used(
        &mut self,
        mem: &mut dyn GuestMemory,
        head: u16,
        len: u32,
    ) -> Result<(), ChainError> {
        if self.size == 0 {
            return Ok(());
        }
        let slot = u64::from(self.used_idx % self.size);
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        Self::write_bytes(mem, Self::at(self.used, 4 + 8 * slot)?, &e)?;
        let next = self.used_idx.wrapping_add(1);
        fence(Ordering::Release);
        Self::write_bytes(mem, Self::at(self.used, 2)?, &next.to_le_bytes())?;
        self.used_idx = next;
        Ok(())
    }

    /// Whether the driver wants an interrupt for what was added to the used ring since the last
    /// call (§2.7.7.2, §2.7.10): with EVENT_IDX, when the used index moved past `used_event`;
    /// otherwise unless `VIRTQ_AVAIL_F_NO_INTERRUPT` is set. Nothing added: no interrupt.
    pub fn needs_interrupt(&mut self, mem: &dyn GuestMemory) -> Result<bool, ChainError> {
        // The used index is published before the driver's suppression field is read.
        fence(Ordering::SeqCst);
        let old = self.signalled_used;
        let new = self.used_idx;
        self.signalled_used = new;
        if old == new {
            return Ok(false);
        }
        if self.event_idx {
            let at = Self::at(self.avail, 4 + 2 * u64::from(self.size))?;
            let event = Self::read_u16(mem, at)?;
            // vring_need_event: the event index lies in (old, new].
            Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags = Self::read_u16(mem, self.avail)?;
            Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}
