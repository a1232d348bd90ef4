//! The whole lifecycle end to end: `fireclaw` runs in a host sandbox with the Firecracker
//! stand-in on PATH, and every VM gets a guest stand-in (tests/support/guest.rs) reached only
//! through its tap: setup, provision, start, stop, restart, reboot inside the guest, destroy,
//! concurrency, rollback, a swapped host key, and where secrets may appear.
//!
//! Root only: run through `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::fleet::Fleet;
use support::sandbox::BIN_IN_SANDBOX;
use support::secrets::runtime_secret;

const OPENAI_KEY: &str = "sk-openai-lifecycle-secret";
const ANTHROPIC_KEY: &str = "sk-ant-lifecycle-secret";
const TELEGRAM_TOKEN: &str = "123456:AAH-lifecycle-bot-secret";

/// The OpenClaw CLI runs of the fake: their verbs (`config patch`, `doctor --fix ...`).
fn cli_verbs(fleet: &Fleet, id: &str) -> Vec<String> {
    fleet
        .openclaw_runs(id)
        .iter()
        .map(|argv| {
            argv[1..]
                .iter()
                .take_while(|a| !a.starts_with('{'))
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
#[ignore = "needs root: sandbox"]
fn setup_is_healthy_through_both_gates_and_configures_openclaw_without_secrets_in_config() {
    let fleet = Fleet::new("setup");
    let out = fleet.fireclaw_ok(&format!(
        "setup --instance a --skip-browser-install --disk-size 64M --openai-api-key {OPENAI_KEY}"
    ));
    assert!(out.contains("Instance a is healthy."), "{out}");
    let port = fleet.env_value("a", "HOST_PORT");
    let health = fleet
        .host
        .sh(&format!("curl -fsS http://127.0.0.1:{port}/health"));
    assert!(health.contains("\"ok\": true"), "{health}");
    let token = fleet.fireclaw_ok("token a");
    assert_eq!(token.trim().len(), 64);
    assert_eq!(
        fleet
            .host
            .sh("stat -c %a /var/lib/fireclaw/.vm-a/.token")
            .trim(),
        "600"
    );
    assert_eq!(
        fleet
            .host
            .sh("cat /var/lib/fireclaw/.vm-a/fireclaw.json | grep -o '\"phase\": \"[a-z]*\"'")
            .trim(),
        "\"phase\": \"provisioned\""
    );

    // One config write and one doctor: two starts of the CLI for the whole provisioning.
    assert_eq!(
        cli_verbs(&fleet, "a"),
        ["config patch --stdin", "doctor --fix --non-interactive"]
    );
    assert_eq!(
        fleet.fake_openclaw_config("a"),
        serde_json::json!({
            "gateway": {"mode": "local", "bind": "lan",
                        "auth": {"mode": "token", "token": "${OPENCLAW_GATEWAY_TOKEN}"},
                        "tailscale": {"mode": "off"}},
            "agents": {"defaults": {"model": {"primary": "openai/gpt-5.5"}, "skipBootstrap": false}},
            "skills": {"allowBundled": ["github", "tmux", "coding-agent", "session-logs", "skill-creator"]},
            "channels": {"telegram": {"enabled": false}},
            "plugins": {"entries": {"telegram": {"enabled": false}}},
        })
    );
    // The guest's journal says which path ran, and each step's time.
    let journal = fleet.guest("a", "journalctl -t fireclaw-provision --no-pager -o cat");
    assert!(
        journal.contains("OpenClaw config written by the patch path (OpenClaw 2026.9.6)"),
        "{journal}"
    );
    assert!(
        journal.contains("step 'openclaw doctor' took "),
        "{journal}"
    );
    assert!(journal.contains("fireclaw setup took "), "{journal}");
    let env_file = fleet.guest("a", "stat -c '%a %U' /home/ubuntu/.openclaw-a/openclaw.env; cat /home/ubuntu/.openclaw-a/openclaw.env");
    assert!(env_file.starts_with("600 ubuntu\n"), "{env_file}");
    assert!(env_file.contains(&format!("OPENAI_API_KEY={OPENAI_KEY}")));
    assert!(env_file.contains(&format!("OPENCLAW_GATEWAY_TOKEN={}", token.trim())));
    eprintln!("guest boots: {:?}", fleet.guests.boot_secs());
}

/// What the real cloud-init did in the guest of `a`, from its own records and the files it
/// owns: datasource NoCloud from the seed, the user and both keys, /etc/hosts, and the
/// network config rendered for systemd-networkd (matched by MAC, static address, route).
fn assert_cloud_init_configured(fleet: &Fleet, id: &str, ip: &str, mac: &str) {
    // It ends, and says why if it did not go well; its only possible complaint here is the
    // package step (apt cannot reach a mirror from the sandbox; the packages are there).
    let status = fleet.guest(id, "cloud-init status --wait --format json; echo rc=$?");
    let (json, rc) = status.rsplit_once("rc=").unwrap();
    let status: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(rc.trim(), "0", "cloud-init status: {status}");
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["errors"], serde_json::json!([]), "{status}");
    assert!(
        status["detail"]
            .as_str()
            .unwrap()
            .contains("DataSourceNoCloud [seed=/var/lib/cloud/seed/nocloud]"),
        "{status}"
    );
    assert!(
        fleet
            .guest(id, "cat /run/cloud-init/ds-identify.log")
            .contains("NoCloud"),
    );
    let ubuntu = fleet.guest(
        id,
        "id -nG ubuntu; sudo -n -u ubuntu sudo -n true && echo sudo-ok",
    );
    assert!(
        ubuntu.contains("sudo") && ubuntu.contains("docker"),
        "{ubuntu}"
    );
    assert!(ubuntu.contains("sudo-ok"), "{ubuntu}");
    let authorized = fleet.guest(id, "cat /home/ubuntu/.ssh/authorized_keys");
    let client = fleet
        .host
        .sh(&format!("cat {}.pub", fleet.env_value(id, "SSH_KEY_PATH")));
    assert!(authorized.contains(client.trim()), "{authorized}");
    // The host key cloud-init installed is the one fireclaw pinned, and the only one.
    let pinned = fleet.host.sh(&format!(
        "cut -d' ' -f2,3 /var/lib/fireclaw/.vm-{id}/known_hosts"
    ));
    let host_keys = fleet.guest(id, "cat /etc/ssh/ssh_host_*_key.pub");
    assert_eq!(host_keys.lines().count(), 1, "{host_keys}");
    assert!(host_keys.contains(pinned.trim()), "{host_keys} vs {pinned}");
    // manage_etc_hosts: the guest resolves its own name without DNS.
    let hosts = fleet.guest(id, "cat /etc/hosts");
    assert!(
        hosts.lines().any(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some("127.0.1.1") && words.any(|name| name == id)
        }),
        "{hosts}"
    );
    let network = fleet.guest(id, "cat /etc/systemd/network/10-cloud-init-eth0.network");
    for expected in [
        format!("MACAddress={mac}"),
        format!("Address={ip}/24"),
        "Gateway=172.16.0.1".to_owned(),
    ] {
        assert!(network.contains(&expected), "{expected} not in {network}");
    }
    let link = fleet.guest(id, "ip -br addr show eth0; ip route show default");
    assert!(
        link.contains(&format!("{ip}/24")) && link.contains("via 172.16.0.1"),
        "{link}"
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn the_real_cloud_init_configures_the_guest_from_the_seed() {
    let fleet = Fleet::new("cloudinit");
    fleet.healthy("a");
    // The base kernel has iso9660: the guest reads the seed image, as 0.2.0's guests do.
    assert_eq!(fleet.guests.seed_source(&fleet.tap("a")), "image");
    let ip = fleet.env_value("a", "VM_IP");
    let mac = fleet.env_value("a", "VM_MAC");
    assert_cloud_init_configured(&fleet, "a", &ip, &mac);
    // A second boot of the same VM (same instance-id) keeps everything and ends cleanly.
    fleet.fireclaw_ok("restart a --ssh-timeout 60 --health-timeout 30");
    assert_cloud_init_configured(&fleet, "a", &ip, &mac);
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_kernel_without_iso9660_boots_from_the_seed_inside_the_rootfs() {
    let fleet = Fleet::new("rootfsseed");
    fleet.base_kernel(&support::kernel_fixture::vmlinux_without_iso9660());
    fleet.healthy("a");
    // The guest never saw the seed image: only what setup wrote into its rootfs copy.
    assert_eq!(fleet.guests.seed_source(&fleet.tap("a")), "rootfs");
    let ip = fleet.env_value("a", "VM_IP");
    let mac = fleet.env_value("a", "VM_MAC");
    assert_cloud_init_configured(&fleet, "a", &ip, &mac);
    let rootfs = "/srv/firecracker/vm-demo/a/images/rootfs.ext4";
    for name in ["user-data", "meta-data", "network-config"] {
        let in_image = fleet.host.sh(&format!(
            "debugfs -R 'cat /var/lib/cloud/seed/nocloud/{name}' {rootfs} 2>/dev/null | sha256sum"
        ));
        let on_host = fleet.host.sh(&format!(
            "sha256sum < /srv/firecracker/vm-demo/a/config/{name}"
        ));
        assert_eq!(in_image, on_host, "{name}");
    }
    fleet.fireclaw_ok("stop a");
    let fsck = fleet.host.exec(&format!("e2fsck -fn {rootfs}"));
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn telegram_is_enabled_with_the_allowlist_and_a_token_reference() {
    let fleet = Fleet::new("telegram");
    fleet.setup(
        "a",
        &format!(
            "--openai-api-key {OPENAI_KEY} --telegram-token {TELEGRAM_TOKEN} --telegram-users '111, 222'"
        ),
    );
    let config = fleet.fake_openclaw_config("a");
    assert_eq!(
        config["channels"]["telegram"],
        serde_json::json!({"enabled": true, "botToken": "${TELEGRAM_BOT_TOKEN}",
            "dmPolicy": "allowlist", "groupPolicy": "disabled", "allowFrom": ["111", "222"]})
    );
    assert_eq!(config["plugins"]["entries"]["telegram"]["enabled"], true);
    assert!(!config.to_string().contains(TELEGRAM_TOKEN));
    let env_file = fleet.guest("a", "cat /home/ubuntu/.openclaw-a/openclaw.env");
    assert!(env_file.contains(&format!("TELEGRAM_BOT_TOKEN={TELEGRAM_TOKEN}")));
    assert!(
        !fleet.env_value("a", "TELEGRAM_TOKEN").contains("AAH"),
        "the bot token is only in provision.vars"
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn concurrent_setups_get_distinct_allocations_and_one_id_cannot_be_set_up_twice() {
    let fleet = Fleet::new("concurrent");
    // Two ids at once, and a third command racing for one of them.
    let script = format!(
        "export PATH={BIN_IN_SANDBOX}:$PATH OPENAI_API_KEY={OPENAI_KEY}; \
         args='--skip-browser-install --disk-size 64M --ssh-timeout 60 --health-timeout 30'; \
         fireclaw setup --instance a $args > /run/a.out 2>&1 & a=$!; \
         fireclaw setup --instance b $args > /run/b.out 2>&1 & b=$!; \
         fireclaw setup --instance b $args > /run/b2.out 2>&1 & b2=$!; \
         wait $a; echo a=$?; wait $b; echo b=$?; wait $b2; echo b2=$?"
    );
    let codes = fleet.host.sh(&script);
    assert!(
        codes.contains("a=0"),
        "{codes}: {}",
        fleet.host.sh("cat /run/a.out")
    );
    let b_wins = [codes.contains("b=0"), codes.contains("b2=0")];
    assert_eq!(b_wins.iter().filter(|w| **w).count(), 1, "{codes}");
    let loser = if b_wins[0] {
        "/run/b2.out"
    } else {
        "/run/b.out"
    };
    let loser_out = fleet.host.sh(&format!("cat {loser}"));
    assert!(
        loser_out.contains("instance 'b' already exists"),
        "{loser_out}"
    );
    let a = (
        fleet.env_value("a", "VM_IP"),
        fleet.env_value("a", "HOST_PORT"),
        fleet.tap("a"),
    );
    let b = (
        fleet.env_value("b", "VM_IP"),
        fleet.env_value("b", "HOST_PORT"),
        fleet.tap("b"),
    );
    assert!(a.0 != b.0 && a.1 != b.1 && a.2 != b.2, "{a:?} {b:?}");
    for id in ["a", "b"] {
        let port = fleet.env_value(id, "HOST_PORT");
        fleet
            .host
            .sh(&format!("curl -fsS http://127.0.0.1:{port}/healthz"));
    }
    // The loser left nothing of its own and did not harm the winner.
    assert_eq!(
        fleet
            .host
            .sh("find /etc/systemd/system -maxdepth 1 -type f -name '*vmdemo*' | wc -l")
            .trim(),
        "4"
    );
}

fn state_files(fleet: &Fleet, id: &str) -> String {
    fleet.host.sh(&format!(
        "cd /var/lib/fireclaw/.vm-{id} && sha256sum .env provision.vars .token fireclaw.json known_hosts"
    ))
}

#[test]
#[ignore = "needs root: sandbox"]
fn provision_validates_before_writing_and_then_reconfigures_the_guest() {
    let fleet = Fleet::new("provision");
    fleet.setup("a", &format!("--openai-api-key {OPENAI_KEY}"));
    let before = state_files(&fleet, "a");
    let refused = fleet.fireclaw("provision a --model anthropic/claude-opus-4");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("needs an API key: pass --anthropic-api-key or set ANTHROPIC_API_KEY"),
        "{err}"
    );
    assert_eq!(
        state_files(&fleet, "a"),
        before,
        "a refused provision changed state"
    );

    let ip = fleet.env_value("a", "VM_IP");
    let port = fleet.env_value("a", "HOST_PORT");
    let out = fleet.fireclaw_ok(&format!(
        "provision a --model anthropic/claude-opus-4 --anthropic-api-key {ANTHROPIC_KEY} --ssh-timeout 60 --health-timeout 30"
    ));
    assert!(out.contains("Instance a is healthy."), "{out}");
    assert_eq!(fleet.env_value("a", "MODEL"), "anthropic/claude-opus-4");
    assert_eq!(
        (
            fleet.env_value("a", "VM_IP"),
            fleet.env_value("a", "HOST_PORT")
        ),
        (ip, port)
    );
    assert_eq!(
        fleet.fake_openclaw_config("a")["agents"]["defaults"]["model"]["primary"],
        "anthropic/claude-opus-4"
    );
    let env_file = fleet.guest("a", "cat /home/ubuntu/.openclaw-a/openclaw.env");
    assert!(env_file.contains(&format!("ANTHROPIC_API_KEY={ANTHROPIC_KEY}")));
}

#[test]
#[ignore = "needs root: sandbox"]
fn stop_start_restart_and_a_reboot_inside_the_guest_keep_their_promises() {
    let fleet = Fleet::new("lifecycle");
    fleet.setup("a", &format!("--openai-api-key {OPENAI_KEY}"));
    let tap = fleet.tap("a");
    let provisioned = fleet.openclaw_runs("a").len();

    let out = fleet.fireclaw_ok("stop a");
    assert!(out.contains("stays stopped"), "{out}");
    fleet.assert_stopped_and_disabled("a");
    // A session with a stopped VM is refused in fireclaw's words, not ssh's.
    for args in ["shell a true", "logs a --no-follow"] {
        let refused = fleet.fireclaw(args);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{args}");
        assert!(
            err.contains("instance 'a' is not running (its VM unit is inactive")
                && err.contains("start it with: fireclaw start a"),
            "{args}: {err}"
        );
    }
    // The guest service was stopped through the guest's docker before the VMM exited.
    let docker = fleet.guests.read(&tap, "/var/log/docker-stub.log");
    let stopped_at: f64 = docker
        .lines()
        .rfind(|l| l.ends_with("stop openclaw-a"))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("docker stop openclaw-a not seen: {docker}"));
    let calls = fleet
        .host
        .sh(&format!("cat /run/fireclaw-standin/{tap}.calls"));
    assert!(calls.contains("SendCtrlAltDel"), "{calls}");
    let exited_at: f64 = calls
        .lines()
        .rfind(|l| l.starts_with("EXIT "))
        .and_then(|l| l[5..].parse().ok())
        .unwrap();
    assert!(
        stopped_at < exited_at,
        "docker stop at {stopped_at}, VMM exit at {exited_at}"
    );
    assert!(!fleet.guests.running(&tap));

    let out = fleet.fireclaw_ok("start a --ssh-timeout 60 --health-timeout 30");
    assert!(out.contains("Instance a is healthy."), "{out}");
    assert_eq!(
        fleet.openclaw_runs("a").len(),
        provisioned,
        "start reprovisioned"
    );
    assert_eq!(
        fleet
            .unit_states("a")
            .matches("UnitFileState=enabled")
            .count(),
        2
    );

    let out = fleet.fireclaw_ok("restart a --ssh-timeout 60 --health-timeout 30");
    assert!(out.contains("Instance a is healthy."), "{out}");

    // A reboot inside the guest ends the VMM (reboot=k); the unit brings it back by itself.
    let restarts = |f: &Fleet| -> u32 {
        f.host
            .sh("systemctl show -p NRestarts --value firecracker-vmdemo-a.service")
            .trim()
            .parse()
            .unwrap()
    };
    let before = restarts(&fleet);
    let _ = fleet.fireclaw("shell a 'sudo systemctl reboot'");
    let port = fleet.env_value("a", "HOST_PORT");
    fleet.host.sh(&format!(
        "for i in $(seq 300); do [ \"$(systemctl show -p NRestarts --value firecracker-vmdemo-a.service)\" -gt {before} ] && \
         curl -fsS http://127.0.0.1:{port}/healthz >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1"
    ));
    assert!(restarts(&fleet) > before);
    assert_eq!(
        fleet.openclaw_runs("a").len(),
        provisioned,
        "the reboot reprovisioned"
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_failed_provisioning_rolls_back_only_that_instance() {
    let fleet = Fleet::new("rollback");
    fleet.setup("a", &format!("--openai-api-key {OPENAI_KEY}"));
    let a_state = state_files(&fleet, "a");
    let a_port = fleet.env_value("a", "HOST_PORT");
    let before = fleet.host_snapshot();

    fleet.guests.preset("/etc/docker-stub/fail", "");
    let failed = fleet.fireclaw(&format!(
        "setup --instance b --skip-browser-install --disk-size 64M --ssh-timeout 60 --health-timeout 10 --openai-api-key {OPENAI_KEY}"
    ));
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        err.contains("fireclaw: setup of 'b' failed and was rolled back: on instance 'b': `sudo /usr/local/sbin/fireclaw-provision` failed")
            && err.contains("docker stub: failing on purpose")
            && err.contains("\n  kept for you: /var/lib/fireclaw/.failed/b-")
            && err.contains("\n  instance 'b' is gone; change what the cause names, then run setup again"),
        "{err}"
    );
    assert_eq!(fleet.host_snapshot(), before, "b left something behind");
    assert_eq!(state_files(&fleet, "a"), a_state);
    fleet
        .host
        .sh(&format!("curl -fsS http://127.0.0.1:{a_port}/healthz"));
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_guest_that_never_answers_fails_within_its_bound_and_its_console_is_kept() {
    let fleet = Fleet::new("noanswer");
    // A host without an `ubuntu` user (SSH_KEY_PATH unset): the client key goes under
    // STATE_ROOT and no home directory is made.
    fleet.host.sh("rm -rf /home/ubuntu");
    // The guest boots, but its sshd never starts.
    fleet.guests.preset(
        "/etc/systemd/system/ssh.service.d/never.conf",
        "[Service]\nExecStart=\nExecStart=/bin/false\n",
    );
    let started = std::time::Instant::now();
    let out = fleet.fireclaw_env(
        "",
        &format!(
            "setup --instance a --skip-browser-install --disk-size 64M --ssh-timeout 8 --health-timeout 5 --openai-api-key {OPENAI_KEY}"
        ),
    );
    let took = started.elapsed();
    assert!(out.contains("rc=1"), "{out}");
    assert!(!fleet.host.ok("test -e /home/ubuntu"), "a home for no user");
    // Off a terminal the wait is a whole line naming its bound.
    assert!(
        out.contains("\n    a: waiting for SSH (0s of 8s)\n"),
        "{out}"
    );
    // The SSH bound, then the rollback (a stop of a guest that never answered is quick).
    assert!(
        took < std::time::Duration::from_secs(8 + 20),
        "{took:?}: {out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("fireclaw: setup of 'a' failed and was rolled back"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("did not answer within 8s"), "{line}");
    // Under it, on lines of their own: the guest's last words, where they are kept, that the
    // instance is gone, and no advice to start it.
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("  kept for you: "))
        .unwrap_or_else(|| panic!("{out}"));
    let dir = kept.split(' ').next().unwrap();
    assert!(dir.starts_with("/var/lib/fireclaw/.failed/a-"), "{out}");
    assert!(
        out.contains("  the guest's console ended with:\n")
            && out.contains("    [    0.000000] Linux version (fireclaw firecracker stand-in)"),
        "{out}"
    );
    assert!(
        out.contains("  instance 'a' is gone; change what the cause names, then run setup again"),
        "{out}"
    );
    assert!(!out.contains("fireclaw start a"), "{out}");
    assert!(
        out.lines().all(|l| l.len() < 400 && !l.contains(" / ")),
        "{out}"
    );
    let console = fleet.host.sh(&format!(
        "cat {dir}/console.log; stat -c %a {dir} {dir}/console.log"
    ));
    assert!(
        console.contains("Linux version (fireclaw firecracker stand-in)"),
        "{console}"
    );
    assert!(console.contains("700\n600"), "{console}");
    // The rollback did not wait for a clean shutdown of a guest that never came up.
    let stop = fleet
        .host
        .sh("journalctl --no-pager -o cat -u firecracker-vmdemo-a.service");
    assert!(
        stop.contains("its guest never answered SSH since this VM started; stopping it without waiting for a clean shutdown"),
        "{stop}"
    );
    let journal = fleet.host.sh(&format!("cat {dir}/vm-unit.log"));
    assert!(!journal.trim().is_empty(), "the VM unit's journal is empty");
    eprintln!("vm-unit.log: {journal}");
    // Nothing of the instance is left (the shared bridge and chains stay, as after destroy).
    let left = fleet.host.sh(
        "ls -A /var/lib/fireclaw /srv/firecracker/vm-demo; ls /etc/systemd/system | grep vmdemo; ip -br link | grep -c '^ta' || true",
    );
    assert_eq!(
        left,
        "/srv/firecracker/vm-demo:\n\n/var/lib/fireclaw:\n.alloc.lock\n.bridge-made-by-fireclaw\n.failed\n.ip_forward-was-off\n.locks\n.net.lock\n.vmm-id-next\nssh\n0\n",
        "{out}"
    );
    // Ctrl-C during the SSH wait: the wait ends at once, the setup rolls back as a failure
    // would, and the exit status is a shell's for SIGINT. (`set -m`: a script's background job
    // would otherwise start with SIGINT ignored, which fireclaw respects.)
    let interrupted = fleet.host.sh(&format!(
        "set -m; export PATH={BIN_IN_SANDBOX}:$PATH; \
         fireclaw setup --instance a --skip-browser-install --disk-size 64M --ssh-timeout 120 \
           --openai-api-key {OPENAI_KEY} > /run/int.out 2> /run/int.err & pid=$!; \
         for i in $(seq 100); do grep -q 'waiting for SSH (' /run/int.err && break; sleep 0.2; done; \
         start=$(date +%s); kill -INT $pid; wait $pid; echo rc=$?; echo took=$(( $(date +%s) - start )); \
         cat /run/int.err"
    ));
    assert!(interrupted.contains("rc=130"), "{interrupted}");
    let took: u64 = interrupted
        .split("took=")
        .nth(1)
        .and_then(|t| t.lines().next()?.trim().parse().ok())
        .unwrap();
    assert!(took <= 10, "{interrupted}");
    assert!(
        interrupted.contains("==> a: setup interrupted; removing the instance")
            && interrupted.contains("fireclaw: setup of 'a' was interrupted and rolled back: ")
            && interrupted.contains("interrupted (Ctrl-C)")
            && interrupted
                .contains("  instance 'a' is gone; run the same setup again to start over"),
        "{interrupted}"
    );
    assert_eq!(
        fleet.host.sh(
            "ls -A /var/lib/fireclaw /srv/firecracker/vm-demo; ls /etc/systemd/system | grep vmdemo; ip -br link | grep -c '^ta' || true",
        ),
        "/srv/firecracker/vm-demo:\n\n/var/lib/fireclaw:\n.alloc.lock\n.bridge-made-by-fireclaw\n.failed\n.ip_forward-was-off\n.locks\n.net.lock\n.vmm-id-next\nssh\n0\n"
    );
    eprintln!("{out}");
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_failed_health_gate_keeps_the_instance_and_provision_heals_it() {
    let fleet = Fleet::new("healthgate");
    fleet.guests.preset("/etc/docker-stub/no-health", "");
    let failed = fleet.fireclaw(&format!(
        "setup --instance a --skip-browser-install --disk-size 64M --ssh-timeout 60 --health-timeout 4 --openai-api-key {OPENAI_KEY}"
    ));
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(err.contains("was provisioned and is kept"), "{err}");
    assert!(err.contains("fireclaw provision a"), "{err}");
    assert!(fleet.host.ok("test -f /var/lib/fireclaw/.vm-a/.env"));
    fleet.guest("a", "rm /etc/docker-stub/no-health");
    let out = fleet.fireclaw_ok("provision a --ssh-timeout 60 --health-timeout 30");
    assert!(out.contains("Instance a is healthy."), "{out}");
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_swapped_guest_host_key_is_refused_with_the_pin_named() {
    let fleet = Fleet::new("hostkey");
    fleet.setup("a", &format!("--openai-api-key {OPENAI_KEY}"));
    fleet.guest(
        "a",
        "rm -f /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && systemctl restart ssh",
    );
    let refused = fleet.fireclaw("provision a --ssh-timeout 4 --health-timeout 4");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("does not match the pinned key in /var/lib/fireclaw/.vm-a/known_hosts"),
        "{err}"
    );
    assert!(
        !fleet
            .host
            .sh("cat /var/lib/fireclaw/.vm-a/known_hosts")
            .contains("\n\n")
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn destroy_returns_the_host_to_how_it_was_before_that_setup() {
    let fleet = Fleet::new("destroy");
    fleet.setup("a", &format!("--openai-api-key {OPENAI_KEY}"));
    let before = fleet.host_snapshot();
    fleet.setup("b", &format!("--openai-api-key {OPENAI_KEY}"));
    assert_ne!(fleet.host_snapshot(), before);
    // Without a terminal and without -y nothing happens.
    let refused = fleet.fireclaw("destroy b");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("or -y"));
    // logs, bounded and not following: -n lines of the host units' journal, then exit.
    let boots = |id: &str| {
        fleet
            .fireclaw_ok(&format!("logs {id} host --no-follow -n 1000"))
            .matches(&format!("Started firecracker-vmdemo-{id}.service"))
            .count()
    };
    assert_eq!(boots("b"), 1);
    let three = fleet.fireclaw_ok("logs b host --no-follow -n 3");
    assert!(three.lines().count() <= 4, "{three}");
    let guest = fleet.fireclaw_ok("logs b --no-follow -n 2 --since '1 hour ago'");
    assert!(guest.lines().count() <= 3, "{guest}");
    let console = fleet.fireclaw_ok("logs b console --no-follow -n 5");
    assert!(
        console.contains("Linux version (fireclaw firecracker stand-in)"),
        "{console}"
    );
    // A command that has to wait for the instance's lock says so at once, naming the holder.
    let waited = fleet.host.sh(&format!(
        "export PATH={BIN_IN_SANDBOX}:$PATH; lock=/var/lib/fireclaw/.locks/b.lock; \
         printf 'pid 4242: fireclaw provision b\\n' > $lock; \
         flock $lock sleep 3 & sleep 0.3; \
         FIRECLAW_LOCK_WAIT=2 fireclaw stop b 2>/run/wait.err & stopper=$!; \
         sleep 0.8; cat /run/wait.err; echo ---; wait $stopper; echo rc=$?; cat /run/wait.err; wait"
    ));
    let (early, after) = waited.split_once("---").unwrap();
    assert!(
        early.contains("==> b: waiting up to 2s for pid 4242: fireclaw provision b to finish with this instance"),
        "{waited}"
    );
    assert!(
        after.contains("rc=1") && after.contains("is busy"),
        "{waited}"
    );
    fleet.fireclaw_ok("destroy b -y");
    assert_eq!(fleet.host_snapshot(), before);
    // A new instance under the same name (set up quietly): its host journal starts with it.
    let quiet = fleet.fireclaw(&format!(
        "setup -q --json --instance b --skip-browser-install --disk-size 64M --ssh-timeout 60 --health-timeout 30 --openai-api-key {OPENAI_KEY}"
    ));
    assert!(quiet.status.success());
    let quiet_err = String::from_utf8_lossy(&quiet.stderr);
    assert!(
        !quiet_err.contains("==>") && !quiet_err.contains("waiting"),
        "{quiet_err}"
    );
    let result: serde_json::Value = serde_json::from_slice(&quiet.stdout).unwrap();
    assert_eq!(result["id"], "b");
    assert_eq!(result["healthy"], true);
    assert_eq!(
        result["port"].as_u64().unwrap().to_string(),
        fleet.env_value("b", "HOST_PORT")
    );
    assert_eq!(result["token_command"], "sudo fireclaw token b");
    assert_eq!(boots("b"), 1, "lines of the destroyed b are shown");
    fleet.fireclaw_ok("destroy b --force");
    assert_eq!(fleet.host_snapshot(), before);
    // Shared pieces stay for a: bridge, chains, forwarding.
    let a_port = fleet.env_value("a", "HOST_PORT");
    fleet
        .host
        .sh(&format!("curl -fsS http://127.0.0.1:{a_port}/healthz"));
    assert!(fleet.host.ok("ip link show fc-br0"));
}

#[test]
#[ignore = "needs root: sandbox"]
fn host_cleanup_after_the_last_destroy_leaves_network_and_firewall_as_before_the_first_setup() {
    let fleet = Fleet::new("cleanup");
    let network = || {
        fleet.host.sh(
            "ip -br link | awk '{print $1}' | grep -v '^v'; iptables -S; iptables -t nat -S; \
             cat /proc/sys/net/ipv4/ip_forward",
        )
    };
    let before = network();
    fleet.healthy("a");
    let refused = fleet.fireclaw("host cleanup");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("1 instance(s) still exist (a); destroy them first"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_ne!(network(), before, "setup changed nothing?");
    fleet.fireclaw_ok("destroy a -y");
    let out = fleet.fireclaw_ok("host cleanup");
    for expected in [
        "removed firewall chain FC-FWD-fc-br0 and its jump",
        "removed firewall chain FC-IN-fc-br0 and its jump",
        "removed firewall chain FC-NAT-fc-br0 and its jump",
        "removed bridge fc-br0",
        "left /var/lib/fireclaw/ssh: the client key",
    ] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
    assert_eq!(network(), before, "{out}");
    assert!(
        out.contains("left /var/lib/fireclaw/.alloc.lock: and the other lock files"),
        "{out}"
    );
    // A bridge fireclaw did not make is never removed.
    fleet.host.sh("ip link add fc-br0 type bridge");
    let foreign = fleet.fireclaw_ok("host cleanup");
    assert!(
        foreign.contains("left fc-br0: fireclaw did not create it"),
        "{foreign}"
    );
    assert!(fleet.host.ok("ip link show fc-br0"));
    fleet.host.sh("ip link delete fc-br0");
    assert!(
        fleet
            .fireclaw_ok("host cleanup")
            .contains("Nothing of fireclaw's was left on the host network.")
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn no_secret_is_on_any_command_line_or_left_in_guest_tmp() {
    let fleet = Fleet::new("secrets");
    let openai_key = runtime_secret("sk-openai-audit-");
    let anthropic_key = runtime_secret("sk-ant-audit-");
    let bot_secret = runtime_secret("AAH-audit-bot-");
    let telegram_token = format!("123456:{bot_secret}");
    // sshd in the guest runs under strace from its first start, so every command it spawns for
    // fireclaw's sessions is recorded.
    fleet.guests.preset(
        "/etc/systemd/system/ssh.service.d/strace.conf",
        "[Service]\nNotifyAccess=all\nExecStart=\nExecStart=/usr/bin/strace -f -e trace=execve -s 4096 -o /var/log/sshd-execve.log /usr/sbin/sshd -D $SSHD_OPTS\n",
    );
    let traced = |args: &str, trace: &str| {
        fleet.host.sh(&format!(
            "export PATH={BIN_IN_SANDBOX}:$PATH OPENAI_API_KEY={openai_key} ANTHROPIC_API_KEY={anthropic_key}; \
             strace -f -e trace=execve -s 4096 -o {trace} fireclaw {args}"
        ))
    };
    traced(
        &format!(
            "setup --instance a --skip-browser-install --disk-size 64M --ssh-timeout 60 --health-timeout 30 --telegram-token {telegram_token} --telegram-users 1"
        ),
        "/run/setup.trace",
    );
    traced(
        "provision a --model anthropic/claude-opus-4 --ssh-timeout 60 --health-timeout 30",
        "/run/provision.trace",
    );
    let token = fleet.fireclaw_ok("token a").trim().to_owned();
    // The one argv that holds the bot token is the user's own command line (the first exec).
    let host_trace = fleet
        .host
        .sh("tail -n +2 /run/setup.trace; cat /run/provision.trace");
    let guest_trace = fleet.guest("a", "cat /var/log/sshd-execve.log");
    assert!(
        guest_trace.contains("fireclaw-provision"),
        "the guest trace saw no provisioning"
    );
    for secret in [
        openai_key.as_str(),
        anthropic_key.as_str(),
        telegram_token.as_str(),
        bot_secret.as_str(),
        token.as_str(),
    ] {
        let host_hits: Vec<&str> = host_trace
            .lines()
            .filter(|l| l.contains("execve(") && l.contains(secret))
            .collect();
        assert!(
            host_hits.is_empty(),
            "{secret} on a host command line: {host_hits:?}"
        );
        let guest_hits: Vec<&str> = guest_trace
            .lines()
            .filter(|l| l.contains("execve(") && l.contains(secret))
            .collect();
        assert!(
            guest_hits.is_empty(),
            "{secret} on a guest command line: {guest_hits:?}"
        );
        // Made at run time, the secrets are in no checkout or build: nothing is skipped.
        let in_tmp = fleet.guest(
            "a",
            &format!("grep -rl -- '{secret}' /tmp /var/tmp 2>/dev/null || true"),
        );
        assert!(
            in_tmp.trim().is_empty(),
            "{secret} left in guest temp files: {in_tmp}"
        );
    }
}

#[test]
#[ignore = "needs root: sandbox"]
fn the_ssh_wait_gives_up_at_once_when_the_vm_unit_stops() {
    let fleet = Fleet::new("sshwait");
    fleet.setup("a", &format!("--openai-api-key {OPENAI_KEY}"));
    // The guest keeps running but SSH never answers again.
    fleet.guest(
        "a",
        "systemctl mask --now ssh.service ssh.socket >/dev/null 2>&1; systemctl stop ssh.service",
    );
    let started = std::time::Instant::now();
    let out = fleet.host.exec(&format!(
        "export PATH={BIN_IN_SANDBOX}:$PATH; \
         (sleep 4; systemctl stop firecracker-vmdemo-a.service) & \
         fireclaw provision a --ssh-timeout 120 --health-timeout 10"
    ));
    let elapsed = started.elapsed().as_secs();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(elapsed < 60, "waited {elapsed}s instead of giving up");
    assert!(
        err.contains("the VM of instance 'a' stopped while waiting for SSH"),
        "{err}"
    );
    assert!(
        err.contains("  its VM is not running; start it again with: fireclaw start a"),
        "{err}"
    );
    assert!(
        err.contains("  its VM unit firecracker-vmdemo-a.service's journal ended with:\n    "),
        "no journal lines: {err}"
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn destroy_force_cleans_an_instance_whose_state_is_unreadable() {
    let fleet = Fleet::new("forcedestroy");
    let before = fleet.host_snapshot();
    fleet.setup("a", &format!("--openai-api-key {OPENAI_KEY}"));
    let tap = fleet.tap("a");
    fleet
        .host
        .sh("echo 'garbage without equals' > /var/lib/fireclaw/.vm-a/.env");
    let refused = fleet.fireclaw("destroy a");
    assert!(!refused.status.success());
    let out = fleet.fireclaw_ok("destroy a --force");
    assert!(out.contains("destroyed"), "{out}");
    assert!(
        !fleet.host.ok(&format!("ip link show {tap}")),
        "tap left behind"
    );
    // What this first instance brought into existence for everyone stays (see
    // `is_shared_host_piece`).
    let after = fleet.host_snapshot();
    let keep = |s: &str| -> String {
        s.lines()
            .filter(|l| !support::fleet::is_shared_host_piece(l))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(keep(&after), keep(&before));
}

#[test]
#[ignore = "needs root: sandbox"]
fn shell_and_logs_pass_through_and_status_reads_a_live_instance() {
    let fleet = Fleet::new("shell");
    fleet.setup("a", &format!("--openai-api-key {OPENAI_KEY}"));
    let out = fleet.fireclaw("shell a 'echo to-stdout; echo to-stderr >&2; exit 7'");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
    // A pipeline runs in the guest's shell, as with 0.2.0.
    let piped = fleet.fireclaw_ok("shell a 'printf \"1\\n2\\n3\\n\" | head -n 2'");
    assert_eq!(piped, "1\n2\n");
    // logs follow until interrupted, as Ctrl-C does.
    let follow = |source: &str| {
        let out = fleet.host.exec(&format!(
            "export PATH={BIN_IN_SANDBOX}:$PATH; timeout --preserve-status -s INT 3 fireclaw logs a {source}; echo \"exit=$?\""
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let host = follow("host");
    assert!(host.contains("Firecracker VM (a)"), "{host}");
    assert!(
        host.contains("vmdemo-proxy-a") || host.contains("Localhost proxy for VM (a)"),
        "{host}"
    );
    let guest = follow("guest");
    assert!(
        guest.contains("openclaw-a.service") || guest.contains("OpenClaw gateway (a)"),
        "{guest}"
    );
    for text in [&host, &guest] {
        assert!(text.contains("exit="), "the follower did not end: {text}");
    }
    let status = fleet.fireclaw_ok("status a --json");
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["health"], "up");
    assert_eq!(json["guest_service"], "active");
    assert_eq!(json["phase"], "provisioned");
}

/// A VMM that dies as it starts (what Firecracker does when this host's KVM cannot run the
/// guest): the failed setup quotes the VMM's own last words, keeps its log with the console's
/// and gives no advice to start what is gone; an instance kept by a failed provision whose VM
/// keeps dying shows as crash-looping in `list`, `status --json` and `doctor`.
#[test]
#[ignore = "needs root: sandbox"]
fn a_vmm_that_dies_is_quoted_and_kept_and_a_crash_loop_is_named() {
    let fleet = Fleet::new("vmmdies");
    let knob = "/run/fireclaw-standin/kvm-internal-error";
    fleet.host.sh(&format!(
        "mkdir -p /run/fireclaw-standin && echo 1 > {knob}"
    ));
    let out = fleet.fireclaw_env(
        "",
        &format!(
            "setup --instance a --skip-browser-install --disk-size 64M --ssh-timeout 120 --openai-api-key {OPENAI_KEY}"
        ),
    );
    assert!(out.contains("rc=1"), "{out}");
    let headline = out
        .lines()
        .find(|l| l.starts_with("fireclaw: setup of 'a' failed and was rolled back: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        headline.contains(
            "the VM of instance 'a' is restarting: its VMM exited and systemd starts it again"
        ) && headline.ends_with(" while waiting for SSH"),
        "{headline}"
    );
    for line in [
        "  the VMM's last words: Received KVM_EXIT_INTERNAL_ERROR signal; Firecracker exiting with error. exit_code=1",
        "  likely cause: this host's KVM cannot run the guest (nested or restricted virtualisation, or a guest kernel this KVM refuses); check the host with: fireclaw doctor",
        "  instance 'a' is gone; change what the cause names, then run setup again",
    ] {
        assert!(out.contains(&format!("{line}\n")), "{line} missing:\n{out}");
    }
    assert!(!out.contains("fireclaw start"), "{out}");
    assert!(
        out.lines()
            .all(|l| l.len() < 400 && !l.contains(" / ") && !l.contains("\\\"")),
        "{out}"
    );
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("  kept for you: "))
        .unwrap_or_else(|| panic!("{out}"));
    let dir = kept.split(' ').next().unwrap();
    assert!(kept.contains("firecracker.log"), "{kept}");
    assert!(
        fleet
            .host
            .sh(&format!("cat {dir}/firecracker.log"))
            .contains("Received KVM_EXIT_INTERNAL_ERROR signal"),
        "the VMM's log is not in the evidence"
    );

    // A kept instance whose VM starts dying: its guest no longer answers SSH, and each VMM
    // lives 16 s (so systemd's start limit of 5 in 60 s never stops the loop).
    fleet.host.sh(&format!("rm {knob}"));
    fleet.setup("b", &format!("--openai-api-key {OPENAI_KEY}"));
    fleet.guest("b", "systemctl mask ssh.service ssh.socket >/dev/null 2>&1");
    fleet.host.sh(&format!(
        "echo 16 > {knob}; systemctl kill -s KILL firecracker-vmdemo-b.service"
    ));
    let failed = fleet.fireclaw_env("", "provision b --ssh-timeout 120 --health-timeout 5");
    assert!(failed.contains("rc=1"), "{failed}");
    assert!(
        failed.contains("fireclaw: instance 'b' is kept: ")
            && failed.contains("  the VMM's last words: Received KVM_EXIT_INTERNAL_ERROR signal")
            && failed.contains("  its VM stays up: the unit is enabled and systemd starts the VM again whenever it exits (")
            && failed.contains("stop it with: fireclaw stop b")
            && failed.contains("  see the whole console with: fireclaw logs b console; once the cause is fixed: fireclaw provision b"),
        "{failed}"
    );
    fleet.host.sh(
        "for i in $(seq 150); do [ \"$(systemctl show -p NRestarts --value firecracker-vmdemo-b.service)\" -ge 4 ] && exit 0; sleep 1; done; exit 1",
    );
    let list = fleet.fireclaw_ok("list");
    let row = list
        .lines()
        .find(|l| l.starts_with("b "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains(" crash-looping "), "{list}");
    assert!(
        list.contains("b: the VM keeps dying as it starts ("),
        "{list}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&fleet.fireclaw_ok("status b --json")).unwrap();
    assert_eq!(status["crash_looping"], true, "{status}");
    assert!(status["restarts"].as_u64().unwrap() >= 4, "{status}");
    let doctor: serde_json::Value =
        serde_json::from_slice(&fleet.fireclaw("doctor --json").stdout).unwrap();
    let check = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "instance b VM")
        .unwrap_or_else(|| panic!("{doctor}"));
    assert_eq!(check["status"], "warn", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("see why with: fireclaw logs b console"),
        "{check}"
    );
    fleet.host.sh(&format!("rm {knob}"));
    fleet.fireclaw_ok("stop b");
}
