//! `doctor` against a host where each problem it knows has been provoked, in a sandbox:
//! untrusted program paths in units, orphan units and taps, state without units, a half-made
//! instance, a root-only state dir made readable, a bridge name taken by another kind of link,
//! a FORWARD policy of DROP, a missing guest network policy, an active firewalld, rules in both
//! iptables backends, an old Firecracker and a guest kernel whose virtio drivers are modules
//! with no initrd to load them (and no iso9660). Root only: run through `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::kernel_fixture;
use support::sandbox::{BIN_IN_SANDBOX, Sandbox};

fn status_of(checks: &[serde_json::Value], name: &str) -> String {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| {
            format!(
                "{} {}",
                c["status"].as_str().unwrap(),
                c["detail"].as_str().unwrap()
            )
        })
        .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
}

#[test]
#[ignore = "needs root: sandbox"]
fn doctor_names_every_provoked_problem() {
    let sandbox = Sandbox::boot("doctor");
    // Like the vmlinux extracted from Debian's cloud kernel: no symbol table, virtio drivers
    // and iso9660 built as modules, and no initrd to load them.
    sandbox.write(
        "/srv/firecracker/base/images/vmlinux",
        &kernel_fixture::stripped_vmlinux_with_modules(),
    );
    sandbox.sh(&format!(
        r#"set -e
        mkdir -p /srv/firecracker/base/images /usr/local/lib/oldfc
        truncate -s 1M /srv/firecracker/base/images/rootfs.ext4
        printf '#!/bin/sh\necho "Firecracker v1.4.0"\n' > /usr/local/lib/oldfc/firecracker
        chmod 755 /usr/local/lib/oldfc/firecracker
        mkdir -p /tmp/evil && chmod 1777 /tmp/evil && cp {BIN_IN_SANDBOX}/firecracker /tmp/evil/
        printf '[Service]\nExecStart=/tmp/evil/firecracker --api-sock x\n' > /etc/systemd/system/firecracker-vmdemo-ghost.service
        install -d -m 0755 /var/lib/fireclaw/.vm-lonely /var/lib/fireclaw/.vm-half
        printf 'INSTANCE_ID=lonely\nHOST_PORT=18891\nVM_IP=172.16.0.2\nVM_TAP=tlonely2\n' > /var/lib/fireclaw/.vm-lonely/.env
        printf 'INSTANCE_ID=half\nHOST_PORT=18892\nVM_IP=172.16.0.3\nVM_TAP=thalf3\n' > /var/lib/fireclaw/.vm-half/.env
        printf '{{"format":1,"phase":"assets","created_by":"test"}}' > /var/lib/fireclaw/.vm-half/fireclaw.json
        printf '[Service]\nExecStart=/opt/fireclaw-test/bin/firecracker\n' > /etc/systemd/system/firecracker-vmdemo-half.service
        ip link add fc-br0 type veth peer name fc-br0-peer
        ip link add br-other type bridge && ip tuntap add dev tstray9 mode tap && ip link set tstray9 master br-other
        iptables -P FORWARD DROP
        iptables-legacy -A INPUT -s 192.0.2.1 -j DROP
        iptables-nft -A INPUT -s 192.0.2.2 -j DROP
        printf '[Service]\nExecStart=/bin/sleep infinity\n' > /etc/systemd/system/firewalld.service
        systemctl daemon-reload && systemctl start firewalld.service
        "#
    ));
    let out = sandbox.exec(&format!(
        "PATH=/usr/local/lib/oldfc:{BIN_IN_SANDBOX}:$PATH fireclaw doctor --json"
    ));
    assert!(!out.status.success(), "doctor must fail");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is only JSON");
    assert_eq!(json["ok"], false);
    let checks = json["checks"].as_array().unwrap().clone();
    for (name, expected) in [
        ("firecracker version", "warn 1.4 is older"),
        (
            "guest kernel",
            "pass x86_64 ELF vmlinux, read from its strings",
        ),
        (
            "guest kernel drivers",
            "fail no built-in virtio-mmio, virtio-blk, virtio-net (read from its strings",
        ),
        (
            "guest kernel iso9660",
            "pass iso9660 not built in: the guest reads its seed from the rootfs (seed.img only if the guest loads isofs as a module itself)",
        ),
        (
            "base rootfs format",
            "fail not ext4, and the kernel has no iso9660",
        ),
        (
            "base images source",
            "pass no fireclaw-images.json: not fetched by fireclaw image fetch",
        ),
        (
            "unit paths ghost",
            "fail unit program /tmp/evil/firecracker is not trusted",
        ),
        ("orphan ghost", "warn units without state"),
        ("instance lonely", "warn state without units"),
        ("instance half", "warn half-made (phase assets)"),
        ("orphan tap tstray9", "warn a bridged tap no instance owns"),
        ("bridge", "fail fc-br0 exists but is not a bridge"),
        ("FORWARD policy", "warn DROP"),
        ("firewalld", "warn active"),
        ("iptables backends", "warn rules in both legacy"),
        ("state root", "fail /var/lib/fireclaw is mode 0755"),
        // Instances exist but no VM start has applied the guest network policy.
        (
            "egress chain FC-FWD-fc-br0",
            "fail missing: guests are not filtered",
        ),
        ("egress chain FC-IN-fc-br0", "fail missing"),
    ] {
        let got = status_of(&checks, name);
        assert!(got.starts_with(expected), "{name}: {got}");
    }
    let text = sandbox.exec(&format!("PATH={BIN_IN_SANDBOX}:$PATH fireclaw doctor"));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL  bridge")),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&text.stderr).contains("check(s) failed"));
}
