//! `fireclaw adopt <id>`: an instance made by 0.2.0 gets fireclaw's units and wrapper scripts,
//! rendered by the same renderer `setup` uses from its saved state, after the old ones are
//! copied to `<FC_ROOT>/<id>/backup-0.2.0/`. Its state files stay as they are, so 0.2.0 can
//! still read them. A running VM keeps running; the new unit applies from its next start.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::probe;
use crate::host::systemd::ServiceManager;
use crate::host::trust::check_trusted;
use crate::instance::layout::{AssetPaths, default_api_sock};
use crate::instance::values::InstanceId;
use crate::ops::instance::{Loaded, lock_and_load};
use crate::ops::legacy::is_020_unit;
use crate::ops::lifecycle::unit_state;
use crate::output::Output;
use crate::render::artifacts::{Body, HostTools, UnitsPlan, unit_files};
use crate::settings::Settings;
use crate::store::{ensure_private_dir, write_atomic};

pub fn run(
    settings: &Settings,
    id: &InstanceId,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, id, output)?;
    let unit_dir = &settings.paths.unit_dir;
    if !is_020_unit(&loaded.units.vm_path(unit_dir)) {
        output.line(&format!(
            "Instance {id} already runs under fireclaw's units; nothing to do."
        ));
        return Ok(());
    }
    let tools = trusted_tools()?;
    let backup = back_up_020_files(settings, &loaded)?;
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let files = unit_files(&UnitsPlan {
        id,
        tools: &tools,
        api_sock: loaded
            .env
            .api_sock()
            .unwrap_or_else(|| default_api_sock(&settings.paths.fc_root, id.as_str())),
        host_port: loaded.port,
        vm_ip: loaded.ssh.ip,
        network: &settings.network,
        paths: &settings.paths,
    });
    // Firecracker before 1.14 refuses to start without its log file; 0.2.0 did not create it.
    if !assets.firecracker_log.exists() {
        write_atomic(&assets.firecracker_log, b"", 0o600)?;
    }
    for artifact in files.scripts.iter().chain(&files.units) {
        if let Body::Text(text) = &artifact.body {
            write_atomic(&artifact.path, text.as_bytes(), artifact.mode)?;
        }
    }
    services.daemon_reload()?;
    let running = unit_state(services, &loaded.units.vm)?.is_active();
    output.line(&format!(
        "Instance {id} now runs under fireclaw's units; the old ones are in {}.",
        backup.display()
    ));
    if running {
        output.line(&format!(
            "Its VM keeps running; the new unit applies from its next start (fireclaw restart {id})."
        ));
    }
    Ok(())
}

/// The programs the new units run, each checked by the trusted-path rule (root runs them).
fn trusted_tools() -> Result<HostTools> {
    let tools = HostTools {
        fireclaw: std::env::current_exe().context("locate the fireclaw binary")?,
        firecracker: probe::which("firecracker").context("firecracker is not on PATH")?,
        socat: probe::which("socat").context("socat is not on PATH")?,
    };
    for (what, path) in [
        ("fireclaw binary", &tools.fireclaw),
        ("firecracker binary", &tools.firecracker),
        ("socat binary", &tools.socat),
    ] {
        check_trusted(what, path)?;
    }
    Ok(tools)
}

/// Copies 0.2.0's units and scripts to `<FC_ROOT>/<id>/backup-0.2.0/`; returns that dir.
fn back_up_020_files(settings: &Settings, loaded: &Loaded) -> Result<PathBuf> {
    let unit_dir = &settings.paths.unit_dir;
    let assets = AssetPaths::new(&settings.paths.fc_root, &loaded.id);
    let backup = assets.dir.join("backup-0.2.0");
    ensure_private_dir(&backup)?;
    let files: [&Path; 4] = [
        &loaded.units.vm_path(unit_dir),
        &loaded.units.proxy_path(unit_dir),
        &assets.start_script,
        &assets.stop_script,
    ];
    for file in files {
        if let (Ok(text), Some(name)) = (std::fs::read(file), file.file_name()) {
            write_atomic(&backup.join(name), &text, 0o600)?;
        }
    }
    Ok(backup)
}
