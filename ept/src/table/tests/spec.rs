//! Each format's rules written out again, from the manuals rather than from
//! [`crate::format`], so that the tests check the engine against an independent reading: how a
//! present entry, a leaf's attributes and a table pointer look, and which rights and memory
//! types a format must refuse (SDM Vol. 3C §29.3.2 for EPT; AMD64 APM Vol. 2 §5.4 and §15.25 for
//! NPT).

use super::{EptError, FakeFrames, MemType, Perms, Tables};
use crate::{EptFormat, Format, NptFormat, VtdFormat};

/// A format as the tests see it.
pub(super) trait Spec: Format + Sized + 'static {
    /// Every right the format can map, in the order the randomized runs pick from.
    const PERMS: &'static [Perms];
    /// Every memory type the format can map, likewise.
    const MEMS: &'static [MemType];
    /// Rights a corrupted operation uses; all must be refused.
    const BAD_PERMS: &'static [Perms];
    /// Memory types a corrupted map uses; all must be refused.
    const BAD_MEMS: &'static [MemType];
    /// A memory type other than WB that the format can map.
    const OTHER_MEM: MemType;
    /// The bits, besides the address, of every table pointer.
    const TABLE_BITS: u64;
    /// The accessed and dirty flags of a leaf.
    const AD: u64;

    /// Whether the processor uses the entry.
    fn present(raw: u64) -> bool;

    /// The bits of a leaf at `level` that decide what it translates to (accessed and dirty
    /// flags left out), in one layout for every level.
    fn key(raw: u64, level: u8) -> u64;

    /// Rights and memory type of a `key`; panics on anything the builder must not write.
    fn decode(key: u64) -> (Perms, MemType);

    /// The bits other than the address that a leaf at `level` may have.
    fn leaf_bits(level: u8) -> u64;

    /// What `protect` must answer for `perms` (once the range is good).
    fn expect_perms(perms: Perms) -> Result<(), EptError>;

    /// What `map` must answer for `perms` and `mem` (once the ranges are good).
    fn expect_attrs(perms: Perms, mem: MemType) -> Result<(), EptError> {
        Self::expect_perms(perms)?;
        if Self::BAD_MEMS.contains(&mem) {
            return Err(EptError::MemTypeNotExpressible { mem });
        }
        Ok(())
    }

    /// Checks what the backend loads to find the tree (EPTP or N_CR3).
    fn check_root(tree: &Tables<Self, FakeFrames>);
}

impl Spec for EptFormat {
    const PERMS: &'static [Perms] = &[
        Perms::READ,
        Perms::READ.union(Perms::WRITE),
        Perms::READ.union(Perms::EXECUTE),
        Perms::all(),
        Perms::EXECUTE,
    ];
    const MEMS: &'static [MemType] = &MemType::ALL;
    const BAD_PERMS: &'static [Perms] = &[
        Perms::empty(),
        Perms::WRITE,
        Perms::WRITE.union(Perms::EXECUTE),
        Perms::from_bits_retain(9),
    ];
    const BAD_MEMS: &'static [MemType] = &[];
    const OTHER_MEM: MemType = MemType::WriteCombining;
    const TABLE_BITS: u64 = 0x7;
    const AD: u64 = 0x300;

    /// Any of read, write, execute (bits 2:0).
    fn present(raw: u64) -> bool {
        raw & 7 != 0
    }

    /// Bits 2:0 (rights), 5:3 (memory type), 6 (ignore PAT) and 10 (user execute): the same
    /// layout at every level.
    fn key(raw: u64, _level: u8) -> u64 {
        raw & 0x47f
    }

    fn decode(key: u64) -> (Perms, MemType) {
        assert_eq!(key & !0x3f, 0, "ignore-PAT or user-execute set");
        let perms = Perms::from_bits_truncate(key);
        assert!(perms.is_valid(), "rights {perms}");
        let mem = MemType::from_bits((key >> 3) as u8).expect("valid memory type");
        (perms, mem)
    }

    /// Rights, memory type, ignore-PAT, accessed, dirty, user execute; bit 7 in large leaves.
    fn leaf_bits(level: u8) -> u64 {
        if level >= 2 {
            0x7ff
        } else {
            0x77f
        }
    }

    fn expect_perms(perms: Perms) -> Result<(), EptError> {
        if perms.is_valid() {
            Ok(())
        } else {
            Err(EptError::InvalidPerms { perms })
        }
    }

    fn check_root(tree: &Tables<Self, FakeFrames>) {
        let eptp = tree.eptp(true);
        assert_eq!(eptp.pml4(), tree.pml4());
        // Write-back (6), walk length 4 (3 << 3), accessed/dirty (1 << 6).
        assert_eq!(eptp.as_u64(), tree.pml4().as_u64() | 0x5e);
        assert_eq!(tree.eptp(false).as_u64(), tree.pml4().as_u64() | 0x1e);
    }
}

// The NPT bits (APM Vol. 2 §5.4.1): P, R/W, U/S, PWT, PCD, bit 7 (PS, or PAT in a PTE), PAT of a
// large leaf, NX.
const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const BIT7: u64 = 1 << 7;
const PAT_LARGE: u64 = 1 << 12;
const NX: u64 = 1 << 63;

impl Spec for NptFormat {
    const PERMS: &'static [Perms] = &[
        Perms::READ,
        Perms::READ.union(Perms::WRITE),
        Perms::READ.union(Perms::EXECUTE),
        Perms::all(),
    ];
    const MEMS: &'static [MemType] = &[
        MemType::Uncacheable,
        MemType::WriteThrough,
        MemType::WriteBack,
    ];
    const BAD_PERMS: &'static [Perms] = &[
        Perms::empty(),
        Perms::WRITE,
        Perms::WRITE.union(Perms::EXECUTE),
        Perms::from_bits_retain(9),
        Perms::EXECUTE,
    ];
    const BAD_MEMS: &'static [MemType] = &[MemType::WriteCombining, MemType::WriteProtected];
    const OTHER_MEM: MemType = MemType::WriteThrough;
    /// P, R/W and U/S: nested walks are user accesses (APM §15.25.5), rights are ANDed.
    const TABLE_BITS: u64 = P | RW | US;
    const AD: u64 = 0x60;

    fn present(raw: u64) -> bool {
        raw & P != 0
    }

    /// P, R/W, U/S, PWT, PCD, NX, and the PAT bit moved to bit 7 whatever the level.
    fn key(raw: u64, level: u8) -> u64 {
        let pat = if level == 1 {
            raw & BIT7
        } else {
            raw & PAT_LARGE
        };
        raw & (P | RW | US | PWT | PCD | NX) | if pat != 0 { BIT7 } else { 0 }
    }

    fn decode(key: u64) -> (Perms, MemType) {
        assert_eq!(key & (P | US), P | US, "leaf without P or U/S: {key:#x}");
        let mut perms = Perms::READ;
        if key & RW != 0 {
            perms |= Perms::WRITE;
        }
        if key & NX == 0 {
            perms |= Perms::EXECUTE;
        }
        // The reset-default PAT: WB, WT, UC-, UC, and again.
        let index = (key & PWT != 0) as usize | ((key & PCD != 0) as usize) << 1;
        let mem = [
            Some(MemType::WriteBack),
            Some(MemType::WriteThrough),
            None,
            Some(MemType::Uncacheable),
        ][index]
            .expect("UC- is never written");
        (perms, mem)
    }

    fn leaf_bits(level: u8) -> u64 {
        let common = P | RW | US | PWT | PCD | 0x60 | NX;
        if level >= 2 {
            common | BIT7 | PAT_LARGE
        } else {
            common | BIT7
        }
    }

    fn expect_perms(perms: Perms) -> Result<(), EptError> {
        if !perms.is_valid() {
            Err(EptError::InvalidPerms { perms })
        } else if !perms.contains(Perms::READ) {
            Err(EptError::PermsNotExpressible { perms })
        } else {
            Ok(())
        }
    }

    fn check_root(tree: &Tables<Self, FakeFrames>) {
        // N_CR3 is the bare address of the PML4 (APM §15.25.3).
        assert_eq!(tree.nested_cr3(), tree.pml4());
        assert_eq!(tree.nested_cr3().as_u64() & 0xfff, 0);
    }
}

// The VT-d second-level bits (VT-d spec §9.8): R, W, PS in large leaves; no memory type, no
// execute, no accessed/dirty flags in legacy mode; SNP (bit 11) never written.
const SL_R: u64 = 1;
const SL_W: u64 = 1 << 1;
const SL_PS: u64 = 1 << 7;

impl Spec for VtdFormat {
    const PERMS: &'static [Perms] = &[Perms::READ, Perms::READ.union(Perms::WRITE)];
    const MEMS: &'static [MemType] = &[MemType::WriteBack];
    const BAD_PERMS: &'static [Perms] = &[
        Perms::empty(),
        Perms::WRITE,
        Perms::EXECUTE,
        Perms::READ.union(Perms::EXECUTE),
        Perms::all(),
        Perms::from_bits_retain(9),
    ];
    const BAD_MEMS: &'static [MemType] = &[
        MemType::Uncacheable,
        MemType::WriteCombining,
        MemType::WriteThrough,
        MemType::WriteProtected,
    ];
    /// VT-d has no other type; the generic scenarios that need one do not run for it.
    const OTHER_MEM: MemType = MemType::WriteBack;
    const TABLE_BITS: u64 = SL_R | SL_W;
    const AD: u64 = 0;

    fn present(raw: u64) -> bool {
        raw & (SL_R | SL_W) != 0
    }

    fn key(raw: u64, _level: u8) -> u64 {
        raw & (SL_R | SL_W)
    }

    fn decode(key: u64) -> (Perms, MemType) {
        assert_eq!(key & !(SL_R | SL_W), 0, "bits besides R/W: {key:#x}");
        assert!(key & SL_R != 0, "leaf without R: {key:#x}");
        (Perms::from_bits_truncate(key), MemType::WriteBack)
    }

    fn leaf_bits(level: u8) -> u64 {
        if level >= 2 {
            SL_R | SL_W | SL_PS
        } else {
            SL_R | SL_W
        }
    }

    fn expect_perms(perms: Perms) -> Result<(), EptError> {
        if !perms.is_valid() {
            Err(EptError::InvalidPerms { perms })
        } else if perms.contains(Perms::EXECUTE) {
            Err(EptError::PermsNotExpressible { perms })
        } else {
            Ok(())
        }
    }

    fn check_root(tree: &Tables<Self, FakeFrames>) {
        // SLPTPTR is the bare 4 KiB-aligned address of the 4-level root (§9.3).
        assert_eq!(tree.slptptr(), tree.pml4());
        assert_eq!(tree.slptptr().as_u64() & 0xfff, 0);
    }
}
