//! The guest stand-in (docs/ARCHITECTURE.md): for each VM, a sibling systemd-nspawn container that
//! joins a network namespace inside the host sandbox, reached only through the tap that the
//! stand-in harness relays for the Firecracker stand-in. Its NIC carries the MAC the Firecracker config gives. It is
//! configured by the real, pinned cloud-init (installed into the guest's disk only, from the
//! cache `scripts/test-deps` fills) through its own NoCloud datasource, from the seed fireclaw
//! wrote, as a VM with the instance's kernel would see it (`SeedSource`): the seed image's files
//! (extracted in user space, because this kernel cannot mount ISO 9660) when the guest kernel
//! has iso9660, otherwise only the seed dir inside the rootfs image (read with debugfs). They
//! land in `/var/lib/cloud/seed/nocloud/`, where cloud-init looks inside a guest. cloud-init
//! then creates the `ubuntu` user, installs the authorized key and the pinned host key, writes
//! `/etc/hosts`, and renders the network config for systemd-networkd, which applies it. The guest
//! runs its own systemd and sshd, and a `docker` stub that records its calls. By default the stub
//! runs the scripts fed to it with a fake `node` and serves the health endpoints from a fake
//! gateway; after `use_real_openclaw()`, guests get the pinned, real OpenClaw and Node bound
//! read-only (`/opt/openclaw`, `/app` linking into it as in the image, `/opt/node`) and the stub
//! runs the real CLI and gateway (`guest/docker-stub.sh`).
//!
//! Two stalls of a VM without internet are cut short, since nothing here can reach one: DNS
//! lookups are refused at once (the resolver is the guest's own loopback, where nothing
//! listens) instead of waiting for public resolvers to time out, and apt (user-data's
//! `packages:`, which the machine already has) does not retry. cloud-init's status is
//! asserted (`sandbox_lifecycle::the_real_cloud_init_configures_the_guest_from_the_seed`).
//!
//! A supervisor thread acts out the VM's life from the handshake files the stand-in harness writes
//! for each Firecracker stand-in in `/run/fireclaw-guests/<tap>/` (shared with the host sandbox):
//! it boots a guest for each new generation while the harness holds `vmm.lock` (as long as that
//! stand-in lives), halts it (SIGRTMIN+3 to its systemd) on a `shutdown` request, kills it when
//! the stand-in dies, and reports `gone-<generation>` when it has ended, including after a reboot
//! inside the guest. It pauses and resumes a guest by freezing and thawing its container's cgroup
//! (the `request`s the harness writes for the stand-in's `PATCH /vm`), and keeps a frozen guest
//! whose stand-in died after a snapshot of that pause, named by the snapshot's token, until a
//! load's generation attaches it (`attach`; once per token) or a cold boot replaces it.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::real_parts::cache_dir;
use super::sandbox::{Network, Sandbox};

const DOCKER_STUB: &str = include_str!("guest/docker-stub.sh");
const FAKE_NODE: &str = include_str!("guest/fake-node.sh");
const FAKE_NPX: &str = include_str!("guest/fake-npx.sh");
const REAL_NODE: &str = include_str!("guest/real-node.sh");
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

/// The docker stub's switch to the real OpenClaw.
const REAL_OPENCLAW_MARKER: &str = "/etc/docker-stub/real-openclaw";

/// Where the guest finds the real OpenClaw's npm prefix and the real Node (bound read-only
/// from the cache `scripts/test-deps` fills). `/app`, where the image keeps OpenClaw, links to
/// the package inside that prefix, so Node resolves its dependencies beside it.
const OPENCLAW_PREFIX_IN_GUEST: &str = "/opt/openclaw";
const NODE_IN_GUEST: &str = "/opt/node";

/// The binds of the real OpenClaw the cache names `link` (`openclaw`, the pinned release, or
/// `openclaw-fallback`, the older one without `config patch`).
fn real_openclaw_binds(link: &str) -> Vec<String> {
    let cache = cache_dir();
    let mut binds = Vec::new();
    let package = std::fs::canonicalize(cache.join(link)).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run scripts/test-deps as root (the README's test command does)",
            cache.join(link).display()
        )
    });
    // .../openclaw-<version>/node_modules/openclaw → the prefix .../openclaw-<version>.
    let prefix = package.parent().and_then(Path::parent).unwrap();
    let node = std::fs::canonicalize(cache.join("node")).unwrap();
    binds.push(format!(
        "--bind-ro={}:{OPENCLAW_PREFIX_IN_GUEST}",
        prefix.display()
    ));
    binds.push(format!("--bind-ro={}:{NODE_IN_GUEST}", node.display()));
    binds
}

/// cloud-init's units, as its package enables them (the generator then starts
/// `cloud-init.target` when `ds-identify` finds a datasource).
const CLOUD_INIT_UNITS: [&str; 5] = [
    "cloud-init-main.service",
    "cloud-init-local.service",
    "cloud-init-network.service",
    "cloud-config.service",
    "cloud-final.service",
];

/// The guest stand-in's settings for cloud-init: NoCloud only (as a VM with a seed has), and
/// systemd-networkd to render and apply the network config (Ubuntu uses netplan over
/// networkd; Debian's ifupdown is not on this machine).
const CLOUD_CFG: &str = "datasource_list: [NoCloud, None]\n\
system_info:\n  network:\n    renderers: [networkd]\n    activators: [networkd]\n";

/// apt without internet: fail at once instead of retrying each mirror. Its package lists are an
/// empty dir: user-data's `packages:` are already on the machine, and with the machine's lists
/// apt would try to upgrade any of them that has a newer version there (and fail offline).
const APT_FAST_FAIL: &str = "Acquire::Retries \"0\";\nAcquire::http::Timeout \"2\";\n\
Acquire::https::Timeout \"2\";\nDir::State::Lists \"/var/lib/fireclaw-guest-apt-lists\";\n";

/// The stand-in renders the network config with systemd-networkd where Ubuntu guests use
/// netplan. netplan accepts a route `to: default`, which fireclaw 0.2.0's seed uses, but
/// cloud-init's networkd path refuses it; for such a seed the stand-in writes what netplan
/// means by it, `0.0.0.0/0`. fireclaw's own seed needs no such help.
fn netplan_default_route(network_config: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(network_config)
        .replace("- to: default\n", "- to: \"0.0.0.0/0\"\n")
        .into_bytes()
}

/// Where a guest finds its cloud-init seed, as a VM would with this kernel: a kernel with
/// iso9660 reads the seed image (its files are extracted in user space, since this kernel
/// cannot mount it); one without sees no seed image at all and has only what the rootfs
/// carries in `/var/lib/cloud/seed/nocloud/`, read here from the ext4 image with debugfs.
#[derive(Debug, Clone)]
enum SeedSource {
    Image(PathBuf),
    Rootfs(PathBuf),
}

impl SeedSource {
    /// Decides from the kernel the VM was given, read as fireclaw reads it.
    fn for_kernel(kernel: &Path, seed_image: PathBuf, rootfs: PathBuf) -> Self {
        let reads_iso = fireclaw::host::kernel_image::inspect_file(kernel)
            .is_ok_and(|report| report.has(fireclaw::host::kernel_image::Feature::Iso9660));
        if reads_iso {
            Self::Image(seed_image)
        } else {
            Self::Rootfs(rootfs)
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Image(_) => "image",
            Self::Rootfs(_) => "rootfs",
        }
    }

    /// One seed file's bytes (`None` when this source has no such file), or why it could not
    /// be read.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let (Self::Image(file) | Self::Rootfs(file)) = self;
        // debugfs may exit 0 with nothing on stdout for a disk that is gone.
        if !file.exists() {
            return Err(format!("reading {name} from {self:?}: no such file"));
        }
        let output = match self {
            Self::Image(image) => std::process::Command::new("isoinfo")
                .args(["-R", "-i"])
                .arg(image)
                .args(["-x", &format!("/{name}")])
                .output(),
            Self::Rootfs(rootfs) => std::process::Command::new("debugfs")
                .args(["-R", &format!("cat /var/lib/cloud/seed/nocloud/{name}")])
                .arg(rootfs)
                .output(),
        }
        .map_err(|e| format!("reading {name} from {self:?}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "reading {name} from {self:?}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        // Both tools print nothing (and exit 0) for a file that is not there.
        Ok((!output.stdout.is_empty()).then_some(output.stdout))
    }

    /// The seed files this source has, read before the guest boots.
    fn read_all(&self) -> Result<SeedFiles, String> {
        let mut files = Vec::new();
        for name in ["user-data", "meta-data", "network-config"] {
            if let Some(contents) = self.read(name)? {
                files.push((name, contents));
            }
        }
        Ok(files)
    }
}

/// A seed's files, by name, as the guest's cloud-init finds them.
type SeedFiles = Vec<(&'static str, Vec<u8>)>;

/// Installs the pinned cloud-init into a guest disk (never on the machine) and puts the seed
/// the guest can see where cloud-init's NoCloud datasource reads it inside a guest.
fn install_cloud_init(upper: &Path, seed: &SeedFiles) {
    let package = cache_dir().join("cloud-init");
    assert!(
        package.join("usr/bin/cloud-init").exists(),
        "{} is missing: run scripts/test-deps as root (the README's test command does)",
        package.display()
    );
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", package.display()))
        .arg(upper)
        .status()
        .unwrap();
    assert!(status.success(), "copying cloud-init into the guest failed");
    for unit in CLOUD_INIT_UNITS {
        let wants = upper.join("etc/systemd/system/cloud-init.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        let _ = std::os::unix::fs::symlink(format!("/lib/systemd/system/{unit}"), wants.join(unit));
    }
    write(
        upper,
        "/etc/cloud/cloud.cfg.d/90-fireclaw-guest-standin.cfg",
        CLOUD_CFG,
        0o644,
    );
    let seed_dir = upper.join("var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::set_permissions(&seed_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for (name, contents) in seed {
        let mut contents = contents.clone();
        if *name == "network-config" {
            contents = netplan_default_route(&contents);
        }
        let path = seed_dir.join(name);
        std::fs::write(&path, &contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // systemd-networkd applies what cloud-init renders; Debian leaves it off.
    let networkd = upper.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&networkd).unwrap();
    let _ = std::os::unix::fs::symlink(
        "/lib/systemd/system/systemd-networkd.service",
        networkd.join("systemd-networkd.service"),
    );
    let sockets = upper.join("etc/systemd/system/sockets.target.wants");
    std::fs::create_dir_all(&sockets).unwrap();
    let _ = std::os::unix::fs::symlink(
        "/lib/systemd/system/systemd-networkd.socket",
        sockets.join("systemd-networkd.socket"),
    );
    write(
        upper,
        "/etc/apt/apt.conf.d/99fireclaw-guest-standin",
        APT_FAST_FAIL,
        0o644,
    );
    std::fs::create_dir_all(upper.join("var/lib/fireclaw-guest-apt-lists/partial")).unwrap();
    // Public resolvers are unreachable from here and a lookup would wait for its timeout:
    // a resolver on the guest's own loopback, where nothing listens, refuses at once, and no
    // query leaves the guest (nspawn is told not to install the machine's resolv.conf).
    write(upper, "/etc/resolv.conf", "nameserver 127.0.0.1\n", 0o644);
    // sshd starts once cloud-init has put the keys in place (Debian names the unit ssh).
    write(
        upper,
        "/etc/systemd/system/ssh.service.d/after-cloud-init.conf",
        "[Unit]\nAfter=cloud-init-network.service\n",
        0o644,
    );
}

/// nspawn mounts a container's `/sys` before it joins the network namespace it was given, so
/// the guest's `/sys/class/net` would show the machine's interfaces, not its own `eth0`. A VM
/// sees its own NICs there, and cloud-init finds the NIC to configure by its MAC there: this
/// unit mounts a sysfs of the guest's own namespace over those two directories first.
const OWN_SYSFS_UNIT: &str = "[Unit]\nDescription=This guest's own network devices in /sys\n\
DefaultDependencies=no\nBefore=cloud-init-main.service cloud-init-local.service systemd-networkd.service\n\n\
[Service]\nType=oneshot\nRemainAfterExit=yes\n\
ExecStart=/bin/sh -ec 'mkdir -p /run/guest-sysfs; mount -t sysfs sysfs /run/guest-sysfs; \
mount --bind /run/guest-sysfs/class/net /sys/class/net; \
mount --bind /run/guest-sysfs/devices/virtual/net /sys/devices/virtual/net'\n\n\
[Install]\nWantedBy=sysinit.target\n";

/// Lays the guest stand-in's own files, then the test's presets, into a fresh guest disk.
fn prepare_guest(upper: &Path, seed: &SeedFiles, presets: &[(String, String)]) {
    // sshd is masked in host sandboxes; a guest needs it.
    let _ = std::fs::remove_file(upper.join("etc/systemd/system/ssh.service"));
    write(
        upper,
        "/etc/systemd/system/fireclaw-guest-sysfs.service",
        OWN_SYSFS_UNIT,
        0o644,
    );
    enable(upper, "fireclaw-guest-sysfs.service", "sysinit.target");
    install_cloud_init(upper, seed);
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
    write(upper, "/usr/local/lib/docker-stub/bin/npx", FAKE_NPX, 0o755);
    write(
        upper,
        "/usr/local/lib/docker-stub/real-bin/node",
        REAL_NODE,
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
    if presets.iter().any(|(path, _)| path == REAL_OPENCLAW_MARKER) {
        let _ = std::os::unix::fs::symlink(
            format!("{OPENCLAW_PREFIX_IN_GUEST}/node_modules/openclaw"),
            upper.join("app"),
        );
    } else if !presets.iter().any(|(path, _)| path == "/app/package.json") {
        // The fake image says it holds a release with `config patch`, as the pinned one does.
        write(
            upper,
            "/app/package.json",
            "{\n  \"name\": \"openclaw\",\n  \"version\": \"2026.9.6\"\n}\n",
            0o644,
        );
    }
}

struct Guest {
    sandbox: Sandbox,
    generation: u64,
    /// The container lives (frozen or not).
    running: bool,
    /// Its cgroup is frozen: the VM is paused.
    frozen: bool,
    /// The token of a snapshot made during the current pause.
    snapshot: Option<String>,
    /// Frozen with no VMM, kept for a load of the snapshot named `snapshot`.
    kept: bool,
    /// The seed image this guest's disk was made from.
    seed: Vec<u8>,
}

/// The cgroup freezer of a guest container. nspawn and all it runs stay in the sandbox's own
/// cgroup `<hierarchy>/<sandbox name>` of every mounted hierarchy (tests/support/sandbox.rs), so
/// freezing that cgroup freezes the whole guest: the v1 `freezer` hierarchy's where the machine
/// has one (a hybrid layout), otherwise the unified hierarchy's `cgroup.freeze`.
enum Freezer {
    V1(PathBuf),
    V2(PathBuf),
}

impl Freezer {
    fn of(sandbox: &Sandbox) -> Self {
        let name = sandbox.base().file_name().unwrap().to_owned();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let mut unified = None;
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount, kind, options, ..] = fields[..] else {
                continue;
            };
            if kind == "cgroup" && options.split(',').any(|o| o == "freezer") {
                return Self::V1(Path::new(mount).join(&name));
            }
            if kind == "cgroup2" {
                unified = Some(Path::new(mount).join(&name));
            }
        }
        Self::V2(unified.expect("no cgroup freezer on this machine"))
    }

    /// Freezes the guest and waits until every task in it is frozen.
    fn freeze(&self) -> Result<(), String> {
        let written = match self {
            Self::V1(dir) => std::fs::write(dir.join("freezer.state"), "FROZEN"),
            Self::V2(dir) => std::fs::write(dir.join("cgroup.freeze"), "1"),
        };
        written.map_err(|e| format!("freezing the guest's cgroup: {e}"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.frozen() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.thaw();
        Err("the guest's cgroup did not freeze within 10 s".to_owned())
    }

    /// Sends SIGKILL to every task of the frozen guest, down its whole cgroup tree, so that none
    /// runs again once thawed (one killed only by its PID namespace's end could act meanwhile).
    fn kill_all(&self) {
        fn kill_tree(dir: &Path) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: kill() on a pid of this guest's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    kill_tree(&entry.path());
                }
            }
        }
        match self {
            Self::V1(dir) | Self::V2(dir) => kill_tree(dir),
        }
    }

    fn thaw(&self) {
        let _ = match self {
            Self::V1(dir) => std::fs::write(dir.join("freezer.state"), "THAWED"),
            Self::V2(dir) => std::fs::write(dir.join("cgroup.freeze"), "0"),
        };
    }

    fn frozen(&self) -> bool {
        match self {
            Self::V1(dir) => std::fs::read_to_string(dir.join("freezer.state"))
                .is_ok_and(|state| state.trim() == "FROZEN"),
            Self::V2(dir) => std::fs::read_to_string(dir.join("cgroup.events"))
                .is_ok_and(|events| events.lines().any(|l| l == "frozen 1")),
        }
    }
}

impl Guest {
    /// Kills the guest, keeping its disk; a frozen one is thawed after every task in it was sent
    /// SIGKILL, so it dies without running again (a frozen task acts on it once thawed).
    fn kill(&mut self) {
        if self.frozen {
            let freezer = Freezer::of(&self.sandbox);
            freezer.kill_all();
            freezer.thaw();
        }
        self.sandbox.kill_keep_disk();
        self.running = false;
        self.frozen = false;
        self.kept = false;
        self.snapshot = None;
    }

    /// Acts out one of the harness's requests for this guest's VMM.
    fn act(&mut self, verb: &str, argument: Option<&str>) -> Result<(), String> {
        match (verb, argument) {
            ("pause", None) => {
                Freezer::of(&self.sandbox).freeze()?;
                self.frozen = true;
                self.snapshot = None;
                Ok(())
            }
            ("resume", None) => {
                Freezer::of(&self.sandbox).thaw();
                self.frozen = false;
                self.snapshot = None;
                Ok(())
            }
            ("snapshot", Some(token)) if self.frozen => {
                self.snapshot = Some(token.to_owned());
                Ok(())
            }
            ("snapshot", Some(_)) => Err("the guest is not frozen".to_owned()),
            _ => Err(format!("unknown request {verb}")),
        }
    }
}

/// Runs the guest supervisor for one host sandbox until dropped.
pub struct GuestHost {
    presets: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    guests: Arc<Mutex<HashMap<String, Guest>>>,
    shared: PathBuf,
}

impl GuestHost {
    /// `host` is the host sandbox: its shared dir and PID 1 locate seeds, disks and namespaces.
    pub fn start(host: &Sandbox) -> Self {
        let shared = host.base().join("guests");
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
                    supervise(&shared, host_leader, &name_prefix, &guests, &presets);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            presets,
            stop,
            thread: Some(thread),
            guests,
            shared,
        }
    }

    /// Every guest created from now on runs the real OpenClaw (the pinned one from the cache)
    /// behind the docker stub, instead of the fake CLI and gateway.
    pub fn use_real_openclaw(&self) {
        self.preset(REAL_OPENCLAW_MARKER, "openclaw");
    }

    /// As `use_real_openclaw`, with the older pinned release that has no `config patch`
    /// (`scripts/test-deps`' OPENCLAW_FALLBACK_VERSION).
    pub fn use_fallback_openclaw(&self) {
        self.preset(REAL_OPENCLAW_MARKER, "openclaw-fallback");
    }

    /// Where the guest behind `tap` last found its seed: `image` (the seed image, for a kernel
    /// with iso9660) or `rootfs` (the seed dir inside the rootfs, for one without).
    pub fn seed_source(&self, tap: &str) -> String {
        std::fs::read_to_string(self.shared.join(tap).join("seed-source")).unwrap_or_default()
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

    /// Whether the guest of `tap` is frozen (its VM paused), as its cgroup says.
    pub fn frozen(&self, tap: &str) -> bool {
        self.guests
            .lock()
            .unwrap()
            .get(tap)
            .is_some_and(|g| g.running && Freezer::of(&g.sandbox).frozen())
    }

    /// Whether the guest of `tap` is kept frozen, without a VMM, for a load of its snapshot.
    pub fn kept(&self, tap: &str) -> bool {
        self.guests.lock().unwrap().get(tap).is_some_and(|g| g.kept)
    }

    /// Whether the guest of `tap` runs (a frozen guest does: its container lives).
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
        // Anything that talks to the guest's systemd would wait for the thaw.
        assert!(!guest.frozen, "the guest of {tap} is frozen");
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
        // Dropping each guest's Sandbox kills it and removes its disk, even after a panic; a
        // frozen one would never see its kill, nor let its cgroup go.
        let mut guests = self
            .guests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for guest in guests.values_mut().filter(|g| g.frozen) {
            guest.kill();
        }
        guests.clear();
    }
}

/// In the host sandbox: the guest's namespace `g<tap>`, a veth from `v<tap>` to its `eth0` (with
/// the VM's MAC), and the harness's relay of the tap pointed at `v<tap>`. The guest's cloud-init
/// configures the address and route of `eth0` from its seed.
/// `v<tap>` is only a wire for the relay: without ARP and IPv6 the host's own stack never answers
/// on it, so every guest packet reaches the host through the tap and the bridge, as from a VM.
fn wire_namespace(host_leader: u32, tap: &str, mac: &str) {
    // The NIC carries the MAC the Firecracker config gives, as a VM's does; frames leave
    // through a relay, not a NIC, so checksums must be complete (tx offload off).
    let script = format!(
        "ip netns list | grep -qw g{tap} || {{ ip netns add g{tap} && \
         ip link add v{tap} type veth peer name eth0 netns g{tap} && \
         sysctl -qw net.ipv6.conf.v{tap}.disable_ipv6=1 && ip link set v{tap} arp off up && \
         ip -n g{tap} link set eth0 address {mac} && \
         ip netns exec g{tap} ethtool -K eth0 tx off >/dev/null && \
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

/// Whether the Firecracker stand-in still lives (the harness holds its lock meanwhile).
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

/// The token a load's generation asks to attach (`attach`: `<generation> <token>`), if this
/// generation is a load's.
fn attach_request(dir: &Path, generation: u64) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("attach")).ok()?;
    let (asked, token) = text.trim().split_once(' ')?;
    (asked.parse::<u64>().ok()? == generation).then(|| token.to_owned())
}

fn refuse_attach(dir: &Path, generation: u64, token: &str, kept: Option<&str>) {
    let reason = match kept {
        Some(kept) => format!("the frozen guest of this tap is {kept}, not {token}"),
        None => format!("no frozen guest {token} (a guest is attached at most once)"),
    };
    let _ = std::fs::write(dir.join(format!("refused-{generation}")), reason);
}

/// Answers the harness's `request` (`<id> <generation> <verb> [token]`) in `answer`, once.
fn answer_request(dir: &Path, guest: Option<&mut Guest>) {
    let Ok(request) = std::fs::read_to_string(dir.join("request")) else {
        return;
    };
    let mut words = request.split_whitespace();
    let (Some(id), Some(generation), Some(verb)) = (words.next(), words.next(), words.next())
    else {
        return;
    };
    let answered = std::fs::read_to_string(dir.join("answer")).unwrap_or_default();
    if answered.split_whitespace().next() == Some(id) {
        return;
    }
    let outcome = match guest {
        Some(guest) if guest.generation.to_string() == generation => guest.act(verb, words.next()),
        _ => Err(format!("no running guest of generation {generation}")),
    };
    let answer = match outcome {
        Ok(()) => format!("{id} ok"),
        Err(reason) => format!("{id} error {reason}"),
    };
    let partial = dir.join("answer.partial");
    if std::fs::write(&partial, answer).is_ok() {
        let _ = std::fs::rename(&partial, dir.join("answer"));
    }
}

fn supervise(
    shared: &Path,
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
                guest.frozen = false;
                let _ = std::fs::write(dir.join(format!("gone-{}", guest.generation)), "");
                continue;
            }
            if guest.kept {
                // Frozen for a load: a new VMM either attaches it or boots afresh.
                if !alive || generation <= guest.generation {
                    continue;
                }
                if let Some(token) = attach_request(&dir, generation) {
                    if guest.snapshot.as_deref() == Some(token.as_str()) {
                        guest.generation = generation;
                        guest.kept = false;
                        guest.snapshot = None;
                        let _ = std::fs::remove_file(dir.join("kept"));
                        let _ = std::fs::write(dir.join(format!("attached-{generation}")), "");
                    } else {
                        refuse_attach(&dir, generation, &token, guest.snapshot.as_deref());
                    }
                    continue;
                }
                // A cold boot discards the frozen memory: the guest goes, and boots again below.
                guest.kill();
                let _ = std::fs::remove_file(dir.join("kept"));
                let _ = std::fs::write(dir.join(format!("gone-{}", guest.generation)), "");
            } else if !alive {
                if guest.frozen
                    && let Some(token) = &guest.snapshot
                {
                    // Paused and snapshotted: the guest waits, frozen, for a load.
                    guest.kept = true;
                    let _ = std::fs::write(dir.join("kept"), token);
                } else {
                    // The VMM died: so does its guest, at once.
                    guest.kill();
                    let _ = std::fs::write(dir.join(format!("gone-{}", guest.generation)), "");
                }
                continue;
            } else if generation > guest.generation {
                // A new VMM while the old one's guest still runs: the old VMM died and a new
                // one started between two looks (a VM destroyed and made again at once). The
                // old guest goes as it would have; the new generation boots below.
                guest.kill();
                let _ = std::fs::write(dir.join(format!("gone-{}", guest.generation)), "");
            } else {
                if read_u64(&dir.join("shutdown")) == guest.generation {
                    let _ = std::fs::remove_file(dir.join("shutdown"));
                    guest.sandbox.signal(libc::SIGRTMIN() + 3);
                }
                answer_request(&dir, Some(guest));
                continue;
            }
        }
        let booted = guests.get(&tap).map(|g| g.generation).unwrap_or(0);
        if !alive || generation <= booted {
            answer_request(&dir, None);
            continue;
        }
        if let Some(token) = attach_request(&dir, generation) {
            refuse_attach(&dir, generation, &token, None);
            continue;
        }
        // Through the host sandbox's own mounts, so a bind (an XFS dir in bench_export) is
        // seen as its VMM sees it.
        let sandbox_root = PathBuf::from(format!("/proc/{host_leader}/root"));
        let on_machine = |file: &str| {
            let path = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            sandbox_root.join(path.trim().trim_start_matches('/'))
        };
        let seed_on_machine = on_machine("seed");
        let seed_bytes = std::fs::read(&seed_on_machine).unwrap_or_default();
        let seed_source = SeedSource::for_kernel(
            &on_machine("kernel"),
            seed_on_machine.clone(),
            on_machine("rootfs"),
        );
        let _ = std::fs::write(dir.join("seed-source"), seed_source.name());
        // A VM made anew (the same id set up again after a destroy) gets a fresh disk with its
        // new seed, as a new rootfs copy would; a restart of the same VM keeps its disk.
        if guests.get(&tap).is_some_and(|g| g.seed != seed_bytes) {
            guests.remove(&tap);
        }
        // A new guest's seed is read before it boots. A VM stopped while it started (a bake
        // interrupted as its builder boots) takes its seed with it: its guest is not booted.
        // A seed unreadable under a live VMM is a bug.
        let new_guest = !guests.contains_key(&tap);
        let seed_files = if new_guest {
            match seed_source.read_all() {
                Ok(files) => files,
                Err(_) if !vmm_alive(&dir) => continue,
                Err(reason) => panic!("{reason}"),
            }
        } else {
            SeedFiles::new()
        };
        if new_guest {
            let mac = std::fs::read_to_string(dir.join("mac")).unwrap_or_default();
            wire_namespace(host_leader, &tap, mac.trim());
        }
        let netns = PathBuf::from(format!("/proc/{host_leader}/root/run/netns/g{tap}"));
        match guests.get_mut(&tap) {
            Some(guest) => {
                // A new generation of the same VM: same disk, same seed.
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
                    {
                        let mut binds = vec![
                            "--capability=CAP_NET_ADMIN".to_owned(),
                            "--resolv-conf=off".to_owned(),
                        ];
                        if let Some((_, link)) = presets
                            .iter()
                            .find(|(path, _)| path == REAL_OPENCLAW_MARKER)
                        {
                            binds.extend(real_openclaw_binds(link.trim()));
                        }
                        binds
                    },
                    |upper| prepare_guest(upper, &seed_files, presets),
                );
                guests.insert(
                    tap.clone(),
                    Guest {
                        sandbox,
                        generation,
                        running: true,
                        frozen: false,
                        snapshot: None,
                        kept: false,
                        seed: seed_bytes,
                    },
                );
            }
        }
    }
}
