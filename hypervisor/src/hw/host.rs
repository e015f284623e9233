//! The host side of exit handling on the target: real CPUID and XSETBV, and the console that
//! prints enclave output prefixed with the enclave's name.

use crate::run::exits::{Console, HostCpu};

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
/// out, in order, at a later exit or when the enclave ends ([`EnclaveConsole::flush`]). The
/// queue has a fixed byte budget allocated with it ([`atoll_devices::bounded::ConsoleQueue`]): a line
/// that does not fit is dropped and counted, never allocated for.
pub struct EnclaveConsole {
    pending: atoll_devices::bounded::ConsoleQueue,
    /// Dropped bytes already announced by [`EnclaveConsole::flush`].
    announced: u64,
    /// The enclave's console tail for `atoll console`, if it keeps one.
    live: Option<alloc::sync::Arc<crate::run::live::Live>>,
}

impl Default for EnclaveConsole {
    fn default() -> Self {
        Self {
            pending: atoll_devices::bounded::ConsoleQueue::new(
                atoll_devices::bounded::CONSOLE_BUDGET,
            ),
            announced: 0,
            live: None,
        }
    }
}

impl EnclaveConsole {
    /// A console whose lines also go to the enclave's console tail.
    pub fn with_live(live: alloc::sync::Arc<crate::run::live::Live>) -> Self {
        Self {
            live: Some(live),
            ..Self::default()
        }
    }

    /// Prints every queued line, waiting for the port if it must (end of the enclave only), and
    /// says how much was dropped.
    pub fn flush(&mut self) {
        while let Some(l) = self.pending.front() {
            super::console::line(l);
            self.pending.pop_front();
        }
        let dropped = self.pending.dropped();
        if dropped > self.announced {
            log::warn!(
                "{} bytes of enclave console output dropped: the serial port stayed busy",
                dropped - self.announced
            );
            self.announced = dropped;
        }
    }

    /// Bytes of lines dropped because the queue was full.
    pub fn bytes_dropped(&self) -> u64 {
        self.pending.dropped()
    }

    /// Prints queued lines while the port is free at once.
    fn drain(&mut self) {
        while let Some(l) = self.pending.front() {
            if !super::console::try_line(l) {
                break;
            }
            self.pending.pop_front();
        }
    }
}

impl Console for EnclaveConsole {
    fn line(&mut self, name: &str, text: &str) {
        // Older lines first (and make room), then this one, then as much as goes out now.
        self.drain();
        if let Some(l) = &self.live {
            l.console_line(text);
        }
        self.pending.push_line(&["[", name, "] ", text]);
        self.drain();
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
    /// The machine's deadline in TSC ticks, for a vCPU that only its own clock can stop (the
    /// boot processor's, run inside the manager): the timer never waits past it, so even a
    /// guest that masks interrupts and stops its own timer exits then.
    stop_at: Option<u64>,
}

impl VcpuHost {
    /// The host side of the vCPU on the core with APIC id `own_apic`.
    pub fn new(own_apic: u32) -> Self {
        Self {
            own_apic,
            tsc_hz: super::tsc::hz(),
            armed: None,
            fires_at: 0,
            stop_at: None,
        }
    }

    /// As [`VcpuHost::new`], with the timer never armed past `stop_at` (TSC ticks).
    pub fn with_stop_at(own_apic: u32, stop_at: Option<u64>) -> Self {
        Self {
            stop_at,
            ..Self::new(own_apic)
        }
    }

    /// Whether the armed deadline has passed (a host interrupt that made the guest exit was
    /// then, most likely, the timer's).
    pub fn timer_due(&self) -> bool {
        self.armed.is_some_and(|d| super::tsc::now() >= d)
    }
}

impl crate::run::vplat::PlatformHost for VcpuHost {
    fn now(&self) -> u64 {
        super::tsc::now()
    }

    fn interrupt_host(&mut self, apic: u32, vector: u8) {
        super::apic::send_fixed(apic, vector);
    }

    fn take_device_vectors(&mut self) -> [u64; 4] {
        super::device_irq::take()
    }

    fn kick(&mut self, host_apic: u32) {
        if host_apic != self.own_apic {
            super::apic::send_fixed(host_apic, crate::run::vplat::KICK_VECTOR);
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
        let deadline = match (deadline, self.stop_at) {
            (Some(d), Some(s)) => Some(d.min(s)),
            (d, s) => d.or(s),
        };
        let now = super::tsc::now();
        if deadline == self.armed && (deadline.is_none() || now < self.fires_at) {
            return;
        }
        match deadline {
            Some(d) => {
                let ticks = d.saturating_sub(now);
                let covered =
                    super::apic::timer_arm(crate::run::vplat::TIMER_VECTOR, ticks, self.tsc_hz);
                self.fires_at = now.saturating_add(covered);
            }
            None => super::apic::timer_stop(),
        }
        self.armed = deadline;
    }
}
