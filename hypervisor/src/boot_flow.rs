//! Entry points of the bare-metal image: the boot processor's `atoll_bsp_main`, every AP's
//! `atoll_ap_main`, the exception and panic handlers.

use alloc::string::ToString;
use alloc::vec::Vec;
use atoll::hw::enclave_run::{self, CoreSlotVirt, RunSpec, SecondStage};
use atoll::hw::{self, apic::LocalApic, console, msr::HwMsrs, power, tsc};
use atoll::machine::cpu::{self, CoreCaps};
use atoll::machine::frames::{FrameAllocator, FRAME_SIZE};
use atoll::machine::options::Options;
use atoll::machine::platform::Platform;
use atoll::machine::smp::{self, CoreTable, StartupBus};
use atoll::partition::{Enclave, Identity};
use atoll::summary::{CoreReport, EnclaveReport, Summary};
use boot::idt::{exception_name, ExceptionFrame};
use boot::info::BootInfo;
use boot::trampoline::{self, TrampolineParams, SIPI_VECTOR, TRAMPOLINE_BASE};
use boot::{HostPhysAddr, PhysRange};
use core::sync::atomic::{AtomicBool, Ordering};
use multiboot2::{BootInformation, BootInformationHeader};
use raw_cpuid::CpuId;
use spin::{Mutex, Once};

/// Bytes of heap for atoll's own bookkeeping.
const HEAP_SIZE: usize = 4 << 20;
/// Frames per AP stack (64 KiB).
const AP_STACK_FRAMES: u64 = 16;

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

#[repr(C, align(4096))]
struct HeapSpace([u8; HEAP_SIZE]);
static mut HEAP_SPACE: HeapSpace = HeapSpace([0; HEAP_SIZE]);

static CORES: CoreTable = CoreTable::new();
static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::empty());
static MBI: Once<BootInformation<'static>> = Once::new();
static POWER: Once<Option<atoll::machine::platform::PmControl>> = Once::new();
static PANICKING: AtomicBool = AtomicBool::new(false);
/// The enclaves of this run, fixed before any core starts one.
static ENCLAVES: Once<Vec<RunSpec>> = Once::new();
/// Each enclave's report, written once by the core that ran it.
static OUTCOMES: Once<Vec<Once<EnclaveReport>>> = Once::new();
/// Each core's VMX or SVM state, by slot; touched only by the core that owns the slot.
static CORE_VIRT: [CoreSlotVirt; smp::MAX_CORES] = [const { CoreSlotVirt::new() }; smp::MAX_CORES];
/// The built enclaves (their second-stage tables and RAM stay allocated while they may run).
static BUILT_EPT: Mutex<Vec<Enclave<'static, Identity, ept::EptFormat>>> = Mutex::new(Vec::new());
/// Same, on SVM.
static BUILT_NPT: Mutex<Vec<Enclave<'static, Identity, ept::NptFormat>>> = Mutex::new(Vec::new());

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

fn image_range() -> PhysRange {
    // Only the addresses of the linker symbols are taken.
    PhysRange::new(
        HostPhysAddr::new(core::ptr::addr_of!(__image_start) as u64),
        HostPhysAddr::new(core::ptr::addr_of!(__image_end) as u64),
    )
}

fn probe_this_core() -> CoreCaps {
    cpu::probe(&CpuId::new(), &mut HwMsrs)
}

/// The boot processor's entry, called by `boot::entry` in long mode.
#[no_mangle]
extern "C" fn atoll_bsp_main(magic: u32, info_addr: u64) -> ! {
    console::init();
    console::init_logger(log::LevelFilter::Info);
    boot::idt::load();
    hw::enable_nxe();
    hw::mask_legacy_pic();
    let heap_space = core::ptr::addr_of_mut!(HEAP_SPACE).cast::<u8>();
    // SAFETY: the heap space is a static used for nothing else, handed over once, here.
    unsafe { HEAP.lock().init(heap_space, HEAP_SIZE) };
    // This core's GDT and TSS, with the double-fault stack, before anything may fault.
    hw::core_tables::install();
    log::info!(
        "atoll {} starting on the boot processor",
        env!("CARGO_PKG_VERSION")
    );

    let mbi = MBI.call_once(|| {
        // SAFETY: the loader passed the structure's address in EBX; it stays reserved for good.
        unsafe { BootInformation::load(info_addr as *const BootInformationHeader) }.unwrap_or_else(
            |e| panic!("cannot read the Multiboot2 boot information at {info_addr:#x}: {e:?}"),
        )
    });
    let info = BootInfo::parse(magic, mbi).unwrap_or_else(|e| panic!("{e}"));
    let (options, option_errors) = Options::parse(info.cmdline);
    log::set_max_level(options.log_level);
    for e in &option_errors {
        log::error!("{e}");
    }
    log::info!("command line: '{}'", info.cmdline);

    // Memory: never hand out the real-mode area (trampoline, BIOS data), the image, the
    // modules or the boot information.
    let low = PhysRange::new(HostPhysAddr::new(0), HostPhysAddr::new(0x10_0000));
    let mut excluded: Vec<PhysRange> = alloc::vec![low, image_range(), info.info_range];
    excluded.extend(info.modules().iter().map(|m| m.range));
    let trampoline_page = PhysRange::from_len(TRAMPOLINE_BASE, FRAME_SIZE);
    for r in &excluded[1..] {
        assert!(
            !r.overlaps(&trampoline_page),
            "the loader placed {r} over the AP trampoline page {trampoline_page}"
        );
    }
    let ram_end = info
        .memory_map()
        .iter()
        .filter(|r| r.kind == boot::info::RegionKind::Usable)
        .map(|r| r.range.end.as_u64())
        .max()
        .unwrap_or(0);
    boot::entry::extend_identity_map(ram_end)
        .unwrap_or_else(|e| panic!("cannot map RAM up to {ram_end:#x}: {e:?}"));
    let mut allocator = FRAMES.lock();
    allocator
        .reset(info.memory_map(), &excluded)
        .unwrap_or_else(|e| panic!("frame allocator: {e}"));
    // The page under the boot stack becomes a guard: an overflow faults instead of writing
    // whatever lies below.
    // SAFETY: the guard page is reserved for exactly this in the boot stack's section, and the
    // table frame comes from the allocator, atoll's own from now on.
    unsafe {
        boot::entry::unmap_page(boot::entry::boot_stack_guard(), || {
            allocator
                .allocate(1, FRAME_SIZE)
                .ok()
                .map(|r| r.start.as_u64())
        })
    }
    .unwrap_or_else(|e| panic!("the boot stack's guard page: {e:?}"));
    let usable = info.usable_bytes();
    log::info!(
        "memory: {} MiB usable, {} MiB free for atoll in {} ranges; image {}",
        usable >> 20,
        allocator.free_bytes() >> 20,
        allocator.ranges().len(),
        image_range()
    );
    // Prove the whole of RAM is reachable: the last usable frame must read back what is written.
    if let Some(last) = allocator.ranges().last() {
        let probe = (last.end.as_u64() - FRAME_SIZE) as *mut u64;
        // SAFETY: the frame is free RAM (in the allocator, not yet handed out) and identity-mapped.
        unsafe { core::ptr::write_volatile(probe, 0xa5a5_5a5a_0123_4567) };
        // SAFETY: as above; the same aligned word, just written.
        let ok = unsafe { core::ptr::read_volatile(probe) } == 0xa5a5_5a5a_0123_4567;
        assert!(ok, "RAM at {:#x} does not read back", probe as u64);
        log::info!(
            "RAM mapped up to {ram_end:#x}; top frame at {:#x} reads back",
            probe as u64
        );
    }
    drop(allocator);

    let rsdp = info.rsdp.unwrap_or_else(|| {
        panic!("the loader gave no ACPI RSDP: atoll needs ACPI to find the processors")
    });
    // SAFETY: the RSDP copy lives in the boot information, which is identity-mapped and kept.
    let mut platform =
        unsafe { Platform::discover(hw::IdentityMapped, rsdp) }.unwrap_or_else(|e| panic!("{e}"));
    POWER.call_once(|| platform.power);
    if options.dump_acpi {
        dump_acpi(rsdp);
    }
    log::info!(
        "ACPI {}: {} processors, {} I/O APICs, {} ECAM windows, DMAR {}",
        platform.acpi_revision,
        platform.cpus().len(),
        platform.ioapic_count,
        platform.ecam().count(),
        if platform.dmar_present {
            "present"
        } else {
            "absent"
        }
    );
    for &id in &options.fake_apic_ids {
        log::warn!(
            "boot option fake_apic_ids: pretending the MADT lists a processor with APIC id {id}"
        );
        platform.add_cpu(atoll::machine::platform::Cpu {
            apic_id: id,
            uid: u32::MAX,
            x2apic_entry: id > 254,
        });
    }

    let tsc_hz = tsc::calibrate();
    log::info!("TSC: {} MHz", tsc_hz / 1_000_000);
    let wall = hw::rtc::read_unix_seconds();
    WALL_CLOCK.call_once(|| wall.map(|s| (s, tsc::now())));
    match wall {
        Some(s) => log::info!("wall clock: {s} s since 1970 (host RTC)"),
        None => log::warn!("the host RTC did not answer; enclaves' clocks start at 1970"),
    }

    let bsp = probe_this_core();
    log_vmx_msrs(&bsp);
    let ids: Vec<u32> = platform.cpus().iter().map(|c| c.apic_id).collect();
    CORES.expect(&ids);
    if let Err(e) = CORES.check_in(bsp) {
        panic!(
            "the boot processor (APIC id {}) is not in the MADT: {e:?}",
            bsp.apic_id
        );
    }
    log::info!(
        "core apic_id={} (BSP) online: {}",
        bsp.apic_id,
        describe(&bsp)
    );

    let aps: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| id != bsp.apic_id)
        .collect();
    let apic = LocalApic::init(ids.iter().any(|&id| id > 254), bsp.x2apic);
    HOST_X2APIC.store(hw::apic::is_x2apic(), Ordering::Relaxed);
    let timer_hz = hw::apic::timer_calibrate(tsc_hz);
    log::info!("APIC timer: {} MHz", timer_hz / 1_000_000);
    let interrupts_ok = interrupt_selftest(&apic);
    log::info!(
        "host interrupt path self-test: {}",
        if interrupts_ok { "passed" } else { "FAILED" }
    );
    let report = if aps.is_empty() {
        smp::BringUpReport::default()
    } else {
        start_aps(&aps, &apic, options.ap_timeout_ms)
    };
    for id in &report.missing {
        log::error!(
            "core apic_id={id} did not come online within {} ms",
            options.ap_timeout_ms
        );
    }

    let mut problems: Vec<alloc::string::String> =
        option_errors.iter().map(|e| e.to_string()).collect();
    if !interrupts_ok {
        problems.push("a self-IPI never reached the host interrupt handler".into());
    }
    let (specs, mut early_reports) = setup_enclaves(&info, &bsp, &mut problems);
    let enclaves = run_enclaves(specs, bsp.apic_id);
    early_reports.extend(enclaves);

    let mut summary = Summary {
        version: env!("CARGO_PKG_VERSION"),
        memory_usable_bytes: usable,
        memory_free_bytes: FRAMES.lock().free_bytes(),
        dmar: platform.dmar_present,
        dmar_units: platform.dmar_units,
        ecam_windows: platform.ecam().count(),
        acpi_revision: platform.acpi_revision,
        tsc_hz,
        ap_bringup_us: report.elapsed_us,
        modules: info
            .modules()
            .iter()
            .map(|m| m.name().to_string())
            .collect(),
        problems,
        cpu_virt: if bsp.vmx {
            "vmx"
        } else if bsp.svm {
            "svm"
        } else {
            "none"
        },
        enclaves: early_reports,
        host_interrupts_ok: interrupts_ok,
        cores: CORES
            .slots()
            .iter()
            .map(|s| CoreReport {
                apic_id: s.apic_id(),
                bsp: s.apic_id() == bsp.apic_id,
                online: s.state() == smp::CoreState::Online,
                caps: s.caps().copied(),
            })
            .collect(),
        ..Default::default()
    };
    summary.finish();
    log::info!(
        "{} of {} cores online",
        summary.cores_online,
        summary.cores_total
    );
    finish(&summary.line(), summary.ok)
}

/// At `log=debug`, prints the raw VMX capability MSRs (test fixtures for `vmx::caps` come from
/// these lines).
fn log_vmx_msrs(caps: &CoreCaps) {
    use vmx::caps::MsrReader;
    use vmx::msr::{Msr, IA32_FEATURE_CONTROL};
    if !caps.vmx || !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let mut m = HwMsrs;
    log::debug!(
        "IA32_FEATURE_CONTROL (0x3a) = {:#018x}",
        m.read(IA32_FEATURE_CONTROL).unwrap_or(0)
    );
    // IA32_VMX_BASIC .. IA32_VMX_TRUE_ENTRY_CTLS (SDM Vol. 4 Table 2-2); VMFUNC (0x491) only
    // exists when the secondary control allows it, so it is left out.
    for index in 0x480..=0x490u32 {
        log::debug!(
            "VMX MSR {index:#x} = {:#018x}",
            m.read(Msr(index)).unwrap_or(0)
        );
    }
}

/// Reads the `enclaves` module, if any, and builds every enclave it describes. Returns what the
/// cores run and the reports of enclaves that could not be built.
fn setup_enclaves(
    info: &BootInfo,
    bsp: &CoreCaps,
    problems: &mut Vec<alloc::string::String>,
) -> (Vec<RunSpec>, Vec<EnclaveReport>) {
    let Some(module) = info.module("enclaves") else {
        return (Vec::new(), Vec::new());
    };
    // SAFETY: GRUB loaded the module there; it is identity-mapped and excluded from the pool.
    let bytes = unsafe { module_bytes(module.range) };
    let Ok(text) = core::str::from_utf8(bytes) else {
        problems.push("module 'enclaves': not UTF-8 text".into());
        return (Vec::new(), Vec::new());
    };
    let online: Vec<u32> = CORES
        .slots()
        .iter()
        .filter(|s| s.state() == smp::CoreState::Online)
        .map(|s| s.apic_id())
        .collect();
    let names: Vec<&str> = info.modules().iter().map(|m| m.name()).collect();
    let ctx = atoll::partition::config::Context {
        cores: Some(&online),
        modules: Some(&names),
    };
    let configs = match atoll::partition::config::parse(text, &ctx) {
        Ok(c) => c,
        Err(e) => {
            log::error!("enclave description rejected: {e}");
            problems.push(alloc::format!("module 'enclaves': {e}"));
            return (Vec::new(), Vec::new());
        }
    };
    let failed =
        |c: &atoll::partition::config::EnclaveConfig, why: alloc::string::String| EnclaveReport {
            name: c.name.clone(),
            cores: c.cores.clone(),
            memory_mib: c.memory_mib,
            state: "ended",
            end_reason: Some("failed"),
            detail: why,
            ..Default::default()
        };
    let mut specs = Vec::new();
    let mut reports = Vec::new();
    // 1 GiB second-stage pages where the CPU has them (EPT capability, or Page1GB for NPT).
    let npt_1g = core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 26) != 0;
    let max_page = |big: bool| {
        if big {
            ept::PageSize::Size1G
        } else {
            ept::PageSize::Size2M
        }
    };
    for (i, c) in configs.into_iter().enumerate() {
        let tag = (i + 1) as u16;
        if !(bsp.vmx && bsp.ept || bsp.svm && bsp.npt) {
            let why = "enclaves need VMX with EPT or SVM with nested paging".into();
            reports.push(failed(&c, why));
            continue;
        }
        // The description was checked against the module names, so the image exists.
        let Some(image) = info.module(&c.image) else {
            continue;
        };
        // SAFETY: as for the description module.
        let image = unsafe { module_bytes(image.range) };
        let initrd = c
            .initrd
            .as_deref()
            .and_then(|n| info.module(n))
            // SAFETY: as for the description module.
            .map(|m| unsafe { module_bytes(m.range) });
        let linux = c.entry == atoll::partition::config::EntryMode::Linux;
        // Linux reads the TSC frequency from CPUID 0x15/0x16 on Intel only; elsewhere it is
        // told with a kernel parameter (see atoll::run::vplat).
        let extra = if linux && bsp.intel {
            alloc::string::String::new()
        } else if linux {
            alloc::format!("tsc_early_khz={}", tsc::hz() / 1000)
        } else {
            alloc::string::String::new()
        };
        let built = if bsp.vmx {
            Enclave::<_, ept::EptFormat>::create(
                c.clone(),
                image,
                initrd,
                &extra,
                &FRAMES,
                Identity,
                max_page(bsp.ept_1g),
            )
            .map(|e| {
                let spec = (
                    e.ram,
                    e.boot,
                    SecondStage::Ept(e.ept.eptp(false)),
                    e.ept.table_pages(),
                );
                BUILT_EPT.lock().push(e);
                spec
            })
        } else {
            Enclave::<_, ept::NptFormat>::create(
                c.clone(),
                image,
                initrd,
                &extra,
                &FRAMES,
                Identity,
                max_page(npt_1g),
            )
            .map(|e| {
                let spec = (
                    e.ram,
                    e.boot,
                    SecondStage::Npt(e.ept.nested_cr3()),
                    e.ept.table_pages(),
                );
                BUILT_NPT.lock().push(e);
                spec
            })
        };
        match built {
            Ok((ram, boot, second_stage, tables)) => {
                log::info!(
                    "enclave '{}': {} MiB at {ram}, {tables} second-stage table pages, entry {:#x}",
                    c.name,
                    c.memory_mib,
                    boot.rip
                );
                let platform = linux.then(|| {
                    let shared = atoll::run::vplat::Shared::new(&c.name, &c.cores, tsc::hz());
                    if let Some(Some((secs, at))) = WALL_CLOCK.get() {
                        shared.set_wall_clock(*secs, *at);
                    }
                    alloc::sync::Arc::new(shared)
                });
                specs.push(RunSpec {
                    config: c,
                    ram,
                    boot,
                    second_stage,
                    tag,
                    platform,
                });
            }
            Err(err) => {
                log::error!("enclave '{}' cannot be built: {err}", c.name);
                reports.push(failed(&c, alloc::format!("cannot be built: {err}")));
            }
        }
    }
    (specs, reports)
}

/// The bytes of a module.
///
/// # Safety
///
/// `range` must be a module GRUB loaded (identity-mapped, never handed out by the pool).
unsafe fn module_bytes(range: PhysRange) -> &'static [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts(range.start.as_u64() as *const u8, range.len() as usize) }
}

/// Hands every enclave to its core, runs the BSP's own, and waits for all of them to end.
fn run_enclaves(specs: Vec<RunSpec>, bsp_apic: u32) -> Vec<EnclaveReport> {
    let specs = ENCLAVES.call_once(|| specs);
    let outcomes = OUTCOMES.call_once(|| specs.iter().map(|_| Once::new()).collect());
    for slot in CORES.slots() {
        let work = specs
            .iter()
            .position(|s| s.config.cores.contains(&slot.apic_id()));
        slot.assign(work);
    }
    if let Some(i) = specs
        .iter()
        .position(|s| s.config.cores.contains(&bsp_apic))
    {
        let slot = CORES
            .slots()
            .iter()
            .position(|s| s.apic_id() == bsp_apic)
            .unwrap_or(0);
        let index = specs[i]
            .config
            .cores
            .iter()
            .position(|&c| c == bsp_apic)
            .unwrap_or(0);
        if let Some(report) = enclave_run::run(&specs[i], index, &CORE_VIRT[slot]) {
            outcomes[i].call_once(|| report);
        }
    }
    // Each enclave's core reports when it ends; a guest that never ends is for the harness's
    // timeout to catch. Meanwhile this core passes atoll's serial input to the enclave that
    // takes it.
    let mut input = SerialInput {
        target: specs
            .iter()
            .find(|s| s.config.serial_input)
            .and_then(|s| s.platform.clone()),
        pending: alloc::collections::VecDeque::new(),
        host: atoll::hw::host::VcpuHost::new(bsp_apic),
    };
    let mut reports = Vec::new();
    for (spec, outcome) in specs.iter().zip(outcomes) {
        if !spec.config.cores.iter().all(|&c| CORES.is_online(c)) {
            reports.push(EnclaveReport {
                name: spec.config.name.clone(),
                cores: spec.config.cores.clone(),
                memory_mib: spec.config.memory_mib,
                state: "not_started",
                detail: "its core is not online".into(),
                ..Default::default()
            });
            continue;
        }
        while outcome.get().is_none() {
            input.forward();
            hw::idle_wait_us(10_000);
        }
        reports.extend(outcome.get().cloned());
    }
    reports
}

/// atoll's COM1 input on its way to an enclave's COM1 receiver (`serial_input = true`).
struct SerialInput {
    target: Option<alloc::sync::Arc<atoll::run::vplat::Shared>>,
    /// Bytes read from COM1 that the guest's receive FIFO had no room for yet.
    pending: alloc::collections::VecDeque<u8>,
    host: atoll::hw::host::VcpuHost,
}

impl SerialInput {
    /// Reads what COM1 holds and hands the guest as much as its FIFO takes; the rest waits
    /// here (bounded: past 4 KiB the oldest bytes are dropped, as a full line buffer would).
    fn forward(&mut self) {
        let Some(target) = &self.target else {
            return;
        };
        while let Some(b) = console::try_read_byte() {
            if self.pending.len() == 4096 {
                self.pending.pop_front();
            }
            self.pending.push_back(b);
        }
        if self.pending.is_empty() {
            return;
        }
        let (front, _) = self.pending.as_slices();
        let chunk: Vec<u8> = front.iter().copied().take(16).collect();
        let taken = target.uart_receive(&chunk, &mut self.host);
        self.pending.drain(..taken);
    }
}

/// Prints the summary and the halt line, then powers off.
fn finish(summary_line: &str, ok: bool) -> ! {
    console::line(summary_line);
    console::line(if ok {
        "ATOLL-HALT status=0"
    } else {
        "ATOLL-HALT status=1"
    });
    power::power_off(POWER.get().copied().flatten())
}

fn describe(c: &CoreCaps) -> alloc::string::String {
    alloc::format!(
        "vmx={} ept={} vpid={} unrestricted_guest={} svm={} npt={}",
        c.vmx,
        c.ept,
        c.vpid,
        c.unrestricted_guest,
        c.svm,
        c.npt
    )
}

struct HwBus<'a> {
    apic: &'a LocalApic,
}

impl StartupBus for HwBus<'_> {
    fn send_init(&mut self, apic_id: u32) {
        self.apic.send_init(apic_id);
    }
    fn send_startup(&mut self, apic_id: u32, vector: u8) {
        self.apic.send_startup(apic_id, vector);
    }
    fn delay_us(&mut self, us: u64) {
        tsc::delay_us(us);
    }
    fn now_us(&mut self) -> u64 {
        tsc::micros()
    }
    fn online(&self, apic_id: u32) -> bool {
        CORES.is_online(apic_id)
    }
}

fn start_aps(aps: &[u32], apic: &LocalApic, timeout_ms: u64) -> smp::BringUpReport {
    // Each AP's stack sits on an unmapped guard page: the trampoline gives ticket n the range
    // [base + n * size, base + (n + 1) * size) and starts at its top.
    let size = (AP_STACK_FRAMES + 1) * FRAME_SIZE;
    let mut frames = FRAMES.lock();
    let stacks = frames
        .allocate(aps.len() as u64 * (AP_STACK_FRAMES + 1), FRAME_SIZE)
        .unwrap_or_else(|e| panic!("AP stacks: {e}"));
    for n in 0..aps.len() as u64 {
        // SAFETY: the guard is the lowest page of a stack slot just allocated for this, which
        // nothing else uses; table frames come from the allocator.
        unsafe {
            boot::entry::unmap_page(stacks.start.as_u64() + n * size, || {
                frames
                    .allocate(1, FRAME_SIZE)
                    .ok()
                    .map(|r| r.start.as_u64())
            })
        }
        .unwrap_or_else(|e| panic!("AP stack guard pages: {e:?}"));
    }
    drop(frames);
    log::info!(
        "stacks: the BSP's {} KiB and each AP's {} KiB sit on an unmapped guard page; double \
         faults run on a {} KiB stack of their own",
        boot::entry::BSP_STACK_SIZE / 1024,
        AP_STACK_FRAMES * FRAME_SIZE / 1024,
        hw::core_tables::IST_STACK_SIZE / 1024
    );
    // SAFETY: the trampoline page is below 1 MiB, excluded from the allocator and checked not to
    // hold the boot information or a module; the boot page tables identity-map it.
    unsafe {
        trampoline::install(TrampolineParams {
            cr3: boot::entry::boot_cr3() as u32,
            ticket: 0,
            stack_base: stacks.start.as_u64(),
            stack_size: size,
            entry: atoll_ap_main as extern "C" fn(u64) -> ! as usize as u64,
        })
    };
    log::info!("starting {} application processors: {:?}", aps.len(), aps);
    let report = smp::bring_up(&mut HwBus { apic }, aps, SIPI_VECTOR, timeout_ms * 1000);
    log::info!("AP bring-up took {} us", report.elapsed_us);
    report
}

/// Every AP's entry, reached from the trampoline in long mode on its own stack.
extern "C" fn atoll_ap_main(_ticket: u64) -> ! {
    boot::entry::load_boot_gdt();
    hw::core_tables::install();
    boot::idt::load();
    hw::enable_nxe();
    let caps = probe_this_core();
    match CORES.check_in(caps) {
        Ok(()) => log::info!("core apic_id={} online: {}", caps.apic_id, describe(&caps)),
        Err(e) => {
            log::error!("core apic_id={} cannot check in: {e:?}", caps.apic_id);
            hw::halt_forever()
        }
    }
    // The APIC in the BSP's mode, software-enabled, so host IPIs (kicks) reach this core.
    let _ = LocalApic::init(HOST_X2APIC.load(Ordering::Relaxed), caps.x2apic);
    // Wait in this core's mailbox for the enclave it runs, if any.
    let Some(index) = CORES
        .slots()
        .iter()
        .position(|s| s.apic_id() == caps.apic_id)
    else {
        hw::halt_forever()
    };
    let slot = &CORES.slots()[index];
    let work = loop {
        if let Some(w) = slot.work() {
            break w;
        }
        hw::idle_wait_us(1000);
    };
    if let (Some(i), Some(specs), Some(outcomes)) = (work, ENCLAVES.get(), OUTCOMES.get()) {
        if let (Some(spec), Some(outcome)) = (specs.get(i), outcomes.get(i)) {
            let vcpu = spec
                .config
                .cores
                .iter()
                .position(|&c| c == caps.apic_id)
                .unwrap_or(0);
            if let Some(report) = enclave_run::run(spec, vcpu, &CORE_VIRT[index]) {
                outcome.call_once(|| report);
            }
        }
    }
    hw::halt_forever()
}

/// The host's wall clock at boot: Unix seconds and the TSC when they were read.
static WALL_CLOCK: Once<Option<(i64, u64)>> = Once::new();

/// Whether the BSP runs its APIC in x2APIC mode (the APs follow).
static HOST_X2APIC: AtomicBool = AtomicBool::new(false);

/// Host NMIs seen (outside guests), for the record.
static HOST_NMIS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Host interrupts taken through the IDT.
static HOST_INTERRUPTS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// The vector of the boot-time self-test interrupt.
const SELFTEST_VECTOR: u8 = 0x40;

/// Proves the host interrupt path (IDT stub → `atoll_interrupt` → EOI → back) with a self-IPI
/// taken in a short interrupt window; true when it arrived and returned.
fn interrupt_selftest(apic: &LocalApic) -> bool {
    let before = HOST_INTERRUPTS.load(Ordering::Relaxed);
    apic.send_self(SELFTEST_VECTOR);
    for _ in 0..1_000_000 {
        // SAFETY: every vector has a gate that returns; interrupts are off again right after.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
        if HOST_INTERRUPTS.load(Ordering::Relaxed) > before {
            return true;
        }
    }
    false
}

/// Called by the NMI and interrupt stubs in `boot::idt` with interrupts disabled. atoll's host
/// side takes no device interrupts yet: an NMI is counted, an interrupt acknowledged (spurious
/// vector 0xff needs no EOI).
#[no_mangle]
extern "C" fn atoll_interrupt(vector: u64) {
    match vector {
        2 => {
            HOST_NMIS.fetch_add(1, Ordering::Relaxed);
        }
        0xff => {}
        _ => {
            HOST_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
            hw::apic::eoi()
        }
    }
}

/// Called by the exception stubs in `boot::idt`.
#[no_mangle]
extern "C" fn atoll_exception(frame: &ExceptionFrame) -> ! {
    // A fault while this core handles a partition ends that partition only.
    hw::contain::recover(format_args!(
        "{} (vector {}) error code {:#x} at RIP {:#x} RSP {:#x}",
        exception_name(frame.vector),
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rsp
    ));
    panic!(
        "unexpected exception {} (vector {}) error code {:#x} at RIP {:#x} RSP {:#x}",
        exception_name(frame.vector),
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rsp
    )
}

/// Prints every ACPI table as `ATOLL-ACPI SIG HEX` (what `cargo xtask capture-acpi` saves).
fn dump_acpi(rsdp: HostPhysAddr) {
    // SAFETY: the RSDP and the tables are identity-mapped, as during discovery.
    let result = unsafe {
        atoll::machine::platform::for_each_table(hw::IdentityMapped, rsdp, |sig, bytes| {
            let mut line = alloc::string::String::with_capacity(16 + 2 * bytes.len());
            line.push_str("ATOLL-ACPI ");
            line.push_str(core::str::from_utf8(&sig).unwrap_or("????"));
            line.push(' ');
            for b in bytes {
                let _ = core::fmt::Write::write_fmt(&mut line, format_args!("{b:02x}"));
            }
            console::line(&line);
        })
    };
    if let Err(e) = result {
        log::error!("dump_acpi: {e}");
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // A panic while this core handles a partition ends that partition only.
    match info.location() {
        Some(at) => hw::contain::recover(format_args!("panic at {at}: {}", info.message())),
        None => hw::contain::recover(format_args!("panic: {}", info.message())),
    }
    if PANICKING.swap(true, Ordering::SeqCst) {
        hw::halt_forever();
    }
    console::print_unlocked(format_args!("\nATOLL-PANIC {}\n", info));
    console::print_unlocked(format_args!("ATOLL-HALT status=1\n"));
    power::power_off(POWER.get().copied().flatten())
}
