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
use atoll_devices::pci::msi::Remapper;
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

struct Inner {
    table: InterruptTable<'static, dyn IrtMemory + Send>,
    invalidate: Invalidate,
    /// The I/O APICs: page base, model.
    ioapics: Vec<(u64, HostIoApic)>,
    /// The host's cores' APIC ids, in its CPU order.
    cores: Vec<u32>,
    entries: BTreeMap<(Kind, u16), IrteIndex>,
}

/// The [`Remapper`] of one trapped source.
struct Programmer<'a> {
    table: &'a mut InterruptTable<'static, dyn IrtMemory + Send>,
    invalidate: Invalidate,
    entries: &'a mut BTreeMap<(Kind, u16), IrteIndex>,
    cores: &'a [u32],
    kind: Kind,
    validation: SourceValidation,
    remapped: &'a AtomicU64,
    refused: &'a AtomicU64,
}

/// The one host core an interrupt for `dest` (`mode`) goes to, if the host may send it there.
pub fn host_target(cores: &[u32], mode: DestMode, dest: u32) -> Option<u32> {
    match mode {
        DestMode::Physical => cores.iter().copied().find(|&c| c == dest),
        DestMode::Logical => (0..8)
            .find(|bit| dest & (1 << bit) != 0 && (*bit as usize) < cores.len())
            .map(|bit| cores[bit as usize]),
    }
}

impl Remapper for Programmer<'_> {
    fn program(&mut self, source: u16, interrupt: &Interrupt) -> Option<IrteIndex> {
        let allowed = !matches!(interrupt.delivery, DeliveryMode::Smi | DeliveryMode::Init);
        let target = host_target(self.cores, interrupt.dest_mode, interrupt.dest)
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
        let index = match self.entries.get(&key) {
            Some(&i) => i,
            None => match self.table.alloc(HOST_OWNER) {
                Ok(i) => {
                    self.entries.insert(key, i);
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
        match self.table.set(HOST_OWNER, index, &irte) {
            Ok(inv) => (self.invalidate)(inv.0),
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
        if let Some(i) = self.entries.remove(&(self.kind, source)) {
            if let Ok(inv) = self.table.free(HOST_OWNER, i) {
                (self.invalidate)(inv.0);
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
        ioapics: &[u64],
        cores: &[u32],
        mut read: impl FnMut(u64, u8) -> u32,
    ) -> Self {
        let ioapics = ioapics
            .iter()
            .map(|&base| {
                let version = read(base, 1);
                (base & !0xfff, HostIoApic::new(version, |r| read(base, r)))
            })
            .collect();
        Self {
            inner: spin::Mutex::new(Inner {
                table,
                invalidate,
                ioapics,
                cores: cores.to_vec(),
                entries: BTreeMap::new(),
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

    /// IRTEs the host's sources hold.
    pub fn entries_in_use(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// The host restarted: every pin masked on the chip, the shadows rebuilt from it, every
    /// host IRTE freed (a new boot programs its own).
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
        let inv = inner.invalidate;
        inner.table.free_all(HOST_OWNER, |i| inv(i.0));
        inner.entries.clear();
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
    let Inner {
        table,
        invalidate,
        ioapics,
        cores,
        entries,
    } = &mut *guard;
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
            let mut p = Programmer {
                table,
                invalidate: *invalidate,
                entries,
                cores,
                kind: Kind::IoApic(index as u8),
                validation: SourceValidation::None,
                remapped: &irq.remapped,
                refused: &irq.refused,
            };
            match apic.mmio_write(offset, size, v as u32, &mut p) {
                Ok(w) => {
                    for r in w.registers.as_slice() {
                        chip_write(hw, base, r.register, r.value);
                    }
                    if let Some(vector) = w.eoi {
                        hw.ioapic_mmio(base, host_ioapic::mmio::EOI, Some(u32::from(vector)));
                    }
                }
                Err(_) => refused(),
            }
            0
        }
    }
}

impl HostShared {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interrupts_go_to_one_of_its_cores() {
        let cores = [0, 2, 5];
        assert_eq!(host_target(&cores, DestMode::Physical, 2), Some(2));
        assert_eq!(
            host_target(&cores, DestMode::Physical, 1),
            None,
            "an enclave's core"
        );
        assert_eq!(
            host_target(&cores, DestMode::Physical, 0xff),
            None,
            "broadcast"
        );
        // Flat logical: bit n is the host's n-th CPU; the lowest present bit wins.
        assert_eq!(host_target(&cores, DestMode::Logical, 0b110), Some(2));
        assert_eq!(
            host_target(&cores, DestMode::Logical, 0b1000),
            None,
            "no 4th CPU"
        );
        assert_eq!(host_target(&cores, DestMode::Logical, 0xff), Some(0));
        assert_eq!(host_target(&cores, DestMode::Logical, 0), None);
    }
}
