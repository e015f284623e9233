//! The root partition's exits: what atoll does when the host's Linux, running as a guest on its
//! own cores (Jailhouse-style), leaves the guest (issue 10, items 2, 4, 5 and 6); `hw::host_run` calls it on
//! every exit of a host vCPU.
//!
//! The host's second-stage tables map RAM and MMIO 1:1 except atoll's memory, the enclave pool
//! and the xAPIC page (mapped read-only, so that ICR writes exit); its device interrupts arrive
//! directly and HLT does not exit. What exits comes to [`handle`], which decides with pure
//! policy over [`atoll_vcpu`] and the machine access the target gives it through [`HostHw`]:
//!
//! * `cpuid`: the real CPUID with what the host does not own hidden ([`host_cpuid`]).
//! * `msr`: every MSR access is decided by a table ([`msr::HOST_MSRS`], documented entry by
//!   entry); anything not in it is #GP, counted and logged once per index.
//! * `io`: the intercepted ports ([`intercepted_ports`]): COM1 (atoll's 16550 model, its lines
//!   printed as `[host] ...`) and the ports of [`ResetDetector`](crate::run::host_reset).
//! * `offline`: whether a host vCPU sits in Linux's offline loop ([`parked_in_play_dead`]),
//!   before atoll lends its core to an enclave.
//! * `mmio`: nested-page faults: the xAPIC page (the ICR through
//!   [`host_ipi`](crate::run::host_ipi)'s filter, every other register to the core's own APIC),
//!   and accesses to memory the host does not own, which never reach it: reads give all ones,
//!   writes are dropped, both counted, and the host runs on.
//!
//! Nothing here allocates on an exit (the counters are atomics, the logged-MSR table is fixed)
//! or recurses on guest data; guest-controlled values become an injected exception, never a
//! panic. [`HostAction::Fail`] is only for atoll-internal inconsistencies (an exit the backend
//! was not meant to produce).

use crate::run::exits::{Console, HostCpu};
use crate::run::host_ipi::{CoreSet, HostCores, Icr};
use crate::run::host_reset::{HostAccess, HostEvent, HostPlatform, ResetDetector};
use alloc::string::String;
use alloc::vec::Vec;
use atoll_devices::uart::Uart16550;
use atoll_vcpu::{vector, Exit, Gpr, GuestMemory, Vcpu};
use boot::{HostPhysAddr, PhysRange};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

pub use crate::run::host_reset::ResetSource;

mod apic;
pub mod control;
mod cpuid;
pub mod hidden;
mod io;
pub mod irq;
mod mmio;
pub mod msr;
mod offline;
#[cfg(test)]
mod tests;

pub use cpuid::host_cpuid;
pub use io::{intercepted_ports, COM1};
pub use offline::{confirm_parked, parked_in_play_dead, Parked};

/// The name the host's console lines carry (`[host] ...`).
pub const CONSOLE_NAME: &str = "host";

/// Rate limit of the host's repeated log lines: the first [`LOG_FIRST`] events of a kind are
/// logged, then only the 2^k-th.
pub const LOG_FIRST: u64 = 8;

/// Whether the `n`-th event (counted from 1) of a kind is logged.
pub fn rate_limited(n: u64) -> bool {
    n <= LOG_FIRST || n.is_power_of_two()
}

/// What the host exit handler needs from the machine; the target implements it with real
/// instructions, tests with a fake.
pub trait HostHw {
    /// The real CPUID.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// RDMSR on this core; `None`: the CPU raised #GP.
    fn rdmsr(&self, msr: u32) -> Option<u64>;
    /// WRMSR on this core; `false`: the CPU raised #GP.
    fn wrmsr(&self, msr: u32, value: u64) -> bool;
    /// IN of `size` bytes.
    fn port_in(&self, port: u16, size: u8) -> u32;
    /// OUT of `size` bytes.
    fn port_out(&self, port: u16, size: u8, value: u32);
    /// This core's physical xAPIC register (`offset` in the 4 KiB page).
    fn apic_read(&self, offset: u32) -> u32;
    /// Writes this core's physical xAPIC register.
    fn apic_write(&self, offset: u32, value: u32);
    /// Sends an IPI the filter allowed (always a physical destination, no shorthand, in the
    /// format of the ICR the host wrote).
    fn send_ipi(&self, icr: Icr);
    /// Microseconds since some fixed point.
    fn now_us(&self) -> u64;
    /// Loads XCR0 (already validated) on this core: XCR0 is not part of the VMCS/VMCB state,
    /// so the host's value lives in the core while the host runs.
    fn xsetbv(&self, value: u64);
    /// WBINVD on this core. The host owns devices that DMA and memory typed other than
    /// write-back (graphics apertures, firmware tables), so its flushes must happen.
    fn wbinvd(&self);
    /// A 32-bit access to the physical I/O APIC whose page is at `base`, at `offset`
    /// (IOREGSEL, IOWIN, EOI): a read's value, or 0 after a write. The caller holds the host's
    /// I/O APIC lock, so select and window accesses are not interleaved.
    fn ioapic_mmio(&self, base: u64, offset: u32, write: Option<u32>) -> u32;
    /// A naturally aligned access of 1, 2, 4 or 8 bytes at `address` in device memory atoll
    /// trapped for the host (an ECAM page, an MSI-X table's page): a read's value, or 0 after
    /// a write.
    fn device_mmio(&self, address: u64, size: u8, write: Option<u64>) -> u64;
    /// Kicks the core with physical APIC id `apic_id` (atoll's kick vector): an enclave's core
    /// whose channel the host rang.
    fn kick_core(&self, apic_id: u32);
    /// Sends a fixed interrupt with `vector` to the core with physical APIC id `apic_id` (a
    /// channel's interrupt, checked against the host's cores when the host programmed it).
    fn interrupt_core(&self, apic_id: u32, vector: u8);
}

/// What the host exit handler asks the caller to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// Enter the host again.
    Resume,
    /// An INIT or STARTUP for host vCPU `index`, already recorded in its mailbox
    /// ([`HostShared::take_init`], [`HostShared::take_sipi`]): the target side signals that
    /// core (NMI), then resumes this one.
    Signal { index: usize },
    /// The same for several host vCPUs at once (an INIT or STARTUP with a shorthand or a
    /// logical destination naming more than one).
    SignalMany { to: CoreSet },
    /// The host asked for a reset (or triple-faulted): the caller stops all host cores.
    Reset(ResetSource),
    /// The host asked for S5: the caller stops all host cores.
    PowerOff,
    /// An atoll-internal inconsistency (an exit the backend should never have produced for the
    /// host); the text says which.
    Fail(String),
}

/// The host's counters: allocation-free, readable from any core.
#[derive(Debug, Default)]
pub struct HostCounters {
    /// Loads from memory the host does not own (atoll's, the pool), answered with all ones.
    pub refused_reads: AtomicU64,
    /// Stores there, dropped.
    pub refused_writes: AtomicU64,
    /// Loads from guest-physical addresses the second-stage tables do not map at all (neither
    /// the host's nor refused): all ones, as a master abort gives.
    pub unmapped_reads: AtomicU64,
    /// Stores there, dropped.
    pub unmapped_writes: AtomicU64,
    /// IPI targets the filter dropped (outside the host, or an IPI refused as a whole).
    pub ipis_dropped: AtomicU64,
    /// IPIs sent for the host.
    pub ipis_sent: AtomicU64,
    /// RDMSR/WRMSR refused by policy (#GP).
    pub msr_denied: AtomicU64,
    /// Exits on intercepted ports (COM1, reset and sleep registers).
    pub io_events: AtomicU64,
    /// Sleep requests (SLP_EN with a sleep type other than S5) not passed to the hardware.
    pub sleeps_refused: AtomicU64,
    /// Faulting accesses atoll could not emulate (an instruction it does not decode, string
    /// I/O on an intercepted port, a fetch from refused memory): #GP or #UD injected.
    pub undecodable: AtomicU64,
    /// NMI exits (atoll's signals to host cores).
    pub nmis: AtomicU64,
}

/// Adds one to `counter`; returns the new count.
fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
}

/// One host vCPU's emulated INIT and STARTUP, written by the sender's core.
#[derive(Debug, Default)]
pub struct HostMailbox {
    init: AtomicBool,
    /// 0: none; otherwise 0x100 | the STARTUP vector.
    sipi: AtomicU32,
}

/// How many MSR indices the log-once table remembers; later denied indices are logged
/// rate-limited by the total count instead.
const MSR_LOG_SLOTS: usize = 64;

/// One host partition's state, shared by its vCPUs.
pub struct HostShared {
    cores: spin::Mutex<HostCores>,
    uart: spin::Mutex<Uart16550>,
    reset: spin::Mutex<ResetDetector>,
    /// Sorted, disjoint, non-empty.
    excluded: Vec<PhysRange>,
    apic_page: HostPhysAddr,
    x2apic: bool,
    /// The intercepted registers other than COM1: (first port, width).
    registers: [Option<(u16, u8)>; io::MAX_REGISTERS],
    mailboxes: Vec<HostMailbox>,
    /// MSR indices already logged as denied: `1 << 32 | index`, 0 for a free slot.
    msr_logged: [AtomicU64; MSR_LOG_SLOTS],
    /// The counters.
    pub counters: HostCounters,
    /// IA32_MTRR_DEF_TYPE as atoll loaded it on every core at boot (0: unknown).
    boot_mtrr_def_type: AtomicU64,
    /// The control device ([`control`]), once atoll gave the host one.
    control: Option<control::ControlPort>,
    /// Set by an exit that needs the manager now (a doorbell, a BAR moved).
    manager_wanted: core::sync::atomic::AtomicU8,
    /// Interrupt remapping of the host's sources ([`irq`]), once atoll turned it on.
    irq: spin::Once<irq::HostIrq>,
    /// Called after the host's exits (throttled by its owner): atoll's IOMMU fault poll, so
    /// faults are read while the host keeps the manager's core busy.
    exit_hook: spin::Once<fn()>,
    /// Functions passed through to enclaves, hidden from the host ([`hidden`]).
    pub hidden: hidden::Hidden,
}

impl HostShared {
    /// The host partition over `cores` (index order = host vCPU index), on a machine whose
    /// firmware describes `platform`; the host never reaches `excluded` (atoll's memory and the
    /// enclave pool, in any order, overlaps allowed); its xAPIC page is at `apic_page`. With
    /// `x2apic` atoll offers x2APIC mode to the host (CPUID bit, IA32_APIC_BASE.EXTD, the x2APIC
    /// MSRs); without it the cores stay in xAPIC mode and x2APIC is hidden.
    pub fn new(
        cores: HostCores,
        platform: HostPlatform,
        excluded: &[PhysRange],
        apic_page: HostPhysAddr,
        x2apic: bool,
    ) -> Self {
        let mut sorted: Vec<PhysRange> =
            excluded.iter().copied().filter(|r| !r.is_empty()).collect();
        sorted.sort_unstable_by_key(|r| r.start.as_u64());
        let mut merged: Vec<PhysRange> = Vec::with_capacity(sorted.len());
        for r in sorted {
            match merged.last_mut() {
                Some(last) if r.start.as_u64() <= last.end.as_u64() => {
                    if r.end.as_u64() > last.end.as_u64() {
                        last.end = r.end;
                    }
                }
                _ => merged.push(r),
            }
        }
        let mailboxes = (0..cores.len()).map(|_| HostMailbox::default()).collect();
        Self {
            registers: io::registers(&platform),
            cores: spin::Mutex::new(cores),
            uart: spin::Mutex::new(Uart16550::new()),
            reset: spin::Mutex::new(ResetDetector::new(platform)),
            excluded: merged,
            apic_page: HostPhysAddr::new(apic_page.as_u64() & !0xfff),
            x2apic,
            mailboxes,
            msr_logged: core::array::from_fn(|_| AtomicU64::new(0)),
            counters: HostCounters::default(),
            boot_mtrr_def_type: AtomicU64::new(0),
            control: None,
            manager_wanted: core::sync::atomic::AtomicU8::new(0),
            irq: spin::Once::new(),
            exit_hook: spin::Once::new(),
            hidden: hidden::Hidden::default(),
        }
    }

    /// Forgets the state of the host before a restart, as a reset would: its COM1 model back
    /// to power-on, no INIT or STARTUP pending, its cores' logical APIC addressing back to the
    /// reset values. The counters go on (they are the partition's, across restarts).
    pub fn reset_for_restart(&self) {
        *self.uart.lock() = Uart16550::new();
        for m in &self.mailboxes {
            m.init.store(false, Ordering::Release);
            m.sipi.store(0, Ordering::Release);
        }
        self.cores.lock().reset_logical();
    }

    /// Records IA32_MTRR_DEF_TYPE as atoll loaded it on every core at boot: the host may
    /// write it back after disabling the MTRRs.
    pub fn set_boot_mtrr_def_type(&self, value: u64) {
        self.boot_mtrr_def_type.store(value, Ordering::Relaxed);
    }

    fn boot_mtrr_def_type(&self) -> Option<u64> {
        Some(self.boot_mtrr_def_type.load(Ordering::Relaxed)).filter(|&v| v != 0)
    }

    /// Bytes for the host's COM1 receiver; takes only as many as its FIFO has room for and
    /// returns how many (the caller keeps the rest). Check [`Self::uart_irq_pending`] after.
    pub fn push_input(&self, bytes: &[u8]) -> usize {
        let mut u = self.uart.lock();
        let room = u.room();
        u.receive(&bytes[..bytes.len().min(room)])
    }

    /// The level of the COM1 model's interrupt line: the target raises the physical IRQ 4 for
    /// the host while it is high.
    pub fn uart_irq_pending(&self) -> bool {
        self.uart.lock().irq()
    }

    /// Prints the host's pending COM1 output (an unterminated line), e.g. when it resets.
    pub fn flush_console(&self, console: &mut impl Console) {
        if let Some(line) = self.uart.lock().flush() {
            console.line(CONSOLE_NAME, line);
        }
    }

    /// Takes host vCPU `index`'s pending emulated INIT. Take INIT before STARTUP: a sender's
    /// INIT and STARTUP may both be pending when the target looks.
    pub fn take_init(&self, index: usize) -> bool {
        self.mailboxes
            .get(index)
            .is_some_and(|m| m.init.swap(false, Ordering::AcqRel))
    }

    /// Takes host vCPU `index`'s pending STARTUP vector (start at `vector << 12`).
    pub fn take_sipi(&self, index: usize) -> Option<u8> {
        let v = self.mailboxes.get(index)?.sipi.swap(0, Ordering::AcqRel);
        (v != 0).then_some(v as u8)
    }

    /// Whether host vCPU `index` has an INIT or STARTUP waiting.
    pub fn has_signal(&self, index: usize) -> bool {
        self.mailboxes
            .get(index)
            .is_some_and(|m| m.init.load(Ordering::Acquire) || m.sipi.load(Ordering::Acquire) != 0)
    }

    /// Whether an INIT waits for host vCPU `index` (left for [`Self::take_init`]).
    pub fn init_pending(&self, index: usize) -> bool {
        self.mailboxes
            .get(index)
            .is_some_and(|m| m.init.load(Ordering::Acquire))
    }

    fn post_init(&self, index: usize) {
        if let Some(m) = self.mailboxes.get(index) {
            m.init.store(true, Ordering::Release);
        }
    }

    fn post_sipi(&self, index: usize, vector: u8) {
        if let Some(m) = self.mailboxes.get(index) {
            m.sipi.store(0x100 | u32::from(vector), Ordering::Release);
        }
    }

    /// The ranges the host never reaches, sorted and merged.
    pub fn excluded(&self) -> &[PhysRange] {
        &self.excluded
    }

    /// Whether `addr` lies in memory the host never reaches.
    pub fn is_excluded(&self, addr: u64) -> bool {
        let i = self.excluded.partition_point(|r| r.end.as_u64() <= addr);
        self.excluded
            .get(i)
            .is_some_and(|r| r.contains(HostPhysAddr::new(addr)))
    }

    /// The xAPIC page (4 KiB aligned).
    pub fn apic_page(&self) -> HostPhysAddr {
        self.apic_page
    }

    /// Whether the host may use x2APIC mode.
    pub fn x2apic_offered(&self) -> bool {
        self.x2apic
    }

    /// Sets the hook run after the host's exits (once).
    pub fn set_exit_hook(&self, hook: fn()) {
        self.exit_hook.call_once(|| hook);
    }

    /// The hook run after the host's exits, if any.
    pub fn exit_hook(&self) -> Option<fn()> {
        self.exit_hook.get().copied()
    }

    /// An exit needs the manager now (the control device's doorbell, a BAR moved).
    pub fn want_manager(&self) {
        let _ = self
            .manager_wanted
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether an exit asked for the manager since the last call (the manager's core).
    pub fn take_manager_wanted(&self) -> bool {
        self.manager_wanted.swap(0, Ordering::AcqRel) != 0
    }

    /// Whether the manager is wanted and nobody signalled it yet: true once per request, for
    /// the core that then signals it.
    pub fn claim_manager_signal(&self) -> bool {
        self.manager_wanted
            .compare_exchange(1, 2, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Marks host core `apic_id` lent to an enclave or back (no IPI of the host reaches a lent
    /// core); false if it is not a host core.
    pub fn set_lent(&self, apic_id: u32, lent: bool) -> bool {
        let known = self.cores.lock().set_lent(apic_id, lent);
        // And no interrupt of a host device either (the IRTEs naming it are retargeted).
        if known {
            if let Some(irq) = self.irq() {
                irq.set_lent(apic_id, lent);
            }
            // And no channel interrupt: their targets are checked again without it.
            self.recheck_channel_targets();
        }
        known
    }

    /// Runs `f` on the host's core table (APIC ids and xAPIC logical addressing).
    pub fn with_cores<R>(&self, f: impl FnOnce(&HostCores) -> R) -> R {
        f(&self.cores.lock())
    }

    /// Whether a denied MSR `index` is logged now: the first denial of each index while the
    /// table has room; rate-limited by the total once it is full.
    fn first_denial(&self, index: u32, total: u64) -> bool {
        let key = 1u64 << 32 | u64::from(index);
        for slot in &self.msr_logged {
            match slot.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(k) if k == key => return false,
                Err(_) => {}
            }
        }
        rate_limited(total)
    }

    fn classify(&self, access: HostAccess) -> Option<HostEvent> {
        self.reset.lock().classify(access)
    }
}

/// One host vCPU's own state (owned by the core that runs it).
#[derive(Clone, Debug)]
pub struct HostVcpu {
    /// Its index in the host's cores ([`HostCores`]).
    pub index: usize,
    /// Its core's APIC id.
    pub apic_id: u32,
    /// The xAPIC ICR high (offset 0x310) as the host last wrote it.
    icr_high: u32,
    /// The xAPIC LDR (0xD0) and DFR (0xE0) as the host last wrote them (reset values: 0 and
    /// all ones, SDM Vol. 3A §11.4.7.1).
    ldr: u32,
    dfr: u32,
    /// Whether the core is in x2APIC mode (the host set IA32_APIC_BASE.EXTD, when offered).
    pub x2apic: bool,
    /// NMI exits taken on this vCPU.
    pub nmis: u64,
}

impl HostVcpu {
    /// Host vCPU `index` on the core with APIC id `apic_id`, its APIC as after reset.
    pub fn new(index: usize, apic_id: u32) -> Self {
        Self {
            index,
            apic_id,
            icr_high: 0,
            ldr: 0,
            dfr: u32::MAX,
            x2apic: false,
            nmis: 0,
        }
    }

    /// The ICR high shadow.
    pub fn icr_high(&self) -> u32 {
        self.icr_high
    }
}

/// The host's CPU for the shared validation helpers ([`crate::run::deny`]): CPUID as the host
/// sees it, XSETBV and the TSC through [`HostHw`].
struct HwCpu<'a, H: HostHw> {
    hw: &'a H,
    shared: &'a HostShared,
}

impl<H: HostHw> HostCpu for HwCpu<'_, H> {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        host_cpuid(self.shared, self.hw, leaf, subleaf)
    }
    fn xsetbv(&mut self, value: u64) {
        self.hw.xsetbv(value);
    }
    fn rdtsc(&self) -> u64 {
        self.hw.rdmsr(msr::IA32_TSC).unwrap_or(0)
    }
}

fn gp(vcpu: &mut impl Vcpu) -> HostAction {
    vcpu.inject_exception(vector::GP, Some(0));
    HostAction::Resume
}

fn ud(vcpu: &mut impl Vcpu) -> HostAction {
    vcpu.inject_exception(vector::UD, None);
    HostAction::Resume
}

fn skip(vcpu: &mut impl Vcpu) -> HostAction {
    vcpu.skip_instruction();
    HostAction::Resume
}

/// Handles one exit of a host vCPU.
///
/// * CPUID: [`host_cpuid`]. RDMSR/WRMSR: [`msr`]. IN/OUT: `io`. Nested-page faults: `mmio`.
/// * NMI: atoll's signal to this core; counted, the caller looks at the mailboxes and its
///   commands around this call.
/// * INIT (a physical INIT reached the core: the host's own INIT IPIs are emulated, never
///   sent) and triple fault: [`HostAction::Reset`].
/// * VMX/SVM/SMX instructions (CPUID hides them), the hypercall instruction (the host has no
///   hypercall ABI): #UD. MONITOR/MWAIT are not intercepted for the host; should the backend
///   intercept them anyway, #UD too (atoll cannot emulate a wait on the host's memory).
///   Note that CPUID still lists MONITOR: a backend intercepting it must hide it as well.
/// * XSETBV: validated as for enclaves ([`crate::run::exits::valid_xcr0`]), loaded with
///   [`HostHw::xsetbv`].
/// * WBINVD: executed ([`HostHw::wbinvd`]): the host's devices need it. INVD: executed as
///   WBINVD (writing back first is a legal outcome of INVD; discarding dirty lines of caches
///   other partitions share is not acceptable).
/// * RDPMC: #GP(0) — CPUID hides the performance counters from the host (they count atoll's
///   and, on shared caches and SMT siblings, other partitions' work).
/// * Control registers: validated as for enclaves; HLT (not intercepted for the host): skipped
///   (an early wake-up, which HLT allows).
/// * Invalid guest state and exits the backend does not translate: [`HostAction::Fail`].
pub fn handle(
    exit: &Exit,
    vcpu: &mut impl Vcpu,
    mem: &mut impl GuestMemory,
    me: &mut HostVcpu,
    shared: &HostShared,
    hw: &impl HostHw,
    console: &mut impl Console,
) -> HostAction {
    match *exit {
        Exit::Cpuid => cpuid::cpuid_exit(vcpu, shared, hw),
        Exit::MsrRead => msr::read(vcpu, me, shared, hw),
        Exit::MsrWrite => msr::write(vcpu, me, shared, hw),
        Exit::Io {
            port,
            size,
            write,
            string,
            rep: _,
        } => io::io_exit(vcpu, shared, hw, console, port, size, write, string),
        Exit::NestedPageFault {
            gpa,
            access,
            linear,
        } => mmio::nested_page_fault(vcpu, mem, me, shared, hw, console, gpa, access, linear),
        Exit::Nmi => {
            me.nmis += 1;
            bump(&shared.counters.nmis);
            HostAction::Resume
        }
        Exit::Init => {
            shared.flush_console(console);
            HostAction::Reset(ResetSource::InitSignal)
        }
        Exit::TripleFault => {
            shared.flush_console(console);
            match shared.classify(HostAccess::TripleFault) {
                Some(HostEvent::Reset { source }) => HostAction::Reset(source),
                Some(HostEvent::PowerOff) => HostAction::PowerOff,
                None => HostAction::Reset(ResetSource::TripleFault),
            }
        }
        Exit::VirtualizationInstruction | Exit::Hypercall | Exit::MonitorMwait => ud(vcpu),
        Exit::Xsetbv => xsetbv(vcpu, shared, hw),
        Exit::Wbinvd | Exit::Invd => {
            hw.wbinvd();
            skip(vcpu)
        }
        Exit::Rdpmc => gp(vcpu),
        Exit::Exception { vector, error_code } => {
            let _ = crate::run::deny::reflect_exception(vcpu, vector, error_code);
            HostAction::Resume
        }
        Exit::CrWrite { cr, gpr } => {
            let value = vcpu.gpr(gpr);
            cr_write(vcpu, shared, hw, cr, value)
        }
        Exit::CrRead { cr, gpr } => {
            let v = vcpu.cr(cr);
            vcpu.set_gpr(gpr, v);
            skip(vcpu)
        }
        Exit::Clts => {
            let cr0 = vcpu.cr(0) & !(1 << 3);
            cr_write(vcpu, shared, hw, 0, cr0)
        }
        Exit::Lmsw(src) => {
            // LMSW loads CR0 bits 3:0 but cannot clear PE (SDM Vol. 2A "LMSW").
            let cr0 = vcpu.cr(0);
            let value = (cr0 & !0xe) | u64::from(src & 0xf) | (cr0 & 1);
            cr_write(vcpu, shared, hw, 0, value)
        }
        Exit::Hlt => skip(vcpu),
        Exit::ExternalInterrupt { .. } | Exit::InterruptWindow | Exit::Sipi { .. } => {
            HostAction::Resume
        }
        Exit::InvalidGuestState => HostAction::Fail(alloc::format!(
            "the host's vCPU {} has an invalid guest state at RIP {:#x}",
            me.index,
            vcpu.rip()
        )),
        Exit::Unknown { code, name } => HostAction::Fail(alloc::format!(
            "unhandled host exit {name} ({code}) on vCPU {} at RIP {:#x}",
            me.index,
            vcpu.rip()
        )),
    }
}

/// XSETBV (SDM Vol. 2D "XSETBV"): #UD without CR4.OSXSAVE; #GP(0) outside CPL 0, for an XCR
/// other than 0 or a value the processor would refuse; otherwise loaded on the core.
fn xsetbv(vcpu: &mut impl Vcpu, shared: &HostShared, hw: &impl HostHw) -> HostAction {
    if vcpu.cr(4) & (1 << 18) == 0 {
        return ud(vcpu);
    }
    let index = vcpu.gpr(Gpr::Rcx) as u32;
    let value = (vcpu.gpr(Gpr::Rdx) << 32) | (vcpu.gpr(Gpr::Rax) & 0xffff_ffff);
    let [lo, _, _, hi] = host_cpuid(shared, hw, 0xd, 0);
    let supported = u64::from(lo) | (u64::from(hi) << 32);
    if vcpu.cpl() != 0 || index != 0 || !crate::run::exits::valid_xcr0(value, supported) {
        return gp(vcpu);
    }
    hw.xsetbv(value);
    skip(vcpu)
}

/// MOV to CR0/CR3/CR4/CR8, CLTS and LMSW, when the backend intercepts them for the host:
/// checked as for enclaves ([`crate::run::deny`]) against the host's CPUID, so CR4.VMXE and
/// other hidden features cannot be set.
fn cr_write(
    vcpu: &mut impl Vcpu,
    shared: &HostShared,
    hw: &impl HostHw,
    cr: u8,
    value: u64,
) -> HostAction {
    use crate::run::deny;
    let cpu = HwCpu { hw, shared };
    let ok = match cr {
        0 => deny::valid_cr0(
            value,
            vcpu.cr(4),
            vcpu.efer(),
            vcpu.efer() & (1 << 10) != 0 && vcpu.code_segment().long,
        ),
        4 => deny::valid_cr4(
            value,
            vcpu.cr(4),
            vcpu.efer(),
            vcpu.cr(3),
            deny::cr4_supported(&cpu),
        ),
        3 => true,
        8 => deny::tpr_from_cr8(value).is_some(),
        _ => false,
    };
    if !ok || vcpu.set_cr(cr, value).is_err() {
        return gp(vcpu);
    }
    skip(vcpu)
}
