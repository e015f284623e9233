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
//!   * an access that covers one of these registers without being exactly it (a word over
//!     0xCF9 or 0x64, one byte of PM1 control, an access starting before COM1): the chipset
//!     could decode the register's byte in it, so it is dropped (reads all ones). The dword
//!     at 0xCF8 is PCI CONFIG_ADDRESS and goes on (the I/O bitmap makes it exit, since it
//!     covers 0xCF9);
//!   * the reset value written to a reset register the FADT does not offer (RESET_REG_SUP
//!     clear): not a request Linux makes, and not one that may reset the machine under the
//!     enclaves; dropped.
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
/// 0xCF9, 0x64, the reset register, PM1a, PM1b, the sleep control register.
pub(super) const MAX_REGISTERS: usize = 6;
/// PM1 control: SLP_EN (ACPI 6.5 §4.8.3.2.1, Table 4.16).
const PM1_SLP_EN: u32 = 1 << 13;
/// PCI CONFIG_ADDRESS, the dword at 0xCF8 that covers 0xCF9 (PCI Local Bus 3.0 §3.2.2.3.2).
const CONFIG_ADDRESS: u16 = 0xcf8;

/// The first port of `r`, when it is in I/O space.
fn io_port(r: &Register) -> Option<u16> {
    if r.space != AddressSpace::SystemIo {
        return None;
    }
    u16::try_from(r.address).ok()
}

/// The sleep registers of `platform`, with their SLP_EN bit.
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

/// The registers behind the intercepted ports other than COM1, as (first port, width): an
/// access must be exactly one of them to reach the hardware. The FADT's reset register is
/// intercepted even without RESET_REG_SUP (a write of its value there would reset the
/// machine under every partition); ACPICA writes it as a byte in I/O space.
pub(super) fn registers(platform: &HostPlatform) -> [Option<(u16, u8)>; MAX_REGISTERS] {
    let [s0, s1] = sleep_registers(platform);
    let sleep = |s: Option<(Register, u32)>| {
        s.and_then(|(r, _)| io_port(&r).map(|p| (p, r.width.clamp(1, 4))))
    };
    [
        Some((RESET_CONTROL_PORT, 1)),
        Some((KBC_COMMAND_PORT, 1)),
        platform
            .reset_register
            .and_then(|r| io_port(&r.register))
            .map(|p| (p, 1)),
        sleep(s0),
        sleep(s1),
        None,
    ]
    .map(|r| r.filter(|&(p, w)| u32::from(p) + u32::from(w) <= 0x1_0000))
}

/// The ports the backend intercepts for the host (possibly overlapping); every other port is
/// passed through.
pub fn intercepted_ports(shared: &HostShared) -> impl Iterator<Item = RangeInclusive<u16>> + '_ {
    core::iter::once(COM1_PORTS)
        .chain(
            shared
                .registers
                .iter()
                .flatten()
                .map(|&(first, width)| first..=first + u16::from(width) - 1),
        )
        // Configuration mechanism #1, for the control device's function.
        .chain(shared.control().map(|_| CONFIG_ADDRESS..=0xcff))
}

/// Whether `[a, a + a_len)` and `[b, b + b_len)` share a port.
fn overlap(a: u16, a_len: u8, b: u16, b_len: u8) -> bool {
    let (a, b) = (u32::from(a), u32::from(b));
    a < b + u32::from(b_len) && b < a + u32::from(a_len)
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
    // The address latch (dword) and the data window: the control device's function, or the
    // hardware's with the host's latch replayed.
    if let Some(action) = super::control::port_access(vcpu, shared, hw, port, size, write, value) {
        return action;
    }
    // An access that covers an intercepted register without being exactly it (a word over
    // 0xCF9 or 0x64, a byte of PM1 control, one starting before COM1) never reaches the
    // hardware: the chipset could decode the register's byte in it.
    let exact = (port == CONFIG_ADDRESS && size == 4)
        || shared
            .registers
            .iter()
            .flatten()
            .any(|&(p, w)| p == port && w == size);
    let covers = overlap(port, size, COM1, 8)
        || shared
            .registers
            .iter()
            .flatten()
            .any(|&(p, w)| overlap(port, size, p, w));
    if covers && !exact {
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
    let platform = *shared.reset.lock().platform();
    if let Some(reset) = platform.reset_register {
        if io_port(&reset.register) == Some(port) && size == 1 && value == u32::from(reset.value) {
            // Not a reset the host asked for (the FADT does not offer the register), and not
            // one atoll lets it make behind its back.
            log::info!("host: reset value written to the unsupported reset register: dropped");
            vcpu.skip_instruction();
            return HostAction::Resume;
        }
    }
    let mut value = value;
    for (reg, slp_en) in sleep_registers(&platform).into_iter().flatten() {
        if io_port(&reg) == Some(port) && value & slp_en != 0 {
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
