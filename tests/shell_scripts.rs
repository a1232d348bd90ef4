//! Every shell script of the repository outside the embedded provisioning script (which has
//! its own test in `src/guest/provision.rs`) is shellcheck-clean: the test command and its
//! dependencies, CI's entry point, and what runs inside the test guests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const SCRIPTS: [&str; 7] = [
    ".ci/run",
    "scripts/test",
    "scripts/test-deps",
    "tests/support/guest/docker-stub.sh",
    "tests/support/guest/fake-node.sh",
    "tests/support/guest/image/node",
    "tests/support/guest/image/gateway-http",
];

#[test]
fn the_repository_shell_scripts_are_shellcheck_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for script in SCRIPTS {
        assert!(root.join(script).is_file(), "{script} is missing");
    }
    let output = Command::new("shellcheck")
        .current_dir(root)
        .args(SCRIPTS)
        .output()
        .expect("shellcheck is installed by the README's test command");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
