//! VMRUN and #VMEXIT, target only.
//!
//! This module owns the assembly stub that runs the guest of a VMCB until its next #VMEXIT
//! (AMD64 APM Vol. 2 §15.5 "VMRUN Instruction", §15.6 "#VMEXIT"). What switches where:
//!
//! * VMRUN saves the host's RAX, RSP, RIP, RFLAGS, CR0/CR3/CR4, EFER, GDTR, IDTR and the
//!   ES/CS/SS/DS selectors in the host save area named by VM_HSAVE_PA, loads the guest's from the
//!   VMCB (RAX, RSP, RIP, RFLAGS, CR0/CR2/CR3/CR4, EFER, DR6/DR7, segments, CPL …); #VMEXIT does
//!   the reverse (§15.5.1).
//! * VMRUN does not switch FS, GS, TR and LDTR (with their hidden bases), KernelGsBase, STAR,
//!   LSTAR, CSTAR, SFMASK and the SYSENTER MSRs: VMLOAD and VMSAVE do (§15.5.2). The stub VMSAVEs
//!   the host's into a second, host-only VMCB page (`host_save_vmcb_pa`), VMLOADs the guest's
//!   from its VMCB before VMRUN, VMSAVEs them back into the guest VMCB after #VMEXIT and VMLOADs
//!   the host's again.
//! * The general-purpose registers but RAX and RSP are switched by software, here, through
//!   [`GuestRegisters`]. RAX holds the VMCB's physical address for VMRUN, VMLOAD and VMSAVE; the
//!   guest's RAX is the VMCB field at 5F8h.
//!
//! The stub runs between CLGI and STGI (§15.17 "Global Interrupt Flag, STGI and CLGI
//! Instructions"): with GIF = 0 no interrupt, NMI or SMI is taken on the host while any guest
//! state (the guest's GS base, for one) is loaded. STGI comes last, after the host's state is
//! back, on the host stack. GIF = 1 afterwards is safe because atoll's host runs with
//! RFLAGS.IF = 0 (#VMEXIT restores the host's RFLAGS), so only an NMI can then arrive, and the
//! host handles those. Physical interrupts that arrive while the guest runs stay pending until
//! the guest exits (with the INTR intercept) and are then handled by atoll's exit path.
//!
//! Stack while the guest runs (VMRUN saves and #VMEXIT restores RSP):
//!
//! ```text
//! [rsp + 72] return address
//! [rsp + 64] rbp
//! [rsp + 56] rbx
//! [rsp + 48] r12
//! [rsp + 40] r13
//! [rsp + 32] r14
//! [rsp + 24] r15
//! [rsp + 16] regs (the GuestRegisters pointer)
//! [rsp +  8] host_save_vmcb_pa
//! [rsp +  0] vmcb_pa
//! ```

use boot::addr::HostPhysAddr;
use core::mem::offset_of;

pub use crate::regs::GuestRegisters;

/// Stack slots of the stub's frame, from RSP after the pushes.
const VMCB_SLOT: usize = 0;
const HOST_SAVE_SLOT: usize = 8;
const REGS_SLOT: usize = 16;

core::arch::global_asm!(
    ".pushsection .text.atoll_svm_vm_run, \"ax\", @progbits",
    ".p2align 4",
    ".global atoll_svm_vm_run",
    ".type atoll_svm_vm_run, @function",
    // extern "sysv64" fn(vmcb_pa: u64 /* rdi */, host_save_vmcb_pa: u64 /* rsi */,
    //                    regs: *mut GuestRegisters /* rdx */)
    "atoll_svm_vm_run:",
    // Host callee-saved registers, then the three arguments (see the frame above).
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdx",
    "push rsi",
    "push rdi",
    // From here to STGI, no interrupt, NMI or SMI reaches the host.
    "clgi",
    // The host's FS/GS/TR/LDTR, KernelGsBase, STAR/LSTAR/CSTAR/SFMASK, SYSENTER_*.
    "mov rax, rsi",
    "vmsave rax",
    // The guest's, from its VMCB; RAX stays the VMCB address for VMRUN.
    "mov rax, rdi",
    "vmload rax",
    // Guest GPRs; RDX, the pointer, last.
    "mov rbx, [rdx + {rbx}]",
    "mov rcx, [rdx + {rcx}]",
    "mov rsi, [rdx + {rsi}]",
    "mov rdi, [rdx + {rdi}]",
    "mov rbp, [rdx + {rbp}]",
    "mov r8, [rdx + {r8}]",
    "mov r9, [rdx + {r9}]",
    "mov r10, [rdx + {r10}]",
    "mov r11, [rdx + {r11}]",
    "mov r12, [rdx + {r12}]",
    "mov r13, [rdx + {r13}]",
    "mov r14, [rdx + {r14}]",
    "mov r15, [rdx + {r15}]",
    "mov rdx, [rdx + {rdx}]",
    // With V_INTR_MASKING, physical interrupts reach (and #VMEXIT) the guest only if the host's
    // RFLAGS.IF was set at VMRUN (HIF, APM Vol. 2 §15.21.1); with GIF clear, setting IF lets
    // nothing in on the host side.
    "sti",
    "vmrun rax",
    // GIF is 0 again; clear IF before STGI so the host takes pending interrupts only when the
    // backend opens a window for them.
    "cli",
    // #VMEXIT: RAX (the VMCB address), RSP, RIP, RFLAGS and the rest of the host state of
    // VM_HSAVE_PA are back; GIF = 0; the other GPRs hold the guest's values.
    "mov rax, [rsp + {regs_slot}]",
    "mov [rax + {rbx}], rbx",
    "mov [rax + {rcx}], rcx",
    "mov [rax + {rdx}], rdx",
    "mov [rax + {rsi}], rsi",
    "mov [rax + {rdi}], rdi",
    "mov [rax + {rbp}], rbp",
    "mov [rax + {r8}], r8",
    "mov [rax + {r9}], r9",
    "mov [rax + {r10}], r10",
    "mov [rax + {r11}], r11",
    "mov [rax + {r12}], r12",
    "mov [rax + {r13}], r13",
    "mov [rax + {r14}], r14",
    "mov [rax + {r15}], r15",
    // The guest's VMLOAD/VMSAVE state back into its VMCB, then the host's back into the core.
    "mov rax, [rsp + {vmcb_slot}]",
    "vmsave rax",
    "mov rax, [rsp + {host_save_slot}]",
    "vmload rax",
    // Host state is complete: GIF = 1 (RFLAGS.IF is the host's, 0).
    "stgi",
    "add rsp, 24",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size atoll_svm_vm_run, . - atoll_svm_vm_run",
    ".popsection",
    vmcb_slot = const VMCB_SLOT,
    host_save_slot = const HOST_SAVE_SLOT,
    regs_slot = const REGS_SLOT,
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
);

extern "sysv64" {
    /// The stub above.
    fn atoll_svm_vm_run(vmcb_pa: u64, host_save_vmcb_pa: u64, regs: *mut GuestRegisters);
}

/// Runs the guest of the VMCB at `vmcb_pa` with `regs` until its next #VMEXIT, then returns
/// with `regs` and the VMCB (exit code, EXITINFO, guest state) updated.
///
/// There is no failure return: a VMCB that fails VMRUN's consistency checks is a #VMEXIT with
/// exit code VMEXIT_INVALID (−1) and the guest did not run (APM Vol. 2 §15.5.1). On return
/// GIF = 1, RFLAGS is the host's as it was at the call, and the guest's x87/SSE/AVX state,
/// XCR0, DR0–DR3 and CR2 are still in the registers (CR2 is saved into the VMCB but the host's
/// is not restored): atoll's target code uses none of them.
///
/// # Safety
///
/// * SVM is enabled on this core (`enable::enable_svm`: EFER.SVME set, VM_HSAVE_PA naming
///   its host save area) and the caller runs at CPL 0 with RFLAGS.IF = 0.
/// * `vmcb_pa` is the 4 KiB-aligned host-physical address of a VMCB that describes a guest:
///   VMRUN intercepted, a non-zero ASID, and every structure it names (I/O and MSR permission
///   maps when IOIO_PROT/MSR_PROT are intercepted, nested page tables, AVIC pages …) valid and
///   reserved for that use for as long as the processor may touch it. The processor writes the
///   VMCB during the call: no Rust reference to it may be live across the call.
/// * `host_save_vmcb_pa` is the 4 KiB-aligned host-physical address of a page used only as this
///   core's host VMSAVE/VMLOAD area (not the VM_HSAVE_PA page, whose format is the processor's).
/// * Host segment state is what VMLOAD restores: the host's FS/GS bases, TR, LDTR and syscall
///   MSRs must not change between the VMSAVE and VMLOAD inside the call (nothing runs there).
pub unsafe fn vm_run(
    vmcb_pa: HostPhysAddr,
    host_save_vmcb_pa: HostPhysAddr,
    regs: &mut GuestRegisters,
) {
    // SAFETY: the caller's contract makes VMRUN, VMLOAD and VMSAVE valid on these addresses and
    // #VMEXIT return to the instruction after VMRUN with this stack; the stub saves and restores
    // every callee-saved register of the sysv64 ABI and writes only `*regs` (borrowed for the
    // call) and the two VMCB pages, which the caller reserved for the processor.
    unsafe { atoll_svm_vm_run(vmcb_pa.as_u64(), host_save_vmcb_pa.as_u64(), regs) };
}
