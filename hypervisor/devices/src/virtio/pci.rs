//! Virtio over PCI, modern interface (virtio 1.2 §4.1).
//!
//! **Identity** (§4.1.2): vendor 0x1AF4, device 0x1040 + the virtio device type, revision 1 (a
//! non-transitional device: Linux's `virtio_pci` binds it with its modern code and never looks
//! for the legacy I/O BAR); subsystem vendor 0x1AF4, subsystem ID the device type.
//!
//! **BARs.** BAR 0 is one 32-bit non-prefetchable memory BAR of 16 KiB holding the virtio
//! structures, one page each (Linux maps each structure separately and checks it lies inside its
//! BAR):
//!
//! | offset | structure | `cfg_type` |
//! |--------|-----------|------------|
//! | 0x0000 | common configuration (§4.1.4.3), [`COMMON_LEN`] bytes | 1 |
//! | 0x1000 | ISR status (§4.1.4.5), 1 byte, read to clear | 3 |
//! | 0x2000 | device-specific configuration (§5.x.4) | 4 |
//! | 0x3000 | notifications (§4.1.4.4): queue *n* at `n * 4` ([`NOTIFY_MULTIPLIER`]) | 2 |
//!
//! BAR 1 is a 4 KiB 32-bit memory BAR with the MSI-X table at 0 and the PBA at 0x800: the MSI-X
//! structures get a BAR of their own so no virtio register shares their page (an OS may map
//! the table with attributes of its own). The function has one MSI-X vector per queue plus one
//! for configuration changes, which is what Linux asks for first; it has no INTx pin.
//!
//! The fifth capability, `VIRTIO_PCI_CAP_PCI_CFG` (§4.1.4.9), is a window through configuration
//! space into the BARs: the driver writes `bar`, `offset` and `length` (1, 2 or 4), then reads
//! or writes `pci_cfg_data`, and the access goes to the BAR as if made there.
//!
//! **Common configuration** (§4.1.4.3.1–2): feature words through their selects (selects other
//! than 0 and 1 read 0, and writes there are dropped); `msix_config` and `queue_msix_vector`
//! read back the vector written, or `NO_VECTOR` (0xffff) when the function has no such vector,
//! which is how Linux learns a vector was refused; `device_status` written 0 resets the device;
//! `FEATURES_OK` does not stick when the driver accepted a feature the device did not offer or
//! did not accept `VIRTIO_F_VERSION_1`; DEVICE_NEEDS_RESET is the device's alone to set and a
//! reset's alone to clear. A queue's size and addresses change only while it is disabled; a
//! size that is not a power of two of at most the queue's maximum is ignored; `queue_select`
//! past the last queue reads size 0 (no such queue). Queue reset (`VIRTIO_F_RING_RESET`) is not
//! offered, so `queue_reset` reads 0 and ignores writes.
//!
//! **Notifications** are recorded per queue (a write at the queue's notify offset, any width)
//! for the platform to take; setting DRIVER_OK also marks every queue, because a driver posts
//! buffers before it (Linux's console and net drivers do) and nothing was processed then.
//!
//! **Interrupts.** A used chain the driver wants to hear about (per the queue's suppression
//! state) raises the queue's vector and ISR bit 0; a configuration change raises `msix_config`
//! and ISR bit 1. Raised vectors wait in a bit mask until the platform drains
//! [`VirtioFunction::next_interrupt`], which goes through [`Msix::signal`] (so a masked vector
//! becomes a pending bit, released by [`Msix::next_deliverable`] when unmasked).

use super::queue::{Queue, NO_VECTOR};
use super::{status, Context, DeviceError, DeviceType, Stats, VirtioDevice, VirtioFunction};
use crate::pci::bus::PciDevice;
use crate::pci::config::{Bar, BarKind, ClassCode, ConfigEffect, ConfigError, ConfigSpace, Header};
use crate::pci::msix::{MsiMessage, Msix, MsixError, MsixLayout, Signal};
use alloc::vec::Vec;
use atoll_vcpu::GuestMemory;

use super::backend::Backend;

/// The virtio PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are this plus the device type.
pub const DEVICE_ID_BASE: u16 = 0x1040;
/// Bytes of BAR 0.
pub const BAR0_SIZE: u64 = 0x4000;
/// Bytes of BAR 1 (MSI-X).
pub const BAR1_SIZE: u64 = 0x1000;
/// Where the common configuration is in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Bytes of the common configuration (through `queue_reset`).
pub const COMMON_LEN: u64 = 0x3c;
/// Where the ISR byte is in BAR 0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Where the device configuration is in BAR 0.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Bytes reserved for the device configuration.
pub const DEVICE_MAX: u64 = 0x1000;
/// Where the notification area is in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// `notify_off_multiplier`: queue *n* is notified at `NOTIFY_OFFSET + n * 4`.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Where the MSI-X table is in BAR 1.
pub const MSIX_TABLE_OFFSET: u32 = 0;
/// Where the MSI-X PBA is in BAR 1.
pub const MSIX_PBA_OFFSET: u32 = 0x800;

/// `cfg_type` values of the virtio vendor capabilities (§4.1.4).
pub mod cfg_type {
    /// Common configuration.
    pub const COMMON: u8 = 1;
    /// Notifications.
    pub const NOTIFY: u8 = 2;
    /// ISR status.
    pub const ISR: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE: u8 = 4;
    /// The configuration-space window into the BARs.
    pub const PCI: u8 = 5;
}

/// The vendor-specific capability ID virtio's capabilities use.
pub const VENDOR_CAPABILITY: u8 = 0x09;

/// Offsets in the common configuration (§4.1.4.3, `struct virtio_pci_common_cfg`).
pub mod common {
    /// le32 device_feature_select.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// le32 device_feature (read-only).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// le32 driver_feature_select.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// le32 driver_feature.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// le16 config_msix_vector.
    pub const MSIX_CONFIG: u64 = 0x10;
    /// le16 num_queues (read-only).
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8 device_status.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8 config_generation (read-only).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// le16 queue_select.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// le16 queue_size.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// le16 queue_msix_vector.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// le16 queue_enable.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// le16 queue_notify_off (read-only).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// le64 queue_desc.
    pub const QUEUE_DESC: u64 = 0x20;
    /// le64 queue_driver (the available ring).
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// le64 queue_device (the used ring).
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// le16 queue_notify_data (read-only; the queue's index).
    pub const QUEUE_NOTIFY_DATA: u64 = 0x38;
    /// le16 queue_reset.
    pub const QUEUE_RESET: u64 = 0x3a;
}

/// The registers of the common configuration as (offset, width) — 64-bit ones as two dwords
/// so a driver's dword writes to either half work.
const FIELDS: [(u64, usize); 20] = [
    (common::DEVICE_FEATURE_SELECT, 4),
    (common::DEVICE_FEATURE, 4),
    (common::DRIVER_FEATURE_SELECT, 4),
    (common::DRIVER_FEATURE, 4),
    (common::MSIX_CONFIG, 2),
    (common::NUM_QUEUES, 2),
    (common::DEVICE_STATUS, 1),
    (common::CONFIG_GENERATION, 1),
    (common::QUEUE_SELECT, 2),
    (common::QUEUE_SIZE, 2),
    (common::QUEUE_MSIX_VECTOR, 2),
    (common::QUEUE_ENABLE, 2),
    (common::QUEUE_NOTIFY_OFF, 2),
    (common::QUEUE_DESC, 4),
    (common::QUEUE_DESC + 4, 4),
    (common::QUEUE_DRIVER, 4),
    (common::QUEUE_DRIVER + 4, 4),
    (common::QUEUE_DEVICE, 4),
    (common::QUEUE_DEVICE + 4, 4),
    (common::QUEUE_RESET, 2),
];

/// Why a transport could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioPciError {
    /// Configuration space refused a BAR or capability.
    Config(ConfigError),
    /// MSI-X refused its layout.
    Msix(MsixError),
    /// The device has no queues or more than 63 (a vector each plus one must fit a u64 mask and
    /// the notification area a page).
    Queues(u16),
    /// The device does not offer VIRTIO_F_VERSION_1.
    NotModern,
}

/// A virtio device on PCI: configuration space, MSI-X, the common configuration's registers and
/// the queues, around a device model `D`.
pub struct VirtioPci<D: VirtioDevice> {
    config: ConfigSpace,
    msix: Msix,
    device: D,
    queues: Vec<Queue>,
    offered: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    generation: u8,
    msix_config: u16,
    queue_select: u16,
    isr: u8,
    notified: u64,
    raised: u64,
    stats: Stats,
    /// Offset of the PCI-configuration-access capability.
    cfg_window: u16,
}

impl<D: VirtioDevice> core::fmt::Debug for VirtioPci<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("type", &self.device.device_type())
            .field("status", &self.status)
            .field("stats", &self.stats)
            .finish()
    }
}

/// The body (after ID and next) of a virtio capability: `cap_len, cfg_type, bar, id, padding,
/// offset, length` (§4.1.4), plus `extra` (the notify multiplier or the window's data).
fn capability(cfg: u8, bar: u8, offset: u32, length: u32, extra: Option<u32>) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    let len = if extra.is_some() { 18 } else { 14 };
    b[0] = (len + 2) as u8;
    b[1] = cfg;
    b[2] = bar;
    b[6..10].copy_from_slice(&offset.to_le_bytes());
    b[10..14].copy_from_slice(&length.to_le_bytes());
    if let Some(x) = extra {
        b[14..18].copy_from_slice(&x.to_le_bytes());
    }
    (b, len)
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// The function for `device`: BARs, capabilities and MSI-X laid out as the module says,
    /// in the reset state.
    pub fn new(device: D) -> Result<Self, VirtioPciError> {
        let ty = device.device_type();
        let nq = device.queue_count();
        if nq == 0 || nq > 63 {
            return Err(VirtioPciError::Queues(nq));
        }
        let offered = device.features();
        if offered & super::feature::VERSION_1 == 0 {
            return Err(VirtioPciError::NotModern);
        }
        let class = match ty {
            DeviceType::Net => ClassCode {
                class: 0x02,
                subclass: 0x00,
                prog_if: 0,
            },
            DeviceType::Block => ClassCode {
                class: 0x01,
                subclass: 0x00,
                prog_if: 0,
            },
            DeviceType::Console => ClassCode {
                class: 0x07,
                subclass: 0x80,
                prog_if: 0,
            },
        };
        let mut config = ConfigSpace::new(&Header {
            vendor_id: VENDOR_ID,
            device_id: DEVICE_ID_BASE + ty as u16,
            revision: 1,
            class,
            subsystem_vendor_id: VENDOR_ID,
            subsystem_id: ty as u16,
            interrupt_pin: None,
        });
        let mem32 = BarKind::Memory32 {
            prefetchable: false,
        };
        config
            .add_bar(
                0,
                Bar {
                    kind: mem32,
                    size: BAR0_SIZE,
                },
            )
            .map_err(VirtioPciError::Config)?;
        config
            .add_bar(
                1,
                Bar {
                    kind: mem32,
                    size: BAR1_SIZE,
                },
            )
            .map_err(VirtioPciError::Config)?;
        let mut scratch = [0u8; 64];
        let device_len = device.config(&mut scratch) as u32;
        let caps = [
            capability(
                cfg_type::COMMON,
                0,
                COMMON_OFFSET as u32,
                COMMON_LEN as u32,
                None,
            ),
            capability(
                cfg_type::NOTIFY,
                0,
                NOTIFY_OFFSET as u32,
                u32::from(nq) * NOTIFY_MULTIPLIER,
                Some(NOTIFY_MULTIPLIER),
            ),
            capability(cfg_type::ISR, 0, ISR_OFFSET as u32, 1, None),
            capability(cfg_type::DEVICE, 0, DEVICE_OFFSET as u32, device_len, None),
        ];
        for (body, len) in caps {
            config
                .add_capability(VENDOR_CAPABILITY, &body[..len], &[])
                .map_err(VirtioPciError::Config)?;
        }
        // The window: bar, offset, length and data writable by the driver.
        let (body, len) = capability(cfg_type::PCI, 0, 0, 0, Some(0));
        let mut writable = [0u8; 18];
        writable[2] = 0xff;
        writable[6..18].fill(0xff);
        let window = config
            .add_capability(VENDOR_CAPABILITY, &body[..len], &writable[..len])
            .map_err(VirtioPciError::Config)?;
        let msix = Msix::install(
            &mut config,
            MsixLayout {
                vectors: nq + 1,
                table_bar: 1,
                table_offset: MSIX_TABLE_OFFSET,
                pba_bar: 1,
                pba_offset: MSIX_PBA_OFFSET,
            },
        )
        .map_err(VirtioPciError::Msix)?;
        let max = device.queue_max_size();
        Ok(Self {
            config,
            msix,
            queues: (0..nq).map(|_| Queue::new(max)).collect(),
            device,
            offered,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            generation: 0,
            msix_config: NO_VECTOR,
            queue_select: 0,
            isr: 0,
            notified: 0,
            raised: 0,
            stats: Stats::default(),
            cfg_window: u16::from(window),
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Changes the device's configuration (e.g. a block device's capacity): runs `f`, bumps
    /// `config_generation` and, once the driver is running, raises a configuration-change
    /// interrupt (§4.1.4.3.1, §2.5.2).
    pub fn change_config(&mut self, f: impl FnOnce(&mut D)) {
        f(&mut self.device);
        self.generation = self.generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.raise_config();
        }
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Queue `q`'s state.
    pub fn queue(&self, q: u16) -> Option<&Queue> {
        self.queues.get(usize::from(q))
    }

    /// The MSI-X state.
    pub fn msix(&self) -> &Msix {
        &self.msix
    }

    fn raise(&mut self, vector: u16) {
        self.stats.interrupts += 1;
        if vector != NO_VECTOR && vector < 64 {
            self.raised |= 1 << vector;
        }
    }

    fn raise_config(&mut self) {
        self.isr |= 2;
        self.raise(self.msix_config);
    }

    /// The device cannot go on until the driver resets it (§2.1.2).
    fn needs_reset(&mut self, error: DeviceError) {
        match error {
            DeviceError::Host(_) => self.stats.host_errors += 1,
            _ => self.stats.bad_chains += 1,
        }
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.status |= status::DEVICE_NEEDS_RESET;
            if self.status & status::DRIVER_OK != 0 {
                self.raise_config();
            }
        }
    }

    /// Status 0: everything back to the reset state except the PCI function's own (BARs,
    /// MSI-X table) and the counters.
    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.msix_config = NO_VECTOR;
        self.queue_select = 0;
        self.isr = 0;
        self.notified = 0;
        self.raised = 0;
        self.stats.resets += 1;
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut new =
            (v & !status::DEVICE_NEEDS_RESET) | (self.status & status::DEVICE_NEEDS_RESET);
        if new & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let ok = self.driver_features & !self.offered == 0
                && self.driver_features & super::feature::VERSION_1 != 0;
            if !ok {
                new &= !status::FEATURES_OK;
            }
        }
        let starting = new & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0;
        self.status = new;
        if starting {
            self.device.activate(self.driver_features);
            // Drivers post buffers (and notify) before DRIVER_OK, and the host may have rung
            // meanwhile; none of that could be processed yet. Every queue counts as notified so
            // the platform's next look processes the device.
            self.notified |= (1u64 << self.queues.len()) - 1;
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn valid_vector(&self, v: u16) -> u16 {
        if v < self.msix.layout().vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    /// The common configuration as bytes (what a read of any width sees).
    fn common_image(&self) -> [u8; COMMON_LEN as usize] {
        let mut b = [0u8; COMMON_LEN as usize];
        let mut put = |at: u64, v: &[u8]| {
            let at = at as usize;
            b[at..at + v.len()].copy_from_slice(v);
        };
        let feature_word = |f: u64, sel: u32| match sel {
            0 => f as u32,
            1 => (f >> 32) as u32,
            _ => 0,
        };
        put(
            common::DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(
            common::DEVICE_FEATURE,
            &feature_word(self.offered, self.device_feature_select).to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE,
            &feature_word(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(common::MSIX_CONFIG, &self.msix_config.to_le_bytes());
        put(
            common::NUM_QUEUES,
            &(self.queues.len() as u16).to_le_bytes(),
        );
        put(common::DEVICE_STATUS, &[self.status]);
        put(common::CONFIG_GENERATION, &[self.generation]);
        put(common::QUEUE_SELECT, &self.queue_select.to_le_bytes());
        if let Some(q) = self.queues.get(usize::from(self.queue_select)) {
            put(common::QUEUE_SIZE, &q.size.to_le_bytes());
            put(common::QUEUE_MSIX_VECTOR, &q.msix_vector.to_le_bytes());
            put(common::QUEUE_ENABLE, &u16::from(q.ready).to_le_bytes());
            put(common::QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(common::QUEUE_DESC, &q.desc.as_u64().to_le_bytes());
            put(common::QUEUE_DRIVER, &q.avail.as_u64().to_le_bytes());
            put(common::QUEUE_DEVICE, &q.used.as_u64().to_le_bytes());
            put(common::QUEUE_NOTIFY_DATA, &self.queue_select.to_le_bytes());
        } else {
            put(common::QUEUE_MSIX_VECTOR, &NO_VECTOR.to_le_bytes());
        }
        b
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let image = self.common_image();
        for (i, d) in data.iter_mut().enumerate() {
            *d = image.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut image = self.common_image();
        let start = offset as usize;
        for (i, &d) in data.iter().enumerate() {
            if let Some(b) = image.get_mut(start + i) {
                *b = d;
            }
        }
        let end = start + data.len();
        for (at, width) in FIELDS {
            let at_us = at as usize;
            if at_us >= end || at_us + width <= start {
                continue;
            }
            let mut v = [0u8; 4];
            v[..width].copy_from_slice(&image[at_us..at_us + width]);
            self.set_field(at, u32::from_le_bytes(v));
        }
    }

    /// A write of `v` to the common configuration register at `at`.
    fn set_field(&mut self, at: u64, v: u32) {
        let features_locked = self.status & status::FEATURES_OK != 0;
        match at {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select = v,
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select = v,
            common::DRIVER_FEATURE if !features_locked => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features = (self.driver_features & 0xffff_ffff) | u64::from(v) << 32
                }
                _ => {}
            },
            common::MSIX_CONFIG => self.msix_config = self.valid_vector(v as u16),
            common::DEVICE_STATUS => self.write_status(v as u8),
            common::QUEUE_SELECT => self.queue_select = v as u16,
            common::QUEUE_MSIX_VECTOR => {
                let vector = self.valid_vector(v as u16);
                if let Some(q) = self.selected() {
                    q.msix_vector = vector;
                }
            }
            common::QUEUE_SIZE => {
                let v = v as u16;
                if let Some(q) = self.selected() {
                    if !q.ready && v.is_power_of_two() && v <= q.max_size {
                        q.size = v;
                    }
                }
            }
            common::QUEUE_ENABLE => {
                let features = self.driver_features;
                if let Some(q) = self.selected() {
                    if v & 1 == 1 && !q.ready {
                        q.event_idx = features & super::feature::RING_EVENT_IDX != 0;
                        q.indirect = features & super::feature::RING_INDIRECT_DESC != 0;
                        q.ready = true;
                    }
                }
            }
            common::QUEUE_DESC
            | common::QUEUE_DRIVER
            | common::QUEUE_DEVICE
            | 0x24
            | 0x2c
            | 0x34 => {
                let Some(q) = self.selected() else { return };
                if q.ready {
                    return;
                }
                let field = match at & !7 {
                    common::QUEUE_DESC => &mut q.desc,
                    common::QUEUE_DRIVER => &mut q.avail,
                    _ => &mut q.used,
                };
                let old = field.as_u64();
                let new = if at & 4 == 0 {
                    (old & !0xffff_ffff) | u64::from(v)
                } else {
                    (old & 0xffff_ffff) | u64::from(v) << 32
                };
                *field = boot::GuestPhysAddr::new(new);
            }
            // Read-only registers, queue_reset (not offered), and driver features after
            // FEATURES_OK: the write is dropped.
            _ => {}
        }
    }

    fn device_read(&self, offset: u64, data: &mut [u8]) {
        let mut scratch = [0u8; 64];
        let len = self.device.config(&mut scratch);
        for (i, d) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *d = if at < len { scratch[at] } else { 0 };
        }
    }

    /// A BAR 0 read.
    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_OFFSET + 0x1000 => self.common_read(o - COMMON_OFFSET, data),
            ISR_OFFSET => {
                if let Some(d) = data.first_mut() {
                    *d = self.isr;
                }
                // Reading the ISR acknowledges it (§4.1.4.5).
                self.isr = 0;
            }
            o if o < ISR_OFFSET + 0x1000 => {}
            o if o < DEVICE_OFFSET + DEVICE_MAX => self.device_read(o - DEVICE_OFFSET, data),
            _ => {}
        }
    }

    /// A BAR 0 write.
    fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + 0x1000 => self.common_write(o - COMMON_OFFSET, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_MAX).contains(&o) => {
                self.device.config_write((o - DEVICE_OFFSET) as u32, data)
            }
            o if o >= NOTIFY_OFFSET => {
                let q = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                if q < self.queues.len() as u64 {
                    self.notified |= 1 << q;
                    self.stats.notifications += 1;
                }
            }
            _ => {}
        }
    }

    /// The window capability's `bar`, `offset` and `length`, if they name an access.
    fn window(&self) -> Option<(u8, u64, usize)> {
        let at = self.cfg_window;
        let bar = self.config.u8_at(at + 4);
        let offset = u64::from(self.config.u32_at(at + 8));
        let len = self.config.u32_at(at + 12) as usize;
        matches!(len, 1 | 2 | 4).then_some((bar, offset, len))
    }

    /// Whether a configuration access of `len` bytes at `offset` touches the window's data.
    fn touches_window_data(&self, offset: u16, len: usize) -> bool {
        let data = self.cfg_window + 16;
        offset < data + 4 && offset + len as u16 > data
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPci<D> {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if self.touches_window_data(offset, data.len()) {
            let mut value = [0u8; 4];
            if let Some((bar, at, len)) = self.window() {
                self.bar_read(bar, at, &mut value[..len]);
            }
            // The access lies in the data dword (accesses never cross one).
            let start = usize::from(offset.saturating_sub(self.cfg_window + 16));
            for (i, d) in data.iter_mut().enumerate() {
                *d = value.get(start + i).copied().unwrap_or(0);
            }
            return;
        }
        if self.config.read(offset, data).is_err() {
            data.fill(0xff);
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Option<ConfigEffect> {
        let effect = self.config.write(offset, data).ok().flatten();
        self.msix.config_written(&self.config, offset, data.len());
        if self.touches_window_data(offset, data.len()) {
            if let Some((bar, at, len)) = self.window() {
                let value = self.config.u32_at(self.cfg_window + 16).to_le_bytes();
                self.bar_write(bar, at, &value[..len]);
            }
        }
        effect
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match bar {
            0 => self.bar0_read(offset, data),
            1 => {
                let table = u64::from(MSIX_TABLE_OFFSET);
                let pba = u64::from(MSIX_PBA_OFFSET);
                let r = if offset >= pba {
                    self.msix.pba_read(offset - pba, data)
                } else {
                    self.msix.table_read(offset - table, data)
                };
                if r.is_err() {
                    data.fill(0xff);
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        match bar {
            0 => self.bar0_write(offset, data),
            1 if offset < u64::from(MSIX_PBA_OFFSET) => {
                let _ = self
                    .msix
                    .table_write(offset - u64::from(MSIX_TABLE_OFFSET), data);
            }
            _ => {}
        }
    }

    fn virtio(&mut self) -> Option<&mut dyn VirtioFunction> {
        Some(self)
    }
}

impl<D: VirtioDevice> VirtioFunction for VirtioPci<D> {
    fn device_type(&self) -> DeviceType {
        self.device.device_type()
    }

    fn take_notified(&mut self) -> u64 {
        core::mem::take(&mut self.notified)
    }

    fn process(&mut self, mem: &mut dyn GuestMemory, backend: &mut dyn Backend) {
        let running = status::DRIVER_OK | status::FEATURES_OK;
        if self.status & running != running || self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        let mut ctx = Context {
            queues: &mut self.queues,
            mem: &mut *mem,
            backend,
            stats: &mut self.stats,
            used: 0,
        };
        let result = self.device.process(&mut ctx);
        let used = ctx.used;
        let mut failure = result.err();
        for q in 0..self.queues.len() {
            if used & (1 << q) == 0 {
                continue;
            }
            match self.queues[q].needs_interrupt(mem) {
                Ok(true) => {
                    self.isr |= 1;
                    self.raise(self.queues[q].msix_vector);
                }
                Ok(false) => {}
                Err(e) => failure = failure.or(Some(DeviceError::Chain(e))),
            }
        }
        if let Some(e) = failure {
            self.needs_reset(e);
        }
    }

    fn next_interrupt(&mut self) -> Option<MsiMessage> {
        while self.raised != 0 {
            let v = self.raised.trailing_zeros() as u16;
            self.raised &= self.raised - 1;
            if let Signal::Send(m) = self.msix.signal(v) {
                return Some(m);
            }
        }
        self.msix.next_deliverable().map(|(_, m)| m)
    }

    fn device_status(&self) -> u8 {
        self.status
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}
