//! The host's physical I/O APIC, trapped so that its redirection entries reach the hardware
//! only in remappable form (Intel VT-d spec §5.1.5.1).
//!
//! The host programs its I/O APIC as if it owned it (82093AA datasheet §3.0: IOREGSEL at MMIO
//! offset 0x00, IOWIN at 0x10, and at version 0x20 the EOI register at 0x40; 32-bit accesses).
//! atoll maps that page away from the host and hands each access to [`HostIoApic`], which
//! keeps the host's view of every redirection entry (the *shadow*) and tells the caller what
//! to do with the chip:
//!
//! * IOREGSEL: remembered here; the caller selects physical registers itself around each
//!   physical access (under a lock of its own), so the host's selection never reaches the chip.
//! * ID, version, arbitration and any register outside the redirection table: read from the
//!   chip ([`IoApicRead::Device`]); writes to ID pass through, the read-only ones are dropped.
//! * Redirection entries: reads return the shadow, with the read-only delivery-status (12) and
//!   Remote IRR (14) bits from the chip — the physical entry keeps them in the same places, and
//!   a level-triggered interrupt's Remote IRR is the host's business. Writes update the shadow;
//!   the physical entry becomes the remappable form through the IRTE the caller's
//!   [`Remapper`] points at the host's interrupt, or stays masked while the host's entry is
//!   masked, not remappable (with the reason given to [`Remapper::block`]) or refused.
//! * EOI (version ≥ 0x20): passes through with the vector; the physical entry holds the host's
//!   vector, so the chip matches it.
//!
//! A physical entry is two registers, written one at a time, so the order matters: if the
//! chip's entry is unmasked and both halves change, its low half is masked first, then the high
//! half is written, then the low half — the chip only ever acts on the old entry or the new
//! one.
//!
//! The number of entries is the version register's Maximum Redirection Entry + 1, bounded at
//! 120: IOREGSEL is 8 bits and the table starts at register 0x10, so 0x10 + 2 × 120 = 0x100 is
//! the most an 8-bit index can reach (an entry past it could not be programmed anyway).

use crate::pci::msi::{ReadPlan, Remapper, WriteList};
use iommu::irte::IrteIndex;
use iommu::remap::{rte, Interrupt};

/// MMIO offsets.
pub mod mmio {
    /// IOREGSEL.
    pub const IOREGSEL: u32 = 0x00;
    /// IOWIN.
    pub const IOWIN: u32 = 0x10;
    /// EOI (version 0x20 and later).
    pub const EOI: u32 = 0x40;
}

/// The first redirection-table register.
pub const REDTBL: u8 = 0x10;
/// Most entries an 8-bit IOREGSEL reaches.
pub const MAX_ENTRIES: usize = 120;
/// The first version with the EOI register.
pub const EOI_VERSION: u8 = 0x20;

/// Bits of the low dword the chip answers (delivery status, Remote IRR).
const STATUS_BITS: u32 = (rte::DELIVERY_STATUS | rte::REMOTE_IRR) as u32;

/// Why an access was refused (the caller reads all ones or drops the write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoApicError {
    /// Not one of the three registers, or not a 32-bit access.
    Access {
        /// Offset in the MMIO window.
        offset: u32,
        /// Bytes.
        size: u8,
    },
}

/// What a host read returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoApicRead {
    /// This value.
    Value(u32),
    /// Read physical register `register`; combine per `plan` (all bits from the device for ID,
    /// version, arbitration; only the status bits for a redirection entry's low half).
    Device {
        /// The register to select and read.
        register: u8,
        /// How to combine it.
        plan: ReadPlan,
    },
}

/// One physical register write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterWrite {
    /// Register index (to IOREGSEL).
    pub register: u8,
    /// Value (to IOWIN).
    pub value: u32,
}

/// What a host write makes the caller do to the chip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoApicWrites {
    /// Register writes, in order.
    pub registers: WriteList<RegisterWrite, 3>,
    /// Write this vector to the chip's EOI register.
    pub eoi: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PinState {
    /// Not remapped (masked, or never unmasked).
    Idle,
    /// Remapped: the interrupt (unmasked form) and its IRTE handle.
    Programmed(Interrupt, IrteIndex),
    /// Unmasked by the host but not deliverable.
    Blocked,
}

/// The trapped physical I/O APIC.
#[derive(Clone, Debug)]
pub struct HostIoApic {
    select: u8,
    version: u32,
    entries: usize,
    shadow: [u64; MAX_ENTRIES],
    physical: [u64; MAX_ENTRIES],
    state: [PinState; MAX_ENTRIES],
}

impl HostIoApic {
    /// The trap of a chip whose version register reads `version`, with `read` giving its
    /// current registers (the host's shadow starts as what the chip holds — normally masked
    /// entries left by firmware or by atoll).
    pub fn new(version: u32, mut read: impl FnMut(u8) -> u32) -> Self {
        let entries = (((version >> 16) & 0xff) as usize + 1).min(MAX_ENTRIES);
        let mut physical = [0u64; MAX_ENTRIES];
        for (pin, p) in physical.iter_mut().enumerate().take(entries) {
            let reg = REDTBL + 2 * pin as u8;
            *p = u64::from(read(reg)) | u64::from(read(reg + 1)) << 32;
        }
        let mut shadow = physical;
        for s in shadow.iter_mut() {
            *s &= !(rte::DELIVERY_STATUS | rte::REMOTE_IRR);
        }
        Self {
            select: 0,
            version,
            entries,
            shadow,
            physical,
            state: [PinState::Idle; MAX_ENTRIES],
        }
    }

    /// Redirection entries.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The host's entry for `pin`.
    pub fn host_entry(&self, pin: usize) -> Option<u64> {
        (pin < self.entries).then(|| self.shadow[pin])
    }

    /// What atoll last wrote (or found) in the chip's entry for `pin`.
    pub fn physical_entry(&self, pin: usize) -> Option<u64> {
        (pin < self.entries).then(|| self.physical[pin])
    }

    /// The pin and half (false: low) a register index names, if in the table.
    fn entry_of(&self, register: u8) -> Option<(usize, bool)> {
        let r = register.checked_sub(REDTBL)?;
        let pin = usize::from(r / 2);
        (pin < self.entries).then_some((pin, r % 2 == 1))
    }

    fn check(offset: u32, size: u8) -> Result<(), IoApicError> {
        if size == 4 && matches!(offset, mmio::IOREGSEL | mmio::IOWIN | mmio::EOI) {
            Ok(())
        } else {
            Err(IoApicError::Access { offset, size })
        }
    }

    /// A host read at `offset` in the MMIO window.
    pub fn mmio_read(&self, offset: u32, size: u8) -> Result<IoApicRead, IoApicError> {
        Self::check(offset, size)?;
        Ok(match offset {
            mmio::IOREGSEL => IoApicRead::Value(u32::from(self.select)),
            // The EOI register is write-only.
            mmio::EOI => IoApicRead::Value(0),
            _ => match self.entry_of(self.select) {
                Some((pin, false)) => IoApicRead::Device {
                    register: self.select,
                    plan: ReadPlan {
                        shadow: self.shadow[pin] as u32 & !STATUS_BITS,
                        from_device: STATUS_BITS,
                    },
                },
                Some((pin, true)) => IoApicRead::Value((self.shadow[pin] >> 32) as u32),
                None => IoApicRead::Device {
                    register: self.select,
                    plan: ReadPlan {
                        shadow: 0,
                        from_device: u32::MAX,
                    },
                },
            },
        })
    }

    /// A host write of `value` at `offset` in the MMIO window.
    pub fn mmio_write(
        &mut self,
        offset: u32,
        size: u8,
        value: u32,
        remap: &mut impl Remapper,
    ) -> Result<IoApicWrites, IoApicError> {
        Self::check(offset, size)?;
        let mut out = IoApicWrites::default();
        match offset {
            mmio::IOREGSEL => self.select = value as u8,
            mmio::EOI => {
                if self.version as u8 >= EOI_VERSION {
                    out.eoi = Some(value as u8);
                }
            }
            _ => match self.entry_of(self.select) {
                Some((pin, high)) => {
                    let s = &mut self.shadow[pin];
                    *s = if high {
                        (*s & 0xffff_ffff) | u64::from(value) << 32
                    } else {
                        (*s & !0xffff_ffff) | u64::from(value & !STATUS_BITS)
                    };
                    out.registers = self.update(pin, remap);
                }
                // ID passes through; version, arbitration and unknown registers are read-only
                // or absent.
                None if self.select == 0 => {
                    out.registers.push(RegisterWrite { register: 0, value })
                }
                None => {}
            },
        }
        Ok(out)
    }

    /// Brings pin `pin`'s physical entry in line with the host's.
    fn update(&mut self, pin: usize, remap: &mut impl Remapper) -> WriteList<RegisterWrite, 3> {
        let host = self.shadow[pin];
        let source = pin as u16;
        let target = if host & rte::MASK != 0 {
            // Masked: the IRTE may stay as it is; nothing reaches it.
            if self.state[pin] == PinState::Blocked {
                self.state[pin] = PinState::Idle;
            }
            None
        } else {
            match Interrupt::from_ioapic_rte(host) {
                Ok(i) => {
                    let unmasked = Interrupt { masked: false, ..i };
                    match self.state[pin] {
                        PinState::Programmed(old, h) if old == unmasked => Some((unmasked, h)),
                        _ => match remap.program(source, &unmasked) {
                            Some(h) => {
                                self.state[pin] = PinState::Programmed(unmasked, h);
                                Some((unmasked, h))
                            }
                            None => {
                                self.state[pin] = PinState::Blocked;
                                None
                            }
                        },
                    }
                }
                Err(e) => {
                    if self.state[pin] != PinState::Blocked {
                        remap.block(source, e);
                    }
                    self.state[pin] = PinState::Blocked;
                    None
                }
            }
        };
        let want = match target {
            Some((i, h)) => i.to_remappable_rte(h),
            // Masked: keep whatever the chip has, masked. An entry atoll never programmed may
            // hold a compatibility-format message from firmware: masked, it sends nothing.
            None => self.physical[pin] | rte::MASK,
        };
        self.write_entry(pin, want)
    }

    fn write_entry(&mut self, pin: usize, want: u64) -> WriteList<RegisterWrite, 3> {
        let mut out = WriteList::default();
        let reg = REDTBL + 2 * pin as u8;
        let status = rte::DELIVERY_STATUS | rte::REMOTE_IRR;
        let have = self.physical[pin] & !status;
        let want = want & !status;
        if have == want {
            return out;
        }
        let mut cur_lo = have as u32;
        // One 32-bit write is atomic for the chip: masking first is needed only when both
        // halves change.
        if have & rte::MASK == 0 && have >> 32 != want >> 32 {
            cur_lo |= rte::MASK as u32;
            out.push(RegisterWrite {
                register: reg,
                value: cur_lo,
            });
        }
        if have >> 32 != want >> 32 {
            out.push(RegisterWrite {
                register: reg + 1,
                value: (want >> 32) as u32,
            });
        }
        if cur_lo != want as u32 {
            out.push(RegisterWrite {
                register: reg,
                value: want as u32,
            });
        }
        self.physical[pin] = want;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use iommu::remap::RemapError;

    #[derive(Default)]
    struct Recorder {
        programmed: Vec<(u16, Interrupt)>,
        blocked: Vec<(u16, RemapError)>,
        refuse: bool,
    }

    impl Remapper for Recorder {
        fn program(&mut self, source: u16, interrupt: &Interrupt) -> Option<IrteIndex> {
            self.programmed.push((source, *interrupt));
            (!self.refuse).then_some(IrteIndex(0x8100 + source))
        }
        fn block(&mut self, source: u16, reason: RemapError) {
            self.blocked.push((source, reason));
        }
    }

    /// The physical chip: registers, and every state an entry passed through.
    struct Chip {
        regs: [u32; 256],
        states: Vec<(usize, u64)>,
        eois: Vec<u8>,
    }

    impl Chip {
        fn new(version: u32) -> Self {
            let mut regs = [0u32; 256];
            regs[0] = 0x0200_0000;
            regs[1] = version;
            regs[2] = 0x0200_0000;
            for pin in 0..120 {
                regs[0x10 + 2 * pin] = 0x0001_0000; // masked
            }
            Self {
                regs,
                states: Vec::new(),
                eois: Vec::new(),
            }
        }
        fn entry(&self, pin: usize) -> u64 {
            u64::from(self.regs[0x10 + 2 * pin]) | u64::from(self.regs[0x11 + 2 * pin]) << 32
        }
        fn apply(&mut self, w: &IoApicWrites) {
            for r in w.registers.as_slice() {
                self.regs[usize::from(r.register)] = r.value;
                if r.register >= 0x10 {
                    let pin = usize::from(r.register - 0x10) / 2;
                    self.states.push((pin, self.entry(pin)));
                }
            }
            self.eois.extend(w.eoi);
        }
    }

    struct Host {
        apic: HostIoApic,
        chip: Chip,
        remap: Recorder,
    }

    impl Host {
        fn new(version: u32) -> Self {
            let chip = Chip::new(version);
            let apic = HostIoApic::new(version, |r| chip.regs[usize::from(r)]);
            Self {
                apic,
                chip,
                remap: Recorder::default(),
            }
        }
        fn write_reg(&mut self, reg: u8, value: u32) {
            let w = self
                .apic
                .mmio_write(0, 4, u32::from(reg), &mut self.remap)
                .unwrap();
            assert_eq!(
                w,
                IoApicWrites::default(),
                "IOREGSEL never reaches the chip"
            );
            let w = self
                .apic
                .mmio_write(0x10, 4, value, &mut self.remap)
                .unwrap();
            self.chip.apply(&w);
        }
        fn read_reg(&mut self, reg: u8) -> u32 {
            let _ = self
                .apic
                .mmio_write(0, 4, u32::from(reg), &mut self.remap)
                .unwrap();
            match self.apic.mmio_read(0x10, 4).unwrap() {
                IoApicRead::Value(v) => v,
                IoApicRead::Device { register, plan } => {
                    plan.complete(self.chip.regs[usize::from(register)])
                }
            }
        }
        /// Linux's __ioapic_write_entry: high dword, then low.
        fn linux_write_entry(&mut self, pin: u8, e: u64) {
            self.write_reg(0x11 + 2 * pin, (e >> 32) as u32);
            self.write_reg(0x10 + 2 * pin, e as u32);
        }
    }

    fn entry(vector: u8, level: bool, low: bool, masked: bool, dest: u8) -> u64 {
        u64::from(vector)
            | u64::from(low) << 13
            | u64::from(level) << 15
            | u64::from(masked) << 16
            | u64::from(dest) << 56
    }

    #[test]
    fn entries_from_the_version_register() {
        assert_eq!(Host::new(0x0017_0020).apic.entries(), 24);
        assert_eq!(Host::new(0x0000_0011).apic.entries(), 1);
        assert_eq!(Host::new(0x00ff_0020).apic.entries(), 120);
        assert_eq!(Host::new(0x0077_0020).apic.entries(), 120);
    }

    #[test]
    fn linux_entry_write_is_remapped_and_reads_show_the_host_view() {
        let mut h = Host::new(0x0017_0020);
        let e = entry(0x31, true, true, false, 1);
        h.linux_write_entry(2, e);
        let i = Interrupt::from_ioapic_rte(e).unwrap();
        assert_eq!(
            h.remap.programmed,
            [(2, i)],
            "programmed once, when the low half completes it"
        );
        let phys = i.to_remappable_rte(IrteIndex(0x8102));
        assert_eq!(h.chip.entry(2), phys);
        assert_eq!(
            phys & (1 << 48 | 0xff | 1 << 13 | 1 << 15 | 1 << 16),
            1 << 48 | 0x31 | 1 << 13 | 1 << 15
        );
        // The host reads what it wrote, with the chip's Remote IRR.
        assert_eq!(h.read_reg(0x11 + 4), 0x0100_0000);
        assert_eq!(h.read_reg(0x10 + 4), e as u32);
        h.chip.regs[0x14] |= 1 << 14;
        assert_eq!(h.read_reg(0x14), e as u32 | 1 << 14);
        // Status bits the host writes are not kept.
        h.write_reg(0x14, e as u32 | 1 << 12 | 1 << 14);
        assert_eq!(h.apic.host_entry(2), Some(e));
        assert_eq!(h.remap.programmed.len(), 1);
    }

    #[test]
    fn mask_and_unmask_touch_only_the_low_register() {
        let mut h = Host::new(0x0017_0020);
        let e = entry(0x40, false, false, false, 0);
        h.linux_write_entry(5, e);
        let before = h.chip.states.len();
        h.write_reg(0x1a, e as u32 | 1 << 16);
        h.write_reg(0x1a, e as u32);
        let writes: Vec<_> = h.chip.states[before..].to_vec();
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].1 & (1 << 16), 1 << 16);
        assert_eq!(
            writes[1].1,
            Interrupt::from_ioapic_rte(e)
                .unwrap()
                .to_remappable_rte(IrteIndex(0x8105))
        );
        assert_eq!(
            h.remap.programmed.len(),
            1,
            "the same interrupt keeps its IRTE"
        );
        // A new destination: the IRTE changes, the chip's entry (handle, vector) does not.
        let before = h.chip.states.len();
        h.linux_write_entry(5, entry(0x40, false, false, false, 3));
        assert_eq!(h.remap.programmed.last().unwrap().1.dest, 3);
        assert_eq!(h.chip.states.len(), before);
    }

    #[test]
    fn unremappable_entries_stay_masked_with_reason() {
        let mut h = Host::new(0x0017_0020);
        h.linux_write_entry(1, entry(0x05, false, false, false, 0));
        assert_eq!(h.remap.blocked, [(1, RemapError::IllegalVector(5))]);
        assert_ne!(h.chip.entry(1) & 1 << 16, 0);
        h.linux_write_entry(1, entry(0x35, false, false, false, 0) | 1 << 48);
        assert_eq!(h.remap.blocked.len(), 1, "still blocked: not repeated");
        h.write_reg(0x12, 1 << 16);
        h.linux_write_entry(1, entry(0x35, false, false, false, 0) | 1 << 48);
        assert_eq!(
            h.remap.blocked.last(),
            Some(&(1, RemapError::AlreadyRemappable))
        );
        h.write_reg(0x12, 1 << 16);
        h.linux_write_entry(1, entry(0x35, false, false, false, 0) | 3 << 8);
        assert_eq!(
            h.remap.blocked.last(),
            Some(&(1, RemapError::ReservedDeliveryMode(3)))
        );
        assert!(h.remap.programmed.is_empty());
        assert_ne!(h.chip.entry(1) & 1 << 16, 0);
        assert_eq!(h.chip.entry(1) & 1 << 48, 0, "never programmed: no handle");
        // The host still reads its own (refused) entry.
        assert_eq!(h.read_reg(0x12), 0x335);
    }

    #[test]
    fn refused_by_the_caller_stays_masked_until_accepted() {
        let mut h = Host::new(0x0017_0020);
        h.remap.refuse = true;
        h.linux_write_entry(0, entry(0x30, false, false, false, 0));
        assert_ne!(h.chip.entry(0) & 1 << 16, 0);
        h.remap.refuse = false;
        h.write_reg(0x10, 0x30);
        assert_eq!(
            h.chip.entry(0),
            Interrupt::from_ioapic_rte(0x30)
                .unwrap()
                .to_remappable_rte(IrteIndex(0x8100))
        );
    }

    #[test]
    fn the_chip_never_holds_a_mixed_unmasked_entry() {
        let mut h = Host::new(0x0017_0020);
        let mut finals = alloc::vec![h.chip.entry(7)];
        let seq = [
            entry(0x30, false, false, false, 1),
            entry(0x31, true, true, false, 2),
            entry(0x31, true, true, true, 2),
            entry(0x32, false, false, false, 0xff),
        ];
        // Different handles each time, so both halves change.
        struct Rotating(u16);
        impl Remapper for Rotating {
            fn program(&mut self, _: u16, _: &Interrupt) -> Option<IrteIndex> {
                self.0 = self.0.wrapping_add(0x4001);
                Some(IrteIndex(self.0))
            }
            fn block(&mut self, _: u16, _: RemapError) {}
        }
        let mut rot = Rotating(0);
        for e in seq {
            for (reg, v) in [(0x1f, (e >> 32) as u32), (0x1e, e as u32)] {
                let _ = h.apic.mmio_write(0, 4, reg, &mut rot).unwrap();
                let w = h.apic.mmio_write(0x10, 4, v, &mut rot).unwrap();
                h.chip.apply(&w);
                finals.push(h.chip.entry(7));
            }
        }
        for (pin, state) in &h.chip.states {
            assert_eq!(*pin, 7);
            assert!(
                state & 1 << 16 != 0 || finals.contains(state),
                "mixed entry {state:#x}"
            );
        }
        assert_eq!(h.chip.entry(7), h.apic.physical_entry(7).unwrap());
    }

    #[test]
    fn id_version_arbitration_and_eoi() {
        let mut h = Host::new(0x0017_0020);
        assert_eq!(h.read_reg(0), 0x0200_0000);
        assert_eq!(h.read_reg(1), 0x0017_0020);
        assert_eq!(h.read_reg(2), 0x0200_0000);
        h.write_reg(0, 0x0500_0000);
        assert_eq!(h.chip.regs[0], 0x0500_0000, "ID writes pass through");
        h.write_reg(1, 0);
        h.write_reg(2, 0);
        assert_eq!(
            (h.chip.regs[1], h.chip.regs[2]),
            (0x0017_0020, 0x0200_0000),
            "read-only"
        );
        // Past the table: read from the chip, writes dropped.
        h.chip.regs[0x40] = 0x1234;
        assert_eq!(h.read_reg(0x40), 0x1234);
        h.write_reg(0x40, 0);
        assert_eq!(h.chip.regs[0x40], 0x1234);
        // IOREGSEL reads back.
        let _ = h.apic.mmio_write(0, 4, 0x1ff, &mut h.remap).unwrap();
        assert_eq!(h.apic.mmio_read(0, 4), Ok(IoApicRead::Value(0xff)));
        // EOI passes through at version 0x20 only.
        let w = h.apic.mmio_write(0x40, 4, 0x131, &mut h.remap).unwrap();
        assert_eq!(w.eoi, Some(0x31));
        let mut old = Host::new(0x0017_0011);
        let w = old.apic.mmio_write(0x40, 4, 0x31, &mut old.remap).unwrap();
        assert_eq!(w, IoApicWrites::default());
    }

    #[test]
    fn bad_accesses_are_refused_and_change_nothing() {
        let mut h = Host::new(0x0017_0020);
        let _ = h.apic.mmio_write(0, 4, 0x10, &mut h.remap).unwrap();
        for (off, size) in [(0x04u32, 4u8), (0x10, 2), (0x10, 8), (0x41, 4), (0x20, 4)] {
            assert_eq!(
                h.apic.mmio_write(off, size, 0x30, &mut h.remap).err(),
                Some(IoApicError::Access { offset: off, size })
            );
            assert_eq!(
                h.apic.mmio_read(off, size).err(),
                Some(IoApicError::Access { offset: off, size })
            );
        }
        assert_eq!(h.apic.host_entry(0), Some(1 << 16));
        assert_eq!(h.apic.mmio_read(0, 4), Ok(IoApicRead::Value(0x10)));
        assert!(h.remap.programmed.is_empty());
    }
}
