//! Port and MMIO exits of a Linux enclave: each is looked up on the platform's buses ([`Port`],
//! [`Mmio`]) and reaches its device: COM1 (with its interrupt through the I/O APIC and the
//! host's input), the PIT, the RTC, PCI configuration mechanism #1, the xAPIC page, the I/O
//! APIC and the ECAM window. An access past its device's range reads all ones and writes
//! nothing; a port the platform lacks goes to the common handlers' I/O policy.

use super::apic::xapic_access;
use super::{ApicMode, Local, PlatformHost, Shared, COM1, ECAM, ECAM_BASE, IOAPIC_BASE};
use crate::run::exits::{Action, Console, EndReason};
use atoll_devices::bus::{AccessError, Bus, BusRange};
use atoll_devices::pci::host::{HostBridge, PciSegment};
use atoll_devices::pci::{Bdf, DevFn};
use atoll_vcpu::decode::{self, MmioOperand};
use atoll_vcpu::{vector, Gpr, GuestMemory, Vcpu};

/// What answers a port of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// COM1's eight registers.
    Com1,
    /// PIT channel 2 and its gate (0x40–0x43, 0x61).
    Pit,
    /// The CMOS clock's index and data ports (0x70, 0x71).
    Rtc,
    /// PCI configuration mechanism #1 (0xCF8–0xCFF).
    PciConfig,
}

/// What answers an MMIO page of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mmio {
    /// The xAPIC page (each vCPU sees its own).
    LocalApic,
    /// The I/O APIC.
    IoApic,
    /// The PCI ECAM window.
    Ecam,
    /// The window where passed-through functions' BARs decode ([`super::passthrough`]).
    PciBars,
}

/// A bus of the constant, disjoint `ranges` (base, length, device); the tests check that every
/// one is on it.
fn fixed_bus<D: Copy>(ranges: &[(u64, u64, D)]) -> Bus<D> {
    let mut bus = Bus::with_capacity(ranges.len());
    for &(base, len, device) in ranges {
        if let Ok(range) = BusRange::new(base, len) {
            let _ = bus.insert(range, device);
        }
    }
    bus
}

/// The platform's ports.
pub(super) fn port_map() -> Bus<Port> {
    use atoll_devices::pci::host::{CONFIG_ADDRESS_PORT, CONFIG_PORTS};
    fixed_bus(&[
        (COM1.into(), 8, Port::Com1),
        (0x40, 4, Port::Pit),
        (0x61, 1, Port::Pit),
        (0x70, 2, Port::Rtc),
        (
            CONFIG_ADDRESS_PORT.into(),
            CONFIG_PORTS.into(),
            Port::PciConfig,
        ),
    ])
}

/// The platform's MMIO pages.
pub(super) fn mmio_map() -> Bus<Mmio> {
    fixed_bus(&[
        (
            atoll_devices::acpi::LOCAL_APIC_BASE,
            0x1000,
            Mmio::LocalApic,
        ),
        (IOAPIC_BASE, 0x1000, Mmio::IoApic),
        (ECAM_BASE, ECAM.len(), Mmio::Ecam),
        (
            super::passthrough::PCI_MMIO_BASE,
            super::passthrough::PCI_MMIO_END - super::passthrough::PCI_MMIO_BASE,
            Mmio::PciBars,
        ),
    ])
}

/// The PCI segment: the host bridge at 00:00.0 (vendor 0x1B36 device 0x0008, class 06:00:00,
/// read-only) and nothing else; every other function reads as absent (all ones).
pub(super) fn pci_segment() -> PciSegment {
    let mut segment = PciSegment::new(ECAM);
    // A new segment covering bus 0 has a free 00:00.0 (the tests check the bridge is there).
    let _ = segment.insert(
        Bdf {
            bus: 0,
            devfn: DevFn::from_bits(0),
        },
        alloc::boxed::Box::new(HostBridge::new()),
    );
    segment
}

/// Ports of the PIT, the RTC and PCI configuration mechanism #1 (`offset` is the port's offset
/// in its device's range). Returns the value of a read (`write` is `None`).
fn legacy_io(
    shared: &Shared,
    host: &impl PlatformHost,
    device: Port,
    port: u16,
    offset: u16,
    size: u8,
    write: Option<u64>,
) -> Option<u32> {
    match device {
        Port::Pit => {
            let mut pit = shared.pit.lock();
            match write {
                Some(v) => {
                    pit.write(port, v as u8, host.now());
                    None
                }
                None => Some(pit.read(port, host.now()).into()),
            }
        }
        Port::Rtc => {
            let mut rtc = shared.rtc.lock();
            match write {
                Some(v) => {
                    rtc.write(port, v as u8);
                    None
                }
                None => Some(rtc.read(port, host.now()).into()),
            }
        }
        Port::PciConfig => {
            // The bus passed 1, 2 or 4 bytes.
            let n = usize::from(size).min(4);
            let mut pci = shared.pci.lock();
            match write {
                Some(v) => {
                    if let Some((bdf, effect)) =
                        pci.io_write(offset, &(v as u32).to_le_bytes()[..n])
                    {
                        log::debug!("pci {bdf}: {effect:?}");
                        shared.bars_changed(&mut pci, bdf);
                    }
                    None
                }
                None => {
                    let mut b = [0u8; 4];
                    pci.io_read(offset, &mut b[..n]);
                    Some(u32::from_le_bytes(b))
                }
            }
        }
        // COM1 goes through `uart_io`.
        Port::Com1 => write.is_none().then_some(u32::MAX),
    }
}

impl Shared {
    /// A configuration write changed `bdf`'s BARs or decoding: the BAR map follows (a BAR left
    /// off the map — overlapping another — answers nothing; logged).
    fn bars_changed(&self, pci: &mut PciSegment, bdf: Bdf) {
        if let Err(e) = self.bars.lock().update(pci, bdf) {
            log::info!("enclave '{}': pci {bdf}: {e:?}", self.name);
        }
    }

    /// Puts `function` at `devfn` on bus 0 (a function passed through, before the enclave
    /// starts), its BARs on the map as it decodes them.
    pub fn add_pci_function(
        &self,
        devfn: DevFn,
        function: alloc::boxed::Box<dyn atoll_devices::pci::bus::PciDevice>,
    ) -> Result<(), atoll_devices::pci::bus::PciBusError> {
        let bdf = Bdf { bus: 0, devfn };
        let mut pci = self.pci.lock();
        pci.insert(bdf, function)?;
        self.bars_changed(&mut pci, bdf);
        Ok(())
    }

    /// Bytes for the guest's COM1 receiver (raises its interrupt when enabled). Only as many
    /// as its FIFO has room for are taken (the sender keeps the rest: flow control, no overrun);
    /// returns how many.
    pub fn uart_receive(&self, bytes: &[u8], host: &mut impl PlatformHost) -> usize {
        let (n, irq) = {
            let mut u = self.uart.lock();
            let room = u.room();
            let n = u.receive(&bytes[..bytes.len().min(room)]);
            (n, u.irq())
        };
        self.set_uart_irq(irq, None, host);
        n
    }

    fn set_uart_irq(&self, level: bool, local: Option<&mut Local>, host: &mut impl PlatformHost) {
        let d = self
            .ioapic
            .lock()
            .set_irq(atoll_devices::acpi::COM1_IRQ, level);
        if let Some(d) = d {
            self.deliver(d, local, host);
        }
    }
}

/// An IN or OUT (not string I/O): the platform's device behind `port`, or `None` when the
/// platform has none there (the common handlers take it).
#[allow(clippy::too_many_arguments)]
pub(super) fn port_exit(
    vcpu: &mut impl Vcpu,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    console: &mut impl Console,
    port: u16,
    size: u8,
    write: bool,
) -> Option<Action> {
    let (device, offset) = match shared.ports.resolve(port.into(), size.into()) {
        Ok((&device, offset)) => (device, offset as u16),
        // Not the platform's: the common handlers apply the I/O policy.
        Err(AccessError::Unmapped) => return None,
        // Running past the device's last port (or an odd size): no register answers.
        Err(AccessError::Straddles { .. } | AccessError::Size(_)) => {
            if !write {
                crate::run::exits::set_io_result(vcpu, size, u32::MAX);
            }
            vcpu.skip_instruction();
            return Some(Action::Resume);
        }
    };
    if device == Port::Com1 {
        uart_io(vcpu, local, shared, host, console, offset, size, write);
        return Some(Action::Resume);
    }
    let value = vcpu.gpr(Gpr::Rax);
    let read = legacy_io(
        shared,
        host,
        device,
        port,
        offset,
        size,
        write.then_some(value),
    );
    if let Some(v) = read {
        crate::run::exits::set_io_result(vcpu, size, v);
    }
    vcpu.skip_instruction();
    Some(Action::Resume)
}

#[allow(clippy::too_many_arguments)]
fn uart_io(
    vcpu: &mut impl Vcpu,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    console: &mut impl Console,
    offset: u16,
    size: u8,
    write: bool,
) {
    let now = host.now();
    let (line, irq) = {
        let mut u = shared.uart.lock();
        if write {
            // At most 3 × LINE_MAX bytes: within `uart_line`'s capacity, no reallocation.
            let line = u.write(offset, vcpu.gpr(Gpr::Rax) as u8).map(|l| {
                local.uart_line.clear();
                local.uart_line.push_str(l);
            });
            (line.is_some(), u.irq())
        } else {
            crate::run::exits::set_io_result(vcpu, size, u.read(offset).into());
            (false, u.irq())
        }
    };
    if line {
        shared.guest_line(&local.uart_line, now, console);
    }
    shared.set_uart_irq(irq, Some(local), host);
    vcpu.skip_instruction();
}

pub(super) fn mmio(
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    gpa: u64,
) -> Action {
    let rip = vcpu.rip();
    let (pg, bits, linear) = decode::site_of(vcpu);
    let (bytes, n) = decode::fetch(mem, pg, linear);
    let Some(access) = decode::decode_mmio(&bytes[..n], bits) else {
        return Action::Stop(EndReason::Unsupported {
            what: "an MMIO access by an instruction atoll does not emulate",
            rip,
        });
    };
    let mask = match access.size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    };
    // The first byte decides the device; each device checks size and alignment itself.
    let Some((&region, offset)) = shared.mmio_map.get(gpa) else {
        return Action::Stop(EndReason::Unsupported {
            what: "an MMIO access outside the platform's devices",
            rip,
        });
    };
    let n = usize::from(access.size).min(8);
    if access.write {
        let value = match access.operand {
            MmioOperand::Immediate(v) => v,
            MmioOperand::Register { gpr, high_byte } => {
                let v = vcpu.gpr(gpr);
                if high_byte {
                    v >> 8
                } else {
                    v
                }
            }
        } & mask;
        let refused = match region {
            // Registers are 32-bit, 16-byte aligned; other accesses are dropped.
            Mmio::LocalApic => {
                local.mode == ApicMode::XApic
                    && access.size == 4
                    && gpa & 0xf == 0
                    && xapic_access(local, shared, host, offset, Some(value as u32)).is_err()
            }
            Mmio::IoApic => {
                let out = shared
                    .ioapic
                    .lock()
                    .mmio_write(offset, access.size, value as u32);
                match out {
                    Ok(ds) => {
                        for d in ds.iter() {
                            shared.deliver(d, Some(local), host);
                        }
                        false
                    }
                    Err(_) => true,
                }
            }
            Mmio::Ecam => {
                let mut pci = shared.pci.lock();
                let effect = pci.ecam_write(offset, &value.to_le_bytes()[..n]);
                if let Some((bdf, effect)) = effect {
                    log::debug!("pci {bdf}: {effect:?}");
                    shared.bars_changed(&mut pci, bdf);
                }
                drop(pci);
                // ECAM: bus in bits 27:20 of the offset, device and function in 19:12.
                let bdf = Bdf {
                    bus: (offset >> 20) as u8,
                    devfn: DevFn::from_bits((offset >> 12) as u8),
                };
                shared.virtio_after_access(bdf, mem, local, host);
                false
            }
            Mmio::PciBars => {
                let written = {
                    let mut pci = shared.pci.lock();
                    let bars = shared.bars.lock();
                    // Nothing decodes there: the write goes nowhere, as on a bus.
                    let _ = bars.mmio_write(&mut pci, gpa, &value.to_le_bytes()[..n]);
                    bars.memory().resolve(gpa, n).ok().map(|(b, _)| b.bdf)
                };
                if let Some(bdf) = written {
                    shared.virtio_after_access(bdf, mem, local, host);
                }
                false
            }
        };
        if refused {
            vcpu.inject_exception(vector::GP, Some(0));
            return Action::Resume;
        }
    } else {
        let value = match region {
            Mmio::LocalApic => {
                if local.mode == ApicMode::XApic && access.size == 4 && gpa & 0xf == 0 {
                    u64::from(xapic_access(local, shared, host, offset, None).unwrap_or(0))
                } else {
                    mask
                }
            }
            Mmio::IoApic => match shared.ioapic.lock().mmio_read(offset, access.size) {
                Ok(v) => u64::from(v),
                Err(_) => {
                    vcpu.inject_exception(vector::GP, Some(0));
                    return Action::Resume;
                }
            },
            Mmio::Ecam => {
                let mut b = [0u8; 8];
                shared.pci.lock().ecam_read(offset, &mut b[..n]);
                u64::from_le_bytes(b)
            }
            Mmio::PciBars => {
                let mut b = [0xffu8; 8];
                let mut pci = shared.pci.lock();
                let bars = shared.bars.lock();
                if bars.mmio_read(&mut pci, gpa, &mut b[..n]).is_err() {
                    // Nothing decodes there (or the access straddles a BAR's end).
                    b = [0xff; 8];
                }
                u64::from_le_bytes(b) & mask
            }
        };
        let MmioOperand::Register { gpr, high_byte } = access.operand else {
            return Action::Stop(EndReason::Unsupported {
                what: "an MMIO load without a register",
                rip,
            });
        };
        let old = vcpu.gpr(gpr);
        let new = if high_byte {
            (old & !0xff00) | ((value & 0xff) << 8)
        } else {
            match access.dest_size {
                1 => (old & !0xff) | (value & 0xff),
                2 => (old & !0xffff) | (value & 0xffff),
                // 32-bit destinations zero the upper half; 64-bit ones take the whole value.
                _ => value,
            }
        };
        vcpu.set_gpr(gpr, new);
    }
    vcpu.set_rip(rip.wrapping_add(u64::from(access.len)));
    Action::Resume
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::run::vplat::testkit::*;
    use atoll_vcpu::fake::FakeVcpu;
    use atoll_vcpu::SliceMemory;

    #[test]
    fn uart_output_interrupts_and_reports() {
        let s = Shared::new("lx", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        let mut c = Lines::default();
        enable_apic(&mut v, &mut l, &s, &mut h);
        // Route pin 4 to vector 0x24 on vCPU 0, edge, unmasked.
        route_com1_to_vcpu0(&s, 0x24);
        let out = |v: &mut FakeVcpu, l: &mut Local, h: &mut FakeHost, c: &mut Lines, off, val| {
            v.gprs[Gpr::Rax as usize] = val;
            uart_io(v, l, &s, h, c, off, 1, true);
        };
        // THR-empty interrupt enabled: the line rises, the I/O APIC sends 0x24 to vCPU 0.
        out(&mut v, &mut l, &mut h, &mut c, 1, 0x02);
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(v.injected_irqs, [0x24]);
        for b in b"ATOLL-GUEST-EXIT status=0\n" {
            out(&mut v, &mut l, &mut h, &mut c, 0, u64::from(*b));
        }
        assert_eq!(
            c.0,
            [("lx".to_string(), "ATOLL-GUEST-EXIT status=0".to_string())]
        );
        assert_eq!(s.results.lock().to_map()["guest_exit_status"], 0);
        for b in b"ATOLL-GUEST-CHECK {\"ok\":true}\n" {
            out(&mut v, &mut l, &mut h, &mut c, 0, u64::from(*b));
        }
        assert_eq!(s.results.lock().to_map()["guest_check"]["ok"], true);
        let buffer = l.uart_line.as_ptr();
        for b in core::iter::repeat_n(0xffu8, 3 * atoll_devices::uart::LINE_MAX) {
            out(&mut v, &mut l, &mut h, &mut c, 0, u64::from(b));
        }
        assert_eq!(l.uart_line.as_ptr(), buffer, "the line buffer never grows");
        assert_eq!(l.uart_line.chars().count(), atoll_devices::uart::LINE_MAX);
        // Reading back LSR through the same path.
        v.gprs[Gpr::Rax as usize] = 0xffff_ff00;
        uart_io(&mut v, &mut l, &s, &mut h, &mut c, 5, 1, false);
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff_ff60);
    }

    #[test]
    fn serial_input_reaches_the_guest_with_its_interrupt_and_flow_control() {
        let s = Shared::new("lx", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        let mut c = Lines::default();
        enable_apic(&mut v, &mut l, &s, &mut h);
        route_com1_to_vcpu0(&s, 0x34);
        // The guest enables the received-data interrupt.
        v.gprs[Gpr::Rax as usize] = 0x01;
        uart_io(&mut v, &mut l, &s, &mut h, &mut c, 1, 1, true);
        // 20 bytes offered: 16 fit, the sender keeps 4; the interrupt goes to vCPU 0's core.
        h.kicks.clear();
        assert_eq!(s.uart_receive(&[b'x'; 20], &mut h), 16);
        assert_eq!(h.kicks, [4]);
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(v.injected_irqs, [0x34]);
        // No overrun was flagged.
        v.gprs[Gpr::Rax as usize] = 0;
        uart_io(&mut v, &mut l, &s, &mut h, &mut c, 5, 1, false);
        assert_eq!(
            v.gprs[Gpr::Rax as usize] & 0x03,
            0x01,
            "data ready, no overrun"
        );
        assert_eq!(s.uart_receive(b"y", &mut h), 0, "full");
    }

    #[test]
    fn ioapic_and_ecam_mmio() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut ram = alloc::vec![0u8; 0x10000];
        // Paging off (CR0.PE only, 32-bit code): the instruction at RIP 0x1000.
        let mut v = vcpu();
        v.cr[0] = 1;
        v.cs.default32 = true;
        v.rip = 0x1000;
        // mov dword [ebx], eax → IOREGSEL = 0x01 (version register).
        ram[0x1000..0x1002].copy_from_slice(&[0x89, 0x03]);
        v.gprs[Gpr::Rax as usize] = 1;
        let mut mem = SliceMemory(&mut ram);
        assert_eq!(
            mmio(&mut v, &mut mem, &mut l, &s, &mut h, IOAPIC_BASE),
            Action::Resume
        );
        assert_eq!(v.rip, 0x1002);
        // mov eax, dword [ebx+0x10] → version.
        mem.write(boot::GuestPhysAddr::new(0x1002), &[0x8b, 0x43, 0x10])
            .unwrap();
        v.gprs[Gpr::Rax as usize] = u64::MAX;
        mmio(&mut v, &mut mem, &mut l, &s, &mut h, IOAPIC_BASE + 0x10);
        assert_eq!(v.rip, 0x1005);
        assert_eq!(v.gprs[Gpr::Rax as usize], 0x0017_0020);
        // movzx eax, word [ecx] on ECAM: the host bridge's vendor ID, zero-extended; then the
        // device ID at offset 2, and all ones for device 1 (nothing there).
        mem.write(boot::GuestPhysAddr::new(0x1005), &[0x0f, 0xb7, 0x01])
            .unwrap();
        mmio(&mut v, &mut mem, &mut l, &s, &mut h, ECAM_BASE);
        assert_eq!(v.gprs[Gpr::Rax as usize], 0x1b36);
        v.rip = 0x1005;
        mmio(&mut v, &mut mem, &mut l, &s, &mut h, ECAM_BASE + 2);
        assert_eq!(v.gprs[Gpr::Rax as usize], 0x0008);
        v.rip = 0x1005;
        mmio(&mut v, &mut mem, &mut l, &s, &mut h, ECAM_BASE + (1 << 15));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff);
        // An instruction that is not a MOV stops the enclave with the reason.
        mem.write(boot::GuestPhysAddr::new(0x1008), &[0x01, 0x03])
            .unwrap();
        assert!(matches!(
            mmio(&mut v, &mut mem, &mut l, &s, &mut h, IOAPIC_BASE),
            Action::Stop(EndReason::Unsupported { .. })
        ));
    }

    #[test]
    fn pci_mechanism_1_finds_the_host_bridge() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let h = FakeHost::default();
        let io = |port: u16, size: u8, w| {
            let (&device, offset) = s.ports.resolve(port.into(), size.into()).unwrap();
            assert_eq!(device, Port::PciConfig);
            legacy_io(&s, &h, device, port, offset as u16, size, w)
        };
        // Linux's probe: write 0x80000000 to 0xCF8 and read it back.
        io(0xcf8, 4, Some(0x8000_0000));
        assert_eq!(io(0xcf8, 4, None), Some(0x8000_0000));
        assert_eq!(io(0xcfc, 4, None), Some(0x0008_1b36));
        // The class code word at offset 0x0A: host bridge.
        io(0xcf8, 4, Some(0x8000_0008));
        assert_eq!(io(0xcfe, 2, None).map(|v| v & 0xffff), Some(0x0600));
        // Device 1: nothing.
        io(0xcf8, 4, Some(0x8000_0800));
        assert_eq!(io(0xcfc, 4, None), Some(u32::MAX));
        // The enable bit clear: no cycle.
        io(0xcf8, 4, Some(0));
        assert_eq!(io(0xcfc, 4, None), Some(u32::MAX));
        // Writes change nothing.
        io(0xcf8, 4, Some(0x8000_0000));
        io(0xcfc, 4, Some(0x1234_5678));
        assert_eq!(io(0xcfc, 4, None), Some(0x0008_1b36));
        // Byte and word reads of the data window, as Linux's pci_conf1_read does them.
        assert_eq!(io(0xcfd, 1, None), Some(0x1b));
        assert_eq!(io(0xcfe, 2, None), Some(0x0008));
        // Byte and word accesses to 0xCF8–0xCFB reach no register.
        assert_eq!(io(0xcf9, 1, None), Some(0xff));
        io(0xcf8, 2, Some(0));
        assert_eq!(io(0xcf8, 4, None), Some(0x8000_0000));
    }

    #[test]
    fn the_platform_maps_its_ports_and_pages() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let ports: Vec<(u64, u64, Port)> = s
            .ports
            .ranges()
            .map(|r| (r.base(), r.len(), *s.ports.get(r.base()).unwrap().0))
            .collect();
        assert_eq!(
            ports,
            alloc::vec![
                (0x40, 4, Port::Pit),
                (0x61, 1, Port::Pit),
                (0x70, 2, Port::Rtc),
                (0x3f8, 8, Port::Com1),
                (0xcf8, 8, Port::PciConfig),
            ]
        );
        let pages: Vec<(u64, u64, Mmio)> = s
            .mmio_map
            .ranges()
            .map(|r| (r.base(), r.len(), *s.mmio_map.get(r.base()).unwrap().0))
            .collect();
        assert_eq!(
            pages,
            alloc::vec![
                (ECAM_BASE, 1 << 20, Mmio::Ecam),
                (0xe100_0000, 0x1d00_0000, Mmio::PciBars),
                (IOAPIC_BASE, 0x1000, Mmio::IoApic),
                (0xfee0_0000, 0x1000, Mmio::LocalApic),
            ]
        );
        // The segment has the host bridge at 00:00.0 and nothing else.
        let mut pci = s.pci.lock();
        let mut b = [0u8; 4];
        pci.ecam_read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0008_1b36);
        let present: Vec<_> = pci.bus_mut(0).unwrap().present().collect();
        assert_eq!(present, alloc::vec![DevFn::from_bits(0)]);
        assert!(pci.bus_mut(1).is_none());
    }

    /// A function with one 4 KiB memory BAR whose registers remember the last dword written.
    struct Regs {
        config: atoll_devices::pci::config::ConfigSpace,
        last: u32,
    }

    impl atoll_devices::pci::bus::PciDevice for Regs {
        fn config(&self) -> &atoll_devices::pci::config::ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut atoll_devices::pci::config::ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
            let v = (self.last as u64 | offset << 32).to_le_bytes();
            data.copy_from_slice(&v[..data.len()]);
        }
        fn bar_write(&mut self, _bar: u8, _offset: u64, data: &[u8]) {
            let mut b = [0u8; 4];
            b[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
            self.last = u32::from_le_bytes(b);
        }
    }

    #[test]
    fn the_pci_window_reaches_a_function_s_bar_and_nothing_else() {
        use atoll_devices::pci::bus::PciDevice;
        use atoll_devices::pci::config::{Bar, BarKind, ClassCode, ConfigSpace, Header};
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut config = ConfigSpace::new(&Header {
            vendor_id: 0x8086,
            device_id: 0x10ca,
            revision: 1,
            class: ClassCode {
                class: 2,
                subclass: 0,
                prog_if: 0,
            },
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            interrupt_pin: None,
        });
        config
            .add_bar(
                0,
                Bar {
                    kind: BarKind::Memory32 {
                        prefetchable: false,
                    },
                    size: 0x1000,
                },
            )
            .unwrap();
        let mut f = Regs { config, last: 0 };
        let base = super::super::passthrough::PCI_MMIO_BASE;
        f.config_write(0x10, &(base as u32).to_le_bytes());
        f.config_write(0x04, &2u16.to_le_bytes());
        s.add_pci_function(DevFn::new(1, 0).unwrap(), alloc::boxed::Box::new(f))
            .unwrap();
        let mut ram = alloc::vec![0u8; 0x1000];
        // mov dword [ecx], eax; mov eax, dword [ecx] (32-bit code, paging off), twice.
        ram[0x100..0x108].copy_from_slice(&[0x89, 0x01, 0x8b, 0x01, 0x89, 0x01, 0x8b, 0x01]);
        let mut mem = SliceMemory(&mut ram);
        let mut v = vcpu();
        v.cr[0] = 1;
        v.cs.default32 = true;
        v.rip = 0x100;
        let mut console = Lines::default();
        let fault = |gpa| Exit::NestedPageFault {
            gpa: boot::GuestPhysAddr::new(gpa),
            access: atoll_vcpu::Access {
                read: true,
                write: false,
                fetch: false,
            },
            linear: None,
        };
        let mut exit = |v: &mut FakeVcpu, e: Exit| {
            handle(&e, v, &mut mem, &mut l, &s, &mut h, &Cpu, &mut console)
        };
        // Inside the BAR: the function's registers (offset 8 reaches it as offset 8).
        v.gprs[Gpr::Rax as usize] = 0x1234_5678;
        assert_eq!(exit(&mut v, fault(base + 8)), Some(Action::Resume));
        assert_eq!(exit(&mut v, fault(base + 8)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0x1234_5678);
        // Past it, in the window: nothing decodes, the write goes nowhere, the read is all ones.
        v.gprs[Gpr::Rax as usize] = 7;
        assert_eq!(exit(&mut v, fault(base + 0x1008)), Some(Action::Resume));
        assert_eq!(exit(&mut v, fault(base + 0x1008)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff_ffff);
        assert_eq!(v.rip, 0x108);
    }

    #[test]
    fn port_and_page_exits_dispatch_through_the_maps() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut ram = alloc::vec![0u8; 0x1000];
        // mov dword [ecx], eax; mov eax, dword [ecx] (32-bit code, paging off).
        ram[0x100..0x104].copy_from_slice(&[0x89, 0x01, 0x8b, 0x01]);
        let mut mem = SliceMemory(&mut ram);
        let mut v = vcpu();
        v.cr[0] = 1;
        v.cs.default32 = true;
        v.rip = 0x100;
        let mut console = Lines::default();
        let mut exit = |v: &mut FakeVcpu, e: Exit| {
            handle(&e, v, &mut mem, &mut l, &s, &mut h, &Cpu, &mut console)
        };
        let io = |port, size, write| Exit::Io {
            port,
            size,
            write,
            string: false,
            rep: false,
        };
        // CF8 then CFC through the exit: the host bridge's IDs, RIP advanced.
        v.gprs[Gpr::Rax as usize] = 0x8000_0000;
        assert_eq!(exit(&mut v, io(0xcf8, 4, true)), Some(Action::Resume));
        assert_eq!(exit(&mut v, io(0xcfc, 4, false)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0x0008_1b36);
        // A dword at 0xCFD runs past 0xCFF: no register answers, RAX's low half is all ones.
        v.gprs[Gpr::Rax as usize] = 0x1_0000_0000;
        let skipped = v.skipped;
        assert_eq!(exit(&mut v, io(0xcfd, 4, false)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff_ffff);
        assert_eq!(v.skipped, skipped + 1, "the instruction is skipped");
        // A word at COM1's last port runs past it too; a write there is dropped.
        v.gprs[Gpr::Rax as usize] = 0;
        assert_eq!(exit(&mut v, io(0x3ff, 2, false)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff);
        assert_eq!(exit(&mut v, io(0x3ff, 2, true)), Some(Action::Resume));
        // The RTC through the map: index 0x0a (status A) is readable.
        v.gprs[Gpr::Rax as usize] = 0x0a;
        assert_eq!(exit(&mut v, io(0x70, 1, true)), Some(Action::Resume));
        assert_eq!(exit(&mut v, io(0x71, 1, false)), Some(Action::Resume));
        // Ports and pages the platform does not have go to the common handlers.
        assert_eq!(exit(&mut v, io(0x80, 1, true)), None);
        assert_eq!(exit(&mut v, io(0x3f6, 2, false)), None);
        // A word at 0x3F7 ends in COM1's first port: it straddles, so no register answers.
        v.gprs[Gpr::Rax as usize] = 0;
        assert_eq!(exit(&mut v, io(0x3f7, 2, false)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff);
        let fault = |gpa| Exit::NestedPageFault {
            gpa: boot::GuestPhysAddr::new(gpa),
            access: atoll_vcpu::Access {
                read: true,
                write: false,
                fetch: false,
            },
            linear: None,
        };
        // The host bridge's command register through ECAM: the write is dropped, it reads 0.
        v.gprs[Gpr::Rax as usize] = 0xffff_ffff;
        assert_eq!(exit(&mut v, fault(ECAM_BASE + 4)), Some(Action::Resume));
        assert_eq!(v.rip, 0x102);
        assert_eq!(exit(&mut v, fault(ECAM_BASE + 4)), Some(Action::Resume));
        assert_eq!((v.rip, v.gprs[Gpr::Rax as usize]), (0x104, 0));
        assert_eq!(exit(&mut v, fault(ECAM_BASE + (1 << 20))), None);
        assert_eq!(exit(&mut v, fault(0xfec0_1000)), None);
        assert_eq!(exit(&mut v, fault(ECAM_BASE - 1)), None);
        assert!(console.0.is_empty(), "nothing reached COM1");
    }
}
