//! Keeping Ctrl-C and `kill` from leaving a mailbox slot claimed: atoll frees no slot by
//! itself, so a client ended between claiming a slot and freeing it would lose that slot
//! until atoll restarts (four such and no request goes through).

/// The signals whose default action ends the process and that people send.
const ENDING: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn ending_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned here.
    unsafe { libc::sigemptyset(&mut set) };
    for s in ENDING {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Holds the ending signals back (this thread) while alive; they arrive when it is dropped.
pub struct Hold {
    old: libc::sigset_t,
}

impl Hold {
    /// Starts holding.
    pub fn new() -> Hold {
        let set = ending_set();
        // SAFETY: sigset_t is plain data; pthread_sigmask fills it.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid sets; changes only this thread's mask.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
        Hold { old }
    }
}

impl Default for Hold {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // SAFETY: restores the mask `new` saved, for this thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// Blocks the ending signals for good in the calling (helper) thread, so the kernel hands
/// them to the main thread, which holds them only while it owns a slot.
pub fn block_in_this_thread() {
    std::mem::forget(Hold::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_signal_waits_instead_of_ending_the_process() {
        let hold = Hold::new();
        // SAFETY: pthread_self has no precondition.
        let me = unsafe { libc::pthread_self() };
        // SAFETY: sends SIGINT to this thread only; it is blocked here, so it stays pending.
        let rc = unsafe { libc::pthread_kill(me, libc::SIGINT) };
        assert_eq!(rc, 0);
        // SAFETY: plain data, filled by sigpending.
        let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid sigset_t.
        unsafe { libc::sigpending(&mut pending) };
        // SAFETY: a valid, initialised set.
        assert_eq!(unsafe { libc::sigismember(&pending, libc::SIGINT) }, 1);
        // Take it, so dropping the hold does not deliver it to the test process.
        let set = ending_set();
        let mut sig = 0;
        // SAFETY: valid set and out pointer; SIGINT is pending, so this returns at once.
        unsafe { libc::sigwait(&set, &mut sig) };
        assert_eq!(sig, libc::SIGINT);
        drop(hold);
    }
}
