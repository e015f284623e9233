//! Intel VT-x.
//!
//! This crate owns everything that speaks VMX encodings:
//!
//! * [`caps`]: what a processor offers (CPUID.1:ECX.VMX, IA32_FEATURE_CONTROL and the VMX
//!   capability MSRs, decoded into [`caps::VmxCaps`]), and the [`caps::MsrReader`] trait every
//!   MSR read goes through; [`msr`]: the MSR indices.
//! * [`controls`]: the VM-execution, VM-exit and VM-entry control bits and
//!   [`controls::ControlSet::compute`], which fits what atoll wants to what the processor allows.
//! * [`fields`]: typed VMCS field encodings (SDM Vol. 3D Appendix B) and the
//!   [`fields::VmcsAccess`] trait.
//! * [`exit`]: exit reasons, exit qualifications and interruption information, decoded, and the
//!   re-delivery of events whose delivery an exit interrupted.
//! * [`translate`]: a VM exit, read through [`fields::VmcsAccess`], as atoll's vendor-neutral
//!   `atoll_vcpu::Exit` plus the bookkeeping the backend owes the processor.
//! * [`guest_state`]: the guest interruptibility and activity states.
//! * [`regs`]: the guest registers software switches at entry and exit.
//! * [`vmxon`]: the checks and steps that enter VMX operation.
//! * [`error`]: [`VmFail`], [`VmInstructionError`] and the crate's [`Error`].
//! * `instructions` and `run` (target only): the VMX instructions and the VM entry/exit stub.
//!
//! Hardware access sits behind traits ([`caps::MsrReader`], [`fields::VmcsAccess`]) so the logic
//! is tested on the host with values captured in Bochs.
#![cfg_attr(target_os = "none", no_std)]

pub mod caps;
pub mod controls;
pub mod error;
pub mod exit;
pub mod fields;
pub mod guest_state;
#[cfg(target_os = "none")]
pub mod instructions;
pub mod msr;
pub mod regs;
#[cfg(target_os = "none")]
pub mod run;
pub mod translate;
pub mod vmxon;

#[cfg(test)]
mod test_util;

pub use error::{Error, VmFail, VmInstructionError};
