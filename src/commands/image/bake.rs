//! `fireclaw image bake`: the workflow is `ops::bake`; this prints what it made and the setup
//! that uses it.

use anyhow::Result;

use crate::host::systemd::ServiceManager;
use crate::instance::images::human_bytes;
use crate::ops::bake::{Baked, bake};
use crate::output::Output;
use crate::render::units::shell_word;
use crate::settings::{BakeSpec, Settings};

pub fn run(
    settings: &Settings,
    spec: &BakeSpec,
    json: bool,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let Baked { record, target } = bake(settings, spec, services, output)?;
    if json {
        output.line(&serde_json::to_string_pretty(&record)?);
    } else {
        output.line(&format!(
            "Baked {} ({}): OpenClaw {} ({}), Docker {}, browser {}.",
            target.display(),
            human_bytes(record.size),
            record.openclaw.reference,
            record.openclaw.image_id,
            record.docker_version,
            if record.browser { "yes" } else { "no" }
        ));
        // setup --base-image looks in BASE_IMAGES_DIR; a file baked elsewhere (--dir) is named
        // by its path, and its record is read from beside it.
        let base = if spec.images_dir == settings.base_images_dir {
            format!("--base-image {}", spec.name)
        } else {
            format!(
                "--base-rootfs {}",
                shell_word(&target.display().to_string())
            )
        };
        output.line(&format!(
            "Next: fireclaw setup --instance <id> {base} --base-kernel {} ...",
            shell_word(&record.kernel.path)
        ));
    }

    Ok(())
}
