//! What a guest may rely on, shared by atoll and the guests in `guest-kit` (no allocation, no
//! dependencies, so any bare-metal guest can use it).
//!
//! **Hypercalls** are VMCALL (Intel) or VMMCALL (AMD) at CPL 0 with the number in RAX and
//! arguments in RBX and RCX; atoll answers with a [`status`] in RAX (other registers as the call
//! says). At CPL > 0 the instruction raises #UD.
//!
//! **The control device** ([`control`]) is how the host's `atoll` command reaches atoll.
//!
//! **CPUID** leaf 0x4000_0000 returns the highest hypervisor leaf in EAX and
//! [`CPUID_SIGNATURE`] in EBX, ECX, EDX; leaf 0x4000_0001 returns the ABI version in EAX.
#![no_std]

pub mod channel;
pub mod control;

/// The hypercall ABI version.
pub const HYPERCALL_ABI_VERSION: u64 = 1;

/// Hypercall numbers (RAX).
pub mod hypercall {
    /// Returns RBX = ABI version, RCX = highest hypercall number.
    pub const VERSION: u64 = 0;
    /// Writes RCX bytes at guest-physical RBX to atoll's console, tagged with the enclave name.
    pub const CONSOLE_WRITE: u64 = 1;
    /// Merges the JSON object of RCX bytes at guest-physical RBX into the enclave's results: each
    /// top-level key is set to its value (a key reported again takes the newer value). The
    /// object may nest at most [`MAX_REPORT_DEPTH`](super::MAX_REPORT_DEPTH) levels, and the
    /// results of an enclave have a fixed budget; a report that breaks either is refused whole
    /// with [`INVALID`](super::status::INVALID).
    pub const REPORT: u64 = 2;
    /// Ends the enclave with exit code RBX.
    pub const EXIT: u64 = 3;
    /// The highest number.
    pub const MAX: u64 = EXIT;
    /// Test builds only: makes atoll itself fault while it handles this call, to prove that the
    /// fault ends only the calling enclave. RBX = one of [`fault`]. Served only by images built
    /// with the `fault-injection` feature (`cargo xtask` builds them for the scenarios that ask);
    /// every other image answers [`super::status::UNKNOWN`]. Not counted in [`MAX`].
    pub const FAULT_INJECT: u64 = 0x7f00;

    /// What [`FAULT_INJECT`] makes atoll do.
    pub mod fault {
        /// A Rust panic in the exit handler.
        pub const PANIC: u64 = 1;
        /// A page fault: atoll reads an address its own page tables do not map.
        pub const PAGE_FAULT: u64 = 2;
        /// An allocation the heap cannot satisfy (an exhausted budget).
        pub const ALLOCATION: u64 = 3;
        /// An invalid opcode (#UD) in atoll's code.
        pub const INVALID_OPCODE: u64 = 4;
        /// Unbounded recursion: atoll's stack runs into its guard page.
        pub const STACK_OVERFLOW: u64 = 5;
    }
}

/// Hypercall status codes (RAX after the call).
pub mod status {
    /// Done.
    pub const OK: u64 = 0;
    /// No such hypercall.
    pub const UNKNOWN: u64 = 1;
    /// A buffer lies (partly) outside guest RAM.
    pub const FAULT: u64 = 2;
    /// An argument is invalid: a buffer longer than
    /// [`MAX_HYPERCALL_BUFFER`](super::MAX_HYPERCALL_BUFFER); for REPORT also a buffer that is
    /// not a JSON object, nests deeper than [`MAX_REPORT_DEPTH`](super::MAX_REPORT_DEPTH), or
    /// would take the enclave's results past their budget (atoll counts those bytes as dropped).
    /// Nothing of a refused call takes effect.
    pub const INVALID: u64 = 3;
}

/// Longest buffer a hypercall takes.
pub const MAX_HYPERCALL_BUFFER: u64 = 4096;
/// Deepest nesting of objects and arrays in a REPORT (the top-level object is level 1).
pub const MAX_REPORT_DEPTH: usize = 8;
/// First hypervisor CPUID leaf.
pub const CPUID_HV_BASE: u32 = 0x4000_0000;
/// Hypervisor signature in leaf 0x4000_0000 (EBX, ECX, EDX).
pub const CPUID_SIGNATURE: &[u8; 12] = b"AtollHV\0\0\0\0\0";

/// The enclave platform's ACPI power-management registers (hardware-reduced ACPI, advertised in
/// the FADT atoll generates; ACPI 6.5 §4.8.3.6–4.8.3.7). A guest without an ACPI interpreter (the
/// bare-metal test guests) may use them directly.
pub mod acpi_pm {
    /// The reset register's I/O port (8 bits).
    pub const RESET_PORT: u16 = 0x604;
    /// The value that resets the enclave when written to [`RESET_PORT`].
    pub const RESET_VALUE: u8 = 0x01;
    /// The sleep control register's I/O port (8 bits).
    pub const SLEEP_CONTROL_PORT: u16 = 0x600;
    /// The sleep status register's I/O port (8 bits).
    pub const SLEEP_STATUS_PORT: u16 = 0x601;
    /// SLP_TYP of S5 (soft off), as the DSDT's `\_S5` package says.
    pub const S5_SLP_TYP: u8 = 5;
    /// SLP_TYP's position in the sleep control register (bits 4:2).
    pub const SLP_TYP_SHIFT: u32 = 2;
    /// SLP_EN (bit 5): writing it with SLP_TYP enters that state.
    pub const SLP_EN: u8 = 1 << 5;
    /// What powers the enclave off when written to [`SLEEP_CONTROL_PORT`] (0x34).
    pub const S5_SLEEP_CONTROL_VALUE: u8 = (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN;
}
