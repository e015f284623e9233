//! Channel windows for enclaves with virtio devices (issue 14), as the manager gives and takes
//! them.
//!
//! **Attach** (at build, after passed-through functions): a free channel function, a window of
//! [`WINDOW_SIZE`] from the pool (never the enclave's RAM), zeroed, its header written for the
//! enclave's devices; the virtio functions on the enclave's bus with their BARs placed; the
//! window mapped where the host placed the channel's BAR2. Nothing of the enclave's memory is
//! ever mapped into the host: the window is the only memory the two share.
//!
//! **Release** (destroy, failure, end): the channel goes idle (doorbells refused), the host
//! learns it (PENDING's detach bit and its interrupt), BAR2 goes back to what the host's layout
//! maps there, every host core flushes, and only then is the window zeroed and freed.

use super::host::Host;
use super::FRAMES;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use atoll::hw::channel_window::WindowMem;
use atoll::machine::percpu::PartitionId;
use atoll::partition::config::EnclaveConfig;
use atoll::run::channel::CHANNELS;
use atoll::run::vplat::virtio::{Channel, FIRST_DEVICE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE};
use atoll::run::vplat::Shared;
use atoll_abi::channel::{self as ch, Kind, MAX_CHANNELS, WINDOW_SIZE};
use atoll_devices::pci::bus::PciDevice;
use atoll_devices::pci::DevFn;
use atoll_devices::virtio::blk::Blk;
use atoll_devices::virtio::console::Console;
use atoll_devices::virtio::net::Net;
use atoll_devices::virtio::pci::VirtioPci;
use boot::PhysRange;

/// Which enclave holds each channel function, and its window.
#[derive(Debug, Default)]
pub struct Channels {
    held: [Option<(PartitionId, PhysRange)>; MAX_CHANNELS],
}

fn function(
    kind: Kind,
    d: &atoll::partition::config::VirtioDevice,
    name: &str,
) -> Result<Box<dyn PciDevice>, String> {
    let made: Result<Box<dyn PciDevice>, _> = match kind {
        Kind::Net => VirtioPci::new(Net::new(d.mac)).map(|f| Box::new(f) as Box<dyn PciDevice>),
        // The size comes from the daemon (a configuration change when it is known).
        Kind::Blk => VirtioPci::new(Blk::new(0, d.read_only, name.as_bytes()))
            .map(|f| Box::new(f) as Box<dyn PciDevice>),
        Kind::Console => {
            VirtioPci::new(Console::new(None)).map(|f| Box::new(f) as Box<dyn PciDevice>)
        }
    };
    made.map_err(|e| alloc::format!("virtio {}: {e:?}", kind.name()))
}

impl Channels {
    /// Gives enclave `id` (described by `c`, platform `shared`) its channel, if it has virtio
    /// devices. On error nothing is left taken.
    pub fn attach(
        &mut self,
        id: PartitionId,
        c: &EnclaveConfig,
        shared: &Arc<Shared>,
        host: Option<&mut Host>,
    ) -> Result<(), String> {
        let devices = c.virtio_devices().map_err(|e| alloc::format!("{e}"))?;
        if devices.is_empty() {
            return Ok(());
        }
        let Some(host) = host else {
            return Err(
                "virtio devices need the host as root partition: its daemon serves them".into(),
            );
        };
        let functions = usize::from(host.run.shared.control().map_or(0, |c| c.channels()));
        let Some(index) = (0..functions.min(MAX_CHANNELS)).find(|&i| self.held[i].is_none()) else {
            return Err(alloc::format!(
                "no free channel: at most {functions} enclaves with virtio devices at once"
            ));
        };
        let frames = FRAMES
            .lock()
            .allocate(WINDOW_SIZE / 4096, 2 << 20)
            .map_err(|e| alloc::format!("no memory for the channel window: {e:?}"))?;
        // SAFETY: the frames were just allocated to this window and are identity-mapped; no
        // one else reaches them until they are mapped into the host below.
        unsafe {
            core::ptr::write_bytes(frames.start.as_u64() as *mut u8, 0, WINDOW_SIZE as usize)
        };
        // SAFETY: the frames stay allocated to the window until `release` frees them, after
        // the enclave's cores stopped and the host's mapping is gone.
        let mem = unsafe { WindowMem::new(frames) };
        let infos: Vec<ch::DeviceInfo<'_>> = devices.iter().map(|d| d.info()).collect();
        let kick = c.cores.first().copied().unwrap_or(0);
        let generation = CHANNELS[index].attach(devices.len(), kick);
        let undo = |index: usize| {
            let _ = CHANNELS[index].detach();
            let _ = FRAMES.lock().free(frames);
        };
        let rings = match ch::write_header(&mem, generation, &c.name, &infos) {
            Ok(r) => r,
            Err(e) => {
                undo(index);
                return Err(alloc::format!("channel window: {e:?}"));
            }
        };
        let mut placed = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let result = function(d.kind, d, &c.name).and_then(|mut f| {
                let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_STRIDE;
                let cfg = f.config_mut();
                cfg.set_bar_base(0, base)
                    .and_then(|_| cfg.set_bar_base(1, base + atoll_devices::virtio::pci::BAR0_SIZE))
                    .map_err(|e| alloc::format!("virtio BARs: {e:?}"))?;
                let slot = DevFn::new(FIRST_DEVICE + i as u8, 0).ok_or("no slot")?;
                shared
                    .add_pci_function(slot, f)
                    .map_err(|e| alloc::format!("virtio on the bus: {e:?}"))
            });
            if let Err(e) = result {
                undo(index);
                return Err(e);
            }
            placed.push(rings[i].ok_or("rings")?);
        }
        shared.set_channel(Channel::new(index, Box::new(mem), &placed));
        if let Err(e) = host.set_channel_window(index, Some(frames)) {
            // The BAR decodes nothing then; the daemon finds no window, the devices wait.
            log::warn!("enclave '{}': {e}", c.name);
        }
        self.held[index] = Some((id, frames));
        log::info!(
            "enclave '{}': channel {} ({} virtio devices), window of {} KiB at {}",
            c.name,
            index + 1,
            devices.len(),
            WINDOW_SIZE >> 10,
            frames.start
        );
        Ok(())
    }

    /// Takes enclave `id`'s channel back: the host is told and unmapped before the window is
    /// zeroed and freed — unless `keep` (a core of the enclave did not stop and may still write
    /// it: the frames stay allocated, as the enclave's RAM does).
    pub fn release(&mut self, id: PartitionId, host: Option<&mut Host>, keep: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(index) = self
            .held
            .iter()
            .position(|h| h.is_some_and(|(p, _)| p == id))
        else {
            return problems;
        };
        let Some((_, frames)) = self.held[index].take() else {
            return problems;
        };
        if let Some((apic, vector)) = CHANNELS[index].detach() {
            atoll::hw::apic::send_fixed(apic, vector);
        }
        let mut unmapped = true;
        if let Some(h) = host {
            if let Err(e) = h.set_channel_window(index, None) {
                problems.push(alloc::format!("channel {}: {e}", index + 1));
                unmapped = false;
            }
            if !h.run.wait_tables_flushed(100_000) {
                problems.push(alloc::format!(
                    "channel {}: a host core did not flush its tables; the window is kept",
                    index + 1
                ));
                unmapped = false;
            }
        }
        if unmapped && !keep {
            // SAFETY: the window's frames are atoll's again: the enclave's cores stopped and
            // no host mapping reaches them (flushed above).
            unsafe {
                core::ptr::write_bytes(frames.start.as_u64() as *mut u8, 0, WINDOW_SIZE as usize)
            };
            if let Err(e) = FRAMES.lock().free(frames) {
                problems.push(alloc::format!("channel {}: {e:?}", index + 1));
            }
        }
        problems
    }
}
