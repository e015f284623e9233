//! The window layout and the ring: records in and out, wrap-around, every index and record a
//! hostile side could write, event-index signalling, and two threads streaming through a small
//! ring.

extern crate std;

use super::*;
use std::sync::atomic::AtomicU32;
use std::vec::Vec;

/// A window in plain memory: [`SliceWindow`] over words it owns.
struct Mem {
    words: Vec<AtomicU32>,
}

impl Mem {
    fn new(size: usize) -> Self {
        Self {
            words: (0..size / 4).map(|_| AtomicU32::new(0)).collect(),
        }
    }
    fn w(&self) -> SliceWindow<'_> {
        SliceWindow::new(&self.words)
    }
}

impl SharedMem for Mem {
    fn size(&self) -> usize {
        self.w().size()
    }
    fn load_acquire(&self, offset: usize) -> u32 {
        self.w().load_acquire(offset)
    }
    fn store_release(&self, offset: usize, value: u32) {
        self.w().store_release(offset, value)
    }
    fn fence(&self) {
        self.w().fence()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        self.w().read(offset, buf)
    }
    fn write(&self, offset: usize, buf: &[u8]) {
        self.w().write(offset, buf)
    }
}

const SMALL: Ring = Ring::new(0, 256, 64);

fn small() -> Mem {
    Mem::new(SMALL.footprint() as usize)
}

fn pop_all(c: &mut Consumer, mem: &Mem) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(r) = c.peek(mem).unwrap() {
        let mut b = std::vec![0u8; r.len as usize];
        assert_eq!(c.read(mem, &r, 0, &mut b), r.len as usize);
        c.pop(mem, &r);
        out.push((r.tag, b));
    }
    out
}

#[test]
fn records_go_through_in_order_and_wrap() {
    let mem = small();
    let mut p = Producer::new(SMALL, &mem);
    let mut c = Consumer::new(SMALL, &mem);
    // 20 rounds of three records of odd sizes wrap the 256-byte ring many times.
    for round in 0..20u32 {
        let mut sent = Vec::new();
        for (i, len) in [1usize, 13, 40].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|b| (b as u32 * 7 + round) as u8).collect();
            let tag = round * 10 + i as u32;
            assert!(p
                .push(&mem, tag, &[&data[..len / 2], &data[len / 2..]])
                .unwrap()
                .is_some());
            sent.push((tag, data));
        }
        assert_eq!(pop_all(&mut c, &mem), sent);
    }
}

#[test]
fn a_full_ring_refuses_and_room_comes_back() {
    let mem = small();
    let mut p = Producer::new(SMALL, &mem);
    let mut c = Consumer::new(SMALL, &mem);
    let data = [0xabu8; 56]; // 64 bytes with its header: four fill the ring.
    for _ in 0..4 {
        assert!(p.push(&mem, 1, &[&data]).unwrap().is_some());
    }
    assert_eq!(p.push(&mem, 1, &[&data]).unwrap(), None);
    assert_eq!(p.free(&mem).unwrap(), 0);
    let r = c.peek(&mem).unwrap().unwrap();
    c.pop(&mem, &r);
    assert!(p.push(&mem, 2, &[&data]).unwrap().is_some());
}

#[test]
fn oversized_payloads_are_refused() {
    let mem = small();
    let mut p = Producer::new(SMALL, &mem);
    assert_eq!(p.push(&mem, 0, &[&[0u8; 65]]), Err(RingError::TooLong));
    assert!(p.push(&mem, 0, &[&[0u8; 64]]).unwrap().is_some());
}

#[test]
fn a_hostile_producer_index_is_caught() {
    let mem = small();
    let c = Consumer::new(SMALL, &mem);
    // More than the ring holds.
    mem.store_release(layout::RING_PROD, 512);
    assert!(matches!(c.peek(&mem), Err(RingError::BadIndex { .. })));
    // Not a multiple of 8.
    mem.store_release(layout::RING_PROD, 12);
    assert!(matches!(c.peek(&mem), Err(RingError::BadIndex { .. })));
    // Behind the consumer (wraps to a huge count).
    mem.store_release(layout::RING_PROD, u32::MAX - 7);
    assert!(matches!(c.peek(&mem), Err(RingError::BadIndex { .. })));
    // Fewer bytes than a header.
    mem.store_release(layout::RING_PROD, 0);
    assert_eq!(c.peek(&mem), Ok(None));
}

#[test]
fn a_hostile_record_header_is_caught() {
    let mem = small();
    let c = Consumer::new(SMALL, &mem);
    let data = layout::RING_DATA;
    // A length over the limit.
    mem.write(data, &65u32.to_le_bytes());
    mem.store_release(layout::RING_PROD, 80);
    assert_eq!(c.peek(&mem), Err(RingError::BadRecord { len: 65 }));
    // A length past what was produced.
    mem.write(data, &32u32.to_le_bytes());
    mem.store_release(layout::RING_PROD, 16);
    assert_eq!(c.peek(&mem), Err(RingError::BadRecord { len: 32 }));
    // u32::MAX.
    mem.write(data, &u32::MAX.to_le_bytes());
    assert!(matches!(c.peek(&mem), Err(RingError::BadRecord { .. })));
    // A good one.
    mem.write(data, &8u32.to_le_bytes());
    assert_eq!(c.peek(&mem), Ok(Some(Record { tag: 0, len: 8 })));
}

#[test]
fn a_hostile_consumer_index_is_caught() {
    let mem = small();
    let mut p = Producer::new(SMALL, &mem);
    // The consumer claims to be ahead of the producer: room for more than the ring.
    mem.store_release(layout::RING_CONS, 64);
    assert!(matches!(
        p.push(&mem, 0, &[&[1]]),
        Err(RingError::BadIndex { .. })
    ));
    mem.store_release(layout::RING_CONS, 3);
    assert!(matches!(p.free(&mem), Err(RingError::BadIndex { .. })));
    mem.store_release(layout::RING_CONS, 0);
    assert!(p.push(&mem, 0, &[&[1]]).unwrap().is_some());
}

#[test]
fn reads_never_leave_the_record_or_the_window() {
    let mem = small();
    let mut p = Producer::new(SMALL, &mem);
    let c = Consumer::new(SMALL, &mem);
    p.push(&mem, 9, &[b"hello"]).unwrap();
    let r = c.peek(&mem).unwrap().unwrap();
    let mut b = [0u8; 64];
    assert_eq!(c.read(&mem, &r, 0, &mut b), 5);
    assert_eq!(&b[..5], b"hello");
    assert_eq!(c.read(&mem, &r, 3, &mut b), 2);
    assert_eq!(c.read(&mem, &r, 5, &mut b), 0);
    assert_eq!(c.read(&mem, &r, u32::MAX, &mut b), 0);
    // A ring placed past the window's end is refused before any access.
    let outside = Ring::new(64, 256, 64);
    assert_eq!(
        Consumer::new(outside, &mem).peek(&mem),
        Err(RingError::Misplaced)
    );
    assert_eq!(
        Producer::new(outside, &mem).push(&mem, 0, &[b"x"]),
        Err(RingError::Misplaced)
    );
}

#[test]
fn signals_follow_the_event_index() {
    let mem = small();
    let mut p = Producer::new(SMALL, &mem);
    let mut c = Consumer::new(SMALL, &mem);
    // The consumer went idle at 0: the first record signals, the next does not.
    assert!(!c.wait_for_data(&mem).unwrap());
    assert_eq!(p.push(&mem, 0, &[b"a"]).unwrap(), Some(true));
    assert_eq!(p.push(&mem, 0, &[b"b"]).unwrap(), Some(false));
    // The consumer drains and goes idle again: the next record signals once more.
    assert_eq!(pop_all(&mut c, &mem).len(), 2);
    assert!(!c.wait_for_data(&mem).unwrap());
    assert_eq!(p.push(&mem, 0, &[b"c"]).unwrap(), Some(true));
    // A consumer that did not ask is not signalled.
    assert_eq!(pop_all(&mut c, &mem).len(), 1);
    assert_eq!(p.push(&mem, 0, &[b"d"]).unwrap(), Some(false));
    // Asking while data is there says so (no sleep).
    assert!(c.wait_for_data(&mem).unwrap());
    // The producer waits for room: the consumer's next pop signals it.
    pop_all(&mut c, &mem);
    let big = [0u8; 56];
    while p.push(&mem, 0, &[&big]).unwrap().is_some() {}
    assert!(!p.wait_for_room(&mem, 56).unwrap());
    let r = c.peek(&mem).unwrap().unwrap();
    assert!(c.pop(&mem, &r));
    let r = c.peek(&mem).unwrap().unwrap();
    assert!(!c.pop(&mem, &r));
}

#[test]
fn two_threads_stream_a_million_bytes() {
    let mem = std::sync::Arc::new(Mem::new(Ring::new(0, 1024, 200).footprint() as usize));
    let ring = Ring::new(0, 1024, 200);
    let m = mem.clone();
    let producer = std::thread::spawn(move || {
        let mut p = Producer::new(ring, &*m);
        let mut n = 0u32;
        let mut sum = 0u64;
        while n < 10_000 {
            let len = (n * 37 % 200) as usize;
            let data: Vec<u8> = (0..len).map(|i| (n as usize + i) as u8).collect();
            if p.push(&*m, n, &[&data]).unwrap().is_some() {
                sum += data.iter().map(|&b| u64::from(b)).sum::<u64>();
                n += 1;
            } else {
                std::thread::yield_now();
            }
        }
        sum
    });
    let mut c = Consumer::new(ring, &*mem);
    let mut next = 0u32;
    let mut sum = 0u64;
    while next < 10_000 {
        match c.peek(&*mem).unwrap() {
            Some(r) => {
                assert_eq!(r.tag, next);
                assert_eq!(r.len, next * 37 % 200);
                let mut b = std::vec![0u8; r.len as usize];
                c.read(&*mem, &r, 0, &mut b);
                for (i, &x) in b.iter().enumerate() {
                    assert_eq!(x, (next as usize + i) as u8, "record {next} byte {i}");
                }
                sum += b.iter().map(|&b| u64::from(b)).sum::<u64>();
                c.pop(&*mem, &r);
                next += 1;
            }
            None => std::thread::yield_now(),
        }
    }
    assert_eq!(producer.join().unwrap(), sum);
}

#[test]
fn the_header_round_trips_and_is_checked() {
    let mem = Mem::new(WINDOW_SIZE as usize);
    let devices = [
        DeviceInfo {
            kind: Kind::Console,
            flags: 0,
            mac: [0; 6],
            param: "",
        },
        DeviceInfo {
            kind: Kind::Net,
            flags: 0,
            mac: [2, 0, 0, 0, 0, 1],
            param: "tap-e1",
        },
        DeviceInfo {
            kind: Kind::Blk,
            flags: dev_flags::READ_ONLY,
            mac: [0; 6],
            param: "/var/lib/atoll/disk.img",
        },
    ];
    let rings = write_header(&mem, 7, "web", &devices).unwrap();
    let mut name = [0u8; layout::NAME_MAX];
    assert_eq!(read_summary(&mem, &mut name).unwrap(), (3, 7, "web"));
    for (i, d) in devices.iter().enumerate() {
        let h = read_device(&mem, i).unwrap();
        assert_eq!((h.kind, h.flags, h.mac), (d.kind, d.flags, d.mac));
        assert_eq!(h.param(), Some(d.param));
        assert_eq!(Some(h.rings), rings[i]);
    }
    // Rings do not overlap and stay in the window.
    let mut spans: Vec<(u32, u32)> = rings
        .iter()
        .flatten()
        .flat_map(|r| [r.to_host, r.to_enclave])
        .map(|r| (r.offset, r.offset + r.footprint()))
        .collect();
    spans.sort();
    assert!(spans[0].0 as usize >= layout::RINGS);
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    assert!(spans.last().unwrap().1 as u64 <= WINDOW_SIZE);
    assert_eq!(read_device(&mem, 3), Err(HeaderError::Bad("devices")));
    // A scribbled ring offset or kind is caught by the reader.
    let base = layout::DEVICE0 + layout::DEVICE_STRIDE;
    mem.write(base + layout::DEV_TO_HOST, &8u32.to_le_bytes());
    assert_eq!(read_device(&mem, 1), Err(HeaderError::Bad("rings")));
    mem.write(base + layout::DEV_KIND, &9u32.to_le_bytes());
    assert_eq!(read_device(&mem, 0), Err(HeaderError::Bad("kind")));
    mem.write(layout::MAGIC, &[0; 8]);
    assert_eq!(read_device(&mem, 0), Err(HeaderError::NoMagic));
}

#[test]
fn layouts_that_do_not_fit_are_refused() {
    let mut out = [None; MAX_DEVICES];
    assert_eq!(
        place_rings(&[Kind::Console; MAX_DEVICES + 1], &mut out),
        Err(LayoutError::TooManyDevices)
    );
    assert!(matches!(
        place_rings(&[Kind::Blk; 3], &mut out),
        Err(LayoutError::TooLarge { .. })
    ));
    // One of each fits, and so do a console, two nets and a disk.
    assert!(place_rings(&[Kind::Console, Kind::Net, Kind::Blk], &mut out).is_ok());
    assert!(place_rings(&[Kind::Console, Kind::Net, Kind::Net, Kind::Blk], &mut out).is_ok());
    let mem = Mem::new(WINDOW_SIZE as usize);
    let long = "x".repeat(layout::DEV_PARAM_MAX + 1);
    let d = [DeviceInfo {
        kind: Kind::Blk,
        flags: 0,
        mac: [0; 6],
        param: &long,
    }];
    assert_eq!(
        write_header(&mem, 1, "a", &d),
        Err(LayoutError::ParamTooLong)
    );
}

#[test]
fn blk_requests_round_trip() {
    let r = BlkRequest {
        kind: blk_type::OUT,
        len: 4096,
        sector: 0x1_0000_0001,
    };
    assert_eq!(BlkRequest::decode(&r.encode()), Some(r));
    assert_eq!(BlkRequest::decode(&[0; 15]), None);
}
