//! The host side of a virtio device as the device models see it: a pair of record rings.
//!
//! Each device is connected to two single-producer/single-consumer rings in a channel window
//! shared with the host: one toward the host (the device produces), one from it (the device
//! consumes). A **record** is a tag (`u32`) and a payload of bytes; what tag and payload mean
//! is the device's protocol (see [`super::net`], [`super::console`], [`super::blk`]).
//!
//! The trait streams bytes rather than taking slices of the window, because the window is
//! memory the host writes concurrently (like guest RAM, it is only ever copied through, never
//! referenced), and because a record's payload comes from scattered guest buffers: the device
//! reserves a record ([`Backend::begin`]), appends pieces ([`Backend::append`]) and publishes it
//! ([`Backend::commit`]). Nothing here allocates.
//!
//! Whatever [`Backend::peek`] reports comes from the host and is checked by the device as
//! strictly as guest descriptors: a length that does not fit the guest's buffer or a tag the
//! device does not know is a host error, counted, never followed.

/// A record waiting in the ring from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its tag.
    pub tag: u32,
    /// Payload bytes.
    pub len: u32,
}

/// Why a ring operation did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// No room for the record now (the host has not consumed enough): try again later.
    Full,
    /// A record this large can never fit the ring.
    TooLarge,
    /// Nothing to read, or an append or read past the record's length, or no record begun.
    Range,
    /// The ring's shared state is inconsistent (the host wrote garbage).
    Broken,
}

/// The pair of rings one device uses.
pub trait Backend {
    /// Reserves a record of `len` payload bytes tagged `tag` toward the host. Nothing is
    /// visible to the host until [`Backend::commit`].
    fn begin(&mut self, tag: u32, len: u32) -> Result<(), BackendError>;
    /// Appends payload bytes to the record begun (at most its `len` in total).
    fn append(&mut self, bytes: &[u8]) -> Result<(), BackendError>;
    /// Publishes the record begun; every byte of it must have been appended.
    fn commit(&mut self) -> Result<(), BackendError>;
    /// Drops the record begun without publishing it.
    fn abort(&mut self);
    /// The next record from the host, if any.
    fn peek(&mut self) -> Result<Option<Record>, BackendError>;
    /// Copies payload bytes of the next record from `offset`.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), BackendError>;
    /// Drops the next record from the host (it was delivered or refused).
    fn consume(&mut self) -> Result<(), BackendError>;

    /// A whole record from pieces in atoll's memory.
    fn send(&mut self, tag: u32, parts: &[&[u8]]) -> Result<(), BackendError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).map_err(|_| BackendError::TooLarge)?;
        self.begin(tag, len)?;
        for p in parts {
            if let Err(e) = self.append(p) {
                self.abort();
                return Err(e);
            }
        }
        self.commit()
    }
}

/// An in-memory backend for host tests: records in two queues, a capacity toward the host.
#[cfg(test)]
pub mod fake {
    use super::*;
    use alloc::collections::VecDeque;
    use alloc::vec::Vec;

    /// Two queues of records.
    #[derive(Default)]
    pub struct FakeBackend {
        /// Records the device published, oldest first.
        pub to_host: VecDeque<(u32, Vec<u8>)>,
        /// Records for the device, oldest first.
        pub from_host: VecDeque<(u32, Vec<u8>)>,
        /// Records `to_host` may hold before `begin` says Full (None: unlimited).
        pub capacity: Option<usize>,
        /// Largest record `begin` accepts.
        pub max_record: Option<u32>,
        open: Option<(u32, u32, Vec<u8>)>,
    }

    impl Backend for FakeBackend {
        fn begin(&mut self, tag: u32, len: u32) -> Result<(), BackendError> {
            if self.max_record.is_some_and(|m| len > m) {
                return Err(BackendError::TooLarge);
            }
            if self.capacity.is_some_and(|c| self.to_host.len() >= c) {
                return Err(BackendError::Full);
            }
            self.open = Some((tag, len, Vec::new()));
            Ok(())
        }
        fn append(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
            let (_, len, data) = self.open.as_mut().ok_or(BackendError::Range)?;
            if data.len() + bytes.len() > *len as usize {
                return Err(BackendError::Range);
            }
            data.extend_from_slice(bytes);
            Ok(())
        }
        fn commit(&mut self) -> Result<(), BackendError> {
            let (tag, len, data) = self.open.take().ok_or(BackendError::Range)?;
            if data.len() != len as usize {
                return Err(BackendError::Range);
            }
            self.to_host.push_back((tag, data));
            Ok(())
        }
        fn abort(&mut self) {
            self.open = None;
        }
        fn peek(&mut self) -> Result<Option<Record>, BackendError> {
            Ok(self.from_host.front().map(|(tag, d)| Record {
                tag: *tag,
                len: d.len() as u32,
            }))
        }
        fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), BackendError> {
            let (_, d) = self.from_host.front().ok_or(BackendError::Range)?;
            let at = offset as usize;
            let src = d.get(at..at + buf.len()).ok_or(BackendError::Range)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn consume(&mut self) -> Result<(), BackendError> {
            self.from_host
                .pop_front()
                .map(|_| ())
                .ok_or(BackendError::Range)
        }
    }
}
