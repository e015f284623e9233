//! The driver against the register model: enable order, one bit per GCMD write, refusals,
//! context changes and their invalidations, the queue, faults, malformed registers.

use super::*;
use crate::context::ContextEntry;
use crate::fault::{FaultKind, FaultReason};
use crate::model::{Event, Frames, Memory, Model, ModelQueue};
use crate::qi::{Decoded, QueueFault, Scope, MAX_BATCH, QUEUE_LEN};
use crate::regs::FaultStatus;
use alloc::vec::Vec;
use ept::{MemType, PageSize, Perms, SlTables};

const RING: u64 = 0x8000_0000;
const STATUS: u64 = 0x8000_1000;
const ROOT_WINDOW: u64 = 0x1000;

type TestUnit = Unit<Model, ModelQueue>;

fn h(a: u64) -> HostPhysAddr {
    HostPhysAddr::new(a)
}

fn queue(memory: &Memory) -> ModelQueue {
    ModelQueue::new(memory.clone(), h(RING), h(STATUS))
}

fn probe(model: Model) -> Result<TestUnit, Error> {
    let q = queue(&model.memory);
    Unit::probe(model, ROOT_WINDOW, 48, q)
}

fn qemu() -> TestUnit {
    let mut u = probe(Model::qemu_like(Memory::new())).expect("QEMU-like unit probes");
    u.set_poll_limit(1000);
    u
}

fn enabled() -> (TestUnit, ContextTables<Frames>) {
    let mut u = qemu();
    let ctx = ContextTables::new(Frames::new(), u.cap()).unwrap();
    u.enable(ctx.root_table()).unwrap();
    u.registers_mut().clear_events();
    (u, ctx)
}

/// The single bit each GCMD write changed, in order; fails if a write changed more or less.
fn command_bits(m: &Model) -> Vec<GlobalCommand> {
    m.commands()
        .into_iter()
        .map(|(value, changed)| {
            assert_eq!(
                changed.bits().count_ones(),
                1,
                "GCMD {value:#x} changed {changed:?}"
            );
            changed
        })
        .collect()
}

#[test]
fn enable_follows_the_spec_order() {
    let mut u = qemu();
    let ctx = ContextTables::new(Frames::new(), u.cap()).unwrap();
    u.enable(ctx.root_table()).unwrap();
    let m = u.registers();
    assert_eq!(m.violations(), &[] as &[&str]);
    assert_eq!(
        command_bits(m),
        [GlobalCommand::SRTP, GlobalCommand::QIE, GlobalCommand::TE]
    );
    assert_eq!(m.latched_root(), Some(ctx.root_table().as_u64()));
    // Between QIE and TE: context cache, IOTLB, interrupt entry cache, all global, then the wait.
    let ev = m.events();
    let qie = ev
        .iter()
        .position(|e| matches!(e, Event::Command { changed, .. } if *changed == GlobalCommand::QIE))
        .unwrap();
    let te = ev
        .iter()
        .position(|e| matches!(e, Event::Command { changed, .. } if *changed == GlobalCommand::TE))
        .unwrap();
    let between: Vec<_> = ev[qie + 1..te].to_vec();
    assert_eq!(between.len(), 4, "{between:?}");
    assert_eq!(
        between[0],
        Event::Invalidation(Decoded::ContextCache(Scope::Global))
    );
    assert_eq!(
        between[1],
        Event::Invalidation(Decoded::Iotlb(Scope::Global))
    );
    assert_eq!(
        between[2],
        Event::Invalidation(Decoded::InterruptEntryCache { selective: None })
    );
    assert!(matches!(
        between[3],
        Event::Invalidation(Decoded::Wait { status: Some((a, _)), fence: true, .. }) if a == h(STATUS)
    ));
    let s = u.status();
    assert!(s.contains(GlobalStatus::TES | GlobalStatus::QIES | GlobalStatus::RTPS));
    assert!(!s.contains(GlobalStatus::CFIS) && !s.contains(GlobalStatus::IRES));
    // The fault event interrupt is masked: atoll polls.
    assert_eq!(m.fault_event_control(), FaultEventControl::IM.bits());
}

#[test]
fn enable_after_firmware_turns_its_state_off_one_bit_at_a_time() {
    let mut model = Model::qemu_like(Memory::new());
    // Firmware (or a previous kernel) left translation, the queue, interrupt remapping and
    // compatibility format on, and the one-shot status bits set.
    model.force_status(
        GlobalStatus::TES
            | GlobalStatus::QIES
            | GlobalStatus::IRES
            | GlobalStatus::CFIS
            | GlobalStatus::RTPS
            | GlobalStatus::IRTPS,
    );
    let mut u = probe(model).unwrap();
    u.set_poll_limit(1000);
    let ctx = ContextTables::new(Frames::new(), u.cap()).unwrap();
    u.enable(ctx.root_table()).unwrap();
    let m = u.registers();
    assert_eq!(
        command_bits(m),
        [
            GlobalCommand::TE,
            GlobalCommand::IRE,
            GlobalCommand::QIE,
            GlobalCommand::SRTP,
            GlobalCommand::QIE,
            GlobalCommand::TE
        ]
    );
    // One-shot bits were never written back (the SRTP write is the only one carrying SRTP).
    for (value, _) in m.commands() {
        assert_eq!(value & GlobalCommand::SIRTP.bits(), 0, "{value:#x}");
    }
    // CFI stays as firmware left it until interrupt remapping is enabled, never newly set.
    assert!(m
        .commands()
        .iter()
        .all(|(_, c)| !c.contains(GlobalCommand::CFI)));
}

#[test]
fn probe_refuses_units_atoll_cannot_drive() {
    let base = Model::qemu_like(Memory::new());
    let (cap, ecap) = (base.cap, base.ecap);
    let no_qi = Model::new(cap, Ecap(ecap.0 & !(1 << 1)), Memory::new());
    let err = probe(no_qi).err().unwrap();
    assert_eq!(err, Error::NoQueuedInvalidation);
    assert!(err.to_string().contains("ECAP.QI"));
    // SAGAW with 3-level only.
    let three = Model::new(Cap(cap.0 & !(0x1f << 8) | 0b0010 << 8), ecap, Memory::new());
    let err = probe(three).err().unwrap();
    assert_eq!(err, Error::NoFourLevelTables { sagaw: 0b0010 });
    assert!(err.to_string().contains("4-level"));
    // MGAW 39 when 48 bits are needed.
    let narrow = Model::new(Cap(cap.0 & !(0x3f << 16) | 38 << 16), ecap, Memory::new());
    assert_eq!(
        probe(narrow).err(),
        Some(Error::AddressWidthTooSmall {
            mgaw: 39,
            needed: 48
        })
    );
    // Fault records beyond the one-page window (FRO = 0x3ff → 0x3ff0).
    let far = Model::new(Cap(cap.0 | 0x3ff << 24), ecap, Memory::new());
    let err = probe(far).err().unwrap();
    assert!(
        matches!(
            err,
            Error::RegisterOutsideWindow {
                what: "fault recording",
                ..
            }
        ),
        "{err}"
    );
    // IOTLB registers beyond it.
    let far = Model::new(cap, Ecap(ecap.0 | 0x3ff << 8), Memory::new());
    assert!(matches!(
        probe(far).err(),
        Some(Error::RegisterOutsideWindow { what: "IOTLB", .. })
    ));
    // A window smaller than the architectural registers.
    let q = queue(&Memory::new());
    assert!(matches!(
        Unit::probe(Model::qemu_like(Memory::new()), 0x80, 48, q).err(),
        Some(Error::RegisterOutsideWindow { what: "base", .. })
    ));
    // Nothing was written to a refused unit: probe only reads.
}

#[test]
fn context_assignment_writes_the_entry_and_asks_for_the_right_invalidations() {
    let (mut u, mut ctx) = enabled();
    let mut frames = Frames::new();
    let sl = SlTables::new(&mut frames, PageSize::Size1G).unwrap();
    let dev = SourceId::from_bdf(0, 3, 0).unwrap();
    let flush = ctx.assign(dev, DomainId(5), sl.slptptr()).unwrap();
    let e = ctx.lookup(dev);
    assert_eq!(
        e.lo,
        sl.slptptr().as_u64() | 1,
        "P, TT 0, FPD clear, SLPTPTR"
    );
    assert_eq!(e.hi, 2 | 5 << 8, "AW 2 (48-bit, 4-level), DID 5");
    assert!(e.present() && !e.fault_processing_disabled());
    assert_eq!(
        e.translation_type(),
        crate::context::TranslationType::Untranslated
    );
    let root = ctx.root_entry(0);
    assert!(root.present());
    let table = root.context_table();
    assert_eq!(
        ctx.frame_source().read(table).unwrap()[0x18 * 2..0x18 * 2 + 2],
        [e.lo, e.hi]
    );
    assert_eq!(root.hi, 0);
    assert!(
        !ctx.root_entry(1).present(),
        "only the bus in use has a context table"
    );
    u.flush(flush).unwrap();
    // Caching mode (QEMU): the cached not-present entry is tagged domain 0.
    assert_eq!(
        u.registers().invalidations()[..2],
        [
            Decoded::ContextCache(Scope::Device {
                domain: DomainId(0),
                source: dev,
                function_mask: 0
            }),
            Decoded::Iotlb(Scope::Domain(DomainId(5))),
        ]
    );
    // Assigning the same again asks for nothing.
    assert!(ctx
        .assign(dev, DomainId(5), sl.slptptr())
        .unwrap()
        .is_empty());
    drop(sl);
}

#[test]
fn without_caching_mode_the_new_domain_tags_the_invalidation() {
    let mut model = Model::qemu_like(Memory::new());
    model.cap = Cap(model.cap.0 & !(1 << 7));
    let u = probe(model).unwrap();
    let mut ctx = ContextTables::new(Frames::new(), u.cap()).unwrap();
    let dev = SourceId::new(2, 0x10);
    let flush = ctx.assign(dev, DomainId(0), h(0x5000)).unwrap();
    let d: Vec<_> = flush.descriptors().map(|d| d.decode()).collect();
    assert_eq!(
        d,
        [
            Decoded::ContextCache(Scope::Device {
                domain: DomainId(0),
                source: dev,
                function_mask: 0
            }),
            Decoded::Iotlb(Scope::Domain(DomainId(0))),
        ]
    );
}

#[test]
fn moving_a_device_invalidates_the_old_domain_before_the_new_entry() {
    let (mut u, mut ctx) = enabled();
    let dev = SourceId::new(0, 0x18);
    let (a, b) = (DomainId(1), DomainId(2));
    u.assign(&mut ctx, dev, a, h(0xa000)).unwrap();
    u.registers_mut().clear_events();
    // Straight to B without blocking is refused and changes nothing.
    let err = ctx.assign(dev, b, h(0xb000)).unwrap_err();
    assert_eq!(
        err,
        Error::DeviceAssigned {
            source: dev,
            domain: a
        }
    );
    assert!(err.to_string().contains("00:03.0"));
    assert_eq!(ctx.lookup(dev).domain(), a);
    // The unit does it in order.
    u.assign(&mut ctx, dev, b, h(0xb000)).unwrap();
    let inv: Vec<_> = u
        .registers()
        .invalidations()
        .into_iter()
        .filter(|d| !matches!(d, Decoded::Wait { .. }))
        .collect();
    assert_eq!(
        inv,
        [
            Decoded::ContextCache(Scope::Device {
                domain: a,
                source: dev,
                function_mask: 0
            }),
            Decoded::Iotlb(Scope::Domain(a)),
            Decoded::ContextCache(Scope::Device {
                domain: DomainId(0),
                source: dev,
                function_mask: 0
            }),
            Decoded::Iotlb(Scope::Domain(b)),
        ]
    );
    // Two waits: the old state was gone before the new entry was written.
    let waits = u
        .registers()
        .invalidations()
        .iter()
        .filter(|d| matches!(d, Decoded::Wait { .. }))
        .count();
    assert_eq!(waits, 2);
    let e = ctx.lookup(dev);
    assert_eq!((e.domain(), e.slptptr()), (b, h(0xb000)));
}

#[test]
fn blocking_clears_the_entry_and_invalidates_the_domain_it_left() {
    let (mut u, mut ctx) = enabled();
    let dev = SourceId::new(0, 0x18);
    assert!(
        ctx.block(dev).is_empty(),
        "a device never assigned is already blocked"
    );
    u.assign(&mut ctx, dev, DomainId(3), h(0x3000)).unwrap();
    u.registers_mut().clear_events();
    u.block(&mut ctx, dev).unwrap();
    assert_eq!(ctx.lookup(dev), ContextEntry::BLOCKED);
    let inv = u.registers().invalidations();
    assert_eq!(
        inv[..2],
        [
            Decoded::ContextCache(Scope::Device {
                domain: DomainId(3),
                source: dev,
                function_mask: 0
            }),
            Decoded::Iotlb(Scope::Domain(DomainId(3))),
        ]
    );
    assert!(ctx.block(dev).is_empty(), "blocking twice asks for nothing");
    assert_eq!(ctx.assigned().count(), 0);
}

#[test]
fn domain_ids_are_bounded_by_nd_and_zero_is_reserved_under_caching_mode() {
    let mut model = Model::qemu_like(Memory::new());
    model.cap = Cap(model.cap.0 & !7); // ND 0: 16 domains
    let u = probe(model).unwrap();
    let mut ctx = ContextTables::new(Frames::new(), u.cap()).unwrap();
    let dev = SourceId::new(0, 8);
    assert_eq!(
        ctx.assign(dev, DomainId(16), h(0x1000)).err(),
        Some(Error::DomainOutOfRange {
            domain: DomainId(16),
            limit: 16
        })
    );
    assert_eq!(
        ctx.assign(dev, DomainId(0), h(0x1000)).err(),
        Some(Error::DomainReserved {
            domain: DomainId(0)
        })
    );
    assert!(matches!(
        ctx.assign(dev, DomainId(15), h(0x1001)).err(),
        Some(Error::BadFrame { .. })
    ));
    assert_eq!(ctx.lookup(dev), ContextEntry::BLOCKED);
    ctx.assign(dev, DomainId(15), h(0x1000))
        .unwrap()
        .descriptors()
        .count();
    assert_eq!(ctx.lookup(dev).domain(), DomainId(15));
}

#[test]
fn context_tables_take_frames_per_bus_and_give_them_back() {
    let cap = Model::qemu_like(Memory::new()).cap;
    let mut frames = Frames::new();
    {
        let mut ctx = ContextTables::new(&mut frames, cap).unwrap();
        for bus in [0u8, 0, 7, 255] {
            let _ = ctx
                .assign(SourceId::new(bus, 1), DomainId(1), h(0x1000))
                .unwrap();
        }
        assert_eq!(ctx.table_frames(), 4);
        assert_eq!(ctx.assigned().count(), 3);
    }
    assert_eq!(frames.live(), 0, "dropping frees every frame");
    frames.budget = Some(1);
    let mut ctx = ContextTables::new(&mut frames, cap).unwrap();
    assert_eq!(
        ctx.assign(SourceId::new(0, 1), DomainId(1), h(0x1000))
            .err(),
        Some(Error::OutOfFrames)
    );
    assert_eq!(ctx.lookup(SourceId::new(0, 1)), ContextEntry::BLOCKED);
    let f = ctx.destroy();
    assert_eq!(f.live(), 0);
}

#[test]
fn queue_wraps_around_its_256_slots() {
    let (mut u, _ctx) = enabled();
    let start = u.queue().tail();
    let mut sent = Vec::new();
    // 7 batches of 50 (+ a wait each): 357 slots, so the ring wraps.
    for i in 0..7u16 {
        let batch: Vec<_> = (0..50u16)
            .map(|j| Descriptor::iotlb_domain(DomainId(i * 50 + j)))
            .collect();
        u.invalidate(&batch).unwrap();
        sent.extend(batch);
    }
    assert_eq!(u.queue().tail(), (start + 7 * 51) % QUEUE_LEN);
    assert_eq!(u.registers().queue_head(), u.queue().tail());
    let got: Vec<_> = u
        .registers()
        .invalidations()
        .into_iter()
        .filter(|d| !matches!(d, Decoded::Wait { .. }))
        .collect();
    let want: Vec<_> = sent.iter().map(|d| d.decode()).collect();
    assert_eq!(got, want, "every descriptor executed once, in order");
    // One submission larger than the ring is split into batches.
    let big: Vec<_> = (0..600u16)
        .map(|i| Descriptor::iotlb_domain(DomainId(i)))
        .collect();
    u.registers_mut().clear_events();
    u.invalidate(&big).unwrap();
    let inv = u.registers().invalidations();
    assert_eq!(inv.len(), 600 + 600usize.div_ceil(MAX_BATCH));
    assert!(u.registers().violations().is_empty());
}

#[test]
fn a_wait_that_never_completes_times_out() {
    let (mut u, _ctx) = enabled();
    u.registers_mut().stall_queue = true;
    let err = u.invalidate(&[Descriptor::iotlb_global()]).unwrap_err();
    assert!(
        matches!(err, Error::QueueTimeout { head: 4, tail: 6 }),
        "{err}"
    );
    assert!(err.to_string().contains("timed out"));
    // The unit catches up; later submissions work again.
    u.registers_mut().stall_queue = false;
    u.invalidate(&[Descriptor::iotlb_global()]).unwrap();
}

#[test]
fn a_refused_descriptor_is_reported_as_iqe_and_the_queue_recovers() {
    let (mut u, _ctx) = enabled();
    let bad = Descriptor { lo: 0xf, hi: 0 };
    let err = u
        .invalidate(&[
            Descriptor::iotlb_global(),
            bad,
            Descriptor::context_global(),
        ])
        .unwrap_err();
    let Error::QueueFault { fault, head, code } = err else {
        panic!("{err:?}");
    };
    assert_eq!(fault, QueueFault::InvalidDescriptor);
    assert_eq!(
        head, 5,
        "the bad descriptor's slot (after the 4 of enable, and one good)"
    );
    assert_eq!(code, 1);
    assert!(err.to_string().contains("IQE"), "{err}");
    // IQE was cleared, the queue emptied at the bad slot, and it works again.
    let fsts = FaultStatus::from_bits_retain(u.registers().read32(offset::FSTS));
    assert!(!fsts.contains(FaultStatus::IQE));
    u.registers_mut().clear_events();
    u.invalidate(&[Descriptor::iotlb_global()]).unwrap();
    assert_eq!(
        u.registers().invalidations()[0],
        Decoded::Iotlb(Scope::Global)
    );
}

#[test]
fn ite_and_ice_are_named_and_cleared() {
    for (bit, fault, name) in [
        (FaultStatus::ITE, QueueFault::Timeout, "ITE"),
        (FaultStatus::ICE, QueueFault::Completion, "ICE"),
    ] {
        let (mut u, _ctx) = enabled();
        u.registers_mut().stall_queue = true;
        u.registers_mut().raise(bit);
        let err = u.invalidate(&[Descriptor::iotlb_global()]).unwrap_err();
        assert!(
            matches!(err, Error::QueueFault { fault: f, .. } if f == fault),
            "{err}"
        );
        assert!(err.to_string().contains(name));
        let fsts = FaultStatus::from_bits_retain(u.registers().read32(offset::FSTS));
        assert!(!fsts.intersects(bit));
    }
}

#[test]
fn invalidating_before_the_queue_is_on_is_refused() {
    let mut u = qemu();
    assert_eq!(
        u.invalidate(&[Descriptor::iotlb_global()]),
        Err(Error::QueueDisabled)
    );
}

#[test]
fn fault_records_are_decoded_attributed_and_cleared() {
    let mut model = Model::qemu_like(Memory::new());
    model.cap = Cap(model.cap.0 | 3 << 40); // four records
    let mut u = probe(model).unwrap();
    let m = u.registers_mut();
    m.set_fault_index(2);
    // A write to 0xdead_b000 by 00:03.0 denied; a blocked device's read; an interrupt with a
    // not-present IRTE (index 7) from 00:1f.0.
    assert!(m.inject_fault(2, 0xdead_b123, 5 << 32 | 0x0018));
    assert!(m.inject_fault(3, 0x4000, 1 << 62 | 2 << 32 | 0x0100));
    assert!(m.inject_fault(0, 7 << 48, 0x22 << 32 | 0x00f8));
    let mut got = Vec::new();
    let summary = u.drain_faults(|r| got.push(r));
    assert_eq!(
        summary,
        DrainSummary {
            records: 3,
            overflow: false
        }
    );
    assert_eq!(got[0].source, SourceId::from_bdf(0, 3, 0).unwrap());
    assert_eq!(
        (got[0].address, got[0].reason, got[0].write),
        (0xdead_b000, FaultReason::WriteDenied, true)
    );
    assert_eq!(
        (got[1].source, got[1].reason, got[1].write),
        (SourceId::new(1, 0), FaultReason::ContextNotPresent, false)
    );
    assert_eq!(got[2].kind, FaultKind::Interrupt(7));
    assert_eq!(got[2].reason, FaultReason::IrteNotPresent);
    assert_eq!(got[2].source.to_string(), "00:1f.0");
    assert!(got[2]
        .to_string()
        .contains("interrupt remapping entry not present"));
    // Every F bit cleared, PPF with them; a second drain finds nothing.
    for i in 0..4 {
        assert_eq!(u.registers().record(i).1 >> 63, 0, "record {i}");
    }
    let fsts = FaultStatus::from_bits_retain(u.registers().read32(offset::FSTS));
    assert!(!fsts.contains(FaultStatus::PPF));
    assert_eq!(u.drain_faults(|_| panic!("no record left")).records, 0);
}

#[test]
fn a_lost_fault_is_reported_as_overflow_and_cleared() {
    let mut u = qemu(); // one record, as QEMU
    let m = u.registers_mut();
    assert!(m.inject_fault(0, 0x1000, 6 << 32));
    assert!(
        !m.inject_fault(0, 0x2000, 6 << 32),
        "the only record is full"
    );
    let cap = u.cap();
    let (records, summary) = crate::fault::drain_all(u.registers_mut(), cap);
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].address, 0x1000,
        "the first fault is kept, the second lost"
    );
    assert_eq!(records[0].reason, FaultReason::ReadDenied);
    assert!(summary.overflow);
    let fsts = FaultStatus::from_bits_retain(u.registers().read32(offset::FSTS));
    assert!(!fsts.intersects(FaultStatus::PFO | FaultStatus::PPF));
    assert_eq!(u.drain_faults(|_| {}), DrainSummary::default());
}

#[test]
fn interrupt_remapping_hook_latches_the_table_and_keeps_cfi_clear() {
    let (mut u, _ctx) = enabled();
    assert_eq!(u.enable_interrupt_remapping(), Err(Error::NoInterruptTable));
    assert_eq!(
        u.set_interrupt_remap_table(h(0x7000), 16, true),
        Err(Error::BadTableSize { size_log2: 16 })
    );
    assert!(matches!(
        u.set_interrupt_remap_table(h(0x7008), 7, true),
        Err(Error::BadFrame { .. })
    ));
    u.set_interrupt_remap_table(h(0x7000), 7, true).unwrap();
    assert_eq!(
        u.registers().latched_interrupt_table(),
        Some(0x7000 | 1 << 11 | 7)
    );
    assert!(u
        .registers()
        .invalidations()
        .contains(&Decoded::InterruptEntryCache { selective: None }));
    u.enable_interrupt_remapping().unwrap();
    let s = u.status();
    assert!(s.contains(GlobalStatus::IRES | GlobalStatus::TES));
    assert!(!s.contains(GlobalStatus::CFIS));
    assert_eq!(
        command_bits(u.registers()),
        [GlobalCommand::SIRTP, GlobalCommand::IRE]
    );
    assert!(u.registers().violations().is_empty());
    // A unit without IR or EIM refuses.
    let mut model = Model::qemu_like(Memory::new());
    model.ecap = Ecap(model.ecap.0 & !(1 << 4));
    let mut no_eim = probe(model).unwrap();
    assert_eq!(
        no_eim.set_interrupt_remap_table(h(0x7000), 7, true),
        Err(Error::NoExtendedInterruptMode)
    );
    let mut model = Model::qemu_like(Memory::new());
    model.ecap = Ecap(model.ecap.0 & !(1 << 3));
    let mut no_ir = probe(model).unwrap();
    assert_eq!(
        no_ir.set_interrupt_remap_table(h(0x7000), 7, false),
        Err(Error::NoInterruptRemapping)
    );
}

#[test]
fn firmware_cfi_is_cleared_before_ire() {
    let (mut u, _ctx) = enabled();
    let s = u.status();
    u.registers_mut().force_status(s | GlobalStatus::CFIS);
    u.set_interrupt_remap_table(h(0x7000), 7, false).unwrap();
    u.registers_mut().clear_events();
    u.enable_interrupt_remapping().unwrap();
    assert_eq!(
        command_bits(u.registers()),
        [GlobalCommand::CFI, GlobalCommand::IRE]
    );
    assert!(!u.status().contains(GlobalStatus::CFIS));
}

#[test]
fn disable_turns_translation_remapping_and_queue_off() {
    let (mut u, _ctx) = enabled();
    u.set_interrupt_remap_table(h(0x7000), 7, false).unwrap();
    u.enable_interrupt_remapping().unwrap();
    u.registers_mut().clear_events();
    u.disable().unwrap();
    assert_eq!(
        command_bits(u.registers()),
        [GlobalCommand::TE, GlobalCommand::IRE, GlobalCommand::QIE]
    );
    assert!(!u
        .status()
        .intersects(GlobalStatus::TES | GlobalStatus::IRES | GlobalStatus::QIES));
    assert!(u.registers().violations().is_empty());
}

#[test]
fn a_command_the_unit_ignores_times_out_with_its_name() {
    let mut u = qemu();
    u.registers_mut().ignore_commands = true;
    let err = u.enable(h(0x1000)).unwrap_err();
    assert_eq!(
        err,
        Error::CommandTimeout {
            command: GlobalCommand::SRTP,
            set: true
        }
    );
    assert!(err.to_string().contains("SRTP"), "{err}");
}

#[test]
fn protected_memory_regions_left_on_by_firmware_go_off() {
    let mut model = Model::qemu_like(Memory::new());
    model.cap = Cap(model.cap.0 | 1 << 5);
    model.set_pmen(regs::PMEN_EPM | regs::PMEN_PRS);
    let mut u = probe(model).unwrap();
    u.enable(h(0x1000)).unwrap();
    assert_eq!(u.registers().read32(offset::PMEN), 0);
}

#[test]
fn second_level_tables_for_a_domain_then_invalidate_it() {
    // The flow the hypervisor follows: build a domain's tables, assign a device, change the
    // tables, invalidate the domain's IOTLB.
    let (mut u, mut ctx) = enabled();
    let mut sl = SlTables::new(Frames::new(), u.largest_page()).unwrap();
    let rw = Perms::READ | Perms::WRITE;
    sl.map(
        boot::GuestPhysAddr::new(0),
        h(0x4000_0000),
        1 << 30,
        rw,
        MemType::WriteBack,
    )
    .unwrap();
    let dev = SourceId::new(0, 0x20);
    u.assign(&mut ctx, dev, DomainId(9), sl.slptptr()).unwrap();
    sl.protect(boot::GuestPhysAddr::new(0x1000), 0x1000, Perms::READ)
        .unwrap();
    u.registers_mut().clear_events();
    u.invalidate_domain(DomainId(9)).unwrap();
    assert_eq!(
        u.registers().invalidations()[0],
        Decoded::Iotlb(Scope::Domain(DomainId(9)))
    );
    assert_eq!(u.largest_page(), PageSize::Size1G);
}

/// xorshift64, for the malformed-register runs.
fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn malformed_registers_and_records_never_panic() {
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut probed = 0;
    for _ in 0..2000 {
        let cap = Cap(rng(&mut s));
        let ecap = Ecap(rng(&mut s) | 1 << 1);
        let mut model = Model::new(cap, ecap, Memory::new());
        model.set_fault_index(rng(&mut s) as u8);
        for i in 0..4 {
            model.inject_fault(i, rng(&mut s), rng(&mut s));
        }
        if rng(&mut s) & 1 == 0 {
            model.raise(FaultStatus::from_bits_retain(rng(&mut s) as u32 & 0x7f));
        }
        let q = queue(&model.memory);
        let window = (rng(&mut s) % 5) * 0x1000;
        let Ok(mut u) = Unit::probe(model, window, 48, q) else {
            continue;
        };
        probed += 1;
        // Everything a probed unit's registers promise stays inside the window.
        let c = u.cap();
        assert!(c.fault_record_offset() + u64::from(c.nfr()) * 16 <= window);
        assert!(u.ecap().iotlb_offset() + 16 <= window);
        let summary = u.drain_faults(|r| {
            let _ = r.to_string();
        });
        assert!(summary.records <= usize::from(c.nfr()));
        // Context tables bounded by whatever ND says.
        if let Ok(mut ctx) = ContextTables::new(Frames::new(), c) {
            let did = DomainId(rng(&mut s) as u16);
            let _ = ctx.assign(SourceId(rng(&mut s) as u16), did, h(rng(&mut s) & !0xfff));
        }
    }
    assert!(probed > 0, "some random units must probe");
}
