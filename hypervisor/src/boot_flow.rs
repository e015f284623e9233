//! Entry points of the bare-metal image: the boot processor's `atoll_bsp_main`, every AP's
//! `atoll_ap_main`, the exception and panic handlers. [`enclaves`] manages the enclaves.

mod channels;
mod enclaves;
mod host;
mod iommu;
mod passthrough;

use alloc::string::ToString;
use alloc::vec::Vec;
use atoll::hw::enclave_run::CoreSlotVirt;
use atoll::hw::{self, apic::LocalApic, console, msr::HwMsrs, power, tsc};
use atoll::machine::cpu::{self, CoreCaps};
use atoll::machine::frames::{FrameAllocator, FRAME_SIZE};
use atoll::machine::options::Options;
use atoll::machine::platform::Platform;
use atoll::machine::smp::{self, CoreTable, StartupBus};
use atoll::summary::{CoreReport, Summary};
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
/// Each core's VMX or SVM state, by slot; touched only by the core that owns the slot.
static CORE_VIRT: [CoreSlotVirt; smp::MAX_CORES] = [const { CoreSlotVirt::new() }; smp::MAX_CORES];

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
    cpu::probe(&CpuId::new(), hw::msr::vmx_features, hw::msr::vm_cr)
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
    // The firmware's map as atoll got it (test fixtures for the host's E820 come from these
    // lines: tests/fixtures/e820/).
    for r in info.memory_map() {
        log::debug!(
            "firmware memory map: {:#x} {:#x} {:?}",
            r.range.start.as_u64(),
            r.range.end.as_u64(),
            r.kind
        );
    }
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
    let bsp_slot = slot_of(bsp.apic_id).unwrap_or(0);
    hw::core_tables::set_slot(bsp_slot);
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
    let interrupts_ok = interrupt_selftest(&apic, &enclaves::PER_CORE[bsp_slot]);
    log::info!(
        "host interrupt path self-test: {}",
        if interrupts_ok { "passed" } else { "FAILED" }
    );
    BSP_MTRRS.call_once(hw::msr::Mtrrs::read);
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
    // The root partition, when the machine is described by a `machine` module.
    let machine = host::description(&info, &mut problems);
    let iommu_config = machine
        .as_ref()
        .map(|d| d.iommu.clone())
        .unwrap_or_default();
    iommu::ALLOW_UNSAFE_DMA.store(
        iommu_config.allow_unsafe_dma,
        core::sync::atomic::Ordering::Relaxed,
    );
    let mut the_host = machine.as_ref().and_then(|d| {
        // atoll's memory for the host's layout: the image, the boot information and the
        // modules (the first MiB, excluded from atoll's frames, is the host's).
        match host::Host::prepare(&info, &platform, &bsp, d, &excluded[1..]) {
            Ok(h) => Some(h),
            Err(e) => {
                log::error!("root partition: {e}");
                problems.push(alloc::format!("host: {e}"));
                None
            }
        }
    });
    let canaries = if iommu_config.dma_canaries {
        let c = iommu::Canaries::new();
        if c.is_none() {
            problems.push("no frame for the DMA canary".into());
        }
        c
    } else {
        None
    };
    if let (Some(h), Some(c)) = (the_host.as_mut(), canaries.as_ref()) {
        h.extra_facts = c.cmdline_word();
    }
    // The IOMMU: before the host runs, so its devices are confined from its first instruction.
    if let Some(d) = &platform.dmar {
        let ecam = platform
            .ecam()
            .find(|e| e.segment == 0 && e.bus_start == 0)
            .map(|e| e.base.as_u64());
        match iommu::Vtd::bring_up(
            d,
            the_host.as_ref().map(|h| h.dma_mappings()),
            &iommu_config,
            ecam,
        ) {
            Ok(v) => {
                if let Some(ecam) = ecam {
                    passthrough::probe_at_boot(v.found(), ecam, v.last_bus());
                }
                *iommu::VTD.lock() = Some(v);
                if let Some(h) = the_host.as_mut() {
                    if let Err(e) = iommu::enable_interrupt_remapping(h) {
                        log::error!("iommu: {e}");
                        problems.push(alloc::format!("iommu: {e}"));
                    }
                }
            }
            Err(e) => {
                log::error!("iommu: {e}");
                problems.push(alloc::format!("iommu: {e}"));
            }
        }
    }
    let (enclaves, control) = enclaves::run_all(
        &info,
        &bsp,
        options.stop_after_ms,
        &mut problems,
        machine.map(|d| d.enclaves),
        the_host.as_mut(),
    );

    // The IOMMU's last faults, then its figures (each lock taken and released here: a guard
    // held in the summary's expression would be held to its end).
    iommu::poll();
    let mut iommu_report = iommu::VTD.lock().as_mut().map(|v| v.report());
    let dma_isolation = iommu_report.as_ref().is_some_and(|r| r.translation);
    if let (Some(r), Some(irq)) = (
        iommu_report.as_mut(),
        the_host.as_ref().and_then(|h| h.run.shared.irq()),
    ) {
        use core::sync::atomic::Ordering::Relaxed;
        r.host_irtes_written = irq.remapped.load(Relaxed);
        r.host_interrupts_refused = irq.refused.load(Relaxed);
    }
    if let Some(c) = &canaries {
        iommu_report.get_or_insert_with(Default::default).canaries = Some(c.report());
    }
    let host_report = the_host.as_ref().map(|h| {
        let mut r = h.report();
        if let Some(v) = iommu::VTD.lock().as_ref() {
            v.fill_host(&mut r);
        }
        r
    });
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
        enclaves,
        host: host_report,
        dma_isolation,
        allow_unsafe_dma: iommu_config.allow_unsafe_dma,
        iommu: iommu_report,
        host_interrupts_ok: interrupts_ok,
        control,
        cores: CORES
            .slots()
            .iter()
            .zip(&enclaves::PER_CORE)
            .map(|(s, block)| CoreReport {
                apic_id: s.apic_id(),
                bsp: s.apic_id() == bsp.apic_id,
                online: s.state() == smp::CoreState::Online,
                caps: s.caps().copied(),
                mailbox: block.counters.get(),
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

/// The bytes of a module.
///
/// # Safety
///
/// `range` must be a module GRUB loaded (identity-mapped, never handed out by the pool).
unsafe fn module_bytes(range: PhysRange) -> &'static [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts(range.start.as_u64() as *const u8, range.len() as usize) }
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
    let Some(index) = slot_of(caps.apic_id) else {
        hw::halt_forever()
    };
    // Before interrupts can arrive: the handler counts them in this core's own block.
    hw::core_tables::set_slot(index);
    // The boot processor's MTRRs, as firmware would have loaded them on every core: the
    // host's Linux finds them agreeing, and atoll's memory has one type everywhere.
    if let Some(m) = BSP_MTRRS.get().copied().flatten() {
        m.load();
    }
    // The APIC in the BSP's mode, software-enabled, so host IPIs (kicks) reach this core.
    let _ = LocalApic::init(HOST_X2APIC.load(Ordering::Relaxed), caps.x2apic);
    // Serve this core's mailbox: the manager starts, stops and reclaims enclaves through it.
    enclaves::serve_forever(index, caps.apic_id)
}

/// The host's wall clock at boot: Unix seconds and the TSC when they were read.
static WALL_CLOCK: Once<Option<(i64, u64)>> = Once::new();

/// APIC ids of the cores that checked in, as descriptions are checked against them.
fn online_cores() -> Vec<u32> {
    CORES
        .slots()
        .iter()
        .filter(|s| s.state() == smp::CoreState::Online)
        .map(|s| s.apic_id())
        .collect()
}

/// The boot processor's MTRRs, read before the APs start (they load them).
pub(crate) static BSP_MTRRS: Once<Option<hw::msr::Mtrrs>> = Once::new();

/// Whether the BSP runs its APIC in x2APIC mode (the APs follow).
static HOST_X2APIC: AtomicBool = AtomicBool::new(false);

/// The vector of the boot-time self-test interrupt.
const SELFTEST_VECTOR: u8 = 0x40;

/// The index of `apic_id` in the core table.
fn slot_of(apic_id: u32) -> Option<usize> {
    CORES.slots().iter().position(|s| s.apic_id() == apic_id)
}

/// Proves the host interrupt path (IDT stub → `atoll_interrupt` → EOI → back) with a self-IPI
/// taken in a short interrupt window; true when it arrived, was counted in this core's block
/// (`own`) and returned.
fn interrupt_selftest(apic: &LocalApic, own: &atoll::machine::percpu::PerCore) -> bool {
    let count = &own.counters.host_interrupts;
    let before = count.load(Ordering::Relaxed);
    apic.send_self(SELFTEST_VECTOR);
    for _ in 0..1_000_000 {
        // SAFETY: every vector has a gate that returns; interrupts are off again right after.
        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
        if count.load(Ordering::Relaxed) > before {
            return true;
        }
    }
    false
}

/// Called by the NMI and interrupt stubs in `boot::idt` with interrupts disabled. atoll's host
/// side takes no device interrupts yet: an NMI is counted, an interrupt counted and
/// acknowledged (spurious vector 0xff needs no EOI). This runs on exit paths (SVM takes a
/// pending host interrupt right after the #VMEXIT; a vCPU's HLT wakes through here), so it
/// writes only the core's own counter line, found through its GDT (`core_tables::this_slot`);
/// an event before the core knows its slot (boot, interrupts masked: an NMI at most) is not
/// counted.
#[no_mangle]
extern "C" fn atoll_interrupt(vector: u64) {
    let own = hw::core_tables::this_slot().and_then(|i| enclaves::PER_CORE.get(i));
    let count = |c: fn(&atoll::machine::percpu::Counters) -> &core::sync::atomic::AtomicU64| {
        if let Some(block) = own {
            block.counters.bump(c(&block.counters));
        }
    };
    match vector {
        2 => count(|c| &c.host_nmis),
        0xff => {}
        v if atoll::run::vplat::passthrough::is_device_vector(v as u8) => {
            // A passed-through function's interrupt for the vCPU on this core.
            hw::device_irq::note(v as u8);
            count(|c| &c.host_interrupts);
            hw::apic::eoi()
        }
        _ => {
            count(|c| &c.host_interrupts);
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
