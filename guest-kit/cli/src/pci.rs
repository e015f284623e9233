//! PCI functions as the host's sysfs shows them (`/sys/bus/pci/devices/SSSS:BB:DD.F`): their
//! addresses, the host driver bound to one, taking one away from the host's drivers, and an
//! SR-IOV physical function's virtual functions (`virtfnN` links).
//!
//! Every path is under a [`Root`], so tests run against a fake sysfs tree. Every write is
//! recorded in [`Sysfs::writes`] (the order matters: `sriov_drivers_autoprobe` before
//! `sriov_numvfs`, `driver_override` before `unbind`).

use crate::client::{Error, Result};
use crate::cpus::Root;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A PCI function's address: segment, bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// The PCI segment (domain).
    pub segment: u16,
    /// The bus.
    pub bus: u8,
    /// The device (≤ 0x1f).
    pub device: u8,
    /// The function (≤ 7).
    pub function: u8,
}

impl PciAddress {
    /// Parses `SSSS:BB:DD.F` or `BB:DD.F` (hex; the segment then is 0), the forms atoll's
    /// descriptions take and `lspci` prints.
    pub fn parse(s: &str) -> Option<PciAddress> {
        let parts: Vec<&str> = s.split(':').collect();
        let (seg, bus, df) = match parts.as_slice() {
            [seg, bus, df] => (*seg, *bus, *df),
            [bus, df] => ("0", *bus, *df),
            _ => return None,
        };
        let (dev, func) = df.split_once('.')?;
        let hex = |x: &str, max: u32| {
            // from_str_radix takes a sign: "+1" is no PCI address.
            (!x.is_empty() && x.len() <= 4 && x.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(x, 16).ok())
                .flatten()
                .filter(|v| *v <= max)
        };
        Some(PciAddress {
            segment: hex(seg, 0xffff)? as u16,
            bus: hex(bus, 0xff)? as u8,
            device: hex(dev, 0x1f)? as u8,
            function: hex(func, 7)? as u8,
        })
    }
}

impl FromStr for PciAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PciAddress::parse(s).ok_or_else(|| {
            format!("{s:?} is not a PCI address SSSS:BB:DD.F or BB:DD.F (hex, device ≤ 1f, function ≤ 7)")
        })
    }
}

/// The form sysfs names functions by (`0000:01:00.0`).
impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// The host's sysfs, reads and recorded writes.
pub struct Sysfs<'a> {
    root: &'a Root,
    /// Every write so far: the path below the root's `sys/` and the value, in order.
    pub writes: Vec<(String, String)>,
}

impl<'a> Sysfs<'a> {
    /// Sysfs under `root`.
    pub fn new(root: &'a Root) -> Self {
        Sysfs {
            root,
            writes: Vec::new(),
        }
    }

    /// The directory of function `a` (`/sys/bus/pci/devices/A`, a link the kernel makes).
    pub fn function(&self, a: PciAddress) -> PathBuf {
        self.root.sys().join(format!("bus/pci/devices/{a}"))
    }

    /// Whether the host's Linux knows function `a`.
    pub fn exists(&self, a: PciAddress) -> bool {
        self.function(a).is_dir()
    }

    /// The value of attribute `name` of `a`, trimmed; None if there is no such file.
    pub fn read(&self, a: PciAddress, name: &str) -> Result<Option<String>> {
        let p = self.function(a).join(name);
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    /// A number attribute (decimal, or hex with 0x: `flags` is).
    pub fn read_number(&self, a: PciAddress, name: &str) -> Result<Option<u64>> {
        let Some(s) = self.read(a, name)? else {
            return Ok(None);
        };
        let n = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        };
        n.map(Some).ok_or_else(|| {
            Error::Other(format!(
                "{}: {s:?} is not a number",
                self.function(a).join(name).display()
            ))
        })
    }

    /// Writes `value` to attribute `name` of `a`. The file must exist (sysfs makes no new
    /// files; in a fake tree a missing one is the same mistake).
    pub fn write(&mut self, a: PciAddress, name: &str, value: &str) -> Result<()> {
        let p = self.function(a).join(name);
        let r = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .and_then(|mut f| f.write_all(value.as_bytes()));
        self.writes.push((format!("{a}/{name}"), value.to_string()));
        r.map_err(|e| Error::io(p, e))
    }

    /// The name of the host driver bound to `a` (the `driver` link's last component).
    pub fn driver(&self, a: PciAddress) -> Option<String> {
        link_name(&self.function(a).join("driver"))
    }

    /// The address of virtual function `index` of physical function `pf` (its `virtfnN` link).
    pub fn virtfn(&self, pf: PciAddress, index: u32) -> Result<Option<PciAddress>> {
        let link = self.function(pf).join(format!("virtfn{index}"));
        let Some(name) = link_name(&link) else {
            return Ok(None);
        };
        PciAddress::parse(&name).map(Some).ok_or_else(|| {
            Error::Other(format!(
                "{}: points to {name:?}, no PCI address",
                link.display()
            ))
        })
    }

    /// The network interfaces of `a` (its `net/` directory), sorted.
    pub fn interfaces(&self, a: PciAddress) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.function(a).join("net"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// An attribute of interface `ifname` of `a` (`net/IF/NAME`), trimmed.
    pub fn interface_attr(&self, a: PciAddress, ifname: &str, name: &str) -> Result<u64> {
        self.read_number(a, &format!("net/{ifname}/{name}"))?
            .ok_or_else(|| {
                Error::Other(format!(
                    "{}: missing",
                    self.function(a)
                        .join("net")
                        .join(ifname)
                        .join(name)
                        .display()
                ))
            })
    }

    /// Keeps every host driver off `a` and unbinds the one bound, if any; returns its name.
    ///
    /// `driver_override` is written first, with `none`: the PCI core then matches `a` only to
    /// a driver of that name, and there is none, so neither a module loaded later nor
    /// `drivers_probe` binds it again while an enclave owns it (Documentation/ABI/testing/
    /// sysfs-bus-pci, "driver_override": a name such as "none" opts a device out of binding).
    /// Writing an empty line to `driver_override` gives the function back to ordinary
    /// matching.
    pub fn take_from_host(&mut self, a: PciAddress) -> Result<Option<String>> {
        if self.read(a, "driver_override")?.as_deref() != Some("none") {
            self.write(a, "driver_override", "none")?;
        }
        let Some(driver) = self.driver(a) else {
            return Ok(None);
        };
        // The driver's own `unbind` file takes the address of the function to release.
        let p = self.function(a).join("driver/unbind");
        let r = fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|mut f| f.write_all(a.to_string().as_bytes()));
        self.writes
            .push((format!("{a}/driver/unbind"), a.to_string()));
        r.map_err(|e| Error::io(p, e))?;
        Ok(Some(driver))
    }
}

/// The last component of where `link` points; None if it is no link.
fn link_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    Some(target.file_name()?.to_str()?.to_string())
}
