//! Virtio block device (virtio 1.2 §5.2): one request queue, served by the host.
//!
//! Features offered: `VIRTIO_F_VERSION_1`, `VIRTIO_BLK_F_SEG_MAX` (`seg_max` =
//! [`MAX_SEGMENTS`] − 2: a request's data segments plus its header and status fit one
//! [`Chain`](super::queue::Chain)), `VIRTIO_BLK_F_SIZE_MAX` ([`SIZE_MAX`], a page: with
//! `seg_max` it bounds a request's data to [`MAX_REQUEST_BYTES`], which is what the ring toward
//! the host must hold in one record — Linux otherwise sizes requests by its own limits only),
//! `VIRTIO_BLK_F_BLK_SIZE` (512), `VIRTIO_BLK_F_FLUSH`,
//! `VIRTIO_BLK_F_RO` when read-only, event index and indirect descriptors. The capacity (in
//! 512-byte sectors) is the platform's and may change while the guest runs:
//! `VirtioPci::change_config(|b| b.set_capacity(n))` bumps `config_generation` and raises a
//! configuration-change interrupt, on which Linux re-reads it.
//!
//! **Requests** (§5.2.6): a readable header `le32 type, le32 reserved, le64 sector`, the data
//! (readable for OUT, writable for IN), and a writable status byte — the last writable byte of
//! the chain. The device answers locally, without the host, what needs no disk: GET_ID (the
//! platform's serial), unsupported types (UNSUPP), and requests it refuses (IOERR): a write to a
//! read-only device, a transfer that is not whole sectors or ends past the capacity, a chain
//! without header or status.
//!
//! **Host protocol** (the channel's, [`atoll_abi::channel`]). Every other request becomes one
//! record toward the host, tagged `head | epoch << 16` (the epoch counts driver resets, so a
//! reply to a request from before a reset is recognised and discarded rather than taken for a
//! protocol error), with payload [`BlkRequest`] (`le32 type, le32 data length, le64 sector`)
//! followed, for OUT, by the data. The device keeps the chain's writable buffers for the
//! outstanding head. The host's reply (same tag) is a status byte and 7 bytes of padding
//! ([`BLK_RESPONSE_LEN`]), then, for IN, the data: exactly the bytes asked for when the status
//! is OK, at most that many otherwise. The device copies the data into the kept buffers, the
//! status into the last writable byte, and completes the request. A reply whose tag is not
//! outstanding, shorter than the status, longer than the buffers offered, or OK but short, is a
//! host error: counted, and the device needs a reset; nothing is written outside what the
//! guest offered. At most [`MAX_INFLIGHT`] requests are outstanding; more wait in the
//! available ring.

use super::queue::{write_segments, Segment, MAX_SEGMENTS};
use super::{
    consume, feature, peek, send_readable, Context, DeviceError, DeviceType, HostError, Sent,
    VirtioDevice,
};
use alloc::vec::Vec;
pub use atoll_abi::channel::{BlkRequest, BLK_MAX_DATA, BLK_REQUEST_LEN, BLK_RESPONSE_LEN};

/// `VIRTIO_BLK_F_RO`.
pub const F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_SIZE_MAX`.
pub const F_SIZE_MAX: u64 = 1 << 1;
/// `VIRTIO_BLK_F_SEG_MAX`.
pub const F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_BLK_SIZE`.
pub const F_BLK_SIZE: u64 = 1 << 6;
/// `VIRTIO_BLK_F_FLUSH`.
pub const F_FLUSH: u64 = 1 << 9;
/// Bytes of a sector, the unit of `capacity` and of a request's `sector`.
pub const SECTOR: u64 = 512;
/// `size_max`: the largest data segment a driver may use.
pub const SIZE_MAX: u32 = 4096;
/// `seg_max`: data segments per request.
pub const SEG_MAX: u32 = MAX_SEGMENTS as u32 - 2;
/// The most data one request carries as Linux builds them (`seg_max` segments of `size_max`):
/// a write's record is [`BLK_REQUEST_LEN`] plus this, a read's reply [`BLK_RESPONSE_LEN`] plus
/// this. A request the ring cannot hold is answered IOERR.
pub const MAX_REQUEST_BYTES: u32 = SEG_MAX * SIZE_MAX;

// The channel's rings are sized for the largest request Linux builds within the limits offered.
const _: () = assert!(MAX_REQUEST_BYTES <= BLK_MAX_DATA);
/// Bytes of the device ID GET_ID returns.
pub const ID_BYTES: usize = 20;
/// Requests outstanding at the host at once (their buffers are kept in storage sized at
/// creation, so the exit path allocates nothing).
pub const MAX_INFLIGHT: usize = 16;
/// Bytes of the configuration exposed (through `num_queues`).
pub const CONFIG_LEN: usize = 36;

/// Request types (§5.2.6).
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush the volatile write cache.
    pub const FLUSH: u32 = 4;
    /// The device ID string.
    pub const GET_ID: u32 = 8;
}

/// Request status values (§5.2.6).
pub mod req_status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// An outstanding request's writable buffers.
#[derive(Clone, Debug)]
struct Outstanding {
    in_use: bool,
    head: u16,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
    /// Writable bytes, the status byte included.
    writable: u32,
}

/// A block device.
#[derive(Clone, Debug)]
pub struct Blk {
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    epoch: u16,
    outstanding: Vec<Outstanding>,
}

impl Blk {
    /// A device of `capacity` sectors with serial `id` (zero-padded; longer is cut).
    pub fn new(capacity: u64, read_only: bool, id: &[u8]) -> Self {
        let mut serial = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id[..n]);
        let slot = Outstanding {
            in_use: false,
            head: 0,
            segments: [Segment::default(); MAX_SEGMENTS],
            count: 0,
            writable: 0,
        };
        Self {
            capacity,
            read_only,
            id: serial,
            epoch: 0,
            outstanding: alloc::vec![slot; MAX_INFLIGHT],
        }
    }

    /// The capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Sets the capacity (through `VirtioPci::change_config`, which tells the driver).
    pub fn set_capacity(&mut self, sectors: u64) {
        self.capacity = sectors;
    }

    /// Requests outstanding at the host.
    pub fn in_flight(&self) -> usize {
        self.outstanding.iter().filter(|o| o.in_use).count()
    }

    /// The tag of `head` in the current epoch.
    fn tag(&self, head: u16) -> u32 {
        u32::from(head) | u32::from(self.epoch) << 16
    }

    /// Whether `len` bytes from `sector` are whole sectors inside the capacity.
    fn in_range(&self, sector: u64, len: u32) -> bool {
        u64::from(len) % SECTOR == 0
            && sector
                .checked_add(u64::from(len) / SECTOR)
                .is_some_and(|end| end <= self.capacity)
    }

    /// Replies from the host, completing outstanding requests.
    fn replies(&mut self, ctx: &mut Context<'_>) -> Result<(), DeviceError> {
        while let Some(record) = peek(ctx)? {
            if record.tag >> 16 != u32::from(self.epoch) {
                ctx.stats.stale += 1;
                consume(ctx)?;
                continue;
            }
            let head = record.tag as u16;
            let Some(slot) = self
                .outstanding
                .iter_mut()
                .find(|o| o.in_use && o.head == head)
            else {
                consume(ctx)?;
                return Err(HostError::UnknownTag(record.tag).into());
            };
            // The kept buffers: data, then the status byte.
            let asked = slot.writable - 1;
            let data = record.len.checked_sub(BLK_RESPONSE_LEN);
            let mut status = [0u8; 1];
            if data.is_some() {
                ctx.backend
                    .read(0, &mut status)
                    .map_err(|e| DeviceError::Host(HostError::Ring(e)))?;
            }
            let fits =
                data.is_some_and(|d| d <= asked && (status[0] != req_status::OK || d == asked));
            let Some(data) = data.filter(|_| fits) else {
                consume(ctx)?;
                return Err(HostError::Length {
                    tag: record.tag,
                    len: record.len,
                }
                .into());
            };
            let segments = &slot.segments[..slot.count];
            super::backend_to_segments(ctx.backend, segments, ctx.mem, BLK_RESPONSE_LEN, 0, data)?;
            let status = match status[0] {
                s @ (req_status::OK | req_status::IOERR | req_status::UNSUPP) => s,
                _ => req_status::IOERR,
            };
            write_segments(segments, ctx.mem, asked, &[status])?;
            slot.in_use = false;
            ctx.complete(0, head, data + 1)?;
            consume(ctx)?;
        }
        Ok(())
    }

    /// Completes a request without the host: `data` at the start of the writable bytes, then
    /// `status` in the last one.
    fn answer(
        ctx: &mut Context<'_>,
        chain: &super::queue::Chain,
        data: &[u8],
        status: u8,
    ) -> Result<(), DeviceError> {
        let last = chain.writable_len() - 1;
        let n = (data.len() as u32).min(last);
        chain.write_at(ctx.mem, 0, &data[..n as usize])?;
        chain.write_at(ctx.mem, last, &[status])?;
        ctx.complete(0, chain.head(), n + 1)
    }
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn features(&self) -> u64 {
        feature::VERSION_1
            | feature::RING_EVENT_IDX
            | feature::RING_INDIRECT_DESC
            | F_SEG_MAX
            | F_SIZE_MAX
            | F_BLK_SIZE
            | F_FLUSH
            | if self.read_only { F_RO } else { 0 }
    }

    fn queue_count(&self) -> u16 {
        1
    }

    fn config(&self, buf: &mut [u8]) -> usize {
        let mut b = [0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        b[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // geometry (16..20) stays 0: not offered.
        b[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        // topology (24..32), writeback (32), unused (33): not offered.
        b[34..36].copy_from_slice(&1u16.to_le_bytes());
        let n = CONFIG_LEN.min(buf.len());
        buf[..n].copy_from_slice(&b[..n]);
        n
    }

    fn reset(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        for o in &mut self.outstanding {
            o.in_use = false;
        }
    }

    fn process(&mut self, ctx: &mut Context<'_>) -> Result<(), DeviceError> {
        self.replies(ctx)?;
        while let Some(free) = self.outstanding.iter().position(|o| !o.in_use) {
            let Some(chain) = ctx.pop(0)? else {
                break;
            };
            if self
                .outstanding
                .iter()
                .any(|o| o.in_use && o.head == chain.head())
            {
                return Err(super::queue::ChainError::HeadInUse(chain.head()).into());
            }
            let header_len = BLK_REQUEST_LEN;
            if chain.writable_len() == 0 {
                // Nowhere to put a status: the request cannot be answered.
                ctx.stats.dropped += 1;
                ctx.complete(0, chain.head(), 0)?;
                continue;
            }
            if chain.readable_len() < header_len {
                Self::answer(ctx, &chain, &[], req_status::IOERR)?;
                continue;
            }
            let mut h = [0u8; BLK_REQUEST_LEN as usize];
            chain.read_at(ctx.mem, 0, &mut h)?;
            let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let mut s = [0u8; 8];
            s.copy_from_slice(&h[8..16]);
            let sector = u64::from_le_bytes(s);
            let data_in = chain.writable_len() - 1;
            let data_out = chain.readable_len() - header_len;
            let header = match kind {
                req::IN if self.in_range(sector, data_in) => BlkRequest {
                    kind,
                    len: data_in,
                    sector,
                },
                req::OUT if !self.read_only && self.in_range(sector, data_out) => BlkRequest {
                    kind,
                    len: data_out,
                    sector,
                },
                req::FLUSH => BlkRequest {
                    kind,
                    len: 0,
                    sector: 0,
                },
                req::IN | req::OUT => {
                    Self::answer(ctx, &chain, &[], req_status::IOERR)?;
                    continue;
                }
                req::GET_ID => {
                    let id = self.id;
                    Self::answer(ctx, &chain, &id, req_status::OK)?;
                    continue;
                }
                _ => {
                    Self::answer(ctx, &chain, &[], req_status::UNSUPP)?;
                    continue;
                }
            };
            let skip = if kind == req::OUT {
                header_len
            } else {
                chain.readable_len()
            };
            match send_readable(
                ctx,
                self.tag(chain.head()),
                &chain,
                skip,
                None,
                &header.encode(),
            )? {
                Sent::Full => {
                    ctx.unpop(0);
                    break;
                }
                Sent::Dropped => {
                    Self::answer(ctx, &chain, &[], req_status::IOERR)?;
                    continue;
                }
                Sent::Sent => {}
            }
            let slot = &mut self.outstanding[free];
            slot.in_use = true;
            slot.head = chain.head();
            slot.count = 0;
            for seg in chain.segments().iter().filter(|s| s.writable) {
                slot.segments[slot.count] = *seg;
                slot.count += 1;
            }
            slot.writable = chain.writable_len();
        }
        Ok(())
    }
}
