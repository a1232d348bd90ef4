//! Ctrl-C, SIGTERM and SIGHUP during a long command that cleans up after itself (`image
//! fetch`): instead of dying where it stands and leaving gigabytes of half-written files, the
//! process notes the signal, and the loops that copy, download and unpack stop at their next
//! step with `Interrupted`, so the usual error path removes what was made (or, for a lifecycle
//! command, says how to finish). A second signal ends the process at once. Read calls are not
//! restarted after the signal, so a transfer waiting for data stops too.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The command was asked to stop by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted (Ctrl-C or SIGTERM)")]
pub struct Interrupted;

/// Exit status of a command stopped by a signal, as shells report Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

extern "C" fn note(_signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap, and for a second signal `_exit`, which
    // leaves what a crash at this point would (every step is safe to crash in).
    if REQUESTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(i32::from(EXIT_INTERRUPTED)) };
    }
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

/// Whether `error`'s chain holds an `Interrupted`.
pub fn caused(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<Interrupted>().is_some())
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
        // SAFETY: raise sends a signal to this thread; the handler above only sets a flag
        // (the first time, which this is).
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(check(), Err(Interrupted));
        assert!(caused(&anyhow::Error::from(Interrupted).context("start a")));
        REQUESTED.store(false, Ordering::SeqCst);
    }
}
