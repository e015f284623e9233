//! Exit paths never allocate from atoll's shared heap (docs/architecture.md, "What partitions
//! share"): floods of every exit the handlers serve — console bytes, hypercalls with good and
//! bad buffers, REPORT past its budget and nested too deep, refused ports and MSRs, CPUID, and on
//! a Linux enclave's platform the UART with result lines, PIT, CMOS, PCI configuration, x2APIC
//! MSRs, IPIs between vCPUs and interrupt delivery before entry — counted with a global allocator
//! that counts, per thread, every allocation and reallocation. Only creating the run state
//! allocates.

use atoll::partition::config::IoPolicy;
use atoll::run::exits::{self, Action, Console, EnclaveRun, HostCpu};
use atoll::run::vplat::{self, Local, PlatformHost, Shared};
use atoll_abi::{hypercall, status};
use atoll_vcpu::fake::FakeVcpu;
use atoll_vcpu::{Exit, SliceMemory};
use boot::regs::Gpr;
// The devices crate's counting allocator (one copy for every allocation test).
#[path = "../devices/tests/counting/mod.rs"]
mod counting;
use counting::allocations;

struct Host;
impl HostCpu for Host {
    fn cpuid(&self, leaf: u32, _sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0x16, 0, 0, 0],
            1 => [0x906ea, 0, (1 << 26) | (1 << 21), 0],
            0xd => [0b111, 0, 0b11, 0],
            _ => [leaf, 1, 2, 3],
        }
    }
    fn xsetbv(&mut self, _value: u64) {}
    fn rdtsc(&self) -> u64 {
        0
    }
}

/// A console that only counts (so the test's own sink allocates nothing).
#[derive(Default)]
struct Counted {
    lines: u64,
    bytes: u64,
}
impl Console for Counted {
    fn line(&mut self, _name: &str, text: &str) {
        self.lines += 1;
        self.bytes += text.len() as u64;
    }
}

#[derive(Default)]
struct FakeHost {
    now: u64,
    kicks: u64,
}
impl PlatformHost for FakeHost {
    fn now(&self) -> u64 {
        self.now
    }
    fn kick(&mut self, _host_apic: u32) {
        self.kicks += 1;
    }
    fn wait(&mut self, deadline: Option<u64>) {
        self.now = deadline.unwrap_or(self.now + 1000).max(self.now + 1);
    }
    fn arm(&mut self, _deadline: Option<u64>) {}
}

fn io(port: u16, size: u8, write: bool) -> Exit {
    Exit::Io {
        port,
        size,
        write,
        string: false,
        rep: false,
    }
}

fn set(v: &mut FakeVcpu, r: Gpr, value: u64) {
    v.gprs[r as usize] = value;
}

#[test]
fn bare_metal_exits_allocate_nothing() {
    // Inputs and run state made before counting starts.
    let mut ram = vec![0u8; 0x20000];
    let text: Vec<u8> = (0..4096u32).map(|i| b"abc\n\xff"[i as usize % 5]).collect();
    ram[0x1000..0x2000].copy_from_slice(&text);
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(50), "]".repeat(50));
    ram[0x3000..0x3000 + deep.len()].copy_from_slice(deep.as_bytes());
    let report = br#"{"k":{"n":[1,true,null,"s"]},"pages":4096}"#;
    ram[0x5000..0x5000 + report.len()].copy_from_slice(report);
    // Forty reports with keys of their own, 1000 bytes each: more than the REPORT budget.
    let big = |i: usize| format!("{{\"k{i:02}\":\"{}\"}}", "z".repeat(1000 - 10));
    for i in 0..40 {
        let r = big(i);
        ram[0x8000 + i * 0x400..][..r.len()].copy_from_slice(r.as_bytes());
    }
    let big_len = big(0).len() as u64;
    let mut run = EnclaveRun::new("flood", IoPolicy::Ignore);
    let mut v = FakeVcpu::default();
    let mut console = Counted::default();
    let mut host = Host;

    let before = allocations();
    let mut exit = |v: &mut FakeVcpu, e: Exit, run: &mut EnclaveRun, c: &mut Counted| {
        exits::handle(e, v, &mut SliceMemory(&mut ram), run, &mut host, c)
    };
    for round in 0..2000u64 {
        // COM1 output, a byte at a time (lines of every length, invalid UTF-8 included).
        for &b in &text[..(round as usize * 7) % 300] {
            set(&mut v, Gpr::Rax, u64::from(b));
            exit(&mut v, io(0x3f8, 1, true), &mut run, &mut console);
        }
        // Hypercalls: console, REPORT (valid until the budget is gone, then refused; too deep;
        // not an object), bad buffers, unknown numbers.
        for (nr, gpa, len) in [
            (hypercall::CONSOLE_WRITE, 0x1000, 4096),
            (hypercall::REPORT, 0x5000, report.len() as u64),
            (hypercall::REPORT, 0x8000 + (round % 40) * 0x400, big_len),
            (hypercall::REPORT, 0x3000, deep.len() as u64),
            (hypercall::REPORT, 0x1000, 10),
            (hypercall::CONSOLE_WRITE, u64::MAX - 4, 16),
            (hypercall::CONSOLE_WRITE, 0, 1 << 20),
            (hypercall::VERSION, 0, 0),
            (0x1234 + round, round, round),
        ] {
            set(&mut v, Gpr::Rax, nr);
            set(&mut v, Gpr::Rbx, gpa);
            set(&mut v, Gpr::Rcx, len);
            assert_eq!(
                exit(&mut v, Exit::Hypercall, &mut run, &mut console),
                Action::Resume
            );
        }
        // Refused ports and MSRs, CPUID leaves.
        set(&mut v, Gpr::Rax, 0);
        exit(
            &mut v,
            io(0x80 + round as u16 % 64, 4, false),
            &mut run,
            &mut console,
        );
        set(&mut v, Gpr::Rcx, 0xc000_1000 + round);
        exit(&mut v, Exit::MsrRead, &mut run, &mut console);
        set(&mut v, Gpr::Rax, round % 0x20);
        set(&mut v, Gpr::Rcx, 0);
        exit(&mut v, Exit::Cpuid, &mut run, &mut console);
        set(&mut v, Gpr::Rax, 0x4000_0000 + round % 3);
        exit(&mut v, Exit::Cpuid, &mut run, &mut console);
    }
    assert_eq!(allocations() - before, 0, "an exit handler allocated");
    // The flood went through: lines printed, REPORT filled its budget and counted the rest.
    assert!(console.lines > 2000 && console.bytes > 2000 * 4096 / 5);
    assert!(run.results.dropped() > 0);
    assert!(run.io_denied >= 2000 && run.msr_denied >= 2000);
    // The guest sees refusals, not silence.
    set(&mut v, Gpr::Rax, hypercall::REPORT);
    set(&mut v, Gpr::Rbx, 0x3000);
    set(&mut v, Gpr::Rcx, deep.len() as u64);
    exits::handle(
        Exit::Hypercall,
        &mut v,
        &mut SliceMemory(&mut ram),
        &mut run,
        &mut Host,
        &mut console,
    );
    assert_eq!(v.gprs[Gpr::Rax as usize], status::INVALID);
}

#[test]
fn platform_exits_allocate_nothing() {
    let shared = Shared::new("linux", &[4, 5], 1_000_000_000);
    let mut l0 = Local::new(0, shared.tsc_hz);
    let mut l1 = Local::new(1, shared.tsc_hz);
    let mut v0 = FakeVcpu::default();
    let mut v1 = FakeVcpu::default();
    // The fake records injected vectors in a vector of its own: room made now.
    v0.injected_irqs.reserve(1 << 16);
    v1.injected_irqs.reserve(1 << 16);
    let mut host = FakeHost::default();
    let mut run = EnclaveRun::new("linux", IoPolicy::Ignore);
    let mut console = Counted::default();
    let mut ram = vec![0u8; 0x10000];
    let check = format!(
        "ATOLL-GUEST-CHECK {{\"cpus\":2,\"nested\":{}1{}}}\r\n",
        "[".repeat(20),
        "]".repeat(20)
    );
    let exit_line = b"ATOLL-GUEST-EXIT status=0\r\natoll-init: up\r\nATOLL-IDLE begin\r\n";

    let before = allocations();
    let mut handle = |e: Exit, v: &mut FakeVcpu, l: &mut Local, h: &mut FakeHost| {
        let a = vplat::handle(
            &e,
            v,
            &mut SliceMemory(&mut ram),
            l,
            &shared,
            h,
            &Host,
            &mut console,
        );
        match a {
            Some(a) => a,
            None => exits::handle(
                e,
                v,
                &mut SliceMemory(&mut ram),
                &mut run,
                &mut Host,
                &mut console,
            ),
        }
    };
    // Both vCPUs into x2APIC mode (vCPU 0 keeps its BSP bit), software-enabled.
    for (v, l, base) in [
        (&mut v0, &mut l0, 0xfee0_0d00u64),
        (&mut v1, &mut l1, 0xfee0_0c00),
    ] {
        for (msr, value) in [(0x1b, base), (0x80f, 0x1ff)] {
            set(v, Gpr::Rcx, msr);
            set(v, Gpr::Rax, value & 0xffff_ffff);
            set(v, Gpr::Rdx, value >> 32);
            handle(Exit::MsrWrite, v, l, &mut host);
        }
    }
    for round in 0..2000u64 {
        // The UART: interrupt enable, line status, result lines and plain text.
        set(&mut v0, Gpr::Rax, 1);
        handle(io(0x3f9, 1, true), &mut v0, &mut l0, &mut host);
        for &b in check.as_bytes().iter().chain(exit_line) {
            set(&mut v0, Gpr::Rax, u64::from(b));
            handle(io(0x3f8, 1, true), &mut v0, &mut l0, &mut host);
        }
        handle(io(0x3fd, 1, false), &mut v0, &mut l0, &mut host);
        // PIT channel 2, port 0x61, the CMOS clock, PCI configuration mechanism #1.
        for (port, size, write, value) in [
            (0x43u16, 1u8, true, 0xb0u64),
            (0x42, 1, true, round & 0xff),
            (0x61, 1, false, 0),
            (0x70, 1, true, round % 14),
            (0x71, 1, false, 0),
            (0xcf8, 4, true, 0x8000_0000 | (round % 64) << 2),
            (0xcfc, 4, false, 0),
            (0xcfc, 4, true, u64::from(u32::MAX)),
        ] {
            set(&mut v0, Gpr::Rax, value);
            handle(io(port, size, write), &mut v0, &mut l0, &mut host);
        }
        // IPIs both ways (fixed, to each other, and to a destination nobody has), the timer
        // deadline, EOIs, and delivery before the next entries.
        for (v, l, dest) in [(&mut v0, &mut l0, 1u64), (&mut v1, &mut l1, 0)] {
            for (msr, value) in [
                (0x830u64, dest << 32 | 0x40 | (round % 16)),
                (0x830, 77 << 32 | 0x41),
                (0x6e0, round * 1000),
                (0x80b, 0),
            ] {
                set(v, Gpr::Rcx, msr);
                set(v, Gpr::Rax, value & 0xffff_ffff);
                set(v, Gpr::Rdx, value >> 32);
                handle(Exit::MsrWrite, v, l, &mut host);
            }
            v.rflags = 1 << 9;
            v.window_open = true;
            vplat::before_entry(
                v,
                &mut atoll_vcpu::SliceMemory(&mut []),
                l,
                &shared,
                &mut host,
            );
        }
        host.now += 10_000;
        set(&mut v1, Gpr::Rax, 0x4000_0000);
        handle(Exit::Cpuid, &mut v1, &mut l1, &mut host);
    }
    assert_eq!(allocations() - before, 0, "a platform exit allocated");
    // The flood went through: lines printed, IPIs delivered, the result kept once.
    assert!(console.lines >= 2000 * 4);
    assert!(host.kicks >= 2 * 2000);
    // vCPU 1 takes each round's IPI in that round, in order; vCPU 0 takes vCPU 1's at the next
    // round's entry (the last one is still pending).
    assert_eq!(v1.injected_irqs.len(), 2000);
    assert!(v1
        .injected_irqs
        .iter()
        .enumerate()
        .all(|(i, &vector)| usize::from(vector) == 0x40 + i % 16));
    assert_eq!(v0.injected_irqs.len(), 1999);
    assert_eq!((v0.injected, v1.injected), (None, None), "nothing refused");
    assert!(shared.results.lock().used() > 0);
}
