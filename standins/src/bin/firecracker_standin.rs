//! Firecracker stand-in for tests (not shipped). Takes Firecracker's `--api-sock` and
//! `--config-file`, reads the same config file, and fails the way Firecracker 1.16 does when the
//! API socket path exists, the tap named in the config is missing, or the logger's directory is
//! missing. It opens the tap, relays its frames to and from the interface named in
//! `/run/fireclaw-standin/<tap>.peer` once it exists (what a test put behind the tap), serves `GET /` and
//! `PUT /actions`, and records every API call in `/run/fireclaw-standin/<tap>.calls`. On
//! `SendCtrlAltDel` it exits 0, as Firecracker does once a `reboot=k` guest has gone down.
//!
//! Guest mode, when `/run/fireclaw-guests/` exists (a dir the test shares with its guest
//! supervisor), in `/run/fireclaw-guests/<tap>/`: the stand-in holds `vmm.lock` while alive, starts a new boot generation with the
//! kernel's, rootfs' and seed image's paths and the NIC's MAC from the config, turns `SendCtrlAltDel` into a `shutdown` request, and exits 0 once the
//! supervisor reports the generation `gone` (also when the guest rebooted by itself).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

const STATE_DIR: &str = "/run/fireclaw-standin";
const GUESTS_DIR: &str = "/run/fireclaw-guests";

/// The handshake with the test's guest supervisor.
struct GuestLink {
    tap: String,
    dir: PathBuf,
    generation: u64,
    _lock: File,
}

impl GuestLink {
    fn start(tap: &str, boot: &BootFiles, mac: &str) -> Option<Self> {
        if !Path::new(GUESTS_DIR).is_dir() {
            return None;
        }
        let dir = Path::new(GUESTS_DIR).join(tap);
        std::fs::create_dir_all(&dir).ok()?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("vmm.lock"))
            .ok()?;
        lock.lock().ok()?;
        let generation = std::fs::read_to_string(dir.join("generation"))
            .ok()
            .and_then(|g| g.trim().parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let _ = std::fs::remove_file(dir.join("shutdown"));
        std::fs::write(dir.join("seed"), boot.seed.to_string_lossy().as_bytes()).ok()?;
        std::fs::write(dir.join("rootfs"), boot.rootfs.to_string_lossy().as_bytes()).ok()?;
        std::fs::write(dir.join("kernel"), boot.kernel.to_string_lossy().as_bytes()).ok()?;
        std::fs::write(dir.join("mac"), mac).ok()?;
        std::fs::write(dir.join("generation"), generation.to_string()).ok()?;
        Some(Self {
            tap: tap.to_owned(),
            dir,
            generation,
            _lock: lock,
        })
    }

    fn gone(&self) -> bool {
        self.dir.join(format!("gone-{}", self.generation)).exists()
    }

    /// Exits 0 once the guest of this generation has gone, as Firecracker does.
    fn exit_when_gone(self: Arc<Self>) {
        std::thread::spawn(move || {
            loop {
                if self.gone() {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    let calls = Path::new(STATE_DIR).join(format!("{}.calls", self.tap));
                    if let Ok(mut log) = OpenOptions::new().append(true).create(true).open(calls) {
                        let _ = writeln!(log, "EXIT {}.{:09}", now.as_secs(), now.subsec_nanos());
                    }
                    println!("reboot: Restarting system");
                    let _ = std::io::stdout().flush();
                    std::process::exit(0);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
    }
}

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
    kernel_image_path: PathBuf,
}

#[derive(serde::Deserialize)]
struct Drive {
    path_on_host: PathBuf,
    #[serde(default)]
    is_root_device: bool,
}

/// What the guest boots from, as the config names it: the guest supervisor decides from the
/// kernel whether the guest can read the seed image, or finds its seed in the rootfs.
struct BootFiles {
    kernel: PathBuf,
    rootfs: PathBuf,
    seed: PathBuf,
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
    log_path: PathBuf,
}

fn fail(message: &str) -> ExitCode {
    eprintln!("Error: {message}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("Firecracker v1.16.0");
        return ExitCode::SUCCESS;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let (Some(api_sock), Some(config_path)) = (value("--api-sock"), value("--config-file")) else {
        return fail("Arguments parsing error: --api-sock and --config-file are required");
    };
    let config: Config = match std::fs::read_to_string(&config_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(e) => {
            return fail(&format!(
                "Configuration for VMM from one single json failed: {e}"
            ));
        }
    };
    if api_sock.exists() {
        return fail(&format!(
            "Failed to open the API socket at: {}. Check that it is not already used.",
            api_sock.display()
        ));
    }
    if let Some(logger) = &config.logger
        && let Err(e) = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&logger.log_path)
    {
        return fail(&format!("Failed to initialize logger: {e}"));
    }
    if !config.boot_source.kernel_image_path.is_file() {
        return fail(
            "Cannot load kernel due to invalid memory configuration or invalid kernel image",
        );
    }
    for drive in &config.drives {
        if !drive.path_on_host.is_file() {
            return fail(&format!(
                "Unable to open block device {}",
                drive.path_on_host.display()
            ));
        }
    }
    let Some((tap_name, guest_mac)) = config
        .network_interfaces
        .first()
        .map(|i| (i.host_dev_name.clone(), i.guest_mac.clone()))
    else {
        return fail("the stand-in needs one network interface");
    };
    if !Path::new("/sys/class/net").join(&tap_name).exists() {
        return fail(&format!(
            "Open tap device failed: Error while creating ifreq structure: No such device. Invalid TUN/TAP Backend provided by {tap_name}."
        ));
    }
    let tap = match open_tap(&tap_name) {
        Ok(tap) => Arc::new(tap),
        Err(e) => return fail(&format!("Open tap device failed: {e}")),
    };
    let _ = std::fs::create_dir_all(STATE_DIR);
    let calls = Path::new(STATE_DIR).join(format!("{tap_name}.calls"));
    // The peer may be wired up by the test only after the VMM announced itself: wait for it.
    let peer_file = Path::new(STATE_DIR).join(format!("{tap_name}.peer"));
    let relay_tap = tap.clone();
    std::thread::spawn(move || {
        for _ in 0..600 {
            if let Ok(peer) = std::fs::read_to_string(&peer_file)
                && Path::new("/sys/class/net").join(peer.trim()).exists()
            {
                if let Err(e) = start_relay(relay_tap, peer.trim()) {
                    eprintln!("Error: relay to {}: {e}", peer.trim());
                }
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let seed = config
        .drives
        .iter()
        .map(|d| d.path_on_host.clone())
        .find(|p| p.ends_with("seed.img"))
        .unwrap_or_default();
    let rootfs = config
        .drives
        .iter()
        .find(|d| d.is_root_device)
        .map(|d| d.path_on_host.clone())
        .unwrap_or_default();
    let boot = BootFiles {
        kernel: config.boot_source.kernel_image_path.clone(),
        rootfs,
        seed,
    };
    let guest = GuestLink::start(&tap_name, &boot, &guest_mac).map(Arc::new);
    if let Some(guest) = &guest {
        guest.clone().exit_when_gone();
    }
    let listener = match UnixListener::bind(&api_sock) {
        Ok(l) => l,
        Err(e) => return fail(&format!("Failed to open the API socket: {e}")),
    };
    // The serial console: what a guest kernel would print first.
    println!("[    0.000000] Linux version (fireclaw firecracker stand-in) on {tap_name}");
    let _ = std::io::stdout().flush();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if serve(stream, &calls) {
            match &guest {
                // The guest shuts down; the watcher exits once it has gone.
                Some(guest) => {
                    let _ =
                        std::fs::write(guest.dir.join("shutdown"), guest.generation.to_string());
                }
                None => {
                    println!("reboot: Restarting system");
                    let _ = std::io::stdout().flush();
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn open_tap(name: &str) -> std::io::Result<File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut request = [0u8; 40];
    request[..name.len()].copy_from_slice(name.as_bytes());
    request[16..18].copy_from_slice(&(0x0002i16 | 0x1000i16).to_ne_bytes());
    // SAFETY: `request` is a valid struct ifreq for the duration of the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Copies frames both ways between the tap and an AF_PACKET socket on `peer`.
fn start_relay(tap: Arc<File>, peer: &str) -> std::io::Result<()> {
    let index = std::fs::read_to_string(format!("/sys/class/net/{peer}/ifindex"))?
        .trim()
        .parse::<i32>()
        .map_err(|_| std::io::Error::other("bad ifindex"))?;
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation, checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol as i32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is new and owned here.
    let packet = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: sockaddr_ll is plain data.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index;
    // SAFETY: address is valid for its size.
    let bound = unsafe {
        libc::bind(
            packet.as_raw_fd(),
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if bound < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (tap_in, packet_out) = (tap.clone(), packet.clone());
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65536];
        while let Ok(n) = (&*tap_in).read(&mut buffer) {
            // SAFETY: buffer holds n valid bytes.
            unsafe { libc::send(packet_out.as_raw_fd(), buffer.as_ptr().cast(), n, 0) };
        }
    });
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65536];
        loop {
            // SAFETY: sockaddr_ll and buffer are valid for their sizes.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffer, from and from_len are valid for writes of their sizes.
            let n = unsafe {
                libc::recvfrom(
                    packet.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                    (&raw mut from).cast(),
                    &raw mut from_len,
                )
            };
            if n < 0 {
                break;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let _ = (&*tap).write(&buffer[..n as usize]);
        }
    });
    Ok(())
}

/// Answers one request; returns true when the VMM should exit.
fn serve(mut stream: UnixStream, calls: &Path) -> bool {
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
    if let Ok(mut log) = OpenOptions::new().append(true).create(true).open(calls) {
        let _ = writeln!(log, "{method} {path} {body}");
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
