//! Suspend and resume in a real systemd, against the Firecracker stand-in (which pauses,
//! snapshots and loads through the harness, freezing the guest stand-in's cgroup): a process in
//! the guest keeps counting from where it stopped, the gateway is healthy through the proxy
//! after a resume, a consumed snapshot is never loaded again, a kill at every step of suspend
//! and resume leaves a state `resume`, `start --cold` or `destroy` completes, `--all` works over
//! several instances, and everything that cannot succeed (a full disk, another host kernel or
//! snapshot format, a load that fails anyway) is refused once, clearly, changing nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::doctor_report::check_named;
use support::fleet::Fleet;

const WAITS: &str = "--ssh-timeout 60 --health-timeout 30";

/// Starts a counter in the guest of `id`: a process that writes 1, 2, 3, ... to /run/counter.
fn start_counter(fleet: &Fleet, id: &str) {
    fleet.guest(
        id,
        "systemd-run --unit fc-counter sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/counter.new; mv /run/counter.new /run/counter; sleep 0.1; done'",
    );
}

/// The counter's value and its process; `None` when it does not run (the guest booted anew).
fn counter(fleet: &Fleet, id: &str) -> Option<(u64, String)> {
    let out = fleet.guest(
        id,
        "cat /run/counter 2>/dev/null; echo; systemctl show -p MainPID --value fc-counter",
    );
    let mut lines = out.lines();
    let value = lines.next()?.trim().parse().ok()?;
    let pid = lines.next()?.trim().to_owned();
    (pid != "0").then_some((value, pid))
}

fn state_json(fleet: &Fleet, id: &str) -> serde_json::Value {
    serde_json::from_str(
        &fleet
            .host
            .sh(&format!("cat /var/lib/fireclaw/.vm-{id}/fireclaw.json")),
    )
    .unwrap()
}

fn calls(fleet: &Fleet, id: &str) -> String {
    fleet.host.sh(&format!(
        "cat /run/fireclaw-standin/{}.calls",
        fleet.tap(id)
    ))
}

fn loads(fleet: &Fleet, id: &str) -> usize {
    calls(fleet, id).matches("PUT /snapshot/load").count()
}

/// `stat` of the snapshot files, or "" when there are none.
fn snapshot_files(fleet: &Fleet, id: &str) -> String {
    fleet.host.sh(&format!(
        "cd /srv/firecracker/vm-demo/{id}/vmm && stat -c '%n %a %U %G %s' snapshot.* 2>/dev/null || true"
    ))
}

fn failing(fleet: &Fleet, args: &str) -> String {
    let output = fleet.fireclaw(args);
    assert!(!output.status.success(), "fireclaw {args} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn doctor(fleet: &Fleet) -> serde_json::Value {
    serde_json::from_slice(&fleet.fireclaw("doctor --json").stdout).unwrap()
}

/// Waits until `what` holds, at most `secs`.
fn eventually(secs: u64, what: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_resumed_guest_counts_on_from_where_it_stopped_and_a_consumed_snapshot_is_never_loaded_again() {
    let fleet = Fleet::new("suspend");
    fleet.healthy("a");
    let tap = fleet.tap("a");
    start_counter(&fleet, "a");
    assert!(eventually(10, || counter(&fleet, "a").is_some_and(|(n, _)| n > 5)));
    let (before, pid) = counter(&fleet, "a").unwrap();
    let counting_since = Instant::now();

    let said = fleet.fireclaw_ok("suspend a");
    assert!(said.contains("Instance a is suspended"), "{said}");
    // The guest is frozen, not gone: its processes wait in place.
    assert!(fleet.guests.frozen(&tap));
    let calls_now = calls(&fleet, "a");
    assert!(
        calls_now.contains(r#"PATCH /vm {"state":"Paused"}"#),
        "{calls_now}"
    );
    assert!(calls_now.contains("PUT /snapshot/create"), "{calls_now}");
    assert!(!calls_now.contains("SendCtrlAltDel"), "{calls_now}");

    // What was recorded, and the files: the VMM's own, 0600, the memory as big as the guest's.
    let memory = fleet.env_value("a", "VM_MEM_MIB").parse::<u64>().unwrap() << 20;
    let record = &state_json(&fleet, "a")["suspended"];
    assert_eq!(record["memory_bytes"], memory, "{record}");
    assert_eq!(record["format_version"], "v10.0.0");
    assert_eq!(
        record["host_kernel"],
        fleet.host.sh("uname -r").trim(),
        "{record}"
    );
    assert_eq!(state_json(&fleet, "a")["phase"], "provisioned");
    let files = snapshot_files(&fleet, "a");
    assert!(
        files.contains(&format!("snapshot.mem 600 fcvm-a fcvm-a {memory}")),
        "{files}"
    );
    assert!(
        files.contains("snapshot.vmstate 600 fcvm-a fcvm-a"),
        "{files}"
    );
    // Stopped through systemd and disabled: a host reboot leaves it suspended.
    fleet.assert_stopped_and_disabled("a");
    assert_eq!(
        fleet.fireclaw_ok("suspend a").trim(),
        "Instance a is already suspended; resume it with: fireclaw resume a"
    );

    // The views and doctor say so.
    let list: serde_json::Value = serde_json::from_str(&fleet.fireclaw_ok("list --json")).unwrap();
    let row = &list["instances"][0];
    assert!(row["suspended"]["snapshot_bytes"].as_u64().unwrap() > memory);
    assert!(fleet.fireclaw_ok("list").contains(" suspended "));
    let status = fleet.fireclaw_ok("status a");
    assert!(status.contains("  suspended      "), "{status}");
    let report = doctor(&fleet);
    let finding = check_named(&report, "snapshot a");
    assert_eq!(finding["status"], "pass", "{finding}");

    // Commands that need the running guest say to resume first, and change nothing.
    for args in [
        "shell a true",
        "logs a guest --no-follow",
        "restart a",
        "provision a --model anthropic/claude-opus-4",
    ] {
        let error = failing(&fleet, args);
        assert!(
            error.contains("instance 'a' is suspended; resume it first with: fireclaw resume a"),
            "{args}: {error}"
        );
    }
    let stopped = fleet.fireclaw_ok("stop a");
    assert!(stopped.contains("is suspended and stays so"), "{stopped}");
    assert!(state_json(&fleet, "a")["suspended"].is_object());
    // start-vm.sh boots from the disk only: it refuses, rather than leave the snapshot behind.
    assert!(!fleet.host.ok("/srv/firecracker/vm-demo/a/start-vm.sh"));
    assert!(state_json(&fleet, "a")["suspended"].is_object());

    std::thread::sleep(Duration::from_secs(3));
    let resumed = fleet.fireclaw_ok(&format!("resume a {WAITS}"));
    assert!(resumed.contains("Instance a is healthy."), "{resumed}");
    // The same process counts on from where it stopped.
    let (after, same) = counter(&fleet, "a").expect("the counter survived");
    let elapsed = counting_since.elapsed().as_secs_f64();
    assert_eq!(same, pid);
    assert!(after >= before, "{after} < {before}");
    // At most 10 a second while it ran, and it stood still for the 3 s slept while suspended.
    let most = ((elapsed - 3.0) * 10.0) as u64 + 2;
    assert!(
        after - before <= most,
        "{after} - {before} > {most} in {elapsed:.1}s"
    );
    assert!(eventually(5, || counter(&fleet, "a")
        .is_some_and(|(n, _)| n > after + 5)));
    let port = fleet.env_value("a", "HOST_PORT");
    assert!(
        fleet
            .host
            .ok(&format!("curl -sf http://127.0.0.1:{port}/healthz"))
    );
    // Consumed: the record and the files are gone, and exactly one load happened.
    assert!(state_json(&fleet, "a").get("suspended").is_none());
    assert_eq!(snapshot_files(&fleet, "a"), "");
    assert_eq!(loads(&fleet, "a"), 1);
    let vm_calls = calls(&fleet, "a");
    let load_line = vm_calls
        .lines()
        .find(|l| l.contains("PUT /snapshot/load"))
        .unwrap();
    assert!(load_line.contains(r#""resume_vm":false"#), "{load_line}");
    assert!(
        load_line.contains(&format!(r#""host_dev_name":"{tap}""#)),
        "{load_line}"
    );
    assert!(vm_calls.contains("PUT /logger"), "{vm_calls}");
    assert!(vm_calls.contains(r#"PATCH /vm {"state":"Resumed"}"#));

    // A VMM crash after the resume boots from the disk: the snapshot is never loaded again.
    let vmm = fleet.vmm_pid("a");
    fleet.host.sh(&format!("kill -9 {vmm}"));
    assert!(eventually(30, || {
        let now = fleet.vmm_pid("a");
        now != "0" && now != vmm
    }));
    fleet.fireclaw_ok(&format!("start a {WAITS}"));
    assert_eq!(loads(&fleet, "a"), 1);
    assert_eq!(counter(&fleet, "a"), None, "the guest was not booted anew");
}

/// Suspends `a` with a kill at `point`; returns fireclaw's output (ending with rc=137).
fn killed_suspend(fleet: &Fleet, point: &str) -> String {
    let out = fleet.fireclaw_env(&format!("FIRECLAW_TEST_CRASH_AT={point}"), "suspend a");
    assert!(out.trim_end().ends_with("rc=137"), "{point}: {out}");
    out
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_kill_at_every_step_of_suspend_and_resume_leaves_what_resume_start_cold_or_destroy_completes() {
    let fleet = Fleet::new("suspendkill");
    fleet.healthy("a");
    start_counter(&fleet, "a");
    // Each cut-short suspend is finished by resume, with the guest's processes intact.
    for point in [
        "suspend:paused",
        "suspend:snapshot-written",
        "suspend:disabled",
        "suspend:recorded",
        "suspend:vm-stopped",
    ] {
        let (before, pid) = counter(&fleet, "a").expect(point);
        killed_suspend(&fleet, point);
        let resumed = fleet.fireclaw(&format!("resume a {WAITS}"));
        assert!(
            resumed.status.success(),
            "resume after a kill at {point}: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        let (after, same) = counter(&fleet, "a").expect(point);
        assert_eq!(same, pid, "{point}");
        assert!(after >= before, "{point}");
        assert!(
            state_json(&fleet, "a").get("suspended").is_none(),
            "{point}"
        );
        assert_eq!(snapshot_files(&fleet, "a"), "", "{point}");
        let units = fleet.unit_states("a");
        assert_eq!(
            units.matches("UnitFileState=enabled").count(),
            2,
            "{point}: {units}"
        );
    }
    // Only the two recorded ones were loaded; the others were continued in their VMM.
    assert_eq!(loads(&fleet, "a"), 2, "{}", calls(&fleet, "a"));

    // A kill of resume after the VM unit started: the guest runs on; start finishes.
    fleet.fireclaw_ok("suspend a");
    let out = fleet.fireclaw_env(
        "FIRECLAW_TEST_CRASH_AT=resume:started",
        &format!("resume a {WAITS}"),
    );
    assert!(out.trim_end().ends_with("rc=137"), "{out}");
    assert!(state_json(&fleet, "a").get("suspended").is_none());
    fleet.fireclaw_ok(&format!("start a {WAITS}"));
    assert!(counter(&fleet, "a").is_some());

    // A kill of the load helper after it consumed the snapshot: the start fails, and the
    // unit's restart boots from the disk, never loading it again.
    fleet.fireclaw_ok("suspend a");
    let loads_before = loads(&fleet, "a");
    fleet.host.sh(
        "mkdir -p /etc/systemd/system/firecracker-vmdemo-a.service.d && \
         printf '[Service]\\nEnvironment=FIRECLAW_TEST_CRASH_AT=resume:consumed\\n' \
           > /etc/systemd/system/firecracker-vmdemo-a.service.d/crash.conf && systemctl daemon-reload",
    );
    assert!(
        !fleet
            .fireclaw(&format!("resume a {WAITS}"))
            .status
            .success()
    );
    fleet
        .host
        .sh("rm -r /etc/systemd/system/firecracker-vmdemo-a.service.d && systemctl daemon-reload");
    assert!(state_json(&fleet, "a").get("suspended").is_none());
    fleet.fireclaw_ok(&format!("start a {WAITS}"));
    assert_eq!(loads(&fleet, "a"), loads_before + 1);
    assert_eq!(counter(&fleet, "a"), None, "booted from the disk");

    // A suspended instance is destroyed with its snapshot, leaving nothing behind.
    fleet.fireclaw_ok("suspend a");
    fleet.fireclaw_ok("destroy a -y");
    assert!(!fleet.host.ok("test -e /srv/firecracker/vm-demo/a"));
    assert!(!fleet.host.ok("test -e /var/lib/fireclaw/.vm-a"));
}

#[test]
#[ignore = "needs root: sandbox"]
fn fleet_wide_suspend_and_resume_and_every_refusal_changes_nothing() {
    let fleet = Fleet::new("suspendall");
    fleet.healthy("a");
    fleet.healthy("b");

    let said = fleet.fireclaw_ok("suspend --all");
    assert!(said.contains("Instance a is suspended") && said.contains("Instance b is suspended"));
    fleet.assert_stopped_and_disabled("a");
    fleet.assert_stopped_and_disabled("b");
    assert_eq!(
        fleet.fireclaw_ok("suspend --all").trim(),
        "No instance to be suspended."
    );
    let said = fleet.fireclaw_ok(&format!("resume --all {WAITS}"));
    assert_eq!(said.matches("is healthy.").count(), 2, "{said}");
    assert_eq!(
        fleet.fireclaw_ok("resume --all").trim(),
        "No instance to be resumed."
    );
    let error = failing(&fleet, "resume a");
    assert!(
        error.contains("instance 'a' is not suspended (it is running)"),
        "{error}"
    );

    // Not enough room where the snapshot goes: refused before anything changes.
    fleet.fireclaw_ok("stop a");
    fleet.host.sh(
        "mount -t tmpfs -o size=1m,mode=0700,uid=$(id -u fcvm-a),gid=$(id -g fcvm-a) tmpfs /srv/firecracker/vm-demo/a/vmm",
    );
    fleet.fireclaw_ok(&format!("start a {WAITS}"));
    let pauses = calls(&fleet, "a").matches("Paused").count();
    let error = failing(&fleet, "suspend a");
    assert!(
        error.contains("not enough room to suspend instance 'a'"),
        "{error}"
    );
    assert_eq!(calls(&fleet, "a").matches("Paused").count(), pauses);
    assert!(!fleet.guests.frozen(&fleet.tap("a")));
    assert!(state_json(&fleet, "a").get("suspended").is_none());
    assert_eq!(
        fleet.unit_states("a").matches("ActiveState=active").count(),
        2
    );
    fleet.fireclaw_ok("stop a");
    fleet.host.sh("umount /srv/firecracker/vm-demo/a/vmm");
    fleet.fireclaw_ok(&format!("start a {WAITS}"));

    // Another snapshot format on this host (a Firecracker upgrade): refused before any load,
    // and start --cold recovers.
    fleet.fireclaw_ok("suspend a");
    let loaded = loads(&fleet, "a");
    fleet
        .host
        .sh("echo v11.0.0 > /run/fireclaw-standin/snapshot-version");
    let error = failing(&fleet, "resume a");
    assert!(
        error.contains(
            "instance 'a' cannot be resumed on this host (Firecracker snapshot format v10.0.0 then, v11.0.0 now)"
        ),
        "{error}"
    );
    assert!(error.contains("fireclaw start a --cold"), "{error}");
    assert_eq!(loads(&fleet, "a"), loaded);
    assert!(state_json(&fleet, "a")["suspended"].is_object());
    let finding = check_named(&doctor(&fleet), "snapshot a");
    assert_eq!(finding["status"], "warn", "{finding}");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("can no longer load it"),
        "{finding}"
    );
    fleet.fireclaw_ok(&format!("start a --cold {WAITS}"));
    assert!(state_json(&fleet, "a").get("suspended").is_none());
    assert_eq!(snapshot_files(&fleet, "a"), "");
    fleet.host.sh("rm /run/fireclaw-standin/snapshot-version");

    // Another host kernel: the same.
    fleet.fireclaw_ok("suspend a");
    fleet.host.sh(
        "cd /var/lib/fireclaw/.vm-a && jq '.suspended.host_kernel = \"5.10.0-old\"' fireclaw.json > j && mv j fireclaw.json",
    );
    let error = failing(&fleet, "start a");
    assert!(error.contains("host kernel 5.10.0-old then"), "{error}");
    assert_eq!(loads(&fleet, "a"), loaded);
    // A disk written after the snapshot: its memory would not match it.
    fleet.host.sh(&format!(
        "cd /var/lib/fireclaw/.vm-a && jq '.suspended.host_kernel = \"{}\"' fireclaw.json > j && mv j fireclaw.json && touch /srv/firecracker/vm-demo/a/images/rootfs.ext4",
        fleet.host.sh("uname -r").trim()
    ));
    let error = failing(&fleet, "resume a");
    assert!(
        error.contains("the disk of instance 'a' was written after its snapshot was taken"),
        "{error}"
    );
    assert_eq!(loads(&fleet, "a"), loaded);
    fleet.fireclaw_ok(&format!("start a --cold {WAITS}"));

    // A load that fails anyway (the file's format is not what was recorded): the start fails
    // once, with the way out, and the unit does not restart in a loop.
    fleet.fireclaw_ok("suspend b");
    fleet.host.sh(
        "echo v11.0.0 > /run/fireclaw-standin/snapshot-version && cd /var/lib/fireclaw/.vm-b && jq '.suspended.format_version = \"v11.0.0\"' fireclaw.json > j && mv j fireclaw.json",
    );
    let error = failing(&fleet, "resume b");
    assert!(
        error.contains("the snapshot of instance 'b' was not loaded")
            && error.contains("fireclaw start b --cold"),
        "{error}"
    );
    std::thread::sleep(Duration::from_secs(5));
    let unit = fleet
        .host
        .sh("systemctl show -p ActiveState,NRestarts firecracker-vmdemo-b.service");
    assert!(!unit.contains("ActiveState=active"), "{unit}");
    assert!(unit.contains("NRestarts=0"), "{unit}");
    let journal = fleet
        .host
        .sh("journalctl --no-pager -o cat -u firecracker-vmdemo-b.service");
    assert!(
        journal.contains("load the snapshot of instance 'b'"),
        "{journal}"
    );
    // systemd never tries it again; an explicit resume does, once, and with Firecracker back
    // to the format the snapshot has, it loads.
    assert!(state_json(&fleet, "b")["suspended"]["loading_since"].is_u64());
    let finding = check_named(&doctor(&fleet), "snapshot b");
    assert!(
        finding["detail"]
            .as_str()
            .unwrap()
            .contains("its last load did not complete"),
        "{finding}"
    );
    fleet.host.sh(
        "rm /run/fireclaw-standin/snapshot-version && cd /var/lib/fireclaw/.vm-b && jq '.suspended.format_version = \"v10.0.0\"' fireclaw.json > j && mv j fireclaw.json",
    );
    let retried = fleet.fireclaw(&format!("resume b {WAITS}"));
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    assert!(String::from_utf8_lossy(&retried.stderr).contains("trying it once more"));
    assert!(state_json(&fleet, "b").get("suspended").is_none());
}
