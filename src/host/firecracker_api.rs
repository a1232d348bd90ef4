//! A minimal client for Firecracker's API socket: HTTP/1.1 over a unix stream, one request per
//! connection, JSON bodies with serde, responses parsed with httparse. fireclaw uses `GET /`
//! (is the VMM alive, which version, paused or running), `PUT /actions` with `SendCtrlAltDel`,
//! and for suspend and resume `PATCH /vm` (pause, resume), `PUT /snapshot/create`, and on a
//! VMM started without a config `PUT /logger` and `PUT /snapshot/load`.
//! Failures come back as `{"fault_message": ...}`. A confined VMM's socket lives in a dir
//! that VMM can write, where it could plant a link to another service's socket: a client made
//! with `expect_peer` checks who answers (`SO_PEERCRED`) before it sends anything.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("connect to the Firecracker API at {socket}")]
    Connect { socket: PathBuf, source: io::Error },
    #[error("{request} on {socket}")]
    Io {
        request: String,
        socket: PathBuf,
        source: io::Error,
    },
    #[error(
        "the process behind {socket} runs as uid {found}, not the VMM's uid {expected}; refusing to talk to it"
    )]
    WrongPeer {
        socket: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{request} on {socket}: malformed HTTP response")]
    Malformed { request: String, socket: PathBuf },
    #[error("{request} on {socket}: HTTP {status}: {fault}")]
    Fault {
        request: String,
        socket: PathBuf,
        status: u16,
        fault: String,
    },
}

/// The uid of the process at the other end of a unix stream.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain data.
    let mut credentials: libc::ucred = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `credentials`, which lives across
    // the call.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &raw mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(credentials.uid)
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct InstanceInfo {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub vmm_version: String,
}

/// What a snapshot load needs: the files and this start's tap (taps are reattached by name).
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLoad<'a> {
    pub state: &'a Path,
    pub memory: &'a Path,
    pub tap: &'a str,
    /// Move the guest's kvm-clock to the host's wall clock at load (Firecracker 1.16 and later,
    /// x86_64 only).
    pub clock_realtime: bool,
}

#[derive(serde::Deserialize)]
struct Fault {
    fault_message: String,
}

pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
    /// The uid the VMM runs as, when it is not root.
    peer_uid: Option<u32>,
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

const MAX_RESPONSE: usize = 1 << 20;

impl ApiClient {
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        Self {
            socket: socket.to_owned(),
            timeout,
            peer_uid: None,
        }
    }

    /// Only talks to a server running as `uid`.
    pub fn expect_peer(mut self, uid: Option<u32>) -> Self {
        self.peer_uid = uid;
        self
    }

    fn check_peer(&self, stream: &UnixStream) -> Result<(), ApiError> {
        let Some(expected) = self.peer_uid else {
            return Ok(());
        };
        let found = peer_uid(stream).map_err(|source| ApiError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        if found != expected {
            return Err(ApiError::WrongPeer {
                socket: self.socket.clone(),
                found,
                expected,
            });
        }
        Ok(())
    }

    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, ApiError> {
        let request = format!("{method} {path}");
        let io_error = |source| ApiError::Io {
            request: request.clone(),
            socket: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| ApiError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        self.check_peer(&stream)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(io_error)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(io_error)?;
        let body = body.unwrap_or_default();
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if method != "GET" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        // One write: some servers read a request in one go.
        let mut request_bytes = head.into_bytes();
        request_bytes.extend_from_slice(body);
        stream.write_all(&request_bytes).map_err(io_error)?;
        let malformed = || ApiError::Malformed {
            request: request.clone(),
            socket: self.socket.clone(),
        };
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = stream.read(&mut chunk).map_err(io_error)?;
            if read == 0 {
                return Err(malformed());
            }
            buffer.extend_from_slice(&chunk[..read]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buffer) {
                Ok(httparse::Status::Complete(header_len)) => {
                    let status = response.code.ok_or_else(malformed)?;
                    let length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if length > MAX_RESPONSE {
                        return Err(malformed());
                    }
                    while buffer.len() < header_len + length {
                        let read = stream.read(&mut chunk).map_err(io_error)?;
                        if read == 0 {
                            return Err(malformed());
                        }
                        buffer.extend_from_slice(&chunk[..read]);
                    }
                    let body = buffer[header_len..header_len + length].to_vec();
                    if !(200..300).contains(&status) {
                        let fault = serde_json::from_slice::<Fault>(&body)
                            .map(|f| f.fault_message)
                            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
                        return Err(ApiError::Fault {
                            request,
                            socket: self.socket.clone(),
                            status,
                            fault,
                        });
                    }
                    return Ok(Response { status, body });
                }
                Ok(httparse::Status::Partial) if buffer.len() < MAX_RESPONSE => continue,
                _ => return Err(malformed()),
            }
        }
    }

    pub fn instance_info(&self) -> Result<InstanceInfo, ApiError> {
        let response = self.call("GET", "/", None)?;
        serde_json::from_slice(&response.body).map_err(|_| ApiError::Malformed {
            request: "GET /".into(),
            socket: self.socket.clone(),
        })
    }

    /// Stops the guest's vCPUs (`PATCH /vm`, `Paused`); devices keep their state.
    pub fn pause(&self) -> Result<(), ApiError> {
        self.call("PATCH", "/vm", Some(br#"{"state":"Paused"}"#))
            .map(drop)
    }

    /// Lets a paused or freshly loaded guest run again (`PATCH /vm`, `Resumed`).
    pub fn resume(&self) -> Result<(), ApiError> {
        self.call("PATCH", "/vm", Some(br#"{"state":"Resumed"}"#))
            .map(drop)
    }

    /// Writes a full snapshot of a paused VM: its device state and its whole memory.
    pub fn create_snapshot(&self, state: &Path, memory: &Path) -> Result<(), ApiError> {
        let body = serde_json::json!({
            "snapshot_type": "Full",
            "snapshot_path": state,
            "mem_file_path": memory,
        })
        .to_string();
        self.call("PUT", "/snapshot/create", Some(body.as_bytes()))
            .map(drop)
    }

    /// Configures the logger of a VMM started without a config file (a snapshot does not
    /// carry it), as the config file would.
    pub fn configure_logger(&self, log: &Path) -> Result<(), ApiError> {
        let body = serde_json::json!({
            "log_path": log,
            "level": crate::render::firecracker::LOG_LEVEL,
        })
        .to_string();
        self.call("PUT", "/logger", Some(body.as_bytes())).map(drop)
    }

    /// Loads a snapshot into a VMM started without a config file, leaving the guest paused.
    pub fn load_snapshot(&self, load: &SnapshotLoad<'_>) -> Result<(), ApiError> {
        let body = serde_json::json!({
            "snapshot_path": load.state,
            "mem_backend": { "backend_type": "File", "backend_path": load.memory },
            "resume_vm": false,
            "network_overrides": [{
                "iface_id": crate::render::firecracker::NET_IFACE_ID,
                "host_dev_name": load.tap,
            }],
            "clock_realtime": load.clock_realtime,
        })
        .to_string();
        self.call("PUT", "/snapshot/load", Some(body.as_bytes()))
            .map(drop)
    }

    /// Asks the guest to shut down, as pressing Ctrl-Alt-Del would.
    pub fn send_ctrl_alt_del(&self) -> Result<(), ApiError> {
        let body = serde_json::json!({ "action_type": "SendCtrlAltDel" }).to_string();
        let response = self.call("PUT", "/actions", Some(body.as_bytes()))?;
        debug_assert!((200..300).contains(&response.status));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-request server on a socket in a temporary directory (removed with the returned
    /// guard, also when the test panics).
    fn serve_once(reply: String) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The whole request: headers, then Content-Length bytes of body.
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = stream.write_all(reply.as_bytes());
            String::from_utf8_lossy(&request).into_owned()
        });
        (dir, socket, handle)
    }

    #[test]
    fn instance_info_is_read() {
        let body = r#"{"id":"anonymous-instance","state":"Running","vmm_version":"1.16.0"}"#;
        let (_dir, socket, server) = serve_once(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        let info = ApiClient::new(&socket, Duration::from_secs(2))
            .instance_info()
            .unwrap();
        assert_eq!(info.state, "Running");
        assert_eq!(info.vmm_version, "1.16.0");
        assert!(server.join().unwrap().starts_with("GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn suspend_and_resume_calls_carry_firecrackers_fields() {
        let (_dir, socket, server) = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into());
        let api = ApiClient::new(&socket, Duration::from_secs(2));
        api.pause().unwrap();
        let request = server.join().unwrap();
        assert!(request.starts_with("PATCH /vm HTTP/1.1\r\n"), "{request}");
        assert!(request.ends_with(r#"{"state":"Paused"}"#), "{request}");

        let (_dir, socket, server) = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into());
        ApiClient::new(&socket, Duration::from_secs(2))
            .create_snapshot(Path::new("/v/s.vmstate"), Path::new("/v/s.mem"))
            .unwrap();
        let request = server.join().unwrap();
        let body: serde_json::Value =
            serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"snapshot_type":"Full","snapshot_path":"/v/s.vmstate","mem_file_path":"/v/s.mem"})
        );

        let (_dir, socket, server) = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into());
        ApiClient::new(&socket, Duration::from_secs(2))
            .load_snapshot(&SnapshotLoad {
                state: Path::new("/v/s.vmstate"),
                memory: Path::new("/v/s.mem"),
                tap: "tbot2",
                clock_realtime: true,
            })
            .unwrap();
        let request = server.join().unwrap();
        assert!(request.starts_with("PUT /snapshot/load HTTP/1.1\r\n"));
        let body: serde_json::Value =
            serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "snapshot_path": "/v/s.vmstate",
                "mem_backend": {"backend_type": "File", "backend_path": "/v/s.mem"},
                "resume_vm": false,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tbot2"}],
                "clock_realtime": true,
            })
        );
    }

    #[test]
    fn a_server_running_as_another_uid_gets_nothing() {
        let (_dir, socket, server) = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into());
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let error = ApiClient::new(&socket, Duration::from_secs(2))
            .expect_peer(Some(me.wrapping_add(1)))
            .send_ctrl_alt_del()
            .unwrap_err();
        assert!(matches!(error, ApiError::WrongPeer { .. }), "{error}");
        // Nothing was sent: the server saw the connection close without a request.
        assert_eq!(server.join().unwrap(), "");
        let (_dir, socket, server) = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into());
        ApiClient::new(&socket, Duration::from_secs(2))
            .expect_peer(Some(me))
            .send_ctrl_alt_del()
            .unwrap();
        assert!(server.join().unwrap().contains("SendCtrlAltDel"));
    }

    #[test]
    fn ctrl_alt_del_sends_the_action_and_faults_are_reported() {
        let (_dir, socket, server) = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into());
        ApiClient::new(&socket, Duration::from_secs(2))
            .send_ctrl_alt_del()
            .unwrap();
        let request = server.join().unwrap();
        assert!(request.starts_with("PUT /actions HTTP/1.1\r\n"));
        assert!(
            request.ends_with("{\"action_type\":\"SendCtrlAltDel\"}"),
            "{request}"
        );

        let fault = r#"{"fault_message":"not supported X"}"#;
        let (_dir2, socket, _server) = serve_once(format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{fault}",
            fault.len()
        ));
        let err = ApiClient::new(&socket, Duration::from_secs(2))
            .send_ctrl_alt_del()
            .unwrap_err();
        assert!(
            err.to_string().ends_with("HTTP 400: not supported X"),
            "{err}"
        );
    }
}
