//! A private Linux system with a real systemd for root tests (systemd-nspawn on an overlay of the
//! machine's root; docs/ARCHITECTURE.md). Each sandbox has its own cgroup subtree in every mounted
//! hierarchy, its own network namespace, `/sys` and `/dev` (with kvm and tun), and the binaries
//! under test bound read-only at `/opt/fireclaw-test/bin`. A host sandbox (private network) also
//! has real-host device permissions on private nodes (`/dev/kvm` root:kvm 0660, `/dev/net/tun`
//! 0666; the machine's stay as they are) and the stand-in harness, socket-activated, that does
//! the test side of each Firecracker stand-in. Nothing a test does inside reaches the machine.
//! `reboot` powers the system off cleanly and boots the same on-disk upper dir again;
//! `power_cut` kills it without stopping anything first. Dropping a sandbox tears it down:
//! container killed, overlay unmounted, dirs and cgroups removed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN_IN_SANDBOX: &str = "/opt/fireclaw-test/bin";
const ROOT_DIR: &str = "/var/tmp/fireclaw-sandbox";

pub struct Sandbox {
    name: String,
    base: PathBuf,
    nspawn: Option<Child>,
    leader: u32,
    /// Network and bind arguments for systemd-nspawn.
    nspawn_args: Vec<String>,
    /// Seconds the last boot took, for the closing notes.
    pub boot_secs: f64,
}

/// How a sandbox is connected.
pub enum Network {
    /// Its own empty network namespace (a host sandbox).
    Private,
    /// An existing network namespace, by path (a guest joining a namespace of a host sandbox).
    Join(PathBuf),
}

fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 2 && fields[2].starts_with("cgroup")).then(|| PathBuf::from(fields[1]))
        })
        .collect()
}

fn run_ok(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The binaries the tests run inside, from this build.
fn build_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fireclaw"))
        .parent()
        .unwrap()
        .to_owned()
}

impl Sandbox {
    /// Boots a new host sandbox: private network and the binaries under test.
    pub fn boot(tag: &str) -> Self {
        sweep_dead_sandboxes();
        let name = format!("fc-{tag}-{}", std::process::id());
        let _ = std::fs::remove_dir_all(Path::new(ROOT_DIR).join(&name));
        Self::boot_with(&name, Network::Private, Vec::new(), |_| {})
    }

    /// A host sandbox whose VMs get guest stand-ins: `/run/fireclaw-guests` is shared with the
    /// machine, where the guest supervisor reads it.
    pub fn boot_for_guests(tag: &str) -> Self {
        Self::boot_for_guests_with(tag, Vec::new())
    }

    /// `boot_for_guests` with extra nspawn binds (`--bind=FROM:TO`).
    pub fn boot_for_guests_with(tag: &str, extra: Vec<String>) -> Self {
        sweep_dead_sandboxes();
        let name = format!("fc-{tag}-{}", std::process::id());
        let base = Path::new(ROOT_DIR).join(&name);
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("guests")).unwrap();
        let mut binds = vec![format!(
            "--bind={}:/run/fireclaw-guests",
            base.join("guests").display()
        )];
        binds.extend(extra);
        Self::boot_with(&name, Network::Private, binds, |_| {})
    }

    /// Boots a sandbox called `name` with `network`, extra nspawn `binds`, and `prepare` run on
    /// its upper dir before the first boot.
    pub fn boot_with(
        name: &str,
        network: Network,
        binds: Vec<String>,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        assert!(
            is_root(),
            "sandbox tests need root: run them through scripts/test"
        );
        let name = name.to_owned();
        let base = Path::new(ROOT_DIR).join(&name);
        for dir in ["upper", "work", "root", "bin"] {
            std::fs::create_dir_all(base.join(dir)).unwrap();
        }
        std::fs::write(base.join("owner.pid"), std::process::id().to_string()).unwrap();
        // The test binaries, owned by root and not writable by others (the trusted-path rule).
        let build = build_dir();
        for (from, to) in [
            (build.join("fireclaw"), "fireclaw"),
            (build.join("firecracker_standin"), "firecracker"),
            (build.join("sandbox_install"), "sandbox_install"),
            (build.join("standin_harness"), "standin_harness"),
        ] {
            std::fs::copy(&from, base.join("bin").join(to)).unwrap_or_else(|e| {
                panic!(
                    "copy {}: {e} (build with cargo build --workspace)",
                    from.display()
                )
            });
            std::fs::set_permissions(
                base.join("bin").join(to),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        std::fs::set_permissions(base.join("bin"), std::fs::Permissions::from_mode(0o755)).unwrap();
        mask_machine_services(&base.join("upper"));
        if matches!(network, Network::Private) {
            install_host_services(&base.join("upper"));
        }
        prepare(&base.join("upper"));
        let mut nspawn_args = match network {
            Network::Private => vec!["--private-network".to_owned()],
            Network::Join(path) => vec![format!("--network-namespace-path={}", path.display())],
        };
        // No sandbox sees the disks of the others (nor its own) under the machine's /var/tmp.
        nspawn_args.push(format!("--tmpfs={ROOT_DIR}:mode=0700"));
        nspawn_args.extend(binds);
        let mut sandbox = Self {
            name,
            base,
            nspawn: None,
            leader: 0,
            nspawn_args,
            boot_secs: 0.0,
        };
        sandbox.start();
        sandbox
    }

    fn start(&mut self) {
        let started = Instant::now();
        let base = &self.base;
        let lower_upper = format!(
            "lowerdir=/,upperdir={},workdir={}",
            base.join("upper").display(),
            base.join("work").display()
        );
        run_ok(
            "mount",
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &lower_upper,
                base.join("root").to_str().unwrap(),
            ],
        );
        let mut joins = String::new();
        for mount in cgroup_mounts() {
            let dir = mount.join(&self.name);
            std::fs::create_dir_all(&dir).unwrap();
            // A v1 cpuset child accepts no task until it has cpus and mems.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = std::fs::read_to_string(mount.join(file)) {
                    std::fs::write(dir.join(file), value.trim()).unwrap();
                }
            }
            joins.push_str(&format!("echo $$ > '{}/cgroup.procs'; ", dir.display()));
        }
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(base.join("console.log"))
            .unwrap();
        let extra: Vec<String> = self.nspawn_args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "{joins}exec systemd-nspawn --register=no --keep-unit --quiet -D '{root}' \
             {extra} --bind=/dev/kvm --bind=/dev/net/tun --bind-ro='{bin}':{BIN_IN_SANDBOX} \
             --machine='{name}' -b systemd.unit=multi-user.target",
            root = base.join("root").display(),
            bin = base.join("bin").display(),
            name = self.name,
            extra = extra.join(" "),
        );
        let child = Command::new("setsid")
            .args(["bash", "-c", &script])
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .unwrap();
        let nspawn = child.id();
        self.nspawn = Some(child);
        // The container's PID 1 is nspawn's child.
        let deadline = Instant::now() + Duration::from_secs(30);
        self.leader = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                    .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    break pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the sandbox did not start: {}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // Until systemd listens on its private socket, systemctl cannot connect at all.
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = loop {
            let state = self.sh("systemctl is-system-running --wait 2>/dev/null || true");
            // "offline": systemctl reached no manager yet (a busy host boots slowly).
            let answered = !matches!(state.trim(), "" | "offline");
            if answered || Instant::now() > deadline {
                break state;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            matches!(state.trim(), "running" | "degraded"),
            "sandbox systemd is {state}: {}",
            self.sh("systemctl --failed --no-pager || true")
        );
        self.boot_secs = started.elapsed().as_secs_f64();
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The container's PID 1 as seen from the machine (0 when not running).
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// Sends `signal` to the container's PID 1.
    pub fn signal(&self, signal: i32) {
        if self.leader != 0 {
            // SAFETY: kill() with the pid of this sandbox's PID 1.
            unsafe { libc::kill(self.leader as i32, signal) };
        }
    }

    /// Whether the container has ended (halted, rebooted or was killed).
    pub fn has_exited(&mut self) -> bool {
        match self.nspawn.as_mut() {
            None => true,
            Some(child) => child.try_wait().ok().flatten().is_some(),
        }
    }

    /// After the container ended: unmount its root, keeping its disk for `boot_again`.
    pub fn settle(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            let _ = child.wait();
        }
        self.leader = 0;
        let _ = Command::new("umount").arg(self.base.join("root")).output();
    }

    /// Boots the same disk again.
    pub fn boot_again(&mut self) {
        self.start();
    }

    /// Kills the container at once, keeping its disk.
    pub fn kill_keep_disk(&mut self) {
        self.kill();
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.base.join("console.log")).unwrap_or_default()
    }

    /// The sandbox's root as seen from the machine (the overlay's merged dir).
    pub fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    /// Writes `bytes` to the absolute path `inside` the sandbox (mode 0644, parents made), from
    /// the machine's side: binary content a shell line cannot carry, such as a guest kernel.
    pub fn write(&self, inside: &str, bytes: &[u8]) {
        let target = self.root().join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, bytes).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// The base images setup copies: a fixture vmlinux with every driver the guest needs
    /// (setup inspects it) and a 32 MiB rootfs, each made only when absent.
    pub fn base_images(&self) {
        if !self
            .root()
            .join("srv/firecracker/base/images/vmlinux")
            .exists()
        {
            self.write(
                "/srv/firecracker/base/images/vmlinux",
                &super::kernel_fixture::vmlinux_with_everything(),
            );
        }
        // With an init, cloud-init and sshd (empty files: setup only looks for them; the
        // container guest boots its own), and the guest user as a first boot leaves it, with
        // another host's key authorized (an import replaces it).
        self.sh(
            "cd /srv/firecracker/base/images && [ -f rootfs.ext4 ] || { \
               tree=$(mktemp -d) && mkdir -p $tree/usr/sbin $tree/usr/bin $tree/etc/cloud/cloud.cfg.d $tree/home/ubuntu/.ssh && \
               touch $tree/usr/sbin/init $tree/usr/bin/cloud-init $tree/usr/sbin/sshd && \
               printf 'root:x:0:0:root:/root:/bin/bash\\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash\\n' > $tree/etc/passwd && \
               echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherHostKeyOtherHostKeyOtherHostKeyOth other-host' > $tree/home/ubuntu/.ssh/authorized_keys && \
               mkfs.ext4 -q -F -d $tree rootfs.ext4 32M && rm -rf $tree; }",
        );
    }

    /// A value of instance `id`'s `.env` (the last one, as fireclaw reads it), or "".
    pub fn env_value(&self, id: &str, key: &str) -> String {
        let env = self.sh(&format!("cat /var/lib/fireclaw/.vm-{id}/.env"));
        env.lines()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs a bash script inside (all namespaces of the container's PID 1).
    pub fn exec(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "bash", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a bash script inside and returns its stdout; fails the test if it fails.
    pub fn sh(&self, script: &str) -> String {
        let output = self.exec(script);
        assert!(
            output.status.success(),
            "in sandbox: {script}\nexit: {}\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Whether a script succeeds inside.
    pub fn ok(&self, script: &str) -> bool {
        self.exec(script).status.success()
    }

    fn wait_nspawn(&mut self, bound: Duration) -> bool {
        let Some(child) = self.nspawn.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                self.nspawn = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn kill(&mut self) {
        if self.leader != 0 && pid_alive(self.leader) {
            // SAFETY: kill() with a pid we own as the sandbox's PID 1.
            unsafe { libc::kill(self.leader as i32, libc::SIGKILL) };
        }
        if !self.wait_nspawn(Duration::from_secs(20)) {
            if let Some(child) = self.nspawn.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            self.nspawn = None;
        }
        self.leader = 0;
        let _ = Command::new("umount").arg(self.base.join("root")).output();
    }

    /// A clean reboot: systemd stops every unit, then the same disk boots again.
    pub fn reboot(&mut self) {
        let _ = self.exec("systemctl poweroff --no-block");
        if !self.wait_nspawn(Duration::from_secs(90)) {
            panic!("the sandbox did not power off: {}", self.console());
        }
        self.leader = 0;
        run_ok("umount", &[self.base.join("root").to_str().unwrap()]);
        self.start();
    }

    /// A power cut: killed with nothing stopped, then the same disk boots again.
    pub fn power_cut(&mut self) {
        self.kill();
        self.start();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
        remove_sandbox_dirs(&self.base, &self.name);
    }
}

fn remove_sandbox_dirs(base: &Path, name: &str) {
    for mount in cgroup_mounts() {
        remove_cgroup_tree(&mount.join(name));
    }
    let _ = std::fs::remove_dir_all(base);
}

fn kill_cgroup_tree(dir: &Path) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill() on pids found in a sandbox's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // A frozen guest (a suspend's) dies only once thawed: the kill is pending until then, so
    // none of its tasks runs again.
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_cgroup_tree(&entry.path());
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Services the machine image enables for multi-user.target (a database, say) must not start in
/// a sandbox: mask them in the sandbox's upper dir only.
fn mask_machine_services(upper: &Path) {
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants");
    let masks = upper.join("etc/systemd/system");
    std::fs::create_dir_all(&masks).unwrap();
    for entry in std::fs::read_dir(wants).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".service") {
            let _ = std::os::unix::fs::symlink("/dev/null", masks.join(&name));
        }
    }
}

/// Gives a host sandbox real-host device permissions on nodes of its own (docs/ARCHITECTURE.md):
/// the bound nodes are the machine's, and a `chmod` or `chgrp` of them would change the
/// machine's. Each is unmounted and a private node made in its place; were one still bound,
/// its `rm` would fail (EBUSY) and `set -e` would stop before any `chown`. Runs early in every
/// boot (before sysinit.target), so before any VM unit.
const DEVICES_SCRIPT: &str = r#"#!/bin/sh
set -eu
getent group kvm >/dev/null || groupadd --system kvm
private_node() {
    path=$1 major=$2 minor=$3 group=$4 mode=$5
    while findmnt -rn --mountpoint "$path" >/dev/null; do
        umount "$path"
    done
    rm -f "$path"
    mknod -m "$mode" "$path" c "$major" "$minor"
    chown "root:$group" "$path"
}
private_node /dev/kvm 10 232 kvm 0660
private_node /dev/net/tun 10 200 root 0666
"#;

const DEVICES_UNIT: &str = "[Unit]\n\
Description=Real-host device permissions on private /dev/kvm and /dev/net/tun\n\
DefaultDependencies=no\n\
After=systemd-sysusers.service\n\
Before=sysinit.target\n\n\
[Service]\n\
Type=oneshot\n\
RemainAfterExit=yes\n\
ExecStart=/usr/local/sbin/fireclaw-sandbox-devices\n\n\
[Install]\n\
WantedBy=sysinit.target\n";

/// The stand-in harness (standins/src/bin/standin_harness.rs) listens from sockets.target on,
/// before any VM unit starts. Neither unit stops at shutdown (no default dependencies): VM
/// units stopping then still report their calls and wait for their guests through it.
const HARNESS_SOCKET: &str = "[Unit]\n\
Description=Stand-in harness socket\n\
DefaultDependencies=no\n\
Before=sockets.target\n\n\
[Socket]\n\
ListenStream=/run/fireclaw-standin/harness.sock\n\
SocketMode=0666\n\
Accept=no\n\n\
[Install]\n\
WantedBy=sockets.target\n";

fn harness_service() -> String {
    format!(
        "[Unit]\n\
         Description=Stand-in harness: guest handshake, calls log and tap relay of Firecracker stand-ins\n\
         DefaultDependencies=no\n\
         Requires=fireclaw-standin-harness.socket\n\n\
         [Service]\n\
         ExecStart={BIN_IN_SANDBOX}/standin_harness\n"
    )
}

/// Writes and enables the host sandbox's own services into its upper dir.
fn install_host_services(upper: &Path) {
    let write = |path: &str, text: &str, mode: u32| {
        let target = upper.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, text).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write(
        "usr/local/sbin/fireclaw-sandbox-devices",
        DEVICES_SCRIPT,
        0o755,
    );
    write(
        "etc/systemd/system/fireclaw-sandbox-devices.service",
        DEVICES_UNIT,
        0o644,
    );
    write(
        "etc/systemd/system/fireclaw-standin-harness.socket",
        HARNESS_SOCKET,
        0o644,
    );
    write(
        "etc/systemd/system/fireclaw-standin-harness.service",
        &harness_service(),
        0o644,
    );
    for (unit, target) in [
        ("fireclaw-sandbox-devices.service", "sysinit.target"),
        ("fireclaw-standin-harness.socket", "sockets.target"),
    ] {
        let wants = upper.join(format!("etc/systemd/system/{target}.wants"));
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit))
            .unwrap();
    }
}

/// Removes sandboxes whose test process died without tearing them down.
fn sweep_dead_sandboxes() {
    let Ok(entries) = std::fs::read_dir(ROOT_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let owner = std::fs::read_to_string(entry.path().join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if owner.is_some_and(pid_alive) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        for mount in cgroup_mounts() {
            kill_cgroup_tree(&mount.join(&name));
        }
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("umount")
            .arg(entry.path().join("root"))
            .output();
        remove_sandbox_dirs(&entry.path(), &name);
    }
}

pub use fireclaw::host::probe::is_root;
