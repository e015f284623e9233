//! The host's intercepted ports. Every other port reaches the hardware without an exit; the
//! backend builds its I/O bitmap from [`intercepted_ports`], the same list this module
//! handles:
//!
//! * **COM1** (0x3F8–0x3FF): atoll's own console port. The host gets atoll's 16550 model
//!   ([`atoll_devices::uart`]); its lines are printed as `[host] ...`, its input comes from
//!   [`HostShared::push_input`], and its interrupt level from [`HostShared::uart_irq_pending`].
//! * **The reset and power ports** [`ResetDetector`](crate::run::host_reset::ResetDetector)
//!   watches: 0xCF9, the keyboard controller's command port 0x64, and — when the FADT puts them
//!   in I/O space — the ACPI reset register, PM1a/PM1b control and the hardware-reduced sleep
//!   control register. A write the detector calls a reset or S5 ends the host
//!   ([`HostAction::Reset`], [`HostAction::PowerOff`]); any other write reaches the hardware,
//!   except:
//!   * a byte write to 0xCF9: the detector keeps the SYS_RST/FULL_RST latch and byte reads of
//!     0xCF9 come from it, so the chipset's latch (which decides what kind of reset atoll's own
//!     reset would be) never changes;
//!   * a sleep request (SLP_EN with another sleep type): suspending would stop every partition's
//!     cores, so SLP_EN is cleared before the rest of the write goes on, and the refusal
//!     counted (`sleeps_refused`);
//!   * an access that covers 0xCF9 or a COM1 port without starting at it (a word at 0xCF8):
//!     the chipset might decode its 0xCF9 byte as a reset; it is dropped (reads all ones).
//!     The dword at 0xCF8 is PCI CONFIG_ADDRESS and goes on (the I/O bitmap makes it exit,
//!     since it covers 0xCF9).
//!
//! String I/O (INS/OUTS) on these ports is refused with #GP(0): Linux uses neither for COM1 or
//! the power registers, and emulating it for the host would need its memory operands walked
//! for a case that does not occur.

use super::{bump, rate_limited, HostAction, HostHw, HostShared, CONSOLE_NAME};
use crate::run::exits::Console;
use crate::run::host_reset::{
    AddressSpace, HostAccess, HostEvent, HostPlatform, Register, SleepControl, KBC_COMMAND_PORT,
    RESET_CONTROL_PORT,
};
use atoll_vcpu::{Gpr, Vcpu};
use core::ops::RangeInclusive;

/// COM1's first port.
pub const COM1: u16 = 0x3f8;
/// COM1's ports.
const COM1_PORTS: RangeInclusive<u16> = COM1..=COM1 + 7;
/// COM1, 0xCF9, 0x64, the reset register, PM1a, PM1b, the sleep control register.
pub(super) const MAX_PORT_RANGES: usize = 7;
/// PM1 control: SLP_EN (ACPI 6.5 §4.8.3.2.1, Table 4.16).
const PM1_SLP_EN: u32 = 1 << 13;

/// The ports of `r`, when it is in I/O space.
fn io_range(r: &Register) -> Option<(u16, u16)> {
    if r.space != AddressSpace::SystemIo {
        return None;
    }
    let first = u16::try_from(r.address).ok()?;
    let last = first.checked_add(u16::from(r.width.max(1)) - 1)?;
    Some((first, last))
}

/// The sleep registers of `platform` in I/O space, with their SLP_EN bit.
fn sleep_registers(platform: &HostPlatform) -> [Option<(Register, u32)>; 2] {
    match platform.sleep {
        Some(SleepControl::Pm1 { a, b, .. }) => [Some((a, PM1_SLP_EN)), b.map(|b| (b, PM1_SLP_EN))],
        Some(SleepControl::HardwareReduced { register, .. }) => [
            Some((register, u32::from(atoll_devices::acpi::SLP_EN))),
            None,
        ],
        None => [None, None],
    }
}

pub(super) fn port_ranges(platform: &HostPlatform) -> [Option<(u16, u16)>; MAX_PORT_RANGES] {
    let [s0, s1] = sleep_registers(platform);
    [
        Some((*COM1_PORTS.start(), *COM1_PORTS.end())),
        Some((RESET_CONTROL_PORT, RESET_CONTROL_PORT)),
        Some((KBC_COMMAND_PORT, KBC_COMMAND_PORT)),
        platform
            .reset_register
            .filter(|_| platform.reset_supported)
            .and_then(|r| io_range(&r.register)),
        s0.and_then(|(r, _)| io_range(&r)),
        s1.and_then(|(r, _)| io_range(&r)),
        None,
    ]
}

/// The ports the backend intercepts for the host (possibly overlapping); every other port is
/// passed through.
pub fn intercepted_ports(shared: &HostShared) -> impl Iterator<Item = RangeInclusive<u16>> + '_ {
    shared
        .ports
        .iter()
        .flatten()
        .map(|&(first, last)| first..=last)
}

fn covers(port: u16, size: u8, target: u16) -> bool {
    let end = u32::from(port) + u32::from(size);
    u32::from(port) <= u32::from(target) && u32::from(target) < end
}

/// Puts the result of an IN of `size` bytes into AL/AX/EAX.
fn set_in(vcpu: &mut impl Vcpu, size: u8, value: u32) {
    crate::run::exits::set_io_result(vcpu, size, value);
}

#[allow(clippy::too_many_arguments)]
pub(super) fn io_exit(
    vcpu: &mut impl Vcpu,
    shared: &HostShared,
    hw: &impl HostHw,
    console: &mut impl Console,
    port: u16,
    size: u8,
    write: bool,
    string: bool,
) -> HostAction {
    let n = bump(&shared.counters.io_events);
    if string {
        let u = bump(&shared.counters.undecodable);
        if rate_limited(u) {
            log::info!(
                "host: string I/O on intercepted port {port:#x} at RIP {:#x}: #GP",
                vcpu.rip()
            );
        }
        return super::gp(vcpu);
    }
    let size = if matches!(size, 1 | 2 | 4) { size } else { 1 };
    // Only the bytes the instruction writes (AL, AX or EAX).
    let rax = vcpu.gpr(Gpr::Rax) as u32;
    let value = match size {
        1 => rax & 0xff,
        2 => rax & 0xffff,
        _ => rax,
    };
    if COM1_PORTS.contains(&port) {
        let offset = port - COM1;
        let mut u = shared.uart.lock();
        if write {
            if let Some(line) = u.write(offset, value as u8) {
                console.line(CONSOLE_NAME, line);
            }
        } else {
            set_in(vcpu, size, u.read(offset).into());
        }
        drop(u);
        vcpu.skip_instruction();
        return HostAction::Resume;
    }
    let straddles = (covers(port, size, COM1) && port != COM1)
        || (covers(port, size, RESET_CONTROL_PORT)
            && port != RESET_CONTROL_PORT
            && !(port == RESET_CONTROL_PORT - 1 && size == 4));
    if straddles {
        if rate_limited(n) {
            log::info!("host: {size}-byte access at port {port:#x} over an emulated port dropped");
        }
        if !write {
            set_in(vcpu, size, u32::MAX);
        }
        vcpu.skip_instruction();
        return HostAction::Resume;
    }
    if !write {
        let v = if port == RESET_CONTROL_PORT && size == 1 {
            shared.reset.lock().cf9_read().into()
        } else {
            hw.port_in(port, size)
        };
        set_in(vcpu, size, v);
        vcpu.skip_instruction();
        return HostAction::Resume;
    }
    match shared.classify(HostAccess::PortWrite { port, size, value }) {
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
    if port == RESET_CONTROL_PORT && size == 1 {
        // Latched by the detector only.
        vcpu.skip_instruction();
        return HostAction::Resume;
    }
    let mut value = value;
    let platform = *shared.reset.lock().platform();
    for (reg, slp_en) in sleep_registers(&platform).into_iter().flatten() {
        let Some((first, _)) = io_range(&reg) else {
            continue;
        };
        if port == first && value & slp_en != 0 {
            value &= !slp_en;
            let r = bump(&shared.counters.sleeps_refused);
            if rate_limited(r) {
                log::info!("host: sleep request at port {port:#x} refused (SLP_EN cleared)");
            }
        }
    }
    hw.port_out(port, size, value);
    vcpu.skip_instruction();
    HostAction::Resume
}
