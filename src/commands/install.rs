//! The host half of creating an instance, and its inverse. `install_instance` runs the steps
//! that need no guest: refuse leftovers, check the binaries the units will run, reserve the
//! allocation, write state, copy and render the VM assets, write both units and reload systemd,
//! advancing the phase in `fireclaw.json` after each. Any failure removes exactly what was made
//! for this instance. `teardown_instance` removes an instance's units, tap, socket, state and
//! assets, and leaves shared pieces (bridge, chains, forwarding) alone.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::faults::crash_point;
use crate::host::assets::copy_image;
use crate::host::netlink::Netlink;
use crate::host::probe;
use crate::host::systemd::ServiceManager;
use crate::host::trust::check_trusted;
use crate::instance::layout::{AssetPaths, UnitNames};
use crate::instance::plan::{Allocation, allocate, instance_env};
use crate::instance::secrets::{generate_host_key, generate_token};
use crate::instance::spec::SetupSpec;
use crate::instance::state::Phase;
use crate::instance::store::{
    StatePaths, ensure_private_dir, lock_allocation, reserve, set_phase, write_atomic,
};
use crate::instance::values::InstanceId;
use crate::render::artifacts::{Artifact, Body, HostTools, InstancePlan, render_instance};
use crate::render::seed_image::Timestamp;
use crate::settings::Settings;

/// A new instance whose host side is in place (phase `units`).
#[derive(Debug, Clone)]
pub struct Installed {
    pub allocation: Allocation,
    pub units: UnitNames,
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

/// The client key (`SSH_KEY_PATH`, `.pub` beside it): read, or generated when missing. The
/// check and the generation happen under the allocation lock: concurrent setups must not each
/// write a different key (the last writer would win and the others' guests trust a key that
/// no longer exists).
pub fn client_public_key(state_root: &Path, key_path: &Path) -> Result<String> {
    let mut public = key_path.as_os_str().to_owned();
    public.push(".pub");
    let public = PathBuf::from(public);
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

/// Creates the host side of a new instance. On failure everything made for it is removed.
pub fn install_instance(
    settings: &Settings,
    spec: &SetupSpec,
    tools: &HostTools,
    services: &dyn ServiceManager,
) -> Result<Installed> {
    check_not_existing(settings, spec)?;
    // Units record these paths; root runs them at every VM start.
    check_trusted("fireclaw binary", &tools.fireclaw)?;
    check_trusted("firecracker binary", &tools.firecracker)?;
    check_trusted("socat binary", &tools.socat)?;
    for (what, path) in [
        ("base kernel", &spec.base.kernel),
        ("base rootfs", &spec.base.rootfs),
    ] {
        if !path.is_file() {
            bail!("{what} {} is missing", path.display());
        }
    }
    let with_initrd = spec.base.initrd.is_file();
    let authorized_key = client_public_key(&settings.paths.state_root, &spec.ssh_key_path)?;
    let token = generate_token()?;
    let host_key = generate_host_key(spec.id.as_str())?;

    // Allocation and `.env` happen under the allocation lock, with `.vm-<id>` made by mkdir.
    let listening = probe::listening_tcp_ports();
    let env = reserve(&settings.paths.state_root, &spec.id, |taken| {
        let mut taken = taken.clone();
        taken.listening = listening.clone();
        let allocation = allocate(spec, &settings.network, settings.base_port, &taken)?;
        let env = instance_env(spec, &allocation, &token)?;
        Ok::<_, anyhow::Error>(env)
    })??;
    crash_point("setup:reserved");
    let allocation = Allocation {
        host_port: crate::instance::values::HostPort::new(env.host_port()?)?,
        ip: env.vm_ip()?,
        tap: env.tap()?.parse()?,
        mac: env.get("VM_MAC").to_owned(),
    };
    let result = install_after_reserve(
        settings,
        spec,
        tools,
        services,
        &allocation,
        &token,
        &host_key,
        &authorized_key,
        with_initrd,
    );
    if let Err(error) = result {
        if let Err(cleanup) = teardown_instance(settings, &spec.id, Some(&spec.api_sock), services)
        {
            return Err(error.context(format!("and cleaning up failed too: {cleanup:#}")));
        }
        return Err(error);
    }
    Ok(Installed {
        allocation,
        units: UnitNames::new(&spec.id),
    })
}

#[allow(clippy::too_many_arguments)]
fn install_after_reserve(
    settings: &Settings,
    spec: &SetupSpec,
    tools: &HostTools,
    services: &dyn ServiceManager,
    allocation: &Allocation,
    token: &crate::instance::state::GatewayToken,
    host_key: &crate::render::cloud_init::HostKeyPair,
    authorized_key: &str,
    with_initrd: bool,
) -> Result<()> {
    let state_paths = StatePaths::new(&settings.paths.state_root, &spec.id);
    // A leftover interface with the derived tap name would be taken over or refused later.
    if Netlink::open()?.link(allocation.tap.as_str())?.is_some() {
        bail!(
            "interface {} already exists (a leftover of an earlier instance?); remove it with: ip link delete {}",
            allocation.tap,
            allocation.tap
        );
    }
    let rendered = render_instance(&InstancePlan {
        spec,
        allocation,
        token,
        host_key,
        authorized_key,
        tools,
        network: &settings.network,
        paths: &settings.paths,
        with_initrd,
        time: Timestamp::now(),
    })?;
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
    crash_point("setup:state");

    let assets = AssetPaths::new(&settings.paths.fc_root, &spec.id);
    ensure_private_dir(&settings.paths.fc_root)?;
    // create_dir, not create_dir_all: an asset dir that appeared since the check is an error.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&assets.dir)
        .with_context(|| format!("create {}", assets.dir.display()))?;
    for dir in [&assets.images, &assets.config, &assets.logs] {
        ensure_private_dir(dir)?;
    }
    for copy in &rendered.copies {
        copy_image(&copy.from, &copy.to, copy.grow_to)?;
        crash_point("setup:copying");
    }
    for artifact in &rendered.assets {
        write_artifact(artifact)?;
    }
    set_phase(&state_paths, Phase::Assets)?;
    crash_point("setup:assets");

    for artifact in &rendered.units {
        write_artifact(artifact)?;
    }
    crash_point("setup:unit-files");
    services.daemon_reload()?;
    set_phase(&state_paths, Phase::Units)?;
    crash_point("setup:units");
    Ok(())
}

fn remove_path(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("remove {}", path.display()))
}

/// Removes an instance: stops and disables its units, removes the unit files, its tap and API
/// socket, its state and assets. Shared pieces stay. Missing parts are fine, so it also cleans
/// half-made instances. `api_sock` is the socket path when known (from state or the spec).
pub fn teardown_instance(
    settings: &Settings,
    id: &InstanceId,
    api_sock: Option<&Path>,
    services: &dyn ServiceManager,
) -> Result<()> {
    let units = UnitNames::new(id);
    let unit_files = [
        units.proxy_path(&settings.paths.unit_dir),
        units.vm_path(&settings.paths.unit_dir),
    ];
    let names = [units.proxy.as_str(), units.vm.as_str()];
    let states = services.states(&names).unwrap_or_default();
    let loaded: Vec<&str> = states
        .iter()
        .filter(|s| s.exists())
        .map(|s| s.name.as_str())
        .collect();
    if !loaded.is_empty() {
        services.stop(&loaded)?;
        let _ = services.disable(&loaded);
        services.reset_failed(&loaded)?;
    }
    let had_unit_files = unit_files.iter().any(|p| p.exists());
    for file in &unit_files {
        remove_path(file)?;
    }
    super::egress::remove_legacy_dropin(settings, &units.vm)?;
    if had_unit_files {
        services.daemon_reload()?;
    }
    crash_point("destroy:units-removed");
    // The tap and socket are named in state; fall back to what the caller knows.
    let state_paths = StatePaths::new(&settings.paths.state_root, id);
    let env = crate::instance::store::read_env(&state_paths).ok();
    if let Some(tap) = env.as_ref().and_then(|e| e.tap().ok()) {
        crate::host::tap::remove_tap(tap)?;
    }
    let socket = env
        .as_ref()
        .and_then(|e| e.api_sock())
        .or_else(|| api_sock.map(Path::to_owned))
        .unwrap_or_else(|| crate::settings::default_api_sock(&settings.paths.fc_root, id.as_str()));
    remove_path(&socket)?;
    remove_path(&AssetPaths::new(&settings.paths.fc_root, id).dir)?;
    remove_path(&state_paths.dir)?;
    // Its allow rules go with it: an instance given its address later must not inherit them.
    // Notes about other instances' allowlists are doctor's to report.
    super::egress::reapply_if_present(settings)?;
    Ok(())
}
