//! VMCS field encodings and typed access to the current VMCS.
//!
//! This module owns the encodings atoll uses (SDM Vol. 3D Appendix B, "Field Encoding in
//! VMCS"), one `#[repr(u32)]` enum per field width so a value of the wrong width cannot be
//! written to a field, and the [`VmcsAccess`] trait: the hardware implementation
//! (`instructions::CurrentVmcs`, target only) uses VMREAD/VMWRITE, tests and host-side users use
//! a table.
//!
//! The structure of an encoding (SDM Vol. 3C §25.11.2, Vol. 3D Appendix B): bit 0 is the access
//! type (0 = full; 1 = the high 32 bits of a 64-bit field, never used by a 64-bit host), bits
//! 9:1 the index, bits 11:10 the type (control, VM-exit information, guest state, host state),
//! bits 14:13 the width (16-bit, 64-bit, 32-bit, natural).

use crate::error::VmFail;

/// Field width, encoding bits 14:13.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldWidth {
    /// 0: 16-bit.
    Bits16,
    /// 1: 64-bit.
    Bits64,
    /// 2: 32-bit.
    Bits32,
    /// 3: natural width (64 bits on a 64-bit processor).
    Natural,
}

impl FieldWidth {
    /// The width encoded in `encoding`.
    pub const fn of(encoding: u32) -> Self {
        match (encoding >> 13) & 3 {
            0 => Self::Bits16,
            1 => Self::Bits64,
            2 => Self::Bits32,
            _ => Self::Natural,
        }
    }
}

/// Field type, encoding bits 11:10.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// 0: control field.
    Control,
    /// 1: VM-exit information (read-only data).
    ExitInformation,
    /// 2: guest-state field.
    GuestState,
    /// 3: host-state field.
    HostState,
}

impl FieldType {
    /// The type encoded in `encoding`.
    pub const fn of(encoding: u32) -> Self {
        match (encoding >> 10) & 3 {
            0 => Self::Control,
            1 => Self::ExitInformation,
            2 => Self::GuestState,
            _ => Self::HostState,
        }
    }
}

/// Defines one width's field enum. Each variant carries its encoding and the type the SDM
/// lists it under, so the structural test can check the encoding's type bits against the
/// section it was transcribed from.
macro_rules! vmcs_fields {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $width:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $enc:literal, $kind:ident; )*
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $enc, )*
        }

        impl $name {
            /// Every field of this width atoll knows.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];
            /// The width all these fields have.
            pub const WIDTH: FieldWidth = FieldWidth::$width;

            /// The VMREAD/VMWRITE encoding.
            pub const fn encoding(self) -> u32 {
                self as u32
            }

            /// The field type the SDM lists this field under.
            #[cfg(test)]
            const fn listed_type(self) -> FieldType {
                match self {
                    $( Self::$variant => FieldType::$kind, )*
                }
            }
        }

        impl From<$name> for Field {
            fn from(f: $name) -> Self {
                Field::$name(f)
            }
        }
    };
}

vmcs_fields! {
    /// 16-bit fields (SDM Vol. 3D §B.1: B.1.1 control, B.1.2 guest state, B.1.3 host state).
    pub enum Field16: Bits16 {
        /// Virtual-processor identifier (VPID).
        VirtualProcessorIdentifier = 0x0000, Control;
        /// Posted-interrupt notification vector.
        PostedInterruptNotificationVector = 0x0002, Control;
        /// EPTP index.
        EptpIndex = 0x0004, Control;
        /// Guest ES selector.
        GuestEsSelector = 0x0800, GuestState;
        /// Guest CS selector.
        GuestCsSelector = 0x0802, GuestState;
        /// Guest SS selector.
        GuestSsSelector = 0x0804, GuestState;
        /// Guest DS selector.
        GuestDsSelector = 0x0806, GuestState;
        /// Guest FS selector.
        GuestFsSelector = 0x0808, GuestState;
        /// Guest GS selector.
        GuestGsSelector = 0x080A, GuestState;
        /// Guest LDTR selector.
        GuestLdtrSelector = 0x080C, GuestState;
        /// Guest TR selector.
        GuestTrSelector = 0x080E, GuestState;
        /// Guest interrupt status (virtual-interrupt delivery: RVI and SVI).
        GuestInterruptStatus = 0x0810, GuestState;
        /// PML index.
        PmlIndex = 0x0812, GuestState;
        /// Host ES selector.
        HostEsSelector = 0x0C00, HostState;
        /// Host CS selector.
        HostCsSelector = 0x0C02, HostState;
        /// Host SS selector.
        HostSsSelector = 0x0C04, HostState;
        /// Host DS selector.
        HostDsSelector = 0x0C06, HostState;
        /// Host FS selector.
        HostFsSelector = 0x0C08, HostState;
        /// Host GS selector.
        HostGsSelector = 0x0C0A, HostState;
        /// Host TR selector.
        HostTrSelector = 0x0C0C, HostState;
    }
}

vmcs_fields! {
    /// 64-bit fields, full access (SDM Vol. 3D §B.2: B.2.1 control, B.2.2 read-only data,
    /// B.2.3 guest state, B.2.4 host state). Address fields hold host-physical addresses.
    pub enum Field64: Bits64 {
        /// Address of I/O bitmap A (ports 0000H–7FFFH).
        IoBitmapA = 0x2000, Control;
        /// Address of I/O bitmap B (ports 8000H–FFFFH).
        IoBitmapB = 0x2002, Control;
        /// Address of MSR bitmaps.
        MsrBitmaps = 0x2004, Control;
        /// VM-exit MSR-store address.
        VmExitMsrStoreAddress = 0x2006, Control;
        /// VM-exit MSR-load address.
        VmExitMsrLoadAddress = 0x2008, Control;
        /// VM-entry MSR-load address.
        VmEntryMsrLoadAddress = 0x200A, Control;
        /// Page-modification log address.
        PmlAddress = 0x200E, Control;
        /// TSC offset.
        TscOffset = 0x2010, Control;
        /// Virtual-APIC address.
        VirtualApicAddress = 0x2012, Control;
        /// APIC-access address.
        ApicAccessAddress = 0x2014, Control;
        /// Posted-interrupt descriptor address.
        PostedInterruptDescriptorAddress = 0x2016, Control;
        /// EPT pointer (EPTP).
        EptPointer = 0x201A, Control;
        /// EOI-exit bitmap 0 (vectors 0–63).
        EoiExitBitmap0 = 0x201C, Control;
        /// EOI-exit bitmap 1 (vectors 64–127).
        EoiExitBitmap1 = 0x201E, Control;
        /// EOI-exit bitmap 2 (vectors 128–191).
        EoiExitBitmap2 = 0x2020, Control;
        /// EOI-exit bitmap 3 (vectors 192–255).
        EoiExitBitmap3 = 0x2022, Control;
        /// XSS-exiting bitmap.
        XssExitingBitmap = 0x202C, Control;
        /// TSC multiplier.
        TscMultiplier = 0x2032, Control;
        /// Guest-physical address (EPT violations and misconfigurations).
        GuestPhysicalAddress = 0x2400, ExitInformation;
        /// VMCS link pointer (all ones when VMCS shadowing is off).
        VmcsLinkPointer = 0x2800, GuestState;
        /// Guest IA32_DEBUGCTL.
        GuestIa32Debugctl = 0x2802, GuestState;
        /// Guest IA32_PAT.
        GuestIa32Pat = 0x2804, GuestState;
        /// Guest IA32_EFER.
        GuestIa32Efer = 0x2806, GuestState;
        /// Guest IA32_PERF_GLOBAL_CTRL.
        GuestIa32PerfGlobalCtrl = 0x2808, GuestState;
        /// Guest PDPTE0 (PAE paging with EPT).
        GuestPdpte0 = 0x280A, GuestState;
        /// Guest PDPTE1.
        GuestPdpte1 = 0x280C, GuestState;
        /// Guest PDPTE2.
        GuestPdpte2 = 0x280E, GuestState;
        /// Guest PDPTE3.
        GuestPdpte3 = 0x2810, GuestState;
        /// Host IA32_PAT.
        HostIa32Pat = 0x2C00, HostState;
        /// Host IA32_EFER.
        HostIa32Efer = 0x2C02, HostState;
        /// Host IA32_PERF_GLOBAL_CTRL.
        HostIa32PerfGlobalCtrl = 0x2C04, HostState;
    }
}

vmcs_fields! {
    /// 32-bit fields (SDM Vol. 3D §B.3: B.3.1 control, B.3.2 read-only data, B.3.3 guest
    /// state, B.3.4 host state).
    pub enum Field32: Bits32 {
        /// Pin-based VM-execution controls.
        PinBasedVmExecutionControls = 0x4000, Control;
        /// Primary processor-based VM-execution controls.
        PrimaryProcessorBasedVmExecutionControls = 0x4002, Control;
        /// Exception bitmap.
        ExceptionBitmap = 0x4004, Control;
        /// Page-fault error-code mask.
        PageFaultErrorCodeMask = 0x4006, Control;
        /// Page-fault error-code match.
        PageFaultErrorCodeMatch = 0x4008, Control;
        /// CR3-target count.
        Cr3TargetCount = 0x400A, Control;
        /// Primary VM-exit controls.
        PrimaryVmExitControls = 0x400C, Control;
        /// VM-exit MSR-store count.
        VmExitMsrStoreCount = 0x400E, Control;
        /// VM-exit MSR-load count.
        VmExitMsrLoadCount = 0x4010, Control;
        /// VM-entry controls.
        VmEntryControls = 0x4012, Control;
        /// VM-entry MSR-load count.
        VmEntryMsrLoadCount = 0x4014, Control;
        /// VM-entry interruption-information field.
        VmEntryInterruptionInformation = 0x4016, Control;
        /// VM-entry exception error code.
        VmEntryExceptionErrorCode = 0x4018, Control;
        /// VM-entry instruction length.
        VmEntryInstructionLength = 0x401A, Control;
        /// TPR threshold.
        TprThreshold = 0x401C, Control;
        /// Secondary processor-based VM-execution controls.
        SecondaryProcessorBasedVmExecutionControls = 0x401E, Control;
        /// PLE_Gap.
        PleGap = 0x4020, Control;
        /// PLE_Window.
        PleWindow = 0x4022, Control;
        /// VM-instruction error.
        VmInstructionError = 0x4400, ExitInformation;
        /// Exit reason.
        ExitReason = 0x4402, ExitInformation;
        /// VM-exit interruption information.
        VmExitInterruptionInformation = 0x4404, ExitInformation;
        /// VM-exit interruption error code.
        VmExitInterruptionErrorCode = 0x4406, ExitInformation;
        /// IDT-vectoring information field.
        IdtVectoringInformation = 0x4408, ExitInformation;
        /// IDT-vectoring error code.
        IdtVectoringErrorCode = 0x440A, ExitInformation;
        /// VM-exit instruction length.
        VmExitInstructionLength = 0x440C, ExitInformation;
        /// VM-exit instruction information.
        VmExitInstructionInformation = 0x440E, ExitInformation;
        /// Guest ES limit.
        GuestEsLimit = 0x4800, GuestState;
        /// Guest CS limit.
        GuestCsLimit = 0x4802, GuestState;
        /// Guest SS limit.
        GuestSsLimit = 0x4804, GuestState;
        /// Guest DS limit.
        GuestDsLimit = 0x4806, GuestState;
        /// Guest FS limit.
        GuestFsLimit = 0x4808, GuestState;
        /// Guest GS limit.
        GuestGsLimit = 0x480A, GuestState;
        /// Guest LDTR limit.
        GuestLdtrLimit = 0x480C, GuestState;
        /// Guest TR limit.
        GuestTrLimit = 0x480E, GuestState;
        /// Guest GDTR limit.
        GuestGdtrLimit = 0x4810, GuestState;
        /// Guest IDTR limit.
        GuestIdtrLimit = 0x4812, GuestState;
        /// Guest ES access rights.
        GuestEsAccessRights = 0x4814, GuestState;
        /// Guest CS access rights.
        GuestCsAccessRights = 0x4816, GuestState;
        /// Guest SS access rights.
        GuestSsAccessRights = 0x4818, GuestState;
        /// Guest DS access rights.
        GuestDsAccessRights = 0x481A, GuestState;
        /// Guest FS access rights.
        GuestFsAccessRights = 0x481C, GuestState;
        /// Guest GS access rights.
        GuestGsAccessRights = 0x481E, GuestState;
        /// Guest LDTR access rights.
        GuestLdtrAccessRights = 0x4820, GuestState;
        /// Guest TR access rights.
        GuestTrAccessRights = 0x4822, GuestState;
        /// Guest interruptibility state.
        GuestInterruptibilityState = 0x4824, GuestState;
        /// Guest activity state.
        GuestActivityState = 0x4826, GuestState;
        /// Guest SMBASE.
        GuestSmbase = 0x4828, GuestState;
        /// Guest IA32_SYSENTER_CS.
        GuestIa32SysenterCs = 0x482A, GuestState;
        /// VMX-preemption timer value.
        VmxPreemptionTimerValue = 0x482E, GuestState;
        /// Host IA32_SYSENTER_CS.
        HostIa32SysenterCs = 0x4C00, HostState;
    }
}

vmcs_fields! {
    /// Natural-width fields (SDM Vol. 3D §B.4: B.4.1 control, B.4.2 read-only data, B.4.3
    /// guest state, B.4.4 host state).
    pub enum FieldNatural: Natural {
        /// CR0 guest/host mask.
        Cr0GuestHostMask = 0x6000, Control;
        /// CR4 guest/host mask.
        Cr4GuestHostMask = 0x6002, Control;
        /// CR0 read shadow.
        Cr0ReadShadow = 0x6004, Control;
        /// CR4 read shadow.
        Cr4ReadShadow = 0x6006, Control;
        /// CR3-target value 0.
        Cr3TargetValue0 = 0x6008, Control;
        /// CR3-target value 1.
        Cr3TargetValue1 = 0x600A, Control;
        /// CR3-target value 2.
        Cr3TargetValue2 = 0x600C, Control;
        /// CR3-target value 3.
        Cr3TargetValue3 = 0x600E, Control;
        /// Exit qualification.
        ExitQualification = 0x6400, ExitInformation;
        /// I/O RCX (SMIs during I/O instructions).
        IoRcx = 0x6402, ExitInformation;
        /// I/O RSI.
        IoRsi = 0x6404, ExitInformation;
        /// I/O RDI.
        IoRdi = 0x6406, ExitInformation;
        /// I/O RIP.
        IoRip = 0x6408, ExitInformation;
        /// Guest-linear address.
        GuestLinearAddress = 0x640A, ExitInformation;
        /// Guest CR0.
        GuestCr0 = 0x6800, GuestState;
        /// Guest CR3.
        GuestCr3 = 0x6802, GuestState;
        /// Guest CR4.
        GuestCr4 = 0x6804, GuestState;
        /// Guest ES base.
        GuestEsBase = 0x6806, GuestState;
        /// Guest CS base.
        GuestCsBase = 0x6808, GuestState;
        /// Guest SS base.
        GuestSsBase = 0x680A, GuestState;
        /// Guest DS base.
        GuestDsBase = 0x680C, GuestState;
        /// Guest FS base.
        GuestFsBase = 0x680E, GuestState;
        /// Guest GS base.
        GuestGsBase = 0x6810, GuestState;
        /// Guest LDTR base.
        GuestLdtrBase = 0x6812, GuestState;
        /// Guest TR base.
        GuestTrBase = 0x6814, GuestState;
        /// Guest GDTR base.
        GuestGdtrBase = 0x6816, GuestState;
        /// Guest IDTR base.
        GuestIdtrBase = 0x6818, GuestState;
        /// Guest DR7.
        GuestDr7 = 0x681A, GuestState;
        /// Guest RSP.
        GuestRsp = 0x681C, GuestState;
        /// Guest RIP.
        GuestRip = 0x681E, GuestState;
        /// Guest RFLAGS.
        GuestRflags = 0x6820, GuestState;
        /// Guest pending debug exceptions.
        GuestPendingDebugExceptions = 0x6822, GuestState;
        /// Guest IA32_SYSENTER_ESP.
        GuestIa32SysenterEsp = 0x6824, GuestState;
        /// Guest IA32_SYSENTER_EIP.
        GuestIa32SysenterEip = 0x6826, GuestState;
        /// Host CR0.
        HostCr0 = 0x6C00, HostState;
        /// Host CR3.
        HostCr3 = 0x6C02, HostState;
        /// Host CR4.
        HostCr4 = 0x6C04, HostState;
        /// Host FS base.
        HostFsBase = 0x6C06, HostState;
        /// Host GS base.
        HostGsBase = 0x6C08, HostState;
        /// Host TR base.
        HostTrBase = 0x6C0A, HostState;
        /// Host GDTR base.
        HostGdtrBase = 0x6C0C, HostState;
        /// Host IDTR base.
        HostIdtrBase = 0x6C0E, HostState;
        /// Host IA32_SYSENTER_ESP.
        HostIa32SysenterEsp = 0x6C10, HostState;
        /// Host IA32_SYSENTER_EIP.
        HostIa32SysenterEip = 0x6C12, HostState;
        /// Host RSP.
        HostRsp = 0x6C14, HostState;
        /// Host RIP.
        HostRip = 0x6C16, HostState;
    }
}

/// Any VMCS field atoll knows, of any width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// A 16-bit field.
    Field16(Field16),
    /// A 64-bit field.
    Field64(Field64),
    /// A 32-bit field.
    Field32(Field32),
    /// A natural-width field.
    FieldNatural(FieldNatural),
}

impl Field {
    /// The VMREAD/VMWRITE encoding.
    pub const fn encoding(self) -> u32 {
        match self {
            Self::Field16(f) => f.encoding(),
            Self::Field64(f) => f.encoding(),
            Self::Field32(f) => f.encoding(),
            Self::FieldNatural(f) => f.encoding(),
        }
    }

    /// The field atoll knows by this VMREAD/VMWRITE encoding, if any (for reports that kept
    /// only the encoding).
    pub fn from_encoding(encoding: u32) -> Option<Self> {
        let all = Field16::ALL
            .iter()
            .map(|&f| Field::from(f))
            .chain(Field64::ALL.iter().map(|&f| Field::from(f)))
            .chain(Field32::ALL.iter().map(|&f| Field::from(f)))
            .chain(FieldNatural::ALL.iter().map(|&f| Field::from(f)));
        all.into_iter().find(|f| f.encoding() == encoding)
    }

    /// Its width.
    pub const fn width(self) -> FieldWidth {
        FieldWidth::of(self.encoding())
    }

    /// Its type.
    pub const fn field_type(self) -> FieldType {
        FieldType::of(self.encoding())
    }
}

/// Reads and writes fields of one VMCS. On hardware this is the current VMCS of the calling
/// core (`instructions::CurrentVmcs`); tests implement it with a table. The typed methods make
/// the width of every access match the field.
pub trait VmcsAccess {
    /// The value of `field`, zero-extended to 64 bits.
    fn read(&mut self, field: Field) -> Result<u64, VmFail>;

    /// Sets `field` to `value` (truncated to the field's width by the processor).
    fn write(&mut self, field: Field, value: u64) -> Result<(), VmFail>;

    /// Reads a 16-bit field.
    fn read16(&mut self, field: Field16) -> Result<u16, VmFail> {
        // VMREAD zero-extends a 16-bit field, so the truncation loses nothing.
        self.read(field.into()).map(|v| v as u16)
    }

    /// Reads a 32-bit field.
    fn read32(&mut self, field: Field32) -> Result<u32, VmFail> {
        self.read(field.into()).map(|v| v as u32)
    }

    /// Reads a 64-bit field.
    fn read64(&mut self, field: Field64) -> Result<u64, VmFail> {
        self.read(field.into())
    }

    /// Reads a natural-width field.
    fn read_natural(&mut self, field: FieldNatural) -> Result<u64, VmFail> {
        self.read(field.into())
    }

    /// Writes a 16-bit field.
    fn write16(&mut self, field: Field16, value: u16) -> Result<(), VmFail> {
        self.write(field.into(), value.into())
    }

    /// Writes a 32-bit field.
    fn write32(&mut self, field: Field32, value: u32) -> Result<(), VmFail> {
        self.write(field.into(), value.into())
    }

    /// Writes a 64-bit field.
    fn write64(&mut self, field: Field64, value: u64) -> Result<(), VmFail> {
        self.write(field.into(), value)
    }

    /// Writes a natural-width field.
    fn write_natural(&mut self, field: FieldNatural, value: u64) -> Result<(), VmFail> {
        self.write(field.into(), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn every_field() -> Vec<Field> {
        let mut all: Vec<Field> = Vec::new();
        all.extend(Field16::ALL.iter().map(|&f| Field::from(f)));
        all.extend(Field64::ALL.iter().map(|&f| Field::from(f)));
        all.extend(Field32::ALL.iter().map(|&f| Field::from(f)));
        all.extend(FieldNatural::ALL.iter().map(|&f| Field::from(f)));
        all
    }

    #[test]
    fn every_field_is_found_by_its_encoding() {
        for f in every_field() {
            assert_eq!(Field::from_encoding(f.encoding()), Some(f));
        }
        // 0x4402 is the exit reason; 0x0001 (a "high" access type) is not a field of ours.
        assert_eq!(
            Field::from_encoding(0x4402),
            Some(Field::Field32(Field32::ExitReason))
        );
        assert_eq!(Field::from_encoding(0x0001), None);
    }

    /// SDM Vol. 3D §B: bit 0 access type (full), bits 11:10 type, bits 14:13 width, bits 12 and
    /// 15 and 31:16 reserved (0), for every variant.
    #[test]
    fn every_encoding_follows_the_structure_of_appendix_b() {
        fn check<T: Copy + core::fmt::Debug>(
            all: &[T],
            width: FieldWidth,
            encoding: fn(T) -> u32,
            listed: fn(T) -> FieldType,
        ) {
            for &f in all {
                let e = encoding(f);
                assert_eq!(e & 1, 0, "{f:?} {e:#x}: not the full access type");
                assert_eq!(e & !0x6fff, 0, "{f:?} {e:#x}: reserved bits set");
                assert_eq!(FieldWidth::of(e), width, "{f:?} {e:#x}: width bits");
                assert_eq!(FieldType::of(e), listed(f), "{f:?} {e:#x}: type bits");
            }
        }
        check(
            Field16::ALL,
            FieldWidth::Bits16,
            Field16::encoding,
            Field16::listed_type,
        );
        check(
            Field64::ALL,
            FieldWidth::Bits64,
            Field64::encoding,
            Field64::listed_type,
        );
        check(
            Field32::ALL,
            FieldWidth::Bits32,
            Field32::encoding,
            Field32::listed_type,
        );
        check(
            FieldNatural::ALL,
            FieldWidth::Natural,
            FieldNatural::encoding,
            FieldNatural::listed_type,
        );
        assert_eq!(Field16::WIDTH, FieldWidth::Bits16);
        assert_eq!(Field64::WIDTH, FieldWidth::Bits64);
        assert_eq!(Field32::WIDTH, FieldWidth::Bits32);
        assert_eq!(FieldNatural::WIDTH, FieldWidth::Natural);
    }

    #[test]
    fn encodings_are_unique() {
        let all = every_field();
        let distinct: HashSet<u32> = all.iter().map(|f| f.encoding()).collect();
        assert_eq!(distinct.len(), all.len());
    }

    /// The values of SDM Vol. 3D Appendix B (§B.1–§B.4), transcribed a second time, separately
    /// from the enums, and covering every variant.
    #[test]
    fn encodings_match_the_appendix() {
        use Field::{Field16 as W16, Field32 as W32, Field64 as W64, FieldNatural as Nat};
        use Field16 as F16;
        use Field32 as F32;
        use Field64 as F64;
        use FieldNatural as FN;
        let table: &[(Field, u32)] = &[
            // B.1.1, B.1.2, B.1.3
            (W16(F16::VirtualProcessorIdentifier), 0x0000),
            (W16(F16::PostedInterruptNotificationVector), 0x0002),
            (W16(F16::EptpIndex), 0x0004),
            (W16(F16::GuestEsSelector), 0x0800),
            (W16(F16::GuestCsSelector), 0x0802),
            (W16(F16::GuestSsSelector), 0x0804),
            (W16(F16::GuestDsSelector), 0x0806),
            (W16(F16::GuestFsSelector), 0x0808),
            (W16(F16::GuestGsSelector), 0x080a),
            (W16(F16::GuestLdtrSelector), 0x080c),
            (W16(F16::GuestTrSelector), 0x080e),
            (W16(F16::GuestInterruptStatus), 0x0810),
            (W16(F16::PmlIndex), 0x0812),
            (W16(F16::HostEsSelector), 0x0c00),
            (W16(F16::HostCsSelector), 0x0c02),
            (W16(F16::HostSsSelector), 0x0c04),
            (W16(F16::HostDsSelector), 0x0c06),
            (W16(F16::HostFsSelector), 0x0c08),
            (W16(F16::HostGsSelector), 0x0c0a),
            (W16(F16::HostTrSelector), 0x0c0c),
            // B.2.1, B.2.2, B.2.3, B.2.4
            (W64(F64::IoBitmapA), 0x2000),
            (W64(F64::IoBitmapB), 0x2002),
            (W64(F64::MsrBitmaps), 0x2004),
            (W64(F64::VmExitMsrStoreAddress), 0x2006),
            (W64(F64::VmExitMsrLoadAddress), 0x2008),
            (W64(F64::VmEntryMsrLoadAddress), 0x200a),
            (W64(F64::PmlAddress), 0x200e),
            (W64(F64::TscOffset), 0x2010),
            (W64(F64::VirtualApicAddress), 0x2012),
            (W64(F64::ApicAccessAddress), 0x2014),
            (W64(F64::PostedInterruptDescriptorAddress), 0x2016),
            (W64(F64::EptPointer), 0x201a),
            (W64(F64::EoiExitBitmap0), 0x201c),
            (W64(F64::EoiExitBitmap1), 0x201e),
            (W64(F64::EoiExitBitmap2), 0x2020),
            (W64(F64::EoiExitBitmap3), 0x2022),
            (W64(F64::XssExitingBitmap), 0x202c),
            (W64(F64::TscMultiplier), 0x2032),
            (W64(F64::GuestPhysicalAddress), 0x2400),
            (W64(F64::VmcsLinkPointer), 0x2800),
            (W64(F64::GuestIa32Debugctl), 0x2802),
            (W64(F64::GuestIa32Pat), 0x2804),
            (W64(F64::GuestIa32Efer), 0x2806),
            (W64(F64::GuestIa32PerfGlobalCtrl), 0x2808),
            (W64(F64::GuestPdpte0), 0x280a),
            (W64(F64::GuestPdpte1), 0x280c),
            (W64(F64::GuestPdpte2), 0x280e),
            (W64(F64::GuestPdpte3), 0x2810),
            (W64(F64::HostIa32Pat), 0x2c00),
            (W64(F64::HostIa32Efer), 0x2c02),
            (W64(F64::HostIa32PerfGlobalCtrl), 0x2c04),
            // B.3.1, B.3.2, B.3.3, B.3.4
            (W32(F32::PinBasedVmExecutionControls), 0x4000),
            (W32(F32::PrimaryProcessorBasedVmExecutionControls), 0x4002),
            (W32(F32::ExceptionBitmap), 0x4004),
            (W32(F32::PageFaultErrorCodeMask), 0x4006),
            (W32(F32::PageFaultErrorCodeMatch), 0x4008),
            (W32(F32::Cr3TargetCount), 0x400a),
            (W32(F32::PrimaryVmExitControls), 0x400c),
            (W32(F32::VmExitMsrStoreCount), 0x400e),
            (W32(F32::VmExitMsrLoadCount), 0x4010),
            (W32(F32::VmEntryControls), 0x4012),
            (W32(F32::VmEntryMsrLoadCount), 0x4014),
            (W32(F32::VmEntryInterruptionInformation), 0x4016),
            (W32(F32::VmEntryExceptionErrorCode), 0x4018),
            (W32(F32::VmEntryInstructionLength), 0x401a),
            (W32(F32::TprThreshold), 0x401c),
            (W32(F32::SecondaryProcessorBasedVmExecutionControls), 0x401e),
            (W32(F32::PleGap), 0x4020),
            (W32(F32::PleWindow), 0x4022),
            (W32(F32::VmInstructionError), 0x4400),
            (W32(F32::ExitReason), 0x4402),
            (W32(F32::VmExitInterruptionInformation), 0x4404),
            (W32(F32::VmExitInterruptionErrorCode), 0x4406),
            (W32(F32::IdtVectoringInformation), 0x4408),
            (W32(F32::IdtVectoringErrorCode), 0x440a),
            (W32(F32::VmExitInstructionLength), 0x440c),
            (W32(F32::VmExitInstructionInformation), 0x440e),
            (W32(F32::GuestEsLimit), 0x4800),
            (W32(F32::GuestCsLimit), 0x4802),
            (W32(F32::GuestSsLimit), 0x4804),
            (W32(F32::GuestDsLimit), 0x4806),
            (W32(F32::GuestFsLimit), 0x4808),
            (W32(F32::GuestGsLimit), 0x480a),
            (W32(F32::GuestLdtrLimit), 0x480c),
            (W32(F32::GuestTrLimit), 0x480e),
            (W32(F32::GuestGdtrLimit), 0x4810),
            (W32(F32::GuestIdtrLimit), 0x4812),
            (W32(F32::GuestEsAccessRights), 0x4814),
            (W32(F32::GuestCsAccessRights), 0x4816),
            (W32(F32::GuestSsAccessRights), 0x4818),
            (W32(F32::GuestDsAccessRights), 0x481a),
            (W32(F32::GuestFsAccessRights), 0x481c),
            (W32(F32::GuestGsAccessRights), 0x481e),
            (W32(F32::GuestLdtrAccessRights), 0x4820),
            (W32(F32::GuestTrAccessRights), 0x4822),
            (W32(F32::GuestInterruptibilityState), 0x4824),
            (W32(F32::GuestActivityState), 0x4826),
            (W32(F32::GuestSmbase), 0x4828),
            (W32(F32::GuestIa32SysenterCs), 0x482a),
            (W32(F32::VmxPreemptionTimerValue), 0x482e),
            (W32(F32::HostIa32SysenterCs), 0x4c00),
            // B.4.1, B.4.2, B.4.3, B.4.4
            (Nat(FN::Cr0GuestHostMask), 0x6000),
            (Nat(FN::Cr4GuestHostMask), 0x6002),
            (Nat(FN::Cr0ReadShadow), 0x6004),
            (Nat(FN::Cr4ReadShadow), 0x6006),
            (Nat(FN::Cr3TargetValue0), 0x6008),
            (Nat(FN::Cr3TargetValue1), 0x600a),
            (Nat(FN::Cr3TargetValue2), 0x600c),
            (Nat(FN::Cr3TargetValue3), 0x600e),
            (Nat(FN::ExitQualification), 0x6400),
            (Nat(FN::IoRcx), 0x6402),
            (Nat(FN::IoRsi), 0x6404),
            (Nat(FN::IoRdi), 0x6406),
            (Nat(FN::IoRip), 0x6408),
            (Nat(FN::GuestLinearAddress), 0x640a),
            (Nat(FN::GuestCr0), 0x6800),
            (Nat(FN::GuestCr3), 0x6802),
            (Nat(FN::GuestCr4), 0x6804),
            (Nat(FN::GuestEsBase), 0x6806),
            (Nat(FN::GuestCsBase), 0x6808),
            (Nat(FN::GuestSsBase), 0x680a),
            (Nat(FN::GuestDsBase), 0x680c),
            (Nat(FN::GuestFsBase), 0x680e),
            (Nat(FN::GuestGsBase), 0x6810),
            (Nat(FN::GuestLdtrBase), 0x6812),
            (Nat(FN::GuestTrBase), 0x6814),
            (Nat(FN::GuestGdtrBase), 0x6816),
            (Nat(FN::GuestIdtrBase), 0x6818),
            (Nat(FN::GuestDr7), 0x681a),
            (Nat(FN::GuestRsp), 0x681c),
            (Nat(FN::GuestRip), 0x681e),
            (Nat(FN::GuestRflags), 0x6820),
            (Nat(FN::GuestPendingDebugExceptions), 0x6822),
            (Nat(FN::GuestIa32SysenterEsp), 0x6824),
            (Nat(FN::GuestIa32SysenterEip), 0x6826),
            (Nat(FN::HostCr0), 0x6c00),
            (Nat(FN::HostCr3), 0x6c02),
            (Nat(FN::HostCr4), 0x6c04),
            (Nat(FN::HostFsBase), 0x6c06),
            (Nat(FN::HostGsBase), 0x6c08),
            (Nat(FN::HostTrBase), 0x6c0a),
            (Nat(FN::HostGdtrBase), 0x6c0c),
            (Nat(FN::HostIdtrBase), 0x6c0e),
            (Nat(FN::HostIa32SysenterEsp), 0x6c10),
            (Nat(FN::HostIa32SysenterEip), 0x6c12),
            (Nat(FN::HostRsp), 0x6c14),
            (Nat(FN::HostRip), 0x6c16),
        ];
        for &(field, expected) in table {
            assert_eq!(field.encoding(), expected, "{field:?}");
        }
        // Every variant is in the table exactly once.
        let listed: HashSet<Field> = table.iter().map(|&(f, _)| f).collect();
        assert_eq!(listed.len(), table.len());
        let all = every_field();
        assert_eq!(all.len(), table.len());
        for f in all {
            assert!(listed.contains(&f), "{f:?} missing from the table");
        }
    }

    #[test]
    fn typed_accessors_use_the_right_field() {
        let mut vmcs = crate::test_util::FakeVmcs::default();
        vmcs.write16(Field16::VirtualProcessorIdentifier, 7)
            .unwrap();
        vmcs.write32(Field32::ExceptionBitmap, 1 << 14).unwrap();
        vmcs.write64(Field64::EptPointer, 0x1234_501e).unwrap();
        vmcs.write_natural(FieldNatural::HostRip, 0xffff_8000_0000_1000)
            .unwrap();
        assert_eq!(vmcs.get(0x0000), Some(7));
        assert_eq!(vmcs.get(0x4004), Some(1 << 14));
        assert_eq!(vmcs.get(0x201a), Some(0x1234_501e));
        assert_eq!(
            vmcs.read_natural(FieldNatural::HostRip),
            Ok(0xffff_8000_0000_1000)
        );
        assert_eq!(vmcs.read16(Field16::VirtualProcessorIdentifier), Ok(7));
        assert_eq!(Field::from(Field32::ExitReason).width(), FieldWidth::Bits32);
        assert_eq!(
            Field::from(Field64::GuestPhysicalAddress).field_type(),
            FieldType::ExitInformation
        );
    }
}
