//! Instances made by fireclaw 0.2.0: telling their VM unit from ours (its `ExecStart` is
//! `start-vm.sh`), finding every such unit, and the drop-in that puts one under the guest
//! network policy (0.2.0's own script never applies it).

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::instance::layout::{START_SCRIPT, UnitNames};
use crate::instance::values::InstanceId;
use crate::settings::Settings;
use crate::store::scan_instances;

/// The drop-in that puts a 0.2.0-made VM unit under the policy.
pub const LEGACY_DROPIN: &str = "fireclaw-egress.conf";

/// Whether the unit file at `path` was written by fireclaw 0.2.0 (its ExecStart is start-vm.sh).
pub fn is_020_unit(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines().any(|l| {
                l.starts_with("ExecStart=") && l.trim_end().ends_with(&format!("/{START_SCRIPT}"))
            })
        })
        .unwrap_or(false)
}

/// Where the policy drop-in of VM unit `unit` lives.
pub fn dropin_path(settings: &Settings, unit: &str) -> PathBuf {
    settings
        .paths
        .unit_dir
        .join(format!("{unit}.d"))
        .join(LEGACY_DROPIN)
}

/// VM units made by 0.2.0, with their instance ids.
pub fn legacy_vm_units(settings: &Settings) -> Result<Vec<(InstanceId, String)>> {
    let mut units = Vec::new();
    for scanned in scan_instances(&settings.paths.state_root)? {
        let Ok(id) = scanned.name.parse::<InstanceId>() else {
            continue;
        };
        let units_of = UnitNames::new(&id);
        if is_020_unit(&units_of.vm_path(&settings.paths.unit_dir)) {
            units.push((id, units_of.vm));
        }
    }
    Ok(units)
}
