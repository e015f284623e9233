//! The host side of PCI: the host bridge function and the segment a CPU reaches through ECAM
//! and through configuration mechanism #1.
//!
//! **ECAM** (PCIe Base Spec 4.0 §7.2.2): a memory window with 4 KiB of configuration space per
//! function, the offset into the window being `bus << 20 | device << 15 | function << 12 |
//! register`; an [`Ecam`] covers a range of bus numbers starting at its first bus (the MCFG
//! table tells the OS the range).
//!
//! **Mechanism #1** (PCI 3.0 §3.2.2.3.2): a dword address register at port 0xCF8 — enable (bit
//! 31), bus (23:16), device (15:11), function (10:8), dword register (7:2) — and the 4-byte
//! data window at 0xCFC–0xCFF, where a byte, word or dword access reaches the same bytes of the
//! addressed register. Only the first 256 bytes are reachable (the AMD extension putting
//! register bits 11:8 in address bits 27:24 is not decoded). Byte and word accesses to
//! 0xCF8–0xCFB reach no register (on chipsets 0xCF9 is the reset control register, which atoll
//! does not model): reads are all ones, writes are dropped. With the enable bit clear, data
//! accesses read all ones and writes are dropped.
//!
//! Both paths end in the same [`PciBus`] accesses, so a function cannot tell them apart.

use super::bus::{PciBus, PciBusError, PciDevice};
use super::config::{self, ClassCode, ConfigEffect, ConfigSpace, Header};
use super::{Bdf, DevFn};
use alloc::boxed::Box;
use alloc::vec::Vec;

/// The host bridge's vendor: Red Hat, Inc. (0x1B36), the vendor of the IDs QEMU's virtual
/// devices use.
pub const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
/// The host bridge's device: 0x0008, the generic PCIe host bridge virtual machines use
/// (Linux has no driver bound to it and needs none).
pub const HOST_BRIDGE_DEVICE: u16 = 0x0008;

/// The port of mechanism #1's address register.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// The first port of mechanism #1's data window.
pub const CONFIG_DATA_PORT: u16 = 0xcfc;
/// Ports from [`CONFIG_ADDRESS_PORT`] that mechanism #1 occupies.
pub const CONFIG_PORTS: u16 = 8;

/// The host bridge at 00:00.0: class 06:00:00, header type 0, no BARs, no capabilities, no
/// interrupt. It forwards nothing a guest could configure, so its whole space is read-only
/// (command, cache line size and interrupt line included): every register other than the IDs
/// and class reads 0.
#[derive(Clone, Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// The host bridge.
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(&Header {
            vendor_id: HOST_BRIDGE_VENDOR,
            device_id: HOST_BRIDGE_DEVICE,
            revision: 0,
            class: ClassCode {
                class: 0x06,
                subclass: 0x00,
                prog_if: 0x00,
            },
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            interrupt_pin: None,
        });
        // Constant, in-range registers: these cannot fail.
        for (offset, len) in [
            (config::reg::COMMAND, 4),
            (config::reg::CACHE_LINE_SIZE, 1),
            (config::reg::INTERRUPT_LINE, 1),
        ] {
            let _ = config.init_register(offset, &[0; 4][..len], &[], &[]);
        }
        Self { config }
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

/// An ECAM window's decoding: which buses it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecam {
    first_bus: u8,
    buses: u16,
}

impl Ecam {
    /// A window for `buses` buses (1–256) from `first_bus`; `None` if the range passes bus 255.
    pub const fn new(first_bus: u8, buses: u16) -> Option<Self> {
        // `const`, so a platform's fixed window is checked at compile time.
        if buses >= 1 && first_bus as u16 + buses <= 256 {
            Some(Self { first_bus, buses })
        } else {
            None
        }
    }

    /// The first bus.
    pub fn first_bus(&self) -> u8 {
        self.first_bus
    }

    /// How many buses.
    pub fn buses(&self) -> u16 {
        self.buses
    }

    /// Bytes of the window (1 MiB per bus).
    pub fn len(&self) -> u64 {
        u64::from(self.buses) << 20
    }

    /// Never true (a window has at least one bus); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.buses == 0
    }

    /// The function and register an offset into the window names; `None` past the window.
    pub fn decode(&self, offset: u64) -> Option<(Bdf, u16)> {
        if offset >= self.len() {
            return None;
        }
        // The window is at most 256 MiB, so the bus index fits 8 bits and the sum stays ≤ 255.
        let bus = self.first_bus + (offset >> 20) as u8;
        let devfn = DevFn::from_bits((offset >> 12) as u8);
        Some((Bdf { bus, devfn }, (offset & 0xfff) as u16))
    }
}

/// Mechanism #1's address register (port 0xCF8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigAddress(u32);

impl ConfigAddress {
    /// Bit 31: data accesses reach configuration space.
    pub const ENABLE: u32 = 1 << 31;
    /// The bits that hold something: enable, bus, device, function, dword register. Bits 30:24
    /// are reserved (read 0) and bits 1:0 read 0.
    pub const IMPLEMENTED: u32 = 0x80ff_fffc;

    /// A dword write of the register.
    pub fn write(&mut self, value: u32) {
        self.0 = value & Self::IMPLEMENTED;
    }

    /// A dword read of the register.
    pub fn read(&self) -> u32 {
        self.0
    }

    /// The function and register a data access at `byte` (0–3) of the window reaches, if
    /// enabled.
    pub fn target(&self, byte: u16) -> Option<(Bdf, u16)> {
        if self.0 & Self::ENABLE == 0 {
            return None;
        }
        let bdf = Bdf {
            bus: (self.0 >> 16) as u8,
            devfn: DevFn::from_bits((self.0 >> 8) as u8),
        };
        Some((bdf, (self.0 & 0xfc) as u16 + (byte & 3)))
    }
}

/// The buses an ECAM window covers, with mechanism #1's address register, reaching one set of
/// functions.
pub struct PciSegment {
    ecam: Ecam,
    buses: Vec<PciBus>,
    address: ConfigAddress,
}

impl core::fmt::Debug for PciSegment {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PciSegment")
            .field("ecam", &self.ecam)
            .field("buses", &self.buses)
            .field("address", &self.address)
            .finish()
    }
}

impl PciSegment {
    /// The empty buses `ecam` covers.
    pub fn new(ecam: Ecam) -> Self {
        let buses = (0..ecam.buses)
            .map(|i| PciBus::new(ecam.first_bus + i as u8))
            .collect();
        Self {
            ecam,
            buses,
            address: ConfigAddress::default(),
        }
    }

    /// The ECAM decoding.
    pub fn ecam(&self) -> &Ecam {
        &self.ecam
    }

    /// Bus `number`, if the segment has it.
    pub fn bus_mut(&mut self, number: u8) -> Option<&mut PciBus> {
        let i = number.checked_sub(self.ecam.first_bus)?;
        self.buses.get_mut(usize::from(i))
    }

    /// Puts `device` at `bdf`.
    pub fn insert(&mut self, bdf: Bdf, device: Box<dyn PciDevice>) -> Result<(), PciBusError> {
        self.bus_mut(bdf.bus)
            .ok_or(PciBusError::NoSuchBus(bdf.bus))?
            .insert(bdf.devfn, device)
    }

    /// The function at `bdf` (for BAR accesses, once the platform has routed one to it).
    pub fn function_mut(&mut self, bdf: Bdf) -> Option<&mut (dyn PciDevice + 'static)> {
        self.bus_mut(bdf.bus)?.get_mut(bdf.devfn)
    }

    /// A configuration read of `bdf`; all ones for a bus the segment does not have.
    pub fn config_read(&mut self, bdf: Bdf, offset: u16, data: &mut [u8]) {
        match self.bus_mut(bdf.bus) {
            Some(bus) => bus.config_read(bdf.devfn, offset, data),
            None => data.fill(0xff),
        }
    }

    /// A configuration write of `bdf`; dropped for a bus the segment does not have.
    pub fn config_write(&mut self, bdf: Bdf, offset: u16, data: &[u8]) -> Option<ConfigEffect> {
        self.bus_mut(bdf.bus)?.config_write(bdf.devfn, offset, data)
    }

    /// A read at `offset` into the ECAM window; all ones past the window.
    pub fn ecam_read(&mut self, offset: u64, data: &mut [u8]) {
        match self.ecam.decode(offset) {
            Some((bdf, register)) => self.config_read(bdf, register, data),
            None => data.fill(0xff),
        }
    }

    /// A write at `offset` into the ECAM window; returns the function and what the platform
    /// must act on.
    pub fn ecam_write(&mut self, offset: u64, data: &[u8]) -> Option<(Bdf, ConfigEffect)> {
        let (bdf, register) = self.ecam.decode(offset)?;
        Some((bdf, self.config_write(bdf, register, data)?))
    }

    /// The data-window target of an access of `len` bytes at `port` (an offset from 0xCF8),
    /// if it lies inside 0xCFC–0xCFF and the address register is enabled.
    fn data_target(&self, port: u16, len: usize) -> Option<(Bdf, u16)> {
        let byte = port.checked_sub(CONFIG_DATA_PORT - CONFIG_ADDRESS_PORT)?;
        if usize::from(byte) + len > 4 {
            return None;
        }
        self.address.target(byte)
    }

    /// An `in` at `port` (an offset from 0xCF8, 0–7).
    pub fn io_read(&mut self, port: u16, data: &mut [u8]) {
        if port == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.read().to_le_bytes());
            return;
        }
        match self.data_target(port, data.len()) {
            Some((bdf, register)) => self.config_read(bdf, register, data),
            None => data.fill(0xff),
        }
    }

    /// An `out` at `port` (an offset from 0xCF8, 0–7); returns the function and what the
    /// platform must act on.
    pub fn io_write(&mut self, port: u16, data: &[u8]) -> Option<(Bdf, ConfigEffect)> {
        if port == 0 && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.address.write(u32::from_le_bytes(b));
            return None;
        }
        let (bdf, register) = self.data_target(port, data.len())?;
        Some((bdf, self.config_write(bdf, register, data)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::bus::tests::Emulated;
    use super::super::config::{command, reg};
    use super::*;

    fn segment() -> PciSegment {
        let mut s = PciSegment::new(Ecam::new(0, 2).unwrap());
        s.insert(Bdf::new(0, 0, 0).unwrap(), Box::new(HostBridge::new()))
            .unwrap();
        s.insert(Bdf::new(1, 3, 0).unwrap(), Box::new(Emulated::new(0x10f0)))
            .unwrap();
        s
    }

    fn ecam_offset(bus: u64, dev: u64, func: u64, reg: u64) -> u64 {
        bus << 20 | dev << 15 | func << 12 | reg
    }

    fn ecam(s: &mut PciSegment, offset: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        s.ecam_read(offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn io(s: &mut PciSegment, port: u16, len: usize) -> u32 {
        let mut b = [0u8; 4];
        s.io_read(port, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn select(s: &mut PciSegment, bus: u32, dev: u32, func: u32, reg: u32) {
        let a = 1 << 31 | bus << 16 | dev << 11 | func << 8 | reg;
        s.io_write(0, &a.to_le_bytes());
    }

    /// The host bridge's first 64 bytes as vplat answered before the devices crate: the IDs,
    /// the class, zeros.
    fn bridge_dword(offset: u16) -> u32 {
        match offset {
            0 => 0x0008_1b36,
            8 => 0x0600_0000,
            _ => 0,
        }
    }

    #[test]
    fn the_host_bridge_reads_as_before_and_ignores_writes() {
        let mut s = segment();
        for offset in (0..0x100u16).step_by(4) {
            assert_eq!(
                ecam(&mut s, u64::from(offset), 4),
                bridge_dword(offset),
                "{offset:#x}"
            );
            // Writing all ones changes nothing (every register is read-only).
            assert_eq!(s.ecam_write(u64::from(offset), &[0xff; 4]), None);
            assert_eq!(
                ecam(&mut s, u64::from(offset), 4),
                bridge_dword(offset),
                "{offset:#x}"
            );
        }
        assert_eq!(ecam(&mut s, 0xffc, 4), 0, "the extended space is empty");
    }

    #[test]
    fn ecam_decodes_bus_device_function_register() {
        let e = Ecam::new(0x10, 4).unwrap();
        assert_eq!(e.len(), 4 << 20);
        assert_eq!(e.decode(0), Some((Bdf::new(0x10, 0, 0).unwrap(), 0)));
        assert_eq!(
            e.decode(ecam_offset(3, 31, 7, 0xffe)),
            Some((Bdf::new(0x13, 31, 7).unwrap(), 0xffe))
        );
        assert_eq!(
            e.decode(ecam_offset(1, 2, 3, 0x104)),
            Some((Bdf::new(0x11, 2, 3).unwrap(), 0x104))
        );
        assert_eq!(e.decode(4 << 20), None);
        assert_eq!(e.decode(u64::MAX), None);
        assert_eq!(Ecam::new(0, 0), None);
        assert_eq!(Ecam::new(0xff, 2), None);
        assert_eq!(
            Ecam::new(0, 256)
                .unwrap()
                .decode(ecam_offset(255, 0, 0, 0))
                .unwrap()
                .0
                .bus,
            255
        );
    }

    #[test]
    fn ecam_accesses_at_every_size_and_alignment() {
        let mut s = segment();
        // Every byte, word and dword position of the host bridge's first dwords.
        let bytes: Vec<u8> = (0..16u16)
            .flat_map(|o| bridge_dword(o & !3).to_le_bytes()[usize::from(o & 3)..][..1].to_vec())
            .collect();
        for offset in 0..16u64 {
            assert_eq!(
                ecam(&mut s, offset, 1),
                u32::from(bytes[offset as usize]),
                "byte {offset}"
            );
            let word = u32::from(u16::from_le_bytes([
                bytes[offset as usize],
                *bytes.get(offset as usize + 1).unwrap_or(&0),
            ]));
            let expect = if offset % 4 == 3 { 0xffff } else { word };
            assert_eq!(ecam(&mut s, offset, 2), expect, "word {offset}");
            let expect = if offset % 4 == 0 {
                bridge_dword(offset as u16)
            } else {
                u32::MAX
            };
            assert_eq!(ecam(&mut s, offset, 4), expect, "dword {offset}");
        }
        // Eight bytes and three bytes are not configuration accesses.
        let mut q = [0u8; 8];
        s.ecam_read(0, &mut q);
        assert_eq!(q, [0xff; 8]);
        let mut t = [0u8; 3];
        s.ecam_read(0, &mut t);
        assert_eq!(t, [0xff; 3]);
        // Absent functions, a second bus, past the window.
        assert_eq!(ecam(&mut s, ecam_offset(0, 1, 0, 0), 4), u32::MAX);
        assert_eq!(ecam(&mut s, ecam_offset(0, 0, 1, 0), 2), 0xffff);
        assert_eq!(ecam(&mut s, ecam_offset(1, 3, 0, 0), 4), 0x10f0_1af4);
        assert_eq!(ecam(&mut s, ecam_offset(2, 0, 0, 0), 4), u32::MAX);
        // Writes reach the function on bus 1 and report effects with its address.
        let cmd = ecam_offset(1, 3, 0, u64::from(reg::COMMAND));
        assert_eq!(
            s.ecam_write(cmd, &command::MEMORY.to_le_bytes()),
            Some((
                Bdf::new(1, 3, 0).unwrap(),
                ConfigEffect::Command {
                    old: 0,
                    new: command::MEMORY
                }
            ))
        );
        assert_eq!(ecam(&mut s, cmd, 2), u32::from(command::MEMORY));
        assert_eq!(s.ecam_write(ecam_offset(2, 0, 0, 4), &[2, 0]), None);
        assert_eq!(
            s.ecam_write(cmd + 1, &[0, 0, 0, 0]),
            None,
            "crosses a dword"
        );
        assert_eq!(ecam(&mut s, cmd, 2), u32::from(command::MEMORY));
    }

    #[test]
    fn cf8_address_register() {
        let mut s = segment();
        assert_eq!(io(&mut s, 0, 4), 0);
        s.io_write(0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(
            io(&mut s, 0, 4),
            0x80ff_fffc,
            "reserved bits and bits 1:0 read 0"
        );
        // Byte and word accesses to 0xCF8–0xCFB reach no register.
        for (port, len) in [(0, 1), (0, 2), (1, 1), (2, 2), (3, 1)] {
            assert_eq!(
                io(&mut s, port, len),
                (1u32 << (8 * len)) - 1,
                "{port} {len}"
            );
            assert_eq!(s.io_write(port, &[0; 4][..len]), None);
            assert_eq!(io(&mut s, 0, 4), 0x80ff_fffc);
        }
    }

    #[test]
    fn cfc_accesses_at_every_size_and_alignment() {
        let mut s = segment();
        for reg_offset in [0u32, 8] {
            select(&mut s, 0, 0, 0, reg_offset);
            let dword = bridge_dword(reg_offset as u16);
            for byte in 0..4u16 {
                let port = 4 + byte;
                assert_eq!(io(&mut s, port, 1), dword >> (8 * byte) & 0xff);
                let expect = if byte == 3 {
                    0xffff
                } else {
                    dword >> (8 * byte) & 0xffff
                };
                assert_eq!(io(&mut s, port, 2), expect, "word at {port}");
                let expect = if byte == 0 { dword } else { u32::MAX };
                assert_eq!(io(&mut s, port, 4), expect, "dword at {port}");
            }
        }
        // Disabled: all ones, writes dropped.
        s.io_write(0, &0x0000_0000u32.to_le_bytes());
        assert_eq!(io(&mut s, 4, 4), u32::MAX);
        // Absent function, absent bus.
        select(&mut s, 0, 1, 0, 0);
        assert_eq!(io(&mut s, 4, 4), u32::MAX);
        select(&mut s, 5, 0, 0, 0);
        assert_eq!(io(&mut s, 4, 2), 0xffff);
        // Writes through the data window reach the same space ECAM sees.
        select(&mut s, 1, 3, 0, u32::from(reg::COMMAND));
        assert_eq!(
            s.io_write(4, &command::MEMORY.to_le_bytes()),
            Some((
                Bdf::new(1, 3, 0).unwrap(),
                ConfigEffect::Command {
                    old: 0,
                    new: command::MEMORY
                }
            ))
        );
        assert_eq!(
            ecam(&mut s, ecam_offset(1, 3, 0, 4), 2),
            u32::from(command::MEMORY)
        );
        // The status half through 0xCFE.
        assert_eq!(io(&mut s, 6, 2), 0x0010, "the capability-list bit");
        // A byte at 0xCFD is register byte 5.
        s.io_write(5, &[0x04]);
        assert_eq!(io(&mut s, 4, 2), 0x0402);
        // Out of the window or disabled: dropped.
        assert_eq!(s.io_write(7, &[0, 0]), None);
        s.io_write(0, &0u32.to_le_bytes());
        assert_eq!(s.io_write(4, &[0, 0]), None);
        assert_eq!(ecam(&mut s, ecam_offset(1, 3, 0, 4), 2), 0x0402);
        // Mechanism #1 reaches only the first 256 bytes: register bits above 7 do not exist.
        select(&mut s, 0, 0, 0, 0xfc);
        assert_eq!(io(&mut s, 0, 4), 0x8000_00fc);
        assert_eq!(io(&mut s, 4, 4), 0);
        assert_eq!(io(&mut s, 8, 1), 0xff, "past the data window");
    }

    #[test]
    fn inserts_are_checked() {
        let mut s = segment();
        assert_eq!(
            s.insert(Bdf::new(2, 0, 0).unwrap(), Box::new(HostBridge::new())),
            Err(PciBusError::NoSuchBus(2))
        );
        assert_eq!(
            s.insert(Bdf::new(0, 0, 0).unwrap(), Box::new(HostBridge::new())),
            Err(PciBusError::Occupied(DevFn::new(0, 0).unwrap()))
        );
        assert!(s.function_mut(Bdf::new(1, 3, 0).unwrap()).is_some());
        assert!(s.function_mut(Bdf::new(1, 3, 1).unwrap()).is_none());
        assert!(s.function_mut(Bdf::new(9, 0, 0).unwrap()).is_none());
        let mut offset = PciSegment::new(Ecam::new(0x20, 1).unwrap());
        assert!(offset.bus_mut(0x1f).is_none());
        assert_eq!(offset.bus_mut(0x20).unwrap().number(), 0x20);
        assert!(offset.bus_mut(0x21).is_none());
    }
}
