//! A baked base image as `setup` and `doctor` use it: the record of the file a rootfs path
//! names (from `fireclaw-baked.json` beside it), the check that the file still matches that
//! record, the command that rebuilds it, and the warning for a kernel other than the one the
//! image was baked with.

use std::path::Path;

use anyhow::{Result, bail};

use crate::host::download::digest_file;
use crate::instance::baked::BakedRecord;
use crate::render::units::shell_word;
use crate::store::read_baked_manifest;

/// The baked-image record of `rootfs`, when the images directory it is in recorded one for it.
pub fn record_of(rootfs: &Path) -> Result<Option<BakedRecord>> {
    let (Some(dir), Some(file)) = (rootfs.parent(), rootfs.file_name()) else {
        return Ok(None);
    };
    let Some(manifest) = read_baked_manifest(dir)? else {
        return Ok(None);
    };
    Ok(manifest.by_file(&file.to_string_lossy()).cloned())
}

/// The command that bakes `record` (whose file is `rootfs`) again, into the same directory;
/// every path quoted for the shell.
pub fn rebuild_command(record: &BakedRecord, rootfs: &Path) -> String {
    let dir = rootfs.parent().unwrap_or(Path::new("."));
    let mut command = format!(
        "fireclaw image bake --name {} --force --dir {} --from {} --kernel {}",
        record.name,
        shell_word(&dir.display().to_string()),
        shell_word(&record.base.path),
        shell_word(&record.kernel.path)
    );
    if let Some(initrd) = &record.initrd {
        command.push_str(&format!(" --initrd {}", shell_word(&initrd.path)));
    }
    command.push_str(&format!(" --openclaw-image {}", record.openclaw.reference));
    if let Some(archive) = &record.openclaw.archive {
        command.push_str(&format!(
            " --openclaw-image-archive {}",
            shell_word(&archive.path)
        ));
    }
    if !record.browser {
        command.push_str(" --skip-browser-install");
    }
    command
}

/// Refuses a baked file that no longer matches its record (its size; its SHA-256 too when
/// `hash`), naming the command that rebuilds it.
pub fn check_file(rootfs: &Path, record: &BakedRecord, hash: bool) -> Result<()> {
    let size = match std::fs::metadata(rootfs) {
        Ok(m) => m.len(),
        Err(e) => bail!(
            "baked image '{}' ({}): {e}; rebuild it with: {}",
            record.name,
            rootfs.display(),
            rebuild_command(record, rootfs)
        ),
    };
    if !record.size_matches(size) {
        bail!(
            "baked image '{}' ({}) no longer matches its record (size {size}, recorded {}); rebuild it with: {}",
            record.name,
            rootfs.display(),
            record.size,
            rebuild_command(record, rootfs)
        );
    }
    if hash {
        let (sha256, _) = digest_file(rootfs)?;
        if sha256.to_string() != record.sha256 {
            bail!(
                "baked image '{}' ({}) no longer matches its record (sha256 differs); rebuild it with: {}",
                record.name,
                rootfs.display(),
                rebuild_command(record, rootfs)
            );
        }
    }
    Ok(())
}

/// A warning when `kernel` is not the kernel `record` was baked with (compared by SHA-256):
/// modules the image installed may be missing for it. `None` when they match, or when the
/// kernel cannot be read (other checks name that).
pub fn kernel_warning(kernel: &Path, record: &BakedRecord) -> Option<String> {
    let (sha256, _) = digest_file(kernel).ok()?;
    (sha256.to_string() != record.kernel.sha256).then(|| {
        format!(
            "guest kernel {} is not the one baked image '{}' was made with ({}): modules for another kernel may be missing in the guest",
            kernel.display(),
            record.name,
            record.kernel.path
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::baked::{BakedManifest, BakedOpenClaw, SourceFile};
    use crate::store::write_baked_manifest;

    fn record(dir: &Path, kernel_sha256: &str) -> BakedRecord {
        BakedRecord {
            name: "bots".into(),
            file: "bots.ext4".into(),
            size: 4,
            sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            base: SourceFile {
                path: dir.join("rootfs.ext4").display().to_string(),
                sha256: String::new(),
                size: 1,
            },
            kernel: SourceFile {
                path: dir.join("vmlinux").display().to_string(),
                sha256: kernel_sha256.into(),
                size: 1,
            },
            initrd: None,
            openclaw: BakedOpenClaw {
                reference: "ghcr.io/openclaw/openclaw:2026.9.6".into(),
                image_id: "sha256:1".into(),
                repo_digest: None,
                archive: Some(SourceFile {
                    path: "/srv/openclaw.tar".into(),
                    sha256: String::new(),
                    size: 1,
                }),
            },
            docker_version: "26.1.5".into(),
            browser: false,
            baked_at: "2026-12-01T00:00:00Z".into(),
            fireclaw_version: "0.3.0".into(),
        }
    }

    #[test]
    fn a_baked_file_is_found_checked_and_its_kernel_compared() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("bots.ext4");
        std::fs::write(&rootfs, b"test").unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"kernel").unwrap();
        assert_eq!(record_of(&rootfs).unwrap(), None);
        let (kernel_sha256, _) = digest_file(&dir.path().join("vmlinux")).unwrap();
        let baked = record(dir.path(), &kernel_sha256.to_string());
        let mut manifest = BakedManifest::default();
        manifest.record(baked.clone());
        write_baked_manifest(dir.path(), &manifest).unwrap();
        assert_eq!(record_of(&rootfs).unwrap(), Some(baked.clone()));
        assert_eq!(record_of(&dir.path().join("rootfs.ext4")).unwrap(), None);
        check_file(&rootfs, &baked, true).unwrap();
        assert_eq!(kernel_warning(&dir.path().join("vmlinux"), &baked), None);

        std::fs::write(dir.path().join("other"), b"another kernel").unwrap();
        let warning = kernel_warning(&dir.path().join("other"), &baked).unwrap();
        assert!(
            warning.contains("modules for another kernel may be missing"),
            "{warning}"
        );

        std::fs::write(&rootfs, b"TEST").unwrap();
        let error = check_file(&rootfs, &baked, true).unwrap_err().to_string();
        assert!(error.contains("sha256 differs"), "{error}");
        std::fs::write(&rootfs, b"longer").unwrap();
        let error = check_file(&rootfs, &baked, false).unwrap_err().to_string();
        assert!(error.contains("size 6, recorded 4"), "{error}");
        assert!(
            error.ends_with(&format!(
                "rebuild it with: fireclaw image bake --name bots --force --dir {0} --from {0}/rootfs.ext4 --kernel {0}/vmlinux --openclaw-image ghcr.io/openclaw/openclaw:2026.9.6 --openclaw-image-archive /srv/openclaw.tar --skip-browser-install",
                dir.path().display()
            )),
            "{error}"
        );
    }
}
