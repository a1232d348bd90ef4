//! A real guest (docs/ARCHITECTURE.md, "How the tests stand in for a real host"): the kernel,
//! initrd and disk fireclaw prepares boot for real under QEMU's `microvm` machine (TCG),
//! behind the Firecracker stand-in in real-machine mode. What a container guest only imitates
//! is real here: the guest kernel finding its root disk with Firecracker's kernel arguments,
//! the guest's own systemd, cloud-init reading the seed at boot, the network applied by MAC on
//! a virtio NIC, dockerd with bridge and iptables off, a clean shutdown through the power
//! button, and a suspended guest's memory. Emulation is slow: one guest serves many
//! assertions, and each step's time is printed (`--no-capture` shows them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::doctor_report::check_named;
use support::real_guest::{OPENAI_KEY, RealGuestHost};
use support::sandbox::BIN_IN_SANDBOX;
use support::uplink::{self, Outcome};

const ID: &str = "rg";

/// The console without its ANSI colour sequences (systemd colours its status lines).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn timed<T>(what: &str, step: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = step();
    eprintln!(
        "real guest: {what} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    value
}

#[test]
#[ignore = "needs root: sandbox"]
fn real_guest_setup_lifecycle_suspend_export_import_and_destroy() {
    let fleet = RealGuestHost::boot("realguest");
    let before = fleet
        .host
        .sh("ls /etc/systemd/system; ip -br link | awk '{print $1}'");

    // --- setup, end to end ---------------------------------------------------------------
    timed("setup to healthy", || fleet.setup(ID, ""));
    // Provisioning used the image already in the guest, pulled nothing and installed nothing.
    let steps = fleet.guest(
        ID,
        "sudo journalctl -t fireclaw-provision -o cat --no-pager",
    );
    assert!(
        steps.contains(&format!(
            "using {}, already in the guest (pull policy: missing)",
            fleet.parts.image
        )),
        "{steps}"
    );
    // The script's own end, then the host's record of each step's time.
    assert!(steps.contains("\ndone\n"), "{steps}");
    let last = steps.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("fireclaw setup took ") && last.contains("boot to SSH"),
        "{steps}"
    );
    assert!(!steps.contains("pulling"), "{steps}");
    assert!(!steps.contains("installing"), "{steps}");
    // The rootfs drive is vda, and the root mount is on it.
    assert_eq!(fleet.guest(ID, "findmnt -n -o SOURCE /"), "/dev/vda");
    let cmdline = fleet.guest(ID, "cat /proc/cmdline");
    assert!(
        cmdline.ends_with("console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw pci=off"),
        "{cmdline}"
    );
    // cloud-init read the seed from the rootfs, at boot, with no error and no apt run.
    let status = fleet.guest(ID, "cloud-init status --long --wait");
    assert!(status.contains("status: done"), "{status}");
    let result = fleet.guest(ID, "cat /run/cloud-init/result.json");
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["v1"]["errors"], serde_json::json!([]), "{result}");
    let datasource = result["v1"]["datasource"].as_str().unwrap_or_default();
    assert!(
        datasource.contains("/var/lib/cloud/seed/nocloud"),
        "{datasource}"
    );
    // No `packages:` in user-data for this base, so cloud-init ran no apt.
    assert_eq!(
        fleet.guest(ID, "sudo grep -c apt-get /var/log/cloud-init.log || true"),
        "0"
    );
    assert!(
        !fleet
            .guest(ID, "sudo cat /var/lib/cloud/instance/user-data.txt")
            .contains("packages:")
    );
    // The static address, applied by MAC on the virtio NIC.
    let ip = fleet.env_value(ID, "VM_IP");
    let addresses = fleet.guest(ID, "ip -4 -o addr show eth0");
    assert!(addresses.contains(&format!("{ip}/24")), "{addresses}");
    let mac = fleet
        .host
        .sh(&format!(
            "jq -r '.\"network-interfaces\"[0].guest_mac' /srv/firecracker/vm-demo/{ID}/config/vm-config.json"
        ))
        .trim()
        .to_owned();
    assert_eq!(fleet.guest(ID, "cat /sys/class/net/eth0/address"), mac);
    assert_eq!(
        fleet.guest(ID, "readlink -f /sys/class/net/eth0/device/driver"),
        "/sys/bus/virtio/drivers/virtio_net"
    );
    // The host key the guest serves is the one fireclaw pinned before the first boot.
    let pinned = fleet
        .host
        .sh(&format!("cat /var/lib/fireclaw/.vm-{ID}/known_hosts"));
    let served = fleet.guest(ID, "cat /etc/ssh/ssh_host_ed25519_key.pub");
    let served_key = served.split_whitespace().nth(1).unwrap();
    assert!(pinned.contains(served_key), "{pinned} vs {served}");
    // The real dockerd, with bridge and iptables off, on overlay2.
    assert_eq!(
        fleet.guest(ID, "sudo docker info --format '{{.Driver}}'"),
        "overlay2"
    );
    let daemon = fleet.guest(ID, "cat /etc/docker/daemon.json");
    let daemon: serde_json::Value = serde_json::from_str(&daemon).unwrap();
    assert_eq!(daemon["bridge"], "none", "{daemon}");
    assert_eq!(daemon["iptables"], false, "{daemon}");
    assert!(
        !fleet
            .guest(ID, "ip -br link")
            .lines()
            .any(|l| l.starts_with("docker0")),
        "docker made its bridge"
    );
    // The gateway container runs with the host's network and serves the gateway port.
    assert_eq!(
        fleet.guest(
            ID,
            &format!("sudo docker inspect -f '{{{{.HostConfig.NetworkMode}}}}' openclaw-{ID}")
        ),
        "host"
    );
    let health = fleet.guest(ID, "curl -fsS http://127.0.0.1:18789/healthz");
    assert!(health.contains("\"ok\":true"), "{health}");
    // Both gates: the guest's own health script and the host's proxy.
    assert_eq!(
        fleet.guest(ID, &format!("sudo /usr/local/bin/openclaw-health-{ID}.sh")),
        "ok"
    );
    let port = fleet.env_value(ID, "HOST_PORT");
    let proxied = fleet
        .host
        .sh(&format!("curl -fsS http://127.0.0.1:{port}/healthz"));
    assert!(proxied.contains("\"ok\":true"), "{proxied}");
    let token = fleet
        .host
        .sh(&format!("cat /var/lib/fireclaw/.vm-{ID}/.token"))
        .trim()
        .to_owned();
    let unauthorized = fleet.host.sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/v1/models"
    ));
    assert_eq!(unauthorized, "401");
    let authorized = fleet.host.sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/v1/models"
    ));
    assert_eq!(authorized, "200");
    // The provider key reached the guest's env file only.
    let env_file = fleet.guest(
        ID,
        &format!("sudo cat /home/ubuntu/.openclaw-{ID}/openclaw.env"),
    );
    assert!(env_file.contains(OPENAI_KEY));

    // QEMU under the VM unit's limits: its memory (guest memory, TCG's bounded translation
    // cache and QEMU itself) and its threads stay inside MemoryMax= and TasksMax=.
    let vmm = fleet.vm_unit(ID, "MainPID");
    let qemu = fleet.host.sh(&format!("pgrep -P {vmm} qemu-system"));
    let status = fleet.host.sh(&format!("cat /proc/{}/status", qemu.trim()));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    let (peak_kib, threads) = (field("VmHWM:"), field("Threads:"));
    let memory_max: u64 = fleet.vm_unit(ID, "MemoryMax").parse().unwrap();
    let tasks_max: u64 = fleet.vm_unit(ID, "TasksMax").parse().unwrap();
    eprintln!(
        "real guest: QEMU peak RSS {peak_kib} KiB, {threads} threads (MemoryMax {} KiB, TasksMax {tasks_max})",
        memory_max / 1024
    );
    assert!(peak_kib * 1024 < memory_max, "{peak_kib} KiB");
    assert!(threads < tasks_max, "{threads} threads");
    assert_eq!(
        fleet.vm_unit(ID, "MemoryDenyWriteExecute"),
        "yes",
        "the product's hardening is in force"
    );

    // doctor tells the truth about this kernel: its virtio drivers are modules the initrd
    // loads (the guest above booted through them), and iso9660 is no built-in.
    let parts = &fleet.parts;
    // The cache's guest dir holds them under the names doctor looks for.
    let report = fleet.host.exec(&format!(
        "export PATH={BIN_IN_SANDBOX}:$PATH BASE_IMAGES_DIR={}; fireclaw doctor --json",
        parts.kernel.parent().unwrap().display()
    ));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let drivers = check_named(&report, "guest kernel drivers");
    assert_eq!(drivers["status"], "warn", "{drivers}");
    assert!(
        drivers["detail"]
            .as_str()
            .unwrap()
            .starts_with("no built-in virtio-mmio, virtio-blk, virtio-net (read from its strings"),
        "{drivers}"
    );
    let iso9660 = check_named(&report, "guest kernel iso9660");
    assert!(
        iso9660["detail"]
            .as_str()
            .unwrap()
            .starts_with("iso9660 not built in"),
        "{iso9660}"
    );

    // --- lifecycle -----------------------------------------------------------------------
    // stop: a clean guest shutdown, well within the wait that would end in a kill.
    let console_before = fleet.console(ID).len();
    let stopped = Instant::now();
    timed("stop", || fleet.fireclaw_ok(&format!("stop {ID}")));
    let stop_secs = stopped.elapsed().as_secs_f64();
    let console = fleet.console(ID);
    let shutdown = without_colours(&console[console_before..]);
    for line in ["Reached target poweroff.target", "reboot: Power down"] {
        assert!(
            shutdown.contains(line),
            "no '{line}' in the console:\n{shutdown}"
        );
    }
    // Well inside vm-shutdown's 30 s wait, after which it would give up on the guest.
    assert!(stop_secs < 25.0, "stop took {stop_secs:.1} s");
    assert_eq!(fleet.vm_unit(ID, "Result"), "success");

    timed("start to healthy", || {
        fleet.fireclaw_ok(&format!("start {ID}"))
    });
    assert_eq!(fleet.guest(ID, "cloud-init status").trim(), "status: done");
    timed("restart to healthy", || {
        fleet.fireclaw_ok(&format!("restart {ID}"))
    });

    // An in-guest reboot ends the VMM (reboot=k), and the unit's Restart=always brings it back.
    let restarts = fleet.vm_unit(ID, "NRestarts");
    let boot_id = fleet.guest(ID, "cat /proc/sys/kernel/random/boot_id");
    let _ = fleet.fireclaw(&format!("shell {ID} 'sudo systemctl reboot'"));
    timed("in-guest reboot to SSH", || {
        fleet.wait_for("the unit's restart", Duration::from_secs(120), || {
            fleet.vm_unit(ID, "NRestarts") != restarts
        });
        fleet.wait_for("SSH after the reboot", Duration::from_secs(400), || {
            fleet.fireclaw(&format!("shell {ID} true")).status.success()
        });
    });
    assert_ne!(
        fleet.guest(ID, "cat /proc/sys/kernel/random/boot_id"),
        boot_id
    );
    fleet.wait_for("health after the reboot", Duration::from_secs(300), || {
        fleet
            .fireclaw(&format!(
                "shell {ID} 'sudo /usr/local/bin/openclaw-health-{ID}.sh'"
            ))
            .status
            .success()
    });

    // --- suspend and resume --------------------------------------------------------------
    let counter = "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /home/ubuntu/counter; sleep 1; done' >/dev/null 2>&1 & echo $!";
    let pid = fleet.guest(ID, counter);
    let boot_id = fleet.guest(ID, "cat /proc/sys/kernel/random/boot_id");
    let qemu_before = fleet.host.sh("pgrep -f qemu-system");
    std::thread::sleep(Duration::from_secs(3));
    let before_suspend: u64 = fleet.guest(ID, "cat /home/ubuntu/counter").parse().unwrap();
    let suspending = Instant::now();
    timed("suspend", || fleet.fireclaw_ok(&format!("suspend {ID}")));
    let suspend_secs = suspending.elapsed().as_secs();
    // The snapshot: the state file keeps Firecracker's header (its format version reads back
    // through --describe-snapshot) and records QEMU's arguments; the memory file is QEMU's
    // migration stream (its magic "QEVM").
    let vmm_dir = format!("/srv/firecracker/vm-demo/{ID}/vmm");
    let described = fleet.host.sh(&format!(
        "PATH={BIN_IN_SANDBOX}:$PATH firecracker --describe-snapshot {vmm_dir}/snapshot.vmstate"
    ));
    assert_eq!(described.trim(), "v10.0.0");
    assert!(
        fleet
            .host
            .sh(&format!("cat {vmm_dir}/snapshot.vmstate"))
            .contains("\"qemu_args\":[\"-M\",\"microvm,acpi=on,pic=off\""),
        "no QEMU arguments in the state file"
    );
    assert_eq!(
        fleet.host.sh(&format!("head -c 4 {vmm_dir}/snapshot.mem")),
        "QEVM"
    );
    assert!(
        !fleet.host.ok("pgrep -f qemu-system"),
        "QEMU runs while suspended"
    );
    std::thread::sleep(Duration::from_secs(10));
    let resumed = Instant::now();
    let resume = timed("resume to healthy", || {
        fleet.fireclaw_ok(&format!("resume {ID}"))
    });
    let alive = fleet.guest(ID, &format!("kill -0 {pid} && echo alive"));
    assert_eq!(alive, "alive", "the counter process did not keep its PID");
    let count: u64 = fleet.guest(ID, "cat /home/ubuntu/counter").parse().unwrap();
    let since_resume = resumed.elapsed().as_secs();
    // It counts on from where it stopped: it ran up to the pause and after the resume, never
    // through the 10 s suspended (each bound has 2 s of slack).
    assert!(count > before_suspend, "{count} <= {before_suspend}");
    // The same boot, on a new QEMU that took the memory in.
    assert_eq!(
        fleet.guest(ID, "cat /proc/sys/kernel/random/boot_id"),
        boot_id
    );
    let qemu_after = fleet.host.sh("pgrep -f qemu-system");
    assert_ne!(qemu_after, qemu_before);
    assert!(
        fleet
            .host
            .sh(&format!(
                "tr '\\0' ' ' < /proc/{}/cmdline",
                qemu_after.trim()
            ))
            .contains("-incoming defer -S"),
        "the resumed VM did not load its memory"
    );
    assert!(
        count <= before_suspend + suspend_secs + since_resume + 2,
        "the counter ran while suspended: {before_suspend} then {count}"
    );
    // The guest clock, behind by the time suspended, was stepped to the host's.
    let stepped: f64 = resume
        .split(&format!("{ID}: stepped the guest clock by "))
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("the guest clock was not stepped: {resume}"));
    assert!(stepped >= 8.0, "stepped by {stepped} s only");
    // Read between two host readings: an SSH round trip into an emulated guest can take
    // seconds on a busy machine (CI once saw 6), which is not the clock's error.
    let host_before: i64 = fleet.host.sh("date +%s").trim().parse().unwrap();
    let guest_now: i64 = fleet.guest(ID, "date +%s").parse().unwrap();
    let host_after: i64 = fleet.host.sh("date +%s").trim().parse().unwrap();
    assert!(
        guest_now >= host_before - 3 && guest_now <= host_after + 3,
        "guest {guest_now} vs host {host_before}..{host_after}"
    );

    // --- export, destroy, import at another address --------------------------------------
    // The agent's data: a file in its workspace, written through fireclaw's own shell.
    let workspace = format!("/home/ubuntu/openclaw-{ID}/workspace");
    fleet.guest(
        ID,
        &format!("echo 'remember the milk' | sudo tee {workspace}/memory.txt >/dev/null && sync"),
    );
    let token = fleet.fireclaw_ok(&format!("token {ID}"));
    let known_hosts = fleet
        .host
        .sh(&format!("cat /var/lib/fireclaw/.vm-{ID}/known_hosts"));
    let old_ip = fleet.env_value(ID, "VM_IP");
    fleet.fireclaw_ok(&format!("stop {ID}"));
    timed("export", || {
        fleet.fireclaw_ok(&format!("export {ID} -o /root/{ID}.fireclaw"))
    });
    fleet.fireclaw_ok(&format!("destroy {ID} -y"));
    // Its old address taken first, by a setup killed right after its reservation.
    let occupied = fleet.host.sh(&format!(
        "export PATH={}:$PATH; FIRECLAW_TEST_CRASH_AT=setup:reserved fireclaw {} >/dev/null 2>&1; echo rc=$?",
        support::sandbox::BIN_IN_SANDBOX,
        fleet.setup_args("occupant", "")
    ));
    assert!(occupied.contains("rc=137"), "{occupied}");
    assert_eq!(fleet.env_value("occupant", "VM_IP"), old_ip);
    let imported = timed("import --start to healthy", || {
        fleet.fireclaw_ok(&format!(
            "import /root/{ID}.fireclaw --start --ssh-timeout 600 --health-timeout 300"
        ))
    });
    assert!(
        imported.contains(&format!("Instance {ID} is imported and healthy.")),
        "{imported}"
    );
    let new_ip = fleet.env_value(ID, "VM_IP");
    assert_ne!(new_ip, old_ip);
    // The guest itself has the new address (cloud-init rendered the new seed's network at this
    // boot, as the drop-in import wrote tells it), and this host's key logs in (`shell`).
    let addresses = fleet.guest(ID, "ip -4 -o addr show");
    assert!(
        addresses.contains(&format!("inet {new_ip}/24"))
            && !addresses.contains(&format!("inet {old_ip}/")),
        "{addresses}"
    );
    assert_eq!(
        fleet.guest(ID, &format!("sudo cat {workspace}/memory.txt")),
        "remember the milk"
    );
    assert_eq!(fleet.fireclaw_ok(&format!("token {ID}")), token);
    // The host key the guest serves is still the pinned one (shell checks it against this).
    assert_eq!(
        fleet
            .host
            .sh(&format!("cat /var/lib/fireclaw/.vm-{ID}/known_hosts")),
        known_hosts
    );
    assert_eq!(
        fleet.guest(ID, "sudo cat /home/ubuntu/.ssh/authorized_keys"),
        fleet
            .host
            .sh("cat /var/lib/fireclaw/ssh/vmdemo_vm.pub")
            .trim()
    );
    let cloud_init = fleet.guest(ID, "cloud-init status --long || true");
    assert!(cloud_init.contains("status: done"), "{cloud_init}");
    fleet.fireclaw_ok("destroy occupant --force -y");

    // --- destroy -------------------------------------------------------------------------
    fleet.fireclaw_ok(&format!("destroy {ID} -y"));
    let after = fleet
        .host
        .sh("ls /etc/systemd/system; ip -br link | awk '{print $1}'");
    let left: Vec<&str> = after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .filter(|l| !l.contains("fc-br0"))
        .collect();
    assert!(left.is_empty(), "destroy left: {left:?}");
    assert!(
        !fleet.host.ok(&format!(
            "ls -d /var/lib/fireclaw/.vm-{ID} /srv/firecracker/vm-demo/{ID}"
        )),
        "destroy left the instance's files"
    );
    assert!(
        !fleet.host.ok("pgrep -f qemu-system"),
        "a QEMU outlived its VM"
    );
}

/// A second host: one guest is killed in setup right after its first SSH answer, refused by
/// `provision` with a pull policy of `never` and an image it lacks, finished by `provision`
/// with `missing`, then tried against the guest network policy (the host, the metadata
/// address, a private address and another guest refused, the uplink reached); the other
/// guest has no seed in its rootfs and boots, as far as SSH, from what cloud-init finds on
/// `seed.img` alone.
#[test]
#[ignore = "needs root: sandbox"]
fn real_guest_seed_img_egress_and_a_crash_after_boot() {
    let fleet = RealGuestHost::boot("realguest2");
    uplink::add(&fleet.host);

    // A kill right after the first SSH answer, finished by provision.
    let crashed = fleet.host.exec(&format!(
        "export PATH={BIN_IN_SANDBOX}:$PATH FIRECLAW_TEST_CRASH_AT=setup:booted; fireclaw {}; echo rc=$?",
        fleet.setup_args("a", "")
    ));
    let text = String::from_utf8_lossy(&crashed.stdout);
    assert!(text.trim_end().ends_with("rc=137"), "{text}");
    // The pull policy is kept in fireclaw.json: `never` with an image the guest lacks fails
    // before the gateway is touched, naming the image; `missing` with the one it has
    // finishes the instance.
    let pull_policy = || {
        let state = fleet.host.sh("cat /var/lib/fireclaw/.vm-a/fireclaw.json");
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        state["openclaw_pull"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(pull_policy(), "missing");
    let never = fleet.fireclaw(
        "provision a --openclaw-image fireclaw.test/absent:1 --openclaw-pull never --ssh-timeout 400 --health-timeout 60",
    );
    let stderr = String::from_utf8_lossy(&never.stderr);
    assert!(!never.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "image fireclaw.test/absent:1 is not in the guest and the pull policy is never"
        ),
        "{stderr}"
    );
    assert_eq!(pull_policy(), "never");
    assert!(
        !fleet
            .host
            .sh("cat /var/lib/fireclaw/.vm-a/provision.vars /var/lib/fireclaw/.vm-a/.env")
            .contains("OPENCLAW_PULL"),
        "the policy leaked into provision.vars or .env"
    );
    timed("provision after the crash", || {
        fleet.fireclaw_ok(&format!(
            "provision a --openclaw-image {} --openclaw-pull missing --ssh-timeout 400 --health-timeout 300",
            fleet.parts.image
        ))
    });
    assert_eq!(pull_policy(), "missing");
    let list: serde_json::Value =
        serde_json::from_slice(&fleet.fireclaw("list --json").stdout).unwrap();
    assert_eq!(list["instances"][0]["phase"], "provisioned", "{list}");
    assert_eq!(list["instances"][0]["health"], "up", "{list}");

    // The seed from seed.img only: units made, the VM not yet started, the rootfs seed removed.
    let stopped = fleet.host.exec(&format!(
        "export PATH={BIN_IN_SANDBOX}:$PATH FIRECLAW_TEST_CRASH_AT=setup:units; fireclaw {}; echo rc=$?",
        fleet.setup_args("b", "")
    ));
    let text = String::from_utf8_lossy(&stopped.stdout);
    assert!(text.trim_end().ends_with("rc=137"), "{text}");
    let rootfs = "/srv/firecracker/vm-demo/b/images/rootfs.ext4";
    fleet.host.sh(&format!(
        "printf 'rm /var/lib/cloud/seed/nocloud/meta-data\\nrm /var/lib/cloud/seed/nocloud/user-data\\nrm /var/lib/cloud/seed/nocloud/network-config\\nrmdir /var/lib/cloud/seed/nocloud\\n' | debugfs -w -f - {rootfs} >/dev/null 2>&1; \
         ! debugfs -R 'ls /var/lib/cloud/seed' {rootfs} 2>/dev/null | grep -q nocloud"
    ));
    fleet
        .host
        .sh("systemctl start firecracker-vmdemo-b.service");

    // Egress from the healthy guest meanwhile.
    let b_ip = fleet.env_value("b", "VM_IP");
    let connect = |address: &str, port: u16| {
        Outcome::of(&fleet.guest("a", &uplink::connect_script(address, port)))
    };
    uplink::assert_default_policy("a", connect);

    timed("seed.img guest boot to SSH", || {
        fleet.wait_for(
            "SSH of the seed.img guest",
            Duration::from_secs(400),
            || fleet.fireclaw("shell b true").status.success(),
        );
    });
    // SSH may answer before cloud-init's last stage: wait for it (exit 0: done, not degraded).
    let status = fleet.guest("b", "cloud-init status --wait");
    assert!(status.contains("status: done"), "{status}");
    let result = fleet.guest("b", "cat /run/cloud-init/result.json");
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["v1"]["errors"], serde_json::json!([]), "{result}");
    let datasource = result["v1"]["datasource"].as_str().unwrap_or_default();
    assert!(datasource.contains("/dev/vdb"), "{datasource}");
    assert!(!datasource.contains("/var/lib/cloud/seed"), "{datasource}");
    let addresses = fleet.guest("b", "ip -4 -o addr show eth0");
    assert!(addresses.contains(&format!("{b_ip}/24")), "{addresses}");
    // Another guest: a server in b answers the host, yet a cannot reach it. An HTTP server
    // (busybox httpd): it reads the request before it answers, where a server that does not
    // (nc -e echo) closes with unread bytes and the reset can beat the answer to curl.
    fleet.guest(
        "b",
        "sudo mkdir -p /srv/b && echo b-answer | sudo tee /srv/b/index.html >/dev/null && sudo systemd-run --unit=guest-server busybox httpd -f -p 8082 -h /srv/b",
    );
    fleet.wait_for("b's server", Duration::from_secs(60), || {
        let answer = fleet.host.sh(&uplink::connect_script(&b_ip, 8082));
        let answered = Outcome::of(&answer) == Outcome::Answered;
        if !answered {
            eprintln!("b's server, not yet: {answer}");
        }
        answered
    });
    assert_ne!(connect(&b_ip, 8082), Outcome::Answered);

    // A panic ends the VMM (panic=1 reboots, and a reboot ends it, as with Firecracker), and
    // the unit's Restart=always starts it again.
    let (vmm, restarts) = (
        fleet.vm_unit("b", "MainPID"),
        fleet.vm_unit("b", "NRestarts"),
    );
    let _ = fleet.fireclaw("shell b 'echo c | sudo tee /proc/sysrq-trigger'");
    fleet.wait_for(
        "b's restart after its panic",
        Duration::from_secs(120),
        || fleet.vm_unit("b", "NRestarts") != restarts,
    );
    assert!(fleet.console("b").contains("Kernel panic"));
    assert_ne!(fleet.vm_unit("b", "MainPID"), vmm);

    // A guest's own poweroff leaves its VMM running, as Firecracker's does on x86: only a
    // reboot (or the poweroff that follows SendCtrlAltDel) ends it.
    let vmm = fleet.vm_unit("a", "MainPID");
    let _ = fleet.fireclaw("shell a 'sudo systemctl poweroff'");
    fleet.wait_for("a's poweroff", Duration::from_secs(120), || {
        fleet.console("a").contains("reboot: Power down")
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(fleet.vm_unit("a", "ActiveState"), "active");
    assert_eq!(fleet.vm_unit("a", "MainPID"), vmm);

    fleet.fireclaw_ok("destroy b --force -y");
    fleet.fireclaw_ok("destroy a -y");
    assert!(
        !fleet.host.ok("pgrep -f qemu-system"),
        "a QEMU outlived its VM"
    );
}

/// The tag the bake gives the archive's image: no disk had it before, so an instance that runs
/// it runs what the bake loaded.
const BAKED_TAG: &str = "fireclaw.test/baked:1";

/// Paths of the builder's identity that no clone may share (checked absent on the baked disk).
const BUILDER_IDENTITY: [&str; 20] = [
    "/var/lib/dbus/machine-id",
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/credential.secret",
    "/var/lib/docker/engine-id",
    "/var/lib/docker/network/files/local-kv.db",
    "/etc/docker/key.json",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/hostname",
    "/home/ubuntu/.ssh/authorized_keys",
    "/home/ubuntu/.openclaw-fireclaw-bake",
    "/home/ubuntu/openclaw-fireclaw-bake",
    "/root/.bash_history",
    "/var/log/wtmp",
    "/var/log/lastlog",
    "/var/lib/cloud/instance",
    "/var/lib/cloud/seed/nocloud",
    "/etc/systemd/network/10-cloud-init-eth0.network",
    "/var/lib/fireclaw-bake",
];

/// `fireclaw image bake` in the real guest, from the test disk and the test image's archive
/// (tagged anew), then two instances from the baked image: the baked disk is whole, holds none
/// of the builder's identity, and its record is right; each instance reaches healthy with no
/// apt and no pull, and each has its own host key, machine id and address.
#[test]
#[ignore = "needs root: sandbox"]
fn real_guest_bake_then_two_instances_from_the_baked_image() {
    let fleet = RealGuestHost::boot("realbake");
    let parts = &fleet.parts;
    let links = || {
        fleet
            .host
            .sh("ip -br link | awk '{print $1}'")
            .lines()
            .filter(|line| !support::fleet::is_shared_host_piece(line))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let links_before = links();
    let baked = timed("bake", || {
        fleet.fireclaw_ok(&format!(
            "image bake --name realbake --from {} --kernel {} --initrd {} --openclaw-image {BAKED_TAG} \
             --openclaw-image-archive {} --skip-browser-install --vm-vcpu 1 --vm-mem-mib 1024 --ssh-timeout 400",
            parts.rootfs.display(),
            parts.kernel.display(),
            parts.initrd.display(),
            parts.archive.display()
        ))
    });
    let disk = "/srv/firecracker/base/images/realbake.ext4";
    assert!(baked.contains(&format!("Baked {disk}")), "{baked}");
    // Nothing of the builder stays: no unit, tap, account, state or VMM.
    let leftovers = fleet.host.sh(
        "ls -a /etc/systemd/system /var/lib/fireclaw /srv/firecracker/vm-demo 2>/dev/null; cut -d: -f1 /etc/passwd /etc/group",
    );
    assert!(!leftovers.contains("fireclaw-bake"), "{leftovers}");
    assert_eq!(links(), links_before, "a tap outlived the bake");
    assert!(
        !fleet.host.ok("pgrep -f qemu-system"),
        "the builder's QEMU outlived the bake"
    );

    // The disk: whole, shrunk, and none of the builder's identity; the image stays.
    fleet.host.sh(&format!("e2fsck -fn {disk}"));
    let debugfs = |request: &str| {
        String::from_utf8_lossy(
            &fleet
                .host
                .exec(&format!("debugfs -R '{request}' {disk} 2>&1"))
                .stdout,
        )
        .into_owned()
    };
    for path in BUILDER_IDENTITY {
        let stat = debugfs(&format!("stat {path}"));
        assert!(
            stat.contains("File not found"),
            "{path} is on the baked disk:\n{stat}"
        );
    }
    assert_eq!(
        debugfs("cat /etc/machine-id").trim_end().lines().last(),
        Some("uninitialized")
    );
    let journal_dirs = debugfs("ls -l /var/log/journal");
    assert!(
        journal_dirs
            .lines()
            .filter(|l| l.contains("40755") || l.contains("42755"))
            .count()
            <= 2,
        "journals left: {journal_dirs}"
    );
    assert!(
        debugfs("cat /var/lib/docker/image/overlay2/repositories.json").contains(BAKED_TAG),
        "the baked image lost its Docker image"
    );

    // The record.
    let manifest: serde_json::Value = serde_json::from_str(
        &fleet
            .host
            .sh("cat /srv/firecracker/base/images/fireclaw-baked.json"),
    )
    .unwrap();
    let record = &manifest["images"][0];
    let sha256 = |path: &std::path::Path| {
        fleet
            .host
            .sh(&format!("sha256sum {} | cut -c1-64", path.display()))
            .trim()
            .to_owned()
    };
    assert_eq!(record["name"], "realbake");
    assert_eq!(record["file"], "realbake.ext4");
    assert_eq!(record["sha256"], sha256(std::path::Path::new(disk)));
    assert_eq!(record["base"]["sha256"], sha256(&parts.rootfs));
    assert_eq!(record["kernel"]["sha256"], sha256(&parts.kernel));
    assert_eq!(record["openclaw"]["reference"], BAKED_TAG);
    assert_eq!(
        record["openclaw"]["archive"]["sha256"],
        sha256(&parts.archive)
    );
    assert!(
        record["openclaw"]["image_id"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{record}"
    );
    assert_eq!(record["docker_version"], "26.1.5+dfsg1");
    assert_eq!(record["browser"], false);
    let base_size = std::fs::metadata(&parts.rootfs).unwrap().len();
    assert!(
        record["size"].as_u64().unwrap() < base_size,
        "not shrunk: {record}"
    );

    // Two instances from it.
    let setup = |id: &str| {
        fleet.fireclaw_ok(&format!(
            "setup --instance {id} --base-image realbake --base-kernel {} --base-initrd {} \
             --openai-api-key {OPENAI_KEY} --vm-vcpu 1 --vm-mem-mib 1024 --disk-size 3G \
             --skip-browser-install --ssh-timeout 400 --health-timeout 300",
            parts.kernel.display(),
            parts.initrd.display()
        ))
    };
    let mut identities = Vec::new();
    for id in ["c", "d"] {
        let out = timed(&format!("setup of {id} from the baked image"), || setup(id));
        assert!(out.contains(&format!("Instance {id} is healthy.")), "{out}");
        let status = fleet.guest(id, "cloud-init status --wait");
        assert!(status.contains("status: done"), "{status}");
        let journal = fleet.guest(id, "sudo journalctl -t fireclaw-provision --no-pager");
        assert!(
            journal.contains(&format!(
                "using {BAKED_TAG}, already in the guest (pull policy: missing)"
            )),
            "{journal}"
        );
        assert!(
            !journal.contains("pulling") && !journal.contains("installing"),
            "{journal}"
        );
        assert!(
            !fleet
                .guest(id, "sudo cat /var/log/cloud-init.log")
                .contains("apt-get"),
            "cloud-init ran apt"
        );
        identities.push(fleet.guest(
            id,
            "printf '%s\\n' \"$(cat /etc/ssh/ssh_host_ed25519_key.pub)\" \"$(cat /etc/machine-id)\" \"$(ip -4 -o addr show eth0 | awk '{print $4}')\"",
        ));
    }
    let (c, d) = (&identities[0], &identities[1]);
    for (line_c, line_d) in c.lines().zip(d.lines()) {
        assert_ne!(line_c, line_d, "c and d share an identity:\n{c}\n{d}");
        assert_ne!(line_c.trim(), "uninitialized");
    }
    assert_eq!(c.lines().count(), 3, "{c}");
    fleet.fireclaw_ok("destroy c -y");
    fleet.fireclaw_ok("destroy d -y");
}

/// The real OpenClaw (the pinned release, in the published image's shape, built by
/// `scripts/test-deps`) on the real guest with the real Docker: setup to healthy through the
/// proxy, provisioning in one config write (at most three starts of the CLI, counted by the
/// test image's `node` wrapper), the gateway's token check, the config the guest holds being
/// the one provisioning wrote (the same as the container guest's golden), and a suspend and
/// resume back to healthy. Each step's time is printed.
///
/// Not in the test command: under emulation the gateway alone takes well over 15 minutes to
/// come up (docs/TESTING.md: The real OpenClaw on the real guest). Run it alone with
/// `sudo scripts/test-deps --real-openclaw && sudo cargo nextest run --run-ignored all -E
/// 'test(real_guest_runs_the_real_openclaw)'`.
#[test]
#[ignore = "needs root: sandbox"]
fn real_guest_runs_the_real_openclaw_to_healthy_with_its_token_and_through_suspend() {
    const OC: &str = "oc";
    let fleet = RealGuestHost::boot("realopenclaw");
    let openclaw = support::real_guest::RealOpenClaw::cached();
    let parts = &fleet.parts;
    let out = timed("setup with the real OpenClaw to healthy", || {
        fleet.fireclaw_ok(&format!(
            "setup --instance {OC} --base-kernel {} --base-initrd {} --base-rootfs {} \
             --openai-api-key {OPENAI_KEY} --openclaw-image {} --openclaw-pull missing \
             --vm-vcpu {REAL_OPENCLAW_VCPUS} --vm-mem-mib {REAL_OPENCLAW_MEM_MIB} --disk-size 6G \
             --skip-browser-install --ssh-timeout 600 --health-timeout 1500 --json",
            parts.kernel.display(),
            parts.initrd.display(),
            openclaw.rootfs.display(),
            openclaw.image,
        ))
    });
    let json_end = out.rfind('}').unwrap();
    let result: serde_json::Value = serde_json::from_str(&out[..=json_end]).unwrap();
    for step in result["times"]["steps"].as_array().unwrap() {
        eprintln!(
            "real guest: setup step {} took {:.1} s",
            step["name"].as_str().unwrap(),
            step["ms"].as_f64().unwrap() / 1000.0
        );
    }
    assert_eq!(result["healthy"], true, "{result}");

    // One config write and one doctor; the journal names the path and the real release.
    let runs = fleet.guest(
        OC,
        &format!("cat /home/ubuntu/openclaw-{OC}/tools/.openclaw-runs.log"),
    );
    assert_eq!(
        runs.lines().count(),
        2,
        "starts of the OpenClaw CLI:\n{runs}"
    );
    assert!(runs.contains("config patch --stdin"), "{runs}");
    let journal = fleet.guest(
        OC,
        "sudo journalctl -t fireclaw-provision -o cat --no-pager",
    );
    assert!(
        journal.contains("OpenClaw config written by the patch path (OpenClaw 2026.9.6)"),
        "{journal}"
    );
    assert!(journal.contains("fireclaw setup took "), "{journal}");

    // The gateway's token check through the localhost proxy: /tools/invoke refused without
    // the token, answered with it (the token travels in a header file, never on a command line).
    let port = fleet.env_value(OC, "HOST_PORT");
    let token = fleet.fireclaw_ok(&format!("token {OC}"));
    let invoke = |token: Option<&str>| {
        let header = fleet.host.root().join("var/lib/fireclaw-test-auth-header");
        let header_arg = match token {
            Some(token) => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&header)
                    .unwrap();
                std::io::Write::write_all(
                    &mut file,
                    format!("Authorization: Bearer {}\n", token.trim()).as_bytes(),
                )
                .unwrap();
                "-H @/var/lib/fireclaw-test-auth-header"
            }
            None => "",
        };
        let status = fleet.host.sh(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 120 {header_arg} \
             -H 'Content-Type: application/json' --data '{{\"tool\":\"sessions_list\",\"args\":{{}}}}' \
             http://127.0.0.1:{port}/tools/invoke"
        ));
        let _ = std::fs::remove_file(&header);
        status.trim().to_owned()
    };
    assert_eq!(invoke(None), "401");
    assert_eq!(invoke(Some(&token)), "200");

    // The config in the guest is the one provisioning wrote: what the container guest's real
    // OpenClaw wrote for the same settings (tests/openclaw-goldens/openai.json), timestamps
    // aside, and only references to secrets.
    let config = fleet.guest(
        OC,
        &format!("sudo cat /home/ubuntu/.openclaw-{OC}/config/openclaw.json"),
    );
    assert!(!config.contains(OPENAI_KEY) && !config.contains(token.trim()));
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["wizard"]
        .as_object_mut()
        .map(|wizard| wizard.remove("lastRunAt"));
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/openclaw-goldens/openai.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config, golden);

    // Suspend, then resume to healthy: the gateway runs on from memory.
    timed("suspend", || fleet.fireclaw_ok(&format!("suspend {OC}")));
    timed("resume to healthy", || {
        fleet.fireclaw_ok(&format!("resume {OC} --health-timeout 600"))
    });
    assert_eq!(invoke(Some(&token)), "200");
    fleet.fireclaw_ok(&format!("destroy {OC} -y"));
}

/// The real OpenClaw's guest: two vCPUs (Node compiles and collects garbage on threads of its
/// own) and room for the gateway, the doctor and Docker.
const REAL_OPENCLAW_VCPUS: u32 = 2;
const REAL_OPENCLAW_MEM_MIB: u32 = 2048;
