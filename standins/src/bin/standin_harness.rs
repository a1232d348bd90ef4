//! Stand-in harness for tests (not shipped): runs as root in every host sandbox, socket-activated
//! on `/run/fireclaw-standin/harness.sock` (systemd passes the listening socket as fd 3), and does
//! for each Firecracker stand-in what a VMM confined as Firecracker is may not: the guest
//! handshake with the test's guest supervisor in `/run/fireclaw-guests/<tap>/` (`vmm.lock` held
//! while the VMM lives, a new boot generation with the kernel's, rootfs' and seed's paths and
//! the MAC, `shutdown` requests, and the VMM's exit once the generation is `gone`; for a snapshot
//! load, attaching the frozen guest the snapshot names; pause, resume and snapshot requests the
//! supervisor acts out on the guest's cgroup), the log of API calls in
//! `/run/fireclaw-standin/<tap>.calls`, and the relay of the tap's frames to and from the
//! interface named in `/run/fireclaw-standin/<tap>.peer` over an AF_PACKET socket, held while the
//! VM is paused. One session per connection; the wire and the order of its steps:
//! `fireclaw_standins::harness_wire`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fireclaw_standins::harness_wire::{
    self, GUESTS_DIR, Hello, STATE_DIR, ToHarness, ToStandIn, VNET_HDR_LEN,
};

/// The end of a session, seen at once by every thread of it that waits: an eventfd that stays
/// readable once set. The relay threads wait on it beside their fds, so the tap's fd is closed
/// as soon as the VMM has gone, long before a restarted VMM (2 s later) attaches to the tap.
struct Stop(OwnedFd);

impl Stop {
    fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd creation, checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is new and owned here.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn set(&self) {
        let one = 1u64;
        // SAFETY: writes the 8 bytes of `one` to an eventfd owned here.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Waits up to `timeout_ms` (-1: for ever) for `fd` (when given) to be readable or for the
    /// stop, which wins when both are there.
    fn wait(&self, fd: Option<&OwnedFd>, timeout_ms: i32) -> Wait {
        let mut entries = [
            libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fd.map_or(-1, AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call (poll skips fd -1).
        let ready = unsafe { libc::poll(entries.as_mut_ptr(), 2, timeout_ms) };
        if ready < 0 {
            return if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                Wait::TimedOut
            } else {
                Wait::Stopped
            };
        }
        if entries[0].revents != 0 {
            Wait::Stopped
        } else if entries[1].revents & libc::POLLIN != 0 {
            Wait::Readable
        } else if entries[1].revents != 0 {
            // A tap that was deleted reports an error and nothing to read.
            Wait::Stopped
        } else {
            Wait::TimedOut
        }
    }
}

#[derive(PartialEq)]
enum Wait {
    Readable,
    TimedOut,
    Stopped,
}

fn main() -> ExitCode {
    let listener = match listener_from_systemd() {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("standin_harness: no listening socket from systemd: {e}");
            return ExitCode::from(1);
        }
    };
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            if let Err(e) = session(stream) {
                eprintln!("standin_harness: session ended: {e}");
            }
        });
    }
    ExitCode::SUCCESS
}

/// The socket systemd passes (Accept=no): fd 3, when LISTEN_PID names this process.
fn listener_from_systemd() -> io::Result<UnixListener> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    if !ours || count != "1" {
        return Err(io::Error::other(format!(
            "LISTEN_PID is not this process or LISTEN_FDS is {count:?}"
        )));
    }
    const LISTEN_FD: RawFd = 3;
    // SAFETY: systemd passed fd 3 to this process (LISTEN_PID) as its one listening socket;
    // nothing else in the process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(LISTEN_FD) };
    // SAFETY: fcntl on an fd owned here; the session threads spawn no programs, but a listening
    // socket has no business in any child either.
    if unsafe { libc::fcntl(LISTEN_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// How long the guest supervisor may take to answer: it answers between guest boots, and a
/// boot of another guest can hold it for most of a minute.
const SUPERVISOR_WAIT: Duration = Duration::from_secs(120);

/// One VMM's life, from its first message to the end of its connection.
fn session(stream: UnixStream) -> io::Result<()> {
    let (first, tap) = receive_first(&stream)?;
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let (hello, guest, paused) = match first {
        ToHarness::Hello(hello) => {
            let guest = GuestLink::start(&hello);
            (hello, guest, false)
        }
        ToHarness::Restore { hello, guest } => match GuestLink::attach(&hello, guest.as_deref()) {
            Ok(link) => (hello, link, true),
            Err(reason) => {
                // The tap goes at once: a cold boot may follow as soon as this VMM has exited.
                drop(tap);
                send(&writer, &ToStandIn::Refused(reason))?;
                return log_calls_only(&stream, &hello.tap, &writer);
            }
        },
        ToHarness::CallsOnly { tap } => {
            send(&writer, &ToStandIn::Ready { guest: false })?;
            return log_calls_only(&stream, &tap, &writer);
        }
        _ => return Err(io::Error::other("the first message was no greeting")),
    };
    let tap = tap.ok_or_else(|| io::Error::other("the greeting carried no tap fd"))?;
    send(
        &writer,
        &ToStandIn::Ready {
            guest: guest.is_some(),
        },
    )?;
    let calls = Path::new(STATE_DIR).join(format!("{}.calls", hello.tap));
    let stop = Arc::new(Stop::new()?);
    let paused = Arc::new(AtomicBool::new(paused));
    let relay = {
        let (stop, tap_name, paused) = (stop.clone(), hello.tap.clone(), paused.clone());
        std::thread::spawn(move || relay_when_wired(tap, &tap_name, &stop, &paused))
    };
    let watcher = guest.as_ref().map(|guest| {
        let gone = guest.dir.join(format!("gone-{}", guest.generation));
        let (calls, writer, stop) = (calls.clone(), writer.clone(), stop.clone());
        std::thread::spawn(move || exit_when_gone(&gone, &calls, &writer, &stop))
    });
    // The token of the current pause, which every snapshot made during it records. A restored
    // VM starts in a pause of its own: its frozen guest's old token was spent on the attach.
    let mut pauses = 0u64;
    let mut pause_token = |guest: &GuestLink| {
        pauses += 1;
        format!("{}.{}.{pauses}", hello.tap, guest.generation)
    };
    let mut current_pause = match (&guest, paused.load(Ordering::Relaxed)) {
        (Some(guest), true) => Some(pause_token(guest)),
        _ => None,
    };
    for line in BufReader::new(&stream).lines() {
        let Ok(line) = line else { break };
        let answer = match harness_wire::parse::<ToHarness>(&line) {
            Ok(ToHarness::Call(call)) => {
                append(&calls, &call);
                ToStandIn::Ack
            }
            Ok(ToHarness::Shutdown) => {
                if let Some(guest) = &guest {
                    guest.request_shutdown();
                }
                continue;
            }
            Ok(ToHarness::Pause) => match guest.as_ref().map(|g| g.ask("pause")) {
                Some(Err(reason)) => ToStandIn::Refused(reason),
                _ => {
                    paused.store(true, Ordering::Relaxed);
                    current_pause = guest.as_ref().map(&mut pause_token);
                    ToStandIn::Done
                }
            },
            Ok(ToHarness::Resume) => match guest.as_ref().map(|g| g.ask("resume")) {
                Some(Err(reason)) => ToStandIn::Refused(reason),
                _ => {
                    paused.store(false, Ordering::Relaxed);
                    current_pause = None;
                    ToStandIn::Done
                }
            },
            Ok(ToHarness::Snapshot) => match (&guest, &current_pause) {
                (None, _) => ToStandIn::Snapshotted { guest: None },
                (Some(_), None) => ToStandIn::Refused("the VM is not paused".to_owned()),
                (Some(link), Some(token)) => match link.ask(&format!("snapshot {token}")) {
                    Ok(()) => ToStandIn::Snapshotted {
                        guest: Some(token.clone()),
                    },
                    Err(reason) => ToStandIn::Refused(reason),
                },
            },
            _ => continue,
        };
        let _ = send(&writer, &answer);
    }
    // The VMM has gone (exited or killed): its lock goes at once, and the tap's fd as soon as
    // the relay threads have seen the stop.
    stop.set();
    drop(guest);
    let _ = relay.join();
    if let Some(watcher) = watcher {
        let _ = watcher.join();
    }
    Ok(())
}

/// The rest of a session without a VM: its calls are logged until the VMM exits.
fn log_calls_only(stream: &UnixStream, tap: &str, writer: &Mutex<UnixStream>) -> io::Result<()> {
    let calls = Path::new(STATE_DIR).join(format!("{tap}.calls"));
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if let Ok(ToHarness::Call(call)) = harness_wire::parse::<ToHarness>(&line) {
            append(&calls, &call);
            let _ = send(writer, &ToStandIn::Ack);
        }
    }
    Ok(())
}

/// The first line, and the tap's fd if one came with its first byte.
fn receive_first(stream: &UnixStream) -> io::Result<(ToHarness, Option<OwnedFd>)> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut bytes = Vec::new();
    let mut tap = None;
    let mut buffer = [0u8; 4096];
    // The stand-in sends nothing more before `Ready`: the bytes end with the first line.
    while !bytes.ends_with(b"\n") {
        let (n, fd) = harness_wire::receive_with_fd(stream, &mut buffer)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        tap = tap.or(fd);
        bytes.extend_from_slice(&buffer[..n]);
    }
    stream.set_read_timeout(None)?;
    let first = harness_wire::parse(&String::from_utf8_lossy(&bytes))?;
    Ok((first, tap))
}

fn send(writer: &Mutex<UnixStream>, message: &ToStandIn) -> io::Result<()> {
    let bytes = harness_wire::line(message)?;
    let writer = writer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (&*writer).write_all(&bytes)
}

fn append(path: &Path, line: &str) {
    if let Ok(mut log) = OpenOptions::new().append(true).create(true).open(path) {
        let _ = writeln!(log, "{line}");
    }
}

/// The handshake with the test's guest supervisor, for one VMM.
struct GuestLink {
    dir: PathBuf,
    generation: u64,
    requests: AtomicU64,
    _lock: File,
}

impl GuestLink {
    /// A new boot generation, when the test shares the guests' dir; the lock is held until
    /// this is dropped.
    fn start(hello: &Hello) -> Option<Self> {
        Self::begin(hello, None)
    }

    /// A new generation that attaches the frozen guest named `token` instead of booting one;
    /// `Ok(None)` without guests (nothing to attach), `Err` with the supervisor's reason when it
    /// has no frozen guest by that token.
    fn attach(hello: &Hello, token: Option<&str>) -> Result<Option<Self>, String> {
        if !Path::new(GUESTS_DIR).is_dir() {
            return Ok(None);
        }
        let Some(token) = token else {
            return Err("the snapshot names no frozen guest (it was made without one)".to_owned());
        };
        let link = Self::begin(hello, Some(token))
            .ok_or_else(|| "the guest handshake could not be written".to_owned())?;
        let attached = link.dir.join(format!("attached-{}", link.generation));
        let refused = link.dir.join(format!("refused-{}", link.generation));
        let deadline = Instant::now() + SUPERVISOR_WAIT;
        while Instant::now() < deadline {
            if attached.exists() {
                return Ok(Some(link));
            }
            if let Ok(reason) = std::fs::read_to_string(&refused) {
                return Err(reason);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("the guest supervisor did not answer the attach".to_owned())
    }

    fn begin(hello: &Hello, attach: Option<&str>) -> Option<Self> {
        if !Path::new(GUESTS_DIR).is_dir() {
            return None;
        }
        let dir = Path::new(GUESTS_DIR).join(&hello.tap);
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
        let text = |path: &Path| path.to_string_lossy().into_owned();
        std::fs::write(dir.join("seed"), text(&hello.seed)).ok()?;
        std::fs::write(dir.join("rootfs"), text(&hello.rootfs)).ok()?;
        std::fs::write(dir.join("kernel"), text(&hello.kernel)).ok()?;
        std::fs::write(dir.join("mac"), &hello.mac).ok()?;
        match attach {
            Some(token) => replace(&dir.join("attach"), &format!("{generation} {token}")).ok()?,
            None => {
                let _ = std::fs::remove_file(dir.join("attach"));
            }
        }
        // Last: the supervisor acts on a generation as soon as it sees it.
        std::fs::write(dir.join("generation"), generation.to_string()).ok()?;
        Some(Self {
            dir,
            generation,
            requests: AtomicU64::new(0),
            _lock: lock,
        })
    }

    fn request_shutdown(&self) {
        let _ = std::fs::write(self.dir.join("shutdown"), self.generation.to_string());
    }

    /// Asks the supervisor to act on this generation's guest (`pause`, `resume`,
    /// `snapshot <token>`) and waits for its answer.
    fn ask(&self, verb: &str) -> Result<(), String> {
        let id = format!(
            "{}.{}",
            self.generation,
            self.requests.fetch_add(1, Ordering::Relaxed) + 1
        );
        replace(
            &self.dir.join("request"),
            &format!("{id} {} {verb}", self.generation),
        )
        .map_err(|e| format!("writing the request: {e}"))?;
        let deadline = Instant::now() + SUPERVISOR_WAIT;
        while Instant::now() < deadline {
            let answer = std::fs::read_to_string(self.dir.join("answer")).unwrap_or_default();
            if let Some(outcome) = answer.strip_prefix(&format!("{id} ")) {
                return match outcome.strip_prefix("error ") {
                    Some(reason) => Err(reason.trim().to_owned()),
                    None => Ok(()),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("the guest supervisor did not answer {verb}"))
    }
}

/// Replaces a file whole, so its reader never sees half of it.
fn replace(path: &Path, text: &str) -> io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

/// Once the supervisor reports this generation gone: logs the VMM's exit and tells it to exit.
fn exit_when_gone(gone: &Path, calls: &Path, writer: &Mutex<UnixStream>, stop: &Stop) {
    while stop.wait(None, 100) != Wait::Stopped {
        if gone.exists() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            append(
                calls,
                &format!("EXIT {}.{:09}", now.as_secs(), now.subsec_nanos()),
            );
            let _ = send(writer, &ToStandIn::Exit);
            return;
        }
    }
}

/// Relays the tap to the peer the test names in `<tap>.peer`, once it is there (the test may
/// wire it only after the VMM announced itself), until `stop`, holding the frames while
/// `paused` (a paused Firecracker reads nothing from its tap, and its frozen guest sends
/// nothing). The tap's fd is closed when this returns.
fn relay_when_wired(tap: OwnedFd, tap_name: &str, stop: &Stop, paused: &AtomicBool) {
    let peer_file = Path::new(STATE_DIR).join(format!("{tap_name}.peer"));
    for _ in 0..600 {
        if let Ok(peer) = std::fs::read_to_string(&peer_file)
            && Path::new("/sys/class/net").join(peer.trim()).exists()
        {
            match packet_socket(peer.trim()) {
                Ok(packet) => {
                    std::thread::scope(|scope| {
                        scope.spawn(|| tap_to_peer(&tap, &packet, stop, paused));
                        peer_to_tap(&packet, &tap, stop, paused);
                    });
                }
                Err(e) => eprintln!("standin_harness: relay to {}: {e}", peer.trim()),
            }
            return;
        }
        if stop.wait(None, 100) == Wait::Stopped {
            return;
        }
    }
}

/// An AF_PACKET socket bound to `peer`, for every protocol.
fn packet_socket(peer: &str) -> io::Result<OwnedFd> {
    let index = std::fs::read_to_string(format!("/sys/class/net/{peer}/ifindex"))?
        .trim()
        .parse::<i32>()
        .map_err(|_| io::Error::other("bad ifindex"))?;
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation, checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is new and owned here.
    let packet = unsafe { OwnedFd::from_raw_fd(fd) };
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
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(packet)
}

/// Waits while the VM is paused; true when the session stopped meanwhile.
fn hold_while_paused(stop: &Stop, paused: &AtomicBool) -> bool {
    while paused.load(Ordering::Relaxed) {
        if stop.wait(None, 50) == Wait::Stopped {
            return true;
        }
    }
    false
}

fn transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Frames the VM sends: each comes with its virtio-net header, which the wire does not carry.
fn tap_to_peer(tap: &OwnedFd, packet: &OwnedFd, stop: &Stop, paused: &AtomicBool) {
    let mut buffer = vec![0u8; VNET_HDR_LEN + 65536];
    loop {
        if hold_while_paused(stop, paused) {
            return;
        }
        match stop.wait(Some(tap), 100) {
            Wait::Readable => {}
            Wait::TimedOut => continue,
            Wait::Stopped => return,
        }
        // SAFETY: buffer is valid for writes of its length.
        let n = unsafe { libc::read(tap.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n < 0 {
            if transient(&io::Error::last_os_error()) {
                continue;
            }
            return;
        }
        let frame = buffer.get(VNET_HDR_LEN..n as usize).unwrap_or_default();
        if !frame.is_empty() {
            // SAFETY: frame is valid for reads of its length.
            unsafe { libc::send(packet.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        }
    }
}

/// Frames for the VM: each gets a zeroed virtio-net header (no offload; the guest side sends
/// complete checksums).
fn peer_to_tap(packet: &OwnedFd, tap: &OwnedFd, stop: &Stop, paused: &AtomicBool) {
    let mut buffer = vec![0u8; VNET_HDR_LEN + 65536];
    loop {
        if hold_while_paused(stop, paused) {
            return;
        }
        match stop.wait(Some(packet), 100) {
            Wait::Readable => {}
            Wait::TimedOut => continue,
            Wait::Stopped => return,
        }
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as u32;
        let frame = &mut buffer[VNET_HDR_LEN..];
        // SAFETY: frame, from and from_len are valid for writes of their sizes.
        let n = unsafe {
            libc::recvfrom(
                packet.as_raw_fd(),
                frame.as_mut_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        };
        if n < 0 {
            if transient(&io::Error::last_os_error()) {
                continue;
            }
            return;
        }
        // What the relay itself sent out on the peer.
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        buffer[..VNET_HDR_LEN].fill(0);
        let length = VNET_HDR_LEN + n as usize;
        // SAFETY: buffer holds `length` valid bytes.
        unsafe { libc::write(tap.as_raw_fd(), buffer.as_ptr().cast(), length) };
    }
}
