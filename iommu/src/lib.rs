//! Intel VT-d.
//!
//! This crate owns DMA remapping (VT-d spec rev 4.x). It reads the ACPI DMAR table (§8, "BIOS
//! Considerations") into a list of remapping hardware units, which is how atoll learns whether
//! and where an IOMMU exists; parsing works on a byte slice with every length checked, so a
//! malformed table yields an error instead of a wild read. Then, per unit:
//!
//! * [`regs`]: typed registers (§10.4) behind the [`Registers`] trait the hypervisor implements
//!   over the MMIO page;
//! * [`context`]: root and context tables (§9.1, §9.3) deciding each device's domain;
//! * second-level tables: [`ept::SlTables`], the `ept` engine with the VT-d entry format (§9.8);
//! * [`qi`]: queued invalidation (§6.5.2);
//! * [`fault`]: fault records (§7.1.3, §10.4.14) decoded;
//! * [`unit`](mod@unit): probing, the enable sequence (§10.4.4) and the operations tying them together;
//! * `model` (tests, or the `model` feature): a register model of a unit for host tests.
#![cfg_attr(target_os = "none", no_std)]

extern crate alloc;

pub mod context;
mod error;
pub mod fault;
pub mod irte;
#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod qi;
pub mod regs;
pub mod remap;
pub mod unit;

pub use context::{
    AddressWidth, ContextEntry, ContextTables, DomainId, Flush, RootEntry, SourceId,
};
pub use error::Error;
pub use fault::{DrainSummary, FaultKind, FaultReason, FaultRecord};
pub use qi::{Descriptor, InvalidationQueue, QueueFault, QueueMemory, RawQueueMemory};
pub use regs::{Cap, Ecap, GlobalCommand, GlobalStatus, MmioRegisters, Registers};
pub use unit::Unit;

use boot::HostPhysAddr;
use core::fmt;

/// Most DMA-remapping hardware units recorded.
pub const MAX_UNITS: usize = 16;

/// Bytes of the DMAR header: the ACPI SDT header (36), host address width, flags, reserved (§8.1).
const DMAR_HEADER_LEN: usize = 48;

/// Remapping structure types (VT-d spec §8.2, Table 8-2 "Remapping Structure Types").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemappingStructure {
    /// 0: DMA Remapping Hardware Unit Definition.
    Drhd,
    /// 1: Reserved Memory Region Reporting.
    Rmrr,
    /// 2: Root Port ATS Capability Reporting.
    Atsr,
    /// 3: Remapping Hardware Static Affinity.
    Rhsa,
    /// 4: ACPI Name-space Device Declaration.
    Andd,
    /// 5: SoC Integrated Address Translation Cache.
    Satc,
    /// Anything else.
    Other(u16),
}

impl From<u16> for RemappingStructure {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::Drhd,
            1 => Self::Rmrr,
            2 => Self::Atsr,
            3 => Self::Rhsa,
            4 => Self::Andd,
            5 => Self::Satc,
            o => Self::Other(o),
        }
    }
}

/// One DMA-remapping hardware unit (DRHD, VT-d spec §8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemappingUnit {
    /// PCI segment it serves.
    pub segment: u16,
    /// Physical base of its register set.
    pub register_base: HostPhysAddr,
    /// INCLUDE_PCI_ALL: it serves every device of the segment not claimed by another unit.
    pub include_pci_all: bool,
    /// Size of its register set in 4 KiB pages: 2^N with N the DRHD's Size field (byte 5, VT-d
    /// spec §8.3, Table 8-3; 0 — one page — in firmware older than the field).
    pub register_pages: u64,
}

/// What the DMAR table says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    /// DMA physical addressability, in bits (the field plus one, §8.1).
    pub host_address_width: u8,
    /// Flags bit 0: the platform supports interrupt remapping.
    pub intr_remap: bool,
    /// Flags bit 1: firmware asks the OS to opt out of x2APIC.
    pub x2apic_opt_out: bool,
    units: [Option<RemappingUnit>; MAX_UNITS],
    /// RMRRs found (regions firmware keeps DMA-ing into).
    pub rmrr_count: usize,
}

/// Why a DMAR table could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarError {
    /// Shorter than its header or its declared length.
    Truncated,
    /// The signature is not `DMAR`.
    BadSignature,
    /// A remapping structure's length runs past the table or is below 4.
    BadStructure { offset: usize },
    /// More DRHD units than [`MAX_UNITS`].
    TooManyUnits,
}

impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "DMAR table is truncated"),
            Self::BadSignature => write!(f, "table signature is not DMAR"),
            Self::BadStructure { offset } => write!(
                f,
                "DMAR remapping structure at offset {offset} has a bad length"
            ),
            Self::TooManyUnits => write!(f, "DMAR lists more than {MAX_UNITS} remapping units"),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Dmar {
    /// Parses a whole DMAR table (header included).
    pub fn parse(table: &[u8]) -> Result<Self, DmarError> {
        if table.len() < DMAR_HEADER_LEN {
            return Err(DmarError::Truncated);
        }
        if &table[0..4] != b"DMAR" {
            return Err(DmarError::BadSignature);
        }
        let len = u32_at(table, 4).ok_or(DmarError::Truncated)? as usize;
        if len > table.len() || len < DMAR_HEADER_LEN {
            return Err(DmarError::Truncated);
        }
        let table = &table[..len];
        let mut dmar = Dmar {
            host_address_width: table[36].saturating_add(1),
            intr_remap: table[37] & 1 != 0,
            x2apic_opt_out: table[37] & 2 != 0,
            units: [None; MAX_UNITS],
            rmrr_count: 0,
        };
        let mut offset = DMAR_HEADER_LEN;
        let mut n = 0;
        while offset < len {
            let kind = u16_at(table, offset).ok_or(DmarError::BadStructure { offset })?;
            let slen =
                u16_at(table, offset + 2).ok_or(DmarError::BadStructure { offset })? as usize;
            if slen < 4 || offset + slen > len {
                return Err(DmarError::BadStructure { offset });
            }
            match RemappingStructure::from(kind) {
                RemappingStructure::Drhd => {
                    let s = &table[offset..offset + slen];
                    let flags = *s.get(4).ok_or(DmarError::BadStructure { offset })?;
                    let size = *s.get(5).ok_or(DmarError::BadStructure { offset })? & 0xf;
                    let segment = u16_at(s, 6).ok_or(DmarError::BadStructure { offset })?;
                    let base = u64_at(s, 8).ok_or(DmarError::BadStructure { offset })?;
                    if n == MAX_UNITS {
                        return Err(DmarError::TooManyUnits);
                    }
                    dmar.units[n] = Some(RemappingUnit {
                        segment,
                        register_base: HostPhysAddr::new(base),
                        include_pci_all: flags & 1 != 0,
                        register_pages: 1 << size,
                    });
                    n += 1;
                }
                RemappingStructure::Rmrr => dmar.rmrr_count += 1,
                _ => {}
            }
            offset += slen;
        }
        Ok(dmar)
    }

    /// The remapping hardware units, in table order.
    pub fn units(&self) -> impl Iterator<Item = &RemappingUnit> {
        self.units.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal DMAR: one INCLUDE_PCI_ALL unit at 0xfed90000, host address width 39,
    /// interrupt remapping on.
    fn qemu_like() -> Vec<u8> {
        let mut t = vec![0u8; DMAR_HEADER_LEN];
        t[0..4].copy_from_slice(b"DMAR");
        t[36] = 38;
        t[37] = 1;
        // DRHD: type 0, length 16, flags INCLUDE_PCI_ALL, segment 0, base.
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&16u16.to_le_bytes());
        t.extend_from_slice(&[1, 0]);
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&0xfed9_0000u64.to_le_bytes());
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t
    }

    #[test]
    fn reads_units_and_flags() {
        let d = Dmar::parse(&qemu_like()).unwrap();
        assert_eq!(d.host_address_width, 39);
        assert!(d.intr_remap);
        assert!(!d.x2apic_opt_out);
        let units: Vec<_> = d.units().collect();
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].register_base, HostPhysAddr::new(0xfed9_0000));
        assert!(units[0].include_pci_all);
        assert_eq!(units[0].register_pages, 1, "Size 0: one page");
        // Size N: 2^N pages.
        let mut t = qemu_like();
        t[DMAR_HEADER_LEN + 5] = 2;
        let d = Dmar::parse(&t).unwrap();
        assert_eq!(d.units().next().unwrap().register_pages, 4);
    }

    #[test]
    fn captured_qemu_dmar() {
        // `cargo xtask capture-acpi --scenario boot-vtd --emulator qemu --cpus 2`
        // (QEMU 10, `-device intel-iommu,intremap=on`).
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/acpi/boot-vtd-qemu-2cpu/DMAR"
        );
        let d = Dmar::parse(&std::fs::read(path).unwrap()).unwrap();
        assert!(d.intr_remap);
        let units: Vec<_> = d.units().collect();
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].register_base, HostPhysAddr::new(0xfed9_0000));
        // QEMU lists its devices by scope (I/O APIC, 00:00.0, 00:1f.x) instead of INCLUDE_PCI_ALL.
        assert!(!units[0].include_pci_all);
        assert_eq!(units[0].segment, 0);
        assert_eq!(units[0].register_pages, 1);
        assert_eq!(d.host_address_width, 48);
    }

    #[test]
    fn malformed_tables_are_errors() {
        assert_eq!(Dmar::parse(b"DMAR"), Err(DmarError::Truncated));
        let mut t = qemu_like();
        t[0] = b'X';
        assert_eq!(Dmar::parse(&t), Err(DmarError::BadSignature));
        let mut t = qemu_like();
        t[DMAR_HEADER_LEN + 2] = 200; // structure longer than the table
        assert_eq!(
            Dmar::parse(&t),
            Err(DmarError::BadStructure {
                offset: DMAR_HEADER_LEN
            })
        );
        let mut t = qemu_like();
        t[DMAR_HEADER_LEN + 2] = 0; // zero length would loop forever
        assert_eq!(
            Dmar::parse(&t),
            Err(DmarError::BadStructure {
                offset: DMAR_HEADER_LEN
            })
        );
        let mut t = qemu_like();
        t[4] = 255; // declared longer than the bytes given
        assert_eq!(Dmar::parse(&t), Err(DmarError::Truncated));
    }
}
