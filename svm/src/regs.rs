//! The guest registers the VMCB does not hold.
//!
//! This module owns [`GuestRegisters`], the memory image the VMRUN stub (`run`, target only)
//! loads before VMRUN and stores after #VMEXIT, and [`Gpr`], the general-purpose register
//! numbering decode assists use. VMRUN and #VMEXIT switch RAX, RSP, RIP, RFLAGS, CR2 and the
//! segment and control registers through the VMCB state-save area (AMD64 APM Vol. 2 §15.5.1,
//! §15.6), so those are not here; [`GuestRegisters::read`] and [`GuestRegisters::write`] reach
//! RAX and RSP in the VMCB.

use crate::vmcb::{Field64, Vmcb};

pub use boot::regs::Gpr;

/// Guest general-purpose registers but RAX and RSP, which VMRUN and #VMEXIT do not switch
/// (RAX holds the VMCB address for VMRUN and is switched through the VMCB). The layout is the
/// stub's ABI: `run` addresses every field by `offset_of!`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegisters {
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
}

impl GuestRegisters {
    /// The storage of `gpr`; `None` for RAX and RSP, which live in the VMCB.
    pub fn gpr_mut(&mut self, gpr: Gpr) -> Option<&mut u64> {
        Some(match gpr {
            Gpr::Rax | Gpr::Rsp => return None,
            Gpr::Rcx => &mut self.rcx,
            Gpr::Rdx => &mut self.rdx,
            Gpr::Rbx => &mut self.rbx,
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

    /// The value of `gpr`; `None` for RAX and RSP, which live in the VMCB.
    pub fn gpr(&self, gpr: Gpr) -> Option<u64> {
        Some(match gpr {
            Gpr::Rax | Gpr::Rsp => return None,
            Gpr::Rcx => self.rcx,
            Gpr::Rdx => self.rdx,
            Gpr::Rbx => self.rbx,
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

    /// The value of any general-purpose register: RAX and RSP from `vmcb`, the rest from
    /// `self`.
    pub fn read(&self, vmcb: &Vmcb, gpr: Gpr) -> u64 {
        match gpr {
            Gpr::Rax => vmcb.read64(Field64::Rax),
            Gpr::Rsp => vmcb.read64(Field64::Rsp),
            _ => self.gpr(gpr).unwrap_or(0),
        }
    }

    /// Writes any general-purpose register: RAX and RSP to `vmcb`, the rest to `self`.
    pub fn write(&mut self, vmcb: &mut Vmcb, gpr: Gpr, value: u64) {
        match self.gpr_mut(gpr) {
            Some(slot) => *slot = value,
            None if gpr == Gpr::Rax => vmcb.write64(Field64::Rax, value),
            None => vmcb.write64(Field64::Rsp, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn every_register_number_maps_to_its_storage() {
        let mut regs = GuestRegisters::default();
        let mut vmcb = Box::new(Vmcb::zeroed());
        for n in 0..16u64 {
            let gpr = Gpr::from_low_bits(n);
            assert_eq!(gpr as u64, n);
            regs.write(&mut vmcb, gpr, 0x100 + n);
        }
        for n in 0..16u64 {
            assert_eq!(regs.read(&vmcb, Gpr::from_low_bits(n)), 0x100 + n);
        }
        assert_eq!(Gpr::from_low_bits(0x13), Gpr::Rbx);
        assert_eq!(vmcb.read64(Field64::Rax), 0x100);
        assert_eq!(vmcb.read64(Field64::Rsp), 0x104);
        assert_eq!(regs.rcx, 0x101);
        assert_eq!(regs.rdx, 0x102);
        assert_eq!(regs.rbx, 0x103);
        assert_eq!(regs.rbp, 0x105);
        assert_eq!(regs.rsi, 0x106);
        assert_eq!(regs.rdi, 0x107);
        assert_eq!(regs.r8, 0x108);
        assert_eq!(regs.r15, 0x10f);
        assert_eq!(regs.gpr(Gpr::Rax), None);
        assert_eq!(regs.gpr(Gpr::Rsp), None);
        assert!(regs.gpr_mut(Gpr::Rsp).is_none());
        assert_eq!(regs.gpr(Gpr::R11), Some(0x10b));
    }

    #[test]
    fn layout_is_fourteen_packed_quadwords() {
        assert_eq!(core::mem::size_of::<GuestRegisters>(), 14 * 8);
        assert_eq!(offset_of!(GuestRegisters, rbx), 0);
        assert_eq!(offset_of!(GuestRegisters, rcx), 8);
        assert_eq!(offset_of!(GuestRegisters, rbp), 5 * 8);
        assert_eq!(offset_of!(GuestRegisters, r8), 6 * 8);
        assert_eq!(offset_of!(GuestRegisters, r15), 13 * 8);
    }
}
