//! Finding the channel function of an enclave in sysfs, readying vfio-pci for it, and the
//! fallback mapping through `resourceN` files (no interrupt: notifications are polled).

use super::window::{Function, Window};
use atoll_abi::channel::{self, layout, read_summary, DEVICE_ID, WINDOW_BAR};
use atoll_abi::control::VENDOR_ID;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// A shared mapping of (the start of) a file: a `resourceN` file of the function.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes of `path` (read-only unless `write`).
    pub fn open(path: &Path, len: usize, write: bool) -> io::Result<Mapping> {
        let f = OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        if size < len as u64 {
            return Err(io::Error::other(format!(
                "{} has {size} bytes, {len} expected",
                path.display()
            )));
        }
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of `len` bytes of an open file at least that long;
        // nothing aliases the new pages.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("mmap {}: {e}", path.display()),
            ));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// A window over the mapping. The mapping must outlive it (it is unmapped on drop).
    fn window(&self) -> Window {
        // SAFETY: the mapping is page-aligned and `len` bytes; callers keep the Mapping alive
        // longer than the Window (both fields of one owner, or a local read then dropped).
        unsafe { Window::new(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping `open` made, unmapped once; its windows are gone by now.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn id(p: &Path, f: &str) -> Option<u16> {
    let t = fs::read_to_string(p.join(f)).ok()?;
    u16::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok()
}

/// The channel functions under `sys` (`/sys`), sorted by address.
pub fn functions(sys: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = sys.join("bus/pci/devices");
    let entries = fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| id(p, "vendor") == Some(VENDOR_ID) && id(p, "device") == Some(DEVICE_ID))
        .collect();
    found.sort();
    Ok(found)
}

/// Turns on the function's memory decoding when no driver did (pci_enable_device).
fn enable(dev: &Path) {
    let f = dev.join("enable");
    if fs::read_to_string(&f).is_ok_and(|v| v.trim() == "0") {
        let _ = fs::write(&f, "1");
    }
}

/// Which enclave a function's window names now, with its device count and generation:
/// only the header page of BAR2 is mapped (read-only) and unmapped again.
pub fn window_owner(dev: &Path) -> io::Result<(String, usize, u32)> {
    enable(dev);
    let m = Mapping::open(
        &dev.join(format!("resource{WINDOW_BAR}")),
        layout::RINGS,
        false,
    )?;
    let w = m.window();
    let mut buf = [0u8; layout::NAME_MAX];
    let (count, generation, name) =
        read_summary(&w, &mut buf).map_err(|e| io::Error::other(format!("header: {e:?}")))?;
    Ok((name.to_string(), count, generation))
}

/// Finds the function whose window names `enclave` (the first, by address).
pub fn find_enclave(sys: &Path, enclave: &str) -> io::Result<PathBuf> {
    let all = functions(sys)?;
    if all.is_empty() {
        return Err(io::Error::other(format!(
            "no channel function {VENDOR_ID:04x}:{DEVICE_ID:04x} in {}/bus/pci/devices",
            sys.display()
        )));
    }
    let mut seen = Vec::new();
    for f in all {
        match window_owner(&f) {
            Ok((name, _, _)) if name == enclave => return Ok(f),
            Ok((name, _, _)) => seen.push(format!("{}: {name}", base(&f))),
            Err(e) => seen.push(format!("{}: {e}", base(&f))),
        }
    }
    Err(io::Error::other(format!(
        "no channel function holds enclave {enclave:?} ({})",
        seen.join("; ")
    )))
}

/// The last path component (the PCI address).
pub fn base(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The function's bound driver's name, if any.
pub fn driver(dev: &Path) -> Option<String> {
    fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Whether vfio offers no-IOMMU mode now, after trying to turn it on: loads `vfio` with
/// `enable_unsafe_noiommu_mode=1` and `vfio-pci` when the parameter is absent or off (or sets
/// it when writable). Steps go to `log`.
pub fn ready_noiommu(sys: &Path, log: &mut dyn FnMut(String)) -> bool {
    let param = sys.join("module/vfio/parameters/enable_unsafe_noiommu_mode");
    let on = |p: &Path| fs::read_to_string(p).is_ok_and(|v| v.trim() == "Y" || v.trim() == "1");
    if !on(&param) {
        if param.exists() {
            if fs::write(&param, "Y").is_ok() {
                log("vfio: enable_unsafe_noiommu_mode set to Y".into());
            }
        } else {
            let r = std::process::Command::new("modprobe")
                .args(["vfio", "enable_unsafe_noiommu_mode=1"])
                .status();
            log(format!("modprobe vfio enable_unsafe_noiommu_mode=1: {r:?}"));
        }
    }
    if !sys.join("bus/pci/drivers/vfio-pci").exists() {
        let r = std::process::Command::new("modprobe")
            .arg("vfio-pci")
            .status();
        log(format!("modprobe vfio-pci: {r:?}"));
    }
    on(&param) && sys.join("bus/pci/drivers/vfio-pci").exists()
}

/// Binds the function to vfio-pci (driver_override, unbinding another driver first).
pub fn bind_vfio(sys: &Path, dev: &Path, log: &mut dyn FnMut(String)) -> io::Result<()> {
    bind_driver(sys, dev, "vfio-pci", log)
}

/// Binds the function to `name` (driver_override, unbinding another driver first).
pub fn bind_driver(
    sys: &Path,
    dev: &Path,
    name: &str,
    log: &mut dyn FnMut(String),
) -> io::Result<()> {
    let addr = base(dev);
    let cur = driver(dev);
    if cur.as_deref() == Some(name) {
        return Ok(());
    }
    let w = |p: PathBuf, v: &str| {
        fs::write(&p, v).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    w(dev.join("driver_override"), name)?;
    if let Some(d) = cur {
        w(dev.join("driver/unbind"), &addr)?;
        log(format!("{addr}: unbound from {d}"));
    }
    w(sys.join("bus/pci/drivers").join(name).join("bind"), &addr)?;
    log(format!("{addr}: bound to {name}"));
    Ok(())
}

/// The fallback: BAR0 and BAR2 mapped through sysfs, notifications polled.
pub struct Sysfs {
    // `window` points into `_win`: declared first so it is dropped before the unmapping.
    window: Window,
    regs: Window,
    _win: Mapping,
    _regs: Mapping,
    name: String,
}

impl Sysfs {
    /// Maps the function at `dev` (its BAR0 and its BAR2's `window_len` bytes).
    pub fn open(dev: &Path, window_len: usize) -> io::Result<Sysfs> {
        enable(dev);
        let regs = Mapping::open(
            &dev.join("resource0"),
            channel::REGISTERS_SIZE as usize,
            true,
        )?;
        let win = Mapping::open(&dev.join(format!("resource{WINDOW_BAR}")), window_len, true)?;
        Ok(Sysfs {
            window: win.window(),
            regs: regs.window(),
            _win: win,
            _regs: regs,
            name: base(dev),
        })
    }
}

impl Function for Sysfs {
    fn window(&self) -> &Window {
        &self.window
    }

    fn read_reg(&mut self, offset: u64) -> io::Result<u32> {
        use atoll_abi::channel::SharedMem;
        Ok(self.regs.load_acquire(offset as usize))
    }

    fn write_reg(&mut self, offset: u64, value: u32) -> io::Result<()> {
        use atoll_abi::channel::SharedMem;
        self.regs.store_release(offset as usize, value);
        Ok(())
    }

    fn irq_fd(&self) -> Option<RawFd> {
        None
    }

    fn ack_irq(&mut self) {}

    fn describe(&self) -> String {
        format!(
            "{} through sysfs resource files (no interrupt: notifications polled every 10 ms)",
            self.name
        )
    }
}
