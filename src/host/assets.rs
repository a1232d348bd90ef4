//! Copying base images into an instance's asset dir: a reflink where the filesystem supports
//! it (instant, shares blocks), otherwise a sparse copy that skips holes and zero blocks, so a
//! 40G rootfs costs only the space its data uses. The rootfs copy is then grown to the disk size
//! (the guest grows its filesystem with `resize2fs` at provisioning); shrinking is refused.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("open base image {path}")]
    OpenSource { path: PathBuf, source: io::Error },
    #[error("base image {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("create {path}")]
    CreateTarget { path: PathBuf, source: io::Error },
    #[error(
        "copy {from} to {to}: no space left on device: the filesystem holding {} is full (the base image has {} MiB of data to copy)",
        to.parent().unwrap_or(to).display(), size_mib
    )]
    DiskFull {
        from: PathBuf,
        to: PathBuf,
        size_mib: u64,
    },
    #[error("copy {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error(
        "refusing to shrink {path}: the image is {current} bytes, larger than the requested disk size of {requested} bytes"
    )]
    WouldShrink {
        path: PathBuf,
        current: u64,
        requested: u64,
    },
    #[error("grow {path} to {size} bytes")]
    Grow {
        path: PathBuf,
        size: u64,
        source: io::Error,
    },
}

/// How a copy was made, for the summary and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    Reflink,
    Sparse,
}

const BLOCK: usize = 64 * 1024;

/// Copies `from` to a new file `to` (mode 0600, refused if it exists), then grows it to
/// `grow_to` bytes when given. On failure the partial target is removed.
pub fn copy_image(from: &Path, to: &Path, grow_to: Option<u64>) -> Result<CopyMethod, AssetError> {
    let source = File::open(from).map_err(|source| AssetError::OpenSource {
        path: from.to_owned(),
        source,
    })?;
    let metadata = source.metadata().map_err(|source| AssetError::OpenSource {
        path: from.to_owned(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(AssetError::NotAFile {
            path: from.to_owned(),
        });
    }
    if let Some(requested) = grow_to
        && metadata.len() > requested
    {
        return Err(AssetError::WouldShrink {
            path: from.to_owned(),
            current: metadata.len(),
            requested,
        });
    }
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)
        .map_err(|source| AssetError::CreateTarget {
            path: to.to_owned(),
            source,
        })?;
    let result = fill(&source, metadata.len(), &target, from, to).and_then(|method| {
        grow(&target, to, grow_to)?;
        Ok(method)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(to);
    }
    result
}

fn fill(
    source: &File,
    length: u64,
    target: &File,
    from: &Path,
    to: &Path,
) -> Result<CopyMethod, AssetError> {
    let fail = |error: io::Error| {
        if error.raw_os_error() == Some(libc::ENOSPC) {
            AssetError::DiskFull {
                from: from.to_owned(),
                to: to.to_owned(),
                size_mib: source
                    .metadata()
                    .map(|m| (m.blocks() * 512).div_ceil(1 << 20))
                    .unwrap_or(0),
            }
        } else {
            AssetError::Copy {
                from: from.to_owned(),
                to: to.to_owned(),
                source: error,
            }
        }
    };
    // Mode set explicitly: open()'s mode is filtered by the umask.
    target
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    if try_reflink(source, target) {
        return Ok(CopyMethod::Reflink);
    }
    sparse_copy(source, length, target).map_err(fail)?;
    target.sync_all().map_err(fail)?;
    Ok(CopyMethod::Sparse)
}

fn try_reflink(source: &File, target: &File) -> bool {
    // FICLONE = _IOW(0x94, 9, int)
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the source
    // fd as its integer argument and touches no memory of ours.
    let result = unsafe { libc::ioctl(target.as_raw_fd(), FICLONE, source.as_raw_fd()) };
    result == 0
}

/// Copies data regions only: holes stay holes (SEEK_DATA/SEEK_HOLE), and all-zero blocks inside
/// data are skipped too, so the target is no less sparse than the source.
fn sparse_copy(source: &File, length: u64, target: &File) -> io::Result<()> {
    let mut reader = source;
    let mut writer = target;
    let mut buffer = vec![0u8; BLOCK];
    let mut position = 0u64;
    while position < length {
        let data = match seek_data(source, position)? {
            Some(offset) => offset,
            None => break,
        };
        let hole = seek_hole(source, data)?.min(length);
        let mut offset = data;
        while offset < hole {
            let want = usize::try_from((hole - offset).min(BLOCK as u64)).unwrap_or(BLOCK);
            reader.seek(SeekFrom::Start(offset))?;
            reader.read_exact(&mut buffer[..want])?;
            if buffer[..want].iter().any(|b| *b != 0) {
                writer.seek(SeekFrom::Start(offset))?;
                writer.write_all(&buffer[..want])?;
            }
            offset += want as u64;
        }
        position = hole;
    }
    // Trailing holes need the length set explicitly.
    target.set_len(length)
}

fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on an open descriptor has no memory effects.
    let result = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if result >= 0 {
        return Ok(Some(result as u64));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // ENXIO: no data at or after offset.
        Some(libc::ENXIO) => Ok(None),
        _ => Err(error),
    }
}

fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    match lseek(file, offset, libc::SEEK_DATA) {
        // Filesystems without SEEK_DATA report everything as data.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some(offset)),
        other => other,
    }
}

fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    match lseek(file, offset, libc::SEEK_HOLE) {
        Ok(Some(hole)) => Ok(hole),
        Ok(None) => Ok(offset),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(u64::MAX),
        Err(e) => Err(e),
    }
}

fn grow(target: &File, path: &Path, grow_to: Option<u64>) -> Result<(), AssetError> {
    let Some(size) = grow_to else {
        return Ok(());
    };
    let fail = |source| AssetError::Grow {
        path: path.to_owned(),
        size,
        source,
    };
    let current = target.metadata().map_err(fail)?.len();
    if current < size {
        target.set_len(size).map_err(fail)?;
    }
    target.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A fresh temporary directory, removed when dropped (also when the test panics).
    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// A 64 MiB file with 1 MiB of data at its start and a marker in its middle.
    fn sparse_source(dir: &Path) -> PathBuf {
        let path = dir.join("rootfs.ext4");
        let mut file = File::create(&path).unwrap();
        file.write_all(&vec![0xAB; 1 << 20]).unwrap();
        file.seek(SeekFrom::Start(32 << 20)).unwrap();
        file.write_all(b"middle marker").unwrap();
        file.set_len(64 << 20).unwrap();
        path
    }

    #[test]
    fn copy_keeps_contents_grows_and_stays_sparse() {
        let dir = scratch();
        let from = sparse_source(dir.path());
        let to = dir.path().join("copy.ext4");
        copy_image(&from, &to, Some(128 << 20)).unwrap();
        let metadata = std::fs::metadata(&to).unwrap();
        assert_eq!(metadata.len(), 128 << 20);
        assert_eq!(metadata.mode() & 0o777, 0o600);
        // Well under the apparent size: holes were not filled.
        assert!(
            metadata.blocks() * 512 < 8 << 20,
            "{} blocks",
            metadata.blocks()
        );
        let copied = std::fs::read(&to).unwrap();
        let original = std::fs::read(&from).unwrap();
        assert_eq!(&copied[..original.len()], &original[..]);
        assert!(copied[original.len()..].iter().all(|b| *b == 0));
    }

    #[test]
    fn copy_without_growth_is_identical() {
        let dir = scratch();
        let from = sparse_source(dir.path());
        let to = dir.path().join("vmlinux");
        copy_image(&from, &to, None).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), std::fs::read(&from).unwrap());
    }

    #[test]
    fn shrinking_is_refused_and_leaves_no_target() {
        let dir = scratch();
        let from = sparse_source(dir.path());
        let to = dir.path().join("copy.ext4");
        let err = copy_image(&from, &to, Some(1 << 20)).unwrap_err();
        assert!(matches!(err, AssetError::WouldShrink { .. }), "{err}");
        assert!(!to.exists());
    }

    #[test]
    fn an_existing_target_or_missing_source_is_an_error() {
        let dir = scratch();
        let from = sparse_source(dir.path());
        let to = dir.path().join("copy.ext4");
        std::fs::write(&to, b"keep me").unwrap();
        assert!(matches!(
            copy_image(&from, &to, None),
            Err(AssetError::CreateTarget { .. })
        ));
        assert_eq!(std::fs::read(&to).unwrap(), b"keep me");
        assert!(matches!(
            copy_image(&dir.path().join("missing"), &dir.path().join("x"), None),
            Err(AssetError::OpenSource { .. })
        ));
        assert!(matches!(
            copy_image(dir.path(), &dir.path().join("y"), None),
            Err(AssetError::NotAFile { .. })
        ));
    }
}
