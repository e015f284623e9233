//! Host tests of the host's IPI filter. The machine in most tests: host cores with APIC ids
//! 0, 1 and 4; the enclaves own two more cores (APIC ids 2 and 3).

use super::*;
use alloc::vec::Vec;

const ENCLAVE_CORES: u32 = 2;
/// A vector every mode that carries one accepts (fixed, lowest priority, STARTUP).
const V: u32 = 0x40;

fn machine() -> HostCores {
    let mut c = HostCores::new(ENCLAVE_CORES);
    for id in [0, 1, 4] {
        c.add(id).unwrap();
    }
    c
}

/// ICR low bits: delivery mode, shorthand, vector, with the level bit set (assert), as Linux
/// writes them.
fn low(mode: u32, shorthand: u32) -> u32 {
    V | mode << 8 | 1 << 14 | shorthand << 18
}

fn x2(low: u32, dest: u32) -> Icr {
    Icr::from_x2apic(u64::from(dest) << 32 | u64::from(low)).unwrap()
}

fn xa(low: u32, dest: u8) -> Icr {
    Icr::from_xapic(low, u32::from(dest) << 24)
}

/// The APIC ids an action reaches, ascending.
fn reached(cores: &HostCores, action: &Action) -> Vec<u32> {
    let set = match action {
        Action::Send { to, .. } | Action::EmulateInit { to } | Action::EmulateSipi { to, .. } => to,
        Action::Drop(_) => return Vec::new(),
    };
    let mut ids: Vec<u32> = cores.apic_ids(set).collect();
    ids.sort_unstable();
    ids
}

#[derive(Debug, PartialEq, Eq)]
enum Want {
    Fixed(&'static [u32]),
    Nmi(&'static [u32]),
    Init(&'static [u32]),
    Sipi(&'static [u32]),
    Drop(DropReason),
}

fn check(cores: &HostCores, d: Decision, want: &Want, outside: u32, what: &str) {
    assert_eq!(d.outside, outside, "{what}: outside count");
    let got_ids = reached(cores, &d.action);
    let ok = match (want, &d.action) {
        (
            Want::Fixed(ids),
            Action::Send {
                what: Deliver::Fixed(v),
                ..
            },
        ) => u32::from(*v) == V && got_ids == *ids,
        (
            Want::Nmi(ids),
            Action::Send {
                what: Deliver::Nmi, ..
            },
        )
        | (Want::Init(ids), Action::EmulateInit { .. }) => got_ids == *ids,
        (Want::Sipi(ids), Action::EmulateSipi { vector, .. }) => {
            u32::from(*vector) == V && got_ids == *ids
        }
        (Want::Drop(r), Action::Drop(got)) => r == got,
        _ => false,
    };
    assert!(ok, "{what}: wanted {want:?}, got {:?}", d.action);
}

/// Every delivery mode (including both reserved encodings) with every shorthand, from the
/// xAPIC page and the x2APIC MSR: the expectations are Table 11-3 restricted to the host.
#[test]
fn every_delivery_mode_with_every_shorthand() {
    use DropReason::*;
    let cores = machine();
    // Rows: delivery modes 0..=7; columns: shorthands none (destination host core 1), self,
    // all including self, all excluding self. The sender is core 0.
    let table: [[Want; 4]; 8] = [
        [
            Want::Fixed(&[1]),
            Want::Fixed(&[0]),
            Want::Fixed(&[0, 1, 4]),
            Want::Fixed(&[1, 4]),
        ],
        [
            Want::Fixed(&[1]),
            Want::Drop(InvalidShorthand),
            Want::Drop(InvalidShorthand),
            // Lowest priority among {1, 4}: the lowest APIC id.
            Want::Fixed(&[1]),
        ],
        [
            Want::Drop(Smi),
            Want::Drop(Smi),
            Want::Drop(Smi),
            Want::Drop(Smi),
        ],
        [
            Want::Drop(ReservedDeliveryMode(3)),
            Want::Drop(ReservedDeliveryMode(3)),
            Want::Drop(ReservedDeliveryMode(3)),
            Want::Drop(ReservedDeliveryMode(3)),
        ],
        [
            Want::Nmi(&[1]),
            Want::Drop(InvalidShorthand),
            Want::Drop(InvalidShorthand),
            Want::Nmi(&[1, 4]),
        ],
        [
            Want::Init(&[1]),
            Want::Drop(InvalidShorthand),
            Want::Drop(InvalidShorthand),
            Want::Init(&[1, 4]),
        ],
        [
            Want::Sipi(&[1]),
            Want::Drop(InvalidShorthand),
            Want::Drop(InvalidShorthand),
            Want::Sipi(&[1, 4]),
        ],
        [
            Want::Drop(ReservedDeliveryMode(7)),
            Want::Drop(ReservedDeliveryMode(7)),
            Want::Drop(ReservedDeliveryMode(7)),
            Want::Drop(ReservedDeliveryMode(7)),
        ],
    ];
    // The "all" shorthands name the enclaves' cores too, whatever the mode; the others do not.
    let outside = [0, 0, ENCLAVE_CORES, ENCLAVE_CORES];
    for (mode, row) in table.iter().enumerate() {
        for (sh, want) in row.iter().enumerate() {
            let l = low(mode as u32, sh as u32);
            for dest_mode in [0, 1 << 11] {
                // Logical: host core 1's x2APIC logical id is cluster 0, bit 1.
                let (d32, d8) = if dest_mode == 0 { (1, 1) } else { (1 << 1, 0) };
                let what = alloc::format!("mode {mode} shorthand {sh} dest_mode {dest_mode:#x}");
                let d = decide(x2(l | dest_mode, d32), 0, &cores);
                check(
                    &cores,
                    d,
                    want,
                    outside[sh],
                    &alloc::format!("x2APIC {what}"),
                );
                if dest_mode == 0 {
                    let d = decide(xa(l, d8), 0, &cores);
                    check(
                        &cores,
                        d,
                        want,
                        outside[sh],
                        &alloc::format!("xAPIC {what}"),
                    );
                }
            }
        }
    }
}

#[test]
fn decodes_every_x2apic_field() {
    let icr = Icr::from_x2apic(0x1234_5678_000c_cdab).unwrap();
    assert_eq!(icr.vector, 0xab);
    assert_eq!(icr.mode, DeliveryMode::Init);
    assert_eq!(icr.dest_mode, DestMode::Logical);
    assert!(icr.level && icr.level_triggered);
    assert_eq!(icr.shorthand, Shorthand::AllExcludingSelf);
    assert_eq!(icr.dest, 0x1234_5678);
    assert_eq!(icr.format, IcrFormat::X2Apic);
    let icr = Icr::from_x2apic(0x0000_0000_0000_0230).unwrap();
    assert_eq!(
        (
            icr.vector,
            icr.mode,
            icr.dest_mode,
            icr.level,
            icr.level_triggered
        ),
        (0x30, DeliveryMode::Smi, DestMode::Physical, false, false)
    );
    assert_eq!(icr.shorthand, Shorthand::None);
}

#[test]
fn malformed_x2apic_icr_is_refused_bit_by_bit() {
    let reserved = [12, 13, 16, 17]
        .into_iter()
        .chain(20..32)
        .map(|b| 1u64 << b);
    for bit in reserved {
        let value = 0x0000_0001_0000_0040 | bit;
        assert_eq!(
            Icr::from_x2apic(value),
            Err(MalformedIcr { value }),
            "{bit:#x}"
        );
    }
    // Every defined bit alone decodes.
    for b in (0..12).chain([14, 15, 18, 19]).chain(32..64) {
        assert!(Icr::from_x2apic(1 << b).is_ok(), "bit {b}");
    }
}

#[test]
fn xapic_decoding_ignores_reserved_and_status_bits() {
    // Delivery status (12), reserved 13, 17:16, 31:20 in the low word; 23:0 in the high word.
    let icr = Icr::from_xapic(0xfff3_3040 | 0x4000, 0x01ff_ffff);
    assert_eq!(icr.dest, 1);
    assert_eq!(icr.vector, 0x40);
    assert_eq!(icr.mode, DeliveryMode::Fixed);
    // Bits 19:18 (the shorthand) are clear; 17:16 and 31:20 are set and must not leak in.
    assert_eq!(icr.shorthand, Shorthand::None);
    assert_eq!(icr.format, IcrFormat::XApic);
    let d = decide(icr, 0, &machine());
    assert_eq!(reached(&machine(), &d.action), [1]);
}

#[test]
fn physical_destinations_outside_the_host_are_dropped_and_counted() {
    let cores = machine();
    let fixed = low(0, 0);
    for dest in [2, 3, 0x77] {
        let d = decide(x2(fixed, dest), 0, &cores);
        assert_eq!(
            d,
            Decision::drop(DropReason::OutsideHost, 1),
            "x2APIC {dest}"
        );
        let d = decide(xa(fixed, dest as u8), 0, &cores);
        assert_eq!(
            d,
            Decision::drop(DropReason::OutsideHost, 1),
            "xAPIC {dest}"
        );
    }
    // INIT and STARTUP to an enclave's core are never emulated nor sent.
    for mode in [5, 6] {
        let d = decide(x2(low(mode, 0), 3), 0, &cores);
        assert_eq!(d, Decision::drop(DropReason::OutsideHost, 1));
    }
    // xAPIC 0xFF is the broadcast only in 8-bit destinations; in x2APIC it is APIC id 255.
    let d = decide(x2(fixed, 0xff), 0, &cores);
    assert_eq!(d, Decision::drop(DropReason::OutsideHost, 1));
}

#[test]
fn broadcasts_reach_the_host_cores_only() {
    let cores = machine();
    for mode in [0, 4, 5, 6] {
        for icr in [
            xa(low(mode, 0), 0xff),
            xa(low(mode, 0) | 1 << 11, 0xff),
            x2(low(mode, 0), X2APIC_BROADCAST),
            x2(low(mode, 0) | 1 << 11, X2APIC_BROADCAST),
        ] {
            let d = decide(icr, 4, &cores);
            assert_eq!(d.outside, ENCLAVE_CORES, "{icr:?}");
            // A broadcast by destination includes the sender (unlike "all excluding self").
            assert_eq!(reached(&cores, &d.action), [0, 1, 4], "{icr:?}");
        }
    }
}

#[test]
fn all_excluding_self_leaves_out_whichever_core_sends() {
    let cores = machine();
    let all = [0, 1, 4];
    for sender in all {
        let d = decide(x2(low(0, 3), 0), sender, &cores);
        let want: Vec<u32> = all.into_iter().filter(|&c| c != sender).collect();
        assert_eq!(reached(&cores, &d.action), want, "sender {sender}");
        assert_eq!(d.outside, ENCLAVE_CORES);
    }
    // A host of one core sending to all others: nobody of the host is left, the enclaves'
    // cores are dropped.
    let mut alone = HostCores::new(3);
    alone.add(7).unwrap();
    let d = decide(x2(low(0, 3), 0), 7, &alone);
    assert_eq!(d, Decision::drop(DropReason::OutsideHost, 3));
    // ...and a machine with no other cores: nothing named at all.
    let mut only = HostCores::new(0);
    only.add(7).unwrap();
    let d = decide(x2(low(0, 3), 0), 7, &only);
    assert_eq!(d, Decision::drop(DropReason::NoDestination, 0));
}

fn flat_machine() -> HostCores {
    let mut c = machine();
    // Linux's flat logical ids: one bit per core. Enclave cores would be bits 2 and 3.
    for (id, bit) in [(0, 0), (1, 1), (4, 4)] {
        assert!(c.set_xapic_logical(id, 1 << (24 + bit), 0xffff_ffff));
    }
    c
}

#[test]
fn xapic_logical_flat() {
    let cores = flat_machine();
    let fixed = low(0, 0) | 1 << 11;
    let cases: [(u8, &[u32], u32); 6] = [
        (0x13, &[0, 1, 4], 0),
        (0x02, &[1], 0),
        // Host and enclave cores mixed: the host's go out, the others are counted.
        (0x21, &[0], 1),
        (0x1e, &[1, 4], 2),
        (0x0c, &[], 2),
        (0xff, &[0, 1, 4], ENCLAVE_CORES),
    ];
    for (dest, want, outside) in cases {
        let d = decide(xa(fixed, dest), 0, &cores);
        assert_eq!(reached(&cores, &d.action), want, "{dest:#x}");
        assert_eq!(d.outside, outside, "{dest:#x}");
        if want.is_empty() {
            assert_eq!(d.action, Action::Drop(DropReason::OutsideHost));
        }
    }
    // Destination 0 names nobody.
    let d = decide(xa(fixed, 0), 0, &cores);
    assert_eq!(d, Decision::drop(DropReason::NoDestination, 0));
    // At reset (LDR 0) no core answers to a logical destination.
    let d = decide(xa(fixed, 0x13), 0, &machine());
    assert_eq!(d, Decision::drop(DropReason::OutsideHost, 3));
}

#[test]
fn xapic_logical_cluster() {
    let mut cores = machine();
    // Cluster 1 members 0 and 1 are host cores 0 and 1, cluster 2 member 0 is core 4.
    for (id, ldr) in [(0, 0x11), (1, 0x12), (4, 0x21)] {
        assert!(cores.set_xapic_logical(id, ldr << 24, 0x0fff_ffff));
    }
    let fixed = low(0, 0) | 1 << 11;
    let cases: [(u8, &[u32], u32); 6] = [
        (0x13, &[0, 1], 0),
        (0x11, &[0], 0),
        (0x1c, &[], 2),
        (0x23, &[4], 1),
        (0x31, &[], 1),
        (0xff, &[0, 1, 4], ENCLAVE_CORES),
    ];
    for (dest, want, outside) in cases {
        let d = decide(xa(fixed, dest), 4, &cores);
        assert_eq!(reached(&cores, &d.action), want, "{dest:#x}");
        assert_eq!(d.outside, outside, "{dest:#x}");
    }
    // A cluster without member bits names nobody.
    let d = decide(xa(fixed, 0x10), 4, &cores);
    assert_eq!(d, Decision::drop(DropReason::NoDestination, 0));
}

#[test]
fn x2apic_logical_cluster_ids_come_from_apic_ids() {
    // Host cores 0, 1 and 0x11 (cluster 1, bit 1); the enclaves have 2, 3 and 0x10.
    let mut cores = HostCores::new(3);
    for id in [0, 1, 0x11] {
        cores.add(id).unwrap();
    }
    let fixed = low(0, 0) | 1 << 11;
    let cases: [(u32, &[u32], u32); 5] = [
        (0b111, &[0, 1], 1),
        (1 << 16 | 0b10, &[0x11], 0),
        (1 << 16 | 0b11, &[0x11], 1),
        (1 << 16 | 0b01, &[], 1),
        (2 << 16 | 0xffff, &[], 16),
    ];
    for (dest, want, outside) in cases {
        let d = decide(x2(fixed, dest), 0, &cores);
        assert_eq!(reached(&cores, &d.action), want, "{dest:#x}");
        assert_eq!(d.outside, outside, "{dest:#x}");
    }
    // Cluster 0 with an empty mask names nobody; the xAPIC LDR plays no part in x2APIC mode.
    let d = decide(x2(fixed, 0), 0, &cores);
    assert_eq!(d, Decision::drop(DropReason::NoDestination, 0));
    assert!(cores.set_xapic_logical(0x11, 0xff00_0000, 0xffff_ffff));
    let d = decide(x2(fixed, 0b10), 0, &cores);
    assert_eq!(reached(&cores, &d.action), [1]);
}

#[test]
fn lowest_priority_picks_the_lowest_host_apic_id_of_the_set() {
    // Added in an order unlike the APIC ids, so the rule is not "first index".
    let mut cores = HostCores::new(1);
    for id in [4, 9, 1, 6] {
        cores.add(id).unwrap();
    }
    let lowest = low(1, 0) | 1 << 11;
    // x2APIC cluster 0: bits 4, 6, 9 (host) and 1 (host) -> APIC id 1.
    let d = decide(x2(lowest, 1 << 4 | 1 << 6 | 1 << 9 | 1 << 1), 9, &cores);
    assert_eq!(reached(&cores, &d.action), [1]);
    let d = decide(x2(lowest, 1 << 9 | 1 << 6), 9, &cores);
    assert_eq!(reached(&cores, &d.action), [6]);
    // With the enclave's core in the set, it is never the choice: counted instead.
    let d = decide(x2(lowest, 1 << 0 | 1 << 9), 4, &cores);
    assert_eq!(reached(&cores, &d.action), [9]);
    assert_eq!(d.outside, 1);
    // All excluding self: the lowest other than the sender.
    let d = decide(x2(low(1, 3), 0), 1, &cores);
    assert_eq!(reached(&cores, &d.action), [4]);
}

#[test]
fn init_deassert_is_a_no_op_and_counts_nothing() {
    let cores = machine();
    // INIT, level-triggered, level 0: to a host core, an enclave core, everybody.
    for icr in [
        x2(0x8500, 1),
        x2(0x8500, 2),
        x2(0x8500 | 3 << 18, 0),
        xa(0x8500, 0xff),
    ] {
        assert_eq!(
            decide(icr, 0, &cores),
            Decision::drop(DropReason::InitDeassert, 0),
            "{icr:?}"
        );
    }
    // INIT assert (level 1, level- or edge-triggered) and edge INIT with level 0 are INITs.
    for l in [0xc500, 0x4500, 0x0500] {
        let d = decide(x2(l, 1), 0, &cores);
        assert_eq!(reached(&cores, &d.action), [1], "{l:#x}");
        assert!(matches!(d.action, Action::EmulateInit { .. }), "{l:#x}");
    }
}

#[test]
fn illegal_vectors_are_refused_for_fixed_and_lowest_priority_only() {
    let cores = machine();
    for (mode, vector, refused) in [
        (0, 15, true),
        (0, 0, true),
        (0, 16, false),
        (1, 3, true),
        (1, 16, false),
        (4, 0, false),
        (5, 0, false),
        (6, 0, false),
    ] {
        let d = decide(x2(vector | mode << 8 | 1 << 14, 1), 0, &cores);
        assert_eq!(
            d.action == Action::Drop(DropReason::IllegalVector(vector as u8)),
            refused,
            "mode {mode} vector {vector}: {d:?}"
        );
        if !refused {
            assert_eq!(reached(&cores, &d.action), [1]);
        }
    }
    // A STARTUP carries its vector (the start page) through.
    let d = decide(x2(0x469f, 4), 0, &cores);
    assert!(matches!(d.action, Action::EmulateSipi { vector: 0x9f, .. }));
}

#[test]
fn refusals_still_count_targets_outside_the_host() {
    let cores = machine();
    // An SMI to an enclave's core: refused for being an SMI, its target still counted.
    let d = decide(x2(low(2, 0), 3), 0, &cores);
    assert_eq!(d, Decision::drop(DropReason::Smi, 1));
    let d = decide(xa(low(7, 3), 0), 0, &cores);
    assert_eq!(
        d,
        Decision::drop(DropReason::ReservedDeliveryMode(7), ENCLAVE_CORES)
    );
}

#[test]
fn level_triggered_fixed_ipis_go_out_as_edge() {
    let cores = machine();
    let d = decide(x2(0xc000 | 0x41, 4), 0, &cores);
    assert!(matches!(
        d.action,
        Action::Send {
            what: Deliver::Fixed(0x41),
            ..
        }
    ));
    assert_eq!(reached(&cores, &d.action), [4]);
}

#[test]
fn a_sender_outside_the_host_is_refused() {
    let cores = machine();
    for sender in [2, 3, 0xffff_ffff] {
        let d = decide(x2(low(0, 0), 1), sender, &cores);
        assert_eq!(d, Decision::drop(DropReason::SenderNotHost, 0));
    }
}

#[test]
fn host_core_table() {
    let mut c = HostCores::new(0);
    assert!(c.is_empty());
    assert_eq!(c.add(5), Ok(0));
    assert_eq!(c.add(5), Err(AddError::Duplicate(5)));
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c.index_of(5), c.index_of(6), c.apic_id(0), c.apic_id(1)),
        (Some(0), None, Some(5), None)
    );
    assert!(!c.set_xapic_logical(6, 0x0100_0000, 0xffff_ffff));
    for id in 1..MAX_CPUS as u32 {
        c.add(100 + id).unwrap();
    }
    assert_eq!(c.add(99), Err(AddError::Full));
    // The last index is reachable (the set's top word).
    let top = 100 + MAX_CPUS as u32 - 1;
    let d = decide(x2(low(0, 0), top), 5, &c);
    assert_eq!(reached(&c, &d.action), [top]);
}

#[test]
fn an_undefined_dfr_model_matches_no_logical_destination() {
    let mut cores = flat_machine();
    assert!(cores.set_xapic_logical(1, 0x0200_0000, 0x7fff_ffff));
    let d = decide(xa(low(0, 0) | 1 << 11, 0x03), 0, &cores);
    assert_eq!(reached(&cores, &d.action), [0]);
    assert_eq!(d.outside, 1);
}

#[test]
fn encoding_inverts_decoding() {
    for low in [
        0x0000_00fe_u32,
        0x0000_4500,
        0x0000_c500,
        0x0000_0602,
        0x000c_0830,
        0x0008_4400,
        0x0004_00ff,
    ] {
        let x = Icr::from_xapic(low, 0x0300_0000);
        assert_eq!(x.low(), low, "{low:#x}");
        assert_eq!(x.xapic_high(), 0x0300_0000);
        let v = u64::from(low) | 0x1234_5678 << 32;
        assert_eq!(Icr::from_x2apic(v).unwrap().x2apic_value(), v);
    }
}

#[test]
fn a_core_lent_to_an_enclave_gets_nothing_from_the_host_until_it_is_back() {
    let mut cores = machine();
    assert!(cores.set_lent(4, true));
    assert!(!cores.set_lent(2, true), "not a host core");
    assert!(cores.is_lent(cores.index_of(4).unwrap()));
    // Fixed, NMI, INIT and STARTUP to it by physical destination: dropped, counted outside.
    for mode in [0, 4, 5, 6] {
        let d = decide(x2(low(mode, 0), 4), 0, &cores);
        assert_eq!(d, Decision::drop(DropReason::OutsideHost, 1), "mode {mode}");
    }
    // A broadcast reaches the host's other cores only.
    let d = decide(x2(low(0, 0), X2APIC_BROADCAST), 0, &cores);
    assert_eq!(reached(&cores, &d.action), [0, 1]);
    assert_eq!(d.outside, ENCLAVE_CORES + 1);
    let d = decide(x2(low(4, 3), 0), 1, &cores);
    check(
        &cores,
        d,
        &Want::Nmi(&[0]),
        ENCLAVE_CORES + 1,
        "NMI to all but self",
    );
    // Back with the host: reached again.
    assert!(cores.set_lent(4, false));
    let d = decide(x2(low(5, 0), 4), 0, &cores);
    check(&cores, d, &Want::Init(&[4]), 0, "INIT once it is back");
}
