//! Every exit atoll handles, from the exit-information fields a processor writes (numbers from
//! SDM Vol. 3D Appendix C and the qualification layouts of Vol. 3C §28.2.1, written out here
//! rather than taken from the decoders under test).

use super::*;
use crate::error::VmInstructionError;
use crate::test_util::FakeVmcs;
use atoll_vcpu::Gpr;

/// A VMCS after an exit with basic reason `reason`, instruction length `len` and no event
/// being delivered; every other field is absent and fails to read.
fn exit(reason: u32, len: u32) -> FakeVmcs {
    let mut v = FakeVmcs::strict();
    v.set(Field32::ExitReason, reason.into())
        .set(Field32::VmExitInstructionLength, len.into())
        .set(Field32::IdtVectoringInformation, 0);
    v
}

fn with_q(reason: u32, len: u32, q: u64) -> FakeVmcs {
    let mut v = exit(reason, len);
    v.set(FieldNatural::ExitQualification, q);
    v
}

fn ok(mut v: FakeVmcs) -> VmxExit {
    translate(&mut v).unwrap_or_else(|e| panic!("translation failed: {e}"))
}

fn exit_of(v: FakeVmcs) -> Exit {
    ok(v).exit
}

#[test]
fn instruction_exits_without_operands() {
    for (reason, expected) in [
        (10, Exit::Cpuid),
        (12, Exit::Hlt),
        (18, Exit::Hypercall),
        (31, Exit::MsrRead),
        (32, Exit::MsrWrite),
        (55, Exit::Xsetbv),
        (13, Exit::Invd),
        (54, Exit::Wbinvd),
        (15, Exit::Rdpmc),
        (39, Exit::MonitorMwait),
        (36, Exit::MonitorMwait),
    ] {
        // No qualification in the fake: these exits must not read it.
        let t = ok(exit(reason, 3));
        assert_eq!(t.exit, expected, "reason {reason}");
        assert_eq!(t.instruction_length, 3);
        assert_eq!(t.redelivery, None);
        assert_eq!(t.follow_up, FollowUp::default());
        assert_eq!(t.raw_reason, reason);
        assert!(!t.entry_failure);
    }
}

#[test]
fn vmx_and_smx_instructions_are_virtualization_instructions() {
    // VMCLEAR 19 … VMXON 27, INVEPT 50, INVVPID 53, VMFUNC 59, GETSEC 11.
    for reason in (19..=27).chain([50, 53, 59, 11]) {
        assert_eq!(
            exit_of(exit(reason, 3)),
            Exit::VirtualizationInstruction,
            "reason {reason}"
        );
    }
}

#[test]
fn events_and_signals() {
    assert_eq!(exit_of(exit(2, 0)), Exit::TripleFault);
    assert_eq!(exit_of(exit(3, 0)), Exit::Init);
    assert_eq!(exit_of(exit(7, 0)), Exit::InterruptWindow);
    // SIPI: the vector is bits 7:0 of the qualification.
    assert_eq!(exit_of(with_q(4, 0, 0x9a)), Exit::Sipi { vector: 0x9a });
}

#[test]
fn external_interrupt_with_and_without_acknowledgement() {
    let mut v = exit(1, 0);
    // Valid (bit 31), type external interrupt (0), vector 0x31.
    v.set(Field32::VmExitInterruptionInformation, 0x8000_0031);
    assert_eq!(exit_of(v), Exit::ExternalInterrupt { vector: Some(0x31) });
    let mut v = exit(1, 0);
    v.set(Field32::VmExitInterruptionInformation, 0);
    assert_eq!(exit_of(v), Exit::ExternalInterrupt { vector: None });
}

#[test]
fn nmi_exit() {
    let mut v = exit(0, 0);
    // Valid, type NMI (2), vector 2.
    v.set(Field32::VmExitInterruptionInformation, 0x8000_0202);
    assert_eq!(exit_of(v), Exit::Nmi);
}

#[test]
fn alignment_check_carries_its_error_code() {
    let mut v = exit(0, 0);
    // Valid, hardware exception (3), error code valid (bit 11), vector 17.
    v.set(Field32::VmExitInterruptionInformation, 0x8000_0b11)
        .set(Field32::VmExitInterruptionErrorCode, 0);
    let t = ok(v);
    assert_eq!(
        t.exit,
        Exit::Exception {
            vector: 17,
            error_code: Some(0)
        }
    );
    assert_eq!(t.follow_up, FollowUp::default());
}

#[test]
fn debug_exception_asks_for_dr6_from_the_qualification() {
    let mut v = with_q(0, 0, 0x4001);
    // Valid, hardware exception, vector 1, no error code.
    v.set(Field32::VmExitInterruptionInformation, 0x8000_0301);
    let t = ok(v);
    assert_eq!(
        t.exit,
        Exit::Exception {
            vector: 1,
            error_code: None
        }
    );
    assert_eq!(t.follow_up.debug_qualification, Some(0x4001));
    assert!(!t.follow_up.step_over_int1);
}

#[test]
fn int1_is_stepped_over_before_its_debug_trap_is_reflected() {
    let mut v = with_q(0, 1, 0);
    // Valid, privileged software exception (5), vector 1.
    v.set(Field32::VmExitInterruptionInformation, 0x8000_0501);
    let t = ok(v);
    assert_eq!(
        t.exit,
        Exit::Exception {
            vector: 1,
            error_code: None
        }
    );
    assert!(t.follow_up.step_over_int1);
    assert_eq!(t.follow_up.debug_qualification, Some(0));
    assert_eq!(t.instruction_length, 1);
}

#[test]
fn software_interrupt_exits_are_not_handled() {
    let mut v = exit(0, 2);
    // Valid, software exception (6), vector 3 (INT3): never in atoll's exception bitmap.
    v.set(Field32::VmExitInterruptionInformation, 0x8000_0603);
    assert_eq!(
        exit_of(v),
        Exit::Unknown {
            code: 0,
            name: "exception"
        }
    );
}

#[test]
fn io_sizes_directions_strings_and_rep() {
    // Table 28-5: size 2:0 (0, 1, 3), IN bit 3, string bit 4, REP bit 5, port 31:16.
    let cases = [
        (0x0060_0000u64, 1, true, false, false, 0x60),
        (0x0070_0008, 1, false, false, false, 0x70),
        (0x03f8_0001, 2, true, false, false, 0x3f8),
        (0x0cfc_000b, 4, false, false, false, 0xcfc),
        (0x03f8_0010, 1, true, true, false, 0x3f8),
        (0x03f8_0039, 2, false, true, true, 0x3f8),
        (0x0080_0040, 1, true, false, false, 0x80),
    ];
    for (q, size, write, string, rep, port) in cases {
        assert_eq!(
            exit_of(with_q(30, 2, q)),
            Exit::Io {
                port,
                size,
                write,
                string,
                rep
            },
            "qualification {q:#x}"
        );
    }
    // Sizes 2 and 4-7 are undefined.
    for bad in [2u64, 4, 5, 6, 7] {
        assert_eq!(
            exit_of(with_q(30, 1, bad)),
            Exit::Unknown {
                code: 30,
                name: "I/O instruction with an undefined size"
            }
        );
    }
}

#[test]
fn control_register_accesses() {
    // Table 28-3: CR 3:0, type 5:4, LMSW memory 6, register 11:8, LMSW source 31:16.
    assert_eq!(
        exit_of(with_q(28, 3, 0x0000)),
        Exit::CrWrite {
            cr: 0,
            gpr: Gpr::Rax
        }
    );
    assert_eq!(
        exit_of(with_q(28, 3, 0x0304)),
        Exit::CrWrite {
            cr: 4,
            gpr: Gpr::Rbx
        }
    );
    assert_eq!(
        exit_of(with_q(28, 4, 0x0f18)),
        Exit::CrRead {
            cr: 8,
            gpr: Gpr::R15
        }
    );
    assert_eq!(
        exit_of(with_q(28, 3, 0x0113)),
        Exit::CrRead {
            cr: 3,
            gpr: Gpr::Rcx
        }
    );
    assert_eq!(exit_of(with_q(28, 2, 0x20)), Exit::Clts);
    assert_eq!(exit_of(with_q(28, 3, 0x000b_0030)), Exit::Lmsw(0xb));
    assert_eq!(exit_of(with_q(28, 5, 0x0033_0070)), Exit::Lmsw(0x33));
}

#[test]
fn ept_violation_with_access_bits_and_linear_address() {
    let mut v = with_q(48, 0, 0b1000_0010);
    v.set(Field64::GuestPhysicalAddress, 0xfee0_0030)
        .set(FieldNatural::GuestLinearAddress, 0xffff_8000_fee0_0030);
    let t = ok(v);
    assert_eq!(
        t.exit,
        Exit::NestedPageFault {
            gpa: GuestPhysAddr::new(0xfee0_0030),
            access: Access {
                read: false,
                write: true,
                fetch: false
            },
            linear: Some(0xffff_8000_fee0_0030),
        }
    );
    assert!(!t.follow_up.reblock_nmi);

    // A fetch without a valid linear address: the linear-address field is not read.
    let mut v = with_q(48, 0, 0b100);
    v.set(Field64::GuestPhysicalAddress, 0x1234_5000);
    assert_eq!(
        exit_of(v),
        Exit::NestedPageFault {
            gpa: GuestPhysAddr::new(0x1234_5000),
            access: Access {
                read: false,
                write: false,
                fetch: true
            },
            linear: None,
        }
    );

    let mut v = with_q(48, 0, 0b1);
    v.set(Field64::GuestPhysicalAddress, 0);
    let Exit::NestedPageFault { access, .. } = exit_of(v) else {
        panic!("not a nested page fault");
    };
    assert!(access.read && !access.write && !access.fetch);
}

#[test]
fn ept_violation_after_iret_reblocks_nmis_unless_an_event_is_redelivered() {
    // Bit 12: NMI unblocking due to IRET.
    let mut v = with_q(48, 0, (1 << 12) | 1);
    v.set(Field64::GuestPhysicalAddress, 0x2000);
    assert!(ok(v).follow_up.reblock_nmi);

    let mut v = with_q(48, 0, (1 << 12) | 1);
    v.set(Field64::GuestPhysicalAddress, 0x2000)
        // An external interrupt 0x40 was being delivered.
        .set(Field32::IdtVectoringInformation, 0x8000_0040);
    let t = ok(v);
    assert!(!t.follow_up.reblock_nmi);
    assert!(t.redelivery.is_some());
}

#[test]
fn interrupted_event_is_redelivered_with_error_code_and_length() {
    // A #PF (hardware exception 14, error code valid) interrupted by an EPT violation.
    let mut v = with_q(48, 0, 0b10);
    v.set(Field64::GuestPhysicalAddress, 0x3000)
        .set(Field32::IdtVectoringInformation, 0x8000_0b0e)
        .set(Field32::IdtVectoringErrorCode, 0x2);
    let r = ok(v).redelivery.expect("an event to re-deliver");
    assert_eq!(r.info.vector, 14);
    assert_eq!(r.info.kind, InterruptionType::HardwareException);
    assert_eq!(r.error_code, Some(2));
    assert_eq!(r.instruction_length, None);

    // INT 0x80 (software interrupt, type 4) interrupted: its instruction length goes along,
    // and no error code is read (the field is absent and would fail).
    let mut v = with_q(48, 2, 0b10);
    v.set(Field64::GuestPhysicalAddress, 0x3000)
        .set(Field32::IdtVectoringInformation, 0x8000_0480);
    let r = ok(v).redelivery.expect("an event to re-deliver");
    assert_eq!(r.info.kind, InterruptionType::SoftwareInterrupt);
    assert_eq!(r.instruction_length, Some(2));
    assert_eq!(r.error_code, None);
}

#[test]
fn entry_failures() {
    // Bit 31 with reason 33: invalid guest state; IDT-vectoring information is not read.
    let mut v = FakeVmcs::strict();
    v.set(Field32::ExitReason, 0x8000_0021)
        .set(Field32::VmExitInstructionLength, 0);
    let t = ok(v);
    assert_eq!(t.exit, Exit::InvalidGuestState);
    assert!(t.entry_failure);
    assert_eq!(t.redelivery, None);
    // Reason 34, MSR loading.
    let mut v = FakeVmcs::strict();
    v.set(Field32::ExitReason, 0x8000_0022)
        .set(Field32::VmExitInstructionLength, 0);
    assert_eq!(
        exit_of(v),
        Exit::Unknown {
            code: 0x8000_0022,
            name: "VM-entry failure due to MSR loading"
        }
    );
}

#[test]
fn unhandled_and_undefined_reasons_are_unknown_with_their_name() {
    assert_eq!(
        exit_of(exit(16, 2)),
        Exit::Unknown {
            code: 16,
            name: "RDTSC"
        }
    );
    assert_eq!(
        exit_of(exit(49, 0)),
        Exit::Unknown {
            code: 49,
            name: "EPT misconfiguration"
        }
    );
    assert_eq!(
        exit_of(exit(35, 0)),
        Exit::Unknown {
            code: 35,
            name: "unknown exit reason"
        }
    );
}

#[test]
fn a_failed_vmread_is_an_error_naming_the_field() {
    let unsupported = VmFail::Valid(VmInstructionError::UnsupportedVmcsComponent);
    // No exit reason at all.
    assert_eq!(
        translate(&mut FakeVmcs::strict()),
        Err(TranslateError {
            field: Field32::ExitReason.into(),
            error: unsupported
        })
    );
    // An I/O exit whose qualification cannot be read is not "OUT to port 0".
    let err = translate(&mut exit(30, 1)).expect_err("the qualification is missing");
    assert_eq!(err.field, FieldNatural::ExitQualification.into());
    assert_eq!(
        err.to_string(),
        "VMREAD of ExitQualification (0x6400) failed: VMfailValid: VM-instruction error 12: \
         VMREAD/VMWRITE from/to unsupported VMCS component"
    );
    // An EPT violation without its guest-physical address.
    let err = translate(&mut with_q(48, 0, 1)).expect_err("the address is missing");
    assert_eq!(err.field, Field64::GuestPhysicalAddress.into());
    // A linear address said to be valid must be read.
    let mut v = with_q(48, 0, 1 << 7);
    v.set(Field64::GuestPhysicalAddress, 0);
    let err = translate(&mut v).expect_err("the linear address is missing");
    assert_eq!(err.field, FieldNatural::GuestLinearAddress.into());
    // An exception whose error code is said to be valid.
    let mut v = exit(0, 0);
    v.set(Field32::VmExitInterruptionInformation, 0x8000_0b11);
    let err = translate(&mut v).expect_err("the error code is missing");
    assert_eq!(err.field, Field32::VmExitInterruptionErrorCode.into());
    // An interrupted event's error code.
    let mut v = exit(10, 2);
    v.set(Field32::IdtVectoringInformation, 0x8000_0b0d);
    let err = translate(&mut v).expect_err("the IDT-vectoring error code is missing");
    assert_eq!(err.field, Field32::IdtVectoringErrorCode.into());
    // VMfailInvalid (no current VMCS) reads as such.
    let e = TranslateError {
        field: Field32::ExitReason.into(),
        error: VmFail::Invalid,
    };
    assert_eq!(
        e.to_string(),
        "VMREAD of ExitReason (0x4402) failed: VMfailInvalid (no current VMCS)"
    );
}
