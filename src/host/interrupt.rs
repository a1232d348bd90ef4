//! Ctrl-C, SIGTERM and SIGHUP during a long command that cleans up after itself (`image
//! fetch`): instead of dying where it stands and leaving gigabytes of half-written files, the
//! process notes the signal, and the loops that copy, download and unpack stop at their next
//! step with `Interrupted`, so the usual error path removes what was made (or, for a lifecycle
//! command, says how to finish). A second signal ends the process at once. Read calls are not
//! restarted after the signal, so a transfer waiting for data stops too.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The first signal that arrived, for the message.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// stderr is a terminal: the notes may clear the live progress line first.
static TERMINAL: AtomicBool = AtomicBool::new(false);

/// The command was asked to stop by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted ({})", signal_name(SIGNAL.load(Ordering::SeqCst)))]
pub struct Interrupted;

/// How a person knows the signal: Ctrl-C is SIGINT.
fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "Ctrl-C",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP: the terminal or session went away",
        _ => "a signal",
    }
}

/// Exit status of a command stopped by a signal, as shells report Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Clears the live progress line, on a terminal only (off one, no control codes are written).
const CLEAR_LINE: &[u8] = b"\r\x1b[2K";
/// Said on stderr at the first signal, so nobody presses Ctrl-C again out of doubt.
const FIRST: &[u8] =
    b"fireclaw: stopping after the current step (a second Ctrl-C or signal stops at once)\n";
/// Said at the second: the process ends where it stands, as a crash would.
const SECOND: &[u8] = b"fireclaw: stopped at once; see what is left with: fireclaw list, and finish with the same command again (or fireclaw destroy <id> --force)\n";

extern "C" fn note(signal: libc::c_int) {
    // Only async-signal-safe work here: atomic loads and swaps, write(2) of constants, and for
    // a second signal `_exit`, which leaves what a crash at this point would (every step is
    // safe to crash in; docs/RELIABILITY.md).
    let again = REQUESTED.swap(true, Ordering::SeqCst);
    if !again {
        SIGNAL.store(signal, Ordering::SeqCst);
    }
    let text = if again { SECOND } else { FIRST };
    if TERMINAL.load(Ordering::SeqCst) {
        // SAFETY: write(2) on fd 2 with a pointer and length of a static byte string.
        let _ = unsafe { libc::write(2, CLEAR_LINE.as_ptr().cast(), CLEAR_LINE.len()) };
    }
    // SAFETY: write(2) on fd 2 with a pointer and length of a static byte string.
    let _ = unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
    if again {
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(i32::from(EXIT_INTERRUPTED)) };
    }
}

/// From now on SIGINT, SIGTERM and SIGHUP set the flag `check` reads instead of ending the
/// process. A signal the process was started with ignored (`nohup`, a background job of a
/// script) stays ignored. Children started afterwards get the default actions back at exec.
pub fn catch() -> std::io::Result<()> {
    use std::io::IsTerminal;
    TERMINAL.store(std::io::stderr().is_terminal(), Ordering::SeqCst);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: sigaction with a null new action only reads the current one into `old`, a
        // zeroed sigaction being a valid value to fill.
        let old = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            old
        };
        if old.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: a zeroed sigaction is a valid value to fill in; the handler does only
        // async-signal-safe work, and no SA_RESTART makes blocked reads return EINTR.
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
        unsafe { libc::raise(libc::SIGHUP) };
        assert_eq!(check(), Err(Interrupted));
        assert!(caused(&anyhow::Error::from(Interrupted).context("start a")));
        // The signal is named as it was: a hangup is no Ctrl-C.
        assert_eq!(
            Interrupted.to_string(),
            "interrupted (SIGHUP: the terminal or session went away)"
        );
        REQUESTED.store(false, Ordering::SeqCst);
        SIGNAL.store(0, Ordering::SeqCst);
    }
}
