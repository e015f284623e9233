//! Virtio console (virtio 1.2 §5.3), port 0 only.
//!
//! Two queues: 0 `receiveq` (bytes toward the guest) and 1 `transmitq` (bytes from it). No
//! `VIRTIO_CONSOLE_F_MULTIPORT`, so there is no control queue and Linux's `virtio_console`
//! makes the port `hvc0`. `VIRTIO_CONSOLE_F_SIZE` is offered when the platform gives a size.
//!
//! **Host protocol.** Each transmit chain's readable bytes become records (tag 0) toward the
//! host of at most [`CONSOLE_MAX_CHUNK`] bytes each, and the chain is used once all are sent
//! (length 0: the device wrote nothing); when the ring fills halfway through a chain, the
//! device remembers how far it got and resumes there. A record from
//! the host is a run of bytes (tag ignored) copied into receive buffers in order; a record
//! larger than one buffer is split over several, so console bytes are never dropped for want
//! of a large buffer. Records wait in the ring while the guest offers no receive buffer.

pub use atoll_abi::channel::CONSOLE_MAX_CHUNK;

use super::{
    backend_to_chain, consume, feature, peek, send_readable, Context, DeviceError, DeviceType,
    Sent, VirtioDevice,
};

/// Receive queue index.
pub const RECEIVEQ: usize = 0;
/// Transmit queue index.
pub const TRANSMITQ: usize = 1;
/// `VIRTIO_CONSOLE_F_SIZE`: `cols` and `rows` are valid.
pub const F_SIZE: u64 = 1 << 0;
/// Bytes of the configuration (`cols, rows, max_nr_ports, emerg_wr`).
pub const CONFIG_LEN: usize = 12;

/// A console.
#[derive(Clone, Debug)]
pub struct Console {
    size: Option<(u16, u16)>,
    /// Bytes of the host's current record already delivered.
    rx_offset: u32,
    /// Bytes of the transmit chain at the queue's head already sent.
    tx_sent: u32,
}

impl Console {
    /// A console; `size` is (columns, rows) when the platform knows them.
    pub fn new(size: Option<(u16, u16)>) -> Self {
        Self {
            size,
            rx_offset: 0,
            tx_sent: 0,
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> DeviceType {
        DeviceType::Console
    }

    fn features(&self) -> u64 {
        feature::VERSION_1 | if self.size.is_some() { F_SIZE } else { 0 }
    }

    fn queue_count(&self) -> u16 {
        2
    }

    fn config(&self, buf: &mut [u8]) -> usize {
        let (cols, rows) = self.size.unwrap_or((0, 0));
        let mut b = [0u8; CONFIG_LEN];
        b[0..2].copy_from_slice(&cols.to_le_bytes());
        b[2..4].copy_from_slice(&rows.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        let n = CONFIG_LEN.min(buf.len());
        buf[..n].copy_from_slice(&b[..n]);
        n
    }

    fn reset(&mut self) {
        // A partly delivered record stays partly delivered: its rest goes to the next driver.
        // A partly sent chain belongs to the old driver.
        self.tx_sent = 0;
    }

    fn process(&mut self, ctx: &mut Context<'_>) -> Result<(), DeviceError> {
        while let Some(chain) = ctx.pop(TRANSMITQ)? {
            let total = chain.readable_len();
            let mut stalled = false;
            while self.tx_sent < total {
                let n = (total - self.tx_sent).min(CONSOLE_MAX_CHUNK);
                match send_readable(ctx, 0, &chain, self.tx_sent, Some(n), &[])? {
                    Sent::Full => {
                        stalled = true;
                        break;
                    }
                    Sent::Sent | Sent::Dropped => self.tx_sent += n,
                }
            }
            if stalled {
                ctx.unpop(TRANSMITQ);
                break;
            }
            self.tx_sent = 0;
            ctx.complete(TRANSMITQ, chain.head(), 0)?;
        }
        while let Some(record) = peek(ctx)? {
            if self.rx_offset >= record.len {
                consume(ctx)?;
                self.rx_offset = 0;
                continue;
            }
            let Some(chain) = ctx.pop(RECEIVEQ)? else {
                break;
            };
            let n = (record.len - self.rx_offset).min(chain.writable_len());
            backend_to_chain(ctx.backend, &chain, ctx.mem, self.rx_offset, 0, n)?;
            ctx.complete(RECEIVEQ, chain.head(), n)?;
            self.rx_offset += n;
        }
        Ok(())
    }
}
