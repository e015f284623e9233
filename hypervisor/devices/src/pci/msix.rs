//! MSI-X: the capability, the vector table and the pending-bit array (PCI Local Bus
//! Specification 3.0 §6.8.2).
//!
//! The capability in configuration space holds the table size (read-only), the function mask
//! and the enable bit (read-write), and where the table and the PBA live: an offset into one of
//! the function's memory BARs each. The table has one 16-byte entry per vector — message address
//! (low, high), message data, vector control (bit 0: masked) — and the PBA one bit per vector.
//!
//! **Signalling.** When the function wants vector *v* ([`Msix::signal`]):
//! * MSI-X disabled: nothing is recorded (the function would use INTx instead);
//! * enabled, and neither the function nor entry *v* masked: the entry's message is sent;
//! * enabled but masked (function or entry): *v*'s pending bit is set instead, and the message
//!   goes when the mask is lifted — the owner drains [`Msix::next_deliverable`] after every
//!   table write and every capability write, which clears the bit and returns the message.
//!
//! **Writes to entries.** Software reprograms an entry's address and data while the entry is
//! masked (§6.8.2.9); a pending vector keeps its pending bit across that, and is sent with the
//! new address and data when unmasked. The specification leaves a change of an *unmasked*
//! entry undefined; this model applies it at once (the next message uses it). Entries start
//! masked with address and data 0. The two low bits of the address are hardwired to 0 (a message
//! is a dword write) and the reserved vector-control bits read 0.
//!
//! **Accesses.** Table and PBA accesses are aligned dwords or aligned qwords (§6.8.2: anything
//! else is undefined); others are [`MsixError::Access`], which the device turns into all ones
//! or a dropped write. The PBA is read-only: writes are ignored.

use super::config::{BarKind, ConfigError, ConfigSpace};
use alloc::vec;
use alloc::vec::Vec;

/// The MSI-X capability ID.
pub const CAPABILITY_ID: u8 = 0x11;
/// The most vectors a function can have (an 11-bit table size field).
pub const MAX_VECTORS: u16 = 2048;
/// Bytes of one table entry.
pub const ENTRY_SIZE: u64 = 16;

/// Message Control bits (the capability's first word after ID and next).
pub mod control {
    /// Table size minus one (read-only).
    pub const TABLE_SIZE: u16 = 0x07ff;
    /// Every vector masked, whatever its entry says.
    pub const FUNCTION_MASK: u16 = 1 << 14;
    /// MSI-X on (and INTx off).
    pub const ENABLE: u16 = 1 << 15;
}

/// Vector control bit 0: the entry is masked.
pub const VECTOR_MASKED: u32 = 1;

/// Where a function's MSI-X structures go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors (1–2048).
    pub vectors: u16,
    /// The memory BAR holding the table.
    pub table_bar: u8,
    /// The table's offset in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// The memory BAR holding the PBA.
    pub pba_bar: u8,
    /// The PBA's offset in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Bytes of the table.
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors) * ENTRY_SIZE
    }

    /// Bytes of the PBA (whole qwords).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }
}

/// A message: a dword write of `data` to `address` (on x86, an interrupt request to the local
/// APICs the address names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// One table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixEntry {
    /// Where and what the entry sends.
    pub message: MsiMessage,
    /// Vector control bit 0.
    pub masked: bool,
}

impl Default for MsixEntry {
    fn default() -> Self {
        Self {
            message: MsiMessage::default(),
            masked: true,
        }
    }
}

/// Why an MSI-X layout or access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixError {
    /// A vector count that is not 1–2048.
    Vectors(u16),
    /// A BAR index that is not a memory BAR of the function.
    Bar(u8),
    /// An offset that is not 8-byte aligned, or a structure that does not fit its BAR.
    Offset(u32),
    /// The table and the PBA share bytes.
    Overlap,
    /// The capability did not fit in configuration space.
    Config(ConfigError),
    /// A table or PBA access that is not an aligned dword or qword inside the structure.
    Access {
        /// Offset of the access in the structure.
        offset: u64,
        /// Its length.
        len: usize,
    },
}

/// What [`Msix::signal`] did with a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Send this message now.
    Send(MsiMessage),
    /// Masked: the pending bit is set.
    Pending,
    /// MSI-X is off: nothing recorded.
    Disabled,
    /// The function has no such vector.
    NoVector,
}

/// A function's MSI-X state: the table, the PBA and the capability's enable and mask.
#[derive(Clone, Debug)]
pub struct Msix {
    capability: u8,
    layout: MsixLayout,
    entries: Vec<MsixEntry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl Msix {
    /// Adds the MSI-X capability for `layout` to `config` (whose memory BARs must already hold
    /// the table and the PBA) and returns the state behind it: disabled, every entry masked.
    pub fn install(config: &mut ConfigSpace, layout: MsixLayout) -> Result<Self, MsixError> {
        if layout.vectors == 0 || layout.vectors > MAX_VECTORS {
            return Err(MsixError::Vectors(layout.vectors));
        }
        for (bar, offset, len) in [
            (layout.table_bar, layout.table_offset, layout.table_len()),
            (layout.pba_bar, layout.pba_offset, layout.pba_len()),
        ] {
            let b = config.bar(bar).ok_or(MsixError::Bar(bar))?;
            if b.kind == BarKind::Io {
                return Err(MsixError::Bar(bar));
            }
            if offset & 7 != 0 || u64::from(offset) + len > b.size {
                return Err(MsixError::Offset(offset));
            }
        }
        if layout.table_bar == layout.pba_bar {
            let (t, p) = (u64::from(layout.table_offset), u64::from(layout.pba_offset));
            if t < p + layout.pba_len() && p < t + layout.table_len() {
                return Err(MsixError::Overlap);
            }
        }
        let mut body = [0u8; 10];
        body[..2].copy_from_slice(&(layout.vectors - 1).to_le_bytes());
        body[2..6]
            .copy_from_slice(&(layout.table_offset | u32::from(layout.table_bar)).to_le_bytes());
        body[6..].copy_from_slice(&(layout.pba_offset | u32::from(layout.pba_bar)).to_le_bytes());
        let mut writable = [0u8; 10];
        writable[..2].copy_from_slice(&(control::ENABLE | control::FUNCTION_MASK).to_le_bytes());
        let capability = config
            .add_capability(CAPABILITY_ID, &body, &writable)
            .map_err(MsixError::Config)?;
        Ok(Self {
            capability,
            layout,
            entries: vec![MsixEntry::default(); usize::from(layout.vectors)],
            pending: vec![0; layout.pba_len() as usize / 8],
            enabled: false,
            function_masked: false,
        })
    }

    /// The capability's offset in configuration space.
    pub fn capability(&self) -> u8 {
        self.capability
    }

    /// Where the structures are.
    pub fn layout(&self) -> &MsixLayout {
        &self.layout
    }

    /// MSI-X enable.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The function mask.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Picks up the enable and function-mask bits after a configuration write of `len` bytes at
    /// `offset` (a no-op unless the write touched Message Control). The owner calls this after
    /// every configuration write, then drains [`Msix::next_deliverable`].
    pub fn config_written(&mut self, config: &ConfigSpace, offset: u16, len: usize) {
        let control = u16::from(self.capability) + 2;
        let end = usize::from(offset) + len;
        if usize::from(offset) < usize::from(control) + 2 && end > usize::from(control) {
            let c = config.u16_at(control);
            self.enabled = c & control::ENABLE != 0;
            self.function_masked = c & control::FUNCTION_MASK != 0;
        }
    }

    /// Entry `vector`.
    pub fn entry(&self, vector: u16) -> Option<MsixEntry> {
        self.entries.get(usize::from(vector)).copied()
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, on: bool) {
        let v = usize::from(vector);
        if let Some(w) = self.pending.get_mut(v / 64) {
            if on {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    /// Whether `entry` may send now.
    fn open(&self, entry: &MsixEntry) -> bool {
        self.enabled && !self.function_masked && !entry.masked
    }

    /// The function raises `vector`.
    pub fn signal(&mut self, vector: u16) -> Signal {
        let Some(entry) = self.entry(vector) else {
            return Signal::NoVector;
        };
        if !self.enabled {
            Signal::Disabled
        } else if self.open(&entry) {
            Signal::Send(entry.message)
        } else {
            self.set_pending(vector, true);
            Signal::Pending
        }
    }

    /// A pending vector that may now be sent, its pending bit cleared; `None` when there is
    /// none. Allocation-free, so it can run on an exit path.
    pub fn next_deliverable(&mut self) -> Option<(u16, MsiMessage)> {
        if !self.enabled || self.function_masked {
            return None;
        }
        for (w, &bits) in self.pending.iter().enumerate() {
            let mut rest = bits;
            while rest != 0 {
                let v = w * 64 + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                let entry = self.entries[v];
                if !entry.masked {
                    let vector = v as u16;
                    self.set_pending(vector, false);
                    return Some((vector, entry.message));
                }
            }
        }
        None
    }

    /// Checks a structure access: an aligned dword or qword inside `len` bytes.
    fn check(offset: u64, data_len: usize, len: u64) -> Result<(), MsixError> {
        let ok = matches!(data_len, 4 | 8)
            && offset & (data_len as u64 - 1) == 0
            && offset
                .checked_add(data_len as u64)
                .is_some_and(|e| e <= len);
        if ok {
            Ok(())
        } else {
            Err(MsixError::Access {
                offset,
                len: data_len,
            })
        }
    }

    /// The dword at `offset` (a multiple of 4) of the table.
    fn table_dword(&self, offset: u64) -> u32 {
        let e = self.entries[(offset / ENTRY_SIZE) as usize];
        match offset % ENTRY_SIZE {
            0 => e.message.address as u32,
            4 => (e.message.address >> 32) as u32,
            8 => e.message.data,
            _ => u32::from(e.masked),
        }
    }

    /// Reads the table at `offset` (relative to the table's start).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) -> Result<(), MsixError> {
        Self::check(offset, data.len(), self.layout.table_len())?;
        for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&self.table_dword(offset + 4 * i as u64).to_le_bytes());
        }
        Ok(())
    }

    /// Writes the table at `offset`. The owner drains [`Msix::next_deliverable`] afterwards (an
    /// unmask may release a pending vector).
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        Self::check(offset, data.len(), self.layout.table_len())?;
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let at = offset + 4 * i as u64;
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            let v = u32::from_le_bytes(b);
            let e = &mut self.entries[(at / ENTRY_SIZE) as usize];
            match at % ENTRY_SIZE {
                0 => e.message.address = (e.message.address & !0xffff_ffff) | u64::from(v & !3),
                4 => e.message.address = (e.message.address & 0xffff_ffff) | u64::from(v) << 32,
                8 => e.message.data = v,
                _ => e.masked = v & VECTOR_MASKED != 0,
            }
        }
        Ok(())
    }

    /// Reads the PBA at `offset` (relative to the PBA's start).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) -> Result<(), MsixError> {
        Self::check(offset, data.len(), self.layout.pba_len())?;
        let q = self.pending[(offset / 8) as usize].to_le_bytes();
        let at = (offset % 8) as usize;
        data.copy_from_slice(&q[at..at + data.len()]);
        Ok(())
    }

    /// A PBA write: checked like a read, then ignored (the PBA is read-only to software).
    pub fn pba_write(&self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        Self::check(offset, data.len(), self.layout.pba_len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{command, Bar, ClassCode, Header};
    use super::*;

    fn space() -> ConfigSpace {
        let mut c = ConfigSpace::new(&Header {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            revision: 1,
            class: ClassCode {
                class: 2,
                subclass: 0,
                prog_if: 0,
            },
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            interrupt_pin: None,
        });
        c.add_bar(
            1,
            Bar {
                kind: BarKind::Memory32 {
                    prefetchable: false,
                },
                size: 0x1000,
            },
        )
        .unwrap();
        c.add_bar(
            0,
            Bar {
                kind: BarKind::Io,
                size: 32,
            },
        )
        .unwrap();
        c
    }

    fn layout(vectors: u16) -> MsixLayout {
        MsixLayout {
            vectors,
            table_bar: 1,
            table_offset: 0,
            pba_bar: 1,
            pba_offset: 0x800,
        }
    }

    fn set_control(c: &mut ConfigSpace, m: &mut Msix, value: u16) {
        let at = u16::from(m.capability()) + 2;
        c.write(at, &value.to_le_bytes()).unwrap();
        m.config_written(c, at, 2);
    }

    fn program(m: &mut Msix, v: u16, address: u64, data: u32, masked: bool) {
        let at = u64::from(v) * ENTRY_SIZE;
        m.table_write(at, &address.to_le_bytes()).unwrap();
        m.table_write(at + 8, &data.to_le_bytes()).unwrap();
        m.table_write(at + 12, &u32::from(masked).to_le_bytes())
            .unwrap();
    }

    #[test]
    fn capability_reads_as_the_layout() {
        let mut c = space();
        let m = Msix::install(&mut c, layout(3)).unwrap();
        let at = u16::from(m.capability());
        assert_eq!(c.find_capability(CAPABILITY_ID), Some(m.capability()));
        assert_eq!(c.u16_at(at + 2), 2, "table size is N-1");
        assert_eq!(c.u32_at(at + 4), 0x0000_0001, "offset 0 in BAR 1");
        assert_eq!(c.u32_at(at + 8), 0x0000_0801);
        // Only enable and function mask are writable.
        c.write(at + 2, &[0xff, 0xff]).unwrap();
        assert_eq!(c.u16_at(at + 2), 0xc002);
        c.write(at + 4, &[0xff; 4]).unwrap();
        c.write(at + 8, &[0xff; 4]).unwrap();
        assert_eq!((c.u32_at(at + 4), c.u32_at(at + 8)), (1, 0x801));
    }

    #[test]
    fn layouts_are_checked() {
        let mut c = space();
        assert_eq!(
            Msix::install(&mut c, layout(0)).unwrap_err(),
            MsixError::Vectors(0)
        );
        assert_eq!(
            Msix::install(&mut c, layout(2049)).unwrap_err(),
            MsixError::Vectors(2049)
        );
        // 129 vectors = 2064 bytes: past the PBA at 0x800.
        assert_eq!(
            Msix::install(&mut c, layout(129)).unwrap_err(),
            MsixError::Overlap
        );
        let mut l = layout(4);
        l.table_bar = 2;
        assert_eq!(Msix::install(&mut c, l).unwrap_err(), MsixError::Bar(2));
        l.table_bar = 0;
        assert_eq!(
            Msix::install(&mut c, l).unwrap_err(),
            MsixError::Bar(0),
            "an I/O BAR"
        );
        let mut l = layout(4);
        l.pba_offset = 0x804;
        assert_eq!(
            Msix::install(&mut c, l).unwrap_err(),
            MsixError::Offset(0x804)
        );
        l.pba_offset = 0xff8;
        assert!(Msix::install(&mut c, l).is_ok());
        l.pba_offset = 0x1000;
        assert_eq!(
            Msix::install(&mut c, l).unwrap_err(),
            MsixError::Offset(0x1000)
        );
        // 2048 vectors: a 32 KiB table, a 256-byte PBA.
        let big = MsixLayout {
            vectors: 2048,
            ..layout(1)
        };
        assert_eq!((big.table_len(), big.pba_len()), (0x8000, 256));
        assert_eq!(layout(65).pba_len(), 16);
    }

    #[test]
    fn table_reads_and_writes() {
        let mut c = space();
        let mut m = Msix::install(&mut c, layout(2)).unwrap();
        let mut q = [0u8; 8];
        // Entries start masked with address and data 0.
        m.table_read(8, &mut q).unwrap();
        assert_eq!(u64::from_le_bytes(q), 1 << 32);
        program(&mut m, 1, 0xfee0_1003, 0x4031, false);
        m.table_write(0x14, &0x1u32.to_le_bytes()).unwrap();
        let mut d = [0u8; 4];
        m.table_read(0x10, &mut d).unwrap();
        assert_eq!(
            u32::from_le_bytes(d),
            0xfee0_1000,
            "the low two bits read 0"
        );
        m.table_read(0x10, &mut q).unwrap();
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_1000);
        m.table_read(0x18, &mut q).unwrap();
        assert_eq!(u64::from_le_bytes(q), 0x4031, "unmasked, data 0x4031");
        // Reserved vector-control bits read 0.
        m.table_write(0x1c, &0xffff_fffeu32.to_le_bytes()).unwrap();
        m.table_read(0x1c, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d), 0);
        assert_eq!(
            m.entry(1),
            Some(MsixEntry {
                message: MsiMessage {
                    address: 0x1_fee0_1000,
                    data: 0x4031
                },
                masked: false
            })
        );
        // Bad sizes, misalignment and offsets past the table are refused.
        for (offset, len) in [(0, 1), (0, 2), (2, 4), (4, 8), (0x20, 4), (0x1c, 8)] {
            let mut b = [0u8; 8];
            assert_eq!(
                m.table_read(offset, &mut b[..len]),
                Err(MsixError::Access { offset, len })
            );
            assert_eq!(
                m.table_write(offset, &b[..len]),
                Err(MsixError::Access { offset, len })
            );
        }
        assert!(m.table_read(u64::MAX - 3, &mut d).is_err());
        assert_eq!(m.entry(2), None);
    }

    #[test]
    fn masked_vectors_pend_and_go_on_unmask() {
        let mut c = space();
        let mut m = Msix::install(&mut c, layout(70)).unwrap();
        // Disabled: nothing recorded.
        assert_eq!(m.signal(3), Signal::Disabled);
        assert!(!m.is_pending(3));
        assert_eq!(m.signal(70), Signal::NoVector);
        set_control(&mut c, &mut m, control::ENABLE);
        assert!(m.enabled());
        // Enabled, entry masked (as it starts): pending.
        assert_eq!(m.signal(3), Signal::Pending);
        assert_eq!(m.signal(66), Signal::Pending);
        assert!(m.is_pending(3) && m.is_pending(66));
        let mut q = [0u8; 8];
        m.pba_read(0, &mut q).unwrap();
        assert_eq!(u64::from_le_bytes(q), 1 << 3);
        m.pba_read(8, &mut q).unwrap();
        assert_eq!(u64::from_le_bytes(q), 1 << 2);
        let mut d = [0u8; 4];
        m.pba_read(4, &mut d).unwrap();
        assert_eq!(d, [0; 4]);
        // The PBA is read-only.
        m.pba_write(0, &[0; 8]).unwrap();
        assert!(m.is_pending(3));
        assert!(m.pba_write(1, &[0; 4]).is_err());
        assert!(m.pba_read(16, &mut q).is_err());
        // Reprogramming a masked, pending entry keeps it pending…
        program(&mut m, 3, 0xfee0_0000, 0x41, true);
        assert!(m.is_pending(3));
        assert_eq!(m.next_deliverable(), None);
        // …and unmasking sends it with the new message, once.
        m.table_write(3 * ENTRY_SIZE + 12, &0u32.to_le_bytes())
            .unwrap();
        assert_eq!(
            m.next_deliverable(),
            Some((
                3,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                }
            ))
        );
        assert!(!m.is_pending(3));
        assert_eq!(m.next_deliverable(), None, "66 is still masked");
        // Unmasked and enabled: sent at once, nothing pends.
        assert_eq!(
            m.signal(3),
            Signal::Send(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        assert!(!m.is_pending(3));
    }

    #[test]
    fn the_function_mask_holds_every_vector() {
        let mut c = space();
        let mut m = Msix::install(&mut c, layout(4)).unwrap();
        program(&mut m, 0, 0xfee0_0000, 0x30, false);
        program(&mut m, 2, 0xfee0_1000, 0x32, false);
        set_control(&mut c, &mut m, control::ENABLE | control::FUNCTION_MASK);
        assert!(m.function_masked());
        assert_eq!(m.signal(2), Signal::Pending);
        assert_eq!(m.signal(0), Signal::Pending);
        assert_eq!(m.next_deliverable(), None);
        // A configuration write elsewhere does not change the state.
        c.write(
            crate::pci::config::reg::COMMAND,
            &command::MEMORY.to_le_bytes(),
        )
        .unwrap();
        m.config_written(&c, crate::pci::config::reg::COMMAND, 2);
        assert!(m.function_masked());
        // A byte write to Message Control's high byte lifts the mask; both go, lowest first.
        let at = u16::from(m.capability()) + 3;
        c.write(at, &[0x80]).unwrap();
        m.config_written(&c, at, 1);
        assert!(!m.function_masked() && m.enabled());
        assert_eq!(
            m.next_deliverable(),
            Some((
                0,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x30
                }
            ))
        );
        assert_eq!(
            m.next_deliverable(),
            Some((
                2,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x32
                }
            ))
        );
        assert_eq!(m.next_deliverable(), None);
        // Disabling leaves pending bits but sends nothing until re-enabled.
        set_control(&mut c, &mut m, control::ENABLE | control::FUNCTION_MASK);
        assert_eq!(m.signal(0), Signal::Pending);
        set_control(&mut c, &mut m, 0);
        assert_eq!(m.next_deliverable(), None);
        assert!(m.is_pending(0));
        set_control(&mut c, &mut m, control::ENABLE);
        assert_eq!(m.next_deliverable().map(|(v, _)| v), Some(0));
    }
}
