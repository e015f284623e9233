//! Intel VT-x.
//!
//! This crate owns everything that speaks VMX encodings. So far: reading what a processor offers
//! ([`caps`]): CPUID.1:ECX.VMX, IA32_FEATURE_CONTROL and the VMX capability MSRs, decoded into
//! [`caps::VmxCaps`]. The MSR reads go through the [`caps::MsrReader`] trait so the decoding is
//! tested on the host with values captured from real CPUs and from Bochs.
#![cfg_attr(target_os = "none", no_std)]

pub mod caps;
pub mod msr;
