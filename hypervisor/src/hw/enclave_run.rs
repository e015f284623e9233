//! Running one enclave on the calling core: enable the core's virtualization (once per core,
//! VMX or SVM), build the vCPU, and loop entering the guest and handling its exits until it
//! ends. Everything touched here is this core's and this enclave's own (invariant 3): its vCPU,
//! its RAM, its [`EnclaveRun`].

use super::host::{EnclaveConsole, ThisCore};
use super::svm_backend::{SvmCore, SvmVcpu};
use super::vmx_backend::{CoreState, VmxVcpu};
use crate::config::EnclaveConfig;
use crate::exits::{self, Action, EnclaveRun, EndReason};
use crate::loader::BootState;
use crate::summary::{EnclaveReport, Violation};
use crate::vcpu::{Exit, SliceMemory, Vcpu};
use alloc::string::{String, ToString};
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

/// A backend's vCPU: the vendor-neutral operations plus entering the guest.
trait Backend: Vcpu {
    fn enter(&mut self) -> Result<Exit, String>;
}

impl Backend for VmxVcpu {
    fn enter(&mut self) -> Result<Exit, String> {
        self.run()
    }
}

impl Backend for SvmVcpu {
    fn enter(&mut self) -> Result<Exit, String> {
        self.run()
    }
}

fn run_loop(
    vcpu: &mut impl Backend,
    spec: &RunSpec,
    run: &mut EnclaveRun,
    console: &mut EnclaveConsole,
) -> EndReason {
    log::info!(
        "enclave '{}' starts on this core ({} MiB at {})",
        spec.config.name,
        spec.config.memory_mib,
        spec.ram
    );
    // SAFETY: the enclave's RAM is identity-mapped and used by nothing else while this core
    // runs the enclave.
    let ram = unsafe {
        core::slice::from_raw_parts_mut(spec.ram.start.as_u64() as *mut u8, spec.ram.len() as usize)
    };
    let mut mem = SliceMemory(ram);
    loop {
        let exit = match vcpu.enter() {
            Ok(e) => e,
            Err(e) => return EndReason::Failed(e),
        };
        if let Exit::ExternalInterrupt { vector: Some(_) } = exit {
            super::apic::eoi();
        }
        match exits::handle(exit, vcpu, &mut mem, run, &mut ThisCore, console) {
            Action::Resume => {}
            Action::Stop(reason) => return reason,
        }
    }
}

fn start(
    spec: &RunSpec,
    core: &CoreSlotVirt,
    run: &mut EnclaveRun,
    console: &mut EnclaveConsole,
) -> EndReason {
    let virt = core.0.call_once(|| match spec.second_stage {
        SecondStage::Ept(_) => CoreState::enable()
            .map(CoreVirt::Vmx)
            .map_err(|e| e.to_string()),
        SecondStage::Npt(_) => SvmCore::enable()
            .map(CoreVirt::Svm)
            .map_err(|e| alloc::format!("{e:?}")),
    });
    match (virt, spec.second_stage) {
        (Err(e), _) => EndReason::Failed(alloc::format!(
            "cannot enable virtualization on this core: {e}"
        )),
        (Ok(CoreVirt::Vmx(state)), SecondStage::Ept(eptp)) => {
            match VmxVcpu::new(state, &spec.boot, eptp, spec.tag) {
                Ok(mut vcpu) => run_loop(&mut vcpu, spec, run, console),
                Err(e) => EndReason::Failed(alloc::format!("cannot build the vCPU: {e}")),
            }
        }
        (Ok(CoreVirt::Svm(state)), SecondStage::Npt(root)) => {
            match SvmVcpu::new(state, &spec.boot, root, u32::from(spec.tag), spec.ram) {
                Ok(mut vcpu) => run_loop(&mut vcpu, spec, run, console),
                Err(e) => EndReason::Failed(alloc::format!("cannot build the vCPU: {e:?}")),
            }
        }
        _ => EndReason::Failed("this core already runs the other virtualization backend".into()),
    }
}

/// Runs `spec` on this core to its end and reports it.
pub fn run(spec: &RunSpec, core: &CoreSlotVirt) -> EnclaveReport {
    let mut run = EnclaveRun::new(&spec.config.name, spec.config.io_unknown);
    let mut console = EnclaveConsole::default();
    let reason = start(spec, core, &mut run, &mut console);
    run.uart.flush(&spec.config.name, &mut console);
    console.flush();
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
    match &reason {
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
    report.results = run.results;
    report
}
