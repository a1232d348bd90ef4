//! What a failed setup (or bake) keeps for a person to read after its rollback removed the
//! instance: the guest's serial console log, the VMM's own log, the VM unit's journal and each
//! step's time, copied to `STATE_ROOT/.failed/<id>-<UTC time>/` (root-only), the newest few
//! kept; and what the error says about them, on lines of their own: the VMM's last words when
//! it died, the guest's last console lines (or that it printed nothing), the likely cause and
//! where the logs are.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::host::systemd::ServiceManager;
use crate::instance::images::rfc3339_utc;
use crate::instance::layout::{AssetPaths, UnitNames};
use crate::instance::timing::{RunTimes, seconds};
use crate::instance::values::InstanceId;
use crate::settings::Settings;
use crate::store::{ensure_private_dir, write_atomic};

/// Where evidence goes, under `STATE_ROOT` (a dot name: no instance can have it).
pub const FAILED_DIR: &str = ".failed";
/// How many failed setups' evidence is kept.
pub const KEEP: usize = 5;
/// Journal lines of the VM unit kept.
const JOURNAL_LINES: u32 = 200;
/// Lines quoted from the console and from the VMM's log.
const QUOTED: usize = 3;
/// A quoted line is cut to this many characters.
const LINE_WIDTH: usize = 160;

/// What a failed setup left to read, and where it was kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evidence {
    /// The evidence dir; `None` when there was nothing to keep or it could not be written.
    pub dir: Option<PathBuf>,
    /// The files kept in it.
    pub files: Vec<&'static str>,
    /// The guest's last console lines (the VMM's own lines left out), oldest first.
    pub console_tail: Vec<String>,
    /// The VMM's last error lines from its log, oldest first.
    pub vmm_words: Vec<String>,
}

impl Evidence {
    /// The lines printed under the error, each short and on its own.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.vmm_words.is_empty() {
            lines.push(format!(
                "the VMM's last words: {}",
                self.vmm_words.join("; ")
            ));
        }
        if self.console_tail.is_empty() {
            lines.push("the guest printed nothing on its serial console".to_owned());
        } else {
            lines.push("the guest's console ended with:".to_owned());
            lines.extend(self.console_tail.iter().map(|line| format!("  {line}")));
        }
        if let Some(cause) = self.likely_cause() {
            lines.push(format!("likely cause: {cause}"));
        }
        if let Some(dir) = &self.dir {
            lines.push(format!(
                "kept for you: {} ({})",
                dir.display(),
                self.files.join(", ")
            ));
        }
        lines
    }

    /// What the VMM's and the guest's last words most likely mean, and what to change.
    pub fn likely_cause(&self) -> Option<&'static str> {
        let vmm = self.vmm_words.join("\n");
        let console = self.console_tail.join("\n");
        if vmm.contains("KVM_EXIT_INTERNAL_ERROR") || vmm.contains("Kvm error") {
            Some(
                "this host's KVM cannot run the guest (nested or restricted virtualisation, or a guest kernel this KVM refuses); check the host with: fireclaw doctor",
            )
        } else if console.contains("Unable to mount root fs")
            || console.contains("Cannot open root device")
        {
            Some(
                "the guest kernel found no root disk: its virtio-blk or virtio-mmio driver is missing or a module; give an initrd that loads them (--base-initrd) or a kernel with them built in (fireclaw image fetch)",
            )
        } else if console.contains("Kernel panic") {
            Some("the guest kernel panicked; its console.log says where")
        } else if console.contains("emergency mode") {
            Some(
                "the guest's systemd stopped in emergency mode, usually an /etc/fstab entry of the base image for a disk a Firecracker VM does not have",
            )
        } else if self.console_tail.is_empty() {
            Some(
                "the guest kernel never reached its console: it must be an uncompressed x86_64 vmlinux that boots with console=ttyS0 (fireclaw doctor inspects it)",
            )
        } else {
            None
        }
    }
}

/// A line of Firecracker's logger (`<time> [<instance>:<thread>] <message>`): its message.
fn vmm_message(line: &str) -> Option<&str> {
    let (stamp, rest) = line.split_once(" [")?;
    let looks_like_time = stamp.len() >= 10
        && stamp.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && stamp.as_bytes()[4] == b'-';
    let (_, message) = rest.split_once("] ")?;
    looks_like_time.then_some(message)
}

/// A line as a person reads it: terminal escapes and other control characters gone, trimmed,
/// cut to `LINE_WIDTH` characters.
fn readable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: up to a final letter (or ~ / @).
                Some('[') => {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() || c == '~' || c == '@' {
                            break;
                        }
                    }
                }
                // OSC and the like: up to BEL or ESC \.
                Some(']') | Some('P') | Some('!') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.trim().chars().take(LINE_WIDTH).collect()
}

/// The guest's last `count` non-empty console lines: the VMM's own logger lines (Firecracker
/// logs to its stdout, which is the console log, until its logger is configured) are not the
/// guest's.
pub fn console_tail(log: &[u8], count: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<String> = text
        .lines()
        .filter(|line| vmm_message(line.trim()).is_none())
        .map(readable)
        .filter(|line| !line.is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].to_vec()
}

/// The VMM's last `count` error lines from its log, each once, in the order they last came (a
/// VMM that systemd restarts logs the same errors each time).
pub fn vmm_words(log: &[u8], count: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(log);
    let mut words: Vec<String> = Vec::new();
    for message in text.lines().filter_map(|line| vmm_message(line.trim())) {
        let lower = message.to_ascii_lowercase();
        let error = ["error", "panicked", "kvm_exit", "failed", "fault"]
            .iter()
            .any(|word| lower.contains(word));
        if error {
            let message = readable(message);
            words.retain(|word| *word != message);
            words.push(message);
        }
    }
    words[words.len().saturating_sub(count)..].to_vec()
}

/// What the instance's logs say now, without keeping anything.
pub fn read(settings: &Settings, id: &InstanceId) -> Evidence {
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let console = std::fs::read(&assets.console_log).unwrap_or_default();
    Evidence {
        dir: None,
        files: Vec::new(),
        console_tail: console_tail(&console, QUOTED),
        vmm_words: vmm_words(&vmm_log(&assets), QUOTED),
    }
}

/// The VMM's log: the confined VMM's own, or where 0.2.0 and unconfined instances keep it.
fn vmm_log(assets: &AssetPaths) -> Vec<u8> {
    std::fs::read(&assets.vmm_log)
        .or_else(|_| std::fs::read(&assets.firecracker_log))
        .unwrap_or_default()
}

/// Copies the console log, the VMM's log, the VM unit's journal and the step times of `id`
/// aside, before its assets are removed, and says what they hold. The dir is `None` when there
/// was nothing to keep or it could not be written (the rollback goes on either way; evidence
/// is a help, not a step that can fail a setup).
pub fn keep(
    settings: &Settings,
    id: &InstanceId,
    services: &dyn ServiceManager,
    times: Option<&RunTimes>,
) -> Evidence {
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let console = std::fs::read(&assets.console_log).unwrap_or_default();
    let vmm = vmm_log(&assets);
    let journal = services.journal_tail(&UnitNames::new(id).vm, JOURNAL_LINES);
    let mut evidence = Evidence {
        dir: None,
        files: Vec::new(),
        console_tail: console_tail(&console, QUOTED),
        vmm_words: vmm_words(&vmm, QUOTED),
    };
    if console.is_empty() && vmm.is_empty() && journal.is_empty() && times.is_none() {
        return evidence;
    }
    let kept = (|| -> Option<(PathBuf, Vec<&'static str>)> {
        let root = settings.paths.state_root.join(FAILED_DIR);
        ensure_private_dir(&root).ok()?;
        // `2026-11-30T07:16:40Z` without colons: a plain file name everywhere.
        let stamp = rfc3339_utc(SystemTime::now()).replace(':', "");
        let dir = root.join(format!("{id}-{stamp}"));
        ensure_private_dir(&dir).ok()?;
        let mut files = Vec::new();
        let mut write = |name: &'static str, bytes: &[u8]| -> Option<()> {
            write_atomic(&dir.join(name), bytes, 0o600).ok()?;
            files.push(name);
            Some(())
        };
        write("console.log", &console)?;
        if !vmm.is_empty() {
            write("firecracker.log", &vmm)?;
        }
        write("vm-unit.log", journal.as_bytes())?;
        if let Some(times) = times {
            // Each step's time, as far as the run got: one line each, then the whole run.
            let mut text: String = times
                .steps
                .iter()
                .map(|step| format!("{}\t{}\n", step.name, seconds(step.ms)))
                .collect();
            text.push_str(&format!("{}\n", times.describe()));
            write("steps.txt", text.as_bytes())?;
        }
        prune(&root, KEEP);
        Some((dir, files))
    })();
    if let Some((dir, files)) = kept {
        evidence.dir = Some(dir);
        evidence.files = files;
    }
    evidence
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
    fn the_console_tail_is_the_guests_last_lines_without_escapes_or_the_vmms_banner() {
        let log = b"2026-12-07T12:00:00.000000001 [anonymous-instance:main] Running Firecracker v1.16.1\n\
[    0.0] Linux version 6.1\n\n[    1.2] VFS: Cannot open root device\n\x1b[31mKernel panic\x1b[0m \"x\"\r\n\
2026-12-07T12:00:03.000000001 [anonymous-instance:main] Vmm is stopping.\n";
        assert_eq!(
            console_tail(log, 2),
            [
                "[    1.2] VFS: Cannot open root device",
                "Kernel panic \"x\""
            ]
        );
        assert!(console_tail(b"", 3).is_empty());
        // Only Firecracker's banner: the guest said nothing.
        let banner = b"2026-12-07T12:00:00.000000001 [anonymous-instance:main] Running Firecracker v1.16.1\n";
        assert!(console_tail(banner, 3).is_empty());
    }

    #[test]
    fn the_vmms_last_words_are_its_error_lines_once_each() {
        let log = b"2026-12-07T12:00:00.1 [fc:main] Running Firecracker v1.16.1\n\
2026-12-07T12:00:00.2 [fc:main] Successfully started microvm that was configured from one single json\n\
2026-12-07T12:00:01.0 [fc:fc_vcpu 0] Received KVM_EXIT_INTERNAL_ERROR signal\n\
2026-12-07T12:00:01.1 [fc:main] Firecracker exiting with error. exit_code=1\n\
2026-12-07T12:00:40.0 [fc:main] Running Firecracker v1.16.1\n\
2026-12-07T12:00:41.0 [fc:fc_vcpu 0] Received KVM_EXIT_INTERNAL_ERROR signal\n\
2026-12-07T12:00:41.1 [fc:main] Firecracker exiting with error. exit_code=1\n";
        assert_eq!(
            vmm_words(log, 3),
            [
                "Received KVM_EXIT_INTERNAL_ERROR signal",
                "Firecracker exiting with error. exit_code=1"
            ]
        );
        let evidence = Evidence {
            vmm_words: vmm_words(log, 2),
            ..Evidence::default()
        };
        assert_eq!(
            evidence.lines(),
            [
                "the VMM's last words: Received KVM_EXIT_INTERNAL_ERROR signal; Firecracker exiting with error. exit_code=1",
                "the guest printed nothing on its serial console",
                "likely cause: this host's KVM cannot run the guest (nested or restricted virtualisation, or a guest kernel this KVM refuses); check the host with: fireclaw doctor",
            ]
        );
    }

    #[test]
    fn evidence_is_kept_root_only_and_pruned_to_the_newest() {
        let host = ScratchHost::new();
        let id: InstanceId = "t".parse().unwrap();
        let logs = host.path("fc/t/logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("console.log"), "booting\nno root disk\n").unwrap();
        std::fs::create_dir_all(host.path("fc/t/vmm")).unwrap();
        std::fs::write(
            host.path("fc/t/vmm/firecracker.log"),
            "2026-12-07T12:00:01.0 [t:main] Kvm error: Error creating KVM object: Permission denied\n",
        )
        .unwrap();
        let log = CallLog::default();
        let mut services = FakeServices::new(&log);
        services.journal = "Started VM\nVM exited".into();
        let root = host.path("state").join(FAILED_DIR);
        for old in 0..KEEP {
            std::fs::create_dir_all(root.join(format!("old-{old}"))).unwrap();
            // Older than anything made now.
            let file = std::fs::File::open(root.join(format!("old-{old}"))).unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(old as u64))
                .unwrap();
        }
        let times = RunTimes {
            verb: crate::instance::timing::TimedVerb::Setup,
            finished_at: "2026-12-07T12:00:00Z".into(),
            ok: false,
            total_ms: 400_000,
            steps: vec![crate::instance::timing::StepTime {
                name: "boot to SSH".into(),
                ms: 360_100,
            }],
        };
        let evidence = keep(&host.settings, &id, &services, Some(&times));
        let dir = evidence.dir.clone().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("steps.txt")).unwrap(),
            "boot to SSH\t360.1 s\nsetup failed after 400.0 s: boot to SSH 360.1 s\n"
        );
        assert_eq!(evidence.console_tail, ["booting", "no root disk"]);
        assert_eq!(
            evidence.files,
            ["console.log", "firecracker.log", "vm-unit.log", "steps.txt"]
        );
        let lines = evidence.lines();
        assert_eq!(
            lines[..4],
            [
                "the VMM's last words: Kvm error: Error creating KVM object: Permission denied",
                "the guest's console ended with:",
                "  booting",
                "  no root disk",
            ]
        );
        assert!(lines[4].starts_with("likely cause: this host's KVM"));
        assert_eq!(
            lines[5],
            format!(
                "kept for you: {} (console.log, firecracker.log, vm-unit.log, steps.txt)",
                dir.display()
            )
        );
        assert!(lines.iter().all(|l| l.len() < 300 && !l.contains(" / ")));
        assert_eq!(
            std::fs::read_to_string(dir.join("vm-unit.log")).unwrap(),
            "Started VM\nVM exited"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("console.log")), 0o600);
        assert_eq!(mode(&dir.join("firecracker.log")), 0o600);
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
        assert_eq!(keep(&host.settings, &id, &services, None).dir, None);
        assert!(!host.path("state").join(FAILED_DIR).exists());
    }
}
