//! Exit handlers: what atoll does when an enclave's vCPU leaves the guest.
//!
//! Everything here is vendor-neutral policy on top of [`atoll_vcpu`]: the CPUID filter, the
//! emulated COM1, the I/O policy for other ports, the MSR allowlist, control-register and XCR0
//! validation, the hypercall ABI, and containment (which exits end the enclave, with what
//! report). A handler touches only its own vCPU, its enclave's memory and its enclave's
//! [`EnclaveRun`] state; nothing global. Guest-controlled values never cause a panic: bad
//! values become an injected exception, an error code in RAX, or an end reason.

use crate::partition::config::IoPolicy;
use alloc::boxed::Box;
use alloc::string::{String, ToString};
use atoll_devices::bounded::{lossy_utf8_into, ReportStore, REPORT_BUDGET};
use atoll_vcpu::{vector, Access, Exit, ExitKind, Gpr, GuestMemory, Vcpu};
use boot::GuestPhysAddr;
use core::fmt;

pub use atoll_abi::{
    hypercall, status, CPUID_HV_BASE, CPUID_SIGNATURE, HYPERCALL_ABI_VERSION, MAX_HYPERCALL_BUFFER,
};

/// MSRs (SDM Vol. 4) the handlers know by name.
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_APIC_BASE: u32 = 0x1b;
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_MTRRCAP: u32 = 0xfe;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const IA32_EFER: u32 = 0xc000_0080;
    pub const IA32_STAR: u32 = 0xc000_0081;
    pub const IA32_LSTAR: u32 = 0xc000_0082;
    pub const IA32_CSTAR: u32 = 0xc000_0083;
    pub const IA32_FMASK: u32 = 0xc000_0084;
    pub const IA32_FS_BASE: u32 = 0xc000_0100;
    pub const IA32_GS_BASE: u32 = 0xc000_0101;
    pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const IA32_TSC_AUX: u32 = 0xc000_0103;
    pub const IA32_SPEC_CTRL: u32 = 0x48;
    pub const IA32_PRED_CMD: u32 = 0x49;
    pub const IA32_FLUSH_CMD: u32 = 0x10b;
}

/// MSRs the guest reads and writes directly (no exit). Each is either switched by the
/// backends on every entry and exit (VMX: SYSENTER and FS/GS base through the VMCS guest and
/// host state; SVM: VMLOAD/VMSAVE, APM Vol. 2 §15.5.2, for SYSENTER, STAR/LSTAR/CSTAR/SFMASK,
/// KERNEL_GS_BASE and FS/GS base) or state atoll's own code never consumes (it runs at CPL 0
/// with no SYSCALL, SWAPGS, RDTSCP or RDPID, and leaves IA32_SPEC_CTRL at its reset value 0, so
/// a guest's value only adds restrictions for atoll while it handles an exit); the backends
/// reset every one of them when a vCPU is created, so the next partition on a core never sees
/// the last one's values. `docs/security.md` lists each. IA32_PAT is not here: the backends
/// keep the guest's PAT in their own state (VMCS guest PAT, VMCB G_PAT), so it is emulated.
/// IA32_TSC is emulated on top of the TSC offset (reads and writes exit; RDTSC does not).
pub const PASSTHROUGH_MSRS: &[u32] = &[
    msr::IA32_SYSENTER_CS,
    msr::IA32_SYSENTER_ESP,
    msr::IA32_SYSENTER_EIP,
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_FS_BASE,
    msr::IA32_GS_BASE,
    msr::IA32_KERNEL_GS_BASE,
    msr::IA32_TSC_AUX,
    // The speculation controls: per-core state of the enclave's own core (the guest sees them
    // only where the host's CPUID lists them). PRED_CMD and FLUSH_CMD are write-only commands
    // with no state.
    msr::IA32_SPEC_CTRL,
    msr::IA32_PRED_CMD,
    msr::IA32_FLUSH_CMD,
];

/// COM1's ports.
const COM1: u16 = 0x3f8;

/// The host machine as far as handlers need it.
pub trait HostCpu {
    /// CPUID on the host.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// Loads XCR0 (already validated) on this core.
    fn xsetbv(&mut self, value: u64);
    /// The core's time-stamp counter.
    fn rdtsc(&self) -> u64;
}

/// Where enclave output goes.
pub trait Console {
    /// One line the enclave `name` printed.
    fn line(&mut self, name: &str, text: &str);
}

/// Why an enclave ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The guest asked to exit (hypercall) with this code.
    Exit { code: u64 },
    /// A guest-physical access outside what the enclave owns.
    EptViolation {
        gpa: GuestPhysAddr,
        access: Access,
        rip: u64,
        linear: Option<u64>,
    },
    /// The guest triple-faulted.
    TripleFault { rip: u64 },
    /// The CPU refused the guest state.
    InvalidGuestState { rip: u64 },
    /// HLT with interrupts disabled: nothing can wake it.
    Halted { rip: u64 },
    /// An I/O access under the `stop` policy.
    IoDenied { port: u16, rip: u64 },
    /// Something atoll does not support (string I/O, …).
    Unsupported { what: &'static str, rip: u64 },
    /// An exit atoll does not handle.
    UnknownExit {
        code: u32,
        name: &'static str,
        rip: u64,
    },
    /// The guest entered ACPI S5 through its sleep control register.
    PowerOff,
    /// The guest wrote the ACPI reset register.
    Reset,
    /// atoll's manager stopped it (the machine's deadline, or a management request); `rip`
    /// is where the vCPU that took the request was, when it was in the guest.
    Stopped { rip: Option<u64> },
    /// atoll could not run the enclave (setup or entry failure).
    Failed(String),
}

impl EndReason {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            EndReason::Exit { .. } => "exit",
            EndReason::EptViolation { .. } => "ept_violation",
            EndReason::TripleFault { .. } => "triple_fault",
            EndReason::InvalidGuestState { .. } => "invalid_guest_state",
            EndReason::Halted { .. } => "halted",
            EndReason::IoDenied { .. } => "io_denied",
            EndReason::Unsupported { .. } => "unsupported",
            EndReason::UnknownExit { .. } => "unknown_exit",
            EndReason::PowerOff => "power_off",
            EndReason::Reset => "reset",
            EndReason::Stopped { .. } => "stopped",
            EndReason::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Exit { code } => write!(f, "the guest exited with code {code}"),
            EndReason::EptViolation {
                gpa,
                access,
                rip,
                linear,
            } => {
                write!(
                    f,
                    "EPT violation: {access} of guest-physical {gpa} at RIP {rip:#x}"
                )?;
                if let Some(l) = linear {
                    write!(f, " (linear {l:#x})")?;
                }
                Ok(())
            }
            EndReason::TripleFault { rip } => write!(f, "triple fault at RIP {rip:#x}"),
            EndReason::InvalidGuestState { rip } => {
                write!(f, "invalid guest state at RIP {rip:#x}")
            }
            EndReason::Halted { rip } => write!(f, "HLT with interrupts disabled at RIP {rip:#x}"),
            EndReason::IoDenied { port, rip } => {
                write!(f, "I/O port {port:#x} denied by policy at RIP {rip:#x}")
            }
            EndReason::Unsupported { what, rip } => {
                write!(f, "unsupported: {what} at RIP {rip:#x}")
            }
            EndReason::UnknownExit { code, name, rip } => {
                write!(f, "unhandled exit {name} ({code}) at RIP {rip:#x}")
            }
            EndReason::PowerOff => write!(f, "the guest powered off (ACPI S5)"),
            EndReason::Reset => write!(f, "the guest reset itself (ACPI reset register)"),
            EndReason::Stopped { rip: Some(rip) } => {
                write!(f, "stopped by atoll's manager at RIP {rip:#x}")
            }
            EndReason::Stopped { rip: None } => write!(f, "stopped by atoll's manager"),
            EndReason::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// What the run loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Enter the guest again.
    Resume,
    /// End the enclave.
    Stop(EndReason),
}

/// COM1 of a bare-metal enclave: the platform's 16550A ([`atoll_devices::uart`]) without an interrupt
/// line, its lines printed as the enclave's.
#[derive(Clone, Debug, Default)]
pub struct Uart(atoll_devices::uart::Uart16550);

impl Uart {
    fn write(&mut self, offset: u16, value: u8, name: &str, console: &mut impl Console) {
        if let Some(line) = self.0.write(offset, value) {
            console.line(name, line);
        }
    }

    fn read(&mut self, offset: u16) -> u8 {
        self.0.read(offset)
    }

    /// Prints what is pending.
    pub fn flush(&mut self, name: &str, console: &mut impl Console) {
        if let Some(line) = self.0.flush() {
            console.line(name, line);
        }
    }
}

/// One enclave's run state, owned by the core that runs it.
pub struct EnclaveRun {
    /// Its name.
    pub name: String,
    /// Policy for ports atoll does not emulate.
    pub io_policy: IoPolicy,
    /// Exits counted by kind.
    pub exits: [u64; ExitKind::ALL.len()],
    /// Accesses to unemulated ports.
    pub io_denied: u64,
    /// RDMSR/WRMSR refused with #GP.
    pub msr_denied: u64,
    /// What the guest reported: the top-level keys of its REPORT objects, validated and kept
    /// raw in a fixed budget ([`atoll_devices::bounded`]); parsed only for the summary.
    pub results: ReportStore,
    /// COM1.
    pub uart: Uart,
    mtrr_def_type: u64,
    /// A hypercall's buffer copied out of guest RAM, and a console line of it made valid UTF-8
    /// (3 bytes per byte at worst: U+FFFD): allocated with the run state so that exits never
    /// allocate.
    buffer: Box<[u8]>,
    text: Box<[u8]>,
}

impl EnclaveRun {
    /// Fresh state for enclave `name`.
    pub fn new(name: &str, io_policy: IoPolicy) -> Self {
        Self {
            name: name.to_string(),
            io_policy,
            exits: [0; ExitKind::ALL.len()],
            io_denied: 0,
            msr_denied: 0,
            results: ReportStore::new(REPORT_BUDGET),
            uart: Uart::default(),
            mtrr_def_type: 0x806,
            buffer: alloc::vec![0; MAX_HYPERCALL_BUFFER as usize].into_boxed_slice(),
            text: alloc::vec![0; 3 * MAX_HYPERCALL_BUFFER as usize].into_boxed_slice(),
        }
    }

    /// Exit counts by name (only kinds that occurred).
    pub fn exit_counts(&self) -> serde_json::Map<String, serde_json::Value> {
        ExitKind::ALL
            .iter()
            .filter(|k| self.exits[**k as usize] > 0)
            .map(|k| (k.name().to_string(), self.exits[*k as usize].into()))
            .collect()
    }
}

/// Handles one exit.
pub fn handle(
    exit: Exit,
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    run: &mut EnclaveRun,
    host: &mut impl HostCpu,
    console: &mut impl Console,
) -> Action {
    run.exits[exit.kind() as usize] += 1;
    let rip = vcpu.rip();
    match exit {
        Exit::Cpuid => {
            let leaf = vcpu.gpr(Gpr::Rax) as u32;
            let sub = vcpu.gpr(Gpr::Rcx) as u32;
            let [a, b, c, d] =
                reflect_guest_cr4(filtered_cpuid(host, leaf, sub), leaf, sub, vcpu.cr(4));
            vcpu.set_gpr(Gpr::Rax, a.into());
            vcpu.set_gpr(Gpr::Rbx, b.into());
            vcpu.set_gpr(Gpr::Rcx, c.into());
            vcpu.set_gpr(Gpr::Rdx, d.into());
            vcpu.skip_instruction();
            Action::Resume
        }
        Exit::Hlt => {
            if vcpu.rflags() & (1 << 9) == 0 {
                Action::Stop(EndReason::Halted { rip })
            } else {
                // No interrupt source exists yet; HLT may end on any event, so resume.
                vcpu.skip_instruction();
                Action::Resume
            }
        }
        Exit::Io {
            port,
            size,
            write,
            string,
            rep: _,
        } => {
            if string {
                return string_io(vcpu, mem, run, console, port, size, write);
            }
            io(vcpu, run, console, port, size, write)
        }
        Exit::MsrRead => msr_read(vcpu, run, host),
        Exit::MsrWrite => msr_write(vcpu, run, host),
        Exit::CrWrite { cr, gpr } => {
            let value = vcpu.gpr(gpr);
            cr_write(vcpu, host, cr, value)
        }
        Exit::CrRead { cr, gpr } => {
            let v = vcpu.cr(cr);
            vcpu.set_gpr(gpr, v);
            vcpu.skip_instruction();
            Action::Resume
        }
        Exit::Clts => {
            let cr0 = vcpu.cr(0) & !(1 << 3);
            cr_write(vcpu, host, 0, cr0)
        }
        Exit::Lmsw(src) => {
            // LMSW loads CR0 bits 3:0 but cannot clear PE (SDM Vol. 2A "LMSW").
            let cr0 = vcpu.cr(0);
            let value = (cr0 & !0xe) | u64::from(src & 0xf) | (cr0 & 1);
            cr_write(vcpu, host, 0, value)
        }
        Exit::Xsetbv => xsetbv(vcpu, host),
        Exit::Hypercall => hypercall_exit(vcpu, mem, run, console),
        Exit::NestedPageFault {
            gpa,
            access,
            linear,
        } => Action::Stop(EndReason::EptViolation {
            gpa,
            access,
            rip,
            linear,
        }),
        Exit::TripleFault => Action::Stop(EndReason::TripleFault { rip }),
        Exit::InvalidGuestState => Action::Stop(EndReason::InvalidGuestState { rip }),
        Exit::ExternalInterrupt { .. }
        | Exit::Nmi
        | Exit::InterruptWindow
        | Exit::Init
        | Exit::Sipi { .. } => Action::Resume,
        Exit::Exception { vector, error_code } => {
            crate::run::deny::reflect_exception(vcpu, vector, error_code)
        }
        Exit::Wbinvd | Exit::Invd => crate::run::deny::cache_flush(vcpu),
        Exit::VirtualizationInstruction | Exit::MonitorMwait => crate::run::deny::undefined(vcpu),
        Exit::Rdpmc => crate::run::deny::rdpmc(vcpu),
        Exit::Unknown { code, name } => Action::Stop(EndReason::UnknownExit { code, name, rip }),
    }
}

/// CPUID as the enclave sees it: atoll's leaves at 0x4000_0000, the hypervisor bit set, and
/// hidden what the enclave does not own: VMX, SVM, SMX, MONITOR/MWAIT, the performance counters
/// and the other features whose instructions or MSRs stay the host's, and the host's topology
/// (APIC IDs, core and thread counts). A Linux enclave's platform describes its own topology on
/// top of this ([`crate::run::vplat::cpuid`]).
pub fn filtered_cpuid(host: &impl HostCpu, leaf: u32, sub: u32) -> [u32; 4] {
    match leaf {
        CPUID_HV_BASE => {
            let sig = |i: usize| {
                u32::from_le_bytes([
                    CPUID_SIGNATURE[i],
                    CPUID_SIGNATURE[i + 1],
                    CPUID_SIGNATURE[i + 2],
                    CPUID_SIGNATURE[i + 3],
                ])
            };
            [CPUID_HV_BASE + 1, sig(0), sig(4), sig(8)]
        }
        0x4000_0001 => [HYPERCALL_ABI_VERSION as u32, 0, 0, 0],
        0x4000_0002..=0x4fff_ffff => [0; 4],
        _ => {
            let mut r = host.cpuid(leaf, sub);
            match leaf {
                1 => {
                    // ECX: MONITOR (3), DS-CPL (4), VMX (5), SMX (6), EIST (7), TM2 (8),
                    // PDCM (15) and x2APIC (21) hidden (their instructions or MSRs are the
                    // host's); bit 31 "hypervisor present".
                    r[2] = (r[2]
                        & !((1 << 3)
                            | (1 << 4)
                            | (1 << 5)
                            | (1 << 6)
                            | (1 << 7)
                            | (1 << 8)
                            | (1 << 15)
                            | (1 << 21)))
                        | (1 << 31);
                    // EDX: the local APIC (9) — a bare-metal enclave has none (the Linux
                    // platform offers its own and says so) — debug store (21), thermal MSRs
                    // (ACPI 22, TM 29), PBE (31) hidden.
                    r[3] &= !((1 << 9) | (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31));
                    // EBX: the host core's initial APIC ID (31:24) and its package's logical
                    // processor count (23:16) are host topology: one processor, ID 0, no HTT.
                    r[1] &= 0xffff;
                    r[1] |= 1 << 16;
                    r[3] &= !(1 << 28);
                }
                // Deterministic cache parameters: the cache descriptions stay, the sharing
                // and core counts (EAX 31:14) are the host's topology.
                4 => r[0] &= 0x3fff,
                // MONITOR/MWAIT, the architectural PMU, RDT monitoring and allocation, SGX,
                // processor trace, PCONFIG: features not offered, their leaves read 0.
                5 | 0xa | 0xf | 0x10 | 0x12 | 0x14 | 0x1b => r = [0; 4],
                // Thermal and power management: only ARAT (EAX bit 2).
                6 => r = [r[0] & (1 << 2), 0, 0, 0],
                7 if sub == 0 => {
                    // EBX: SGX (2), RDT-M (12), RDT-A (15), processor trace (25) hidden.
                    r[1] &= !((1 << 2) | (1 << 12) | (1 << 15) | (1 << 25));
                    // ECX: SGX launch control (30) hidden.
                    r[2] &= !(1 << 30);
                }
                // Extended topology: one logical processor, x2APIC ID 0 (the host's IDs and
                // level widths are not the enclave's business).
                0xb | 0x1f if leaf <= host.cpuid(0, 0)[0] => {
                    r = match sub {
                        0 => [0, 1, 0x100, 0],
                        1 => [0, 1, 0x201, 0],
                        _ => [0, 0, sub & 0xff, 0],
                    };
                }
                0x8000_0001 => {
                    // ECX: SVM (2), IBS (10), SKINIT (12), WDT (13), TOPOEXT (22), the core,
                    // northbridge and LLC performance counter extensions (23, 24, 28) and
                    // MONITORX (29) hidden.
                    r[2] &= !((1 << 2)
                        | (1 << 10)
                        | (1 << 12)
                        | (1 << 13)
                        | (1 << 22)
                        | (1 << 23)
                        | (1 << 24)
                        | (1 << 28)
                        | (1 << 29));
                    // EDX: AMD's copy of the local APIC bit (9), as in leaf 1.
                    r[3] &= !(1 << 9);
                }
                // ECX: the host's core count (NC, 7:0) and APIC ID size (15:12).
                0x8000_0008 => r[2] &= !0xf0ff,
                // SVM features, AMD extended APIC ID and topology, SEV, PMC v2, extended
                // topology: nothing to offer.
                0x8000_000a | 0x8000_001e | 0x8000_001f | 0x8000_0022 | 0x8000_0026 => r = [0; 4],
                // XSAVES/XRSTORS (EAX bit 3) and the supervisor states (IA32_XSS, ECX/EDX) are
                // not virtualized, and XSAVEC (bit 1) goes with them: guests use the standard
                // XSAVE layout, whose sizes leaf 0xD subleaf 0 gives (Bochs reports the compacted
                // size in subleaf 1 EBX wrongly, which Linux checks when it compacts).
                0xd if sub == 1 => {
                    r[0] &= !((1 << 1) | (1 << 3));
                    r[2] = 0;
                    r[3] = 0;
                }
                _ => {}
            }
            r
        }
    }
}

/// The CPUID bits that mirror the caller's own CR4 (SDM Vol. 2A "CPUID"): OSXSAVE (leaf 1 ECX
/// bit 27) is CR4.OSXSAVE (bit 18), OSPKE (leaf 7 ECX bit 4) is CR4.PKE (bit 22). The host's
/// values describe atoll's CR4, so they are replaced by the guest's.
pub fn reflect_guest_cr4(mut r: [u32; 4], leaf: u32, sub: u32, cr4: u64) -> [u32; 4] {
    let set = |word: &mut u32, bit: u32, on: bool| {
        if on {
            *word |= 1 << bit;
        } else {
            *word &= !(1 << bit);
        }
    };
    match (leaf, sub) {
        (1, _) => set(&mut r[2], 27, cr4 & (1 << 18) != 0),
        (7, 0) => set(&mut r[2], 4, cr4 & (1 << 22) != 0),
        _ => {}
    }
    r
}

/// Puts the result of an IN of `size` bytes into AL/AX/EAX, as the instruction does.
pub(crate) fn set_io_result(vcpu: &mut impl Vcpu, size: u8, value: u32) {
    let rax = vcpu.gpr(Gpr::Rax);
    let new = match size {
        1 => (rax & !0xff) | u64::from(value & 0xff),
        2 => (rax & !0xffff) | u64::from(value & 0xffff),
        _ => u64::from(value), // a 32-bit result zero-extends into RAX
    };
    vcpu.set_gpr(Gpr::Rax, new);
}

/// What one port access gave.
enum Port {
    /// A read, with its value.
    Read(u32),
    /// A write, done (or dropped by the `ignore` policy).
    Written,
    /// The `fault` policy: #GP.
    Fault,
    /// The enclave ends.
    Stop(EndReason),
}

/// One access of `size` bytes to `port` (`value` for writes): COM1, the ACPI power registers,
/// or the enclave's I/O policy for anything else.
fn port_access(
    run: &mut EnclaveRun,
    console: &mut impl Console,
    port: u16,
    size: u8,
    write: bool,
    value: u32,
    rip: u64,
) -> Port {
    if (COM1..COM1 + 8).contains(&port) {
        let offset = port - COM1;
        if write {
            run.uart.write(offset, value as u8, &run.name, console);
            return Port::Written;
        }
        return Port::Read(run.uart.read(offset).into());
    }
    // The power-management registers the enclave's FADT advertises (hardware-reduced ACPI).
    match (port, write) {
        (atoll_devices::acpi::SLEEP_CONTROL_PORT, true) => {
            if atoll_devices::acpi::requested_sleep_type(value as u8)
                == Some(atoll_devices::acpi::S5_SLP_TYP)
            {
                run.uart.flush(&run.name, console);
                return Port::Stop(EndReason::PowerOff);
            }
            // Other sleep states are not offered: the write has no effect.
            return Port::Written;
        }
        (atoll_devices::acpi::RESET_PORT, true)
            if value as u8 == atoll_devices::acpi::RESET_VALUE =>
        {
            run.uart.flush(&run.name, console);
            return Port::Stop(EndReason::Reset);
        }
        (
            atoll_devices::acpi::SLEEP_CONTROL_PORT
            | atoll_devices::acpi::SLEEP_STATUS_PORT
            | atoll_devices::acpi::RESET_PORT,
            _,
        ) => {
            // Reads return 0 (nothing pending); other writes (WAK_STS clears) are accepted.
            return if write { Port::Written } else { Port::Read(0) };
        }
        _ => {}
    }
    if run.io_denied < 16 {
        log::debug!(
            "enclave '{}': port {port:#x} ({} {size}) not emulated, at RIP {rip:#x}",
            run.name,
            if write { "write" } else { "read" },
        );
    }
    run.io_denied += 1;
    match run.io_policy {
        IoPolicy::Ignore if write => Port::Written,
        IoPolicy::Ignore => Port::Read(u32::MAX),
        IoPolicy::Fault => Port::Fault,
        IoPolicy::Stop => Port::Stop(EndReason::IoDenied { port, rip }),
    }
}

fn io(
    vcpu: &mut impl Vcpu,
    run: &mut EnclaveRun,
    console: &mut impl Console,
    port: u16,
    size: u8,
    write: bool,
) -> Action {
    let value = vcpu.gpr(Gpr::Rax) as u32;
    match port_access(run, console, port, size, write, value, vcpu.rip()) {
        Port::Read(v) => {
            set_io_result(vcpu, size, v);
            vcpu.skip_instruction();
            Action::Resume
        }
        Port::Written => {
            vcpu.skip_instruction();
            Action::Resume
        }
        Port::Fault => {
            vcpu.inject_exception(vector::GP, Some(0));
            Action::Resume
        }
        Port::Stop(reason) => Action::Stop(reason),
    }
}

/// Elements one exit moves at most. A REP string instruction with more left keeps its RIP and
/// runs (exits) again, as the processor lets it be interrupted between iterations (SDM Vol. 2B
/// "REP/REPE/REPZ/REPNE/REPNZ"): the exit's work stays bounded whatever RCX holds.
pub const STRING_IO_BATCH: u64 = 64;

/// Writes `value` to `reg` as an instruction with `size`-byte addressing does: 8 bytes whole,
/// 4 bytes zero-extended (64-bit mode), 2 bytes into the low 16 bits only.
fn set_sized(vcpu: &mut impl Vcpu, reg: Gpr, value: u64, size: u8) {
    let v = match size {
        8 => value,
        4 => value & 0xffff_ffff,
        _ => (vcpu.gpr(reg) & !0xffff) | (value & 0xffff),
    };
    vcpu.set_gpr(reg, v);
}

/// INS and OUTS (with or without REP) in 64-bit mode: each element goes through the same
/// port handling as IN and OUT, its memory operand through the guest's page tables and the
/// enclave's RAM; rSI/rDI move by the element size (down with RFLAGS.DF), rCX counts down.
/// An operand outside the enclave's RAM ends it as any access there does; outside 64-bit mode,
/// through FS/GS, or unmapped in the guest's tables, the enclave stops as unsupported (named).
fn string_io(
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    run: &mut EnclaveRun,
    console: &mut impl Console,
    port: u16,
    size: u8,
    write: bool,
) -> Action {
    use atoll_vcpu::decode::{self, Segment};
    let rip = vcpu.rip();
    let unsupported = |what| Action::Stop(EndReason::Unsupported { what, rip });
    let (paging, bitness, linear_rip) = decode::site_of(vcpu);
    let (bytes, n) = decode::fetch(mem, paging, linear_rip);
    let Some(form) = decode::string_io(&bytes[..n], bitness) else {
        return unsupported("string I/O (INS/OUTS) that does not decode");
    };
    if bitness != 64 {
        return unsupported("string I/O (INS/OUTS) outside 64-bit mode");
    }
    if matches!(form.segment, Segment::Fs | Segment::Gs) {
        return unsupported("string I/O (OUTS) through FS or GS");
    }
    let mask = match form.address_size {
        8 => u64::MAX,
        4 => 0xffff_ffff,
        _ => 0xffff,
    };
    let index = if write { Gpr::Rsi } else { Gpr::Rdi };
    let mut left = if form.rep {
        vcpu.gpr(Gpr::Rcx) & mask
    } else {
        1
    };
    let down = vcpu.rflags() & (1 << 10) != 0;
    let mut moved = 0;
    while left > 0 && moved < STRING_IO_BATCH {
        let at = vcpu.gpr(index) & mask;
        let mut buf = [0u8; 4];
        let element = &mut buf[..usize::from(size.min(4))];
        // Each byte translates on its own: an element may straddle two pages.
        let mut gpas = [GuestPhysAddr::new(0); 4];
        for (i, g) in gpas.iter_mut().take(element.len()).enumerate() {
            match decode::translate(mem, paging, at.wrapping_add(i as u64) & mask) {
                Some(gpa) => *g = gpa,
                None => return unsupported("string I/O (INS/OUTS) to an unmapped address"),
            }
        }
        let outside = |gpa: GuestPhysAddr| {
            Action::Stop(EndReason::EptViolation {
                gpa,
                access: Access {
                    read: write,
                    write: !write,
                    fetch: false,
                },
                rip,
                linear: Some(at),
            })
        };
        let result = if write {
            for (i, b) in element.iter_mut().enumerate() {
                let mut one = [0u8; 1];
                if mem.read(gpas[i], &mut one).is_none() {
                    return outside(gpas[i]);
                }
                *b = one[0];
            }
            let value = u32::from_le_bytes(buf);
            port_access(run, console, port, size, true, value, rip)
        } else {
            port_access(run, console, port, size, false, 0, rip)
        };
        match result {
            Port::Read(v) => {
                for (i, b) in v
                    .to_le_bytes()
                    .iter()
                    .take(usize::from(size.min(4)))
                    .enumerate()
                {
                    if mem.write(gpas[i], &[*b]).is_none() {
                        return outside(gpas[i]);
                    }
                }
            }
            Port::Written => {}
            // The element faulted before it moved: registers stay as they are.
            Port::Fault => {
                vcpu.inject_exception(vector::GP, Some(0));
                return Action::Resume;
            }
            Port::Stop(reason) => return Action::Stop(reason),
        }
        let step = u64::from(size);
        let next = if down {
            at.wrapping_sub(step)
        } else {
            at.wrapping_add(step)
        };
        set_sized(vcpu, index, next, form.address_size);
        left -= 1;
        if form.rep {
            set_sized(vcpu, Gpr::Rcx, left, form.address_size);
        }
        moved += 1;
    }
    if left == 0 {
        vcpu.skip_instruction();
    }
    Action::Resume
}

fn deny_msr(vcpu: &mut impl Vcpu, run: &mut EnclaveRun) -> Action {
    if run.msr_denied < 16 {
        log::debug!(
            "enclave '{}': MSR {:#x} refused (#GP) at RIP {:#x}",
            run.name,
            vcpu.gpr(Gpr::Rcx) as u32,
            vcpu.rip()
        );
    }
    run.msr_denied += 1;
    vcpu.inject_exception(vector::GP, Some(0));
    Action::Resume
}

fn msr_read(vcpu: &mut impl Vcpu, run: &mut EnclaveRun, host: &impl HostCpu) -> Action {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = match index {
        // The guest's TSC: the core's plus this vCPU's offset, as RDTSC gives it. (Reads exit
        // too: QEMU's SVM returned 0 for a pass-through RDMSR of IA32_TSC under an offset, and
        // guests read the TSC with RDTSC, which never exits.)
        msr::IA32_TSC => host.rdtsc().wrapping_add(vcpu.tsc_offset()),
        msr::IA32_MISC_ENABLE => 1, // fast strings
        msr::IA32_MTRRCAP => 0,     // no variable or fixed MTRRs to program
        msr::IA32_MTRR_DEF_TYPE => run.mtrr_def_type,
        msr::IA32_EFER => vcpu.efer(),
        msr::IA32_PAT => vcpu.pat(),
        _ => return deny_msr(vcpu, run),
    };
    vcpu.set_gpr(Gpr::Rax, value & 0xffff_ffff);
    vcpu.set_gpr(Gpr::Rdx, value >> 32);
    vcpu.skip_instruction();
    Action::Resume
}

fn msr_write(vcpu: &mut impl Vcpu, run: &mut EnclaveRun, host: &impl HostCpu) -> Action {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = (vcpu.gpr(Gpr::Rdx) << 32) | (vcpu.gpr(Gpr::Rax) & 0xffff_ffff);
    match index {
        // A write moves this vCPU's offset, never the core's TSC, which atoll's timers and every
        // other vCPU's deadlines are measured in.
        msr::IA32_TSC => vcpu.set_tsc_offset(crate::run::deny::tsc_offset_for(value, host.rdtsc())),
        msr::IA32_EFER => {
            if !crate::run::deny::valid_efer(value, vcpu.efer(), vcpu.cr(0), host) {
                return deny_msr(vcpu, run);
            }
            if vcpu.set_efer(value).is_err() {
                return deny_msr(vcpu, run);
            }
        }
        msr::IA32_MTRR_DEF_TYPE => {
            // Type in bits 7:0 (UC, WC, WT, WP, WB), FE bit 10, E bit 11; the rest reserved.
            let ty = value & 0xff;
            if value & !0xcff != 0 || !matches!(ty, 0 | 1 | 4 | 5 | 6) {
                return deny_msr(vcpu, run);
            }
            run.mtrr_def_type = value;
        }
        msr::IA32_PAT => {
            // Each of the eight entries must be a valid type: UC, WC, WT, WP, WB, UC- (SDM Vol.
            // 3A §12.12.2).
            let valid = value
                .to_le_bytes()
                .iter()
                .all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7));
            if !valid {
                return deny_msr(vcpu, run);
            }
            vcpu.set_pat(value);
        }
        msr::IA32_MISC_ENABLE if value == 1 => {}
        _ => return deny_msr(vcpu, run),
    }
    vcpu.skip_instruction();
    Action::Resume
}

fn cr_write(vcpu: &mut impl Vcpu, host: &impl HostCpu, cr: u8, value: u64) -> Action {
    use crate::run::deny;
    let ok = match cr {
        0 => deny::valid_cr0(
            value,
            vcpu.cr(4),
            vcpu.efer(),
            vcpu.efer() & (1 << 10) != 0 && vcpu.code_segment().long,
        ),
        4 => deny::valid_cr4(
            value,
            vcpu.cr(4),
            vcpu.efer(),
            vcpu.cr(3),
            deny::cr4_supported(host),
        ),
        // CR3: any value the second-stage tables then confine; reserved bits above MAXPHYADDR
        // are the processor's to check at the next walk (CR3 writes do not exit today).
        3 => true,
        8 => deny::tpr_from_cr8(value).is_some(),
        _ => false,
    };
    if !ok || vcpu.set_cr(cr, value).is_err() {
        vcpu.inject_exception(vector::GP, Some(0));
        return Action::Resume;
    }
    vcpu.skip_instruction();
    Action::Resume
}

fn xsetbv(vcpu: &mut impl Vcpu, host: &mut impl HostCpu) -> Action {
    // CR4.OSXSAVE clear: XSETBV is #UD (SDM Vol. 2D "XSETBV").
    if vcpu.cr(4) & (1 << 18) == 0 {
        vcpu.inject_exception(vector::UD, None);
        return Action::Resume;
    }
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = (vcpu.gpr(Gpr::Rdx) << 32) | (vcpu.gpr(Gpr::Rax) & 0xffff_ffff);
    let [lo, _, _, hi] = host.cpuid(0xd, 0);
    let supported = u64::from(lo) | (u64::from(hi) << 32);
    if vcpu.cpl() != 0 || index != 0 || !valid_xcr0(value, supported) {
        vcpu.inject_exception(vector::GP, Some(0));
        return Action::Resume;
    }
    host.xsetbv(value);
    vcpu.skip_instruction();
    Action::Resume
}

/// XCR0 rules (SDM Vol. 1 §13.3, Vol. 2D "XSETBV"): x87 (bit 0) set; only components CPUID
/// 0xD.0 EDX:EAX lists (so never a supervisor component); AVX (2) needs SSE (1); the two MPX
/// bits (3, 4) together; the three AVX-512 bits (5–7) together and only with AVX; the two AMX
/// bits (TILECFG 17, TILEDATA 18) together. The processor would raise #GP for any other value
/// at XSETBV, so atoll checks them all before it executes XSETBV on the guest's behalf.
pub fn valid_xcr0(value: u64, supported: u64) -> bool {
    let has = |bits: u64| value & bits == bits;
    let any = |bits: u64| value & bits != 0;
    let together = |bits: u64| has(bits) || !any(bits);
    value & 1 != 0
        && value & !supported == 0
        && (!any(1 << 2) || has(1 << 1))
        && together(0b11 << 3)
        && together(0b111 << 5)
        && (!any(0b111 << 5) || has(1 << 2))
        && together(0b11 << 17)
}

fn hypercall_exit(
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    run: &mut EnclaveRun,
    console: &mut impl Console,
) -> Action {
    if vcpu.cpl() != 0 {
        vcpu.inject_exception(vector::UD, None);
        return Action::Resume;
    }
    let (nr, a, b) = (vcpu.gpr(Gpr::Rax), vcpu.gpr(Gpr::Rbx), vcpu.gpr(Gpr::Rcx));
    let result = match nr {
        hypercall::VERSION => {
            vcpu.set_gpr(Gpr::Rbx, HYPERCALL_ABI_VERSION);
            vcpu.set_gpr(Gpr::Rcx, hypercall::MAX);
            status::OK
        }
        hypercall::CONSOLE_WRITE => match read_buffer(mem, a, b, &mut run.buffer) {
            Ok(len) => {
                run.uart.flush(&run.name, console);
                // Lines as `str::lines` cuts them (a final newline ends the last line, "\r\n"
                // counts as one), each made UTF-8 as `String::from_utf8_lossy` would.
                let bytes = &run.buffer[..len];
                let mut pieces = bytes.split(|b| *b == b'\n').peekable();
                while let Some(piece) = pieces.next() {
                    let last = pieces.peek().is_none();
                    if last && piece.is_empty() {
                        break;
                    }
                    let line = match piece {
                        [rest @ .., b'\r'] if !last => rest,
                        _ => piece,
                    };
                    console.line(&run.name, lossy_utf8_into(line, &mut run.text));
                }
                status::OK
            }
            Err(s) => s,
        },
        // Validated without recursion and kept raw in the enclave's budget: bad JSON, too deep,
        // not an object, or over the budget is INVALID and changes nothing.
        hypercall::REPORT => match read_buffer(mem, a, b, &mut run.buffer) {
            Ok(len) => match run.results.report(&run.buffer[..len]) {
                Ok(()) => status::OK,
                Err(_) => status::INVALID,
            },
            Err(s) => s,
        },
        hypercall::EXIT => {
            run.uart.flush(&run.name, console);
            return Action::Stop(EndReason::Exit { code: a });
        }
        #[cfg(feature = "fault-injection")]
        hypercall::FAULT_INJECT => crate::run::fault_injection::inject(a),
        _ => status::UNKNOWN,
    };
    vcpu.set_gpr(Gpr::Rax, result);
    vcpu.skip_instruction();
    Action::Resume
}

/// Copies `len` bytes at guest-physical `gpa` into `buf` (the run state's, at least
/// [`MAX_HYPERCALL_BUFFER`] long); returns `len`.
fn read_buffer(mem: &impl GuestMemory, gpa: u64, len: u64, buf: &mut [u8]) -> Result<usize, u64> {
    if len > MAX_HYPERCALL_BUFFER {
        return Err(status::INVALID);
    }
    let buf = buf.get_mut(..len as usize).ok_or(status::INVALID)?;
    mem.read(GuestPhysAddr::new(gpa), buf)
        .ok_or(status::FAULT)?;
    Ok(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_vcpu::fake::FakeVcpu;
    use atoll_vcpu::SliceMemory;

    struct Host {
        xcr0: Option<u64>,
    }
    impl HostCpu for Host {
        fn cpuid(&self, leaf: u32, _sub: u32) -> [u32; 4] {
            match leaf {
                1 => [0x906ea, 0, (1 << 5) | (1 << 26) | (1 << 0), 0],
                0xd => [0b111, 0, 0b11, 0b1],
                0x8000_0001 => [0, 0, 1 << 2, (1 << 11) | (1 << 20) | (1 << 29)],
                _ => [leaf, 1, 2, 3],
            }
        }
        fn xsetbv(&mut self, value: u64) {
            self.xcr0 = Some(value);
        }
        fn rdtsc(&self) -> u64 {
            0
        }
    }

    #[derive(Default)]
    struct Lines(Vec<(String, String)>);
    impl Console for Lines {
        fn line(&mut self, name: &str, text: &str) {
            self.0.push((name.to_string(), text.to_string()));
        }
    }

    struct World {
        vcpu: FakeVcpu,
        ram: Vec<u8>,
        run: EnclaveRun,
        host: Host,
        console: Lines,
    }

    impl World {
        fn new(policy: IoPolicy) -> Self {
            Self {
                vcpu: FakeVcpu::default(),
                ram: vec![0; 0x10000],
                run: EnclaveRun::new("alpha", policy),
                host: Host { xcr0: None },
                console: Lines::default(),
            }
        }
        fn exit(&mut self, e: Exit) -> Action {
            handle(
                e,
                &mut self.vcpu,
                &mut SliceMemory(&mut self.ram),
                &mut self.run,
                &mut self.host,
                &mut self.console,
            )
        }
    }

    #[test]
    fn cpuid_hides_vmx_and_svm_and_names_atoll() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rax as usize] = 1;
        assert_eq!(w.exit(Exit::Cpuid), Action::Resume);
        let ecx = w.vcpu.gprs[Gpr::Rcx as usize];
        assert_eq!(ecx & (1 << 5), 0, "VMX hidden");
        assert_ne!(ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(ecx & (1 << 26), 0, "other features pass through");
        assert_eq!(w.vcpu.skipped, 1);
        w.vcpu.gprs[Gpr::Rax as usize] = 0x4000_0000;
        w.exit(Exit::Cpuid);
        assert_eq!(w.vcpu.gprs[Gpr::Rax as usize], 0x4000_0001);
        let mut sig = Vec::new();
        for r in [Gpr::Rbx, Gpr::Rcx, Gpr::Rdx] {
            sig.extend_from_slice(&(w.vcpu.gprs[r as usize] as u32).to_le_bytes());
        }
        assert_eq!(&sig[..7], b"AtollHV");
        w.vcpu.gprs[Gpr::Rax as usize] = 0x8000_0001;
        w.exit(Exit::Cpuid);
        assert_eq!(w.vcpu.gprs[Gpr::Rcx as usize] & (1 << 2), 0, "SVM hidden");
        assert_eq!(w.run.exit_counts()["cpuid"], 3);
        // XSAVE features: XSAVEOPT (bit 0) and XGETBV1 (2) kept, XSAVEC (1) and XSAVES (3)
        // hidden, no supervisor states.
        let host = Host { xcr0: None };
        assert_eq!(filtered_cpuid(&host, 0xd, 1), [0b101, 0, 0, 0]);
        assert_eq!(
            filtered_cpuid(&host, 0xd, 0)[0],
            0b111,
            "subleaf 0 untouched"
        );
        // OSXSAVE and OSPKE follow the guest's CR4, not atoll's.
        assert_eq!(reflect_guest_cr4([0, 0, 1 << 27, 0], 1, 0, 0)[2], 0);
        assert_eq!(reflect_guest_cr4([0, 0, 0, 0], 1, 0, 1 << 18)[2], 1 << 27);
        assert_eq!(reflect_guest_cr4([0, 0, 1 << 4, 0], 7, 0, 0)[2], 0);
        assert_eq!(reflect_guest_cr4([0, 0, 0, 0], 7, 0, 1 << 22)[2], 1 << 4);
        assert_eq!(reflect_guest_cr4([1, 2, 3, 4], 2, 0, 0), [1, 2, 3, 4]);
    }

    #[test]
    fn uart_lines_reach_the_console_with_the_enclave_name() {
        let mut w = World::new(IoPolicy::Ignore);
        for b in b"hi there\r\nnext" {
            w.vcpu.gprs[Gpr::Rax as usize] = u64::from(*b);
            assert_eq!(
                w.exit(Exit::Io {
                    port: 0x3f8,
                    size: 1,
                    write: true,
                    string: false,
                    rep: false
                }),
                Action::Resume
            );
        }
        assert_eq!(
            w.console.0,
            vec![("alpha".to_string(), "hi there".to_string())]
        );
        w.vcpu.gprs[Gpr::Rax as usize] = 0xdead_0000;
        w.exit(Exit::Io {
            port: 0x3fd,
            size: 1,
            write: false,
            string: false,
            rep: false,
        });
        assert_eq!(
            w.vcpu.gprs[Gpr::Rax as usize],
            0xdead_0060,
            "LSR in AL, rest of RAX kept"
        );
    }

    #[test]
    fn unknown_ports_follow_the_policy() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rax as usize] = 0x1234_5678;
        w.exit(Exit::Io {
            port: 0x70,
            size: 2,
            write: false,
            string: false,
            rep: false,
        });
        assert_eq!(w.vcpu.gprs[Gpr::Rax as usize], 0x1234_ffff);
        assert_eq!((w.run.io_denied, w.vcpu.skipped), (1, 1));

        let mut w = World::new(IoPolicy::Fault);
        w.exit(Exit::Io {
            port: 0x70,
            size: 1,
            write: true,
            string: false,
            rep: false,
        });
        assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))));
        assert_eq!(w.vcpu.skipped, 0, "a faulting instruction is not skipped");

        let mut w = World::new(IoPolicy::Stop);
        w.vcpu.rip = 0x1000;
        let a = w.exit(Exit::Io {
            port: 0x70,
            size: 1,
            write: true,
            string: false,
            rep: false,
        });
        assert_eq!(
            a,
            Action::Stop(EndReason::IoDenied {
                port: 0x70,
                rip: 0x1000
            })
        );
    }

    /// A world whose vCPU is in 64-bit mode with paging off (flat): RIP at 0x1000.
    fn long_mode(policy: IoPolicy) -> World {
        let mut w = World::new(policy);
        w.vcpu.cr[0] = 1;
        w.vcpu.efer = 1 << 10;
        w.vcpu.cs.long = true;
        w.vcpu.rip = 0x1000;
        w
    }

    #[test]
    fn string_io_moves_elements_through_the_port_policy() {
        let outs = |rep| Exit::Io {
            port: 0x3f8,
            size: 1,
            write: true,
            string: true,
            rep,
        };
        // rep outsb: "hi\n" from 0x2000 to COM1.
        let mut w = long_mode(IoPolicy::Ignore);
        w.ram[0x1000..0x1002].copy_from_slice(&[0xf3, 0x6e]);
        w.ram[0x2000..0x2003].copy_from_slice(b"hi\n");
        w.vcpu.gprs[Gpr::Rsi as usize] = 0x2000;
        w.vcpu.gprs[Gpr::Rcx as usize] = 3;
        assert_eq!(w.exit(outs(true)), Action::Resume);
        assert_eq!(w.console.0, vec![("alpha".to_string(), "hi".to_string())]);
        assert_eq!(w.vcpu.gprs[Gpr::Rsi as usize], 0x2003);
        assert_eq!(w.vcpu.gprs[Gpr::Rcx as usize], 0);
        assert_eq!(w.vcpu.skipped, 1);

        // A huge count moves one batch per exit and keeps RIP (the instruction runs again).
        let mut w = long_mode(IoPolicy::Ignore);
        w.ram[0x1000..0x1002].copy_from_slice(&[0xf3, 0x6e]);
        w.vcpu.gprs[Gpr::Rsi as usize] = 0x2000;
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::MAX;
        assert_eq!(w.exit(outs(true)), Action::Resume);
        assert_eq!(w.vcpu.skipped, 0);
        assert_eq!(w.vcpu.gprs[Gpr::Rcx as usize], u64::MAX - STRING_IO_BATCH);
        assert_eq!(w.vcpu.gprs[Gpr::Rsi as usize], 0x2000 + STRING_IO_BATCH);

        // insd from an unemulated port under `ignore`, DF set: all ones, RDI moves down.
        let mut w = long_mode(IoPolicy::Ignore);
        w.ram[0x1000] = 0x6d;
        w.vcpu.rflags = 1 << 10;
        w.vcpu.gprs[Gpr::Rdi as usize] = 0x3000;
        let ins = Exit::Io {
            port: 0x80,
            size: 4,
            write: false,
            string: true,
            rep: false,
        };
        assert_eq!(w.exit(ins), Action::Resume);
        assert_eq!(&w.ram[0x3000..0x3004], &[0xff; 4]);
        assert_eq!(w.vcpu.gprs[Gpr::Rdi as usize], 0x3000 - 4);
        assert_eq!(w.vcpu.skipped, 1);

        // Under `fault` the element faults before it moves: #GP, registers unchanged.
        let mut w = long_mode(IoPolicy::Fault);
        w.ram[0x1000] = 0x6d;
        w.vcpu.gprs[Gpr::Rdi as usize] = 0x3000;
        assert_eq!(w.exit(ins), Action::Resume);
        assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))));
        assert_eq!(w.vcpu.gprs[Gpr::Rdi as usize], 0x3000);

        // An operand past the enclave's RAM ends it as any access there does.
        let mut w = long_mode(IoPolicy::Ignore);
        w.ram[0x1000..0x1002].copy_from_slice(&[0xf3, 0x6e]);
        let end = w.ram.len() as u64;
        w.vcpu.gprs[Gpr::Rsi as usize] = end - 1;
        w.vcpu.gprs[Gpr::Rcx as usize] = 4;
        assert!(matches!(
            w.exit(outs(true)),
            Action::Stop(EndReason::EptViolation { gpa, .. }) if gpa.as_u64() == end
        ));

        // Outside 64-bit mode, atoll says what it does not do.
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.rip = 0x1000;
        w.ram[0x1000] = 0x6e;
        assert!(matches!(
            w.exit(outs(false)),
            Action::Stop(EndReason::Unsupported { what, .. }) if what.contains("64-bit")
        ));
    }

    #[test]
    fn msr_allowlist() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(msr::IA32_MISC_ENABLE);
        w.exit(Exit::MsrRead);
        assert_eq!((w.vcpu.gprs[Gpr::Rax as usize], w.vcpu.injected), (1, None));
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(msr::IA32_FEATURE_CONTROL);
        w.exit(Exit::MsrRead);
        assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))));
        assert_eq!(w.run.msr_denied, 1);
        // A bare-metal enclave has no local APIC (CPUID says so): IA32_APIC_BASE does not exist.
        for exit in [Exit::MsrRead, Exit::MsrWrite] {
            w.vcpu.injected = None;
            w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(msr::IA32_APIC_BASE);
            w.vcpu.gprs[Gpr::Rax as usize] = 0xfee0_0900;
            w.exit(exit);
            assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))), "{exit:?}");
        }
        assert_eq!(w.run.msr_denied, 3);
        // EFER: NXE allowed, a reserved bit refused, LMA cannot be flipped by WRMSR.
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.efer = (1 << 8) | (1 << 10);
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(msr::IA32_EFER);
        w.vcpu.gprs[Gpr::Rax as usize] = (1 << 8) | (1 << 10) | (1 << 11);
        w.exit(Exit::MsrWrite);
        assert_eq!(
            (w.vcpu.efer, w.vcpu.injected),
            ((1 << 8) | (1 << 10) | (1 << 11), None)
        );
        for bad in [1u64 << 15, 1 << 8] {
            w.vcpu.injected = None;
            w.vcpu.gprs[Gpr::Rax as usize] = bad;
            w.exit(Exit::MsrWrite);
            assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))), "{bad:#x}");
        }
        assert_eq!(
            w.vcpu.efer,
            (1 << 8) | (1 << 10) | (1 << 11),
            "refused writes change nothing"
        );
        assert!(
            PASSTHROUGH_MSRS.contains(&msr::IA32_LSTAR)
                && !PASSTHROUGH_MSRS.contains(&msr::IA32_EFER)
        );
        // PAT: valid types accepted, a reserved type (2) refused.
        w.vcpu.injected = None;
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(msr::IA32_PAT);
        w.vcpu.gprs[Gpr::Rax as usize] = 0x0007_0406;
        w.vcpu.gprs[Gpr::Rdx as usize] = 0x0007_0406;
        w.exit(Exit::MsrWrite);
        assert_eq!((w.vcpu.pat, w.vcpu.injected), (0x0007_0406_0007_0406, None));
        w.vcpu.gprs[Gpr::Rax as usize] = 0x0007_0402;
        w.exit(Exit::MsrWrite);
        assert_eq!(
            (w.vcpu.pat, w.vcpu.injected),
            (0x0007_0406_0007_0406, Some((vector::GP, Some(0))))
        );
        w.vcpu.gprs[Gpr::Rdx as usize] = 0;
        w.exit(Exit::MsrRead);
        assert_eq!(w.vcpu.gprs[Gpr::Rdx as usize], 0x0007_0406);
    }

    #[test]
    fn hypercalls() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::VERSION;
        w.exit(Exit::Hypercall);
        assert_eq!(
            (
                w.vcpu.gprs[Gpr::Rax as usize],
                w.vcpu.gprs[Gpr::Rbx as usize]
            ),
            (status::OK, 1)
        );

        w.ram[0x100..0x10b].copy_from_slice(b"hello\nworld");
        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::CONSOLE_WRITE;
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x100;
        w.vcpu.gprs[Gpr::Rcx as usize] = 11;
        w.exit(Exit::Hypercall);
        assert_eq!(w.vcpu.gprs[Gpr::Rax as usize], status::OK);
        assert_eq!(w.console.0.len(), 2);
        assert_eq!(w.console.0[1], ("alpha".into(), "world".into()));

        // Outside RAM, too long, unknown: error codes, never a panic.
        for (nr, gpa, len, want) in [
            (hypercall::CONSOLE_WRITE, 0xffff, 2, status::FAULT),
            (hypercall::CONSOLE_WRITE, u64::MAX, 16, status::FAULT),
            (
                hypercall::CONSOLE_WRITE,
                0,
                MAX_HYPERCALL_BUFFER + 1,
                status::INVALID,
            ),
            (hypercall::REPORT, 0x100, 5, status::INVALID),
            (99, 0, 0, status::UNKNOWN),
        ] {
            w.vcpu.gprs[Gpr::Rax as usize] = nr;
            w.vcpu.gprs[Gpr::Rbx as usize] = gpa;
            w.vcpu.gprs[Gpr::Rcx as usize] = len;
            assert_eq!(w.exit(Exit::Hypercall), Action::Resume);
            assert_eq!(
                w.vcpu.gprs[Gpr::Rax as usize],
                want,
                "hypercall {nr} {gpa:#x}+{len}"
            );
        }

        let json = br#"{"pages_checked": 4096, "cpuid_cycles": 812}"#;
        w.ram[0x200..0x200 + json.len()].copy_from_slice(json);
        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::REPORT;
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x200;
        w.vcpu.gprs[Gpr::Rcx as usize] = json.len() as u64;
        w.exit(Exit::Hypercall);
        assert_eq!(w.run.results.to_map()["pages_checked"], 4096);

        // Bounded REPORT: too deep, not an object, or past the budget is INVALID and changes
        // nothing; a budget refusal is counted.
        let call = |w: &mut World, bytes: &[u8]| {
            w.ram[0x1000..0x1000 + bytes.len()].copy_from_slice(bytes);
            w.vcpu.gprs[Gpr::Rax as usize] = hypercall::REPORT;
            w.vcpu.gprs[Gpr::Rbx as usize] = 0x1000;
            w.vcpu.gprs[Gpr::Rcx as usize] = bytes.len() as u64;
            w.exit(Exit::Hypercall);
            w.vcpu.gprs[Gpr::Rax as usize]
        };
        let deep = alloc::format!("{{\"a\":{}1{}}}", "[".repeat(8), "]".repeat(8));
        let before = w.run.results.used();
        assert_eq!(call(&mut w, deep.as_bytes()), status::INVALID);
        assert_eq!(call(&mut w, b"[1]"), status::INVALID);
        assert_eq!(w.run.results.used(), before);
        let mut filled = 0;
        for i in 0..100 {
            let json = alloc::format!("{{\"k{i}\":\"{}\"}}", "z".repeat(1000));
            match call(&mut w, json.as_bytes()) {
                status::OK => filled += 1,
                s => {
                    assert_eq!(s, status::INVALID);
                    assert_eq!(w.run.results.dropped(), json.len() as u64);
                    break;
                }
            }
        }
        assert!(filled > 0 && w.run.results.used() <= atoll_devices::bounded::REPORT_BUDGET);
        assert_eq!(
            w.run.results.to_map()["pages_checked"],
            4096,
            "earlier keys kept"
        );

        // CONSOLE_WRITE: "\r\n" ends a line, a final newline adds no empty line, invalid
        // UTF-8 shows as U+FFFD.
        w.console.0.clear();
        let text = b"a\r\nb\xffc\n\nd\r\n";
        w.ram[0x100..0x100 + text.len()].copy_from_slice(text);
        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::CONSOLE_WRITE;
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x100;
        w.vcpu.gprs[Gpr::Rcx as usize] = text.len() as u64;
        w.exit(Exit::Hypercall);
        let lines: Vec<&str> = w.console.0.iter().map(|(_, l)| l.as_str()).collect();
        let want: Vec<String> = String::from_utf8_lossy(text)
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(lines, want);
        assert_eq!(lines, ["a", "b\u{fffd}c", "", "d"]);

        w.vcpu.gprs[Gpr::Rax as usize] = hypercall::EXIT;
        w.vcpu.gprs[Gpr::Rbx as usize] = 7;
        assert_eq!(
            w.exit(Exit::Hypercall),
            Action::Stop(EndReason::Exit { code: 7 })
        );

        // From user mode: #UD, nothing done.
        w.vcpu.cpl = 3;
        w.vcpu.injected = None;
        assert_eq!(w.exit(Exit::Hypercall), Action::Resume);
        assert_eq!(w.vcpu.injected, Some((vector::UD, None)));
    }

    #[test]
    fn acpi_power_off_and_reset_end_the_enclave() {
        let out = |port: u16| Exit::Io {
            port,
            size: 1,
            write: true,
            string: false,
            rep: false,
        };
        let mut w = World::new(IoPolicy::Stop);
        // Pending COM1 output is flushed first.
        w.vcpu.gprs[Gpr::Rax as usize] = u64::from(b'x');
        w.exit(out(0x3f8));
        w.vcpu.gprs[Gpr::Rax as usize] = u64::from(atoll_devices::acpi::S5_SLEEP_CONTROL_VALUE);
        assert_eq!(
            w.exit(out(atoll_devices::acpi::SLEEP_CONTROL_PORT)),
            Action::Stop(EndReason::PowerOff)
        );
        assert_eq!(w.console.0, vec![("alpha".to_string(), "x".to_string())]);
        // S3 (or SLP_EN clear) is not offered: no effect, not an I/O-policy stop.
        w.vcpu.gprs[Gpr::Rax as usize] = (3 << 2) | (1 << 5);
        assert_eq!(
            w.exit(out(atoll_devices::acpi::SLEEP_CONTROL_PORT)),
            Action::Resume
        );
        w.vcpu.gprs[Gpr::Rax as usize] = 0x80; // WAK_STS clear
        assert_eq!(
            w.exit(out(atoll_devices::acpi::SLEEP_STATUS_PORT)),
            Action::Resume
        );
        w.vcpu.gprs[Gpr::Rax as usize] = u64::from(atoll_devices::acpi::RESET_VALUE);
        assert_eq!(
            w.exit(out(atoll_devices::acpi::RESET_PORT)),
            Action::Stop(EndReason::Reset)
        );
        w.vcpu.gprs[Gpr::Rax as usize] = 0xffff_ffff;
        w.exit(Exit::Io {
            port: atoll_devices::acpi::SLEEP_STATUS_PORT,
            size: 1,
            write: false,
            string: false,
            rep: false,
        });
        assert_eq!(
            w.vcpu.gprs[Gpr::Rax as usize],
            0xffff_ff00,
            "status reads 0"
        );
        assert_eq!(w.run.io_denied, 0);
        assert_eq!(EndReason::PowerOff.name(), "power_off");
        assert_eq!(
            EndReason::Reset.to_string(),
            "the guest reset itself (ACPI reset register)"
        );
    }

    #[test]
    fn a_stop_by_the_manager_is_named_with_where_the_vcpu_was() {
        let s = EndReason::Stopped {
            rip: Some(0x101e40),
        };
        assert_eq!(s.name(), "stopped");
        assert_eq!(s.to_string(), "stopped by atoll's manager at RIP 0x101e40");
        assert_eq!(
            EndReason::Stopped { rip: None }.to_string(),
            "stopped by atoll's manager"
        );
    }

    #[test]
    fn containment_exits_end_the_enclave_with_the_details() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.rip = 0x10_2345;
        let access = Access {
            read: true,
            ..Default::default()
        };
        let a = w.exit(Exit::NestedPageFault {
            gpa: GuestPhysAddr::new(0x100_0000),
            access,
            linear: Some(0x100_0000),
        });
        let Action::Stop(reason) = a else { panic!() };
        assert_eq!(reason.name(), "ept_violation");
        assert_eq!(
            reason.to_string(),
            "EPT violation: read of guest-physical 0x1000000 at RIP 0x102345 (linear 0x1000000)"
        );
        assert_eq!(
            w.exit(Exit::TripleFault),
            Action::Stop(EndReason::TripleFault { rip: 0x10_2345 })
        );
        assert!(matches!(
            w.exit(Exit::Unknown {
                code: 77,
                name: "x"
            }),
            Action::Stop(EndReason::UnknownExit { code: 77, .. })
        ));
        assert_eq!(
            w.exit(Exit::Hlt),
            Action::Stop(EndReason::Halted { rip: 0x10_2345 })
        );
        w.vcpu.rflags = 1 << 9;
        assert_eq!(w.exit(Exit::Hlt), Action::Resume);
        assert_eq!(
            w.exit(Exit::ExternalInterrupt { vector: Some(0xec) }),
            Action::Resume
        );
    }

    #[test]
    fn control_registers_and_xcr0() {
        let mut w = World::new(IoPolicy::Ignore);
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x8000_0001;
        w.exit(Exit::CrWrite {
            cr: 0,
            gpr: Gpr::Rbx,
        });
        assert_eq!((w.vcpu.cr[0], w.vcpu.injected), (0x8000_0001, None));
        w.vcpu.gprs[Gpr::Rbx as usize] = 0x8000_0000; // PG without PE
        w.exit(Exit::CrWrite {
            cr: 0,
            gpr: Gpr::Rbx,
        });
        assert_eq!(
            (w.vcpu.cr[0], w.vcpu.injected),
            (0x8000_0001, Some((vector::GP, Some(0))))
        );
        w.vcpu.injected = None;
        w.vcpu.gprs[Gpr::Rbx as usize] = 1 << 13; // CR4.VMXE
        w.exit(Exit::CrWrite {
            cr: 4,
            gpr: Gpr::Rbx,
        });
        assert_eq!(w.vcpu.injected, Some((vector::GP, Some(0))));

        // XSETBV: #UD without OSXSAVE; then valid and invalid values.
        w.vcpu.injected = None;
        w.vcpu.gprs[Gpr::Rax as usize] = 0b11;
        w.exit(Exit::Xsetbv);
        assert_eq!(w.vcpu.injected, Some((vector::UD, None)));
        w.vcpu.cr[4] = 1 << 18;
        w.vcpu.injected = None;
        w.exit(Exit::Xsetbv);
        assert_eq!((w.host.xcr0, w.vcpu.injected), (Some(0b11), None));
        w.vcpu.gprs[Gpr::Rax as usize] = 0b101; // AVX without SSE
        w.exit(Exit::Xsetbv);
        assert_eq!(
            (w.host.xcr0, w.vcpu.injected),
            (Some(0b11), Some((vector::GP, Some(0))))
        );
        assert!(valid_xcr0(0b111, 0b111));
        assert!(!valid_xcr0(0b1111, 0b111), "unsupported component");
        assert!(!valid_xcr0(0b110, 0b111), "x87 must stay on");
        assert!(
            !valid_xcr0(0b11 | (1 << 5), u64::MAX),
            "AVX-512 bits together"
        );
    }
}
