//! The byte stream an instance archive travels in: a tar stream compressed by Debian's `zstd`
//! and, with recipients, encrypted by Debian's `age`, both run as filters (as `gpgv` is run
//! for `image fetch`), with no C library built in. `seal` gives the writer the tar goes into
//! and the file or stdout the sealed stream goes to; `open` reads a file or stdin, tells a
//! plain archive (a zstd frame) from an encrypted one (age's header) from anything else, and
//! gives the tar stream back. Every filter's exit status is checked before the stream counts
//! as whole: a truncated or forged stream is an error, never a short archive.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub const ZSTD: &str = "zstd";
pub const AGE: &str = "age";

/// zstd's level: the one the README's comparison uses (`zstd -3`), on every core.
const ZSTD_ARGS: [&str; 5] = ["-3", "-T0", "-q", "-c", "-"];

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The first line of an age file, binary or armored.
const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";
const AGE_ARMOR: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("run {program} (install the Debian package {program})")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}){stderr}")]
    Failed {
        program: &'static str,
        status: String,
        stderr: String,
    },
    #[error("read the archive")]
    Read(#[source] io::Error),
    #[error("this is not a fireclaw archive: it is neither zstd data nor age-encrypted")]
    NotAnArchive,
    #[error(
        "the archive is encrypted with age: give the identity that decrypts it with --identity FILE"
    )]
    NeedsIdentity,
}

/// Who may read an archive: age recipients (`age1...` or SSH public keys) and recipient
/// files; none means the archive is not encrypted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    pub keys: Vec<String>,
    pub files: Vec<PathBuf>,
}

impl Recipients {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.files.is_empty()
    }
}

/// Where the sealed stream goes.
pub enum Destination {
    File(std::fs::File),
    Stdout,
}

/// The filters an export writes through; `writer` takes the tar stream.
pub struct Sealer {
    writer: Option<ChildStdin>,
    children: Vec<(&'static str, Child)>,
}

fn spawn(program: &'static str, command: &mut Command) -> Result<Child, StreamError> {
    use std::os::unix::process::CommandExt;
    // Their own process group: a Ctrl-C reaches fireclaw alone, which ends them in order.
    command
        .process_group(0)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| StreamError::Spawn { program, source })
}

/// Starts `zstd` (and `age` for recipients) writing to `destination`.
pub fn seal(destination: Destination, recipients: &Recipients) -> Result<Sealer, StreamError> {
    let last_stdout = |destination: Destination| match destination {
        Destination::File(file) => Stdio::from(file),
        Destination::Stdout => Stdio::inherit(),
    };
    let mut zstd = Command::new(ZSTD);
    zstd.args(ZSTD_ARGS).stdin(Stdio::piped());
    let mut children = Vec::new();
    if recipients.is_empty() {
        zstd.stdout(last_stdout(destination));
        children.push((ZSTD, spawn(ZSTD, &mut zstd)?));
    } else {
        zstd.stdout(Stdio::piped());
        let mut zstd = spawn(ZSTD, &mut zstd)?;
        let piped = zstd
            .stdout
            .take()
            .map(Stdio::from)
            .unwrap_or_else(Stdio::null);
        let mut age = Command::new(AGE);
        age.arg("--encrypt");
        for key in &recipients.keys {
            age.arg("--recipient").arg(key);
        }
        for file in &recipients.files {
            age.arg("--recipients-file").arg(file);
        }
        age.stdin(piped).stdout(last_stdout(destination));
        let age = match spawn(AGE, &mut age) {
            Ok(age) => age,
            Err(error) => {
                let _ = zstd.kill();
                let _ = zstd.wait();
                return Err(error);
            }
        };
        children.push((ZSTD, zstd));
        children.push((AGE, age));
    }
    let writer = children[0].1.stdin.take();
    Ok(Sealer { writer, children })
}

impl Sealer {
    /// Where the tar stream goes.
    pub fn writer(&mut self) -> &mut dyn Write {
        self
    }

    /// Closes the tar stream and waits for every filter; an error names the first that failed.
    pub fn finish(mut self) -> Result<(), StreamError> {
        drop(self.writer.take());
        wait_all(std::mem::take(&mut self.children))
    }
}

impl Write for Sealer {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match &mut self.writer {
            Some(writer) => writer.write(buffer),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Some(writer) => writer.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Sealer {
    /// An export that stops early ends its filters (the partial file is the caller's to
    /// remove).
    fn drop(&mut self) {
        drop(self.writer.take());
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_all(children: Vec<(&'static str, Child)>) -> Result<(), StreamError> {
    let mut first_error = None;
    for (program, child) in children {
        let output = child
            .wait_with_output()
            .map_err(|source| StreamError::Spawn { program, source })?;
        if !output.status.success() && first_error.is_none() {
            first_error = Some(failure(program, output.status, &output.stderr));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A filter's failure, with the last line it wrote on stderr.
fn failure(program: &'static str, status: std::process::ExitStatus, stderr: &[u8]) -> StreamError {
    let stderr = String::from_utf8_lossy(stderr);
    let tail = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect::<String>();
    StreamError::Failed {
        program,
        status: status.to_string(),
        stderr: if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        },
    }
}

/// What a stream holds, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Encrypted,
}

/// Tells a plain archive from an encrypted one from anything else.
pub fn kind_of(head: &[u8]) -> Result<Kind, StreamError> {
    if head.starts_with(&ZSTD_MAGIC) {
        Ok(Kind::Plain)
    } else if head.starts_with(AGE_HEADER) || head.starts_with(AGE_ARMOR) {
        Ok(Kind::Encrypted)
    } else {
        Err(StreamError::NotAnArchive)
    }
}

/// Where an archive is read from.
pub enum Source {
    File(std::fs::File),
    Stdin,
}

/// The filters an import reads through; `reader` gives the tar stream.
pub struct Opener {
    reader: Option<ChildStdout>,
    children: Vec<(&'static str, Child)>,
    feeder: Option<std::thread::JoinHandle<io::Result<()>>>,
    pub kind: Kind,
}

/// Starts `age --decrypt` (for an encrypted archive, with `identity`) and `zstd -d` on
/// `source`, whose first bytes decide which.
pub fn open(mut source: Source, identity: Option<&Path>) -> Result<Opener, StreamError> {
    let mut head = vec![0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        let read = match &mut source {
            Source::File(file) => file.read(&mut head[filled..]),
            Source::Stdin => io::stdin().lock().read(&mut head[filled..]),
        }
        .map_err(StreamError::Read)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    head.truncate(filled);
    let kind = kind_of(&head)?;
    if kind == Kind::Encrypted && identity.is_none() {
        return Err(StreamError::NeedsIdentity);
    }
    let mut children = Vec::new();
    let mut first = match (kind, identity) {
        (Kind::Encrypted, Some(identity)) => {
            let mut age = Command::new(AGE);
            age.arg("--decrypt")
                .arg("--identity")
                .arg(identity)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            spawn(AGE, &mut age)?
        }
        _ => {
            let mut zstd = Command::new(ZSTD);
            zstd.args(["-d", "-q", "-c", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            spawn(ZSTD, &mut zstd)?
        }
    };
    let input = first.stdin.take();
    let first_name = if kind == Kind::Encrypted { AGE } else { ZSTD };
    if kind == Kind::Encrypted {
        let decrypted = first
            .stdout
            .take()
            .map(Stdio::from)
            .unwrap_or_else(Stdio::null);
        let mut zstd = Command::new(ZSTD);
        zstd.args(["-d", "-q", "-c", "-"])
            .stdin(decrypted)
            .stdout(Stdio::piped());
        children.push((first_name, first));
        match spawn(ZSTD, &mut zstd) {
            Ok(zstd) => children.push((ZSTD, zstd)),
            Err(error) => {
                for (_, child) in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(error);
            }
        }
    } else {
        children.push((first_name, first));
    }
    let reader = children.last_mut().and_then(|(_, c)| c.stdout.take());
    // The bytes read to tell the kind, then the rest, fed to the first filter.
    let feeder = input.map(|mut input| {
        std::thread::spawn(move || -> io::Result<()> {
            input.write_all(&head)?;
            match source {
                Source::File(mut file) => io::copy(&mut file, &mut input)?,
                Source::Stdin => io::copy(&mut io::stdin().lock(), &mut input)?,
            };
            Ok(())
        })
    });
    Ok(Opener {
        reader,
        children,
        feeder,
        kind,
    })
}

impl Opener {
    /// The tar stream.
    pub fn reader(&mut self) -> &mut dyn Read {
        self
    }

    /// Reads the rest of the stream to its end, at most `cap` bytes (what follows the last
    /// member must be the tar's end, not more data), then waits for every filter: a stream
    /// that was cut short, forged or not wholly decrypted fails here.
    pub fn finish(mut self, cap: u64) -> Result<(), StreamError> {
        if let Some(reader) = self.reader.as_mut() {
            let mut rest = Vec::new();
            let read = reader
                .take(cap + 1)
                .read_to_end(&mut rest)
                .map_err(StreamError::Read)?;
            if read as u64 > cap || rest.iter().any(|b| *b != 0) {
                return Err(StreamError::Read(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "data follows the archive's last member",
                )));
            }
        }
        drop(self.reader.take());
        let fed = self.feeder.take().map(|feeder| feeder.join());
        let waited = wait_all(std::mem::take(&mut self.children));
        waited?;
        match fed {
            Some(Ok(Err(error))) if error.kind() != io::ErrorKind::BrokenPipe => {
                Err(StreamError::Read(error))
            }
            _ => Ok(()),
        }
    }
}

impl Opener {
    /// After the tar stream ended early or made no sense: the first filter that failed (a
    /// wrong identity, a cut or damaged stream), which is the cause to name rather than what
    /// the tar reader saw; `None` when every filter still runs or ended well. Waits up to a
    /// second for one that is about to fail.
    pub fn failed_filter(&mut self) -> Option<StreamError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let mut running = false;
            for (program, child) in &mut self.children {
                match child.try_wait() {
                    Ok(Some(status)) if !status.success() => {
                        let mut stderr = Vec::new();
                        if let Some(mut pipe) = child.stderr.take() {
                            let _ = pipe.read_to_end(&mut stderr);
                        }
                        return Some(failure(program, status, &stderr));
                    }
                    Ok(Some(_)) => {}
                    _ => running = true,
                }
            }
            if !running || std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Read for Opener {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match &mut self.reader {
            Some(reader) => reader.read(buffer),
            None => Ok(0),
        }
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        drop(self.reader.take());
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_plain_from_encrypted_from_anything_else() {
        assert_eq!(kind_of(&[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap(), Kind::Plain);
        assert_eq!(
            kind_of(b"age-encryption.org/v1\n-> X25519 abc\n").unwrap(),
            Kind::Encrypted
        );
        assert_eq!(
            kind_of(b"-----BEGIN AGE ENCRYPTED FILE-----\n").unwrap(),
            Kind::Encrypted
        );
        for other in [&b"ustar"[..], b"", b"\x1f\x8b\x08"] {
            assert!(matches!(kind_of(other), Err(StreamError::NotAnArchive)));
        }
    }

    #[test]
    fn a_stream_sealed_with_zstd_opens_to_the_same_bytes_and_a_cut_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.fireclaw");
        let mut sealer = seal(
            Destination::File(std::fs::File::create(&path).unwrap()),
            &Recipients::default(),
        )
        .unwrap();
        let payload: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        sealer.writer().write_all(&payload).unwrap();
        sealer.finish().unwrap();

        let mut opener = open(Source::File(std::fs::File::open(&path).unwrap()), None).unwrap();
        assert_eq!(opener.kind, Kind::Plain);
        let mut back = vec![0u8; payload.len()];
        opener.reader().read_exact(&mut back).unwrap();
        assert_eq!(back, payload);
        opener.finish(0).unwrap();

        // The same stream cut in the middle: zstd says so.
        let whole = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.fireclaw");
        std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
        let mut opener = open(Source::File(std::fs::File::open(&cut).unwrap()), None).unwrap();
        let mut back = Vec::new();
        let _ = opener.reader().read_to_end(&mut back);
        assert!(back.len() < payload.len());
        assert!(matches!(
            opener.finish(0),
            Err(StreamError::Failed { program: ZSTD, .. })
        ));
    }

    fn age_identity(dir: &Path, name: &str) -> (PathBuf, String) {
        let identity = dir.join(name);
        let made = Command::new("age-keygen")
            .arg("-o")
            .arg(&identity)
            .output()
            .expect("age-keygen (the Debian package age; the test command installs it)");
        assert!(made.status.success(), "{made:?}");
        let public = Command::new("age-keygen")
            .arg("-y")
            .arg(&identity)
            .output()
            .unwrap();
        (
            identity,
            String::from_utf8(public.stdout).unwrap().trim().to_owned(),
        )
    }

    #[test]
    fn an_encrypted_stream_opens_only_with_its_identity_and_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (identity, recipient) = age_identity(dir.path(), "key.txt");
        let (wrong, _) = age_identity(dir.path(), "other.txt");
        let path = dir.path().join("a.fireclaw");
        let mut sealer = seal(
            Destination::File(std::fs::File::create(&path).unwrap()),
            &Recipients {
                keys: vec![recipient],
                files: Vec::new(),
            },
        )
        .unwrap();
        // More than one of age's 64 KiB chunks, so a cut can drop the final one.
        let payload: Vec<u8> = (0..400_000u32).flat_map(|i| i.to_le_bytes()).collect();
        sealer.writer().write_all(&payload).unwrap();
        sealer.finish().unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert!(whole.starts_with(AGE_HEADER));
        // Not zstd data: nothing but age reads it.
        let zstd = Command::new(ZSTD)
            .args(["-d", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!zstd.status.success());

        let file = || Source::File(std::fs::File::open(&path).unwrap());
        assert!(matches!(
            open(file(), None),
            Err(StreamError::NeedsIdentity)
        ));

        let mut opener = open(file(), Some(&identity)).unwrap();
        assert_eq!(opener.kind, Kind::Encrypted);
        let mut back = vec![0u8; payload.len()];
        opener.reader().read_exact(&mut back).unwrap();
        assert_eq!(back, payload);
        opener.finish(0).unwrap();

        let mut opener = open(file(), Some(&wrong)).unwrap();
        let mut back = Vec::new();
        let _ = opener.reader().read_to_end(&mut back);
        assert!(back.is_empty());
        let refused = opener.finish(0).unwrap_err();
        assert!(
            matches!(refused, StreamError::Failed { program: AGE, .. }),
            "{refused}"
        );

        // The last chunk gone (a whole number of chunks kept): age refuses the stream.
        let cut = dir.path().join("cut.fireclaw");
        std::fs::write(&cut, &whole[..whole.len() - 100]).unwrap();
        let mut opener = open(
            Source::File(std::fs::File::open(&cut).unwrap()),
            Some(&identity),
        )
        .unwrap();
        let mut back = Vec::new();
        let _ = opener.reader().read_to_end(&mut back);
        assert!(back.len() < payload.len());
        assert!(opener.finish(0).is_err());
    }
}
