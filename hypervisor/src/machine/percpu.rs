//! Per-core state: one cache-line-aligned [`PerCore`] block per core, holding its command
//! mailbox and its counters.
//!
//! The mailbox is how the manager (the boot processor) changes what a core does at run time:
//! it posts one [`Command`] at a time — [`Command::Start`] a partition, [`Command::Stop`] it,
//! [`Command::Reclaim`] the core after its partition ended — and waits, with a deadline, for
//! the core's [`Ack`]. Two words carry everything, each written by one side only and each on
//! its own cache line (the manager's writes never invalidate the line the core polls for
//! its own state, and the other way round):
//!
//! * the **command word**, written by the manager: sequence number, operation, partition;
//! * the **status word**, written by the core: the sequence number it last acknowledged, the
//!   acknowledgement, and the core's [`Phase`] — [`Phase::Parked`], [`Phase::Running`] a
//!   partition, or [`Phase::Ended`] with the partition's [`Outcome`].
//!
//! A command is pending while the two sequence numbers differ; the manager posts only when none
//! is pending, so the core never misses one. A single status word makes the acknowledgement
//! and the phase it leaves the core in one atomic fact: the manager never sees an ack for a
//! phase that is not yet there. The core's phase also moves without a command when its
//! partition ends (Running → Ended): that is the end notification the manager watches for.
//!
//! ```text
//!            Start(p): ack Done            partition ends / Stop: ack Done
//!   Parked ───────────────────► Running(p) ─────────────────────────► Ended(p, outcome)
//!     ▲                                                                        │
//!     └──────────────────────────── Reclaim: core cleaned up, ack Done ────────┘
//! ```
//!
//! Everything else is refused and changes nothing: Start unless parked, Reclaim while running.
//! Stop on a core that runs nothing and Reclaim on a parked core are acknowledged as done (the
//! manager may repeat them after a timeout). A partition that atoll could not run, or whose
//! handling faulted, ends with [`Outcome::Failed`] and a [`FailReason`] code; a core whose
//! clean-up fails acknowledges Reclaim with [`Ack::Failed`] and stays ended (not reusable). The
//! words for a failure live in the partition's report; the mailbox carries codes only, so the
//! protocol needs no allocation and a core can acknowledge from any state, a fault handler
//! included.
//!
//! The protocol and the core's side of it ([`PerCore::serve`], written against
//! [`CoreWork`]) are pure and tested on the host with threads playing manager and core; the
//! target adds only the waiting (HLT until an IPI kick or a timer tick) through [`Waiter`].

use core::sync::atomic::{AtomicU64, Ordering};

/// A partition's index in the partition table.
pub type PartitionId = u16;

/// What the manager asks of a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the partition (this core's vCPU of it). Valid when parked.
    Start(PartitionId),
    /// End the partition this core runs, at its next exit (the manager kicks the core so there
    /// is one). Valid in any phase.
    Stop,
    /// Forget the partition that ended here (drop cached translations of its second-stage
    /// tables) and park. Valid unless running.
    Reclaim,
}

/// Why a command was refused (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// Start on a core that is not parked.
    NotParked = 0,
    /// Reclaim on a core that still runs its partition (Stop it first).
    Running = 1,
    /// The command word did not decode (a manager bug; reported rather than guessed at).
    Malformed = 2,
}

/// Why a partition failed on a core, or why a core could not be cleaned up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FailReason {
    /// atoll could not set the partition up on this core (virtualization, vCPU, unknown
    /// partition).
    Setup = 0,
    /// atoll itself faulted while handling the partition (panic or exception).
    Fault = 1,
    /// The partition exhausted a budget atoll gives it.
    Budget = 2,
    /// The core's clean-up after the partition failed.
    Teardown = 3,
}

/// How a partition ended on a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest ended it (exit, power-off, a fault of its own): the report says how.
    Finished,
    /// The manager stopped it.
    Stopped,
    /// atoll could not run it or failed while running it.
    Failed(FailReason),
}

/// The core's answer to one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// The command took effect.
    Done,
    /// Not valid in the core's phase; nothing changed.
    Refused(Refusal),
    /// The core tried and failed; the phase says where it is left.
    Failed(FailReason),
}

/// Where a core is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a Start.
    Parked,
    /// Running its vCPU of the partition.
    Running(PartitionId),
    /// Its partition ended; waiting for Reclaim.
    Ended(PartitionId, Outcome),
}

/// A command's sequence number, to wait for its acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u32);

/// Why the manager could not post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostError {
    /// The previous command is not acknowledged yet.
    Busy,
}

/// The acknowledgement did not come before the deadline (the command stays posted: the core
/// may still answer it, and the manager may not post another until it does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout;

// Command word: seq (bits 0-31), operation (32-39), partition (48-63).
const OP_START: u64 = 1;
const OP_STOP: u64 = 2;
const OP_RECLAIM: u64 = 3;

// Status word: acknowledged seq (0-31), ack kind (32-35), ack code (36-39), phase (40-41),
// outcome (42-45), partition (48-63).
const ACK_DONE: u64 = 0;
const ACK_REFUSED: u64 = 1;
const ACK_FAILED: u64 = 2;
const PHASE_PARKED: u64 = 0;
const PHASE_RUNNING: u64 = 1;
const PHASE_ENDED: u64 = 2;
const OUTCOME_FINISHED: u64 = 0;
const OUTCOME_STOPPED: u64 = 1;
/// Failed outcomes are this plus the [`FailReason`] code.
const OUTCOME_FAILED: u64 = 2;

fn seq_of(word: u64) -> u32 {
    word as u32
}

fn encode_command(seq: u32, cmd: Command) -> u64 {
    let (op, arg) = match cmd {
        Command::Start(p) => (OP_START, p),
        Command::Stop => (OP_STOP, 0),
        Command::Reclaim => (OP_RECLAIM, 0),
    };
    u64::from(seq) | op << 32 | u64::from(arg) << 48
}

fn decode_command(word: u64) -> Option<Command> {
    match (word >> 32) & 0xff {
        OP_START => Some(Command::Start((word >> 48) as u16)),
        OP_STOP => Some(Command::Stop),
        OP_RECLAIM => Some(Command::Reclaim),
        _ => None,
    }
}

fn fail_code(r: FailReason) -> u64 {
    r as u64
}

fn fail_reason(code: u64) -> FailReason {
    match code {
        0 => FailReason::Setup,
        1 => FailReason::Fault,
        2 => FailReason::Budget,
        _ => FailReason::Teardown,
    }
}

fn refusal(code: u64) -> Refusal {
    match code {
        0 => Refusal::NotParked,
        1 => Refusal::Running,
        _ => Refusal::Malformed,
    }
}

fn encode_status(seq: u32, ack: Ack, phase: Phase) -> u64 {
    let (kind, code) = match ack {
        Ack::Done => (ACK_DONE, 0),
        Ack::Refused(r) => (ACK_REFUSED, r as u64),
        Ack::Failed(r) => (ACK_FAILED, fail_code(r)),
    };
    let (ph, outcome, part) = match phase {
        Phase::Parked => (PHASE_PARKED, 0, 0),
        Phase::Running(p) => (PHASE_RUNNING, 0, p),
        Phase::Ended(p, o) => (
            PHASE_ENDED,
            match o {
                Outcome::Finished => OUTCOME_FINISHED,
                Outcome::Stopped => OUTCOME_STOPPED,
                Outcome::Failed(r) => OUTCOME_FAILED + fail_code(r),
            },
            p,
        ),
    };
    u64::from(seq) | kind << 32 | code << 36 | ph << 40 | outcome << 42 | u64::from(part) << 48
}

fn decode_ack(word: u64) -> Ack {
    let code = (word >> 36) & 0xf;
    match (word >> 32) & 0xf {
        ACK_DONE => Ack::Done,
        ACK_REFUSED => Ack::Refused(refusal(code)),
        _ => Ack::Failed(fail_reason(code)),
    }
}

fn decode_phase(word: u64) -> Phase {
    let part = (word >> 48) as u16;
    match (word >> 40) & 0x3 {
        PHASE_PARKED => Phase::Parked,
        PHASE_RUNNING => Phase::Running(part),
        _ => Phase::Ended(
            part,
            match (word >> 42) & 0xf {
                OUTCOME_FINISHED => Outcome::Finished,
                OUTCOME_STOPPED => Outcome::Stopped,
                o => Outcome::Failed(fail_reason(o - OUTCOME_FAILED)),
            },
        ),
    }
}

/// One atomic word alone on its cache line.
#[repr(C, align(64))]
struct Line(AtomicU64);

/// What a core does for the commands it serves (the image runs vCPUs; host tests fake it).
pub trait CoreWork {
    /// Runs this core's vCPU of `partition` until the partition ends (or
    /// [`PerCore::stop_requested`] says to end it, which the implementation checks at its
    /// exits) and says how it ended.
    fn run(&mut self, partition: PartitionId, core: &PerCore) -> Outcome;
    /// Forgets `partition` on this core (cached second-stage translations). After `Ok` the
    /// core can start another partition.
    fn reclaim(&mut self, partition: PartitionId) -> Result<(), FailReason>;
}

/// How a waiting side passes time: the target halts until an interrupt (an IPI kick or its
/// timer), host tests yield the thread.
pub trait Waiter {
    /// Microseconds since some fixed point.
    fn now_us(&mut self) -> u64;
    /// Waits a little (until something may have changed).
    fn idle(&mut self);
}

/// A core's command mailbox.
pub struct Mailbox {
    command: Line,
    status: Line,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Mailbox {
    /// An empty mailbox of a parked core.
    pub const fn new() -> Self {
        Self {
            command: Line(AtomicU64::new(0)),
            status: Line(AtomicU64::new(0)),
        }
    }

    // ---- The manager's side. ----

    /// Posts `cmd`, unless the previous command is still unanswered. The caller then kicks the
    /// core (an IPI) so a halted core looks.
    pub fn post(&self, cmd: Command) -> Result<Ticket, PostError> {
        let last = self.command.0.load(Ordering::Relaxed);
        if seq_of(last) != seq_of(self.status.0.load(Ordering::Acquire)) {
            return Err(PostError::Busy);
        }
        let seq = seq_of(last).wrapping_add(1);
        // Release: what the manager wrote for the command (the partition's table entry) is
        // visible to the core that sees it.
        self.command
            .0
            .store(encode_command(seq, cmd), Ordering::Release);
        Ok(Ticket(seq))
    }

    /// The acknowledgement of `ticket`, once there.
    pub fn ack(&self, ticket: Ticket) -> Option<Ack> {
        let s = self.status.0.load(Ordering::Acquire);
        (seq_of(s) == ticket.0).then(|| decode_ack(s))
    }

    /// Waits for the acknowledgement of `ticket` until `deadline_us` (of `waiter`'s clock).
    pub fn wait(
        &self,
        ticket: Ticket,
        waiter: &mut impl Waiter,
        deadline_us: u64,
    ) -> Result<Ack, Timeout> {
        loop {
            if let Some(a) = self.ack(ticket) {
                return Ok(a);
            }
            if waiter.now_us() >= deadline_us {
                return Err(Timeout);
            }
            waiter.idle();
        }
    }

    /// The core's phase.
    pub fn phase(&self) -> Phase {
        decode_phase(self.status.0.load(Ordering::Acquire))
    }

    // ---- The core's side. ----

    /// The command to serve, if one is pending: its sequence number and the command (`None`
    /// when the word does not decode).
    pub fn pending(&self) -> Option<(u32, Option<Command>)> {
        let c = self.command.0.load(Ordering::Acquire);
        let acked = seq_of(self.status.0.load(Ordering::Relaxed));
        (seq_of(c) != acked).then(|| (seq_of(c), decode_command(c)))
    }

    /// Acknowledges command `seq` and moves to `phase`, as one store.
    fn answer(&self, seq: u32, ack: Ack, phase: Phase) {
        // Release: what the core did (the partition's report, its clean-up) is visible to the
        // manager that sees the ack.
        self.status
            .0
            .store(encode_status(seq, ack, phase), Ordering::Release);
    }

    /// Moves to `phase` without answering a command (the end notification).
    fn set_phase(&self, phase: Phase) {
        // Keeps the last acknowledgement as it was (bits 0-39): a late reader of it must see
        // what the core answered.
        const ACK_BITS: u64 = (1 << 40) - 1;
        let old = self.status.0.load(Ordering::Relaxed);
        let new = encode_status(0, Ack::Done, phase) & !ACK_BITS | old & ACK_BITS;
        self.status.0.store(new, Ordering::Release);
    }
}

/// A core's counters, written by the core only (relaxed: they are statistics, read by the
/// manager for the summary). The host interrupt and NMI counts are bumped by the core's own
/// interrupt handler, which finds this block through [`slot_word`] in its GDT: no core ever
/// writes another core's line, so an exit path that takes a host interrupt (every #VMEXIT with
/// one pending on SVM, every wake-up from HLT) touches nothing shared.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Counters {
    /// Commands served.
    pub commands: AtomicU64,
    /// Partitions started.
    pub starts: AtomicU64,
    /// Reclaims done.
    pub reclaims: AtomicU64,
    /// Commands refused.
    pub refused: AtomicU64,
    /// Times the core woke from waiting for a command.
    pub wakeups: AtomicU64,
    /// Host interrupts taken through atoll's IDT on this core (kicks, timer ticks, the SVM
    /// interrupt window after a #VMEXIT; not those VMX acknowledges on exit).
    pub host_interrupts: AtomicU64,
    /// NMIs taken on this core outside a guest.
    pub host_nmis: AtomicU64,
}

/// The counters fit one cache line: the core's interrupt handler and its mailbox loop write
/// one line, never its neighbour's.
const _: () = assert!(core::mem::size_of::<Counters>() == 64);
const _: () = assert!(core::mem::align_of::<PerCore>() == 64);
const _: () = assert!(core::mem::size_of::<PerCore>().is_multiple_of(64));
/// The manager's command word and the core's status word sit on different lines.
const _: () = assert!(core::mem::size_of::<Line>() == 64);

/// Marks the word that names a core's slot (`"ATOL"` in the high half). The word lives in the
/// null descriptor of the core's own GDT (`hw::core_tables`), which the CPU never reads
/// (SDM Vol. 3A §3.5.1), so an interrupt handler finds its core's block from `SGDT` alone —
/// the GDTR base is per core and both backends restore it on every exit — without a shared
/// lookup table or a serializing CPUID.
const SLOT_MAGIC: u64 = 0x4154_4f4c << 32;

/// The word that names core-table slot `slot`.
pub const fn slot_word(slot: usize) -> u64 {
    SLOT_MAGIC | (slot as u32 as u64)
}

/// The slot a GDT's first word names: `None` for anything [`slot_word`] did not make (the boot
/// GDT's null descriptor, 0, before the core has its own tables or knows its slot) or for a
/// slot outside the core table.
pub const fn slot_of_word(word: u64) -> Option<usize> {
    let slot = (word & 0xffff_ffff) as usize;
    if word & !0xffff_ffff == SLOT_MAGIC && slot < crate::machine::smp::MAX_CORES {
        Some(slot)
    } else {
        None
    }
}

impl Counters {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            commands: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            reclaims: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            host_interrupts: AtomicU64::new(0),
            host_nmis: AtomicU64::new(0),
        }
    }

    /// Adds one to `c`.
    pub fn bump(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn get(&self) -> CounterValues {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterValues {
            commands: l(&self.commands),
            starts: l(&self.starts),
            reclaims: l(&self.reclaims),
            refused: l(&self.refused),
            wakeups: l(&self.wakeups),
            host_interrupts: l(&self.host_interrupts),
            host_nmis: l(&self.host_nmis),
        }
    }
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterValues {
    /// Commands served.
    pub commands: u64,
    /// Partitions started.
    pub starts: u64,
    /// Reclaims done.
    pub reclaims: u64,
    /// Commands refused.
    pub refused: u64,
    /// Wake-ups while waiting for a command.
    pub wakeups: u64,
    /// Host interrupts taken through atoll's IDT.
    pub host_interrupts: u64,
    /// Host NMIs taken outside a guest.
    pub host_nmis: u64,
}

/// One core's block: its mailbox and counters, each on cache lines of their own so cores never
/// share a line through their blocks.
#[repr(C, align(64))]
#[derive(Default)]
pub struct PerCore {
    /// Commands from the manager.
    pub mailbox: Mailbox,
    /// Statistics.
    pub counters: Counters,
}

impl PerCore {
    /// A parked core's block.
    pub const fn new() -> Self {
        Self {
            mailbox: Mailbox::new(),
            counters: Counters::new(),
        }
    }

    /// Serves the pending command, if any, through `work`. Returns whether there was one. Only
    /// the core that owns the block calls this.
    pub fn serve(&self, work: &mut impl CoreWork) -> bool {
        let (mb, counters) = (&self.mailbox, &self.counters);
        let Some((seq, cmd)) = mb.pending() else {
            return false;
        };
        counters.bump(&counters.commands);
        let phase = mb.phase();
        let refuse = |why| {
            counters.bump(&counters.refused);
            mb.answer(seq, Ack::Refused(why), phase);
        };
        match (cmd, phase) {
            (None, _) => refuse(Refusal::Malformed),
            (Some(Command::Start(p)), Phase::Parked) => {
                counters.bump(&counters.starts);
                mb.answer(seq, Ack::Done, Phase::Running(p));
                let outcome = work.run(p, self);
                let end = Phase::Ended(p, outcome);
                // A Stop that arrived while it ran is answered by the end it asked for.
                match mb.pending() {
                    Some((stop, Some(Command::Stop))) => {
                        counters.bump(&counters.commands);
                        mb.answer(stop, Ack::Done, end)
                    }
                    _ => mb.set_phase(end),
                }
            }
            (Some(Command::Start(_)), _) => refuse(Refusal::NotParked),
            // Not running (a running core answers Stop when its run returns, above).
            (Some(Command::Stop), _) => mb.answer(seq, Ack::Done, phase),
            (Some(Command::Reclaim), Phase::Running(_)) => refuse(Refusal::Running),
            (Some(Command::Reclaim), Phase::Parked) => mb.answer(seq, Ack::Done, phase),
            (Some(Command::Reclaim), Phase::Ended(p, _)) => match work.reclaim(p) {
                Ok(()) => {
                    counters.bump(&counters.reclaims);
                    mb.answer(seq, Ack::Done, Phase::Parked)
                }
                Err(why) => mb.answer(seq, Ack::Failed(why), phase),
            },
        }
        true
    }

    /// Ends the partition this core runs with `outcome` from outside [`PerCore::serve`]: for a
    /// fault handler that abandons the partition's run (atoll's own fault while handling it)
    /// and parks the core in the Ended phase, so the manager reclaims it as usual. A pending
    /// Stop is answered by this end. Returns whether a partition was running.
    pub fn end_running(&self, outcome: Outcome) -> bool {
        let mb = &self.mailbox;
        let Phase::Running(p) = mb.phase() else {
            return false;
        };
        let end = Phase::Ended(p, outcome);
        match mb.pending() {
            Some((stop, Some(Command::Stop))) => {
                self.counters.bump(&self.counters.commands);
                mb.answer(stop, Ack::Done, end)
            }
            _ => mb.set_phase(end),
        }
        true
    }

    /// Called by a running core at its exits: whether the manager asked it to stop. Any other
    /// command that arrived meanwhile is refused at once (Start: not parked; Reclaim: still
    /// running), so the manager never waits on a core that is busy running.
    pub fn stop_requested(&self) -> bool {
        let mb = &self.mailbox;
        match mb.pending() {
            None => false,
            Some((_, Some(Command::Stop))) => true,
            Some((seq, cmd)) => {
                let why = match cmd {
                    Some(Command::Start(_)) => Refusal::NotParked,
                    Some(Command::Reclaim) => Refusal::Running,
                    _ => Refusal::Malformed,
                };
                self.counters.bump(&self.counters.commands);
                self.counters.bump(&self.counters.refused);
                mb.answer(seq, Ack::Refused(why), mb.phase());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn blocks_are_cache_line_padded() {
        assert_eq!(core::mem::align_of::<PerCore>(), 64);
        assert_eq!(core::mem::size_of::<PerCore>() % 64, 0);
        let b = PerCore::new();
        let base = &b as *const PerCore as usize;
        let cmd = &b.mailbox.command as *const Line as usize - base;
        let st = &b.mailbox.status as *const Line as usize - base;
        let ctr = &b.counters as *const Counters as usize - base;
        // Three different lines: the manager's word, the core's word, the core's counters.
        let lines = [cmd / 64, st / 64, ctr / 64];
        assert!(lines[0] != lines[1] && lines[1] != lines[2] && lines[0] != lines[2]);
    }

    #[test]
    fn a_core_finds_its_slot_in_its_gdt_word() {
        for slot in [0, 1, 63, crate::machine::smp::MAX_CORES - 1] {
            assert_eq!(slot_of_word(slot_word(slot)), Some(slot));
        }
        // The boot GDT's null descriptor, a real descriptor (the 64-bit code segment), a slot
        // past the table and a word whose low half is right but whose mark is not.
        assert_eq!(slot_of_word(0), None);
        assert_eq!(slot_of_word(0x00af_9a00_0000_ffff), None);
        assert_eq!(
            slot_of_word(slot_word(crate::machine::smp::MAX_CORES)),
            None
        );
        assert_eq!(slot_of_word(slot_word(5) ^ (1 << 40)), None);
    }

    #[test]
    fn host_event_counters_are_the_cores_own() {
        let blocks = [const { PerCore::new() }; 2];
        // The interrupt counters are on the core's counter line, not its mailbox's.
        let c = &blocks[0].counters;
        let line = |a: &AtomicU64| a as *const AtomicU64 as usize / 64;
        assert_eq!(line(&c.host_interrupts), line(&c.commands));
        assert_eq!(line(&c.host_nmis), line(&c.commands));
        assert_ne!(
            line(&c.host_interrupts),
            &blocks[0].mailbox.status as *const Line as usize / 64
        );
        c.bump(&c.host_interrupts);
        c.bump(&c.host_nmis);
        c.bump(&c.host_nmis);
        let v = c.get();
        assert_eq!((v.host_interrupts, v.host_nmis, v.commands), (1, 2, 0));
        assert_eq!(blocks[1].counters.get(), CounterValues::default());
    }

    #[test]
    fn words_round_trip() {
        for cmd in [
            Command::Start(0),
            Command::Start(0xffff),
            Command::Stop,
            Command::Reclaim,
        ] {
            let w = encode_command(0xdead_beef, cmd);
            assert_eq!(seq_of(w), 0xdead_beef);
            assert_eq!(decode_command(w), Some(cmd));
        }
        assert_eq!(decode_command(0x7 << 32), None);
        let acks = [
            Ack::Done,
            Ack::Refused(Refusal::NotParked),
            Ack::Refused(Refusal::Running),
            Ack::Refused(Refusal::Malformed),
            Ack::Failed(FailReason::Setup),
            Ack::Failed(FailReason::Fault),
            Ack::Failed(FailReason::Budget),
            Ack::Failed(FailReason::Teardown),
        ];
        let phases = [
            Phase::Parked,
            Phase::Running(7),
            Phase::Ended(0xffff, Outcome::Finished),
            Phase::Ended(3, Outcome::Stopped),
            Phase::Ended(3, Outcome::Failed(FailReason::Setup)),
            Phase::Ended(3, Outcome::Failed(FailReason::Fault)),
            Phase::Ended(3, Outcome::Failed(FailReason::Budget)),
            Phase::Ended(3, Outcome::Failed(FailReason::Teardown)),
        ];
        for a in acks {
            for p in phases {
                let w = encode_status(u32::MAX, a, p);
                assert_eq!(
                    (seq_of(w), decode_ack(w), decode_phase(w)),
                    (u32::MAX, a, p)
                );
            }
        }
    }

    /// A core whose partitions end by themselves after `run_polls` polls, or when stopped.
    #[derive(Default)]
    struct FakeCore {
        ran: Vec<PartitionId>,
        reclaimed: Vec<PartitionId>,
        fail_setup: bool,
        fail_teardown: bool,
        /// Run until stopped instead of ending by itself.
        until_stopped: bool,
    }

    impl CoreWork for FakeCore {
        fn run(&mut self, p: PartitionId, core: &PerCore) -> Outcome {
            self.ran.push(p);
            if self.fail_setup {
                return Outcome::Failed(FailReason::Setup);
            }
            if self.until_stopped {
                while !core.stop_requested() {
                    std::thread::yield_now();
                }
                return Outcome::Stopped;
            }
            Outcome::Finished
        }
        fn reclaim(&mut self, p: PartitionId) -> Result<(), FailReason> {
            if self.fail_teardown {
                return Err(FailReason::Teardown);
            }
            self.reclaimed.push(p);
            Ok(())
        }
    }

    /// Posts and serves on one thread.
    fn step(b: &PerCore, core: &mut FakeCore, cmd: Command) -> Ack {
        let t = b.mailbox.post(cmd).unwrap();
        assert_eq!(b.mailbox.ack(t), None, "no answer before the core looked");
        assert!(b.serve(core));
        assert!(!b.serve(core), "served once");
        b.mailbox.ack(t).unwrap()
    }

    #[test]
    fn the_state_machine() {
        let b = PerCore::new();
        let (mb, c) = (&b.mailbox, &b.counters);
        let mut core = FakeCore::default();
        assert_eq!(mb.phase(), Phase::Parked);
        assert!(!b.serve(&mut core), "nothing pending");
        // Reclaim and Stop on a parked core: done, nothing changes.
        assert_eq!(step(&b, &mut core, Command::Reclaim), Ack::Done);
        assert_eq!(step(&b, &mut core, Command::Stop), Ack::Done);
        assert_eq!(mb.phase(), Phase::Parked);
        // Start: runs, ends by itself, waits for Reclaim.
        assert_eq!(step(&b, &mut core, Command::Start(4)), Ack::Done);
        assert_eq!(mb.phase(), Phase::Ended(4, Outcome::Finished));
        // Not parked: a second Start is refused and changes nothing.
        assert_eq!(
            step(&b, &mut core, Command::Start(5)),
            Ack::Refused(Refusal::NotParked)
        );
        assert_eq!(mb.phase(), Phase::Ended(4, Outcome::Finished));
        assert_eq!(step(&b, &mut core, Command::Reclaim), Ack::Done);
        assert_eq!(mb.phase(), Phase::Parked);
        // The core takes a new partition after reclaim.
        assert_eq!(step(&b, &mut core, Command::Start(5)), Ack::Done);
        assert_eq!(step(&b, &mut core, Command::Reclaim), Ack::Done);
        assert_eq!(core.ran, [4, 5]);
        assert_eq!(core.reclaimed, [4, 5]);
        assert_eq!(
            c.get(),
            CounterValues {
                commands: 7,
                starts: 2,
                reclaims: 2,
                refused: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn failures_are_acknowledged_with_a_reason() {
        let b = PerCore::new();
        let mb = &b.mailbox;
        let mut core = FakeCore {
            fail_setup: true,
            ..Default::default()
        };
        assert_eq!(step(&b, &mut core, Command::Start(1)), Ack::Done);
        assert_eq!(
            mb.phase(),
            Phase::Ended(1, Outcome::Failed(FailReason::Setup))
        );
        core.fail_teardown = true;
        assert_eq!(
            step(&b, &mut core, Command::Reclaim),
            Ack::Failed(FailReason::Teardown)
        );
        // A core that could not be cleaned up is not handed a new partition.
        assert_eq!(
            mb.phase(),
            Phase::Ended(1, Outcome::Failed(FailReason::Setup))
        );
        assert_eq!(
            step(&b, &mut core, Command::Start(2)),
            Ack::Refused(Refusal::NotParked)
        );
        core.fail_teardown = false;
        assert_eq!(step(&b, &mut core, Command::Reclaim), Ack::Done);
        assert_eq!(mb.phase(), Phase::Parked);
    }

    #[test]
    fn a_fault_handler_ends_the_running_partition_with_a_reason() {
        let b = PerCore::new();
        assert!(
            !b.end_running(Outcome::Failed(FailReason::Fault)),
            "nothing runs"
        );
        assert_eq!(b.mailbox.phase(), Phase::Parked);
        let t = b.mailbox.post(Command::Start(3)).unwrap();
        // What `serve` does up to the run, where the fault strikes.
        let (seq, _) = b.mailbox.pending().unwrap();
        b.mailbox.answer(seq, Ack::Done, Phase::Running(3));
        assert_eq!(b.mailbox.ack(t), Some(Ack::Done));
        let stop = b.mailbox.post(Command::Stop).unwrap();
        assert!(b.end_running(Outcome::Failed(FailReason::Fault)));
        assert_eq!(
            b.mailbox.phase(),
            Phase::Ended(3, Outcome::Failed(FailReason::Fault))
        );
        assert_eq!(b.mailbox.ack(stop), Some(Ack::Done));
        // Reclaimed as any ended core.
        assert_eq!(
            step(&b, &mut FakeCore::default(), Command::Reclaim),
            Ack::Done
        );
        assert_eq!(b.mailbox.phase(), Phase::Parked);
    }

    #[test]
    fn one_command_at_a_time_and_malformed_words() {
        let b = PerCore::new();
        let mb = &b.mailbox;
        let t = mb.post(Command::Stop).unwrap();
        assert_eq!(mb.post(Command::Reclaim), Err(PostError::Busy));
        assert!(b.serve(&mut FakeCore::default()));
        assert_eq!(mb.ack(t), Some(Ack::Done));
        // A word no manager writes: refused, not guessed at.
        mb.command.0.store(2 | 0x9 << 32, Ordering::Release);
        assert!(b.serve(&mut FakeCore::default()));
        assert_eq!(mb.ack(Ticket(2)), Some(Ack::Refused(Refusal::Malformed)));
        // Sequence numbers wrap.
        mb.command.0.store(u64::from(u32::MAX), Ordering::Relaxed);
        mb.status.0.store(u64::from(u32::MAX), Ordering::Relaxed);
        let t = mb.post(Command::Reclaim).unwrap();
        assert_eq!(t, Ticket(0));
        assert!(b.serve(&mut FakeCore::default()));
        assert_eq!(mb.ack(t), Some(Ack::Done));
    }

    struct HostWaiter(Instant);
    impl Waiter for HostWaiter {
        fn now_us(&mut self) -> u64 {
            self.0.elapsed().as_micros() as u64
        }
        fn idle(&mut self) {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_silent_core_times_out_and_answers_later() {
        let b = PerCore::new();
        let mb = &b.mailbox;
        let mut w = HostWaiter(Instant::now());
        let t = mb.post(Command::Start(1)).unwrap();
        let deadline = w.now_us() + 2_000;
        assert_eq!(mb.wait(t, &mut w, deadline), Err(Timeout));
        assert!(w.now_us() >= 2_000);
        // Still posted: the core answers it late, and then the next can go.
        assert_eq!(mb.post(Command::Stop), Err(PostError::Busy));
        b.serve(&mut FakeCore::default());
        assert_eq!(mb.wait(t, &mut w, 0), Ok(Ack::Done));
        assert!(mb.post(Command::Reclaim).is_ok());
    }

    /// Manager and core on two threads: start, stop a partition that runs until stopped,
    /// reclaim, start the next, many times over.
    #[test]
    fn manager_and_core_threads() {
        let block = Arc::new(PerCore::new());
        let quit = Arc::new(AtomicBool::new(false));
        let core = {
            let (block, quit) = (block.clone(), quit.clone());
            std::thread::spawn(move || {
                let mut work = FakeCore {
                    until_stopped: true,
                    ..Default::default()
                };
                while !quit.load(Ordering::Acquire) {
                    if !block.serve(&mut work) {
                        block.counters.bump(&block.counters.wakeups);
                        std::thread::yield_now();
                    }
                }
                work
            })
        };
        let mb = &block.mailbox;
        let mut w = HostWaiter(Instant::now());
        let mut send = |cmd| {
            let t = mb.post(cmd).expect("previous command answered");
            let deadline = w.now_us() + 10_000_000;
            mb.wait(t, &mut w, deadline).expect("core answers in time")
        };
        const ROUNDS: u16 = 200;
        for p in 0..ROUNDS {
            assert_eq!(send(Command::Start(p)), Ack::Done);
            // Acknowledged means running (one store: never an ack without its phase).
            assert_eq!(mb.phase(), Phase::Running(p));
            assert_eq!(send(Command::Reclaim), Ack::Refused(Refusal::Running));
            assert_eq!(send(Command::Stop), Ack::Done);
            assert_eq!(mb.phase(), Phase::Ended(p, Outcome::Stopped));
            assert_eq!(send(Command::Reclaim), Ack::Done);
            assert_eq!(mb.phase(), Phase::Parked);
        }
        quit.store(true, Ordering::Release);
        let work = core.join().unwrap();
        assert_eq!(work.ran, (0..ROUNDS).collect::<Vec<_>>());
        assert_eq!(work.reclaimed, work.ran);
        let v = block.counters.get();
        assert_eq!(
            (v.commands, v.starts, v.reclaims, v.refused),
            (
                4 * u64::from(ROUNDS),
                u64::from(ROUNDS),
                u64::from(ROUNDS),
                u64::from(ROUNDS)
            )
        );
    }
}
