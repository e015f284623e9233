//! The application-processor trampoline.
//!
//! An AP woken by INIT-SIPI-SIPI starts in real mode at `vector << 12` (SDM Vol. 3A §9.4.4,
//! "MP Initialization Example"). The code below is assembled position-independently, copied by
//! the boot processor to a page below 1 MiB, and patched there with the CR3, the stack area and
//! the Rust entry point. Each AP takes a ticket with `lock xadd`, so any number of APs can run
//! through it at once (or late, after a timeout) without sharing a stack: ticket `n` gets the
//! stack `[stack_base + n * stack_size, stack_base + (n + 1) * stack_size)` and enters
//! `entry(n)` in long mode with the boot page tables.

use crate::addr::HostPhysAddr;

/// Where the trampoline is copied: page 8, so the SIPI vector is 0x08.
pub const TRAMPOLINE_BASE: HostPhysAddr = HostPhysAddr::new(0x8000);

/// The SIPI vector that starts an AP at [`TRAMPOLINE_BASE`].
pub const SIPI_VECTOR: u8 = (TRAMPOLINE_BASE.as_u64() >> 12) as u8;

/// Values patched into the copied trampoline.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrampolineParams {
    /// Page-table root for long mode (must be below 4 GiB).
    pub cr3: u32,
    /// Next ticket to hand out; set to 0 before the first SIPI.
    pub ticket: u32,
    /// Lowest address of the stack area.
    pub stack_base: u64,
    /// Bytes per AP stack.
    pub stack_size: u64,
    /// `extern "C" fn(ticket: u64) -> !` run in long mode.
    pub entry: u64,
}

#[cfg(target_os = "none")]
mod imp {
    use super::*;

    core::arch::global_asm!(
        r#"
    .section .rodata.trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (tramp_gdt_ptr - ap_trampoline_start + {base})
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(tramp32 - ap_trampoline_start + {base})

    .code32
tramp32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl (tramp_params - ap_trampoline_start + {base}), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmp $0x18, $(tramp64 - ap_trampoline_start + {base})

    .code64
tramp64:
    movl $1, %eax
    lock xaddl %eax, (tramp_params + 4 - ap_trampoline_start + {base})
    movl %eax, %edi                                   /* ticket */
    leaq 1(%rdi), %rax
    imulq (tramp_params + 16 - ap_trampoline_start + {base}), %rax
    addq (tramp_params + 8 - ap_trampoline_start + {base}), %rax
    movq %rax, %rsp
    xorl %ebp, %ebp
    movq (tramp_params + 24 - ap_trampoline_start + {base}), %rax
    call *%rax
1:
    cli
    hlt
    jmp 1b

    .balign 8
tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff       /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff       /* 0x10: data */
    .quad 0x00af9a000000ffff       /* 0x18: 64-bit code */
tramp_gdt_end:
tramp_gdt_ptr:
    .short tramp_gdt_end - tramp_gdt - 1
    .long tramp_gdt - ap_trampoline_start + {base}
    .balign 8
    .global ap_trampoline_params
ap_trampoline_params:
tramp_params:
    .fill 32, 1, 0
    .global ap_trampoline_end
ap_trampoline_end:
"#,
        base = const TRAMPOLINE_BASE.as_u64(),
        options(att_syntax)
    );

    extern "C" {
        static ap_trampoline_start: u8;
        static ap_trampoline_params: u8;
        static ap_trampoline_end: u8;
    }

    /// Copies the trampoline to [`TRAMPOLINE_BASE`] and patches in `params`.
    ///
    /// # Safety
    ///
    /// The page at [`TRAMPOLINE_BASE`] must be identity-mapped, writable, and reserved for the
    /// trampoline for as long as APs may start.
    pub unsafe fn install(params: TrampolineParams) {
        // The three symbols delimit the trampoline blob inside the image.
        let (start, params_at, end) = (
            core::ptr::addr_of!(ap_trampoline_start),
            core::ptr::addr_of!(ap_trampoline_params),
            core::ptr::addr_of!(ap_trampoline_end),
        );
        let len = end as usize - start as usize;
        let dst = TRAMPOLINE_BASE.as_u64() as *mut u8;
        assert!(len <= 4096 - core::mem::size_of::<TrampolineParams>());
        // SAFETY: the caller reserves the destination page; the blob is far smaller than a page
        // (checked above) and the source lies in the image, so the ranges do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(start, dst, len) };
        let offset = params_at as usize - start as usize;
        // SAFETY: the parameters' slot lies inside the blob (offset < len), so inside the page.
        let slot = unsafe { dst.add(offset) }.cast::<TrampolineParams>();
        // SAFETY: the slot is in the reserved page with room for the parameters (the blob ends
        // with their 32 bytes) and 8-byte aligned: `.balign 8` from a 16-aligned start, copied
        // to the page-aligned TRAMPOLINE_BASE.
        unsafe { core::ptr::write_volatile(slot, params) };
    }
}

#[cfg(target_os = "none")]
pub use imp::install;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_layout_matches_the_assembly() {
        // The assembly reads cr3 at +0, ticket at +4, stack_base at +8, stack_size at +16 and
        // entry at +24, out of a 32-byte block.
        assert_eq!(core::mem::offset_of!(TrampolineParams, cr3), 0);
        assert_eq!(core::mem::offset_of!(TrampolineParams, ticket), 4);
        assert_eq!(core::mem::offset_of!(TrampolineParams, stack_base), 8);
        assert_eq!(core::mem::offset_of!(TrampolineParams, stack_size), 16);
        assert_eq!(core::mem::offset_of!(TrampolineParams, entry), 24);
        assert_eq!(core::mem::size_of::<TrampolineParams>(), 32);
        assert_eq!(SIPI_VECTOR, 8);
    }
}
