//! The Multiboot2 header, the 32-bit entry, the switch to long mode and the early page tables.
//!
//! GRUB enters `_start` in 32-bit protected mode with paging off, EAX holding the Multiboot2
//! magic and EBX the physical address of the boot information (Multiboot2 spec §3.3). The code
//! below zeroes `.bss`, loads page tables that identity-map the first 4 GiB with 2 MiB pages,
//! enables PAE and EFER.LME, turns on paging, loads a 64-bit GDT and calls
//! `atoll_bsp_main(magic, info)` on the boot stack. The image is linked at 2 MiB, physical equal
//! to virtual, so every symbol address is also its physical address.
//!
//! The 4 GiB identity map covers the image, the boot information, ACPI tables and the local APIC
//! on every machine atoll targets; RAM above 4 GiB is mapped later by the hypervisor.

/// Bytes of the boot processor's stack.
pub const BSP_STACK_SIZE: usize = 256 * 1024;

core::arch::global_asm!(
    r#"
    .section .multiboot2_header, "a"
    .balign 8
mb2_header_start:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header_start
    .long -(0xe85250d6 + (mb2_header_end - mb2_header_start))
    /* information request: memory map (6), ACPI old (14) and new (15) RSDP, module (3),
       command line (1) */
    .balign 8
    .short 1, 0
    .long 8 + 5 * 4
    .long 1, 3, 6, 14, 15
    .balign 8
    /* end tag */
    .short 0, 0
    .long 8
mb2_header_end:

    .section .text.boot32, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    movl %eax, %edi
    movl %ebx, %esi
    /* zero .bss (the loader should have, but it costs nothing to be sure) */
    movl $__bss_start, %edx
1:
    cmpl $__bss_end, %edx
    jae 2f
    movb $0, (%edx)
    incl %edx
    jmp 1b
2:
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $(1 << 5), %eax           /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx         /* IA32_EFER */
    rdmsr
    orl $(1 << 8), %eax           /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax          /* PG | WP | PE */
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $start64

    .code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl %edi, %edi                /* magic, zero-extended */
    movl %esi, %esi                /* boot information address, zero-extended */
    call atoll_bsp_main
3:
    cli
    hlt
    jmp 3b

    .section .rodata.boot, "a"
    .balign 16
    .global boot_gdt
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff       /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff       /* 0x10: data */
boot_gdt_end:
    .balign 16
    .global boot_gdt_ptr
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .data.boot_page_tables, "aw"
    .balign 4096
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x3
    .fill 511, 8, 0
    .global boot_pdpt
boot_pdpt:
    .quad boot_pd + 0x0000 + 0x3
    .quad boot_pd + 0x1000 + 0x3
    .quad boot_pd + 0x2000 + 0x3
    .quad boot_pd + 0x3000 + 0x3
    .fill 508, 8, 0
    .global boot_pd
boot_pd:
    .set i, 0
    .rept 2048
    .quad (i << 21) | 0x83         /* present, writable, 2 MiB page */
    .set i, i + 1
    .endr

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    /* one page below the stack, unmapped by the BSP once it can (a guard: an overflow faults) */
    .global boot_stack_guard
boot_stack_guard:
    .skip 4096
boot_stack_bottom:
    .skip {stack_size}
    .global boot_stack_top
boot_stack_top:
"#,
    stack_size = const BSP_STACK_SIZE,
    options(att_syntax)
);

/// Physical address of the boot PML4, which every core loads into CR3.
pub fn boot_cr3() -> u64 {
    extern "C" {
        static boot_pml4: u8;
    }
    core::ptr::addr_of!(boot_pml4) as u64
}

/// Loads the boot GDT and reloads every segment register (used by APs after the trampoline).
pub fn load_boot_gdt() {
    // SAFETY: `boot_gdt_ptr` describes a valid GDT with a 64-bit code segment at 0x08 and a data
    // segment at 0x10; reloading CS through a far return keeps executing the next instruction.
    unsafe {
        core::arch::asm!(
            "lgdt [rip + boot_gdt_ptr]",
            "push 0x08",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, 0x10",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov ss, {tmp:e}",
            tmp = out(reg) _,
        );
    }
}

/// Bytes one PDPT entry maps as a 1 GiB page.
const GIB: u64 = 1 << 30;

/// Why the identity map could not be extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The CPU lacks 1 GiB pages (CPUID 0x8000_0001 EDX bit 26).
    No1GiBPages,
    /// Beyond the 512 GiB one PDPT covers.
    TooHigh(u64),
}

/// Identity-maps physical memory from 4 GiB up to `end` with 1 GiB pages (write-back; MMIO
/// above 4 GiB is mapped by its owner with the right memory type later). The boot tables map the
/// first 4 GiB; this covers RAM above them.
pub fn extend_identity_map(end: u64) -> Result<(), MapError> {
    extern "C" {
        static mut boot_pdpt: [u64; 512];
    }
    if end <= 4 * GIB {
        return Ok(());
    }
    if end > 512 * GIB {
        return Err(MapError::TooHigh(end));
    }
    let ext = core::arch::x86_64::__cpuid(0x8000_0001);
    if ext.edx & (1 << 26) == 0 {
        return Err(MapError::No1GiBPages);
    }
    let gibs = end.div_ceil(GIB) as usize;
    // Entries are written through a raw pointer (never a reference to the live table).
    #[allow(clippy::needless_range_loop)]
    for i in 4..gibs {
        // SAFETY: boot_pdpt is a 512-entry table and `i` < 512 (checked `end` above), so the
        // entry's address is inside it; no reference is made.
        let entry = unsafe { core::ptr::addr_of_mut!(boot_pdpt[i]) };
        // SAFETY: boot_pdpt is the live PDPT under PML4 entry 0; entries 4.. are unused until
        // here, and only the BSP runs this, before any AP starts. Present | writable | page size.
        unsafe { core::ptr::write_volatile(entry, (i as u64 * GIB) | 0x83) };
    }
    // New mappings only (no entry was present before), so no TLB entry can be stale.
    Ok(())
}

/// The page below the boot processor's stack, which [`unmap_page`] turns into a guard.
pub fn boot_stack_guard() -> u64 {
    extern "C" {
        static boot_stack_guard: u8;
    }
    core::ptr::addr_of!(boot_stack_guard) as u64
}

pub use crate::paging::UnmapError;

/// Unmaps the 4 KiB page at `addr` (rounded down) from the boot tables every core uses, so
/// any access to it faults: the guard page under a stack. A 2 MiB page is split first into a
/// page table written to the zeroed, identity-mapped frame `table_frame()` gives; a later
/// guard in the same 2 MiB reuses that table.
///
/// # Safety
///
/// Nothing may use the page at `addr` again, and the frame `table_frame` returns must be
/// atoll's own, identity-mapped, 4 KiB-aligned and never used for anything else.
pub unsafe fn unmap_page(
    addr: u64,
    table_frame: impl FnOnce() -> Option<u64>,
) -> Result<(), UnmapError> {
    use crate::paging::{ADDRESS, LARGE, PAGE_SIZE_BIT, PRESENT_WRITABLE};
    extern "C" {
        static mut boot_pd: [u64; 2048];
    }
    if addr >= 4 * GIB {
        return Err(UnmapError::NotBelow4GiB(addr));
    }
    let index = (addr / LARGE) as usize;
    // SAFETY: `index` < 2048 because `addr` < 4 GiB; no reference to the live table is made.
    let pde_ptr = unsafe { core::ptr::addr_of_mut!(boot_pd[index]) };
    // SAFETY: `pde_ptr` points into the live boot page directory.
    let pde = unsafe { core::ptr::read_volatile(pde_ptr) };
    let table = if pde & PAGE_SIZE_BIT != 0 {
        let frame = table_frame().ok_or(UnmapError::NoFrame)?;
        let entries = crate::paging::split_large_page(pde);
        // SAFETY: the caller gives a frame of its own, identity-mapped and 4 KiB-aligned, so
        // 512 entries fit and nothing else uses it.
        unsafe { core::ptr::write_volatile(frame as *mut [u64; 512], entries) };
        // The table maps exactly what the 2 MiB page did, so swapping it in changes nothing
        // for any address but the guard.
        // SAFETY: as for the read above.
        unsafe { core::ptr::write_volatile(pde_ptr, frame | PRESENT_WRITABLE) };
        frame
    } else {
        pde & ADDRESS
    };
    let pte = (table + ((addr >> 12) & 0x1ff) * 8) as *mut u64;
    // SAFETY: `table` is the page table this PDE points to (atoll's own, identity-mapped).
    unsafe { core::ptr::write_volatile(pte, 0) };
    // SAFETY: INVLPG only drops this core's cached translations of the page (and of the 2 MiB
    // page it replaced, which covers the same address). Other cores have not started yet or
    // reload CR3 when they do.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) addr, options(nostack)) };
    Ok(())
}
