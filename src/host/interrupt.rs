//! Ctrl-C, SIGTERM and SIGHUP during a long command that cleans up after itself (`image
//! fetch`): instead of dying where it stands and leaving gigabytes of half-written files, the
//! process notes the signal, and the loops that copy, download and unpack stop at their next
//! step with `Interrupted`, so the usual error path removes what was made. Read calls are not
//! restarted after the signal, so a transfer waiting for data stops too.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The command was asked to stop by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted (Ctrl-C or SIGTERM)")]
pub struct Interrupted;

extern "C" fn note(_signal: libc::c_int) {
    // Only an atomic store: the one thing a signal handler may safely do here.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP set the flag `check` reads instead of ending the
/// process. Children started afterwards get the default actions back at exec.
pub fn catch() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid value to fill in; the handler only stores to
        // an atomic, and no SA_RESTART makes blocked reads return EINTR.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `Err(Interrupted)` once a caught signal has arrived.
pub fn check() -> Result<(), Interrupted> {
    if REQUESTED.load(Ordering::SeqCst) {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_signal_is_noted_and_does_not_end_the_process() {
        catch().unwrap();
        assert_eq!(check(), Ok(()));
        // SAFETY: raise sends a signal to this thread; the handler above only sets a flag.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(check(), Err(Interrupted));
        REQUESTED.store(false, Ordering::SeqCst);
    }
}
