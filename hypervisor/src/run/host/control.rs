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
use atoll_abi::channel::MAX_CHANNELS;
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
    /// Per function (0: control, 1..: channels), where the manager left BAR0 unmapped (0:
    /// nowhere): faults there are register accesses.
    registers: [AtomicU64; 1 + MAX_CHANNELS],
    /// Per function and window, where the host's last configuration write put it, not yet
    /// applied by the manager: bit 0 = a change is pending, the address in the rest (0 =
    /// nowhere).
    placed: [[AtomicU64; 2]; 1 + MAX_CHANNELS],
    /// The control function's ECAM page (fixed at construction; read without the lock, as the
    /// placement check runs under it), and the bytes from it atoll keeps (one page per
    /// function).
    ecam: Option<GuestPhysAddr>,
    ecam_len: u64,
    /// How many channel functions follow the control function.
    channels: u8,
}

impl ControlPort {
    /// The device at bus 0 `device` (1–31) with `channels` channel functions after the
    /// control function; `ecam`: the host's segment 0 ECAM window.
    pub fn new(device: u8, ecam: Option<(GuestPhysAddr, u8)>, channels: u8) -> Option<Self> {
        let config = HostConfig::new(device, ecam, channels)?;
        let ecam = config.ecam_page();
        let ecam_len = config.ecam_len();
        Some(Self {
            config: spin::Mutex::new(config),
            registers: core::array::from_fn(|_| AtomicU64::new(0)),
            placed: core::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
            ecam,
            ecam_len,
            channels,
        })
    }

    /// The control function's ECAM page, which the host's tables must leave unmapped, with
    /// the channel functions' pages after it: [`Self::ecam_len`] bytes.
    pub fn ecam_page(&self) -> Option<GuestPhysAddr> {
        self.ecam
    }

    /// Bytes of ECAM from [`Self::ecam_page`] atoll keeps.
    pub fn ecam_len(&self) -> u64 {
        self.ecam_len
    }

    /// How many channel functions the device has.
    pub fn channels(&self) -> u8 {
        self.channels
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
            if let Some(f) = self.placed.get(usize::from(c.function)) {
                f[i].store(c.to.map_or(0, |a| a.as_u64()) | 1, Ordering::Release);
                any = true;
            }
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

    /// Where the host moved function `function`'s windows since the last call, per window
    /// (registers, mailbox or channel window): `Some(to)` for a change (`to` `None`: it no
    /// longer decodes).
    pub fn take_placements(&self, function: u8) -> [Option<Option<GuestPhysAddr>>; 2] {
        let Some(f) = self
            .control
            .as_ref()
            .and_then(|c| c.placed.get(usize::from(function)))
        else {
            return [None, None];
        };
        core::array::from_fn(|i| {
            let v = f[i].swap(0, Ordering::AcqRel);
            (v & 1 != 0).then(|| (v > 1).then(|| GuestPhysAddr::new(v & !1)))
        })
    }

    /// The manager applied function `function`'s registers window: faults at `at` are
    /// register accesses.
    pub fn set_control_registers(&self, function: u8, at: Option<GuestPhysAddr>) {
        if let Some(r) = self
            .control
            .as_ref()
            .and_then(|c| c.registers.get(usize::from(function)))
        {
            r.store(at.map_or(0, |a| a.as_u64()), Ordering::Release);
        }
    }

    /// After a configuration write to the control device: each channel function's MSI as the
    /// host left it, checked — a fixed or lowest-priority interrupt to host cores, sent to
    /// one of them — and its INTx mask into the state the enclave's cores read
    /// ([`crate::run::channel`]); an unmask while the line is asserted sends the interrupt.
    fn mirror_channel_msi(&self, cfg: &HostConfig, hw: &impl HostHw) {
        for f in 1..=cfg.channels() {
            let Some(d) = cfg.function(f) else {
                continue;
            };
            let state = &crate::run::channel::CHANNELS[usize::from(f) - 1];
            if let Some((apic, vector)) = state.set_intx_masked(d.intx_disabled()) {
                hw.interrupt_core(apic, vector);
            }
            let Some(msi) = d.msi() else {
                continue;
            };
            let target = msi
                .enabled
                .then(|| self.msi_target(msi.address, msi.data))
                .flatten();
            if msi.enabled && target.is_none() {
                let n = bump(&self.counters.io_events);
                if rate_limited(n) {
                    log::info!(
                        "host: channel {f}: MSI {:#x}/{:#x} names no host core: refused",
                        msi.address,
                        msi.data
                    );
                }
            }
            crate::run::channel::CHANNELS[usize::from(f) - 1].set_msi(target);
        }
    }

    /// The host core and vector an MSI (address, data) sends to, if it is a fixed or
    /// lowest-priority interrupt that the host's IPI filter lets reach a host core (SDM Vol.
    /// 3A §11.11.1–2: destination id in address bits 19:12, destination mode in bit 2;
    /// vector in data bits 7:0, delivery mode in 10:8).
    fn msi_target(&self, address: u64, data: u16) -> Option<(u32, u8)> {
        if address >> 20 != 0xfee {
            return None;
        }
        self.interrupt_target(
            (address as u32 >> 12) & 0xff,
            address & (1 << 2) != 0,
            u32::from(data >> 8) & 7,
            data as u8,
        )
    }

    /// Every channel's MSI and INTx target checked again (a host core was lent to an enclave
    /// or came back: a target naming a lent core goes to another host core, or nowhere).
    pub fn recheck_channel_targets(&self) {
        if let Some(c) = &self.control {
            let cfg = c.config.lock();
            for f in 1..=cfg.channels() {
                if let Some(msi) = cfg.function(f).and_then(|d| d.msi()) {
                    let target = msi
                        .enabled
                        .then(|| self.msi_target(msi.address, msi.data))
                        .flatten();
                    crate::run::channel::CHANNELS[usize::from(f) - 1].set_msi(target);
                }
            }
        }
        for c in crate::run::channel::CHANNELS.iter() {
            if let Some(gsi) = c.intx_gsi() {
                self.refresh_channel_intx(gsi);
            }
        }
    }

    /// The host core and vector an I/O APIC entry sends to (82093AA §3.2.4: vector 7:0,
    /// delivery mode 10:8, destination mode 11, mask 16, destination 63:56), on the same
    /// terms as [`Self::msi_target`]; `None` while it is masked.
    fn rte_target(&self, rte: u64) -> Option<(u32, u8)> {
        if rte & (1 << 16) != 0 {
            return None;
        }
        self.interrupt_target(
            (rte >> 56) as u32,
            rte & (1 << 11) != 0,
            (rte >> 8) as u32 & 7,
            rte as u8,
        )
    }

    /// The channels' INTx after the host wrote the I/O APIC entry of `gsi` or named it as a
    /// channel's: each channel routed to it gets that entry, checked, as its target.
    pub fn refresh_channel_intx(&self, gsi: u32) {
        for c in crate::run::channel::CHANNELS.iter() {
            if c.intx_gsi() == Some(gsi) {
                let target = self
                    .ioapic_entry_for_gsi(gsi)
                    .and_then(|rte| self.rte_target(rte));
                c.set_intx(target);
            }
        }
    }

    fn interrupt_target(
        &self,
        dest: u32,
        logical: bool,
        mode: u32,
        vector: u8,
    ) -> Option<(u32, u8)> {
        use crate::run::host_ipi::{decide, Action, Deliver, Icr};
        if mode > 1 {
            return None;
        }
        let low = u32::from(vector) | mode << 8 | u32::from(logical) << 11;
        let icr = Icr::from_xapic(low, (dest & 0xff) << 24);
        let cores = self.cores.lock();
        let sender = cores.apic_id(0)?;
        match decide(icr, sender, &cores).action {
            Action::Send {
                what: Deliver::Fixed(v),
                to,
            } => cores.apic_ids(&to).next().map(|a| (a, v)),
            _ => None,
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
            .and_then(|c| Some((c.ecam_page()?.as_u64(), c.ecam_len())));
        (base.as_u64()..end).contains(&apic)
            || ecam.is_some_and(|(p, len)| p < end && base.as_u64() < p + len)
            || self
                .excluded
                .iter()
                .any(|r| r.start.as_u64() < end && base.as_u64() < r.end.as_u64())
    }

    /// Which function's register page (as applied) `gpa` is in.
    pub(super) fn control_registers_of(&self, gpa: u64) -> Option<u8> {
        let c = self.control.as_ref()?;
        c.registers
            .iter()
            .position(|r| {
                let r = r.load(Ordering::Acquire);
                r != 0 && gpa & !0xfff == r
            })
            .map(|f| f as u8)
    }

    /// Whether `gpa` is in the control device's ECAM pages.
    pub(super) fn is_control_config(&self, gpa: u64) -> bool {
        self.control.as_ref().is_some_and(|c| {
            c.ecam_page()
                .is_some_and(|p| gpa >= p.as_u64() && gpa - p.as_u64() < c.ecam_len())
        })
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
    let target = cfg.port_target(port);
    let answer = if write {
        data.copy_from_slice(&value.to_le_bytes());
        cfg.io_write(port, &data[..len], |b, s| shared.placement_forbidden(b, s))
    } else {
        cfg.io_read(port, &mut data[..len])
    };
    let mut result = u32::from_le_bytes(data);
    match answer {
        HostAccess::Emulated(changes) => {
            if write {
                shared.mirror_channel_msi(&cfg, hw);
            } else if let Some((f, register)) = target {
                intx_status(f, register, &mut data[..len]);
                result = u32::from_le_bytes(data);
            }
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

/// A register access (BAR0) of `size` bytes at `gpa` to function `function`: a read's value,
/// or 0 after a write. A channel's doorbell kicks the enclave's core.
pub(super) fn register_access(
    shared: &HostShared,
    hw: &impl HostHw,
    function: u8,
    gpa: u64,
    size: u8,
    write: Option<u64>,
) -> u64 {
    let Some(c) = &shared.control else {
        return u64::MAX;
    };
    let Some(base) = c.registers.get(usize::from(function)) else {
        return u64::MAX;
    };
    let offset = gpa.wrapping_sub(base.load(Ordering::Acquire));
    let len = usize::from(size.clamp(1, 8));
    if function > 0 {
        let index = usize::from(function) - 1;
        return match write {
            Some(v) => {
                use crate::run::channel::RegisterEffect;
                match crate::run::channel::register_write(index, offset, len, v) {
                    Some(RegisterEffect::Kick(apic)) => hw.kick_core(apic),
                    Some(RegisterEffect::IntxRouted) => shared.refresh_channel_intx(v as u32),
                    None => {}
                }
                0
            }
            None => crate::run::channel::register_read(index, offset, len),
        };
    }
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

/// The status register's interrupt bit (PCI 3.0 §6.2.3, bit 3) of channel function `f` in
/// the bytes a configuration read of `register` returned: set while its INTx is asserted.
fn intx_status(f: u8, register: u16, data: &mut [u8]) {
    let Some(state) = crate::run::channel::CHANNELS.get(usize::from(f).wrapping_sub(1)) else {
        return;
    };
    if !state.intx_asserted() {
        return;
    }
    for (k, b) in data.iter_mut().enumerate() {
        if usize::from(register) + k == usize::from(atoll_devices::pci::config::reg::STATUS) {
            *b |= 1 << 3;
        }
    }
}

/// A configuration access in the control device's ECAM pages.
pub(super) fn ecam_access(
    shared: &HostShared,
    hw: &impl HostHw,
    gpa: u64,
    size: u8,
    write: Option<u64>,
) -> u64 {
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
            if matches!(answer, HostAccess::Emulated(_)) {
                shared.mirror_channel_msi(&cfg, hw);
            }
            drop(cfg);
            if let HostAccess::Emulated(changes) = answer {
                if c.note(changes) {
                    shared.want_manager();
                }
            }
            0
        }
        None => {
            let target = cfg.ecam_target(GuestPhysAddr::new(gpa));
            let _ = cfg.ecam_read(GuestPhysAddr::new(gpa), &mut data[..len]);
            if let Some((f, register)) = target {
                intx_status(f, register, &mut data[..len]);
            }
            u64::from_le_bytes(data)
        }
    }
}
