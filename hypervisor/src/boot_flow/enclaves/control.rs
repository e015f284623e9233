//! The control device's requests (`atoll` on the host), carried out by the manager between its
//! other work: see [`atoll_abi::control`] for the device and the protocol.
//!
//! A request is copied out of its mailbox slot before anything looks at it, so the host
//! changing the slot meanwhile changes nothing; every refusal is a reply with a status and a
//! reason, and leaves the partition table, the pool, the cores and the counters as they were
//! (only `requests_refused` counts it).
//!
//! * **create** checks the description (the boot-time rules, plus: no `after`, the announced
//!   sizes), the cores (not atoll's boot processor, not another enclave's, not lost; a host
//!   core only if the host has it offline: [`HostRun::ask_release`]) and the pool (the
//!   enclave's RAM and the staging of its kernel and initrd must fit). It takes the cores then
//!   (so a second create cannot take them) and reserves a partition slot ([`SlotState::Loading`]).
//! * **load** copies pieces of the kernel or initrd into staging frames, in order.
//! * **start** builds the enclave from the staged files (the same path as a boot-time
//!   enclave), frees the staging and starts its cores. A build that fails undoes the create.
//! * **destroy** stops its vCPUs (kick, then NMIs), reclaims its cores, zeroes and frees its
//!   RAM, and gives host cores back to the host, waiting for its INIT and STARTUP.
//! * **list**, **stats**, **console read and write** read [`Live`] and the report.
//!
//! Every change of ownership (cores, memory) is logged with the enclave's name.

use super::{failed_report, phase_of, Manager, CORES, FRAMES};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use atoll::hw::host_run::release;
use atoll::hw::tsc;
use atoll::machine::percpu::{Ack, Command, PartitionId, Phase};
use atoll::partition::config::EnclaveConfig;
use atoll::partition::table::{SlotState, MAX_PARTITIONS};
use atoll::run::live::Live;
use atoll::summary::{ControlTiming, EnclaveReport};
use atoll_abi::control::{self as abi, Kind, Status, WireError, Writer};
use boot::PhysRange;
use core::sync::atomic::{AtomicU32, Ordering};

/// How long a host core may take to be found offline (asked again while it refuses).
const RELEASE_TIMEOUT_US: u64 = 2_000_000;

/// A refusal: the status and the reason.
type Refused = (Status, String);

fn refuse<T>(status: Status, why: impl Into<String>) -> Result<T, Refused> {
    Err((status, why.into()))
}

/// One staged file.
struct Blob {
    /// Its frames (none for an empty file).
    range: Option<PhysRange>,
    len: u64,
    loaded: u64,
}

impl Blob {
    fn bytes(&self) -> &[u8] {
        match self.range {
            // SAFETY: the frames were allocated to this blob and are identity-mapped; they are
            // freed only with the blob, after the last use of this slice (the build).
            Some(r) => unsafe {
                super::super::module_bytes(PhysRange::from_len(r.start, self.len))
            },
            None => &[],
        }
    }
}

/// A created enclave's kernel and initrd while they are loaded.
struct Staging {
    id: PartitionId,
    image: Blob,
    initrd: Blob,
}

/// What the manager keeps of an enclave for stats and the console, from its build until it
/// is destroyed.
pub(super) struct LiveRef {
    pub live: Arc<Live>,
    pub platform: Option<Arc<atoll::run::vplat::Shared>>,
}

/// The control device's state on the manager's side.
pub(super) struct Control {
    /// The mailbox: [`abi::SLOTS`] slots, lent to the host as BAR2.
    mailbox: PhysRange,
    /// A request copied out of its slot, and the reply being made.
    request: Vec<u8>,
    reply: Vec<u8>,
    staging: Vec<Staging>,
    requests_ok: u64,
    requests_refused: u64,
    created: u64,
    destroyed: u64,
    /// atoll's share of each enclave created at run time, while it lives.
    timings: Vec<(PartitionId, ControlTiming, u64)>,
    /// ... and of the last ones destroyed (at most [`KEPT_TIMINGS`]).
    done: alloc::collections::VecDeque<ControlTiming>,
    /// The slot whose request is being carried out.
    serving: Option<u32>,
}

/// How many destroyed enclaves' timings the summary keeps.
const KEPT_TIMINGS: usize = 16;

impl Control {
    /// The control device's manager side, with its mailbox taken from the pool (zeroed: every
    /// slot FREE).
    pub fn new() -> Result<Self, String> {
        let frames = abi::MAILBOX_SIZE / atoll::machine::frames::FRAME_SIZE;
        let mailbox = FRAMES
            .lock()
            .allocate(frames, abi::MAILBOX_SIZE)
            .map_err(|e| format!("the control device's mailbox: {e}"))?;
        // SAFETY: just allocated to the mailbox, identity-mapped, not referenced elsewhere.
        unsafe {
            core::ptr::write_bytes(
                mailbox.start.as_u64() as *mut u8,
                0,
                abi::MAILBOX_SIZE as usize,
            )
        };
        log::info!(
            "control device: mailbox of {} KiB at {mailbox}",
            abi::MAILBOX_SIZE >> 10
        );
        Ok(Self {
            mailbox,
            request: vec![0; abi::MAX_MESSAGE],
            reply: vec![0; abi::MAX_MESSAGE],
            staging: Vec::new(),
            requests_ok: 0,
            requests_refused: 0,
            created: 0,
            destroyed: 0,
            timings: Vec::new(),
            done: alloc::collections::VecDeque::new(),
            serving: None,
        })
    }

    /// The summary's figures.
    pub fn report(&self) -> atoll::summary::ControlReport {
        atoll::summary::ControlReport {
            requests_ok: self.requests_ok,
            requests_refused: self.requests_refused,
            created: self.created,
            destroyed: self.destroyed,
            timings: self.done.iter().cloned().collect(),
        }
    }

    /// The timing record of `id`, with the TSC at which its Start began.
    fn timing(&mut self, id: PartitionId) -> Option<&mut (PartitionId, ControlTiming, u64)> {
        self.timings.iter_mut().find(|t| t.0 == id)
    }

    /// The mailbox's frames (BAR2's backing).
    pub fn mailbox(&self) -> PhysRange {
        self.mailbox
    }

    fn slot_base(&self, slot: u32) -> u64 {
        self.mailbox.start.as_u64() + u64::from(slot) * u64::from(abi::SLOT_SIZE)
    }

    fn state(&self, slot: u32) -> &AtomicU32 {
        // SAFETY: the slot's state word is 4-aligned inside the mailbox, which stays allocated
        // and identity-mapped for the whole run; the host writes it concurrently, which is what
        // an atomic is for.
        unsafe { AtomicU32::from_ptr((self.slot_base(slot) + abi::SLOT_STATE as u64) as *mut u32) }
    }

    /// Copies slot `slot`'s message into `self.request` (volatile: the host may be writing):
    /// the header, then as many bytes as it says (bounded by the slot); the rest reads zero.
    /// Returns the bytes copied.
    fn copy_in(&mut self, slot: u32) -> usize {
        let from = (self.slot_base(slot) + abi::SLOT_MESSAGE as u64) as *const u8;
        let copy = |range: core::ops::Range<usize>, buf: &mut [u8]| {
            for i in range {
                // SAFETY: inside the slot (MAX_MESSAGE bytes from SLOT_MESSAGE), see `state`.
                buf[i] = unsafe { from.wrapping_add(i).read_volatile() };
            }
        };
        copy(0..abi::HEADER_LEN, &mut self.request);
        let len = u32::from_le_bytes([
            self.request[16],
            self.request[17],
            self.request[18],
            self.request[19],
        ]) as usize;
        let end = abi::HEADER_LEN.saturating_add(len).min(abi::MAX_MESSAGE);
        copy(abi::HEADER_LEN..end, &mut self.request);
        end
    }

    /// Writes `self.reply[..n]` into slot `slot`'s message.
    fn copy_out(&self, slot: u32, n: usize) {
        let to = (self.slot_base(slot) + abi::SLOT_MESSAGE as u64) as *mut u8;
        for (i, b) in self.reply[..n.min(abi::MAX_MESSAGE)].iter().enumerate() {
            // SAFETY: as in `copy_in`.
            unsafe { to.wrapping_add(i).write_volatile(*b) };
        }
    }

    fn staged(&self, id: PartitionId) -> Option<&Staging> {
        self.staging.iter().find(|s| s.id == id)
    }

    /// The staged image and initrd of `id`, complete, for its build.
    pub fn files(&self, id: PartitionId) -> Option<(&[u8], Option<&[u8]>)> {
        let s = self.staged(id)?;
        let initrd = (s.initrd.len > 0).then(|| s.initrd.bytes());
        Some((s.image.bytes(), initrd))
    }

    /// Frees `id`'s staging, if any.
    pub fn drop_staging(&mut self, id: PartitionId) {
        if let Some(i) = self.staging.iter().position(|s| s.id == id) {
            let s = self.staging.swap_remove(i);
            for r in [s.image.range, s.initrd.range].into_iter().flatten() {
                if let Err(e) = FRAMES.lock().free(r) {
                    log::error!("staging of partition {id}: freeing {r}: {e}");
                }
            }
        }
    }

    fn staging_bytes(&self) -> u64 {
        self.staging
            .iter()
            .flat_map(|s| [s.image.range, s.initrd.range])
            .flatten()
            .map(|r| r.len())
            .sum()
    }
}

/// Bytes rounded up to whole frames.
fn frames_of(bytes: u64) -> u64 {
    bytes.div_ceil(atoll::machine::frames::FRAME_SIZE)
}

impl Manager<'_> {
    /// Serves every slot whose doorbell rang. Returns whether any was served.
    pub(super) fn serve_control(&mut self) -> bool {
        self.apply_placements();
        let Some(host) = self.host.as_deref() else {
            return false;
        };
        let rung = host.run.shared.take_doorbells();
        if rung == 0 || self.control.is_none() {
            return false;
        }
        for slot in 0..abi::SLOTS {
            if rung & (1 << slot) != 0 {
                self.serve_slot(slot);
            }
        }
        true
    }

    /// Removes every enclave still loading (the host that was loading it has ended), its
    /// staging freed and its cores left parked. Returns whether there was any.
    pub(super) fn drop_loading(&mut self) -> bool {
        let loading = self.table.ids_in(SlotState::Loading);
        let host_runs = self.host_running();
        for &id in &loading {
            let c = self.config(id);
            if let Some(ctl) = self.control.as_mut() {
                ctl.drop_staging(id);
                ctl.timings.retain(|t| t.0 != id);
            }
            if self.table.remove(id).is_ok() {
                log::warn!(
                    "enclave '{}' was still loading when its host ended or restarted: removed, its staging freed",
                    c.name
                );
                if host_runs {
                    self.give_back(&c.name, &c.cores);
                }
            }
        }
        !loading.is_empty()
    }

    /// The host restarted: what its old boot had in flight is gone — enclaves it was loading,
    /// mailbox slots it held, doorbells it rang.
    pub(super) fn control_after_restart(&mut self) {
        self.drop_loading();
        if let Some(c) = self.control.as_ref() {
            for slot in 0..abi::SLOTS {
                c.state(slot)
                    .store(abi::slot_state::FREE, Ordering::Release);
            }
        }
        if let Some(h) = self.host.as_deref() {
            let _ = h.run.shared.take_doorbells();
        }
    }

    /// Maps the control device's windows (the control function's and the channel
    /// functions') where the host's configuration writes put them.
    fn apply_placements(&mut self) {
        let Some(mailbox) = self.control.as_ref().map(Control::mailbox) else {
            return;
        };
        let Some(host) = self.host.as_deref_mut() else {
            return;
        };
        let functions = 1 + host.run.shared.control().map_or(0, |c| c.channels());
        for f in 0..functions {
            let placed = host.run.shared.take_placements(f);
            if placed.iter().all(Option::is_none) {
                continue;
            }
            // Every moved window leaves its old place first, so one may take the other's.
            for (which, p) in placed.iter().enumerate() {
                if p.is_some() {
                    if let Err(e) = host.place_control_bar(f, which, None, mailbox) {
                        log::warn!("{e}");
                    }
                }
            }
            for (which, p) in placed.into_iter().enumerate() {
                if let Some(Some(to)) = p {
                    if let Err(e) = host.place_control_bar(f, which, Some(to), mailbox) {
                        log::warn!("{e}");
                    }
                }
            }
            host.run
                .shared
                .set_control_registers(f, host.control_bar(f, 0));
        }
    }

    fn serve_slot(&mut self, slot: u32) {
        let Some(c) = self.control.as_mut() else {
            return;
        };
        // Only a submitted slot is served; the host cannot make atoll answer twice.
        if c.state(slot)
            .compare_exchange(
                abi::slot_state::SUBMITTED,
                abi::slot_state::WORKING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            c.requests_refused += 1;
            if let Some(h) = self.host.as_deref() {
                h.run.shared.control_refused();
            }
            log::warn!("control: doorbell for slot {slot}, which holds no submitted request");
            return;
        }
        let copied = c.copy_in(slot);
        let request = core::mem::take(&mut c.request);
        c.serving = Some(slot);
        let n = self.answer(&request[..copied]);
        let Some(c) = self.control.as_mut() else {
            return;
        };
        c.serving = None;
        c.request = request;
        c.copy_out(slot, n);
        c.state(slot)
            .store(abi::slot_state::DONE, Ordering::Release);
    }

    /// Carries out one request message; writes the reply into the control's reply buffer and
    /// returns its length.
    fn answer(&mut self, msg: &[u8]) -> usize {
        let (kind, seq, result) = match abi::parse_request(msg) {
            Err((seq, kind, e)) => {
                let status = match e {
                    WireError::Version(_) => Status::Version,
                    WireError::Kind(_) => Status::UnknownKind,
                    _ => Status::Malformed,
                };
                (kind, seq, Err((status, e.to_string())))
            }
            Ok(f) => (f.kind as u16, f.seq, self.carry_out(f.kind, f.payload)),
        };
        let mut reply = match self.control.as_mut() {
            Some(c) => core::mem::take(&mut c.reply),
            None => return 0,
        };
        let n = match result {
            Ok(payload) => {
                self.count(true);
                abi::write_reply(&mut reply, kind, seq, Status::Ok, |w| w.bytes(&payload))
            }
            Err((status, why)) => {
                self.count(false);
                // The host decides how many refusals there are: the log is rate-limited.
                let n = self.control.as_ref().map_or(0, |c| c.requests_refused);
                if n <= 64 || n.is_power_of_two() {
                    log::info!(
                        "control: request {kind} refused ({n} so far): {}: {why}",
                        status.name()
                    );
                }
                abi::write_reply(&mut reply, kind, seq, status, |w| {
                    abi::Refusal { reason: &why }.write(w)
                })
            }
        };
        // A reply always fits (payloads are bounded below MAX_PAYLOAD); should one not, the
        // client gets a refusal rather than nothing.
        let n = n.unwrap_or_else(|_| {
            abi::write_reply(&mut reply, kind, seq, Status::Internal, |w| {
                abi::Refusal {
                    reason: "the reply did not fit the slot",
                }
                .write(w)
            })
            .unwrap_or(0)
        });
        if let Some(c) = self.control.as_mut() {
            c.reply = reply;
        }
        n
    }

    fn count(&mut self, ok: bool) {
        if let Some(c) = self.control.as_mut() {
            if ok {
                c.requests_ok += 1;
            } else {
                c.requests_refused += 1;
            }
        }
    }

    /// The payload of a successful reply, or the refusal.
    fn carry_out(&mut self, kind: Kind, p: &[u8]) -> Result<Vec<u8>, Refused> {
        let bad = |e: WireError| (Status::Malformed, e.to_string());
        let mut out = vec![0u8; abi::MAX_PAYLOAD];
        let mut w = Writer::new(&mut out);
        match kind {
            Kind::Info => {
                if !p.is_empty() {
                    return refuse(Status::Malformed, "info takes no payload");
                }
                self.info().write(&mut w).map_err(bad)?;
            }
            Kind::Create => {
                let c = abi::Create::read(p).map_err(bad)?;
                let t0 = tsc::now();
                let id = self.create(&c)?;
                let name = self.config(id).name;
                let memory_mib = self.config(id).memory_mib;
                if let Some(ctl) = self.control.as_mut() {
                    ctl.timings.retain(|t| t.0 != id);
                    let timing = ControlTiming {
                        name,
                        memory_mib,
                        create_cycles: tsc::now().saturating_sub(t0),
                        ..Default::default()
                    };
                    ctl.timings.push((id, timing, 0));
                }
                abi::Created { id }.write(&mut w).map_err(bad)?;
            }
            Kind::Load => {
                let l = abi::Load::read(p).map_err(bad)?;
                let t0 = tsc::now();
                self.load(&l)?;
                if let Some(t) = self.control.as_mut().and_then(|c| c.timing(l.id)) {
                    t.1.load_cycles += tsc::now().saturating_sub(t0);
                }
            }
            Kind::Start => {
                let t = abi::Target::read(p).map_err(bad)?;
                if let Some(tm) = self.control.as_mut().and_then(|c| c.timing(t.id)) {
                    tm.2 = tsc::now();
                }
                self.start(t.id)?;
            }
            Kind::Destroy => {
                let t = abi::Target::read(p).map_err(bad)?;
                let id = self.target(&t)?;
                let first_entry = self.lives[usize::from(id)]
                    .as_ref()
                    .map_or(0, |l| l.live.first_entry());
                let t0 = tsc::now();
                self.destroy(id)?;
                let zero = self.zero_cycles[usize::from(id)];
                if let Some(ctl) = self.control.as_mut() {
                    if let Some(i) = ctl.timings.iter().position(|t| t.0 == id) {
                        let (_, mut timing, start_at) = ctl.timings.swap_remove(i);
                        timing.start_to_guest_cycles = if first_entry > start_at && start_at > 0 {
                            first_entry - start_at
                        } else {
                            0
                        };
                        timing.destroy_cycles = tsc::now().saturating_sub(t0);
                        timing.zero_cycles = zero;
                        if ctl.done.len() == KEPT_TIMINGS {
                            ctl.done.pop_front();
                        }
                        ctl.done.push_back(timing);
                    }
                }
            }
            Kind::List | Kind::Stats => {
                let t = abi::Target::read(p).map_err(bad)?;
                let ids: Vec<PartitionId> = if t.name.is_empty() && t.id == abi::Target::ANY {
                    self.table.slots_in_use().map(|(id, _)| id).collect()
                } else {
                    vec![self.target(&t)?]
                };
                w.u32(ids.len() as u32).map_err(bad)?;
                for id in ids.into_iter().take(abi::MAX_RECORDS as usize) {
                    self.write_record(id, &mut w).map_err(bad)?;
                }
            }
            Kind::ConsoleRead => {
                let r = abi::ConsoleRead::read(p).map_err(bad)?;
                let id = self.by_name(r.name)?;
                let Some(l) = self.lives[usize::from(id)].as_ref() else {
                    return refuse(
                        Status::State,
                        format!("enclave '{}' has not started", r.name),
                    );
                };
                let max = (r.max as usize).min(abi::ConsoleData::MAX_DATA);
                let mut data = vec![0u8; max];
                let (start, n) = l.live.console_read(r.cursor, &mut data);
                let running = self.table.get(id).map(|s| s.state()) == Some(SlotState::Running);
                abi::ConsoleData {
                    start,
                    next: start + n as u64,
                    running,
                    data: &data[..n],
                }
                .write(&mut w)
                .map_err(bad)?;
            }
            Kind::ConsoleWrite => {
                let cw = abi::ConsoleWrite::read(p).map_err(bad)?;
                let id = self.by_name(cw.name)?;
                if self.table.get(id).map(|s| s.state()) != Some(SlotState::Running) {
                    return refuse(
                        Status::State,
                        format!("enclave '{}' is not running", cw.name),
                    );
                }
                let Some(platform) = self.lives[usize::from(id)]
                    .as_ref()
                    .and_then(|l| l.platform.clone())
                else {
                    return refuse(
                        Status::State,
                        format!("enclave '{}' has no UART (a bare-metal guest)", cw.name),
                    );
                };
                let taken = platform.uart_receive(cw.data, &mut self.input.host);
                abi::Accepted {
                    bytes: taken as u32,
                }
                .write(&mut w)
                .map_err(bad)?;
            }
        }
        let n = w.len();
        out.truncate(n);
        Ok(out)
    }

    fn info(&self) -> abi::Info {
        let c = self.control.as_ref();
        let frames = FRAMES.lock();
        abi::Info {
            pool_bytes: frames.managed().iter().map(|r| r.len()).sum(),
            pool_free_bytes: frames.free_bytes(),
            max_enclaves: MAX_PARTITIONS as u32,
            enclaves: self.table.used() as u32,
            staging_bytes: c.map_or(0, Control::staging_bytes),
            requests_ok: c.map_or(0, |c| c.requests_ok),
            requests_refused: c.map_or(0, |c| c.requests_refused),
            created: c.map_or(0, |c| c.created),
            destroyed: c.map_or(0, |c| c.destroyed),
            slots_busy: c.map_or(0, |c| {
                (0..abi::SLOTS)
                    .filter(|&i| Some(i) != c.serving)
                    .filter(|&i| c.state(i).load(Ordering::Acquire) != abi::slot_state::FREE)
                    .count() as u32
            }),
        }
    }

    fn by_name(&self, name: &str) -> Result<PartitionId, Refused> {
        self.table
            .find(name)
            .ok_or_else(|| (Status::NotFound, format!("no enclave named '{name}'")))
    }

    /// The enclave a target names: by name, else by id.
    fn target(&self, t: &abi::Target) -> Result<PartitionId, Refused> {
        if !t.name.is_empty() {
            return self.by_name(t.name);
        }
        self.table
            .get(t.id)
            .map(|_| t.id)
            .ok_or_else(|| (Status::NotFound, format!("no enclave with id {}", t.id)))
    }

    /// Why `core` cannot go to a new enclave, if it cannot (before asking the host for it).
    fn core_refusal(&self, core: u32) -> Option<String> {
        if core == self.bsp.apic_id {
            return Some(format!(
                "core {core} is atoll's boot processor (it runs the manager and the host's boot CPU)"
            ));
        }
        if !CORES.is_online(core) {
            return Some(format!("core {core} is not online in atoll"));
        }
        if self.lost.contains(&core) {
            return Some(format!("core {core} was lost earlier in the run"));
        }
        for (_, s) in self.table.slots_in_use() {
            let holds = match s.state() {
                SlotState::Free | SlotState::Failed | SlotState::Reclaimed => false,
                SlotState::Ended => s.built().is_some(),
                _ => true,
            };
            if let Some(c) = s.config().filter(|c| holds && c.cores.contains(&core)) {
                return Some(format!("core {core} belongs to enclave '{}'", c.name));
            }
        }
        // A core of an enclave that ended but is not destroyed yet is parked, not free.
        for (_, s) in self.table.slots_in_use() {
            if let Some(c) = s.config().filter(|c| c.cores.contains(&core)) {
                return Some(format!(
                    "core {core} belongs to enclave '{}' ({}; destroy it first)",
                    c.name,
                    s.state().name()
                ));
            }
        }
        None
    }

    /// The index of `core` among the host's cores, if it is a host application processor.
    fn host_index(&self, core: u32) -> Option<usize> {
        let host = self.host.as_deref()?;
        host.run
            .cores
            .iter()
            .position(|&c| c == core)
            .filter(|&i| i > 0)
    }

    /// Takes `cores` for a new enclave: each must be parked (a core the host never had, or one
    /// an enclave left) or a host core the host has offline. All or nothing.
    fn take_cores(&mut self, name: &str, cores: &[u32]) -> Result<(), Refused> {
        let mut taken: Vec<u32> = Vec::new();
        for &core in cores {
            match self.take_core(core) {
                Ok(from_host) => {
                    if from_host {
                        taken.push(core);
                    }
                }
                Err(e) => {
                    self.give_back(name, &taken);
                    return Err(e);
                }
            }
        }
        if !taken.is_empty() {
            log::info!("enclave '{name}': cores {taken:?} taken from the host (offline there)");
        }
        Ok(())
    }

    /// Takes one core; true if it came from the host.
    fn take_core(&mut self, core: u32) -> Result<bool, Refused> {
        match phase_of(core) {
            Some(Phase::Parked) => return Ok(false),
            Some(Phase::Running(p)) if p == super::super::host::HOST_PARTITION => {}
            other => {
                return refuse(Status::CoreBusy, format!("core {core} is busy ({other:?})"));
            }
        }
        let Some(index) = self.host_index(core) else {
            return refuse(Status::CoreBusy, format!("core {core} is not available"));
        };
        let Some(run) = self.host.as_deref().map(|h| h.run.clone()) else {
            return refuse(Status::Internal, "no host");
        };
        // A CPU the host has just offlined reports itself dead before it reaches its offline
        // loop (it writes back its caches first, which exits): a refusal is asked again until
        // the deadline.
        let deadline = tsc::micros().saturating_add(RELEASE_TIMEOUT_US);
        let mut refused_before = false;
        let answer = loop {
            run.ask_release(index);
            while run.release_state(index) == release::ASKED && tsc::micros() < deadline {
                // The NMI may have reached the core between an exit and its next entry: again.
                atoll::hw::idle_wait_us(1000);
                if run.release_state(index) == release::ASKED {
                    run.signal(index);
                }
            }
            // Withdraws an unanswered request, or takes the answer, in one step.
            match run.finish_release(index) {
                release::REFUSED if tsc::micros() < deadline => {
                    refused_before = true;
                    atoll::hw::idle_wait_us(20_000);
                }
                // Unanswered at the deadline after refusals: it is online.
                release::ASKED if refused_before => break release::REFUSED,
                answer => break answer,
            }
        };
        match answer {
            release::GRANTED => {}
            release::REFUSED => {
                return refuse(
                    Status::CoreBusy,
                    format!(
                        "core {core} is online in the host: offline it first (echo 0 > \
                         /sys/devices/system/cpu/cpuN/online for its CPU, or atoll create \
                         --offline-cores)"
                    ),
                );
            }
            _ => {
                return refuse(
                    Status::CoreBusy,
                    format!("core {core} did not answer atoll's request for it"),
                )
            }
        }
        // Its host vCPU is over (the core marked itself lent): reclaim it so it parks.
        let deadline = tsc::micros().saturating_add(ACK_WAIT_US);
        while !matches!(phase_of(core), Some(Phase::Ended(..))) && tsc::micros() < deadline {
            core::hint::spin_loop();
        }
        match self.send(core, Command::Reclaim) {
            Ok(Ack::Done) => Ok(true),
            other => {
                self.lost.push(core);
                refuse(
                    Status::Internal,
                    format!("core {core} left the host but did not park ({other:?})"),
                )
            }
        }
    }

    /// Gives host cores among `cores` that are parked back to the host (waiting for its INIT
    /// and STARTUP); other cores stay parked.
    fn give_back(&mut self, name: &str, cores: &[u32]) {
        let mut back = Vec::new();
        for &core in cores {
            if self.host_index(core).is_none() || phase_of(core) != Some(Phase::Parked) {
                continue;
            }
            if let Some(h) = self.host.as_deref() {
                h.run.shared.set_lent(core, false);
            }
            match self.send(core, Command::Start(super::super::host::HOST_PARTITION)) {
                Ok(Ack::Done) => back.push(core),
                other => log::error!("enclave '{name}': core {core} not given back: {other:?}"),
            }
        }
        if !back.is_empty() {
            log::info!(
                "enclave '{name}': cores {back:?} given back to the host (it may online them)"
            );
        }
    }

    fn create(&mut self, c: &abi::Create) -> Result<PartitionId, Refused> {
        let config = self.check_description(c)?;
        for &core in &config.cores {
            if let Some(why) = self.core_refusal(core) {
                return refuse(Status::CoreBusy, why);
            }
        }
        // The pool must hold the RAM and the staged files (a build needs a little more for its
        // tables; that shortfall is reported by the build, undoing the create).
        let need = (config.memory_mib << 20)
            + frames_of(c.image_len) * atoll::machine::frames::FRAME_SIZE
            + frames_of(c.initrd_len) * atoll::machine::frames::FRAME_SIZE;
        let free = FRAMES.lock().free_bytes();
        if need > free {
            return refuse(
                Status::NoMemory,
                format!(
                    "memory_mib: {} MiB of RAM and {} KiB of kernel and initrd need {} MiB, the pool has {} MiB free",
                    config.memory_mib,
                    (c.image_len + c.initrd_len) >> 10,
                    need.div_ceil(1 << 20),
                    free >> 20
                ),
            );
        }
        if self.table.find(&config.name).is_some() {
            return refuse(
                Status::Invalid,
                format!("name: an enclave named '{}' exists", config.name),
            );
        }
        if self.table.used() >= MAX_PARTITIONS {
            return refuse(
                Status::Full,
                format!("all {MAX_PARTITIONS} partitions are in use"),
            );
        }
        let alloc = |len: u64| -> Result<Option<PhysRange>, Refused> {
            if len == 0 {
                return Ok(None);
            }
            FRAMES
                .lock()
                .allocate(frames_of(len), atoll::machine::frames::FRAME_SIZE)
                .map(Some)
                .map_err(|e| (Status::NoMemory, format!("staging {len} bytes: {e}")))
        };
        let image = alloc(c.image_len)?;
        let initrd = match alloc(c.initrd_len) {
            Ok(r) => r,
            Err(e) => {
                if let Some(r) = image {
                    let _ = FRAMES.lock().free(r);
                }
                return Err(e);
            }
        };
        let free_staging = || {
            for r in [image, initrd].into_iter().flatten() {
                let _ = FRAMES.lock().free(r);
            }
        };
        let name = config.name.clone();
        let cores = config.cores.clone();
        if let Err(e) = self.take_cores(&name, &cores) {
            free_staging();
            return Err(e);
        }
        let id = match self.table.create(config) {
            Ok(id) => id,
            Err(e) => {
                free_staging();
                self.give_back(&name, &cores);
                return refuse(Status::Internal, e.to_string());
            }
        };
        if let Some(ctl) = self.control.as_mut() {
            ctl.staging.push(Staging {
                id,
                image: Blob {
                    range: image,
                    len: c.image_len,
                    loaded: 0,
                },
                initrd: Blob {
                    range: initrd,
                    len: c.initrd_len,
                    loaded: 0,
                },
            });
            ctl.created += 1;
        }
        log::info!(
            "enclave '{name}' created (partition {id}): cores {cores:?}, staging {} KiB for its files",
            (c.image_len + c.initrd_len) >> 10
        );
        Ok(id)
    }

    /// The description of a create, checked by the boot-time rules and the run-time ones
    /// ([`atoll::partition::config::parse_runtime`]).
    fn check_description(&self, c: &abi::Create) -> Result<EnclaveConfig, Refused> {
        let online = super::super::online_cores();
        let config = atoll::partition::config::parse_runtime(
            c.description,
            c.image_len,
            c.initrd_len,
            &online,
        )
        .map_err(|e| (Status::Invalid, e.to_string()))?;
        super::super::iommu::check_devices(&config).map_err(|e| (Status::Device, e.to_string()))?;
        // Each function must exist now (before the files are staged); the build takes them.
        let functions = super::super::passthrough::functions_of(&config)
            .map_err(|e| (Status::Device, format!("{DEVICES_PREFIX}{e}")))?;
        for d in &functions {
            let found = atoll::partition::machine::PciAddress::parse(d)
                .ok_or_else(|| alloc::format!("{d}: not a PCI address"))
                .and_then(|a| super::super::passthrough::resolve(&a));
            if let Err(e) = found {
                return Err((Status::Device, format!("{DEVICES_PREFIX}{e}")));
            }
        }
        Ok(config)
    }

    fn load(&mut self, l: &abi::Load) -> Result<(), Refused> {
        let state = self.table.get(l.id).map(|s| s.state());
        if state != Some(SlotState::Loading) {
            return match state {
                None => refuse(Status::NotFound, format!("no enclave with id {}", l.id)),
                Some(s) => refuse(
                    Status::State,
                    format!("enclave {} is {}, not loading", l.id, s.name()),
                ),
            };
        }
        let Some(s) = self
            .control
            .as_mut()
            .and_then(|c| c.staging.iter_mut().find(|s| s.id == l.id))
        else {
            return refuse(Status::Internal, format!("enclave {} has no staging", l.id));
        };
        let blob = match l.blob {
            abi::Blob::Image => &mut s.image,
            abi::Blob::Initrd => &mut s.initrd,
        };
        if l.offset != blob.loaded {
            return refuse(
                Status::State,
                format!(
                    "{:?}: piece at {} but {} bytes are loaded (pieces go in order)",
                    l.blob, l.offset, blob.loaded
                ),
            );
        }
        let end = l.offset.saturating_add(l.data.len() as u64);
        if end > blob.len {
            return refuse(
                Status::BadImage,
                format!(
                    "{:?}: {end} bytes, more than the {} announced",
                    l.blob, blob.len
                ),
            );
        }
        if let Some(r) = blob.range {
            let to = (r.start.as_u64() + l.offset) as *mut u8;
            // SAFETY: `to..to + len` lies inside the blob's frames (end <= blob.len <= their
            // size), which are identity-mapped and owned by this staging; `data` is atoll's own
            // copy of the request.
            unsafe { core::ptr::copy_nonoverlapping(l.data.as_ptr(), to, l.data.len()) };
        }
        blob.loaded = end;
        Ok(())
    }

    fn start(&mut self, id: PartitionId) -> Result<(), Refused> {
        let Some(slot) = self.table.get(id) else {
            return refuse(Status::NotFound, format!("no enclave with id {id}"));
        };
        if slot.state() != SlotState::Loading {
            return refuse(
                Status::State,
                format!("enclave {id} is {}, not loading", slot.state().name()),
            );
        }
        let name = slot.config().map(|c| c.name.clone()).unwrap_or_default();
        let Some(s) = self.control.as_ref().and_then(|c| c.staged(id)) else {
            return refuse(Status::Internal, format!("enclave '{name}' has no staging"));
        };
        let incomplete = [("image", &s.image), ("initrd", &s.initrd)]
            .into_iter()
            .find(|(_, b)| b.loaded != b.len)
            .map(|(what, b)| format!("{what}: {} of {} bytes loaded", b.loaded, b.len));
        if let Some(why) = incomplete {
            // The create is undone: a client that starts too early loads again from scratch.
            self.undo_create(id);
            return refuse(Status::BadImage, why);
        }
        if let Err(e) = self.table.loaded(id) {
            return refuse(Status::Internal, e.to_string());
        }
        let t0 = tsc::micros();
        self.build(id);
        let built_us = tsc::micros().saturating_sub(t0);
        if let Some(c) = self.control.as_mut() {
            c.drop_staging(id);
        }
        let state = self.table.get(id).map(|s| s.state());
        if state != Some(SlotState::Built) {
            // The build refused it (a bad image, too little memory): undo.
            let why = self
                .table
                .report(id)
                .map_or_else(|| "it could not be built".to_string(), |r| r.detail.clone());
            self.undo_create(id);
            let status = if why.starts_with(DEVICES_PREFIX) {
                Status::Device
            } else if why.contains("out of physical memory") || why.contains("RAM:") {
                Status::NoMemory
            } else {
                Status::BadImage
            };
            return refuse(status, why);
        }
        let started = self.try_start(id);
        match self.table.get(id).map(|s| s.state()) {
            Some(SlotState::Running) if started => {}
            Some(SlotState::Running) => {
                // Some cores did: they were told to stop; it ends and is collected as usual.
                return refuse(
                    Status::Internal,
                    format!("enclave '{name}': not every core started it (it is being stopped)"),
                );
            }
            _ => {
                // Not started (a core not parked, lost): undo, so it is not started later.
                if self.table.get(id).map(|s| s.state()) == Some(SlotState::Built) {
                    let report = failed_report(
                        &self.config(id),
                        "not_started",
                        "its cores did not start it".into(),
                    );
                    self.fail(id, report);
                }
                self.undo_create(id);
                return refuse(
                    Status::Internal,
                    format!("enclave '{name}' was built but its cores did not start it"),
                );
            }
        }
        log::info!(
            "enclave '{name}' started on cores {:?} (built in {built_us} us, started in {} us)",
            self.cores(id),
            tsc::micros().saturating_sub(t0 + built_us)
        );
        Ok(())
    }

    /// Undoes a run-time create that did not start: its staging freed, its slot (holding no
    /// memory) removed, its host cores given back.
    fn undo_create(&mut self, id: PartitionId) {
        let c = self.config(id);
        if let Some(ctl) = self.control.as_mut() {
            ctl.drop_staging(id);
            ctl.timings.retain(|t| t.0 != id);
        }
        if let Err(e) = self.table.remove(id) {
            log::error!("enclave '{}': undoing its create: {e}", c.name);
            return;
        }
        self.lives[usize::from(id)] = None;
        self.give_back(&c.name, &c.cores);
        log::info!(
            "enclave '{}' not created after all: cores {:?} back",
            c.name,
            c.cores
        );
    }

    fn destroy(&mut self, id: PartitionId) -> Result<(), Refused> {
        let c = self.config(id);
        let name = c.name.clone();
        match self.table.get(id).map(|s| s.state()) {
            None => return refuse(Status::NotFound, format!("no enclave with id {id}")),
            Some(SlotState::Running) => {
                // Stop every core still running it (kick, then NMIs), then collect it: its
                // cores reclaim, its tables are freed and its RAM zeroed into the pool.
                for &core in &c.cores {
                    if phase_of(core) == Some(Phase::Running(id)) && !self.lost.contains(&core) {
                        if let Err(e) = self.send(core, Command::Stop) {
                            log::error!("enclave '{name}': {e}");
                            self.lost.push(core);
                        }
                    }
                }
                if !self.stopping.contains(&id) {
                    self.stopping.push(id);
                }
                if !self.try_collect(id) {
                    return refuse(
                        Status::Internal,
                        format!("enclave '{name}': its cores did not report its end"),
                    );
                }
            }
            Some(SlotState::Waiting | SlotState::Built) => {
                let report = failed_report(&c, "not_started", "destroyed before it started".into());
                self.fail(id, report);
            }
            Some(_) => {}
        }
        if let Some(ctl) = self.control.as_mut() {
            ctl.drop_staging(id);
        }
        // A core that did not let go keeps the enclave's memory for good (it may still reach
        // it): the enclave stays listed, failed, with that reason.
        if let Some(core) = c.cores.iter().find(|core| self.lost.contains(core)) {
            return refuse(
                Status::Internal,
                format!(
                    "enclave '{name}': core {core} did not let go; its memory is kept, not reused, and it stays listed"
                ),
            );
        }
        if let Err(e) = self.table.remove(id) {
            // Its memory is kept (a core did not let go): it stays listed.
            return refuse(Status::Internal, format!("enclave '{name}': {e}"));
        }
        self.stopping.retain(|&p| p != id);
        self.start_problem.retain(|(p, _)| *p != id);
        self.lives[usize::from(id)] = None;
        self.give_back(&name, &c.cores);
        if let Some(ctl) = self.control.as_mut() {
            ctl.destroyed += 1;
        }
        log::info!("enclave '{name}' destroyed: its memory is zeroed and in the pool");
        Ok(())
    }

    /// One record of List/Stats.
    fn write_record(&self, id: PartitionId, w: &mut Writer<'_>) -> Result<(), WireError> {
        let Some(slot) = self.table.get(id) else {
            return Err(WireError::Field("id"));
        };
        let c = slot.config();
        let report: Option<&EnclaveReport> = self.table.report(id);
        let state = match slot.state() {
            SlotState::Loading | SlotState::Waiting | SlotState::Built => abi::State::Loading,
            SlotState::Running => abi::State::Running,
            // Ended by itself and well: powered off, or exited with code 0.
            _ => match report.map(|r| (r.end_reason, r.exit_code)) {
                Some((Some("power_off"), _)) | Some((Some("exit"), Some(0))) => abi::State::Ended,
                _ => abi::State::Failed,
            },
        };
        let live = self.lives[usize::from(id)].as_ref();
        let now = tsc::now();
        let hz = tsc::hz().max(1);
        let exits = live.map_or([0; abi::EXIT_KINDS.len()], |l| l.live.exits());
        let platform = live.and_then(|l| l.platform.as_deref());
        let load = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let reason = match report {
            Some(r) if state != abi::State::Running => {
                let why = r.end_reason.unwrap_or(r.state);
                if r.detail.is_empty() {
                    why.to_string()
                } else {
                    format!("{why}: {}", r.detail)
                }
            }
            _ => String::new(),
        };
        let cores = c.map(|c| c.cores.as_slice()).unwrap_or(&[]);
        let faults = super::super::iommu::VTD
            .lock()
            .as_ref()
            .map(|v| v.enclave_faults(id))
            .unwrap_or_default();
        let virtio = platform.map(|p| p.virtio_stats()).unwrap_or_default();
        let mut per_vcpu = [[0u64; abi::VCPU_EXIT_CLASSES.len()]; abi::MAX_CORES];
        let vcpus = platform.map_or(0, |p| p.vcpu_exits(&mut per_vcpu));
        abi::Record {
            id,
            state,
            name: c.map_or("", |c| c.name.as_str()),
            cores: abi::CoreList::default(),
            memory_mib: c.map_or(0, |c| c.memory_mib),
            uptime_us: live.map_or(0, |l| {
                (u128::from(l.live.uptime_ticks(now)) * 1_000_000 / u128::from(hz)) as u64
            }),
            exits,
            vcpu_exits: abi::VcpuCounts::default(),
            interrupts_injected: platform.map_or(0, |p| load(&p.interrupts_injected)),
            ipis_dropped: platform.map_or(0, |p| load(&p.ipis_dropped)),
            console_bytes_dropped: platform.map_or(0, |p| load(&p.console_bytes_dropped))
                + report.map_or(0, |r| r.console_bytes_dropped),
            device_interrupts: platform.map_or(0, |p| load(&p.device_counters.delivered)),
            dma_faults: faults.dma,
            interrupt_faults: faults.interrupt,
            virtio_chains: virtio.iter().map(|(_, s)| s.chains).sum(),
            virtio_bad_chains: virtio.iter().map(|(_, s)| s.bad_chains).sum(),
            virtio_host_errors: platform
                .and_then(|p| p.channel())
                .map_or(0, |c| c.host_errors()),
            restarts: 0,
            reason: &reason,
        }
        .write_with(
            &cores[..cores.len().min(abi::MAX_CORES)],
            &per_vcpu[..vcpus],
            w,
        )
    }
}

/// How a build's failure to pass the description's functions through begins (the create's
/// refusal is then [`Status::Device`]).
pub(super) const DEVICES_PREFIX: &str = "devices: ";

/// How long the manager waits for a released core to report its host part over.
const ACK_WAIT_US: u64 = super::ACK_TIMEOUT_US;

/// Per partition: what stats and the console read (kept from build to destroy).
pub(super) fn no_lives() -> Vec<Option<LiveRef>> {
    (0..MAX_PARTITIONS).map(|_| None).collect()
}
