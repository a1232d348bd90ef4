//! `fireclaw adopt <id>`: an instance made by 0.2.0, or by fireclaw before its VMM was
//! confined, gets the confined shape: its own VMM account (recorded in `fireclaw.json`), its
//! files handed over as `setup` hands them, Firecracker's log moved into the VMM's dir, and
//! fireclaw's confined units and wrapper scripts, rendered by the same renderer `setup` uses
//! from its saved state. 0.2.0's units and scripts are first copied to
//! `<FC_ROOT>/<id>/backup-0.2.0/`. 0.2.0's state files stay as they are, so 0.2.0 can still
//! read them. A running VM keeps running as it is; the new unit applies from its next start.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::probe;
use crate::host::systemd::ServiceManager;
use crate::host::trust::check_trusted;
use crate::instance::layout::{AssetPaths, default_api_sock};
use crate::instance::state::{FireclawState, Phase};
use crate::instance::values::InstanceId;
use crate::ops::instance::{Loaded, lock_and_load};
use crate::ops::legacy::is_020_unit;
use crate::ops::lifecycle::unit_state;
use crate::ops::network::{HostSteps, HostSystem};
use crate::output::Output;
use crate::render::artifacts::{Body, HostTools, UnitsPlan, VmmSize, unit_files};
use crate::settings::Settings;
use crate::store::{ensure_private_dir, lock_allocation, read_fireclaw_state, write_atomic};

pub fn run(
    settings: &Settings,
    id: &InstanceId,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, id, output)?;
    let unit_dir = &settings.paths.unit_dir;
    let from_020 = is_020_unit(&loaded.units.vm_path(unit_dir));
    let recorded = read_fireclaw_state(&loaded.paths)?.and_then(|s| s.vmm_account);
    if !from_020 && recorded.is_some() {
        output.line(&format!(
            "Instance {id} already runs under fireclaw's confined units; nothing to do."
        ));
        return Ok(());
    }
    let tools = trusted_tools()?;
    let host = HostSystem { settings };
    let mut changed = Vec::new();
    if from_020 {
        let backup = back_up_020_files(settings, &loaded)?;
        changed.push(format!(
            "0.2.0's units and scripts copied to {}",
            backup.display()
        ));
    }
    let account = match recorded {
        Some(account) => account,
        None => {
            let account = {
                let _allocation = lock_allocation(&settings.paths.state_root)?;
                host.create_vmm_account(id)?
            };
            // A 0.2.0 instance has no fireclaw.json: it is a working instance, not a half-made one.
            let mut state = read_fireclaw_state(&loaded.paths)?
                .unwrap_or_else(|| FireclawState::new(Phase::Provisioned));
            state.vmm_account = Some(account.clone());
            let record = write_atomic(
                &loaded.paths.fireclaw_json,
                state.render().as_bytes(),
                0o600,
            );
            if let Err(error) = record {
                let _ = host.remove_vmm_account(&account.name);
                return Err(error.into());
            }
            changed.push(format!(
                "its VMM account {} (uid {}) created and recorded in fireclaw.json",
                account.name, account.uid
            ));
            account
        }
    };
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    if move_vmm_log(&assets)? {
        changed.push(format!(
            "Firecracker's log moved to {} (in vm-config.json)",
            assets.vmm_log.display()
        ));
    }
    host.confine_files(&assets, assets.initrd.exists(), &account)?;
    changed.push(format!(
        "{} handed over: the VMM owns its disk and {}, may read its kernel, seed and config; the rest stays root's",
        assets.dir.display(),
        assets.vmm_dir.display()
    ));
    let memory_mib = loaded.env.get("VM_MEM_MIB").parse::<u32>();
    let vcpus = loaded.env.get("VM_VCPU").parse::<u8>();
    let (Ok(memory_mib), Ok(vcpus)) = (memory_mib, vcpus) else {
        anyhow::bail!(
            "instance {id}: VM_VCPU '{}' or VM_MEM_MIB '{}' in its .env is not a number; fix it first",
            crate::instance::values::escaped(loaded.env.get("VM_VCPU")),
            crate::instance::values::escaped(loaded.env.get("VM_MEM_MIB"))
        );
    };
    let files = unit_files(&UnitsPlan {
        id,
        tools: &tools,
        api_sock: loaded
            .env
            .api_sock()
            .unwrap_or_else(|| default_api_sock(&settings.paths.fc_root, id.as_str())),
        vmm: Some(VmmSize {
            account: &account,
            vcpus,
            memory_mib,
        }),
        host_port: loaded.port,
        vm_ip: loaded.ssh.ip,
        network: &settings.network,
        paths: &settings.paths,
    });
    for artifact in files.scripts.iter().chain(&files.units) {
        if let Body::Text(text) = &artifact.body {
            write_atomic(&artifact.path, text.as_bytes(), artifact.mode)?;
        }
    }
    services.daemon_reload()?;
    changed.push(format!(
        "units {} and {} and the wrapper scripts rewritten: Firecracker runs as {} under systemd's sandboxing",
        loaded.units.vm, loaded.units.proxy, account.name
    ));
    let running = unit_state(services, &loaded.units.vm)?.is_active();
    output.line(&format!("Instance {id} now has a confined VMM:"));
    for change in &changed {
        output.line(&format!("  - {change}"));
    }
    if running {
        output.line(&format!(
            "Its VM keeps running as root; the confined unit applies from its next start (fireclaw restart {id})."
        ));
    }
    Ok(())
}

/// Points Firecracker's logger at the VMM's own dir (an unconfined VMM logs under `logs/`,
/// which stays root's), changing nothing else in `vm-config.json`. Returns whether it changed.
fn move_vmm_log(assets: &AssetPaths) -> Result<bool> {
    let text = std::fs::read_to_string(&assets.vm_config)
        .with_context(|| format!("read {}", assets.vm_config.display()))?;
    let mut config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", assets.vm_config.display()))?;
    let wanted = serde_json::Value::String(assets.vmm_log.to_string_lossy().into_owned());
    let Some(logger) = config.get_mut("logger").and_then(|l| l.as_object_mut()) else {
        return Ok(false);
    };
    if logger.get("log_path") == Some(&wanted) {
        return Ok(false);
    }
    logger.insert("log_path".into(), wanted);
    let mut rendered = serde_json::to_string_pretty(&config)?;
    rendered.push('\n');
    write_atomic(&assets.vm_config, rendered.as_bytes(), 0o600)?;
    Ok(true)
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
