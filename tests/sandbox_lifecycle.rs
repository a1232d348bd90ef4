//! The whole lifecycle end to end: `fireclaw` runs in a host sandbox with the Firecracker
//! stand-in on PATH, and every VM gets a guest stand-in (tests/support/guest.rs) reached only
//! through its tap: setup, provision, start, stop, restart, reboot inside the guest, destroy,
//! concurrency, rollback, a swapped host key, and where secrets may appear.
//!
//! Root only: run through `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Output;

use support::guest::GuestHost;
use support::sandbox::{BIN_IN_SANDBOX, Sandbox};

const OPENAI_KEY: &str = "sk-openai-lifecycle-secret";
const ANTHROPIC_KEY: &str = "sk-ant-lifecycle-secret";
const TELEGRAM_TOKEN: &str = "123456:AAH-lifecycle-bot-secret";

/// A host sandbox and its guests. Guests go first: they join the host's namespaces.
struct Fleet {
    guests: GuestHost,
    host: Sandbox,
}

impl Fleet {
    fn new(tag: &str) -> Self {
        let host = Sandbox::boot_for_guests(tag);
        host.sh(
            "mkdir -p /srv/firecracker/base/images && cd /srv/firecracker/base/images && \
             head -c 1048576 /dev/urandom > vmlinux && truncate -s 32M rootfs.ext4",
        );
        let guests = GuestHost::start(&host);
        Self { guests, host }
    }

    /// Runs fireclaw in the host sandbox as root, with the stand-in as `firecracker` on PATH.
    fn fireclaw(&self, args: &str) -> Output {
        self.host.exec(&format!(
            "export PATH={BIN_IN_SANDBOX}:$PATH; fireclaw {args}"
        ))
    }

    fn fireclaw_ok(&self, args: &str) -> String {
        let output = self.fireclaw(args);
        assert!(
            output.status.success(),
            "fireclaw {args} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn setup(&self, id: &str, extra: &str) -> String {
        self.fireclaw_ok(&format!(
            "setup --instance {id} --skip-browser-install --disk-size 64M --ssh-timeout 60 --health-timeout 30 {extra}"
        ))
    }

    fn env_value(&self, id: &str, key: &str) -> String {
        let env = self
            .host
            .sh(&format!("cat /var/lib/fireclaw/.vm-{id}/.env"));
        env.lines()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_owned()
    }

    fn tap(&self, id: &str) -> String {
        self.env_value(id, "VM_TAP")
    }

    fn guest(&self, id: &str, script: &str) -> String {
        self.guests.sh(&self.tap(id), script)
    }

    /// The fake `node`'s log in the guest: one tab-separated argv per line.
    fn node_calls(&self, id: &str) -> Vec<Vec<String>> {
        self.guest(id, "cat /var/log/fake-node.log 2>/dev/null || true")
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }
}

fn config_sets(calls: &[Vec<String>]) -> Vec<String> {
    calls
        .iter()
        .filter(|argv| argv.get(1).map(String::as_str) == Some("config"))
        .map(|argv| argv[3..].join(" "))
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

    let sets = config_sets(&fleet.node_calls("a"));
    let expected = [
        "gateway.mode local",
        "gateway.bind lan",
        "gateway.auth.mode token",
        "gateway.auth.token ${OPENCLAW_GATEWAY_TOKEN}",
        "gateway.tailscale.mode off",
        "agents.defaults.model.primary openai/gpt-5.5",
        "agents.defaults.skipBootstrap false --json",
        "skills.allowBundled [\"github\",\"tmux\",\"coding-agent\",\"session-logs\",\"skill-creator\"] --json",
        "channels.telegram.enabled false --json",
        "plugins.entries.telegram.enabled false --json",
    ];
    assert_eq!(sets, expected);
    let env_file = fleet.guest("a", "stat -c '%a %U' /home/ubuntu/.openclaw-a/openclaw.env; cat /home/ubuntu/.openclaw-a/openclaw.env");
    assert!(env_file.starts_with("600 ubuntu\n"), "{env_file}");
    assert!(env_file.contains(&format!("OPENAI_API_KEY={OPENAI_KEY}")));
    assert!(env_file.contains(&format!("OPENCLAW_GATEWAY_TOKEN={}", token.trim())));
    eprintln!("guest boots: {:?}", fleet.guests.boot_secs());
}
