//! The VMX backend of the vendor-neutral vCPU (Intel VT-x with EPT and unrestricted guest).
//!
//! [`VmxVcpu::new`] takes VMX root on the calling core (once), builds and loads a VMCS for one
//! enclave vCPU from its [`BootState`], its EPT pointer and atoll's MSR/I/O interception policy,
//! and [`VmxVcpu::run`] enters the guest and turns the VM exit into a neutral [`Exit`]. Only this
//! module (and the `vmx` crate) knows VMX encodings.

use crate::partition::config::EntryMode;
use crate::partition::loader::BootState;
use crate::run::exits::PASSTHROUGH_MSRS;
use alloc::boxed::Box;
use atoll_vcpu::double_fault::{self, Combined};
use atoll_vcpu::{CpuidTable, Exit, Gpr, Vcpu, VcpuError};
use boot::HostPhysAddr;
use core::cell::Cell;
use vmx::controls::{
    ControlSet, EntryControls, ExitControls, PinBasedControls, PrimaryControls, SecondaryControls,
    Want, Wanted,
};
use vmx::exit::{BasicExitReason, InterruptionInfo, InterruptionType, Redelivery};
use vmx::fields::{Field, Field16, Field32, Field64, FieldNatural, VmcsAccess};
use vmx::guest_state::{ActivityState, Interruptibility};
use vmx::instructions as vi;
use vmx::run::{vm_enter, GuestRegisters};
use vmx::vmxon::FixedBits;

use super::msr::HwMsrs;

/// A 4 KiB page-aligned frame atoll keeps for the CPU (VMXON region, VMCS, bitmaps).
#[repr(C, align(4096))]
struct Page([u8; 4096]);

impl Page {
    fn new(fill: u8) -> Box<Self> {
        Box::new(Page([fill; 4096]))
    }
    /// Identity-mapped: the heap lives in atoll's image, where virtual equals physical.
    fn phys(&self) -> HostPhysAddr {
        HostPhysAddr::new(self as *const Page as u64)
    }
}

/// What went wrong in the VMX backend: making a vCPU, entering it, or reading what its exit
/// reports. Every variant ends the enclave (`EndReason::Failed` takes its text).
#[derive(Debug)]
pub enum VmxError {
    /// Entering VMX operation failed.
    VmxOn(vmx::vmxon::VmxOnError),
    /// The CPU lacks a control atoll needs.
    Controls(vmx::controls::ControlError),
    /// A VMX instruction failed while the VMCS was built.
    Instruction(&'static str, vmx::VmFail),
    /// INVEPT failed.
    Invept,
    /// VMLAUNCH or VMRESUME failed (VMfailValid carries the VM-instruction error number, SDM
    /// Vol. 3C §31.4): the guest never ran.
    Entry(vmx::VmFail),
    /// A VMREAD of the exit information failed: the exit is unknown.
    Exit(vmx::translate::TranslateError),
    /// A VMREAD or VMWRITE of guest state failed while an exit was handled; the value the
    /// handler saw (0 for a read) never reaches the guest, which is not entered again.
    Vmcs {
        /// "VMREAD" or "VMWRITE".
        op: &'static str,
        /// The field's encoding (SDM Vol. 3D Appendix B).
        encoding: u32,
        /// How the instruction failed.
        error: vmx::VmFail,
    },
}

impl core::fmt::Display for VmxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmxError::VmxOn(e) => write!(f, "VMXON: {e}"),
            VmxError::Controls(e) => write!(f, "VMX controls: {e}"),
            VmxError::Instruction(what, e) => write!(f, "{what}: {e}"),
            VmxError::Invept => write!(f, "INVEPT (single context) failed"),
            VmxError::Entry(e) => write!(f, "VM entry failed: {e}"),
            VmxError::Exit(e) => write!(f, "reading the VM exit: {e}"),
            VmxError::Vmcs {
                op,
                encoding,
                error,
            } => {
                write!(f, "{op} of ")?;
                match Field::from_encoding(*encoding) {
                    Some(field) => vmx::translate::write_field(f, field)?,
                    None => write!(f, "field {encoding:#06x}")?,
                }
                write!(f, " failed: {error}")
            }
        }
    }
}

fn vmw(what: &'static str, r: Result<(), vmx::VmFail>) -> Result<(), VmxError> {
    r.map_err(|e| VmxError::Instruction(what, e))
}

/// Per-core VMX state: the VMXON region and host tables, made once per core.
pub struct CoreState {
    _vmxon: Box<Page>,
    gdt_base: u64,
    tss_base: u64,
}

impl CoreState {
    /// Enters VMX operation on this core; the host state takes the core's own GDT and TSS
    /// ([`super::core_tables`], installed at boot).
    pub fn enable() -> Result<Self, VmxError> {
        let (gdt_base, tss_base) = super::core_tables::current_bases();
        super::enable_osxsave();
        let mut vmxon = Page::new(0);
        let phys = vmxon.phys();
        // SAFETY: the region is a page of our own, identity-mapped, kept for the life of the
        // core (the CoreState is never dropped); this core has VMX (checked by the caller).
        unsafe { vmx::vmxon::enable_vmx(&mut HwMsrs, phys, vmxon.0.as_mut_ptr()) }
            .map_err(VmxError::VmxOn)?;
        Ok(Self {
            _vmxon: vmxon,
            gdt_base,
            tss_base,
        })
    }
}

/// What atoll asks of the VMX controls.
fn wanted() -> Wanted {
    let mut w = Wanted::ATOLL_BASELINE;
    // XSAVES would need the XSS-exiting bitmap programmed; guests do not need it yet.
    w.secondary = Want::new(
        w.secondary.required,
        w.secondary
            .optional
            .difference(SecondaryControls::ENABLE_XSAVES),
    );
    // Interrupt-window exiting is switched on and off at run time by
    // `request_interrupt_window`; requiring it here checks that the processor allows it
    // (allowed-1 setting, SDM Vol. 3D §A.3.2; every VMX implementation does) and names it if
    // not. `VmxVcpu::new` clears it again before the VMCS is written.
    w.primary = Want::new(
        w.primary
            .required
            .union(PrimaryControls::INTERRUPT_WINDOW_EXITING),
        w.primary.optional,
    );
    // Acknowledge host interrupts on exit so the vector is known (and EOI'd by atoll).
    w.exit = Want::new(
        w.exit.required,
        w.exit
            .optional
            .union(ExitControls::ACKNOWLEDGE_INTERRUPT_ON_EXIT),
    );
    w
}

/// Executes an IRET to the next instruction on the same stack, in the same mode: the only way
/// to end NMI blocking without taking an NMI (SDM Vol. 3A §6.7.1).
fn unblock_nmis() {
    // SAFETY: builds a 64-bit IRET frame (SS 0x10, the current RSP, RFLAGS, CS 0x08, the label)
    // with atoll's own selectors (core_tables' GDT: flat code 0x08, data 0x10), so IRETQ
    // returns to the label with every register and the stack as they were.
    unsafe {
        core::arch::asm!(
            "mov {tmp}, rsp",
            "push 0x10",
            "push {tmp}",
            "pushfq",
            "push 0x08",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "iretq",
            "2:",
            tmp = out(reg) _,
        );
    }
}

/// Access-rights values (SDM Vol. 3C §25.4.1 Table 25-2).
mod ar {
    pub const CODE64: u32 = 0xa09b; // G, L, P, S, type 11 (execute/read, accessed)
    pub const DATA: u32 = 0xc093; // G, D/B, P, S, type 3 (read/write, accessed)
    pub const REAL_CODE: u32 = 0x9b;
    pub const REAL_DATA: u32 = 0x93;
    pub const TSS_BUSY64: u32 = 0x8b;
    pub const UNUSABLE: u32 = 1 << 16;
}

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_IF: u64 = 1 << 9;

/// One enclave vCPU on VMX.
pub struct VmxVcpu {
    regs: GuestRegisters,
    launched: bool,
    _vmcs: Box<Page>,
    _msr_bitmap: Box<Page>,
    _io_bitmaps: [Box<Page>; 2],
    /// The control values in the VMCS; `entry` follows the guest's long mode, `primary` the
    /// interrupt-window request.
    controls: ControlSet,
    cr0_mask: u64,
    cr4_mask: u64,
    exit_len: u64,
    /// An exception raised on top of a queued #DF: the guest is shut down, the next `run`
    /// reports a triple fault without entering it.
    shutdown: bool,
    /// The guest's CR8: CR8 loads and stores exit (the real TPR stays the host's), so the value
    /// lives here.
    cr8: u64,
    /// The first VMREAD or VMWRITE that failed in an accessor that cannot return an error
    /// (the [`Vcpu`] methods), as `FAULT_NOTED | (write << 30) | encoding`, 0 if none: the
    /// next `run` reports it instead of entering the guest. A word rather than the error
    /// keeps the check on every exit to one compare.
    fault: Cell<u32>,
}

/// How many CPUID exits in a row [`VmxVcpu::run_fast`] answers before the next goes to its
/// caller: the caller's checks run at least once per this many (a guest spinning on CPUID is
/// stopped as promptly as one that exits otherwise). Its cost is one slow round trip in 64:
/// the guest suite's mean CPUID went from 284 to 295 cycles on Bochs, the median not at all.
pub const FAST_CPUID_BURST: u32 = 64;

/// Exceptions that exit instead of being delivered through the guest's IDT (SDM Vol. 3C
/// §25.6.3): #DB (1) and #AC (17), whose delivery a guest can make raise the same exception
/// again forever inside the processor (CVE-2015-8104, CVE-2015-5307); intercepted, each
/// delivery is an exit and atoll reflects it (`crate::run::deny::reflect_exception`).
const EXCEPTION_BITMAP: u32 = (1 << 1) | (1 << 17);

/// Bit 31 of `VmxVcpu::fault`: an access failed (encoding 0 is a field too).
const FAULT_NOTED: u32 = 1 << 31;

impl VmxVcpu {
    /// Builds the VMCS for a vCPU starting in `boot`, with second-stage tables `eptp`.
    pub fn new(
        core: &CoreState,
        boot: &BootState,
        eptp: ept::Eptp,
        vpid: u16,
    ) -> Result<Self, VmxError> {
        let mut controls =
            ControlSet::compute(&mut HwMsrs, &wanted()).map_err(VmxError::Controls)?;
        if boot.mode == EntryMode::Long64 {
            controls.entry |= EntryControls::IA32E_MODE_GUEST;
        }
        // Off until asked for; it is never a must-be-1 control (it is not among the default-1
        // bits, SDM Vol. 3D §A.3.2), so 0 is always allowed.
        controls
            .primary
            .remove(PrimaryControls::INTERRUPT_WINDOW_EXITING);
        let fixed = FixedBits::read(&mut HwMsrs).map_err(VmxError::VmxOn)?;
        let mut vmcs = Page::new(0);
        let basic = vmx::caps::MsrReader::read(&mut HwMsrs, vmx::msr::IA32_VMX_BASIC).unwrap_or(0);
        // SAFETY: our own page; the revision identifier goes in its first four bytes.
        unsafe { vmx::vmxon::write_revision_id(vmcs.0.as_mut_ptr(), (basic & 0x7fff_ffff) as u32) };
        // SAFETY: the VMCS page is ours, 4 KiB aligned, identity-mapped and kept while the vCPU
        // lives; this core is in VMX operation.
        vmw("VMCLEAR", unsafe { vi::vmclear(vmcs.phys()) })?;
        // SAFETY: the same page, just cleared (launch state clear, as VMPTRLD wants); it
        // becomes this core's current VMCS.
        vmw("VMPTRLD", unsafe { vi::vmptrld(vmcs.phys()) })?;

        // Every port exits; every MSR exits except the pass-through ones (SDM Vol. 3C §25.6.9).
        let io = [Page::new(0xff), Page::new(0xff)];
        let mut msr = Page::new(0xff);
        for &m in PASSTHROUGH_MSRS {
            let (base, index) = match m {
                0..=0x1fff => (0usize, m as usize),
                0xc000_0000..=0xc000_1fff => (0x400, (m - 0xc000_0000) as usize),
                _ => continue,
            };
            for rw in [0, 0x800] {
                msr.0[base + rw + index / 8] &= !(1 << (index % 8));
            }
        }
        // The core's guest-reachable registers back to reset values (a core may have run
        // another partition before).
        super::guest_state::reset();

        // Bits VMX fixes in CR0/CR4 are the host's; unrestricted guest frees PE and PG.
        let cr0_mask = (fixed.cr0_fixed0 | !fixed.cr0_fixed1) & !(CR0_PE | CR0_PG);
        let cr4_mask = fixed.cr4_fixed0 | !fixed.cr4_fixed1;
        let guest_cr0 = (boot.cr0 | (fixed.cr0_fixed0 & !(CR0_PE | CR0_PG)))
            & (fixed.cr0_fixed1 | CR0_PE | CR0_PG);
        let guest_cr4 = (boot.cr4 | fixed.cr4_fixed0) & fixed.cr4_fixed1;

        let w16 = |f, v| vmw("VMWRITE", vi::write16(f, v));
        let w32 = |f, v| vmw("VMWRITE", vi::write32(f, v));
        let w64 = |f, v| vmw("VMWRITE", vi::write64(f, v));
        let wn = |f, v| vmw("VMWRITE", vi::write_natural(f, v));

        vmw("VMWRITE controls", controls.write(&mut vi::CurrentVmcs))?;
        w32(Field32::ExceptionBitmap, EXCEPTION_BITMAP)?;
        w32(Field32::PageFaultErrorCodeMask, 0)?;
        w32(Field32::PageFaultErrorCodeMatch, 0)?;
        w32(Field32::Cr3TargetCount, 0)?;
        w32(Field32::VmExitMsrStoreCount, 0)?;
        w32(Field32::VmExitMsrLoadCount, 0)?;
        w32(Field32::VmEntryMsrLoadCount, 0)?;
        w32(Field32::VmEntryInterruptionInformation, 0)?;
        w64(Field64::IoBitmapA, io[0].phys().as_u64())?;
        w64(Field64::IoBitmapB, io[1].phys().as_u64())?;
        w64(Field64::MsrBitmaps, msr.phys().as_u64())?;
        w64(Field64::EptPointer, eptp.as_u64())?;
        // Tables built before this vCPU existed may share an EPTP value with an earlier,
        // destroyed enclave: drop whatever the TLBs still hold for it.
        ept::invept::invept_single_context(eptp).map_err(|_| VmxError::Invept)?;
        w64(Field64::TscOffset, 0)?;
        if controls
            .secondary
            .is_some_and(|s| s.contains(SecondaryControls::ENABLE_VPID))
        {
            w16(Field16::VirtualProcessorIdentifier, vpid)?;
        }
        wn(FieldNatural::Cr0GuestHostMask, cr0_mask)?;
        wn(FieldNatural::Cr4GuestHostMask, cr4_mask)?;
        wn(FieldNatural::Cr0ReadShadow, boot.cr0)?;
        wn(FieldNatural::Cr4ReadShadow, boot.cr4)?;

        // Host state: this core as it runs now.
        let (cr0, cr3, cr4): (u64, u64, u64);
        let mut idtr = [0u8; 10];
        // SAFETY: reading a control register at CPL 0 has no side effects.
        unsafe { core::arch::asm!("mov {}, cr0", out(reg) cr0) };
        // SAFETY: as for CR0.
        unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3) };
        // SAFETY: as for CR0.
        unsafe { core::arch::asm!("mov {}, cr4", out(reg) cr4) };
        // SAFETY: SIDT stores 10 bytes (limit, base), exactly the size of `idtr`, which we own.
        unsafe { core::arch::asm!("sidt [{}]", in(reg) idtr.as_mut_ptr()) };
        let idt_base = u64::from_le_bytes(idtr[2..10].try_into().unwrap_or([0; 8]));
        wn(FieldNatural::HostCr0, cr0)?;
        wn(FieldNatural::HostCr3, cr3)?;
        wn(FieldNatural::HostCr4, cr4)?;
        w16(Field16::HostCsSelector, 0x08)?;
        for f in [
            Field16::HostSsSelector,
            Field16::HostDsSelector,
            Field16::HostEsSelector,
        ] {
            w16(f, 0x10)?;
        }
        w16(Field16::HostFsSelector, 0)?;
        w16(Field16::HostGsSelector, 0)?;
        w16(Field16::HostTrSelector, super::core_tables::TSS_SELECTOR)?;
        wn(FieldNatural::HostFsBase, 0)?;
        wn(FieldNatural::HostGsBase, 0)?;
        wn(FieldNatural::HostTrBase, core.tss_base)?;
        wn(FieldNatural::HostGdtrBase, core.gdt_base)?;
        wn(FieldNatural::HostIdtrBase, idt_base)?;
        w32(Field32::HostIa32SysenterCs, 0)?;
        wn(FieldNatural::HostIa32SysenterEsp, 0)?;
        wn(FieldNatural::HostIa32SysenterEip, 0)?;
        let mut m = HwMsrs;
        let host_efer = vmx::caps::MsrReader::read(&mut m, vmx::msr::Msr(0xc000_0080))
            .unwrap_or(EFER_LME | EFER_LMA);
        let host_pat = vmx::caps::MsrReader::read(&mut m, vmx::msr::Msr(0x277))
            .unwrap_or(0x0007_0406_0007_0406);
        w64(Field64::HostIa32Efer, host_efer)?;
        w64(Field64::HostIa32Pat, host_pat)?;

        // Guest state.
        wn(FieldNatural::GuestCr0, guest_cr0)?;
        wn(FieldNatural::GuestCr3, boot.cr3)?;
        wn(FieldNatural::GuestCr4, guest_cr4)?;
        wn(FieldNatural::GuestDr7, 0x400)?;
        wn(FieldNatural::GuestRflags, 0x2)?;
        wn(FieldNatural::GuestRsp, boot.rsp)?;
        wn(FieldNatural::GuestPendingDebugExceptions, 0)?;
        w64(Field64::GuestIa32Efer, boot.efer)?;
        w64(Field64::GuestIa32Pat, 0x0007_0406_0007_0406)?;
        w64(Field64::GuestIa32Debugctl, 0)?;
        w64(Field64::VmcsLinkPointer, u64::MAX)?;
        w32(Field32::GuestInterruptibilityState, 0)?;
        // Active, and it stays so: HLT exits and is skipped, atoll never loads the HLT state.
        w32(Field32::GuestActivityState, ActivityState::Active.raw())?;
        w32(Field32::GuestIa32SysenterCs, 0)?;
        wn(FieldNatural::GuestIa32SysenterEsp, 0)?;
        wn(FieldNatural::GuestIa32SysenterEip, 0)?;
        let segs = [
            (
                Field16::GuestEsSelector,
                Field32::GuestEsLimit,
                Field32::GuestEsAccessRights,
                FieldNatural::GuestEsBase,
            ),
            (
                Field16::GuestSsSelector,
                Field32::GuestSsLimit,
                Field32::GuestSsAccessRights,
                FieldNatural::GuestSsBase,
            ),
            (
                Field16::GuestDsSelector,
                Field32::GuestDsLimit,
                Field32::GuestDsAccessRights,
                FieldNatural::GuestDsBase,
            ),
            (
                Field16::GuestFsSelector,
                Field32::GuestFsLimit,
                Field32::GuestFsAccessRights,
                FieldNatural::GuestFsBase,
            ),
            (
                Field16::GuestGsSelector,
                Field32::GuestGsLimit,
                Field32::GuestGsAccessRights,
                FieldNatural::GuestGsBase,
            ),
        ];
        match boot.mode {
            EntryMode::Long64 | EntryMode::Linux => {
                w16(Field16::GuestCsSelector, boot.cs_selector)?;
                w32(Field32::GuestCsLimit, 0xffff_ffff)?;
                w32(Field32::GuestCsAccessRights, ar::CODE64)?;
                wn(FieldNatural::GuestCsBase, 0)?;
                for (sel, lim, acc, base) in segs {
                    w16(sel, boot.ds_selector)?;
                    w32(lim, 0xffff_ffff)?;
                    w32(acc, ar::DATA)?;
                    wn(base, 0)?;
                }
                wn(FieldNatural::GuestRip, boot.rip)?;
            }
            EntryMode::Real16 => {
                let cs_base = u64::from(boot.cs_selector) << 4;
                w16(Field16::GuestCsSelector, boot.cs_selector)?;
                w32(Field32::GuestCsLimit, 0xffff)?;
                w32(Field32::GuestCsAccessRights, ar::REAL_CODE)?;
                wn(FieldNatural::GuestCsBase, cs_base)?;
                for (sel, lim, acc, base) in segs {
                    w16(sel, 0)?;
                    w32(lim, 0xffff)?;
                    w32(acc, ar::REAL_DATA)?;
                    wn(base, 0)?;
                }
                wn(FieldNatural::GuestRip, boot.rip.wrapping_sub(cs_base))?;
            }
        }
        w16(Field16::GuestLdtrSelector, 0)?;
        w32(Field32::GuestLdtrLimit, 0)?;
        w32(Field32::GuestLdtrAccessRights, ar::UNUSABLE)?;
        wn(FieldNatural::GuestLdtrBase, 0)?;
        w16(Field16::GuestTrSelector, 0)?;
        w32(Field32::GuestTrLimit, 0xffff)?;
        w32(Field32::GuestTrAccessRights, ar::TSS_BUSY64)?;
        wn(FieldNatural::GuestTrBase, 0)?;
        wn(FieldNatural::GuestGdtrBase, boot.gdt.0)?;
        w32(Field32::GuestGdtrLimit, boot.gdt.1.into())?;
        wn(FieldNatural::GuestIdtrBase, 0)?;
        w32(Field32::GuestIdtrLimit, 0xffff)?;

        let regs = GuestRegisters {
            rdi: boot.rdi,
            rsi: boot.rsi,
            rdx: boot.rdx,
            ..Default::default()
        };
        Ok(Self {
            regs,
            launched: false,
            _vmcs: vmcs,
            _msr_bitmap: msr,
            _io_bitmaps: io,
            controls,
            cr0_mask,
            cr4_mask,
            exit_len: 0,
            shutdown: false,
            cr8: 0,
            fault: Cell::new(0),
        })
    }

    /// Builds a vCPU of the root partition (the host's Linux), the Jailhouse model as on SVM
    /// (`SvmVcpu::new_host`): its device interrupts reach it directly (no external-interrupt
    /// exiting), and HLT, MWAIT/MONITOR, CR8 (the physical TPR) and WBINVD are its own. NMI
    /// exiting stays (atoll's signal to a host core); only the ports in `ports` exit; every MSR
    /// exits but `passthrough_msrs` and the enclaves' pass-through set (SDM Vol. 3C §25.6.9).
    pub fn new_host(
        core: &CoreState,
        boot: &BootState,
        eptp: ept::Eptp,
        vpid: u16,
        ports: &[core::ops::RangeInclusive<u16>],
        passthrough_msrs: &[u32],
    ) -> Result<Self, VmxError> {
        let mut v = Self::new(core, boot, eptp, vpid)?;
        v.controls
            .pin
            .remove(PinBasedControls::EXTERNAL_INTERRUPT_EXITING);
        v.controls.primary.remove(
            PrimaryControls::HLT_EXITING
                | PrimaryControls::CR8_LOAD_EXITING
                | PrimaryControls::CR8_STORE_EXITING
                | PrimaryControls::MWAIT_EXITING
                | PrimaryControls::MONITOR_EXITING,
        );
        if let Some(s) = v.controls.secondary.as_mut() {
            s.remove(SecondaryControls::WBINVD_EXITING);
        }
        // The VMCS built by `new` is still this core's current one.
        vmw("VMWRITE controls", v.controls.write(&mut vi::CurrentVmcs))?;
        // I/O bitmap A covers ports 0-0x7fff, B 0x8000-0xffff; a set bit exits (§25.6.4).
        for page in v._io_bitmaps.iter_mut() {
            page.0.fill(0);
        }
        for r in ports {
            for port in r.clone() {
                let (page, bit) = (usize::from(port >> 15), usize::from(port & 0x7fff));
                v._io_bitmaps[page].0[bit / 8] |= 1 << (bit % 8);
            }
        }
        for &m in passthrough_msrs {
            let (base, index) = match m {
                0..=0x1fff => (0usize, m as usize),
                0xc000_0000..=0xc000_1fff => (0x400, (m - 0xc000_0000) as usize),
                _ => continue,
            };
            for rw in [0, 0x800] {
                v._msr_bitmap.0[base + rw + index / 8] &= !(1 << (index % 8));
            }
        }
        Ok(v)
    }

    /// Enters the guest until its next exit. Fails, without entering, if an earlier VMCS
    /// access failed (see `fault`); fails if the entry fails or the exit cannot be read.
    pub fn run(&mut self) -> Result<Exit, VmxError> {
        self.run_fast(&CpuidTable::EMPTY, || {})
    }

    /// [`Self::run`] with the CPUID fast path: a CPUID exit whose leaf `cpuid` answers is
    /// handled right here (EAX-EDX from the table, RIP past the instruction, `counted` called
    /// once) and the guest entered again, without translating the exit or returning to the
    /// caller. Every other exit returns as from `run`.
    ///
    /// Skipping the caller for those exits changes nothing it would do: a CPUID reads no state
    /// the caller keeps, and whatever asks for the caller's attention meanwhile (a stop, a
    /// mailbox message, a timer, a device) arrives as an interrupt or NMI, which is an exit
    /// of its own (external-interrupt and NMI exiting are always on). The caller is not
    /// trusted to be woken that way alone: at most [`FAST_CPUID_BURST`] CPUIDs in a row are
    /// answered here, the next goes to the caller, so its checks (the stop, the mailbox, the
    /// deadline) run at least that often whatever the guest does. (On Bochs a guest spinning
    /// on CPUID with interrupts masked was never stopped without this bound: the timer
    /// interrupt meant to stop it at the deadline never made it exit.)
    pub fn run_fast(
        &mut self,
        cpuid: &CpuidTable,
        mut counted: impl FnMut(),
    ) -> Result<Exit, VmxError> {
        let reason_raw;
        let mut burst = 0;
        loop {
            if self.fault.get() != 0 {
                return Err(self.noted_fault());
            }
            if self.shutdown {
                return Ok(Exit::TripleFault);
            }
            // SAFETY: this vCPU's VMCS is current on this core (loaded in `new`, never cleared
            // while the vCPU lives) and fully initialized; the register block is ours.
            unsafe { vm_enter(&mut self.regs, self.launched) }.map_err(VmxError::Entry)?;
            self.launched = true;
            let reason =
                vmx::translate::exit_reason(&mut vi::CurrentVmcs).map_err(VmxError::Exit)?;
            if burst == FAST_CPUID_BURST || !self.answer_cpuid(reason, cpuid) {
                reason_raw = reason;
                break;
            }
            burst += 1;
            counted();
        }
        let t = vmx::translate::translate_reason(&mut vi::CurrentVmcs, reason_raw)
            .map_err(VmxError::Exit)?;
        self.exit_len = u64::from(t.instruction_length);
        if !t.entry_failure {
            self.requeue_interrupted_event(t.redelivery);
        }
        if t.exit == Exit::InterruptWindow {
            // One exit per request (as on SVM): the caller asks again if it still needs one.
            self.request_interrupt_window(false);
        }
        if let Some(q) = t.follow_up.debug_qualification {
            // DR6 is the guest's on this core; the exit left it unchanged.
            let dr6 = vmx::exit::dr6_after_debug_exit(super::guest_state::dr6(), q);
            super::guest_state::set_dr6(dr6);
        }
        if t.follow_up.step_over_int1 {
            // INT1 (ICEBP) is a trap: the #DB it raises returns past it. RIP still points at it
            // (SDM Vol. 3C §28.1), so step over it and deliver the #DB as a hardware exception
            // from there.
            self.skip_instruction();
        }
        if t.follow_up.reblock_nmi && self.controls.pin.contains(PinBasedControls::VIRTUAL_NMIS) {
            // The guest's IRET lifted virtual-NMI blocking and then faulted: it executes
            // again, so blocking must be restored (SDM Vol. 3C §28.2.3).
            let intr = self.interruptibility() | Interruptibility::BLOCKING_BY_NMI;
            self.vmwrite(Field32::GuestInterruptibilityState, intr.bits().into());
        }
        if t.exit == Exit::Nmi {
            // An NMI that caused a VM exit leaves NMIs blocked in VMX root operation until the
            // next IRET (SDM Vol. 3C §27.5.5, "blocking by NMI"): without one, atoll's next NMI
            // to this core (a stop, the host's INIT) would never arrive.
            unblock_nmis();
        }
        // A failed VMREAD or VMWRITE above: the exit's bookkeeping is incomplete.
        if self.fault.get() != 0 {
            return Err(self.noted_fault());
        }
        Ok(t.exit)
    }

    /// The fast path of [`Self::run_fast`]: if the exit (its exit-reason field `reason`) was a
    /// CPUID whose leaf `table` answers, puts the answer in EAX-EDX (upper halves zero, as
    /// CPUID does) and moves RIP past the instruction. The exit reason must be exactly CPUID's: basic reason 10 with no
    /// flag bits (no VM-entry failure, SDM Vol. 3C §25.9.1). A CPUID exit never interrupts
    /// an event's delivery (its IDT-vectoring information is invalid), so nothing is queued
    /// again; the entry-interruption field is cleared as after any exit with nothing to
    /// deliver again.
    #[inline(always)]
    fn answer_cpuid(&mut self, reason: u32, table: &CpuidTable) -> bool {
        if reason != u32::from(BasicExitReason::Cpuid.number()) {
            return false;
        }
        let Some([a, b, c, d]) = table.get(self.regs.rax as u32) else {
            return false;
        };
        self.regs.rax = a.into();
        self.regs.rbx = b.into();
        self.regs.rcx = c.into();
        self.regs.rdx = d.into();
        self.exit_len = self.vmread(Field32::VmExitInstructionLength);
        self.vmwrite(Field32::VmEntryInterruptionInformation, 0);
        self.skip_instruction();
        true
    }

    /// Reads `field` for an accessor that cannot fail: a failed VMREAD is noted in `fault`
    /// (the next `run` reports it and does not enter the guest) and reads as 0 meanwhile.
    ///
    /// Inlined, with the failure out of line: in Bochs an exit costs a cycle per instruction
    /// on its path, and the CPUID round trip is one of the measured figures.
    #[inline(always)]
    fn vmread(&self, field: impl Into<Field>) -> u64 {
        let field = field.into();
        match vi::CurrentVmcs.read(field) {
            Ok(v) => v,
            Err(_) => {
                self.note(field, false);
                0
            }
        }
    }

    /// Writes `field`; a failed VMWRITE is noted as for [`Self::vmread`].
    #[inline(always)]
    fn vmwrite(&self, field: impl Into<Field>, value: u64) {
        let field = field.into();
        if vi::CurrentVmcs.write(field, value).is_err() {
            self.note(field, true);
        }
    }

    /// Keeps the first failed access. The error itself is in the VM-instruction-error field
    /// (VMfailValid) until a later failure overwrites it; `noted_fault` reads it.
    #[cold]
    #[inline(never)]
    fn note(&self, field: Field, write: bool) {
        if self.fault.get() == 0 {
            self.fault
                .set(FAULT_NOTED | (u32::from(write) << 30) | field.encoding());
        }
    }

    /// The access `note` kept, as an error; called when `fault` is not 0. The
    /// VM-instruction-error field still holds the number of a VMfailValid (successful
    /// instructions leave it alone, SDM Vol. 3C §31.4); if it cannot be read, there is no
    /// current VMCS (VMfailInvalid).
    #[cold]
    fn noted_fault(&self) -> VmxError {
        let tag = self.fault.replace(0);
        let error = match vi::read32(Field32::VmInstructionError) {
            Ok(n) => vmx::VmFail::Valid(vmx::VmInstructionError::from_raw(n)),
            Err(_) => vmx::VmFail::Invalid,
        };
        VmxError::Vmcs {
            op: if tag & (1 << 30) != 0 {
                "VMWRITE"
            } else {
                "VMREAD"
            },
            encoding: tag & 0x7fff,
            error,
        }
    }

    /// Queues for the next entry the event whose delivery the last exit interrupted, if any
    /// (SDM Vol. 3C §28.2.4, §27.6): the IDT-vectoring information goes to the VM-entry
    /// interruption information, with its error code and, for software interrupts and
    /// exceptions, the instruction length. Without one, the VM-entry field is cleared: every VM
    /// exit clears its valid bit already (§25.8.3), so an event injected for the last entry is
    /// never injected twice; writing 0 just does not depend on it.
    fn requeue_interrupted_event(&mut self, redelivery: Option<Redelivery>) {
        let Some(r) = redelivery else {
            self.vmwrite(Field32::VmEntryInterruptionInformation, 0);
            return;
        };
        if let Some(code) = r.error_code {
            self.vmwrite(Field32::VmEntryExceptionErrorCode, code.into());
        }
        if let Some(len) = r.instruction_length {
            self.vmwrite(Field32::VmEntryInstructionLength, len.into());
        }
        self.vmwrite(
            Field32::VmEntryInterruptionInformation,
            r.info.to_raw().into(),
        );
    }

    /// The event queued for the next entry, if any.
    fn queued_event(&self) -> Option<InterruptionInfo> {
        let info =
            InterruptionInfo::from_raw(self.vmread(Field32::VmEntryInterruptionInformation) as u32);
        info.valid.then_some(info)
    }

    fn interruptibility(&self) -> Interruptibility {
        Interruptibility::from_bits_retain(self.vmread(Field32::GuestInterruptibilityState) as u32)
    }

    fn sync_long_mode(&mut self) {
        // IA32_EFER.LMA follows LME and CR0.PG; the entry control must match it (SDM Vol. 3C
        // §27.3.2.1).
        let efer = self.vmread(Field64::GuestIa32Efer);
        let pg = self.vmread(FieldNatural::GuestCr0) & CR0_PG != 0;
        let lma = efer & EFER_LME != 0 && pg;
        let new_efer = if lma {
            efer | EFER_LMA
        } else {
            efer & !EFER_LMA
        };
        self.vmwrite(Field64::GuestIa32Efer, new_efer);
        if lma {
            self.controls.entry |= EntryControls::IA32E_MODE_GUEST;
        } else {
            // `remove`, not `&= !`: the complement of a flag would drop the unnamed default-1 bits.
            self.controls.entry.remove(EntryControls::IA32E_MODE_GUEST);
        }
        self.vmwrite(
            Field32::VmEntryControls,
            u64::from(self.controls.entry.bits()),
        );
    }
}

impl Vcpu for VmxVcpu {
    fn gpr(&self, r: Gpr) -> u64 {
        if r == Gpr::Rsp {
            return self.vmread(FieldNatural::GuestRsp);
        }
        self.regs.gpr(r).unwrap_or(0)
    }

    fn set_gpr(&mut self, r: Gpr, v: u64) {
        if r == Gpr::Rsp {
            self.vmwrite(FieldNatural::GuestRsp, v);
            return;
        }
        if let Some(slot) = self.regs.gpr_mut(r) {
            *slot = v;
        }
    }

    fn rip(&self) -> u64 {
        self.vmread(FieldNatural::GuestRip)
    }

    fn set_rip(&mut self, rip: u64) {
        self.vmwrite(FieldNatural::GuestRip, rip);
        // Moving past the instruction ends blocking by STI or MOV SS (SDM Vol. 3C §25.4.2).
        // Written only when there is a shadow to end: most exits have none, and every VMCS
        // access is a measured cost on the exit path.
        let intr = self.interruptibility();
        if intr.intersects(Interruptibility::SHADOW) {
            let intr = intr.difference(Interruptibility::SHADOW);
            self.vmwrite(Field32::GuestInterruptibilityState, u64::from(intr.bits()));
        }
    }

    fn skip_instruction(&mut self) {
        self.set_rip(self.rip().wrapping_add(self.exit_len));
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        // A queued event is one whose delivery the exit interrupted (handlers inject at most
        // once per exit); the exception arose from that delivery and combines with it as on
        // the processor (SDM Vol. 3A §6.15, see `atoll_vcpu::double_fault`).
        let queued = self
            .queued_event()
            .filter(|e| e.kind == InterruptionType::HardwareException)
            .map(|e| e.vector);
        let (vector, error_code) = match double_fault::combine(queued, vector) {
            Combined::New => (vector, error_code),
            Combined::DoubleFault => (double_fault::DOUBLE_FAULT, Some(0)),
            Combined::Shutdown => {
                self.vmwrite(Field32::VmEntryInterruptionInformation, 0);
                self.shutdown = true;
                return;
            }
        };
        // Real mode delivers no error code (SDM Vol. 3C §27.2.1.3).
        let protected = self.vmread(FieldNatural::GuestCr0) & CR0_PE != 0;
        let code = error_code.filter(|_| protected);
        if let Some(c) = code {
            self.vmwrite(Field32::VmEntryExceptionErrorCode, u64::from(c));
        }
        let info = InterruptionInfo::hardware_exception(vector, code.is_some());
        self.vmwrite(
            Field32::VmEntryInterruptionInformation,
            u64::from(info.to_raw()),
        );
    }

    fn cr(&self, cr: u8) -> u64 {
        match cr {
            0 => {
                (self.vmread(FieldNatural::GuestCr0) & !self.cr0_mask)
                    | (self.vmread(FieldNatural::Cr0ReadShadow) & self.cr0_mask)
            }
            2 => self.regs.cr2,
            3 => self.vmread(FieldNatural::GuestCr3),
            8 => self.cr8,
            4 => {
                (self.vmread(FieldNatural::GuestCr4) & !self.cr4_mask)
                    | (self.vmread(FieldNatural::Cr4ReadShadow) & self.cr4_mask)
            }
            _ => 0,
        }
    }

    fn set_cr(&mut self, cr: u8, value: u64) -> Result<(), VcpuError> {
        if cr == 8 {
            // No VMCS field: CR8 loads exit, the value is this vCPU's.
            self.cr8 = value;
            return Ok(());
        }
        let mut m = HwMsrs;
        let fixed = FixedBits::read(&mut m).map_err(|_| VcpuError::Rejected)?;
        match cr {
            0 => {
                let real = (value | (fixed.cr0_fixed0 & !(CR0_PE | CR0_PG)))
                    & (fixed.cr0_fixed1 | CR0_PE | CR0_PG);
                self.vmwrite(FieldNatural::GuestCr0, real);
                self.vmwrite(FieldNatural::Cr0ReadShadow, value);
                self.sync_long_mode();
            }
            3 => self.vmwrite(FieldNatural::GuestCr3, value),
            4 => {
                // Bits the CPU cannot hold with VMX on (besides VMXE, which the guest never sees).
                if value & !fixed.cr4_fixed1 & !(1 << 13) != 0 {
                    return Err(VcpuError::Rejected);
                }
                self.vmwrite(
                    FieldNatural::GuestCr4,
                    (value | fixed.cr4_fixed0) & fixed.cr4_fixed1,
                );
                self.vmwrite(FieldNatural::Cr4ReadShadow, value);
            }
            _ => return Err(VcpuError::Rejected),
        }
        Ok(())
    }

    fn tsc_offset(&self) -> u64 {
        self.vmread(Field64::TscOffset)
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        // "Use TSC offsetting" is a required control (SDM Vol. 3C §25.6.5, §27.3): RDTSC,
        // RDTSCP and RDMSR IA32_TSC give TSC + offset.
        self.vmwrite(Field64::TscOffset, offset);
    }

    fn efer(&self) -> u64 {
        self.vmread(Field64::GuestIa32Efer)
    }

    fn set_efer(&mut self, value: u64) -> Result<(), VcpuError> {
        self.vmwrite(Field64::GuestIa32Efer, value);
        self.sync_long_mode();
        Ok(())
    }

    fn rflags(&self) -> u64 {
        self.vmread(FieldNatural::GuestRflags)
    }

    fn pat(&self) -> u64 {
        self.vmread(Field64::GuestIa32Pat)
    }

    fn set_pat(&mut self, value: u64) {
        // Loaded on entry when the CPU has the "load IA32_PAT" entry control (Bochs and every
        // EPT-capable Intel CPU do); otherwise the guest keeps seeing its value but runs with
        // the host's PAT.
        self.vmwrite(Field64::GuestIa32Pat, value);
    }

    fn cpl(&self) -> u8 {
        if self.vmread(FieldNatural::GuestCr0) & CR0_PE == 0 {
            return 0;
        }
        (((self.vmread(Field32::GuestSsAccessRights) as u32) >> 5) & 3) as u8
    }

    fn code_segment(&self) -> atoll_vcpu::decode::CodeSegment {
        // VMX access rights (SDM Vol. 3C §25.4.1, Table 25-2): L is bit 13, D/B bit 14.
        let ar = self.vmread(Field32::GuestCsAccessRights) as u32;
        atoll_vcpu::decode::CodeSegment {
            base: self.vmread(FieldNatural::GuestCsBase),
            long: ar & (1 << 13) != 0,
            default32: ar & (1 << 14) != 0,
        }
    }

    fn interrupt_window_open(&self) -> bool {
        // RFLAGS.IF, no STI/MOV SS shadow (SDM Vol. 3C §25.4.2, the VM-entry checks of
        // §27.3.1.5), and nothing queued in the VM-entry interruption information (§25.8.3).
        self.rflags() & RFLAGS_IF != 0
            && self.interruptibility().allows_external_interrupt()
            && self.queued_event().is_none()
    }

    fn inject_interrupt(&mut self, vector: u8) {
        // Type external interrupt (0), valid (SDM Vol. 3C §25.8.3, §27.6.1). Callers check the
        // window first; a second event would replace the queued one, so refuse that quietly
        // rather than lose a re-delivered event.
        if self.queued_event().is_some() {
            return;
        }
        let info = InterruptionInfo::external_interrupt(vector);
        self.vmwrite(
            Field32::VmEntryInterruptionInformation,
            u64::from(info.to_raw()),
        );
    }

    fn request_interrupt_window(&mut self, on: bool) {
        // Interrupt-window exiting (SDM Vol. 3C §25.6.2 Table 25-6 bit 2, §26.7.5): an exit
        // (reason 7) before the first instruction at which RFLAGS.IF = 1 and no STI/MOV SS
        // blocking, after any event injected at that entry is delivered.
        let before = self.controls.primary;
        self.controls
            .primary
            .set(PrimaryControls::INTERRUPT_WINDOW_EXITING, on);
        if self.controls.primary != before {
            self.vmwrite(
                Field32::PrimaryProcessorBasedVmExecutionControls,
                self.controls.primary.bits().into(),
            );
        }
    }

    fn inject_nmi(&mut self) -> bool {
        // Blocked by NMI (or virtual-NMI blocking), MOV SS and, conservatively, STI (SDM Vol. 3C
        // §25.4.2, §27.3.1.5); one event per entry. The processor blocks further NMIs once this
        // one is delivered, until the guest's IRET (§26.3 with virtual NMIs, §27.6.1.2).
        if !self.interruptibility().allows_nmi() || self.queued_event().is_some() {
            return false;
        }
        self.vmwrite(
            Field32::VmEntryInterruptionInformation,
            InterruptionInfo::nmi().to_raw().into(),
        );
        true
    }
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        // SAFETY: the VMCS is ours; clearing it makes the CPU write back its state and forget it
        // before the page is freed.
        let _ = unsafe { vi::vmclear(self._vmcs.phys()) };
    }
}
