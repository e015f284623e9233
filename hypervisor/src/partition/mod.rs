//! Building an enclave: its RAM from the frame pool (2 MiB-aligned, zeroed), its guest image
//! loaded into that RAM, and its EPT mapping exactly that RAM — nothing of atoll's and nothing
//! of another enclave (invariant 1).
//!
//! Physical memory is reached through [`PhysWindow`], the identity map on the target and a
//! buffer in host tests, so the whole construction is tested on the host.
//!
//! * [`config`]: enclave descriptions (TOML), checked with the field and the reason.
//! * [`loader`]: guest images (ELF, real mode) and the boot state a vCPU starts from.
//! * [`linux`]: the Linux 64-bit boot protocol (bzImage, boot_params, E820, initrd).
//! * [`host_memory`]: the root partition's E820 and its 1:1 second-stage mapping plan (all RAM
//!   and MMIO but atoll's memory, the enclave pool and what atoll owns).
//! * [`machine`]: the machine description (TOML): the host's Linux, the enclave pool and the
//!   boot-time enclaves, checked with the field and the reason (not booted yet).
//! * [`table`]: the partition table — each enclave's slot (waiting, built, running, ended,
//!   failed, reclaimed) with its RAM, its built state and its report.

pub mod config;
pub mod host;
pub mod host_memory;
pub mod linux;
pub mod loader;
pub mod machine;
pub mod table;

use crate::machine::frames::{FrameAllocator, FrameError, FRAME_SIZE};
use atoll_vcpu::GuestRam;
use boot::{GuestPhysAddr, HostPhysAddr, PhysRange};
use config::{EnclaveConfig, EntryMode};
use core::fmt;
use ept::{EptError, EptFormat, Format, FrameSource, MemType, PageSize, Perms, Tables};
use loader::{BootState, LoadError};
use spin::Mutex;

/// Enclave RAM alignment: lets EPT use 2 MiB pages (1 GiB pages where the size allows).
pub const RAM_ALIGN: u64 = 2 << 20;

/// Access to host-physical memory.
pub trait PhysWindow: Clone {
    /// A pointer to the byte at `pa`, valid for `len` bytes.
    fn ptr(&self, pa: HostPhysAddr, len: u64) -> *mut u8;
}

/// The identity map: physical address = virtual address (atoll's own page tables).
#[derive(Clone, Copy, Debug)]
pub struct Identity;

impl PhysWindow for Identity {
    fn ptr(&self, pa: HostPhysAddr, _len: u64) -> *mut u8 {
        pa.as_u64() as *mut u8
    }
}

/// EPT table frames from atoll's frame pool. The pool's lock is taken only while building or
/// tearing down an enclave, never on an exit path.
pub struct PoolFrames<'a, W: PhysWindow> {
    pool: &'a Mutex<FrameAllocator>,
    window: W,
}

impl<'a, W: PhysWindow> PoolFrames<'a, W> {
    /// Frames from `pool`, reached through `window`.
    pub fn new(pool: &'a Mutex<FrameAllocator>, window: W) -> Self {
        Self { pool, window }
    }
}

// SAFETY: frames come from the pool, which never hands out a frame twice; `table` points at
// the frame's own 4 KiB through the window, which stays valid while the frame is allocated; atoll
// keeps no reference to table memory.
unsafe impl<W: PhysWindow> FrameSource for PoolFrames<'_, W> {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        let frame = self.pool.lock().allocate(1, FRAME_SIZE).ok()?.start;
        // SAFETY: the frame was just allocated to us and the window maps its 4 KiB.
        unsafe {
            core::ptr::write_bytes(self.window.ptr(frame, FRAME_SIZE), 0, FRAME_SIZE as usize)
        };
        Some(frame)
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        let _ = self
            .pool
            .lock()
            .free(PhysRange::from_len(frame, FRAME_SIZE));
    }

    fn table(&mut self, frame: HostPhysAddr) -> *mut [u64; 512] {
        self.window.ptr(frame, FRAME_SIZE).cast()
    }
}

/// Why an enclave could not be built. Nothing is left allocated when this is returned.
#[derive(Debug)]
pub enum PartitionError {
    /// No RAM for it.
    Memory(FrameError),
    /// Its image does not load.
    Load(LoadError),
    /// Its EPT could not be built.
    Ept(EptError),
    /// Its Linux kernel, initrd or platform tables do not load.
    Linux(alloc::string::String),
}

impl fmt::Display for PartitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionError::Memory(e) => write!(f, "RAM: {e}"),
            PartitionError::Load(e) => write!(f, "image: {e}"),
            PartitionError::Ept(e) => write!(f, "EPT: {e}"),
            PartitionError::Linux(e) => write!(f, "{e}"),
        }
    }
}

/// A built enclave, ready to run.
///
/// `Fmt` is the second-stage format: [`EptFormat`] for VMX, [`ept::NptFormat`] for SVM.
pub struct Enclave<'a, W: PhysWindow, Fmt: Format = EptFormat> {
    /// Its description.
    pub config: EnclaveConfig,
    /// Its RAM (guest-physical 0 is `ram.start`).
    pub ram: PhysRange,
    /// How its vCPU starts.
    pub boot: BootState,
    /// Its second-stage tables.
    pub ept: Tables<Fmt, PoolFrames<'a, W>>,
}

impl<'a, W: PhysWindow, Fmt: Format> Enclave<'a, W, Fmt> {
    /// Allocates RAM, loads `image` (and for a Linux enclave `initrd`, with `extra_cmdline`
    /// appended to its command line), builds the EPT.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        config: EnclaveConfig,
        image: &[u8],
        initrd: Option<&[u8]>,
        extra_cmdline: &str,
        pool: &'a Mutex<FrameAllocator>,
        window: W,
        max_page: PageSize,
    ) -> Result<Self, PartitionError> {
        let bytes = config.memory_mib << 20;
        let ram = pool
            .lock()
            .allocate(bytes / FRAME_SIZE, RAM_ALIGN)
            .map_err(PartitionError::Memory)?;
        let give_back = |e| {
            let _ = pool.lock().free(ram);
            e
        };
        // Freed memory may hold another enclave's data: zero it before the guest sees it.
        let Some(ptr) = core::ptr::NonNull::new(window.ptr(ram.start, bytes)) else {
            return Err(give_back(PartitionError::Memory(FrameError::BadRequest)));
        };
        // SAFETY: the range was just allocated to this enclave and the window maps all of it
        // for as long as the window lives; nothing references it.
        let mut mem = unsafe { GuestRam::new(ptr, bytes as usize) };
        mem.fill(GuestPhysAddr::new(0), bytes as usize, 0);
        let boot = if config.entry == EntryMode::Linux {
            let mut cmdline = config.cmdline.clone();
            if !extra_cmdline.is_empty() {
                if !cmdline.is_empty() {
                    cmdline.push(' ');
                }
                cmdline.push_str(extra_cmdline);
            }
            crate::run::vplat::load_linux(
                image,
                initrd,
                &cmdline,
                config.cores.len(),
                config.has_pci_bus(),
                bytes,
                &mut mem,
            )
            .map_err(|e| give_back(PartitionError::Linux(e)))?
        } else {
            loader::load(image, config.entry, &config.cmdline, bytes, &mut mem)
                .map_err(|e| give_back(PartitionError::Load(e)))?
        };
        let mut ept = Tables::new(PoolFrames::new(pool, window.clone()), max_page)
            .map_err(|e| give_back(PartitionError::Ept(e)))?;
        if let Err(e) = ept.map(
            GuestPhysAddr::new(0),
            ram.start,
            bytes,
            Perms::READ | Perms::WRITE | Perms::EXECUTE,
            MemType::WriteBack,
        ) {
            ept.destroy();
            return Err(give_back(PartitionError::Ept(e)));
        }
        Ok(Self {
            config,
            ram,
            boot,
            ept,
        })
    }

    /// The guest's RAM as a slice (only the enclave's own core uses it, while it runs the enclave).
    ///
    /// # Safety
    ///
    /// No other reference to the RAM may be live, and the window must map it.
    pub unsafe fn ram_slice(&mut self, window: &W) -> &mut [u8] {
        // SAFETY: forwarded to the caller.
        unsafe {
            core::slice::from_raw_parts_mut(
                window.ptr(self.ram.start, self.ram.len()),
                self.ram.len() as usize,
            )
        }
    }

    /// Frees the tables and zeroes and returns the RAM. The pool refusing the RAM (it did not
    /// hand it out, or it is already free) is a bookkeeping error reported to the caller; the
    /// RAM is zeroed either way.
    pub fn destroy(self, pool: &Mutex<FrameAllocator>, window: &W) -> Result<(), FrameError> {
        self.ept.destroy();
        // SAFETY: the enclave no longer runs; its RAM is ours to clear.
        unsafe {
            core::ptr::write_bytes(
                window.ptr(self.ram.start, self.ram.len()),
                0,
                self.ram.len() as usize,
            )
        };
        pool.lock().free(self.ram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::config::{EntryMode, IoPolicy};
    use crate::partition::loader::tests::tiny_elf;
    use boot::info::{MemoryRegion, RegionKind};
    use std::rc::Rc;

    /// A fake physical window: `len` bytes of "RAM" starting at physical `base`.
    #[derive(Clone)]
    struct Fake {
        base: u64,
        mem: Rc<Vec<core::cell::UnsafeCell<u8>>>,
    }
    impl Fake {
        fn new(base: u64, len: usize) -> Self {
            Self {
                base,
                mem: Rc::new(
                    (0..len)
                        .map(|_| core::cell::UnsafeCell::new(0xee))
                        .collect(),
                ),
            }
        }
    }
    impl PhysWindow for Fake {
        fn ptr(&self, pa: HostPhysAddr, len: u64) -> *mut u8 {
            let off = (pa.as_u64() - self.base) as usize;
            assert!(
                off + len as usize <= self.mem.len(),
                "{pa} + {len:#x} outside the fake RAM"
            );
            self.mem[off].get()
        }
    }

    const BASE: u64 = 0x1000_0000;
    const LEN: usize = 40 << 20;

    fn pool() -> Mutex<FrameAllocator> {
        let map = [MemoryRegion {
            range: PhysRange::from_len(HostPhysAddr::new(BASE), LEN as u64),
            kind: RegionKind::Usable,
        }];
        // atoll's own memory: the first 4 MiB of the fake RAM.
        let atoll = PhysRange::from_len(HostPhysAddr::new(BASE), 4 << 20);
        Mutex::new(FrameAllocator::new(&map, &[atoll]).unwrap())
    }

    fn config(name: &str, mib: u64) -> EnclaveConfig {
        EnclaveConfig {
            name: name.into(),
            cores: vec![0],
            memory_mib: mib,
            image: "x".into(),
            entry: EntryMode::Long64,
            cmdline: "suite".into(),
            initrd: None,
            serial_input: false,
            io_unknown: IoPolicy::Ignore,
            after: None,
            devices: Vec::new(),
            vf: Vec::new(),
            virtio: Vec::new(),
        }
    }

    fn hpas<W: PhysWindow, Fmt: Format>(e: &mut Enclave<'_, W, Fmt>) -> Vec<PhysRange> {
        e.ept
            .regions()
            .map(|r| PhysRange::from_len(r.hpa, r.len))
            .collect()
    }

    #[test]
    fn two_enclaves_see_only_their_own_ram_ept() {
        two_enclaves_see_only_their_own_ram::<EptFormat>();
    }

    #[test]
    fn two_enclaves_see_only_their_own_ram_npt() {
        two_enclaves_see_only_their_own_ram::<ept::NptFormat>();
    }

    fn two_enclaves_see_only_their_own_ram<Fmt: Format>() {
        let pool = pool();
        let window = Fake::new(BASE, LEN);
        let image = tiny_elf(0x10_0000, &[0xf4], 1, 0x10_0000);
        let mut a = Enclave::<_, Fmt>::create(
            config("a", 16),
            &image,
            None,
            "",
            &pool,
            window.clone(),
            PageSize::Size1G,
        )
        .unwrap();
        let mut b = Enclave::<_, Fmt>::create(
            config("b", 8),
            &image,
            None,
            "",
            &pool,
            window.clone(),
            PageSize::Size1G,
        )
        .unwrap();
        assert!(!a.ram.overlaps(&b.ram));
        let atoll = PhysRange::from_len(HostPhysAddr::new(BASE), 4 << 20);
        let (a_ram, b_ram) = (a.ram, b.ram);
        for (me, other) in [(&mut a, b_ram), (&mut b, a_ram)] {
            let mapped = hpas(me);
            assert_eq!(
                mapped.iter().map(PhysRange::len).sum::<u64>(),
                me.ram.len(),
                "all of its RAM, once"
            );
            for r in &mapped {
                assert!(
                    r.start >= me.ram.start && r.end <= me.ram.end,
                    "{r} outside own RAM {}",
                    me.ram
                );
                assert!(!r.overlaps(&other), "{r} is the other enclave's");
                assert!(!r.overlaps(&atoll), "{r} is atoll's");
            }
            // Guest-physical 0 is the start of its RAM; the byte past RAM is unmapped.
            assert_eq!(
                me.ept.translate(GuestPhysAddr::new(0)).unwrap().hpa,
                me.ram.start
            );
            assert!(me.ept.translate(GuestPhysAddr::new(me.ram.len())).is_none());
        }
        // 2 MiB-aligned RAM maps with 2 MiB pages: PML4, PDPT, one PD.
        assert_eq!(a.ept.table_pages(), 3);
        // The image landed in the enclave's RAM.
        // SAFETY: nothing else uses the fake RAM now.
        let ram = unsafe { a.ram_slice(&window) };
        assert_eq!(ram[0x10_0000], 0xf4);
        assert_eq!(
            ram[0x20_0000], 0,
            "RAM is zeroed, not left with old contents"
        );
        // The guest dirties all of its RAM; destroying the enclave zeroes every byte before the
        // RAM goes back to the pool.
        ram.fill(0x5a);
        let free_before = pool.lock().free_bytes();
        a.destroy(&pool, &window).unwrap();
        let back = window.ptr(a_ram.start, a_ram.len());
        // SAFETY: the fake RAM is ours; nothing else uses it now.
        let back = unsafe { core::slice::from_raw_parts(back, a_ram.len() as usize) };
        assert!(back.iter().all(|&b| b == 0), "freed RAM is zeroed");
        b.destroy(&pool, &window).unwrap();
        assert_eq!(
            pool.lock().free_bytes(),
            free_before + (24 << 20) + 3 * 4096 * 2
        );
        // The pool hands the same RAM to the next enclave of that size.
        let c = Enclave::<_, Fmt>::create(
            config("c", 16),
            &image,
            None,
            "",
            &pool,
            window.clone(),
            PageSize::Size1G,
        )
        .unwrap();
        assert_eq!(c.ram, a_ram);
        c.destroy(&pool, &window).unwrap();
    }

    #[test]
    fn failures_leave_nothing_allocated() {
        let pool = pool();
        let window = Fake::new(BASE, LEN);
        let before = pool.lock().free_bytes();
        assert!(matches!(
            Enclave::<_, EptFormat>::create(
                config("a", 16),
                b"not elf",
                None,
                "",
                &pool,
                window.clone(),
                PageSize::Size2M
            ),
            Err(PartitionError::Load(_))
        ));
        assert!(matches!(
            Enclave::<_, EptFormat>::create(
                config("a", 1024),
                b"",
                None,
                "",
                &pool,
                window.clone(),
                PageSize::Size2M
            ),
            Err(PartitionError::Memory(_))
        ));
        assert_eq!(pool.lock().free_bytes(), before);
    }
}
