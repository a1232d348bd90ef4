//! The README's quick start, followed in a host sandbox that starts bare (no base images, no
//! firecracker on PATH), as a new user would, up to the point where a real guest would boot.
//! What cannot be reached from here is replaced by its local equivalent, as the README's
//! troubleshooting says for an offline host: the Ubuntu directory (root tarball, `SHA256SUMS`
//! signed by a key the test makes) and a Firecracker CI-like kernel (every driver, no iso9660)
//! are files on the host; the Firecracker and guest stand-ins play the VM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::fleet::Fleet;
use support::kernel_fixture;
use support::sandbox::BIN_IN_SANDBOX;

const TARBALL: &str = "ubuntu-24.04-server-cloudimg-amd64-root.tar.xz";

/// A miniature Ubuntu root tarball with an fstab like Ubuntu's, its `SHA256SUMS` and a
/// detached signature by a fresh key, in `/srv/mirror/` of the host sandbox.
fn make_mirror(fleet: &Fleet) {
    fleet.host.write(
        "/srv/mirror/vmlinux-6.1.141",
        &kernel_fixture::vmlinux_without_iso9660(),
    );
    fleet.host.sh(&format!(
        "set -e; mkdir -p /tmp/tree/etc /tmp/tree/boot/efi /tmp/tree/home /tmp/tree/usr/sbin /tmp/tree/usr/bin; \
         touch /tmp/tree/usr/sbin/init /tmp/tree/usr/bin/cloud-init /tmp/tree/usr/sbin/sshd; \
         printf 'LABEL=cloudimg-rootfs\\t/\\text4\\tdiscard,errors=remount-ro\\t0 1\\nLABEL=BOOT\\t/boot\\text4\\tdefaults\\t0 2\\nLABEL=UEFI\\t/boot/efi\\tvfat\\tumask=0077\\t0 1\\n' > /tmp/tree/etc/fstab; \
         cd /srv/mirror; tar --xattrs --numeric-owner -C /tmp/tree -cJf {TARBALL} .; \
         sha256sum -b {TARBALL} > SHA256SUMS; \
         export GNUPGHOME=$(mktemp -d); \
         gpg --batch --passphrase '' --quick-gen-key 'mirror <mirror@example.invalid>' ed25519 sign never 2>/dev/null; \
         gpg --batch --export > key.gpg; \
         gpg --batch --pinentry-mode loopback --passphrase '' --detach-sign -o SHA256SUMS.gpg SHA256SUMS; \
         gpgconf --kill gpg-agent; rm -rf \"$GNUPGHOME\""
    ));
}

fn doctor_check(fleet: &Fleet, name: &str) -> serde_json::Value {
    let doctor = fleet.fireclaw("doctor --json");
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    support::doctor_report::check_named(&report, name)
}

#[test]
#[ignore = "needs root: sandbox"]
fn the_readme_quick_start_brings_up_a_first_instance_from_a_bare_host() {
    let fleet = Fleet::bare("quickstart");
    make_mirror(&fleet);

    // Step 2: without firecracker on PATH, doctor prints how to install it.
    let doctor = fleet
        .host
        .exec(&format!("{BIN_IN_SANDBOX}/fireclaw doctor"));
    let text = String::from_utf8_lossy(&doctor.stdout).into_owned();
    assert!(!doctor.status.success(), "{text}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let install = "curl -fsSL https://github.com/firecracker-microvm/firecracker/releases/download/v1.16.1/firecracker-v1.16.1-x86_64.tgz | tar -xz";
    assert!(text.contains(install), "{text}");
    assert!(readme.contains(install), "the README's step 2 differs");
    // Nothing is there yet, and doctor says how to get it.
    assert!(
        doctor_check(&fleet, "base kernel")["detail"]
            .as_str()
            .unwrap()
            .ends_with("is missing (download one with: fireclaw image fetch)")
    );

    // Step 3, fed from files as on an offline host.
    let fetched = fleet.fireclaw_ok(&format!(
        "image fetch --kernel /srv/mirror/vmlinux-6.1.141 \
         --rootfs file:///srv/mirror/{TARBALL} --keyring /srv/mirror/key.gpg"
    ));
    eprintln!("{fetched}");
    let fstab = fleet
        .host
        .sh("debugfs -R 'cat /etc/fstab' /srv/firecracker/base/images/rootfs.ext4 2>/dev/null");
    assert!(fstab.contains("LABEL=cloudimg-rootfs\t/\text4"), "{fstab}");
    assert!(
        fstab
            .lines()
            .any(|l| l.starts_with('#') && l.contains("/boot/efi")),
        "{fstab}"
    );
    assert!(
        !fstab
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("/boot/efi")),
        "{fstab}"
    );

    // Step 4: doctor passes on everything the images decide.
    for name in [
        "base kernel",
        "base rootfs",
        "guest kernel",
        "guest kernel drivers",
        "base rootfs format",
        "base images source",
    ] {
        let check = doctor_check(&fleet, name);
        assert_eq!(check["status"], "pass", "{check}");
    }
    let source = doctor_check(&fleet, "base images source");
    assert!(
        source["detail"]
            .as_str()
            .unwrap()
            .contains("rootfs.ext4 (gpg+sha256, "),
        "{source}"
    );

    // Step 5 (the disk must hold the fetched image; the README's default is 40G). The kernel
    // has no iso9660, like Firecracker's CI kernels: the guest finds its seed in the rootfs.
    let out = fleet.fireclaw_ok(
        "setup --instance my-bot --openai-api-key sk-quickstart --skip-browser-install \
         --disk-size 2G --ssh-timeout 60 --health-timeout 30",
    );
    assert!(out.contains("Instance my-bot is healthy."), "{out}");
    assert!(
        out.contains("token       sudo fireclaw token my-bot"),
        "{out}"
    );
    assert_eq!(fleet.guests.seed_source(&fleet.tap("my-bot")), "rootfs");
    let token = fleet.fireclaw_ok("token my-bot");
    assert_eq!(token.trim().len(), 64, "{token}");
}
