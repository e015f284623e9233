//! AMD-V: the Secure Virtual Machine extensions (AMD64 APM Vol. 2, chapter 15).
//!
//! This crate owns everything that speaks SVM encodings, as `vmx` does for Intel VT-x:
//!
//! * [`vmcb`]: the virtual machine control block as a 4 KiB page ([`vmcb::Vmcb`]) with typed
//!   fields for the control area and the state-save area (APM Vol. 2 Appendix B, Tables B-1 and
//!   B-2), segment registers in the VMCB's compressed attribute format, and the control words
//!   that live in the control area (virtual interrupt control, nested paging enable, VMCB clean
//!   bits, TLB control).
//! * [`intercepts`]: the intercept vectors (CR, DR, exception and the three miscellaneous
//!   vectors) as bitflags.
//! * [`permission_maps`]: builders for the MSR permission map (§15.11) and the I/O permission
//!   map (§15.10.1) on caller-provided buffers.
//! * [`exit`]: #VMEXIT codes (Appendix C) and the EXITINFO1/EXITINFO2 formats atoll handles, and
//!   the event-injection format shared by EVENTINJ and EXITINTINFO (§15.20).
//! * [`translate`]: a #VMEXIT, read from the VMCB, as atoll's vendor-neutral `atoll_vcpu::Exit`
//!   with the RIP past the exiting instruction.
//! * [`caps`]: what CPUID Fn8000_000A and VM_CR say, decoded; the decision whether SVM can be
//!   enabled. [`msr`]: the MSR indices.
//! * [`regs`]: the guest registers software switches around VMRUN.
//! * [`error`]: the crate's [`Error`].
//! * `enable` and `run` (target only): turning on EFER.SVME with the host save area, and the
//!   VMRUN stub.
//!
//! Everything but `enable` and `run` is pure and tested on the host; hardware values in the
//! tests come from QEMU's TCG SVM model and from Zen-class processors.
#![cfg_attr(target_os = "none", no_std)]

pub mod caps;
#[cfg(target_os = "none")]
pub mod enable;
pub mod error;
pub mod exit;
pub mod intercepts;
pub mod msr;
pub mod permission_maps;
pub mod regs;
#[cfg(target_os = "none")]
pub mod run;
pub mod translate;
pub mod vmcb;

pub use error::Error;
