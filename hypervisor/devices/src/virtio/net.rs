//! Virtio network device (virtio 1.2 §5.1): one receive and one transmit queue, transmit
//! offloads.
//!
//! Features offered: `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC` (the platform's address),
//! `VIRTIO_NET_F_STATUS` (link up unless the platform says otherwise), event index, indirect
//! descriptors, and the transmit offloads `VIRTIO_NET_F_CSUM`, `VIRTIO_NET_F_HOST_TSO4` and
//! `VIRTIO_NET_F_HOST_TSO6` (§5.1.3): the guest may send packets up to 64 KiB with their
//! checksum left to the device and their segmentation described in the 12-byte
//! `virtio_net_hdr` (§5.1.6: with VERSION_1 the header always has `num_buffers`). atoll does
//! neither: it passes the header to the host, whose tap (`IFF_VNET_HDR`) segments and checksums
//! in its kernel, which checks the header as it checks any tap writer's. Per packet that saves
//! the guest's, atoll's and the host's per-frame work for up to 44 frames. No receive offloads
//! and no mergeable receive buffers: Linux posts receive buffers big enough for a full
//! 1518-byte frame.
//!
//! **Host protocol.** A transmit chain's readable bytes, header included, become one record
//! (tag 0) toward the host; the chain is used at once. A record from the host is one frame: it
//! goes into the next receive chain behind a zeroed header with `num_buffers = 1`, only when the
//! guest has offered one (otherwise it waits in the ring). A frame larger than the buffer, or
//! empty, is dropped and counted, the buffer kept for the next frame.

use super::{
    backend_to_chain, consume, feature, peek, send_readable, Context, DeviceError, DeviceType,
    Sent, VirtioDevice,
};

/// Receive queue index (`receiveq1`).
pub const RECEIVEQ: usize = 0;
/// Transmit queue index (`transmitq1`).
pub const TRANSMITQ: usize = 1;
/// `VIRTIO_NET_F_CSUM`: the driver may leave a packet's checksum to the device (§5.1.3).
pub const F_CSUM: u64 = 1 << 0;
/// `VIRTIO_NET_F_HOST_TSO4`: the driver may send TCPv4 packets for the device to segment.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// `VIRTIO_NET_F_HOST_TSO6`: the same for TCPv6.
pub const F_HOST_TSO6: u64 = 1 << 12;
/// `VIRTIO_NET_F_MAC`.
pub const F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_STATUS`.
pub const F_STATUS: u64 = 1 << 16;
/// `VIRTIO_NET_S_LINK_UP` in the status field.
pub const S_LINK_UP: u16 = 1;
/// Bytes of `virtio_net_hdr` with VERSION_1.
pub const HEADER_LEN: u32 = atoll_abi::channel::NET_HEADER_LEN;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS: usize = 10;
/// Bytes of the configuration (`mac, status, max_virtqueue_pairs, mtu`).
pub const CONFIG_LEN: usize = 12;

/// A network device.
#[derive(Clone, Debug)]
pub struct Net {
    mac: [u8; 6],
    link_up: bool,
}

impl Net {
    /// A device with address `mac`, link up.
    pub fn new(mac: [u8; 6]) -> Self {
        Self { mac, link_up: true }
    }

    /// Sets the link state (through `VirtioPci::change_config`, which tells the driver).
    pub fn set_link(&mut self, up: bool) {
        self.link_up = up;
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> DeviceType {
        DeviceType::Net
    }

    fn features(&self) -> u64 {
        feature::VERSION_1
            | feature::RING_EVENT_IDX
            | feature::RING_INDIRECT_DESC
            | F_MAC
            | F_STATUS
            | F_CSUM
            | F_HOST_TSO4
            | F_HOST_TSO6
    }

    fn queue_count(&self) -> u16 {
        2
    }

    fn config(&self, buf: &mut [u8]) -> usize {
        let mut b = [0u8; CONFIG_LEN];
        b[0..6].copy_from_slice(&self.mac);
        let status = if self.link_up { S_LINK_UP } else { 0 };
        b[6..8].copy_from_slice(&status.to_le_bytes());
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[10..12].copy_from_slice(&1500u16.to_le_bytes());
        let n = CONFIG_LEN.min(buf.len());
        buf[..n].copy_from_slice(&b[..n]);
        n
    }

    fn reset(&mut self) {}

    fn process(&mut self, ctx: &mut Context<'_>) -> Result<(), DeviceError> {
        while let Some(chain) = ctx.pop(TRANSMITQ)? {
            if chain.readable_len() <= HEADER_LEN {
                // No frame behind the header: nothing to send.
                ctx.stats.dropped += 1;
            } else if send_readable(ctx, 0, &chain, 0, None, &[])? == Sent::Full {
                ctx.unpop(TRANSMITQ);
                break;
            }
            ctx.complete(TRANSMITQ, chain.head(), 0)?;
        }
        while let Some(record) = peek(ctx)? {
            if record.len == 0 {
                ctx.stats.dropped += 1;
                consume(ctx)?;
                continue;
            }
            let Some(chain) = ctx.pop(RECEIVEQ)? else {
                break;
            };
            let need = u64::from(HEADER_LEN) + u64::from(record.len);
            if need > u64::from(chain.writable_len()) {
                ctx.stats.dropped += 1;
                ctx.unpop(RECEIVEQ);
                consume(ctx)?;
                continue;
            }
            let mut header = [0u8; HEADER_LEN as usize];
            header[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
            chain.write_at(ctx.mem, 0, &header)?;
            backend_to_chain(ctx.backend, &chain, ctx.mem, 0, HEADER_LEN, record.len)?;
            ctx.complete(RECEIVEQ, chain.head(), need as u32)?;
            consume(ctx)?;
        }
        Ok(())
    }
}
