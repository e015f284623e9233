//! The channel function's INTx through `uio_pci_generic`, for host kernels without vfio's
//! no-IOMMU mode (Debian's are built without `CONFIG_VFIO_NOIOMMU`).
//!
//! `uio_pci_generic` (in-tree) takes the function's legacy interrupt: its handler masks INTx
//! (command bit 10) when the status register says the function asserts it, and `/dev/uioN`
//! becomes readable (a 4-byte event count). The driver has no `irqcontrol` (a write to
//! `/dev/uioN` fails with ENOSYS, and the line would stay masked after the first interrupt):
//! the daemon unmasks by clearing that bit itself through the function's sysfs `config` file,
//! as the kernel's UIO HOWTO does for this driver. The BARs
//! are still mapped through sysfs `resourceN` files. atoll learns which GSI the host's OS routed
//! pin A to from the channel's `INTX_GSI` register (the daemon copies `/sys/.../irq` there) and
//! raises that GSI's I/O APIC entry while PENDING is not zero.

use super::sysfs::{self, Sysfs};
use super::window::{Function, Window};
use atoll_abi::channel::reg;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// The driver's name in sysfs.
pub const DRIVER: &str = "uio_pci_generic";

/// The command register's high byte in configuration space (PCI 3.0 §6.2.2: bits 15:8).
pub const COMMAND_HIGH: u64 = 5;
/// Interrupt Disable (command bit 10) in that byte.
pub const INTX_DISABLE_HIGH: u8 = 1 << 2;

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
    /// The function's sysfs `config` (its command register unmasks INTx).
    config: File,
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
        let mut inner = Sysfs::open(dev, window_len)?;
        inner.write_reg(reg::INTX_GSI, gsi)?;
        if inner.read_reg(reg::INTX_ROUTED)? != 1 {
            return Err(io::Error::other(format!(
                "atoll cannot raise GSI {gsi} on this machine (it does not trap the I/O APIC \
                 without interrupt remapping)"
            )));
        }
        let cfg = dev.join("config");
        let config = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&cfg)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cfg.display())))?;
        let mut u = Uio {
            inner,
            node,
            config,
            name: sysfs::base(dev),
            gsi,
        };
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
        // Interrupt Disable cleared in the command register, the rest of its byte kept. The
        // kernel serialises this write with the driver's handler (which sets the bit), so an
        // interrupt between the read and the write is masked and signalled before it.
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 1];
        if self.config.read_exact_at(&mut b, COMMAND_HIGH).is_ok() && b[0] & INTX_DISABLE_HIGH != 0
        {
            let _ = self
                .config
                .write_all_at(&[b[0] & !INTX_DISABLE_HIGH], COMMAND_HIGH);
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} through sysfs resource files, INTx (GSI {}) through {DRIVER}",
            self.name, self.gsi
        )
    }
}
