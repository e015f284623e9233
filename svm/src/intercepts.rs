//! The intercept vectors of the VMCB control area.
//!
//! This module owns the bitflags for the six 32-bit intercept words at the start of the VMCB
//! (AMD64 APM Vol. 2 Appendix B, Table B-1, offsets 000h–014h): control-register and
//! debug-register reads and writes, exceptions, and the three miscellaneous vectors, and
//! [`Intercepts`], all six together. A set bit makes the event cause a #VMEXIT with the exit
//! code of Appendix C; [`crate::vmcb::Vmcb::set_intercepts`] writes them.
//!
//! VMRUN must always be intercepted: a VMRUN whose VMCB does not intercept VMRUN fails the
//! consistency checks with VMEXIT_INVALID (APM Vol. 2 §15.5.1), so every way of writing the
//! vectors through [`crate::vmcb::Vmcb`] forces [`MiscIntercepts2::VMRUN`] on.

use bitflags::bitflags;

bitflags! {
    /// Control-register intercepts, VMCB offset 000h (APM Vol. 2 Table B-1; the
    /// "Instruction Intercepts" section of chapter 15 for MOV CRx). Bits 15:0 intercept reads of CR0–CR15, bits
    /// 31:16 writes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct CrIntercepts: u32 {
        /// Bit 0: reads of CR0.
        const READ_CR0 = 1 << 0;
        /// Bit 1: reads of CR1.
        const READ_CR1 = 1 << 1;
        /// Bit 2: reads of CR2.
        const READ_CR2 = 1 << 2;
        /// Bit 3: reads of CR3.
        const READ_CR3 = 1 << 3;
        /// Bit 4: reads of CR4.
        const READ_CR4 = 1 << 4;
        /// Bit 5: reads of CR5.
        const READ_CR5 = 1 << 5;
        /// Bit 6: reads of CR6.
        const READ_CR6 = 1 << 6;
        /// Bit 7: reads of CR7.
        const READ_CR7 = 1 << 7;
        /// Bit 8: reads of CR8.
        const READ_CR8 = 1 << 8;
        /// Bit 9: reads of CR9.
        const READ_CR9 = 1 << 9;
        /// Bit 10: reads of CR10.
        const READ_CR10 = 1 << 10;
        /// Bit 11: reads of CR11.
        const READ_CR11 = 1 << 11;
        /// Bit 12: reads of CR12.
        const READ_CR12 = 1 << 12;
        /// Bit 13: reads of CR13.
        const READ_CR13 = 1 << 13;
        /// Bit 14: reads of CR14.
        const READ_CR14 = 1 << 14;
        /// Bit 15: reads of CR15.
        const READ_CR15 = 1 << 15;
        /// Bit 16: writes of CR0.
        const WRITE_CR0 = 1 << 16;
        /// Bit 17: writes of CR1.
        const WRITE_CR1 = 1 << 17;
        /// Bit 18: writes of CR2.
        const WRITE_CR2 = 1 << 18;
        /// Bit 19: writes of CR3.
        const WRITE_CR3 = 1 << 19;
        /// Bit 20: writes of CR4.
        const WRITE_CR4 = 1 << 20;
        /// Bit 21: writes of CR5.
        const WRITE_CR5 = 1 << 21;
        /// Bit 22: writes of CR6.
        const WRITE_CR6 = 1 << 22;
        /// Bit 23: writes of CR7.
        const WRITE_CR7 = 1 << 23;
        /// Bit 24: writes of CR8.
        const WRITE_CR8 = 1 << 24;
        /// Bit 25: writes of CR9.
        const WRITE_CR9 = 1 << 25;
        /// Bit 26: writes of CR10.
        const WRITE_CR10 = 1 << 26;
        /// Bit 27: writes of CR11.
        const WRITE_CR11 = 1 << 27;
        /// Bit 28: writes of CR12.
        const WRITE_CR12 = 1 << 28;
        /// Bit 29: writes of CR13.
        const WRITE_CR13 = 1 << 29;
        /// Bit 30: writes of CR14.
        const WRITE_CR14 = 1 << 30;
        /// Bit 31: writes of CR15.
        const WRITE_CR15 = 1 << 31;
    }
}

impl CrIntercepts {
    /// Reads of CR`n` (only the low four bits of `n` count).
    pub const fn read(n: u8) -> Self {
        Self::from_bits_retain(1 << (n & 0xf))
    }

    /// Writes of CR`n` (only the low four bits of `n` count).
    pub const fn write(n: u8) -> Self {
        Self::from_bits_retain(1 << (16 + (n & 0xf)))
    }
}

bitflags! {
    /// Debug-register intercepts, VMCB offset 004h (APM Vol. 2 Table B-1). Bits 15:0
    /// intercept reads of DR0–DR15, bits 31:16 writes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct DrIntercepts: u32 {
        /// Bit 0: reads of DR0.
        const READ_DR0 = 1 << 0;
        /// Bit 1: reads of DR1.
        const READ_DR1 = 1 << 1;
        /// Bit 2: reads of DR2.
        const READ_DR2 = 1 << 2;
        /// Bit 3: reads of DR3.
        const READ_DR3 = 1 << 3;
        /// Bit 4: reads of DR4.
        const READ_DR4 = 1 << 4;
        /// Bit 5: reads of DR5.
        const READ_DR5 = 1 << 5;
        /// Bit 6: reads of DR6.
        const READ_DR6 = 1 << 6;
        /// Bit 7: reads of DR7.
        const READ_DR7 = 1 << 7;
        /// Bit 8: reads of DR8.
        const READ_DR8 = 1 << 8;
        /// Bit 9: reads of DR9.
        const READ_DR9 = 1 << 9;
        /// Bit 10: reads of DR10.
        const READ_DR10 = 1 << 10;
        /// Bit 11: reads of DR11.
        const READ_DR11 = 1 << 11;
        /// Bit 12: reads of DR12.
        const READ_DR12 = 1 << 12;
        /// Bit 13: reads of DR13.
        const READ_DR13 = 1 << 13;
        /// Bit 14: reads of DR14.
        const READ_DR14 = 1 << 14;
        /// Bit 15: reads of DR15.
        const READ_DR15 = 1 << 15;
        /// Bit 16: writes of DR0.
        const WRITE_DR0 = 1 << 16;
        /// Bit 17: writes of DR1.
        const WRITE_DR1 = 1 << 17;
        /// Bit 18: writes of DR2.
        const WRITE_DR2 = 1 << 18;
        /// Bit 19: writes of DR3.
        const WRITE_DR3 = 1 << 19;
        /// Bit 20: writes of DR4.
        const WRITE_DR4 = 1 << 20;
        /// Bit 21: writes of DR5.
        const WRITE_DR5 = 1 << 21;
        /// Bit 22: writes of DR6.
        const WRITE_DR6 = 1 << 22;
        /// Bit 23: writes of DR7.
        const WRITE_DR7 = 1 << 23;
        /// Bit 24: writes of DR8.
        const WRITE_DR8 = 1 << 24;
        /// Bit 25: writes of DR9.
        const WRITE_DR9 = 1 << 25;
        /// Bit 26: writes of DR10.
        const WRITE_DR10 = 1 << 26;
        /// Bit 27: writes of DR11.
        const WRITE_DR11 = 1 << 27;
        /// Bit 28: writes of DR12.
        const WRITE_DR12 = 1 << 28;
        /// Bit 29: writes of DR13.
        const WRITE_DR13 = 1 << 29;
        /// Bit 30: writes of DR14.
        const WRITE_DR14 = 1 << 30;
        /// Bit 31: writes of DR15.
        const WRITE_DR15 = 1 << 31;
    }
}

impl DrIntercepts {
    /// Reads of DR`n` (only the low four bits of `n` count).
    pub const fn read(n: u8) -> Self {
        Self::from_bits_retain(1 << (n & 0xf))
    }

    /// Writes of DR`n` (only the low four bits of `n` count).
    pub const fn write(n: u8) -> Self {
        Self::from_bits_retain(1 << (16 + (n & 0xf)))
    }
}

bitflags! {
    /// Exception intercepts, VMCB offset 008h: bit *n* intercepts exception vector *n*
    /// (APM Vol. 2 Table B-1; §15.12 "Exception Intercepts"). The exit code is
    /// 40h + vector. Named bits follow APM Vol. 2 §8.2 "Vectors".
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct ExceptionIntercepts: u32 {
        /// Vector 0: #DE, divide error.
        const DE = 1 << 0;
        /// Vector 1: #DB, debug.
        const DB = 1 << 1;
        /// Vector 2: NMI. Physical NMIs are intercepted with [`MiscIntercepts1::NMI`].
        const NMI = 1 << 2;
        /// Vector 3: #BP, breakpoint.
        const BP = 1 << 3;
        /// Vector 4: #OF, overflow.
        const OF = 1 << 4;
        /// Vector 5: #BR, bound range.
        const BR = 1 << 5;
        /// Vector 6: #UD, invalid opcode.
        const UD = 1 << 6;
        /// Vector 7: #NM, device not available.
        const NM = 1 << 7;
        /// Vector 8: #DF, double fault.
        const DF = 1 << 8;
        /// Vector 10: #TS, invalid TSS.
        const TS = 1 << 10;
        /// Vector 11: #NP, segment not present.
        const NP = 1 << 11;
        /// Vector 12: #SS, stack fault.
        const SS = 1 << 12;
        /// Vector 13: #GP, general protection.
        const GP = 1 << 13;
        /// Vector 14: #PF, page fault.
        const PF = 1 << 14;
        /// Vector 16: #MF, x87 floating-point exception.
        const MF = 1 << 16;
        /// Vector 17: #AC, alignment check.
        const AC = 1 << 17;
        /// Vector 18: #MC, machine check.
        const MC = 1 << 18;
        /// Vector 19: #XF, SIMD floating-point exception.
        const XF = 1 << 19;
        /// Vector 21: #CP, control-protection exception.
        const CP = 1 << 21;
        /// Vector 28: #HV, hypervisor injection exception.
        const HV = 1 << 28;
        /// Vector 29: #VC, VMM communication exception (SEV-ES).
        const VC = 1 << 29;
        /// Vector 30: #SX, security exception.
        const SX = 1 << 30;
        // Every vector has a bit, named or not.
        const _ = !0;
    }
}

impl ExceptionIntercepts {
    /// The intercept of exception `vector` (only the low five bits count).
    pub const fn vector(vector: u8) -> Self {
        Self::from_bits_retain(1 << (vector & 0x1f))
    }
}

bitflags! {
    /// First miscellaneous intercept vector, VMCB offset 00Ch (APM Vol. 2 Table B-1;
    /// "Instruction Intercepts", §15.13 "Interrupt Intercepts", §15.10 "I/O Intercepts",
    /// §15.11 "MSR Intercepts").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MiscIntercepts1: u32 {
        /// Bit 0: physical maskable interrupts (INTR).
        const INTR = 1 << 0;
        /// Bit 1: physical NMIs.
        const NMI = 1 << 1;
        /// Bit 2: SMIs.
        const SMI = 1 << 2;
        /// Bit 3: INIT.
        const INIT = 1 << 3;
        /// Bit 4: virtual interrupts (VINTR), taken when the guest becomes able to accept the
        /// pending V_IRQ: the interrupt window.
        const VINTR = 1 << 4;
        /// Bit 5: CR0 writes that change bits other than CR0.TS or CR0.MP (selective CR0
        /// write).
        const CR0_SELECTIVE_WRITE = 1 << 5;
        /// Bit 6: reads of IDTR (SIDT).
        const IDTR_READ = 1 << 6;
        /// Bit 7: reads of GDTR (SGDT).
        const GDTR_READ = 1 << 7;
        /// Bit 8: reads of LDTR (SLDT).
        const LDTR_READ = 1 << 8;
        /// Bit 9: reads of TR (STR).
        const TR_READ = 1 << 9;
        /// Bit 10: writes of IDTR (LIDT).
        const IDTR_WRITE = 1 << 10;
        /// Bit 11: writes of GDTR (LGDT).
        const GDTR_WRITE = 1 << 11;
        /// Bit 12: writes of LDTR (LLDT).
        const LDTR_WRITE = 1 << 12;
        /// Bit 13: writes of TR (LTR).
        const TR_WRITE = 1 << 13;
        /// Bit 14: RDTSC.
        const RDTSC = 1 << 14;
        /// Bit 15: RDPMC.
        const RDPMC = 1 << 15;
        /// Bit 16: PUSHF.
        const PUSHF = 1 << 16;
        /// Bit 17: POPF.
        const POPF = 1 << 17;
        /// Bit 18: CPUID.
        const CPUID = 1 << 18;
        /// Bit 19: RSM.
        const RSM = 1 << 19;
        /// Bit 20: IRET.
        const IRET = 1 << 20;
        /// Bit 21: software interrupts (INTn).
        const INTN = 1 << 21;
        /// Bit 22: INVD.
        const INVD = 1 << 22;
        /// Bit 23: PAUSE (subject to the PAUSE filter count and threshold).
        const PAUSE = 1 << 23;
        /// Bit 24: HLT.
        const HLT = 1 << 24;
        /// Bit 25: INVLPG.
        const INVLPG = 1 << 25;
        /// Bit 26: INVLPGA.
        const INVLPGA = 1 << 26;
        /// Bit 27: IN/OUT/INS/OUTS, filtered by the I/O permission map (IOIO_PROT, §15.10).
        const IOIO_PROT = 1 << 27;
        /// Bit 28: RDMSR/WRMSR, filtered by the MSR permission map (MSR_PROT, §15.11).
        const MSR_PROT = 1 << 28;
        /// Bit 29: task switches.
        const TASK_SWITCH = 1 << 29;
        /// Bit 30: FERR_FREEZE (the processor freezing on an x87 error with legacy FERR
        /// handling).
        const FERR_FREEZE = 1 << 30;
        /// Bit 31: shutdown (a triple fault, for instance).
        const SHUTDOWN = 1 << 31;
    }
}

bitflags! {
    /// Second miscellaneous intercept vector, VMCB offset 010h (APM Vol. 2 Table B-1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MiscIntercepts2: u32 {
        /// Bit 0: VMRUN. Must be set: VMRUN checks it and fails with VMEXIT_INVALID otherwise
        /// (APM Vol. 2 §15.5.1).
        const VMRUN = 1 << 0;
        /// Bit 1: VMMCALL (atoll's hypercall instruction on AMD).
        const VMMCALL = 1 << 1;
        /// Bit 2: VMLOAD.
        const VMLOAD = 1 << 2;
        /// Bit 3: VMSAVE.
        const VMSAVE = 1 << 3;
        /// Bit 4: STGI.
        const STGI = 1 << 4;
        /// Bit 5: CLGI.
        const CLGI = 1 << 5;
        /// Bit 6: SKINIT.
        const SKINIT = 1 << 6;
        /// Bit 7: RDTSCP.
        const RDTSCP = 1 << 7;
        /// Bit 8: ICEBP (INT1).
        const ICEBP = 1 << 8;
        /// Bit 9: WBINVD and WBNOINVD.
        const WBINVD = 1 << 9;
        /// Bit 10: MONITOR and MONITORX.
        const MONITOR = 1 << 10;
        /// Bit 11: MWAIT and MWAITX, unconditionally.
        const MWAIT = 1 << 11;
        /// Bit 12: MWAIT and MWAITX, only if the monitor hardware is armed.
        const MWAIT_CONDITIONAL = 1 << 12;
        /// Bit 13: XSETBV.
        const XSETBV = 1 << 13;
        /// Bit 14: RDPRU.
        const RDPRU = 1 << 14;
        /// Bit 15: trap (after completion) on writes of EFER.
        const EFER_WRITE_TRAP = 1 << 15;
        /// Bit 16: trap (after completion) on writes of CR0.
        const CR0_WRITE_TRAP = 1 << 16;
        /// Bit 17: trap (after completion) on writes of CR1.
        const CR1_WRITE_TRAP = 1 << 17;
        /// Bit 18: trap (after completion) on writes of CR2.
        const CR2_WRITE_TRAP = 1 << 18;
        /// Bit 19: trap (after completion) on writes of CR3.
        const CR3_WRITE_TRAP = 1 << 19;
        /// Bit 20: trap (after completion) on writes of CR4.
        const CR4_WRITE_TRAP = 1 << 20;
        /// Bit 21: trap (after completion) on writes of CR5.
        const CR5_WRITE_TRAP = 1 << 21;
        /// Bit 22: trap (after completion) on writes of CR6.
        const CR6_WRITE_TRAP = 1 << 22;
        /// Bit 23: trap (after completion) on writes of CR7.
        const CR7_WRITE_TRAP = 1 << 23;
        /// Bit 24: trap (after completion) on writes of CR8.
        const CR8_WRITE_TRAP = 1 << 24;
        /// Bit 25: trap (after completion) on writes of CR9.
        const CR9_WRITE_TRAP = 1 << 25;
        /// Bit 26: trap (after completion) on writes of CR10.
        const CR10_WRITE_TRAP = 1 << 26;
        /// Bit 27: trap (after completion) on writes of CR11.
        const CR11_WRITE_TRAP = 1 << 27;
        /// Bit 28: trap (after completion) on writes of CR12.
        const CR12_WRITE_TRAP = 1 << 28;
        /// Bit 29: trap (after completion) on writes of CR13.
        const CR13_WRITE_TRAP = 1 << 29;
        /// Bit 30: trap (after completion) on writes of CR14.
        const CR14_WRITE_TRAP = 1 << 30;
        /// Bit 31: trap (after completion) on writes of CR15.
        const CR15_WRITE_TRAP = 1 << 31;
    }
}

impl MiscIntercepts2 {
    /// The bits every VMCB atoll runs must have (APM Vol. 2 §15.5.1).
    pub const REQUIRED: Self = Self::VMRUN;

    /// Trap on writes of CR`n` (only the low four bits of `n` count).
    pub const fn cr_write_trap(n: u8) -> Self {
        Self::from_bits_retain(1 << (16 + (n & 0xf)))
    }
}

bitflags! {
    /// Third miscellaneous intercept vector, VMCB offset 014h (APM Vol. 2 Table B-1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MiscIntercepts3: u32 {
        /// Bit 0: INVLPGB (all forms).
        const INVLPGB = 1 << 0;
        /// Bit 1: INVLPGB with illegal operands only.
        const INVLPGB_ILLEGAL = 1 << 1;
        /// Bit 2: INVPCID.
        const INVPCID = 1 << 2;
        /// Bit 3: MCOMMIT.
        const MCOMMIT = 1 << 3;
        /// Bit 4: TLBSYNC.
        const TLBSYNC = 1 << 4;
        /// Bit 5: bus locks, when the bus-lock threshold counter is 0.
        const BUS_LOCK = 1 << 5;
        /// Bit 6: HLT when no virtual interrupt is pending (idle HLT).
        const IDLE_HLT = 1 << 6;
    }
}

/// All six intercept words of a VMCB (APM Vol. 2 Table B-1, offsets 000h–017h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Intercepts {
    /// Offset 000h.
    pub cr: CrIntercepts,
    /// Offset 004h.
    pub dr: DrIntercepts,
    /// Offset 008h.
    pub exceptions: ExceptionIntercepts,
    /// Offset 00Ch.
    pub misc1: MiscIntercepts1,
    /// Offset 010h; [`MiscIntercepts2::VMRUN`] is forced on when written to a VMCB.
    pub misc2: MiscIntercepts2,
    /// Offset 014h.
    pub misc3: MiscIntercepts3,
}

impl Intercepts {
    /// Only what every VMCB must intercept: VMRUN.
    pub const fn required() -> Self {
        Self {
            cr: CrIntercepts::empty(),
            dr: DrIntercepts::empty(),
            exceptions: ExceptionIntercepts::empty(),
            misc1: MiscIntercepts1::empty(),
            misc2: MiscIntercepts2::REQUIRED,
            misc3: MiscIntercepts3::empty(),
        }
    }

    /// `self` with the required bits added.
    pub const fn with_required(self) -> Self {
        Self {
            misc2: self.misc2.union(MiscIntercepts2::REQUIRED),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr_and_dr_words_split_reads_and_writes_at_bit_16() {
        assert_eq!(CrIntercepts::READ_CR0.bits(), 1);
        assert_eq!(CrIntercepts::READ_CR8.bits(), 1 << 8);
        assert_eq!(CrIntercepts::WRITE_CR0.bits(), 1 << 16);
        assert_eq!(CrIntercepts::WRITE_CR8.bits(), 1 << 24);
        assert_eq!(CrIntercepts::WRITE_CR15.bits(), 1 << 31);
        assert_eq!(CrIntercepts::read(3), CrIntercepts::READ_CR3);
        assert_eq!(CrIntercepts::write(4), CrIntercepts::WRITE_CR4);
        assert_eq!(CrIntercepts::write(0x14), CrIntercepts::WRITE_CR4);
        assert_eq!(CrIntercepts::all().bits(), u32::MAX);
        assert_eq!(DrIntercepts::read(7), DrIntercepts::READ_DR7);
        assert_eq!(DrIntercepts::WRITE_DR7.bits(), 1 << 23);
        assert_eq!(DrIntercepts::all().bits(), u32::MAX);
    }

    #[test]
    fn exception_bits_are_vectors() {
        assert_eq!(ExceptionIntercepts::vector(14), ExceptionIntercepts::PF);
        assert_eq!(ExceptionIntercepts::vector(18), ExceptionIntercepts::MC);
        assert_eq!(ExceptionIntercepts::vector(6), ExceptionIntercepts::UD);
        assert_eq!(ExceptionIntercepts::vector(29), ExceptionIntercepts::VC);
        assert_eq!(ExceptionIntercepts::vector(15).bits(), 1 << 15);
        assert_eq!(ExceptionIntercepts::vector(32 + 1), ExceptionIntercepts::DB);
        // Unnamed vectors survive a round trip through the raw word.
        let raw = ExceptionIntercepts::from_bits_truncate(1 << 9 | 1 << 31);
        assert_eq!(raw.bits(), 1 << 9 | 1 << 31);
    }

    #[test]
    fn misc_vectors_match_table_b1() {
        // Vector 1, offset 00Ch.
        assert_eq!(MiscIntercepts1::INTR.bits(), 1 << 0);
        assert_eq!(MiscIntercepts1::VINTR.bits(), 1 << 4);
        assert_eq!(MiscIntercepts1::TR_WRITE.bits(), 1 << 13);
        assert_eq!(MiscIntercepts1::CPUID.bits(), 1 << 18);
        assert_eq!(MiscIntercepts1::PAUSE.bits(), 1 << 23);
        assert_eq!(MiscIntercepts1::HLT.bits(), 1 << 24);
        assert_eq!(MiscIntercepts1::IOIO_PROT.bits(), 1 << 27);
        assert_eq!(MiscIntercepts1::MSR_PROT.bits(), 1 << 28);
        assert_eq!(MiscIntercepts1::SHUTDOWN.bits(), 1 << 31);
        assert_eq!(MiscIntercepts1::IRET.bits(), 1 << 20);
        assert_eq!(MiscIntercepts1::all().bits(), u32::MAX);
        // Vector 2, offset 010h.
        assert_eq!(MiscIntercepts2::VMMCALL.bits(), 1 << 1);
        assert_eq!(MiscIntercepts2::XSETBV.bits(), 1 << 13);
        assert_eq!(MiscIntercepts2::RDPRU.bits(), 1 << 14);
        assert_eq!(MiscIntercepts2::EFER_WRITE_TRAP.bits(), 1 << 15);
        assert_eq!(MiscIntercepts2::CR0_WRITE_TRAP.bits(), 1 << 16);
        assert_eq!(
            MiscIntercepts2::cr_write_trap(8),
            MiscIntercepts2::CR8_WRITE_TRAP
        );
        assert_eq!(MiscIntercepts2::CR15_WRITE_TRAP.bits(), 1 << 31);
        assert_eq!(MiscIntercepts2::all().bits(), u32::MAX);
        // Vector 3, offset 014h.
        assert_eq!(MiscIntercepts3::INVPCID.bits(), 1 << 2);
        assert_eq!(MiscIntercepts3::TLBSYNC.bits(), 1 << 4);
    }

    #[test]
    fn vmrun_is_always_required() {
        assert_eq!(MiscIntercepts2::REQUIRED, MiscIntercepts2::VMRUN);
        assert_eq!(MiscIntercepts2::VMRUN.bits(), 1);
        assert_eq!(Intercepts::required().misc2, MiscIntercepts2::VMRUN);
        let i = Intercepts {
            misc2: MiscIntercepts2::VMMCALL,
            ..Intercepts::default()
        }
        .with_required();
        assert_eq!(i.misc2, MiscIntercepts2::VMRUN | MiscIntercepts2::VMMCALL);
    }
}
