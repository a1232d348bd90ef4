//! Turning a root tarball into the `rootfs.ext4` a guest boots from, without loop mounts:
//! unpack it (xz through lzma-rs, then tar) into a staging tree with owners, modes, hard links
//! and extended attributes (file capabilities) kept, comment out the mounts of partitions a VM
//! does not have (`/boot`, `/boot/efi`) in its `/etc/fstab`, then `mkfs.ext4 -d` the tree into an image labelled `cloudimg-rootfs` and
//! check it with `e2fsck -fn`. Also the disk-space probe (`statvfs`) the fetch checks first.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::interrupt::{self, Interrupted};
use crate::host::process::{self, ProcessError};
use crate::instance::images::{ImageFormat, ROOTFS_LABEL, SNIFF_LEN};
use crate::render::guest_fstab;

const MIB: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("unpack {archive}")]
    Stopped {
        archive: PathBuf,
        #[source]
        source: Interrupted,
    },
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unpack {archive}")]
    Unpack {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unpack {archive}: entry '{entry}' would land outside the root tree")]
    UnsafeEntry { archive: PathBuf, entry: String },
    #[error("decompress {archive}")]
    Decompress {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("edit {path}")]
    EditFstab {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("edit {path}: it is not a regular file in the root tree (a link?); refusing")]
    FstabNotRegular { path: PathBuf },
    #[error("measure {path}")]
    Measure {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("build {image} from {tree}")]
    Mkfs {
        image: PathBuf,
        tree: PathBuf,
        #[source]
        source: Box<ProcessError>,
    },
    #[error("check {image}")]
    Check {
        image: PathBuf,
        #[source]
        source: Box<ProcessError>,
    },
    #[error("free space of {path}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not enough space in {dir} {step}: need {need}, {available} available")]
    NoSpace {
        dir: PathBuf,
        step: &'static str,
        need: String,
        available: String,
    },
}

/// The first [`SNIFF_LEN`] bytes of a file (fewer if it is shorter).
pub fn read_head(path: &Path) -> Result<Vec<u8>, BuildError> {
    let read_error = |source| BuildError::Read {
        path: path.to_owned(),
        source,
    };
    let mut head = Vec::with_capacity(SNIFF_LEN);
    File::open(path)
        .map_err(read_error)?
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(read_error)?;
    Ok(head)
}

/// Bytes available to root-less writers... and to root: `f_bavail`, so the reserved blocks are
/// not counted on.
pub fn available_space(dir: &Path) -> Result<u64, BuildError> {
    let fail = |source| BuildError::Statvfs {
        path: dir.to_owned(),
        source,
    };
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| fail(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stats` points to writable memory
    // of the right type; statvfs only writes to it.
    let result = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if result != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled in `stats`.
    let stats = unsafe { stats.assume_init() };
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Refuses to go on unless `dir` has `need` bytes free; `step` says what for.
pub fn ensure_space(dir: &Path, need: u64, step: &'static str) -> Result<(), BuildError> {
    let available = available_space(dir)?;
    if available < need {
        return Err(BuildError::NoSpace {
            dir: dir.to_owned(),
            step,
            need: crate::instance::images::human_bytes(need),
            available: crate::instance::images::human_bytes(available),
        });
    }
    Ok(())
}

/// Unpacks a tar archive (plain or xz) into `tree` as root: owners, modes, mtimes, hard links
/// and extended attributes as the archive has them. An entry with an absolute path or `..`
/// stops the unpacking.
pub fn unpack(archive: &Path, format: ImageFormat, tree: &Path) -> Result<(), BuildError> {
    let file = File::open(archive).map_err(|source| BuildError::Read {
        path: archive.to_owned(),
        source,
    })?;
    if format != ImageFormat::XzTarball {
        return unpack_tar(archive, &mut BufReader::new(file), tree);
    }
    // lzma-rs decodes from a reader into a writer; a pipe feeds its output to tar without
    // holding the whole tarball on disk or in memory.
    let (mut reader, writer) = io::pipe().map_err(|source| BuildError::Unpack {
        archive: archive.to_owned(),
        source,
    })?;
    std::thread::scope(|scope| {
        let decoder = scope.spawn(move || {
            let mut output = BufWriter::with_capacity(MIB as usize, writer);
            let decoded = lzma_rs::xz_decompress(&mut BufReader::new(file), &mut output);
            decoded.map_err(xz_error).and_then(|()| output.flush())
        });
        let unpacked = unpack_tar(archive, &mut reader, tree);
        // tar stops at its end marker; drain the padding after it so the decoder can finish
        // (and report a bad checksum at the very end of the stream). After a failure the pipe
        // is closed instead, which stops the decoder at its next write.
        if unpacked.is_ok() {
            let _ = io::copy(&mut reader, &mut io::sink());
        }
        drop(reader);
        let decoded = decoder
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the xz decoder panicked")));
        match (unpacked, decoded) {
            // A corrupt stream makes tar fail too; the decoder's error says why.
            (Err(BuildError::Unpack { .. }), Err(source))
                if source.kind() != io::ErrorKind::BrokenPipe =>
            {
                Err(BuildError::Decompress {
                    archive: archive.to_owned(),
                    source,
                })
            }
            (Err(e), _) => Err(e),
            (Ok(()), Err(source)) => Err(BuildError::Decompress {
                archive: archive.to_owned(),
                source,
            }),
            (Ok(()), Ok(())) => Ok(()),
        }
    })
}

/// lzma-rs's errors repeat their cause in their text; keep one line of it.
fn xz_error(error: lzma_rs::error::Error) -> io::Error {
    match error {
        lzma_rs::error::Error::IoError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

fn unpack_tar(archive: &Path, reader: &mut dyn Read, tree: &Path) -> Result<(), BuildError> {
    let fail = |source| BuildError::Unpack {
        archive: archive.to_owned(),
        source,
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(true);
    tar.set_overwrite(true);
    for entry in tar.entries().map_err(fail)? {
        interrupt::check().map_err(|source| BuildError::Stopped {
            archive: archive.to_owned(),
            source,
        })?;
        let mut entry = entry.map_err(fail)?;
        // A booted guest's /dev is a devtmpfs; the tar crate would write device nodes and
        // FIFOs as regular files, which is worse than leaving them out.
        if matches!(
            entry.header().entry_type(),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            continue;
        }
        let path = entry.path().map_err(fail)?.into_owned();
        let unsafe_entry = || BuildError::UnsafeEntry {
            archive: archive.to_owned(),
            entry: crate::instance::values::escaped(&path.to_string_lossy()),
        };
        // The tar crate would skip these silently; an archive that has them is not a root
        // tree we want to boot.
        if path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(unsafe_entry());
        }
        if !entry.unpack_in(tree).map_err(fail)? {
            return Err(unsafe_entry());
        }
    }
    Ok(())
}

/// Comments out the mounts of partitions other than the root in `<tree>/etc/fstab` (see
/// `guest_fstab`), in place (owner, mode and
/// attributes kept). Returns whether it changed anything; a tree without an fstab is left
/// alone. Neither `etc` nor `fstab` may be a link: a crafted tree must not make this edit a
/// file outside it.
pub fn disable_missing_partition_mounts(tree: &Path) -> Result<bool, BuildError> {
    let etc = tree.join("etc");
    let path = etc.join("fstab");
    let fail = |source| BuildError::EditFstab {
        path: path.clone(),
        source,
    };
    match fs::symlink_metadata(&etc) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(BuildError::FstabNotRegular { path }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(fail(e)),
    }
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(BuildError::FstabNotRegular { path }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(fail(e)),
    }
    let text = fs::read_to_string(&path).map_err(fail)?;
    let Some(changed) = guest_fstab::without_missing_partitions(&text) else {
        return Ok(false);
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(fail)?;
    file.write_all(changed.as_bytes()).map_err(fail)?;
    Ok(true)
}

/// What the files of `tree` take on an ext4 filesystem: each inode once (hard links share
/// one), regular files and directories rounded up to 4 KiB blocks.
pub fn tree_size(tree: &Path) -> Result<u64, BuildError> {
    const BLOCK: u64 = 4096;
    let fail = |path: &Path, source| BuildError::Measure {
        path: path.to_owned(),
        source,
    };
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![tree.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| fail(&dir, e))? {
            let entry = entry.map_err(|e| fail(&dir, e))?;
            let meta = entry.metadata().map_err(|e| fail(&entry.path(), e))?;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            if meta.is_dir() {
                total += BLOCK;
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len().div_ceil(BLOCK) * BLOCK;
            } else if meta.is_symlink() && meta.len() >= 60 {
                // Shorter link targets live inside the inode.
                total += BLOCK;
            }
        }
    }
    Ok(total)
}

/// `mkfs.ext4 -d`: an ext4 image of `size` bytes at `image` holding `tree`, labelled
/// `cloudimg-rootfs` (the name Ubuntu's fstab mounts `/` by); then `e2fsck -fn` must find it
/// clean.
pub fn make_ext4(tree: &Path, image: &Path, size: u64) -> Result<(), BuildError> {
    let (tree_arg, image_arg) = (tree.to_string_lossy(), image.to_string_lossy());
    let size_arg = format!("{}M", size.div_ceil(MIB));
    process::run_checked(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            ROOTFS_LABEL,
            "-d",
            &tree_arg,
            &image_arg,
            &size_arg,
        ],
    )
    .map_err(|source| BuildError::Mkfs {
        image: image.to_owned(),
        tree: tree.to_owned(),
        source: Box::new(source),
    })?;
    check_ext4(image)
}

/// `e2fsck -fn`: the image is a clean ext4 filesystem (read only; nothing is repaired).
pub fn check_ext4(image: &Path) -> Result<(), BuildError> {
    let image_arg = image.to_string_lossy();
    process::run_checked("e2fsck", &["-f", "-n", &image_arg]).map_err(|source| {
        BuildError::Check {
            image: image.to_owned(),
            source: Box::new(source),
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_size_counts_hard_links_once_and_rounds_to_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        fs::create_dir(tree.join("etc")).unwrap();
        fs::write(tree.join("etc/a"), vec![1u8; 5000]).unwrap();
        fs::hard_link(tree.join("etc/a"), tree.join("b")).unwrap();
        std::os::unix::fs::symlink("a", tree.join("etc/short")).unwrap();
        // The etc dir, then two blocks for the 5000-byte file, counted once.
        assert_eq!(tree_size(tree).unwrap(), 4096 + 8192);
    }

    #[test]
    fn partition_mounts_are_disabled_in_place_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        assert!(
            !disable_missing_partition_mounts(tree).unwrap(),
            "no etc: nothing to do"
        );
        fs::create_dir(tree.join("etc")).unwrap();
        let fstab =
            "LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=UEFI /boot/efi vfat umask=0077 0 1\n";
        fs::write(tree.join("etc/fstab"), fstab).unwrap();
        assert!(disable_missing_partition_mounts(tree).unwrap());
        let text = fs::read_to_string(tree.join("etc/fstab")).unwrap();
        assert!(text.contains("#LABEL=UEFI /boot/efi"), "{text}");
        assert!(!disable_missing_partition_mounts(tree).unwrap());

        let outside = dir.path().join("outside");
        fs::write(&outside, fstab).unwrap();
        fs::remove_file(tree.join("etc/fstab")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("etc/fstab")).unwrap();
        assert!(matches!(
            disable_missing_partition_mounts(tree),
            Err(BuildError::FstabNotRegular { .. })
        ));
        assert_eq!(fs::read_to_string(&outside).unwrap(), fstab);
    }

    #[test]
    fn free_space_is_reported_and_a_shortage_names_need_and_available() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_space(dir.path()).unwrap() > 0);
        let err = ensure_space(dir.path(), u64::MAX, "for the download").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("not enough space in "), "{text}");
        assert!(text.contains("for the download: need "), "{text}");
        assert!(text.ends_with(" available"), "{text}");
    }
}
