//! Loading an unmodified Linux bzImage into an enclave with the 64-bit boot protocol.
//!
//! The facts come from the kernel's `Documentation/arch/x86/boot.rst` ("The Linux/x86 Boot
//! Protocol", cited below as *boot.rst* with the section name) and
//! `Documentation/arch/x86/zero-page.rst` / `arch/x86/include/uapi/asm/bootparam.h` for the
//! layout of `struct boot_params` (the "zero page").
//!
//! [`LinuxImage::parse`] checks a bzImage: boot flag, `HdrS` signature, protocol 2.12 or later
//! (the first with `xloadflags`), `LOADED_HIGH`, `XLF_KERNEL_64`, the alignment a relocatable
//! kernel asks for, and that the setup code and the protected-mode kernel the header describes
//! lie within the file. [`plan`] decides where everything goes and checks every input against
//! guest RAM; [`load`] runs the plan and then writes, so a refused image, command line, initrd
//! or memory map leaves guest RAM untouched. Nothing here panics on any input.
//!
//! # Guest-physical layout
//!
//! | GPA | what |
//! | --- | --- |
//! | `0x1000`–`0x6fff` | identity page tables for [0, 4 GiB) with 2 MiB pages: PML4 `0x1000`, PDPT `0x2000`, four PDs `0x3000`–`0x6fff` (the same GPAs as [`crate::partition::loader`]'s `long64` tables) |
//! | `0x7000`–`0x701f` | the GDT: null, null, `__BOOT_CS` = `0x10` (flat 64-bit code, execute/read), `__BOOT_DS` = `0x18` (flat data, read/write) |
//! | `0x8000`–`0x8fff` | the boot stack; RSP starts at `0x9000`, just below `boot_params` |
//! | `0x9000`–`0x9fff` | `struct boot_params` (the zero page); RSI points here |
//! | `0xa000`–`0xffff` | the command line, NUL-terminated, at most `cmdline_size` bytes (and 24 KiB − 1) |
//! | load address | the protected-mode kernel: the file bytes after the `(setup_sects + 1) × 512` setup code; `max(init_size, its length)` rounded up to 4 KiB is reserved from there |
//! | below min(`initrd_addr_max` + 1, RAM end) | the initrd, at the highest 4 KiB-aligned address where it fits without overlapping the kernel's reservation (below the kernel if it does not fit above), never below 1 MiB |
//!
//! Everything atoll writes lies below 64 KiB, which Linux keeps reserved (it never allocates
//! from the first megabyte, so the tables, GDT and stack stay intact until it replaces them),
//! and `boot_params` and the command line are copied by the kernel before it uses its memory.
//!
//! The **load address** is `pref_address` when `[pref_address, + reservation)` lies in RAM at or
//! above 1 MiB and below 4 GiB (and, for a relocatable kernel, `pref_address` is aligned to
//! `kernel_alignment`). Otherwise a relocatable kernel goes at the lowest address ≥ 16 MiB
//! aligned to `kernel_alignment`; if that does not fit, each smaller power of two down to
//! `1 << min_alignment` is tried (boot.rst, `min_alignment`) and the one used is written back
//! to `kernel_alignment`. A kernel that is not relocatable and whose `pref_address` does not fit
//! is refused. Everything the kernel needs at entry lies below 4 GiB, so the identity tables
//! cover the kernel's `init_size`, the zero page and the command line, as boot.rst "64-bit Boot
//! Protocol" requires.
//!
//! # Entry state (boot.rst "64-bit Boot Protocol")
//!
//! 64-bit mode with paging (CR0 = PE|MP|ET|NE|WP|PG, CR4 = PAE, EFER = LME|LMA, CR3 = the PML4),
//! CS = `0x10`, DS = ES = SS = `0x18`, interrupts off (the backends start with RFLAGS = 0x2),
//! RIP = load address + `0x200`, RSI = the zero page, RSP = `0x9000`.
//!
//! # The zero page
//!
//! Zeroed, then the setup header copied from the image at `0x1f1` up to
//! `0x202 + image[0x201]` (clamped to the 0x290 the structure has room for), then: `type_of_loader`
//! = `0xff` ("undefined"), `loadflags` |= `CAN_USE_HEAP` with `heap_end_ptr` = `0xde00` (boot.rst
//! "Sample Boot Configuration"; only the real-mode setup code reads them and the 64-bit entry
//! skips it), `code32_start` = load address, `cmd_line_ptr`, `ramdisk_image`/`ramdisk_size`
//! (their `ext_` high halves are 0: everything is below 4 GiB), `setup_data` = 0,
//! `hardware_subarch` = 0 (PC), the E820 table (at most 128 entries) and its count, and
//! `acpi_rsdp_addr` when an RSDP is given (protocol 2.14 or later). The sentinel at `0x1ef`
//! stays 0, which tells the kernel the zero page was built field by field.

use crate::partition::config::EntryMode;
use crate::partition::loader::{BootState, PML4_GPA};
use atoll_vcpu::GuestMemory;
use boot::GuestPhysAddr;
use core::fmt;

/// The GDT.
pub const GDT_GPA: u64 = 0x7000;
/// Initial RSP: the stack is the page below.
pub const STACK_TOP: u64 = 0x9000;
/// `struct boot_params`.
pub const BOOT_PARAMS_GPA: u64 = 0x9000;
/// The command line.
pub const CMDLINE_GPA: u64 = 0xa000;
/// End of the low area atoll writes.
pub const LOW_END: u64 = 0x1_0000;
/// Neither the kernel nor the initrd goes below this (the legacy first megabyte).
pub const MIN_LOAD: u64 = 0x10_0000;
/// Where a relocated kernel starts looking (at or above), as boot loaders commonly do.
pub const RELOCATE_BASE: u64 = 16 << 20;
/// The identity tables map [0, 4 GiB): the kernel, initrd and zero page stay below.
const IDENTITY_END: u64 = 1 << 32;
/// Offset of the 64-bit entry in the protected-mode kernel (boot.rst "64-bit Boot Protocol").
pub const ENTRY64_OFFSET: u64 = 0x200;
/// `__BOOT_CS`.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`.
pub const BOOT_DS: u16 = 0x18;
/// Null, null, flat 64-bit code (P, DPL 0, execute/read, L, G), flat data (P, read/write, D/B, G).
const GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
/// The oldest protocol atoll loads: 2.12 introduced `xloadflags` (`XLF_KERNEL_64`).
pub const MIN_PROTOCOL: u16 = 0x020c;
/// `acpi_rsdp_addr` exists from protocol 2.14.
const RSDP_PROTOCOL: u16 = 0x020e;
/// Entries `boot_params.e820_table` holds (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX: usize = 128;
/// `type_of_loader` for a loader without an assigned id (boot.rst, `type_of_loader`: 0xFF).
const LOADER_UNDEFINED: u8 = 0xff;
/// `heap_end_ptr` of boot.rst's sample configuration (heap end 0xe000 − 0x200).
const HEAP_END_PTR: u16 = 0xde00;
const PAGE: u64 = 0x1000;

/// Offsets of the setup header fields in the image and in `boot_params` (boot.rst "The
/// Real-Mode Kernel Header" / "Details of Header Fields"; the header sits at 0x1f1 in both).
mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const KERNEL_VERSION: usize = 0x20e;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const MIN_ALIGNMENT: usize = 0x235;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const HARDWARE_SUBARCH: usize = 0x23c;
    pub const SETUP_DATA: usize = 0x250;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// End of `handover_offset` (protocol 2.11): every 2.12+ header reaches at least here.
    pub const MIN_END: usize = 0x268;
    /// End of the room `boot_params` has for the header (`edd_mbr_sig_buffer` follows).
    pub const MAX_END: usize = 0x290;

    /// `boot_flag`.
    pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
    /// `header`: "HdrS".
    pub const HDRS: u32 = 0x5372_6448;
    /// `loadflags` bit 0: the protected-mode code is loaded at 0x100000 (a bzImage).
    pub const LOADED_HIGH: u8 = 1 << 0;
    /// `loadflags` bit 7: `heap_end_ptr` is valid.
    pub const CAN_USE_HEAP: u8 = 1 << 7;
    /// `xloadflags` bit 0: the 64-bit entry at +0x200 exists.
    pub const XLF_KERNEL_64: u16 = 1 << 0;
    /// `xloadflags` bit 1: kernel, boot_params, command line and ramdisk may lie above 4 GiB.
    pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
}

/// Offsets in `struct boot_params` outside the setup header (zero-page.rst, bootparam.h).
mod zp {
    pub const SIZE: usize = 0x1000;
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const SENTINEL: usize = 0x1ef;
    pub const E820_TABLE: usize = 0x2d0;
    /// `struct boot_e820_entry`: addr u64, size u64, type u32, packed.
    pub const E820_ENTRY_SIZE: usize = 20;
}

/// Why a kernel cannot be loaded. Nothing has been written to guest RAM when one is returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinuxError {
    /// Too short to hold a 2.12 setup header.
    TooShort { len: usize },
    /// No 0xAA55 at 0x1fe.
    NoBootFlag { found: u16 },
    /// No "HdrS" at 0x202.
    NoHdrS,
    /// Protocol older than 2.12.
    ProtocolTooOld { major: u8, minor: u8 },
    /// `LOADED_HIGH` clear: a zImage, not a bzImage.
    NotLoadedHigh,
    /// `XLF_KERNEL_64` clear: no 64-bit entry point.
    NotKernel64,
    /// The jump at 0x200 says the header ends before the fields protocol 2.12 has.
    HeaderTooShort { end: usize },
    /// Part of the image the header describes lies past the end of the file.
    Truncated {
        what: &'static str,
        end: u64,
        len: u64,
    },
    /// A relocatable kernel whose `kernel_alignment` is not a power of two.
    BadAlignment { align: u32 },
    /// `init_size` is 0.
    NoInitSize,
    /// Not relocatable, and `pref_address` (with the reservation) is not in usable RAM.
    NotRelocatable { pref: u64, need: u64, ram: u64 },
    /// The kernel's `init_size` does not fit in guest RAM (below 4 GiB).
    KernelTooBig { at: u64, need: u64, ram: u64 },
    /// Guest RAM smaller than the 1 MiB the layout needs below the kernel.
    RamTooSmall { ram: u64 },
    /// The guest memory given does not cover the RAM size given.
    MemoryTooSmall { ram: u64 },
    /// The command line is longer than the kernel (`cmdline_size`) or the layout takes.
    CmdlineTooLong { len: usize, max: u64 },
    /// The command line contains a NUL byte, which would cut it short.
    CmdlineNul { at: usize },
    /// More E820 entries than `boot_params` holds.
    TooManyE820 { count: usize },
    /// An E820 entry runs past the end of the address space.
    E820Wraps { index: usize, addr: u64, size: u64 },
    /// The initrd does not fit below `limit` beside the kernel.
    InitrdTooBig { size: u64, limit: u64 },
    /// An RSDP was given but the kernel's protocol has no `acpi_rsdp_addr`.
    RsdpUnsupported { major: u8, minor: u8 },
    /// The RSDP address lies outside guest RAM.
    RsdpOutside { addr: u64, ram: u64 },
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LinuxError::TooShort { len } => write!(
                f,
                "not a bzImage: {len} bytes are too few for a setup header (it reaches {:#x})",
                hdr::MIN_END
            ),
            LinuxError::NoBootFlag { found } => write!(
                f,
                "not a bzImage: no boot flag 0xaa55 at 0x1fe (found {found:#06x})"
            ),
            LinuxError::NoHdrS => write!(f, "not a bzImage: no HdrS signature at 0x202"),
            LinuxError::ProtocolTooOld { major, minor } => write!(
                f,
                "boot protocol {major}.{minor} is too old: atoll needs {}.{} or later",
                MIN_PROTOCOL >> 8,
                MIN_PROTOCOL & 0xff
            ),
            LinuxError::NotLoadedHigh => write!(
                f,
                "not a bzImage: LOADED_HIGH is clear in loadflags (a zImage loads below 1 MiB)"
            ),
            LinuxError::NotKernel64 => {
                write!(f, "kernel has no 64-bit entry point (XLF_KERNEL_64 clear)")
            }
            LinuxError::HeaderTooShort { end } => write!(
                f,
                "setup header ends at {end:#x} (0x202 + the byte at 0x201), before the {:#x} a 2.12 header reaches",
                hdr::MIN_END
            ),
            LinuxError::Truncated { what, end, len } => write!(
                f,
                "image is truncated: {what} ends at {end:#x} but the file has {len:#x} bytes"
            ),
            LinuxError::BadAlignment { align } => write!(
                f,
                "relocatable kernel asks for kernel_alignment {align:#x}, which is not a power of two"
            ),
            LinuxError::NoInitSize => write!(f, "kernel header has init_size 0"),
            LinuxError::NotRelocatable { pref, need, ram } => write!(
                f,
                "kernel is not relocatable and [{pref:#x}, +{need:#x}) at its pref_address is not in guest RAM [{MIN_LOAD:#x}, {:#x})",
                ram.min(IDENTITY_END)
            ),
            LinuxError::KernelTooBig { at, need, ram } => write!(
                f,
                "kernel needs {need:#x} bytes (init_size) from {at:#x}, past the end of guest RAM at {:#x}",
                ram.min(IDENTITY_END)
            ),
            LinuxError::RamTooSmall { ram } => write!(
                f,
                "guest RAM of {ram:#x} bytes is too small for a Linux guest (at least {MIN_LOAD:#x} below the kernel)"
            ),
            LinuxError::MemoryTooSmall { ram } => write!(
                f,
                "guest memory does not cover the {ram:#x} bytes of RAM it was described with"
            ),
            LinuxError::CmdlineTooLong { len, max } => write!(
                f,
                "command line of {len} bytes is too long: this kernel takes at most {max} (cmdline_size)"
            ),
            LinuxError::CmdlineNul { at } => {
                write!(f, "command line has a NUL byte at offset {at}")
            }
            LinuxError::TooManyE820 { count } => write!(
                f,
                "{count} E820 entries do not fit in boot_params (at most {E820_MAX})"
            ),
            LinuxError::E820Wraps { index, addr, size } => write!(
                f,
                "E820 entry {index} [{addr:#x}, +{size:#x}) runs past the end of the address space"
            ),
            LinuxError::InitrdTooBig { size, limit } => write!(
                f,
                "initrd of {size:#x} bytes does not fit in guest RAM below {limit:#x} beside the kernel"
            ),
            LinuxError::RsdpUnsupported { major, minor } => write!(
                f,
                "boot protocol {major}.{minor} has no acpi_rsdp_addr (2.14 or later): the kernel would not find the ACPI tables"
            ),
            LinuxError::RsdpOutside { addr, ram } => write!(
                f,
                "ACPI RSDP at {addr:#x} lies outside guest RAM ({ram:#x} bytes)"
            ),
        }
    }
}

/// The setup header fields atoll reads (boot.rst "Details of Header Fields").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// `version`: major in the high byte, minor in the low byte.
    pub version: u16,
    /// Sectors of setup code after the boot sector (`setup_sects`, with 0 read as 4).
    pub setup_sects: u8,
    /// Size of the protected-mode code in 16-byte paragraphs (`syssize`).
    pub syssize: u32,
    /// `loadflags` as the image has them.
    pub loadflags: u8,
    /// `xloadflags`.
    pub xloadflags: u16,
    /// Highest address the initrd may occupy (`initrd_addr_max`, inclusive).
    pub initrd_addr_max: u32,
    /// Alignment a relocatable kernel prefers (`kernel_alignment`).
    pub kernel_alignment: u32,
    /// Whether the protected-mode kernel may be loaded anywhere suitably aligned.
    pub relocatable: bool,
    /// Minimum alignment required, as a power of two (`min_alignment`, 0 = none given).
    pub min_alignment: u8,
    /// Longest command line without its NUL (`cmdline_size`).
    pub cmdline_size: u32,
    /// Preferred load address (`pref_address`).
    pub pref_address: u64,
    /// Contiguous memory the kernel needs from its start address to boot (`init_size`).
    pub init_size: u32,
    /// End of the header in the image: `0x202 + image[0x201]` (boot.rst "64-bit Boot Protocol").
    pub end: usize,
}

fn le16(h: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([h[o], h[o + 1]])
}
fn le32(h: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]])
}
fn le64(h: &[u8], o: usize) -> u64 {
    u64::from(le32(h, o)) | u64::from(le32(h, o + 4)) << 32
}
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

impl SetupHeader {
    /// Reads and checks the setup header at the start of `bytes`; it needs only the setup code
    /// (the first `(setup_sects + 1) × 512` bytes), not the kernel after it.
    pub fn parse(bytes: &[u8]) -> Result<Self, LinuxError> {
        // A fixed-size view: every offset below is a constant within it, so none can panic.
        let h: &[u8; hdr::MIN_END] = bytes
            .first_chunk()
            .ok_or(LinuxError::TooShort { len: bytes.len() })?;
        let flag = le16(h, hdr::BOOT_FLAG);
        if flag != hdr::BOOT_FLAG_MAGIC {
            return Err(LinuxError::NoBootFlag { found: flag });
        }
        if le32(h, hdr::HEADER) != hdr::HDRS {
            return Err(LinuxError::NoHdrS);
        }
        let version = le16(h, hdr::VERSION);
        if version < MIN_PROTOCOL {
            return Err(LinuxError::ProtocolTooOld {
                major: (version >> 8) as u8,
                minor: version as u8,
            });
        }
        let end = hdr::HEADER + usize::from(h[hdr::JUMP + 1]);
        if end < hdr::MIN_END {
            return Err(LinuxError::HeaderTooShort { end });
        }
        if end > bytes.len() {
            return Err(LinuxError::Truncated {
                what: "the setup header",
                end: end as u64,
                len: bytes.len() as u64,
            });
        }
        let loadflags = h[hdr::LOADFLAGS];
        if loadflags & hdr::LOADED_HIGH == 0 {
            return Err(LinuxError::NotLoadedHigh);
        }
        let xloadflags = le16(h, hdr::XLOADFLAGS);
        if xloadflags & hdr::XLF_KERNEL_64 == 0 {
            return Err(LinuxError::NotKernel64);
        }
        let relocatable = h[hdr::RELOCATABLE_KERNEL] != 0;
        let kernel_alignment = le32(h, hdr::KERNEL_ALIGNMENT);
        if relocatable && !kernel_alignment.is_power_of_two() {
            return Err(LinuxError::BadAlignment {
                align: kernel_alignment,
            });
        }
        let init_size = le32(h, hdr::INIT_SIZE);
        if init_size == 0 {
            return Err(LinuxError::NoInitSize);
        }
        let setup_sects = match h[hdr::SETUP_SECTS] {
            0 => 4,
            n => n,
        };
        Ok(Self {
            version,
            setup_sects,
            syssize: le32(h, hdr::SYSSIZE),
            loadflags,
            xloadflags,
            initrd_addr_max: le32(h, hdr::INITRD_ADDR_MAX),
            kernel_alignment,
            relocatable,
            min_alignment: h[hdr::MIN_ALIGNMENT],
            cmdline_size: le32(h, hdr::CMDLINE_SIZE),
            pref_address: le64(h, hdr::PREF_ADDRESS),
            init_size,
            end,
        })
    }

    /// The protocol version as (major, minor).
    pub fn protocol(&self) -> (u8, u8) {
        ((self.version >> 8) as u8, self.version as u8)
    }

    /// Bytes of real-mode setup code, boot sector included: `(setup_sects + 1) × 512`.
    pub fn setup_len(&self) -> usize {
        (usize::from(self.setup_sects) + 1) * 512
    }

    /// Whether the kernel has the 64-bit entry at +0x200 (`XLF_KERNEL_64`).
    pub fn kernel_64(&self) -> bool {
        self.xloadflags & hdr::XLF_KERNEL_64 != 0
    }

    /// Whether the kernel, zero page, command line and initrd may lie above 4 GiB.
    pub fn above_4g(&self) -> bool {
        self.xloadflags & hdr::XLF_CAN_BE_LOADED_ABOVE_4G != 0
    }
}

/// A checked bzImage: its setup header and the protected-mode kernel after the setup code.
#[derive(Clone, Copy, Debug)]
pub struct LinuxImage<'a> {
    bytes: &'a [u8],
    header: SetupHeader,
}

impl<'a> LinuxImage<'a> {
    /// Checks the image: boot flag, `HdrS`, protocol ≥ 2.12, `LOADED_HIGH`, `XLF_KERNEL_64`,
    /// `kernel_alignment` (relocatable kernels), `init_size`, and that the setup code, the
    /// `syssize` paragraphs of protected-mode code and the 64-bit entry lie within the file.
    /// Bytes past `syssize` (a signature appended to a signed kernel) are loaded as they are.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, LinuxError> {
        let header = SetupHeader::parse(bytes)?;
        let len = bytes.len() as u64;
        let setup = header.setup_len() as u64;
        if setup >= len {
            return Err(LinuxError::Truncated {
                what: "the setup code (setup_sects)",
                end: setup,
                len,
            });
        }
        let kernel_end = setup + u64::from(header.syssize) * 16;
        if kernel_end > len {
            return Err(LinuxError::Truncated {
                what: "the protected-mode kernel (syssize)",
                end: kernel_end,
                len,
            });
        }
        if setup + ENTRY64_OFFSET >= len {
            return Err(LinuxError::Truncated {
                what: "the protected-mode kernel (64-bit entry at +0x200)",
                end: setup + ENTRY64_OFFSET + 1,
                len,
            });
        }
        Ok(Self { bytes, header })
    }

    /// The boot protocol version as (major, minor).
    pub fn protocol(&self) -> (u8, u8) {
        self.header.protocol()
    }

    /// The setup header.
    pub fn header(&self) -> &SetupHeader {
        &self.header
    }

    /// The protected-mode kernel: everything after the setup code.
    pub fn kernel(&self) -> &'a [u8] {
        self.bytes.get(self.header.setup_len()..).unwrap_or(&[])
    }

    /// The kernel's version string (`kernel_version`), if it has a readable one.
    pub fn version_string(&self) -> Option<&'a str> {
        let off = usize::from(le16(self.bytes, hdr::KERNEL_VERSION));
        if off == 0 {
            return None;
        }
        let setup = self.bytes.get(..self.header.setup_len())?;
        let text = setup.get(off.checked_add(0x200)?..)?;
        let n = text.iter().position(|&b| b == 0)?;
        core::str::from_utf8(&text[..n]).ok()
    }

    /// The bytes of the setup header as the image has them (`0x1f1` to its end, at most 0x290).
    fn header_bytes(&self) -> &'a [u8] {
        let end = self.header.end.min(hdr::MAX_END);
        self.bytes.get(hdr::SETUP_SECTS..end).unwrap_or(&[])
    }
}

/// An E820 memory type (ACPI address range types, as Linux's `e820_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
    /// ACPI tables, reclaimable once read.
    Acpi = 3,
    /// ACPI non-volatile storage.
    Nvs = 4,
    /// Unusable (errors detected).
    Unusable = 5,
    /// Persistent memory.
    Pmem = 7,
}

/// One entry of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What it is.
    pub kind: E820Kind,
}

/// Where [`load`] puts things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Load address of the protected-mode kernel (its runtime start).
    pub kernel: GuestPhysAddr,
    /// Bytes reserved from `kernel`: `max(init_size, kernel bytes)` rounded up to 4 KiB.
    pub kernel_reserved: u64,
    /// The alignment the kernel was placed with (written back to `kernel_alignment`).
    pub kernel_alignment: u32,
    /// The 64-bit entry: `kernel + 0x200`.
    pub entry: GuestPhysAddr,
    /// The initrd's address and length, if there is one.
    pub initrd: Option<(GuestPhysAddr, u64)>,
    /// `struct boot_params`.
    pub boot_params: GuestPhysAddr,
    /// The NUL-terminated command line.
    pub cmdline: GuestPhysAddr,
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Whether `[start, end)` lies wholly inside one RAM entry of `e820`: the kernel and the initrd
/// go only where the map says RAM is (a root partition's RAM has holes: atoll's memory and the
/// enclave pool are reserved in its map).
fn in_ram(e820: &[E820Entry], start: u64, end: u64) -> bool {
    e820.iter()
        .any(|e| e.kind == E820Kind::Ram && e.addr <= start && end <= e.addr.saturating_add(e.size))
}

/// Decides where everything goes and checks every input; writes nothing.
pub fn plan(
    image: &LinuxImage,
    initrd: Option<&[u8]>,
    cmdline: &str,
    ram: u64,
    e820: &[E820Entry],
    acpi_rsdp: Option<u64>,
) -> Result<Layout, LinuxError> {
    let h = image.header();
    if ram < MIN_LOAD {
        return Err(LinuxError::RamTooSmall { ram });
    }
    // Command line: at most cmdline_size bytes, plus its NUL in the low area.
    let max = u64::from(h.cmdline_size).min(LOW_END - CMDLINE_GPA - 1);
    if cmdline.len() as u64 > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(LinuxError::CmdlineNul { at });
    }
    if e820.len() > E820_MAX {
        return Err(LinuxError::TooManyE820 { count: e820.len() });
    }
    if let Some((index, e)) = e820
        .iter()
        .enumerate()
        .find(|(_, e)| e.addr.checked_add(e.size).is_none())
    {
        return Err(LinuxError::E820Wraps {
            index,
            addr: e.addr,
            size: e.size,
        });
    }
    if let Some(addr) = acpi_rsdp {
        if h.version < RSDP_PROTOCOL {
            let (major, minor) = h.protocol();
            return Err(LinuxError::RsdpUnsupported { major, minor });
        }
        if addr >= ram {
            return Err(LinuxError::RsdpOutside { addr, ram });
        }
    }

    // The kernel (boot.rst, init_size: runtime start = pref_address, or the load address
    // aligned up to kernel_alignment for a relocatable kernel).
    let top = ram.min(IDENTITY_END);
    // Without a map, all of [0, ram) is RAM.
    let whole = [E820Entry {
        addr: 0,
        size: ram,
        kind: E820Kind::Ram,
    }];
    let map = if e820.is_empty() { &whole[..] } else { e820 };
    let need = align_up(
        u64::from(h.init_size).max(image.kernel().len() as u64),
        PAGE,
    )
    .ok_or(LinuxError::KernelTooBig {
        at: h.pref_address,
        need: u64::MAX,
        ram,
    })?;
    let fits = |at: u64| {
        at >= MIN_LOAD
            && at
                .checked_add(need)
                .is_some_and(|end| end <= top && in_ram(map, at, end))
    };
    let pref_ok = fits(h.pref_address)
        && (!h.relocatable
            || GuestPhysAddr::new(h.pref_address).is_aligned(u64::from(h.kernel_alignment)));
    let (kernel, align) = if pref_ok {
        (h.pref_address, h.kernel_alignment)
    } else if !h.relocatable {
        return Err(LinuxError::NotRelocatable {
            pref: h.pref_address,
            need,
            ram,
        });
    } else {
        // kernel_alignment first, then each smaller power of two down to min_alignment.
        let floor = if h.min_alignment > 0 && h.min_alignment < 32 {
            (1u32 << h.min_alignment).min(h.kernel_alignment)
        } else {
            h.kernel_alignment
        };
        let mut align = h.kernel_alignment;
        loop {
            // The lowest aligned place at or above RELOCATE_BASE inside a RAM entry.
            let at = map
                .iter()
                .filter(|e| e.kind == E820Kind::Ram)
                .filter_map(|e| align_up(e.addr.max(RELOCATE_BASE), u64::from(align)))
                .filter(|&a| fits(a))
                .min();
            if let Some(at) = at {
                break (at, align);
            }
            if align <= floor {
                return Err(LinuxError::KernelTooBig {
                    at: align_up(RELOCATE_BASE, u64::from(align)).unwrap_or(RELOCATE_BASE),
                    need,
                    ram,
                });
            }
            align /= 2;
        }
    };
    let kernel_end = kernel + need;

    // The initrd: as high as it fits below initrd_addr_max, clear of the kernel.
    let initrd = match initrd {
        Some(bytes) if !bytes.is_empty() => {
            let size = bytes.len() as u64;
            let limit = (u64::from(h.initrd_addr_max) + 1).min(top);
            let too_big = LinuxError::InitrdTooBig { size, limit };
            // The highest 4 KiB-aligned place below `below` inside one RAM entry of the map.
            let highest = |below: u64| {
                map.iter()
                    .filter(|e| e.kind == E820Kind::Ram)
                    .filter_map(|e| {
                        let end = e.addr.saturating_add(e.size).min(below);
                        let at = end.checked_sub(size)? & !(PAGE - 1);
                        (at >= e.addr.max(MIN_LOAD)).then_some(at)
                    })
                    .max()
            };
            let above = highest(limit).filter(|&a| a >= kernel_end);
            let at = above
                .or_else(|| highest(limit.min(kernel)))
                .ok_or(too_big)?;
            Some((GuestPhysAddr::new(at), size))
        }
        _ => None,
    };

    Ok(Layout {
        kernel: GuestPhysAddr::new(kernel),
        kernel_reserved: need,
        kernel_alignment: align,
        entry: GuestPhysAddr::new(kernel + ENTRY64_OFFSET),
        initrd,
        boot_params: GuestPhysAddr::new(BOOT_PARAMS_GPA),
        cmdline: GuestPhysAddr::new(CMDLINE_GPA),
    })
}

/// Fills `struct boot_params` for `layout` (module doc, "The zero page").
fn zero_page(
    image: &LinuxImage,
    layout: &Layout,
    e820: &[E820Entry],
    acpi_rsdp: Option<u64>,
) -> [u8; zp::SIZE] {
    let mut z = [0u8; zp::SIZE];
    let header = image.header_bytes();
    z[hdr::SETUP_SECTS..hdr::SETUP_SECTS + header.len()].copy_from_slice(header);
    z[hdr::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    z[hdr::LOADFLAGS] |= hdr::CAN_USE_HEAP;
    put16(&mut z, hdr::HEAP_END_PTR, HEAP_END_PTR);
    // Below 4 GiB by construction (plan), so the 32-bit fields hold the whole address.
    put32(&mut z, hdr::CODE32_START, layout.kernel.as_u64() as u32);
    let (rd_at, rd_len) = layout.initrd.map_or((0, 0), |(a, n)| (a.as_u64(), n));
    put32(&mut z, hdr::RAMDISK_IMAGE, rd_at as u32);
    put32(&mut z, hdr::RAMDISK_SIZE, rd_len as u32);
    put32(&mut z, zp::EXT_RAMDISK_IMAGE, (rd_at >> 32) as u32);
    put32(&mut z, zp::EXT_RAMDISK_SIZE, (rd_len >> 32) as u32);
    put32(&mut z, hdr::CMD_LINE_PTR, layout.cmdline.as_u64() as u32);
    put32(
        &mut z,
        zp::EXT_CMD_LINE_PTR,
        (layout.cmdline.as_u64() >> 32) as u32,
    );
    put32(&mut z, hdr::KERNEL_ALIGNMENT, layout.kernel_alignment);
    put32(&mut z, hdr::HARDWARE_SUBARCH, 0);
    put64(&mut z, hdr::SETUP_DATA, 0);
    z[zp::SENTINEL] = 0;
    if let Some(rsdp) = acpi_rsdp {
        put64(&mut z, zp::ACPI_RSDP_ADDR, rsdp);
    }
    z[zp::E820_ENTRIES] = e820.len().min(E820_MAX) as u8;
    for (i, e) in e820.iter().take(E820_MAX).enumerate() {
        let o = zp::E820_TABLE + i * zp::E820_ENTRY_SIZE;
        put64(&mut z, o, e.addr);
        put64(&mut z, o + 8, e.size);
        put32(&mut z, o + 16, e.kind as u32);
    }
    z
}

/// Lays the kernel out in guest memory `mem` (RAM of `ram` bytes from GPA 0) as the module doc
/// describes and returns the vCPU's start state. Every check runs before the first write: on
/// error, guest RAM is untouched.
pub fn load(
    image: &LinuxImage,
    initrd: Option<&[u8]>,
    cmdline: &str,
    ram: u64,
    e820: &[E820Entry],
    acpi_rsdp: Option<u64>,
    mem: &mut impl GuestMemory,
) -> Result<BootState, LinuxError> {
    let layout = plan(image, initrd, cmdline, ram, e820, acpi_rsdp)?;
    // Everything lies in [0, ram): if the last byte is there, every write lands.
    if mem.read(GuestPhysAddr::new(ram - 1), &mut [0]).is_none() {
        return Err(LinuxError::MemoryTooSmall { ram });
    }
    let mut put = |gpa: u64, bytes: &[u8]| {
        mem.write(GuestPhysAddr::new(gpa), bytes)
            .ok_or(LinuxError::MemoryTooSmall { ram })
    };

    put(layout.kernel.as_u64(), image.kernel())?;
    if let (Some((at, _)), Some(bytes)) = (layout.initrd, initrd) {
        put(at.as_u64(), bytes)?;
    }
    put(BOOT_PARAMS_GPA, &zero_page(image, &layout, e820, acpi_rsdp))?;
    put(CMDLINE_GPA, cmdline.as_bytes())?;
    put(CMDLINE_GPA + cmdline.len() as u64, &[0])?;
    let mut gdt = [0u8; GDT.len() * 8];
    for (i, d) in GDT.iter().enumerate() {
        put64(&mut gdt, i * 8, *d);
    }
    put(GDT_GPA, &gdt)?;
    crate::partition::loader::write_identity_tables(&mut |gpa, bytes| put(gpa, bytes).ok())
        .ok_or(LinuxError::MemoryTooSmall { ram })?;

    Ok(BootState {
        mode: EntryMode::Long64,
        rip: layout.entry.as_u64(),
        rsp: STACK_TOP,
        rdi: 0,
        rsi: BOOT_PARAMS_GPA,
        rdx: 0,
        // PE | MP | ET | NE | WP | PG.
        cr0: (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31),
        cr3: PML4_GPA,
        // PAE.
        cr4: 1 << 5,
        // LME | LMA.
        efer: (1 << 8) | (1 << 10),
        gdt: (GDT_GPA, (GDT.len() * 8 - 1) as u16),
        cs_selector: BOOT_CS,
        ds_selector: BOOT_DS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_vcpu::SliceMemory;

    /// What a synthetic bzImage's header says.
    #[derive(Clone, Copy)]
    struct Spec {
        version: u16,
        setup_sects: u8,
        loadflags: u8,
        xloadflags: u16,
        relocatable: bool,
        kernel_alignment: u32,
        min_alignment: u8,
        pref_address: u64,
        init_size: u32,
        initrd_addr_max: u32,
        cmdline_size: u32,
        /// Bytes of protected-mode kernel.
        kernel_len: usize,
    }

    const MIB: u64 = 1 << 20;

    fn good() -> Spec {
        Spec {
            version: 0x020f,
            setup_sects: 3,
            loadflags: hdr::LOADED_HIGH,
            xloadflags: hdr::XLF_KERNEL_64 | hdr::XLF_CAN_BE_LOADED_ABOVE_4G,
            relocatable: true,
            kernel_alignment: 2 << 20,
            min_alignment: 21,
            pref_address: 16 * MIB,
            init_size: 4 << 20,
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
            kernel_len: 0x3000,
        }
    }

    /// A bzImage with `s`'s header, a version string in the setup code and a patterned kernel.
    fn bzimage(s: &Spec) -> Vec<u8> {
        let setup = (usize::from(if s.setup_sects == 0 { 4 } else { s.setup_sects }) + 1) * 512;
        let mut b = vec![0u8; setup + s.kernel_len];
        b[hdr::SETUP_SECTS] = s.setup_sects;
        put32(&mut b, hdr::SYSSIZE, (s.kernel_len / 16) as u32);
        put16(&mut b, hdr::BOOT_FLAG, 0xaa55);
        b[hdr::JUMP] = 0xeb;
        b[hdr::JUMP + 1] = 0x6a; // header ends at 0x26c (protocol 2.15)
        put32(&mut b, hdr::HEADER, hdr::HDRS);
        put16(&mut b, hdr::VERSION, s.version);
        put16(&mut b, hdr::KERNEL_VERSION, 0x300 - 0x200);
        b[0x300..0x30c].copy_from_slice(b"6.1.0-test \0");
        b[hdr::LOADFLAGS] = s.loadflags;
        put32(&mut b, hdr::CODE32_START, 0x10_0000);
        put32(&mut b, hdr::INITRD_ADDR_MAX, s.initrd_addr_max);
        put32(&mut b, hdr::KERNEL_ALIGNMENT, s.kernel_alignment);
        b[hdr::RELOCATABLE_KERNEL] = u8::from(s.relocatable);
        b[hdr::MIN_ALIGNMENT] = s.min_alignment;
        put16(&mut b, hdr::XLOADFLAGS, s.xloadflags);
        put32(&mut b, hdr::CMDLINE_SIZE, s.cmdline_size);
        put64(&mut b, hdr::PREF_ADDRESS, s.pref_address);
        put32(&mut b, hdr::INIT_SIZE, s.init_size);
        // The sentinel is 0xff in real images: it must not reach boot_params.
        b[zp::SENTINEL] = 0xff;
        for (i, x) in b[setup..].iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(7) ^ 0x5a;
        }
        b
    }

    #[test]
    fn enclave_platform_layout_loads_with_acpi_tables() {
        // vplat::load_linux: ACPI tables at 0xE0000, the platform's E820, then the kernel.
        let ram = 64 * MIB;
        let mut mem = vec![0u8; ram as usize];
        let image = bzimage(&good());
        let boot = crate::run::vplat::load_linux(
            &image,
            Some(&[7u8; 4096]),
            "console=ttyS0",
            2,
            false,
            ram,
            &mut SliceMemory(&mut mem),
        )
        .unwrap();
        assert_eq!(&mem[0xe0000..0xe0008], b"RSD PTR ");
        let zp = BOOT_PARAMS_GPA as usize;
        let rsdp = u64::from_le_bytes(mem[zp + zp::ACPI_RSDP_ADDR..][..8].try_into().unwrap());
        assert_eq!(rsdp, crate::run::vplat::ACPI_GPA);
        // Four entries: low RAM, the reserved BIOS area, RAM from 1 MiB, the ECAM window.
        assert_eq!(mem[zp + zp::E820_ENTRIES], 4);
        assert_eq!(boot.rsi, BOOT_PARAMS_GPA);
        // Too much RAM for the platform, or not a kernel: refused, RAM untouched.
        let mut small = vec![0u8; MIB as usize];
        let e = crate::run::vplat::load_linux(
            &image,
            None,
            "",
            1,
            false,
            4096 * MIB,
            &mut SliceMemory(&mut small),
        );
        assert!(e.unwrap_err().contains("at most 3584 MiB"));
        let mut fresh = vec![0u8; ram as usize];
        let e = crate::run::vplat::load_linux(
            &[0u8; 64],
            None,
            "",
            1,
            false,
            ram,
            &mut SliceMemory(&mut fresh),
        );
        assert!(e.unwrap_err().starts_with("kernel: "));
        assert!(fresh.iter().all(|&b| b == 0), "nothing written");
    }

    fn e820(ram: u64) -> Vec<E820Entry> {
        vec![
            E820Entry {
                addr: 0,
                size: 0x9_fc00,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: 0x9_fc00,
                size: 0x6_0400,
                kind: E820Kind::Reserved,
            },
            E820Entry {
                addr: MIB,
                size: ram - MIB - 0x1_0000,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: ram - 0x1_0000,
                size: 0x1_0000,
                kind: E820Kind::Acpi,
            },
        ]
    }

    fn rd8(ram: &[u8], a: u64) -> u8 {
        ram[a as usize]
    }
    fn rd16(ram: &[u8], a: u64) -> u16 {
        le16(ram, a as usize)
    }
    fn rd32(ram: &[u8], a: u64) -> u32 {
        le32(ram, a as usize)
    }
    fn rd64(ram: &[u8], a: u64) -> u64 {
        le64(ram, a as usize)
    }

    /// Walks the identity tables for `va`: the physical address it maps to.
    fn walk(ram: &[u8], cr3: u64, va: u64) -> Option<u64> {
        let pml4e = rd64(ram, cr3 + ((va >> 39) & 511) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = rd64(ram, (pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = rd64(ram, (pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & 0x83 != 0x83 {
            return None; // the tables only use present, writable 2 MiB pages
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn good_215_image_loads_at_pref_address() {
        let spec = good();
        let img = bzimage(&spec);
        let image = LinuxImage::parse(&img).unwrap();
        assert_eq!(image.protocol(), (2, 15));
        assert_eq!(image.version_string(), Some("6.1.0-test "));
        assert_eq!(image.kernel().len(), spec.kernel_len);

        let ram_len = 64 * MIB;
        let mut ram = vec![0xccu8; ram_len as usize];
        let initrd: Vec<u8> = (0..0x2345u32).map(|i| (i * 13) as u8).collect();
        let map = e820(ram_len);
        let cmdline = "console=ttyS0 root=/dev/ram0 quiet";
        let s = load(
            &image,
            Some(&initrd),
            cmdline,
            ram_len,
            &map,
            Some(0xe_0000),
            &mut SliceMemory(&mut ram),
        )
        .unwrap();

        // The vCPU state of boot.rst "64-bit Boot Protocol".
        let load_at = 16 * MIB;
        assert_eq!(s.mode, EntryMode::Long64);
        assert_eq!(s.rip, load_at + 0x200);
        assert_eq!(s.rsi, BOOT_PARAMS_GPA);
        assert_eq!((s.cs_selector, s.ds_selector), (0x10, 0x18));
        assert_eq!(s.cr3, PML4_GPA);
        assert_eq!(s.cr0 & 0x8000_0001, 0x8000_0001, "PE and PG");
        assert_eq!(s.cr4 & (1 << 5), 1 << 5, "PAE");
        assert_eq!(s.efer & 0x500, 0x500, "LME and LMA");
        assert_eq!(s.gdt, (GDT_GPA, 31));
        assert!(s.rsp <= BOOT_PARAMS_GPA && s.rsp > GDT_GPA + 32 && s.rsp % 16 == 0);

        // The kernel bytes, at pref_address; nothing written right after them.
        let k = load_at as usize;
        assert_eq!(&ram[k..k + spec.kernel_len], image.kernel());
        assert_eq!(ram[k + spec.kernel_len], 0xcc);

        // The zero page.
        let bp = BOOT_PARAMS_GPA;
        assert_eq!(rd32(&ram, bp + 0x202), hdr::HDRS);
        assert_eq!(rd16(&ram, bp + 0x206), 0x020f);
        assert_eq!(rd16(&ram, bp + 0x1fe), 0xaa55);
        assert_eq!(rd8(&ram, bp + 0x1f1), 3, "setup_sects copied");
        assert_eq!(rd64(&ram, bp + 0x258), 16 * MIB, "pref_address copied");
        assert_eq!(rd32(&ram, bp + 0x260), 4 << 20, "init_size copied");
        assert_eq!(rd32(&ram, bp + 0x238), 2047, "cmdline_size copied");
        assert_eq!(rd8(&ram, bp + 0x1ef), 0, "sentinel clear");
        assert_eq!(rd8(&ram, bp + 0x1f0), 0, "nothing before the header");
        assert!(
            ram[(bp + 0x26c) as usize..(bp + 0x2d0) as usize]
                .iter()
                .all(|&b| b == 0),
            "nothing copied past the header end"
        );
        assert_eq!(rd8(&ram, bp + 0x210), 0xff, "type_of_loader");
        assert_eq!(
            rd8(&ram, bp + 0x211),
            hdr::LOADED_HIGH | hdr::CAN_USE_HEAP,
            "loadflags"
        );
        assert_eq!(rd16(&ram, bp + 0x224), 0xde00, "heap_end_ptr");
        assert_eq!(rd32(&ram, bp + 0x214), load_at as u32, "code32_start");
        assert_eq!(rd32(&ram, bp + 0x230), 2 << 20, "kernel_alignment");
        assert_eq!(rd64(&ram, bp + 0x070), 0xe_0000, "acpi_rsdp_addr");
        // The command line: cmd_line_ptr (and its high half) point at the NUL-terminated text.
        let ptr = u64::from(rd32(&ram, bp + 0x228)) | u64::from(rd32(&ram, bp + 0x0c8)) << 32;
        assert_eq!(ptr, CMDLINE_GPA);
        let text = &ram[ptr as usize..ptr as usize + cmdline.len() + 1];
        assert_eq!(&text[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(text[cmdline.len()], 0);
        // The initrd: at the top of the highest RAM entry (below initrd_addr_max, clear of the
        // ACPI tables the map reserves at the top), 4 KiB aligned, above the kernel.
        let rd = u64::from(rd32(&ram, bp + 0x218)) | u64::from(rd32(&ram, bp + 0x0c0)) << 32;
        let rd_len = u64::from(rd32(&ram, bp + 0x21c)) | u64::from(rd32(&ram, bp + 0x0c4)) << 32;
        assert_eq!(rd_len, initrd.len() as u64);
        assert_eq!(rd, (ram_len - 0x1_0000 - rd_len) & !0xfff);
        assert!(rd >= load_at + u64::from(spec.init_size));
        assert_eq!(
            &ram[rd as usize..(rd + rd_len) as usize],
            &initrd[..],
            "initrd bytes"
        );
        // The E820 table.
        assert_eq!(rd8(&ram, bp + 0x1e8), map.len() as u8);
        for (i, e) in map.iter().enumerate() {
            let o = bp + 0x2d0 + i as u64 * 20;
            assert_eq!(
                (rd64(&ram, o), rd64(&ram, o + 8), rd32(&ram, o + 16)),
                (e.addr, e.size, e.kind as u32),
                "e820[{i}]"
            );
        }
        assert!(
            ram[(bp + 0x2d0 + map.len() as u64 * 20) as usize..(bp + 0xcd0) as usize]
                .iter()
                .all(|&b| b == 0),
            "unused E820 slots are zero"
        );

        // The GDT: flat 64-bit code at __BOOT_CS, flat read/write data at __BOOT_DS.
        let code = rd64(&ram, GDT_GPA + 0x10);
        let data = rd64(&ram, GDT_GPA + 0x18);
        for d in [code, data] {
            let base = (d >> 16) & 0xff_ffff | ((d >> 56) & 0xff) << 24;
            let limit = d & 0xffff | ((d >> 48) & 0xf) << 16;
            assert_eq!((base, limit), (0, 0xf_ffff), "flat 4 GiB: {d:#x}");
            assert_ne!(d & (1 << 47), 0, "present");
            assert_ne!(d & (1 << 44), 0, "code/data, not system");
            assert_ne!(d & (1 << 55), 0, "4 KiB granularity");
            assert_eq!((d >> 45) & 3, 0, "DPL 0");
        }
        assert_eq!((code >> 40) & 0xa, 0xa, "execute/read code");
        assert_ne!(code & (1 << 53), 0, "L: 64-bit code");
        assert_eq!(code & (1 << 54), 0, "D clear with L");
        assert_eq!((data >> 40) & 0xa, 0x2, "read/write data");

        // The identity tables map the kernel's init_size, the zero page and the command line.
        for va in [
            load_at,
            s.rip,
            load_at + u64::from(spec.init_size) - 1,
            BOOT_PARAMS_GPA,
            CMDLINE_GPA + cmdline.len() as u64,
            rd,
            0xffff_ffff,
        ] {
            assert_eq!(walk(&ram, s.cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(walk(&ram, s.cr3, 1 << 32), None, "nothing above 4 GiB");
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let spec = Spec {
            setup_sects: 0,
            ..good()
        };
        let img = bzimage(&spec);
        let image = LinuxImage::parse(&img).unwrap();
        assert_eq!(image.header().setup_sects, 4);
        assert_eq!(image.header().setup_len(), 5 * 512);
        assert_eq!(image.kernel(), &img[5 * 512..]);
    }

    #[test]
    fn relocates_when_pref_address_is_outside_ram() {
        // pref_address beyond RAM: the lowest kernel_alignment-aligned address ≥ 16 MiB.
        let spec = Spec {
            pref_address: 8 << 30,
            kernel_alignment: 4 << 20,
            ..good()
        };
        let img = bzimage(&spec);
        let image = LinuxImage::parse(&img).unwrap();
        let mut ram = vec![0u8; (32 * MIB) as usize];
        let s = load(
            &image,
            None,
            "",
            32 * MIB,
            &e820(32 * MIB),
            None,
            &mut SliceMemory(&mut ram),
        )
        .unwrap();
        assert_eq!(s.rip, 16 * MIB + 0x200);
        assert_eq!(rd32(&ram, BOOT_PARAMS_GPA + 0x214), (16 * MIB) as u32);
        assert_eq!(rd32(&ram, BOOT_PARAMS_GPA + 0x218), 0, "no initrd");
        assert_eq!(rd32(&ram, BOOT_PARAMS_GPA + 0x21c), 0);
        assert_eq!(rd64(&ram, BOOT_PARAMS_GPA + 0x070), 0, "no RSDP");
        assert_eq!(rd8(&ram, CMDLINE_GPA), 0, "empty command line");

        // pref_address inside RAM but not aligned: relocated too.
        let spec = Spec {
            pref_address: 17 * MIB,
            ..good()
        };
        let img = bzimage(&spec);
        let l = plan(
            &LinuxImage::parse(&img).unwrap(),
            None,
            "",
            64 * MIB,
            &[],
            None,
        )
        .unwrap();
        assert_eq!(l.kernel, GuestPhysAddr::new(16 * MIB));

        // A large kernel_alignment falls back toward min_alignment when RAM is tight, and the
        // alignment used is written back.
        let spec = Spec {
            pref_address: 0,
            kernel_alignment: 32 << 20,
            min_alignment: 21,
            init_size: 8 << 20,
            ..good()
        };
        let img = bzimage(&spec);
        let image = LinuxImage::parse(&img).unwrap();
        let l = plan(&image, None, "", 40 * MIB, &[], None).unwrap();
        assert_eq!(
            (l.kernel.as_u64(), l.kernel_alignment),
            (32 * MIB, 32 << 20)
        );
        let l = plan(&image, None, "", 36 * MIB, &[], None).unwrap();
        assert_eq!(
            (l.kernel.as_u64(), l.kernel_alignment),
            (16 * MIB, 16 << 20)
        );
        let mut ram = vec![0u8; (36 * MIB) as usize];
        load(
            &image,
            None,
            "",
            36 * MIB,
            &[],
            None,
            &mut SliceMemory(&mut ram),
        )
        .unwrap();
        assert_eq!(rd32(&ram, BOOT_PARAMS_GPA + 0x230), 16 << 20);

        // A non-relocatable kernel goes at pref_address or nowhere.
        let spec = Spec {
            relocatable: false,
            pref_address: MIB,
            ..good()
        };
        let img = bzimage(&spec);
        let image = LinuxImage::parse(&img).unwrap();
        assert_eq!(
            plan(&image, None, "", 8 * MIB, &[], None).unwrap().kernel,
            GuestPhysAddr::new(MIB)
        );
        let e = plan(&image, None, "", 4 * MIB, &[], None).unwrap_err();
        assert_eq!(
            e,
            LinuxError::NotRelocatable {
                pref: MIB,
                need: 4 << 20,
                ram: 4 * MIB
            }
        );
        assert!(
            e.to_string().starts_with("kernel is not relocatable"),
            "{e}"
        );
    }

    #[test]
    fn kernel_and_initrd_stay_in_the_maps_ram_around_reserved_holes() {
        // A root partition's map: RAM with atoll's memory and the pool reserved inside it.
        let map = [
            E820Entry {
                addr: 0,
                size: 0x9_f000,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: MIB,
                size: 40 * MIB,
                kind: E820Kind::Ram,
            },
            E820Entry {
                addr: 41 * MIB,
                size: 87 * MIB,
                kind: E820Kind::Reserved,
            },
        ];
        let img = bzimage(&good());
        let image = LinuxImage::parse(&img).unwrap();
        let size = 5 * MIB as usize;
        let l = plan(&image, Some(&vec![1u8; size]), "", 128 * MIB, &map, None).unwrap();
        let (at, len) = l.initrd.unwrap();
        assert!(at.as_u64() + len <= 41 * MIB, "below the reserved hole");
        assert_eq!(at.as_u64(), (41 * MIB - size as u64) & !0xfff);
        assert!(l.kernel.as_u64() + l.kernel_reserved <= at.as_u64());
        // No RAM entry holds the initrd: refused, not placed in the hole.
        let big = 60 * MIB as usize;
        assert!(matches!(
            plan(&image, Some(&vec![1u8; big]), "", 128 * MIB, &map, None),
            Err(LinuxError::InitrdTooBig { .. })
        ));
        // The kernel's preferred place reserved: a relocatable kernel goes to the lowest
        // aligned place in RAM above it, never into the hole.
        let hole_at_16 = [
            map[0],
            E820Entry {
                addr: MIB,
                size: 20 * MIB,
                kind: E820Kind::Reserved,
            },
            E820Entry {
                addr: 21 * MIB,
                size: 107 * MIB,
                kind: E820Kind::Ram,
            },
        ];
        let l = plan(&image, None, "", 128 * MIB, &hole_at_16, None).unwrap();
        let align = u64::from(l.kernel_alignment);
        assert_eq!(l.kernel.as_u64(), (21 * MIB).next_multiple_of(align));
        // No RAM entry big enough: refused.
        let all_reserved = [
            map[0],
            E820Entry {
                addr: MIB,
                size: 127 * MIB,
                kind: E820Kind::Reserved,
            },
        ];
        assert!(plan(&image, None, "", 128 * MIB, &all_reserved, None).is_err());
    }

    #[test]
    fn initrd_stays_below_initrd_addr_max_and_off_the_kernel() {
        let load_initrd = |spec: &Spec, ram: u64, size: usize| {
            let img = bzimage(spec);
            let image = LinuxImage::parse(&img).unwrap();
            plan(&image, Some(&vec![1u8; size]), "", ram, &[], None)
        };
        // initrd_addr_max below the end of RAM caps it: the last byte is at most the limit.
        let spec = Spec {
            initrd_addr_max: (32 * MIB - 1) as u32,
            ..good()
        };
        let size = 3 * MIB as usize + 123;
        let l = load_initrd(&spec, 64 * MIB, size).unwrap();
        let (at, len) = l.initrd.unwrap();
        assert_eq!(len, size as u64);
        assert_eq!(at.as_u64() % 4096, 0);
        assert!(
            at.as_u64() + len <= 32 * MIB,
            "last byte at most initrd_addr_max"
        );
        assert_eq!(
            at.as_u64(),
            (32 * MIB - size as u64) & !0xfff,
            "as high as it fits"
        );

        // No room above the kernel's init_size under the limit: it goes below the kernel.
        let spec = Spec {
            initrd_addr_max: (22 * MIB - 1) as u32,
            ..good()
        };
        let l = load_initrd(&spec, 64 * MIB, size).unwrap();
        let (at, len) = l.initrd.unwrap();
        let kernel = l.kernel.as_u64()..l.kernel.as_u64() + l.kernel_reserved;
        assert!(at.as_u64() + len <= kernel.start, "below the kernel");
        assert_eq!(at.as_u64(), (16 * MIB - size as u64) & !0xfff);

        // RAM end below initrd_addr_max: the top of RAM.
        let l = load_initrd(&good(), 24 * MIB, 4096).unwrap();
        assert_eq!(l.initrd.unwrap().0.as_u64(), 24 * MIB - 4096);

        // An empty initrd is no initrd.
        assert_eq!(load_initrd(&good(), 24 * MIB, 0).unwrap().initrd, None);
    }

    /// Memory that is all 0xaa; each refusal must leave it so.
    fn refused(
        image: &LinuxImage,
        initrd: Option<&[u8]>,
        cmdline: &str,
        ram: u64,
        e820: &[E820Entry],
        rsdp: Option<u64>,
    ) -> LinuxError {
        let mut mem = vec![0xaau8; ram as usize];
        let e = load(
            image,
            initrd,
            cmdline,
            ram,
            e820,
            rsdp,
            &mut SliceMemory(&mut mem),
        )
        .unwrap_err();
        assert!(mem.iter().all(|&b| b == 0xaa), "{e}: RAM was written");
        e
    }

    #[test]
    fn bad_images_are_refused_with_their_reason() {
        let msg = |b: &[u8]| LinuxImage::parse(b).unwrap_err().to_string();
        let img = bzimage(&good());

        assert_eq!(
            msg(b"MZ not a kernel"),
            "not a bzImage: 15 bytes are too few for a setup header (it reaches 0x268)"
        );
        let mut b = img.clone();
        b[hdr::BOOT_FLAG] = 0;
        assert_eq!(
            msg(&b),
            "not a bzImage: no boot flag 0xaa55 at 0x1fe (found 0xaa00)"
        );
        let mut b = img.clone();
        b[hdr::HEADER..hdr::HEADER + 4].copy_from_slice(b"HdrZ");
        assert_eq!(msg(&b), "not a bzImage: no HdrS signature at 0x202");
        let b = bzimage(&Spec {
            version: 0x020a,
            ..good()
        });
        assert_eq!(
            msg(&b),
            "boot protocol 2.10 is too old: atoll needs 2.12 or later"
        );
        let b = bzimage(&Spec {
            xloadflags: hdr::XLF_CAN_BE_LOADED_ABOVE_4G,
            ..good()
        });
        assert_eq!(
            msg(&b),
            "kernel has no 64-bit entry point (XLF_KERNEL_64 clear)"
        );
        let b = bzimage(&Spec {
            loadflags: 0,
            ..good()
        });
        assert!(msg(&b).contains("LOADED_HIGH"), "{}", msg(&b));
        let b = bzimage(&Spec {
            kernel_alignment: 0x30_0000,
            ..good()
        });
        assert!(msg(&b).contains("not a power of two"), "{}", msg(&b));
        let b = bzimage(&Spec {
            init_size: 0,
            ..good()
        });
        assert_eq!(msg(&b), "kernel header has init_size 0");
        let mut b = img.clone();
        b[hdr::JUMP + 1] = 0x20;
        assert!(
            msg(&b).starts_with("setup header ends at 0x222"),
            "{}",
            msg(&b)
        );

        // Truncated: in the header, in the setup code, in the kernel syssize describes.
        assert_eq!(
            msg(&img[..0x260]),
            "not a bzImage: 608 bytes are too few for a setup header (it reaches 0x268)"
        );
        assert_eq!(
            msg(&img[..0x26a]),
            "image is truncated: the setup header ends at 0x26c but the file has 0x26a bytes"
        );
        assert_eq!(
            msg(&img[..0x400]),
            "image is truncated: the setup code (setup_sects) ends at 0x800 but the file has 0x400 bytes"
        );
        assert_eq!(
            msg(&img[..img.len() - 1]),
            "image is truncated: the protected-mode kernel (syssize) ends at 0x3800 but the file has 0x37ff bytes"
        );
        let b = bzimage(&Spec {
            kernel_len: 0x100,
            ..good()
        });
        assert!(msg(&b).contains("64-bit entry at +0x200"), "{}", msg(&b));
    }

    #[test]
    fn bad_inputs_are_refused_and_ram_untouched() {
        let img = bzimage(&good());
        let image = LinuxImage::parse(&img).unwrap();
        let ram = 24 * MIB;

        // init_size does not fit.
        let big = bzimage(&Spec {
            init_size: 0x100_0000,
            ..good()
        });
        let e = refused(&LinuxImage::parse(&big).unwrap(), None, "", ram, &[], None);
        assert_eq!(
            e.to_string(),
            "kernel needs 0x1000000 bytes (init_size) from 0x1000000, past the end of guest RAM at 0x1800000"
        );

        // The command line: longer than cmdline_size, or with a NUL.
        let small = bzimage(&Spec {
            cmdline_size: 16,
            ..good()
        });
        let e = refused(
            &LinuxImage::parse(&small).unwrap(),
            None,
            "console=ttyS0 quiet",
            ram,
            &[],
            None,
        );
        assert_eq!(
            e.to_string(),
            "command line of 19 bytes is too long: this kernel takes at most 16 (cmdline_size)"
        );
        // Exactly cmdline_size is fine.
        assert!(plan(
            &LinuxImage::parse(&small).unwrap(),
            None,
            &"x".repeat(16),
            ram,
            &[],
            None
        )
        .is_ok());
        let e = refused(&image, None, &"x".repeat(3000), ram, &[], None);
        assert_eq!(
            e,
            LinuxError::CmdlineTooLong {
                len: 3000,
                max: 2047
            }
        );
        let e = refused(&image, None, "a\0b", ram, &[], None);
        assert_eq!(e.to_string(), "command line has a NUL byte at offset 1");

        // Too many E820 entries; an entry that wraps.
        let many = vec![
            E820Entry {
                addr: 0,
                size: 4096,
                kind: E820Kind::Ram
            };
            129
        ];
        let e = refused(&image, None, "", ram, &many, None);
        assert_eq!(
            e.to_string(),
            "129 E820 entries do not fit in boot_params (at most 128)"
        );
        let mut full = e820(ram);
        full.resize(
            128,
            E820Entry {
                addr: 1 << 40,
                size: 4096,
                kind: E820Kind::Reserved,
            },
        );
        assert!(plan(&image, None, "", ram, &full, None).is_ok());
        let wraps = [E820Entry {
            addr: u64::MAX - 10,
            size: 100,
            kind: E820Kind::Reserved,
        }];
        assert!(matches!(
            refused(&image, None, "", ram, &wraps, None),
            LinuxError::E820Wraps { index: 0, .. }
        ));

        // The initrd does not fit above or below the kernel.
        let initrd = vec![7u8; (20 * MIB) as usize];
        let e = refused(&image, Some(&initrd), "", ram, &[], None);
        assert_eq!(
            e.to_string(),
            "initrd of 0x1400000 bytes does not fit in guest RAM below 0x1800000 beside the kernel"
        );

        // The RSDP: outside RAM, or a kernel too old to be told.
        let e = refused(&image, None, "", ram, &[], Some(ram));
        assert_eq!(e, LinuxError::RsdpOutside { addr: ram, ram });
        let old = bzimage(&Spec {
            version: 0x020d,
            ..good()
        });
        let e = refused(
            &LinuxImage::parse(&old).unwrap(),
            None,
            "",
            ram,
            &[],
            Some(0xe_0000),
        );
        assert!(
            e.to_string()
                .starts_with("boot protocol 2.13 has no acpi_rsdp_addr"),
            "{e}"
        );

        // RAM too small for anything; memory smaller than the RAM it is described with.
        let e = refused(&image, None, "", 0x8_0000, &[], None);
        assert_eq!(e, LinuxError::RamTooSmall { ram: 0x8_0000 });
        let mut mem = vec![0xaau8; ram as usize];
        let e = load(
            &image,
            None,
            "",
            ram + 4096,
            &[],
            None,
            &mut SliceMemory(&mut mem),
        )
        .unwrap_err();
        assert_eq!(e, LinuxError::MemoryTooSmall { ram: ram + 4096 });
        assert!(mem.iter().all(|&b| b == 0xaa));
    }

    /// Guest memory that only checks and counts writes (for the randomized test).
    struct Probe {
        ram: u64,
        writes: usize,
    }

    impl GuestMemory for Probe {
        fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
            let end = gpa.as_u64().checked_add(buf.len() as u64)?;
            (end <= self.ram).then(|| buf.fill(0))
        }
        fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
            let end = gpa.as_u64().checked_add(buf.len() as u64)?;
            assert!(end <= self.ram, "write past RAM at {gpa}");
            self.writes += 1;
            Some(())
        }
    }

    #[test]
    fn corrupted_and_truncated_images_never_panic_or_write_on_error() {
        let base = bzimage(&good());
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut parsed, mut loaded) = (0, 0);
        for round in 0..5_000 {
            let mut b = base.clone();
            // Corrupt a few header bytes (mostly the fields atoll reads), sometimes truncate.
            for _ in 0..1 + next() % 4 {
                let at = if next() % 4 == 0 {
                    (next() % b.len() as u64) as usize
                } else {
                    0x1f1 + (next() % 0x80) as usize
                };
                b[at] = next() as u8;
            }
            if round % 3 == 0 {
                b.truncate((next() % (b.len() as u64 + 1)) as usize);
            }
            let Ok(image) = LinuxImage::parse(&b) else {
                continue;
            };
            parsed += 1;
            let _ = image.version_string();
            let ram = [MIB, 24 * MIB, 64 * MIB, 5 << 30][(next() % 4) as usize];
            let initrd = vec![0u8; (next() % (8 * MIB)) as usize];
            let cmdline = "x".repeat((next() % 3000) as usize);
            let mut mem = Probe { ram, writes: 0 };
            let rsdp = (next() % 2 == 0).then_some(0xe_0000);
            match load(
                &image,
                Some(&initrd),
                &cmdline,
                ram,
                &e820(64 * MIB),
                rsdp,
                &mut mem,
            ) {
                Ok(s) => {
                    loaded += 1;
                    assert!(mem.writes > 0);
                    assert!(s.rip >= MIN_LOAD && s.rip < IDENTITY_END);
                }
                Err(e) => {
                    assert_eq!(mem.writes, 0, "{e}: wrote before refusing");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        assert!(
            parsed > 1000 && loaded > 300,
            "{parsed} parsed, {loaded} loaded"
        );
    }

    /// The head (setup code and header, first 64 KiB) of Debian's 6.1 kernel: see
    /// `tests/fixtures/linux/README.md`.
    const DEBIAN_HEAD: &[u8] = include_bytes!("../../../tests/fixtures/linux/vmlinuz-6.1-head.bin");

    #[test]
    fn debian_6_1_kernel_header() {
        let h = SetupHeader::parse(DEBIAN_HEAD).unwrap();
        assert!(h.protocol() >= (2, 15), "{:?}", h.protocol());
        assert!(h.kernel_64());
        assert!(h.above_4g());
        assert!(h.relocatable);
        assert!(h.kernel_alignment.is_power_of_two() && h.kernel_alignment >= 2 << 20);
        assert!(
            h.init_size >= 16 << 20 && h.init_size <= 256 << 20,
            "{:#x}",
            h.init_size
        );
        assert_eq!(h.pref_address, 16 * MIB);
        assert_eq!(h.end, 0x26c);
        assert!(h.cmdline_size >= 255);
        assert!(h.setup_len() < DEBIAN_HEAD.len());
        // The head alone lacks the kernel syssize describes.
        assert!(matches!(
            LinuxImage::parse(DEBIAN_HEAD),
            Err(LinuxError::Truncated { .. })
        ));

        // With the kernel padded to syssize it loads: at pref_address, with a full-size initrd
        // at the top of RAM.
        let mut img = DEBIAN_HEAD.to_vec();
        img.resize(h.setup_len() + h.syssize as usize * 16, 0);
        let image = LinuxImage::parse(&img).unwrap();
        assert!(image.version_string().unwrap().starts_with("6.1.0-"));
        let ram = 256 * MIB;
        let mut mem = vec![0u8; ram as usize];
        let initrd = vec![0x11u8; (3 * MIB) as usize];
        let s = load(
            &image,
            Some(&initrd),
            "console=ttyS0",
            ram,
            &e820(ram),
            Some(0xe_0000),
            &mut SliceMemory(&mut mem),
        )
        .unwrap();
        assert_eq!(s.rip, 16 * MIB + 0x200);
        assert_eq!(
            &mem[(16 * MIB) as usize..][..0x1000],
            &img[h.setup_len()..][..0x1000]
        );
        // Below the 64 KiB of ACPI tables the map reserves at the top.
        assert_eq!(
            rd32(&mem, BOOT_PARAMS_GPA + 0x218),
            (ram - 3 * MIB - 0x1_0000) as u32
        );
        assert_eq!(rd16(&mem, BOOT_PARAMS_GPA + 0x206), h.version);
    }
}
