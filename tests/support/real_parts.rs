//! The real guest-side parts the tests run against, from the cache `scripts/test-deps` fills
//! (`FIRECLAW_TEST_CACHE`, default `/var/cache/fireclaw-test`): the pinned cloud-init, run from
//! its extracted package with Debian 12's Python and never installed on the machine, and the
//! pinned Node and OpenClaw that guest stand-ins bind (see `guest.rs`).

use std::path::PathBuf;
use std::process::Command;

use fireclaw::env_vars::FIRECLAW_TEST_CACHE;

pub const DEFAULT_CACHE: &str = "/var/cache/fireclaw-test";

pub fn cache_dir() -> PathBuf {
    std::env::var_os(FIRECLAW_TEST_CACHE)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// The pinned cloud-init's command line (`cloud-init <args>`).
pub fn cloud_init() -> Command {
    let root = cache_dir().join("cloud-init");
    let program = root.join("usr/bin/cloud-init");
    assert!(
        program.exists(),
        "{} is missing: run scripts/test-deps as root (the README's test command does)",
        program.display()
    );
    let mut command = Command::new("/usr/bin/python3");
    command
        .arg(program)
        .env("PYTHONPATH", root.join("usr/lib/python3/dist-packages"));
    command
}
