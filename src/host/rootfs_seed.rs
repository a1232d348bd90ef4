//! The cloud-init seed inside an instance's rootfs copy: `/var/lib/cloud/seed/nocloud/`, where
//! cloud-init's NoCloud datasource looks before any device, written in user space with
//! e2fsprogs' `debugfs` (no mount, no loop device), so guests whose kernel cannot read the ISO
//! seed image (Firecracker's CI kernels have no iso9660) still get their user, keys and address.
//! debugfs exits 0 even when a command fails, so nothing here trusts its status: every file is
//! read back from the image and compared byte for byte, with its mode and owner.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::process::ProcessError;
use crate::render::artifacts::RootfsSeedFile as SeedFile;

/// Where cloud-init's NoCloud datasource reads a seed inside the guest.
pub const SEED_DIR: &str = "/var/lib/cloud/seed/nocloud";

/// The program that edits the image; part of e2fsprogs on every Debian and Ubuntu host.
const DEBUGFS: &str = "debugfs";

/// Directories from the root down to the seed dir, with the mode each gets when this creates
/// it. cloud-init runs as root and reads its seed as root, so the seed's own directories are
/// root-only; the ones above keep what a distribution gives them.
const SEED_PATH: [(&str, u32); 5] = [
    ("/var", 0o755),
    ("/var/lib", 0o755),
    ("/var/lib/cloud", 0o755),
    ("/var/lib/cloud/seed", 0o700),
    (SEED_DIR, 0o700),
];

#[derive(Debug, thiserror::Error)]
pub enum RootfsSeedError {
    #[error("read the superblock of {path}")]
    Superblock { path: PathBuf, source: io::Error },
    #[error(
        "rootfs {path} needs its ext4 journal replayed (was it copied from a running VM?): run e2fsck -fy on the base image first"
    )]
    NeedsRecovery { path: PathBuf },
    #[error("{path}: {what}")]
    Layout { path: PathBuf, what: String },
    #[error("write the cloud-init seed into {path} with debugfs")]
    Debugfs {
        path: PathBuf,
        #[source]
        source: ProcessError,
    },
    #[error("the cloud-init seed in {path} does not read back as written: {what}")]
    ReadBack { path: PathBuf, what: String },
}

/// What the superblock says about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilesystemKind {
    /// ext2/3/4 (one magic for all three; debugfs writes to each).
    Ext4 {
        needs_recovery: bool,
    },
    Other,
}

const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT_MAGIC: u16 = 0xEF53;
/// `s_feature_incompat` bit: the journal holds transactions not yet applied.
const INCOMPAT_RECOVER: u32 = 0x0004;

/// Reads the ext superblock of `image`.
pub fn filesystem_kind(image: &Path) -> Result<FilesystemKind, RootfsSeedError> {
    let fail = |source| RootfsSeedError::Superblock {
        path: image.to_owned(),
        source,
    };
    let mut file = File::open(image).map_err(fail)?;
    let mut superblock = [0u8; 128];
    file.seek(SeekFrom::Start(SUPERBLOCK_OFFSET))
        .map_err(fail)?;
    match file.read_exact(&mut superblock) {
        Ok(()) => Ok(kind_of_superblock(&superblock)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(FilesystemKind::Other),
        Err(e) => Err(fail(e)),
    }
}

/// Free blocks the superblock counts (`s_free_blocks_count_lo`: an image of up to 16 TiB of
/// 4 KiB blocks needs no more).
fn free_blocks(superblock: &[u8; 128]) -> u32 {
    u32::from_le_bytes([
        superblock[12],
        superblock[13],
        superblock[14],
        superblock[15],
    ])
}

/// " (its filesystem is full ...)" when the image has (almost) no free blocks: debugfs then
/// writes nothing and says so only on its own stderr, and a read-back mismatch alone would
/// leave the user guessing.
fn full_hint(image: &Path) -> &'static str {
    let mut superblock = [0u8; 128];
    let read = File::open(image).and_then(|mut file| {
        file.seek(SeekFrom::Start(SUPERBLOCK_OFFSET))?;
        file.read_exact(&mut superblock)
    });
    if read.is_ok()
        && kind_of_superblock(&superblock) != FilesystemKind::Other
        && free_blocks(&superblock) < 64
    {
        " (its filesystem is full: free some space in it, or grow it with resize2fs, first)"
    } else {
        ""
    }
}

fn kind_of_superblock(superblock: &[u8; 128]) -> FilesystemKind {
    let magic = u16::from_le_bytes([superblock[56], superblock[57]]);
    if magic != EXT_MAGIC {
        return FilesystemKind::Other;
    }
    let incompat = u32::from_le_bytes([
        superblock[96],
        superblock[97],
        superblock[98],
        superblock[99],
    ]);
    FilesystemKind::Ext4 {
        needs_recovery: incompat & INCOMPAT_RECOVER != 0,
    }
}

/// One entry of `debugfs ls -p`: `/inode/mode/uid/gid/name/size/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    mode: u32,
    uid: u32,
    gid: u32,
}

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;

fn parse_listing(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.trim().split('/').collect();
            // ["", inode, mode, uid, gid, name, size, ""]
            if fields.len() < 7 {
                return None;
            }
            Some(Entry {
                mode: u32::from_str_radix(fields[2], 8).ok()?,
                uid: fields[3].parse().ok()?,
                gid: fields[4].parse().ok()?,
                name: fields[5].to_owned(),
            })
        })
        .filter(|e| e.name != "." && e.name != "..")
        .collect()
}

/// Runs debugfs on `image` with `args` (and a command script on stdin when given); relative
/// host paths in the script resolve against `cwd`.
fn debugfs(
    image: &Path,
    cwd: &Path,
    args: &[&str],
    script: Option<&str>,
) -> Result<Vec<u8>, RootfsSeedError> {
    use std::io::Write;
    let image_arg = image.to_string_lossy();
    let mut all: Vec<&str> = args.to_vec();
    all.push(&image_arg);
    let fail = |source| RootfsSeedError::Debugfs {
        path: image.to_owned(),
        source,
    };
    let spawn = |source| {
        fail(ProcessError::Spawn {
            program: DEBUGFS.to_owned(),
            source,
        })
    };
    let mut command = Command::new(DEBUGFS);
    command
        .args(&all)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(cwd)
        // Its own process group: a Ctrl-C reaches fireclaw alone, and the write finishes.
        .process_group(0);
    let mut child = command.spawn().map_err(spawn)?;
    let written = match (child.stdin.take(), script) {
        (Some(mut stdin), Some(script)) => stdin.write_all(script.as_bytes()),
        _ => Ok(()),
    };
    let output = child.wait_with_output().map_err(spawn)?;
    written.map_err(spawn)?;
    if !output.status.success() {
        return Err(fail(super::process::failed(DEBUGFS, &all, &output, &[])));
    }
    Ok(output.stdout)
}

/// The entries of `dir` in the image, or `None` when it does not exist.
fn list(image: &Path, dir: &str) -> Result<Option<Vec<Entry>>, RootfsSeedError> {
    let request = format!("ls -p {dir}");
    let stdout = debugfs(image, Path::new("/"), &["-R", &request], None)?;
    let text = String::from_utf8_lossy(&stdout);
    // A missing dir prints nothing on stdout (the error goes to stderr, status 0); an existing
    // one lists at least `.` and `..`.
    if !text.lines().any(|l| l.contains("/./")) {
        return Ok(None);
    }
    Ok(Some(parse_listing(&text)))
}

const S_IFLNK: u32 = 0o120_000;

/// What a guest needs on its root to boot into a VM fireclaw can reach, each with the paths
/// any one of which will do (merged `/usr` or not).
const BOOT_PARTS: [(&str, &[&str]); 3] = [
    (
        "init (/sbin/init or systemd)",
        &[
            "/usr/sbin/init",
            "/sbin/init",
            "/usr/lib/systemd/systemd",
            "/lib/systemd/systemd",
        ],
    ),
    ("cloud-init", &["/usr/bin/cloud-init", "/bin/cloud-init"]),
    ("SSH server (sshd)", &["/usr/sbin/sshd", "/sbin/sshd"]),
];

/// What of an init, cloud-init and sshd the ext4 `image` lacks (read with debugfs, no mount),
/// by name: a rootfs without them boots to nothing fireclaw can reach, which setup would
/// otherwise learn only after its whole SSH wait.
pub fn missing_boot_parts(image: &Path) -> Result<Vec<&'static str>, RootfsSeedError> {
    let mut listings: std::collections::HashMap<&str, Vec<Entry>> = Default::default();
    let mut missing = Vec::new();
    for (part, paths) in BOOT_PARTS {
        let mut found = false;
        for path in paths {
            let (dir, name) = name_in(path);
            if !listings.contains_key(dir) {
                let entries = list(image, dir)?.unwrap_or_default();
                listings.insert(dir, entries);
            }
            found = listings[dir].iter().any(|entry| {
                entry.name == name && matches!(entry.mode & S_IFMT, S_IFREG | S_IFLNK)
            });
            if found {
                break;
            }
        }
        if !found {
            missing.push(part);
        }
    }
    Ok(missing)
}

/// Whether the image's `/usr/bin` holds each of `programs` (a file or a link): a base that
/// already has them needs no `packages:` in its user-data, whose `apt-get update` a guest
/// without a registry would wait out at first boot.
pub fn has_programs(image: &Path, programs: &[&str]) -> Result<bool, RootfsSeedError> {
    let Some(entries) = list(image, "/usr/bin")? else {
        return Ok(false);
    };
    Ok(programs.iter().all(|program| {
        entries
            .iter()
            .any(|entry| entry.name == *program && matches!(entry.mode & S_IFMT, S_IFREG | S_IFLNK))
    }))
}

fn name_in(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("/", path),
    }
}

/// Writes `files` into the seed dir of the ext4 `image`, replacing whatever seed was there, and
/// reads everything back. The files' host copies must sit under `host_dir`: debugfs is given
/// their paths relative to it, plainly named, so its command parser never sees a host path
/// that could need quoting.
pub fn write_seed(
    image: &Path,
    host_dir: &Path,
    files: &[SeedFile],
) -> Result<(), RootfsSeedError> {
    let layout = |what: String| RootfsSeedError::Layout {
        path: image.to_owned(),
        what,
    };
    if let FilesystemKind::Ext4 {
        needs_recovery: true,
    } = filesystem_kind(image)?
    {
        return Err(RootfsSeedError::NeedsRecovery {
            path: image.to_owned(),
        });
    }
    let mut script = String::new();
    let mut missing_above = false;
    for (dir, mode) in SEED_PATH {
        let (parent, name) = name_in(dir);
        let existing = if missing_above {
            None
        } else {
            list(image, parent)?
                .ok_or_else(|| layout(format!("{parent} is missing from the image")))?
                .into_iter()
                .find(|e| e.name == name)
        };
        match existing {
            Some(entry) if entry.mode & S_IFMT == S_IFDIR => {}
            Some(_) => return Err(layout(format!("{dir} in the image is not a directory"))),
            None => {
                missing_above = true;
                script.push_str(&format!("mkdir {dir}\n"));
                script.push_str(&format!("sif {dir} mode 0{:o}\n", S_IFDIR | mode));
                script.push_str(&format!("sif {dir} uid 0\nsif {dir} gid 0\n"));
            }
        }
    }
    // Whatever seed the base image carried (a rootfs made from an old instance, say) goes: a
    // stale file next to ours would be read too.
    if !missing_above {
        for entry in list(image, SEED_DIR)?.unwrap_or_default() {
            if entry.mode & S_IFMT == S_IFDIR {
                return Err(layout(format!(
                    "{SEED_DIR}/{} in the image is a directory; cloud-init's seed dir holds files only",
                    entry.name
                )));
            }
            script.push_str(&format!("rm {SEED_DIR}/{}\n", entry.name));
        }
        // Existing seed dirs become root-only too.
        for (dir, mode) in &SEED_PATH[3..] {
            script.push_str(&format!("sif {dir} mode 0{:o}\n", S_IFDIR | mode));
        }
    }
    for file in files {
        let local = file
            .host_path
            .strip_prefix(host_dir)
            .ok()
            .and_then(Path::to_str)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            .ok_or_else(|| {
                layout(format!(
                    "seed file {} must be a plainly named file under {}",
                    file.host_path.display(),
                    host_dir.display()
                ))
            })?;
        let target = format!("{SEED_DIR}/{}", file.name);
        script.push_str(&format!("write {local} {target}\n"));
        script.push_str(&format!("sif {target} mode 0{:o}\n", S_IFREG | file.mode));
        script.push_str(&format!("sif {target} uid 0\nsif {target} gid 0\n"));
    }
    debugfs(image, host_dir, &["-w", "-f", "-"], Some(&script))?;
    verify(image, files)
}

/// A file of the guest's own, not the seed's, written into an ext4 image (`import` writes the
/// authorized key and a cloud-init drop-in this way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// The host copy to write, plainly named under the `host_dir` given with it.
    pub host_path: PathBuf,
    /// Where it goes in the guest: an absolute path whose directory exists in the image.
    pub target: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The bytes of the file at `path` in the ext4 `image`, or `None` when it has none there.
pub fn read_file(image: &Path, path: &str) -> Result<Option<Vec<u8>>, RootfsSeedError> {
    let (parent, name) = name_in(path);
    let exists = list(image, parent)?
        .unwrap_or_default()
        .into_iter()
        .any(|entry| entry.name == name && entry.mode & S_IFMT == S_IFREG);
    if !exists {
        return Ok(None);
    }
    let request = format!("cat {path}");
    debugfs(image, Path::new("/"), &["-R", &request], None).map(Some)
}

/// The uid and gid of `user` in the image's `/etc/passwd`, or `None` when it has no such user.
pub fn user_ids(image: &Path, user: &str) -> Result<Option<(u32, u32)>, RootfsSeedError> {
    let Some(passwd) = read_file(image, "/etc/passwd")? else {
        return Ok(None);
    };
    Ok(String::from_utf8_lossy(&passwd).lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == user)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    }))
}

/// Writes `files` into the ext4 `image` (each replacing what was there, with its owner and
/// mode) and reads each back byte for byte: debugfs exits 0 even when a command failed.
pub fn write_guest_files(
    image: &Path,
    host_dir: &Path,
    files: &[GuestFile],
) -> Result<(), RootfsSeedError> {
    let layout = |what: String| RootfsSeedError::Layout {
        path: image.to_owned(),
        what,
    };
    let mut script = String::new();
    for file in files {
        let local = file
            .host_path
            .strip_prefix(host_dir)
            .ok()
            .and_then(Path::to_str)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            .ok_or_else(|| {
                layout(format!(
                    "{} is not a plainly named file",
                    file.host_path.display()
                ))
            })?;
        let target = &file.target;
        if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            return Err(layout(format!("{target} is not a plain absolute path")));
        }
        let (parent, name) = name_in(target);
        let entries = list(image, parent)?
            .ok_or_else(|| layout(format!("{parent} is missing from the image")))?;
        match entries.iter().find(|e| e.name == name) {
            Some(entry) if entry.mode & S_IFMT == S_IFDIR => {
                return Err(layout(format!("{target} in the image is a directory")));
            }
            Some(_) => script.push_str(&format!("rm {target}\n")),
            None => {}
        }
        script.push_str(&format!("write {local} {target}\n"));
        script.push_str(&format!("sif {target} mode 0{:o}\n", S_IFREG | file.mode));
        script.push_str(&format!(
            "sif {target} uid {}\nsif {target} gid {}\n",
            file.uid, file.gid
        ));
    }
    debugfs(image, host_dir, &["-w", "-f", "-"], Some(&script))?;
    for file in files {
        let wrong = |what: String| RootfsSeedError::ReadBack {
            path: image.to_owned(),
            what,
        };
        let (parent, name) = name_in(&file.target);
        let entry = list(image, parent)?
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| wrong(format!("{} is missing{}", file.target, full_hint(image))))?;
        if entry.mode != S_IFREG | file.mode || entry.uid != file.uid || entry.gid != file.gid {
            return Err(wrong(format!(
                "{} has mode {:o} and owner {}:{}",
                file.target, entry.mode, entry.uid, entry.gid
            )));
        }
        let written = std::fs::read(&file.host_path).map_err(|e| wrong(e.to_string()))?;
        if read_file(image, &file.target)?.as_deref() != Some(written.as_slice()) {
            return Err(wrong(format!(
                "{} differs from what was written{}",
                file.target,
                full_hint(image)
            )));
        }
    }
    Ok(())
}

/// Reads the seed back: exactly these files, root-owned, with their modes and bytes, in
/// root-only directories.
fn verify(image: &Path, files: &[SeedFile]) -> Result<(), RootfsSeedError> {
    let wrong = |what: String| RootfsSeedError::ReadBack {
        path: image.to_owned(),
        what,
    };
    for (dir, mode) in &SEED_PATH[3..] {
        let (parent, name) = name_in(dir);
        let entry = list(image, parent)?
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| wrong(format!("{dir} is missing")))?;
        if entry.mode != S_IFDIR | mode || entry.uid != 0 || entry.gid != 0 {
            return Err(wrong(format!(
                "{dir} has mode {:o} and owner {}:{}",
                entry.mode, entry.uid, entry.gid
            )));
        }
    }
    let entries = list(image, SEED_DIR)?.unwrap_or_default();
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    expected.sort_unstable();
    if names != expected {
        return Err(wrong(format!(
            "{SEED_DIR} holds [{}], expected [{}]",
            names.join(", "),
            expected.join(", ")
        )));
    }
    for file in files {
        let target = format!("{SEED_DIR}/{}", file.name);
        let entry = entries
            .iter()
            .find(|e| e.name == file.name)
            .ok_or_else(|| wrong(format!("{target} is missing")))?;
        if entry.mode != S_IFREG | file.mode || entry.uid != 0 || entry.gid != 0 {
            return Err(wrong(format!(
                "{target} has mode {:o} and owner {}:{}",
                entry.mode, entry.uid, entry.gid
            )));
        }
        let request = format!("cat {target}");
        if debugfs(image, Path::new("/"), &["-R", &request], None)? != file.contents {
            return Err(wrong(format!(
                "{target} differs from what was written{}",
                full_hint(image)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ext4 image made by mke2fs from `tree` (as `fireclaw image` and Firecracker's guide
    /// make rootfs images), in `dir`.
    fn ext4_from(dir: &Path, tree: &Path) -> PathBuf {
        let image = dir.join("rootfs.ext4");
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(tree)
            .arg(&image)
            .arg("32M")
            .status()
            .unwrap();
        assert!(status.success());
        image
    }

    #[test]
    fn a_rootfs_without_an_init_cloud_init_or_sshd_is_named_for_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(tree.join("usr/lib/systemd")).unwrap();
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        let empty = ext4_from(dir.path(), &tree);
        assert_eq!(
            missing_boot_parts(&empty).unwrap(),
            [
                "init (/sbin/init or systemd)",
                "cloud-init",
                "SSH server (sshd)"
            ]
        );
        std::fs::remove_file(&empty).unwrap();
        // A merged /usr: init a link to systemd, cloud-init there, no sshd.
        std::fs::write(tree.join("usr/lib/systemd/systemd"), "").unwrap();
        std::os::unix::fs::symlink("../lib/systemd/systemd", tree.join("usr/sbin/init")).unwrap();
        std::fs::write(tree.join("usr/bin/cloud-init"), "").unwrap();
        let partial = ext4_from(dir.path(), &tree);
        assert_eq!(missing_boot_parts(&partial).unwrap(), ["SSH server (sshd)"]);
        std::fs::remove_file(&partial).unwrap();
        std::fs::write(tree.join("usr/sbin/sshd"), "").unwrap();
        let whole = ext4_from(dir.path(), &tree);
        assert!(missing_boot_parts(&whole).unwrap().is_empty());
    }

    fn seed_files(dir: &Path, user_data: &[u8]) -> Vec<SeedFile> {
        let config = dir.join("config");
        std::fs::create_dir_all(&config).unwrap();
        [
            ("meta-data", b"instance-id: t\n".as_slice()),
            ("user-data", user_data),
            ("network-config", b"version: 2\n".as_slice()),
        ]
        .into_iter()
        .map(|(name, contents)| {
            let host_path = config.join(name);
            std::fs::write(&host_path, contents).unwrap();
            SeedFile {
                name: name.into(),
                host_path,
                contents: contents.to_vec(),
                mode: 0o600,
            }
        })
        .collect()
    }

    fn e2fsck_clean(image: &Path) {
        let output = Command::new("e2fsck")
            .arg("-fn")
            .arg(image)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    fn cat(image: &Path, path: &str) -> Vec<u8> {
        debugfs(image, Path::new("/"), &["-R", &format!("cat {path}")], None).unwrap()
    }

    #[test]
    fn programs_in_usr_bin_are_found_as_files_or_links_and_nothing_else_counts() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/bin/curl-dir")).unwrap();
        std::fs::write(tree.join("usr/bin/jq"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("jq", tree.join("usr/bin/curl")).unwrap();
        let image = ext4_from(dir.path(), &tree);
        assert!(has_programs(&image, &["jq", "curl"]).unwrap());
        assert!(!has_programs(&image, &["jq", "curl-dir"]).unwrap());
        assert!(!has_programs(&image, &["jq", "wget"]).unwrap());
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::remove_file(&image).unwrap();
        let bare = ext4_from(dir.path(), &empty);
        assert!(!has_programs(&bare, &["jq"]).unwrap());
    }

    #[test]
    fn a_seed_is_written_into_a_rootfs_without_one_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        let image = ext4_from(dir.path(), &tree);
        let files = seed_files(dir.path(), b"#cloud-config\nsecret: 1\n");
        write_seed(&image, dir.path(), &files).unwrap();
        assert_eq!(
            cat(&image, "/var/lib/cloud/seed/nocloud/user-data"),
            files[1].contents
        );
        let seed = list(&image, "/var/lib/cloud").unwrap().unwrap();
        assert_eq!(seed[0].name, "seed");
        assert_eq!(seed[0].mode, 0o040_700);
        let made = list(&image, "/var/lib").unwrap().unwrap();
        assert_eq!(made[0].mode, 0o040_755, "{made:?}");
        e2fsck_clean(&image);
    }

    #[test]
    fn an_old_seed_in_the_base_is_replaced_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let old = tree.join("var/lib/cloud/seed/nocloud");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("user-data"), "#cloud-config\nold: true\n").unwrap();
        std::fs::write(old.join("vendor-data"), "stale\n").unwrap();
        let image = ext4_from(dir.path(), &tree);
        let files = seed_files(dir.path(), b"#cloud-config\nnew: true\n");
        write_seed(&image, dir.path(), &files).unwrap();
        let mut names: Vec<String> = list(&image, SEED_DIR)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| {
                assert_eq!((e.mode, e.uid, e.gid), (0o100_600, 0, 0), "{e:?}");
                e.name
            })
            .collect();
        names.sort();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        assert_eq!(
            cat(&image, "/var/lib/cloud/seed/nocloud/user-data"),
            b"#cloud-config\nnew: true\n"
        );
        // The seed dirs the base made 0755 become root-only.
        let seed = list(&image, "/var/lib/cloud/seed").unwrap().unwrap();
        assert_eq!(seed[0].mode, 0o040_700);
        e2fsck_clean(&image);
    }

    #[test]
    fn a_directory_in_the_seed_dir_is_refused_and_the_image_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("var/lib/cloud/seed/nocloud/odd")).unwrap();
        let image = ext4_from(dir.path(), &tree);
        let before = std::fs::read(&image).unwrap();
        let files = seed_files(dir.path(), b"x");
        let error = write_seed(&image, dir.path(), &files).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("nocloud/odd in the image is a directory"),
            "{error}"
        );
        assert!(std::fs::read(&image).unwrap() == before);
    }

    #[test]
    fn a_host_file_outside_the_host_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let image = ext4_from(dir.path(), &tree);
        let mut files = seed_files(dir.path(), b"x");
        files[0].host_path = "/etc/hostname".into();
        let error = write_seed(&image, dir.path(), &files).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("must be a plainly named file under"),
            "{error}"
        );
    }

    #[test]
    fn a_write_that_debugfs_silently_skips_is_caught_by_the_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let image = ext4_from(dir.path(), &tree);
        let files = seed_files(dir.path(), b"x");
        // debugfs reports a missing source file and exits 0.
        std::fs::remove_file(&files[2].host_path).unwrap();
        let error = write_seed(&image, dir.path(), &files).unwrap_err();
        assert!(matches!(error, RootfsSeedError::ReadBack { .. }), "{error}");
    }

    #[test]
    fn a_full_filesystem_is_named_beside_a_read_back_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let image = ext4_from(dir.path(), &tree);
        assert_eq!(full_hint(&image), "");
        let mut bytes = std::fs::read(&image).unwrap();
        bytes[1024 + 12..1024 + 16].copy_from_slice(&0u32.to_le_bytes());
        std::fs::write(&image, &bytes).unwrap();
        assert!(full_hint(&image).contains("its filesystem is full"));
        assert_eq!(full_hint(&dir.path().join("tree")), "");
    }

    #[test]
    fn a_rootfs_with_a_pending_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let image = ext4_from(dir.path(), &tree);
        let mut bytes = std::fs::read(&image).unwrap();
        bytes[1024 + 96] |= 0x04;
        std::fs::write(&image, &bytes).unwrap();
        let error = write_seed(&image, dir.path(), &seed_files(dir.path(), b"x")).unwrap_err();
        assert!(
            matches!(error, RootfsSeedError::NeedsRecovery { .. }),
            "{error}"
        );
        assert_eq!(
            filesystem_kind(&dir.path().join("tree"))
                .map_err(|e| e.to_string())
                .unwrap_err(),
            format!(
                "read the superblock of {}",
                dir.path().join("tree").display()
            )
        );
    }

    #[test]
    fn listings_parse_and_skip_dot_entries() {
        let text = "/15/040700/0/0/.//\n/13/040755/0/0/..//\n/16/100600/0/0/user-data/7/\n\n";
        assert_eq!(
            parse_listing(text),
            vec![Entry {
                name: "user-data".into(),
                mode: 0o100_600,
                uid: 0,
                gid: 0
            }]
        );
    }

    #[test]
    fn superblocks_tell_ext4_and_pending_journals_apart() {
        let mut superblock = [0u8; 128];
        assert_eq!(kind_of_superblock(&superblock), FilesystemKind::Other);
        superblock[56..58].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        assert_eq!(
            kind_of_superblock(&superblock),
            FilesystemKind::Ext4 {
                needs_recovery: false
            }
        );
        superblock[96] = 0x04 | 0x40;
        assert_eq!(
            kind_of_superblock(&superblock),
            FilesystemKind::Ext4 {
                needs_recovery: true
            }
        );
    }

    #[test]
    fn parents_split_at_the_last_slash() {
        assert_eq!(name_in("/var"), ("/", "var"));
        assert_eq!(name_in(SEED_DIR), ("/var/lib/cloud/seed", "nocloud"));
    }
}
