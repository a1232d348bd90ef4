//! Removing an instance from the host, and every half-made one a failed or killed setup left:
//! stop and disable its units, remove the unit files (and a 0.2.0 unit's policy drop-in), its
//! tap and API socket, its assets and state, then re-apply the guest network policy so none of
//! its allow rules outlives it. Missing parts are fine. What other instances share (bridge,
//! chains, forwarding) stays.

use std::path::Path;

use anyhow::{Context, Result};

use super::egress::remove_legacy_dropin;
use super::network::HostSteps;
use crate::faults::crash_point;
use crate::host::systemd::ServiceManager;
use crate::instance::confinement::account_name;
use crate::instance::layout::{AssetPaths, StatePaths, UnitNames, default_api_sock};
use crate::instance::values::InstanceId;
use crate::settings::Settings;
use crate::store::{read_env, read_fireclaw_state};

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
    network: &dyn HostSteps,
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
    remove_legacy_dropin(settings, &units.vm)?;
    if had_unit_files {
        services.daemon_reload()?;
    }
    crash_point("destroy:units-removed");
    // The tap and socket are named in state; fall back to what the caller knows.
    let state_paths = StatePaths::new(&settings.paths.state_root, id);
    let env = read_env(&state_paths).ok();
    // The VMM account as recorded, or the one a setup killed before recording it would have
    // made (only ever removed when it is in fireclaw's id range).
    let account = read_fireclaw_state(&state_paths)
        .ok()
        .flatten()
        .and_then(|state| state.vmm_account)
        .map_or_else(|| account_name(id), |account| account.name);
    if let Some(tap) = env.as_ref().and_then(|e| e.tap().ok()) {
        network.remove_tap(tap)?;
    }
    let socket = env
        .as_ref()
        .and_then(|e| e.api_sock())
        .or_else(|| api_sock.map(Path::to_owned))
        .unwrap_or_else(|| default_api_sock(&settings.paths.fc_root, id.as_str()));
    remove_path(&socket)?;
    remove_path(&AssetPaths::new(&settings.paths.fc_root, id).dir)?;
    // After its files, before the state that names it: no file of it outlives the account, and
    // an interrupted destroy still finds which account to remove.
    network.remove_vmm_account(&account)?;
    crash_point("destroy:account-removed");
    remove_path(&state_paths.dir)?;
    // Its allow rules go with it: an instance given its address later must not inherit them.
    // Notes about other instances' allowlists are doctor's to report.
    network.reapply_policy_if_present()?;
    Ok(())
}
