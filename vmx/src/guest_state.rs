//! Guest non-register state in the VMCS (SDM Vol. 3C §25.4.2): the interruptibility state and
//! the activity state, which decide whether an event can be injected at the next VM entry.

use bitflags::bitflags;

bitflags! {
    /// The guest interruptibility state, VMCS field `GuestInterruptibilityState` (SDM Vol. 3C
    /// §25.4.2, Table 25-3). Bits 31:5 are reserved and must be 0 on VM entry.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Interruptibility: u32 {
        /// Bit 0: blocking by STI, the instruction after an STI that set RFLAGS.IF. External
        /// interrupts cannot be injected (§27.3.1.5), and some processors block NMIs too.
        const BLOCKING_BY_STI = 1 << 0;
        /// Bit 1: blocking by MOV SS (or POP SS). Neither external interrupts nor NMIs can be
        /// injected (§27.3.1.5).
        const BLOCKING_BY_MOV_SS = 1 << 1;
        /// Bit 2: blocking by SMI (the guest runs an SMI handler).
        const BLOCKING_BY_SMI = 1 << 2;
        /// Bit 3: blocking by NMI, or with the "virtual NMIs" control virtual-NMI blocking: an
        /// NMI handler runs and has not executed IRET yet (§26.3, §27.6.1.2).
        const BLOCKING_BY_NMI = 1 << 3;
        /// Bit 4: enclave interruption (an SGX enclave was interrupted).
        const ENCLAVE_INTERRUPTION = 1 << 4;
    }
}

impl Interruptibility {
    /// The STI and MOV SS shadows: both end when the guest moves past the next instruction.
    pub const SHADOW: Self = Self::BLOCKING_BY_STI.union(Self::BLOCKING_BY_MOV_SS);

    /// Whether an external interrupt may be injected under this state: no STI or MOV SS
    /// shadow (§27.3.1.5; RFLAGS.IF must be 1 as well, which is not part of this field).
    pub const fn allows_external_interrupt(self) -> bool {
        !self.intersects(Self::SHADOW)
    }

    /// Whether an NMI may be injected under this state: no NMI blocking and no MOV SS shadow
    /// (§27.3.1.5), and, conservatively, no STI shadow either (SDM Vol. 3C §25.4.2 footnote:
    /// some processors block NMIs after STI as well, and VM entry may then fail).
    pub const fn allows_nmi(self) -> bool {
        !self.intersects(Self::SHADOW.union(Self::BLOCKING_BY_NMI))
    }
}

/// The guest activity state, VMCS field `GuestActivityState` (SDM Vol. 3C §25.4.2, Table
/// 25-4). atoll keeps every vCPU `Active`: HLT exits and is emulated by skipping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ActivityState {
    /// 0: executing instructions normally.
    Active = 0,
    /// 1: halted after HLT.
    Hlt = 1,
    /// 2: shutdown after a triple fault.
    Shutdown = 2,
    /// 3: waiting for a startup IPI.
    WaitForSipi = 3,
}

impl ActivityState {
    /// Decodes the field; `None` for a value Table 25-4 does not define.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Active),
            1 => Some(Self::Hlt),
            2 => Some(Self::Shutdown),
            3 => Some(Self::WaitForSipi),
            _ => None,
        }
    }

    /// The field value.
    pub const fn raw(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruptibility_bits_match_table_25_3() {
        assert_eq!(Interruptibility::BLOCKING_BY_STI.bits(), 0x1);
        assert_eq!(Interruptibility::BLOCKING_BY_MOV_SS.bits(), 0x2);
        assert_eq!(Interruptibility::BLOCKING_BY_SMI.bits(), 0x4);
        assert_eq!(Interruptibility::BLOCKING_BY_NMI.bits(), 0x8);
        assert_eq!(Interruptibility::ENCLAVE_INTERRUPTION.bits(), 0x10);
        assert_eq!(Interruptibility::SHADOW.bits(), 0x3);
    }

    #[test]
    fn what_each_state_allows() {
        let none = Interruptibility::empty();
        assert!(none.allows_external_interrupt() && none.allows_nmi());
        let sti = Interruptibility::BLOCKING_BY_STI;
        assert!(!sti.allows_external_interrupt() && !sti.allows_nmi());
        let mov_ss = Interruptibility::BLOCKING_BY_MOV_SS;
        assert!(!mov_ss.allows_external_interrupt() && !mov_ss.allows_nmi());
        // An NMI handler running blocks further NMIs but not external interrupts.
        let nmi = Interruptibility::BLOCKING_BY_NMI;
        assert!(nmi.allows_external_interrupt() && !nmi.allows_nmi());
        // SMI blocking and enclave interruption affect neither check.
        let other = Interruptibility::from_bits_retain(0x14);
        assert!(other.allows_external_interrupt() && other.allows_nmi());
        // Reserved bits never panic and are ignored.
        let r = Interruptibility::from_bits_retain(0xffff_ffe0);
        assert!(r.allows_external_interrupt() && r.allows_nmi());
    }

    #[test]
    fn activity_states_match_table_25_4() {
        for (raw, s) in [
            (0, ActivityState::Active),
            (1, ActivityState::Hlt),
            (2, ActivityState::Shutdown),
            (3, ActivityState::WaitForSipi),
        ] {
            assert_eq!(ActivityState::from_raw(raw), Some(s));
            assert_eq!(s.raw(), raw);
        }
        assert_eq!(ActivityState::from_raw(4), None);
        assert_eq!(ActivityState::from_raw(u32::MAX), None);
    }
}
