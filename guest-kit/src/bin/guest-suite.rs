//! The 64-bit test guest (see the crate docs). atoll enters `_start` in 64-bit mode with
//! RDI = RAM bytes, RSI = command-line GPA, RDX = its length, RSP = top of RAM.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("guest-suite is a bare-metal guest: atoll loads it into an enclave");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod guest {
    use atoll_abi::{hypercall, status, CPUID_SIGNATURE, HYPERCALL_ABI_VERSION};
    use core::arch::{asm, global_asm, x86_64::__cpuid_count};
    use core::fmt::Write;
    use core::sync::atomic::{AtomicU64, Ordering};

    global_asm!(
        r#"
    .section .text.entry, "ax"
    .global _start
_start:
    and rsp, -16
    call guest_main
2:  hlt
    jmp 2b

    /* #GP handler: count; for the MSR checks skip the 2-byte RDMSR/WRMSR; for a deny probe
       (FIXUP_RIP set) record the vector and resume at the probe's fixup. */
    .global guest_gp_handler
guest_gp_handler:
    lock inc qword ptr [rip + GP_COUNT]
    cmp qword ptr [rip + FIXUP_RIP], 0
    jne 3f
    add qword ptr [rsp + 8], 2
    add rsp, 8
    iretq
3:  push rax
    mov qword ptr [rip + LAST_VECTOR], 13
    mov rax, [rip + FIXUP_RIP]
    mov [rsp + 16], rax
    pop rax
    add rsp, 8
    iretq

    /* #UD handler for the deny probes: record the vector, resume at the fixup. */
    .global guest_ud_handler
guest_ud_handler:
    push rax
    mov qword ptr [rip + LAST_VECTOR], 6
    mov rax, [rip + FIXUP_RIP]
    mov [rsp + 8], rax
    pop rax
    iretq

    /* #DB handler (single step, INT1): count, keep DR6, clear TF in the saved RFLAGS. */
    .global guest_db_handler
guest_db_handler:
    push rax
    lock inc qword ptr [rip + DB_COUNT]
    mov rax, dr6
    mov [rip + LAST_DR6], rax
    and qword ptr [rsp + 24], -257
    pop rax
    iretq
"#
    );

    #[no_mangle]
    static GP_COUNT: AtomicU64 = AtomicU64::new(0);
    /// Where a deny probe resumes after the fault it expects (0: no probe running).
    #[no_mangle]
    static FIXUP_RIP: AtomicU64 = AtomicU64::new(0);
    /// The vector the last probe faulted with (0: none).
    #[no_mangle]
    static LAST_VECTOR: AtomicU64 = AtomicU64::new(0);
    #[no_mangle]
    static DB_COUNT: AtomicU64 = AtomicU64::new(0);
    #[no_mangle]
    static LAST_DR6: AtomicU64 = AtomicU64::new(0);

    extern "C" {
        fn guest_gp_handler();
        fn guest_ud_handler();
        fn guest_db_handler();
        /// The end of the loaded image (page-aligned; `guest64.ld`).
        static __guest_end: u8;
    }

    /// Guest RAM below this is atoll's loader area (page tables, GDT, command line).
    const LOADER_AREA_END: u64 = 0x8000;
    /// Where the ELF image is loaded (`guest64.ld`).
    const IMAGE_START: u64 = 0x10_0000;
    /// The top of RAM kept for the stack (atoll sets RSP to the top of RAM; the guest never
    /// nests deeper than this).
    const STACK_RESERVE: u64 = 64 << 10;

    /// The RAM outside what was loaded into it and what the guest itself uses: between the
    /// loader area and the image, and between the image's end and the stack.
    fn free_ram(ram: u64) -> [(u64, u64); 2] {
        let image_end = core::ptr::addr_of!(__guest_end) as u64;
        [
            (LOADER_AREA_END, IMAGE_START),
            (image_end, ram.saturating_sub(STACK_RESERVE).max(image_end)),
        ]
    }

    /// The stack pointer.
    fn rsp() -> u64 {
        let v: u64;
        // SAFETY: reads a register.
        unsafe { asm!("mov {}, rsp", out(reg) v, options(nomem, nostack)) };
        v
    }

    /// Counts the bytes of [`free_ram`] that do not read zero: RAM handed to a new enclave must
    /// hold nothing of an earlier one. Returns (nonzero bytes, bytes checked, first nonzero GPA).
    fn zero_check(ram: u64) -> (u64, u64, Option<u64>) {
        let (mut nonzero, mut checked, mut first) = (0u64, 0u64, None);
        for (start, end) in free_ram(ram) {
            let mut a = start;
            while a < end {
                // SAFETY: `a` is 8-byte aligned guest RAM outside the image and the stack,
                // identity-mapped; reading it has no effect.
                let w = unsafe { core::ptr::read_volatile(a as *const u64) };
                if w != 0 {
                    let bytes = w.to_le_bytes();
                    nonzero += bytes.iter().filter(|&&b| b != 0).count() as u64;
                    first.get_or_insert(a + bytes.iter().position(|&b| b != 0).unwrap_or(0) as u64);
                }
                checked += 8;
                a += 8;
            }
        }
        (nonzero, checked, first)
    }

    /// Writes a pattern over all of [`free_ram`] (so a successor that reuses this RAM without
    /// atoll zeroing it would see it). Returns the bytes written.
    fn dirty(ram: u64) -> u64 {
        let mut written = 0;
        for (start, end) in free_ram(ram) {
            // SAFETY: guest RAM outside the image and the stack, identity-mapped, used by
            // nothing else.
            unsafe { core::ptr::write_bytes(start as *mut u8, 0xa5, (end - start) as usize) };
            written += end - start;
        }
        written
    }

    /// An interrupt gate (SDM Vol. 3A Figure 6-8).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Gate([u32; 4]);

    fn gate(handler: u64) -> Gate {
        // Selector 0x08 (atoll's 64-bit code segment), present interrupt gate, DPL 0.
        Gate([
            (handler as u32 & 0xffff) | (0x08 << 16),
            (handler as u32 & 0xffff_0000) | 0x8e00,
            (handler >> 32) as u32,
            0,
        ])
    }

    static mut IDT: [Gate; 32] = [Gate([0; 4]); 32];

    fn load_idt() {
        let idt = &raw mut IDT;
        // SAFETY: single-threaded guest; the IDT is written before it is loaded and then only
        // read by the CPU, so nothing else accesses it.
        unsafe { (*idt)[13] = gate(guest_gp_handler as *const () as u64) };
        // SAFETY: as above.
        unsafe { (*idt)[6] = gate(guest_ud_handler as *const () as u64) };
        // SAFETY: as above.
        unsafe { (*idt)[1] = gate(guest_db_handler as *const () as u64) };
        #[repr(C, packed)]
        struct Ptr {
            limit: u16,
            base: u64,
        }
        let p = Ptr {
            limit: (32 * 16 - 1) as u16,
            base: idt as u64,
        };
        // SAFETY: `p` describes the whole static IDT, which lives forever; its gates 1, 6 and
        // 13 were just filled in and the others are not present.
        unsafe { asm!("lidt [{}]", in(reg) &p, options(readonly, nostack)) };
    }

    fn outb(port: u16, v: u8) {
        // SAFETY: port I/O in the guest only causes exits atoll handles.
        unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
    }

    fn inb(port: u16) -> u8 {
        let v: u8;
        // SAFETY: as above.
        unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
        v
    }

    struct Com1;
    impl Write for Com1 {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for b in s.bytes() {
                while inb(0x3fd) & 0x20 == 0 {}
                outb(0x3f8, b);
            }
            Ok(())
        }
    }

    /// A fixed buffer to format into (no allocator here).
    struct Buf {
        bytes: [u8; 1024],
        len: usize,
    }
    impl Buf {
        const fn new() -> Self {
            Self {
                bytes: [0; 1024],
                len: 0,
            }
        }
        fn as_slice(&self) -> &[u8] {
            &self.bytes[..self.len]
        }
    }
    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.len + s.len();
            if end > self.bytes.len() {
                return Err(core::fmt::Error);
            }
            self.bytes[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }

    static INTEL: AtomicU64 = AtomicU64::new(1);

    /// The hypercall: VMCALL on Intel, VMMCALL on AMD.
    fn hcall(nr: u64, a: u64, b: u64) -> (u64, u64, u64) {
        let (rax, rbx, rcx): (u64, u64, u64);
        if INTEL.load(Ordering::Relaxed) == 1 {
            // SAFETY: the hypercall only exits to atoll; RBX is saved around it because LLVM
            // reserves it.
            unsafe {
                asm!("xchg {b}, rbx", "vmcall", "xchg {b}, rbx", b = inout(reg) a => rbx, inout("rax") nr => rax, inout("rcx") b => rcx, options(nostack))
            };
        } else {
            // SAFETY: as VMCALL above, on AMD.
            unsafe {
                asm!("xchg {b}, rbx", "vmmcall", "xchg {b}, rbx", b = inout(reg) a => rbx, inout("rax") nr => rax, inout("rcx") b => rcx, options(nostack))
            };
        }
        (rax, rbx, rcx)
    }

    fn console(text: &[u8]) -> u64 {
        hcall(
            hypercall::CONSOLE_WRITE,
            text.as_ptr() as u64,
            text.len() as u64,
        )
        .0
    }

    fn report(json: &Buf) -> u64 {
        hcall(
            hypercall::REPORT,
            json.as_slice().as_ptr() as u64,
            json.len as u64,
        )
        .0
    }

    fn exit(code: u64) -> ! {
        hcall(hypercall::EXIT, code, 0);
        loop {
            // SAFETY: HLT with interrupts off: atoll ends the enclave.
            unsafe { asm!("cli", "hlt") };
        }
    }

    fn rdmsr(index: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: a denied MSR raises #GP, which the guest's handler skips.
        unsafe {
            asm!("rdmsr", in("ecx") index, out("eax") lo, out("edx") hi, options(nomem, nostack))
        };
        (u64::from(hi) << 32) | u64::from(lo)
    }

    fn wrmsr(index: u32, value: u64) {
        // SAFETY: as for rdmsr.
        unsafe {
            asm!("wrmsr", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack))
        };
    }

    /// Runs one instruction (`$ins`, with RAX, RCX, RDX as given) under a fixup; returns the
    /// vector of the fault it raised (0: none) and RAX afterwards.
    macro_rules! probe {
        ($ins:literal, $rax:expr, $rcx:expr, $rdx:expr) => {{
            LAST_VECTOR.store(0, Ordering::SeqCst);
            let rax_out: u64;
            // SAFETY: the instruction either completes or faults into this guest's own #UD or
            // #GP handler, which resumes at label 2 (FIXUP_RIP); it touches no memory but what
            // its operands name, which are valid.
            unsafe {
                asm!(
                    "lea {t}, [rip + 2f]",
                    "mov [rip + FIXUP_RIP], {t}",
                    $ins,
                    "2:",
                    "mov qword ptr [rip + FIXUP_RIP], 0",
                    t = out(reg) _,
                    inout("rax") $rax => rax_out,
                    in("rcx") $rcx,
                    in("rdx") $rdx,
                    options(nostack)
                );
            }
            (LAST_VECTOR.load(Ordering::SeqCst), rax_out)
        }};
    }

    /// The deny-by-default probes (`docs/security.md`): what a guest gets for instructions and
    /// registers atoll intercepts. Returns (ud_ok, gp_ok, cr8_ok, cache_ok, db_ok, tsc_ok).
    fn deny_probes() -> (bool, bool, bool, bool, bool, bool) {
        static BUF: [u64; 8] = [0; 8];
        let buf = BUF.as_ptr() as u64;
        // VMX, SVM and MONITOR/MWAIT are hidden: #UD on either vendor (exiting or native).
        // (VMXON only on Intel: QEMU's TCG, unlike an AMD processor, does not raise #UD for it.)
        let intel = INTEL.load(Ordering::Relaxed) == 1;
        let ud = [
            if intel {
                probe!("vmxon [rax]", buf, 0u64, 0u64).0
            } else {
                6
            },
            probe!("vmrun", 0u64, 0u64, 0u64).0,
            probe!("monitor", buf, 0u64, 0u64).0,
            probe!("mwait", 0u64, 0u64, 0u64).0,
        ];
        let ud_ok = ud.iter().all(|&v| v == 6);
        // RDPMC: no counters, #GP; CR8 bits 63:4 reserved, #GP.
        let rdpmc = probe!("rdpmc", 0u64, 0u64, 0u64).0;
        let cr8_bad = probe!("mov cr8, rax", 0x10u64, 0u64, 0u64).0;
        // XSETBV of AVX without SSE: #GP (only where XSAVE exists; the guest enables OSXSAVE).
        let xsetbv_bad = if __cpuid_count(1, 0).ecx & (1 << 26) != 0 {
            // SAFETY: setting CR4.OSXSAVE where the CPU has XSAVE only enables XSETBV/XGETBV.
            unsafe {
                asm!("mov {t}, cr4", "bts {t}, 18", "mov cr4, {t}", t = out(reg) _, options(nomem, nostack))
            };
            probe!("xsetbv", 0b101u64, 0u64, 0u64).0
        } else {
            13
        };
        let gp_ok = rdpmc == 13 && cr8_bad == 13 && xsetbv_bad == 13;
        // CR8: the guest's own value, read back.
        let (w, _) = probe!("mov cr8, rax", 5u64, 0u64, 0u64);
        let (r, cr8) = probe!("mov rax, cr8", 0u64, 0u64, 0u64);
        let _ = probe!("mov cr8, rax", 0u64, 0u64, 0u64);
        let cr8_ok = w == 0 && r == 0 && cr8 == 5;
        // WBINVD and INVD complete.
        let cache_ok =
            probe!("wbinvd", 0u64, 0u64, 0u64).0 == 0 && probe!("invd", 0u64, 0u64, 0u64).0 == 0;
        // #DB: one single-step trap with DR6.BS set, then INT1, which returns past itself.
        let db0 = DB_COUNT.load(Ordering::SeqCst);
        // SAFETY: TF makes the instruction after POPFQ trap to the guest's #DB handler, which
        // clears TF and returns.
        unsafe {
            asm!(
                "mov {t}, 0xffff0ff0",
                "mov dr6, {t}",
                "pushfq",
                "or qword ptr [rsp], 0x100",
                "popfq",
                "nop",
                t = out(reg) _,
            );
        }
        let step_ok = DB_COUNT.load(Ordering::SeqCst) == db0 + 1
            && LAST_DR6.load(Ordering::SeqCst) & (1 << 14) != 0;
        // SAFETY: INT1 traps to the guest's #DB handler, which returns past it.
        unsafe { asm!(".byte 0xf1", options(nomem, nostack)) };
        let db_ok = step_ok && DB_COUNT.load(Ordering::SeqCst) == db0 + 2;
        // IA32_TSC writes move this guest's TSC only.
        let base = 1u64 << 40;
        wrmsr(0x10, base);
        let t = rdmsr(0x10);
        let r_tsc = tsc();
        let tsc_ok = t >= base && r_tsc >= t && r_tsc < base + (1 << 36);
        if !(ud_ok && gp_ok && cr8_ok && cache_ok && db_ok && tsc_ok) {
            let _ = writeln!(
                Com1,
                "guest-suite: deny probes: #UD {ud:?}, #GP rdpmc {rdpmc} cr8 {cr8_bad} xsetbv {xsetbv_bad}, cr8 write {w} read {r} value {cr8}, dr6 {:#x} #DB {}, tsc {t:#x} then {r_tsc:#x}",
                LAST_DR6.load(Ordering::SeqCst),
                DB_COUNT.load(Ordering::SeqCst) - db0
            );
        }
        (ud_ok, gp_ok, cr8_ok, cache_ok, db_ok, tsc_ok)
    }

    fn tsc() -> u64 {
        // SAFETY: RDTSC is unprivileged and not intercepted.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// Reads, inverts, checks and restores the first 8 bytes of the page at `addr`.
    fn check_page(addr: u64) -> bool {
        let ok: u64;
        // SAFETY: `addr` is guest RAM, identity-mapped; the original value is restored, and no
        // other memory is touched between the write and the restore.
        unsafe {
            asm!(
                "mov {orig}, [{a}]",
                "mov {inv}, {orig}",
                "not {inv}",
                "mov [{a}], {inv}",
                "mov {back}, [{a}]",
                "mov [{a}], {orig}",
                "xor {ok:e}, {ok:e}",
                "cmp {back}, {inv}",
                "sete {ok:l}",
                a = in(reg) addr, orig = out(reg) _, inv = out(reg) _, back = out(reg) _, ok = out(reg) ok,
                options(nostack)
            );
        }
        ok == 1
    }

    /// Cycles per iteration of `f`, over `n` iterations.
    fn cycles(n: u64, mut f: impl FnMut()) -> u64 {
        let t0 = tsc();
        for _ in 0..n {
            f();
        }
        (tsc() - t0) / n
    }

    #[no_mangle]
    extern "C" fn guest_main(ram: u64, cmdline_gpa: u64, cmdline_len: u64) -> ! {
        // SAFETY: atoll wrote `cmdline_len` bytes of command line at `cmdline_gpa`.
        let cmd = unsafe {
            core::slice::from_raw_parts(cmdline_gpa as *const u8, cmdline_len.min(1024) as usize)
        };
        // First word: the mode; `passes=N`: how many times to check every RAM page (a longer
        // run, so a neighbour's crash can be seen to happen while this enclave still works).
        let text = core::str::from_utf8(cmd).unwrap_or("suite");
        let mut words = text.split_whitespace();
        let mode = words.next().unwrap_or("suite");
        let passes: u64 = words
            .find_map(|w| w.strip_prefix("passes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
            .clamp(1, 100_000);
        // Before anything else writes RAM: nothing is written outside the image and the stack
        // until the suite's own page check, which restores what it reads.
        let zero = (mode == "zero-check").then(|| zero_check(ram));
        let vendor = __cpuid_count(0, 0);
        INTEL.store(
            u64::from(vendor.ebx == u32::from_le_bytes(*b"Genu")),
            Ordering::Relaxed,
        );
        load_idt();
        let _ = writeln!(
            Com1,
            "guest-suite: hello through COM1 (mode {mode}, {} MiB RAM)",
            ram >> 20
        );
        let console_ok = console(b"guest-suite: hello through the console hypercall") == status::OK;

        let (st, version, max_nr) = hcall(hypercall::VERSION, 0, 0);
        let abi_ok =
            st == status::OK && version == HYPERCALL_ABI_VERSION && max_nr >= hypercall::EXIT;
        let unknown_ok = hcall(0xdead, 0, 0).0 == status::UNKNOWN;
        let fault_ok = hcall(hypercall::CONSOLE_WRITE, ram - 4, 64).0 == status::FAULT;

        let leaf1 = __cpuid_count(1, 0);
        let vmx_hidden = leaf1.ecx & (1 << 5) == 0;
        let hv_bit = leaf1.ecx & (1 << 31) != 0;
        let hv = __cpuid_count(0x4000_0000, 0);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&hv.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
        sig[8..12].copy_from_slice(&hv.edx.to_le_bytes());
        let sig_ok = &sig == CPUID_SIGNATURE && hv.eax >= 0x4000_0001;
        let svm_hidden = __cpuid_count(0x8000_0001, 0).ecx & (1 << 2) == 0;

        // MSRs: MISC_ENABLE is on atoll's allowlist, FEATURE_CONTROL is not (#GP), LSTAR passes
        // through to the hardware.
        let gp0 = GP_COUNT.load(Ordering::Relaxed);
        let misc = rdmsr(0x1a0);
        let allowed_ok = GP_COUNT.load(Ordering::Relaxed) == gp0 && misc == 1;
        rdmsr(0x3a);
        wrmsr(0x3a, 5);
        let denied_ok = GP_COUNT.load(Ordering::Relaxed) == gp0 + 2;
        wrmsr(0xc000_0082, 0xffff_8000_1234_5000);
        let passthrough_ok = rdmsr(0xc000_0082) == 0xffff_8000_1234_5000
            && GP_COUNT.load(Ordering::Relaxed) == gp0 + 2;

        let (deny_ud, deny_gp, deny_cr8, deny_cache, deny_db, deny_tsc) = deny_probes();

        // A port atoll does not emulate: this enclave's policy is `ignore`, so it reads all ones.
        let denied_port = inb(0x70);

        // Every page of RAM.
        let pages = ram / 4096;
        let mut bad_pages = 0u64;
        for _ in 0..passes {
            for p in 0..pages {
                if !check_page(p * 4096) {
                    bad_pages += 1;
                }
            }
        }

        let cpuid_cycles = cycles(200, || {
            core::hint::black_box(__cpuid_count(0, 0));
        });
        let hypercall_cycles = cycles(200, || {
            core::hint::black_box(hcall(hypercall::VERSION, 0, 0));
        });

        let passed = console_ok
            && abi_ok
            && unknown_ok
            && fault_ok
            && vmx_hidden
            && hv_bit
            && sig_ok
            && svm_hidden
            && allowed_ok
            && denied_ok
            && passthrough_ok
            && denied_port == 0xff
            && bad_pages == 0
            && deny_ud
            && deny_gp
            && deny_cr8
            && deny_cache
            && deny_db
            && deny_tsc;
        let mut json = Buf::new();
        let _ = write!(
            json,
            "{{\"suite_passed\":{passed},\"console_hypercall\":{console_ok},\"abi_version_ok\":{abi_ok},\"unknown_hypercall_refused\":{unknown_ok},\"bad_buffer_refused\":{fault_ok},\
             \"cpuid_vmx_hidden\":{vmx_hidden},\"cpuid_svm_hidden\":{svm_hidden},\"cpuid_hypervisor_bit\":{hv_bit},\"cpuid_signature_ok\":{sig_ok},\
             \"msr_allowed_ok\":{allowed_ok},\"msr_denied_gp\":{denied_ok},\"msr_passthrough_ok\":{passthrough_ok},\"denied_port_value\":{denied_port},\
             \"deny_ud\":{deny_ud},\"deny_gp\":{deny_gp},\"deny_cr8\":{deny_cr8},\"deny_cache\":{deny_cache},\"deny_db\":{deny_db},\"deny_tsc\":{deny_tsc},\
             \"ram_bytes\":{ram},\"pages_checked\":{pages},\"ram_passes\":{passes},\"bad_pages\":{bad_pages},\"cpuid_cycles\":{cpuid_cycles},\"hypercall_cycles\":{hypercall_cycles},\"mode\":\"{mode}\"}}"
        );
        if report(&json) != status::OK {
            let _ = writeln!(Com1, "guest-suite: REPORT refused");
            exit(3);
        }
        let _ = writeln!(Com1, "guest-suite: suite {} (cpuid {cpuid_cycles} cycles, hypercall {hypercall_cycles} cycles)", if passed { "passed" } else { "FAILED" });

        // `fault=KIND` (fault-injection images only): after the suite, ask atoll to fault while
        // it handles this enclave's hypercall; atoll must end this enclave only.
        let fault = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("fault="));
        if let Some(kind) = fault {
            use atoll_abi::hypercall::fault;
            let nr = match kind {
                "panic" => fault::PANIC,
                "page-fault" => fault::PAGE_FAULT,
                "allocation" => fault::ALLOCATION,
                "invalid-opcode" => fault::INVALID_OPCODE,
                "stack-overflow" => fault::STACK_OVERFLOW,
                _ => 0,
            };
            let _ = writeln!(Com1, "guest-suite: asking atoll to fault ({kind})");
            let (st, _, _) = hcall(hypercall::FAULT_INJECT, nr, 0);
            let mut json = Buf::new();
            let _ = write!(json, "{{\"fault_injection_returned\":{st}}}");
            let _ = report(&json);
            let _ = writeln!(Com1, "guest-suite: atoll returned {st} instead of faulting");
            exit(8)
        }

        match mode {
            "zero-check" => {
                let (nonzero, checked, first) = zero.unwrap_or_default();
                let stack_ok = rsp() > ram.saturating_sub(STACK_RESERVE);
                let mut json = Buf::new();
                let _ = write!(
                    json,
                    "{{\"nonzero_bytes\":{nonzero},\"bytes_checked\":{checked},\"first_nonzero_gpa\":{},\"image_end\":{},\"stack_within_reserve\":{stack_ok}}}",
                    first.map_or(-1, |a| a as i64),
                    core::ptr::addr_of!(__guest_end) as u64
                );
                let _ = writeln!(
                    Com1,
                    "guest-suite: {nonzero} of {checked} bytes outside my image read nonzero"
                );
                if report(&json) != status::OK {
                    exit(3);
                }
                exit(if passed && nonzero == 0 && stack_ok {
                    0
                } else {
                    1
                })
            }
            "dirty" => {
                let written = dirty(ram);
                let mut json = Buf::new();
                let _ = write!(
                    json,
                    "{{\"bytes_dirtied\":{written},\"image_end\":{}}}",
                    core::ptr::addr_of!(__guest_end) as u64
                );
                let _ = writeln!(
                    Com1,
                    "guest-suite: wrote 0xa5 over {written} bytes outside my image"
                );
                if report(&json) != status::OK {
                    exit(3);
                }
                exit(if passed { 0 } else { 1 })
            }
            "past-ram" => {
                let _ = writeln!(
                    Com1,
                    "guest-suite: reading the byte at {ram:#x}, one past my RAM"
                );
                // SAFETY: deliberately outside guest RAM: atoll must stop this enclave here.
                let v: u8 = unsafe {
                    let v: u8;
                    asm!("mov {v}, byte ptr [{a}]", a = in(reg) ram, v = out(reg_byte) v, options(nostack, readonly));
                    v
                };
                let _ = writeln!(Com1, "guest-suite: read {v} past RAM and was not stopped");
                exit(4)
            }
            "poweroff" => {
                let _ = writeln!(
                    Com1,
                    "guest-suite: powering off through the ACPI sleep control register"
                );
                outb(
                    atoll_abi::acpi_pm::SLEEP_CONTROL_PORT,
                    atoll_abi::acpi_pm::S5_SLEEP_CONTROL_VALUE,
                );
                exit(6)
            }
            "reset" => {
                let _ = writeln!(
                    Com1,
                    "guest-suite: resetting through the ACPI reset register"
                );
                outb(
                    atoll_abi::acpi_pm::RESET_PORT,
                    atoll_abi::acpi_pm::RESET_VALUE,
                );
                exit(7)
            }
            "spin" => {
                let _ = writeln!(Com1, "guest-suite: spinning forever with interrupts masked");
                // SAFETY: masks interrupts and loops without a single exit: only atoll's
                // manager (a kick, an NMI, or its timer) can take this core back — the point of
                // this mode.
                unsafe { asm!("cli", "2:", "jmp 2b", options(nomem, nostack, noreturn)) }
            }
            "spin-cpuid" => {
                let _ = writeln!(
                    Com1,
                    "guest-suite: spinning forever on CPUID with interrupts masked"
                );
                // SAFETY: masks interrupts and loops on CPUID (leaf 0), an exit the hypervisor
                // may answer without returning to its run loop (VMX's fast path): only atoll's
                // manager (a kick, an NMI, or its timer) can take this core back — the point of
                // this mode. The registers CPUID writes (RBX included) are never used again:
                // the asm does not return.
                unsafe {
                    asm!(
                        "cli",
                        "2:",
                        "xor eax, eax",
                        "cpuid",
                        "jmp 2b",
                        options(nomem, nostack, noreturn)
                    )
                }
            }
            "triple-fault" => {
                let _ = writeln!(Com1, "guest-suite: triple-faulting");
                // SAFETY: an empty IDT turns the #UD into #GP, #DF and a triple fault: the
                // point of this mode.
                unsafe {
                    #[repr(C, packed)]
                    struct Ptr {
                        limit: u16,
                        base: u64,
                    }
                    let p = Ptr { limit: 0, base: 0 };
                    asm!("lidt [{}]", "ud2", in(reg) &p, options(nostack));
                }
                exit(5)
            }
            _ => exit(if passed { 0 } else { 1 }),
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        let _ = writeln!(Com1, "guest-suite: panic: {info}");
        exit(99)
    }
}
