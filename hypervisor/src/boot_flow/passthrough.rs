//! Passing PCI functions through to enclaves (issue 13): the manager's side.
//!
//! **At boot** (before the host runs, [`probe_at_boot`]) atoll sizes the BARs of every endpoint
//! it found, with decoding off, and of every SR-IOV physical function's VF BARs (PCIe r4.0
//! §9.3.3.14: VF Enable is clear at boot, so no VF decodes while they are sized). A VF's own
//! header BARs read 0 (§9.3.4.1.11) and its vendor and device IDs 0xFFFF (§9.3.4.1.1–2): what an
//! enclave is shown comes from the PF — its vendor, the SR-IOV capability's VF Device ID, and
//! VF BAR*n* + size × VF index where the host's Linux placed the VF BARs.
//!
//! **At create** ([`assign`]), for each function the description names, in this order, each
//! step undone if a later one fails:
//!
//! 1. resolve it: a function found at boot, or VF *i* of a PF whose SR-IOV capability has VF
//!    Enable and VF Memory Space Enable set and at least *i* + 1 VFs; every BAR must lie in the
//!    host's MMIO (never RAM, atoll's or the pool's memory) and below 4 GiB;
//! 2. take it from the host: its configuration space reads as absent (`run::host::hidden`), its
//!    ECAM page and BAR pages leave the host's second stage, and atoll waits until no host core
//!    can still reach them;
//! 3. reset it (FLR), so nothing the host left in it survives;
//! 4. move it into the enclave's VT-d domain (its RAM at guest-physical addresses, nothing else);
//! 5. write its interrupt remapping entries: one per MSI-X entry and vCPU, owned by the enclave,
//!    source-validated to the function ([`crate::run::vplat::passthrough`]);
//! 6. put the model ([`atoll_devices::pci::passthrough::PassThrough`]) on the enclave's bus 0 at
//!    device 1 + *n*, its BARs placed in the platform's PCI window and mapped uncacheable in the
//!    enclave's second stage, all but the MSI-X table's pages.
//!
//! **When the enclave ends** ([`release`]: destroyed, failed, crashed; after its vCPUs stopped
//! and before its RAM is freed) each function's DMA is blocked, it is reset (FLR), the
//! enclave's IRTEs are freed, and it goes back into the host's domain and configuration space.
//! A function that does not come back from its reset stays blocked and hidden: the host never
//! gets a function in an unknown state.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use atoll::partition::machine::PciAddress;
use atoll::run::vplat::passthrough::{
    DEVICE_VECTORS, DEVICE_VECTOR_BASE, PCI_MMIO_BASE, PCI_MMIO_END,
};
use atoll::run::vplat::Shared;
use atoll_devices::pci::config::BarKind;
use atoll_devices::pci::msi::Remapper;
use atoll_devices::pci::passthrough::{Hardware, HwBar, Identity, PassThrough};
use atoll_devices::pci::{sriov, Bdf, DevFn};
use iommu::irte::IrteIndex;
use iommu::remap::{Interrupt, RemapError};

/// What atoll learnt at boot.
struct Boot {
    /// The segment 0 ECAM window's base.
    ecam: u64,
    /// Its last bus.
    last_bus: u8,
    /// Endpoints found: their BARs.
    endpoints: BTreeMap<u16, [Option<HwBar>; 6]>,
    /// SR-IOV physical functions: requester id, the capability's offset, their VF BARs.
    pfs: Vec<(u16, u16, [Option<HwBar>; 6])>,
}

static BOOT: spin::Once<Boot> = spin::Once::new();

/// The configuration register of `sid` at `offset` in the ECAM window at `ecam`, if atoll's
/// identity map covers it.
fn ecam_at(ecam: u64, sid: u16, offset: u16) -> Option<u64> {
    if offset >= 4096 {
        return None;
    }
    let a = ecam
        .checked_add(u64::from(sid) << 12)?
        .checked_add(u64::from(offset))?;
    (a + 4 <= atoll::hw::IDENTITY_MAPPED_END).then_some(a)
}

fn cfg_read32(ecam: u64, sid: u16, offset: u16) -> u32 {
    match ecam_at(ecam, sid, offset & !3) {
        // SAFETY: a dword of the segment 0 ECAM window (the firmware's MCFG), identity-mapped
        // uncacheable for atoll below IDENTITY_MAPPED_END; a configuration read changes nothing.
        Some(a) => unsafe { core::ptr::read_volatile(a as *const u32) },
        None => u32::MAX,
    }
}

fn cfg_read16(ecam: u64, sid: u16, offset: u16) -> u16 {
    sriov::read16(&mut |o| cfg_read32(ecam, sid, o), offset)
}

fn cfg_write(ecam: u64, sid: u16, offset: u16, size: u8, value: u32) {
    let Some(a) = ecam_at(ecam, sid, offset) else {
        return;
    };
    match size {
        // SAFETY: as in `cfg_read32`: one naturally aligned configuration register of a
        // function atoll owns at this moment (at boot, before the host runs, or one taken from
        // the host for an enclave); an ECAM store reaches only that function's register.
        1 => unsafe { core::ptr::write_volatile(a as *mut u8, value as u8) },
        // SAFETY: as above.
        2 if a & 1 == 0 => unsafe { core::ptr::write_volatile(a as *mut u16, value as u16) },
        // SAFETY: as above.
        4 if a & 3 == 0 => unsafe { core::ptr::write_volatile(a as *mut u32, value) },
        _ => {}
    }
}

/// Sizes the BARs of the endpoints found at boot and the VF BARs of the SR-IOV PFs among them
/// (before the host runs: nothing else touches configuration space).
pub fn probe_at_boot(found: &[atoll_devices::pci::scan::Function], ecam: u64, last_bus: u8) {
    let mut endpoints = BTreeMap::new();
    let mut pfs = Vec::new();
    for f in found.iter().filter(|f| f.bridge.is_none()) {
        let sid = u16::from(f.bdf.bus) << 8 | u16::from(f.bdf.devfn.bits());
        if cfg_read32(ecam, sid, 0x0c) >> 16 & 0x7f != 0 {
            continue;
        }
        // Decoding off while the BARs hold all ones.
        let cmd = cfg_read16(ecam, sid, 0x04);
        cfg_write(ecam, sid, 0x04, 2, u32::from(cmd & !0x3));
        let bars = sriov::size_bars(
            |o| cfg_read32(ecam, sid, o),
            |o, v| cfg_write(ecam, sid, o, 4, v),
            0x10,
        );
        cfg_write(ecam, sid, 0x04, 2, u32::from(cmd));
        endpoints.insert(sid, bars);
        if let Some(cap) = sriov::find_ext_cap(|o| cfg_read32(ecam, sid, o), sriov::EXT_CAP_SRIOV) {
            let ctl = cfg_read16(ecam, sid, cap + sriov::reg::CONTROL);
            if ctl & sriov::control::VF_ENABLE != 0 {
                log::warn!(
                    "passthrough: {} has its VFs enabled at boot: not sized, not passed through",
                    f.bdf
                );
                continue;
            }
            let vf_bars = sriov::size_bars(
                |o| cfg_read32(ecam, sid, o),
                |o, v| cfg_write(ecam, sid, o, 4, v),
                cap + sriov::reg::VF_BAR0,
            );
            log::info!(
                "passthrough: {} is an SR-IOV PF (capability at {cap:#x}, VF BARs {:?})",
                f.bdf,
                vf_bars.map(|b| b.map(|b| b.size))
            );
            pfs.push((sid, cap, vf_bars));
        }
    }
    BOOT.call_once(|| Boot {
        ecam,
        last_bus,
        endpoints,
        pfs,
    });
}

/// A function to pass through, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Its requester id.
    pub sid: u16,
    /// What the guest is shown.
    pub identity: Identity,
    /// Its BARs: kind, size and where the host placed them.
    pub bars: [Option<(HwBar, u64)>; 6],
    /// The PF and VF index, for a VF.
    pub vf_of: Option<(u16, u16)>,
}

fn bdf_of(sid: u16) -> Bdf {
    Bdf {
        bus: (sid >> 8) as u8,
        devfn: DevFn::from_bits(sid as u8),
    }
}

fn bar_base(ecam: u64, sid: u16, first: u16, i: usize, bar: &HwBar) -> u64 {
    sriov::bar_base(|o| cfg_read32(ecam, sid, o), first, i, bar)
}

/// Finds what `addr` names: a function found at boot, or a VF of an SR-IOV PF found at boot.
pub fn resolve(addr: &PciAddress) -> Result<Target, String> {
    let boot = BOOT
        .get()
        .ok_or("atoll found no PCI segment it can pass functions through from")?;
    if addr.segment != 0 {
        return Err(alloc::format!("{addr}: only segment 0 is supported"));
    }
    let sid = addr.requester_id();
    if (sid >> 8) as u8 > boot.last_bus {
        return Err(alloc::format!(
            "{addr}: bus beyond the last one the firmware numbered"
        ));
    }
    let id = cfg_read32(boot.ecam, sid, 0);
    if id & 0xffff != 0xffff {
        let Some(sizes) = boot.endpoints.get(&sid) else {
            return Err(alloc::format!(
                "{addr} is not an endpoint atoll found at boot (a bridge, or hot-plugged)"
            ));
        };
        if boot.pfs.iter().any(|(pf, _, _)| *pf == sid) {
            return Err(alloc::format!(
                "{addr} is an SR-IOV physical function: it stays with the host (its VFs depend on it); pass a VF through instead"
            ));
        }
        let mut bars = [None; 6];
        for (i, b) in sizes.iter().enumerate() {
            if let Some(b) = b {
                bars[i] = Some((*b, bar_base(boot.ecam, sid, 0x10, i, b)));
            }
        }
        return Ok(Target {
            sid,
            identity: Identity {
                vendor: id as u16,
                device: (id >> 16) as u16,
            },
            bars,
            vf_of: None,
        });
    }
    for &(pf, cap, vf_bars) in &boot.pfs {
        let state = sriov::SriovState::read(|o| cfg_read32(boot.ecam, pf, o), cap);
        let Some(i) = state.vf_index(pf, sid) else {
            continue;
        };
        if state.control & sriov::control::VF_MSE == 0 {
            return Err(alloc::format!(
                "{addr} is VF {i} of {}, whose VF Memory Space Enable is clear",
                bdf_of(pf)
            ));
        }
        let vendor = cfg_read16(boot.ecam, pf, 0);
        let mut bars = [None; 6];
        for (j, b) in vf_bars.iter().enumerate() {
            if let Some(b) = b {
                let base = bar_base(boot.ecam, pf, cap + sriov::reg::VF_BAR0, j, b);
                if base == 0 {
                    return Err(alloc::format!(
                        "{addr}: the host has not placed {}'s VF BAR{j}",
                        bdf_of(pf)
                    ));
                }
                bars[j] = Some((*b, base + u64::from(i) * b.size));
            }
        }
        return Ok(Target {
            sid,
            identity: Identity {
                vendor,
                device: state.vf_device,
            },
            bars,
            vf_of: Some((pf, i)),
        });
    }
    Err(alloc::format!(
        "{addr}: no such function (nothing answers there, and it is no enabled VF of an SR-IOV PF atoll found at boot)"
    ))
}

/// The address of VF `index` of PF `pf` (an SR-IOV PF atoll found at boot, its VFs enabled).
pub fn resolve_vf(pf: &PciAddress, index: u16) -> Result<String, String> {
    let boot = BOOT
        .get()
        .ok_or("atoll found no PCI segment it can pass functions through from")?;
    let sid = pf.requester_id();
    let &(_, cap, _) = boot
        .pfs
        .iter()
        .find(|(p, _, _)| *p == sid)
        .ok_or_else(|| alloc::format!("{pf} is no SR-IOV PF atoll found at boot"))?;
    let state = sriov::SriovState::read(|o| cfg_read32(boot.ecam, sid, o), cap);
    let enabled = if state.control & sriov::control::VF_ENABLE == 0 {
        0
    } else {
        state.num_vfs
    };
    if index >= enabled {
        return Err(alloc::format!(
            "{pf} has no VF {index} ({enabled} enabled): run atoll vf {pf} --count N first"
        ));
    }
    let rid =
        u32::from(sid) + u32::from(state.first_offset) + u32::from(index) * u32::from(state.stride);
    let rid =
        u16::try_from(rid).map_err(|_| alloc::format!("{pf}: VF {index} is beyond bus 255"))?;
    Ok(alloc::format!("0000:{}", bdf_of(rid)))
}

/// Every function `c` names: its `devices`, then its `vf`s resolved to addresses.
pub fn functions_of(c: &atoll::partition::config::EnclaveConfig) -> Result<Vec<String>, String> {
    let mut out = c.devices.clone();
    for v in &c.vf {
        let pf = PciAddress::parse(&v.pf)
            .ok_or_else(|| alloc::format!("{}: not a PCI address", v.pf))?;
        let a = resolve_vf(&pf, v.index)?;
        if out
            .iter()
            .any(|d| PciAddress::parse(d) == PciAddress::parse(&a))
        {
            return Err(alloc::format!(
                "{a} (VF {} of {pf}) is named twice",
                v.index
            ));
        }
        out.push(a);
    }
    Ok(out)
}

/// The real function, reached through ECAM and its BARs in atoll's identity map.
pub struct EcamFunction {
    ecam: u64,
    sid: u16,
    /// Per BAR: host-physical base and size.
    bars: [Option<(u64, u64)>; 6],
}

impl EcamFunction {
    fn bar_addr(&self, bar: u8, offset: u64, size: u8) -> Option<u64> {
        let (base, len) = self.bars.get(usize::from(bar)).copied().flatten()?;
        let end = offset.checked_add(u64::from(size))?;
        let a = base.checked_add(offset)?;
        (end <= len
            && a + u64::from(size) <= atoll::hw::IDENTITY_MAPPED_END
            && a % u64::from(size) == 0)
            .then_some(a)
    }
}

impl Hardware for EcamFunction {
    fn config_read32(&mut self, offset: u16) -> u32 {
        if offset >= 4096 {
            return u32::MAX;
        }
        cfg_read32(self.ecam, self.sid, offset)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        if offset < 4096 {
            cfg_write(self.ecam, self.sid, offset, size, value);
        }
    }

    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
        let Some(a) = self.bar_addr(bar, offset, size) else {
            return u64::MAX;
        };
        // The four widths, each one volatile access: `a` is inside BAR `bar` of the function
        // passed through (checked against the size atoll found at boot), naturally aligned,
        // identity-mapped uncacheable for atoll (the BAR lies in the host's MMIO below 4 GiB,
        // checked at create); the function is the enclave's, so the access reaches nothing else.
        match size {
            // SAFETY: as above, a byte.
            1 => u64::from(unsafe { core::ptr::read_volatile(a as *const u8) }),
            // SAFETY: as above, a word.
            2 => u64::from(unsafe { core::ptr::read_volatile(a as *const u16) }),
            // SAFETY: as above, a dword.
            4 => u64::from(unsafe { core::ptr::read_volatile(a as *const u32) }),
            // SAFETY: as above, a qword.
            _ => unsafe { core::ptr::read_volatile(a as *const u64) },
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) {
        let Some(a) = self.bar_addr(bar, offset, size) else {
            return;
        };
        // As in `bar_read`: one naturally aligned volatile store inside the function's BAR.
        match size {
            // SAFETY: as above, a byte.
            1 => unsafe { core::ptr::write_volatile(a as *mut u8, value as u8) },
            // SAFETY: as above, a word.
            2 => unsafe { core::ptr::write_volatile(a as *mut u16, value as u16) },
            // SAFETY: as above, a dword.
            4 => unsafe { core::ptr::write_volatile(a as *mut u32, value as u32) },
            // SAFETY: as above, a qword.
            _ => unsafe { core::ptr::write_volatile(a as *mut u64, value) },
        }
    }

    fn delay_ms(&mut self, ms: u32) {
        atoll::hw::spin_wait_us(u64::from(ms) * 1000);
    }
}

/// The enclave's side of its function's MSI-X entries: entry *e* sent by the guest to vCPU *d*
/// uses the IRTE written for (*e*, *d*) at create, and host vector `first_vector` + *e* on
/// vCPU *d*'s core stands for the guest's vector.
pub struct EnclaveMsi {
    shared: Arc<Shared>,
    first_vector: u8,
    entries: usize,
    /// `entries × vcpus` handles, entry-major.
    handles: Vec<IrteIndex>,
}

impl Remapper for EnclaveMsi {
    fn program(&mut self, source: u16, interrupt: &Interrupt) -> Option<IrteIndex> {
        use iommu::irte::DeliveryMode;
        let e = usize::from(source);
        if e >= self.entries
            || interrupt.vector < 16
            || !matches!(
                interrupt.delivery,
                DeliveryMode::Fixed | DeliveryMode::LowestPriority
            )
        {
            return None;
        }
        let d = self.shared.vcpu_for(interrupt.dest, interrupt.dest_mode)?;
        let host_vector = self.first_vector.checked_add(source as u8)?;
        if !self
            .shared
            .device_routes
            .set(d, host_vector, interrupt.vector)
        {
            return None;
        }
        self.handles
            .get(e * self.shared.mailboxes.len() + d)
            .copied()
    }

    fn block(&mut self, _source: u16, _reason: RemapError) {
        // The entry stays masked on the device; its IRTEs stay (written once, at create) and
        // the route is overwritten when the guest programs the entry again.
    }
}

/// A remapper for resetting a function on the manager's side: nothing is programmed.
struct NoRemap;

impl Remapper for NoRemap {
    fn program(&mut self, _source: u16, _interrupt: &Interrupt) -> Option<IrteIndex> {
        None
    }
    fn block(&mut self, _source: u16, _reason: RemapError) {}
}

/// A function an enclave owns.
struct Assigned {
    sid: u16,
    target: Target,
    /// The host's pages atoll unmapped for it.
    host_pages: Vec<u64>,
    /// Whether it is in the enclave's VT-d domain (or blocked on the way).
    in_domain: bool,
    /// Whether its PF's guard counts it.
    pf_guarded: bool,
    /// Whether atoll has reset it (or begun to): from then on it goes back to the host only
    /// after a reset that worked.
    touched: bool,
}

/// Every enclave's functions, by partition id (the manager's alone).
static ASSIGNED: spin::Mutex<BTreeMap<u16, Vec<Assigned>>> = spin::Mutex::new(BTreeMap::new());

/// PFs whose SR-IOV capability is guarded from the host (`run::host::hidden`): how many of
/// their VFs enclaves own, and the host's pages atoll unmapped to trap their ECAM page.
static GUARDED_PFS: spin::Mutex<BTreeMap<u16, (usize, Vec<u64>)>> =
    spin::Mutex::new(BTreeMap::new());

/// The SR-IOV capability's offset of PF `pf`, from the boot probe.
fn sriov_cap(pf: u16) -> Option<u16> {
    BOOT.get()?
        .pfs
        .iter()
        .find(|(sid, _, _)| *sid == pf)
        .map(|(_, cap, _)| *cap)
}

/// The host may no longer write PF `pf`'s SR-IOV capability (one more of its VFs is an
/// enclave's): the guard first, then its ECAM page unmapped (unless a trap keeps it so).
fn guard_pf(pf: u16, host: &mut super::host::Host) -> Result<(), String> {
    let mut guarded = GUARDED_PFS.lock();
    if let Some(g) = guarded.get_mut(&pf) {
        g.0 += 1;
        return Ok(());
    }
    let cap = sriov_cap(pf).ok_or("the PF's SR-IOV capability is unknown")?;
    let ecam = ecam().ok_or("no ECAM window")?;
    let page = ecam + (u64::from(pf) << 12);
    let shared = host.run.shared.clone();
    let already = shared.is_trapped_page(page);
    shared
        .hidden
        .guard(pf, cap, cap + sriov::reg::LEN)
        .map_err(|e| alloc::format!("guarding the PF: {e:?}"))?;
    let pages = if already {
        Vec::new()
    } else {
        alloc::vec![page]
    };
    if let Err(e) = host.unmap_pages(&pages) {
        shared.hidden.unguard(pf);
        return Err(e);
    }
    guarded.insert(pf, (1, pages));
    Ok(())
}

/// One VF of `pf` fewer is an enclave's: the last one drops the guard.
fn unguard_pf(pf: u16, host: Option<&mut super::host::Host>) -> Result<(), String> {
    let mut guarded = GUARDED_PFS.lock();
    let Some(g) = guarded.get_mut(&pf) else {
        return Ok(());
    };
    g.0 -= 1;
    if g.0 > 0 {
        return Ok(());
    }
    let (_, pages) = guarded.remove(&pf).unwrap_or_default();
    match host {
        Some(h) => {
            // The page mapped again first: while the guard stands, an access is still served.
            let shown = h.show_pages(&pages);
            h.run.shared.hidden.unguard(pf);
            shown
        }
        None => Ok(()),
    }
}

fn ecam() -> Option<u64> {
    BOOT.get().map(|b| b.ecam)
}

/// Resets `t` through a model built for the purpose (the enclave's own model may be gone).
fn reset(t: &Target) -> Result<(), String> {
    let ecam = ecam().ok_or("no ECAM window")?;
    let hw = EcamFunction {
        ecam,
        sid: t.sid,
        bars: t.bars.map(|b| b.map(|(bar, at)| (at, bar.size))),
    };
    // A function's own BARs go back to 0 in an FLR (a VF's live in its PF and survive it):
    // the header's BAR registers are put back, so its BARs stay where atoll checked them.
    let saved: Option<[u32; 6]> = t
        .vf_of
        .is_none()
        .then(|| core::array::from_fn(|i| cfg_read32(ecam, t.sid, 0x10 + 4 * i as u16)));
    let mut m = PassThrough::new(
        hw,
        NoRemap,
        t.identity,
        t.bars.map(|b| b.map(|(bar, _)| bar)),
    )
    .map_err(|e| alloc::format!("{e:?}"))?;
    let result = m
        .reset()
        .map_err(|e| alloc::format!("function level reset: {e:?}"));
    if let Some(bars) = saved {
        for (i, v) in bars.iter().enumerate() {
            cfg_write(ecam, t.sid, 0x10 + 4 * i as u16, 4, *v);
        }
    }
    result
}

/// The 4 KiB pages of `t`'s BARs.
fn bar_pages(t: &Target) -> impl Iterator<Item = u64> + '_ {
    t.bars.iter().flatten().flat_map(|(bar, at)| {
        let first = at & !0xfff;
        let end = at.saturating_add(bar.size.max(1));
        (first..end).step_by(4096)
    })
}

/// Where `t`'s BARs may be: entirely the host's MMIO below 4 GiB, never the ECAM window (the
/// enclave would reach other functions' configuration spaces), never a page a trap of atoll's
/// keeps (another function's MSI-X table, an I/O APIC, the control device), never another
/// passed-through function's BAR.
fn check_bars(
    addr: &PciAddress,
    t: &Target,
    host: &super::host::Host,
    ecam: u64,
) -> Result<(), String> {
    let ecam_end = ecam.saturating_add(256 << 20);
    let taken: Vec<(u64, u64)> = ASSIGNED
        .lock()
        .values()
        .flatten()
        .flat_map(|a| {
            a.target
                .bars
                .iter()
                .flatten()
                .map(|(b, at)| (*at, at + b.size))
        })
        .collect();
    for (i, b) in t.bars.iter().enumerate() {
        let Some((bar, at)) = b else { continue };
        let end = at.saturating_add(bar.size);
        let why = if !host.is_mmio(*at, bar.size) || end > atoll::hw::IDENTITY_MAPPED_END {
            "not entirely the host's MMIO below 4 GiB"
        } else if *at < ecam_end && ecam < end {
            "over the PCI configuration (ECAM) window"
        } else if taken.iter().any(|&(s, e)| *at < e && s < end) {
            "over another passed-through function's BAR"
        } else {
            let shared = &host.run.shared;
            let own_table = |p: u64| shared.msix_page_owner(p) == Some(t.sid);
            match (at & !0xfff..end)
                .step_by(4096)
                .find(|&p| shared.is_trapped_page(p) && !own_table(p))
            {
                Some(_) => "over a page atoll traps for the host (another function's MSI-X table, an I/O APIC, the control device)",
                None => continue,
            }
        };
        return Err(alloc::format!(
            "{addr}: BAR{i} at {at:#x} ({} bytes) is {why}",
            bar.size
        ));
    }
    Ok(())
}

/// Gives enclave `id` (named `name`, vCPU *i* on core `cores[i]`, RAM `ram`) the functions its
/// description names: see the module docs. `map` maps guest-physical `gpa` to host-physical
/// `hpa` (`len` bytes, uncacheable) in the enclave's second stage.
#[allow(clippy::too_many_arguments)]
pub fn assign(
    id: u16,
    name: &str,
    devices: &[String],
    cores: &[u32],
    ram: boot::PhysRange,
    shared: &Arc<Shared>,
    host: Option<&mut super::host::Host>,
    map: &mut dyn FnMut(u64, u64, u64) -> Result<(), String>,
) -> Result<(), String> {
    if devices.is_empty() {
        return Ok(());
    }
    let host = host.ok_or(
        "passing a function through needs the host partition (atoll takes it from the host and gives it back)",
    )?;
    let result = assign_all(id, name, devices, cores, ram, shared, host, map);
    if result.is_err() {
        let _ = release(id, Some(host));
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn assign_all(
    id: u16,
    name: &str,
    devices: &[String],
    cores: &[u32],
    ram: boot::PhysRange,
    shared: &Arc<Shared>,
    host: &mut super::host::Host,
    map: &mut dyn FnMut(u64, u64, u64) -> Result<(), String>,
) -> Result<(), String> {
    let run_shared = host.run.shared.clone();
    let irq = run_shared
        .irq()
        .ok_or("passing a function through needs VT-d interrupt remapping, which is off")?;
    let ecam = ecam().ok_or("no ECAM window")?;
    let mut next_vector = 0usize;
    let mut next_gpa = PCI_MMIO_BASE;
    for (n, d) in devices.iter().enumerate() {
        let addr = PciAddress::parse(d).ok_or_else(|| alloc::format!("{d}: not a PCI address"))?;
        let t = resolve(&addr)?;
        check_bars(&addr, &t, host, ecam)?;
        // 2. From the host.
        run_shared.hidden.hide(t.sid).map_err(|e| match e {
            atoll::run::host::hidden::HideError::AlreadyHidden => {
                alloc::format!("{addr} is passed through to another enclave already")
            }
            atoll::run::host::hidden::HideError::Full => alloc::format!(
                "{addr}: {} functions are passed through already (the most at once)",
                atoll::run::host::hidden::MAX_HIDDEN
            ),
        })?;
        // The host's own interrupt entries for it (a function it had MSI or MSI-X for) go: no
        // IRTE of the host's accepts its requester id any more.
        irq.forget_source(t.sid);
        let mut a = Assigned {
            sid: t.sid,
            target: t.clone(),
            host_pages: Vec::new(),
            in_domain: false,
            pf_guarded: false,
            touched: false,
        };
        let mut pages = Vec::new();
        let mut taken = host.hide_pages(
            boot::HostPhysAddr::new(ecam + (u64::from(t.sid) << 12)),
            4096,
        );
        for (bar, at) in t.bars.iter().flatten() {
            match taken {
                Ok(p) => {
                    pages.extend(p);
                    taken =
                        host.hide_pages(boot::HostPhysAddr::new(*at & !0xfff), bar.size.max(4096));
                }
                Err(_) => break,
            }
        }
        let taken = taken.map(|p| pages.extend(p));
        a.host_pages = pages;
        // Its PF's SR-IOV capability: the host may no longer disable it or move its BARs.
        let guarded = match (&taken, t.vf_of) {
            (Ok(()), Some((pf, _))) => Some(guard_pf(pf, host)),
            _ => None,
        };
        a.pf_guarded = matches!(guarded, Some(Ok(())));
        ASSIGNED.lock().entry(id).or_default().push(a);
        taken.map_err(|e| alloc::format!("{addr}: {e}"))?;
        if let Some(Err(e)) = guarded {
            return Err(alloc::format!("{addr}: {e}"));
        }
        // The host can no longer change where it decodes (hidden, its PF guarded, every host
        // core flushed): what was checked must still hold.
        if resolve(&addr).as_ref() != Ok(&t) {
            return Err(alloc::format!(
                "{addr}: the host moved the function (or its PF's VFs) while atoll took it"
            ));
        }
        // 3. Reset.
        if let Some(list) = ASSIGNED.lock().get_mut(&id) {
            if let Some(a) = list.iter_mut().find(|a| a.sid == t.sid) {
                a.touched = true;
            }
        }
        reset(&t).map_err(|e| alloc::format!("{addr}: {e}"))?;
        // 4. Its DMA into the enclave's RAM only.
        if let Some(list) = ASSIGNED.lock().get_mut(&id) {
            if let Some(a) = list.iter_mut().find(|a| a.sid == t.sid) {
                a.in_domain = true;
            }
        }
        {
            let mut guard = super::iommu::VTD.lock();
            let v = guard.as_mut().ok_or("no IOMMU")?;
            v.give(id, name, t.sid, ram)
                .map_err(|e| alloc::format!("{addr}: {e}"))?;
            // Host devices' DMA no longer reaches its BARs (peer to peer through the host's
            // domain).
            let pages: Vec<u64> = bar_pages(&t).collect();
            v.host_dma_unmap(&pages)
                .map_err(|e| alloc::format!("{addr}: {e}"))?;
        }
        // 5. Interrupt remapping entries: (entry, vCPU), entry-major.
        let mut hw = EcamFunction {
            ecam,
            sid: t.sid,
            bars: t.bars.map(|b| b.map(|(bar, at)| (at, bar.size))),
        };
        let caps =
            atoll_devices::pci::msi::walk_capabilities(|off| hw.config_read32(u16::from(off)))
                .map_err(|e| alloc::format!("{addr}: capability list: {e:?}"))?;
        let msix = caps
            .msix
            .ok_or_else(|| alloc::format!("{addr} has no MSI-X capability"))?;
        let entries = usize::from(msix.table_size.max(1));
        if next_vector + entries > DEVICE_VECTORS {
            return Err(alloc::format!(
                "{addr}: {entries} MSI-X entries; an enclave's functions may have {DEVICE_VECTORS} at most"
            ));
        }
        let first_vector = DEVICE_VECTOR_BASE + next_vector as u8;
        let targets: Vec<(u32, u8)> = (0..entries)
            .flat_map(|e| cores.iter().map(move |&c| (c, first_vector + e as u8)))
            .collect();
        let handles = irq
            .enclave_entries(id, t.sid, &targets)
            .map_err(|e| alloc::format!("{addr}: {e}"))?;
        next_vector += entries;
        let remap = EnclaveMsi {
            shared: shared.clone(),
            first_vector,
            entries,
            handles,
        };
        // 6. On the enclave's bus, its BARs in the window.
        let mut model =
            PassThrough::new(hw, remap, t.identity, t.bars.map(|b| b.map(|(bar, _)| bar)))
                .map_err(|e| alloc::format!("{addr}: {e:?}"))?;
        let trapped = model.trapped_pages();
        for (i, b) in t.bars.iter().enumerate() {
            let Some((bar, at)) = b else { continue };
            let align = bar.size.max(4096);
            let base = next_gpa.div_ceil(align) * align;
            if base + bar.size > PCI_MMIO_END {
                return Err(alloc::format!("{addr}: the enclave's PCI window is full"));
            }
            next_gpa = base + bar.size.max(4096);
            let off = 0x10 + 4 * i as u16;
            let _ = atoll_devices::pci::bus::PciDevice::config_write(
                &mut model,
                off,
                &(base as u32).to_le_bytes(),
            );
            if matches!(bar.kind, BarKind::Memory64 { .. }) {
                let _ = atoll_devices::pci::bus::PciDevice::config_write(
                    &mut model,
                    off + 4,
                    &((base >> 32) as u32).to_le_bytes(),
                );
            }
            // Mapped straight to the device, page by page, except the table's pages (and a
            // BAR smaller than a page, whose page may hold another function's registers).
            if bar.size < 4096 {
                continue;
            }
            let mut page = 0;
            while page < bar.size {
                let trap = trapped.bar == i as u8
                    && page >= trapped.offset
                    && page < trapped.offset + trapped.len;
                if !trap {
                    map(base + page, at + page, 4096)?;
                }
                page += 4096;
            }
        }
        let devfn = DevFn::new(1 + n as u8, 0).ok_or("too many functions")?;
        shared
            .add_pci_function(devfn, Box::new(model))
            .map_err(|e| alloc::format!("{addr}: {e:?}"))?;
        log::info!(
            "passthrough: {addr} ({:04x}:{:04x}{}) is enclave '{name}''s 00:{:02x}.0: {entries} MSI-X entries, host vectors {first_vector:#x}..",
            t.identity.vendor,
            t.identity.device,
            match t.vf_of {
                Some((pf, i)) => alloc::format!(", VF {i} of {}", bdf_of(pf)),
                None => String::new(),
            },
            1 + n
        );
    }
    Ok(())
}

/// Stops enclave `id`'s functions without giving them back (its memory is kept: a core of it
/// was lost, so atoll cannot tell the enclave stopped): their DMA is blocked, bus mastering and
/// MSI-X are turned off on the device, and the enclave's IRTEs are freed, so neither memory nor
/// a core that is reused hears from them. They stay hidden from the host.
pub fn block(id: u16, host: Option<&mut super::host::Host>) {
    let sids: Vec<u16> = ASSIGNED
        .lock()
        .get(&id)
        .map(|l| l.iter().filter(|a| a.touched).map(|a| a.sid).collect())
        .unwrap_or_default();
    {
        let mut guard = super::iommu::VTD.lock();
        if let Some(v) = guard.as_mut() {
            for &sid in &sids {
                if let Err(e) = v.block_function(sid) {
                    log::error!("passthrough: {e}");
                }
            }
        }
    }
    if let Some(ecam) = ecam() {
        for &sid in &sids {
            quiet(ecam, sid);
        }
    }
    if let Some(irq) = host.as_deref().and_then(|h| h.run.shared.irq()) {
        irq.free_enclave_entries(id);
    }
}

/// Bus mastering off and MSI-X disabled and function-masked on the device, through ECAM.
fn quiet(ecam: u64, sid: u16) {
    let cmd = cfg_read16(ecam, sid, 0x04);
    cfg_write(ecam, sid, 0x04, 2, u32::from(cmd & !0x4) | 0x400);
    let caps =
        atoll_devices::pci::msi::walk_capabilities(|off| cfg_read32(ecam, sid, u16::from(off)));
    if let Some(msix) = caps.ok().and_then(|c| c.msix) {
        let at = u16::from(msix.offset) + 2;
        let ctl = cfg_read16(ecam, sid, at);
        // Enable (bit 15) off, Function Mask (bit 14) on (PCI 3.0 §6.8.2.3).
        cfg_write(ecam, sid, at, 2, u32::from((ctl & !0x8000) | 0x4000));
    }
}

/// Takes back enclave `id`'s functions (its vCPUs stopped; before its RAM is freed): see the
/// module docs. Returns what went wrong (the functions concerned stay blocked and hidden).
pub fn release(id: u16, host: Option<&mut super::host::Host>) -> Vec<String> {
    let Some(list) = ASSIGNED.lock().remove(&id) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    // 1. DMA stops before anything else (the RAM is freed after this returns).
    {
        let mut guard = super::iommu::VTD.lock();
        if let Some(v) = guard.as_mut() {
            for a in list.iter().filter(|a| a.in_domain) {
                if let Err(e) = v.block_function(a.sid) {
                    problems.push(e);
                }
            }
        }
    }
    // 2. Reset (a function the create gave up on before atoll began to reset it never reached
    // the enclave: it goes back as the host left it).
    let reset_ok: Vec<bool> = list
        .iter()
        .map(|a| {
            if !a.touched {
                return true;
            }
            match reset(&a.target) {
                Ok(()) => true,
                Err(e) => {
                    problems.push(alloc::format!("{}: {e}: kept from the host", bdf_of(a.sid)));
                    if let Some(ecam) = ecam() {
                        quiet(ecam, a.sid);
                    }
                    false
                }
            }
        })
        .collect();
    // 3. The enclave's IRTEs (the table is the host's: no host, no table).
    let mut host_ref = host;
    if let Some(irq) = host_ref.as_deref().and_then(|h| h.run.shared.irq()) {
        irq.free_enclave_entries(id);
    }
    // 4. Back to the host: its domain (the BAR pages in it again), its guard on the PF lifted
    // when no VF of it is an enclave's or kept, its configuration space and pages.
    {
        let mappings: Vec<atoll::partition::host_memory::HostMapping> = host_ref
            .as_deref()
            .map(|h| h.dma_mappings().to_vec())
            .unwrap_or_default();
        let mut guard = super::iommu::VTD.lock();
        if let Some(v) = guard.as_mut() {
            for (a, ok) in list.iter().zip(&reset_ok) {
                if a.in_domain {
                    if let Err(e) = v.take_back(a.sid, *ok) {
                        problems.push(e);
                    }
                }
                if *ok {
                    let pages: Vec<u64> = bar_pages(&a.target).collect();
                    if let Err(e) = v.host_dma_restore(&pages, &mappings) {
                        problems.push(e);
                    }
                }
            }
        }
    }
    for (a, ok) in list.iter().zip(&reset_ok) {
        if !a.pf_guarded || !*ok {
            // A VF kept from the host keeps its PF guarded (the host could move its BARs).
            continue;
        }
        if let Some((pf, _)) = a.target.vf_of {
            if let Err(e) = unguard_pf(pf, host_ref.as_deref_mut()) {
                problems.push(e);
            }
        }
    }
    if let Some(h) = host_ref {
        for (a, ok) in list.iter().zip(&reset_ok) {
            if !*ok {
                continue;
            }
            if let (Some(irq), Some(ecam)) = (h.run.shared.irq(), ecam()) {
                irq.renew_source(a.sid, |o| cfg_read32(ecam, a.sid, o));
            }
            if let Err(e) = h.show_pages(&a.host_pages) {
                problems.push(e);
            }
            h.run.shared.hidden.show(a.sid);
            log::info!(
                "passthrough: {} reset and back with the host",
                bdf_of(a.sid)
            );
        }
    }
    problems
}
