//! Requests and replies above the transport: sequence numbers, encoding with the ABI's
//! writers, and checking every reply before anything reads it.

use atoll_abi::control::{
    parse_reply, write_message, write_request, Kind, Refusal, Status, WireError, Writer,
    MAX_MESSAGE, REQUEST_MAGIC,
};
use std::path::PathBuf;

/// Everything that can go wrong in `atoll`; each variant's text is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No control device (not root, not on atoll, or the registers do not match).
    #[error("atoll control device not found: are you root, on a host atoll booted? ({0})")]
    NoDevice(String),
    /// atoll refused the request.
    #[error("{}: {reason}", status.name())]
    Refused {
        /// atoll's status.
        status: Status,
        /// atoll's reason text.
        reason: String,
    },
    /// atoll's reply is not a valid reply to the request sent.
    #[error("bad reply from atoll: {0}")]
    BadReply(String),
    /// atoll did not answer in time.
    #[error("atoll did not answer within {0} s (the slot stays claimed)")]
    Timeout(u64),
    /// A request could not be encoded (too long for a message).
    #[error("request cannot be encoded: {0}")]
    Encode(WireError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Anything else, with its text (a bad description file, a CPU mapping missing, …).
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A way to hand atoll one request message and get its reply message back (the mailbox
/// device, or a fake atoll in tests).
pub trait Channel {
    /// Sends `request` (a whole message, or any bytes: the `raw` command sends garbage) and
    /// returns the reply message's bytes as they were in the slot, unchecked.
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>>;
}

/// A checked reply, copied out of the slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedReply {
    /// The kind number the reply names.
    pub kind: u16,
    /// The sequence number it repeats.
    pub seq: u32,
    /// How the request went.
    pub status: Status,
    /// The payload: the kind's reply, or a [`Refusal`].
    pub payload: Vec<u8>,
}

impl OwnedReply {
    /// The refusal's reason text (or a note that the reply carries none readable).
    pub fn reason(&self) -> String {
        match Refusal::read(&self.payload) {
            Ok(r) => r.reason.to_string(),
            Err(e) => format!("(reason unreadable: {e})"),
        }
    }
}

/// Parses a reply message (without matching it to a request).
pub fn parse_owned(msg: &[u8]) -> Result<OwnedReply> {
    let f = parse_reply(msg).map_err(|e| Error::BadReply(e.to_string()))?;
    Ok(OwnedReply {
        kind: f.kind,
        seq: f.seq,
        status: f.status,
        payload: f.payload.to_vec(),
    })
}

/// Talks to atoll over a [`Channel`].
pub struct Client {
    channel: Box<dyn Channel>,
    seq: u32,
}

impl Client {
    /// A client starting its sequence numbers from `seq` (the process id in `atoll`, so two
    /// shells' requests differ).
    pub fn new(channel: Box<dyn Channel>, seq: u32) -> Self {
        Self { channel, seq }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends a request of `kind` whose payload `payload` writes, and returns its checked reply
    /// of any status.
    pub fn call_any(
        &mut self,
        kind: Kind,
        payload: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
    ) -> Result<OwnedReply> {
        let seq = self.next_seq();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = write_request(&mut buf, kind, seq, payload).map_err(Error::Encode)?;
        buf.truncate(n);
        let reply = parse_owned(&self.channel.exchange(&buf)?)?;
        if reply.kind != kind as u16 {
            return Err(Error::BadReply(format!(
                "reply is of kind {}, the request of kind {}",
                reply.kind, kind as u16
            )));
        }
        if reply.seq != seq {
            return Err(Error::BadReply(format!(
                "reply has sequence number {}, the request {seq}",
                reply.seq
            )));
        }
        Ok(reply)
    }

    /// As [`Client::call_any`], with a refusal turned into [`Error::Refused`]: returns the Ok
    /// reply's payload.
    pub fn call(
        &mut self,
        kind: Kind,
        payload: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
    ) -> Result<Vec<u8>> {
        let r = self.call_any(kind, payload)?;
        if r.status == Status::Ok {
            Ok(r.payload)
        } else {
            Err(Error::Refused {
                status: r.status,
                reason: r.reason(),
            })
        }
    }

    /// Sends a request with any kind number and raw payload bytes; the reply is checked as a
    /// reply but not matched to the kind (atoll answers an unknown kind).
    pub fn call_raw_kind(&mut self, kind: u16, payload: &[u8]) -> Result<OwnedReply> {
        let seq = self.next_seq();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = write_message(&mut buf, REQUEST_MAGIC, kind, seq, 0, |w| w.bytes(payload))
            .map_err(Error::Encode)?;
        buf.truncate(n);
        parse_owned(&self.channel.exchange(&buf)?)
    }

    /// Sends `bytes` as they are (garbage) and returns atoll's reply, checked as a reply.
    pub fn send_garbage(&mut self, bytes: &[u8]) -> Result<OwnedReply> {
        parse_owned(&self.channel.exchange(bytes)?)
    }
}

/// Decodes a payload with an ABI reader, naming what was decoded on failure.
pub fn decode<T>(what: &str, r: Result<T, WireError>) -> Result<T> {
    r.map_err(|e| Error::BadReply(format!("{what}: {e}")))
}
