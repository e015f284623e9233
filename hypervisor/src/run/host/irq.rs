//! The host's interrupt sources under VT-d interrupt remapping (issue 12, item 3).
//!
//! With remapping on and compatibility-format interrupts blocked, an interrupt reaches a core
//! only through an interrupt remapping table entry (IRTE) atoll wrote. The host keeps
//! programming its I/O APIC as if it owned it: atoll leaves the chip's page unmapped, and each
//! access comes here ([`ioapic_access`]), where [`HostIoApic`] keeps the host's view of every
//! redirection entry and tells what to write to the chip — always the remappable form, through
//! an IRTE this module points at the host's interrupt ([`Remapper`]).
//!
//! **Destinations.** An IRTE atoll writes for the host names one of the host's own cores, in
//! physical mode, whatever the host asked: a physical destination must be one of its cores'
//! APIC ids; a logical (flat) destination is a mask of the host's logical CPUs, bit *n* being
//! its *n*-th CPU (Linux's flat model writes LDR = 1 << n), and the lowest such CPU is taken
//! (fixed and lowest-priority delivery both reach exactly one core). A destination that names
//! none of the host's cores is refused: the pin stays masked on the chip and the refusal is
//! counted. SMI and INIT are never remapped for the host; NMI and ExtINT are (to its cores).
//!
//! **Source validation.** I/O APIC entries are not source-validated (the DMAR's I/O APIC scope
//! is not read yet); the host's interrupt sources are the host's devices anyway, and every
//! IRTE the host's sources use names only the host's cores.
//!
//! One lock serializes the host's I/O APIC accesses (the chip's select/window pair is shared by
//! all its cores) and the table's allocation; it is the host's own, never taken on an enclave's
//! exit path.

use super::{bump, rate_limited, HostHw, HostShared};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use atoll_devices::host_ioapic::{self, HostIoApic, IoApicRead};
use atoll_devices::pci::msi::{MsiShadow, MsixShadow, Remapper};
use core::sync::atomic::AtomicU64;
use iommu::irte::{
    ApicDest, DeliveryMode, DestMode, InterruptTable, IrtMemory, IrteIndex, SourceValidation,
};
use iommu::remap::{Interrupt, RemapError};

/// The IRT owner id of the host's entries.
pub const HOST_OWNER: u16 = u16::MAX;

/// Issues an index-selective interrupt-entry-cache invalidation (the VT-d unit's queue).
pub type Invalidate = fn(IrteIndex);

/// Which kind of source an IRTE serves (its key with the source's own numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    IoApic(u8),
    Msi(u16),
    Msix(u16),
}

/// The host's interrupt remapping: the table, the trapped I/O APICs, the IRTE of each source.
pub struct HostIrq {
    inner: spin::Mutex<Inner>,
    /// Interrupts remapped (IRTEs written for the host).
    pub remapped: AtomicU64,
    /// Interrupts refused (a destination outside the host, a delivery mode not allowed, a full
    /// table, a message that is not an interrupt).
    pub refused: AtomicU64,
}

/// The table and who may be named in it: what every trapped source's [`Programmer`] uses.
struct Remap {
    table: InterruptTable<'static, dyn IrtMemory + Send>,
    invalidate: Invalidate,
    /// The host's cores' APIC ids, in its CPU order.
    cores: Vec<u32>,
    /// Per core (same order): lent to an enclave, so no IRTE of the host's may name it.
    lent: Vec<bool>,
    /// The IRTE of each source.
    entries: BTreeMap<(Kind, u16), IrteIndex>,
}

impl Remap {
    /// The [`Remapper`] of source kind `kind`, its IRTEs validated as `validation`, counting
    /// into `irq`'s counters.
    fn programmer<'a>(
        &'a mut self,
        kind: Kind,
        validation: SourceValidation,
        irq: &'a HostIrq,
    ) -> Programmer<'a> {
        Programmer {
            remap: self,
            kind,
            validation,
            remapped: &irq.remapped,
            refused: &irq.refused,
        }
    }
}

struct Inner {
    remap: Remap,
    /// The I/O APICs: page base, model.
    ioapics: Vec<(u64, HostIoApic)>,
    /// The host functions whose MSI capability is trapped.
    msi: Vec<MsiFunction>,
    /// The segment 0 ECAM window's base (bus 0 first), if the host has one.
    ecam: Option<u64>,
    /// The host functions whose MSI-X table is trapped.
    msix: Vec<MsixFunction>,
}

/// The host's interrupt sources atoll traps, as found at boot.
pub struct Sources<'a> {
    /// The I/O APICs' page bases.
    pub ioapics: &'a [u64],
    /// The host's cores' APIC ids, in its CPU order.
    pub cores: &'a [u32],
    /// Functions with an MSI capability.
    pub msi: Vec<MsiFunction>,
    /// Functions with an MSI-X table.
    pub msix: Vec<MsixFunction>,
    /// The segment 0 ECAM window's base.
    pub ecam: Option<u64>,
}

/// A host function's MSI-X table, trapped: where it is (as the firmware placed its BAR) and
/// its shadow.
pub struct MsixFunction {
    /// Requester id (bus << 8 | devfn).
    pub sid: u16,
    /// The table's physical address (the host's guest-physical address too).
    pub table: u64,
    /// The shadow.
    pub shadow: MsixShadow,
}

impl MsixFunction {
    /// The pages the table covers.
    fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        let first = self.table & !0xfff;
        let last = (self.table + u64::from(self.shadow.table_len()).max(1) - 1) & !0xfff;
        (first..=last).step_by(4096)
    }
}

/// The [`Remapper`] of one trapped source.
struct Programmer<'a> {
    remap: &'a mut Remap,
    kind: Kind,
    validation: SourceValidation,
    remapped: &'a AtomicU64,
    refused: &'a AtomicU64,
}

/// The one host core an interrupt for `dest` (`mode`) goes to, if the host may send it there:
/// one of its `cores` not `lent` to an enclave (same order).
pub fn host_target(cores: &[u32], lent: &[bool], mode: DestMode, dest: u32) -> Option<u32> {
    let open = |i: usize| !lent.get(i).copied().unwrap_or(false);
    match mode {
        DestMode::Physical => cores
            .iter()
            .enumerate()
            .find(|&(i, &c)| c == dest && open(i))
            .map(|(_, &c)| c),
        DestMode::Logical => (0..8usize)
            .find(|&bit| dest & (1 << bit) != 0 && bit < cores.len() && open(bit))
            .map(|bit| cores[bit]),
    }
}

impl Remapper for Programmer<'_> {
    fn program(&mut self, source: u16, interrupt: &Interrupt) -> Option<IrteIndex> {
        let allowed = !matches!(interrupt.delivery, DeliveryMode::Smi | DeliveryMode::Init);
        let target = host_target(
            &self.remap.cores,
            &self.remap.lent,
            interrupt.dest_mode,
            interrupt.dest,
        )
        .filter(|&t| allowed && t <= 0xff);
        let Some(target) = target else {
            let n = bump(self.refused);
            if rate_limited(n) {
                log::info!(
                    "host: interrupt {:?} from {:?} {source} refused: not to one of its cores or not allowed ({n} so far)",
                    interrupt,
                    self.kind
                );
            }
            self.block(source, RemapError::AlreadyRemappable);
            return None;
        };
        let key = (self.kind, source);
        let index = match self.remap.entries.get(&key) {
            Some(&i) => i,
            None => match self.remap.table.alloc(HOST_OWNER) {
                Ok(i) => {
                    self.remap.entries.insert(key, i);
                    i
                }
                Err(e) => {
                    bump(self.refused);
                    log::warn!(
                        "host: no interrupt remapping entry for {:?} {source}: {e:?}",
                        self.kind
                    );
                    return None;
                }
            },
        };
        let mut irte = interrupt.irte(ApicDest::XApic(target as u8), self.validation);
        irte.dest_mode = DestMode::Physical;
        match self.remap.table.set(HOST_OWNER, index, &irte) {
            Ok(inv) => (self.remap.invalidate)(inv.0),
            Err(e) => {
                bump(self.refused);
                log::warn!("host: writing IRTE {} failed: {e:?}", index.0);
                return None;
            }
        }
        bump(self.remapped);
        Some(index)
    }

    fn block(&mut self, source: u16, _reason: RemapError) {
        if let Some(i) = self.remap.entries.remove(&(self.kind, source)) {
            if let Ok(inv) = self.remap.table.free(HOST_OWNER, i) {
                (self.remap.invalidate)(inv.0);
            }
        }
    }
}

impl HostIrq {
    /// The host's remapping over `table`: the trapped I/O APICs (`ioapics`: page base and the
    /// chip's registers read at boot, through `read(base, register)`), its cores' APIC ids.
    pub fn new(
        table: InterruptTable<'static, dyn IrtMemory + Send>,
        invalidate: Invalidate,
        sources: Sources<'_>,
        mut read: impl FnMut(u64, u8) -> u32,
    ) -> Self {
        let Sources {
            ioapics,
            cores,
            msi,
            msix,
            ecam,
        } = sources;
        let ioapics = ioapics
            .iter()
            .map(|&base| {
                let version = read(base, 1);
                (base & !0xfff, HostIoApic::new(version, |r| read(base, r)))
            })
            .collect();
        Self {
            inner: spin::Mutex::new(Inner {
                remap: Remap {
                    table,
                    invalidate,
                    cores: cores.to_vec(),
                    lent: alloc::vec![false; cores.len()],
                    entries: BTreeMap::new(),
                },
                ioapics,
                msi,
                ecam,
                msix,
            }),
            remapped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Whether `page` is a trapped I/O APIC's.
    pub fn is_ioapic(&self, page: u64) -> bool {
        self.inner.lock().ioapics.iter().any(|(b, _)| *b == page)
    }

    /// The pages the host's tables must leave unmapped.
    pub fn ioapic_pages(&self) -> Vec<u64> {
        self.inner.lock().ioapics.iter().map(|(b, _)| *b).collect()
    }

    /// Host core `apic_id` is lent to an enclave (or back): no IRTE of the host's may name it
    /// from now on. Lending retargets every host IRTE that names it to the first host core
    /// still the host's (or makes it not present when none is), each change invalidated before
    /// this returns, so no interrupt of a host device reaches the enclave's core afterwards.
    pub fn set_lent(&self, apic_id: u32, is_lent: bool) {
        let mut guard = self.inner.lock();
        let inner = &mut guard.remap;
        let Some(i) = inner.cores.iter().position(|&c| c == apic_id) else {
            return;
        };
        inner.lent[i] = is_lent;
        if !is_lent {
            return;
        }
        let spare = inner
            .cores
            .iter()
            .zip(&inner.lent)
            .find(|(_, &l)| !l)
            .map(|(&c, _)| c);
        let indices: Vec<IrteIndex> = inner.entries.values().copied().collect();
        for index in indices {
            let Some(raw) = inner.table.raw(index) else {
                continue;
            };
            let Ok(mut irte) = iommu::irte::Irte::from_raw(raw, false) else {
                continue;
            };
            if !irte.present || irte.dest != ApicDest::XApic(apic_id as u8) {
                continue;
            }
            match spare {
                Some(c) => irte.dest = ApicDest::XApic(c as u8),
                None => irte.present = false,
            }
            if let Ok(inv) = inner.table.set(HOST_OWNER, index, &irte) {
                (inner.invalidate)(inv.0);
            }
        }
    }

    /// Writes one IRTE owned by `owner` (an enclave's partition id, never [`HOST_OWNER`]) per
    /// target: fixed delivery, edge, physical destination core `apic_id`, host vector `vector`,
    /// accepted only from requester `sid`. Each is written and invalidated before this returns;
    /// on any failure the ones written are freed again and nothing is left.
    pub fn enclave_entries(
        &self,
        owner: u16,
        sid: u16,
        targets: &[(u32, u8)],
    ) -> Result<Vec<IrteIndex>, alloc::string::String> {
        if owner == HOST_OWNER {
            return Err("the host's owner id is not an enclave's".into());
        }
        let mut guard = self.inner.lock();
        let remap = &mut guard.remap;
        let mut written: Vec<IrteIndex> = Vec::with_capacity(targets.len());
        let mut failed = None;
        for &(apic_id, vector) in targets {
            let Ok(dest) = u8::try_from(apic_id) else {
                failed = Some(alloc::format!(
                    "core {apic_id} has an APIC id beyond xAPIC's 8 bits"
                ));
                break;
            };
            let index = match remap.table.alloc(owner) {
                Ok(i) => i,
                Err(e) => {
                    failed = Some(alloc::format!("no interrupt remapping entry left: {e:?}"));
                    break;
                }
            };
            written.push(index);
            let irte = iommu::irte::Irte::remapped(
                vector,
                ApicDest::XApic(dest),
                DestMode::Physical,
                DeliveryMode::Fixed,
                iommu::irte::TriggerMode::Edge,
                SourceValidation::RequesterId(iommu::SourceId(sid)),
            );
            match remap.table.set(owner, index, &irte) {
                Ok(inv) => (remap.invalidate)(inv.0),
                Err(e) => {
                    failed = Some(alloc::format!("writing IRTE {}: {e:?}", index.0));
                    break;
                }
            }
        }
        if let Some(why) = failed {
            for i in written {
                if let Ok(inv) = remap.table.free(owner, i) {
                    (remap.invalidate)(inv.0);
                }
            }
            return Err(why);
        }
        Ok(written)
    }

    /// Frees every IRTE of `owner` (an enclave going away), each invalidated before this
    /// returns.
    pub fn free_enclave_entries(&self, owner: u16) {
        if owner == HOST_OWNER {
            return;
        }
        let mut guard = self.inner.lock();
        let remap = &mut guard.remap;
        let invalidate = remap.invalidate;
        remap.table.free_all(owner, |inv| invalidate(inv.0));
    }

    /// Function `sid` leaves the host for an enclave: the IRTEs of its MSI capability and MSI-X
    /// table are freed (each invalidated before this returns), so no entry of the host's
    /// accepts its requester id any more.
    pub fn forget_source(&self, sid: u16) {
        let mut guard = self.inner.lock();
        let remap = &mut guard.remap;
        let invalidate = remap.invalidate;
        let keys: Vec<(Kind, u16)> = remap
            .entries
            .keys()
            .copied()
            .filter(|(k, _)| matches!(k, Kind::Msi(s) | Kind::Msix(s) if *s == sid))
            .collect();
        for key in keys {
            if let Some(i) = remap.entries.remove(&key) {
                if let Ok(inv) = remap.table.free(HOST_OWNER, i) {
                    invalidate(inv.0);
                }
            }
        }
    }

    /// Function `sid` is back from an enclave (reset): its shadows start over from what the
    /// device holds now (`read` gives its configuration dword at an offset).
    pub fn renew_source(&self, sid: u16, mut read: impl FnMut(u16) -> u32) {
        let mut guard = self.inner.lock();
        for f in guard.msi.iter_mut().filter(|f| f.sid == sid) {
            let cap = *f.shadow.cap();
            f.shadow = MsiShadow::new(cap, |o| read(u16::from(cap.offset) + o as u16));
        }
        for f in guard.msix.iter_mut().filter(|f| f.sid == sid) {
            f.shadow = MsixShadow::new(*f.shadow.cap());
        }
    }

    /// The function whose trapped MSI-X table covers `page`, if any.
    pub fn msix_page_owner(&self, page: u64) -> Option<u16> {
        self.inner
            .lock()
            .msix
            .iter()
            .find(|f| f.pages().any(|p| p == page & !0xfff))
            .map(|f| f.sid)
    }

    /// IRTEs in use, all owners.
    pub fn irtes_allocated(&self) -> usize {
        self.inner.lock().remap.table.allocated()
    }

    /// The ECAM pages of the functions whose MSI capability is trapped.
    pub fn config_pages(&self) -> Vec<u64> {
        let inner = self.inner.lock();
        match inner.ecam {
            Some(base) => inner
                .msi
                .iter()
                .map(|f| base + (u64::from(f.sid) << 12))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The function whose ECAM page holds `gpa` (trapped or not), and the ECAM base.
    fn ecam_function(&self, gpa: u64) -> Option<(u16, u64)> {
        let base = self.inner.lock().ecam?;
        let sid = u16::try_from(gpa.checked_sub(base)? >> 12).ok()?;
        Some((sid, base))
    }

    /// The function whose trapped ECAM page holds `gpa`, and the ECAM base.
    fn config_page(&self, gpa: u64) -> Option<(u16, u64)> {
        let inner = self.inner.lock();
        let base = inner.ecam?;
        let sid = u16::try_from(gpa.checked_sub(base)? >> 12).ok()?;
        inner
            .msi
            .iter()
            .any(|f| f.sid == sid)
            .then_some((sid, base))
    }

    /// The pages of the trapped MSI-X tables.
    pub fn msix_pages(&self) -> Vec<u64> {
        let inner = self.inner.lock();
        let mut v: Vec<u64> = inner.msix.iter().flat_map(|f| f.pages()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Functions whose MSI-X table is trapped.
    pub fn msix_functions(&self) -> usize {
        self.inner.lock().msix.len()
    }

    /// Functions whose MSI capability is trapped.
    pub fn msi_functions(&self) -> usize {
        self.inner.lock().msi.len()
    }

    /// IRTEs the host's sources hold.
    pub fn entries_in_use(&self) -> usize {
        self.inner.lock().remap.entries.len()
    }

    /// The host restarted: every I/O APIC pin masked, MSI disabled and MSI-X entries masked on
    /// the devices, the shadows rebuilt from the hardware, every host IRTE freed (a new boot
    /// programs its own).
    pub fn reset(&self, hw: &impl HostHw) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        for (base, apic) in inner.ioapics.iter_mut() {
            for pin in 0..apic.entries() {
                let reg = host_ioapic::REDTBL + 2 * pin as u8;
                let low = chip_read(hw, *base, reg);
                chip_write(hw, *base, reg, low | iommu::remap::rte::MASK as u32);
            }
            let version = chip_read(hw, *base, 1);
            *apic = HostIoApic::new(version, |r| chip_read(hw, *base, r));
        }
        // MSI off and every MSI-X entry masked on the devices (the host is stopped: nobody
        // else uses the configuration path), the shadows rebuilt from them.
        let path = inner.ecam.map_or(ConfigPath::Port, ConfigPath::Ecam);
        for f in &mut inner.msi {
            let cap = *f.shadow.cap();
            let control = u32::from(cap.offset) + 2;
            let v = config_physical(hw, path, f.sid, control, 2, None);
            config_physical(hw, path, f.sid, control, 2, Some(v & !1));
            f.shadow = MsiShadow::new(cap, |o| {
                config_physical(hw, path, f.sid, (u32::from(cap.offset) + o) & !3, 4, None)
            });
        }
        for f in &mut inner.msix {
            for n in 0..u64::from(f.shadow.table_len() / 16) {
                let ctrl = f.table + n * 16 + 12;
                let v = hw.device_mmio(ctrl, 4, None);
                hw.device_mmio(ctrl, 4, Some(v | 1));
            }
            f.shadow = MsixShadow::new(*f.shadow.cap());
        }
        let remap = &mut inner.remap;
        let inv = remap.invalidate;
        remap.table.free_all(HOST_OWNER, |i| inv(i.0));
        remap.entries.clear();
    }
}

fn chip_write(hw: &impl HostHw, base: u64, register: u8, value: u32) {
    hw.ioapic_mmio(base, host_ioapic::mmio::IOREGSEL, Some(u32::from(register)));
    hw.ioapic_mmio(base, host_ioapic::mmio::IOWIN, Some(value));
}

fn chip_read(hw: &impl HostHw, base: u64, register: u8) -> u32 {
    hw.ioapic_mmio(base, host_ioapic::mmio::IOREGSEL, Some(u32::from(register)));
    hw.ioapic_mmio(base, host_ioapic::mmio::IOWIN, None)
}

/// A host access of `size` bytes at `gpa` in a trapped I/O APIC's page: a read's value (the
/// access's width), or 0 after a write. An access that is not one of the chip's registers reads
/// all ones and writes nothing.
pub(super) fn ioapic_access(
    shared: &HostShared,
    hw: &impl HostHw,
    gpa: u64,
    size: u8,
    write: Option<u64>,
) -> u64 {
    let Some(irq) = shared.irq() else {
        return u64::MAX;
    };
    let mut guard = irq.inner.lock();
    let Inner { remap, ioapics, .. } = &mut *guard;
    let page = gpa & !0xfff;
    let Some(index) = ioapics.iter().position(|(b, _)| *b == page) else {
        return u64::MAX;
    };
    let base = ioapics[index].0;
    let apic = &mut ioapics[index].1;
    let offset = (gpa & 0xfff) as u32;
    let refused = || {
        let n = bump(&shared.counters.io_events);
        if rate_limited(n) {
            log::info!("host: {size}-byte I/O APIC access at {gpa:#x} refused");
        }
    };
    match write {
        None => match apic.mmio_read(offset, size) {
            Ok(IoApicRead::Value(v)) => u64::from(v),
            Ok(IoApicRead::Device { register, plan }) => {
                u64::from(plan.complete(chip_read(hw, base, register)))
            }
            Err(_) => {
                refused();
                u64::MAX
            }
        },
        Some(v) => {
            let mut p = remap.programmer(Kind::IoApic(index as u8), SourceValidation::None, irq);
            let wrote = match apic.mmio_write(offset, size, v as u32, &mut p) {
                Ok(w) => {
                    for r in w.registers.as_slice() {
                        chip_write(hw, base, r.register, r.value);
                    }
                    if let Some(vector) = w.eoi {
                        hw.ioapic_mmio(base, host_ioapic::mmio::EOI, Some(u32::from(vector)));
                    }
                    // The GSI of the entry written (registers 0x10 + 2·pin and the next).
                    let gsi_base: usize = ioapics[..index].iter().map(|(_, a)| a.entries()).sum();
                    w.registers
                        .as_slice()
                        .iter()
                        .find(|r| r.register >= 0x10)
                        .map(|r| (gsi_base + usize::from((r.register - 0x10) / 2)) as u32)
                }
                Err(_) => {
                    refused();
                    None
                }
            };
            drop(guard);
            if let Some(gsi) = wrote {
                // A channel's INTx follows its GSI's entry.
                shared.refresh_channel_intx(gsi);
            }
            0
        }
    }
}

impl HostShared {
    /// The host's I/O APIC entry for `gsi` as the host last wrote it. GSIs count the I/O
    /// APICs' pins in the MADT's order from 0 (each chip's GSI base is the sum of the pins
    /// before it, as on every machine atoll has met; a MADT with gaps between bases would
    /// shift this).
    pub fn ioapic_entry_for_gsi(&self, gsi: u32) -> Option<u64> {
        let irq = self.irq()?;
        let inner = irq.inner.lock();
        let mut base = 0u32;
        for (_, apic) in &inner.ioapics {
            let n = apic.entries() as u32;
            if gsi < base.saturating_add(n) {
                return apic.host_entry((gsi - base) as usize);
            }
            base = base.saturating_add(n);
        }
        None
    }

    /// Gives the host's interrupt sources to remapping (before the host runs).
    pub fn set_irq(&self, irq: HostIrq) -> bool {
        let mut set = false;
        self.irq.call_once(|| {
            set = true;
            irq
        });
        set
    }

    /// The host's interrupt remapping, once atoll turned it on.
    pub fn irq(&self) -> Option<&HostIrq> {
        self.irq.get()
    }

    /// Whether `gpa` is in a trapped I/O APIC's page.
    pub(super) fn is_ioapic(&self, gpa: u64) -> bool {
        self.irq().is_some_and(|i| i.is_ioapic(gpa & !0xfff))
    }

    /// Whether `gpa` is in a trapped MSI-X table's page.
    pub(super) fn is_msix_page(&self, gpa: u64) -> bool {
        self.irq().is_some_and(|i| {
            i.inner
                .lock()
                .msix
                .iter()
                .any(|f| f.pages().any(|p| p == gpa & !0xfff))
        })
    }

    /// Whether `gpa` is in a trapped function's ECAM page (an MSI capability's, or a PF's
    /// with guarded registers).
    pub(super) fn is_trapped_config(&self, gpa: u64) -> bool {
        self.irq().is_some_and(|i| {
            i.config_page(gpa).is_some()
                || i.ecam_function(gpa)
                    .is_some_and(|(sid, _)| self.hidden.has_guard(sid))
        })
    }

    /// The function whose trapped MSI-X table covers the page of `gpa`, if any.
    pub fn msix_page_owner(&self, gpa: u64) -> Option<u16> {
        self.irq().and_then(|i| i.msix_page_owner(gpa))
    }

    /// Whether the page of `gpa` is one a trap keeps unmapped for its own reasons (the control
    /// device's, an I/O APIC's, an MSI function's ECAM page, an MSI-X table's).
    pub fn is_trapped_page(&self, gpa: u64) -> bool {
        self.is_control_config(gpa)
            || self.control_registers_of(gpa).is_some()
            || self.is_ioapic(gpa)
            || self.is_trapped_config(gpa)
            || self.is_msix_page(gpa)
    }
}

/// A host access in a trapped MSI-X table's page: inside a table, the shadow (4 or 8 bytes,
/// naturally aligned; anything else reads all ones and writes nothing); elsewhere in the page
/// (the pending-bit array, other registers), the device as asked.
pub(super) fn msix_access(
    shared: &HostShared,
    hw: &impl HostHw,
    gpa: u64,
    size: u8,
    write: Option<u64>,
) -> u64 {
    let Some(irq) = shared.irq() else {
        return u64::MAX;
    };
    let mut guard = irq.inner.lock();
    let Inner { remap, msix, .. } = &mut *guard;
    // The page of a function an enclave owns: absent for the host, table and all.
    if msix
        .iter()
        .any(|f| shared.hidden.contains(f.sid) && f.pages().any(|p| p == gpa & !0xfff))
    {
        drop(guard);
        shared.hidden.refuse();
        return if write.is_some() { 0 } else { u64::MAX };
    }
    let inside = msix
        .iter_mut()
        .find(|f| gpa >= f.table && gpa < f.table + u64::from(f.shadow.table_len()));
    let Some(f) = inside else {
        drop(guard);
        return hw.device_mmio(gpa, size, write);
    };
    let offset = (gpa - f.table) as u32;
    match write {
        None => f.shadow.read(offset, size).unwrap_or(u64::MAX),
        Some(v) => {
            let sid = f.sid;
            let mut p = remap.programmer(
                Kind::Msix(sid),
                SourceValidation::RequesterId(iommu::SourceId(sid)),
                irq,
            );
            if let Ok(w) = f.shadow.write(offset, size, v, &mut p) {
                for pw in w.as_slice() {
                    hw.device_mmio(
                        f.table + u64::from(pw.offset),
                        pw.size,
                        Some(u64::from(pw.value)),
                    );
                }
            }
            0
        }
    }
}

/// A host access in a trapped function's ECAM page: its MSI capability answered by the
/// shadow, anything else performed on the hardware as asked.
pub(super) fn ecam_access(
    shared: &HostShared,
    hw: &impl HostHw,
    gpa: u64,
    size: u8,
    write: Option<u64>,
) -> u64 {
    let Some((sid, base)) = shared.irq().and_then(|i| i.ecam_function(gpa)) else {
        return u64::MAX;
    };
    if shared.hidden.contains(sid) {
        shared.hidden.refuse();
        return u64::MAX;
    }
    if !matches!(size, 1 | 2 | 4) || (gpa & 0xfff) + u64::from(size) > 0x1000 {
        return u64::MAX;
    }
    let offset = (gpa & 0xfff) as u32;
    if write.is_some() && shared.hidden.guarded(sid, offset, size) {
        let n = shared.hidden.refuse();
        if rate_limited(n) {
            log::info!(
                "host: {size}-byte write at {offset:#x} of {:02x}:{:02x}.{} refused: a VF of it is an enclave's ({n} so far)",
                sid >> 8,
                (sid >> 3) & 0x1f,
                sid & 7
            );
        }
        return 0;
    }
    let w = write.map(|v| v as u32);
    let v = match config_access(shared, hw, ConfigPath::Ecam(base), sid, offset, size, w) {
        Some(v) => v,
        None => hw.device_mmio(gpa, size, w.map(u64::from)) as u32,
    };
    u64::from(v)
}

/// A host function's MSI capability, trapped: its shadow and where its configuration space is.
pub struct MsiFunction {
    /// Requester id (bus << 8 | devfn).
    pub sid: u16,
    /// The shadow.
    pub shadow: MsiShadow,
}

impl MsiFunction {
    fn covers(&self, offset: u32, size: u8) -> bool {
        let cap = self.shadow.cap();
        let start = u32::from(cap.offset);
        offset < start + cap.len() && start < offset + u32::from(size)
    }
}

/// How a trapped configuration access reaches the hardware: ECAM (an address) or mechanism #1
/// (the latch to replay, under the host's configuration lock the caller holds).
#[derive(Clone, Copy)]
pub(super) enum ConfigPath {
    Ecam(u64),
    Port,
}

fn config_physical(
    hw: &impl HostHw,
    path: ConfigPath,
    sid: u16,
    offset: u32,
    size: u8,
    write: Option<u32>,
) -> u32 {
    match path {
        ConfigPath::Ecam(base) => {
            let at = base + (u64::from(sid) << 12) + u64::from(offset);
            hw.device_mmio(at, size, write.map(u64::from)) as u32
        }
        ConfigPath::Port => {
            let latch = 1u32 << 31 | u32::from(sid) << 8 | (offset & 0xfc);
            hw.port_out(0xcf8, 4, latch);
            let port = 0xcfc + (offset & 3) as u16;
            match write {
                Some(v) => {
                    hw.port_out(port, size, v);
                    0
                }
                None => hw.port_in(port, size),
            }
        }
    }
}

/// A host configuration access of `size` bytes at `offset` of function `sid`: `Some` (a read's
/// value) when it falls in a trapped MSI capability and atoll answered it, `None` when it is
/// not trapped (the caller performs it on the hardware). An access straddling the capability's
/// edge is answered as the shadow says (the capability's bytes) — the MSI model refuses
/// misaligned accesses, which then read all ones and write nothing.
pub(super) fn config_access(
    shared: &HostShared,
    hw: &impl HostHw,
    path: ConfigPath,
    sid: u16,
    offset: u32,
    size: u8,
    write: Option<u32>,
) -> Option<u32> {
    let irq = shared.irq()?;
    let mut guard = irq.inner.lock();
    let Inner { remap, msi, .. } = &mut *guard;
    let f = msi
        .iter_mut()
        .find(|f| f.sid == sid && f.covers(offset, size))?;
    let cap_offset = u32::from(f.shadow.cap().offset);
    let rel = offset - cap_offset.min(offset);
    Some(match write {
        None => match f.shadow.read(rel, size) {
            Ok(plan) => {
                let dev = if plan.needs_device() {
                    config_physical(hw, path, sid, offset, size, None)
                } else {
                    0
                };
                plan.complete(dev)
            }
            Err(_) => u32::MAX,
        },
        Some(v) => {
            let mut p = remap.programmer(
                Kind::Msi(sid),
                SourceValidation::RequesterId(iommu::SourceId(sid)),
                irq,
            );
            if let Ok(w) = f.shadow.write(rel, size, v, &mut p) {
                for pw in w.as_slice() {
                    config_physical(
                        hw,
                        path,
                        sid,
                        cap_offset + pw.offset,
                        pw.size,
                        Some(pw.value),
                    );
                }
            }
            0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interrupts_go_to_one_of_its_cores() {
        let cores = [0, 2, 5];
        let none = [false; 3];
        assert_eq!(host_target(&cores, &none, DestMode::Physical, 2), Some(2));
        assert_eq!(
            host_target(&cores, &none, DestMode::Physical, 1),
            None,
            "an enclave's core"
        );
        assert_eq!(
            host_target(&cores, &none, DestMode::Physical, 0xff),
            None,
            "broadcast"
        );
        // Flat logical: bit n is the host's n-th CPU; the lowest present bit wins.
        assert_eq!(
            host_target(&cores, &none, DestMode::Logical, 0b110),
            Some(2)
        );
        assert_eq!(
            host_target(&cores, &none, DestMode::Logical, 0b1000),
            None,
            "no 4th CPU"
        );
        assert_eq!(host_target(&cores, &none, DestMode::Logical, 0xff), Some(0));
        assert_eq!(host_target(&cores, &none, DestMode::Logical, 0), None);
        // A core lent to an enclave is no longer the host's to aim at.
        let lent = [false, true, false];
        assert_eq!(host_target(&cores, &lent, DestMode::Physical, 2), None);
        assert_eq!(host_target(&cores, &lent, DestMode::Logical, 0b010), None);
        assert_eq!(
            host_target(&cores, &lent, DestMode::Logical, 0b110),
            Some(5)
        );
    }

    struct VecIrt(Vec<[u64; 2]>);

    impl IrtMemory for VecIrt {
        fn entries(&self) -> usize {
            self.0.len()
        }
        fn read(&self, i: usize) -> [u64; 2] {
            self.0[i]
        }
        fn write_low(&mut self, i: usize, v: u64) {
            self.0[i][0] = v;
        }
        fn write_high(&mut self, i: usize, v: u64) {
            self.0[i][1] = v;
        }
    }

    static INVALIDATED: AtomicU64 = AtomicU64::new(0);
    fn count_invalidation(_: IrteIndex) {
        INVALIDATED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }

    #[test]
    fn lending_a_core_retargets_the_host_entries_naming_it() {
        let memory: &'static mut (dyn IrtMemory + Send) =
            alloc::boxed::Box::leak(alloc::boxed::Box::new(VecIrt(alloc::vec![[0, 0]; 16])));
        let owners: &'static mut [Option<u16>] =
            alloc::boxed::Box::leak(alloc::vec![None; 16].into_boxed_slice());
        let table = InterruptTable::new(memory, owners).unwrap();
        let irq = HostIrq::new(
            table,
            count_invalidation,
            Sources {
                ioapics: &[],
                cores: &[0, 2],
                msi: Vec::new(),
                msix: Vec::new(),
                ecam: None,
            },
            |_, _| 0,
        );
        let interrupt = Interrupt::from_msi(0xfee0_2000, 0x41).expect("a fixed MSI to APIC id 2");
        let index = {
            let mut g = irq.inner.lock();
            let remap = &mut g.remap;
            let mut p = remap.programmer(Kind::Msi(0x28), SourceValidation::None, &irq);
            p.program(0, &interrupt).expect("core 2 is the host's")
        };
        let dest = |irq: &HostIrq| {
            let raw = irq.inner.lock().remap.table.raw(index).unwrap();
            let e = iommu::irte::Irte::from_raw(raw, false).unwrap();
            (e.present, e.dest)
        };
        assert_eq!(dest(&irq), (true, ApicDest::XApic(2)));
        let before = INVALIDATED.load(core::sync::atomic::Ordering::Relaxed);
        irq.set_lent(2, true);
        assert_eq!(
            dest(&irq),
            (true, ApicDest::XApic(0)),
            "retargeted to the host's other core"
        );
        assert!(
            INVALIDATED.load(core::sync::atomic::Ordering::Relaxed) > before,
            "and invalidated"
        );
        // Lending the last one leaves the entry not present.
        irq.set_lent(0, true);
        assert!(!dest(&irq).0);
        // And while lent, neither core may be programmed.
        let mut g = irq.inner.lock();
        let remap = &mut g.remap;
        let mut p = remap.programmer(Kind::Msi(0x28), SourceValidation::None, &irq);
        assert_eq!(p.program(1, &interrupt), None);
    }
}
