//! The x86-64 general-purpose register numbering (SDM Vol. 2A §2.1.5, ModRM/REX encoding), shared
//! by the VMX and SVM backends (exit qualifications, decode assists) and by the vendor-neutral
//! vCPU layer: it is architectural, not a vendor encoding.

/// A general-purpose register, numbered as instructions encode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Gpr {
    /// 0.
    Rax = 0,
    /// 1.
    Rcx = 1,
    /// 2.
    Rdx = 2,
    /// 3.
    Rbx = 3,
    /// 4.
    Rsp = 4,
    /// 5.
    Rbp = 5,
    /// 6.
    Rsi = 6,
    /// 7.
    Rdi = 7,
    /// 8.
    R8 = 8,
    /// 9.
    R9 = 9,
    /// 10.
    R10 = 10,
    /// 11.
    R11 = 11,
    /// 12.
    R12 = 12,
    /// 13.
    R13 = 13,
    /// 14.
    R14 = 14,
    /// 15.
    R15 = 15,
}

impl Gpr {
    /// Every register, in number order.
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The register numbered by the low four bits of `n` (hardware fields are 4 bits wide).
    pub const fn from_low_bits(n: u64) -> Self {
        Self::ALL[(n & 0xf) as usize]
    }

    /// The register numbered `n`, `None` above 15.
    pub fn from_index(n: u8) -> Option<Self> {
        Self::ALL.get(usize::from(n)).copied()
    }

    /// Its number.
    pub const fn number(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering() {
        for (i, r) in Gpr::ALL.iter().enumerate() {
            assert_eq!(r.number() as usize, i);
            assert_eq!(Gpr::from_index(i as u8), Some(*r));
            assert_eq!(Gpr::from_low_bits(i as u64 | 0xf0), *r);
        }
        assert_eq!(Gpr::from_index(16), None);
    }
}
