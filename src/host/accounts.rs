//! System accounts on this host: reading `/etc/passwd` and `/etc/group`, and creating and
//! removing a VMM's account and group with shadow's own `groupadd`/`useradd`/`userdel`/
//! `groupdel` (which take shadow's locks, so a concurrent `adduser` cannot corrupt the files).
//! Also the ownership and mode changes that hand an instance's files to its VMM, done through
//! a descriptor opened with `O_NOFOLLOW`, so a link planted in a VMM-writable dir is never
//! followed by root.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::host::process::{ProcessError, run_checked};
use crate::instance::confinement::{VMM_ID_COUNT, VMM_ID_FIRST, VmmAccount, in_vmm_range};

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("create account {name}")]
    Create { name: String, source: ProcessError },
    #[error("remove account {name}")]
    Remove { name: String, source: ProcessError },
    #[error(
        "fireclaw's VMM ids ({VMM_ID_FIRST}–{}) are all taken; remove accounts named fcvm-* that no instance owns (fireclaw doctor names them)",
        VMM_ID_FIRST + VMM_ID_COUNT - 1
    )]
    RangeFull,
    #[error(
        "an account or group named {name} already exists and is not this instance's; remove it (userdel {name}; groupdel {name}) or choose another instance id"
    )]
    NameTaken { name: String },
    #[error("hand {path} to the VMM")]
    Chown {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is a link, has a second name (hard link) or is not a {expected}; refusing to change it"
    )]
    NotPlain {
        path: PathBuf,
        expected: &'static str,
    },
}

/// One line of `/etc/passwd` or `/etc/group`: name and numeric id (uid, or gid for a group),
/// and for a user its primary gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub id: u32,
    pub gid: u32,
}

/// Parses passwd or group text; malformed lines are skipped, as the C library does.
pub fn parse_entries(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let id = fields.next()?.parse().ok()?;
            let gid = fields.next().and_then(|g| g.parse().ok()).unwrap_or(id);
            (!name.is_empty()).then(|| Entry {
                name: name.to_owned(),
                id,
                gid,
            })
        })
        .collect()
}

fn read_entries(path: &str) -> Result<Vec<Entry>, AccountError> {
    std::fs::read_to_string(path)
        .map(|text| parse_entries(&text))
        .map_err(|source| AccountError::Read {
            path: path.into(),
            source,
        })
}

pub fn users() -> Result<Vec<Entry>, AccountError> {
    read_entries(PASSWD)
}

pub fn groups() -> Result<Vec<Entry>, AccountError> {
    read_entries(GROUP)
}

/// The gid of group `name`, if the host has it.
pub fn group_id(name: &str) -> Result<Option<u32>, AccountError> {
    Ok(groups()?.into_iter().find(|g| g.name == name).map(|g| g.id))
}

/// The lowest id in fireclaw's range at or above `floor` that no user or group has and that is
/// not in `reserved` (ids recorded by instances whose files may still exist).
pub fn free_id(users: &[Entry], groups: &[Entry], reserved: &[u32], floor: u32) -> Option<u32> {
    let start = floor.max(VMM_ID_FIRST);
    (start..VMM_ID_FIRST + VMM_ID_COUNT)
        .find(|id| {
            !users.iter().any(|u| u.id == *id || u.gid == *id)
                && !groups.iter().any(|g| g.id == *id)
                && !reserved.contains(id)
        })
        .or_else(|| (start > VMM_ID_FIRST).then(|| free_id(users, groups, reserved, 0))?)
}

/// Users in fireclaw's id range with fireclaw's name prefix: the VMM accounts on this host.
pub fn vmm_range_users() -> Result<Vec<Entry>, AccountError> {
    Ok(users()?.into_iter().filter(is_vmm_account).collect())
}

/// Groups that look like a VMM's but have no user of that name: what a setup killed between
/// `groupadd` and `useradd` leaves.
pub fn vmm_range_lone_groups() -> Result<Vec<Entry>, AccountError> {
    let users = users()?;
    Ok(groups()?
        .into_iter()
        .filter(|g| is_vmm_account(g) && !users.iter().any(|u| u.name == g.name))
        .collect())
}

fn is_vmm_account(entry: &Entry) -> bool {
    in_vmm_range(entry.id)
        && entry
            .name
            .starts_with(crate::instance::confinement::ACCOUNT_PREFIX)
}

/// Whether the system's name service (`/etc/passwd`, and LDAP, sssd or userdb where the host
/// uses them) knows `id` as a uid or a gid.
pub fn id_known_to_nss(id: u32) -> bool {
    // SAFETY: getpwuid and getgrgid return a pointer into static storage or NULL; only the
    // NULL test is made, before any other call could reuse that storage.
    unsafe { !libc::getpwuid(id).is_null() || !libc::getgrgid(id).is_null() }
}

/// Creates the group and then the user of `account`: a system account with no home, no login
/// shell and no lastlog entry (a high uid would make `useradd` grow `/var/log/lastlog` into a
/// huge sparse file). A failed `useradd` removes the group again.
pub fn create(account: &VmmAccount, comment: &str) -> Result<(), AccountError> {
    let fail = |source| AccountError::Create {
        name: account.name.clone(),
        source,
    };
    let users = users()?;
    let groups = groups()?;
    let user_exists = users.iter().any(|u| u.name == account.name);
    // A lone group of this name in the range is ours, left by a setup killed before useradd.
    if !user_exists
        && groups
            .iter()
            .any(|g| g.name == account.name && is_vmm_account(g))
    {
        run_checked("groupdel", &[&account.name]).map_err(fail)?;
    } else if user_exists || groups.iter().any(|g| g.name == account.name) {
        return Err(AccountError::NameTaken {
            name: account.name.clone(),
        });
    }
    let gid = account.gid.to_string();
    let uid = account.uid.to_string();
    run_checked("groupadd", &["--system", "--gid", &gid, &account.name]).map_err(fail)?;
    let created = run_checked(
        "useradd",
        &[
            "--system",
            "--no-create-home",
            "--no-log-init",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--uid",
            &uid,
            "--gid",
            &gid,
            "--comment",
            comment,
            &account.name,
        ],
    );
    if let Err(source) = created {
        let _ = run_checked("groupdel", &[&account.name]);
        return Err(fail(source));
    }
    Ok(())
}

/// Removes the user and group `name` when they exist and are in fireclaw's id range; absent is
/// fine, and an account or group of that name outside the range (not fireclaw's) is left alone.
pub fn remove(name: &str) -> Result<(), AccountError> {
    let fail = |source| AccountError::Remove {
        name: name.to_owned(),
        source,
    };
    if users()?
        .iter()
        .any(|u| u.name == name && in_vmm_range(u.id))
    {
        run_checked("userdel", &[name]).map_err(fail)?;
    }
    if groups()?
        .iter()
        .any(|g| g.name == name && in_vmm_range(g.id))
    {
        run_checked("groupdel", &[name]).map_err(fail)?;
    }
    Ok(())
}

/// Opens `path` without following a link in its last component (a plain file or dir only).
pub fn open_no_follow(path: &Path, dir: bool) -> std::io::Result<std::fs::File> {
    let mut flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
}

/// Sets owner and mode of `path` through a descriptor opened with `O_NOFOLLOW`: a link (or a
/// file where a dir belongs) is refused, never followed.
pub fn set_owner_and_mode(
    path: &Path,
    dir: bool,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<(), AccountError> {
    let fail = |source| AccountError::Chown {
        path: path.to_owned(),
        source,
    };
    let file = match open_no_follow(path, dir) {
        Ok(file) => file,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Err(AccountError::NotPlain {
                path: path.to_owned(),
                expected: if dir { "dir" } else { "file" },
            });
        }
        Err(e) => return Err(fail(e)),
    };
    let metadata = file.metadata().map_err(fail)?;
    // A second name for the file (a hard link the VMM made to something of root's) would hand
    // that to the VMM too.
    if !dir && (!metadata.is_file() || metadata.nlink() != 1) {
        return Err(AccountError::NotPlain {
            path: path.to_owned(),
            expected: "file",
        });
    }
    let fd: OwnedFd = file.into();
    // SAFETY: fchown and fchmod on a descriptor we own; they touch no memory of ours.
    let result = unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) };
    if result != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    let result = unsafe { libc::fchmod(fd.as_raw_fd(), mode) };
    if result != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates an empty file `name` in the dir `dir` for the VMM (its log), as root, without
/// following a link planted there; an existing plain file is kept.
pub fn create_vmm_file(dir: &Path, name: &str, uid: u32, gid: u32) -> Result<(), AccountError> {
    let path = dir.join(name);
    let fail = |source| AccountError::Chown {
        path: path.clone(),
        source,
    };
    let directory = open_no_follow(dir, true).map_err(fail)?;
    let c_name = CString::new(Path::new(name).as_os_str().as_bytes())
        .map_err(|_| fail(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: openat with a valid dir descriptor and a NUL-terminated name; the new
    // descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            directory.as_raw_fd(),
            c_name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ELOOP) {
            return Err(AccountError::NotPlain {
                path,
                expected: "file",
            });
        }
        return Err(fail(error));
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let file = std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    let metadata = file.metadata().map_err(fail)?;
    if !metadata.is_file() || metadata.nlink() != 1 {
        return Err(AccountError::NotPlain {
            path,
            expected: "file",
        });
    }
    // SAFETY: fchown on the descriptor owned by `file`.
    if unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n\
        fcvm-a:x:1950000000:1950000000:fireclaw VMM of a:/nonexistent:/usr/sbin/nologin\n\
        broken line\n\
        :x:5:5::/:/bin/sh\n";

    #[test]
    fn passwd_lines_are_read_and_malformed_ones_skipped() {
        let entries = parse_entries(PASSWD_TEXT);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name, "fcvm-a");
        assert_eq!(entries[1].id, VMM_ID_FIRST);
    }

    #[test]
    fn a_free_id_skips_users_groups_and_reserved_ids_and_wraps_once() {
        let users = parse_entries(PASSWD_TEXT);
        let groups = parse_entries(&format!("fcvm-x:x:{}:\n", VMM_ID_FIRST + 1));
        assert_eq!(
            free_id(&users, &groups, &[VMM_ID_FIRST + 2], 0),
            Some(VMM_ID_FIRST + 3)
        );
        // Above the floor first; below it only when the top of the range is full.
        assert_eq!(
            free_id(&users, &groups, &[], VMM_ID_FIRST + 10),
            Some(VMM_ID_FIRST + 10)
        );
        assert_eq!(
            free_id(&users, &groups, &[], VMM_ID_FIRST + VMM_ID_COUNT),
            Some(VMM_ID_FIRST + 2)
        );
    }

    #[test]
    fn a_link_is_refused_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // SAFETY: geteuid and getegid cannot fail.
        let uid = unsafe { libc::geteuid() };
        // SAFETY: as above.
        let gid = unsafe { libc::getegid() };
        let error = set_owner_and_mode(&link, false, uid, gid, 0o666).unwrap_err();
        assert!(matches!(error, AccountError::NotPlain { .. }), "{error}");
        let error = create_vmm_file(dir.path(), "link", uid, gid).unwrap_err();
        assert!(matches!(error, AccountError::NotPlain { .. }), "{error}");
        use std::os::unix::fs::PermissionsExt;
        assert_ne!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o666
        );
        set_owner_and_mode(&target, false, uid, gid, 0o640).unwrap();
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        create_vmm_file(dir.path(), "new.log", uid, gid).unwrap();
        assert!(dir.path().join("new.log").is_file());
    }
}
