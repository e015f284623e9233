//! The SVM backend of the vendor-neutral vCPU (AMD-V with nested paging).
//!
//! [`SvmCore::enable`] turns SVM on for the calling core; [`SvmVcpu::new`] builds a VMCB for one
//! enclave vCPU from its [`BootState`], its nested page tables and atoll's interception policy;
//! [`SvmVcpu::run`] runs the guest with VMRUN and turns the #VMEXIT into a neutral [`Exit`].
//! Without NRIP save or decode assists (QEMU's SVM has neither) the exiting instruction is
//! fetched from guest memory and decoded with `iced-x86` ([`atoll_vcpu::decode`]). Only this module
//! (and the `svm` crate) knows SVM encodings.

use super::host_ram::HostRam;
use crate::partition::config::EntryMode;
use crate::partition::loader::BootState;
use crate::run::exits::PASSTHROUGH_MSRS;
use alloc::boxed::Box;
use alloc::sync::Arc;
use atoll_vcpu::decode;
use atoll_vcpu::double_fault::{self, Combined};
use atoll_vcpu::{Exit, Gpr, GuestMemory, GuestRam, Vcpu, VcpuError};
use boot::{HostPhysAddr, PhysRange};
use svm::exit::{Event, EventType, ExitCode};
use svm::intercepts::{
    CrIntercepts, ExceptionIntercepts, Intercepts, MiscIntercepts1, MiscIntercepts2,
};
use svm::permission_maps::PermissionMapPages;
use svm::vmcb::{
    Field64, InterruptState, NestedControl, Segment, SegmentAttributes, SegmentRegister,
    TlbControl, VirtualInterruptControl, Vmcb,
};

const EFER_SVME: u64 = 1 << 12;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const RFLAGS_IF: u64 = 1 << 9;
/// Consecutive host-interrupt exits after which the guest is stopped rather than spun on.
const INTR_STORM: u32 = 100_000;

fn phys<T>(p: &T) -> HostPhysAddr {
    // The heap lives in atoll's identity-mapped image: virtual address = physical address.
    HostPhysAddr::new(p as *const T as u64)
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// What went wrong in the SVM backend (every variant ends the enclave; `EndReason::Failed`
/// takes its text).
#[derive(Debug)]
pub enum SvmError {
    /// Turning SVM on for this core failed.
    Enable(svm::Error),
    /// A VMCB or permission-map value was refused while the vCPU was built.
    Setup(svm::Error),
}

impl core::fmt::Display for SvmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SvmError::Enable(e) => write!(f, "enabling SVM: {e}"),
            SvmError::Setup(e) => write!(f, "building the VMCB: {e}"),
        }
    }
}

/// This core's SVM state, made once per core.
pub struct SvmCore {
    _hsave: Box<Page>,
    host_vmcb: Box<Vmcb>,
    /// CPUID Fn8000_000A: NRIP save, decode assists, ASIDs.
    pub caps: svm::caps::SvmCaps,
}

impl SvmCore {
    /// Enables SVM on this core.
    pub fn enable() -> Result<Self, SvmError> {
        super::enable_osxsave();
        let hsave = Box::new(Page([0; 4096]));
        // SAFETY: the host save area is a page of our own, identity-mapped and kept as long as
        // the core (the SvmCore is never dropped); we run at CPL 0 in long mode on this core.
        let caps = unsafe { svm::enable::enable_svm(phys(&*hsave)) }.map_err(SvmError::Enable)?;
        Ok(Self {
            _hsave: hsave,
            host_vmcb: Box::new(Vmcb::zeroed()),
            caps,
        })
    }
}

/// The memory a vCPU's instructions are fetched from when an exit needs them decoded.
pub enum Memory {
    /// An enclave's RAM: one range, guest-physical 0 at its start.
    Enclave(PhysRange),
    /// The root partition's RAM (guest-physical = host-physical).
    Host(Arc<HostRam>),
}

/// [`Memory`] as the decoder reads it.
enum MemView<'a> {
    Ram(GuestRam),
    Host(&'a HostRam),
}

impl GuestMemory for MemView<'_> {
    fn read(&self, gpa: boot::GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        match self {
            MemView::Ram(r) => r.read(gpa, buf),
            MemView::Host(h) => h.read(gpa, buf),
        }
    }

    fn write(&mut self, gpa: boot::GuestPhysAddr, buf: &[u8]) -> Option<()> {
        match self {
            MemView::Ram(r) => r.write(gpa, buf),
            MemView::Host(h) => h.write(gpa, buf),
        }
    }
}

/// One enclave vCPU on SVM.
pub struct SvmVcpu {
    vmcb: Box<Vmcb>,
    _maps: Box<PermissionMapPages>,
    regs: svm::regs::GuestRegisters,
    host_vmcb: HostPhysAddr,
    nrip: bool,
    decode_assists: bool,
    memory: Memory,
    next_rip: Option<u64>,
    intr_run: u32,
    /// An NMI atoll injected is being handled by the guest: no other NMI until its IRET.
    nmi_masked: bool,
    /// The RIP of that handler's IRET, once intercepted: NMIs are unmasked at the first exit
    /// with another RIP (the IRET has then executed).
    iret_rip: Option<u64>,
    /// An exception raised on top of a queued #DF: the guest is shut down, the next `run`
    /// reports a triple fault without entering it.
    shutdown: bool,
    /// The guest's CR8. CR8 reads and writes are intercepted, so the guest's value lives here
    /// and V_TPR, which CR8 would otherwise reach with V_INTR_MASKING set (APM Vol. 2
    /// §15.21.1), stays unused: atoll's interrupt-window requests ignore it (V_IGN_TPR).
    cr8: u64,
}

fn flat(selector: u16, attrib: SegmentAttributes) -> Segment {
    Segment {
        selector,
        attrib,
        limit: 0xffff_ffff,
        base: 0,
    }
}

impl SvmVcpu {
    /// Builds the VMCB for a vCPU starting in `boot` with nested tables at `nested_cr3`.
    pub fn new(
        core: &SvmCore,
        boot: &BootState,
        nested_cr3: HostPhysAddr,
        asid: u32,
        ram: PhysRange,
    ) -> Result<Self, SvmError> {
        let mut maps = Box::new(PermissionMapPages::intercept_all());
        {
            let mut msr = maps.msr_map();
            for &m in PASSTHROUGH_MSRS {
                msr.allow(m, true, true).map_err(SvmError::Setup)?;
            }
        }
        // The core's guest-reachable registers back to reset values (a core may have run
        // another partition before); VMLOAD gives the VMLOAD/VMSAVE set from this VMCB.
        super::guest_state::reset();
        let mut v = Box::new(Vmcb::zeroed());
        // Deny by default (docs/security.md): CR8 (the guest's task priority is its own value,
        // not the physical TPR), #DB and #AC (each delivery exits, CVE-2015-8104 and
        // CVE-2015-5307), INVD and WBINVD (no-ops: never a flush of a shared cache), RDPMC
        // (#GP), MONITOR/MWAIT (#UD: hidden in CPUID) and every SVM instruction (#UD).
        let intercepts = Intercepts {
            cr: CrIntercepts::WRITE_CR0
                | CrIntercepts::WRITE_CR4
                | CrIntercepts::READ_CR8
                | CrIntercepts::WRITE_CR8,
            exceptions: ExceptionIntercepts::DB | ExceptionIntercepts::AC,
            misc1: MiscIntercepts1::INTR
                | MiscIntercepts1::NMI
                | MiscIntercepts1::INIT
                | MiscIntercepts1::CPUID
                | MiscIntercepts1::HLT
                | MiscIntercepts1::IOIO_PROT
                | MiscIntercepts1::MSR_PROT
                | MiscIntercepts1::SHUTDOWN
                | MiscIntercepts1::INVLPGA
                | MiscIntercepts1::INVD
                | MiscIntercepts1::RDPMC,
            // The guest never sees SVM: every SVM instruction exits (and raises #UD).
            misc2: MiscIntercepts2::VMRUN
                | MiscIntercepts2::VMMCALL
                | MiscIntercepts2::VMLOAD
                | MiscIntercepts2::VMSAVE
                | MiscIntercepts2::STGI
                | MiscIntercepts2::CLGI
                | MiscIntercepts2::SKINIT
                | MiscIntercepts2::XSETBV
                | MiscIntercepts2::WBINVD
                | MiscIntercepts2::MONITOR
                | MiscIntercepts2::MWAIT
                | MiscIntercepts2::MWAIT_CONDITIONAL,
            ..Intercepts::default()
        };
        v.set_intercepts(&intercepts);
        v.set_iopm_base(phys(&maps.iopm)).map_err(SvmError::Setup)?;
        v.set_msrpm_base(phys(&maps.msrpm))
            .map_err(SvmError::Setup)?;
        v.set_asid(asid);
        v.set_tlb_control(TlbControl::FlushAll);
        // Host interrupts stay the host's whatever the guest's RFLAGS.IF says, and the guest's
        // CR8 could only reach V_TPR, never the physical TPR (APM Vol. 2 §15.21.1); it is
        // intercepted all the same. `request_interrupt_window` keeps the bit set.
        v.set_virtual_interrupt(VirtualInterruptControl::V_INTR_MASKING);
        v.set_nested_control(NestedControl::NP_ENABLE);
        v.set_nested_cr3(nested_cr3);

        v.write64(Field64::Efer, boot.efer | EFER_SVME);
        v.write64(Field64::Cr0, boot.cr0);
        v.write64(Field64::Cr3, boot.cr3);
        v.write64(Field64::Cr4, boot.cr4);
        v.write64(Field64::Dr7, 0x400);
        v.write64(Field64::Dr6, 0xffff_0ff0);
        v.write64(Field64::Rflags, 0x2);
        v.write64(Field64::Rsp, boot.rsp);
        v.write64(Field64::GPat, 0x0007_0406_0007_0406);
        let data = [
            SegmentRegister::Es,
            SegmentRegister::Ss,
            SegmentRegister::Ds,
            SegmentRegister::Fs,
            SegmentRegister::Gs,
        ];
        match boot.mode {
            EntryMode::Long64 | EntryMode::Linux => {
                v.set_segment(
                    SegmentRegister::Cs,
                    flat(boot.cs_selector, SegmentAttributes::CODE64),
                );
                for s in data {
                    v.set_segment(s, flat(boot.ds_selector, SegmentAttributes::DATA));
                }
                v.write64(Field64::Rip, boot.rip);
            }
            EntryMode::Real16 => {
                let base = u64::from(boot.cs_selector) << 4;
                let real = |sel: u16, attrib: u16, base: u64| Segment {
                    selector: sel,
                    attrib: SegmentAttributes::from_raw(attrib),
                    limit: 0xffff,
                    base,
                };
                v.set_segment(SegmentRegister::Cs, real(boot.cs_selector, 0x9b, base));
                for s in data {
                    v.set_segment(s, real(0, 0x93, 0));
                }
                v.write64(Field64::Rip, boot.rip.wrapping_sub(base));
            }
        }
        v.set_segment(
            SegmentRegister::Gdtr,
            Segment {
                selector: 0,
                attrib: SegmentAttributes::from_raw(0),
                limit: boot.gdt.1.into(),
                base: boot.gdt.0,
            },
        );
        v.set_segment(
            SegmentRegister::Idtr,
            Segment {
                selector: 0,
                attrib: SegmentAttributes::from_raw(0),
                limit: 0xffff,
                base: 0,
            },
        );
        v.set_segment(
            SegmentRegister::Tr,
            Segment {
                selector: 0,
                attrib: SegmentAttributes::TSS64_BUSY,
                limit: 0xffff,
                base: 0,
            },
        );
        v.set_segment(
            SegmentRegister::Ldtr,
            Segment {
                selector: 0,
                attrib: SegmentAttributes::LDT,
                limit: 0xffff,
                base: 0,
            },
        );

        let regs = svm::regs::GuestRegisters {
            rdi: boot.rdi,
            rsi: boot.rsi,
            rdx: boot.rdx,
            ..Default::default()
        };
        Ok(Self {
            vmcb: v,
            _maps: maps,
            regs,
            host_vmcb: phys(&*core.host_vmcb),
            nrip: core.caps.nrip_save(),
            decode_assists: core.caps.decode_assists(),
            memory: Memory::Enclave(ram),
            next_rip: None,
            intr_run: 0,
            nmi_masked: false,
            iret_rip: None,
            shutdown: false,
            cr8: 0,
        })
    }

    /// Builds a vCPU of the root partition (the host's Linux): the Jailhouse model. Its
    /// device interrupts reach it directly (no INTR intercept, V_INTR_MASKING clear, so its
    /// RFLAGS.IF and CR8 are the physical ones, APM Vol. 2 §15.21.1) and HLT, MONITOR/MWAIT,
    /// WBINVD and control-register writes are its own. What stays intercepted: NMI (atoll's
    /// signal to a host core), INIT, SHUTDOWN, CPUID, RDPMC (the counters count other
    /// partitions' work too), the ports in `ports`, every MSR but
    /// `passthrough_msrs` and the VMCB-switched ones, XSETBV, INVD, #DB/#AC (their delivery
    /// loops, CVE-2015-8104/-5307, would make the core deaf to NMIs) and every SVM instruction.
    pub fn new_host(
        core: &SvmCore,
        boot: &BootState,
        nested_cr3: HostPhysAddr,
        asid: u32,
        memory: Arc<HostRam>,
        ports: &[core::ops::RangeInclusive<u16>],
        passthrough_msrs: &[u32],
    ) -> Result<Self, SvmError> {
        let empty = PhysRange::new(HostPhysAddr::new(0), HostPhysAddr::new(0));
        let mut v = Self::new(core, boot, nested_cr3, asid, empty)?;
        {
            let mut io = v._maps.io_map();
            io.allow_range(0, 0x1_0000);
            for r in ports {
                for port in r.clone() {
                    io.intercept(port);
                }
            }
            let mut msr = v._maps.msr_map();
            for &m in passthrough_msrs {
                msr.allow(m, true, true).map_err(SvmError::Setup)?;
            }
        }
        // The enclaves' set (`new`) less what the host owns: its interrupts, HLT, WBINVD,
        // MONITOR/MWAIT and its control registers.
        let mut intercepts = v.vmcb.intercepts();
        intercepts.cr = CrIntercepts::empty();
        intercepts
            .misc1
            .remove(MiscIntercepts1::INTR | MiscIntercepts1::HLT);
        intercepts.misc2.remove(
            MiscIntercepts2::WBINVD
                | MiscIntercepts2::MONITOR
                | MiscIntercepts2::MWAIT
                | MiscIntercepts2::MWAIT_CONDITIONAL,
        );
        v.vmcb.set_intercepts(&intercepts);
        v.vmcb
            .set_virtual_interrupt(VirtualInterruptControl::empty());
        v.memory = Memory::Host(memory);
        Ok(v)
    }

    fn memory(&self) -> MemView<'_> {
        match &self.memory {
            Memory::Enclave(ram) => {
                let base = core::ptr::NonNull::new(ram.start.as_u64() as *mut u8)
                    .expect("enclave RAM is never at physical 0 (the first MiB is not allocated)");
                // SAFETY: the enclave's RAM is identity-mapped and stays allocated to it while
                // this vCPU exists; every access goes through `GuestRam`'s bounds-checked copies.
                MemView::Ram(unsafe { GuestRam::new(base, ram.len() as usize) })
            }
            Memory::Host(host) => MemView::Host(host),
        }
    }

    /// The bytes and bitness of the instruction at the guest's RIP.
    fn current_instruction(&self) -> Option<decode::Decoded> {
        let (paging, bitness, linear) = decode::site_of(self);
        let mem = self.memory();
        let (bytes, n) = decode::fetch(&mem, paging, linear);
        let mut d = decode::decode(&bytes[..n], bitness)?;
        if d.mov_cr.is_none() {
            // CLTS or LMSW (whose source is a register or memory this vCPU reads).
            d.cr0_write =
                decode::cr0_write(&mem, paging, bitness, linear, |g| self.gpr(g)).map(|(w, _)| w);
        }
        Some(d)
    }

    /// Enters the guest until its next #VMEXIT. The exit information is VMCB memory and
    /// always readable, and a VMCB the processor refuses is the exit VMEXIT_INVALID
    /// ([`Exit::InvalidGuestState`]): no run-time failure is an error on SVM today; the type
    /// matches the VMX backend's.
    /// Drops every cached translation at the next VMRUN (APM Vol. 2 §15.16): the nested
    /// tables changed under this vCPU.
    pub fn flush_translations(&mut self) {
        self.vmcb.set_tlb_control(TlbControl::FlushAll);
    }

    pub fn run(&mut self) -> Result<Exit, SvmError> {
        loop {
            if self.shutdown {
                return Ok(Exit::TripleFault);
            }
            // SAFETY: SVM is enabled on this core; the VMCB, the permission maps and the nested
            // tables are ours and stay allocated while the vCPU lives; no reference to the VMCB
            // is held across the call (the field borrows end before it); the host save VMCB is
            // this core's own.
            unsafe { svm::run::vm_run(phys(&*self.vmcb), self.host_vmcb, &mut self.regs) };
            // Flushed once; later runs keep the ASID's translations.
            self.vmcb.set_tlb_control(TlbControl::DoNothing);
            self.after_exit_events();
            if self.vmcb.exit_code() != ExitCode::Iret {
                break;
            }
            // The IRET of the handler of an NMI atoll injected (only then is IRET
            // intercepted). The intercept comes before the IRET executes: note where it is and
            // let it run; NMIs are unmasked at the next exit past it.
            self.iret_rip = Some(self.vmcb.read64(Field64::Rip));
            self.set_intercept(MiscIntercepts1::IRET, false);
        }
        let code = self.vmcb.exit_code();
        if code != ExitCode::Intr {
            self.intr_run = 0;
        }
        let assists = svm::translate::Assists {
            nrip_save: self.nrip,
            decode_assists: self.decode_assists,
        };
        let t = svm::translate::translate(&self.vmcb, assists, || self.current_instruction());
        self.next_rip = t.next_rip;
        if let Exit::ExternalInterrupt { .. } = t.exit {
            // The interrupt is still pending (SVM does not acknowledge it): open a one-
            // instruction window so the host IDT takes it and EOIs it.
            // SAFETY: GIF is set again after VMRUN returned; atoll's IDT handles every
            // vector from 32 up (and NMIs) and returns; interrupts are off again after.
            unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
            self.intr_run += 1;
            if self.intr_run > INTR_STORM {
                return Ok(Exit::Unknown {
                    code: code.raw() as u32,
                    name: "host interrupt storm",
                });
            }
        }
        Ok(t.exit)
    }

    /// Event bookkeeping after every #VMEXIT, before the exit is translated.
    fn after_exit_events(&mut self) {
        let code = self.vmcb.exit_code();
        // The event whose delivery the exit interrupted is delivered again at the next VMRUN
        // (APM Vol. 2 §15.7.2 "Intercepts During IDT Interrupt Delivery", §15.20): EXITINTINFO
        // goes to EVENTINJ, error code included. Without one EVENTINJ is cleared, so an event
        // injected for the last VMRUN (delivered by now) is never injected twice.
        let interrupted = svm::translate::interrupted_event(&self.vmcb);
        self.vmcb.set_event_injection(interrupted);
        if code == ExitCode::Vintr {
            // The fake virtual interrupt of `request_interrupt_window` is about to be taken:
            // withdraw it (the guest must never take it) and end the request.
            self.request_interrupt_window(false);
        }
        if let Some(iret_rip) = self.iret_rip {
            if self.vmcb.read64(Field64::Rip) != iret_rip {
                self.iret_rip = None;
                self.nmi_masked = false;
            }
        }
    }

    /// Sets or clears one intercept of the first miscellaneous vector (VMCB offset 00Ch).
    fn set_intercept(&mut self, which: MiscIntercepts1, on: bool) {
        let mut i = self.vmcb.intercepts();
        i.misc1.set(which, on);
        self.vmcb.set_intercepts(&i);
    }

    fn interrupt_shadow(&self) -> bool {
        self.vmcb
            .interrupt_state()
            .contains(InterruptState::INTERRUPT_SHADOW)
    }

    fn sync_long_mode(&mut self) {
        // EFER.LMA = LME and CR0.PG (AMD64 APM Vol. 2 §14.6.1): the guest's transition.
        let efer = self.vmcb.read64(Field64::Efer);
        let lma = efer & EFER_LME != 0 && self.vmcb.read64(Field64::Cr0) & CR0_PG != 0;
        self.vmcb.write64(
            Field64::Efer,
            if lma {
                efer | EFER_LMA
            } else {
                efer & !EFER_LMA
            },
        );
    }
}

impl Vcpu for SvmVcpu {
    fn gpr(&self, r: Gpr) -> u64 {
        self.regs.read(&self.vmcb, r)
    }

    fn set_gpr(&mut self, r: Gpr, v: u64) {
        self.regs.write(&mut self.vmcb, r, v);
    }

    fn rip(&self) -> u64 {
        self.vmcb.read64(Field64::Rip)
    }

    fn set_rip(&mut self, rip: u64) {
        self.next_rip = None;
        self.vmcb.write64(Field64::Rip, rip);
        // Moving past the instruction ends an STI/MOV SS interrupt shadow.
        let mut s = self.vmcb.interrupt_state();
        s.remove(svm::vmcb::InterruptState::INTERRUPT_SHADOW);
        self.vmcb.set_interrupt_state(s);
    }

    fn skip_instruction(&mut self) {
        if let Some(next) = self.next_rip.take() {
            self.set_rip(next);
        }
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        // A queued event is one whose delivery the exit interrupted (handlers inject at most
        // once per exit); the exception arose from that delivery and combines with it as on
        // the processor (APM Vol. 2 §8.2.9, see `atoll_vcpu::double_fault`).
        let queued = self
            .vmcb
            .event_injection()
            .filter(|e| e.event_type == EventType::Exception)
            .map(|e| e.vector);
        let (vector, error_code) = match double_fault::combine(queued, vector) {
            Combined::New => (vector, error_code),
            Combined::DoubleFault => (double_fault::DOUBLE_FAULT, Some(0)),
            Combined::Shutdown => {
                self.vmcb.set_event_injection(None);
                self.shutdown = true;
                return;
            }
        };
        // Real mode delivers no error code.
        let code = error_code.filter(|_| self.vmcb.read64(Field64::Cr0) & CR0_PE != 0);
        self.vmcb
            .set_event_injection(Some(Event::exception(vector, code)));
    }

    fn cr(&self, cr: u8) -> u64 {
        match cr {
            0 => self.vmcb.read64(Field64::Cr0),
            2 => self.vmcb.read64(Field64::Cr2),
            3 => self.vmcb.read64(Field64::Cr3),
            4 => self.vmcb.read64(Field64::Cr4),
            8 => self.cr8,
            _ => 0,
        }
    }

    fn set_cr(&mut self, cr: u8, value: u64) -> Result<(), VcpuError> {
        match cr {
            0 => {
                self.vmcb.write64(Field64::Cr0, value);
                self.sync_long_mode();
            }
            3 => self.vmcb.write64(Field64::Cr3, value),
            4 => self.vmcb.write64(Field64::Cr4, value),
            8 => {
                // Mirrored in V_TPR (bits 3:0 are CR8, APM Vol. 2 §15.21.1) so that a CR8 read
                // that does not exit returns the same value: QEMU's SVM does not intercept CR8
                // reads. V_TPR masks nothing atoll relies on: its window requests ignore it
                // (V_IGN_TPR) and V_INTR_MASKING keeps it away from the physical TPR.
                self.cr8 = value;
                let v = self
                    .vmcb
                    .virtual_interrupt()
                    .with_v_tpr((value & 0xf) as u8);
                self.vmcb.set_virtual_interrupt(v);
            }
            _ => return Err(VcpuError::Rejected),
        }
        Ok(())
    }

    fn tsc_offset(&self) -> u64 {
        self.vmcb.read64(Field64::TscOffset)
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        // Added to RDTSC, RDTSCP and RDMSR IA32_TSC (APM Vol. 2 §15.30.4); a VMCB control
        // field, re-read at every VMRUN (no clean bits are used).
        self.vmcb.write64(Field64::TscOffset, offset);
    }

    fn efer(&self) -> u64 {
        // SVME is atoll's, never the guest's.
        self.vmcb.read64(Field64::Efer) & !EFER_SVME
    }

    fn set_efer(&mut self, value: u64) -> Result<(), VcpuError> {
        self.vmcb.write64(Field64::Efer, value | EFER_SVME);
        self.sync_long_mode();
        Ok(())
    }

    fn rflags(&self) -> u64 {
        self.vmcb.read64(Field64::Rflags)
    }

    fn cpl(&self) -> u8 {
        self.vmcb.read8(svm::vmcb::Field8::Cpl)
    }

    fn code_segment(&self) -> atoll_vcpu::decode::CodeSegment {
        // VMCB segment attributes (APM Vol. 2 §15.5.1, the descriptor's bits 55:52 and 47:40
        // packed): L is bit 9, D/B bit 10.
        let attrib = self.vmcb.segment(SegmentRegister::Cs).attrib.raw();
        atoll_vcpu::decode::CodeSegment {
            base: self.vmcb.segment(SegmentRegister::Cs).base,
            long: attrib & (1 << 9) != 0,
            default32: attrib & (1 << 10) != 0,
        }
    }

    fn pat(&self) -> u64 {
        self.vmcb.read64(Field64::GPat)
    }

    fn set_pat(&mut self, value: u64) {
        self.vmcb.write64(Field64::GPat, value);
    }

    fn interrupt_window_open(&self) -> bool {
        // The guest's RFLAGS.IF (the save area holds the guest's, V_INTR_MASKING keeps the
        // host's apart), no STI/MOV SS shadow (INTERRUPT_SHADOW, VMCB offset 068h bit 0), and
        // EVENTINJ free (APM Vol. 2 §15.20, §15.21).
        self.vmcb.read64(Field64::Rflags) & RFLAGS_IF != 0
            && !self.interrupt_shadow()
            && self.vmcb.event_injection().is_none()
    }

    fn inject_interrupt(&mut self, vector: u8) {
        // EVENTINJ type INTR (0), valid (APM Vol. 2 §15.20). VMRUN does not check the guest's
        // IF or shadow for injected events: callers check the window first. A second event
        // would replace the queued one, so refuse that quietly rather than lose a re-delivered
        // event.
        if self.vmcb.event_injection().is_some() {
            return;
        }
        self.vmcb
            .set_event_injection(Some(Event::external_interrupt(vector)));
    }

    fn request_interrupt_window(&mut self, on: bool) {
        // A virtual interrupt the guest takes as soon as it can take any (V_IRQ with the
        // highest priority, V_IGN_TPR), intercepted (VINTR) before it is delivered: the
        // #VMEXIT VINTR (64h) is the window (APM Vol. 2 §15.21 "Interrupt and Local APIC
        // Support", virtual interrupts and the VINTR intercept). V_INTR_MASKING stays set.
        let v = self.vmcb.virtual_interrupt() | VirtualInterruptControl::V_INTR_MASKING;
        self.vmcb.set_virtual_interrupt(if on {
            v.with_interrupt_window_request()
        } else {
            v.without_interrupt_window_request()
        });
        self.set_intercept(MiscIntercepts1::VINTR, on);
    }

    fn inject_nmi(&mut self) -> bool {
        // SVM does not track NMI blocking for injected NMIs on atoll's behalf: atoll does.
        // After an NMI is injected, NMIs stay masked until the handler's IRET has executed
        // (IRET intercepted, see `run`); an STI/MOV SS shadow also holds it back, and so does
        // an event already in EVENTINJ (APM Vol. 2 §15.20 "Event Injection", §15.21).
        if self.nmi_masked || self.interrupt_shadow() || self.vmcb.event_injection().is_some() {
            return false;
        }
        self.vmcb.set_event_injection(Some(Event::nmi()));
        self.nmi_masked = true;
        self.iret_rip = None;
        self.set_intercept(MiscIntercepts1::IRET, true);
        true
    }
}
