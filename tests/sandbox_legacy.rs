//! Instances made by fireclaw 0.2.0 under this binary: an instance built exactly as 0.2.0 leaves
//! it (tests/support/legacy.rs) goes through list, status, provision, token, shell, stop, start,
//! restart and destroy without its units being rewritten, and `adopt` rewrites them in
//! fireclaw's shape after keeping a backup. Root only: run through `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::fleet::Fleet;
use support::legacy::make_020_instance;

const KEY: &str = "sk-legacy-secret";

fn unit(fleet: &Fleet) -> String {
    fleet
        .host
        .sh("cat /etc/systemd/system/firecracker-vmdemo-old.service")
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_020_instance_works_under_this_binary_and_adopt_rewrites_its_units() {
    let fleet = Fleet::new("legacy");
    make_020_instance(&fleet, "old", 9, 18899, KEY);
    let original_unit = unit(&fleet);
    let original_env = fleet.host.sh("cat /var/lib/fireclaw/.vm-old/.env");

    let listed: serde_json::Value =
        serde_json::from_str(&fleet.fireclaw_ok("list --json")).unwrap();
    let row = &listed["instances"][0];
    assert_eq!(
        (row["id"].as_str(), row["ip"].as_str(), row["port"].as_u64()),
        (Some("old"), Some("172.16.0.9"), Some(18899))
    );
    assert!(row["phase"].is_null(), "0.2.0 instances have no phase");

    // First contact pins the guest's key (trust on first use, as 0.2.0 did).
    let out = fleet.fireclaw_ok("provision old --ssh-timeout 60 --health-timeout 30");
    assert!(out.contains("Instance old is healthy."), "{out}");
    let pinned = fleet.host.sh("cat /var/lib/fireclaw/.vm-old/known_hosts");
    assert!(pinned.contains("ssh-"), "no key pinned: {pinned}");
    assert!(
        !fleet
            .host
            .ok("test -e /var/lib/fireclaw/.vm-old/fireclaw.json")
    );
    assert_eq!(
        unit(&fleet),
        original_unit,
        "provision rewrote a 0.2.0 unit"
    );
    // Saved values were unchanged by a provision without flags.
    assert_eq!(
        fleet.host.sh("cat /var/lib/fireclaw/.vm-old/.env"),
        original_env
    );

    let status: serde_json::Value =
        serde_json::from_str(&fleet.fireclaw_ok("status old --json")).unwrap();
    assert_eq!(status["health"], "up");
    assert_eq!(status["guest_service"], "active");
    let token = fleet.fireclaw_ok("token old");
    assert!(original_env.contains(&format!("GATEWAY_TOKEN={}", token.trim())));
    assert_eq!(
        fleet.fireclaw_ok("shell old 'echo hi from $(hostname)'"),
        "hi from old\n"
    );

    fleet.fireclaw_ok("stop old");
    fleet.assert_stopped_and_disabled("old");
    let configured = fleet.node_calls("old").len();
    let out = fleet.fireclaw_ok("start old --ssh-timeout 60 --health-timeout 30");
    assert!(out.contains("healthy"), "{out}");
    assert_eq!(
        fleet.node_calls("old").len(),
        configured,
        "start reprovisioned"
    );
    fleet.fireclaw_ok("restart old --ssh-timeout 60 --health-timeout 30");
    assert_eq!(
        unit(&fleet),
        original_unit,
        "the lifecycle rewrote a 0.2.0 unit"
    );

    // Until adopted, its VMM runs as root, and doctor says so.
    let vmm_check = |fleet: &Fleet| {
        let report: serde_json::Value =
            serde_json::from_slice(&fleet.fireclaw("doctor --json").stdout).unwrap();
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "vmm old")
            .cloned()
            .unwrap_or_else(|| panic!("no vmm check: {report}"))
    };
    let before = vmm_check(&fleet);
    assert_eq!(before["status"], "warn", "{before}");
    assert!(
        before["detail"]
            .as_str()
            .unwrap()
            .contains("fireclaw adopt old")
    );

    let out = fleet.fireclaw_ok("adopt old");
    assert!(out.contains("backup-0.2.0"), "{out}");
    assert!(out.contains("fcvm-old"), "{out}");
    let adopted = unit(&fleet);
    assert!(
        adopted.contains("ExecStartPre=+/opt/fireclaw-test/bin/fireclaw vm-net-up old")
            && adopted.contains("\nUser=fcvm-old\n"),
        "{adopted}"
    );
    let backup = fleet
        .host
        .sh("cat /srv/firecracker/vm-demo/old/backup-0.2.0/firecracker-vmdemo-old.service");
    assert_eq!(backup, original_unit);
    assert!(
        fleet
            .host
            .ok("test -f /srv/firecracker/vm-demo/old/backup-0.2.0/start-vm.sh")
    );
    assert!(fleet.fireclaw_ok("adopt old").contains("nothing to do"));
    let ctrl_alt_dels = |fleet: &Fleet| {
        fleet
            .host
            .sh("grep -c SendCtrlAltDel /run/fireclaw-standin/told9.calls || true")
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let before_restart = ctrl_alt_dels(&fleet);
    let out = fleet.fireclaw_ok("restart old --ssh-timeout 60 --health-timeout 30");
    assert!(out.contains("healthy"), "{out}");
    assert!(
        fleet
            .host
            .sh("bridge -d link show dev told9")
            .contains("isolated on")
    );
    // The VMM that ran as root before adopt was stopped cleanly through its own socket.
    let journal = fleet
        .host
        .sh("journalctl -u firecracker-vmdemo-old.service --no-pager -o cat");
    assert!(
        !journal.contains("leaving the stop to systemd") && !journal.contains("did not shut down"),
        "{journal}"
    );
    assert_eq!(ctrl_alt_dels(&fleet), before_restart + 1);
    // Now confined: the VMM runs as its account, and doctor finds everything as set.
    let vmm_user = fleet
        .host
        .sh("ps -o user= -p $(systemctl show -p MainPID --value firecracker-vmdemo-old.service)");
    assert_eq!(vmm_user.trim(), "fcvm-old");
    let after = vmm_check(&fleet);
    assert_eq!(after["status"], "pass", "{after}");

    fleet.fireclaw_ok("destroy old --force");
    assert!(!fleet.host.ok("test -e /var/lib/fireclaw/.vm-old"));
    assert!(!fleet.host.ok("test -e /srv/firecracker/vm-demo/old"));
    assert!(!fleet.host.ok("ip link show told9"));
    assert!(!fleet.host.ok("grep -q '^fcvm-old:' /etc/passwd /etc/group"));
    assert!(
        !fleet
            .host
            .ok("ls /etc/systemd/system | grep -q vmdemo-proxy-old")
    );
}
