//! Running one enclave on the calling core: enable the core's virtualization (once per core,
//! VMX or SVM), build the vCPU, and loop entering the guest and handling its exits until it
//! ends. Everything touched here is this core's and this enclave's own (invariant 3): its vCPU,
//! its RAM, its [`EnclaveRun`].

use super::host::VcpuHost;
use super::host::{EnclaveConsole, ThisCore};
use super::svm_backend::{SvmCore, SvmError, SvmVcpu};
use super::vmx_backend::{CoreState, VmxError, VmxVcpu};
use crate::partition::config::EnclaveConfig;
use crate::partition::config::EntryMode;
use crate::partition::loader::BootState;
use crate::partition::loader::BootState as Boot;
use crate::run::exits::{self, Action, EnclaveRun, EndReason};
use crate::run::vplat::{self, Entry, Local, PlatformHost, Shared};
use crate::summary::{EnclaveReport, Violation};
use alloc::boxed::Box;
use alloc::string::{String, ToString};
use atoll_vcpu::{CpuidTable, Exit, ExitKind, GuestRam, Vcpu};
use boot::{HostPhysAddr, PhysRange};
use spin::Once;

/// The enclave's second-stage tables, as the backend needs them.
#[derive(Clone, Copy, Debug)]
pub enum SecondStage {
    /// VMX: the EPT pointer.
    Ept(ept::Eptp),
    /// SVM: the nested page tables' root (N_CR3).
    Npt(HostPhysAddr),
}

/// What a core needs to run an enclave (copied out of the enclave's construction).
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Its description.
    pub config: EnclaveConfig,
    /// Its RAM.
    pub ram: PhysRange,
    /// Its vCPU's start state.
    pub boot: BootState,
    /// Its second-stage tables.
    pub second_stage: SecondStage,
    /// VPID or ASID (enclave index + 1; 0 is the host's).
    pub tag: u16,
    /// A Linux enclave's virtual platform, shared by its vCPUs.
    pub platform: Option<alloc::sync::Arc<Shared>>,
    /// Its live counters and console tail (`atoll stats`, `atoll console`).
    pub live: alloc::sync::Arc<crate::run::live::Live>,
}

/// A core's virtualization state.
pub enum CoreVirt {
    /// VMX root operation with this core's GDT/TSS.
    Vmx(CoreState),
    /// SVM enabled, with its host save areas.
    Svm(SvmCore),
}

/// This core's virtualization state, made by the first enclave it runs. Written and read only by
/// the core that owns the slot.
pub struct CoreSlotVirt(Once<Result<CoreVirt, String>>);

impl CoreSlotVirt {
    /// An empty slot.
    pub const fn new() -> Self {
        Self(Once::new())
    }
}

impl Default for CoreSlotVirt {
    fn default() -> Self {
        Self::new()
    }
}

/// A backend's vCPU: the vendor-neutral operations plus entering the guest. Its typed error
/// becomes text only here, at the boundary (`EndReason::Failed`).
trait Backend: Vcpu {
    type Error: core::fmt::Display;
    /// Enters the guest until an exit for the caller: CPUID exits whose leaf `cpuid` answers
    /// are handled inside, each calling `counted` (the fast path, where the backend has one).
    fn enter(&mut self, cpuid: &CpuidTable, counted: impl FnMut()) -> Result<Exit, Self::Error>;
}

impl Backend for VmxVcpu {
    type Error = VmxError;
    fn enter(&mut self, cpuid: &CpuidTable, counted: impl FnMut()) -> Result<Exit, VmxError> {
        self.run_fast(cpuid, counted)
    }
}

impl Backend for SvmVcpu {
    type Error = SvmError;
    /// No fast path on SVM yet: without NRIP save (QEMU's model has none) the CPUID's length
    /// needs the decoder, which is the normal path's work.
    fn enter(&mut self, _cpuid: &CpuidTable, _counted: impl FnMut()) -> Result<Exit, SvmError> {
        self.run()
    }
}

fn run_loop(
    vcpu: &mut impl Backend,
    spec: &RunSpec,
    run: &mut EnclaveRun,
    console: &mut EnclaveConsole,
    stop: &dyn Fn() -> bool,
    stop_at: Option<u64>,
) -> EndReason {
    // A bare-metal guest may spin without a single exit: with a deadline, this core's APIC
    // timer makes sure there is one then (the stop check itself reads the clock).
    let arm = |d: u64| {
        let left = d.saturating_sub(super::tsc::now()).max(1);
        super::apic::timer_arm(crate::run::vplat::TIMER_VECTOR, left, super::tsc::hz());
    };
    if let Some(d) = stop_at {
        arm(d);
    }
    let reason = run_guest(
        vcpu,
        spec,
        run,
        console,
        stop,
        stop_at.map(|d| (d, &arm as &dyn Fn(u64))),
    );
    if stop_at.is_some() {
        super::apic::timer_stop();
    }
    reason
}

/// [`run_loop`]'s loop; `rearm` (with the deadline) arms the timer again after an exit that
/// did not stop the vCPU.
fn run_guest(
    vcpu: &mut impl Backend,
    spec: &RunSpec,
    run: &mut EnclaveRun,
    console: &mut EnclaveConsole,
    stop: &dyn Fn() -> bool,
    rearm: Option<(u64, &dyn Fn(u64))>,
) -> EndReason {
    log::info!(
        "enclave '{}' starts on this core ({} MiB at {})",
        spec.config.name,
        spec.config.memory_mib,
        spec.ram
    );
    let mut mem = guest_ram(spec);
    // The CPUID fast path's answers: the exit handler's, for the leaves that never change.
    let cpuid = Box::new(exits::fast_table(|leaf, sub| {
        exits::filtered_cpuid(&ThisCore, leaf, sub)
    }));
    spec.live.entered(super::tsc::now());
    loop {
        // A CPUID answered on the fast path is counted as the handler counts it.
        let counted = || {
            run.exits[ExitKind::Cpuid as usize] += 1;
            spec.live.exit(ExitKind::Cpuid);
        };
        let exit = match vcpu.enter(&cpuid, counted) {
            Ok(e) => e,
            Err(e) => return EndReason::Failed(e.to_string()),
        };
        if let Exit::ExternalInterrupt { vector: Some(_) } = exit {
            super::apic::eoi();
        }
        spec.live.exit(exit.kind());
        match exits::handle(exit, vcpu, &mut mem, run, &mut ThisCore, console) {
            Action::Resume => {}
            Action::Stop(reason) => return reason,
        }
        if stop() {
            return EndReason::Stopped {
                rip: Some(vcpu.rip()),
            };
        }
        if let Some((d, arm)) = rearm {
            arm(d);
        }
    }
}

/// The enclave's RAM, as its vCPUs' exit handlers reach it.
fn guest_ram(spec: &RunSpec) -> GuestRam {
    let base = core::ptr::NonNull::new(spec.ram.start.as_u64() as *mut u8)
        .expect("enclave RAM is never at physical 0 (the first MiB is not allocated)");
    // SAFETY: the enclave's RAM is identity-mapped, stays allocated to it while any of its vCPUs
    // runs, and atoll holds no reference to it: every access goes through `GuestRam`'s copies.
    unsafe { GuestRam::new(base, spec.ram.len() as usize) }
}

/// How a Linux vCPU's run ended.
enum VcpuEnd {
    /// The enclave ends (the first vCPU to stop gives the reason).
    Stop,
    /// An INIT arrived: back to waiting for STARTUP (application processors).
    Init,
}

/// Runs one vCPU of a Linux enclave until the enclave ends or an INIT resets it.
#[allow(clippy::too_many_arguments)]
fn platform_loop(
    vcpu: &mut impl Backend,
    spec: &RunSpec,
    shared: &Shared,
    local: &mut Local,
    host: &mut VcpuHost,
    run: &mut EnclaveRun,
    console: &mut EnclaveConsole,
    stop: &dyn Fn() -> bool,
) -> VcpuEnd {
    let mut mem = guest_ram(spec);
    let mailbox = &shared.mailboxes[local.index];
    // Marks an earlier enclave on this core left are not this one's.
    let _ = super::device_irq::take();
    if local.index == 0 {
        shared.started(super::tsc::now());
        spec.live.entered(super::tsc::now());
    }
    // The CPUID fast path's answers: this vCPU's platform CPUID, for the leaves that never
    // change.
    let cpuid = Box::new(vplat::fast_table(
        &ThisCore,
        local.index as u32,
        shared.mailboxes.len() as u32,
        shared.tsc_hz,
    ));
    loop {
        match vplat::before_entry(vcpu, &mut mem, local, shared, host) {
            Entry::Go => {}
            Entry::Stop => return VcpuEnd::Stop,
            Entry::Init => return VcpuEnd::Init,
        }
        // A CPUID answered on the fast path is counted as `handle` and `classify` count it.
        let counted = || {
            mailbox.count(vplat::Class::Other);
            spec.live.exit(ExitKind::Cpuid);
            run.exits[ExitKind::Cpuid as usize] += 1;
        };
        let exit = match vcpu.enter(&cpuid, counted) {
            Ok(e) => e,
            Err(e) => {
                shared.end(EndReason::Failed(e.to_string()), host);
                return VcpuEnd::Stop;
            }
        };
        if let Exit::ExternalInterrupt { vector: Some(v) } = exit {
            // VMX acknowledged it on exit: a passed-through function's vector is marked here,
            // as atoll's handler marks it on SVM (where the interrupt is taken after the exit).
            if vplat::passthrough::is_device_vector(v) {
                super::device_irq::note(v);
            }
            super::apic::eoi();
        }
        mailbox.count(vplat::classify(&exit, vcpu, host.timer_due()));
        spec.live.exit(exit.kind());
        let action = match vplat::handle(
            &exit, vcpu, &mut mem, local, shared, host, &ThisCore, console,
        ) {
            Some(a) => {
                run.exits[exit.kind() as usize] += 1;
                a
            }
            None => exits::handle(exit, vcpu, &mut mem, run, &mut ThisCore, console),
        };
        if let Action::Stop(reason) = action {
            shared.end(reason, host);
            return VcpuEnd::Stop;
        }
        if stop() {
            shared.end(
                EndReason::Stopped {
                    rip: Some(vcpu.rip()),
                },
                host,
            );
            return VcpuEnd::Stop;
        }
    }
}

fn core_virt<'c>(spec: &RunSpec, core: &'c CoreSlotVirt) -> Result<&'c CoreVirt, String> {
    let virt = core.0.call_once(|| match spec.second_stage {
        SecondStage::Ept(_) => CoreState::enable()
            .map(CoreVirt::Vmx)
            .map_err(|e| e.to_string()),
        SecondStage::Npt(_) => SvmCore::enable()
            .map(CoreVirt::Svm)
            .map_err(|e| e.to_string()),
    });
    virt.as_ref()
        .map_err(|e| alloc::format!("cannot enable virtualization on this core: {e}"))
}

/// This core's virtualization for a root-partition vCPU with `second_stage`: VMX root
/// operation or SVM, enabled on first use.
pub fn core_for(core: &CoreSlotVirt, second_stage: SecondStage) -> Result<&CoreVirt, String> {
    let virt = core.0.call_once(|| match second_stage {
        SecondStage::Ept(_) => CoreState::enable()
            .map(CoreVirt::Vmx)
            .map_err(|e| e.to_string()),
        SecondStage::Npt(_) => SvmCore::enable()
            .map(CoreVirt::Svm)
            .map_err(|e| e.to_string()),
    });
    virt.as_ref()
        .map_err(|e| alloc::format!("cannot enable virtualization on this core: {e}"))
}

/// This core's SVM state, enabling SVM on first use (for the root partition's vCPUs).
pub fn core_svm(core: &CoreSlotVirt) -> Result<&SvmCore, String> {
    let virt = core.0.call_once(|| {
        SvmCore::enable()
            .map(CoreVirt::Svm)
            .map_err(|e| e.to_string())
    });
    match virt {
        Ok(CoreVirt::Svm(c)) => Ok(c),
        Ok(CoreVirt::Vmx(_)) => Err("this core runs VMX".into()),
        Err(e) => Err(alloc::format!("cannot enable SVM on this core: {e}")),
    }
}

fn start(
    spec: &RunSpec,
    core: &CoreSlotVirt,
    run: &mut EnclaveRun,
    console: &mut EnclaveConsole,
    stop: &dyn Fn() -> bool,
    stop_at: Option<u64>,
) -> EndReason {
    let virt = match core_virt(spec, core) {
        Ok(v) => v,
        Err(e) => return EndReason::Failed(e),
    };
    match (virt, spec.second_stage) {
        (CoreVirt::Vmx(state), SecondStage::Ept(eptp)) => {
            match VmxVcpu::new(state, &spec.boot, eptp, spec.tag) {
                Ok(mut vcpu) => run_loop(&mut vcpu, spec, run, console, stop, stop_at),
                Err(e) => EndReason::Failed(alloc::format!("cannot build the vCPU: {e}")),
            }
        }
        (CoreVirt::Svm(state), SecondStage::Npt(root)) => {
            match SvmVcpu::new(state, &spec.boot, root, u32::from(spec.tag), spec.ram) {
                Ok(mut vcpu) => run_loop(&mut vcpu, spec, run, console, stop, stop_at),
                Err(e) => EndReason::Failed(alloc::format!("cannot build the vCPU: {e}")),
            }
        }
        _ => EndReason::Failed("this core already runs the other virtualization backend".into()),
    }
}

/// Runs one vCPU of a Linux enclave from `boot` until it stops or is INIT'd.
#[allow(clippy::too_many_arguments)]
fn start_platform_vcpu(
    spec: &RunSpec,
    core: &CoreSlotVirt,
    boot: &Boot,
    shared: &Shared,
    local: &mut Local,
    host: &mut VcpuHost,
    run: &mut EnclaveRun,
    console: &mut EnclaveConsole,
    stop: &dyn Fn() -> bool,
) -> VcpuEnd {
    let fail = |why: String, host: &mut VcpuHost| {
        shared.end(EndReason::Failed(why), host);
        VcpuEnd::Stop
    };
    let virt = match core_virt(spec, core) {
        Ok(v) => v,
        Err(e) => return fail(e, host),
    };
    match (virt, spec.second_stage) {
        (CoreVirt::Vmx(state), SecondStage::Ept(eptp)) => {
            match VmxVcpu::new(state, boot, eptp, spec.tag) {
                Ok(mut vcpu) => {
                    platform_loop(&mut vcpu, spec, shared, local, host, run, console, stop)
                }
                Err(e) => fail(
                    alloc::format!("cannot build vCPU {}: {e}", local.index),
                    host,
                ),
            }
        }
        (CoreVirt::Svm(state), SecondStage::Npt(root)) => {
            match SvmVcpu::new(state, boot, root, u32::from(spec.tag), spec.ram) {
                Ok(mut vcpu) => {
                    platform_loop(&mut vcpu, spec, shared, local, host, run, console, stop)
                }
                Err(e) => fail(
                    alloc::format!("cannot build vCPU {}: {e}", local.index),
                    host,
                ),
            }
        }
        _ => fail(
            "this core already runs the other virtualization backend".into(),
            host,
        ),
    }
}

/// The real-mode state a STARTUP IPI with `vector` gives (SDM Vol. 3A §9.4.4.1): CS selector
/// `vector << 8`, base `vector << 12`, IP 0 (`rip` is the linear entry, as for real-mode
/// images: the backends take CS's base off it).
pub(crate) fn startup_state(vector: u8) -> Boot {
    Boot {
        mode: EntryMode::Real16,
        rip: u64::from(vector) << 12,
        rsp: 0,
        rdi: 0,
        rsi: 0,
        rdx: 0,
        cr0: 0x10,
        cr3: 0,
        cr4: 0,
        efer: 0,
        gdt: (0, 0xffff),
        cs_selector: u16::from(vector) << 8,
        ds_selector: 0,
    }
}

/// An application processor of a Linux enclave: waits for INIT and STARTUP, runs, and goes
/// back to waiting after an INIT, until the enclave ends.
#[allow(clippy::too_many_arguments)]
fn run_application_vcpu(
    spec: &RunSpec,
    core: &CoreSlotVirt,
    shared: &Shared,
    index: usize,
    host: &mut VcpuHost,
    run: &mut EnclaveRun,
    console: &mut EnclaveConsole,
    stop: &dyn Fn() -> bool,
) {
    let mailbox = &shared.mailboxes[index];
    let mut local = Local::new(index, shared.tsc_hz);
    let mut initialized = false;
    // A guest can INIT and STARTUP its vCPUs in a loop: only the first start is worth a line
    // that waits for the console; later ones go to the debug log, which never waits.
    let mut started = false;
    loop {
        if shared.stopping() {
            return;
        }
        if stop() {
            shared.end(EndReason::Stopped { rip: None }, host);
            return;
        }
        if mailbox.take_init() {
            initialized = true;
            local.reset(shared.tsc_hz);
            // A STARTUP sent before this INIT was seen belongs to an earlier attempt.
            let _ = mailbox.take_sipi();
            continue;
        }
        match mailbox.take_sipi() {
            Some(vector) if initialized => {
                initialized = false;
                let boot = startup_state(vector);
                let level = if started {
                    log::Level::Debug
                } else {
                    log::Level::Info
                };
                started = true;
                log::log!(
                    level,
                    "enclave '{}': vCPU {index} starts at {:#x}",
                    spec.config.name,
                    u32::from(vector) << 12
                );
                match start_platform_vcpu(
                    spec, core, &boot, shared, &mut local, host, run, console, stop,
                ) {
                    VcpuEnd::Stop => return,
                    VcpuEnd::Init => continue,
                }
            }
            // STARTUP without a preceding INIT is ignored (SDM Vol. 3A §9.4.4.1).
            _ => host.wait(None),
        }
    }
}

/// Runs vCPU `index` of `spec` on this core to its end, or until `stop` (checked after each
/// exit: the manager kicks the core so there is one) says to end it. The boot vCPU (index 0)
/// returns the enclave's report once every vCPU stopped; the others return `None`.
///
/// A panic or exception in atoll while this core handles the enclave ends the enclave as
/// `failed` with the fault's text and location ([`super::contain`]); the core then returns as
/// if the enclave had ended, and the machine runs on. `stop_at` (TSC ticks), for the boot
/// processor's vCPU, which only its own clock can stop at the machine's deadline: the vCPU
/// stops once it has passed, and this core's timer never waits past it (a bare-metal guest's
/// is armed for it; a Linux vCPU's host timer, which serves the guest's timer too, is clamped
/// to it), so even a guest spinning without an exit exits then.
pub fn run(
    spec: &RunSpec,
    index: usize,
    core: &CoreSlotVirt,
    stop: &dyn Fn() -> bool,
    stop_at: Option<u64>,
) -> Option<EnclaveReport> {
    // With a deadline, the stop check also reads the clock (without one it stays the caller's
    // alone: it runs after every exit).
    let with_deadline;
    let stop: &dyn Fn() -> bool = match stop_at {
        None => stop,
        Some(d) => {
            // Within a millisecond of the deadline counts as reached: the timer is then never
            // armed for a remainder that could fire while this core is between an exit and the
            // next entry (an interrupt that arrives there is pending at the entry, which must
            // make the guest exit at once; Bochs was seen to lose it, leaving a guest that
            // spins with interrupts masked running past the deadline).
            let margin = super::tsc::hz() / 1000;
            with_deadline = move || stop() || super::tsc::now().saturating_add(margin) >= d;
            &with_deadline
        }
    };
    // The run state lives here, above the recovery point, so what the enclave reported and
    // the exits counted before a fault survive it.
    let mut run = EnclaveRun::new(&spec.config.name, spec.config.io_unknown);
    let mut console = EnclaveConsole::with_live(spec.live.clone());
    let failure = match super::contain::contained(|| {
        run_vcpu(spec, index, core, &mut run, &mut console, stop, stop_at)
    }) {
        Ok(report) => return report,
        Err(f) => f,
    };
    let why = alloc::format!("atoll fault while handling this enclave: {failure}");
    log::error!("enclave '{}' vCPU {index}: {why}", spec.config.name);
    let reason = EndReason::Failed(why);
    console.flush();
    let dropped = console.bytes_dropped();
    let Some(shared) = spec.platform.as_deref() else {
        return Some(report(spec, &reason, &mut run, dropped, None));
    };
    let own_apic = spec.config.cores.get(index).copied().unwrap_or(0);
    let mut host = VcpuHost::new(own_apic);
    host.arm(None);
    shared.end(reason.clone(), &mut host);
    shared.add_exits(&run.exits, run.io_denied, run.msr_denied);
    if index > 0 {
        shared
            .console_bytes_dropped
            .fetch_add(dropped, core::sync::atomic::Ordering::Relaxed);
        shared.mailboxes[index].set_done();
        return None;
    }
    // The boot vCPU faulted: wait (a bounded time) for the others, then report what is known.
    let deadline = super::tsc::now() + shared.tsc_hz;
    while !shared.mailboxes[1..].iter().all(|m| m.is_done()) && super::tsc::now() < deadline {
        super::idle_wait_us(1000);
    }
    let reason = shared.end_reason().cloned().unwrap_or(reason);
    Some(report(spec, &reason, &mut run, dropped, Some(shared)))
}

fn run_vcpu(
    spec: &RunSpec,
    index: usize,
    core: &CoreSlotVirt,
    run: &mut EnclaveRun,
    console: &mut EnclaveConsole,
    stop: &dyn Fn() -> bool,
    stop_at: Option<u64>,
) -> Option<EnclaveReport> {
    let Some(shared) = spec.platform.as_deref() else {
        // A bare-metal guest: one vCPU.
        let reason = start(spec, core, run, console, stop, stop_at);
        run.uart.flush(&spec.config.name, console);
        console.flush();
        return Some(report(spec, &reason, run, console.bytes_dropped(), None));
    };
    let own_apic = spec.config.cores.get(index).copied().unwrap_or(0);
    let mut host = VcpuHost::with_stop_at(own_apic, stop_at);
    if index > 0 {
        run_application_vcpu(spec, core, shared, index, &mut host, run, console, stop);
        host.arm(None);
        shared.add_exits(&run.exits, run.io_denied, run.msr_denied);
        // The count is final once the vCPU stopped (flushing drops nothing); it is added before
        // `set_done` so the boot vCPU's report sees it.
        shared.console_bytes_dropped.fetch_add(
            console.bytes_dropped(),
            core::sync::atomic::Ordering::Relaxed,
        );
        shared.mailboxes[index].set_done();
        console.flush();
        return None;
    }
    let mut local = Local::new(0, shared.tsc_hz);
    let _ = start_platform_vcpu(
        spec, core, &spec.boot, shared, &mut local, &mut host, run, console, stop,
    );
    host.arm(None);
    // Wait (a bounded time) for the other vCPUs to stop, so their counts are in the report.
    let deadline = super::tsc::now() + shared.tsc_hz;
    while !shared.mailboxes[1..].iter().all(|m| m.is_done()) && super::tsc::now() < deadline {
        super::idle_wait_us(1000);
    }
    shared.flush_console(super::tsc::now(), console);
    console.flush();
    shared.add_exits(&run.exits, run.io_denied, run.msr_denied);
    let reason = shared
        .end_reason()
        .cloned()
        .unwrap_or_else(|| EndReason::Failed("the enclave stopped without a reason".into()));
    Some(report(
        spec,
        &reason,
        run,
        console.bytes_dropped(),
        Some(shared),
    ))
}

/// Forgets an ended enclave on this core before its tables are freed: on VMX, INVEPT drops
/// what the TLBs cache for its EPTP (a later enclave's tables may reuse the frames, and the
/// EPTP value). On SVM nothing is cached across vCPUs for atoll to drop: each new vCPU's
/// first VMRUN flushes its ASID's TLB entries (`TlbControl::FlushAll`).
pub fn forget(spec: &RunSpec, core: &CoreSlotVirt) -> Result<(), String> {
    match (core.0.get(), spec.second_stage) {
        (Some(Ok(CoreVirt::Vmx(_))), SecondStage::Ept(eptp)) => {
            ept::invept::invept_single_context(eptp).map_err(|e| alloc::format!("INVEPT: {e:?}"))
        }
        // SVM, or a core where virtualization never came up (nothing ran, nothing cached).
        _ => Ok(()),
    }
}

fn report(
    spec: &RunSpec,
    reason: &EndReason,
    run: &mut EnclaveRun,
    console_bytes_dropped: u64,
    shared: Option<&Shared>,
) -> EnclaveReport {
    log::info!("enclave '{}' ended: {reason}", spec.config.name);
    let mut report = EnclaveReport {
        name: spec.config.name.clone(),
        cores: spec.config.cores.clone(),
        memory_mib: spec.config.memory_mib,
        state: "ended",
        end_reason: Some(reason.name()),
        detail: reason.to_string(),
        ended_at_us: super::tsc::micros(),
        exits: run.exit_counts(),
        io_denied: run.io_denied,
        msr_denied: run.msr_denied,
        ..Default::default()
    };
    match reason {
        EndReason::Exit { code } => report.exit_code = Some(*code),
        EndReason::EptViolation {
            gpa, access, rip, ..
        } => {
            report.violation = Some(Violation {
                gpa: gpa.as_u64(),
                access: access.to_string(),
                rip: *rip,
            })
        }
        _ => {}
    }
    // The raw results become serde values here, on the BSP after the enclave ended (not an
    // exit path); the validator bounded their depth when they came in.
    report.results = run.results.to_map();
    report.report_bytes_dropped = run.results.dropped();
    report.console_bytes_dropped = console_bytes_dropped;
    if let Some(shared) = shared {
        let (exits, io_denied, msr_denied) = shared.exit_totals();
        report.exits = exits;
        report.io_denied = io_denied;
        report.msr_denied = msr_denied;
        let results = shared.results.lock();
        report.results.extend(results.to_map());
        report.report_bytes_dropped += results.dropped();
        drop(results);
        report.console_bytes_dropped += shared
            .console_bytes_dropped
            .load(core::sync::atomic::Ordering::Relaxed);
        report.vcpus = Some(shared.mailboxes.len());
        report.exit_classes = Some(shared.classes());
        report.ipis_dropped = Some(
            shared
                .ipis_dropped
                .load(core::sync::atomic::Ordering::Relaxed),
        );
        report.measurements = shared.measurements(shared.tsc_hz);
        report.virtio = shared.virtio_report();
    }
    report
}
