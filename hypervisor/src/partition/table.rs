//! The partition table: one slot per enclave, of fixed capacity, changed only by management
//! operations on the boot processor (the manager). Cores never touch it: they learn what to run
//! through their mailboxes ([`crate::machine::percpu`]) and hand back their reports, which the
//! manager files here.
//!
//! A slot's life:
//!
//! ```text
//!   Free ─describe─► Waiting ─built─► Built ─running─► Running ─ended─► Ended ─reclaim─► Reclaimed
//!                       │               │                 │                │
//!                       └───────────────┴──── failed ─────┴──► Failed      └─ keep (memory stays
//!                                                                              allocated: a core
//!                                                                              did not let go)
//! ```
//!
//! `Waiting` is a described enclave not built yet: it waits for the enclave it runs `after`
//! to be done (reclaimed, failed, or kept), so it is built from the RAM and started on the
//! cores that one gave back. Each slot holds the enclave's description, its RAM range (kept
//! after reclaim, for the summary), what building it made (`T`: its tables and RAM, torn down
//! when the slot is reclaimed) and its report. Every transition checks the slot's state and
//! refuses a wrong one without changing anything.

use crate::partition::config::{EnclaveConfig, MAX_ENCLAVES};
use crate::summary::EnclaveReport;
use alloc::string::String;
use alloc::vec::Vec;
use boot::PhysRange;
use core::fmt;

/// A slot's index.
pub type PartitionId = crate::machine::percpu::PartitionId;

/// Slots in the table.
pub const MAX_PARTITIONS: usize = MAX_ENCLAVES;

/// Where a slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Unused.
    Free,
    /// Created at run time (`atoll create`): its kernel and initrd are being loaded; nothing
    /// is built and it is not started until [`PartitionTable::loaded`].
    Loading,
    /// Described; waiting for the enclave it runs after (or for the manager to build it).
    Waiting,
    /// RAM and second-stage tables made, image loaded; not started.
    Built,
    /// Its cores run it.
    Running,
    /// It ended; its cores have not let go yet, its memory is still allocated.
    Ended,
    /// It could not be built or started (its report says why); nothing of it is allocated.
    Failed,
    /// It ended and everything it had went back: cores parked, tables freed, RAM zeroed and in
    /// the pool.
    Reclaimed,
}

impl SlotState {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Loading => "loading",
            SlotState::Waiting => "waiting",
            SlotState::Built => "built",
            SlotState::Running => "running",
            SlotState::Ended => "ended",
            SlotState::Failed => "failed",
            SlotState::Reclaimed => "reclaimed",
        }
    }
}

/// A refused table operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// No such slot, or a free one.
    NoSuchPartition(PartitionId),
    /// The slot is not in a state the operation applies to.
    WrongState {
        /// The slot.
        id: PartitionId,
        /// Its state.
        state: SlotState,
        /// The operation.
        op: &'static str,
    },
    /// More enclaves than slots.
    Full,
    /// `after` names no enclave described before this one (descriptions are checked by
    /// [`crate::partition::config::parse`], so this is a manager bug).
    BadAfter(String),
    /// An enclave of that name exists (until it is destroyed).
    NameTaken(String),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::NoSuchPartition(id) => write!(f, "no partition {id}"),
            TableError::WrongState { id, state, op } => {
                write!(f, "partition {id} is {}: cannot {op} it", state.name())
            }
            TableError::Full => write!(f, "more than {MAX_PARTITIONS} partitions"),
            TableError::BadAfter(n) => write!(f, "`after` names no earlier enclave '{n}'"),
            TableError::NameTaken(n) => write!(f, "an enclave named '{n}' exists"),
        }
    }
}

/// One enclave's slot.
pub struct Slot<T> {
    state: SlotState,
    config: Option<EnclaveConfig>,
    after: Option<PartitionId>,
    ram: Option<PhysRange>,
    built: Option<T>,
    report: Option<EnclaveReport>,
    reused_from: Vec<String>,
}

impl<T> Slot<T> {
    const fn free() -> Self {
        Self {
            state: SlotState::Free,
            config: None,
            after: None,
            ram: None,
            built: None,
            report: None,
            reused_from: Vec::new(),
        }
    }

    /// Its state.
    pub fn state(&self) -> SlotState {
        self.state
    }

    /// Its description (none when free).
    pub fn config(&self) -> Option<&EnclaveConfig> {
        self.config.as_ref()
    }

    /// Its RAM, once built (kept after reclaim).
    pub fn ram(&self) -> Option<PhysRange> {
        self.ram
    }

    /// What building it made, while it holds it.
    pub fn built(&self) -> Option<&T> {
        self.built.as_ref()
    }

    /// Names of reclaimed enclaves whose RAM this one's overlaps.
    pub fn reused_from(&self) -> &[String] {
        &self.reused_from
    }

    /// Done: nothing more will happen to it in this run.
    fn done(&self) -> bool {
        matches!(self.state, SlotState::Failed | SlotState::Reclaimed)
            || self.state == SlotState::Ended && self.built.is_none()
    }
}

/// The table.
pub struct PartitionTable<T> {
    slots: Vec<Slot<T>>,
}

impl<T> Default for PartitionTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PartitionTable<T> {
    /// Every slot free.
    pub fn new() -> Self {
        Self {
            slots: (0..MAX_PARTITIONS).map(|_| Slot::free()).collect(),
        }
    }

    /// Puts checked descriptions into free slots (as `Waiting`), in order; returns their ids.
    pub fn describe(
        &mut self,
        configs: Vec<EnclaveConfig>,
    ) -> Result<Vec<PartitionId>, TableError> {
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].state == SlotState::Free)
            .take(configs.len())
            .collect();
        if free.len() < configs.len() {
            return Err(TableError::Full);
        }
        // Resolve every `after` before changing anything.
        let mut afters = Vec::with_capacity(configs.len());
        for (k, c) in configs.iter().enumerate() {
            let after = match &c.after {
                None => None,
                Some(name) => {
                    let earlier = configs[..k]
                        .iter()
                        .position(|o| o.name == *name)
                        .map(|j| free[j]);
                    let existing = || {
                        self.slots
                            .iter()
                            .position(|s| s.config.as_ref().is_some_and(|o| o.name == *name))
                    };
                    Some(
                        earlier
                            .or_else(existing)
                            .ok_or_else(|| TableError::BadAfter(name.clone()))?
                            as PartitionId,
                    )
                }
            };
            afters.push(after);
        }
        for ((c, after), &i) in configs.into_iter().zip(afters).zip(&free) {
            let s = &mut self.slots[i];
            *s = Slot::free();
            s.state = SlotState::Waiting;
            s.config = Some(c);
            s.after = after;
        }
        Ok(free.iter().map(|&i| i as PartitionId).collect())
    }

    /// The slot `id`, unless free.
    pub fn get(&self, id: PartitionId) -> Option<&Slot<T>> {
        self.slots
            .get(usize::from(id))
            .filter(|s| s.state != SlotState::Free)
    }

    fn slot(
        &mut self,
        id: PartitionId,
        op: &'static str,
        from: &[SlotState],
    ) -> Result<&mut Slot<T>, TableError> {
        let s = self
            .slots
            .get_mut(usize::from(id))
            .filter(|s| s.state != SlotState::Free)
            .ok_or(TableError::NoSuchPartition(id))?;
        if !from.contains(&s.state) {
            return Err(TableError::WrongState {
                id,
                state: s.state,
                op,
            });
        }
        Ok(s)
    }

    /// Waiting slots that may be built now: no `after`, or the one they follow is done.
    pub fn ready_to_build(&self) -> Vec<PartitionId> {
        (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.state == SlotState::Waiting
                    && s.after.is_none_or(|a| self.slots[usize::from(a)].done())
            })
            .map(|i| i as PartitionId)
            .collect()
    }

    /// Built slots, in order (to start).
    pub fn built_slots(&self) -> Vec<PartitionId> {
        self.ids_in(SlotState::Built)
    }

    /// Slots in `state`.
    pub fn ids_in(&self, state: SlotState) -> Vec<PartitionId> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].state == state)
            .map(|i| i as PartitionId)
            .collect()
    }

    /// Waiting → Built: its RAM and what building made. Records which reclaimed enclaves'
    /// RAM it reuses.
    pub fn built(&mut self, id: PartitionId, ram: PhysRange, what: T) -> Result<(), TableError> {
        let reused: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Reclaimed && s.ram.is_some_and(|r| r.overlaps(&ram)))
            .filter_map(|s| s.config.as_ref().map(|c| c.name.clone()))
            .collect();
        let s = self.slot(id, "build", &[SlotState::Waiting])?;
        s.state = SlotState::Built;
        s.ram = Some(ram);
        s.built = Some(what);
        s.reused_from = reused;
        Ok(())
    }

    /// Waiting, Built or Running → Failed, with its report. Returns what building made, for
    /// the caller to tear down (a Running slot's cores must have let go first).
    pub fn failed(
        &mut self,
        id: PartitionId,
        report: EnclaveReport,
    ) -> Result<Option<T>, TableError> {
        let s = self.slot(
            id,
            "fail",
            &[SlotState::Waiting, SlotState::Built, SlotState::Running],
        )?;
        s.state = SlotState::Failed;
        s.report = Some(report);
        Ok(s.built.take())
    }

    /// Built → Running (its cores acknowledged Start).
    pub fn running(&mut self, id: PartitionId) -> Result<(), TableError> {
        self.slot(id, "start", &[SlotState::Built])?.state = SlotState::Running;
        Ok(())
    }

    /// Running → Ended, with its report.
    pub fn ended(&mut self, id: PartitionId, report: EnclaveReport) -> Result<(), TableError> {
        let s = self.slot(id, "end", &[SlotState::Running])?;
        s.state = SlotState::Ended;
        s.report = Some(report);
        Ok(())
    }

    /// Ended → Reclaimed (its cores let go): returns what building made, for the caller to
    /// tear down (free the tables, zero the RAM and return it to the pool).
    pub fn reclaim(&mut self, id: PartitionId) -> Result<T, TableError> {
        let s = self.slot(id, "reclaim", &[SlotState::Ended])?;
        let Some(what) = s.built.take() else {
            return Err(TableError::WrongState {
                id,
                state: s.state,
                op: "reclaim (its memory is kept)",
            });
        };
        s.state = SlotState::Reclaimed;
        Ok(what)
    }

    /// An Ended slot whose cores did not let go keeps its memory for good (a core that may
    /// still cache translations of its tables must not see them reused): `what` is forgotten,
    /// never freed, and the slot counts as done. `why` goes into its report.
    pub fn keep(&mut self, id: PartitionId, why: &str) -> Result<(), TableError> {
        let s = self.slot(id, "keep", &[SlotState::Ended])?;
        if let Some(what) = s.built.take() {
            core::mem::forget(what);
        }
        if let Some(r) = s.report.as_mut() {
            if !r.detail.is_empty() {
                r.detail.push_str("; ");
            }
            r.detail.push_str(why);
        }
        Ok(())
    }

    /// A run-time enclave (`atoll create`): a free slot in [`SlotState::Loading`]. Refused,
    /// changing nothing, if its name is taken (by any slot not free) or every slot is used.
    pub fn create(&mut self, config: EnclaveConfig) -> Result<PartitionId, TableError> {
        if self.find(&config.name).is_some() {
            return Err(TableError::NameTaken(config.name));
        }
        let i = self
            .slots
            .iter()
            .position(|s| s.state == SlotState::Free)
            .ok_or(TableError::Full)?;
        let s = &mut self.slots[i];
        *s = Slot::free();
        s.state = SlotState::Loading;
        s.config = Some(config);
        Ok(i as PartitionId)
    }

    /// Loading → Waiting: its kernel and initrd are in; the manager builds it next.
    pub fn loaded(&mut self, id: PartitionId) -> Result<(), TableError> {
        self.slot(id, "finish loading", &[SlotState::Loading])?
            .state = SlotState::Waiting;
        Ok(())
    }

    /// The slot of the enclave named `name`, if any slot not free has it.
    pub fn find(&self, name: &str) -> Option<PartitionId> {
        self.slots
            .iter()
            .position(|s| {
                s.state != SlotState::Free && s.config.as_ref().is_some_and(|c| c.name == name)
            })
            .map(|i| i as PartitionId)
    }

    /// Frees the slot of an enclave that holds nothing any more (`atoll destroy`): Loading,
    /// Failed, Reclaimed, or Ended with its memory forgotten. Refused, changing nothing, for
    /// a slot that still holds memory or cores (Waiting with a successor, Built, Running,
    /// Ended with its memory).
    pub fn remove(&mut self, id: PartitionId) -> Result<(), TableError> {
        let s = self.slot(
            id,
            "remove",
            &[
                SlotState::Loading,
                SlotState::Failed,
                SlotState::Reclaimed,
                SlotState::Ended,
            ],
        )?;
        if s.built.is_some() {
            return Err(TableError::WrongState {
                id,
                state: s.state,
                op: "remove (it still holds its memory)",
            });
        }
        *s = Slot::free();
        Ok(())
    }

    /// The slots in use (not free).
    pub fn used(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state != SlotState::Free)
            .count()
    }

    /// Every slot not free, with its id.
    pub fn slots_in_use(&self) -> impl Iterator<Item = (PartitionId, &Slot<T>)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state != SlotState::Free)
            .map(|(i, s)| (i as PartitionId, s))
    }

    /// The report an ended or failed slot keeps.
    pub fn report(&self, id: PartitionId) -> Option<&EnclaveReport> {
        self.get(id).and_then(|s| s.report.as_ref())
    }

    /// Whether every described enclave is done.
    pub fn all_done(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.state == SlotState::Free || s.done())
    }

    /// Every described enclave's report, in slot order, with what the table knows added: its
    /// RAM's host-physical base, whether it was reclaimed, whose RAM it reused.
    pub fn reports(&self) -> Vec<EnclaveReport> {
        self.slots
            .iter()
            .filter(|s| s.state != SlotState::Free)
            .map(|s| {
                let mut r = s.report.clone().unwrap_or_else(|| {
                    let c = s.config.as_ref();
                    EnclaveReport {
                        name: c.map(|c| c.name.clone()).unwrap_or_default(),
                        cores: c.map(|c| c.cores.clone()).unwrap_or_default(),
                        memory_mib: c.map_or(0, |c| c.memory_mib),
                        state: "not_started",
                        detail: alloc::format!("still {} when the run ended", s.state.name()),
                        ..Default::default()
                    }
                });
                r.ram_base = s.ram.map(|ram| ram.start.as_u64());
                r.reclaimed = s.state == SlotState::Reclaimed;
                r.ram_reused_from = s.reused_from.clone();
                r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::config::{EntryMode, IoPolicy};
    use boot::HostPhysAddr;

    fn config(name: &str, core: u32, after: Option<&str>) -> EnclaveConfig {
        EnclaveConfig {
            name: name.into(),
            cores: vec![core],
            memory_mib: 16,
            image: "suite64".into(),
            entry: EntryMode::Long64,
            initrd: None,
            serial_input: false,
            cmdline: String::new(),
            io_unknown: IoPolicy::Ignore,
            after: after.map(Into::into),
            devices: Vec::new(),
            vf: Vec::new(),
            virtio: Vec::new(),
        }
    }

    fn ram(base: u64) -> PhysRange {
        PhysRange::from_len(HostPhysAddr::new(base), 16 << 20)
    }

    fn report(name: &str) -> EnclaveReport {
        EnclaveReport {
            name: name.into(),
            state: "ended",
            end_reason: Some("exit"),
            ..Default::default()
        }
    }

    /// Payload that records being dropped, to prove what the table hands back or forgets.
    struct Built(&'static str);

    #[test]
    fn a_slot_lives_through_every_state_and_its_successor_reuses_its_ram() {
        let mut t = PartitionTable::<Built>::new();
        let ids = t
            .describe(vec![
                config("a", 1, None),
                config("b", 1, Some("a")),
                config("c", 2, None),
            ])
            .unwrap();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(t.get(1).unwrap().state(), SlotState::Waiting);
        assert!(t.get(3).is_none(), "free");
        // b waits for a; a and c may be built.
        assert_eq!(t.ready_to_build(), [0, 2]);
        t.built(0, ram(0x200_0000), Built("a")).unwrap();
        assert_eq!(t.ready_to_build(), [2]);
        t.running(0).unwrap();
        assert_eq!(t.ready_to_build(), [2], "a running: b still waits");
        t.ended(0, report("a")).unwrap();
        assert_eq!(
            t.ready_to_build(),
            [2],
            "a ended, not reclaimed: b still waits"
        );
        assert!(!t.all_done());
        assert_eq!(t.reclaim(0).unwrap().0, "a");
        assert_eq!(t.get(0).unwrap().state(), SlotState::Reclaimed);
        assert!(t.get(0).unwrap().built().is_none());
        assert_eq!(t.ready_to_build(), [1, 2]);
        // b gets a's RAM back and the table says so.
        t.built(1, ram(0x200_0000), Built("b")).unwrap();
        assert_eq!(t.get(1).unwrap().reused_from(), ["a"]);
        t.built(2, ram(0x400_0000), Built("c")).unwrap();
        assert!(t.get(2).unwrap().reused_from().is_empty());
        assert_eq!(t.built_slots(), [1, 2]);
        for id in [1, 2] {
            t.running(id).unwrap();
            t.ended(id, report(["a", "b", "c"][usize::from(id)]))
                .unwrap();
            t.reclaim(id).unwrap();
        }
        assert!(t.all_done());
        let r = t.reports();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].ram_base, Some(0x200_0000));
        assert_eq!(r[1].ram_base, r[0].ram_base);
        assert_eq!(r[1].ram_reused_from, ["a"]);
        assert!(r.iter().all(|r| r.reclaimed && r.state == "ended"));
    }

    #[test]
    fn wrong_transitions_are_refused_and_change_nothing() {
        let mut t = PartitionTable::<Built>::new();
        t.describe(vec![config("a", 1, None)]).unwrap();
        let wrong = |e: TableError, op| match e {
            TableError::WrongState { op: o, .. } => assert_eq!(o, op),
            e => panic!("{e}"),
        };
        wrong(t.running(0).unwrap_err(), "start");
        wrong(t.ended(0, report("a")).unwrap_err(), "end");
        wrong(t.reclaim(0).err().unwrap(), "reclaim");
        assert_eq!(t.get(0).unwrap().state(), SlotState::Waiting);
        t.built(0, ram(0), Built("a")).unwrap();
        wrong(t.built(0, ram(0), Built("again")).unwrap_err(), "build");
        assert_eq!(t.get(0).unwrap().built().unwrap().0, "a");
        assert_eq!(t.running(9), Err(TableError::NoSuchPartition(9)));
        assert_eq!(t.running(1000), Err(TableError::NoSuchPartition(1000)));
        assert_eq!(
            t.running(0).and(t.running(0)).unwrap_err().to_string(),
            "partition 0 is running: cannot start it"
        );
    }

    #[test]
    fn failures_hand_back_what_was_built_and_release_successors() {
        let mut t = PartitionTable::<Built>::new();
        t.describe(vec![config("a", 1, None), config("b", 1, Some("a"))])
            .unwrap();
        // Failed before being built: nothing to tear down.
        assert!(t.failed(0, report("a")).unwrap().is_none());
        assert_eq!(t.ready_to_build(), [1], "a failed: b goes");
        t.built(1, ram(0), Built("b")).unwrap();
        assert_eq!(t.failed(1, report("b")).unwrap().unwrap().0, "b");
        assert!(t.all_done());
        assert!(t.reports().iter().all(|r| !r.reclaimed));
    }

    #[test]
    fn a_core_that_does_not_let_go_keeps_the_memory() {
        let mut t = PartitionTable::<Built>::new();
        t.describe(vec![config("a", 1, None), config("b", 1, Some("a"))])
            .unwrap();
        t.built(0, ram(0), Built("a")).unwrap();
        t.running(0).unwrap();
        t.ended(0, report("a")).unwrap();
        t.keep(0, "core 1 did not acknowledge Reclaim").unwrap();
        assert_eq!(t.get(0).unwrap().state(), SlotState::Ended);
        assert!(t.reclaim(0).is_err(), "never freed");
        assert_eq!(t.ready_to_build(), [1], "done: b may be built elsewhere");
        let r = t.reports();
        assert!(r[0].detail.ends_with("core 1 did not acknowledge Reclaim"));
        assert!(!r[0].reclaimed);
        assert_eq!(r[1].state, "not_started");
        assert_eq!(r[1].detail, "still waiting when the run ended");
    }

    #[test]
    fn run_time_enclaves_are_created_loaded_and_removed_and_names_stay_unique() {
        let mut t: PartitionTable<u32> = PartitionTable::new();
        let a = t.create(config("a", 1, None)).unwrap();
        assert_eq!(t.get(a).unwrap().state(), SlotState::Loading);
        // A loading enclave is not built by the manager's loop.
        assert!(t.ready_to_build().is_empty());
        assert_eq!(
            t.create(config("a", 2, None)),
            Err(TableError::NameTaken("a".into()))
        );
        assert_eq!(t.find("a"), Some(a));
        assert_eq!(t.used(), 1);
        t.loaded(a).unwrap();
        assert_eq!(t.ready_to_build(), vec![a]);
        assert!(t.loaded(a).is_err());
        t.built(a, ram(0x100_0000), 7).unwrap();
        // Built: it holds memory, so it cannot be removed.
        assert!(t.remove(a).is_err());
        t.running(a).unwrap();
        assert!(t.remove(a).is_err());
        t.ended(a, report("a")).unwrap();
        assert!(t.remove(a).is_err(), "ended with its memory");
        assert_eq!(t.reclaim(a), Ok(7));
        assert_eq!(t.report(a).map(|r| r.name.as_str()), Some("a"));
        t.remove(a).unwrap();
        assert_eq!(t.find("a"), None);
        assert_eq!(t.used(), 0);
        assert!(t.remove(a).is_err(), "a free slot");
        // The name and the slot are free again; a loading enclave is removed directly.
        let b = t.create(config("a", 1, None)).unwrap();
        assert_eq!(b, a);
        t.remove(b).unwrap();
        // Every slot used: Full, nothing changed.
        for i in 0..MAX_PARTITIONS {
            t.create(config(&alloc::format!("e{i}"), 1, None)).unwrap();
        }
        assert_eq!(t.create(config("x", 1, None)), Err(TableError::Full));
        assert_eq!(t.used(), MAX_PARTITIONS);
    }

    #[test]
    fn capacity_and_after_resolution() {
        let mut t = PartitionTable::<Built>::new();
        let many: Vec<_> = (0..MAX_PARTITIONS as u32)
            .map(|i| config(&alloc::format!("e{i}"), i, None))
            .collect();
        t.describe(many).unwrap();
        assert_eq!(
            t.describe(vec![config("x", 0, None)]),
            Err(TableError::Full)
        );
        let mut t = PartitionTable::<Built>::new();
        assert_eq!(
            t.describe(vec![config("b", 1, Some("nobody"))]),
            Err(TableError::BadAfter("nobody".into()))
        );
        assert!(t.get(0).is_none(), "nothing described on error");
    }
}
