//! `fireclaw export` and `fireclaw import` in a real systemd with the container guest. The
//! container guest's data does not live in its `rootfs.ext4`, so what is asserted is the
//! host's side: the disk's bytes (a file planted in it with debugfs, its allocated blocks, the
//! files import writes into it), the state files and the identity (token, host key, UUID), and
//! that the imported instance comes up healthy at its new address. (The container guest of an
//! imported instance is a new one, without what provisioning put on the source's guest, so
//! these tests bring it up with `provision`; the real-guest test starts the imported disk as
//! it is.) Hostile and damaged
//! archives are made from a real one by `tests/support/forge-archive.py`; each is refused in
//! one line with nothing left on the host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::doctor_report::check_named;
use support::fleet::{Fleet, is_shared_host_piece};

const KEY: &str = "sk-openai-export-secret";
const WAITS: &str = "--ssh-timeout 60 --health-timeout 30";

fn disk(id: &str) -> String {
    format!("/srv/firecracker/vm-demo/{id}/images/rootfs.ext4")
}

/// A file of the instance's disk, read with debugfs ("" when it is not there).
fn disk_file(fleet: &Fleet, id: &str, path: &str) -> String {
    fleet.host.sh(&format!(
        "debugfs -R 'cat {path}' {} 2>/dev/null || true",
        disk(id)
    ))
}

/// The instance's state file `name` (`.env`, `fireclaw.json`, ...).
fn state_file(fleet: &Fleet, id: &str, name: &str) -> String {
    fleet
        .host
        .sh(&format!("cat /var/lib/fireclaw/.vm-{id}/{name}"))
}

fn uuid(fleet: &Fleet, id: &str) -> String {
    let state: serde_json::Value =
        serde_json::from_str(&state_file(fleet, id, "fireclaw.json")).unwrap();
    state["uuid"].as_str().unwrap().to_owned()
}

/// Runs fireclaw; returns (exit status, stdout, stderr).
fn run(fleet: &Fleet, args: &str) -> (i32, String, String) {
    let output = fleet.fireclaw(args);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The host's units, links, rules, directories and accounts, without the pieces every
/// instance shares.
fn host_pieces(fleet: &Fleet) -> String {
    fleet
        .host_snapshot()
        .lines()
        .filter(|line| !is_shared_host_piece(line))
        .collect::<Vec<_>>()
        .join("\n")
}

fn doctor(fleet: &Fleet) -> serde_json::Value {
    serde_json::from_slice(&fleet.fireclaw("doctor --json").stdout).unwrap()
}

fn healthz(fleet: &Fleet, id: &str) -> bool {
    let port = fleet.env_value(id, "HOST_PORT");
    fleet
        .host
        .ok(&format!("curl -fsS http://127.0.0.1:{port}/healthz"))
}

/// Makes a forged copy of the sandbox's `from` at `to` (both paths inside the sandbox).
fn forge(fleet: &Fleet, from: &str, to: &str, edits: &[&str]) {
    let root = fleet.host.root();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/forge-archive.py");
    let inside = |path: &str| root.join(path.trim_start_matches('/'));
    let status = Command::new("python3")
        .arg(script)
        .arg(inside(from))
        .arg(inside(to))
        .args(edits)
        .status()
        .unwrap();
    assert!(status.success(), "forge {edits:?}");
}

/// A stopped instance exported, checked, encrypted, refused where it must be, destroyed and
/// imported at another address with its identity and disk bytes; a suspended one exported
/// and imported with `--start` to a cold boot.
#[test]
#[ignore = "needs root: sandbox"]
fn stopped_and_suspended_instances_round_trip_with_their_identity_and_disk() {
    let fleet = Fleet::new("export");
    fleet.healthy("a");
    let (old_ip, old_port) = (
        fleet.env_value("a", "VM_IP"),
        fleet.env_value("a", "HOST_PORT"),
    );

    // Running: refused, naming every way out; nothing written.
    let (rc, _, err) = run(&fleet, "export a -o /root/a.fireclaw");
    assert!(
        rc == 1
            && err.contains("instance 'a' is running")
            && err.contains("fireclaw stop a")
            && err.contains("fireclaw suspend a")
            && err.contains("--pause"),
        "{err}"
    );
    assert!(!fleet.host.ok("test -e /root/a.fireclaw"));

    fleet.fireclaw_ok("stop a");
    // The agent's data: 8 MiB planted in the disk, which is sparse (64 MiB, mostly holes).
    let data_hash = fleet.host.sh(&format!(
        "head -c 8M /dev/urandom > /root/data && debugfs -w -R 'write /root/data /agent-data' {} >/dev/null 2>&1 && sha256sum < /root/data | cut -c1-64",
        disk("a")
    ));
    let (logical, allocated) = {
        let stat = fleet.host.sh(&format!("stat -c '%s %b %B' {}", disk("a")));
        let v: Vec<u64> = stat
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        (v[0], v[1] * v[2])
    };
    assert!(allocated < logical / 2, "{allocated} of {logical}");
    let token = fleet.fireclaw_ok("token a");
    let known_hosts = state_file(&fleet, "a", "known_hosts");
    let id_of_agent = uuid(&fleet, "a");

    let (rc, out, err) = run(&fleet, "export a -o /root/a.fireclaw --json");
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("holds the agent's secrets"), "{err}");
    let exported: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(exported["uuid"], id_of_agent.as_str());
    assert_eq!(exported["disk_logical_bytes"], logical);
    // Read sparsely: the data, not the holes.
    let data = exported["disk_data_bytes"].as_u64().unwrap();
    assert!(data <= allocated && data >= 8 << 20, "{exported}");
    assert_eq!(fleet.host.sh("stat -c %a /root/a.fireclaw").trim(), "600");
    // Never overwritten.
    let before = fleet.host.sh("sha256sum /root/a.fireclaw");
    let (rc, _, err) = run(&fleet, "export a -o /root/a.fireclaw");
    assert!(rc == 1 && err.contains("already exists"), "{err}");
    assert_eq!(fleet.host.sh("sha256sum /root/a.fireclaw"), before);
    // Not the host's client key, nor units or the host's own values.
    let listing = fleet.host.sh("zstd -dc /root/a.fireclaw | tar -t");
    assert_eq!(
        listing,
        "manifest.json\nstate/env\nstate/provision.vars\nstate/token\nstate/fireclaw.json\nstate/ssh_host_ed25519_key\nstate/ssh_host_ed25519_key.pub\ndisk/rootfs.ext4\nboot/vmlinux\nchecksums.json\n"
    );
    // (Its key material lines: the first base64 line is the same header in every key.)
    let client_key = fleet.host.sh("cat /var/lib/fireclaw/ssh/vmdemo_vm");
    for line in client_key.lines().skip(2).take(2) {
        assert!(
            !fleet
                .host
                .ok(&format!("zstd -dc /root/a.fireclaw | grep -qF '{line}'")),
            "the host's client key travelled"
        );
    }

    // The restore drill: the whole archive verified, nothing changed.
    let pieces = host_pieces(&fleet);
    let check = fleet.fireclaw_ok("import --check /root/a.fireclaw");
    assert!(
        check.contains("The archive of instance a is whole")
            && check.contains(&id_of_agent)
            && check.contains("member      disk/rootfs.ext4"),
        "{check}"
    );
    assert_eq!(host_pieces(&fleet), pieces);
    // The agent is here already: refused.
    let (rc, _, err) = run(&fleet, "import /root/a.fireclaw");
    assert!(
        rc == 1 && err.contains("instance 'a' already exists on this host"),
        "{err}"
    );
    assert_eq!(host_pieces(&fleet), pieces);

    // Encrypted for one age recipient: age's header, no zstd, only its identity opens it.
    let recipient = fleet.host.sh(
        "age-keygen -o /root/key.txt 2>/dev/null && age-keygen -o /root/other.txt 2>/dev/null && age-keygen -y /root/key.txt",
    );
    let (rc, _, err) = run(
        &fleet,
        &format!("export a --recipient {} -o /root/a.age", recipient.trim()),
    );
    assert_eq!(rc, 0, "{err}");
    assert!(!err.contains("in the clear"), "{err}");
    assert_eq!(
        fleet.host.sh("head -c 22 /root/a.age"),
        "age-encryption.org/v1\n"
    );
    assert!(!fleet.host.ok("zstd -dc /root/a.age > /dev/null 2>&1"));
    let (rc, _, err) = run(&fleet, "import --check /root/a.age");
    assert!(rc == 1 && err.contains("--identity FILE"), "{err}");
    let (rc, _, err) = run(
        &fleet,
        "import --check /root/a.age --identity /root/other.txt",
    );
    assert!(
        rc == 1 && err.contains("age failed") && err.lines().count() == 1,
        "{err}"
    );
    let check = fleet.fireclaw_ok("import --check /root/a.age --identity /root/key.txt");
    assert!(check.contains("encrypted   yes"), "{check}");
    // The identity yields the tar itself.
    assert!(
        fleet.host.ok(
            "age -d -i /root/key.txt /root/a.age | zstd -dc | tar -t | grep -qx disk/rootfs.ext4"
        )
    );

    // Moved: destroyed here, its address taken by another instance, then imported.
    fleet.fireclaw_ok("destroy a -y");
    fleet.healthy("b");
    assert_eq!(fleet.env_value("b", "VM_IP"), old_ip);
    let (rc, out, err) = run(&fleet, "import /root/a.fireclaw --json");
    assert_eq!(rc, 0, "{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new_ip = made["ip"].as_str().unwrap().to_owned();
    assert_ne!(new_ip, old_ip);
    assert_eq!(fleet.env_value("a", "VM_IP"), new_ip);
    assert_eq!(
        made["port"].as_u64().unwrap().to_string(),
        fleet.env_value("a", "HOST_PORT")
    );
    assert_ne!(fleet.env_value("a", "HOST_PORT"), old_port);
    assert_eq!(made["started"], false);
    // Stopped, and the last line of the text form says how to start it.
    fleet.assert_stopped_and_disabled("a");
    // The identity is the agent's; the host's values are this host's.
    assert_eq!(fleet.fireclaw_ok("token a"), token);
    assert_eq!(state_file(&fleet, "a", "known_hosts"), known_hosts);
    assert_eq!(uuid(&fleet, "a"), id_of_agent);
    assert_eq!(
        fleet.env_value("a", "API_SOCK"),
        "/srv/firecracker/vm-demo/a/firecracker.socket"
    );
    let state: serde_json::Value =
        serde_json::from_str(&state_file(&fleet, "a", "fireclaw.json")).unwrap();
    assert_eq!(state["phase"], "provisioned");
    assert_eq!(state["vmm_account"]["name"], "fcvm-a");
    // The disk: the agent's data whole, the holes kept, this host's key the only one
    // authorized, and the network rendered at every boot.
    assert_eq!(
        fleet.host.sh(&format!(
            "debugfs -R 'cat /agent-data' {} 2>/dev/null | sha256sum | cut -c1-64",
            disk("a")
        )),
        data_hash
    );
    let stat = fleet.host.sh(&format!("stat -c '%s %b %B' {}", disk("a")));
    let v: Vec<u64> = stat
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(v[0], logical);
    assert!(
        v[1] * v[2] <= allocated + (1 << 20),
        "{} allocated, {allocated} before",
        v[1] * v[2]
    );
    assert_eq!(
        disk_file(&fleet, "a", "/home/ubuntu/.ssh/authorized_keys"),
        fleet.host.sh("cat /var/lib/fireclaw/ssh/vmdemo_vm.pub")
    );
    assert!(
        disk_file(
            &fleet,
            "a",
            "/etc/cloud/cloud.cfg.d/90-fireclaw-imported.cfg"
        )
        .contains("when: [boot]")
    );
    assert!(
        fleet
            .host
            .ok(&format!("e2fsck -fn {} >/dev/null", disk("a")))
    );
    let started = fleet.fireclaw_ok(&format!("provision a {WAITS}"));
    assert!(healthz(&fleet, "a"), "{started}");
    assert_eq!(
        fleet
            .guest("a", "ip -4 -br addr show eth0 | awk '{print $3}'")
            .trim(),
        format!("{new_ip}/24")
    );

    // Suspended: exported as it is (no snapshot travels), imported stopped, then a cold boot.
    fleet.healthy("c");
    fleet.fireclaw_ok("suspend c");
    let (rc, _, err) = run(&fleet, "export c -o /root/c.fireclaw");
    assert_eq!(rc, 0, "{err}");
    let listing = fleet.host.sh("zstd -dc /root/c.fireclaw | tar -t");
    assert!(!listing.contains("snapshot"), "{listing}");
    fleet.fireclaw_ok("destroy c -y");
    let out = fleet.fireclaw_ok("import /root/c.fireclaw");
    assert!(
        out.contains("Instance c is imported and stopped.")
            && out.trim_end().ends_with("Start it with: fireclaw start c"),
        "{out}"
    );
    assert!(
        !fleet
            .host
            .ok("ls /srv/firecracker/vm-demo/c/snapshot* 2>/dev/null")
    );
    fleet.fireclaw_ok(&format!("provision c {WAITS}"));
    assert!(healthz(&fleet, "c"));
    let state: serde_json::Value =
        serde_json::from_str(&state_file(&fleet, "c", "fireclaw.json")).unwrap();
    assert!(
        state.get("suspended").is_none_or(|s| s.is_null()),
        "{state}"
    );
}

/// `--pause` copies a running instance and it runs on; a kill while its VM is paused is named
/// by doctor as an export cut short and continued by resume or stop; an error while paused
/// resumes the VM at once.
#[test]
#[ignore = "needs root: sandbox"]
fn pause_exports_a_running_instance_and_a_kill_while_paused_is_named_and_continued() {
    let fleet = Fleet::new("exportpause");
    fleet.healthy("p");
    let tap = fleet.tap("p");
    let (rc, out, err) = run(&fleet, "export p --pause -o /root/p1.fireclaw --json");
    assert_eq!(rc, 0, "{err}");
    let exported: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(exported["pause_ms"].as_u64().is_some(), "{exported}");
    // The sandbox's overlay has no reflinks: copied while paused.
    assert_eq!(exported["reflinked"], false);
    assert!(err.contains("p: the VM was paused for"), "{err}");
    assert!(!fleet.guests.frozen(&tap));
    assert!(healthz(&fleet, "p"));
    fleet.fireclaw_ok("import --check /root/p1.fireclaw");

    // Killed while the VM is paused: doctor names the export, resume continues it.
    let killed = fleet.fireclaw_env(
        "FIRECLAW_TEST_CRASH_AT=export:paused",
        "export p --pause -o /root/p2.fireclaw",
    );
    assert!(killed.contains("rc=137"), "{killed}");
    assert!(fleet.guests.frozen(&tap));
    let finding = check_named(&doctor(&fleet), "snapshot p");
    let detail = finding["detail"].as_str().unwrap();
    assert!(
        detail.contains("its VM is paused: an export (fireclaw export --pause, process")
            && detail.ends_with("fireclaw resume p"),
        "{detail}"
    );
    // What the killed export left is no archive.
    assert_eq!(fleet.host.sh("stat -c %s /root/p2.fireclaw").trim(), "0");
    let (rc, _, err) = run(&fleet, "import --check /root/p2.fireclaw");
    assert!(rc == 1 && err.contains("not a fireclaw archive"), "{err}");
    let (rc, _, err) = run(&fleet, &format!("resume p {WAITS}"));
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("an export (fireclaw export --pause"), "{err}");
    assert!(!fleet.guests.frozen(&tap));
    assert!(healthz(&fleet, "p"));
    assert!(!state_file(&fleet, "p", "fireclaw.json").contains("exporting"));

    // Killed after the copy: stop continues the VM first, then shuts it down cleanly, and the
    // copy goes.
    let killed = fleet.fireclaw_env(
        "FIRECLAW_TEST_CRASH_AT=export:cloned",
        "export p --pause -o /root/p3.fireclaw",
    );
    assert!(killed.contains("rc=137"), "{killed}");
    assert!(fleet.guests.frozen(&tap));
    assert!(
        fleet
            .host
            .ok("test -f /srv/firecracker/vm-demo/p/images/.export-rootfs.ext4")
    );
    let (rc, _, err) = run(&fleet, "stop p");
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("and left its VM paused; continuing it"),
        "{err}"
    );
    fleet.assert_stopped_and_disabled("p");
    assert!(
        !fleet
            .host
            .ok("test -e /srv/firecracker/vm-demo/p/images/.export-rootfs.ext4")
    );
    assert!(!state_file(&fleet, "p", "fireclaw.json").contains("exporting"));

    // An error while paused (the copy cannot be made): the VM runs on, nothing is recorded.
    fleet.fireclaw_ok(&format!("start p {WAITS}"));
    fleet
        .host
        .sh("mkdir /srv/firecracker/vm-demo/p/images/.export-rootfs.ext4");
    let (rc, _, err) = run(&fleet, "export p --pause -o /root/p4.fireclaw");
    assert_eq!(rc, 1, "{err}");
    assert!(!fleet.guests.frozen(&tap));
    assert!(healthz(&fleet, "p"));
    assert!(!state_file(&fleet, "p", "fireclaw.json").contains("exporting"));
    assert!(!fleet.host.ok("test -e /root/p4.fireclaw"));
    assert_eq!(
        fleet
            .host
            .sh("ls -a /root | grep -c p4.fireclaw || true")
            .trim(),
        "0"
    );
}

/// `--all` goes on past an instance it cannot export and says so in its status; `--keep`
/// keeps the newest; `--start` refuses a Telegram bot another instance here polls.
#[test]
#[ignore = "needs root: sandbox"]
fn export_all_reports_each_failure_keeps_the_newest_and_import_start_refuses_a_shared_bot() {
    let fleet = Fleet::new("exportall");
    let telegram = "--telegram-token 123456:AAHsharedbot --telegram-users 7";
    fleet.setup("x", &format!("--openai-api-key {KEY} {telegram}"));
    fleet.setup("y", &format!("--openai-api-key {KEY} {telegram}"));
    fleet.fireclaw_ok("stop y");
    fleet.host.sh("mkdir -p /root/backups");

    let (rc, out, err) = run(&fleet, "export --all --output-dir /root/backups");
    assert_eq!(rc, 1, "{out}{err}");
    assert!(
        err.contains("instance 'x' was not exported: instance 'x' is running")
            && err.contains("1 of 2 instance(s) were not exported"),
        "{err}"
    );
    let files = fleet.host.sh("ls /root/backups");
    assert!(
        files.lines().count() == 1
            && files.starts_with("y-")
            && files.trim().ends_with("Z.fireclaw"),
        "{files}"
    );
    let first_y = files.trim().to_owned();

    // Twice more, each a second apart, keeping one of each.
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let (rc, out, err) = run(
            &fleet,
            "export --all --pause --output-dir /root/backups --keep 1",
        );
        assert_eq!(rc, 0, "{out}{err}");
    }
    let files = fleet.host.sh("ls /root/backups");
    let names: Vec<&str> = files.lines().collect();
    assert!(
        names.len() == 2
            && names[0].starts_with("x-")
            && names[1].starts_with("y-")
            && names[1] != first_y,
        "{files}"
    );
    assert!(healthz(&fleet, "x"));

    // y moved back in while x polls the same bot: made, not started, and told why.
    fleet.fireclaw_ok("destroy y -y");
    let (rc, _, err) = run(
        &fleet,
        &format!("import /root/backups/{} --start {WAITS}", names[1]),
    );
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains("instance 'y' was imported but not started: instance 'x' on this host uses the same Telegram bot token"),
        "{err}"
    );
    fleet.assert_stopped_and_disabled("y");
    fleet.fireclaw_ok("stop x");
    fleet.fireclaw_ok(&format!("provision y {WAITS}"));
    assert!(healthz(&fleet, "y"));
}

/// A kill at each step of an import leaves what doctor names and the next import or `host
/// cleanup` removes; a kill after the commit leaves a whole instance.
#[test]
#[ignore = "needs root: sandbox"]
fn a_kill_at_each_import_step_is_named_and_cleaned_up_by_the_next_import_or_host_cleanup() {
    let fleet = Fleet::new("importkill");
    fleet.healthy("a");
    fleet.fireclaw_ok("stop a");
    fleet.fireclaw_ok("export a -o /root/a.fireclaw");
    fleet.fireclaw_ok("destroy a -y");
    let before = host_pieces(&fleet);
    let points = [
        "import:staged",
        "import:reserved",
        "import:state",
        "import:disk",
        "import:unit-files",
        "import:units",
    ];
    for (n, point) in points.iter().enumerate() {
        let killed = fleet.fireclaw_env(
            &format!("FIRECLAW_TEST_CRASH_AT={point}"),
            "import /root/a.fireclaw",
        );
        assert!(killed.contains("rc=137"), "{point}: {killed}");
        let report = doctor(&fleet);
        let named = if *point == "import:staged" {
            check_named(&report, "import staging")
        } else {
            check_named(&report, "instance a")
        };
        let detail = named["detail"].as_str().unwrap();
        assert!(
            detail.contains("interrupted import")
                || detail.contains("an import of it was interrupted"),
            "{point}: {detail}"
        );
        if n % 2 == 0 {
            let cleaned = fleet.fireclaw_ok("host cleanup");
            assert!(cleaned.contains("interrupted"), "{point}: {cleaned}");
            // host cleanup also took the shared network down (no instance is left).
            assert_eq!(host_pieces(&fleet), before, "{point}");
        } else {
            let (rc, _, err) = run(&fleet, "import /root/a.fireclaw");
            assert_eq!(rc, 0, "{point}: {err}");
            assert!(err.contains("removed"), "{point}: {err}");
            fleet.fireclaw_ok("destroy a -y");
            assert_eq!(host_pieces(&fleet), before, "{point}");
        }
        assert_eq!(
            fleet
                .host
                .sh("ls -a /srv/firecracker/vm-demo | grep -c import || true")
                .trim(),
            "0",
            "{point}"
        );
    }
    // Killed just after the commit: the instance is whole.
    let killed = fleet.fireclaw_env(
        "FIRECLAW_TEST_CRASH_AT=import:committed",
        "import /root/a.fireclaw",
    );
    assert!(killed.contains("rc=137"), "{killed}");
    let state = state_file(&fleet, "a", "fireclaw.json");
    assert!(state.contains("\"phase\": \"provisioned\""), "{state}");
    fleet.fireclaw_ok(&format!("provision a {WAITS}"));
    assert!(healthz(&fleet, "a"));
}

/// Every damaged or hostile archive is refused in one line, and the host is as it was.
#[test]
#[ignore = "needs root: sandbox"]
fn hostile_and_damaged_archives_are_refused_in_one_line_and_change_nothing() {
    let fleet = Fleet::new("badarchive");
    fleet.healthy("a");
    fleet.fireclaw_ok("stop a");
    fleet.fireclaw_ok("export a -o /root/a.fireclaw");
    let good = "/root/a.fireclaw";

    // The same agent under another id: its UUID is here already.
    forge(
        &fleet,
        good,
        "/root/a2.fireclaw",
        &[
            "manifest",
            "id=\"a2\"",
            "state",
            "state/env",
            "INSTANCE_ID=a2",
            "state",
            "state/provision.vars",
            "INSTANCE_ID=a2",
            "reseal",
        ],
    );
    let (rc, _, err) = run(&fleet, "import /root/a2.fireclaw");
    assert!(
        rc == 1 && err.contains("instance 'a' on this host is this archive's agent already"),
        "{err}"
    );
    fleet.fireclaw_ok("destroy a -y");
    let before = host_pieces(&fleet);

    let size = fleet.host.sh(&format!("stat -c %s {good}"));
    let size: u64 = size.trim().parse().unwrap();
    fleet.host.sh(&format!(
        "head -c {} {good} > /root/truncated.fireclaw",
        size / 2
    ));
    fleet.host.sh("cp /etc/passwd /root/passwd.fireclaw");
    let recipient = fleet
        .host
        .sh("age-keygen -o /root/key.txt 2>/dev/null && age-keygen -y /root/key.txt");
    fleet.host.sh(&format!(
        "age -r {} -o /root/enc.fireclaw {good} && head -c $(( $(stat -c %s /root/enc.fireclaw) - 100 )) /root/enc.fireclaw > /root/enc-cut.fireclaw",
        recipient.trim()
    ));
    let forged: [(&str, &[&str]); 17] = [
        ("changed", &["flip", "state/env"]),
        ("future", &["manifest", "format=2"]),
        ("dotdot", &["add", "../../etc/cron.d/x", "file"]),
        ("absolute", &["add", "/etc/cron.d/x", "file"]),
        ("symlink", &["kind", "state/env", "symlink"]),
        ("hardlink", &["kind", "state/env", "hardlink"]),
        ("device", &["kind", "state/env", "device"]),
        ("fifo", &["kind", "state/env", "fifo"]),
        ("duplicate", &["dup", "state/env"]),
        ("unlisted", &["add", "logs/console.log", "file"]),
        ("pax", &["pax", "state/env", "../../../etc/cron.d/x"]),
        ("overcap", &["declare", "disk/rootfs.ext4=5497558138880"]),
        ("overspace", &["declare", "disk/rootfs.ext4=3298534883328"]),
        ("longer", &["declare", "state/env=10"]),
        ("bomb", &["pad", "67108864"]),
        (
            "otherid",
            &["state", "state/env", "INSTANCE_ID=zz", "reseal"],
        ),
        (
            "badmodel",
            &["state", "state/provision.vars", "MODEL=x y", "reseal"],
        ),
    ];
    for (name, edits) in forged {
        forge(&fleet, good, &format!("/root/{name}.fireclaw"), edits);
    }
    let cases: [(&str, &str, &str); 22] = [
        ("truncated", "", "its stream is damaged, cut short"),
        ("passwd", "", "not a fireclaw archive"),
        ("enc", "", "--identity FILE"),
        ("enc-cut", "--identity /root/key.txt", "age failed"),
        ("changed", "", "does not match its checksum"),
        ("future", "", "format 2"),
        ("dotdot", "", "which no archive of fireclaw holds"),
        ("absolute", "", "which no archive of fireclaw holds"),
        ("symlink", "", "is a symbolic link"),
        ("hardlink", "", "is a hard link"),
        ("device", "", "is a device"),
        ("fifo", "", "is a FIFO"),
        ("duplicate", "", "twice"),
        ("unlisted", "", "which its manifest does not list"),
        ("pax", "", "which no archive of fireclaw holds"),
        ("overcap", "", "over its cap"),
        (
            "overspace",
            "",
            "not enough space in /srv/firecracker/vm-demo",
        ),
        ("longer", "", "where its manifest says 10"),
        ("bomb", "", "data follows the archive's last member"),
        ("otherid", "", "names another instance than its manifest"),
        ("badmodel", "", "the archive's MODEL cannot be used"),
        ("good-long-root", "", "too long for this host"),
    ];
    for (name, extra, expected) in cases {
        let (env, file) = if name == "good-long-root" {
            (format!("FC_ROOT=/srv/{}", "r".repeat(90)), good.to_owned())
        } else {
            (String::new(), format!("/root/{name}.fireclaw"))
        };
        let out = fleet.fireclaw_env(&env, &format!("import -q {file} {extra}"));
        let (text, rc) = out.rsplit_once("rc=").unwrap();
        assert_eq!(rc.trim(), "1", "{name}: {out}");
        assert!(
            text.lines().count() == 1 && text.starts_with("fireclaw: ") && text.contains(expected),
            "{name}: {text}"
        );
        assert_eq!(host_pieces(&fleet), before, "{name} changed the host");
        assert_eq!(
            fleet
                .host
                .sh("ls -a /srv/firecracker/vm-demo /srv/r* 2>/dev/null | grep -c import || true")
                .trim(),
            "0",
            "{name} left a staging dir"
        );
    }

    // Host values in the archive are never acted on: its socket, tap and account are ignored
    // (its suspended record too: the round trip of a suspended instance shows that).
    forge(
        &fleet,
        good,
        "/root/hostile.fireclaw",
        &[
            "state",
            "state/env",
            "API_SOCK=/tmp/evil.sock",
            "state",
            "state/env",
            "VM_TAP=evil0",
            "json",
            "state/fireclaw.json",
            "vmm_account={\"name\": \"root\", \"uid\": 0, \"gid\": 0}",
            "reseal",
        ],
    );
    let out = fleet.fireclaw_ok("import /root/hostile.fireclaw");
    assert!(out.contains("Instance a is imported and stopped."), "{out}");
    assert_eq!(
        fleet.env_value("a", "API_SOCK"),
        "/srv/firecracker/vm-demo/a/firecracker.socket"
    );
    assert_ne!(fleet.env_value("a", "VM_TAP"), "evil0");
    let state: serde_json::Value =
        serde_json::from_str(&state_file(&fleet, "a", "fireclaw.json")).unwrap();
    assert_eq!(state["vmm_account"]["name"], "fcvm-a");
    assert!(!fleet.host.ok("test -e /tmp/evil.sock"));
    fleet.fireclaw_ok(&format!("provision a {WAITS}"));
    assert!(healthz(&fleet, "a"));
}
