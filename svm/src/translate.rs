//! #VMEXIT translation: EXITCODE, EXITINFO1/2 and nRIP of a [`Vmcb`] (APM Vol. 2 §15.6,
//! §15.7, Appendix C) turned into atoll's vendor-neutral [`Exit`] and the RIP at which the guest
//! resumes once the exiting instruction is emulated.
//!
//! Pure: the VMCB is plain memory, and what the VMCB may lack (the instruction length without
//! NRIP save, the register of a MOV CR without decode assists) comes from a decoder the caller
//! passes (the backend fetches and decodes the guest's instruction; tests pass a fixed answer).
//! So every #VMEXIT atoll handles is tested on the host.

use crate::exit::{CrDrAccess, Event, ExitCode, IoDirection, IoioInfo, MsrAccess, NestedPageFault};
use crate::vmcb::{Field64, Vmcb};
use atoll_vcpu::decode::{Cr0Write, Decoded};
use atoll_vcpu::{Access, Exit};
use boot::GuestPhysAddr;

/// What the processor reports beyond the basic #VMEXIT information (CPUID Fn8000_000A EDX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assists {
    /// NRIPS: nRIP holds the RIP after an intercepted instruction (§15.7.1).
    pub nrip_save: bool,
    /// DecodeAssists: EXITINFO1 of a MOV CR intercept names the register (§15.33.1).
    pub decode_assists: bool,
}

/// One #VMEXIT, translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvmExit {
    /// The exit, vendor-neutral.
    pub exit: Exit,
    /// For an instruction intercept: where the guest resumes when the instruction is skipped.
    pub next_rip: Option<u64>,
}

/// Translates the last #VMEXIT in `vmcb`. `decode` decodes the instruction at the guest's RIP;
/// it is called (at most once) only when the VMCB does not say what is needed. An instruction
/// intercept whose length cannot be known, and a CR access that is not a MOV (CLTS, LMSW,
/// SMSW, which atoll does not emulate), translate to [`Exit::Unknown`].
pub fn translate(
    vmcb: &Vmcb,
    assists: Assists,
    decode: impl FnMut() -> Option<Decoded>,
) -> SvmExit {
    let code = vmcb.exit_code();
    let raw = code.raw() as u32;
    let (i1, i2) = (vmcb.exit_info1(), vmcb.exit_info2());
    let mut site = Site {
        vmcb,
        assists,
        raw,
        decode,
        decoded: None,
    };
    match code {
        ExitCode::Invalid => plain(Exit::InvalidGuestState),
        ExitCode::Intr => plain(Exit::ExternalInterrupt { vector: None }),
        ExitCode::Nmi => plain(Exit::Nmi),
        ExitCode::Vintr => plain(Exit::InterruptWindow),
        ExitCode::Init => plain(Exit::Init),
        ExitCode::Shutdown => plain(Exit::TripleFault),
        ExitCode::Cpuid => site.skipping(Exit::Cpuid),
        ExitCode::Hlt => site.skipping(Exit::Hlt),
        ExitCode::Vmmcall => site.skipping(Exit::Hypercall),
        ExitCode::Xsetbv => site.skipping(Exit::Xsetbv),
        ExitCode::Invd => site.skipping(Exit::Invd),
        ExitCode::Wbinvd => site.skipping(Exit::Wbinvd),
        ExitCode::Msr => match MsrAccess::from_exit_info1(i1) {
            Some(MsrAccess::Read) => site.skipping(Exit::MsrRead),
            Some(MsrAccess::Write) => site.skipping(Exit::MsrWrite),
            None => plain(Exit::Unknown {
                code: raw,
                name: "MSR exit with an undefined EXITINFO1",
            }),
        },
        // EXITINFO2 holds the next RIP for I/O intercepts, with or without NRIP save
        // (§15.10.2).
        ExitCode::Ioio => match IoioInfo::from_exit_info(i1, i2) {
            Some(io) => SvmExit {
                exit: Exit::Io {
                    port: io.port,
                    size: io.size.bytes(),
                    write: io.direction == IoDirection::Out,
                    string: io.string,
                    rep: io.rep,
                },
                next_rip: Some(io.next_rip),
            },
            None => plain(Exit::Unknown {
                code: raw,
                name: "I/O exit with an undefined size",
            }),
        },
        ExitCode::CrWrite(cr) | ExitCode::CrRead(cr) => {
            let write = matches!(code, ExitCode::CrWrite(_));
            let gpr = match (assists.decode_assists, CrDrAccess::from_exit_info1(i1)) {
                (true, CrDrAccess::Mov { gpr }) => Some(gpr),
                // No decode assists, or not a MOV: the instruction says.
                _ => site
                    .instruction()
                    .and_then(|d| d.mov_cr)
                    .filter(|m| m.0 == cr && m.2 == write)
                    .map(|m| m.1),
            };
            // CLTS and LMSW (CR0 writes only), as the decoder read them.
            let cr0_write = match (gpr, write, cr) {
                (None, true, 0) => site.instruction().and_then(|d| d.cr0_write),
                _ => None,
            };
            match (gpr, write) {
                (Some(gpr), true) => site.skipping(Exit::CrWrite { cr, gpr }),
                (Some(gpr), false) => site.skipping(Exit::CrRead { cr, gpr }),
                (None, true) if cr0_write.is_some() => match cr0_write {
                    Some(Cr0Write::Lmsw(source)) => site.skipping(Exit::Lmsw(source)),
                    _ => site.skipping(Exit::Clts),
                },
                (None, true) => plain(Exit::Unknown {
                    code: raw,
                    name: "CR write other than MOV (CLTS, LMSW)",
                }),
                (None, false) => plain(Exit::Unknown {
                    code: raw,
                    name: "CR read other than MOV (SMSW)",
                }),
            }
        }
        // The exception intercepts (#DB, #AC): the processor has already updated the VMCB's
        // DR6 for a #DB (as KVM relies on too), so the guest's state is what the delivery would
        // have left; EXITINFO1 holds the error code of #AC (§15.12). Faults leave RIP at the
        // faulting instruction: nothing to skip.
        ExitCode::Exception(vector) => plain(Exit::Exception {
            vector,
            error_code: (vector == 17).then_some(i1 as u32),
        }),
        // Refused with #GP or #UD: RIP stays at the instruction.
        ExitCode::Rdpmc => plain(Exit::Rdpmc),
        ExitCode::Monitor | ExitCode::Mwait | ExitCode::MwaitConditional => {
            plain(Exit::MonitorMwait)
        }
        ExitCode::Vmrun
        | ExitCode::Vmload
        | ExitCode::Vmsave
        | ExitCode::Stgi
        | ExitCode::Clgi
        | ExitCode::Skinit
        | ExitCode::Invlpga => plain(Exit::VirtualizationInstruction),
        // EXITINFO1 is the page-fault-style error code, EXITINFO2 the guest-physical address
        // (§15.25.6); SVM reports no linear address.
        ExitCode::Npf => {
            let f = NestedPageFault::from_exit_info(i1, i2);
            plain(Exit::NestedPageFault {
                gpa: GuestPhysAddr::new(f.gpa.as_u64()),
                access: Access {
                    read: !f.is_write() && !f.is_fetch(),
                    write: f.is_write(),
                    fetch: f.is_fetch(),
                },
                linear: None,
            })
        }
        other => plain(Exit::Unknown {
            code: raw,
            name: other.name().unwrap_or("unknown #VMEXIT code"),
        }),
    }
}

/// The exiting instruction, as far as the VMCB or the caller's decoder tell it.
struct Site<'v, D> {
    vmcb: &'v Vmcb,
    assists: Assists,
    raw: u32,
    decode: D,
    /// The decoder's answer, once asked.
    decoded: Option<Option<Decoded>>,
}

impl<D: FnMut() -> Option<Decoded>> Site<'_, D> {
    fn instruction(&mut self) -> Option<Decoded> {
        if self.decoded.is_none() {
            self.decoded = Some((self.decode)());
        }
        self.decoded.flatten()
    }

    /// An instruction intercept: the exit, with the RIP after the instruction (nRIP when the
    /// processor saves it, otherwise RIP plus the decoded length).
    fn skipping(&mut self, exit: Exit) -> SvmExit {
        let next = if self.assists.nrip_save {
            Some(self.vmcb.next_rip())
        } else {
            let rip = self.vmcb.read64(Field64::Rip);
            self.instruction().map(|d| rip.wrapping_add(d.len.into()))
        };
        match next {
            Some(next) => SvmExit {
                exit,
                next_rip: Some(next),
            },
            None => plain(Exit::Unknown {
                code: self.raw,
                name: "exiting instruction could not be decoded",
            }),
        }
    }
}

fn plain(exit: Exit) -> SvmExit {
    SvmExit {
        exit,
        next_rip: None,
    }
}

/// The event whose delivery the last #VMEXIT interrupted (EXITINTINFO, §15.7.2), to be
/// injected again at the next VMRUN; `None` when there was none, and after VMEXIT_INVALID (the
/// guest never ran, so nothing was being delivered).
pub fn interrupted_event(vmcb: &Vmcb) -> Option<Event> {
    if vmcb.exit_code() == ExitCode::Invalid {
        return None;
    }
    vmcb.exit_int_info()
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
