//! The Firecracker stand-in confined as fireclaw confines Firecracker (its own user, a read-only
//! system but for its instance dir, private /tmp, AF_UNIX only, no capabilities, a device
//! policy), in a host sandbox (tests/support/sandbox.rs) with real-host device permissions and
//! the stand-in harness: it serves its API, the harness logs its calls before the client has its
//! answer, relays its tap to a guest side, holds the guest handshake's lock exactly while it
//! lives and frees the tap at once when it dies; and for each thing it cannot open it fails with
//! Firecracker 1.16's words and exit code. The machine's own device nodes stay as they were.
//!
//! Inside nspawn the cgroup v1 `devices` controller is read-only: `DevicePolicy=`/`DeviceAllow=`
//! are accepted there but not enforced, so an unopenable `/dev/net/tun` is made with
//! `InaccessiblePaths=` (EACCES) instead of a missing `DeviceAllow=` (EPERM on a real host).
//!
//! Root only: run through `scripts/test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::Output;

use support::guest::GuestHost;
use support::sandbox::{BIN_IN_SANDBOX, Sandbox};

/// The VMM's own user, as fireclaw makes one per instance.
const USER: &str = "fcvm";
const VMS: &str = "/srv/vm";
const MAC: &str = "06:fc:00:00:00:02";

/// `systemd-run` properties of a VM unit confined as fireclaw confines Firecracker, but for the
/// `kvm` group (`WITH_KVM`), which one case leaves out.
fn confined(id: &str) -> String {
    format!(
        "-p User={USER} -p ProtectSystem=strict -p ReadWritePaths={VMS}/{id} \
         -p RestrictAddressFamilies=AF_UNIX -p PrivateTmp=yes -p NoNewPrivileges=yes \
         -p CapabilityBoundingSet= -p DevicePolicy=closed -p 'DeviceAllow=/dev/kvm rw' \
         -p 'DeviceAllow=/dev/net/tun rw'"
    )
}

const WITH_KVM: &str = "-p SupplementaryGroups=kvm";

fn dir(id: &str) -> String {
    format!("{VMS}/{id}")
}

fn socket(id: &str) -> String {
    format!("{VMS}/{id}/firecracker.socket")
}

fn firecracker(id: &str) -> String {
    format!(
        "{BIN_IN_SANDBOX}/firecracker --api-sock {} --config-file {VMS}/{id}/config/vm-config.json",
        socket(id)
    )
}

/// An instance dir laid out as fireclaw lays it out, owned by the VMM's user, with a config for
/// `tap`; the users and the `tap` owned by `USER` are made once.
fn instance(sandbox: &Sandbox, id: &str, tap: &str) {
    sandbox.sh(&format!(
        "id {USER} >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin {USER}; \
         id other >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin other; \
         ip link show {tap} >/dev/null 2>&1 || ip tuntap add dev {tap} mode tap user {USER} group {USER}; \
         d={d}; mkdir -p $d/images $d/config $d/logs && echo kernel > $d/images/vmlinux && \
         truncate -s 1M $d/images/rootfs.ext4 $d/images/seed.img",
        d = dir(id)
    ));
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": format!("{}/images/vmlinux", dir(id)),
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
        },
        "drives": [
            {"drive_id": "rootfs", "path_on_host": format!("{}/images/rootfs.ext4", dir(id)),
             "is_root_device": true, "is_read_only": false},
            {"drive_id": "seed", "path_on_host": format!("{}/images/seed.img", dir(id)),
             "is_root_device": false, "is_read_only": true},
        ],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
        "network-interfaces": [{"iface_id": "eth0", "guest_mac": MAC, "host_dev_name": tap}],
        "logger": {"log_path": format!("{}/logs/firecracker.log", dir(id)), "level": "Info"},
    });
    sandbox.write(
        &format!("{}/config/vm-config.json", dir(id)),
        config.to_string().as_bytes(),
    );
    sandbox.sh(&format!("chown -R {USER}: {}", dir(id)));
}

/// Starts the confined stand-in of `id` as unit `fc-<id>` and waits for its API.
fn start(sandbox: &Sandbox, id: &str) -> String {
    sandbox.sh(&format!(
        "rm -f {s}; systemd-run -q --unit=fc-{id} {props} {WITH_KVM} \
         -p StandardOutput=append:{d}/logs/console.log {fc}",
        s = socket(id),
        props = confined(id),
        d = dir(id),
        fc = firecracker(id),
    ));
    let info = sandbox.sh(&format!(
        "for i in $(seq 50); do curl -sf --unix-socket {} http://localhost/ && exit 0; sleep 0.1; done; \
         systemctl status fc-{id} --no-pager; exit 1",
        socket(id)
    ));
    assert!(info.contains("\"state\":\"Running\""), "{info}");
    sandbox
        .sh(&format!("systemctl show -p MainPID --value fc-{id}"))
        .trim()
        .to_owned()
}

fn calls(sandbox: &Sandbox, tap: &str) -> String {
    sandbox.sh(&format!("cat /run/fireclaw-standin/{tap}.calls"))
}

/// Whether the harness holds the guest handshake's lock of `tap`.
fn lock_held(sandbox: &Sandbox, tap: &str) -> bool {
    !sandbox.ok(&format!(
        "flock -n /run/fireclaw-guests/{tap}/vmm.lock true"
    ))
}

/// Owner, group and mode of the machine's own device nodes.
fn machine_nodes() -> Vec<(u32, u32, u32)> {
    ["/dev/kvm", "/dev/net/tun"]
        .iter()
        .map(|node| {
            let meta = std::fs::metadata(node).unwrap();
            (meta.uid(), meta.gid(), meta.mode())
        })
        .collect()
}

fn assert_private_devices(sandbox: &Sandbox) {
    assert_eq!(
        sandbox.sh("stat -c '%n %U:%G %a %t:%T' /dev/kvm /dev/net/tun"),
        "/dev/kvm root:kvm 660 a:e8\n/dev/net/tun root:root 666 a:c8\n"
    );
    assert!(
        !sandbox.ok("findmnt -rn --mountpoint /dev/kvm || findmnt -rn --mountpoint /dev/net/tun"),
        "a machine's node is still bound"
    );
    assert_eq!(
        sandbox
            .sh("systemctl is-active fireclaw-standin-harness.socket")
            .trim(),
        "active"
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_confined_standin_serves_its_api_and_the_harness_logs_relays_and_lets_go_of_its_tap() {
    let machine_before = machine_nodes();
    let mut sandbox = Sandbox::boot("standin");
    assert_private_devices(&sandbox);
    // Guest mode, as a sandbox with guests has it; no supervisor acts here, the test plays it.
    sandbox.sh("mkdir -p /run/fireclaw-guests");
    instance(&sandbox, "a", "tvm");
    // The guest side: a namespace holding the VM's MAC behind a veth the harness relays to.
    sandbox.sh(&format!(
        "ip netns add gtvm && ip link add vtvm type veth peer name eth0 netns gtvm && \
         sysctl -qw net.ipv6.conf.vtvm.disable_ipv6=1 && ip link set vtvm arp off up && \
         ip -n gtvm link set eth0 address {MAC} && ip -n gtvm addr add 10.9.0.2/24 dev eth0 && \
         ip -n gtvm link set eth0 up && ip netns exec gtvm ethtool -K eth0 tx off >/dev/null && \
         ip addr add 10.9.0.1/24 dev tvm && ip link set tvm up && \
         echo vtvm > /run/fireclaw-standin/tvm.peer"
    ));

    let pid = start(&sandbox, "a");
    assert_eq!(sandbox.sh(&format!("stat -c %U /proc/{pid}")).trim(), USER);
    // The harness's socket is on a read-only mount for the VMM, and it connected all the same.
    let options = sandbox.sh(&format!(
        "findmnt -N {pid} -no OPTIONS -T /run/fireclaw-standin/harness.sock"
    ));
    assert!(options.starts_with("ro,"), "{options}");
    // Logged before the client had its answer: read at once.
    assert_eq!(calls(&sandbox, "tvm"), "GET / \n");
    sandbox.sh("ping -c 2 -W 2 10.9.0.2");
    let guest = "/run/fireclaw-guests/tvm";
    assert_eq!(
        sandbox.sh(&format!(
            "cd {guest} && echo $(cat generation) $(cat mac) $(cat kernel) $(cat rootfs) $(cat seed)"
        )),
        format!(
            "1 {MAC} {d}/images/vmlinux {d}/images/rootfs.ext4 {d}/images/seed.img\n",
            d = dir("a")
        )
    );
    assert!(lock_held(&sandbox, "tvm"));

    // The tap takes one fd: a second VMM on it is refused as Firecracker is refused.
    instance(&sandbox, "b", "tvm");
    let busy = run_to_failure(&sandbox, "b", WITH_KVM);
    assert_eq!(
        busy.stderr,
        "Error: RunWithApi(BuildFromJson(ParseFromJson(NetDevice(CreateNetworkDevice(TapOpen(IfreqExecuteError(Os { code: 16, kind: ResourceBusy, message: \"Device or resource busy\" }, \"tvm\")))))))\n"
    );
    assert!(busy.log.contains("[anonymous-instance:main] RunWithApi error: Failed to build MicroVM from Json: Configuration for VMM from one single json failed: Network device error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Device or resource busy (os error 16). Invalid TUN/TAP Backend provided by tvm. Check our documentation on setting up the network devices.\n"), "{}", busy.log);
    assert_eq!(busy.status, "exit-code 1");

    // Killed: the lock goes with it, and the harness lets go of the tap at once: a VMM started
    // half a second later (systemd restarts after 2 s) gets it.
    sandbox.sh(&format!("kill -9 {pid}"));
    sandbox.sh(
        "for i in $(seq 10); do flock -n /run/fireclaw-guests/tvm/vmm.lock true && exit 0; sleep 0.1; done; exit 1",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    sandbox.sh("systemctl reset-failed fc-a 2>/dev/null || true");
    start(&sandbox, "a");
    sandbox.sh("ping -c 1 -W 2 10.9.0.2");
    assert_eq!(sandbox.sh(&format!("cat {guest}/generation")).trim(), "2");

    // SendCtrlAltDel in guest mode: the harness asks for the shutdown; the VMM exits 0 only
    // once the guest is reported gone.
    let answer = sandbox.sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -X PUT --unix-socket {} http://localhost/actions \
         -d '{{\"action_type\":\"SendCtrlAltDel\"}}'",
        socket("a")
    ));
    assert_eq!(answer, "204");
    assert!(
        calls(&sandbox, "tvm").ends_with("PUT /actions {\"action_type\":\"SendCtrlAltDel\"}\n")
    );
    sandbox.sh(&format!(
        "for i in $(seq 20); do [ \"$(cat {guest}/shutdown 2>/dev/null)\" = 2 ] && exit 0; sleep 0.1; done; exit 1"
    ));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        sandbox.sh("systemctl is-active fc-a || true").trim(),
        "active"
    );
    sandbox.sh(&format!("touch {guest}/gone-2"));
    sandbox.sh(
        "for i in $(seq 30); do [ \"$(systemctl is-active fc-a)\" != active ] && exit 0; sleep 0.1; done; exit 1",
    );
    assert_eq!(
        sandbox.sh("systemctl show -p Result,ExecMainStatus fc-a"),
        "Result=success\nExecMainStatus=0\n"
    );
    let last = calls(&sandbox, "tvm");
    assert!(last.lines().last().unwrap().starts_with("EXIT "), "{last}");
    assert!(
        sandbox
            .sh(&format!("cat {}/logs/console.log", dir("a")))
            .ends_with("reboot: Restarting system\n")
    );
    assert!(!lock_held(&sandbox, "tvm"));

    // After a reboot: private nodes again, and the harness there before any VM.
    sandbox.reboot();
    assert_private_devices(&sandbox);
    sandbox.sh(&format!(
        "ip tuntap add dev tvm mode tap user {USER} group {USER}"
    ));
    start(&sandbox, "a");
    assert_eq!(calls(&sandbox, "tvm"), "GET / \n");
    assert_eq!(
        machine_nodes(),
        machine_before,
        "the machine's nodes changed"
    );
    eprintln!("sandbox boot: {:.1}s", sandbox.boot_secs);
}

/// How a run that should fail ended: `systemctl`'s result and status, what it printed, and its
/// log file.
struct Failed {
    status: String,
    stdout: String,
    stderr: String,
    log: String,
}

/// Runs the confined stand-in of `id` to its end, with `props` on top of the confinement.
fn run_to_failure(sandbox: &Sandbox, id: &str, props: &str) -> Failed {
    let out: Output = sandbox.exec(&format!(
        "systemd-run -q --wait --pipe --unit=fc-{id} {confined} {props} {fc} </dev/null",
        confined = confined(id),
        fc = firecracker(id),
    ));
    let status = sandbox.sh(&format!(
        "echo $(systemctl show -p Result --value fc-{id}) $(systemctl show -p ExecMainStatus --value fc-{id}); \
         systemctl reset-failed fc-{id} 2>/dev/null || true"
    ));
    Failed {
        status: status.trim().to_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        log: sandbox.sh(&format!(
            "cat {}/logs/firecracker.log 2>/dev/null || true",
            dir(id)
        )),
    }
}

const EACCES: &str = "Os { code: 13, kind: PermissionDenied, message: \"Permission denied\" }";
const EXIT_LINE: &str = "[anonymous-instance:main] Firecracker exiting with error. exit_code=1\n";

/// Asserts Firecracker's stderr line, its log line (on stdout before the config's log file is
/// open, in that file after) and exit code 1.
fn assert_fails(case: &str, failed: &Failed, stderr: &str, log_line: &str, in_file: bool) {
    let log = if in_file { &failed.log } else { &failed.stdout };
    assert_eq!(failed.stderr, format!("Error: {stderr}\n"), "{case}");
    assert!(
        log.contains(&format!(
            "[anonymous-instance:main] RunWithApi error: {log_line}\n"
        )) && log.contains(EXIT_LINE),
        "{case}: {log}"
    );
    assert_eq!(failed.status, "exit-code 1", "{case}");
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_confined_standin_fails_as_firecracker_1_16_does_when_it_cannot_open_what_it_needs() {
    let sandbox = Sandbox::boot("standin-fail");
    let config_failed =
        "Failed to build MicroVM from Json: Configuration for VMM from one single json failed:";
    let tap_failed =
        "Network device error: Could not create the network device: Open tap device failed:";

    // Not in the kvm group: /dev/kvm is root:kvm 0660, opened last of all.
    instance(&sandbox, "kvm", "tfail");
    assert_fails(
        "kvm",
        &run_to_failure(&sandbox, "kvm", ""),
        "RunWithApi(BuildFromJson(StartMicroVM(Kvm(Kvm(Error(13))))))",
        // The `\` and line break are in Firecracker's message (a doc comment's line end).
        "Failed to build MicroVM from Json: Could not Start MicroVM from one single json: Kvm error: Error creating KVM object: Permission denied (os error 13) Make sure the user launching the firecracker process is \\\nconfigured on the /dev/kvm file's ACL.",
        true,
    );

    instance(&sandbox, "tun", "tfail");
    assert_fails(
        "tun",
        &run_to_failure(
            &sandbox,
            "tun",
            &format!("{WITH_KVM} -p InaccessiblePaths=/dev/net/tun"),
        ),
        &format!(
            "RunWithApi(BuildFromJson(ParseFromJson(NetDevice(CreateNetworkDevice(TapOpen(OpenTun({EACCES})))))))"
        ),
        &format!(
            "{config_failed} {tap_failed} Couldn't open /dev/net/tun: Permission denied (os error 13)"
        ),
        true,
    );

    // A tap made for another user: TUNSETIFF refuses this one.
    sandbox.sh("ip tuntap add dev tother mode tap user other group other");
    instance(&sandbox, "other", "tother");
    assert_fails(
        "tap of another user",
        &run_to_failure(&sandbox, "other", WITH_KVM),
        "RunWithApi(BuildFromJson(ParseFromJson(NetDevice(CreateNetworkDevice(TapOpen(IfreqExecuteError(Os { code: 1, kind: PermissionDenied, message: \"Operation not permitted\" }, \"tother\")))))))",
        &format!(
            "{config_failed} {tap_failed} Error while creating ifreq structure: Operation not permitted (os error 1). Invalid TUN/TAP Backend provided by tother. Check our documentation on setting up the network devices."
        ),
        true,
    );

    instance(&sandbox, "kernel", "tfail");
    sandbox.sh(&format!(
        "chown root: {d}/images/vmlinux && chmod 0600 {d}/images/vmlinux",
        d = dir("kernel")
    ));
    assert_fails(
        "kernel",
        &run_to_failure(&sandbox, "kernel", WITH_KVM),
        &format!(
            "RunWithApi(BuildFromJson(ParseFromJson(BootSource(InvalidKernelPath({EACCES})))))"
        ),
        &format!(
            "{config_failed} Boot source error: The kernel file cannot be opened: Permission denied (os error 13)"
        ),
        true,
    );

    // The rootfs is opened read-write (the seed, read-only, may stay root's).
    instance(&sandbox, "drive", "tfail");
    sandbox.sh(&format!(
        "chown root: {d}/images/rootfs.ext4 {d}/images/seed.img && chmod 0644 {d}/images/rootfs.ext4 {d}/images/seed.img",
        d = dir("drive")
    ));
    let rootfs = format!("{}/images/rootfs.ext4", dir("drive"));
    assert_fails(
        "drive",
        &run_to_failure(&sandbox, "drive", WITH_KVM),
        &format!(
            "RunWithApi(BuildFromJson(ParseFromJson(BlockDevice(CreateBlockDevice(VirtioBackend(BackingFile({EACCES}, {rootfs:?})))))))"
        ),
        &format!(
            "{config_failed} Block device error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: Permission denied (os error 13) {rootfs}"
        ),
        true,
    );

    // The socket is bound before the config is applied: the log is still stdout.
    instance(&sandbox, "socket", "tfail");
    sandbox.sh(&format!(
        "chown root: {} && chmod 0755 {}",
        dir("socket"),
        dir("socket")
    ));
    assert_fails(
        "socket dir",
        &run_to_failure(&sandbox, "socket", WITH_KVM),
        &format!("RunWithApi(FailedToBindAndRunHttpServer(IOError({EACCES})))"),
        "Failed to bind and run the HTTP server: IO error: Permission denied (os error 13)",
        false,
    );

    instance(&sandbox, "taken", "tfail");
    sandbox.sh(&format!("touch {}", socket("taken")));
    assert_fails(
        "socket path taken",
        &run_to_failure(&sandbox, "taken", WITH_KVM),
        &format!("RunWithApi(FailedToBindSocket({:?}))", socket("taken")),
        &format!(
            "Failed to open the API socket at: {}. Check that it is not already used.",
            socket("taken")
        ),
        false,
    );

    // The logger creates its file, so it needs its dir writable (or the file made for it).
    instance(&sandbox, "log", "tfail");
    sandbox.sh(&format!(
        "chown root: {d}/logs && chmod 0755 {d}/logs",
        d = dir("log")
    ));
    let failed = run_to_failure(&sandbox, "log", WITH_KVM);
    assert_fails(
        "log",
        &failed,
        &format!("RunWithApi(BuildFromJson(ParseFromJson(Logger(LoggerUpdateError({EACCES})))))"),
        &format!(
            "{config_failed} Logger error: Failed to open target file: Permission denied (os error 13)"
        ),
        false,
    );
    sandbox.sh(&format!("chown {USER}: {d}/logs", d = dir("log")));
    // With its dir writable and no file there, it makes the file.
    sandbox.sh(&format!("rm -f {}/logs/firecracker.log", dir("log")));
    start(&sandbox, "log");
    assert_eq!(
        sandbox
            .sh(&format!("stat -c %U {}/logs/firecracker.log", dir("log")))
            .trim(),
        USER
    );

    // An unreadable config: Firecracker's `expect` panics and it aborts (panic=abort).
    instance(&sandbox, "config", "tfail");
    sandbox.sh(&format!(
        "chown root: {d}/config/vm-config.json && chmod 0600 {d}/config/vm-config.json",
        d = dir("config")
    ));
    let failed = run_to_failure(&sandbox, "config", WITH_KVM);
    assert!(
        failed.stdout.contains(&format!("[anonymous-instance:main] Firecracker panicked at src/firecracker/src/main.rs:388:20:\nUnable to open or read from the configuration file: {EACCES}\n")),
        "{}",
        failed.stdout
    );
    assert!(
        matches!(failed.status.as_str(), "signal 6" | "core-dump 6"),
        "{}",
        failed.status
    );
    eprintln!("sandbox boot: {:.1}s", sandbox.boot_secs);
}

/// The tap and address of the VM whose guest is paused, snapshotted and loaded.
const SNAP_TAP: &str = "tsnap";
const GUEST_IP: &str = "10.9.0.2";
/// `firecracker --snapshot-version` of 1.16.1 (persist.rs `SNAPSHOT_VERSION`).
const SNAPSHOT_VERSION: &str = "v10.0.0\n";

/// An instance as `instance` makes it, bootable by the guest supervisor: the fixture kernel
/// (with iso9660, so the guest reads the seed image), a NoCloud seed image giving the guest
/// `GUEST_IP`, the tap addressed on the host side, and the VMM's own dir for its snapshots.
fn guest_instance(sandbox: &Sandbox, id: &str) {
    instance(sandbox, id, SNAP_TAP);
    sandbox.write(
        &format!("{}/images/vmlinux", dir(id)),
        &support::kernel_fixture::vmlinux_with_everything(),
    );
    sandbox.sh(&format!(
        "mkdir -p /root/seed && cd /root/seed && \
         printf 'instance-id: {id}\\nlocal-hostname: {id}\\n' > meta-data && \
         printf '#cloud-config\\n{{}}\\n' > user-data && \
         printf 'version: 2\\nethernets:\\n  eth0:\\n    match:\\n      macaddress: \"{MAC}\"\\n    set-name: eth0\\n    addresses:\\n      - \"{GUEST_IP}/24\"\\n' > network-config && \
         genisoimage -quiet -output {d}/images/seed.img -volid cidata -joliet -rock user-data meta-data network-config && \
         mkdir -p {d}/vmm && chown -R {USER}: {d} && \
         ip addr add 10.9.0.1/24 dev {SNAP_TAP} && ip link set {SNAP_TAP} up",
        d = dir(id)
    ));
}

/// The stand-in with only its API socket, as fireclaw starts a VMM that is to load a snapshot.
fn api_only(id: &str) -> String {
    format!("{BIN_IN_SANDBOX}/firecracker --api-sock {}", socket(id))
}

/// Starts `command` confined as unit `unit` (with the unit's `UMask=0077`, stderr in
/// `/run/<unit>.stderr`) and waits for its API to report `state`.
fn run_vmm(sandbox: &Sandbox, unit: &str, id: &str, command: &str, state: &str) {
    sandbox.sh(&format!(
        "rm -f {s}; systemd-run -q --unit={unit} {props} {WITH_KVM} -p UMask=0077 \
         -p StandardOutput=append:{d}/logs/console.log -p StandardError=file:/run/{unit}.stderr {command}",
        s = socket(id),
        props = confined(id),
        d = dir(id),
    ));
    let info = sandbox.sh(&format!(
        "for i in $(seq 50); do curl -sf --unix-socket {} http://localhost/ && exit 0; sleep 0.1; done; \
         systemctl status {unit} --no-pager; exit 1",
        socket(id)
    ));
    assert!(info.contains(&format!("\"state\":\"{state}\"")), "{info}");
}

/// One API request to the VMM of `id`: its status code and body.
fn api(sandbox: &Sandbox, id: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = sandbox.sh(&format!(
        "curl -s -w '\\n%{{http_code}}' -X {method} --unix-socket {} http://localhost{path} \
         -H 'Content-Type: application/json' -d '{body}'",
        socket(id)
    ));
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

fn vm_state(sandbox: &Sandbox, id: &str) -> String {
    let (_, body) = api(sandbox, id, "GET", "/", "");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    info["state"].as_str().unwrap().to_owned()
}

fn fault(message: &str) -> String {
    serde_json::json!({ "fault_message": message }).to_string()
}

/// How a unit that was to end ended (`Result ExecMainStatus`), once it has.
fn ended(sandbox: &Sandbox, unit: &str) -> String {
    sandbox.sh(&format!(
        "for i in $(seq 50); do systemctl is-active -q {unit} || break; sleep 0.1; done; \
         echo $(systemctl show -p Result --value {unit}) $(systemctl show -p ExecMainStatus --value {unit})"
    ))
    .trim()
    .to_owned()
}

fn wait_until(what: &str, bound: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + bound;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn counter(guests: &GuestHost) -> u64 {
    guests
        .read(SNAP_TAP, "/var/lib/counter")
        .trim()
        .parse()
        .unwrap_or(0)
}

fn create_body(vmstate: &str, memory: &str) -> String {
    serde_json::json!({"snapshot_type": "Full", "snapshot_path": vmstate, "mem_file_path": memory})
        .to_string()
}

/// `PUT /snapshot/load` of these files to the stand-in of instance "a".
fn load(host: &Sandbox, vmstate: &str, memory: &str, resume: bool) -> (u16, String) {
    api(
        host,
        "a",
        "PUT",
        "/snapshot/load",
        &load_body(vmstate, memory, resume),
    )
}

fn load_body(vmstate: &str, memory: &str, resume: bool) -> String {
    serde_json::json!({
        "snapshot_path": vmstate,
        "mem_backend": {"backend_type": "File", "backend_path": memory},
        "resume_vm": resume,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": SNAP_TAP}],
        "clock_realtime": false,
    })
    .to_string()
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_paused_standin_snapshots_and_a_new_one_loads_the_snapshot_onto_the_same_frozen_guest() {
    let host = Sandbox::boot_for_guests("standin-snap");
    let guests = GuestHost::start(&host);
    guest_instance(&host, "a");
    let d = dir("a");
    let (vmstate, memory) = (
        format!("{d}/vmm/snapshot.vmstate"),
        format!("{d}/vmm/snapshot.mem"),
    );
    run_vmm(&host, "fc-boot", "a", &firecracker("a"), "Running");
    wait_until(
        "the guest boots",
        std::time::Duration::from_secs(180),
        || guests.running(SNAP_TAP),
    );
    let ping = format!(
        "for i in $(seq 50); do ping -c 1 -W 1 {GUEST_IP} >/dev/null && exit 0; sleep 0.2; done; exit 1"
    );
    host.sh(&ping);

    // A running VM cannot be snapshotted: its vCPUs refuse to save their state.
    assert_eq!(
        api(
            &host,
            "a",
            "PUT",
            "/snapshot/create",
            &create_body(&vmstate, &memory)
        ),
        (
            400,
            fault(
                "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"
            )
        )
    );
    assert!(!host.ok(&format!("ls {vmstate} || ls {memory}")));

    guests.sh(
        SNAP_TAP,
        "systemd-run -q --unit=counter /bin/sh -c 'i=0; while :; do i=$((i+1)); \
         echo $i > /var/lib/counter.new; mv /var/lib/counter.new /var/lib/counter; sleep 0.15; done'",
    );
    let counter_pid = guests.sh(SNAP_TAP, "systemctl show -p MainPID --value counter");
    wait_until(
        "the counter counts",
        std::time::Duration::from_secs(10),
        || counter(&guests) >= 3,
    );

    // Paused: the guest is frozen and the counter stands still; nothing reaches the guest.
    assert_eq!(
        api(&host, "a", "PATCH", "/vm", r#"{"state":"Paused"}"#),
        (204, String::new())
    );
    assert!(guests.frozen(SNAP_TAP));
    assert_eq!(vm_state(&host, "a"), "Paused");
    let stopped = counter(&guests);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(counter(&guests), stopped);
    assert!(!host.ok(&format!("ping -c 1 -W 1 {GUEST_IP}")));
    // Pausing a paused VM changes nothing.
    assert_eq!(
        api(&host, "a", "PATCH", "/vm", r#"{"state":"Paused"}"#),
        (204, String::new())
    );

    assert_eq!(
        api(
            &host,
            "a",
            "PUT",
            "/snapshot/create",
            &create_body(&vmstate, &memory)
        ),
        (204, String::new())
    );
    // Made by the VMM's account under UMask=0077; the memory file is the guest memory's size.
    assert_eq!(
        host.sh(&format!("stat -c '%s %U %a' {memory} {vmstate} | head -1")),
        format!("{} {USER} 600\n", 128 * 1024 * 1024)
    );
    assert_eq!(
        host.sh(&format!("stat -c '%U %a' {vmstate}")),
        format!("{USER} 600\n")
    );
    let firecracker_bin = format!("{BIN_IN_SANDBOX}/firecracker");
    assert_eq!(
        host.sh(&format!("{firecracker_bin} --snapshot-version")),
        SNAPSHOT_VERSION
    );
    assert_eq!(
        host.sh(&format!("{firecracker_bin} --describe-snapshot {vmstate}")),
        SNAPSHOT_VERSION
    );
    let not_a_snapshot = host.exec(&format!("{firecracker_bin} --describe-snapshot {memory}"));
    // Firecracker reads no more than 10 MB of a state file.
    assert_eq!(not_a_snapshot.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&not_a_snapshot.stderr),
        "Error: PrintSnapshotDataFormat(SnapshotVersion(SizeLimitExceeded(10000000)))\n"
    );

    // The VMM dies paused after a snapshot: its guest stays frozen, kept for a load.
    host.sh("systemctl kill -s KILL fc-boot");
    wait_until(
        "the frozen guest is kept",
        std::time::Duration::from_secs(10),
        || guests.kept(SNAP_TAP),
    );
    assert!(guests.frozen(SNAP_TAP));

    // A call that configures a boot makes the load fail, as in Firecracker; the VMM serves on.
    run_vmm(&host, "fc-boot-path", "a", &api_only("a"), "Not started");
    assert_eq!(
        api(
            &host,
            "a",
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128}"#
        ),
        (204, String::new())
    );
    assert_eq!(
        load(&host, &vmstate, &memory, false),
        (
            400,
            fault(
                "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."
            )
        )
    );
    assert_eq!(vm_state(&host, "a"), "Not started");
    host.sh("systemctl stop fc-boot-path");

    // Another Firecracker on the host, another snapshot version: the load is refused and the
    // VMM exits.
    host.sh("echo v11.0.0 > /run/fireclaw-standin/snapshot-version");
    assert_eq!(
        host.sh(&format!("{firecracker_bin} --snapshot-version")),
        "v11.0.0\n"
    );
    run_vmm(&host, "fc-newer", "a", &api_only("a"), "Not started");
    assert_eq!(
        load(&host, &vmstate, &memory, false),
        (
            400,
            fault(
                "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to load snapshot state from file: Invalid data version: 10.0.0"
            )
        )
    );
    assert_eq!(ended(&host, "fc-newer"), "exit-code 1");
    assert_eq!(
        host.sh("cat /run/fc-newer.stderr"),
        "Error: RunWithApi(BuildMicroVmError(Restore))\n"
    );
    host.sh("rm /run/fireclaw-standin/snapshot-version");
    assert!(guests.kept(SNAP_TAP) && guests.frozen(SNAP_TAP));
    assert_eq!(counter(&guests), stopped);

    // The load fireclaw makes: logger, load without resume (Paused, still frozen), resume.
    run_vmm(&host, "fc-load", "a", &api_only("a"), "Not started");
    let logger = format!(
        r#"{{"log_path":"{d}/logs/firecracker.log","level":"Info","show_level":false,"show_log_origin":false}}"#
    );
    assert_eq!(api(&host, "a", "PUT", "/logger", &logger).0, 204);
    assert_eq!(load(&host, &vmstate, &memory, false), (204, String::new()));
    assert_eq!(vm_state(&host, "a"), "Paused");
    assert!(guests.frozen(SNAP_TAP) && !guests.kept(SNAP_TAP));
    assert_eq!(counter(&guests), stopped);
    assert_eq!(
        api(&host, "a", "PATCH", "/vm", r#"{"state":"Resumed"}"#),
        (204, String::new())
    );
    assert_eq!(vm_state(&host, "a"), "Running");
    assert!(!guests.frozen(SNAP_TAP));
    // The same process counts on from where it stood.
    wait_until(
        "the counter counts on",
        std::time::Duration::from_secs(10),
        || counter(&guests) > stopped,
    );
    let resumed = counter(&guests);
    assert!(resumed <= stopped + 20, "{stopped} → {resumed}");
    assert_eq!(
        guests.sh(SNAP_TAP, "systemctl show -p MainPID --value counter"),
        counter_pid
    );
    host.sh(&ping);
    let log = calls(&host, SNAP_TAP);
    assert!(
        log.ends_with(&format!(
            "GET / \nPUT /logger {logger}\nPUT /snapshot/load {}\nGET / \nPATCH /vm {{\"state\":\"Resumed\"}}\nGET / \n",
            load_body(&vmstate, &memory, false)
        )),
        "{log}"
    );
    // The failed load of the other version was logged too (its VMM had read the tap's name).
    assert!(log.contains(&format!(
        "GET / \nPUT /snapshot/load {}\n",
        load_body(&vmstate, &memory, false)
    )));

    // Paused and snapshotted again, and killed: a load of the first snapshot finds no frozen
    // guest for it (a guest is attached once) and the VMM exits.
    assert_eq!(
        api(&host, "a", "PATCH", "/vm", r#"{"state":"Paused"}"#),
        (204, String::new())
    );
    let (vmstate2, memory2) = (
        format!("{d}/vmm/second.vmstate"),
        format!("{d}/vmm/second.mem"),
    );
    assert_eq!(
        api(
            &host,
            "a",
            "PUT",
            "/snapshot/create",
            &create_body(&vmstate2, &memory2)
        ),
        (204, String::new())
    );
    host.sh("systemctl kill -s KILL fc-load");
    wait_until(
        "the frozen guest is kept again",
        std::time::Duration::from_secs(10),
        || guests.kept(SNAP_TAP),
    );
    // The harness lets go of the killed VMM's tap within half a second.
    std::thread::sleep(std::time::Duration::from_millis(500));
    run_vmm(&host, "fc-again", "a", &api_only("a"), "Not started");
    let (code, body) = load(&host, &vmstate, &memory, false);
    assert_eq!(code, 400);
    assert!(
        body.starts_with(r#"{"fault_message":"Load snapshot error: Failed to restore from snapshot: the stand-in has no frozen guest for this snapshot: "#),
        "{body}"
    );
    assert_eq!(ended(&host, "fc-again"), "exit-code 1");
    assert!(guests.kept(SNAP_TAP));

    // A cold boot discards the frozen guest and boots the disk afresh: the counter is gone.
    let frozen_at = counter(&guests);
    std::thread::sleep(std::time::Duration::from_millis(500));
    run_vmm(&host, "fc-cold", "a", &firecracker("a"), "Running");
    wait_until(
        "a fresh guest boots",
        std::time::Duration::from_secs(180),
        || !guests.kept(SNAP_TAP) && !guests.frozen(SNAP_TAP) && guests.running(SNAP_TAP),
    );
    assert_eq!(
        guests
            .sh(SNAP_TAP, "systemctl is-active counter || true")
            .trim(),
        "inactive"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(counter(&guests), frozen_at);
    host.sh(&ping);

    // A load that resumes at once, and a clean shutdown of the loaded VM: the guest goes down
    // and the VMM exits 0 once it has gone.
    assert_eq!(
        api(&host, "a", "PATCH", "/vm", r#"{"state":"Paused"}"#),
        (204, String::new())
    );
    assert_eq!(
        api(
            &host,
            "a",
            "PUT",
            "/snapshot/create",
            &create_body(&vmstate, &memory)
        ),
        (204, String::new())
    );
    host.sh("systemctl kill -s KILL fc-cold");
    wait_until(
        "the frozen guest is kept once more",
        std::time::Duration::from_secs(10),
        || guests.kept(SNAP_TAP),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    run_vmm(&host, "fc-resumed", "a", &api_only("a"), "Not started");
    assert_eq!(load(&host, &vmstate, &memory, true), (204, String::new()));
    assert_eq!(vm_state(&host, "a"), "Running");
    assert!(!guests.frozen(SNAP_TAP));
    host.sh(&ping);
    assert_eq!(
        api(
            &host,
            "a",
            "PUT",
            "/actions",
            r#"{"action_type":"SendCtrlAltDel"}"#
        ),
        (204, String::new())
    );
    wait_until(
        "the loaded guest shuts down",
        std::time::Duration::from_secs(60),
        || !guests.running(SNAP_TAP),
    );
    assert_eq!(ended(&host, "fc-resumed"), "success 0");
    assert!(
        calls(&host, SNAP_TAP)
            .lines()
            .last()
            .unwrap()
            .starts_with("EXIT ")
    );
    eprintln!(
        "sandbox boot: {:.1}s, guest boots: {:?}",
        host.boot_secs,
        guests.boot_secs()
    );
}
