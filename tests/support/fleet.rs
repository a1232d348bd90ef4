//! A host sandbox with base images and a guest supervisor, and helpers to run fireclaw in it.

use std::process::Output;

use super::guest::GuestHost;
use super::sandbox::{BIN_IN_SANDBOX, Sandbox};

const OPENAI_KEY: &str = "sk-openai-lifecycle-secret";

/// Whether a line of `Fleet::host_snapshot` is one of the pieces the first setup makes for
/// every instance and that stay by design after the last destroy (until `host cleanup`): the
/// bridge and chains, the two roots, the lock files, the client key and the notes of what
/// fireclaw changed on the host.
pub fn is_shared_host_piece(line: &str) -> bool {
    line.contains("fc-br0")
        || line.contains("FC-")
        || line.ends_with(".lock")
        || line.starts_with("/var/lib/fireclaw/ssh")
        || matches!(
            line,
            "/srv/firecracker/vm-demo"
                | "/var/lib/fireclaw"
                | "/var/lib/fireclaw/.ip_forward-was-off"
                | "/var/lib/fireclaw/.bridge-made-by-fireclaw"
        )
}

/// A host sandbox and its guests. Guests go first: they join the host's namespaces.
pub struct Fleet {
    pub guests: GuestHost,
    pub host: Sandbox,
}

impl Fleet {
    pub fn new(tag: &str) -> Self {
        let fleet = Self::bare(tag);
        fleet.host.base_images();
        fleet
    }

    /// `new` with extra nspawn binds (`--bind=FROM:TO`), such as another filesystem for FC_ROOT.
    pub fn with_binds(tag: &str, binds: Vec<String>) -> Self {
        let host = Sandbox::boot_for_guests_with(tag, binds);
        let guests = GuestHost::start(&host);
        let fleet = Self { guests, host };
        fleet.host.base_images();
        fleet
    }

    /// A host as a new user has it: no base images yet.
    pub fn bare(tag: &str) -> Self {
        let host = Sandbox::boot_for_guests(tag);
        let guests = GuestHost::start(&host);
        Self { guests, host }
    }

    /// Replaces the base kernel every later setup copies.
    pub fn base_kernel(&self, image: &[u8]) {
        let path = self.host.root().join("srv/firecracker/base/images/vmlinux");
        std::fs::write(path, image).unwrap();
    }

    /// Runs fireclaw in the host sandbox as root, with the stand-in as `firecracker` on PATH.
    pub fn fireclaw(&self, args: &str) -> Output {
        self.host.exec(&format!(
            "export PATH={BIN_IN_SANDBOX}:$PATH; fireclaw {args}"
        ))
    }

    /// Runs fireclaw with extra environment (`NAME=value ...`); stdout ends with `rc=<status>`,
    /// 137 when fireclaw was killed by SIGKILL.
    pub fn fireclaw_env(&self, env: &str, args: &str) -> String {
        let output = self.host.exec(&format!(
            "export PATH={BIN_IN_SANDBOX}:$PATH; {env} fireclaw {args}; echo rc=$?"
        ));
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        )
    }

    /// Units (files and what systemd has loaded), links, firewall rules and fireclaw's
    /// directories, for before/after comparisons. The test's own plumbing (veths `v*`,
    /// namespaces), the lifecycle lock files and the evidence of failed setups, which fireclaw
    /// keeps by design, are left out.
    pub fn host_snapshot(&self) -> String {
        self.host.sh(
            "ls /etc/systemd/system | grep -v '^v[a-z0-9]' ; echo --;              systemctl list-units --all --no-legend --plain 'firecracker-vmdemo-*' 'vmdemo-proxy-*' | awk '{print $1, $2, $3}'; echo --;              ip -br link | awk '{print $1}' | grep -v '^v' ; echo --;              iptables -S; iptables -t nat -S; echo --;              find /var/lib/fireclaw /srv/firecracker/vm-demo -not -path '*/.locks*' -not -path '/var/lib/fireclaw/.failed*' -not -path /var/lib/fireclaw/.vmm-id-next | sort; echo --;              grep -h '^fcvm-' /etc/passwd /etc/group || true",
        )
    }

    /// The main PID of an instance's VM unit (its VMM), as text; "0" when it is not running.
    pub fn vmm_pid(&self, id: &str) -> String {
        self.host
            .sh(&format!(
                "systemctl show -p MainPID --value firecracker-vmdemo-{id}.service"
            ))
            .trim()
            .to_owned()
    }

    pub fn fireclaw_ok(&self, args: &str) -> String {
        let output = self.fireclaw(args);
        assert!(
            output.status.success(),
            "fireclaw {args} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn setup(&self, id: &str, extra: &str) -> String {
        self.fireclaw_ok(&format!(
            "setup --instance {id} --skip-browser-install --disk-size 64M --ssh-timeout 60 --health-timeout 30 {extra}"
        ))
    }

    /// A healthy instance with default flags.
    pub fn healthy(&self, id: &str) -> String {
        self.setup(id, &format!("--openai-api-key {OPENAI_KEY}"))
    }

    pub fn env_value(&self, id: &str, key: &str) -> String {
        self.host.env_value(id, key)
    }

    pub fn tap(&self, id: &str) -> String {
        self.env_value(id, "VM_TAP")
    }

    pub fn guest(&self, id: &str, script: &str) -> String {
        self.guests.sh(&self.tap(id), script)
    }

    /// The fake `node`'s log in the guest: one tab-separated argv per line.
    pub fn node_calls(&self, id: &str) -> Vec<Vec<String>> {
        self.guests
            .read(&self.tap(id), "/var/log/fake-node.log")
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }

    /// The runs of the fake OpenClaw CLI (`node .../openclaw.mjs ...`), each as its argv after
    /// `node`.
    pub fn openclaw_runs(&self, id: &str) -> Vec<Vec<String>> {
        self.node_calls(id)
            .into_iter()
            .filter(|argv| argv.first().is_some_and(|a| a.ends_with("openclaw.mjs")))
            .collect()
    }

    /// The OpenClaw config the fake CLI was given, built as OpenClaw builds it: each
    /// `config set PATH VALUE [--json]` sets one path, each `config patch` merges its object
    /// (objects recursively, null deletes, anything else replaces).
    pub fn fake_openclaw_config(&self, id: &str) -> serde_json::Value {
        let mut config = serde_json::json!({});
        for argv in self.openclaw_runs(id) {
            match argv.get(1..3) {
                Some([config_word, verb]) if config_word == "config" && verb == "set" => {
                    let value = if argv.iter().any(|a| a == "--json") {
                        serde_json::from_str(&argv[4]).unwrap()
                    } else {
                        serde_json::Value::String(argv[4].clone())
                    };
                    let mut target = &mut config;
                    let path: Vec<&str> = argv[3].split('.').collect();
                    for key in &path[..path.len() - 1] {
                        target = target
                            .as_object_mut()
                            .unwrap()
                            .entry(key.to_string())
                            .or_insert_with(|| serde_json::json!({}));
                    }
                    target[path[path.len() - 1]] = value;
                }
                Some([config_word, verb]) if config_word == "config" && verb == "patch" => {
                    let patch = serde_json::from_str(argv.last().unwrap()).unwrap();
                    merge_patch(&mut config, &patch);
                }
                _ => {}
            }
        }
        config
    }

    /// ActiveState and UnitFileState of an instance's VM and proxy units.
    pub fn unit_states(&self, id: &str) -> String {
        self.host.sh(&format!(
            "systemctl show -p ActiveState,UnitFileState firecracker-vmdemo-{id}.service vmdemo-proxy-{id}.service"
        ))
    }

    /// Both units inactive and disabled, as `stop` leaves them.
    pub fn assert_stopped_and_disabled(&self, id: &str) {
        let states = self.unit_states(id);
        assert_eq!(
            states.matches("ActiveState=inactive").count(),
            2,
            "{states}"
        );
        assert_eq!(
            states.matches("UnitFileState=disabled").count(),
            2,
            "{states}"
        );
    }
}

/// `openclaw config patch`'s merge: objects merge recursively, null deletes, anything else
/// replaces.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else if value.is_object() {
            merge_patch(
                object.entry(key.clone()).or_insert(serde_json::Value::Null),
                value,
            );
        } else {
            object.insert(key.clone(), value.clone());
        }
    }
}
