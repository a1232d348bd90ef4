//! `fireclaw image fetch`: the steps, in an order that changes nothing on disk until every
//! input is downloaded and verified. Inputs are refused before any transfer when they cannot
//! be trusted; the images directory is locked and a private staging dir made inside it; the
//! free space is checked; the kernel and rootfs are fetched, verified and (for a tarball)
//! built into ext4 in staging; only then are they moved into place and the manifest updated.
//! Every error leaves the directory as it was (the staging dir is removed on drop).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::host::download::{Downloader, Fetched, digest_file};
use crate::host::interrupt;
use crate::host::kernel_image::inspect;
use crate::host::rootfs_seed::{FilesystemKind, filesystem_kind};
use crate::host::{probe, process, rootfs_build, signature};
use crate::instance::images::{
    FetchSpec, ImageFormat, ImageRecord, ImageSource, KernelChoice, ROOTFS_LABEL, SUMS_FILE,
    SUMS_SIGNATURE_FILE, Sha256Hex, Verification, digest_in_sums, ext4_label,
    firecracker_ci_version, human_bytes, kernel_listing_url, kernel_prefix, kernel_version_of,
    looks_like_initrd, newest_kernel_key, rfc3339_utc, rootfs_image_size, sniff_format,
    space_before_download, space_to_build_image,
};
use crate::instance::layout::{INITRD_FILE, KERNEL_FILE, ROOTFS_FILE};
use crate::output::Output;
use crate::store::{self, ImageStaging};

/// The kernel to download, once the default has been looked up.
struct KernelInput {
    source: ImageSource,
    version: Option<String>,
}

/// How the rootfs download is to be checked, decided before it starts.
enum RootfsCheck {
    Signed(Sha256Hex),
    Pinned(Sha256Hex),
    Unverified,
}

pub fn run(spec: &FetchSpec, json: bool, output: &mut Output<'_>) -> Result<()> {
    // From here on Ctrl-C stops the current step and the error path cleans up.
    interrupt::catch().context("catch Ctrl-C and SIGTERM")?;
    // Plain http from another host with nothing to check the kernel against is refused before
    // anything happens (the rootfs is decided once we know whether SHA256SUMS is there).
    if let KernelChoice::Given(source) = &spec.kernel
        && source.is_plain_http_off_host()
        && spec.kernel_sha256.is_none()
    {
        bail!(
            "refusing to download the kernel over plain http from another host ({source}): \
             use https, or pin it with --kernel-sha256"
        );
    }
    if let Some(keyring) = &spec.keyring {
        std::fs::metadata(keyring).with_context(|| format!("read {}", keyring.display()))?;
    }
    // A root tarball keeps its files' owners only when unpacked as root: say so before the
    // download, not after it.
    if spec
        .rootfs
        .file_name()
        .is_some_and(|name| is_tarball_name(&name))
    {
        probe::require_root(
            "image fetch",
            "a rootfs built from a tarball keeps its files' owners",
        )?;
    }
    // Local inputs before any download: a missing file is named now, not after a transfer.
    let given_kernel = match &spec.kernel {
        KernelChoice::Given(source) => Some(source),
        KernelChoice::FirecrackerCi { .. } => None,
    };
    for (what, source) in [("kernel", given_kernel), ("rootfs", Some(&spec.rootfs))] {
        if let Some(ImageSource::File(path)) = source {
            check_local_input(what, path)?;
        }
    }
    if let Some(initrd) = &spec.initrd {
        check_initrd(initrd)?;
    }
    // `--initrd` alone adds an initrd to the images there: nothing is downloaded.
    let targets = [spec.dir.join(KERNEL_FILE), spec.dir.join(ROOTFS_FILE)];
    let initrd_only = spec.initrd.is_some()
        && !spec.images_named
        && !spec.force
        && targets.iter().all(|t| t.is_file());
    if matches!(spec.kernel, KernelChoice::FirecrackerCi { .. }) && !initrd_only {
        firecracker_ci_version_here()?;
    }
    let downloader = Downloader::new();

    // Whatever this run creates for the directory (the directory itself and its parents, its
    // lock file) is removed again unless the fetch completes.
    let mut made = MadeHere::before(&spec.dir);
    // The lock first: two fetches into one directory would overwrite each other's staging.
    // `made` holds it, so a lock file this run made is removed while it is still held.
    made.hold(store::lock_image_dir(&spec.dir)?);
    let initrd_target = spec.dir.join(INITRD_FILE);
    if initrd_only {
        let record = install_initrd(spec, &initrd_target, output)?;
        made.keep();
        if json {
            output.line(&serde_json::to_string_pretty(&[record])?);
        }
        return Ok(());
    }
    if !spec.force {
        let initrd = spec.initrd.as_ref().map(|_| &initrd_target);
        for target in targets.iter().chain(initrd) {
            if std::fs::symlink_metadata(target).is_ok() {
                bail!(
                    "{} already exists (use --force to replace it)",
                    target.display()
                );
            }
        }
    }
    // What a killed bake left here, a committed one among them, is finished or removed first:
    // the staging dir below would otherwise drop a staged file its record already names.
    for done in crate::ops::builder::remove_image_leftovers_locked(&spec.dir)? {
        output.progress(&format!("{done}, left by an interrupted bake or fetch"));
    }
    let staging = ImageStaging::create(&spec.dir)?;

    let kernel = resolve_kernel(spec, &downloader, output)?;
    // The bucket's listing may name an http address too.
    if kernel.source.is_plain_http_off_host() && spec.kernel_sha256.is_none() {
        bail!(
            "refusing to download the kernel over plain http from another host ({}): use \
             https, or pin it with --kernel-sha256",
            kernel.source
        );
    }
    let check = rootfs_check(spec, &downloader, staging.path(), output)?;
    if matches!(check, RootfsCheck::Unverified) && spec.rootfs.is_plain_http_off_host() {
        bail!(
            "refusing to download the rootfs over plain http from another host ({}) without \
             a signed {SUMS_FILE} beside it: use https, or pin it with --rootfs-sha256",
            spec.rootfs
        );
    }

    // Space, before any large transfer. Unknown sizes count as nothing here; the second check
    // after unpacking uses the real size.
    let kernel_size = downloader.size_of(&kernel.source)?.unwrap_or(0);
    let rootfs_size = downloader.size_of(&spec.rootfs)?.unwrap_or(0);
    let rootfs_name = spec.rootfs.file_name().unwrap_or_default();
    rootfs_build::ensure_space(
        &spec.dir,
        space_before_download(kernel_size, rootfs_size, &rootfs_name),
        "for the downloads and the rootfs build",
    )?;

    let fetched_at = rfc3339_utc(SystemTime::now());
    let kernel_record = fetch_kernel(spec, &kernel, &downloader, staging.path(), output)?;
    let (rootfs_file, rootfs_record) =
        fetch_rootfs(spec, check, &downloader, staging.path(), output)?;

    // Everything is verified and built: install, rootfs first (the larger, slower rename
    // target), then the kernel, then the record of both.
    let mut manifest = match store::read_image_manifest(&spec.dir) {
        Ok(manifest) => manifest.unwrap_or_default(),
        Err(e) => {
            output.warn(&format!(
                "{}; starting a new manifest",
                crate::output::error_chain(&e)
            ));
            Default::default()
        }
    };
    let staged_kernel = staging.path().join(KERNEL_FILE);
    let records = [
        kernel_record.finish(&fetched_at),
        rootfs_record.finish(&fetched_at),
    ];
    interrupt::check()?;
    // Each image is recorded as soon as it is in place, so the manifest never lacks an image
    // that was installed, even when the next step fails.
    for (staged, target, record) in [
        (&rootfs_file, &targets[1], &records[1]),
        (&staged_kernel, &targets[0], &records[0]),
    ] {
        store::install_image(staged, target, spec.force)?;
        manifest.record(record.clone());
        store::write_image_manifest(&spec.dir, &manifest)?;
    }
    drop(staging);
    let mut records = records.to_vec();
    if spec.initrd.is_some() {
        records.push(install_initrd(spec, &initrd_target, output)?);
    }

    for record in &records {
        output.progress(&format!(
            "installed {} ({}, sha256 {}, {})",
            spec.dir.join(&record.file).display(),
            human_bytes(record.size),
            record.sha256,
            record.verification.as_str()
        ));
    }
    made.keep();
    if json {
        output.line(&serde_json::to_string_pretty(&records)?);
    }
    Ok(())
}

/// A local initrd that is there, a regular file and an initramfs (cpio, or compressed).
fn check_initrd(path: &Path) -> Result<()> {
    check_local_input("initrd", path)?;
    let mut head = [0u8; 8];
    let read = std::io::Read::read(
        &mut std::fs::File::open(path).with_context(|| format!("read {}", path.display()))?,
        &mut head,
    )
    .with_context(|| format!("read {}", path.display()))?;
    if !looks_like_initrd(&head[..read]) {
        bail!(
            "the initrd {} is not an initramfs (no cpio archive, nor gzip, zstd, xz, lz4, bzip2 or lzma data at its start)",
            path.display()
        );
    }
    Ok(())
}

/// Copies the `--initrd` file into the images dir as `initrd.img` (staged, then moved into
/// place) and records it: a local file has no published digest, so its digest is recorded.
fn install_initrd(spec: &FetchSpec, target: &Path, output: &mut Output<'_>) -> Result<ImageRecord> {
    let Some(source) = &spec.initrd else {
        bail!("internal: no initrd to install");
    };
    let staging = ImageStaging::create(&spec.dir)?;
    let staged = staging.path().join(INITRD_FILE);
    std::fs::copy(source, &staged)
        .with_context(|| format!("copy {} to {}", source.display(), staged.display()))?;
    let (sha256, size) = digest_file(&staged)?;
    let record = ImageRecord {
        file: INITRD_FILE.to_owned(),
        source: source.display().to_string(),
        source_sha256: sha256.to_string(),
        sha256: sha256.to_string(),
        size,
        version: None,
        fetched_at: rfc3339_utc(SystemTime::now()),
        verification: Verification::Recorded,
    };
    store::install_image(&staged, target, spec.force)?;
    let mut manifest = store::read_image_manifest(&spec.dir)
        .ok()
        .flatten()
        .unwrap_or_default();
    manifest.record(record.clone());
    store::write_image_manifest(&spec.dir, &manifest)?;
    drop(staging);
    output.progress(&format!(
        "installed {} ({}, sha256 {}, {}); setup uses it for every new instance",
        target.display(),
        human_bytes(size),
        record.sha256,
        record.verification.as_str()
    ));
    Ok(record)
}

/// A local kernel or rootfs that is there and a regular file.
fn check_local_input(what: &str, path: &Path) -> Result<()> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("the {what} {} cannot be read", path.display()))?;
    if !metadata.is_file() {
        bail!("the {what} {} is not a regular file", path.display());
    }
    Ok(())
}

/// What a fetch made where the images directory is: the directories it had to create (the
/// highest one first) and the lock file. Dropped before [`MadeHere::keep`], it removes them,
/// so a failed fetch leaves the place as it was.
struct MadeHere {
    dirs: Vec<PathBuf>,
    lock: Option<PathBuf>,
    held: Option<store::HeldLock>,
    kept: bool,
}

impl MadeHere {
    fn before(dir: &Path) -> Self {
        let dirs = dir
            .ancestors()
            .take_while(|d| std::fs::symlink_metadata(d).is_err())
            .map(Path::to_path_buf)
            .collect();
        let lock = dir.join(store::IMAGES_LOCK_FILE);
        let lock = std::fs::symlink_metadata(&lock).is_err().then_some(lock);
        Self {
            dirs,
            lock,
            held: None,
            kept: false,
        }
    }

    fn hold(&mut self, lock: store::HeldLock) {
        self.held = Some(lock);
    }

    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for MadeHere {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Only a lock this run holds is its own to remove (a fetch refused as busy leaves the
        // other fetch's file alone); removed before it is released.
        if let (Some(lock), Some(_)) = (&self.lock, &self.held) {
            let _ = std::fs::remove_file(lock);
        }
        self.held = None;
        // Deepest first; remove_dir leaves any directory something else has put files in.
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn is_tarball_name(name: &str) -> bool {
    name.ends_with(".tar") || name.ends_with(".tar.xz") || name.ends_with(".txz")
}

/// A record still waiting for its timestamp.
struct PendingRecord(ImageRecord);

impl PendingRecord {
    fn finish(&self, fetched_at: &str) -> ImageRecord {
        ImageRecord {
            fetched_at: fetched_at.to_owned(),
            ..self.0.clone()
        }
    }
}

/// The kernel given, or Firecracker's newest CI kernel for the installed Firecracker's minor
/// version, found in the bucket's listing.
fn resolve_kernel(
    spec: &FetchSpec,
    downloader: &Downloader,
    output: &mut Output<'_>,
) -> Result<KernelInput> {
    let index = match &spec.kernel {
        KernelChoice::Given(source) => {
            let version = source
                .file_name()
                .and_then(|name| kernel_version_of(&name).map(str::to_owned));
            return Ok(KernelInput {
                source: source.clone(),
                version,
            });
        }
        KernelChoice::FirecrackerCi { index } => index,
    };
    let ci_version = firecracker_ci_version_here()?;
    let prefix = kernel_prefix(&ci_version);
    let listing_url = kernel_listing_url(index, &prefix);
    output.progress(&format!(
        "looking up Firecracker {ci_version} CI kernels in {listing_url}"
    ));
    let listing = downloader.fetch_small(&ImageSource::Url(listing_url.clone()))?;
    let Some((key, version)) = newest_kernel_key(&String::from_utf8_lossy(&listing), &prefix)
    else {
        bail!("no kernel named {prefix}<version> in {listing_url}");
    };
    Ok(KernelInput {
        source: ImageSource::Url(crate::instance::images::join_url(index, &key)),
        version: Some(version),
    })
}

/// The Firecracker CI version of the firecracker on PATH, whose kernels the default fetch
/// looks up.
fn firecracker_ci_version_here() -> Result<String> {
    let Some(firecracker) = probe::which("firecracker") else {
        bail!(
            "firecracker is not on PATH, so its CI kernel version is unknown: install \
             Firecracker first, or give a kernel with --kernel"
        );
    };
    let firecracker = firecracker.to_string_lossy().into_owned();
    let version_text = process::run_checked(&firecracker, &["--version"])?;
    firecracker_ci_version(&version_text).with_context(|| {
        format!(
            "{firecracker} --version did not print a version like 'Firecracker v1.16.1'; give \
             a kernel with --kernel"
        )
    })
}

/// Decides how the rootfs will be checked: a pinned digest, else the digest from a
/// `SHA256SUMS` beside it whose signature `gpgv` accepts (required for the default Ubuntu
/// image), else nothing but a recorded digest.
fn rootfs_check(
    spec: &FetchSpec,
    downloader: &Downloader,
    staging: &Path,
    output: &mut Output<'_>,
) -> Result<RootfsCheck> {
    if let Some(pin) = &spec.rootfs_sha256 {
        return Ok(RootfsCheck::Pinned(pin.clone()));
    }
    let sums_source = spec.rootfs.sibling(SUMS_FILE);
    let signature_source = spec.rootfs.sibling(SUMS_SIGNATURE_FILE);
    let sums = if spec.rootfs_sums_required {
        downloader.fetch_small(&sums_source)?
    } else {
        match downloader.fetch_small_if_present(&sums_source)? {
            Some(sums) => sums,
            None => return Ok(RootfsCheck::Unverified),
        }
    };
    let Some(signature) = downloader.fetch_small_if_present(&signature_source)? else {
        bail!(
            "{sums_source} has no signature {SUMS_SIGNATURE_FILE} beside it; without one it \
             proves nothing (pin the rootfs with --rootfs-sha256 instead)"
        );
    };
    let sums_path = staging.join(SUMS_FILE);
    let signature_path = staging.join(SUMS_SIGNATURE_FILE);
    std::fs::write(&sums_path, &sums).with_context(|| format!("write {}", sums_path.display()))?;
    std::fs::write(&signature_path, &signature)
        .with_context(|| format!("write {}", signature_path.display()))?;
    let keyring = match &spec.keyring {
        Some(keyring) => keyring.clone(),
        None => signature::write_builtin_keyring(staging)?,
    };
    let home = staging.join("gnupg");
    std::fs::create_dir(&home).with_context(|| format!("create {}", home.display()))?;
    signature::verify_detached(
        &keyring,
        &signature_path,
        &sums_path,
        &home,
        (&sums_source.to_string(), &signature_source.to_string()),
    )?;
    let name = spec.rootfs.file_name().unwrap_or_default();
    let Some(digest) = digest_in_sums(&String::from_utf8_lossy(&sums), &name) else {
        bail!("{sums_source} (signature good) lists no file named {name}");
    };
    output.progress(&format!(
        "{SUMS_FILE} signature good; {name} must have sha256 {digest}"
    ));
    Ok(RootfsCheck::Signed(digest))
}

/// Downloads or copies `source` into `dest` with a live progress line.
fn transfer(
    downloader: &Downloader,
    source: &ImageSource,
    dest: &Path,
    what: &str,
    output: &mut Output<'_>,
) -> Result<Fetched> {
    output.progress(&format!("fetching {what} from {source}"));
    let fetched = downloader.fetch_to_watched(source, dest, &mut |done, total| {
        let text = match total {
            Some(total) if total > 0 => format!(
                "{what}: {} of {} ({}%)",
                human_bytes(done),
                human_bytes(total),
                done.saturating_mul(100) / total
            ),
            _ => format!("{what}: {}", human_bytes(done)),
        };
        output.tick(&text);
    })?;
    if fetched.resumed > 0 {
        output.progress(&format!(
            "{what}: the connection dropped and was resumed {} time(s)",
            fetched.resumed
        ));
    }
    Ok(fetched)
}

fn refuse_mismatch(source: &ImageSource, expected: &Sha256Hex, got: &Sha256Hex) -> Result<()> {
    if expected != got {
        bail!(
            "checksum mismatch for {source}: expected sha256 {expected}, got {got}; nothing was installed"
        );
    }
    Ok(())
}

fn fetch_kernel(
    spec: &FetchSpec,
    kernel: &KernelInput,
    downloader: &Downloader,
    staging: &Path,
    output: &mut Output<'_>,
) -> Result<PendingRecord> {
    let staged = staging.join(KERNEL_FILE);
    let fetched = transfer(downloader, &kernel.source, &staged, "kernel", output)?;
    let verification = match &spec.kernel_sha256 {
        Some(pin) => {
            refuse_mismatch(&kernel.source, pin, &fetched.sha256)?;
            Verification::PinnedSha256
        }
        None => {
            output.progress(&format!(
                "kernel sha256 {} (no published checksum to compare with; recorded, pin it \
                 with --kernel-sha256)",
                fetched.sha256
            ));
            Verification::Recorded
        }
    };
    // The same inspection setup makes: an x86_64 ELF vmlinux, and the drivers a guest needs
    // (missing ones are worth a warning here; setup refuses them without an initrd).
    let bytes = std::fs::read(&staged).with_context(|| format!("read {}", staged.display()))?;
    let report = inspect(&bytes).with_context(|| format!("the kernel from {}", kernel.source))?;
    if let Some(missing) = report.missing_required(false) {
        output.warn(&format!(
            "the kernel from {}: {}",
            kernel.source,
            missing.describe(&spec.dir.join(INITRD_FILE))
        ));
    }
    Ok(PendingRecord(ImageRecord {
        file: KERNEL_FILE.to_owned(),
        source: kernel.source.to_string(),
        source_sha256: fetched.sha256.to_string(),
        sha256: fetched.sha256.to_string(),
        size: fetched.size,
        version: kernel.version.clone(),
        fetched_at: String::new(),
        verification,
    }))
}

/// Fetches the rootfs input, verifies it, and turns it into the ext4 image to install: a raw
/// ext4 image as it is, a tarball built with `mkfs.ext4 -d`. Returns the staged image.
fn fetch_rootfs(
    spec: &FetchSpec,
    check: RootfsCheck,
    downloader: &Downloader,
    staging: &Path,
    output: &mut Output<'_>,
) -> Result<(PathBuf, PendingRecord)> {
    let download = staging.join("rootfs.download");
    let fetched = transfer(downloader, &spec.rootfs, &download, "rootfs", output)?;
    let verification = match &check {
        RootfsCheck::Signed(expected) => {
            refuse_mismatch(&spec.rootfs, expected, &fetched.sha256)?;
            Verification::SignedSha256
        }
        RootfsCheck::Pinned(expected) => {
            refuse_mismatch(&spec.rootfs, expected, &fetched.sha256)?;
            Verification::PinnedSha256
        }
        RootfsCheck::Unverified => {
            output.warn(&format!(
                "{} has no signed {SUMS_FILE} beside it and no --rootfs-sha256: its sha256 {} \
                 is recorded, not verified",
                spec.rootfs, fetched.sha256
            ));
            Verification::Recorded
        }
    };
    let head = rootfs_build::read_head(&download)?;
    let format = sniff_format(&head);
    let image = match format {
        ImageFormat::Ext4 => {
            // What setup will need of it: clean, and no journal left to replay.
            if let FilesystemKind::Ext4 {
                needs_recovery: true,
            } = filesystem_kind(&download)?
            {
                bail!(
                    "{} is an ext4 image whose journal needs replaying (copied from a running \
                     VM?): run e2fsck -fy on it first",
                    spec.rootfs
                );
            }
            rootfs_build::check_ext4(&download)?;
            let label = ext4_label(&head).unwrap_or_default();
            if label != ROOTFS_LABEL {
                output.warn(&format!(
                    "the ext4 image's label is '{}', not '{ROOTFS_LABEL}': an Ubuntu guest's \
                     fstab will not find its root by label",
                    crate::instance::values::escaped(&label)
                ));
            }
            download
        }
        ImageFormat::XzTarball | ImageFormat::Tar => {
            build_from_tarball(spec, &download, format, staging, output)?
        }
        other => bail!(
            "{} is {}: expected an xz or plain root tarball, or an ext4 image",
            spec.rootfs,
            other.describe()
        ),
    };
    let (sha256, size) = digest_file(&image)?;
    Ok((
        image,
        PendingRecord(ImageRecord {
            file: ROOTFS_FILE.to_owned(),
            source: spec.rootfs.to_string(),
            source_sha256: fetched.sha256.to_string(),
            sha256: sha256.to_string(),
            size,
            version: spec.rootfs_version.clone(),
            fetched_at: String::new(),
            verification,
        }),
    ))
}

fn build_from_tarball(
    spec: &FetchSpec,
    archive: &Path,
    format: ImageFormat,
    staging: &Path,
    output: &mut Output<'_>,
) -> Result<PathBuf> {
    probe::require_root(
        "image fetch",
        "a rootfs built from a tarball keeps its files' owners",
    )?;
    let tree = staging.join("tree");
    std::fs::create_dir(&tree).with_context(|| format!("create {}", tree.display()))?;
    output.progress("unpacking the root tarball");
    rootfs_build::unpack(archive, format, &tree)?;
    // A tarball's `./` entry is not unpacked onto the dir itself: the guest's `/` gets what
    // mkfs copies from here, so it is made what a root directory is, whatever the umask.
    std::os::unix::fs::chown(&tree, Some(0), Some(0))
        .and_then(|()| {
            std::fs::set_permissions(&tree, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        })
        .with_context(|| format!("make {} a root directory", tree.display()))?;
    interrupt::check()?;
    // The tarball is not needed any more; its space goes to the image.
    std::fs::remove_file(archive).with_context(|| format!("remove {}", archive.display()))?;
    let tree_bytes = rootfs_build::tree_size(&tree)?;
    rootfs_build::ensure_space(
        &spec.dir,
        space_to_build_image(tree_bytes),
        "for the rootfs image",
    )?;
    if rootfs_build::disable_missing_partition_mounts(&tree)? {
        output.progress(
            "commented out the /boot and /boot/efi partition mounts in /etc/fstab (a VM has only its root disk)",
        );
    }
    let image = staging.join(ROOTFS_FILE);
    let size = rootfs_image_size(tree_bytes);
    output.progress(&format!(
        "building {ROOTFS_FILE} ({} of files in a {} filesystem)",
        human_bytes(tree_bytes),
        human_bytes(size)
    ));
    rootfs_build::make_ext4(&tree, &image, size)?;
    interrupt::check()?;
    std::fs::remove_dir_all(&tree).with_context(|| format!("remove {}", tree.display()))?;
    Ok(image)
}
