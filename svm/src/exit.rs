//! Decoding what a #VMEXIT reports.
//!
//! This module owns the exit codes of AMD64 APM Vol. 2 Appendix C "SVM Intercept Exit Codes"
//! ([`ExitCode`]) and the EXITINFO formats atoll handles: I/O intercepts ([`IoioInfo`],
//! §15.10.2, Figure 15-2), MSR intercepts ([`MsrAccess`], §15.11), nested page faults
//! ([`NestedPageFault`], §15.25.6) and MOV CR/DR with decode assists ([`CrDrAccess`], §15.33.1),
//! and the event format shared by EVENTINJ and EXITINTINFO ([`Event`], §15.20, §15.7.2).
//!
//! Every decoder is total: any raw value decodes (undefined codes into
//! [`ExitCode::Unknown`], undefined encodings into `None` or a `Reserved` variant) and nothing
//! panics, since these values follow from guest behaviour.

use crate::regs::Gpr;
use crate::vmcb::SegmentRegister;
use bitflags::bitflags;
use boot::addr::GuestPhysAddr;
use core::fmt;

/// A #VMEXIT code, the VMCB EXITCODE field at 070h (APM Vol. 2 Appendix C, Table C-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitCode {
    /// 00h–0Fh: read of CR*n* (VMEXIT_CR0_READ–VMEXIT_CR15_READ).
    CrRead(u8),
    /// 10h–1Fh: write of CR*n* (VMEXIT_CR0_WRITE–VMEXIT_CR15_WRITE).
    CrWrite(u8),
    /// 20h–2Fh: read of DR*n*.
    DrRead(u8),
    /// 30h–3Fh: write of DR*n*.
    DrWrite(u8),
    /// 40h–5Fh: exception vector *n* (VMEXIT_EXCP0–VMEXIT_EXCP31).
    Exception(u8),
    /// 60h: physical INTR.
    Intr,
    /// 61h: physical NMI.
    Nmi,
    /// 62h: physical SMI.
    Smi,
    /// 63h: physical INIT.
    Init,
    /// 64h: virtual INTR (the interrupt window opened).
    Vintr,
    /// 65h: write of CR0 that changed bits other than TS or MP.
    Cr0SelectiveWrite,
    /// 66h: read of IDTR.
    IdtrRead,
    /// 67h: read of GDTR.
    GdtrRead,
    /// 68h: read of LDTR.
    LdtrRead,
    /// 69h: read of TR.
    TrRead,
    /// 6Ah: write of IDTR.
    IdtrWrite,
    /// 6Bh: write of GDTR.
    GdtrWrite,
    /// 6Ch: write of LDTR.
    LdtrWrite,
    /// 6Dh: write of TR.
    TrWrite,
    /// 6Eh: RDTSC.
    Rdtsc,
    /// 6Fh: RDPMC.
    Rdpmc,
    /// 70h: PUSHF.
    Pushf,
    /// 71h: POPF.
    Popf,
    /// 72h: CPUID.
    Cpuid,
    /// 73h: RSM.
    Rsm,
    /// 74h: IRET.
    Iret,
    /// 75h: software interrupt (INTn).
    Swint,
    /// 76h: INVD.
    Invd,
    /// 77h: PAUSE.
    Pause,
    /// 78h: HLT.
    Hlt,
    /// 79h: INVLPG.
    Invlpg,
    /// 7Ah: INVLPGA.
    Invlpga,
    /// 7Bh: IN/OUT/INS/OUTS ([`IoioInfo`]).
    Ioio,
    /// 7Ch: RDMSR or WRMSR ([`MsrAccess`]).
    Msr,
    /// 7Dh: task switch.
    TaskSwitch,
    /// 7Eh: FERR_FREEZE.
    FerrFreeze,
    /// 7Fh: shutdown (e.g. triple fault).
    Shutdown,
    /// 80h: VMRUN.
    Vmrun,
    /// 81h: VMMCALL.
    Vmmcall,
    /// 82h: VMLOAD.
    Vmload,
    /// 83h: VMSAVE.
    Vmsave,
    /// 84h: STGI.
    Stgi,
    /// 85h: CLGI.
    Clgi,
    /// 86h: SKINIT.
    Skinit,
    /// 87h: RDTSCP.
    Rdtscp,
    /// 88h: ICEBP.
    Icebp,
    /// 89h: WBINVD or WBNOINVD.
    Wbinvd,
    /// 8Ah: MONITOR or MONITORX.
    Monitor,
    /// 8Bh: MWAIT or MWAITX, unconditional.
    Mwait,
    /// 8Ch: MWAIT or MWAITX with the monitor armed.
    MwaitConditional,
    /// 8Dh: XSETBV.
    Xsetbv,
    /// 8Eh: RDPRU.
    Rdpru,
    /// 8Fh: trap after a write of EFER (EXITINFO1 holds the new value).
    EferWriteTrap,
    /// 90h–9Fh: trap after a write of CR*n* (EXITINFO1 holds the new value).
    CrWriteTrap(u8),
    /// A0h: INVLPGB.
    Invlpgb,
    /// A1h: INVLPGB with illegal operands.
    InvlpgbIllegal,
    /// A2h: INVPCID.
    Invpcid,
    /// A3h: MCOMMIT.
    Mcommit,
    /// A4h: TLBSYNC.
    Tlbsync,
    /// A5h: bus lock.
    BusLock,
    /// A6h: HLT with no virtual interrupt pending (idle HLT).
    IdleHlt,
    /// 400h: nested page fault ([`NestedPageFault`]).
    Npf,
    /// 401h: AVIC: an IPI could not be delivered to every target.
    AvicIncompleteIpi,
    /// 402h: AVIC: access to an APIC register AVIC does not accelerate.
    AvicNoAccel,
    /// 403h: VMGEXIT (SEV-ES).
    Vmgexit,
    /// −1: VMEXIT_INVALID, VMRUN failed the consistency checks of its VMCB (§15.5.1); the
    /// guest did not run.
    Invalid,
    /// −2: VMEXIT_BUSY, the SEV-ES VMSA was in use.
    Busy,
    /// −3: VMEXIT_IDLE_REQUIRED (SEV-SNP).
    IdleRequired,
    /// −4: VMEXIT_INVALID_PMC, invalid guest PMC state.
    InvalidPmc,
    /// A code Table C-1 does not define.
    Unknown(u64),
}

impl ExitCode {
    /// Decodes the EXITCODE field; never fails.
    pub const fn from_raw(raw: u64) -> Self {
        let n = (raw & 0xF) as u8;
        match raw {
            0x00..=0x0F => Self::CrRead(n),
            0x10..=0x1F => Self::CrWrite(n),
            0x20..=0x2F => Self::DrRead(n),
            0x30..=0x3F => Self::DrWrite(n),
            0x40..=0x5F => Self::Exception((raw - 0x40) as u8),
            0x60 => Self::Intr,
            0x61 => Self::Nmi,
            0x62 => Self::Smi,
            0x63 => Self::Init,
            0x64 => Self::Vintr,
            0x65 => Self::Cr0SelectiveWrite,
            0x66 => Self::IdtrRead,
            0x67 => Self::GdtrRead,
            0x68 => Self::LdtrRead,
            0x69 => Self::TrRead,
            0x6A => Self::IdtrWrite,
            0x6B => Self::GdtrWrite,
            0x6C => Self::LdtrWrite,
            0x6D => Self::TrWrite,
            0x6E => Self::Rdtsc,
            0x6F => Self::Rdpmc,
            0x70 => Self::Pushf,
            0x71 => Self::Popf,
            0x72 => Self::Cpuid,
            0x73 => Self::Rsm,
            0x74 => Self::Iret,
            0x75 => Self::Swint,
            0x76 => Self::Invd,
            0x77 => Self::Pause,
            0x78 => Self::Hlt,
            0x79 => Self::Invlpg,
            0x7A => Self::Invlpga,
            0x7B => Self::Ioio,
            0x7C => Self::Msr,
            0x7D => Self::TaskSwitch,
            0x7E => Self::FerrFreeze,
            0x7F => Self::Shutdown,
            0x80 => Self::Vmrun,
            0x81 => Self::Vmmcall,
            0x82 => Self::Vmload,
            0x83 => Self::Vmsave,
            0x84 => Self::Stgi,
            0x85 => Self::Clgi,
            0x86 => Self::Skinit,
            0x87 => Self::Rdtscp,
            0x88 => Self::Icebp,
            0x89 => Self::Wbinvd,
            0x8A => Self::Monitor,
            0x8B => Self::Mwait,
            0x8C => Self::MwaitConditional,
            0x8D => Self::Xsetbv,
            0x8E => Self::Rdpru,
            0x8F => Self::EferWriteTrap,
            0x90..=0x9F => Self::CrWriteTrap(n),
            0xA0 => Self::Invlpgb,
            0xA1 => Self::InvlpgbIllegal,
            0xA2 => Self::Invpcid,
            0xA3 => Self::Mcommit,
            0xA4 => Self::Tlbsync,
            0xA5 => Self::BusLock,
            0xA6 => Self::IdleHlt,
            0x400 => Self::Npf,
            0x401 => Self::AvicIncompleteIpi,
            0x402 => Self::AvicNoAccel,
            0x403 => Self::Vmgexit,
            0xFFFF_FFFF_FFFF_FFFF => Self::Invalid,
            0xFFFF_FFFF_FFFF_FFFE => Self::Busy,
            0xFFFF_FFFF_FFFF_FFFD => Self::IdleRequired,
            0xFFFF_FFFF_FFFF_FFFC => Self::InvalidPmc,
            other => Self::Unknown(other),
        }
    }

    /// Decodes the EXITCODE field as a processor or emulator left it. The negative codes
    /// (VMEXIT_INVALID is -1, APM Vol. 2 Appendix C) are 64-bit values, but QEMU's TCG stores
    /// the exit code as a 32-bit number zero-extended, so VMEXIT_INVALID arrives as
    /// 0000_0000_FFFF_FFFFh. No code Table C-1 defines has bit 31 set with the upper half
    /// clear, so such a value is taken as the 32-bit form of a negative code.
    pub const fn from_field(raw: u64) -> Self {
        if raw >> 32 == 0 && raw & (1 << 31) != 0 {
            Self::from_raw(raw as u32 as i32 as i64 as u64)
        } else {
            Self::from_raw(raw)
        }
    }

    /// The raw code (for the parameterized variants only the register or vector bits of the
    /// parameter count).
    pub const fn raw(self) -> u64 {
        match self {
            Self::CrRead(n) => (n & 0xF) as u64,
            Self::CrWrite(n) => 0x10 | (n & 0xF) as u64,
            Self::DrRead(n) => 0x20 | (n & 0xF) as u64,
            Self::DrWrite(n) => 0x30 | (n & 0xF) as u64,
            Self::Exception(v) => 0x40 + (v & 0x1F) as u64,
            Self::Intr => 0x60,
            Self::Nmi => 0x61,
            Self::Smi => 0x62,
            Self::Init => 0x63,
            Self::Vintr => 0x64,
            Self::Cr0SelectiveWrite => 0x65,
            Self::IdtrRead => 0x66,
            Self::GdtrRead => 0x67,
            Self::LdtrRead => 0x68,
            Self::TrRead => 0x69,
            Self::IdtrWrite => 0x6A,
            Self::GdtrWrite => 0x6B,
            Self::LdtrWrite => 0x6C,
            Self::TrWrite => 0x6D,
            Self::Rdtsc => 0x6E,
            Self::Rdpmc => 0x6F,
            Self::Pushf => 0x70,
            Self::Popf => 0x71,
            Self::Cpuid => 0x72,
            Self::Rsm => 0x73,
            Self::Iret => 0x74,
            Self::Swint => 0x75,
            Self::Invd => 0x76,
            Self::Pause => 0x77,
            Self::Hlt => 0x78,
            Self::Invlpg => 0x79,
            Self::Invlpga => 0x7A,
            Self::Ioio => 0x7B,
            Self::Msr => 0x7C,
            Self::TaskSwitch => 0x7D,
            Self::FerrFreeze => 0x7E,
            Self::Shutdown => 0x7F,
            Self::Vmrun => 0x80,
            Self::Vmmcall => 0x81,
            Self::Vmload => 0x82,
            Self::Vmsave => 0x83,
            Self::Stgi => 0x84,
            Self::Clgi => 0x85,
            Self::Skinit => 0x86,
            Self::Rdtscp => 0x87,
            Self::Icebp => 0x88,
            Self::Wbinvd => 0x89,
            Self::Monitor => 0x8A,
            Self::Mwait => 0x8B,
            Self::MwaitConditional => 0x8C,
            Self::Xsetbv => 0x8D,
            Self::Rdpru => 0x8E,
            Self::EferWriteTrap => 0x8F,
            Self::CrWriteTrap(n) => 0x90 | (n & 0xF) as u64,
            Self::Invlpgb => 0xA0,
            Self::InvlpgbIllegal => 0xA1,
            Self::Invpcid => 0xA2,
            Self::Mcommit => 0xA3,
            Self::Tlbsync => 0xA4,
            Self::BusLock => 0xA5,
            Self::IdleHlt => 0xA6,
            Self::Npf => 0x400,
            Self::AvicIncompleteIpi => 0x401,
            Self::AvicNoAccel => 0x402,
            Self::Vmgexit => 0x403,
            Self::Invalid => 0xFFFF_FFFF_FFFF_FFFF,
            Self::Busy => 0xFFFF_FFFF_FFFF_FFFE,
            Self::IdleRequired => 0xFFFF_FFFF_FFFF_FFFD,
            Self::InvalidPmc => 0xFFFF_FFFF_FFFF_FFFC,
            Self::Unknown(raw) => raw,
        }
    }

    /// The APM's name for the code (VMEXIT_…), `None` for an unknown code. Parameterized
    /// codes give their family name (e.g. "VMEXIT_CRx_READ"); [`fmt::Display`] adds the
    /// number.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::CrRead(_) => "VMEXIT_CRx_READ",
            Self::CrWrite(_) => "VMEXIT_CRx_WRITE",
            Self::DrRead(_) => "VMEXIT_DRx_READ",
            Self::DrWrite(_) => "VMEXIT_DRx_WRITE",
            Self::Exception(_) => "VMEXIT_EXCPx",
            Self::Intr => "VMEXIT_INTR",
            Self::Nmi => "VMEXIT_NMI",
            Self::Smi => "VMEXIT_SMI",
            Self::Init => "VMEXIT_INIT",
            Self::Vintr => "VMEXIT_VINTR",
            Self::Cr0SelectiveWrite => "VMEXIT_CR0_SEL_WRITE",
            Self::IdtrRead => "VMEXIT_IDTR_READ",
            Self::GdtrRead => "VMEXIT_GDTR_READ",
            Self::LdtrRead => "VMEXIT_LDTR_READ",
            Self::TrRead => "VMEXIT_TR_READ",
            Self::IdtrWrite => "VMEXIT_IDTR_WRITE",
            Self::GdtrWrite => "VMEXIT_GDTR_WRITE",
            Self::LdtrWrite => "VMEXIT_LDTR_WRITE",
            Self::TrWrite => "VMEXIT_TR_WRITE",
            Self::Rdtsc => "VMEXIT_RDTSC",
            Self::Rdpmc => "VMEXIT_RDPMC",
            Self::Pushf => "VMEXIT_PUSHF",
            Self::Popf => "VMEXIT_POPF",
            Self::Cpuid => "VMEXIT_CPUID",
            Self::Rsm => "VMEXIT_RSM",
            Self::Iret => "VMEXIT_IRET",
            Self::Swint => "VMEXIT_SWINT",
            Self::Invd => "VMEXIT_INVD",
            Self::Pause => "VMEXIT_PAUSE",
            Self::Hlt => "VMEXIT_HLT",
            Self::Invlpg => "VMEXIT_INVLPG",
            Self::Invlpga => "VMEXIT_INVLPGA",
            Self::Ioio => "VMEXIT_IOIO",
            Self::Msr => "VMEXIT_MSR",
            Self::TaskSwitch => "VMEXIT_TASK_SWITCH",
            Self::FerrFreeze => "VMEXIT_FERR_FREEZE",
            Self::Shutdown => "VMEXIT_SHUTDOWN",
            Self::Vmrun => "VMEXIT_VMRUN",
            Self::Vmmcall => "VMEXIT_VMMCALL",
            Self::Vmload => "VMEXIT_VMLOAD",
            Self::Vmsave => "VMEXIT_VMSAVE",
            Self::Stgi => "VMEXIT_STGI",
            Self::Clgi => "VMEXIT_CLGI",
            Self::Skinit => "VMEXIT_SKINIT",
            Self::Rdtscp => "VMEXIT_RDTSCP",
            Self::Icebp => "VMEXIT_ICEBP",
            Self::Wbinvd => "VMEXIT_WBINVD",
            Self::Monitor => "VMEXIT_MONITOR",
            Self::Mwait => "VMEXIT_MWAIT",
            Self::MwaitConditional => "VMEXIT_MWAIT_CONDITIONAL",
            Self::Xsetbv => "VMEXIT_XSETBV",
            Self::Rdpru => "VMEXIT_RDPRU",
            Self::EferWriteTrap => "VMEXIT_EFER_WRITE_TRAP",
            Self::CrWriteTrap(_) => "VMEXIT_CRx_WRITE_TRAP",
            Self::Invlpgb => "VMEXIT_INVLPGB",
            Self::InvlpgbIllegal => "VMEXIT_INVLPGB_ILLEGAL",
            Self::Invpcid => "VMEXIT_INVPCID",
            Self::Mcommit => "VMEXIT_MCOMMIT",
            Self::Tlbsync => "VMEXIT_TLBSYNC",
            Self::BusLock => "VMEXIT_BUSLOCK",
            Self::IdleHlt => "VMEXIT_IDLE_HLT",
            Self::Npf => "VMEXIT_NPF",
            Self::AvicIncompleteIpi => "VMEXIT_AVIC_INCOMPLETE_IPI",
            Self::AvicNoAccel => "VMEXIT_AVIC_NOACCEL",
            Self::Vmgexit => "VMEXIT_VMGEXIT",
            Self::Invalid => "VMEXIT_INVALID",
            Self::Busy => "VMEXIT_BUSY",
            Self::IdleRequired => "VMEXIT_IDLE_REQUIRED",
            Self::InvalidPmc => "VMEXIT_INVALID_PMC",
            Self::Unknown(_) => return None,
        })
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.raw();
        match *self {
            Self::CrRead(n) => write!(f, "VMEXIT_CR{}_READ", n & 0xF)?,
            Self::CrWrite(n) => write!(f, "VMEXIT_CR{}_WRITE", n & 0xF)?,
            Self::DrRead(n) => write!(f, "VMEXIT_DR{}_READ", n & 0xF)?,
            Self::DrWrite(n) => write!(f, "VMEXIT_DR{}_WRITE", n & 0xF)?,
            Self::Exception(v) => write!(f, "VMEXIT_EXCP{}", v & 0x1F)?,
            Self::CrWriteTrap(n) => write!(f, "VMEXIT_CR{}_WRITE_TRAP", n & 0xF)?,
            Self::Unknown(_) => f.write_str("unknown #VMEXIT code")?,
            other => f.write_str(other.name().unwrap_or("?"))?,
        }
        if (raw as i64) < 0 {
            write!(f, " (exit code {})", raw as i64)
        } else {
            write!(f, " (exit code {raw:#x})")
        }
    }
}

/// Direction of an I/O access (EXITINFO1 bit 0, TYPE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoDirection {
    /// 0: OUT (the guest writes the port).
    Out,
    /// 1: IN (the guest reads the port).
    In,
}

/// Operand size of an I/O access (EXITINFO1 bits 6:4, SZ8/SZ16/SZ32, one-hot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoSize {
    /// Bit 4: 8 bits.
    Byte,
    /// Bit 5: 16 bits.
    Word,
    /// Bit 6: 32 bits.
    Dword,
}

impl IoSize {
    /// Bytes per access.
    pub const fn bytes(self) -> u8 {
        match self {
            Self::Byte => 1,
            Self::Word => 2,
            Self::Dword => 4,
        }
    }
}

/// Address size of a string I/O instruction (EXITINFO1 bits 9:7, A16/A32/A64, one-hot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressSize {
    /// Bit 7: 16-bit addressing.
    Bits16,
    /// Bit 8: 32-bit addressing.
    Bits32,
    /// Bit 9: 64-bit addressing.
    Bits64,
}

/// An I/O intercept (exit code 7Bh), decoded from EXITINFO1 as APM Vol. 2 §15.10.2,
/// Figure 15-2 lays it out, and EXITINFO2, which holds the RIP of the next instruction
/// (so an emulated IN/OUT is skipped without NRIP save).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoioInfo {
    /// Bit 0.
    pub direction: IoDirection,
    /// Bit 2: INS/OUTS.
    pub string: bool,
    /// Bit 3: REP prefixed.
    pub rep: bool,
    /// Bits 6:4.
    pub size: IoSize,
    /// Bits 9:7; `None` if not exactly one bit is set.
    pub address_size: Option<AddressSize>,
    /// Bits 12:10: the effective segment of a string instruction (reported with decode
    /// assists); `None` for the undefined values 6 and 7.
    pub segment: Option<SegmentRegister>,
    /// Bits 31:16.
    pub port: u16,
    /// EXITINFO2: RIP of the instruction after the IN/OUT.
    pub next_rip: u64,
}

impl IoioInfo {
    /// Decodes EXITINFO1 and EXITINFO2 of an IOIO exit; `None` when the size bits do not
    /// name exactly one of SZ8, SZ16 and SZ32, which a processor does not report.
    pub const fn from_exit_info(exit_info1: u64, exit_info2: u64) -> Option<Self> {
        let size = match (exit_info1 >> 4) & 7 {
            0b001 => IoSize::Byte,
            0b010 => IoSize::Word,
            0b100 => IoSize::Dword,
            _ => return None,
        };
        let address_size = match (exit_info1 >> 7) & 7 {
            0b001 => Some(AddressSize::Bits16),
            0b010 => Some(AddressSize::Bits32),
            0b100 => Some(AddressSize::Bits64),
            _ => None,
        };
        Some(Self {
            direction: if exit_info1 & 1 != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: exit_info1 & (1 << 2) != 0,
            rep: exit_info1 & (1 << 3) != 0,
            size,
            address_size,
            segment: SegmentRegister::from_sreg_number((exit_info1 >> 10) & 7),
            port: (exit_info1 >> 16) as u16,
            next_rip: exit_info2,
        })
    }
}

/// Which instruction an MSR intercept (exit code 7Ch) caught: EXITINFO1 is 0 for RDMSR, 1 for
/// WRMSR (APM Vol. 2 §15.11). The MSR index is guest ECX, the value (WRMSR) guest EDX:EAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrAccess {
    /// 0: RDMSR.
    Read,
    /// 1: WRMSR.
    Write,
}

impl MsrAccess {
    /// Decodes EXITINFO1; `None` for any value but 0 and 1.
    pub const fn from_exit_info1(exit_info1: u64) -> Option<Self> {
        match exit_info1 {
            0 => Some(Self::Read),
            1 => Some(Self::Write),
            _ => None,
        }
    }
}

bitflags! {
    /// The error code of a nested page fault, EXITINFO1 of exit code 400h (APM Vol. 2
    /// §15.25.6 "Nested versus Guest Page Faults, Fault Ordering"): page-fault error-code
    /// bits describing the access, plus bits saying which stage of the translation faulted.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct NpfErrorCode: u64 {
        /// Bit 0: the nested page was present (a protection fault rather than not-present).
        const PRESENT = 1 << 0;
        /// Bit 1: the access was a write.
        const WRITE = 1 << 1;
        /// Bit 2: the access was a user-mode access (always set for the final translation:
        /// nested page table walks are user accesses).
        const USER = 1 << 2;
        /// Bit 3: a reserved bit was set in a nested page table entry.
        const RESERVED_BIT = 1 << 3;
        /// Bit 4: the access was an instruction fetch.
        const EXECUTE = 1 << 4;
        /// Bit 5: protection-key violation.
        const PROTECTION_KEY = 1 << 5;
        /// Bit 6: shadow-stack access.
        const SHADOW_STACK = 1 << 6;
        /// Bit 31: RMP violation (SEV-SNP).
        const RMP = 1 << 31;
        /// Bit 32: the fault happened translating the guest's final physical address.
        const FINAL_TRANSLATION = 1 << 32;
        /// Bit 33: the fault happened translating a guest page-table access (the guest's own
        /// page tables are not mapped).
        const PAGE_TABLE_WALK = 1 << 33;
        /// Bit 34: encrypted access (SEV-SNP).
        const ENCRYPTED = 1 << 34;
        /// Bit 35: page size mismatch with the RMP (SEV-SNP).
        const SIZE_MISMATCH = 1 << 35;
        /// Bit 36: VMPL violation (SEV-SNP).
        const VMPL = 1 << 36;
        // Bits the processor sets that are not named here are kept.
        const _ = !0;
    }
}

/// A nested page fault (exit code 400h): EXITINFO1 is the error code, EXITINFO2 the guest
/// physical address that faulted (APM Vol. 2 §15.25.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NestedPageFault {
    /// EXITINFO1.
    pub error_code: NpfErrorCode,
    /// EXITINFO2.
    pub gpa: GuestPhysAddr,
}

impl NestedPageFault {
    /// Decodes EXITINFO1 and EXITINFO2; every value decodes.
    pub const fn from_exit_info(exit_info1: u64, exit_info2: u64) -> Self {
        Self {
            error_code: NpfErrorCode::from_bits_retain(exit_info1),
            gpa: GuestPhysAddr::new(exit_info2),
        }
    }

    /// The guest-physical address is not mapped at all (as opposed to mapped without the
    /// permission the access needed).
    pub const fn not_present(&self) -> bool {
        !self.error_code.contains(NpfErrorCode::PRESENT)
    }

    /// The access was a write.
    pub const fn is_write(&self) -> bool {
        self.error_code.contains(NpfErrorCode::WRITE)
    }

    /// The access was an instruction fetch.
    pub const fn is_fetch(&self) -> bool {
        self.error_code.contains(NpfErrorCode::EXECUTE)
    }
}

/// EXITINFO1 of a CR or DR read/write intercept (exit codes 00h–3Fh), decoded (APM Vol. 2
/// §15.33.1 "MOV CRx/DRx"): with decode assists and a MOV instruction, bit 63 is set and
/// bits 3:0 name the general-purpose register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrDrAccess {
    /// A MOV to or from CRx/DRx, with this general-purpose register as the other operand.
    Mov {
        /// Bits 3:0.
        gpr: Gpr,
    },
    /// Bit 63 clear: the processor has no decode assists (QEMU's TCG, for example), or the
    /// access was not a MOV (CLTS, LMSW, SMSW). The instruction at guest RIP must be
    /// decoded in software.
    NoDecodeAssist,
}

impl CrDrAccess {
    /// Decodes EXITINFO1; every value decodes.
    pub const fn from_exit_info1(exit_info1: u64) -> Self {
        if exit_info1 & (1 << 63) != 0 {
            Self::Mov {
                gpr: Gpr::from_low_bits(exit_info1),
            }
        } else {
            Self::NoDecodeAssist
        }
    }
}

/// Event type, bits 10:8 of EVENTINJ and EXITINTINFO (APM Vol. 2 §15.20).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// 0: external or virtual interrupt (INTR).
    ExternalInterrupt,
    /// 2: NMI.
    Nmi,
    /// 3: exception (fault or trap).
    Exception,
    /// 4: software interrupt (INTn).
    SoftwareInterrupt,
    /// 1, 5, 6 or 7: reserved (injecting one makes VMRUN fail with VMEXIT_INVALID).
    Reserved(u8),
}

impl EventType {
    /// The type numbered by the low three bits of `n`.
    pub const fn from_low_bits(n: u64) -> Self {
        match n & 7 {
            0 => Self::ExternalInterrupt,
            2 => Self::Nmi,
            3 => Self::Exception,
            4 => Self::SoftwareInterrupt,
            other => Self::Reserved(other as u8),
        }
    }

    /// Its number (three bits).
    pub const fn number(self) -> u8 {
        match self {
            Self::ExternalInterrupt => 0,
            Self::Nmi => 2,
            Self::Exception => 3,
            Self::SoftwareInterrupt => 4,
            Self::Reserved(n) => n & 7,
        }
    }
}

/// An event in the EVENTINJ / EXITINTINFO format (APM Vol. 2 §15.20 "Event Injection",
/// Figure 15-3): vector in bits 7:0, type in 10:8, EV (error code valid) bit 11, V (valid)
/// bit 31, error code in 63:32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// Bits 7:0 (ignored for NMI).
    pub vector: u8,
    /// Bits 10:8.
    pub event_type: EventType,
    /// Bits 63:32 when EV (bit 11) is set.
    pub error_code: Option<u32>,
}

impl Event {
    const VALID: u64 = 1 << 31;
    const ERROR_CODE_VALID: u64 = 1 << 11;

    /// An external interrupt with `vector`.
    pub const fn external_interrupt(vector: u8) -> Self {
        Self {
            vector,
            event_type: EventType::ExternalInterrupt,
            error_code: None,
        }
    }

    /// An NMI (vector 2).
    pub const fn nmi() -> Self {
        Self {
            vector: 2,
            event_type: EventType::Nmi,
            error_code: None,
        }
    }

    /// Exception `vector`, with an error code for the exceptions that push one (#DF, #TS,
    /// #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX: the caller knows which).
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Self {
        Self {
            vector,
            event_type: EventType::Exception,
            error_code,
        }
    }

    /// A software interrupt (INTn) with `vector`.
    pub const fn software_interrupt(vector: u8) -> Self {
        Self {
            vector,
            event_type: EventType::SoftwareInterrupt,
            error_code: None,
        }
    }

    /// The EVENTINJ value, valid bit set.
    pub const fn encode(&self) -> u64 {
        let mut raw = Self::VALID | ((self.event_type.number() as u64) << 8) | self.vector as u64;
        if let Some(code) = self.error_code {
            raw |= Self::ERROR_CODE_VALID | ((code as u64) << 32);
        }
        raw
    }

    /// Decodes an EVENTINJ or EXITINTINFO value; `None` when the valid bit is clear. Bits
    /// 30:12 (reserved) are ignored.
    pub const fn decode(raw: u64) -> Option<Self> {
        if raw & Self::VALID == 0 {
            return None;
        }
        Some(Self {
            vector: raw as u8,
            event_type: EventType::from_low_bits(raw >> 8),
            error_code: if raw & Self::ERROR_CODE_VALID != 0 {
                Some((raw >> 32) as u32)
            } else {
                None
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_decodes_and_round_trips() {
        let negatives = (1..=16u64).map(|n| n.wrapping_neg());
        let others = [0x500u64 + 1, 0x8000_0000, 0xF000_0000, 1 << 32, 1 << 63];
        for raw in (0..=0x500u64).chain(negatives).chain(others) {
            let code = ExitCode::from_raw(raw);
            assert_eq!(code.raw(), raw, "{raw:#x}");
            let _ = code.to_string();
            assert_eq!(code.name().is_none(), matches!(code, ExitCode::Unknown(_)));
        }
    }

    #[test]
    fn codes_match_appendix_c() {
        assert_eq!(ExitCode::from_raw(0x00), ExitCode::CrRead(0));
        assert_eq!(ExitCode::from_raw(0x03), ExitCode::CrRead(3));
        assert_eq!(ExitCode::from_raw(0x18), ExitCode::CrWrite(8));
        assert_eq!(ExitCode::from_raw(0x27), ExitCode::DrRead(7));
        assert_eq!(ExitCode::from_raw(0x37), ExitCode::DrWrite(7));
        assert_eq!(ExitCode::from_raw(0x4E), ExitCode::Exception(14));
        assert_eq!(ExitCode::from_raw(0x5F), ExitCode::Exception(31));
        assert_eq!(ExitCode::from_raw(0x60), ExitCode::Intr);
        assert_eq!(ExitCode::from_raw(0x61), ExitCode::Nmi);
        assert_eq!(ExitCode::from_raw(0x63), ExitCode::Init);
        assert_eq!(ExitCode::from_raw(0x64), ExitCode::Vintr);
        assert_eq!(ExitCode::from_raw(0x74), ExitCode::Iret);
        assert_eq!(ExitCode::from_raw(0x6E), ExitCode::Rdtsc);
        assert_eq!(ExitCode::from_raw(0x72), ExitCode::Cpuid);
        assert_eq!(ExitCode::from_raw(0x78), ExitCode::Hlt);
        assert_eq!(ExitCode::from_raw(0x7B), ExitCode::Ioio);
        assert_eq!(ExitCode::from_raw(0x7C), ExitCode::Msr);
        assert_eq!(ExitCode::from_raw(0x7F), ExitCode::Shutdown);
        assert_eq!(ExitCode::from_raw(0x80), ExitCode::Vmrun);
        assert_eq!(ExitCode::from_raw(0x81), ExitCode::Vmmcall);
        assert_eq!(ExitCode::from_raw(0x8D), ExitCode::Xsetbv);
        assert_eq!(ExitCode::from_raw(0x8F), ExitCode::EferWriteTrap);
        assert_eq!(ExitCode::from_raw(0x94), ExitCode::CrWriteTrap(4));
        assert_eq!(ExitCode::from_raw(0xA2), ExitCode::Invpcid);
        assert_eq!(ExitCode::from_raw(0xA7), ExitCode::Unknown(0xA7));
        assert_eq!(ExitCode::from_raw(0x400), ExitCode::Npf);
        assert_eq!(ExitCode::from_raw(0x401), ExitCode::AvicIncompleteIpi);
        assert_eq!(ExitCode::from_raw(0x402), ExitCode::AvicNoAccel);
        assert_eq!(ExitCode::from_raw(0x403), ExitCode::Vmgexit);
        assert_eq!(ExitCode::from_raw(0x404), ExitCode::Unknown(0x404));
        assert_eq!(ExitCode::from_raw(u64::MAX), ExitCode::Invalid);
        assert_eq!(ExitCode::from_raw(-2i64 as u64), ExitCode::Busy);
        assert_eq!(ExitCode::from_raw(-3i64 as u64), ExitCode::IdleRequired);
        assert_eq!(ExitCode::from_raw(-4i64 as u64), ExitCode::InvalidPmc);
        assert_eq!(
            ExitCode::from_raw(-5i64 as u64),
            ExitCode::Unknown(-5i64 as u64)
        );
        // Out-of-range parameters keep only their register or vector bits.
        assert_eq!(ExitCode::CrRead(0x13).raw(), 0x03);
        assert_eq!(ExitCode::Exception(33).raw(), 0x41);
    }

    #[test]
    fn display() {
        assert_eq!(ExitCode::Cpuid.to_string(), "VMEXIT_CPUID (exit code 0x72)");
        assert_eq!(
            ExitCode::CrWrite(3).to_string(),
            "VMEXIT_CR3_WRITE (exit code 0x13)"
        );
        assert_eq!(
            ExitCode::Exception(14).to_string(),
            "VMEXIT_EXCP14 (exit code 0x4e)"
        );
        assert_eq!(
            ExitCode::Invalid.to_string(),
            "VMEXIT_INVALID (exit code -1)"
        );
        assert_eq!(
            ExitCode::Unknown(0x1234).to_string(),
            "unknown #VMEXIT code (exit code 0x1234)"
        );
    }

    #[test]
    fn ioio_exit_info() {
        // `in al, 0x60`: TYPE=1, SZ8 (bit 4), A64 (bit 9), port 0x60.
        let info1 = 0x0060_0000 | (1 << 9) | (1 << 4) | 1;
        let io = IoioInfo::from_exit_info(info1, 0xFFFF_8000_0000_1002).unwrap();
        assert_eq!(io.direction, IoDirection::In);
        assert_eq!(io.size, IoSize::Byte);
        assert_eq!(io.size.bytes(), 1);
        assert_eq!(io.address_size, Some(AddressSize::Bits64));
        assert_eq!(io.port, 0x60);
        assert!(!io.string && !io.rep);
        assert_eq!(io.segment, Some(SegmentRegister::Es));
        assert_eq!(io.next_rip, 0xFFFF_8000_0000_1002);

        // `rep outsw` to 0x3F8 with DS, 32-bit addressing: 0x03F8_0000 | SEG=3 (bits 12:10)
        // | A32 (bit 8) | SZ16 (bit 5) | REP | STR | TYPE=0.
        let info1 = 0x03F8_0000 | (3 << 10) | (1 << 8) | (1 << 5) | (1 << 3) | (1 << 2);
        assert_eq!(info1, 0x03F8_0D2C);
        let io = IoioInfo::from_exit_info(info1, 0x1000).unwrap();
        assert_eq!(io.direction, IoDirection::Out);
        assert!(io.string && io.rep);
        assert_eq!(io.size, IoSize::Word);
        assert_eq!(io.address_size, Some(AddressSize::Bits32));
        assert_eq!(io.segment, Some(SegmentRegister::Ds));
        assert_eq!(io.port, 0x3F8);

        // `out dx, eax` to 0xCFC.
        let io = IoioInfo::from_exit_info(0x0CFC_0000 | (1 << 6), 0).unwrap();
        assert_eq!(io.size, IoSize::Dword);
        assert_eq!(io.address_size, None);
        assert_eq!(io.port, 0xCFC);

        // No size bit, or two: not a value a processor reports.
        assert_eq!(IoioInfo::from_exit_info(0x0060_0001, 0), None);
        assert_eq!(IoioInfo::from_exit_info(0x0060_0031, 0), None);
        // Undefined segment numbers.
        let io = IoioInfo::from_exit_info((7 << 10) | (1 << 4), 0).unwrap();
        assert_eq!(io.segment, None);
    }

    #[test]
    fn ioio_never_panics() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let _ = IoioInfo::from_exit_info(x, x);
            let _ = NestedPageFault::from_exit_info(x, x);
            let _ = CrDrAccess::from_exit_info1(x);
            let _ = MsrAccess::from_exit_info1(x);
            let _ = Event::decode(x);
        }
    }

    #[test]
    fn msr_exit_info() {
        assert_eq!(MsrAccess::from_exit_info1(0), Some(MsrAccess::Read));
        assert_eq!(MsrAccess::from_exit_info1(1), Some(MsrAccess::Write));
        assert_eq!(MsrAccess::from_exit_info1(2), None);
        assert_eq!(MsrAccess::from_exit_info1(u64::MAX), None);
    }

    #[test]
    fn nested_page_fault() {
        // A write to an unmapped page, found translating the final guest-physical address:
        // USER | WRITE, bit 32.
        let npf = NestedPageFault::from_exit_info(0x1_0000_0006, 0xFEE0_0030);
        assert!(npf.not_present() && npf.is_write() && !npf.is_fetch());
        assert!(npf.error_code.contains(NpfErrorCode::FINAL_TRANSLATION));
        assert!(!npf.error_code.contains(NpfErrorCode::PAGE_TABLE_WALK));
        assert_eq!(npf.gpa, GuestPhysAddr::new(0xFEE0_0030));
        // An instruction fetch from a present, non-executable page: P | USER | ID.
        let npf = NestedPageFault::from_exit_info(0x1_0000_0015, 0x20_0000);
        assert!(!npf.not_present() && npf.is_fetch() && !npf.is_write());
        // A guest page-table read that faulted: bit 33, P clear.
        let npf = NestedPageFault::from_exit_info(0x2_0000_0004, 0x1000);
        assert!(npf.error_code.contains(NpfErrorCode::PAGE_TABLE_WALK));
        assert!(npf.not_present());
        // Unnamed bits are kept.
        assert_eq!(
            NestedPageFault::from_exit_info(1 << 50, 0)
                .error_code
                .bits(),
            1 << 50
        );
    }

    #[test]
    fn cr_access_decode_assist() {
        // `mov cr3, r10` with decode assists: bit 63 | GPR 10.
        assert_eq!(
            CrDrAccess::from_exit_info1(0x8000_0000_0000_000A),
            CrDrAccess::Mov { gpr: Gpr::R10 }
        );
        assert_eq!(
            CrDrAccess::from_exit_info1(0x8000_0000_0000_0000),
            CrDrAccess::Mov { gpr: Gpr::Rax }
        );
        // QEMU TCG (no decode assists) leaves EXITINFO1 zero; LMSW with decode assists
        // leaves bit 63 clear.
        assert_eq!(CrDrAccess::from_exit_info1(0), CrDrAccess::NoDecodeAssist);
        assert_eq!(CrDrAccess::from_exit_info1(0x7), CrDrAccess::NoDecodeAssist);
    }

    #[test]
    fn event_injection_encoding() {
        // #GP(0): vector 13, type 3, EV, V.
        assert_eq!(Event::exception(13, Some(0)).encode(), 0x8000_0B0D);
        // #PF with error code 0x6 (user write, not present).
        assert_eq!(
            Event::exception(14, Some(6)).encode(),
            0x0000_0006_8000_0B0E
        );
        // #UD: no error code.
        assert_eq!(Event::exception(6, None).encode(), 0x8000_0306);
        // External interrupt 0x20.
        assert_eq!(Event::external_interrupt(0x20).encode(), 0x8000_0020);
        // NMI: type 2, vector 2.
        assert_eq!(Event::nmi().encode(), 0x8000_0202);
        // INT 0x80.
        assert_eq!(Event::software_interrupt(0x80).encode(), 0x8000_0480);
        // Error code 0xFFFF_FFFF keeps all 32 bits.
        assert_eq!(
            Event::exception(8, Some(u32::MAX)).encode(),
            0xFFFF_FFFF_8000_0B08
        );
    }

    #[test]
    fn exit_int_info_decoding() {
        assert_eq!(Event::decode(0), None);
        // V clear: nothing, whatever the other bits.
        assert_eq!(Event::decode(0x0000_0006_0000_0B0E), None);
        assert_eq!(
            Event::decode(0x0000_0006_8000_0B0E),
            Some(Event::exception(14, Some(6)))
        );
        assert_eq!(
            Event::decode(0x8000_0030),
            Some(Event::external_interrupt(0x30))
        );
        // Reserved type 5, reserved bits 30:12 set, error code without EV: ignored.
        let e = Event::decode(0x1234_5678_FFFF_FDFF).unwrap();
        assert_eq!(e.event_type, EventType::Reserved(5));
        assert_eq!(e.vector, 0xFF);
        assert_eq!(e.error_code, Some(0x1234_5678));
        let e = Event::decode(0x1234_5678_8000_0100).unwrap();
        assert_eq!(e.event_type, EventType::Reserved(1));
        assert_eq!(e.error_code, None);
        for e in [
            Event::exception(14, Some(6)),
            Event::nmi(),
            Event::software_interrupt(3),
            Event::external_interrupt(0xEF),
        ] {
            assert_eq!(Event::decode(e.encode()), Some(e));
        }
    }
}
