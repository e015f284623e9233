//! The enclaves of a run, managed by the boot processor.
//!
//! The manager reads the `enclaves` description into the partition table
//! ([`atoll::partition::table`]) and then loops until every enclave is done:
//!
//! 1. **build** every waiting enclave that may be built (no `after`, or the one it follows is
//!    done): RAM from the frame pool, zeroed, image loaded, second-stage tables made;
//! 2. **start** every built enclave whose cores are all parked: publish what its cores run,
//!    post `Start` to each core's mailbox and kick it (an IPI), wait for each acknowledgement
//!    with a deadline; enclaves on application processors first, then one that includes the
//!    boot processor, whose vCPU runs right here (the manager pauses meanwhile);
//! 3. **collect** every running enclave whose cores all report it ended (once one does, the
//!    others are sent `Stop`, so a vCPU that ignores its enclave's end does not hold its core
//!    for good): file its report, post
//!    `Reclaim` to each of its cores (each drops cached translations of the enclave's tables
//!    and parks), then free its tables and zero its RAM back into the pool. A core that does
//!    not acknowledge is lost for the run, and the enclave's memory stays allocated rather
//!    than be reused under a core that may still reach it.
//!
//! Meanwhile the manager passes atoll's serial input to the enclave that takes it.
//!
//! Every application processor serves its mailbox ([`serve_forever`]): it halts until a kick
//! (or a slow timer tick) and serves the command, running its vCPU of the enclave for `Start`.

use super::{module_bytes, slot_of, CORES, CORE_VIRT, FRAMES, WALL_CLOCK};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use atoll::hw::enclave_run::{self, RunSpec, SecondStage};
use atoll::hw::{self, console, tsc};
use atoll::machine::cpu::CoreCaps;
use atoll::machine::percpu::{
    Ack, Command, CoreWork, FailReason, Outcome, PartitionId, PerCore, Phase, Waiter,
};
use atoll::machine::smp;
use atoll::partition::config::{EnclaveConfig, EntryMode};
use atoll::partition::table::{PartitionTable, SlotState, MAX_PARTITIONS};
use atoll::partition::{Enclave, Identity};
use atoll::summary::EnclaveReport;
use boot::info::BootInfo;
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

mod control;

/// Each core's block, by core-table slot.
pub static PER_CORE: [PerCore; smp::MAX_CORES] = [const { PerCore::new() }; smp::MAX_CORES];
/// What the cores of each partition run: published before `Start` is posted, withdrawn after
/// every core acknowledged `Reclaim`.
static RUNS: [Mutex<Option<Arc<RunSpec>>>; MAX_PARTITIONS] =
    [const { Mutex::new(None) }; MAX_PARTITIONS];
/// Each partition's report, filed by the core of its boot vCPU before it reports the end.
static REPORTS: [Mutex<Option<EnclaveReport>>; MAX_PARTITIONS] =
    [const { Mutex::new(None) }; MAX_PARTITIONS];

/// How long the manager waits for a core to acknowledge a command (of atoll's clock, the TSC:
/// generous, since an emulator may run a core slowly).
const ACK_TIMEOUT_US: u64 = 5_000_000;
/// How long an idle core sleeps between looks at its mailbox when no kick comes.
const IDLE_POLL_US: u64 = 50_000;

/// What building an enclave made: its tables and RAM (torn down at reclaim) and what its
/// cores run.
struct Built {
    tables: Tables,
    spec: Arc<RunSpec>,
}

enum Tables {
    Ept(Enclave<'static, Identity, ept::EptFormat>),
    Npt(Enclave<'static, Identity, ept::NptFormat>),
}

impl Tables {
    /// Maps `len` bytes of a passed-through function's BAR (host-physical `hpa`) at `gpa` in
    /// the enclave's second stage: read-write, uncacheable, never executable.
    fn map_mmio(&mut self, gpa: u64, hpa: u64, len: u64) -> Result<(), String> {
        let (g, h) = (boot::GuestPhysAddr::new(gpa), boot::HostPhysAddr::new(hpa));
        let perms = ept::Perms::READ | ept::Perms::WRITE;
        match self {
            Tables::Ept(e) => e.ept.map(g, h, len, perms, ept::MemType::Uncacheable),
            Tables::Npt(e) => e.ept.map(g, h, len, perms, ept::MemType::Uncacheable),
        }
        .map_err(|e| alloc::format!("mapping a BAR page at {gpa:#x}: {e:?}"))
    }

    /// Frees the tables, zeroes the RAM and returns both to the pool.
    fn destroy(self) -> Result<(), atoll::machine::frames::FrameError> {
        match self {
            Tables::Ept(e) => e.destroy(&FRAMES, &Identity),
            Tables::Npt(e) => e.destroy(&FRAMES, &Identity),
        }
    }
}

fn phase_of(apic_id: u32) -> Option<Phase> {
    slot_of(apic_id).map(|i| PER_CORE[i].mailbox.phase())
}

/// A core's side of the commands, on the target.
struct TargetCore {
    slot: usize,
    apic_id: u32,
    /// The boot processor running its own vCPU inside the manager: no one can post it Stop.
    inline: bool,
}

impl CoreWork for TargetCore {
    fn run(&mut self, p: PartitionId, block: &PerCore) -> Outcome {
        if p == super::host::HOST_PARTITION {
            let Some(run) = super::host::HOST_RUN.get() else {
                return Outcome::Failed(FailReason::Setup);
            };
            let Some(index) = run.cores.iter().position(|&c| c == self.apic_id) else {
                return Outcome::Failed(FailReason::Setup);
            };
            return match enclave_run::core_for(&CORE_VIRT[self.slot], run.second_stage) {
                Ok(core) => {
                    // Back only when atoll took the core from the host (it had it offline):
                    // the host's part on this core is over, and the manager reclaims it.
                    atoll::hw::host_run::serve_ap(run, index, core);
                    Outcome::Stopped
                }
                Err(e) => {
                    log::error!("host core {}: {e}", self.apic_id);
                    Outcome::Failed(FailReason::Setup)
                }
            };
        }
        let outcome = self.run_enclave(p, block);
        // The manager may be running the host's boot vCPU: atoll's NMI makes it look now.
        if let Some(run) = super::host::HOST_RUN.get() {
            if run.cores.first().is_some_and(|&bsp| bsp != self.apic_id) {
                run.signal(0);
            }
        }
        outcome
    }

    fn reclaim(&mut self, p: PartitionId) -> Result<(), FailReason> {
        let Some(spec) = RUNS.get(usize::from(p)).and_then(|r| r.lock().clone()) else {
            return Ok(());
        };
        enclave_run::forget(&spec, &CORE_VIRT[self.slot]).map_err(|e| {
            log::error!(
                "core {}: cannot forget enclave '{}': {e}",
                self.apic_id,
                spec.config.name
            );
            FailReason::Teardown
        })
    }
}

impl TargetCore {
    fn run_enclave(&mut self, p: PartitionId, block: &PerCore) -> Outcome {
        let Some(spec) = RUNS.get(usize::from(p)).and_then(|r| r.lock().clone()) else {
            log::error!(
                "core {}: Start of partition {p}, which has nothing to run",
                self.apic_id
            );
            return Outcome::Failed(FailReason::Setup);
        };
        let vcpu = spec
            .config
            .cores
            .iter()
            .position(|&c| c == self.apic_id)
            .unwrap_or(0);
        let stopped = Cell::new(false);
        let stop = || {
            let s = block.stop_requested();
            stopped.set(stopped.get() | s);
            s
        };
        // The machine's deadline (`stop_after_ms`) reaches application processors as a Stop in
        // their mailbox; the boot processor runs its own vCPU inline, where no one can post it
        // one: `enclave_run` stops it on its own clock.
        let stop_at = machine_deadline().filter(|_| self.inline).map(|d| {
            let left_us = d.saturating_sub(tsc::micros());
            tsc::now().saturating_add(left_us.saturating_mul(tsc::hz()) / 1_000_000)
        });
        let report = enclave_run::run(&spec, vcpu, &CORE_VIRT[self.slot], &stop, stop_at);
        if stop_at.is_some_and(|d| tsc::now() >= d) {
            stopped.set(true);
        }
        let failed = report
            .as_ref()
            .is_some_and(|r| r.end_reason == Some("failed"));
        if let Some(r) = report {
            *REPORTS[usize::from(p)].lock() = Some(r);
        }
        if stopped.get() {
            Outcome::Stopped
        } else if failed {
            Outcome::Failed(FailReason::Setup)
        } else {
            Outcome::Finished
        }
    }
}

/// An application processor's life after check-in: serve its mailbox for good.
pub fn serve_forever(slot: usize, apic_id: u32) -> ! {
    let block = &PER_CORE[slot];
    let mut work = TargetCore {
        slot,
        apic_id,
        inline: false,
    };
    loop {
        if !block.serve(&mut work) {
            // Interrupts are off until the HLT: a kick sent after `serve` looked wakes it.
            hw::idle_wait_us(IDLE_POLL_US);
            block.counters.bump(&block.counters.wakeups);
        }
    }
}

/// The manager's way of waiting: sleep briefly, passing serial input on.
struct ManagerWaiter<'a>(&'a mut SerialInput);

impl Waiter for ManagerWaiter<'_> {
    fn now_us(&mut self) -> u64 {
        tsc::micros()
    }
    fn idle(&mut self) {
        self.0.forward();
        hw::idle_wait_us(500);
    }
}

struct Manager<'a> {
    table: PartitionTable<Built>,
    info: &'a BootInfo<'a>,
    bsp: &'a CoreCaps,
    problems: &'a mut Vec<String>,
    input: SerialInput,
    /// Cores that did not answer a command or could not be cleaned up: never used again.
    lost: Vec<u32>,
    /// Why a partition's start went wrong, for its report.
    start_problem: Vec<(PartitionId, String)>,
    /// Partitions whose remaining cores were told to stop.
    stopping: Vec<PartitionId>,
    /// Whether the machine's deadline has been acted on.
    deadline_done: bool,
    /// The root partition, if the machine has one: its boot vCPU runs here, in slices.
    host: Option<&'a mut super::host::Host>,
    /// The control device's manager side (with a root partition).
    control: Option<control::Control>,
    /// Per partition: its live figures, from its build until it is destroyed.
    lives: Vec<Option<control::LiveRef>>,
    /// Per partition: TSC cycles its last reclaim spent freeing its tables and zeroing its RAM.
    zero_cycles: Vec<u64>,
    /// The host's restarts the control device's state was last reset for.
    host_restarts_seen: u32,
    /// Which enclave holds each channel function (virtio devices).
    channels: super::channels::Channels,
}

/// When the machine's deadline passes (`tsc::micros()`; 0: no deadline). Written once by the
/// manager before it starts any enclave, read by every core's stop check.
static DEADLINE_US: AtomicU64 = AtomicU64::new(0);

/// The machine's deadline, if `stop_after_ms` set one.
fn machine_deadline() -> Option<u64> {
    match DEADLINE_US.load(Ordering::Acquire) {
        0 => None,
        d => Some(d),
    }
}

/// How long a core may take to answer Stop after its kick before it gets an NMI too.
const STOP_NMI_AFTER_US: u64 = 100_000;

/// Reads the `enclaves` module, if any, and runs every enclave it describes to its end,
/// reclaiming each one's cores and memory; with `stop_after_ms`, every enclave still running
/// that long after the start is stopped. Returns the reports, in description order.
pub fn run_all(
    info: &BootInfo,
    bsp: &CoreCaps,
    stop_after_ms: Option<u64>,
    problems: &mut Vec<String>,
    machine: Option<Vec<EnclaveConfig>>,
    host: Option<&mut super::host::Host>,
) -> (Vec<EnclaveReport>, Option<atoll::summary::ControlReport>) {
    // With a machine description, its enclaves (possibly none); otherwise the `enclaves`
    // module's.
    let configs = match machine {
        Some(c) => c,
        None if host.is_some() => Vec::new(),
        None => match describe(info, problems) {
            Some(c) => c,
            None => return (Vec::new(), None),
        },
    };
    if let Some(ms) = stop_after_ms {
        let at = tsc::micros().saturating_add(ms.saturating_mul(1000)).max(1);
        DEADLINE_US.store(at, Ordering::Release);
        log::info!("the machine stops every enclave still running in {ms} ms (stop_after_ms)");
    }
    let mut m = Manager {
        table: PartitionTable::new(),
        info,
        bsp,
        problems,
        input: SerialInput {
            target: None,
            pending: alloc::collections::VecDeque::new(),
            host: atoll::hw::host::VcpuHost::new(bsp.apic_id),
        },
        lost: Vec::new(),
        start_problem: Vec::new(),
        stopping: Vec::new(),
        deadline_done: false,
        host,
        control: None,
        lives: control::no_lives(),
        zero_cycles: alloc::vec![0; MAX_PARTITIONS],
        host_restarts_seen: 0,
        channels: super::channels::Channels::default(),
    };
    if m.host.is_some() {
        match control::Control::new() {
            Ok(c) => m.control = Some(c),
            Err(e) => {
                log::error!("{e}: the host gets no control device");
                m.problems.push(e);
            }
        }
    }
    if let Err(e) = m.table.describe(configs) {
        m.problems.push(alloc::format!("module 'enclaves': {e}"));
        return (Vec::new(), None);
    }
    m.run();
    (
        m.table.reports(),
        m.control.as_ref().map(control::Control::report),
    )
}

/// Parses and checks the description against the machine.
fn describe(info: &BootInfo, problems: &mut Vec<String>) -> Option<Vec<EnclaveConfig>> {
    let module = info.module("enclaves")?;
    // SAFETY: GRUB loaded the module there; it is identity-mapped and excluded from the pool.
    let bytes = unsafe { module_bytes(module.range) };
    let Ok(text) = core::str::from_utf8(bytes) else {
        problems.push("module 'enclaves': not UTF-8 text".into());
        return None;
    };
    let online = super::online_cores();
    let names: Vec<&str> = info.modules().iter().map(|m| m.name()).collect();
    let ctx = atoll::partition::config::Context {
        cores: Some(&online),
        modules: Some(&names),
    };
    match atoll::partition::config::parse(text, &ctx) {
        Ok(c) => Some(c),
        Err(e) => {
            log::error!("enclave description rejected: {e}");
            problems.push(alloc::format!("module 'enclaves': {e}"));
            None
        }
    }
}

fn failed_report(c: &EnclaveConfig, state: &'static str, why: String) -> EnclaveReport {
    EnclaveReport {
        name: c.name.clone(),
        cores: c.cores.clone(),
        memory_mib: c.memory_mib,
        state,
        end_reason: (state == "ended").then_some("failed"),
        detail: why,
        ..Default::default()
    }
}

impl Manager<'_> {
    /// Starts the host: its application processors wait for its INIT and STARTUP, its boot
    /// vCPU is made here.
    fn start_host(&mut self) {
        let Some(host) = self.host.as_deref_mut() else {
            return;
        };
        let aps: Vec<u32> = host.run.cores[1..].to_vec();
        let mut problems = Vec::new();
        for core in aps {
            if let Err(e) = self.send(core, Command::Start(super::host::HOST_PARTITION)) {
                problems.push(alloc::format!("host core {core}: {e}"));
            }
        }
        let Some(host) = self.host.as_deref_mut() else {
            return;
        };
        if let Err(e) = host.start() {
            problems.push(alloc::format!("host: {e}"));
            host.end = Some(atoll::hw::host_run::HostStop::Failed(e));
        }
        for p in problems {
            log::error!("{p}");
            self.problems.push(p);
        }
    }

    fn host_running(&self) -> bool {
        self.host.as_ref().is_some_and(|h| h.running())
    }

    fn run(&mut self) {
        self.start_host();
        loop {
            let mut progress = false;
            for id in self.table.ready_to_build() {
                self.build(id);
                progress = true;
            }
            // Enclaves on application processors first: the boot processor's own runs inline.
            let mut built = self.table.built_slots();
            built.sort_by_key(|&id| self.cores(id).contains(&self.bsp.apic_id));
            for id in built {
                progress |= self.try_start(id);
            }
            if !self.deadline_done && machine_deadline().is_some_and(|d| tsc::micros() >= d) {
                self.deadline_done = true;
                self.stop_everything();
                progress = true;
            }
            for id in self.table.ids_in(SlotState::Running) {
                progress |= self.try_collect(id);
            }
            progress |= self.serve_control();
            super::iommu::poll();
            if self.host.is_some() && !self.host_running() {
                // Nobody can finish loading an enclave once the host has ended for good.
                progress |= self.drop_loading();
            }
            let restarts = self.host.as_ref().map_or(0, |h| h.restarts);
            if restarts != self.host_restarts_seen {
                self.host_restarts_seen = restarts;
                self.control_after_restart();
                progress = true;
            }
            if self.table.all_done() && !self.host_running() {
                return;
            }
            // A guest that never ends is for the harness's timeout to catch.
            if !progress {
                self.input.forward();
                match self.host.as_deref_mut() {
                    Some(h) if h.running() => h.run_slice(),
                    _ => hw::idle_wait_us(10_000),
                }
            }
        }
    }

    fn config(&self, id: PartitionId) -> EnclaveConfig {
        self.table
            .get(id)
            .and_then(|s| s.config().cloned())
            .unwrap_or_else(|| EnclaveConfig {
                name: String::new(),
                cores: Vec::new(),
                memory_mib: 0,
                image: String::new(),
                entry: EntryMode::Long64,
                initrd: None,
                serial_input: false,
                cmdline: String::new(),
                io_unknown: atoll::partition::config::IoPolicy::Ignore,
                after: None,
                devices: Vec::new(),
                vf: Vec::new(),
                virtio: Vec::new(),
            })
    }

    fn cores(&self, id: PartitionId) -> Vec<u32> {
        self.table
            .get(id)
            .and_then(|s| s.config().map(|c| c.cores.clone()))
            .unwrap_or_default()
    }

    fn fail(&mut self, id: PartitionId, report: EnclaveReport) {
        // Its functions back first (DMA blocked, reset), before its RAM goes.
        for p in super::passthrough::release(id, self.host.as_deref_mut()) {
            self.problems.push(alloc::format!("partition {id}: {p}"));
        }
        for p in self.channels.release(id, self.host.as_deref_mut(), false) {
            self.problems.push(alloc::format!("partition {id}: {p}"));
        }
        match self.table.failed(id, report) {
            Ok(Some(built)) => {
                if let Some(h) = self.host.as_deref_mut() {
                    h.note_enclave_ram(built.spec.ram, false);
                }
                if let Err(e) = built.tables.destroy() {
                    self.problems.push(alloc::format!("partition {id}: {e}"));
                }
            }
            Ok(None) => {}
            Err(e) => log::error!("partition table: {e}"),
        }
    }

    /// Builds enclave `id`: RAM, image, second-stage tables.
    fn build(&mut self, id: PartitionId) {
        let c = self.config(id);
        let bsp = self.bsp;
        if !(bsp.vmx && bsp.ept || bsp.svm && bsp.npt) {
            let why = "enclaves need VMX with EPT or SVM with nested paging".into();
            self.fail(id, failed_report(&c, "ended", why));
            return;
        }
        if let Err(e) = super::iommu::check_devices(&c) {
            self.fail(
                id,
                failed_report(&c, "ended", alloc::string::ToString::to_string(&e)),
            );
            return;
        }
        // A run-time enclave's files are staged; a boot-time one's are modules (the
        // description was checked against the module names, so the image exists).
        let staged = self.control.as_ref().and_then(|ctl| ctl.files(id));
        let (image, initrd) = match staged {
            Some(files) => files,
            None => {
                let Some(image) = self.info.module(&c.image) else {
                    self.fail(id, failed_report(&c, "ended", "no image module".into()));
                    return;
                };
                // SAFETY: as for the description module.
                let image = unsafe { module_bytes(image.range) };
                let initrd = c
                    .initrd
                    .as_deref()
                    .and_then(|n| self.info.module(n))
                    // SAFETY: as for the description module.
                    .map(|m| unsafe { module_bytes(m.range) });
                (image, initrd)
            }
        };
        let linux = c.entry == EntryMode::Linux;
        // Linux reads the TSC frequency from CPUID 0x15/0x16 on Intel only; elsewhere it is
        // told with a kernel parameter (see atoll::run::vplat).
        let extra = if linux && !bsp.intel {
            alloc::format!("tsc_early_khz={}", tsc::hz() / 1000)
        } else {
            String::new()
        };
        // 1 GiB second-stage pages where the CPU has them (EPT capability, or Page1GB for NPT).
        let npt_1g = core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 26) != 0;
        let max_page = |big: bool| {
            if big {
                ept::PageSize::Size1G
            } else {
                ept::PageSize::Size2M
            }
        };
        let made = if bsp.vmx {
            Enclave::<_, ept::EptFormat>::create(
                c.clone(),
                image,
                initrd,
                &extra,
                &FRAMES,
                Identity,
                max_page(bsp.ept_1g),
            )
            .map(|e| {
                let stage = SecondStage::Ept(e.ept.eptp(false));
                (e.ram, e.boot, stage, e.ept.table_pages(), Tables::Ept(e))
            })
        } else {
            Enclave::<_, ept::NptFormat>::create(
                c.clone(),
                image,
                initrd,
                &extra,
                &FRAMES,
                Identity,
                max_page(npt_1g),
            )
            .map(|e| {
                let stage = SecondStage::Npt(e.ept.nested_cr3());
                (e.ram, e.boot, stage, e.ept.table_pages(), Tables::Npt(e))
            })
        };
        let (ram, boot, second_stage, table_pages, mut tables) = match made {
            Ok(m) => m,
            Err(err) => {
                log::error!("enclave '{}' cannot be built: {err}", c.name);
                self.fail(
                    id,
                    failed_report(&c, "ended", alloc::format!("cannot be built: {err}")),
                );
                return;
            }
        };
        log::info!(
            "enclave '{}': {} MiB at {ram}, {table_pages} second-stage table pages, entry {:#x}",
            c.name,
            c.memory_mib,
            boot.rip
        );
        let platform = linux.then(|| {
            let shared = atoll::run::vplat::Shared::new(&c.name, &c.cores, tsc::hz());
            if let Some(Some((secs, at))) = WALL_CLOCK.get() {
                shared.set_wall_clock(*secs, *at);
            }
            Arc::new(shared)
        });
        if c.has_devices() {
            let assigned = match (&platform, super::passthrough::functions_of(&c)) {
                (_, Err(e)) => Err(e),
                (Some(shared), Ok(devices)) => super::passthrough::assign(
                    id,
                    &c.name,
                    &devices,
                    &c.cores,
                    ram,
                    shared,
                    self.host.as_deref_mut(),
                    &mut |gpa, hpa, len| tables.map_mmio(gpa, hpa, len),
                ),
                (None, Ok(_)) => {
                    Err("devices need entry = \"linux\" (the virtual platform's PCI bus)".into())
                }
            };
            if let Err(e) = assigned {
                let e = alloc::format!("{}{e}", control::DEVICES_PREFIX);
                log::error!("enclave '{}': {e}", c.name);
                // The tables go with the slot (built later than this: destroyed here).
                if let Err(e) = tables.destroy() {
                    self.problems.push(alloc::format!("partition {id}: {e}"));
                }
                self.fail(id, failed_report(&c, "ended", e));
                return;
            }
        }
        if let Some(shared) = platform.as_ref().filter(|_| !c.virtio.is_empty()) {
            if let Err(e) = self
                .channels
                .attach(id, &c, shared, self.host.as_deref_mut())
            {
                let e = alloc::format!("{}{e}", control::DEVICES_PREFIX);
                log::error!("enclave '{}': {e}", c.name);
                if let Err(e) = tables.destroy() {
                    self.problems.push(alloc::format!("partition {id}: {e}"));
                }
                self.fail(id, failed_report(&c, "ended", e));
                return;
            }
        }
        if c.serial_input {
            self.input.target = platform.clone();
        }
        let spec = Arc::new(RunSpec {
            config: c,
            ram,
            boot,
            second_stage,
            // VPID/ASID 0 is the host's.
            tag: id + 1,
            platform,
            live: Arc::new(atoll::run::live::Live::default()),
        });
        self.lives[usize::from(id)] = Some(control::LiveRef {
            live: spec.live.clone(),
            platform: spec.platform.clone(),
        });
        if let Some(h) = self.host.as_deref_mut() {
            h.note_enclave_ram(ram, true);
        }
        if let Err(e) = self.table.built(id, ram, Built { tables, spec }) {
            log::error!("partition table: {e}");
        }
        if let Some(s) = self.table.get(id).filter(|s| !s.reused_from().is_empty()) {
            log::info!(
                "enclave '{}' reuses the RAM of {:?}",
                self.config(id).name,
                s.reused_from()
            );
        }
    }

    /// The machine's deadline passed: every running enclave's cores are told to stop (a kick,
    /// then an NMI for a core that does not answer: both make a running guest exit whatever
    /// its interrupt flag), and enclaves not started yet will not be.
    fn stop_everything(&mut self) {
        log::info!("the machine's deadline passed: stopping every enclave still running");
        if let Some(h) = self.host.as_deref_mut() {
            h.stop();
        }
        for id in self.table.ids_in(SlotState::Running) {
            let c = self.config(id);
            let running: Vec<u32> = c
                .cores
                .iter()
                .copied()
                .filter(|core| phase_of(*core) == Some(Phase::Running(id)))
                .filter(|core| !self.lost.contains(core))
                .collect();
            if !self.stopping.contains(&id) {
                self.stopping.push(id);
            }
            for core in running {
                if let Err(e) = self.send(core, Command::Stop) {
                    log::error!("enclave '{}': {e}", c.name);
                    self.problems
                        .push(alloc::format!("enclave '{}': {e}", c.name));
                    self.lost.push(core);
                }
            }
        }
        let waiting: Vec<PartitionId> = self
            .table
            .built_slots()
            .into_iter()
            .chain(self.table.ids_in(SlotState::Waiting))
            .collect();
        for id in waiting {
            let c = self.config(id);
            let why = "not started: the machine's deadline (stop_after_ms) passed first".into();
            self.fail(id, failed_report(&c, "ended", why));
        }
    }

    /// Posts `cmd` to the core with `apic_id` and waits for its answer. The boot processor
    /// serves its own mailbox right here.
    fn send(&mut self, apic_id: u32, cmd: Command) -> Result<Ack, String> {
        let slot = slot_of(apic_id)
            .ok_or_else(|| alloc::format!("core {apic_id} is not in the core table"))?;
        let block = &PER_CORE[slot];
        let ticket = block
            .mailbox
            .post(cmd)
            .map_err(|_| alloc::format!("core {apic_id} has not answered its previous command"))?;
        if apic_id == self.bsp.apic_id {
            block.serve(&mut TargetCore {
                slot,
                apic_id,
                inline: true,
            });
        } else {
            hw::apic::send_fixed(apic_id, atoll::run::vplat::KICK_VECTOR);
        }
        let start = tsc::micros();
        let deadline = start.saturating_add(ACK_TIMEOUT_US);
        if cmd == Command::Stop && apic_id != self.bsp.apic_id {
            // A kick makes a running guest exit; should the core still not answer (a vCPU
            // atoll cannot reach by interrupt), an NMI follows — it exits the guest on both
            // backends whatever the guest masked.
            let first = start.saturating_add(STOP_NMI_AFTER_US);
            let waited = block
                .mailbox
                .wait(ticket, &mut ManagerWaiter(&mut self.input), first);
            if let Ok(a) = waited {
                return Ok(a);
            }
            log::warn!("core {apic_id} did not answer Stop after its kick: sending NMIs");
            // An NMI every STOP_NMI_AFTER_US until it answers: one that reaches the core
            // between an exit and the next entry goes to atoll's own handler, not to an exit,
            // and must not be the last one (bounded by the acknowledgement deadline).
            let mut next = tsc::micros();
            while next < deadline {
                hw::apic::send_nmi(apic_id);
                next = next.saturating_add(STOP_NMI_AFTER_US).min(deadline);
                if let Ok(a) = block
                    .mailbox
                    .wait(ticket, &mut ManagerWaiter(&mut self.input), next)
                {
                    return Ok(a);
                }
            }
        }
        block
            .mailbox
            .wait(ticket, &mut ManagerWaiter(&mut self.input), deadline)
            .map_err(|_| {
                alloc::format!(
                    "core {apic_id} did not acknowledge {cmd:?} within {} ms",
                    ACK_TIMEOUT_US / 1000
                )
            })
    }

    /// Starts enclave `id` if its cores are parked. Returns whether anything changed.
    fn try_start(&mut self, id: PartitionId) -> bool {
        let c = self.config(id);
        if !c.cores.iter().all(|&core| CORES.is_online(core)) {
            let why = "its core is not online".into();
            self.fail(id, failed_report(&c, "not_started", why));
            return true;
        }
        if let Some(core) = c.cores.iter().find(|&core| self.lost.contains(core)) {
            let why = alloc::format!("its core {core} was lost earlier in the run");
            self.fail(id, failed_report(&c, "not_started", why));
            return true;
        }
        if !c
            .cores
            .iter()
            .all(|&core| phase_of(core) == Some(Phase::Parked))
        {
            return false;
        }
        let Some(spec) = self
            .table
            .get(id)
            .and_then(|s| s.built())
            .map(|b| b.spec.clone())
        else {
            return false;
        };
        *REPORTS[usize::from(id)].lock() = None;
        *RUNS[usize::from(id)].lock() = Some(spec);
        if let Err(e) = self.table.running(id) {
            log::error!("partition table: {e}");
            return false;
        }
        if let Some(l) = &self.lives[usize::from(id)] {
            l.live.started(tsc::now());
        }
        let mut order = c.cores.clone();
        order.sort_by_key(|&core| core == self.bsp.apic_id);
        let mut started = Vec::new();
        for core in order {
            match self.send(core, Command::Start(id)) {
                Ok(Ack::Done) => started.push(core),
                answer => {
                    let why = match answer {
                        Ok(a) => alloc::format!("core {core} answered Start with {a:?}"),
                        Err(e) => {
                            self.lost.push(core);
                            e
                        }
                    };
                    log::error!("enclave '{}': {why}", c.name);
                    self.problems
                        .push(alloc::format!("enclave '{}': {why}", c.name));
                    self.start_problem.push((id, why));
                    // The cores that did start stop, so the enclave ends and is collected.
                    for &s in &started {
                        if let Err(e) = self.send(s, Command::Stop) {
                            self.lost.push(s);
                            self.problems.push(e);
                        }
                    }
                    break;
                }
            }
        }
        true
    }

    /// Collects enclave `id` if all its cores report it ended. Returns whether it did.
    fn try_collect(&mut self, id: PartitionId) -> bool {
        let c = self.config(id);
        let ended = |core: &u32| matches!(phase_of(*core), Some(Phase::Ended(p, _)) if p == id);
        let lost = |core: &u32| self.lost.contains(core);
        if !c.cores.iter().all(|core| ended(core) || lost(core)) {
            // Once one core reports the enclave ended, the others are told to stop (a vCPU
            // that ignores its enclave's end would otherwise hold its core for good); each
            // acknowledges when its vCPU has stopped.
            if !c.cores.iter().any(ended) {
                return false;
            }
            let running: Vec<u32> = c
                .cores
                .iter()
                .copied()
                .filter(|core| phase_of(*core) == Some(Phase::Running(id)) && !lost(core))
                .collect();
            if running.is_empty() || self.stopping.contains(&id) {
                return false;
            }
            self.stopping.push(id);
            for core in running {
                match self.send(core, Command::Stop) {
                    Ok(_) => {}
                    Err(e) => {
                        log::error!("enclave '{}': {e}", c.name);
                        self.problems
                            .push(alloc::format!("enclave '{}': {e}", c.name));
                        self.lost.push(core);
                    }
                }
            }
            return true;
        }
        let report = REPORTS[usize::from(id)].lock().take().unwrap_or_else(|| {
            let why = self
                .start_problem
                .iter()
                .find(|(p, _)| *p == id)
                .map_or_else(|| "it ended without a report".into(), |(_, w)| w.clone());
            failed_report(&c, "ended", why)
        });
        if let Err(e) = self.table.ended(id, report) {
            log::error!("partition table: {e}");
            return false;
        }
        if let Some(l) = &self.lives[usize::from(id)] {
            l.live.ended(tsc::now());
        }
        let mut failures = Vec::new();
        for &core in &c.cores {
            if self.lost.contains(&core) {
                failures.push(alloc::format!("core {core} was lost"));
                continue;
            }
            match self.send(core, Command::Reclaim) {
                Ok(Ack::Done) => {}
                Ok(a) => {
                    self.lost.push(core);
                    failures.push(alloc::format!("core {core} answered Reclaim with {a:?}"));
                }
                Err(e) => {
                    self.lost.push(core);
                    failures.push(e);
                }
            }
        }
        *RUNS[usize::from(id)].lock() = None;
        if c.serial_input {
            self.input.target = None;
        }
        if failures.is_empty() {
            // Its functions back first (DMA blocked, reset), before its RAM is zeroed.
            for p in super::passthrough::release(id, self.host.as_deref_mut()) {
                log::error!("enclave '{}': {p}", c.name);
                self.problems
                    .push(alloc::format!("enclave '{}': {p}", c.name));
            }
            for p in self.channels.release(id, self.host.as_deref_mut(), false) {
                log::error!("enclave '{}': {p}", c.name);
                self.problems
                    .push(alloc::format!("enclave '{}': {p}", c.name));
            }
            match self.table.reclaim(id) {
                Ok(built) => {
                    let ram = built.spec.ram;
                    if let Some(h) = self.host.as_deref_mut() {
                        h.note_enclave_ram(ram, false);
                    }
                    drop(built.spec);
                    let zeroing = tsc::now();
                    let destroyed = built.tables.destroy();
                    self.zero_cycles[usize::from(id)] = tsc::now().saturating_sub(zeroing);
                    if let Err(e) = destroyed {
                        log::error!("enclave '{}': returning its RAM: {e}", c.name);
                        self.problems.push(alloc::format!(
                            "enclave '{}': returning its RAM: {e}",
                            c.name
                        ));
                    }
                    log::info!(
                        "enclave '{}' reclaimed: cores {:?} parked, RAM {ram} zeroed and back in the pool",
                        c.name,
                        c.cores
                    );
                }
                Err(e) => log::error!("partition table: {e}"),
            }
        } else {
            // Its functions stop DMA into the kept memory; they stay the enclave's.
            super::passthrough::block(id, self.host.as_deref_mut());
            let _ = self.channels.release(id, self.host.as_deref_mut(), true);
            let why = alloc::format!("memory kept (not reclaimed): {}", failures.join("; "));
            log::error!("enclave '{}': {why}", c.name);
            self.problems
                .push(alloc::format!("enclave '{}': {why}", c.name));
            if let Err(e) = self.table.keep(id, &why) {
                log::error!("partition table: {e}");
            }
        }
        true
    }
}

/// atoll's COM1 input on its way to an enclave's COM1 receiver (`serial_input = true`).
struct SerialInput {
    target: Option<Arc<atoll::run::vplat::Shared>>,
    /// Bytes read from COM1 that the guest's receive FIFO had no room for yet.
    pending: alloc::collections::VecDeque<u8>,
    host: atoll::hw::host::VcpuHost,
}

impl SerialInput {
    /// Reads what COM1 holds and hands the guest as much as its FIFO takes; the rest waits
    /// here (bounded: past 4 KiB the oldest bytes are dropped, as a full line buffer would).
    fn forward(&mut self) {
        let Some(target) = &self.target else {
            return;
        };
        while let Some(b) = console::try_read_byte() {
            if self.pending.len() == 4096 {
                self.pending.pop_front();
            }
            self.pending.push_back(b);
        }
        if self.pending.is_empty() {
            return;
        }
        let (front, _) = self.pending.as_slices();
        let chunk: Vec<u8> = front.iter().copied().take(16).collect();
        let taken = target.uart_receive(&chunk, &mut self.host);
        self.pending.drain(..taken);
    }
}
