//! A small HTTP/1.1 server on 127.0.0.1 for the image tests: it serves fixed bodies by path
//! (the full request target first, so an S3 listing URL with a query can be served), answers
//! HEAD and `Range: bytes=N-` requests (or ignores them for chosen paths), can cut a body's
//! connection once after N bytes, can stall a body after N bytes, and can answer chosen paths
//! with an error status. Every request is logged.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    bodies: HashMap<String, Vec<u8>>,
    statuses: HashMap<String, u16>,
    cut_once: HashMap<String, usize>,
    stall_after: HashMap<String, usize>,
    ignore_ranges: Vec<String>,
    log: Vec<Request>,
}

pub struct HttpServer {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl HttpServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        Self { base, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.state
            .lock()
            .unwrap()
            .bodies
            .insert(path.to_owned(), body.into());
    }

    pub fn fail(&self, path: &str, status: u16) {
        self.state
            .lock()
            .unwrap()
            .statuses
            .insert(path.to_owned(), status);
    }

    /// `path` is served normally again.
    pub fn clear_failure(&self, path: &str) {
        self.state.lock().unwrap().statuses.remove(path);
    }

    /// The next GET of `path` sends its headers (with the full length) and `bytes` of the
    /// body, then drops the connection.
    pub fn cut_once_after(&self, path: &str, bytes: usize) {
        self.state
            .lock()
            .unwrap()
            .cut_once
            .insert(path.to_owned(), bytes);
    }

    /// Every GET of `path` sends its headers and `bytes` of the body, then sends nothing more
    /// for a minute (a transfer that hangs).
    pub fn stall_after(&self, path: &str, bytes: usize) {
        self.state
            .lock()
            .unwrap()
            .stall_after
            .insert(path.to_owned(), bytes);
    }

    /// `path` is always sent whole with 200, whatever Range a request asks for.
    pub fn ignore_ranges(&self, path: &str) {
        self.state
            .lock()
            .unwrap()
            .ignore_ranges
            .push(path.to_owned());
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    let mut words = first.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let target = words.next().unwrap_or_default().to_owned();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let (body, status, cut, stall, ranged) = {
        let mut state = state.lock().unwrap();
        state.log.push(Request {
            method: method.clone(),
            target: target.clone(),
            range: range.clone(),
        });
        let key = if state.bodies.contains_key(&target) {
            target.clone()
        } else {
            path.clone()
        };
        let status = state.statuses.get(&key).copied();
        let cut = if method == "GET" {
            state.cut_once.remove(&key)
        } else {
            None
        };
        let stall = state.stall_after.get(&key).copied();
        let ranged = !state.ignore_ranges.contains(&key);
        (state.bodies.get(&key).cloned(), status, cut, stall, ranged)
    };
    let mut stream = stream;
    let Some(body) = body.filter(|_| status.is_none()) else {
        let status = status.unwrap_or(404);
        let text = format!("error {status}\n");
        write!(
            stream,
            "HTTP/1.1 {status} Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            text.len()
        )?;
        if method != "HEAD" {
            stream.write_all(text.as_bytes())?;
        }
        return Ok(());
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < body.len() && ranged);
    let (head, part) = match start {
        Some(start) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\n",
                body.len() - 1,
                body.len()
            ),
            &body[start..],
        ),
        None => ("HTTP/1.1 200 OK\r\n".to_owned(), &body[..]),
    };
    write!(
        stream,
        "{head}Content-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        part.len()
    )?;
    if method == "HEAD" {
        return Ok(());
    }
    if let Some(bytes) = stall.filter(|_| method == "GET") {
        stream.write_all(&part[..bytes.min(part.len())])?;
        stream.flush()?;
        std::thread::sleep(std::time::Duration::from_secs(60));
        return Ok(());
    }
    match cut {
        Some(bytes) => {
            stream.write_all(&part[..bytes.min(part.len())])?;
            stream.flush()?;
            stream.shutdown(std::net::Shutdown::Both)?;
        }
        None => stream.write_all(part)?,
    }
    Ok(())
}
