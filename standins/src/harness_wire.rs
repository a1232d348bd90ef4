//! The wire between the Firecracker stand-in and the stand-in harness (`standin_harness`), which
//! runs as root on the test's side of every host sandbox, socket-activated at [`SOCKET`]. The
//! stand-in, confined like Firecracker, only opens its own files, the tap and `/dev/kvm`; all
//! that serves the tests (the guest handshake, the calls log, the relay to the guest, freezing
//! and thawing the guest) is the harness's. One connection per VMM, for the VMM's whole life;
//! each message is one line of JSON, so a body with newlines cannot split one:
//!
//! 1. stand-in → harness, once it has opened everything Firecracker opens, one of:
//!    - `Hello` (tap, guest MAC, kernel, rootfs, seed) for a cold boot from its config file, in
//!      one `sendmsg` that carries the tap's fd (SCM_RIGHTS). The tap is open as Firecracker
//!      opens it, so each frame on it has a [`VNET_HDR_LEN`] header.
//!    - `Restore { hello, guest }` for a snapshot load, with the tap's fd the same way: `guest`
//!      is the token the snapshot recorded, naming the frozen guest the VM's memory stands for.
//!    - `CallsOnly { tap }` (no fd) from a VMM whose load failed before it opened the tap: the
//!      harness only logs its calls (step 3) until it exits.
//! 2. harness → stand-in: `Ready { guest }` once the guest handshake is written (`guest`: the
//!    test shares [`GUESTS_DIR`]); after a `Restore`, once the guest supervisor has attached the
//!    frozen guest to this VMM, or `Refused(reason)` when it has no frozen guest by that token
//!    (the VMM then fails its load; the harness still logs its calls). From `Ready` until the
//!    connection ends the harness holds `<GUESTS_DIR>/<tap>/vmm.lock` and relays the tap to the
//!    peer named in `<tap>.peer`, except while the VM is paused (a restored VM starts paused).
//! 3. stand-in → harness: `Call("METHOD PATH BODY")` for each API request; the harness appends
//!    it to `<STATE_DIR>/<tap>.calls` and answers `Ack`, and only then does the stand-in answer
//!    its API client, so the log is complete when the client has its answer. A VMM started
//!    without a config file has no connection before its load: it sends the calls it served
//!    until then right after step 2.
//! 4. stand-in → harness: `Pause` / `Resume` (the VM's state changes), answered `Done` once the
//!    guest supervisor has frozen or thawed the guest's cgroup, and `Snapshot` (the VM is paused
//!    and its snapshot is to be written), answered `Snapshotted { guest }` once the supervisor
//!    keeps the frozen guest, should this VMM die before a resume, for the token `guest` (one
//!    per pause, so every snapshot of one pause names the same guest; `None` without guests).
//!    Either may be answered `Refused(reason)`.
//! 5. stand-in → harness: `Shutdown` on `SendCtrlAltDel` in guest mode; the harness asks the
//!    guest supervisor (`shutdown` holding the generation).
//! 6. harness → stand-in: `Exit` once the supervisor reports `gone-<generation>` (after a
//!    shutdown, or a reboot inside the guest), after appending `EXIT <secs>.<nanos>` to the
//!    calls log; the stand-in prints `reboot: Restarting system` and exits 0.
//! 7. The connection's end (the VMM exited or was killed) ends the rest: the harness stops the
//!    relay, closes its copy of the tap's fd within half a second (a tap without
//!    IFF_MULTI_QUEUE takes one fd only: the next VMM's TUNSETIFF would fail with EBUSY) and
//!    releases `vmm.lock`. The supervisor then kills the guest, unless the VM was paused and a
//!    snapshot was made during that pause: then the guest stays frozen for a later `Restore`.
//!
//! The harness and the guest supervisor talk through files in `<GUESTS_DIR>/<tap>/`: besides
//! the handshake (`generation`, `kernel`, `rootfs`, `seed`, `mac`, `shutdown`, `gone-<n>`), a
//! load writes `attach` (`<generation> <token>`) before its `generation` and the supervisor
//! answers `attached-<generation>` or `refused-<generation>` (the reason); pause, resume and
//! snapshot are a `request` (`<id> <generation> <verb> [token]`) the supervisor answers in
//! `answer` (`<id> ok` or `<id> error <reason>`); both files are replaced whole (rename).

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// Where the harness listens.
pub const SOCKET: &str = "/run/fireclaw-standin/harness.sock";
/// Where tests find `<tap>.calls` and put `<tap>.peer`.
pub const STATE_DIR: &str = "/run/fireclaw-standin";
/// The dir a test shares with its guest supervisor (guest mode when it exists).
pub const GUESTS_DIR: &str = "/run/fireclaw-guests";
/// The virtio-net header on each frame of a tap Firecracker opened (IFF_VNET_HDR, then
/// TUNSETVNETHDRSZ with the size of `virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// What the VM boots and how its NIC looks, as the Firecracker config names them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    pub tap: String,
    pub mac: String,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub seed: PathBuf,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ToHarness {
    Hello(Hello),
    Restore { hello: Hello, guest: Option<String> },
    CallsOnly { tap: String },
    Call(String),
    Pause,
    Resume,
    Snapshot,
    Shutdown,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ToStandIn {
    Ready { guest: bool },
    Refused(String),
    Ack,
    Done,
    Snapshotted { guest: Option<String> },
    Exit,
}

/// Where a test puts a snapshot version for the stand-in to write and accept instead of its own
/// (as a Firecracker upgrade or downgrade on the host would change it).
pub const SNAPSHOT_VERSION_OVERRIDE: &str = "/run/fireclaw-standin/snapshot-version";

/// One message as its line.
pub fn line<T: serde::Serialize>(message: &T) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// One message from its line.
pub fn parse<T: serde::de::DeserializeOwned>(line: &str) -> io::Result<T> {
    serde_json::from_str(line.trim_end()).map_err(io::Error::other)
}

/// Sends `bytes` with `fd` attached to their first byte.
pub fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: RawFd) -> io::Result<()> {
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer in it is set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    message.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    // SAFETY: the control buffer (32 bytes) holds one cmsghdr with one fd, as msg_controllen
    // says; CMSG_FIRSTHDR is therefore non-null and CMSG_DATA points inside the buffer.
    let sent = unsafe {
        let header = libc::CMSG_FIRSTHDR(&raw const message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
        libc::sendmsg(stream.as_raw_fd(), &raw const message, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // A stream may take only part of it; the fd went with the first byte.
    let mut writer = stream;
    writer.write_all(&bytes[sent as usize..])
}

/// Receives into `buffer`, with the fd attached to those bytes if there is one (close-on-exec).
pub fn receive_with_fd(
    stream: &UnixStream,
    buffer: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: msghdr is plain data; every pointer in it is set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = size_of_val(&control);
    // SAFETY: buffer and control outlive the call and are as long as the message says.
    let received =
        unsafe { libc::recvmsg(stream.as_raw_fd(), &raw mut message, libc::MSG_CMSG_CLOEXEC) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG_* walk stays inside
    // it, and each SCM_RIGHTS fd is new to this process, owned here from now on.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&raw const message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                let count = ((*header).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            header = libc::CMSG_NXTHDR(&raw const message, header);
        }
    }
    // Any fd beyond the first is not ours to keep: dropping it closes it.
    Ok((received as usize, fds.into_iter().next()))
}
