//! The `fireclaw.fleet` Ansible collection (`ansible/`): it versions with the crate, passes
//! `ansible-lint --offline` and `ansible-test sanity`, and its placement filter and apply-file
//! rendering pass their unit tests. ansible-core and ansible-lint are pinned
//! (`ansible/test-requirements.txt`) in venvs `scripts/test-deps` makes in the test cache; the
//! collection is laid out as `ansible_collections/fireclaw/fleet/` in a temporary dir, as
//! ansible-test requires. The playbooks against real hosts: `tests/sandbox_ansible.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn cache() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("FIRECLAW_TEST_CACHE").unwrap_or_else(|_| "/var/cache/fireclaw-test".into()),
    )
    .join("ansible");
    assert!(
        dir.join("lint/bin/ansible-lint").exists(),
        "{} is missing: run scripts/test-deps as root (the README's test command does)",
        dir.display()
    );
    dir
}

/// The collection copied to `<tmp>/ansible_collections/fireclaw/fleet`; returns (tmp, path).
fn laid_out() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let collection = tmp.path().join("ansible_collections/fireclaw/fleet");
    std::fs::create_dir_all(collection.parent().unwrap()).unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible"))
        .arg(&collection)
        .status()
        .unwrap();
    assert!(status.success());
    // The test's own pins are no part of the collection.
    std::fs::remove_file(collection.join("test-requirements.txt")).unwrap();
    (tmp, collection)
}

fn run(mut command: Command) -> String {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn the_collection_versions_with_the_crate() {
    let galaxy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/galaxy.yml"))
            .unwrap();
    let version = galaxy
        .lines()
        .find_map(|l| l.strip_prefix("version: "))
        .unwrap()
        .trim();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    let changelog = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/changelogs/changelog.yaml"),
    )
    .unwrap();
    assert!(changelog.contains(&format!("  {version}:")), "{changelog}");
    // The pins the README states.
    let pins = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/test-requirements.txt"),
    )
    .unwrap();
    assert!(
        pins.lines().any(|l| l.starts_with("ansible-core==2.19.")),
        "{pins}"
    );
    assert!(
        pins.lines().any(|l| l.starts_with("ansible-lint==")),
        "{pins}"
    );
}

#[test]
fn ansible_lint_passes_offline_at_the_production_profile() {
    let cache = cache();
    let (tmp, collection) = laid_out();
    let mut lint = Command::new(cache.join("lint/bin/ansible-lint"));
    lint.args(["--offline", "--nocolor", "--profile", "production"])
        .current_dir(&collection)
        .env("ANSIBLE_COLLECTIONS_PATH", tmp.path())
        .env("HOME", tmp.path())
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", cache.join("lint/bin").display()),
        );
    let said = run(lint);
    assert!(
        said.contains("Passed: 0 failure(s), 0 warning(s)"),
        "{said}"
    );
}

#[test]
fn ansible_test_sanity_passes() {
    let cache = cache();
    let (_tmp, collection) = laid_out();
    let mut sanity = Command::new(cache.join("sanity/bin/ansible-test"));
    sanity
        .args(["sanity", "--python", "3.11", "--color", "no"])
        .current_dir(&collection)
        // Where its per-test venvs and the pip bootstrap stand-in are kept.
        .env("HOME", cache.join("home"))
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", cache.join("sanity/bin").display()),
        );
    let said = run(sanity);
    assert!(
        said.contains("Running sanity test \"validate-modules\""),
        "{said}"
    );
    assert!(!said.contains("FATAL"), "{said}");
}

#[test]
fn the_placement_filter_and_the_apply_file_pass_their_unit_tests() {
    let cache = cache();
    let mut python = Command::new(cache.join("lint/bin/python"));
    python
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ansible/test_collection.py"))
        .env(
            "FIRECLAW_COLLECTION",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible"),
        );
    let said = run(python);
    assert!(said.contains("OK"), "{said}");
}
