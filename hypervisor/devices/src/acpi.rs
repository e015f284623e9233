//! The ACPI tables atoll makes for each enclave, so that an unmodified Linux finds its
//! processors, its interrupt controllers, its UART, its PCI ECAM window and how to reset and
//! power off.
//!
//! [`build`] lays one contiguous image out from a guest-physical address upward; the loader
//! copies it into enclave RAM ([`AcpiTables::write_to`]) and hands the RSDP's address to the
//! guest (Linux: `boot_params.acpi_rsdp_addr`). Every table is 16-byte aligned:
//!
//! | table | revision | what it says |
//! | --- | --- | --- |
//! | RSDP | 2 | where the XSDT is (no RSDT: its 32-bit address is 0) |
//! | XSDT | 1 | FACP, APIC, MCFG |
//! | FADT (`FACP`) | 6.5 | hardware-reduced; reset, sleep-control and sleep-status registers |
//! | DSDT | 2 | `\_S5`, one `ACPI0007` processor device per vCPU, COM1 (`PNP0501`) |
//! | MADT (`APIC`) | 6 | one Local x2APIC structure per vCPU, one I/O APIC |
//! | MCFG | 1 | one ECAM allocation: segment 0, buses `0..ecam_buses` |
//!
//! # The virtual platform these tables describe
//!
//! * **Hardware-reduced ACPI** (ACPI 6.5 §4.1): no PM1/PM2/GPE register blocks, no PM timer,
//!   no SCI, no FACS, no SMI command port. Linux then installs no legacy 8259 (there is none:
//!   the MADT's PCAT_COMPAT flag is clear) and no PIT.
//! * **Reset** (§4.8.3.6): writing [`RESET_VALUE`] (0x01) to the 8-bit I/O port
//!   [`RESET_PORT`] (0x604) resets the enclave. Linux does this on `reboot` (FADT flag
//!   RESET_REG_SUP).
//! * **Power off** (§4.8.3.7, §7.4.2.6): the sleep-control register is the 8-bit I/O port
//!   [`SLEEP_CONTROL_PORT`] (0x600): SLP_TYP in bits 4:2, SLP_EN in bit 5, the rest reserved.
//!   The DSDT's `\_S5` is `Package { 5, 5 }`, so Linux powers off by writing
//!   [`S5_SLEEP_CONTROL_VALUE`] (0x34) there; [`requested_sleep_type`] decodes a write. The
//!   sleep-status register is the 8-bit I/O port [`SLEEP_STATUS_PORT`] (0x601) with WAK_STS in
//!   bit 7; Linux writes [`WAK_STS`] to it (write-one-to-clear) just before sleeping, and the
//!   emulation may read as 0 and ignore writes. No other sleep state is listed, so Linux offers
//!   S0 and S5 only.
//! * **Processors**: one Local x2APIC structure (type 9) per vCPU, ACPI processor UID = its
//!   index in [`PlatformLayout::vcpu_apic_ids`] (put the boot vCPU first, ACPI 6.5 §5.2.12.1).
//!   No Local APIC (type 0) structures: Linux (and atoll's own ACPI discovery) takes x2APIC
//!   structures for any id, and when both kinds are present recent Linux skips x2APIC structures
//!   with ids below 255, so listing both would at best duplicate every CPU. Linux accepts an id
//!   of 255 or more only if its boot CPU is already in x2APIC mode when it reads the MADT
//!   (otherwise it logs "x2apic entry ignored" and never starts that CPU): an enclave with such
//!   ids must enter the guest with IA32_APIC_BASE.EXTD set. The DSDT declares one processor
//!   device per vCPU (`\_SB.Cxxx`, `_HID "ACPI0007"`, `_UID` = the same UID), as §5.2.12.12 asks
//!   for x2APIC processors and §8.4 describes.
//! * **Interrupts**: one I/O APIC at the caller's address with GSI base 0. The FADT sets
//!   FORCE_APIC_PHYSICAL_DESTINATION_MODE, so Linux programs its APICs (xAPIC or x2APIC) in
//!   physical destination mode and the x2APIC emulation need not route logical destinations.
//!   There is no Interrupt Source Override: ISA IRQ *n* is GSI *n*, active-high edge, which is
//!   the default, and in hardware-reduced mode Linux sets up no ISA IRQs by itself anyway.
//! * **COM1** is described in the DSDT (`\_SB.COM1`, `PNP0501`, I/O 0x3F8–0x3FF, IRQ 4). This is
//!   needed, not decoration: in hardware-reduced mode Linux has no legacy IRQ numbers, so the
//!   built-in ISA port table's "IRQ 4" is no GSI at all and only a firmware-described UART gets
//!   its interrupt.
//! * **IA-PC boot flags** (§5.2.9.3): no LPC/ISA devices but those the DSDT lists (COM1), no
//!   8042, no VGA, no CMOS RTC, ASPM left alone; MSI allowed. Linux then probes none of those
//!   (so the enclave need not emulate ports 0x60/0x64 or 0x70/0x71). If the platform grows an
//!   RTC, clear CMOS RTC Not Present.
//! * **PCI**: the MCFG gives the ECAM window. Linux enumerates a PCI root bus only from a host
//!   bridge device (`PNP0A08`) in the DSDT, which these tables do not have yet (its `_CRS` needs
//!   the BAR windows, which [`PlatformLayout`] does not carry).
//!
//! The Hypervisor Vendor Identity in the FADT is `"AtollHV\0"`, the first eight bytes of the
//! CPUID signature.

use alloc::vec;
use alloc::vec::Vec;
use atoll_vcpu::GuestMemory;
use boot::GuestPhysAddr;
use core::fmt;

/// I/O port of the FADT's reset register (ACPI 6.5 §4.8.3.6), 8 bits wide.
pub const RESET_PORT: u16 = atoll_abi::acpi_pm::RESET_PORT;
/// The value that resets the enclave when written to [`RESET_PORT`] (FADT RESET_VALUE).
pub const RESET_VALUE: u8 = atoll_abi::acpi_pm::RESET_VALUE;
/// I/O port of the FADT's SLEEP_CONTROL_REG (ACPI 6.5 §4.8.3.7), 8 bits wide.
pub const SLEEP_CONTROL_PORT: u16 = atoll_abi::acpi_pm::SLEEP_CONTROL_PORT;
/// I/O port of the FADT's SLEEP_STATUS_REG (ACPI 6.5 §4.8.3.7), 8 bits wide.
pub const SLEEP_STATUS_PORT: u16 = atoll_abi::acpi_pm::SLEEP_STATUS_PORT;
/// SLP_TYP for S5 (soft off): both elements of the DSDT's `\_S5` package (ACPI 6.5 §7.4.2).
pub const S5_SLP_TYP: u8 = atoll_abi::acpi_pm::S5_SLP_TYP;
/// Position of SLP_TYP in the sleep-control register (ACPI 6.5 §4.8.3.7: bits 4:2).
pub const SLP_TYP_SHIFT: u32 = atoll_abi::acpi_pm::SLP_TYP_SHIFT;
/// SLP_TYP's bits in the sleep-control register.
pub const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
/// SLP_EN: writing it with SLP_TYP enters that sleep state (ACPI 6.5 §4.8.3.7: bit 5).
pub const SLP_EN: u8 = atoll_abi::acpi_pm::SLP_EN;
/// WAK_STS in the sleep-status register (ACPI 6.5 §4.8.3.7: bit 7, write one to clear).
pub const WAK_STS: u8 = 1 << 7;
/// What Linux writes to [`SLEEP_CONTROL_PORT`] to power off: S5's SLP_TYP with SLP_EN (0x34).
pub const S5_SLEEP_CONTROL_VALUE: u8 = atoll_abi::acpi_pm::S5_SLEEP_CONTROL_VALUE;
/// The local APIC's MMIO base in the MADT (the architectural default).
pub const LOCAL_APIC_BASE: u64 = 0xfee0_0000;
/// COM1's I/O base as the DSDT describes it (eight ports).
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's interrupt as the DSDT describes it: ISA IRQ 4 = GSI 4, active-high edge.
pub const COM1_IRQ: u8 = 4;
/// Most vCPUs one set of tables describes: the DSDT names processor devices `C000`–`CFFF`.
pub const MAX_VCPUS: usize = 0x1000;

/// The SLP_TYP a write of `value` to the sleep-control register asks to enter, or `None` when
/// SLP_EN is clear (ACPI 6.5 §4.8.3.7).
pub fn requested_sleep_type(value: u8) -> Option<u8> {
    (value & SLP_EN != 0).then_some((value & SLP_TYP_MASK) >> SLP_TYP_SHIFT)
}

/// What the enclave's virtual platform has, as the tables describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformLayout {
    /// x2APIC id of each vCPU, boot vCPU first; the index is the ACPI processor UID. Ids of
    /// 255 and above need the guest entered in x2APIC mode (see the module documentation).
    pub vcpu_apic_ids: Vec<u32>,
    /// The I/O APIC's id (not checked against the vCPUs' ids: APICs that talk over the system
    /// bus, as all x2APIC-capable ones do, do not share one id space with the I/O APIC).
    pub ioapic_id: u8,
    /// The I/O APIC's MMIO base (below 4 GiB: the MADT field is 32 bits).
    pub ioapic_base: u64,
    /// Guest-physical base of the ECAM window (bus 0), 1 MiB aligned.
    pub ecam_base: u64,
    /// How many buses the ECAM window decodes (1 MiB each): buses `0..=ecam_buses - 1`.
    pub ecam_buses: u8,
    /// OEM id in every table header and the RSDP (printable ASCII, space padded).
    pub oem_id: [u8; 6],
    /// A PCI host bridge in the DSDT (`\_SB.PCI0`, bus 0) whose memory window for BARs is
    /// `[start, end)` (below 4 GiB), for a platform with functions on its bus; `None`: no host
    /// bridge device (Linux then enumerates no PCI bus).
    pub pci_window: Option<(u64, u64)>,
}

/// Where one table of an [`AcpiTables`] image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// Its signature; the RSDP (signature `"RSD PTR "`) is listed as `"RSDP"`.
    pub signature: [u8; 4],
    /// Its guest-physical address.
    pub gpa: u64,
    /// Its length in bytes.
    pub len: usize,
}

/// An enclave's ACPI tables: one image to copy to [`AcpiTables::gpa`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    gpa: u64,
    image: Vec<u8>,
    tables: Vec<TableInfo>,
}

impl AcpiTables {
    /// The RSDP's guest-physical address (the image's first byte).
    pub fn rsdp_gpa(&self) -> u64 {
        self.gpa
    }

    /// The image: every table, at its offset from [`AcpiTables::gpa`], zero padding between.
    pub fn bytes(&self) -> &[u8] {
        &self.image
    }

    /// Guest-physical address of the image's first byte.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Length of the image in bytes.
    pub fn len(&self) -> usize {
        self.image.len()
    }

    /// Always false: an image holds at least the RSDP.
    pub fn is_empty(&self) -> bool {
        self.image.is_empty()
    }

    /// Every table in the image, in address order (RSDP, XSDT, FACP, DSDT, APIC, MCFG).
    pub fn tables(&self) -> &[TableInfo] {
        &self.tables
    }

    /// The bytes of the table with this signature (`"RSDP"` for the RSDP).
    pub fn table(&self, signature: &[u8; 4]) -> Option<&[u8]> {
        let t = self.tables.iter().find(|t| &t.signature == signature)?;
        let start = usize::try_from(t.gpa.checked_sub(self.gpa)?).ok()?;
        self.image.get(start..start.checked_add(t.len)?)
    }

    /// Copies the image into guest memory at [`AcpiTables::gpa`]; `None` if it does not fit.
    pub fn write_to(&self, mem: &mut impl GuestMemory) -> Option<()> {
        mem.write(GuestPhysAddr::new(self.gpa), &self.image)
    }
}

/// Why no tables were built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VacpiError {
    /// The layout lists no vCPU.
    NoVcpus,
    /// More vCPUs than the tables can name.
    TooManyVcpus { count: usize, max: usize },
    /// Two vCPUs have the same x2APIC id.
    DuplicateApicId { apic_id: u32 },
    /// A vCPU has x2APIC id 0xFFFF_FFFF, which means "no processor" (ACPI 6.5 §5.2.12.12).
    ReservedApicId { vcpu: usize },
    /// The OEM id has a byte that is not printable ASCII.
    OemIdNotPrintable { index: usize, byte: u8 },
    /// The image cannot start at this address.
    BadTableAddress { gpa: u64, reason: &'static str },
    /// The I/O APIC cannot be at this address.
    BadIoApicBase { base: u64, reason: &'static str },
    /// The ECAM window is unusable.
    BadEcam { base: u64, reason: &'static str },
    /// Two regions the tables describe overlap.
    Overlap {
        first: &'static str,
        second: &'static str,
    },
    /// A table or AML package would exceed its length field (cannot happen within
    /// [`MAX_VCPUS`]; reported rather than panicking).
    TooLarge { what: &'static str },
}

impl fmt::Display for VacpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVcpus => write!(f, "ACPI tables: the enclave has no vCPU"),
            Self::TooManyVcpus { count, max } => {
                write!(
                    f,
                    "ACPI tables: {count} vCPUs, at most {max} can be described"
                )
            }
            Self::DuplicateApicId { apic_id } => {
                write!(f, "ACPI tables: x2APIC id {apic_id} is given to two vCPUs")
            }
            Self::ReservedApicId { vcpu } => write!(
                f,
                "ACPI tables: vCPU {vcpu} has x2APIC id 0xffffffff, which means no processor"
            ),
            Self::OemIdNotPrintable { index, byte } => write!(
                f,
                "ACPI tables: OEM id byte {index} ({byte:#04x}) is not printable ASCII"
            ),
            Self::BadTableAddress { gpa, reason } => {
                write!(f, "ACPI tables cannot be placed at {gpa:#x}: {reason}")
            }
            Self::BadIoApicBase { base, reason } => {
                write!(f, "ACPI tables: I/O APIC base {base:#x}: {reason}")
            }
            Self::BadEcam { base, reason } => {
                write!(f, "ACPI tables: ECAM window at {base:#x}: {reason}")
            }
            Self::Overlap { first, second } => {
                write!(f, "ACPI tables: the {first} overlaps the {second}")
            }
            Self::TooLarge { what } => write!(f, "ACPI tables: the {what} is too large"),
        }
    }
}

/// Revisions (ACPI 6.5: §5.2.5.3, §5.2.8, §5.2.9, §5.2.11.1, §5.2.12; MCFG: PCI Firmware
/// Specification 3.x §4.1.2).
const RSDP_REVISION: u8 = 2;
const XSDT_REVISION: u8 = 1;
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 5;
/// 2 and above: AML integers are 64 bits (ACPI 6.5 §5.2.11.1).
const DSDT_REVISION: u8 = 2;
const MADT_REVISION: u8 = 6;
const MCFG_REVISION: u8 = 1;

/// Header fields atoll puts in every table (ACPI 6.5 §5.2.6, Table 5.4).
const OEM_TABLE_ID: &[u8; 8] = b"ATOLLENC";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: &[u8; 4] = b"ATOL";
const CREATOR_REVISION: u32 = 1;

/// The FADT's Hypervisor Vendor Identity (ACPI 6.5 §5.2.9, offset 268): the CPUID signature's
/// first eight bytes, `"AtollHV\0"`.
const HYPERVISOR_VENDOR_ID: [u8; 8] = {
    let s = atoll_abi::CPUID_SIGNATURE;
    [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]
};

/// Sizes and alignment.
const HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;
const FADT_LEN: usize = 276;
const TABLE_ALIGN: usize = 16;
const ECAM_BUS_SIZE: u64 = 1 << 20;
const PAGE: u64 = 0x1000;

/// FADT Fixed Feature Flags (ACPI 6.5 §5.2.9, Table 5.10).
mod fadt_flags {
    /// WBINVD flushes all caches correctly (required of ACPI 1.0+ processors).
    pub const WBINVD: u32 = 1 << 0;
    /// No fixed-feature power button.
    pub const PWR_BUTTON: u32 = 1 << 4;
    /// No fixed-feature sleep button.
    pub const SLP_BUTTON: u32 = 1 << 5;
    /// The reset register is supported.
    pub const RESET_REG_SUP: u32 = 1 << 10;
    /// Local APICs must use physical destination mode.
    pub const FORCE_APIC_PHYSICAL_DESTINATION_MODE: u32 = 1 << 19;
    /// Hardware-reduced ACPI (§4.1).
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
}

/// The flags atoll's FADT sets.
const FADT_FLAGS: u32 = fadt_flags::WBINVD
    | fadt_flags::PWR_BUTTON
    | fadt_flags::SLP_BUTTON
    | fadt_flags::RESET_REG_SUP
    | fadt_flags::FORCE_APIC_PHYSICAL_DESTINATION_MODE
    | fadt_flags::HW_REDUCED_ACPI;

/// IA-PC Boot Architecture Flags (ACPI 6.5 §5.2.9.3, Table 5.11). LEGACY_DEVICES (bit 0), 8042
/// (bit 1) and MSI Not Supported (bit 3) stay clear.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
const IAPC_BOOT_ARCH: u16 =
    IAPC_VGA_NOT_PRESENT | IAPC_PCIE_ASPM_CONTROLS | IAPC_CMOS_RTC_NOT_PRESENT;

/// FADT field offsets (ACPI 6.5 §5.2.9, Table 5.9).
mod fadt_off {
    pub const DSDT: usize = 40;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_REVISION: usize = 131;
    pub const X_DSDT: usize = 140;
    pub const SLEEP_CONTROL_REG: usize = 244;
    pub const SLEEP_STATUS_REG: usize = 256;
    pub const HYPERVISOR_VENDOR_ID: usize = 268;
}

/// MADT structures (ACPI 6.5 §5.2.12).
const MADT_IOAPIC: u8 = 1;
const MADT_IOAPIC_LEN: u8 = 12;
const MADT_LOCAL_X2APIC: u8 = 9;
const MADT_LOCAL_X2APIC_LEN: u8 = 16;
/// Local x2APIC flags bit 0: Enabled (§5.2.12.2, Table 5.23).
const LAPIC_ENABLED: u32 = 1 << 0;
const X2APIC_ID_NONE: u32 = u32::MAX;

/// A Generic Address Structure (ACPI 6.5 §5.2.3.2, Table 5.1).
#[derive(Clone, Copy)]
struct Gas {
    space: u8,
    bit_width: u8,
    bit_offset: u8,
    access_size: u8,
    address: u64,
}

impl Gas {
    /// Address space ID 1: System I/O.
    const SYSTEM_IO: u8 = 1;
    /// Access size 1: byte access.
    const BYTE_ACCESS: u8 = 1;

    /// An 8-bit register at an I/O port, accessed by bytes.
    const fn io_byte(port: u16) -> Self {
        Gas {
            space: Self::SYSTEM_IO,
            bit_width: 8,
            bit_offset: 0,
            access_size: Self::BYTE_ACCESS,
            address: port as u64,
        }
    }

    fn encode(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.space;
        b[1] = self.bit_width;
        b[2] = self.bit_offset;
        b[3] = self.access_size;
        b[4..].copy_from_slice(&self.address.to_le_bytes());
        b
    }
}

/// The byte that makes `bytes` sum to zero (ACPI 6.5 §5.2.6: the whole table sums to 0).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A system description table under construction: the header, then the body as pushed.
struct Sdt(Vec<u8>);

impl Sdt {
    /// The header of ACPI 6.5 §5.2.6 (Table 5.4), length and checksum filled by `finish`.
    fn new(signature: &[u8; 4], revision: u8, oem_id: &[u8; 6]) -> Self {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(signature);
        b.extend_from_slice(&[0; 4]);
        b.push(revision);
        b.push(0);
        b.extend_from_slice(oem_id);
        b.extend_from_slice(OEM_TABLE_ID);
        b.extend_from_slice(&OEM_REVISION.to_le_bytes());
        b.extend_from_slice(CREATOR_ID);
        b.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
        Sdt(b)
    }

    fn push(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// Overwrites bytes at `at` of a body already sized by `push`.
    fn put(&mut self, at: usize, bytes: &[u8]) {
        let end = at + bytes.len();
        debug_assert!(end <= self.0.len(), "field past the table's end");
        if let Some(dst) = self.0.get_mut(at..end) {
            dst.copy_from_slice(bytes);
        }
    }

    /// Sets the length and checksum.
    fn finish(mut self, what: &'static str) -> Result<Vec<u8>, VacpiError> {
        let len = u32::try_from(self.0.len()).map_err(|_| VacpiError::TooLarge { what })?;
        self.put(4, &len.to_le_bytes());
        let sum = checksum(&self.0);
        self.put(9, &[sum]);
        Ok(self.0)
    }
}

/// Hand-encoded AML (ACPI 6.5 §20.2): only what the DSDT needs.
mod aml {
    use alloc::vec::Vec;

    const ZERO_OP: u8 = 0x00;
    const ONE_OP: u8 = 0x01;
    const NAME_OP: u8 = 0x08;
    const BYTE_PREFIX: u8 = 0x0a;
    const WORD_PREFIX: u8 = 0x0b;
    const DWORD_PREFIX: u8 = 0x0c;
    const STRING_PREFIX: u8 = 0x0d;
    const QWORD_PREFIX: u8 = 0x0e;
    const SCOPE_OP: u8 = 0x10;
    const BUFFER_OP: u8 = 0x11;
    const PACKAGE_OP: u8 = 0x12;
    const EXT_OP_PREFIX: u8 = 0x5b;
    const DEVICE_OP: u8 = 0x82;

    /// The PkgLength of a body of `body_len` bytes (§20.2.4): the encoded value counts the
    /// PkgLength bytes themselves; one byte holds up to 63, otherwise the lead byte's bits 7:6
    /// say how many bytes follow, its bits 3:0 are the low nibble and each following byte the
    /// next eight bits (at most 2^28 - 1 in all).
    pub fn pkg_length(body_len: usize) -> Option<Vec<u8>> {
        for follow in 0..4usize {
            let total = body_len.checked_add(1 + follow)?;
            let limit = if follow == 0 {
                1 << 6
            } else {
                1usize << (4 + 8 * follow)
            };
            if total >= limit {
                continue;
            }
            if follow == 0 {
                return Some(alloc::vec![total as u8]);
            }
            let mut out = Vec::with_capacity(1 + follow);
            out.push(((follow as u8) << 6) | (total & 0xf) as u8);
            for i in 0..follow {
                out.push((total >> (4 + 8 * i)) as u8);
            }
            return Some(out);
        }
        None
    }

    /// `op [prefix] PkgLength body`.
    fn with_pkg_length(op: &[u8], body: &[u8]) -> Option<Vec<u8>> {
        let len = pkg_length(body.len())?;
        let mut out = Vec::with_capacity(op.len() + len.len() + body.len());
        out.extend_from_slice(op);
        out.extend_from_slice(&len);
        out.extend_from_slice(body);
        Some(out)
    }

    /// The shortest ComputationalData for `v` (§20.2.3): ZeroOp, OneOp, or a prefixed
    /// little-endian constant, as iasl emits them.
    pub fn integer(v: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        match v {
            0 => out.push(ZERO_OP),
            1 => out.push(ONE_OP),
            2..=0xff => out.extend_from_slice(&[BYTE_PREFIX, v as u8]),
            0x100..=0xffff => {
                out.push(WORD_PREFIX);
                out.extend_from_slice(&(v as u16).to_le_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(DWORD_PREFIX);
                out.extend_from_slice(&(v as u32).to_le_bytes());
            }
            _ => {
                out.push(QWORD_PREFIX);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// `EisaId("PNPxxxx")` as an integer (§6.1.5): three letters of five bits each (`A` = 1)
    /// and four hex digits, stored big-endian in a DWordConst.
    pub fn eisa_id(id: &[u8; 7]) -> Option<Vec<u8>> {
        let letter = |b: u8| b.is_ascii_uppercase().then(|| u32::from(b - b'@'));
        let hex = |b: u8| char::from(b).to_digit(16);
        let mut v = (letter(id[0])? << 26) | (letter(id[1])? << 21) | (letter(id[2])? << 16);
        for (i, b) in id[3..].iter().enumerate() {
            v |= hex(*b)? << (12 - 4 * i);
        }
        let mut out = alloc::vec![DWORD_PREFIX];
        out.extend_from_slice(&v.to_be_bytes());
        Some(out)
    }

    /// A String constant (§20.2.3): ASCII, NUL-terminated.
    pub fn string(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len() + 2);
        out.push(STRING_PREFIX);
        out.extend_from_slice(s);
        out.push(0);
        out
    }

    /// `Name(seg, value)` (§20.2.5.1: DefName).
    pub fn name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + value.len());
        out.push(NAME_OP);
        out.extend_from_slice(seg);
        out.extend_from_slice(value);
        out
    }

    /// `Package(n) { elements }` (§20.2.5.4: DefPackage, NumElements one byte).
    pub fn package(elements: &[Vec<u8>]) -> Option<Vec<u8>> {
        let mut body = alloc::vec![u8::try_from(elements.len()).ok()?];
        for e in elements {
            body.extend_from_slice(e);
        }
        with_pkg_length(&[PACKAGE_OP], &body)
    }

    /// `Buffer(n) { data }` (§20.2.5.4: DefBuffer).
    pub fn buffer(data: &[u8]) -> Option<Vec<u8>> {
        let mut body = integer(data.len() as u64);
        body.extend_from_slice(data);
        with_pkg_length(&[BUFFER_OP], &body)
    }

    /// `Device(seg) { body }` (§20.2.5.2: DefDevice).
    pub fn device(seg: &[u8; 4], body: &[u8]) -> Option<Vec<u8>> {
        let mut inner = seg.to_vec();
        inner.extend_from_slice(body);
        with_pkg_length(&[EXT_OP_PREFIX, DEVICE_OP], &inner)
    }

    /// `Scope(path) { body }` (§20.2.5.1: DefScope); `path` is an encoded NameString.
    pub fn scope(path: &[u8], body: &[u8]) -> Option<Vec<u8>> {
        let mut inner = path.to_vec();
        inner.extend_from_slice(body);
        with_pkg_length(&[SCOPE_OP], &inner)
    }
}

/// Resource descriptors for `_CRS` (ACPI 6.5 §6.4.2 small, §6.4.3 large).
mod resource {
    /// Address space resource types (§6.4.3.5, Table 6.47).
    pub const MEMORY: u8 = 0;
    /// I/O space.
    pub const IO: u8 = 1;
    /// Bus numbers.
    pub const BUS: u8 = 2;
    /// General flags of a bridge's window: produced (bit 0 clear), positive decode, minimum
    /// and maximum fixed (bits 2 and 3).
    const PRODUCER_FIXED: u8 = 0x0c;

    /// Word Address Space Descriptor (§6.4.3.5.3): `[min, max]` of `kind`, no translation;
    /// `type_flags` per kind (I/O: 3 = the entire range).
    pub fn word(kind: u8, type_flags: u8, min: u16, max: u16) -> [u8; 16] {
        let len = max.wrapping_sub(min).wrapping_add(1);
        let mut d = [0u8; 16];
        d[..6].copy_from_slice(&[0x88, 0x0d, 0x00, kind, PRODUCER_FIXED, type_flags]);
        for (i, v) in [0u16, min, max, 0, len].into_iter().enumerate() {
            d[6 + 2 * i..8 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        d
    }

    /// DWord Address Space Descriptor (§6.4.3.5.2) for memory `[min, max]`: read-write,
    /// non-cacheable (type flags 0x01), no translation.
    pub fn dword_memory(min: u32, max: u32) -> [u8; 26] {
        let len = max.wrapping_sub(min).wrapping_add(1);
        let mut d = [0u8; 26];
        d[..6].copy_from_slice(&[0x87, 0x17, 0x00, MEMORY, PRODUCER_FIXED, 0x01]);
        for (i, v) in [0u32, min, max, 0, len].into_iter().enumerate() {
            d[6 + 4 * i..10 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        d
    }

    /// I/O Port Descriptor (§6.4.2.5): 16-bit decode, fixed base, `len` ports.
    pub fn io(base: u16, len: u8) -> [u8; 8] {
        let [lo, hi] = base.to_le_bytes();
        [0x47, 0x01, lo, hi, lo, hi, 0x01, len]
    }

    /// IRQ Descriptor without flags (§6.4.2.1): active-high, edge, exclusive.
    pub fn irq(irq: u8) -> [u8; 3] {
        let [lo, hi] = (1u16 << (irq & 15)).to_le_bytes();
        [0x22, lo, hi]
    }

    /// End Tag (§6.4.2.9); checksum 0 means "treat as correct".
    pub const END: [u8; 2] = [0x79, 0x00];
}

fn too_large(what: &'static str) -> VacpiError {
    VacpiError::TooLarge { what }
}

/// The DSDT's processor device name for UID `uid` (`C000`–`CFFF`).
fn processor_name(uid: usize) -> [u8; 4] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [
        b'C',
        HEX[(uid >> 8) & 15],
        HEX[(uid >> 4) & 15],
        HEX[uid & 15],
    ]
}

/// The DSDT (ACPI 6.5 §5.2.11.1):
///
/// ```text
/// Name (_S5, Package (2) { 5, 5 })
/// Scope (\_SB) {
///     Device (C000) { Name (_HID, "ACPI0007") Name (_UID, 0) }   // one per vCPU
///     Device (COM1) {
///         Name (_HID, EisaId ("PNP0501"))
///         Name (_UID, 0)
///         Name (_CRS, ResourceTemplate () { IO (Decode16, 0x3F8, 0x3F8, 1, 8) IRQNoFlags () {4} })
///     }
/// }
/// ```
///
/// With a PCI window, also (Linux enumerates a root bus only from such a device):
///
/// ```text
///     Device (PCI0) {
///         Name (_HID, EisaId ("PNP0A03"))    // a PCI host bridge (conventional: no _OSC owed)
///         Name (_UID, 0)
///         Name (_BBN, 0)
///         Name (_CRS, ResourceTemplate () {
///             WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0, 0, 1)
///             IO (Decode16, 0xCF8, 0xCF8, 1, 8)
///             WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,
///                     0, 0x0000, 0x0CF7, 0, 0x0CF8)
///             WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,
///                     0, 0x0D00, 0xFFFF, 0, 0xF300)
///             DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable,
///                          ReadWrite, 0, WINDOW_START, WINDOW_END - 1, 0, WINDOW_LEN)
///         })
///     }
/// ```
fn dsdt(
    vcpus: usize,
    oem_id: &[u8; 6],
    pci_window: Option<(u64, u64)>,
) -> Result<Vec<u8>, VacpiError> {
    let s5 = aml::package(&[
        aml::integer(S5_SLP_TYP.into()),
        aml::integer(S5_SLP_TYP.into()),
    ])
    .ok_or(too_large("\\_S5 package"))?;

    let mut sb = Vec::new();
    for uid in 0..vcpus {
        let mut body = aml::name(b"_HID", &aml::string(b"ACPI0007"));
        body.extend(aml::name(b"_UID", &aml::integer(uid as u64)));
        sb.extend(aml::device(&processor_name(uid), &body).ok_or(too_large("processor device"))?);
    }

    let mut crs = Vec::new();
    crs.extend_from_slice(&resource::io(COM1_PORT, 8));
    crs.extend_from_slice(&resource::irq(COM1_IRQ));
    crs.extend_from_slice(&resource::END);
    let mut com1 = aml::name(
        b"_HID",
        &aml::eisa_id(b"PNP0501").ok_or(too_large("EISA id"))?,
    );
    com1.extend(aml::name(b"_UID", &aml::integer(0)));
    com1.extend(aml::name(
        b"_CRS",
        &aml::buffer(&crs).ok_or(too_large("COM1 _CRS"))?,
    ));
    sb.extend(aml::device(b"COM1", &com1).ok_or(too_large("COM1 device"))?);

    if let Some((start, end)) = pci_window {
        let (Ok(min), Ok(max)) = (u32::try_from(start), u32::try_from(end.saturating_sub(1)))
        else {
            return Err(too_large("PCI window above 4 GiB"));
        };
        let mut crs = Vec::new();
        crs.extend_from_slice(&resource::word(resource::BUS, 0, 0, 0));
        crs.extend_from_slice(&resource::io(0xcf8, 8));
        crs.extend_from_slice(&resource::word(resource::IO, 3, 0, 0xcf7));
        crs.extend_from_slice(&resource::word(resource::IO, 3, 0xd00, 0xffff));
        crs.extend_from_slice(&resource::dword_memory(min, max));
        crs.extend_from_slice(&resource::END);
        let mut pci = aml::name(
            b"_HID",
            &aml::eisa_id(b"PNP0A03").ok_or(too_large("EISA id"))?,
        );
        pci.extend(aml::name(b"_UID", &aml::integer(0)));
        pci.extend(aml::name(b"_BBN", &aml::integer(0)));
        pci.extend(aml::name(
            b"_CRS",
            &aml::buffer(&crs).ok_or(too_large("PCI0 _CRS"))?,
        ));
        sb.extend(aml::device(b"PCI0", &pci).ok_or(too_large("PCI0 device"))?);
    }

    let mut t = Sdt::new(b"DSDT", DSDT_REVISION, oem_id);
    t.push(&aml::name(b"_S5_", &s5));
    // At the DSDT's top level `_SB_` is `\_SB_`; iasl drops the root prefix too.
    t.push(&aml::scope(b"_SB_", &sb).ok_or(too_large("\\_SB scope"))?);
    t.finish("DSDT")
}

/// The MADT (ACPI 6.5 §5.2.12): local APIC address, flags 0 (no PCAT_COMPAT: there is no
/// 8259), a Local x2APIC structure (§5.2.12.12) per vCPU, then the I/O APIC (§5.2.12.3).
fn madt(layout: &PlatformLayout, ioapic_base: u32) -> Result<Vec<u8>, VacpiError> {
    let mut t = Sdt::new(b"APIC", MADT_REVISION, &layout.oem_id);
    t.push(&(LOCAL_APIC_BASE as u32).to_le_bytes());
    t.push(&0u32.to_le_bytes());
    for (uid, id) in layout.vcpu_apic_ids.iter().enumerate() {
        let uid = u32::try_from(uid).map_err(|_| too_large("MADT"))?;
        t.push(&[MADT_LOCAL_X2APIC, MADT_LOCAL_X2APIC_LEN, 0, 0])
            .push(&id.to_le_bytes())
            .push(&LAPIC_ENABLED.to_le_bytes())
            .push(&uid.to_le_bytes());
    }
    t.push(&[MADT_IOAPIC, MADT_IOAPIC_LEN, layout.ioapic_id, 0])
        .push(&ioapic_base.to_le_bytes())
        .push(&0u32.to_le_bytes());
    t.finish("MADT")
}

/// The MCFG (PCI Firmware Specification 3.x §4.1.2): 8 reserved bytes, then one allocation
/// (base, segment 0, first bus 0, last bus, 4 reserved bytes).
fn mcfg(layout: &PlatformLayout) -> Result<Vec<u8>, VacpiError> {
    let mut t = Sdt::new(b"MCFG", MCFG_REVISION, &layout.oem_id);
    t.push(&[0; 8])
        .push(&layout.ecam_base.to_le_bytes())
        .push(&0u16.to_le_bytes())
        .push(&[0, layout.ecam_buses.saturating_sub(1)])
        .push(&[0; 4]);
    t.finish("MCFG")
}

/// The FADT (ACPI 6.5 §5.2.9, Table 5.9), hardware-reduced: every PM1/PM2/GPE/PM-timer field,
/// SCI_INT and SMI_CMD stay zero (§4.1: OSPM ignores them), and so do both FACS addresses (with
/// HW_REDUCED_ACPI set that means there is no FACS).
fn fadt(oem_id: &[u8; 6], dsdt_gpa: u64) -> Result<Vec<u8>, VacpiError> {
    let mut t = Sdt::new(b"FACP", FADT_REVISION, oem_id);
    t.push(&[0; FADT_LEN - HEADER_LEN]);
    // The 32-bit field too, for readers that take it; equal to X_DSDT so ACPICA sees no
    // mismatch, and 0 when the DSDT is above 4 GiB.
    t.put(
        fadt_off::DSDT,
        &u32::try_from(dsdt_gpa).unwrap_or(0).to_le_bytes(),
    );
    t.put(fadt_off::IAPC_BOOT_ARCH, &IAPC_BOOT_ARCH.to_le_bytes());
    t.put(fadt_off::FLAGS, &FADT_FLAGS.to_le_bytes());
    t.put(fadt_off::RESET_REG, &Gas::io_byte(RESET_PORT).encode());
    t.put(fadt_off::RESET_VALUE, &[RESET_VALUE]);
    t.put(fadt_off::MINOR_REVISION, &[FADT_MINOR_REVISION]);
    t.put(fadt_off::X_DSDT, &dsdt_gpa.to_le_bytes());
    t.put(
        fadt_off::SLEEP_CONTROL_REG,
        &Gas::io_byte(SLEEP_CONTROL_PORT).encode(),
    );
    t.put(
        fadt_off::SLEEP_STATUS_REG,
        &Gas::io_byte(SLEEP_STATUS_PORT).encode(),
    );
    t.put(fadt_off::HYPERVISOR_VENDOR_ID, &HYPERVISOR_VENDOR_ID);
    t.finish("FADT")
}

/// The XSDT (ACPI 6.5 §5.2.8): 64-bit addresses of every table but the DSDT.
fn xsdt(oem_id: &[u8; 6], entries: &[u64]) -> Result<Vec<u8>, VacpiError> {
    let mut t = Sdt::new(b"XSDT", XSDT_REVISION, oem_id);
    for e in entries {
        t.push(&e.to_le_bytes());
    }
    t.finish("XSDT")
}

/// The RSDP (ACPI 6.5 §5.2.5.3, Table 5.3): revision 2, no RSDT, the XSDT's address, the
/// checksum of its first 20 bytes and the extended checksum of all 36.
fn rsdp(oem_id: &[u8; 6], xsdt_gpa: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_LEN);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0);
    r.extend_from_slice(oem_id);
    r.push(RSDP_REVISION);
    r.extend_from_slice(&0u32.to_le_bytes());
    r.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_gpa.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// `[start, start + len)`, `None` on overflow.
fn range(start: u64, len: u64) -> Option<(u64, u64)> {
    Some((start, start.checked_add(len)?))
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Checks everything about `layout` that does not depend on where the tables go; returns the
/// I/O APIC base as its 32-bit MADT field and the ECAM window's range.
fn check_layout(layout: &PlatformLayout) -> Result<(u32, (u64, u64)), VacpiError> {
    let ids = &layout.vcpu_apic_ids;
    if ids.is_empty() {
        return Err(VacpiError::NoVcpus);
    }
    if ids.len() > MAX_VCPUS {
        return Err(VacpiError::TooManyVcpus {
            count: ids.len(),
            max: MAX_VCPUS,
        });
    }
    if let Some(vcpu) = ids.iter().position(|&id| id == X2APIC_ID_NONE) {
        return Err(VacpiError::ReservedApicId { vcpu });
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(VacpiError::DuplicateApicId { apic_id: w[0] });
    }
    if let Some((index, &byte)) = layout
        .oem_id
        .iter()
        .enumerate()
        .find(|(_, b)| !(0x20..=0x7e).contains(*b))
    {
        return Err(VacpiError::OemIdNotPrintable { index, byte });
    }

    let io_base = layout.ioapic_base;
    let bad_io = |reason| VacpiError::BadIoApicBase {
        base: io_base,
        reason,
    };
    if io_base == 0 {
        return Err(bad_io("it is zero"));
    }
    let ioapic = u32::try_from(io_base).map_err(|_| bad_io("the MADT field is 32 bits"))?;

    let ecam = layout.ecam_base;
    let bad_ecam = |reason| VacpiError::BadEcam { base: ecam, reason };
    if layout.ecam_buses == 0 {
        return Err(bad_ecam("it decodes no bus"));
    }
    if ecam == 0 {
        return Err(bad_ecam("the base is zero"));
    }
    if ecam & (ECAM_BUS_SIZE - 1) != 0 {
        return Err(bad_ecam("the base is not 1 MiB aligned"));
    }
    let ecam_range = range(ecam, u64::from(layout.ecam_buses) * ECAM_BUS_SIZE)
        .ok_or(bad_ecam("it runs past the end of the address space"))?;

    let lapic = (LOCAL_APIC_BASE, LOCAL_APIC_BASE + PAGE);
    let ioapic_page = (io_base & !(PAGE - 1), (io_base & !(PAGE - 1)) + PAGE);
    if overlaps(ioapic_page, lapic) {
        return Err(VacpiError::Overlap {
            first: "I/O APIC",
            second: "local APIC",
        });
    }
    for (what, r) in [("I/O APIC", ioapic_page), ("local APIC", lapic)] {
        if overlaps(ecam_range, r) {
            return Err(VacpiError::Overlap {
                first: "ECAM window",
                second: what,
            });
        }
    }
    Ok((ioapic, ecam_range))
}

fn align_up(n: usize) -> usize {
    n.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Builds every table for tables placed from `gpa` upward (the RSDP first, 16-byte aligned),
/// returning the image to copy and the RSDP's GPA.
///
/// `gpa` must be non-zero (Linux reads an RSDP address of 0 as "none") and 16-byte aligned;
/// the image must not overlap the ECAM window, the I/O APIC or the local APIC.
pub fn build(layout: &PlatformLayout, gpa: u64) -> Result<AcpiTables, VacpiError> {
    let (ioapic, ecam_range) = check_layout(layout)?;
    let bad_gpa = |reason| VacpiError::BadTableAddress { gpa, reason };
    if gpa == 0 {
        return Err(bad_gpa("an RSDP address of 0 means none"));
    }
    if gpa & (TABLE_ALIGN as u64 - 1) != 0 {
        return Err(bad_gpa("the RSDP must be 16-byte aligned"));
    }

    let oem = &layout.oem_id;
    let dsdt = dsdt(layout.vcpu_apic_ids.len(), oem, layout.pci_window)?;
    let madt = madt(layout, ioapic)?;
    let mcfg = mcfg(layout)?;
    let xsdt_len = HEADER_LEN + 3 * 8;

    // Offsets in the image, in address order.
    let rsdp_at = 0;
    let xsdt_at = align_up(rsdp_at + RSDP_LEN);
    let fadt_at = align_up(xsdt_at + xsdt_len);
    let dsdt_at = align_up(fadt_at + FADT_LEN);
    let madt_at = align_up(dsdt_at + dsdt.len());
    let mcfg_at = align_up(madt_at + madt.len());
    let total = mcfg_at + mcfg.len();

    let image_range = range(gpa, total as u64)
        .ok_or(bad_gpa("the tables run past the end of the address space"))?;
    let lapic = (LOCAL_APIC_BASE, LOCAL_APIC_BASE + PAGE);
    let ioapic_page = (
        layout.ioapic_base & !(PAGE - 1),
        (layout.ioapic_base & !(PAGE - 1)) + PAGE,
    );
    for (what, r) in [
        ("ECAM window", ecam_range),
        ("I/O APIC", ioapic_page),
        ("local APIC", lapic),
    ] {
        if overlaps(image_range, r) {
            return Err(VacpiError::Overlap {
                first: "ACPI tables",
                second: what,
            });
        }
    }
    let at = |offset: usize| gpa + offset as u64;

    let fadt = fadt(oem, at(dsdt_at))?;
    let xsdt = xsdt(oem, &[at(fadt_at), at(madt_at), at(mcfg_at)])?;
    debug_assert_eq!(xsdt.len(), xsdt_len);
    let rsdp = rsdp(oem, at(xsdt_at));

    let mut image = vec![0u8; total];
    let mut tables = Vec::with_capacity(6);
    for (signature, offset, bytes) in [
        (*b"RSDP", rsdp_at, &rsdp),
        (*b"XSDT", xsdt_at, &xsdt),
        (*b"FACP", fadt_at, &fadt),
        (*b"DSDT", dsdt_at, &dsdt),
        (*b"APIC", madt_at, &madt),
        (*b"MCFG", mcfg_at, &mcfg),
    ] {
        let dst = image
            .get_mut(offset..offset + bytes.len())
            .ok_or(too_large("image"))?;
        dst.copy_from_slice(bytes);
        tables.push(TableInfo {
            signature,
            gpa: at(offset),
            len: bytes.len(),
        });
    }
    Ok(AcpiTables { gpa, image, tables })
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_vcpu::SliceMemory;

    const BASE: u64 = 0xe_0000;

    fn layout(ids: &[u32]) -> PlatformLayout {
        PlatformLayout {
            vcpu_apic_ids: ids.to_vec(),
            ioapic_id: 2,
            ioapic_base: 0xfec0_0000,
            ecam_base: 0xb000_0000,
            ecam_buses: 4,
            oem_id: *b"ATOLL ",
            pci_window: None,
        }
    }

    fn built(ids: &[u32]) -> AcpiTables {
        build(&layout(ids), BASE).unwrap()
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn every_table_sums_to_zero_and_its_header_is_right() {
        let t = built(&[0, 1, 2, 3]);
        let names: Vec<&[u8; 4]> = t.tables().iter().map(|i| &i.signature).collect();
        assert_eq!(
            names,
            [b"RSDP", b"XSDT", b"FACP", b"DSDT", b"APIC", b"MCFG"]
        );
        for info in t.tables().iter().filter(|i| &i.signature != b"RSDP") {
            let b = t.table(&info.signature).unwrap();
            let sig = String::from_utf8_lossy(&info.signature);
            assert_eq!(&b[0..4], &info.signature);
            assert_eq!(u32_at(b, 4) as usize, b.len(), "{sig} length");
            assert_eq!(sum(b), 0, "{sig} checksum");
            assert_eq!(&b[10..16], b"ATOLL ", "{sig} OEM id");
            assert_eq!(&b[16..24], OEM_TABLE_ID, "{sig} OEM table id");
            assert_eq!(&b[28..32], CREATOR_ID, "{sig} creator");
            let revision = match &info.signature {
                b"XSDT" => 1,
                b"FACP" => 6,
                b"DSDT" => 2,
                b"APIC" => 6,
                b"MCFG" => 1,
                _ => unreachable!(),
            };
            assert_eq!(b[8], revision, "{sig} revision");
            assert_eq!(info.gpa % 16, 0, "{sig} alignment");
        }
    }

    #[test]
    fn rsdp_has_both_checksums_and_points_at_the_xsdt() {
        let t = built(&[0]);
        let r = t.table(b"RSDP").unwrap();
        assert_eq!(r.len(), 36);
        assert_eq!(t.rsdp_gpa(), BASE);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(r), 0, "extended checksum");
        assert_eq!(&r[9..15], b"ATOLL ");
        assert_eq!(r[15], 2);
        assert_eq!(u32_at(r, 16), 0, "no RSDT");
        assert_eq!(u32_at(r, 20), 36);
        let xsdt = t.tables().iter().find(|i| &i.signature == b"XSDT").unwrap();
        assert_eq!(u64_at(r, 24), xsdt.gpa);
    }

    #[test]
    fn xsdt_lists_facp_apic_mcfg_and_the_fadt_points_at_the_dsdt() {
        let t = built(&[0, 1]);
        let gpa_of = |s: &[u8; 4]| t.tables().iter().find(|i| &i.signature == s).unwrap().gpa;
        let x = t.table(b"XSDT").unwrap();
        let entries: Vec<u64> = x[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        assert_eq!(entries, [gpa_of(b"FACP"), gpa_of(b"APIC"), gpa_of(b"MCFG")]);
        let f = t.table(b"FACP").unwrap();
        assert_eq!(u64_at(f, 140), gpa_of(b"DSDT"), "X_DSDT");
        assert_eq!(u64::from(u32_at(f, 40)), gpa_of(b"DSDT"), "DSDT");
        // Every table lies inside the returned range.
        let end = t.gpa() + t.len() as u64;
        for i in t.tables() {
            assert!(i.gpa >= t.gpa() && i.gpa + i.len as u64 <= end, "{:?}", i);
        }
        let last = t.tables().last().unwrap();
        assert_eq!(last.gpa + last.len as u64, end, "no trailing padding");
    }

    #[test]
    fn fadt_is_hardware_reduced_with_reset_and_sleep_registers() {
        let t = built(&[0]);
        let f = t.table(b"FACP").unwrap();
        assert_eq!(f.len(), 276);
        assert_eq!(f[131], 5, "FADT minor revision");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_ne!(flags & (1 << 19), 0, "FORCE_APIC_PHYSICAL_DESTINATION_MODE");
        let io = |port: u16| Gas::io_byte(port).encode();
        assert_eq!(f[116..128], io(0x604), "RESET_REG");
        assert_eq!(f[128], 0x01, "RESET_VALUE");
        assert_eq!(f[244..256], io(0x600), "SLEEP_CONTROL_REG");
        assert_eq!(f[256..268], io(0x601), "SLEEP_STATUS_REG");
        assert_eq!(
            &f[244..248],
            &[1, 8, 0, 1],
            "System I/O, 8 bits, byte access"
        );
        assert_eq!(&f[268..276], b"AtollHV\0");
        assert_eq!(
            u16_at(f, 109),
            0b11_0100,
            "no VGA, no ASPM changes, no CMOS RTC"
        );
        // Hardware-reduced: no FACS, SCI, SMI port, PM1/PM2/GPE/PM timer blocks.
        assert!(f[36..40].iter().all(|&b| b == 0), "FIRMWARE_CTRL");
        assert!(f[46..109].iter().all(|&b| b == 0), "fixed-hardware fields");
        assert!(f[148..244].iter().all(|&b| b == 0), "X_ blocks");
        assert!(f[132..140].iter().all(|&b| b == 0), "X_FIRMWARE_CTRL");
    }

    #[test]
    fn madt_has_one_x2apic_per_vcpu_and_one_ioapic() {
        let t = built(&[0, 7, 300, 0x1_0000]);
        let m = t.table(b"APIC").unwrap();
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40), 0, "no PCAT_COMPAT");
        assert_eq!(m.len(), 44 + 4 * 16 + 12);
        for (uid, id) in [0u32, 7, 300, 0x1_0000].iter().enumerate() {
            let e = &m[44 + uid * 16..44 + (uid + 1) * 16];
            assert_eq!(&e[0..4], &[9, 16, 0, 0]);
            assert_eq!(u32_at(e, 4), *id);
            assert_eq!(u32_at(e, 8), 1, "enabled");
            assert_eq!(u32_at(e, 12), uid as u32);
        }
        let io = &m[44 + 64..];
        assert_eq!(io, [1, 12, 2, 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0]);
    }

    #[test]
    fn mcfg_has_one_allocation() {
        let t = built(&[0]);
        let m = t.table(b"MCFG").unwrap();
        assert_eq!(m.len(), 60);
        assert_eq!(u64_at(m, 36), 0, "reserved");
        assert_eq!(u64_at(m, 44), 0xb000_0000);
        assert_eq!(u16_at(m, 52), 0, "segment");
        assert_eq!((m[54], m[55]), (0, 3), "buses 0..=3");
        assert_eq!(u32_at(m, 56), 0);
    }

    #[test]
    fn dsdt_bytes_for_one_vcpu() {
        let t = built(&[0]);
        let d = t.table(b"DSDT").unwrap();
        let mut want: Vec<u8> = Vec::new();
        // Name (_S5, Package (2) { 5, 5 })
        want.extend(b"\x08_S5_\x12\x06\x02\x0a\x05\x0a\x05");
        // Scope (\_SB) { Device (C000) {...} Device (COM1) {...} }
        let c000: &[u8] = b"\x5b\x82\x1aC000\x08_HID\x0dACPI0007\x00\x08_UID\x00";
        let crs: &[u8] =
            b"\x08_CRS\x11\x10\x0a\x0d\x47\x01\xf8\x03\xf8\x03\x01\x08\x22\x10\x00\x79\x00";
        let com1_body = [&b"COM1\x08_HID\x0c\x41\xd0\x05\x01\x08_UID\x00"[..], crs].concat();
        let mut com1 = vec![0x5b, 0x82, (com1_body.len() + 1) as u8];
        com1.extend(&com1_body);
        let scope_body = [&b"_SB_"[..], c000, &com1].concat();
        assert_eq!(scope_body.len(), 77);
        // PkgLength 77 + 2 = 0x4f: two bytes, lead 0x40 | 0xf, then 0x04.
        want.extend([0x10, 0x4f, 0x04]);
        want.extend(&scope_body);
        assert_eq!(&d[36..], &want[..]);
    }

    #[test]
    fn a_pci_window_adds_a_host_bridge_with_its_resources() {
        let mut l = layout(&[0]);
        l.pci_window = Some((0xe100_0000, 0xfe00_0000));
        let t = build(&l, 0xe0000).unwrap();
        let d = t.table(b"DSDT").unwrap();
        let at = |pat: &[u8]| d.windows(pat.len()).position(|w| w == pat);
        let pci = at(b"PCI0").expect("a PCI0 device");
        // _HID EisaId("PNP0A03") = 0x030AD041 big-endian.
        assert!(at(b"_HID\x0c\x41\xd0\x0a\x03").is_some_and(|h| h > pci));
        // Bus 0..=0, the configuration ports, I/O around them, the memory window.
        let bus = [0x88, 0x0d, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert!(at(&bus).is_some_and(|b| b > pci));
        assert!(at(&[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]).is_some());
        let mem = at(&[0x87, 0x17, 0, 0, 0x0c, 0x01]).expect("a DWordMemory window");
        let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
        assert_eq!(
            (u32_at(mem + 10), u32_at(mem + 14), u32_at(mem + 22)),
            (0xe100_0000, 0xfdff_ffff, 0x1d00_0000)
        );
        // Without a window the DSDT has no host bridge (the other tests' bytes).
        let plain = built(&[0]);
        let p = plain.table(b"DSDT").unwrap();
        assert!(!p.windows(4).any(|w| w == b"PCI0"));
        // A window above 4 GiB cannot be described in a DWord descriptor.
        l.pci_window = Some((0x1_0000_0000, 0x1_1000_0000));
        assert!(build(&l, 0xe0000).is_err());
    }

    #[test]
    fn aml_package_lengths() {
        assert_eq!(aml::pkg_length(0), Some(vec![0x01]));
        assert_eq!(aml::pkg_length(62), Some(vec![0x3f]));
        // 63 + 2 = 65 = 0x41: lead 0x41 (one byte follows, nibble 1), then 0x04.
        assert_eq!(aml::pkg_length(63), Some(vec![0x41, 0x04]));
        assert_eq!(aml::pkg_length(4093), Some(vec![0x4f, 0xff]));
        assert_eq!(aml::pkg_length(4094), Some(vec![0x81, 0x00, 0x01]));
        assert_eq!(
            aml::pkg_length((1 << 28) - 5),
            Some(vec![0xcf, 0xff, 0xff, 0xff])
        );
        assert_eq!(aml::pkg_length((1 << 28) - 4), None);
        assert_eq!(aml::integer(0), [0x00]);
        assert_eq!(aml::integer(1), [0x01]);
        assert_eq!(aml::integer(0x1234), [0x0b, 0x34, 0x12]);
        assert_eq!(aml::integer(0x1_0000), [0x0c, 0, 0, 1, 0]);
        assert_eq!(aml::integer(1 << 32), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            aml::eisa_id(b"PNP0501"),
            Some(vec![0x0c, 0x41, 0xd0, 0x05, 0x01])
        );
        assert_eq!(
            aml::eisa_id(b"PNP0A08"),
            Some(vec![0x0c, 0x41, 0xd0, 0x0a, 0x08])
        );
        assert_eq!(aml::eisa_id(b"pnp0501"), None);
        assert_eq!(processor_name(0), *b"C000");
        assert_eq!(processor_name(0xabc), *b"CABC");
    }

    #[test]
    fn many_vcpus_use_long_package_lengths() {
        let ids: Vec<u32> = (0..MAX_VCPUS as u32).map(|i| i * 2).collect();
        let t = build(&layout(&ids), BASE).unwrap();
        let d = t.table(b"DSDT").unwrap();
        assert_eq!(sum(d), 0);
        let last = t.tables().last().unwrap();
        assert_eq!(&last.signature, b"MCFG");
        let m = t.table(b"APIC").unwrap();
        assert_eq!(m.len(), 44 + MAX_VCPUS * 16 + 12);
        assert!(d.windows(4).any(|w| w == b"CFFF"));
    }

    #[test]
    fn sleep_control_writes_decode() {
        assert_eq!(S5_SLEEP_CONTROL_VALUE, 0x34);
        assert_eq!(requested_sleep_type(0x34), Some(5));
        assert_eq!(requested_sleep_type(0x14), None, "SLP_EN clear");
        assert_eq!(requested_sleep_type(0x20), Some(0));
        assert_eq!(requested_sleep_type(0xff), Some(7));
    }

    #[test]
    fn write_to_copies_the_image_at_its_gpa() {
        let t = built(&[0, 1]);
        let mut ram = vec![0u8; (BASE as usize) + t.len()];
        assert!(t.write_to(&mut SliceMemory(&mut ram)).is_some());
        assert_eq!(&ram[BASE as usize..], t.bytes());
        let mut small = vec![0u8; BASE as usize + t.len() - 1];
        assert!(t.write_to(&mut SliceMemory(&mut small)).is_none());
    }

    #[test]
    fn bad_layouts_are_named() {
        let err = |l: PlatformLayout| build(&l, BASE).unwrap_err();
        assert_eq!(err(layout(&[])), VacpiError::NoVcpus);
        let too_many: Vec<u32> = (0..=MAX_VCPUS as u32).collect();
        assert_eq!(
            err(layout(&too_many)),
            VacpiError::TooManyVcpus {
                count: MAX_VCPUS + 1,
                max: MAX_VCPUS
            }
        );
        assert_eq!(
            err(layout(&[0, 5, 3, 5])),
            VacpiError::DuplicateApicId { apic_id: 5 }
        );
        assert_eq!(
            err(layout(&[0, u32::MAX])),
            VacpiError::ReservedApicId { vcpu: 1 }
        );
        let mut l = layout(&[0]);
        l.oem_id = *b"ATO\0LL";
        assert_eq!(err(l), VacpiError::OemIdNotPrintable { index: 3, byte: 0 });

        let mut l = layout(&[0]);
        l.ioapic_base = 0x1_0000_0000;
        assert!(matches!(err(l), VacpiError::BadIoApicBase { .. }));
        let mut l = layout(&[0]);
        l.ioapic_base = 0;
        assert!(matches!(err(l), VacpiError::BadIoApicBase { .. }));
        let mut l = layout(&[0]);
        l.ioapic_base = 0xfee0_0000;
        assert_eq!(
            err(l),
            VacpiError::Overlap {
                first: "I/O APIC",
                second: "local APIC"
            }
        );

        let mut l = layout(&[0]);
        l.ecam_buses = 0;
        assert!(matches!(err(l), VacpiError::BadEcam { .. }));
        let mut l = layout(&[0]);
        l.ecam_base = 0xb008_0000;
        assert!(matches!(err(l), VacpiError::BadEcam { .. }));
        let mut l = layout(&[0]);
        l.ecam_base = 0xffff_ffff_fff0_0000;
        assert!(matches!(err(l), VacpiError::BadEcam { .. }));
        let mut l = layout(&[0]);
        l.ecam_base = 0xfec0_0000;
        assert_eq!(
            err(l),
            VacpiError::Overlap {
                first: "ECAM window",
                second: "I/O APIC"
            }
        );

        // Every error says what is wrong.
        let msg = VacpiError::DuplicateApicId { apic_id: 5 }.to_string();
        assert!(msg.contains("x2APIC id 5"), "{msg}");
    }

    #[test]
    fn bad_table_addresses_are_refused() {
        let l = layout(&[0]);
        let reason = |gpa| match build(&l, gpa) {
            Err(VacpiError::BadTableAddress { reason, .. }) => reason,
            other => panic!("{gpa:#x}: {other:?}"),
        };
        assert!(reason(0).contains("0 means none"));
        assert!(reason(0x1008).contains("aligned"));
        assert!(reason(0xffff_ffff_ffff_fff0).contains("end of the address space"));
        assert_eq!(
            build(&l, 0xb000_0000 - 0x100).unwrap_err(),
            VacpiError::Overlap {
                first: "ACPI tables",
                second: "ECAM window"
            }
        );
        assert_eq!(
            build(&l, 0xfebf_ff00).unwrap_err(),
            VacpiError::Overlap {
                first: "ACPI tables",
                second: "I/O APIC"
            }
        );
    }

    /// Runs `iasl` in `dir`; its success and everything it printed.
    fn iasl(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("iasl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("iasl {args:?}: {e}"));
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), log)
    }

    /// Every table through ACPICA: disassembled (`iasl -d`) without complaint about checksums,
    /// lengths or fields, the disassembly compiled back to the same bytes, and the fields
    /// ACPICA names holding what atoll meant. The RSDP, which this iasl cannot disassemble
    /// from a binary file, is compiled from its fields and must come out byte for byte equal
    /// (so ACPICA computes the same two checksums).
    #[test]
    fn iasl_accepts_every_table() {
        let present = std::process::Command::new("iasl").arg("-v").output();
        assert!(
            present.is_ok_and(|o| o.status.success()),
            "iasl (Debian package acpica-tools) is not installed: run `cargo xtask setup`"
        );
        let dir = std::env::temp_dir().join(format!("atoll-vacpi-iasl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t = built(&[0, 1, 300]);
        let mut dsl = std::collections::BTreeMap::new();
        for info in t.tables().iter().filter(|i| &i.signature != b"RSDP") {
            let sig = String::from_utf8_lossy(&info.signature).into_owned();
            let ours = t.table(&info.signature).unwrap();
            std::fs::write(dir.join(format!("{sig}.dat")), ours).unwrap();
            let (ok, log) = iasl(&dir, &["-d", &format!("{sig}.dat")]);
            let text = std::fs::read_to_string(dir.join(format!("{sig}.dsl"))).unwrap_or_default();
            assert!(ok && !text.is_empty(), "iasl -d {sig} failed:\n{log}");
            // iasl reports a bad checksum or length as "Incorrect checksum, should be …",
            // "Invalid … length", or as an error or warning.
            let bad = ["Error", "Warning", "Incorrect", "Invalid", "should be"];
            for line in log.lines().chain(text.lines()) {
                assert!(
                    !bad.iter().any(|b| line.contains(b)),
                    "iasl -d {sig}: {line}\n{log}\n{text}"
                );
            }

            let again = format!("{sig}-again");
            let (ok, log) = iasl(&dir, &["-p", &again, &format!("{sig}.dsl")]);
            assert!(
                ok && log.contains("0 Errors, 0 Warnings"),
                "iasl {sig}.dsl:\n{log}"
            );
            let again = std::fs::read(dir.join(format!("{again}.aml"))).unwrap();
            // iasl puts its own creator id and revision (bytes 28..36) in, hence its checksum.
            assert_eq!(again.len(), ours.len(), "{sig} length");
            assert_eq!(again[..9], ours[..9], "{sig} header");
            assert_eq!(again[10..28], ours[10..28], "{sig} header");
            assert_eq!(again[36..], ours[36..], "{sig} body");
            dsl.insert(sig, text);
        }

        let rsdp = t.table(b"RSDP").unwrap();
        let source = format!(
            "[0008] Signature : \"RSD PTR \"\n\
             [0001] Checksum : 00\n\
             [0006] Oem ID : \"ATOLL \"\n\
             [0001] Revision : 02\n\
             [0004] RSDT Address : 00000000\n\
             [0004] Length : 00000024\n\
             [0008] XSDT Address : {:016X}\n\
             [0001] Extended Checksum : 00\n\
             [0003] Reserved : 000000\n",
            u64_at(rsdp, 24)
        );
        std::fs::write(dir.join("RSDP.asl"), source).unwrap();
        let (ok, log) = iasl(&dir, &["RSDP.asl"]);
        assert!(
            ok && log.contains("0 Errors, 0 Warnings"),
            "iasl RSDP.asl:\n{log}"
        );
        assert_eq!(std::fs::read(dir.join("RSDP.aml")).unwrap(), rsdp);

        // What ACPICA reads in each field.
        let has = |sig: &str, want: &[&str]| {
            let text = &dsl[sig];
            let squashed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            for w in want {
                assert!(squashed.contains(w), "{sig} lacks `{w}`:\n{text}");
            }
        };
        let gpa = |s: &[u8; 4]| t.tables().iter().find(|i| &i.signature == s).unwrap().gpa;
        has(
            "FACP",
            &[
                "Hardware Reduced (V5) : 1",
                "Reset Register Supported (V2) : 1",
                "Use APIC Physical Destination Mode (V4) : 1",
                "8042 Present on ports 60/64 (V2) : 0",
                "CMOS RTC Not Present (V5) : 1",
                "FADT Minor Revision : 05",
                "Reset Register : [Generic Address Structure] [074h 0116 1] Space ID : 01 [SystemIO]",
                "Address : 0000000000000604",
                "Value to cause reset : 01",
                "Sleep Control Register : [Generic Address Structure] [0F4h 0244 1] Space ID : 01",
                "Address : 0000000000000600",
                "Sleep Status Register : [Generic Address Structure] [100h 0256 1] Space ID : 01",
                "Address : 0000000000000601",
                &format!("DSDT Address : {:016X}", gpa(b"DSDT")),
                "Hypervisor ID : 0056486C6C6F7441",
            ],
        );
        has(
            "APIC",
            &[
                "Local Apic Address : FEE00000",
                "PC-AT Compatibility : 0",
                "Processor x2Apic ID : 0000012C",
                "Processor UID : 00000002",
                "Processor Enabled : 1",
                "Subtable Type : 01 [I/O APIC]",
                "I/O Apic ID : 02",
                "Address : FEC00000",
                "Interrupt : 00000000",
            ],
        );
        assert_eq!(dsl["APIC"].matches("[Processor Local x2APIC]").count(), 3);
        has(
            "MCFG",
            &[
                "Base Address : 00000000B0000000",
                "Segment Group Number : 0000",
                "Start Bus Number : 00",
                "End Bus Number : 03",
            ],
        );
        has(
            "XSDT",
            &[
                &format!("ACPI Table Address 0 : {:016X}", gpa(b"FACP")),
                &format!("ACPI Table Address 1 : {:016X}", gpa(b"APIC")),
                &format!("ACPI Table Address 2 : {:016X}", gpa(b"MCFG")),
            ],
        );
        has(
            "DSDT",
            &[
                "Name (_S5, Package (0x02) // _S5_: S5 System State { 0x05, 0x05 })",
                "Device (C002) { Name (_HID, \"ACPI0007\" /* Processor Device */)",
                "Name (_UID, 0x02)",
                "Name (_HID, EisaId (\"PNP0501\")",
                "0x03F8, // Range Minimum",
                "0x08, // Length",
                "IRQNoFlags () {4}",
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
