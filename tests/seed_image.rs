//! The seed image checked in user space, as cloud-init's NoCloud source will find it: `blkid -p`
//! must see an iso9660 volume labelled `cidata`, and `isoinfo` must return each file's exact bytes
//! through its Rock Ridge name and its Joliet name. The same checks run on `cloud-localds` output
//! as a reference, which shows the checks themselves are sound. Needs `blkid` (util-linux),
//! `isoinfo` (genisoimage) and `cloud-localds` (cloud-image-utils); the README's test command
//! installs them.

// Tests may panic on a broken fixture; that is their way of failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use fireclaw::instance::secrets::HostKeyPair;
use fireclaw::render::cloud_init::{
    NetworkConfig, UserDataConfig, meta_data, network_config, user_data,
};
use fireclaw::render::seed_image::{SeedFile, Timestamp, seed_image};

/// A fresh temporary directory, removed when dropped (also when the test panics).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fireclaw-seed-")
        .tempdir()
        .unwrap()
}

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} could not run ({e}); the README's test command installs it")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn files() -> Vec<(String, String)> {
    let host_key = HostKeyPair {
        private_openssh:
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAfake\n-----END OPENSSH PRIVATE KEY-----\n"
                .into(),
        public_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE host".into(),
    };
    vec![
        (
            "user-data".into(),
            user_data(&UserDataConfig {
                authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE client".into(),
                host_key,
                install_packages: true,
            }),
        ),
        ("meta-data".into(), meta_data("my-bot")),
        (
            "network-config".into(),
            network_config(&NetworkConfig {
                mac: "06:fc:00:10:00:02".into(),
                ip: "172.16.0.2".parse().unwrap(),
                gateway: "172.16.0.1".parse().unwrap(),
            }),
        ),
    ]
}

fn assert_readable_seed(image: &Path, files: &[(String, String)]) {
    let image = image.to_str().unwrap();
    let probe = String::from_utf8(run("blkid", &["-p", "-o", "export", image])).unwrap();
    assert!(probe.lines().any(|l| l == "TYPE=iso9660"), "{probe}");
    assert!(probe.lines().any(|l| l == "LABEL=cidata"), "{probe}");
    for (name, contents) in files {
        let path = format!("/{name}");
        let rock = run("isoinfo", &["-R", "-i", image, "-x", &path]);
        assert_eq!(
            String::from_utf8(rock).unwrap(),
            *contents,
            "Rock Ridge {name}"
        );
        let joliet = run("isoinfo", &["-J", "-i", image, "-x", &path]);
        assert_eq!(
            String::from_utf8(joliet).unwrap(),
            *contents,
            "Joliet {name}"
        );
    }
    let listing = String::from_utf8(run("isoinfo", &["-R", "-l", "-i", image])).unwrap();
    for (name, _) in files {
        assert!(
            listing.contains(name.as_str()),
            "{name} missing from {listing}"
        );
    }
}

#[test]
fn fireclaw_seed_image_is_found_and_read_in_user_space() {
    let scratch = scratch();
    let dir = scratch.path();
    let files = files();
    let seed: Vec<SeedFile> = files
        .iter()
        .map(|(name, contents)| SeedFile {
            name: name.clone(),
            contents: contents.clone().into_bytes(),
        })
        .collect();
    let image = dir.join("seed.img");
    std::fs::write(
        &image,
        seed_image("cidata", &seed, Timestamp(1_700_000_000)).unwrap(),
    )
    .unwrap();
    assert_readable_seed(&image, &files);
}

#[test]
fn cloud_localds_output_passes_the_same_checks() {
    let scratch = scratch();
    let dir = scratch.path();
    let files = files();
    for (name, contents) in &files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    let image = dir.join("seed.img");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    run(
        "cloud-localds",
        &[
            &format!("--network-config={}", path("network-config")),
            image.to_str().unwrap(),
            &path("user-data"),
            &path("meta-data"),
        ],
    );
    assert_readable_seed(&image, &files);
}
