//! `fireclaw shell <id> [command]`: an interactive login over the pinned SSH, or one command
//! whose output and exit status pass through, exactly as with ssh (the process becomes ssh).
//! A VM that is not running or a guest that does not answer is said in fireclaw's words first.

use std::os::unix::process::CommandExt;

use anyhow::Result;

use crate::cli::ShellArgs;
use crate::host::systemd::ServiceManager;
use crate::ops::instance::load;
use crate::ops::lifecycle::ensure_reachable;
use crate::output::Output;
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    args: &ShellArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let loaded = load(settings, &args.id)?;
    ensure_reachable(&loaded, services, output)?;
    let remote = (!args.command.is_empty()).then(|| args.command.join(" "));
    let error = loaded.ssh.interactive(remote.as_deref()).exec();
    Err(anyhow::Error::from(error).context("run ssh"))
}
