//! The host side of exit handling on the target: real CPUID and XSETBV, and the console that
//! prints enclave output prefixed with the enclave's name.

use crate::exits::{Console, HostCpu};

/// This core.
pub struct ThisCore;

impl HostCpu for ThisCore {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn xsetbv(&mut self, value: u64) {
        // SAFETY: the exit handler validated `value` against CPUID leaf 0xD, and atoll sets
        // CR4.OSXSAVE on cores that run enclaves when the CPU has XSAVE; atoll's own code does
        // not use extended state, so the guest's XCR0 may stay loaded.
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack));
        }
    }

    fn rdtsc(&self) -> u64 {
        super::tsc::now()
    }
}

/// atoll's console as one enclave sees it, one line per enclave line: `[name] text`.
///
/// The serial port is shared by every core, so an exit never waits for it: a line goes out only
/// if the port's lock is free at once, otherwise it waits in this enclave's own queue and goes
/// out, in order, at a later exit or when the enclave ends ([`EnclaveConsole::flush`]).
#[derive(Default)]
pub struct EnclaveConsole {
    pending: alloc::collections::VecDeque<alloc::string::String>,
}

/// Lines an enclave may have queued before the oldest are dropped (and the drop is reported).
const MAX_PENDING: usize = 1024;

impl EnclaveConsole {
    /// Prints every queued line, waiting for the port if it must (end of the enclave only).
    pub fn flush(&mut self) {
        while let Some(l) = self.pending.pop_front() {
            super::console::line(&l);
        }
    }
}

impl Console for EnclaveConsole {
    fn line(&mut self, name: &str, text: &str) {
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
            self.pending.push_back(alloc::format!(
                "[{name}] (console lines dropped: the serial port stayed busy)"
            ));
        }
        self.pending.push_back(alloc::format!("[{name}] {text}"));
        while let Some(l) = self.pending.front() {
            if !super::console::try_line(l) {
                break;
            }
            self.pending.pop_front();
        }
    }
}

/// The platform's view of this core while it runs one vCPU: the TSC, host IPIs to the cores of
/// the same enclave, and this core's APIC timer for the guest's timer deadlines.
pub struct VcpuHost {
    /// This core's APIC id (a kick to itself is not sent: the caller looks at its own mailbox
    /// before entering anyway).
    pub own_apic: u32,
    /// The TSC frequency.
    pub tsc_hz: u64,
    /// The deadline the host timer is armed for.
    armed: Option<u64>,
    /// When the armed timer actually fires (earlier than `armed` for deadlines beyond the
    /// timer's 32-bit count): past that, it must be armed again even for the same deadline.
    fires_at: u64,
}

impl VcpuHost {
    /// The host side of the vCPU on the core with APIC id `own_apic`.
    pub fn new(own_apic: u32) -> Self {
        Self {
            own_apic,
            tsc_hz: super::tsc::hz(),
            armed: None,
            fires_at: 0,
        }
    }

    /// Whether the armed deadline has passed (a host interrupt that made the guest exit was
    /// then, most likely, the timer's).
    pub fn timer_due(&self) -> bool {
        self.armed.is_some_and(|d| super::tsc::now() >= d)
    }
}

impl crate::vplat::PlatformHost for VcpuHost {
    fn now(&self) -> u64 {
        super::tsc::now()
    }

    fn kick(&mut self, host_apic: u32) {
        if host_apic != self.own_apic {
            super::apic::send_fixed(host_apic, crate::vplat::KICK_VECTOR);
        }
    }

    fn wait(&mut self, deadline: Option<u64>) {
        if deadline.is_some_and(|d| super::tsc::now() >= d) {
            return;
        }
        self.arm(deadline);
        super::halt_until_interrupt();
    }

    fn arm(&mut self, deadline: Option<u64>) {
        let now = super::tsc::now();
        if deadline == self.armed && (deadline.is_none() || now < self.fires_at) {
            return;
        }
        match deadline {
            Some(d) => {
                let ticks = d.saturating_sub(now);
                let covered =
                    super::apic::timer_arm(crate::vplat::TIMER_VECTOR, ticks, self.tsc_hz);
                self.fires_at = now.saturating_add(covered);
            }
            None => super::apic::timer_stop(),
        }
        self.armed = deadline;
    }
}
