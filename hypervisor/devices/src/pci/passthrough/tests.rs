//! Host tests of [`PassThrough`] against a fake igb VF (the configuration space measured in
//! /work/notes/issue13-research.md §1) and a fake remapper.

use super::*;
use alloc::vec::Vec;
use iommu::remap::RemappableMsi;

/// What the fake saw, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    CfgWrite {
        offset: u16,
        size: u8,
        value: u32,
    },
    BarRead {
        bar: u8,
        offset: u64,
        size: u8,
    },
    BarWrite {
        bar: u8,
        offset: u64,
        size: u8,
        value: u64,
    },
    Delay(u32),
}

/// An igb VF as QEMU 10 shows it: IDs 0xFFFF, class 020000 rev 1, subsystem 1af4:1100, header
/// BARs 0, PCIe @0xa0 (FLR) → MSI-X @0x70 (3 vectors, table BIR 3 @0, PBA BIR 3 @0x2000), AER
/// @0x100 → ARI @0x150. Command writable mask 0x507; an FLR clears Command and the MSI-X
/// control and masks every entry.
struct FakeVf {
    space: Vec<u8>,
    bar0: Vec<u8>,
    bar3: Vec<u8>,
    log: Vec<Event>,
    /// Reads of Device Status that still show Transactions Pending (`u32::MAX`: forever).
    pending_reads: u32,
    /// After an FLR, configuration reads answer all ones this many times (`u32::MAX`:
    /// forever).
    not_ready_after_flr: u32,
    not_ready: u32,
    flrs: u32,
}

impl FakeVf {
    fn igbvf() -> Self {
        let mut f = Self {
            space: vec![0; 4096],
            bar0: vec![0; 0x4000],
            bar3: vec![0; 0x4000],
            log: Vec::new(),
            pending_reads: 0,
            not_ready_after_flr: 0,
            not_ready: 0,
            flrs: 0,
        };
        f.set32(0x00, 0xffff_ffff);
        f.set32(0x04, 0x0010_0000);
        f.set32(0x08, 0x0200_0001);
        f.set32(0x2c, 0x1100_1af4);
        f.set32(0x34, 0xa0);
        // MSI-X: next 0, control 0x0002 (3 entries), table BIR 3 @0, PBA BIR 3 @0x2000.
        f.set32(0x70, 0x0002_0011);
        f.set32(0x74, 0x0000_0003);
        f.set32(0x78, 0x0000_2003);
        // PCIe v2 endpoint, next 0x70; DevCap FLR | role-based errors; DevCtl 0x2810.
        f.set32(0xa0, 0x0002_7010);
        f.set32(0xa4, 0x1000_8000);
        f.set32(0xa8, 0x0000_2810);
        f.set32(0xac, 0x0000_4411);
        f.set32(0xb0, 0x1011_0000);
        f.set32(0xc4, 0x0001_0000);
        // AER v2 → ARI v1.
        f.set32(0x100, 0x1502_0001);
        f.set32(0x150, 0x0001_000e);
        f
    }

    fn set32(&mut self, at: usize, v: u32) {
        self.space[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn get32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.space[at..at + 4].try_into().unwrap())
    }

    fn bar(&mut self, bar: u8) -> &mut Vec<u8> {
        match bar {
            0 => &mut self.bar0,
            3 => &mut self.bar3,
            _ => panic!("the model reached BAR {bar}"),
        }
    }

    fn entry_ctrl(&self, n: usize) -> u32 {
        u32::from_le_bytes(self.bar3[n * 16 + 12..n * 16 + 16].try_into().unwrap())
    }

    fn flr(&mut self) {
        self.flrs += 1;
        self.set32(0x04, self.get32(0x04) & 0xffff_0000);
        self.space[0x73] = 0;
        for n in 0..3 {
            self.bar3[n * 16..n * 16 + 16].fill(0);
            self.bar3[n * 16 + 12] = 1;
        }
        self.not_ready = self.not_ready_after_flr;
    }

    /// The events after the first `from`.
    fn since(&self, from: usize) -> &[Event] {
        &self.log[from..]
    }
}

impl Hardware for FakeVf {
    fn config_read32(&mut self, offset: u16) -> u32 {
        assert!(
            offset.is_multiple_of(4) && offset < 4096,
            "bad read {offset:#x}"
        );
        if self.not_ready > 0 {
            if self.not_ready != u32::MAX {
                self.not_ready -= 1;
            }
            return u32::MAX;
        }
        let mut v = self.get32(usize::from(offset));
        if offset == 0xa8 && self.pending_reads > 0 {
            if self.pending_reads != u32::MAX {
                self.pending_reads -= 1;
            }
            v |= 0x20 << 16;
        }
        v
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        assert!(matches!(size, 1 | 2 | 4) && offset.is_multiple_of(u16::from(size)));
        self.log.push(Event::CfgWrite {
            offset,
            size,
            value,
        });
        let mut flr = false;
        for i in 0..u16::from(size) {
            let at = usize::from(offset + i);
            let b = (value >> (8 * i)) as u8;
            let mask = match at {
                0x04 => 0x07,
                0x05 => 0x05,
                0x73 => 0xc0,
                0xa8 => 0xff,
                0xa9 => {
                    flr = b & 0x80 != 0 && self.get32(0xa4) & (1 << 28) != 0;
                    0x7f
                }
                _ => 0,
            };
            self.space[at] = (self.space[at] & !mask) | (b & mask);
        }
        if flr {
            self.flr();
        }
    }

    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
        self.log.push(Event::BarRead { bar, offset, size });
        let at = offset as usize;
        let mut b = [0u8; 8];
        b[..usize::from(size)].copy_from_slice(&self.bar(bar)[at..at + usize::from(size)]);
        u64::from_le_bytes(b)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) {
        self.log.push(Event::BarWrite {
            bar,
            offset,
            size,
            value,
        });
        let at = offset as usize;
        self.bar(bar)[at..at + usize::from(size)]
            .copy_from_slice(&value.to_le_bytes()[..usize::from(size)]);
    }

    fn delay_ms(&mut self, ms: u32) {
        self.log.push(Event::Delay(ms));
    }
}

/// Records the IRTE requests; hands out `0x200 + source` or refuses.
#[derive(Default)]
struct Rec {
    programmed: Vec<(u16, Interrupt)>,
    blocked: Vec<(u16, RemapError)>,
    refuse: bool,
}

impl Remapper for Rec {
    fn program(&mut self, source: u16, interrupt: &Interrupt) -> Option<IrteIndex> {
        self.programmed.push((source, *interrupt));
        (!self.refuse).then_some(IrteIndex(0x200 + source))
    }
    fn block(&mut self, source: u16, reason: RemapError) {
        self.blocked.push((source, reason));
    }
}

type Pt = PassThrough<FakeVf, Rec>;

const PREF64: BarKind = BarKind::Memory64 { prefetchable: true };

fn vf_bars() -> [Option<HwBar>; 6] {
    let b = Some(HwBar {
        kind: PREF64,
        size: 0x4000,
    });
    [b, None, None, b, None, None]
}

fn identity() -> Identity {
    Identity {
        vendor: 0x8086,
        device: 0x10ca,
    }
}

fn model_of(hw: FakeVf) -> Pt {
    PassThrough::new(hw, Rec::default(), identity(), vf_bars()).unwrap()
}

fn model() -> Pt {
    model_of(FakeVf::igbvf())
}

fn rd(pt: &mut Pt, offset: u16, len: usize) -> u32 {
    let mut b = [0u8; 4];
    pt.config_read(offset, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn wr(pt: &mut Pt, offset: u16, len: usize, v: u32) -> Option<ConfigEffect> {
    PciDevice::config_write(pt, offset, &v.to_le_bytes()[..len])
}

fn bar_rd(pt: &mut Pt, bar: u8, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    pt.bar_read(bar, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn bar_wr(pt: &mut Pt, bar: u8, offset: u64, len: usize, v: u64) {
    pt.bar_write(bar, offset, &v.to_le_bytes()[..len]);
}

fn log_len(pt: &mut Pt) -> usize {
    pt.hardware_mut().log.len()
}

#[test]
fn identity_class_and_header() {
    let mut pt = model();
    assert_eq!(rd(&mut pt, 0x00, 4), 0x10ca_8086);
    assert_eq!(rd(&mut pt, 0x08, 4), 0x0200_0001, "class 020000 rev 1");
    assert_eq!(rd(&mut pt, 0x2c, 4), 0x1100_1af4);
    assert_eq!(rd(&mut pt, reg::HEADER_TYPE, 1), 0);
    assert_eq!(rd(&mut pt, reg::INTERRUPT_PIN, 1), 0, "no INTx");
    assert_eq!(
        rd(&mut pt, 0x04, 4),
        0x0010_0000,
        "command 0, status: cap list"
    );
    assert_eq!(rd(&mut pt, reg::ROM, 4), 0);
    // Construction left the hardware quiet: INTx disabled, MSI-X off, every entry masked.
    let hw = pt.hardware_mut();
    assert_eq!(hw.get32(0x04) & 0xffff, 0x400);
    assert_eq!(hw.space[0x73], 0);
    assert!((0..3).all(|n| hw.entry_ctrl(n) == 1));
    // MSI-X off first, the entries masked while the BARs still decode, then the command.
    assert_eq!(
        hw.log[0],
        Event::CfgWrite {
            offset: 0x72,
            size: 2,
            value: 0
        }
    );
    assert_eq!(
        hw.log.last(),
        Some(&Event::CfgWrite {
            offset: 4,
            size: 2,
            value: 0x400
        })
    );
    // Status is read-only: an RW1C write of all ones changes nothing.
    wr(&mut pt, reg::STATUS, 2, 0xffff);
    assert_eq!(rd(&mut pt, reg::STATUS, 2), 0x0010);
}

#[test]
fn construction_refuses_unsuitable_functions() {
    let new = |hw: FakeVf, bars| PassThrough::new(hw, Rec::default(), identity(), bars).err();
    let mut hw = FakeVf::igbvf();
    hw.set32(0x0c, 0x0001_0000);
    assert_eq!(new(hw, vf_bars()), Some(PassThroughError::HeaderType(1)));
    // A function that does not answer reads all ones: header type 0x7f.
    let mut hw = FakeVf::igbvf();
    hw.not_ready = u32::MAX;
    assert_eq!(new(hw, vf_bars()), Some(PassThroughError::HeaderType(0x7f)));
    // PCIe only: no MSI-X.
    let mut hw = FakeVf::igbvf();
    hw.set32(0xa0, 0x0002_0010);
    assert_eq!(new(hw, vf_bars()), Some(PassThroughError::NoMsix));
    // MSI-X only: no PCIe.
    let mut hw = FakeVf::igbvf();
    hw.set32(0x34, 0x70);
    assert_eq!(new(hw, vf_bars()), Some(PassThroughError::NoPcie));
    // A looping list.
    let mut hw = FakeVf::igbvf();
    hw.space[0x71] = 0xa0;
    assert_eq!(
        new(hw, vf_bars()),
        Some(PassThroughError::Capabilities(CapWalkError::Loop(0xa0)))
    );
    // The table's BAR missing or too small; an I/O BAR; a BAR the space refuses.
    let mut bars = vf_bars();
    bars[3] = None;
    assert_eq!(
        new(FakeVf::igbvf(), bars),
        Some(PassThroughError::MsixPlacement { bar: 3, offset: 0 })
    );
    bars[3] = Some(HwBar {
        kind: PREF64,
        size: 0x1000,
    });
    assert_eq!(
        new(FakeVf::igbvf(), bars),
        Some(PassThroughError::MsixPlacement {
            bar: 3,
            offset: 0x2000
        })
    );
    let mut bars = vf_bars();
    bars[2] = Some(HwBar {
        kind: BarKind::Io,
        size: 32,
    });
    assert_eq!(new(FakeVf::igbvf(), bars), Some(PassThroughError::IoBar(2)));
    let mut bars = vf_bars();
    bars[0] = Some(HwBar {
        kind: PREF64,
        size: 0x3000,
    });
    assert_eq!(
        new(FakeVf::igbvf(), bars),
        Some(PassThroughError::Bar(ConfigError::BarSize(0x3000)))
    );
    let mut bars = vf_bars();
    bars[4] = bars[3];
    assert_eq!(
        new(FakeVf::igbvf(), bars),
        Some(PassThroughError::Bar(ConfigError::BarInUse(4))),
        "BAR 4 is BAR 3's high half"
    );
}

#[test]
fn bar_sizing_and_relocation_of_64_bit_bars() {
    let mut pt = model();
    let before = log_len(&mut pt);
    assert_eq!(rd(&mut pt, 0x10, 4), 0xc, "64-bit prefetchable at 0");
    for bar in 0..6 {
        wr(&mut pt, 0x10 + 4 * bar, 4, 0xffff_ffff);
    }
    assert_eq!(
        rd(&mut pt, 0x10, 4),
        0xffff_c00c,
        "16 KiB, as QEMU's PF reports"
    );
    assert_eq!(rd(&mut pt, 0x14, 4), 0xffff_ffff);
    assert_eq!(rd(&mut pt, 0x18, 4), 0, "unused slot");
    assert_eq!(rd(&mut pt, 0x1c, 4), 0xffff_c00c);
    assert_eq!(rd(&mut pt, 0x20, 4), 0xffff_ffff);
    assert_eq!(rd(&mut pt, 0x24, 4), 0);
    assert_eq!(pt.stats().config_writes_refused, 0, "sizing is not refused");
    // Placing BAR 3 above 4 GiB: each dword reports the move.
    assert_eq!(
        wr(&mut pt, 0x1c, 4, 0x2000_4000),
        Some(ConfigEffect::BarMoved {
            index: 3,
            kind: PREF64,
            size: 0x4000,
            from: 0xffff_ffff_ffff_c000,
            to: 0xffff_ffff_2000_4000
        })
    );
    assert_eq!(
        wr(&mut pt, 0x20, 4, 0x8),
        Some(ConfigEffect::BarMoved {
            index: 3,
            kind: PREF64,
            size: 0x4000,
            from: 0xffff_ffff_2000_4000,
            to: 0x8_2000_4000
        })
    );
    assert_eq!(pt.config().decoded_bar(3), None, "decode off");
    assert_eq!(
        wr(&mut pt, reg::COMMAND, 2, u32::from(command::MEMORY)),
        Some(ConfigEffect::Command {
            old: 0,
            new: command::MEMORY
        })
    );
    let region = pt.config().decoded_bar(3).unwrap();
    assert_eq!((region.base, region.size), (0x8_2000_4000, 0x4000));
    // No BAR write reached the hardware (a VF's header BARs are 0); only the command did.
    assert_eq!(
        pt.hardware_mut().since(before),
        &[Event::CfgWrite {
            offset: 4,
            size: 2,
            value: 0x402
        }]
    );
}

#[test]
fn command_memory_and_bus_master_are_forwarded() {
    let mut pt = model();
    let before = log_len(&mut pt);
    wr(&mut pt, reg::COMMAND, 2, 0xffff);
    assert_eq!(
        rd(&mut pt, reg::COMMAND, 2),
        u32::from(command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE),
        "no I/O, parity or SERR"
    );
    assert_eq!(pt.hardware_mut().get32(4) & 0xffff, 0x406);
    // The virtual INTx Disable alone changes nothing physically (always set there).
    wr(&mut pt, reg::COMMAND, 2, u32::from(command::INTX_DISABLE));
    assert_eq!(pt.hardware_mut().get32(4) & 0xffff, 0x400);
    wr(&mut pt, reg::COMMAND, 2, 0);
    assert_eq!(rd(&mut pt, reg::COMMAND, 2), 0);
    assert_eq!(pt.hardware_mut().get32(4) & 0xffff, 0x400);
    // A byte write of bus master alone.
    wr(&mut pt, reg::COMMAND, 1, u32::from(command::BUS_MASTER));
    assert_eq!(pt.hardware_mut().get32(4) & 0xffff, 0x404);
    let writes: Vec<u32> = pt
        .hardware_mut()
        .since(before)
        .iter()
        .map(|e| match e {
            Event::CfgWrite {
                offset: 4,
                size: 2,
                value,
            } => *value,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(writes, [0x406, 0x400, 0x404], "only changes are written");
}

#[test]
fn only_pcie_and_msix_are_visible() {
    let mut pt = model();
    assert_eq!(
        pt.config().capabilities().collect::<Vec<_>>(),
        [(0xa0, PCIE_CAP_ID), (0x70, 0x11)],
        "the hardware's order"
    );
    assert_eq!(rd(&mut pt, 0x71, 1), 0, "MSI-X ends the list");
    assert_eq!(rd(&mut pt, 0x100, 4), 0, "no extended capabilities");
    assert_eq!(rd(&mut pt, 0x150, 4), 0, "ARI hidden");
    assert_eq!(pt.config().extended_capabilities().count(), 0);
    // The PCIe capability's registers are the hardware's; DevSta reads 0.
    assert_eq!(rd(&mut pt, 0xa0, 4), 0x0002_7010);
    assert_eq!(rd(&mut pt, 0xa4, 4), 0x1000_8000);
    assert_eq!(rd(&mut pt, 0xa8, 4), 0x0000_2810);
    assert_eq!(rd(&mut pt, 0xac, 4), 0x0000_4411);
    assert_eq!(rd(&mut pt, 0xc4, 4), 0x0001_0000);
    // MSI-X: table size from the hardware, enable and mask clear.
    assert_eq!(rd(&mut pt, 0x70, 4), 0x0002_0011);
    assert_eq!(rd(&mut pt, 0x74, 4), 3);
    assert_eq!(rd(&mut pt, 0x78, 4), 0x2003);

    // A function with PM, MSI and a vendor capability around them: all unlinked.
    let mut hw = FakeVf::igbvf();
    hw.set32(0x34, 0x40);
    hw.set32(0x40, 0x0003_5001); // PM → MSI
    hw.set32(0x50, 0x0080_a005); // MSI → PCIe
    hw.space[0xa1] = 0x60; // PCIe → vendor
    hw.set32(0x60, 0x0008_7009); // vendor → MSI-X
    hw.set32(0x64, 0xdead_beef);
    let mut pt = model_of(hw);
    assert_eq!(
        pt.config().capabilities().collect::<Vec<_>>(),
        [(0xa0, PCIE_CAP_ID), (0x70, 0x11)]
    );
    assert_eq!(rd(&mut pt, reg::CAPABILITIES, 1), 0xa0);
    assert_eq!(
        rd(&mut pt, 0xa1, 1),
        0x70,
        "next rebuilt past the vendor cap"
    );
    for hidden in [0x40, 0x50, 0x60, 0x64] {
        assert_eq!(rd(&mut pt, hidden, 4), 0, "{hidden:#x}");
    }
}

#[test]
fn device_control_is_virtual() {
    let mut pt = model();
    let before = log_len(&mut pt);
    wr(&mut pt, 0xa8, 2, 0x7fff);
    assert_eq!(rd(&mut pt, 0xa8, 2), 0x7fff);
    wr(&mut pt, 0xaa, 2, 0xffff);
    assert_eq!(rd(&mut pt, 0xaa, 2), 0, "Device Status: nothing to clear");
    assert!(pt.hardware_mut().since(before).is_empty());
    assert_eq!(pt.hardware_mut().get32(0xa8), 0x2810);
    assert_eq!(pt.stats().config_writes_refused, 0);
}

#[test]
fn disallowed_writes_are_counted_and_not_forwarded() {
    let mut pt = model();
    let before = log_len(&mut pt);
    let snapshot: Vec<u32> = (0..0x40u16).map(|d| rd(&mut pt, d * 4, 4)).collect();
    let targets: [(u16, usize); 12] = [
        (0x00, 4),  // IDs
        (0x08, 4),  // class
        (0x0e, 1),  // header type
        (0x2c, 4),  // subsystem
        (0x34, 1),  // capabilities pointer
        (0x70, 2),  // MSI-X ID and next
        (0x74, 4),  // MSI-X table offset
        (0xa4, 4),  // DevCap
        (0xb0, 2),  // LinkCtl
        (0x100, 4), // AER header
        (0x150, 4), // ARI
        (0xffc, 4), // end of the space
    ];
    for (i, &(offset, len)) in targets.iter().enumerate() {
        assert_eq!(wr(&mut pt, offset, len, 0xffff_ffff), None);
        assert_eq!(
            pt.stats().config_writes_refused,
            i as u64 + 1,
            "{offset:#x}"
        );
    }
    // Malformed: size 3, crossing a dword, past the space.
    PciDevice::config_write(&mut pt, 0x04, &[1, 2, 3]);
    PciDevice::config_write(&mut pt, 0x07, &[1, 2]);
    PciDevice::config_write(&mut pt, 0x1000, &[1]);
    assert_eq!(pt.stats().config_writes_refused, 15);
    assert!(pt.hardware_mut().since(before).is_empty());
    let after: Vec<u32> = (0..0x40u16).map(|d| rd(&mut pt, d * 4, 4)).collect();
    assert_eq!(after, snapshot);
    assert_eq!(rd(&mut pt, 0x100, 4), 0);
}

fn program_entry(pt: &mut Pt, n: u64, dest: u8, vector: u8) {
    let base = n * 16;
    bar_wr(pt, 3, base, 4, 0xfee0_0000 | u64::from(dest) << 12);
    bar_wr(pt, 3, base + 4, 4, 0);
    bar_wr(pt, 3, base + 8, 4, u64::from(vector));
}

#[test]
fn msix_entries_reach_the_hardware_only_remappable() {
    let mut pt = model();
    // Enable with function mask, then unmask the function: both forwarded.
    wr(&mut pt, 0x72, 2, 0xc000);
    assert_eq!(pt.hardware_mut().space[0x73], 0xc0);
    assert_eq!(rd(&mut pt, 0x72, 2), 0xc002);
    wr(&mut pt, 0x73, 1, 0x80);
    assert_eq!(pt.hardware_mut().space[0x73], 0x80);
    let before = log_len(&mut pt);
    program_entry(&mut pt, 1, 2, 0x41);
    let want = Interrupt::from_msi(0xfee0_2000, 0x41).unwrap();
    assert_eq!(pt.remapper_mut().programmed, [(1, want)]);
    let msg = RemappableMsi::single(IrteIndex(0x201));
    let w = |offset, value| Event::BarWrite {
        bar: 3,
        offset,
        size: 4,
        value,
    };
    assert_eq!(
        pt.hardware_mut().since(before),
        &[
            w(0x10, u64::from(msg.address)),
            w(0x14, 0),
            w(0x18, u64::from(msg.data))
        ],
        "message written, still masked"
    );
    // The guest reads what it wrote.
    assert_eq!(bar_rd(&mut pt, 3, 0x10, 4), 0xfee0_2000);
    assert_eq!(
        bar_rd(&mut pt, 3, 0x18, 8),
        0x1_0000_0041,
        "data and masked control"
    );
    // Unmask, mask again: the hardware's mask bit follows.
    bar_wr(&mut pt, 3, 0x1c, 4, 0);
    assert_eq!(pt.hardware_mut().entry_ctrl(1), 0);
    bar_wr(&mut pt, 3, 0x1c, 4, 1);
    assert_eq!(pt.hardware_mut().entry_ctrl(1), 1);
    bar_wr(&mut pt, 3, 0x1c, 4, 0);
    // A qword write of the address.
    bar_wr(&mut pt, 3, 0x00, 8, 0xfee0_3000);
    bar_wr(&mut pt, 3, 0x08, 8, 0x42);
    assert_eq!(pt.remapper_mut().programmed.last().unwrap().0, 0);
    assert_eq!(pt.hardware_mut().entry_ctrl(0), 0, "unmasked by the qword");
    // Refused by the remapper: the entry stays masked physically whatever the guest does.
    pt.remapper_mut().refuse = true;
    let before = log_len(&mut pt);
    program_entry(&mut pt, 2, 1, 0x43);
    bar_wr(&mut pt, 3, 0x2c, 4, 0);
    assert!(pt.hardware_mut().since(before).is_empty());
    assert_eq!(pt.hardware_mut().entry_ctrl(2), 1);
    assert_eq!(bar_rd(&mut pt, 3, 0x2c, 4), 0, "the guest sees its unmask");
    let s = pt.stats();
    assert_eq!((s.msix_programmed, s.msix_refused), (2, 1));
    // An unremappable message is blocked through the remapper.
    bar_wr(&mut pt, 3, 0x10, 4, 0xfed0_0000);
    assert_eq!(
        pt.remapper_mut().blocked,
        [(1, RemapError::NotInterruptAddress(0xfed0_0000))]
    );
    assert_eq!(pt.stats().irte_blocks, 1);
    assert_eq!(
        pt.hardware_mut().entry_ctrl(1),
        1,
        "masked once undeliverable"
    );
}

#[test]
fn table_byte_and_word_accesses() {
    let mut pt = model();
    program_entry(&mut pt, 0, 1, 0x41);
    assert_eq!(bar_rd(&mut pt, 3, 1, 1), 0x10, "byte 1 of 0xfee01000");
    assert_eq!(bar_rd(&mut pt, 3, 2, 2), 0xfee0);
    assert_eq!(bar_rd(&mut pt, 3, 0xc, 1), 1, "masked");
    assert_eq!(pt.stats().bar_accesses_refused, 0);
    assert_eq!(bar_rd(&mut pt, 3, 3, 2), 0xffff, "crosses a dword");
    assert_eq!(bar_rd(&mut pt, 3, 4, 8), u64::MAX, "misaligned qword");
    assert_eq!(pt.stats().bar_accesses_refused, 2);
    let before = log_len(&mut pt);
    let programmed = pt.remapper_mut().programmed.len();
    bar_wr(&mut pt, 3, 0xc, 1, 0);
    bar_wr(&mut pt, 3, 8, 2, 0x50);
    assert_eq!(pt.stats().bar_accesses_refused, 4);
    assert!(pt.hardware_mut().since(before).is_empty());
    assert_eq!(pt.remapper_mut().programmed.len(), programmed);
    assert_eq!(bar_rd(&mut pt, 3, 8, 4), 0x41);
}

#[test]
fn pba_reads_the_hardware_and_ignores_writes() {
    let mut pt = model();
    pt.hardware_mut().bar3[0x2000] = 0b101;
    let before = log_len(&mut pt);
    assert_eq!(bar_rd(&mut pt, 3, 0x2000, 8), 0b101);
    assert_eq!(bar_rd(&mut pt, 3, 0x2000, 1), 0b101);
    assert_eq!(
        pt.hardware_mut().since(before)[0],
        Event::BarRead {
            bar: 3,
            offset: 0x2000,
            size: 8
        }
    );
    let before = log_len(&mut pt);
    bar_wr(&mut pt, 3, 0x2000, 8, 0);
    bar_wr(&mut pt, 3, 0x2004, 4, 0);
    assert!(pt.hardware_mut().since(before).is_empty());
    assert_eq!(pt.stats().bar_accesses_refused, 2);
    assert_eq!(pt.hardware_mut().bar3[0x2000], 0b101);
}

#[test]
fn other_bar_accesses_and_malformed_ones() {
    let mut pt = model();
    assert_eq!(
        pt.trapped_pages(),
        TrappedRange {
            bar: 3,
            offset: 0,
            len: 0x1000
        }
    );
    // The device's registers: beside the table on its page, and BAR 0.
    let before = log_len(&mut pt);
    bar_wr(&mut pt, 3, 0x30, 4, 0x1234);
    bar_wr(&mut pt, 0, 0xc40, 4, 0x5678);
    assert_eq!(bar_rd(&mut pt, 3, 0x30, 4), 0x1234);
    assert_eq!(bar_rd(&mut pt, 0, 0xc40, 2), 0x5678);
    assert_eq!(pt.hardware_mut().since(before).len(), 4);
    assert_eq!(pt.stats().bar_accesses_refused, 0);
    // Bad sizes, past the BAR, an absent BAR, straddling the table's end or the PBA's start.
    let before = log_len(&mut pt);
    let mut refused = 0;
    for (bar, offset, len) in [
        (3u8, 0x30u64, 3usize),
        (0, 0, 16),
        (0, 0, 0),
        (0, 0x3ffc, 8),
        (0, 0x4000, 1),
        (0, u64::MAX, 1),
        (1, 0, 4),
        (7, 0, 4),
        (3, 0x2c, 8),
    ] {
        let mut b = [0u8; 16];
        pt.bar_read(bar, offset, &mut b[..len]);
        assert!(
            b[..len].iter().all(|&x| x == 0xff),
            "{bar} {offset:#x} {len}"
        );
        pt.bar_write(bar, offset, &b[..len]);
        refused += 2;
        assert_eq!(pt.stats().bar_accesses_refused, refused);
    }
    bar_wr(&mut pt, 3, 0x1ffc, 8, 0);
    assert_eq!(
        pt.stats().bar_accesses_refused,
        refused + 1,
        "touches the PBA"
    );
    assert!(pt.hardware_mut().since(before).is_empty());
}

#[test]
fn trapped_pages_round_to_pages() {
    // A table of 3 entries at 0x1ff8 straddles two pages.
    let mut hw = FakeVf::igbvf();
    hw.set32(0x74, 0x1ff8 | 3);
    hw.set32(0x78, 0x3000 | 3);
    let pt = model_of(hw);
    assert_eq!(
        pt.trapped_pages(),
        TrappedRange {
            bar: 3,
            offset: 0x1000,
            len: 0x2000
        }
    );
}

/// The position of the first event matching `f` after `from`.
fn find(pt: &mut Pt, from: usize, f: impl Fn(&Event) -> bool) -> usize {
    from + pt.hardware_mut().log[from..]
        .iter()
        .position(f)
        .expect("event not found")
}

#[test]
fn flr_sequence() {
    let mut pt = model();
    wr(&mut pt, 0x1c, 4, 0xfe02_0000);
    wr(&mut pt, reg::COMMAND, 2, 0x6);
    wr(&mut pt, 0x72, 2, 0x8000);
    program_entry(&mut pt, 0, 1, 0x41);
    bar_wr(&mut pt, 3, 0xc, 4, 0);
    pt.hardware_mut().pending_reads = 2;
    let start = log_len(&mut pt);
    pt.reset().unwrap();
    let mask = find(&mut pt, start, |e| {
        *e == Event::CfgWrite {
            offset: 0x72,
            size: 2,
            value: 0x4000,
        }
    });
    let bme_off = find(&mut pt, start, |e| {
        *e == Event::CfgWrite {
            offset: 4,
            size: 2,
            value: 0x400,
        }
    });
    let flr = find(
        &mut pt,
        start,
        |e| matches!(e, Event::CfgWrite { offset: 0xa8, size: 2, value } if value & 0x8000 != 0),
    );
    assert_eq!(
        pt.hardware_mut().log[flr],
        Event::CfgWrite {
            offset: 0xa8,
            size: 2,
            value: 0xa810
        },
        "read-modify-write of the hardware's DevCtl"
    );
    assert!(mask < flr && bme_off < flr);
    let delays: Vec<usize> = (start..flr)
        .filter(|&i| matches!(pt.hardware_mut().log[i], Event::Delay(_)))
        .collect();
    assert_eq!(delays.len(), 2, "waited while Transactions Pending");
    assert_eq!(pt.hardware_mut().log[flr + 1], Event::Delay(100));
    assert_eq!(pt.hardware_mut().flrs, 1);
    // Quiet afterwards: command, entries masked, IRTEs blocked.
    let after = &pt.hardware_mut().log[flr + 2..];
    assert!(after.contains(&Event::CfgWrite {
        offset: 4,
        size: 2,
        value: 0x400
    }));
    for n in 0..3u64 {
        assert!(after.contains(&Event::BarWrite {
            bar: 3,
            offset: n * 16 + 12,
            size: 4,
            value: 1
        }));
    }
    assert_eq!(
        pt.remapper_mut().blocked,
        (0..3)
            .map(|n| (n, RemapError::NotInterruptAddress(0)))
            .collect::<Vec<_>>()
    );
    // The virtual space is back to its reset state.
    assert_eq!(rd(&mut pt, reg::COMMAND, 2), 0);
    assert_eq!(rd(&mut pt, 0x1c, 4), 0xc);
    assert_eq!(rd(&mut pt, 0x72, 2), 2);
    assert_eq!(bar_rd(&mut pt, 3, 0, 4), 0);
    assert_eq!(bar_rd(&mut pt, 3, 0xc, 4), 1);
    let s = pt.stats();
    assert_eq!((s.flrs, s.flr_failures, s.pending_timeouts), (1, 0, 0));
    // Reprogramming the entry after the reset asks for the IRTE again.
    program_entry(&mut pt, 0, 1, 0x41);
    assert_eq!(pt.remapper_mut().programmed.len(), 2);
}

#[test]
fn guest_initiated_flr() {
    let mut pt = model();
    wr(&mut pt, 0x10, 4, 0xfe00_0000);
    wr(&mut pt, reg::COMMAND, 2, 0x6);
    assert_eq!(
        wr(&mut pt, 0xa8, 2, 0x8000 | 0x2810),
        Some(ConfigEffect::Command { old: 6, new: 0 }),
        "the platform unmaps the BARs"
    );
    assert_eq!(pt.hardware_mut().flrs, 1);
    assert_eq!(
        rd(&mut pt, 0xa8, 2),
        0x2810,
        "DevCtl back to its reset value"
    );
    assert_eq!(rd(&mut pt, 0x10, 4), 0xc);
    assert_eq!(pt.stats().flrs, 1);
    // With decoding off there is nothing to remap.
    assert_eq!(wr(&mut pt, 0xa9, 1, 0x80), None);
    assert_eq!(pt.stats().flrs, 2);
}

#[test]
fn transactions_pending_forever_times_out_and_resets_anyway() {
    let mut pt = model();
    pt.hardware_mut().pending_reads = u32::MAX;
    let start = log_len(&mut pt);
    pt.reset().unwrap();
    let flr = find(&mut pt, start, |e| {
        matches!(e, Event::CfgWrite { offset: 0xa8, .. })
    });
    let waited: u32 = pt.hardware_mut().log[start..flr]
        .iter()
        .map(|e| match e {
            Event::Delay(ms) => *ms,
            _ => 0,
        })
        .sum();
    assert_eq!(waited, flr_timing::PENDING_LIMIT_MS);
    assert_eq!(pt.stats().pending_timeouts, 1);
    assert_eq!(pt.hardware_mut().flrs, 1);
}

#[test]
fn flr_refused_without_the_capability() {
    let mut hw = FakeVf::igbvf();
    hw.set32(0xa4, 0x0000_8000);
    let mut pt = model_of(hw);
    assert_eq!(rd(&mut pt, 0xa4, 4), 0x8000, "the guest sees no FLR");
    let before = log_len(&mut pt);
    assert_eq!(pt.reset(), Err(PassThroughError::NotFlrCapable));
    assert!(pt.hardware_mut().since(before).is_empty());
    wr(&mut pt, reg::COMMAND, 2, 2);
    let before = log_len(&mut pt);
    assert_eq!(wr(&mut pt, 0xa8, 2, 0x8000), None);
    assert!(pt.hardware_mut().since(before).is_empty());
    assert_eq!(rd(&mut pt, reg::COMMAND, 2), 2, "nothing reset");
    let s = pt.stats();
    assert_eq!((s.flrs, s.flr_failures, s.config_writes_refused), (0, 2, 1));
}

#[test]
fn a_function_that_comes_back_late_or_never() {
    let mut hw = FakeVf::igbvf();
    hw.not_ready_after_flr = 3;
    let mut pt = model_of(hw);
    let start = log_len(&mut pt);
    pt.reset().unwrap();
    let delays: Vec<u32> = pt.hardware_mut().log[start..]
        .iter()
        .filter_map(|e| match e {
            Event::Delay(ms) => Some(*ms),
            _ => None,
        })
        .collect();
    assert_eq!(delays, [100, 1, 2, 4]);

    let mut hw = FakeVf::igbvf();
    hw.not_ready_after_flr = u32::MAX;
    let mut pt = model_of(hw);
    wr(&mut pt, reg::COMMAND, 2, 6);
    let start = log_len(&mut pt);
    assert_eq!(pt.reset(), Err(PassThroughError::NotReady));
    let log = &pt.hardware_mut().log[start..];
    let waited: u32 = log
        .iter()
        .map(|e| match e {
            Event::Delay(ms) => *ms,
            _ => 0,
        })
        .sum();
    assert_eq!(waited, flr_timing::COMPLETE_MS + flr_timing::READY_LIMIT_MS);
    assert!(log.len() < 100, "bounded polling");
    // Nothing is written to a function that does not answer after the FLR, but its IRTEs are
    // blocked and the guest's view is reset.
    let flr = log
        .iter()
        .position(|e| matches!(e, Event::CfgWrite { offset: 0xa8, .. }))
        .unwrap();
    assert!(log[flr + 1..].iter().all(|e| matches!(e, Event::Delay(_))));
    assert_eq!(pt.remapper_mut().blocked.len(), 3);
    assert_eq!(rd(&mut pt, reg::COMMAND, 2), 0);
    let s = pt.stats();
    assert_eq!((s.flrs, s.flr_failures), (0, 1));
}

#[test]
fn on_an_enclave_segment_beside_the_host_bridge() {
    use crate::pci::bars::BarMap;
    use crate::pci::host::{Ecam, HostBridge, PciSegment};
    use crate::pci::Bdf;
    use alloc::boxed::Box;

    let mut hw = FakeVf::igbvf();
    hw.bar3[0x2000] = 0b010;
    hw.bar0[0x10] = 0x5a;
    let mut segment = PciSegment::new(Ecam::new(0, 1).unwrap());
    let host = Bdf::new(0, 0, 0).unwrap();
    let vf = Bdf::new(0, 1, 0).unwrap();
    segment.insert(host, Box::new(HostBridge::new())).unwrap();
    segment.insert(vf, Box::new(model_of(hw))).unwrap();
    let ecam = |bdf: Bdf, reg: u16| u64::from(bdf.devfn.bits()) << 12 | u64::from(reg);
    let mut d = [0u8; 4];
    segment.ecam_read(ecam(vf, 0), &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x10ca_8086);
    // The OS places BAR 0 and BAR 3 and turns decoding on; the platform maps them.
    for (reg, v) in [
        (0x10u16, 0xfe00_0000u32),
        (0x14, 0),
        (0x1c, 0xfe00_4000),
        (0x20, 0),
    ] {
        segment.ecam_write(ecam(vf, reg), &v.to_le_bytes());
    }
    let (bdf, effect) = segment
        .ecam_write(ecam(vf, reg::COMMAND), &command::MEMORY.to_le_bytes())
        .unwrap();
    assert_eq!(bdf, vf);
    assert!(matches!(effect, ConfigEffect::Command { new, .. } if new == command::MEMORY));
    let mut map = BarMap::with_capacity(4, 0);
    map.update(&mut segment, vf).unwrap();
    // The PBA and a BAR 0 register read through the map reach the hardware.
    let mut q = [0u8; 8];
    map.mmio_read(&mut segment, 0xfe00_6000, &mut q).unwrap();
    assert_eq!(u64::from_le_bytes(q), 0b010);
    let mut b = [0u8; 1];
    map.mmio_read(&mut segment, 0xfe00_0010, &mut b).unwrap();
    assert_eq!(b[0], 0x5a);
    // The table answers with the guest's view (entries masked at reset).
    map.mmio_read(&mut segment, 0xfe00_400c, &mut d).unwrap();
    assert_eq!(u32::from_le_bytes(d), 1);
}
