//! The `fireclaw.fleet` collection against two real hosts: two host sandboxes (each a real
//! systemd with `sshd` and container guests) driven over SSH by `ansible-playbook` as an
//! unprivileged user with sudo, each SSH connection entering its sandbox's own network
//! namespace (nothing leaves the namespaces the test made). The collection's example
//! `ansible.cfg` (pipelining on) and a vault-held key are used as a user would.
//!
//! `site.yml` brings declared and placed instances up on both hosts, a second run changes
//! nothing, a move whose destination cannot start leaves the source running, a move carries a
//! disk of several hundred MiB with its token and leaves nothing on the source (the archive
//! never held in the controller's memory), an unreachable host is reported while the other
//! converges, and after `-vvv` runs the key is nowhere: not in the output, not in either
//! host's journal, not in any file but the instances' own 0600 files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::fleet::Fleet;

const KEY: &str = "sk-vaulted-ansible-key-7f3a9c";
const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn cache() -> PathBuf {
    PathBuf::from(
        std::env::var("FIRECLAW_TEST_CACHE").unwrap_or_else(|_| "/var/cache/fireclaw-test".into()),
    )
    .join("ansible")
}

/// A host sandbox that takes SSH logins of `deploy` (passwordless sudo) with `public_key`.
fn ssh_host(tag: &str, public_key: &str) -> Fleet {
    let fleet = Fleet::new(tag);
    fleet.host.sh(&format!(
        "id deploy >/dev/null 2>&1 || useradd -m -s /bin/bash deploy && \
         echo 'deploy ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deploy && chmod 0440 /etc/sudoers.d/deploy && \
         install -d -o deploy -g deploy -m 0700 /home/deploy/.ssh && \
         echo '{public_key}' > /home/deploy/.ssh/authorized_keys && \
         chown deploy:deploy /home/deploy/.ssh/authorized_keys && chmod 0600 /home/deploy/.ssh/authorized_keys && \
         (ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -A)"
    ));
    start_sshd(&fleet);
    fleet
}

/// sshd as a transient unit (the sandbox masks the machine's own ssh.service).
fn start_sshd(fleet: &Fleet) {
    fleet.host.sh(
        "mkdir -p /run/sshd && systemd-run --quiet --unit fc-sshd /usr/sbin/sshd -D -e -o ListenAddress=127.0.0.1",
    );
}

/// The controller: the collection, the example ansible.cfg, an inventory of both hosts and
/// a vault-held key, in one dir (also HOME, so nothing of Ansible's goes elsewhere).
struct Controller {
    dir: tempfile::TempDir,
}

impl Controller {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let collection = root.join("collections/ansible_collections/fireclaw/fleet");
        std::fs::create_dir_all(collection.parent().unwrap()).unwrap();
        assert!(
            Command::new("cp")
                .arg("-r")
                .arg(Path::new(MANIFEST).join("ansible"))
                .arg(&collection)
                .status()
                .unwrap()
                .success()
        );
        std::fs::copy(
            collection.join("examples/ansible.cfg"),
            root.join("ansible.cfg"),
        )
        .unwrap();
        let config = std::fs::read_to_string(root.join("ansible.cfg")).unwrap();
        // The sandboxes' host keys are the machine's own; nothing to pin between test runs.
        std::fs::write(
            root.join("ansible.cfg"),
            config.replace("[defaults]\n", "[defaults]\nhost_key_checking = False\n"),
        )
        .unwrap();
        std::fs::write(
            root.join("vault-password"),
            "correct horse battery staple\n",
        )
        .unwrap();
        assert!(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(root.join("id_ed25519"))
                .status()
                .unwrap()
                .success()
        );
        std::fs::create_dir_all(root.join("inventory/group_vars/all")).unwrap();
        let controller = Self { dir };
        let vaulted = controller.run(
            "ansible-vault",
            &["encrypt_string", "--name", "vault_openai_key", KEY],
        );
        assert_eq!(vaulted.0, 0, "{}", vaulted.1);
        // stdout only: "Encryption successful" goes to stderr and is no YAML.
        let vaulted = vaulted.2[vaulted.2.find("vault_openai_key:").unwrap()..].to_owned();
        std::fs::write(
            controller.path("inventory/group_vars/all/vault.yml"),
            format!("---\n{vaulted}\n"),
        )
        .unwrap();
        controller
    }

    /// The inventory: each host reached as `deploy` through its sandbox's own network namespace.
    fn inventory(&self, hosts: &[(&str, &Fleet)]) {
        let mut inventory = String::from("[fireclaw_hosts]\n");
        for (name, fleet) in hosts {
            inventory.push_str(&format!(
                "{name} ansible_host=127.0.0.1 ansible_user=deploy ansible_ssh_private_key_file={key} \
                 ansible_control_path={dir}/cp-{name} \
                 ansible_python_interpreter=/usr/bin/python3 \
                 ansible_ssh_common_args='-o ProxyCommand=\"nsenter --net=/proc/{leader}/ns/net nc 127.0.0.1 22\" -o UserKnownHostsFile=/dev/null'\n",
                key = self.path("id_ed25519").display(),
                // Both hosts are 127.0.0.1:22 as deploy: one shared SSH master would take
                // every connection to whichever sandbox it reached first.
                dir = self.dir.path().display(),
                leader = fleet.host.leader()
            ));
        }
        std::fs::write(self.path("inventory/hosts"), inventory).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn public_key(&self) -> String {
        std::fs::read_to_string(self.path("id_ed25519.pub"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Declares the fleet's instances and the role's binaries.
    fn declare(&self, instances: &str) {
        let build = Path::new(MANIFEST).join("target/debug");
        std::fs::write(
            self.path("inventory/group_vars/all/fleet.yml"),
            format!(
                "---\nhost_install_packages: false\n\
                 host_fireclaw_binary: {fireclaw}\n\
                 host_firecracker_binary: {firecracker}\n\
                 fireclaw_instances:\n{instances}",
                fireclaw = build.join("fireclaw").display(),
                firecracker = build.join("firecracker_standin").display(),
            ),
        )
        .unwrap();
    }

    /// An Ansible program of the pinned venv, in the controller dir; (exit status, output,
    /// stdout alone).
    fn run(&self, program: &str, args: &[&str]) -> (i32, String, String) {
        let bin = cache().join("lint/bin");
        let output = Command::new(bin.join(program))
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("HOME", self.dir.path())
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
            )
            .env("ANSIBLE_CONFIG", self.path("ansible.cfg"))
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("LANG", "C.UTF-8")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (
            output.status.code().unwrap_or(-1),
            format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
            stdout,
        )
    }

    fn playbook(&self, name: &str, extra: &[&str]) -> (i32, String) {
        let mut args = vec![name];
        args.extend_from_slice(extra);
        let (rc, out, _) = self.run("ansible-playbook", &args);
        (rc, out)
    }
}

fn recap(output: &str, host: &str) -> String {
    output
        .lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .find(|l| l.starts_with(host))
        .unwrap_or_default()
        .to_owned()
}

fn instance(fleet: &Fleet, id: &str) -> Option<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_str(&fleet.fireclaw_ok("list --json")).unwrap();
    list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
}

fn healthy(fleet: &Fleet, id: &str) -> bool {
    let found = instance(fleet, id);
    let up = found.as_ref().is_some_and(|i| i["health"] == "up");
    if !up {
        eprintln!("{id} is not up: {found:?}");
    }
    up
}

/// `fireclaw_instances` for these ids (each on its host, or placed; running unless a state
/// follows the id as `id:state`), the key from the vault.
fn declared(instances: &[(&str, Option<&str>)]) -> String {
    instances
        .iter()
        .map(|(id, host)| {
            let (id, state) = id.split_once(':').unwrap_or((id, "running"));
            format!(
                "  - id: {id}\n    state: {state}\n{}    settings: {{skip_browser_install: true, disk_size: \"1G\", vm_mem_mib: 512, ssh_timeout: 60, health_timeout: 30}}\n    secrets: {{openai_api_key: \"{{{{ vault_openai_key }}}}\"}}\n",
                host.map(|h| format!("    host: {h}\n")).unwrap_or_default()
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root: sandbox"]
fn the_collection_places_converges_moves_and_keeps_keys_out_of_sight() {
    let controller = Controller::new();
    let a = ssh_host("ansa", &controller.public_key());
    let b = ssh_host("ansb", &controller.public_key());
    controller.inventory(&[("hosta", &a), ("hostb", &b)]);
    controller.declare(&declared(&[
        ("alpha", Some("hosta")),
        ("beta", None),
        ("gamma", None),
    ]));
    let mut said = String::new();

    // site.yml: hosts prepared (binaries copied, doctor), placed, converged.
    let (rc, out) = controller.playbook(
        "collections/ansible_collections/fireclaw/fleet/playbooks/site.yml",
        &["-vvv"],
    );
    said.push_str(&out);
    assert_eq!(rc, 0, "{out}");
    assert!(healthy(&a, "alpha"), "{out}");
    // alpha takes memory on hosta, so beta goes to hostb; gamma then ties and goes by
    // inventory order, to hosta.
    assert!(
        out.contains("beta -> hostb") && out.contains("gamma -> hosta"),
        "{out}"
    );
    assert!(healthy(&b, "beta"));
    assert!(healthy(&a, "gamma"));
    let placed =
        std::fs::read_to_string(controller.path("inventory/host_vars/fireclaw-placement.yml"))
            .unwrap();
    assert!(placed.contains("beta: hostb"), "{placed}");

    // Again: nothing changes anywhere.
    let (rc, out) = controller.playbook(
        "collections/ansible_collections/fireclaw/fleet/playbooks/site.yml",
        &["-vvv"],
    );
    said.push_str(&out);
    assert_eq!(rc, 0, "{out}");
    for host in ["hosta", "hostb", "localhost"] {
        assert!(
            recap(&out, host).contains("changed=0"),
            "{host}: {}",
            recap(&out, host)
        );
    }

    // A move whose destination cannot start (the container guest of an imported disk lacks
    // what provisioning put in the source's guest, so a plain start fails there): rolled
    // back, the source running, nothing left on the destination.
    let token = a.fireclaw_ok("token alpha");
    let (rc, out) = controller.playbook(
        "collections/ansible_collections/fireclaw/fleet/playbooks/move.yml",
        &["-e", "instance=alpha", "-e", "to=hostb"],
    );
    said.push_str(&out);
    assert_ne!(rc, 0, "{out}");
    assert!(
        out.contains("failed at \"Start it on the destination\"")
            && out.contains("it runs on hosta again"),
        "{out}"
    );
    assert!(healthy(&a, "alpha"), "{out}");
    assert!(instance(&b, "alpha").is_none());
    assert!(!b.host.ok("test -e /var/lib/fireclaw/.vm-alpha"));

    // The move, with a disk holding 300 MiB: the destination has the source's bytes and
    // token, the source has nothing of it, and the controller never held the archive.
    // The filesystem first grows to the 1G file (a real guest's cloud-init does that at boot;
    // a container guest does not), or 300 MiB would not fit.
    a.fireclaw_ok("stop alpha");
    let planted = a.host.sh(
        "e2fsck -fy /srv/firecracker/vm-demo/alpha/images/rootfs.ext4 >/dev/null 2>&1; \
         resize2fs /srv/firecracker/vm-demo/alpha/images/rootfs.ext4 >/dev/null 2>&1 && \
         head -c 300M /dev/urandom > /root/data && \
         debugfs -w -R 'write /root/data /agent-data' /srv/firecracker/vm-demo/alpha/images/rootfs.ext4 >/dev/null 2>&1 && \
         sha256sum < /root/data | cut -c1-64 && rm /root/data",
    );
    a.fireclaw_ok("start alpha");
    let before = children_max_rss_kib();
    let (rc, out) = controller.playbook(
        "collections/ansible_collections/fireclaw/fleet/playbooks/move.yml",
        &[
            "-e",
            "instance=alpha",
            "-e",
            "to=hostb",
            "-e",
            "fireclaw_move_provision=true",
        ],
    );
    said.push_str(&out);
    assert_eq!(rc, 0, "{out}");
    let rss = children_max_rss_kib();
    assert!(
        rss < 250 * 1024,
        "a controller process peaked at {rss} KiB moving a 300 MiB archive (before: {before} KiB)"
    );
    assert!(healthy(&b, "alpha"), "{out}");
    assert_eq!(b.fireclaw_ok("token alpha"), token);
    assert_eq!(
        b.host.sh(
            "debugfs -R 'cat /agent-data' /srv/firecracker/vm-demo/alpha/images/rootfs.ext4 2>/dev/null | sha256sum | cut -c1-64"
        ),
        planted
    );
    assert!(instance(&a, "alpha").is_none());
    assert!(!a.host.ok(
        "ls -d /var/lib/fireclaw/.vm-alpha /srv/firecracker/vm-demo/alpha /etc/systemd/system/firecracker-vmdemo-alpha.service 2>/dev/null"
    ));
    assert!(
        !controller.path("collections/ansible_collections/fireclaw/fleet/playbooks/fireclaw-moves/alpha.fireclaw").exists()
    );
    let placed =
        std::fs::read_to_string(controller.path("inventory/host_vars/fireclaw-placement.yml"))
            .unwrap();
    assert!(placed.contains("alpha: hostb"), "{placed}");

    // hostb unreachable: reported, and hosta converges (gamma is stopped as now declared),
    // but delta, new, is not made: hostb cannot say whether it holds a delta already.
    controller.declare(&declared(&[
        ("alpha", Some("hostb")),
        ("beta", None),
        ("gamma:stopped", None),
        ("delta", Some("hosta")),
    ]));
    b.host
        .sh("systemctl stop fc-sshd; pkill -KILL -x sshd; true");
    // The persisted SSH master to hostb dies with its connection; its socket goes too.
    let _ = std::fs::remove_file(controller.path("cp-hostb"));
    let (rc, out) = controller.playbook(
        "collections/ansible_collections/fireclaw/fleet/playbooks/site.yml",
        &["-vvv"],
    );
    said.push_str(&out);
    assert_ne!(rc, 0, "{out}");
    assert!(
        recap(&out, "hostb").contains("unreachable=1"),
        "{}",
        recap(&out, "hostb")
    );
    assert!(
        recap(&out, "hosta").contains("failed=0"),
        "{}",
        recap(&out, "hosta")
    );
    assert!(
        out.contains("delta waits: it is on no reachable host, and hostb cannot be asked"),
        "{out}"
    );
    assert!(instance(&a, "delta").is_none(), "{out}");
    let gamma = instance(&a, "gamma").unwrap();
    assert_eq!(gamma["vm"], "inactive", "{gamma}");
    let placed =
        std::fs::read_to_string(controller.path("inventory/host_vars/fireclaw-placement.yml"))
            .unwrap();
    assert!(placed.contains("alpha: hostb"), "{placed}");
    start_sshd(&b);

    // The key, nowhere: not in what Ansible printed at -vvv, not in either journal, and in no
    // file of either host or the controller but the instances' own 0600 files.
    if let Some(at) = said.find(KEY) {
        let from = said[..at]
            .char_indices()
            .rev()
            .nth(600)
            .map_or(0, |(i, _)| i);
        panic!(
            "the key is in the play's output: …{}…",
            &said[from..at + KEY.len()]
        );
    }
    for fleet in [&a, &b] {
        assert!(
            !fleet
                .host
                .ok(&format!("journalctl --no-pager -o cat | grep -qF '{KEY}'")),
            "the key is in a host's journal"
        );
        let found = Command::new("grep")
            .args(["-rlF", "--binary-files=text", KEY])
            .arg(fleet.host.base().join("upper"))
            .output()
            .unwrap();
        // The search reaches the instances' files, so an empty answer means something.
        assert!(
            String::from_utf8_lossy(&found.stdout).contains("/.env"),
            "the key is not even in the instances' own files"
        );
        let files: Vec<String> = String::from_utf8_lossy(&found.stdout)
            .lines()
            .filter(|path| {
                !(path.contains("/var/lib/fireclaw/.vm-")
                    && (path.ends_with("/.env") || path.ends_with("/provision.vars")))
            })
            .map(str::to_owned)
            .collect();
        assert!(files.is_empty(), "the key is in {files:?}");
        for path in String::from_utf8_lossy(&found.stdout).lines() {
            let mode = std::fs::metadata(path).map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o777
            });
            assert_eq!(mode.unwrap(), 0o600, "{path}");
        }
    }
    let found = Command::new("grep")
        .args(["-rlF", "--binary-files=text", KEY])
        .arg(controller.dir.path())
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "the key is in the controller's files: {}",
        String::from_utf8_lossy(&found.stdout)
    );
}

/// The largest resident set any waited-for child of this test reached (`ansible-playbook`
/// and its forks among them), in KiB.
fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is a valid target.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage);
        usage.ru_maxrss
    }
}
