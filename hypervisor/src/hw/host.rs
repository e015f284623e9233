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

/// atoll's console, one line per enclave line: `[name] text`.
pub struct EnclaveConsole;

impl Console for EnclaveConsole {
    fn line(&mut self, name: &str, text: &str) {
        super::console::print(format_args!("[{name}] {text}\n"));
    }
}
