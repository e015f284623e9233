//! The port and MMIO buses: which device answers an address.
//!
//! A [`Bus`] maps non-overlapping [`BusRange`]s to devices. It is built when a platform is
//! assembled and then only looked up: the backing vector is allocated once, at
//! [`Bus::with_capacity`], and [`Bus::insert`] refuses to grow it, so a lookup on an exit path
//! never allocates (a lookup is a binary search over the sorted ranges).
//!
//! The bus is generic over what it stores: a `Box<dyn BusDevice>` when the bus should call the
//! device itself ([`Bus::read`], [`Bus::write`]), or a small `Copy` handle (an enum naming the
//! platform's devices) when the platform needs to wrap the access with its own context — a
//! timestamp, an interrupt line to raise afterwards — and dispatches on the handle.
//!
//! Accesses are checked before a device sees them: the size must be 1, 2, 4 or 8 bytes
//! ([`AccessError::Size`]) and the whole access must lie inside one range
//! ([`AccessError::Straddles`]); what an error means to the guest (all ones on a read, a dropped
//! write, a fault) is the platform's choice, made explicitly where it handles the error.

use alloc::boxed::Box;
use alloc::vec::Vec;

/// A range of bus addresses: `len` bytes (or ports) from `base`, never empty and never wrapping
/// past the end of the 64-bit address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusRange {
    base: u64,
    len: u64,
}

impl BusRange {
    /// The range of `len` addresses from `base`.
    pub fn new(base: u64, len: u64) -> Result<Self, BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange);
        }
        // The last address must exist; a range may end exactly at the top of the space.
        base.checked_add(len - 1).ok_or(BusError::RangeOverflow)?;
        Ok(Self { base, len })
    }

    /// The first address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// How many addresses.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true (ranges are never empty); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last address (inclusive, so a range at the top of the space has one).
    pub fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }

    /// Whether `addr` is inside.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr <= self.last()
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

/// Why a range could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// A range of length 0.
    EmptyRange,
    /// A range whose end is past the top of the address space.
    RangeOverflow,
    /// The range shares addresses with one already on the bus.
    Overlap {
        /// The range already there.
        existing: BusRange,
    },
    /// The bus holds as many ranges as it was built for (it does not grow after construction).
    Full,
}

/// Why an access reached no device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// No range contains any address of the access.
    Unmapped,
    /// The access is partly inside `range`: it runs past its end, or starts before it.
    Straddles {
        /// The range the access touches.
        range: BusRange,
    },
    /// The access is not 1, 2, 4 or 8 bytes long.
    Size(usize),
}

/// A device on a bus. `offset` is relative to the base of the range the device was inserted
/// at; `data` is the access, little-endian, 1, 2, 4 or 8 bytes long, entirely inside the range.
/// A device that registers under several ranges can tell them apart by a handle it keeps, or
/// should be inserted as separate devices.
pub trait BusDevice {
    /// Fills `data` with what the device answers at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Takes `data` written at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

impl<T: BusDevice + ?Sized> BusDevice for Box<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        (**self).read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        (**self).write(offset, data)
    }
}

/// Whether `len` is an access size a bus passes on.
fn valid_size(len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
}

/// Ranges and their devices, sorted by base, non-overlapping, at most `capacity` of them.
#[derive(Debug)]
pub struct Bus<D> {
    entries: Vec<(BusRange, D)>,
}

impl<D> Bus<D> {
    /// An empty bus for at most `capacity` ranges (the only allocation the bus makes).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Puts `device` at `range`; refuses a range that overlaps one already there, and refuses
    /// to grow the bus past its capacity.
    pub fn insert(&mut self, range: BusRange, device: D) -> Result<(), BusError> {
        let at = self.entries.partition_point(|(r, _)| r.base < range.base);
        // Sorted and non-overlapping, so only the neighbours can overlap the new range.
        for i in [at.checked_sub(1), Some(at)].into_iter().flatten() {
            if let Some((existing, _)) = self.entries.get(i) {
                if existing.overlaps(&range) {
                    return Err(BusError::Overlap {
                        existing: *existing,
                    });
                }
            }
        }
        if self.entries.len() == self.entries.capacity() {
            return Err(BusError::Full);
        }
        self.entries.insert(at, (range, device));
        Ok(())
    }

    /// Takes away the range that starts at `base` (a BAR that moves is removed and inserted
    /// again at its new base).
    pub fn remove(&mut self, base: u64) -> Option<(BusRange, D)> {
        let i = self
            .entries
            .binary_search_by_key(&base, |(r, _)| r.base)
            .ok()?;
        Some(self.entries.remove(i))
    }

    /// Keeps only the ranges `keep` accepts (allocation-free: a function's BARs are dropped this
    /// way before they are mapped again).
    pub fn retain(&mut self, mut keep: impl FnMut(&BusRange, &D) -> bool) {
        self.entries.retain(|(r, d)| keep(r, d));
    }

    /// The index of the range containing `addr`.
    fn index(&self, addr: u64) -> Option<usize> {
        let i = self.entries.partition_point(|(r, _)| r.base <= addr);
        let i = i.checked_sub(1)?;
        self.entries[i].0.contains(addr).then_some(i)
    }

    /// Checks an access of `len` bytes at `addr`: the index of its range and its offset.
    fn check(&self, addr: u64, len: usize) -> Result<(usize, u64), AccessError> {
        if !valid_size(len) {
            return Err(AccessError::Size(len));
        }
        // An access running off the top of the space ends at the top (and straddles there).
        let last = addr.saturating_add(len as u64 - 1);
        let Some(i) = self.index(addr) else {
            // Starting outside every range but ending inside one still touches that device.
            return match self.index(last) {
                Some(j) => Err(AccessError::Straddles {
                    range: self.entries[j].0,
                }),
                None => Err(AccessError::Unmapped),
            };
        };
        let range = self.entries[i].0;
        if last <= range.last() && addr.checked_add(len as u64 - 1).is_some() {
            Ok((i, addr - range.base))
        } else {
            Err(AccessError::Straddles { range })
        }
    }

    /// The device whose range contains `addr`, and the offset of `addr` in that range.
    pub fn get(&self, addr: u64) -> Option<(&D, u64)> {
        let i = self.index(addr)?;
        let (r, d) = &self.entries[i];
        Some((d, addr - r.base))
    }

    /// The device an access of `len` bytes at `addr` reaches, and its offset; the access must
    /// have a valid size and lie entirely inside one range.
    pub fn resolve(&self, addr: u64, len: usize) -> Result<(&D, u64), AccessError> {
        let (i, offset) = self.check(addr, len)?;
        Ok((&self.entries[i].1, offset))
    }

    /// [`Bus::resolve`], with the device mutable.
    pub fn resolve_mut(&mut self, addr: u64, len: usize) -> Result<(&mut D, u64), AccessError> {
        let (i, offset) = self.check(addr, len)?;
        Ok((&mut self.entries[i].1, offset))
    }

    /// The ranges, lowest first.
    pub fn ranges(&self) -> impl Iterator<Item = BusRange> + '_ {
        self.entries.iter().map(|(r, _)| *r)
    }
}

impl<D: BusDevice> Bus<D> {
    /// Reads `data.len()` bytes at `addr` from the device there. On an error `data` is left
    /// as it was.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) -> Result<(), AccessError> {
        let (d, offset) = self.resolve_mut(addr, data.len())?;
        d.read(offset, data);
        Ok(())
    }

    /// Writes `data` at `addr` to the device there.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), AccessError> {
        let (d, offset) = self.resolve_mut(addr, data.len())?;
        d.write(offset, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::cell::RefCell;
    use std::rc::Rc;

    fn r(base: u64, len: u64) -> BusRange {
        BusRange::new(base, len).unwrap()
    }

    /// The writes a probe saw: (offset, bytes).
    type Log = Rc<RefCell<Vec<(u64, Vec<u8>)>>>;

    /// A device that remembers its accesses and answers reads with its offset's low byte
    /// repeated plus a tag, so a test can tell which device and offset answered.
    struct Probe {
        tag: u8,
        log: Log,
    }
    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.tag.wrapping_add(offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.log.borrow_mut().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn ranges_are_checked() {
        assert_eq!(BusRange::new(5, 0), Err(BusError::EmptyRange));
        assert_eq!(BusRange::new(u64::MAX, 2), Err(BusError::RangeOverflow));
        let top = BusRange::new(u64::MAX, 1).unwrap();
        assert_eq!(top.last(), u64::MAX);
        assert!(top.contains(u64::MAX));
        let whole = BusRange::new(0, u64::MAX).unwrap();
        assert_eq!(whole.last(), u64::MAX - 1);
        assert!(r(0x10, 0x10).overlaps(&r(0x1f, 1)));
        assert!(!r(0x10, 0x10).overlaps(&r(0x20, 1)));
        assert!(!r(0x10, 0x10).overlaps(&r(0x0, 0x10)));
        assert!(r(0x10, 0x10).overlaps(&r(0x0, 0x11)));
    }

    #[test]
    fn insert_refuses_overlaps_and_growth() {
        let mut bus = Bus::with_capacity(3);
        bus.insert(r(0x40, 4), 'p').unwrap();
        bus.insert(r(0x3f8, 8), 'u').unwrap();
        // Overlapping from below, from above, containing, contained: each names the range hit.
        for bad in [
            r(0x3f0, 9),
            r(0x3ff, 1),
            r(0x3f0, 0x20),
            r(0x3fa, 2),
            r(0x43, 1),
        ] {
            let err = bus.insert(bad, 'x').unwrap_err();
            assert!(
                matches!(err, BusError::Overlap { existing } if existing.overlaps(&bad)),
                "{bad:?}: {err:?}"
            );
        }
        // Adjacent ranges are fine.
        bus.insert(r(0x44, 0x3b4), 'a').unwrap();
        assert_eq!(bus.insert(r(0x1000, 1), 'z'), Err(BusError::Full));
        let bases: Vec<u64> = bus.ranges().map(|r| r.base()).collect();
        assert_eq!(bases, vec![0x40, 0x44, 0x3f8]);
        // Removing frees a slot; a range can then move.
        assert_eq!(bus.remove(0x44), Some((r(0x44, 0x3b4), 'a')));
        assert_eq!(bus.remove(0x44), None);
        bus.insert(r(0x1000, 1), 'z').unwrap();
        // Retaining frees slots without growing.
        bus.retain(|_, &d| d != 'u');
        assert_eq!(bus.get(0x3f8), None);
        assert_eq!(bus.ranges().count(), 2);
        bus.insert(r(0x3f8, 8), 'u').unwrap();
        assert_eq!(bus.insert(r(0x2000, 1), 'y'), Err(BusError::Full));
    }

    #[test]
    fn lookups_give_device_and_offset() {
        let mut bus = Bus::with_capacity(4);
        bus.insert(r(0x70, 2), 1).unwrap();
        bus.insert(r(0x40, 4), 2).unwrap();
        bus.insert(r(0x61, 1), 3).unwrap();
        assert_eq!(bus.get(0x40), Some((&2, 0)));
        assert_eq!(bus.get(0x43), Some((&2, 3)));
        assert_eq!(bus.get(0x44), None);
        assert_eq!(bus.get(0x3f), None);
        assert_eq!(bus.get(0x61), Some((&3, 0)));
        assert_eq!(bus.get(0x71), Some((&1, 1)));
        assert_eq!(bus.get(0x72), None);
        assert_eq!(bus.get(0), None);
        assert_eq!(bus.get(u64::MAX), None);
        assert_eq!(bus.resolve(0x42, 2), Ok((&2, 2)));
        *bus.resolve_mut(0x70, 1).unwrap().0 = 9;
        assert_eq!(bus.get(0x71), Some((&9, 1)));
    }

    #[test]
    fn sizes_and_straddles_are_refused() {
        let mut bus = Bus::with_capacity(2);
        bus.insert(r(0xcf8, 8), ()).unwrap();
        bus.insert(r(u64::MAX - 3, 4), ()).unwrap();
        for len in [0, 3, 5, 6, 7, 9, 16] {
            assert_eq!(bus.resolve(0xcf8, len), Err(AccessError::Size(len)));
        }
        for len in [1, 2, 4, 8] {
            assert!(bus.resolve(0xcf8, len).is_ok());
        }
        // Up to the last port fits; one more byte runs over.
        assert_eq!(bus.resolve(0xcfc, 4), Ok((&(), 4)));
        assert_eq!(
            bus.resolve(0xcfd, 4),
            Err(AccessError::Straddles { range: r(0xcf8, 8) })
        );
        assert_eq!(
            bus.resolve(0xcff, 2).unwrap_err(),
            AccessError::Straddles { range: r(0xcf8, 8) }
        );
        assert_eq!(bus.resolve(0xd00, 1), Err(AccessError::Unmapped));
        assert_eq!(
            bus.resolve(0xcf0, 8),
            Err(AccessError::Unmapped),
            "ends just before"
        );
        // Starting before a range and ending in it touches it.
        assert_eq!(
            bus.resolve(0xcf7, 2),
            Err(AccessError::Straddles { range: r(0xcf8, 8) })
        );
        assert_eq!(
            bus.resolve(0xcf1, 8),
            Err(AccessError::Straddles { range: r(0xcf8, 8) })
        );
        // At the top of the space an access that would wrap straddles rather than overflowing.
        assert_eq!(bus.resolve(u64::MAX - 3, 4), Ok((&(), 0)));
        assert!(matches!(
            bus.resolve(u64::MAX - 1, 4),
            Err(AccessError::Straddles { .. })
        ));
    }

    #[test]
    fn device_buses_dispatch() {
        let (log1, log2) = (Rc::default(), Rc::default());
        let mut bus: Bus<Box<dyn BusDevice>> = Bus::with_capacity(2);
        bus.insert(
            r(0x1000, 0x100),
            Box::new(Probe {
                tag: 0x10,
                log: Rc::clone(&log1),
            }),
        )
        .unwrap();
        bus.insert(
            r(0x2000, 0x10),
            Box::new(Probe {
                tag: 0x80,
                log: Rc::clone(&log2),
            }),
        )
        .unwrap();
        let mut b = [0u8; 4];
        bus.read(0x1004, &mut b).unwrap();
        assert_eq!(b, [0x14, 0x15, 0x16, 0x17]);
        bus.read(0x2002, &mut b[..2]).unwrap();
        assert_eq!(b[..2], [0x82, 0x83]);
        // Failed accesses leave the buffer and reach no device.
        let mut c = [0xaa; 4];
        assert_eq!(bus.read(0x3000, &mut c), Err(AccessError::Unmapped));
        assert_eq!(c, [0xaa; 4]);
        assert!(bus.read(0x200e, &mut c).is_err());
        assert_eq!(c, [0xaa; 4]);
        bus.write(0x10ff, &[7]).unwrap();
        bus.write(0x2008, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert!(bus.write(0x10ff, &[7, 8]).is_err());
        assert!(bus.write(0x1000, &[1, 2, 3]).is_err());
        assert_eq!(*log1.borrow(), vec![(0xff, vec![7])]);
        assert_eq!(*log2.borrow(), vec![(8, vec![1, 2, 3, 4, 5, 6, 7, 8])]);
    }
}
