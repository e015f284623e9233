//! Second-stage page tables: Intel EPT and AMD nested page tables.
//!
//! This crate owns the second-stage tables of partitions under either backend: extended page
//! tables for VMX (SDM Vol. 3C §29.3, "The Extended Page Table Mechanism") and nested page
//! tables for SVM (AMD64 APM Vol. 2 §15.25, "Nested Paging"). In atoll "EPT" names both; the
//! crate's error type is [`EptError`] for both.
//!
//! * [`EptCaps`] (here): what the processor supports, from IA32_VMX_EPT_VPID_CAP (SDM Vol. 3D
//!   Appendix A.10), which decides the page sizes, memory types and invalidation types the
//!   builder may use.
//! * [`entry`]: the bit layouts of EPT paging-structure entries and of the EPT pointer, and the
//!   permission, memory-type and page-size types both formats share.
//! * [`npt`]: the bit layout of nested page table entries (long-mode paging entries) and the
//!   default-PAT indices they select memory types with.
//! * [`format`](mod@format): the [`Format`] trait, what the engine needs to know of an entry
//!   format, and its instances [`EptFormat`], [`NptFormat`] and [`VtdFormat`] (VT-d second-level
//!   tables, used as [`SlTables`] by the `iommu` crate).
//! * [`table`]: the engine, [`Tables`], used as [`Ept`] or [`Npt`]: map, unmap, protect and
//!   translate over four-level tables with 4 KiB, 2 MiB and 1 GiB pages, all-or-nothing, with
//!   table memory behind the [`FrameSource`] trait so that it runs in host tests.
//! * `invept` (only on the target): the INVEPT instruction. NPT invalidation (ASID flushes,
//!   INVLPGA) belongs to the SVM backend.
#![cfg_attr(target_os = "none", no_std)]

pub mod entry;
pub mod format;
#[cfg(target_os = "none")]
pub mod invept;
pub mod npt;
pub mod table;

pub use entry::{EntryFlags, EptEntry, Eptp, MemType, PageSize, Perms};
pub use format::{EptFormat, Format, NptFormat, VtdFormat};
pub use npt::{NptEntry, NptFlags, PatIndex};
pub use table::{
    Ept, EptError, FrameSource, Npt, Operand, Region, Regions, SlTables, Tables, Translation,
    GPA_LIMIT, HPA_LIMIT, PAGE_SIZE,
};

use bitflags::bitflags;

bitflags! {
    /// IA32_VMX_EPT_VPID_CAP bits (SDM Vol. 3D Appendix A.10).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct EptCaps: u64 {
        /// Bit 0: execute-only translations.
        const EXECUTE_ONLY = 1 << 0;
        /// Bit 6: 4-level page walks.
        const WALK_LENGTH_4 = 1 << 6;
        /// Bit 7: 5-level page walks.
        const WALK_LENGTH_5 = 1 << 7;
        /// Bit 8: uncacheable EPT paging-structure memory type.
        const MEMORY_TYPE_UC = 1 << 8;
        /// Bit 14: write-back EPT paging-structure memory type.
        const MEMORY_TYPE_WB = 1 << 14;
        /// Bit 16: 2 MiB pages (PDE with bit 7).
        const PAGE_2M = 1 << 16;
        /// Bit 17: 1 GiB pages (PDPTE with bit 7).
        const PAGE_1G = 1 << 17;
        /// Bit 20: INVEPT.
        const INVEPT = 1 << 20;
        /// Bit 21: accessed and dirty flags.
        const ACCESSED_DIRTY = 1 << 21;
        /// Bit 22: advanced VM-exit information for EPT violations.
        const ADVANCED_EXIT_INFO = 1 << 22;
        /// Bit 25: single-context INVEPT.
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// Bit 26: all-context INVEPT.
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// Bit 32: INVVPID.
        const INVVPID = 1 << 32;
        /// Bit 40: individual-address INVVPID.
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        /// Bit 41: single-context INVVPID.
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        /// Bit 42: all-context INVVPID.
        const INVVPID_ALL_CONTEXT = 1 << 42;
        /// Bit 43: single-context-retaining-globals INVVPID.
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
    }
}

impl EptCaps {
    /// Decodes the raw MSR value; unknown bits are dropped.
    pub fn from_msr(raw: u64) -> Self {
        Self::from_bits_truncate(raw)
    }

    /// atoll's table builder needs 4-level walks with write-back tables and single-context
    /// INVEPT; this says which of those are missing, if any.
    pub fn missing_for_atoll(&self) -> Option<&'static str> {
        if !self.contains(Self::WALK_LENGTH_4) {
            Some("4-level EPT page walks")
        } else if !self.contains(Self::MEMORY_TYPE_WB) {
            Some("write-back EPT paging structures")
        } else if !self.contains(Self::INVEPT | Self::INVEPT_SINGLE_CONTEXT) {
            Some("single-context INVEPT")
        } else {
            None
        }
    }

    /// Largest leaf page size the builder may use, in bytes.
    pub fn largest_page(&self) -> u64 {
        if self.contains(Self::PAGE_1G) {
            1 << 30
        } else if self.contains(Self::PAGE_2M) {
            1 << 21
        } else {
            1 << 12
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skylake_class_caps() {
        let caps = EptCaps::from_msr(0x0000_0f01_0633_4141);
        assert!(
            caps.contains(EptCaps::EXECUTE_ONLY | EptCaps::WALK_LENGTH_4 | EptCaps::MEMORY_TYPE_WB)
        );
        assert!(caps.contains(EptCaps::PAGE_2M | EptCaps::PAGE_1G | EptCaps::ACCESSED_DIRTY));
        assert!(caps.contains(EptCaps::INVVPID | EptCaps::INVVPID_SINGLE_CONTEXT));
        assert_eq!(caps.missing_for_atoll(), None);
        assert_eq!(caps.largest_page(), 1 << 30);
    }

    #[test]
    fn missing_features_are_named() {
        assert_eq!(
            EptCaps::from_msr(0).missing_for_atoll(),
            Some("4-level EPT page walks")
        );
        let no_invept = EptCaps::WALK_LENGTH_4 | EptCaps::MEMORY_TYPE_WB | EptCaps::PAGE_2M;
        assert_eq!(no_invept.missing_for_atoll(), Some("single-context INVEPT"));
        assert_eq!(no_invept.largest_page(), 1 << 21);
    }
}
