//! `fireclaw image fetch`, `image bake` and `image list`: the guest kernel and base rootfs in
//! `BASE_IMAGES_DIR`, fetched and verified (`fetch.rs`), base images baked from them with
//! Docker and OpenClaw inside (`bake.rs`), and what the manifests beside them record
//! (`list.rs`).

mod bake;
mod fetch;
mod list;

use anyhow::Result;

use crate::cli::ImageCommand;
use crate::host::systemd::ServiceManager;
use crate::output::Output;
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    command: &ImageCommand,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    match command {
        ImageCommand::Fetch(args) => {
            let spec = settings.resolve_image_fetch(args);
            fetch::run(&spec, args.json, output)
        }
        ImageCommand::Bake(args) => {
            let spec = settings.resolve_bake(args)?;
            bake::run(settings, &spec, args.json, services, output)
        }
        ImageCommand::List(args) => {
            list::run(&settings.images_dir(args.dir.as_deref()), args.json, output)
        }
    }
}
