//! The local APICs of a Linux enclave: each vCPU's [`Mailbox`] for interrupts from other
//! cores, IA32_APIC_BASE and the mode transitions ([`ApicMode`]), the xAPIC page as an adapter
//! over the x2APIC model, the x2APIC MSRs (and the platform's other two MSRs), IPI routing
//! within the enclave and the I/O APIC's messages to their vCPUs.

use super::{gp, Class, ClassCounts, Local, PlatformHost, Shared};
use crate::run::exits::Action;
use atoll_devices::ioapic::{Delivery, DeliveryMode};
use atoll_devices::lapic::{self, ApicEffect, DestMode, Ipi, IpiMode};
use atoll_vcpu::{Gpr, Vcpu};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// IA32_BIOS_SIGN_ID (microcode revision): reads 0, writes (the "clear before CPUID" idiom)
/// accepted.
const IA32_BIOS_SIGN_ID: u32 = 0x8b;
/// IA32_TSC_ADJUST (SDM Vol. 3B §18.17.3): reads 0, only 0 may be written.
const IA32_TSC_ADJUST: u32 = 0x3b;
/// IA32_APIC_BASE bits (SDM Vol. 3A §11.4.4): BSP (8), EXTD (10), EN (11).
const APIC_BASE_BSP: u64 = 1 << 8;
pub(super) const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_EN: u64 = 1 << 11;

/// One vCPU's incoming interrupts, written by any core of the enclave. Cache-line aligned (its
/// class counts are), so two vCPUs' mailboxes never share a line.
pub struct Mailbox {
    edge: [AtomicU64; 4],
    level: [AtomicU64; 4],
    pub(super) nmi: AtomicBool,
    pub(super) init: AtomicBool,
    /// 0: none; otherwise 0x100 | the STARTUP vector.
    sipi: AtomicU32,
    /// The host core (APIC id) that runs this vCPU.
    pub host_apic: u32,
    /// Exit classes counted by this vCPU (written by its core only).
    pub(super) classes: ClassCounts,
    /// Set by the vCPU's core when it stopped for good.
    done: AtomicBool,
    /// The vCPU's APIC mode and logical addressing, published by its core for senders on other
    /// cores: mode in bits 33:32 (0 disabled, 1 xAPIC, 2 x2APIC), xAPIC LDR bits 31:24 in bits
    /// 31:24 and the DFR model (bits 31:28) in bits 3:0.
    addressing: AtomicU64,
}

impl Mailbox {
    pub(super) fn new(host_apic: u32) -> Self {
        Self {
            edge: Default::default(),
            level: Default::default(),
            nmi: AtomicBool::new(false),
            init: AtomicBool::new(false),
            sipi: AtomicU32::new(0),
            host_apic,
            classes: Default::default(),
            done: AtomicBool::new(false),
            addressing: AtomicU64::new(1 << 32 | 0xf),
        }
    }

    /// Whether the vCPU with x2APIC/APIC ID `id` behind this mailbox is named by `dest` in
    /// `mode`. `wide` says the destination is a 32-bit x2APIC one (from a sender in x2APIC
    /// mode); otherwise it is 8 bits, as xAPIC senders and the I/O APIC give it, with 0xFF
    /// (physical) the broadcast (SDM Vol. 3A §11.6.2).
    fn accepts(&self, id: u32, dest: u32, mode: DestMode, wide: bool) -> bool {
        let a = self.addressing.load(Ordering::Acquire);
        let apic_mode = (a >> 32) & 3;
        if apic_mode == 0 {
            return false;
        }
        if wide || apic_mode == 2 {
            return lapic::destination_matches(id, dest, mode);
        }
        let dest8 = dest & 0xff;
        match mode {
            DestMode::Physical => dest8 == 0xff || dest8 == id,
            DestMode::Logical => {
                let ldr = ((a >> 24) & 0xff) as u32;
                if dest8 == 0xff {
                    true
                } else if a & 0xf == 0xf {
                    // Flat model: one bit per APIC.
                    ldr & dest8 != 0
                } else {
                    // Cluster model: cluster in the high nibble, members in the low one.
                    ldr >> 4 == dest8 >> 4 && ldr & dest8 & 0xf != 0
                }
            }
        }
    }

    fn post(&self, vector: u8, level: bool) {
        let (word, bit) = (usize::from(vector / 64), vector % 64);
        let set = if level { &self.level } else { &self.edge };
        set[word].fetch_or(1 << bit, Ordering::AcqRel);
    }

    /// Whether anything waits in the mailbox.
    pub fn has_work(&self) -> bool {
        self.edge
            .iter()
            .chain(&self.level)
            .any(|w| w.load(Ordering::Acquire) != 0)
            || self.nmi.load(Ordering::Acquire)
            || self.init.load(Ordering::Acquire)
            || self.sipi.load(Ordering::Acquire) != 0
    }

    /// Takes the pending INIT, if any.
    pub fn take_init(&self) -> bool {
        self.init.swap(false, Ordering::AcqRel)
    }

    /// Takes the pending STARTUP vector, if any.
    pub fn take_sipi(&self) -> Option<u8> {
        let v = self.sipi.swap(0, Ordering::AcqRel);
        (v != 0).then_some(v as u8)
    }

    /// Counts one exit of `class`.
    pub fn count(&self, class: Class) {
        self.classes.0[class as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the vCPU stopped.
    pub fn set_done(&self) {
        self.done.store(true, Ordering::Release);
    }

    /// Whether the vCPU stopped.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// What an interrupt message asks of its target vCPU.
#[derive(Clone, Copy, Debug)]
enum Signal {
    Fixed { vector: u8, level: bool },
    Nmi,
    Init,
    Startup(u8),
}

/// The modes of a local APIC (SDM Vol. 3A §11.12.5, Figure 11-27).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// EN clear: the APIC takes no interrupts.
    Disabled,
    /// xAPIC: registers in the MMIO page at IA32_APIC_BASE.
    XApic,
    /// x2APIC: registers are MSRs 0x800–0x8FF.
    X2Apic,
}

impl Local {
    /// IA32_APIC_BASE: the architectural base, EN and EXTD from the mode, BSP on vCPU 0.
    pub fn apic_base(&self) -> u64 {
        let bsp = if self.index == 0 { APIC_BASE_BSP } else { 0 };
        let mode = match self.mode {
            ApicMode::Disabled => 0,
            ApicMode::XApic => APIC_BASE_EN,
            ApicMode::X2Apic => APIC_BASE_EN | APIC_BASE_EXTD,
        };
        atoll_devices::acpi::LOCAL_APIC_BASE | mode | bsp
    }

    /// A write of IA32_APIC_BASE: the base stays architectural, BSP as it is, and only the
    /// transitions of SDM Vol. 3A §11.12.5 are allowed (xAPIC ↔ disabled, xAPIC → x2APIC,
    /// x2APIC → disabled). Disabling resets the APIC. `Err` changes nothing (#GP).
    fn set_apic_base(&mut self, value: u64) -> Result<(), ()> {
        let fixed =
            atoll_devices::acpi::LOCAL_APIC_BASE | if self.index == 0 { APIC_BASE_BSP } else { 0 };
        if value & !(APIC_BASE_EN | APIC_BASE_EXTD) != fixed {
            return Err(());
        }
        let new = match (value & APIC_BASE_EN != 0, value & APIC_BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(()),
        };
        match (self.mode, new) {
            (a, b) if a == b => {}
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(())
            }
            (_, ApicMode::Disabled) => {
                self.apic.reset();
                self.ldr = 0;
                self.dfr = u32::MAX;
            }
            _ => {}
        }
        self.mode = new;
        Ok(())
    }

    fn publish(&self, mailbox: &Mailbox) {
        let mode: u64 = match self.mode {
            ApicMode::Disabled => 0,
            ApicMode::XApic => 1,
            ApicMode::X2Apic => 2,
        };
        let v = (mode << 32) | u64::from(self.ldr & 0xff00_0000) | u64::from(self.dfr >> 28);
        mailbox.addressing.store(v, Ordering::Release);
    }
}

/// The x2APIC MSR behind xAPIC register `offset` (SDM Vol. 3A Table 11-6: MSR 0x800 +
/// offset / 16), for the registers both modes share.
fn xapic_msr(offset: u64) -> u32 {
    0x800 + (offset >> 4) as u32
}

/// xAPIC register offsets the adapter treats itself (SDM Vol. 3A Table 11-1).
mod xreg {
    pub const ID: u64 = 0x20;
    pub const APR: u64 = 0x90;
    pub const LDR: u64 = 0xd0;
    pub const DFR: u64 = 0xe0;
    pub const ESR: u64 = 0x280;
    pub const ICR_LOW: u64 = 0x300;
    pub const ICR_HIGH: u64 = 0x310;
}

/// ICR low bits a guest sets (vector, delivery mode, destination mode, level, trigger,
/// shorthand); delivery status and reserved bits are dropped.
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;

/// A 32-bit access to the xAPIC page at `offset`: a read returns the register, a write
/// returns 0. Registers the xAPIC lacks read as 0 and ignore writes.
pub(super) fn xapic_access(
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    offset: u64,
    write: Option<u32>,
) -> Result<u32, ()> {
    let now = host.now();
    let Some(value) = write else {
        return Ok(match offset {
            xreg::ID => (local.index as u32) << 24,
            xreg::APR => 0,
            xreg::LDR => local.ldr,
            xreg::DFR => local.dfr,
            xreg::ICR_LOW => local.apic.read(lapic::reg::ICR, now).unwrap_or(0) as u32,
            xreg::ICR_HIGH => local.icr_high,
            _ => local
                .apic
                .read(xapic_msr(offset), now)
                .map_or(0, |v| v as u32),
        });
    };
    match offset {
        xreg::ID | xreg::APR => {}
        xreg::LDR => {
            local.ldr = value & 0xff00_0000;
            local.publish(&shared.mailboxes[local.index]);
        }
        xreg::DFR => {
            local.dfr = value | 0x0fff_ffff;
            local.publish(&shared.mailboxes[local.index]);
        }
        xreg::ICR_HIGH => local.icr_high = value & 0xff00_0000,
        xreg::ICR_LOW => {
            let icr = (u64::from(local.icr_high >> 24) << 32) | u64::from(value & ICR_LOW_WRITABLE);
            apply_write(local, shared, host, lapic::reg::ICR, icr)?;
        }
        // Any write latches the errors (x2APIC insists on 0).
        xreg::ESR => apply_write(local, shared, host, lapic::reg::ESR, 0)?,
        _ => {
            let msr = xapic_msr(offset);
            // The SELF IPI register is x2APIC-only.
            if msr != lapic::reg::SELF_IPI && local.apic.read(msr, now).is_ok()
                || msr == lapic::reg::EOI
            {
                apply_write(local, shared, host, msr, value.into())?;
            }
        }
    }
    Ok(0)
}

/// A register write to the APIC model and what follows from it.
fn apply_write(
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    msr: u32,
    value: u64,
) -> Result<(), ()> {
    match local.apic.write(msr, value, host.now()) {
        Ok(ApicEffect::Ipi(ipi)) => shared.route_ipi(ipi, local, host),
        Ok(ApicEffect::Eoi { vector }) => {
            let out = shared.ioapic.lock().eoi(vector);
            for d in out.iter() {
                shared.deliver(d, Some(local), host);
            }
        }
        Ok(_) => {}
        Err(_) => return Err(()),
    }
    Ok(())
}

/// Moves what the mailbox holds into the vCPU's APIC and runs its timer.
pub(super) fn collect(local: &mut Local, shared: &Shared, now: u64) -> bool {
    let m = &shared.mailboxes[local.index];
    for (set, level) in [(&m.edge, false), (&m.level, true)] {
        for (w, word) in set.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                local.apic.accept((w as u32 * 64 + b) as u8, level);
            }
        }
    }
    local.apic.tick(now);
    m.nmi.load(Ordering::Acquire)
}

impl Shared {
    /// The vCPU a passed-through function's message (destination `dest` in `mode`, as the
    /// guest programmed it) reaches: the first whose APIC accepts it — one vCPU, as fixed and
    /// lowest-priority delivery of a device message reach one. `None` when none does (the
    /// entry then stays masked).
    pub fn vcpu_for(&self, dest: u32, mode: iommu::irte::DestMode) -> Option<usize> {
        let mode = match mode {
            iommu::irte::DestMode::Physical => DestMode::Physical,
            iommu::irte::DestMode::Logical => DestMode::Logical,
        };
        // A broadcast is no single vCPU.
        if mode == DestMode::Physical && dest & 0xff == 0xff {
            return None;
        }
        self.mailboxes
            .iter()
            .enumerate()
            .find(|(i, m)| m.accepts(*i as u32, dest, mode, dest > 0xff))
            .map(|(i, _)| i)
    }

    /// Sends an I/O APIC message to its destination vCPUs. `local` is the calling vCPU (its
    /// own APIC is written directly).
    pub(super) fn deliver(
        &self,
        d: Delivery,
        mut local: Option<&mut Local>,
        host: &mut impl PlatformHost,
    ) {
        let mut hit = false;
        for (i, m) in self.mailboxes.iter().enumerate() {
            if !m.accepts(i as u32, d.dest, d.dest_mode, d.dest > 0xff) {
                continue;
            }
            hit = true;
            let signal = match d.mode {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => Signal::Fixed {
                    vector: d.vector,
                    level: d.level_triggered,
                },
                DeliveryMode::Nmi => Signal::Nmi,
                DeliveryMode::Init => Signal::Init,
                // SMI and ExtINT have no receiver on this platform.
                DeliveryMode::Smi | DeliveryMode::ExtInt => continue,
            };
            self.signal(i, signal, local.as_deref_mut(), host);
            if d.mode == DeliveryMode::LowestPriority {
                break;
            }
        }
        if !hit {
            self.ipis_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Raises `signal` at vCPU `target`: into `local`'s own APIC when the target is the calling
    /// vCPU, otherwise into the target's mailbox followed by a kick of its core.
    fn signal(
        &self,
        target: usize,
        signal: Signal,
        local: Option<&mut Local>,
        host: &mut impl PlatformHost,
    ) {
        let m = &self.mailboxes[target];
        match (signal, local) {
            (Signal::Fixed { vector, level }, Some(l)) if l.index == target => {
                l.apic.accept(vector, level);
                return;
            }
            (Signal::Fixed { vector, level }, _) => m.post(vector, level),
            (Signal::Nmi, _) => m.nmi.store(true, Ordering::Release),
            (Signal::Init, _) => m.init.store(true, Ordering::Release),
            (Signal::Startup(v), _) => m.sipi.store(0x100 | u32::from(v), Ordering::Release),
        }
        host.kick(m.host_apic);
    }

    /// Sends IPI `ipi` from vCPU `local`.
    fn route_ipi(&self, ipi: Ipi, local: &mut Local, host: &mut impl PlatformHost) {
        if ipi.is_init_deassert() {
            return;
        }
        let sender = local.apic.apic_id();
        let wide = local.mode == ApicMode::X2Apic;
        let mut hit = false;
        for (i, m) in self.mailboxes.iter().enumerate() {
            let target = i as u32;
            let named = match ipi.shorthand {
                lapic::Shorthand::None => m.accepts(target, ipi.dest, ipi.dest_mode, wide),
                _ => ipi.targets(sender, target),
            };
            if !named {
                continue;
            }
            hit = true;
            let signal = match ipi.mode {
                IpiMode::Fixed(vector) => Signal::Fixed {
                    vector,
                    level: false,
                },
                IpiMode::Nmi => Signal::Nmi,
                IpiMode::Init => Signal::Init,
                IpiMode::Startup(v) => Signal::Startup(v),
                _ => continue,
            };
            self.signal(i, signal, Some(local), host);
        }
        // A destination that names no vCPU of this enclave (a physical id beyond its vCPUs, a
        // logical cluster it has no member in) reaches nobody: dropped, and counted.
        if !hit {
            self.ipis_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The x2APIC MSRs exist in x2APIC mode only; IA32_TSC_DEADLINE whenever the APIC is on.
fn msr_allowed(local: &Local, msr: u32) -> bool {
    match local.mode {
        ApicMode::X2Apic => true,
        ApicMode::XApic => msr == lapic::reg::TSC_DEADLINE,
        ApicMode::Disabled => false,
    }
}

pub(super) fn msr_read(
    vcpu: &mut impl Vcpu,
    local: &mut Local,
    host: &impl PlatformHost,
) -> Option<Action> {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = match index {
        crate::run::exits::msr::IA32_APIC_BASE => local.apic_base(),
        IA32_BIOS_SIGN_ID | IA32_TSC_ADJUST => 0,
        m if lapic::is_apic_msr(m) && msr_allowed(local, m) => {
            match local.apic.read(m, host.now()) {
                // The deadline is kept in the core's TSC; the guest's TSC has its offset.
                Ok(v) if m == lapic::reg::TSC_DEADLINE => {
                    crate::run::deny::host_tsc_to_guest(v, vcpu.tsc_offset())
                }
                Ok(v) => v,
                Err(_) => return gp(vcpu),
            }
        }
        m if lapic::is_apic_msr(m) => return gp(vcpu),
        _ => return None,
    };
    vcpu.set_gpr(Gpr::Rax, value & 0xffff_ffff);
    vcpu.set_gpr(Gpr::Rdx, value >> 32);
    vcpu.skip_instruction();
    Some(Action::Resume)
}

pub(super) fn msr_write(
    vcpu: &mut impl Vcpu,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
) -> Option<Action> {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = (vcpu.gpr(Gpr::Rdx) << 32) | (vcpu.gpr(Gpr::Rax) & 0xffff_ffff);
    match index {
        crate::run::exits::msr::IA32_APIC_BASE => {
            if local.set_apic_base(value).is_err() {
                return gp(vcpu);
            }
            local.publish(&shared.mailboxes[local.index]);
        }
        IA32_BIOS_SIGN_ID => {}
        // The TSC is the host's: it cannot be adjusted, only confirmed unadjusted.
        IA32_TSC_ADJUST if value == 0 => {}
        IA32_TSC_ADJUST => return gp(vcpu),
        m if lapic::is_apic_msr(m) => {
            let value = if m == lapic::reg::TSC_DEADLINE {
                crate::run::deny::guest_tsc_to_host(value, vcpu.tsc_offset())
            } else {
                value
            };
            if !msr_allowed(local, m) || apply_write(local, shared, host, m, value).is_err() {
                return gp(vcpu);
            }
        }
        _ => return None,
    }
    vcpu.skip_instruction();
    Some(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::run::vplat::testkit::*;

    #[test]
    fn apic_base_modes_follow_the_sdm() {
        let s = Shared::new("l", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l0 = Local::new(0, s.tsc_hz);
        let l1 = Local::new(1, s.tsc_hz);
        // Firmware hands over xAPIC mode; BSP on vCPU 0 only.
        assert_eq!(l0.apic_base(), 0xfee0_0900);
        assert_eq!(l1.apic_base(), 0xfee0_0800);
        let mut v = vcpu();
        v.gprs[Gpr::Rcx as usize] = 0x1b;
        assert_eq!(msr_read(&mut v, &mut l0, &h), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xfee0_0900);
        // x2APIC registers do not exist in xAPIC mode.
        v.gprs[Gpr::Rcx as usize] = u64::from(lapic::reg::ID);
        msr_read(&mut v, &mut l0, &h);
        assert_eq!(v.injected, Some((vector::GP, Some(0))));
        // Moving the base or dropping the BSP bit is refused and changes nothing.
        for bad in [0xfed0_0900u64, 0xfee0_0800, 0xfee0_0500] {
            v.injected = None;
            wrmsr(&mut v, 0x1b, bad);
            msr_write(&mut v, &mut l0, &s, &mut h);
            assert_eq!(v.injected, Some((vector::GP, Some(0))), "{bad:#x}");
            assert_eq!(l0.apic_base(), 0xfee0_0900);
        }
        // xAPIC → x2APIC, then x2APIC → xAPIC is refused, x2APIC → disabled → xAPIC allowed.
        wrmsr(&mut v, 0x1b, 0xfee0_0d00);
        v.injected = None;
        msr_write(&mut v, &mut l0, &s, &mut h);
        assert_eq!(v.injected, None);
        assert_eq!(l0.mode, ApicMode::X2Apic);
        v.gprs[Gpr::Rcx as usize] = u64::from(lapic::reg::ID);
        msr_read(&mut v, &mut l0, &h);
        assert_eq!(v.injected, None);
        wrmsr(&mut v, 0x1b, 0xfee0_0900);
        msr_write(&mut v, &mut l0, &s, &mut h);
        assert_eq!(v.injected, Some((vector::GP, Some(0))));
        assert_eq!(l0.mode, ApicMode::X2Apic);
        v.injected = None;
        wrmsr(&mut v, 0x1b, 0xfee0_0100);
        msr_write(&mut v, &mut l0, &s, &mut h);
        assert_eq!(l0.mode, ApicMode::Disabled);
        wrmsr(&mut v, 0x1b, 0xfee0_0900);
        msr_write(&mut v, &mut l0, &s, &mut h);
        assert_eq!((l0.mode, v.injected), (ApicMode::XApic, None));
        // Other MSRs are not the platform's.
        v.gprs[Gpr::Rcx as usize] = 0x1a0;
        assert_eq!(msr_read(&mut v, &mut l0, &h), None);
    }

    #[test]
    fn xapic_page_reaches_the_model_and_routes_ipis() {
        let s = Shared::new("l", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l0 = Local::new(0, s.tsc_hz);
        let mut l1 = Local::new(1, s.tsc_hz);
        let mut v1 = vcpu();
        let x = |l: &mut Local, h: &mut FakeHost, off, w| xapic_access(l, &s, h, off, w);
        assert_eq!(x(&mut l1, &mut h, xreg::ID, None), Ok(1 << 24));
        assert_eq!(x(&mut l0, &mut h, 0x30, None), Ok(lapic::VERSION));
        // SVR on both.
        x(&mut l0, &mut h, 0xf0, Some(0x1ff)).unwrap();
        x(&mut l1, &mut h, 0xf0, Some(0x1ff)).unwrap();
        assert_eq!(x(&mut l1, &mut h, 0xf0, None), Ok(0x1ff));
        // Flat logical mode: vCPU 1 is bit 1.
        x(&mut l1, &mut h, xreg::DFR, Some(0xffff_ffff)).unwrap();
        x(&mut l1, &mut h, xreg::LDR, Some(0x0200_0000)).unwrap();
        assert_eq!(x(&mut l1, &mut h, xreg::LDR, None), Ok(0x0200_0000));
        // vCPU 0 sends vector 0x41 logically to mask 0x02: high half, then low half sends.
        x(&mut l0, &mut h, xreg::ICR_HIGH, Some(0x0200_0000)).unwrap();
        x(&mut l0, &mut h, xreg::ICR_LOW, Some(0x0000_0841)).unwrap();
        assert_eq!(h.kicks, [5]);
        before_entry(
            &mut v1,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l1,
            &s,
            &mut h,
        );
        assert_eq!(v1.injected_irqs, [0x41]);
        // Physical to id 1 too; and to id 9 nobody (dropped).
        x(&mut l0, &mut h, xreg::ICR_HIGH, Some(0x0100_0000)).unwrap();
        x(&mut l0, &mut h, xreg::ICR_LOW, Some(0x42)).unwrap();
        x(&mut l0, &mut h, xreg::ICR_HIGH, Some(0x0900_0000)).unwrap();
        x(&mut l0, &mut h, xreg::ICR_LOW, Some(0x43)).unwrap();
        assert_eq!(s.ipis_dropped.load(Ordering::Relaxed), 1);
        // EOI through the page.
        x(&mut l1, &mut h, 0xb0, Some(0)).unwrap();
        v1.window_open = true;
        before_entry(
            &mut v1,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l1,
            &s,
            &mut h,
        );
        assert_eq!(v1.injected_irqs, [0x41, 0x42]);
        // TSC-deadline through the LVT in the page and the MSR, which exists in xAPIC mode.
        x(&mut l1, &mut h, 0x320, Some((0b10 << 17) | 0xec)).unwrap();
        wrmsr(&mut v1, lapic::reg::TSC_DEADLINE, 777);
        assert_eq!(
            msr_write(&mut v1, &mut l1, &s, &mut h),
            Some(Action::Resume)
        );
        assert_eq!(l1.apic.next_deadline(), Some(777));
        // Unknown offsets read 0 and ignore writes.
        assert_eq!(x(&mut l1, &mut h, 0x3f0, Some(0x30)), Ok(0));
        assert_eq!(x(&mut l1, &mut h, 0xfe0, None), Ok(0));
    }

    #[test]
    fn fixed_ipi_reaches_the_other_vcpu_and_is_injected_there() {
        let s = Shared::new("l", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l0 = Local::new(0, s.tsc_hz);
        let mut l1 = Local::new(1, s.tsc_hz);
        let (mut v0, mut v1) = (vcpu(), vcpu());
        enable_apic(&mut v0, &mut l0, &s, &mut h);
        enable_apic(&mut v1, &mut l1, &s, &mut h);
        // vCPU 0 sends vector 0xfd to x2APIC id 1, physical, fixed.
        wrmsr(&mut v0, lapic::reg::ICR, (1u64 << 32) | 0xfd);
        assert_eq!(
            msr_write(&mut v0, &mut l0, &s, &mut h),
            Some(Action::Resume)
        );
        assert_eq!(h.kicks, [5]);
        assert_eq!(
            before_entry(
                &mut v1,
                &mut atoll_vcpu::SliceMemory(&mut []),
                &mut l1,
                &s,
                &mut h
            ),
            Entry::Go
        );
        assert_eq!(v1.injected_irqs, [0xfd]);
        // Nothing for vCPU 0.
        before_entry(
            &mut v0,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l0,
            &s,
            &mut h,
        );
        assert!(v0.injected_irqs.is_empty());
        // An IPI to id 7 names nobody in this enclave: dropped and counted, nobody kicked.
        h.kicks.clear();
        wrmsr(&mut v0, lapic::reg::ICR, (7u64 << 32) | 0xfd);
        msr_write(&mut v0, &mut l0, &s, &mut h);
        assert!(h.kicks.is_empty());
        assert_eq!(s.ipis_dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn init_and_startup_are_posted() {
        let s = Shared::new("l", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l0 = Local::new(0, s.tsc_hz);
        let mut v0 = vcpu();
        enable_apic(&mut v0, &mut l0, &s, &mut h);
        // INIT assert, INIT de-assert (ignored), STARTUP 0x9a to id 1.
        wrmsr(&mut v0, lapic::reg::ICR, (1u64 << 32) | 0x4500);
        msr_write(&mut v0, &mut l0, &s, &mut h);
        wrmsr(&mut v0, lapic::reg::ICR, (1u64 << 32) | 0x8500);
        msr_write(&mut v0, &mut l0, &s, &mut h);
        wrmsr(&mut v0, lapic::reg::ICR, (1u64 << 32) | 0x4600 | 0x9a);
        msr_write(&mut v0, &mut l0, &s, &mut h);
        assert!(s.mailboxes[1].take_init());
        assert!(!s.mailboxes[1].take_init());
        assert_eq!(s.mailboxes[1].take_sipi(), Some(0x9a));
        assert_eq!(s.mailboxes[1].take_sipi(), None);
        assert!(!s.mailboxes[0].has_work());
    }

    #[test]
    fn tsc_deadline_follows_the_guest_tsc_offset() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        enable_apic(&mut v, &mut l, &s, &mut h);
        // The guest wrote its TSC 1000 ahead of the core's.
        v.tsc_offset = 1000;
        wrmsr(&mut v, lapic::reg::LVT_TIMER, (0b10 << 17) | 0xec);
        msr_write(&mut v, &mut l, &s, &mut h);
        wrmsr(&mut v, lapic::reg::TSC_DEADLINE, 6000);
        msr_write(&mut v, &mut l, &s, &mut h);
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(h.armed, Some(5000), "armed in the core's TSC");
        v.gprs[Gpr::Rax as usize] = 0;
        msr_read(&mut v, &mut l, &h);
        assert_eq!(v.gprs[Gpr::Rax as usize], 6000, "read back in the guest's");
    }

    #[test]
    fn vcpu_mailboxes_share_no_line() {
        let s = Shared::new("m", &[1, 2], 1_000_000);
        let line = |p: *const u8| p as usize / 64;
        let (a, b) = (&s.mailboxes[0], &s.mailboxes[1]);
        let classes = |m: &Mailbox| line((&m.classes as *const ClassCounts).cast());
        let edge = |m: &Mailbox| line((&m.edge as *const [AtomicU64; 4]).cast());
        // A vCPU's per-exit counts are on a line no sender writes, and no two vCPUs share one.
        assert_ne!(classes(a), edge(a));
        assert_ne!(classes(a), edge(b));
        assert_ne!(edge(a), edge(b));
        assert_ne!(classes(a), classes(b));
        a.count(Class::Timer);
        assert_eq!(
            a.classes.0[Class::Timer as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(
            b.classes.0[Class::Timer as usize].load(Ordering::Relaxed),
            0
        );
    }
}
