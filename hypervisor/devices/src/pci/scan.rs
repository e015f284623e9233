//! Enumerating the machine's real PCI functions at boot, so that atoll's IOMMU knows which
//! requester ids exist and which bus numbers the firmware handed out.
//!
//! The walk starts at bus 0 and follows PCI-to-PCI bridges (header type 1) to their secondary
//! buses (PCI-to-PCI Bridge Architecture 1.2 §3.2.5.3–5: secondary bus at 0x19, subordinate
//! bus at 0x1A), breadth first, each bus at most once, so a bridge whose numbers point back at
//! an earlier bus (firmware bug, or an emulator's) cannot make it loop. Function 0 decides
//! whether a device has more (header type bit 7, PCI 3.0 §6.2.1); a vendor id of 0xFFFF is an
//! absent function. The configuration reads go through a closure, so the walk runs in host
//! tests and, on the target, over mechanism #1.

use super::{Bdf, DevFn};
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Configuration-space offsets the walk reads (PCI 3.0 §6.1, Figure 6-1).
const VENDOR_DEVICE: u16 = 0x00;
const CLASS_REVISION: u16 = 0x08;
const HEADER_DWORD: u16 = 0x0c;
const BUS_NUMBERS: u16 = 0x18;

/// One function found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Where it is.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code (base class, subclass, programming interface).
    pub class: u32,
    /// A PCI-to-PCI bridge: its secondary and subordinate bus numbers.
    pub bridge: Option<(u8, u8)>,
}

/// What the walk found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every function, in walk order (bus by bus).
    pub functions: Vec<Function>,
    /// The highest bus number any bridge forwards to (0 without bridges): the buses a
    /// device may appear on later (a virtual function, a hot-plugged card) without the
    /// firmware renumbering.
    pub last_bus: u8,
}

/// Walks the buses reachable from bus 0; `read(bdf, offset)` reads a configuration dword.
pub fn scan(mut read: impl FnMut(Bdf, u16) -> u32) -> Scan {
    let mut out = Scan::default();
    let mut seen = [false; 256];
    let mut queue = VecDeque::from([0u8]);
    seen[0] = true;
    while let Some(bus) = queue.pop_front() {
        for device in 0..32u8 {
            for function in 0..8u8 {
                let Some(devfn) = DevFn::new(device, function) else {
                    continue;
                };
                let bdf = Bdf { bus, devfn };
                let id = read(bdf, VENDOR_DEVICE);
                let vendor = id as u16;
                if vendor == 0xffff || vendor == 0 {
                    if function == 0 {
                        break;
                    }
                    continue;
                }
                let header = (read(bdf, HEADER_DWORD) >> 16) as u8;
                let bridge = if header & 0x7f == 1 {
                    let b = read(bdf, BUS_NUMBERS);
                    let (secondary, subordinate) = ((b >> 8) as u8, (b >> 16) as u8);
                    if secondary > bus && !seen[usize::from(secondary)] {
                        seen[usize::from(secondary)] = true;
                        queue.push_back(secondary);
                    }
                    out.last_bus = out.last_bus.max(subordinate.max(secondary));
                    Some((secondary, subordinate))
                } else {
                    None
                };
                out.functions.push(Function {
                    bdf,
                    vendor,
                    device: (id >> 16) as u16,
                    class: read(bdf, CLASS_REVISION) >> 8,
                    bridge,
                });
                if function == 0 && header & 0x80 == 0 {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    /// A machine: functions by (bus, device, function) with their dwords.
    #[derive(Default)]
    struct Machine(BTreeMap<(u8, u8, u8), BTreeMap<u16, u32>>);

    impl Machine {
        fn add(&mut self, b: u8, d: u8, f: u8, vendor: u16, header: u8) -> &mut BTreeMap<u16, u32> {
            let regs = self.0.entry((b, d, f)).or_default();
            regs.insert(VENDOR_DEVICE, 0x1000_0000 | u32::from(vendor));
            regs.insert(HEADER_DWORD, u32::from(header) << 16);
            regs.insert(CLASS_REVISION, 0x0200_0001);
            regs
        }
        fn bridge(&mut self, b: u8, d: u8, secondary: u8, subordinate: u8) {
            let r = self.add(b, d, 0, 0x8086, 1);
            r.insert(
                BUS_NUMBERS,
                u32::from(subordinate) << 16 | u32::from(secondary) << 8 | u32::from(b),
            );
        }
        fn read(&self, bdf: Bdf, off: u16) -> u32 {
            self.0
                .get(&(bdf.bus, bdf.devfn.device(), bdf.devfn.function()))
                .map(|r| r.get(&off).copied().unwrap_or(0))
                .unwrap_or(0xffff_ffff)
        }
    }

    fn names(s: &Scan) -> Vec<alloc::string::String> {
        use alloc::string::ToString;
        s.functions.iter().map(|f| f.bdf.to_string()).collect()
    }

    #[test]
    fn a_q35_like_machine() {
        let mut m = Machine::default();
        m.add(0, 0, 0, 0x8086, 0);
        m.add(0, 5, 0, 0x1234, 0);
        // A multi-function device: 1f.0, 1f.2, 1f.3 (1f.1 absent).
        m.add(0, 0x1f, 0, 0x8086, 0x80);
        m.add(0, 0x1f, 2, 0x8086, 0);
        m.add(0, 0x1f, 3, 0x8086, 0);
        // A root port forwarding buses 1–3 with a NIC behind it.
        m.bridge(0, 2, 1, 3);
        m.add(1, 0, 0, 0x8086, 0);
        let s = scan(|b, o| m.read(b, o));
        assert_eq!(
            names(&s),
            ["00:00.0", "00:02.0", "00:05.0", "00:1f.0", "00:1f.2", "00:1f.3", "01:00.0"]
        );
        assert_eq!(s.last_bus, 3);
        assert_eq!(s.functions[1].bridge, Some((1, 3)));
        assert_eq!(s.functions[2].vendor, 0x1234);
        assert_eq!(s.functions[2].device, 0x1000);
        assert_eq!(s.functions[2].class, 0x02_0000);
    }

    #[test]
    fn a_single_function_device_is_not_probed_further() {
        let mut m = Machine::default();
        m.add(0, 3, 0, 0x8086, 0);
        // Single-function devices may decode every function number as function 0.
        m.add(0, 3, 1, 0x8086, 0);
        assert_eq!(names(&scan(|b, o| m.read(b, o))), ["00:03.0"]);
    }

    #[test]
    fn bridges_pointing_back_do_not_loop() {
        let mut m = Machine::default();
        m.bridge(0, 1, 1, 1);
        // Bus 1's bridge claims bus 0 and then bus 1 again.
        m.bridge(1, 0, 0, 0);
        m.bridge(1, 1, 1, 1);
        let mut reads = 0;
        let s = scan(|b, o| {
            reads += 1;
            m.read(b, o)
        });
        assert_eq!(names(&s), ["00:01.0", "01:00.0", "01:01.0"]);
        assert!(reads < 2 * 256 * 8 * 4, "{reads} reads");
    }

    #[test]
    fn an_empty_machine() {
        let s = scan(|_, _| 0xffff_ffff);
        assert!(s.functions.is_empty());
        assert_eq!(s.last_bus, 0);
    }
}
