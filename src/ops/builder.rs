//! The builder VM of `fireclaw image bake` as the host sees it outside a bake: whether one is
//! left (`doctor`), and removing it and what else a killed bake left in the images directory
//! (its staging copy, a record whose file never arrived), for the next bake and for
//! `host cleanup`.

use std::path::Path;

use anyhow::{Context, Result};

use crate::host::systemd::ServiceManager;
use crate::instance::baked::BUILDER_ID;
use crate::instance::layout::{AssetPaths, StatePaths, UnitNames, default_api_sock};
use crate::instance::values::InstanceId;
use crate::ops::instance::lock;
use crate::ops::network::HostSystem;
use crate::ops::teardown::teardown_instance;
use crate::output::Output;
use crate::settings::Settings;
use crate::store::{lock_image_dir, read_baked_manifest, write_baked_manifest};

/// Whether anything of a builder VM is on the host: its state, assets or units.
pub fn builder_left(settings: &Settings) -> bool {
    let Ok(id) = BUILDER_ID.parse::<InstanceId>() else {
        return false;
    };
    let units = UnitNames::new(&id);
    [
        StatePaths::new(&settings.paths.state_root, &id).dir,
        AssetPaths::new(&settings.paths.fc_root, &id).dir,
        units.vm_path(&settings.paths.unit_dir),
        units.proxy_path(&settings.paths.unit_dir),
    ]
    .iter()
    .any(|p| p.symlink_metadata().is_ok())
}

/// Removes a builder VM that a killed bake left (`host cleanup`); waits for a bake that is
/// running, like any command on one instance. Returns whether there was one.
pub fn remove_builder(
    settings: &Settings,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<bool> {
    if !builder_left(settings) {
        return Ok(false);
    }
    let id: InstanceId = BUILDER_ID.parse().context("the builder's id")?;
    let _lock = lock(settings, &id, output)?;
    remove_builder_locked(settings, services)
}

/// [`remove_builder`] for a caller that holds the builder's lock.
pub fn remove_builder_locked(settings: &Settings, services: &dyn ServiceManager) -> Result<bool> {
    if !builder_left(settings) {
        return Ok(false);
    }
    let id: InstanceId = BUILDER_ID.parse().context("the builder's id")?;
    let network = HostSystem { settings };
    let api_sock = default_api_sock(&settings.paths.fc_root, BUILDER_ID);
    teardown_instance(settings, &id, Some(&api_sock), services, &network)
        .context("remove the builder VM an interrupted bake left")?;
    Ok(true)
}

/// `host cleanup`'s part in the images directory: the staging copies and the records whose file
/// never arrived that killed bakes (or fetches) left. A fetch or bake using the directory right
/// now makes this an error that says so.
pub fn remove_image_leftovers(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let _lock = lock_image_dir(dir)?;
    remove_image_leftovers_locked(dir)
}

pub fn remove_image_leftovers_locked(dir: &Path) -> Result<Vec<String>> {
    let mut removed: Vec<String> = crate::store::remove_stale_staging(dir)?
        .into_iter()
        .map(|name| dir.join(name).display().to_string())
        .collect();
    if let Some(mut manifest) = read_baked_manifest(dir)? {
        let (kept, gone): (Vec<_>, Vec<_>) = manifest
            .images
            .into_iter()
            .partition(|r| dir.join(&r.file).is_file());
        manifest.images = kept;
        if !gone.is_empty() {
            write_baked_manifest(dir, &manifest)?;
            removed.extend(
                gone.iter()
                    .map(|r| format!("the record of baked image '{}' (its file is gone)", r.name)),
            );
        }
    }
    Ok(removed)
}
