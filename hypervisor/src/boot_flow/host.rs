//! The root partition at boot: the machine description, the carve of the enclave pool, the
//! host's memory, ACPI tables, second-stage tables and kernel, and its restart.
//!
//! Order (all on the boot processor, after the application processors are up):
//!
//! 1. the `machine` module is parsed and checked against the cores and modules;
//! 2. the frame pool keeps only its top `pool.memory_mib` (plus [`ATOLL_RESERVE`] for atoll's
//!    own tables) and cedes the rest of the free RAM for good: that becomes the host's;
//! 3. the host's layout ([`atoll::partition::host`]), ACPI image
//!    ([`atoll_devices::host_acpi`]), second-stage tables (1 GiB pages where the CPU has them;
//!    the local APIC's page read-only, so the host's ICR writes exit) and exit state
//!    ([`atoll::run::host::HostShared`]);
//! 4. the ACPI image is written and the kernel loaded into the host's RAM by the same Linux
//!    loader the enclaves use (again at every restart, from the modules atoll keeps).

use super::{module_bytes, slot_of, CORE_VIRT, FRAMES};
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use atoll::hw::enclave_run::SecondStage;
use atoll::hw::host_ram::HostRam;
use atoll::hw::host_run::{HostRun, HostStop, HostVcpuRun, Pause};
use atoll::machine::cpu::CoreCaps;
use atoll::machine::platform::Platform;
use atoll::partition::host::{self as host_layout, HostLayout, HostLayoutInput};
use atoll::partition::linux::{self, LinuxImage};
use atoll::partition::loader::BootState;
use atoll::partition::machine::MachineDescription;
use atoll::partition::{Identity, PoolFrames};
use atoll::run::host::HostShared;
use atoll::run::host_reset::{AddressSpace, HostPlatform, Register, ResetRegister, SleepControl};
use atoll_abi::channel::MAX_CHANNELS;
use atoll_devices::host_acpi::{self, FirmwareAcpi};
use boot::info::BootInfo;
use boot::{GuestPhysAddr, HostPhysAddr, PhysRange};
use ept::{MemType, Perms};

/// Frames atoll keeps beside the pool for its own tables (enclaves' and the host's second-stage
/// tables, run-time structures): 32 MiB.
pub const ATOLL_RESERVE: u64 = 32 << 20;
/// RAM left to the host above the pool.
const HOST_ABOVE_POOL: u64 = 16 << 20;
/// The pool's granule.
const GRANULE: u64 = 2 << 20;
/// The local APIC's page.
const APIC_PAGE: u64 = 0xfee0_0000;
/// The partition id the host's cores are started with (outside the partition table's range).
pub const HOST_PARTITION: atoll::machine::percpu::PartitionId = u16::MAX;
/// How long a slice of the host's boot vCPU runs before the manager looks around.
const SLICE_US: u64 = 10_000;

/// The root partition, as the manager holds it.
pub struct Host {
    /// What its cores run (shared with the application processors serving it).
    pub run: Arc<HostRun>,
    /// Its boot vCPU, while the host runs.
    bsp: Option<HostVcpuRun>,
    /// Its second-stage tables.
    tables: HostTables,
    /// Per function of the control device (0: control, 1..: channels), where its registers
    /// and its mailbox or channel window are mapped (guest-physical base).
    bars: [[Option<GuestPhysAddr>; 2]; 1 + MAX_CHANNELS],
    /// The frames of each channel function's window while an enclave holds it.
    channel_windows: [Option<PhysRange>; MAX_CHANNELS],
    /// Every enclave's RAM while it is built (the manager says): the host's tables must never
    /// map a frame of it ([`Host::check_isolation`]).
    enclave_ram: Vec<PhysRange>,
    /// Mapping changes that broke that rule (each refused and undone).
    pub isolation_violations: u32,
    /// Pages hidden from the host for an enclave's function (`hide_pages`, `unmap_pages`)
    /// until `show_pages`: giving a BAR's old range back never maps them.
    hidden: alloc::collections::BTreeSet<u64>,
    layout: HostLayout,
    acpi: host_acpi::HostAcpi,
    kernel: &'static [u8],
    initrd: Option<&'static [u8]>,
    cmdline: String,
    pool: Vec<PhysRange>,
    /// Times the host was restarted.
    pub restarts: u32,
    /// How it ended, once it has (power-off, deadline, failure).
    pub end: Option<HostStop>,
    bsp_slot: usize,
    /// The I/O APICs (from the firmware's MADT), masked at a restart.
    ioapics: Vec<HostPhysAddr>,
    /// `tsc_early_khz=`, the TSC rate atoll measured at boot: off Intel Linux would otherwise
    /// calibrate against the PIT (unreliable under emulation); on Intel it would trust CPUID
    /// 0x15/0x16, which an emulator may fill with the modelled part's nominal frequency rather
    /// than the rate its TSC really ticks at (Bochs: 3.5 GHz named, 100 MHz ticked).
    tsc_word: String,
    /// More facts for its command line (the DMA canaries' addresses).
    pub extra_facts: String,
}

/// The vendor id of bus 0, device `dev`, function 0, read through configuration mechanism #1
/// (PCI Local Bus 3.0 §3.2.2.3.2) at boot, before the host runs.
fn pci_vendor(dev: u8) -> u16 {
    let address: u32 = 1 << 31 | u32::from(dev) << 11;
    // SAFETY: port I/O on the PCI configuration ports at boot; only the boot processor runs
    // atoll code that touches them, and reading a vendor id has no side effect.
    unsafe { x86_64::instructions::port::Port::<u32>::new(0xcf8).write(address) };
    // SAFETY: as above: the data port of the address just written.
    unsafe { x86_64::instructions::port::Port::<u16>::new(0xcfc).read() }
}

/// The host's second-stage tables, of either format.
enum HostTables {
    Ept(ept::Tables<ept::EptFormat, PoolFrames<'static, Identity>>),
    Npt(ept::Tables<ept::NptFormat, PoolFrames<'static, Identity>>),
}

impl HostTables {
    fn unmap(&mut self, gpa: GuestPhysAddr, len: u64) -> Result<(), ept::EptError> {
        match self {
            HostTables::Ept(t) => t.unmap(gpa, len),
            HostTables::Npt(t) => t.unmap(gpa, len),
        }
    }

    fn map(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        len: u64,
        perms: Perms,
        mem: MemType,
    ) -> Result<(), ept::EptError> {
        match self {
            HostTables::Ept(t) => t.map(gpa, hpa, len, perms, mem),
            HostTables::Npt(t) => t.map(gpa, hpa, len, perms, mem),
        }
    }

    fn translate(&mut self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        match self {
            HostTables::Ept(t) => t.translate(gpa).map(|t| t.hpa),
            HostTables::Npt(t) => t.translate(gpa).map(|t| t.hpa),
        }
    }
}

/// The published host, for the application processors' `Start(HOST_PARTITION)`.
pub static HOST_RUN: spin::Once<Arc<HostRun>> = spin::Once::new();

/// Reads the `machine` module, if there is one.
pub fn description(info: &BootInfo, problems: &mut Vec<String>) -> Option<MachineDescription> {
    let module = info.module("machine")?;
    // SAFETY: GRUB loaded the module there; it is identity-mapped and excluded from the pool.
    let bytes = unsafe { module_bytes(module.range) };
    let Ok(text) = core::str::from_utf8(bytes) else {
        problems.push("module 'machine': not UTF-8 text".into());
        return None;
    };
    let online = super::online_cores();
    let names: Vec<&str> = info.modules().iter().map(|m| m.name()).collect();
    let ctx = atoll::partition::config::Context {
        cores: Some(&online),
        modules: Some(&names),
    };
    match atoll::partition::machine::parse(text, &ctx) {
        Ok(d) => Some(d),
        Err(e) => {
            log::error!("machine description rejected: {e}");
            problems.push(alloc::format!("module 'machine': {e}"));
            None
        }
    }
}

/// The firmware's reset register and sleep control, from its FADT (ACPI 6.5 §5.2.9: flags at
/// 112, RESET_REG at 116, RESET_VALUE at 128) and what atoll learned of PM1 and `\_S5`.
fn host_platform(fw: &FirmwareAcpi<'_>, platform: &Platform) -> HostPlatform {
    let fadt = fw
        .tables
        .iter()
        .find(|t| t.signature() == Some(*b"FACP"))
        .map(|t| t.bytes);
    let reset = fadt.and_then(|f| {
        let gas = f.get(116..128)?;
        let value = *f.get(128)?;
        let space = match gas[0] {
            0 => AddressSpace::SystemMemory,
            1 => AddressSpace::SystemIo,
            2 => AddressSpace::PciConfig,
            _ => return None,
        };
        let address = u64::from_le_bytes(gas[4..12].try_into().ok()?);
        let width = match gas[3] {
            1 => 1,
            2 => 2,
            3 => 4,
            4 => 8,
            _ => 1,
        };
        Some(ResetRegister {
            register: Register {
                space,
                address,
                width,
            },
            value,
        })
    });
    let reset_supported = fadt
        .and_then(|f| f.get(112..116))
        .is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & (1 << 10) != 0);
    let sleep = platform.power.map(|pm| {
        let (a, b) = pm.s5.unwrap_or((0, 0));
        SleepControl::Pm1 {
            a: Register {
                space: AddressSpace::SystemIo,
                address: u64::from(pm.pm1a),
                width: 2,
            },
            b: pm.pm1b.map(|p| Register {
                space: AddressSpace::SystemIo,
                address: u64::from(p),
                width: 2,
            }),
            s5_slp_typ_a: a,
            s5_slp_typ_b: b,
        }
    });
    HostPlatform {
        reset_register: reset,
        reset_supported,
        sleep,
    }
}

/// The bytes at a physical address below 4 GiB (identity-mapped).
fn firmware_bytes(at: HostPhysAddr, len: usize) -> Option<&'static [u8]> {
    let end = at.as_u64().checked_add(len as u64)?;
    if at.as_u64() == 0 || end > atoll::hw::IDENTITY_MAPPED_END {
        return None;
    }
    // SAFETY: firmware ACPI tables, identity-mapped below 4 GiB, in memory the firmware
    // reserved (atoll never allocates or writes it); the length was bounded by the caller.
    Some(unsafe { core::slice::from_raw_parts(at.as_u64() as *const u8, len) })
}

impl Host {
    /// Carves the pool and builds the host; `Err` names what is wrong (the machine then runs
    /// without a host).
    pub fn prepare(
        info: &BootInfo,
        platform: &Platform,
        bsp: &CoreCaps,
        desc: &MachineDescription,
        excluded: &[PhysRange],
    ) -> Result<Self, String> {
        let cores = desc.host.cores.clone();
        if cores.first() != Some(&bsp.apic_id) {
            return Err(alloc::format!(
                "the host must boot on the boot processor (APIC id {}); its cores are {:?}",
                bsp.apic_id,
                cores
            ));
        }
        if !(bsp.vmx && bsp.ept && bsp.unrestricted_guest || bsp.svm && bsp.npt) {
            return Err(
                "the root partition needs VMX with EPT and unrestricted guest, or SVM with nested paging"
                    .into(),
            );
        }
        let kernel_module = info
            .module(&desc.host.kernel)
            .ok_or_else(|| alloc::format!("no module '{}'", desc.host.kernel))?;
        // SAFETY: a module GRUB loaded; identity-mapped, atoll's for good (kept for restarts).
        let kernel = unsafe { module_bytes(kernel_module.range) };
        let initrd = match &desc.host.initrd {
            Some(n) => {
                let m = info
                    .module(n)
                    .ok_or_else(|| alloc::format!("no module '{n}'"))?;
                // SAFETY: as for the kernel.
                Some(unsafe { module_bytes(m.range) })
            }
            None => None,
        };
        LinuxImage::parse(kernel).map_err(|e| alloc::format!("the host's kernel: {e}"))?;

        // The carve: the pool (and atoll's reserve) at the top, the rest ceded to the host.
        let (split, pool, atoll_frames) = {
            let mut frames = FRAMES.lock();
            let split = frames
                .keep_top(desc.pool_bytes + ATOLL_RESERVE + HOST_ABOVE_POOL, GRANULE)
                .map_err(|e| {
                    alloc::format!(
                        "the pool of {} MiB (+{} MiB for atoll) does not fit: {e}",
                        desc.pool_bytes >> 20,
                        ATOLL_RESERVE >> 20
                    )
                })?;
            // The host keeps RAM above the pool: Linux reads /dev/mem only below its highest
            // RAM, and the pool must be reachable there (to read as all ones).
            frames
                .cede_top(HOST_ABOVE_POOL)
                .map_err(|e| alloc::format!("cannot leave the host RAM above the pool: {e}"))?;
            let managed = frames.managed().to_vec();
            let clip = |r: &PhysRange, lo: HostPhysAddr, hi: HostPhysAddr| {
                PhysRange::new(r.start.max(lo), r.end.min(hi))
            };
            let top = HostPhysAddr::new(u64::MAX);
            let zero = HostPhysAddr::new(0);
            let pool: Vec<PhysRange> = managed
                .iter()
                .map(|r| clip(r, split, top))
                .filter(|r| !r.is_empty())
                .collect();
            let below: Vec<PhysRange> = managed
                .iter()
                .map(|r| clip(r, zero, split))
                .filter(|r| !r.is_empty())
                .collect();
            (split, pool, below)
        };
        log::info!(
            "enclave pool: {} MiB at {split} and above ({} MiB of it atoll's reserve)",
            pool.iter().map(PhysRange::len).sum::<u64>() >> 20,
            ATOLL_RESERVE >> 20
        );
        let mut atoll: Vec<PhysRange> = excluded.to_vec();
        atoll.extend(atoll_frames);

        let rsdp = info.rsdp.ok_or("no ACPI RSDP")?;
        let fw = FirmwareAcpi::read(rsdp, firmware_bytes)
            .map_err(|e| alloc::format!("the firmware's ACPI tables: {e}"))?;
        let acpi_cores = host_acpi::HostCores {
            host: &cores,
            pool: &[],
        };
        let probe = host_acpi::build(&fw, &acpi_cores, HostPhysAddr::new(0x1000))
            .map_err(|e| alloc::format!("the host's ACPI tables: {e}"))?;
        let phys_bits = core::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff;
        // The IOMMUs are atoll's (their DMAR is not in the host's tables): their registers are
        // not mapped for the host.
        let iommu_registers: Vec<PhysRange> = fw
            .tables
            .iter()
            .find(|t| t.signature() == Some(*b"DMAR"))
            .and_then(|t| iommu::Dmar::parse(t.bytes).ok())
            .map(|d| {
                d.units()
                    .map(|u| PhysRange::from_len(u.register_base, u.register_pages * 4096))
                    .collect()
            })
            .unwrap_or_default();
        let layout = host_layout::layout(&HostLayoutInput {
            firmware: info.memory_map(),
            atoll: &atoll,
            pool: &pool,
            apic_page: PhysRange::from_len(HostPhysAddr::new(APIC_PAGE), 4096),
            iommu: &iommu_registers,
            phys_top: 1u64 << phys_bits.clamp(36, 48),
            acpi_len: probe.bytes().len() as u64,
        })
        .map_err(|e| e.to_string())?;
        for e in &layout.e820 {
            log::info!(
                "host e820: [{:#012x}, {:#012x}) {:?}",
                e.addr,
                e.addr + e.size,
                e.kind
            );
        }
        let acpi = host_acpi::build(&fw, &acpi_cores, layout.acpi_base)
            .map_err(|e| alloc::format!("the host's ACPI tables: {e}"))?;

        // Second-stage tables: 1 GiB pages where the CPU has them (EPT capability, or Page1GB
        // for nested paging); the local APIC's page readable, its writes exit (the IPI filter).
        let apic = (GuestPhysAddr::new(APIC_PAGE), HostPhysAddr::new(APIC_PAGE));
        let max_page = |big: bool| {
            if big {
                ept::PageSize::Size1G
            } else {
                ept::PageSize::Size2M
            }
        };
        let second_stage = if bsp.vmx {
            let (mut tables, leaves) =
                atoll::partition::host_memory::build_tables::<ept::EptFormat, _>(
                    &layout.mappings,
                    PoolFrames::new(&FRAMES, Identity),
                    max_page(bsp.ept_1g),
                )
                .map_err(|e| alloc::format!("the host's second-stage tables: {e:?}"))?;
            tables
                .map(apic.0, apic.1, 4096, Perms::READ, MemType::Uncacheable)
                .map_err(|e| alloc::format!("the host's APIC page: {e:?}"))?;
            log::info!("host second-stage (EPT) leaves {leaves:?}");
            let s = SecondStage::Ept(tables.eptp(false));
            // The host's tables live as long as atoll: the host is never torn down (they
            // change only where the control device's BARs go).
            (s, HostTables::Ept(tables))
        } else {
            let npt_1g = core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 26) != 0;
            let (mut tables, leaves) =
                atoll::partition::host_memory::build_tables::<ept::NptFormat, _>(
                    &layout.mappings,
                    PoolFrames::new(&FRAMES, Identity),
                    max_page(npt_1g),
                )
                .map_err(|e| alloc::format!("the host's second-stage tables: {e:?}"))?;
            tables
                .map(apic.0, apic.1, 4096, Perms::READ, MemType::Uncacheable)
                .map_err(|e| alloc::format!("the host's APIC page: {e:?}"))?;
            log::info!("host second-stage (nested paging) leaves {leaves:?}");
            let s = SecondStage::Npt(tables.nested_cr3());
            (s, HostTables::Npt(tables))
        };
        let (second_stage, mut tables) = second_stage;
        log::info!("host memory: {} MiB usable", layout.usable_bytes >> 20);

        // SAFETY: the ranges are the host's RAM by the layout (atoll and the pool excluded),
        // identity-mapped up to the top of RAM (boot extended the map), and atoll keeps no
        // reference into them.
        let ram = Arc::new(unsafe { HostRam::new(&layout.ram) });
        let others = super::online_cores().len().saturating_sub(cores.len()) as u32;
        let mut ipi_cores = atoll::run::host_ipi::HostCores::new(others);
        for &c in &cores {
            ipi_cores
                .add(c)
                .map_err(|e| alloc::format!("host core {c}: {e:?}"))?;
        }
        let mut refused: Vec<PhysRange> = atoll.clone();
        refused.extend(pool.iter().copied());
        let mut shared = HostShared::new(
            ipi_cores,
            host_platform(&fw, platform),
            &refused,
            HostPhysAddr::new(APIC_PAGE),
            false,
        );
        // The control device: on bus 0 at the first free device number, reached through
        // mechanism #1 and (where the machine has one) the ECAM window, whose page for it the
        // host's tables leave unmapped.
        let ecam = platform
            .ecam()
            .find(|e| e.segment == 0 && e.bus_start == 0)
            .map(|e| (GuestPhysAddr::new(e.base.as_u64()), e.bus_start));
        let device = atoll_devices::pci::control::pick_device(pci_vendor);
        let channels = MAX_CHANNELS as u8;
        match device.and_then(|d| atoll::run::host::control::ControlPort::new(d, ecam, channels)) {
            Some(port) => {
                if let Some(page) = port.ecam_page() {
                    tables
                        .unmap(page, port.ecam_len())
                        .map_err(|e| alloc::format!("the control device's ECAM page: {e:?}"))?;
                }
                log::info!(
                    "control device {:04x}:{:04x} at 00:{:02x}.0 for the host",
                    atoll_abi::control::VENDOR_ID,
                    atoll_abi::control::DEVICE_ID,
                    port.device()
                );
                shared.set_control(port);
            }
            None => log::warn!("no free device number on bus 0: the host gets no control device"),
        }
        let shared = Arc::new(shared);
        if let Some(m) = super::BSP_MTRRS.get().copied().flatten() {
            shared.set_boot_mtrr_def_type(m.def_type());
        }
        let ports: Vec<_> = atoll::run::host::intercepted_ports(&shared).collect();
        let run = Arc::new(HostRun::new(
            cores,
            second_stage,
            (atoll::partition::table::MAX_PARTITIONS + 1) as u16,
            ram,
            shared,
            ports,
            atoll::run::host::msr::SWITCHED_BY_BACKEND.to_vec(),
            desc.host.serial_input,
        ));
        HOST_RUN.call_once(|| run.clone());
        Ok(Self {
            run,
            bsp: None,
            tables,
            bars: [[None, None]; 1 + MAX_CHANNELS],
            channel_windows: [None; MAX_CHANNELS],
            enclave_ram: Vec::new(),
            isolation_violations: 0,
            hidden: alloc::collections::BTreeSet::new(),
            layout,
            acpi,
            kernel,
            initrd,
            cmdline: desc.host.cmdline.clone(),
            pool,
            restarts: 0,
            end: None,
            bsp_slot: slot_of(bsp.apic_id).unwrap_or(0),
            ioapics: fw
                .tables
                .iter()
                .find(|t| t.signature() == Some(*b"APIC"))
                .map(|t| host_acpi::ioapic_addresses(t.bytes))
                .unwrap_or_default(),
            tsc_word: alloc::format!("tsc_early_khz={}", atoll::hw::tsc::hz() / 1000),
            extra_facts: String::new(),
        })
    }

    /// Writes the ACPI image and loads the kernel into the host's RAM; the boot vCPU's state.
    fn load(&self) -> Result<BootState, String> {
        let mut mem: &HostRam = &self.run.ram;
        use atoll_vcpu::GuestMemory;
        mem.write(
            GuestPhysAddr::new(self.layout.acpi_base.as_u64()),
            self.acpi.bytes(),
        )
        .ok_or("the host's ACPI image does not fit its RAM")?;
        let facts = host_layout::cmdline_facts(
            self.run.cores.len(),
            self.layout.usable_bytes,
            &self.pool,
            self.restarts,
        );
        let mut cmdline = self.cmdline.clone();
        for word in [facts, self.tsc_word.clone(), self.extra_facts.clone()] {
            if !word.is_empty() {
                if !cmdline.is_empty() {
                    cmdline.push(' ');
                }
                cmdline.push_str(&word);
            }
        }
        let image = LinuxImage::parse(self.kernel).map_err(|e| e.to_string())?;
        let ram_top = self
            .layout
            .e820
            .iter()
            .filter(|e| matches!(e.kind, linux::E820Kind::Ram | linux::E820Kind::Acpi))
            .map(|e| e.addr + e.size)
            .max()
            .unwrap_or(0)
            & !0xfff;
        linux::load(
            &image,
            self.initrd,
            &cmdline,
            ram_top,
            &self.layout.e820,
            Some(self.acpi.rsdp_address().as_u64()),
            &mut mem,
        )
        .map_err(|e| alloc::format!("the host's kernel: {e}"))
    }

    /// Loads the host and makes its boot vCPU on this (the boot) processor.
    pub fn start(&mut self) -> Result<(), String> {
        let boot = self.load()?;
        self.run.note_start();
        let core =
            atoll::hw::enclave_run::core_for(&CORE_VIRT[self.bsp_slot], self.run.second_stage)?;
        atoll::hw::give_core_to_host();
        atoll::hw::console::host_uart_irq(false, self.run.serial_input);
        self.bsp = Some(HostVcpuRun::new(&self.run, 0, core, &boot)?);
        log::info!(
            "host: Linux on cores {:?}, {} MiB (restart {})",
            self.run.cores,
            self.layout.usable_bytes >> 20,
            self.restarts
        );
        Ok(())
    }

    /// The summary's `host` object.
    pub fn report(&self) -> atoll::summary::HostReport {
        use core::sync::atomic::Ordering::Relaxed;
        let c = &self.run.shared.counters;
        let (end_reason, detail) = match &self.end {
            Some(e) => (Some(e.name()), e.to_string()),
            None => (None, "running".into()),
        };
        atoll::summary::HostReport {
            cores: self.run.cores.clone(),
            memory_mib: self.layout.usable_bytes >> 20,
            end_reason,
            detail,
            restarts: self.restarts,
            isolation_violations: self.isolation_violations,
            results: self.run.results.lock().to_map(),
            refused_reads: c.refused_reads.load(Relaxed),
            refused_writes: c.refused_writes.load(Relaxed),
            ipis_dropped: c.ipis_dropped.load(Relaxed),
            msr_denied: c.msr_denied.load(Relaxed),
            exits: self.run.exit_counts(),
            console_bytes_dropped: self.run.console_dropped.load(Relaxed),
            dma_faults: 0,
            interrupt_faults: 0,
            last_fault: None,
            measurements: {
                let mut m = serde_json::Map::new();
                let (s, i) = (
                    self.run.started_at.load(Relaxed),
                    self.run.init_at.load(Relaxed),
                );
                if s != 0 && i > s {
                    let cycles = i - s;
                    let us = (u128::from(cycles) * 1_000_000
                        / u128::from(atoll::hw::tsc::hz().max(1)))
                        as u64;
                    m.insert(
                        "boot_to_init".into(),
                        serde_json::json!({ "cycles": cycles, "us": us }),
                    );
                }
                self.run
                    .windows
                    .lock()
                    .measurements(atoll::hw::tsc::hz(), &mut m);
                m
            },
        }
    }

    /// Whether the host runs (or will run again).
    /// The I/O APICs' pages (from the firmware's MADT).
    pub fn ioapic_pages(&self) -> &[HostPhysAddr] {
        &self.ioapics
    }

    /// Leaves `page` unmapped in the host's second stage (a trapped device page) and flushes
    /// its cores' translations.
    pub fn trap_page(&mut self, page: HostPhysAddr) -> Result<(), String> {
        self.tables
            .unmap(GuestPhysAddr::new(page.as_u64()), 4096)
            .map_err(|e| alloc::format!("unmapping {page} from the host: {e:?}"))?;
        self.run.tables_changed();
        Ok(())
    }

    /// Takes `len` bytes at `at` (page-aligned; a function's BAR or ECAM page) from the host's
    /// second stage for an enclave, leaving alone the pages another trap already keeps
    /// unmapped, and waits (at most 100 ms) until no host vCPU can still reach them. Returns
    /// the pages it unmapped, which [`Host::show_pages`] maps back.
    pub fn hide_pages(&mut self, at: HostPhysAddr, len: u64) -> Result<Vec<u64>, String> {
        let mut taken = Vec::new();
        let mut page = at.as_u64() & !0xfff;
        let end = at.as_u64().saturating_add(len);
        while page < end {
            if !self.run.shared.is_trapped_page(page) {
                if let Err(e) = self.tables.unmap(GuestPhysAddr::new(page), 4096) {
                    let _ = self.show_pages(&taken);
                    return Err(alloc::format!("unmapping {page:#x} from the host: {e:?}"));
                }
                taken.push(page);
                self.hidden.insert(page);
            }
            page += 4096;
        }
        self.run.tables_changed();
        if !self.run.wait_tables_flushed(100_000) {
            let _ = self.show_pages(&taken);
            return Err("a host core did not flush its translations within 100 ms".into());
        }
        Ok(taken)
    }

    /// Unmaps exactly `pages` from the host's second stage (a trap the caller set up first
    /// serves them) and waits, as [`Host::hide_pages`] does.
    pub fn unmap_pages(&mut self, pages: &[u64]) -> Result<(), String> {
        self.hidden.extend(pages.iter().copied());
        for (i, &p) in pages.iter().enumerate() {
            if let Err(e) = self.tables.unmap(GuestPhysAddr::new(p), 4096) {
                let _ = self.show_pages(&pages[..i]);
                return Err(alloc::format!("unmapping {p:#x} from the host: {e:?}"));
            }
        }
        self.run.tables_changed();
        if !self.run.wait_tables_flushed(100_000) {
            let _ = self.show_pages(pages);
            return Err("a host core did not flush its translations within 100 ms".into());
        }
        Ok(())
    }

    /// Maps back pages [`Host::hide_pages`] took, as the host's layout maps them.
    pub fn show_pages(&mut self, pages: &[u64]) -> Result<(), String> {
        let mut result = Ok(());
        for p in pages {
            self.hidden.remove(p);
        }
        for &p in pages {
            if let Err(e) = self.restore(GuestPhysAddr::new(p), 4096) {
                result = Err(e);
            }
        }
        self.run.tables_changed();
        result
    }

    /// Whether `range` lies entirely in the host's MMIO (what its layout maps uncacheable):
    /// never RAM, atoll's or the pool's memory.
    pub fn is_mmio(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        self.layout.mappings.iter().any(|m| {
            m.mem == MemType::Uncacheable
                && m.gpa.as_u64() <= start
                && end <= m.gpa.as_u64() + m.len
        })
    }

    /// What the host's second stage maps (IOVA = guest-physical for its devices' DMA).
    pub fn dma_mappings(&self) -> &[atoll::partition::host_memory::HostMapping] {
        &self.layout.mappings
    }

    pub fn running(&self) -> bool {
        self.bsp.is_some()
    }

    /// Runs the host's boot vCPU for a slice; handles its stop (restart after a reset).
    /// Moves the control device's BAR `which` (0: the registers, 1: the mailbox) to where the
    /// host's configuration write put it (`None`: it no longer decodes). The registers' page is
    /// left unmapped, so every access exits to the model; the mailbox maps `mailbox`. The old
    /// place gets back what the layout gives it. A place that is not entirely the host's MMIO
    /// (RAM, atoll's or the pool's memory, the APIC page, the other BAR) is refused: the BAR
    /// then decodes nothing, and the error says why.
    pub fn place_control_bar(
        &mut self,
        function: u8,
        which: usize,
        to: Option<GuestPhysAddr>,
        mailbox: PhysRange,
    ) -> Result<(), String> {
        let which = which & 1;
        let f = usize::from(function);
        if f > MAX_CHANNELS || self.bars[f][which] == to {
            return Ok(());
        }
        // The mailbox, or the channel's window while an enclave holds it.
        let backing = match f {
            0 => Some(mailbox),
            _ => self.channel_windows[f - 1],
        };
        let result = self.move_bar(f, which, to, backing);
        // Whatever happened, the tables may have changed: every host vCPU flushes.
        self.run.tables_changed();
        result
    }

    /// The bytes of function `f`'s window `which`.
    fn bar_size(f: usize, which: usize) -> u64 {
        match (f, which) {
            (_, 0) => atoll_abi::control::BAR0_SIZE,
            (0, _) => atoll_abi::control::MAILBOX_SIZE,
            _ => atoll_abi::channel::WINDOW_SIZE,
        }
    }

    fn move_bar(
        &mut self,
        f: usize,
        which: usize,
        to: Option<GuestPhysAddr>,
        backing: Option<PhysRange>,
    ) -> Result<(), String> {
        let size = Self::bar_size(f, which);
        if let Some(old) = self.bars[f][which].take() {
            self.restore(old, size)?;
        }
        let Some(new) = to else {
            return Ok(());
        };
        let end = new.as_u64().checked_add(size).ok_or("the BAR wraps")?;
        let mmio = self.layout.mappings.iter().any(|m| {
            m.mem == MemType::Uncacheable
                && m.gpa.as_u64() <= new.as_u64()
                && end <= m.gpa.as_u64() + m.len
        });
        let apic = new.as_u64() <= APIC_PAGE && APIC_PAGE < end;
        let ecam = self
            .run
            .shared
            .control()
            .and_then(|c| Some((c.ecam_page()?.as_u64(), c.ecam_len())))
            .is_some_and(|(p, len)| p < end && new.as_u64() < p + len);
        let other = self.bars.iter().enumerate().any(|(g, pair)| {
            pair.iter().enumerate().any(|(w, b)| {
                (g, w) != (f, which)
                    && b.is_some_and(|o| {
                        o.as_u64() < end && new.as_u64() < o.as_u64() + Self::bar_size(g, w)
                    })
            })
        });
        if !mmio || apic || ecam || other || !new.is_aligned(4096) {
            return Err(alloc::format!(
                "the host placed BAR{} of the control device's function {f} at {new}: not \
                 entirely its own MMIO space; the BAR decodes nothing",
                [0, 2][which]
            ));
        }
        self.tables
            .unmap(new, size)
            .map_err(|e| alloc::format!("unmapping {new}: {e:?}"))?;
        if which == 1 {
            match backing {
                Some(frames) => {
                    let mapped = self.tables.map(
                        new,
                        frames.start,
                        size,
                        Perms::READ | Perms::WRITE,
                        MemType::WriteBack,
                    );
                    if let Err(e) = mapped {
                        // Back to what the layout maps there: the BAR decodes nothing.
                        self.restore(new, size)?;
                        return Err(alloc::format!(
                            "mapping function {f}'s window at {new}: {e:?}"
                        ));
                    }
                    if let Err(e) = self.check_isolation(new, size, frames) {
                        self.restore(new, size)?;
                        return Err(e);
                    }
                }
                // A channel no enclave holds: what the layout maps there (nothing answers).
                None => self.restore(new, size)?,
            }
        }
        self.bars[f][which] = Some(new);
        log::info!(
            "control device function {f}: BAR{} at {new} ({} KiB)",
            [0, 2][which],
            size >> 10
        );
        Ok(())
    }

    /// The manager built (`Some`) or reclaimed (`None`) an enclave whose RAM is `ram`.
    pub fn note_enclave_ram(&mut self, ram: PhysRange, built: bool) {
        self.enclave_ram.retain(|r| *r != ram);
        if built {
            self.enclave_ram.push(ram);
        }
    }

    /// After a mapping change at `[gpa, gpa + len)` that was to map `backing`: every page of
    /// it translates into `backing`, and none into an enclave's RAM (checked page by page
    /// through the tables themselves, as the host's vCPUs will walk them). A violation is
    /// atoll's bug: counted, logged, and the caller undoes the change.
    fn check_isolation(
        &mut self,
        gpa: GuestPhysAddr,
        len: u64,
        backing: PhysRange,
    ) -> Result<(), String> {
        let mut at = 0;
        while at < len {
            let g = GuestPhysAddr::new(gpa.as_u64() + at);
            let hpa = self.tables.translate(g).map(|h| h.as_u64());
            let inside =
                hpa.is_some_and(|h| backing.start.as_u64() <= h && h < backing.end.as_u64());
            let enclave = hpa.is_some_and(|h| {
                self.enclave_ram
                    .iter()
                    .any(|r| r.start.as_u64() <= h && h < r.end.as_u64())
            });
            if !inside || enclave {
                self.isolation_violations += 1;
                let e = alloc::format!(
                    "isolation: host {g} maps {hpa:x?}, not in its window {backing}{}",
                    if enclave {
                        " but in an enclave's RAM"
                    } else {
                        ""
                    }
                );
                log::error!("{e}");
                return Err(e);
            }
            at += 4096;
        }
        Ok(())
    }

    /// Where function `function`'s window `which` (0 registers, 1 mailbox or channel window)
    /// is mapped.
    pub fn control_bar(&self, function: u8, which: usize) -> Option<GuestPhysAddr> {
        self.bars.get(usize::from(function))?[which & 1]
    }

    /// Channel `index` (function `index + 1`) is taken by an enclave whose window is `frames`,
    /// or given back (`None`): BAR2, where the host placed it, maps the frames or goes back to
    /// what the layout maps there. The host's cores flush before this returns... the caller
    /// waits for that ([`HostRun::wait_tables_flushed`]) before it frees the frames.
    pub fn set_channel_window(
        &mut self,
        index: usize,
        frames: Option<PhysRange>,
    ) -> Result<(), String> {
        let Some(slot) = self.channel_windows.get_mut(index) else {
            return Err(alloc::format!("no channel {index}"));
        };
        *slot = frames;
        let f = index + 1;
        let Some(at) = self.bars[f][1] else {
            return Ok(());
        };
        let result = self.move_bar(f, 1, Some(at), frames);
        self.run.tables_changed();
        result
    }

    /// Gives `size` bytes at `at` back what the host's layout maps there.
    fn restore(&mut self, at: GuestPhysAddr, size: u64) -> Result<(), String> {
        self.tables
            .unmap(at, size)
            .map_err(|e| alloc::format!("unmapping {at}: {e:?}"))?;
        let (start, end) = (at.as_u64(), at.as_u64() + size);
        for m in &self.layout.mappings {
            let (ms, me) = (m.gpa.as_u64(), m.gpa.as_u64() + m.len);
            let (s, e) = (start.max(ms), end.min(me));
            if s < e && self.hidden.range(s & !0xfff..e).next().is_some() {
                // Pages an enclave's function owns stay unmapped: the rest page by page.
                let mut p = s & !0xfff;
                while p < e {
                    if !self.hidden.contains(&p) {
                        self.tables
                            .map(
                                GuestPhysAddr::new(p),
                                HostPhysAddr::new(m.hpa.as_u64() + (p - ms)),
                                4096,
                                m.perms,
                                m.mem,
                            )
                            .map_err(|e| alloc::format!("restoring {at}: {e:?}"))?;
                    }
                    p += 4096;
                }
            } else if s < e {
                // (A BAR never covers the control function's ECAM page: refused above.)
                self.tables
                    .map(
                        GuestPhysAddr::new(s),
                        HostPhysAddr::new(m.hpa.as_u64() + (s - ms)),
                        e - s,
                        m.perms,
                        m.mem,
                    )
                    .map_err(|e| alloc::format!("restoring {at}: {e:?}"))?;
            }
        }
        Ok(())
    }

    pub fn run_slice(&mut self) {
        let Some(bsp) = self.bsp.as_mut() else {
            return;
        };
        let until = atoll::hw::tsc::now()
            .saturating_add(SLICE_US.saturating_mul(atoll::hw::tsc::hz()) / 1_000_000);
        if bsp.run_slice(&self.run, Some(until)) != Pause::Stopped {
            return;
        }
        bsp.flush(&self.run);
        // Let the other host cores leave the guest (bounded: an emulator may be slow).
        let deadline = atoll::hw::tsc::micros() + 1_000_000;
        while !self.run.aps_out() && atoll::hw::tsc::micros() < deadline {
            core::hint::spin_loop();
        }
        let why = self
            .run
            .take_stop()
            .unwrap_or_else(|| HostStop::Failed("stopped without a reason".into()));
        self.bsp = None;
        // What a reset would clear: this core's local APIC (the others clear their own as
        // they leave the guest), every I/O APIC route, the host's COM1 and pending signals.
        atoll::hw::apic::reset_for_partition(true);
        match self.run.shared.irq() {
            // Under interrupt remapping the trap masks the chip and frees the host's entries.
            Some(irq) => irq.reset(&atoll::hw::host_run::TARGET_HW),
            None => {
                for a in &self.ioapics {
                    atoll::hw::apic::mask_ioapic(a.as_u64());
                }
            }
        }
        self.run.shared.reset_for_restart();
        match why {
            HostStop::Reset(source) => {
                self.restarts += 1;
                log::warn!(
                    "host: reset ({source:?}); restarting it from its kernel and initrd (restart {})",
                    self.restarts
                );
                if let Err(e) = self.start() {
                    log::error!("host: cannot restart: {e}");
                    self.end = Some(HostStop::Failed(e));
                }
            }
            other => {
                log::info!("host: {other}");
                self.end = Some(other);
                // Its interrupts are masked and its timer stopped (above): the boot processor's
                // waits for the enclaves still running halt rather than spin.
                atoll::hw::take_core_back_from_host();
            }
        }
    }

    /// Stops the host at the machine's deadline.
    pub fn stop(&mut self) {
        if self.bsp.is_some() {
            self.run.request_stop(HostStop::Deadline);
            self.run_slice();
        }
    }
}
