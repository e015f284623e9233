//! PCI functions and the bus that holds them.
//!
//! A function implements [`PciDevice`]: configuration accesses (by default straight through
//! its [`ConfigSpace`]) and accesses to its BARs, which the platform routes to it once it maps
//! them. A [`PciBus`] holds the functions of one bus number by [`DevFn`]; configuration
//! accesses to absent functions read all ones and drop writes, as an unanswered configuration
//! read does on hardware (the master abort), which is how an OS learns a slot is empty.
//!
//! Multi-function devices: an OS probes functions 1–7 of a device only if function 0's header
//! type has bit 7 set, so the bus sets that bit in what function 0 returns whenever the device
//! has another function; a device need not know its neighbours.

use super::config::{check_access, ConfigEffect, ConfigSpace};
use super::DevFn;
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Header type bit 7: the device has functions other than 0.
pub const MULTI_FUNCTION: u8 = 0x80;

/// A PCI function. Accesses arrive checked: configuration accesses are 1, 2 or 4 bytes inside
/// one dword below 4 KiB; BAR accesses are inside the BAR as the function declared it.
///
/// The control device, virtio devices and passed-through virtual functions are all
/// `PciDevice`s: an emulated device keeps its state in a [`ConfigSpace`] (plus an
/// [`Msix`](super::msix::Msix) if it has vectors) and overrides the BAR accesses; a
/// passed-through function overrides the configuration accesses to forward what the hardware
/// must see and to keep virtualised what it must not.
pub trait PciDevice: Send {
    /// The configuration space the default accesses go through.
    fn config(&self) -> &ConfigSpace;

    /// The configuration space, mutable.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// Reads configuration space at `offset` into `data`.
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if self.config().read(offset, data).is_err() {
            data.fill(0xff);
        }
    }

    /// Writes configuration space at `offset`; returns what the platform must act on (a BAR
    /// moved, decoding turned on or off).
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Option<ConfigEffect> {
        self.config_mut().write(offset, data).ok().flatten()
    }

    /// Reads `data.len()` bytes at `offset` of BAR `bar`. By default nothing answers: all ones.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let _ = (bar, offset);
        data.fill(0xff);
    }

    /// Writes `data` at `offset` of BAR `bar`. By default dropped.
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let _ = (bar, offset, data);
    }

    /// The virtio transport behind this function (notifications, processing, interrupts), so
    /// the platform reaches it once it is boxed on a bus; `None` for every other function.
    fn virtio(&mut self) -> Option<&mut dyn crate::virtio::VirtioFunction> {
        None
    }
}

/// Why a function could not be put on a bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciBusError {
    /// The slot already holds a function.
    Occupied(DevFn),
    /// The bus number is not one of the segment's.
    NoSuchBus(u8),
}

/// The functions of one bus number.
pub struct PciBus {
    number: u8,
    functions: Vec<Option<Box<dyn PciDevice>>>,
}

impl core::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let present: Vec<DevFn> = self.present().collect();
        f.debug_struct("PciBus")
            .field("number", &self.number)
            .field("functions", &present)
            .finish()
    }
}

impl PciBus {
    /// An empty bus numbered `number`.
    pub fn new(number: u8) -> Self {
        let mut functions = Vec::with_capacity(256);
        functions.resize_with(256, || None);
        Self { number, functions }
    }

    /// The bus number.
    pub fn number(&self) -> u8 {
        self.number
    }

    /// Puts `device` at `slot`.
    pub fn insert(&mut self, slot: DevFn, device: Box<dyn PciDevice>) -> Result<(), PciBusError> {
        let s = &mut self.functions[usize::from(slot.bits())];
        if s.is_some() {
            return Err(PciBusError::Occupied(slot));
        }
        *s = Some(device);
        Ok(())
    }

    /// Takes the function at `slot` away (hot unplug, or a VF handed back).
    pub fn remove(&mut self, slot: DevFn) -> Option<Box<dyn PciDevice>> {
        self.functions[usize::from(slot.bits())].take()
    }

    /// The function at `slot`.
    pub fn get_mut(&mut self, slot: DevFn) -> Option<&mut (dyn PciDevice + 'static)> {
        self.functions[usize::from(slot.bits())].as_deref_mut()
    }

    /// The occupied slots, lowest first.
    pub fn present(&self) -> impl Iterator<Item = DevFn> + '_ {
        self.functions
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_some())
            .map(|(i, _)| DevFn::from_bits(i as u8))
    }

    /// Whether device `slot.device()` has a function other than 0.
    fn has_other_functions(&self, slot: DevFn) -> bool {
        let first = usize::from(slot.device()) * 8;
        self.functions[first + 1..first + 8]
            .iter()
            .any(Option::is_some)
    }

    /// A configuration read: the function's answer, or all ones for an absent function or a
    /// malformed access.
    pub fn config_read(&mut self, slot: DevFn, offset: u16, data: &mut [u8]) {
        let other = slot.function() == 0 && self.has_other_functions(slot);
        let Ok(at) = check_access(offset, data.len()) else {
            data.fill(0xff);
            return;
        };
        match self.get_mut(slot) {
            Some(f) => f.config_read(offset, data),
            None => {
                data.fill(0xff);
                return;
            }
        }
        let header = usize::from(super::config::reg::HEADER_TYPE);
        if other && (at..at + data.len()).contains(&header) {
            data[header - at] |= MULTI_FUNCTION;
        }
    }

    /// A configuration write: to the function, or dropped for an absent function or a
    /// malformed access.
    pub fn config_write(&mut self, slot: DevFn, offset: u16, data: &[u8]) -> Option<ConfigEffect> {
        check_access(offset, data.len()).ok()?;
        self.get_mut(slot)?.config_write(offset, data)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::config::{command, reg, Bar, BarKind, ClassCode, Header};
    use super::super::msix::{Msix, MsixLayout};
    use super::*;
    use alloc::vec;

    /// An emulated function with a memory BAR holding a register and an MSI-X table (the shape
    /// a virtio or control device has), and a 16-port I/O BAR with a latch.
    pub(crate) struct Emulated {
        pub config: ConfigSpace,
        pub msix: Msix,
        pub register: u32,
        pub latch: u8,
    }

    impl Emulated {
        pub(crate) fn new(device_id: u16) -> Self {
            let mut config = ConfigSpace::new(&Header {
                vendor_id: 0x1af4,
                device_id,
                revision: 1,
                class: ClassCode {
                    class: 0xff,
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
                        kind: BarKind::Memory64 {
                            prefetchable: false,
                        },
                        size: 0x4000,
                    },
                )
                .unwrap();
            config
                .add_bar(
                    2,
                    Bar {
                        kind: BarKind::Io,
                        size: 16,
                    },
                )
                .unwrap();
            let msix = Msix::install(
                &mut config,
                MsixLayout {
                    vectors: 2,
                    table_bar: 0,
                    table_offset: 0x2000,
                    pba_bar: 0,
                    pba_offset: 0x3000,
                },
            )
            .unwrap();
            Self {
                config,
                msix,
                register: 0,
                latch: 0,
            }
        }
    }

    impl PciDevice for Emulated {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn config_write(&mut self, offset: u16, data: &[u8]) -> Option<ConfigEffect> {
            let effect = self.config.write(offset, data).ok().flatten();
            self.msix.config_written(&self.config, offset, data.len());
            effect
        }
        fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            if bar == 2 {
                // The latch plus the port's offset in each byte.
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.latch.wrapping_add((offset + i as u64) as u8);
                }
                return;
            }
            let ok = match offset {
                0 if data.len() == 4 => {
                    data.copy_from_slice(&self.register.to_le_bytes());
                    Ok(())
                }
                0x2000..=0x2fff => self.msix.table_read(offset - 0x2000, data),
                0x3000..=0x3fff => self.msix.pba_read(offset - 0x3000, data),
                _ => Err(super::super::msix::MsixError::Access {
                    offset,
                    len: data.len(),
                }),
            };
            if ok.is_err() {
                data.fill(0xff);
            }
        }
        fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
            if bar == 2 {
                self.latch = data[0];
                return;
            }
            match offset {
                0 if data.len() == 4 => {
                    let mut b = [0; 4];
                    b.copy_from_slice(data);
                    self.register = u32::from_le_bytes(b);
                }
                0x2000..=0x2fff => {
                    let _ = self.msix.table_write(offset - 0x2000, data);
                }
                _ => {}
            }
        }
    }

    fn slot(d: u8, f: u8) -> DevFn {
        DevFn::new(d, f).unwrap()
    }

    fn read(bus: &mut PciBus, s: DevFn, offset: u16, len: usize) -> u32 {
        let mut b = [0u8; 4];
        bus.config_read(s, offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let mut bus = PciBus::new(0);
        bus.insert(slot(1, 0), Box::new(Emulated::new(0x10f0)))
            .unwrap();
        for (s, expect) in [
            (slot(0, 0), u32::MAX),
            (slot(1, 1), u32::MAX),
            (slot(31, 7), u32::MAX),
        ] {
            assert_eq!(read(&mut bus, s, 0, 4), expect);
            assert_eq!(read(&mut bus, s, 2, 2), 0xffff);
            assert_eq!(read(&mut bus, s, 0xfff, 1), 0xff);
            assert_eq!(bus.config_write(s, reg::COMMAND, &[0xff, 0xff]), None);
        }
        assert_eq!(read(&mut bus, slot(1, 0), 0, 4), 0x10f0_1af4);
        assert_eq!(
            bus.insert(slot(1, 0), Box::new(Emulated::new(1)))
                .unwrap_err(),
            PciBusError::Occupied(slot(1, 0))
        );
        assert_eq!(bus.present().collect::<Vec<_>>(), vec![slot(1, 0)]);
        assert!(bus.remove(slot(1, 0)).is_some());
        assert_eq!(read(&mut bus, slot(1, 0), 0, 4), u32::MAX);
    }

    #[test]
    fn malformed_accesses_read_ones_and_write_nothing() {
        let mut bus = PciBus::new(0);
        bus.insert(slot(0, 0), Box::new(Emulated::new(0x10f0)))
            .unwrap();
        let mut b = [0u8; 8];
        bus.config_read(slot(0, 0), 0, &mut b[..8]);
        assert_eq!(b, [0xff; 8]);
        let mut b = [0u8; 2];
        bus.config_read(slot(0, 0), 3, &mut b);
        assert_eq!(b, [0xff; 2], "crosses a dword");
        bus.config_read(slot(0, 0), 0x1000, &mut b);
        assert_eq!(b, [0xff; 2], "past the space");
        assert_eq!(bus.config_write(slot(0, 0), 3, &[2, 0]), None);
        assert_eq!(bus.config_write(slot(0, 0), reg::COMMAND, &[2, 0, 0]), None);
        assert_eq!(read(&mut bus, slot(0, 0), reg::COMMAND, 2), 0);
    }

    #[test]
    fn multi_function_devices_say_so_in_function_0() {
        let mut bus = PciBus::new(0);
        bus.insert(slot(2, 0), Box::new(Emulated::new(1))).unwrap();
        assert_eq!(read(&mut bus, slot(2, 0), reg::HEADER_TYPE, 1), 0);
        bus.insert(slot(2, 5), Box::new(Emulated::new(2))).unwrap();
        assert_eq!(read(&mut bus, slot(2, 0), reg::HEADER_TYPE, 1), 0x80);
        assert_eq!(read(&mut bus, slot(2, 0), 0x0c, 4), 0x0080_0000);
        assert_eq!(read(&mut bus, slot(2, 0), 0x0e, 2), 0x0080);
        assert_eq!(
            read(&mut bus, slot(2, 0), 0x0c, 2),
            0,
            "not covering the header type"
        );
        assert_eq!(
            read(&mut bus, slot(2, 5), reg::HEADER_TYPE, 1),
            0,
            "only function 0"
        );
        // Other devices are unaffected.
        bus.insert(slot(3, 0), Box::new(Emulated::new(3))).unwrap();
        assert_eq!(read(&mut bus, slot(3, 0), reg::HEADER_TYPE, 1), 0);
    }

    #[test]
    fn an_emulated_function_end_to_end() {
        let mut bus = PciBus::new(0);
        let s = slot(4, 0);
        bus.insert(s, Box::new(Emulated::new(0x10f0))).unwrap();
        // Size BAR 0 with decode off, as an OS does, then place it and turn decoding on.
        bus.config_write(s, 0x10, &[0xff; 4]);
        bus.config_write(s, 0x14, &[0xff; 4]);
        assert_eq!(read(&mut bus, s, 0x10, 4), 0xffff_c004);
        assert_eq!(read(&mut bus, s, 0x14, 4), 0xffff_ffff);
        bus.config_write(s, 0x10, &0xfe00_0000u32.to_le_bytes());
        bus.config_write(s, 0x14, &[0; 4]);
        let effect = bus.config_write(
            s,
            reg::COMMAND,
            &(command::MEMORY | command::BUS_MASTER).to_le_bytes(),
        );
        assert!(
            matches!(effect, Some(ConfigEffect::Command { new, .. }) if new & command::MEMORY != 0)
        );
        let f = bus.get_mut(s).unwrap();
        let region = f.config().decoded_bar(0).unwrap();
        assert_eq!((region.base, region.size), (0xfe00_0000, 0x4000));
        // The BAR's register and its MSI-X table answer through the function.
        f.bar_write(0, 0, &7u32.to_le_bytes());
        let mut d = [0u8; 4];
        f.bar_read(0, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 7);
        f.bar_write(0, 0x2000, &0xfee0_0000u64.to_le_bytes());
        f.bar_write(0, 0x2008, &0x0000_0000_0000_0045u64.to_le_bytes());
        f.bar_read(0, 0x2008, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x45);
        f.bar_read(0, 0x2001, &mut d);
        assert_eq!(d, [0xff; 4], "a misaligned table read");
        // Enable MSI-X through configuration space: the function's state follows.
        let cap = u16::from(f.config().find_capability(0x11).unwrap());
        bus.config_write(s, cap + 2, &0x8000u16.to_le_bytes());
        assert_eq!(read(&mut bus, s, cap + 2, 2), 0x8001);
        let mut q = [0u8; 8];
        let f = bus.get_mut(s).unwrap();
        f.bar_read(0, 0x3000, &mut q);
        assert_eq!(q, [0; 8], "nothing pending");
    }

    #[test]
    fn configuration_writes_reach_a_functions_msix_state() {
        let mut e = Emulated::new(1);
        let cap = u16::from(e.msix.capability());
        PciDevice::config_write(&mut e, cap + 2, &0xc000u16.to_le_bytes());
        assert!(e.msix.enabled() && e.msix.function_masked());
        e.bar_write(0, 0x2000 + 12, &0u32.to_le_bytes());
        assert_eq!(e.msix.signal(0), super::super::msix::Signal::Pending);
        let mut q = [0u8; 8];
        e.bar_read(0, 0x3000, &mut q);
        assert_eq!(q, [1, 0, 0, 0, 0, 0, 0, 0]);
        PciDevice::config_write(&mut e, cap + 3, &[0x80]);
        assert_eq!(e.msix.next_deliverable().map(|(v, _)| v), Some(0));
    }
}
