//! The three NoCloud files of the seed: `user-data` (the `ubuntu` user, the client key, and the
//! guest SSH host key fireclaw generated so it is pinned before first boot), `meta-data` and
//! `network-config` (v2, static IP matched by MAC). Every string scalar is written as a JSON
//! string, which YAML reads as a double-quoted scalar, so no value can break the document.

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::instance::layout::{GUEST_NAMESERVERS, GUEST_PACKAGES, GUEST_USER};
use crate::instance::secrets::HostKeyPair;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDataConfig {
    /// The client public key (`SSH_KEY_PATH.pub`), one line.
    pub authorized_key: String,
    pub host_key: HostKeyPair,
    /// List [`GUEST_PACKAGES`] under `packages:` (cloud-init then runs `apt-get update` at
    /// first boot): only for a base that lacks them.
    pub install_packages: bool,
}

fn quoted(value: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar; serialising a str cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// The host key pair in user-data as `user_data` writes it (the private key's block under
/// `ed25519_private: |`, the public key's JSON-quoted line), or `None` when it holds none.
pub fn host_key_of(user_data: &str) -> Option<(String, String)> {
    let mut lines = user_data.lines();
    lines.find(|l| *l == "  ed25519_private: |")?;
    let mut private = String::new();
    let mut public = None;
    for line in lines {
        if let Some(key) = line.strip_prefix("    ") {
            private.push_str(key);
            private.push('\n');
        } else {
            public = line
                .strip_prefix("  ed25519_public: ")
                .and_then(|quoted| serde_json::from_str::<String>(quoted).ok());
            break;
        }
    }
    Some((private, public?))
}

pub fn user_data(config: &UserDataConfig) -> String {
    let mut out = String::from("#cloud-config\n");
    // No top-level `groups:` for `docker`: cloud-init creates a missing group of the user's
    // list itself, while a `groups:` entry that exists already (any base with Docker in it)
    // is a warning that marks the whole boot degraded.
    let _ = writeln!(out, "users:\n  - name: {GUEST_USER}");
    out.push_str("    groups: [sudo, docker]\n");
    out.push_str("    shell: /bin/bash\n");
    out.push_str("    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n");
    out.push_str("    lock_passwd: true\n");
    out.push_str("    ssh_authorized_keys:\n");
    let _ = writeln!(out, "      - {}", quoted(config.authorized_key.trim()));
    // Replace whatever host keys the base image carries with the one fireclaw pinned. With
    // `ssh_keys` given, cloud-init writes those and generates none, so no `ssh_genkeytypes`
    // (an empty list there fails cloud-init's schema and marks the boot degraded).
    out.push_str("ssh_deletekeys: true\n");
    out.push_str("ssh_keys:\n");
    out.push_str("  ed25519_private: |\n");
    for line in config.host_key.private_openssh.trim_end().lines() {
        let _ = writeln!(out, "    {line}");
    }
    let _ = writeln!(
        out,
        "  ed25519_public: {}",
        quoted(config.host_key.public_openssh.trim())
    );
    // `sudo` resolves the hostname on every call; without an /etc/hosts entry it waits for DNS.
    out.push_str("manage_etc_hosts: localhost\n");
    if config.install_packages {
        out.push_str("packages:\n");
        for package in GUEST_PACKAGES {
            let _ = writeln!(out, "  - {package}");
        }
    }
    out
}

pub fn meta_data(instance_id: &str) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quoted(instance_id),
        quoted(instance_id)
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

pub fn network_config(config: &NetworkConfig) -> String {
    let mut out = String::from("version: 2\nethernets:\n  eth0:\n");
    let _ = writeln!(out, "    match:\n      macaddress: {}", quoted(&config.mac));
    out.push_str("    set-name: eth0\n");
    let _ = writeln!(
        out,
        "    addresses:\n      - {}",
        quoted(&format!("{}/24", config.ip))
    );
    // `0.0.0.0/0`, not netplan's `default`: cloud-init's own network-state parser, which every
    // renderer but netplan goes through (systemd-networkd, ifupdown, sysconfig), refuses
    // `default` ("Address default is not a valid ip network") and leaves the guest offline.
    let _ = writeln!(
        out,
        "    routes:\n      - to: \"0.0.0.0/0\"\n        via: {}",
        quoted(&config.gateway.to_string())
    );
    out.push_str("    nameservers:\n      addresses:\n");
    for server in GUEST_NAMESERVERS {
        let _ = writeln!(out, "        - {}", quoted(server));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_key_reads_back_out_of_user_data() {
        let host_key = crate::instance::secrets::generate_host_key("a").unwrap();
        let text = user_data(&UserDataConfig {
            authorized_key: "ssh-ed25519 AAAA client".into(),
            host_key: host_key.clone(),
            install_packages: true,
        });
        let (private, public) = host_key_of(&text).unwrap();
        assert_eq!(private.trim_end(), host_key.private_openssh.trim_end());
        assert_eq!(public, host_key.public_openssh.trim());
        assert_eq!(host_key_of("#cloud-config\nusers: []\n"), None);
    }

    pub fn sample_host_key() -> HostKeyPair {
        HostKeyPair {
            private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nFAKEFAKEFAKE\n-----END OPENSSH PRIVATE KEY-----\n".into(),
            public_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEHOSTKEY fireclaw-host-my-bot".into(),
        }
    }

    #[test]
    fn user_data_snapshot() {
        insta::assert_snapshot!(user_data(&UserDataConfig {
            authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKECLIENT root@host\n".into(),
            host_key: sample_host_key(),
            install_packages: true,
        }));
    }

    #[test]
    fn a_base_with_the_packages_gets_no_packages_list() {
        let text = user_data(&UserDataConfig {
            authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKECLIENT root@host\n".into(),
            host_key: sample_host_key(),
            install_packages: false,
        });
        assert!(!text.contains("packages:"), "{text}");
        let listed = user_data(&UserDataConfig {
            authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKECLIENT root@host\n".into(),
            host_key: sample_host_key(),
            install_packages: true,
        });
        assert!(
            listed.ends_with("packages:\n  - jq\n  - curl\n"),
            "{listed}"
        );
    }

    #[test]
    fn meta_data_snapshot() {
        insta::assert_snapshot!(meta_data("my-bot"));
    }

    #[test]
    fn network_config_snapshot() {
        insta::assert_snapshot!(network_config(&NetworkConfig {
            mac: "06:fc:00:10:00:02".into(),
            ip: Ipv4Addr::new(172, 16, 0, 2),
            gateway: Ipv4Addr::new(172, 16, 0, 1),
        }));
    }

    #[test]
    fn debug_of_a_host_key_hides_the_private_half() {
        assert!(!format!("{:?}", sample_host_key()).contains("PRIVATE"));
    }
}
