//! The atoll hypervisor.
//!
//! The library holds atoll's logic as host-testable modules; `main.rs` is the image's entry for
//! `x86_64-unknown-none`, and [`hw`] the small set of modules that touch the machine.
//!
//! * [`frames`]: physical frame allocator over the memory map.
//! * [`platform`]: ACPI discovery (processors, ECAM, DMAR, power-off).
//! * [`cpu`]: per-core virtualization probing (VMX, EPT, VPID, unrestricted guest, SVM, NPT).
//! * [`smp`]: the core table and the INIT-SIPI-SIPI bring-up with its deadline.
//! * [`options`]: boot options from the command line.
//! * [`summary`]: the `ATOLL-SUMMARY` line.
//! * [`vacpi`]: the ACPI tables of an enclave's virtual platform.
//! * [`vapic`], [`vioapic`]: models of an enclave vCPU's local APIC and of its I/O APIC.
//! * [`vuart`], [`vpit`], [`vrtc`]: COM1 (a 16550A), PIT channel 2, the CMOS clock.
//! * [`vplat`]: a Linux enclave's virtual platform at run time (what its vCPUs share, the
//!   exits it handles, interrupt delivery); [`linux`]: the Linux boot protocol.
//! * [`double_fault`]: how an exception raised by an exit handler combines with an event the
//!   backend queued again after the exit interrupted its delivery.
//! * [`deny`]: what a guest gets for the instructions, exceptions and registers that could reach
//!   the host or another partition (the policy of `docs/security.md`).
#![cfg_attr(target_os = "none", no_std)]

extern crate alloc;

pub mod config;
pub mod cpu;
pub mod decode;
pub mod deny;
pub mod double_fault;
pub mod exits;
pub mod frames;
#[cfg(target_os = "none")]
pub mod hw;
pub mod linux;
pub mod loader;
pub mod options;
pub mod partition;
pub mod platform;
pub mod smp;
pub mod summary;
pub mod vacpi;
pub mod vapic;
pub mod vcpu;
pub mod vioapic;
pub mod vpit;
pub mod vplat;
pub mod vrtc;
pub mod vuart;

#[cfg(test)]
mod vendor_neutrality {
    /// Exit handling and the enclave machinery never name VMX or SVM encodings: only the
    /// backends (`hw/vmx_backend.rs`, `hw/svm_backend.rs`), the capability probe (`cpu.rs`) and
    /// the `vmx`/`svm` crates do.
    #[test]
    fn only_backends_use_vmx_or_svm() {
        let policy = [
            "exits.rs",
            "deny.rs",
            "vcpu.rs",
            "double_fault.rs",
            "vplat.rs",
            "vuart.rs",
            "decode.rs",
            "loader.rs",
            "linux.rs",
            "vacpi.rs",
            "partition.rs",
            "config.rs",
            "summary.rs",
            "smp.rs",
            "vapic.rs",
            "vioapic.rs",
            "hw/enclave_run.rs",
            "hw/host.rs",
        ];
        for file in policy {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/").to_string() + file;
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // Code only: comments may name the instructions the code handles.
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            for needle in [
                "vmx::", "svm::", "use vmx", "use svm", "Vmcs", "Vmcb", "vmcall", "vmmcall",
            ] {
                assert!(!code.contains(needle), "{file} mentions `{needle}`");
            }
        }
    }
}
