//! The guest stand-in (docs/ARCHITECTURE.md): for each VM, a sibling systemd-nspawn container that
//! joins a network namespace inside the host sandbox, reached only through the tap that the
//! Firecracker stand-in relays. It is configured only from the seed image fireclaw wrote (read
//! in user space by `guest-init.py`), runs its own systemd and sshd, has an `ubuntu` user with
//! passwordless sudo, and a `docker` stub that records its calls, runs the scripts fed to it with
//! a fake `node`, and serves the gateway's health endpoints.
//!
//! A supervisor thread acts out the VM's life from the handshake files the Firecracker stand-in
//! writes in `/run/fireclaw-guests/<tap>/` (shared with the host sandbox): it boots a guest for
//! each new generation while the stand-in holds `vmm.lock`, halts it (SIGRTMIN+3 to its systemd)
//! on a `shutdown` request, kills it when the stand-in dies, and reports `gone-<generation>` when
//! it has ended, including after a reboot inside the guest.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::sandbox::{Network, Sandbox};

const GUEST_INIT: &str = include_str!("guest/guest-init.py");
const DOCKER_STUB: &str = include_str!("guest/docker-stub.sh");
const FAKE_NODE: &str = include_str!("guest/fake-node.sh");
const GATEWAY: &str = include_str!("guest/gateway.py");

fn write(upper: &Path, path: &str, text: &str, mode: u32) {
    let target = upper.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, text).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn enable(upper: &Path, unit: &str, target: &str) {
    let wants = upper.join(format!("etc/systemd/system/{target}.wants"));
    std::fs::create_dir_all(&wants).unwrap();
    let _ = std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit));
}

/// Lays the guest stand-in's own files, then the test's presets, into a fresh guest disk.
fn prepare_guest(upper: &Path, presets: &[(String, String)]) {
    // sshd is masked in host sandboxes; a guest needs it.
    let _ = std::fs::remove_file(upper.join("etc/systemd/system/ssh.service"));
    write(
        upper,
        "/usr/local/sbin/fireclaw-guest-init",
        GUEST_INIT,
        0o755,
    );
    write(
        upper,
        "/etc/systemd/system/fireclaw-guest-init.service",
        "[Unit]\nDescription=cloud-init stand-in: configure the guest from its seed image\n\
         Before=ssh.service network-online.target\nWants=network-online.target\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/sbin/fireclaw-guest-init\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    enable(upper, "fireclaw-guest-init.service", "multi-user.target");
    let ssh_wants = upper.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&ssh_wants).unwrap();
    let _ = std::os::unix::fs::symlink(
        "/lib/systemd/system/ssh.service",
        ssh_wants.join("ssh.service"),
    );
    write(upper, "/usr/local/bin/docker", DOCKER_STUB, 0o755);
    write(
        upper,
        "/usr/local/lib/docker-stub/bin/node",
        FAKE_NODE,
        0o755,
    );
    write(
        upper,
        "/usr/local/lib/docker-stub/gateway.py",
        GATEWAY,
        0o755,
    );
    write(
        upper,
        "/etc/systemd/system/docker.service",
        "[Unit]\nDescription=Docker stand-in\n\n[Service]\nExecStart=/bin/sleep infinity\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    std::fs::create_dir_all(upper.join("etc/docker-stub")).unwrap();
    for (path, text) in presets {
        write(upper, path, text, 0o644);
    }
}

struct Guest {
    sandbox: Sandbox,
    generation: u64,
    running: bool,
}

/// Runs the guest supervisor for one host sandbox until dropped.
pub struct GuestHost {
    presets: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    guests: Arc<Mutex<HashMap<String, Guest>>>,
    _shared: PathBuf,
}

impl GuestHost {
    /// `host` is the host sandbox: its shared dir, root and PID 1 locate seeds and namespaces.
    pub fn start(host: &Sandbox) -> Self {
        let shared = host.base().join("guests");
        let host_root = host.root();
        let host_leader = host.leader();
        let name_prefix = host
            .base()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let guests: Arc<Mutex<HashMap<String, Guest>>> = Arc::default();
        let presets: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let thread = {
            let (stop, guests, shared) = (stop.clone(), guests.clone(), shared.clone());
            let presets = presets.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let presets = presets.lock().unwrap().clone();
                    supervise(
                        &shared,
                        &host_root,
                        host_leader,
                        &name_prefix,
                        &guests,
                        &presets,
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            presets,
            stop,
            thread: Some(thread),
            guests,
            _shared: shared,
        }
    }

    /// A file every guest created from now on finds on its disk at first boot.
    pub fn preset(&self, path: &str, text: &str) {
        self.presets
            .lock()
            .unwrap()
            .push((path.to_owned(), text.to_owned()));
    }

    /// Reads a file of the guest of `tap`, running or not (from its disk's upper layer, where
    /// everything the guest wrote lands).
    pub fn read(&self, tap: &str, path: &str) -> String {
        let guests = self.guests.lock().unwrap();
        let guest = guests.get(tap).expect("no guest for that tap");
        let upper = guest
            .sandbox
            .base()
            .join("upper")
            .join(path.trim_start_matches('/'));
        std::fs::read_to_string(upper).unwrap_or_default()
    }

    /// Whether the guest of `tap` runs.
    pub fn running(&self, tap: &str) -> bool {
        self.guests
            .lock()
            .unwrap()
            .get(tap)
            .is_some_and(|g| g.running)
    }

    /// Runs a script in the running guest of `tap`.
    pub fn sh(&self, tap: &str, script: &str) -> String {
        let guests = self.guests.lock().unwrap();
        let guest = guests.get(tap).expect("no guest for that tap");
        assert!(guest.running, "the guest of {tap} is not running");
        guest.sandbox.sh(script)
    }

    /// Boot times of guests so far, for the closing notes.
    pub fn boot_secs(&self) -> Vec<f64> {
        self.guests
            .lock()
            .unwrap()
            .values()
            .map(|g| g.sandbox.boot_secs)
            .collect()
    }
}

impl Drop for GuestHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Dropping each guest's Sandbox kills it and removes its disk, even after a panic.
        self.guests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// In the host sandbox: the guest's namespace `g<tap>`, a veth from `v<tap>` to its `eth0`, and
/// the stand-in's relay pointed at `v<tap>`. The guest configures `eth0` itself from its seed.
/// `v<tap>` is only a wire for the relay: without ARP and IPv6 the host's own stack never answers
/// on it, so every guest packet reaches the host through the tap and the bridge, as from a VM.
fn wire_namespace(host_leader: u32, tap: &str) {
    let script = format!(
        "ip netns list | grep -qw g{tap} || {{ ip netns add g{tap} && \
         ip link add v{tap} type veth peer name eth0 netns g{tap} && \
         sysctl -qw net.ipv6.conf.v{tap}.disable_ipv6=1 && ip link set v{tap} arp off up && \
         ip -n g{tap} link set lo up; }}; \
         mkdir -p /run/fireclaw-standin && echo v{tap} > /run/fireclaw-standin/{tap}.peer"
    );
    let status = std::process::Command::new("nsenter")
        .args(["-t", &host_leader.to_string(), "-a", "bash", "-c", &script])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "wiring the guest namespace of {tap} failed"
    );
}

/// Whether the Firecracker stand-in still holds its lock.
fn vmm_alive(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(dir.join("vmm.lock")) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn supervise(
    shared: &Path,
    host_root: &Path,
    host_leader: u32,
    prefix: &str,
    guests: &Mutex<HashMap<String, Guest>>,
    presets: &[(String, String)],
) {
    let Ok(entries) = std::fs::read_dir(shared) else {
        return;
    };
    for entry in entries.flatten() {
        let tap = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let generation = read_u64(&dir.join("generation"));
        let alive = vmm_alive(&dir);
        let mut guests = guests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(guest) = guests.get_mut(&tap)
            && guest.running
        {
            if guest.sandbox.has_exited() {
                guest.sandbox.settle();
                guest.running = false;
                let _ = std::fs::write(dir.join(format!("gone-{}", guest.generation)), "");
            } else if !alive {
                // The VMM died: so does its guest, at once.
                guest.sandbox.kill_keep_disk();
                guest.running = false;
                let _ = std::fs::write(dir.join(format!("gone-{}", guest.generation)), "");
            } else if read_u64(&dir.join("shutdown")) == guest.generation {
                let _ = std::fs::remove_file(dir.join("shutdown"));
                guest.sandbox.signal(libc::SIGRTMIN() + 3);
            }
            continue;
        }
        let booted = guests.get(&tap).map(|g| g.generation).unwrap_or(0);
        if !alive || generation <= booted {
            continue;
        }
        if !guests.contains_key(&tap) {
            wire_namespace(host_leader, &tap);
        }
        let seed = std::fs::read_to_string(dir.join("seed")).unwrap_or_default();
        let seed_on_machine = host_root.join(seed.trim().trim_start_matches('/'));
        let netns = PathBuf::from(format!("/proc/{host_leader}/root/run/netns/g{tap}"));
        let bind = format!(
            "--bind-ro={}:/run/fireclaw-seed.img",
            seed_on_machine.display()
        );
        match guests.get_mut(&tap) {
            Some(guest) => {
                // A new generation of the same VM: same disk, the seed as it is now.
                guest.generation = generation;
                guest.sandbox.boot_again();
                guest.running = true;
            }
            None => {
                let sandbox = Sandbox::boot_with(
                    &format!("{prefix}-g{tap}"),
                    Network::Join(netns),
                    // nspawn grants CAP_NET_ADMIN only with a private network; the guest
                    // configures its own eth0 like a VM does.
                    vec![bind, "--capability=CAP_NET_ADMIN".to_owned()],
                    |upper| prepare_guest(upper, presets),
                );
                guests.insert(
                    tap.clone(),
                    Guest {
                        sandbox,
                        generation,
                        running: true,
                    },
                );
            }
        }
    }
}
