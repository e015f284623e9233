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
