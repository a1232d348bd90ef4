//! `fireclaw logs <id> [guest|host]`: follows the guest service's journal over the pinned SSH,
//! or both host units' journal. The process becomes ssh or journalctl, so Ctrl-C ends it cleanly.

use std::os::unix::process::CommandExt;

use anyhow::Result;

use crate::cli::{LogSource, LogsArgs};
use crate::guest::ssh::sudo_command;
use crate::host::systemd::ServiceManager;
use crate::ops::instance::load;
use crate::settings::Settings;

/// Lines of history shown before following.
const HISTORY: u32 = 100;

pub fn run(settings: &Settings, args: &LogsArgs, services: &dyn ServiceManager) -> Result<()> {
    let loaded = load(settings, &args.id)?;
    let error = match args.source {
        LogSource::Host => services
            .follow_journal(&[&loaded.units.vm, &loaded.units.proxy], HISTORY)
            .exec(),
        LogSource::Guest => loaded
            .ssh
            .interactive(Some(&sudo_command(&[
                "journalctl",
                "-f",
                "-n",
                &HISTORY.to_string(),
                "-u",
                &loaded.units.guest,
            ])))
            .exec(),
    };
    Err(anyhow::Error::from(error).context("run the log follower"))
}
