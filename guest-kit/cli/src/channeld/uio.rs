//! The channel function's INTx through `uio_pci_generic`, for host kernels without vfio's
//! no-IOMMU mode (Debian's are built without `CONFIG_VFIO_NOIOMMU`).
//!
//! `uio_pci_generic` (in-tree) takes the function's legacy interrupt: its handler masks INTx
//! (command bit 10) when the status register says the function asserts it, and `/dev/uioN`
//! becomes readable (a 4-byte event count); writing a 4-byte 1 unmasks INTx again. The BARs
//! are still mapped through sysfs `resourceN` files. atoll learns which GSI the host's OS routed
//! pin A to from the channel's `INTX_GSI` register (the daemon copies `/sys/.../irq` there) and
//! raises that GSI's I/O APIC entry while PENDING is not zero.

use super::sysfs::{self, Sysfs};
use super::window::{Function, Window};
use atoll_abi::channel::reg;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// The driver's name in sysfs.
pub const DRIVER: &str = "uio_pci_generic";

/// Loads `uio_pci_generic` when it is not there; whether it is now.
pub fn ready(sys: &Path, log: &mut dyn FnMut(String)) -> bool {
    let drv = sys.join("bus/pci/drivers").join(DRIVER);
    if !drv.exists() {
        let r = std::process::Command::new("modprobe").arg(DRIVER).status();
        log(format!("modprobe {DRIVER}: {r:?}"));
    }
    drv.exists()
}

/// The GSI the host's OS gave the function's INTx (`/sys/.../irq`; 0: none).
pub fn irq_of(dev: &Path) -> io::Result<u32> {
    let p = dev.join("irq");
    let t = fs::read_to_string(&p)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
    t.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{}: not a number: {t:?}", p.display())))
}

/// The `/dev/uioN` of the function bound to uio (`dev/uio/uioN`).
pub fn node_of(dev: &Path, devfs: &Path) -> io::Result<PathBuf> {
    let dir = dev.join("uio");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("uio"))
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .map(|n| devfs.join(n))
        .ok_or_else(|| io::Error::other(format!("{}: no uio device", dir.display())))
}

/// BARs through sysfs, the interrupt through `/dev/uioN`.
pub struct Uio {
    inner: Sysfs,
    node: File,
    name: String,
    gsi: u32,
}

impl Uio {
    /// Binds `dev` to uio (driver_override), maps its BARs, tells atoll the GSI and unmasks
    /// INTx. `devfs` is `/dev`.
    pub fn open(
        sys: &Path,
        dev: &Path,
        devfs: &Path,
        window_len: usize,
        log: &mut dyn FnMut(String),
    ) -> io::Result<Uio> {
        sysfs::bind_driver(sys, dev, DRIVER, log)?;
        let gsi = irq_of(dev)?;
        if gsi == 0 {
            return Err(io::Error::other(format!(
                "{}: the host routed no interrupt to pin A (irq 0)",
                sysfs::base(dev)
            )));
        }
        let path = node_of(dev, devfs)?;
        let node = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut u = Uio {
            inner: Sysfs::open(dev, window_len)?,
            node,
            name: sysfs::base(dev),
            gsi,
        };
        u.inner.write_reg(reg::INTX_GSI, gsi)?;
        if u.inner.read_reg(reg::INTX_ROUTED)? != 1 {
            return Err(io::Error::other(format!(
                "atoll cannot raise GSI {gsi} on this machine (it does not trap the I/O APIC \
                 without interrupt remapping)"
            )));
        }
        u.rearm();
        Ok(u)
    }
}

impl Function for Uio {
    fn window(&self) -> &Window {
        self.inner.window()
    }

    fn read_reg(&mut self, offset: u64) -> io::Result<u32> {
        self.inner.read_reg(offset)
    }

    fn write_reg(&mut self, offset: u64, value: u32) -> io::Result<()> {
        self.inner.write_reg(offset, value)
    }

    fn irq_fd(&self) -> Option<RawFd> {
        Some(self.node.as_raw_fd())
    }

    fn ack_irq(&mut self) {
        let mut count = [0u8; 4];
        let _ = (&self.node).read(&mut count);
    }

    fn rearm(&mut self) {
        // uio_pci_generic's irqcontrol: 1 clears the interrupt-disable bit again.
        let _ = (&self.node).write(&1u32.to_ne_bytes());
    }

    fn describe(&self) -> String {
        format!(
            "{} through sysfs resource files, INTx (GSI {}) through {DRIVER}",
            self.name, self.gsi
        )
    }
}
