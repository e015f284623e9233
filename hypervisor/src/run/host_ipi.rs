//! The root partition's IPI filter: what atoll does with an ICR write by the host's Linux.
//!
//! The host runs on its own cores beside enclaves; its ICR writes (the xAPIC page's ICR
//! low/high pair or the x2APIC ICR MSR 0x830) exit to atoll, which decides here: an interrupt
//! or NMI for the host's own cores goes out, INIT and STARTUP for them are emulated (a host core
//! offlined and onlined again must not reset the physical core under atoll), and everything a
//! host IPI names outside the host — enclave cores, APIC ids that do not exist — is dropped and
//! counted, never delivered. The logic is pure: it sees the ICR, the sender and a table of the
//! host's cores, and nothing else, so every case is a host test.
//!
//! Decoding follows SDM Vol. 3A §11.6.1 (Figure 11-12, the xAPIC ICR) and §11.12.9 (Figure
//! 11-28, the x2APIC ICR); destinations follow §11.6.2 (physical, logical flat and cluster,
//! §11.6.2.2) and §11.12.10.2 (x2APIC logical ids); which delivery mode goes with which
//! shorthand follows Table 11-3 (Pentium 4 and later).
//!
//! Not covered here: the x2APIC SELF IPI register (MSR 0x83F, a fixed vector to the sender
//! only), which needs no filtering.

use crate::machine::platform::MAX_CPUS;
/// The ICR fields the enclave platform's local APIC model decodes too.
pub use atoll_devices::lapic::{DestMode, Shorthand};

/// Broadcast in 8-bit xAPIC destinations (physical, and logical in both models; §11.6.2).
pub const XAPIC_BROADCAST: u32 = 0xff;
/// Broadcast in 32-bit x2APIC destinations, physical and logical (§11.12.9).
pub const X2APIC_BROADCAST: u32 = 0xffff_ffff;

/// ICR bits 10:8 (§11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 000: the vector to every target.
    Fixed,
    /// 001: the vector to one target of the destination set.
    LowestPriority,
    /// 010.
    Smi,
    /// 100.
    Nmi,
    /// 101 (assert, or the level de-assert; see [`Icr::is_init_deassert`]).
    Init,
    /// 110: STARTUP; the vector is the start page.
    Startup,
    /// 011 or 111: reserved in the ICR; the raw field is kept for the log.
    Reserved(u8),
}

impl DeliveryMode {
    fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::Startup,
            other => Self::Reserved(other),
        }
    }
}

/// Which register the ICR came from: it fixes the destination's width and how logical
/// destinations are matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcrFormat {
    /// The xAPIC page: an 8-bit destination (ICR bits 63:56), logical ids from each target's
    /// LDR and DFR.
    XApic,
    /// The x2APIC MSR: a 32-bit destination (bits 63:32), logical ids derived from APIC ids.
    X2Apic,
}

/// A decoded ICR write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icr {
    /// Bits 7:0.
    pub vector: u8,
    /// Bits 10:8.
    pub mode: DeliveryMode,
    /// Bit 11.
    pub dest_mode: DestMode,
    /// Bit 14: assert (true) or de-assert.
    pub level: bool,
    /// Bit 15: level-triggered (true) or edge.
    pub level_triggered: bool,
    /// Bits 19:18.
    pub shorthand: Shorthand,
    /// The destination: 8 bits for [`IcrFormat::XApic`], 32 for [`IcrFormat::X2Apic`].
    pub dest: u32,
    /// Where the write came from.
    pub format: IcrFormat,
}

/// An x2APIC ICR value with bits set that Figure 11-28 reserves (12, 13, 16, 17, 31:20); the
/// hardware raises #GP for such a WRMSR, so the caller injects #GP and sends nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MalformedIcr {
    pub value: u64,
}

/// The x2APIC ICR's defined bits: vector, delivery mode, destination mode, level, trigger,
/// shorthand and the destination. Bit 12 (delivery status) does not exist in x2APIC mode.
const X2APIC_DEFINED: u64 = 0xffff_ffff_000c_cfff;

impl Icr {
    fn from_low(low: u32, dest: u32, format: IcrFormat) -> Self {
        Self {
            vector: low as u8,
            mode: DeliveryMode::from_bits((low >> 8) as u8),
            dest_mode: if low & (1 << 11) != 0 {
                DestMode::Logical
            } else {
                DestMode::Physical
            },
            level: low & (1 << 14) != 0,
            level_triggered: low & (1 << 15) != 0,
            shorthand: Shorthand::from_bits((low >> 18) as u8),
            dest,
            format,
        }
    }

    /// Decodes a WRMSR to the x2APIC ICR (MSR 0x830, §11.12.9).
    pub fn from_x2apic(value: u64) -> Result<Self, MalformedIcr> {
        if value & !X2APIC_DEFINED != 0 {
            return Err(MalformedIcr { value });
        }
        Ok(Self::from_low(
            value as u32,
            (value >> 32) as u32,
            IcrFormat::X2Apic,
        ))
    }

    /// Decodes the xAPIC ICR pair: `low` is the write to offset 0x300 that sends the IPI,
    /// `high` the value last written to offset 0x310. The xAPIC ignores writes to reserved
    /// and read-only bits (delivery status) rather than faulting, so this never fails.
    pub fn from_xapic(low: u32, high: u32) -> Self {
        Self::from_low(low, high >> 24, IcrFormat::XApic)
    }

    /// The ICR's low 32 bits as the hardware takes them (§11.6.1): vector, delivery mode,
    /// destination mode, level, trigger mode and shorthand; the inverse of the decoders for
    /// every field they keep.
    pub fn low(&self) -> u32 {
        let mode = match self.mode {
            DeliveryMode::Fixed => 0,
            DeliveryMode::LowestPriority => 1,
            DeliveryMode::Smi => 2,
            DeliveryMode::Nmi => 4,
            DeliveryMode::Init => 5,
            DeliveryMode::Startup => 6,
            DeliveryMode::Reserved(b) => u32::from(b & 7),
        };
        let shorthand = match self.shorthand {
            Shorthand::None => 0,
            Shorthand::SelfOnly => 1,
            Shorthand::AllIncludingSelf => 2,
            Shorthand::AllExcludingSelf => 3,
        };
        u32::from(self.vector)
            | mode << 8
            | u32::from(self.dest_mode == DestMode::Logical) << 11
            | u32::from(self.level) << 14
            | u32::from(self.level_triggered) << 15
            | shorthand << 18
    }

    /// The xAPIC ICR high (offset 0x310): the 8-bit destination in bits 31:24.
    pub fn xapic_high(&self) -> u32 {
        (self.dest & 0xff) << 24
    }

    /// The x2APIC ICR (MSR 0x830): the 32-bit destination in bits 63:32.
    pub fn x2apic_value(&self) -> u64 {
        u64::from(self.dest) << 32 | u64::from(self.low())
    }

    /// INIT level de-assert (INIT, level-triggered, level 0): Pentium 4 and later ignore it
    /// (§11.6.1, "INIT Level De-assert"); Linux still sends one after each INIT.
    pub fn is_init_deassert(&self) -> bool {
        self.mode == DeliveryMode::Init && self.level_triggered && !self.level
    }

    fn broadcast(&self) -> u32 {
        match self.format {
            IcrFormat::XApic => XAPIC_BROADCAST,
            IcrFormat::X2Apic => X2APIC_BROADCAST,
        }
    }
}

/// The xAPIC DFR model (DFR bits 31:28, §11.6.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DfrModel {
    /// 1111b: one LDR bit per APIC.
    Flat,
    /// 0000b: cluster in LDR bits 31:28, members in 27:24.
    Cluster,
}

/// One of the host's cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HostCore {
    apic_id: u32,
    /// LDR bits 31:24 as the host last programmed them (0 at reset: no logical id).
    ldr: u8,
    /// `None` when the host wrote a DFR model the SDM does not define: the core then matches
    /// no xAPIC logical destination.
    model: Option<DfrModel>,
}

/// The host's cores: APIC ids, and the xAPIC logical addressing each one programmed.
#[derive(Clone, Debug)]
pub struct HostCores {
    cores: [HostCore; MAX_CPUS],
    len: usize,
    /// How many cores of the machine are not the host's (enclaves' and parked ones): what a
    /// broadcast would have reached beyond the host.
    others: u32,
    /// Host cores lent to an enclave (`atoll create` took them after the host offlined them):
    /// no IPI of the host reaches them, INIT and STARTUP included, until they come back.
    lent: CoreSet,
}

/// Why [`HostCores::add`] refused a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddError {
    /// [`MAX_CPUS`] cores already.
    Full,
    /// This APIC id is already in the table.
    Duplicate(u32),
}

impl HostCores {
    /// No host cores yet; `others` is the number of the machine's cores the host does not own.
    pub const fn new(others: u32) -> Self {
        const EMPTY: HostCore = HostCore {
            apic_id: 0,
            ldr: 0,
            model: Some(DfrModel::Flat),
        };
        Self {
            cores: [EMPTY; MAX_CPUS],
            len: 0,
            others,
            lent: CoreSet([0; MAX_CPUS / 64]),
        }
    }

    /// Marks host core `apic_id` lent to an enclave (`true`) or back (`false`); false if it is
    /// not a host core.
    pub fn set_lent(&mut self, apic_id: u32, lent: bool) -> bool {
        let Some(i) = self.index_of(apic_id) else {
            return false;
        };
        if lent {
            self.lent.insert(i);
        } else {
            self.lent.remove(i);
        }
        true
    }

    /// Whether host core `index` is lent to an enclave.
    pub fn is_lent(&self, index: usize) -> bool {
        self.lent.contains(index)
    }

    /// Adds a host core with APIC id `apic_id`, at reset (LDR 0, DFR flat); returns its index.
    pub fn add(&mut self, apic_id: u32) -> Result<usize, AddError> {
        if self.index_of(apic_id).is_some() {
            return Err(AddError::Duplicate(apic_id));
        }
        let slot = self.cores.get_mut(self.len).ok_or(AddError::Full)?;
        *slot = HostCore {
            apic_id,
            ldr: 0,
            model: Some(DfrModel::Flat),
        };
        self.len += 1;
        Ok(self.len - 1)
    }

    /// Every core's logical addressing back to the reset values (LDR 0, flat model), as after
    /// the host restarts.
    pub fn reset_logical(&mut self) {
        for c in &mut self.cores[..self.len] {
            c.ldr = 0;
            c.model = Some(DfrModel::Flat);
        }
    }

    /// Records the xAPIC LDR (offset 0xD0) and DFR (offset 0xE0) register values host core
    /// `apic_id` holds; false if it is not a host core.
    pub fn set_xapic_logical(&mut self, apic_id: u32, ldr: u32, dfr: u32) -> bool {
        let Some(i) = self.index_of(apic_id) else {
            return false;
        };
        self.cores[i].ldr = (ldr >> 24) as u8;
        self.cores[i].model = match dfr >> 28 {
            0xf => Some(DfrModel::Flat),
            0x0 => Some(DfrModel::Cluster),
            _ => None,
        };
        true
    }

    /// The number of host cores.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the host has no cores.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The index of host core `apic_id`.
    pub fn index_of(&self, apic_id: u32) -> Option<usize> {
        self.cores[..self.len]
            .iter()
            .position(|c| c.apic_id == apic_id)
    }

    /// The APIC id of host core `index`.
    pub fn apic_id(&self, index: usize) -> Option<u32> {
        self.cores[..self.len].get(index).map(|c| c.apic_id)
    }

    /// The APIC ids of the cores in `set`, in index order.
    pub fn apic_ids<'a>(&'a self, set: &'a CoreSet) -> impl Iterator<Item = u32> + 'a {
        set.iter().filter_map(|i| self.apic_id(i))
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &HostCore)> {
        self.cores[..self.len].iter().enumerate()
    }
}

/// A set of host cores, by index into [`HostCores`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreSet([u64; MAX_CPUS / 64]);

impl CoreSet {
    fn insert(&mut self, index: usize) {
        if let Some(word) = self.0.get_mut(index / 64) {
            *word |= 1 << (index % 64);
        }
    }

    fn remove(&mut self, index: usize) {
        if let Some(word) = self.0.get_mut(index / 64) {
            *word &= !(1 << (index % 64));
        }
    }

    /// Whether host core `index` is in the set.
    pub fn contains(&self, index: usize) -> bool {
        self.0
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// The number of cores in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The indices in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_CPUS).filter(|&i| self.contains(i))
    }
}

/// What to send to the host cores of a [`Action::Send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deliver {
    /// A fixed interrupt with this vector, edge-triggered (Table 11-3 note 2: the xAPIC sends
    /// level-triggered IPIs as edge).
    Fixed(u8),
    /// NMI.
    Nmi,
}

/// Why atoll delivers nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The sender is not a host core (a caller's error: only host cores' ICR writes come here).
    SenderNotHost,
    /// Every target is outside the host.
    OutsideHost,
    /// The destination names no core at all (a logical destination no LDR matches, an empty
    /// member mask).
    NoDestination,
    /// SMI: never, to any core — SMM belongs to the firmware under atoll.
    Smi,
    /// Delivery mode 011b or 111b.
    ReservedDeliveryMode(u8),
    /// A fixed or lowest-priority vector below 16 (§11.5.3, "Send Illegal Vector").
    IllegalVector(u8),
    /// A delivery mode Table 11-3 does not allow with this shorthand: anything but fixed with
    /// "self" or "all including self".
    InvalidShorthand,
    /// INIT level de-assert: a no-op on every processor atoll runs on.
    InitDeassert,
}

/// What atoll does for the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this to exactly these host cores.
    Send { what: Deliver, to: CoreSet },
    /// Emulate INIT for these host cores (atoll parks the core's vCPU in wait-for-SIPI).
    EmulateInit { to: CoreSet },
    /// Emulate STARTUP for these host cores: start at `vector << 12`.
    EmulateSipi { vector: u8, to: CoreSet },
    /// Deliver nothing.
    Drop(DropReason),
}

/// The filter's answer for one ICR write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Targets the IPI named outside the host, dropped: add to the host's dropped-IPI count.
    /// Physical: 1 for an APIC id that is not the host's. Broadcasts and the "all" shorthands:
    /// every core of the machine that is not the host's. Logical: each member bit of the
    /// destination no host core answers to (in the flat model a bit is one APIC, in a cluster
    /// one member). 0 when the sender is not a host core and for INIT de-assert, which reach
    /// nobody anyway.
    pub outside: u32,
}

impl Decision {
    fn drop(reason: DropReason, outside: u32) -> Self {
        Self {
            action: Action::Drop(reason),
            outside,
        }
    }
}

/// Decides ICR write `icr` by host core `sender` (its APIC id) against the host's cores.
///
/// Lowest priority picks one target: the host core with the lowest APIC id in the
/// destination set. The hardware's choice depends on task priorities atoll does not see
/// without an exit per TPR write, and §11.6.2.4 leaves the arbitration model-specific, so
/// the host cannot rely on which core it gets; a fixed rule keeps the decision reproducible.
pub fn decide(icr: Icr, sender: u32, cores: &HostCores) -> Decision {
    let Some(sender_index) = cores.index_of(sender) else {
        return Decision::drop(DropReason::SenderNotHost, 0);
    };
    if icr.is_init_deassert() {
        return Decision::drop(DropReason::InitDeassert, 0);
    }
    let (mut to, mut outside) = resolve(&icr, sender_index, cores);
    // A core lent to an enclave is not the host's while it is lent: what the host sends it
    // is dropped, counted as reaching outside the host.
    for i in cores.lent.iter() {
        if to.contains(i) {
            to.remove(i);
            outside += 1;
        }
    }
    let refuse = |reason| Decision::drop(reason, outside);
    let vector = icr.vector;
    let kind = match icr.mode {
        DeliveryMode::Reserved(bits) => return refuse(DropReason::ReservedDeliveryMode(bits)),
        DeliveryMode::Smi => return refuse(DropReason::Smi),
        DeliveryMode::Fixed => Kind::Send(Deliver::Fixed(vector)),
        DeliveryMode::LowestPriority => Kind::Lowest(vector),
        DeliveryMode::Nmi => Kind::Send(Deliver::Nmi),
        DeliveryMode::Init => Kind::Init,
        DeliveryMode::Startup => Kind::Sipi(vector),
    };
    if matches!(
        icr.shorthand,
        Shorthand::SelfOnly | Shorthand::AllIncludingSelf
    ) && icr.mode != DeliveryMode::Fixed
    {
        return refuse(DropReason::InvalidShorthand);
    }
    if matches!(kind, Kind::Send(Deliver::Fixed(_)) | Kind::Lowest(_)) && vector < 16 {
        return refuse(DropReason::IllegalVector(vector));
    }
    if to.is_empty() {
        return refuse(if outside > 0 {
            DropReason::OutsideHost
        } else {
            DropReason::NoDestination
        });
    }
    let action = match kind {
        Kind::Send(what) => Action::Send { what, to },
        Kind::Lowest(vector) => {
            let mut one = CoreSet::default();
            if let Some(i) = to.iter().min_by_key(|&i| cores.apic_id(i)) {
                one.insert(i);
            }
            Action::Send {
                what: Deliver::Fixed(vector),
                to: one,
            }
        }
        Kind::Init => Action::EmulateInit { to },
        Kind::Sipi(vector) => Action::EmulateSipi { vector, to },
    };
    Decision { action, outside }
}

/// What a deliverable IPI does, before its targets are known to be non-empty.
enum Kind {
    Send(Deliver),
    Lowest(u8),
    Init,
    Sipi(u8),
}

/// The host cores `icr` names and how many targets it names outside the host.
fn resolve(icr: &Icr, sender_index: usize, cores: &HostCores) -> (CoreSet, u32) {
    let mut to = CoreSet::default();
    let all = |to: &mut CoreSet| {
        for (i, _) in cores.iter() {
            to.insert(i);
        }
    };
    match icr.shorthand {
        Shorthand::SelfOnly => {
            to.insert(sender_index);
            return (to, 0);
        }
        Shorthand::AllIncludingSelf => {
            all(&mut to);
            return (to, cores.others);
        }
        Shorthand::AllExcludingSelf => {
            all(&mut to);
            to.remove(sender_index);
            return (to, cores.others);
        }
        Shorthand::None => {}
    }
    if icr.dest == icr.broadcast() {
        all(&mut to);
        return (to, cores.others);
    }
    match (icr.dest_mode, icr.format) {
        (DestMode::Physical, _) => match cores.index_of(icr.dest) {
            Some(i) => {
                to.insert(i);
                (to, 0)
            }
            None => (to, 1),
        },
        (DestMode::Logical, IcrFormat::XApic) => {
            // The destination is 8 bits; each core answers by its own LDR and DFR.
            let dest = icr.dest as u8;
            let mut covered = 0u8;
            for (i, c) in cores.iter() {
                let hit = match c.model {
                    Some(DfrModel::Flat) => c.ldr & dest,
                    Some(DfrModel::Cluster) if c.ldr >> 4 == dest >> 4 => c.ldr & dest & 0xf,
                    _ => 0,
                };
                if hit != 0 {
                    to.insert(i);
                    covered |= hit;
                }
            }
            // In the flat model every bit is one APIC; in a cluster every low bit a member.
            // Which model the destination means is the host's (its cores agree in practice);
            // bits of the high nibble in a cluster destination name the cluster, not members.
            let flat = cores.iter().any(|(_, c)| c.model == Some(DfrModel::Flat));
            let members = if flat { dest } else { dest & 0xf };
            (to, (members & !covered).count_ones())
        }
        (DestMode::Logical, IcrFormat::X2Apic) => {
            // §11.12.10.2: logical x2APIC id = cluster (APIC id bits 19:4) in 31:16, one bit
            // (1 << APIC id bits 3:0) in 15:0.
            let (cluster, members) = (icr.dest >> 16, icr.dest & 0xffff);
            let mut covered = 0u32;
            for (i, c) in cores.iter() {
                let bit = 1u32 << (c.apic_id & 0xf);
                if c.apic_id >> 4 == cluster && members & bit != 0 {
                    to.insert(i);
                    covered |= bit;
                }
            }
            (to, (members & !covered).count_ones())
        }
    }
}

#[cfg(test)]
mod tests;
