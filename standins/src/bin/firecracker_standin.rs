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
//! harness reports the guest gone (also after a reboot inside the guest). Two differences on
//! purpose: run as root, it refuses a tap that does not exist (Firecracker would create one that
//! no bridge holds), and it logs nothing on stdout while all goes well (stdout is the console,
//! whose lines the tests read).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use fireclaw_standins::harness_wire::{self, Hello, ToHarness, ToStandIn};

const VERSION: &str = "1.16.0";

#[derive(serde::Deserialize)]
struct Config {
    #[serde(rename = "boot-source")]
    boot_source: BootSource,
    drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    network_interfaces: Vec<Interface>,
    logger: Option<Logger>,
}

#[derive(serde::Deserialize)]
struct BootSource {
    kernel_image_path: String,
    initrd_path: Option<String>,
}

#[derive(serde::Deserialize)]
struct Drive {
    path_on_host: String,
    #[serde(default)]
    is_root_device: bool,
    is_read_only: Option<bool>,
}

#[derive(serde::Deserialize)]
struct Interface {
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
    /// (`vmm/src/vmm_config/net.rs`, `vmm/src/devices/virtio/net/mod.rs`).
    fn net(debug: String, display: String) -> Self {
        Self::config(
            format!("NetDevice(CreateNetworkDevice({debug}))"),
            format!("Network device error: Could not create the network device: {display}"),
        )
    }

    /// `TapError::IfreqExecuteError` (`vmm/src/devices/virtio/net/tap.rs`).
    fn tap_ifreq(error: &io::Error, name: &str) -> Self {
        Self::net(
            format!("TapOpen(IfreqExecuteError({error:?}, {name:?}))"),
            format!(
                "Open tap device failed: Error while creating ifreq structure: {error}. Invalid TUN/TAP Backend provided by {name}. Check our documentation on setting up the network devices."
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

/// What a running VMM holds open, and what it serves.
struct Vmm {
    listener: UnixListener,
    tap_name: String,
    harness: Option<Harness>,
    _held: Vec<File>,
    _kvm: OwnedFd,
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
    let (Some(api_sock), Some(config_path)) = (value("--api-sock"), value("--config-file")) else {
        eprintln!("Error: Arguments parsing error: --api-sock and --config-file are required");
        return ExitCode::from(1);
    };
    let mut log = Log {
        id: value("--id").unwrap_or_else(|| "anonymous-instance".to_owned()),
        file: None,
    };
    match start(Path::new(&api_sock), Path::new(&config_path), &mut log) {
        Ok(vmm) => vmm.run(),
        Err(failure) => failure.report(&mut log),
    }
}

/// Firecracker's start with a config file, step by step in its order.
fn start(api_sock: &Path, config_path: &Path, log: &mut Log) -> Result<Vmm, Failure> {
    // main.rs reads the file with `expect`: a failure panics, and Firecracker is built with
    // panic=abort. Its panic hook logs the location of that `expect` in v1.16.0.
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
    let listener = UnixListener::bind(api_sock).map_err(|e| {
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
    })?;
    // resources.rs `VmResources::from_json`: logger, boot source, drives, network.
    let config: Config = serde_json::from_str(&text).map_err(|e| {
        Failure::config(format!("InvalidJson({e:?})"), format!("Invalid JSON: {e}"))
    })?;
    if let Some(path) = config.logger.and_then(|l| l.log_path) {
        // logger/logging.rs `open_file_nonblock`: creates the file, opens it read-write.
        let file = OpenOptions::new()
            .custom_flags(libc::O_NONBLOCK)
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
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
    let tap = open_tap(&interface.host_dev_name)?;
    // builder.rs `build_microvm_for_boot` → vstate/kvm.rs `Kvm::new` → kvm-ioctls `Kvm::new`
    // (O_RDWR|O_CLOEXEC); its error is vmm-sys-util's errno `Error(i32)`.
    let kvm: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| {
            Failure::boot(
                format!("Kvm(Kvm(Error({})))", e.raw_os_error().unwrap_or(0)),
                // The `\` and line break are in the doc comment the message comes from.
                format!(
                    "Kvm error: Error creating KVM object: {e} Make sure the user launching the firecracker process is \\\nconfigured on the /dev/kvm file's ACL."
                ),
            )
        })?
        .into();
    log.line("Successfully started microvm that was configured from one single json");
    let hello = Hello {
        tap: interface.host_dev_name.clone(),
        mac: interface.guest_mac.clone(),
        kernel: PathBuf::from(&config.boot_source.kernel_image_path),
        rootfs: config
            .drives
            .iter()
            .find(|d| d.is_root_device)
            .map(|d| PathBuf::from(&d.path_on_host))
            .unwrap_or_default(),
        seed: config
            .drives
            .iter()
            .map(|d| PathBuf::from(&d.path_on_host))
            .find(|p| p.ends_with("seed.img"))
            .unwrap_or_default(),
    };
    let harness = Harness::connect(&hello, &tap);
    held.push(tap);
    Ok(Vmm {
        listener,
        tap_name: hello.tap,
        harness,
        _held: held,
        _kvm: kvm,
    })
}

/// devices/virtio/net/tap.rs `Tap::open_named`, then `set_vnet_hdr_size` as `Net::new` does.
fn open_tap(name: &str) -> Result<File, Failure> {
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
        .map_err(|e| {
            Failure::net(
                format!("TapOpen(OpenTun({e:?}))"),
                format!("Open tap device failed: Couldn't open /dev/net/tun: {e}"),
            )
        })?;
    if name.len() >= 16 {
        return Err(Failure::net(
            "TapOpen(InvalidIfname)".to_owned(),
            "Open tap device failed: Invalid interface name".to_owned(),
        ));
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if root && !Path::new("/sys/class/net").join(name).exists() {
        return Err(Failure::tap_ifreq(
            &io::Error::from_raw_os_error(libc::ENODEV),
            name,
        ));
    }
    let mut request = [0u8; 40];
    request[..name.len()].copy_from_slice(name.as_bytes());
    request[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
    // SAFETY: `request` is a valid struct ifreq (40 bytes) for the duration of the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) } < 0 {
        return Err(Failure::tap_ifreq(&io::Error::last_os_error(), name));
    }
    let size = harness_wire::VNET_HDR_LEN as libc::c_int;
    // SAFETY: the ioctl reads one int from a valid pointer.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETVNETHDRSZ, &raw const size) } < 0 {
        let e = io::Error::last_os_error();
        return Err(Failure::net(
            format!("TapSetVnetHdrSize(SetSizeOfVnetHdr({e:?}))"),
            format!(
                "Setting vnet header size failed: Error while setting size of the vnet header: {e}"
            ),
        ));
    }
    Ok(tun)
}

/// The stand-in's end of the harness connection.
struct Harness {
    writer: Mutex<UnixStream>,
    acks: Mutex<mpsc::Receiver<()>>,
    exits: Mutex<Option<mpsc::Receiver<()>>>,
    guest: bool,
}

impl Harness {
    /// Greets the harness, if the sandbox has one; a stand-in without it has no relay and no
    /// calls log.
    fn connect(hello: &Hello, tap: &File) -> Option<Self> {
        if !Path::new(harness_wire::SOCKET).exists() {
            return None;
        }
        match Self::try_connect(hello, tap) {
            Ok(harness) => Some(harness),
            Err(e) => {
                eprintln!(
                    "stand-in: the harness at {} did not answer: {e}",
                    harness_wire::SOCKET
                );
                None
            }
        }
    }

    fn try_connect(hello: &Hello, tap: &File) -> io::Result<Self> {
        let stream = UnixStream::connect(harness_wire::SOCKET)?;
        let greeting = harness_wire::line(&ToHarness::Hello(hello.clone()))?;
        harness_wire::send_with_fd(&stream, &greeting, tap.as_raw_fd())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut first = String::new();
        reader.read_line(&mut first)?;
        let ToStandIn::Ready { guest } = harness_wire::parse(&first)? else {
            return Err(io::Error::other(format!("unexpected {first:?}")));
        };
        stream.set_read_timeout(None)?;
        let (ack, acks) = mpsc::channel();
        let (exit, exits) = mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                match harness_wire::parse(&line) {
                    Ok(ToStandIn::Ack) => {
                        let _ = ack.send(());
                    }
                    Ok(ToStandIn::Exit) => {
                        let _ = exit.send(());
                    }
                    _ => {}
                }
            }
        });
        Ok(Self {
            writer: Mutex::new(stream),
            acks: Mutex::new(acks),
            exits: Mutex::new(Some(exits)),
            guest,
        })
    }

    fn send(&self, message: &ToHarness) -> io::Result<()> {
        let bytes = harness_wire::line(message)?;
        let writer = self.writer.lock().unwrap();
        (&*writer).write_all(&bytes)
    }

    /// Has the harness log an API call; returns once it is in the log.
    fn call(&self, line: String) {
        let acks = self.acks.lock().unwrap();
        if self.send(&ToHarness::Call(line)).is_ok() {
            let _ = acks.recv_timeout(Duration::from_secs(10));
        }
    }
}

impl Vmm {
    /// Serves the API until the VM is to end; returns the exit code.
    fn run(self) -> ExitCode {
        // The serial console: what a guest kernel would print first.
        println!(
            "[    0.000000] Linux version (fireclaw firecracker stand-in) on {}",
            self.tap_name
        );
        let _ = io::stdout().flush();
        let harness = self.harness.map(Arc::new);
        let (exit, exits) = mpsc::channel::<()>();
        // The harness's `Exit` (the guest has gone) ends the VMM too.
        if let Some(from_harness) = harness
            .as_ref()
            .and_then(|h| h.exits.lock().unwrap().take())
        {
            let exit = exit.clone();
            std::thread::spawn(move || {
                if from_harness.recv().is_ok() {
                    let _ = exit.send(());
                }
            });
        }
        let listener = self.listener;
        let api_harness = harness.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if serve(stream, api_harness.as_deref()) {
                    match &api_harness {
                        // The guest shuts down; the harness says when it has gone.
                        Some(harness) if harness.guest => {
                            let _ = harness.send(&ToHarness::Shutdown);
                        }
                        _ => {
                            let _ = exit.send(());
                        }
                    }
                }
            }
        });
        let _ = exits.recv();
        println!("reboot: Restarting system");
        let _ = io::stdout().flush();
        ExitCode::SUCCESS
    }
}

/// Answers one request; returns true when the VMM should exit.
fn serve(mut stream: UnixStream, harness: Option<&Harness>) -> bool {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let (method, path, body) = loop {
        let Ok(n) = stream.read(&mut chunk) else {
            return false;
        };
        if n == 0 {
            return false;
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
                let Ok(n) = stream.read(&mut chunk) else {
                    return false;
                };
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let end = (head + length).min(buffer.len());
            break (
                method,
                path,
                String::from_utf8_lossy(&buffer[head..end]).into_owned(),
            );
        }
    };
    if let Some(harness) = harness {
        harness.call(format!("{method} {path} {body}"));
    }
    let respond = |stream: &mut UnixStream, status: &str, body: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nServer: Firecracker API\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/") => {
            respond(
                &mut stream,
                "200 OK",
                r#"{"id":"anonymous-instance","state":"Running","vmm_version":"1.16.0","app_name":"Firecracker"}"#,
            );
            false
        }
        ("PUT", "/actions") if body.contains("SendCtrlAltDel") => {
            respond(&mut stream, "204 No Content", "");
            true
        }
        _ => {
            respond(
                &mut stream,
                "400 Bad Request",
                r#"{"fault_message":"The stand-in does not implement this request."}"#,
            );
            false
        }
    }
}
