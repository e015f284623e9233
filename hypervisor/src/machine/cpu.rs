//! What one core offers for virtualization, probed on that core.
//!
//! CPUID goes through `raw-cpuid`. What the VMX capability MSRs allow ([`VmxFeatures`]) is
//! decoded by the `vmx` and `ept` crates on the target (`hw::msr::vmx_features`) and handed in;
//! SVM (AMD-V) presence and nested paging come from CPUID 0x8000_0001 and 0x8000_000A (AMD64
//! APM Vol. 2 §15.4) plus VM_CR.SVMDIS, read by the caller's closure. This module, like all the
//! host-compiled ones, cannot name the `vmx` or `svm` crates: they are target-only dependencies
//! of the image crate, used by `hw` alone.

use raw_cpuid::{CpuId, CpuIdReader};
use serde::Serialize;

/// VM_CR (AMD64 APM Vol. 2 §15.30.1): bit 4 SVMDIS set means firmware disabled SVM.
pub const MSR_VM_CR: u32 = 0xC001_0114;
/// VM_CR.SVMDIS: firmware disabled SVM (APM Vol. 2 §15.30.1).
pub const VM_CR_SVMDIS: u64 = 1 << 4;

/// What the VMX capability MSRs allow on a core (all false without VMX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxFeatures {
    /// VMX usable (CPUID has it and firmware allows it).
    pub usable: bool,
    /// EPT.
    pub ept: bool,
    /// VPID.
    pub vpid: bool,
    /// Unrestricted guest.
    pub unrestricted_guest: bool,
    /// EPT 1 GiB pages.
    pub ept_1g: bool,
}

/// The virtualization report of one core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CoreCaps {
    /// CPU vendor is Intel (`GenuineIntel`).
    pub intel: bool,
    /// CPU vendor is AMD (`AuthenticAMD`).
    pub amd: bool,
    /// VT-x usable (CPUID and firmware agree).
    pub vmx: bool,
    /// EPT can be enabled.
    pub ept: bool,
    /// VPID can be enabled.
    pub vpid: bool,
    /// Unrestricted guest can be enabled.
    pub unrestricted_guest: bool,
    /// EPT supports 1 GiB pages.
    pub ept_1g: bool,
    /// AMD-V usable (CPUID and VM_CR agree).
    pub svm: bool,
    /// Nested paging.
    pub npt: bool,
    /// Next-RIP save on #VMEXIT.
    pub nrip: bool,
    /// Local APIC id (x2APIC id where the CPU has leaf 0xB).
    pub apic_id: u32,
    /// The CPU supports x2APIC mode.
    pub x2apic: bool,
}

/// Probes the calling core. `msrs` must only be asked for MSRs that exist, which `probe`
/// guarantees by checking CPUID first.
pub fn probe<R: CpuIdReader>(
    cpuid: &CpuId<R>,
    vmx: impl FnOnce(bool) -> VmxFeatures,
    vm_cr: impl FnOnce() -> u64,
) -> CoreCaps {
    let mut c = CoreCaps::default();
    if let Some(v) = cpuid.get_vendor_info() {
        c.intel = v.as_str() == "GenuineIntel";
        c.amd = v.as_str() == "AuthenticAMD";
    }
    let features = cpuid.get_feature_info();
    c.x2apic = features.as_ref().is_some_and(|f| f.has_x2apic());
    c.apic_id = cpuid
        .get_extended_topology_info()
        .and_then(|mut t| t.next().map(|l| l.x2apic_id()))
        .or_else(|| {
            features
                .as_ref()
                .map(|f| u32::from(f.initial_local_apic_id()))
        })
        .unwrap_or(0);

    let vmx = vmx(features.as_ref().is_some_and(|f| f.has_vmx()));
    c.vmx = vmx.usable;
    c.ept = vmx.usable && vmx.ept;
    c.vpid = vmx.usable && vmx.vpid;
    c.unrestricted_guest = c.ept && vmx.unrestricted_guest;
    c.ept_1g = c.ept && vmx.ept_1g;

    let has_svm = cpuid
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|e| e.has_svm());
    if has_svm {
        let disabled = vm_cr() & VM_CR_SVMDIS != 0;
        c.svm = !disabled;
        if let Some(svm) = cpuid.get_svm_info() {
            c.npt = c.svm && svm.has_nested_paging();
            c.nrip = c.svm && svm.has_nrip();
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use raw_cpuid::CpuIdResult;
    use std::collections::HashMap;

    /// CPUID answers from a table keyed by (leaf, subleaf).
    #[derive(Clone)]
    struct Table(HashMap<(u32, u32), [u32; 4]>);
    impl CpuIdReader for Table {
        fn cpuid2(&self, leaf: u32, sub: u32) -> CpuIdResult {
            let r = self
                .0
                .get(&(leaf, sub))
                .or_else(|| self.0.get(&(leaf, 0)))
                .copied()
                .unwrap_or([0; 4]);
            CpuIdResult {
                eax: r[0],
                ebx: r[1],
                ecx: r[2],
                edx: r[3],
            }
        }
    }
    fn no_vmx(cpuid_vmx: bool) -> VmxFeatures {
        assert!(!cpuid_vmx, "CPUID says VMX");
        VmxFeatures::default()
    }

    fn vendor(name: &[u8; 12], max_ext: u32) -> HashMap<(u32, u32), [u32; 4]> {
        let w = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
        HashMap::from([
            ((0, 0), [0xd, w(0), w(8), w(4)]),
            ((0x8000_0000, 0), [max_ext, 0, 0, 0]),
        ])
    }

    #[test]
    fn amd_with_svm_and_npt() {
        let mut t = vendor(b"AuthenticAMD", 0x8000_000a);
        t.insert((1, 0), [0, 3 << 24, 1 << 21, 0]); // APIC id 3, x2APIC
        t.insert((0x8000_0001, 0), [0, 0, 1 << 2, 0]); // SVM
        t.insert((0x8000_000a, 0), [1, 16, 0, 1]); // NP only (as QEMU TCG reports)
        let c = probe(&CpuId::with_cpuid_reader(Table(t.clone())), no_vmx, || 0);
        assert!(c.amd && c.svm && c.npt && !c.nrip && !c.vmx);
        assert_eq!(c.apic_id, 3);
        assert!(c.x2apic);
        // Firmware set VM_CR.SVMDIS: SVM is not usable.
        let c = probe(&CpuId::with_cpuid_reader(Table(t)), no_vmx, || VM_CR_SVMDIS);
        assert!(!c.svm && !c.npt);
    }

    #[test]
    fn intel_with_vmx_ept_vpid_ug() {
        let mut t = vendor(b"GenuineIntel", 0x8000_0008);
        t.insert((1, 0), [0, 1 << 24, 1 << 5, 0]); // VMX, APIC id 1
        let all = |cpuid_vmx: bool| VmxFeatures {
            usable: cpuid_vmx,
            ept: true,
            vpid: true,
            unrestricted_guest: true,
            ept_1g: true,
        };
        let c = probe(&CpuId::with_cpuid_reader(Table(t.clone())), all, || 0);
        assert!(c.intel && c.vmx && c.ept && c.vpid && c.unrestricted_guest && c.ept_1g);
        // Without EPT there is no unrestricted guest and no EPT page size.
        let no_ept = |_| VmxFeatures {
            usable: true,
            ept: false,
            vpid: true,
            unrestricted_guest: true,
            ept_1g: true,
        };
        let c = probe(&CpuId::with_cpuid_reader(Table(t)), no_ept, || 0);
        assert!(c.vmx && c.vpid && !c.ept && !c.unrestricted_guest && !c.ept_1g);
        assert!(!c.svm && !c.npt);
        assert_eq!(c.apic_id, 1);
    }
}
