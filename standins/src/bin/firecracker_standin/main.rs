//! Firecracker stand-in for tests (not shipped). It takes Firecracker's flags and config file and
//! at start does only what Firecracker 1.16 does, in its order: reads the config file, binds the
//! API socket, opens the config's log file, the kernel (and initrd), each drive (read-write
//! unless `is_read_only`), `/dev/net/tun` with TUNSETIFF on the tap, then `/dev/kvm`. When one of
//! them fails it fails as Firecracker does (`src/firecracker/src/main.rs` and the errors below
//! it): the error's `Debug` on stderr after `Error: `, its `Display` in the log (stdout until the
//! config's log file is open), exit code 1; an unreadable config file panics, and Firecracker
//! aborts (SIGABRT) on a panic. So it runs confined as Firecracker runs (its own
//! user, a read-only system, AF_UNIX only), and all that serves the tests is done by the harness
//! it greets with the tap's fd when `/run/fireclaw-standin/harness.sock` exists (the wire and
//! what the harness does: `fireclaw_standins::harness_wire`). Then it prints a kernel's first
//! console line, serves `GET /` and `PUT /actions`, and on `SendCtrlAltDel` exits 0, as
//! Firecracker does once a `reboot=k` guest has gone down: at once, or, in guest mode, when the
//! harness reports the guest gone (also after a reboot inside the guest).
//!
//! Pause, snapshot and load follow Firecracker 1.16.1 (`vmm/src/rpc_interface.rs`,
//! `vmm/src/persist.rs`, `firecracker/src/api_server/request/snapshot.rs`): `PATCH /vm` pauses
//! and resumes (the harness freezes and thaws the guest stand-in's cgroup, since a confined VMM
//! cannot); `PUT /snapshot/create`, only while paused, writes a small state file (Firecracker's
//! magic and format version, then what a load reopens, and the token of the frozen guest) and a
//! memory file of the guest memory's size. Started with `--api-sock` alone it waits for a
//! load: it takes the logger and metrics calls, marks any call that configures a boot (a later
//! load is then refused, and it serves on), and on `PUT /snapshot/load` opens what Firecracker
//! opens (state file, memory file, `/dev/kvm`, drives, tap); a failure there, a format version
//! it does not load (`--snapshot-version`, or the test's override in
//! `/run/fireclaw-standin/snapshot-version`) or a frozen guest the harness does not have ends
//! the process after the answer, as Firecracker ends after a failed restore.
//!
//! Two differences on purpose: run as root, it refuses a tap that does not exist (Firecracker
//! would create one that no bridge holds), and it logs nothing on stdout while all goes well
//! (stdout is the console, whose lines the tests read).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use fireclaw_standins::harness_wire::{self, Hello, ToHarness, ToStandIn};

mod qemu;

const VERSION: &str = "1.16.1";

#[derive(serde::Deserialize)]
struct Config {
    #[serde(rename = "boot-source")]
    boot_source: BootSource,
    drives: Vec<Drive>,
    #[serde(rename = "machine-config")]
    machine_config: Option<MachineConfig>,
    #[serde(rename = "network-interfaces", default)]
    network_interfaces: Vec<Interface>,
    logger: Option<Logger>,
}

#[derive(serde::Deserialize)]
struct BootSource {
    kernel_image_path: String,
    initrd_path: Option<String>,
    boot_args: Option<String>,
}

#[derive(serde::Deserialize)]
struct Drive {
    #[serde(default)]
    drive_id: String,
    path_on_host: String,
    #[serde(default)]
    is_root_device: bool,
    is_read_only: Option<bool>,
}

#[derive(serde::Deserialize)]
struct MachineConfig {
    vcpu_count: Option<u64>,
    mem_size_mib: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Interface {
    #[serde(default)]
    iface_id: String,
    host_dev_name: String,
    /// The MAC the VM's NIC carries, as Firecracker gives it to the guest.
    #[serde(default)]
    guest_mac: String,
}

#[derive(serde::Deserialize)]
struct Logger {
    log_path: Option<PathBuf>,
}

/// Firecracker's logger: `<local time> [<instance id>:<thread>] <message>` lines, on stdout
/// until the config's logger has opened its file.
struct Log {
    id: String,
    file: Option<File>,
}

impl Log {
    fn line(&mut self, message: &str) {
        let text = format!("{} [{}:main] {message}\n", local_time(), self.id);
        let _ = match &mut self.file {
            Some(file) => file.write_all(text.as_bytes()),
            None => {
                let mut stdout = io::stdout();
                stdout
                    .write_all(text.as_bytes())
                    .and_then(|()| stdout.flush())
            }
        };
    }
}

/// Local time as Firecracker's `utils::time::LocalTime` prints it.
fn local_time() -> String {
    // SAFETY: timespec and tm are plain data, valid for writes; the calls only fill them.
    let (now, tm) = unsafe {
        let mut now: libc::timespec = std::mem::zeroed();
        let mut tm: libc::tm = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut now);
        libc::localtime_r(&raw const now.tv_sec, &raw mut tm);
        (now, tm)
    };
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.tv_nsec
    )
}

/// A start-up error as Firecracker prints its `MainError::RunWithApi`: `debug` is the chain's
/// `Debug` and `display` its `Display`, built from the variants' names and doc messages in
/// Firecracker's source (`api_server_adapter.rs`, `main.rs`, `vmm/src/resources.rs` and the
/// errors each wraps, named at each constructor).
struct Failure {
    debug: String,
    display: String,
}

impl Failure {
    /// `ApiServerError` (`src/firecracker/src/api_server_adapter.rs`).
    fn api(debug: String, display: String) -> Self {
        Self {
            debug: format!("RunWithApi({debug})"),
            display: format!("RunWithApi error: {display}"),
        }
    }

    /// `BuildFromJsonError::ParseFromJson` (`main.rs`) of a `ResourcesError`.
    fn config(debug: String, display: String) -> Self {
        Self::api(
            format!("BuildFromJson(ParseFromJson({debug}))"),
            format!(
                "Failed to build MicroVM from Json: Configuration for VMM from one single json failed: {display}"
            ),
        )
    }

    /// `BuildFromJsonError::StartMicroVM` (`main.rs`) of a `StartMicrovmError`.
    fn boot(debug: String, display: String) -> Self {
        Self::api(
            format!("BuildFromJson(StartMicroVM({debug}))"),
            format!(
                "Failed to build MicroVM from Json: Could not Start MicroVM from one single json: {display}"
            ),
        )
    }

    /// `ResourcesError::NetDevice(NetworkInterfaceError::CreateNetworkDevice(NetError))`
    /// (`vmm/src/vmm_config/net.rs`).
    fn net(error: NetError) -> Self {
        Self::config(
            format!("NetDevice(CreateNetworkDevice({}))", error.debug),
            format!(
                "Network device error: Could not create the network device: {}",
                error.display
            ),
        )
    }

    /// What only the stand-in refuses.
    fn stand_in(message: &str) -> Self {
        Self {
            debug: message.to_owned(),
            display: message.to_owned(),
        }
    }

    /// What `main` does with the error: log it, print it on stderr, log the exit code.
    fn report(self, log: &mut Log) -> ExitCode {
        log.line(&self.display);
        eprintln!("Error: {}", self.debug);
        log.line("Firecracker exiting with error. exit_code=1");
        ExitCode::from(1)
    }
}

/// Firecracker's start with a config file, step by step in its order.
fn start(
    api_sock: &Path,
    config_path: &Path,
    log: &mut Log,
    ends: &mpsc::Sender<End>,
) -> Result<Vmm, Failure> {
    // main.rs reads the file with `expect`: a failure panics, and Firecracker is built with
    // panic=abort. Its panic hook logs the location of that `expect` (the same in v1.16.0 and v1.16.1).
    let text = match std::fs::read_to_string(config_path) {
        Ok(text) => text,
        Err(e) => {
            log.line(&format!(
                "Firecracker panicked at src/firecracker/src/main.rs:388:20:\nUnable to open or read from the configuration file: {e:?}"
            ));
            std::process::abort();
        }
    };
    // api_server_adapter.rs binds the socket before it applies the config.
    let listener = bind_api(api_sock)?;
    // resources.rs `VmResources::from_json`: logger, boot source, drives, network.
    let config: Config = serde_json::from_str(&text).map_err(|e| {
        Failure::config(format!("InvalidJson({e:?})"), format!("Invalid JSON: {e}"))
    })?;
    if let Some(path) = config.logger.as_ref().and_then(|l| l.log_path.as_ref()) {
        // logger/logging.rs: creates the file, opens it read-write.
        let file = open_file_nonblock(path).map_err(|e| {
            Failure::config(
                format!("Logger(LoggerUpdateError({e:?}))"),
                format!("Logger error: Failed to open target file: {e}"),
            )
        })?;
        log.file = Some(file);
    }
    let mut held = Vec::new();
    // vmm_config/boot_source.rs `BootConfig::new`.
    let boot_source = |debug: String, display: String| {
        Failure::config(
            format!("BootSource({debug})"),
            format!("Boot source error: {display}"),
        )
    };
    held.push(
        File::open(&config.boot_source.kernel_image_path).map_err(|e| {
            boot_source(
                format!("InvalidKernelPath({e:?})"),
                format!("The kernel file cannot be opened: {e}"),
            )
        })?,
    );
    if let Some(initrd) = &config.boot_source.initrd_path {
        held.push(File::open(initrd).map_err(|e| {
            boot_source(
                format!("InvalidInitrdPath({e:?})"),
                format!(
                    "The initrd file cannot be opened due to invalid path or invalid permissions. {e}"
                ),
            )
        })?);
    }
    // devices/virtio/block/virtio/device.rs `DiskProperties::open_file`, wrapped by
    // vmm_config/drive.rs `DriveError::CreateBlockDevice` and block/mod.rs `BlockError`.
    for drive in &config.drives {
        let file = OpenOptions::new()
            .read(true)
            .write(!drive.is_read_only.unwrap_or(false))
            .open(&drive.path_on_host)
            .map_err(|e| {
                let path = &drive.path_on_host;
                Failure::config(
                    format!("BlockDevice(CreateBlockDevice(VirtioBackend(BackingFile({e:?}, {path:?}))))"),
                    format!(
                        "Block device error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: {e} {path}"
                    ),
                )
            })?;
        held.push(file);
    }
    let Some(interface) = config.network_interfaces.first() else {
        return Err(Failure::stand_in(
            "the stand-in needs one network interface",
        ));
    };
    let tap = open_tap(&interface.host_dev_name).map_err(Failure::net)?;
    // builder.rs `build_microvm_for_boot` → vstate/kvm.rs `Kvm::new` → kvm-ioctls `Kvm::new`
    // (O_RDWR|O_CLOEXEC); its error is vmm-sys-util's errno `Error(i32)`.
    let kvm: OwnedFd = open_kvm()
        .map_err(|e| {
            Failure::boot(
                format!("Kvm(Kvm(Error({})))", e.raw_os_error().unwrap_or(0)),
                kvm_message(&e),
            )
        })?
        .into();
    let mut saved = SavedVm::from_config(&config);
    let (harness, real) = match qemu::Mode::chosen().map_err(|e| Failure::stand_in(&e))? {
        Some(mode) => {
            let spec = qemu::MachineSpec {
                kernel: &saved.kernel_image_path,
                initrd: saved.initrd_path.as_deref(),
                boot_args: config.boot_source.boot_args.as_deref(),
                vcpus: saved.vcpu_count,
                memory_mib: saved.mem_size_mib,
                drives: saved
                    .drives
                    .iter()
                    .map(|d| qemu::DriveSpec {
                        path: &d.path_on_host,
                        read_only: d.is_read_only,
                        is_root: d.is_root_device,
                    })
                    .collect(),
                mac: &interface.guest_mac,
                tsc_khz: qemu::host_tsc_khz(),
            };
            let args = qemu::arguments(&mode, &spec);
            let machine = qemu::Machine::start(&mode, args, &[], &tap, machine_ended(ends))
                .map_err(|e| Failure::stand_in(&e))?;
            saved.qemu_args = Some(machine.args.clone());
            (None, Some(machine))
        }
        None => (
            Harness::connect(&ToHarness::Hello(saved.hello()), Some(&tap), ends)
                .map(|(harness, _ready)| harness),
            None,
        ),
    };
    log.line("Successfully started microvm that was configured from one single json");
    held.push(tap);
    Ok(Vmm {
        id: log.id.clone(),
        listener,
        state: State::Running,
        boot_path: true,
        machine: Some(Machine {
            saved,
            _held: held,
            _kvm: kvm,
            real,
        }),
        harness,
        unlogged: Vec::new(),
        metrics: None,
        ends: ends.clone(),
    })
}

/// How the VMM ends when its real machine's QEMU has ended: as after a guest reboot when the
/// stand-in had QEMU quit, with an error when QEMU crashed or was killed.
fn machine_ended(ends: &mpsc::Sender<End>) -> impl FnOnce(bool) + Send + 'static {
    let ends = ends.clone();
    move |clean| {
        let _ = ends.send(if clean {
            End::Rebooted
        } else {
            eprintln!("Error: the real machine's QEMU ended on its own");
            End::Failed(ExitCode::from(1))
        });
    }
}

/// A `NetError` (`vmm/src/devices/virtio/net/mod.rs`) as its `Debug` and `Display`, which the
/// cold boot and the restore each wrap in their own errors.
struct NetError {
    debug: String,
    display: String,
}

impl NetError {
    /// `TapError::IfreqExecuteError` (`vmm/src/devices/virtio/net/tap.rs`).
    fn tap_ifreq(error: &io::Error, name: &str) -> Self {
        Self {
            debug: format!("TapOpen(IfreqExecuteError({error:?}, {name:?}))"),
            display: format!(
                "Open tap device failed: Error while creating ifreq structure: {error}. Invalid TUN/TAP Backend provided by {name}. Check our documentation on setting up the network devices."
            ),
        }
    }
}

/// devices/virtio/net/tap.rs `Tap::open_named`, then `set_vnet_hdr_size` as `Net::new` does.
fn open_tap(name: &str) -> Result<File, NetError> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
    const IFF_TAP: i16 = 0x0002;
    const IFF_NO_PI: i16 = 0x1000;
    const IFF_VNET_HDR: i16 = 0x4000;
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|e| NetError {
            debug: format!("TapOpen(OpenTun({e:?}))"),
            display: format!("Open tap device failed: Couldn't open /dev/net/tun: {e}"),
        })?;
    if name.len() >= 16 {
        return Err(NetError {
            debug: "TapOpen(InvalidIfname)".to_owned(),
            display: "Open tap device failed: Invalid interface name".to_owned(),
        });
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if root && !Path::new("/sys/class/net").join(name).exists() {
        return Err(NetError::tap_ifreq(
            &io::Error::from_raw_os_error(libc::ENODEV),
            name,
        ));
    }
    let mut request = [0u8; 40];
    request[..name.len()].copy_from_slice(name.as_bytes());
    request[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
    // SAFETY: `request` is a valid struct ifreq (40 bytes) for the duration of the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) } < 0 {
        return Err(NetError::tap_ifreq(&io::Error::last_os_error(), name));
    }
    let size = harness_wire::VNET_HDR_LEN as libc::c_int;
    // SAFETY: the ioctl reads one int from a valid pointer.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETVNETHDRSZ, &raw const size) } < 0 {
        let e = io::Error::last_os_error();
        return Err(NetError {
            debug: format!("TapSetVnetHdrSize(SetSizeOfVnetHdr({e:?}))"),
            display: format!(
                "Setting vnet header size failed: Error while setting size of the vnet header: {e}"
            ),
        });
    }
    Ok(tun)
}

/// The stand-in's end of the harness connection.
struct Harness {
    writer: Mutex<UnixStream>,
    replies: Mutex<mpsc::Receiver<ToStandIn>>,
    guest: bool,
}

/// How long the harness may take to answer: a restore or a pause waits for the guest
/// supervisor, which answers between guest boots.
const HARNESS_WAIT: Duration = Duration::from_secs(130);

impl Harness {
    /// Greets the harness with `first` (and the tap's fd), if the sandbox has one; returns the
    /// connection and the harness's first answer. A stand-in without it has no relay and no
    /// calls log.
    fn connect(
        first: &ToHarness,
        tap: Option<&File>,
        ends: &mpsc::Sender<End>,
    ) -> Option<(Self, ToStandIn)> {
        if !Path::new(harness_wire::SOCKET).exists() {
            return None;
        }
        match Self::try_connect(first, tap, ends) {
            Ok(connected) => Some(connected),
            Err(e) => {
                eprintln!(
                    "stand-in: the harness at {} did not answer: {e}",
                    harness_wire::SOCKET
                );
                None
            }
        }
    }

    fn try_connect(
        first: &ToHarness,
        tap: Option<&File>,
        ends: &mpsc::Sender<End>,
    ) -> io::Result<(Self, ToStandIn)> {
        let stream = UnixStream::connect(harness_wire::SOCKET)?;
        let greeting = harness_wire::line(first)?;
        match tap {
            Some(tap) => harness_wire::send_with_fd(&stream, &greeting, tap.as_raw_fd())?,
            None => (&stream).write_all(&greeting)?,
        }
        stream.set_read_timeout(Some(HARNESS_WAIT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let answer: ToStandIn = harness_wire::parse(&line)?;
        let guest = match &answer {
            ToStandIn::Ready { guest } => *guest,
            ToStandIn::Refused(_) => false,
            _ => return Err(io::Error::other(format!("unexpected {line:?}"))),
        };
        stream.set_read_timeout(None)?;
        let (reply, replies) = mpsc::channel();
        let ends = ends.clone();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                match harness_wire::parse(&line) {
                    // The harness's `Exit` (the guest has gone) ends the VMM.
                    Ok(ToStandIn::Exit) => {
                        let _ = ends.send(End::Rebooted);
                    }
                    Ok(other) => {
                        let _ = reply.send(other);
                    }
                    Err(_) => {}
                }
            }
        });
        let harness = Self {
            writer: Mutex::new(stream),
            replies: Mutex::new(replies),
            guest,
        };
        Ok((harness, answer))
    }

    fn send(&self, message: &ToHarness) -> io::Result<()> {
        let bytes = harness_wire::line(message)?;
        let writer = self.writer.lock().unwrap();
        (&*writer).write_all(&bytes)
    }

    /// Sends `message` and waits for the harness's answer.
    fn ask(&self, message: &ToHarness) -> Option<ToStandIn> {
        let replies = self.replies.lock().unwrap();
        self.send(message).ok()?;
        replies.recv_timeout(HARNESS_WAIT).ok()
    }

    /// Has the harness log an API call; returns once it is in the log.
    fn call(&self, line: String) {
        let _ = self.ask(&ToHarness::Call(line));
    }
}

/// A request's outcome as Firecracker's API answers it: the status line, the body, and what the
/// VMM does once the client has its answer.
struct Reply {
    status: &'static str,
    body: String,
    then: Then,
}

enum Then {
    Serve,
    /// `SendCtrlAltDel` in guest mode: the harness asks the guest to shut down.
    ShutDownGuest,
    /// The VMM ends, as a guest gone down (`reboot: Restarting system`, exit 0) or as a fatal
    /// error ends Firecracker.
    End(Failure),
    Reboot,
}

impl Reply {
    fn no_content() -> Self {
        Self {
            status: "204 No Content",
            body: String::new(),
            then: Then::Serve,
        }
    }

    fn ok(body: String) -> Self {
        Self {
            status: "200 OK",
            body,
            then: Then::Serve,
        }
    }

    /// A 400 with Firecracker's `{"fault_message": ...}`.
    fn fault(message: &str) -> Self {
        Self {
            status: "400 Bad Request",
            body: serde_json::json!({ "fault_message": message }).to_string(),
            then: Then::Serve,
        }
    }

    /// parsed_request.rs `RequestError::SerdeJson`.
    fn bad_json(error: &str) -> Self {
        Self::fault(&format!(
            "An error occurred when deserializing the json body of a request: {error}."
        ))
    }

    /// rpc_interface.rs `VmmActionError::OperationNotSupportedPreBoot`.
    fn pre_boot() -> Self {
        Self::fault("The requested operation is not supported before starting the microVM.")
    }

    /// rpc_interface.rs `VmmActionError::OperationNotSupportedPostBoot`.
    fn post_boot() -> Self {
        Self::fault("The requested operation is not supported after starting the microVM.")
    }

    fn not_implemented() -> Self {
        Self::fault("The stand-in does not implement this request.")
    }
}

/// How the VMM ends.
enum End {
    Rebooted,
    Failed(ExitCode),
}

/// `InstanceInfo::state` as the API prints it.
#[derive(Clone, Copy, PartialEq)]
enum State {
    NotStarted,
    Running,
    Paused,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::NotStarted => "Not started",
            Self::Running => "Running",
            Self::Paused => "Paused",
        }
    }
}

/// What a started VM holds open, and what its snapshot records.
struct Machine {
    saved: SavedVm,
    _held: Vec<File>,
    _kvm: OwnedFd,
    /// In real-machine mode, the QEMU that runs the guest.
    real: Option<qemu::Machine>,
}

/// A VMM serving its API: started from a config file, or waiting for a snapshot to load.
struct Vmm {
    id: String,
    listener: UnixListener,
    state: State,
    /// rpc_interface.rs `PrebootApiController::boot_path`: set by any call that configures the
    /// VM for a boot; a load is refused after it.
    boot_path: bool,
    machine: Option<Machine>,
    harness: Option<Harness>,
    /// Calls served before the VMM had a harness connection (it has one from its load on).
    unlogged: Vec<String>,
    metrics: Option<File>,
    ends: mpsc::Sender<End>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("Firecracker v{VERSION}");
        return ExitCode::SUCCESS;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut log = Log {
        id: value("--id").unwrap_or_else(|| "anonymous-instance".to_owned()),
        file: None,
    };
    // main.rs answers these two before anything else and exits.
    if args.iter().any(|a| a == "--snapshot-version") {
        println!("v{}", Version::own());
        return ExitCode::SUCCESS;
    }
    if let Some(path) = value("--describe-snapshot") {
        return describe_snapshot(Path::new(&path), &mut log);
    }
    let Some(api_sock) = value("--api-sock") else {
        eprintln!("Error: Arguments parsing error: --api-sock is required");
        return ExitCode::from(1);
    };
    let (ends, end) = mpsc::channel();
    let started = match value("--config-file") {
        Some(config) => start(Path::new(&api_sock), Path::new(&config), &mut log, &ends),
        None => wait_for_load(Path::new(&api_sock), &log, &ends),
    };
    let vmm = match started {
        Ok(vmm) => vmm,
        Err(failure) => return failure.report(&mut log),
    };
    if vmm.state == State::Running && vmm.real().is_none() {
        // The serial console: what a guest kernel would print first.
        println!(
            "[    0.000000] Linux version (fireclaw firecracker stand-in) on {}",
            vmm.machine.as_ref().map_or("", |m| m.tap())
        );
        let _ = io::stdout().flush();
    }
    if vmm.state == State::Running {
        internal_error_after(&log, &ends);
    }
    vmm.run(log, &end)
}

/// The test's `/run/fireclaw-standin/kvm-internal-error`, holding a number of seconds: a VMM
/// started from its config ends that long after its start as Firecracker ends when KVM cannot
/// run the guest (a nested, restricted KVM): it logs the vCPU's exit and its own, and exits
/// with an error. Each start of the unit reads the file anew.
fn internal_error_after(log: &Log, ends: &mpsc::Sender<End>) {
    let Ok(text) = std::fs::read_to_string("/run/fireclaw-standin/kvm-internal-error") else {
        return;
    };
    let Ok(secs) = text.trim().parse::<u64>() else {
        return;
    };
    let mut log = Log {
        id: log.id.clone(),
        file: log.file.as_ref().and_then(|f| f.try_clone().ok()),
    };
    let ends = ends.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(secs));
        log.line("Received KVM_EXIT_INTERNAL_ERROR signal");
        log.line("Vmm is stopping.");
        log.line("Firecracker exiting with error. exit_code=1");
        let _ = ends.send(End::Failed(ExitCode::from(1)));
    });
}

/// main.rs `print_snapshot_data_format`: the format version of a snapshot file.
fn describe_snapshot(path: &Path, log: &mut Log) -> ExitCode {
    let failure = |debug: String, display: String| Failure {
        debug: format!("PrintSnapshotDataFormat({debug})"),
        display: format!("When printing Snapshot Data format: {display}"),
    };
    let bytes = match File::open(path) {
        Ok(file) => read_limited(file),
        Err(e) => {
            return failure(
                format!("OpenSnapshot({e:?})"),
                format!("Unable to open snapshot state file: {e}"),
            )
            .report(log);
        }
    };
    match bytes.and_then(|bytes| parse_state(&bytes)) {
        Ok(snapshot) => {
            println!("v{}", snapshot.version);
            ExitCode::SUCCESS
        }
        Err(e) => failure(
            format!("SnapshotVersion({})", e.debug),
            format!(
                "Invalid data format version of snapshot file: {}",
                e.display
            ),
        )
        .report(log),
    }
}

/// snapshot/mod.rs's limit on what it reads of a state file.
const STATE_FILE_LIMIT: usize = 10_000_000;

/// A `SnapshotError` (snapshot/mod.rs) as its `Debug` and `Display`.
struct SnapshotError {
    debug: String,
    display: String,
}

/// A state file's bytes, up to Firecracker's limit.
fn read_limited(file: File) -> Result<Vec<u8>, SnapshotError> {
    let mut bytes = Vec::new();
    file.take(STATE_FILE_LIMIT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SnapshotError {
            debug: format!("Io({e:?})"),
            display: format!("IO Error: {e}"),
        })?;
    if bytes.len() > STATE_FILE_LIMIT {
        return Err(SnapshotError {
            debug: format!("SizeLimitExceeded({STATE_FILE_LIMIT})"),
            display: format!("Snapshot size exceeds limit of {STATE_FILE_LIMIT} bytes"),
        });
    }
    Ok(bytes)
}

/// The state file's header and contents; where Firecracker's bitcode would not decode, the
/// stand-in's JSON does not.
fn parse_state(bytes: &[u8]) -> Result<SnapshotFile, SnapshotError> {
    serde_json::from_slice(bytes).map_err(|e| SnapshotError {
        debug: format!("Bitcode({:?})", e.to_string()),
        display: format!("An error occurred during bitcode serialization: {e}"),
    })
}

/// api_server_adapter.rs without a config file: the API socket only; the VM comes from the
/// calls, here from a snapshot load.
fn wait_for_load(api_sock: &Path, log: &Log, ends: &mpsc::Sender<End>) -> Result<Vmm, Failure> {
    Ok(Vmm {
        id: log.id.clone(),
        listener: bind_api(api_sock)?,
        state: State::NotStarted,
        boot_path: false,
        machine: None,
        harness: None,
        unlogged: Vec::new(),
        metrics: None,
        ends: ends.clone(),
    })
}

fn bind_api(api_sock: &Path) -> Result<UnixListener, Failure> {
    UnixListener::bind(api_sock).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            let path = api_sock.display().to_string();
            Failure::api(
                format!("FailedToBindSocket({path:?})"),
                format!(
                    "Failed to open the API socket at: {path}. Check that it is not already used."
                ),
            )
        } else {
            // micro_http's ServerError::IOError.
            Failure::api(
                format!("FailedToBindAndRunHttpServer(IOError({e:?}))"),
                format!("Failed to bind and run the HTTP server: IO error: {e}"),
            )
        }
    })
}

/// A snapshot format version, `MAJOR.MINOR.PATCH` (semver, as Firecracker keeps it).
#[derive(Clone, Copy, PartialEq)]
struct Version {
    major: u64,
    minor: u64,
    patch: u64,
}

impl Version {
    /// persist.rs `SNAPSHOT_VERSION` of Firecracker 1.16.1.
    const FIRECRACKER: Self = Self {
        major: 10,
        minor: 0,
        patch: 0,
    };

    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().trim_start_matches('v').split('.');
        let mut next = || parts.next()?.parse::<u64>().ok();
        let version = Self {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        parts.next().is_none().then_some(version)
    }

    /// The version this stand-in writes and accepts: Firecracker's, or the test's override.
    fn own() -> Self {
        std::fs::read_to_string(harness_wire::SNAPSHOT_VERSION_OVERRIDE)
            .ok()
            .and_then(|text| Self::parse(&text))
            .unwrap_or(Self::FIRECRACKER)
    }

    /// snapshot/mod.rs `Snapshot::load_without_crc_check`: the same major, and a minor no
    /// newer than its own.
    fn loads(self, snapshot: Self) -> bool {
        snapshot.major == self.major && snapshot.minor <= self.minor
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// snapshot/mod.rs `SNAPSHOT_MAGIC_ID` on x86_64.
const SNAPSHOT_MAGIC: u64 = 0x0710_1984_8664_0000;

/// The stand-in's snapshot state file: Firecracker's header (magic and format version), then
/// what a load needs to open what the VM had open and to find its frozen guest. JSON, where
/// Firecracker writes bitcode: nothing but the stand-in reads it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotFile {
    magic: u64,
    version: String,
    vm: SavedVm,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct SavedVm {
    vcpu_count: u64,
    mem_size_mib: u64,
    kernel_image_path: PathBuf,
    initrd_path: Option<PathBuf>,
    drives: Vec<SavedDrive>,
    network_interfaces: Vec<SavedInterface>,
    /// The harness's token for the frozen guest this snapshot's memory stands for.
    guest: Option<String>,
    /// In real-machine mode: QEMU's arguments, which a load starts QEMU with again.
    #[serde(default)]
    qemu_args: Option<Vec<String>>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct SavedDrive {
    drive_id: String,
    path_on_host: PathBuf,
    is_root_device: bool,
    is_read_only: bool,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct SavedInterface {
    iface_id: String,
    host_dev_name: String,
    guest_mac: String,
}

impl SavedVm {
    fn from_config(config: &Config) -> Self {
        let machine = config.machine_config.as_ref();
        Self {
            vcpu_count: machine.and_then(|m| m.vcpu_count).unwrap_or(1),
            mem_size_mib: machine.and_then(|m| m.mem_size_mib).unwrap_or(128),
            kernel_image_path: PathBuf::from(&config.boot_source.kernel_image_path),
            initrd_path: config.boot_source.initrd_path.as_ref().map(PathBuf::from),
            drives: config
                .drives
                .iter()
                .map(|d| SavedDrive {
                    drive_id: d.drive_id.clone(),
                    path_on_host: PathBuf::from(&d.path_on_host),
                    is_root_device: d.is_root_device,
                    is_read_only: d.is_read_only.unwrap_or(false),
                })
                .collect(),
            network_interfaces: config
                .network_interfaces
                .iter()
                .map(|i| SavedInterface {
                    iface_id: i.iface_id.clone(),
                    host_dev_name: i.host_dev_name.clone(),
                    guest_mac: i.guest_mac.clone(),
                })
                .collect(),
            guest: None,
            qemu_args: None,
        }
    }

    /// What the harness is told about this VM.
    fn hello(&self) -> Hello {
        let interface = self.network_interfaces.first();
        Hello {
            tap: interface
                .map(|i| i.host_dev_name.clone())
                .unwrap_or_default(),
            mac: interface.map(|i| i.guest_mac.clone()).unwrap_or_default(),
            kernel: self.kernel_image_path.clone(),
            rootfs: self
                .drives
                .iter()
                .find(|d| d.is_root_device)
                .map(|d| d.path_on_host.clone())
                .unwrap_or_default(),
            seed: self
                .drives
                .iter()
                .map(|d| d.path_on_host.clone())
                .find(|p| p.ends_with("seed.img"))
                .unwrap_or_default(),
        }
    }
}

impl Machine {
    fn tap(&self) -> &str {
        self.saved
            .network_interfaces
            .first()
            .map_or("", |i| i.host_dev_name.as_str())
    }
}

/// The body of `PUT /snapshot/create` (vmm_config/snapshot.rs `CreateSnapshotParams`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSnapshotParams {
    #[serde(default)]
    snapshot_type: SnapshotType,
    snapshot_path: PathBuf,
    mem_file_path: PathBuf,
}

#[derive(serde::Deserialize, Default, PartialEq)]
enum SnapshotType {
    Diff,
    #[default]
    Full,
}

/// The body of `PUT /snapshot/load` (vmm_config/snapshot.rs `LoadSnapshotConfig`). The fields
/// the stand-in has no use for are still accepted, as Firecracker accepts them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadSnapshotConfig {
    snapshot_path: PathBuf,
    mem_file_path: Option<PathBuf>,
    mem_backend: Option<MemBackend>,
    #[serde(default)]
    #[allow(dead_code)]
    enable_diff_snapshots: bool,
    #[serde(default)]
    #[allow(dead_code)]
    track_dirty_pages: bool,
    #[serde(default)]
    resume_vm: bool,
    #[serde(default)]
    network_overrides: Vec<NetworkOverride>,
    #[allow(dead_code)]
    vsock_override: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    clock_realtime: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MemBackend {
    backend_path: PathBuf,
    backend_type: MemBackendType,
}

#[derive(serde::Deserialize, PartialEq)]
enum MemBackendType {
    File,
    Uffd,
}

#[derive(serde::Deserialize)]
struct NetworkOverride {
    iface_id: String,
    host_dev_name: String,
}

/// The body of `PATCH /vm` (vmm_config/snapshot.rs `Vm`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateChange {
    state: RequestedState,
}

#[derive(serde::Deserialize, PartialEq)]
enum RequestedState {
    Paused,
    Resumed,
}

#[derive(serde::Deserialize)]
struct LoggerConfig {
    log_path: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct MetricsConfig {
    metrics_path: PathBuf,
}

/// utils.rs `open_file_nonblock`, which the logger and the metrics open their files with.
fn open_file_nonblock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .custom_flags(libc::O_NONBLOCK)
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// Whether a call configures the VM for a boot (rpc_interface.rs: each sets `boot_path`), or,
/// once it runs, is one Firecracker refuses after the start.
fn configures_boot(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        (
            "PUT",
            "/boot-source" | "/machine-config" | "/vsock" | "/entropy" | "/balloon"
        ) | ("PUT", "/mmds/config" | "/hotplug/memory")
            | ("PATCH", "/machine-config")
    ) || (method == "PUT"
        && ["/drives/", "/network-interfaces/", "/pmem/"]
            .iter()
            .any(|prefix| path.starts_with(prefix)))
}

/// The fault of a failed restore: persist.rs `RestoreFromSnapshotError` under rpc_interface.rs
/// `LoadSnapshotError::RestoreFromSnapshot` and `VmmActionError::LoadSnapshot`.
fn restore_fault(detail: &str) -> String {
    format!("Load snapshot error: Failed to restore from snapshot: {detail}")
}

/// The same for an error of the snapshot state file (`SnapshotStateFromFileError`).
fn state_file_fault(detail: &str) -> String {
    restore_fault(&format!("Failed to get snapshot state from file: {detail}"))
}

/// The same for an error while building the VM (`BuildMicrovmFromSnapshotError`); a device's
/// error comes through `RestoreDevices` and `DeviceManagerPersistError::MmioRestore`.
fn build_fault(detail: &str) -> String {
    restore_fault(&format!("Failed to build microVM from snapshot: {detail}"))
}

fn device_fault(detail: &str) -> String {
    build_fault(&format!(
        "Failed to restore devices: Error restoring MMIO devices: {detail}"
    ))
}

/// A VM restored from a snapshot, before the harness knows of it.
struct Restored {
    saved: SavedVm,
    held: Vec<File>,
    kvm: OwnedFd,
    tap: File,
}

impl Vmm {
    /// The QEMU of a real-machine mode VM.
    fn real(&self) -> Option<&qemu::Machine> {
        self.machine.as_ref().and_then(|m| m.real.as_ref())
    }

    /// Serves the API until the VM is to end; returns the exit code.
    fn run(mut self, mut log: Log, end: &mpsc::Receiver<End>) -> ExitCode {
        let real = matches!(qemu::Mode::chosen(), Ok(Some(_)));
        let listener = self.listener.try_clone().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                self.serve(stream, &mut log);
            }
        });
        match end.recv() {
            Ok(End::Failed(code)) => code,
            Ok(End::Rebooted) | Err(_) => {
                // A real machine's kernel has printed its own last lines.
                if !real {
                    println!("reboot: Restarting system");
                    let _ = io::stdout().flush();
                }
                ExitCode::SUCCESS
            }
        }
    }

    /// Answers one request: logs the call through the harness first, so the log is complete
    /// when the client has its answer.
    fn serve(&mut self, mut stream: UnixStream, log: &mut Log) {
        let Some((method, path, body)) = read_request(&mut stream) else {
            return;
        };
        let reply = self.handle(&method, &path, &body, log);
        let call = format!("{method} {path} {body}");
        match &self.harness {
            Some(harness) => {
                for earlier in self.unlogged.drain(..) {
                    harness.call(earlier);
                }
                harness.call(call);
            }
            None => self.unlogged.push(call),
        }
        if reply.status.starts_with("400") {
            // parsed_request.rs `convert_to_response`.
            let fault = serde_json::from_str::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v["fault_message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            log.line(&format!(
                "Received Error. Status code: 400 Bad Request. Message: {fault}"
            ));
        }
        let _ = write!(
            stream,
            "HTTP/1.1 {}\r\nServer: Firecracker API\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            reply.status,
            reply.body.len(),
            reply.body
        );
        let _ = stream.flush();
        drop(stream);
        match reply.then {
            Then::Serve => {}
            Then::ShutDownGuest => {
                if let Some(harness) = &self.harness {
                    let _ = harness.send(&ToHarness::Shutdown);
                }
            }
            Then::Reboot => {
                let _ = self.ends.send(End::Rebooted);
            }
            Then::End(failure) => {
                let code = failure.report(log);
                let _ = self.ends.send(End::Failed(code));
            }
        }
    }

    fn handle(&mut self, method: &str, path: &str, body: &str, log: &mut Log) -> Reply {
        let started = self.state != State::NotStarted;
        match (method, path) {
            ("GET", "/") => Reply::ok(
                serde_json::json!({
                    "id": self.id,
                    "state": self.state.name(),
                    "vmm_version": VERSION,
                    "app_name": "Firecracker",
                })
                .to_string(),
            ),
            ("PUT", "/actions") if body.contains("SendCtrlAltDel") => {
                if !started {
                    return Reply::pre_boot();
                }
                if let Some(machine) = self.real() {
                    return match machine.ctrl_alt_del() {
                        Ok(()) => Reply::no_content(),
                        Err(e) => Reply::fault(&format!("Internal VMM error: {e}")),
                    };
                }
                Reply {
                    then: match &self.harness {
                        // The guest shuts down; the harness says when it has gone.
                        Some(harness) if harness.guest => Then::ShutDownGuest,
                        _ => Then::Reboot,
                    },
                    ..Reply::no_content()
                }
            }
            ("PUT", "/logger") if started => Reply::post_boot(),
            ("PUT", "/logger") => {
                let config: LoggerConfig = match serde_json::from_str(body) {
                    Ok(config) => config,
                    Err(e) => return Reply::bad_json(&e.to_string()),
                };
                if let Some(path) = config.log_path {
                    match open_file_nonblock(&path) {
                        Ok(file) => log.file = Some(file),
                        Err(e) => {
                            return Reply::fault(&format!(
                                "Logger error: Failed to open target file: {e}"
                            ));
                        }
                    }
                }
                Reply::no_content()
            }
            ("PUT", "/metrics") if started => Reply::post_boot(),
            ("PUT", "/metrics") => {
                let config: MetricsConfig = match serde_json::from_str(body) {
                    Ok(config) => config,
                    Err(e) => return Reply::bad_json(&e.to_string()),
                };
                match open_file_nonblock(&config.metrics_path) {
                    Ok(file) => {
                        self.metrics = Some(file);
                        Reply::no_content()
                    }
                    Err(e) => Reply::fault(&format!(
                        "Metrics error: Cannot initialize the metrics system due to bad user input: {e}"
                    )),
                }
            }
            ("PUT", "/snapshot/load") => {
                let config: LoadSnapshotConfig = match serde_json::from_str(body) {
                    Ok(config) => config,
                    Err(e) => return Reply::bad_json(&e.to_string()),
                };
                if started {
                    return Reply::post_boot();
                }
                self.load(config, log)
            }
            ("PUT", "/snapshot/create") => {
                let params: CreateSnapshotParams = match serde_json::from_str(body) {
                    Ok(params) => params,
                    Err(e) => return Reply::bad_json(&e.to_string()),
                };
                if !started {
                    return Reply::pre_boot();
                }
                self.create_snapshot(&params)
            }
            ("PATCH", "/vm") => {
                let change: VmStateChange = match serde_json::from_str(body) {
                    Ok(change) => change,
                    Err(e) => return Reply::bad_json(&e.to_string()),
                };
                if !started {
                    return Reply::pre_boot();
                }
                self.change_state(&change.state)
            }
            (method, path) if configures_boot(method, path) => {
                if started {
                    Reply::post_boot()
                } else {
                    self.boot_path = true;
                    Reply::no_content()
                }
            }
            _ => Reply::not_implemented(),
        }
    }

    /// vmm/src/lib.rs `pause_vm`/`resume_vm`: each is a no-op in the state it asks for.
    fn change_state(&mut self, requested: &RequestedState) -> Reply {
        let (wanted, message) = match requested {
            RequestedState::Paused => (State::Paused, ToHarness::Pause),
            RequestedState::Resumed => (State::Running, ToHarness::Resume),
        };
        if self.state == wanted {
            return Reply::no_content();
        }
        if let Some(machine) = self.real() {
            let done = match requested {
                RequestedState::Paused => machine.pause(),
                RequestedState::Resumed => machine.resume(),
            };
            if let Err(e) = done {
                return Reply::fault(&format!("Internal VMM error: {e}"));
            }
        }
        if let Some(harness) = &self.harness
            && let Some(ToStandIn::Refused(reason)) = harness.ask(&message)
        {
            return Reply::fault(&format!("Internal VMM error: {reason}"));
        }
        self.state = wanted;
        Reply::no_content()
    }

    /// persist.rs `create_snapshot`: only while paused (the vCPUs refuse to save their state
    /// while running); the state file, then the memory file, both complete before the answer.
    fn create_snapshot(&mut self, params: &CreateSnapshotParams) -> Reply {
        let fault = |detail: String| Reply::fault(&format!("Create snapshot error: {detail}"));
        if self.state != State::Paused {
            return fault(
                "Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"
                    .to_owned(),
            );
        }
        if params.snapshot_type == SnapshotType::Diff {
            return Reply::fault("The stand-in does not implement diff snapshots.");
        }
        let Some(machine) = &self.machine else {
            return Reply::pre_boot();
        };
        let mut saved = machine.saved.clone();
        if let Some(harness) = &self.harness {
            match harness.ask(&ToHarness::Snapshot) {
                Some(ToStandIn::Snapshotted { guest }) => saved.guest = guest,
                Some(ToStandIn::Refused(reason)) => {
                    return fault(format!("Cannot save the microVM state: {reason}"));
                }
                _ => {
                    return fault(
                        "Cannot save the microVM state: the harness did not answer".to_owned(),
                    );
                }
            }
        }
        let mem_size = saved.mem_size_mib * 1024 * 1024;
        let state = SnapshotFile {
            magic: SNAPSHOT_MAGIC,
            version: Version::own().to_string(),
            vm: saved,
        };
        // persist.rs `snapshot_state_to_file`: create, truncate, write, flush, sync.
        let mut file = match OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&params.snapshot_path)
        {
            Ok(file) => file,
            Err(e) => {
                return fault(format!(
                    "Cannot perform open on the snapshot backing file: {e}"
                ));
            }
        };
        let bytes = serde_json::to_vec(&state).unwrap();
        if let Err(e) = file.write_all(&bytes) {
            return fault(format!("Cannot serialize the microVM state: IO Error: {e}"));
        }
        if let Err(e) = file.sync_all() {
            return fault(format!(
                "Cannot perform sync_all on the snapshot backing file: {e}"
            ));
        }
        if let Some(machine) = self.real() {
            // The memory as QEMU's migration stream of the paused guest.
            return match machine.save_memory(&params.mem_file_path) {
                Ok(()) => Reply::no_content(),
                Err(e) => fault(format!("Cannot save the microVM memory: {e}")),
            };
        }
        // vstate/vm.rs `snapshot_memory_to_file`: no truncate at open; a file of another size
        // is emptied first; then the guest memory's size (the stand-in's pages are all zero,
        // so the file stays sparse).
        let existed = params.mem_file_path.exists();
        let memory = match OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&params.mem_file_path)
        {
            Ok(file) => file,
            Err(e) => {
                return fault(format!(
                    "Cannot perform open on the memory backing file: {e}"
                ));
            }
        };
        if existed
            && memory.metadata().map(|m| m.len()).unwrap_or(0) != mem_size
            && let Err(e) = memory.set_len(0)
        {
            return fault(format!(
                "Cannot perform truncate on the memory backing file: {e}"
            ));
        }
        if let Err(e) = memory.set_len(mem_size) {
            return fault(format!(
                "Cannot perform set_length on the memory backing file: {e}"
            ));
        }
        if let Err(e) = memory.sync_all() {
            return fault(format!(
                "Cannot perform sync_all on the memory backing file: {e}"
            ));
        }
        Reply::no_content()
    }

    /// rpc_interface.rs `load_snapshot`: refused after a boot-specific call (the VMM serves
    /// on); any failure of the restore itself ends the VMM after the answer, as Firecracker
    /// takes the process to be too dirty to recover.
    fn load(&mut self, config: LoadSnapshotConfig, log: &mut Log) -> Reply {
        // request/snapshot.rs `parse_put_snapshot_load`.
        let memory = match (config.mem_backend, config.mem_file_path) {
            (Some(_), Some(_)) => {
                return Reply::bad_json(
                    "too many fields: either `mem_backend` or `mem_file_path` exclusively is required",
                );
            }
            (None, None) => {
                return Reply::bad_json(
                    "missing field: either `mem_backend` or `mem_file_path` is required",
                );
            }
            (Some(backend), None) if backend.backend_type == MemBackendType::Uffd => {
                return Reply::fault("The stand-in does not implement the Uffd memory backend.");
            }
            (Some(backend), None) => backend.backend_path,
            (None, Some(path)) => path,
        };
        if self.boot_path {
            let message =
                "Loading a microVM snapshot not allowed after configuring boot-specific resources.";
            log.line(message);
            return Reply::fault(&format!("Load snapshot error: {message}"));
        }
        let fatal = |fault: String| Reply {
            then: Then::End(Failure::api(
                "BuildMicroVmError(Restore)".to_owned(),
                // displaydoc's "{0}." after the variant's own full stop.
                "Failed to build MicroVM: Loading snapshot failed..".to_owned(),
            )),
            ..Reply::fault(&fault)
        };
        let saved = match read_snapshot_for_load(&config.snapshot_path, &config.network_overrides) {
            Ok(saved) => saved,
            Err((fault, tap)) => {
                if let Some(tap) = tap {
                    self.log_calls_only(&tap);
                }
                return fatal(fault);
            }
        };
        let restored = match restore(saved, &memory) {
            Ok(restored) => restored,
            Err((fault, tap)) => {
                self.log_calls_only(&tap);
                return fatal(fault);
            }
        };
        match qemu::Mode::chosen() {
            Ok(Some(mode)) => {
                return self.load_real(&mode, restored, &memory, config.resume_vm, fatal);
            }
            Ok(None) => {}
            Err(e) => return fatal(restore_fault(&e)),
        }
        let hello = restored.saved.hello();
        let first = ToHarness::Restore {
            hello,
            guest: restored.saved.guest.clone(),
        };
        if let Some((harness, answer)) = Harness::connect(&first, Some(&restored.tap), &self.ends) {
            let refused = match answer {
                ToStandIn::Refused(reason) => Some(reason),
                _ => None,
            };
            self.harness = Some(harness);
            if let Some(reason) = refused {
                return fatal(restore_fault(&format!(
                    "the stand-in has no frozen guest for this snapshot: {reason}"
                )));
            }
        }
        let Restored {
            mut saved,
            mut held,
            kvm,
            tap,
        } = restored;
        held.push(tap);
        saved.guest = None;
        self.machine = Some(Machine {
            saved,
            _held: held,
            _kvm: kvm,
            real: None,
        });
        self.state = State::Paused;
        if config.resume_vm {
            if let Some(harness) = &self.harness
                && let Some(ToStandIn::Refused(reason)) = harness.ask(&ToHarness::Resume)
            {
                return Reply {
                    then: Then::End(Failure::api(
                        "BuildMicroVmError(Resume)".to_owned(),
                        "Failed to build MicroVM: Resuming MicroVM after loading snapshot failed.."
                            .to_owned(),
                    )),
                    ..Reply::fault(&format!(
                        "Load snapshot error: Failed to resume microVM: {reason}"
                    ))
                };
            }
            self.state = State::Running;
        }
        Reply::no_content()
    }

    /// The load on a real machine: a new QEMU with the recorded arguments takes in the
    /// migration stream, paused until it is resumed.
    fn load_real(
        &mut self,
        mode: &qemu::Mode,
        restored: Restored,
        memory: &Path,
        resume: bool,
        fatal: impl Fn(String) -> Reply,
    ) -> Reply {
        let Restored {
            saved,
            mut held,
            kvm,
            tap,
        } = restored;
        let Some(args) = saved.qemu_args.clone() else {
            return fatal(restore_fault(
                "the snapshot was not taken of a real machine",
            ));
        };
        let extra = ["-incoming", "defer", "-S"];
        let machine =
            match qemu::Machine::start(mode, args, &extra, &tap, machine_ended(&self.ends)) {
                Ok(machine) => machine,
                Err(e) => return fatal(restore_fault(&e)),
            };
        if let Err(e) = machine.load_memory(memory) {
            machine.kill();
            return fatal(restore_fault(&format!("Failed to load guest memory: {e}")));
        }
        held.push(tap);
        self.state = State::Paused;
        if resume {
            if let Err(e) = machine.resume() {
                machine.kill();
                return fatal(format!(
                    "Load snapshot error: Failed to resume microVM: {e}"
                ));
            }
            self.state = State::Running;
        }
        self.machine = Some(Machine {
            saved,
            _held: held,
            _kvm: kvm,
            real: Some(machine),
        });
        Reply::no_content()
    }

    /// A VMM whose load failed before it opened its tap still has its calls logged.
    fn log_calls_only(&mut self, tap: &str) {
        let first = ToHarness::CallsOnly {
            tap: tap.to_owned(),
        };
        if let Some((harness, _)) = Harness::connect(&first, None, &self.ends) {
            self.harness = Some(harness);
        }
    }
}

/// persist.rs `restore_from_snapshot` up to the memory: the state file (magic, format version),
/// then the network overrides. An error carries the fault and, once the file was read, the tap.
fn read_snapshot_for_load(
    path: &Path,
    overrides: &[NetworkOverride],
) -> Result<SavedVm, (String, Option<String>)> {
    let file = File::open(path).map_err(|e| {
        (
            state_file_fault(&format!("Failed to open snapshot file: {e}")),
            None,
        )
    })?;
    let load_fault = |e: SnapshotError| {
        state_file_fault(&format!(
            "Failed to load snapshot state from file: {}",
            e.display
        ))
    };
    let snapshot = read_limited(file)
        .and_then(|bytes| parse_state(&bytes))
        .map_err(|e| (load_fault(e), None))?;
    let tap = snapshot
        .vm
        .network_interfaces
        .first()
        .map(|i| i.host_dev_name.clone());
    let refused = |display: String| {
        (
            load_fault(SnapshotError {
                debug: String::new(),
                display,
            }),
            tap.clone(),
        )
    };
    if snapshot.magic != SNAPSHOT_MAGIC {
        return Err(refused(format!(
            "Magic value does not match arch: {}",
            snapshot.magic
        )));
    }
    match Version::parse(&snapshot.version) {
        Some(version) if Version::own().loads(version) => {}
        _ => {
            return Err(refused(format!(
                "Invalid data version: {}",
                snapshot.version
            )));
        }
    }
    let mut vm = snapshot.vm;
    for entry in overrides {
        let Some(interface) = vm
            .network_interfaces
            .iter_mut()
            .find(|i| i.iface_id == entry.iface_id)
        else {
            return Err((state_file_fault("Unknown Network Device."), tap));
        };
        interface.host_dev_name.clone_from(&entry.host_dev_name);
    }
    Ok(vm)
}

/// The rest of `restore_from_snapshot` and builder.rs `build_microvm_from_snapshot`, as far as
/// they open files: the memory file (at least the guest memory's size), `/dev/kvm`, each drive,
/// then the tap. An error carries the fault and the tap's name.
fn restore(saved: SavedVm, memory: &Path) -> Result<Restored, (String, String)> {
    let Some(tap_name) = saved
        .network_interfaces
        .first()
        .map(|i| i.host_dev_name.clone())
    else {
        return Err((
            restore_fault("the stand-in needs one network interface"),
            String::new(),
        ));
    };
    let failed = |fault: String| (fault, tap_name.clone());
    let memory_fault = |detail: String| {
        restore_fault(&format!(
            "Failed to load guest memory: Error creating guest memory from file: {detail}"
        ))
    };
    let memory_file = File::open(memory)
        .map_err(|e| failed(memory_fault(format!("Failed to load guest memory: {e}"))))?;
    let size = memory_file
        .metadata()
        .map_err(|e| {
            failed(memory_fault(format!(
                "Failed to restore guest memory: Cannot retrieve snapshot file metadata: {e}"
            )))
        })?
        .len();
    // vstate/memory.rs `snapshot_file`: no mapping beyond the end of the file. (A real
    // machine's memory file is QEMU's migration stream, which holds only the pages in use.)
    if saved.qemu_args.is_none() && saved.mem_size_mib * 1024 * 1024 > size {
        return Err(failed(memory_fault(
            "Failed to restore guest memory: Total sum of memory regions exceeds largest possible file offset"
                .to_owned(),
        )));
    }
    let kvm: OwnedFd = open_kvm()
        .map_err(|e| {
            failed(build_fault(&format!(
                "Failed to create microVM and vCPUs: {}",
                kvm_message(&e)
            )))
        })?
        .into();
    let mut held = vec![memory_file];
    // device_manager/persist.rs restores the block devices before the network devices.
    for drive in &saved.drives {
        let file = OpenOptions::new()
            .read(true)
            .write(!drive.is_read_only)
            .open(&drive.path_on_host)
            .map_err(|e| {
                failed(device_fault(&format!(
                    "Block: Virtio backend error: Error manipulating the backing file: {e} {}",
                    drive.path_on_host.display()
                )))
            })?;
        held.push(file);
    }
    let tap = open_tap(&tap_name).map_err(|e| {
        failed(device_fault(&format!(
            "Net: Failed to create a network device: {}",
            e.display
        )))
    })?;
    Ok(Restored {
        saved,
        held,
        kvm,
        tap,
    })
}

/// vstate/kvm.rs `Kvm::new` → kvm-ioctls `Kvm::new` (O_RDWR|O_CLOEXEC).
fn open_kvm() -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open("/dev/kvm")
}

/// builder.rs `StartMicrovmError::Kvm` of vstate/kvm.rs `KvmError::Kvm`.
fn kvm_message(error: &io::Error) -> String {
    // The `\` and line break are in the doc comment the message comes from.
    format!(
        "Kvm error: Error creating KVM object: {error} Make sure the user launching the firecracker process is \\\nconfigured on the /dev/kvm file's ACL."
    )
}

/// One HTTP request from the API socket: method, path and body.
fn read_request(stream: &mut UnixStream) -> Option<(String, String, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = request.parse(&buffer) {
            let length = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            let method = request.method.unwrap_or("").to_owned();
            let path = request.path.unwrap_or("").to_owned();
            while buffer.len() < head + length {
                let n = stream.read(&mut chunk).ok()?;
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let end = (head + length).min(buffer.len());
            return Some((
                method,
                path,
                String::from_utf8_lossy(&buffer[head..end]).into_owned(),
            ));
        }
    }
}
