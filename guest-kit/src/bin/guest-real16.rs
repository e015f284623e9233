//! The real-mode test guest (see the crate docs): atoll enters `_start` in real mode at
//! CS:IP = 0000:8000. It prints through COM1, picks VMCALL or VMMCALL by CPU vendor, checks the
//! hypercall ABI version and the hypervisor CPUID leaf, reports and exits — all in 16-bit code,
//! which on VMX needs unrestricted guest.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("guest-real16 is a bare-metal guest: atoll loads it into an enclave");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .section .text.real16, "ax"
    .code16
    .global _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7ff0, %sp

    movw $hello, %si
    call puts

    /* CR0.PE must be clear: this really is real mode. */
    movl %cr0, %eax
    testb $1, %al
    jnz fail

    /* Intel or AMD: VMCALL, or VMMCALL patched into the same 3-byte slot. */
    xorl %eax, %eax
    cpuid
    cmpl $0x756e6547, %ebx          /* "Genu" */
    je 1f
    movb $0xd9, (hcall_insn + 2)
1:
    /* VERSION: RAX = 0 -> RAX = 0 (ok), RBX = 1. */
    xorl %eax, %eax
    call hcall
    testl %eax, %eax
    jnz fail
    cmpl $1, %ebx
    jne fail

    /* CPUID 0x40000000 names atoll: "Atol" in EBX. */
    movl $0x40000000, %eax
    cpuid
    cmpl $0x6c6f7441, %ebx
    jne fail

    movl $2, %eax                   /* REPORT */
    movl $report_ok, %ebx
    movl $(report_ok_end - report_ok), %ecx
    call hcall
    movw $done, %si
    call puts
    movl $3, %eax                   /* EXIT(0) */
    xorl %ebx, %ebx
    call hcall
    hlt

fail:
    movl $2, %eax
    movl $report_bad, %ebx
    movl $(report_bad_end - report_bad), %ecx
    call hcall
    movl $3, %eax
    movl $1, %ebx
    call hcall
    hlt

hcall:
hcall_insn:
    .byte 0x0f, 0x01, 0xc1          /* vmcall (vmmcall on AMD: 0f 01 d9) */
    ret

puts:
    lodsb
    testb %al, %al
    jz 3f
    movw $0x3f8, %dx
    outb %al, %dx
    jmp puts
3:  ret

hello: .asciz "guest-real16: hello from real mode\n"
done: .asciz "guest-real16: passed\n"
report_ok: .ascii "{{\"real_mode\":true,\"real_mode_passed\":true,\"abi_version_ok\":true,\"cpuid_signature_ok\":true}}"
report_ok_end:
report_bad: .ascii "{{\"real_mode_passed\":false}}"
report_bad_end:
"#,
    options(att_syntax)
);

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
