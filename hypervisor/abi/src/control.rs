//! The control device: how the host's `atoll` command talks to atoll.
//!
//! atoll shows the host (and no other partition) one PCI function, [`VENDOR_ID`]:[`DEVICE_ID`]
//! (ids of atoll's own, not assigned by the PCI-SIG; class "unassigned" `ff`). It has two
//! memory BARs, which the host's Linux places like any device's:
//!
//! * **BAR0**, [`BAR0_SIZE`] of registers ([`reg`]): identification, and the doorbell. Every
//!   access exits to atoll.
//! * **BAR2**, the mailbox: [`SLOTS`] slots of [`SLOT_SIZE`] bytes of memory atoll owns and
//!   lends the host (plain memory: accesses do not exit). A slot holds a [`slot_state`] word at
//!   [`SLOT_STATE`] and one message at [`SLOT_MESSAGE`].
//!
//! A request goes: the client claims a free slot (compare-and-swap of its state word from
//! [`slot_state::FREE`] to [`slot_state::CLAIMED`]), writes a request message, sets the state
//! to [`slot_state::SUBMITTED`] and writes the slot's index to [`reg::DOORBELL`]. atoll copies
//! the message out of the slot (so a client changing it meanwhile changes nothing), carries it
//! out, writes the reply message over it and sets the state to [`slot_state::DONE`]; the client
//! reads the reply and sets the state back to FREE. atoll answers only a SUBMITTED slot whose
//! index was rung, and never trusts what a slot holds: a malformed request gets a reply with
//! [`Status::Malformed`] and changes nothing.
//!
//! Every message is a [`Header`] ([`HEADER_LEN`] bytes, little-endian) and `len` bytes of
//! payload; each kind's payload is defined by its type here, encoded and decoded by the same
//! code on both sides. Integers are little-endian; strings are UTF-8 with a length in front.

/// The control device's PCI vendor id ("a70" for atoll).
pub const VENDOR_ID: u16 = 0x0a70;
/// The control device's PCI device id.
pub const DEVICE_ID: u16 = 0x0c71;
/// The control device's class code: base class `ff` (device does not fit a class).
pub const CLASS_CODE: [u8; 3] = [0xff, 0x00, 0x00];
/// The protocol version; a request of another version is refused with [`Status::Version`].
pub const VERSION: u16 = 2;

/// Size of BAR0, the registers.
pub const BAR0_SIZE: u64 = 4096;
/// Index of the mailbox BAR.
pub const MAILBOX_BAR: usize = 2;
/// Number of mailbox slots (clients that may have a request in flight at once).
pub const SLOTS: u32 = 4;
/// Size of one slot.
pub const SLOT_SIZE: u32 = 256 * 1024;
/// Size of BAR2, the mailbox.
pub const MAILBOX_SIZE: u64 = SLOTS as u64 * SLOT_SIZE as u64;
/// Offset of a slot's state word (u32) in the slot.
pub const SLOT_STATE: usize = 0;
/// Offset of a slot's message in the slot.
pub const SLOT_MESSAGE: usize = 64;
/// Longest message (header and payload) a slot holds.
pub const MAX_MESSAGE: usize = SLOT_SIZE as usize - SLOT_MESSAGE;
/// Longest payload.
pub const MAX_PAYLOAD: usize = MAX_MESSAGE - HEADER_LEN;

/// BAR0's registers (32 bits each; other offsets read 0 and ignore writes).
pub mod reg {
    /// Read-only: [`MAGIC_VALUE`].
    pub const MAGIC: u64 = 0x00;
    /// Read-only: the protocol version ([`super::VERSION`]).
    pub const VERSION: u64 = 0x04;
    /// Read-only: the number of slots ([`super::SLOTS`]).
    pub const SLOTS: u64 = 0x08;
    /// Read-only: the size of a slot ([`super::SLOT_SIZE`]).
    pub const SLOT_SIZE: u64 = 0x0c;
    /// Write-only: the index of a slot whose request is submitted. Reads 0.
    pub const DOORBELL: u64 = 0x10;
    /// Read-only: how many doorbell writes atoll refused (no such slot, slot not submitted,
    /// slot already queued).
    pub const REFUSED: u64 = 0x14;
    /// "ATOL" in memory order.
    pub const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"ATOL");
}

/// A slot's state word.
pub mod slot_state {
    /// No client uses the slot.
    pub const FREE: u32 = 0;
    /// A client is writing a request.
    pub const CLAIMED: u32 = 1;
    /// The request is complete; the doorbell is (about to be) rung.
    pub const SUBMITTED: u32 = 2;
    /// atoll is carrying the request out.
    pub const WORKING: u32 = 3;
    /// The reply is in the slot.
    pub const DONE: u32 = 4;
}

/// Length of a [`Header`] in bytes.
pub const HEADER_LEN: usize = 24;
/// A request's magic ("ACRQ").
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"ACRQ");
/// A reply's magic ("ACRP").
pub const REPLY_MAGIC: u32 = u32::from_le_bytes(*b"ACRP");

/// Longest enclave name (the description's rule: 1–32 of a–z, 0–9, '-').
pub const MAX_NAME: usize = 32;
/// Longest text of a refusal or an enclave's end reason in a reply.
pub const MAX_TEXT: usize = 512;
/// Most cores a record lists.
pub const MAX_CORES: usize = 64;
/// Names of the classes a record counts each vCPU's exits in, in order (atoll's idle-profile
/// classes: timer programming and timer interrupts, IPIs sent and received, HLT, the rest).
pub const VCPU_EXIT_CLASSES: [&str; 4] = ["timer", "ipi", "hlt", "other"];
/// Names of the exit counters a record carries, in order (atoll's exit kinds).
pub const EXIT_KINDS: [&str; 19] = [
    "cpuid",
    "hlt",
    "io",
    "msr",
    "cr",
    "xsetbv",
    "hypercall",
    "nested_page_fault",
    "triple_fault",
    "invalid_guest_state",
    "external_interrupt",
    "nmi",
    "interrupt_window",
    "init",
    "sipi",
    "exception",
    "cache_flush",
    "refused_instruction",
    "unknown",
];

/// What a message asks or answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// atoll's figures: [`Info`].
    Info = 1,
    /// Check a description and reserve what it needs: [`Create`] → [`Created`].
    Create = 2,
    /// Copy a piece of a created enclave's kernel or initrd: [`Load`].
    Load = 3,
    /// Build a created enclave from what was loaded and start it: [`Target`] (by id).
    Start = 4,
    /// Stop an enclave, zero its memory, return its cores: [`Target`] (by name).
    Destroy = 5,
    /// Every enclave: [`Target`] with no name → records.
    List = 6,
    /// One enclave (or all): [`Target`] → records.
    Stats = 7,
    /// An enclave's console output from a cursor: [`ConsoleRead`] → [`ConsoleData`].
    ConsoleRead = 8,
    /// Bytes for an enclave's UART receiver: [`ConsoleWrite`] → [`Accepted`].
    ConsoleWrite = 9,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 9] = [
        Kind::Info,
        Kind::Create,
        Kind::Load,
        Kind::Start,
        Kind::Destroy,
        Kind::List,
        Kind::Stats,
        Kind::ConsoleRead,
        Kind::ConsoleWrite,
    ];

    /// The kind with this number.
    pub fn from_u16(v: u16) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u16 == v)
    }
}

/// How a request went (a reply's `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Done; the payload is the kind's reply.
    Ok = 0,
    /// The message is not a well-formed request (magic, length, payload layout, UTF-8).
    Malformed = 1,
    /// No such kind.
    UnknownKind = 2,
    /// Another protocol version.
    Version = 3,
    /// The enclave description is invalid (the text names the field and the reason).
    Invalid = 4,
    /// No enclave by that name or id.
    NotFound = 5,
    /// A core is not free: online in the host, owned by an enclave, or atoll's own.
    CoreBusy = 6,
    /// The pool has not enough memory.
    NoMemory = 7,
    /// The kernel or initrd is not what the description says (incomplete, not loadable).
    BadImage = 8,
    /// Not valid in the enclave's state (loading a started enclave, starting twice).
    State = 9,
    /// atoll failed carrying it out (the text says how); what changed is undone.
    Internal = 10,
    /// Every partition slot is in use.
    Full = 11,
    /// A PCI function the description names cannot be passed through (absent, not
    /// resettable, no DMA isolation, ...); the text says which and why.
    Device = 12,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 13] = [
        Status::Ok,
        Status::Malformed,
        Status::UnknownKind,
        Status::Version,
        Status::Invalid,
        Status::NotFound,
        Status::CoreBusy,
        Status::NoMemory,
        Status::BadImage,
        Status::State,
        Status::Internal,
        Status::Full,
        Status::Device,
    ];

    /// The status with this number.
    pub fn from_u32(v: u32) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as u32 == v)
    }

    /// A short name for people.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Malformed => "malformed request",
            Status::UnknownKind => "unknown request",
            Status::Version => "protocol version mismatch",
            Status::Invalid => "invalid description",
            Status::NotFound => "no such enclave",
            Status::CoreBusy => "core busy",
            Status::NoMemory => "not enough memory",
            Status::BadImage => "bad image",
            Status::State => "wrong state",
            Status::Internal => "atoll failed",
            Status::Full => "no free partition",
            Status::Device => "device unavailable",
        }
    }
}

/// Why bytes are not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the layout needs.
    Truncated,
    /// More bytes than allowed (a message past [`MAX_MESSAGE`], a string past its limit, bytes
    /// after the payload's end).
    TooLong,
    /// Not the expected magic.
    Magic,
    /// Another protocol version.
    Version(u16),
    /// No such kind.
    Kind(u16),
    /// No such status.
    Status(u32),
    /// A string is not UTF-8.
    Utf8,
    /// A field has a value the layout does not allow (a reserved field not 0, an unknown
    /// enumerated value).
    Field(&'static str),
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("message truncated"),
            WireError::TooLong => f.write_str("message or field too long"),
            WireError::Magic => f.write_str("bad magic"),
            WireError::Version(v) => write!(f, "protocol version {v}, expected {VERSION}"),
            WireError::Kind(k) => write!(f, "unknown kind {k}"),
            WireError::Status(s) => write!(f, "unknown status {s}"),
            WireError::Utf8 => f.write_str("a string is not UTF-8"),
            WireError::Field(n) => write!(f, "field {n} has a value not allowed"),
        }
    }
}

/// Reads little-endian fields from bytes, never past their end.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let b = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// A u8.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    /// A u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// A u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A string of at most `max` bytes with a u16 length in front.
    pub fn str(&mut self, max: usize) -> Result<&'a str, WireError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(WireError::TooLong);
        }
        core::str::from_utf8(self.bytes(n)?).map_err(|_| WireError::Utf8)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        r
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(WireError::TooLong)
        }
    }
}

/// Writes little-endian fields into a buffer, never past its end.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Writes into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Appends `b`.
    pub fn bytes(&mut self, b: &[u8]) -> Result<(), WireError> {
        let end = self.pos.checked_add(b.len()).ok_or(WireError::TooLong)?;
        self.buf
            .get_mut(self.pos..end)
            .ok_or(WireError::TooLong)?
            .copy_from_slice(b);
        self.pos = end;
        Ok(())
    }
    /// A u8.
    pub fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.bytes(&[v])
    }
    /// A u16.
    pub fn u16(&mut self, v: u16) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }
    /// A u32.
    pub fn u32(&mut self, v: u32) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }
    /// A u64.
    pub fn u64(&mut self, v: u64) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }
    /// A string of at most `max` bytes with a u16 length in front (a longer one is cut at a
    /// character boundary: text for people, never a name).
    pub fn text(&mut self, s: &str, max: usize) -> Result<(), WireError> {
        let mut end = s.len().min(max).min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16)?;
        self.bytes(&s.as_bytes()[..end])
    }
    /// A name: refused if longer than `max`.
    pub fn str(&mut self, s: &str, max: usize) -> Result<(), WireError> {
        if s.len() > max {
            return Err(WireError::TooLong);
        }
        self.text(s, max)
    }
}

/// Every message's first [`HEADER_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`REQUEST_MAGIC`] or [`REPLY_MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u16,
    /// The kind's number (a reply repeats its request's).
    pub kind: u16,
    /// The client's sequence number (a reply repeats its request's).
    pub seq: u32,
    /// A reply's [`Status`]; 0 in a request.
    pub status: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// 0.
    pub reserved: u32,
}

impl Header {
    /// Encodes the header into `w`.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.magic)?;
        w.u16(self.version)?;
        w.u16(self.kind)?;
        w.u32(self.seq)?;
        w.u32(self.status)?;
        w.u32(self.len)?;
        w.u32(self.reserved)
    }

    /// Decodes a header (no check beyond its own layout).
    pub fn read(r: &mut Reader<'_>) -> Result<Header, WireError> {
        Ok(Header {
            magic: r.u32()?,
            version: r.u16()?,
            kind: r.u16()?,
            seq: r.u32()?,
            status: r.u32()?,
            len: r.u32()?,
            reserved: r.u32()?,
        })
    }
}

/// A checked request: its kind, sequence number and payload bytes (within the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFrame<'a> {
    /// What it asks.
    pub kind: Kind,
    /// The client's sequence number.
    pub seq: u32,
    /// The payload, exactly `len` bytes.
    pub payload: &'a [u8],
}

/// Splits a request message (at most [`MAX_MESSAGE`] bytes are looked at; what follows the
/// payload is ignored) into header and payload, checking magic, version, kind and length.
/// `seq` is returned with the error where the header got that far, so the reply can name it.
pub fn parse_request(msg: &[u8]) -> Result<RequestFrame<'_>, (u32, u16, WireError)> {
    let msg = &msg[..msg.len().min(MAX_MESSAGE)];
    let mut r = Reader::new(msg);
    let h = Header::read(&mut r).map_err(|e| (0, 0, e))?;
    let fail = |e| (h.seq, h.kind, e);
    if h.magic != REQUEST_MAGIC {
        return Err(fail(WireError::Magic));
    }
    if h.version != VERSION {
        return Err(fail(WireError::Version(h.version)));
    }
    if h.status != 0 || h.reserved != 0 {
        return Err(fail(WireError::Field("header")));
    }
    let kind = Kind::from_u16(h.kind).ok_or(fail(WireError::Kind(h.kind)))?;
    let len = usize::try_from(h.len).map_err(|_| fail(WireError::TooLong))?;
    if len > MAX_PAYLOAD {
        return Err(fail(WireError::TooLong));
    }
    let payload = r.bytes(len).map_err(fail)?;
    Ok(RequestFrame {
        kind,
        seq: h.seq,
        payload,
    })
}

/// A checked reply: its kind, sequence number, status and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyFrame<'a> {
    /// What was asked.
    pub kind: u16,
    /// The request's sequence number.
    pub seq: u32,
    /// How it went.
    pub status: Status,
    /// The payload: the kind's reply if `status` is Ok, else the reason ([`Refusal`]).
    pub payload: &'a [u8],
}

/// Splits a reply message, as [`parse_request`] does a request.
pub fn parse_reply(msg: &[u8]) -> Result<ReplyFrame<'_>, WireError> {
    let msg = &msg[..msg.len().min(MAX_MESSAGE)];
    let mut r = Reader::new(msg);
    let h = Header::read(&mut r)?;
    if h.magic != REPLY_MAGIC {
        return Err(WireError::Magic);
    }
    if h.version != VERSION {
        return Err(WireError::Version(h.version));
    }
    if h.reserved != 0 {
        return Err(WireError::Field("header"));
    }
    let status = Status::from_u32(h.status).ok_or(WireError::Status(h.status))?;
    let len = usize::try_from(h.len).map_err(|_| WireError::TooLong)?;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLong);
    }
    Ok(ReplyFrame {
        kind: h.kind,
        seq: h.seq,
        status,
        payload: r.bytes(len)?,
    })
}

/// Writes a whole message into `out`: the header, then what `payload` writes. Returns its
/// length.
pub fn write_message(
    out: &mut [u8],
    magic: u32,
    kind: u16,
    seq: u32,
    status: u32,
    payload: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
) -> Result<usize, WireError> {
    let out = {
        let n = out.len().min(MAX_MESSAGE);
        &mut out[..n]
    };
    let (head, body) = out
        .split_at_mut_checked(HEADER_LEN)
        .ok_or(WireError::TooLong)?;
    let mut w = Writer::new(body);
    payload(&mut w)?;
    let len = w.len();
    Header {
        magic,
        version: VERSION,
        kind,
        seq,
        status,
        len: len as u32,
        reserved: 0,
    }
    .write(&mut Writer::new(head))?;
    Ok(HEADER_LEN + len)
}

/// Writes a request of `kind` with the payload `payload` writes.
pub fn write_request(
    out: &mut [u8],
    kind: Kind,
    seq: u32,
    payload: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
) -> Result<usize, WireError> {
    write_message(out, REQUEST_MAGIC, kind as u16, seq, 0, payload)
}

/// Writes a reply to a request of `kind` (its number, even an unknown one).
pub fn write_reply(
    out: &mut [u8],
    kind: u16,
    seq: u32,
    status: Status,
    payload: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
) -> Result<usize, WireError> {
    write_message(out, REPLY_MAGIC, kind, seq, status as u32, payload)
}

/// A refusal's payload: the reason, for people (at most [`MAX_TEXT`] bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal<'a> {
    /// Why, naming the field or the core where there is one.
    pub reason: &'a str,
}

impl<'a> Refusal<'a> {
    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.text(self.reason, MAX_TEXT)
    }
    /// Decodes a whole payload.
    pub fn read(p: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let reason = r.str(MAX_TEXT)?;
        r.finish()?;
        Ok(Self { reason })
    }
}

/// Reply to [`Kind::Info`] (its request has no payload): atoll's own figures, which a client
/// can compare before and after work to see that nothing leaked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// Bytes in the enclave pool.
    pub pool_bytes: u64,
    /// Bytes of it free now.
    pub pool_free_bytes: u64,
    /// Partition slots (enclaves at once).
    pub max_enclaves: u32,
    /// Slots in use (created, running, ended or failed but not destroyed).
    pub enclaves: u32,
    /// Bytes held for kernels and initrds being loaded.
    pub staging_bytes: u64,
    /// Requests carried out.
    pub requests_ok: u64,
    /// Requests refused.
    pub requests_refused: u64,
    /// Enclaves created since boot.
    pub created: u64,
    /// Enclaves destroyed since boot.
    pub destroyed: u64,
    /// Mailbox slots not FREE besides the one this request came in (held by other clients, or
    /// leaked).
    pub slots_busy: u32,
}

impl Info {
    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u64(self.pool_bytes)?;
        w.u64(self.pool_free_bytes)?;
        w.u32(self.max_enclaves)?;
        w.u32(self.enclaves)?;
        w.u64(self.staging_bytes)?;
        w.u64(self.requests_ok)?;
        w.u64(self.requests_refused)?;
        w.u64(self.created)?;
        w.u64(self.destroyed)?;
        w.u32(self.slots_busy)
    }
    /// Decodes a whole payload.
    pub fn read(p: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let i = Info {
            pool_bytes: r.u64()?,
            pool_free_bytes: r.u64()?,
            max_enclaves: r.u32()?,
            enclaves: r.u32()?,
            staging_bytes: r.u64()?,
            requests_ok: r.u64()?,
            requests_refused: r.u64()?,
            created: r.u64()?,
            destroyed: r.u64()?,
            slots_busy: r.u32()?,
        };
        r.finish()?;
        Ok(i)
    }
}

/// [`Kind::Create`]: the enclave description (one enclave, the boot-time format's fields
/// without the `[[enclave]]` header's array: a table with `name`, `cores`, …) and the sizes of
/// the kernel and initrd the client will load. `image` and `initrd` in the description are the
/// client's file names, kept for the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Create<'a> {
    /// Size of the image (kernel) the client loads.
    pub image_len: u64,
    /// Size of the initrd (0: none).
    pub initrd_len: u64,
    /// The TOML text.
    pub description: &'a str,
}

/// Longest description text.
pub const MAX_DESCRIPTION: usize = 16 * 1024;

impl<'a> Create<'a> {
    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u64(self.image_len)?;
        w.u64(self.initrd_len)?;
        w.str(self.description, MAX_DESCRIPTION)
    }
    /// Decodes a whole payload.
    pub fn read(p: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let c = Create {
            image_len: r.u64()?,
            initrd_len: r.u64()?,
            description: r.str(MAX_DESCRIPTION)?,
        };
        r.finish()?;
        Ok(c)
    }
}

/// Reply to [`Kind::Create`]: the enclave's id, for Load and Start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Created {
    /// The partition id.
    pub id: u16,
}

impl Created {
    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u16(self.id)
    }
    /// Decodes a whole payload.
    pub fn read(p: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let c = Created { id: r.u16()? };
        r.finish()?;
        Ok(c)
    }
}

/// Which file a [`Load`] fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Blob {
    /// The kernel or bare-metal image.
    Image = 0,
    /// The initrd.
    Initrd = 1,
}

/// [`Kind::Load`]: `data` goes at `offset` of the created enclave's image or initrd. Empty
/// reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load<'a> {
    /// The id [`Created`] gave.
    pub id: u16,
    /// Which file.
    pub blob: Blob,
    /// Where in it.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
}

impl<'a> Load<'a> {
    /// Most data bytes one Load carries.
    pub const MAX_DATA: usize = MAX_PAYLOAD - 16;

    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u16(self.id)?;
        w.u8(self.blob as u8)?;
        w.u8(0)?;
        w.u64(self.offset)?;
        w.u32(u32::try_from(self.data.len()).map_err(|_| WireError::TooLong)?)?;
        w.bytes(self.data)
    }
    /// Decodes a whole payload.
    pub fn read(p: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let id = r.u16()?;
        let blob = match r.u8()? {
            0 => Blob::Image,
            1 => Blob::Initrd,
            _ => return Err(WireError::Field("blob")),
        };
        if r.u8()? != 0 {
            return Err(WireError::Field("reserved"));
        }
        let offset = r.u64()?;
        let n = r.u32()? as usize;
        if n > Self::MAX_DATA {
            return Err(WireError::TooLong);
        }
        let data = r.bytes(n)?;
        r.finish()?;
        Ok(Load {
            id,
            blob,
            offset,
            data,
        })
    }
}

/// [`Kind::Start`] (by id, empty name), [`Kind::Destroy`] (by name, or by id with an empty
/// name: a created enclave that was never started), [`Kind::List`] (neither) and
/// [`Kind::Stats`] (a name, or empty for all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// A partition id, or [`Target::ANY`].
    pub id: u16,
    /// An enclave name, or empty.
    pub name: &'a str,
}

impl<'a> Target<'a> {
    /// No particular id.
    pub const ANY: u16 = u16::MAX;

    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u16(self.id)?;
        w.str(self.name, MAX_NAME)
    }
    /// Decodes a whole payload.
    pub fn read(p: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let t = Target {
            id: r.u16()?,
            name: r.str(MAX_NAME)?,
        };
        r.finish()?;
        Ok(t)
    }
}

/// [`Kind::ConsoleRead`]: up to `max` bytes of the enclave's console output from `cursor` (a
/// byte count since its start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleRead<'a> {
    /// The enclave.
    pub name: &'a str,
    /// Where to read from (0: the oldest byte kept).
    pub cursor: u64,
    /// Most bytes wanted.
    pub max: u32,
}

impl<'a> ConsoleRead<'a> {
    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u64(self.cursor)?;
        w.u32(self.max)?;
        w.str(self.name, MAX_NAME)
    }
    /// Decodes a whole payload.
    pub fn read(p: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let c = ConsoleRead {
            cursor: r.u64()?,
            max: r.u32()?,
            name: r.str(MAX_NAME)?,
        };
        r.finish()?;
        Ok(c)
    }
}

/// Reply to [`Kind::ConsoleRead`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleData<'a> {
    /// Where `data` starts (later than the cursor asked if bytes before it were overwritten).
    pub start: u64,
    /// The cursor for the next read (`start + data.len()`).
    pub next: u64,
    /// Whether the enclave still runs (more output may come).
    pub running: bool,
    /// The bytes.
    pub data: &'a [u8],
}

impl<'a> ConsoleData<'a> {
    /// Most bytes one reply carries.
    pub const MAX_DATA: usize = MAX_PAYLOAD - 24;

    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u64(self.start)?;
        w.u64(self.next)?;
        w.u32(u32::from(self.running))?;
        w.u32(u32::try_from(self.data.len()).map_err(|_| WireError::TooLong)?)?;
        w.bytes(self.data)
    }
    /// Decodes a whole payload.
    pub fn read(p: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let start = r.u64()?;
        let next = r.u64()?;
        let running = match r.u32()? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Field("running")),
        };
        let n = r.u32()? as usize;
        if n > Self::MAX_DATA {
            return Err(WireError::TooLong);
        }
        let data = r.bytes(n)?;
        r.finish()?;
        if start.checked_add(n as u64) != Some(next) {
            return Err(WireError::Field("next"));
        }
        Ok(ConsoleData {
            start,
            next,
            running,
            data,
        })
    }
}

/// [`Kind::ConsoleWrite`]: bytes for the enclave's UART receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleWrite<'a> {
    /// The enclave.
    pub name: &'a str,
    /// The bytes (at most [`ConsoleWrite::MAX_DATA`]).
    pub data: &'a [u8],
}

impl<'a> ConsoleWrite<'a> {
    /// Most bytes one request carries.
    pub const MAX_DATA: usize = 4096;

    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.str(self.name, MAX_NAME)?;
        if self.data.len() > Self::MAX_DATA {
            return Err(WireError::TooLong);
        }
        w.u32(self.data.len() as u32)?;
        w.bytes(self.data)
    }
    /// Decodes a whole payload.
    pub fn read(p: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let name = r.str(MAX_NAME)?;
        let n = r.u32()? as usize;
        if n > Self::MAX_DATA {
            return Err(WireError::TooLong);
        }
        let data = r.bytes(n)?;
        r.finish()?;
        Ok(ConsoleWrite { name, data })
    }
}

/// Reply to [`Kind::ConsoleWrite`]: how many bytes the receiver took (its FIFO may be full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Bytes taken, from the front.
    pub bytes: u32,
}

impl Accepted {
    /// Encodes.
    pub fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.bytes)
    }
    /// Decodes a whole payload.
    pub fn read(p: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(p);
        let a = Accepted { bytes: r.u32()? };
        r.finish()?;
        Ok(a)
    }
}

/// An enclave's state in a [`Record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Created; its kernel and initrd are being loaded (not started).
    Loading = 0,
    /// Its vCPUs run.
    Running = 1,
    /// It ended by itself (power-off, exit hypercall); its report is kept until destroyed.
    Ended = 2,
    /// It failed (a fault of its own, a violation, atoll's fault, a stop): the reason says.
    Failed = 3,
}

impl State {
    /// The state's name, as `atoll list` shows it.
    pub fn name(self) -> &'static str {
        match self {
            State::Loading => "loading",
            State::Running => "running",
            State::Ended => "ended",
            State::Failed => "failed",
        }
    }
    fn from_u8(v: u8) -> Option<State> {
        [State::Loading, State::Running, State::Ended, State::Failed]
            .into_iter()
            .find(|s| *s as u8 == v)
    }
}

/// One enclave, as List and Stats answer (a reply is a u32 count, then the records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Partition id.
    pub id: u16,
    /// State.
    pub state: State,
    /// Name.
    pub name: &'a str,
    /// Its cores (APIC ids), at most [`MAX_CORES`], as little-endian u32s.
    pub cores: CoreList<'a>,
    /// Its RAM in MiB.
    pub memory_mib: u64,
    /// Microseconds since it started (0 if never; frozen at its end).
    pub uptime_us: u64,
    /// Exits by kind, in [`EXIT_KINDS`] order, summed over its vCPUs.
    pub exits: [u64; EXIT_KINDS.len()],
    /// Exits of each vCPU by class ([`VCPU_EXIT_CLASSES`]), in vCPU order (vCPU i runs on its
    /// i-th core), at most [`MAX_CORES`] vCPUs; empty for an enclave without atoll's virtual
    /// platform (bare metal) or not yet built. Protocol version 2.
    pub vcpu_exits: VcpuCounts<'a>,
    /// Interrupts atoll injected into it.
    pub interrupts_injected: u64,
    /// IPIs it sent that atoll dropped (to cores not its own).
    pub ipis_dropped: u64,
    /// Console bytes past its budget, dropped.
    pub console_bytes_dropped: u64,
    /// Interrupts of its passed-through functions delivered to it.
    pub device_interrupts: u64,
    /// DMA faults of its passed-through functions (VT-d).
    pub dma_faults: u64,
    /// Interrupt faults of its passed-through functions (VT-d).
    pub interrupt_faults: u64,
    /// Descriptor chains its virtio devices completed.
    pub virtio_chains: u64,
    /// Malformed descriptor chains of its guest (each needed a device reset).
    pub virtio_bad_chains: u64,
    /// Malformed records or ring indices of the host's daemon on its channel.
    pub virtio_host_errors: u64,
    /// Times it was restarted (a guest reset).
    pub restarts: u32,
    /// Why it ended or failed (empty while it runs).
    pub reason: &'a str,
}

/// A record's cores, as the wire holds them (a record being written takes its cores from a
/// slice instead: [`Record::write_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreList<'a>(&'a [u8]);

impl<'a> CoreList<'a> {
    /// Cores from their wire bytes (whole u32s only).
    pub fn from_bytes(b: &'a [u8]) -> Option<Self> {
        (b.len().is_multiple_of(4) && b.len() / 4 <= MAX_CORES).then_some(Self(b))
    }
    /// How many.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }
    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The APIC ids.
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// A record's per-vCPU class counts, as the wire holds them after their u16 vCPU count:
/// [`VCPU_EXIT_CLASSES`]`.len()` little-endian u64s per vCPU (a record being written takes
/// them from a slice instead: [`Record::write_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuCounts<'a>(&'a [u8]);

/// One vCPU's exits by class.
pub type ClassCounts = [u64; VCPU_EXIT_CLASSES.len()];

const VCPU_RECORD: usize = 8 * VCPU_EXIT_CLASSES.len();

impl<'a> VcpuCounts<'a> {
    /// How many vCPUs.
    pub fn len(&self) -> usize {
        self.0.len() / VCPU_RECORD
    }
    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Each vCPU's counts by class.
    pub fn iter(&self) -> impl Iterator<Item = ClassCounts> + 'a {
        self.0.chunks_exact(VCPU_RECORD).map(|v| {
            core::array::from_fn(|i| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v[i * 8..i * 8 + 8]);
                u64::from_le_bytes(b)
            })
        })
    }
}

impl<'a> Record<'a> {
    /// Encodes the record; `cores` and `vcpu_exits` are written from the slices (at most
    /// [`MAX_CORES`] each; `self.cores` and `self.vcpu_exits` are not read).
    pub fn write_with(
        &self,
        cores: &[u32],
        vcpu_exits: &[ClassCounts],
        w: &mut Writer<'_>,
    ) -> Result<(), WireError> {
        if cores.len() > MAX_CORES || vcpu_exits.len() > MAX_CORES {
            return Err(WireError::TooLong);
        }
        w.u16(self.id)?;
        w.u8(self.state as u8)?;
        w.u8(0)?;
        w.str(self.name, MAX_NAME)?;
        w.u16(cores.len() as u16)?;
        for c in cores {
            w.u32(*c)?;
        }
        w.u64(self.memory_mib)?;
        w.u64(self.uptime_us)?;
        for e in self.exits {
            w.u64(e)?;
        }
        w.u16(vcpu_exits.len() as u16)?;
        for v in vcpu_exits {
            for e in v {
                w.u64(*e)?;
            }
        }
        w.u64(self.interrupts_injected)?;
        w.u64(self.ipis_dropped)?;
        w.u64(self.console_bytes_dropped)?;
        w.u64(self.device_interrupts)?;
        w.u64(self.dma_faults)?;
        w.u64(self.interrupt_faults)?;
        w.u64(self.virtio_chains)?;
        w.u64(self.virtio_bad_chains)?;
        w.u64(self.virtio_host_errors)?;
        w.u32(self.restarts)?;
        w.text(self.reason, MAX_TEXT)
    }

    /// Decodes one record from `r`.
    pub fn read(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let id = r.u16()?;
        let state = State::from_u8(r.u8()?).ok_or(WireError::Field("state"))?;
        if r.u8()? != 0 {
            return Err(WireError::Field("reserved"));
        }
        let name = r.str(MAX_NAME)?;
        let n = usize::from(r.u16()?);
        if n > MAX_CORES {
            return Err(WireError::TooLong);
        }
        let cores = CoreList(r.bytes(n * 4)?);
        let memory_mib = r.u64()?;
        let uptime_us = r.u64()?;
        let mut exits = [0u64; EXIT_KINDS.len()];
        for e in &mut exits {
            *e = r.u64()?;
        }
        let n = usize::from(r.u16()?);
        if n > MAX_CORES {
            return Err(WireError::TooLong);
        }
        let vcpu_exits = VcpuCounts(r.bytes(n * VCPU_RECORD)?);
        Ok(Record {
            id,
            state,
            name,
            cores,
            memory_mib,
            uptime_us,
            exits,
            vcpu_exits,
            interrupts_injected: r.u64()?,
            ipis_dropped: r.u64()?,
            console_bytes_dropped: r.u64()?,
            device_interrupts: r.u64()?,
            dma_faults: r.u64()?,
            interrupt_faults: r.u64()?,
            virtio_chains: r.u64()?,
            virtio_bad_chains: r.u64()?,
            virtio_host_errors: r.u64()?,
            restarts: r.u32()?,
            reason: r.str(MAX_TEXT)?,
        })
    }
}

/// Most records one reply carries.
pub const MAX_RECORDS: u32 = 64;

/// The longest record: every fixed field, the longest name and reason, [`MAX_CORES`] cores and
/// as many vCPUs' class counts.
pub const MAX_RECORD_LEN: usize = 2
    + 1
    + 1
    + (2 + MAX_NAME)
    + 2
    + 4 * MAX_CORES
    + 8
    + 8
    + 8 * EXIT_KINDS.len()
    + 2
    + VCPU_RECORD * MAX_CORES
    + 8 * 9
    + 4
    + (2 + MAX_TEXT);

// A List or Stats reply of the most records, each the longest, fits one message.
const _: () = assert!(4 + MAX_RECORDS as usize * MAX_RECORD_LEN <= MAX_PAYLOAD);

/// Decodes a List or Stats reply's payload: a u32 count, then that many records, nothing
/// after. Calls `each` with every record.
pub fn read_records<'a>(p: &'a [u8], mut each: impl FnMut(Record<'a>)) -> Result<u32, WireError> {
    let mut r = Reader::new(p);
    let n = r.u32()?;
    if n > MAX_RECORDS {
        return Err(WireError::TooLong);
    }
    for _ in 0..n {
        each(Record::read(&mut r)?);
    }
    r.finish()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        kind: Kind,
        payload: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
    ) -> ([u8; 4096], usize) {
        let mut buf = [0u8; 4096];
        let n = write_request(&mut buf, kind, 7, payload).unwrap();
        (buf, n)
    }

    #[test]
    fn every_kind_and_status_round_trips_its_number() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_u16(k as u16), Some(k));
        }
        assert_eq!(Kind::from_u16(0), None);
        assert_eq!(Kind::from_u16(10), None);
        for s in Status::ALL {
            assert_eq!(Status::from_u32(s as u32), Some(s));
            assert!(!s.name().is_empty());
        }
        assert_eq!(Status::from_u32(13), None);
    }

    #[test]
    fn a_request_round_trips_and_its_header_is_checked() {
        let c = Create {
            image_len: 123,
            initrd_len: 0,
            description: "name = \"a\"",
        };
        let (buf, n) = request(Kind::Create, |w| c.write(w));
        let f = parse_request(&buf[..n]).unwrap();
        assert_eq!((f.kind, f.seq), (Kind::Create, 7));
        assert_eq!(Create::read(f.payload).unwrap(), c);
        // Trailing bytes after the payload are not part of it.
        let f = parse_request(&buf).unwrap();
        assert_eq!(Create::read(f.payload).unwrap(), c);

        let mut bad = buf;
        bad[0] ^= 1;
        assert_eq!(parse_request(&bad).unwrap_err().2, WireError::Magic);
        let mut bad = buf;
        bad[4] = 9;
        assert_eq!(
            parse_request(&bad).unwrap_err(),
            (7, Kind::Create as u16, WireError::Version(9))
        );
        let mut bad = buf;
        bad[6] = 0x55;
        assert_eq!(parse_request(&bad).unwrap_err().2, WireError::Kind(0x55));
        let mut bad = buf;
        bad[12] = 1; // status in a request
        assert_eq!(
            parse_request(&bad).unwrap_err().2,
            WireError::Field("header")
        );
        let mut bad = buf;
        bad[20] = 1; // reserved
        assert_eq!(
            parse_request(&bad).unwrap_err().2,
            WireError::Field("header")
        );
        // Truncated: the header, the payload.
        assert_eq!(
            parse_request(&buf[..10]).unwrap_err().2,
            WireError::Truncated
        );
        assert_eq!(
            parse_request(&buf[..n - 1]).unwrap_err().2,
            WireError::Truncated
        );
        // A length past the slot.
        let mut bad = buf;
        bad[16..20].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert_eq!(parse_request(&bad).unwrap_err().2, WireError::TooLong);
        let mut bad = buf;
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_request(&bad).unwrap_err().2, WireError::TooLong);
    }

    #[test]
    fn payloads_refuse_truncation_extra_bytes_and_bad_fields() {
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf);
        Load {
            id: 3,
            blob: Blob::Initrd,
            offset: 4096,
            data: b"abc",
        }
        .write(&mut w)
        .unwrap();
        let n = w.len();
        let l = Load::read(&buf[..n]).unwrap();
        assert_eq!(
            (l.id, l.blob, l.offset, l.data),
            (3, Blob::Initrd, 4096, &b"abc"[..])
        );
        assert_eq!(Load::read(&buf[..n - 1]), Err(WireError::Truncated));
        assert_eq!(Load::read(&buf[..n + 1]), Err(WireError::TooLong));
        let mut bad = buf;
        bad[2] = 2;
        assert_eq!(Load::read(&bad[..n]), Err(WireError::Field("blob")));
        let mut bad = buf;
        bad[3] = 1;
        assert_eq!(Load::read(&bad[..n]), Err(WireError::Field("reserved")));
        let mut bad = buf;
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Load::read(&bad[..n]), Err(WireError::TooLong));

        // Strings: too long, not UTF-8.
        let mut w = Writer::new(&mut buf);
        assert_eq!(
            Target {
                id: 0,
                name: "x".repeat(33).as_str()
            }
            .write(&mut w),
            Err(WireError::TooLong)
        );
        let mut raw = [0u8; 8];
        raw[0..2].copy_from_slice(&1u16.to_le_bytes());
        raw[2..4].copy_from_slice(&2u16.to_le_bytes());
        raw[4] = 0xff;
        raw[5] = 0xfe;
        assert_eq!(Target::read(&raw[..6]), Err(WireError::Utf8));
        raw[2..4].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(Target::read(&raw[..6]), Err(WireError::TooLong));
    }

    #[test]
    fn records_round_trip_with_their_cores_and_counters() {
        let mut exits = [0u64; EXIT_KINDS.len()];
        exits[1] = 99;
        let rec = Record {
            id: 2,
            state: State::Failed,
            name: "linux",
            cores: CoreList(&[]),
            memory_mib: 256,
            uptime_us: 1_000_000,
            exits,
            vcpu_exits: VcpuCounts(&[]),
            interrupts_injected: 5,
            ipis_dropped: 1,
            console_bytes_dropped: 0,
            device_interrupts: 0,
            dma_faults: 0,
            interrupt_faults: 0,
            virtio_chains: 0,
            virtio_bad_chains: 0,
            virtio_host_errors: 0,
            restarts: 0,
            reason: "triple fault",
        };
        let mut buf = [0u8; 4096];
        let mut w = Writer::new(&mut buf);
        w.u32(2).unwrap();
        rec.write_with(&[1, 2], &[[1, 2, 3, 1], [0, 0, 9, 1]], &mut w)
            .unwrap();
        rec.write_with(&[3], &[], &mut w).unwrap();
        let n = w.len();
        let mut seen = [0usize; 2];
        let mut vcpus = [[None; 3]; 2];
        let mut per_class = [0u64; 4];
        let mut i = 0;
        assert_eq!(
            read_records(&buf[..n], |r| {
                assert_eq!(r.name, "linux");
                assert_eq!(r.exits[1], 99);
                assert_eq!(r.reason, "triple fault");
                assert_eq!(r.state, State::Failed);
                seen[i] = r.cores.len();
                for (k, e) in r.vcpu_exits.iter().enumerate().take(3) {
                    vcpus[i][k] = Some(e.iter().sum::<u64>());
                    if i == 0 && k == 1 {
                        per_class = e;
                    }
                }
                i += 1;
            }),
            Ok(2)
        );
        assert_eq!(seen, [2, 1]);
        assert_eq!(vcpus, [[Some(7), Some(10), None], [None; 3]]);
        assert_eq!(per_class, [0, 0, 9, 1], "timer, ipi, hlt, other");
        // The vCPU count sits after the exits (header-free payload: count, id, state,
        // reserved, name, cores, memory, uptime, exits): more than MAX_CORES is refused before
        // anything is read, a count past the bytes is a truncation.
        let at = 4 + 2 + 1 + 1 + (2 + 5) + 2 + 4 * 2 + 8 + 8 + 8 * EXIT_KINDS.len();
        assert_eq!(
            &buf[at..at + 2],
            &2u16.to_le_bytes(),
            "the first record's vCPU count"
        );
        let mut bad = buf;
        bad[at..at + 2].copy_from_slice(&(MAX_CORES as u16 + 1).to_le_bytes());
        assert_eq!(read_records(&bad[..n], |_| ()), Err(WireError::TooLong));
        let mut bad = buf;
        bad[at..at + 2].copy_from_slice(&60u16.to_le_bytes());
        assert_eq!(read_records(&bad[..n], |_| ()), Err(WireError::Truncated));
        assert!(read_records(&buf[..n - 1], |_| ()).is_err());
        let mut bad = buf;
        bad[0] = 3; // one record more than present
        assert_eq!(read_records(&bad[..n], |_| ()), Err(WireError::Truncated));
        let mut bad = buf;
        bad[6] = 9; // state
        assert_eq!(
            read_records(&bad[..n], |_| ()),
            Err(WireError::Field("state"))
        );
        assert_eq!(
            rec.write_with(&[0; MAX_CORES + 1], &[], &mut Writer::new(&mut buf)),
            Err(WireError::TooLong)
        );
        assert_eq!(
            rec.write_with(&[0], &[[0; 4]; MAX_CORES + 1], &mut Writer::new(&mut buf)),
            Err(WireError::TooLong)
        );
    }

    #[test]
    fn a_reply_round_trips_and_refusals_carry_their_reason() {
        let mut buf = [0u8; 1024];
        let n = write_reply(&mut buf, 2, 9, Status::CoreBusy, |w| {
            Refusal {
                reason: "core 2 is online in the host",
            }
            .write(w)
        })
        .unwrap();
        let f = parse_reply(&buf[..n]).unwrap();
        assert_eq!((f.kind, f.seq, f.status), (2, 9, Status::CoreBusy));
        assert_eq!(
            Refusal::read(f.payload).unwrap().reason,
            "core 2 is online in the host"
        );
        let mut bad = buf;
        bad[12] = 77;
        assert_eq!(parse_reply(&bad[..n]), Err(WireError::Status(77)));
        // The reserved word is checked as in a request (the client refuses what atoll may
        // later give a meaning).
        let mut bad = buf;
        bad[20] = 1;
        assert_eq!(parse_reply(&bad[..n]), Err(WireError::Field("header")));
        // A reason longer than MAX_TEXT is cut at a character boundary.
        let long = "é".repeat(MAX_TEXT);
        let n = write_reply(&mut buf, 2, 9, Status::Invalid, |w| {
            Refusal { reason: &long }.write(w)
        })
        .unwrap();
        let r = Refusal::read(parse_reply(&buf[..n]).unwrap().payload).unwrap();
        assert!(r.reason.len() <= MAX_TEXT && r.reason.chars().all(|c| c == 'é'));
        // A reply that does not fit its buffer is an error, not a cut.
        let mut small = [0u8; 30];
        assert_eq!(
            write_reply(&mut small, 2, 9, Status::Ok, |w| w.bytes(&[0; 10])),
            Err(WireError::TooLong)
        );
    }

    #[test]
    fn console_data_checks_its_cursor() {
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf);
        ConsoleData {
            start: 10,
            next: 13,
            running: true,
            data: b"abc",
        }
        .write(&mut w)
        .unwrap();
        let n = w.len();
        assert_eq!(ConsoleData::read(&buf[..n]).unwrap().data, b"abc");
        let mut bad = buf;
        bad[8] = 14;
        assert_eq!(ConsoleData::read(&bad[..n]), Err(WireError::Field("next")));
        let mut bad = buf;
        bad[16] = 2;
        assert_eq!(
            ConsoleData::read(&bad[..n]),
            Err(WireError::Field("running"))
        );
    }

    #[test]
    fn info_and_small_payloads_round_trip() {
        let i = Info {
            pool_bytes: 1 << 30,
            pool_free_bytes: 1 << 29,
            max_enclaves: 64,
            enclaves: 1,
            staging_bytes: 0,
            requests_ok: 5,
            requests_refused: 2,
            created: 1,
            destroyed: 0,
            slots_busy: 1,
        };
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf);
        i.write(&mut w).unwrap();
        let n = w.len();
        assert_eq!(Info::read(&buf[..n]), Ok(i));
        assert_eq!(Info::read(&buf[..n - 1]), Err(WireError::Truncated));
        let mut w = Writer::new(&mut buf);
        ConsoleWrite {
            name: "a",
            data: b"ls\n",
        }
        .write(&mut w)
        .unwrap();
        let n = w.len();
        assert_eq!(ConsoleWrite::read(&buf[..n]).unwrap().data, b"ls\n");
        let big = [0u8; ConsoleWrite::MAX_DATA + 1];
        let mut large = [0u8; 8192];
        assert_eq!(
            ConsoleWrite {
                name: "a",
                data: &big
            }
            .write(&mut Writer::new(&mut large)),
            Err(WireError::TooLong)
        );
    }
}
