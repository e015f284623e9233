//! Each core's own GDT and TSS, installed first thing on every core: the TSS gives the core an
//! interrupt stack (IST1) for double faults, so a stack overflow — which faults on the guard
//! page under the stack and then cannot push the #PF frame — lands on a good stack, reaches
//! the exception handler, and ends only the partition that core was handling
//! ([`super::contain`]). VM entry on VMX also needs a non-null host TR; the backend takes this
//! one.
//!
//! The GDT's null descriptor, which the CPU never reads (SDM Vol. 3A §3.5.1), names the core's
//! slot in the core table once the core knows it ([`set_slot`]): the interrupt handler finds
//! the core's own per-core block from `SGDT` alone ([`this_slot`]). The GDTR base is per core
//! and survives every exit (VMX loads it from the VMCS host state, SVM's #VMEXIT from the host
//! save area), so this costs no serializing CPUID and no shared lookup.

use alloc::boxed::Box;

/// Selector of the 64-bit code segment (as in the boot GDT).
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment (as in the boot GDT).
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the core's TSS.
pub const TSS_SELECTOR: u16 = 0x18;
/// Bytes of each core's double-fault stack.
pub const IST_STACK_SIZE: usize = 16 * 1024;

use boot::tss::{tss_base, tss_descriptor, IST1_DWORD, TSS_DWORDS};

/// A core's GDT (null, code, data, TSS low, TSS high) and TSS.
#[repr(C, align(16))]
struct Tables {
    gdt: [u64; 5],
    tss: [u32; TSS_DWORDS],
}

/// Installs a GDT and TSS of the calling core's own, with a double-fault stack in IST1. Called
/// once per core, before anything else that may fault.
pub fn install() {
    let stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; IST_STACK_SIZE].into_boxed_slice());
    // Stacks grow down and the CPU aligns an IST stack to 16 bytes itself.
    let ist_top = stack.as_mut_ptr() as u64 + IST_STACK_SIZE as u64;
    let tables = Box::leak(Box::new(Tables {
        gdt: [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0, 0],
        tss: [0; TSS_DWORDS],
    }));
    tables.tss[IST1_DWORD] = ist_top as u32;
    tables.tss[IST1_DWORD + 1] = (ist_top >> 32) as u32;
    // I/O map base past the TSS limit: no I/O permission bitmap.
    tables.tss[TSS_DWORDS - 1] = ((TSS_DWORDS * 4) as u32) << 16;
    let [low, high] = tss_descriptor(tables.tss.as_ptr() as u64);
    tables.gdt[3] = low;
    tables.gdt[4] = high;
    #[repr(C, packed)]
    struct Ptr {
        limit: u16,
        base: u64,
    }
    let ptr = Ptr {
        limit: (5 * 8 - 1) as u16,
        base: tables.gdt.as_ptr() as u64,
    };
    // SAFETY: the new GDT keeps the boot GDT's code (0x08) and data (0x10) descriptors, so
    // reloading CS by far return and the data segments is transparent; the TSS descriptor
    // points at this core's own TSS, leaked so it lives as long as the core.
    unsafe {
        core::arch::asm!(
            "lgdt [{p}]",
            "push {cs}",
            "lea {t}, [rip + 2f]",
            "push {t}",
            "retfq",
            "2:",
            "mov {t:e}, {ds}",
            "mov ds, {t:e}",
            "mov es, {t:e}",
            "mov ss, {t:e}",
            "ltr {sel:x}",
            p = in(reg) &ptr, t = out(reg) _, sel = in(reg) TSS_SELECTOR,
            cs = const CODE_SELECTOR as u64, ds = const DATA_SELECTOR as u32,
        );
    }
}

/// The calling core's GDT base and TSS base (for VMX host state).
pub fn current_bases() -> (u64, u64) {
    #[repr(C, packed)]
    #[derive(Default)]
    struct Ptr {
        limit: u16,
        base: u64,
    }
    let mut ptr = Ptr::default();
    // SAFETY: SGDT stores the 10-byte GDTR into `ptr`, which is exactly that size.
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) &mut ptr, options(nostack)) };
    let gdt = ptr.base;
    let entry = |i: u64| -> u64 {
        // SAFETY: the GDT is `install`'s, five entries, identity-mapped and never freed; TSS
        // entries 3 and 4 are inside it.
        unsafe { core::ptr::read_volatile((gdt + i * 8) as *const u64) }
    };
    (gdt, tss_base([entry(3), entry(4)]))
}

/// The calling core's GDTR base.
fn gdt_base() -> u64 {
    #[repr(C, packed)]
    #[derive(Default)]
    struct Ptr {
        limit: u16,
        base: u64,
    }
    let mut ptr = Ptr::default();
    // SAFETY: SGDT stores the 10-byte GDTR into `ptr`, which is exactly that size.
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) &mut ptr, options(nostack, preserves_flags)) };
    ptr.base
}

/// Records this core's slot in the core table in its own GDT's null descriptor. Called by the
/// core itself once it checked in, after [`install`].
pub fn set_slot(slot: usize) {
    let gdt = gdt_base() as *mut u64;
    // SAFETY: after `install` the GDTR holds this core's own leaked GDT (aligned, five entries,
    // never freed); its null descriptor is unused by the CPU, and only this core writes it
    // (one aligned 8-byte store, which an interrupt on this core cannot see half done).
    unsafe { core::ptr::write_volatile(gdt, crate::machine::percpu::slot_word(slot)) };
}

/// This core's slot in the core table, as [`set_slot`] recorded it; `None` before (boot GDT,
/// or a core that has not checked in).
pub fn this_slot() -> Option<usize> {
    let gdt = gdt_base() as *const u64;
    // SAFETY: the GDTR always holds a loaded GDT (the boot GDT, or this core's own), whose first
    // 8 bytes are its null descriptor, mapped and at least that long.
    crate::machine::percpu::slot_of_word(unsafe { core::ptr::read_volatile(gdt) })
}
