//! The root partition's RAM as atoll reaches it: the host-owned RAM ranges (its second-stage
//! write-back mappings, guest-physical = host-physical), each a [`GuestRam`] over the identity
//! map. A read or write must lie wholly inside one range: atoll's own memory, the enclave pool
//! and device memory are never read or written on the host's behalf (an instruction the host
//! points at them cannot be fetched, a page walk through them fails).

use alloc::vec::Vec;
use atoll_vcpu::{GuestMemory, GuestRam};
use boot::{GuestPhysAddr, PhysRange};

/// The host's RAM.
pub struct HostRam {
    /// (first guest-physical byte, end, the bytes), sorted by address.
    ranges: Vec<(u64, u64, GuestRam)>,
}

// SAFETY: a `GuestRam` is a pointer and a length into identity-mapped memory that stays the
// host's while atoll runs; every access copies through raw pointers, so sharing it between the
// host's vCPUs (each on its own core) creates no Rust reference to that memory.
unsafe impl Send for HostRam {}
// SAFETY: as above; `&HostRam` only reads the range list.
unsafe impl Sync for HostRam {}

impl HostRam {
    /// The host's RAM over `ranges` (each identity-mapped, sorted, disjoint).
    ///
    /// # Safety
    ///
    /// Every range must be RAM the host owns for as long as the value lives, identity-mapped in
    /// atoll's page tables, and covered by no Rust reference.
    pub unsafe fn new(ranges: &[PhysRange]) -> Self {
        let ranges = ranges
            .iter()
            .filter_map(|r| {
                // Physical 0 cannot be a `NonNull`; the first page is left out (nothing atoll
                // reads or writes for the host lies there: the loader starts at 0x1000).
                let start = r.start.as_u64().max(4096);
                let end = r.end.as_u64();
                let base = core::ptr::NonNull::new(start as *mut u8)?;
                (start < end).then(|| {
                    // SAFETY: forwarded from this function's contract.
                    let ram = unsafe { GuestRam::new(base, (end - start) as usize) };
                    (start, end, ram)
                })
            })
            .collect();
        Self { ranges }
    }

    /// The range holding all of `[gpa, gpa + len)`, with the offset into it.
    fn find(&self, gpa: GuestPhysAddr, len: usize) -> Option<(usize, GuestPhysAddr)> {
        let start = gpa.as_u64();
        let end = start.checked_add(len as u64)?;
        let i = self.ranges.partition_point(|(_, e, _)| *e <= start);
        let (s, e, _) = self.ranges.get(i)?;
        (*s <= start && end <= *e).then(|| (i, GuestPhysAddr::new(start - s)))
    }
}

impl GuestMemory for HostRam {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        let (i, off) = self.find(gpa, buf.len())?;
        self.ranges[i].2.read(off, buf)
    }

    fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
        let (i, off) = self.find(gpa, buf.len())?;
        self.ranges[i].2.write(off, buf)
    }
}

/// A shared [`HostRam`] as guest memory (reads only through `&`; writes need the loader's
/// exclusive access, which it has before any host vCPU runs).
impl GuestMemory for &HostRam {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        (**self).read(gpa, buf)
    }

    fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
        let (i, off) = self.find(gpa, buf.len())?;
        // GuestRam's write needs `&mut`, but the copy itself goes through a raw pointer: a
        // fresh handle over the same range, made here, writes the same bytes.
        let (s, e, _) = &self.ranges[i];
        let base = core::ptr::NonNull::new(*s as *mut u8)?;
        // SAFETY: the range is host RAM, identity-mapped and covered by no reference
        // (`HostRam::new`'s contract); the handle lives only for this copy.
        let mut ram = unsafe { GuestRam::new(base, (*e - *s) as usize) };
        ram.write(off, buf)
    }
}
