//! The guest registers the VMCS does not hold.
//!
//! This module owns [`GuestRegisters`], the memory image the entry/exit stub (`run`, target
//! only) loads before VM entry and stores after VM exit, and [`Gpr`], the general-purpose
//! register numbering exit qualifications and instruction information use. Guest RSP, RIP and
//! RFLAGS live in the VMCS guest-state area, not here.

pub use boot::regs::Gpr;

/// Guest general-purpose registers (all but RSP) and CR2, which VM entry and exit do not switch
/// (SDM Vol. 3C §27.3.2 and §28.3 list what they do switch). The layout is the stub's ABI:
/// `run` addresses every field by `offset_of!`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegisters {
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// CR2 (the guest's last page-fault address).
    pub cr2: u64,
}

impl GuestRegisters {
    /// The value of `gpr`; `None` for RSP, which is the VMCS field `GuestRsp`.
    pub fn gpr(&self, gpr: Gpr) -> Option<u64> {
        Some(match gpr {
            Gpr::Rax => self.rax,
            Gpr::Rcx => self.rcx,
            Gpr::Rdx => self.rdx,
            Gpr::Rbx => self.rbx,
            Gpr::Rsp => return None,
            Gpr::Rbp => self.rbp,
            Gpr::Rsi => self.rsi,
            Gpr::Rdi => self.rdi,
            Gpr::R8 => self.r8,
            Gpr::R9 => self.r9,
            Gpr::R10 => self.r10,
            Gpr::R11 => self.r11,
            Gpr::R12 => self.r12,
            Gpr::R13 => self.r13,
            Gpr::R14 => self.r14,
            Gpr::R15 => self.r15,
        })
    }

    /// The storage of `gpr`; `None` for RSP, which is the VMCS field `GuestRsp`.
    pub fn gpr_mut(&mut self, gpr: Gpr) -> Option<&mut u64> {
        Some(match gpr {
            Gpr::Rax => &mut self.rax,
            Gpr::Rcx => &mut self.rcx,
            Gpr::Rdx => &mut self.rdx,
            Gpr::Rbx => &mut self.rbx,
            Gpr::Rsp => return None,
            Gpr::Rbp => &mut self.rbp,
            Gpr::Rsi => &mut self.rsi,
            Gpr::Rdi => &mut self.rdi,
            Gpr::R8 => &mut self.r8,
            Gpr::R9 => &mut self.r9,
            Gpr::R10 => &mut self.r10,
            Gpr::R11 => &mut self.r11,
            Gpr::R12 => &mut self.r12,
            Gpr::R13 => &mut self.r13,
            Gpr::R14 => &mut self.r14,
            Gpr::R15 => &mut self.r15,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_register_number_maps_to_its_field() {
        let mut regs = GuestRegisters::default();
        for n in 0..16u64 {
            let gpr = Gpr::from_low_bits(n);
            assert_eq!(gpr as u64, n);
            if let Some(r) = regs.gpr_mut(gpr) {
                *r = 0x100 + n;
            }
        }
        assert_eq!(Gpr::from_low_bits(0x13), Gpr::Rbx);
        assert_eq!(regs.rax, 0x100);
        assert_eq!(regs.rcx, 0x101);
        assert_eq!(regs.rdx, 0x102);
        assert_eq!(regs.rbx, 0x103);
        assert_eq!(regs.rbp, 0x105);
        assert_eq!(regs.rsi, 0x106);
        assert_eq!(regs.rdi, 0x107);
        assert_eq!(regs.r8, 0x108);
        assert_eq!(regs.r15, 0x10f);
        assert_eq!(regs.cr2, 0);
        assert_eq!(regs.gpr(Gpr::Rsp), None);
        assert_eq!(regs.gpr(Gpr::R11), Some(0x10b));
    }

    #[test]
    fn layout_is_sixteen_packed_quadwords() {
        assert_eq!(core::mem::size_of::<GuestRegisters>(), 16 * 8);
        assert_eq!(core::mem::offset_of!(GuestRegisters, rax), 0);
        assert_eq!(core::mem::offset_of!(GuestRegisters, r15), 14 * 8);
        assert_eq!(core::mem::offset_of!(GuestRegisters, cr2), 15 * 8);
    }
}
