//! Running one enclave on the calling core: take VMX root (once per core), build the vCPU, and
//! loop entering the guest and handling its exits until it ends. Everything touched here is
//! this core's and this enclave's own (invariant 3): its vCPU, its RAM, its [`EnclaveRun`].

use super::host::{EnclaveConsole, ThisCore};
use super::vmx_backend::{CoreState, VmxVcpu};
use crate::config::EnclaveConfig;
use crate::exits::{self, Action, EnclaveRun, EndReason};
use crate::loader::BootState;
use crate::summary::{EnclaveReport, Violation};
use crate::vcpu::{Exit, SliceMemory};
use alloc::string::ToString;
use boot::PhysRange;
use spin::Once;

/// What a core needs to run an enclave (copied out of the enclave's construction).
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Its description.
    pub config: EnclaveConfig,
    /// Its RAM.
    pub ram: PhysRange,
    /// Its vCPU's start state.
    pub boot: BootState,
    /// Its EPT pointer.
    pub eptp: ept::Eptp,
    /// VPID (enclave index + 1).
    pub vpid: u16,
}

/// This core's VMX state, made by the first enclave it runs. Written and read only by the
/// core that owns the slot.
pub struct CoreVmx(Once<Result<CoreState, alloc::string::String>>);

impl CoreVmx {
    /// An empty slot.
    pub const fn new() -> Self {
        Self(Once::new())
    }
}

impl Default for CoreVmx {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `spec` on this core to its end and reports it.
pub fn run(spec: &RunSpec, core: &CoreVmx) -> EnclaveReport {
    let mut report = EnclaveReport {
        name: spec.config.name.clone(),
        cores: spec.config.cores.clone(),
        memory_mib: spec.config.memory_mib,
        state: "ended",
        ..Default::default()
    };
    let mut run = EnclaveRun::new(&spec.config.name, spec.config.io_unknown);
    let reason = match core
        .0
        .call_once(|| CoreState::enable().map_err(|e| e.to_string()))
    {
        Err(e) => EndReason::Failed(alloc::format!("cannot enter VMX operation: {e}")),
        Ok(state) => match VmxVcpu::new(state, &spec.boot, spec.eptp, spec.vpid) {
            Err(e) => EndReason::Failed(alloc::format!("cannot build the vCPU: {e}")),
            Ok(mut vcpu) => {
                log::info!(
                    "enclave '{}' starts on this core ({} MiB at {})",
                    spec.config.name,
                    spec.config.memory_mib,
                    spec.ram
                );
                // SAFETY: the enclave's RAM is identity-mapped and used by nothing else while
                // this core runs the enclave.
                let ram = unsafe {
                    core::slice::from_raw_parts_mut(
                        spec.ram.start.as_u64() as *mut u8,
                        spec.ram.len() as usize,
                    )
                };
                let mut mem = SliceMemory(ram);
                loop {
                    let exit = match vcpu.run() {
                        Ok(e) => e,
                        Err(e) => break EndReason::Failed(e),
                    };
                    if let Exit::ExternalInterrupt { vector: Some(_) } = exit {
                        super::apic::eoi();
                    }
                    match exits::handle(
                        exit,
                        &mut vcpu,
                        &mut mem,
                        &mut run,
                        &mut ThisCore,
                        &mut EnclaveConsole,
                    ) {
                        Action::Resume => {}
                        Action::Stop(reason) => break reason,
                    }
                }
            }
        },
    };
    run.uart.flush(&spec.config.name, &mut EnclaveConsole);
    log::info!("enclave '{}' ended: {reason}", spec.config.name);
    report.end_reason = Some(reason.name());
    report.detail = reason.to_string();
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
    report.ended_at_us = super::tsc::micros();
    report.exits = run.exit_counts();
    report.io_denied = run.io_denied;
    report.msr_denied = run.msr_denied;
    report.results = run.results;
    report
}
