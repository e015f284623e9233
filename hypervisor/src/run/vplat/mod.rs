//! The enclave virtual platform at run time: what a Linux enclave's vCPUs share (the I/O APIC,
//! COM1, the per-vCPU interrupt mailboxes) and what each vCPU owns (its x2APIC), with the exit
//! handling and interrupt delivery that tie them to the vendor-neutral [`Vcpu`].
//!
//! **Layout** (guest-physical; the ACPI tables of [`atoll_devices::acpi`] describe it):
//!
//! | range | what |
//! | --- | --- |
//! | `0 .. 0x9f000` | RAM (boot page tables, GDT, boot_params, command line) |
//! | `0x9f000 .. 0x100000` | reserved; the ACPI tables at [`ACPI_GPA`] |
//! | `0x100000 .. RAM end` | RAM (kernel, initrd) |
//! | [`ECAM_BASE`] + 1 MiB | PCI ECAM, bus 0: the host bridge at 00:00.0, nothing else |
//! | 0xFEE00000 + 4 KiB | the local APIC's xAPIC page (each vCPU sees its own) |
//! | [`IOAPIC_BASE`] + 4 KiB | the I/O APIC |
//!
//! RAM ends below [`ECAM_BASE`] (at most [`MAX_RAM`]); the MMIO pages are absent from the
//! second-stage tables, so touching them exits as a nested-page fault that is decoded
//! ([`atoll_vcpu::decode::decode_mmio`]) and emulated here.
//!
//! **Local APICs.** Every vCPU's APIC starts enabled in xAPIC mode, as firmware leaves it, with
//! x2APIC offered in CPUID; one model ([`X2Apic`]) holds its registers and timer and serves
//! both modes: the xAPIC page at 0xFEE00000 (decoded MMIO, 32-bit registers, the ICR in two
//! halves, a writable LDR/DFR) and, after the guest sets IA32_APIC_BASE.EXTD, the x2APIC MSRs.
//! The mode transitions of SDM Vol. 3A §11.12.5 are enforced. An unmodified Linux without
//! interrupt remapping stays in xAPIC mode on a hypervisor it does not know ("x2apic: IRQ
//! remapping doesn't support X2APIC mode"); the FADT asks for physical destination mode, so it
//! picks the physical-flat driver. vCPU *i* has APIC ID *i*; IPIs reach vCPUs of the same
//! enclave only (those aimed elsewhere are dropped and counted).
//!
//! **Legacy ports.** COM1 (a 16550A with its interrupt on I/O APIC pin 4, [`atoll_devices::uart`]), PIT
//! channel 2 and its gate ([`atoll_devices::pit`], which Linux times the TSC against on non-Intel
//! CPUs), the CMOS clock's time registers ([`atoll_devices::rtc`], the host's time at atoll's boot
//! advanced by the TSC), and PCI configuration mechanism #1 (0xCF8/0xCFC) over the same configuration space as
//! the ECAM window: a host bridge at 00:00.0 and nothing else ([`atoll_devices::pci::host::PciSegment`]).
//! Ports and MMIO pages are looked up on [`atoll_devices::bus::Bus`]es of [`Port`] and [`Mmio`]
//! handles built with the platform; an access that runs past its device's range reads all ones
//! and writes nothing.
//!
//! **Delivery.** A vCPU's interrupts arrive in its [`Mailbox`] (a 256-bit request register set
//! with atomic operations, plus NMI, INIT and STARTUP flags) from whichever core raised them,
//! followed by a host IPI ([`KICK_VECTOR`]) to the vCPU's core so a running guest exits. Before
//! each entry the vCPU's core moves the mailbox into its own x2APIC, runs the APIC timer, and
//! injects the highest deliverable vector when the guest can take it, or asks for an
//! interrupt-window exit when it cannot. HLT waits on the host (interrupts on, `hlt`) until an
//! interrupt is deliverable, with the host APIC timer armed for the guest's timer deadline. No
//! lock is shared with another enclave; within the enclave the I/O APIC and COM1 each have one.
//!
//! **Time.** The guest reads the host TSC directly (no offset, no exits). CPUID leaves 0x15 and
//! 0x16 give its frequency (crystal = TSC, ratio 1), the APIC timer counts at that rate too, and
//! the invariant-TSC bit is set, so Linux needs no PIT calibration on Intel. Linux reads those
//! leaves only on Intel parts: on AMD hosts atoll appends `tsc_early_khz=` (a documented kernel
//! parameter) to the command line instead.
//!
//! **Files.** This module holds the layout, what the vCPUs share ([`Shared`]) and what each
//! owns ([`Local`]), the exit dispatcher [`handle`], the entry path [`before_entry`] and HLT;
//! the rest by concern:
//!
//! * `apic`: the local APICs: the per-vCPU [`Mailbox`]es, the xAPIC page, the x2APIC and the
//!   platform's other MSRs, IA32_APIC_BASE and its modes ([`ApicMode`]), IPI routing and the
//!   I/O APIC's messages.
//! * `io`: port and MMIO exits dispatched through the platform's buses ([`Port`], [`Mmio`]) to
//!   COM1, the PIT, the RTC, the I/O APIC and PCI, and COM1's interrupt and input.
//! * `console`: the guest's console lines: `ATOLL-GUEST-CHECK` / `ATOLL-GUEST-EXIT` kept as
//!   results, `atoll-init:` and `ATOLL-IDLE` turned into measurements.
//! * `cpuid`: the enclave's CPUID ([`cpuid()`]) on top of the common filter.
//! * `linux`: laying out a Linux enclave ([`load_linux`], [`platform_layout`], [`e820`]).

use crate::run::exits::{Action, Console, EndReason};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use atoll_devices::bus::Bus;
use atoll_devices::ioapic::IoApic;
use atoll_devices::lapic::{self, X2Apic};
use atoll_devices::pci::host::{Ecam, PciSegment};
use atoll_devices::uart::Uart16550;
use atoll_vcpu::{vector, Exit, Gpr, GuestMemory, Vcpu};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::{Mutex, Once};

mod apic;
mod console;
pub use console::capture_result;
mod cpuid;
mod io;
mod linux;
pub mod passthrough;
pub mod virtio;

use apic::{collect, msr_read, msr_write};
pub use apic::{ApicMode, Mailbox};
use console::Marks;
pub use cpuid::{cpuid, fast_table};
use io::{mmio, mmio_map, pci_segment, port_map};
pub use io::{Mmio, Port};
pub use linux::{e820, load_linux, platform_layout};

/// The I/O APIC's MMIO base (the architectural default).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The I/O APIC's id.
pub const IOAPIC_ID: u8 = 0;
/// The ECAM window (bus 0 only).
pub const ECAM_BASE: u64 = 0xe000_0000;
/// Buses the ECAM window decodes.
pub const ECAM_BUSES: u8 = 1;
/// The ECAM window's decoding (checked at compile time).
const ECAM: Ecam = match Ecam::new(0, ECAM_BUSES as u16) {
    Some(e) => e,
    None => panic!("the ECAM window's buses"),
};
/// Where the ACPI tables go (the legacy BIOS area, reserved in the E820 map).
pub const ACPI_GPA: u64 = 0x000e_0000;
/// End of the usable low RAM (the rest of the first MiB is reserved).
pub const LOW_RAM_END: u64 = 0x0009_f000;
/// Most RAM a Linux enclave can have: RAM is contiguous from 0 and ends below the MMIO window.
pub const MAX_RAM: u64 = ECAM_BASE;
/// COM1's ports and interrupt (as the DSDT describes them).
pub const COM1: u16 = atoll_devices::acpi::COM1_PORT;
/// The host vector that makes a vCPU's core look at its mailbox.
pub const KICK_VECTOR: u8 = 0xf2;
/// The host vector of the APIC timer atoll arms for a guest's timer.
pub const TIMER_VECTOR: u8 = 0xf1;

/// Exit classes for the idle profile: timer, IPI, HLT, other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Class {
    /// Timer programming (TSC deadline, LVT timer, initial count) and host-timer interrupts.
    Timer,
    /// IPIs sent (ICR, SELF IPI) and host interrupts that delivered one (kicks).
    Ipi,
    /// HLT.
    Hlt,
    /// Everything else (EOI, CPUID, I/O, MMIO, …).
    Other,
}

impl Class {
    /// Every class, in counter order.
    pub const ALL: [Class; 4] = [Class::Timer, Class::Ipi, Class::Hlt, Class::Other];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Class::Timer => "timer",
            Class::Ipi => "ipi",
            Class::Hlt => "hlt",
            Class::Other => "other",
        }
    }
}

/// The class of `exit`, read before it is handled. `timer_due` says whether the host timer armed
/// for this vCPU had expired when a host interrupt made the guest exit.
pub fn classify(exit: &Exit, vcpu: &impl Vcpu, timer_due: bool) -> Class {
    match exit {
        Exit::Hlt => Class::Hlt,
        Exit::ExternalInterrupt { .. } if timer_due => Class::Timer,
        Exit::ExternalInterrupt { .. } => Class::Ipi,
        Exit::MsrWrite => match vcpu.gpr(Gpr::Rcx) as u32 {
            lapic::reg::TSC_DEADLINE | lapic::reg::LVT_TIMER | lapic::reg::TIMER_INITIAL => {
                Class::Timer
            }
            lapic::reg::ICR | lapic::reg::SELF_IPI => Class::Ipi,
            _ => Class::Other,
        },
        _ => Class::Other,
    }
}

/// Exit classes counted by one vCPU on every exit, on a cache line of their own: the senders'
/// writes to the mailbox never invalidate it, and it never shares a line with another vCPU's.
#[repr(C, align(64))]
#[derive(Default)]
struct ClassCounts([AtomicU64; 4]);

const _: () = assert!(core::mem::size_of::<ClassCounts>() == 64);

/// What the host does for the platform: time, IPIs to other cores, waiting.
pub trait PlatformHost {
    /// The TSC now.
    fn now(&self) -> u64;
    /// Makes the core with APIC id `host_apic` look at its mailbox (a host IPI).
    fn kick(&mut self, host_apic: u32);
    /// Waits until a host interrupt arrives (a kick, or the host timer armed for `deadline`);
    /// returns at once if `deadline` has passed. Used by HLT.
    fn wait(&mut self, deadline: Option<u64>);
    /// Arms the host timer for `deadline` (a TSC value) while the guest runs, or disarms it.
    fn arm(&mut self, deadline: Option<u64>);
    /// Takes the passed-through functions' host vectors that arrived on this core since the
    /// last call (a 256-bit set; see [`passthrough`]).
    fn take_device_vectors(&mut self) -> [u64; 4] {
        [0; 4]
    }
    /// Sends the host core with physical APIC id `apic` a fixed interrupt with `vector` (a
    /// channel's MSI, checked when the host programmed it).
    fn interrupt_host(&mut self, apic: u32, vector: u8) {
        let _ = (apic, vector);
    }
}

/// What the vCPUs of one enclave share.
pub struct Shared {
    /// The enclave's name (console prefix).
    pub name: String,
    /// One per vCPU, by index.
    pub mailboxes: Vec<Mailbox>,
    ioapic: Mutex<IoApic>,
    uart: Mutex<Uart16550>,
    pit: Mutex<atoll_devices::pit::Pit>,
    rtc: Mutex<atoll_devices::rtc::Rtc>,
    /// The PCI segment behind the ECAM window and ports 0xCF8–0xCFF.
    pci: Mutex<PciSegment>,
    /// Where its functions' BARs decode (locked after `pci`, never before).
    bars: Mutex<atoll_devices::pci::bars::BarMap>,
    /// The guest vector each passed-through function's host vector stands for, per vCPU.
    pub device_routes: passthrough::DeviceRoutes,
    /// Passed-through functions' interrupts delivered and dropped.
    pub device_counters: passthrough::DeviceCounters,
    /// Which device answers a port.
    ports: Bus<Port>,
    /// Which device answers an MMIO page.
    mmio_map: Bus<Mmio>,
    stop: AtomicBool,
    end: Once<EndReason>,
    /// IPIs whose destination named no vCPU of the enclave.
    pub ipis_dropped: AtomicU64,
    /// Interrupts injected into its vCPUs (`atoll stats`).
    pub interrupts_injected: AtomicU64,
    /// What the guest reported on its console (the in-guest check's JSON, its exit status), kept
    /// raw in a fixed budget ([`atoll_devices::bounded`]) and parsed only for the summary.
    pub results: Mutex<atoll_devices::bounded::ReportStore>,
    /// Console bytes the application vCPUs' queues dropped (the boot vCPU adds its own in the
    /// report).
    pub console_bytes_dropped: AtomicU64,
    marks: Mutex<Marks>,
    /// Exits by kind, I/O and MSR denials, summed as vCPUs stop.
    totals: Mutex<([u64; atoll_vcpu::ExitKind::ALL.len()], u64, u64)>,
    /// The TSC frequency the guest is told.
    pub tsc_hz: u64,
    /// Its channel toward the host, when it has virtio devices ([`virtio`]).
    channel: Once<virtio::Channel>,
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("vcpus", &self.mailboxes.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The platform of enclave `name` whose vCPU *i* runs on the core with APIC id
    /// `host_apics[i]`.
    pub fn new(name: &str, host_apics: &[u32], tsc_hz: u64) -> Self {
        Self {
            name: name.to_string(),
            mailboxes: host_apics.iter().map(|&a| Mailbox::new(a)).collect(),
            ioapic: Mutex::new(IoApic::new(IOAPIC_ID)),
            uart: Mutex::new(Uart16550::new()),
            pit: Mutex::new(atoll_devices::pit::Pit::new(tsc_hz)),
            rtc: Mutex::new(atoll_devices::rtc::Rtc::new(0, 0, tsc_hz)),
            pci: Mutex::new(pci_segment()),
            bars: Mutex::new(atoll_devices::pci::bars::BarMap::with_capacity(32, 8)),
            device_routes: passthrough::DeviceRoutes::new(host_apics.len()),
            device_counters: passthrough::DeviceCounters::default(),
            ports: port_map(),
            mmio_map: mmio_map(),
            stop: AtomicBool::new(false),
            end: Once::new(),
            ipis_dropped: AtomicU64::new(0),
            interrupts_injected: AtomicU64::new(0),
            results: Mutex::new(atoll_devices::bounded::ReportStore::new(
                atoll_devices::bounded::REPORT_BUDGET,
            )),
            console_bytes_dropped: AtomicU64::new(0),
            marks: Mutex::new(Marks::default()),
            totals: Mutex::new(([0; atoll_vcpu::ExitKind::ALL.len()], 0, 0)),
            tsc_hz,
            channel: Once::new(),
        }
    }

    /// Sets the wall clock the guest's RTC shows: `unix_secs` at TSC `tsc`.
    pub fn set_wall_clock(&self, unix_secs: i64, tsc: u64) {
        *self.rtc.lock() = atoll_devices::rtc::Rtc::new(unix_secs, tsc, self.tsc_hz);
    }

    /// Ends the enclave (the first reason wins) and makes every vCPU stop.
    pub fn end(&self, reason: EndReason, host: &mut impl PlatformHost) {
        self.end.call_once(|| reason);
        self.stop.store(true, Ordering::Release);
        for m in &self.mailboxes {
            host.kick(m.host_apic);
        }
    }

    /// Why the enclave ended, once it has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.end.get()
    }

    /// Whether the vCPUs must stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Adds a stopped vCPU's exit counts to the enclave's.
    pub fn add_exits(&self, exits: &[u64], io_denied: u64, msr_denied: u64) {
        let mut t = self.totals.lock();
        for (sum, n) in t.0.iter_mut().zip(exits) {
            *sum += n;
        }
        t.1 += io_denied;
        t.2 += msr_denied;
    }

    /// The enclave's exits by kind (only kinds that occurred), I/O and MSR denials.
    pub fn exit_totals(&self) -> (serde_json::Map<String, serde_json::Value>, u64, u64) {
        let t = self.totals.lock();
        let map = atoll_vcpu::ExitKind::ALL
            .iter()
            .filter(|k| t.0[**k as usize] > 0)
            .map(|k| (k.name().to_string(), t.0[*k as usize].into()))
            .collect();
        (map, t.1, t.2)
    }
}

/// What one vCPU owns, on the core that runs it.
pub struct Local {
    /// Its index in the enclave (and its APIC ID).
    pub index: usize,
    /// Its local APIC's registers and timer.
    pub apic: X2Apic,
    /// The APIC's mode (IA32_APIC_BASE EN and EXTD).
    pub mode: ApicMode,
    /// xAPIC logical destination register (bits 31:24 writable).
    ldr: u32,
    /// xAPIC destination format register (bits 31:28 writable, the rest ones).
    dfr: u32,
    /// xAPIC ICR bits 63:32 (the destination in bits 31:24), written before the low half sends.
    icr_high: u32,
    /// TSC of the last state line logged at debug level (every 10 s of guest time).
    last_report: u64,
    /// The console line this vCPU's COM1 write completed, copied out of the UART so it is
    /// handled after the UART's lock is released; sized at creation (never grows).
    uart_line: String,
}

impl Local {
    /// vCPU `index` of an enclave whose TSC runs at `tsc_hz` (the APIC timer counts at the same
    /// rate, as the crystal clock CPUID 0x15 reports), its APIC enabled in xAPIC mode as
    /// firmware leaves it.
    pub fn new(index: usize, tsc_hz: u64) -> Self {
        let mut local = Self::reset_state(index, tsc_hz);
        local
            .uart_line
            .reserve_exact(3 * atoll_devices::uart::LINE_MAX);
        local
    }

    /// The state INIT leaves (as [`Local::new`]), this vCPU's line buffer kept: an INIT does
    /// not allocate.
    pub fn reset(&mut self, tsc_hz: u64) {
        let uart_line = core::mem::take(&mut self.uart_line);
        *self = Self {
            uart_line,
            ..Self::reset_state(self.index, tsc_hz)
        };
    }

    /// Everything but the line buffer's capacity (`String::new` does not allocate).
    fn reset_state(index: usize, tsc_hz: u64) -> Self {
        Self {
            index,
            apic: X2Apic::new(index as u32, tsc_hz, tsc_hz),
            mode: ApicMode::XApic,
            ldr: 0,
            dfr: u32::MAX,
            icr_high: 0,
            last_report: 0,
            uart_line: String::new(),
        }
    }
}

/// What happens before the vCPU enters the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Enter.
    Go,
    /// The enclave is ending: stop this vCPU.
    Stop,
    /// An INIT arrived: the vCPU goes back to waiting for STARTUP.
    Init,
}

/// Runs before every entry: takes the mailbox, runs the timer, injects the highest deliverable
/// interrupt or asks for an interrupt window, and arms the host timer for the guest's next
/// timer deadline.
pub fn before_entry(
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
) -> Entry {
    if shared.stopping() {
        return Entry::Stop;
    }
    report_state(vcpu, local, shared, host.now(), "runs");
    let m = &shared.mailboxes[local.index];
    if local.index != 0 && m.init.load(Ordering::Acquire) {
        return Entry::Init;
    }
    passthrough::deliver(host.take_device_vectors(), local, shared);
    shared.virtio_service_host(mem, local, host);
    let nmi = collect(local, shared, host.now());
    if nmi && vcpu.inject_nmi() {
        m.nmi.store(false, Ordering::Release);
    }
    match local.apic.pending() {
        Some(_) if vcpu.interrupt_window_open() => {
            if let Some(v) = local.apic.ack() {
                vcpu.inject_interrupt(v);
                shared.interrupts_injected.fetch_add(1, Ordering::Relaxed);
            }
            vcpu.request_interrupt_window(false);
        }
        Some(_) => vcpu.request_interrupt_window(true),
        None => vcpu.request_interrupt_window(false),
    }
    host.arm(local.apic.next_deadline());
    Entry::Go
}

/// Handles the exits the platform owns; `None` for the rest (the common handlers in
/// [`crate::run::exits`] take those).
#[allow(clippy::too_many_arguments)]
pub fn handle(
    exit: &Exit,
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    cpu: &impl crate::run::exits::HostCpu,
    console: &mut impl Console,
) -> Option<Action> {
    match *exit {
        Exit::Cpuid => {
            let leaf = vcpu.gpr(Gpr::Rax) as u32;
            let sub = vcpu.gpr(Gpr::Rcx) as u32;
            let vcpus = shared.mailboxes.len() as u32;
            let r = crate::run::exits::reflect_guest_cr4(
                cpuid(cpu, leaf, sub, local.index as u32, vcpus, shared.tsc_hz),
                leaf,
                sub,
                vcpu.cr(4),
            );
            for (g, v) in [Gpr::Rax, Gpr::Rbx, Gpr::Rcx, Gpr::Rdx].into_iter().zip(r) {
                vcpu.set_gpr(g, v.into());
            }
            vcpu.skip_instruction();
            Some(Action::Resume)
        }
        Exit::MsrRead => msr_read(vcpu, local, host),
        Exit::MsrWrite => msr_write(vcpu, local, shared, host),
        // The platform's devices are reached by IN and OUT only (the common handlers' string
        // I/O serves the bare-metal COM1, not this platform's UART).
        Exit::Io { string: true, .. } => Some(Action::Stop(EndReason::Unsupported {
            what: "string I/O (INS/OUTS) on the Linux platform",
            rip: vcpu.rip(),
        })),
        Exit::Io {
            port,
            size,
            write,
            string: false,
            ..
        } => io::port_exit(vcpu, local, shared, host, console, port, size, write),
        Exit::NestedPageFault { gpa, .. } if shared.mmio_map.get(gpa.as_u64()).is_some() => {
            Some(mmio(vcpu, mem, local, shared, host, gpa.as_u64()))
        }
        Exit::Hlt => Some(halt(vcpu, mem, local, shared, host)),
        Exit::ExternalInterrupt { .. } | Exit::InterruptWindow | Exit::Nmi => Some(Action::Resume),
        // CR8 is the local APIC's task priority (SDM Vol. 3A §11.8.6.1): one value however the
        // guest reaches it (CR8, the TPR register, the x2APIC MSR).
        Exit::CrRead { cr: 8, gpr } => {
            vcpu.set_gpr(gpr, crate::run::deny::cr8_from_tpr(local.apic.tpr()));
            vcpu.skip_instruction();
            Some(Action::Resume)
        }
        Exit::CrWrite { cr: 8, gpr } => match crate::run::deny::tpr_from_cr8(vcpu.gpr(gpr)) {
            Some(tpr) => {
                local.apic.set_tpr(tpr);
                vcpu.skip_instruction();
                Some(Action::Resume)
            }
            None => gp(vcpu),
        },
        _ => None,
    }
}

fn gp(vcpu: &mut impl Vcpu) -> Option<Action> {
    vcpu.inject_exception(vector::GP, Some(0));
    Some(Action::Resume)
}

/// At debug level, one line per vCPU every 10 s of TSC time: where it is and what its APIC holds.
fn report_state(vcpu: &impl Vcpu, local: &mut Local, shared: &Shared, now: u64, what: &str) {
    if !log::log_enabled!(log::Level::Debug)
        || now.saturating_sub(local.last_report) < shared.tsc_hz.saturating_mul(10)
    {
        return;
    }
    local.last_report = now;
    let highest = |base: u32| {
        (0..8u32)
            .rev()
            .find_map(|w| {
                let v = local.apic.read(base + w, now).unwrap_or(0) as u32;
                (v != 0).then(|| w * 32 + 31 - v.leading_zeros())
            })
            .map_or(-1, |v| v as i64)
    };
    let uart = shared.uart.lock();
    log::debug!(
        "enclave '{}' vCPU {} {what}: rip {:#x} if {} irr {} isr {} tpr {:#x} pending {:?} deadline {:?} now {} uart irq {} ioapic pin4 {:#x}",
        shared.name,
        local.index,
        vcpu.rip(),
        vcpu.rflags() >> 9 & 1,
        highest(lapic::reg::IRR0),
        highest(lapic::reg::ISR0),
        local.apic.tpr(),
        local.apic.pending(),
        local.apic.next_deadline(),
        now,
        uart.irq(),
        shared.ioapic.lock().entry(4).map_or(0, |e| e.0),
    );
}

fn halt(
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
) -> Action {
    vcpu.skip_instruction();
    let interruptible = vcpu.rflags() & (1 << 9) != 0;
    let m = &shared.mailboxes[local.index];
    loop {
        if shared.stopping() {
            return Action::Resume;
        }
        passthrough::deliver(host.take_device_vectors(), local, shared);
        shared.virtio_service_host(mem, local, host);
        let nmi = collect(local, shared, host.now());
        if nmi || (interruptible && local.apic.pending().is_some()) {
            return Action::Resume;
        }
        if local.index != 0 && m.init.load(Ordering::Acquire) {
            return Action::Resume;
        }
        if !interruptible && local.index == 0 && !nmi {
            // The boot vCPU stopped with interrupts off (Linux's halt after a panic, or a
            // bare "cli; hlt"): only an NMI could wake it, and nothing sends one.
            return Action::Stop(EndReason::Halted { rip: vcpu.rip() });
        }
        report_state(vcpu, local, shared, host.now(), "halts");
        // Wake at least every second, so the state line above keeps coming at debug level.
        let deadline = local.apic.next_deadline();
        let cap = host.now().saturating_add(shared.tsc_hz);
        host.wait(Some(deadline.map_or(cap, |d| d.min(cap))));
    }
}

/// What the platform's tests share: a fake host, console and host CPU, and vCPU set-up steps.
#[cfg(test)]
mod testkit {
    use super::*;
    use apic::{msr_write, APIC_BASE_EXTD};
    use atoll_vcpu::fake::FakeVcpu;

    #[derive(Default)]
    pub(super) struct FakeHost {
        pub(super) now: u64,
        pub(super) kicks: Vec<u32>,
        pub(super) waits: u32,
        pub(super) armed: Option<u64>,
        /// Device vectors the next `take_device_vectors` returns.
        pub(super) device_vectors: [u64; 4],
    }
    impl PlatformHost for FakeHost {
        fn now(&self) -> u64 {
            self.now
        }
        fn kick(&mut self, host_apic: u32) {
            self.kicks.push(host_apic);
        }
        fn wait(&mut self, deadline: Option<u64>) {
            self.waits += 1;
            // Time moves to the deadline (or a bit, if none).
            self.now = deadline.unwrap_or(self.now + 1000).max(self.now + 1);
        }
        fn arm(&mut self, deadline: Option<u64>) {
            self.armed = deadline;
        }
        fn take_device_vectors(&mut self) -> [u64; 4] {
            core::mem::take(&mut self.device_vectors)
        }
    }

    #[derive(Default)]
    pub(super) struct Lines(pub(super) Vec<(String, String)>);
    impl Console for Lines {
        fn line(&mut self, name: &str, text: &str) {
            self.0.push((name.to_string(), text.to_string()));
        }
    }

    /// Programs I/O APIC pin 4 (COM1) as the guest does: `vector`, edge, physical, vCPU 0.
    pub(super) fn route_com1_to_vcpu0(s: &Shared, vector: u32) {
        let mut io = s.ioapic.lock();
        io.mmio_write(0, 4, 0x10 + 8).unwrap();
        io.mmio_write(0x10, 4, vector).unwrap();
        io.mmio_write(0, 4, 0x10 + 9).unwrap();
        io.mmio_write(0x10, 4, 0).unwrap();
    }

    pub(super) fn vcpu() -> FakeVcpu {
        FakeVcpu {
            rflags: 1 << 9,
            window_open: true,
            ..Default::default()
        }
    }

    pub(super) fn wrmsr(v: &mut FakeVcpu, msr: u32, value: u64) {
        v.gprs[Gpr::Rcx as usize] = msr.into();
        v.gprs[Gpr::Rax as usize] = value & 0xffff_ffff;
        v.gprs[Gpr::Rdx as usize] = value >> 32;
    }

    pub(super) fn enable_apic(v: &mut FakeVcpu, l: &mut Local, s: &Shared, h: &mut FakeHost) {
        let base = l.apic_base() | APIC_BASE_EXTD;
        wrmsr(v, 0x1b, base);
        assert_eq!(msr_write(v, l, s, h), Some(Action::Resume));
        assert_eq!(l.mode, ApicMode::X2Apic);
        wrmsr(v, lapic::reg::SVR, 0x1ff);
        assert_eq!(msr_write(v, l, s, h), Some(Action::Resume));
    }

    pub(super) struct Cpu;
    impl crate::run::exits::HostCpu for Cpu {
        fn cpuid(&self, leaf: u32, _sub: u32) -> [u32; 4] {
            match leaf {
                0 => [0xd, 0, 0, 0],
                1 => [0x906ea, 0x0010_0800, (1 << 3) | (1 << 5), 1 << 28],
                4 => [0x1c00_4121, 0, 0, 0],
                7 => [0, 0, (1 << 5) | (1 << 16), (1 << 26) | (1 << 10)],
                0x8000_0001 => [0, 0, (1 << 22) | (1 << 2), 0],
                _ => [leaf, leaf, leaf, leaf],
            }
        }
        fn xsetbv(&mut self, _value: u64) {}
        fn rdtsc(&self) -> u64 {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::vplat::testkit::*;
    use apic::msr_write;
    use atoll_vcpu::fake::FakeVcpu;
    use atoll_vcpu::SliceMemory;

    #[test]
    fn blocked_interrupts_wait_for_a_window() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        enable_apic(&mut v, &mut l, &s, &mut h);
        // Self IPI while the guest cannot take it.
        wrmsr(&mut v, lapic::reg::SELF_IPI, 0x40);
        msr_write(&mut v, &mut l, &s, &mut h);
        v.window_open = false;
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert!(v.injected_irqs.is_empty());
        assert!(v.window_requested);
        // The window opens: injected, and the request dropped.
        v.window_open = true;
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(v.injected_irqs, [0x40]);
        assert!(!v.window_requested);
        // In service now: a second one of lower class waits for the EOI.
        wrmsr(&mut v, lapic::reg::SELF_IPI, 0x30);
        msr_write(&mut v, &mut l, &s, &mut h);
        v.window_open = true;
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(v.injected_irqs, [0x40]);
        wrmsr(&mut v, lapic::reg::EOI, 0);
        msr_write(&mut v, &mut l, &s, &mut h);
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(v.injected_irqs, [0x40, 0x30]);
    }

    #[test]
    fn cr8_is_the_apic_task_priority() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        let mut ram = vec![0u8; 16];
        let mut mem = SliceMemory(&mut ram);
        let mut lines = Lines::default();
        struct NoCpuid;
        impl crate::run::exits::HostCpu for NoCpuid {
            fn cpuid(&self, _: u32, _: u32) -> [u32; 4] {
                [0; 4]
            }
            fn xsetbv(&mut self, _: u64) {}
            fn rdtsc(&self) -> u64 {
                0
            }
        }
        let cpu = NoCpuid;
        let mut exit = |e: Exit, v: &mut FakeVcpu, l: &mut Local, h: &mut FakeHost| {
            handle(&e, v, &mut mem, l, &s, h, &cpu, &mut lines)
        };
        v.gprs[Gpr::Rbx as usize] = 0x9;
        let a = exit(
            Exit::CrWrite {
                cr: 8,
                gpr: Gpr::Rbx,
            },
            &mut v,
            &mut l,
            &mut h,
        );
        assert_eq!(
            (a, l.apic.tpr(), v.skipped),
            (Some(Action::Resume), 0x90, 1)
        );
        l.apic.set_tpr(0x5f);
        exit(
            Exit::CrRead {
                cr: 8,
                gpr: Gpr::R9,
            },
            &mut v,
            &mut l,
            &mut h,
        );
        assert_eq!(v.gprs[Gpr::R9 as usize], 5);
        v.gprs[Gpr::Rbx as usize] = 0x10;
        exit(
            Exit::CrWrite {
                cr: 8,
                gpr: Gpr::Rbx,
            },
            &mut v,
            &mut l,
            &mut h,
        );
        assert_eq!(
            (l.apic.tpr(), v.injected),
            (0x5f, Some((vector::GP, Some(0))))
        );
    }

    #[test]
    fn hlt_waits_for_the_timer() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        enable_apic(&mut v, &mut l, &s, &mut h);
        // TSC-deadline mode, vector 0xec, deadline at 5000.
        wrmsr(&mut v, lapic::reg::LVT_TIMER, (0b10 << 17) | 0xec);
        msr_write(&mut v, &mut l, &s, &mut h);
        wrmsr(&mut v, lapic::reg::TSC_DEADLINE, 5000);
        msr_write(&mut v, &mut l, &s, &mut h);
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(h.armed, Some(5000));
        let skipped = v.skipped;
        assert_eq!(
            halt(
                &mut v,
                &mut atoll_vcpu::SliceMemory(&mut []),
                &mut l,
                &s,
                &mut h
            ),
            Action::Resume
        );
        assert_eq!(v.skipped, skipped + 1);
        assert!(h.now >= 5000);
        assert_eq!(h.waits, 1);
        before_entry(
            &mut v,
            &mut atoll_vcpu::SliceMemory(&mut []),
            &mut l,
            &s,
            &mut h,
        );
        assert_eq!(v.injected_irqs, [0xec]);
        // With interrupts off the boot vCPU halts for good.
        v.rflags = 0;
        assert!(matches!(
            halt(
                &mut v,
                &mut atoll_vcpu::SliceMemory(&mut []),
                &mut l,
                &s,
                &mut h
            ),
            Action::Stop(EndReason::Halted { .. })
        ));
    }

    #[test]
    fn init_resets_the_vcpu_but_keeps_its_line_buffer() {
        let s = Shared::new("lx", &[4, 5], 1_000_000_000);
        let mut l = Local::new(1, s.tsc_hz);
        let buffer = l.uart_line.as_ptr();
        l.mode = ApicMode::X2Apic;
        l.icr_high = 7;
        l.uart_line.push_str("old");
        l.reset(s.tsc_hz);
        let fresh = Local::new(1, s.tsc_hz);
        assert_eq!(
            (l.index, l.mode, l.icr_high, l.ldr, l.dfr),
            (1, fresh.mode, 0, 0, u32::MAX)
        );
        assert_eq!(l.apic_base(), fresh.apic_base());
        assert_eq!(l.uart_line.as_ptr(), buffer, "same allocation");
        assert!(l.uart_line.capacity() >= 3 * atoll_devices::uart::LINE_MAX);
    }
}
