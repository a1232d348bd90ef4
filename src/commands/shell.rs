//! `fireclaw shell <id> [command]`: an interactive login over the pinned SSH, or one command
//! whose output and exit status pass through, exactly as with ssh (the process becomes ssh).

use std::os::unix::process::CommandExt;

use anyhow::Result;

use crate::cli::ShellArgs;
use crate::ops::instance::load;
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &ShellArgs) -> Result<()> {
    let loaded = load(settings, &args.id)?;
    let remote = (!args.command.is_empty()).then(|| args.command.join(" "));
    let error = loaded.ssh.interactive(remote.as_deref()).exec();
    Err(anyhow::Error::from(error).context("run ssh"))
}
