//! The ACPI tables the host's Linux (the root partition) sees: the firmware's own tables, minus
//! the DMAR, with a MADT that lists only the host's cores.
//!
//! The boot builds it for the root partition (issue 10, item 3). [`build`] takes the tables the firmware's
//! root table (XSDT, or RSDT for ACPI 1.0) lists, each with its physical address, and lays out
//! a small new image at a caller-chosen physical address:
//!
//! | table | what it is |
//! | --- | --- |
//! | RSDP | revision 2, both checksums, RSDT address 0, XSDT address = the new XSDT |
//! | XSDT | revision 1: every firmware table in firmware order, except the DMAR; the MADT entry points at the new MADT |
//! | MADT (`APIC`) | the firmware's MADT rewritten (below) |
//!
//! # What stays where the firmware put it
//!
//! Every table other than the MADT is *referenced*, not copied: the new XSDT holds the
//! firmware's own addresses. Those tables live in memory the firmware reported as ACPI data,
//! ACPI NVS or reserved, which the host's second-stage tables map 1:1 and which atoll never
//! allocates, so the host reads them where they are. In particular the FADT is untouched, so
//! its DSDT/X_DSDT and FIRMWARE_CTRL/X_FIRMWARE_CTRL pointers stay valid without relocation —
//! and the FACS must not move anyway: the firmware's SMM code and the OS share its global lock
//! and waking vector at the address the firmware chose (ACPI 6.5 §5.2.10). That is why the input
//! needs no DSDT or FACS: nothing here rewrites them or anything that points at them.
//!
//! The DMAR (VT-d, Intel VT-d spec §8.1) is left out because the IOMMU is atoll's: a host that
//! saw it would try to program the remapping units itself.
//!
//! No RSDT is made (its address in the RSDP is 0): an ACPI 2.0+ OS uses the XSDT, and Linux
//! takes the XSDT whenever the RSDP's revision is 2 or more and the XSDT address is set.
//!
//! # The host's MADT (ACPI 6.5 §5.2.12)
//!
//! * The header is the firmware's (OEM fields, local APIC address, PCAT_COMPAT flag); only the
//!   length, checksum and — when there are pool cores — the revision change.
//! * Processor Local APIC (type 0) and Local x2APIC (type 9) structures are kept only for the
//!   host's cores and the enclave-pool cores, matched by APIC id. A host core's flags become
//!   Enabled; a pool core's become Online Capable with Enabled clear (§5.2.12.2, Table 5.23,
//!   ACPI 6.3+), so the host's Linux counts it as a possible CPU it may bring online later but
//!   does not start it at boot. Online Capable is only defined from MADT revision 5, so the
//!   revision is raised to 5 when a pool core is listed (Linux reads the bit only then).
//! * Every other processor structure is dropped: cores owned by boot-time enclaves, and entries
//!   the firmware lists as not present (Enabled and Online Capable clear, or id 0xFF / all ones),
//!   which atoll neither manages nor lets the host start.
//! * The structures of the host's boot core ([`HostCores::host`]'s first id) come first among
//!   the processor structures, as §5.2.12.1 recommends; all others keep the firmware's order.
//! * Local APIC NMI (type 4) and Local x2APIC NMI (type 10) structures are kept when they name
//!   all processors (UID 0xFF / 0xFFFF_FFFF) or the UID of a kept processor, and dropped when
//!   they name a dropped one.
//! * Every other structure (I/O APIC, interrupt source overrides, NMI sources, local APIC
//!   address override, I/O SAPIC …) is copied byte for byte.

use alloc::vec::Vec;
use boot::HostPhysAddr;
use core::fmt;

/// The SDT header's length (ACPI 6.5 §5.2.6, Table 5.4).
const HEADER_LEN: usize = 36;
/// The MADT's fixed part: the header, the local interrupt controller address and the flags
/// (§5.2.12, Table 5.19).
const MADT_FIXED_LEN: usize = 44;
/// An ACPI 2.0+ RSDP's length (§5.2.5.3, Table 5.3).
const RSDP_LEN: usize = 36;
/// The first 20 bytes of the RSDP are covered by the ACPI 1.0 checksum (§5.2.5.3).
const RSDP_V1_LEN: usize = 20;
/// Tables in the image start on 16-byte boundaries (the RSDP must, §5.2.5.1).
const ALIGN: usize = 16;

/// MADT structure types (§5.2.12, Table 5.21).
mod madt_type {
    pub const LOCAL_APIC: u8 = 0;
    pub const LOCAL_APIC_NMI: u8 = 4;
    pub const LOCAL_X2APIC: u8 = 9;
    pub const LOCAL_X2APIC_NMI: u8 = 10;
}

/// Processor Local APIC / Local x2APIC flags bit 0: Enabled (§5.2.12.2, Table 5.23).
pub const MADT_ENABLED: u32 = 1 << 0;
/// Flags bit 1: Online Capable — the OS may enable this processor at run time (ACPI 6.3+).
pub const MADT_ONLINE_CAPABLE: u32 = 1 << 1;
/// The first MADT revision that defines Online Capable (ACPI 6.3).
pub const MADT_ONLINE_CAPABLE_REVISION: u8 = 5;
/// The XSDT revision (§5.2.8).
const XSDT_REVISION: u8 = 1;
/// The RSDP revision for ACPI 2.0+ (§5.2.5.3).
const RSDP_REVISION: u8 = 2;
/// The OEM table id of the new XSDT.
const OEM_TABLE_ID: &[u8; 8] = b"ATOLLHST";
/// Creator id and revision of the new XSDT.
const CREATOR_ID: &[u8; 4] = b"ATOL";
const CREATOR_REVISION: u32 = 1;

/// One table the firmware's root table lists: where it is and its bytes (header included,
/// exactly the header's length long).
#[derive(Clone, Copy, Debug)]
pub struct FirmwareTable<'a> {
    /// Its physical address, as the firmware's XSDT/RSDT gives it.
    pub address: HostPhysAddr,
    /// Its bytes.
    pub bytes: &'a [u8],
}

impl FirmwareTable<'_> {
    /// The signature (first four bytes), if the table is long enough to have one.
    pub fn signature(&self) -> Option<[u8; 4]> {
        self.bytes.get(0..4)?.try_into().ok()
    }
}

/// The firmware's ACPI tables, as the root table lists them.
#[derive(Clone, Debug)]
pub struct FirmwareAcpi<'a> {
    /// The RSDP's OEM id, copied into the new RSDP and XSDT.
    pub oem_id: [u8; 6],
    /// Every table the XSDT (or RSDT) lists, in its order. Not the DSDT or FACS: those are
    /// reached through the FADT, which is kept as it is (see the module documentation).
    pub tables: Vec<FirmwareTable<'a>>,
}

/// Which cores the host gets, by APIC id (x2APIC id for Local x2APIC structures).
#[derive(Clone, Debug)]
pub struct HostCores<'a> {
    /// The host's cores, its boot core first: listed Enabled.
    pub host: &'a [u32],
    /// The enclave-pool cores: listed Online Capable, not Enabled.
    pub pool: &'a [u32],
}

/// Why the host's tables could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAcpiError {
    /// The firmware lists no MADT: there is nothing to say which cores exist.
    MissingMadt,
    /// The firmware lists more than one MADT, so which one the host would use is ambiguous.
    DuplicateMadt,
    /// The host was given no core.
    NoHostCore,
    /// An APIC id is named twice (within or across the host and pool lists).
    DuplicateCore { apic_id: u32 },
    /// A core given to the host or the pool has no enabled processor structure in the MADT.
    CoreNotInMadt { apic_id: u32 },
    /// A firmware table is unusable: shorter than its header, a length field that disagrees
    /// with its bytes, or at address 0.
    MalformedTable { signature: [u8; 4], index: usize },
    /// A MADT structure's length is below 2, runs past the table, or is below the size its type
    /// needs; `offset` is from the start of the MADT.
    MalformedMadt { offset: usize },
    /// The DSDT or FACS was listed among the root table's entries, where the host must not
    /// find it (they are reached through the FADT).
    NotARootTableEntry { signature: [u8; 4] },
    /// A table would exceed 4 GiB.
    TooLarge,
    /// The image would not fit below 2^64.
    AddressOverflow,
}

impl fmt::Display for HostAcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn sig(s: &[u8; 4]) -> &str {
            core::str::from_utf8(s).unwrap_or("????")
        }
        match self {
            Self::MissingMadt => write!(f, "the firmware lists no MADT"),
            Self::DuplicateMadt => write!(f, "the firmware lists more than one MADT"),
            Self::NoHostCore => write!(f, "the host has no core"),
            Self::DuplicateCore { apic_id } => write!(f, "APIC id {apic_id} is named twice"),
            Self::CoreNotInMadt { apic_id } => {
                write!(f, "APIC id {apic_id} has no enabled processor in the MADT")
            }
            Self::MalformedTable { signature, index } => {
                write!(
                    f,
                    "firmware table {index} ({}) is malformed",
                    sig(signature)
                )
            }
            Self::MalformedMadt { offset } => {
                write!(f, "MADT structure at offset {offset} has a bad length")
            }
            Self::NotARootTableEntry { signature } => {
                write!(f, "{} must not be listed in the root table", sig(signature))
            }
            Self::TooLarge => write!(f, "a table would exceed 4 GiB"),
            Self::AddressOverflow => write!(f, "the image would pass the top of memory"),
        }
    }
}

/// The I/O APICs' register addresses the MADT lists (I/O APIC structures, type 1, address at
/// offset 4; ACPI 6.5 §5.2.12.3). Malformed structures end the walk.
pub fn ioapic_addresses(madt: &[u8]) -> Vec<HostPhysAddr> {
    let mut out = Vec::new();
    let mut at = MADT_FIXED_LEN;
    while at + 2 <= madt.len() {
        let (kind, len) = (madt[at], usize::from(madt[at + 1]));
        if len < 2 || at + len > madt.len() {
            break;
        }
        if kind == 1 && len >= 12 {
            let a = u32::from_le_bytes([madt[at + 4], madt[at + 5], madt[at + 6], madt[at + 7]]);
            out.push(HostPhysAddr::new(u64::from(a)));
        }
        at += len;
    }
    out
}

/// At most this many tables are read from the firmware's root table (a PC lists about ten).
pub const MAX_FIRMWARE_TABLES: usize = 64;
/// A firmware table longer than this is refused rather than read (the largest on a PC, the
/// DSDT, is not among the root table's entries; the others are a few KiB).
pub const MAX_FIRMWARE_TABLE_LEN: usize = 1 << 20;

/// Why the firmware's root table could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareReadError {
    /// The RSDP is not readable or has no `RSD PTR ` signature.
    BadRsdp,
    /// The root table (XSDT or RSDT) is unreadable, has the wrong signature or a bad length.
    BadRootTable,
    /// The root table lists more than [`MAX_FIRMWARE_TABLES`] tables.
    TooManyTables,
    /// A listed table is unreadable or claims a length outside `36..=MAX_FIRMWARE_TABLE_LEN`.
    BadTable { index: usize, address: HostPhysAddr },
}

impl fmt::Display for FirmwareReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRsdp => write!(f, "the RSDP is unreadable or has no signature"),
            Self::BadRootTable => write!(f, "the XSDT/RSDT is unreadable or malformed"),
            Self::TooManyTables => write!(
                f,
                "the root table lists more than {MAX_FIRMWARE_TABLES} tables"
            ),
            Self::BadTable { index, address } => {
                write!(
                    f,
                    "root table entry {index} at {address} is unreadable or malformed"
                )
            }
        }
    }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> FirmwareAcpi<'a> {
    /// Reads the tables the firmware's root table lists, starting at the RSDP at `rsdp`:
    /// the XSDT when the RSDP's revision is 2 or more and its XSDT address is set, else the
    /// RSDT (ACPI 6.5 §5.2.5.3, §5.2.7, §5.2.8). `fetch(address, len)` returns the `len` bytes
    /// at a physical address, or `None` when they cannot be read. Every length is bounded
    /// before it is used; checksums are [`build`]'s business.
    pub fn read(
        rsdp: HostPhysAddr,
        fetch: impl Fn(HostPhysAddr, usize) -> Option<&'a [u8]>,
    ) -> Result<Self, FirmwareReadError> {
        let r = fetch(rsdp, RSDP_V1_LEN).ok_or(FirmwareReadError::BadRsdp)?;
        if r.get(0..8) != Some(b"RSD PTR ".as_slice()) {
            return Err(FirmwareReadError::BadRsdp);
        }
        let mut oem_id = [0u8; 6];
        oem_id.copy_from_slice(&r[9..15]);
        let revision = r[15];
        let xsdt = if revision >= 2 {
            fetch(rsdp, RSDP_LEN)
                .and_then(|r| le64(r, 24))
                .filter(|&a| a != 0)
        } else {
            None
        };
        let (root, entry_len, signature) = match xsdt {
            Some(a) => (a, 8, b"XSDT"),
            None => (
                u64::from(le32(r, 16).ok_or(FirmwareReadError::BadRsdp)?),
                4,
                b"RSDT",
            ),
        };
        let root = HostPhysAddr::new(root);
        let head = fetch(root, HEADER_LEN).ok_or(FirmwareReadError::BadRootTable)?;
        if head.get(0..4) != Some(signature.as_slice()) {
            return Err(FirmwareReadError::BadRootTable);
        }
        let len = le32(head, 4).ok_or(FirmwareReadError::BadRootTable)? as usize;
        if !(HEADER_LEN..=MAX_FIRMWARE_TABLE_LEN).contains(&len) {
            return Err(FirmwareReadError::BadRootTable);
        }
        let count = (len - HEADER_LEN) / entry_len;
        if count > MAX_FIRMWARE_TABLES {
            return Err(FirmwareReadError::TooManyTables);
        }
        let body = fetch(root, len).ok_or(FirmwareReadError::BadRootTable)?;
        let mut tables = Vec::with_capacity(count);
        for index in 0..count {
            let at = HEADER_LEN + index * entry_len;
            let address = if entry_len == 8 {
                le64(body, at)
            } else {
                le32(body, at).map(u64::from)
            }
            .ok_or(FirmwareReadError::BadRootTable)?;
            let address = HostPhysAddr::new(address);
            let bad = FirmwareReadError::BadTable { index, address };
            let h = fetch(address, HEADER_LEN).ok_or(bad)?;
            let tlen = le32(h, 4).ok_or(bad)? as usize;
            if !(HEADER_LEN..=MAX_FIRMWARE_TABLE_LEN).contains(&tlen) {
                return Err(bad);
            }
            tables.push(FirmwareTable {
                address,
                bytes: fetch(address, tlen).ok_or(bad)?,
            });
        }
        Ok(Self { oem_id, tables })
    }
}

/// The host's tables: one contiguous image meant to be copied to [`HostAcpi::base`].
#[derive(Clone, Debug)]
pub struct HostAcpi {
    base: HostPhysAddr,
    bytes: Vec<u8>,
    xsdt_offset: usize,
    madt_offset: usize,
}

impl HostAcpi {
    /// Where the image goes.
    pub fn base(&self) -> HostPhysAddr {
        self.base
    }
    /// The image's bytes (RSDP, XSDT, MADT, padding between them zero).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The RSDP's address: what the host's `boot_params.acpi_rsdp_addr` gets.
    pub fn rsdp_address(&self) -> HostPhysAddr {
        self.base
    }
    /// The new XSDT's address.
    pub fn xsdt_address(&self) -> HostPhysAddr {
        HostPhysAddr::new(self.base.as_u64() + self.xsdt_offset as u64)
    }
    /// The new MADT's address.
    pub fn madt_address(&self) -> HostPhysAddr {
        HostPhysAddr::new(self.base.as_u64() + self.madt_offset as u64)
    }
    /// The RSDP's bytes.
    pub fn rsdp(&self) -> &[u8] {
        &self.bytes[..RSDP_LEN]
    }
    /// The new XSDT's bytes.
    pub fn xsdt(&self) -> &[u8] {
        table_at(&self.bytes, self.xsdt_offset)
    }
    /// The new MADT's bytes.
    pub fn madt(&self) -> &[u8] {
        table_at(&self.bytes, self.madt_offset)
    }
    /// The physical addresses the new XSDT lists, in order.
    pub fn xsdt_entries(&self) -> impl Iterator<Item = HostPhysAddr> + '_ {
        self.xsdt()[HEADER_LEN..]
            .chunks_exact(8)
            .map(|e| HostPhysAddr::new(u64::from_le_bytes(e.try_into().unwrap_or([0; 8]))))
    }
}

/// The table of the image starting at `offset` (its header's length long).
fn table_at(image: &[u8], offset: usize) -> &[u8] {
    let len = image
        .get(offset + 4..offset + 8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0) as usize;
    image.get(offset..offset + len).unwrap_or(&[])
}

/// The byte that makes `bytes` sum to zero (§5.2.6: the whole table sums to 0).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Sets the length (bytes 4..8) and checksum (byte 9) of a finished table.
fn finish(table: &mut [u8]) -> Result<(), HostAcpiError> {
    let len = u32::try_from(table.len()).map_err(|_| HostAcpiError::TooLarge)?;
    table[4..8].copy_from_slice(&len.to_le_bytes());
    table[9] = 0;
    table[9] = checksum(table);
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One MADT processor structure: which APIC id, which UID, where its flags are.
struct Processor {
    apic_id: u32,
    uid: u32,
    flags: u32,
    /// Offset of the 32-bit flags within the structure.
    flags_at: usize,
    /// "Not present" marker ids (0xFF for type 0, all ones for type 9).
    absent: bool,
}

/// Reads a processor structure; `None` when `s` is not one. `s` is already length-checked.
fn processor(s: &[u8]) -> Option<Processor> {
    match s[0] {
        // Type 0: type, length 8, ACPI processor UID (u8), APIC id (u8), flags (u32).
        madt_type::LOCAL_APIC => Some(Processor {
            apic_id: u32::from(s[3]),
            uid: u32::from(s[2]),
            flags: u32_at(s, 4)?,
            flags_at: 4,
            absent: s[3] == 0xff,
        }),
        // Type 9: type, length 16, reserved (2), x2APIC id (u32), flags (u32), UID (u32).
        madt_type::LOCAL_X2APIC => Some(Processor {
            apic_id: u32_at(s, 4)?,
            uid: u32_at(s, 12)?,
            flags: u32_at(s, 8)?,
            flags_at: 8,
            absent: u32_at(s, 4)? == u32::MAX,
        }),
        _ => None,
    }
}

/// The least length a structure of type `t` must have for the fields this module reads.
fn min_len(t: u8) -> usize {
    match t {
        madt_type::LOCAL_APIC => 8,
        madt_type::LOCAL_APIC_NMI => 6,
        madt_type::LOCAL_X2APIC => 16,
        madt_type::LOCAL_X2APIC_NMI => 12,
        _ => 2,
    }
}

/// The MADT's structures as (offset, bytes), lengths checked.
fn structures(madt: &[u8]) -> Result<Vec<(usize, &[u8])>, HostAcpiError> {
    let mut out = Vec::new();
    let mut offset = MADT_FIXED_LEN;
    while offset < madt.len() {
        let bad = HostAcpiError::MalformedMadt { offset };
        let (t, len) = match madt.get(offset..offset + 2) {
            Some(&[t, len]) => (t, usize::from(len)),
            _ => return Err(bad),
        };
        if len < min_len(t) || offset + len > madt.len() {
            return Err(bad);
        }
        out.push((offset, &madt[offset..offset + len]));
        offset += len;
    }
    Ok(out)
}

/// What a core is to the host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Host,
    Pool,
}

/// Rewrites the firmware's MADT for the host (see the module documentation).
pub fn host_madt(firmware: &[u8], cores: &HostCores<'_>) -> Result<Vec<u8>, HostAcpiError> {
    if firmware.len() < MADT_FIXED_LEN {
        return Err(HostAcpiError::MalformedMadt { offset: 0 });
    }
    let boot = *cores.host.first().ok_or(HostAcpiError::NoHostCore)?;
    let mut seen: Vec<u32> = Vec::new();
    for &id in cores.host.iter().chain(cores.pool) {
        if seen.contains(&id) {
            return Err(HostAcpiError::DuplicateCore { apic_id: id });
        }
        seen.push(id);
    }
    let role = |id: u32| {
        if cores.host.contains(&id) {
            Some(Role::Host)
        } else if cores.pool.contains(&id) {
            Some(Role::Pool)
        } else {
            None
        }
    };
    let structs = structures(firmware)?;

    // A core atoll hands out must be one the firmware lists as present and enabled: that is
    // the set atoll's own discovery (`machine::platform`) knows and can start.
    let listed = |id: u32| {
        structs.iter().any(|(_, s)| {
            processor(s)
                .is_some_and(|p| !p.absent && p.apic_id == id && p.flags & MADT_ENABLED != 0)
        })
    };
    if let Some(&id) = seen.iter().find(|&&id| !listed(id)) {
        return Err(HostAcpiError::CoreNotInMadt { apic_id: id });
    }

    // Which UIDs are kept, per structure kind, for the NMI structures.
    let mut kept_uids_x: Vec<u32> = Vec::new();
    let mut kept_uids_l: Vec<u32> = Vec::new();
    for (_, s) in &structs {
        if let Some(p) = processor(s).filter(|p| !p.absent && role(p.apic_id).is_some()) {
            if s[0] == madt_type::LOCAL_APIC {
                kept_uids_l.push(p.uid);
            } else {
                kept_uids_x.push(p.uid);
            }
        }
    }

    let rewritten = |s: &[u8], p: &Processor, r: Role| {
        let mut s = s.to_vec();
        let flags = match r {
            // Online Capable is reserved (zero) when Enabled is set (Table 5.23).
            Role::Host => (p.flags | MADT_ENABLED) & !MADT_ONLINE_CAPABLE,
            Role::Pool => (p.flags | MADT_ONLINE_CAPABLE) & !MADT_ENABLED,
        };
        s[p.flags_at..p.flags_at + 4].copy_from_slice(&flags.to_le_bytes());
        s
    };

    let mut out = firmware[..MADT_FIXED_LEN].to_vec();
    let mut boot_done = false;
    for (_, s) in &structs {
        match processor(s) {
            Some(p) => {
                if !boot_done {
                    // The boot core's structures go where the first processor structure was.
                    for (_, b) in &structs {
                        if let Some(bp) = processor(b).filter(|bp| !bp.absent && bp.apic_id == boot)
                        {
                            out.extend_from_slice(&rewritten(b, &bp, Role::Host));
                        }
                    }
                    boot_done = true;
                }
                if p.absent || p.apic_id == boot {
                    continue;
                }
                if let Some(r) = role(p.apic_id) {
                    out.extend_from_slice(&rewritten(s, &p, r));
                }
            }
            None => {
                let keep = match s[0] {
                    // Type 4: type, length 6, ACPI processor UID (u8; 0xFF = all), flags, LINT#.
                    madt_type::LOCAL_APIC_NMI => {
                        s[2] == 0xff || kept_uids_l.contains(&u32::from(s[2]))
                    }
                    // Type 10: type, length 12, flags (u16), UID (u32; all ones = all), LINT#.
                    madt_type::LOCAL_X2APIC_NMI => {
                        let uid = u32_at(s, 4).unwrap_or(0);
                        uid == u32::MAX || kept_uids_x.contains(&uid)
                    }
                    _ => true,
                };
                if keep {
                    out.extend_from_slice(s);
                }
            }
        }
    }
    if !cores.pool.is_empty() && out[8] < MADT_ONLINE_CAPABLE_REVISION {
        out[8] = MADT_ONLINE_CAPABLE_REVISION;
    }
    finish(&mut out)?;
    Ok(out)
}

/// Checks a firmware table's framing: long enough for a header, at a nonzero address, and its
/// length field equal to its bytes.
fn check_table(t: &FirmwareTable<'_>, index: usize) -> Result<[u8; 4], HostAcpiError> {
    let signature = t.signature().unwrap_or(*b"????");
    let bad = HostAcpiError::MalformedTable { signature, index };
    let len = u32_at(t.bytes, 4).ok_or(bad)? as usize;
    if t.bytes.len() < HEADER_LEN || len != t.bytes.len() || t.address.as_u64() == 0 {
        return Err(bad);
    }
    Ok(signature)
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Builds the host's RSDP, XSDT and MADT as one image at `base` (see the module
/// documentation).
pub fn build(
    firmware: &FirmwareAcpi<'_>,
    cores: &HostCores<'_>,
    base: HostPhysAddr,
) -> Result<HostAcpi, HostAcpiError> {
    let mut madt_index = None;
    for (i, t) in firmware.tables.iter().enumerate() {
        let sig = check_table(t, i)?;
        match &sig {
            b"DSDT" | b"FACS" => {
                return Err(HostAcpiError::NotARootTableEntry { signature: sig });
            }
            b"APIC" if madt_index.is_some() => return Err(HostAcpiError::DuplicateMadt),
            b"APIC" => madt_index = Some(i),
            _ => {}
        }
    }
    let madt_index = madt_index.ok_or(HostAcpiError::MissingMadt)?;
    let madt = host_madt(firmware.tables[madt_index].bytes, cores)?;

    let kept: Vec<(usize, &FirmwareTable<'_>)> = firmware
        .tables
        .iter()
        .enumerate()
        .filter(|(_, t)| t.signature() != Some(*b"DMAR"))
        .collect();
    let xsdt_offset = align_up(RSDP_LEN);
    let xsdt_len = HEADER_LEN + 8 * kept.len();
    let madt_offset = align_up(xsdt_offset + xsdt_len);
    let total = madt_offset + madt.len();
    let at = |offset: usize| {
        base.as_u64()
            .checked_add(offset as u64)
            .ok_or(HostAcpiError::AddressOverflow)
    };
    let madt_address = at(madt_offset)?;
    let xsdt_address = at(xsdt_offset)?;
    at(total)?;

    let mut xsdt = Vec::with_capacity(xsdt_len);
    xsdt.extend_from_slice(b"XSDT");
    xsdt.extend_from_slice(&[0; 4]);
    xsdt.push(XSDT_REVISION);
    xsdt.push(0);
    xsdt.extend_from_slice(&firmware.oem_id);
    xsdt.extend_from_slice(OEM_TABLE_ID);
    xsdt.extend_from_slice(&1u32.to_le_bytes());
    xsdt.extend_from_slice(CREATOR_ID);
    xsdt.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    for (i, t) in &kept {
        let addr = if *i == madt_index {
            madt_address
        } else {
            t.address.as_u64()
        };
        xsdt.extend_from_slice(&addr.to_le_bytes());
    }
    finish(&mut xsdt)?;

    // RSDP (§5.2.5.3): "RSD PTR ", checksum of the first 20 bytes, OEM id, revision, RSDT
    // address (none), length, XSDT address, extended checksum of all 36, reserved.
    let mut rsdp = [0u8; RSDP_LEN];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(&firmware.oem_id);
    rsdp[15] = RSDP_REVISION;
    rsdp[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    rsdp[24..32].copy_from_slice(&xsdt_address.to_le_bytes());
    rsdp[8] = checksum(&rsdp[..RSDP_V1_LEN]);
    rsdp[32] = checksum(&rsdp);

    let mut bytes = alloc::vec![0u8; total];
    bytes[..RSDP_LEN].copy_from_slice(&rsdp);
    bytes[xsdt_offset..xsdt_offset + xsdt.len()].copy_from_slice(&xsdt);
    bytes[madt_offset..].copy_from_slice(&madt);
    Ok(HostAcpi {
        base,
        bytes,
        xsdt_offset,
        madt_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn fixture_dir(dir: &str) -> Vec<(String, Vec<u8>)> {
        let path = format!(
            "{}/../../tests/fixtures/acpi/{dir}",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let b = std::fs::read(format!("{path}/{n}")).unwrap();
                (n, b)
            })
            .collect()
    }

    /// The tables a root table would list (not the DSDT), at made-up addresses.
    fn firmware(tables: &[(String, Vec<u8>)]) -> FirmwareAcpi<'_> {
        FirmwareAcpi {
            oem_id: *b"BOCHS ",
            tables: tables
                .iter()
                .filter(|(n, _)| n != "DSDT")
                .enumerate()
                .map(|(i, (_, b))| FirmwareTable {
                    address: HostPhysAddr::new(0x7fe0_0000 + i as u64 * 0x1000),
                    bytes: b,
                })
                .collect(),
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// (type, apic id, flags) of every processor structure.
    fn processors(madt: &[u8]) -> Vec<(u8, u32, u32)> {
        structures(madt)
            .unwrap()
            .into_iter()
            .filter_map(|(_, s)| processor(s).map(|p| (s[0], p.apic_id, p.flags)))
            .collect()
    }

    fn others(madt: &[u8]) -> Vec<Vec<u8>> {
        structures(madt)
            .unwrap()
            .into_iter()
            .filter(|(_, s)| processor(s).is_none())
            .map(|(_, s)| s.to_vec())
            .collect()
    }

    fn check_image(h: &HostAcpi, fw: &FirmwareAcpi<'_>, cores: &HostCores<'_>) {
        // Checksums: RSDP (both), XSDT, MADT.
        assert_eq!(&h.rsdp()[0..8], b"RSD PTR ");
        assert_eq!(h.rsdp()[15], 2);
        assert_eq!(sum(&h.rsdp()[..20]), 0);
        assert_eq!(sum(h.rsdp()), 0);
        assert_eq!(
            u64::from_le_bytes(h.rsdp()[24..32].try_into().unwrap()),
            h.xsdt_address().as_u64()
        );
        assert_eq!(h.base().as_u64() % 16, 0);
        assert_eq!(h.xsdt_address().as_u64() % 16, 0);
        assert_eq!(h.madt_address().as_u64() % 16, 0);
        assert_eq!(&h.xsdt()[0..4], b"XSDT");
        assert_eq!(sum(h.xsdt()), 0);
        assert_eq!(&h.madt()[0..4], b"APIC");
        assert_eq!(sum(h.madt()), 0);

        // The XSDT: every firmware table but the DMAR, in order, the MADT replaced.
        let want: Vec<u64> = fw
            .tables
            .iter()
            .filter(|t| t.signature() != Some(*b"DMAR"))
            .map(|t| {
                if t.signature() == Some(*b"APIC") {
                    h.madt_address().as_u64()
                } else {
                    t.address.as_u64()
                }
            })
            .collect();
        let got: Vec<u64> = h.xsdt_entries().map(HostPhysAddr::as_u64).collect();
        assert_eq!(got, want);
        for a in &got {
            let sig = fw
                .tables
                .iter()
                .find(|t| t.address.as_u64() == *a)
                .and_then(|t| t.signature());
            assert_ne!(sig, Some(*b"DMAR"));
        }

        // The MADT: the host's cores enabled, boot core first, the pool online capable.
        let fw_madt = fw
            .tables
            .iter()
            .find(|t| t.signature() == Some(*b"APIC"))
            .unwrap()
            .bytes;
        let procs = processors(h.madt());
        assert_eq!(procs[0].1, cores.host[0]);
        let mut enabled: Vec<u32> = procs
            .iter()
            .filter(|p| p.2 == MADT_ENABLED)
            .map(|p| p.1)
            .collect();
        let mut capable: Vec<u32> = procs
            .iter()
            .filter(|p| p.2 == MADT_ONLINE_CAPABLE)
            .map(|p| p.1)
            .collect();
        assert_eq!(enabled.len() + capable.len(), procs.len(), "{procs:?}");
        enabled.sort();
        capable.sort();
        let (mut host, mut pool) = (cores.host.to_vec(), cores.pool.to_vec());
        host.sort();
        pool.sort();
        assert_eq!(enabled, host);
        assert_eq!(capable, pool);
        // Header fields kept but length, checksum and (with a pool) revision.
        assert_eq!(h.madt()[10..36], fw_madt[10..36]);
        assert_eq!(h.madt()[36..44], fw_madt[36..44]);
        let rev = if cores.pool.is_empty() {
            fw_madt[8]
        } else {
            fw_madt[8].max(5)
        };
        assert_eq!(h.madt()[8], rev);
        // The fixtures' NMI structures name all processors, so every non-processor
        // structure is kept.
        assert_eq!(others(h.madt()), others(fw_madt));
    }

    #[test]
    fn captured_qemu_tables_host_cores_and_pool() {
        let t = fixture_dir("boot-qemu-4cpu");
        let fw = firmware(&t);
        // Core 1 belongs to a boot-time enclave; core 2 is the host's boot core.
        let cores = HostCores {
            host: &[2, 0],
            pool: &[3],
        };
        let h = build(&fw, &cores, HostPhysAddr::new(0x9_0000)).unwrap();
        check_image(&h, &fw, &cores);
        let ids: Vec<u32> = processors(h.madt()).iter().map(|p| p.1).collect();
        assert_eq!(ids, vec![2, 0, 3]);
        assert_eq!(h.xsdt_entries().count(), 5); // APIC FACP HPET MCFG WAET
    }

    #[test]
    fn captured_vtd_tables_lose_the_dmar() {
        let t = fixture_dir("boot-vtd-qemu-2cpu");
        let fw = firmware(&t);
        assert!(fw.tables.iter().any(|t| t.signature() == Some(*b"DMAR")));
        let cores = HostCores {
            host: &[0],
            pool: &[1],
        };
        let h = build(&fw, &cores, HostPhysAddr::new(0x1_2345_6780)).unwrap();
        check_image(&h, &fw, &cores);
        assert_eq!(h.xsdt_entries().count(), fw.tables.len() - 1);
    }

    #[test]
    fn captured_bochs_tables_without_pool_keep_the_madt_revision() {
        let t = fixture_dir("boot-bochs-2cpu");
        let fw = firmware(&t);
        let cores = HostCores {
            host: &[0, 1],
            pool: &[],
        };
        let h = build(&fw, &cores, HostPhysAddr::new(0xe_0000)).unwrap();
        check_image(&h, &fw, &cores);
        assert_eq!(h.madt()[8], 1);
        // Nothing dropped, no flag or revision changed: the MADT comes out byte for byte.
        assert_eq!(
            h.madt(),
            fw.tables
                .iter()
                .find(|t| t.signature() == Some(*b"APIC"))
                .unwrap()
                .bytes
        );
    }

    fn madt(rev: u8, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut t = vec![0u8; MADT_FIXED_LEN];
        t[0..4].copy_from_slice(b"APIC");
        t[8] = rev;
        t[36..40].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        t[40] = 1;
        for e in entries {
            t.extend_from_slice(e);
        }
        finish(&mut t).unwrap();
        t
    }
    fn lapic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![0, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }
    fn x2apic(uid: u32, id: u32, flags: u32) -> Vec<u8> {
        let mut e = vec![9, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&uid.to_le_bytes());
        e
    }
    fn lapic_nmi(uid: u8) -> Vec<u8> {
        vec![4, 6, uid, 0x05, 0, 1]
    }
    fn x2apic_nmi(uid: u32) -> Vec<u8> {
        let mut e = vec![10, 12, 0x05, 0];
        e.extend_from_slice(&uid.to_le_bytes());
        e.extend_from_slice(&[1, 0, 0, 0]);
        e
    }
    fn ioapic() -> Vec<u8> {
        let mut e = vec![1, 12, 2, 0];
        e.extend_from_slice(&0xfec0_0000u32.to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e
    }
    fn iso(irq: u8, gsi: u32) -> Vec<u8> {
        let mut e = vec![2, 10, 0, irq];
        e.extend_from_slice(&gsi.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        e
    }

    #[test]
    fn nmi_structures_follow_their_processors_and_absent_ones_are_dropped() {
        let fw = madt(
            3,
            &[
                lapic(0, 0, 1),
                lapic(1, 1, 1),
                lapic(2, 2, 1),
                lapic(3, 0xff, 0), // not present
                x2apic(10, 300, 1),
                x2apic(11, 301, 1),
                x2apic(12, u32::MAX, 0), // not present
                x2apic(13, 302, 0),      // firmware-disabled, given to nobody
                ioapic(),
                iso(0, 2),
                lapic_nmi(0),
                lapic_nmi(1), // core 1 goes to an enclave
                lapic_nmi(2),
                lapic_nmi(0xff),
                x2apic_nmi(10),
                x2apic_nmi(11), // core 301 goes to an enclave
                x2apic_nmi(u32::MAX),
            ],
        );
        let cores = HostCores {
            host: &[0, 300],
            pool: &[2],
        };
        let m = host_madt(&fw, &cores).unwrap();
        assert_eq!(sum(&m), 0);
        assert_eq!(m[8], MADT_ONLINE_CAPABLE_REVISION);
        assert_eq!(
            processors(&m),
            vec![
                (0, 0, MADT_ENABLED),
                (0, 2, MADT_ONLINE_CAPABLE),
                (9, 300, MADT_ENABLED)
            ]
        );
        assert_eq!(
            others(&m),
            vec![
                ioapic(),
                iso(0, 2),
                lapic_nmi(0),
                lapic_nmi(2),
                lapic_nmi(0xff),
                x2apic_nmi(10),
                x2apic_nmi(u32::MAX)
            ]
        );
    }

    #[test]
    fn a_core_listed_twice_by_the_firmware_is_rewritten_in_both_structures() {
        // Firmware may list one CPU as both Local APIC and Local x2APIC; the boot core's
        // structures both move to the front.
        let fw = madt(
            6,
            &[
                lapic(0, 0, 1),
                lapic(1, 1, 1),
                x2apic(0, 0, 1),
                x2apic(1, 1, 1),
            ],
        );
        let m = host_madt(
            &fw,
            &HostCores {
                host: &[1],
                pool: &[0],
            },
        )
        .unwrap();
        assert_eq!(m[8], 6, "a newer revision is kept");
        assert_eq!(
            processors(&m),
            vec![
                (0, 1, MADT_ENABLED),
                (9, 1, MADT_ENABLED),
                (0, 0, MADT_ONLINE_CAPABLE),
                (9, 0, MADT_ONLINE_CAPABLE)
            ]
        );
    }

    #[test]
    fn flags_other_than_enabled_and_online_capable_are_kept() {
        // A (hypothetical) reserved bit set by firmware stays; a host core's stray Online
        // Capable bit is cleared (reserved when Enabled is set).
        let fw = madt(5, &[lapic(0, 0, 0b1011), lapic(1, 1, 0b1001)]);
        let m = host_madt(
            &fw,
            &HostCores {
                host: &[0],
                pool: &[1],
            },
        )
        .unwrap();
        assert_eq!(processors(&m), vec![(0, 0, 0b1001), (0, 1, 0b1010)]);
    }

    #[test]
    fn core_errors() {
        let fw = madt(3, &[lapic(0, 0, 1), lapic(1, 1, 1), lapic(2, 2, 0)]);
        let err =
            |host: &[u32], pool: &[u32]| host_madt(&fw, &HostCores { host, pool }).unwrap_err();
        assert_eq!(err(&[], &[0]), HostAcpiError::NoHostCore);
        assert_eq!(
            err(&[0, 7], &[]),
            HostAcpiError::CoreNotInMadt { apic_id: 7 }
        );
        assert_eq!(err(&[0], &[7]), HostAcpiError::CoreNotInMadt { apic_id: 7 });
        // Listed, but disabled by the firmware: not a core atoll can hand out.
        assert_eq!(err(&[0], &[2]), HostAcpiError::CoreNotInMadt { apic_id: 2 });
        assert_eq!(
            err(&[0], &[1, 0]),
            HostAcpiError::DuplicateCore { apic_id: 0 }
        );
        assert_eq!(
            err(&[1, 1], &[]),
            HostAcpiError::DuplicateCore { apic_id: 1 }
        );
    }

    #[test]
    fn malformed_madts_are_errors() {
        let cores = HostCores {
            host: &[0],
            pool: &[],
        };
        let good = madt(3, &[lapic(0, 0, 1), ioapic()]);
        assert!(host_madt(&good, &cores).is_ok());
        // A zero-length structure (would loop forever).
        let mut t = good.clone();
        t[MADT_FIXED_LEN + 8 + 1] = 0;
        assert_eq!(
            host_madt(&t, &cores).unwrap_err(),
            HostAcpiError::MalformedMadt { offset: 52 }
        );
        // A structure running past the table.
        let mut t = good.clone();
        t[MADT_FIXED_LEN + 8 + 1] = 13;
        assert_eq!(
            host_madt(&t, &cores).unwrap_err(),
            HostAcpiError::MalformedMadt { offset: 52 }
        );
        // A processor structure too short for its fields.
        let t = madt(3, &[vec![0, 4, 0, 0], lapic(0, 0, 1)]);
        assert_eq!(
            host_madt(&t, &cores).unwrap_err(),
            HostAcpiError::MalformedMadt { offset: 44 }
        );
        // A lone trailing byte.
        let mut t = good.clone();
        t.push(0);
        assert_eq!(
            host_madt(&t, &cores).unwrap_err(),
            HostAcpiError::MalformedMadt { offset: 64 }
        );
        // Shorter than the fixed part.
        assert_eq!(
            host_madt(&good[..40], &cores).unwrap_err(),
            HostAcpiError::MalformedMadt { offset: 0 }
        );
    }

    fn table(sig: &[u8; 4], len: usize) -> Vec<u8> {
        let mut t = vec![0u8; len];
        t[0..4].copy_from_slice(sig);
        finish(&mut t).unwrap();
        t
    }

    #[test]
    fn firmware_table_errors() {
        let m = madt(3, &[lapic(0, 0, 1)]);
        let hpet = table(b"HPET", 56);
        let dsdt = table(b"DSDT", 40);
        let at = |a: u64, b: &'static [u8]| FirmwareTable {
            address: HostPhysAddr::new(a),
            bytes: b,
        };
        let leak = |v: &Vec<u8>| -> &'static [u8] { Vec::leak(v.clone()) };
        let (m, hpet, dsdt) = (leak(&m), leak(&hpet), leak(&dsdt));
        let cores = HostCores {
            host: &[0],
            pool: &[],
        };
        let run = |tables: Vec<FirmwareTable<'static>>| {
            build(
                &FirmwareAcpi {
                    oem_id: *b"OEMOEM",
                    tables,
                },
                &cores,
                HostPhysAddr::new(0x1000),
            )
            .map(|h| h.xsdt_entries().count())
        };
        assert_eq!(run(vec![at(0x2000, hpet), at(0x3000, m)]), Ok(2));
        assert_eq!(run(vec![at(0x2000, hpet)]), Err(HostAcpiError::MissingMadt));
        assert_eq!(
            run(vec![at(0x3000, m), at(0x4000, m)]),
            Err(HostAcpiError::DuplicateMadt)
        );
        assert_eq!(
            run(vec![at(0x3000, m), at(0x4000, dsdt)]),
            Err(HostAcpiError::NotARootTableEntry {
                signature: *b"DSDT"
            })
        );
        assert_eq!(
            run(vec![at(0x3000, m), at(0, hpet)]),
            Err(HostAcpiError::MalformedTable {
                signature: *b"HPET",
                index: 1
            })
        );
        // Length field disagreeing with the bytes, and a table shorter than a header.
        assert_eq!(
            run(vec![at(0x3000, m), at(0x2000, &hpet[..50])]),
            Err(HostAcpiError::MalformedTable {
                signature: *b"HPET",
                index: 1
            })
        );
        assert_eq!(
            run(vec![at(0x2000, &hpet[..3]), at(0x3000, m)]),
            Err(HostAcpiError::MalformedTable {
                signature: *b"????",
                index: 0
            })
        );
        assert_eq!(
            build(
                &FirmwareAcpi {
                    oem_id: *b"OEMOEM",
                    tables: vec![at(0x3000, m)],
                },
                &cores,
                HostPhysAddr::new(u64::MAX - 0x40),
            )
            .unwrap_err(),
            HostAcpiError::AddressOverflow
        );
    }

    /// A fake physical memory: (address, bytes) blocks.
    fn fetcher<'a>(
        blocks: &'a [(u64, Vec<u8>)],
    ) -> impl Fn(HostPhysAddr, usize) -> Option<&'a [u8]> + 'a {
        move |a: HostPhysAddr, len: usize| {
            blocks.iter().find_map(|(at, b)| {
                let off = a.as_u64().checked_sub(*at)? as usize;
                b.get(off..off.checked_add(len)?)
            })
        }
    }

    fn rsdp(revision: u8, rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = vec![0u8; 36];
        r[0..8].copy_from_slice(b"RSD PTR ");
        r[9..15].copy_from_slice(b"BOCHS ");
        r[15] = revision;
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        r[24..32].copy_from_slice(&xsdt.to_le_bytes());
        r
    }

    fn root(sig: &[u8; 4], entries: &[u64], wide: bool) -> Vec<u8> {
        let w = if wide { 8 } else { 4 };
        let mut t = table(sig, 36 + w * entries.len());
        for (i, e) in entries.iter().enumerate() {
            t[36 + w * i..36 + w * (i + 1)].copy_from_slice(&e.to_le_bytes()[..w]);
        }
        t
    }

    #[test]
    fn ioapic_addresses_from_the_madt() {
        let m = madt(3, &[lapic(0, 0, 1), ioapic(), iso(0, 2), lapic(1, 1, 1)]);
        let got = ioapic_addresses(&m);
        assert_eq!(got, vec![HostPhysAddr::new(0xfec0_0000)]);
        // A structure claiming to run past the table ends the walk without a panic.
        let mut bad = m.clone();
        let first = MADT_FIXED_LEN;
        bad[first + 1] = 0xff;
        assert!(ioapic_addresses(&bad).is_empty());
        assert!(ioapic_addresses(&m[..10]).is_empty());
    }

    #[test]
    fn firmware_root_tables_are_read_through_xsdt_or_rsdt() {
        let apic = table(b"APIC", 60);
        let hpet = table(b"HPET", 56);
        let blocks = vec![
            (0xf_0000, rsdp(2, 0x1000, 0x2000)),
            (0x1000, root(b"RSDT", &[0x3000], false)),
            (0x2000, root(b"XSDT", &[0x3000, 0x4000], true)),
            (0x3000, apic.clone()),
            (0x4000, hpet.clone()),
        ];
        let fw = FirmwareAcpi::read(HostPhysAddr::new(0xf_0000), fetcher(&blocks)).unwrap();
        assert_eq!(&fw.oem_id, b"BOCHS ");
        let got: Vec<_> = fw
            .tables
            .iter()
            .map(|t| (t.address.as_u64(), t.bytes))
            .collect();
        assert_eq!(got, vec![(0x3000, &apic[..]), (0x4000, &hpet[..])]);
        // ACPI 1.0: the RSDT.
        let mut v1 = blocks.clone();
        v1[0].1 = rsdp(0, 0x1000, 0x2000);
        let fw = FirmwareAcpi::read(HostPhysAddr::new(0xf_0000), fetcher(&v1)).unwrap();
        assert_eq!(fw.tables.len(), 1);
    }

    #[test]
    fn firmware_read_errors_name_what_is_wrong() {
        let at = HostPhysAddr::new(0xf_0000);
        let read = |b: &[(u64, Vec<u8>)]| FirmwareAcpi::read(at, fetcher(b)).map(|_| ());
        assert_eq!(read(&[]), Err(FirmwareReadError::BadRsdp));
        let mut bad_sig = rsdp(2, 0, 0x2000);
        bad_sig[0] = b'X';
        assert_eq!(
            read(&[(0xf_0000, bad_sig)]),
            Err(FirmwareReadError::BadRsdp)
        );
        // The root table missing, with the wrong signature, or too long to be believed.
        assert_eq!(
            read(&[(0xf_0000, rsdp(2, 0, 0x2000))]),
            Err(FirmwareReadError::BadRootTable)
        );
        assert_eq!(
            read(&[
                (0xf_0000, rsdp(2, 0, 0x2000)),
                (0x2000, root(b"RSDT", &[], true))
            ]),
            Err(FirmwareReadError::BadRootTable)
        );
        let mut huge = root(b"XSDT", &[], true);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            read(&[(0xf_0000, rsdp(2, 0, 0x2000)), (0x2000, huge)]),
            Err(FirmwareReadError::BadRootTable)
        );
        let many: Vec<u64> = (0..MAX_FIRMWARE_TABLES as u64 + 1)
            .map(|i| 0x3000 + i)
            .collect();
        assert_eq!(
            read(&[
                (0xf_0000, rsdp(2, 0, 0x2000)),
                (0x2000, root(b"XSDT", &many, true))
            ]),
            Err(FirmwareReadError::TooManyTables)
        );
        // An entry pointing nowhere, or at a table whose length is absurd.
        let bad = FirmwareReadError::BadTable {
            index: 0,
            address: HostPhysAddr::new(0x9000),
        };
        assert_eq!(
            read(&[
                (0xf_0000, rsdp(2, 0, 0x2000)),
                (0x2000, root(b"XSDT", &[0x9000], true))
            ]),
            Err(bad)
        );
        let mut short = table(b"APIC", 36);
        short[4..8].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            read(&[
                (0xf_0000, rsdp(2, 0, 0x2000)),
                (0x2000, root(b"XSDT", &[0x9000], true)),
                (0x9000, short)
            ]),
            Err(bad)
        );
    }

    #[test]
    fn oem_id_goes_to_rsdp_and_xsdt() {
        let m = madt(3, &[lapic(0, 0, 1)]);
        let h = build(
            &FirmwareAcpi {
                oem_id: *b"OEMOEM",
                tables: vec![FirmwareTable {
                    address: HostPhysAddr::new(0x5000),
                    bytes: &m,
                }],
            },
            &HostCores {
                host: &[0],
                pool: &[],
            },
            HostPhysAddr::new(0x10_0000),
        )
        .unwrap();
        assert_eq!(&h.rsdp()[9..15], b"OEMOEM");
        assert_eq!(&h.xsdt()[10..16], b"OEMOEM");
        assert_eq!(u32_at(h.rsdp(), 16), Some(0), "no RSDT");
        assert_eq!(
            h.bytes().len() as u64,
            h.madt_address().as_u64() - 0x10_0000 + m.len() as u64
        );
        assert!(HostAcpiError::MissingMadt.to_string().contains("MADT"));
        assert!(HostAcpiError::NotARootTableEntry {
            signature: *b"DSDT"
        }
        .to_string()
        .contains("DSDT"));
    }
}
