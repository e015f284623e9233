//! Host tests of the root partition's exit policy. The machine: host cores with APIC ids 0, 1
//! and 4 (host vCPUs 0, 1, 2), two enclave cores; atoll at 2–4 MiB, the enclave pool at
//! 16–32 MiB; host RAM as the fake memory covers it: 0–64 KiB; an Intel desktop's FADT (reset
//! register 0xCF9 / 0x06, PM1a control at 0x1804, `\_S5` = 7).

use super::*;
use crate::run::host_ipi::{DeliveryMode, IcrFormat};
use crate::run::host_reset::{
    AddressSpace, HostPlatform, Register, ResetRegister, SleepControl, RESET_CONTROL_PORT,
};
use alloc::string::ToString;
use alloc::vec;
use atoll_devices::lapic::{DestMode, Shorthand};
use atoll_vcpu::fake::FakeVcpu;
use atoll_vcpu::{Access, SliceMemory};
use core::cell::RefCell;
use std::collections::BTreeMap;

const APIC: u64 = 0xfee0_0000;
const POOL: u64 = 0x100_0000;
const ATOLL: u64 = 0x20_0000;
const RIP: u64 = 0x1000;
const PM1A: u16 = 0x1804;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Rdmsr(u32),
    Wrmsr(u32, u64),
    PortIn(u16, u8),
    PortOut(u16, u8, u32),
    ApicRead(u32),
    ApicWrite(u32, u32),
    Ipi(Icr),
    Xsetbv(u64),
    Wbinvd,
    Kick(u32),
    Interrupt(u32, u8),
}

/// A core whose CPUID sets every bit (so a hidden bit is visibly cleared), with the MSRs in
/// `msrs` (any other raises #GP), recording every call.
#[derive(Default)]
struct Hw {
    msrs: RefCell<BTreeMap<u32, u64>>,
    calls: RefCell<Vec<Call>>,
}

impl Hw {
    fn new() -> Self {
        let hw = Hw::default();
        for (i, v) in [
            (msr::IA32_MTRRCAP, 0x508),
            (msr::IA32_MTRR_DEF_TYPE, 0xc06),
            (0x200, 0x6),
            (msr::IA32_MISC_ENABLE, 0x1),
            (msr::IA32_APIC_BASE, APIC | 0x900),
            (msr::IA32_TSC, 1000),
            (msr::IA32_TSC_DEADLINE, 0),
            (msr::IA32_SPEC_CTRL, 0),
            (msr::IA32_FEATURE_CONTROL, 0x5),
            (0x401, 0xbe00_0000_0000_0000),
            (0xc001_0010, 0x0074_0000),
            (msr::IA32_XSS, 0),
            (0x802, 0),
        ] {
            hw.msrs.borrow_mut().insert(i, v);
        }
        hw
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.take()
    }
    fn log(&self, c: Call) {
        self.calls.borrow_mut().push(c);
    }
}

impl HostHw for Hw {
    fn cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        match leaf {
            0xd => [0b111, 0, u32::MAX, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            _ => [u32::MAX; 4],
        }
    }
    fn rdmsr(&self, msr: u32) -> Option<u64> {
        self.log(Call::Rdmsr(msr));
        self.msrs.borrow().get(&msr).copied()
    }
    fn wrmsr(&self, msr: u32, value: u64) -> bool {
        self.log(Call::Wrmsr(msr, value));
        let mut m = self.msrs.borrow_mut();
        match m.get_mut(&msr) {
            Some(v) => {
                *v = value;
                true
            }
            None => false,
        }
    }
    fn port_in(&self, port: u16, size: u8) -> u32 {
        self.log(Call::PortIn(port, size));
        0x5a5a_5a5a
    }
    fn port_out(&self, port: u16, size: u8, value: u32) {
        self.log(Call::PortOut(port, size, value));
    }
    fn apic_read(&self, offset: u32) -> u32 {
        self.log(Call::ApicRead(offset));
        0x1234_0000 | offset
    }
    fn apic_write(&self, offset: u32, value: u32) {
        self.log(Call::ApicWrite(offset, value));
    }
    fn send_ipi(&self, icr: Icr) {
        self.log(Call::Ipi(icr));
    }
    fn ioapic_mmio(&self, _base: u64, _offset: u32, _write: Option<u32>) -> u32 {
        0
    }
    fn device_mmio(&self, _address: u64, _size: u8, _write: Option<u64>) -> u64 {
        0
    }
    fn kick_core(&self, apic_id: u32) {
        self.log(Call::Kick(apic_id));
    }
    fn interrupt_core(&self, apic_id: u32, vector: u8) {
        self.log(Call::Interrupt(apic_id, vector));
    }
    fn now_us(&self) -> u64 {
        0
    }
    fn xsetbv(&self, value: u64) {
        self.log(Call::Xsetbv(value));
    }
    fn wbinvd(&self) {
        self.log(Call::Wbinvd);
    }
}

#[derive(Default)]
struct Lines(Vec<(String, String)>);
impl Console for Lines {
    fn line(&mut self, name: &str, text: &str) {
        self.0.push((name.to_string(), text.to_string()));
    }
}

fn platform() -> HostPlatform {
    HostPlatform {
        reset_register: Some(ResetRegister {
            register: Register::io_byte(RESET_CONTROL_PORT),
            value: 0x06,
        }),
        reset_supported: true,
        sleep: Some(SleepControl::Pm1 {
            a: Register {
                space: AddressSpace::SystemIo,
                address: PM1A.into(),
                width: 2,
            },
            b: None,
            s5_slp_typ_a: 7,
            s5_slp_typ_b: 0,
        }),
    }
}

fn shared(x2apic: bool) -> HostShared {
    let mut cores = HostCores::new(2);
    for id in [0, 1, 4] {
        cores.add(id).unwrap();
    }
    HostShared::new(
        cores,
        platform(),
        &[
            PhysRange::from_len(HostPhysAddr::new(POOL), 0x100_0000),
            PhysRange::from_len(HostPhysAddr::new(ATOLL), 0x20_0000),
        ],
        HostPhysAddr::new(APIC),
        x2apic,
    )
}

struct World {
    vcpu: FakeVcpu,
    ram: Vec<u8>,
    me: HostVcpu,
    shared: HostShared,
    hw: Hw,
    console: Lines,
}

impl World {
    /// Host vCPU 0 (APIC id 0) in 64-bit mode, paging off for the fake walk, at RIP 0x1000.
    fn new(x2apic: bool) -> Self {
        let mut vcpu = FakeVcpu::default();
        vcpu.cr[0] = 1;
        vcpu.efer = (1 << 8) | (1 << 10);
        vcpu.cs.long = true;
        vcpu.rip = RIP;
        Self {
            vcpu,
            ram: vec![0; 0x10000],
            me: HostVcpu::new(0, 0),
            shared: shared(x2apic),
            hw: Hw::new(),
            console: Lines::default(),
        }
    }
    fn exit(&mut self, e: Exit) -> HostAction {
        handle(
            &e,
            &mut self.vcpu,
            &mut SliceMemory(&mut self.ram),
            &mut self.me,
            &self.shared,
            &self.hw,
            &mut self.console,
        )
    }
    fn set(&mut self, r: Gpr, v: u64) {
        self.vcpu.gprs[r as usize] = v;
    }
    fn get(&self, r: Gpr) -> u64 {
        self.vcpu.gprs[r as usize]
    }
    /// Puts `code` at RIP and resets what the last exit left.
    fn code(&mut self, code: &[u8]) {
        self.ram[RIP as usize..RIP as usize + code.len()].copy_from_slice(code);
        self.vcpu.rip = RIP;
        self.vcpu.injected = None;
        self.vcpu.skipped = 0;
        self.hw.calls();
    }
    fn rdmsr(&mut self, index: u32) -> HostAction {
        self.vcpu.injected = None;
        self.vcpu.skipped = 0;
        self.set(Gpr::Rcx, index.into());
        self.exit(Exit::MsrRead)
    }
    fn wrmsr(&mut self, index: u32, value: u64) -> HostAction {
        self.vcpu.injected = None;
        self.vcpu.skipped = 0;
        self.set(Gpr::Rcx, index.into());
        self.set(Gpr::Rax, value & 0xffff_ffff);
        self.set(Gpr::Rdx, value >> 32);
        self.exit(Exit::MsrWrite)
    }
    fn denied(&self) -> u64 {
        self.shared.counters.msr_denied.load(Ordering::Relaxed)
    }
    /// `mov dword [rbx], eax` at `gpa` with EAX = `value`.
    fn store32(&mut self, gpa: u64, value: u32) -> HostAction {
        self.code(&[0x89, 0x03]);
        self.set(Gpr::Rbx, gpa);
        self.set(Gpr::Rax, value.into());
        self.npf(gpa, true)
    }
    fn npf(&mut self, gpa: u64, write: bool) -> HostAction {
        self.exit(Exit::NestedPageFault {
            gpa: GuestPhysAddr::new(gpa),
            access: Access {
                read: !write,
                write,
                fetch: false,
            },
            linear: None,
        })
    }
    fn out(&mut self, port: u16, size: u8, value: u32) -> HostAction {
        self.vcpu.skipped = 0;
        self.set(Gpr::Rax, value.into());
        self.exit(Exit::Io {
            port,
            size,
            write: true,
            string: false,
            rep: false,
        })
    }
    fn inp(&mut self, port: u16, size: u8) -> HostAction {
        self.vcpu.skipped = 0;
        self.set(Gpr::Rax, 0xdead_beef_0000_0000);
        self.exit(Exit::Io {
            port,
            size,
            write: false,
            string: false,
            rep: false,
        })
    }
}

use boot::GuestPhysAddr;

const GP0: Option<(u8, Option<u32>)> = Some((vector::GP, Some(0)));
const UD: Option<(u8, Option<u32>)> = Some((vector::UD, None));

#[test]
fn cpuid_hides_virtualization_and_what_the_host_does_not_own() {
    let mut w = World::new(false);
    let cpuid = |w: &mut World, leaf: u32, sub: u32| {
        w.vcpu.skipped = 0;
        w.set(Gpr::Rax, leaf.into());
        w.set(Gpr::Rcx, sub.into());
        assert_eq!(w.exit(Exit::Cpuid), HostAction::Resume);
        assert_eq!(w.vcpu.skipped, 1, "leaf {leaf:#x}: RIP advanced");
        [Gpr::Rax, Gpr::Rbx, Gpr::Rcx, Gpr::Rdx].map(|r| w.get(r) as u32)
    };
    // Leaf 1: VMX (ECX 5, SDM Vol. 2A Table 3-10) and x2APIC (21) hidden; OSXSAVE (27)
    // follows the host's CR4 (clear here); everything else the core says stays.
    let l1 = cpuid(&mut w, 1, 0);
    assert_eq!(l1[2] & (1 << 5), 0, "VMX");
    assert_eq!(l1[2] & (1 << 21), 0, "x2APIC not offered");
    assert_eq!(l1[2] & (1 << 27), 0, "OSXSAVE mirrors CR4.OSXSAVE");
    assert_ne!(
        l1[2] & (1 << 31),
        0,
        "the hardware's hypervisor bit is kept"
    );
    assert_ne!(
        l1[2] & (1 << 3),
        0,
        "MONITOR stays (not intercepted for the host)"
    );
    assert_eq!(l1[0], u32::MAX, "EAX untouched");
    // AMD: SVM (0x8000_0001 ECX bit 2, APM Vol. 3 E.4.2) and the SVM leaf.
    let e1 = cpuid(&mut w, 0x8000_0001, 0);
    assert_eq!(e1[2] & (1 << 2), 0, "SVM");
    assert_eq!(e1[3], u32::MAX);
    assert_eq!(cpuid(&mut w, 0x8000_000a, 0), [0; 4]);
    assert_eq!(
        cpuid(&mut w, 0x4000_0000, 0),
        [0; 4],
        "no hypervisor leaves"
    );
    assert_eq!(cpuid(&mut w, 0xa, 0), [0; 4], "no PMU");
    // Leaf 0xD.1: XSAVEC and XSAVES (EAX 1, 3) hidden, XSAVEOPT and XGETBV1 (0, 2) kept; PT's
    // and CET's supervisor components (ECX 8, 11, 12) hidden.
    let d1 = cpuid(&mut w, 0xd, 1);
    assert_eq!(d1[0] & 0b1010, 0, "XSAVEC, XSAVES");
    assert_eq!(d1[0] & 0b101, 0b101, "XSAVEOPT, XGETBV1");
    assert_eq!(d1[2] & ((1 << 8) | (1 << 11) | (1 << 12)), 0);
    // With CR4.OSXSAVE set and x2APIC offered, both bits are there.
    let mut w = World::new(true);
    w.vcpu.cr[4] = 1 << 18;
    let l1 = cpuid(&mut w, 1, 0);
    assert_ne!(l1[2] & (1 << 21), 0, "x2APIC offered");
    assert_ne!(l1[2] & (1 << 27), 0, "OSXSAVE");
    assert!(
        w.hw.calls().is_empty(),
        "CPUID needs no MSR, port or APIC access"
    );
}

#[test]
fn allowed_msr_reads_reach_the_core_and_denied_ones_nothing() {
    let mut w = World::new(false);
    for index in [
        msr::IA32_MTRRCAP,
        0x200,
        msr::IA32_MISC_ENABLE,
        0x401,
        0xc001_0010,
    ] {
        w.hw.calls();
        w.set(Gpr::Rax, 0);
        w.set(Gpr::Rdx, 0);
        assert_eq!(w.rdmsr(index), HostAction::Resume);
        let want = w.hw.msrs.borrow()[&index];
        assert_eq!(w.hw.calls(), [Call::Rdmsr(index)], "{index:#x}");
        assert_eq!(
            (
                w.get(Gpr::Rdx) << 32 | w.get(Gpr::Rax),
                w.vcpu.injected,
                w.vcpu.skipped
            ),
            (want, None, 1),
            "{index:#x}"
        );
    }
    // Denied: the SVM and VMX control MSRs, RAPL energy, an unknown index — #GP, counted,
    // and the core never asked.
    for (n, index) in [0xc001_0117u32, 0xc001_0114, 0x611, 0x1234_5678]
        .into_iter()
        .enumerate()
    {
        w.hw.calls();
        assert_eq!(w.rdmsr(index), HostAction::Resume);
        assert_eq!((w.vcpu.injected, w.vcpu.skipped), (GP0, 0), "{index:#x}");
        assert!(w.hw.calls().is_empty(), "{index:#x}");
        assert_eq!(w.denied(), n as u64 + 1);
    }
    // An allowed index the core lacks: the core's #GP, not a policy denial.
    w.hw.msrs.borrow_mut().remove(&msr::IA32_MTRRCAP);
    w.rdmsr(msr::IA32_MTRRCAP);
    assert_eq!((w.vcpu.injected, w.denied()), (GP0, 4));
    // EFER and PAT are the vCPU's, not the core's.
    w.vcpu.pat = 0x0007_0406_0007_0406;
    w.hw.calls();
    w.rdmsr(msr::IA32_PAT);
    assert_eq!(w.get(Gpr::Rax), 0x0007_0406);
    w.rdmsr(msr::IA32_EFER);
    assert_eq!(w.get(Gpr::Rax), (1 << 8) | (1 << 10));
    assert!(w.hw.calls().is_empty());
    // TSC: the core's plus the vCPU's offset.
    w.vcpu.tsc_offset = 5;
    w.rdmsr(msr::IA32_TSC);
    assert_eq!(w.get(Gpr::Rax), 1005);
}

#[test]
fn msr_writes_reach_the_core_only_where_the_table_allows() {
    let mut w = World::new(false);
    let wr = |w: &mut World, index: u32, value: u64| {
        w.hw.calls();
        assert_eq!(w.wrmsr(index, value), HostAction::Resume);
        (w.vcpu.injected, w.vcpu.skipped, w.hw.calls())
    };
    let write = |i, v| vec![Call::Wrmsr(i, v)];
    // Passed: TSC deadline (by the offset), SPEC_CTRL, PRED_CMD, an MC status clear.
    w.vcpu.tsc_offset = 100;
    assert_eq!(
        wr(&mut w, msr::IA32_TSC_DEADLINE, 5000),
        (None, 1, write(msr::IA32_TSC_DEADLINE, 4900))
    );
    assert_eq!(
        wr(&mut w, msr::IA32_SPEC_CTRL, 1),
        (None, 1, write(msr::IA32_SPEC_CTRL, 1))
    );
    w.hw.msrs.borrow_mut().insert(msr::IA32_PRED_CMD, 0);
    assert_eq!(
        wr(&mut w, msr::IA32_PRED_CMD, 1),
        (None, 1, write(msr::IA32_PRED_CMD, 1))
    );
    assert_eq!(wr(&mut w, 0x401, 0), (None, 1, write(0x401, 0)));
    // Unchanged-only: the same value is accepted without a write; a change is refused.
    let read = |i| vec![Call::Rdmsr(i)];
    assert_eq!(
        wr(&mut w, 0x200, 0x6),
        (None, 1, read(0x200)),
        "MTRR rewritten as is"
    );
    assert_eq!(
        wr(&mut w, 0x200, 0x0),
        (GP0, 0, read(0x200)),
        "MTRR changed"
    );
    // The default type: disabling (E clear) is written; re-enabling only with the value atoll
    // loaded at boot; any other enabled value is refused.
    let def = msr::IA32_MTRR_DEF_TYPE;
    let boot = 0xc06;
    w.hw.msrs.borrow_mut().insert(def, boot);
    w.shared.set_boot_mtrr_def_type(boot);
    assert_eq!(
        wr(&mut w, def, 0),
        (None, 1, vec![Call::Rdmsr(def), Call::Wrmsr(def, 0)]),
        "MTRRs disabled: all uncacheable"
    );
    assert_eq!(
        wr(&mut w, def, 0x806),
        (GP0, 0, read(def)),
        "MTRRs enabled with another default type"
    );
    assert_eq!(
        wr(&mut w, def, boot),
        (None, 1, vec![Call::Rdmsr(def), Call::Wrmsr(def, boot)]),
        "the boot value restored"
    );
    assert_eq!(wr(&mut w, def, boot), (None, 1, read(def)), "unchanged");
    assert_eq!(
        wr(&mut w, msr::IA32_FEATURE_CONTROL, 0x7),
        (GP0, 0, read(msr::IA32_FEATURE_CONTROL))
    );
    assert_eq!(
        wr(&mut w, 0xc001_0010, 0),
        (GP0, 0, read(0xc001_0010)),
        "SYSCFG"
    );
    // Never: VM_HSAVE_PA, VM_CR, TOP_MEM, the IORRs, IA32_TSC, and the x2APIC ICR when x2APIC
    // is not offered.
    let before = w.denied();
    for index in [
        0xc001_0117,
        0xc001_0114,
        0xc001_001a,
        0xc001_0016,
        msr::IA32_TSC,
        0x830,
    ] {
        assert_eq!(wr(&mut w, index, 0), (GP0, 0, vec![]), "{index:#x}");
    }
    assert_eq!(w.denied(), before + 6);
    // EFER goes to the vCPU: NXE accepted, SVME (bit 12, hidden) refused.
    assert_eq!(
        wr(&mut w, msr::IA32_EFER, (1 << 8) | (1 << 10) | (1 << 11)).0,
        None
    );
    assert_eq!(w.vcpu.efer, (1 << 8) | (1 << 10) | (1 << 11));
    let svme = w.vcpu.efer | (1 << 12);
    assert_eq!(wr(&mut w, msr::IA32_EFER, svme), (GP0, 0, vec![]));
    assert_eq!(w.vcpu.efer, (1 << 8) | (1 << 10) | (1 << 11));
    // PAT to the vCPU, with a reserved type refused.
    assert_eq!(
        wr(&mut w, msr::IA32_PAT, 0x0007_0406_0007_0406),
        (None, 1, vec![])
    );
    assert_eq!(w.vcpu.pat, 0x0007_0406_0007_0406);
    assert_eq!(wr(&mut w, msr::IA32_PAT, 0x0007_0406_0007_0402).0, GP0);
    // XSS: only components CPUID 0xD.1 lists (the fake lists all but the hidden ones).
    assert_eq!(
        wr(&mut w, msr::IA32_XSS, 1 << 14),
        (None, 1, write(msr::IA32_XSS, 1 << 14))
    );
    assert_eq!(
        wr(&mut w, msr::IA32_XSS, 1 << 12).0,
        GP0,
        "CET supervisor hidden"
    );
    // State the backend switches must never exit.
    w.set(Gpr::Rcx, 0xc000_0082);
    assert!(matches!(w.exit(Exit::MsrWrite), HostAction::Fail(_)));
}

#[test]
fn apic_base_keeps_the_base_and_the_enable_and_extd_only_when_offered() {
    let mut w = World::new(false);
    let base = APIC | 0x900;
    assert_eq!(w.wrmsr(msr::IA32_APIC_BASE, base), HostAction::Resume);
    assert_eq!(
        (w.vcpu.injected, w.vcpu.skipped),
        (None, 1),
        "rewritten as is"
    );
    for bad in [base + 0x1000, base & !(1 << 11), base | (1 << 10)] {
        w.hw.calls();
        w.wrmsr(msr::IA32_APIC_BASE, bad);
        assert_eq!(w.vcpu.injected, GP0, "{bad:#x}");
        assert!(!w
            .hw
            .calls()
            .contains(&Call::Wrmsr(msr::IA32_APIC_BASE, bad)));
    }
    // Offered: x2APIC mode goes to the core, and its ICR then goes through the filter.
    let mut w = World::new(true);
    w.wrmsr(msr::IA32_APIC_BASE, base | (1 << 10));
    assert_eq!(w.vcpu.injected, None);
    assert!(w.me.x2apic);
    assert_eq!(w.hw.msrs.borrow()[&msr::IA32_APIC_BASE], base | (1 << 10));
    w.hw.calls();
    w.wrmsr(0x830, 4 << 32 | 0x40);
    assert_eq!(w.vcpu.skipped, 1);
    let sent = w.hw.calls();
    assert!(
        matches!(
            sent.as_slice(),
            [Call::Ipi(Icr {
                vector: 0x40,
                dest: 4,
                format: IcrFormat::X2Apic,
                ..
            })]
        ),
        "{sent:?}"
    );
    // A reserved ICR bit is #GP, as on the core.
    w.wrmsr(0x830, 1 << 12 | 0x40);
    assert_eq!(w.vcpu.injected, GP0);
    // Other x2APIC registers are the core's.
    w.rdmsr(0x802);
    assert_eq!(w.vcpu.injected, None);
    // The xAPIC page is not the APIC any more: an ICR store there sends nothing.
    w.store32(APIC + 0x300, 0x4040);
    assert!(w.hw.calls().is_empty());
    assert_eq!(w.shared.counters.unmapped_writes.load(Ordering::Relaxed), 1);
}

#[test]
fn denied_msrs_are_logged_once_per_index() {
    let s = shared(false);
    assert!(s.first_denial(0x611, 1));
    assert!(!s.first_denial(0x611, 2));
    assert!(s.first_denial(0x612, 3));
    // A full table falls back to the rate limit on the total.
    for i in 0..MSR_LOG_SLOTS as u32 {
        s.first_denial(0x1000 + i, 4);
    }
    assert!(!s.first_denial(0x9999, 100));
    assert!(s.first_denial(0x9999, 128));
}

#[test]
fn icr_writes_go_through_the_filter() {
    let mut w = World::new(false);
    // ICR high: the shadow, and the core's register.
    assert_eq!(w.store32(APIC + 0x310, 4 << 24), HostAction::Resume);
    assert_eq!(w.me.icr_high(), 4 << 24);
    assert_eq!(w.hw.calls(), [Call::ApicWrite(0x310, 4 << 24)]);
    assert_eq!(w.vcpu.rip, RIP + 2, "the MOV completes");
    // Fixed vector 0x40 to host core 4: sent, physical.
    w.store32(APIC + 0x300, 0x4040);
    let want = Icr {
        vector: 0x40,
        mode: DeliveryMode::Fixed,
        dest_mode: DestMode::Physical,
        level: true,
        level_triggered: false,
        shorthand: Shorthand::None,
        dest: 4,
        format: IcrFormat::XApic,
    };
    assert_eq!(w.hw.calls(), [Call::Ipi(want)]);
    // To enclave core 2: dropped and counted, nothing sent.
    w.store32(APIC + 0x310, 2 << 24);
    w.store32(APIC + 0x300, 0x4040);
    assert!(w.hw.calls().is_empty());
    assert_eq!(w.shared.counters.ipis_dropped.load(Ordering::Relaxed), 1);
    assert_eq!(w.vcpu.rip, RIP + 2);
    // INIT then STARTUP to host core 1: recorded in vCPU 1's mailbox, signalled.
    w.store32(APIC + 0x310, 1 << 24);
    assert_eq!(
        w.store32(APIC + 0x300, 0x4500),
        HostAction::Signal { index: 1 }
    );
    assert_eq!(
        w.store32(APIC + 0x300, 0x469a),
        HostAction::Signal { index: 1 }
    );
    assert!(w.hw.calls().iter().all(|c| !matches!(c, Call::Ipi(_))));
    assert!(w.shared.has_signal(1));
    assert!(w.shared.take_init(1));
    assert!(!w.shared.take_init(1));
    assert_eq!(w.shared.take_sipi(1), Some(0x9a));
    assert_eq!(w.shared.take_sipi(1), None);
    assert!(!w.shared.has_signal(0));
    // INIT de-assert: nothing, not counted.
    assert_eq!(w.store32(APIC + 0x300, 0x8500), HostAction::Resume);
    assert_eq!(w.shared.counters.ipis_dropped.load(Ordering::Relaxed), 1);
    // All excluding self: vCPU 0 sends to cores 1 and 4; the two enclave cores are dropped.
    w.store32(APIC + 0x300, 0xc_4041);
    let ids: Vec<u32> =
        w.hw.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Ipi(i) => Some(i.dest),
                _ => None,
            })
            .collect();
    assert_eq!(ids, [1, 4]);
    assert_eq!(w.shared.counters.ipis_dropped.load(Ordering::Relaxed), 3);
    // INIT to all excluding self: both other host vCPUs signalled at once.
    match w.store32(APIC + 0x300, 0xc_4500) {
        HostAction::SignalMany { to } => assert_eq!(to.iter().collect::<Vec<_>>(), [1, 2]),
        other => panic!("{other:?}"),
    }
    assert!(w.shared.take_init(2));
    // SMI: never.
    w.store32(APIC + 0x300, 0x4200);
    assert!(w.hw.calls().is_empty());
    // Any other register is the core's: EOI.
    w.store32(APIC + 0xb0, 0);
    assert_eq!(w.hw.calls(), [Call::ApicWrite(0xb0, 0)]);
}

#[test]
fn logical_destinations_follow_the_ldr_the_host_wrote() {
    let mut w = World::new(false);
    // vCPU 0 (APIC id 0) takes logical id bit 0 in the flat model.
    w.store32(APIC + 0xe0, u32::MAX);
    w.store32(APIC + 0xd0, 1 << 24);
    assert_eq!(w.hw.calls(), [Call::ApicWrite(0xd0, 1 << 24)]);
    // vCPU 1 (APIC id 1) sends a logical fixed IPI to bit 0: it reaches APIC id 0.
    w.me = HostVcpu::new(1, 1);
    w.store32(APIC + 0x310, 1 << 24);
    w.store32(APIC + 0x300, 0x4840);
    let sent = w.hw.calls();
    assert!(
        matches!(
            sent.as_slice(),
            [Call::Ipi(Icr {
                dest: 0,
                dest_mode: DestMode::Physical,
                ..
            })]
        ),
        "{sent:?}"
    );
    // The APIC ID register is never written.
    w.store32(APIC + 0x20, 7 << 24);
    assert!(w.hw.calls().is_empty());
}

#[test]
fn refused_memory_reads_all_ones_at_the_access_width_and_drops_writes() {
    let mut w = World::new(false);
    let old = 0x1122_3344_5566_7788;
    for (code, want) in [
        (&[0x8a, 0x03][..], 0x1122_3344_5566_77ff), // mov al, [rbx]
        (&[0x66, 0x8b, 0x03], 0x1122_3344_5566_ffff), // mov ax, [rbx]
        (&[0x8b, 0x03], 0xffff_ffff),               // mov eax, [rbx]: upper half zeroed
        (&[0x48, 0x8b, 0x03], u64::MAX),            // mov rax, [rbx]
        (&[0x0f, 0xb6, 0x03], 0xff),                // movzx eax, byte [rbx]
        (&[0x8a, 0x23], 0x1122_3344_5566_ff88),     // mov ah, [rbx]
    ] {
        w.code(code);
        w.set(Gpr::Rax, old);
        w.set(Gpr::Rbx, POOL + 0x40);
        assert_eq!(w.npf(POOL + 0x40, false), HostAction::Resume);
        assert_eq!(w.get(Gpr::Rax), want, "{code:x?}");
        assert_eq!(w.vcpu.rip, RIP + code.len() as u64, "{code:x?}");
        assert_eq!(w.vcpu.injected, None);
    }
    assert_eq!(w.shared.counters.refused_reads.load(Ordering::Relaxed), 6);
    // A store to atoll's own memory: dropped, counted, the host runs on.
    w.code(&[0x89, 0x03]);
    let before = w.ram.clone();
    w.set(Gpr::Rbx, ATOLL + 8);
    w.set(Gpr::Rax, 0xdead_beef);
    assert_eq!(w.npf(ATOLL + 8, true), HostAction::Resume);
    assert_eq!(w.shared.counters.refused_writes.load(Ordering::Relaxed), 1);
    assert_eq!((w.vcpu.rip, w.vcpu.injected), (RIP + 2, None));
    assert!(w.ram == before, "nothing written anywhere");
    assert!(w.hw.calls().is_empty());
    // An address nothing maps: the same answer, counted apart.
    w.code(&[0x8b, 0x03]);
    w.npf(0x8000_0000, false);
    assert_eq!(w.get(Gpr::Rax), 0xffff_ffff);
    assert_eq!(w.shared.counters.unmapped_reads.load(Ordering::Relaxed), 1);
    assert_eq!(w.shared.counters.refused_reads.load(Ordering::Relaxed), 6);
    assert!(w.shared.is_excluded(POOL) && w.shared.is_excluded(ATOLL + 0x1f_ffff));
    assert!(!w.shared.is_excluded(ATOLL + 0x20_0000) && !w.shared.is_excluded(0));
}

#[test]
fn an_access_atoll_cannot_decode_faults_and_never_panics() {
    let mut w = World::new(false);
    let undecodable = |w: &World| w.shared.counters.undecodable.load(Ordering::Relaxed);
    // rep movsb into the pool: not a MOV form atoll emulates.
    w.code(&[0xf3, 0xa4]);
    assert_eq!(w.npf(POOL, true), HostAction::Resume);
    assert_eq!((w.vcpu.injected, w.vcpu.rip), (GP0, RIP));
    // Garbage bytes, and an instruction outside host RAM (the fetch reads nothing).
    w.code(&[0xff, 0xff, 0xff, 0xff]);
    w.npf(POOL, false);
    assert_eq!(w.vcpu.injected, GP0);
    w.vcpu.rip = 0x7fff_0000;
    w.vcpu.injected = None;
    w.npf(APIC + 0x300, true);
    assert_eq!(w.vcpu.injected, GP0);
    // A fetch from the pool.
    w.code(&[0x90]);
    w.exit(Exit::NestedPageFault {
        gpa: GuestPhysAddr::new(POOL),
        access: Access {
            fetch: true,
            ..Default::default()
        },
        linear: Some(POOL),
    });
    assert_eq!(w.vcpu.injected, GP0);
    // The fault is the host's page walk, not the operand: the linear address does not
    // translate to the faulting page.
    w.code(&[0x8b, 0x03]);
    w.exit(Exit::NestedPageFault {
        gpa: GuestPhysAddr::new(POOL),
        access: Access {
            read: true,
            ..Default::default()
        },
        linear: Some(0x3000),
    });
    assert_eq!((w.vcpu.injected, w.vcpu.rip), (GP0, RIP));
    assert_eq!(undecodable(&w), 5);
    assert!(w.hw.calls().is_empty());
    // Random instruction bytes at random faulting addresses never panic.
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.code(&x.to_le_bytes());
        let gpa = [POOL, ATOLL, APIC + (x & 0xfff), x & 0xffff_ffff][(x >> 60) as usize & 3];
        let _ = w.npf(gpa, x & 1 == 0);
    }
}

#[test]
fn com1_is_the_model_with_host_lines_and_input() {
    let mut w = World::new(false);
    for b in b"hello host\r\nrest" {
        assert_eq!(w.out(0x3f8, 1, u32::from(*b)), HostAction::Resume);
        assert_eq!(w.vcpu.skipped, 1);
    }
    assert_eq!(
        w.console.0,
        [("host".to_string(), "hello host".to_string())]
    );
    // LSR into AL, the rest of RAX kept.
    w.inp(0x3fd, 1);
    assert_eq!(w.get(Gpr::Rax), 0xdead_beef_0000_0060);
    // Input: with the receive interrupt enabled the line rises, reading the byte lowers it.
    assert!(!w.shared.uart_irq_pending());
    w.out(0x3f9, 1, 1);
    assert_eq!(w.shared.push_input(b"ab"), 2);
    assert!(w.shared.uart_irq_pending());
    w.inp(0x3f8, 1);
    assert_eq!(w.get(Gpr::Rax) & 0xff, u64::from(b'a'));
    w.inp(0x3f8, 1);
    assert!(!w.shared.uart_irq_pending());
    assert!(w.hw.calls().is_empty(), "COM1 never reaches the hardware");
    // The pending line is printed when the host resets.
    w.out(0x3f8, 1, u32::from(b'x'));
    assert_eq!(
        w.out(0x64, 1, 0xfe),
        HostAction::Reset(ResetSource::KeyboardController)
    );
    assert_eq!(w.console.0.last().unwrap().1, "restx");
    // String I/O on COM1: #GP.
    w.exit(Exit::Io {
        port: 0x3f8,
        size: 1,
        write: true,
        string: true,
        rep: true,
    });
    assert_eq!(w.vcpu.injected, GP0);
}

#[test]
fn reset_and_power_ports() {
    let mut w = World::new(false);
    let ports: Vec<_> = intercepted_ports(&w.shared).collect();
    assert_eq!(
        ports,
        [
            0x3f8..=0x3ff,
            0xcf9..=0xcf9,
            0x64..=0x64,
            0xcf9..=0xcf9,
            PM1A..=PM1A + 1
        ]
    );
    // The FADT's reset register (0xCF9 / 0x06).
    assert_eq!(
        w.out(0xcf9, 1, 0x06),
        HostAction::Reset(ResetSource::AcpiResetRegister)
    );
    // 0xCF9 without RST_CPU: latched by the detector, never written to the chipset; byte
    // reads come from the latch.
    w.hw.calls();
    assert_eq!(w.out(0xcf9, 1, 0x02), HostAction::Resume);
    w.inp(0xcf9, 1);
    assert_eq!(w.get(Gpr::Rax) & 0xff, 0x02);
    assert!(w.hw.calls().is_empty());
    // PCI CONFIG_ADDRESS (a dword at 0xCF8) goes on; a word over 0xCF9 does not.
    w.out(0xcf8, 4, 0x8000_0000);
    assert_eq!(w.hw.calls(), [Call::PortOut(0xcf8, 4, 0x8000_0000)]);
    w.out(0xcf8, 2, 0x0600);
    assert!(w.hw.calls().is_empty());
    assert_eq!(w.vcpu.skipped, 1);
    // The keyboard controller: 0xFE resets, other commands go on; reads go to the hardware.
    assert_eq!(
        w.out(0x64, 1, 0xfe),
        HostAction::Reset(ResetSource::KeyboardController)
    );
    w.out(0x64, 1, 0xd1);
    assert_eq!(w.hw.calls(), [Call::PortOut(0x64, 1, 0xd1)]);
    w.inp(0x64, 1);
    assert_eq!(w.hw.calls(), [Call::PortIn(0x64, 1)]);
    assert_eq!(w.get(Gpr::Rax), 0xdead_beef_0000_005a);
    // PM1a: S5 powers off; S3 goes on with SLP_EN cleared; SCI_EN alone goes on as is.
    let slp = |typ: u32| typ << 10 | 1 << 13;
    assert_eq!(w.out(PM1A, 2, slp(7)), HostAction::PowerOff);
    assert_eq!(w.out(PM1A, 2, slp(5) | 1), HostAction::Resume);
    assert_eq!(w.hw.calls(), [Call::PortOut(PM1A, 2, 5 << 10 | 1)]);
    assert_eq!(w.shared.counters.sleeps_refused.load(Ordering::Relaxed), 1);
    w.out(PM1A, 2, 1);
    assert_eq!(w.hw.calls(), [Call::PortOut(PM1A, 2, 1)]);
    // Accesses over a register without being exactly it never reach the hardware: a word
    // at 0x64 (its low byte a reset command), a word at 0x63, the high byte of PM1a control
    // (SLP_EN), a word starting before COM1.
    for (port, size, value) in [
        (0x64, 2, 0xfe),
        (0x63, 2, 0xfe00),
        (PM1A + 1, 1, 0x3c),
        (0x3f7, 2, 0x4100),
    ] {
        assert_eq!(w.out(port, size, value), HostAction::Resume);
        assert_eq!(
            (w.hw.calls(), w.vcpu.skipped),
            (vec![], 1),
            "{port:#x}/{size}"
        );
        w.inp(port, size);
        assert_eq!(w.hw.calls(), vec![], "{port:#x}/{size}");
        assert_eq!(
            w.get(Gpr::Rax) & 0xffff,
            0xffff >> (8 * (2 - u32::from(size)))
        );
    }
    assert!(w.console.0.is_empty(), "nothing reached COM1 either");
    // Triple fault and a physical INIT end the host too.
    assert_eq!(
        w.exit(Exit::TripleFault),
        HostAction::Reset(ResetSource::TripleFault)
    );
    assert_eq!(
        w.exit(Exit::Init),
        HostAction::Reset(ResetSource::InitSignal)
    );
}

#[test]
fn instructions_the_host_must_not_run_and_the_other_exits() {
    let mut w = World::new(false);
    for e in [
        Exit::VirtualizationInstruction,
        Exit::Hypercall,
        Exit::MonitorMwait,
    ] {
        w.vcpu.injected = None;
        assert_eq!(w.exit(e), HostAction::Resume);
        assert_eq!(w.vcpu.injected, UD, "{e:?}");
    }
    w.vcpu.injected = None;
    w.exit(Exit::Rdpmc);
    assert_eq!(w.vcpu.injected, GP0);
    // WBINVD and INVD: written back on the core.
    w.vcpu.skipped = 0;
    w.exit(Exit::Wbinvd);
    w.exit(Exit::Invd);
    assert_eq!(
        (w.hw.calls(), w.vcpu.skipped),
        (vec![Call::Wbinvd, Call::Wbinvd], 2)
    );
    // XSETBV: #UD without OSXSAVE, then a valid value loaded, an invalid one #GP.
    w.vcpu.injected = None;
    w.set(Gpr::Rcx, 0);
    w.set(Gpr::Rdx, 0);
    w.set(Gpr::Rax, 0b11);
    w.exit(Exit::Xsetbv);
    assert_eq!(w.vcpu.injected, UD);
    w.vcpu.cr[4] = 1 << 18;
    w.vcpu.injected = None;
    w.exit(Exit::Xsetbv);
    assert_eq!(
        (w.vcpu.injected, w.hw.calls()),
        (None, vec![Call::Xsetbv(0b11)])
    );
    w.set(Gpr::Rax, 0b1011);
    w.exit(Exit::Xsetbv);
    assert_eq!((w.vcpu.injected, w.hw.calls()), (GP0, vec![]));
    // CR4.VMXE: VMX is hidden, so the host cannot set it.
    w.vcpu.injected = None;
    w.set(Gpr::Rbx, w.vcpu.cr[4] | (1 << 13));
    w.exit(Exit::CrWrite {
        cr: 4,
        gpr: Gpr::Rbx,
    });
    assert_eq!(w.vcpu.injected, GP0);
    // NMI: atoll's signal; counted, the host resumes.
    assert_eq!(w.exit(Exit::Nmi), HostAction::Resume);
    assert_eq!(
        (w.me.nmis, w.shared.counters.nmis.load(Ordering::Relaxed)),
        (1, 1)
    );
    assert!(matches!(
        w.exit(Exit::Unknown {
            code: 99,
            name: "x"
        }),
        HostAction::Fail(_)
    ));
    assert!(matches!(
        w.exit(Exit::InvalidGuestState),
        HostAction::Fail(_)
    ));
}

#[test]
fn rate_limit_logs_the_first_then_powers_of_two() {
    let logged: Vec<u64> = (1..=100).filter(|&n| rate_limited(n)).collect();
    assert_eq!(logged, [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64]);
}

#[test]
fn the_shared_state_is_sync_and_the_table_is_ordered_and_disjoint() {
    fn sync<T: Sync>() {}
    sync::<HostShared>();
    // Each index has at most one entry (so the order of the table never decides), and none
    // of the indices handled in code is shadowed by one.
    for (i, a) in msr::HOST_MSRS.iter().enumerate() {
        assert!(a.first <= a.last, "{:#x}", a.first);
        for b in &msr::HOST_MSRS[i + 1..] {
            assert!(
                a.last < b.first || b.last < a.first,
                "{:#x} and {:#x}",
                a.first,
                b.first
            );
        }
        for special in [
            msr::IA32_EFER,
            msr::IA32_PAT,
            msr::IA32_TSC,
            msr::IA32_TSC_DEADLINE,
            msr::IA32_APIC_BASE,
            msr::IA32_XSS,
            msr::X2APIC_ICR,
        ]
        .iter()
        .chain(msr::SWITCHED_BY_BACKEND)
        {
            assert!(!(a.first..=a.last).contains(special), "{special:#x}");
        }
    }
}

#[test]
fn a_hardware_reduced_platform_intercepts_its_sleep_register() {
    let mut cores = HostCores::new(0);
    cores.add(0).unwrap();
    let s = HostShared::new(
        cores,
        HostPlatform {
            reset_register: Some(ResetRegister {
                register: Register::io_byte(0x604),
                value: 1,
            }),
            reset_supported: false,
            sleep: Some(SleepControl::HardwareReduced {
                register: Register::io_byte(0x600),
                s5_slp_typ: 5,
            }),
        },
        &[],
        HostPhysAddr::new(APIC),
        false,
    );
    let ports: Vec<_> = intercepted_ports(&s).collect();
    // RESET_REG_SUP clear: still intercepted, so that its value never reaches the register.
    assert_eq!(
        ports,
        [
            0x3f8..=0x3ff,
            0xcf9..=0xcf9,
            0x64..=0x64,
            0x604..=0x604,
            0x600..=0x600
        ]
    );
    assert!(!s.is_excluded(0));
    // Its reset value is dropped; an S3 request goes on without SLP_EN; S5 powers off.
    let mut w = World::new(false);
    w.shared = s;
    assert_eq!(w.out(0x604, 1, 1), HostAction::Resume);
    assert_eq!((w.hw.calls(), w.vcpu.skipped), (vec![], 1));
    assert_eq!(w.out(0x600, 1, 1 << 5 | 3 << 2), HostAction::Resume);
    assert_eq!(w.hw.calls(), [Call::PortOut(0x600, 1, 3 << 2)]);
    assert_eq!(w.out(0x600, 1, 1 << 5 | 5 << 2), HostAction::PowerOff);
}

#[test]
fn a_vcpu_is_offline_only_with_interrupts_off_at_hlt_or_mwait() {
    let mut w = World::new(false);
    let at = RIP as usize;
    // Linux's hlt_play_dead: cli; ...; hlt; jmp back. Stopped after the HLT, IF clear.
    w.ram[at - 1] = 0xf4;
    w.ram[at] = 0xeb;
    w.vcpu.rflags = 0x2;
    assert!(parked_in_play_dead(&w.vcpu, &SliceMemory(&mut w.ram)));
    // The same with interrupts enabled: an idle online CPU (sti; hlt).
    w.vcpu.rflags = 0x202;
    assert!(!parked_in_play_dead(&w.vcpu, &SliceMemory(&mut w.ram)));
    // Stopped just before the HLT.
    w.vcpu.rflags = 0x2;
    w.ram[at - 1] = 0x90;
    w.ram[at] = 0xf4;
    assert!(parked_in_play_dead(&w.vcpu, &SliceMemory(&mut w.ram)));
    // mwait_play_dead (ECX 0): after MWAIT, and before it.
    w.set(Gpr::Rcx, 0);
    w.ram[at - 3..at + 3].copy_from_slice(&[0x0f, 0x01, 0xc9, 0x90, 0x90, 0x90]);
    assert!(parked_in_play_dead(&w.vcpu, &SliceMemory(&mut w.ram)));
    w.ram[at - 3..at + 3].copy_from_slice(&[0x90, 0x90, 0x90, 0x0f, 0x01, 0xc9]);
    assert!(parked_in_play_dead(&w.vcpu, &SliceMemory(&mut w.ram)));
    // intel_idle's MWAIT with interrupts masked but breaking on them (ECX bit 0): an idle
    // online CPU, not taken.
    w.set(Gpr::Rcx, 1);
    assert!(!parked_in_play_dead(&w.vcpu, &SliceMemory(&mut w.ram)));
    w.ram[at - 3..at + 3].copy_from_slice(&[0x0f, 0x01, 0xc9, 0x90, 0x90, 0x90]);
    assert!(!parked_in_play_dead(&w.vcpu, &SliceMemory(&mut w.ram)));
    w.set(Gpr::Rcx, 0);
    // Anything else with IF clear (a spinning CPU, a bare MONITOR) is online.
    w.ram[at - 3..at + 3].copy_from_slice(&[0x0f, 0x01, 0xc8, 0xeb, 0xfe, 0x90]);
    assert!(!parked_in_play_dead(&w.vcpu, &SliceMemory(&mut w.ram)));
    // Code atoll cannot read (RIP beyond the host's memory) is not offline.
    w.vcpu.rip = 0x10_0000;
    assert!(!parked_in_play_dead(&w.vcpu, &SliceMemory(&mut w.ram)));
}

#[test]
fn configuration_ports_reach_the_control_function_or_the_hardware_with_the_latch_replayed() {
    let mut w = World::new(false);
    w.shared
        .set_control(super::control::ControlPort::new(3, None, 0).expect("device 3"));
    // The ports are intercepted once the host has the device.
    assert!(intercepted_ports(&w.shared).any(|r| r.contains(&0xcfc) && r.contains(&0xcf8)));
    let _ = w.hw.calls();
    // 00:03.0's vendor and device id: the model, nothing reaches the hardware.
    w.out(0xcf8, 4, 0x8000_1800);
    w.inp(0xcfc, 4);
    assert_eq!(
        w.get(Gpr::Rax) as u32,
        u32::from(atoll_abi::control::DEVICE_ID) << 16 | u32::from(atoll_abi::control::VENDOR_ID)
    );
    assert!(w.hw.calls().is_empty(), "the model answered");
    // Another function: the hardware, with the host's latch written first.
    w.out(0xcf8, 4, 0x8000_0800);
    w.inp(0xcfe, 2);
    assert_eq!(
        w.hw.calls(),
        [Call::PortOut(0xcf8, 4, 0x8000_0800), Call::PortIn(0xcfe, 2)]
    );
    assert_eq!(w.get(Gpr::Rax) & 0xffff, 0x5a5a);
    w.out(0xcfc, 4, 0x1234_5678);
    assert_eq!(
        w.hw.calls(),
        [
            Call::PortOut(0xcf8, 4, 0x8000_0800),
            Call::PortOut(0xcfc, 4, 0x1234_5678)
        ]
    );
    // A word at 0xCFB straddles into the data window: refused, all ones, nothing reaches the
    // hardware.
    w.inp(0xcfb, 2);
    assert_eq!(w.get(Gpr::Rax) & 0xffff, 0xffff);
    assert!(w.hw.calls().is_empty());
    // Moving the device's BAR0 with memory decoding on: a placement for the manager.
    w.out(0xcf8, 4, 0x8000_1810);
    w.out(0xcfc, 4, 0xfe00_0000);
    w.out(0xcf8, 4, 0x8000_1804);
    w.out(0xcfc, 2, 0x2);
    let placed = w.shared.take_placements(0);
    assert_eq!(placed[0], Some(Some(GuestPhysAddr::new(0xfe00_0000))));
    assert!(w.shared.take_manager_wanted());
    // A BAR over the host's refused memory (the pool) is never placed there.
    w.out(0xcf8, 4, 0x8000_1818);
    w.out(0xcfc, 4, POOL as u32);
    assert_eq!(w.shared.take_placements(0)[1], None);
    // ... nor over the xAPIC page.
    w.out(0xcfc, 4, APIC as u32);
    assert_eq!(w.shared.take_placements(0)[1], None);
}

#[test]
fn a_channel_interrupt_names_host_cores_only_and_follows_lending() {
    use crate::run::channel::{register_read, CHANNELS};
    use atoll_abi::channel::reg;
    // Channel function 7 (CHANNELS[6]: the channel module's own tests use 0..=3).
    let mut w = World::new(false);
    w.shared
        .set_control(super::control::ControlPort::new(3, None, 7).expect("device 3"));
    let latch = |reg: u32| 0x8000_0000 | 3 << 11 | 7 << 8 | reg;
    w.out(0xcf8, 4, latch(0x34));
    w.inp(0xcfc, 4);
    let cap = w.get(Gpr::Rax) as u32 & 0xff;
    assert_ne!(cap, 0, "the channel function has a capability list");
    let program = |w: &mut World, dest: u32, vector: u32| {
        w.out(0xcf8, 4, latch(cap + 4));
        w.out(0xcfc, 4, 0xfee0_0000 | dest << 12);
        w.out(0xcf8, 4, latch(cap + 12));
        w.out(0xcfc, 4, vector);
        w.out(0xcf8, 4, latch(cap));
        w.out(0xcfc, 4, 0x0001_0005);
    };
    let c = &CHANNELS[6];
    c.attach(1, 0);
    let fire = |c: &crate::run::channel::ChannelState| {
        let _ = register_read(6, reg::PENDING, 4);
        c.signal(1)
    };
    // An enclave's core (APIC id 2 is not the host's): refused, no interrupt.
    program(&mut w, 2, 0x45);
    assert_eq!(fire(c), None);
    // Host core 4: sent there.
    program(&mut w, 4, 0x46);
    assert_eq!(fire(c), Some((4, 0x46)));
    // A vector below 16 is no interrupt.
    program(&mut w, 4, 0x0f);
    assert_eq!(fire(c), None);
    program(&mut w, 4, 0x47);
    // Core 4 lent to an enclave: the target goes; back to the host: it comes back.
    assert!(w.shared.set_lent(4, true));
    assert_eq!(fire(c), None);
    assert!(w.shared.set_lent(4, false));
    assert_eq!(fire(c), Some((4, 0x47)));
    c.detach();
}
