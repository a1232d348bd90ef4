//! Getting image files onto this host: HTTP(S) downloads (ureq over rustls) and copies of local
//! files, both hashed with SHA-256 on the way. A dropped connection is resumed with a `Range`
//! request a bounded number of times (appending on 206, starting over on 200), so a large
//! download survives a flaky link; progress is reported through a callback the command turns
//! into a live line.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};

use super::interrupt::{self, Interrupted};
use crate::instance::images::{ImageSource, Sha256Hex};

/// Attempts at one download before a dropped connection is reported.
pub const MAX_ATTEMPTS: u32 = 5;
/// Listings, checksum files and signatures are read into memory up to this size.
const SMALL_LIMIT: u64 = 16 * 1024 * 1024;
/// How often the progress callback is called during a transfer.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("download {url}")]
    Request {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error(
        "cannot reach {host} ({why}) for {url}; without a network, give the images as files instead: fireclaw image fetch --kernel FILE --rootfs FILE"
    )]
    Unreachable {
        host: String,
        why: &'static str,
        url: String,
    },
    #[error("download {url}: the server answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("download {url}: the connection dropped {attempts} times")]
    Interrupted {
        url: String,
        attempts: u32,
        #[source]
        source: io::Error,
    },
    #[error("fetch {what}")]
    Stopped {
        what: String,
        #[source]
        source: Interrupted,
    },
    #[error("download {url}: larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A request's failure: one that never reached the server (no DNS, no route, refused, timed
/// out) says so in a person's words and names the offline way; anything else keeps ureq's.
fn request_error(url: &str, source: ureq::Error) -> DownloadError {
    let why = match &source {
        ureq::Error::HostNotFound => Some("DNS failed"),
        ureq::Error::ConnectionFailed => Some("the connection failed"),
        ureq::Error::Timeout(_) => Some("it timed out"),
        ureq::Error::Io(error) => {
            let text = error.to_string();
            if text.contains("failed to lookup address")
                || text.contains("Name or service not known")
            {
                Some("DNS failed")
            } else {
                match error.kind() {
                    io::ErrorKind::ConnectionRefused => Some("the connection was refused"),
                    io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                        Some("no route to it")
                    }
                    io::ErrorKind::TimedOut => Some("it timed out"),
                    _ => None,
                }
            }
        }
        _ => None,
    };
    match why {
        Some(why) => DownloadError::Unreachable {
            host: url_host(url).to_owned(),
            why,
            url: url.to_owned(),
        },
        None => DownloadError::Request {
            url: url.to_owned(),
            source,
        },
    }
}

/// The host of an `http(s)://` URL (for messages).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// What a download or copy produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub sha256: Sha256Hex,
    pub size: u64,
    /// How many times a dropped connection was picked up again.
    pub resumed: u32,
}

/// Progress of one transfer: bytes so far, and the total when known.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

#[derive(Clone)]
pub struct Downloader {
    agent: ureq::Agent,
    /// Pause before attempt `n` is `n` times this.
    backoff: Duration,
}

impl Default for Downloader {
    fn default() -> Self {
        Self::new()
    }
}

impl Downloader {
    pub fn new() -> Self {
        let config = ureq::Agent::config_builder()
            // Statuses are ours to report (a 404 names the file, a 206 is a resumed body).
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled transfer counts as a dropped connection, not a hang.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("fireclaw/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: config.into(),
            backoff: Duration::from_millis(500),
        }
    }

    /// The size of `source` when it can be learned without transferring it (a HEAD request,
    /// or the file's metadata). A missing file or a 404 is an error here already, so a typo
    /// fails before anything is downloaded.
    pub fn size_of(&self, source: &ImageSource) -> Result<Option<u64>, DownloadError> {
        match source {
            ImageSource::File(path) => {
                std::fs::metadata(path)
                    .map(|m| Some(m.len()))
                    .map_err(|source| DownloadError::Read {
                        path: path.clone(),
                        source,
                    })
            }
            ImageSource::Url(url) => {
                let response = self
                    .agent
                    .head(url)
                    .call()
                    .map_err(|source| request_error(url, source))?;
                let status = response.status().as_u16();
                match status {
                    200..=299 => Ok(content_length(&response)),
                    404 | 410 => Err(DownloadError::Status {
                        url: url.clone(),
                        status,
                    }),
                    // Some servers refuse HEAD; the GET will tell.
                    _ => Ok(None),
                }
            }
        }
    }

    /// A small file (a listing, `SHA256SUMS`, a signature) in memory.
    pub fn fetch_small(&self, source: &ImageSource) -> Result<Vec<u8>, DownloadError> {
        match source {
            ImageSource::File(path) => read_small(path),
            ImageSource::Url(url) => {
                let mut response = self.get(url, None, None)?;
                let status = response.status().as_u16();
                if !(200..=299).contains(&status) {
                    return Err(DownloadError::Status {
                        url: url.clone(),
                        status,
                    });
                }
                response
                    .body_mut()
                    .with_config()
                    .limit(SMALL_LIMIT)
                    .read_to_vec()
                    .map_err(|source| request_error(url, source))
            }
        }
    }

    /// Like [`Self::fetch_small`], but a missing file (404, or no such local file) is `None`.
    pub fn fetch_small_if_present(
        &self,
        source: &ImageSource,
    ) -> Result<Option<Vec<u8>>, DownloadError> {
        match self.fetch_small(source) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(DownloadError::Status { status: 404, .. }) => Ok(None),
            Err(DownloadError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Downloads or copies `source` into `dest` (created 0600), hashing on the way, and syncs
    /// it to disk.
    pub fn fetch_to(
        &self,
        source: &ImageSource,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<Fetched, DownloadError> {
        let write_error = |source| DownloadError::Write {
            path: dest.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(dest)
            .map_err(write_error)?;
        let fetched = match source {
            ImageSource::File(path) => copy_file(path, &mut file, dest, progress)?,
            ImageSource::Url(url) => self.download(url, &mut file, dest, progress)?,
        };
        file.sync_all().map_err(write_error)?;
        Ok(fetched)
    }

    /// `fetch_to` on a thread of its own, with `progress` called here: a signal wakes only the
    /// thread that takes it, so a read blocked on a stalled server might never see Ctrl-C.
    /// This thread does, and stops waiting at once; the caller's error path then removes
    /// `dest`, and the transfer thread ends with the process.
    pub fn fetch_to_watched(
        &self,
        source: &ImageSource,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<Fetched, DownloadError> {
        let (sender, receiver) = mpsc::channel();
        let worker = {
            let (this, source, dest) = (self.clone(), source.clone(), dest.to_owned());
            std::thread::spawn(move || {
                this.fetch_to(&source, &dest, &mut |done, total| {
                    let _ = sender.send((done, total));
                })
            })
        };
        loop {
            match receiver.recv_timeout(Duration::from_millis(100)) {
                Ok((done, total)) => progress(done, total),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            interrupt::check().map_err(|stop| DownloadError::Stopped {
                what: source.to_string(),
                source: stop,
            })?;
        }
        worker.join().unwrap_or_else(|_| {
            Err(DownloadError::Write {
                path: dest.to_owned(),
                source: io::Error::other("the transfer thread panicked"),
            })
        })
    }

    /// A GET of `url`, from byte `from` on when given, and then only if the file is still the
    /// one `validator` (its ETag or Last-Modified) names; otherwise the server sends it whole.
    /// An https URL is never followed to plain http by a redirect.
    fn get(
        &self,
        url: &str,
        from: Option<u64>,
        validator: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, DownloadError> {
        let mut request = self
            .agent
            .get(url)
            .config()
            .https_only(url.starts_with("https://"))
            .build();
        if let Some(offset) = from {
            request = request.header("Range", format!("bytes={offset}-"));
            if let Some(validator) = validator {
                request = request.header("If-Range", validator);
            }
        }
        request.call().map_err(|source| request_error(url, source))
    }

    fn download(
        &self,
        url: &str,
        file: &mut File,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<Fetched, DownloadError> {
        let write_error = |source| DownloadError::Write {
            path: dest.to_owned(),
            source,
        };
        let mut hasher = Context::new(&SHA256);
        let mut have: u64 = 0;
        let mut attempt: u32 = 0;
        let mut resumed = 0;
        let mut validator: Option<String> = None;
        let stopped = |source| DownloadError::Stopped {
            what: url.to_owned(),
            source,
        };
        loop {
            interrupt::check().map_err(stopped)?;
            attempt += 1;
            let resume_from = (have > 0).then_some(have);
            let last_error = match self.get(url, resume_from, validator.as_deref()) {
                // Nothing received yet: no network, a refused connection, an unknown host.
                // That is reported at once rather than retried.
                Err(e) if have == 0 => return Err(e),
                Err(DownloadError::Request { source, .. }) => io::Error::other(source),
                Err(DownloadError::Unreachable { why, .. }) => io::Error::other(why),
                Err(e) => return Err(e),
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let total = match status {
                        206 if resume_from.is_some()
                            && content_range_start(&response) != Some(have) =>
                        {
                            // Not the part we asked for: start over without a range.
                            file.set_len(0).map_err(write_error)?;
                            file.rewind().map_err(write_error)?;
                            hasher = Context::new(&SHA256);
                            have = 0;
                            continue;
                        }
                        206 if resume_from.is_some() => {
                            resumed += 1;
                            content_range_total(&response)
                                .or_else(|| content_length(&response).map(|n| n + have))
                        }
                        200 => {
                            // What a resume must find unchanged.
                            validator = ["etag", "last-modified"].iter().find_map(|name| {
                                response
                                    .headers()
                                    .get(*name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            });
                            if have > 0 {
                                // The server ignored the range: start over.
                                file.set_len(0).map_err(write_error)?;
                                file.rewind().map_err(write_error)?;
                                hasher = Context::new(&SHA256);
                                have = 0;
                            }
                            content_length(&response)
                        }
                        _ => {
                            return Err(DownloadError::Status {
                                url: url.to_owned(),
                                status,
                            });
                        }
                    };
                    let mut reader = response.body_mut().as_reader();
                    match copy_hashing(&mut reader, file, &mut hasher, &mut have, total, progress) {
                        Ok(()) if total.is_none_or(|t| have >= t) => {
                            return Ok(Fetched {
                                sha256: Sha256Hex::from_digest(hasher.finish().as_ref()),
                                size: have,
                                resumed,
                            });
                        }
                        Ok(()) => io::Error::from(io::ErrorKind::UnexpectedEof),
                        Err(CopyError::Write(e)) => return Err(write_error(e)),
                        Err(CopyError::Stopped(e)) => return Err(stopped(e)),
                        Err(CopyError::Read(e)) => e,
                    }
                }
            };
            interrupt::check().map_err(stopped)?;
            if attempt >= MAX_ATTEMPTS {
                return Err(DownloadError::Interrupted {
                    url: url.to_owned(),
                    attempts: attempt,
                    source: last_error,
                });
            }
            std::thread::sleep(self.backoff * attempt);
        }
    }
}

fn content_length(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    response
        .headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The first byte in `Content-Range: bytes 100-199/200`.
fn content_range_start(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split_once('-')?.0.trim().parse().ok()
}

/// The total size in `Content-Range: bytes 100-199/200`.
fn content_range_total(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    value.rsplit_once('/')?.1.trim().parse().ok()
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Stopped(Interrupted),
}

fn copy_hashing(
    reader: &mut dyn Read,
    file: &mut File,
    hasher: &mut Context,
    have: &mut u64,
    total: Option<u64>,
    progress: Progress<'_>,
) -> Result<(), CopyError> {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut last = Instant::now();
    progress(*have, total);
    loop {
        interrupt::check().map_err(CopyError::Stopped)?;
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        file.write_all(&buffer[..n]).map_err(CopyError::Write)?;
        hasher.update(&buffer[..n]);
        *have += n as u64;
        if last.elapsed() >= PROGRESS_EVERY {
            progress(*have, total);
            last = Instant::now();
        }
    }
    progress(*have, total);
    Ok(())
}

fn copy_file(
    path: &Path,
    file: &mut File,
    dest: &Path,
    progress: Progress<'_>,
) -> Result<Fetched, DownloadError> {
    let read_error = |source| DownloadError::Read {
        path: path.to_owned(),
        source,
    };
    let mut input = File::open(path).map_err(read_error)?;
    let total = input.metadata().map(|m| m.len()).ok();
    let mut hasher = Context::new(&SHA256);
    let mut have = 0;
    copy_hashing(&mut input, file, &mut hasher, &mut have, total, progress).map_err(
        |e| match e {
            CopyError::Read(source) => read_error(source),
            CopyError::Write(source) => DownloadError::Write {
                path: dest.to_owned(),
                source,
            },
            CopyError::Stopped(source) => DownloadError::Stopped {
                what: path.display().to_string(),
                source,
            },
        },
    )?;
    Ok(Fetched {
        sha256: Sha256Hex::from_digest(hasher.finish().as_ref()),
        size: have,
        resumed: 0,
    })
}

fn read_small(path: &Path) -> Result<Vec<u8>, DownloadError> {
    let read_error = |source| DownloadError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(read_error)?
        .take(SMALL_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > SMALL_LIMIT {
        return Err(DownloadError::TooLarge {
            url: path.display().to_string(),
            limit: SMALL_LIMIT,
        });
    }
    Ok(bytes)
}

/// SHA-256 and size of a file on disk.
pub fn digest_file(path: &Path) -> Result<(Sha256Hex, u64), DownloadError> {
    let read_error = |source| DownloadError::Read {
        path: path.to_owned(),
        source,
    };
    let mut input = File::open(path).map_err(read_error)?;
    let mut hasher = Context::new(&SHA256);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((Sha256Hex::from_digest(hasher.finish().as_ref()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_never_reached_the_server_says_why_and_names_the_offline_way() {
        let dns = io::Error::other(
            "failed to lookup address information: Temporary failure in name resolution",
        );
        let error = request_error(
            "https://s3.amazonaws.com/spec.ccfc.min/?list-type=2",
            ureq::Error::Io(dns),
        );
        assert_eq!(
            error.to_string(),
            "cannot reach s3.amazonaws.com (DNS failed) for https://s3.amazonaws.com/spec.ccfc.min/?list-type=2; without a network, give the images as files instead: fireclaw image fetch --kernel FILE --rootfs FILE"
        );
        let refused = request_error(
            "http://user@127.0.0.1:9/x",
            ureq::Error::Io(io::ErrorKind::ConnectionRefused.into()),
        );
        assert!(
            refused
                .to_string()
                .starts_with("cannot reach 127.0.0.1:9 (the connection was refused)")
        );
        // Anything else stays ureq's own error, under the URL.
        let other = request_error("https://x/y", ureq::Error::BadUri("no".into()));
        assert!(matches!(other, DownloadError::Request { .. }));
    }

    #[test]
    fn digests_are_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let (digest, size) = digest_file(&path).unwrap();
        assert_eq!(
            digest.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(size, 3);
        let copy = dir.path().join("copy");
        let fetched = Downloader::new()
            .fetch_to(&ImageSource::File(path), &copy, &mut |_, _| {})
            .unwrap();
        assert_eq!(fetched.sha256, digest);
        assert_eq!(std::fs::read(copy).unwrap(), b"abc");
    }
}
