//! Compatibility-format interrupts the host programs, and the remappable forms atoll writes
//! to the hardware instead (Intel VT-d spec rev 4.x §5.1.2, §5.1.5).
//!
//! With interrupt remapping on and compatibility format blocked (GCMD.CFI clear), an interrupt
//! request is honoured only when it names an IRTE by handle. The host, which does not know about
//! the IOMMU, still programs its I/O APIC entries and MSI messages in compatibility format
//! (Intel SDM vol. 3A §11.11 for MSI; 82093AA datasheet §3.2.4 for the I/O APIC RTE). atoll
//! decodes what the host wrote into an [`Interrupt`], points an IRTE at it, and writes the
//! remappable form with that IRTE's handle to the device:
//!
//! * I/O APIC RTE (§5.1.5.1): bit 48 = 1 (remappable), handle bits 14:0 in bits 63:49, handle bit 15
//!   in bit 11, bits 10:8 zero; vector (7:0), polarity (13), trigger (15) and mask (16) are kept
//!   — the I/O APIC still uses the vector to match EOIs of level-triggered entries, so it must
//!   equal the IRTE's vector, and trigger must equal the IRTE's TM.
//! * MSI/MSI-X (§5.1.5.2): address 0xFEE in 31:20, handle bits 14:0 in 19:5, bit 4 = 1
//!   (remappable), SHV in bit 3, handle bit 15 in bit 2; data 0, or with SHV the subhandle that the
//!   IOMMU adds to the handle (a multiple-message MSI function ORs its message number into the
//!   low data bits).
//!
//! Decoders refuse what cannot be remapped, with the reason: an address outside 0xFEEx_xxxx, a
//! reserved delivery mode, a fixed or lowest-priority vector below 16 (SDM vol. 3A §11.5.2:
//! illegal vectors), and anything already in remappable format (the host must not pass handles
//! of its own: it would pick someone else's IRTE).

use crate::irte::{
    ApicDest, DeliveryMode, DestMode, Irte, IrteIndex, SourceValidation, TriggerMode,
};
use core::fmt;

/// Pin polarity of an I/O APIC input (RTE bit 13). MSI has none (edge messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// 0: active high.
    ActiveHigh,
    /// 1: active low.
    ActiveLow,
}

/// A compatibility-format interrupt as the host programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// Vector (ignored for SMI, NMI, INIT).
    pub vector: u8,
    /// Delivery mode.
    pub delivery: DeliveryMode,
    /// Destination mode.
    pub dest_mode: DestMode,
    /// The destination (APIC ID or logical mask): bits 7:0 from the classic field, bits 14:8
    /// from the extended destination ID field a paravirtualized host uses when its platform
    /// advertises one (Linux's `virt_destid_8_14`: RTE bits 55:49, MSI address bits 11:5), 0
    /// otherwise.
    pub dest: u32,
    /// Trigger mode.
    pub trigger: TriggerMode,
    /// Polarity (I/O APIC only; MSI decodes to active high).
    pub polarity: Polarity,
    /// Masked (I/O APIC RTE bit 16; MSI decodes to unmasked — masking is elsewhere).
    pub masked: bool,
    /// Redirection hint (MSI address bit 3; the I/O APIC has none).
    pub redirection_hint: bool,
}

/// Why a host interrupt could not be remapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemapError {
    /// The MSI address is not 0xFEEx_xxxx (or its upper half is not 0): not an interrupt.
    NotInterruptAddress(u64),
    /// The message or entry is already in remappable format.
    AlreadyRemappable,
    /// Delivery mode 3 or 6.
    ReservedDeliveryMode(u8),
    /// A fixed or lowest-priority vector below 16.
    IllegalVector(u8),
}

impl fmt::Display for RemapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInterruptAddress(a) => write!(f, "MSI address {a:#x} is not 0xFEExxxxx"),
            Self::AlreadyRemappable => write!(f, "already in remappable format"),
            Self::ReservedDeliveryMode(m) => write!(f, "reserved delivery mode {m}"),
            Self::IllegalVector(v) => write!(f, "illegal vector {v}"),
        }
    }
}

/// I/O APIC redirection table entry bits (82093AA §3.2.4; VT-d §5.1.5.1).
pub mod rte {
    /// Vector, 7:0.
    pub const VECTOR: u64 = 0xff;
    /// Delivery mode, 10:8.
    pub const DELIVERY_SHIFT: u32 = 8;
    /// Destination mode, 11 (compatibility); handle bit 15 in remappable format.
    pub const DEST_MODE: u64 = 1 << 11;
    /// Delivery status (read-only), 12.
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Polarity, 13: active low.
    pub const POLARITY: u64 = 1 << 13;
    /// Remote IRR (read-only), 14.
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Trigger mode, 15: level.
    pub const TRIGGER: u64 = 1 << 15;
    /// Mask, 16.
    pub const MASK: u64 = 1 << 16;
    /// Interrupt format, 48: remappable.
    pub const REMAPPABLE: u64 = 1 << 48;
    /// Destination, 63:56 (compatibility format).
    pub const DEST_SHIFT: u32 = 56;
    /// Extended destination ID (destination bits 14:8), 55:49 (compatibility format, when the
    /// platform advertises it).
    pub const EXT_DEST_SHIFT: u32 = 49;
    /// Handle bits 14:0 at 63:49 (remappable format).
    pub const HANDLE_SHIFT: u32 = 49;
}

/// MSI address and data bits (SDM vol. 3A §11.11.1-2; VT-d §5.1.2, §5.1.5.2).
pub mod msi {
    /// Address bits 31:20 of every interrupt message.
    pub const ADDRESS_BASE: u64 = 0xfee0_0000;
    /// Mask of those bits (with the upper half, which must be 0).
    pub const ADDRESS_BASE_MASK: u64 = 0xffff_ffff_fff0_0000;
    /// Destination mode, address bit 2 (compatibility); handle bit 15 in remappable format.
    pub const DEST_MODE: u64 = 1 << 2;
    /// Redirection hint, address bit 3 (compatibility); SHV in remappable format.
    pub const REDIRECTION_HINT: u64 = 1 << 3;
    /// Interrupt format, address bit 4: remappable.
    pub const REMAPPABLE: u64 = 1 << 4;
    /// Destination ID, address 19:12.
    pub const DEST_SHIFT: u32 = 12;
    /// Extended destination ID (destination bits 14:8), address 11:5, when advertised.
    pub const EXT_DEST_SHIFT: u32 = 5;
    /// Handle bits 14:0 at address 19:5.
    pub const HANDLE_SHIFT: u32 = 5;
    /// Data: vector 7:0.
    pub const DATA_VECTOR: u32 = 0xff;
    /// Data: delivery mode 10:8.
    pub const DATA_DELIVERY_SHIFT: u32 = 8;
    /// Data: level (assert) 14.
    pub const DATA_LEVEL: u32 = 1 << 14;
    /// Data: trigger mode 15.
    pub const DATA_TRIGGER: u32 = 1 << 15;
}

fn check_vector(delivery: DeliveryMode, vector: u8) -> Result<(), RemapError> {
    if delivery.uses_vector() && vector < 16 {
        Err(RemapError::IllegalVector(vector))
    } else {
        Ok(())
    }
}

impl Interrupt {
    /// Decodes a compatibility-format I/O APIC redirection entry. Reserved bits 47:17 other
    /// than 48, and the read-only status bits 12 and 14, are ignored.
    pub fn from_ioapic_rte(rte: u64) -> Result<Self, RemapError> {
        if rte & rte::REMAPPABLE != 0 {
            return Err(RemapError::AlreadyRemappable);
        }
        let dlm = ((rte >> rte::DELIVERY_SHIFT) & 7) as u8;
        let delivery = DeliveryMode::from_bits(dlm).ok_or(RemapError::ReservedDeliveryMode(dlm))?;
        let vector = (rte & rte::VECTOR) as u8;
        check_vector(delivery, vector)?;
        Ok(Self {
            vector,
            delivery,
            dest_mode: DestMode::from_bit(rte & rte::DEST_MODE != 0),
            dest: ((rte >> rte::DEST_SHIFT) & 0xff | ((rte >> rte::EXT_DEST_SHIFT) & 0x7f) << 8)
                as u32,
            trigger: TriggerMode::from_bit(rte & rte::TRIGGER != 0),
            polarity: if rte & rte::POLARITY != 0 {
                Polarity::ActiveLow
            } else {
                Polarity::ActiveHigh
            },
            masked: rte & rte::MASK != 0,
            redirection_hint: false,
        })
    }

    /// Decodes a compatibility-format MSI message (`address` with its upper half, `data`).
    /// Data bits 13:11 and 31:16 and the level bit (14, meaningful only with level trigger,
    /// which MSI does not really have) are ignored.
    pub fn from_msi(address: u64, data: u32) -> Result<Self, RemapError> {
        if address & msi::ADDRESS_BASE_MASK != msi::ADDRESS_BASE {
            return Err(RemapError::NotInterruptAddress(address));
        }
        if address & msi::REMAPPABLE != 0 {
            return Err(RemapError::AlreadyRemappable);
        }
        let dlm = ((data >> msi::DATA_DELIVERY_SHIFT) & 7) as u8;
        let delivery = DeliveryMode::from_bits(dlm).ok_or(RemapError::ReservedDeliveryMode(dlm))?;
        let vector = (data & msi::DATA_VECTOR) as u8;
        check_vector(delivery, vector)?;
        Ok(Self {
            vector,
            delivery,
            dest_mode: DestMode::from_bit(address & msi::DEST_MODE != 0),
            dest: ((address >> msi::DEST_SHIFT) & 0xff
                | ((address >> msi::EXT_DEST_SHIFT) & 0x7f) << 8) as u32,
            trigger: TriggerMode::from_bit(data & msi::DATA_TRIGGER != 0),
            polarity: Polarity::ActiveHigh,
            masked: false,
            redirection_hint: address & msi::REDIRECTION_HINT != 0,
        })
    }

    /// The IRTE that delivers this interrupt to `dest` — the host's destination translated by
    /// the caller to the physical APIC ID it means, in the table's format — accepting requests
    /// that pass `source`. Vector, delivery mode, destination mode, trigger and redirection
    /// hint are the host's: the I/O APIC matches EOIs by the RTE's vector, so the IRTE's must be
    /// the same, and its TM must equal the RTE's trigger (§5.1.5.1).
    pub fn irte(&self, dest: ApicDest, source: SourceValidation) -> Irte {
        let mut e = Irte::remapped(
            self.vector,
            dest,
            self.dest_mode,
            self.delivery,
            self.trigger,
            source,
        );
        e.redirection_hint = self.redirection_hint;
        e
    }

    /// The remappable I/O APIC entry for this interrupt through IRTE `handle` (§5.1.5.1):
    /// vector, polarity, trigger and mask kept (the IRTE must have the same vector and
    /// trigger), destination and delivery mode only in the IRTE.
    pub fn to_remappable_rte(&self, handle: IrteIndex) -> u64 {
        let h = u64::from(handle.0);
        let mut v = u64::from(self.vector)
            | rte::REMAPPABLE
            | (h & 0x7fff) << rte::HANDLE_SHIFT
            | (h >> 15) << 11;
        if self.polarity == Polarity::ActiveLow {
            v |= rte::POLARITY;
        }
        if self.trigger == TriggerMode::Level {
            v |= rte::TRIGGER;
        }
        if self.masked {
            v |= rte::MASK;
        }
        v
    }
}

/// A remappable MSI message (§5.1.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemappableMsi {
    /// The 32-bit address (the upper address register is written 0).
    pub address: u32,
    /// The 16 data bits (upper 16 written 0).
    pub data: u32,
}

impl RemappableMsi {
    /// One message through IRTE `handle`: SHV clear, data 0.
    pub fn single(handle: IrteIndex) -> Self {
        Self {
            address: Self::address(handle, false),
            data: 0,
        }
    }

    /// A multiple-message MSI block whose first IRTE is `base`: SHV set, subhandle 0 in the
    /// data, so message *k* (which the function ORs into the data's low bits) uses IRTE
    /// base + k.
    pub fn block(base: IrteIndex) -> Self {
        Self {
            address: Self::address(base, true),
            data: 0,
        }
    }

    fn address(handle: IrteIndex, shv: bool) -> u32 {
        let h = u64::from(handle.0);
        let mut a = msi::ADDRESS_BASE
            | msi::REMAPPABLE
            | (h & 0x7fff) << msi::HANDLE_SHIFT
            | (h >> 15) << 2;
        if shv {
            a |= msi::REDIRECTION_HINT;
        }
        a as u32
    }

    /// The handle a remappable address carries, and whether SHV is set; `None` for a
    /// compatibility-format address.
    pub fn decode(address: u32) -> Option<(IrteIndex, bool)> {
        let a = u64::from(address);
        if a & msi::ADDRESS_BASE_MASK != msi::ADDRESS_BASE || a & msi::REMAPPABLE == 0 {
            return None;
        }
        let h = ((a >> msi::HANDLE_SHIFT) & 0x7fff) | ((a >> 2) & 1) << 15;
        Some((IrteIndex(h as u16), a & msi::REDIRECTION_HINT != 0))
    }
}

/// The handle a remappable I/O APIC entry carries; `None` for compatibility format.
pub fn rte_handle(rte: u64) -> Option<IrteIndex> {
    (rte & rte::REMAPPABLE != 0).then_some({
        IrteIndex((((rte >> rte::HANDLE_SHIFT) & 0x7fff) | ((rte >> 11) & 1) << 15) as u16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rte(
        vector: u8,
        dlm: u64,
        logical: bool,
        low: bool,
        level: bool,
        masked: bool,
        dest: u8,
    ) -> u64 {
        u64::from(vector)
            | dlm << 8
            | u64::from(logical) << 11
            | u64::from(low) << 13
            | u64::from(level) << 15
            | u64::from(masked) << 16
            | u64::from(dest) << 56
    }

    #[test]
    fn ioapic_rte_fields_decode() {
        let i = Interrupt::from_ioapic_rte(rte(0x31, 1, true, true, true, true, 0xa5)).unwrap();
        assert_eq!(
            i,
            Interrupt {
                vector: 0x31,
                delivery: DeliveryMode::LowestPriority,
                dest_mode: DestMode::Logical,
                dest: 0xa5,
                trigger: TriggerMode::Level,
                polarity: Polarity::ActiveLow,
                masked: true,
                redirection_hint: false,
            }
        );
        let j = Interrupt::from_ioapic_rte(rte(0xfe, 0, false, false, false, false, 3)).unwrap();
        assert_eq!(
            (
                j.vector,
                j.delivery,
                j.dest_mode,
                j.dest,
                j.trigger,
                j.polarity,
                j.masked
            ),
            (
                0xfe,
                DeliveryMode::Fixed,
                DestMode::Physical,
                3,
                TriggerMode::Edge,
                Polarity::ActiveHigh,
                false
            )
        );
        // Status bits (delivery status, remote IRR) do not change the decoding.
        assert_eq!(
            Interrupt::from_ioapic_rte(
                rte(0xfe, 0, false, false, false, false, 3) | 1 << 12 | 1 << 14
            ),
            Ok(j)
        );
    }

    #[test]
    fn ioapic_rte_refusals() {
        assert_eq!(
            Interrupt::from_ioapic_rte(rte(0x31, 0, false, false, false, false, 0) | 1 << 48),
            Err(RemapError::AlreadyRemappable)
        );
        assert_eq!(
            Interrupt::from_ioapic_rte(rte(0x31, 3, false, false, false, false, 0)),
            Err(RemapError::ReservedDeliveryMode(3))
        );
        assert_eq!(
            Interrupt::from_ioapic_rte(rte(0x31, 6, false, false, false, false, 0)),
            Err(RemapError::ReservedDeliveryMode(6))
        );
        assert_eq!(
            Interrupt::from_ioapic_rte(rte(0x0f, 0, false, false, false, false, 0)),
            Err(RemapError::IllegalVector(15))
        );
        assert_eq!(
            Interrupt::from_ioapic_rte(rte(0x00, 1, false, false, false, false, 0)),
            Err(RemapError::IllegalVector(0))
        );
        // NMI and ExtINT ignore the vector: 0 is fine.
        assert_eq!(
            Interrupt::from_ioapic_rte(rte(0, 4, false, false, false, false, 0))
                .unwrap()
                .delivery,
            DeliveryMode::Nmi
        );
        assert_eq!(
            Interrupt::from_ioapic_rte(rte(0, 7, false, false, false, false, 0))
                .unwrap()
                .delivery,
            DeliveryMode::ExtInt
        );
    }

    #[test]
    fn remappable_rte_layout() {
        let i = Interrupt::from_ioapic_rte(rte(0x41, 0, true, true, true, false, 0xff)).unwrap();
        let r = i.to_remappable_rte(IrteIndex(0x8123));
        // vector 7:0, bits 10:8 zero, handle bit 15 in 11, polarity 13, trigger 15, format 48,
        // handle bits 14:0 63:49; destination bits gone.
        assert_eq!(
            r,
            0x41 | 1 << 11 | 1 << 13 | 1 << 15 | 1 << 48 | 0x0123 << 49
        );
        assert_eq!(rte_handle(r), Some(IrteIndex(0x8123)));
        assert_eq!(
            rte_handle(rte(0x41, 0, false, false, false, false, 0)),
            None
        );
        let m = Interrupt { masked: true, ..i };
        assert_eq!(
            m.to_remappable_rte(IrteIndex(0x7fff)),
            0x41 | 1 << 13 | 1 << 15 | 1 << 16 | 1 << 48 | 0x7fff << 49
        );
        for h in [0u16, 1, 0x7fff, 0x8000, 0xffff, 0x1234] {
            assert_eq!(
                rte_handle(i.to_remappable_rte(IrteIndex(h))),
                Some(IrteIndex(h))
            );
        }
        // What atoll writes is refused when it comes back as a host value.
        assert_eq!(
            Interrupt::from_ioapic_rte(r),
            Err(RemapError::AlreadyRemappable)
        );
    }

    #[test]
    fn msi_fields_decode() {
        // Linux: 0xFEE00000 | dest << 12 (| DM bit 2 when logical), data = vector (| level,
        // trigger for level).
        let i =
            Interrupt::from_msi(0xfee0_3000 | 1 << 3 | 1 << 2, 0x4041 | 1 << 8 | 1 << 15).unwrap();
        assert_eq!(
            i,
            Interrupt {
                vector: 0x41,
                delivery: DeliveryMode::LowestPriority,
                dest_mode: DestMode::Logical,
                dest: 3,
                trigger: TriggerMode::Level,
                polarity: Polarity::ActiveHigh,
                masked: false,
                redirection_hint: true,
            }
        );
        let j = Interrupt::from_msi(0xfeef_f000, 0x22).unwrap();
        assert_eq!(
            (j.dest, j.vector, j.dest_mode, j.redirection_hint, j.trigger),
            (0xff, 0x22, DestMode::Physical, false, TriggerMode::Edge)
        );
    }

    #[test]
    fn irte_for_a_host_interrupt() {
        let i = Interrupt::from_ioapic_rte(rte(0x39, 1, true, true, true, false, 0x0f)).unwrap();
        let src = SourceValidation::RequesterId(crate::irte::SourceId(0xf0f8));
        let e = i.irte(ApicDest::X2Apic(0x104), src);
        assert_eq!(
            (
                e.present,
                e.vector,
                e.delivery,
                e.dest_mode,
                e.trigger,
                e.dest,
                e.source,
                e.redirection_hint
            ),
            (
                true,
                0x39,
                DeliveryMode::LowestPriority,
                DestMode::Logical,
                TriggerMode::Level,
                ApicDest::X2Apic(0x104),
                src,
                false
            )
        );
        let m = Interrupt::from_msi(0xfee0_0008, 0x4031).unwrap();
        assert!(
            m.irte(ApicDest::XApic(0), SourceValidation::None)
                .redirection_hint
        );
    }

    #[test]
    fn extended_destination_ids() {
        let i = Interrupt::from_ioapic_rte(0x30 | 0x7f << 49 | 0xab << 56).unwrap();
        assert_eq!(i.dest, 0x7fab);
        let j = Interrupt::from_msi(0xfee0_0000 | 0x12 << 12 | 0x55 << 5, 0x30).unwrap();
        assert_eq!(j.dest, 0x5512);
    }

    #[test]
    fn msi_refusals() {
        assert_eq!(
            Interrupt::from_msi(0xfed0_0000, 0x30),
            Err(RemapError::NotInterruptAddress(0xfed0_0000))
        );
        assert_eq!(
            Interrupt::from_msi(0, 0x30),
            Err(RemapError::NotInterruptAddress(0))
        );
        assert_eq!(
            Interrupt::from_msi(1 << 32 | 0xfee0_0000, 0x30),
            Err(RemapError::NotInterruptAddress(1 << 32 | 0xfee0_0000))
        );
        assert_eq!(
            Interrupt::from_msi(0xfee0_0010, 0x30),
            Err(RemapError::AlreadyRemappable)
        );
        assert_eq!(
            Interrupt::from_msi(0xfee0_0000, 0x330),
            Err(RemapError::ReservedDeliveryMode(3))
        );
        assert_eq!(
            Interrupt::from_msi(0xfee0_0000, 0x630),
            Err(RemapError::ReservedDeliveryMode(6))
        );
        assert_eq!(
            Interrupt::from_msi(0xfee0_0000, 0x0f),
            Err(RemapError::IllegalVector(15))
        );
        assert_eq!(
            Interrupt::from_msi(0xfee0_0000, 0x400).unwrap().delivery,
            DeliveryMode::Nmi
        );
    }

    #[test]
    fn remappable_msi_layout() {
        let s = RemappableMsi::single(IrteIndex(0x8001));
        // 0xFEE, handle bits 14:0 = 1 at 19:5, bit 4, no SHV, handle bit 15 at bit 2.
        assert_eq!(
            s,
            RemappableMsi {
                address: 0xfee0_0000 | 1 << 5 | 1 << 4 | 1 << 2,
                data: 0
            }
        );
        assert_eq!(
            RemappableMsi::decode(s.address),
            Some((IrteIndex(0x8001), false))
        );
        let b = RemappableMsi::block(IrteIndex(0x7ff8));
        assert_eq!(
            b,
            RemappableMsi {
                address: 0xfee0_0000 | 0x7ff8 << 5 | 1 << 4 | 1 << 3,
                data: 0
            }
        );
        assert_eq!(
            RemappableMsi::decode(b.address),
            Some((IrteIndex(0x7ff8), true))
        );
        for h in [0u16, 0x7fff, 0x8000, 0xffff, 0x0abc] {
            assert_eq!(
                RemappableMsi::decode(RemappableMsi::single(IrteIndex(h)).address),
                Some((IrteIndex(h), false))
            );
        }
        assert_eq!(RemappableMsi::decode(0xfee0_1000), None);
        assert_eq!(RemappableMsi::decode(0x1000_0010), None);
        // Never accepted back as a host message.
        assert_eq!(
            Interrupt::from_msi(u64::from(s.address), s.data),
            Err(RemapError::AlreadyRemappable)
        );
    }
}
