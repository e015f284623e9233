//! Exit handlers: what atoll does when an enclave's vCPU leaves the guest.
//!
//! Everything here is vendor-neutral policy on top of [`atoll_vcpu`]: the CPUID filter, the
//! emulated COM1, the I/O policy for other ports, the MSR allowlist, control-register and XCR0
//! validation, the hypercall ABI, and containment (which exits end the enclave, with what
//! report). A handler touches only its own vCPU, its enclave's memory and its enclave's
//! [`EnclaveRun`] state; nothing global. Guest-controlled values never cause a panic: bad
//! values become an injected exception, an error code in RAX, or an end reason.
//!
//! This module owns what every handler shares: the run state ([`EnclaveRun`]), what the run
//! loop does next ([`Action`], [`EndReason`]), the host as handlers see it ([`HostCpu`],
//! [`Console`]) and the dispatcher [`handle`], which also ends the enclave on the containment
//! exits. The handlers themselves live by kind:
//!
//! * `cpuid`: the CPUID filter ([`filtered_cpuid`], [`reflect_guest_cr4`]).
//! * `io`: IN/OUT and INS/OUTS: the bare-metal COM1 ([`Uart`]), the ACPI power registers and
//!   the enclave's I/O policy for every other port.
//! * [`msr`]: the MSRs known by name, the pass-through list ([`PASSTHROUGH_MSRS`]) and the
//!   RDMSR/WRMSR allowlist.
//! * `cr`: MOV to a control register and XSETBV ([`valid_xcr0`]).
//! * `hypercalls`: the hypercall ABI ([`atoll_abi`]).

use crate::partition::config::IoPolicy;
use alloc::boxed::Box;
use alloc::string::{String, ToString};
use atoll_devices::bounded::{ReportStore, REPORT_BUDGET};
use atoll_vcpu::{Access, Exit, ExitKind, Gpr, GuestMemory, Vcpu};
use boot::GuestPhysAddr;
use core::fmt;

pub use atoll_abi::{
    hypercall, status, CPUID_HV_BASE, CPUID_SIGNATURE, HYPERCALL_ABI_VERSION, MAX_HYPERCALL_BUFFER,
};

mod cpuid;
mod cr;
mod hypercalls;
mod io;
pub mod msr;

#[cfg(test)]
pub(crate) use cpuid::assert_fast_table_answers_as;
pub use cpuid::{fast_table, filtered_cpuid, reflect_guest_cr4, CR4_LEAVES};
pub use cr::valid_xcr0;
use cr::{cr_write, xsetbv};
use hypercalls::hypercall_exit;
pub(crate) use io::set_io_result;
use io::{io, string_io};
pub use io::{Uart, STRING_IO_BATCH};
pub use msr::PASSTHROUGH_MSRS;
use msr::{msr_read, msr_write};

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

/// What the handlers' tests share: a fake vCPU, host and console around one enclave's run state.
#[cfg(test)]
mod testkit {
    use super::*;
    use atoll_vcpu::fake::FakeVcpu;
    use atoll_vcpu::SliceMemory;

    pub(super) struct Host {
        pub(super) xcr0: Option<u64>,
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
    pub(super) struct Lines(pub(super) Vec<(String, String)>);
    impl Console for Lines {
        fn line(&mut self, name: &str, text: &str) {
            self.0.push((name.to_string(), text.to_string()));
        }
    }

    pub(super) struct World {
        pub(super) vcpu: FakeVcpu,
        pub(super) ram: Vec<u8>,
        pub(super) run: EnclaveRun,
        pub(super) host: Host,
        pub(super) console: Lines,
    }

    impl World {
        pub(super) fn new(policy: IoPolicy) -> Self {
            Self {
                vcpu: FakeVcpu::default(),
                ram: vec![0; 0x10000],
                run: EnclaveRun::new("alpha", policy),
                host: Host { xcr0: None },
                console: Lines::default(),
            }
        }
        pub(super) fn exit(&mut self, e: Exit) -> Action {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::exits::testkit::*;

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
}
