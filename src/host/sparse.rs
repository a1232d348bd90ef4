//! Sparse files: the data extents of a file (`SEEK_DATA`/`SEEK_HOLE`, so an 8 GiB disk with
//! 1.5 GiB of data is read as 1.5 GiB), a reflink clone (`FICLONE`) where the filesystem has
//! them, and a sparse copy where it does not. `export` reads a disk this way, `import` writes
//! one back extent by extent.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The data extents of `file`, `[offset, length]` in order, and its size. A filesystem that
/// cannot tell holes from data reports the whole file as one extent.
pub fn data_extents(file: &File) -> io::Result<(Vec<[u64; 2]>, u64)> {
    let size = file.metadata()?.len();
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: lseek on a descriptor this function borrows; it touches no memory.
        let found = unsafe { libc::lseek(fd, offset, whence) };
        if found < 0 {
            let error = io::Error::last_os_error();
            // ENXIO: no data (or hole) at or after the offset.
            return if error.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(error)
            };
        }
        Ok(Some(u64::try_from(found).map_err(io::Error::other)?))
    };
    let mut extents = Vec::new();
    let mut at = 0u64;
    while at < size {
        let Some(start) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        if end > start {
            extents.push([start, end - start]);
        }
        at = end;
    }
    Ok((extents, size))
}

/// Copies the extents of `from` to `to` (of `from`'s logical size), in order, feeding every
/// byte to `sink` as it passes (a digest, a progress counter).
pub fn read_extents(
    from: &mut File,
    extents: &[[u64; 2]],
    to: &mut dyn Write,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    let mut buffer = vec![0u8; 1 << 20];
    for [offset, length] in extents {
        from.seek(SeekFrom::Start(*offset))?;
        let mut left = *length;
        while left > 0 {
            let want = usize::try_from(left.min(buffer.len() as u64)).unwrap_or(buffer.len());
            let read = from.read(&mut buffer[..want])?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was read",
                ));
            }
            sink(&buffer[..read]);
            to.write_all(&buffer[..read])?;
            left -= read as u64;
        }
    }
    Ok(())
}

/// Writes `data` (the extents one after another) into `to` at the extents' offsets, then
/// sizes it to `logical_size`: what `read_extents` sent, holes as holes. Reads exactly the
/// extents' total from `data`, never more.
pub fn write_extents(
    data: &mut dyn Read,
    extents: &[[u64; 2]],
    logical_size: u64,
    to: &mut File,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    let mut buffer = vec![0u8; 1 << 20];
    for [offset, length] in extents {
        to.seek(SeekFrom::Start(*offset))?;
        let mut left = *length;
        while left > 0 {
            let want = usize::try_from(left.min(buffer.len() as u64)).unwrap_or(buffer.len());
            let read = data.read(&mut buffer[..want])?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive ended inside the disk",
                ));
            }
            sink(&buffer[..read]);
            to.write_all(&buffer[..read])?;
            left -= read as u64;
        }
    }
    to.set_len(logical_size)
}

/// A reflink clone of `from` at `to` (new, 0600): the same blocks shared, copied only when
/// either is written. `Ok(false)` where the filesystem has no reflinks (ext4), and nothing is
/// left at `to` then.
pub fn reflink(from: &Path, to: &Path) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    // linux/fs.h: FICLONE = _IOW(0x94, 9, int).
    const FICLONE: libc::c_ulong = 0x4004_9409;
    let source = File::open(from)?;
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are
    // open for the duration of the call and no memory is passed.
    let result = unsafe { libc::ioctl(target.as_raw_fd(), FICLONE, source.as_raw_fd()) };
    if result == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    drop(target);
    let _ = std::fs::remove_file(to);
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY) => Ok(false),
        _ => Err(error),
    }
}

/// A sparse copy of `from` at `to` (new, 0600): its extents only, then its size.
pub fn sparse_copy(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = File::open(from)?;
    let (extents, size) = data_extents(&source)?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)?;
    let mut positioned = Positioned::new(&mut target);
    for [offset, length] in &extents {
        positioned.seek_to(*offset)?;
        read_extents(
            &mut source,
            &[[*offset, *length]],
            &mut positioned,
            &mut |_| {},
        )?;
    }
    target.set_len(size)?;
    target.sync_all()
}

/// A writer at a chosen offset of a file.
struct Positioned<'a> {
    file: &'a mut File,
}

impl<'a> Positioned<'a> {
    fn new(file: &'a mut File) -> Self {
        Self { file }
    }
    fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(offset)).map(|_| ())
    }
}

impl Write for Positioned<'_> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.file.write(buffer)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Bytes the file's blocks take on disk (its allocated size, not its logical one).
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse file: 4 KiB of data at 0, 8 KiB at 1 MiB, 16 MiB in all.
    fn sparse_file(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("disk");
        let mut file = File::create(&path).unwrap();
        file.write_all(&[1u8; 4096]).unwrap();
        file.seek(SeekFrom::Start(1 << 20)).unwrap();
        file.write_all(&[2u8; 8192]).unwrap();
        file.set_len(16 << 20).unwrap();
        file.sync_all().unwrap();
        path
    }

    #[test]
    fn a_sparse_file_is_read_as_its_data_and_written_back_with_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = sparse_file(dir.path());
        let mut file = File::open(&path).unwrap();
        let (extents, size) = data_extents(&file).unwrap();
        assert_eq!(size, 16 << 20);
        // Filesystems round extents to their blocks; the data is inside them, and far less
        // than the file.
        let total: u64 = extents.iter().map(|[_, l]| l).sum();
        assert!((12288..(1 << 20)).contains(&total), "{extents:?}");
        let mut data = Vec::new();
        let mut seen = 0usize;
        read_extents(&mut file, &extents, &mut data, &mut |b| seen += b.len()).unwrap();
        assert_eq!(data.len() as u64, total);
        assert_eq!(seen as u64, total);

        let back = dir.path().join("back");
        let mut target = File::create(&back).unwrap();
        write_extents(
            &mut data.as_slice(),
            &extents,
            size,
            &mut target,
            &mut |_| {},
        )
        .unwrap();
        drop(target);
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&path).unwrap());
        assert!(allocated_bytes(&back).unwrap() < 1 << 20);

        // A copy keeps the holes too, whether by reflink or sparse copy.
        let copy = dir.path().join("copy");
        if !reflink(&path, &copy).unwrap() {
            assert!(!copy.exists());
            sparse_copy(&path, &copy).unwrap();
        }
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&path).unwrap());
    }

    #[test]
    fn a_short_stream_is_an_error_not_a_short_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut target = File::create(dir.path().join("t")).unwrap();
        let error = write_extents(
            &mut [0u8; 100].as_slice(),
            &[[0, 4096]],
            8192,
            &mut target,
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
