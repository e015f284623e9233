//! A physical PCI function passed through to an enclave (first user: an SR-IOV virtual
//! function of an igb NIC, driven by Linux's igbvf).
//!
//! References: PCI Local Bus Specification 3.0 §6.1–6.2 (header), §6.7 (capabilities), §6.8.2
//! (MSI-X); PCI Express Base Specification 4.0 §7.5.3 (the PCI Express capability), §6.6.2
//! (function level reset), §9.3.4 (what a VF's header holds); Intel VT-d §5.1.5.2 (remappable
//! MSI). The design follows /work/notes/issue13-research.md §3–§4.
//!
//! **What the guest sees.** A [`PassThrough`] is a [`PciDevice`] whose configuration space is
//! virtual — a [`ConfigSpace`] built at construction from what the hardware reports — and whose
//! BARs are the hardware's (the platform maps them into the enclave, all but the MSI-X table's
//! pages, [`PassThrough::trapped_pages`]):
//!
//! * Header: vendor and device from [`Identity`] (a VF's read 0xFFFF); class, revision and
//!   subsystem IDs from the hardware; Status read-only with only Capabilities List set (no error
//!   the guest could clear is ever reported); interrupt pin 0 (no INTx). Command is virtual with
//!   Memory Space, Bus Master and INTx Disable writable; Memory Space and Bus Master are
//!   forwarded to the hardware (QEMU's igb VFs decode their BARs only while the VF's own Memory
//!   Space bit is set — research §1), INTx Disable is always set physically, I/O space never.
//! * BARs: emulated by the [`ConfigSpace`] from the [`HwBar`]s atoll found (a VF's header BARs
//!   read 0): sizing with all ones, relocation, reported as [`ConfigEffect`]s so the platform
//!   remaps. The ROM BAR reads 0.
//! * Capabilities: only the PCI Express capability and MSI-X, each at its hardware offset, in
//!   the hardware's order, with next pointers rebuilt; every other capability (PM, MSI,
//!   vendor-specific, ...) is unlinked. The extended list is empty (0x100 reads 0), so AER, ARI —
//!   and a PF's SR-IOV or ACS — are never visible. The PCI Express capability's registers are the
//!   hardware's as read at construction, read-only, except Device Control, which is virtual
//!   (bits 14:0; Max Payload Size and friends are a platform setting the guest must not change
//!   physically), and Device Status, which reads 0 (nothing pending, no error). A write of
//!   Device Control bit 15 (Initiate FLR) performs [`PassThrough::reset`].
//! * MSI-X: the capability's control word is virtual, Enable and Function Mask forwarded; the
//!   table is an [`MsixShadow`]: the guest's compatibility-format messages become IRTEs through
//!   the [`Remapper`] and the hardware holds only remappable messages (entries stay masked
//!   physically until they do). The PBA reads from the hardware; writes to it are dropped.
//!
//! **Reads** of bytes no exposed register covers read 0 (in the 256-byte area and in the
//! extended space alike): that is what a function without those registers returns, and a 0 at a
//! capability pointer or at 0x100 ends the list.
//!
//! **Writes** that touch no register the guest may write are dropped before the hardware sees
//! anything and counted ([`PassThroughStats::config_writes_refused`]). The registers the guest
//! may write are Command (with Status, whose bits are all read-only here), cache line size and
//! latency timer (virtual, latency hardwired 0), the BARs and the ROM BAR (unused slots
//! hardwired 0, as on any function — sizing them is normal, not refused), interrupt line
//! (virtual scratch), Device Control/Status and the MSI-X control word; within them the
//! [`ConfigSpace`] masks decide which bits stick.
//!
//! **BAR accesses** arriving here (the platform traps the table's pages; anything else that
//! arrives is forwarded the same way) must be 1, 2, 4 or 8 bytes inside a declared BAR;
//! anything else reads all ones and writes nothing ([`PassThroughStats::bar_accesses_refused`]).
//! An access touching the table must lie inside it: dwords and qwords go to the shadow; a byte
//! or word read is taken from its dword of the shadow; a byte or word write is refused (PCI 3.0
//! §6.8.2 allows only dword and qword accesses). An access touching the PBA reads the hardware;
//! a write there is refused. Everything else on the trapped pages is the device's registers and
//! goes to the hardware.

use super::bus::PciDevice;
use super::config::{
    check_access, command, reg, status, Bar, BarKind, ClassCode, ConfigEffect, ConfigError,
    ConfigSpace, Header, BAR_COUNT, LEGACY_SIZE,
};
use super::msi::{
    walk_capabilities, CapWalkError, MsixCap, MsixShadow, Remapper, MAX_CAPABILITIES,
    MSIX_ENTRY_SIZE, MSIX_MASKED,
};
use super::msix::control as msix_control;
use alloc::vec;
use alloc::vec::Vec;
use iommu::irte::IrteIndex;
use iommu::remap::{Interrupt, RemapError};

/// The PCI Express capability ID (PCIe r4.0 §7.5.3.1).
pub const PCIE_CAP_ID: u8 = 0x10;

/// Registers of the PCI Express capability, as offsets from it (PCIe r4.0 §7.5.3).
pub mod pcie {
    /// PCI Express Capabilities register (16 bits; version in 3:0).
    pub const CAPABILITIES: u16 = 0x02;
    /// Device Capabilities (32 bits).
    pub const DEVCAP: u16 = 0x04;
    /// Device Control (16 bits).
    pub const DEVCTL: u16 = 0x08;
    /// Device Status (16 bits).
    pub const DEVSTA: u16 = 0x0a;
    /// Device Capabilities bit 28: Function Level Reset capable (§7.5.3.3).
    pub const DEVCAP_FLR: u32 = 1 << 28;
    /// Device Control bit 15: Initiate Function Level Reset (§7.5.3.4).
    pub const DEVCTL_FLR: u16 = 1 << 15;
    /// Device Status bit 5: Transactions Pending (§7.5.3.5).
    pub const DEVSTA_PENDING: u16 = 1 << 5;
    /// Bytes of a version 1 capability (through Root Status).
    pub const LEN_V1: u16 = 0x24;
    /// Bytes of a version 2 capability (through Slot Status 2).
    pub const LEN_V2: u16 = 0x3c;
}

/// How long an FLR waits, in milliseconds (PCIe r4.0 §6.6.2; the limits Linux's `pcie_flr`
/// uses).
pub mod flr_timing {
    /// Before the FLR: how long Transactions Pending may stay set; the FLR goes ahead after it
    /// anyway (completions of the function's outstanding requests are then lost, which an FLR
    /// is allowed to do).
    pub const PENDING_LIMIT_MS: u32 = 1000;
    /// Between polls of Transactions Pending.
    pub const PENDING_STEP_MS: u32 = 100;
    /// After setting Initiate FLR: the function must have completed the reset.
    pub const COMPLETE_MS: u32 = 100;
    /// After that: how long the function may answer configuration reads with all ones (the
    /// Configuration Request Retry Status time, Linux's `PCIE_RESET_READY_POLL_MS`).
    pub const READY_LIMIT_MS: u32 = 60_000;
    /// Longest wait between polls of Command (the first is 1 ms, doubling).
    pub const READY_STEP_MAX_MS: u32 = 1000;
}

/// How the model reaches the real function (atoll implements it over ECAM and the BAR's MMIO;
/// tests use a fake).
pub trait Hardware: Send {
    /// The configuration dword at `offset` (dword-aligned, below 4096).
    fn config_read32(&mut self, offset: u16) -> u32;
    /// Writes `size` bytes (1, 2 or 4, naturally aligned) of `value` at `offset`.
    fn config_write(&mut self, offset: u16, size: u8, value: u32);
    /// Reads `size` bytes (1, 2, 4 or 8) at `offset` inside BAR `bar`.
    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64;
    /// Writes `size` bytes (1, 2, 4 or 8) of `value` at `offset` inside BAR `bar`.
    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64);
    /// Waits `ms` milliseconds.
    fn delay_ms(&mut self, ms: u32);
}

/// The function's IDs: a VF's physical vendor and device IDs read 0xFFFF (PCIe r4.0
/// §9.3.4.1.1–2), so atoll supplies them from the PF (vendor, and the SR-IOV capability's VF
/// Device ID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
}

/// A BAR as atoll found it: a VF's header BARs read 0 (PCIe r4.0 §9.3.4.1.11), so atoll takes
/// kind and size from the PF's SR-IOV capability (VF BARn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwBar {
    /// Memory (32- or 64-bit); I/O BARs are refused.
    pub kind: BarKind,
    /// Bytes (a power of two).
    pub size: u64,
}

/// A range of a BAR the platform must trap rather than map to the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrappedRange {
    /// The BAR.
    pub bar: u8,
    /// Offset of the first byte (4 KiB aligned).
    pub offset: u64,
    /// Bytes (a multiple of 4 KiB, unless the BAR itself is smaller).
    pub len: u64,
}

/// Why a function cannot be passed through, or a reset failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassThroughError {
    /// The header type (bits 6:0) is not 0.
    HeaderType(u8),
    /// The capability list is malformed.
    Capabilities(CapWalkError),
    /// No MSI-X capability (the model delivers interrupts only through MSI-X).
    NoMsix,
    /// No PCI Express capability.
    NoPcie,
    /// The MSI-X table or PBA is not inside a declared memory BAR.
    MsixPlacement {
        /// The BAR the capability names.
        bar: u8,
        /// The offset it names.
        offset: u32,
    },
    /// An I/O BAR (a passed-through function never decodes I/O space).
    IoBar(u8),
    /// A BAR the configuration space refused (index, overlap, size).
    Bar(ConfigError),
    /// A capability could not be placed in the virtual space.
    Config(ConfigError),
    /// Reset asked of a function without FLR (Device Capabilities bit 28 clear).
    NotFlrCapable,
    /// After the FLR the function kept answering all ones past the ready limit.
    NotReady,
}

/// What the model has done and refused, for atoll's diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassThroughStats {
    /// Configuration writes dropped: malformed, or touching no register the guest may write
    /// (or an Initiate FLR the function cannot do).
    pub config_writes_refused: u64,
    /// BAR accesses refused: bad size, outside a declared BAR, partial table overlaps, byte or
    /// word table writes, PBA writes.
    pub bar_accesses_refused: u64,
    /// MSI-X entries the remapper accepted (an IRTE now points at the guest's interrupt).
    pub msix_programmed: u64,
    /// MSI-X entries the remapper refused (the entry stays masked physically).
    pub msix_refused: u64,
    /// IRTE blocks asked of the remapper (undeliverable messages and resets).
    pub irte_blocks: u64,
    /// FLRs completed.
    pub flrs: u64,
    /// FLRs that failed (not capable, or the function never came back).
    pub flr_failures: u64,
    /// FLRs that went ahead with Transactions Pending still set.
    pub pending_timeouts: u64,
}

/// Counts what the shadow asks of the remapper on the way through.
struct Counted<'a, R: Remapper> {
    inner: &'a mut R,
    stats: &'a mut PassThroughStats,
}

impl<R: Remapper> Remapper for Counted<'_, R> {
    fn program(&mut self, source: u16, interrupt: &Interrupt) -> Option<IrteIndex> {
        let handle = self.inner.program(source, interrupt);
        if handle.is_some() {
            self.stats.msix_programmed += 1;
        } else {
            self.stats.msix_refused += 1;
        }
        handle
    }

    fn block(&mut self, source: u16, reason: RemapError) {
        self.stats.irte_blocks += 1;
        self.inner.block(source, reason);
    }
}

/// Where an access of a BAR falls.
enum Target {
    /// Inside the MSI-X table, at this offset from it.
    Table(u32),
    /// Touching the PBA.
    Pba,
    /// The device's registers.
    Device,
    /// Refused.
    Bad,
}

/// Whether `[a0, a1)` and `[b0, b1)` overlap.
fn overlaps(a0: u64, a1: u64, b0: u64, b1: u64) -> bool {
    a0 < b1 && b0 < a1
}

/// A physical function on an enclave's virtual PCI bus.
pub struct PassThrough<H: Hardware, R: Remapper + Send> {
    hw: H,
    remap: R,
    /// What the guest sees.
    config: ConfigSpace,
    /// `config` as built: what a reset returns it to.
    pristine: ConfigSpace,
    bars: [Option<HwBar>; BAR_COUNT as usize],
    /// Offset of the PCI Express capability.
    pcie: u16,
    /// Device Capabilities as the hardware reported it.
    devcap: u32,
    msix: MsixShadow,
    /// Bytes of the PBA (one bit per entry, in qwords).
    pba_len: u64,
    /// The Command value the hardware holds (as last written).
    phys_command: u16,
    /// Enable and Function Mask as the hardware holds them (as last written).
    phys_msix_control: u16,
    stats: PassThroughStats,
}

impl<H: Hardware, R: Remapper + Send> core::fmt::Debug for PassThrough<H, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PassThrough")
            .field("pcie", &self.pcie)
            .field("msix", self.msix.cap())
            .field("stats", &self.stats)
            .finish()
    }
}

/// `len` bytes of configuration space from `offset` (dword reads; bytes past 0x100 are 0).
fn read_bytes(hw: &mut impl Hardware, offset: u16, len: u16) -> Vec<u8> {
    let mut out = vec![0u8; usize::from(len)];
    for (i, b) in out.iter_mut().enumerate() {
        let at = offset + i as u16;
        if at >= LEGACY_SIZE {
            break;
        }
        let dword = hw.config_read32(at & !3);
        *b = (dword >> (8 * (at & 3))) as u8;
    }
    out
}

/// The capability list as (offset, ID) pairs in the hardware's order, with the same bounds as
/// [`walk_capabilities`] (pointers masked to dwords, into the header or revisited: malformed).
fn capability_list(hw: &mut impl Hardware) -> Result<Vec<(u8, u8)>, CapWalkError> {
    let mut list = Vec::new();
    if hw.config_read32(reg::COMMAND) & (u32::from(status::CAPABILITY_LIST) << 16) == 0 {
        return Ok(list);
    }
    let mut visited = [false; 64];
    let mut ptr = (hw.config_read32(reg::CAPABILITIES) & 0xfc) as u8;
    while ptr != 0 {
        if ptr < 0x40 {
            return Err(CapWalkError::BadPointer(ptr));
        }
        let slot = usize::from(ptr / 4);
        if visited[slot] {
            return Err(CapWalkError::Loop(ptr));
        }
        visited[slot] = true;
        if list.len() >= MAX_CAPABILITIES {
            return Err(CapWalkError::TooMany);
        }
        let header = hw.config_read32(u16::from(ptr));
        list.push((ptr, header as u8));
        ptr = ((header >> 8) & 0xfc) as u8;
    }
    Ok(list)
}

impl<H: Hardware, R: Remapper + Send> PassThrough<H, R> {
    /// Builds the model of the function `hw` reaches: reads its header and capabilities, builds
    /// the virtual space, and leaves the hardware quiet (Command: INTx Disable only; MSI-X
    /// disabled; every table entry masked — the state [`MsixShadow`] assumes).
    pub fn new(
        mut hw: H,
        remap: R,
        identity: Identity,
        bars: [Option<HwBar>; 6],
    ) -> Result<Self, PassThroughError> {
        let header_type = (hw.config_read32(reg::CACHE_LINE_SIZE) >> 16) as u8 & 0x7f;
        if header_type != 0 {
            return Err(PassThroughError::HeaderType(header_type));
        }
        let class = hw.config_read32(reg::REVISION);
        let subsystem = hw.config_read32(reg::SUBSYSTEM_VENDOR_ID);
        let list = capability_list(&mut hw).map_err(PassThroughError::Capabilities)?;
        let found = walk_capabilities(|o| hw.config_read32(u16::from(o)))
            .map_err(PassThroughError::Capabilities)?;
        let cap = found.msix.ok_or(PassThroughError::NoMsix)?;
        let pcie = list
            .iter()
            .find(|&&(_, id)| id == PCIE_CAP_ID)
            .map(|&(o, _)| u16::from(o))
            .ok_or(PassThroughError::NoPcie)?;

        let mut config = ConfigSpace::new(&Header {
            vendor_id: identity.vendor,
            device_id: identity.device,
            revision: class as u8,
            class: ClassCode {
                class: (class >> 24) as u8,
                subclass: (class >> 16) as u8,
                prog_if: (class >> 8) as u8,
            },
            subsystem_vendor_id: subsystem as u16,
            subsystem_id: (subsystem >> 16) as u16,
            interrupt_pin: None,
        });
        let cmd_mask = command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
        config
            .init_register(reg::COMMAND, &[0, 0], &cmd_mask.to_le_bytes(), &[])
            .map_err(PassThroughError::Config)?;
        config
            .init_register(
                reg::STATUS,
                &status::CAPABILITY_LIST.to_le_bytes(),
                &[],
                &[],
            )
            .map_err(PassThroughError::Config)?;
        for (index, bar) in bars.iter().enumerate() {
            let Some(bar) = bar else { continue };
            if bar.kind == BarKind::Io {
                return Err(PassThroughError::IoBar(index as u8));
            }
            config
                .add_bar(
                    index as u8,
                    Bar {
                        kind: bar.kind,
                        size: bar.size,
                    },
                )
                .map_err(PassThroughError::Bar)?;
        }

        // The exposed capabilities, in the hardware's order, chained anew.
        let msix_at = u16::from(cap.offset);
        let exposed: Vec<u16> = list
            .iter()
            .map(|&(o, _)| u16::from(o))
            .filter(|&o| o == pcie || o == msix_at)
            .collect();
        let next_of = |o: u16| -> u8 {
            let i = exposed.iter().position(|&e| e == o);
            i.and_then(|i| exposed.get(i + 1)).map_or(0, |&n| n as u8)
        };
        let version = read_bytes(&mut hw, pcie + pcie::CAPABILITIES, 1)[0] & 0xf;
        let want = if version >= 2 {
            pcie::LEN_V2
        } else {
            pcie::LEN_V1
        };
        let len = want.min(LEGACY_SIZE - pcie);
        if len < pcie::DEVSTA + 2 {
            // Device Control and Status must be inside the 256 bytes.
            return Err(PassThroughError::Capabilities(CapWalkError::BadPointer(
                pcie as u8,
            )));
        }
        let mut body = read_bytes(&mut hw, pcie, len);
        let devcap = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        body[1] = next_of(pcie);
        // Device Control: bit 15 reads 0; Device Status reads 0.
        body[9] &= 0x7f;
        body[10] = 0;
        body[11] = 0;
        let mut writable = vec![0u8; body.len()];
        writable[8] = 0xff;
        writable[9] = 0x7f;
        config
            .init_register(pcie, &body, &writable, &[])
            .map_err(PassThroughError::Config)?;
        let mut body = read_bytes(&mut hw, msix_at, 12);
        body[1] = next_of(msix_at);
        // Control: the table size from the hardware; Enable and Function Mask start clear.
        body[3] &= 0x07;
        let mut writable = [0u8; 12];
        writable[3] = ((msix_control::ENABLE | msix_control::FUNCTION_MASK) >> 8) as u8;
        config
            .init_register(msix_at, &body, &writable, &[])
            .map_err(PassThroughError::Config)?;
        config
            .init_register(
                reg::CAPABILITIES,
                &[exposed.first().map_or(0, |&o| o as u8)],
                &[],
                &[],
            )
            .map_err(PassThroughError::Config)?;

        let msix = MsixShadow::new(cap);
        let pba_len = u64::from(cap.table_size).div_ceil(64) * 8;
        let fits = |bar: u8, offset: u32, len: u64| {
            bars.get(usize::from(bar))
                .copied()
                .flatten()
                .is_some_and(|b| u64::from(offset) + len <= b.size)
        };
        if !fits(cap.table_bar, cap.table_offset, u64::from(msix.table_len())) {
            return Err(PassThroughError::MsixPlacement {
                bar: cap.table_bar,
                offset: cap.table_offset,
            });
        }
        if !fits(cap.pba_bar, cap.pba_offset, pba_len) {
            return Err(PassThroughError::MsixPlacement {
                bar: cap.pba_bar,
                offset: cap.pba_offset,
            });
        }

        let mut s = Self {
            hw,
            remap,
            pristine: config.clone(),
            config,
            bars,
            pcie,
            devcap,
            msix,
            pba_len,
            phys_command: 0,
            phys_msix_control: 0,
            stats: PassThroughStats::default(),
        };
        s.quiet_hardware();
        Ok(s)
    }

    /// The hardware: Command INTx Disable only, MSI-X disabled and unmasked as a whole (the
    /// virtual reset state, so the forwarded bits agree), every entry masked.
    fn quiet_hardware(&mut self) {
        let cap = *self.msix.cap();
        self.phys_msix_control = 0;
        self.hw.config_write(u16::from(cap.offset) + 2, 2, 0);
        // The entries' masks while the function still decodes its BARs as it did (a store to
        // a BAR whose Memory Space is off goes nowhere); then decoding and bus mastering off.
        for n in 0..u32::from(cap.table_size) {
            let at = u64::from(cap.table_offset) + u64::from(n * MSIX_ENTRY_SIZE + 12);
            self.hw
                .bar_write(cap.table_bar, at, 4, u64::from(MSIX_MASKED));
        }
        self.phys_command = command::INTX_DISABLE;
        self.hw
            .config_write(reg::COMMAND, 2, u32::from(command::INTX_DISABLE));
    }

    /// The page-rounded range of the MSI-X table's BAR the platform must trap (clamped to the
    /// BAR); everything else of every BAR is mapped straight to the hardware. A PBA or device
    /// registers sharing those pages are handled here too.
    pub fn trapped_pages(&self) -> TrappedRange {
        let cap = self.msix.cap();
        let size = self.bars[usize::from(cap.table_bar)].map_or(0, |b| b.size);
        let start = u64::from(cap.table_offset) & !0xfff;
        let end = (u64::from(cap.table_offset) + u64::from(self.msix.table_len()))
            .next_multiple_of(0x1000);
        TrappedRange {
            bar: cap.table_bar,
            offset: start.min(size),
            len: end.min(size) - start.min(size),
        }
    }

    /// Function level reset (PCIe r4.0 §6.6.2), in the order Linux's `pcie_flr` and ACRN use:
    /// MSI-X function-masked and disabled and bus mastering off first (so no message or DMA
    /// starts during the reset), wait (bounded) for Transactions Pending to clear, set Initiate
    /// FLR, wait 100 ms, poll Command until it is not all ones (bounded), then leave the
    /// function quiet: Command INTx Disable only, every MSI-X entry masked, every entry's IRTE
    /// blocked through the remapper, the virtual space and the shadow back to their reset
    /// state. If the function never comes back the IRTEs are blocked and the virtual state
    /// reset all the same ([`PassThroughError::NotReady`]); a function without FLR is not
    /// touched ([`PassThroughError::NotFlrCapable`]).
    pub fn reset(&mut self) -> Result<(), PassThroughError> {
        if self.devcap & pcie::DEVCAP_FLR == 0 {
            self.stats.flr_failures += 1;
            return Err(PassThroughError::NotFlrCapable);
        }
        let msix_ctl = u16::from(self.msix.cap().offset) + 2;
        self.hw
            .config_write(msix_ctl, 2, u32::from(msix_control::FUNCTION_MASK));
        self.hw
            .config_write(reg::COMMAND, 2, u32::from(command::INTX_DISABLE));

        let devctl = self.pcie + pcie::DEVCTL;
        let mut waited = 0;
        loop {
            let devsta = (self.hw.config_read32(devctl) >> 16) as u16;
            if devsta & pcie::DEVSTA_PENDING == 0 {
                break;
            }
            if waited >= flr_timing::PENDING_LIMIT_MS {
                self.stats.pending_timeouts += 1;
                break;
            }
            self.hw.delay_ms(flr_timing::PENDING_STEP_MS);
            waited += flr_timing::PENDING_STEP_MS;
        }

        let ctl = self.hw.config_read32(devctl) as u16;
        self.hw
            .config_write(devctl, 2, u32::from(ctl | pcie::DEVCTL_FLR));
        self.hw.delay_ms(flr_timing::COMPLETE_MS);

        let mut waited = 0;
        let mut step = 1;
        let ready = loop {
            if self.hw.config_read32(reg::COMMAND) & 0xffff != 0xffff {
                break true;
            }
            if waited >= flr_timing::READY_LIMIT_MS {
                break false;
            }
            let s = step.min(flr_timing::READY_LIMIT_MS - waited);
            self.hw.delay_ms(s);
            waited += s;
            step = (step * 2).min(flr_timing::READY_STEP_MAX_MS);
        };

        if ready {
            self.quiet_hardware();
        } else {
            // Nothing can be written to a function that does not answer; what atoll believes
            // the hardware holds is the reset state.
            self.phys_command = 0;
            self.phys_msix_control = 0;
        }
        let cap = *self.msix.cap();
        for n in 0..cap.table_size {
            // The reset entry's address is 0, which is not an interrupt address.
            self.stats.irte_blocks += 1;
            self.remap.block(n, RemapError::NotInterruptAddress(0));
        }
        self.msix = MsixShadow::new(cap);
        self.config = self.pristine.clone();
        if ready {
            self.stats.flrs += 1;
            Ok(())
        } else {
            self.stats.flr_failures += 1;
            Err(PassThroughError::NotReady)
        }
    }

    /// The MSI-X capability as the hardware declares it (the remapper's sources are its
    /// entries, 0 to `table_size - 1`).
    pub fn msix_cap(&self) -> &MsixCap {
        self.msix.cap()
    }

    /// What the model has done and refused.
    pub fn stats(&self) -> PassThroughStats {
        self.stats
    }

    /// The hardware.
    pub fn hardware_mut(&mut self) -> &mut H {
        &mut self.hw
    }

    /// The remapper.
    pub fn remapper_mut(&mut self) -> &mut R {
        &mut self.remap
    }

    /// Whether a write of `[at, end)` touches a register the guest may write.
    fn accepts(&self, at: u16, end: u16) -> bool {
        let m = u16::from(self.msix.cap().offset);
        let p = self.pcie;
        [
            (reg::COMMAND, reg::REVISION),
            (reg::CACHE_LINE_SIZE, reg::HEADER_TYPE),
            (reg::BAR0, reg::BAR0 + 4 * u16::from(BAR_COUNT)),
            (reg::ROM, reg::CAPABILITIES),
            (reg::INTERRUPT_LINE, reg::INTERRUPT_PIN),
            (p + pcie::DEVCTL, p + pcie::DEVSTA + 2),
            (m + 2, m + 4),
        ]
        .iter()
        .any(|&(a, b)| overlaps(u64::from(at), u64::from(end), u64::from(a), u64::from(b)))
    }

    /// Forwards the guest's Memory Space and Bus Master bits (with INTx Disable) when they
    /// changed.
    fn forward_command(&mut self) {
        let phys =
            self.config.command() & (command::MEMORY | command::BUS_MASTER) | command::INTX_DISABLE;
        if phys != self.phys_command {
            self.phys_command = phys;
            self.hw.config_write(reg::COMMAND, 2, u32::from(phys));
        }
    }

    /// Forwards the guest's MSI-X Enable and Function Mask when they changed.
    fn forward_msix_control(&mut self) {
        let at = u16::from(self.msix.cap().offset) + 2;
        let phys = self.config.u16_at(at) & (msix_control::ENABLE | msix_control::FUNCTION_MASK);
        if phys != self.phys_msix_control {
            self.phys_msix_control = phys;
            self.hw.config_write(at, 2, u32::from(phys));
        }
    }

    /// Classifies an access of `size` bytes at `offset` of BAR `bar`.
    fn target(&self, bar: u8, offset: u64, size: usize) -> Target {
        let Some(hw_bar) = self.bars.get(usize::from(bar)).copied().flatten() else {
            return Target::Bad;
        };
        let Some(end) = offset.checked_add(size as u64) else {
            return Target::Bad;
        };
        if !matches!(size, 1 | 2 | 4 | 8) || end > hw_bar.size {
            return Target::Bad;
        }
        let cap = self.msix.cap();
        let t0 = u64::from(cap.table_offset);
        let t1 = t0 + u64::from(self.msix.table_len());
        if bar == cap.table_bar && overlaps(offset, end, t0, t1) {
            return if offset >= t0 && end <= t1 {
                // Inside the table, whose length fits 32 bits.
                Target::Table((offset - t0) as u32)
            } else {
                Target::Bad
            };
        }
        let p0 = u64::from(cap.pba_offset);
        if bar == cap.pba_bar && overlaps(offset, end, p0, p0 + self.pba_len) {
            return Target::Pba;
        }
        Target::Device
    }

    /// A guest read of the table at `offset` from it: dwords and qwords from the shadow, bytes
    /// and words from their dword of it; `None` for a misaligned access.
    fn table_read(&self, offset: u32, size: u8) -> Option<u64> {
        if matches!(size, 4 | 8) {
            return self.msix.read(offset, size).ok();
        }
        let shift = offset & 3;
        if shift + u32::from(size) > 4 {
            return None;
        }
        let dword = self.msix.read(offset & !3, 4).ok()?;
        Some((dword >> (8 * shift)) & ((1u64 << (8 * u32::from(size))) - 1))
    }
}

impl<H: Hardware, R: Remapper + Send> PciDevice for PassThrough<H, R> {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Option<ConfigEffect> {
        let Ok(at) = check_access(offset, data.len()) else {
            self.stats.config_writes_refused += 1;
            return None;
        };
        let end = offset + data.len() as u16;
        if !self.accepts(offset, end) {
            self.stats.config_writes_refused += 1;
            return None;
        }
        let flr_byte = usize::from(self.pcie + pcie::DEVCTL + 1);
        let flr = (at..at + data.len()).contains(&flr_byte)
            && data[flr_byte - at] & (pcie::DEVCTL_FLR >> 8) as u8 != 0;
        let command_before = self.config.command();
        let effect = match self.config.write(offset, data) {
            Ok(e) => e,
            Err(_) => {
                self.stats.config_writes_refused += 1;
                return None;
            }
        };
        if overlaps(
            u64::from(offset),
            u64::from(end),
            u64::from(reg::COMMAND),
            u64::from(reg::STATUS),
        ) {
            self.forward_command();
        }
        let m = u16::from(self.msix.cap().offset) + 2;
        if overlaps(
            u64::from(offset),
            u64::from(end),
            u64::from(m),
            u64::from(m) + 2,
        ) {
            self.forward_msix_control();
        }
        if flr {
            if self.reset() == Err(PassThroughError::NotFlrCapable) {
                self.stats.config_writes_refused += 1;
                return effect;
            }
            // The whole space is back to its reset state: the platform remaps if decoding was
            // on (every effect makes it re-read all BARs).
            let after = self.config.command();
            return (after != command_before).then_some(ConfigEffect::Command {
                old: command_before,
                new: after,
            });
        }
        effect
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let size = data.len() as u8;
        let value = match self.target(bar, offset, data.len()) {
            Target::Table(t) => self.table_read(t, size),
            Target::Pba | Target::Device => Some(self.hw.bar_read(bar, offset, size)),
            Target::Bad => None,
        };
        match value {
            Some(v) => {
                let bytes = v.to_le_bytes();
                data.copy_from_slice(&bytes[..data.len()]);
            }
            None => {
                self.stats.bar_accesses_refused += 1;
                data.fill(0xff);
            }
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let size = data.len() as u8;
        let mut bytes = [0u8; 8];
        let target = self.target(bar, offset, data.len());
        if let Some(dst) = bytes.get_mut(..data.len()) {
            dst.copy_from_slice(data);
        }
        let value = u64::from_le_bytes(bytes);
        match target {
            Target::Table(t) => {
                let mut remap = Counted {
                    inner: &mut self.remap,
                    stats: &mut self.stats,
                };
                match self.msix.write(t, size, value, &mut remap) {
                    Ok(writes) => {
                        let cap = *self.msix.cap();
                        for w in writes.as_slice() {
                            self.hw.bar_write(
                                cap.table_bar,
                                u64::from(cap.table_offset) + u64::from(w.offset),
                                w.size,
                                u64::from(w.value),
                            );
                        }
                    }
                    Err(_) => self.stats.bar_accesses_refused += 1,
                }
            }
            Target::Device => self.hw.bar_write(bar, offset, size, value),
            Target::Pba | Target::Bad => self.stats.bar_accesses_refused += 1,
        }
    }
}

#[cfg(test)]
mod tests;
