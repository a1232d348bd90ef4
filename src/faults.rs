//! Fault injection for the reliability tests: with `FIRECLAW_TEST_CRASH_AT=<step>` in its
//! environment, fireclaw kills itself with SIGKILL when it reaches that named step, exactly as
//! a `kill -9` or a power cut at that moment would (no destructor, no rollback runs). Unset, a
//! step costs one environment lookup. Units never carry the variable, so a VM's helpers never
//! crash. The steps are listed in docs/RELIABILITY.md.

/// Kills this process with SIGKILL if `step` is the one named in `FIRECLAW_TEST_CRASH_AT`.
pub fn crash_point(step: &str) {
    if std::env::var_os(crate::env_vars::FIRECLAW_TEST_CRASH_AT)
        .is_some_and(|wanted| wanted == step)
    {
        // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
