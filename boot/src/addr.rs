//! Address newtypes shared by every atoll crate.
//!
//! A host-physical address, a guest-physical address and a guest-virtual address are different
//! things even when their bits are equal (identity-mapped partitions make that common), so each
//! has its own type and converting between them is always explicit.

use core::fmt;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The address `raw`.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw bits.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }

            /// Rounds up to a multiple of `align` (a power of two); `None` on overflow.
            pub const fn checked_align_up(self, align: u64) -> Option<Self> {
                match self.0.checked_add(align - 1) {
                    Some(v) => Some(Self(v & !(align - 1))),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }

            /// `self + bytes`, `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// A host-physical address: what the memory controller sees.
    HostPhysAddr
);
address_type!(
    /// A guest-physical address: what a partition's second-stage tables translate.
    GuestPhysAddr
);
address_type!(
    /// A guest-virtual address: what a partition's own page tables translate.
    GuestVirtAddr
);

/// A half-open range `[start, end)` of host-physical memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PhysRange {
    /// First byte.
    pub start: HostPhysAddr,
    /// One past the last byte.
    pub end: HostPhysAddr,
}

impl PhysRange {
    /// `[start, end)`; an inverted range is clamped to empty.
    pub const fn new(start: HostPhysAddr, end: HostPhysAddr) -> Self {
        if end.as_u64() < start.as_u64() {
            Self { start, end: start }
        } else {
            Self { start, end }
        }
    }

    /// `len` bytes from `start`, saturating at the top of the address space.
    pub const fn from_len(start: HostPhysAddr, len: u64) -> Self {
        Self {
            start,
            end: HostPhysAddr::new(start.as_u64().saturating_add(len)),
        }
    }

    /// Its size in bytes.
    pub const fn len(&self) -> u64 {
        self.end.as_u64() - self.start.as_u64()
    }

    /// Whether it holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the two ranges share a byte.
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.start.as_u64() < other.end.as_u64() && other.start.as_u64() < self.end.as_u64()
    }

    /// Whether `addr` lies inside.
    pub const fn contains(&self, addr: HostPhysAddr) -> bool {
        self.start.as_u64() <= addr.as_u64() && addr.as_u64() < self.end.as_u64()
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start.as_u64(), self.end.as_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        let a = HostPhysAddr::new(0x1234);
        assert_eq!(a.align_down(0x1000), HostPhysAddr::new(0x1000));
        assert_eq!(a.checked_align_up(0x1000), Some(HostPhysAddr::new(0x2000)));
        assert_eq!(HostPhysAddr::new(u64::MAX).checked_align_up(0x1000), None);
        assert!(HostPhysAddr::new(0x20_0000).is_aligned(0x20_0000));
    }

    #[test]
    fn ranges() {
        let r = PhysRange::from_len(HostPhysAddr::new(0x1000), 0x1000);
        assert_eq!(r.len(), 0x1000);
        assert!(r.contains(HostPhysAddr::new(0x1fff)));
        assert!(!r.contains(HostPhysAddr::new(0x2000)));
        assert!(!r.overlaps(&PhysRange::from_len(HostPhysAddr::new(0x2000), 1)));
        assert!(r.overlaps(&PhysRange::from_len(HostPhysAddr::new(0x1fff), 1)));
        assert!(PhysRange::new(HostPhysAddr::new(5), HostPhysAddr::new(1)).is_empty());
        assert_eq!(format!("{}", GuestPhysAddr::new(0x10)), "0x10");
    }
}
