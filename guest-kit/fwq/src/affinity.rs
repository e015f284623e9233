//! CPU affinity through libc: which CPUs the process may use, and pinning a thread to one.

use crate::args::{CpuList, MAX_CPU};
use std::io;

/// The CPUs in the calling thread's affinity mask (`sched_getaffinity`). Read before any
/// thread is pinned, this is the process's mask. Only CPUs below 1024 (glibc's
/// `CPU_SETSIZE`) are seen; on larger machines the call fails with EINVAL and so does this.
pub fn current() -> io::Result<CpuList> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(CpuList::from_cpus((0..=MAX_CPU).filter(|&cpu| {
        // SAFETY: cpu ≤ MAX_CPU < CPU_SETSIZE, inside the set's bit array.
        unsafe { libc::CPU_ISSET(cpu, &set) }
    })))
}

/// Pins the calling thread to `cpu` (≤ [`MAX_CPU`]) and checks that it now runs there.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu > MAX_CPU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} > {MAX_CPU}"),
        ));
    }
    // SAFETY: as in `current`, all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu ≤ MAX_CPU < CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread, not
    // the whole process (Linux affinity is per thread).
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel migrates the thread before sched_setaffinity returns; anything else means
    // the pin did not take and every sample would be from the wrong CPU.
    // SAFETY: sched_getcpu has no arguments and no preconditions.
    let now = unsafe { libc::sched_getcpu() };
    if usize::try_from(now).ok() != Some(cpu) {
        return Err(io::Error::other(format!(
            "pinned to CPU {cpu} but running on {now}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_to_each_allowed_cpu_and_back() {
        let mask = current().unwrap();
        assert!(!mask.cpus().is_empty());
        // In a thread of its own, so the test harness's thread keeps its mask.
        std::thread::spawn(move || {
            for &cpu in mask.cpus() {
                pin_current_thread(cpu).unwrap();
                assert_eq!(current().unwrap().cpus(), &[cpu]);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pin_errors() {
        std::thread::spawn(|| {
            let e = pin_current_thread(MAX_CPU + 1).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            // A CPU outside the mask (there is always one below 1024 on this host and CI)
            // is refused by the kernel with EINVAL.
            let mask = current().unwrap();
            let outside = (0..=MAX_CPU).find(|&c| !mask.contains(c)).unwrap();
            let e = pin_current_thread(outside).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        })
        .join()
        .unwrap();
    }
}
