//! One remapping hardware unit: probing, the enable and disable sequences, and the operations
//! that change what devices can reach, each followed by the invalidations it needs.
//!
//! **Global commands** (§10.4.4). GCMD is write-only and every write sets all its bits, so a
//! command is: read GSTS, drop the one-shot status bits (SRTP, SFL, WBF, SIRTP —
//! `GSTS & 0x96FF_FFFF`), set or clear the one bit wanted, write GCMD, and poll GSTS until the
//! bit reflects it (a bounded number of times). One bit changes per write.
//!
//! **Enable** ([`Unit::enable`]): fault-event interrupt masked (atoll polls the records);
//! anything firmware left on (translation, interrupt remapping, the queue) turned off; RTADDR
//! then SRTP; IQT = 0, IQA, then QIE; global invalidations of the context cache, the IOTLB and
//! the interrupt entry cache, waited for; then TE; protected memory regions off.

use crate::context::{ContextTables, DomainId, Flush, SourceId};
use crate::fault::{self, DrainSummary, FaultRecord};
use crate::qi::{Descriptor, InvalidationQueue, QueueMemory};
use crate::regs::{
    self, offset, Cap, Ecap, FaultEventControl, GlobalCommand, GlobalStatus, Registers,
};
use crate::{AddressWidth, Error};
use boot::HostPhysAddr;
use ept::FrameSource;

/// Polls of GSTS (or IQH, PMEN) before a command is declared stuck.
pub const DEFAULT_COMMAND_POLLS: u32 = 1_000_000;

/// Bytes every unit's register set has (through IRTA at 0xb8).
const BASE_REGISTERS: u64 = 0xc0;

/// One remapping unit, its registers `R` and its invalidation queue in memory `M`.
pub struct Unit<R: Registers, M: QueueMemory> {
    regs: R,
    queue: InvalidationQueue<M>,
    version: u32,
    cap: Cap,
    ecap: Ecap,
    polls: u32,
}

impl<R: Registers, M: QueueMemory> Unit<R, M> {
    /// Reads VER, CAP and ECAP and checks that atoll can drive the unit: queued invalidation,
    /// 4-level second-level tables, a MGAW of at least `iova_bits`, and fault-recording and
    /// IOTLB registers inside the `window` bytes the DMAR declares (register pages × 4 KiB).
    /// Changes nothing on the unit.
    pub fn probe(regs: R, window: u64, iova_bits: u8, queue: M) -> Result<Self, Error> {
        if window < BASE_REGISTERS {
            return Err(Error::RegisterOutsideWindow {
                what: "base",
                end: BASE_REGISTERS,
                window,
            });
        }
        let version = regs.read32(offset::VER);
        let cap = Cap(regs.read64(offset::CAP));
        let ecap = Ecap(regs.read64(offset::ECAP));
        if !ecap.qi() {
            return Err(Error::NoQueuedInvalidation);
        }
        AddressWidth::for_unit(cap)?;
        if cap.mgaw() < iova_bits {
            return Err(Error::AddressWidthTooSmall {
                mgaw: cap.mgaw(),
                needed: iova_bits,
            });
        }
        let records_end = cap.fault_record_offset() + u64::from(cap.nfr()) * 16;
        if cap.fault_record_offset() < BASE_REGISTERS || records_end > window {
            return Err(Error::RegisterOutsideWindow {
                what: "fault recording",
                end: records_end,
                window,
            });
        }
        let iotlb_end = ecap.iotlb_offset() + 16;
        if ecap.iotlb_offset() < BASE_REGISTERS || iotlb_end > window {
            return Err(Error::RegisterOutsideWindow {
                what: "IOTLB",
                end: iotlb_end,
                window,
            });
        }
        Ok(Self {
            regs,
            queue: InvalidationQueue::new(queue),
            version,
            cap,
            ecap,
            polls: DEFAULT_COMMAND_POLLS,
        })
    }

    /// VER: major in bits 7:4, minor in 3:0.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// CAP as probed.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// ECAP as probed.
    pub fn ecap(&self) -> Ecap {
        self.ecap
    }

    /// GSTS now.
    pub fn status(&self) -> GlobalStatus {
        GlobalStatus::from_bits_retain(self.regs.read32(offset::GSTS))
    }

    /// The registers.
    pub fn registers(&self) -> &R {
        &self.regs
    }

    /// The registers, mutably (tests drive the model through this).
    pub fn registers_mut(&mut self) -> &mut R {
        &mut self.regs
    }

    /// The invalidation queue.
    pub fn queue(&self) -> &InvalidationQueue<M> {
        &self.queue
    }

    /// Bounds every poll loop (commands and queue waits) to `polls` reads.
    pub fn set_poll_limit(&mut self, polls: u32) {
        self.polls = polls.max(1);
        self.queue.set_poll_limit(polls);
    }

    /// The largest leaf the second-level tables may use on this unit (CAP.SLLPS).
    pub fn largest_page(&self) -> ept::PageSize {
        if self.cap.page_1g() {
            ept::PageSize::Size1G
        } else if self.cap.page_2m() {
            ept::PageSize::Size2M
        } else {
            ept::PageSize::Size4K
        }
    }

    /// Turns DMA remapping on with the root table at `root` (see the module documentation for
    /// the order). On error the unit may be half-enabled; call [`Unit::disable`].
    pub fn enable(&mut self, root: HostPhysAddr) -> Result<(), Error> {
        self.regs
            .write32(offset::FECTL, FaultEventControl::IM.bits());
        self.quiesce()?;
        self.regs.write64(offset::RTADDR, regs::rtaddr(root));
        self.command(GlobalCommand::SRTP, true)?;
        self.regs.write64(offset::IQT, 0);
        self.regs
            .write64(offset::IQA, regs::iqa(self.queue.memory().ring()));
        self.queue.reset();
        self.command(GlobalCommand::QIE, true)?;
        // Context cache before IOTLB (§6.5.3.3); the interrupt entry cache where there is one.
        let global = [
            Descriptor::context_global(),
            Descriptor::iotlb_global(),
            Descriptor::iec_global(),
        ];
        let n = if self.ecap.ir() { 3 } else { 2 };
        self.queue.submit(&mut self.regs, &global[..n])?;
        self.command(GlobalCommand::TE, true)?;
        self.disable_protected_memory()
    }

    /// Turns translation, interrupt remapping and the queue off, in that order (the queue last,
    /// once the unit has fetched everything in it).
    pub fn disable(&mut self) -> Result<(), Error> {
        self.quiesce()
    }

    /// Performs the invalidations a context-table change asked for.
    pub fn flush(&mut self, flush: Flush) -> Result<(), Error> {
        if flush.is_empty() {
            return Ok(());
        }
        let mut descs = [Descriptor::default(); 3];
        let mut n = 0;
        for d in flush.descriptors() {
            descs[n] = d;
            n += 1;
        }
        self.invalidate(&descs[..n])
    }

    /// Queues `descs` and waits for them.
    pub fn invalidate(&mut self, descs: &[Descriptor]) -> Result<(), Error> {
        if !self.status().contains(GlobalStatus::QIES) {
            return Err(Error::QueueDisabled);
        }
        if self.cap.rwbf() {
            // Table writes may sit in the unit's write buffer until flushed (CAP.RWBF).
            self.command(GlobalCommand::WBF, true)?;
        }
        self.queue.submit(&mut self.regs, descs)
    }

    /// After `unmap` or `protect` on a domain's second-level tables — and under caching mode
    /// (CAP.CM, QEMU) after `map` too, since such a unit may cache not-present entries — the
    /// domain's IOTLB (domain-selective; page-selective would need CAP.PSI and alignment
    /// bookkeeping that a domain change rarely repays).
    pub fn invalidate_domain(&mut self, domain: DomainId) -> Result<(), Error> {
        self.invalidate(&[Descriptor::iotlb_domain(domain)])
    }

    /// Puts `source` into `domain` (second-level tables at `slptptr`), moving it out of any
    /// domain it was in first: block, invalidate the old domain's context and IOTLB entries,
    /// write the new entry, invalidate again. When it returns Ok no cache holds the old state.
    pub fn assign<F: FrameSource>(
        &mut self,
        tables: &mut ContextTables<F>,
        source: SourceId,
        domain: DomainId,
        slptptr: HostPhysAddr,
    ) -> Result<(), Error> {
        tables.check_domain(domain)?;
        let now = tables.lookup(source);
        if now.present() && now.domain() == domain && now.slptptr() == slptptr {
            return Ok(());
        }
        let blocked = tables.block(source);
        self.flush(blocked)?;
        let assigned = tables.assign(source, domain, slptptr)?;
        self.flush(assigned)
    }

    /// Blocks `source` (its DMA faults from now on) and invalidates what it used.
    pub fn block<F: FrameSource>(
        &mut self,
        tables: &mut ContextTables<F>,
        source: SourceId,
    ) -> Result<(), Error> {
        let flush = tables.block(source);
        self.flush(flush)
    }

    /// The hook for interrupt remapping: sets the table at `table` with 2^(`size_log2` + 1)
    /// entries (IRTA.S ≤ 15), x2APIC mode if `eim`, latches it (SIRTP) and invalidates the
    /// interrupt entry cache. Does not enable remapping ([`Unit::enable_interrupt_remapping`]).
    pub fn set_interrupt_remap_table(
        &mut self,
        table: HostPhysAddr,
        size_log2: u8,
        eim: bool,
    ) -> Result<(), Error> {
        if !self.ecap.ir() {
            return Err(Error::NoInterruptRemapping);
        }
        if eim && !self.ecap.eim() {
            return Err(Error::NoExtendedInterruptMode);
        }
        if size_log2 > 15 {
            return Err(Error::BadTableSize { size_log2 });
        }
        if table.as_u64() & 0xfff != 0 || table.as_u64() >= 1 << 52 {
            return Err(Error::BadFrame { frame: table });
        }
        self.regs
            .write64(offset::IRTA, regs::irta(table, size_log2, eim));
        self.command(GlobalCommand::SIRTP, true)?;
        if self.status().contains(GlobalStatus::QIES) {
            self.queue
                .submit(&mut self.regs, &[Descriptor::iec_global()])?;
        }
        Ok(())
    }

    /// Enables interrupt remapping with compatibility-format interrupts blocked (CFI cleared
    /// first if firmware set it): a device can then only raise interrupts its IRTE allows.
    pub fn enable_interrupt_remapping(&mut self) -> Result<(), Error> {
        if !self.ecap.ir() {
            return Err(Error::NoInterruptRemapping);
        }
        let status = self.status();
        if !status.contains(GlobalStatus::IRTPS) {
            return Err(Error::NoInterruptTable);
        }
        if status.contains(GlobalStatus::CFIS) {
            self.command(GlobalCommand::CFI, false)?;
        }
        self.command(GlobalCommand::IRE, true)
    }

    /// Reads and clears the pending fault records, handing each to `each`.
    pub fn drain_faults(&mut self, each: impl FnMut(FaultRecord)) -> DrainSummary {
        fault::drain(&mut self.regs, self.cap, each)
    }

    /// One global command (§10.4.4): one bit set or cleared, then GSTS polled until it shows.
    fn command(&mut self, cmd: GlobalCommand, set: bool) -> Result<(), Error> {
        let status = self.regs.read32(offset::GSTS) & !GlobalCommand::ONE_SHOT.bits();
        let value = if set {
            status | cmd.bits()
        } else {
            status & !cmd.bits()
        };
        self.regs.write32(offset::GCMD, value);
        // WBF's status bit says "flush in progress": done when it clears.
        let want = set && cmd != GlobalCommand::WBF;
        for _ in 0..self.polls {
            if (self.regs.read32(offset::GSTS) & cmd.bits() != 0) == want {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(Error::CommandTimeout { command: cmd, set })
    }

    /// Translation off, interrupt remapping off, then the queue off once it is empty.
    fn quiesce(&mut self) -> Result<(), Error> {
        let status = self.status();
        if status.contains(GlobalStatus::TES) {
            self.command(GlobalCommand::TE, false)?;
        }
        if status.contains(GlobalStatus::IRES) {
            self.command(GlobalCommand::IRE, false)?;
        }
        if status.contains(GlobalStatus::QIES) {
            // §10.4.4: software must not disable the queue while it holds descriptors.
            let mut empty = false;
            for _ in 0..self.polls {
                if regs::queue_index(self.regs.read64(offset::IQH))
                    == regs::queue_index(self.regs.read64(offset::IQT))
                {
                    empty = true;
                    break;
                }
                core::hint::spin_loop();
            }
            if !empty {
                return Err(Error::QueueTimeout {
                    head: regs::queue_index(self.regs.read64(offset::IQH)),
                    tail: regs::queue_index(self.regs.read64(offset::IQT)),
                });
            }
            self.command(GlobalCommand::QIE, false)?;
        }
        Ok(())
    }

    /// Firmware may leave protected memory regions on (PMEN.EPM); with remapping on they only
    /// get in the way of the domains (§10.4.16), so they go off once translation is on.
    fn disable_protected_memory(&mut self) -> Result<(), Error> {
        if !(self.cap.plmr() || self.cap.phmr())
            || self.regs.read32(offset::PMEN) & regs::PMEN_EPM == 0
        {
            return Ok(());
        }
        self.regs.write32(offset::PMEN, 0);
        for _ in 0..self.polls {
            if self.regs.read32(offset::PMEN) & regs::PMEN_PRS == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(Error::CommandTimeout {
            command: GlobalCommand::empty(),
            set: false,
        })
    }
}

#[cfg(test)]
mod tests;
