//! `fireclaw logs <id> [guest|host]`: follows the guest service's journal over the pinned SSH,
//! or both host units' journal. The process becomes ssh or journalctl, so Ctrl-C ends it cleanly.

use std::os::unix::process::CommandExt;

use anyhow::Result;

use crate::cli::{LogSource, LogsArgs};
use crate::guest::ssh::sudo_command;
use crate::host::systemd::JOURNALCTL;
use crate::ops::instance::load;
use crate::settings::Settings;

/// Lines of history shown before following.
const HISTORY: &str = "100";

pub fn run(settings: &Settings, args: &LogsArgs) -> Result<()> {
    let loaded = load(settings, &args.id)?;
    let error = match args.source {
        LogSource::Host => std::process::Command::new(JOURNALCTL)
            .args([
                "-f",
                "-n",
                HISTORY,
                "--no-hostname",
                "-u",
                &loaded.units.vm,
                "-u",
                &loaded.units.proxy,
            ])
            .exec(),
        LogSource::Guest => loaded
            .ssh
            .interactive(Some(&sudo_command(&[
                "journalctl",
                "-f",
                "-n",
                HISTORY,
                "-u",
                &loaded.units.guest,
            ])))
            .exec(),
    };
    Err(anyhow::Error::from(error).context("run the log follower"))
}
