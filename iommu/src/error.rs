//! The crate's error type.

use crate::context::{DomainId, SourceId};
use crate::qi::QueueFault;
use crate::regs::GlobalCommand;
use crate::DmarError;
use boot::HostPhysAddr;
use core::fmt;

/// Why an IOMMU operation was refused or failed. A refused table change leaves the tables as
/// they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The DMAR table could not be read.
    Dmar(DmarError),
    /// ECAP.QI clear: the unit has no queued invalidation, which atoll requires.
    NoQueuedInvalidation,
    /// CAP.SAGAW lacks bit 2: no 4-level (48-bit) second-level tables.
    NoFourLevelTables {
        /// SAGAW as read.
        sagaw: u8,
    },
    /// CAP.MGAW is narrower than the addresses atoll must map for DMA.
    AddressWidthTooSmall {
        /// MGAW in bits.
        mgaw: u8,
        /// Bits needed.
        needed: u8,
    },
    /// A register a capability places (fault records, IOTLB) lies outside the register window
    /// the DMAR declares.
    RegisterOutsideWindow {
        /// Which registers.
        what: &'static str,
        /// One past their last byte.
        end: u64,
        /// Bytes of the window.
        window: u64,
    },
    /// ECAP.IR clear: no interrupt remapping.
    NoInterruptRemapping,
    /// x2APIC-mode (EIME) remapping asked of a unit without ECAP.EIM.
    NoExtendedInterruptMode,
    /// Interrupt remapping enabled before a table was set.
    NoInterruptTable,
    /// Interrupt remapping table size field S above 15.
    BadTableSize {
        /// S as given.
        size_log2: u8,
    },
    /// The domain id is beyond what CAP.ND allows.
    DomainOutOfRange {
        /// The id.
        domain: DomainId,
        /// Ids supported.
        limit: u32,
    },
    /// Domain id 0 under caching mode (CAP.CM), where it is reserved.
    DomainReserved {
        /// The id.
        domain: DomainId,
    },
    /// The device is in another domain; block it (and flush) first.
    DeviceAssigned {
        /// The device.
        source: SourceId,
        /// Its current domain.
        domain: DomainId,
    },
    /// The frame source is out of frames.
    OutOfFrames,
    /// A frame or table pointer that is not 4 KiB aligned below 2^52.
    BadFrame {
        /// The address.
        frame: HostPhysAddr,
    },
    /// GSTS never reflected a global command (§10.4.4).
    CommandTimeout {
        /// The command bit.
        command: GlobalCommand,
        /// Whether it was being set.
        set: bool,
    },
    /// The wait descriptor's status write never came.
    QueueTimeout {
        /// IQH as last read.
        head: u16,
        /// The tail software wrote.
        tail: u16,
    },
    /// The ring has no room for a batch (the unit is behind after a time-out).
    QueueFull {
        /// IQH.
        head: u16,
        /// Tail.
        tail: u16,
    },
    /// The unit reported an invalidation error.
    QueueFault {
        /// IQE, ITE or ICE.
        fault: QueueFault,
        /// IQH when it was seen (for IQE, the refused descriptor).
        head: u16,
        /// IQERCD (§10.4.30) as read.
        code: u64,
    },
    /// An invalidation was asked of a unit whose queue is not enabled.
    QueueDisabled,
}

impl From<DmarError> for Error {
    fn from(e: DmarError) -> Self {
        Self::Dmar(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Dmar(e) => write!(f, "{e}"),
            Self::NoQueuedInvalidation => {
                f.write_str("remapping unit lacks queued invalidation (ECAP.QI clear)")
            }
            Self::NoFourLevelTables { sagaw } => write!(
                f,
                "remapping unit lacks 4-level second-level tables (CAP.SAGAW {sagaw:#b} has no \
                 bit 2)"
            ),
            Self::AddressWidthTooSmall { mgaw, needed } => write!(
                f,
                "remapping unit translates {mgaw}-bit DMA addresses (CAP.MGAW), {needed} needed"
            ),
            Self::RegisterOutsideWindow { what, end, window } => write!(
                f,
                "remapping unit places its {what} registers up to {end:#x}, beyond its \
                 {window:#x}-byte register window"
            ),
            Self::NoInterruptRemapping => {
                f.write_str("remapping unit lacks interrupt remapping (ECAP.IR clear)")
            }
            Self::NoExtendedInterruptMode => {
                f.write_str("remapping unit lacks x2APIC interrupt remapping (ECAP.EIM clear)")
            }
            Self::NoInterruptTable => {
                f.write_str("interrupt remapping enabled before its table was set (no IRTPS)")
            }
            Self::BadTableSize { size_log2 } => write!(
                f,
                "interrupt remapping table size field {size_log2} is above 15"
            ),
            Self::DomainOutOfRange { domain, limit } => {
                write!(
                    f,
                    "{domain} is beyond the unit's {limit} domain ids (CAP.ND)"
                )
            }
            Self::DomainReserved { domain } => {
                write!(f, "{domain} is reserved under caching mode (CAP.CM)")
            }
            Self::DeviceAssigned { source, domain } => write!(
                f,
                "device {source} is in {domain}; block it and invalidate before reassigning"
            ),
            Self::OutOfFrames => f.write_str("out of frames for IOMMU tables"),
            Self::BadFrame { frame } => write!(
                f,
                "{frame} is not a 4 KiB-aligned address below 2^52 for an IOMMU table"
            ),
            Self::CommandTimeout { command, set } => write!(
                f,
                "remapping unit did not {} {command:?} in GSTS",
                if set { "set" } else { "clear" }
            ),
            Self::QueueTimeout { head, tail } => write!(
                f,
                "invalidation wait timed out (queue head {head}, tail {tail})"
            ),
            Self::QueueFull { head, tail } => {
                write!(f, "invalidation queue full (head {head}, tail {tail})")
            }
            Self::QueueFault { fault, head, code } => write!(
                f,
                "invalidation failed: {fault} at queue slot {head} (IQERCD {code:#x})"
            ),
            Self::QueueDisabled => f.write_str("invalidation queue is not enabled"),
        }
    }
}
