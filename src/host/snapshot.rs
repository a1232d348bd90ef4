//! The host side of Firecracker snapshots: the facts a snapshot's loadability depends on (the
//! snapshot format version of a Firecracker binary or of a written state file, the host kernel
//! release, the CPU model), free space where the snapshot goes, and the file operations fireclaw
//! does as root on files in the VMM's own dir: flushing them to disk and removing them, never
//! through a link the VMM could have planted there.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::instance::suspension::SnapshotOrigin;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotHostError {
    #[error("ask {binary} for {what}")]
    Firecracker {
        binary: PathBuf,
        what: &'static str,
        #[source]
        source: Box<super::process::ProcessError>,
    },
    #[error("{binary} printed no snapshot version for {what}")]
    NoVersion { binary: PathBuf, what: String },
    #[error("open {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("run {binary} --describe-snapshot")]
    Describe { binary: PathBuf, source: io::Error },
    #[error("read the free space of {path}")]
    FreeSpace { path: PathBuf, source: io::Error },
    #[error("flush {path} to disk")]
    Sync { path: PathBuf, source: io::Error },
    #[error("remove {path}")]
    Remove { path: PathBuf, source: io::Error },
}

/// The first `v<major>.<minor>.<patch>` word Firecracker printed.
fn version_word(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find(|word| {
            word.strip_prefix('v').is_some_and(|rest| {
                !rest.is_empty() && rest.split('.').all(|n| n.parse::<u32>().is_ok())
            })
        })
        .map(str::to_owned)
}

/// The snapshot format version `binary` writes and loads (`--snapshot-version`).
pub fn snapshot_version(binary: &Path) -> Result<String, SnapshotHostError> {
    let program = binary.to_string_lossy();
    let output =
        super::process::run_checked(&program, &["--snapshot-version"]).map_err(|source| {
            SnapshotHostError::Firecracker {
                binary: binary.to_owned(),
                what: "its snapshot version",
                source: Box::new(source),
            }
        })?;
    version_word(&output).ok_or_else(|| SnapshotHostError::NoVersion {
        binary: binary.to_owned(),
        what: "--snapshot-version".into(),
    })
}

/// The format version of a written snapshot state file (`--describe-snapshot`). The file is in
/// the VMM's own dir, so fireclaw opens it (never through a link, never a FIFO or device) and
/// hands Firecracker the open file as its stdin.
pub fn described_version(binary: &Path, state: &Path) -> Result<String, SnapshotHostError> {
    let file = open_regular(state).map_err(|source| SnapshotHostError::Open {
        path: state.to_owned(),
        source,
    })?;
    let output = std::process::Command::new(binary)
        .args(["--describe-snapshot", "/dev/stdin"])
        .stdin(file)
        .output()
        .map_err(|source| SnapshotHostError::Describe {
            binary: binary.to_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    match version_word(&text) {
        Some(version) if output.status.success() => Ok(version),
        _ => Err(SnapshotHostError::NoVersion {
            binary: binary.to_owned(),
            what: format!(
                "{} ({}: {})",
                state.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }),
    }
}

/// A regular file opened for reading without following a link and without blocking on a
/// FIFO; anything else is refused.
fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The last modification of the disk, `<seconds>.<nanoseconds>` since the epoch: a snapshot
/// is loaded only over the disk exactly as it was left.
pub fn disk_modified(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(path).ok()?;
    Some(format!("{}.{:09}", metadata.mtime(), metadata.mtime_nsec()))
}

/// Whether a VM snapshotted on this host can have its kvm-clock moved to the host's wall
/// clock at load (`clock_realtime`): KVM saves the real time with the clock only when the host
/// runs on the TSC clocksource, on kernel 5.16 or later; asked otherwise, Firecracker fails
/// the load.
pub fn clock_realtime_supported() -> bool {
    let clocksource =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    clocksource.trim() == "tsc" && kernel_at_least(&kernel_release(), (5, 16))
}

fn kernel_at_least(release: &str, wanted: (u32, u32)) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= wanted,
        _ => false,
    }
}

/// fsync of a dir, so the names of the files in it are on disk too.
pub fn sync_dir(dir: &Path) -> Result<(), SnapshotHostError> {
    let error = |source| SnapshotHostError::Sync {
        path: dir.to_owned(),
        source,
    };
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(error)?
        .sync_all()
        .map_err(error)
}

/// Seconds since the Unix epoch, the unit of a snapshot record's times.
pub fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

/// The CPU model as `/proc/cpuinfo` names it: `model name` on x86, else the implementer and
/// part numbers (arm64 has no model name).
pub fn parse_cpu_model(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    if let Some(model) = field("model name") {
        return model;
    }
    match (field("CPU implementer"), field("CPU part")) {
        (Some(implementer), Some(part)) => format!("implementer {implementer} part {part}"),
        _ => String::new(),
    }
}

/// This host's facts with the snapshot version of `firecracker`: what a snapshot taken now
/// records, and what one must match to load here.
pub fn here(firecracker: &Path) -> Result<SnapshotOrigin, SnapshotHostError> {
    Ok(SnapshotOrigin {
        format_version: snapshot_version(firecracker)?,
        host_kernel: kernel_release(),
        cpu_model: parse_cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
    })
}

/// Bytes an unprivileged writer may still use on the file system of `path`.
pub fn free_bytes(path: &Path) -> Result<u64, SnapshotHostError> {
    let error = |source| SnapshotHostError::FreeSpace {
        path: path.to_owned(),
        source,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: statvfs is plain data, filled by the call from a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        return Err(error(io::Error::last_os_error()));
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Flushes a regular file to disk. Opened without following a link, read-only (enough for
/// fsync), so a link planted in the VMM's dir leads nowhere.
pub fn sync_file(path: &Path) -> Result<(), SnapshotHostError> {
    let error = |source| SnapshotHostError::Sync {
        path: path.to_owned(),
        source,
    };
    open_regular(path).map_err(error)?.sync_all().map_err(error)
}

/// Removes a file; absent is fine. Unlinking never follows a link.
pub fn remove_file(path: &Path) -> Result<(), SnapshotHostError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SnapshotHostError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The apparent size of a regular file (not through a link), or `None`.
pub fn file_size(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_firecracker_prints_them() {
        assert_eq!(version_word("v10.0.0\n").as_deref(), Some("v10.0.0"));
        assert_eq!(version_word("vmm v2.1.0 ok").as_deref(), Some("v2.1.0"));
        assert_eq!(version_word("version\nvx.1\n"), None);
        assert_eq!(version_word(""), None);
    }

    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        assert!(kernel_at_least("6.1.0-28-amd64", (5, 16)));
        assert!(kernel_at_least("5.16.0", (5, 16)));
        assert!(!kernel_at_least("5.10.0-30-amd64", (5, 16)));
        assert!(!kernel_at_least("", (5, 16)));
    }

    #[test]
    fn a_state_file_is_described_through_stdin_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("snapshot.vmstate");
        std::fs::write(&state, b"state").unwrap();
        // A "Firecracker" that prints the version of what it reads on stdin.
        let binary = dir.path().join("firecracker");
        std::fs::write(
            &binary,
            "#!/bin/sh\n[ \"$2\" = /dev/stdin ] && read v < \"$2\" && echo \"v$v\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::write(&state, b"10.0.0\n").unwrap();
        assert_eq!(described_version(&binary, &state).unwrap(), "v10.0.0");
        let link = dir.path().join("planted");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let error = described_version(&binary, &link).unwrap_err();
        assert!(matches!(error, SnapshotHostError::Open { .. }), "{error}");
        let fifo = dir.path().join("fifo");
        let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string and mode.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
        assert!(described_version(&binary, &fifo).is_err());
    }

    #[test]
    fn the_cpu_model_comes_from_cpuinfo_on_x86_and_arm() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n";
        assert_eq!(parse_cpu_model(x86), "AMD EPYC 7B13 64-Core Processor");
        let arm = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n";
        assert_eq!(parse_cpu_model(arm), "implementer 0x41 part 0xd0c");
        assert_eq!(parse_cpu_model(""), "");
    }

    #[test]
    fn files_are_flushed_and_removed_but_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snapshot.mem");
        std::fs::write(&file, b"memory").unwrap();
        sync_file(&file).unwrap();
        assert_eq!(file_size(&file), Some(6));
        let modified = disk_modified(&file).unwrap();
        let (seconds, nanos) = modified.split_once('.').unwrap();
        assert!(seconds.parse::<u64>().unwrap() > 1_700_000_000);
        assert_eq!(nanos.len(), 9);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(sync_file(&link).is_err());
        assert_eq!(file_size(&link), None);
        remove_file(&link).unwrap();
        assert!(file.exists());
        remove_file(&file).unwrap();
        remove_file(&file).unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }
}
