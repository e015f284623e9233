//! The control device as the host reaches it (`atoll_abi::control`): its configuration space
//! through mechanism #1 (ports 0xCF8–0xCFF, intercepted once the device exists) and its ECAM
//! page (left unmapped), and its registers (BAR0, left unmapped where the host placed it).
//! The model is [`atoll_devices::pci::control`]; this module performs what it asks of the
//! hardware (other functions' configuration accesses, with the host's address latch replayed)
//! and hands the manager what it must act on: where the host moved the BARs
//! ([`HostShared::take_placements`]) and the doorbells ([`HostShared::take_doorbells`]).
//!
//! One lock serializes every host configuration access (mechanism #1's address and data
//! accesses must not interleave between cores); it is the host's own, never taken by an
//! enclave's exit.

use super::{bump, rate_limited, HostAction, HostHw, HostShared};
use atoll_devices::pci::control::{HostAccess, HostConfig, MappingChanges, Window};
use atoll_vcpu::Vcpu;
use boot::GuestPhysAddr;
use core::sync::atomic::{AtomicU64, Ordering};

/// PCI CONFIG_ADDRESS (PCI Local Bus 3.0 §3.2.2.3.2).
const CONFIG_ADDRESS: u16 = 0xcf8;
/// The data window.
pub const CONFIG_DATA: core::ops::RangeInclusive<u16> = 0xcfc..=0xcff;

/// The control device's state in the host partition.
pub struct ControlPort {
    config: spin::Mutex<HostConfig>,
    /// Where the manager left BAR0 unmapped (0: nowhere): faults there are register accesses.
    registers: AtomicU64,
    /// Per window, where the host's last configuration write put it, not yet applied by the
    /// manager: bit 0 = a change is pending, the address in the rest (0 = nowhere).
    placed: [AtomicU64; 2],
    /// The control function's ECAM page (fixed at construction; read without the lock, as the
    /// placement check runs under it).
    ecam: Option<GuestPhysAddr>,
}

impl ControlPort {
    /// The device at bus 0 `device` (1–31); `ecam`: the host's segment 0 ECAM window.
    pub fn new(device: u8, ecam: Option<(GuestPhysAddr, u8)>) -> Option<Self> {
        let config = HostConfig::new(device, ecam)?;
        let ecam = config.ecam_page();
        Some(Self {
            config: spin::Mutex::new(config),
            registers: AtomicU64::new(0),
            placed: [AtomicU64::new(0), AtomicU64::new(0)],
            ecam,
        })
    }

    /// The control function's ECAM page, which the host's tables must leave unmapped.
    pub fn ecam_page(&self) -> Option<GuestPhysAddr> {
        self.ecam
    }

    /// The device number on bus 0.
    pub fn device(&self) -> u8 {
        self.config.lock().device()
    }

    fn note(&self, changes: MappingChanges) -> bool {
        let mut any = false;
        for c in changes {
            let i = match c.window {
                Window::Registers => 0,
                Window::Mailbox => 1,
            };
            self.placed[i].store(c.to.map_or(0, |a| a.as_u64()) | 1, Ordering::Release);
            any = true;
        }
        any
    }
}

impl HostShared {
    /// Gives the host the control device (before the intercepted ports are listed).
    pub fn set_control(&mut self, port: ControlPort) {
        self.control = Some(port);
    }

    /// The control device, if the host has one.
    pub fn control(&self) -> Option<&ControlPort> {
        self.control.as_ref()
    }

    /// Where the host moved the control device's windows since the last call, per window
    /// (registers, mailbox): `Some(to)` for a change (`to` `None`: it no longer decodes).
    pub fn take_placements(&self) -> [Option<Option<GuestPhysAddr>>; 2] {
        let Some(c) = &self.control else {
            return [None, None];
        };
        core::array::from_fn(|i| {
            let v = c.placed[i].swap(0, Ordering::AcqRel);
            (v & 1 != 0).then(|| (v > 1).then(|| GuestPhysAddr::new(v & !1)))
        })
    }

    /// The manager applied the registers' window: faults at `at` are register accesses.
    pub fn set_control_registers(&self, at: Option<GuestPhysAddr>) {
        if let Some(c) = &self.control {
            c.registers
                .store(at.map_or(0, |a| a.as_u64()), Ordering::Release);
        }
    }

    /// Slots whose doorbell rang since the last call (bit per slot).
    pub fn take_doorbells(&self) -> u32 {
        self.control
            .as_ref()
            .map_or(0, |c| c.config.lock().control_mut().take_doorbells().bits())
    }

    /// A rung slot held no submitted request: counted in the REFUSED register.
    pub fn control_refused(&self) {
        if let Some(c) = &self.control {
            c.config.lock().control_mut().note_refused();
        }
    }

    /// Whether a window at `base` of `size` bytes would cover memory the host may not place a
    /// BAR over: atoll's and the pool's, the xAPIC page (the manager checks the rest against
    /// the host's layout and refuses anything that is not entirely its MMIO).
    fn placement_forbidden(&self, base: GuestPhysAddr, size: u64) -> bool {
        let Some(end) = base.as_u64().checked_add(size) else {
            return true;
        };
        let apic = self.apic_page.as_u64();
        let ecam = self
            .control
            .as_ref()
            .and_then(|c| c.ecam_page())
            .map(|p| p.as_u64());
        (base.as_u64()..end).contains(&apic)
            || ecam.is_some_and(|p| p < end && base.as_u64() < p + 4096)
            || self
                .excluded
                .iter()
                .any(|r| r.start.as_u64() < end && base.as_u64() < r.end.as_u64())
    }

    /// Whether `gpa` is in the control device's register page (as applied).
    pub(super) fn is_control_registers(&self, gpa: u64) -> bool {
        self.control.as_ref().is_some_and(|c| {
            let r = c.registers.load(Ordering::Acquire);
            r != 0 && gpa & !0xfff == r
        })
    }

    /// Whether `gpa` is in the control function's ECAM page.
    pub(super) fn is_control_config(&self, gpa: u64) -> bool {
        self.control
            .as_ref()
            .and_then(|c| c.ecam_page())
            .is_some_and(|p| gpa & !0xfff == p.as_u64())
    }
}

/// A port access at 0xCF8 (dword) or 0xCFC–0xCFF: the model or the hardware. Returns `None`
/// for an access this module does not take (other ports, other widths at 0xCF8).
pub(super) fn port_access(
    vcpu: &mut impl Vcpu,
    shared: &HostShared,
    hw: &impl HostHw,
    port: u16,
    size: u8,
    write: bool,
    value: u32,
) -> Option<HostAction> {
    let c = shared.control.as_ref()?;
    // Any access that touches the data window (a word at 0xCFB included, which the model
    // refuses as no register), and the dword address latch.
    let end = u32::from(port) + u32::from(size.max(1));
    let touches_data = u32::from(*CONFIG_DATA.start()) < end && port <= *CONFIG_DATA.end();
    if !(touches_data || port == CONFIG_ADDRESS && size == 4) {
        return None;
    }
    let len = usize::from(size.clamp(1, 4));
    let mut cfg = c.config.lock();
    let mut data = [0u8; 4];
    let answer = if write {
        data.copy_from_slice(&value.to_le_bytes());
        cfg.io_write(port, &data[..len], |b, s| shared.placement_forbidden(b, s))
    } else {
        cfg.io_read(port, &mut data[..len])
    };
    let mut result = u32::from_le_bytes(data);
    match answer {
        HostAccess::Emulated(changes) => {
            drop(cfg);
            if c.note(changes) {
                shared.want_manager();
            }
        }
        HostAccess::Refused | HostAccess::NotControl => {
            drop(cfg);
            let n = bump(&shared.counters.io_events);
            if rate_limited(n) {
                log::info!("host: {size}-byte configuration access at port {port:#x} refused");
            }
            result = u32::MAX;
        }
        HostAccess::PassThrough(p) => {
            // A data access to a function whose MSI capability is trapped goes to its shadow
            // (still under the lock: the shadow replays the latch for the device's own bytes).
            let latch = cfg.latch();
            // A function an enclave owns is absent for the host.
            if p.port >= *CONFIG_DATA.start()
                && latch & (1 << 31) != 0
                && shared.hidden.contains((latch >> 8) as u16)
            {
                drop(cfg);
                shared.hidden.refuse();
                if !write {
                    crate::run::exits::set_io_result(vcpu, size, u32::MAX);
                }
                vcpu.skip_instruction();
                return Some(HostAction::Resume);
            }
            let trapped = (p.port >= *CONFIG_DATA.start() && latch & (1 << 31) != 0)
                .then(|| {
                    let sid = (latch >> 8) as u16;
                    let offset = (latch & 0xfc) | u32::from(p.port & 3);
                    super::irq::config_access(
                        shared,
                        hw,
                        super::irq::ConfigPath::Port,
                        sid,
                        offset,
                        p.len,
                        write.then_some(value),
                    )
                })
                .flatten();
            match trapped {
                Some(v) => result = v,
                None => {
                    // With the lock held: the replayed latch and the access are one.
                    if let Some(l) = p.latch {
                        hw.port_out(CONFIG_ADDRESS, 4, l);
                    }
                    if write {
                        hw.port_out(p.port, p.len, value);
                    } else {
                        result = hw.port_in(p.port, p.len);
                    }
                }
            }
        }
    }
    if !write {
        crate::run::exits::set_io_result(vcpu, size, result);
    }
    vcpu.skip_instruction();
    Some(HostAction::Resume)
}

/// A register access (BAR0) of `size` bytes at `gpa`: a read's value, or None after a write.
pub(super) fn register_access(shared: &HostShared, gpa: u64, size: u8, write: Option<u64>) -> u64 {
    let Some(c) = &shared.control else {
        return u64::MAX;
    };
    let base = c.registers.load(Ordering::Acquire);
    let offset = gpa.wrapping_sub(base);
    let len = usize::from(size.clamp(1, 8));
    let mut cfg = c.config.lock();
    let dev = cfg.control_mut();
    match write {
        Some(v) => {
            dev.register_write(offset, &v.to_le_bytes()[..len]);
            let rung = dev.pending().bits() != 0;
            drop(cfg);
            if rung {
                shared.want_manager();
            }
            0
        }
        None => {
            let mut data = [0u8; 8];
            dev.register_read(offset, &mut data[..len]);
            u64::from_le_bytes(data)
        }
    }
}

/// A configuration access in the control function's ECAM page.
pub(super) fn ecam_access(shared: &HostShared, gpa: u64, size: u8, write: Option<u64>) -> u64 {
    let Some(c) = &shared.control else {
        return u64::MAX;
    };
    let len = usize::from(size.clamp(1, 8));
    let mut cfg = c.config.lock();
    let mut data = [0u8; 8];
    match write {
        Some(v) => {
            data.copy_from_slice(&v.to_le_bytes());
            let answer = cfg.ecam_write(GuestPhysAddr::new(gpa), &data[..len], |b, s| {
                shared.placement_forbidden(b, s)
            });
            drop(cfg);
            if let HostAccess::Emulated(changes) = answer {
                if c.note(changes) {
                    shared.want_manager();
                }
            }
            0
        }
        None => {
            let _ = cfg.ecam_read(GuestPhysAddr::new(gpa), &mut data[..len]);
            u64::from_le_bytes(data)
        }
    }
}
