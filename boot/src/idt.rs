//! The IDT every core loads. Exceptions (vectors 0–31 but NMI) report and stop instead of
//! triple-faulting: each stub pushes a zero error code when the CPU does not, then the vector,
//! and calls `atoll_exception(&ExceptionFrame)`, which the hypervisor provides and which never
//! returns. NMIs (vector 2) and interrupts (32–255) call `atoll_interrupt(vector)` with the
//! caller-saved registers preserved and return to what they interrupted — an NMI held pending
//! while a guest ran (SVM delivers it to the host at STGI) must not stop the machine.
//!
//! Gate layout: SDM Vol. 3A §6.14.1, "64-Bit Mode IDT".

/// What an exception stub hands to the handler: the vector, the error code (0 where the CPU
/// pushes none), and the frame the CPU pushed (SDM Vol. 3A §6.14.2).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExceptionFrame {
    /// Vector number, 0–31.
    pub vector: u64,
    /// Error code, or 0.
    pub error_code: u64,
    /// Faulting or next instruction.
    pub rip: u64,
    /// Code segment.
    pub cs: u64,
    /// Flags.
    pub rflags: u64,
    /// Stack pointer at the exception.
    pub rsp: u64,
    /// Stack segment.
    pub ss: u64,
}

/// Architectural name of an exception vector (SDM Vol. 3A Table 6-1).
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD exception",
        20 => "#VE virtualization exception",
        21 => "#CP control protection",
        _ => "reserved exception",
    }
}

#[cfg(target_os = "none")]
mod imp {
    core::arch::global_asm!(
        r#"
    .section .text.exceptions, "ax"
    .code64
    .altmacro
    .macro EXC_STUB vec
    .balign 16
exc_stub_\vec:
    .if (\vec == 2) || (\vec >= 32)
    pushq $0
    pushq $\vec
    jmp int_common
    .else
    .if (\vec == 8) || (\vec == 10) || (\vec == 11) || (\vec == 12) || (\vec == 13) || (\vec == 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq $0
    .endif
    pushq $\vec
    jmp exc_common
    .endif
    .endm

    .set v, 0
    .rept 256
    EXC_STUB %v
    .set v, v + 1
    .endr

    /* NMIs and interrupts: save the caller-saved registers, call atoll_interrupt(vector),
       restore, return to whatever was interrupted. */
int_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %rbp
    movq 80(%rsp), %rdi
    movq %rsp, %rbp
    andq $-16, %rsp
    call atoll_interrupt
    movq %rbp, %rsp
    popq %rbp
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp
    iretq

exc_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call atoll_exception
1:
    cli
    hlt
    jmp 1b

    .macro EXC_ADDR vec
    .quad exc_stub_\vec
    .endm
    .section .rodata.exceptions, "a"
    .balign 8
    .global exc_stub_table
exc_stub_table:
    .set v, 0
    .rept 256
    EXC_ADDR %v
    .set v, v + 1
    .endr
"#,
        options(att_syntax)
    );

    extern "C" {
        static exc_stub_table: [u64; 256];
    }

    /// An IDT gate descriptor (SDM Vol. 3A Figure 6-8).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Gate {
        offset_low: u16,
        selector: u16,
        ist: u8,
        type_attr: u8,
        offset_mid: u16,
        offset_high: u32,
        reserved: u32,
    }

    /// #DF.
    const DOUBLE_FAULT: usize = 8;
    /// Present, DPL 0, 64-bit interrupt gate.
    const INTERRUPT_GATE: u8 = 0x8E;
    /// The boot GDT's 64-bit code segment.
    const CODE_SELECTOR: u16 = 0x08;

    #[repr(C, align(16))]
    struct Idt([Gate; 256]);

    static IDT: spin_once::Once = spin_once::Once::new();

    mod spin_once {
        //! The IDT is written once by the first core and only read afterwards.
        use core::cell::UnsafeCell;
        use core::sync::atomic::{AtomicU8, Ordering};

        pub struct Once {
            state: AtomicU8,
            idt: UnsafeCell<super::Idt>,
        }
        // SAFETY: `idt` is written only while `state` is 1 by the one core that moved it from 0
        // to 1, and read only after `state` is 2 (Release/Acquire pairing).
        unsafe impl Sync for Once {}

        impl Once {
            pub const fn new() -> Self {
                const EMPTY: super::Gate = super::Gate {
                    offset_low: 0,
                    selector: 0,
                    ist: 0,
                    type_attr: 0,
                    offset_mid: 0,
                    offset_high: 0,
                    reserved: 0,
                };
                Self {
                    state: AtomicU8::new(0),
                    idt: UnsafeCell::new(super::Idt([EMPTY; 256])),
                }
            }

            pub fn get(&self, init: impl FnOnce(&mut super::Idt)) -> *const super::Idt {
                if self
                    .state
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Acquire)
                    .is_ok()
                {
                    // SAFETY: this core won the 0→1 transition, so it is the only writer and no
                    // reader proceeds before state is 2.
                    init(unsafe { &mut *self.idt.get() });
                    self.state.store(2, Ordering::Release);
                }
                while self.state.load(Ordering::Acquire) != 2 {
                    core::hint::spin_loop();
                }
                self.idt.get()
            }
        }
    }

    /// Loads the exception IDT on the calling core.
    pub fn load() {
        let idt = IDT.get(|idt| {
            for (vector, gate) in idt.0.iter_mut().enumerate() {
                // SAFETY: the table is 256 initialized addresses in read-only data.
                let addr = unsafe { exc_stub_table[vector] };
                *gate = Gate {
                    offset_low: addr as u16,
                    selector: CODE_SELECTOR,
                    // A double fault (a stack overflow into the guard page among them) runs on
                    // the core's own IST1 stack (every core's TSS has one: the hypervisor's
                    // `hw::core_tables`); everything else on the current stack.
                    ist: if vector == DOUBLE_FAULT { 1 } else { 0 },
                    type_attr: INTERRUPT_GATE,
                    offset_mid: (addr >> 16) as u16,
                    offset_high: (addr >> 32) as u32,
                    reserved: 0,
                };
            }
        });
        #[repr(C, packed)]
        struct Pointer {
            limit: u16,
            base: u64,
        }
        let ptr = Pointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: idt as u64,
        };
        // SAFETY: `ptr` describes a static, fully initialized IDT whose gates point at the stubs.
        unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack)) };
    }
}

#[cfg(target_os = "none")]
pub use imp::load;
