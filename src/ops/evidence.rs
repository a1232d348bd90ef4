//! What a failed setup keeps for a person to read after its rollback removed the instance: the
//! guest's serial console log and the VM unit's journal, copied to
//! `STATE_ROOT/.failed/<id>-<UTC time>/` (root-only), the newest few kept. The error that
//! reports the failure names that directory and, when the console said anything, its last
//! lines.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::host::systemd::ServiceManager;
use crate::instance::images::rfc3339_utc;
use crate::instance::layout::{AssetPaths, UnitNames};
use crate::instance::values::{InstanceId, escaped};
use crate::settings::Settings;
use crate::store::{ensure_private_dir, write_atomic};

/// Where evidence goes, under `STATE_ROOT` (a dot name: no instance can have it).
pub const FAILED_DIR: &str = ".failed";
/// How many failed setups' evidence is kept.
pub const KEEP: usize = 5;
/// Journal lines of the VM unit kept.
const JOURNAL_LINES: u32 = 200;

/// Evidence kept for one failed setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub dir: PathBuf,
    /// The console's last lines, escaped for one line, oldest first.
    pub console_tail: Vec<String>,
}

impl Evidence {
    /// What the error line says about it.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "its console log and VM journal are kept in {}",
            self.dir.display()
        );
        if !self.console_tail.is_empty() {
            text.push_str(&format!(
                " (the console's last lines: {})",
                self.console_tail.join(" / ")
            ));
        }
        text
    }
}

/// The last `count` non-empty lines of a console log, each escaped and cut to 160 characters.
pub fn console_tail(log: &[u8], count: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..]
        .iter()
        .map(|line| escaped(&line.chars().take(160).collect::<String>()))
        .collect()
}

/// Copies the console log and the VM unit's journal of `id` aside, before its assets are
/// removed. `None` when there was nothing to keep or it could not be written (the rollback
/// goes on either way; evidence is a help, not a step that can fail a setup).
pub fn keep(
    settings: &Settings,
    id: &InstanceId,
    services: &dyn ServiceManager,
) -> Option<Evidence> {
    let console =
        std::fs::read(AssetPaths::new(&settings.paths.fc_root, id).console_log).unwrap_or_default();
    let journal = services.journal_tail(&UnitNames::new(id).vm, JOURNAL_LINES);
    if console.is_empty() && journal.is_empty() {
        return None;
    }
    let root = settings.paths.state_root.join(FAILED_DIR);
    ensure_private_dir(&root).ok()?;
    // `2026-11-30T07:16:40Z` without colons: a plain file name everywhere.
    let stamp = rfc3339_utc(SystemTime::now()).replace(':', "");
    let dir = root.join(format!("{id}-{stamp}"));
    ensure_private_dir(&dir).ok()?;
    write_atomic(&dir.join("console.log"), &console, 0o600).ok()?;
    let journal = journal.replace(" / ", "\n");
    write_atomic(&dir.join("vm-unit.log"), journal.as_bytes(), 0o600).ok()?;
    prune(&root, KEEP);
    Some(Evidence {
        dir,
        console_tail: console_tail(&console, 3),
    })
}

/// Removes all but the `keep` newest evidence dirs in `root` (their names end in the time).
fn prune(root: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let metadata = entry.metadata().ok()?;
            metadata.is_dir().then(|| {
                (
                    metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    entry.path(),
                )
            })
        })
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for (_, dir) in dirs.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fakes::{CallLog, FakeServices, ScratchHost};

    #[test]
    fn the_console_tail_is_its_last_lines_on_one_line_each() {
        let log = b"[    0.0] Linux version 6.1\n\n[    1.2] VFS: Cannot open root device\n\x1b[31mKernel panic\n";
        assert_eq!(
            console_tail(log, 2),
            [
                "[    1.2] VFS: Cannot open root device",
                "\\u{1b}[31mKernel panic"
            ]
        );
        assert!(console_tail(b"", 3).is_empty());
    }

    #[test]
    fn evidence_is_kept_root_only_and_pruned_to_the_newest() {
        let host = ScratchHost::new();
        let id: InstanceId = "t".parse().unwrap();
        let logs = host.path("fc/t/logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("console.log"), "booting\nno root disk\n").unwrap();
        let log = CallLog::default();
        let mut services = FakeServices::new(&log);
        services.journal = "Started VM / VM exited".into();
        let root = host.path("state").join(FAILED_DIR);
        for old in 0..KEEP {
            std::fs::create_dir_all(root.join(format!("old-{old}"))).unwrap();
            // Older than anything made now.
            let file = std::fs::File::open(root.join(format!("old-{old}"))).unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(old as u64))
                .unwrap();
        }
        let evidence = keep(&host.settings, &id, &services).unwrap();
        assert_eq!(evidence.console_tail, ["booting", "no root disk"]);
        assert!(
            evidence
                .describe()
                .ends_with("(the console's last lines: booting / no root disk)")
        );
        assert_eq!(
            std::fs::read_to_string(evidence.dir.join("vm-unit.log")).unwrap(),
            "Started VM\nVM exited"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&evidence.dir), 0o700);
        assert_eq!(mode(&evidence.dir.join("console.log")), 0o600);
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), KEEP);
        assert!(!left.contains(&"old-0".to_owned()), "{left:?}");
        assert!(left.iter().any(|n| n.starts_with("t-")), "{left:?}");
    }

    #[test]
    fn nothing_to_keep_makes_no_directory() {
        let host = ScratchHost::new();
        let id: InstanceId = "t".parse().unwrap();
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        assert_eq!(keep(&host.settings, &id, &services), None);
        assert!(!host.path("state").join(FAILED_DIR).exists());
    }
}
