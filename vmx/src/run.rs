//! VM entry and VM exit, target only.
//!
//! This module owns the assembly stub that enters the guest of the current VMCS and catches its
//! next VM exit. VM entry loads guest RSP, RIP, RFLAGS, control and segment registers from the
//! VMCS, and VM exit loads the host's from the VMCS host-state area (SDM Vol. 3C §27.3, §28.5);
//! the general-purpose registers (but RSP) and CR2 are switched by software, here, through
//! [`GuestRegisters`]. The stub writes HOST_RSP and HOST_RIP itself, on every entry, so the
//! exit lands on the same stack frame; the caller writes every other host-state field when it
//! sets up the VMCS.
//!
//! Stack at VM entry and at VM exit (HOST_RSP points at the saved `regs` pointer):
//!
//! ```text
//! [rsp + 56] return address
//! [rsp + 48] rbp
//! [rsp + 40] rbx
//! [rsp + 32] r12
//! [rsp + 24] r13
//! [rsp + 16] r14
//! [rsp +  8] r15
//! [rsp +  0] regs (the GuestRegisters pointer)   <- HOST_RSP
//! ```

use crate::error::VmFail;
use crate::fields::FieldNatural;
use core::mem::offset_of;

pub use crate::regs::GuestRegisters;

/// The stub's return codes.
const ENTERED: u32 = 0;
const FAIL_INVALID: u32 = 1;

core::arch::global_asm!(
    ".pushsection .text.atoll_vmx_vm_enter, \"ax\", @progbits",
    ".p2align 4",
    ".global atoll_vmx_vm_enter",
    ".type atoll_vmx_vm_enter, @function",
    // extern "sysv64" fn(regs: *mut GuestRegisters /* rdi */, launched: bool /* sil */) -> u32
    "atoll_vmx_vm_enter:",
    // Host callee-saved registers, then the regs pointer, which HOST_RSP will point at.
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    "mov rax, {host_rsp}",
    "vmwrite rax, rsp",
    "jbe 3f",
    "lea rdx, [rip + atoll_vmx_vm_exit]",
    "mov rax, {host_rip}",
    "vmwrite rax, rdx",
    "jbe 3f",
    // CR2 first: MOV to CR leaves the arithmetic flags undefined, and the flags must carry
    // `launched` to the branch below.
    "mov rax, [rdi + {cr2}]",
    "mov cr2, rax",
    "test sil, sil",
    // MOV does not touch the flags. RDI, the pointer, is loaded last.
    "mov rax, [rdi + {rax}]",
    "mov rbx, [rdi + {rbx}]",
    "mov rcx, [rdi + {rcx}]",
    "mov rdx, [rdi + {rdx}]",
    "mov rsi, [rdi + {rsi}]",
    "mov rbp, [rdi + {rbp}]",
    "mov r8, [rdi + {r8}]",
    "mov r9, [rdi + {r9}]",
    "mov r10, [rdi + {r10}]",
    "mov r11, [rdi + {r11}]",
    "mov r12, [rdi + {r12}]",
    "mov r13, [rdi + {r13}]",
    "mov r14, [rdi + {r14}]",
    "mov r15, [rdi + {r15}]",
    "mov rdi, [rdi + {rdi}]",
    "jnz 2f",
    "vmlaunch",
    // Falling through VMLAUNCH or VMRESUME means VMfail; JMP keeps the flags.
    "jmp 3f",
    "2:",
    "vmresume",
    // VMfail (from VMLAUNCH, VMRESUME or a VMWRITE above): CF = 1 VMfailInvalid, else
    // VMfailValid. The guest values in the callee-saved registers are dropped by the pops.
    "3:",
    "mov eax, {fail_valid}",
    "mov ecx, {fail_invalid}",
    "cmovc eax, ecx",
    "lea rsp, [rsp + 8]",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    // VM exit: RSP = HOST_RSP, RFLAGS = 0x2, host CR0/CR3/CR4, segments and EFER from the VMCS.
    "atoll_vmx_vm_exit:",
    "push rdi",
    "mov rdi, [rsp + 8]",
    "mov [rdi + {rax}], rax",
    "mov [rdi + {rbx}], rbx",
    "mov [rdi + {rcx}], rcx",
    "mov [rdi + {rdx}], rdx",
    "mov [rdi + {rsi}], rsi",
    "mov [rdi + {rbp}], rbp",
    "mov [rdi + {r8}], r8",
    "mov [rdi + {r9}], r9",
    "mov [rdi + {r10}], r10",
    "mov [rdi + {r11}], r11",
    "mov [rdi + {r12}], r12",
    "mov [rdi + {r13}], r13",
    "mov [rdi + {r14}], r14",
    "mov [rdi + {r15}], r15",
    "pop rax",
    "mov [rdi + {rdi}], rax",
    "mov rax, cr2",
    "mov [rdi + {cr2}], rax",
    "lea rsp, [rsp + 8]",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "mov eax, {entered}",
    "ret",
    ".size atoll_vmx_vm_enter, . - atoll_vmx_vm_enter",
    ".popsection",
    host_rsp = const FieldNatural::HostRsp as u32,
    host_rip = const FieldNatural::HostRip as u32,
    entered = const ENTERED,
    fail_invalid = const FAIL_INVALID,
    fail_valid = const FAIL_INVALID + 1,
    rax = const offset_of!(GuestRegisters, rax),
    rbx = const offset_of!(GuestRegisters, rbx),
    rcx = const offset_of!(GuestRegisters, rcx),
    rdx = const offset_of!(GuestRegisters, rdx),
    rsi = const offset_of!(GuestRegisters, rsi),
    rdi = const offset_of!(GuestRegisters, rdi),
    rbp = const offset_of!(GuestRegisters, rbp),
    r8 = const offset_of!(GuestRegisters, r8),
    r9 = const offset_of!(GuestRegisters, r9),
    r10 = const offset_of!(GuestRegisters, r10),
    r11 = const offset_of!(GuestRegisters, r11),
    r12 = const offset_of!(GuestRegisters, r12),
    r13 = const offset_of!(GuestRegisters, r13),
    r14 = const offset_of!(GuestRegisters, r14),
    r15 = const offset_of!(GuestRegisters, r15),
    cr2 = const offset_of!(GuestRegisters, cr2),
);

extern "sysv64" {
    /// The stub above: returns [`ENTERED`] after a VM exit, [`FAIL_INVALID`] or
    /// `FAIL_INVALID + 1` (VMfailValid) if the guest was not entered.
    fn atoll_vmx_vm_enter(regs: *mut GuestRegisters, launched: bool) -> u32;
}

/// Enters the guest of the current VMCS with `regs`, returns at its next VM exit with `regs`
/// updated. `launched` selects VMRESUME over VMLAUNCH; the VMCS is launched after the first
/// VMLAUNCH that leads to a VM exit other than a VM-entry failure (exit reason bit 31).
///
/// `Err` means the guest did not run: VMfailInvalid (no current VMCS) or VMfailValid with the
/// VM-instruction error (e.g. 7, invalid control fields; 8, invalid host state). A VM entry
/// that fails on guest state or MSR loading is an exit (`Ok`) with exit reason bit 31 set.
///
/// On return interrupts are disabled (VM exit clears RFLAGS but bit 1) and the guest's x87,
/// SSE and AVX state is still in the registers: atoll's target code does not use them.
///
/// # Safety
///
/// * The core is in VMX root operation with a current VMCS whose host-state area (but RSP and
///   RIP, which this function writes) describes the running host: CR0, CR3, CR4, CS/SS/DS/ES/
///   FS/GS/TR selectors, FS/GS/TR/GDTR/IDTR bases, and EFER/PAT when the exit controls load
///   them, so that the exit resumes atoll in this address space on this stack.
/// * Every memory structure the VMCS names (I/O and MSR bitmaps, MSR load/store areas, EPT
///   tables, virtual-APIC and APIC-access pages, …) is valid and reserved for that use for as
///   long as the processor may touch it.
pub unsafe fn vm_enter(regs: &mut GuestRegisters, launched: bool) -> Result<(), VmFail> {
    // SAFETY: the caller's contract makes the VMCS host state return control here with this
    // stack intact; the stub saves and restores every callee-saved register of the sysv64 ABI
    // and writes only `*regs`, which it borrows for the call.
    let code = unsafe { atoll_vmx_vm_enter(regs, launched) };
    match code {
        ENTERED => Ok(()),
        FAIL_INVALID => Err(VmFail::Invalid),
        _ => Err(VmFail::Valid(crate::instructions::instruction_error())),
    }
}
