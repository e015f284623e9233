//! The blk backend: requests on an image file, answered with the request's tag.

use super::{DevError, Rings, Took, Window};
use atoll_abi::channel::{
    backend, blk_status, blk_type, dev_flags, layout, BlkRequest, HostDevice, Record, SharedMem,
    BLK_MAX_DATA, BLK_REQUEST_LEN, BLK_RESPONSE_LEN,
};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Bytes of a sector.
pub const SECTOR: u64 = 512;

/// The image file.
pub struct Blk {
    file: File,
    capacity: u64,
    read_only: bool,
    buf: Vec<u8>,
    /// Requests answered with an error status.
    pub failed_requests: u64,
}

impl Blk {
    /// Opens the device's image (its parameter; read-only when the device is) and writes
    /// its capacity and READY into the device's host fields.
    pub fn open(w: &Window, info: &HostDevice) -> io::Result<Blk> {
        let path = info
            .param()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| io::Error::other("no image path"))?;
        let read_only = info.flags & dev_flags::READ_ONLY != 0;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        // One writer or any number of readers per image, among daemons (and any other
        // program that locks, as QEMU does): two enclaves writing one ext4 image would
        // corrupt it. The lock goes with the descriptor, when the daemon exits.
        let how = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{path}: in use ({}): another enclave's daemon or another program holds \
                     a lock on it",
                    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                        "locked".to_string()
                    } else {
                        e.to_string()
                    }
                ),
            ));
        }
        // Seeking to the end gives a block device's size as well as a file's.
        let capacity = file.seek(SeekFrom::End(0))?;
        let b = Blk {
            file,
            capacity,
            read_only,
            buf: Vec::new(),
            failed_requests: 0,
        };
        b.announce(w, info);
        Ok(b)
    }

    /// Writes DEV_CAPACITY, then DEV_BACKEND = READY (the caller rings the doorbell).
    pub fn announce(&self, w: &Window, info: &HostDevice) {
        let base = layout::DEVICE0 + info.index * layout::DEVICE_STRIDE;
        w.write(base + layout::DEV_CAPACITY, &self.capacity.to_le_bytes());
        w.store_release(base + layout::DEV_BACKEND, backend::READY);
    }

    /// The image's bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The byte range of a request, if inside the image.
    fn range(&self, req: &BlkRequest) -> Option<u64> {
        let start = req.sector.checked_mul(SECTOR)?;
        let end = start.checked_add(u64::from(req.len))?;
        (end <= self.capacity).then_some(start)
    }

    /// A request: carried out and answered, or `NeedRoom` when the answer does not fit yet
    /// (the request stays in the ring and nothing was done).
    pub fn take(&mut self, r: &mut Rings<'_>, rec: &Record) -> Result<Took, DevError> {
        let mut h = [0u8; BLK_REQUEST_LEN as usize];
        if rec.len < BLK_REQUEST_LEN || r.rx.read(r.w, rec, 0, &mut h) != h.len() {
            return Err(DevError::Record(format!(
                "blk request of {} bytes, shorter than its header",
                rec.len
            )));
        }
        let Some(req) = BlkRequest::decode(&h) else {
            return Err(DevError::Record("blk request header".into()));
        };
        let data_in = req.kind == blk_type::IN && req.len <= BLK_MAX_DATA;
        // A read's answer carries exactly the bytes asked for, whatever its status.
        let answer = BLK_RESPONSE_LEN + if data_in { req.len } else { 0 };
        let Some(res) = r.tx.reserve(r.w, rec.tag, answer)? else {
            return Ok(Took::NeedRoom(answer));
        };
        let status = match req.kind {
            blk_type::IN if data_in => {
                self.buf.clear();
                self.buf.resize(req.len as usize, 0);
                let st = match self.range(&req) {
                    Some(at) => match self.file.read_exact_at(&mut self.buf, at) {
                        Ok(()) => blk_status::OK,
                        Err(_) => blk_status::IOERR,
                    },
                    None => blk_status::IOERR,
                };
                if st != blk_status::OK {
                    self.buf.fill(0);
                }
                r.tx.fill(r.w, &res, BLK_RESPONSE_LEN, &self.buf);
                st
            }
            blk_type::IN => blk_status::IOERR,
            blk_type::OUT => {
                let carried = rec.len - BLK_REQUEST_LEN;
                match self.range(&req) {
                    _ if self.read_only => blk_status::IOERR,
                    Some(at) if carried == req.len => {
                        self.buf.clear();
                        self.buf.resize(req.len as usize, 0);
                        r.rx.read(r.w, rec, BLK_REQUEST_LEN, &mut self.buf);
                        match self.file.write_all_at(&self.buf, at) {
                            Ok(()) => blk_status::OK,
                            Err(_) => blk_status::IOERR,
                        }
                    }
                    _ => blk_status::IOERR,
                }
            }
            blk_type::FLUSH => {
                if self.read_only {
                    blk_status::OK
                } else {
                    match self.file.sync_data() {
                        Ok(()) => blk_status::OK,
                        Err(_) => blk_status::IOERR,
                    }
                }
            }
            _ => blk_status::UNSUPP,
        };
        if status != blk_status::OK {
            self.failed_requests += 1;
        }
        let mut head = [0u8; BLK_RESPONSE_LEN as usize];
        head[0] = status;
        r.tx.fill(r.w, &res, 0, &head);
        *r.signal |= r.tx.commit(r.w, res);
        Ok(Took::Done)
    }
}
