//! Where a segment's functions decode their BARs: the platform's side of BAR relocation.
//!
//! A [`BarMap`] holds two buses of [`BarRef`]s, memory and I/O, with the BARs the functions
//! decode now — a BAR is on the map while its kind's command bit is set. The platform calls
//! [`BarMap::update`] for a function whenever a configuration write returns a
//! [`ConfigEffect`](super::config::ConfigEffect) for it (a BAR moved, decoding turned on or
//! off) and when it adds or removes a function; MMIO exits and port exits it does not own
//! itself go through [`BarMap::mmio_read`] and friends to the function's
//! [`PciDevice::bar_read`] and `bar_write`.
//!
//! Updates allocate nothing (the buses are sized at construction), so they can run on the exit
//! path that took the configuration write. A BAR that overlaps another one on the map is left
//! off and reported ([`BarMapError::Conflict`]): a guest that programs two BARs over each other
//! gets neither answering at the overlap, rather than one chosen at random. The map does not know
//! where RAM is: the platform only consults it for addresses that exit, so a BAR programmed over
//! RAM is never reached.

use super::bus::PciDevice;
use super::config::{BarKind, BAR_COUNT};
use super::host::PciSegment;
use super::Bdf;
use crate::bus::{AccessError, Bus, BusError, BusRange};

/// One BAR of one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRef {
    /// The function.
    pub bdf: Bdf,
    /// The BAR's index.
    pub index: u8,
}

/// Why a decoded BAR is not on the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarMapError {
    /// It overlaps a BAR already there.
    Conflict {
        /// The BAR left off.
        bar: BarRef,
        /// The range it collides with.
        with: BusRange,
    },
    /// The map holds as many BARs as it was built for.
    Full(BarRef),
    /// Its range runs past the top of the address space.
    Range(BarRef),
}

/// The decoded BARs of a segment, by address.
#[derive(Debug)]
pub struct BarMap {
    memory: Bus<BarRef>,
    io: Bus<BarRef>,
}

impl BarMap {
    /// A map for at most `memory` memory BARs and `io` I/O BARs.
    pub fn with_capacity(memory: usize, io: usize) -> Self {
        Self {
            memory: Bus::with_capacity(memory),
            io: Bus::with_capacity(io),
        }
    }

    /// The memory BARs.
    pub fn memory(&self) -> &Bus<BarRef> {
        &self.memory
    }

    /// The I/O BARs.
    pub fn io(&self) -> &Bus<BarRef> {
        &self.io
    }

    /// Maps `bdf`'s BARs as its configuration space says now: its old entries go, each BAR
    /// whose decode bit is set goes on. Every BAR that can be mapped is; the first one that
    /// could not be is returned.
    pub fn update(&mut self, segment: &mut PciSegment, bdf: Bdf) -> Result<(), BarMapError> {
        self.memory.retain(|_, b| b.bdf != bdf);
        self.io.retain(|_, b| b.bdf != bdf);
        let Some(function) = segment.function_mut(bdf) else {
            return Ok(());
        };
        let config = function.config();
        let mut result = Ok(());
        for index in 0..BAR_COUNT {
            let Some(region) = config.decoded_bar(index) else {
                continue;
            };
            let bar = BarRef { bdf, index };
            let bus = match region.kind {
                BarKind::Io => &mut self.io,
                _ => &mut self.memory,
            };
            let outcome = BusRange::new(region.base, region.size)
                .and_then(|range| bus.insert(range, bar))
                .map_err(|e| match e {
                    BusError::Overlap { existing } => BarMapError::Conflict {
                        bar,
                        with: existing,
                    },
                    BusError::Full => BarMapError::Full(bar),
                    BusError::EmptyRange | BusError::RangeOverflow => BarMapError::Range(bar),
                });
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }

    /// The function and BAR behind an access, and the offset into the BAR.
    fn target(bus: &Bus<BarRef>, addr: u64, len: usize) -> Result<(BarRef, u64), AccessError> {
        bus.resolve(addr, len).map(|(b, offset)| (*b, offset))
    }

    /// Runs `f` on the function a BAR belongs to (absent functions are unmapped by `update`,
    /// but a stale map must not reach a missing function).
    fn with_function(
        segment: &mut PciSegment,
        bar: BarRef,
        f: impl FnOnce(&mut dyn PciDevice),
    ) -> Result<(), AccessError> {
        let function = segment.function_mut(bar.bdf).ok_or(AccessError::Unmapped)?;
        f(function);
        Ok(())
    }

    /// A memory read at `addr` by the function whose BAR decodes it.
    pub fn mmio_read(
        &self,
        segment: &mut PciSegment,
        addr: u64,
        data: &mut [u8],
    ) -> Result<(), AccessError> {
        let (bar, offset) = Self::target(&self.memory, addr, data.len())?;
        Self::with_function(segment, bar, |f| f.bar_read(bar.index, offset, data))
    }

    /// A memory write at `addr` to the function whose BAR decodes it.
    pub fn mmio_write(
        &self,
        segment: &mut PciSegment,
        addr: u64,
        data: &[u8],
    ) -> Result<(), AccessError> {
        let (bar, offset) = Self::target(&self.memory, addr, data.len())?;
        Self::with_function(segment, bar, |f| f.bar_write(bar.index, offset, data))
    }

    /// An `in` at `port` by the function whose I/O BAR decodes it.
    pub fn io_read(
        &self,
        segment: &mut PciSegment,
        port: u16,
        data: &mut [u8],
    ) -> Result<(), AccessError> {
        let (bar, offset) = Self::target(&self.io, port.into(), data.len())?;
        Self::with_function(segment, bar, |f| f.bar_read(bar.index, offset, data))
    }

    /// An `out` at `port` to the function whose I/O BAR decodes it.
    pub fn io_write(
        &self,
        segment: &mut PciSegment,
        port: u16,
        data: &[u8],
    ) -> Result<(), AccessError> {
        let (bar, offset) = Self::target(&self.io, port.into(), data.len())?;
        Self::with_function(segment, bar, |f| f.bar_write(bar.index, offset, data))
    }
}

#[cfg(test)]
mod tests {
    use super::super::bus::tests::Emulated;
    use super::super::config::{command, reg, ConfigEffect};
    use super::super::host::Ecam;
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    fn bdf(d: u8) -> Bdf {
        Bdf::new(0, d, 0).unwrap()
    }

    fn segment() -> PciSegment {
        let mut s = PciSegment::new(Ecam::new(0, 1).unwrap());
        s.insert(bdf(1), Box::new(Emulated::new(1))).unwrap();
        s.insert(bdf(2), Box::new(Emulated::new(2))).unwrap();
        s
    }

    /// Programs `d`'s BARs as an OS does: memory BAR 0 (64-bit) at `mem`, I/O BAR 2 at `io`,
    /// then `cmd` in the command register; returns the effects the writes reported.
    fn program(s: &mut PciSegment, d: u8, mem: u64, io: u16, cmd: u16) -> Vec<ConfigEffect> {
        let b = bdf(d);
        [
            (0x10, (mem as u32).to_le_bytes()),
            (0x14, ((mem >> 32) as u32).to_le_bytes()),
            (0x18, u32::from(io).to_le_bytes()),
        ]
        .into_iter()
        .chain([(reg::COMMAND, u32::from(cmd).to_le_bytes())])
        .filter_map(|(offset, v)| {
            let len = if offset == reg::COMMAND { 2 } else { 4 };
            s.config_write(b, offset, &v[..len])
        })
        .collect()
    }

    fn bars(bus: &Bus<BarRef>) -> Vec<(u64, u64, u8, u8)> {
        bus.ranges()
            .map(|r| {
                let b = bus.get(r.base()).unwrap().0;
                (r.base(), r.len(), b.bdf.devfn.device(), b.index)
            })
            .collect()
    }

    #[test]
    fn decoded_bars_are_mapped_and_follow_moves() {
        let mut s = segment();
        let mut map = BarMap::with_capacity(4, 4);
        let effects = program(&mut s, 1, 0xfe00_0000, 0xc000, command::MEMORY);
        assert_eq!(effects.len(), 3, "two moves and the command change");
        map.update(&mut s, bdf(1)).unwrap();
        assert_eq!(bars(map.memory()), [(0xfe00_0000, 0x4000, 1, 0)]);
        assert!(bars(map.io()).is_empty(), "I/O decode is off");
        // Turning I/O decode on maps the I/O BAR.
        s.config_write(
            bdf(1),
            reg::COMMAND,
            &(command::MEMORY | command::IO).to_le_bytes(),
        );
        map.update(&mut s, bdf(1)).unwrap();
        assert_eq!(bars(map.io()), [(0xc000, 16, 1, 2)]);
        // Accesses reach the function at the BAR's offset.
        map.mmio_write(&mut s, 0xfe00_0000, &9u32.to_le_bytes())
            .unwrap();
        let mut d = [0u8; 4];
        map.mmio_read(&mut s, 0xfe00_0000, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d), 9);
        map.io_write(&mut s, 0xc003, &[0x20]).unwrap();
        let mut b = [0u8; 2];
        map.io_read(&mut s, 0xc004, &mut b).unwrap();
        assert_eq!(b, [0x24, 0x25]);
        assert_eq!(
            map.io_read(&mut s, 0xc00f, &mut b),
            Err(AccessError::Straddles {
                range: BusRange::new(0xc000, 16).unwrap()
            })
        );
        assert_eq!(
            map.mmio_read(&mut s, 0xfe00_4000, &mut d),
            Err(AccessError::Unmapped)
        );
        // Moving the BAR moves the mapping; the old address no longer answers.
        let moved = s.config_write(bdf(1), 0x10, &0xfd00_0000u32.to_le_bytes());
        assert!(matches!(
            moved,
            Some(ConfigEffect::BarMoved {
                from: 0xfe00_0000,
                to: 0xfd00_0000,
                ..
            })
        ));
        map.update(&mut s, bdf(1)).unwrap();
        assert_eq!(bars(map.memory()), [(0xfd00_0000, 0x4000, 1, 0)]);
        assert_eq!(
            map.mmio_read(&mut s, 0xfe00_0000, &mut d),
            Err(AccessError::Unmapped)
        );
        map.mmio_read(&mut s, 0xfd00_0000, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d), 9);
        // Decoding off: unmapped.
        s.config_write(bdf(1), reg::COMMAND, &[0, 0]);
        map.update(&mut s, bdf(1)).unwrap();
        assert!(bars(map.memory()).is_empty() && bars(map.io()).is_empty());
    }

    #[test]
    fn conflicts_full_maps_and_removed_functions() {
        let mut s = segment();
        let mut map = BarMap::with_capacity(1, 4);
        program(
            &mut s,
            1,
            0xfe00_0000,
            0xc000,
            command::MEMORY | command::IO,
        );
        map.update(&mut s, bdf(1)).unwrap();
        // Function 2's memory BAR over function 1's: left off and reported; its I/O BAR is
        // mapped all the same.
        program(
            &mut s,
            2,
            0xfe00_2000,
            0xc010,
            command::MEMORY | command::IO,
        );
        assert_eq!(
            map.update(&mut s, bdf(2)),
            Err(BarMapError::Conflict {
                bar: BarRef {
                    bdf: bdf(2),
                    index: 0
                },
                with: BusRange::new(0xfe00_0000, 0x4000).unwrap()
            })
        );
        assert_eq!(bars(map.io()), [(0xc000, 16, 1, 2), (0xc010, 16, 2, 2)]);
        // Elsewhere, the map is full (built for one memory BAR).
        program(
            &mut s,
            2,
            0xfe01_0000,
            0xc010,
            command::MEMORY | command::IO,
        );
        assert_eq!(
            map.update(&mut s, bdf(2)),
            Err(BarMapError::Full(BarRef {
                bdf: bdf(2),
                index: 0
            }))
        );
        // Removing function 1 and updating frees its slots; function 2 then fits.
        s.bus_mut(0).unwrap().remove(bdf(1).devfn);
        map.update(&mut s, bdf(1)).unwrap();
        map.update(&mut s, bdf(2)).unwrap();
        assert_eq!(bars(map.memory()), [(0xfe01_0000, 0x4000, 2, 0)]);
        assert_eq!(bars(map.io()), [(0xc010, 16, 2, 2)]);
        // A stale map entry whose function is gone answers nothing.
        s.bus_mut(0).unwrap().remove(bdf(2).devfn);
        let mut d = [0u8; 4];
        assert_eq!(
            map.mmio_read(&mut s, 0xfe01_0000, &mut d),
            Err(AccessError::Unmapped)
        );
        assert_eq!(
            map.io_write(&mut s, 0xc010, &[1]),
            Err(AccessError::Unmapped)
        );
    }

    #[test]
    fn a_bar_at_the_top_of_the_space() {
        let mut s = segment();
        let mut map = BarMap::with_capacity(2, 2);
        program(
            &mut s,
            1,
            0xffff_ffff_ffff_c000,
            0xfff0,
            command::MEMORY | command::IO,
        );
        map.update(&mut s, bdf(1)).unwrap();
        assert_eq!(bars(map.memory()), [(0xffff_ffff_ffff_c000, 0x4000, 1, 0)]);
        assert_eq!(bars(map.io()), [(0xfff0, 16, 1, 2)]);
        let mut d = [0u8; 8];
        assert!(matches!(
            map.mmio_read(&mut s, u64::MAX - 3, &mut d),
            Err(AccessError::Straddles { .. })
        ));
    }
}
