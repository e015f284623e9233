//! Channels: the only memory an enclave's devices share with the host.
//!
//! An enclave described with `[[enclave.virtio]]` devices gets a *channel window*: frames atoll
//! takes from the pool (never the enclave's RAM) and shows the host as BAR2 of a *channel
//! function*, a PCI function of atoll's control device ([`DEVICE_ID`]). The enclave's virtio
//! devices run in atoll on the enclave's own cores; they copy between the guest's buffers and
//! byte rings in the window. A daemon in the host (`atoll-channeld`) maps that BAR, and nothing
//! else of atoll's, and serves the backends.
//!
//! **The function.** BAR0 ([`REGISTERS_SIZE`]) holds [`reg`]isters; every access exits to atoll.
//! BAR2 ([`WINDOW_SIZE`]) is the window, plain memory. The function has one MSI vector: atoll
//! raises it when it wants the host to look at the window ([`reg::PENDING`] says which
//! devices) — or INTx pin A, for a host whose kernel cannot give the daemon MSI
//! ([`reg::INTX_GSI`]). The host rings [`reg::DOORBELL`] with a mask of devices when it wants atoll to.
//! While no enclave holds the function, [`reg::STATE`] reads [`state::IDLE`] and the window
//! reads as zeroes (or all ones): no frame is mapped there.
//!
//! **The window** ([`layout`]): a header page atoll writes once when the enclave is created
//! ([`Header`], one [`DeviceInfo`] per device), then the rings. Every device has two
//! [`Ring`]s: *to host* (atoll produces, the host consumes) and *to enclave* (the host
//! produces, atoll consumes). A few header fields are the host's to write
//! ([`layout::DEV_BACKEND`], [`layout::DEV_CAPACITY`]); atoll keeps its own copy of everything
//! else and never reads the layout back, so a host that scribbles over the header confuses only
//! itself.
//!
//! **A ring** is a single-producer single-consumer byte ring of *records* ([`RECORD_HEADER`]
//! bytes of length and tag, then the payload padded to 8 bytes). Indices are free-running
//! 32-bit byte counts: the producer writes only `prod` and `prod_event`, the consumer only
//! `cons` and `cons_event`. Whoever reads an index written by the other side checks it: a
//! record longer than the ring's limit, an index that claims more than the ring holds, a
//! misaligned index — each is [`RingError`], and atoll resets the device it concerns (the
//! guest sees DEVICE_NEEDS_RESET), never reads or writes outside the window.
//!
//! **Notifications** follow virtio's event index (virtio 1.2 §2.7.10) in bytes: a consumer that
//! runs dry writes `cons_event = cons` and looks once more; a producer that moved `prod` from
//! `old` to `new` signals only when `cons_event` lies in `[old, new)`. The same with
//! `prod_event` for a producer that waits for room. So neither side polls while idle, and a
//! busy stream costs no signal per record.
//!
//! **Records** by device kind ([`Kind`]): console — the bytes; net — to the host the guest's
//! [`NET_HEADER_LEN`]-byte `virtio_net_hdr` (its checksum and segmentation requests, untouched:
//! a tap with `IFF_VNET_HDR` takes it as is) then the frame, up to [`NET_MAX_PACKET`] bytes with
//! segmentation offload; to the enclave one Ethernet frame of at most [`NET_MAX_FRAME`] bytes, no
//! header; blk — a request [`BlkRequest`] (tag: the request's id) to the host, answered
//! by a response record with the same tag: a status byte, 7 bytes of padding, and for reads
//! exactly the bytes asked for.

/// The channel function's PCI device id (vendor: the control device's).
pub const DEVICE_ID: u16 = 0x0c72;
/// Size of BAR0, the registers.
pub const REGISTERS_SIZE: u64 = 4096;
/// Index of the window BAR.
pub const WINDOW_BAR: u8 = 2;
/// Size of BAR2, the window.
pub const WINDOW_SIZE: u64 = 4 << 20;
/// The most channel functions atoll shows (functions 1.. of the control device): the most
/// enclaves with virtio devices at once.
pub const MAX_CHANNELS: usize = 7;
/// The most virtio devices one enclave may have.
pub const MAX_DEVICES: usize = 6;
/// The window format's version.
pub const VERSION: u32 = 2;
/// Bytes before a record's payload: length (u32), tag (u32).
pub const RECORD_HEADER: u32 = 8;

/// BAR0's registers (32 bits each; other offsets read 0 and ignore writes).
pub mod reg {
    /// Read-only: [`MAGIC_VALUE`].
    pub const MAGIC: u64 = 0x00;
    /// Read-only: the window format's version ([`super::VERSION`]).
    pub const VERSION: u64 = 0x04;
    /// Read-only: [`super::state`].
    pub const STATE: u64 = 0x08;
    /// Read-only: changes every time an enclave takes the function (the window's
    /// [`super::layout::GENERATION`] holds the same value).
    pub const GENERATION: u64 = 0x0c;
    /// Write-only: a mask of devices (bit *i*: device *i*) whose rings or backend fields the
    /// host changed. Reads 0.
    pub const DOORBELL: u64 = 0x10;
    /// Read-to-clear: the devices atoll signalled since the last read (bit *i*: device *i*),
    /// and [`PENDING_DETACHED`] once the enclave is gone (the window is unmapped then).
    pub const PENDING: u64 = 0x14;
    /// [`PENDING`]'s bit for "the enclave was destroyed": the daemon ends.
    pub const PENDING_DETACHED: u32 = 1 << 31;
    /// Read-to-clear: the devices whose rings atoll reset since the last read (the guest reset
    /// the device, or atoll did after an error): both rings are empty again and the daemon
    /// starts over on them (requests in flight are void).
    pub const RESETS: u64 = 0x1c;
    /// Read-only: how many ring or backend errors atoll counted against the host.
    pub const HOST_ERRORS: u64 = 0x18;
    /// Read/write: the GSI the host's OS routed the function's INTx (pin A) to, for a host
    /// that waits on INTx (`uio_pci_generic`) rather than MSI; atoll then raises the interrupt
    /// that GSI's I/O APIC entry names, as a level: while PENDING is not zero and the command
    /// register's interrupt-disable bit is clear (the status register's interrupt bit says
    /// so). `u32::MAX` (the reset value): none.
    pub const INTX_GSI: u64 = 0x20;
    /// Read-only: 1 when atoll can raise the INTx named by [`INTX_GSI`] now (it found that
    /// GSI's I/O APIC entry, unmasked and aimed at a host core), 0 when not — on a machine
    /// whose I/O APIC atoll does not trap (no interrupt remapping) it never can, and the
    /// daemon falls back to polling.
    pub const INTX_ROUTED: u64 = 0x24;
    /// "ACHN" in memory order.
    pub const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"ACHN");
}

/// [`reg::STATE`] values.
pub mod state {
    /// No enclave: nothing is mapped in the window.
    pub const IDLE: u32 = 0;
    /// An enclave holds the function; the window is laid out.
    pub const ATTACHED: u32 = 1;
}

/// A virtio device's kind (values are the virtio device ids, virtio 1.2 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// virtio-net (device id 1).
    Net = 1,
    /// virtio-blk (device id 2).
    Blk = 2,
    /// virtio-console (device id 3).
    Console = 3,
}

impl Kind {
    /// From the window's value.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Kind::Net),
            2 => Some(Kind::Blk),
            3 => Some(Kind::Console),
            _ => None,
        }
    }

    /// The name used in descriptions and messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Blk => "blk",
            Kind::Console => "console",
        }
    }

    /// From a description's name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Kind::Net, Kind::Blk, Kind::Console]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// Data bytes of each of the device's two rings.
    pub fn ring_size(self) -> u32 {
        match self {
            Kind::Net => 256 << 10,
            Kind::Blk => 1 << 20,
            Kind::Console => 16 << 10,
        }
    }

    /// The longest record payload either ring carries: a blk request of
    /// [`BLK_MAX_DATA`] bytes with its header, a header and packet of [`NET_MAX_PACKET`] (the
    /// to-enclave direction carries only frames of [`NET_MAX_FRAME`], which atoll checks
    /// itself), console chunks of [`CONSOLE_MAX_CHUNK`].
    pub fn max_payload(self) -> u32 {
        match self {
            Kind::Net => NET_HEADER_LEN + NET_MAX_PACKET,
            Kind::Blk => BLK_MAX_DATA + BLK_REQUEST_LEN,
            Kind::Console => CONSOLE_MAX_CHUNK,
        }
    }
}

/// The longest Ethernet frame a net record toward the enclave carries (no jumbo frames and no
/// receive offloads: MTU 1500 + Ethernet header + VLAN tag).
pub const NET_MAX_FRAME: u32 = 1518;
/// Bytes of the `virtio_net_hdr` in front of a net record toward the host (virtio 1.2 §5.1.6:
/// with VERSION_1 it always has `num_buffers`).
pub const NET_HEADER_LEN: u32 = 12;
/// The longest packet behind that header: a segmentation-offload packet (`VIRTIO_NET_F_HOST_TSO4`
/// and `_TSO6`), which Linux keeps below 64 KiB including its headers (`GSO_LEGACY_MAX_SIZE`).
pub const NET_MAX_PACKET: u32 = 64 << 10;
/// The most data one blk request moves (the device offers `seg_max` × `size_max` within it).
pub const BLK_MAX_DATA: u32 = 512 << 10;
/// The longest console record.
pub const CONSOLE_MAX_CHUNK: u32 = 4096;
/// Bytes of a [`BlkRequest`] header.
pub const BLK_REQUEST_LEN: u32 = 16;
/// Bytes before a blk response's data: status and padding.
pub const BLK_RESPONSE_LEN: u32 = 8;

/// virtio-blk request types (virtio 1.2 §5.2.6) that cross the channel.
pub mod blk_type {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
}

/// virtio-blk status values (virtio 1.2 §5.2.6).
pub mod blk_status {
    /// Done.
    pub const OK: u8 = 0;
    /// The backend failed (or the request was out of range).
    pub const IOERR: u8 = 1;
    /// Not supported.
    pub const UNSUPP: u8 = 2;
}

/// A blk request record's header: `type`, `len` (data bytes: read wanted or write carried),
/// `sector` (512-byte units); for [`blk_type::OUT`] the data follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkRequest {
    /// [`blk_type`].
    pub kind: u32,
    /// Data bytes.
    pub len: u32,
    /// First sector.
    pub sector: u64,
}

impl BlkRequest {
    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; BLK_REQUEST_LEN as usize] {
        let mut b = [0u8; BLK_REQUEST_LEN as usize];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.sector.to_le_bytes());
        b
    }

    /// From the wire; `None` when too short.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; 16] = b.get(..16)?.try_into().ok()?;
        Some(Self {
            kind: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            sector: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        })
    }
}

/// Offsets in the window.
pub mod layout {
    /// u64: [`MAGIC_VALUE`].
    pub const MAGIC: usize = 0x00;
    /// u32: [`super::VERSION`].
    pub const VERSION: usize = 0x08;
    /// u32: how many devices.
    pub const DEVICES: usize = 0x0c;
    /// u32: the attach generation ([`super::reg::GENERATION`]).
    pub const GENERATION: usize = 0x10;
    /// The enclave's name: u32 length at [`NAME`], UTF-8 bytes after it.
    pub const NAME: usize = 0x20;
    /// The most bytes of the name.
    pub const NAME_MAX: usize = 60;
    /// The first device's [`super::DeviceInfo`]; device *i* is at `DEVICE0 + i * DEVICE_STRIDE`.
    pub const DEVICE0: usize = 0x200;
    /// Bytes of one device's entry.
    pub const DEVICE_STRIDE: usize = 0x200;
    /// Where the rings start: after the header page.
    pub const RINGS: usize = 0x1000;

    // Offsets inside a device entry. atoll writes all but the host's fields.
    /// u32: the [`super::Kind`].
    pub const DEV_KIND: usize = 0x00;
    /// u32: [`super::dev_flags`].
    pub const DEV_FLAGS: usize = 0x04;
    /// 6 bytes: the MAC (net).
    pub const DEV_MAC: usize = 0x08;
    /// u32 + u32: the to-host ring's offset in the window and its data bytes.
    pub const DEV_TO_HOST: usize = 0x10;
    /// u32 + u32: the to-enclave ring's offset and data bytes.
    pub const DEV_TO_ENCLAVE: usize = 0x18;
    /// u32: the longest record payload either ring may carry.
    pub const DEV_MAX_PAYLOAD: usize = 0x20;
    /// Host's field, u32: [`super::backend`].
    pub const DEV_BACKEND: usize = 0x40;
    /// Host's field, u64: the disk's size in bytes (blk).
    pub const DEV_CAPACITY: usize = 0x48;
    /// u32 length then UTF-8: the backend's parameter (image path, tap name).
    pub const DEV_PARAM: usize = 0x100;
    /// The most bytes of the parameter.
    pub const DEV_PARAM_MAX: usize = super::layout::DEVICE_STRIDE - DEV_PARAM - 4;

    /// "ATOLLCHN".
    pub const MAGIC_VALUE: u64 = u64::from_le_bytes(*b"ATOLLCHN");

    // The ring control block: producer's and consumer's words on their own cache lines.
    /// u32, producer's: bytes produced (free-running).
    pub const RING_PROD: usize = 0x00;
    /// u32, producer's: wake me when `cons` passes this.
    pub const RING_PROD_EVENT: usize = 0x04;
    /// u32, consumer's: bytes consumed (free-running).
    pub const RING_CONS: usize = 0x40;
    /// u32, consumer's: wake me when `prod` passes this.
    pub const RING_CONS_EVENT: usize = 0x44;
    /// Where the data starts, after the control block.
    pub const RING_DATA: usize = 0x80;
}

/// Flags of a device entry.
pub mod dev_flags {
    /// blk: the host must refuse writes (the guest is told too).
    pub const READ_ONLY: u32 = 1;
}

/// The host's backend state in a device entry.
pub mod backend {
    /// No backend yet: requests wait in the ring.
    pub const NONE: u32 = 0;
    /// The backend serves the rings.
    pub const READY: u32 = 1;
}

/// One device as the window's header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo<'a> {
    /// What it is.
    pub kind: Kind,
    /// [`dev_flags`].
    pub flags: u32,
    /// The MAC (net; zeroes otherwise).
    pub mac: [u8; 6],
    /// The backend's parameter: an image path (blk), a tap device's name (net; empty: the
    /// daemon picks one), empty for the console.
    pub param: &'a str,
}

/// Where a device's two rings are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRings {
    /// atoll → host.
    pub to_host: Ring,
    /// host → atoll.
    pub to_enclave: Ring,
}

/// Why a window cannot hold a set of devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// More than [`MAX_DEVICES`].
    TooManyDevices,
    /// Their rings need more than [`WINDOW_SIZE`].
    TooLarge {
        /// Bytes the devices would need.
        needed: u64,
    },
    /// A parameter longer than [`layout::DEV_PARAM_MAX`] bytes.
    ParamTooLong,
}

/// Places the rings of `kinds`, in order, after the header page. The same function serves
/// atoll (which writes the header) and the validation of a description.
pub fn place_rings(
    kinds: &[Kind],
    out: &mut [Option<DeviceRings>; MAX_DEVICES],
) -> Result<u64, LayoutError> {
    if kinds.len() > MAX_DEVICES {
        return Err(LayoutError::TooManyDevices);
    }
    let mut at = layout::RINGS as u64;
    for (i, k) in kinds.iter().enumerate() {
        let size = k.ring_size();
        let a = Ring::new(at as u32, size, k.max_payload());
        at += a.footprint() as u64;
        let b = Ring::new(at as u32, size, k.max_payload());
        at += b.footprint() as u64;
        out[i] = Some(DeviceRings {
            to_host: a,
            to_enclave: b,
        });
    }
    if at > WINDOW_SIZE {
        return Err(LayoutError::TooLarge { needed: at });
    }
    Ok(at)
}

/// Memory both sides of a channel reach: the window, as atoll maps it or as the daemon mmaps
/// it. Offsets are bytes from the window's start; implementations refuse (reading zeroes,
/// dropping writes) anything past its end, so a bug here never reaches outside it. The word
/// accesses are naturally aligned 32-bit atomics.
pub trait SharedMem {
    /// Bytes of the window.
    fn size(&self) -> usize;
    /// A 32-bit load with acquire ordering.
    fn load_acquire(&self, offset: usize) -> u32;
    /// A 32-bit store with release ordering.
    fn store_release(&self, offset: usize, value: u32);
    /// A full fence (sequentially consistent): orders a store before a later load.
    fn fence(&self);
    /// Copies bytes out.
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Copies bytes in.
    fn write(&self, offset: usize, buf: &[u8]);
}

/// Writes the window's header for `devices` (atoll, once per attach). Returns the rings.
pub fn write_header(
    mem: &(impl SharedMem + ?Sized),
    generation: u32,
    name: &str,
    devices: &[DeviceInfo<'_>],
) -> Result<[Option<DeviceRings>; MAX_DEVICES], LayoutError> {
    let mut kinds = [Kind::Console; MAX_DEVICES];
    if devices.len() > MAX_DEVICES {
        return Err(LayoutError::TooManyDevices);
    }
    for (k, d) in kinds.iter_mut().zip(devices) {
        *k = d.kind;
        if d.param.len() > layout::DEV_PARAM_MAX {
            return Err(LayoutError::ParamTooLong);
        }
    }
    let mut rings = [None; MAX_DEVICES];
    place_rings(&kinds[..devices.len()], &mut rings)?;
    let w32 = |off: usize, v: u32| mem.write(off, &v.to_le_bytes());
    mem.write(layout::MAGIC, &layout::MAGIC_VALUE.to_le_bytes());
    w32(layout::VERSION, VERSION);
    w32(layout::DEVICES, devices.len() as u32);
    w32(layout::GENERATION, generation);
    let name = &name.as_bytes()[..name.len().min(layout::NAME_MAX)];
    w32(layout::NAME, name.len() as u32);
    mem.write(layout::NAME + 4, name);
    for (i, d) in devices.iter().enumerate() {
        let base = layout::DEVICE0 + i * layout::DEVICE_STRIDE;
        let r = rings[i].expect("placed above");
        w32(base + layout::DEV_KIND, d.kind as u32);
        w32(base + layout::DEV_FLAGS, d.flags);
        mem.write(base + layout::DEV_MAC, &d.mac);
        w32(base + layout::DEV_TO_HOST, r.to_host.offset);
        w32(base + layout::DEV_TO_HOST + 4, r.to_host.size);
        w32(base + layout::DEV_TO_ENCLAVE, r.to_enclave.offset);
        w32(base + layout::DEV_TO_ENCLAVE + 4, r.to_enclave.size);
        w32(base + layout::DEV_MAX_PAYLOAD, d.kind.max_payload());
        w32(base + layout::DEV_PARAM, d.param.len() as u32);
        mem.write(base + layout::DEV_PARAM + 4, d.param.as_bytes());
    }
    Ok(rings)
}

/// A device as the host reads the header (the daemon's view; every field checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// Its index (the doorbell and pending bit).
    pub index: usize,
    /// What it is.
    pub kind: Kind,
    /// [`dev_flags`].
    pub flags: u32,
    /// The MAC.
    pub mac: [u8; 6],
    /// Its rings.
    pub rings: DeviceRings,
    /// The backend's parameter, at most [`layout::DEV_PARAM_MAX`] bytes.
    pub param: [u8; layout::DEV_PARAM_MAX],
    /// How many bytes of `param` are used.
    pub param_len: usize,
}

impl HostDevice {
    /// The parameter as text (`None` when it is not UTF-8).
    pub fn param(&self) -> Option<&str> {
        core::str::from_utf8(&self.param[..self.param_len]).ok()
    }
}

/// Why the host could not read a window's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// No magic: nothing attached.
    NoMagic,
    /// Another format version.
    Version(u32),
    /// A field out of range (the name of the field).
    Bad(&'static str),
}

/// A little-endian u32 of the window.
fn read_u32(mem: &(impl SharedMem + ?Sized), off: usize) -> u32 {
    let mut b = [0u8; 4];
    mem.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// The header's magic and version checked; the device count, at most [`MAX_DEVICES`].
fn header_devices(mem: &(impl SharedMem + ?Sized)) -> Result<usize, HeaderError> {
    let mut m = [0u8; 8];
    mem.read(layout::MAGIC, &mut m);
    if u64::from_le_bytes(m) != layout::MAGIC_VALUE {
        return Err(HeaderError::NoMagic);
    }
    let v = read_u32(mem, layout::VERSION);
    if v != VERSION {
        return Err(HeaderError::Version(v));
    }
    let count = read_u32(mem, layout::DEVICES) as usize;
    if count > MAX_DEVICES {
        return Err(HeaderError::Bad("devices"));
    }
    Ok(count)
}

/// Reads the header the way the daemon does: device `index`, checked against what
/// [`place_rings`] would have placed.
pub fn read_device(
    mem: &(impl SharedMem + ?Sized),
    index: usize,
) -> Result<HostDevice, HeaderError> {
    let r32 = |off: usize| read_u32(mem, off);
    let count = header_devices(mem)?;
    if index >= count {
        return Err(HeaderError::Bad("devices"));
    }
    let mut kinds = [Kind::Console; MAX_DEVICES];
    for (i, k) in kinds.iter_mut().enumerate().take(count) {
        *k = Kind::from_u32(r32(layout::DEVICE0
            + i * layout::DEVICE_STRIDE
            + layout::DEV_KIND))
        .ok_or(HeaderError::Bad("kind"))?;
    }
    let mut rings = [None; MAX_DEVICES];
    place_rings(&kinds[..count], &mut rings).map_err(|_| HeaderError::Bad("rings"))?;
    let base = layout::DEVICE0 + index * layout::DEVICE_STRIDE;
    let expect = rings[index].ok_or(HeaderError::Bad("rings"))?;
    let got = (
        r32(base + layout::DEV_TO_HOST),
        r32(base + layout::DEV_TO_HOST + 4),
        r32(base + layout::DEV_TO_ENCLAVE),
        r32(base + layout::DEV_TO_ENCLAVE + 4),
    );
    if got
        != (
            expect.to_host.offset,
            expect.to_host.size,
            expect.to_enclave.offset,
            expect.to_enclave.size,
        )
    {
        return Err(HeaderError::Bad("rings"));
    }
    let param_len = r32(base + layout::DEV_PARAM) as usize;
    if param_len > layout::DEV_PARAM_MAX {
        return Err(HeaderError::Bad("param"));
    }
    let mut param = [0u8; layout::DEV_PARAM_MAX];
    mem.read(base + layout::DEV_PARAM + 4, &mut param[..param_len]);
    let mut mac = [0u8; 6];
    mem.read(base + layout::DEV_MAC, &mut mac);
    Ok(HostDevice {
        index,
        kind: kinds[index],
        flags: r32(base + layout::DEV_FLAGS),
        mac,
        rings: expect,
        param,
        param_len,
    })
}

/// Reads the number of devices and the enclave's name from a header (the daemon's view).
pub fn read_summary<'b>(
    mem: &(impl SharedMem + ?Sized),
    name_buf: &'b mut [u8; layout::NAME_MAX],
) -> Result<(usize, u32, &'b str), HeaderError> {
    let r32 = |off: usize| read_u32(mem, off);
    let count = header_devices(mem)?;
    let n = r32(layout::NAME) as usize;
    if n > layout::NAME_MAX {
        return Err(HeaderError::Bad("name"));
    }
    mem.read(layout::NAME + 4, &mut name_buf[..n]);
    let name = core::str::from_utf8(&name_buf[..n]).map_err(|_| HeaderError::Bad("name"))?;
    Ok((count, r32(layout::GENERATION), name))
}

/// One ring's place: its control block at `offset` in the window, then `size` data bytes
/// (a power of two); records carry at most `max_payload` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    /// Offset of the control block in the window.
    pub offset: u32,
    /// Data bytes (a power of two, at least 64).
    pub size: u32,
    /// The longest payload.
    pub max_payload: u32,
}

/// What went wrong on a ring: the other side broke the protocol (or the ring is misplaced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The ring does not fit the window, or its size is not a power of two.
    Misplaced,
    /// The other side's index claims more bytes than the ring holds, or is not a multiple
    /// of 8.
    BadIndex {
        /// Producer index seen.
        prod: u32,
        /// Consumer index seen.
        cons: u32,
    },
    /// A record header whose length is over the limit or past what was produced.
    BadRecord {
        /// The length it claims.
        len: u32,
    },
    /// A payload longer than the ring's limit was offered.
    TooLong,
}

/// A record at the consumer's position: its tag and payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The tag.
    pub tag: u32,
    /// Payload bytes.
    pub len: u32,
}

fn padded(len: u32) -> u32 {
    (len + 7) & !7
}

impl Ring {
    /// A ring at `offset` with `size` data bytes.
    pub const fn new(offset: u32, size: u32, max_payload: u32) -> Self {
        Self {
            offset,
            size,
            max_payload,
        }
    }

    /// Bytes of window the ring takes: control block and data.
    pub fn footprint(&self) -> u32 {
        layout::RING_DATA as u32 + self.size
    }

    fn check(&self, mem: &(impl SharedMem + ?Sized)) -> Result<(), RingError> {
        let end = self.offset as u64 + self.footprint() as u64;
        if !self.size.is_power_of_two()
            || self.size < 64
            || !self.offset.is_multiple_of(64)
            || end > mem.size() as u64
            || padded(self.max_payload) + RECORD_HEADER > self.size
        {
            return Err(RingError::Misplaced);
        }
        Ok(())
    }

    fn word(&self, at: usize) -> usize {
        self.offset as usize + at
    }

    /// Copies `buf.len()` bytes of data starting at index `at` (wrapping).
    fn copy_out(&self, mem: &(impl SharedMem + ?Sized), at: u32, buf: &mut [u8]) {
        let start = (at & (self.size - 1)) as usize;
        let first = buf.len().min(self.size as usize - start);
        let data = self.word(layout::RING_DATA);
        let (a, b) = buf.split_at_mut(first);
        mem.read(data + start, a);
        mem.read(data, b);
    }

    fn copy_in(&self, mem: &(impl SharedMem + ?Sized), at: u32, buf: &[u8]) {
        let start = (at & (self.size - 1)) as usize;
        let first = buf.len().min(self.size as usize - start);
        let data = self.word(layout::RING_DATA);
        mem.write(data + start, &buf[..first]);
        mem.write(data, &buf[first..]);
    }

    /// Zeroes the control block (atoll, when it lays out the window or resets a device).
    pub fn reset(&self, mem: &(impl SharedMem + ?Sized)) {
        for w in [
            layout::RING_PROD,
            layout::RING_PROD_EVENT,
            layout::RING_CONS,
            layout::RING_CONS_EVENT,
        ] {
            mem.store_release(self.word(w), 0);
        }
    }
}

/// The producing side of a ring. Keeps its own `prod` (never re-read from the window).
#[derive(Clone, Copy, Debug)]
pub struct Producer {
    ring: Ring,
    prod: u32,
}

/// A record being written: reserved space the producer fills, then commits.
#[derive(Debug)]
pub struct Reservation {
    at: u32,
    len: u32,
    tag: u32,
}

impl Reservation {
    /// The payload bytes reserved.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether nothing was reserved.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Producer {
    /// Produces into `ring`, whose `prod` the window holds now (zero after a reset).
    pub fn new(ring: Ring, mem: &(impl SharedMem + ?Sized)) -> Self {
        let prod = mem.load_acquire(ring.word(layout::RING_PROD)) & !7;
        Self { ring, prod }
    }

    /// The ring.
    pub fn ring(&self) -> Ring {
        self.ring
    }

    /// Bytes free now (checked against the consumer's index).
    pub fn free(&self, mem: &(impl SharedMem + ?Sized)) -> Result<u32, RingError> {
        self.ring.check(mem)?;
        let cons = mem.load_acquire(self.ring.word(layout::RING_CONS));
        let used = self.prod.wrapping_sub(cons);
        if used > self.ring.size || !cons.is_multiple_of(8) {
            return Err(RingError::BadIndex {
                prod: self.prod,
                cons,
            });
        }
        Ok(self.ring.size - used)
    }

    /// Reserves a record of `len` payload bytes with `tag`; `Ok(None)` when the ring has no
    /// room now (call [`Producer::wait_for_room`] and try again when signalled).
    pub fn reserve(
        &mut self,
        mem: &(impl SharedMem + ?Sized),
        tag: u32,
        len: u32,
    ) -> Result<Option<Reservation>, RingError> {
        if len > self.ring.max_payload {
            return Err(RingError::TooLong);
        }
        let need = RECORD_HEADER + padded(len);
        if self.free(mem)? < need {
            return Ok(None);
        }
        Ok(Some(Reservation {
            at: self.prod,
            len,
            tag,
        }))
    }

    /// Writes `bytes` at `offset` of the reserved payload (ignored past its end).
    pub fn fill(
        &self,
        mem: &(impl SharedMem + ?Sized),
        r: &Reservation,
        offset: u32,
        bytes: &[u8],
    ) {
        if offset >= r.len {
            return;
        }
        let n = bytes.len().min((r.len - offset) as usize);
        self.ring
            .copy_in(mem, r.at.wrapping_add(RECORD_HEADER + offset), &bytes[..n]);
    }

    /// Publishes the record. Returns whether the consumer asked to be signalled.
    pub fn commit(&mut self, mem: &(impl SharedMem + ?Sized), r: Reservation) -> bool {
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&r.len.to_le_bytes());
        h[4..].copy_from_slice(&r.tag.to_le_bytes());
        self.ring.copy_in(mem, r.at, &h);
        let old = self.prod;
        self.prod = r.at.wrapping_add(RECORD_HEADER + padded(r.len));
        mem.store_release(self.ring.word(layout::RING_PROD), self.prod);
        mem.fence();
        let event = mem.load_acquire(self.ring.word(layout::RING_CONS_EVENT));
        // virtio's vring_need_event, in bytes: the consumer waits for `prod` to pass `event`.
        self.prod.wrapping_sub(event).wrapping_sub(1) < self.prod.wrapping_sub(old)
    }

    /// Writes a whole record from parts. `Ok(None)`: no room; `Ok(Some(signal))`: written.
    pub fn push(
        &mut self,
        mem: &(impl SharedMem + ?Sized),
        tag: u32,
        parts: &[&[u8]],
    ) -> Result<Option<bool>, RingError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).map_err(|_| RingError::TooLong)?;
        let Some(r) = self.reserve(mem, tag, len)? else {
            return Ok(None);
        };
        let mut off = 0;
        for p in parts {
            self.fill(mem, &r, off, p);
            off += p.len() as u32;
        }
        Ok(Some(self.commit(mem, r)))
    }

    /// Asks to be signalled when the consumer has freed room, then says whether room for a
    /// `len`-byte payload appeared meanwhile (then go on without waiting).
    pub fn wait_for_room(
        &self,
        mem: &(impl SharedMem + ?Sized),
        len: u32,
    ) -> Result<bool, RingError> {
        let cons = mem.load_acquire(self.ring.word(layout::RING_CONS));
        mem.store_release(self.ring.word(layout::RING_PROD_EVENT), cons);
        mem.fence();
        Ok(self.free(mem)? >= RECORD_HEADER + padded(len.min(self.ring.max_payload)))
    }
}

/// The consuming side of a ring. Keeps its own `cons` (never re-read from the window).
#[derive(Clone, Copy, Debug)]
pub struct Consumer {
    ring: Ring,
    cons: u32,
}

impl Consumer {
    /// Consumes from `ring`, whose `cons` the window holds now.
    pub fn new(ring: Ring, mem: &(impl SharedMem + ?Sized)) -> Self {
        let cons = mem.load_acquire(ring.word(layout::RING_CONS)) & !7;
        Self { ring, cons }
    }

    /// The ring.
    pub fn ring(&self) -> Ring {
        self.ring
    }

    /// The record at the head, if any, checked against the producer's index and the limit.
    pub fn peek(&self, mem: &(impl SharedMem + ?Sized)) -> Result<Option<Record>, RingError> {
        self.ring.check(mem)?;
        let prod = mem.load_acquire(self.ring.word(layout::RING_PROD));
        let avail = prod.wrapping_sub(self.cons);
        if avail > self.ring.size || !prod.is_multiple_of(8) {
            return Err(RingError::BadIndex {
                prod,
                cons: self.cons,
            });
        }
        if avail == 0 {
            return Ok(None);
        }
        if avail < RECORD_HEADER {
            return Err(RingError::BadIndex {
                prod,
                cons: self.cons,
            });
        }
        let mut h = [0u8; 8];
        self.ring.copy_out(mem, self.cons, &mut h);
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let tag = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len > self.ring.max_payload || RECORD_HEADER + padded(len) > avail {
            return Err(RingError::BadRecord { len });
        }
        Ok(Some(Record { tag, len }))
    }

    /// Copies payload bytes of the head record `rec` from `offset` (clipped to the payload).
    pub fn read(
        &self,
        mem: &(impl SharedMem + ?Sized),
        rec: &Record,
        offset: u32,
        buf: &mut [u8],
    ) -> usize {
        if offset >= rec.len {
            return 0;
        }
        let n = buf.len().min((rec.len - offset) as usize);
        self.ring.copy_out(
            mem,
            self.cons.wrapping_add(RECORD_HEADER + offset),
            &mut buf[..n],
        );
        n
    }

    /// Drops the head record `rec` (peeked before). Returns whether the producer asked to be
    /// signalled (it waits for room).
    pub fn pop(&mut self, mem: &(impl SharedMem + ?Sized), rec: &Record) -> bool {
        let old = self.cons;
        self.cons = self.cons.wrapping_add(RECORD_HEADER + padded(rec.len));
        mem.store_release(self.ring.word(layout::RING_CONS), self.cons);
        mem.fence();
        let event = mem.load_acquire(self.ring.word(layout::RING_PROD_EVENT));
        self.cons.wrapping_sub(event).wrapping_sub(1) < self.cons.wrapping_sub(old)
    }

    /// Asks to be signalled when the producer adds a record, then says whether one arrived
    /// meanwhile (then go on without waiting).
    pub fn wait_for_data(&self, mem: &(impl SharedMem + ?Sized)) -> Result<bool, RingError> {
        mem.store_release(self.ring.word(layout::RING_CONS_EVENT), self.cons);
        mem.fence();
        Ok(self.peek(mem)?.is_some())
    }
}

/// A window in plain memory: 32-bit atomic words, bytes read and written inside them. For
/// tests on both sides (atoll's and the daemon's) and anything else that wants a window in
/// ordinary memory; slow, but every access is atomic, as in a window two partitions share.
#[derive(Debug)]
pub struct SliceWindow<'a> {
    words: &'a [core::sync::atomic::AtomicU32],
}

impl<'a> SliceWindow<'a> {
    /// A window over `words` (its size is `4 * words.len()`).
    pub fn new(words: &'a [core::sync::atomic::AtomicU32]) -> Self {
        Self { words }
    }

    fn byte(&self, at: usize) -> u8 {
        use core::sync::atomic::Ordering;
        (self.words[at / 4].load(Ordering::Relaxed) >> (8 * (at % 4))) as u8
    }

    fn set_byte(&self, at: usize, v: u8) {
        use core::sync::atomic::Ordering;
        let shift = 8 * (at % 4);
        let w = &self.words[at / 4];
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            let new = (cur & !(0xff << shift)) | (u32::from(v) << shift);
            match w.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
    }
}

impl SharedMem for SliceWindow<'_> {
    fn size(&self) -> usize {
        self.words.len() * 4
    }
    fn load_acquire(&self, offset: usize) -> u32 {
        use core::sync::atomic::Ordering;
        if !offset.is_multiple_of(4) {
            return 0;
        }
        self.words
            .get(offset / 4)
            .map_or(0, |w| w.load(Ordering::Acquire))
    }
    fn store_release(&self, offset: usize, value: u32) {
        use core::sync::atomic::Ordering;
        if !offset.is_multiple_of(4) {
            return;
        }
        if let Some(w) = self.words.get(offset / 4) {
            w.store(value, Ordering::Release)
        }
    }
    fn fence(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst)
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = if offset + i < self.size() {
                self.byte(offset + i)
            } else {
                0
            };
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    }
    fn write(&self, offset: usize, buf: &[u8]) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        for (i, b) in buf.iter().enumerate() {
            if offset + i < self.size() {
                self.set_byte(offset + i, *b);
            }
        }
    }
}

#[cfg(test)]
mod tests;
