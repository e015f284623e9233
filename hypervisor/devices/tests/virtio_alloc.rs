//! The virtio exit path — notification, chain walking, copies to and from the host rings,
//! completions, interrupts — allocates nothing once the devices exist. Counted with a global
//! allocator that counts, per thread, every allocation and reallocation.

use atoll_devices::pci::bus::PciDevice;
use atoll_devices::virtio::backend::{Backend, BackendError, Record};
use atoll_devices::virtio::blk::{req, Blk};
use atoll_devices::virtio::console::Console;
use atoll_devices::virtio::net::Net;
use atoll_devices::virtio::pci::{common, VirtioPci, NOTIFY_OFFSET};
use atoll_devices::virtio::{feature, status, VirtioFunction};
use atoll_vcpu::GuestMemory;
use boot::GuestPhysAddr;

mod counting;
use counting::allocations;

/// Guest RAM in a buffer made before counting.
struct Ram(Vec<u8>);

impl GuestMemory for Ram {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        let s = usize::try_from(gpa.as_u64()).ok()?;
        buf.copy_from_slice(self.0.get(s..s.checked_add(buf.len())?)?);
        Some(())
    }
    fn write(&mut self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
        let s = usize::try_from(gpa.as_u64()).ok()?;
        self.0
            .get_mut(s..s.checked_add(buf.len())?)?
            .copy_from_slice(buf);
        Some(())
    }
    fn covers(&self, gpa: GuestPhysAddr, len: u64) -> bool {
        gpa.as_u64()
            .checked_add(len)
            .is_some_and(|e| e <= self.0.len() as u64)
    }
}

impl Ram {
    fn put(&mut self, at: u64, b: &[u8]) {
        self.0[at as usize..at as usize + b.len()].copy_from_slice(b);
    }
}

/// Fixed-size rings: records toward the host are counted and their last tag kept; one record
/// from the host at a time, refilled by the test.
struct Rings {
    sent: u64,
    sent_bytes: u64,
    last_tag: u32,
    open: Option<(u32, u32)>,
    incoming: Option<(u32, usize)>,
    data: [u8; 8192],
}

impl Backend for Rings {
    fn begin(&mut self, tag: u32, len: u32) -> Result<(), BackendError> {
        self.open = Some((tag, len));
        Ok(())
    }
    fn append(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.sent_bytes += bytes.len() as u64;
        Ok(())
    }
    fn commit(&mut self) -> Result<(), BackendError> {
        let (tag, _) = self.open.take().ok_or(BackendError::Range)?;
        self.last_tag = tag;
        self.sent += 1;
        Ok(())
    }
    fn abort(&mut self) {
        self.open = None;
    }
    fn peek(&mut self) -> Result<Option<Record>, BackendError> {
        Ok(self.incoming.map(|(tag, len)| Record {
            tag,
            len: len as u32,
        }))
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), BackendError> {
        let (_, len) = self.incoming.ok_or(BackendError::Range)?;
        let s = offset as usize;
        let src = self.data[..len]
            .get(s..s + buf.len())
            .ok_or(BackendError::Range)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn consume(&mut self) -> Result<(), BackendError> {
        self.incoming.take().map(|_| ()).ok_or(BackendError::Range)
    }
}

/// One split queue laid out at `base` (desc table, avail at +0x1000, used at +0x2000).
struct Ring {
    base: u64,
    size: u16,
    idx: u16,
}

impl Ring {
    fn desc(&self, ram: &mut Ram, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        ram.put(self.base + 16 * u64::from(i), &d);
    }
    fn offer(&mut self, ram: &mut Ram, head: u16) {
        let slot = u64::from(self.idx % self.size);
        ram.put(self.base + 0x1004 + 2 * slot, &head.to_le_bytes());
        self.idx = self.idx.wrapping_add(1);
        ram.put(self.base + 0x1002, &self.idx.to_le_bytes());
    }
    fn used(&self, ram: &Ram) -> u16 {
        let at = (self.base + 0x2002) as usize;
        u16::from_le_bytes([ram.0[at], ram.0[at + 1]])
    }
}

fn w(t: &mut dyn PciDevice, off: u64, len: usize, v: u64) {
    t.bar_write(0, off, &v.to_le_bytes()[..len]);
}

fn bring_up(t: &mut dyn PciDevice, features: u64, rings: &[&Ring]) {
    let cap = u16::from(t.config().find_capability(0x11).unwrap());
    t.config_write(cap + 2, &0x8000u16.to_le_bytes());
    for v in 0..=rings.len() as u64 {
        t.bar_write(1, 16 * v, &0xfee0_0000u32.to_le_bytes());
        t.bar_write(1, 16 * v + 8, &(0x40 + v as u32).to_le_bytes());
        t.bar_write(1, 16 * v + 12, &0u32.to_le_bytes());
    }
    w(t, common::DEVICE_STATUS, 1, 0);
    let s = u64::from(status::ACKNOWLEDGE | status::DRIVER);
    w(t, common::DEVICE_STATUS, 1, s);
    for sel in 0..2 {
        w(t, common::DRIVER_FEATURE_SELECT, 4, sel);
        w(
            t,
            common::DRIVER_FEATURE,
            4,
            (features >> (32 * sel)) & 0xffff_ffff,
        );
    }
    let s = s | u64::from(status::FEATURES_OK);
    w(t, common::DEVICE_STATUS, 1, s);
    w(t, common::MSIX_CONFIG, 2, 0);
    for (q, r) in rings.iter().enumerate() {
        w(t, common::QUEUE_SELECT, 2, q as u64);
        w(t, common::QUEUE_SIZE, 2, u64::from(r.size));
        w(t, common::QUEUE_MSIX_VECTOR, 2, q as u64 + 1);
        w(t, common::QUEUE_DESC, 8, r.base);
        w(t, common::QUEUE_DRIVER, 8, r.base + 0x1000);
        w(t, common::QUEUE_DEVICE, 8, r.base + 0x2000);
        w(t, common::QUEUE_ENABLE, 2, 1);
    }
    w(
        t,
        common::DEVICE_STATUS,
        1,
        s | u64::from(status::DRIVER_OK),
    );
}

#[test]
fn the_virtio_exit_path_allocates_nothing() {
    const R: u16 = 0;
    const N: u16 = 1;
    const W: u16 = 2;
    let mut ram = Ram(vec![0; 0x20_0000]);
    let mut rings = Rings {
        sent: 0,
        sent_bytes: 0,
        last_tag: 0,
        open: None,
        incoming: None,
        data: [0x5a; 8192],
    };
    let mut net = VirtioPci::new(Net::new([2, 0, 0, 0, 0, 9])).unwrap();
    let mut con = VirtioPci::new(Console::new(None)).unwrap();
    let mut blk = VirtioPci::new(Blk::new(1 << 20, false, b"d")).unwrap();
    let (mut nrx, mut ntx) = (
        Ring {
            base: 0x1000,
            size: 64,
            idx: 0,
        },
        Ring {
            base: 0x4000,
            size: 64,
            idx: 0,
        },
    );
    let (mut crx, mut ctx) = (
        Ring {
            base: 0x7000,
            size: 64,
            idx: 0,
        },
        Ring {
            base: 0xa000,
            size: 64,
            idx: 0,
        },
    );
    let mut bq = Ring {
        base: 0xd000,
        size: 64,
        idx: 0,
    };
    let ring_features = feature::VERSION_1 | feature::RING_EVENT_IDX | feature::RING_INDIRECT_DESC;
    bring_up(&mut net, ring_features | (1 << 5), &[&nrx, &ntx]);
    bring_up(&mut con, feature::VERSION_1, &[&crx, &ctx]);
    bring_up(&mut blk, ring_features, &[&bq]);
    // Descriptors, reused by every round.
    ntx.desc(&mut ram, 0, 0x10_0000, 1514 + 12, R, 0);
    nrx.desc(&mut ram, 0, 0x11_0000, 1530, W, 0);
    ctx.desc(&mut ram, 0, 0x12_0000, 80, R, 0);
    crx.desc(&mut ram, 0, 0x13_0000, 4096, W, 0);
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&req::IN.to_le_bytes());
    ram.put(0x14_0000, &hdr);
    bq.desc(&mut ram, 0, 0x14_0000, 16, R | N, 1);
    for i in 1..9u16 {
        bq.desc(
            &mut ram,
            i,
            0x15_0000 + 0x1000 * u64::from(i),
            512,
            W | N,
            i + 1,
        );
    }
    bq.desc(&mut ram, 9, 0x16_0000, 1, W, 0);
    // The host's reply to a read: status OK, padding, the 8 sectors asked for.
    rings.data[..8].fill(0);

    let before = allocations();
    let rounds = 2000u16;
    for _ in 0..rounds {
        ntx.offer(&mut ram, 0);
        nrx.offer(&mut ram, 0);
        net.bar_write(0, NOTIFY_OFFSET + 4, &1u16.to_le_bytes());
        let _ = net.take_notified();
        rings.incoming = Some((0, 1514));
        net.process(&mut ram, &mut rings);
        while net.next_interrupt().is_some() {}

        ctx.offer(&mut ram, 0);
        crx.offer(&mut ram, 0);
        rings.incoming = Some((0, 2000));
        con.process(&mut ram, &mut rings);
        while con.next_interrupt().is_some() {}

        bq.offer(&mut ram, 0);
        blk.process(&mut ram, &mut rings);
        rings.incoming = Some((rings.last_tag, 8 + 8 * 512));
        blk.process(&mut ram, &mut rings);
        while blk.next_interrupt().is_some() {}
    }
    let after = allocations();

    assert_eq!(net.device_status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(con.device_status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(blk.device_status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!((ntx.used(&ram), nrx.used(&ram)), (rounds, rounds));
    assert_eq!((ctx.used(&ram), crx.used(&ram)), (rounds, rounds));
    assert_eq!(bq.used(&ram), rounds);
    assert_eq!(ram.0[0x16_0000], 0, "status OK");
    assert_eq!(ram.0[0x15_1000], 0x5a, "data from the host");
    assert_eq!(rings.sent, 3 * u64::from(rounds));
    assert!(net.stats().interrupts > 0 && blk.stats().chains == u64::from(rounds));
    assert_eq!(after - before, 0, "allocations on the exit path");
}
