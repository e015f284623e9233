//! The virtual machine control block.
//!
//! This module owns [`Vmcb`], the 4 KiB page VMRUN takes (AMD64 APM Vol. 2 §15.5.1 and
//! Appendix B "Layout of VMCB"), and its typed fields: one `#[repr(u16)]` enum per field width
//! ([`Field8`], [`Field16`], [`Field32`], [`Field64`]) whose discriminant is the byte offset in
//! the page, so a value of the wrong width cannot be written to a field. The control area
//! (Table B-1) is at 000h–3FFh, the state-save area (Table B-2) at 400h; offsets here are from
//! the start of the page (Table B-2 lists them from 400h).
//!
//! It also owns the formats of the control words that are not intercepts: segment registers
//! with their compressed attribute word ([`Segment`], [`SegmentAttributes`]), TLB control
//! ([`TlbControl`], §15.16), virtual interrupt control ([`VirtualInterruptControl`], §15.21),
//! nested paging enable ([`NestedControl`], §15.25), LBR and VMSAVE/VMLOAD virtualization
//! ([`VirtualizationExtensions`]) and the VMCB clean bits ([`CleanBits`], "VMCB State
//! Caching", §15.15).
//!
//! The processor reads and writes the page only while a VMRUN on it is in progress (and on
//! VMLOAD/VMSAVE of it), so plain memory accesses between runs are enough.

use crate::error::{check_page_aligned, Error, Structure};
use crate::exit::{Event, ExitCode};
use crate::intercepts::{
    CrIntercepts, DrIntercepts, ExceptionIntercepts, Intercepts, MiscIntercepts1, MiscIntercepts2,
    MiscIntercepts3,
};
use bitflags::bitflags;
use boot::addr::HostPhysAddr;

/// Size (and required alignment) of a VMCB.
pub const VMCB_SIZE: usize = 4096;
/// Offset of the state-save area (APM Vol. 2 Appendix B, Table B-2).
pub const STATE_SAVE_AREA: usize = 0x400;
/// Offset of the guest instruction bytes (Table B-1, 0D1h–0DFh): with decode assists, the
/// bytes fetched at guest RIP for a nested page fault or an intercepted #PF (APM Vol. 2
/// §15.33); their count is [`Field8::GuestInstructionBytesFetched`].
pub const GUEST_INSTRUCTION_BYTES: usize = 0xD1;
/// The most guest instruction bytes the VMCB holds.
pub const GUEST_INSTRUCTION_BYTES_LEN: usize = 15;

/// Defines one width's field enum: discriminant = byte offset in the VMCB page, with a
/// compile-time check that the field lies inside the page.
macro_rules! vmcb_fields {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $ty:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $off:literal; )*
        }
    ) => {
        $(#[$meta])*
        #[repr(u16)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $off, )*
        }

        impl $name {
            /// Every field of this width atoll knows.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];
            /// Width in bytes.
            pub const WIDTH: usize = core::mem::size_of::<$ty>();

            /// Byte offset from the start of the VMCB.
            pub const fn offset(self) -> usize {
                self as usize
            }
        }

        // Every field lies inside the page, so the accessors below never index out of bounds.
        const _: () = { $( assert!($off + core::mem::size_of::<$ty>() <= VMCB_SIZE); )* };
    };
}

vmcb_fields! {
    /// 8-bit fields (APM Vol. 2 Tables B-1 and B-2).
    pub enum Field8: u8 {
        /// 05Ch: TLB_CONTROL, see [`TlbControl`] (§15.16).
        TlbControl = 0x05C;
        /// 0D0h: number of guest instruction bytes fetched (decode assists, §15.33).
        GuestInstructionBytesFetched = 0x0D0;
        /// 4CBh: CPL (Table B-2 offset 0CBh).
        Cpl = 0x4CB;
    }
}

vmcb_fields! {
    /// 16-bit fields (APM Vol. 2 Tables B-1 and B-2). Segment attributes use the format of
    /// [`SegmentAttributes`].
    pub enum Field16: u16 {
        /// 03Ch: PAUSE filter threshold (cycles between PAUSEs that reset the count, §15.14.4).
        PauseFilterThreshold = 0x03C;
        /// 03Eh: PAUSE filter count (PAUSEs before a PAUSE intercept is taken).
        PauseFilterCount = 0x03E;
        /// 400h: ES selector.
        EsSelector = 0x400;
        /// 402h: ES attributes.
        EsAttrib = 0x402;
        /// 410h: CS selector.
        CsSelector = 0x410;
        /// 412h: CS attributes.
        CsAttrib = 0x412;
        /// 420h: SS selector.
        SsSelector = 0x420;
        /// 422h: SS attributes.
        SsAttrib = 0x422;
        /// 430h: DS selector.
        DsSelector = 0x430;
        /// 432h: DS attributes.
        DsAttrib = 0x432;
        /// 440h: FS selector.
        FsSelector = 0x440;
        /// 442h: FS attributes.
        FsAttrib = 0x442;
        /// 450h: GS selector.
        GsSelector = 0x450;
        /// 452h: GS attributes.
        GsAttrib = 0x452;
        /// 460h: GDTR selector (reserved).
        GdtrSelector = 0x460;
        /// 462h: GDTR attributes (reserved).
        GdtrAttrib = 0x462;
        /// 470h: LDTR selector.
        LdtrSelector = 0x470;
        /// 472h: LDTR attributes.
        LdtrAttrib = 0x472;
        /// 480h: IDTR selector (reserved).
        IdtrSelector = 0x480;
        /// 482h: IDTR attributes (reserved).
        IdtrAttrib = 0x482;
        /// 490h: TR selector.
        TrSelector = 0x490;
        /// 492h: TR attributes.
        TrAttrib = 0x492;
    }
}

vmcb_fields! {
    /// 32-bit fields (APM Vol. 2 Tables B-1 and B-2).
    pub enum Field32: u32 {
        /// 000h: CR intercepts, bits 15:0 reads and 31:16 writes ([`CrIntercepts`]).
        InterceptCr = 0x000;
        /// 004h: DR intercepts, bits 15:0 reads and 31:16 writes ([`DrIntercepts`]).
        InterceptDr = 0x004;
        /// 008h: exception intercepts ([`ExceptionIntercepts`]).
        InterceptExceptions = 0x008;
        /// 00Ch: first miscellaneous intercept vector ([`MiscIntercepts1`]).
        InterceptMisc1 = 0x00C;
        /// 010h: second miscellaneous intercept vector ([`MiscIntercepts2`]).
        InterceptMisc2 = 0x010;
        /// 014h: third miscellaneous intercept vector ([`MiscIntercepts3`]).
        InterceptMisc3 = 0x014;
        /// 058h: guest ASID (0 is the host's; §15.16).
        GuestAsid = 0x058;
        /// 0C0h: VMCB clean bits ([`CleanBits`]).
        CleanBits = 0x0C0;
        /// 404h: ES limit.
        EsLimit = 0x404;
        /// 414h: CS limit.
        CsLimit = 0x414;
        /// 424h: SS limit.
        SsLimit = 0x424;
        /// 434h: DS limit.
        DsLimit = 0x434;
        /// 444h: FS limit.
        FsLimit = 0x444;
        /// 454h: GS limit.
        GsLimit = 0x454;
        /// 464h: GDTR limit.
        GdtrLimit = 0x464;
        /// 474h: LDTR limit.
        LdtrLimit = 0x474;
        /// 484h: IDTR limit.
        IdtrLimit = 0x484;
        /// 494h: TR limit.
        TrLimit = 0x494;
    }
}

vmcb_fields! {
    /// 64-bit fields (APM Vol. 2 Tables B-1 and B-2).
    pub enum Field64: u64 {
        /// 040h: IOPM_BASE_PA, physical address of the I/O permission map (§15.10.1).
        IopmBasePa = 0x040;
        /// 048h: MSRPM_BASE_PA, physical address of the MSR permission map (§15.11).
        MsrpmBasePa = 0x048;
        /// 050h: TSC_OFFSET, added to the TSC the guest reads.
        TscOffset = 0x050;
        /// 060h: V_TPR, V_IRQ, VGIF, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, AVIC enable,
        /// V_INTR_VECTOR ([`VirtualInterruptControl`], §15.21).
        VirtualInterrupt = 0x060;
        /// 068h: interrupt shadow and guest interrupt mask ([`InterruptState`]).
        InterruptState = 0x068;
        /// 070h: EXITCODE ([`ExitCode`], Appendix C).
        ExitCode = 0x070;
        /// 078h: EXITINFO1.
        ExitInfo1 = 0x078;
        /// 080h: EXITINFO2.
        ExitInfo2 = 0x080;
        /// 088h: EXITINTINFO, the event being delivered when the exit happened (§15.7.2).
        ExitIntInfo = 0x088;
        /// 090h: NP_ENABLE and SEV enables ([`NestedControl`]).
        NestedControl = 0x090;
        /// 098h: AVIC APIC_BAR (§15.29).
        AvicApicBar = 0x098;
        /// 0A0h: guest physical address of the GHCB (SEV-ES).
        GhcbPa = 0x0A0;
        /// 0A8h: EVENTINJ ([`Event`], §15.20).
        EventInjection = 0x0A8;
        /// 0B0h: N_CR3, the nested page table root (§15.25).
        NestedCr3 = 0x0B0;
        /// 0B8h: LBR virtualization and virtual VMSAVE/VMLOAD enables
        /// ([`VirtualizationExtensions`]).
        VirtualizationExtensions = 0x0B8;
        /// 0C8h: nRIP, the guest RIP after the intercepted instruction (NRIP save, §15.7.1).
        NextRip = 0x0C8;
        /// 0E0h: AVIC backing page pointer.
        AvicBackingPage = 0x0E0;
        /// 0F0h: AVIC logical table pointer.
        AvicLogicalTable = 0x0F0;
        /// 0F8h: AVIC physical table pointer (bits 7:0: highest index).
        AvicPhysicalTable = 0x0F8;
        /// 108h: VMSA pointer (SEV-ES).
        VmsaPa = 0x108;
        /// 408h: ES base.
        EsBase = 0x408;
        /// 418h: CS base.
        CsBase = 0x418;
        /// 428h: SS base.
        SsBase = 0x428;
        /// 438h: DS base.
        DsBase = 0x438;
        /// 448h: FS base.
        FsBase = 0x448;
        /// 458h: GS base.
        GsBase = 0x458;
        /// 468h: GDTR base.
        GdtrBase = 0x468;
        /// 478h: LDTR base.
        LdtrBase = 0x478;
        /// 488h: IDTR base.
        IdtrBase = 0x488;
        /// 498h: TR base.
        TrBase = 0x498;
        /// 4D0h: EFER.
        Efer = 0x4D0;
        /// 548h: CR4.
        Cr4 = 0x548;
        /// 550h: CR3.
        Cr3 = 0x550;
        /// 558h: CR0.
        Cr0 = 0x558;
        /// 560h: DR7.
        Dr7 = 0x560;
        /// 568h: DR6.
        Dr6 = 0x568;
        /// 570h: RFLAGS.
        Rflags = 0x570;
        /// 578h: RIP.
        Rip = 0x578;
        /// 5D8h: RSP.
        Rsp = 0x5D8;
        /// 5E0h: S_CET.
        SCet = 0x5E0;
        /// 5E8h: SSP.
        Ssp = 0x5E8;
        /// 5F0h: ISST_ADDR.
        IsstAddr = 0x5F0;
        /// 5F8h: RAX (VMRUN loads it; the stub never switches it).
        Rax = 0x5F8;
        /// 600h: STAR (VMLOAD/VMSAVE state).
        Star = 0x600;
        /// 608h: LSTAR (VMLOAD/VMSAVE state).
        Lstar = 0x608;
        /// 610h: CSTAR (VMLOAD/VMSAVE state).
        Cstar = 0x610;
        /// 618h: SFMASK (VMLOAD/VMSAVE state).
        Sfmask = 0x618;
        /// 620h: KernelGSbase (VMLOAD/VMSAVE state).
        KernelGsBase = 0x620;
        /// 628h: SYSENTER_CS (VMLOAD/VMSAVE state).
        SysenterCs = 0x628;
        /// 630h: SYSENTER_ESP (VMLOAD/VMSAVE state).
        SysenterEsp = 0x630;
        /// 638h: SYSENTER_EIP (VMLOAD/VMSAVE state).
        SysenterEip = 0x638;
        /// 640h: CR2.
        Cr2 = 0x640;
        /// 668h: G_PAT, the guest PAT under nested paging.
        GPat = 0x668;
        /// 670h: DBGCTL (with LBR virtualization).
        DbgCtl = 0x670;
        /// 678h: BR_FROM (with LBR virtualization).
        BrFrom = 0x678;
        /// 680h: BR_TO (with LBR virtualization).
        BrTo = 0x680;
        /// 688h: LASTEXCPFROM (with LBR virtualization).
        LastExcpFrom = 0x688;
        /// 690h: LASTEXCPTO (with LBR virtualization).
        LastExcpTo = 0x690;
        /// 6E0h: SPEC_CTRL (guest value, when CPUID Fn8000_000A EDX.SpecCtrl is set).
        SpecCtrl = 0x6E0;
    }
}

/// A segment register in the state-save area (APM Vol. 2 Table B-2, 400h–49Fh: ten 16-byte
/// entries of selector, attributes, limit and base).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentRegister {
    /// ES, 400h.
    Es,
    /// CS, 410h.
    Cs,
    /// SS, 420h.
    Ss,
    /// DS, 430h.
    Ds,
    /// FS, 440h.
    Fs,
    /// GS, 450h.
    Gs,
    /// GDTR, 460h (only limit and base are used).
    Gdtr,
    /// LDTR, 470h.
    Ldtr,
    /// IDTR, 480h (only limit and base are used).
    Idtr,
    /// TR, 490h.
    Tr,
}

impl SegmentRegister {
    /// All ten, in VMCB order.
    pub const ALL: [Self; 10] = [
        Self::Es,
        Self::Cs,
        Self::Ss,
        Self::Ds,
        Self::Fs,
        Self::Gs,
        Self::Gdtr,
        Self::Ldtr,
        Self::Idtr,
        Self::Tr,
    ];

    /// The segment register numbered `n` in the x86 encoding (0 ES, 1 CS, 2 SS, 3 DS, 4 FS,
    /// 5 GS), as the IOIO EXITINFO1 SEG field uses it; `None` for 6 and 7.
    pub const fn from_sreg_number(n: u64) -> Option<Self> {
        match n {
            0 => Some(Self::Es),
            1 => Some(Self::Cs),
            2 => Some(Self::Ss),
            3 => Some(Self::Ds),
            4 => Some(Self::Fs),
            5 => Some(Self::Gs),
            _ => None,
        }
    }

    /// The selector field.
    pub const fn selector_field(self) -> Field16 {
        match self {
            Self::Es => Field16::EsSelector,
            Self::Cs => Field16::CsSelector,
            Self::Ss => Field16::SsSelector,
            Self::Ds => Field16::DsSelector,
            Self::Fs => Field16::FsSelector,
            Self::Gs => Field16::GsSelector,
            Self::Gdtr => Field16::GdtrSelector,
            Self::Ldtr => Field16::LdtrSelector,
            Self::Idtr => Field16::IdtrSelector,
            Self::Tr => Field16::TrSelector,
        }
    }

    /// The attribute field.
    pub const fn attrib_field(self) -> Field16 {
        match self {
            Self::Es => Field16::EsAttrib,
            Self::Cs => Field16::CsAttrib,
            Self::Ss => Field16::SsAttrib,
            Self::Ds => Field16::DsAttrib,
            Self::Fs => Field16::FsAttrib,
            Self::Gs => Field16::GsAttrib,
            Self::Gdtr => Field16::GdtrAttrib,
            Self::Ldtr => Field16::LdtrAttrib,
            Self::Idtr => Field16::IdtrAttrib,
            Self::Tr => Field16::TrAttrib,
        }
    }

    /// The limit field.
    pub const fn limit_field(self) -> Field32 {
        match self {
            Self::Es => Field32::EsLimit,
            Self::Cs => Field32::CsLimit,
            Self::Ss => Field32::SsLimit,
            Self::Ds => Field32::DsLimit,
            Self::Fs => Field32::FsLimit,
            Self::Gs => Field32::GsLimit,
            Self::Gdtr => Field32::GdtrLimit,
            Self::Ldtr => Field32::LdtrLimit,
            Self::Idtr => Field32::IdtrLimit,
            Self::Tr => Field32::TrLimit,
        }
    }

    /// The base field.
    pub const fn base_field(self) -> Field64 {
        match self {
            Self::Es => Field64::EsBase,
            Self::Cs => Field64::CsBase,
            Self::Ss => Field64::SsBase,
            Self::Ds => Field64::DsBase,
            Self::Fs => Field64::FsBase,
            Self::Gs => Field64::GsBase,
            Self::Gdtr => Field64::GdtrBase,
            Self::Ldtr => Field64::LdtrBase,
            Self::Idtr => Field64::IdtrBase,
            Self::Tr => Field64::TrBase,
        }
    }
}

/// A segment's attributes in the VMCB's compressed 12-bit form (APM Vol. 2 §15.5.1, Table
/// B-2 "attrib"): bits 7:0 are bits 15:8 of the descriptor's high doubleword (type, S, DPL,
/// P), bits 11:8 are its bits 23:20 (AVL, L, D/B, G). The limit's bits 19:16, which sit
/// between them in the descriptor, are not part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SegmentAttributes(u16);

impl SegmentAttributes {
    /// Flat 64-bit code: type 0xB (execute/read, accessed), S, DPL 0, P, L.
    pub const CODE64: Self = Self(0x29B);
    /// Flat data: type 0x3 (read/write, accessed), S, DPL 0, P, D/B, G.
    pub const DATA: Self = Self(0xC93);
    /// A busy 64-bit TSS: type 0xB, P.
    pub const TSS64_BUSY: Self = Self(0x8B);
    /// An LDT: type 0x2, P.
    pub const LDT: Self = Self(0x82);

    /// The attributes `raw`; bits 15:12 (reserved) are dropped.
    pub const fn from_raw(raw: u16) -> Self {
        Self(raw & 0xFFF)
    }

    /// The 12-bit value.
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// The attributes of a segment descriptor (the 8-byte entry as a little-endian `u64`).
    pub const fn from_descriptor(descriptor: u64) -> Self {
        let high = (descriptor >> 32) as u32;
        Self((((high >> 8) & 0xFF) | (((high >> 20) & 0xF) << 8)) as u16)
    }

    /// The descriptor bits these attributes stand for (bits 47:40 and 55:52 of the 8-byte
    /// entry; base and limit bits zero). `from_descriptor(a.to_descriptor_bits()) == a`.
    pub const fn to_descriptor_bits(self) -> u64 {
        let low = (self.0 & 0xFF) as u64;
        let high = ((self.0 >> 8) & 0xF) as u64;
        (low << 40) | (high << 52)
    }

    /// From VMX-style access rights (SDM Vol. 3C Table 25-2: bits 7:0 and 15:12 as here, bit
    /// 16 "unusable"); an unusable segment becomes all-zero attributes (not present).
    pub const fn from_access_rights(ar: u32) -> Self {
        if ar & (1 << 16) != 0 {
            return Self(0);
        }
        Self(((ar & 0xFF) | ((ar >> 4) & 0xF00)) as u16)
    }

    /// To VMX-style access rights (the vendor-neutral form atoll's vCPU layer uses); a
    /// segment that is not present is reported unusable (bit 16).
    pub const fn to_access_rights(self) -> u32 {
        let ar = ((self.0 & 0xFF) as u32) | (((self.0 & 0xF00) as u32) << 4);
        if self.present() {
            ar
        } else {
            ar | (1 << 16)
        }
    }

    /// Bits 3:0: segment type.
    pub const fn segment_type(self) -> u8 {
        (self.0 & 0xF) as u8
    }

    /// Bit 4: S, code or data (otherwise system).
    pub const fn code_or_data(self) -> bool {
        self.0 & (1 << 4) != 0
    }

    /// Bits 6:5: DPL.
    pub const fn dpl(self) -> u8 {
        ((self.0 >> 5) & 3) as u8
    }

    /// Bit 7: P, present.
    pub const fn present(self) -> bool {
        self.0 & (1 << 7) != 0
    }

    /// Bit 8: AVL.
    pub const fn available(self) -> bool {
        self.0 & (1 << 8) != 0
    }

    /// Bit 9: L, 64-bit code.
    pub const fn long_mode(self) -> bool {
        self.0 & (1 << 9) != 0
    }

    /// Bit 10: D/B, default operation size 32 bits.
    pub const fn default_big(self) -> bool {
        self.0 & (1 << 10) != 0
    }

    /// Bit 11: G, limit in 4 KiB units.
    pub const fn granularity(self) -> bool {
        self.0 & (1 << 11) != 0
    }
}

/// One segment register as the state-save area holds it (APM Vol. 2 Table B-2). The limit is
/// byte-granular (already expanded when the descriptor's G bit is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Attributes.
    pub attrib: SegmentAttributes,
    /// Limit in bytes, minus one.
    pub limit: u32,
    /// Base address.
    pub base: u64,
}

impl Segment {
    /// The segment a code or data descriptor (8 bytes, as a little-endian `u64`) loads with
    /// `selector`: base bits 31:0, the limit expanded by G, the attributes.
    pub const fn from_descriptor(selector: u16, descriptor: u64) -> Self {
        let base = ((descriptor >> 16) & 0xFF_FFFF) | (((descriptor >> 56) & 0xFF) << 24);
        let raw_limit = ((descriptor & 0xFFFF) | (((descriptor >> 48) & 0xF) << 16)) as u32;
        let attrib = SegmentAttributes::from_descriptor(descriptor);
        let limit = if attrib.granularity() {
            (raw_limit << 12) | 0xFFF
        } else {
            raw_limit
        };
        Self {
            selector,
            attrib,
            limit,
            base,
        }
    }

    /// The segment a 16-byte long-mode system descriptor (LDT or TSS; `low` and `high` are
    /// its two quadwords) loads with `selector`: as [`Segment::from_descriptor`], with base
    /// bits 63:32 from `high`.
    pub const fn from_system_descriptor(selector: u16, low: u64, high: u64) -> Self {
        let s = Self::from_descriptor(selector, low);
        Self {
            base: s.base | ((high & 0xFFFF_FFFF) << 32),
            ..s
        }
    }
}

/// TLB_CONTROL values (APM Vol. 2 Table B-1 offset 05Ch; §15.16 "TLB Control").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TlbControl {
    /// 0: do nothing.
    DoNothing = 0,
    /// 1: flush the entire TLB, every ASID, on VMRUN.
    FlushAll = 1,
    /// 3: flush this guest's TLB entries (needs CPUID Fn8000_000A EDX.FlushByAsid).
    FlushAsid = 3,
    /// 7: flush this guest's non-global TLB entries (needs FlushByAsid).
    FlushAsidNonGlobal = 7,
}

impl TlbControl {
    /// The value `raw` names; `None` for the reserved encodings.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::DoNothing),
            1 => Some(Self::FlushAll),
            3 => Some(Self::FlushAsid),
            7 => Some(Self::FlushAsidNonGlobal),
            _ => None,
        }
    }
}

bitflags! {
    /// Virtual interrupt control, VMCB offset 060h (APM Vol. 2 Table B-1; §15.21 "Interrupt
    /// and Local APIC Support"). The multi-bit fields V_TPR (7:0), V_INTR_PRIO (19:16) and
    /// V_INTR_VECTOR (39:32) have accessors.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VirtualInterruptControl: u64 {
        /// Bit 8: V_IRQ, a virtual interrupt is pending.
        const V_IRQ = 1 << 8;
        /// Bit 9: VGIF, the virtual global interrupt flag (with VGIF enabled).
        const VGIF = 1 << 9;
        /// Bit 11: V_NMI, a virtual NMI is pending.
        const V_NMI = 1 << 11;
        /// Bit 12: V_NMI_MASK, virtual NMIs are blocked.
        const V_NMI_MASK = 1 << 12;
        /// Bit 20: V_IGN_TPR, the pending virtual interrupt ignores V_TPR.
        const V_IGN_TPR = 1 << 20;
        /// Bit 24: V_INTR_MASKING, virtualize RFLAGS.IF and CR8 (the host's IF masks
        /// physical interrupts, the guest's only virtual ones).
        const V_INTR_MASKING = 1 << 24;
        /// Bit 25: virtual GIF enabled.
        const VGIF_ENABLE = 1 << 25;
        /// Bit 26: virtual NMI enabled.
        const V_NMI_ENABLE = 1 << 26;
        /// Bit 30: x2AVIC enabled.
        const X2AVIC_ENABLE = 1 << 30;
        /// Bit 31: AVIC enabled.
        const AVIC_ENABLE = 1 << 31;
        // The multi-bit fields are part of the value.
        const _ = !0;
    }
}

impl VirtualInterruptControl {
    /// Bits 7:0: V_TPR.
    pub const fn v_tpr(self) -> u8 {
        self.bits() as u8
    }

    /// With V_TPR = `tpr`.
    pub const fn with_v_tpr(self, tpr: u8) -> Self {
        Self::from_bits_retain((self.bits() & !0xFF) | tpr as u64)
    }

    /// Bits 19:16: V_INTR_PRIO, priority of the pending virtual interrupt.
    pub const fn v_intr_prio(self) -> u8 {
        ((self.bits() >> 16) & 0xF) as u8
    }

    /// With V_INTR_PRIO = `prio` (low four bits).
    pub const fn with_v_intr_prio(self, prio: u8) -> Self {
        Self::from_bits_retain((self.bits() & !(0xF << 16)) | (((prio & 0xF) as u64) << 16))
    }

    /// Bits 39:32: V_INTR_VECTOR, vector of the pending virtual interrupt.
    pub const fn v_intr_vector(self) -> u8 {
        (self.bits() >> 32) as u8
    }

    /// With V_INTR_VECTOR = `vector`.
    pub const fn with_v_intr_vector(self, vector: u8) -> Self {
        Self::from_bits_retain((self.bits() & !(0xFF << 32)) | ((vector as u64) << 32))
    }

    /// With a virtual interrupt pending that the guest takes as soon as it can take any
    /// interrupt (RFLAGS.IF set, no interrupt shadow): V_IRQ, the highest V_INTR_PRIO (0xF),
    /// V_IGN_TPR, vector 0. With the VINTR intercept set, taking it is a #VMEXIT VINTR before
    /// delivery, so it is never delivered: the usual way to wait for an interrupt window (APM
    /// Vol. 2 §15.21 "Interrupt and Local APIC Support"). Other bits are kept.
    pub const fn with_interrupt_window_request(self) -> Self {
        Self::from_bits_retain(self.bits() | Self::V_IRQ.bits() | Self::V_IGN_TPR.bits())
            .with_v_intr_prio(0xF)
            .with_v_intr_vector(0)
    }

    /// Without the pending virtual interrupt of [`Self::with_interrupt_window_request`]: V_IRQ
    /// and V_IGN_TPR clear, V_INTR_PRIO 0. Other bits are kept.
    pub const fn without_interrupt_window_request(self) -> Self {
        Self::from_bits_retain(self.bits() & !(Self::V_IRQ.bits() | Self::V_IGN_TPR.bits()))
            .with_v_intr_prio(0)
    }
}

bitflags! {
    /// Guest interrupt state, VMCB offset 068h (APM Vol. 2 Table B-1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct InterruptState: u64 {
        /// Bit 0: the guest is in an interrupt shadow (after MOV SS or STI).
        const INTERRUPT_SHADOW = 1 << 0;
        /// Bit 1: the guest's RFLAGS.IF at #VMEXIT (written by the processor with
        /// V_INTR_MASKING).
        const GUEST_INTERRUPT_MASK = 1 << 1;
    }
}

bitflags! {
    /// Nested paging and SEV enables, VMCB offset 090h (APM Vol. 2 Table B-1; §15.25
    /// "Nested Paging").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct NestedControl: u64 {
        /// Bit 0: NP_ENABLE, nested paging through N_CR3.
        const NP_ENABLE = 1 << 0;
        /// Bit 1: SEV enabled.
        const SEV_ENABLE = 1 << 1;
        /// Bit 2: SEV-ES enabled.
        const SEV_ES_ENABLE = 1 << 2;
        /// Bit 3: guest-mode execute trap (GMET).
        const GMET_ENABLE = 1 << 3;
        // Later processors define more bits; they are kept as written.
        const _ = !0;
    }
}

bitflags! {
    /// LBR and VMSAVE/VMLOAD virtualization, VMCB offset 0B8h (APM Vol. 2 Table B-1; §15.23
    /// "Last Branch Record Virtualization").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VirtualizationExtensions: u64 {
        /// Bit 0: LBR virtualization (DBGCTL and the LBR MSRs switched through the VMCB).
        const LBR_VIRTUALIZATION = 1 << 0;
        /// Bit 1: virtualized VMSAVE/VMLOAD (for nested guests).
        const VIRTUAL_VMSAVE_VMLOAD = 1 << 1;
        // Later processors define more bits; they are kept as written.
        const _ = !0;
    }
}

bitflags! {
    /// VMCB clean bits, offset 0C0h (APM Vol. 2 "VMCB State Caching", §15.15): a set bit
    /// tells the processor the named fields did not change since the last VMRUN of this VMCB
    /// on this core, so it may use a cached copy. Only valid with CPUID Fn8000_000A
    /// EDX.VmcbClean; clear everything when the VMCB moves to another core or its physical
    /// address changes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct CleanBits: u32 {
        /// Bit 0: intercept vectors, TSC offset, PAUSE filter.
        const INTERCEPTS = 1 << 0;
        /// Bit 1: IOPM_BASE_PA and MSRPM_BASE_PA.
        const IOPM = 1 << 1;
        /// Bit 2: ASID.
        const ASID = 1 << 2;
        /// Bit 3: V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, V_INTR_VECTOR.
        const TPR = 1 << 3;
        /// Bit 4: NP_ENABLE, N_CR3, G_PAT.
        const NP = 1 << 4;
        /// Bit 5: CR0, CR3, CR4, EFER.
        const CRX = 1 << 5;
        /// Bit 6: DR6, DR7.
        const DRX = 1 << 6;
        /// Bit 7: GDTR and IDTR base and limit.
        const DT = 1 << 7;
        /// Bit 8: CS, DS, SS, ES selector, base, limit and attributes, and CPL.
        const SEG = 1 << 8;
        /// Bit 9: CR2.
        const CR2 = 1 << 9;
        /// Bit 10: DBGCTL, BR_FROM, BR_TO, LASTEXCPFROM, LASTEXCPTO.
        const LBR = 1 << 10;
        /// Bit 11: AVIC APIC_BAR, backing page, logical and physical table pointers.
        const AVIC = 1 << 11;
        /// Bit 12: S_CET, SSP, ISST_ADDR.
        const CET = 1 << 12;
    }
}

/// The virtual machine control block: one 4 KiB-aligned page (APM Vol. 2 Appendix B).
#[repr(C, align(4096))]
#[derive(Clone)]
pub struct Vmcb([u8; VMCB_SIZE]);

const _: () = assert!(core::mem::size_of::<Vmcb>() == VMCB_SIZE);
const _: () = assert!(core::mem::align_of::<Vmcb>() == VMCB_SIZE);

impl Default for Vmcb {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl core::fmt::Debug for Vmcb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vmcb")
            .field("exit_code", &self.exit_code())
            .field("exit_info1", &format_args!("{:#x}", self.exit_info1()))
            .field("exit_info2", &format_args!("{:#x}", self.exit_info2()))
            .field("asid", &self.asid())
            .field("rip", &format_args!("{:#x}", self.read64(Field64::Rip)))
            .finish_non_exhaustive()
    }
}

impl Vmcb {
    /// An all-zero VMCB.
    pub const fn zeroed() -> Self {
        Self([0; VMCB_SIZE])
    }

    /// Zeroes every byte.
    pub fn clear(&mut self) {
        self.0.fill(0);
    }

    /// The raw page.
    pub const fn as_bytes(&self) -> &[u8; VMCB_SIZE] {
        &self.0
    }

    fn get<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.0[offset..offset + N]);
        out
    }

    fn put<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) {
        self.0[offset..offset + N].copy_from_slice(&bytes);
    }

    /// Reads an 8-bit field.
    pub fn read8(&self, field: Field8) -> u8 {
        self.0[field.offset()]
    }

    /// Writes an 8-bit field.
    pub fn write8(&mut self, field: Field8, value: u8) {
        self.0[field.offset()] = value;
    }

    /// Reads a 16-bit field.
    pub fn read16(&self, field: Field16) -> u16 {
        u16::from_le_bytes(self.get(field.offset()))
    }

    /// Writes a 16-bit field.
    pub fn write16(&mut self, field: Field16, value: u16) {
        self.put(field.offset(), value.to_le_bytes());
    }

    /// Reads a 32-bit field.
    pub fn read32(&self, field: Field32) -> u32 {
        u32::from_le_bytes(self.get(field.offset()))
    }

    /// Writes a 32-bit field. Writing [`Field32::InterceptMisc2`] keeps the VMRUN intercept
    /// set (APM Vol. 2 §15.5.1).
    pub fn write32(&mut self, field: Field32, value: u32) {
        let value = if field == Field32::InterceptMisc2 {
            value | MiscIntercepts2::REQUIRED.bits()
        } else {
            value
        };
        self.put(field.offset(), value.to_le_bytes());
    }

    /// Reads a 64-bit field.
    pub fn read64(&self, field: Field64) -> u64 {
        u64::from_le_bytes(self.get(field.offset()))
    }

    /// Writes a 64-bit field.
    pub fn write64(&mut self, field: Field64, value: u64) {
        self.put(field.offset(), value.to_le_bytes());
    }

    /// The six intercept words.
    pub fn intercepts(&self) -> Intercepts {
        Intercepts {
            cr: CrIntercepts::from_bits_retain(self.read32(Field32::InterceptCr)),
            dr: DrIntercepts::from_bits_retain(self.read32(Field32::InterceptDr)),
            exceptions: ExceptionIntercepts::from_bits_retain(
                self.read32(Field32::InterceptExceptions),
            ),
            misc1: MiscIntercepts1::from_bits_retain(self.read32(Field32::InterceptMisc1)),
            misc2: MiscIntercepts2::from_bits_retain(self.read32(Field32::InterceptMisc2)),
            misc3: MiscIntercepts3::from_bits_retain(self.read32(Field32::InterceptMisc3)),
        }
    }

    /// Writes the six intercept words, with VMRUN always intercepted.
    pub fn set_intercepts(&mut self, intercepts: &Intercepts) {
        let i = intercepts.with_required();
        self.write32(Field32::InterceptCr, i.cr.bits());
        self.write32(Field32::InterceptDr, i.dr.bits());
        self.write32(Field32::InterceptExceptions, i.exceptions.bits());
        self.write32(Field32::InterceptMisc1, i.misc1.bits());
        self.write32(Field32::InterceptMisc2, i.misc2.bits());
        self.write32(Field32::InterceptMisc3, i.misc3.bits());
    }

    /// Points IOPM_BASE_PA at a 12 KiB I/O permission map (§15.10.1); it must be 4 KiB
    /// aligned.
    pub fn set_iopm_base(&mut self, map: HostPhysAddr) -> Result<(), Error> {
        check_page_aligned(Structure::IoPermissionMap, map)?;
        self.write64(Field64::IopmBasePa, map.as_u64());
        Ok(())
    }

    /// Points MSRPM_BASE_PA at an 8 KiB MSR permission map (§15.11); it must be 4 KiB
    /// aligned.
    pub fn set_msrpm_base(&mut self, map: HostPhysAddr) -> Result<(), Error> {
        check_page_aligned(Structure::MsrPermissionMap, map)?;
        self.write64(Field64::MsrpmBasePa, map.as_u64());
        Ok(())
    }

    /// The guest ASID.
    pub fn asid(&self) -> u32 {
        self.read32(Field32::GuestAsid)
    }

    /// Sets the guest ASID. ASID 0 is the host's: VMRUN with it fails with VMEXIT_INVALID.
    pub fn set_asid(&mut self, asid: u32) {
        self.write32(Field32::GuestAsid, asid);
    }

    /// TLB_CONTROL; `None` for a reserved value.
    pub fn tlb_control(&self) -> Option<TlbControl> {
        TlbControl::from_raw(self.read8(Field8::TlbControl))
    }

    /// Sets TLB_CONTROL for the next VMRUN.
    pub fn set_tlb_control(&mut self, control: TlbControl) {
        self.write8(Field8::TlbControl, control as u8);
    }

    /// Virtual interrupt control.
    pub fn virtual_interrupt(&self) -> VirtualInterruptControl {
        VirtualInterruptControl::from_bits_retain(self.read64(Field64::VirtualInterrupt))
    }

    /// Sets virtual interrupt control.
    pub fn set_virtual_interrupt(&mut self, v: VirtualInterruptControl) {
        self.write64(Field64::VirtualInterrupt, v.bits());
    }

    /// Interrupt shadow and guest interrupt mask.
    pub fn interrupt_state(&self) -> InterruptState {
        InterruptState::from_bits_retain(self.read64(Field64::InterruptState))
    }

    /// Sets the interrupt shadow.
    pub fn set_interrupt_state(&mut self, s: InterruptState) {
        self.write64(Field64::InterruptState, s.bits());
    }

    /// The exit code of the last #VMEXIT, decoded ([`ExitCode::from_field`]: a negative code
    /// written as 32 bits counts as the negative code).
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from_field(self.read64(Field64::ExitCode))
    }

    /// EXITINFO1 of the last #VMEXIT.
    pub fn exit_info1(&self) -> u64 {
        self.read64(Field64::ExitInfo1)
    }

    /// EXITINFO2 of the last #VMEXIT.
    pub fn exit_info2(&self) -> u64 {
        self.read64(Field64::ExitInfo2)
    }

    /// EXITINTINFO: the event whose delivery the exit interrupted, to be re-injected; `None`
    /// when its valid bit is clear (§15.7.2).
    pub fn exit_int_info(&self) -> Option<Event> {
        Event::decode(self.read64(Field64::ExitIntInfo))
    }

    /// Nested paging and SEV enables.
    pub fn nested_control(&self) -> NestedControl {
        NestedControl::from_bits_retain(self.read64(Field64::NestedControl))
    }

    /// Sets nested paging and SEV enables.
    pub fn set_nested_control(&mut self, c: NestedControl) {
        self.write64(Field64::NestedControl, c.bits());
    }

    /// Sets N_CR3, the nested page table root (a CR3 value: the PML4 address with PWT/PCD).
    pub fn set_nested_cr3(&mut self, root: HostPhysAddr) {
        self.write64(Field64::NestedCr3, root.as_u64());
    }

    /// The event VMRUN will inject; `None` when the valid bit is clear.
    pub fn event_injection(&self) -> Option<Event> {
        Event::decode(self.read64(Field64::EventInjection))
    }

    /// Sets (or with `None` clears) the event the next VMRUN injects (§15.20). The processor
    /// clears the valid bit when it delivers the event.
    pub fn set_event_injection(&mut self, event: Option<Event>) {
        self.write64(
            Field64::EventInjection,
            match event {
                Some(e) => e.encode(),
                None => 0,
            },
        );
    }

    /// LBR and VMSAVE/VMLOAD virtualization enables.
    pub fn virtualization_extensions(&self) -> VirtualizationExtensions {
        VirtualizationExtensions::from_bits_retain(self.read64(Field64::VirtualizationExtensions))
    }

    /// Sets LBR and VMSAVE/VMLOAD virtualization enables.
    pub fn set_virtualization_extensions(&mut self, v: VirtualizationExtensions) {
        self.write64(Field64::VirtualizationExtensions, v.bits());
    }

    /// The VMCB clean bits.
    pub fn clean_bits(&self) -> CleanBits {
        CleanBits::from_bits_retain(self.read32(Field32::CleanBits))
    }

    /// Sets the VMCB clean bits.
    pub fn set_clean_bits(&mut self, bits: CleanBits) {
        self.write32(Field32::CleanBits, bits.bits());
    }

    /// nRIP: the RIP after the intercepted instruction, valid for instruction intercepts on
    /// processors with NRIP save (CPUID Fn8000_000A EDX.NRIPS); 0 otherwise.
    pub fn next_rip(&self) -> u64 {
        self.read64(Field64::NextRip)
    }

    /// The guest instruction bytes fetched for the last nested page fault or intercepted #PF
    /// (decode assists, APM Vol. 2 §15.33); empty without decode assists. A count above 15
    /// (which the processor never writes) is clamped.
    pub fn guest_instruction_bytes(&self) -> &[u8] {
        let n = (self.read8(Field8::GuestInstructionBytesFetched) as usize)
            .min(GUEST_INSTRUCTION_BYTES_LEN);
        &self.0[GUEST_INSTRUCTION_BYTES..GUEST_INSTRUCTION_BYTES + n]
    }

    /// A segment register of the state-save area.
    pub fn segment(&self, reg: SegmentRegister) -> Segment {
        Segment {
            selector: self.read16(reg.selector_field()),
            attrib: SegmentAttributes::from_raw(self.read16(reg.attrib_field())),
            limit: self.read32(reg.limit_field()),
            base: self.read64(reg.base_field()),
        }
    }

    /// Writes a segment register of the state-save area.
    pub fn set_segment(&mut self, reg: SegmentRegister, segment: Segment) {
        self.write16(reg.selector_field(), segment.selector);
        self.write16(reg.attrib_field(), segment.attrib.raw());
        self.write32(reg.limit_field(), segment.limit);
        self.write64(reg.base_field(), segment.base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::EventType;
    use std::collections::BTreeMap;

    /// APM Vol. 2 Table B-1 (control area), transcribed a second time, independently of the
    /// enums: (name, offset, width in bytes).
    const TABLE_B1: &[(&str, usize, usize)] = &[
        ("InterceptCr", 0x00, 4),
        ("InterceptDr", 0x04, 4),
        ("InterceptExceptions", 0x08, 4),
        ("InterceptMisc1", 0x0C, 4),
        ("InterceptMisc2", 0x10, 4),
        ("InterceptMisc3", 0x14, 4),
        ("PauseFilterThreshold", 0x3C, 2),
        ("PauseFilterCount", 0x3E, 2),
        ("IopmBasePa", 0x40, 8),
        ("MsrpmBasePa", 0x48, 8),
        ("TscOffset", 0x50, 8),
        ("GuestAsid", 0x58, 4),
        ("TlbControl", 0x5C, 1),
        ("VirtualInterrupt", 0x60, 8),
        ("InterruptState", 0x68, 8),
        ("ExitCode", 0x70, 8),
        ("ExitInfo1", 0x78, 8),
        ("ExitInfo2", 0x80, 8),
        ("ExitIntInfo", 0x88, 8),
        ("NestedControl", 0x90, 8),
        ("AvicApicBar", 0x98, 8),
        ("GhcbPa", 0xA0, 8),
        ("EventInjection", 0xA8, 8),
        ("NestedCr3", 0xB0, 8),
        ("VirtualizationExtensions", 0xB8, 8),
        ("CleanBits", 0xC0, 4),
        ("NextRip", 0xC8, 8),
        ("GuestInstructionBytesFetched", 0xD0, 1),
        ("AvicBackingPage", 0xE0, 8),
        ("AvicLogicalTable", 0xF0, 8),
        ("AvicPhysicalTable", 0xF8, 8),
        ("VmsaPa", 0x108, 8),
    ];

    /// APM Vol. 2 Table B-2 (state-save area), transcribed a second time with offsets as the
    /// table gives them (from the start of the save area); segments are listed separately.
    const TABLE_B2: &[(&str, usize, usize)] = &[
        ("Cpl", 0x0CB, 1),
        ("Efer", 0x0D0, 8),
        ("Cr4", 0x148, 8),
        ("Cr3", 0x150, 8),
        ("Cr0", 0x158, 8),
        ("Dr7", 0x160, 8),
        ("Dr6", 0x168, 8),
        ("Rflags", 0x170, 8),
        ("Rip", 0x178, 8),
        ("Rsp", 0x1D8, 8),
        ("SCet", 0x1E0, 8),
        ("Ssp", 0x1E8, 8),
        ("IsstAddr", 0x1F0, 8),
        ("Rax", 0x1F8, 8),
        ("Star", 0x200, 8),
        ("Lstar", 0x208, 8),
        ("Cstar", 0x210, 8),
        ("Sfmask", 0x218, 8),
        ("KernelGsBase", 0x220, 8),
        ("SysenterCs", 0x228, 8),
        ("SysenterEsp", 0x230, 8),
        ("SysenterEip", 0x238, 8),
        ("Cr2", 0x240, 8),
        ("GPat", 0x268, 8),
        ("DbgCtl", 0x270, 8),
        ("BrFrom", 0x278, 8),
        ("BrTo", 0x280, 8),
        ("LastExcpFrom", 0x288, 8),
        ("LastExcpTo", 0x290, 8),
        ("SpecCtrl", 0x2E0, 8),
    ];

    /// Table B-2's segment entries, 000h–09Fh of the save area, in order; each is selector
    /// (+0, 2 bytes), attrib (+2, 2), limit (+4, 4), base (+8, 8).
    const SEGMENTS: [&str; 10] = [
        "Es", "Cs", "Ss", "Ds", "Fs", "Gs", "Gdtr", "Ldtr", "Idtr", "Tr",
    ];

    /// The second transcription as name → (absolute offset, width).
    fn transcription() -> BTreeMap<String, (usize, usize)> {
        let mut t = BTreeMap::new();
        for &(name, off, width) in TABLE_B1 {
            assert!(off < 0x400, "{name} is not in the control area");
            assert!(t.insert(name.to_string(), (off, width)).is_none());
        }
        for &(name, off, width) in TABLE_B2 {
            assert!(t.insert(name.to_string(), (0x400 + off, width)).is_none());
        }
        for (i, seg) in SEGMENTS.iter().enumerate() {
            let base = 0x400 + 0x10 * i;
            for (suffix, off, width) in [
                ("Selector", 0, 2),
                ("Attrib", 2, 2),
                ("Limit", 4, 4),
                ("Base", 8, 8),
            ] {
                t.insert(format!("{seg}{suffix}"), (base + off, width));
            }
        }
        t
    }

    /// Every field the enums define, as name → (offset, width).
    fn enums() -> BTreeMap<String, (usize, usize)> {
        let mut m = BTreeMap::new();
        let mut add = |name: String, off: usize, width: usize| {
            assert!(
                m.insert(name.clone(), (off, width)).is_none(),
                "{name} twice"
            );
        };
        for f in Field8::ALL {
            add(format!("{f:?}"), f.offset(), Field8::WIDTH);
        }
        for f in Field16::ALL {
            add(format!("{f:?}"), f.offset(), Field16::WIDTH);
        }
        for f in Field32::ALL {
            add(format!("{f:?}"), f.offset(), Field32::WIDTH);
        }
        for f in Field64::ALL {
            add(format!("{f:?}"), f.offset(), Field64::WIDTH);
        }
        m
    }

    #[test]
    fn every_field_matches_the_second_transcription() {
        let t = transcription();
        let e = enums();
        for (name, place) in &e {
            assert_eq!(t.get(name), Some(place), "field {name}");
        }
        for (name, place) in &t {
            assert_eq!(e.get(name), Some(place), "table entry {name}");
        }
        assert_eq!(e.len(), t.len());
        assert_eq!(Field8::WIDTH, 1);
        assert_eq!(Field16::WIDTH, 2);
        assert_eq!(Field32::WIDTH, 4);
        assert_eq!(Field64::WIDTH, 8);
    }

    #[test]
    fn no_two_fields_overlap_and_all_are_naturally_aligned() {
        let mut spans: Vec<(usize, usize, String)> = enums()
            .into_iter()
            .map(|(name, (off, width))| (off, width, name))
            .collect();
        spans.push((
            GUEST_INSTRUCTION_BYTES,
            GUEST_INSTRUCTION_BYTES_LEN,
            "GuestInstructionBytes".to_string(),
        ));
        spans.sort();
        for pair in spans.windows(2) {
            let (a_off, a_width, a) = &pair[0];
            let (b_off, _, b) = &pair[1];
            assert!(a_off + a_width <= *b_off, "{a} overlaps {b}");
        }
        for (off, width, name) in &spans {
            assert!(off + width <= VMCB_SIZE, "{name}");
            if name != "GuestInstructionBytes" {
                assert_eq!(off % width, 0, "{name} is not naturally aligned");
            }
        }
        // The instruction bytes end where the AVIC backing page pointer starts.
        assert_eq!(
            GUEST_INSTRUCTION_BYTES + GUEST_INSTRUCTION_BYTES_LEN,
            Field64::AvicBackingPage.offset()
        );
    }

    #[test]
    fn segment_register_fields_are_consistent() {
        for (i, reg) in SegmentRegister::ALL.into_iter().enumerate() {
            let base = STATE_SAVE_AREA + 0x10 * i;
            assert_eq!(reg.selector_field().offset(), base);
            assert_eq!(reg.attrib_field().offset(), base + 2);
            assert_eq!(reg.limit_field().offset(), base + 4);
            assert_eq!(reg.base_field().offset(), base + 8);
        }
        assert_eq!(
            SegmentRegister::from_sreg_number(3),
            Some(SegmentRegister::Ds)
        );
        assert_eq!(
            SegmentRegister::from_sreg_number(5),
            Some(SegmentRegister::Gs)
        );
        assert_eq!(SegmentRegister::from_sreg_number(6), None);
        assert_eq!(SegmentRegister::from_sreg_number(u64::MAX), None);
    }

    #[test]
    fn page_layout() {
        assert_eq!(core::mem::size_of::<Vmcb>(), 4096);
        assert_eq!(core::mem::align_of::<Vmcb>(), 4096);
        let v = Box::new(Vmcb::zeroed());
        assert_eq!((&*v as *const Vmcb as usize) % 4096, 0);
    }

    #[test]
    fn accessors_are_little_endian_at_the_right_offset() {
        let mut v = Box::new(Vmcb::zeroed());
        v.write64(Field64::Rip, 0x1122_3344_5566_7788);
        assert_eq!(
            v.as_bytes()[0x578..0x580],
            [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(v.read64(Field64::Rip), 0x1122_3344_5566_7788);
        v.write32(Field32::GuestAsid, 0xAABB_CCDD);
        assert_eq!(v.as_bytes()[0x58..0x5C], [0xDD, 0xCC, 0xBB, 0xAA]);
        v.write8(Field8::TlbControl, 3);
        assert_eq!(v.as_bytes()[0x5C], 3);
        assert_eq!(v.asid(), 0xAABB_CCDD);
        assert_eq!(v.tlb_control(), Some(TlbControl::FlushAsid));
        v.write16(Field16::CsAttrib, 0x29B);
        assert_eq!(v.as_bytes()[0x412..0x414], [0x9B, 0x02]);
        v.write8(Field8::Cpl, 3);
        assert_eq!(v.as_bytes()[0x4CB], 3);
        v.clear();
        assert!(v.as_bytes().iter().all(|&b| b == 0));
    }

    #[test]
    fn vmrun_intercept_cannot_be_cleared() {
        let mut v = Box::new(Vmcb::zeroed());
        v.write32(Field32::InterceptMisc2, 0);
        assert_eq!(v.read32(Field32::InterceptMisc2), 1);
        v.set_intercepts(&Intercepts {
            misc1: MiscIntercepts1::CPUID | MiscIntercepts1::HLT,
            misc2: MiscIntercepts2::VMMCALL,
            ..Intercepts::default()
        });
        let i = v.intercepts();
        assert_eq!(i.misc2, MiscIntercepts2::VMRUN | MiscIntercepts2::VMMCALL);
        assert_eq!(i.misc1, MiscIntercepts1::CPUID | MiscIntercepts1::HLT);
        assert_eq!(v.read32(Field32::InterceptMisc1), (1 << 18) | (1 << 24));
    }

    #[test]
    fn segment_attributes_compress_descriptor_bits() {
        // 64-bit kernel code descriptor 0x00AF_9B00_0000_FFFF: access byte 0x9B, flags 0xA
        // (G, L).
        let code = 0x00AF_9B00_0000_FFFFu64;
        let a = SegmentAttributes::from_descriptor(code);
        assert_eq!(a.raw(), 0xA9B);
        assert_eq!(a.segment_type(), 0xB);
        assert!(a.code_or_data() && a.present() && a.long_mode() && a.granularity());
        assert!(!a.default_big() && !a.available());
        assert_eq!(a.dpl(), 0);
        assert_eq!(
            SegmentAttributes::from_descriptor(a.to_descriptor_bits()),
            a
        );
        // Flat data 0x00CF_9300_0000_FFFF.
        let s = Segment::from_descriptor(0x10, 0x00CF_9300_0000_FFFF);
        assert_eq!(s.attrib, SegmentAttributes::DATA);
        assert_eq!(s.limit, 0xFFFF_FFFF);
        assert_eq!(s.base, 0);
        // A user data segment with a base: base 0x1234_5678, limit 0x2_3456 bytes, DPL 3.
        let d = 0x1202_F334_5678_3456u64;
        let s = Segment::from_descriptor(0x2B, d);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0x2_3456);
        assert_eq!(s.attrib.dpl(), 3);
        assert_eq!(s.attrib.raw(), 0x0F3);
        // A 64-bit TSS: base 0xFFFF_8000_1234_5000, limit 0x67.
        let low = 0x1200_8B34_5000_0067u64;
        let high = 0xFFFF_8000u64;
        let tr = Segment::from_system_descriptor(0x28, low, high);
        assert_eq!(tr.base, 0xFFFF_8000_1234_5000);
        assert_eq!(tr.limit, 0x67);
        assert_eq!(tr.attrib, SegmentAttributes::TSS64_BUSY);
        // Reserved high bits are dropped.
        assert_eq!(SegmentAttributes::from_raw(0xFFFF).raw(), 0xFFF);
    }

    #[test]
    fn access_rights_round_trip() {
        // VMX access rights for 64-bit code: 0xA09B.
        let a = SegmentAttributes::from_access_rights(0xA09B);
        assert_eq!(a, SegmentAttributes::from_raw(0xA9B));
        assert_eq!(a.to_access_rights(), 0xA09B);
        assert_eq!(SegmentAttributes::from_access_rights(0x1_0000).raw(), 0);
        assert_eq!(SegmentAttributes::from_raw(0).to_access_rights(), 0x1_0000);
        for raw in 0..0x1000u16 {
            let a = SegmentAttributes::from_raw(raw);
            if a.present() {
                assert_eq!(
                    SegmentAttributes::from_access_rights(a.to_access_rights()),
                    a
                );
            }
        }
    }

    #[test]
    fn segments_round_trip_through_the_vmcb() {
        let mut v = Box::new(Vmcb::zeroed());
        let cs = Segment {
            selector: 0x8,
            attrib: SegmentAttributes::CODE64,
            limit: 0xFFFF_FFFF,
            base: 0,
        };
        let fs = Segment {
            selector: 0,
            attrib: SegmentAttributes::DATA,
            limit: 0xFFFF,
            base: 0x7FFF_1234_5000,
        };
        v.set_segment(SegmentRegister::Cs, cs);
        v.set_segment(SegmentRegister::Fs, fs);
        assert_eq!(v.segment(SegmentRegister::Cs), cs);
        assert_eq!(v.segment(SegmentRegister::Fs), fs);
        assert_eq!(v.read64(Field64::FsBase), 0x7FFF_1234_5000);
        assert_eq!(v.read16(Field16::CsAttrib), 0x29B);
        assert_eq!(v.segment(SegmentRegister::Tr), Segment::default());
    }

    #[test]
    fn control_words() {
        let mut v = Box::new(Vmcb::zeroed());
        let vi = VirtualInterruptControl::V_IRQ
            .union(VirtualInterruptControl::V_INTR_MASKING)
            .with_v_tpr(0x5)
            .with_v_intr_prio(0xF)
            .with_v_intr_vector(0x30);
        v.set_virtual_interrupt(vi);
        assert_eq!(v.read64(Field64::VirtualInterrupt), 0x30_010F_0105);
        let back = v.virtual_interrupt();
        assert_eq!(back.v_tpr(), 5);
        assert_eq!(back.v_intr_prio(), 0xF);
        assert_eq!(back.v_intr_vector(), 0x30);
        assert!(back.contains(VirtualInterruptControl::V_IRQ));
        assert_eq!(back.with_v_intr_prio(0x13).v_intr_prio(), 3);

        // Interrupt-window request on top of V_INTR_MASKING (bit 24) and V_TPR 5: V_IRQ (bit
        // 8), V_INTR_PRIO 0xF (19:16), V_IGN_TPR (bit 20), vector 0; withdrawing it restores
        // the rest.
        let base = VirtualInterruptControl::V_INTR_MASKING.with_v_tpr(5);
        let req = base
            .with_v_intr_vector(0x30)
            .with_interrupt_window_request();
        assert_eq!(req.bits(), 0x011F_0105);
        assert_eq!(req.without_interrupt_window_request(), base);
        assert_eq!(base.without_interrupt_window_request(), base);

        v.set_nested_control(NestedControl::NP_ENABLE);
        assert_eq!(v.read64(Field64::NestedControl), 1);
        v.set_nested_cr3(HostPhysAddr::new(0x12_3000));
        assert_eq!(v.read64(Field64::NestedCr3), 0x12_3000);
        v.set_virtualization_extensions(VirtualizationExtensions::LBR_VIRTUALIZATION);
        assert_eq!(v.read64(Field64::VirtualizationExtensions), 1);
        v.set_clean_bits(CleanBits::INTERCEPTS | CleanBits::SEG | CleanBits::CET);
        assert_eq!(v.read32(Field32::CleanBits), 0x1101);
        v.set_interrupt_state(InterruptState::INTERRUPT_SHADOW);
        assert_eq!(v.read64(Field64::InterruptState), 1);

        assert_eq!(v.set_iopm_base(HostPhysAddr::new(0x10_0000)), Ok(()));
        assert_eq!(v.read64(Field64::IopmBasePa), 0x10_0000);
        assert!(v.set_msrpm_base(HostPhysAddr::new(0x10_0800)).is_err());
        assert_eq!(v.read64(Field64::MsrpmBasePa), 0);

        for raw in 0..=255u8 {
            let _ = TlbControl::from_raw(raw);
        }
        assert_eq!(TlbControl::from_raw(2), None);
        assert_eq!(
            TlbControl::from_raw(7),
            Some(TlbControl::FlushAsidNonGlobal)
        );
    }

    #[test]
    fn exit_and_event_fields() {
        let mut v = Box::new(Vmcb::zeroed());
        v.write64(Field64::ExitCode, 0x72);
        assert_eq!(v.exit_code(), ExitCode::Cpuid);
        v.write64(Field64::ExitCode, u64::MAX);
        assert_eq!(v.exit_code(), ExitCode::Invalid);
        assert_eq!(v.event_injection(), None);
        v.set_event_injection(Some(Event::exception(14, Some(0x2))));
        assert_eq!(v.read64(Field64::EventInjection), 0x0000_0002_8000_0B0E);
        assert_eq!(
            v.event_injection().map(|e| e.event_type),
            Some(EventType::Exception)
        );
        v.set_event_injection(None);
        assert_eq!(v.read64(Field64::EventInjection), 0);
        v.write64(Field64::ExitIntInfo, 0x8000_0030);
        assert_eq!(v.exit_int_info(), Some(Event::external_interrupt(0x30)));
    }

    #[test]
    fn guest_instruction_bytes_are_bounded() {
        let mut v = Box::new(Vmcb::zeroed());
        assert!(v.guest_instruction_bytes().is_empty());
        v.write8(Field8::GuestInstructionBytesFetched, 3);
        v.0[0xD1..0xD4].copy_from_slice(&[0x0F, 0x01, 0xD9]);
        assert_eq!(v.guest_instruction_bytes(), &[0x0F, 0x01, 0xD9]);
        v.write8(Field8::GuestInstructionBytesFetched, 0xFF);
        assert_eq!(v.guest_instruction_bytes().len(), 15);
        let _ = format!("{v:?}");
    }
}
