//! The host's nested-page faults. The host's tables map everything 1:1 except three kinds of
//! address, and a fault names which:
//!
//! * **The xAPIC page** (mapped read-only): a write is decoded and goes to
//!   [`super::apic::xapic_write`]; a read (only if the backend maps the page not-present) reads
//!   the core's register.
//! * **Refused memory** (atoll's own and the enclave pool, [`HostShared::excluded`]): the access
//!   never reaches it. A load gives all ones in its destination (the access's width, extended
//!   as the instruction extends), a store is dropped; both are counted and logged (rate-limited)
//!   and the instruction completes, so a stray access — a driver probing, `/dev/mem` — costs
//!   the host nothing but wrong data, as a read of a hole would on bare metal.
//! * **Neither** (an address the backend's tables leave unmapped: above the mapped physical
//!   range, or a hole): treated the same way, counted apart (`unmapped_*`). On bare metal an
//!   access no device claims completes with all ones (a master abort) rather than faulting,
//!   so this is what the host's drivers are written for; injecting #GP would turn a probe of
//!   an absent device into a kernel oops. A write there is first shown to the reset detector,
//!   which recognises a memory-space ACPI reset or sleep register the backend left unmapped.
//!
//! Only MOV-family accesses decode ([`decode::decode_mmio`]); anything else (string moves, SSE,
//! locked read-modify-writes), an instruction that cannot be fetched, a fetch from such an
//! address, and a fault during the host's own page walk (the reported linear address does not
//! translate to the faulting page) inject #GP(0) and are counted in `undecodable`: atoll never
//! completes an access it did not decode.

use super::{apic, bump, gp, rate_limited, HostAction, HostHw, HostShared, HostVcpu};
use crate::run::exits::Console;
use crate::run::host_reset::{HostAccess, HostEvent};
use atoll_vcpu::decode::{self, MmioAccess, MmioOperand};
use atoll_vcpu::{Access, GuestMemory, Vcpu};
use boot::{GuestPhysAddr, HostPhysAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Apic,
    /// The control device's registers (BAR0).
    ControlRegisters(u8),
    /// The control function's ECAM page.
    ControlConfig,
    /// A physical I/O APIC's page (trapped under interrupt remapping).
    IoApic,
    /// The ECAM page of a function whose MSI capability is trapped.
    TrappedConfig,
    /// A page of a trapped MSI-X table.
    MsixTable,
    Excluded,
    Unmapped,
}

/// The value of a load's destination after it: `value` (already `access.size` bytes) into
/// the register as MOV/MOVZX write it.
fn complete_load(vcpu: &mut impl Vcpu, access: &MmioAccess, value: u64) -> bool {
    let MmioOperand::Register { gpr, high_byte } = access.operand else {
        return false;
    };
    let old = vcpu.gpr(gpr);
    let new = if high_byte {
        (old & !0xff00) | ((value & 0xff) << 8)
    } else {
        match access.dest_size {
            1 => (old & !0xff) | (value & 0xff),
            2 => (old & !0xffff) | (value & 0xffff),
            // A 32-bit destination zeroes the upper half; a 64-bit one takes the value.
            _ => value,
        }
    };
    vcpu.set_gpr(gpr, new);
    true
}

/// The bytes a store writes (its width).
fn store_value(vcpu: &impl Vcpu, access: &MmioAccess) -> u64 {
    let v = match access.operand {
        MmioOperand::Immediate(v) => v,
        MmioOperand::Register { gpr, high_byte } => {
            let v = vcpu.gpr(gpr);
            if high_byte {
                v >> 8
            } else {
                v
            }
        }
    };
    v & width_mask(access.size)
}

fn width_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

fn refuse(vcpu: &mut impl Vcpu, shared: &HostShared, why: &str, gpa: u64) -> HostAction {
    let n = bump(&shared.counters.undecodable);
    if rate_limited(n) {
        log::info!(
            "host: {why} at guest-physical {gpa:#x}, RIP {:#x}: #GP ({n} so far)",
            vcpu.rip()
        );
    }
    gp(vcpu)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn nested_page_fault(
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    me: &mut HostVcpu,
    shared: &HostShared,
    hw: &impl HostHw,
    console: &mut impl Console,
    gpa: GuestPhysAddr,
    fault: Access,
    linear: Option<u64>,
) -> HostAction {
    let g = gpa.as_u64();
    // In x2APIC mode the page is no longer the APIC's (SDM Vol. 3A §11.12.1: MMIO accesses
    // then do not reach it), so it is answered like any address nothing maps.
    let region = if g & !0xfff == shared.apic_page().as_u64() && !me.x2apic {
        Region::Apic
    } else if let Some(f) = shared.control_registers_of(g) {
        Region::ControlRegisters(f)
    } else if shared.is_control_config(g) {
        Region::ControlConfig
    } else if shared.is_ioapic(g) {
        Region::IoApic
    } else if shared.is_trapped_config(g) {
        Region::TrappedConfig
    } else if shared.is_msix_page(g) {
        Region::MsixTable
    } else if shared.is_excluded(g) {
        Region::Excluded
    } else {
        Region::Unmapped
    };
    if fault.fetch {
        return refuse(vcpu, shared, "instruction fetch from an unmapped page", g);
    }
    let rip = vcpu.rip();
    let (paging, bits, linear_rip) = decode::site_of(vcpu);
    let (bytes, n) = decode::fetch(mem, paging, linear_rip);
    let Some(access) = decode::decode_mmio(&bytes[..n], bits) else {
        return refuse(vcpu, shared, "an access atoll does not decode", g);
    };
    // The fault must be the instruction's own operand, not a paging-structure access of the
    // host's walk (whose tables the host may not place in refused memory either).
    if let Some(l) = linear {
        let page = decode::translate(mem, paging, l).map(|p| p.as_u64() & !0xfff);
        if page != Some(g & !0xfff) {
            return refuse(vcpu, shared, "a page walk through an unmapped page", g);
        }
    }
    let action = match (region, access.write) {
        (Region::Apic, true) => {
            let offset = (g & 0xfff) as u32;
            // Registers are 32 bits wide on 16-byte boundaries; other accesses are dropped
            // (SDM Vol. 3A §11.4.1: their effect is undefined).
            if access.size == 4 && offset & 0xf == 0 {
                apic::xapic_write(offset, store_value(vcpu, &access) as u32, me, shared, hw)
            } else {
                HostAction::Resume
            }
        }
        (Region::Apic, false) => {
            let offset = (g & 0xfff) as u32;
            let value = if access.size == 4 && offset & 0xf == 0 {
                u64::from(hw.apic_read(offset))
            } else {
                width_mask(access.size)
            };
            if !complete_load(vcpu, &access, value) {
                return refuse(vcpu, shared, "a load without a register", g);
            }
            HostAction::Resume
        }
        (Region::IoApic | Region::TrappedConfig | Region::MsixTable, write) => {
            let access_fn = |g: u64, size: u8, w: Option<u64>| match region {
                Region::IoApic => super::irq::ioapic_access(shared, hw, g, size, w),
                Region::TrappedConfig => super::irq::ecam_access(shared, hw, g, size, w),
                _ => super::irq::msix_access(shared, hw, g, size, w),
            };
            match write {
                true => {
                    access_fn(g, access.size, Some(store_value(vcpu, &access)));
                }
                false => {
                    let v = access_fn(g, access.size, None) & width_mask(access.size);
                    if !complete_load(vcpu, &access, v) {
                        return refuse(vcpu, shared, "a load without a register", g);
                    }
                }
            }
            HostAction::Resume
        }
        (Region::ControlRegisters(_) | Region::ControlConfig, write) => {
            let access_fn = |g, size, value| match region {
                Region::ControlRegisters(f) => {
                    super::control::register_access(shared, hw, f, g, size, value)
                }
                _ => super::control::ecam_access(shared, hw, g, size, value),
            };
            if write {
                access_fn(g, access.size, Some(store_value(vcpu, &access)));
            } else {
                let v = access_fn(g, access.size, None) & width_mask(access.size);
                if !complete_load(vcpu, &access, v) {
                    return refuse(vcpu, shared, "a load without a register", g);
                }
            }
            HostAction::Resume
        }
        (_, write) => {
            let (reads, writes) = if region == Region::Excluded {
                (
                    &shared.counters.refused_reads,
                    &shared.counters.refused_writes,
                )
            } else {
                (
                    &shared.counters.unmapped_reads,
                    &shared.counters.unmapped_writes,
                )
            };
            let value = write.then(|| store_value(vcpu, &access));
            if let (Some(value), Region::Unmapped) = (value, region) {
                match shared.classify(HostAccess::MmioWrite {
                    address: HostPhysAddr::new(g),
                    size: access.size,
                    value,
                }) {
                    Some(HostEvent::Reset { source }) => {
                        shared.flush_console(console);
                        return HostAction::Reset(source);
                    }
                    Some(HostEvent::PowerOff) => {
                        shared.flush_console(console);
                        return HostAction::PowerOff;
                    }
                    None => {}
                }
            }
            if !write && !complete_load(vcpu, &access, width_mask(access.size)) {
                return refuse(vcpu, shared, "a load without a register", g);
            }
            let n = bump(if write { writes } else { reads });
            if rate_limited(n) {
                let what = if region == Region::Excluded {
                    "memory the host does not own"
                } else {
                    "an unmapped address"
                };
                match value {
                    Some(v) => log::info!(
                        "host: {}-byte write of {v:#x} to {what} {g:#x} at RIP {rip:#x} dropped \
                         ({n} so far)",
                        access.size
                    ),
                    None => log::info!(
                        "host: {}-byte read of {what} {g:#x} at RIP {rip:#x} gave all ones \
                         ({n} so far)",
                        access.size
                    ),
                }
            }
            HostAction::Resume
        }
    };
    vcpu.set_rip(rip.wrapping_add(u64::from(access.len)));
    action
}
