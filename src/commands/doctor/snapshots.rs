//! doctor's checks of suspended instances and snapshot files (`snapshot <id>`): a recorded
//! snapshot whose files are missing or changed, one this host can no longer load (its kernel,
//! CPU model or Firecracker's snapshot format changed since), one kept for a long time, and
//! snapshot files no record names (left by an interrupted suspend or resume), which hold a
//! guest's memory, secrets included, and take its size on disk.

use super::checks::{Check, Level, check};
use crate::host::snapshot::{file_size, here, unix_now_secs};
use crate::instance::layout::{AssetPaths, StatePaths, UnitNames};
use crate::instance::state::FireclawState;
use crate::instance::suspension::{SnapshotOrigin, Suspension, age_text, cannot_load};
use crate::instance::values::InstanceId;
use crate::render::units::vm_unit_program;
use crate::settings::Settings;
use crate::store::{ScannedInstance, read_fireclaw_state};

/// A snapshot older than this is reported: its guest wakes with everything that long out of
/// date, and it holds its memory's size on disk meanwhile.
const STALE_AFTER_SECS: u64 = 30 * 86_400;

pub fn instance_checks(settings: &Settings, scanned: &[ScannedInstance], checks: &mut Vec<Check>) {
    let now = unix_now_secs();
    for instance in scanned {
        let Ok(id) = instance.name.parse::<InstanceId>() else {
            continue;
        };
        let state = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &id))
            .ok()
            .flatten();
        let assets = AssetPaths::new(&settings.paths.fc_root, &id);
        let sizes = [
            file_size(&assets.snapshot_state),
            file_size(&assets.snapshot_memory),
        ];
        // This host's facts with the snapshot format of the Firecracker the unit runs; none
        // when that cannot be asked (the check then leaves the format out).
        let facts = state
            .as_ref()
            .is_some_and(|s| s.suspended.is_some())
            .then(|| {
                let unit = UnitNames::new(&id).vm_path(&settings.paths.unit_dir);
                let text = std::fs::read_to_string(unit).ok()?;
                here(&vm_unit_program(&text)?).ok()
            })
            .flatten();
        // A VM paused with no record: a suspend cut short before it wrote one.
        let paused = state.as_ref().is_none_or(|s| s.suspended.is_none())
            && crate::ops::network::vm_paused(settings, &id);
        if let Some(found) = snapshot_check(&id, state.as_ref(), sizes, paused, facts.as_ref(), now)
        {
            checks.push(found);
        }
    }
}

/// The finding for one instance, from its state, the sizes of its snapshot files (state,
/// memory), whether its running VM is paused, and this host's facts; `None` when it has
/// neither a snapshot, nor its files, nor a paused VM.
pub fn snapshot_check(
    id: &InstanceId,
    state: Option<&FireclawState>,
    sizes: [Option<u64>; 2],
    paused: bool,
    here: Option<&SnapshotOrigin>,
    now: u64,
) -> Option<Check> {
    let name = format!("snapshot {id}");
    let exporting = state.and_then(|s| s.exporting.as_ref());
    let Some(record) = state.and_then(|s| s.suspended.as_ref()) else {
        if paused {
            let detail = match exporting {
                Some(exporting) => format!(
                    "its VM is paused: {}; continue it with: fireclaw resume {id}",
                    crate::ops::export::cut_short_words(exporting)
                ),
                None => format!(
                    "its VM is paused, left so by a suspend cut short; continue it with: fireclaw resume {id}"
                ),
            };
            return Some(check(&name, Level::Warn, detail));
        }
        if let Some(exporting) = exporting {
            return Some(check(
                &name,
                Level::Warn,
                format!(
                    "{}; its VM is not paused, and the record (with any disk clone it left) goes at the next: fireclaw stop {id}, resume {id} or export {id}",
                    crate::ops::export::cut_short_words(exporting)
                ),
            ));
        }
        let left: u64 = sizes.iter().flatten().sum();
        return sizes.iter().any(Option::is_some).then(|| {
            check(
                &name,
                Level::Warn,
                format!(
                    "snapshot files no suspend recorded ({} MiB, a guest's memory with its secrets), left by an interrupted suspend or resume; nothing will load them: remove them with: fireclaw start {id} --cold (which keeps a running VM running)",
                    left.div_ceil(1 << 20)
                ),
            )
        });
    };
    Some(recorded_check(&name, id, record, sizes, here, now))
}

fn recorded_check(
    name: &str,
    id: &InstanceId,
    record: &Suspension,
    sizes: [Option<u64>; 2],
    here: Option<&SnapshotOrigin>,
    now: u64,
) -> Check {
    let age = now.saturating_sub(record.taken_at);
    let summary = format!(
        "suspended {} ago, {} MiB on disk",
        age_text(age),
        record.total_bytes().div_ceil(1 << 20)
    );
    if sizes != [Some(record.state_bytes), Some(record.memory_bytes)] {
        return check(
            name,
            Level::Fail,
            format!(
                "suspended, but its snapshot files are missing or not as written; boot it fresh from its disk with: fireclaw start {id} --cold"
            ),
        );
    }
    if record.loading_since.is_some() {
        return check(
            name,
            Level::Warn,
            format!(
                "{summary}; its last load did not complete (see: fireclaw logs {id} host -n 20 --no-follow); try it once more with: fireclaw resume {id}, or boot it fresh with: fireclaw start {id} --cold"
            ),
        );
    }
    if let Some(why) = here.and_then(|facts| cannot_load(&record.origin, facts)) {
        return check(
            name,
            Level::Warn,
            format!(
                "{summary}; this host can no longer load it ({why}): boot back into what it was taken on to resume it, or boot it fresh with: fireclaw start {id} --cold"
            ),
        );
    }
    if age > STALE_AFTER_SECS {
        return check(
            name,
            Level::Warn,
            format!(
                "{summary}: resume it with: fireclaw resume {id}, or discard it with: fireclaw start {id} --cold"
            ),
        );
    }
    check(
        name,
        Level::Pass,
        format!("{summary}; resume it with: fireclaw resume {id}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::state::Phase;

    fn origin(kernel: &str) -> SnapshotOrigin {
        SnapshotOrigin {
            format_version: "v10.0.0".into(),
            host_kernel: kernel.into(),
            cpu_model: "cpu".into(),
        }
    }

    fn suspended(taken_at: u64) -> FireclawState {
        let mut state = FireclawState::new(Phase::Provisioned);
        state.suspended = Some(Suspension {
            taken_at,
            memory_bytes: 256 << 20,
            state_bytes: 1000,
            origin: origin("6.1.0"),
            loading_since: None,
            disk_modified: None,
            clock_realtime: false,
        });
        state
    }

    fn finding(
        state: Option<&FireclawState>,
        sizes: [Option<u64>; 2],
        kernel: &str,
        now: u64,
    ) -> Option<(Level, String)> {
        snapshot_check(
            &"a".parse().unwrap(),
            state,
            sizes,
            false,
            Some(&origin(kernel)),
            now,
        )
        .map(|c| (c.status, c.detail))
    }

    const FILES: [Option<u64>; 2] = [Some(1000), Some(256 << 20)];

    #[test]
    fn a_loadable_snapshot_passes_with_its_age_and_size() {
        let state = suspended(1000);
        let (level, detail) = finding(Some(&state), FILES, "6.1.0", 1000 + 7200).unwrap();
        assert_eq!(level, Level::Pass);
        assert!(
            detail.starts_with("suspended 2h 0m ago, 257 MiB on disk"),
            "{detail}"
        );
    }

    #[test]
    fn a_snapshot_this_host_cannot_load_is_named_with_what_changed() {
        let state = suspended(1000);
        let (level, detail) = finding(Some(&state), FILES, "6.2.0", 2000).unwrap();
        assert_eq!(level, Level::Warn);
        assert!(
            detail.contains("host kernel 6.1.0 then, 6.2.0 now"),
            "{detail}"
        );
        assert!(detail.contains("fireclaw start a --cold"), "{detail}");
    }

    #[test]
    fn missing_files_fail_and_old_snapshots_and_unrecorded_files_warn() {
        let state = suspended(1000);
        let (level, _) = finding(Some(&state), [Some(1000), None], "6.1.0", 2000).unwrap();
        assert_eq!(level, Level::Fail);
        let (level, detail) = finding(Some(&state), FILES, "6.1.0", 1000 + 40 * 86_400).unwrap();
        assert_eq!(level, Level::Warn);
        assert!(detail.starts_with("suspended 40d 0h ago"), "{detail}");
        let mut tried = suspended(1000);
        if let Some(record) = &mut tried.suspended {
            record.loading_since = Some(1500);
        }
        let (level, detail) = finding(Some(&tried), FILES, "6.1.0", 2000).unwrap();
        assert_eq!(level, Level::Warn);
        assert!(
            detail.contains("its last load did not complete"),
            "{detail}"
        );
        let running = FireclawState::new(Phase::Provisioned);
        let (level, detail) = finding(Some(&running), [None, Some(5 << 20)], "6.1.0", 0).unwrap();
        assert_eq!(level, Level::Warn);
        assert!(detail.contains("(5 MiB"), "{detail}");
        assert_eq!(finding(Some(&running), [None, None], "6.1.0", 0), None);
        assert_eq!(finding(None, [None, None], "6.1.0", 0), None);
        let paused =
            snapshot_check(&"a".parse().unwrap(), None, [None, None], true, None, 0).unwrap();
        assert_eq!(paused.status, Level::Warn);
        assert!(
            paused.detail.ends_with("fireclaw resume a"),
            "{}",
            paused.detail
        );
    }

    #[test]
    fn a_vm_an_export_left_paused_is_named_as_an_export_cut_short() {
        let mut state = FireclawState::new(Phase::Provisioned);
        state.exporting = Some(crate::instance::state::Exporting {
            since: 86_400,
            pid: 4242,
        });
        let id = "a".parse().unwrap();
        let paused = snapshot_check(&id, Some(&state), [None, None], true, None, 0).unwrap();
        assert_eq!(paused.status, Level::Warn);
        assert!(
            paused.detail.contains("its VM is paused: an export (fireclaw export --pause, process 4242, begun 1970-01-02T00:00:00Z) was cut short")
                && paused.detail.ends_with("fireclaw resume a")
                && !paused.detail.contains("suspend"),
            "{}",
            paused.detail
        );
        let running = snapshot_check(&id, Some(&state), [None, None], false, None, 0).unwrap();
        assert_eq!(running.status, Level::Warn);
        assert!(
            running.detail.contains("its VM is not paused")
                && running.detail.contains("fireclaw stop a"),
            "{}",
            running.detail
        );
    }
}
