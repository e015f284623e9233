//! The daemon against a window in plain memory and a fake atoll that uses the ABI's own
//! Producer/Consumer: console, blk, net, broken rings, resets, detach; sysfs discovery.

use super::*;
use crate::tests::TempDir;
use atoll_abi::channel::{
    backend, blk_status, blk_type, dev_flags, layout, write_header, BlkRequest, DeviceInfo,
    DeviceRings, Ring, SharedMem, BLK_RESPONSE_LEN, CONSOLE_MAX_CHUNK, NET_HEADER_LEN,
    NET_MAX_FRAME, NET_MAX_PACKET, WINDOW_SIZE,
};
use std::cell::RefCell;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;

/// The window's memory, 8-aligned, shared by the daemon's and the fake atoll's Windows.
struct Mem(Vec<u64>);

impl Mem {
    fn window(&mut self) -> Window {
        // SAFETY: the vector is 8-aligned, never resized, and outlives every Window made from
        // it (tests keep the Rc<RefCell<Mem>> alive longer than daemon and fake atoll); all
        // accesses go through Windows (volatile bytes and atomic words).
        unsafe { Window::new(self.0.as_mut_ptr().cast(), self.0.len() * 8) }
    }
}

#[derive(Default)]
struct Regs {
    pending: u32,
    resets: u32,
    doorbells: Vec<u32>,
}

struct FakeFn {
    w: Window,
    regs: Rc<RefCell<Regs>>,
    irq: OwnedFd,
    _mem: Rc<RefCell<Mem>>,
}

impl Function for FakeFn {
    fn window(&self) -> &Window {
        &self.w
    }
    fn read_reg(&mut self, offset: u64) -> io::Result<u32> {
        let mut r = self.regs.borrow_mut();
        Ok(match offset {
            reg::PENDING => std::mem::take(&mut r.pending),
            reg::RESETS => std::mem::take(&mut r.resets),
            reg::MAGIC => reg::MAGIC_VALUE,
            _ => 0,
        })
    }
    fn write_reg(&mut self, offset: u64, value: u32) -> io::Result<()> {
        if offset == reg::DOORBELL {
            self.regs.borrow_mut().doorbells.push(value);
        }
        Ok(())
    }
    fn irq_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.irq.as_raw_fd())
    }
    fn ack_irq(&mut self) {
        window::drain_eventfd(self.irq.as_raw_fd())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// A log that tests can read.
#[derive(Clone, Default)]
struct LogBuf(Rc<RefCell<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.borrow()).into_owned()
    }
}

/// atoll's side: producer of every to-host ring, consumer of every to-enclave ring.
struct Atoll {
    w: Window,
    rings: Vec<DeviceRings>,
    to_host: Vec<Producer>,
    to_enclave: Vec<Consumer>,
    regs: Rc<RefCell<Regs>>,
    irq: std::os::fd::RawFd,
}

impl Atoll {
    /// Sets PENDING bits and raises the interrupt.
    fn raise(&self, bits: u32) {
        self.regs.borrow_mut().pending |= bits;
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write from a local to the test's eventfd.
        unsafe { libc::write(self.irq, one.as_ptr().cast(), 8) };
    }
    fn push(&mut self, dev: usize, tag: u32, parts: &[&[u8]]) -> bool {
        let s = self.to_host[dev]
            .push(&self.w, tag, parts)
            .unwrap()
            .expect("room");
        if s {
            self.raise(1 << dev);
        }
        s
    }
    /// Every record the daemon produced on `dev`, as (tag, bytes).
    fn take(&mut self, dev: usize) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(rec) = self.to_enclave[dev].peek(&self.w).unwrap() {
            let mut b = vec![0u8; rec.len as usize];
            self.to_enclave[dev].read(&self.w, &rec, 0, &mut b);
            self.to_enclave[dev].pop(&self.w, &rec);
            out.push((rec.tag, b));
        }
        // Arm, as atoll does before it sleeps: the daemon's next push must ring.
        self.to_enclave[dev].wait_for_data(&self.w).unwrap();
        out
    }
    /// atoll resets device `dev`'s rings and reports it in RESETS.
    fn reset(&mut self, dev: usize) {
        let r = self.rings[dev];
        r.to_host.reset(&self.w);
        r.to_enclave.reset(&self.w);
        self.to_host[dev] = Producer::new(r.to_host, &self.w);
        self.to_enclave[dev] = Consumer::new(r.to_enclave, &self.w);
        self.regs.borrow_mut().resets |= 1 << dev;
        self.raise(1 << dev);
    }
    fn doorbells(&self) -> Vec<u32> {
        std::mem::take(&mut self.regs.borrow_mut().doorbells)
    }
}

struct Setup {
    d: Daemon<FakeFn>,
    a: Atoll,
    dir: TempDir,
    log: LogBuf,
    taps: Rc<RefCell<Vec<(String, OwnedFd)>>>,
    _mem: Rc<RefCell<Mem>>,
}

const STEP: Option<Duration> = Some(Duration::from_millis(20));

fn setup(devices: &[DeviceInfo<'_>]) -> Setup {
    setup_in(TempDir::new(), devices)
}

fn setup_in(dir: TempDir, devices: &[DeviceInfo<'_>]) -> Setup {
    let mem = Rc::new(RefCell::new(Mem(vec![0; WINDOW_SIZE as usize / 8])));
    let w = mem.borrow_mut().window();
    let rings = write_header(&w, 7, "demo", devices).unwrap();
    let rings: Vec<DeviceRings> = rings.iter().flatten().copied().collect();
    let regs = Rc::new(RefCell::new(Regs::default()));
    // SAFETY: eventfd with valid flags.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    // SAFETY: a new descriptor owned by the fake function alone.
    let irq = unsafe { OwnedFd::from_raw_fd(efd) };
    let a = Atoll {
        w: mem.borrow_mut().window(),
        to_host: rings.iter().map(|r| Producer::new(r.to_host, &w)).collect(),
        to_enclave: rings
            .iter()
            .map(|r| Consumer::new(r.to_enclave, &w))
            .collect(),
        rings,
        regs: regs.clone(),
        irq: efd,
    };
    let f = FakeFn {
        w,
        regs,
        irq,
        _mem: mem.clone(),
    };
    let taps = Rc::new(RefCell::new(Vec::new()));
    let t = taps.clone();
    let log = LogBuf::default();
    let o = Options {
        run_dir: dir.0.join("run/demo"),
        open_tap: Box::new(move |name: &str| {
            let mut sv = [0; 2];
            // SAFETY: socketpair fills the two-element local array.
            let r = unsafe {
                libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, sv.as_mut_ptr())
            };
            assert_eq!(r, 0);
            // SAFETY: a new descriptor with one owner.
            let ours = unsafe { OwnedFd::from_raw_fd(sv[0]) };
            // SAFETY: as above.
            let theirs = unsafe { OwnedFd::from_raw_fd(sv[1]) };
            console::set_nonblocking(ours.as_raw_fd())?;
            t.borrow_mut().push((name.to_string(), theirs));
            Ok((ours, name.to_string()))
        }),
        log: Box::new(log.clone()),
    };
    let d = Daemon::new(f, o).unwrap();
    Setup {
        d,
        a,
        dir,
        log,
        taps,
        _mem: mem,
    }
}

fn dev<'a>(kind: Kind, flags: u32, param: &'a str) -> DeviceInfo<'a> {
    DeviceInfo {
        kind,
        flags,
        mac: [2, 0, 0, 0, 0, 1],
        param,
    }
}

fn read_all(s: &mut UnixStream, want: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn console_output_reaches_socket_clients_with_history_and_input_reaches_the_enclave() {
    let mut s = setup(&[dev(Kind::Console, 0, "")]);
    let run = s.dir.0.join("run/demo");
    assert!(run.join("console.sock").exists());
    let pty = std::fs::read_link(run.join("console.pty")).unwrap();
    assert!(pty.to_string_lossy().starts_with("/dev/pts/"), "{pty:?}");
    // Output before any client: kept as history.
    s.d.step(STEP);
    s.a.push(0, 0, &[b"early "]);
    s.d.step(STEP);
    let mut c = UnixStream::connect(run.join("console.sock")).unwrap();
    s.d.step(STEP);
    s.a.push(0, 0, &[b"late"]);
    s.d.step(STEP);
    assert_eq!(read_all(&mut c, 10), b"early late");
    // Input, more than one chunk: records of at most CONSOLE_MAX_CHUNK, in order.
    let input: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    s.a.take(0);
    s.a.doorbells();
    c.write_all(&input).unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        s.d.step(STEP);
        for (_, r) in s.a.take(0) {
            assert!(r.len() <= CONSOLE_MAX_CHUNK as usize && !r.is_empty());
            got.extend(r);
        }
        if got.len() >= input.len() {
            break;
        }
    }
    assert_eq!(got, input);
    // atoll was armed (wait_for_data): the daemon rang device 0's doorbell.
    assert!(s.a.doorbells().contains(&1));
    // A second client gets the output too; one that leaves is dropped quietly.
    let mut c2 = UnixStream::connect(run.join("console.sock")).unwrap();
    s.d.step(STEP);
    assert_eq!(read_all(&mut c2, 10), b"early late");
    drop(c);
    s.a.push(0, 0, &[b"!"]);
    s.d.step(STEP);
    s.d.step(STEP);
    assert_eq!(read_all(&mut c2, 1), b"!");
    match &s.d.devs[0].backend {
        Backend::Console(c) => assert_eq!(c.clients(), 1, "the one that left is gone"),
        _ => panic!("device 0 is the console"),
    }
}

/// A blk request record; OUT carries `data`.
fn blk_req(kind: u32, len: u32, sector: u64) -> [u8; 16] {
    BlkRequest { kind, len, sector }.encode()
}

fn blk_setup(flags: u32, image: &[u8]) -> (Setup, std::path::PathBuf) {
    let dir = TempDir::new();
    let img = dir.0.join("disk.img");
    std::fs::write(&img, image).unwrap();
    let p = img.to_str().unwrap().to_string();
    let s = setup_in(dir, &[dev(Kind::Blk, flags, &p)]);
    (s, img)
}

/// Sends a request, steps the daemon, returns the one answer (tag, status, data).
fn blk_call(s: &mut Setup, tag: u32, req: [u8; 16], data: &[u8]) -> (u32, u8, Vec<u8>) {
    s.a.push(0, tag, &[&req, data]);
    s.d.step(STEP);
    let mut r = s.a.take(0);
    assert_eq!(r.len(), 1, "one answer");
    let (t, b) = r.remove(0);
    assert!(b.len() >= BLK_RESPONSE_LEN as usize);
    assert_eq!(&b[1..8], &[0; 7], "padding");
    (t, b[0], b[8..].to_vec())
}

/// Takes flock `how` on `path` through a descriptor of its own; whether it got it.
fn lock(path: &std::path::Path, how: i32) -> (std::fs::File, bool) {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: flock on a live descriptor of the test's own.
    let r = unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) };
    (f, r == 0)
}

#[test]
fn an_image_is_written_by_one_daemon_only() {
    // The images live apart from the daemons' run directories (which go with each setup).
    let images = TempDir::new();
    let image = |name: &str| {
        let img = images.0.join(name);
        std::fs::write(&img, [0u8; 4096]).unwrap();
        let p = img.to_str().unwrap().to_string();
        (img, p)
    };
    // Someone else writes it (holds the exclusive lock): not served, said why.
    let (img, p) = image("a.img");
    let (held, ok) = lock(&img, libc::LOCK_EX);
    assert!(ok);
    let s = setup_in(
        TempDir::new(),
        &[dev(Kind::Blk, 0, &p), dev(Kind::Console, 0, "")],
    );
    assert_eq!(s.d.devs.len(), 1, "only the console");
    let log = s.log.text();
    assert!(log.contains("in use (locked)"), "{log}");
    drop((s, held));
    // Served read-only: others may read beside it but not write.
    let (img, p) = image("b.img");
    let s = setup_in(TempDir::new(), &[dev(Kind::Blk, dev_flags::READ_ONLY, &p)]);
    assert_eq!(s.d.devs.len(), 1);
    assert!(lock(&img, libc::LOCK_SH).1, "readers share");
    assert!(
        !lock(&img, libc::LOCK_EX).1,
        "no writer beside the daemon's reader"
    );
    drop(s);
    // Served read-write: nobody else may even read-lock it, until the daemon is gone.
    let (img, p) = image("c.img");
    let s = setup_in(TempDir::new(), &[dev(Kind::Blk, 0, &p)]);
    assert_eq!(s.d.devs.len(), 1);
    assert!(!lock(&img, libc::LOCK_SH).1);
    drop(s);
    assert!(lock(&img, libc::LOCK_EX).1, "the lock went with the daemon");
}

#[test]
fn blk_serves_writes_reads_flushes_and_refuses_what_is_out_of_range() {
    let image: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let (mut s, img) = blk_setup(0, &image);
    // The backend announced itself: capacity, READY, doorbell.
    let base = layout::DEVICE0;
    let mut cap = [0u8; 8];
    s.a.w.read(base + layout::DEV_CAPACITY, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), image.len() as u64);
    assert_eq!(
        s.a.w.load_acquire(base + layout::DEV_BACKEND),
        backend::READY
    );
    assert_eq!(s.a.doorbells(), vec![1]);
    s.d.step(STEP);
    let data: Vec<u8> = (0..1024u32).map(|i| (i ^ 0x5a) as u8).collect();
    let (t, st, rest) = blk_call(&mut s, 41, blk_req(blk_type::OUT, 1024, 2), &data);
    assert_eq!((t, st, rest.len()), (41, blk_status::OK, 0));
    let (t, st, back) = blk_call(&mut s, 42, blk_req(blk_type::IN, 1024, 2), &[]);
    assert_eq!((t, st), (42, blk_status::OK));
    assert_eq!(back, data);
    let file = std::fs::read(&img).unwrap();
    assert_eq!(&file[1024..2048], &data[..]);
    assert_eq!(&file[..1024], &image[..1024], "nothing else written");
    // A read of untouched sectors returns the image's bytes.
    let (_, st, back) = blk_call(&mut s, 43, blk_req(blk_type::IN, 512, 100), &[]);
    assert_eq!((st, &back[..]), (blk_status::OK, &image[51200..51712]));
    // Out of range: past the end, straddling it, a sector that overflows; reads still carry
    // exactly the bytes asked for (zeroes).
    for (sector, len) in [(128, 512), (127, 1024), (u64::MAX / 256, 512)] {
        let (_, st, back) = blk_call(&mut s, 44, blk_req(blk_type::IN, len, sector), &[]);
        assert_eq!(st, blk_status::IOERR, "read {sector}+{len}");
        assert_eq!(back, vec![0; len as usize]);
        let (_, st, _) = blk_call(
            &mut s,
            45,
            blk_req(blk_type::OUT, len, sector),
            &vec![1; len as usize],
        );
        assert_eq!(st, blk_status::IOERR, "write {sector}+{len}");
    }
    // A write whose record carries fewer bytes than it claims is refused.
    let (_, st, _) = blk_call(&mut s, 46, blk_req(blk_type::OUT, 1024, 0), &[9; 512]);
    assert_eq!(st, blk_status::IOERR);
    assert_eq!(&std::fs::read(&img).unwrap()[..512], &image[..512]);
    let (t, st, _) = blk_call(&mut s, 47, blk_req(blk_type::FLUSH, 0, 0), &[]);
    assert_eq!((t, st), (47, blk_status::OK));
    let (_, st, _) = blk_call(&mut s, 48, blk_req(8, 0, 0), &[]);
    assert_eq!(st, blk_status::UNSUPP);
    assert!(!s.d.devs[0].failed);
    assert_eq!(s.d.devs[0].errors, 0);
    // Idle, the daemon is armed: it asked to be told when atoll produces past its `cons`.
    let ring = s.a.rings[0].to_host.offset as usize;
    let cons = s.a.w.load_acquire(ring + layout::RING_CONS);
    assert!(cons > 0);
    assert_eq!(s.a.w.load_acquire(ring + layout::RING_CONS_EVENT), cons);
    // atoll not armed on the to-enclave ring (it did not wait): an answer rings no doorbell.
    s.a.doorbells();
    s.a.to_enclave[0]
        .wait_for_data(&s.a.w)
        .expect("arm once more below");
    let te = s.a.rings[0].to_enclave.offset as usize;
    s.a.w
        .store_release(te + layout::RING_CONS_EVENT, 0x4000_0000);
    s.a.push(0, 50, &[&blk_req(blk_type::FLUSH, 0, 0)]);
    s.d.step(STEP);
    assert!(s.a.doorbells().is_empty(), "no signal asked, none given");
}

#[test]
fn a_read_only_blk_refuses_writes_and_serves_reads() {
    let image = vec![0xabu8; 4096];
    let (mut s, img) = blk_setup(dev_flags::READ_ONLY, &image);
    let (_, st, _) = blk_call(&mut s, 1, blk_req(blk_type::OUT, 512, 0), &[0; 512]);
    assert_eq!(st, blk_status::IOERR);
    assert_eq!(std::fs::read(&img).unwrap(), image);
    let (_, st, back) = blk_call(&mut s, 2, blk_req(blk_type::IN, 512, 7), &[]);
    assert_eq!((st, back), (blk_status::OK, vec![0xab; 512]));
}

#[test]
fn many_blk_reads_wait_for_room_and_all_are_answered() {
    // 8 reads of 256 KiB need 2 MiB of answers; the to-enclave ring holds 1 MiB: the daemon
    // stops at a full ring (the requests stay) and goes on once atoll consumed.
    let image: Vec<u8> = (0..2u32 << 20).map(|i| (i >> 9) as u8).collect();
    let (mut s, _img) = blk_setup(0, &image);
    for i in 0..8u32 {
        s.a.push(
            0,
            100 + i,
            &[&blk_req(blk_type::IN, 256 << 10, u64::from(i) * 512)],
        );
    }
    let mut answers = Vec::new();
    for _ in 0..20 {
        s.d.step(STEP);
        let got = s.a.take(0);
        if !got.is_empty() {
            // atoll consumed: it signals the daemon (PENDING) as a real atoll would.
            s.a.raise(1);
        }
        answers.extend(got);
        if answers.len() == 8 {
            break;
        }
    }
    assert_eq!(answers.len(), 8);
    for (i, (tag, b)) in answers.iter().enumerate() {
        assert_eq!(*tag, 100 + i as u32);
        assert_eq!(b[0], blk_status::OK);
        let at = i * (256 << 10);
        assert_eq!(&b[8..], &image[at..at + (256 << 10)]);
    }
}

#[test]
fn a_broken_ring_stops_the_device_until_atoll_resets_it() {
    let image = vec![0u8; 8192];
    let (mut s, _img) = blk_setup(0, &image);
    s.d.step(STEP);
    let ring = s.a.rings[0].to_host;
    let prod = ring.offset as usize + layout::RING_PROD;
    for garbage in [3u32, 0x8000_0000, 0xffff_fff8] {
        // A producer index that is misaligned or claims more than the ring holds.
        s.a.w.store_release(prod, garbage);
        s.a.raise(1);
        s.d.step(STEP);
        assert!(s.d.devs[0].failed, "prod {garbage:#x}");
        let errors = s.d.devs[0].errors;
        // Not served while failed (no new error either: it is not looked at).
        s.d.step(STEP);
        assert_eq!(s.d.devs[0].errors, errors);
        assert!(s.a.take(0).is_empty());
        s.a.reset(0);
        s.d.step(STEP);
        assert!(!s.d.devs[0].failed, "served again after the reset");
        let (_, st, _) = blk_call(&mut s, 5, blk_req(blk_type::FLUSH, 0, 0), &[]);
        assert_eq!(st, blk_status::OK);
    }
    // A record longer than the limit, and a blk record shorter than its header.
    let data = ring.offset as usize + layout::RING_DATA;
    let w32 = |s: &Setup, off: usize, v: u32| s.a.w.write(off, &v.to_le_bytes());
    s.a.reset(0);
    s.d.step(STEP);
    w32(&s, data, 0x7fff_ffff);
    s.a.w.store_release(prod, 64);
    s.a.raise(1);
    s.d.step(STEP);
    assert!(s.d.devs[0].failed);
    s.a.reset(0);
    s.d.step(STEP);
    assert!(!s.d.devs[0].failed);
    s.a.push(0, 9, &[&[1, 2, 3, 4]]);
    s.d.step(STEP);
    assert!(s.d.devs[0].failed);
    let log = s.log.text();
    assert_eq!(s.d.devs[0].errors, 5, "{log}");
    assert!(
        log.contains("BadIndex") && log.contains("BadRecord"),
        "{log}"
    );
    assert!(log.contains("shorter than its header"), "{log}");
    assert!(log.contains("served again"), "{log}");
    // The reset announced the backend again.
    assert!(s.a.doorbells().contains(&1));
}

#[test]
fn net_frames_cross_between_the_ring_and_the_tap() {
    let mut s = setup(&[dev(Kind::Console, 0, ""), dev(Kind::Net, 0, "")]);
    let (name, tap) = s.taps.borrow_mut().pop().unwrap();
    assert_eq!(name, "atl-demo-1");
    s.d.step(STEP);
    // From the enclave: the guest's header and packet go to the tap as they are, a 64 KiB
    // segmentation-offload packet as well as a small frame.
    let mut gso = [0u8; NET_HEADER_LEN as usize];
    gso[0] = net::HDR_F_NEEDS_CSUM;
    gso[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    let big: Vec<u8> = [
        &gso[..],
        &(0..NET_MAX_PACKET)
            .map(|i| (i / 3) as u8)
            .collect::<Vec<_>>(),
    ]
    .concat();
    let small: Vec<u8> = [
        &[0u8; NET_HEADER_LEN as usize][..],
        &(0..60u8).collect::<Vec<_>>(),
    ]
    .concat();
    s.a.push(1, 0, &[&big]);
    s.a.push(1, 0, &[&small]);
    s.d.step(STEP);
    let mut buf = vec![0u8; 2 * NET_MAX_PACKET as usize];
    for want in [&big, &small] {
        // SAFETY: a read into a live local buffer from the test's socket end.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..n as usize], &want[..]);
    }
    // From the tap: frames behind the tap's header arrive as two records without it; one
    // too long, one that is only a header and one whose checksum is left to us are dropped.
    let send = |hdr: u8, b: &[u8]| {
        let mut p = vec![0u8; NET_HEADER_LEN as usize];
        p[0] = hdr;
        p.extend_from_slice(b);
        // SAFETY: a write from a live vector to the test's socket end.
        let n = unsafe { libc::write(tap.as_raw_fd(), p.as_ptr().cast(), p.len()) };
        assert_eq!(n as usize, p.len());
    };
    send(0, &[1; 60]);
    send(0, &[2; NET_MAX_FRAME as usize + 1]);
    send(0, &[]);
    send(net::HDR_F_NEEDS_CSUM, &[4; 60]);
    send(2, &[3; 1518]); // DATA_VALID: fine, and not passed on
    s.d.step(STEP);
    s.d.step(STEP);
    let got = s.a.take(1);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, vec![1; 60]);
    assert_eq!(got[1].1, vec![3; 1518]);
    match &s.d.devs[1].backend {
        Backend::Net(n) => assert_eq!(n.dropped_oversize, 3),
        _ => panic!("device 1 is net"),
    }
}

#[test]
fn tap_names_fit_ifnamsiz() {
    assert_eq!(net::default_name("a", 0), "atl-a-0");
    assert_eq!(net::default_name("averyverylongname", 3), "atl-averyvery-3");
    assert_eq!(net::default_name("averyverylongname", 3).len(), 15);
    assert_eq!(
        net::default_name("äöüäöüäöü", 1).len(),
        14,
        "cut at a char boundary"
    );
}

#[test]
fn the_detach_bit_ends_the_loop_and_removes_the_files() {
    let mut s = setup(&[dev(Kind::Console, 0, "")]);
    let run = s.dir.0.join("run/demo");
    std::fs::write(run.join("channeld.pid"), "1\n").unwrap();
    assert!(s.d.step(STEP));
    s.a.raise(reg::PENDING_DETACHED);
    s.d.run();
    assert!(s.d.detached);
    assert!(!run.exists(), "the directory is gone");
    assert!(!s.d.step(STEP));
}

#[test]
fn unusable_devices_are_left_out_and_the_others_served() {
    let s = setup(&[
        dev(Kind::Blk, 0, "/nonexistent/disk.img"),
        dev(Kind::Console, 0, ""),
    ]);
    assert_eq!(s.d.devs.len(), 1);
    assert_eq!(s.d.devs[0].info.kind, Kind::Console);
    assert!(
        s.log.text().contains("device 0 (blk): no backend"),
        "{}",
        s.log.text()
    );
}

#[test]
fn the_window_clips_every_access_to_its_bounds() {
    let mut m = Mem(vec![0; 4]);
    let w = m.window();
    w.write(28, &[1, 2, 3, 4, 5, 6]);
    let mut b = [9u8; 8];
    w.read(28, &mut b);
    assert_eq!(b, [1, 2, 3, 4, 0, 0, 0, 0]);
    w.read(usize::MAX - 2, &mut b);
    assert_eq!(b, [0; 8]);
    w.write(usize::MAX - 2, &[1; 8]);
    assert_eq!(w.load_acquire(30), 0, "misaligned word");
    assert_eq!(w.load_acquire(32), 0, "past the end");
    w.store_release(32, 5);
    w.store_release(4, 0x0102_0304);
    assert_eq!(w.load_acquire(4), 0x0102_0304);
    let mut all = [0u8; 32];
    w.read(0, &mut all);
    assert_eq!(&all[4..8], &0x0102_0304u32.to_le_bytes());
    // Unaligned runs through the word loop.
    let src: Vec<u8> = (0..29).collect();
    w.write(3, &src);
    let mut back = vec![0; 29];
    w.read(3, &mut back);
    assert_eq!(back, src);
}

/// A fake sysfs function: vendor/device files, BAR0 and BAR2 as regular files.
fn fake_function(root: &std::path::Path, addr: &str, enclave: &str) -> std::path::PathBuf {
    let d = root.join("bus/pci/devices").join(addr);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("vendor"), "0x0a70\n").unwrap();
    std::fs::write(d.join("device"), "0x0c72\n").unwrap();
    std::fs::write(d.join("enable"), "0\n").unwrap();
    std::fs::write(d.join("resource0"), vec![0u8; 4096]).unwrap();
    let mut m = Mem(vec![0; layout::RINGS / 8 + 1024]);
    let w = m.window();
    if !enclave.is_empty() {
        write_header(&w, 3, enclave, &[dev(Kind::Console, 0, "")]).unwrap();
    }
    let mut bytes = vec![0u8; m.0.len() * 8];
    w.read(0, &mut bytes);
    bytes.resize(WINDOW_SIZE as usize, 0);
    std::fs::write(d.join("resource2"), bytes).unwrap();
    d
}

#[test]
fn sysfs_finds_the_function_by_the_enclave_its_window_names() {
    let t = TempDir::new();
    let e = sysfs::find_enclave(&t.0, "b").unwrap_err().to_string();
    assert!(e.contains("bus/pci/devices"), "{e}");
    fake_function(&t.0, "0000:00:01.1", "a");
    let b = fake_function(&t.0, "0000:00:01.2", "b");
    fake_function(&t.0, "0000:00:01.3", "");
    // Another vendor's function with the same device id is not looked at.
    let other = t.0.join("bus/pci/devices/0000:00:02.0");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("vendor"), "0x8086\n").unwrap();
    std::fs::write(other.join("device"), "0x0c72\n").unwrap();
    assert_eq!(sysfs::functions(&t.0).unwrap().len(), 3);
    assert_eq!(sysfs::find_enclave(&t.0, "b").unwrap(), b);
    let e = sysfs::find_enclave(&t.0, "c").unwrap_err().to_string();
    assert!(
        e.contains("0000:00:01.1: a") && e.contains("0000:00:01.3: header: NoMagic"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("enable")).unwrap(),
        "1",
        "memory decoding turned on"
    );
    assert_eq!(sysfs::window_owner(&b).unwrap(), ("b".to_string(), 1, 3));
    // The fallback maps BAR0 and BAR2: a doorbell lands in BAR0, the window is BAR2.
    let mut f = sysfs::Sysfs::open(&b, WINDOW_SIZE as usize).unwrap();
    assert_eq!(f.irq_fd(), None);
    f.write_reg(reg::DOORBELL, 0b101).unwrap();
    assert_eq!(f.read_reg(reg::DOORBELL).unwrap(), 0b101);
    let mut buf = [0u8; 8];
    f.window().read(layout::MAGIC, &mut buf);
    assert_eq!(u64::from_le_bytes(buf), layout::MAGIC_VALUE);
    drop(f);
    let r0 = std::fs::read(b.join("resource0")).unwrap();
    assert_eq!(&r0[0x10..0x14], &5u32.to_le_bytes());
    // A too-small BAR file is refused before mmap.
    std::fs::write(b.join("resource2"), [0u8; 16]).unwrap();
    let e = sysfs::Sysfs::open(&b, WINDOW_SIZE as usize)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("has 16 bytes"), "{e}");
}

#[test]
fn binding_to_vfio_pci_sets_the_override_and_unbinds_first() {
    let t = TempDir::new();
    let d = fake_function(&t.0, "0000:00:01.1", "a");
    let drv = t.0.join("bus/pci/drivers/pcieport");
    let vf = t.0.join("bus/pci/drivers/vfio-pci");
    std::fs::create_dir_all(&drv).unwrap();
    std::fs::create_dir_all(&vf).unwrap();
    std::os::unix::fs::symlink(&drv, d.join("driver")).unwrap();
    let mut steps = Vec::new();
    sysfs::bind_vfio(&t.0, &d, &mut |m| steps.push(m)).unwrap();
    assert_eq!(
        std::fs::read_to_string(d.join("driver_override")).unwrap(),
        "vfio-pci"
    );
    assert_eq!(
        std::fs::read_to_string(drv.join("unbind")).unwrap(),
        "0000:00:01.1"
    );
    assert_eq!(
        std::fs::read_to_string(vf.join("bind")).unwrap(),
        "0000:00:01.1"
    );
    assert_eq!(steps.len(), 2, "{steps:?}");
    // Already bound: nothing to do.
    std::fs::remove_file(d.join("driver")).unwrap();
    std::os::unix::fs::symlink(&vf, d.join("driver")).unwrap();
    std::fs::remove_file(vf.join("bind")).unwrap();
    sysfs::bind_vfio(&t.0, &d, &mut |m| steps.push(m)).unwrap();
    assert!(!vf.join("bind").exists());
}

#[test]
fn the_ring_types_the_tests_use_are_the_abi_s() {
    // Keeps the imports honest: the fake atoll's rings are where the header says.
    let mut kinds = [None; atoll_abi::channel::MAX_DEVICES];
    atoll_abi::channel::place_rings(&[Kind::Console], &mut kinds).unwrap();
    let r: Ring = kinds[0].unwrap().to_host;
    assert_eq!(r.offset as usize, layout::RINGS);
}

#[test]
fn uio_binds_tells_atoll_the_gsi_and_unmasks() {
    use super::uio;
    let t = TempDir::new();
    let d = fake_function(&t.0, "0000:00:01.1", "a");
    let drv = t.0.join("bus/pci/drivers").join(uio::DRIVER);
    std::fs::create_dir_all(&drv).unwrap();
    let devfs = t.0.join("dev");
    std::fs::create_dir_all(&devfs).unwrap();
    let mut steps = Vec::new();
    // No GSI routed: refused (after binding), nothing mapped.
    std::fs::write(d.join("irq"), "0\n").unwrap();
    let e = uio::Uio::open(&t.0, &d, &devfs, WINDOW_SIZE as usize, &mut |m| {
        steps.push(m)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("irq 0"), "{e}");
    assert_eq!(
        std::fs::read_to_string(d.join("driver_override")).unwrap(),
        uio::DRIVER
    );
    assert_eq!(
        std::fs::read_to_string(drv.join("bind")).unwrap(),
        "0000:00:01.1"
    );
    // GSI 22, but no uio node yet.
    std::fs::write(d.join("irq"), "22\n").unwrap();
    let e = uio::Uio::open(&t.0, &d, &devfs, WINDOW_SIZE as usize, &mut |m| {
        steps.push(m)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no uio device") || e.contains("uio"), "{e}");
    std::fs::create_dir_all(d.join("uio/uio3")).unwrap();
    std::fs::write(devfs.join("uio3"), []).unwrap();
    assert_eq!(uio::node_of(&d, &devfs).unwrap(), devfs.join("uio3"));
    // atoll says it cannot raise that GSI (the fake BAR0 reads INTX_ROUTED 0): refused.
    let e = uio::Uio::open(&t.0, &d, &devfs, WINDOW_SIZE as usize, &mut |m| {
        steps.push(m)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("cannot raise GSI 22"), "{e}");
    // atoll can raise it (the file standing for BAR0 holds 1 there), but no config file:
    // refused.
    let mut r0 = std::fs::read(d.join("resource0")).unwrap();
    let at = reg::INTX_ROUTED as usize;
    r0[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(d.join("resource0"), &r0).unwrap();
    let e = uio::Uio::open(&t.0, &d, &devfs, WINDOW_SIZE as usize, &mut |m| {
        steps.push(m)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("config"), "{e}");
    // Configuration space with INTx masked (command 0x0406: memory, bus master, Interrupt
    // Disable), as uio_pci_generic's handler leaves it.
    let mut cfg = vec![0u8; 64];
    cfg[4] = 0x06;
    cfg[5] = 0x04;
    std::fs::write(d.join("config"), &cfg).unwrap();
    // It can (the file standing for BAR0 holds 1 there, above), and the config file is there.
    let mut u = uio::Uio::open(&t.0, &d, &devfs, WINDOW_SIZE as usize, &mut |m| {
        steps.push(m)
    })
    .unwrap();
    assert!(u.irq_fd().is_some());
    assert!(u.describe().contains("GSI 22"), "{}", u.describe());
    // The GSI went to atoll's INTX_GSI register; open unmasked INTx through the command
    // register (Interrupt Disable clear, the other bits kept); nothing went to the node (the
    // driver has no irqcontrol).
    assert_eq!(u.read_reg(reg::INTX_GSI).unwrap(), 22);
    let after = std::fs::read(d.join("config")).unwrap();
    assert_eq!((after[4], after[5]), (0x06, 0x00));
    assert_eq!(&after[6..], &cfg[6..]);
    assert!(std::fs::read(devfs.join("uio3")).unwrap().is_empty());
    // The handler masked it again (with bit 8, SERR#, set): rearm clears bit 10 alone.
    let mut masked = after.clone();
    masked[5] = 0x05;
    std::fs::write(d.join("config"), &masked).unwrap();
    u.rearm();
    assert_eq!(std::fs::read(d.join("config")).unwrap()[5], 0x01);
    // Already unmasked: nothing written.
    u.rearm();
    assert_eq!(std::fs::read(d.join("config")).unwrap()[5], 0x01);
    drop(u);
    let r0 = std::fs::read(d.join("resource0")).unwrap();
    assert_eq!(&r0[0x20..0x24], &22u32.to_le_bytes());
    assert_eq!(uio::irq_of(&d).unwrap(), 22);
    std::fs::write(d.join("irq"), "x").unwrap();
    assert!(uio::irq_of(&d).is_err());
}
