//! What one core offers for virtualization, probed on that core.
//!
//! CPUID goes through `raw-cpuid`; VMX capability MSRs are decoded by the `vmx` crate and EPT's
//! by the `ept` crate. SVM (AMD-V) presence and nested paging come from CPUID 0x8000_0001 and
//! 0x8000_000A (AMD64 APM Vol. 2 §15.4) plus VM_CR.SVMDIS, read through the same MSR trait.

use raw_cpuid::{CpuId, CpuIdReader};
use serde::Serialize;
use vmx::caps::{MsrReader, VmxCaps};
use vmx::msr::Msr;

/// VM_CR (AMD64 APM Vol. 2 §15.30.1): bit 4 SVMDIS set means firmware disabled SVM.
pub const MSR_VM_CR: Msr = Msr(0xC001_0114);
const VM_CR_SVMDIS: u64 = 1 << 4;

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
pub fn probe<R: CpuIdReader>(cpuid: &CpuId<R>, msrs: &mut impl MsrReader) -> CoreCaps {
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

    let vmx = VmxCaps::probe(features.as_ref().is_some_and(|f| f.has_vmx()), msrs);
    c.vmx = vmx.usable();
    c.ept = vmx.ept();
    c.vpid = vmx.vpid();
    c.unrestricted_guest = vmx.unrestricted_guest();
    c.ept_1g = c.ept && ept::EptCaps::from_msr(vmx.ept_vpid_cap).contains(ept::EptCaps::PAGE_1G);

    let has_svm = cpuid
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|e| e.has_svm());
    if has_svm {
        let disabled = msrs.read(MSR_VM_CR).unwrap_or(0) & VM_CR_SVMDIS != 0;
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
    struct Msrs(HashMap<u32, u64>);
    impl MsrReader for Msrs {
        fn read(&mut self, msr: Msr) -> Option<u64> {
            self.0.get(&msr.0).copied()
        }
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
        let c = probe(
            &CpuId::with_cpuid_reader(Table(t.clone())),
            &mut Msrs(HashMap::new()),
        );
        assert!(c.amd && c.svm && c.npt && !c.nrip && !c.vmx);
        assert_eq!(c.apic_id, 3);
        assert!(c.x2apic);
        // Firmware set VM_CR.SVMDIS: SVM is not usable.
        let c = probe(
            &CpuId::with_cpuid_reader(Table(t)),
            &mut Msrs(HashMap::from([(0xC001_0114, 1 << 4)])),
        );
        assert!(!c.svm && !c.npt);
    }

    #[test]
    fn intel_with_vmx_ept_vpid_ug() {
        let mut t = vendor(b"GenuineIntel", 0x8000_0008);
        t.insert((1, 0), [0, 1 << 24, 1 << 5, 0]); // VMX, APIC id 1
        let msrs = HashMap::from([
            (0x3A, 0x5),
            (0x480, 0x00da_0400_0000_0004),
            (0x482, 0xfff9_fffe_0401_e172),
            (0x48B, 0x0053_ffff_0000_0000),
            (0x48C, 0x0000_0f01_0633_4141),
        ]);
        let c = probe(&CpuId::with_cpuid_reader(Table(t)), &mut Msrs(msrs));
        assert!(c.intel && c.vmx && c.ept && c.vpid && c.unrestricted_guest && c.ept_1g);
        assert!(!c.svm && !c.npt);
        assert_eq!(c.apic_id, 1);
    }
}
