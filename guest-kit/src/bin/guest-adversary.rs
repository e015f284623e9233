//! The adversarial 64-bit guest (issue 9): it does, deliberately, what a hostile or broken
//! bare-metal guest could do — every MSR range, every I/O port, CPUID leaves, invalid CR0, CR4,
//! CR8 and XCR0 values, the VMX and SVM instructions, hypercalls with bad numbers, pointers,
//! lengths and JSON, floods, APIC ICR writes, ring-3 faults, single-stepping over exits, and
//! finally memory at and past the end of its RAM — and reports through the REPORT hypercall what
//! each probe did (which exception vector, or none), so a scenario can check that atoll kept
//! the machine up, kept the neighbour enclave running, and behaved architecturally.
//!
//! Every risky instruction runs with a resume point: the guest's IDT catches all 32 exception
//! vectors, records the vector (and error code) and continues at the instruction after the
//! probe. A probe that ends the enclave (because atoll stops it) is a *terminal* probe: those
//! run last, one after the other, each announced first on COM1 and in a `last_probe` result.
//!
//! Command line words (atoll enters `_start` in 64-bit mode with RDI = RAM bytes, RSI = command
//! line GPA, RDX = its length, RSP = top of RAM):
//! * `only=a,b` runs only these probes; `skip=a,b` leaves these out; `all` selects every probe
//!   again (words apply in order, so a later `only=` overrides an earlier `skip=`);
//! * `ports=full|sample|none` (default full), `msrs=full|sample` (default full);
//! * `flood=N`: REPORT and CONSOLE_WRITE flood size (default 16 of each, ≤ 100000).
//!
//! Probe names, in running order: `PROBES` in the `guest` module below.
//!
//! Results (REPORT): `adversary_selected` first; one object `g_NAME` per probe group (exception
//! vectors by name — "GP", "UD", … or "none" — counts, and `unexpected` with `odd`, what differs
//! from the architecture or atoll's ABI); then `adversary_done`, `groups_ran`, `exceptions` and
//! `unexpected_total`; then, per terminal probe, `last_probe` before it and `g_NAME` (its vector)
//! if it survived; `last_probe` is "none" once every selected probe ran. Every group's object is
//! also printed on COM1, so a run that dies still shows what came before.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("guest-adversary is a bare-metal guest: atoll loads it into an enclave");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod guest {
    use atoll_abi::{hypercall, status};
    use core::arch::{asm, global_asm, x86_64::__cpuid_count};
    use core::fmt::Write;
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

    // The exception stubs (vectors with an error code push only their number, the others a 0
    // first, so every frame looks alike) and the common handler:
    // * it records the vector, error code and RIP and counts the vector;
    // * from ring 3 it returns to ring 0 at the resume point on the saved kernel stack;
    // * #DB (a trap or a breakpoint) continues where it happened, with RF set so an instruction
    //   breakpoint does not hit again, and stops single-stepping when the step budget runs out;
    // * any other vector continues at the resume point the probe set, which it clears;
    // * without a resume point the fault was not a probe's: it goes to `adv_unexpected`.
    global_asm!(
        r#"
    .section .text.entry, "ax"
    .global _start
_start:
    and rsp, -16
    call adv_main
2:  hlt
    jmp 2b

    .text
adv_isr_common:
    push rax
    push rcx
    push rdx
    /* [rsp+24] vector, +32 error code, +40 RIP, +48 CS, +56 RFLAGS, +64 RSP, +72 SS */
    mov rax, [rsp + 24]
    mov [rip + ADV_LAST_VEC], rax
    mov rcx, [rsp + 32]
    mov [rip + ADV_LAST_ERR], rcx
    mov rcx, [rsp + 40]
    mov [rip + ADV_LAST_RIP], rcx
    lea rcx, [rip + ADV_VEC_COUNTS]
    inc qword ptr [rcx + rax * 8]
    mov rcx, [rsp + 48]
    test cl, 3
    jnz 5f
    cmp rax, 1
    je 3f
    mov rcx, [rip + ADV_RESUME]
    test rcx, rcx
    jz 6f
    mov [rsp + 40], rcx
    mov qword ptr [rip + ADV_RESUME], 0
    jmp 4f
3:
    or qword ptr [rsp + 56], 0x10000
    dec qword ptr [rip + ADV_STEP_LEFT]
    jg 4f
    and qword ptr [rsp + 56], -0x101
    mov qword ptr [rip + ADV_STEP_LEFT], 0
4:
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq
5:
    mov rcx, [rip + ADV_RESUME]
    mov [rsp + 40], rcx
    mov qword ptr [rsp + 48], 0x08
    mov qword ptr [rsp + 56], 0x2
    mov rcx, [rip + ADV_KRSP]
    mov [rsp + 64], rcx
    mov qword ptr [rsp + 72], 0x10
    mov qword ptr [rip + ADV_RESUME], 0
    jmp 4b
6:
    lea rcx, [rip + adv_unexpected_entry]
    mov [rsp + 40], rcx
    and qword ptr [rsp + 56], -0x40101
    jmp 4b

adv_unexpected_entry:
    and rsp, -16
    call adv_unexpected

    /* Ring-3 snippets: each does one thing and then INT3 (vector 3, a DPL-3 gate) to get back
       to ring 0 when it did not fault. */
    .global adv_r3_nothing
adv_r3_nothing:
    int3
    .global adv_r3_misaligned
adv_r3_misaligned:
    mov rax, qword ptr [rip + ADV_UBUF + 1]
    int3
    .global adv_r3_split_lock
adv_r3_split_lock:
    lock add dword ptr [rip + ADV_UBUF + 62], 1
    int3
    .global adv_r3_vmcall
adv_r3_vmcall:
    xor eax, eax
    vmcall
    int3
    .global adv_r3_vmmcall
adv_r3_vmmcall:
    xor eax, eax
    vmmcall
    int3
    .global adv_r3_rdmsr
adv_r3_rdmsr:
    mov ecx, 0x1b
    rdmsr
    int3
    .global adv_r3_in
adv_r3_in:
    mov edx, 0x3f8
    in al, dx
    int3
    .global adv_r3_cli
adv_r3_cli:
    cli
    int3
    .global adv_r3_hlt
adv_r3_hlt:
    hlt
    int3
    .global adv_r3_mov_cr0
adv_r3_mov_cr0:
    mov rax, cr0
    int3
    .global adv_r3_cpuid
adv_r3_cpuid:
    xor eax, eax
    xor ecx, ecx
    cpuid
    int3

"#
    );
    global_asm!(include_str!("guest-adversary-isr.s"));

    const NONE: u64 = 0xff;

    /// Where the exception handler continues a faulting probe (0: no probe running).
    #[no_mangle]
    static ADV_RESUME: AtomicU64 = AtomicU64::new(0);
    /// The last exception's vector ([`NONE`] after a probe resets it).
    #[no_mangle]
    static ADV_LAST_VEC: AtomicU64 = AtomicU64::new(NONE);
    #[no_mangle]
    static ADV_LAST_ERR: AtomicU64 = AtomicU64::new(0);
    #[no_mangle]
    static ADV_LAST_RIP: AtomicU64 = AtomicU64::new(0);
    /// The ring-0 stack pointer a ring-3 probe returns on.
    #[no_mangle]
    static ADV_KRSP: AtomicU64 = AtomicU64::new(0);
    /// Single-step traps left before the handler clears TF.
    #[no_mangle]
    static ADV_STEP_LEFT: AtomicU64 = AtomicU64::new(0);
    /// Exceptions taken, by vector.
    #[no_mangle]
    static ADV_VEC_COUNTS: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

    /// A cache-line-aligned buffer ring 3 accesses misaligned.
    #[repr(C, align(64))]
    struct UBuf([u8; 128]);
    #[no_mangle]
    static mut ADV_UBUF: UBuf = UBuf([0; 128]);

    extern "C" {
        static ADV_ISR_TABLE: [u64; 32];
        fn adv_r3_nothing();
        fn adv_r3_misaligned();
        fn adv_r3_split_lock();
        fn adv_r3_vmcall();
        fn adv_r3_vmmcall();
        fn adv_r3_rdmsr();
        fn adv_r3_in();
        fn adv_r3_cli();
        fn adv_r3_hlt();
        fn adv_r3_mov_cr0();
        fn adv_r3_cpuid();
    }

    /// Runs the instructions with a resume point at their end: a fault in them continues there.
    /// Evaluates to the vector of the (last) exception taken, or `NONE as u8`.
    macro_rules! risky {
        ([$($tpl:literal),* $(,)?] $(, $($op:tt)*)?) => {{
            ADV_LAST_VEC.store(NONE, SeqCst);
            // SAFETY: a probe: the instructions may fault, and the guest's handler then resumes
            // at label 2 with every register but RIP as it was at the fault (the operands list
            // what the instructions change); nothing else in the guest depends on what they do.
            unsafe {
                asm!(
                    "lea r11, [rip + 2f]",
                    "mov qword ptr [rip + ADV_RESUME], r11",
                    $($tpl,)*
                    "2:",
                    "mov qword ptr [rip + ADV_RESUME], 0",
                    out("r11") _,
                    $($($op)*)?
                );
            }
            ADV_LAST_VEC.load(SeqCst) as u8
        }};
    }

    fn vec_name(v: u8) -> &'static str {
        // Not a vector: an instruction that neither faulted nor did what it should.
        if v == 0xfe {
            return "no_effect";
        }
        const NAMES: [&str; 32] = [
            "DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "CSO", "TS", "NP", "SS", "GP",
            "PF", "V15", "MF", "AC", "MC", "XM", "VE", "CP", "V22", "V23", "V24", "V25", "V26",
            "V27", "HV", "VC", "SX", "V31",
        ];
        NAMES.get(usize::from(v)).copied().unwrap_or("none")
    }
    const N: u8 = NONE as u8;
    const UD: u8 = 6;
    const GP: u8 = 13;
    const PF: u8 = 14;
    const DB: u8 = 1;
    const BP: u8 = 3;

    /// An interrupt gate (SDM Vol. 3A Figure 6-8), selector 0x08, this DPL.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Gate([u32; 4]);

    fn gate(handler: u64, dpl: u32) -> Gate {
        Gate([
            (handler as u32 & 0xffff) | (0x08 << 16),
            (handler as u32 & 0xffff_0000) | 0x8e00 | (dpl << 13),
            (handler >> 32) as u32,
            0,
        ])
    }

    /// 32 gates: an `INT n` above 31 is beyond the limit (#GP), which is one of the probes.
    static mut IDT: [Gate; 32] = [Gate([0; 4]); 32];

    #[repr(C, packed)]
    struct DtPtr {
        limit: u16,
        base: u64,
    }

    fn load_idt() {
        let idt = &raw mut IDT;
        let table = &raw const ADV_ISR_TABLE;
        for v in 0..32 {
            // SAFETY: ADV_ISR_TABLE is 32 stub addresses the global_asm above defines and
            // nothing ever writes; `v` < 32.
            let handler = unsafe { (*table)[v] };
            // INT3 is the way back from ring 3, so its gate is DPL 3.
            // SAFETY: single-threaded guest; the IDT is written before it is loaded (no reference
            // to it is live) and then only read by the CPU; `v` < 32.
            unsafe { (*idt)[v] = gate(handler, if v == 3 { 3 } else { 0 }) };
        }
        let p = DtPtr {
            limit: (32 * 16 - 1) as u16,
            base: idt as u64,
        };
        // SAFETY: `p` describes the 32 gates just written, each pointing at one of the handler
        // stubs above; IDT is a static, so it outlives the load.
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

    /// A fixed buffer to format into (no allocator here); output past its end is dropped and
    /// remembered, so a report is never silently cut mid-way.
    struct Buf<const CAP: usize> {
        bytes: [u8; CAP],
        len: usize,
        overflow: bool,
    }
    impl<const CAP: usize> Buf<CAP> {
        const fn new() -> Self {
            Self {
                bytes: [0; CAP],
                len: 0,
                overflow: false,
            }
        }
        fn as_slice(&self) -> &[u8] {
            &self.bytes[..self.len]
        }
        fn clear(&mut self) {
            self.len = 0;
            self.overflow = false;
        }
        fn push(&mut self, b: u8) {
            if self.len < CAP {
                self.bytes[self.len] = b;
                self.len += 1;
            } else {
                self.overflow = true;
            }
        }
    }
    impl<const CAP: usize> Write for Buf<CAP> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.len + s.len();
            if end > CAP {
                self.overflow = true;
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
        if INTEL.load(SeqCst) == 1 {
            // SAFETY: the hypercall only exits to atoll; RBX is saved around it because LLVM
            // reserves it.
            unsafe {
                asm!("xchg {b}, rbx", "vmcall", "xchg {b}, rbx", b = inout(reg) a => rbx, inout("rax") nr => rax, inout("rcx") b => rcx, options(nostack));
            }
        } else {
            // SAFETY: as above (VMMCALL is AMD's VMCALL).
            unsafe {
                asm!("xchg {b}, rbx", "vmmcall", "xchg {b}, rbx", b = inout(reg) a => rbx, inout("rax") nr => rax, inout("rcx") b => rcx, options(nostack));
            }
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

    fn report(json: &[u8]) -> u64 {
        hcall(hypercall::REPORT, json.as_ptr() as u64, json.len() as u64).0
    }

    fn exit(code: u64) -> ! {
        hcall(hypercall::EXIT, code, 0);
        loop {
            // SAFETY: HLT with interrupts off: atoll ends the enclave.
            unsafe { asm!("cli", "hlt") };
        }
    }

    /// Called (on a fresh alignment) when an exception arrives with no probe running: a bug of
    /// this guest or an exception atoll injected unasked. Reported, then the guest exits.
    #[no_mangle]
    extern "C" fn adv_unexpected() -> ! {
        let v = ADV_LAST_VEC.load(SeqCst) as u8;
        let rip = ADV_LAST_RIP.load(SeqCst);
        let err = ADV_LAST_ERR.load(SeqCst);
        let _ = writeln!(
            Com1,
            "adversary: UNEXPECTED exception {} (error {err:#x}) at RIP {rip:#x} outside any probe",
            vec_name(v)
        );
        let mut j = Buf::<256>::new();
        let _ = write!(
            j,
            "{{\"unexpected_exception\":{{\"vector\":\"{}\",\"rip\":{rip},\"error\":{err}}}}}",
            vec_name(v)
        );
        report(j.as_slice());
        exit(90)
    }

    fn tsc() -> u64 {
        // SAFETY: RDTSC is unprivileged.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
        let r = __cpuid_count(leaf, sub);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn read_cr(n: u8) -> u64 {
        let v: u64;
        match n {
            // SAFETY: the guest runs at CPL 0, and reading a control register has no side effect.
            0 => unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) },
            // SAFETY: as above.
            3 => unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)) },
            // SAFETY: as above.
            4 => unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) },
            // SAFETY: as above.
            _ => unsafe { asm!("mov {}, cr8", out(reg) v, options(nomem, nostack)) },
        }
        v
    }

    fn write_cr_p(n: u8, v: u64) -> u8 {
        match n {
            0 => risky!(["mov cr0, {v}"], v = in(reg) v),
            3 => risky!(["mov cr3, {v}"], v = in(reg) v),
            4 => risky!(["mov cr4, {v}"], v = in(reg) v),
            _ => risky!(["mov cr8, {v}"], v = in(reg) v),
        }
    }

    fn rdmsr_p(index: u32) -> (u8, u64) {
        let (lo, hi): (u32, u32);
        let v =
            risky!(["rdmsr"], in("ecx") index, inout("eax") 0u32 => lo, inout("edx") 0u32 => hi);
        (v, (u64::from(hi) << 32) | u64::from(lo))
    }

    fn wrmsr_p(index: u32, value: u64) -> u8 {
        risky!(["wrmsr"], in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32)
    }

    fn in_p(port: u16, size: u8) -> (u8, u32) {
        let mut val: u32 = 0;
        let v = match size {
            1 => risky!(["in al, dx"], in("dx") port, inout("eax") val),
            2 => risky!(["in ax, dx"], in("dx") port, inout("eax") val),
            _ => risky!(["in eax, dx"], in("dx") port, inout("eax") val),
        };
        (v, val)
    }

    fn out_p(port: u16, size: u8, val: u32) -> u8 {
        match size {
            1 => risky!(["out dx, al"], in("dx") port, in("eax") val),
            2 => risky!(["out dx, ax"], in("dx") port, in("eax") val),
            _ => risky!(["out dx, eax"], in("dx") port, in("eax") val),
        }
    }

    fn xgetbv(index: u32) -> (u8, u64) {
        let (lo, hi): (u32, u32);
        let v =
            risky!(["xgetbv"], in("ecx") index, inout("eax") 0u32 => lo, inout("edx") 0u32 => hi);
        (v, (u64::from(hi) << 32) | u64::from(lo))
    }

    fn xsetbv_p(index: u32, value: u64) -> u8 {
        risky!(["xsetbv"], in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32)
    }

    /// Exceptions counted by vector (index 32: none).
    struct Hist([u64; 33]);
    impl Hist {
        const fn new() -> Self {
            Self([0; 33])
        }
        fn add(&mut self, v: u8) {
            self.0[usize::from(v).min(32)] += 1;
        }
        fn count(&self, v: u8) -> u64 {
            self.0[usize::from(v).min(32)]
        }
        fn total(&self) -> u64 {
            self.0.iter().sum()
        }
    }
    impl core::fmt::Display for Hist {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("{")?;
            let mut first = true;
            for (i, n) in self.0.iter().enumerate() {
                if *n == 0 {
                    continue;
                }
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                write!(f, "\"{}\":{n}", vec_name(i as u8))?;
            }
            f.write_str("}")
        }
    }

    /// A short list of notable values (the first `CAP`, then a count of the rest).
    struct List<const CAP: usize> {
        items: [u64; CAP],
        len: usize,
        more: u64,
    }
    impl<const CAP: usize> List<CAP> {
        const fn new() -> Self {
            Self {
                items: [0; CAP],
                len: 0,
                more: 0,
            }
        }
        fn push(&mut self, v: u64) {
            if self.len < CAP {
                self.items[self.len] = v;
                self.len += 1;
            } else {
                self.more += 1;
            }
        }
        fn total(&self) -> u64 {
            self.len as u64 + self.more
        }
    }
    impl<const CAP: usize> core::fmt::Display for List<CAP> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("[")?;
            for (i, v) in self.items[..self.len].iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "\"{v:#x}\"")?;
            }
            if self.more > 0 {
                write!(f, ",\"+{}\"", self.more)?;
            }
            f.write_str("]")
        }
    }

    /// Notes what did not behave as the architecture (or atoll's ABI) says.
    struct Odd {
        buf: Buf<1024>,
        n: u64,
    }
    impl Odd {
        const fn new() -> Self {
            Self {
                buf: Buf::new(),
                n: 0,
            }
        }
        fn note(&mut self, what: core::fmt::Arguments<'_>) {
            if self.n > 0 {
                self.buf.push(b',');
            }
            self.buf.push(b'"');
            let _ = self.buf.write_fmt(what);
            self.buf.push(b'"');
            self.n += 1;
        }
        /// `got` should be `want`.
        fn expect(&mut self, what: &str, got: u8, want: u8) {
            if got != want {
                self.note(format_args!(
                    "{what}: {} not {}",
                    vec_name(got),
                    vec_name(want)
                ));
            }
        }
    }
    impl core::fmt::Display for Odd {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "\"unexpected\":{},\"odd\":[", self.n)?;
            // The buffer holds complete strings unless it overflowed.
            let s = core::str::from_utf8(self.buf.as_slice()).unwrap_or("");
            if self.buf.overflow {
                let cut = s.rfind(",\"").unwrap_or(0);
                f.write_str(&s[..cut])?;
            } else {
                f.write_str(s)?;
            }
            f.write_str("]")
        }
    }

    /// Total unexpected behaviours over all groups.
    static UNEXPECTED: AtomicU64 = AtomicU64::new(0);

    /// Prints a group's result on COM1 and merges it into the enclave's results.
    fn emit(group: &str, body: &Buf<4096>, odd: &Odd) {
        let mut j = Buf::<4096>::new();
        let s = core::str::from_utf8(body.as_slice()).unwrap_or("");
        let _ = write!(j, "{{\"{}\":{{{s},{odd}}}}}", key(group));
        UNEXPECTED.fetch_add(odd.n, SeqCst);
        let _ = writeln!(
            Com1,
            "adversary: {group}: {}",
            core::str::from_utf8(j.as_slice()).unwrap_or("?")
        );
        let st = report(j.as_slice());
        if st != status::OK || j.overflow || body.overflow {
            let _ = writeln!(
                Com1,
                "adversary: {group}: REPORT status {st} (overflow {})",
                j.overflow || body.overflow
            );
        }
    }

    /// A probe's result key: `g_` and its name with `-` as `_`.
    fn key(name: &str) -> KeyName {
        let mut k = KeyName([0; 32], 0);
        for b in b"g_".iter().chain(name.as_bytes()) {
            if k.1 < 32 {
                k.0[k.1] = if *b == b'-' { b'_' } else { *b };
                k.1 += 1;
            }
        }
        k
    }
    struct KeyName([u8; 32], usize);
    impl core::fmt::Display for KeyName {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(core::str::from_utf8(&self.0[..self.1]).unwrap_or("g_"))
        }
    }

    // ---- The probes -------------------------------------------------------------------------

    /// Every probe, in running order. Those from `mwait` on may end the enclave on today's
    /// atoll (or by design: `past-ram`), so they run last.
    pub const PROBES: &[&str] = &[
        "cpuid",
        "msr",
        "apic",
        "ports",
        "cr",
        "cr8",
        "xcr0",
        "debug",
        "ring3",
        "misc",
        "wbinvd",
        "hcall",
        "json",
        "flood",
        "mem-edge",
        "tsc",
        // Possibly terminal from here on.
        "mwait",
        "cr0-nw",
        "clts",
        "lmsw",
        "invd",
        "getsec",
        "string-io",
        "xcall",
        "vmxon",
        "vmxoff",
        "vmclear",
        "vmptrld",
        "vmptrst",
        "vmread",
        "vmwrite",
        "vmlaunch",
        "vmresume",
        "invept",
        "invvpid",
        "vmfunc",
        "vmrun",
        "vmload",
        "vmsave",
        "stgi",
        "clgi",
        "skinit",
        "invlpga",
        "cr-mode",
        "cr3",
        "json-deep",
        "report-exhaust",
        "tsc-leave",
        "cr8-leave",
        "apic-mmio",
        "past-ram",
    ];
    const FIRST_TERMINAL: &str = "mwait";

    struct Opts {
        selected: [bool; 64],
        ports: u8, // 0 none, 1 sample, 2 full
        msrs_full: bool,
        flood: u64,
    }

    impl Opts {
        fn parse(text: &str) -> Self {
            let mut o = Opts {
                selected: [true; 64],
                ports: 2,
                msrs_full: true,
                flood: 16,
            };
            for w in text.split_whitespace() {
                if w == "all" {
                    o.selected = [true; 64];
                } else if let Some(list) = w.strip_prefix("only=") {
                    o.selected = [false; 64];
                    for n in list.split(',') {
                        o.set(n, true);
                    }
                } else if let Some(list) = w.strip_prefix("skip=") {
                    for n in list.split(',') {
                        o.set(n, false);
                    }
                } else if let Some(v) = w.strip_prefix("ports=") {
                    o.ports = match v {
                        "none" => 0,
                        "sample" => 1,
                        _ => 2,
                    };
                } else if let Some(v) = w.strip_prefix("msrs=") {
                    o.msrs_full = v != "sample";
                } else if let Some(v) = w.strip_prefix("flood=") {
                    o.flood = v.parse().unwrap_or(16).min(100_000);
                }
            }
            o
        }
        fn set(&mut self, name: &str, on: bool) {
            match PROBES.iter().position(|p| *p == name) {
                Some(i) => self.selected[i] = on,
                None => {
                    let _ = writeln!(Com1, "adversary: unknown probe name '{name}' ignored");
                }
            }
        }
        fn on(&self, name: &str) -> bool {
            PROBES
                .iter()
                .position(|p| *p == name)
                .is_some_and(|i| self.selected[i])
        }
    }

    struct Ctx {
        ram: u64,
        intel: bool,
        opts: Opts,
    }

    fn g_cpuid(_c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        let mut n = 0u64;
        let max_std = cpuid(0, 0)[0];
        let max_ext = cpuid(0x8000_0000, 0)[0];
        for leaf in 0..=0x40u32 {
            for sub in 0..4 {
                core::hint::black_box(cpuid(leaf, sub));
                n += 1;
            }
        }
        let mut hv_nonzero = 0;
        for leaf in 0x4000_0000..0x4000_0100u32 {
            let r = cpuid(leaf, 0);
            if leaf >= 0x4000_0002 && r != [0; 4] {
                hv_nonzero += 1;
            }
            n += 1;
        }
        for leaf in (0x8000_0000..=0x8000_0040u32).chain([
            0x2000_0000,
            0x5000_0000,
            0x8fff_ffff,
            0xc000_0000,
            0xc000_0001,
            0xffff_ffff,
        ]) {
            core::hint::black_box(cpuid(leaf, 0));
            n += 1;
        }
        let l1 = cpuid(1, 0);
        let vmx = l1[2] & (1 << 5) != 0;
        let smx = l1[2] & (1 << 6) != 0;
        let hv = l1[2] & (1 << 31) != 0;
        let svm = cpuid(0x8000_0001, 0)[2] & (1 << 2) != 0;
        let svm_leaf = cpuid(0x8000_000a, 0);
        let hv0 = cpuid(0x4000_0000, 0);
        if vmx || smx || svm || !hv || svm_leaf != [0; 4] || hv_nonzero > 0 || hv0[0] < 0x4000_0001
        {
            odd.note(format_args!("cpuid filter: vmx {vmx} smx {smx} svm {svm} hv {hv} svm leaf {svm_leaf:?} hv leaves nonzero {hv_nonzero}"));
        }
        let _ = write!(j, "\"leaves\":{n},\"max_std\":{max_std},\"max_ext\":{max_ext},\"vmx\":{vmx},\"smx\":{smx},\"svm\":{svm},\"hv_bit\":{hv},\"hv_max\":{}", hv0[0]);
    }

    /// MSRs atoll lets a bare-metal enclave read: its allowlist and the pass-through set
    /// (SPEC_CTRL only where the host has it; PRED_CMD and FLUSH_CMD are write-only).
    const READABLE_OK: &[u32] = &[
        0x10,
        0x1b,
        0x48,
        0xfe,
        0x174,
        0x175,
        0x176,
        0x1a0,
        0x277,
        0x2ff,
        0xc000_0080,
        0xc000_0081,
        0xc000_0082,
        0xc000_0083,
        0xc000_0084,
        0xc000_0100,
        0xc000_0101,
        0xc000_0102,
        0xc000_0103,
    ];

    fn msr_indices(full: bool, mut f: impl FnMut(u32)) {
        for base in [0u32, 0xc000_0000, 0xc001_0000] {
            for i in 0..0x2000u32 {
                if full || i % 16 == 0 || i < 0x200 {
                    f(base + i);
                }
            }
        }
        // Sampled elsewhere: the hypervisor ranges, just past the three ranges, and a spread
        // over the whole 32-bit index space.
        for i in 0x4000_0000..0x4000_0110u32 {
            f(i);
        }
        for i in [
            0x4b56_4d00,
            0x4b56_4d01,
            0x4b56_4d02,
            0x4b56_4d03,
            0x4b56_4d04,
            0x4b56_4d05,
            0x2000,
            0x2001,
            0x3fff,
            0xc000_2000,
            0xc001_2000,
            0x8000_0000,
            0xffff_ffff,
        ] {
            f(i);
        }
        for k in 1..1024u32 {
            f(k.wrapping_mul(0x0040_1003) ^ (k << 7));
        }
    }

    fn g_msr(c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        const GARBAGE: [u64; 2] = [0xdead_beef_0bad_f00d, u64::MAX];
        let (mut rd, mut wb, mut gw) = (Hist::new(), Hist::new(), Hist::new());
        let mut readable = List::<48>::new();
        let mut unexpected_readable = List::<16>::new();
        let mut garbage_ok = List::<24>::new();
        let mut wb_refused = List::<16>::new();
        let mut n = 0u64;
        msr_indices(c.opts.msrs_full, |idx| {
            n += 1;
            let (v, val) = rdmsr_p(idx);
            rd.add(v);
            if v == N {
                readable.push(idx.into());
                if !READABLE_OK.contains(&idx) {
                    unexpected_readable.push(idx.into());
                }
            }
            // IA32_TSC is the `tsc` probe's (writing it moves the core's TSC).
            if idx == 0x10 {
                return;
            }
            if v == N {
                let w = wrmsr_p(idx, val);
                wb.add(w);
                if w != N {
                    wb_refused.push(idx.into());
                }
            }
            for g in GARBAGE {
                let w = wrmsr_p(idx, g);
                gw.add(w);
                if w == N {
                    garbage_ok.push(idx.into());
                    if v == N {
                        wrmsr_p(idx, val);
                    }
                }
            }
        });
        // EFER as the guest sees it: SVME (bit 12) must read 0 where CPUID hides SVM.
        let (_, efer) = rdmsr_p(0xc000_0080);
        if efer & (1 << 12) != 0 {
            odd.note(format_args!("EFER.SVME reads 1 ({efer:#x})"));
        }
        let _ = write!(j, "\"efer\":\"{efer:#x}\",");
        if unexpected_readable.total() > 0 {
            odd.note(format_args!(
                "{} MSRs readable beyond atoll's list",
                unexpected_readable.total()
            ));
        }
        let _ = write!(j, "\"indices\":{n},\"read\":{rd},\"write_back\":{wb},\"write_garbage\":{gw},\"readable\":{readable},\"unexpected_readable\":{unexpected_readable},\"write_back_refused\":{wb_refused},\"garbage_accepted\":{garbage_ok}");
    }

    fn g_apic(_c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        // x2APIC ICR (MSR 0x830): every physical destination 0..=255 and the broadcast one, with
        // fixed, lowest-priority, SMI, NMI, INIT and STARTUP messages, and the three shorthands.
        // A bare-metal enclave has no APIC it may program: every write is #GP.
        let mut h = Hist::new();
        const MODES: [u64; 9] = [
            0x0020, 0x0120, 0x0200, 0x0400, 0x0500, 0x0610, 0x4_0020, 0x8_0400, 0xc_0500,
        ];
        for dest in (0..=255u64).chain([0xffff_ffff]) {
            for m in MODES {
                h.add(wrmsr_p(0x830, (dest << 32) | m));
            }
        }
        let (base_v, base) = rdmsr_p(0x1b);
        let x2 = wrmsr_p(0x1b, 0xfee0_0000 | (1 << 11) | (1 << 10) | (1 << 8));
        let moved = wrmsr_p(0x1b, 0x0020_0000 | (1 << 11) | (1 << 8));
        let off = wrmsr_p(0x1b, 0xfee0_0000 | (1 << 8));
        let (id_v, _) = rdmsr_p(0x802);
        let (eoi_v, _) = rdmsr_p(0x80b);
        let eoi_w = wrmsr_p(0x80b, 0);
        if h.count(GP) != h.total() {
            odd.note(format_args!("x2APIC ICR writes not all #GP: {h}"));
        }
        odd.expect("APIC_BASE x2APIC enable", x2, GP);
        odd.expect("APIC_BASE move", moved, GP);
        odd.expect("x2APIC ID read", id_v, GP);
        let _ = write!(j, "\"icr_writes\":{h},\"apic_base_read\":\"{}\",\"apic_base\":\"{base:#x}\",\"x2apic_enable\":\"{}\",\"base_move\":\"{}\",\"apic_disable\":\"{}\",\"x2apic_id_read\":\"{}\",\"eoi_read\":\"{}\",\"eoi_write\":\"{}\"",
            vec_name(base_v), vec_name(x2), vec_name(moved), vec_name(off), vec_name(id_v), vec_name(eoi_v), vec_name(eoi_w));
    }

    /// Ports atoll emulates for a bare-metal enclave: COM1 and the ACPI PM registers.
    fn port_emulated(p: u16) -> bool {
        (0x3f8..0x400).contains(&p) || matches!(p, 0x600 | 0x601 | 0x604)
    }

    fn g_ports(c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        let mut hist = [
            Hist::new(),
            Hist::new(),
            Hist::new(),
            Hist::new(),
            Hist::new(),
            Hist::new(),
        ];
        let mut readable = List::<24>::new();
        let mut n = 0u64;
        let t0 = tsc();
        let mut port: u32 = 0;
        while port <= 0xffff {
            let p = port as u16;
            n += 1;
            for (i, size) in [1u8, 2, 4].into_iter().enumerate() {
                let (v, _) = in_p(p, size);
                hist[i].add(v);
                if v == N && size == 1 {
                    readable.push(p.into());
                }
                if v == N && !port_emulated(p) {
                    odd.note(format_args!("IN{size} {p:#x} did not fault"));
                }
                // COM1 is the guest's own output: not scribbled on.
                if (0x3f8..0x400).contains(&p) {
                    continue;
                }
                let mut b = (p as u8) ^ 0x5a;
                // Never the values that power off (SLP_EN with S5) or reset the enclave.
                if (p == 0x600 && b & 0x3c == 0x34) || (p == 0x604 && b == 1) {
                    b ^= 0x20;
                }
                let val = u32::from_ne_bytes([b; 4]);
                let w = out_p(p, size, val);
                hist[3 + i].add(w);
                if w == N && !port_emulated(p) {
                    odd.note(format_args!("OUT{size} {p:#x} did not fault"));
                }
            }
            port += match c.opts.ports {
                2 => 1,
                // Sampled: the legacy range whole, then every 61st port.
                _ if port < 0x1000 => 1,
                _ => 61,
            };
        }
        let cycles = tsc() - t0;
        let _ = write!(j, "\"mode\":\"{}\",\"ports\":{n},\"in8\":{},\"in16\":{},\"in32\":{},\"out8\":{},\"out16\":{},\"out32\":{},\"readable8\":{readable},\"tsc_cycles\":{cycles}",
            if c.opts.ports == 2 { "full" } else { "sample" }, hist[0], hist[1], hist[2], hist[3], hist[4], hist[5]);
    }

    fn g_cr(_c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        let cr0 = read_cr(0);
        let cr4 = read_cr(4);
        let _ = write!(j, "\"cr0\":\"{cr0:#x}\",\"cr4\":\"{cr4:#x}\"");
        // CR0: bits 63:32 reserved (#GP); NW without CD (#GP); a reserved low bit (ignored).
        for (name, val, want) in [
            ("cr0_bit32", cr0 | (1 << 32), GP),
            ("cr0_bit63", cr0 | (1 << 63), GP),
            ("cr0_bit10", cr0 | (1 << 10), N),
        ] {
            // Each write is announced first: if it ends the enclave, the log says which.
            let _ = writeln!(Com1, "adversary: cr: CR0 <- {val:#x}");
            let v = write_cr_p(0, val);
            let back = read_cr(0);
            if back != cr0 {
                write_cr_p(0, cr0);
            }
            if want != N {
                odd.expect(name, v, want);
            }
            let _ = write!(
                j,
                ",\"{name}\":\"{}\",\"{name}_readback\":\"{back:#x}\"",
                vec_name(v)
            );
        }
        // CR4: VMXE and SMXE (VMX and SMX are hidden), reserved bits, and the bits atoll
        // refuses (CET, PKS).
        let mut changed = List::<8>::new();
        for bit in [
            13u32, 14, 15, 19, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 40, 63,
        ] {
            let _ = writeln!(Com1, "adversary: cr: CR4 <- {:#x}", cr4 | (1u64 << bit));
            let v = write_cr_p(4, cr4 | (1u64 << bit));
            let back = read_cr(4);
            if back != cr4 {
                changed.push(bit.into());
                write_cr_p(4, cr4);
            }
            if bit != 23 && bit != 24 {
                odd.expect(
                    if bit == 13 {
                        "cr4.VMXE"
                    } else if bit == 14 {
                        "cr4.SMXE"
                    } else {
                        "cr4 reserved bit"
                    },
                    v,
                    GP,
                );
            }
            let _ = write!(j, ",\"cr4_bit{bit}\":\"{}\"", vec_name(v));
        }
        let _ = write!(j, ",\"cr4_changed_bits\":{changed}");
    }

    fn g_cr8(_c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        // Every TPR value, read back; a reserved bit (#GP); and TPR 15 held across 2000 exits,
        // which, if CR8 reached the real TPR, masks every host interrupt on this core meanwhile.
        let before = read_cr(8);
        let _ = write!(j, "\"before\":{before},\"readback\":[");
        for v in 0..16u64 {
            let f = write_cr_p(8, v);
            let back = read_cr(8);
            if back != v || f != N {
                odd.note(format_args!("CR8 {v}: {} read back {back}", vec_name(f)));
            }
            let _ = write!(j, "{}{back}", if v > 0 { "," } else { "" });
        }
        let rsv = write_cr_p(8, 16);
        odd.expect("cr8 = 16", rsv, GP);
        write_cr_p(8, 15);
        let t0 = tsc();
        for _ in 0..2000 {
            hcall(hypercall::VERSION, 0, 0);
        }
        let held = tsc() - t0;
        let still = read_cr(8);
        write_cr_p(8, 0);
        let _ = write!(j, "],\"reserved_bit\":\"{}\",\"held_15_cycles\":{held},\"after_hold\":{still},\"restored\":{}", vec_name(rsv), read_cr(8));
    }

    fn g_xcr0(_c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        if cpuid(1, 0)[2] & (1 << 26) == 0 {
            let _ = write!(j, "\"xsave\":false");
            return;
        }
        let cr4 = read_cr(4);
        let osx = write_cr_p(4, cr4 | (1 << 18));
        let (gv, orig) = xgetbv(0);
        let d = cpuid(0xd, 0);
        let supported = u64::from(d[0]) | (u64::from(d[3]) << 32);
        let _ = write!(j, "\"osxsave\":\"{}\",\"xgetbv\":\"{}\",\"xcr0\":\"{orig:#x}\",\"supported\":\"{supported:#x}\"", vec_name(osx), vec_name(gv));
        let avx = if supported & 4 != 0 { 4 } else { 0 };
        // (name, value, must fault): x87 clear, AVX without SSE, partial AVX-512 masks, one
        // MPX bit, one AMX bit (17 without 18 and 18 without 17), a reserved bit, XCR1.
        let cases: [(&str, u32, u64, bool); 16] = [
            ("zero", 0, 0, true),
            ("sse_no_x87", 0, 2, true),
            ("avx_no_sse", 0, 1 | 4, true),
            ("x87", 0, 1, false),
            ("x87_sse", 0, 3, false),
            ("opmask_only", 0, 3 | avx | (1 << 5), true),
            ("zmm_hi256_only", 0, 3 | avx | (1 << 6), true),
            ("hi16_zmm_only", 0, 3 | avx | (1 << 7), true),
            ("avx512_no_opmask", 0, 3 | avx | (3 << 6), true),
            ("avx512_no_avx", 0, 3 | (7 << 5), true),
            ("bndregs_only", 0, 3 | (1 << 3), true),
            ("amx_tilecfg_only", 0, 3 | avx | (1 << 17), true),
            ("amx_tiledata_only", 0, 3 | avx | (1 << 18), true),
            ("bit63", 0, 3 | (1 << 63), true),
            ("xcr1", 1, 3, true),
            ("all_supported", 0, supported, false),
        ];
        for (name, idx, val, must_fault) in cases {
            let v = xsetbv_p(idx, val);
            let (_, back) = xgetbv(0);
            if must_fault {
                odd.expect(name, v, GP);
            } else if v != N && name != "all_supported" {
                odd.note(format_args!(
                    "xsetbv {name} ({val:#x}) faulted {}",
                    vec_name(v)
                ));
            }
            let _ = write!(j, ",\"{name}\":\"{}\"", vec_name(v));
            if v == N && idx == 0 && back != val {
                odd.note(format_args!(
                    "xsetbv {name}: wrote {val:#x}, read {back:#x}"
                ));
            }
            xsetbv_p(0, orig);
        }
        let (_, end) = xgetbv(0);
        let _ = write!(j, ",\"restored\":\"{end:#x}\"");
    }

    fn steps(intel: bool, with_exits: bool) -> u64 {
        // Eleven instructions run with TF set (counting the POPFQ that clears it); with
        // `with_exits`, three of them exit to atoll (CPUID, the hypercall, IN from COM1), which
        // must still single-step: atoll emulates them, so it must deliver the #DB too (SDM Vol.
        // 3A §18.3.1.4).
        let start = ADV_VEC_COUNTS[1].load(SeqCst);
        ADV_STEP_LEFT.store(1000, SeqCst);
        match (with_exits, intel) {
            // SAFETY: TF traps go to the #DB handler, which counts and returns; TF is cleared
            // again before the block ends.
            (false, _) => unsafe {
                asm!(
                    "pushfq", "or qword ptr [rsp], 0x100", "popfq",
                    "nop", "nop", "nop", "nop", "nop", "nop", "nop", "nop",
                    "pushfq", "and qword ptr [rsp], -0x101", "popfq",
                    out("rax") _, out("rcx") _, out("rdx") _,
                )
            },
            // SAFETY: as above; the exiting instructions only read registers (RBX is saved
            // around CPUID and the hypercall).
            (true, true) => unsafe {
                asm!(
                    "mov r8, rbx",
                    "pushfq", "or qword ptr [rsp], 0x100", "popfq",
                    "nop", "xor eax, eax", "cpuid", "mov edx, 0x3fd", "xor eax, eax", "vmcall", "in al, dx", "nop",
                    "pushfq", "and qword ptr [rsp], -0x101", "popfq",
                    "mov rbx, r8",
                    out("rax") _, out("rcx") _, out("rdx") _, out("r8") _,
                )
            },
            // SAFETY: as above, with AMD's VMMCALL.
            (true, false) => unsafe {
                asm!(
                    "mov r8, rbx",
                    "pushfq", "or qword ptr [rsp], 0x100", "popfq",
                    "nop", "xor eax, eax", "cpuid", "mov edx, 0x3fd", "xor eax, eax", "vmmcall", "in al, dx", "nop",
                    "pushfq", "and qword ptr [rsp], -0x101", "popfq",
                    "mov rbx, r8",
                    out("rax") _, out("rcx") _, out("rdx") _, out("r8") _,
                )
            },
        }
        ADV_STEP_LEFT.store(0, SeqCst);
        ADV_VEC_COUNTS[1].load(SeqCst) - start
    }

    #[no_mangle]
    static ADV_WATCH: AtomicU64 = AtomicU64::new(0);

    fn g_debug(c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        // Plain exceptions, each with its vector.
        let cases: [(&str, u8); 12] = [
            ("ud2", risky!(["ud2"])),
            ("int3", risky!(["int3"])),
            (
                "div0",
                risky!(["xor ecx, ecx", "xor edx, edx", "mov eax, 1", "div ecx"], out("eax") _, out("ecx") _, out("edx") _),
            ),
            ("int_0x80_beyond_idt", risky!(["int 0x80"])),
            ("into_64bit", risky!([".byte 0xce"])),
            ("lock_nop", risky!([".byte 0xf0, 0x90"])),
            ("mov_cr1", risky!([".byte 0x0f, 0x20, 0xc8"], out("rax") _)),
            (
                "read_4g",
                risky!(["mov rax, qword ptr [{a}]"], a = in(reg) 0x1_0000_0000u64, out("rax") _),
            ),
            (
                "read_noncanonical",
                risky!(["mov rax, qword ptr [{a}]"], a = in(reg) 0x0000_8000_0000_0000u64, out("rax") _),
            ),
            (
                "read_top",
                risky!(["mov rax, qword ptr [{a}]"], a = in(reg) 0xffff_ffff_ffff_f000u64, out("rax") _),
            ),
            ("icebp", risky!([".byte 0xf1"])),
            ("ud0", risky!([".byte 0x0f, 0xff, 0xc0"])),
        ];
        let want = [UD, BP, 0, GP, UD, UD, UD, PF, GP, PF, DB, UD];
        for ((name, v), w) in cases.iter().zip(want) {
            odd.expect(name, *v, w);
            let _ = write!(j, "\"{name}\":\"{}\",", vec_name(*v));
        }
        // Single-stepping: the same count with and without exiting instructions.
        let plain = steps(c.intel, false);
        let exiting = steps(c.intel, true);
        if plain != exiting || plain != 11 {
            odd.note(format_args!("single-step traps: {plain} over plain instructions, {exiting} with CPUID, hypercall and IN (want 11 and 11)"));
        }
        // A data breakpoint (DR0, write, 8 bytes) and an instruction breakpoint.
        let db0 = ADV_VEC_COUNTS[1].load(SeqCst);
        let dr = risky!([
            "lea rax, [rip + ADV_WATCH]",
            "mov dr0, rax",
            "mov rax, 0xd0001",
            "mov dr7, rax",
            "mov qword ptr [rip + ADV_WATCH], 7",
            "nop",
            "xor eax, eax",
            "mov dr7, rax",
        ], out("rax") _);
        let data_bp = ADV_VEC_COUNTS[1].load(SeqCst) - db0;
        let dr6: u64;
        // SAFETY: reads DR6.
        unsafe { asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack)) };
        let db1 = ADV_VEC_COUNTS[1].load(SeqCst);
        let ibp = risky!([
            "lea rax, [rip + 3f]",
            "mov dr1, rax",
            "mov rax, 0x4",
            "mov dr7, rax",
            "nop",
            "3: nop",
            "xor eax, eax",
            "mov dr7, rax",
        ], out("rax") _);
        let insn_bp = ADV_VEC_COUNTS[1].load(SeqCst) - db1;
        let dr7_hi = risky!(["mov rax, 0x100000000", "mov dr7, rax"], out("rax") _);
        let dr6_hi = risky!(["mov rax, 0x100000000", "mov dr6, rax"], out("rax") _);
        // DR4 aliases DR6 while CR4.DE is clear, and is #UD while it is set.
        let cr4 = read_cr(4);
        let dr4_alias = risky!(["mov rax, dr4"], out("rax") _);
        write_cr_p(4, cr4 | (1 << 3));
        let dr4_de = risky!(["mov rax, dr4"], out("rax") _);
        write_cr_p(4, cr4);
        if data_bp != 1 || insn_bp != 1 {
            odd.note(format_args!(
                "breakpoints: data {data_bp} instruction {insn_bp} #DB (want 1 and 1)"
            ));
        }
        odd.expect("dr7 bit 32", dr7_hi, GP);
        odd.expect("dr6 bit 32", dr6_hi, GP);
        odd.expect("dr4 with CR4.DE", dr4_de, UD);
        let _ = write!(j, "\"step_plain\":{plain},\"step_exiting\":{exiting},\"data_bp_db\":{data_bp},\"data_bp\":\"{}\",\"dr6\":\"{dr6:#x}\",\"insn_bp_db\":{insn_bp},\"insn_bp\":\"{}\",\"dr7_bit32\":\"{}\",\"dr6_bit32\":\"{}\",\"dr4_alias\":\"{}\",\"dr4_de\":\"{}\"",
            vec_name(dr), vec_name(ibp), vec_name(dr7_hi), vec_name(dr6_hi), vec_name(dr4_alias), vec_name(dr4_de));
    }

    // Ring 3: a GDT with user segments and a TSS (whose RSP0 takes faults back to ring 0), and
    // user-accessible identity pages.
    static mut GDT: [u64; 7] = [0; 7];
    #[repr(C, packed)]
    struct Tss {
        _r0: u32,
        rsp: [u64; 3],
        _r1: u64,
        ist: [u64; 7],
        _r2: u64,
        _r3: u16,
        iomap: u16,
    }
    static mut TSS: Tss = Tss {
        _r0: 0,
        rsp: [0; 3],
        _r1: 0,
        ist: [0; 7],
        _r2: 0,
        _r3: 0,
        iomap: 104,
    };
    #[repr(C, align(16))]
    struct Stack([u8; 16384]);
    static mut KSTACK: Stack = Stack([0; 16384]);
    static mut USTACK: Stack = Stack([0; 16384]);

    fn setup_ring3() {
        let tss = &raw mut TSS;
        let kstack_top = (&raw const KSTACK) as u64 + 16384;
        // SAFETY: single-threaded guest and no reference to TSS is live; the CPU reads it only
        // after the LTR below.
        unsafe { (*tss).rsp[0] = kstack_top };
        let b = tss as u64;
        let limit = 103u64;
        let gdt = &raw mut GDT;
        // SAFETY: as above, for GDT: it is loaded only by the LGDT below.
        unsafe {
            *gdt = [
                0,
                0x00af_9b00_0000_ffff,
                0x00cf_9300_0000_ffff,
                0x00cf_f300_0000_ffff,
                0x00af_fb00_0000_ffff,
                (limit & 0xffff)
                    | ((b & 0xff_ffff) << 16)
                    | (0x89 << 40)
                    | (((b >> 24) & 0xff) << 56),
                b >> 32,
            ]
        };
        let p = DtPtr {
            limit: (7 * 8 - 1) as u16,
            base: gdt as u64,
        };
        // SAFETY: the new GDT keeps selector 0x08 (code) and 0x10 (data) as atoll set them up,
        // so the loaded CS/DS/SS stay valid; it adds user data (0x18) and code (0x20) and the
        // TSS (0x28) that LTR loads; GDT and TSS are statics, so they outlive the load.
        unsafe {
            asm!("lgdt [{}]", "mov ax, 0x28", "ltr ax", in(reg) &p, out("eax") _, options(nostack))
        };
        // The page-table walk only sets U on the identity tables atoll wrote at CR3 (4 GiB in
        // 2 MiB pages: one PML4 entry, four PDPT entries, 4 x 512 PD entries), which are
        // identity-mapped guest RAM nothing else references.
        let pml4 = (read_cr(3) & 0x000f_ffff_ffff_f000) as *mut u64;
        // SAFETY: see above: PML4[0] of the live identity tables.
        unsafe { *pml4 |= 4 };
        // SAFETY: as above.
        let pdpt = (unsafe { *pml4 } & 0x000f_ffff_ffff_f000) as *mut u64;
        for i in 0..4 {
            // SAFETY: the PDPT is one 4 KiB table (512 entries); `i` < 4.
            let pdpte = unsafe { pdpt.add(i) };
            // SAFETY: see above: PDPT[i] of the live identity tables.
            unsafe { *pdpte |= 4 };
            // SAFETY: as above.
            let pd = (unsafe { *pdpte } & 0x000f_ffff_ffff_f000) as *mut u64;
            for k in 0..512 {
                // SAFETY: the PD is one 4 KiB table; `k` < 512.
                let pde = unsafe { pd.add(k) };
                // SAFETY: see above: PD[k] of the live identity tables.
                unsafe { *pde |= 4 };
            }
        }
        // SAFETY: reloading CR3 with its own value only flushes the TLB, so the U bits just set
        // take effect.
        unsafe { asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack)) };
    }

    /// Runs `code` at CPL 3 with RFLAGS.AC set; it ends with INT3 unless it faults first. The
    /// vector that brought it back (3: none).
    fn ring3(code: unsafe extern "C" fn()) -> u8 {
        ADV_LAST_VEC.store(NONE, SeqCst);
        let ustack = (&raw const USTACK) as u64 + 16384;
        // SAFETY: the handler returns every exception from ring 3 to label 2 at ring 0 with the
        // stack pointer saved here; RBX is saved on that stack; the snippets change only RAX,
        // RCX, RDX (and RBX in CPUID).
        unsafe {
            asm!(
                "push rbx",
                "lea r11, [rip + 2f]",
                "mov qword ptr [rip + ADV_RESUME], r11",
                "mov qword ptr [rip + ADV_KRSP], rsp",
                "push 0x1b",
                "push {us}",
                "push {fl}",
                "push 0x23",
                "push {code}",
                "iretq",
                "2:",
                "pop rbx",
                "mov qword ptr [rip + ADV_RESUME], 0",
                us = in(reg) ustack,
                fl = in(reg) 0x2u64 | (1 << 18),
                code = in(reg) code as *const () as u64,
                out("r11") _, out("rax") _, out("rcx") _, out("rdx") _,
            );
        }
        ADV_LAST_VEC.load(SeqCst) as u8
    }

    fn g_ring3(c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        setup_ring3();
        let cr0 = read_cr(0);
        // CR0.AM: alignment checks for CPL 3 with RFLAGS.AC.
        let am = write_cr_p(0, cr0 | (1 << 18));
        let hcall_snippet: unsafe extern "C" fn() = if c.intel {
            adv_r3_vmcall
        } else {
            adv_r3_vmmcall
        };
        let cases: [(&str, unsafe extern "C" fn(), u8); 9] = [
            ("nothing", adv_r3_nothing, BP),
            ("misaligned_with_ac", adv_r3_misaligned, 17),
            ("split_lock_with_ac", adv_r3_split_lock, 17),
            ("hypercall", hcall_snippet, UD),
            ("rdmsr", adv_r3_rdmsr, GP),
            ("in_com1", adv_r3_in, GP),
            ("cli", adv_r3_cli, GP),
            ("hlt", adv_r3_hlt, GP),
            ("mov_from_cr0", adv_r3_mov_cr0, GP),
        ];
        let _ = write!(j, "\"cr0_am\":\"{}\"", vec_name(am));
        for (name, code, want) in cases {
            let v = ring3(code);
            odd.expect(name, v, want);
            let _ = write!(j, ",\"{name}\":\"{}\"", vec_name(v));
        }
        let v = ring3(adv_r3_cpuid);
        odd.expect("cpuid", v, BP);
        let _ = write!(j, ",\"cpuid\":\"{}\"", vec_name(v));
        write_cr_p(0, cr0);
    }

    fn g_misc(_c: &Ctx, j: &mut Buf<4096>, _odd: &mut Odd) {
        let (mut lo, mut hi) = (0u32, 0u32);
        let rdpmc = risky!(["rdpmc"], in("ecx") 0u32, inout("eax") lo, inout("edx") hi);
        let pmc = (u64::from(hi) << 32) | u64::from(lo);
        let rdpmc_fixed = risky!(["rdpmc"], in("ecx") 0x4000_0000u32, out("eax") _, out("edx") _);
        let rdtscp = risky!(["rdtscp"], out("eax") _, out("edx") _, out("ecx") _);
        let rdpid = risky!(["rdpid rax"], out("rax") _);
        let mut dt = [0u8; 16];
        let sgdt = risky!(["sgdt [{p}]", "sidt [{p} + 8]"], p = in(reg) dt.as_mut_ptr());
        let sldt = risky!(["sldt ax", "str ax"], out("eax") _);
        let invlpg = risky!(["invlpg byte ptr [{a}]"], a = in(reg) 0x20_0000u64);
        let invpcid =
            risky!(["invpcid rax, xmmword ptr [{d}]"], d = in(reg) dt.as_ptr(), in("rax") 2u64);
        let monitor = risky!(["monitor"], in("rax") dt.as_ptr(), in("ecx") 0u32, in("edx") 0u32);
        let sti_hlt = risky!(["sti", "hlt", "cli"]);
        let pause = risky!(["pause"]);
        let swapgs = risky!(["swapgs", "swapgs"]);
        let xsaves = risky!(["xsaves [{p}]"], p = in(reg) (&raw mut ADV_UBUF) as u64 & !63, in("eax") 0u32, in("edx") 0u32);
        let xgetbv1 = xgetbv(1).0;
        let rdrand = risky!(["rdrand rax"], out("rax") _);
        let clflush = risky!(["clflush byte ptr [{a}]"], a = in(reg) dt.as_ptr());
        let encls = risky!([".byte 0x0f, 0x01, 0xcf"], inout("eax") 0u32 => _);
        let enclu = risky!([".byte 0x0f, 0x01, 0xd7"], inout("eax") 0u32 => _);
        let pconfig = risky!([".byte 0x0f, 0x01, 0xc5"], inout("eax") 0u32 => _);
        let _ = write!(j, "\"rdpmc0\":\"{}\",\"pmc0\":{pmc},\"rdpmc_fixed\":\"{}\",\"rdtscp\":\"{}\",\"rdpid\":\"{}\",\"sgdt_sidt\":\"{}\",\"sldt_str\":\"{}\",\"invlpg\":\"{}\",\"invpcid\":\"{}\",\"monitor\":\"{}\",\"sti_hlt\":\"{}\",\"pause\":\"{}\",\"swapgs\":\"{}\",\"xsaves\":\"{}\",\"xgetbv1\":\"{}\",\"rdrand\":\"{}\",\"clflush\":\"{}\",\"encls\":\"{}\",\"enclu\":\"{}\",\"pconfig\":\"{}\"",
            vec_name(rdpmc), vec_name(rdpmc_fixed), vec_name(rdtscp), vec_name(rdpid), vec_name(sgdt), vec_name(sldt), vec_name(invlpg), vec_name(invpcid), vec_name(monitor), vec_name(sti_hlt), vec_name(pause), vec_name(swapgs), vec_name(xsaves), vec_name(xgetbv1), vec_name(rdrand), vec_name(clflush), vec_name(encls), vec_name(enclu), vec_name(pconfig));
    }

    fn g_wbinvd(_c: &Ctx, j: &mut Buf<4096>, _odd: &mut Odd) {
        let t0 = tsc();
        let v = risky!(["wbinvd"]);
        let _ = write!(
            j,
            "\"wbinvd\":\"{}\",\"cycles\":{}",
            vec_name(v),
            tsc() - t0
        );
    }

    fn g_hcall(c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        let ram = c.ram;
        let mut unknown_ok = 0;
        for nr in [
            4u64,
            5,
            0x10,
            0xff,
            0xdead,
            1 << 32,
            1 << 63,
            u64::MAX,
            0x4000_0000,
        ] {
            let st = hcall(nr, ram, u64::MAX).0;
            if st == status::UNKNOWN {
                unknown_ok += 1;
            } else {
                odd.note(format_args!("hypercall {nr:#x}: status {st}"));
            }
        }
        let _ = write!(j, "\"unknown_numbers_refused\":{unknown_ok}");
        // (name, gpa, len, console status, report status): buffers at and past the end of RAM,
        // wrapping, non-canonical and APIC addresses, and lengths up to u64::MAX.
        let cases: [(&str, u64, u64, u64, u64); 16] = [
            ("last_byte", ram - 1, 1, status::OK, status::INVALID),
            ("past_end", ram, 1, status::FAULT, status::FAULT),
            ("straddling_end", ram - 1, 2, status::FAULT, status::FAULT),
            (
                "straddling_end_4k",
                ram - 2048,
                4096,
                status::FAULT,
                status::FAULT,
            ),
            ("empty_at_end", ram, 0, status::OK, status::INVALID),
            ("wrap", u64::MAX, 2, status::FAULT, status::FAULT),
            (
                "wrap_4k",
                u64::MAX - 0xfff + 1,
                0x1000,
                status::FAULT,
                status::FAULT,
            ),
            ("four_gib", 1 << 32, 16, status::FAULT, status::FAULT),
            ("apic_page", 0xfee0_0000, 16, status::FAULT, status::FAULT),
            ("bit63", 1 << 63, 16, status::FAULT, status::FAULT),
            ("max_len_ok", 0x10_0000, 4096, status::OK, status::INVALID),
            (
                "len_4097",
                0x10_0000,
                4097,
                status::INVALID,
                status::INVALID,
            ),
            (
                "len_4g",
                0x10_0000,
                1 << 32,
                status::INVALID,
                status::INVALID,
            ),
            (
                "len_max",
                0x10_0000,
                u64::MAX,
                status::INVALID,
                status::INVALID,
            ),
            (
                "len_max_at_end",
                ram - 1,
                u64::MAX,
                status::INVALID,
                status::INVALID,
            ),
            ("zero_page", 0, 4096, status::OK, status::INVALID),
        ];
        for (name, gpa, len, want_c, want_r) in cases {
            // The console writes of real RAM print its bytes (the guest's own code at 1 MiB):
            // only the ones that must fail are sent to the console.
            let cs = if want_c == status::OK && len > 1 {
                want_c
            } else {
                hcall(hypercall::CONSOLE_WRITE, gpa, len).0
            };
            let rs = hcall(hypercall::REPORT, gpa, len).0;
            if cs != want_c || rs != want_r {
                odd.note(format_args!(
                    "{name}: console {cs} report {rs} (want {want_c} {want_r})"
                ));
            }
            let _ = write!(j, ",\"{name}\":[{cs},{rs}]");
        }
        // VERSION must ignore its arguments; EXIT is not probed (it ends the enclave).
        let (st, ver, max) = hcall(hypercall::VERSION, u64::MAX, u64::MAX);
        let _ = write!(j, ",\"version\":[{st},{ver},{max}]");
    }

    /// REPORTs `text`, returns the status.
    fn report_str(text: &[u8]) -> u64 {
        report(text)
    }

    static mut BIG: Buf<4096> = Buf::new();

    fn big() -> &'static mut Buf<4096> {
        let p = &raw mut BIG;
        // SAFETY: single-threaded guest; one user at a time (each caller is done with it before
        // the next call), so this is the only live reference to BIG.
        let b = unsafe { &mut *p };
        b.clear();
        b
    }

    fn g_json(_c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        // 4096 '[' and 4096 '{' (beyond serde_json's depth limit: INVALID), a deep but allowed
        // nesting (100 objects), not UTF-8, a lone surrogate, a huge number, duplicate keys, an
        // empty key, NUL escapes, trailing garbage, an array, a bare string.
        let b = big();
        for _ in 0..4096 {
            b.push(b'[');
        }
        let brackets = report_str(b.as_slice());
        let b = big();
        for _ in 0..4096 {
            b.push(b'{');
        }
        let braces = report_str(b.as_slice());
        let b = big();
        let _ = b.write_str("{\"deep100\":");
        for _ in 0..99 {
            let _ = b.write_str("{\"a\":");
        }
        let _ = b.write_str("1");
        for _ in 0..100 {
            b.push(b'}');
        }
        let deep100 = report_str(b.as_slice());
        // Exactly as deep as the ABI allows (atoll_abi::MAX_REPORT_DEPTH), and one deeper.
        let nested = |depth: usize| {
            let b = big();
            let _ = b.write_str("{\"deep_edge\":");
            for _ in 1..depth {
                let _ = b.write_str("{\"a\":");
            }
            let _ = b.write_str("1");
            for _ in 0..depth {
                b.push(b'}');
            }
            report_str(b.as_slice())
        };
        let deep_max = nested(atoll_abi::MAX_REPORT_DEPTH);
        let deep_over = nested(atoll_abi::MAX_REPORT_DEPTH + 1);
        let cases: [(&str, &[u8], u64); 10] = [
            ("not_utf8", b"{\"x\":\"\xff\xfe\"}", status::INVALID),
            ("lone_surrogate", b"{\"x\":\"\\ud800\"}", status::INVALID),
            ("huge_number", b"{\"x\":1e99999}", status::INVALID),
            (
                "duplicate_keys",
                b"{\"json_dup\":1,\"json_dup\":2}",
                status::OK,
            ),
            ("empty_key", b"{\"\":0}", status::OK),
            ("nul_escape", b"{\"json_nul\":\"a\\u0000b\"}", status::OK),
            ("trailing", b"{\"x\":1} trailing", status::INVALID),
            ("array", b"[1,2,3]", status::INVALID),
            ("string", b"\"s\"", status::INVALID),
            ("empty", b"", status::INVALID),
        ];
        let _ = write!(
            j,
            "\"brackets_4096\":{brackets},\"braces_4096\":{braces},\"deep100\":{deep100},\"deep_max\":{deep_max},\"deep_over\":{deep_over}"
        );
        // The ABI bounds nesting (MAX_REPORT_DEPTH): deeper reports are INVALID, never a crash.
        if brackets != status::INVALID
            || braces != status::INVALID
            || deep100 != status::INVALID
            || deep_max != status::OK
            || deep_over != status::INVALID
        {
            odd.note(format_args!(
                "nesting: [ {brackets} {{ {braces} deep100 {deep100} max {deep_max} over {deep_over}"
            ));
        }
        for (name, text, want) in cases {
            let st = report_str(text);
            if st != want {
                odd.note(format_args!("{name}: status {st} not {want}"));
            }
            let _ = write!(j, ",\"{name}\":{st}");
        }
    }

    fn g_flood(c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        // `flood` REPORTs of a new ~4 KiB key each, the same key overwritten as often, `flood`
        // CONSOLE_WRITEs of 4 KiB (40 lines each), and 100000 VERSION calls back to back. atoll
        // keeps REPORT results in a fixed budget per enclave: past it a REPORT is INVALID (and
        // counted in the summary's report_bytes_dropped); console lines past the console budget
        // are dropped and counted, the call itself succeeds.
        let n = c.opts.flood;
        let mut bad = 0u64;
        let mut wrong = 0u64;
        let t0 = tsc();
        for i in 0..n {
            let b = big();
            let _ = write!(b, "{{\"flood_{i}\":\"");
            while b.len < 4094 {
                b.push(b'a' + (b.len % 26) as u8);
            }
            let _ = b.write_str("\"}");
            match report_str(b.as_slice()) {
                status::OK => {}
                status::INVALID => bad += 1,
                other => wrong = wrong.max(other),
            }
        }
        let t1 = tsc();
        for i in 0..n {
            let b = big();
            let _ = write!(b, "{{\"flood_same\":{i},\"pad\":\"");
            while b.len < 4094 {
                b.push(b'z');
            }
            let _ = b.write_str("\"}");
            match report_str(b.as_slice()) {
                status::OK => {}
                status::INVALID => bad += 1,
                other => wrong = wrong.max(other),
            }
        }
        let t2 = tsc();
        let mut cbad = 0;
        for i in 0..n {
            let b = big();
            let mut line = 0;
            while b.len < 4000 {
                let _ = write!(b, "adversary: console flood {i} line {line} ");
                while b.len % 100 != 99 {
                    b.push(b'.');
                }
                b.push(b'\n');
                line += 1;
            }
            if console(b.as_slice()) != status::OK {
                cbad += 1;
            }
        }
        let t3 = tsc();
        for _ in 0..100_000 {
            hcall(hypercall::VERSION, 0, 0);
        }
        let t4 = tsc();
        if wrong != 0 || cbad > 0 || (n > 0 && bad == 2 * n) {
            odd.note(format_args!(
                "flood: REPORT status {wrong} (neither OK nor INVALID), {bad} of {} REPORTs and \
                 {cbad} CONSOLE_WRITEs refused",
                2 * n
            ));
        }
        let _ = write!(j, "\"count\":{n},\"report_refused\":{bad},\"console_refused\":{cbad},\"report_new_keys_cycles\":{},\"report_same_key_cycles\":{},\"console_cycles\":{},\"version_100k_cycles\":{}", t1 - t0, t2 - t1, t3 - t2, t4 - t3);
    }

    fn g_mem_edge(c: &Ctx, j: &mut Buf<4096>, odd: &mut Odd) {
        // The last byte and the last 8 bytes of RAM: read, written, read back, restored.
        let last = c.ram - 1;
        let mut ok = true;
        let p = last as *mut u8;
        // SAFETY: the last byte of guest RAM (identity-mapped), which nothing else uses; every
        // write below is restored right away.
        let old = unsafe { p.read_volatile() };
        // SAFETY: as above.
        unsafe { p.write_volatile(!old) };
        // SAFETY: as above.
        ok &= unsafe { p.read_volatile() } == !old;
        // SAFETY: as above.
        unsafe { p.write_volatile(old) };
        let q = (c.ram - 8) as *mut u64;
        // SAFETY: the last 8 bytes of guest RAM (RAM is whole pages, so they are aligned),
        // which nothing else uses; every write below is restored right away.
        let old = unsafe { q.read_volatile() };
        // SAFETY: as above.
        unsafe { q.write_volatile(!old) };
        // SAFETY: as above.
        ok &= unsafe { q.read_volatile() } == !old;
        // SAFETY: as above.
        unsafe { q.write_volatile(old) };
        if !ok {
            odd.note(format_args!("last bytes of RAM did not read back"));
        }
        let _ = write!(j, "\"last_byte\":\"{last:#x}\",\"read_write_ok\":{ok}");
    }

    fn g_tsc(_c: &Ctx, j: &mut Buf<4096>, _odd: &mut Odd) {
        // IA32_TSC passes through: writing it moves this core's TSC (the host's too, unless
        // atoll offsets it). Set to 1000, read, then put back where it would have been.
        let t0 = tsc();
        let w = wrmsr_p(0x10, 1000);
        let after = tsc();
        let back = wrmsr_p(0x10, t0 + after);
        let now = tsc();
        let _ = write!(j, "\"write\":\"{}\",\"after_write\":{after},\"before\":{t0},\"restore\":\"{}\",\"now\":{now}", vec_name(w), vec_name(back));
    }

    /// A possibly terminal probe: its vector (or `N`), and what architecture wants.
    fn terminal(name: &str, c: &Ctx) -> (u8, u8) {
        let mut mem = [0u64; 4];
        let p = mem.as_mut_ptr();
        match name {
            // MONITOR on a local, then MWAIT with interrupts off: wakes on the next host event
            // (or never, natively, on an idle core: a hang is the finding).
            "mwait" => (
                risky!(["monitor", "xor eax, eax", "xor ecx, ecx", "mwait"], inout("rax") p as u64 => _, inout("ecx") 0u32 => _, in("edx") 0u32),
                N,
            ),
            "invd" => (risky!(["invd"]), N),
            "getsec" => (risky!(["getsec"], inout("eax") 0u32 => _), UD),
            "string-io" => (
                risky!(["rep insb"], in("rdi") p, in("rcx") 4u64, in("dx") 0x3f8u16, lateout("rdi") _, lateout("rcx") _),
                N,
            ),
            // The other vendor's hypercall instruction: #UD natively.
            "xcall" => (
                if c.intel {
                    risky!(["vmmcall"], inout("rax") 0u64 => _)
                } else {
                    risky!(["vmcall"], inout("rax") 0u64 => _)
                },
                UD,
            ),
            // VMX instructions: #UD (CPUID says no VMX, CR4.VMXE is 0); encoded by hand with
            // RAX as the memory operand or register.
            "vmxon" => (risky!([".byte 0xf3, 0x0f, 0xc7, 0x30"], in("rax") p), UD),
            "vmxoff" => (risky!([".byte 0x0f, 0x01, 0xc4"]), UD),
            "vmclear" => (risky!([".byte 0x66, 0x0f, 0xc7, 0x30"], in("rax") p), UD),
            "vmptrld" => (risky!([".byte 0x0f, 0xc7, 0x30"], in("rax") p), UD),
            "vmptrst" => (risky!([".byte 0x0f, 0xc7, 0x38"], in("rax") p), UD),
            "vmread" => (
                risky!([".byte 0x0f, 0x78, 0xc8"], inout("rax") 0u64 => _, in("rcx") 0x681eu64),
                UD,
            ),
            "vmwrite" => (
                risky!([".byte 0x0f, 0x79, 0xc8"], in("rax") 0u64, in("rcx") 0x681eu64),
                UD,
            ),
            "vmlaunch" => (risky!([".byte 0x0f, 0x01, 0xc2"]), UD),
            "vmresume" => (risky!([".byte 0x0f, 0x01, 0xc3"]), UD),
            "invept" => (
                risky!([".byte 0x66, 0x0f, 0x38, 0x80, 0x01"], in("rax") 2u64, in("rcx") p),
                UD,
            ),
            "invvpid" => (
                risky!([".byte 0x66, 0x0f, 0x38, 0x81, 0x01"], in("rax") 2u64, in("rcx") p),
                UD,
            ),
            "vmfunc" => (
                risky!([".byte 0x0f, 0x01, 0xd4"], in("eax") 0u32, in("ecx") 0u32),
                UD,
            ),
            // SVM instructions: #UD (CPUID says no SVM). RAX is a page-aligned address inside
            // RAM (8 MiB, unused), so an alignment #GP does not hide what atoll does.
            "vmrun" => (
                risky!([".byte 0x0f, 0x01, 0xd8"], in("rax") 0x80_0000u64),
                UD,
            ),
            "vmload" => (
                risky!([".byte 0x0f, 0x01, 0xda"], in("rax") 0x80_0000u64),
                UD,
            ),
            "vmsave" => (
                risky!([".byte 0x0f, 0x01, 0xdb"], in("rax") 0x80_0000u64),
                UD,
            ),
            "stgi" => (risky!([".byte 0x0f, 0x01, 0xdc"]), UD),
            "clgi" => (risky!([".byte 0x0f, 0x01, 0xdd"]), UD),
            "skinit" => (risky!([".byte 0x0f, 0x01, 0xde"], in("eax") 0u32), UD),
            "invlpga" => (
                risky!([".byte 0x0f, 0x01, 0xdf"], in("rax") 0u64, in("ecx") 0u32),
                UD,
            ),
            // CR0.NW without CR0.CD is an invalid combination: #GP (SDM Vol. 3A §2.5).
            "cr0-nw" => {
                let cr0 = read_cr(0);
                let v = write_cr_p(0, (cr0 | (1 << 29)) & !(1 << 30));
                write_cr_p(0, cr0);
                (v, GP)
            }
            // CLTS and LMSW (CR0 writes that are not MOV): TS set by MOV, then cleared by each.
            "clts" | "lmsw" => {
                let cr0 = read_cr(0);
                write_cr_p(0, cr0 | (1 << 3));
                let v = if name == "clts" {
                    risky!(["clts"])
                } else {
                    risky!(["lmsw {v:x}"], v = in(reg) (cr0 as u16) & !0x8)
                };
                let ts = read_cr(0) & (1 << 3);
                write_cr_p(0, cr0);
                let _ = writeln!(Com1, "adversary: {name}: CR0.TS after it: {}", ts >> 3);
                (if v == N && ts != 0 { 0xfe } else { v }, N)
            }
            "cr-mode" => {
                // Leaving long mode or changing its paging mode in place: #GP each.
                let (cr0, cr4) = (read_cr(0), read_cr(4));
                let mut worst = N;
                for (n, v) in [
                    (0u8, cr0 & !(1 << 31)),
                    (0, cr0 & !1),
                    (4, cr4 & !(1 << 5)),
                    (4, cr4 ^ (1 << 12)),
                ] {
                    // Announced first: if the write ends the enclave, the log says which.
                    let _ = writeln!(Com1, "adversary: cr-mode: CR{n} <- {v:#x}");
                    let f = write_cr_p(n, v);
                    if f != GP {
                        worst = f;
                    }
                    let _ = writeln!(Com1, "adversary: cr-mode: CR{n} <- {v:#x}: {}", vec_name(f));
                }
                (if worst == N { GP } else { worst }, GP)
            }
            "cr3" => {
                // CR3 with bits above any MAXPHYADDR, and bit 63 without CR4.PCIDE: #GP each.
                let cr3 = read_cr(3);
                let a = write_cr_p(3, cr3 | (1 << 62));
                let b = write_cr_p(3, cr3 | (1 << 51));
                let _ = writeln!(
                    Com1,
                    "adversary: cr3: bit 62 {}, bit 51 {}",
                    vec_name(a),
                    vec_name(b)
                );
                (if a == GP { b } else { a }, GP)
            }
            "json-deep" => {
                // 127 nested objects: serde_json's limit is 128, so atoll accepts it; in the
                // summary it sits 4 levels deeper.
                let b = big();
                let _ = b.write_str("{\"deep127\":");
                for _ in 0..126 {
                    let _ = b.write_str("{\"a\":");
                }
                let _ = b.write_str("1");
                for _ in 0..127 {
                    b.push(b'}');
                }
                let st = report_str(b.as_slice());
                let _ = writeln!(Com1, "adversary: json-deep: REPORT status {st}");
                (N, N)
            }
            "report-exhaust" => {
                // New 4 KiB keys until atoll refuses or 2000 (8 MiB, twice atoll's heap).
                let mut refused = 0;
                for i in 0..2000u64 {
                    let b = big();
                    let _ = write!(b, "{{\"exhaust_{i}\":\"");
                    while b.len < 4094 {
                        b.push(b'x');
                    }
                    let _ = b.write_str("\"}");
                    if report_str(b.as_slice()) != status::OK {
                        refused += 1;
                    }
                    if i % 100 == 0 {
                        let _ = writeln!(
                            Com1,
                            "adversary: report-exhaust: {i} keys of 4 KiB sent, {refused} refused"
                        );
                    }
                }
                (N, N)
            }
            "tsc-leave" => {
                // IA32_TSC set to 0 and left there: where the write reaches the core's real TSC,
                // atoll's own clock on this core jumps back (see the enclave's `ended_at_us`).
                let w = wrmsr_p(0x10, 0);
                let _ = writeln!(
                    Com1,
                    "adversary: tsc-leave: TSC <- 0: {}, now {}",
                    vec_name(w),
                    tsc()
                );
                (w, N)
            }
            "cr8-leave" => {
                // TPR 15 left in place from here to the end of the enclave.
                write_cr_p(8, 15);
                (N, N)
            }
            "apic-mmio" => {
                // The xAPIC page APIC_BASE advertises: ICR high (destination 0xff), then ICR
                // low (INIT to all but self). No APIC is emulated for a bare-metal enclave:
                // atoll stops it at the first access.
                // SAFETY: deliberately an access outside RAM; atoll stops the enclave here.
                unsafe { ((0xfee0_0310u64) as *mut u32).write_volatile(0xff00_0000) };
                // SAFETY: as above (reached only if atoll let the first one through).
                unsafe { ((0xfee0_0300u64) as *mut u32).write_volatile(0x000c_4500) };
                (N, N)
            }
            "past-ram" => {
                // A write of 8 bytes straddling the end of RAM: the first 4 inside, the rest
                // outside; atoll must stop the enclave at the GPA of RAM's end.
                // SAFETY: deliberately past RAM.
                unsafe { ((c.ram - 4) as *mut u64).write_unaligned(0x1122_3344_5566_7788) };
                (N, N)
            }
            _ => (N, N),
        }
    }

    #[no_mangle]
    extern "C" fn adv_main(ram: u64, cmdline_gpa: u64, cmdline_len: u64) -> ! {
        // SAFETY: atoll wrote `cmdline_len` bytes of command line at `cmdline_gpa`.
        let cmd = unsafe {
            core::slice::from_raw_parts(cmdline_gpa as *const u8, cmdline_len.min(1024) as usize)
        };
        let text = core::str::from_utf8(cmd).unwrap_or("");
        let vendor = cpuid(0, 0);
        let intel = vendor[1] == u32::from_le_bytes(*b"Genu");
        INTEL.store(u64::from(intel), SeqCst);
        load_idt();
        let c = Ctx {
            ram,
            intel,
            opts: Opts::parse(text),
        };
        let _ = writeln!(
            Com1,
            "adversary: hello ({} MiB RAM, {}, command line '{text}')",
            ram >> 20,
            if intel { "Intel" } else { "AMD" }
        );
        // The selection, reported before anything runs.
        let mut sel = Buf::<4096>::new();
        let _ = sel.write_str("{\"adversary_selected\":[");
        let mut first = true;
        for p in PROBES {
            if c.opts.on(p) {
                let _ = write!(sel, "{}\"{p}\"", if first { "" } else { "," });
                first = false;
            }
        }
        let _ = sel.write_str("]}");
        report(sel.as_slice());

        type Group = fn(&Ctx, &mut Buf<4096>, &mut Odd);
        let groups: [(&str, Group); 16] = [
            ("cpuid", g_cpuid),
            ("msr", g_msr),
            ("apic", g_apic),
            ("ports", g_ports),
            ("cr", g_cr),
            ("cr8", g_cr8),
            ("xcr0", g_xcr0),
            ("debug", g_debug),
            ("ring3", g_ring3),
            ("misc", g_misc),
            ("wbinvd", g_wbinvd),
            ("hcall", g_hcall),
            ("json", g_json),
            ("flood", g_flood),
            ("mem-edge", g_mem_edge),
            ("tsc", g_tsc),
        ];
        let mut ran = Buf::<1024>::new();
        for (name, f) in groups {
            if !c.opts.on(name) || (name == "ports" && c.opts.ports == 0) {
                continue;
            }
            let _ = writeln!(Com1, "adversary: probe {name} starts");
            let mut j = Buf::<4096>::new();
            let mut odd = Odd::new();
            let t0 = tsc();
            f(&c, &mut j, &mut odd);
            let _ = write!(j, ",\"tsc\":{}", tsc() - t0);
            emit(name, &j, &odd);
            let _ = write!(ran, "{}\"{name}\"", if ran.len == 0 { "" } else { "," });
        }
        let mut vc = Hist::new();
        for (i, n) in ADV_VEC_COUNTS.iter().enumerate() {
            vc.0[i] = n.load(SeqCst);
        }
        let mut done = Buf::<4096>::new();
        let _ = write!(
            done,
            "{{\"adversary_done\":true,\"groups_ran\":[{}],\"unexpected_total\":{},\"exceptions\":{vc}}}",
            core::str::from_utf8(ran.as_slice()).unwrap_or(""),
            UNEXPECTED.load(SeqCst)
        );
        let st = report(done.as_slice());
        let _ = writeln!(
            Com1,
            "adversary: non-terminal probes done (REPORT {st}): {}",
            core::str::from_utf8(done.as_slice()).unwrap_or("?")
        );

        let first_terminal = PROBES
            .iter()
            .position(|p| *p == FIRST_TERMINAL)
            .unwrap_or(0);
        for name in &PROBES[first_terminal..] {
            if !c.opts.on(name) {
                continue;
            }
            let mut j = Buf::<256>::new();
            let _ = write!(j, "{{\"last_probe\":\"{name}\"}}");
            report(j.as_slice());
            let _ = writeln!(Com1, "adversary: terminal probe {name} starts");
            let (v, want) = terminal(name, &c);
            j.clear();
            let _ = write!(j, "{{\"{}\":\"{}\"}}", key(name), vec_name(v));
            report(j.as_slice());
            let _ = writeln!(
                Com1,
                "adversary: terminal probe {name} survived: {}{}",
                vec_name(v),
                if v == want { "" } else { " (UNEXPECTED)" }
            );
            if v != want {
                UNEXPECTED.fetch_add(1, SeqCst);
            }
        }
        let mut j = Buf::<256>::new();
        let _ = write!(
            j,
            "{{\"last_probe\":\"none\",\"unexpected_total\":{}}}",
            UNEXPECTED.load(SeqCst)
        );
        report(j.as_slice());
        let _ = writeln!(Com1, "adversary: every selected probe ran; exiting");
        exit(0)
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        let _ = writeln!(Com1, "adversary: panic: {info}");
        exit(99)
    }
}
