//! Deny by default: what a guest gets for the instructions, exceptions and registers that could
//! otherwise reach the host or another partition.
//!
//! Both backends intercept these (VMX: exception bitmap, CR8 load/store, WBINVD, RDPMC,
//! MONITOR/MWAIT exiting, the VMX instructions, which exit unconditionally; SVM: the matching
//! intercept bits) and translate them into the vendor-neutral [`Exit`](atoll_vcpu::Exit)
//! variants handled here. The rule is the one `docs/security.md` states: what CPUID hides behaves
//! as on a CPU without it, an invalid register value raises the fault the SDM/APM name, and the
//! guest always gets an architectural answer, never an unexplained stop. Everything here is pure
//! policy on a [`Vcpu`], host-tested below.

use crate::run::exits::{Action, HostCpu};
use atoll_vcpu::{vector, Vcpu};

/// Reflects exception `vector`, which the backend intercepted instead of letting the processor
/// deliver it, back to the guest. #AC and #DB are intercepted so that a guest whose IDT makes
/// their delivery raise them again (the microcode loops of CVE-2015-5307 and CVE-2015-8104)
/// costs one exit per delivery instead of a core that never leaves the guest: every delivery
/// comes back here, where the run loop can stop the vCPU. The instruction is not skipped: the
/// guest's handler decides where it resumes, as without the interception.
pub fn reflect_exception(vcpu: &mut impl Vcpu, vector: u8, error_code: Option<u32>) -> Action {
    let code = match vector {
        // #AC always pushes an error code of 0 (SDM Vol. 3A §6.15 "Interrupt 17").
        vector::AC => Some(0),
        // #DB pushes none; its details are in DR6, which the backend has updated.
        vector::DB => None,
        _ => error_code,
    };
    vcpu.inject_exception(vector, code);
    Action::Resume
}

/// WBINVD and INVD complete without touching the caches.
///
/// * INVD would throw away dirty lines of a cache other partitions share (the last-level cache,
///   and on SMT siblings every level): it is never executed for a guest. Treating it as a
///   write-back first ("WBINVD then INVD") is a legal outcome of INVD — which lines were
///   written back before it is not defined — and writing back is then a no-op as below.
/// * WBINVD is not needed for coherence: an enclave has no device doing DMA and no memory that
///   is not write-back coherent between cores (its RAM is write-back in the second-stage
///   tables), so the flush changes nothing the guest can observe except time. Executing it
///   would write back and evict the whole shared last-level cache, stalling every other
///   partition's core for as long as that takes: a denial of service and a timing channel. So
///   it is a no-op.
pub fn cache_flush(vcpu: &mut impl Vcpu) -> Action {
    vcpu.skip_instruction();
    Action::Resume
}

/// An instruction of a feature CPUID hides (VMX, SVM, SMX, MONITOR/MWAIT): #UD, as on a CPU
/// without it.
pub fn undefined(vcpu: &mut impl Vcpu) -> Action {
    vcpu.inject_exception(vector::UD, None);
    Action::Resume
}

/// RDPMC: #GP(0), what the instruction gives for a counter that does not exist (SDM Vol. 2B
/// "RDPMC"). CPUID offers no performance counters (leaf 0xA reads 0, PDCM off): the counters
/// are the core's, and would count atoll's own work on it too.
pub fn rdpmc(vcpu: &mut impl Vcpu) -> Action {
    vcpu.inject_exception(vector::GP, Some(0));
    Action::Resume
}

/// CR8 as the value of the task-priority register's class: CR8[3:0] is TPR[7:4] (SDM Vol. 3A
/// §11.8.6.1).
pub fn cr8_from_tpr(tpr: u8) -> u64 {
    u64::from(tpr >> 4)
}

/// The TPR a MOV to CR8 of `value` gives (TPR[3:0] cleared), or `None` when a reserved bit
/// (63:4) is set: #GP (SDM Vol. 3A §2.5).
pub fn tpr_from_cr8(value: u64) -> Option<u8> {
    (value >> 4 == 0).then_some((value as u8) << 4)
}

const CR0_PE: u64 = 1;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const CR4_PCIDE: u64 = 1 << 17;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Whether MOV to CR0 of `value` is legal with the guest's current CR4 and EFER (SDM Vol. 3A
/// §2.5, Vol. 2B "MOV—Move to/from Control Registers"; AMD APM Vol. 2 §3.1.1): bits 63:32
/// reserved; PG needs PE; NW needs CD; PG with EFER.LME needs CR4.PAE; PG stays set in 64-bit
/// mode (`in_64bit_mode`: EFER.LMA and CS.L). A violation is #GP(0).
pub fn valid_cr0(value: u64, cr4: u64, efer: u64, in_64bit_mode: bool) -> bool {
    value >> 32 == 0
        // Leaving long mode needs compatibility mode first: clearing PG in 64-bit mode is #GP
        // (SDM Vol. 2A "MOV—Move to/from Control Registers", 64-bit mode exceptions).
        && !(in_64bit_mode && value & CR0_PG == 0)
        && !(value & CR0_PG != 0 && value & CR0_PE == 0)
        && !(value & CR0_NW != 0 && value & CR0_CD == 0)
        && !(value & CR0_PG != 0 && efer & EFER_LME != 0 && cr4 & CR4_PAE == 0)
}

/// CR4 bits the processor accepts, from its CPUID (SDM Vol. 3A §2.5, Vol. 2A "CPUID"): VME
/// through OSXMMEXCPT (bits 0–10) on every x86-64 processor, and each later bit only where its
/// feature flag is set. VMXE (13), SMXE (14) and every bit for a feature atoll does not
/// virtualize (FSGSBASE and PKE are the guest's own; CET, PKS, … are not) stay out.
pub fn cr4_supported(host: &impl HostCpu) -> u64 {
    let [_, _, ecx1, _] = host.cpuid(1, 0);
    let max = host.cpuid(0, 0)[0];
    let [_, ebx7, ecx7, _] = if max >= 7 { host.cpuid(7, 0) } else { [0; 4] };
    let bit = |word: u32, b: u32, cr4: u32| {
        if word & (1 << b) != 0 {
            1u64 << cr4
        } else {
            0
        }
    };
    0x7ff
        | bit(ecx7, 2, 11)  // UMIP
        | bit(ecx7, 16, 12) // LA57
        | bit(ebx7, 0, 16)  // FSGSBASE
        | bit(ecx1, 17, 17) // PCIDE
        | bit(ecx1, 26, 18) // OSXSAVE
        | bit(ebx7, 7, 20)  // SMEP
        | bit(ebx7, 20, 21) // SMAP
        | bit(ecx7, 3, 22) // PKE
}

/// Whether MOV to CR4 of `value` is legal (SDM Vol. 2B "MOV—Move to/from Control Registers",
/// Vol. 3A §4.10.1): only supported bits; in IA-32e mode PAE stays set and LA57 cannot change;
/// PCIDE can be set only in IA-32e mode with CR3[11:0] = 0. A violation is #GP(0).
pub fn valid_cr4(value: u64, old: u64, efer: u64, cr3: u64, supported: u64) -> bool {
    let long = efer & EFER_LMA != 0;
    let pcide_on = value & CR4_PCIDE != 0 && old & CR4_PCIDE == 0;
    value & !supported == 0
        && !(long && value & CR4_PAE == 0)
        && !(long && (value ^ old) & CR4_LA57 != 0)
        && !(pcide_on && (!long || cr3 & 0xfff != 0))
}

/// Whether WRMSR to IA32_EFER of `value` is legal given the current EFER and CR0 (SDM Vol. 3A
/// §2.2.1, Vol. 4 "IA32_EFER"; APM Vol. 2 §3.1.7): only SCE, LME, LMA and NXE, each only where
/// CPUID 0x8000_0001 EDX lists it (SYSCALL 11, LM 29, NX 20); LMA is the processor's and cannot
/// be changed by WRMSR; LME cannot change while paging is on.
pub fn valid_efer(value: u64, old: u64, cr0: u64, host: &impl HostCpu) -> bool {
    let edx = host.cpuid(0x8000_0001, 0)[3];
    let has = |b: u32| edx & (1 << b) != 0;
    let mut allowed = EFER_LMA;
    if has(11) {
        allowed |= EFER_SCE;
    }
    if has(29) {
        allowed |= EFER_LME;
    }
    if has(20) {
        allowed |= EFER_NXE;
    }
    value & !allowed == 0
        && (value ^ old) & EFER_LMA == 0
        && !(cr0 & CR0_PG != 0 && (value ^ old) & EFER_LME != 0)
}

/// The TSC offset that makes the guest read `value` now, when the core's TSC reads `host_tsc`
/// (the guest reads TSC + offset, modulo 2^64, on both backends).
pub fn tsc_offset_for(value: u64, host_tsc: u64) -> u64 {
    value.wrapping_sub(host_tsc)
}

/// A TSC value of the guest (an IA32_TSC_DEADLINE it writes) in the core's TSC; 0 (disarmed)
/// stays 0.
pub fn guest_tsc_to_host(value: u64, offset: u64) -> u64 {
    if value == 0 {
        0
    } else {
        value.wrapping_sub(offset)
    }
}

/// A value of the core's TSC as the guest sees it; 0 (disarmed) stays 0.
pub fn host_tsc_to_guest(value: u64, offset: u64) -> u64 {
    if value == 0 {
        0
    } else {
        value.wrapping_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::config::IoPolicy;
    use crate::run::exits::{handle, msr, Console, EnclaveRun};
    use alloc::vec;
    use alloc::vec::Vec;
    use atoll_vcpu::fake::FakeVcpu;
    use atoll_vcpu::{Exit, Gpr, SliceMemory};

    /// A host with XSAVE, PCID, SMEP/SMAP, FSGSBASE, UMIP, SYSCALL/NX/LM; no PKE, no LA57.
    struct Host {
        tsc: u64,
        xcr0: Option<u64>,
        xcr0_supported: u64,
    }
    impl HostCpu for Host {
        fn cpuid(&self, leaf: u32, _sub: u32) -> [u32; 4] {
            match leaf {
                0 => [0xd, 0, 0, 0],
                1 => [0, 0, (1 << 17) | (1 << 26), 0],
                7 => [0, 1 | (1 << 7) | (1 << 20), 1 << 2, 0],
                0xd => [
                    self.xcr0_supported as u32,
                    0,
                    0,
                    (self.xcr0_supported >> 32) as u32,
                ],
                0x8000_0001 => [0, 0, 0, (1 << 11) | (1 << 20) | (1 << 29)],
                _ => [0; 4],
            }
        }
        fn xsetbv(&mut self, value: u64) {
            self.xcr0 = Some(value);
        }
        fn rdtsc(&self) -> u64 {
            self.tsc
        }
    }
    struct Quiet;
    impl Console for Quiet {
        fn line(&mut self, _: &str, _: &str) {}
    }

    struct World {
        vcpu: FakeVcpu,
        ram: Vec<u8>,
        run: EnclaveRun,
        host: Host,
    }
    impl World {
        fn new() -> Self {
            Self {
                vcpu: FakeVcpu::default(),
                ram: vec![0; 0x1000],
                run: EnclaveRun::new("guest", IoPolicy::Ignore),
                host: Host {
                    tsc: 1_000_000,
                    xcr0: None,
                    // x87, SSE, AVX, BNDREGS, BNDCSR, the AVX-512 three, PKRU, TILECFG, TILEDATA.
                    xcr0_supported: 0b110_0000_0010_1111_1111,
                },
            }
        }
        fn exit(&mut self, e: Exit) -> Action {
            handle(
                e,
                &mut self.vcpu,
                &mut SliceMemory(&mut self.ram),
                &mut self.run,
                &mut self.host,
                &mut Quiet,
            )
        }
        fn injected(&mut self) -> Option<(u8, Option<u32>)> {
            self.vcpu.injected.take()
        }
    }

    const GP0: Option<(u8, Option<u32>)> = Some((vector::GP, Some(0)));
    const UD: Option<(u8, Option<u32>)> = Some((vector::UD, None));

    #[test]
    fn ac_and_db_are_reflected_without_skipping() {
        let mut w = World::new();
        // #AC always with error code 0, whatever the backend read.
        let a = w.exit(Exit::Exception {
            vector: vector::AC,
            error_code: Some(0x1234),
        });
        assert_eq!(a, Action::Resume);
        assert_eq!(w.injected(), Some((vector::AC, Some(0))));
        let a = w.exit(Exit::Exception {
            vector: vector::DB,
            error_code: Some(7),
        });
        assert_eq!(a, Action::Resume);
        assert_eq!(w.injected(), Some((vector::DB, None)));
        assert_eq!(
            w.vcpu.skipped, 0,
            "the guest's handler decides where it resumes"
        );
        // A guest whose #AC handler raises #AC again: every delivery is an exit that resumes
        // (the run loop sees each one), and nothing accumulates.
        for _ in 0..1000 {
            assert_eq!(
                w.exit(Exit::Exception {
                    vector: vector::AC,
                    error_code: Some(0)
                }),
                Action::Resume
            );
        }
        assert_eq!(w.run.exit_counts()["exception"], 1002);
    }

    #[test]
    fn invd_and_wbinvd_are_no_ops_that_complete() {
        let mut w = World::new();
        assert_eq!(w.exit(Exit::Wbinvd), Action::Resume);
        assert_eq!(w.exit(Exit::Invd), Action::Resume);
        assert_eq!((w.vcpu.skipped, w.injected()), (2, None));
        assert_eq!(w.run.exit_counts()["cache_flush"], 2);
    }

    #[test]
    fn hidden_instructions_raise_ud_and_rdpmc_gp() {
        let mut w = World::new();
        for e in [Exit::VirtualizationInstruction, Exit::MonitorMwait] {
            assert_eq!(w.exit(e), Action::Resume);
            assert_eq!(w.injected(), UD, "{e:?}");
        }
        assert_eq!(w.exit(Exit::Rdpmc), Action::Resume);
        assert_eq!(w.injected(), GP0);
        assert_eq!(w.vcpu.skipped, 0, "faulting instructions are not skipped");
        assert_eq!(w.run.exit_counts()["refused_instruction"], 3);
    }

    #[test]
    fn cr8_is_a_per_vcpu_value_with_reserved_bits() {
        let mut w = World::new();
        w.vcpu.gprs[Gpr::Rdx as usize] = 0xa;
        w.exit(Exit::CrWrite {
            cr: 8,
            gpr: Gpr::Rdx,
        });
        assert_eq!((w.vcpu.cr[8], w.injected(), w.vcpu.skipped), (0xa, None, 1));
        w.exit(Exit::CrRead {
            cr: 8,
            gpr: Gpr::Rsi,
        });
        assert_eq!(w.vcpu.gprs[Gpr::Rsi as usize], 0xa);
        w.vcpu.gprs[Gpr::Rdx as usize] = 0x10;
        w.exit(Exit::CrWrite {
            cr: 8,
            gpr: Gpr::Rdx,
        });
        assert_eq!((w.vcpu.cr[8], w.injected()), (0xa, GP0));
        // The mapping to the APIC's TPR.
        assert_eq!(tpr_from_cr8(0xf), Some(0xf0));
        assert_eq!(tpr_from_cr8(1 << 4), None);
        assert_eq!(tpr_from_cr8(u64::MAX), None);
        assert_eq!(cr8_from_tpr(0x5f), 5);
    }

    #[test]
    fn cr0_rules() {
        let pae = CR4_PAE;
        assert!(valid_cr0(0x8000_0011, pae, EFER_LME, false));
        assert!(valid_cr0(0x6000_0010, 0, 0, false), "CD with NW");
        assert!(!valid_cr0(1 << 32, 0, 0, false), "reserved upper half");
        assert!(!valid_cr0(CR0_PG, 0, 0, false), "PG without PE");
        assert!(!valid_cr0(CR0_NW | CR0_PE, 0, 0, false), "NW without CD");
        assert!(
            !valid_cr0(CR0_PG | CR0_PE, 0, EFER_LME, false),
            "long mode without PAE"
        );
        assert!(valid_cr0(CR0_PG | CR0_PE, 0, 0, false), "32-bit paging");
        assert!(
            !valid_cr0(CR0_PE, pae, EFER_LME | EFER_LMA, true),
            "clearing PG in 64-bit mode"
        );
        assert!(
            valid_cr0(CR0_PE, pae, EFER_LME | EFER_LMA, false),
            "clearing PG in compatibility mode leaves long mode"
        );
        // Through the handler: refused values change nothing and are #GP(0).
        let mut w = World::new();
        w.vcpu.cr[0] = 0x11;
        w.vcpu.efer = EFER_LME;
        w.vcpu.gprs[Gpr::Rax as usize] = 0x8000_0011;
        w.exit(Exit::CrWrite {
            cr: 0,
            gpr: Gpr::Rax,
        });
        assert_eq!((w.vcpu.cr[0], w.injected()), (0x11, GP0));
        w.vcpu.cr[4] = pae;
        w.exit(Exit::CrWrite {
            cr: 0,
            gpr: Gpr::Rax,
        });
        assert_eq!((w.vcpu.cr[0], w.injected()), (0x8000_0011, None));
        // CLTS and LMSW go through the same checks (LMSW cannot clear PE).
        w.exit(Exit::Lmsw(0));
        assert_eq!(w.vcpu.cr[0] & 1, 1);
    }

    #[test]
    fn cr4_rules() {
        let w = World::new();
        let s = cr4_supported(&w.host);
        assert_eq!(
            s,
            0x7ff | (1 << 11) | (1 << 16) | (1 << 17) | (1 << 18) | (1 << 20) | (1 << 21),
            "LA57 and PKE absent on this host"
        );
        assert!(valid_cr4(CR4_PAE | (1 << 18), 0, 0, 0, s));
        for bad in [1 << 13, 1 << 14, 1 << 22, 1 << 12, 1 << 23, 1 << 32] {
            assert!(!valid_cr4(bad, 0, 0, 0, s), "{bad:#x}");
        }
        // In IA-32e mode: PAE stays, LA57 does not move, PCIDE needs CR3[11:0] = 0.
        assert!(!valid_cr4(0, CR4_PAE, EFER_LMA, 0, s));
        assert!(!valid_cr4(
            CR4_PAE | CR4_LA57,
            CR4_PAE,
            EFER_LMA,
            0,
            u64::MAX
        ));
        assert!(valid_cr4(CR4_PAE | CR4_PCIDE, CR4_PAE, EFER_LMA, 0x1000, s));
        assert!(!valid_cr4(
            CR4_PAE | CR4_PCIDE,
            CR4_PAE,
            EFER_LMA,
            0x1001,
            s
        ));
        assert!(
            !valid_cr4(CR4_PAE | CR4_PCIDE, CR4_PAE, 0, 0x1000, s),
            "not long"
        );
        assert!(
            valid_cr4(CR4_PAE | CR4_PCIDE, CR4_PAE | CR4_PCIDE, EFER_LMA, 5, s),
            "already on: CR3 is not checked"
        );
        // Through the handler.
        let mut w = World::new();
        w.vcpu.gprs[Gpr::Rbx as usize] = 1 << 22; // PKE, which this host lacks
        w.exit(Exit::CrWrite {
            cr: 4,
            gpr: Gpr::Rbx,
        });
        assert_eq!((w.vcpu.cr[4], w.injected()), (0, GP0));
        w.vcpu.gprs[Gpr::Rbx as usize] = 1 << 20; // SMEP
        w.exit(Exit::CrWrite {
            cr: 4,
            gpr: Gpr::Rbx,
        });
        assert_eq!((w.vcpu.cr[4], w.injected()), (1 << 20, None));
    }

    #[test]
    fn efer_rules() {
        let w = World::new();
        let h = &w.host;
        assert!(valid_efer(EFER_SCE | EFER_LME | EFER_NXE, 0, 0, h));
        assert!(!valid_efer(1 << 12, 0, 0, h), "SVME is atoll's");
        assert!(!valid_efer(1 << 9, 0, 0, h), "reserved");
        assert!(!valid_efer(EFER_LMA, 0, 0, h), "LMA is the processor's");
        assert!(!valid_efer(0, EFER_LME, CR0_PG, h), "LME with paging on");
        assert!(valid_efer(
            EFER_LME | EFER_LMA | EFER_NXE,
            EFER_LME | EFER_LMA,
            CR0_PG,
            h
        ));
        struct NoNx;
        impl HostCpu for NoNx {
            fn cpuid(&self, leaf: u32, _: u32) -> [u32; 4] {
                if leaf == 0x8000_0001 {
                    [0, 0, 0, 1 << 29]
                } else {
                    [0; 4]
                }
            }
            fn xsetbv(&mut self, _: u64) {}
            fn rdtsc(&self) -> u64 {
                0
            }
        }
        assert!(!valid_efer(EFER_NXE, 0, 0, &NoNx), "NX absent");
        assert!(!valid_efer(EFER_SCE, 0, 0, &NoNx), "SYSCALL absent");
        // Through the handler.
        let mut w = World::new();
        w.vcpu.cr[0] = CR0_PG | CR0_PE;
        w.vcpu.efer = EFER_LME | EFER_LMA;
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(msr::IA32_EFER);
        w.vcpu.gprs[Gpr::Rax as usize] = EFER_LMA;
        w.exit(Exit::MsrWrite);
        assert_eq!((w.vcpu.efer, w.injected()), (EFER_LME | EFER_LMA, GP0));
    }

    #[test]
    fn tsc_writes_move_the_offset_and_reads_follow_it() {
        let mut w = World::new();
        w.vcpu.gprs[Gpr::Rcx as usize] = u64::from(msr::IA32_TSC);
        w.vcpu.gprs[Gpr::Rax as usize] = 500;
        w.vcpu.gprs[Gpr::Rdx as usize] = 0;
        assert_eq!(w.exit(Exit::MsrWrite), Action::Resume);
        assert_eq!(w.injected(), None);
        assert_eq!(w.vcpu.tsc_offset, 500u64.wrapping_sub(1_000_000));
        // Time passes on the core; the guest's TSC advances from what it wrote.
        w.host.tsc += 250;
        w.exit(Exit::MsrRead);
        assert_eq!(
            (
                w.vcpu.gprs[Gpr::Rax as usize],
                w.vcpu.gprs[Gpr::Rdx as usize]
            ),
            (750, 0)
        );
        // The conversions for TSC deadlines; 0 is "disarmed" in both directions.
        let off = tsc_offset_for(10, 100);
        assert_eq!(guest_tsc_to_host(15, off), 105);
        assert_eq!(host_tsc_to_guest(105, off), 15);
        assert_eq!(
            (guest_tsc_to_host(0, off), host_tsc_to_guest(0, off)),
            (0, 0)
        );
        assert!(
            !crate::run::exits::PASSTHROUGH_MSRS.contains(&msr::IA32_TSC),
            "IA32_TSC is never written by the guest directly"
        );
    }

    /// Sets XCR0 through the handler with CPL, ECX and CR4 as given; returns what was injected.
    fn xsetbv(w: &mut World, value: u64, ecx: u64, cpl: u8) -> Option<(u8, Option<u32>)> {
        w.vcpu.cr[4] = 1 << 18;
        w.vcpu.cpl = cpl;
        w.vcpu.gprs[Gpr::Rcx as usize] = ecx;
        w.vcpu.gprs[Gpr::Rax as usize] = value & 0xffff_ffff;
        w.vcpu.gprs[Gpr::Rdx as usize] = value >> 32;
        w.host.xcr0 = None;
        w.exit(Exit::Xsetbv);
        w.injected()
    }

    #[test]
    fn xsetbv_checks_every_architectural_rule() {
        let mut w = World::new();
        let ok = |w: &mut World, v: u64| {
            assert_eq!(xsetbv(w, v, 0, 0), None, "{v:#x} accepted");
            assert_eq!(w.host.xcr0, Some(v));
        };
        let bad = |w: &mut World, v: u64, why: &str| {
            assert_eq!(xsetbv(w, v, 0, 0), GP0, "{v:#x}: {why}");
            assert_eq!(w.host.xcr0, None, "{why}: never loaded");
        };
        ok(&mut w, 0b1);
        ok(&mut w, 0b11);
        ok(&mut w, 0b111);
        ok(&mut w, 0b1110_0111);
        ok(&mut w, 0b11 << 17 | 0b111);
        ok(&mut w, 0b11000 | 0b1);
        ok(&mut w, 1 << 9 | 1);
        bad(&mut w, 0b10, "x87 (bit 0) must be 1");
        bad(&mut w, 0b101, "YMM (2) requires SSE (1)");
        bad(&mut w, 0b0010_0111, "AVX-512: opmask alone");
        bad(&mut w, 0b0110_0111, "AVX-512: two of three");
        bad(
            &mut w,
            0b1100_0111,
            "AVX-512: ZMM_Hi256 and Hi16_ZMM without opmask",
        );
        bad(&mut w, 0b1110_0011, "AVX-512 requires YMM");
        bad(&mut w, 1 << 17 | 0b111, "TILECFG without TILEDATA");
        bad(&mut w, 1 << 18 | 0b111, "TILEDATA without TILECFG");
        bad(&mut w, 0b01001, "BNDREGS without BNDCSR");
        bad(&mut w, 0b10001, "BNDCSR without BNDREGS");
        bad(
            &mut w,
            1 << 8 | 1,
            "bit 8 (PT, supervisor) is not in CPUID.0xD.0",
        );
        bad(&mut w, 1 << 63 | 1, "bit 63 reserved");
        // XCR index other than 0, and CPL > 0: #GP(0); OSXSAVE clear: #UD.
        assert_eq!(xsetbv(&mut w, 0b11, 1, 0), GP0);
        assert_eq!(xsetbv(&mut w, 0b11, 1 << 32, 0), None, "ECX is 32 bits");
        assert_eq!(xsetbv(&mut w, 0b11, 0, 3), GP0);
        w.vcpu.cr[4] = 0;
        w.vcpu.cpl = 0;
        w.vcpu.gprs[Gpr::Rcx as usize] = 0;
        w.exit(Exit::Xsetbv);
        assert_eq!(w.injected(), UD);
        // A host without AMX: its bits are refused even in pairs.
        let mut w = World::new();
        w.host.xcr0_supported = 0b111;
        bad(&mut w, 0b11 << 17 | 0b111, "not supported here");
    }

    #[test]
    fn cpuid_hides_what_the_enclave_does_not_own() {
        use crate::run::exits::filtered_cpuid;
        /// A host with every feature bit set and leaves up to 0x20.
        struct Everything;
        impl HostCpu for Everything {
            fn cpuid(&self, leaf: u32, _: u32) -> [u32; 4] {
                if leaf == 0 {
                    [0x20, 0, 0, 0]
                } else {
                    [u32::MAX; 4]
                }
            }
            fn xsetbv(&mut self, _: u64) {}
            fn rdtsc(&self) -> u64 {
                0
            }
        }
        let h = Everything;
        let [_, b, c, d] = filtered_cpuid(&h, 1, 0);
        for (bit, what) in [
            (3, "MONITOR"),
            (4, "DS-CPL"),
            (5, "VMX"),
            (6, "SMX"),
            (7, "EIST"),
            (8, "TM2"),
            (15, "PDCM"),
            (21, "x2APIC (a bare-metal enclave has no local APIC)"),
        ] {
            assert_eq!(c & (1 << bit), 0, "leaf 1 ECX {what}");
        }
        assert_ne!(c & (1 << 31), 0, "hypervisor present");
        assert_ne!(c & (1 << 26), 0, "XSAVE stays");
        for (bit, what) in [
            (9, "APIC (a bare-metal enclave has no local APIC)"),
            (21, "DS"),
            (22, "ACPI"),
            (28, "HTT"),
            (29, "TM"),
            (31, "PBE"),
        ] {
            assert_eq!(d & (1 << bit), 0, "leaf 1 EDX {what}");
        }
        assert_eq!(b >> 16, 1, "APIC ID 0, one logical processor");
        assert_eq!(filtered_cpuid(&h, 4, 0)[0] >> 14, 0, "no host core counts");
        for leaf in [
            5,
            0xa,
            0xf,
            0x10,
            0x12,
            0x14,
            0x1b,
            0x8000_000a,
            0x8000_001e,
            0x8000_001f,
        ] {
            assert_eq!(filtered_cpuid(&h, leaf, 0), [0; 4], "leaf {leaf:#x}");
        }
        assert_eq!(filtered_cpuid(&h, 6, 0), [1 << 2, 0, 0, 0], "ARAT only");
        let [_, b7, c7, _] = filtered_cpuid(&h, 7, 0);
        assert_eq!(b7 & ((1 << 2) | (1 << 12) | (1 << 15) | (1 << 25)), 0);
        assert_eq!(c7 & (1 << 30), 0);
        assert_eq!(filtered_cpuid(&h, 0xb, 0), [0, 1, 0x100, 0], "x2APIC ID 0");
        assert_eq!(filtered_cpuid(&h, 0x1f, 1), [0, 1, 0x201, 0]);
        let c81 = filtered_cpuid(&h, 0x8000_0001, 0)[2];
        for (bit, what) in [
            (2, "SVM"),
            (12, "SKINIT"),
            (23, "PerfCtrExtCore"),
            (29, "MONITORX"),
        ] {
            assert_eq!(c81 & (1 << bit), 0, "{what}");
        }
        assert_eq!(filtered_cpuid(&h, 0x8000_0008, 0)[2] & 0xf0ff, 0);
    }
}
