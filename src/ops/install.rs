//! Creating the host side of a new instance: refuse leftovers, check the binaries the units
//! will run, reserve the allocation, write state, copy and render the VM assets, write both
//! units and reload systemd, advancing the phase in `fireclaw.json` after each. Any failure
//! removes exactly what was made for this instance (see `teardown`).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::evidence;
use super::instance::Loaded;
use super::lifecycle::{Provisioned, STEP_BOOT, Waits, await_ssh, provision};
use super::network::HostSteps;
use super::teardown::teardown_instance;
use super::timing::Stopwatch;
use crate::faults::crash_point;
use crate::guest::ssh::GuestShell;
use crate::host::assets::copy_image;
use crate::host::kernel_image::{Feature, KernelError, inspect_file};
use crate::host::rootfs_seed::{
    FilesystemKind, filesystem_kind, has_programs, missing_boot_parts, write_seed,
};
use crate::host::systemd::ServiceManager;
use crate::host::trust::check_trusted;
use crate::host::{interrupt, probe};
use crate::instance::confinement::VmmAccount;
use crate::instance::layout::{AssetPaths, GUEST_PACKAGES, StatePaths, UnitNames, public_key_path};
use crate::instance::plan::{Allocation, allocate, instance_env};
use crate::instance::secrets::{HostKeyPair, generate_host_key, generate_token, generate_uuid};
use crate::instance::spec::SetupSpec;
use crate::instance::state::{GatewayToken, Phase};
use crate::instance::timing::RunTimes;
use crate::instance::values::{HostPort, InstanceId};
use crate::output::{Detailed, Output, error_chain};
use crate::render::artifacts::{
    Artifact, Body, HostTools, InstancePlan, RenderedInstance, render_instance,
};
use crate::render::seed_image::Timestamp;
use crate::settings::Settings;
use crate::store::{
    ensure_private_dir, lock_allocation, reserve, set_phase, update_fireclaw_state, write_atomic,
};

/// A new instance whose host side is in place (phase `units`).
#[derive(Debug, Clone)]
pub struct Installed {
    pub allocation: Allocation,
    pub units: UnitNames,
}

/// How a new guest boots and finds its cloud-init seed, decided from the base images before
/// anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootMedia {
    /// The base initrd exists (it is optional).
    pub with_initrd: bool,
    /// The seed also goes into the rootfs copy (an ext4 base), for kernels without iso9660.
    pub seed_in_rootfs: bool,
    /// The base already has the programs user-data would otherwise install (`packages:`).
    pub base_has_packages: bool,
}

/// The base kernel and rootfs exist (the initrd is optional).
fn check_base_images_present(spec: &SetupSpec) -> Result<()> {
    for (what, path) in [
        ("base kernel", &spec.base.kernel),
        ("base rootfs", &spec.base.rootfs),
    ] {
        if !path.is_file() {
            bail!("{what} {} is missing", path.display());
        }
    }
    Ok(())
}

/// Chooses the boot media for `spec`'s base images. The seed image is always written (kernels
/// with iso9660 and 0.2.0's layout read it); an ext4 rootfs gets the seed inside it too. A
/// rootfs that is not ext4 is refused only when the kernel cannot read the seed image either;
/// otherwise the returned warning says the seed image is all the guest has.
pub fn boot_media(spec: &SetupSpec) -> Result<(BootMedia, Option<String>)> {
    check_base_images_present(spec)?;
    let with_initrd = spec.base.initrd.is_file();
    let rootfs = &spec.base.rootfs;
    match filesystem_kind(rootfs)? {
        FilesystemKind::Ext4 {
            needs_recovery: true,
        } => bail!(
            "base rootfs {} needs its ext4 journal replayed (was it copied from a running VM?): run e2fsck -fy on it first",
            rootfs.display()
        ),
        FilesystemKind::Ext4 { .. } => {
            probe::which("debugfs").context(
                "debugfs is not on PATH; install e2fsprogs (it writes the cloud-init seed into the rootfs)",
            )?;
            // Before a boot that could only end in the whole SSH wait.
            let missing = missing_boot_parts(rootfs)
                .with_context(|| format!("read base rootfs {}", rootfs.display()))?;
            if !missing.is_empty() {
                bail!(
                    "base rootfs {} lacks {}: no guest could boot from it to where fireclaw reaches it; use a cloud image's root (fireclaw image fetch) or a baked image",
                    rootfs.display(),
                    missing.join(", ")
                );
            }
            let base_has_packages = has_programs(rootfs, &GUEST_PACKAGES)
                .with_context(|| format!("read base rootfs {}", rootfs.display()))?;
            Ok((
                BootMedia {
                    with_initrd,
                    seed_in_rootfs: true,
                    base_has_packages,
                },
                None,
            ))
        }
        FilesystemKind::Other if kernel_reads_iso9660(&spec.base.kernel) => Ok((
            BootMedia {
                with_initrd,
                seed_in_rootfs: false,
                base_has_packages: false,
            },
            Some(format!(
                "base rootfs {} is not ext4: the guest gets its cloud-init seed only from seed.img",
                rootfs.display()
            )),
        )),
        FilesystemKind::Other => bail!(
            "base rootfs {} is not ext4 and kernel {} has no iso9660: the guest could not read its cloud-init seed from either (use an ext4 rootfs, e.g. from fireclaw image fetch)",
            rootfs.display(),
            spec.base.kernel.display()
        ),
    }
}

/// Whether the guest kernel can mount the ISO seed image (an unreadable kernel cannot be
/// counted on; `check_kernel` reports why).
fn kernel_reads_iso9660(kernel: &Path) -> bool {
    inspect_file(kernel).is_ok_and(|report| report.has(Feature::Iso9660))
}

/// Refuses an id whose files already exist, as 0.2.0 does before creating anything.
pub fn check_not_existing(settings: &Settings, spec: &SetupSpec) -> Result<()> {
    let state = StatePaths::new(&settings.paths.state_root, &spec.id);
    let assets = AssetPaths::new(&settings.paths.fc_root, &spec.id);
    let units = UnitNames::new(&spec.id);
    let candidates: [(&str, PathBuf); 5] = [
        ("instance state", state.dir),
        ("VM asset dir", assets.dir),
        ("API socket", spec.api_sock.clone()),
        ("VM unit", units.vm_path(&settings.paths.unit_dir)),
        ("proxy unit", units.proxy_path(&settings.paths.unit_dir)),
    ];
    for (what, path) in candidates {
        if path.symlink_metadata().is_ok() {
            bail!(
                "instance '{}' already exists: {what} {} is present (remove it with: fireclaw destroy {} --force)",
                spec.id,
                path.display(),
                spec.id
            );
        }
    }
    Ok(())
}

/// Refuses a `--disk-size` smaller than the base rootfs, in the units a person typed, before
/// anything is written (the copy could only be grown, never shrunk). A rootfs that is not
/// there is left to the checks that name it missing.
pub fn check_disk_size(spec: &SetupSpec) -> Result<()> {
    let Ok(metadata) = std::fs::metadata(&spec.base.rootfs) else {
        return Ok(());
    };
    if metadata.is_file() && metadata.len() > spec.disk_size.bytes() {
        bail!(
            "--disk-size {} is smaller than the base rootfs {} ({}); give at least that much",
            spec.disk_size,
            spec.base.rootfs.display(),
            crate::instance::images::human_bytes(metadata.len())
        );
    }
    Ok(())
}

/// Refuses a base kernel the guest cannot boot from, before anything is written: one that is
/// not an x86_64 ELF vmlinux, or one that lacks a driver the guest needs when no initrd could
/// load it as a module. Returns a warning when drivers are missing but an initrd is given, or
/// when the kernel cannot be read without root (`setup --dry-run` as a user). A kernel that is
/// not there is left to the checks that name it missing.
pub fn check_kernel(spec: &SetupSpec) -> Result<Option<String>> {
    let kernel = &spec.base.kernel;
    if !kernel.is_file() {
        return Ok(None);
    }
    let report = match inspect_file(kernel) {
        Ok(report) => report,
        Err(KernelError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return Ok(Some(format!(
                "guest kernel {} is not readable without root; setup inspects it before writing anything",
                kernel.display()
            )));
        }
        Err(error) => return Err(error.into()),
    };
    match report.missing_required(spec.base.initrd.is_file()) {
        None => Ok(None),
        Some(missing) if missing.fatal => {
            bail!(
                "guest kernel {}: {}",
                kernel.display(),
                missing.describe(&spec.base.initrd)
            )
        }
        Some(missing) => Ok(Some(format!(
            "guest kernel {}: {}",
            kernel.display(),
            missing.describe(&spec.base.initrd)
        ))),
    }
}

/// The client key (`SSH_KEY_PATH`, `.pub` beside it): read, or generated when missing. The
/// check and the generation happen under the allocation lock: concurrent setups must not each
/// write a different key (the last writer would win and the others' guests trust a key that
/// no longer exists).
pub fn client_public_key(state_root: &Path, key_path: &Path) -> Result<String> {
    let public = public_key_path(key_path);
    let _lock = lock_allocation(state_root)?;
    if let Ok(text) = std::fs::read_to_string(&public) {
        return Ok(text.trim().to_owned());
    }
    let dir = key_path
        .parent()
        .context("SSH_KEY_PATH has no parent directory")?;
    ensure_private_dir(dir)?;
    check_trusted("SSH key directory", dir)?;
    let key =
        ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .context("generate the SSH client key")?;
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .context("encode the SSH client key")?;
    let public_text = key
        .public_key()
        .to_openssh()
        .context("encode the SSH client key")?;
    write_atomic(key_path, private.as_bytes(), 0o600)?;
    write_atomic(&public, format!("{public_text}\n").as_bytes(), 0o644)?;
    Ok(public_text)
}

fn write_artifact(artifact: &Artifact) -> Result<()> {
    let bytes: &[u8] = match &artifact.body {
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
    };
    write_atomic(&artifact.path, bytes, artifact.mode).map_err(Into::into)
}

/// Where a new instance's identity and disk come from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// `setup`: fresh secrets and UUID, the base images copied; `managed_by_apply` when
    /// `apply` runs it (recorded from the first write on).
    Setup { managed_by_apply: bool },
    /// `import`: the archive's identity; the base images are its staged files, moved into
    /// place rather than copied (they sit on FC_ROOT's filesystem already).
    Import(&'a Imported),
}

/// What an archive brings besides its settings: the agent's identity.
#[derive(Debug, Clone)]
pub struct Imported {
    pub token: GatewayToken,
    pub host_key: HostKeyPair,
    pub uuid: String,
}

/// Creates the host side of a new instance. On failure everything made for it is removed.
pub fn install_instance(
    settings: &Settings,
    spec: &SetupSpec,
    tools: &HostTools,
    services: &dyn ServiceManager,
    network: &dyn HostSteps,
    media: BootMedia,
) -> Result<Installed> {
    install_from(
        settings,
        spec,
        tools,
        services,
        network,
        media,
        Origin::Setup {
            managed_by_apply: false,
        },
    )
}

/// `install_instance` for either origin.
pub fn install_from(
    settings: &Settings,
    spec: &SetupSpec,
    tools: &HostTools,
    services: &dyn ServiceManager,
    network: &dyn HostSteps,
    media: BootMedia,
    origin: Origin<'_>,
) -> Result<Installed> {
    check_preconditions(settings, spec, tools)?;
    let authorized_key = client_public_key(&settings.paths.state_root, &spec.ssh_key_path)?;
    let (token, host_key, uuid, phase) = match origin {
        Origin::Setup { .. } => (
            generate_token()?,
            generate_host_key(spec.id.as_str())?,
            generate_uuid()?,
            Phase::Allocated,
        ),
        Origin::Import(imported) => (
            imported.token.clone(),
            imported.host_key.clone(),
            imported.uuid.clone(),
            Phase::Importing,
        ),
    };
    let managed_by = matches!(
        origin,
        Origin::Setup {
            managed_by_apply: true
        }
    )
    .then(|| crate::instance::state::MANAGED_BY_APPLY.to_owned());
    let initial = crate::instance::state::FireclawState {
        managed_by: managed_by.clone(),
        ..crate::instance::state::FireclawState::new(phase)
    };
    let (allocation, vmm_account) = reserve_allocation(settings, spec, &token, network, &initial)?;
    crash_point(match origin {
        Origin::Setup { .. } => "setup:reserved",
        Origin::Import(_) => "import:reserved",
    });
    let secrets = NewSecrets {
        token: &token,
        host_key: &host_key,
        authorized_key: &authorized_key,
        uuid: &uuid,
        managed_by: managed_by.as_deref(),
    };
    let result = install_after_reserve(
        settings,
        spec,
        tools,
        services,
        network,
        &allocation,
        &secrets,
        media,
        &vmm_account,
        origin,
    );
    if let Err(error) = result {
        let interrupted = interrupt::caused(&error);
        if let Err(cleanup) =
            teardown_instance(settings, &spec.id, Some(&spec.api_sock), services, network)
        {
            return Err(error.context(format!(
                "and cleaning up failed too ({}); clean up with: fireclaw destroy {} --force",
                error_chain(cleanup.as_ref()),
                spec.id
            )));
        }
        if interrupted {
            return Err(error.context(format!(
                "setup of '{}' was interrupted and rolled back (nothing of it is left)",
                spec.id
            )));
        }
        return Err(error);
    }
    Ok(Installed {
        allocation,
        units: UnitNames::new(&spec.id),
    })
}

/// What must hold before anything is written: no leftovers of this id, trusted binaries for
/// the units (root runs them at every VM start), and the base images (a bootable kernel).
pub fn check_preconditions(settings: &Settings, spec: &SetupSpec, tools: &HostTools) -> Result<()> {
    check_not_existing(settings, spec)?;
    check_trusted("fireclaw binary", &tools.fireclaw)?;
    check_trusted("firecracker binary", &tools.firecracker)?;
    check_trusted("socat binary", &tools.socat)?;
    check_base_images_present(spec)?;
    // Setup checked it already; install_instance has other callers (the sandbox's installer).
    check_kernel(spec)?;
    check_disk_size(spec)?;
    Ok(())
}

/// Allocation, VMM account and `.env` under the allocation lock, with `.vm-<id>` made by mkdir;
/// returns what was reserved, read back from the `.env` on disk, and the account, recorded in
/// `fireclaw.json`. An interface that already has the derived tap name is refused here, before
/// anything of this instance exists, so no rollback can mistake it for this instance's tap and
/// remove it.
fn reserve_allocation(
    settings: &Settings,
    spec: &SetupSpec,
    token: &GatewayToken,
    network: &dyn HostSteps,
    initial: &crate::instance::state::FireclawState,
) -> Result<(Allocation, VmmAccount)> {
    let listening = probe::listening_tcp_ports();
    let mut created: Option<VmmAccount> = None;
    let reserved = reserve(&settings.paths.state_root, &spec.id, initial, |taken| {
        let mut taken = taken.clone();
        taken.listening = listening.clone();
        let allocation = allocate(spec, &settings.network, settings.base_port, &taken)?;
        if network.interface_exists(allocation.tap.as_str())? {
            bail!(
                "interface {} already exists (a leftover of an earlier instance?); remove it with: ip link delete {}",
                allocation.tap,
                allocation.tap
            );
        }
        let env = instance_env(spec, &allocation, token)?;
        // Last: nothing after it in here can fail but the writes `reserve` undoes.
        created = Some(network.create_vmm_account(&spec.id)?);
        Ok::<_, anyhow::Error>(env)
    });
    let env = match (reserved, created) {
        (Ok(Ok(env)), Some(account)) => {
            let paths = StatePaths::new(&settings.paths.state_root, &spec.id);
            let recorded = update_fireclaw_state(&paths, |state| {
                state.vmm_account = Some(account.clone());
            });
            if let Err(error) = recorded {
                // Undo the reservation as `reserve` undoes its own failures.
                let _ = network.remove_vmm_account(&account.name);
                let _ = std::fs::remove_dir_all(&paths.dir);
                return Err(error.into());
            }
            (env, account)
        }
        (result, created) => {
            let cleanup =
                created.and_then(|account| network.remove_vmm_account(&account.name).err());
            let error = match result {
                Ok(Ok(env)) => anyhow::anyhow!(
                    "internal: {} was reserved without a VMM account",
                    env.instance_id().unwrap_or("?")
                ),
                Ok(Err(error)) => error,
                Err(error) => error.into(),
            };
            return Err(match cleanup {
                Some(cleanup) => error.context(format!(
                    "and removing its VMM account failed too ({}); clean up with: fireclaw destroy {} --force",
                    error_chain(cleanup.as_ref()),
                    spec.id
                )),
                None => error,
            });
        }
    };
    let (env, account) = env;
    Ok((
        Allocation {
            host_port: HostPort::new(env.host_port()?)?,
            ip: env.vm_ip()?,
            tap: env.tap()?.parse()?,
            mac: env.get("VM_MAC").to_owned(),
        },
        account,
    ))
}

/// The secrets a new instance is created with.
struct NewSecrets<'a> {
    token: &'a GatewayToken,
    host_key: &'a HostKeyPair,
    /// The client public key line the guest trusts.
    authorized_key: &'a str,
    uuid: &'a str,
    managed_by: Option<&'a str>,
}

/// Everything after the reservation, in order: render, write the state files, copy and write the assets, write the units. The phase advances after each group, so
/// an interrupted setup leaves a phase that says how far it got.
#[allow(clippy::too_many_arguments)]
fn install_after_reserve(
    settings: &Settings,
    spec: &SetupSpec,
    tools: &HostTools,
    services: &dyn ServiceManager,
    network: &dyn HostSteps,
    allocation: &Allocation,
    secrets: &NewSecrets<'_>,
    media: BootMedia,
    vmm_account: &VmmAccount,
    origin: Origin<'_>,
) -> Result<()> {
    let importing = matches!(origin, Origin::Import(_));
    let state_paths = StatePaths::new(&settings.paths.state_root, &spec.id);
    let rendered = render_instance(&InstancePlan {
        spec,
        allocation,
        token: secrets.token,
        host_key: secrets.host_key,
        authorized_key: secrets.authorized_key,
        tools,
        network: &settings.network,
        paths: &settings.paths,
        with_initrd: media.with_initrd,
        seed_in_rootfs: media.seed_in_rootfs,
        base_has_packages: media.base_has_packages,
        time: Timestamp::now(),
        vmm_account,
        uuid: secrets.uuid,
        phase: if importing {
            Phase::Importing
        } else {
            Phase::Allocated
        },
        managed_by: secrets.managed_by,
    })?;
    write_state_files(&state_paths, &rendered)?;
    crash_point(if importing {
        "import:state"
    } else {
        "setup:state"
    });
    interrupt::check()?;
    write_assets(settings, &spec.id, &rendered, importing)?;
    let assets = AssetPaths::new(&settings.paths.fc_root, &spec.id);
    if importing {
        write_imported_guest_files(&assets, secrets.authorized_key)?;
        crash_point("import:disk");
    }
    link_api_socket(&spec.api_sock, &assets.vmm_api_sock)?;
    network.confine_files(&assets, media.with_initrd, vmm_account)?;
    if !importing {
        crash_point("setup:confined");
        set_phase(&state_paths, Phase::Assets)?;
        crash_point("setup:assets");
    }
    interrupt::check()?;
    for artifact in &rendered.units {
        write_artifact(artifact)?;
    }
    crash_point(if importing {
        "import:unit-files"
    } else {
        "setup:unit-files"
    });
    services.daemon_reload()?;
    if !importing {
        set_phase(&state_paths, Phase::Units)?;
        crash_point("setup:units");
    }
    Ok(())
}

/// Cloud-init renders a guest's network once per instance id and keeps the seed's first
/// `network-config`; an imported guest keeps its instance id but has a new address and MAC,
/// so it is told to render the network again at every boot.
pub const NETWORK_EVERY_BOOT: &str = "# fireclaw import: this guest moved to another host and address; render the\n\
# network from the seed at every boot, not once per instance id.\n\
updates:\n  network:\n    when: [boot]\n";
/// Where that drop-in goes in the guest.
pub const NETWORK_EVERY_BOOT_PATH: &str = "/etc/cloud/cloud.cfg.d/90-fireclaw-imported.cfg";

/// An imported disk's own files, besides its new seed: this host's client key as the guest
/// user's only authorized key (the source host's is gone), and the network drop-in.
fn write_imported_guest_files(assets: &AssetPaths, authorized_key: &str) -> Result<()> {
    let disk = &assets.rootfs;
    let (uid, gid) = crate::host::rootfs_seed::user_ids(disk, crate::instance::layout::GUEST_USER)
        .with_context(|| format!("read the guest's users in {}", disk.display()))?
        .with_context(|| {
            format!(
                "the imported disk {} has no user '{}' to authorize this host's key for",
                disk.display(),
                crate::instance::layout::GUEST_USER
            )
        })?;
    let home = format!("/home/{}/.ssh", crate::instance::layout::GUEST_USER);
    let keys = assets.config.join("imported-authorized_keys");
    let dropin = assets.config.join("imported-network.cfg");
    write_atomic(
        &keys,
        format!("{}\n", authorized_key.trim()).as_bytes(),
        0o600,
    )?;
    write_atomic(&dropin, NETWORK_EVERY_BOOT.as_bytes(), 0o644)?;
    let files = [
        crate::host::rootfs_seed::GuestFile {
            host_path: keys.clone(),
            target: format!("{home}/authorized_keys"),
            mode: 0o600,
            uid,
            gid,
        },
        crate::host::rootfs_seed::GuestFile {
            host_path: dropin.clone(),
            target: NETWORK_EVERY_BOOT_PATH.to_owned(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    ];
    let written = crate::host::rootfs_seed::write_guest_files(disk, &assets.config, &files)
        .with_context(|| {
            format!(
                "write this host's key and the network drop-in into {}",
                disk.display()
            )
        });
    let _ = std::fs::remove_file(&keys);
    let _ = std::fs::remove_file(&dropin);
    written
}

/// Moves a staged image into place (a rename: both are on FC_ROOT's filesystem), grown to
/// `grow_to` when given; never shrunk.
fn move_image(from: &Path, to: &Path, grow_to: Option<u64>) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("move {} to {}", from.display(), to.display()))?;
    if let Some(size) = grow_to {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(to)
            .with_context(|| format!("open {}", to.display()))?;
        let current = file
            .metadata()
            .with_context(|| format!("read {}", to.display()))?
            .len();
        if current < size {
            file.set_len(size)
                .with_context(|| format!("grow {} to {size} bytes", to.display()))?;
        }
        file.sync_all()
            .with_context(|| format!("sync {}", to.display()))?;
    }
    Ok(())
}

/// `API_SOCK` (the default `FC_ROOT/<id>/firecracker.socket`, or `--api-sock`) is a link to
/// the socket the confined VMM binds in its own dir, so the documented path keeps working.
fn link_api_socket(link: &Path, socket: &Path) -> Result<()> {
    std::os::unix::fs::symlink(socket, link).with_context(|| {
        format!(
            "link the API socket {} to {}",
            link.display(),
            socket.display()
        )
    })
}

fn write_state_files(state_paths: &StatePaths, rendered: &RenderedInstance) -> Result<()> {
    for artifact in &rendered.state {
        // `.env` was written by the reservation; `fireclaw.json` is written again, now with
        // what the reservation does not know (the private-egress allowlist).
        if artifact.path != state_paths.env {
            write_artifact(artifact)?;
        }
    }
    // 0.2.0 makes these empty dirs too.
    for dir in ["config", "workspace"] {
        ensure_private_dir(&state_paths.dir.join(dir))?;
    }
    Ok(())
}

fn write_assets(
    settings: &Settings,
    id: &InstanceId,
    rendered: &RenderedInstance,
    importing: bool,
) -> Result<()> {
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    // Searchable, not listable: each VMM account reaches its own files below.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&settings.paths.fc_root)
        .with_context(|| format!("create {}", settings.paths.fc_root.display()))?;
    // create_dir, not create_dir_all: an asset dir that appeared since the check is an error.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&assets.dir)
        .with_context(|| format!("create {}", assets.dir.display()))?;
    for dir in [&assets.images, &assets.config, &assets.logs] {
        ensure_private_dir(dir)?;
    }
    for copy in &rendered.copies {
        if importing {
            // The archive's files, staged on this filesystem: moved in, not copied again.
            move_image(&copy.from, &copy.to, copy.grow_to)?;
        } else {
            copy_image(&copy.from, &copy.to, copy.grow_to)?;
            crash_point("setup:copying");
        }
    }
    for artifact in &rendered.assets {
        write_artifact(artifact)?;
    }
    // After the cloud-init sources it copies are on disk; the rootfs copy is this instance's
    // own, made from the base checked in `boot_media`, so debugfs never touches a base image.
    if let Some(seed) = &rendered.rootfs_seed {
        write_seed(&seed.image, &seed.host_dir, &seed.files)?;
        crash_point("setup:rootfs-seed");
    }
    Ok(())
}

/// The first boot of a new instance, the steps whose failure rolls the whole setup back:
/// start the VM unit, wait for SSH, mark it booted, provision the guest, mark it provisioned.
/// On failure the instance is torn down and the error says so.
#[allow(clippy::too_many_arguments)]
pub fn first_boot(
    settings: &Settings,
    spec: &SetupSpec,
    loaded: &Loaded,
    services: &dyn ServiceManager,
    guest: &dyn GuestShell,
    network: &dyn HostSteps,
    waits: Waits,
    watch: &mut Stopwatch,
    output: &mut Output<'_>,
) -> Result<Provisioned> {
    let id = &spec.id;
    let result = (|| -> Result<Provisioned> {
        watch.time(STEP_BOOT, || -> Result<()> {
            output.progress(&format!("{id}: booting the VM"));
            services.enable_now(&[loaded.units.vm.as_str()])?;
            crash_point("setup:vm-started");
            await_ssh(loaded, services, guest, waits.ssh, output)
        })?;
        set_phase(&loaded.paths, Phase::Booted)?;
        crash_point("setup:booted");
        let vars = std::fs::read_to_string(&loaded.paths.vars)
            .with_context(|| format!("read {}", loaded.paths.vars.display()))?;
        let provisioned = provision(loaded, guest, &vars, spec.openclaw_pull, watch, output)?;
        set_phase(&loaded.paths, Phase::Provisioned)?;
        crash_point("setup:provisioned");
        Ok(provisioned)
    })();
    result.map_err(|error| {
        let run = watch.finish(false);
        roll_back(settings, spec, services, network, error, Some(&run), output)
    })
}

/// Removes a new instance whose setup failed before provisioning completed; returns the error
/// to report, which says whether the removal worked.
pub fn roll_back(
    settings: &Settings,
    spec: &SetupSpec,
    services: &dyn ServiceManager,
    network: &dyn HostSteps,
    error: anyhow::Error,
    times: Option<&RunTimes>,
    output: &mut Output<'_>,
) -> anyhow::Error {
    let id = &spec.id;
    let interrupted = interrupt::caused(&error);
    output.progress(&format!(
        "{id}: setup {}; removing the instance",
        if interrupted { "interrupted" } else { "failed" }
    ));
    // Before the assets go: the console and VMM logs are what say why a guest never came up.
    let evidence = evidence::keep(settings, id, services, times);
    let mut lines = if interrupted {
        Vec::new()
    } else {
        evidence.lines()
    };
    if interrupted && let Some(dir) = &evidence.dir {
        lines.push(format!("kept for you: {}", dir.display()));
    }
    match teardown_instance(settings, id, Some(&spec.api_sock), services, network) {
        Ok(()) => {
            lines.push(if interrupted {
                format!("instance '{id}' is gone; run the same setup again to start over")
            } else {
                format!(
                    "instance '{id}' is gone; change what the cause names, then run setup again"
                )
            });
            let summary = if interrupted {
                format!("setup of '{id}' was interrupted and rolled back")
            } else {
                format!("setup of '{id}' failed and was rolled back")
            };
            Detailed::wrap(summary, lines, error)
        }
        Err(cleanup) => {
            lines.push(format!(
                "removing the half-made instance failed too ({}); clean up with: fireclaw destroy {id} --force",
                error_chain(cleanup.as_ref())
            ));
            Detailed::wrap(format!("setup of '{id}' failed"), lines, error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::ops::fakes::{CallLog, FakeGuest, FakeHost, FakeServices, ScratchHost};
    use clap::Parser;

    fn spec(host: &ScratchHost, id: &str) -> SetupSpec {
        let cli = Cli::try_parse_from([
            "fireclaw",
            "setup",
            "--instance",
            id,
            "--openai-api-key",
            "sk-test",
            "--disk-size",
            "64M",
        ])
        .unwrap();
        let Command::Setup(args) = cli.command else {
            unreachable!()
        };
        host.settings.resolve_setup(&args).unwrap()
    }

    /// The scratch host's base rootfs is not ext4: the seed goes into seed.img only.
    const SEED_IMAGE_ONLY: BootMedia = BootMedia {
        with_initrd: false,
        seed_in_rootfs: false,
        base_has_packages: false,
    };

    /// Root-owned programs, so the trusted-path rule passes for them as for real binaries.
    fn tools() -> HostTools {
        HostTools {
            fireclaw: "/bin/true".into(),
            firecracker: "/bin/true".into(),
            socat: "/bin/true".into(),
        }
    }

    /// What is on disk after a setup that made nothing: the scratch tree plus the allocation
    /// lock and the dirs the reservation needs.
    fn without_locks(tree: Vec<String>) -> Vec<String> {
        tree.into_iter()
            .filter(|p| !p.starts_with("state/.alloc.lock"))
            .collect()
    }

    #[test]
    fn a_failed_daemon_reload_rolls_the_whole_instance_back() {
        let host = ScratchHost::new();
        let before = host.tree();
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        services.fail_once.set(Some("daemon-reload"));
        let network = FakeHost::new(&log);
        let error = install_instance(
            &host.settings,
            &spec(&host, "t"),
            &tools(),
            &services,
            &network,
            SEED_IMAGE_ONLY,
        )
        .unwrap_err();
        assert!(
            error_chain(error.as_ref()).contains("daemon-reload refused by the test"),
            "{error:?}"
        );
        assert_eq!(
            without_locks(host.tree()),
            before,
            "something was left behind"
        );
        // The units were written, so the rollback reloads systemd once they are gone; the
        // tap named in .env is removed and the policy re-applied without the instance.
        assert_eq!(
            log.calls(),
            [
                "net exists tt2",
                "account create fcvm-t",
                &format!(
                    "account hand-over {} to fcvm-t",
                    host.settings.paths.fc_root.join("t").display()
                ),
                "systemctl daemon-reload",
                "systemctl daemon-reload",
                "net remove-tap tt2",
                "account remove fcvm-t",
                "net reapply-policy",
            ]
        );
    }

    /// Replaces the scratch host's base rootfs with a 32 MiB ext4 made from `tree`, with an
    /// init, cloud-init and sshd (empty files: setup only looks for them).
    fn ext4_base(host: &ScratchHost, tree: &Path) {
        for part in ["usr/sbin/init", "usr/bin/cloud-init", "usr/sbin/sshd"] {
            std::fs::create_dir_all(tree.join(part).parent().unwrap()).unwrap();
            std::fs::write(tree.join(part), "").unwrap();
        }
        let rootfs = host.path("images/rootfs.ext4");
        std::fs::remove_file(&rootfs).unwrap();
        let status = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(tree)
            .arg(&rootfs)
            .arg("32M")
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// `install_instance` against recording fakes whose calls these tests do not look at.
    fn install_with_fakes(
        host: &ScratchHost,
        spec: &SetupSpec,
        media: BootMedia,
    ) -> Result<Installed> {
        let log = CallLog::default();
        install_instance(
            &host.settings,
            spec,
            &tools(),
            &FakeServices::new(&log),
            &FakeHost::new(&log),
            media,
        )
    }

    #[test]
    fn an_ext4_base_gets_the_seed_in_its_copy_and_the_base_is_untouched() {
        let host = ScratchHost::new();
        let tree = tempfile::tempdir().unwrap();
        ext4_base(&host, tree.path());
        let base = std::fs::read(host.path("images/rootfs.ext4")).unwrap();
        let spec = spec(&host, "t");
        let (media, warning) = boot_media(&spec).unwrap();
        assert!(media.seed_in_rootfs && warning.is_none());
        install_with_fakes(&host, &spec, media).unwrap();
        let copy = host.path("fc/t/images/rootfs.ext4");
        let listing = std::process::Command::new("debugfs")
            .args(["-R", "ls -p /var/lib/cloud/seed/nocloud"])
            .arg(&copy)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for name in ["user-data", "meta-data", "network-config"] {
            assert!(
                listing.contains(&format!("/100600/0/0/{name}/")),
                "{listing}"
            );
        }
        assert!(std::fs::read(host.path("images/rootfs.ext4")).unwrap() == base);
    }

    #[test]
    fn a_base_without_an_init_cloud_init_or_sshd_is_refused_before_anything_is_written() {
        let host = ScratchHost::new();
        let tree = tempfile::tempdir().unwrap();
        ext4_base(&host, tree.path());
        std::fs::remove_file(tree.path().join("usr/sbin/sshd")).unwrap();
        std::fs::remove_file(tree.path().join("usr/sbin/init")).unwrap();
        let rootfs = host.path("images/rootfs.ext4");
        std::fs::remove_file(&rootfs).unwrap();
        let status = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(tree.path())
            .arg(&rootfs)
            .arg("32M")
            .status()
            .unwrap();
        assert!(status.success());
        let spec = spec(&host, "t");
        let error = boot_media(&spec).unwrap_err();
        assert_eq!(
            error_chain(error.as_ref()),
            format!(
                "base rootfs {} lacks init (/sbin/init or systemd), SSH server (sshd): no guest could boot from it to where fireclaw reaches it; use a cloud image's root (fireclaw image fetch) or a baked image",
                rootfs.display()
            )
        );
    }

    #[test]
    fn a_seed_that_cannot_be_written_rolls_the_instance_back() {
        let host = ScratchHost::new();
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("var/lib/cloud/seed/nocloud/odd")).unwrap();
        ext4_base(&host, tree.path());
        let before = host.tree();
        let spec = spec(&host, "t");
        let (media, _) = boot_media(&spec).unwrap();
        let error = install_with_fakes(&host, &spec, media).unwrap_err();
        assert!(
            error_chain(error.as_ref()).contains("nocloud/odd in the image is a directory"),
            "{error:?}"
        );
        assert_eq!(without_locks(host.tree()), before);
    }

    #[test]
    fn a_rootfs_that_is_not_ext4_is_refused_only_when_the_kernel_cannot_read_the_seed_image() {
        let host = ScratchHost::new();
        let spec = spec(&host, "t");
        let kernel = host.path("images/vmlinux");
        std::fs::write(&kernel, crate::kernel_fixture::vmlinux_without_iso9660()).unwrap();
        let error = boot_media(&spec).unwrap_err();
        assert!(
            error.to_string().contains("is not ext4 and kernel"),
            "{error}"
        );
        std::fs::write(&kernel, crate::kernel_fixture::vmlinux_with_everything()).unwrap();
        let (media, warning) = boot_media(&spec).unwrap();
        assert!(!media.seed_in_rootfs);
        assert!(warning.unwrap().contains("only from seed.img"));
    }

    #[test]
    fn a_leftover_interface_is_refused_and_nothing_stays() {
        let host = ScratchHost::new();
        let before = host.tree();
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        let network = FakeHost {
            log: &log,
            existing: vec!["tt2".into()],
        };
        let error = install_instance(
            &host.settings,
            &spec(&host, "t"),
            &tools(),
            &services,
            &network,
            SEED_IMAGE_ONLY,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("interface tt2 already exists"),
            "{error}"
        );
        assert_eq!(without_locks(host.tree()), before);
        assert!(!log.calls().contains(&"systemctl daemon-reload".to_owned()));
    }

    #[test]
    fn a_kernel_the_guest_cannot_boot_is_refused_before_anything_is_written() {
        let host = ScratchHost::new();
        let kernel = host.path("images/vmlinux");
        for (image, expected) in [
            (
                crate::kernel_fixture::bzimage(),
                format!(
                    "inspect guest kernel {}: it is a compressed bzImage (vmlinuz)",
                    kernel.display()
                ),
            ),
            (
                crate::kernel_fixture::vmlinux_without("virtio-blk"),
                format!(
                    "guest kernel {}: no built-in virtio-blk (read from its symbol table); a driver built as a module (=m) is missing unless an initrd loads it",
                    kernel.display()
                ),
            ),
        ] {
            std::fs::write(&kernel, image).unwrap();
            let before = host.tree();
            let log = CallLog::default();
            let error = install_instance(
                &host.settings,
                &spec(&host, "t"),
                &tools(),
                &FakeServices::new(&log),
                &FakeHost::new(&log),
                SEED_IMAGE_ONLY,
            )
            .unwrap_err();
            let text = error_chain(error.as_ref());
            assert!(text.starts_with(&expected), "{text}");
            assert_eq!(host.tree(), before, "something was written");
            assert!(log.calls().is_empty(), "{:?}", log.calls());
        }
    }

    #[test]
    fn with_an_initrd_missing_drivers_are_a_warning() {
        let host = ScratchHost::new();
        std::fs::write(
            host.path("images/vmlinux"),
            crate::kernel_fixture::stripped_vmlinux_with_modules(),
        )
        .unwrap();
        let mut spec = spec(&host, "t");
        assert!(check_kernel(&spec).is_err());
        spec.base.initrd = host.path("images/initrd.img");
        std::fs::write(&spec.base.initrd, b"initrd").unwrap();
        let warning = check_kernel(&spec).unwrap().unwrap();
        assert!(
            warning.contains("no built-in virtio-mmio, virtio-blk, virtio-net")
                && warning.ends_with("the initrd must load them as modules"),
            "{warning}"
        );
        spec.base.kernel = host.path("images/absent");
        assert_eq!(
            check_kernel(&spec).unwrap(),
            None,
            "left to the presence checks"
        );
    }

    #[test]
    fn install_then_teardown_leaves_the_host_as_it_was() {
        let host = ScratchHost::new();
        let before = host.tree();
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        let network = FakeHost::new(&log);
        let spec = spec(&host, "t");
        let installed = install_instance(
            &host.settings,
            &spec,
            &tools(),
            &services,
            &network,
            SEED_IMAGE_ONLY,
        )
        .unwrap();
        assert_eq!(installed.allocation.tap.as_str(), "tt2");
        for made in [
            "state/.vm-t/.env",
            "state/.vm-t/fireclaw.json",
            "fc/t/images/seed.img",
            "fc/t/images/rootfs.ext4",
            "units/firecracker-vmdemo-t.service",
            "units/vmdemo-proxy-t.service",
        ] {
            assert!(host.path(made).exists(), "{made} missing");
        }
        let state = crate::store::read_fireclaw_state(&StatePaths::new(
            &host.settings.paths.state_root,
            &spec.id,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(state.phase, Phase::Units);

        // A running instance: teardown stops and disables both units before removing files.
        let mut services = services;
        services.unit_dir = Some(host.settings.paths.unit_dir.clone());
        services.set("firecracker-vmdemo-t.service", "active", "running", 0);
        services.set("vmdemo-proxy-t.service", "active", "running", 0);
        let mark = log.calls().len();
        teardown_instance(
            &host.settings,
            &spec.id,
            Some(&spec.api_sock),
            &services,
            &network,
        )
        .unwrap();
        assert_eq!(
            log.calls()[mark..],
            [
                "unit files present: true",
                "systemctl stop vmdemo-proxy-t.service firecracker-vmdemo-t.service",
                "systemctl disable vmdemo-proxy-t.service firecracker-vmdemo-t.service",
                "systemctl reset-failed vmdemo-proxy-t.service firecracker-vmdemo-t.service",
                "systemctl daemon-reload",
                "net remove-tap tt2",
                "account remove fcvm-t",
                "net reapply-policy",
            ]
        );
        assert_eq!(without_locks(host.tree()), before);
    }

    #[test]
    fn a_first_boot_without_ssh_rolls_the_instance_back() {
        let host = ScratchHost::new();
        let before = host.tree();
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        let network = FakeHost::new(&log);
        let guest = FakeGuest::silent(&log);
        let spec = spec(&host, "t");
        install_instance(
            &host.settings,
            &spec,
            &tools(),
            &services,
            &network,
            SEED_IMAGE_ONLY,
        )
        .unwrap();
        let loaded = crate::ops::instance::load(&host.settings, &spec.id).unwrap();
        // What the guest's serial console said before it went quiet.
        std::fs::write(
            host.path("fc/t/logs/console.log"),
            "[    0.000000] Linux version 6.1\n[    0.9] VFS: Unable to mount root fs\n",
        )
        .unwrap();
        let mark = log.calls().len();
        let waits = Waits {
            ssh: std::time::Duration::ZERO,
            health: std::time::Duration::ZERO,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut watch = Stopwatch::new(crate::instance::timing::TimedVerb::Setup);
        let error = first_boot(
            &host.settings,
            &spec,
            &loaded,
            &services,
            &guest,
            &network,
            waits,
            &mut watch,
            &mut Output::new(&mut out, &mut err),
        )
        .unwrap_err();
        let kept = std::fs::read_dir(host.path("state/.failed"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(
            error_chain(error.as_ref()),
            "setup of 't' failed and was rolled back: SSH to instance 't' did not answer within 0s: ssh to instance 't' (127.0.0.9) failed: Connection refused"
        );
        // Under that line: what the guest said, the likely cause, the kept files and that the
        // instance is gone; no advice to start it.
        let lines = crate::output::detail_lines(error.as_ref());
        assert_eq!(
            lines,
            [
                "the guest's console ended with:".to_owned(),
                "  [    0.000000] Linux version 6.1".to_owned(),
                "  [    0.9] VFS: Unable to mount root fs".to_owned(),
                "likely cause: the guest kernel found no root disk: its virtio-blk or virtio-mmio driver is missing or a module; give an initrd that loads them (--base-initrd) or a kernel with them built in (fireclaw image fetch)".to_owned(),
                format!(
                    "kept for you: {} (console.log, vm-unit.log, steps.txt)",
                    kept[0].display()
                ),
                "instance 't' is gone; change what the cause names, then run setup again".to_owned(),
            ]
        );
        assert!(!lines.iter().any(|l| l.contains("fireclaw start")));
        assert_eq!(
            std::fs::read_to_string(kept[0].join("console.log")).unwrap(),
            "[    0.000000] Linux version 6.1\n[    0.9] VFS: Unable to mount root fs\n"
        );
        // The step the setup failed in, with its time, is kept beside the logs.
        let steps = std::fs::read_to_string(kept[0].join("steps.txt")).unwrap();
        assert!(steps.starts_with("boot to SSH\t0."), "{steps}");
        assert!(steps.contains("setup failed after "), "{steps}");
        assert_eq!(
            log.calls()[mark..],
            [
                "systemctl enable-now firecracker-vmdemo-t.service",
                "ssh probe",
                "journal firecracker-vmdemo-t.service",
                "systemctl stop firecracker-vmdemo-t.service",
                "systemctl disable firecracker-vmdemo-t.service",
                "systemctl reset-failed firecracker-vmdemo-t.service",
                "systemctl daemon-reload",
                "net remove-tap tt2",
                "account remove fcvm-t",
                "net reapply-policy",
            ]
        );
        assert!(
            String::from_utf8(err)
                .unwrap()
                .contains("==> t: setup failed; removing the instance")
        );
        // Everything of the instance is gone; only its evidence stays.
        let after: Vec<String> = without_locks(host.tree())
            .into_iter()
            .filter(|p| !p.starts_with("state/.failed"))
            .collect();
        assert_eq!(after, before);
    }
}
