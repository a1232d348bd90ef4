//! The inputs of the guest network policy and the 0.2.0 units it must cover: the host-wide
//! allowlist file, each instance's saved `allow_private_egress`, the chains they render to,
//! and the drop-in that makes a VM unit written by 0.2.0 apply the policy before it starts. A
//! broken input never widens the policy: an instance or a host-wide file that cannot be read
//! contributes no allow rule. Applying the chains is `network`'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::instance::Loaded;
use super::legacy::{dropin_path, is_020_unit, legacy_vm_units};
use crate::host::firewall::ChainSpec;
use crate::host::systemd::ServiceManager;
use crate::host::trust::check_trusted;
use crate::instance::layout::StatePaths;
use crate::instance::values::{InstanceId, PrivateCidr};
use crate::output::error_chain;
use crate::render::artifacts::pinned_environment;
use crate::render::egress::{EgressPolicy, InstanceEgress, egress_chains};
use crate::render::units::legacy_egress_dropin;
use crate::settings::Settings;
use crate::store::{read_fireclaw_state, scan_instances, write_atomic};

/// The host-wide allowlist, one network per line, `#` starting a comment.
pub const HOST_ALLOW_FILE: &str = "private-egress.allow";

pub fn host_allow_path(settings: &Settings) -> PathBuf {
    settings.paths.state_root.join(HOST_ALLOW_FILE)
}

/// A line of the host-wide allowlist that is not a private network.
#[derive(Debug, thiserror::Error)]
#[error("{path} line {line}")]
pub struct AllowlistLine {
    pub path: PathBuf,
    pub line: usize,
    #[source]
    pub source: crate::instance::values::InvalidValue,
}

/// Reads the host-wide allowlist; a missing file is the empty list.
pub fn read_host_allow(path: &Path) -> Result<Vec<PrivateCidr>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let mut networks = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let network: PrivateCidr = line.parse().map_err(|source| AllowlistLine {
            path: path.to_owned(),
            line: number + 1,
            source,
        })?;
        networks.push(network);
    }
    networks.sort();
    networks.dedup();
    Ok(networks)
}

/// What the policy is built from, and what had to be left out of it.
#[derive(Debug, Default)]
pub struct PolicyInputs {
    pub host_allow: Vec<PrivateCidr>,
    pub instances: Vec<InstanceEgress>,
    /// Why an allowlist was left out (the policy stays closed for it).
    pub skipped: Vec<String>,
}

/// Gathers the inputs. With `strict`, an unreadable host-wide allowlist is an error; without
/// it, the list is skipped with a note, so a VM still starts, under the stricter policy.
pub fn gather(settings: &Settings, strict: bool) -> Result<PolicyInputs> {
    let mut inputs = PolicyInputs::default();
    match read_host_allow(&host_allow_path(settings)) {
        Ok(list) => inputs.host_allow = list,
        Err(e) if strict => return Err(e.context("read the host-wide private-egress allowlist")),
        Err(e) => inputs.skipped.push(format!(
            "host-wide allowlist not applied: {}",
            error_chain(e.as_ref())
        )),
    }
    for scanned in scan_instances(&settings.paths.state_root)? {
        let Ok(id) = scanned.name.parse::<InstanceId>() else {
            continue;
        };
        let state = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &id));
        let allow = match state {
            Ok(Some(state)) => state.allow_private_egress,
            Ok(None) => continue,
            Err(e) => {
                inputs
                    .skipped
                    .push(format!("instance '{id}': {}", error_chain(&e)));
                continue;
            }
        };
        if allow.is_empty() {
            continue;
        }
        match scanned.env.as_ref().map(|env| env.vm_ip()) {
            Ok(Ok(ip)) => inputs.instances.push(InstanceEgress {
                id: id.to_string(),
                ip,
                allow,
            }),
            Ok(Err(e)) => inputs
                .skipped
                .push(format!("instance '{id}': {}", error_chain(&e))),
            Err(e) => inputs
                .skipped
                .push(format!("instance '{id}': {}", error_chain(e))),
        }
    }
    Ok(inputs)
}

pub fn policy_chains(settings: &Settings, inputs: &PolicyInputs) -> Vec<ChainSpec> {
    egress_chains(&EgressPolicy {
        bridge: settings.network.bridge.as_str(),
        bridge_address: settings.network.bridge_address.address(),
        subnet: settings.network.subnet,
        host_allow: &inputs.host_allow,
        instances: &inputs.instances,
    })
}

/// Gives every 0.2.0-made VM unit the drop-in that applies the policy before it starts; returns
/// the units that got one.
pub fn cover_legacy_units(
    settings: &Settings,
    services: &dyn ServiceManager,
) -> Result<Vec<String>> {
    let fireclaw = std::env::current_exe().context("locate the fireclaw binary")?;
    let text = legacy_egress_dropin(
        &fireclaw,
        &pinned_environment(&settings.paths, &settings.network),
    );
    let mut covered = Vec::new();
    for (_, unit) in legacy_vm_units(settings)? {
        let path = dropin_path(settings, &unit);
        if std::fs::read_to_string(&path).is_ok_and(|current| current == text) {
            continue;
        }
        // The drop-in runs this binary as root at every start of that VM.
        check_trusted("fireclaw", &fireclaw)?;
        let dir = path.parent().unwrap_or(&settings.paths.unit_dir);
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        write_atomic(&path, text.as_bytes(), 0o644)?;
        covered.push(unit);
    }
    if !covered.is_empty() {
        services.daemon_reload()?;
    }
    Ok(covered)
}

/// Covers the instance's VM unit with the policy drop-in when 0.2.0 wrote that unit
/// (fireclaw's own units run `vm-net-up`, which applies the policy). `start`, `restart` and
/// `provision` call this before they start the VM.
pub fn cover_if_made_by_020(
    settings: &Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
) -> Result<()> {
    if is_020_unit(&loaded.units.vm_path(&settings.paths.unit_dir)) {
        cover_legacy_units(settings, services)?;
    }
    Ok(())
}

/// Removes the drop-in of a 0.2.0-made VM unit (on destroy); absent is fine.
pub fn remove_legacy_dropin(settings: &Settings, unit: &str) -> Result<()> {
    let path = dropin_path(settings, unit);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        // Only when empty: an operator's own drop-ins stay.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_allowlist_file_is_parsed_with_comments_and_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOST_ALLOW_FILE);
        assert!(read_host_allow(&path).unwrap().is_empty());
        std::fs::write(
            &path,
            "# registry\n10.20.0.0/16  # vpc\n\n192.168.1.5\n10.20.0.0/16\n",
        )
        .unwrap();
        let list: Vec<String> = read_host_allow(&path)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(list, ["10.20.0.0/16", "192.168.1.5/32"]);
        std::fs::write(&path, "10.0.0.0/8\n8.8.8.8/32\n").unwrap();
        let error = error_chain(read_host_allow(&path).unwrap_err().as_ref());
        assert!(
            error.contains("line 2") && error.contains("not inside"),
            "{error}"
        );
    }
}
