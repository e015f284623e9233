//! The host's writes to its local APIC that exit: the xAPIC page (mapped read-only, so every
//! write comes here) and the x2APIC ICR. IPIs go through [`host_ipi::decide`]; everything else
//! reaches the core's own APIC, which the host owns.

use super::{bump, rate_limited, HostAction, HostHw, HostShared, HostVcpu};
use crate::run::host_ipi::{self, Action, Deliver, DeliveryMode, DropReason, Icr};
use atoll_devices::lapic::{DestMode, Shorthand};

/// xAPIC register offsets (SDM Vol. 3A §11.4.1, Table 11-1).
pub(super) const APIC_ID: u32 = 0x20;
pub(super) const APIC_LDR: u32 = 0xd0;
pub(super) const APIC_DFR: u32 = 0xe0;
pub(super) const APIC_ICR_LOW: u32 = 0x300;
pub(super) const APIC_ICR_HIGH: u32 = 0x310;

/// A 32-bit write of `value` to xAPIC register `offset` (16-byte aligned, checked by the
/// caller).
///
/// * ICR low sends: [`send`] with the ICR high shadow.
/// * ICR high: kept as the shadow and written to the core (whose own ICR high atoll rewrites
///   whenever it sends).
/// * LDR and DFR: written to the core, and recorded in the host's core table, which logical
///   destinations are resolved against.
/// * The APIC ID register (writable on some processors): dropped — atoll addresses this core
///   by the id it found at boot.
/// * Anything else (TPR, EOI, SVR, LVTs, timer, ESR): the core's own register.
pub(super) fn xapic_write(
    offset: u32,
    value: u32,
    me: &mut HostVcpu,
    shared: &HostShared,
    hw: &impl HostHw,
) -> HostAction {
    match offset {
        APIC_ICR_LOW => return send(Icr::from_xapic(value, me.icr_high), me, shared, hw),
        APIC_ICR_HIGH => {
            me.icr_high = value;
            hw.apic_write(offset, value);
        }
        APIC_LDR | APIC_DFR => {
            if offset == APIC_LDR {
                me.ldr = value;
            } else {
                me.dfr = value;
            }
            shared
                .cores
                .lock()
                .set_xapic_logical(me.apic_id, me.ldr, me.dfr);
            hw.apic_write(offset, value);
        }
        APIC_ID => log::info!("host: vCPU {} wrote APIC ID {value:#x}: dropped", me.index),
        _ => hw.apic_write(offset, value),
    }
    HostAction::Resume
}

/// The physical-destination IPI atoll sends for one target.
fn one(icr: &Icr, what: Deliver, apic_id: u32) -> Icr {
    let (mode, vector) = match what {
        Deliver::Fixed(v) => (DeliveryMode::Fixed, v),
        Deliver::Nmi => (DeliveryMode::Nmi, 0),
    };
    Icr {
        vector,
        mode,
        dest_mode: DestMode::Physical,
        level: true,
        level_triggered: false,
        shorthand: Shorthand::None,
        dest: apic_id,
        format: icr.format,
    }
}

/// An ICR write by host vCPU `me`: decided by [`host_ipi::decide`]. Allowed interrupts and
/// NMIs go out one physical IPI per target; INIT and STARTUP for host cores are recorded in
/// the targets' mailboxes and returned as a signal; dropped targets are counted (and logged,
/// rate-limited).
pub(super) fn send(icr: Icr, me: &HostVcpu, shared: &HostShared, hw: &impl HostHw) -> HostAction {
    let cores = shared.cores.lock();
    let d = host_ipi::decide(icr, me.apic_id, &cores);
    let mut dropped = u64::from(d.outside);
    let action = match d.action {
        Action::Send { what, to } => {
            for id in cores.apic_ids(&to) {
                hw.send_ipi(one(&icr, what, id));
                bump(&shared.counters.ipis_sent);
            }
            HostAction::Resume
        }
        Action::EmulateInit { to } => {
            for i in to.iter() {
                shared.post_init(i);
            }
            signal(to)
        }
        Action::EmulateSipi { vector, to } => {
            for i in to.iter() {
                shared.post_sipi(i, vector);
            }
            signal(to)
        }
        // A no-op on every processor atoll supports: not a drop.
        Action::Drop(DropReason::InitDeassert) => HostAction::Resume,
        Action::Drop(reason) => {
            // The whole IPI was refused: at least one delivery did not happen.
            dropped = dropped.max(1);
            log_drop(shared, me, &icr, reason, dropped);
            return HostAction::Resume;
        }
    };
    if dropped > 0 {
        log_drop(shared, me, &icr, DropReason::OutsideHost, dropped);
    }
    action
}

fn signal(to: host_ipi::CoreSet) -> HostAction {
    let mut it = to.iter();
    match (it.next(), it.next()) {
        (Some(index), None) => HostAction::Signal { index },
        (None, _) => HostAction::Resume,
        _ => HostAction::SignalMany { to },
    }
}

fn log_drop(shared: &HostShared, me: &HostVcpu, icr: &Icr, reason: DropReason, n: u64) {
    let before = shared
        .counters
        .ipis_dropped
        .fetch_add(n, core::sync::atomic::Ordering::Relaxed);
    // Logged when the running count crosses a rate-limit point.
    let logged = (before + 1..=before + n).any(rate_limited);
    if logged {
        log::info!(
            "host: vCPU {} IPI {:?} to {:#x} dropped ({reason:?}; {} dropped so far)",
            me.index,
            icr.mode,
            icr.dest,
            before + n
        );
    }
}
