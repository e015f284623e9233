//! The vendor-neutral vCPU layer.
//!
//! Policy code (atoll's exit handlers and virtual platforms) drives a [`Vcpu`] and handles an
//! [`Exit`]; it depends on this crate and never on `vmx` or `svm`, so the compiler keeps it
//! vendor-neutral. A backend (VT-x or AMD-V, in the image crate) turns its hardware exit into
//! an `Exit`, and implements the few operations handlers need: registers, skipping the exiting
//! instruction, injecting events, control registers and EFER.
//!
//! * [`GuestMemory`]: a partition's guest-physical memory, bounds-checked.
//! * [`decode`]: the guest's paging modes, its page walk, and `iced-x86` decoding of the
//!   instruction behind an exit (for backends without decode assists, and MMIO).
//! * [`cpuid_table`]: the CPUID answers a backend gives without leaving its run loop.
//! * [`double_fault`]: how an exception raised by an exit handler combines with an event the
//!   backend queued again after the exit interrupted its delivery.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cpuid_table;
pub mod decode;
pub mod double_fault;

pub use cpuid_table::CpuidTable;

use boot::GuestPhysAddr;
use core::fmt;

pub use boot::regs::Gpr;

/// The accesses a nested-page fault was caused by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access {
    /// A data read.
    pub read: bool,
    /// A data write.
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = alloc::vec::Vec::new();
        if self.read {
            parts.push("read");
        }
        if self.write {
            parts.push("write");
        }
        if self.fetch {
            parts.push("fetch");
        }
        if parts.is_empty() {
            parts.push("unknown");
        }
        write!(f, "{}", parts.join("+"))
    }
}

/// Why a vCPU left the guest, vendor-neutral.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// CPUID; leaf in RAX, subleaf in RCX.
    Cpuid,
    /// HLT.
    Hlt,
    /// IN/OUT (and INS/OUTS): `size` bytes at `port`; the data is AL/AX/EAX.
    Io {
        port: u16,
        size: u8,
        write: bool,
        string: bool,
        rep: bool,
    },
    /// RDMSR; index in RCX.
    MsrRead,
    /// WRMSR; index in RCX, value in EDX:EAX.
    MsrWrite,
    /// MOV to CR`cr` from `gpr`.
    CrWrite { cr: u8, gpr: Gpr },
    /// MOV from CR`cr` to `gpr`.
    CrRead { cr: u8, gpr: Gpr },
    /// CLTS.
    Clts,
    /// LMSW with this source.
    Lmsw(u16),
    /// XSETBV; XCR index in ECX, value in EDX:EAX.
    Xsetbv,
    /// The hypercall instruction (VMCALL / VMMCALL).
    Hypercall,
    /// A guest-physical access the second-stage tables do not allow.
    NestedPageFault {
        gpa: GuestPhysAddr,
        access: Access,
        linear: Option<u64>,
    },
    /// The guest triple-faulted (shutdown).
    TripleFault,
    /// The CPU refused to enter the guest because of its state.
    InvalidGuestState,
    /// A host interrupt arrived while the guest ran.
    ExternalInterrupt { vector: Option<u8> },
    /// A host NMI arrived while the guest ran.
    Nmi,
    /// The guest can take an interrupt now.
    InterruptWindow,
    /// The guest received INIT.
    Init,
    /// The guest received a STARTUP IPI with this vector.
    Sipi { vector: u8 },
    /// An exception atoll intercepts (#DB, #AC) was about to be delivered to the guest; the
    /// backend has already put what the exception reports in the guest's state (DR6 for #DB).
    Exception { vector: u8, error_code: Option<u32> },
    /// WBINVD (or WBNOINVD).
    Wbinvd,
    /// INVD.
    Invd,
    /// A VMX, SVM or SMX instruction (VMXON, VMRUN, GETSEC, …; not the hypercall).
    VirtualizationInstruction,
    /// MONITOR or MWAIT (and MONITORX/MWAITX).
    MonitorMwait,
    /// RDPMC.
    Rdpmc,
    /// An exit the backend does not translate (its hardware code and name).
    Unknown { code: u32, name: &'static str },
}

/// Counting classes of exits, for the per-enclave statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitKind {
    Cpuid,
    Hlt,
    Io,
    Msr,
    Cr,
    Xsetbv,
    Hypercall,
    NestedPageFault,
    TripleFault,
    InvalidGuestState,
    ExternalInterrupt,
    Nmi,
    InterruptWindow,
    Init,
    Sipi,
    Exception,
    CacheFlush,
    Refused,
    Unknown,
}

impl ExitKind {
    /// Every kind, in counter order.
    pub const ALL: [ExitKind; 19] = [
        ExitKind::Cpuid,
        ExitKind::Hlt,
        ExitKind::Io,
        ExitKind::Msr,
        ExitKind::Cr,
        ExitKind::Xsetbv,
        ExitKind::Hypercall,
        ExitKind::NestedPageFault,
        ExitKind::TripleFault,
        ExitKind::InvalidGuestState,
        ExitKind::ExternalInterrupt,
        ExitKind::Nmi,
        ExitKind::InterruptWindow,
        ExitKind::Init,
        ExitKind::Sipi,
        ExitKind::Exception,
        ExitKind::CacheFlush,
        ExitKind::Refused,
        ExitKind::Unknown,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::Cpuid => "cpuid",
            ExitKind::Hlt => "hlt",
            ExitKind::Io => "io",
            ExitKind::Msr => "msr",
            ExitKind::Cr => "cr",
            ExitKind::Xsetbv => "xsetbv",
            ExitKind::Hypercall => "hypercall",
            ExitKind::NestedPageFault => "nested_page_fault",
            ExitKind::TripleFault => "triple_fault",
            ExitKind::InvalidGuestState => "invalid_guest_state",
            ExitKind::ExternalInterrupt => "external_interrupt",
            ExitKind::Nmi => "nmi",
            ExitKind::InterruptWindow => "interrupt_window",
            ExitKind::Init => "init",
            ExitKind::Sipi => "sipi",
            ExitKind::Exception => "exception",
            ExitKind::CacheFlush => "cache_flush",
            ExitKind::Refused => "refused_instruction",
            ExitKind::Unknown => "unknown",
        }
    }
}

impl Exit {
    /// The counter this exit goes to.
    pub fn kind(&self) -> ExitKind {
        match self {
            Exit::Cpuid => ExitKind::Cpuid,
            Exit::Hlt => ExitKind::Hlt,
            Exit::Io { .. } => ExitKind::Io,
            Exit::MsrRead | Exit::MsrWrite => ExitKind::Msr,
            Exit::CrWrite { .. } | Exit::CrRead { .. } | Exit::Clts | Exit::Lmsw(_) => ExitKind::Cr,
            Exit::Xsetbv => ExitKind::Xsetbv,
            Exit::Hypercall => ExitKind::Hypercall,
            Exit::NestedPageFault { .. } => ExitKind::NestedPageFault,
            Exit::TripleFault => ExitKind::TripleFault,
            Exit::InvalidGuestState => ExitKind::InvalidGuestState,
            Exit::ExternalInterrupt { .. } => ExitKind::ExternalInterrupt,
            Exit::Nmi => ExitKind::Nmi,
            Exit::InterruptWindow => ExitKind::InterruptWindow,
            Exit::Init => ExitKind::Init,
            Exit::Sipi { .. } => ExitKind::Sipi,
            Exit::Exception { .. } => ExitKind::Exception,
            Exit::Wbinvd | Exit::Invd => ExitKind::CacheFlush,
            Exit::VirtualizationInstruction | Exit::MonitorMwait | Exit::Rdpmc => ExitKind::Refused,
            Exit::Unknown { .. } => ExitKind::Unknown,
        }
    }
}

/// Exception vectors handlers inject.
pub mod vector {
    /// Debug.
    pub const DB: u8 = 1;
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Alignment check.
    pub const AC: u8 = 17;
    /// General protection.
    pub const GP: u8 = 13;
}

/// What a backend could not do to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuError {
    /// The value is not one the guest may load (the handler injects #GP).
    Rejected,
}

/// One virtual CPU, as exit handlers see it.
pub trait Vcpu {
    /// A general-purpose register.
    fn gpr(&self, r: Gpr) -> u64;
    /// Sets a general-purpose register.
    fn set_gpr(&mut self, r: Gpr, v: u64);
    /// The instruction pointer.
    fn rip(&self) -> u64;
    /// Moves past the instruction that caused the current exit.
    fn skip_instruction(&mut self);
    /// Sets the instruction pointer (after emulating an instruction whose length the handler
    /// decoded itself, such as an MMIO access).
    fn set_rip(&mut self, rip: u64);
    /// Raises `vector` in the guest at its next entry (with `error_code` when the vector has one).
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// The guest's view of a control register (0, 2, 3, 4 or 8). CR8 is a per-vCPU value the
    /// backend keeps (both backends intercept CR8; the guest never reaches the real TPR).
    fn cr(&self, cr: u8) -> u64;
    /// Loads a control register as the guest asked (already validated by the handler); the
    /// backend applies what the hardware needs.
    fn set_cr(&mut self, cr: u8, value: u64) -> Result<(), VcpuError>;
    /// What the backend adds to the core's TSC for the guest (RDTSC, RDTSCP, RDMSR IA32_TSC).
    fn tsc_offset(&self) -> u64;
    /// Sets that offset (a guest's WRMSR to IA32_TSC moves it, never the core's TSC).
    fn set_tsc_offset(&mut self, offset: u64);
    /// The guest's IA32_EFER.
    fn efer(&self) -> u64;
    /// Loads IA32_EFER (already validated by the handler).
    fn set_efer(&mut self, value: u64) -> Result<(), VcpuError>;
    /// The guest's RFLAGS.
    fn rflags(&self) -> u64;
    /// The guest's current privilege level.
    fn cpl(&self) -> u8;
    /// The guest's code segment (base, L and D bits), for fetching the current instruction.
    fn code_segment(&self) -> decode::CodeSegment;
    /// The guest's IA32_PAT.
    fn pat(&self) -> u64;
    /// Loads IA32_PAT (already validated by the handler).
    fn set_pat(&mut self, value: u64);

    /// Whether an external interrupt can be delivered at the next entry: RFLAGS.IF is set, no
    /// STI or MOV SS shadow blocks it, and no event (an injected or a re-delivered one) is
    /// already queued for that entry.
    fn interrupt_window_open(&self) -> bool;
    /// Queues external interrupt `vector` (32–255) for delivery at the next entry. Callers only
    /// do this when [`Vcpu::interrupt_window_open`] says so.
    fn inject_interrupt(&mut self, vector: u8);
    /// Asks for an [`Exit::InterruptWindow`] as soon as the guest can take an interrupt
    /// (`true`), or stops asking (`false`).
    fn request_interrupt_window(&mut self, on: bool);
    /// Queues an NMI for the next entry; `false` (nothing queued) when NMIs are blocked or an
    /// event is already queued, in which case the caller tries again at a later entry.
    fn inject_nmi(&mut self) -> bool;
}

/// Guest-physical memory of one enclave.
pub trait GuestMemory {
    /// Copies `buf.len()` bytes from `gpa`; `None` if any byte lies outside guest RAM.
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()>;
    /// Copies `buf` to `gpa`; `None` if any byte lies outside guest RAM.
    fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()>;
    /// Whether every byte of `[gpa, gpa + len)` is guest RAM that [`GuestMemory::read`] and
    /// [`GuestMemory::write`] reach (a range that wraps past the top is not). Device models check
    /// a guest's buffer with it before they accept the buffer, so a bad one is refused whole
    /// rather than half-copied. The default says no to everything: a memory that does not know
    /// its bounds exactly must not vouch for a buffer.
    fn covers(&self, gpa: GuestPhysAddr, len: u64) -> bool {
        let _ = (gpa, len);
        false
    }
}

/// A partition's RAM as atoll reaches it: a host pointer and a length, guest-physical 0 at the
/// pointer. Every access is bounds-checked and copies through raw pointers
/// (`ptr::copy_nonoverlapping`), the way rust-vmm's `VolatileSlice` does: no `&[u8]` or
/// `&mut [u8]` ever covers memory that the partition's other vCPUs (or its devices) may write at
/// the same time, so the compiler never assumes it stable. A guest racing with a copy can only
/// change which bytes atoll sees, never where atoll reads or writes.
pub struct GuestRam {
    base: core::ptr::NonNull<u8>,
    len: usize,
}

impl GuestRam {
    /// The RAM at `base`, `len` bytes.
    ///
    /// # Safety
    ///
    /// `base` must be valid for reads and writes of `len` bytes for as long as the value lives
    /// (the partition's RAM stays allocated to it), and no Rust reference may cover those bytes
    /// while it does.
    pub unsafe fn new(base: core::ptr::NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The byte offset of `[gpa, gpa + len)` inside the RAM, if all of it is.
    fn offset(&self, gpa: GuestPhysAddr, len: usize) -> Option<usize> {
        let start = usize::try_from(gpa.as_u64()).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.len).then_some(start)
    }

    /// The host pointer to the byte at `offset` (checked by the caller to lie inside the RAM;
    /// computing it needs no `unsafe`, only dereferencing it does).
    fn at(&self, offset: usize) -> *mut u8 {
        self.base.as_ptr().wrapping_add(offset)
    }

    /// Sets `len` bytes at `gpa` to `value`; `None` if any lies outside the RAM.
    pub fn fill(&mut self, gpa: GuestPhysAddr, len: usize, value: u8) -> Option<()> {
        let start = self.offset(gpa, len)?;
        // SAFETY: `start + len <= self.len` (checked above), and `new`'s contract makes the
        // whole range valid for writes with no Rust reference covering it.
        unsafe { core::ptr::write_bytes(self.at(start), value, len) };
        Some(())
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        let start = self.offset(gpa, buf.len())?;
        // SAFETY: the source `start..start + buf.len()` is inside the RAM (checked above) and
        // valid for reads by `new`'s contract; `buf` is atoll's own memory, never guest RAM, so
        // the two do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(self.at(start), buf.as_mut_ptr(), buf.len()) };
        Some(())
    }

    fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
        let start = self.offset(gpa, buf.len())?;
        // SAFETY: the destination is inside the RAM (checked above) and valid for writes by
        // `new`'s contract; `buf` is atoll's own memory, so they do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), self.at(start), buf.len()) };
        Some(())
    }

    fn covers(&self, gpa: GuestPhysAddr, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|len| self.offset(gpa, len).is_some())
    }
}

/// A flat slice as guest memory starting at GPA 0, for host tests (on the target, partition RAM
/// is a [`GuestRam`]).
#[cfg(any(test, feature = "fake"))]
pub struct SliceMemory<'a>(pub &'a mut [u8]);

#[cfg(any(test, feature = "fake"))]
impl GuestMemory for SliceMemory<'_> {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        let start = usize::try_from(gpa.as_u64()).ok()?;
        let end = start.checked_add(buf.len())?;
        buf.copy_from_slice(self.0.get(start..end)?);
        Some(())
    }

    fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
        let start = usize::try_from(gpa.as_u64()).ok()?;
        let end = start.checked_add(buf.len())?;
        self.0.get_mut(start..end)?.copy_from_slice(buf);
        Some(())
    }

    fn covers(&self, gpa: GuestPhysAddr, len: u64) -> bool {
        gpa.as_u64()
            .checked_add(len)
            .is_some_and(|end| end <= self.0.len() as u64)
    }
}

/// A vCPU for host tests: registers in memory, events recorded.
#[cfg(any(test, feature = "fake"))]
pub mod fake {
    use super::*;
    use alloc::vec::Vec;

    #[derive(Default)]
    pub struct FakeVcpu {
        pub gprs: [u64; 16],
        pub rip: u64,
        pub skipped: u32,
        pub injected: Option<(u8, Option<u32>)>,
        pub cr: [u64; 9],
        pub efer: u64,
        pub rflags: u64,
        pub cpl: u8,
        pub cs: crate::decode::CodeSegment,
        pub pat: u64,
        pub window_open: bool,
        pub injected_irqs: Vec<u8>,
        pub window_requested: bool,
        pub nmis: u32,
        pub tsc_offset: u64,
    }

    impl Vcpu for FakeVcpu {
        fn gpr(&self, r: Gpr) -> u64 {
            self.gprs[r as usize]
        }
        fn set_gpr(&mut self, r: Gpr, v: u64) {
            self.gprs[r as usize] = v;
        }
        fn rip(&self) -> u64 {
            self.rip
        }
        fn skip_instruction(&mut self) {
            self.skipped += 1;
        }
        fn set_rip(&mut self, rip: u64) {
            self.rip = rip;
        }
        fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
            self.injected = Some((vector, error_code));
        }
        fn cr(&self, cr: u8) -> u64 {
            self.cr[usize::from(cr)]
        }
        fn set_cr(&mut self, cr: u8, value: u64) -> Result<(), VcpuError> {
            self.cr[usize::from(cr)] = value;
            Ok(())
        }
        fn tsc_offset(&self) -> u64 {
            self.tsc_offset
        }
        fn set_tsc_offset(&mut self, offset: u64) {
            self.tsc_offset = offset;
        }
        fn efer(&self) -> u64 {
            self.efer
        }
        fn set_efer(&mut self, value: u64) -> Result<(), VcpuError> {
            self.efer = value;
            Ok(())
        }
        fn rflags(&self) -> u64 {
            self.rflags
        }
        fn cpl(&self) -> u8 {
            self.cpl
        }
        fn code_segment(&self) -> crate::decode::CodeSegment {
            self.cs
        }
        fn pat(&self) -> u64 {
            self.pat
        }
        fn set_pat(&mut self, value: u64) {
            self.pat = value;
        }
        fn interrupt_window_open(&self) -> bool {
            self.window_open && self.rflags & (1 << 9) != 0
        }
        fn inject_interrupt(&mut self, vector: u8) {
            self.injected_irqs.push(vector);
            self.window_open = false;
        }
        fn request_interrupt_window(&mut self, on: bool) {
            self.window_requested = on;
        }
        fn inject_nmi(&mut self) -> bool {
            self.nmis += 1;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_memory_refuses_out_of_range() {
        let mut ram = [0u8; 16];
        let mut m = SliceMemory(&mut ram);
        assert!(m.write(GuestPhysAddr::new(12), &[1, 2, 3, 4]).is_some());
        assert!(m.write(GuestPhysAddr::new(13), &[1, 2, 3, 4]).is_none());
        assert!(m.write(GuestPhysAddr::new(u64::MAX), &[1]).is_none());
        let mut b = [0u8; 4];
        assert!(m.read(GuestPhysAddr::new(12), &mut b).is_some());
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(m.covers(GuestPhysAddr::new(12), 4));
        assert!(m.covers(GuestPhysAddr::new(16), 0));
        assert!(!m.covers(GuestPhysAddr::new(13), 4));
        assert!(!m.covers(GuestPhysAddr::new(1), u64::MAX));
    }

    #[test]
    fn guest_ram_copies_inside_its_bounds_only() {
        let mut backing = vec![0u8; 64];
        let ptr = core::ptr::NonNull::new(backing.as_mut_ptr()).unwrap();
        // SAFETY: `backing` outlives `ram` and is not referenced while `ram` is used.
        let mut ram = unsafe { GuestRam::new(ptr, 64) };
        assert_eq!(ram.len(), 64);
        assert!(ram.write(GuestPhysAddr::new(60), &[1, 2, 3, 4]).is_some());
        assert!(ram.write(GuestPhysAddr::new(61), &[1, 2, 3, 4]).is_none());
        assert!(ram
            .write(GuestPhysAddr::new(u64::MAX - 1), &[1, 2, 3, 4])
            .is_none());
        assert!(
            ram.write(GuestPhysAddr::new(64), &[]).is_some(),
            "empty at the end"
        );
        assert!(
            ram.write(GuestPhysAddr::new(65), &[]).is_none(),
            "empty past the end"
        );
        let mut b = [0u8; 4];
        assert!(ram.read(GuestPhysAddr::new(60), &mut b).is_some());
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(ram.read(GuestPhysAddr::new(62), &mut b).is_none());
        assert!(ram.covers(GuestPhysAddr::new(60), 4));
        assert!(!ram.covers(GuestPhysAddr::new(61), 4));
        assert!(!ram.covers(GuestPhysAddr::new(u64::MAX - 1), 4));
        assert!(!ram.covers(GuestPhysAddr::new(0), u64::MAX));
        assert_eq!(b, [1, 2, 3, 4], "a refused read leaves the buffer alone");
        assert!(ram.fill(GuestPhysAddr::new(0), 64, 0xaa).is_some());
        assert!(ram.fill(GuestPhysAddr::new(1), 64, 0).is_none());
        let _ = ram;
        assert!(backing.iter().all(|&x| x == 0xaa));
    }

    #[test]
    fn gpr_numbers() {
        assert_eq!(Gpr::from_index(0), Some(Gpr::Rax));
        assert_eq!(Gpr::from_index(4), Some(Gpr::Rsp));
        assert_eq!(Gpr::from_index(15), Some(Gpr::R15));
        assert_eq!(Gpr::from_index(16), None);
    }

    #[test]
    fn every_kind_has_a_distinct_name() {
        let names: alloc::collections::BTreeSet<_> =
            ExitKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), ExitKind::ALL.len());
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }
}
