//! Running the root partition (the host's Linux) on its cores.
//!
//! The host's boot processor runs inside the manager on atoll's boot processor, in slices
//! ([`HostVcpuRun::run_slice`]): the vCPU is entered until an exit past the slice's end (the host's
//! own timer and interrupt EOIs make exits often enough), so the manager gets to collect
//! enclaves, pass serial input on and act on the deadline between slices. Each of the host's
//! other cores serves [`serve_ap`] for good: it waits (HLT with interrupts off; atoll's NMI
//! wakes it) for the host's INIT and STARTUP, which the exit handler emulates for the host's own
//! cores ([`crate::run::host`]), runs its vCPU from the STARTUP vector, and goes back to
//! waiting when the host sends it INIT again (CPU hotplug) or the host is restarted.
//!
//! A stop of the whole host (its reset, power-off or triple fault, or atoll's deadline) is
//! requested by whichever core sees it ([`HostRun::request_stop`]): the other host cores get an
//! NMI, leave the guest at its exit and wait; the manager restarts the host or lets it go.

use super::enclave_run::CoreVirt;
use super::enclave_run::SecondStage;
use super::host::EnclaveConsole;
use super::host_ram::HostRam;
use super::svm_backend::SvmVcpu;
use super::vmx_backend::VmxVcpu;
use super::{apic, tsc};
use crate::partition::loader::BootState;
use crate::run::host::{HostAction, HostHw, HostShared, HostVcpu};
use crate::run::host_ipi::Icr;
use crate::run::host_reset::ResetSource;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use atoll_vcpu::{Exit, Vcpu};
use core::ops::RangeInclusive;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use spin::Mutex;

/// Why the host stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostStop {
    /// It asked for a reset, or triple-faulted: atoll restarts it.
    Reset(ResetSource),
    /// It asked for S5.
    PowerOff,
    /// The machine's deadline passed.
    Deadline,
    /// atoll could not run it (the text says why).
    Failed(String),
}

impl HostStop {
    /// The summary's `end_reason`.
    pub fn name(&self) -> &'static str {
        match self {
            HostStop::Reset(_) => "reset",
            HostStop::PowerOff => "power_off",
            HostStop::Deadline => "stopped",
            HostStop::Failed(_) => "failed",
        }
    }
}

impl core::fmt::Display for HostStop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HostStop::Reset(s) => write!(f, "the host reset ({s:?})"),
            HostStop::PowerOff => write!(f, "the host powered off"),
            HostStop::Deadline => write!(f, "stopped at the machine's deadline"),
            HostStop::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// What the host's cores run, and the state they share with the manager.
pub struct HostRun {
    /// The host's cores by APIC id; the first boots.
    pub cores: Vec<u32>,
    /// Its second-stage tables.
    pub second_stage: SecondStage,
    /// Its ASID / VPID.
    pub tag: u16,
    /// Its RAM.
    pub ram: Arc<HostRam>,
    /// Its exit-handling state.
    pub shared: Arc<HostShared>,
    /// Ports its vCPUs intercept.
    pub ports: Vec<RangeInclusive<u16>>,
    /// MSRs its vCPUs reach directly.
    pub passthrough_msrs: Vec<u32>,
    /// Whether atoll's COM1 input goes to the host.
    pub serial_input: bool,
    /// Bumped at every restart: a waiting core forgets an INIT of the host before.
    generation: AtomicU32,
    /// Set while a stop is requested (until the manager restarts the host).
    stopping: AtomicBool,
    /// The first stop's reason.
    reason: Mutex<Option<HostStop>>,
    /// Per host vCPU: in the guest (or about to be).
    running: Vec<AtomicBool>,
    /// Per host vCPU: atoll sent it an NMI (a signal to look at its mailbox and the stop
    /// flag). An NMI exit without it is the host's own NMI, which the vCPU gets back.
    signalled: Vec<AtomicBool>,
    /// Per host vCPU: atoll asks for its core ([`HostRun::ask_release`]) and the core answers
    /// ([`release`] states).
    release: Vec<core::sync::atomic::AtomicU8>,
    /// Bumped when the host's second-stage tables change (the control device's BARs moved):
    /// every host vCPU drops its cached translations before its next entry.
    tables_generation: AtomicU32,
    /// Per host vCPU: the last generation of the tables it flushed for.
    tables_flushed: Vec<AtomicU32>,
    /// What the host reported on its console (`guest_check`, `guest_exit_status`) since its
    /// last start.
    pub results: Mutex<atoll_devices::bounded::ReportStore>,
    /// TSC at its last start, and at its first `atoll-init:` line after it (0: not yet).
    pub started_at: core::sync::atomic::AtomicU64,
    pub init_at: core::sync::atomic::AtomicU64,
    /// Bytes of the host's console lines dropped (its queue full while the port was busy).
    pub console_dropped: core::sync::atomic::AtomicU64,
    /// Exits by kind, over every boot.
    exits: [core::sync::atomic::AtomicU64; atoll_vcpu::ExitKind::ALL.len()],
    /// Its `ATOLL-IDLE` / `ATOLL-LOAD` windows since its last start.
    pub windows: Mutex<crate::run::host_windows::Windows>,
}

impl HostRun {
    /// The host over `cores`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cores: Vec<u32>,
        second_stage: SecondStage,
        tag: u16,
        ram: Arc<HostRam>,
        shared: Arc<HostShared>,
        ports: Vec<RangeInclusive<u16>>,
        passthrough_msrs: Vec<u32>,
        serial_input: bool,
    ) -> Self {
        let running_len = cores.len();
        let running = cores.iter().map(|_| AtomicBool::new(false)).collect();
        let signalled = cores.iter().map(|_| AtomicBool::new(false)).collect();
        let release = cores
            .iter()
            .map(|_| core::sync::atomic::AtomicU8::new(release::NONE))
            .collect();
        Self {
            cores,
            second_stage,
            tag,
            ram,
            shared,
            ports,
            passthrough_msrs,
            serial_input,
            generation: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            running,
            signalled,
            release,
            tables_generation: AtomicU32::new(0),
            tables_flushed: (0..running_len).map(|_| AtomicU32::new(0)).collect(),
            results: Mutex::new(atoll_devices::bounded::ReportStore::new(
                atoll_devices::bounded::REPORT_BUDGET,
            )),
            started_at: core::sync::atomic::AtomicU64::new(0),
            init_at: core::sync::atomic::AtomicU64::new(0),
            console_dropped: core::sync::atomic::AtomicU64::new(0),
            exits: [const { core::sync::atomic::AtomicU64::new(0) };
                atoll_vcpu::ExitKind::ALL.len()],
            windows: Mutex::new(crate::run::host_windows::Windows::new()),
        }
    }

    /// Asks every host core to stop (the first reason is kept) and signals them.
    pub fn request_stop(&self, why: HostStop) {
        {
            let mut r = self.reason.lock();
            if r.is_none() {
                *r = Some(why);
            }
        }
        self.stopping.store(true, Ordering::Release);
        let me = apic::current_id();
        for (i, &id) in self.cores.iter().enumerate() {
            if id != me && self.running[i].load(Ordering::Acquire) {
                self.signalled[i].store(true, Ordering::Release);
                apic::send_nmi(id);
            }
        }
    }

    /// Whether a stop is requested.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Whether every host vCPU but the boot one has left the guest.
    pub fn aps_out(&self) -> bool {
        self.running[1..].iter().all(|r| !r.load(Ordering::Acquire))
    }

    /// The stop's reason, taken; the host may run again (a restart: waiting cores forget what
    /// the host before sent them).
    pub fn take_stop(&self) -> Option<HostStop> {
        let r = self.reason.lock().take();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.stopping.store(false, Ordering::Release);
        r
    }

    /// Exits by kind, as the summary shows them (kinds never seen left out).
    pub fn exit_counts(&self) -> serde_json::Map<String, serde_json::Value> {
        atoll_vcpu::ExitKind::ALL
            .iter()
            .map(|k| (k, self.exits[*k as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.name().to_string(), n.into()))
            .collect()
    }

    /// The TSC and the exits by kind now (no allocation: taken on the exit path).
    fn snapshot(&self) -> crate::run::host_windows::Snapshot {
        crate::run::host_windows::Snapshot {
            tsc: tsc::now(),
            exits: core::array::from_fn(|i| self.exits[i].load(Ordering::Relaxed)),
            ipis_sent: self.shared.counters.ipis_sent.load(Ordering::Relaxed),
        }
    }

    /// Forgets what the host before reported and notes the start (a new boot).
    pub fn note_start(&self) {
        *self.windows.lock() = crate::run::host_windows::Windows::new();
        *self.results.lock() =
            atoll_devices::bounded::ReportStore::new(atoll_devices::bounded::REPORT_BUDGET);
        self.started_at.store(tsc::now(), Ordering::Relaxed);
        self.init_at.store(0, Ordering::Relaxed);
    }

    /// The host's second-stage tables changed: every host vCPU flushes its translations
    /// before its next entry, and each is signalled so that it does so now.
    pub fn tables_changed(&self) {
        // SeqCst with the vCPUs' `running` store and generation load: neither side may see
        // the other's old value (store buffering), or a vCPU entering could miss the change
        // while the manager thinks it out of the guest.
        self.tables_generation.fetch_add(1, Ordering::SeqCst);
        self.signal_others();
    }

    /// Waits (at most `timeout_us`) until no host vCPU can still use a translation from before
    /// the last [`HostRun::tables_changed`]: each has flushed since, or is out of the guest (it
    /// flushes before its next entry). False on time-out.
    pub fn wait_tables_flushed(&self, timeout_us: u64) -> bool {
        let want = self.tables_generation.load(Ordering::SeqCst);
        let deadline = tsc::micros().saturating_add(timeout_us);
        loop {
            let all = self.tables_flushed.iter().enumerate().all(|(i, f)| {
                f.load(Ordering::SeqCst) == want || !self.running[i].load(Ordering::SeqCst)
            });
            if all {
                return true;
            }
            if tsc::micros() > deadline {
                return false;
            }
            core::hint::spin_loop();
        }
    }

    fn signal_others(&self) {
        let me = apic::current_id();
        for (i, &id) in self.cores.iter().enumerate() {
            if id != me && self.running[i].load(Ordering::Acquire) {
                self.signal(i);
            }
        }
    }

    /// Asks host vCPU `index` (an application processor) for its core: it answers
    /// [`release::GRANTED`] if the host has it offline (waiting for INIT/STARTUP, or parked in
    /// Linux's offline loop: [`crate::run::host::parked_in_play_dead`]) and leaves the host,
    /// or [`release::REFUSED`] and runs on. False for the boot vCPU or no such vCPU.
    pub fn ask_release(&self, index: usize) -> bool {
        let Some(r) = self.release.get(index).filter(|_| index > 0) else {
            return false;
        };
        r.store(release::ASKED, Ordering::Release);
        self.signal(index);
        true
    }

    /// The answer of host vCPU `index` to [`HostRun::ask_release`] ([`release`] states).
    pub fn release_state(&self, index: usize) -> u8 {
        self.release
            .get(index)
            .map_or(release::NONE, |r| r.load(Ordering::Acquire))
    }

    /// Withdraws the request for host vCPU `index`, or takes its answer: returns what the core
    /// answered ([`release::GRANTED`] or [`release::REFUSED`]; [`release::ASKED`] if it had
    /// not, and now will not), leaving no request behind. One atomic step, so a grant racing
    /// the withdrawal is never lost.
    pub fn finish_release(&self, index: usize) -> u8 {
        let Some(r) = self.release.get(index) else {
            return release::NONE;
        };
        match r.compare_exchange(
            release::ASKED,
            release::NONE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => release::ASKED,
            Err(answer) => {
                r.store(release::NONE, Ordering::Release);
                answer
            }
        }
    }

    /// Signals host vCPU `index` by NMI, marked as atoll's (so it is not taken for the host's
    /// own NMI).
    pub fn signal(&self, index: usize) {
        if let (Some(&id), Some(flag)) = (self.cores.get(index), self.signalled.get(index)) {
            flag.store(true, Ordering::Release);
            apic::send_nmi(id);
        }
    }
}

/// The machine as the host's exit handler reaches it.
pub struct TargetHw;

/// The one [`TargetHw`].
pub static TARGET_HW: TargetHw = TargetHw;

const XAPIC_BASE: usize = 0xfee0_0000;
const XAPIC_ICR_LOW: usize = 0x300;
const XAPIC_ICR_HIGH: usize = 0x310;

impl HostHw for TargetHw {
    fn ioapic_mmio(&self, base: u64, offset: u32, write: Option<u32>) -> u32 {
        super::apic::ioapic_mmio(base, offset, write)
    }

    fn kick_core(&self, apic_id: u32) {
        apic::send_fixed(apic_id, crate::run::vplat::KICK_VECTOR);
    }

    fn interrupt_core(&self, apic_id: u32, vector: u8) {
        apic::send_fixed(apic_id, vector);
    }

    fn device_mmio(&self, address: u64, size: u8, write: Option<u64>) -> u64 {
        if address.saturating_add(8) > super::IDENTITY_MAPPED_END
            || !matches!(size, 1 | 2 | 4 | 8)
            || !address.is_multiple_of(u64::from(size))
        {
            return u64::MAX;
        }
        let p = address as *mut u8;
        // The address is device memory the caller found trapped for the host (an ECAM page of
        // the firmware's window, an MSI-X table's page of a BAR), identity-mapped uncacheable
        // for atoll below 4 GiB and naturally aligned: one access of the width the host made.
        match (size, write) {
            (1, Some(v)) => {
                // SAFETY: see above.
                unsafe { core::ptr::write_volatile(p, v as u8) }
            }
            (2, Some(v)) => {
                // SAFETY: see above.
                unsafe { core::ptr::write_volatile(p.cast::<u16>(), v as u16) }
            }
            (4, Some(v)) => {
                // SAFETY: see above.
                unsafe { core::ptr::write_volatile(p.cast::<u32>(), v as u32) }
            }
            (_, Some(v)) => {
                // SAFETY: see above.
                unsafe { core::ptr::write_volatile(p.cast::<u64>(), v) }
            }
            (1, None) => {
                // SAFETY: see above.
                return u64::from(unsafe { core::ptr::read_volatile(p) });
            }
            (2, None) => {
                // SAFETY: see above.
                return u64::from(unsafe { core::ptr::read_volatile(p.cast::<u16>()) });
            }
            (4, None) => {
                // SAFETY: see above.
                return u64::from(unsafe { core::ptr::read_volatile(p.cast::<u32>()) });
            }
            (_, None) => {
                // SAFETY: see above.
                return unsafe { core::ptr::read_volatile(p.cast::<u64>()) };
            }
        }
        0
    }

    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn rdmsr(&self, msr: u32) -> Option<u64> {
        // A #GP (an MSR this processor lacks) comes back as `Err` through the recovery point.
        super::contain::contained(|| {
            // SAFETY: the policy only reads MSRs it allows the host to read; one that does not
            // exist raises #GP, which the containment turns into `None`.
            unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
        })
        .ok()
    }

    fn wrmsr(&self, msr: u32, value: u64) -> bool {
        super::contain::contained(|| {
            // SAFETY: the policy only writes MSRs whose effect stays with the host's own core
            // (docs/security.md lists them); a refused value raises #GP, caught here.
            unsafe { x86_64::registers::model_specific::Msr::new(msr).write(value) }
        })
        .is_ok()
    }

    fn port_in(&self, port: u16, size: u8) -> u32 {
        use x86_64::instructions::port::Port;
        // SAFETY (all three): the policy forwards only reads of ports the host owns (the reset
        // and sleep registers' neighbours, read back unchanged); a read has no effect on atoll.
        match size {
            // SAFETY: as above.
            1 => u32::from(unsafe { Port::<u8>::new(port).read() }),
            // SAFETY: as above.
            2 => u32::from(unsafe { Port::<u16>::new(port).read() }),
            // SAFETY: as above.
            _ => unsafe { Port::<u32>::new(port).read() },
        }
    }

    fn port_out(&self, port: u16, size: u8, value: u32) {
        use x86_64::instructions::port::Port;
        // The policy forwards only writes the reset detector found harmless (not a reset or
        // power-off) to ports the host owns.
        match size {
            // SAFETY: as above.
            1 => unsafe { Port::<u8>::new(port).write(value as u8) },
            // SAFETY: as above.
            2 => unsafe { Port::<u16>::new(port).write(value as u16) },
            // SAFETY: as above.
            _ => unsafe { Port::<u32>::new(port).write(value) },
        }
    }

    fn apic_read(&self, offset: u32) -> u32 {
        let at = XAPIC_BASE + (offset as usize & 0xff0);
        // SAFETY: the xAPIC page is identity-mapped (uncacheable) in atoll's tables; a 32-bit
        // aligned read of a register of this core's own APIC.
        unsafe { core::ptr::read_volatile(at as *const u32) }
    }

    fn apic_write(&self, offset: u32, value: u32) {
        let at = XAPIC_BASE + (offset as usize & 0xff0);
        // SAFETY: as above; the policy forwards only writes to this core's own APIC registers
        // other than the ICR (which goes through `send_ipi`).
        unsafe { core::ptr::write_volatile(at as *mut u32, value) }
    }

    fn send_ipi(&self, icr: Icr) {
        match apic::LocalApic::current() {
            apic::LocalApic::XApic(_) => {
                // SAFETY: this core's xAPIC ICR high (identity-mapped, uncacheable): it only
                // sets the destination of the IPI the filter allowed.
                unsafe {
                    core::ptr::write_volatile(
                        (XAPIC_BASE + XAPIC_ICR_HIGH) as *mut u32,
                        icr.xapic_high(),
                    )
                };
                // SAFETY: its ICR low, as above: this write sends the allowed IPI.
                unsafe {
                    core::ptr::write_volatile((XAPIC_BASE + XAPIC_ICR_LOW) as *mut u32, icr.low())
                };
            }
            // SAFETY: x2APIC mode is on; the filter allowed this IPI.
            apic::LocalApic::X2Apic => unsafe {
                x86_64::registers::model_specific::Msr::new(0x830).write(icr.x2apic_value())
            },
        }
    }

    fn now_us(&self) -> u64 {
        tsc::micros()
    }

    fn xsetbv(&self, value: u64) {
        // SAFETY: the policy validated `value` against CPUID leaf 0xD; atoll's own code uses
        // no extended state, so the host's XCR0 may stay loaded.
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack));
        }
    }

    fn wbinvd(&self) {
        // SAFETY: write-back and invalidate: slow, never incorrect.
        unsafe { core::arch::asm!("wbinvd", options(nostack)) };
    }
}

/// The host's console: `[host]` lines, and the lines that report results filed.
struct HostConsole<'a> {
    inner: &'a mut EnclaveConsole,
    run: &'a HostRun,
}

impl crate::run::exits::Console for HostConsole<'_> {
    fn line(&mut self, name: &str, text: &str) {
        self.inner.line(name, text);
        if crate::run::vplat::capture_result(text, &self.run.results) {
            return;
        }
        if text.starts_with("atoll-init:") {
            let _ = self.run.init_at.compare_exchange(
                0,
                tsc::now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else if let Some((window, edge)) = crate::run::host_windows::marker(text) {
            let at = self.run.snapshot();
            self.run.windows.lock().mark(window, edge, at);
        }
    }
}

/// The states of a request for a host core ([`HostRun::ask_release`]).
pub mod release {
    /// No request.
    pub const NONE: u8 = 0;
    /// atoll asks; the core has not answered.
    pub const ASKED: u8 = 1;
    /// The core left the host: it is atoll's (parked once the manager reclaims it).
    pub const GRANTED: u8 = 2;
    /// The core is online in the host: it stays.
    pub const REFUSED: u8 = 3;
}

/// How a slice of a host vCPU's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Pause {
    /// The slice is over; the vCPU goes on at the next call.
    Slice,
    /// The host is stopping ([`HostRun::request_stop`]).
    Stopped,
    /// An INIT for this vCPU (an application processor only): back to waiting.
    Init,
    /// atoll asked for the core and the host has it offline: the vCPU is over.
    Released,
}

/// A host vCPU of either backend.
enum HostCpu {
    Svm(SvmVcpu),
    Vmx(VmxVcpu),
}

impl HostCpu {
    fn enter(&mut self) -> Result<Exit, String> {
        match self {
            HostCpu::Svm(v) => v.run().map_err(|e| e.to_string()),
            HostCpu::Vmx(v) => v.run().map_err(|e| e.to_string()),
        }
    }
}

/// One host vCPU on this core.
pub struct HostVcpuRun {
    vcpu: HostCpu,
    /// The host's own NMI, to be delivered to the vCPU at the next entry that can take it.
    nmi_pending: bool,
    /// The [`HostRun`] tables generation this vCPU's translations are current for.
    tables_seen: u32,
    me: HostVcpu,
    console: EnclaveConsole,
    /// Where the last look of an open release request found it parked
    /// ([`crate::run::host::confirm_parked`]).
    parked_at: Option<u64>,
}

impl HostVcpuRun {
    /// Builds host vCPU `index` from `boot` on this core.
    pub fn new(
        run: &HostRun,
        index: usize,
        core: &CoreVirt,
        boot: &BootState,
    ) -> Result<Self, String> {
        let vcpu = match (core, run.second_stage) {
            (CoreVirt::Svm(c), SecondStage::Npt(root)) => HostCpu::Svm(
                SvmVcpu::new_host(
                    c,
                    boot,
                    root,
                    u32::from(run.tag),
                    run.ram.clone(),
                    &run.ports,
                    &run.passthrough_msrs,
                )
                .map_err(|e| e.to_string())?,
            ),
            (CoreVirt::Vmx(c), SecondStage::Ept(eptp)) => HostCpu::Vmx(
                VmxVcpu::new_host(c, boot, eptp, run.tag, &run.ports, &run.passthrough_msrs)
                    .map_err(|e| e.to_string())?,
            ),
            _ => return Err("this core runs the other virtualization backend".into()),
        };
        Ok(Self {
            vcpu,
            nmi_pending: false,
            tables_seen: run.tables_generation.load(Ordering::Acquire),
            me: HostVcpu::new(index, run.cores.get(index).copied().unwrap_or(0)),
            console: EnclaveConsole::default(),
            parked_at: None,
        })
    }

    /// Runs the vCPU until `until` (TSC) has passed at an exit, the host stops, or (an
    /// application processor) an INIT arrives for it.
    pub fn run_slice(&mut self, run: &HostRun, until: Option<u64>) -> Pause {
        let index = self.me.index;
        run.running[index].store(true, Ordering::SeqCst);
        let pause = self.slice(run, until);
        run.running[index].store(false, Ordering::Release);
        pause
    }

    fn slice(&mut self, run: &HostRun, until: Option<u64>) -> Pause {
        let index = self.me.index;
        let mut mem: &HostRam = &run.ram;
        loop {
            // What a signal asks for is looked at here, before every entry. The mark is left
            // alone: only an NMI exit takes it (below). Clearing it here raced a signal whose
            // NMI was still in flight: the exit it caused then looked like the host's own NMI
            // and was handed to the host ("NMI received for unknown reason"). A mark left by
            // an NMI atoll's IDT took while this core was out of the guest is taken by the next
            // NMI exit, which at worst is a host NMI that atoll then keeps (docs/security.md).
            if run.stopping() {
                return Pause::Stopped;
            }
            if index > 0 && run.shared.init_pending(index) {
                return Pause::Init;
            }
            if index > 0 && run.release_state(index) == release::ASKED {
                // The offline test, and where it looked (for the record, and the second look).
                fn look(v: &impl Vcpu, mem: &HostRam) -> (bool, u64, u64) {
                    (
                        crate::run::host::parked_in_play_dead(v, &mem),
                        v.rip(),
                        v.rflags(),
                    )
                }
                let (offline, rip, rflags) = match &self.vcpu {
                    HostCpu::Svm(v) => look(v, mem),
                    HostCpu::Vmx(v) => look(v, mem),
                };
                match crate::run::host::confirm_parked(&mut self.parked_at, offline, rip) {
                    crate::run::host::Parked::Confirmed => {
                        log::info!(
                            "host: vCPU {index} parked (RIP {rip:#x}, RFLAGS {rflags:#x}, seen \
                             twice): released"
                        );
                        // serve_ap grants it (or refuses, should the request have been
                        // withdrawn).
                        return Pause::Released;
                    }
                    // Looked at again at the requester's next signal (it signals every
                    // millisecond while the request is open).
                    crate::run::host::Parked::Once => {}
                    crate::run::host::Parked::No => {
                        // Only an open request is answered: the manager may have withdrawn it.
                        let _ = run.release[index].compare_exchange(
                            release::ASKED,
                            release::REFUSED,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                    }
                }
            } else {
                self.parked_at = None;
            }
            let tables = run.tables_generation.load(Ordering::SeqCst);
            if tables != self.tables_seen {
                self.tables_seen = tables;
                // Recorded below once flushed (an error stops the vCPU: it never enters again).
                match (&mut self.vcpu, run.second_stage) {
                    (HostCpu::Svm(v), _) => v.flush_translations(),
                    (HostCpu::Vmx(_), SecondStage::Ept(eptp)) => {
                        if ept::invept::invept_single_context(eptp).is_err() {
                            run.request_stop(HostStop::Failed(alloc::format!(
                                "vCPU {index}: INVEPT failed after the host's tables changed"
                            )));
                            return Pause::Stopped;
                        }
                    }
                    (HostCpu::Vmx(_), _) => {}
                }
                if let Some(f) = run.tables_flushed.get(index) {
                    f.store(tables, Ordering::Release);
                }
            }
            if self.nmi_pending {
                self.nmi_pending = !match &mut self.vcpu {
                    HostCpu::Svm(v) => v.inject_nmi(),
                    HostCpu::Vmx(v) => v.inject_nmi(),
                };
            }
            let exit = match self.vcpu.enter() {
                Ok(e) => e,
                Err(e) => {
                    run.request_stop(HostStop::Failed(alloc::format!("vCPU {index}: {e}")));
                    return Pause::Stopped;
                }
            };
            run.exits[exit.kind() as usize].fetch_add(1, Ordering::Relaxed);
            if let Some(hook) = run.shared.exit_hook() {
                hook();
            }
            let com1 = matches!(
                exit,
                Exit::Io {
                    port: 0x3f8..=0x3ff,
                    ..
                }
            );
            if com1 && run.serial_input {
                // Bytes that reached atoll's COM1 go to the host's model before it reads it.
                let mut n = 0;
                while n < 16 {
                    let Some(b) = super::console::try_read_byte() else {
                        break;
                    };
                    run.shared.push_input(&[b]);
                    n += 1;
                }
            }
            if exit == Exit::Nmi && !run.signalled[index].swap(false, Ordering::AcqRel) {
                // Not atoll's: the host's own (an NMI IPI the filter let through, a platform
                // NMI). It goes back to the host, as NMI exiting took it away.
                self.nmi_pending = true;
                continue;
            }
            let mut console = HostConsole {
                inner: &mut self.console,
                run,
            };
            let action = match &mut self.vcpu {
                HostCpu::Svm(v) => crate::run::host::handle(
                    &exit,
                    v,
                    &mut mem,
                    &mut self.me,
                    &run.shared,
                    &TargetHw,
                    &mut console,
                ),
                HostCpu::Vmx(v) => crate::run::host::handle(
                    &exit,
                    v,
                    &mut mem,
                    &mut self.me,
                    &run.shared,
                    &TargetHw,
                    &mut console,
                ),
            };
            if com1 {
                super::console::host_uart_irq(run.shared.uart_irq_pending(), run.serial_input);
            }
            match action {
                HostAction::Resume => {}
                HostAction::Signal { index } => run.signal(index),
                HostAction::SignalMany { to } => {
                    for i in to.iter() {
                        run.signal(i);
                    }
                }
                HostAction::Reset(source) => {
                    log::info!("host vCPU {index}: reset requested ({source:?})");
                    run.request_stop(HostStop::Reset(source));
                }
                HostAction::PowerOff => {
                    log::info!("host vCPU {index}: power-off requested");
                    run.request_stop(HostStop::PowerOff);
                }
                HostAction::Fail(why) => {
                    log::error!("host vCPU {index}: {why}");
                    run.request_stop(HostStop::Failed(why));
                }
            }
            if run.stopping() {
                return Pause::Stopped;
            }
            // The control device needs the manager (a doorbell, a BAR moved): it runs on the
            // boot vCPU's core, between its slices.
            if index == 0 {
                if run.shared.take_manager_wanted() {
                    return Pause::Slice;
                }
            } else if run.shared.claim_manager_signal() {
                run.signal(0);
            }
            // A running processor ignores STARTUP (SDM Vol. 3A §9.4.4.1): only an INIT ends
            // this run; a stale STARTUP is dropped by the waiting loop.
            if index > 0 && run.shared.init_pending(index) {
                return Pause::Init;
            }
            if until.is_some_and(|u| tsc::now() >= u) {
                return Pause::Slice;
            }
        }
    }

    /// Prints what the host's vCPU left unprinted (its run is over) and adds what its queue
    /// dropped to the host's count.
    pub fn flush(&mut self, run: &HostRun) {
        self.console.flush();
        run.console_dropped
            .fetch_add(self.console.bytes_dropped(), Ordering::Relaxed);
    }
}

/// Waits with interrupts off until atoll's NMI (or a spurious wake-up).
fn wait_for_nmi() {
    // SAFETY: HLT with interrupts disabled: only an NMI (atoll's signal), SMI or INIT wakes the
    // core; the host's device interrupts stay pending in its APIC for its vCPU.
    unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
}

/// An application processor of the host: waits for the host's INIT and STARTUP and runs its
/// vCPU, until atoll asks for the core ([`HostRun::ask_release`]) while the host has it
/// offline. What the host sent the core before this call does not count (a core coming back
/// from an enclave starts like one the host never started).
pub fn serve_ap(run: &HostRun, index: usize, core: &CoreVirt) {
    super::give_core_to_host();
    let _ = run.shared.take_init(index);
    let _ = run.shared.take_sipi(index);
    let mut generation = run.generation.load(Ordering::Acquire);
    let mut initialized = false;
    loop {
        if run.release_state(index) == release::ASKED {
            // Waiting for INIT/STARTUP, or back from a vCPU parked in the offline loop — but
            // not while the host is bringing this CPU up (its INIT seen or a signal pending):
            // that CPU is being onlined.
            let busy = initialized || run.shared.has_signal(index);
            let own = run.cores.get(index).copied().unwrap_or(u32::MAX);
            if !busy {
                // Lent before it is granted: from here on no IPI of the host reaches it.
                run.shared.set_lent(own, true);
            }
            let answer = if busy {
                release::REFUSED
            } else {
                release::GRANTED
            };
            let taken = run.release[index]
                .compare_exchange(release::ASKED, answer, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if taken && answer == release::GRANTED {
                apic::reset_for_partition(false);
                super::take_core_back_from_host();
                return;
            }
            if !busy {
                // The request was withdrawn meanwhile: the core stays the host's.
                run.shared.set_lent(own, false);
            }
        }
        let g = run.generation.load(Ordering::Acquire);
        if g != generation {
            generation = g;
            initialized = false;
        }
        if run.stopping() {
            wait_for_nmi();
            continue;
        }
        if run.shared.take_init(index) {
            // What a real INIT does to the APIC, now: whatever the host sent this core while
            // it waited (or left armed) is gone before its next start.
            apic::reset_for_partition(false);
            initialized = true;
            // A STARTUP sent before this INIT was seen belongs to an earlier attempt.
            let _ = run.shared.take_sipi(index);
            continue;
        }
        match run.shared.take_sipi(index) {
            Some(vector) if initialized => {
                initialized = false;
                log::debug!("host vCPU {index} starts at {:#x}", u32::from(vector) << 12);
                let mut v = match HostVcpuRun::new(
                    run,
                    index,
                    core,
                    &super::enclave_run::startup_state(vector),
                ) {
                    Ok(v) => v,
                    Err(e) => {
                        run.request_stop(HostStop::Failed(alloc::format!("vCPU {index}: {e}")));
                        continue;
                    }
                };
                let _ = v.run_slice(run, None);
                v.flush(run);
                // Stopped or INIT'd: what a real INIT would clear of this core's APIC.
                apic::reset_for_partition(false);
            }
            _ => wait_for_nmi(),
        }
    }
}
