//! The link's pieces: MSI decoding, and the ring backend the device models see, against a
//! window in plain memory with the daemon's side played by the ABI's own producer and consumer.

use super::*;
use atoll_abi::channel::{layout, SliceWindow};
use core::sync::atomic::AtomicU32;

fn window(words: &[AtomicU32]) -> SliceWindow<'_> {
    SliceWindow::new(words)
}

fn words() -> Vec<AtomicU32> {
    (0..(ch::WINDOW_SIZE / 4))
        .map(|_| AtomicU32::new(0))
        .collect()
}

fn rings(mem: &SliceWindow<'_>, kind: ch::Kind) -> Rings {
    let devices = [ch::DeviceInfo {
        kind,
        flags: 0,
        mac: [0; 6],
        param: "",
    }];
    let placed = ch::write_header(mem, 1, "t", &devices).unwrap()[0].unwrap();
    Rings {
        tx: Producer::new(placed.to_host, mem),
        rx: Consumer::new(placed.to_enclave, mem),
        places: placed,
        status: 0,
        host_errors: 0,
    }
}

fn backend<'a>(mem: &'a SliceWindow<'a>, rings: &'a mut Rings) -> RingBackend<'a> {
    RingBackend {
        mem,
        rings,
        reserved: None,
        head: None,
        tell_host: false,
        broken: false,
    }
}

#[test]
fn msi_messages_become_deliveries() {
    let d = msi_delivery(0xfee0_1000, 0x41).unwrap();
    assert_eq!(
        (d.dest, d.dest_mode, d.mode, d.vector),
        (1, DestMode::Physical, DeliveryMode::Fixed, 0x41)
    );
    let d = msi_delivery(0xfee0_3004, 0x1_52).unwrap();
    assert_eq!(
        (d.dest, d.dest_mode, d.mode),
        (3, DestMode::Logical, DeliveryMode::LowestPriority)
    );
    // Outside the interrupt window, vectors below 16, SMI, INIT, ExtINT: nothing.
    assert_eq!(msi_delivery(0xfed0_0000, 0x41), None);
    assert_eq!(msi_delivery(0xfee0_0000, 0x0f), None);
    for mode in [2u32, 5, 7] {
        assert_eq!(
            msi_delivery(0xfee0_0000, mode << 8 | 0x41),
            None,
            "mode {mode}"
        );
    }
}

#[test]
fn records_reach_the_daemon_and_it_is_told_once() {
    let w = words();
    let mem = window(&w);
    let mut r = rings(&mem, ch::Kind::Net);
    let places = r.places;
    // The daemon went idle: it wants to hear about the next record.
    let host_rx = Consumer::new(places.to_host, &mem);
    assert!(!host_rx.wait_for_data(&mem).unwrap());
    let mut b = backend(&mem, &mut r);
    b.send(7, &[b"abc", b"de"]).unwrap();
    assert!(b.tell_host);
    b.tell_host = false;
    b.send(8, &[b"f"]).unwrap();
    assert!(!b.tell_host, "the daemon did not ask again");
    // Appending past the record, committing short, appending without a record: refused.
    b.begin(9, 2).unwrap();
    assert_eq!(b.append(b"xyz"), Err(BackendError::Range));
    b.append(b"x").unwrap();
    assert_eq!(b.commit(), Err(BackendError::Range));
    assert_eq!(b.append(b"x"), Err(BackendError::Range));
    assert_eq!(
        b.begin(1, ch::Kind::Net.max_payload() + 1),
        Err(BackendError::TooLarge)
    );
    assert!(!b.broken);
    let rec = host_rx.peek(&mem).unwrap().unwrap();
    let mut got = [0u8; 5];
    host_rx.read(&mem, &rec, 0, &mut got);
    assert_eq!((rec.tag, &got), (7, b"abcde"));
}

#[test]
fn a_full_ring_asks_the_daemon_for_room() {
    let w = words();
    let mem = window(&w);
    let mut r = rings(&mem, ch::Kind::Console);
    let places = r.places;
    let mut b = backend(&mem, &mut r);
    let chunk = [0u8; ch::CONSOLE_MAX_CHUNK as usize];
    let mut sent = 0;
    while b.send(0, &[&chunk]).is_ok() {
        sent += 1;
    }
    assert!(sent >= 3);
    assert_eq!(b.send(0, &[&chunk]), Err(BackendError::Full));
    // The daemon consumes one: its pop says atoll asked to hear about room.
    let mut host_rx = Consumer::new(places.to_host, &mem);
    let rec = host_rx.peek(&mem).unwrap().unwrap();
    assert!(host_rx.pop(&mem, &rec));
    assert!(b.send(0, &[&chunk]).is_ok());
}

#[test]
fn host_records_are_read_within_their_length_and_a_dry_ring_arms_the_doorbell() {
    let w = words();
    let mem = window(&w);
    let mut r = rings(&mem, ch::Kind::Console);
    let places = r.places;
    let mut host_tx = Producer::new(places.to_enclave, &mem);
    {
        let mut b = backend(&mem, &mut r);
        assert_eq!(b.peek(), Ok(None));
        assert_eq!(b.read(0, &mut [0u8; 1]), Err(BackendError::Range));
        assert_eq!(b.consume(), Err(BackendError::Range));
    }
    // The peek above armed the event index: the daemon's next record rings.
    assert_eq!(host_tx.push(&mem, 3, &[b"hello"]).unwrap(), Some(true));
    let mut b = backend(&mem, &mut r);
    let rec = b.peek().unwrap().unwrap();
    assert_eq!((rec.tag, rec.len), (3, 5));
    let mut buf = [0u8; 5];
    b.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(
        b.read(3, &mut buf),
        Err(BackendError::Range),
        "past the record"
    );
    b.consume().unwrap();
    assert_eq!(b.peek(), Ok(None));
}

#[test]
fn a_hostile_index_breaks_the_backend_not_atoll() {
    let w = words();
    let mem = window(&w);
    let mut r = rings(&mem, ch::Kind::Net);
    let places = r.places;
    // The daemon claims to have produced more than the ring holds.
    mem.store_release(
        places.to_enclave.offset as usize + layout::RING_PROD,
        0x10_0000,
    );
    let mut b = backend(&mem, &mut r);
    assert_eq!(b.peek(), Err(BackendError::Broken));
    assert!(b.broken);
    // And to have consumed what atoll never produced.
    mem.store_release(places.to_host.offset as usize + layout::RING_CONS, 0x4_0008);
    let mut b = backend(&mem, &mut r);
    assert_eq!(b.send(1, &[b"x"]), Err(BackendError::Broken));
    assert!(b.broken);
}
