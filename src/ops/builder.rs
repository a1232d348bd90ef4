//! The builder VM of `fireclaw image bake` as the host sees it outside a bake: whether one is
//! left (`doctor`), and removing it and what else a killed bake left in the images directory
//! (its staging copy, a record whose file never arrived), for the next bake and for
//! `host cleanup`.

use std::path::Path;

use anyhow::{Context, Result};

use crate::host::download::digest_file;
use crate::host::systemd::ServiceManager;
use crate::instance::baked::BUILDER_ID;
use crate::instance::layout::{AssetPaths, StatePaths, UnitNames, default_api_sock};
use crate::instance::values::InstanceId;
use crate::ops::instance::lock;
use crate::ops::network::HostSystem;
use crate::ops::teardown::teardown_instance;
use crate::output::Output;
use crate::settings::Settings;
use crate::store::{
    IMAGE_STAGING_PREFIX, StoreError, install_image, lock_image_dir, read_baked_manifest,
    write_baked_manifest,
};

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

/// Whether a bake is running now: it holds the builder's lifecycle lock.
pub fn bake_running(settings: &Settings) -> bool {
    BUILDER_ID
        .parse::<InstanceId>()
        .is_ok_and(|id| crate::store::instance_lock_held(&settings.paths.state_root, &id))
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

/// `host cleanup`'s part in the images directory: what killed bakes (or fetches) left. A bake
/// killed after its record (the commit point) and before its rename is finished; other staging
/// copies and records whose file never arrived are removed. A fetch or bake using the
/// directory right now makes this an error that says so (see [`images_busy`]). Returns one
/// sentence per thing done.
pub fn remove_image_leftovers(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let _lock = lock_image_dir(dir)?;
    remove_image_leftovers_locked(dir)
}

/// Whether `error` says a fetch or bake holds the images directory.
pub fn images_busy(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<StoreError>(),
        Some(StoreError::ImagesBusy { .. })
    )
}

/// [`remove_image_leftovers`] for a caller that holds the directory's lock.
pub fn remove_image_leftovers_locked(dir: &Path) -> Result<Vec<String>> {
    let mut removed = finish_recorded_installs(dir)?;
    removed.extend(
        crate::store::remove_stale_staging(dir)?
            .into_iter()
            .map(|name| format!("removed {}", dir.join(name).display())),
    );
    if let Some(mut manifest) = read_baked_manifest(dir)? {
        let (kept, gone): (Vec<_>, Vec<_>) = manifest
            .images
            .into_iter()
            .partition(|r| dir.join(&r.file).is_file());
        manifest.images = kept;
        if !gone.is_empty() {
            write_baked_manifest(dir, &manifest)?;
            removed.extend(gone.iter().map(|r| {
                format!(
                    "removed the record of baked image '{}' (its file is gone)",
                    r.name
                )
            }));
        }
    }
    Ok(removed)
}

/// A bake killed between writing its record and renaming its file into place leaves the whole
/// file in a staging dir: it is installed now when its SHA-256 is the record's (the record is
/// the commit point), so a `--force` rebake never leaves the old file under the new record.
/// Says what was installed; the staging dirs themselves are removed by the caller.
fn finish_recorded_installs(dir: &Path) -> Result<Vec<String>> {
    let Some(manifest) = read_baked_manifest(dir)? else {
        return Ok(Vec::new());
    };
    let entries = std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?;
    let mut finished = Vec::new();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(IMAGE_STAGING_PREFIX)
        {
            continue;
        }
        for record in &manifest.images {
            let staged = entry.path().join(&record.file);
            let size = std::fs::metadata(&staged).map_or(None, |m| m.is_file().then_some(m.len()));
            if size != Some(record.size) {
                continue;
            }
            let (sha256, _) = digest_file(&staged)?;
            if sha256.to_string() == record.sha256 {
                install_image(&staged, &dir.join(&record.file), true)?;
                finished.push(format!(
                    "finished installing baked image '{}' (its bake was interrupted after recording it)",
                    record.name
                ));
            }
        }
    }
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::baked::{BakedManifest, BakedRecord};

    /// SHA-256 of b"test".
    const TEST_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_staged_file_matching_its_record_is_installed_and_every_other_leftover_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let mut manifest = BakedManifest::default();
        manifest.record(BakedRecord::sample("bots", 4, TEST_SHA256));
        manifest.record(BakedRecord::sample("web", 4, TEST_SHA256));
        manifest.record(BakedRecord::sample("gone", 4, TEST_SHA256));
        write_baked_manifest(dir, &manifest).unwrap();
        // bots: killed after its record; web: an older file, and a staged copy whose bytes are
        // not the record's (killed before the record, say); gone: no file anywhere.
        let staging = dir.join(format!("{IMAGE_STAGING_PREFIX}42"));
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("bots.ext4"), b"test").unwrap();
        std::fs::write(staging.join("web.ext4"), b"TEST").unwrap();
        std::fs::write(dir.join("web.ext4"), b"test").unwrap();

        let done = remove_image_leftovers_locked(dir).unwrap();
        assert_eq!(
            done,
            [
                "finished installing baked image 'bots' (its bake was interrupted after recording it)"
                    .to_owned(),
                format!("removed {}", staging.display()),
                "removed the record of baked image 'gone' (its file is gone)".to_owned(),
            ]
        );
        assert_eq!(std::fs::read(dir.join("bots.ext4")).unwrap(), b"test");
        assert_eq!(std::fs::read(dir.join("web.ext4")).unwrap(), b"test");
        assert!(!staging.exists());
        let kept = read_baked_manifest(dir).unwrap().unwrap();
        let names: Vec<&str> = kept.images.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["bots", "web"]);
        // Nothing left: a second pass does nothing.
        assert!(remove_image_leftovers_locked(dir).unwrap().is_empty());
    }
}
