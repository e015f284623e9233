//! Bringing application processors online.
//!
//! [`CoreTable`] holds one slot per processor the MADT lists; each core fills only its own slot
//! (found by APIC id), so there is no shared mutable state beyond one atomic per slot. What a
//! core does once online comes through its mailbox ([`crate::machine::percpu`]).
//! [`bring_up`] runs the INIT-SIPI-SIPI sequence of SDM Vol. 3A §9.4.4.1 for every AP and waits,
//! with a deadline, for each to report in. It is written against the [`StartupBus`] trait so the
//! timing logic, including a core that never answers, is tested on the host.

use crate::machine::cpu::CoreCaps;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use spin::Once;

/// Most cores tracked.
pub const MAX_CORES: usize = crate::machine::platform::MAX_CPUS;

/// Delay between INIT and the first SIPI (SDM Vol. 3A §9.4.4.1: 10 ms).
pub const INIT_DELAY_US: u64 = 10_000;
/// Delay between the two SIPIs (200 µs).
pub const SIPI_DELAY_US: u64 = 200;

/// A slot's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CoreState {
    /// Not in use.
    Empty = 0,
    /// Listed, not (yet) reported in.
    Expected = 1,
    /// Reported in.
    Online = 2,
}

/// One core's slot.
pub struct CoreSlot {
    apic_id: AtomicU32,
    state: AtomicU8,
    caps: Once<CoreCaps>,
}

impl CoreSlot {
    const fn new() -> Self {
        Self {
            apic_id: AtomicU32::new(u32::MAX),
            state: AtomicU8::new(CoreState::Empty as u8),
            caps: Once::new(),
        }
    }

    /// Its APIC id.
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Acquire)
    }

    /// Where it is in its life.
    pub fn state(&self) -> CoreState {
        match self.state.load(Ordering::Acquire) {
            2 => CoreState::Online,
            1 => CoreState::Expected,
            _ => CoreState::Empty,
        }
    }

    /// What it reported, once online.
    pub fn caps(&self) -> Option<&CoreCaps> {
        self.caps.get()
    }
}

/// Why a core could not check in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckInError {
    /// Its APIC id is not in the table (the MADT did not list it).
    Unknown(u32),
    /// A core with this APIC id already checked in.
    Duplicate(u32),
}

/// Every core's slot.
pub struct CoreTable {
    slots: [CoreSlot; MAX_CORES],
    len: AtomicU32,
}

impl Default for CoreTable {
    fn default() -> Self {
        Self::new()
    }
}

impl CoreTable {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            slots: [const { CoreSlot::new() }; MAX_CORES],
            len: AtomicU32::new(0),
        }
    }

    /// Lists the cores to expect. Called once by the BSP before any AP starts.
    pub fn expect(&self, apic_ids: &[u32]) {
        let n = apic_ids.len().min(MAX_CORES);
        for (slot, &id) in self.slots.iter().zip(&apic_ids[..n]) {
            slot.apic_id.store(id, Ordering::Relaxed);
            slot.state
                .store(CoreState::Expected as u8, Ordering::Relaxed);
        }
        self.len.store(n as u32, Ordering::Release);
    }

    /// The listed slots.
    pub fn slots(&self) -> &[CoreSlot] {
        &self.slots[..self.len.load(Ordering::Acquire) as usize]
    }

    /// The slot of `apic_id`.
    pub fn slot(&self, apic_id: u32) -> Option<&CoreSlot> {
        self.slots().iter().find(|s| s.apic_id() == apic_id)
    }

    /// A core reports in with what it probed on itself.
    pub fn check_in(&self, caps: CoreCaps) -> Result<(), CheckInError> {
        let slot = self
            .slot(caps.apic_id)
            .ok_or(CheckInError::Unknown(caps.apic_id))?;
        if slot
            .state
            .compare_exchange(
                CoreState::Expected as u8,
                CoreState::Online as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(CheckInError::Duplicate(caps.apic_id));
        }
        slot.caps.call_once(|| caps);
        Ok(())
    }

    /// Whether `apic_id` has checked in.
    pub fn is_online(&self, apic_id: u32) -> bool {
        self.slot(apic_id)
            .is_some_and(|s| s.state() == CoreState::Online)
    }
}

/// What bring-up needs from the machine.
pub trait StartupBus {
    /// Sends an INIT IPI to `apic_id`.
    fn send_init(&mut self, apic_id: u32);
    /// Sends a STARTUP IPI with `vector` to `apic_id`.
    fn send_startup(&mut self, apic_id: u32, vector: u8);
    /// Busy-waits `us` microseconds.
    fn delay_us(&mut self, us: u64);
    /// Microseconds since some fixed point.
    fn now_us(&mut self) -> u64;
    /// Whether `apic_id` has checked in.
    fn online(&self, apic_id: u32) -> bool;
}

/// The outcome of [`bring_up`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BringUpReport {
    /// APs that checked in, in start order.
    pub online: Vec<u32>,
    /// APs that did not within the deadline.
    pub missing: Vec<u32>,
    /// Microseconds from the first INIT until the last AP answered or the deadline passed.
    pub elapsed_us: u64,
}

/// Starts every AP in `aps` and waits up to `timeout_us` after the last SIPI for them to check in.
pub fn bring_up(
    bus: &mut impl StartupBus,
    aps: &[u32],
    vector: u8,
    timeout_us: u64,
) -> BringUpReport {
    let t0 = bus.now_us();
    for &id in aps {
        bus.send_init(id);
    }
    bus.delay_us(INIT_DELAY_US);
    for &id in aps {
        bus.send_startup(id, vector);
    }
    bus.delay_us(SIPI_DELAY_US);
    // The second SIPI only for cores that have not started: a started core would restart.
    for &id in aps {
        if !bus.online(id) {
            bus.send_startup(id, vector);
        }
    }
    let deadline = bus.now_us().saturating_add(timeout_us);
    while !aps.iter().all(|&id| bus.online(id)) && bus.now_us() < deadline {
        bus.delay_us(100);
    }
    let (online, missing) = aps.iter().partition(|&&id| bus.online(id));
    BringUpReport {
        online,
        missing,
        elapsed_us: bus.now_us().saturating_sub(t0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A machine where each AP answers a given number of µs after its first SIPI, or never.
    struct FakeBus {
        now: u64,
        answer_after: HashMap<u32, Option<u64>>,
        first_sipi: HashMap<u32, u64>,
        log: RefCell<Vec<String>>,
    }

    impl StartupBus for FakeBus {
        fn send_init(&mut self, id: u32) {
            self.log.borrow_mut().push(format!("init {id}"));
        }
        fn send_startup(&mut self, id: u32, vector: u8) {
            self.log.borrow_mut().push(format!("sipi {id} {vector:#x}"));
            self.first_sipi.entry(id).or_insert(self.now);
        }
        fn delay_us(&mut self, us: u64) {
            self.now += us;
        }
        fn now_us(&mut self) -> u64 {
            self.now
        }
        fn online(&self, id: u32) -> bool {
            match (
                self.first_sipi.get(&id),
                self.answer_after.get(&id).copied().flatten(),
            ) {
                (Some(&t), Some(after)) => self.now >= t + after,
                _ => false,
            }
        }
    }

    fn bus(answers: &[(u32, Option<u64>)]) -> FakeBus {
        FakeBus {
            now: 0,
            answer_after: answers.iter().copied().collect(),
            first_sipi: HashMap::new(),
            log: RefCell::default(),
        }
    }

    #[test]
    fn all_cores_answer() {
        let mut b = bus(&[(1, Some(50)), (2, Some(5_000))]);
        let r = bring_up(&mut b, &[1, 2], 8, 1_000_000);
        assert_eq!(r.online, vec![1, 2]);
        assert!(r.missing.is_empty());
        // Core 1 answered before the second SIPI and is not restarted; core 2 gets both.
        let log = b.log.borrow();
        assert_eq!(log.iter().filter(|l| l.starts_with("sipi 1")).count(), 1);
        assert_eq!(log.iter().filter(|l| l.starts_with("sipi 2")).count(), 2);
        assert!(log
            .iter()
            .all(|l| !l.starts_with("sipi") || l.ends_with("0x8")));
        // It stops waiting as soon as the last one is in, not at the deadline.
        assert!(r.elapsed_us < 20_000, "{}", r.elapsed_us);
    }

    #[test]
    fn a_silent_core_is_reported_by_apic_id_and_does_not_hang() {
        let mut b = bus(&[(1, Some(10)), (7, None), (3, Some(30))]);
        let r = bring_up(&mut b, &[1, 7, 3], 8, 500_000);
        assert_eq!(r.online, vec![1, 3]);
        assert_eq!(r.missing, vec![7]);
        assert!(r.elapsed_us >= 500_000 && r.elapsed_us < 600_000);
    }

    #[test]
    fn table_check_in() {
        let t = CoreTable::new();
        t.expect(&[0, 2, 4]);
        let caps = |apic_id| CoreCaps {
            apic_id,
            vmx: true,
            ..Default::default()
        };
        t.check_in(caps(2)).unwrap();
        assert!(t.is_online(2) && !t.is_online(4));
        assert_eq!(t.check_in(caps(2)), Err(CheckInError::Duplicate(2)));
        assert_eq!(t.check_in(caps(9)), Err(CheckInError::Unknown(9)));
        assert!(t.slot(2).unwrap().caps().unwrap().vmx);
        assert_eq!(t.slots().len(), 3);
    }
}
