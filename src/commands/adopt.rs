//! `fireclaw adopt <id>`: an instance made by 0.2.0, or by fireclaw before its VMM was
//! confined or before it could suspend, gets the current shape: its own VMM account (recorded in `fireclaw.json`), its
//! files handed over as `setup` hands them, Firecracker's log moved into the VMM's dir, and
//! fireclaw's confined units and wrapper scripts, rendered by the same renderer `setup` uses
//! from its saved state. 0.2.0's units and scripts are first copied to
//! `<FC_ROOT>/<id>/backup-0.2.0/`. 0.2.0's state files stay as they are, so 0.2.0 can still
//! read them. A running VM keeps running as it is; the new unit applies from its next start.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::host::systemd::ServiceManager;
use crate::instance::confinement::VmmAccount;
use crate::instance::layout::AssetPaths;
use crate::instance::state::FireclawState;
use crate::instance::values::InstanceId;
use crate::ops::instance::{Loaded, lock_and_load};
use crate::ops::legacy::is_020_unit;
use crate::ops::lifecycle::unit_state;
use crate::ops::network::{HostSteps, HostSystem};
use crate::output::Output;
use crate::render::artifacts::VmmSize;
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
    let vm_unit_path = loaded.units.vm_path(unit_dir);
    let from_020 = is_020_unit(&vm_unit_path);
    let state = read_fireclaw_state(&loaded.paths)?;
    let recorded = state.as_ref().and_then(|s| s.vmm_account.clone());
    // Current only once both say so (an adopt cut short may have written one and not the
    // other) and the unit can resume a snapshot (units of fireclaw before suspend cannot).
    let unit_current = std::fs::read_to_string(&vm_unit_path).is_ok_and(|text| {
        recorded
            .as_ref()
            .is_some_and(|a| text.contains(&format!("\nUser={}\n", a.name)))
            && text.contains(crate::ops::suspend::RESUME_HELPER)
    });
    if !from_020 && unit_current {
        output.line(&format!(
            "Instance {id} already runs under fireclaw's confined units; nothing to do."
        ));
        return Ok(());
    }
    // Everything that can be refused is checked before anything changes.
    let (Ok(memory_mib), Ok(vcpus)) = (
        loaded.env.get("VM_MEM_MIB").parse::<u32>(),
        loaded.env.get("VM_VCPU").parse::<u8>(),
    ) else {
        anyhow::bail!(
            "instance {id}: VM_VCPU '{}' or VM_MEM_MIB '{}' in its .env is not a number; fix it first",
            crate::instance::values::escaped(loaded.env.get("VM_VCPU")),
            crate::instance::values::escaped(loaded.env.get("VM_MEM_MIB"))
        );
    };
    let tools = crate::ops::confine::trusted_tools()?;
    crate::ops::confine::check_kvm_access()?;
    crate::ops::confine::check_reachable(
        &settings.paths.fc_root,
        &[&settings.paths.fc_root, &settings.base_images_dir],
    )?;
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let socket_length = assets.vmm_api_sock.as_os_str().len();
    if socket_length > crate::instance::spec::MAX_SOCKET_PATH {
        anyhow::bail!(
            "the VMM's own API socket {} would be {socket_length} bytes; the kernel allows {} (a shorter FC_ROOT is needed to confine this instance)",
            assets.vmm_api_sock.display(),
            crate::instance::spec::MAX_SOCKET_PATH
        );
    }
    if let Some(account) = &recorded
        && !crate::host::accounts::users()?
            .iter()
            .any(|u| u.name == account.name && u.id == account.uid)
    {
        anyhow::bail!(
            "instance {id}: fireclaw.json names VMM account {} (uid {}), which this host does not have; remove \"vmm_account\" from {} (as going back to 0.2.0 does) and run adopt again",
            account.name,
            account.uid,
            loaded.paths.fireclaw_json.display()
        );
    }
    let host = HostSystem { settings };
    let mut changed = Vec::new();
    if from_020 {
        let backup = back_up_020_files(settings, &loaded)?;
        changed.push(format!(
            "0.2.0's units and scripts copied to {}",
            backup.display()
        ));
    }
    let account = match recorded.clone() {
        Some(account) => account,
        None => {
            let users = crate::host::accounts::users()?;
            // An adopt cut short made the account but did not record it yet: take it up.
            if let Some(user) = crate::ops::confine::leftover_account(&users, id)
                .and_then(|name| users.into_iter().find(|u| u.name == name))
            {
                VmmAccount {
                    name: user.name,
                    uid: user.id,
                    gid: user.gid,
                }
            } else {
                let account = {
                    let _allocation = lock_allocation(&settings.paths.state_root)?;
                    host.create_vmm_account(id)?
                };
                changed.push(format!(
                    "its VMM account {} (uid {}) created",
                    account.name, account.uid
                ));
                account
            }
        }
    };
    host.confine_files(&assets, assets.initrd.exists(), &account)?;
    changed.push(format!(
        "{} handed over: the VMM owns its disk and {}, may read its kernel, seed and config; the rest stays root's",
        assets.dir.display(),
        assets.vmm_dir.display()
    ));
    // Only once `vmm/` exists: a VM started before the units are rewritten still finds its log.
    if move_vmm_log(&assets)? {
        // The rewritten config is handed over again (the VMM reads it as its account).
        host.confine_files(&assets, assets.initrd.exists(), &account)?;
        changed.push(format!(
            "Firecracker's log moved to {} (in vm-config.json)",
            assets.vmm_log.display()
        ));
    }
    crate::ops::confine::write_confined_units(
        settings,
        &loaded,
        &tools,
        VmmSize {
            account: &account,
            vcpus,
            memory_mib,
        },
    )?;
    // fireclaw's VM unit applies the guest network policy itself (`vm-net-up`); the drop-in
    // that did it for 0.2.0's unit would now run as the VMM's account and fail the start.
    if crate::ops::legacy::dropin_path(settings, &loaded.units.vm).exists() {
        crate::ops::egress::remove_legacy_dropin(settings, &loaded.units.vm)?;
        changed.push(
            "the policy drop-in of 0.2.0's unit removed (fireclaw's unit applies the policy itself)"
                .to_owned(),
        );
    }
    services.daemon_reload()?;
    changed.push(format!(
        "units {} and {} and the wrapper scripts rewritten: Firecracker runs as {} under systemd's sandboxing",
        loaded.units.vm, loaded.units.proxy, account.name
    ));
    // Recorded last, so `vm-net-up` treats the VM as confined only once its unit is.
    if recorded.is_none() {
        // A 0.2.0 instance has no fireclaw.json: it is a working instance, not a half-made one.
        let mut state = state.unwrap_or_else(FireclawState::adopted_from_020);
        state.vmm_account = Some(account.clone());
        write_atomic(
            &loaded.paths.fireclaw_json,
            state.render().as_bytes(),
            0o600,
        )?;
        changed.push(format!(
            "the account recorded in {}",
            loaded.paths.fireclaw_json.display()
        ));
    }
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
