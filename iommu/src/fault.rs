//! Fault recording (VT-d spec rev 4.x §7.1 "Remapping Hardware Fault Reporting", §7.1.3 and
//! Appendix A "Non-Recoverable Fault Reason Encodings", §10.4.14 "Fault Recording Registers").
//!
//! A unit logs each DMA or interrupt-remapping fault it does not suppress in one of CAP.NFR
//! 128-bit fault recording registers at CAP.FRO × 16, sets their F bit and FSTS.PPF, and when
//! all are full sets FSTS.PFO and drops further faults. atoll masks the fault event interrupt
//! and polls [`drain`].

use crate::context::SourceId;
use crate::regs::{offset, Cap, FaultStatus, Registers};
use core::fmt;

/// Why a request faulted (FR, Appendix A). Unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// 0x1: the root entry of the request's bus is not present.
    RootNotPresent,
    /// 0x2: the context entry of the device is not present (the device is blocked).
    ContextNotPresent,
    /// 0x3: the context entry is invalid (bad AW or TT).
    ContextInvalid,
    /// 0x4: the address is beyond the domain's (or the unit's) address width.
    AddressBeyondMgaw,
    /// 0x5: a write to a page without W.
    WriteDenied,
    /// 0x6: a read to a page without R.
    ReadDenied,
    /// 0x7: a second-level paging entry could not be read.
    SlEntryAccess,
    /// 0x8: the root entry could not be read.
    RootEntryAccess,
    /// 0x9: the context entry could not be read.
    ContextEntryAccess,
    /// 0xA: reserved bits set in a present root entry.
    RootReserved,
    /// 0xB: reserved bits set in a present context entry.
    ContextReserved,
    /// 0xC: reserved bits set in a second-level paging entry with R or W set.
    SlEntryReserved,
    /// 0xD: the request type is blocked by the context entry's translation type.
    TranslationTypeBlocked,
    /// 0xE: an untranslated request's output address lies in the interrupt range 0xFEEx_xxxx.
    InterruptAddressRange,
    /// 0x20: reserved fields set in a remappable-format interrupt request.
    InterruptRequestReserved,
    /// 0x21: the interrupt index is beyond the interrupt remapping table's size.
    InterruptIndexBeyondTable,
    /// 0x22: the interrupt remapping table entry is not present.
    IrteNotPresent,
    /// 0x23: the interrupt remapping table could not be read.
    IrtAccess,
    /// 0x24: reserved fields set in a present interrupt remapping table entry.
    IrteReserved,
    /// 0x25: a compatibility-format interrupt was blocked (IRE set, CFI clear).
    CompatibilityInterruptBlocked,
    /// 0x26: source-id validation of the interrupt failed.
    SourceIdInvalid,
    /// 0x27: a posted-interrupt descriptor could not be read.
    PostedDescriptorAccess,
    /// 0x28: reserved fields set in a posted-interrupt descriptor.
    PostedDescriptorReserved,
    /// Any other encoding (reserved, scalable-mode, or a unit newer than this code).
    Other(u8),
}

impl FaultReason {
    /// Decodes FR.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0x1 => Self::RootNotPresent,
            0x2 => Self::ContextNotPresent,
            0x3 => Self::ContextInvalid,
            0x4 => Self::AddressBeyondMgaw,
            0x5 => Self::WriteDenied,
            0x6 => Self::ReadDenied,
            0x7 => Self::SlEntryAccess,
            0x8 => Self::RootEntryAccess,
            0x9 => Self::ContextEntryAccess,
            0xa => Self::RootReserved,
            0xb => Self::ContextReserved,
            0xc => Self::SlEntryReserved,
            0xd => Self::TranslationTypeBlocked,
            0xe => Self::InterruptAddressRange,
            0x20 => Self::InterruptRequestReserved,
            0x21 => Self::InterruptIndexBeyondTable,
            0x22 => Self::IrteNotPresent,
            0x23 => Self::IrtAccess,
            0x24 => Self::IrteReserved,
            0x25 => Self::CompatibilityInterruptBlocked,
            0x26 => Self::SourceIdInvalid,
            0x27 => Self::PostedDescriptorAccess,
            0x28 => Self::PostedDescriptorReserved,
            other => Self::Other(other),
        }
    }

    /// The FR value.
    pub const fn code(self) -> u8 {
        match self {
            Self::RootNotPresent => 0x1,
            Self::ContextNotPresent => 0x2,
            Self::ContextInvalid => 0x3,
            Self::AddressBeyondMgaw => 0x4,
            Self::WriteDenied => 0x5,
            Self::ReadDenied => 0x6,
            Self::SlEntryAccess => 0x7,
            Self::RootEntryAccess => 0x8,
            Self::ContextEntryAccess => 0x9,
            Self::RootReserved => 0xa,
            Self::ContextReserved => 0xb,
            Self::SlEntryReserved => 0xc,
            Self::TranslationTypeBlocked => 0xd,
            Self::InterruptAddressRange => 0xe,
            Self::InterruptRequestReserved => 0x20,
            Self::InterruptIndexBeyondTable => 0x21,
            Self::IrteNotPresent => 0x22,
            Self::IrtAccess => 0x23,
            Self::IrteReserved => 0x24,
            Self::CompatibilityInterruptBlocked => 0x25,
            Self::SourceIdInvalid => 0x26,
            Self::PostedDescriptorAccess => 0x27,
            Self::PostedDescriptorReserved => 0x28,
            Self::Other(c) => c,
        }
    }

    /// Whether the fault is an interrupt-remapping fault (0x20–0x2F): the record's fault info
    /// then holds the interrupt index, not an address.
    pub const fn is_interrupt(self) -> bool {
        matches!(self.code(), 0x20..=0x2f)
    }
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::RootNotPresent => "root entry not present",
            Self::ContextNotPresent => "context entry not present (device blocked)",
            Self::ContextInvalid => "context entry invalid",
            Self::AddressBeyondMgaw => "address beyond the address width",
            Self::WriteDenied => "write denied (page not writable)",
            Self::ReadDenied => "read denied (page not readable)",
            Self::SlEntryAccess => "second-level paging entry access error",
            Self::RootEntryAccess => "root entry access error",
            Self::ContextEntryAccess => "context entry access error",
            Self::RootReserved => "reserved field set in root entry",
            Self::ContextReserved => "reserved field set in context entry",
            Self::SlEntryReserved => "reserved field set in second-level paging entry",
            Self::TranslationTypeBlocked => "request blocked by the translation type",
            Self::InterruptAddressRange => "DMA to the interrupt address range",
            Self::InterruptRequestReserved => "reserved field set in interrupt request",
            Self::InterruptIndexBeyondTable => "interrupt index beyond the remapping table",
            Self::IrteNotPresent => "interrupt remapping entry not present",
            Self::IrtAccess => "interrupt remapping table access error",
            Self::IrteReserved => "reserved field set in interrupt remapping entry",
            Self::CompatibilityInterruptBlocked => "compatibility-format interrupt blocked",
            Self::SourceIdInvalid => "interrupt source-id validation failed",
            Self::PostedDescriptorAccess => "posted-interrupt descriptor access error",
            Self::PostedDescriptorReserved => "reserved field set in posted-interrupt descriptor",
            Self::Other(_) => "unknown fault reason",
        };
        write!(f, "{text} (reason {:#x})", self.code())
    }
}

/// What faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A DMA request; [`FaultRecord::address`] is the page it addressed.
    Dma,
    /// An interrupt request with this interrupt_index (FI bits 63:48).
    Interrupt(u16),
}

/// One fault record, decoded (§10.4.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// SID (bits 79:64): the requester.
    pub source: SourceId,
    /// FI (bits 63:12) for DMA faults: the page address of the request; 0 for interrupts.
    pub address: u64,
    /// FR (bits 103:96).
    pub reason: FaultReason,
    /// T (bit 126) clear: a write (or a read of an interrupt request, where it means nothing).
    pub write: bool,
    /// AT (bits 125:124): the request's address type (0 untranslated).
    pub address_type: u8,
    /// PASID (bits 123:104) when PP (bit 95) says one was present.
    pub pasid: Option<u32>,
    /// DMA or interrupt.
    pub kind: FaultKind,
}

impl FaultRecord {
    /// Decodes a record's two halves; `None` when F (bit 127) is clear.
    pub const fn decode(lo: u64, hi: u64) -> Option<Self> {
        if hi & (1 << 63) == 0 {
            return None;
        }
        let reason = FaultReason::from_code((hi >> 32) as u8);
        let (address, kind) = if reason.is_interrupt() {
            (0, FaultKind::Interrupt((lo >> 48) as u16))
        } else {
            (lo & !0xfff, FaultKind::Dma)
        };
        Some(Self {
            source: SourceId(hi as u16),
            address,
            reason,
            write: hi & (1 << 62) == 0,
            address_type: ((hi >> 60) & 3) as u8,
            pasid: if hi & (1 << 31) != 0 {
                Some(((hi >> 40) & 0xf_ffff) as u32)
            } else {
                None
            },
            kind,
        })
    }
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::Dma => write!(
                f,
                "DMA {} by {} at {:#x}: {}",
                if self.write { "write" } else { "read" },
                self.source,
                self.address,
                self.reason
            ),
            FaultKind::Interrupt(index) => write!(
                f,
                "interrupt by {} (index {index}): {}",
                self.source, self.reason
            ),
        }
    }
}

/// What one [`drain`] saw besides the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DrainSummary {
    /// Records read and cleared.
    pub records: usize,
    /// PFO was set: faults were lost because every record was full.
    pub overflow: bool,
}

/// Reads and clears the pending fault records, handing each to `each`: from FSTS.FRI on, at most
/// CAP.NFR records, stopping at the first with F clear; each F is cleared (write 1) after it is
/// read; then PFO (and PPF, harmless) are cleared. The caller must have checked that the records
/// lie in the register window ([`crate::Unit::probe`] does).
pub fn drain<R: Registers>(
    regs: &mut R,
    cap: Cap,
    mut each: impl FnMut(FaultRecord),
) -> DrainSummary {
    let fsts = FaultStatus::from_bits_retain(regs.read32(offset::FSTS));
    let mut summary = DrainSummary {
        records: 0,
        overflow: fsts.contains(FaultStatus::PFO),
    };
    let nfr = cap.nfr();
    let base = cap.fault_record_offset();
    if fsts.contains(FaultStatus::PPF) {
        let mut index = u16::from(fsts.fri()) % nfr;
        for _ in 0..nfr {
            // FRO ≤ 1023 × 16 and index < 256, so this fits u32.
            let off = (base + u64::from(index) * 16) as u32;
            let hi = regs.read64(off + 8);
            let Some(record) = FaultRecord::decode(regs.read64(off), hi) else {
                break;
            };
            // F is RW1C, bit 31 of the record's last dword.
            regs.write32(off + 12, 1 << 31);
            each(record);
            summary.records += 1;
            index = (index + 1) % nfr;
        }
    }
    if summary.overflow || fsts.contains(FaultStatus::PPF) {
        regs.write32(offset::FSTS, (FaultStatus::PFO | FaultStatus::PPF).bits());
    }
    summary
}

/// [`drain`] into a vector.
pub fn drain_all<R: Registers>(
    regs: &mut R,
    cap: Cap,
) -> (alloc::vec::Vec<FaultRecord>, DrainSummary) {
    let mut v = alloc::vec::Vec::new();
    let s = drain(regs, cap, |r| v.push(r));
    (v, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_name_themselves() {
        for code in 0..=u8::MAX {
            let r = FaultReason::from_code(code);
            assert_eq!(r.code(), code);
            let text = r.to_string();
            assert!(text.contains(&alloc::format!("{code:#x}")), "{text}");
        }
        assert_eq!(FaultReason::from_code(2), FaultReason::ContextNotPresent);
        assert_eq!(
            FaultReason::from_code(5).to_string(),
            "write denied (page not writable) (reason 0x5)"
        );
        assert!(FaultReason::from_code(0x25).is_interrupt());
        assert!(!FaultReason::from_code(0x6).is_interrupt());
        assert_eq!(FaultReason::from_code(0x30), FaultReason::Other(0x30));
    }

    #[test]
    fn records_decode_field_by_field() {
        // A read by 00:03.0 of 0x1234_5678 denied (reason 6): T set, SID 0x0018.
        let lo = 0x1234_5678;
        let hi = 1 << 63 | 1 << 62 | 6 << 32 | 0x0018;
        let r = FaultRecord::decode(lo, hi).unwrap();
        assert_eq!(r.source, SourceId::new(0, 0x18));
        assert_eq!(r.address, 0x1234_5000);
        assert_eq!(r.reason, FaultReason::ReadDenied);
        assert!(!r.write);
        assert_eq!(r.kind, FaultKind::Dma);
        assert_eq!(r.pasid, None);
        assert_eq!(
            r.to_string(),
            "DMA read by 00:03.0 at 0x12345000: read denied (page not readable) (reason 0x6)"
        );
        // An interrupt fault: the index in FI 63:48.
        let r = FaultRecord::decode(0x00aa_0000_0000_0000, 1 << 63 | 0x22 << 32 | 0x0100).unwrap();
        assert_eq!(r.kind, FaultKind::Interrupt(0xaa));
        assert_eq!(r.address, 0);
        assert_eq!(r.source.to_string(), "01:00.0");
        // PASID present, AT 2.
        let r =
            FaultRecord::decode(0, 1 << 63 | 2 << 60 | 0x12345 << 40 | 1 << 31 | 5 << 32).unwrap();
        assert_eq!(r.pasid, Some(0x12345));
        assert_eq!(r.address_type, 2);
        assert!(r.write);
        // F clear: nothing.
        assert_eq!(FaultRecord::decode(u64::MAX, u64::MAX >> 1), None);
        // Anything with F set decodes without panicking.
        let r = FaultRecord::decode(u64::MAX, u64::MAX).unwrap();
        assert_eq!(r.reason, FaultReason::Other(0xff));
    }
}
