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

use crate::partition::linux::{E820Entry, E820Kind};
use crate::run::exits::{Action, Console, EndReason};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use atoll_devices::bus::{AccessError, Bus, BusRange};
use atoll_devices::ioapic::{Delivery, DeliveryMode, IoApic};
use atoll_devices::lapic::{self, ApicEffect, DestMode, Ipi, IpiMode, X2Apic};
use atoll_devices::pci::host::{Ecam, HostBridge, PciSegment};
use atoll_devices::pci::{Bdf, DevFn};
use atoll_devices::uart::Uart16550;
use atoll_vcpu::decode::{self, MmioOperand};
use atoll_vcpu::{vector, Exit, Gpr, GuestMemory, Vcpu};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use spin::{Mutex, Once};

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

/// IA32_BIOS_SIGN_ID (microcode revision): reads 0, writes (the "clear before CPUID" idiom)
/// accepted.
const IA32_BIOS_SIGN_ID: u32 = 0x8b;
/// IA32_TSC_ADJUST (SDM Vol. 3B §18.17.3): reads 0, only 0 may be written.
const IA32_TSC_ADJUST: u32 = 0x3b;
/// IA32_APIC_BASE bits (SDM Vol. 3A §11.4.4): BSP (8), EXTD (10), EN (11).
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_EN: u64 = 1 << 11;

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

/// One vCPU's incoming interrupts, written by any core of the enclave. Cache-line aligned (its
/// class counts are), so two vCPUs' mailboxes never share a line.
pub struct Mailbox {
    edge: [AtomicU64; 4],
    level: [AtomicU64; 4],
    nmi: AtomicBool,
    init: AtomicBool,
    /// 0: none; otherwise 0x100 | the STARTUP vector.
    sipi: AtomicU32,
    /// The host core (APIC id) that runs this vCPU.
    pub host_apic: u32,
    /// Exit classes counted by this vCPU (written by its core only).
    classes: ClassCounts,
    /// Set by the vCPU's core when it stopped for good.
    done: AtomicBool,
    /// The vCPU's APIC mode and logical addressing, published by its core for senders on other
    /// cores: mode in bits 33:32 (0 disabled, 1 xAPIC, 2 x2APIC), xAPIC LDR bits 31:24 in bits
    /// 31:24 and the DFR model (bits 31:28) in bits 3:0.
    addressing: AtomicU64,
}

impl Mailbox {
    fn new(host_apic: u32) -> Self {
        Self {
            edge: Default::default(),
            level: Default::default(),
            nmi: AtomicBool::new(false),
            init: AtomicBool::new(false),
            sipi: AtomicU32::new(0),
            host_apic,
            classes: Default::default(),
            done: AtomicBool::new(false),
            addressing: AtomicU64::new(1 << 32 | 0xf),
        }
    }

    /// Whether the vCPU with x2APIC/APIC ID `id` behind this mailbox is named by `dest` in
    /// `mode`. `wide` says the destination is a 32-bit x2APIC one (from a sender in x2APIC
    /// mode); otherwise it is 8 bits, as xAPIC senders and the I/O APIC give it, with 0xFF
    /// (physical) the broadcast (SDM Vol. 3A §11.6.2).
    fn accepts(&self, id: u32, dest: u32, mode: DestMode, wide: bool) -> bool {
        let a = self.addressing.load(Ordering::Acquire);
        let apic_mode = (a >> 32) & 3;
        if apic_mode == 0 {
            return false;
        }
        if wide || apic_mode == 2 {
            return lapic::destination_matches(id, dest, mode);
        }
        let dest8 = dest & 0xff;
        match mode {
            DestMode::Physical => dest8 == 0xff || dest8 == id,
            DestMode::Logical => {
                let ldr = ((a >> 24) & 0xff) as u32;
                if dest8 == 0xff {
                    true
                } else if a & 0xf == 0xf {
                    // Flat model: one bit per APIC.
                    ldr & dest8 != 0
                } else {
                    // Cluster model: cluster in the high nibble, members in the low one.
                    ldr >> 4 == dest8 >> 4 && ldr & dest8 & 0xf != 0
                }
            }
        }
    }

    fn post(&self, vector: u8, level: bool) {
        let (word, bit) = (usize::from(vector / 64), vector % 64);
        let set = if level { &self.level } else { &self.edge };
        set[word].fetch_or(1 << bit, Ordering::AcqRel);
    }

    /// Whether anything waits in the mailbox.
    pub fn has_work(&self) -> bool {
        self.edge
            .iter()
            .chain(&self.level)
            .any(|w| w.load(Ordering::Acquire) != 0)
            || self.nmi.load(Ordering::Acquire)
            || self.init.load(Ordering::Acquire)
            || self.sipi.load(Ordering::Acquire) != 0
    }

    /// Takes the pending INIT, if any.
    pub fn take_init(&self) -> bool {
        self.init.swap(false, Ordering::AcqRel)
    }

    /// Takes the pending STARTUP vector, if any.
    pub fn take_sipi(&self) -> Option<u8> {
        let v = self.sipi.swap(0, Ordering::AcqRel);
        (v != 0).then_some(v as u8)
    }

    /// Counts one exit of `class`.
    pub fn count(&self, class: Class) {
        self.classes.0[class as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the vCPU stopped.
    pub fn set_done(&self) {
        self.done.store(true, Ordering::Release);
    }

    /// Whether the vCPU stopped.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// What an interrupt message asks of its target vCPU.
#[derive(Clone, Copy, Debug)]
enum Signal {
    Fixed { vector: u8, level: bool },
    Nmi,
    Init,
    Startup(u8),
}

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
}

/// Guest console markers atoll measures between.
#[derive(Default)]
struct Marks {
    /// TSC when the boot vCPU first entered the guest.
    start: Option<u64>,
    /// TSC of the first `atoll-init:` line.
    init: Option<u64>,
    /// TSC and class totals at `ATOLL-IDLE begin`.
    idle_begin: Option<(u64, [u64; 4])>,
    /// The idle window: TSC cycles and class counts.
    idle: Option<(u64, [u64; 4])>,
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
    /// Which device answers a port.
    ports: Bus<Port>,
    /// Which device answers an MMIO page.
    mmio_map: Bus<Mmio>,
    stop: AtomicBool,
    end: Once<EndReason>,
    /// IPIs whose destination named no vCPU of the enclave.
    pub ipis_dropped: AtomicU64,
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
            ports: port_map(),
            mmio_map: mmio_map(),
            stop: AtomicBool::new(false),
            end: Once::new(),
            ipis_dropped: AtomicU64::new(0),
            results: Mutex::new(atoll_devices::bounded::ReportStore::new(
                atoll_devices::bounded::REPORT_BUDGET,
            )),
            console_bytes_dropped: AtomicU64::new(0),
            marks: Mutex::new(Marks::default()),
            totals: Mutex::new(([0; atoll_vcpu::ExitKind::ALL.len()], 0, 0)),
            tsc_hz,
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

    /// Records the boot vCPU's first entry.
    pub fn started(&self, tsc: u64) {
        self.marks.lock().start.get_or_insert(tsc);
    }

    fn class_totals(&self) -> [u64; 4] {
        let mut t = [0u64; 4];
        for m in &self.mailboxes {
            for (i, c) in m.classes.0.iter().enumerate() {
                t[i] += c.load(Ordering::Relaxed);
            }
        }
        t
    }

    /// Exit classes over the whole run, summed over the vCPUs.
    pub fn classes(&self) -> serde_json::Map<String, serde_json::Value> {
        let t = self.class_totals();
        Class::ALL
            .iter()
            .map(|c| (c.name().to_string(), t[*c as usize].into()))
            .collect()
    }

    /// The measured figures for the report: `boot_to_init` and `idle` (when seen).
    pub fn measurements(&self, tsc_hz: u64) -> serde_json::Map<String, serde_json::Value> {
        let m = self.marks.lock();
        let us = |cycles: u64| (u128::from(cycles) * 1_000_000 / u128::from(tsc_hz.max(1))) as u64;
        let mut out = serde_json::Map::new();
        if let (Some(s), Some(i)) = (m.start, m.init) {
            let cycles = i.saturating_sub(s);
            out.insert(
                "boot_to_init".into(),
                serde_json::json!({ "cycles": cycles, "us": us(cycles) }),
            );
        }
        if let Some((cycles, c)) = m.idle {
            let mut o = serde_json::json!({ "cycles": cycles, "us": us(cycles) });
            for class in Class::ALL {
                o[class.name()] = c[class as usize].into();
            }
            out.insert("idle".into(), o);
        }
        out
    }

    /// A console line from the guest: printed, and looked at for the lines atoll measures or
    /// reports.
    fn guest_line(&self, line: &str, now: u64, console: &mut impl Console) {
        console.line(&self.name, line);
        // Results are checked without recursion and kept raw (no parse, no allocation here);
        // what exceeds the budget is counted in the store.
        use atoll_devices::bounded::{validate, Limits, ValueKind};
        if let Some(json) = line.strip_prefix("ATOLL-GUEST-CHECK ") {
            let value = json.trim();
            let _ = match validate(value.as_bytes(), Limits::GUEST) {
                Ok(()) => {
                    self.results
                        .lock()
                        .insert("guest_check", value.as_bytes(), ValueKind::Json)
                }
                // Not JSON (or too deep): the text, as a string.
                Err(_) => {
                    self.results
                        .lock()
                        .insert("guest_check", json.as_bytes(), ValueKind::Text)
                }
            };
        } else if let Some(status) = line.strip_prefix("ATOLL-GUEST-EXIT status=") {
            if let Ok(n) = status.trim().parse::<i64>() {
                let mut text = atoll_devices::bounded::FixedBuf::<20>::new();
                if core::fmt::Write::write_fmt(&mut text, format_args!("{n}")).is_ok() {
                    let _ = self.results.lock().insert(
                        "guest_exit_status",
                        text.as_bytes(),
                        ValueKind::Json,
                    );
                }
            }
        } else if line.starts_with("atoll-init:") {
            self.marks.lock().init.get_or_insert(now);
        } else if line.trim() == "ATOLL-IDLE begin" {
            let totals = self.class_totals();
            self.marks.lock().idle_begin = Some((now, totals));
        } else if line.trim() == "ATOLL-IDLE end" {
            let totals = self.class_totals();
            let mut m = self.marks.lock();
            if let Some((t0, c0)) = m.idle_begin {
                let mut d = [0u64; 4];
                for i in 0..4 {
                    d[i] = totals[i].saturating_sub(c0[i]);
                }
                m.idle = Some((now.saturating_sub(t0), d));
            }
        }
    }

    /// Prints what COM1 still holds (the enclave ended mid-line).
    pub fn flush_console(&self, now: u64, console: &mut impl Console) {
        // The enclave has ended: holding the UART while the line is handled delays nobody.
        let mut u = self.uart.lock();
        if let Some(line) = u.flush() {
            self.guest_line(line, now, console);
        }
    }

    /// Bytes for the guest's COM1 receiver (raises its interrupt when enabled). Only as many
    /// as its FIFO has room for are taken (the sender keeps the rest: flow control, no overrun);
    /// returns how many.
    pub fn uart_receive(&self, bytes: &[u8], host: &mut impl PlatformHost) -> usize {
        let (n, irq) = {
            let mut u = self.uart.lock();
            let room = u.room();
            let n = u.receive(&bytes[..bytes.len().min(room)]);
            (n, u.irq())
        };
        self.set_uart_irq(irq, None, host);
        n
    }

    fn set_uart_irq(&self, level: bool, local: Option<&mut Local>, host: &mut impl PlatformHost) {
        let d = self
            .ioapic
            .lock()
            .set_irq(atoll_devices::acpi::COM1_IRQ, level);
        if let Some(d) = d {
            self.deliver(d, local, host);
        }
    }

    /// Sends an I/O APIC message to its destination vCPUs. `local` is the calling vCPU (its
    /// own APIC is written directly).
    fn deliver(&self, d: Delivery, mut local: Option<&mut Local>, host: &mut impl PlatformHost) {
        let mut hit = false;
        for (i, m) in self.mailboxes.iter().enumerate() {
            if !m.accepts(i as u32, d.dest, d.dest_mode, d.dest > 0xff) {
                continue;
            }
            hit = true;
            let signal = match d.mode {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => Signal::Fixed {
                    vector: d.vector,
                    level: d.level_triggered,
                },
                DeliveryMode::Nmi => Signal::Nmi,
                DeliveryMode::Init => Signal::Init,
                // SMI and ExtINT have no receiver on this platform.
                DeliveryMode::Smi | DeliveryMode::ExtInt => continue,
            };
            self.signal(i, signal, local.as_deref_mut(), host);
            if d.mode == DeliveryMode::LowestPriority {
                break;
            }
        }
        if !hit {
            self.ipis_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Raises `signal` at vCPU `target`: into `local`'s own APIC when the target is the calling
    /// vCPU, otherwise into the target's mailbox followed by a kick of its core.
    fn signal(
        &self,
        target: usize,
        signal: Signal,
        local: Option<&mut Local>,
        host: &mut impl PlatformHost,
    ) {
        let m = &self.mailboxes[target];
        match (signal, local) {
            (Signal::Fixed { vector, level }, Some(l)) if l.index == target => {
                l.apic.accept(vector, level);
                return;
            }
            (Signal::Fixed { vector, level }, _) => m.post(vector, level),
            (Signal::Nmi, _) => m.nmi.store(true, Ordering::Release),
            (Signal::Init, _) => m.init.store(true, Ordering::Release),
            (Signal::Startup(v), _) => m.sipi.store(0x100 | u32::from(v), Ordering::Release),
        }
        host.kick(m.host_apic);
    }

    /// Sends IPI `ipi` from vCPU `local`.
    fn route_ipi(&self, ipi: Ipi, local: &mut Local, host: &mut impl PlatformHost) {
        if ipi.is_init_deassert() {
            return;
        }
        let sender = local.apic.apic_id();
        let wide = local.mode == ApicMode::X2Apic;
        let mut hit = false;
        for (i, m) in self.mailboxes.iter().enumerate() {
            let target = i as u32;
            let named = match ipi.shorthand {
                lapic::Shorthand::None => m.accepts(target, ipi.dest, ipi.dest_mode, wide),
                _ => ipi.targets(sender, target),
            };
            if !named {
                continue;
            }
            hit = true;
            let signal = match ipi.mode {
                IpiMode::Fixed(vector) => Signal::Fixed {
                    vector,
                    level: false,
                },
                IpiMode::Nmi => Signal::Nmi,
                IpiMode::Init => Signal::Init,
                IpiMode::Startup(v) => Signal::Startup(v),
                _ => continue,
            };
            self.signal(i, signal, Some(local), host);
        }
        // A destination that names no vCPU of this enclave (a physical id beyond its vCPUs, a
        // logical cluster it has no member in) reaches nobody: dropped, and counted.
        if !hit {
            self.ipis_dropped.fetch_add(1, Ordering::Relaxed);
        }
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

/// The modes of a local APIC (SDM Vol. 3A §11.12.5, Figure 11-27).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// EN clear: the APIC takes no interrupts.
    Disabled,
    /// xAPIC: registers in the MMIO page at IA32_APIC_BASE.
    XApic,
    /// x2APIC: registers are MSRs 0x800–0x8FF.
    X2Apic,
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

    /// IA32_APIC_BASE: the architectural base, EN and EXTD from the mode, BSP on vCPU 0.
    pub fn apic_base(&self) -> u64 {
        let bsp = if self.index == 0 { APIC_BASE_BSP } else { 0 };
        let mode = match self.mode {
            ApicMode::Disabled => 0,
            ApicMode::XApic => APIC_BASE_EN,
            ApicMode::X2Apic => APIC_BASE_EN | APIC_BASE_EXTD,
        };
        atoll_devices::acpi::LOCAL_APIC_BASE | mode | bsp
    }

    /// A write of IA32_APIC_BASE: the base stays architectural, BSP as it is, and only the
    /// transitions of SDM Vol. 3A §11.12.5 are allowed (xAPIC ↔ disabled, xAPIC → x2APIC,
    /// x2APIC → disabled). Disabling resets the APIC. `Err` changes nothing (#GP).
    fn set_apic_base(&mut self, value: u64) -> Result<(), ()> {
        let fixed =
            atoll_devices::acpi::LOCAL_APIC_BASE | if self.index == 0 { APIC_BASE_BSP } else { 0 };
        if value & !(APIC_BASE_EN | APIC_BASE_EXTD) != fixed {
            return Err(());
        }
        let new = match (value & APIC_BASE_EN != 0, value & APIC_BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(()),
        };
        match (self.mode, new) {
            (a, b) if a == b => {}
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(())
            }
            (_, ApicMode::Disabled) => {
                self.apic.reset();
                self.ldr = 0;
                self.dfr = u32::MAX;
            }
            _ => {}
        }
        self.mode = new;
        Ok(())
    }

    fn publish(&self, mailbox: &Mailbox) {
        let mode: u64 = match self.mode {
            ApicMode::Disabled => 0,
            ApicMode::XApic => 1,
            ApicMode::X2Apic => 2,
        };
        let v = (mode << 32) | u64::from(self.ldr & 0xff00_0000) | u64::from(self.dfr >> 28);
        mailbox.addressing.store(v, Ordering::Release);
    }
}

/// The x2APIC MSR behind xAPIC register `offset` (SDM Vol. 3A Table 11-6: MSR 0x800 +
/// offset / 16), for the registers both modes share.
fn xapic_msr(offset: u64) -> u32 {
    0x800 + (offset >> 4) as u32
}

/// xAPIC register offsets the adapter treats itself (SDM Vol. 3A Table 11-1).
mod xreg {
    pub const ID: u64 = 0x20;
    pub const APR: u64 = 0x90;
    pub const LDR: u64 = 0xd0;
    pub const DFR: u64 = 0xe0;
    pub const ESR: u64 = 0x280;
    pub const ICR_LOW: u64 = 0x300;
    pub const ICR_HIGH: u64 = 0x310;
}

/// ICR low bits a guest sets (vector, delivery mode, destination mode, level, trigger,
/// shorthand); delivery status and reserved bits are dropped.
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;

/// A 32-bit access to the xAPIC page at `offset`: a read returns the register, a write
/// returns 0. Registers the xAPIC lacks read as 0 and ignore writes.
fn xapic_access(
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    offset: u64,
    write: Option<u32>,
) -> Result<u32, ()> {
    let now = host.now();
    let Some(value) = write else {
        return Ok(match offset {
            xreg::ID => (local.index as u32) << 24,
            xreg::APR => 0,
            xreg::LDR => local.ldr,
            xreg::DFR => local.dfr,
            xreg::ICR_LOW => local.apic.read(lapic::reg::ICR, now).unwrap_or(0) as u32,
            xreg::ICR_HIGH => local.icr_high,
            _ => local
                .apic
                .read(xapic_msr(offset), now)
                .map_or(0, |v| v as u32),
        });
    };
    match offset {
        xreg::ID | xreg::APR => {}
        xreg::LDR => {
            local.ldr = value & 0xff00_0000;
            local.publish(&shared.mailboxes[local.index]);
        }
        xreg::DFR => {
            local.dfr = value | 0x0fff_ffff;
            local.publish(&shared.mailboxes[local.index]);
        }
        xreg::ICR_HIGH => local.icr_high = value & 0xff00_0000,
        xreg::ICR_LOW => {
            let icr = (u64::from(local.icr_high >> 24) << 32) | u64::from(value & ICR_LOW_WRITABLE);
            apply_write(local, shared, host, lapic::reg::ICR, icr)?;
        }
        // Any write latches the errors (x2APIC insists on 0).
        xreg::ESR => apply_write(local, shared, host, lapic::reg::ESR, 0)?,
        _ => {
            let msr = xapic_msr(offset);
            // The SELF IPI register is x2APIC-only.
            if msr != lapic::reg::SELF_IPI && local.apic.read(msr, now).is_ok()
                || msr == lapic::reg::EOI
            {
                apply_write(local, shared, host, msr, value.into())?;
            }
        }
    }
    Ok(0)
}

/// A register write to the APIC model and what follows from it.
fn apply_write(
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    msr: u32,
    value: u64,
) -> Result<(), ()> {
    match local.apic.write(msr, value, host.now()) {
        Ok(ApicEffect::Ipi(ipi)) => shared.route_ipi(ipi, local, host),
        Ok(ApicEffect::Eoi { vector }) => {
            let out = shared.ioapic.lock().eoi(vector);
            for d in out.iter() {
                shared.deliver(d, Some(local), host);
            }
        }
        Ok(_) => {}
        Err(_) => return Err(()),
    }
    Ok(())
}

/// Moves what the mailbox holds into the vCPU's APIC and runs its timer.
fn collect(local: &mut Local, shared: &Shared, now: u64) -> bool {
    let m = &shared.mailboxes[local.index];
    for (set, level) in [(&m.edge, false), (&m.level, true)] {
        for (w, word) in set.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                local.apic.accept((w as u32 * 64 + b) as u8, level);
            }
        }
    }
    local.apic.tick(now);
    m.nmi.load(Ordering::Acquire)
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
    let nmi = collect(local, shared, host.now());
    if nmi && vcpu.inject_nmi() {
        m.nmi.store(false, Ordering::Release);
    }
    match local.apic.pending() {
        Some(_) if vcpu.interrupt_window_open() => {
            if let Some(v) = local.apic.ack() {
                vcpu.inject_interrupt(v);
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
        } => {
            let (device, offset) = match shared.ports.resolve(port.into(), size.into()) {
                Ok((&device, offset)) => (device, offset as u16),
                // Not the platform's: the common handlers apply the I/O policy.
                Err(AccessError::Unmapped) => return None,
                // Running past the device's last port (or an odd size): no register answers.
                Err(AccessError::Straddles { .. } | AccessError::Size(_)) => {
                    if !write {
                        crate::run::exits::set_io_result(vcpu, size, u32::MAX);
                    }
                    vcpu.skip_instruction();
                    return Some(Action::Resume);
                }
            };
            if device == Port::Com1 {
                uart_io(vcpu, local, shared, host, console, offset, size, write);
                return Some(Action::Resume);
            }
            let value = vcpu.gpr(Gpr::Rax);
            let read = legacy_io(
                shared,
                host,
                device,
                port,
                offset,
                size,
                write.then_some(value),
            );
            if let Some(v) = read {
                crate::run::exits::set_io_result(vcpu, size, v);
            }
            vcpu.skip_instruction();
            Some(Action::Resume)
        }
        Exit::NestedPageFault { gpa, .. } if shared.mmio_map.get(gpa.as_u64()).is_some() => {
            Some(mmio(vcpu, mem, local, shared, host, gpa.as_u64()))
        }
        Exit::Hlt => Some(halt(vcpu, local, shared, host)),
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

/// What answers a port of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// COM1's eight registers.
    Com1,
    /// PIT channel 2 and its gate (0x40–0x43, 0x61).
    Pit,
    /// The CMOS clock's index and data ports (0x70, 0x71).
    Rtc,
    /// PCI configuration mechanism #1 (0xCF8–0xCFF).
    PciConfig,
}

/// What answers an MMIO page of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mmio {
    /// The xAPIC page (each vCPU sees its own).
    LocalApic,
    /// The I/O APIC.
    IoApic,
    /// The PCI ECAM window.
    Ecam,
}

/// A bus of the constant, disjoint `ranges` (base, length, device); the tests check that every
/// one is on it.
fn fixed_bus<D: Copy>(ranges: &[(u64, u64, D)]) -> Bus<D> {
    let mut bus = Bus::with_capacity(ranges.len());
    for &(base, len, device) in ranges {
        if let Ok(range) = BusRange::new(base, len) {
            let _ = bus.insert(range, device);
        }
    }
    bus
}

/// The platform's ports.
fn port_map() -> Bus<Port> {
    use atoll_devices::pci::host::{CONFIG_ADDRESS_PORT, CONFIG_PORTS};
    fixed_bus(&[
        (COM1.into(), 8, Port::Com1),
        (0x40, 4, Port::Pit),
        (0x61, 1, Port::Pit),
        (0x70, 2, Port::Rtc),
        (
            CONFIG_ADDRESS_PORT.into(),
            CONFIG_PORTS.into(),
            Port::PciConfig,
        ),
    ])
}

/// The platform's MMIO pages.
fn mmio_map() -> Bus<Mmio> {
    fixed_bus(&[
        (
            atoll_devices::acpi::LOCAL_APIC_BASE,
            0x1000,
            Mmio::LocalApic,
        ),
        (IOAPIC_BASE, 0x1000, Mmio::IoApic),
        (ECAM_BASE, ECAM.len(), Mmio::Ecam),
    ])
}

/// The PCI segment: the host bridge at 00:00.0 (vendor 0x1B36 device 0x0008, class 06:00:00,
/// read-only) and nothing else; every other function reads as absent (all ones).
fn pci_segment() -> PciSegment {
    let mut segment = PciSegment::new(ECAM);
    // A new segment covering bus 0 has a free 00:00.0 (the tests check the bridge is there).
    let _ = segment.insert(
        Bdf {
            bus: 0,
            devfn: DevFn::from_bits(0),
        },
        alloc::boxed::Box::new(HostBridge::new()),
    );
    segment
}

/// Ports of the PIT, the RTC and PCI configuration mechanism #1 (`offset` is the port's offset
/// in its device's range). Returns the value of a read (`write` is `None`).
fn legacy_io(
    shared: &Shared,
    host: &impl PlatformHost,
    device: Port,
    port: u16,
    offset: u16,
    size: u8,
    write: Option<u64>,
) -> Option<u32> {
    match device {
        Port::Pit => {
            let mut pit = shared.pit.lock();
            match write {
                Some(v) => {
                    pit.write(port, v as u8, host.now());
                    None
                }
                None => Some(pit.read(port, host.now()).into()),
            }
        }
        Port::Rtc => {
            let mut rtc = shared.rtc.lock();
            match write {
                Some(v) => {
                    rtc.write(port, v as u8);
                    None
                }
                None => Some(rtc.read(port, host.now()).into()),
            }
        }
        Port::PciConfig => {
            // The bus passed 1, 2 or 4 bytes.
            let n = usize::from(size).min(4);
            let mut pci = shared.pci.lock();
            match write {
                Some(v) => {
                    if let Some((bdf, effect)) =
                        pci.io_write(offset, &(v as u32).to_le_bytes()[..n])
                    {
                        log::debug!("pci {bdf}: {effect:?}");
                    }
                    None
                }
                None => {
                    let mut b = [0u8; 4];
                    pci.io_read(offset, &mut b[..n]);
                    Some(u32::from_le_bytes(b))
                }
            }
        }
        // COM1 goes through `uart_io`.
        Port::Com1 => write.is_none().then_some(u32::MAX),
    }
}

fn gp(vcpu: &mut impl Vcpu) -> Option<Action> {
    vcpu.inject_exception(vector::GP, Some(0));
    Some(Action::Resume)
}

/// The x2APIC MSRs exist in x2APIC mode only; IA32_TSC_DEADLINE whenever the APIC is on.
fn msr_allowed(local: &Local, msr: u32) -> bool {
    match local.mode {
        ApicMode::X2Apic => true,
        ApicMode::XApic => msr == lapic::reg::TSC_DEADLINE,
        ApicMode::Disabled => false,
    }
}

fn msr_read(vcpu: &mut impl Vcpu, local: &mut Local, host: &impl PlatformHost) -> Option<Action> {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = match index {
        crate::run::exits::msr::IA32_APIC_BASE => local.apic_base(),
        IA32_BIOS_SIGN_ID | IA32_TSC_ADJUST => 0,
        m if lapic::is_apic_msr(m) && msr_allowed(local, m) => {
            match local.apic.read(m, host.now()) {
                // The deadline is kept in the core's TSC; the guest's TSC has its offset.
                Ok(v) if m == lapic::reg::TSC_DEADLINE => {
                    crate::run::deny::host_tsc_to_guest(v, vcpu.tsc_offset())
                }
                Ok(v) => v,
                Err(_) => return gp(vcpu),
            }
        }
        m if lapic::is_apic_msr(m) => return gp(vcpu),
        _ => return None,
    };
    vcpu.set_gpr(Gpr::Rax, value & 0xffff_ffff);
    vcpu.set_gpr(Gpr::Rdx, value >> 32);
    vcpu.skip_instruction();
    Some(Action::Resume)
}

fn msr_write(
    vcpu: &mut impl Vcpu,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
) -> Option<Action> {
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = (vcpu.gpr(Gpr::Rdx) << 32) | (vcpu.gpr(Gpr::Rax) & 0xffff_ffff);
    match index {
        crate::run::exits::msr::IA32_APIC_BASE => {
            if local.set_apic_base(value).is_err() {
                return gp(vcpu);
            }
            local.publish(&shared.mailboxes[local.index]);
        }
        IA32_BIOS_SIGN_ID => {}
        // The TSC is the host's: it cannot be adjusted, only confirmed unadjusted.
        IA32_TSC_ADJUST if value == 0 => {}
        IA32_TSC_ADJUST => return gp(vcpu),
        m if lapic::is_apic_msr(m) => {
            let value = if m == lapic::reg::TSC_DEADLINE {
                crate::run::deny::guest_tsc_to_host(value, vcpu.tsc_offset())
            } else {
                value
            };
            if !msr_allowed(local, m) || apply_write(local, shared, host, m, value).is_err() {
                return gp(vcpu);
            }
        }
        _ => return None,
    }
    vcpu.skip_instruction();
    Some(Action::Resume)
}

#[allow(clippy::too_many_arguments)]
fn uart_io(
    vcpu: &mut impl Vcpu,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    console: &mut impl Console,
    offset: u16,
    size: u8,
    write: bool,
) {
    let now = host.now();
    let (line, irq) = {
        let mut u = shared.uart.lock();
        if write {
            // At most 3 × LINE_MAX bytes: within `uart_line`'s capacity, no reallocation.
            let line = u.write(offset, vcpu.gpr(Gpr::Rax) as u8).map(|l| {
                local.uart_line.clear();
                local.uart_line.push_str(l);
            });
            (line.is_some(), u.irq())
        } else {
            crate::run::exits::set_io_result(vcpu, size, u.read(offset).into());
            (false, u.irq())
        }
    };
    if line {
        shared.guest_line(&local.uart_line, now, console);
    }
    shared.set_uart_irq(irq, Some(local), host);
    vcpu.skip_instruction();
}

fn mmio(
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    local: &mut Local,
    shared: &Shared,
    host: &mut impl PlatformHost,
    gpa: u64,
) -> Action {
    let rip = vcpu.rip();
    let (pg, bits, linear) = decode::site_of(vcpu);
    let (bytes, n) = decode::fetch(mem, pg, linear);
    let Some(access) = decode::decode_mmio(&bytes[..n], bits) else {
        return Action::Stop(EndReason::Unsupported {
            what: "an MMIO access by an instruction atoll does not emulate",
            rip,
        });
    };
    let mask = match access.size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    };
    // The first byte decides the device; each device checks size and alignment itself.
    let Some((&region, offset)) = shared.mmio_map.get(gpa) else {
        return Action::Stop(EndReason::Unsupported {
            what: "an MMIO access outside the platform's devices",
            rip,
        });
    };
    let n = usize::from(access.size).min(8);
    if access.write {
        let value = match access.operand {
            MmioOperand::Immediate(v) => v,
            MmioOperand::Register { gpr, high_byte } => {
                let v = vcpu.gpr(gpr);
                if high_byte {
                    v >> 8
                } else {
                    v
                }
            }
        } & mask;
        let refused = match region {
            // Registers are 32-bit, 16-byte aligned; other accesses are dropped.
            Mmio::LocalApic => {
                local.mode == ApicMode::XApic
                    && access.size == 4
                    && gpa & 0xf == 0
                    && xapic_access(local, shared, host, offset, Some(value as u32)).is_err()
            }
            Mmio::IoApic => {
                let out = shared
                    .ioapic
                    .lock()
                    .mmio_write(offset, access.size, value as u32);
                match out {
                    Ok(ds) => {
                        for d in ds.iter() {
                            shared.deliver(d, Some(local), host);
                        }
                        false
                    }
                    Err(_) => true,
                }
            }
            Mmio::Ecam => {
                let effect = shared
                    .pci
                    .lock()
                    .ecam_write(offset, &value.to_le_bytes()[..n]);
                if let Some((bdf, effect)) = effect {
                    log::debug!("pci {bdf}: {effect:?}");
                }
                false
            }
        };
        if refused {
            vcpu.inject_exception(vector::GP, Some(0));
            return Action::Resume;
        }
    } else {
        let value = match region {
            Mmio::LocalApic => {
                if local.mode == ApicMode::XApic && access.size == 4 && gpa & 0xf == 0 {
                    u64::from(xapic_access(local, shared, host, offset, None).unwrap_or(0))
                } else {
                    mask
                }
            }
            Mmio::IoApic => match shared.ioapic.lock().mmio_read(offset, access.size) {
                Ok(v) => u64::from(v),
                Err(_) => {
                    vcpu.inject_exception(vector::GP, Some(0));
                    return Action::Resume;
                }
            },
            Mmio::Ecam => {
                let mut b = [0u8; 8];
                shared.pci.lock().ecam_read(offset, &mut b[..n]);
                u64::from_le_bytes(b)
            }
        };
        let MmioOperand::Register { gpr, high_byte } = access.operand else {
            return Action::Stop(EndReason::Unsupported {
                what: "an MMIO load without a register",
                rip,
            });
        };
        let old = vcpu.gpr(gpr);
        let new = if high_byte {
            (old & !0xff00) | ((value & 0xff) << 8)
        } else {
            match access.dest_size {
                1 => (old & !0xff) | (value & 0xff),
                2 => (old & !0xffff) | (value & 0xffff),
                // 32-bit destinations zero the upper half; 64-bit ones take the whole value.
                _ => value,
            }
        };
        vcpu.set_gpr(gpr, new);
    }
    vcpu.set_rip(rip.wrapping_add(u64::from(access.len)));
    Action::Resume
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

/// CPUID for a Linux enclave of `vcpus` vCPUs, as seen by vCPU `index`: the common filter
/// ([`crate::run::exits::filtered_cpuid`]) and then the topology (one package, one core per vCPU,
/// no SMT), x2APIC and TSC-deadline on, MONITOR/MWAIT, machine checks, the PMU, LA57 and the
/// speculation-control MSRs off, TSC_ADJUST and the invariant TSC on, and the TSC frequency in
/// leaves 0x15/0x16.
pub fn cpuid(
    host: &impl crate::run::exits::HostCpu,
    leaf: u32,
    sub: u32,
    index: u32,
    vcpus: u32,
    tsc_hz: u64,
) -> [u32; 4] {
    let max_basic = host.cpuid(0, 0)[0];
    let core_bits = 32 - vcpus.saturating_sub(1).leading_zeros();
    let mut r = crate::run::exits::filtered_cpuid(host, leaf, sub);
    match leaf {
        0 => r[0] = max_basic.max(0x16),
        // Leaves the host lacks but atoll defines read as zero (not the host's highest leaf).
        2..=0x14 if leaf > max_basic && leaf != 0xb => r = [0; 4],
        1 => {
            // EBX: initial APIC id, logical processors per package; CLFLUSH size kept.
            r[1] = (r[1] & 0xffff) | (vcpus.min(255) << 16) | (index.min(255) << 24);
            // ECX: x2APIC (21) and TSC-deadline (24) on; MONITOR (3), EIST (7), TM2 (8) and
            // PDCM (15) off (their MSRs are the host's).
            r[2] = (r[2] | (1 << 21) | (1 << 24)) & !((1 << 3) | (1 << 7) | (1 << 8) | (1 << 15));
            // EDX: the platform's local APIC (9) on; no machine-check architecture (MCE 7, MCA
            // 14): its banks are the host's; no thermal monitor or its MSRs (ACPI 22, TM 29).
            r[3] = (r[3] | (1 << 9)) & !((1 << 7) | (1 << 14) | (1 << 22) | (1 << 29));
            // EDX: HTT when the package has more than one logical processor.
            if vcpus > 1 {
                r[3] |= 1 << 28;
            } else {
                r[3] &= !(1 << 28);
            }
        }
        // Cores per package - 1 in EAX 31:26; one thread per cache in 25:14 (for every cache
        // the host lists; type 0 ends the list).
        4 if r[0] & 0x1f != 0 => {
            r[0] = (r[0] & 0x3fff) | ((vcpus.saturating_sub(1).min(63)) << 26);
        }
        // MONITOR/MWAIT leaf and the architectural PMU: nothing.
        5 | 0xa => r = [0; 4],
        // Thermal and power: only ARAT (EAX bit 2), the APIC timer keeps running in idle states
        // (it is atoll's model, driven by the TSC). Without it Linux needs a broadcast timer to
        // stop the tick in idle and, having none, ticks at HZ on every idle vCPU.
        6 => r = [1 << 2, 0, 0, 0],
        7 if sub == 0 => {
            // EDX: the speculation controls (IBRS/IBPB 26, STIBP 27, L1D_FLUSH 28, SSBD 31) stay
            // as the host has them: their MSRs are the guest's own (passed through, the core is
            // the enclave's). ARCH_CAPABILITIES (29) and CORE_CAPABILITIES (30) off: atoll does
            // not emulate them.
            r[3] &= !((1 << 29) | (1 << 30));
            // EBX: IA32_TSC_ADJUST (1) on (emulated: it reads 0), so Linux trusts the TSC
            // without a watchdog.
            r[1] |= 1 << 1;
            // ECX: WAITPKG (5) off; LA57 (16) off: atoll decodes guest instructions through
            // 4-level tables only.
            r[2] &= !((1 << 5) | (1 << 16));
        }
        0xb | 0x1f => {
            r = match sub {
                0 => [0, 1, 0x100, index],
                1 => [core_bits, vcpus, 0x201, index],
                _ => [0, 0, sub & 0xff, index],
            };
            if leaf == 0x1f && leaf > max_basic {
                r = [0; 4];
            }
        }
        0x15 => {
            // Denominator 1, numerator 1, crystal = TSC frequency.
            r = [1, 1, tsc_hz.min(u64::from(u32::MAX)) as u32, 0];
        }
        0x16 => {
            let mhz = (tsc_hz / 1_000_000).min(0xffff) as u32;
            r = [mhz, mhz, 100, 0];
        }
        0x8000_0001 => {
            // ECX: CmpLegacy (1) with several cores; TOPOEXT (22) and PERFCTR_CORE (23) off.
            r[2] &= !((1 << 22) | (1 << 23));
            // EDX: AMD's copy of the local APIC bit (9), as in leaf 1.
            r[3] |= 1 << 9;
            if vcpus > 1 {
                r[2] |= 1 << 1;
            } else {
                r[2] &= !(1 << 1);
            }
        }
        0x8000_0007 => {
            // Invariant TSC.
            r[3] |= 1 << 8;
        }
        0x8000_0008 => {
            // EBX: VIRT_SSBD (25) off (its MSR is not emulated); IBPB, IBRS, STIBP and SSBD
            // stay, as for leaf 7.
            r[1] &= !(1 << 25);
            // ECX: NC = cores - 1, ApicIdCoreIdSize.
            r[2] = (r[2] & !0xf0ff) | (vcpus.saturating_sub(1) & 0xff) | (core_bits << 12);
        }
        _ => {}
    }
    r
}

/// The E820 map of a Linux enclave with `ram` bytes: low RAM, the reserved BIOS area (with the
/// ACPI tables), RAM from 1 MiB, and the ECAM window reserved (Linux uses MMCONFIG only where
/// the firmware reserved it).
pub fn e820(ram: u64) -> Vec<E820Entry> {
    let mut map = alloc::vec![
        E820Entry {
            addr: 0,
            size: LOW_RAM_END,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: LOW_RAM_END,
            size: 0x10_0000 - LOW_RAM_END,
            kind: E820Kind::Reserved,
        },
    ];
    if ram > 0x10_0000 {
        map.push(E820Entry {
            addr: 0x10_0000,
            size: ram - 0x10_0000,
            kind: E820Kind::Ram,
        });
    }
    map.push(E820Entry {
        addr: ECAM_BASE,
        size: u64::from(ECAM_BUSES) << 20,
        kind: E820Kind::Reserved,
    });
    map
}

/// The ACPI description of a Linux enclave with `vcpus` vCPUs.
pub fn platform_layout(vcpus: usize) -> atoll_devices::acpi::PlatformLayout {
    atoll_devices::acpi::PlatformLayout {
        vcpu_apic_ids: (0..vcpus as u32).collect(),
        ioapic_id: IOAPIC_ID,
        ioapic_base: IOAPIC_BASE,
        ecam_base: ECAM_BASE,
        ecam_buses: ECAM_BUSES,
        oem_id: *b"ATOLL ",
    }
}

/// Lays out a Linux enclave in its RAM (`ram` bytes from GPA 0): ACPI tables for `vcpus`
/// vCPUs at [`ACPI_GPA`], then the kernel, initrd, boot_params and command line through the
/// boot protocol ([`crate::partition::linux::load`]). Every check runs before the kernel is written.
pub fn load_linux(
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    vcpus: usize,
    ram: u64,
    mem: &mut impl GuestMemory,
) -> Result<crate::partition::loader::BootState, String> {
    if ram > MAX_RAM {
        return Err(alloc::format!(
            "{} MiB of RAM; a Linux enclave has at most {} MiB",
            ram >> 20,
            MAX_RAM >> 20
        ));
    }
    let image = crate::partition::linux::LinuxImage::parse(kernel)
        .map_err(|e| alloc::format!("kernel: {e}"))?;
    let tables = atoll_devices::acpi::build(&platform_layout(vcpus), ACPI_GPA)
        .map_err(|e| alloc::format!("ACPI tables: {e}"))?;
    if ACPI_GPA + tables.len() as u64 > 0x10_0000 {
        return Err("ACPI tables do not fit below 1 MiB".into());
    }
    let map = e820(ram);
    // Check the kernel's layout before writing anything.
    crate::partition::linux::plan(&image, initrd, cmdline, ram, &map, Some(tables.rsdp_gpa()))
        .map_err(|e| alloc::format!("kernel: {e}"))?;
    tables
        .write_to(mem)
        .ok_or_else(|| String::from("guest RAM too small for the ACPI tables"))?;
    crate::partition::linux::load(
        &image,
        initrd,
        cmdline,
        ram,
        &map,
        Some(tables.rsdp_gpa()),
        mem,
    )
    .map_err(|e| alloc::format!("kernel: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_vcpu::fake::FakeVcpu;
    use atoll_vcpu::SliceMemory;

    #[derive(Default)]
    struct FakeHost {
        now: u64,
        kicks: Vec<u32>,
        waits: u32,
        armed: Option<u64>,
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
    }

    #[derive(Default)]
    struct Lines(Vec<(String, String)>);
    impl Console for Lines {
        fn line(&mut self, name: &str, text: &str) {
            self.0.push((name.to_string(), text.to_string()));
        }
    }

    /// Programs I/O APIC pin 4 (COM1) as the guest does: `vector`, edge, physical, vCPU 0.
    fn route_com1_to_vcpu0(s: &Shared, vector: u32) {
        let mut io = s.ioapic.lock();
        io.mmio_write(0, 4, 0x10 + 8).unwrap();
        io.mmio_write(0x10, 4, vector).unwrap();
        io.mmio_write(0, 4, 0x10 + 9).unwrap();
        io.mmio_write(0x10, 4, 0).unwrap();
    }

    fn vcpu() -> FakeVcpu {
        FakeVcpu {
            rflags: 1 << 9,
            window_open: true,
            ..Default::default()
        }
    }

    fn wrmsr(v: &mut FakeVcpu, msr: u32, value: u64) {
        v.gprs[Gpr::Rcx as usize] = msr.into();
        v.gprs[Gpr::Rax as usize] = value & 0xffff_ffff;
        v.gprs[Gpr::Rdx as usize] = value >> 32;
    }

    fn enable_apic(v: &mut FakeVcpu, l: &mut Local, s: &Shared, h: &mut FakeHost) {
        let base = l.apic_base() | APIC_BASE_EXTD;
        wrmsr(v, 0x1b, base);
        assert_eq!(msr_write(v, l, s, h), Some(Action::Resume));
        assert_eq!(l.mode, ApicMode::X2Apic);
        wrmsr(v, lapic::reg::SVR, 0x1ff);
        assert_eq!(msr_write(v, l, s, h), Some(Action::Resume));
    }

    #[test]
    fn apic_base_modes_follow_the_sdm() {
        let s = Shared::new("l", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l0 = Local::new(0, s.tsc_hz);
        let l1 = Local::new(1, s.tsc_hz);
        // Firmware hands over xAPIC mode; BSP on vCPU 0 only.
        assert_eq!(l0.apic_base(), 0xfee0_0900);
        assert_eq!(l1.apic_base(), 0xfee0_0800);
        let mut v = vcpu();
        v.gprs[Gpr::Rcx as usize] = 0x1b;
        assert_eq!(msr_read(&mut v, &mut l0, &h), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xfee0_0900);
        // x2APIC registers do not exist in xAPIC mode.
        v.gprs[Gpr::Rcx as usize] = u64::from(lapic::reg::ID);
        msr_read(&mut v, &mut l0, &h);
        assert_eq!(v.injected, Some((vector::GP, Some(0))));
        // Moving the base or dropping the BSP bit is refused and changes nothing.
        for bad in [0xfed0_0900u64, 0xfee0_0800, 0xfee0_0500] {
            v.injected = None;
            wrmsr(&mut v, 0x1b, bad);
            msr_write(&mut v, &mut l0, &s, &mut h);
            assert_eq!(v.injected, Some((vector::GP, Some(0))), "{bad:#x}");
            assert_eq!(l0.apic_base(), 0xfee0_0900);
        }
        // xAPIC → x2APIC, then x2APIC → xAPIC is refused, x2APIC → disabled → xAPIC allowed.
        wrmsr(&mut v, 0x1b, 0xfee0_0d00);
        v.injected = None;
        msr_write(&mut v, &mut l0, &s, &mut h);
        assert_eq!(v.injected, None);
        assert_eq!(l0.mode, ApicMode::X2Apic);
        v.gprs[Gpr::Rcx as usize] = u64::from(lapic::reg::ID);
        msr_read(&mut v, &mut l0, &h);
        assert_eq!(v.injected, None);
        wrmsr(&mut v, 0x1b, 0xfee0_0900);
        msr_write(&mut v, &mut l0, &s, &mut h);
        assert_eq!(v.injected, Some((vector::GP, Some(0))));
        assert_eq!(l0.mode, ApicMode::X2Apic);
        v.injected = None;
        wrmsr(&mut v, 0x1b, 0xfee0_0100);
        msr_write(&mut v, &mut l0, &s, &mut h);
        assert_eq!(l0.mode, ApicMode::Disabled);
        wrmsr(&mut v, 0x1b, 0xfee0_0900);
        msr_write(&mut v, &mut l0, &s, &mut h);
        assert_eq!((l0.mode, v.injected), (ApicMode::XApic, None));
        // Other MSRs are not the platform's.
        v.gprs[Gpr::Rcx as usize] = 0x1a0;
        assert_eq!(msr_read(&mut v, &mut l0, &h), None);
    }

    #[test]
    fn xapic_page_reaches_the_model_and_routes_ipis() {
        let s = Shared::new("l", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l0 = Local::new(0, s.tsc_hz);
        let mut l1 = Local::new(1, s.tsc_hz);
        let mut v1 = vcpu();
        let x = |l: &mut Local, h: &mut FakeHost, off, w| xapic_access(l, &s, h, off, w);
        assert_eq!(x(&mut l1, &mut h, xreg::ID, None), Ok(1 << 24));
        assert_eq!(x(&mut l0, &mut h, 0x30, None), Ok(lapic::VERSION));
        // SVR on both.
        x(&mut l0, &mut h, 0xf0, Some(0x1ff)).unwrap();
        x(&mut l1, &mut h, 0xf0, Some(0x1ff)).unwrap();
        assert_eq!(x(&mut l1, &mut h, 0xf0, None), Ok(0x1ff));
        // Flat logical mode: vCPU 1 is bit 1.
        x(&mut l1, &mut h, xreg::DFR, Some(0xffff_ffff)).unwrap();
        x(&mut l1, &mut h, xreg::LDR, Some(0x0200_0000)).unwrap();
        assert_eq!(x(&mut l1, &mut h, xreg::LDR, None), Ok(0x0200_0000));
        // vCPU 0 sends vector 0x41 logically to mask 0x02: high half, then low half sends.
        x(&mut l0, &mut h, xreg::ICR_HIGH, Some(0x0200_0000)).unwrap();
        x(&mut l0, &mut h, xreg::ICR_LOW, Some(0x0000_0841)).unwrap();
        assert_eq!(h.kicks, [5]);
        before_entry(&mut v1, &mut l1, &s, &mut h);
        assert_eq!(v1.injected_irqs, [0x41]);
        // Physical to id 1 too; and to id 9 nobody (dropped).
        x(&mut l0, &mut h, xreg::ICR_HIGH, Some(0x0100_0000)).unwrap();
        x(&mut l0, &mut h, xreg::ICR_LOW, Some(0x42)).unwrap();
        x(&mut l0, &mut h, xreg::ICR_HIGH, Some(0x0900_0000)).unwrap();
        x(&mut l0, &mut h, xreg::ICR_LOW, Some(0x43)).unwrap();
        assert_eq!(s.ipis_dropped.load(Ordering::Relaxed), 1);
        // EOI through the page.
        x(&mut l1, &mut h, 0xb0, Some(0)).unwrap();
        v1.window_open = true;
        before_entry(&mut v1, &mut l1, &s, &mut h);
        assert_eq!(v1.injected_irqs, [0x41, 0x42]);
        // TSC-deadline through the LVT in the page and the MSR, which exists in xAPIC mode.
        x(&mut l1, &mut h, 0x320, Some((0b10 << 17) | 0xec)).unwrap();
        wrmsr(&mut v1, lapic::reg::TSC_DEADLINE, 777);
        assert_eq!(
            msr_write(&mut v1, &mut l1, &s, &mut h),
            Some(Action::Resume)
        );
        assert_eq!(l1.apic.next_deadline(), Some(777));
        // Unknown offsets read 0 and ignore writes.
        assert_eq!(x(&mut l1, &mut h, 0x3f0, Some(0x30)), Ok(0));
        assert_eq!(x(&mut l1, &mut h, 0xfe0, None), Ok(0));
    }

    #[test]
    fn fixed_ipi_reaches_the_other_vcpu_and_is_injected_there() {
        let s = Shared::new("l", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l0 = Local::new(0, s.tsc_hz);
        let mut l1 = Local::new(1, s.tsc_hz);
        let (mut v0, mut v1) = (vcpu(), vcpu());
        enable_apic(&mut v0, &mut l0, &s, &mut h);
        enable_apic(&mut v1, &mut l1, &s, &mut h);
        // vCPU 0 sends vector 0xfd to x2APIC id 1, physical, fixed.
        wrmsr(&mut v0, lapic::reg::ICR, (1u64 << 32) | 0xfd);
        assert_eq!(
            msr_write(&mut v0, &mut l0, &s, &mut h),
            Some(Action::Resume)
        );
        assert_eq!(h.kicks, [5]);
        assert_eq!(before_entry(&mut v1, &mut l1, &s, &mut h), Entry::Go);
        assert_eq!(v1.injected_irqs, [0xfd]);
        // Nothing for vCPU 0.
        before_entry(&mut v0, &mut l0, &s, &mut h);
        assert!(v0.injected_irqs.is_empty());
        // An IPI to id 7 names nobody in this enclave: dropped and counted, nobody kicked.
        h.kicks.clear();
        wrmsr(&mut v0, lapic::reg::ICR, (7u64 << 32) | 0xfd);
        msr_write(&mut v0, &mut l0, &s, &mut h);
        assert!(h.kicks.is_empty());
        assert_eq!(s.ipis_dropped.load(Ordering::Relaxed), 1);
    }

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
        before_entry(&mut v, &mut l, &s, &mut h);
        assert!(v.injected_irqs.is_empty());
        assert!(v.window_requested);
        // The window opens: injected, and the request dropped.
        v.window_open = true;
        before_entry(&mut v, &mut l, &s, &mut h);
        assert_eq!(v.injected_irqs, [0x40]);
        assert!(!v.window_requested);
        // In service now: a second one of lower class waits for the EOI.
        wrmsr(&mut v, lapic::reg::SELF_IPI, 0x30);
        msr_write(&mut v, &mut l, &s, &mut h);
        v.window_open = true;
        before_entry(&mut v, &mut l, &s, &mut h);
        assert_eq!(v.injected_irqs, [0x40]);
        wrmsr(&mut v, lapic::reg::EOI, 0);
        msr_write(&mut v, &mut l, &s, &mut h);
        before_entry(&mut v, &mut l, &s, &mut h);
        assert_eq!(v.injected_irqs, [0x40, 0x30]);
    }

    #[test]
    fn init_and_startup_are_posted() {
        let s = Shared::new("l", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l0 = Local::new(0, s.tsc_hz);
        let mut v0 = vcpu();
        enable_apic(&mut v0, &mut l0, &s, &mut h);
        // INIT assert, INIT de-assert (ignored), STARTUP 0x9a to id 1.
        wrmsr(&mut v0, lapic::reg::ICR, (1u64 << 32) | 0x4500);
        msr_write(&mut v0, &mut l0, &s, &mut h);
        wrmsr(&mut v0, lapic::reg::ICR, (1u64 << 32) | 0x8500);
        msr_write(&mut v0, &mut l0, &s, &mut h);
        wrmsr(&mut v0, lapic::reg::ICR, (1u64 << 32) | 0x4600 | 0x9a);
        msr_write(&mut v0, &mut l0, &s, &mut h);
        assert!(s.mailboxes[1].take_init());
        assert!(!s.mailboxes[1].take_init());
        assert_eq!(s.mailboxes[1].take_sipi(), Some(0x9a));
        assert_eq!(s.mailboxes[1].take_sipi(), None);
        assert!(!s.mailboxes[0].has_work());
    }

    #[test]
    fn tsc_deadline_follows_the_guest_tsc_offset() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        enable_apic(&mut v, &mut l, &s, &mut h);
        // The guest wrote its TSC 1000 ahead of the core's.
        v.tsc_offset = 1000;
        wrmsr(&mut v, lapic::reg::LVT_TIMER, (0b10 << 17) | 0xec);
        msr_write(&mut v, &mut l, &s, &mut h);
        wrmsr(&mut v, lapic::reg::TSC_DEADLINE, 6000);
        msr_write(&mut v, &mut l, &s, &mut h);
        before_entry(&mut v, &mut l, &s, &mut h);
        assert_eq!(h.armed, Some(5000), "armed in the core's TSC");
        v.gprs[Gpr::Rax as usize] = 0;
        msr_read(&mut v, &mut l, &h);
        assert_eq!(v.gprs[Gpr::Rax as usize], 6000, "read back in the guest's");
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
        before_entry(&mut v, &mut l, &s, &mut h);
        assert_eq!(h.armed, Some(5000));
        let skipped = v.skipped;
        assert_eq!(halt(&mut v, &mut l, &s, &mut h), Action::Resume);
        assert_eq!(v.skipped, skipped + 1);
        assert!(h.now >= 5000);
        assert_eq!(h.waits, 1);
        before_entry(&mut v, &mut l, &s, &mut h);
        assert_eq!(v.injected_irqs, [0xec]);
        // With interrupts off the boot vCPU halts for good.
        v.rflags = 0;
        assert!(matches!(
            halt(&mut v, &mut l, &s, &mut h),
            Action::Stop(EndReason::Halted { .. })
        ));
    }

    #[test]
    fn uart_output_interrupts_and_reports() {
        let s = Shared::new("lx", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        let mut c = Lines::default();
        enable_apic(&mut v, &mut l, &s, &mut h);
        // Route pin 4 to vector 0x24 on vCPU 0, edge, unmasked.
        route_com1_to_vcpu0(&s, 0x24);
        let out = |v: &mut FakeVcpu, l: &mut Local, h: &mut FakeHost, c: &mut Lines, off, val| {
            v.gprs[Gpr::Rax as usize] = val;
            uart_io(v, l, &s, h, c, off, 1, true);
        };
        // THR-empty interrupt enabled: the line rises, the I/O APIC sends 0x24 to vCPU 0.
        out(&mut v, &mut l, &mut h, &mut c, 1, 0x02);
        before_entry(&mut v, &mut l, &s, &mut h);
        assert_eq!(v.injected_irqs, [0x24]);
        for b in b"ATOLL-GUEST-EXIT status=0\n" {
            out(&mut v, &mut l, &mut h, &mut c, 0, u64::from(*b));
        }
        assert_eq!(
            c.0,
            [("lx".to_string(), "ATOLL-GUEST-EXIT status=0".to_string())]
        );
        assert_eq!(s.results.lock().to_map()["guest_exit_status"], 0);
        for b in b"ATOLL-GUEST-CHECK {\"ok\":true}\n" {
            out(&mut v, &mut l, &mut h, &mut c, 0, u64::from(*b));
        }
        assert_eq!(s.results.lock().to_map()["guest_check"]["ok"], true);
        let buffer = l.uart_line.as_ptr();
        for b in core::iter::repeat_n(0xffu8, 3 * atoll_devices::uart::LINE_MAX) {
            out(&mut v, &mut l, &mut h, &mut c, 0, u64::from(b));
        }
        assert_eq!(l.uart_line.as_ptr(), buffer, "the line buffer never grows");
        assert_eq!(l.uart_line.chars().count(), atoll_devices::uart::LINE_MAX);
        // Reading back LSR through the same path.
        v.gprs[Gpr::Rax as usize] = 0xffff_ff00;
        uart_io(&mut v, &mut l, &s, &mut h, &mut c, 5, 1, false);
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff_ff60);
    }

    #[test]
    fn serial_input_reaches_the_guest_with_its_interrupt_and_flow_control() {
        let s = Shared::new("lx", &[4, 5], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut v = vcpu();
        let mut c = Lines::default();
        enable_apic(&mut v, &mut l, &s, &mut h);
        route_com1_to_vcpu0(&s, 0x34);
        // The guest enables the received-data interrupt.
        v.gprs[Gpr::Rax as usize] = 0x01;
        uart_io(&mut v, &mut l, &s, &mut h, &mut c, 1, 1, true);
        // 20 bytes offered: 16 fit, the sender keeps 4; the interrupt goes to vCPU 0's core.
        h.kicks.clear();
        assert_eq!(s.uart_receive(&[b'x'; 20], &mut h), 16);
        assert_eq!(h.kicks, [4]);
        before_entry(&mut v, &mut l, &s, &mut h);
        assert_eq!(v.injected_irqs, [0x34]);
        // No overrun was flagged.
        v.gprs[Gpr::Rax as usize] = 0;
        uart_io(&mut v, &mut l, &s, &mut h, &mut c, 5, 1, false);
        assert_eq!(
            v.gprs[Gpr::Rax as usize] & 0x03,
            0x01,
            "data ready, no overrun"
        );
        assert_eq!(s.uart_receive(b"y", &mut h), 0, "full");
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

    #[test]
    fn guest_check_lines_are_kept_raw_and_bounded() {
        let s = Shared::new("lx", &[4], 1_000_000_000);
        let mut c = Lines::default();
        let map = |s: &Shared| s.results.lock().to_map();
        // Not JSON: kept as its text (as before), untrimmed.
        s.guest_line("ATOLL-GUEST-CHECK {oops ", 0, &mut c);
        assert_eq!(map(&s)["guest_check"], "{oops ");
        // Nested deeper than the ABI allows: text too, never a recursive parse.
        let deep = "[".repeat(10_000);
        s.guest_line(&alloc::format!("ATOLL-GUEST-CHECK {deep}"), 0, &mut c);
        assert_eq!(map(&s)["guest_check"], deep.as_str());
        // Valid: replaces the earlier value, parsed for the summary.
        s.guest_line(
            "ATOLL-GUEST-CHECK  {\"ok\":false,\"n\":[1,{\"x\":null}]} ",
            0,
            &mut c,
        );
        assert_eq!(
            serde_json::Value::Object(map(&s)),
            serde_json::json!({"guest_check": {"ok": false, "n": [1, {"x": null}]}})
        );
        s.guest_line("ATOLL-GUEST-EXIT status=-3", 0, &mut c);
        s.guest_line("ATOLL-GUEST-EXIT status=x", 0, &mut c);
        assert_eq!(map(&s)["guest_exit_status"], -3);
        // A flood of check lines never grows the store past its budget.
        let big = alloc::format!("\"{}\"", "y".repeat(atoll_devices::uart::LINE_MAX - 2));
        for _ in 0..100 {
            s.guest_line(&alloc::format!("ATOLL-GUEST-CHECK {big}"), 0, &mut c);
        }
        let r = s.results.lock();
        assert!(r.used() <= atoll_devices::bounded::REPORT_BUDGET);
        assert_eq!(r.dropped(), 0, "one key, replaced: fits");
    }

    #[test]
    fn vcpu_mailboxes_share_no_line() {
        let s = Shared::new("m", &[1, 2], 1_000_000);
        let line = |p: *const u8| p as usize / 64;
        let (a, b) = (&s.mailboxes[0], &s.mailboxes[1]);
        let classes = |m: &Mailbox| line((&m.classes as *const ClassCounts).cast());
        let edge = |m: &Mailbox| line((&m.edge as *const [AtomicU64; 4]).cast());
        // A vCPU's per-exit counts are on a line no sender writes, and no two vCPUs share one.
        assert_ne!(classes(a), edge(a));
        assert_ne!(classes(a), edge(b));
        assert_ne!(edge(a), edge(b));
        assert_ne!(classes(a), classes(b));
        a.count(Class::Timer);
        assert_eq!(
            a.classes.0[Class::Timer as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(
            b.classes.0[Class::Timer as usize].load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn idle_window_counts_classes() {
        let s = Shared::new("lx", &[4, 5], 1_000);
        let mut c = Lines::default();
        s.started(100);
        s.guest_line("atoll-init: /atoll-check", 1100, &mut c);
        s.guest_line("ATOLL-IDLE begin", 2000, &mut c);
        s.mailboxes[0].count(Class::Timer);
        s.mailboxes[1].count(Class::Timer);
        s.mailboxes[1].count(Class::Hlt);
        s.guest_line("ATOLL-IDLE end", 4000, &mut c);
        s.mailboxes[0].count(Class::Timer);
        let m = s.measurements(1_000);
        assert_eq!(m["boot_to_init"]["cycles"], 1000);
        assert_eq!(m["boot_to_init"]["us"], 1_000_000);
        assert_eq!(m["idle"]["cycles"], 2000);
        assert_eq!(m["idle"]["timer"], 2);
        assert_eq!(m["idle"]["hlt"], 1);
        assert_eq!(m["idle"]["ipi"], 0);
        assert_eq!(s.classes()["timer"], 3);
    }

    #[test]
    fn ioapic_and_ecam_mmio() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut ram = alloc::vec![0u8; 0x10000];
        // Paging off (CR0.PE only, 32-bit code): the instruction at RIP 0x1000.
        let mut v = vcpu();
        v.cr[0] = 1;
        v.cs.default32 = true;
        v.rip = 0x1000;
        // mov dword [ebx], eax → IOREGSEL = 0x01 (version register).
        ram[0x1000..0x1002].copy_from_slice(&[0x89, 0x03]);
        v.gprs[Gpr::Rax as usize] = 1;
        let mut mem = SliceMemory(&mut ram);
        assert_eq!(
            mmio(&mut v, &mut mem, &mut l, &s, &mut h, IOAPIC_BASE),
            Action::Resume
        );
        assert_eq!(v.rip, 0x1002);
        // mov eax, dword [ebx+0x10] → version.
        mem.write(boot::GuestPhysAddr::new(0x1002), &[0x8b, 0x43, 0x10])
            .unwrap();
        v.gprs[Gpr::Rax as usize] = u64::MAX;
        mmio(&mut v, &mut mem, &mut l, &s, &mut h, IOAPIC_BASE + 0x10);
        assert_eq!(v.rip, 0x1005);
        assert_eq!(v.gprs[Gpr::Rax as usize], 0x0017_0020);
        // movzx eax, word [ecx] on ECAM: the host bridge's vendor ID, zero-extended; then the
        // device ID at offset 2, and all ones for device 1 (nothing there).
        mem.write(boot::GuestPhysAddr::new(0x1005), &[0x0f, 0xb7, 0x01])
            .unwrap();
        mmio(&mut v, &mut mem, &mut l, &s, &mut h, ECAM_BASE);
        assert_eq!(v.gprs[Gpr::Rax as usize], 0x1b36);
        v.rip = 0x1005;
        mmio(&mut v, &mut mem, &mut l, &s, &mut h, ECAM_BASE + 2);
        assert_eq!(v.gprs[Gpr::Rax as usize], 0x0008);
        v.rip = 0x1005;
        mmio(&mut v, &mut mem, &mut l, &s, &mut h, ECAM_BASE + (1 << 15));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff);
        // An instruction that is not a MOV stops the enclave with the reason.
        mem.write(boot::GuestPhysAddr::new(0x1008), &[0x01, 0x03])
            .unwrap();
        assert!(matches!(
            mmio(&mut v, &mut mem, &mut l, &s, &mut h, IOAPIC_BASE),
            Action::Stop(EndReason::Unsupported { .. })
        ));
    }

    #[test]
    fn pci_mechanism_1_finds_the_host_bridge() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let h = FakeHost::default();
        let io = |port: u16, size: u8, w| {
            let (&device, offset) = s.ports.resolve(port.into(), size.into()).unwrap();
            assert_eq!(device, Port::PciConfig);
            legacy_io(&s, &h, device, port, offset as u16, size, w)
        };
        // Linux's probe: write 0x80000000 to 0xCF8 and read it back.
        io(0xcf8, 4, Some(0x8000_0000));
        assert_eq!(io(0xcf8, 4, None), Some(0x8000_0000));
        assert_eq!(io(0xcfc, 4, None), Some(0x0008_1b36));
        // The class code word at offset 0x0A: host bridge.
        io(0xcf8, 4, Some(0x8000_0008));
        assert_eq!(io(0xcfe, 2, None).map(|v| v & 0xffff), Some(0x0600));
        // Device 1: nothing.
        io(0xcf8, 4, Some(0x8000_0800));
        assert_eq!(io(0xcfc, 4, None), Some(u32::MAX));
        // The enable bit clear: no cycle.
        io(0xcf8, 4, Some(0));
        assert_eq!(io(0xcfc, 4, None), Some(u32::MAX));
        // Writes change nothing.
        io(0xcf8, 4, Some(0x8000_0000));
        io(0xcfc, 4, Some(0x1234_5678));
        assert_eq!(io(0xcfc, 4, None), Some(0x0008_1b36));
        // Byte and word reads of the data window, as Linux's pci_conf1_read does them.
        assert_eq!(io(0xcfd, 1, None), Some(0x1b));
        assert_eq!(io(0xcfe, 2, None), Some(0x0008));
        // Byte and word accesses to 0xCF8–0xCFB reach no register.
        assert_eq!(io(0xcf9, 1, None), Some(0xff));
        io(0xcf8, 2, Some(0));
        assert_eq!(io(0xcf8, 4, None), Some(0x8000_0000));
    }

    #[test]
    fn the_platform_maps_its_ports_and_pages() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let ports: Vec<(u64, u64, Port)> = s
            .ports
            .ranges()
            .map(|r| (r.base(), r.len(), *s.ports.get(r.base()).unwrap().0))
            .collect();
        assert_eq!(
            ports,
            alloc::vec![
                (0x40, 4, Port::Pit),
                (0x61, 1, Port::Pit),
                (0x70, 2, Port::Rtc),
                (0x3f8, 8, Port::Com1),
                (0xcf8, 8, Port::PciConfig),
            ]
        );
        let pages: Vec<(u64, u64, Mmio)> = s
            .mmio_map
            .ranges()
            .map(|r| (r.base(), r.len(), *s.mmio_map.get(r.base()).unwrap().0))
            .collect();
        assert_eq!(
            pages,
            alloc::vec![
                (ECAM_BASE, 1 << 20, Mmio::Ecam),
                (IOAPIC_BASE, 0x1000, Mmio::IoApic),
                (0xfee0_0000, 0x1000, Mmio::LocalApic),
            ]
        );
        // The segment has the host bridge at 00:00.0 and nothing else.
        let mut pci = s.pci.lock();
        let mut b = [0u8; 4];
        pci.ecam_read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0008_1b36);
        let present: Vec<_> = pci.bus_mut(0).unwrap().present().collect();
        assert_eq!(present, alloc::vec![DevFn::from_bits(0)]);
        assert!(pci.bus_mut(1).is_none());
    }

    #[test]
    fn port_and_page_exits_dispatch_through_the_maps() {
        let s = Shared::new("l", &[4], 1_000_000_000);
        let mut h = FakeHost::default();
        let mut l = Local::new(0, s.tsc_hz);
        let mut ram = alloc::vec![0u8; 0x1000];
        // mov dword [ecx], eax; mov eax, dword [ecx] (32-bit code, paging off).
        ram[0x100..0x104].copy_from_slice(&[0x89, 0x01, 0x8b, 0x01]);
        let mut mem = SliceMemory(&mut ram);
        let mut v = vcpu();
        v.cr[0] = 1;
        v.cs.default32 = true;
        v.rip = 0x100;
        let mut console = Lines::default();
        let mut exit = |v: &mut FakeVcpu, e: Exit| {
            handle(&e, v, &mut mem, &mut l, &s, &mut h, &Cpu, &mut console)
        };
        let io = |port, size, write| Exit::Io {
            port,
            size,
            write,
            string: false,
            rep: false,
        };
        // CF8 then CFC through the exit: the host bridge's IDs, RIP advanced.
        v.gprs[Gpr::Rax as usize] = 0x8000_0000;
        assert_eq!(exit(&mut v, io(0xcf8, 4, true)), Some(Action::Resume));
        assert_eq!(exit(&mut v, io(0xcfc, 4, false)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0x0008_1b36);
        // A dword at 0xCFD runs past 0xCFF: no register answers, RAX's low half is all ones.
        v.gprs[Gpr::Rax as usize] = 0x1_0000_0000;
        let skipped = v.skipped;
        assert_eq!(exit(&mut v, io(0xcfd, 4, false)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff_ffff);
        assert_eq!(v.skipped, skipped + 1, "the instruction is skipped");
        // A word at COM1's last port runs past it too; a write there is dropped.
        v.gprs[Gpr::Rax as usize] = 0;
        assert_eq!(exit(&mut v, io(0x3ff, 2, false)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff);
        assert_eq!(exit(&mut v, io(0x3ff, 2, true)), Some(Action::Resume));
        // The RTC through the map: index 0x0a (status A) is readable.
        v.gprs[Gpr::Rax as usize] = 0x0a;
        assert_eq!(exit(&mut v, io(0x70, 1, true)), Some(Action::Resume));
        assert_eq!(exit(&mut v, io(0x71, 1, false)), Some(Action::Resume));
        // Ports and pages the platform does not have go to the common handlers.
        assert_eq!(exit(&mut v, io(0x80, 1, true)), None);
        assert_eq!(exit(&mut v, io(0x3f6, 2, false)), None);
        // A word at 0x3F7 ends in COM1's first port: it straddles, so no register answers.
        v.gprs[Gpr::Rax as usize] = 0;
        assert_eq!(exit(&mut v, io(0x3f7, 2, false)), Some(Action::Resume));
        assert_eq!(v.gprs[Gpr::Rax as usize], 0xffff);
        let fault = |gpa| Exit::NestedPageFault {
            gpa: boot::GuestPhysAddr::new(gpa),
            access: atoll_vcpu::Access {
                read: true,
                write: false,
                fetch: false,
            },
            linear: None,
        };
        // The host bridge's command register through ECAM: the write is dropped, it reads 0.
        v.gprs[Gpr::Rax as usize] = 0xffff_ffff;
        assert_eq!(exit(&mut v, fault(ECAM_BASE + 4)), Some(Action::Resume));
        assert_eq!(v.rip, 0x102);
        assert_eq!(exit(&mut v, fault(ECAM_BASE + 4)), Some(Action::Resume));
        assert_eq!((v.rip, v.gprs[Gpr::Rax as usize]), (0x104, 0));
        assert_eq!(exit(&mut v, fault(ECAM_BASE + (1 << 20))), None);
        assert_eq!(exit(&mut v, fault(0xfec0_1000)), None);
        assert_eq!(exit(&mut v, fault(ECAM_BASE - 1)), None);
        assert!(console.0.is_empty(), "nothing reached COM1");
    }

    struct Cpu;
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

    #[test]
    fn cpuid_describes_the_enclave() {
        let c = |leaf, sub, index| cpuid(&Cpu, leaf, sub, index, 3, 2_500_000_000);
        assert_eq!(c(0, 0, 0)[0], 0x16);
        let l1 = c(1, 0, 2);
        assert_eq!(l1[1] >> 24, 2, "initial APIC id");
        assert_eq!((l1[1] >> 16) & 0xff, 3, "logical processors");
        assert_ne!(l1[2] & (1 << 21), 0, "x2APIC");
        assert_ne!(l1[2] & (1 << 24), 0, "TSC deadline");
        assert_eq!(l1[2] & ((1 << 3) | (1 << 5)), 0, "no MWAIT, no VMX");
        assert_ne!(l1[2] & (1 << 31), 0, "hypervisor");
        assert_eq!(c(4, 0, 0)[0] >> 26, 2);
        assert_eq!(c(0xb, 0, 1), [0, 1, 0x100, 1]);
        assert_eq!(c(0xb, 1, 1), [2, 3, 0x201, 1]);
        assert_eq!(c(0xb, 2, 1), [0, 0, 2, 1]);
        assert_eq!(c(0x1f, 1, 1), [0; 4], "beyond the host's leaves");
        assert_eq!(c(0x15, 0, 0), [1, 1, 2_500_000_000, 0]);
        assert_eq!(c(0x16, 0, 0), [2500, 2500, 100, 0]);
        assert_eq!(c(0xe, 0, 0), [0; 4]);
        assert_eq!(c(6, 0, 0), [1 << 2, 0, 0, 0], "ARAT only");
        let l7 = c(7, 0, 0);
        assert_eq!(l7[3], (1 << 10) | (1 << 26));
        assert_eq!(l7[1] & 2, 2, "TSC_ADJUST");
        assert_eq!(l7[2], 0);
        assert_eq!(c(0x8000_0001, 0, 0)[2] & ((1 << 22) | (1 << 2)), 0);
        assert_ne!(c(0x8000_0007, 0, 0)[3] & (1 << 8), 0);
        assert_eq!(c(0x8000_0008, 0, 0)[2] & 0xf0ff, 2 | (2 << 12));
        assert_eq!(c(0x4000_0000, 0, 0)[0], 0x4000_0001);
    }
}
