//! `fireclaw logs <id> [guest|host|console]`: the guest service's journal over the pinned SSH,
//! both host units' journal, or the VM's serial console log, `-n` lines back, optionally `--since` a time, followed unless
//! `--no-follow`. The host units' names are reused by a later instance of the same id, so the
//! host journal starts at this instance's creation unless `--since` says otherwise. The
//! process becomes ssh or journalctl, so Ctrl-C ends it cleanly.

use std::os::unix::process::CommandExt;
use std::time::UNIX_EPOCH;

use anyhow::Result;

use crate::cli::{LogSource, LogsArgs};
use crate::guest::ssh::sudo_command;
use crate::host::systemd::{JournalQuery, ServiceManager};
use crate::instance::layout::{AssetPaths, StatePaths};
use crate::ops::instance::load;
use crate::ops::lifecycle::ensure_reachable;
use crate::output::Output;
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    args: &LogsArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let loaded = load(settings, &args.id)?;
    let mut query = JournalQuery {
        lines: args.lines,
        since: args.since.clone(),
        follow: !args.no_follow,
    };
    let error = match args.source {
        LogSource::Host => {
            if query.since.is_none() {
                query.since = created_at(&StatePaths::new(&settings.paths.state_root, &args.id));
            }
            services
                .journal_command(&[&loaded.units.vm, &loaded.units.proxy], &query)
                .exec()
        }
        LogSource::Console => {
            if args.since.is_some() {
                anyhow::bail!("--since applies to the journals (guest, host), not to the console");
            }
            let console = AssetPaths::new(&settings.paths.fc_root, &args.id).console_log;
            let mut tail = std::process::Command::new("tail");
            tail.args(["-n", &args.lines.to_string()]);
            if !args.no_follow {
                tail.arg("-F");
            }
            tail.arg("--").arg(console).exec()
        }
        LogSource::Guest => {
            ensure_reachable(&loaded, services, output)?;
            let mut words = vec!["journalctl".to_owned()];
            words.extend(query.args(&[&loaded.units.guest]));
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            loaded.ssh.interactive(Some(&sudo_command(&words))).exec()
        }
    };
    Err(anyhow::Error::from(error).context("run the log viewer"))
}

/// When this instance was created, as journalctl's `@<epoch>`: its state dir's birth time.
/// Where the filesystem records none, nothing is cut (the dir's modification time moves with
/// every state write, so it would hide this instance's own older lines).
fn created_at(paths: &StatePaths) -> Option<String> {
    let time = std::fs::metadata(&paths.dir).ok()?.created().ok()?;
    let seconds = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(format!("@{seconds}"))
}
