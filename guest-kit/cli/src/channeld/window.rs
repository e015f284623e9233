//! The window as the daemon reaches it: [`SharedMem`] over a mapping of BAR2, and the
//! [`Function`] trait that hides how the function is mapped and how its interrupt arrives
//! (vfio-pci, sysfs, or a test's plain memory).

use atoll_abi::channel::SharedMem;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicU32, Ordering};

/// The window: `len` bytes at `ptr` that atoll (the other side) changes concurrently. Every
/// access is bounds-checked here (reads past the end give zeroes, writes are dropped), and
/// the bytes are copied with volatile accesses so the compiler never assumes they stay put.
pub struct Window {
    ptr: *mut u8,
    len: usize,
}

impl Window {
    /// A window over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` is 8-byte aligned and valid for reads and writes of `len` bytes for as long as
    /// the Window lives (a mapping its owner unmaps only after dropping the Window), and is
    /// touched by this process only through Windows (other processes or atoll may change it).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Window {
        Window { ptr, len }
    }

    /// The window's first byte (for its owner's munmap).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Whether `[offset, offset + n)` lies inside the window.
    fn inside(&self, offset: usize, n: usize) -> bool {
        offset.checked_add(n).is_some_and(|end| end <= self.len)
    }

    fn word(&self, offset: usize) -> Option<&AtomicU32> {
        if !offset.is_multiple_of(4) || !self.inside(offset, 4) {
            return None;
        }
        // SAFETY: `offset` is 4-aligned and inside the window (checked above) and the window
        // is 8-aligned and valid for as long as `self` (Window::new's contract); AtomicU32 has
        // u32's layout and the other side accesses these words atomically too.
        Some(unsafe { &*self.ptr.wrapping_add(offset).cast::<AtomicU32>() })
    }
}

impl SharedMem for Window {
    fn size(&self) -> usize {
        self.len
    }

    fn load_acquire(&self, offset: usize) -> u32 {
        self.word(offset).map_or(0, |w| w.load(Ordering::Acquire))
    }

    fn store_release(&self, offset: usize, value: u32) {
        if let Some(w) = self.word(offset) {
            w.store(value, Ordering::Release)
        }
    }

    fn fence(&self) {
        fence(Ordering::SeqCst)
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        let n = if self.inside(offset, 0) {
            buf.len().min(self.len - offset)
        } else {
            0
        };
        buf[n..].fill(0);
        let mut i = 0;
        // Bytes until 8-aligned, then 8-byte words (a 512 KiB blk transfer should not take a
        // volatile access per byte), then the tail.
        while i < n && !(offset + i).is_multiple_of(8) {
            // SAFETY: offset + i < len (n is clipped to the window); see Window::new.
            buf[i] = unsafe { self.ptr.wrapping_add(offset + i).read_volatile() };
            i += 1;
        }
        while i + 8 <= n {
            // SAFETY: an 8-aligned word inside the window (offset + i + 8 <= offset + n <= len).
            let w = unsafe {
                self.ptr
                    .wrapping_add(offset + i)
                    .cast::<u64>()
                    .read_volatile()
            };
            buf[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            i += 8;
        }
        while i < n {
            // SAFETY: as in the first loop.
            buf[i] = unsafe { self.ptr.wrapping_add(offset + i).read_volatile() };
            i += 1;
        }
        // Loads of the data happen before whatever the caller does next (e.g. `pop`).
        fence(Ordering::Acquire);
    }

    fn write(&self, offset: usize, buf: &[u8]) {
        let n = if self.inside(offset, 0) {
            buf.len().min(self.len - offset)
        } else {
            0
        };
        // Stores of earlier words (and the caller's earlier writes) stay before these.
        fence(Ordering::Release);
        let mut i = 0;
        while i < n && !(offset + i).is_multiple_of(8) {
            // SAFETY: offset + i < len; see Window::new.
            unsafe { self.ptr.wrapping_add(offset + i).write_volatile(buf[i]) };
            i += 1;
        }
        while i + 8 <= n {
            let w = u64::from_ne_bytes([
                buf[i],
                buf[i + 1],
                buf[i + 2],
                buf[i + 3],
                buf[i + 4],
                buf[i + 5],
                buf[i + 6],
                buf[i + 7],
            ]);
            // SAFETY: an 8-aligned word inside the window.
            unsafe {
                self.ptr
                    .wrapping_add(offset + i)
                    .cast::<u64>()
                    .write_volatile(w)
            };
            i += 8;
        }
        while i < n {
            // SAFETY: as in the first loop.
            unsafe { self.ptr.wrapping_add(offset + i).write_volatile(buf[i]) };
            i += 1;
        }
        fence(Ordering::Release);
    }
}

/// A channel function as the daemon uses it: its window, its registers, its interrupt.
pub trait Function {
    /// The window (BAR2).
    fn window(&self) -> &Window;
    /// Reads a 32-bit register of BAR0 (every access traps to atoll).
    fn read_reg(&mut self, offset: u64) -> io::Result<u32>;
    /// Writes a 32-bit register of BAR0.
    fn write_reg(&mut self, offset: u64, value: u32) -> io::Result<()>;
    /// A descriptor that becomes readable when atoll raised the function's interrupt, or
    /// `None` when notifications must be polled.
    fn irq_fd(&self) -> Option<RawFd>;
    /// Consumes the interrupt's readiness (after poll said `irq_fd` is readable).
    fn ack_irq(&mut self);
    /// Lets the interrupt come again, after the registers were read (INTx: unmask).
    fn rearm(&mut self) {}
    /// How the function is mapped (for the log).
    fn describe(&self) -> String;
}

/// Reads an eventfd's counter, clearing it (nothing happens when it was zero: non-blocking).
pub fn drain_eventfd(fd: RawFd) {
    let mut v = [0u8; 8];
    // SAFETY: a read of 8 bytes into a local buffer from a descriptor the caller owns.
    let _ = unsafe { libc::read(fd, v.as_mut_ptr().cast(), 8) };
}

/// vfio or sysfs, chosen at run time.
impl Function for Box<dyn Function> {
    fn window(&self) -> &Window {
        (**self).window()
    }
    fn read_reg(&mut self, offset: u64) -> io::Result<u32> {
        (**self).read_reg(offset)
    }
    fn write_reg(&mut self, offset: u64, value: u32) -> io::Result<()> {
        (**self).write_reg(offset, value)
    }
    fn irq_fd(&self) -> Option<RawFd> {
        (**self).irq_fd()
    }
    fn ack_irq(&mut self) {
        (**self).ack_irq()
    }
    fn rearm(&mut self) {
        (**self).rearm()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}
