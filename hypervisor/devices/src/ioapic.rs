//! The enclave's I/O APIC, as a pure model.
//!
//! [`IoApic`] is one I/O APIC with 24 interrupt input pins in the register model of the Intel
//! 82093AA I/O APIC datasheet (§3.0 "Register Description"), at version 0x20 (the PCI-era I/O
//! APIC of Intel chipsets, which adds a directed-EOI register). It touches no hardware: the
//! caller maps guest MMIO accesses at the I/O APIC's base to [`IoApic::mmio_read`] and
//! [`IoApic::mmio_write`], reports line changes of emulated devices with [`IoApic::set_irq`], and
//! forwards level-triggered EOIs from the local APICs
//! ([`crate::lapic::ApicEffect::Eoi`]) to [`IoApic::eoi`]. What the I/O APIC sends comes back
//! as [`Delivery`] values for the caller to route to the local APICs.
//!
//! The MMIO window (offsets from the base; 32-bit accesses only):
//!
//! | offset | register |
//! | --- | --- |
//! | 0x00 | IOREGSEL: index of the register IOWIN shows (bits 7:0) |
//! | 0x10 | IOWIN: the selected register |
//! | 0x40 | EOI (version 0x20, write-only): bits 7:0 a vector, as a local APIC's EOI broadcast |
//!
//! Indirect registers: 0x00 ID (bits 27:24), 0x01 VER (read-only, [`VERSION`]), 0x02 ARB
//! (read-only, the ID), 0x10–0x3F the redirection table, two dwords per pin (82093AA §3.2.4):
//!
//! | bits | field |
//! | --- | --- |
//! | 7:0 | vector |
//! | 10:8 | delivery mode: 000 fixed, 001 lowest priority, 010 SMI, 100 NMI, 101 INIT, 111 ExtINT |
//! | 11 | destination mode: 0 physical, 1 logical |
//! | 12 | delivery status (read-only; always 0, delivery is instantaneous here) |
//! | 13 | polarity: 0 active high, 1 active low |
//! | 14 | Remote IRR (read-only) |
//! | 15 | trigger mode: 0 edge, 1 level |
//! | 16 | mask |
//! | 48:17 | reserved: ignored on write, read as 0 |
//! | 55:49 | extended destination: destination ID bits 14:8 |
//! | 63:56 | destination ID bits 7:0 |
//!
//! Destination format (the choice the x2APIC asks for): with interrupt remapping off, Linux
//! addresses I/O APIC and MSI interrupts in physical mode only and puts an 8-bit APIC ID in bits
//! 63:56; when the platform advertises "extended destination ID" it also puts APIC ID bits 14:8
//! in bits 55:49 (Linux's `virt_destid_8_14`). This model reads the destination as
//! `bits 55:49 << 8 | bits 63:56`, which is the plain 82093AA format whenever bits 55:49 are 0
//! (they are when a guest does not use the extension). A physical destination of 0xFF (and no
//! extended bits) is the xAPIC broadcast and becomes [`BROADCAST`].
//!
//! Model choices: `set_irq` takes the line's logical state (asserted or not), as KVM's and QEMU's
//! I/O APICs do; the polarity bit is kept for the guest to read. Edges on a masked pin are lost,
//! and level changes on a masked pin have no effect until it is unmasked (82093AA §3.2.4, "Interrupt
//! Mask"); a level-triggered pin still asserted when it is unmasked is delivered then. Only fixed
//! and lowest-priority entries use Remote IRR; NMI, SMI, INIT and ExtINT are always edge-sensitive
//! (SDM Vol. 3A §11.5.1), so a level entry with those modes is delivered on the rising edge.
//! Entries with a reserved delivery mode (011, 110) deliver nothing.

use crate::lapic::{DestMode, BROADCAST};
use core::fmt;

/// Interrupt input pins.
pub const PINS: usize = 24;

/// The VER register: version 0x20, maximum redirection entry 23 (82093AA §3.2.2).
pub const VERSION: u32 = 0x0017_0020;

/// MMIO offsets from the I/O APIC base.
pub mod offset {
    /// Index register.
    pub const IOREGSEL: u64 = 0x00;
    /// Data window.
    pub const IOWIN: u64 = 0x10;
    /// EOI register (version 0x20).
    pub const EOI: u64 = 0x40;
}

/// Indirect register indices (through IOREGSEL).
pub mod index {
    /// I/O APIC ID.
    pub const ID: u8 = 0x00;
    /// Version.
    pub const VER: u8 = 0x01;
    /// Arbitration ID.
    pub const ARB: u8 = 0x02;
    /// Low dword of redirection entry 0; entry `n` is at `0x10 + 2n` (low) and `0x11 + 2n`.
    pub const REDTBL: u8 = 0x10;
}

const VECTOR: u64 = 0xff;
const DELIVERY_MODE: u64 = 0x700;
const DEST_LOGICAL: u64 = 1 << 11;
const DELIVERY_STATUS: u64 = 1 << 12;
const POLARITY_LOW: u64 = 1 << 13;
const REMOTE_IRR: u64 = 1 << 14;
const TRIGGER_LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const EXT_DEST: u64 = 0x7f << 49;
const DEST: u64 = 0xff << 56;
/// Bits the guest writes.
const WRITABLE: u64 =
    VECTOR | DELIVERY_MODE | DEST_LOGICAL | POLARITY_LOW | TRIGGER_LEVEL | MASKED | EXT_DEST | DEST;
/// Bits only the I/O APIC changes.
const READ_ONLY: u64 = DELIVERY_STATUS | REMOTE_IRR;
/// ID register bits 27:24.
const ID_MASK: u32 = 0x0f00_0000;

/// An MMIO access the I/O APIC refuses; the handler decides what the guest sees, and nothing
/// changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoApicError {
    /// No register at this offset.
    BadOffset { offset: u64 },
    /// A register accessed with another size than 4 bytes.
    BadSize { offset: u64, size: u8 },
    /// A read of the write-only EOI register.
    WriteOnly { offset: u64 },
}

impl fmt::Display for IoApicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoApicError::BadOffset { offset } => {
                write!(f, "no I/O APIC register at offset {offset:#x}")
            }
            IoApicError::BadSize { offset, size } => write!(
                f,
                "{size}-byte access to I/O APIC offset {offset:#x} (only 4-byte accesses)"
            ),
            IoApicError::WriteOnly { offset } => {
                write!(f, "I/O APIC register at offset {offset:#x} is write-only")
            }
        }
    }
}

/// Delivery modes of a redirection entry (bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    ExtInt,
}

/// An interrupt message the I/O APIC sends to the local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The pin it comes from.
    pub pin: u8,
    /// The destination (see the module documentation; [`BROADCAST`] for all).
    pub dest: u32,
    /// How `dest` is read.
    pub dest_mode: DestMode,
    /// What to deliver.
    pub mode: DeliveryMode,
    /// The vector (meaningful for fixed and lowest-priority deliveries).
    pub vector: u8,
    /// Level-triggered: the receiving APIC sets TMR, and its EOI must come back to
    /// [`IoApic::eoi`].
    pub level_triggered: bool,
}

/// Deliveries from one operation: at most one per pin, without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deliveries {
    items: [Option<Delivery>; PINS],
    len: usize,
}

impl Deliveries {
    const fn none() -> Self {
        Self {
            items: [None; PINS],
            len: 0,
        }
    }

    fn push(&mut self, d: Delivery) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = Some(d);
            self.len += 1;
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Them, in pin order.
    pub fn iter(&self) -> impl Iterator<Item = Delivery> + '_ {
        self.items.iter().take(self.len).flatten().copied()
    }
}

/// One redirection-table entry, as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectionEntry(pub u64);

impl RedirectionEntry {
    /// Bits 7:0.
    pub fn vector(self) -> u8 {
        self.0 as u8
    }

    /// Bits 10:8; `None` for the reserved encodings 011 and 110.
    pub fn delivery_mode(self) -> Option<DeliveryMode> {
        Some(match (self.0 >> 8) & 0b111 {
            0b000 => DeliveryMode::Fixed,
            0b001 => DeliveryMode::LowestPriority,
            0b010 => DeliveryMode::Smi,
            0b100 => DeliveryMode::Nmi,
            0b101 => DeliveryMode::Init,
            0b111 => DeliveryMode::ExtInt,
            _ => return None,
        })
    }

    /// Bit 11.
    pub fn dest_mode(self) -> DestMode {
        if self.0 & DEST_LOGICAL != 0 {
            DestMode::Logical
        } else {
            DestMode::Physical
        }
    }

    /// Bit 13: active low.
    pub fn active_low(self) -> bool {
        self.0 & POLARITY_LOW != 0
    }

    /// Bit 14.
    pub fn remote_irr(self) -> bool {
        self.0 & REMOTE_IRR != 0
    }

    /// Bit 15.
    pub fn level_triggered(self) -> bool {
        self.0 & TRIGGER_LEVEL != 0
    }

    /// Bit 16.
    pub fn masked(self) -> bool {
        self.0 & MASKED != 0
    }

    /// The destination: bits 55:49 as ID bits 14:8 over bits 63:56 as ID bits 7:0; physical 0xFF
    /// is [`BROADCAST`].
    pub fn destination(self) -> u32 {
        let dest = (((self.0 >> 49) & 0x7f) << 8 | (self.0 >> 56)) as u32;
        if dest == 0xff && self.dest_mode() == DestMode::Physical {
            BROADCAST
        } else {
            dest
        }
    }

    /// Whether the entry works with Remote IRR: level-triggered fixed or lowest-priority.
    fn uses_remote_irr(self) -> bool {
        self.level_triggered()
            && matches!(
                self.delivery_mode(),
                Some(DeliveryMode::Fixed | DeliveryMode::LowestPriority)
            )
    }
}

/// One I/O APIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoApic {
    id: u32,
    ioregsel: u8,
    entries: [u64; PINS],
    /// Pins whose line is asserted.
    asserted: u32,
}

impl IoApic {
    /// An I/O APIC with ID `id` (bits 3:0) in its reset state: every entry masked, no line
    /// asserted (82093AA §3.2.4).
    pub fn new(id: u8) -> Self {
        Self {
            id: (u32::from(id) << 24) & ID_MASK,
            ioregsel: 0,
            entries: [MASKED; PINS],
            asserted: 0,
        }
    }

    /// Its ID (ID register bits 27:24).
    pub fn id(&self) -> u8 {
        (self.id >> 24) as u8
    }

    /// Redirection entry `pin`.
    pub fn entry(&self, pin: u8) -> Option<RedirectionEntry> {
        self.entries
            .get(usize::from(pin))
            .map(|e| RedirectionEntry(*e))
    }

    fn check(offset: u64, size: u8) -> Result<(), IoApicError> {
        if !matches!(offset, offset::IOREGSEL | offset::IOWIN | offset::EOI) {
            return Err(IoApicError::BadOffset { offset });
        }
        if size != 4 {
            return Err(IoApicError::BadSize { offset, size });
        }
        Ok(())
    }

    /// A guest read of `size` bytes at `offset` from the I/O APIC base.
    pub fn mmio_read(&self, offset: u64, size: u8) -> Result<u32, IoApicError> {
        Self::check(offset, size)?;
        match offset {
            offset::IOREGSEL => Ok(self.ioregsel.into()),
            offset::IOWIN => Ok(self.read_register(self.ioregsel)),
            _ => Err(IoApicError::WriteOnly { offset }),
        }
    }

    /// A guest write of `value` (`size` bytes) at `offset` from the I/O APIC base. Unmasking a
    /// level-triggered entry whose line is asserted, or an EOI through the EOI register, can send
    /// interrupts: they are returned.
    pub fn mmio_write(
        &mut self,
        offset: u64,
        size: u8,
        value: u32,
    ) -> Result<Deliveries, IoApicError> {
        Self::check(offset, size)?;
        Ok(match offset {
            offset::IOREGSEL => {
                // Bits 31:8 are reserved (82093AA §3.1.1).
                self.ioregsel = value as u8;
                Deliveries::none()
            }
            offset::IOWIN => self.write_register(self.ioregsel, value),
            _ => self.eoi(value as u8),
        })
    }

    /// An indirect register; unimplemented indices read as 0.
    fn read_register(&self, index: u8) -> u32 {
        match index {
            index::ID | index::ARB => self.id,
            index::VER => VERSION,
            0x10..=0x3f => {
                let e = self.entries[usize::from((index - 0x10) / 2)];
                if index & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// An indirect register write; read-only and unimplemented indices ignore it.
    fn write_register(&mut self, index: u8, value: u32) -> Deliveries {
        let mut out = Deliveries::none();
        match index {
            index::ID => self.id = value & ID_MASK,
            0x10..=0x3f => {
                let pin = usize::from((index - 0x10) / 2);
                let old = self.entries[pin];
                let written = if index & 1 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                self.entries[pin] = (written & WRITABLE) | (old & READ_ONLY);
                // A level-triggered line held while masked (or while Remote IRR was set under
                // another trigger mode) is sampled again now.
                if let Some(d) = self.service_level(pin) {
                    out.push(d);
                }
            }
            _ => {}
        }
        out
    }

    /// The message entry `pin` sends, if its delivery mode is a valid one.
    fn message(&self, pin: usize) -> Option<Delivery> {
        let e = RedirectionEntry(self.entries[pin]);
        let mode = e.delivery_mode()?;
        Some(Delivery {
            pin: pin as u8,
            dest: e.destination(),
            dest_mode: e.dest_mode(),
            mode,
            vector: e.vector(),
            level_triggered: e.uses_remote_irr(),
        })
    }

    /// Delivers a level-triggered pin that is asserted, unmasked and without Remote IRR, setting
    /// Remote IRR.
    fn service_level(&mut self, pin: usize) -> Option<Delivery> {
        let e = RedirectionEntry(self.entries[pin]);
        if !e.uses_remote_irr() || e.masked() || e.remote_irr() || self.asserted & (1 << pin) == 0 {
            return None;
        }
        let d = self.message(pin)?;
        self.entries[pin] |= REMOTE_IRR;
        Some(d)
    }

    /// Line `line` of an emulated device is now asserted (`level` true) or not. An edge-triggered
    /// entry sends on the rising edge when unmasked; a level-triggered one sends while the line is
    /// asserted and Remote IRR is clear, and sets Remote IRR (82093AA §3.2.4). Lines beyond the
    /// last pin are ignored.
    pub fn set_irq(&mut self, line: u8, level: bool) -> Option<Delivery> {
        let pin = usize::from(line);
        if pin >= PINS {
            return None;
        }
        let bit = 1u32 << pin;
        let rising = level && self.asserted & bit == 0;
        if level {
            self.asserted |= bit;
        } else {
            self.asserted &= !bit;
        }
        let e = RedirectionEntry(self.entries[pin]);
        if e.uses_remote_irr() {
            self.service_level(pin)
        } else if rising && !e.masked() {
            self.message(pin)
        } else {
            None
        }
    }

    /// A local APIC completed a level-triggered interrupt with `vector` (its EOI broadcast, or a
    /// write to the EOI register): every level-triggered entry with that vector clears Remote IRR
    /// and, if its line is still asserted and it is unmasked, sends again.
    pub fn eoi(&mut self, vector: u8) -> Deliveries {
        let mut out = Deliveries::none();
        for pin in 0..PINS {
            let e = RedirectionEntry(self.entries[pin]);
            if e.vector() == vector && e.level_triggered() && e.remote_irr() {
                self.entries[pin] &= !REMOTE_IRR;
                if let Some(d) = self.service_level(pin) {
                    out.push(d);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(io: &mut IoApic, index: u8) {
        assert!(io
            .mmio_write(offset::IOREGSEL, 4, index.into())
            .unwrap()
            .is_empty());
    }

    fn read(io: &mut IoApic, index: u8) -> u32 {
        select(io, index);
        io.mmio_read(offset::IOWIN, 4).unwrap()
    }

    fn write(io: &mut IoApic, index: u8, value: u32) -> Deliveries {
        select(io, index);
        io.mmio_write(offset::IOWIN, 4, value).unwrap()
    }

    /// Programs pin `pin` with `low` and destination `dest` (bits 63:56).
    fn program(io: &mut IoApic, pin: u8, low: u32, dest: u8) -> Deliveries {
        write(io, 0x11 + 2 * pin, u32::from(dest) << 24);
        write(io, 0x10 + 2 * pin, low)
    }

    const LEVEL: u32 = 1 << 15;
    const MASK: u32 = 1 << 16;

    #[test]
    fn select_and_window() {
        let mut io = IoApic::new(2);
        select(&mut io, 0x23);
        assert_eq!(io.mmio_read(offset::IOREGSEL, 4), Ok(0x23));
        // IOREGSEL keeps bits 7:0 only.
        io.mmio_write(offset::IOREGSEL, 4, 0xabcd_0101).unwrap();
        assert_eq!(io.mmio_read(offset::IOREGSEL, 4), Ok(0x01));
        assert_eq!(io.mmio_read(offset::IOWIN, 4), Ok(VERSION));
    }

    #[test]
    fn id_version_and_arbitration() {
        let mut io = IoApic::new(2);
        assert_eq!(read(&mut io, index::ID), 0x0200_0000);
        assert_eq!(read(&mut io, index::VER), 0x0017_0020);
        assert_eq!(read(&mut io, index::ARB), 0x0200_0000);
        write(&mut io, index::ID, 0xffff_ffff);
        assert_eq!(read(&mut io, index::ID), 0x0f00_0000, "bits 27:24 only");
        assert_eq!(io.id(), 0xf);
        write(&mut io, index::VER, 0);
        write(&mut io, index::ARB, 0);
        assert_eq!(read(&mut io, index::VER), VERSION, "VER is read-only");
        assert_eq!(read(&mut io, index::ARB), 0x0f00_0000);
        // Unimplemented indices read 0 and ignore writes.
        for idx in [0x03, 0x0f, 0x40, 0xff] {
            write(&mut io, idx, 0x1234);
            assert_eq!(read(&mut io, idx), 0, "{idx:#x}");
        }
    }

    #[test]
    fn entries_reset_masked() {
        let mut io = IoApic::new(0);
        for pin in 0..PINS as u8 {
            assert_eq!(read(&mut io, 0x10 + 2 * pin), MASK);
            assert_eq!(read(&mut io, 0x11 + 2 * pin), 0);
            assert!(io.entry(pin).unwrap().masked());
        }
        assert_eq!(io.entry(PINS as u8), None);
    }

    #[test]
    fn redirection_entries_round_trip_with_read_only_bits_kept() {
        let mut io = IoApic::new(0);
        // Every writable low bit, plus delivery status and Remote IRR, which are read-only.
        write(&mut io, 0x10 + 2 * 5, 0xffff_ffff);
        assert_eq!(read(&mut io, 0x10 + 2 * 5), 0x0001_afff);
        write(&mut io, 0x11 + 2 * 5, 0xffff_ffff);
        assert_eq!(
            read(&mut io, 0x11 + 2 * 5),
            0xfffe_0000,
            "bits 48:32 reserved"
        );
        let e = io.entry(5).unwrap();
        assert_eq!(e.vector(), 0xff);
        assert_eq!(e.delivery_mode(), Some(DeliveryMode::ExtInt));
        assert_eq!(e.dest_mode(), DestMode::Logical);
        assert!(e.active_low() && e.level_triggered() && e.masked() && !e.remote_irr());
        assert_eq!(e.destination(), 0x7fff);
        // Set Remote IRR through a delivery, then rewrite the entry: Remote IRR survives and
        // cannot be cleared by a write.
        program(&mut io, 7, LEVEL | 0x41, 3);
        assert!(io.set_irq(7, true).is_some());
        assert!(io.entry(7).unwrap().remote_irr());
        write(&mut io, 0x10 + 2 * 7, LEVEL | 0x42);
        assert_eq!(read(&mut io, 0x10 + 2 * 7), LEVEL | (1 << 14) | 0x42);
        write(&mut io, 0x11 + 2 * 7, 0x0500_0000);
        assert_eq!(read(&mut io, 0x11 + 2 * 7), 0x0500_0000);
        assert_eq!(io.entry(7).unwrap().destination(), 5);
        assert_eq!(read(&mut io, 0x10 + 2 * 7), LEVEL | (1 << 14) | 0x42);
    }

    #[test]
    fn destinations() {
        let e = |hi: u32, low: u32| RedirectionEntry((u64::from(hi) << 32) | u64::from(low));
        assert_eq!(e(0x0300_0000, 0).destination(), 3);
        assert_eq!(e(0xff00_0000, 0).destination(), BROADCAST);
        assert_eq!(
            e(0xff00_0000, 1 << 11).destination(),
            0xff,
            "logical 0xFF is a member mask, not a broadcast"
        );
        // Extended destination: ID 0x1ff = bits 14:8 = 1 in bits 55:49, 0xff in 63:56.
        assert_eq!(e(0xff02_0000, 0).destination(), 0x1ff);
        assert_eq!(e(0x0004_0000, 0).destination(), 0x200);
    }

    #[test]
    fn bad_offsets_and_sizes_are_refused() {
        let mut io = IoApic::new(0);
        let before = io.clone();
        for off in [
            0x04,
            0x08,
            0x0c,
            0x14,
            0x20,
            0x30,
            0x3c,
            0x44,
            0x1000,
            u64::MAX,
        ] {
            assert_eq!(
                io.mmio_read(off, 4),
                Err(IoApicError::BadOffset { offset: off })
            );
            assert_eq!(
                io.mmio_write(off, 4, 0),
                Err(IoApicError::BadOffset { offset: off })
            );
        }
        for off in [offset::IOREGSEL, offset::IOWIN, offset::EOI] {
            for size in [0, 1, 2, 3, 8] {
                assert_eq!(
                    io.mmio_read(off, size),
                    Err(IoApicError::BadSize { offset: off, size })
                );
                assert_eq!(
                    io.mmio_write(off, size, 0x10),
                    Err(IoApicError::BadSize { offset: off, size })
                );
            }
        }
        assert_eq!(
            io.mmio_read(offset::EOI, 4),
            Err(IoApicError::WriteOnly {
                offset: offset::EOI
            })
        );
        assert_eq!(io, before, "refused accesses change nothing");
    }

    #[test]
    fn edge_delivers_on_rising_edges_only() {
        let mut io = IoApic::new(0);
        program(&mut io, 4, 0x34, 1);
        let d = io.set_irq(4, true).expect("rising edge");
        assert_eq!(
            d,
            Delivery {
                pin: 4,
                dest: 1,
                dest_mode: DestMode::Physical,
                mode: DeliveryMode::Fixed,
                vector: 0x34,
                level_triggered: false,
            }
        );
        assert_eq!(io.set_irq(4, true), None, "still high: no new edge");
        assert_eq!(io.set_irq(4, false), None);
        assert!(io.set_irq(4, true).is_some());
        assert!(
            !io.entry(4).unwrap().remote_irr(),
            "edge entries leave Remote IRR"
        );
        assert!(io.eoi(0x34).is_empty());
    }

    #[test]
    fn masked_lines_deliver_nothing() {
        let mut io = IoApic::new(0);
        program(&mut io, 4, MASK | 0x34, 0);
        assert_eq!(io.set_irq(4, true), None);
        io.set_irq(4, false);
        // Unmasking an edge entry does not replay a lost edge.
        assert!(program(&mut io, 4, 0x34, 0).is_empty());
        io.set_irq(4, true);
        // Masked level entry: held, delivered at unmask.
        program(&mut io, 9, MASK | LEVEL | 0x59, 2);
        assert_eq!(io.set_irq(9, true), None);
        assert!(!io.entry(9).unwrap().remote_irr());
        let out = write(&mut io, 0x10 + 2 * 9, LEVEL | 0x59);
        let got: Vec<_> = out.iter().collect();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].pin, got[0].vector, got[0].dest), (9, 0x59, 2));
        assert!(got[0].level_triggered);
        assert!(io.entry(9).unwrap().remote_irr());
        // A level line that dropped while masked is not delivered at unmask.
        program(&mut io, 10, MASK | LEVEL | 0x5a, 2);
        io.set_irq(10, true);
        io.set_irq(10, false);
        assert!(write(&mut io, 0x10 + 2 * 10, LEVEL | 0x5a).is_empty());
    }

    #[test]
    fn level_sets_remote_irr_and_eoi_redelivers() {
        let mut io = IoApic::new(0);
        program(&mut io, 11, LEVEL | 0x61, 0);
        let d = io.set_irq(11, true).expect("asserted");
        assert!(d.level_triggered);
        assert!(io.entry(11).unwrap().remote_irr());
        // Still asserted, Remote IRR set: nothing more until the EOI.
        assert_eq!(io.set_irq(11, true), None);
        assert!(io.eoi(0x62).is_empty(), "another vector");
        let again: Vec<_> = io.eoi(0x61).iter().collect();
        assert_eq!(again, vec![d], "still asserted: sent again");
        assert!(io.entry(11).unwrap().remote_irr());
        // Deasserted, then EOI: Remote IRR clears, nothing sent.
        io.set_irq(11, false);
        assert!(io.eoi(0x61).is_empty());
        assert!(!io.entry(11).unwrap().remote_irr());
        // Asserting again delivers.
        assert!(io.set_irq(11, true).is_some());
    }

    #[test]
    fn eoi_register_and_shared_vectors() {
        let mut io = IoApic::new(0);
        program(&mut io, 1, LEVEL | 0x70, 0);
        program(&mut io, 2, LEVEL | 0x70, 1);
        program(&mut io, 3, LEVEL | 0x71, 1);
        for pin in 1..=3 {
            assert!(io.set_irq(pin, true).is_some());
        }
        let out = io.mmio_write(offset::EOI, 4, 0x70).unwrap();
        let pins: Vec<_> = out.iter().map(|d| d.pin).collect();
        assert_eq!(pins, vec![1, 2]);
        assert_eq!(out.len(), 2);
        assert!(io.entry(3).unwrap().remote_irr(), "other vector untouched");
        // A masked entry gets Remote IRR cleared by the EOI but is not sent.
        write(&mut io, 0x10 + 2 * 3, MASK | LEVEL | 0x71);
        assert!(io.eoi(0x71).is_empty());
        assert!(!io.entry(3).unwrap().remote_irr());
    }

    #[test]
    fn eoi_needs_level_trigger_mode() {
        // Linux's clear_IO_APIC_pin switches an entry to level before the EOI because an EOI
        // does not clear Remote IRR on an edge entry.
        let mut io = IoApic::new(0);
        program(&mut io, 6, LEVEL | 0x66, 0);
        io.set_irq(6, true);
        write(&mut io, 0x10 + 2 * 6, MASK | 0x66);
        io.set_irq(6, false);
        assert!(io.eoi(0x66).is_empty());
        assert!(io.entry(6).unwrap().remote_irr(), "edge: not cleared");
        write(&mut io, 0x10 + 2 * 6, MASK | LEVEL | 0x66);
        io.eoi(0x66);
        assert!(!io.entry(6).unwrap().remote_irr());
    }

    #[test]
    fn non_fixed_modes_are_edge_and_reserved_modes_silent() {
        let mut io = IoApic::new(0);
        program(&mut io, 0, LEVEL | 0x400, 0); // NMI, level bit set
        let d = io.set_irq(0, true).unwrap();
        assert_eq!((d.mode, d.level_triggered), (DeliveryMode::Nmi, false));
        assert!(!io.entry(0).unwrap().remote_irr());
        assert_eq!(io.set_irq(0, true), None);
        program(&mut io, 1, 0x300 | 0x40, 0); // reserved mode 011
        assert_eq!(io.set_irq(1, true), None);
        program(&mut io, 2, 0x600 | LEVEL | 0x40, 0); // reserved mode 110
        assert_eq!(io.set_irq(2, true), None);
        assert!(!io.entry(2).unwrap().remote_irr());
        program(&mut io, 3, 0x100 | LEVEL | 0x43, 0xff); // lowest priority, broadcast
        let d = io.set_irq(3, true).unwrap();
        assert_eq!(
            (d.mode, d.dest, d.level_triggered),
            (DeliveryMode::LowestPriority, BROADCAST, true)
        );
    }

    #[test]
    fn out_of_range_lines_are_ignored() {
        let mut io = IoApic::new(0);
        let before = io.clone();
        for line in [24u8, 25, 255] {
            assert_eq!(io.set_irq(line, true), None);
        }
        assert_eq!(io, before);
    }

    /// Deterministic xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_accesses_never_panic() {
        let mut rng = Rng(0x10a_71c);
        let mut io = IoApic::new(1);
        let (mut edge, mut level, mut again) = (0u32, 0u32, 0u32);
        for _ in 0..200_000 {
            let r = rng.next();
            // The high bits of xorshift64* pick the operation; the rest are its operands.
            match r >> 61 {
                0 => {
                    let off = [0, 0x10, 0x40, r >> 40][(r >> 8) as usize % 4];
                    let size = [4, 4, 4, (r >> 16) as u8][(r >> 24) as usize % 4];
                    let before = io.clone();
                    if io.mmio_write(off, size, (r >> 20) as u32).is_err() {
                        assert_eq!(io, before);
                    }
                }
                1 => {
                    let off = [0, 0x10, 0x40, r >> 40][(r >> 8) as usize % 4];
                    let _ = io.mmio_read(off, 4);
                }
                2 => {
                    // Select a table register and write it: low dwords with few reserved modes.
                    let index = 0x10 + (r >> 8) as u8 % 0x30;
                    io.mmio_write(offset::IOREGSEL, 4, index.into()).unwrap();
                    let value = if index & 1 == 0 {
                        (r as u32 & 0x1_a0ff) | [0, 0x100, 0x400][(r >> 40) as usize % 3]
                    } else {
                        (r >> 16) as u32
                    };
                    for d in io.mmio_write(offset::IOWIN, 4, value).unwrap().iter() {
                        assert!(d.level_triggered && io.entry(d.pin).unwrap().remote_irr());
                        level += 1;
                    }
                }
                3..=5 => {
                    if let Some(d) = io.set_irq((r >> 8) as u8 % 26, r & (1 << 20) != 0) {
                        assert!(usize::from(d.pin) < PINS);
                        if d.level_triggered {
                            assert!(io.entry(d.pin).unwrap().remote_irr());
                            level += 1;
                        } else {
                            edge += 1;
                        }
                    }
                }
                _ => {
                    // Mostly the vector of some entry, as a real EOI would be.
                    let pin = (r >> 8) as u8 % PINS as u8;
                    let vector = if r & 1 == 0 {
                        io.entry(pin).unwrap().vector()
                    } else {
                        (r >> 16) as u8
                    };
                    let out = io.eoi(vector);
                    assert!(out.len() <= PINS && out.iter().count() == out.len());
                    for d in out.iter() {
                        assert_eq!(d.vector, vector);
                        assert!(io.entry(d.pin).unwrap().remote_irr());
                        again += 1;
                    }
                }
            }
        }
        // The run reached deliveries of every kind, not only refusals.
        assert!(
            edge > 100 && level > 100 && again > 100,
            "{edge} {level} {again}"
        );
    }
}
