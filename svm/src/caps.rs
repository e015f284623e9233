//! What SVM features a processor offers, and whether SVM can be turned on.
//!
//! This module owns the decoding of CPUID Fn8000_000A (AMD64 APM Vol. 2 §15.3 "SVM Processor
//! and Platform Extensions"; APM Vol. 3 Appendix E "CPUID Fn8000_000A") into [`SvmCaps`], and of
//! the VM_CR MSR (§15.30.1) into [`VmCr`], and the decisions of §15.4 "Enabling SVM" as pure
//! functions ([`check_svm_present`], [`vm_cr_update`]). No CPUID or RDMSR is executed here:
//! the target-only `enable` module reads the registers and calls these.

use crate::error::Error;
use bitflags::bitflags;

/// The CPUID leaf of SVM features.
pub const CPUID_SVM_LEAF: u32 = 0x8000_000A;
/// CPUID Fn8000_0001 ECX bit 2: SVM supported.
pub const CPUID_8000_0001_ECX_SVM: u32 = 1 << 2;

bitflags! {
    /// CPUID Fn8000_000A EDX: SVM feature identification (APM Vol. 3 Appendix E; APM Vol. 2
    /// §15.3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct SvmFeatures: u32 {
        /// Bit 0: NP, nested paging.
        const NESTED_PAGING = 1 << 0;
        /// Bit 1: LbrVirt, LBR virtualization.
        const LBR_VIRTUALIZATION = 1 << 1;
        /// Bit 2: SVML, SVM lock (VM_CR.LOCK can be opened with a key).
        const SVM_LOCK = 1 << 2;
        /// Bit 3: NRIPS, the VMCB nRIP field is written on instruction intercepts.
        const NRIP_SAVE = 1 << 3;
        /// Bit 4: TscRateMsr, the TSC_RATIO MSR.
        const TSC_RATE_MSR = 1 << 4;
        /// Bit 5: VmcbClean, VMCB clean bits.
        const VMCB_CLEAN = 1 << 5;
        /// Bit 6: FlushByAsid, TLB_CONTROL values 3 and 7.
        const FLUSH_BY_ASID = 1 << 6;
        /// Bit 7: DecodeAssists, EXITINFO1 register numbers and guest instruction bytes.
        const DECODE_ASSISTS = 1 << 7;
        /// Bit 8: PmcVirt, performance counter virtualization.
        const PMC_VIRTUALIZATION = 1 << 8;
        /// Bit 10: PauseFilter, the PAUSE filter count.
        const PAUSE_FILTER = 1 << 10;
        /// Bit 12: PauseFilterThreshold.
        const PAUSE_FILTER_THRESHOLD = 1 << 12;
        /// Bit 13: AVIC, the advanced virtual interrupt controller.
        const AVIC = 1 << 13;
        /// Bit 15: VMSAVEvirt, virtualized VMSAVE and VMLOAD.
        const V_VMSAVE_VMLOAD = 1 << 15;
        /// Bit 16: VGIF, virtual global interrupt flag.
        const VGIF = 1 << 16;
        /// Bit 17: GMET, guest-mode execute trap.
        const GMET = 1 << 17;
        /// Bit 18: x2AVIC.
        const X2AVIC = 1 << 18;
        /// Bit 19: SSSCheck, supervisor shadow stack checks.
        const SSS_CHECK = 1 << 19;
        /// Bit 20: SpecCtrl, the VMCB SPEC_CTRL field.
        const SPEC_CTRL = 1 << 20;
        /// Bit 21: ROGPT, read-only guest page tables.
        const RO_GPT = 1 << 21;
        /// Bit 23: HOST_MCE_OVERRIDE.
        const HOST_MCE_OVERRIDE = 1 << 23;
        /// Bit 24: TlbiCtl, INVLPGB/TLBSYNC enable and intercepts.
        const TLBI_CTL = 1 << 24;
        /// Bit 25: VNMI, virtual NMI.
        const VNMI = 1 << 25;
        /// Bit 26: IbsVirt, IBS virtualization.
        const IBS_VIRTUALIZATION = 1 << 26;
        /// Bit 28: VmcbAddrChkChg, VMCB address check change.
        const VMCB_ADDR_CHK_CHG = 1 << 28;
        /// Bit 29: BusLockThreshold.
        const BUS_LOCK_THRESHOLD = 1 << 29;
        /// Bit 30: IdleHltIntercept.
        const IDLE_HLT_INTERCEPT = 1 << 30;
        // Bits a later processor defines are kept.
        const _ = !0;
    }
}

/// CPUID Fn8000_000A decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SvmCaps {
    /// EAX bits 7:0: SVM revision.
    pub revision: u8,
    /// EBX: number of ASIDs (ASID 0, the host's, included).
    pub asids: u32,
    /// EDX.
    pub features: SvmFeatures,
}

impl SvmCaps {
    /// Decodes the leaf's registers (ECX is reserved).
    pub const fn from_cpuid(eax: u32, ebx: u32, edx: u32) -> Self {
        Self {
            revision: eax as u8,
            asids: ebx,
            features: SvmFeatures::from_bits_retain(edx),
        }
    }

    /// The highest ASID a guest may use (ASID 0 is the host's); `None` with fewer than two
    /// ASIDs.
    pub const fn max_guest_asid(&self) -> Option<u32> {
        if self.asids >= 2 {
            Some(self.asids - 1)
        } else {
            None
        }
    }

    /// Nested paging is available.
    pub const fn nested_paging(&self) -> bool {
        self.features.contains(SvmFeatures::NESTED_PAGING)
    }

    /// The VMCB nRIP field is written on instruction intercepts; without it the exit handler
    /// must find the instruction length itself (QEMU TCG).
    pub const fn nrip_save(&self) -> bool {
        self.features.contains(SvmFeatures::NRIP_SAVE)
    }

    /// Decode assists are available; without them MOV CR exits report
    /// [`crate::exit::CrDrAccess::NoDecodeAssist`] and no guest instruction bytes are given.
    pub const fn decode_assists(&self) -> bool {
        self.features.contains(SvmFeatures::DECODE_ASSISTS)
    }

    /// TLB_CONTROL may flush a single ASID; otherwise only "flush all" exists.
    pub const fn flush_by_asid(&self) -> bool {
        self.features.contains(SvmFeatures::FLUSH_BY_ASID)
    }

    /// VMCB clean bits are honoured.
    pub const fn vmcb_clean(&self) -> bool {
        self.features.contains(SvmFeatures::VMCB_CLEAN)
    }
}

bitflags! {
    /// The VM_CR MSR, C001_0114h (APM Vol. 2 §15.30.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VmCr: u64 {
        /// Bit 0: DPD, debug port disable.
        const DPD = 1 << 0;
        /// Bit 1: R_INIT, INIT is redirected to #SX.
        const R_INIT = 1 << 1;
        /// Bit 2: DIS_A20M, A20 masking disabled.
        const DIS_A20M = 1 << 2;
        /// Bit 3: LOCK; when set, LOCK and SVMDIS are read-only until reset (or unlocked
        /// with the SVM key).
        const LOCK = 1 << 3;
        /// Bit 4: SVMDIS; when set, EFER.SVME cannot be set.
        const SVMDIS = 1 << 4;
        // Reserved bits are kept as read.
        const _ = !0;
    }
}

/// Whether the processor has SVM at all, from the highest extended CPUID leaf (Fn8000_0000
/// EAX) and Fn8000_0001 ECX (APM Vol. 2 §15.4). The feature leaf Fn8000_000A must exist too.
pub const fn check_svm_present(max_extended_leaf: u32, ecx_8000_0001: u32) -> Result<(), Error> {
    if max_extended_leaf >= CPUID_SVM_LEAF && ecx_8000_0001 & CPUID_8000_0001_ECX_SVM != 0 {
        Ok(())
    } else {
        Err(Error::SvmAbsent)
    }
}

/// The VM_CR value to write before setting EFER.SVME, `None` if none is needed (APM Vol. 2
/// §15.4, §15.30.1): SVMDIS clear → nothing to do; SVMDIS set and unlocked → clear SVMDIS;
/// SVMDIS set and locked → [`Error::DisabledByFirmware`], saying whether the lock has a key
/// (`svm_lock`, CPUID Fn8000_000A EDX.SVML).
pub const fn vm_cr_update(vm_cr: u64, svm_lock: bool) -> Result<Option<u64>, Error> {
    let v = VmCr::from_bits_retain(vm_cr);
    if !v.contains(VmCr::SVMDIS) {
        Ok(None)
    } else if v.contains(VmCr::LOCK) {
        Err(Error::DisabledByFirmware {
            unlockable_with_key: svm_lock,
        })
    } else {
        Ok(Some(v.difference(VmCr::SVMDIS).bits()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPUID Fn8000_000A under QEMU 10 TCG with `-cpu max`: revision 1, 16 ASIDs, NP and
    /// VGIF only (no NRIP save, no decode assists).
    const QEMU_TCG: (u32, u32, u32) = (0x1, 0x10, 0x1 | (1 << 16));

    /// A Zen 2-class EPYC: NP, LBR virtualization, SVM lock, NRIP save, TSC rate, VMCB clean,
    /// flush by ASID, decode assists, PAUSE filter and threshold, AVIC, virtual
    /// VMSAVE/VMLOAD, VGIF; 32768 ASIDs.
    const ZEN: (u32, u32, u32) = (0x1, 0x8000, 0x0001_B4FF);

    #[test]
    fn qemu_tcg_offers_nested_paging_and_vgif_only() {
        let (a, b, d) = QEMU_TCG;
        let caps = SvmCaps::from_cpuid(a, b, d);
        assert_eq!(caps.revision, 1);
        assert_eq!(caps.asids, 16);
        assert_eq!(caps.max_guest_asid(), Some(15));
        assert_eq!(
            caps.features,
            SvmFeatures::NESTED_PAGING | SvmFeatures::VGIF
        );
        assert!(caps.nested_paging());
        assert!(!caps.nrip_save());
        assert!(!caps.decode_assists());
        assert!(!caps.flush_by_asid());
        assert!(!caps.vmcb_clean());
        assert!(!caps.features.contains(SvmFeatures::SVM_LOCK));
    }

    #[test]
    fn zen_offers_the_usual_set() {
        let (a, b, d) = ZEN;
        let caps = SvmCaps::from_cpuid(a, b, d);
        assert_eq!(caps.asids, 0x8000);
        assert_eq!(caps.max_guest_asid(), Some(0x7FFF));
        let expected = SvmFeatures::NESTED_PAGING
            | SvmFeatures::LBR_VIRTUALIZATION
            | SvmFeatures::SVM_LOCK
            | SvmFeatures::NRIP_SAVE
            | SvmFeatures::TSC_RATE_MSR
            | SvmFeatures::VMCB_CLEAN
            | SvmFeatures::FLUSH_BY_ASID
            | SvmFeatures::DECODE_ASSISTS
            | SvmFeatures::PAUSE_FILTER
            | SvmFeatures::PAUSE_FILTER_THRESHOLD
            | SvmFeatures::AVIC
            | SvmFeatures::V_VMSAVE_VMLOAD
            | SvmFeatures::VGIF;
        assert_eq!(caps.features, expected);
        assert_eq!(expected.bits(), 0x0001_B4FF);
        assert!(caps.nested_paging() && caps.nrip_save() && caps.decode_assists());
        assert!(caps.flush_by_asid() && caps.vmcb_clean());
        assert!(!caps.features.contains(SvmFeatures::X2AVIC));
    }

    #[test]
    fn unknown_feature_bits_are_kept_and_odd_values_do_not_panic() {
        let caps = SvmCaps::from_cpuid(u32::MAX, 0, u32::MAX);
        assert_eq!(caps.features.bits(), u32::MAX);
        assert_eq!(caps.revision, 0xFF);
        assert_eq!(caps.max_guest_asid(), None);
        assert_eq!(SvmCaps::from_cpuid(1, 1, 0).max_guest_asid(), None);
        assert_eq!(SvmCaps::from_cpuid(1, 2, 0).max_guest_asid(), Some(1));
    }

    #[test]
    fn presence() {
        // QEMU `-cpu max`: highest extended leaf 0x8000_0022 or so, SVM bit set.
        assert_eq!(check_svm_present(0x8000_0022, 0x0000_0007), Ok(()));
        assert_eq!(
            check_svm_present(0x8000_0022, 0x0000_0003),
            Err(Error::SvmAbsent)
        );
        // An Intel processor: no SVM bit; leaves stop at 0x8000_0008.
        assert_eq!(
            check_svm_present(0x8000_0008, 0x0000_0121),
            Err(Error::SvmAbsent)
        );
        // SVM bit without the feature leaf: unusable.
        assert_eq!(check_svm_present(0x8000_0001, 0x4), Err(Error::SvmAbsent));
    }

    #[test]
    fn vm_cr_decisions() {
        // Typical enabled firmware: LOCK set, SVMDIS clear (0x8); QEMU: 0.
        assert_eq!(vm_cr_update(0x8, false), Ok(None));
        assert_eq!(vm_cr_update(0x0, false), Ok(None));
        // Disabled and locked.
        assert_eq!(
            vm_cr_update(0x18, false),
            Err(Error::DisabledByFirmware {
                unlockable_with_key: false
            })
        );
        assert_eq!(
            vm_cr_update(0x18, true),
            Err(Error::DisabledByFirmware {
                unlockable_with_key: true
            })
        );
        // Disabled but unlocked: clear SVMDIS, keep the rest.
        assert_eq!(vm_cr_update(0x10, false), Ok(Some(0)));
        assert_eq!(vm_cr_update(0x13, false), Ok(Some(0x3)));
        assert_eq!(vm_cr_update(0x1_0010, true), Ok(Some(0x1_0000)));
        assert!(VmCr::from_bits_retain(0x18).contains(VmCr::LOCK | VmCr::SVMDIS));
        assert_eq!(VmCr::LOCK.bits(), 1 << 3);
        assert_eq!(VmCr::SVMDIS.bits(), 1 << 4);
    }
}
