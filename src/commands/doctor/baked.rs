//! doctor's checks of baked base images (`fireclaw image bake`): every baked image an instance
//! was made from, or the default base names, still matches its record; its OpenClaw image is
//! not older than 30 days; each such instance runs the kernel the image was baked with; and a
//! builder VM that an interrupted bake left behind is named.

use super::checks::{Check, Level, check};
use crate::host::snapshot::unix_now_secs;
use crate::instance::baked::{BUILDER_ID, BakedRecord, STALE_AFTER_DAYS};
use crate::instance::layout::{AssetPaths, StatePaths};
use crate::instance::values::InstanceId;
use crate::ops::baked_base::{check_file, kernel_warning, rebuild_command};
use crate::output::error_chain;
use crate::settings::Settings;
use crate::store::{ScannedInstance, read_baked_manifest, read_fireclaw_state};

pub fn checks(settings: &Settings, scanned: &[ScannedInstance], checks: &mut Vec<Check>) {
    if crate::ops::builder::builder_left(settings) {
        checks.push(check(
            "image bake builder",
            Level::Warn,
            format!(
                "the builder VM '{BUILDER_ID}' of an interrupted image bake is still on the host; remove it with: fireclaw host cleanup (or the next fireclaw image bake)"
            ),
        ));
    }
    let dir = &settings.base_images_dir;
    let manifest = match read_baked_manifest(dir) {
        Ok(Some(manifest)) => manifest,
        Ok(None) => return,
        Err(error) => {
            checks.push(check("baked images", Level::Warn, error_chain(&error)));
            return;
        }
    };
    // Which baked images are in use: by each instance (fireclaw.json names it), and as the
    // default base when BASE_ROOTFS names a baked file.
    let mut users: Vec<(&BakedRecord, Vec<InstanceId>)> = Vec::new();
    for record in &manifest.images {
        let mut ids = Vec::new();
        for instance in scanned {
            let Ok(id) = instance.name.parse::<InstanceId>() else {
                continue;
            };
            let state = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &id));
            if let Ok(Some(state)) = state
                && state.baked_image.as_deref() == Some(record.name.as_str())
            {
                ids.push(id);
            }
        }
        let default_base = settings
            .flag_defaults
            .base_rootfs
            .as_deref()
            .is_some_and(|path| std::path::Path::new(path) == dir.join(&record.file));
        if !ids.is_empty() || default_base {
            users.push((record, ids));
        }
    }
    let now = unix_now_secs();
    for (record, ids) in users {
        let name = format!("baked image {}", record.name);
        let file = dir.join(&record.file);
        if let Err(error) = check_file(&file, record, false) {
            checks.push(check(&name, Level::Fail, error_chain(error.as_ref())));
            continue;
        }
        match record.age_days(now) {
            Some(days) if days > STALE_AFTER_DAYS => checks.push(check(
                &name,
                Level::Warn,
                format!(
                    "its OpenClaw image {} was baked {days} days ago; refresh it with: {}",
                    record.openclaw.reference,
                    rebuild_command(record)
                ),
            )),
            _ => checks.push(check(
                &name,
                Level::Pass,
                format!(
                    "{} matches its record; OpenClaw {} baked {}",
                    file.display(),
                    record.openclaw.reference,
                    record.baked_at
                ),
            )),
        }
        for id in ids {
            let kernel = AssetPaths::new(&settings.paths.fc_root, &id).kernel;
            if let Some(warning) = kernel_warning(&kernel, record) {
                checks.push(check(
                    &format!("instance {id} kernel"),
                    Level::Warn,
                    warning,
                ));
            }
        }
    }
}
