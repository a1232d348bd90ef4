//! `fireclaw image bake`'s workflow: validate every input (before root, before anything is
//! written) → lock the images directory → remove what an earlier, killed bake left → make the
//! builder VM through `setup`'s own install path (its tap, address and confined account; no
//! secrets, no proxy) → boot, wait for SSH → copy the archive in (the builder's disk was made
//! large enough) → run the provisioning script's install phase → clean the guest's identity →
//! shut it down cleanly → scrub what the shutdown wrote → `e2fsck -fn`, `resize2fs -M` → copy
//! into the images directory, sparse, with fsyncs → record it in `fireclaw-baked.json` →
//! install it under its name → remove the builder. Any failure or signal removes the builder,
//! the staging copy and nothing else (a failure keeps the builder's logs as a failed setup's
//! are kept); after a SIGKILL, the next bake (or `host cleanup`) removes what was left.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use super::evidence;
use super::install::{boot_media, check_kernel, check_preconditions, install_instance};
use super::instance::{load, lock};
use super::lifecycle::await_ssh;
use super::network::HostSystem;
use super::teardown::teardown_instance;
use crate::faults::crash_point;
use crate::guest::provision::{clean_builder_guest, provision_guest};
use crate::guest::ssh::GuestShell;
use crate::host::assets::copy_image;
use crate::host::download::digest_file;
use crate::host::interrupt;
use crate::host::probe::{self, require_root};
use crate::host::process::run_checked;
use crate::host::rootfs_build::available_space;
use crate::host::rootfs_seed::{FilesystemKind, filesystem_kind};
use crate::host::systemd::ServiceManager;
use crate::instance::baked::{
    BUILDER_ID, BakedManifest, BakedOpenClaw, BakedRecord, GUEST_ARCHIVE_PATH, InstallFacts,
    SourceFile, builder_disk_bytes,
};
use crate::instance::images::{human_bytes, rfc3339_utc};
use crate::instance::layout::{AssetPaths, default_api_sock};
use crate::instance::spec::{ProviderKeys, SetupSpec};
use crate::instance::values::{DiskSize, InstanceId, InvalidValue, PullPolicy};
use crate::output::{Detailed, Output, error_chain};
use crate::render::artifacts::HostTools;
use crate::settings::{BakeSpec, DEFAULT_MODEL, DEFAULT_SKILLS, Settings};
use crate::store::{
    ImageStaging, install_image, lock_image_dir, read_baked_manifest, write_baked_manifest,
};

/// The archive travels into the guest over SSH in pieces of this size, so memory stays bounded
/// and a signal is noticed between them.
const ARCHIVE_CHUNK: usize = 32 * 1024 * 1024;

/// Files the guest's shutdown writes after the cleaning: removed from the stopped disk.
const WRITTEN_AT_SHUTDOWN: [&str; 5] = [
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/credential.secret",
    "/var/log/wtmp",
    "/var/log/btmp",
    "/var/log/lastlog",
];

/// A bake that worked: its record and where the image was installed.
#[derive(Debug)]
pub struct Baked {
    pub record: BakedRecord,
    pub target: PathBuf,
}

pub fn bake(
    settings: &Settings,
    spec: &BakeSpec,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<Baked> {
    let builder = builder_spec(settings, spec)?;
    let target = spec.images_dir.join(spec.name.file_name());
    let kernel_warning = check_inputs(spec, &builder, &target)?;
    check_space(settings, spec, &builder, Credit::LeftBuilder)?;
    require_root(
        "image bake",
        "it runs a builder VM and writes into BASE_IMAGES_DIR",
    )?;
    let tools = HostTools {
        fireclaw: std::env::current_exe().context("locate the fireclaw binary")?,
        firecracker: probe::which("firecracker")
            .context("firecracker is not on PATH; install it (see fireclaw doctor)")?,
        socat: probe::which("socat").context("socat is not on PATH; install it")?,
    };
    if let Some(warning) = kernel_warning {
        output.warn(&warning);
    }
    super::confine::runnable_by_units(&tools.firecracker)?;
    for tool in ["e2fsck", "resize2fs", "debugfs"] {
        probe::which(tool).with_context(|| format!("{tool} is not on PATH; install e2fsprogs"))?;
    }
    let _images_lock = lock_image_dir(&spec.images_dir)?;
    // One bake at a time on this host: every bake's builder has the same id.
    let id = &builder.id;
    let _lock = lock(settings, id, output)?;
    let network = HostSystem { settings };
    remove_leftovers(settings, spec, services, output)?;
    check_space(settings, spec, &builder, Credit::Nothing)?;
    // Hashed now, as the bake uses them, not after it: what the record names is what was used.
    output.progress(&format!("bake {}: hashing the base files", spec.name));
    let sources = Sources::of(spec)?;
    let (media, media_warning) = boot_media(&builder)?;
    if let Some(warning) = media_warning {
        output.warn(&warning);
    }
    check_preconditions(settings, &builder, &tools)?;
    output.progress(&format!(
        "bake {}: making the builder VM ({} disk)",
        spec.name,
        human_bytes(builder.disk_size.bytes())
    ));
    install_instance(settings, &builder, &tools, services, &network, media)?;
    crash_point("bake:builder-made");
    let result = bake_in_builder(
        settings, spec, &builder, &sources, &target, services, output,
    );
    // Before the builder goes: its console and VMM logs say why a bake that failed did.
    let evidence = match &result {
        Err(error) if !interrupt::caused(error) => {
            Some(evidence::keep(settings, id, services, None))
        }
        _ => None,
    };
    let teardown = teardown_instance(settings, id, Some(&builder.api_sock), services, &network);
    let record = match (result, teardown) {
        (Ok(record), Ok(())) => record,
        (Ok(_), Err(cleanup)) => {
            return Err(cleanup.context(format!(
                "image {} was baked, but removing the builder VM failed; remove it with: fireclaw host cleanup",
                spec.name
            )));
        }
        (Err(error), Ok(())) if interrupt::caused(&error) => {
            return Err(error.context(format!(
                "bake of '{}' was interrupted; the builder VM and partial image were removed (nothing of it is left)",
                spec.name
            )));
        }
        (Err(error), Ok(())) => {
            let mut lines = evidence.map(|e| e.lines()).unwrap_or_default();
            lines.push(format!(
                "the builder VM ({BUILDER_ID}) and the partial image are gone; change what the cause names, then bake again"
            ));
            return Err(Detailed::wrap(
                format!("bake of '{}' failed", spec.name),
                lines,
                error,
            ));
        }
        (Err(error), Err(cleanup)) => {
            let mut lines = evidence.map(|e| e.lines()).unwrap_or_default();
            lines.push(format!(
                "removing the builder VM failed too ({}); remove it with: fireclaw host cleanup",
                error_chain(cleanup.as_ref())
            ));
            return Err(Detailed::wrap(
                format!("bake of '{}' failed", spec.name),
                lines,
                error,
            ));
        }
    };
    Ok(Baked { record, target })
}

/// The builder as a setup request: the reserved id, the bake's base, kernel and image, no
/// provider key, no browser in the instance phase (it never runs), and a disk with room for
/// the archive.
fn builder_spec(settings: &Settings, spec: &BakeSpec) -> Result<SetupSpec> {
    let id: InstanceId = BUILDER_ID.parse().context("the builder's id")?;
    let base_size = std::fs::metadata(&spec.base.rootfs).map_or(0, |m| m.len());
    let archive_size = spec
        .archive
        .as_ref()
        .and_then(|a| std::fs::metadata(a).ok())
        .map_or(0, |m| m.len());
    let disk_bytes = builder_disk_bytes(base_size, archive_size);
    let disk_size: DiskSize = parse(&format!("{}M", disk_bytes / (1024 * 1024)), "disk size")?;
    Ok(SetupSpec {
        api_sock: default_api_sock(&settings.paths.fc_root, BUILDER_ID),
        id,
        telegram: None,
        model: parse(DEFAULT_MODEL, "model")?,
        skills: parse(DEFAULT_SKILLS, "skills")?,
        image: spec.image.clone(),
        host_port: None,
        vcpu: spec.vcpu,
        memory: spec.memory,
        disk_size,
        base: spec.base.clone(),
        keys: ProviderKeys::default(),
        skip_browser_install: true,
        openclaw_pull: PullPolicy::Always,
        allow_private_egress: Default::default(),
        ssh_key_path: settings.ssh_key_path.clone(),
        fc_root: settings.paths.fc_root.clone(),
        state_root: settings.paths.state_root.clone(),
    })
}

/// One of the builder's own values, which are fireclaw's constants.
fn parse<T: std::str::FromStr<Err = InvalidValue>>(value: &str, what: &str) -> Result<T> {
    value
        .parse()
        .map_err(|e: InvalidValue| anyhow::anyhow!(e.0))
        .with_context(|| format!("the builder's {what}"))
}

/// Everything a user typed, checked before root is asked for and before anything is written;
/// returns the kernel's warning (drivers an initrd must load), if any.
fn check_inputs(spec: &BakeSpec, builder: &SetupSpec, target: &Path) -> Result<Option<String>> {
    let rootfs = &spec.base.rootfs;
    if !rootfs.is_file() {
        bail!(
            "base rootfs {} is missing (fetch one with: fireclaw image fetch)",
            rootfs.display()
        );
    }
    match filesystem_kind(rootfs)? {
        FilesystemKind::Ext4 {
            needs_recovery: false,
        } => {}
        FilesystemKind::Ext4 {
            needs_recovery: true,
        } => bail!(
            "base rootfs {} needs its ext4 journal replayed: run e2fsck -fy on it first",
            rootfs.display()
        ),
        FilesystemKind::Other => bail!(
            "base rootfs {} is not ext4; a bake needs an ext4 base (e.g. from fireclaw image fetch)",
            rootfs.display()
        ),
    }
    if !spec.base.kernel.is_file() {
        bail!("base kernel {} is missing", spec.base.kernel.display());
    }
    let kernel_warning = check_kernel(builder)?;
    if let Some(archive) = &spec.archive {
        match std::fs::metadata(archive) {
            Ok(m) if m.is_file() => {}
            Ok(_) => bail!("image archive {} is not a file", archive.display()),
            Err(e) => bail!("image archive {}: {e}", archive.display()),
        }
    }
    // A record whose file is missing is what a killed bake leaves: it is dropped, not in the way.
    if !spec.force && target.symlink_metadata().is_ok() {
        bail!(
            "baked image '{}' already exists ({}); replace it with --force",
            spec.name,
            target.display()
        );
    }
    Ok(kernel_warning)
}

/// The nearest existing directory at or above `path`, whose filesystem a new file would be on.
fn existing_dir(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"))
        .to_owned()
}

/// Blocks allocated by the files directly in `dir` (a killed bake's builder assets; its disk is
/// sparse, so its length would overstate it).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// What freeing is counted on when the space is checked.
#[derive(Clone, Copy)]
enum Credit {
    /// Before the locks: a builder a killed bake left is removed first, so its disk counts as
    /// free (unless a bake is running, whose builder stays).
    LeftBuilder,
    /// After the leftovers are gone: only what is free.
    Nothing,
}

/// Room for the builder's disk in `FC_ROOT` and the baked copy in the images directory (both
/// on one filesystem when they share it).
fn check_space(
    settings: &Settings,
    spec: &BakeSpec,
    builder: &SetupSpec,
    credit: Credit,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let disk = builder.disk_size.bytes();
    let fc_root = existing_dir(&settings.paths.fc_root);
    let images = existing_dir(&spec.images_dir);
    let device = |dir: &Path| std::fs::metadata(dir).map(|m| m.dev()).ok();
    let shared = device(&fc_root) == device(&images);
    let builder_left = match credit {
        Credit::LeftBuilder if !super::builder::bake_running(settings) => {
            allocated_bytes(&AssetPaths::new(&settings.paths.fc_root, &builder.id).dir)
        }
        _ => 0,
    };
    let checks: Vec<(&Path, u64, u64, &str)> = if shared {
        vec![(
            fc_root.as_path(),
            disk * 2,
            builder_left,
            "the builder's disk and the baked copy",
        )]
    } else {
        vec![
            (
                fc_root.as_path(),
                disk,
                builder_left,
                "the builder's disk (FC_ROOT)",
            ),
            (
                images.as_path(),
                disk,
                0,
                "the baked copy (BASE_IMAGES_DIR)",
            ),
        ]
    };
    for (dir, need, freed, what) in checks {
        let free = available_space(dir)?.saturating_add(freed);
        if free < need {
            bail!(
                "too little disk: the bake needs {} in {} for {what} and {} is free",
                human_bytes(need),
                dir.display(),
                human_bytes(free)
            );
        }
    }
    Ok(())
}

/// What a killed bake left: its builder VM (the caller holds the builder's lock), and in the
/// images directory (whose lock the caller holds too) its staging copy and a record whose file
/// never arrived.
fn remove_leftovers(
    settings: &Settings,
    spec: &BakeSpec,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    if super::builder::remove_builder_locked(settings, services)? {
        output.progress("removed the builder VM an interrupted bake left");
    }
    for done in super::builder::remove_image_leftovers_locked(&spec.images_dir)? {
        output.progress(&format!("{done}, left by an interrupted bake or fetch"));
    }
    // An interrupted bake of this very name that had passed its commit point is done now.
    let target = spec.images_dir.join(spec.name.file_name());
    if !spec.force && target.symlink_metadata().is_ok() {
        bail!(
            "baked image '{}' already exists ({}; an interrupted bake of it was just finished); replace it with --force",
            spec.name,
            target.display()
        );
    }
    Ok(())
}

/// The files a bake starts from, as its record names them.
struct Sources {
    base: SourceFile,
    kernel: SourceFile,
    initrd: Option<SourceFile>,
    archive: Option<SourceFile>,
}

impl Sources {
    fn of(spec: &BakeSpec) -> Result<Self> {
        Ok(Self {
            base: source_file(&spec.base.rootfs)?,
            kernel: source_file(&spec.base.kernel)?,
            initrd: if spec.base.initrd.is_file() {
                Some(source_file(&spec.base.initrd)?)
            } else {
                None
            },
            archive: spec.archive.as_deref().map(source_file).transpose()?,
        })
    }
}

/// The bake proper, in the builder made for it; returns the record it installed.
fn bake_in_builder(
    settings: &Settings,
    spec: &BakeSpec,
    builder: &SetupSpec,
    sources: &Sources,
    target: &Path,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<BakedRecord> {
    let loaded = load(settings, &builder.id)?;
    let name = &spec.name;
    output.progress(&format!("bake {name}: booting the builder VM"));
    services.enable_now(&[loaded.units.vm.as_str()])?;
    await_ssh(&loaded, services, &loaded.ssh, spec.ssh_timeout, output)?;
    crash_point("bake:booted");
    interrupt::check()?;
    let guest: &dyn GuestShell = &loaded.ssh;
    if let Some(archive) = &spec.archive {
        output.progress(&format!(
            "bake {name}: copying {} into the guest",
            archive.display()
        ));
        copy_into_guest(guest, archive)?;
        crash_point("bake:archive-copied");
    }
    output.progress(&format!(
        "bake {name}: installing Docker, {}{}",
        spec.image,
        if spec.browser { " and the browser" } else { "" }
    ));
    let mut input = format!("PHASE=install\nOPENCLAW_IMAGE={}\n", spec.image);
    if spec.archive.is_some() {
        input.push_str(&format!("OPENCLAW_ARCHIVE={GUEST_ARCHIVE_PATH}\n"));
    }
    input.push_str(&format!(
        "SKIP_BROWSER_INSTALL={}\nOPENCLAW_PULL=always\n",
        !spec.browser
    ));
    let stdout = provision_guest(guest, &input).context("the install phase in the builder")?;
    let facts = InstallFacts::parse(&stdout)?;
    crash_point("bake:installed");
    interrupt::check()?;
    output.progress(&format!("bake {name}: cleaning the guest's identity"));
    clean_builder_guest(guest, BUILDER_ID).context("clean the builder guest's identity")?;
    crash_point("bake:cleaned");
    output.progress(&format!("bake {name}: shutting the builder down"));
    services.stop(&[loaded.units.vm.as_str()])?;
    let assets = AssetPaths::new(&settings.paths.fc_root, &builder.id);
    let disk = &assets.rootfs;
    if filesystem_kind(disk)?
        != (FilesystemKind::Ext4 {
            needs_recovery: false,
        })
    {
        bail!(
            "the builder guest did not shut down cleanly (its disk {} needs journal recovery); nothing was installed",
            disk.display()
        );
    }
    crash_point("bake:stopped");
    interrupt::check()?;
    output.progress(&format!("bake {name}: checking and shrinking the disk"));
    scrub_shutdown_files(disk)?;
    run_checked("e2fsck", &["-fn", &disk.display().to_string()])
        .context("the baked disk fails e2fsck -fn")?;
    run_checked("resize2fs", &["-f", "-M", &disk.display().to_string()])
        .context("shrink the baked disk")?;
    run_checked("e2fsck", &["-fn", &disk.display().to_string()])
        .context("the shrunk disk fails e2fsck -fn")?;
    interrupt::check()?;
    let staging = ImageStaging::create(&spec.images_dir)?;
    let staged = staging.path().join(name.file_name());
    copy_image(disk, &staged, None)?;
    let (sha256, size) = digest_file(&staged)?;
    crash_point("bake:copied");
    interrupt::check()?;
    let record = BakedRecord {
        name: name.to_string(),
        file: name.file_name(),
        size,
        sha256: sha256.to_string(),
        base: sources.base.clone(),
        kernel: sources.kernel.clone(),
        initrd: sources.initrd.clone(),
        openclaw: BakedOpenClaw {
            reference: spec.image.to_string(),
            image_id: facts.image_id,
            repo_digest: facts.repo_digest,
            archive: sources.archive.clone(),
        },
        docker_version: facts.docker_version,
        browser: facts.browser,
        baked_at: rfc3339_utc(SystemTime::now()),
        fireclaw_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    // The record first, then the file: the record is the commit point. A kill between them
    // leaves the whole file in the staging dir, which the next bake or `host cleanup`
    // installs when its SHA-256 is the record's; a kill before the record leaves the old
    // record and file (or none) as they were.
    // On disk before the record names it: the roll-forward checks these very bytes.
    std::fs::File::open(&staged)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("fsync {}", staged.display()))?;
    let previous = read_baked_manifest(&spec.images_dir)?.unwrap_or_else(BakedManifest::default);
    let mut manifest = previous.clone();
    manifest.record(record.clone());
    write_baked_manifest(&spec.images_dir, &manifest)?;
    crash_point("bake:recorded");
    if let Err(error) = install_image(&staged, target, spec.force) {
        // A failed rename leaves the old file (or none): the old record goes back with it.
        return Err(match write_baked_manifest(&spec.images_dir, &previous) {
            Ok(()) => anyhow::Error::from(error),
            Err(restore) => anyhow::Error::from(error).context(format!(
                "and restoring the previous fireclaw-baked.json failed ({restore}), so its record names a file that was not installed; bake it again with --force"
            )),
        });
    }
    Ok(record)
}

/// A file's path, SHA-256 and size, for the record.
fn source_file(path: &Path) -> Result<SourceFile> {
    let (sha256, size) = digest_file(path)?;
    Ok(SourceFile {
        path: path.display().to_string(),
        sha256: sha256.to_string(),
        size,
    })
}

/// Streams `archive` into the guest at [`GUEST_ARCHIVE_PATH`] in pieces, then renames it into
/// place, so a half-copied archive is never taken for a whole one.
fn copy_into_guest(guest: &dyn GuestShell, archive: &Path) -> Result<()> {
    use std::io::Read;
    let partial = format!("{GUEST_ARCHIVE_PATH}.partial");
    let dir = Path::new(GUEST_ARCHIVE_PATH)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    guest.run(
        &format!("sudo sh -c 'umask 077 && mkdir -p {dir} && : > {partial}'"),
        b"",
    )?;
    let mut file = std::fs::File::open(archive)
        .with_context(|| format!("read image archive {}", archive.display()))?;
    let mut chunk = vec![0u8; ARCHIVE_CHUNK];
    loop {
        let mut filled = 0;
        while filled < chunk.len() {
            let n = file
                .read(&mut chunk[filled..])
                .with_context(|| format!("read image archive {}", archive.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        guest.run(&format!("sudo sh -c 'cat >> {partial}'"), &chunk[..filled])?;
        interrupt::check()?;
        if filled < chunk.len() {
            break;
        }
    }
    guest.run(&format!("sudo mv -f {partial} {GUEST_ARCHIVE_PATH}"), b"")?;
    Ok(())
}

/// Removes from the stopped disk what the guest's own shutdown wrote after the cleaning.
fn scrub_shutdown_files(disk: &Path) -> Result<()> {
    let commands: String = WRITTEN_AT_SHUTDOWN
        .iter()
        .map(|path| format!("rm {path}\n"))
        .collect();
    crate::host::process::run_checked_with_input(
        "debugfs",
        &["-w", "-f", "-", &disk.display().to_string()],
        &commands,
    )
    .context("remove what the builder's shutdown wrote")?;
    Ok(())
}
