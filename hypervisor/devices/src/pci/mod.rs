//! PCI: configuration spaces, functions on buses, and the two ways a CPU reaches them.
//!
//! * [`config`]: one function's 4 KiB configuration space — header, write masks, BARs, the
//!   capability lists — and the [`ConfigEffect`](config::ConfigEffect)s a write has.
//! * [`msix`]: the MSI-X capability, vector table and pending bits.
//! * [`bus`]: the [`PciDevice`](bus::PciDevice) trait every function implements and
//!   [`PciBus`](bus::PciBus), the 32 devices × 8 functions of one bus number.
//! * [`bars`]: the [`BarMap`](bars::BarMap) — which function's BAR decodes an address, kept
//!   up to date from configuration writes' effects, dispatching BAR accesses.
//! * [`host`]: the [`HostBridge`](host::HostBridge) at 00:00.0 and the
//!   [`PciSegment`](host::PciSegment) — the buses of a range with the ECAM window and
//!   configuration mechanism #1 (0xCF8/0xCFC) both dispatching to the same spaces.
//!
//! * [`control`]: the control device atoll shows the host
//!   ([`ControlDevice`](control::ControlDevice)), and the host's configuration accesses
//!   ([`HostConfig`](control::HostConfig)): mechanism #1 and one ECAM page intercepted, the
//!   control function answered, everything else passed through to the hardware.
//!
//! * [`passthrough`]: a physical function (an SR-IOV VF) passed through to an enclave
//!   ([`PassThrough`](passthrough::PassThrough)): virtual header and capabilities, MSI-X
//!   through interrupt remapping, function level reset.
//!
//! * [`scan`]: the walk over the real buses at boot that tells atoll's IOMMU which functions
//!   and bus numbers exist.
//! * [`sriov`]: what atoll reads of a real function to pass it through: extended capabilities,
//!   BAR sizes, a PF's SR-IOV capability and its VFs' requester ids.
//!
//! A function is named by a [`Bdf`]: bus, device (0–31), function (0–7).

pub mod bars;
pub mod bus;
pub mod config;
pub mod control;
pub mod host;
pub mod msi;
pub mod msix;
pub mod passthrough;
pub mod scan;
pub mod sriov;

/// A device and function number on a bus: `device << 3 | function`, the encoding ECAM and
/// CF8 use, so every value names a valid slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevFn(u8);

impl DevFn {
    /// Device `device` (0–31), function `function` (0–7).
    pub fn new(device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Self(device << 3 | function))
    }

    /// From the 8-bit encoding.
    pub fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// The 8-bit encoding.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The device number.
    pub fn device(self) -> u8 {
        self.0 >> 3
    }

    /// The function number.
    pub fn function(self) -> u8 {
        self.0 & 7
    }
}

/// Bus, device, function: one function of a PCI segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// The bus number.
    pub bus: u8,
    /// Device and function on that bus.
    pub devfn: DevFn,
}

impl Bdf {
    /// `bus:device.function`; `None` if device or function is out of range.
    pub fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        Some(Self {
            bus,
            devfn: DevFn::new(device, function)?,
        })
    }
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus,
            self.devfn.device(),
            self.devfn.function()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn devfn_and_bdf() {
        assert_eq!(DevFn::new(32, 0), None);
        assert_eq!(DevFn::new(0, 8), None);
        let d = DevFn::new(31, 7).unwrap();
        assert_eq!((d.bits(), d.device(), d.function()), (0xff, 31, 7));
        assert_eq!(DevFn::from_bits(0x1a), DevFn::new(3, 2).unwrap());
        assert_eq!(Bdf::new(0xe0, 3, 1).unwrap().to_string(), "e0:03.1");
        assert_eq!(Bdf::new(0, 32, 0), None);
    }
}
