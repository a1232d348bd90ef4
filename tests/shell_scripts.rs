//! Every shell script of the repository outside the embedded provisioning script (which has
//! its own test in `src/guest/provision.rs`) is shellcheck-clean: the test command and its
//! dependencies, CI's entry point, and what runs inside the test guests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const SCRIPTS: [&str; 9] = [
    ".ci/run",
    "scripts/test",
    "scripts/openclaw-goldens",
    "scripts/test-deps",
    "tests/support/guest/docker-stub.sh",
    "tests/support/guest/fake-node.sh",
    "tests/support/guest/real-node.sh",
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

/// `scripts/test-deps --resolve-pin NAME PIN`, the archive's versions on stdin: (stdout,
/// stderr, success).
fn resolve_pin(name: &str, pin: &str, listing: &str) -> (String, String, bool) {
    use std::io::Write;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("bash")
        .current_dir(root)
        .args(["scripts/test-deps", "--resolve-pin", name, pin])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(listing.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.success(),
    )
}

#[test]
fn a_pin_the_archive_still_has_is_used_and_a_gone_one_falls_back_to_the_newest_saying_so() {
    // bookworm-backports after a new upload: the pinned QEMU is gone, two others are there
    // (in the archive's order, not sorted; Debian's version order, with its epoch and ~).
    let listing = "1:10.0.3+ds-1~bpo12+1\n1:10.0.2+ds-2+deb13u2~bpo12+1\n";
    let (used, said, ok) = resolve_pin("qemu-system-x86", "1:10.0.2+ds-2+deb13u1~bpo12+1", listing);
    assert!(ok, "{said}");
    assert_eq!(used, "1:10.0.3+ds-1~bpo12+1\n");
    assert_eq!(
        said,
        "scripts/test-deps: qemu-system-x86: pinned 1:10.0.2+ds-2+deb13u1~bpo12+1 is gone from the archive; using 1:10.0.3+ds-1~bpo12+1\n"
    );

    // The pin is there: it is used, silently.
    let listing = "25.1.4-1+deb13u2\n25.1.4-1+deb13u1\n";
    let (used, said, ok) = resolve_pin("cloud-init", "25.1.4-1+deb13u1", listing);
    assert!(ok);
    assert_eq!((used.as_str(), said.as_str()), ("25.1.4-1+deb13u1\n", ""));

    // ~ sorts before anything: 26.1.5 is newer than 26.1.5~rc1.
    let (used, _, _) = resolve_pin("docker.io", "26.1.4", "26.1.5~rc1\n26.1.5\n");
    assert_eq!(used, "26.1.5\n");

    // Nothing at all is an error, not an empty version.
    let (used, said, ok) = resolve_pin("seabios", "1.16.3-2~bpo12+1", "");
    assert!(!ok);
    assert!(used.is_empty());
    assert!(said.contains("no version of it at all"), "{said}");
}
