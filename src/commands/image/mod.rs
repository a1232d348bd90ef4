//! `fireclaw image fetch` and `fireclaw image list`: the guest kernel and base rootfs in
//! `BASE_IMAGES_DIR`, fetched and verified (`fetch.rs`), and what the manifest beside them
//! records (`list.rs`).

mod fetch;
mod list;

use anyhow::Result;

use crate::cli::ImageCommand;
use crate::output::Output;
use crate::settings::Settings;

pub fn run(settings: &Settings, command: &ImageCommand, output: &mut Output<'_>) -> Result<()> {
    match command {
        ImageCommand::Fetch(args) => {
            let spec = settings.resolve_image_fetch(args);
            fetch::run(&spec, args.json, output)
        }
        ImageCommand::List(args) => {
            list::run(&settings.images_dir(args.dir.as_deref()), args.json, output)
        }
    }
}
