//! Port I/O of a bare-metal enclave: IN/OUT and INS/OUTS. COM1 is the platform's 16550A
//! ([`Uart`]), the ACPI power registers its FADT advertises end the enclave (S5, reset), and
//! every other port follows the enclave's [`IoPolicy`].

use super::{Action, Console, EnclaveRun, EndReason};
use crate::partition::config::IoPolicy;
use atoll_vcpu::{vector, Access, Gpr, GuestMemory, Vcpu};
use boot::GuestPhysAddr;

/// COM1's ports.
const COM1: u16 = 0x3f8;

/// COM1 of a bare-metal enclave: the platform's 16550A ([`atoll_devices::uart`]) without an interrupt
/// line, its lines printed as the enclave's.
#[derive(Clone, Debug, Default)]
pub struct Uart(atoll_devices::uart::Uart16550);

impl Uart {
    fn write(&mut self, offset: u16, value: u8, name: &str, console: &mut impl Console) {
        if let Some(line) = self.0.write(offset, value) {
            console.line(name, line);
        }
    }

    fn read(&mut self, offset: u16) -> u8 {
        self.0.read(offset)
    }

    /// Prints what is pending.
    pub fn flush(&mut self, name: &str, console: &mut impl Console) {
        if let Some(line) = self.0.flush() {
            console.line(name, line);
        }
    }
}

/// Puts the result of an IN of `size` bytes into AL/AX/EAX, as the instruction does.
pub(crate) fn set_io_result(vcpu: &mut impl Vcpu, size: u8, value: u32) {
    let rax = vcpu.gpr(Gpr::Rax);
    let new = match size {
        1 => (rax & !0xff) | u64::from(value & 0xff),
        2 => (rax & !0xffff) | u64::from(value & 0xffff),
        _ => u64::from(value), // a 32-bit result zero-extends into RAX
    };
    vcpu.set_gpr(Gpr::Rax, new);
}

/// What one port access gave.
enum Port {
    /// A read, with its value.
    Read(u32),
    /// A write, done (or dropped by the `ignore` policy).
    Written,
    /// The `fault` policy: #GP.
    Fault,
    /// The enclave ends.
    Stop(EndReason),
}

/// One access of `size` bytes to `port` (`value` for writes): COM1, the ACPI power registers,
/// or the enclave's I/O policy for anything else.
fn port_access(
    run: &mut EnclaveRun,
    console: &mut impl Console,
    port: u16,
    size: u8,
    write: bool,
    value: u32,
    rip: u64,
) -> Port {
    if (COM1..COM1 + 8).contains(&port) {
        let offset = port - COM1;
        if write {
            run.uart.write(offset, value as u8, &run.name, console);
            return Port::Written;
        }
        return Port::Read(run.uart.read(offset).into());
    }
    // The power-management registers the enclave's FADT advertises (hardware-reduced ACPI).
    match (port, write) {
        (atoll_devices::acpi::SLEEP_CONTROL_PORT, true) => {
            if atoll_devices::acpi::requested_sleep_type(value as u8)
                == Some(atoll_devices::acpi::S5_SLP_TYP)
            {
                run.uart.flush(&run.name, console);
                return Port::Stop(EndReason::PowerOff);
            }
            // Other sleep states are not offered: the write has no effect.
            return Port::Written;
        }
        (atoll_devices::acpi::RESET_PORT, true)
            if value as u8 == atoll_devices::acpi::RESET_VALUE =>
        {
            run.uart.flush(&run.name, console);
            return Port::Stop(EndReason::Reset);
        }
        (
            atoll_devices::acpi::SLEEP_CONTROL_PORT
            | atoll_devices::acpi::SLEEP_STATUS_PORT
            | atoll_devices::acpi::RESET_PORT,
            _,
        ) => {
            // Reads return 0 (nothing pending); other writes (WAK_STS clears) are accepted.
            return if write { Port::Written } else { Port::Read(0) };
        }
        _ => {}
    }
    if run.io_denied < 16 {
        log::debug!(
            "enclave '{}': port {port:#x} ({} {size}) not emulated, at RIP {rip:#x}",
            run.name,
            if write { "write" } else { "read" },
        );
    }
    run.io_denied += 1;
    match run.io_policy {
        IoPolicy::Ignore if write => Port::Written,
        IoPolicy::Ignore => Port::Read(u32::MAX),
        IoPolicy::Fault => Port::Fault,
        IoPolicy::Stop => Port::Stop(EndReason::IoDenied { port, rip }),
    }
}

// Called from `handle` on every exit of its kind: inlined there, as it was before the
// handlers were split by kind (Bochs round trips count each instruction).
#[inline]
pub(super) fn io(
    vcpu: &mut impl Vcpu,
    run: &mut EnclaveRun,
    console: &mut impl Console,
    port: u16,
    size: u8,
    write: bool,
) -> Action {
    let value = vcpu.gpr(Gpr::Rax) as u32;
    match port_access(run, console, port, size, write, value, vcpu.rip()) {
        Port::Read(v) => {
            set_io_result(vcpu, size, v);
            vcpu.skip_instruction();
            Action::Resume
        }
        Port::Written => {
            vcpu.skip_instruction();
            Action::Resume
        }
        Port::Fault => {
            vcpu.inject_exception(vector::GP, Some(0));
            Action::Resume
        }
        Port::Stop(reason) => Action::Stop(reason),
    }
}

/// Elements one exit moves at most. A REP string instruction with more left keeps its RIP and
/// runs (exits) again, as the processor lets it be interrupted between iterations (SDM Vol. 2B
/// "REP/REPE/REPZ/REPNE/REPNZ"): the exit's work stays bounded whatever RCX holds.
pub const STRING_IO_BATCH: u64 = 64;

/// Writes `value` to `reg` as an instruction with `size`-byte addressing does: 8 bytes whole,
/// 4 bytes zero-extended (64-bit mode), 2 bytes into the low 16 bits only.
fn set_sized(vcpu: &mut impl Vcpu, reg: Gpr, value: u64, size: u8) {
    let v = match size {
        8 => value,
        4 => value & 0xffff_ffff,
        _ => (vcpu.gpr(reg) & !0xffff) | (value & 0xffff),
    };
    vcpu.set_gpr(reg, v);
}

/// INS and OUTS (with or without REP) in 64-bit mode: each element goes through the same
/// port handling as IN and OUT, its memory operand through the guest's page tables and the
/// enclave's RAM; rSI/rDI move by the element size (down with RFLAGS.DF), rCX counts down.
/// An operand outside the enclave's RAM ends it as any access there does; outside 64-bit mode,
/// through FS/GS, or unmapped in the guest's tables, the enclave stops as unsupported (named).
pub(super) fn string_io(
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    run: &mut EnclaveRun,
    console: &mut impl Console,
    port: u16,
    size: u8,
    write: bool,
) -> Action {
    use atoll_vcpu::decode::{self, Segment};
    let rip = vcpu.rip();
    let unsupported = |what| Action::Stop(EndReason::Unsupported { what, rip });
    let (paging, bitness, linear_rip) = decode::site_of(vcpu);
    let (bytes, n) = decode::fetch(mem, paging, linear_rip);
    let Some(form) = decode::string_io(&bytes[..n], bitness) else {
        return unsupported("string I/O (INS/OUTS) that does not decode");
    };
    if bitness != 64 {
        return unsupported("string I/O (INS/OUTS) outside 64-bit mode");
    }
    if matches!(form.segment, Segment::Fs | Segment::Gs) {
        return unsupported("string I/O (OUTS) through FS or GS");
    }
    let mask = match form.address_size {
        8 => u64::MAX,
        4 => 0xffff_ffff,
        _ => 0xffff,
    };
    let index = if write { Gpr::Rsi } else { Gpr::Rdi };
    let mut left = if form.rep {
        vcpu.gpr(Gpr::Rcx) & mask
    } else {
        1
    };
    let down = vcpu.rflags() & (1 << 10) != 0;
    let mut moved = 0;
    while left > 0 && moved < STRING_IO_BATCH {
        let at = vcpu.gpr(index) & mask;
        let mut buf = [0u8; 4];
        let element = &mut buf[..usize::from(size.min(4))];
        // Each byte translates on its own: an element may straddle two pages.
        let mut gpas = [GuestPhysAddr::new(0); 4];
        for (i, g) in gpas.iter_mut().take(element.len()).enumerate() {
            match decode::translate(mem, paging, at.wrapping_add(i as u64) & mask) {
                Some(gpa) => *g = gpa,
                None => return unsupported("string I/O (INS/OUTS) to an unmapped address"),
            }
        }
        let outside = |gpa: GuestPhysAddr| {
            Action::Stop(EndReason::EptViolation {
                gpa,
                access: Access {
                    read: write,
                    write: !write,
                    fetch: false,
                },
                rip,
                linear: Some(at),
            })
        };
        let result = if write {
            for (i, b) in element.iter_mut().enumerate() {
                let mut one = [0u8; 1];
                if mem.read(gpas[i], &mut one).is_none() {
                    return outside(gpas[i]);
                }
                *b = one[0];
            }
            let value = u32::from_le_bytes(buf);
            port_access(run, console, port, size, true, value, rip)
        } else {
            port_access(run, console, port, size, false, 0, rip)
        };
        match result {
            Port::Read(v) => {
                for (i, b) in v
                    .to_le_bytes()
                    .iter()
                    .take(usize::from(size.min(4)))
                    .enumerate()
                {
                    if mem.write(gpas[i], &[*b]).is_none() {
                        return outside(gpas[i]);
                    }
                }
            }
            Port::Written => {}
            // The element faulted before it moved: registers stay as they are.
            Port::Fault => {
                vcpu.inject_exception(vector::GP, Some(0));
                return Action::Resume;
            }
            Port::Stop(reason) => return Action::Stop(reason),
        }
        let step = u64::from(size);
        let next = if down {
            at.wrapping_sub(step)
        } else {
            at.wrapping_add(step)
        };
        set_sized(vcpu, index, next, form.address_size);
        left -= 1;
        if form.rep {
            set_sized(vcpu, Gpr::Rcx, left, form.address_size);
        }
        moved += 1;
    }
    if left == 0 {
        vcpu.skip_instruction();
    }
    Action::Resume
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::exits::testkit::*;
    use atoll_vcpu::Exit;

    #[test]
    fn uart_lines_reach_the_console_with_the_enclave_name() {
        let mut w = World::new(IoPolicy::Ignore);
        for b in b"hi there\r\nnext" {
            w.vcpu.gprs[Gpr::Rax as usize] = u64::from(*b);
            assert_eq!(
                w.exit(Exit::Io {
                    port: 0x3f8,
                    size: 1,
                    write: true,
                    string: false,
                    rep: false
                }),
                Action::Resume
            );
        }
        assert_eq!(
            w.console.0,
            vec![("alpha".to_string(), "hi there".to_string())]
        );
        w.vcpu.gprs[Gpr::Rax as usize] = 0xdead_0000;
        w.exit(Exit::Io {
            port: 0x3fd,
            size: 1,
            write: false,
            string: false,
            rep: false,
        });
        assert_eq!(
            w.vcpu.gprs[Gpr::Rax as usize],
            0xdead_0060,
            "LSR in AL, rest of RAX kept"
        );
    }

    #[test]
    fn unknown_ports_follow_the_policy() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rax as usize] = 0x1234_5678;
        w.exit(Exit::Io {
            port: 0x70,
            size: 2,
            write: false,
            string: false,
            rep: false,
        });
        assert_eq!(w.vcpu.gprs[Gpr::Rax as usize], 0x1234_ffff);
        assert_eq!((w.run.io_denied, w.vcpu.skipped), (1, 1));

        let mut w = World::new(IoPolicy::Fault);
        w.exit(Exit::Io {
            port: 0x70,
            size: 1,
            write: true,
            string: false,
            rep: false,
        });
        assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))));
        assert_eq!(w.vcpu.skipped, 0, "a faulting instruction is not skipped");

        let mut w = World::new(IoPolicy::Stop);
        w.vcpu.rip = 0x1000;
        let a = w.exit(Exit::Io {
            port: 0x70,
            size: 1,
            write: true,
            string: false,
            rep: false,
        });
        assert_eq!(
            a,
            Action::Stop(EndReason::IoDenied {
                port: 0x70,
                rip: 0x1000
            })
        );
    }

    /// A world whose vCPU is in 64-bit mode with paging off (flat): RIP at 0x1000.
    fn long_mode(policy: IoPolicy) -> World {
        let mut w = World::new(policy);
        w.vcpu.cr[0] = 1;
        w.vcpu.efer = 1 << 10;
        w.vcpu.cs.long = true;
        w.vcpu.rip = 0x1000;
        w
    }

    #[test]
    fn string_io_moves_elements_through_the_port_policy() {
        let outs = |rep| Exit::Io {
            port: 0x3f8,
            size: 1,
            write: true,
            string: true,
            rep,
        };
        // rep outsb: "hi\n" from 0x2000 to COM1.
        let mut w = long_mode(IoPolicy::Ignore);
        w.ram[0x1000..0x1002].copy_from_slice(&[0xf3, 0x6e]);
        w.ram[0x2000..0x2003].copy_from_slice(b"hi\n");
        w.vcpu.gprs[Gpr::Rsi as usize] = 0x2000;
        w.vcpu.gprs[Gpr::Rcx as usize] = 3;
        assert_eq!(w.exit(outs(true)), Action::Resume);
        assert_eq!(w.console.0, vec![("alpha".to_string(), "hi".to_string())]);
        assert_eq!(w.vcpu.gprs[Gpr::Rsi as usize], 0x2003);
        assert_eq!(w.vcpu.gprs[Gpr::Rcx as usize], 0);
        assert_eq!(w.vcpu.skipped, 1);

        // A huge count moves one batch per exit and keeps RIP (the instruction runs again).
        let mut w = long_mode(IoPolicy::Ignore);
        w.ram[0x1000..0x1002].copy_from_slice(&[0xf3, 0x6e]);
        w.vcpu.gprs[Gpr::Rsi as usize] = 0x2000;
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::MAX;
        assert_eq!(w.exit(outs(true)), Action::Resume);
        assert_eq!(w.vcpu.skipped, 0);
        assert_eq!(w.vcpu.gprs[Gpr::Rcx as usize], u64::MAX - STRING_IO_BATCH);
        assert_eq!(w.vcpu.gprs[Gpr::Rsi as usize], 0x2000 + STRING_IO_BATCH);

        // insd from an unemulated port under `ignore`, DF set: all ones, RDI moves down.
        let mut w = long_mode(IoPolicy::Ignore);
        w.ram[0x1000] = 0x6d;
        w.vcpu.rflags = 1 << 10;
        w.vcpu.gprs[Gpr::Rdi as usize] = 0x3000;
        let ins = Exit::Io {
            port: 0x80,
            size: 4,
            write: false,
            string: true,
            rep: false,
        };
        assert_eq!(w.exit(ins), Action::Resume);
        assert_eq!(&w.ram[0x3000..0x3004], &[0xff; 4]);
        assert_eq!(w.vcpu.gprs[Gpr::Rdi as usize], 0x3000 - 4);
        assert_eq!(w.vcpu.skipped, 1);

        // Under `fault` the element faults before it moves: #GP, registers unchanged.
        let mut w = long_mode(IoPolicy::Fault);
        w.ram[0x1000] = 0x6d;
        w.vcpu.gprs[Gpr::Rdi as usize] = 0x3000;
        assert_eq!(w.exit(ins), Action::Resume);
        assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))));
        assert_eq!(w.vcpu.gprs[Gpr::Rdi as usize], 0x3000);

        // An operand past the enclave's RAM ends it as any access there does.
        let mut w = long_mode(IoPolicy::Ignore);
        w.ram[0x1000..0x1002].copy_from_slice(&[0xf3, 0x6e]);
        let end = w.ram.len() as u64;
        w.vcpu.gprs[Gpr::Rsi as usize] = end - 1;
        w.vcpu.gprs[Gpr::Rcx as usize] = 4;
        assert!(matches!(
            w.exit(outs(true)),
            Action::Stop(EndReason::EptViolation { gpa, .. }) if gpa.as_u64() == end
        ));

        // Outside 64-bit mode, atoll says what it does not do.
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.rip = 0x1000;
        w.ram[0x1000] = 0x6e;
        assert!(matches!(
            w.exit(outs(false)),
            Action::Stop(EndReason::Unsupported { what, .. }) if what.contains("64-bit")
        ));
    }

    #[test]
    fn acpi_power_off_and_reset_end_the_enclave() {
        let out = |port: u16| Exit::Io {
            port,
            size: 1,
            write: true,
            string: false,
            rep: false,
        };
        let mut w = World::new(IoPolicy::Stop);
        // Pending COM1 output is flushed first.
        w.vcpu.gprs[Gpr::Rax as usize] = u64::from(b'x');
        w.exit(out(0x3f8));
        w.vcpu.gprs[Gpr::Rax as usize] = u64::from(atoll_devices::acpi::S5_SLEEP_CONTROL_VALUE);
        assert_eq!(
            w.exit(out(atoll_devices::acpi::SLEEP_CONTROL_PORT)),
            Action::Stop(EndReason::PowerOff)
        );
        assert_eq!(w.console.0, vec![("alpha".to_string(), "x".to_string())]);
        // S3 (or SLP_EN clear) is not offered: no effect, not an I/O-policy stop.
        w.vcpu.gprs[Gpr::Rax as usize] = (3 << 2) | (1 << 5);
        assert_eq!(
            w.exit(out(atoll_devices::acpi::SLEEP_CONTROL_PORT)),
            Action::Resume
        );
        w.vcpu.gprs[Gpr::Rax as usize] = 0x80; // WAK_STS clear
        assert_eq!(
            w.exit(out(atoll_devices::acpi::SLEEP_STATUS_PORT)),
            Action::Resume
        );
        w.vcpu.gprs[Gpr::Rax as usize] = u64::from(atoll_devices::acpi::RESET_VALUE);
        assert_eq!(
            w.exit(out(atoll_devices::acpi::RESET_PORT)),
            Action::Stop(EndReason::Reset)
        );
        w.vcpu.gprs[Gpr::Rax as usize] = 0xffff_ffff;
        w.exit(Exit::Io {
            port: atoll_devices::acpi::SLEEP_STATUS_PORT,
            size: 1,
            write: false,
            string: false,
            rep: false,
        });
        assert_eq!(
            w.vcpu.gprs[Gpr::Rax as usize],
            0xffff_ff00,
            "status reads 0"
        );
        assert_eq!(w.run.io_denied, 0);
        assert_eq!(EndReason::PowerOff.name(), "power_off");
        assert_eq!(
            EndReason::Reset.to_string(),
            "the guest reset itself (ACPI reset register)"
        );
    }
}
