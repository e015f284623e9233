//! A register model of a remapping unit, for host tests (here, and in the hypervisor with the
//! `model` feature): it behaves like a VT-d unit for what the driver does and records what it
//! was asked, so tests can check the order of commands and invalidations.
//!
//! * GCMD → GSTS (§10.4.4): persistent bits follow the write, one-shot bits act (SRTP latches
//!   RTADDR, SIRTP latches IRTA); every write is recorded with the bits it changed, and
//!   sequencing mistakes a real unit punishes (more than one bit changed, TE before a root
//!   table, IRE before an interrupt table, QIE with a non-zero tail) are collected in
//!   [`Model::violations`].
//! * Writing IQT runs the queue at once: descriptors are read from [`Memory`], decoded,
//!   recorded; wait descriptors write their status word; a descriptor the unit would refuse
//!   sets FSTS.IQE and stops the head at it. [`Model::stall_queue`] makes it stop fetching.
//! * Fault records are injected with [`Model::inject_fault`] and cleared by the driver's
//!   RW1C writes.
//!
//! It also provides [`Memory`] (physical memory the model and the queue share), [`ModelQueue`]
//! and [`Frames`] (a heap frame source for context and second-level tables).

use crate::qi::{Decoded, Descriptor, QueueMemory, QUEUE_LEN};
use crate::regs::{
    self, offset, Cap, Ecap, FaultEventControl, FaultStatus, GlobalCommand, GlobalStatus, Registers,
};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use boot::HostPhysAddr;
use core::cell::RefCell;
use ept::FrameSource;

/// Sparse physical memory in 64-bit words, shared (by cloning) between a model and the code
/// under test; unwritten memory reads 0.
#[derive(Clone, Default, Debug)]
pub struct Memory(Rc<RefCell<BTreeMap<u64, u64>>>);

impl Memory {
    /// Empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// The word at `addr` (rounded down to 8 bytes).
    pub fn read_u64(&self, addr: u64) -> u64 {
        self.0.borrow().get(&(addr & !7)).copied().unwrap_or(0)
    }

    /// Stores the word at `addr` (rounded down to 8 bytes).
    pub fn write_u64(&self, addr: u64, value: u64) {
        self.0.borrow_mut().insert(addr & !7, value);
    }

    /// The 32-bit value at `addr` (rounded down to 4 bytes).
    pub fn read_u32(&self, addr: u64) -> u32 {
        (self.read_u64(addr) >> ((addr & 4) * 8)) as u32
    }

    /// Stores the 32-bit value at `addr` (rounded down to 4 bytes).
    pub fn write_u32(&self, addr: u64, value: u32) {
        let shift = (addr & 4) * 8;
        let word = self.read_u64(addr) & !(0xffff_ffffu64 << shift);
        self.write_u64(addr, word | (u64::from(value) << shift));
    }
}

/// An invalidation queue in [`Memory`]: the ring at `ring`, the status word at `status`.
#[derive(Clone, Debug)]
pub struct ModelQueue {
    /// The memory.
    pub memory: Memory,
    ring: HostPhysAddr,
    status: HostPhysAddr,
}

impl ModelQueue {
    /// A queue with its ring at `ring` and status word at `status`.
    pub fn new(memory: Memory, ring: HostPhysAddr, status: HostPhysAddr) -> Self {
        Self {
            memory,
            ring,
            status,
        }
    }
}

impl QueueMemory for ModelQueue {
    fn ring(&self) -> HostPhysAddr {
        self.ring
    }

    fn status(&self) -> HostPhysAddr {
        self.status
    }

    fn write_descriptor(&mut self, slot: u16, desc: Descriptor) {
        let at = self.ring.as_u64() + u64::from(slot % QUEUE_LEN) * 16;
        self.memory.write_u64(at, desc.lo);
        self.memory.write_u64(at + 8, desc.hi);
    }

    fn read_status(&self) -> u32 {
        self.memory.read_u32(self.status.as_u64())
    }

    fn write_status(&mut self, value: u32) {
        self.memory.write_u32(self.status.as_u64(), value)
    }
}

/// Table frames on the heap, at made-up physical addresses from 0x10_0000_0000.
#[derive(Default)]
pub struct Frames {
    frames: BTreeMap<u64, Box<[u64; 512]>>,
    next: u64,
    /// Frames that may still be handed out, when limited.
    pub budget: Option<usize>,
}

impl Frames {
    /// No frames yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames allocated now.
    pub fn live(&self) -> usize {
        self.frames.len()
    }

    /// A copy of the 512 entries of `frame`, if allocated.
    pub fn read(&self, frame: HostPhysAddr) -> Option<[u64; 512]> {
        self.frames.get(&frame.as_u64()).map(|b| **b)
    }
}

// SAFETY: every frame is its own heap allocation that stays in place until `free_frame` drops
// it; addresses only grow, so none is handed out twice; tests read frames only through `read`
// while no table method runs.
unsafe impl FrameSource for Frames {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        if let Some(budget) = &mut self.budget {
            *budget = budget.checked_sub(1)?;
        }
        self.next += 0x1000;
        let addr = 0x10_0000_0000 + self.next;
        self.frames.insert(addr, Box::new([0; 512]));
        Some(HostPhysAddr::new(addr))
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        self.frames.remove(&frame.as_u64());
    }

    fn table(&mut self, frame: HostPhysAddr) -> *mut [u64; 512] {
        match self.frames.get_mut(&frame.as_u64()) {
            Some(b) => &mut **b,
            None => panic!("model frame source: {frame} is not allocated"),
        }
    }
}

/// What the model saw, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A GCMD write and the bits it changed (persistent bits toggled, one-shot bits set).
    Command {
        /// The value written.
        value: u32,
        /// What changed.
        changed: GlobalCommand,
    },
    /// SRTP latched this RTADDR value.
    RootTableLatched(u64),
    /// SIRTP latched this IRTA value.
    InterruptTableLatched(u64),
    /// A descriptor the queue executed.
    Invalidation(Decoded),
    /// A descriptor the queue refused (IQE), at this slot.
    QueueError(u16),
}

/// The register model of one unit.
pub struct Model {
    /// VER.
    pub version: u32,
    /// CAP.
    pub cap: Cap,
    /// ECAP.
    pub ecap: Ecap,
    /// Physical memory the queue lives in.
    pub memory: Memory,
    /// While set, IQT writes are not processed (the unit "hangs").
    pub stall_queue: bool,
    /// While set, GCMD writes are recorded but do nothing (GSTS never changes).
    pub ignore_commands: bool,
    gsts: GlobalStatus,
    rtaddr: u64,
    irta: u64,
    iqa: u64,
    iqh: u16,
    iqt: u16,
    fsts: FaultStatus,
    fectl: u32,
    pmen: u32,
    iqercd: u64,
    fri: u8,
    records: Vec<(u64, u64)>,
    latched_root: Option<u64>,
    latched_irt: Option<u64>,
    events: Vec<Event>,
    violations: Vec<&'static str>,
}

impl Model {
    /// A unit with these capability registers, everything off.
    pub fn new(cap: Cap, ecap: Ecap, memory: Memory) -> Self {
        Self {
            version: 0x10,
            cap,
            ecap,
            memory,
            stall_queue: false,
            ignore_commands: false,
            gsts: GlobalStatus::empty(),
            rtaddr: 0,
            irta: 0,
            iqa: 0,
            iqh: 0,
            iqt: 0,
            fsts: FaultStatus::empty(),
            fectl: 0,
            pmen: 0,
            iqercd: 0,
            fri: 0,
            // Room for the most records CAP can declare; CAP.NFR (which tests may change) says how
            // many exist.
            records: alloc::vec![(0, 0); 256],
            latched_root: None,
            latched_irt: None,
            events: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// The capabilities QEMU's `intel-iommu,intremap=on,eim=on,caching-mode=on,aw-bits=48`
    /// reports, field by field: ND 6 (65536 domains), CM, SAGAW 39+48-bit, MGAW 48, ZLR, fault
    /// records at 0x220 (one), 2 MiB and 1 GiB pages, PSI, MAMV 0x12; ECAP: QI, IR, EIM, PT,
    /// IOTLB at 0x200, MHMV 0xf.
    pub fn qemu_like(memory: Memory) -> Self {
        let cap = 6
            | 1 << 7
            | 0b0110 << 8
            | 47 << 16
            | 1 << 22
            | (0x220 / 16) << 24
            | 0b11 << 34
            | 1 << 39
            | 0x12 << 48;
        let ecap = 1 << 1 | 1 << 3 | 1 << 4 | 1 << 6 | (0x200 / 16) << 8 | 0xf << 20;
        Self::new(Cap(cap), Ecap(ecap), memory)
    }

    /// Everything recorded so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Forgets the recorded events.
    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// The invalidations executed, in order.
    pub fn invalidations(&self) -> Vec<Decoded> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Invalidation(d) => Some(*d),
                _ => None,
            })
            .collect()
    }

    /// The GCMD writes, with what each changed.
    pub fn commands(&self) -> Vec<(u32, GlobalCommand)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Command { value, changed } => Some((*value, *changed)),
                _ => None,
            })
            .collect()
    }

    /// Sequencing mistakes seen (empty for a correct driver).
    pub fn violations(&self) -> &[&'static str] {
        &self.violations
    }

    /// GSTS.
    pub fn status(&self) -> GlobalStatus {
        self.gsts
    }

    /// Sets GSTS bits as firmware might have left them.
    pub fn force_status(&mut self, status: GlobalStatus) {
        self.gsts = status;
    }

    /// The root table address latched by SRTP.
    pub fn latched_root(&self) -> Option<u64> {
        self.latched_root
    }

    /// The IRTA value latched by SIRTP.
    pub fn latched_interrupt_table(&self) -> Option<u64> {
        self.latched_irt
    }

    /// FECTL.
    pub fn fault_event_control(&self) -> u32 {
        self.fectl
    }

    /// Sets PMEN as firmware might have.
    pub fn set_pmen(&mut self, value: u32) {
        self.pmen = value;
    }

    /// The queue head.
    pub fn queue_head(&self) -> u16 {
        self.iqh
    }

    /// Records a fault in record `index` (mod NFR), as the unit would: F set; if it was
    /// already set the fault is lost and PFO is set instead. Returns whether it was recorded.
    pub fn inject_fault(&mut self, index: usize, lo: u64, hi: u64) -> bool {
        let n = usize::from(self.cap.nfr());
        let slot = &mut self.records[index % n];
        if slot.1 & (1 << 63) != 0 {
            self.fsts |= FaultStatus::PFO;
            return false;
        }
        *slot = (lo, hi | 1 << 63);
        true
    }

    /// Sets FSTS.FRI, where the driver starts reading.
    pub fn set_fault_index(&mut self, fri: u8) {
        self.fri = fri;
    }

    /// Sets FSTS bits directly (PFO, ITE, ICE …).
    pub fn raise(&mut self, bits: FaultStatus) {
        self.fsts |= bits;
    }

    /// Record `index`'s raw halves.
    pub fn record(&self, index: usize) -> (u64, u64) {
        self.records[index % usize::from(self.cap.nfr())]
    }

    fn fsts_value(&self) -> u32 {
        let n = usize::from(self.cap.nfr());
        let pending = self.records[..n].iter().any(|r| r.1 & (1 << 63) != 0);
        let mut v = self.fsts & !(FaultStatus::PPF | FaultStatus::FRI);
        if pending {
            v |= FaultStatus::PPF;
        }
        v.bits() | u32::from(self.fri) << 8
    }

    /// The fault record register at `off`, if it is one: (record, byte within it).
    fn record_at(&self, off: u32) -> Option<(usize, u32)> {
        let base = self.cap.fault_record_offset();
        let off = u64::from(off);
        let end = base + u64::from(self.cap.nfr()) * 16;
        (base..end)
            .contains(&off)
            .then(|| (((off - base) / 16) as usize, ((off - base) % 16) as u32))
    }

    fn command(&mut self, value: u32) {
        let v = GlobalCommand::from_bits_retain(value);
        let persistent = GlobalCommand::TE
            | GlobalCommand::QIE
            | GlobalCommand::IRE
            | GlobalCommand::CFI
            | GlobalCommand::EAFL;
        let before = GlobalCommand::from_bits_retain(self.gsts.bits()) & persistent;
        let changed = ((v & persistent) ^ before) | (v & GlobalCommand::ONE_SHOT);
        self.events.push(Event::Command { value, changed });
        if changed.bits().count_ones() != 1 {
            self.violations
                .push("GCMD write changed other than exactly one bit");
        }
        if self.ignore_commands {
            return;
        }
        if changed.contains(GlobalCommand::TE)
            && v.contains(GlobalCommand::TE)
            && self.latched_root.is_none()
        {
            self.violations
                .push("TE set before a root table was latched");
        }
        if changed.contains(GlobalCommand::IRE)
            && v.contains(GlobalCommand::IRE)
            && self.latched_irt.is_none()
        {
            self.violations
                .push("IRE set before an interrupt remapping table was latched");
        }
        if changed.contains(GlobalCommand::QIE) && v.contains(GlobalCommand::QIE) {
            if self.iqt != 0 {
                self.violations.push("QIE set with IQT not 0");
            }
            // Enabling the queue resets the head (§10.4.22).
            self.iqh = 0;
        }
        if changed.contains(GlobalCommand::QIE)
            && !v.contains(GlobalCommand::QIE)
            && self.iqh != self.iqt
        {
            self.violations.push("QIE cleared with descriptors pending");
        }
        for (c, s) in [
            (GlobalCommand::TE, GlobalStatus::TES),
            (GlobalCommand::QIE, GlobalStatus::QIES),
            (GlobalCommand::IRE, GlobalStatus::IRES),
            (GlobalCommand::CFI, GlobalStatus::CFIS),
            (GlobalCommand::EAFL, GlobalStatus::AFLS),
        ] {
            self.gsts.set(s, v.contains(c));
        }
        if v.contains(GlobalCommand::SRTP) {
            self.latched_root = Some(self.rtaddr);
            self.gsts |= GlobalStatus::RTPS;
            self.events.push(Event::RootTableLatched(self.rtaddr));
        }
        if v.contains(GlobalCommand::SIRTP) {
            self.latched_irt = Some(self.irta);
            self.gsts |= GlobalStatus::IRTPS;
            self.events.push(Event::InterruptTableLatched(self.irta));
        }
    }

    /// Fetches and executes descriptors from the head to the tail.
    fn run_queue(&mut self) {
        if self.stall_queue
            || !self.gsts.contains(GlobalStatus::QIES)
            || self.fsts.contains(FaultStatus::IQE)
        {
            return;
        }
        let ring = self.iqa & !0xfff;
        while self.iqh != self.iqt {
            let at = ring + u64::from(self.iqh) * 16;
            let d = Descriptor {
                lo: self.memory.read_u64(at),
                hi: self.memory.read_u64(at + 8),
            };
            let decoded = d.decode();
            if decoded == Decoded::Invalid {
                self.fsts |= FaultStatus::IQE;
                // IQERCD.IQEI (bits 3:0) = 1: "descriptor with invalid type or reserved bits".
                self.iqercd = 1;
                self.events.push(Event::QueueError(self.iqh));
                return;
            }
            self.events.push(Event::Invalidation(decoded));
            if let Decoded::Wait {
                status: Some((addr, data)),
                ..
            } = decoded
            {
                self.memory.write_u32(addr.as_u64(), data);
            }
            self.iqh = (self.iqh + 1) % QUEUE_LEN;
        }
    }
}

impl Registers for Model {
    fn read32(&self, off: u32) -> u32 {
        if let Some((i, at)) = self.record_at(off) {
            let (lo, hi) = self.records[i];
            let word = if at < 8 { lo } else { hi };
            return (word >> ((at % 8) / 4 * 32)) as u32;
        }
        match off {
            offset::VER => self.version,
            offset::GSTS => self.gsts.bits(),
            offset::FSTS => self.fsts_value(),
            offset::FECTL => self.fectl,
            offset::PMEN => self.pmen,
            offset::CAP => self.cap.0 as u32,
            offset::ECAP => self.ecap.0 as u32,
            _ => 0,
        }
    }

    fn read64(&self, off: u32) -> u64 {
        if let Some((i, at)) = self.record_at(off) {
            let (lo, hi) = self.records[i];
            return if at < 8 { lo } else { hi };
        }
        match off {
            offset::CAP => self.cap.0,
            offset::ECAP => self.ecap.0,
            offset::RTADDR => self.rtaddr,
            offset::IQH => regs::queue_index_reg(self.iqh),
            offset::IQT => regs::queue_index_reg(self.iqt),
            offset::IQA => self.iqa,
            offset::IQERCD => self.iqercd,
            offset::IRTA => self.irta,
            o => u64::from(self.read32(o)),
        }
    }

    fn write32(&mut self, off: u32, value: u32) {
        if let Some((i, at)) = self.record_at(off) {
            // F (bit 127, bit 31 of the last dword) is RW1C; the rest is read-only.
            if at == 12 && value & (1 << 31) != 0 {
                self.records[i].1 &= !(1 << 63);
            }
            return;
        }
        match off {
            offset::GCMD => self.command(value),
            offset::FSTS => {
                let clear = FaultStatus::from_bits_retain(value)
                    & (FaultStatus::PFO | FaultStatus::IQE | FaultStatus::ICE | FaultStatus::ITE);
                let was_stopped = self.fsts.contains(FaultStatus::IQE);
                self.fsts &= !clear;
                if was_stopped && !self.fsts.contains(FaultStatus::IQE) {
                    self.run_queue();
                }
            }
            offset::FECTL => self.fectl = value & FaultEventControl::IM.bits(),
            offset::PMEN => {
                // PRS follows EPM at once.
                self.pmen = if value & regs::PMEN_EPM != 0 {
                    regs::PMEN_EPM | regs::PMEN_PRS
                } else {
                    0
                }
            }
            _ => {}
        }
    }

    fn write64(&mut self, off: u32, value: u64) {
        match off {
            offset::RTADDR => self.rtaddr = value,
            offset::IQA => self.iqa = value,
            offset::IRTA => self.irta = value,
            offset::IQT => {
                self.iqt = regs::queue_index(value) % QUEUE_LEN;
                self.run_queue();
            }
            offset::IQH => {}
            o => {
                self.write32(o, value as u32);
            }
        }
    }
}
