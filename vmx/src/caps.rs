//! What VMX features a processor offers (SDM Vol. 3D Appendix A).

use crate::msr::*;
use bitflags::bitflags;

/// Reads model-specific registers; the hardware implementation uses RDMSR, tests use tables.
pub trait MsrReader {
    /// The value of `msr`, or `None` if reading it would fault (the MSR does not exist).
    fn read(&mut self, msr: Msr) -> Option<u64>;
}

bitflags! {
    /// IA32_FEATURE_CONTROL bits (SDM Vol. 3C §24.7, "Enabling and Entering VMX Operation").
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FeatureControl: u64 {
        /// Bit 0: the MSR is locked until reset.
        const LOCKED = 1 << 0;
        /// Bit 1: VMXON allowed inside SMX operation.
        const VMXON_INSIDE_SMX = 1 << 1;
        /// Bit 2: VMXON allowed outside SMX operation.
        const VMXON_OUTSIDE_SMX = 1 << 2;
    }
}

/// Secondary processor-based VM-execution controls; defined with the other control fields.
pub use crate::controls::SecondaryControls;

/// Primary processor-based control bit 31: activate secondary controls (SDM Vol. 3C Table 25-6).
const ACTIVATE_SECONDARY_CONTROLS: u64 = 1 << 31;

/// What the VMX capability MSRs say, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VmxCaps {
    /// CPUID.1:ECX.VMX[bit 5].
    pub cpuid_vmx: bool,
    /// Firmware left VMXON usable outside SMX (or the MSR is unlocked, so atoll may enable it).
    pub enabled_by_firmware: bool,
    /// VMCS revision identifier (IA32_VMX_BASIC bits 30:0).
    pub vmcs_revision: u32,
    /// Bytes to allocate for the VMXON region and each VMCS (IA32_VMX_BASIC bits 44:32).
    pub vmcs_size: u32,
    /// The TRUE_*_CTLS MSRs exist (IA32_VMX_BASIC bit 55).
    pub true_controls: bool,
    /// Secondary controls that may be set to 1.
    pub secondary_allowed: SecondaryControls,
    /// IA32_VMX_EPT_VPID_CAP, raw, for the `ept` crate to decode (0 when absent).
    pub ept_vpid_cap: u64,
}

impl VmxCaps {
    /// VMX usable at all: the CPU has it and firmware does not forbid it.
    pub fn usable(&self) -> bool {
        self.cpuid_vmx && self.enabled_by_firmware
    }

    /// EPT can be enabled.
    pub fn ept(&self) -> bool {
        self.usable()
            && self
                .secondary_allowed
                .contains(SecondaryControls::ENABLE_EPT)
    }

    /// VPID can be enabled.
    pub fn vpid(&self) -> bool {
        self.usable()
            && self
                .secondary_allowed
                .contains(SecondaryControls::ENABLE_VPID)
    }

    /// Unrestricted guest can be enabled (it also needs EPT, SDM Vol. 3C §27.2.1.1).
    pub fn unrestricted_guest(&self) -> bool {
        self.ept()
            && self
                .secondary_allowed
                .contains(SecondaryControls::UNRESTRICTED_GUEST)
    }

    /// Decodes the capability MSRs. `cpuid_vmx` is CPUID.1:ECX bit 5; when it is clear no VMX
    /// MSR is read (they would fault).
    pub fn probe(cpuid_vmx: bool, msrs: &mut impl MsrReader) -> Self {
        if !cpuid_vmx {
            return Self::default();
        }
        let feature_control =
            FeatureControl::from_bits_truncate(msrs.read(IA32_FEATURE_CONTROL).unwrap_or(0));
        // Locked with VMXON disabled outside SMX means firmware turned VMX off; unlocked means
        // atoll may set the enable bit and lock it itself.
        let enabled_by_firmware = !feature_control.contains(FeatureControl::LOCKED)
            || feature_control.contains(FeatureControl::VMXON_OUTSIDE_SMX);
        let basic = msrs.read(IA32_VMX_BASIC).unwrap_or(0);
        let procbased = msrs.read(IA32_VMX_PROCBASED_CTLS).unwrap_or(0);
        // Allowed-1 settings live in bits 63:32 (SDM Vol. 3D §A.3.2).
        let secondary_allowed = if procbased & (ACTIVATE_SECONDARY_CONTROLS << 32) != 0 {
            let ctls2 = msrs.read(IA32_VMX_PROCBASED_CTLS2).unwrap_or(0);
            SecondaryControls::from_bits_truncate((ctls2 >> 32) as u32)
        } else {
            SecondaryControls::empty()
        };
        let ept_vpid_cap = if secondary_allowed
            .intersects(SecondaryControls::ENABLE_EPT | SecondaryControls::ENABLE_VPID)
        {
            msrs.read(IA32_VMX_EPT_VPID_CAP).unwrap_or(0)
        } else {
            0
        };
        Self {
            cpuid_vmx,
            enabled_by_firmware,
            vmcs_revision: (basic & 0x7fff_ffff) as u32,
            vmcs_size: ((basic >> 32) & 0x1fff) as u32,
            true_controls: basic & (1 << 55) != 0,
            secondary_allowed,
            ept_vpid_cap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Table(HashMap<u32, u64>);
    impl MsrReader for Table {
        fn read(&mut self, msr: Msr) -> Option<u64> {
            self.0.get(&msr.0).copied()
        }
    }

    /// Skylake-server-class capability values (revision 4, 1 KiB VMCS, true controls, EPT with
    /// 2M/1G pages and A/D bits), VMX enabled and locked by firmware.
    fn skylake() -> Table {
        Table(HashMap::from([
            (0x3A, 0x5),
            (0x480, 0x00da_0400_0000_0004),
            (0x482, 0xfff9_fffe_0401_e172),
            (0x48B, 0x0053_ffff_0000_0000),
            (0x48C, 0x0000_0f01_0633_4141),
        ]))
    }

    #[test]
    fn skylake_server_offers_ept_vpid_and_unrestricted_guest() {
        let caps = VmxCaps::probe(true, &mut skylake());
        assert!(caps.usable());
        assert!(caps.ept() && caps.vpid() && caps.unrestricted_guest());
        assert_eq!(caps.vmcs_revision, 4);
        assert_eq!(caps.vmcs_size, 0x400);
        assert!(caps.true_controls);
        assert_eq!(caps.ept_vpid_cap, 0x0000_0f01_0633_4141);
    }

    /// Read by atoll in Bochs 2.7 (`corei7_skylake_x`) with `log=debug`.
    fn bochs() -> Table {
        Table(HashMap::from([
            (0x3A, 0x5),
            (0x480, 0x00d8_1000_0000_002b),
            (0x482, 0xf7f9_fffe_0401_e172),
            (0x48B, 0x0217_7fff_0000_0000),
            (0x48C, 0x0000_0f01_0633_4141),
        ]))
    }

    #[test]
    fn bochs_skylake_x_offers_what_the_design_brief_says() {
        let caps = VmxCaps::probe(true, &mut bochs());
        assert!(caps.usable() && caps.ept() && caps.vpid() && caps.unrestricted_guest());
        assert_eq!(caps.vmcs_revision, 0x2b);
        assert_eq!(caps.vmcs_size, 0x1000);
        assert!(caps.true_controls);
        // APIC-register virtualization and virtual-interrupt delivery yes (posted interrupts
        // are a pin-based control, not here).
        assert!(caps.secondary_allowed.contains(
            SecondaryControls::APIC_REGISTER_VIRTUALIZATION
                | SecondaryControls::VIRTUAL_INTERRUPT_DELIVERY
        ));
    }

    #[test]
    fn firmware_lock_without_enable_means_unusable() {
        let mut t = skylake();
        t.0.insert(0x3A, 0x1);
        let caps = VmxCaps::probe(true, &mut t);
        assert!(!caps.usable());
        assert!(!caps.ept() && !caps.vpid() && !caps.unrestricted_guest());
    }

    #[test]
    fn unlocked_feature_control_is_usable() {
        let mut t = skylake();
        t.0.insert(0x3A, 0x0);
        assert!(VmxCaps::probe(true, &mut t).usable());
    }

    #[test]
    fn no_secondary_controls_means_no_ept() {
        let mut t = skylake();
        t.0.insert(0x482, 0x7ff9_fffe_0401_e172);
        let caps = VmxCaps::probe(true, &mut t);
        assert!(caps.usable());
        assert!(!caps.ept() && !caps.vpid() && !caps.unrestricted_guest());
        assert_eq!(caps.ept_vpid_cap, 0);
    }

    #[test]
    fn without_cpuid_vmx_no_msr_is_read() {
        struct Panics;
        impl MsrReader for Panics {
            fn read(&mut self, msr: Msr) -> Option<u64> {
                panic!("read {msr:?} on a CPU without VMX")
            }
        }
        assert_eq!(VmxCaps::probe(false, &mut Panics), VmxCaps::default());
    }
}
