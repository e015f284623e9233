//! An enclave's virtio devices at run time (issue 14): the functions on its PCI bus, the rings
//! in its channel window, and the notifications both ways.
//!
//! **Placement.** The devices sit on bus 0 from device [`FIRST_DEVICE`] on, their BARs placed
//! by atoll from [`VIRTIO_MMIO_BASE`] (the top of the platform's PCI window, away from
//! passed-through functions' BARs). No BAR page is mapped: every access exits and reaches the
//! model through the segment's BAR map.
//!
//! **Guest → host.** A write to a device's notify register exits on the vCPU that made it; the
//! same exit walks the notified queues (`atoll_devices::virtio`) and copies what the guest
//! offered into the device's to-host ring. If the daemon asked to be told (the ring's event
//! index), atoll sets the device's PENDING bit and sends the host the interrupt atoll checked
//! when the host programmed it ([`crate::run::channel`]).
//!
//! **Host → guest.** The daemon writes records and rings the channel's doorbell (a host exit
//! that kicks this enclave's first core). Every vCPU takes the doorbell bits before it enters
//! the guest and while it halts ([`service`]): the devices named copy records into the guest's
//! buffers and complete them in the used rings, raising MSI-X interrupts delivered like any of
//! the platform's.
//!
//! **Errors.** The device models check every descriptor and every host record; a device that
//! saw a bad one sets DEVICE_NEEDS_RESET. A bad record (or ring index) of the host's is also
//! counted against the host, and the device's rings are reset: the daemon learns it from RESETS
//! and starts over. When the guest resets a device, its rings are reset too (requests in flight
//! are void).
//!
//! One lock per device (`spin::Mutex`, the enclave's own: no other partition takes it) orders
//! the vCPUs that process it; the PCI segment's lock is taken inside it.

use super::{PlatformHost, Shared};
use alloc::boxed::Box;
use alloc::vec::Vec;
use atoll_abi::channel::{
    self as ch, Consumer, DeviceRings, Producer, Reservation, RingError, SharedMem,
};
use atoll_devices::ioapic::{Delivery, DeliveryMode};
use atoll_devices::lapic::DestMode;
use atoll_devices::pci::{Bdf, DevFn};
use atoll_devices::virtio::backend::{Backend, BackendError, Record};
use atoll_vcpu::GuestMemory;

/// The first device number the virtio functions take on bus 0 (passed-through functions take
/// 1..).
pub const FIRST_DEVICE: u8 = 16;
/// Where the virtio functions' BARs go (guest-physical): 64 KiB per function.
pub const VIRTIO_MMIO_BASE: u64 = 0xfd00_0000;
/// Bytes of the platform's PCI window each virtio function takes.
pub const VIRTIO_MMIO_STRIDE: u64 = 0x1_0000;

/// One device's two rings, as atoll's side keeps them (its own indices, never re-read).
#[derive(Debug)]
struct Rings {
    tx: Producer,
    rx: Consumer,
    places: DeviceRings,
    /// The device status last seen (a change to 0 is a guest reset).
    status: u8,
    /// Host errors seen by the model, last seen (an increase resets the rings).
    host_errors: u64,
}

/// A device of the link.
struct Linked {
    slot: DevFn,
    rings: spin::Mutex<Rings>,
}

/// An enclave's channel: its index among the channel functions, its window, its devices.
pub struct Channel {
    index: usize,
    window: Box<dyn SharedMem + Send + Sync>,
    devices: Vec<Linked>,
    /// The host's protocol errors on this enclave's rings.
    host_errors: core::sync::atomic::AtomicU64,
}

impl core::fmt::Debug for Channel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Channel")
            .field("index", &self.index)
            .field("devices", &self.devices.len())
            .finish()
    }
}

impl Channel {
    /// The link of channel `index` (`CHANNELS[index]`), whose window `window` holds a header
    /// written for devices at `rings` (in order), which sit at `FIRST_DEVICE + i` on bus 0.
    pub fn new(
        index: usize,
        window: Box<dyn SharedMem + Send + Sync>,
        rings: &[DeviceRings],
    ) -> Self {
        let devices = rings
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.to_host.reset(&*window);
                r.to_enclave.reset(&*window);
                Linked {
                    slot: DevFn::new(FIRST_DEVICE + i as u8, 0).expect("at most MAX_DEVICES"),
                    rings: spin::Mutex::new(Rings {
                        tx: Producer::new(r.to_host, &*window),
                        rx: Consumer::new(r.to_enclave, &*window),
                        places: *r,
                        status: 0,
                        host_errors: 0,
                    }),
                }
            })
            .collect();
        Self {
            index,
            window,
            devices,
            host_errors: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The host's protocol errors on this enclave's rings so far.
    pub fn host_errors(&self) -> u64 {
        self.host_errors.load(core::sync::atomic::Ordering::Relaxed)
    }
}

/// The rings of one device as the models' [`Backend`].
struct RingBackend<'a> {
    mem: &'a dyn SharedMem,
    rings: &'a mut Rings,
    reserved: Option<(Reservation, u32)>,
    head: Option<ch::Record>,
    /// The daemon asked to hear about new records (to-host) or freed room (to-enclave).
    tell_host: bool,
    /// A ring error of the host's.
    broken: bool,
}

impl RingBackend<'_> {
    fn ring_error(&mut self, e: RingError) -> BackendError {
        match e {
            RingError::TooLong => BackendError::TooLarge,
            _ => {
                self.broken = true;
                BackendError::Broken
            }
        }
    }
}

impl Backend for RingBackend<'_> {
    fn begin(&mut self, tag: u32, len: u32) -> Result<(), BackendError> {
        self.reserved = None;
        for attempt in 0..2 {
            match self.rings.tx.reserve(self.mem, tag, len) {
                Ok(Some(r)) => {
                    self.reserved = Some((r, 0));
                    return Ok(());
                }
                Ok(None) if attempt == 0 => {
                    // Ask the daemon to ring when it frees room; room may have come meanwhile.
                    match self.rings.tx.wait_for_room(self.mem, len) {
                        Ok(true) => continue,
                        Ok(false) => return Err(BackendError::Full),
                        Err(e) => return Err(self.ring_error(e)),
                    }
                }
                Ok(None) => return Err(BackendError::Full),
                Err(e) => return Err(self.ring_error(e)),
            }
        }
        Err(BackendError::Full)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        let Some((r, filled)) = self.reserved.as_mut() else {
            return Err(BackendError::Range);
        };
        let end = u64::from(*filled) + bytes.len() as u64;
        if end > u64::from(r.len()) {
            return Err(BackendError::Range);
        }
        self.rings.tx.fill(self.mem, r, *filled, bytes);
        *filled = end as u32;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), BackendError> {
        let Some((r, filled)) = self.reserved.take() else {
            return Err(BackendError::Range);
        };
        if filled != r.len() {
            return Err(BackendError::Range);
        }
        self.tell_host |= self.rings.tx.commit(self.mem, r);
        Ok(())
    }

    fn abort(&mut self) {
        self.reserved = None;
    }

    fn peek(&mut self) -> Result<Option<Record>, BackendError> {
        let mut seen = self.rings.rx.peek(self.mem);
        if let Ok(None) = seen {
            // Dry: ask the daemon to ring on its next record, then look once more.
            seen = match self.rings.rx.wait_for_data(self.mem) {
                Ok(true) => self.rings.rx.peek(self.mem),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            };
        }
        match seen {
            Ok(r) => {
                self.head = r;
                Ok(r.map(|r| Record {
                    tag: r.tag,
                    len: r.len,
                }))
            }
            Err(e) => Err(self.ring_error(e)),
        }
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), BackendError> {
        let Some(head) = self.head else {
            return Err(BackendError::Range);
        };
        if u64::from(offset) + buf.len() as u64 > u64::from(head.len) {
            return Err(BackendError::Range);
        }
        self.rings.rx.read(self.mem, &head, offset, buf);
        Ok(())
    }

    fn consume(&mut self) -> Result<(), BackendError> {
        let Some(head) = self.head.take() else {
            return Err(BackendError::Range);
        };
        self.tell_host |= self.rings.rx.pop(self.mem, &head);
        Ok(())
    }
}

/// The guest vector and target of an MSI message (SDM Vol. 3A §11.11.1–2), as an I/O APIC
/// message the platform delivers; `None` for one no vCPU can take (not in the 0xFEE window,
/// a vector below 16, SMI/INIT/ExtINT).
pub fn msi_delivery(address: u64, data: u32) -> Option<Delivery> {
    if address >> 20 != 0xfee || (data as u8) < 16 {
        return None;
    }
    let mode = match (data >> 8) & 7 {
        0 => DeliveryMode::Fixed,
        1 => DeliveryMode::LowestPriority,
        4 => DeliveryMode::Nmi,
        _ => return None,
    };
    Some(Delivery {
        pin: 0,
        dest: (address as u32 >> 12) & 0xff,
        dest_mode: if address & (1 << 2) != 0 {
            DestMode::Logical
        } else {
            DestMode::Physical
        },
        mode,
        vector: data as u8,
        level_triggered: false,
    })
}

/// A blk device's size as the daemon published it (device entry `i`'s host fields): once the
/// backend is ready, a size in whole sectors that differs from the device's becomes a
/// configuration change. The host's value is only a number of sectors: a wrong one makes the
/// guest's requests fail at the daemon, nothing else.
fn blk_capacity(
    window: &dyn SharedMem,
    i: usize,
    f: &mut dyn atoll_devices::virtio::VirtioFunction,
) {
    use atoll_devices::virtio::{blk::Blk, pci::VirtioPci};
    let entry = ch::layout::DEVICE0 + i * ch::layout::DEVICE_STRIDE;
    if window.load_acquire(entry + ch::layout::DEV_BACKEND) != ch::backend::READY {
        return;
    }
    let lo = u64::from(window.load_acquire(entry + ch::layout::DEV_CAPACITY));
    let hi = u64::from(window.load_acquire(entry + ch::layout::DEV_CAPACITY + 4));
    let sectors = (hi << 32 | lo) / 512;
    if let Some(blk) = f.as_any_mut().downcast_mut::<VirtioPci<Blk>>() {
        if blk.device().capacity() != sectors {
            blk.change_config(|d| d.set_capacity(sectors));
        }
    }
}

impl Shared {
    /// Gives the enclave its channel (before it starts).
    pub fn set_channel(&self, channel: Channel) {
        self.channel.call_once(|| channel);
    }

    /// The enclave's channel, if it has one.
    pub fn channel(&self) -> Option<&Channel> {
        self.channel.get()
    }

    /// Each virtio device's kind and counters (for `atoll stats` and the summary; takes each
    /// device's lock and the segment's briefly).
    pub fn virtio_stats(&self) -> Vec<(&'static str, atoll_devices::virtio::Stats)> {
        let Some(c) = self.channel.get() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for d in &c.devices {
            let _rings = d.rings.lock();
            let mut pci = self.pci.lock();
            if let Some(f) = pci
                .function_mut(Bdf {
                    bus: 0,
                    devfn: d.slot,
                })
                .and_then(|f| f.virtio())
            {
                let kind = match f.device_type() {
                    atoll_devices::virtio::DeviceType::Net => "net",
                    atoll_devices::virtio::DeviceType::Block => "blk",
                    atoll_devices::virtio::DeviceType::Console => "console",
                };
                out.push((kind, f.stats()));
            }
        }
        out
    }

    /// The virtio devices' counters as the summary shows them: one object per device.
    pub fn virtio_report(&self) -> Option<serde_json::Value> {
        let stats = self.virtio_stats();
        if stats.is_empty() {
            return None;
        }
        let host_errors = self.channel.get().map_or(0, Channel::host_errors);
        let devices: Vec<serde_json::Value> = stats
            .iter()
            .map(|(kind, s)| {
                serde_json::json!({
                    "kind": kind,
                    "notifications": s.notifications,
                    "chains": s.chains,
                    "bad_chains": s.bad_chains,
                    "host_errors": s.host_errors,
                    "resets": s.resets,
                    "interrupts": s.interrupts,
                    "dropped": s.dropped,
                    "stale": s.stale,
                })
            })
            .collect();
        Some(serde_json::json!({ "devices": devices, "channel_host_errors": host_errors }))
    }

    /// After a guest write to function `bdf`'s configuration space or BARs: if it is one of
    /// the virtio devices, it processes what its driver notified and delivers the interrupts
    /// it raised (an unmask may release pending ones). Other functions' writes cost nothing
    /// here.
    pub(super) fn virtio_after_access(
        &self,
        bdf: Bdf,
        mem: &mut dyn GuestMemory,
        local: &mut super::Local,
        host: &mut impl PlatformHost,
    ) {
        let Some(c) = self.channel.get() else {
            return;
        };
        if bdf.bus != 0 {
            return;
        }
        if let Some((i, d)) = c
            .devices
            .iter()
            .enumerate()
            .find(|(_, d)| d.slot == bdf.devfn)
        {
            self.service_device(c, i, d, mem, Some(local), host, false);
        }
    }

    /// Before an entry and while halting: the devices the host rang process its records.
    pub(super) fn virtio_service_host(
        &self,
        mem: &mut dyn GuestMemory,
        local: &mut super::Local,
        host: &mut impl PlatformHost,
    ) {
        let Some(c) = self.channel.get() else {
            return;
        };
        let rung = crate::run::channel::CHANNELS[c.index].take_doorbell();
        if rung == 0 {
            return;
        }
        for (i, d) in c.devices.iter().enumerate() {
            if rung & (1 << i) != 0 {
                self.service_device(c, i, d, mem, Some(&mut *local), host, true);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn service_device(
        &self,
        c: &Channel,
        i: usize,
        d: &Linked,
        mem: &mut dyn GuestMemory,
        mut local: Option<&mut super::Local>,
        host: &mut impl PlatformHost,
        always: bool,
    ) {
        let state = &crate::run::channel::CHANNELS[c.index];
        let mut rings = d.rings.lock();
        let mut deliveries: [Option<Delivery>; 8] = [None; 8];
        let mut n = 0;
        let (tell, reset) = {
            let mut pci = self.pci.lock();
            let Some(f) = pci
                .function_mut(Bdf {
                    bus: 0,
                    devfn: d.slot,
                })
                .and_then(|f| f.virtio())
            else {
                return;
            };
            if always && f.device_type() == atoll_devices::virtio::DeviceType::Block {
                blk_capacity(&*c.window, i, f);
            }
            let notified = f.take_notified();
            let mut backend = RingBackend {
                mem: &*c.window,
                rings: &mut rings,
                reserved: None,
                head: None,
                tell_host: false,
                broken: false,
            };
            if notified != 0 || always {
                f.process(mem, &mut backend);
            }
            let (tell, broken) = (backend.tell_host, backend.broken);
            while let Some(m) = f.next_interrupt() {
                if n < deliveries.len() {
                    deliveries[n] = msi_delivery(m.address, m.data);
                    n += 1;
                }
            }
            let stats = f.stats();
            let status = f.device_status();
            let host_error = stats.host_errors > rings.host_errors || broken;
            rings.host_errors = stats.host_errors;
            let guest_reset = rings.status != 0 && status == 0;
            rings.status = status;
            if host_error {
                state.host_error();
                c.host_errors
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
            (tell, host_error || guest_reset)
        };
        if reset {
            let places = rings.places;
            places.to_host.reset(&*c.window);
            places.to_enclave.reset(&*c.window);
            rings.tx = Producer::new(places.to_host, &*c.window);
            rings.rx = Consumer::new(places.to_enclave, &*c.window);
        }
        drop(rings);
        let to_host = if reset {
            state.reset(1 << i)
        } else if tell {
            state.signal(1 << i)
        } else {
            None
        };
        if let Some((apic, vector)) = to_host {
            host.interrupt_host(apic, vector);
        }
        for dl in deliveries.iter().take(n).flatten() {
            self.deliver(*dl, local.as_deref_mut(), host);
        }
    }
}

#[cfg(test)]
mod tests;
