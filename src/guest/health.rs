//! The two health gates. Through the proxy: `GET /healthz`, falling back to `/health`, on
//! `127.0.0.1:<port>`; healthy means a 2xx JSON object with `ok == true` or `status` of `ok` or
//! `live` (an HTML page never counts). In the guest: the health script fireclaw installed, run
//! over SSH, which checks the container and the same endpoints, or the CLI's health for older
//! images ("legacy").

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use super::ssh::{GuestShell, SshError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Healthy through the CLI fallback of an image without JSON health endpoints.
    Legacy,
    Down(String),
}

impl Health {
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Up | Self::Legacy)
    }
    pub fn label(&self) -> &str {
        match self {
            Self::Up => "up",
            Self::Legacy => "up (legacy)",
            Self::Down(_) => "down",
        }
    }
}

/// Whether a response body is a healthy JSON object.
pub fn healthy_json(body: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(body) else {
        return false;
    };
    object.get("ok") == Some(&serde_json::Value::Bool(true))
        || matches!(
            object.get("status").and_then(|s| s.as_str()),
            Some("ok" | "live")
        )
}

fn get(port: u16, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&response) {
        Ok(httparse::Status::Complete(head)) => {
            Ok((parsed.code.unwrap_or(0), response[head..].to_vec()))
        }
        _ => Err("malformed HTTP response".into()),
    }
}

/// The proxy gate.
pub fn proxy_health(port: u16, timeout: Duration) -> Health {
    let mut last = String::from("no answer");
    for path in ["/healthz", "/health"] {
        match get(port, path, timeout) {
            Ok((status, body)) if (200..300).contains(&status) && healthy_json(&body) => {
                return Health::Up;
            }
            Ok((status, _)) => last = format!("{path} answered HTTP {status} without healthy JSON"),
            Err(e) => last = format!("{path}: {e}"),
        }
    }
    Health::Down(last)
}

/// The guest gate: the health script over SSH. A host key mismatch is an error, not "down".
pub fn guest_health(target: &dyn GuestShell, id: &str) -> Result<Health, SshError> {
    let script = format!("/usr/local/bin/openclaw-health-{id}.sh");
    match target.run(&format!("sudo {script}"), b"") {
        Ok(out) if out.trim() == "legacy" => Ok(Health::Legacy),
        Ok(_) => Ok(Health::Up),
        Err(error @ SshError::HostKeyMismatch { .. }) => Err(error),
        Err(error) => Ok(Health::Down(crate::output::error_chain(&error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn only_healthy_json_objects_count() {
        assert!(healthy_json(br#"{"ok":true}"#));
        assert!(healthy_json(br#"{"status":"live","uptime":3}"#));
        assert!(healthy_json(br#"{"status":"ok"}"#));
        for body in [
            &br#"{"ok":false}"#[..],
            br#"{"ok":"true"}"#,
            br#"{"status":"starting"}"#,
            br#"[{"ok":true}]"#,
            b"<html><body>ok</body></html>",
            b"",
        ] {
            assert!(!healthy_json(body), "{}", String::from_utf8_lossy(body));
        }
    }

    fn serve(responses: Vec<&'static str>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for response in responses {
                let (mut stream, _) = listener.accept().unwrap();
                // Read the whole request: closing with unread bytes makes the kernel reset.
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                stream.write_all(response.as_bytes()).unwrap();
            }
        });
        port
    }

    #[test]
    fn proxy_gate_falls_back_to_health_and_refuses_html() {
        let port = serve(vec![
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ok\":true}",
        ]);
        assert_eq!(proxy_health(port, Duration::from_secs(2)), Health::Up);
        let port = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>ok</html>",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>ok</html>",
        ]);
        assert!(!proxy_health(port, Duration::from_secs(2)).is_up());
    }

    #[test]
    fn a_gateway_that_never_answers_is_down() {
        // Kept open but never accepted from: the request times out.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(matches!(
            proxy_health(port, Duration::from_millis(300)),
            Health::Down(_)
        ));
        drop(listener);
    }
}
