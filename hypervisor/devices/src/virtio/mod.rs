//! Virtio 1.2 devices over PCI (modern interface only) for enclaves.
//!
//! An enclave gets a console, a network path and a disk through drivers every Linux has
//! (`virtio_pci`, `virtio_console`, `virtio_net`, `virtio_blk`), while the host never sees
//! enclave memory: the device side runs in atoll on the enclave's core, walks the guest's
//! descriptor chains and copies between them and record rings in a channel window shared with
//! the host ([`backend::Backend`]). Everything the guest or the host writes is checked before it
//! is followed; a malformed chain or a bad host record sets DEVICE_NEEDS_RESET (§2.1.2) and is
//! counted — never a panic, never a copy outside the buffers the guest offered.
//!
//! * [`queue`]: the split virtqueue (§2.7): chain walking into a fixed-capacity [`queue::Chain`],
//!   the used ring, event-index suppression.
//! * [`pci`]: the virtio-over-PCI transport (§4.1) as a [`PciDevice`](crate::pci::bus::PciDevice):
//!   capabilities, common configuration, notifications, ISR, MSI-X.
//! * [`backend`]: the [`Backend`](backend::Backend) trait of the two host rings.
//! * [`net`], [`blk`], [`console`]: the device models (§5.1, §5.2, §5.3).
//!
//! **How the platform drives a device.** It puts a [`pci::VirtioPci`] on the enclave's PCI bus
//! and reaches it afterwards through [`PciDevice::virtio`](crate::pci::bus::PciDevice::virtio).
//! After a BAR write (a queue notification lands there), and whenever the host signals its ring,
//! it calls [`VirtioFunction::process`] with the enclave's memory and the device's backend, then
//! drains [`VirtioFunction::next_interrupt`] into the guest's local APIC. Processing allocates
//! nothing.

pub mod backend;
pub mod blk;
pub mod console;
pub mod net;
pub mod pci;
pub mod queue;

#[cfg(test)]
mod tests;

use crate::pci::msix::MsiMessage;
use atoll_vcpu::GuestMemory;
use backend::{Backend, BackendError};
use queue::{Chain, ChainError, CopyError, Queue};

/// Feature bits (§6 reserved features; §2.7 ring features).
pub mod feature {
    /// Indirect descriptors (§2.7.5.3).
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// Event index suppression (§2.7.10).
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Compliance with virtio 1.x: a modern driver must accept it.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device status bits (§2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: the device may use its queues.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

/// Virtio device types (§5) atoll offers; the PCI device ID is `0x1040 + type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum DeviceType {
    /// Network card (§5.1).
    Net = 1,
    /// Block device (§5.2).
    Block = 2,
    /// Console (§5.3).
    Console = 3,
}

/// What a device counted since it was created (driver resets do not clear it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queue notifications the driver wrote.
    pub notifications: u64,
    /// Chains completed into a used ring.
    pub chains: u64,
    /// Malformed chains (each set DEVICE_NEEDS_RESET).
    pub bad_chains: u64,
    /// Bad host records (each set DEVICE_NEEDS_RESET).
    pub host_errors: u64,
    /// Device resets by the driver.
    pub resets: u64,
    /// Interrupts raised (queue and configuration).
    pub interrupts: u64,
    /// Packets or records dropped because they could never fit (too large, no header).
    pub dropped: u64,
    /// Host replies to requests from before a reset, discarded.
    pub stale: u64,
}

/// A bad record from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The ring itself failed.
    Ring(BackendError),
    /// A reply whose tag names no outstanding request.
    UnknownTag(u32),
    /// A reply longer than the guest's buffer for it (or too short to hold a status).
    Length {
        /// The tag.
        tag: u32,
        /// Its payload bytes.
        len: u32,
    },
}

/// Why a device stopped: it sets DEVICE_NEEDS_RESET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The guest's chain or ring was malformed.
    Chain(ChainError),
    /// The host's record was.
    Host(HostError),
    /// A copy through a checked chain failed (guest RAM changed under it).
    Copy(CopyError),
}

impl From<ChainError> for DeviceError {
    fn from(e: ChainError) -> Self {
        DeviceError::Chain(e)
    }
}

impl From<HostError> for DeviceError {
    fn from(e: HostError) -> Self {
        DeviceError::Host(e)
    }
}

impl From<CopyError> for DeviceError {
    fn from(e: CopyError) -> Self {
        DeviceError::Copy(e)
    }
}

/// What a device works with while it processes.
pub struct Context<'a> {
    /// Its queues (ready or not).
    pub queues: &'a mut [Queue],
    /// The enclave's RAM.
    pub mem: &'a mut dyn GuestMemory,
    /// Its host rings.
    pub backend: &'a mut dyn Backend,
    /// The counters.
    pub stats: &'a mut Stats,
    /// Queues that got used entries (bit per queue): the transport decides on interrupts.
    pub used: u64,
}

impl Context<'_> {
    /// Completes `head` on queue `q` with `len` bytes written.
    pub fn complete(&mut self, q: usize, head: u16, len: u32) -> Result<(), DeviceError> {
        let Some(queue) = self.queues.get_mut(q) else {
            return Ok(());
        };
        queue.add_used(self.mem, head, len)?;
        self.stats.chains += 1;
        self.used |= 1 << q;
        Ok(())
    }

    /// Pops the next chain of queue `q` (None if the queue does not exist, is not ready or
    /// is empty).
    pub fn pop(&mut self, q: usize) -> Result<Option<Chain>, DeviceError> {
        match self.queues.get_mut(q) {
            Some(queue) => Ok(queue.pop(self.mem)?),
            None => Ok(None),
        }
    }

    /// Gives the last popped chain of queue `q` back.
    pub fn unpop(&mut self, q: usize) {
        if let Some(queue) = self.queues.get_mut(q) {
            queue.unpop();
        }
    }
}

/// Bytes copied per step between guest buffers and the rings (on the exit path's stack).
pub const BOUNCE: usize = 512;

/// A ring failure as a device error (the host's).
fn ring(e: BackendError) -> DeviceError {
    DeviceError::Host(HostError::Ring(e))
}

/// Appends `len` readable bytes of `chain` from `offset` to the record begun in `backend`.
pub fn chain_to_backend(
    chain: &Chain,
    mem: &dyn GuestMemory,
    backend: &mut dyn Backend,
    offset: u32,
    len: u32,
) -> Result<(), DeviceError> {
    let mut bounce = [0u8; BOUNCE];
    queue::pieces(
        chain.segments(),
        false,
        offset,
        len as usize,
        BOUNCE,
        |addr, _, n| {
            mem.read(addr, &mut bounce[..n]).ok_or(CopyError::Memory)?;
            backend.append(&bounce[..n]).map_err(ring)
        },
    )
}

/// Copies `len` bytes of the host's next record from `from` into the writable ones of
/// `segments` at `to` (all checked to fit before anything is copied).
pub fn backend_to_segments(
    backend: &mut dyn Backend,
    segments: &[queue::Segment],
    mem: &mut dyn GuestMemory,
    from: u32,
    to: u32,
    len: u32,
) -> Result<(), DeviceError> {
    let mut bounce = [0u8; BOUNCE];
    queue::pieces(segments, true, to, len as usize, BOUNCE, |addr, done, n| {
        let at = from.checked_add(done as u32).ok_or(CopyError::OutOfRange)?;
        backend.read(at, &mut bounce[..n]).map_err(ring)?;
        mem.write(addr, &bounce[..n]).ok_or(CopyError::Memory)?;
        Ok(())
    })
}

/// [`backend_to_segments`] into a chain's writable buffers.
pub fn backend_to_chain(
    backend: &mut dyn Backend,
    chain: &Chain,
    mem: &mut dyn GuestMemory,
    from: u32,
    to: u32,
    len: u32,
) -> Result<(), DeviceError> {
    backend_to_segments(backend, chain.segments(), mem, from, to, len)
}

/// A device model behind the transport: identity, features, configuration bytes, and the work
/// on its queues.
pub trait VirtioDevice: Send + 'static {
    /// Its type.
    fn device_type(&self) -> DeviceType;
    /// The features it offers (the transport adds none; [`feature::VERSION_1`] must be here).
    fn features(&self) -> u64;
    /// Its number of queues.
    fn queue_count(&self) -> u16;
    /// The largest size each queue offers.
    fn queue_max_size(&self) -> u16 {
        queue::MAX_QUEUE_SIZE
    }
    /// Writes its device-specific configuration (§5.x.4) into `buf` and returns its length
    /// (at most `buf.len()`).
    fn config(&self, buf: &mut [u8]) -> usize;
    /// A driver write to the device configuration (read-only by default: ignored).
    fn config_write(&mut self, offset: u32, data: &[u8]) {
        let _ = (offset, data);
    }
    /// The driver reset the device (status 0): forget everything about the rings.
    fn reset(&mut self);
    /// The driver set DRIVER_OK having accepted `features`.
    fn activate(&mut self, features: u64) {
        let _ = features;
    }
    /// Moves data between the queues and the host rings as far as both allow.
    fn process(&mut self, ctx: &mut Context<'_>) -> Result<(), DeviceError>;
}

/// The platform's handle on a virtio function after it went onto a bus as a `PciDevice`.
pub trait VirtioFunction {
    /// The device's type.
    fn device_type(&self) -> DeviceType;
    /// The queues the driver notified since the last call (bit per queue), cleared.
    fn take_notified(&mut self) -> u64;
    /// Services every ready queue and the host's ring: call after a notification and after the
    /// host signalled its ring. Does nothing until the driver set DRIVER_OK, or after the
    /// device needs a reset.
    fn process(&mut self, mem: &mut dyn GuestMemory, backend: &mut dyn Backend);
    /// The next MSI-X message to deliver, if any (drain after `process` and after every BAR or
    /// configuration write: an unmask releases pending vectors).
    fn next_interrupt(&mut self) -> Option<MsiMessage>;
    /// The device status register.
    fn device_status(&self) -> u8;
    /// The counters.
    fn stats(&self) -> Stats;
    /// The concrete transport (`pci::VirtioPci<D>`), for device-specific calls such as a
    /// block device's capacity change.
    fn as_any_mut(&mut self) -> &mut dyn core::any::Any;
}

/// What became of a chain's bytes offered to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Published as one record.
    Sent,
    /// The ring has no room now: the caller gives the chain back and stops.
    Full,
    /// The record could never fit the ring: dropped and counted.
    Dropped,
}

/// Sends `header` followed by `len` readable bytes of `chain` from `skip` on (all the rest when
/// `len` is `None`) as one record tagged `tag`.
pub fn send_readable(
    ctx: &mut Context<'_>,
    tag: u32,
    chain: &Chain,
    skip: u32,
    len: Option<u32>,
    header: &[u8],
) -> Result<Sent, DeviceError> {
    let rest = chain.readable_len().saturating_sub(skip);
    let body = len.map_or(rest, |l| l.min(rest));
    let Some(total) = u32::try_from(header.len())
        .ok()
        .and_then(|h| h.checked_add(body))
    else {
        ctx.stats.dropped += 1;
        return Ok(Sent::Dropped);
    };
    match ctx.backend.begin(tag, total) {
        Ok(()) => {}
        Err(BackendError::Full) => return Ok(Sent::Full),
        Err(BackendError::TooLarge) => {
            ctx.stats.dropped += 1;
            return Ok(Sent::Dropped);
        }
        Err(e) => return Err(DeviceError::Host(HostError::Ring(e))),
    }
    let mut result = if header.is_empty() {
        Ok(())
    } else {
        ctx.backend
            .append(header)
            .map_err(|e| DeviceError::Host(HostError::Ring(e)))
    };
    if result.is_ok() {
        result = chain_to_backend(chain, ctx.mem, ctx.backend, skip, body);
    }
    if result.is_ok() {
        result = ctx
            .backend
            .commit()
            .map_err(|e| DeviceError::Host(HostError::Ring(e)));
    }
    if result.is_err() {
        ctx.backend.abort();
    }
    result.map(|()| Sent::Sent)
}

/// The host's next record, a ring failure being a host error.
pub fn peek(ctx: &mut Context<'_>) -> Result<Option<backend::Record>, DeviceError> {
    ctx.backend
        .peek()
        .map_err(|e| DeviceError::Host(HostError::Ring(e)))
}

/// Drops the host's next record.
pub fn consume(ctx: &mut Context<'_>) -> Result<(), DeviceError> {
    ctx.backend
        .consume()
        .map_err(|e| DeviceError::Host(HostError::Ring(e)))
}
