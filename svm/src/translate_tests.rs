//! Every #VMEXIT atoll handles, from the VMCB fields a processor writes (codes from APM Vol. 2
//! Appendix C Table C-1 and the EXITINFO layouts of §15.10.2, §15.11, §15.25.6, written out
//! here rather than taken from the decoders under test).

use super::*;
use crate::exit::EventType;
use atoll_vcpu::Gpr;

const RIP: u64 = 0x10_0000;

/// A VMCB after a #VMEXIT with `code` and the EXITINFOs, RIP at `RIP` and nRIP 0.
fn vmexit(code: u64, info1: u64, info2: u64) -> Box<Vmcb> {
    let mut v = Box::new(Vmcb::zeroed());
    v.write64(Field64::ExitCode, code);
    v.write64(Field64::ExitInfo1, info1);
    v.write64(Field64::ExitInfo2, info2);
    v.write64(Field64::Rip, RIP);
    v
}

const NRIP: Assists = Assists {
    nrip_save: true,
    decode_assists: true,
};
const BARE: Assists = Assists {
    nrip_save: false,
    decode_assists: false,
};

/// A decoder that must not be asked.
fn never() -> Option<Decoded> {
    panic!("the decoder was asked")
}

fn decoded(len: u8, mov_cr: Option<(u8, Gpr, bool)>) -> impl FnMut() -> Option<Decoded> {
    move || {
        Some(Decoded {
            len,
            mov_cr,
            cr0_write: None,
        })
    }
}

#[test]
fn instruction_intercepts_resume_at_nrip_when_saved() {
    for (code, expected) in [
        (0x72, Exit::Cpuid),
        (0x78, Exit::Hlt),
        (0x81, Exit::Hypercall),
        (0x8D, Exit::Xsetbv),
        (0x76, Exit::Invd),
        (0x89, Exit::Wbinvd),
    ] {
        let mut v = vmexit(code, 0, 0);
        v.write64(Field64::NextRip, RIP + 3);
        assert_eq!(
            translate(&v, NRIP, never),
            SvmExit {
                exit: expected,
                next_rip: Some(RIP + 3)
            },
            "code {code:#x}"
        );
    }
}

#[test]
fn without_nrip_the_length_is_decoded_once() {
    let v = vmexit(0x72, 0, 0);
    let mut calls = 0;
    let t = translate(&v, BARE, || {
        calls += 1;
        Some(Decoded {
            cr0_write: None,
            len: 2,
            mov_cr: None,
        })
    });
    assert_eq!(
        t,
        SvmExit {
            exit: Exit::Cpuid,
            next_rip: Some(RIP + 2)
        }
    );
    assert_eq!(calls, 1);
    // A MOV to CR0 without decode assists: the register and the length from one decode.
    let mut calls = 0;
    let t = translate(&vmexit(0x10, 0, 0), BARE, || {
        calls += 1;
        Some(Decoded {
            cr0_write: None,
            len: 3,
            mov_cr: Some((0, Gpr::Rbx, true)),
        })
    });
    assert_eq!(
        t,
        SvmExit {
            exit: Exit::CrWrite {
                cr: 0,
                gpr: Gpr::Rbx
            },
            next_rip: Some(RIP + 3)
        }
    );
    assert_eq!(calls, 1);
}

#[test]
fn an_undecodable_instruction_is_unknown() {
    assert_eq!(
        translate(&vmexit(0x78, 0, 0), BARE, || None),
        SvmExit {
            exit: Exit::Unknown {
                code: 0x78,
                name: "exiting instruction could not be decoded"
            },
            next_rip: None
        }
    );
}

#[test]
fn msr_read_and_write() {
    let mut v = vmexit(0x7C, 0, 0);
    v.write64(Field64::NextRip, RIP + 2);
    assert_eq!(translate(&v, NRIP, never).exit, Exit::MsrRead);
    v.write64(Field64::ExitInfo1, 1);
    assert_eq!(translate(&v, NRIP, never).exit, Exit::MsrWrite);
    v.write64(Field64::ExitInfo1, 2);
    assert_eq!(
        translate(&v, NRIP, never).exit,
        Exit::Unknown {
            code: 0x7C,
            name: "MSR exit with an undefined EXITINFO1"
        }
    );
}

#[test]
fn io_sizes_directions_strings_and_rep_resume_at_exitinfo2() {
    // EXITINFO1: IN bit 0, STR 2, REP 3, SZ8/16/32 bits 4-6, A16/32/64 bits 7-9, port 31:16.
    let cases = [
        (0x0060_0011u64, 1, false, false, false, 0x60),
        (0x0080_0010, 1, true, false, false, 0x80),
        (0x03f8_0020, 2, true, false, false, 0x3f8),
        (0x0cfc_0041, 4, false, false, false, 0xcfc),
        (0x03f8_0114, 1, true, true, false, 0x3f8),
        (0x03f8_022d, 2, false, true, true, 0x3f8),
    ];
    for (info1, size, write, string, rep, port) in cases {
        // Without NRIP save: EXITINFO2 is the next RIP, nothing is decoded.
        assert_eq!(
            translate(&vmexit(0x7B, info1, RIP + 1), BARE, never),
            SvmExit {
                exit: Exit::Io {
                    port,
                    size,
                    write,
                    string,
                    rep
                },
                next_rip: Some(RIP + 1)
            },
            "EXITINFO1 {info1:#x}"
        );
    }
    for bad in [0u64, 0x30, 0x70] {
        assert_eq!(
            translate(&vmexit(0x7B, bad, 0), BARE, never).exit,
            Exit::Unknown {
                code: 0x7B,
                name: "I/O exit with an undefined size"
            }
        );
    }
}

#[test]
fn control_register_accesses() {
    // Decode assists: bit 63 and the register in bits 3:0.
    let mut v = vmexit(0x14, (1 << 63) | 3, 0);
    v.write64(Field64::NextRip, RIP + 3);
    assert_eq!(
        translate(&v, NRIP, never).exit,
        Exit::CrWrite {
            cr: 4,
            gpr: Gpr::Rbx
        }
    );
    let mut v = vmexit(0x08, (1 << 63) | 15, 0);
    v.write64(Field64::NextRip, RIP + 4);
    assert_eq!(
        translate(&v, NRIP, never),
        SvmExit {
            exit: Exit::CrRead {
                cr: 8,
                gpr: Gpr::R15
            },
            next_rip: Some(RIP + 4)
        }
    );
    // Without decode assists the instruction must be a MOV of the same CR and direction.
    assert_eq!(
        translate(
            &vmexit(0x08, 0, 0),
            BARE,
            decoded(4, Some((8, Gpr::Rax, false)))
        )
        .exit,
        Exit::CrRead {
            cr: 8,
            gpr: Gpr::Rax
        }
    );
    assert_eq!(
        translate(
            &vmexit(0x08, 0, 0),
            BARE,
            decoded(4, Some((8, Gpr::Rax, true)))
        )
        .exit,
        Exit::Unknown {
            code: 0x08,
            name: "CR read other than MOV (SMSW)"
        }
    );
    assert_eq!(
        translate(
            &vmexit(0x10, 0, 0),
            BARE,
            decoded(3, Some((4, Gpr::Rax, true)))
        )
        .exit,
        Exit::Unknown {
            code: 0x10,
            name: "CR write other than MOV (CLTS, LMSW)"
        }
    );
    // Neither MOV nor CLTS/LMSW (the decoder found nothing): named, not guessed.
    let mut v = vmexit(0x10, 0, 0);
    v.write64(Field64::NextRip, RIP + 3);
    assert_eq!(
        translate(&v, NRIP, decoded(2, None)).exit,
        Exit::Unknown {
            code: 0x10,
            name: "CR write other than MOV (CLTS, LMSW)"
        }
    );
    // CLTS and LMSW as the decoder read them (with its source): the handlers get them, and
    // RIP moves past them (nRIP when saved, else the decoded length).
    for (what, exit) in [
        (Cr0Write::Clts, Exit::Clts),
        (Cr0Write::Lmsw(0x33), Exit::Lmsw(0x33)),
    ] {
        let d = move || {
            Some(Decoded {
                len: 3,
                mov_cr: None,
                cr0_write: Some(what),
            })
        };
        let t = translate(&v, NRIP, d);
        assert_eq!((t.exit, t.next_rip), (exit, Some(RIP + 3)));
        let t = translate(&vmexit(0x10, 0, 0), BARE, d);
        assert_eq!((t.exit, t.next_rip), (exit, Some(RIP + 3)));
    }
    // Only CR0 has them: a CR4 write the decoder calls CLTS is not taken as one.
    let d = || {
        Some(Decoded {
            len: 2,
            mov_cr: None,
            cr0_write: Some(Cr0Write::Clts),
        })
    };
    assert!(matches!(
        translate(&vmexit(0x14, 0, 0), BARE, d).exit,
        Exit::Unknown { .. }
    ));
}

#[test]
fn events_and_signals() {
    for (code, expected) in [
        (0x60, Exit::ExternalInterrupt { vector: None }),
        (0x61, Exit::Nmi),
        (0x63, Exit::Init),
        (0x64, Exit::InterruptWindow),
        (0x7F, Exit::TripleFault),
    ] {
        assert_eq!(
            translate(&vmexit(code, 0, 0), BARE, never),
            SvmExit {
                exit: expected,
                next_rip: None
            },
            "code {code:#x}"
        );
    }
}

#[test]
fn exception_intercepts() {
    // #AC (EXCP17, 51h): EXITINFO1 is the error code.
    assert_eq!(
        translate(&vmexit(0x51, 0, 0), BARE, never).exit,
        Exit::Exception {
            vector: 17,
            error_code: Some(0)
        }
    );
    // #DB (EXCP1, 41h): no error code, whatever EXITINFO1 holds.
    assert_eq!(
        translate(&vmexit(0x41, 0x55, 0), BARE, never).exit,
        Exit::Exception {
            vector: 1,
            error_code: None
        }
    );
}

#[test]
fn refused_instructions_keep_rip() {
    for (code, expected) in [
        (0x6F, Exit::Rdpmc),
        (0x8A, Exit::MonitorMwait),
        (0x8B, Exit::MonitorMwait),
        (0x8C, Exit::MonitorMwait),
        (0x80, Exit::VirtualizationInstruction),
        (0x82, Exit::VirtualizationInstruction),
        (0x83, Exit::VirtualizationInstruction),
        (0x84, Exit::VirtualizationInstruction),
        (0x85, Exit::VirtualizationInstruction),
        (0x86, Exit::VirtualizationInstruction),
        (0x7A, Exit::VirtualizationInstruction),
    ] {
        assert_eq!(
            translate(&vmexit(code, 0, 0), NRIP, never),
            SvmExit {
                exit: expected,
                next_rip: None
            },
            "code {code:#x}"
        );
    }
}

#[test]
fn nested_page_faults_with_access_bits() {
    // Error code: present 0, write 1, user 2, execute 4, final translation 32.
    let cases = [
        (1u64 << 32 | 0b100, false, false, true),
        (1 << 32 | 0b110, true, false, false),
        (1 << 32 | 0b111, true, false, false),
        (1 << 32 | 0b1_0100, false, true, false),
    ];
    for (info1, write, fetch, read) in cases {
        assert_eq!(
            translate(&vmexit(0x400, info1, 0xfee0_0030), BARE, never),
            SvmExit {
                exit: Exit::NestedPageFault {
                    gpa: GuestPhysAddr::new(0xfee0_0030),
                    access: Access { read, write, fetch },
                    linear: None,
                },
                next_rip: None
            },
            "EXITINFO1 {info1:#x}"
        );
    }
}

#[test]
fn vmexit_invalid_is_invalid_guest_state_in_both_widths() {
    // -1 as the APM writes it, and zero-extended from 32 bits as QEMU's TCG writes it.
    for raw in [u64::MAX, 0xFFFF_FFFF] {
        assert_eq!(
            translate(&vmexit(raw, 0, 0), BARE, never).exit,
            Exit::InvalidGuestState,
            "{raw:#x}"
        );
    }
    assert_eq!(ExitCode::from_field(0xFFFF_FFFE), ExitCode::Busy);
    assert_eq!(ExitCode::from_field(0x400), ExitCode::Npf);
    assert_eq!(
        ExitCode::from_field(0x1_FFFF_FFFF),
        ExitCode::Unknown(0x1_FFFF_FFFF)
    );
}

#[test]
fn unhandled_and_undefined_codes_are_unknown_with_their_name() {
    assert_eq!(
        translate(&vmexit(0x6E, 0, 0), NRIP, never).exit,
        Exit::Unknown {
            code: 0x6E,
            name: "VMEXIT_RDTSC"
        }
    );
    assert_eq!(
        translate(&vmexit(0x3FF, 0, 0), NRIP, never).exit,
        Exit::Unknown {
            code: 0x3FF,
            name: "unknown #VMEXIT code"
        }
    );
}

#[test]
fn interrupted_events_are_redelivered_except_after_vmexit_invalid() {
    // EXITINTINFO: vector 7:0, type 10:8, EV 11, V 31, error code 63:32. A #PF with error
    // code 2 interrupted by a nested page fault.
    let mut v = vmexit(0x400, 0, 0);
    v.write64(
        Field64::ExitIntInfo,
        (2 << 32) | (1 << 31) | (1 << 11) | (3 << 8) | 14,
    );
    assert_eq!(
        interrupted_event(&v),
        Some(Event {
            vector: 14,
            event_type: EventType::Exception,
            error_code: Some(2)
        })
    );
    v.write64(Field64::ExitIntInfo, (1 << 31) | 0x41);
    assert_eq!(
        interrupted_event(&v),
        Some(Event {
            vector: 0x41,
            event_type: EventType::ExternalInterrupt,
            error_code: None
        })
    );
    v.write64(Field64::ExitIntInfo, 0x41);
    assert_eq!(interrupted_event(&v), None);
    let mut v = vmexit(0xFFFF_FFFF, 0, 0);
    v.write64(Field64::ExitIntInfo, (1 << 31) | 0x41);
    assert_eq!(interrupted_event(&v), None);
}
