//! doctor's checks of baked base images (`fireclaw image bake`): every baked image an instance
//! was made from, or the default base names, still matches its record; its OpenClaw image is
//! not older than 30 days; each such instance runs the kernel the image was baked with; and a
//! builder VM that an interrupted bake left behind is named, while one that is running is not
//! taken for a leftover (staging copies are named with the base images' checks).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use super::checks::{Check, Level, check};
use crate::host::snapshot::unix_now_secs;
use crate::instance::baked::{BUILDER_ID, BakeName, BakedRecord, STALE_AFTER_DAYS};
use crate::instance::layout::{AssetPaths, StatePaths};
use crate::instance::values::InstanceId;
use crate::ops::baked_base::{check_file, kernel_warning, rebuild_command, record_of};
use crate::output::error_chain;
use crate::settings::Settings;
use crate::store::{ScannedInstance, read_fireclaw_state};

pub fn checks(settings: &Settings, scanned: &[ScannedInstance], checks: &mut Vec<Check>) {
    if crate::ops::builder::bake_running(settings) {
        checks.push(check(
            "image bake builder",
            Level::Pass,
            format!("an image bake is running (its builder VM is '{BUILDER_ID}')"),
        ));
    } else if crate::ops::builder::builder_left(settings) {
        checks.push(check(
            "image bake builder",
            Level::Warn,
            format!(
                "the builder VM '{BUILDER_ID}' of an interrupted image bake is still on the host; remove it with: fireclaw host cleanup (or the next fireclaw image bake)"
            ),
        ));
    }
    // Which baked files are in use: by each instance (fireclaw.json names the file, or, in the
    // first records, only the image's name in BASE_IMAGES_DIR), and as the default base.
    let mut users: BTreeMap<PathBuf, Vec<InstanceId>> = BTreeMap::new();
    for instance in scanned {
        let Ok(id) = instance.name.parse::<InstanceId>() else {
            continue;
        };
        let state = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &id));
        let Ok(Some(state)) = state else {
            continue;
        };
        let file = match (state.baked_file, state.baked_image) {
            (Some(file), _) => file,
            (None, Some(name)) => match BakeName::from_str(&name) {
                Ok(name) => settings.base_images_dir.join(name.file_name()),
                Err(_) => continue,
            },
            (None, None) => continue,
        };
        users.entry(file).or_default().push(id);
    }
    if let Some(default_base) = &settings.flag_defaults.base_rootfs {
        users.entry(PathBuf::from(default_base)).or_default();
    }
    let mut used: Vec<(BakedRecord, PathBuf, Vec<InstanceId>)> = Vec::new();
    for (file, ids) in users {
        match record_of(&file) {
            Ok(Some(record)) => used.push((record, file, ids)),
            // The default base need not be baked.
            Ok(None) if ids.is_empty() => {}
            Ok(None) => checks.push(check(
                &format!("baked image {}", file.display()),
                Level::Warn,
                format!(
                    "instances {} were made from baked image {}, whose record (fireclaw-baked.json beside it) is gone",
                    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    file.display()
                ),
            )),
            Err(error) => checks.push(check(
                &format!("baked image {}", file.display()),
                Level::Warn,
                error_chain(error.as_ref()),
            )),
        }
    }
    let now = unix_now_secs();
    for (record, file, ids) in &used {
        let name = format!("baked image {}", record.name);
        if let Err(error) = check_file(file, record, false) {
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
                    rebuild_command(record, file)
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
            let kernel = AssetPaths::new(&settings.paths.fc_root, id).kernel;
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
