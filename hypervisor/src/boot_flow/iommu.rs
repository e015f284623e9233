//! atoll's IOMMU at boot and while the machine runs: the DMA canaries a machine description may
//! ask for, and (with a DMAR) the VT-d units.

use atoll::machine::frames::FRAME_SIZE;
use atoll::summary::CanaryReport;
use boot::HostPhysAddr;

use super::FRAMES;

/// The byte a canary page holds at `i`: never uniform, never what `edu` or a zeroing writes.
fn canary_byte(i: usize) -> u8 {
    (i as u8).wrapping_mul(13).wrapping_add(0x3c)
}

/// One page of atoll's image, used only as a canary.
#[repr(C, align(4096))]
struct CanaryPage([u8; 4096]);

/// atoll's own canary page (in its image, so in memory no partition owns).
static mut ATOLL_CANARY: CanaryPage = CanaryPage([0; 4096]);

/// The two canary pages: one of atoll's image, one frame of the pool (atoll's frames).
pub struct Canaries {
    atoll: HostPhysAddr,
    pool: HostPhysAddr,
}

impl Canaries {
    /// Takes a pool frame and fills both pages with the pattern.
    pub fn new() -> Option<Self> {
        let pool = FRAMES.lock().allocate(1, FRAME_SIZE).ok()?.start;
        let atoll = HostPhysAddr::new(core::ptr::addr_of_mut!(ATOLL_CANARY) as u64);
        let c = Self { atoll, pool };
        for page in [c.atoll, c.pool] {
            for i in 0..4096 {
                // SAFETY: `page` is atoll's canary page (a static of 4096 bytes nothing else
                // touches) or a frame just allocated from atoll's pool for good; both are
                // identity-mapped for atoll, and `i` is inside the page.
                unsafe {
                    core::ptr::write_volatile(
                        (page.as_u64() as *mut u8).wrapping_add(i),
                        canary_byte(i),
                    )
                };
            }
        }
        Some(c)
    }

    /// The host's command-line word naming them: `atoll.dma_canaries=ATOLL,POOL`.
    pub fn cmdline_word(&self) -> alloc::string::String {
        alloc::format!(
            "atoll.dma_canaries={:#x},{:#x}",
            self.atoll.as_u64(),
            self.pool.as_u64()
        )
    }

    fn intact(page: HostPhysAddr) -> bool {
        (0..4096).all(|i| {
            // SAFETY: as in `new`: the page is atoll's for good and identity-mapped; a
            // volatile read because a device may have written it behind the compiler's back.
            let b =
                unsafe { core::ptr::read_volatile((page.as_u64() as *const u8).wrapping_add(i)) };
            b == canary_byte(i)
        })
    }

    /// Whether each page still holds the pattern.
    pub fn report(&self) -> CanaryReport {
        CanaryReport {
            atoll_address: alloc::format!("{:#x}", self.atoll.as_u64()),
            atoll_intact: Self::intact(self.atoll),
            pool_address: alloc::format!("{:#x}", self.pool.as_u64()),
            pool_intact: Self::intact(self.pool),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VT-d: DMA remapping.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use atoll::partition::host_memory::HostMapping;
use atoll::partition::machine::{IommuConfig, PciAddress};
use atoll::partition::{Identity, PoolFrames};
use atoll::summary::{FaultReport, HostReport, IommuReport};
use ept::{MemType, SlTables, VtdFormat};
use iommu::{
    ContextTables, DomainId, FaultKind, FaultRecord, MmioRegisters, RawQueueMemory, SourceId, Unit,
};

/// The domain of the root partition (0 is refused under caching mode, so domains start at 1).
const HOST_DOMAIN: DomainId = DomainId(1);
/// The address width the second-level tables cover (4-level tables, IOVA = guest-physical).
const IOVA_BITS: u8 = 48;
/// Faults kept in the summary's log.
const FAULT_LOG: usize = 32;

type Frames = PoolFrames<'static, Identity>;

/// One remapping unit as atoll drives it.
struct VtdUnit {
    unit: Unit<MmioRegisters, RawQueueMemory>,
    contexts: ContextTables<Frames>,
}

/// Who owns a requester id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Host,
    /// An enclave (its partition id) that a function was passed through to.
    Enclave(u16),
    None,
}

/// An enclave's share of the faults: its functions' DMA and interrupt faults, the last one.
#[derive(Clone, Debug, Default)]
pub struct EnclaveFaults {
    /// DMA faults of its functions.
    pub dma: u64,
    /// Interrupt faults of its functions.
    pub interrupt: u64,
    /// The last one.
    pub last: Option<FaultReport>,
}

/// An enclave's DMA domain: its second-level tables map its RAM at guest-physical addresses.
struct EnclaveDomain {
    name: String,
    tables: SlTables<Frames>,
    functions: Vec<u16>,
}

/// A function's recent faults, for storm detection.
#[derive(Clone, Copy, Default)]
struct Storm {
    window_start_us: u64,
    count: u32,
}

/// atoll's VT-d: the units, the domains, who owns what, and the faults seen.
pub struct Vtd {
    units: Vec<VtdUnit>,
    host_tables: Option<SlTables<Frames>>,
    /// The functions found at boot.
    found: Vec<atoll_devices::pci::scan::Function>,
    functions: usize,
    host_functions: usize,
    blocked: Vec<PciAddress>,
    last_bus: u8,
    ecam: Option<u64>,
    dma_faults: u64,
    interrupt_faults: u64,
    unowned_faults: u64,
    lost_faults: u64,
    host_dma_faults: u64,
    host_interrupt_faults: u64,
    host_last: Option<FaultReport>,
    log: Vec<FaultReport>,
    storms: BTreeMap<u16, Storm>,
    stopped: Vec<String>,
    /// The requester ids stopped (each at most once; only functions found at boot, so bounded).
    stopped_ids: Vec<u16>,
    /// Faults within `storm_window_us` that stop a function.
    storm_faults: u32,
    storm_window_us: u64,
    /// The largest page every unit's second-level tables take.
    largest: ept::PageSize,
    /// Enclaves' domains, by partition id.
    enclave_domains: BTreeMap<u16, EnclaveDomain>,
    /// Which enclave owns a requester id passed through.
    assigned: BTreeMap<u16, u16>,
    /// Each enclave's faults (kept after it ends, until its id is used again).
    enclave_faults: BTreeMap<u16, EnclaveFaults>,
    /// Functions taken back from an enclave but kept from the host (their reset failed):
    /// blocked, owned by no one, never written to by a storm stop.
    kept: Vec<u16>,
}

/// The domain id of enclave `id` (the host's is 1).
fn enclave_domain_id(id: u16) -> DomainId {
    DomainId(2 + id)
}

/// The VT-d units once brought up; the manager polls their faults.
pub static VTD: spin::Mutex<Option<Vtd>> = spin::Mutex::new(None);

/// A configuration dword through mechanism #1, at boot (before the host runs: nobody else
/// uses the ports).
fn config_read(bdf: atoll_devices::pci::Bdf, offset: u16) -> u32 {
    let address: u32 = 1 << 31
        | u32::from(bdf.bus) << 16
        | u32::from(bdf.devfn.bits()) << 8
        | u32::from(offset & 0xfc);
    // SAFETY: port I/O on the PCI configuration ports at boot, on the boot processor alone;
    // reading a configuration register has no side effect on the functions scanned (vendor,
    // class, header type and bus numbers).
    unsafe { x86_64::instructions::port::Port::<u32>::new(0xcf8).write(address) };
    // SAFETY: as above: the data port of the address just written.
    unsafe { x86_64::instructions::port::Port::<u32>::new(0xcfc).read() }
}

impl Vtd {
    /// Takes every unit of `dmar`: context tables on buses 0 to the last bus the firmware
    /// numbered, every function there in the host's domain (its second-level tables mapping
    /// `host`, IOVA = guest-physical) unless `blocked` names it or there is no host, then
    /// translation on. `Err` names the first unit that could not be driven (none is left on).
    pub fn bring_up(
        dmar: &iommu::Dmar,
        host: Option<&[HostMapping]>,
        config: &IommuConfig,
        ecam: Option<u64>,
    ) -> Result<Self, String> {
        let blocked = &config.blocked[..];
        let scan = atoll_devices::pci::scan::scan(config_read);
        let mut units = Vec::new();
        for (i, u) in dmar.units().enumerate() {
            let window = u.register_pages * 4096;
            // SAFETY: the unit's register pages, named by the firmware's DMAR; identity-mapped
            // uncacheable for atoll (the MMIO hole) and never mapped for a partition (the
            // host's layout leaves them out). Only atoll's manager touches them.
            let regs = unsafe { MmioRegisters::new(u.register_base.as_u64() as *mut u8, window) };
            let (ring, status) = {
                let mut f = FRAMES.lock();
                let ring = f
                    .allocate(1, FRAME_SIZE)
                    .map_err(|e| alloc::format!("{e:?}"))?;
                let status = f
                    .allocate(1, FRAME_SIZE)
                    .map_err(|e| alloc::format!("{e:?}"))?;
                (ring.start, status.start)
            };
            // SAFETY: two frames just taken from atoll's pool for good (never a partition's),
            // identity-mapped, page-aligned; nothing else refers to them.
            let queue = unsafe {
                RawQueueMemory::new(
                    ring.as_u64() as *mut [u64; 512],
                    ring,
                    status.as_u64() as *mut u32,
                    status,
                )
            };
            let unit = Unit::probe(regs, window, IOVA_BITS, queue)
                .map_err(|e| alloc::format!("VT-d unit {i} at {}: {e}", u.register_base))?;
            let contexts = ContextTables::new(PoolFrames::new(&FRAMES, Identity), unit.cap())
                .map_err(|e| alloc::format!("VT-d unit {i}: context tables: {e}"))?;
            units.push(VtdUnit { unit, contexts });
        }
        let largest = units
            .iter()
            .map(|u| u.unit.largest_page())
            .min()
            .unwrap_or(ept::PageSize::Size4K);
        let host_tables = match host {
            Some(mappings) => {
                let mut t = SlTables::new(PoolFrames::new(&FRAMES, Identity), largest)
                    .map_err(|e| alloc::format!("the host's DMA tables: {e:?}"))?;
                for m in mappings {
                    t.map(
                        m.gpa,
                        m.hpa,
                        m.len,
                        VtdFormat::dma_perms(m.perms),
                        MemType::WriteBack,
                    )
                    .map_err(|e| alloc::format!("the host's DMA tables at {}: {e:?}", m.gpa))?;
                }
                Some(t)
            }
            None => None,
        };
        let blocked_ids: Vec<u16> = blocked.iter().map(PciAddress::requester_id).collect();
        let mut host_functions = 0;
        for u in &mut units {
            if let Some(t) = &host_tables {
                for bus in 0..=scan.last_bus {
                    for devfn in 0..=255u8 {
                        let sid = SourceId::new(bus, devfn);
                        if blocked_ids.contains(&sid.0) {
                            continue;
                        }
                        // Before translation is on no cache holds anything: the flush the
                        // assignment asks for is done by `enable`'s global invalidations.
                        let _ = u
                            .contexts
                            .assign(sid, HOST_DOMAIN, t.slptptr())
                            .map_err(|e| alloc::format!("context entry of {sid}: {e}"))?;
                    }
                }
            }
        }
        if host_tables.is_some() {
            host_functions = scan
                .functions
                .iter()
                .filter(|f| {
                    !blocked_ids
                        .contains(&(u16::from(f.bdf.bus) << 8 | u16::from(f.bdf.devfn.bits())))
                })
                .count();
        }
        for (i, u) in units.iter_mut().enumerate() {
            let root = u.contexts.root_table();
            if let Err(e) = u.unit.enable(root) {
                let _ = u.unit.disable();
                return Err(alloc::format!("VT-d unit {i}: enabling translation: {e}"));
            }
        }
        for f in &scan.functions {
            let owner = if blocked_ids
                .contains(&(u16::from(f.bdf.bus) << 8 | u16::from(f.bdf.devfn.bits())))
                || host_tables.is_none()
            {
                "none (blocked)"
            } else {
                "host"
            };
            log::info!(
                "iommu: {} {:04x}:{:04x} class {:06x}: {owner}",
                f.bdf,
                f.vendor,
                f.device,
                f.class
            );
        }
        log::info!(
            "iommu: {} unit(s), translation on; {} function(s) found, buses 0-{}, host domain {}",
            units.len(),
            scan.functions.len(),
            scan.last_bus,
            if host_tables.is_some() {
                "mirrors the host's second stage"
            } else {
                "absent: every function blocked"
            }
        );
        Ok(Self {
            units,
            host_tables,
            found: scan.functions.clone(),
            functions: scan.functions.len(),
            host_functions,
            blocked: blocked.to_vec(),
            last_bus: scan.last_bus,
            ecam,
            dma_faults: 0,
            interrupt_faults: 0,
            unowned_faults: 0,
            lost_faults: 0,
            host_dma_faults: 0,
            host_interrupt_faults: 0,
            host_last: None,
            log: Vec::new(),
            storms: BTreeMap::new(),
            stopped: Vec::new(),
            stopped_ids: Vec::new(),
            storm_faults: config.storm_faults,
            storm_window_us: config.storm_window_ms.saturating_mul(1000),
            largest,
            enclave_domains: BTreeMap::new(),
            assigned: BTreeMap::new(),
            enclave_faults: BTreeMap::new(),
            kept: Vec::new(),
        })
    }

    /// Moves function `sid` into enclave `id`'s domain (made on first use: its RAM `ram` at
    /// guest-physical 0, read-write), out of the host's. When it returns Ok the function's DMA
    /// reaches that RAM and nothing else, and no cache of any unit holds its old translations.
    pub fn give(
        &mut self,
        id: u16,
        name: &str,
        sid: u16,
        ram: boot::PhysRange,
    ) -> Result<(), String> {
        if self.units.is_empty() {
            return Err("no VT-d unit".into());
        }
        if let Some(owner) = self.assigned.get(&sid) {
            return Err(alloc::format!(
                "{} is already enclave {owner}'s",
                SourceId(sid)
            ));
        }
        if !self.enclave_domains.contains_key(&id) {
            let mut t = SlTables::new(PoolFrames::new(&FRAMES, Identity), self.largest)
                .map_err(|e| alloc::format!("the enclave's DMA tables: {e:?}"))?;
            let mapped = t.map(
                boot::GuestPhysAddr::new(0),
                ram.start,
                ram.len(),
                VtdFormat::dma_perms(ept::Perms::READ | ept::Perms::WRITE),
                MemType::WriteBack,
            );
            if let Err(e) = mapped {
                let _ = t.destroy();
                return Err(alloc::format!("the enclave's DMA tables: {e:?}"));
            }
            self.enclave_faults.remove(&id);
            self.enclave_domains.insert(
                id,
                EnclaveDomain {
                    name: name.into(),
                    tables: t,
                    functions: Vec::new(),
                },
            );
        }
        let Some(d) = self.enclave_domains.get_mut(&id) else {
            return Err("the enclave's domain vanished".into());
        };
        let slptptr = d.tables.slptptr();
        let mut result = Ok(());
        for (i, u) in self.units.iter_mut().enumerate() {
            if let Err(e) = u.unit.assign(
                &mut u.contexts,
                SourceId(sid),
                enclave_domain_id(id),
                slptptr,
            ) {
                result = Err(alloc::format!("VT-d unit {i}: {e}"));
                break;
            }
        }
        if let Err(e) = result {
            // Nothing half-assigned: the function is blocked everywhere (not the host's
            // either: the caller returns it through `take_back`).
            for u in &mut self.units {
                let _ = u.unit.block(&mut u.contexts, SourceId(sid));
            }
            self.assigned.insert(sid, id);
            d.functions.push(sid);
            return Err(e);
        }
        d.functions.push(sid);
        self.assigned.insert(sid, id);
        log::info!(
            "iommu: {} moved into enclave '{}''s domain {}",
            SourceId(sid),
            d.name,
            enclave_domain_id(id).0
        );
        Ok(())
    }

    /// Blocks function `sid` in every unit (its DMA faults from now on): the first step of
    /// taking it back from an enclave, before the enclave's RAM is freed.
    pub fn block_function(&mut self, sid: u16) -> Result<(), String> {
        let mut result = Ok(());
        for (i, u) in self.units.iter_mut().enumerate() {
            if let Err(e) = u.unit.block(&mut u.contexts, SourceId(sid)) {
                result = Err(alloc::format!(
                    "VT-d unit {i}: blocking {}: {e}",
                    SourceId(sid)
                ));
            }
        }
        result
    }

    /// Takes function `sid` back from its enclave: blocked, then (with `to_host`) into the
    /// host's domain again. The enclave's domain goes when its last function leaves it.
    pub fn take_back(&mut self, sid: u16, to_host: bool) -> Result<(), String> {
        let Some(id) = self.assigned.remove(&sid) else {
            return Err(alloc::format!("{} is no enclave's", SourceId(sid)));
        };
        let mut result = self.block_function(sid);
        if !to_host && !self.kept.contains(&sid) {
            self.kept.push(sid);
        }
        if to_host {
            self.kept.retain(|&k| k != sid);
        }
        if to_host && result.is_ok() {
            if let Some(t) = &self.host_tables {
                let slptptr = t.slptptr();
                for (i, u) in self.units.iter_mut().enumerate() {
                    if let Err(e) =
                        u.unit
                            .assign(&mut u.contexts, SourceId(sid), HOST_DOMAIN, slptptr)
                    {
                        result = Err(alloc::format!("VT-d unit {i}: {e}"));
                    }
                }
            }
        }
        let empty = match self.enclave_domains.get_mut(&id) {
            Some(d) => {
                d.functions.retain(|&f| f != sid);
                d.functions.is_empty()
            }
            None => false,
        };
        if empty {
            if let Some(d) = self.enclave_domains.remove(&id) {
                // No context entry names the domain any more (each function was blocked and
                // flushed): its tables can go.
                for u in &mut self.units {
                    let _ = u.unit.invalidate_domain(enclave_domain_id(id));
                }
                let _ = d.tables.destroy();
            }
        }
        result
    }

    /// The functions found at boot.
    pub fn found(&self) -> &[atoll_devices::pci::scan::Function] {
        &self.found
    }

    /// The last bus the firmware numbered.
    pub fn last_bus(&self) -> u8 {
        self.last_bus
    }

    /// Host devices' DMA no longer reaches `pages` (a passed-through function's BARs: no peer to
    /// peer writes into them through the host's domain); the domain's IOTLB is flushed before
    /// this returns.
    pub fn host_dma_unmap(&mut self, pages: &[u64]) -> Result<(), String> {
        let Some(t) = self.host_tables.as_mut() else {
            return Ok(());
        };
        for &p in pages {
            t.unmap(boot::GuestPhysAddr::new(p), 4096)
                .map_err(|e| alloc::format!("the host's DMA tables at {p:#x}: {e:?}"))?;
        }
        for u in &mut self.units {
            u.unit
                .invalidate_domain(HOST_DOMAIN)
                .map_err(|e| alloc::format!("flushing the host's domain: {e}"))?;
        }
        Ok(())
    }

    /// `pages` are the host's again in its domain, as its second stage maps them (`mappings`);
    /// idempotent.
    pub fn host_dma_restore(
        &mut self,
        pages: &[u64],
        mappings: &[HostMapping],
    ) -> Result<(), String> {
        let Some(t) = self.host_tables.as_mut() else {
            return Ok(());
        };
        for &p in pages {
            let _ = t.unmap(boot::GuestPhysAddr::new(p), 4096);
            if let Some(m) = mappings
                .iter()
                .find(|m| m.gpa.as_u64() <= p && p + 4096 <= m.gpa.as_u64() + m.len)
            {
                t.map(
                    boot::GuestPhysAddr::new(p),
                    boot::HostPhysAddr::new(m.hpa.as_u64() + (p - m.gpa.as_u64())),
                    4096,
                    VtdFormat::dma_perms(m.perms),
                    // As `bring_up` maps it: second-level entries carry no memory type.
                    MemType::WriteBack,
                )
                .map_err(|e| alloc::format!("the host's DMA tables at {p:#x}: {e:?}"))?;
            }
        }
        for u in &mut self.units {
            u.unit
                .invalidate_domain(HOST_DOMAIN)
                .map_err(|e| alloc::format!("flushing the host's domain: {e}"))?;
        }
        Ok(())
    }

    /// Enclave `id`'s faults so far.
    pub fn enclave_faults(&self, id: u16) -> EnclaveFaults {
        self.enclave_faults.get(&id).cloned().unwrap_or_default()
    }

    fn owner_name(&self, owner: Owner) -> String {
        match owner {
            Owner::Host => "host".into(),
            Owner::None => "none".into(),
            Owner::Enclave(id) => match self.enclave_domains.get(&id) {
                Some(d) => alloc::format!("enclave {}", d.name),
                None => alloc::format!("enclave {id}"),
            },
        }
    }

    fn owner(&self, sid: SourceId) -> Owner {
        if let Some(&id) = self.assigned.get(&sid.0) {
            return Owner::Enclave(id);
        }
        let blocked =
            self.blocked.iter().any(|b| b.requester_id() == sid.0) || self.kept.contains(&sid.0);
        if blocked || self.host_tables.is_none() || sid.bus() > self.last_bus {
            Owner::None
        } else {
            Owner::Host
        }
    }

    /// Reads and clears every unit's fault records: each is counted, logged (rate-limited),
    /// attributed to its function's owner, and a function faulting in a storm is stopped.
    pub fn poll(&mut self) {
        let mut records: Vec<FaultRecord> = Vec::new();
        for u in &mut self.units {
            let s = u.unit.drain_faults(|r| records.push(r));
            if s.overflow {
                self.lost_faults += 1;
            }
        }
        for r in records {
            self.record(r);
        }
    }

    fn record(&mut self, r: FaultRecord) {
        let owner = self.owner(r.source);
        let kind = match r.kind {
            FaultKind::Dma => {
                self.dma_faults += 1;
                "dma"
            }
            FaultKind::Interrupt(_) => {
                self.interrupt_faults += 1;
                "interrupt"
            }
        };
        let address = match r.kind {
            FaultKind::Dma => r.address,
            FaultKind::Interrupt(index) => u64::from(index) << 48,
        };
        let report = FaultReport {
            source: r.source.to_string(),
            owner: self.owner_name(owner),
            kind,
            code: r.reason.code(),
            reason: r.reason.to_string(),
            address: alloc::format!("{address:#x}"),
            write: r.write,
        };
        let n = self.dma_faults + self.interrupt_faults;
        if atoll::run::host::rate_limited(n) {
            log::warn!(
                "iommu: {r} (owner {}; {n} faults so far)",
                self.owner_name(owner)
            );
        }
        match owner {
            Owner::Host => {
                match r.kind {
                    FaultKind::Dma => self.host_dma_faults += 1,
                    FaultKind::Interrupt(_) => self.host_interrupt_faults += 1,
                }
                self.host_last = Some(report.clone());
            }
            Owner::Enclave(id) => {
                let f = self.enclave_faults.entry(id).or_default();
                match r.kind {
                    FaultKind::Dma => f.dma += 1,
                    FaultKind::Interrupt(_) => f.interrupt += 1,
                }
                f.last = Some(report.clone());
            }
            Owner::None => self.unowned_faults += 1,
        }
        if self.log.len() < FAULT_LOG {
            self.log.push(report);
        }
        let now = atoll::hw::tsc::micros();
        let s = self.storms.entry(r.source.0).or_default();
        if now.saturating_sub(s.window_start_us) > self.storm_window_us {
            *s = Storm {
                window_start_us: now,
                count: 0,
            };
        }
        s.count += 1;
        if s.count == self.storm_faults {
            if self.stoppable(r.source) {
                self.stop(r.source);
            } else {
                log::warn!(
                    "iommu: {} faulted {} times within {} ms but names no endpoint of the host's found at boot: not stopped (its faults are counted)",
                    r.source,
                    self.storm_faults,
                    self.storm_window_us / 1000
                );
            }
        }
    }

    /// Whether a storm of `sid` may stop it: only an endpoint (not a bridge, whose command
    /// register gates every device behind it) that atoll found at boot and the host owns. A
    /// fault's requester id is whatever the transaction carried, so anything else — a forged or
    /// unknown id, a bus the host renumbered, a blocked function — is never written to.
    fn stoppable(&self, sid: SourceId) -> bool {
        // Once: a stopped function keeps faulting at its cleared context entry, and each new
        // window would otherwise stop it again (and grow the list).
        !self.stopped_ids.contains(&sid.0)
            && self.owner(sid) == Owner::Host
            && self.found.iter().any(|f| {
                f.bridge.is_none()
                    && u16::from(f.bdf.bus) << 8 | u16::from(f.bdf.devfn.bits()) == sid.0
            })
    }

    /// Stops a function that faults in a storm: bus mastering off in its command register
    /// (through ECAM: one store, atomic against the host's own configuration accesses) and its
    /// context entry cleared, so nothing it does reaches memory any more.
    fn stop(&mut self, sid: SourceId) {
        let at = self.ecam.map(|base| base + (u64::from(sid.0) << 12) + 4);
        // Found at boot on segment 0's window (the caller checked), and inside atoll's map.
        if let Some(at) = at.filter(|a| a + 2 <= atoll::hw::IDENTITY_MAPPED_END) {
            // SAFETY: the command register of the function's ECAM page: atoll's identity map
            // covers the ECAM window (uncacheable MMIO below 4 GiB); a 16-bit store there
            // changes only that function's command register.
            let cmd = unsafe { core::ptr::read_volatile(at as *const u16) };
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(at as *mut u16, cmd & !0x4) };
        }
        for u in &mut self.units {
            if let Err(e) = u.unit.block(&mut u.contexts, sid) {
                log::error!("iommu: blocking {sid}: {e}");
            }
        }
        log::warn!(
            "iommu: {sid} faulted {} times within {} ms: stopped (bus mastering off, DMA blocked)",
            self.storm_faults,
            self.storm_window_us / 1000
        );
        self.stopped.push(sid.to_string());
        self.stopped_ids.push(sid.0);
    }

    /// Whether there is a unit and every one reports `status` (GSTS) set.
    fn all_units(&self, status: iommu::GlobalStatus) -> bool {
        !self.units.is_empty() && self.units.iter().all(|u| u.unit.status().contains(status))
    }

    /// The summary's `iommu` object.
    pub fn report(&mut self) -> IommuReport {
        let table_pages = self
            .units
            .iter()
            .map(|u| u.contexts.table_frames())
            .sum::<usize>()
            + self.host_tables.as_ref().map_or(0, |t| t.table_pages());
        IommuReport {
            units: self.units.len(),
            translation: self.all_units(iommu::GlobalStatus::TES),
            interrupt_remapping: self.all_units(iommu::GlobalStatus::IRES),
            domains: usize::from(self.host_tables.is_some()) + self.enclave_domains.len(),
            functions: self.functions,
            host_functions: self.host_functions,
            blocked: self
                .blocked
                .iter()
                .map(|b| alloc::format!("{:02x}:{:02x}.{}", b.bus, b.device, b.function))
                .collect(),
            last_bus: self.last_bus,
            table_pages,
            dma_faults: self.dma_faults,
            interrupt_faults: self.interrupt_faults,
            unowned_faults: self.unowned_faults,
            lost_faults: self.lost_faults,
            fault_log: self.log.clone(),
            stopped: self.stopped.clone(),
            canaries: None,
            ..Default::default()
        }
    }

    /// The host's share: its devices' faults.
    pub fn fill_host(&self, host: &mut HostReport) {
        host.dma_faults = self.host_dma_faults;
        host.interrupt_faults = self.host_interrupt_faults;
        host.last_fault = self.host_last.clone();
    }
}

/// The machine description's `[iommu] allow_unsafe_dma`.
pub static ALLOW_UNSAFE_DMA: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Whether every unit translates DMA.
pub fn dma_isolation() -> bool {
    VTD.lock()
        .as_ref()
        .is_some_and(|v| v.all_units(iommu::GlobalStatus::TES))
}

/// Whether an enclave may be given `devices` here ([`atoll::partition::config::device_policy`]).
pub fn check_devices(
    c: &atoll::partition::config::EnclaveConfig,
) -> Result<(), atoll::partition::config::ConfigError> {
    atoll::partition::config::device_policy(
        c.has_devices(),
        dma_isolation(),
        ALLOW_UNSAFE_DMA.load(core::sync::atomic::Ordering::Relaxed),
    )
}

/// Polls the faults, if atoll has an IOMMU (the manager calls this every turn).
pub fn poll() {
    if let Some(v) = VTD.lock().as_mut() {
        v.poll();
    }
}

/// Microseconds between two polls from the host's exits.
const EXIT_POLL_US: u64 = 1000;

/// The host's exit hook: a fault poll at most every [`EXIT_POLL_US`], by whichever host core
/// gets there first, never waiting for the lock (the manager may hold it). QEMU's VT-d has one
/// fault-recording register and drops a device's next fault while its last one is unread, so
/// faults must be read while the host keeps the manager's core busy.
pub fn poll_from_exit() {
    use core::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = atoll::hw::tsc::micros();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) < EXIT_POLL_US
        || LAST
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    if let Some(mut g) = VTD.try_lock() {
        if let Some(v) = g.as_mut() {
            v.poll();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VT-d: interrupt remapping of the host's sources.

/// Entries of the interrupt remapping table: 2^12 (64 KiB), IRTA.S = 11.
const IRT_ENTRIES: usize = 4096;

/// The interrupt entry cache invalidation an IRTE change owes every unit.
fn invalidate_irte(index: iommu::irte::IrteIndex) {
    if let Some(v) = VTD.lock().as_mut() {
        for u in &mut v.units {
            if let Err(e) = u
                .unit
                .invalidate(&[iommu::Descriptor::iec_index(index.0, 0)])
            {
                log::error!("iommu: invalidating IRTE {}: {e}", index.0);
            }
        }
    }
}

/// Turns interrupt remapping on for a machine with a host: the table in atoll's frames, the
/// host's I/O APICs masked and trapped (their pages left unmapped in its tables), then every
/// unit's IRE with compatibility-format interrupts blocked. From here on an interrupt reaches a
/// core only through an entry atoll wrote.
pub fn enable_interrupt_remapping(host: &mut super::host::Host) -> Result<(), String> {
    {
        let guard = VTD.lock();
        let v = guard.as_ref().ok_or("no IOMMU")?;
        if v.units.is_empty() || !v.units.iter().all(|u| u.unit.ecap().ir()) {
            return Err("a remapping unit has no interrupt remapping (ECAP.IR)".into());
        }
    }
    let pages: Vec<u64> = host.ioapic_pages().iter().map(|p| p.as_u64()).collect();
    if let Some(p) = pages.iter().find(|p| *p & 0xfff != 0) {
        return Err(alloc::format!(
            "the I/O APIC at {p:#x} is not page-aligned: atoll cannot trap it alone"
        ));
    }
    let frames = (IRT_ENTRIES * 16) as u64 / FRAME_SIZE;
    let irt = FRAMES
        .lock()
        .allocate(frames, FRAME_SIZE)
        .map_err(|e| alloc::format!("no frames for the interrupt remapping table: {e:?}"))?;
    // SAFETY: frames just taken from atoll's pool for good, identity-mapped, 4 KiB-aligned,
    // IRT_ENTRIES × 16 bytes; nothing else refers to them.
    let raw = unsafe { atoll::hw::vtd::RawIrt::new(irt.start.as_u64() as *mut u64, IRT_ENTRIES) };
    let memory: &'static mut (dyn iommu::irte::IrtMemory + Send) =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(raw));
    let owners: &'static mut [Option<u16>] =
        alloc::boxed::Box::leak(alloc::vec![None; IRT_ENTRIES].into_boxed_slice());
    let table = iommu::irte::InterruptTable::new(memory, owners)
        .map_err(|e| alloc::format!("the interrupt remapping table: {e:?}"))?;
    {
        let mut guard = VTD.lock();
        let v = guard.as_mut().ok_or("no IOMMU")?;
        for (i, u) in v.units.iter_mut().enumerate() {
            u.unit
                .set_interrupt_remap_table(irt.start, 11, false)
                .map_err(|e| alloc::format!("VT-d unit {i}: interrupt remapping table: {e}"))?;
        }
    }
    for &p in &pages {
        atoll::hw::apic::mask_ioapic(p);
    }
    // The host's functions with an MSI capability: shadowed, their ECAM pages trapped (and
    // mechanism #1, which the control device already intercepts).
    let (msi, msix, ecam) = {
        let guard = VTD.lock();
        let v = guard.as_ref().ok_or("no IOMMU")?;
        let mut msi = Vec::new();
        let mut msix = Vec::new();
        for f in v.found.iter().filter(|f| f.bridge.is_none()) {
            let sid = u16::from(f.bdf.bus) << 8 | u16::from(f.bdf.devfn.bits());
            if v.owner(SourceId(sid)) != Owner::Host {
                continue;
            }
            let caps = match atoll_devices::pci::msi::walk_capabilities(|off| {
                config_read(f.bdf, u16::from(off))
            }) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("iommu: the host's {}: capability list unreadable ({e:?}): its MSI and MSI-X stay blocked", f.bdf);
                    continue;
                }
            };
            if let Some(cap) = caps.msi {
                let shadow = atoll_devices::pci::msi::MsiShadow::new(cap, |o| {
                    config_read(f.bdf, u16::from(cap.offset) + o as u16)
                });
                log::info!(
                    "iommu: the host's {} has MSI at {:#x}: trapped",
                    f.bdf,
                    cap.offset
                );
                msi.push(atoll::run::host::irq::MsiFunction { sid, shadow });
            }
            if let Some(cap) = caps.msix {
                let bar = 0x10 + 4 * u16::from(cap.table_bar);
                let low = config_read(f.bdf, bar);
                let base = if low & 1 != 0 {
                    0
                } else if (low >> 1) & 3 == 2 && cap.table_bar < 5 {
                    u64::from(low & !0xf) | u64::from(config_read(f.bdf, bar + 4)) << 32
                } else {
                    u64::from(low & !0xf)
                };
                let table = base + u64::from(cap.table_offset);
                let shadow = atoll_devices::pci::msi::MsixShadow::new(cap);
                let end = table + u64::from(shadow.table_len());
                if base == 0 || end > atoll::hw::IDENTITY_MAPPED_END {
                    return Err(alloc::format!(
                        "the host's {}: its MSI-X table at {table:#x} is not where atoll can trap it (BAR {} at {base:#x})",
                        f.bdf, cap.table_bar
                    ));
                }
                log::info!(
                    "iommu: the host's {} has MSI-X ({} entries) at {table:#x}: trapped",
                    f.bdf,
                    cap.table_size
                );
                msix.push(atoll::run::host::irq::MsixFunction { sid, table, shadow });
            }
        }
        (msi, msix, v.ecam)
    };
    if !msi.is_empty() && host.run.shared.control().is_none() {
        return Err(
            "the host has MSI-capable functions but no control device, so its configuration ports are not intercepted"
                .into(),
        );
    }
    let irq = atoll::run::host::irq::HostIrq::new(
        table,
        invalidate_irte,
        atoll::run::host::irq::Sources {
            ioapics: &pages,
            cores: &host.run.cores,
            msi,
            msix,
            ecam,
        },
        |base, reg| {
            atoll::hw::apic::ioapic_mmio(base, 0x00, Some(u32::from(reg)));
            atoll::hw::apic::ioapic_mmio(base, 0x10, None)
        },
    );
    // The traps exist before any page is unmapped, so a page left unmapped is always served
    // (an error part-way leaves remapping off and the trapped pages working through the trap).
    let trapped: Vec<u64> = pages
        .iter()
        .copied()
        .chain(irq.config_pages())
        .chain(irq.msix_pages())
        .collect();
    host.run.shared.set_irq(irq);
    host.run.shared.set_exit_hook(poll_from_exit);
    for p in trapped {
        host.trap_page(HostPhysAddr::new(p))?;
    }
    let mut guard = VTD.lock();
    let v = guard.as_mut().ok_or("no IOMMU")?;
    for (i, u) in v.units.iter_mut().enumerate() {
        u.unit
            .enable_interrupt_remapping()
            .map_err(|e| alloc::format!("VT-d unit {i}: enabling interrupt remapping: {e}"))?;
    }
    log::info!(
        "iommu: interrupt remapping on ({IRT_ENTRIES} entries, compatibility format blocked); the host's {} I/O APIC(s), {} MSI and {} MSI-X function(s) trapped",
        pages.len(),
        host.run.shared.irq().map_or(0, |i| i.msi_functions()),
        host.run.shared.irq().map_or(0, |i| i.msix_functions())
    );
    Ok(())
}
