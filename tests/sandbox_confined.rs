//! The confined VMM in a real systemd (the sandbox gives `/dev/kvm` to group `kvm`, 0660, as
//! real hosts do): Firecracker (the stand-in) runs as the instance's own account without
//! capabilities, cannot read another instance's disk or `STATE_ROOT`, the root helpers never
//! follow a link it plants in its own dir, a tap held under another owner is refused, doctor
//! compares the unit's loaded sandboxing with what fireclaw writes, and destroy leaves no
//! account or group behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::doctor_report::check_named;
use support::fleet::Fleet;

const WAITS: &str = "--ssh-timeout 60 --health-timeout 30";

fn doctor(fleet: &Fleet) -> serde_json::Value {
    serde_json::from_slice(&fleet.fireclaw("doctor --json").stdout).unwrap()
}

/// Runs `command` in the sandbox as the VMM account of `id`, as an escaped VMM would.
fn as_vmm(fleet: &Fleet, id: &str, command: &str) -> bool {
    fleet.host.ok(&format!(
        "setpriv --reuid=fcvm-{id} --regid=fcvm-{id} --init-groups -- sh -c '{command}'"
    ))
}

#[test]
#[ignore = "needs root: sandbox"]
fn the_vmm_runs_as_its_own_account_with_no_privileges_and_reaches_nothing_else() {
    let fleet = Fleet::new("confined");
    fleet.healthy("a");
    fleet.healthy("b");
    let uid = fleet.host.sh("id -u fcvm-a").trim().to_owned();
    let uid_b = fleet.host.sh("id -u fcvm-b").trim().to_owned();
    assert_ne!(uid, uid_b);
    assert!(uid.parse::<u32>().unwrap() >= 1_950_000_000, "{uid}");

    // The VMM process: its account, no capabilities, no new privileges; still the main PID.
    let status = fleet
        .host
        .sh(&format!("cat /proc/{}/status", fleet.vmm_pid("a")));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(field("CapBnd"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    let tap = fleet.env_value("a", "VM_TAP");
    assert_eq!(
        fleet
            .host
            .sh(&format!(
                "cat /sys/class/net/{tap}/owner /sys/class/net/{tap}/group"
            ))
            .split_whitespace()
            .collect::<Vec<_>>(),
        [uid.as_str(), uid.as_str()]
    );
    // The documented socket path still answers, through the link into the VMM's own dir.
    assert!(fleet.host.ok(
        "curl -sf --unix-socket /srv/firecracker/vm-demo/a/firecracker.socket http://localhost/"
    ));

    // What the account can and cannot reach.
    assert!(as_vmm(
        &fleet,
        "a",
        "test -w /srv/firecracker/vm-demo/a/images/rootfs.ext4"
    ));
    assert!(as_vmm(
        &fleet,
        "a",
        "cat /srv/firecracker/vm-demo/a/config/vm-config.json"
    ));
    assert!(!as_vmm(
        &fleet,
        "a",
        "cat /srv/firecracker/vm-demo/b/images/rootfs.ext4"
    ));
    assert!(!as_vmm(
        &fleet,
        "a",
        "head -c1 /srv/firecracker/vm-demo/b/images/seed.img"
    ));
    assert!(!as_vmm(&fleet, "a", "ls /var/lib/fireclaw"));
    assert!(!as_vmm(&fleet, "a", "cat /var/lib/fireclaw/.vm-a/.env"));
    assert!(!as_vmm(
        &fleet,
        "a",
        "cat /srv/firecracker/vm-demo/a/config/user-data"
    ));
    assert!(!as_vmm(
        &fleet,
        "a",
        "touch /srv/firecracker/vm-demo/a/images/x"
    ));
    assert!(!as_vmm(&fleet, "a", "ls /srv/firecracker/vm-demo/a/logs"));

    // doctor: everything as set; a drop-in that loosens the unit is named.
    let report = doctor(&fleet);
    let check = check_named(&report, "vmm a");
    assert_eq!(check["status"], "pass", "{check}");
    assert_eq!(check_named(&report, "kvm group")["status"], "pass");
    // nspawn mounts the v1 controllers read-only: doctor says the limits do not bite here.
    assert_eq!(check_named(&report, "resource limits")["status"], "warn");
    let limits = check_named(&report, "limits a");
    assert_eq!(limits["status"], "warn", "{limits}");
    fleet.host.sh(
        "mkdir -p /etc/systemd/system/firecracker-vmdemo-a.service.d && \
         printf '[Service]\\nNoNewPrivileges=no\\nUser=root\\n' > /etc/systemd/system/firecracker-vmdemo-a.service.d/loose.conf && \
         systemctl daemon-reload",
    );
    let check = check_named(&doctor(&fleet), "vmm a");
    assert_eq!(check["status"], "fail", "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("User=root") && detail.contains("NoNewPrivileges=no"),
        "{detail}"
    );
    fleet
        .host
        .sh("rm -r /etc/systemd/system/firecracker-vmdemo-a.service.d && systemctl daemon-reload");

    // A link the VMM plants where it may write is never followed by a root helper: not by
    // vm-shutdown (which checks who answers), not by vm-net-up, not by destroy.
    fleet.host.sh("cp -a /etc/shadow /tmp/shadow-before");
    let dir = "/srv/firecracker/vm-demo/a/vmm";
    assert!(as_vmm(
        &fleet,
        "a",
        &format!("mv {dir}/api.sock {dir}/real.sock && ln -s /run/systemd/private {dir}/api.sock")
    ));
    fleet.fireclaw_ok("stop a");
    let journal = fleet
        .host
        .sh("journalctl -u firecracker-vmdemo-a.service --no-pager -o cat");
    assert!(journal.contains("refusing to talk to it"), "{journal}");
    assert!(as_vmm(
        &fleet,
        "a",
        &format!(
            "rm -f {dir}/firecracker.log {dir}/real.sock && ln -s /etc/shadow {dir}/firecracker.log"
        )
    ));
    let check = check_named(&doctor(&fleet), "vmm a");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{dir}/firecracker.log is link")),
        "{check}"
    );
    let start = fleet.fireclaw(&format!("start a {WAITS}"));
    assert!(!start.status.success());
    let journal = fleet
        .host
        .sh("journalctl -u firecracker-vmdemo-a.service --no-pager -o cat");
    assert!(journal.contains("is a link"), "{journal}");
    fleet.host.sh(
        "cmp /etc/shadow /tmp/shadow-before && stat -c '%a %U' /etc/shadow | grep -qx '640 root'",
    );
    fleet.fireclaw_ok("stop a");
    fleet.host.sh(&format!("rm {dir}/firecracker.log"));

    // A tap of someone else's (`nobody`: systemd runs a unit only as a user with a passwd
    // entry): taken over while nothing holds it, refused while held.
    fleet.host.sh(&format!(
        "ip link delete {tap}; ip tuntap add dev {tap} mode tap user nobody group nogroup"
    ));
    fleet.fireclaw_ok(&format!("start a {WAITS}"));
    assert_eq!(
        fleet
            .host
            .sh(&format!("cat /sys/class/net/{tap}/owner"))
            .trim(),
        uid
    );
    fleet.fireclaw_ok("stop a");
    fleet.host.sh(&format!(
        "ip link delete {tap} 2>/dev/null; ip tuntap add dev {tap} mode tap user nobody group nogroup; \
         systemd-run --unit hold-tap --property=User=nobody --property=Group=nogroup \
         /usr/bin/python3 -c 'import fcntl,os,struct,time; f=os.open(\"/dev/net/tun\",os.O_RDWR); fcntl.ioctl(f,0x400454ca,struct.pack(\"16sH\",b\"{tap}\",0x1002)); time.sleep(300)' && sleep 1"
    ));
    let start = fleet.fireclaw(&format!("start a {WAITS}"));
    assert!(!start.status.success());
    let journal = fleet
        .host
        .sh("journalctl -u firecracker-vmdemo-a.service --no-pager -o cat");
    assert!(
        journal.contains(&format!("tap {tap} is held by another process")),
        "{journal}"
    );
    fleet.host.sh("systemctl stop hold-tap");
    fleet.fireclaw_ok(&format!("start a {WAITS}"));

    // start-vm.sh run by hand starts Firecracker as the account too.
    fleet.fireclaw_ok("stop a");
    fleet
        .host
        .sh("systemd-run --unit by-hand /srv/firecracker/vm-demo/a/start-vm.sh");
    fleet.host.sh(
        "for i in $(seq 100); do curl -sf --unix-socket /srv/firecracker/vm-demo/a/firecracker.socket http://localhost/ >/dev/null && exit 0; sleep 0.1; done; exit 1",
    );
    let by_hand = fleet
        .host
        .sh("cat /proc/$(systemctl show -p MainPID --value by-hand.service)/status");
    assert!(
        by_hand.contains(&format!("\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"))
            && by_hand.contains("\nCapEff:\t0000000000000000\n")
            && by_hand.contains("\nNoNewPrivs:\t1\n"),
        "{by_hand}"
    );
    fleet
        .host
        .sh("/srv/firecracker/vm-demo/a/stop-vm.sh; systemctl stop by-hand || true");

    // A link the VMM leaves in its dir does not lead destroy out of it.
    fleet
        .host
        .sh("mkdir -p /root/canary && echo keep > /root/canary/file");
    assert!(as_vmm(
        &fleet,
        "a",
        &format!("ln -s /root/canary {dir}/escape")
    ));

    // destroy: no account, group or file of either is left.
    fleet.fireclaw_ok("destroy a --force");
    fleet.fireclaw_ok("destroy b --force");
    assert_eq!(
        fleet
            .host
            .sh("grep -c '^fcvm-' /etc/passwd /etc/group || true")
            .trim(),
        "/etc/passwd:0\n/etc/group:0"
    );
    assert_eq!(
        fleet
            .host
            .sh(&format!(
                "find / -xdev \\( -uid {uid} -o -uid {uid_b} \\) 2>/dev/null | head"
            ))
            .trim(),
        ""
    );
    assert_eq!(fleet.host.sh("cat /root/canary/file").trim(), "keep");
}
