//! The trusted-path rule: a file that root will execute or read keys from later (the `fireclaw`
//! and `firecracker` binaries recorded in units, the SSH key's dir) must be owned by root and
//! not group- or world-writable, and so must every directory above it. Otherwise a user who can
//! write there would become root at the next VM restart.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UntrustedPath {
    #[error("{what} {path}: cannot inspect {checked}")]
    Unreadable {
        what: String,
        path: PathBuf,
        checked: PathBuf,
        #[source]
        problem: std::io::Error,
    },
    #[error("{what} {path} is not trusted: {checked} is owned by uid {uid}, not root")]
    NotRootOwned {
        what: String,
        path: PathBuf,
        checked: PathBuf,
        uid: u32,
    },
    #[error(
        "{what} {path} is not trusted: {checked} is writable by group or others (mode {mode:04o})"
    )]
    Writable {
        what: String,
        path: PathBuf,
        checked: PathBuf,
        mode: u32,
    },
}

fn check_one(what: &str, path: &Path, checked: &Path) -> Result<(), UntrustedPath> {
    let metadata = std::fs::symlink_metadata(checked).map_err(|e| UntrustedPath::Unreadable {
        what: what.to_owned(),
        path: path.to_owned(),
        checked: checked.to_owned(),
        problem: e,
    })?;
    // A symlink's own mode is meaningless; its target is checked through the canonical path.
    if metadata.file_type().is_symlink() {
        return Ok(());
    }
    if metadata.uid() != 0 {
        return Err(UntrustedPath::NotRootOwned {
            what: what.to_owned(),
            path: path.to_owned(),
            checked: checked.to_owned(),
            uid: metadata.uid(),
        });
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(UntrustedPath::Writable {
            what: what.to_owned(),
            path: path.to_owned(),
            checked: checked.to_owned(),
            mode: metadata.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Checks `path` and every directory above it, both as given and after resolving symlinks.
pub fn check_trusted(what: &str, path: &Path) -> Result<(), UntrustedPath> {
    let canonical = std::fs::canonicalize(path).map_err(|e| UntrustedPath::Unreadable {
        what: what.to_owned(),
        path: path.to_owned(),
        checked: path.to_owned(),
        problem: e,
    })?;
    for candidate in [path, canonical.as_path()] {
        for ancestor in candidate.ancestors() {
            if ancestor.as_os_str().is_empty() {
                continue;
            }
            check_one(what, path, ancestor)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn system_binaries_are_trusted() {
        check_trusted("shell", Path::new("/bin/sh")).unwrap();
    }

    #[test]
    fn a_world_writable_dir_or_missing_file_is_refused() {
        // /tmp is world-writable (sticky or not): nothing under it is trusted.
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_owned();
        let binary = dir.join("firecracker");
        std::fs::write(&binary, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_trusted("firecracker", &binary).unwrap_err();
        assert!(
            matches!(
                err,
                UntrustedPath::Writable { .. } | UntrustedPath::NotRootOwned { .. }
            ),
            "{err}"
        );
        let err = check_trusted("firecracker", &dir.join("missing")).unwrap_err();
        assert!(matches!(err, UntrustedPath::Unreadable { .. }), "{err}");
    }
}
