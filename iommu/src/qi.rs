//! Queued invalidation (VT-d spec rev 4.x §6.5.2): 128-bit descriptors and the ring they go
//! through.
//!
//! The unit fetches descriptors from a ring in memory between its head (IQH) and the tail
//! software writes (IQT). atoll uses one 4 KiB page, 256 descriptors (IQA.QS = 0, 128-bit
//! descriptors), and after every batch queues an invalidation-wait descriptor that writes a
//! status word; [`InvalidationQueue::submit`] returns when that word arrives, so the batch is
//! done and the ring is empty again.

use crate::context::{DomainId, SourceId};
use crate::regs::{self, offset, FaultStatus, Registers};
use crate::Error;
use boot::HostPhysAddr;
use core::fmt;

/// Descriptors in the ring (one 4 KiB page of 16-byte descriptors).
pub const QUEUE_LEN: u16 = 256;

/// Most descriptors of one batch before its wait descriptor: the ring holds at most
/// `QUEUE_LEN - 1` (head = tail means empty).
pub const MAX_BATCH: usize = QUEUE_LEN as usize - 2;

/// Polls of the status word before [`Error::QueueTimeout`]; each poll also reads FSTS.
pub const DEFAULT_POLL_LIMIT: u32 = 10_000_000;

/// Descriptor types (bits 3:0, §6.5.2).
mod kind {
    pub const CONTEXT: u64 = 1;
    pub const IOTLB: u64 = 2;
    pub const IEC: u64 = 4;
    pub const WAIT: u64 = 5;
}

/// A 128-bit invalidation descriptor (§6.5.2), built by the constructors below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

/// Granularity of a context-cache or IOTLB invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Global,
    /// One domain.
    Domain(DomainId),
    /// Context cache: one device (source-id with function mask FM) of a domain.
    Device {
        /// DID.
        domain: DomainId,
        /// SID.
        source: SourceId,
        /// FM (0..=3): low bits of the function number not compared.
        function_mask: u8,
    },
    /// IOTLB: 2^`mask` pages at `addr` of a domain.
    Pages {
        /// DID.
        domain: DomainId,
        /// ADDR (bits 63:12 of the high half).
        addr: u64,
        /// AM.
        mask: u8,
    },
}

/// What a descriptor says, decoded (the register model executes this; tests read it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Context-cache invalidate (type 1, §6.5.2.1).
    ContextCache(Scope),
    /// IOTLB invalidate (type 2, §6.5.2.3).
    Iotlb(Scope),
    /// Interrupt entry cache invalidate (type 4, §6.5.2.7): all, or 2^`mask` entries at `index`.
    InterruptEntryCache {
        /// Index-selective (`Some((index, mask))`) or global (`None`).
        selective: Option<(u16, u8)>,
    },
    /// Invalidation wait (type 5, §6.5.2.8).
    Wait {
        /// SW: write `data` to `addr` on completion.
        status: Option<(HostPhysAddr, u32)>,
        /// FN: later descriptors wait for this one.
        fence: bool,
        /// IF: raise the invalidation completion event.
        interrupt: bool,
    },
    /// Something else or a reserved encoding (a unit reports it as IQE).
    Invalid,
}

impl Descriptor {
    /// Context-cache invalidate, global (G = 01).
    pub const fn context_global() -> Self {
        Self {
            lo: kind::CONTEXT | 1 << 4,
            hi: 0,
        }
    }

    /// Context-cache invalidate, domain-selective (G = 10): DID in bits 31:16.
    pub const fn context_domain(domain: DomainId) -> Self {
        Self {
            lo: kind::CONTEXT | 2 << 4 | (domain.0 as u64) << 16,
            hi: 0,
        }
    }

    /// Context-cache invalidate, device-selective (G = 11): DID 31:16, SID 47:32, FM 49:48
    /// (`function_mask` above 3 is clipped).
    pub const fn context_device(domain: DomainId, source: SourceId, function_mask: u8) -> Self {
        Self {
            lo: kind::CONTEXT
                | 3 << 4
                | (domain.0 as u64) << 16
                | (source.0 as u64) << 32
                | ((function_mask & 3) as u64) << 48,
            hi: 0,
        }
    }

    /// IOTLB invalidate, global (G = 01).
    pub const fn iotlb_global() -> Self {
        Self {
            lo: kind::IOTLB | 1 << 4,
            hi: 0,
        }
    }

    /// IOTLB invalidate, domain-selective (G = 10): DID 31:16.
    pub const fn iotlb_domain(domain: DomainId) -> Self {
        Self {
            lo: kind::IOTLB | 2 << 4 | (domain.0 as u64) << 16,
            hi: 0,
        }
    }

    /// IOTLB invalidate, page-selective (G = 11, needs CAP.PSI): 2^`mask` pages from `addr`
    /// (aligned to that size by the caller; low 12 bits dropped), `mask` at most CAP.MAMV.
    pub const fn iotlb_pages(domain: DomainId, addr: u64, mask: u8) -> Self {
        Self {
            lo: kind::IOTLB | 3 << 4 | (domain.0 as u64) << 16,
            hi: (addr & !0xfff) | (mask & 0x3f) as u64,
        }
    }

    /// Interrupt entry cache invalidate, global (G = 0).
    pub const fn iec_global() -> Self {
        Self {
            lo: kind::IEC,
            hi: 0,
        }
    }

    /// Interrupt entry cache invalidate, index-selective (G = 1): 2^`mask` entries from
    /// `index` (IIDX 47:32, IM 31:27).
    pub const fn iec_index(index: u16, mask: u8) -> Self {
        Self {
            lo: kind::IEC | 1 << 4 | ((mask & 0x1f) as u64) << 27 | (index as u64) << 32,
            hi: 0,
        }
    }

    /// Invalidation wait with status write (SW) of `data` to `status` (4-byte aligned; bits 1:0
    /// dropped), and fence (FN) if `fence`.
    pub const fn wait(status: HostPhysAddr, data: u32, fence: bool) -> Self {
        Self {
            lo: kind::WAIT | 1 << 5 | (fence as u64) << 6 | (data as u64) << 32,
            hi: status.as_u64() & !3,
        }
    }

    /// What the descriptor says; reserved bits set give [`Decoded::Invalid`], as a unit would
    /// report IQE (reserved masks from §6.5.2's figures).
    pub const fn decode(self) -> Decoded {
        let (lo, hi) = (self.lo, self.hi);
        let did = DomainId((lo >> 16) as u16);
        match lo & 0xf {
            kind::CONTEXT => {
                if lo & 0xfffc_0000_0000_ffc0 != 0 || hi != 0 {
                    return Decoded::Invalid;
                }
                Decoded::ContextCache(match (lo >> 4) & 3 {
                    1 => Scope::Global,
                    2 => Scope::Domain(did),
                    3 => Scope::Device {
                        domain: did,
                        source: SourceId((lo >> 32) as u16),
                        function_mask: ((lo >> 48) & 3) as u8,
                    },
                    _ => return Decoded::Invalid,
                })
            }
            kind::IOTLB => {
                // DR/DW (7:6) are allowed; bits 11:7 of the high half are reserved.
                if lo & 0xffff_ffff_0000_ff00 != 0 || hi & 0xf80 != 0 {
                    return Decoded::Invalid;
                }
                Decoded::Iotlb(match (lo >> 4) & 3 {
                    1 => Scope::Global,
                    2 => Scope::Domain(did),
                    3 => Scope::Pages {
                        domain: did,
                        addr: hi & !0xfff,
                        mask: (hi & 0x3f) as u8,
                    },
                    _ => return Decoded::Invalid,
                })
            }
            kind::IEC => {
                if lo & 0xffff_0000_07ff_ffe0 != 0 || hi != 0 {
                    return Decoded::Invalid;
                }
                Decoded::InterruptEntryCache {
                    selective: if lo & (1 << 4) != 0 {
                        Some(((lo >> 32) as u16, ((lo >> 27) & 0x1f) as u8))
                    } else {
                        None
                    },
                }
            }
            kind::WAIT => {
                if lo & 0xffff_ff00 != 0 || hi & 3 != 0 {
                    return Decoded::Invalid;
                }
                Decoded::Wait {
                    status: if lo & (1 << 5) != 0 {
                        Some((HostPhysAddr::new(hi), (lo >> 32) as u32))
                    } else {
                        None
                    },
                    fence: lo & (1 << 6) != 0,
                    interrupt: lo & (1 << 4) != 0,
                }
            }
            _ => Decoded::Invalid,
        }
    }
}

/// Which invalidation error the unit reported (FSTS, §10.4.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueFault {
    /// IQE: the unit found a descriptor it cannot execute (bad type or reserved bits) and
    /// stopped at it.
    InvalidDescriptor,
    /// ITE: a device-TLB invalidation timed out.
    Timeout,
    /// ICE: a device-TLB invalidation completion was invalid.
    Completion,
}

impl fmt::Display for QueueFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidDescriptor => "IQE (invalidation queue error: a descriptor was refused)",
            Self::Timeout => "ITE (invalidation time-out error)",
            Self::Completion => "ICE (invalidation completion error)",
        })
    }
}

/// Memory of the invalidation queue: the 4 KiB ring and a 32-bit status word, which the unit
/// reads and writes by physical address while software writes and reads them by pointer.
///
/// On the target: [`RawQueueMemory`]; in host tests: `model::ModelQueue`.
pub trait QueueMemory {
    /// Physical address of the ring (4 KiB aligned).
    fn ring(&self) -> HostPhysAddr;
    /// Physical address of the status word (4-byte aligned).
    fn status(&self) -> HostPhysAddr;
    /// Stores descriptor `slot` (< [`QUEUE_LEN`]) of the ring.
    fn write_descriptor(&mut self, slot: u16, desc: Descriptor);
    /// Loads the status word (volatile: the unit writes it).
    fn read_status(&self) -> u32;
    /// Stores the status word.
    fn write_status(&mut self, value: u32);
}

/// Queue memory reached through raw pointers to identity-mapped (or otherwise mapped) frames.
pub struct RawQueueMemory {
    ring: *mut [u64; 512],
    ring_phys: HostPhysAddr,
    status: *mut u32,
    status_phys: HostPhysAddr,
}

// SAFETY: the ring and status word are frames reachable the same from every processor (the
// contract of `new`), owned by this value alone; moving it to another thread moves that
// exclusive ownership with it.
unsafe impl Send for RawQueueMemory {}

impl RawQueueMemory {
    /// # Safety
    ///
    /// `ring` must be valid for reads and writes of 4 KiB, 8-byte aligned, and be the mapping of
    /// the 4 KiB-aligned frame at `ring_phys`; `status` must be valid for reads and writes of 4
    /// bytes, 4-byte aligned, and be the mapping of `status_phys`; both stay valid, unaliased
    /// by Rust references and outside every partition's memory for as long as the value (and
    /// the unit using the queue) lives.
    pub unsafe fn new(
        ring: *mut [u64; 512],
        ring_phys: HostPhysAddr,
        status: *mut u32,
        status_phys: HostPhysAddr,
    ) -> Self {
        Self {
            ring,
            ring_phys,
            status,
            status_phys,
        }
    }
}

impl QueueMemory for RawQueueMemory {
    fn ring(&self) -> HostPhysAddr {
        self.ring_phys
    }

    fn status(&self) -> HostPhysAddr {
        self.status_phys
    }

    fn write_descriptor(&mut self, slot: u16, desc: Descriptor) {
        let i = usize::from(slot % QUEUE_LEN) * 2;
        // SAFETY: `new`'s contract makes the ring valid for 512 u64s; `i + 1 <= 511`. Volatile:
        // the unit reads the ring by DMA.
        unsafe { core::ptr::write_volatile(self.ring.cast::<u64>().wrapping_add(i), desc.lo) };
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(self.ring.cast::<u64>().wrapping_add(i + 1), desc.hi) };
    }

    fn read_status(&self) -> u32 {
        // SAFETY: `new`'s contract; volatile because the unit writes it by DMA.
        unsafe { core::ptr::read_volatile(self.status) }
    }

    fn write_status(&mut self, value: u32) {
        // SAFETY: as in `read_status`.
        unsafe { core::ptr::write_volatile(self.status, value) }
    }
}

/// The invalidation queue of one unit: the ring memory and the tail software keeps.
pub struct InvalidationQueue<M: QueueMemory> {
    memory: M,
    tail: u16,
    sequence: u32,
    poll_limit: u32,
    submitted: u64,
}

impl<M: QueueMemory> InvalidationQueue<M> {
    /// A queue over `memory`, tail at 0 (what [`crate::Unit`] programs before QIE).
    pub fn new(memory: M) -> Self {
        Self {
            memory,
            tail: 0,
            sequence: 0,
            poll_limit: DEFAULT_POLL_LIMIT,
            submitted: 0,
        }
    }

    /// Polls of the status word before giving up.
    pub fn set_poll_limit(&mut self, polls: u32) {
        self.poll_limit = polls.max(1);
    }

    /// The slot the next descriptor goes to.
    pub fn tail(&self) -> u16 {
        self.tail
    }

    /// Descriptors queued so far (wait descriptors included).
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// The memory.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Restarts at slot 0: the unit resets IQH to 0 when QIE is set (§10.4.22).
    pub(crate) fn reset(&mut self) {
        self.tail = 0;
    }

    /// Queues `descs` (in batches of at most [`MAX_BATCH`]), each batch followed by a fenced
    /// wait descriptor writing a fresh status value, moves IQT, and polls the status word until
    /// that value arrives. Errors: [`Error::QueueFault`] when FSTS reports IQE, ITE or ICE
    /// (cleared, and for IQE the queue emptied so the unit fetches again), or
    /// [`Error::QueueTimeout`] after the poll limit.
    pub fn submit<R: Registers>(
        &mut self,
        regs: &mut R,
        descs: &[Descriptor],
    ) -> Result<(), Error> {
        if descs.is_empty() {
            return Ok(());
        }
        for batch in descs.chunks(MAX_BATCH) {
            self.sequence = self.sequence.wrapping_add(1).max(1);
            let token = self.sequence;
            // Room for the batch and its wait: normally the ring is empty here (every batch is
            // waited for), but not after a time-out, when the unit may still be behind.
            let head = regs::queue_index(regs.read64(offset::IQH)) % QUEUE_LEN;
            let free = (head + QUEUE_LEN - self.tail - 1) % QUEUE_LEN;
            if usize::from(free) < batch.len() + 1 {
                return Err(Error::QueueFull {
                    head,
                    tail: self.tail,
                });
            }
            self.memory.write_status(0);
            for &d in batch {
                self.push(d);
            }
            let wait = Descriptor::wait(self.memory.status(), token, true);
            self.push(wait);
            regs.write64(offset::IQT, regs::queue_index_reg(self.tail));
            self.wait(regs, token)?;
        }
        Ok(())
    }

    fn push(&mut self, d: Descriptor) {
        self.memory.write_descriptor(self.tail, d);
        self.tail = (self.tail + 1) % QUEUE_LEN;
        self.submitted += 1;
    }

    fn wait<R: Registers>(&mut self, regs: &mut R, token: u32) -> Result<(), Error> {
        for _ in 0..self.poll_limit {
            if self.memory.read_status() == token {
                return Ok(());
            }
            let fsts = FaultStatus::from_bits_retain(regs.read32(offset::FSTS));
            let errors = fsts & (FaultStatus::IQE | FaultStatus::ITE | FaultStatus::ICE);
            if !errors.is_empty() {
                return Err(self.recover(regs, errors));
            }
            core::hint::spin_loop();
        }
        Err(Error::QueueTimeout {
            head: regs::queue_index(regs.read64(offset::IQH)),
            tail: self.tail,
        })
    }

    /// Reads what went wrong, then makes the queue usable again: after IQE the unit stops at
    /// the bad descriptor (IQH), so the tail is pulled back to it (dropping it and the rest of
    /// the batch, which the caller resubmits if it wants) before the error is cleared (§6.5.2.10).
    fn recover<R: Registers>(&mut self, regs: &mut R, errors: FaultStatus) -> Error {
        let head = regs::queue_index(regs.read64(offset::IQH)) % QUEUE_LEN;
        let code = regs.read64(offset::IQERCD);
        let fault = if errors.contains(FaultStatus::IQE) {
            self.tail = head;
            regs.write64(offset::IQT, regs::queue_index_reg(head));
            QueueFault::InvalidDescriptor
        } else if errors.contains(FaultStatus::ITE) {
            QueueFault::Timeout
        } else {
            QueueFault::Completion
        };
        regs.write32(offset::FSTS, errors.bits());
        Error::QueueFault { fault, head, code }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_queue_memory_writes_slots_and_status() {
        let mut ring = alloc::boxed::Box::new([0u64; 512]);
        let mut status = alloc::boxed::Box::new(0u32);
        // SAFETY: both boxes are owned by this test, outlive `mem`, and are not otherwise
        // accessed until it is dropped.
        let mut mem = unsafe {
            RawQueueMemory::new(
                &mut *ring,
                HostPhysAddr::new(0x1000),
                &mut *status,
                HostPhysAddr::new(0x2000),
            )
        };
        mem.write_descriptor(255, Descriptor { lo: 1, hi: 2 });
        mem.write_descriptor(256 + 3, Descriptor { lo: 3, hi: 4 });
        mem.write_status(7);
        assert_eq!(mem.read_status(), 7);
        assert_eq!(
            (mem.ring(), mem.status()),
            (HostPhysAddr::new(0x1000), HostPhysAddr::new(0x2000))
        );
        assert_eq!(ring[510..], [1, 2]);
        assert_eq!(ring[6..8], [3, 4], "slots wrap at 256");
        assert_eq!(*status, 7);
    }

    #[test]
    fn descriptor_bits() {
        let did = DomainId(0x1234);
        let sid = SourceId::new(3, 0x21);
        assert_eq!(Descriptor::context_global().lo, 0x11);
        assert_eq!(Descriptor::context_domain(did).lo, 0x21 | 0x1234 << 16);
        assert_eq!(
            Descriptor::context_device(did, sid, 2).lo,
            0x31 | 0x1234 << 16 | 0x0321 << 32 | 2 << 48
        );
        assert_eq!(Descriptor::iotlb_global().lo, 0x12);
        assert_eq!(Descriptor::iotlb_domain(did).lo, 0x22 | 0x1234 << 16);
        let p = Descriptor::iotlb_pages(did, 0x4000_0fff, 9);
        assert_eq!((p.lo, p.hi), (0x32 | 0x1234 << 16, 0x4000_0000 | 9));
        assert_eq!(Descriptor::iec_global().lo, 0x4);
        assert_eq!(
            Descriptor::iec_index(0x55, 3).lo,
            0x14 | 3 << 27 | 0x55 << 32
        );
        let w = Descriptor::wait(HostPhysAddr::new(0x9003), 0xabcd, true);
        assert_eq!((w.lo, w.hi), (0x65 | 0xabcd << 32, 0x9000));
    }

    #[test]
    fn descriptors_decode_to_what_they_were_built_from() {
        let did = DomainId(7);
        let sid = SourceId::new(0, 0x18);
        for (d, want) in [
            (
                Descriptor::context_global(),
                Decoded::ContextCache(Scope::Global),
            ),
            (
                Descriptor::context_device(did, sid, 1),
                Decoded::ContextCache(Scope::Device {
                    domain: did,
                    source: sid,
                    function_mask: 1,
                }),
            ),
            (
                Descriptor::iotlb_domain(did),
                Decoded::Iotlb(Scope::Domain(did)),
            ),
            (
                Descriptor::iec_index(9, 0),
                Decoded::InterruptEntryCache {
                    selective: Some((9, 0)),
                },
            ),
            (
                Descriptor::wait(HostPhysAddr::new(0x1000), 5, false),
                Decoded::Wait {
                    status: Some((HostPhysAddr::new(0x1000), 5)),
                    fence: false,
                    interrupt: false,
                },
            ),
        ] {
            assert_eq!(d.decode(), want, "{d:x?}");
        }
        // Reserved encodings and types never panic and decode as invalid.
        for d in [
            Descriptor { lo: 0, hi: 0 },
            Descriptor { lo: 0x1, hi: 0 },
            Descriptor { lo: 0x11, hi: 1 },
            Descriptor {
                lo: 0x12 | 1 << 40,
                hi: 0,
            },
            Descriptor { lo: 0x65, hi: 2 },
            Descriptor {
                lo: 0xf,
                hi: u64::MAX,
            },
            Descriptor {
                lo: u64::MAX,
                hi: u64::MAX,
            },
        ] {
            assert_eq!(d.decode(), Decoded::Invalid, "{d:x?}");
        }
    }
}
