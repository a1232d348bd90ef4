//! Instances made by fireclaw 0.2.0 under this binary: an instance built exactly as 0.2.0 leaves
//! it (tests/support/legacy.rs) goes through list, status, provision, token, shell, stop, start,
//! restart and destroy without its units being rewritten, and `adopt` rewrites them in
//! fireclaw's confined shape after keeping a backup; so does an instance fireclaw made before
//! its VMM was confined. Root only: run through `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::fleet::Fleet;
use support::legacy::make_020_instance;

const KEY: &str = "sk-legacy-secret";

/// doctor's `vmm <id>` check.
fn vmm_check(fleet: &Fleet, id: &str) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_slice(&fleet.fireclaw("doctor --json").stdout).unwrap();
    support::doctor_report::check_named(&report, &format!("vmm {id}"))
}

/// The user an instance's VMM runs as.
fn vmm_user(fleet: &Fleet, id: &str) -> String {
    fleet
        .host
        .sh(&format!("ps -o user= -p {}", fleet.vmm_pid(id)))
        .trim()
        .to_owned()
}

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
    let before = vmm_check(&fleet, "old");
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
    assert_eq!(vmm_user(&fleet, "old"), "fcvm-old");
    let after = vmm_check(&fleet, "old");
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

/// Turns a confined instance back into the shape fireclaw made before the VMM was confined:
/// no account in `fireclaw.json` or on the host, everything root's, Firecracker's log under
/// `logs/`, `API_SOCK` a plain path, and units whose VMM runs as root.
fn make_pre_confinement(fleet: &Fleet, id: &str) {
    fleet.fireclaw_ok(&format!("stop {id}"));
    let fc = format!("/srv/firecracker/vm-demo/{id}");
    let unit = format!("/etc/systemd/system/firecracker-vmdemo-{id}.service");
    fleet.host.sh(&format!(
        "set -e; \
         python3 -c 'import json,sys; p=sys.argv[1]; s=json.load(open(p)); s.pop(\"vmm_account\"); json.dump(s, open(p, \"w\"), indent=2)' /var/lib/fireclaw/.vm-{id}/fireclaw.json; \
         sed -i 's|{fc}/vmm/firecracker.log|{fc}/logs/firecracker.log|' {fc}/config/vm-config.json; \
         rm -rf {fc}/vmm {fc}/firecracker.socket; touch {fc}/logs/firecracker.log; \
         chown -R root:root {fc}; chmod 0700 {fc} {fc}/images {fc}/config; chmod 0600 {fc}/images/* {fc}/config/*; \
         sed -i -e '/^# The VMM.s confinement/,/^CPUQuota=/d' -e '/^User=/d' -e '/^Group=/d' -e '/^SupplementaryGroups=/d' \
                -e 's|^\\(Exec[A-Za-z]*\\)=+|\\1=|' -e 's|{fc}/vmm/api.sock|{fc}/firecracker.socket|' {unit}; \
         sed -i -e '/^umask 077$/d' -e 's|exec setpriv [^/]*-- |exec |' -e 's|{fc}/vmm/api.sock|{fc}/firecracker.socket|' {fc}/start-vm.sh; \
         userdel fcvm-{id}; systemctl daemon-reload"
    ));
}

#[test]
#[ignore = "needs root: sandbox"]
fn an_instance_made_before_confinement_runs_as_root_until_adopt_confines_it() {
    let fleet = Fleet::new("preconfined");
    fleet.healthy("pre");
    make_pre_confinement(&fleet, "pre");
    let waits = "--ssh-timeout 60 --health-timeout 30";

    // It keeps working as it was: its VMM runs as root, and doctor says so.
    let out = fleet.fireclaw_ok(&format!("start pre {waits}"));
    assert!(out.contains("healthy"), "{out}");
    assert_eq!(vmm_user(&fleet, "pre"), "root");
    assert!(
        fleet
            .host
            .ok("test -S /srv/firecracker/vm-demo/pre/firecracker.socket")
    );
    let check = vmm_check(&fleet, "pre");
    assert_eq!(check["status"], "warn", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("fireclaw adopt pre")
    );

    // adopt confines it while it runs; the next start runs it as its account.
    let out = fleet.fireclaw_ok("adopt pre");
    assert!(
        out.contains("fcvm-pre") && !out.contains("backup-0.2.0"),
        "{out}"
    );
    assert_eq!(
        vmm_user(&fleet, "pre"),
        "root",
        "adopt restarted the running VM"
    );
    let out = fleet.fireclaw_ok(&format!("restart pre {waits}"));
    assert!(out.contains("healthy"), "{out}");
    assert_eq!(vmm_user(&fleet, "pre"), "fcvm-pre");
    assert_eq!(
        fleet
            .host
            .sh("readlink /srv/firecracker/vm-demo/pre/firecracker.socket")
            .trim(),
        "/srv/firecracker/vm-demo/pre/vmm/api.sock"
    );
    let check = vmm_check(&fleet, "pre");
    assert_eq!(check["status"], "pass", "{check}");
    assert!(fleet.fireclaw_ok("adopt pre").contains("nothing to do"));
    fleet.fireclaw_ok("destroy pre --force");
    assert!(!fleet.host.ok("id fcvm-pre"));
}
