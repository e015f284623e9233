//! Containment of atoll's own faults (invariant 4): a panic or an exception raised while a core
//! handles a partition ends that partition, not the machine.
//!
//! A core runs a partition's vCPU inside [`contained`], which records a recovery point (the
//! callee-saved registers, the stack pointer and a resume address, as `setjmp` does) in the
//! core's [`RecoverySlot`]. The panic handler and the exception handler ask [`recover`] first:
//! when the faulting core has a recovery point armed, the failure's text goes into the slot's
//! fixed buffer and the core jumps back to the recovery point, so `contained` returns
//! `Err(Failure)` and the caller reports the partition `failed` with that text and parks the
//! core. Only a fault with no recovery point armed (boot, the BSP's own orchestration) stops the
//! machine.
//!
//! What the jump skips: destructors of the frames between the recovery point and the fault
//! (their heap memory leaks, bounded by one partition's exit path) and lock guards those frames
//! held. Exit paths take only their own partition's locks (the console is reached by try-lock),
//! so a lock left held stops at most the faulting partition's other vCPUs, which are being
//! stopped anyway.

use crate::machine::smp::MAX_CORES;
use crate::run::failure::Failure;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The registers a recovery point keeps (System V callee-saved set, stack pointer, resume
/// address). Field offsets are used by the assembly below.
#[repr(C)]
#[derive(Clone, Copy)]
struct Context {
    rbx: u64,
    rbp: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    rsp: u64,
    rip: u64,
}

core::arch::global_asm!(
    // atoll_contain_call(ctx: *mut Context, f: extern "C" fn(*mut u8), data: *mut u8) -> u64
    // Saves the recovery point, calls f(data) and returns 0; a later atoll_contain_resume(ctx)
    // returns 1 from here instead.
    ".global atoll_contain_call",
    "atoll_contain_call:",
    "mov [rdi + 0], rbx",
    "mov [rdi + 8], rbp",
    "mov [rdi + 16], r12",
    "mov [rdi + 24], r13",
    "mov [rdi + 32], r14",
    "mov [rdi + 40], r15",
    "mov [rdi + 48], rsp",
    "lea rax, [rip + 2f]",
    "mov [rdi + 56], rax",
    // At entry RSP = 8 mod 16 (our return address); realign for the call.
    "sub rsp, 8",
    "mov rdi, rdx",
    "call rsi",
    "add rsp, 8",
    "xor eax, eax",
    "ret",
    "2:",
    "mov eax, 1",
    "ret",
    // atoll_contain_resume(ctx: *const Context) -> !
    ".global atoll_contain_resume",
    "atoll_contain_resume:",
    "mov rbx, [rdi + 0]",
    "mov rbp, [rdi + 8]",
    "mov r12, [rdi + 16]",
    "mov r13, [rdi + 24]",
    "mov r14, [rdi + 32]",
    "mov r15, [rdi + 40]",
    "mov rsp, [rdi + 48]",
    "jmp qword ptr [rdi + 56]",
);

extern "C" {
    fn atoll_contain_call(ctx: *mut Context, f: extern "C" fn(*mut u8), data: *mut u8) -> u64;
    fn atoll_contain_resume(ctx: *const Context) -> !;
}

/// One core's recovery point and the text of the failure that used it, on cache lines of its
/// own (each core arms and disarms its slot around every run).
#[repr(align(64))]
struct RecoverySlot {
    /// The APIC id of the core that owns the slot (`u32::MAX`: free).
    apic_id: AtomicU32,
    /// Whether a recovery point is armed.
    armed: AtomicBool,
    /// Written only by the owning core: the recovery point while armed, the failure after.
    state: UnsafeCell<SlotState>,
}

/// A slot's core-private part.
#[repr(C)]
struct SlotState {
    /// First, so a pointer to the state is a pointer to the context.
    ctx: Context,
    failure: Failure,
}

// SAFETY: `state` is touched only by the core whose APIC id the slot holds (a core claims a
// slot for itself and never hands it on); the atomics are the only fields other cores read.
unsafe impl Sync for RecoverySlot {}

static SLOTS: [RecoverySlot; MAX_CORES] = [const {
    RecoverySlot {
        apic_id: AtomicU32::new(u32::MAX),
        armed: AtomicBool::new(false),
        state: UnsafeCell::new(SlotState {
            ctx: Context {
                rbx: 0,
                rbp: 0,
                r12: 0,
                r13: 0,
                r14: 0,
                r15: 0,
                rsp: 0,
                rip: 0,
            },
            failure: Failure::new(),
        }),
    }
}; MAX_CORES];

/// The calling core's APIC id, from CPUID (leaf 0xB's x2APIC id where the CPU has it).
fn this_apic_id() -> u32 {
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max >= 0xb {
        let r = core::arch::x86_64::__cpuid_count(0xb, 0);
        if r.ebx != 0 {
            return r.edx;
        }
    }
    core::arch::x86_64::__cpuid(1).ebx >> 24
}

/// The calling core's slot, claimed on first use (`None` only if every slot is taken, which
/// the core table's size rules out).
fn this_slot() -> Option<&'static RecoverySlot> {
    let id = this_apic_id();
    if let Some(s) = SLOTS
        .iter()
        .find(|s| s.apic_id.load(Ordering::Acquire) == id)
    {
        return Some(s);
    }
    SLOTS.iter().find(|s| {
        s.apic_id
            .compare_exchange(u32::MAX, id, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    })
}

/// Runs `f` on this core with a recovery point armed: a panic or exception inside it comes back
/// as `Err` with its text. Not reentrant: `f` must not call `contained` again.
// The failure's text is kept in a fixed buffer on purpose: the fault may be the heap's.
#[allow(clippy::result_large_err)]
pub fn contained<F: FnOnce() -> R, R>(f: F) -> Result<R, Failure> {
    let Some(slot) = this_slot() else {
        return Ok(f());
    };
    struct Call<F, R> {
        f: Option<F>,
        result: Option<R>,
    }
    extern "C" fn trampoline<G: FnOnce() -> S, S>(data: *mut u8) {
        // SAFETY: `data` is the `Call<F, R>` that `contained` passed to `atoll_contain_call`,
        // alive on its stack for the whole call and referenced by nothing else meanwhile.
        let call = unsafe { &mut *data.cast::<Call<G, S>>() };
        if let Some(f) = call.f.take() {
            call.result = Some(f());
        }
    }
    let mut call = Call {
        f: Some(f),
        result: None,
    };
    let state = slot.state.get();
    // `SlotState` is `repr(C)` with the context first.
    let ctx = state.cast::<Context>();
    // A call inside another contained call (an MSR probe inside a partition's exit handling):
    // the outer recovery point is kept here and put back afterwards, so a fault after the
    // inner call returns still ends the outer one.
    let outer = if slot.armed.load(Ordering::Acquire) {
        // SAFETY: only this core reads or writes its slot's context.
        Some(unsafe { *ctx })
    } else {
        None
    };
    slot.armed.store(true, Ordering::Release);
    // SAFETY: `ctx` is this core's context, valid for writes; `trampoline::<F, R>` matches the
    // `Call<F, R>` behind `data`. If the call comes back through `atoll_contain_resume`, it
    // restores exactly the callee-saved registers and stack pointer saved here, so this frame
    // and everything above it are intact.
    let resumed = unsafe {
        atoll_contain_call(
            ctx,
            trampoline::<F, R>,
            core::ptr::addr_of_mut!(call).cast(),
        )
    };
    match outer {
        Some(o) => {
            // SAFETY: as above: this core's own context, written back before re-arming.
            unsafe { *ctx = o };
            slot.armed.store(true, Ordering::Release);
        }
        None => slot.armed.store(false, Ordering::Release),
    }
    if resumed == 0 {
        if let Some(r) = call.result {
            return Ok(r);
        }
    }
    // The closure never finished: its fields were left as the fault found them. Forget them
    // rather than run destructors over state a fault interrupted.
    core::mem::forget(call);
    // SAFETY: the recovery path wrote the failure on this core before jumping back here;
    // nothing else touches the slot.
    Err(unsafe { (*state).failure.clone() })
}

/// Called first by the panic and exception handlers: if this core has a recovery point armed,
/// records `what` and returns there (never coming back); otherwise returns so the caller stops
/// the machine.
pub fn recover(what: core::fmt::Arguments) {
    let id = this_apic_id();
    let Some(slot) = SLOTS
        .iter()
        .find(|s| s.apic_id.load(Ordering::Acquire) == id)
    else {
        return;
    };
    if !slot.armed.swap(false, Ordering::AcqRel) {
        return;
    }
    let state = slot.state.get();
    // SAFETY: this core owns the slot and the fault interrupted the only code that borrows
    // its state (`contained`, which is waiting for `atoll_contain_call` to return).
    let failure = unsafe { &mut (*state).failure };
    failure.set(what);
    // `SlotState` is `repr(C)` with the context first.
    let ctx = state.cast::<Context>().cast_const();
    // SAFETY: the context was saved by `atoll_contain_call` on this core, whose frame is still
    // live (the recovery point was armed), so resuming there is returning from that call.
    unsafe { atoll_contain_resume(ctx) }
}
