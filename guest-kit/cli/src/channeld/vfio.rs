//! The preferred way to reach a channel function: vfio-pci in no-IOMMU mode (in-tree, no
//! out-of-tree module). The window is an mmap of the device fd at BAR2's region offset, the
//! registers are pread/pwrite at BAR0's region offset, and the function's MSI is an eventfd.
//!
//! The ioctl numbers and structures follow the kernel's `include/uapi/linux/vfio.h` (stable
//! UAPI): every ioctl is `_IO(';', 100 + n)` and the caller passes `argsz` in the structure.
//! No-IOMMU mode needs `vfio`'s `enable_unsafe_noiommu_mode=1`; the group file is then
//! `/dev/vfio/noiommu-N` and the only "IOMMU" type the container accepts is
//! [`NOIOMMU_IOMMU`]. The channel function does no DMA, so having no IOMMU costs nothing.

use super::window::{Function, Window};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// vfio.h: `VFIO_TYPE` (';').
const VFIO_TYPE: u64 = b';' as u64;
/// vfio.h: `VFIO_BASE`.
const VFIO_BASE: u64 = 100;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: no direction or size bits (vfio passes sizes in argsz).
pub const fn vfio_io(n: u64) -> u64 {
    (VFIO_TYPE << 8) | (VFIO_BASE + n)
}

/// `VFIO_GET_API_VERSION`: returns [`API_VERSION`].
pub const GET_API_VERSION: u64 = vfio_io(0);
/// `VFIO_CHECK_EXTENSION`: argument an IOMMU type, returns > 0 when supported.
pub const CHECK_EXTENSION: u64 = vfio_io(1);
/// `VFIO_SET_IOMMU` (on the container).
pub const SET_IOMMU: u64 = vfio_io(2);
/// `VFIO_GROUP_GET_STATUS`: [`GroupStatus`].
pub const GROUP_GET_STATUS: u64 = vfio_io(3);
/// `VFIO_GROUP_SET_CONTAINER`: argument a pointer to the container fd.
pub const GROUP_SET_CONTAINER: u64 = vfio_io(4);
/// `VFIO_GROUP_GET_DEVICE_FD`: argument the device's name (a C string).
pub const GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
/// `VFIO_DEVICE_GET_REGION_INFO`: [`RegionInfo`].
pub const DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
/// `VFIO_DEVICE_SET_IRQS`: [`IrqSet`] followed by the data.
pub const DEVICE_SET_IRQS: u64 = vfio_io(10);

/// `VFIO_API_VERSION`.
pub const API_VERSION: i32 = 0;
/// `VFIO_NOIOMMU_IOMMU`.
pub const NOIOMMU_IOMMU: u64 = 8;
/// `VFIO_GROUP_FLAGS_VIABLE`.
pub const GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_READ`.
pub const REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
pub const REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// `VFIO_PCI_BAR0_REGION_INDEX` (BAR n is index n).
pub const PCI_BAR0_REGION_INDEX: u32 = 0;
/// `VFIO_PCI_MSI_IRQ_INDEX` (after INTX = 0).
pub const PCI_MSI_IRQ_INDEX: u32 = 1;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupStatus {
    /// Bytes of the structure.
    pub argsz: u32,
    /// `VFIO_GROUP_FLAGS_*`.
    pub flags: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionInfo {
    /// Bytes of the structure.
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// The region (BAR n: n).
    pub index: u32,
    /// Offset of the first capability (unused here).
    pub cap_offset: u32,
    /// The region's bytes.
    pub size: u64,
    /// Where the region starts in the device fd (for pread/pwrite/mmap).
    pub offset: u64,
}

/// `struct vfio_irq_set` with one eventfd as its data (`data[]` follows `count`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IrqSetEventfd {
    /// Bytes of the structure with its data.
    pub argsz: u32,
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// The interrupt index (`VFIO_PCI_MSI_IRQ_INDEX`).
    pub index: u32,
    /// The first vector.
    pub start: u32,
    /// How many vectors.
    pub count: u32,
    /// The eventfd of vector `start`.
    pub fd: i32,
}

/// Bytes of `struct vfio_irq_set` without its data.
pub const IRQ_SET_HEADER: usize = 20;

fn ioctl_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The function's IOMMU group number (`iommu_group` is a link to `.../iommu_groups/N`).
pub fn group_of(dev: &Path) -> io::Result<String> {
    let link = fs::read_link(dev.join("iommu_group"))?;
    link.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("{}: odd iommu_group link", dev.display())))
}

/// The group file: `/dev/vfio/noiommu-N` in no-IOMMU mode, `/dev/vfio/N` otherwise.
pub fn group_file(dev_dir: &Path, group: &str) -> Option<PathBuf> {
    [format!("noiommu-{group}"), group.to_string()]
        .into_iter()
        .map(|n| dev_dir.join(n))
        .find(|p| p.exists())
}

/// The function through vfio: its fds, the window's mapping and the MSI's eventfd.
pub struct Vfio {
    window: Window,
    map_len: usize,
    regs_offset: u64,
    device: File,
    eventfd: OwnedFd,
    // Held for the device's lifetime: closing the group or container ends the device's use.
    _group: File,
    _container: File,
    name: String,
}

impl Vfio {
    /// Opens function `address` (already bound to vfio-pci) in IOMMU group `group`, maps
    /// `window_len` bytes of BAR `window_bar` and routes its MSI to an eventfd.
    pub fn open(
        address: &str,
        group_path: &Path,
        window_bar: u32,
        window_len: usize,
    ) -> io::Result<Vfio> {
        let rw = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let container = rw(Path::new("/dev/vfio/vfio"))?;
        let cfd = container.as_raw_fd();
        // SAFETY: an ioctl without argument on a descriptor this function owns.
        let v = unsafe { libc::ioctl(cfd, GET_API_VERSION as _) };
        if v != API_VERSION {
            return Err(io::Error::other(format!(
                "vfio API version {v}, expected {API_VERSION}"
            )));
        }
        // SAFETY: an ioctl whose argument is an integer, on our descriptor.
        let ext = unsafe { libc::ioctl(cfd, CHECK_EXTENSION as _, NOIOMMU_IOMMU) };
        if ext <= 0 {
            return Err(io::Error::other(
                "vfio has no no-IOMMU support (enable_unsafe_noiommu_mode is off)",
            ));
        }
        let group = rw(group_path)?;
        let gfd = group.as_raw_fd();
        let mut st = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes at most argsz bytes into `st`, a live local of that size.
        if unsafe { libc::ioctl(gfd, GROUP_GET_STATUS as _, &mut st) } < 0 {
            return Err(ioctl_err("VFIO_GROUP_GET_STATUS"));
        }
        if st.flags & GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other(format!(
                "{}: group not viable (another function of it is bound to a host driver)",
                group_path.display()
            )));
        }
        // SAFETY: the argument points at a live i32 holding the container's descriptor.
        if unsafe { libc::ioctl(gfd, GROUP_SET_CONTAINER as _, &cfd) } < 0 {
            return Err(ioctl_err("VFIO_GROUP_SET_CONTAINER"));
        }
        // SAFETY: an ioctl whose argument is an integer, on our descriptor.
        if unsafe { libc::ioctl(cfd, SET_IOMMU as _, NOIOMMU_IOMMU) } < 0 {
            return Err(ioctl_err("VFIO_SET_IOMMU(no-IOMMU)"));
        }
        let cname = std::ffi::CString::new(address).map_err(io::Error::other)?;
        // SAFETY: the argument is a NUL-terminated string that outlives the call.
        let dfd = unsafe { libc::ioctl(gfd, GROUP_GET_DEVICE_FD as _, cname.as_ptr()) };
        if dfd < 0 {
            return Err(ioctl_err("VFIO_GROUP_GET_DEVICE_FD"));
        }
        // SAFETY: `dfd` is a new descriptor the kernel just gave us; File takes sole ownership.
        let device = unsafe { File::from_raw_fd(dfd) };
        let region = |index: u32| -> io::Result<RegionInfo> {
            let mut r = RegionInfo {
                argsz: std::mem::size_of::<RegionInfo>() as u32,
                index,
                ..Default::default()
            };
            // SAFETY: the kernel writes at most argsz bytes into `r`, a live local.
            if unsafe { libc::ioctl(dfd, DEVICE_GET_REGION_INFO as _, &mut r) } < 0 {
                return Err(ioctl_err(&format!("VFIO_DEVICE_GET_REGION_INFO({index})")));
            }
            Ok(r)
        };
        let regs = region(PCI_BAR0_REGION_INDEX)?;
        let need = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        if regs.flags & need != need || regs.size < atoll_abi::channel::REGISTERS_SIZE {
            return Err(io::Error::other(format!("BAR0 region unusable: {regs:?}")));
        }
        let win = region(window_bar)?;
        if win.flags & REGION_INFO_FLAG_MMAP == 0 || win.size < window_len as u64 {
            return Err(io::Error::other(format!(
                "BAR{window_bar} region cannot be mapped: {win:?}"
            )));
        }
        let offset = libc::off_t::try_from(win.offset).map_err(io::Error::other)?;
        // SAFETY: a fresh shared mapping of `window_len` bytes of the device's BAR2 region,
        // which the kernel checked against the region's size; nothing aliases it yet.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                window_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                dfd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ioctl_err("mmap of the window"));
        }
        // SAFETY: the mapping is page-aligned, `window_len` bytes, and unmapped only in Drop
        // after the Window (a field of the same struct) is no longer used.
        let window = unsafe { Window::new(ptr.cast(), window_len) };
        // SAFETY: eventfd with valid flags; returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(ioctl_err("eventfd"));
        }
        // SAFETY: a new descriptor we own alone.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        let set = IrqSetEventfd {
            argsz: std::mem::size_of::<IrqSetEventfd>() as u32,
            flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            index: PCI_MSI_IRQ_INDEX,
            start: 0,
            count: 1,
            fd: efd,
        };
        let me = Vfio {
            window,
            map_len: window_len,
            regs_offset: regs.offset,
            device,
            eventfd,
            _group: group,
            _container: container,
            name: address.to_string(),
        };
        // SAFETY: the kernel reads argsz bytes of `set`, a live local of that size.
        if unsafe { libc::ioctl(dfd, DEVICE_SET_IRQS as _, &set) } < 0 {
            return Err(ioctl_err("VFIO_DEVICE_SET_IRQS(MSI)"));
        }
        Ok(me)
    }
}

impl Drop for Vfio {
    fn drop(&mut self) {
        // SAFETY: the mapping `open` made, unmapped once; the Window pointing into it is not
        // used again (it is dropped with self).
        unsafe { libc::munmap(self.window_ptr(), self.map_len) };
    }
}

impl Vfio {
    fn window_ptr(&self) -> *mut libc::c_void {
        self.window.as_ptr().cast()
    }
}

impl Function for Vfio {
    fn window(&self) -> &Window {
        &self.window
    }

    fn read_reg(&mut self, offset: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.device
            .read_exact_at(&mut b, self.regs_offset + offset)?;
        Ok(u32::from_le_bytes(b))
    }

    fn write_reg(&mut self, offset: u64, value: u32) -> io::Result<()> {
        self.device
            .write_all_at(&value.to_le_bytes(), self.regs_offset + offset)
    }

    fn irq_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }

    fn ack_irq(&mut self) {
        super::window::drain_eventfd(self.eventfd.as_raw_fd());
    }

    fn describe(&self) -> String {
        format!("{} through vfio-pci (no-IOMMU), MSI by eventfd", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn ioctl_numbers_are_vfio_h_s() {
        // _IO(';', 100 + n): ';' is 0x3b.
        assert_eq!(GET_API_VERSION, 0x3b64);
        assert_eq!(CHECK_EXTENSION, 0x3b65);
        assert_eq!(SET_IOMMU, 0x3b66);
        assert_eq!(GROUP_GET_STATUS, 0x3b67);
        assert_eq!(GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(DEVICE_SET_IRQS, 0x3b6e);
    }

    #[test]
    fn structures_have_vfio_h_s_layout() {
        assert_eq!(size_of::<GroupStatus>(), 8);
        assert_eq!(size_of::<RegionInfo>(), 32);
        assert_eq!(offset_of!(RegionInfo, index), 8);
        assert_eq!(offset_of!(RegionInfo, cap_offset), 12);
        assert_eq!(offset_of!(RegionInfo, size), 16);
        assert_eq!(offset_of!(RegionInfo, offset), 24);
        assert_eq!(offset_of!(IrqSetEventfd, index), 8);
        assert_eq!(offset_of!(IrqSetEventfd, start), 12);
        assert_eq!(offset_of!(IrqSetEventfd, count), 16);
        // data[] starts right after count: the eventfd sits there, with no padding.
        assert_eq!(offset_of!(IrqSetEventfd, fd), IRQ_SET_HEADER);
        assert_eq!(size_of::<IrqSetEventfd>(), IRQ_SET_HEADER + 4);
    }

    #[test]
    fn the_group_is_found_from_the_iommu_group_link() {
        let t = crate::tests::TempDir::new();
        let dev = t.0.join("0000:00:01.1");
        fs::create_dir_all(&dev).unwrap();
        std::os::unix::fs::symlink("../../../kernel/iommu_groups/7", dev.join("iommu_group"))
            .unwrap();
        assert_eq!(group_of(&dev).unwrap(), "7");
        let vf = t.0.join("dev-vfio");
        fs::create_dir_all(&vf).unwrap();
        assert_eq!(group_file(&vf, "7"), None);
        fs::write(vf.join("7"), "").unwrap();
        assert_eq!(group_file(&vf, "7"), Some(vf.join("7")));
        // No-IOMMU's name wins when both exist.
        fs::write(vf.join("noiommu-7"), "").unwrap();
        assert_eq!(group_file(&vf, "7"), Some(vf.join("noiommu-7")));
    }
}
