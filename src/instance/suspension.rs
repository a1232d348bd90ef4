//! A suspended instance as `fireclaw.json` records it: when its Firecracker snapshot was written,
//! how big its files are, and the host it can be loaded on (Firecracker's snapshot format
//! version, the host kernel release and the CPU model, all three of which must match at load).
//! The record is written only once both files are complete and on disk, and removed (the
//! snapshot is "consumed") before a loaded guest runs again, so a snapshot is loaded at most
//! once. It is a field of its own, not a lifecycle phase: older binaries ignore unknown fields
//! but refuse unknown phases. Pure: the facts of this host are gathered by `host::snapshot`.

/// MiB in bytes.
const MIB: u64 = 1 << 20;

/// Room kept beside the memory file for the device state and the file system's own
/// bookkeeping: the state of a Firecracker VM is a few hundred KiB.
pub const STATE_ALLOWANCE: u64 = 64 * MIB;

/// Where a snapshot was taken, in the three facts Firecracker's loader depends on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotOrigin {
    /// `firecracker --describe-snapshot` of the state file, e.g. `v10.0.0`.
    pub format_version: String,
    /// `uname -r` of the host.
    pub host_kernel: String,
    /// The host CPU's model name (`/proc/cpuinfo`).
    pub cpu_model: String,
}

/// `fireclaw.json`'s `suspended`: a complete snapshot, not yet loaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suspension {
    /// Seconds since the Unix epoch when the snapshot was written.
    pub taken_at: u64,
    /// Apparent sizes of the memory and state files.
    pub memory_bytes: u64,
    pub state_bytes: u64,
    #[serde(flatten)]
    pub origin: SnapshotOrigin,
    /// Set by `vm-resume` just before it asks Firecracker to load the snapshot, and gone with
    /// the record once the load succeeded: when still set at the next start, that load failed
    /// or was cut short (a failed load ends Firecracker), and is not tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loading_since: Option<u64>,
    /// The disk's modification time when the snapshot was written (`<seconds>.<nanoseconds>`
    /// since the epoch, a string so that no JSON tool rounds it): the snapshot's memory matches
    /// that disk only, so a disk written since (booted by an older fireclaw, or by hand)
    /// refuses the load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_modified: Option<String>,
    /// Whether the load may move the guest's kvm-clock to the host's wall clock (the host ran
    /// on the TSC clocksource with a kernel that saves the real time with the clock).
    #[serde(default)]
    pub clock_realtime: bool,
}

impl Suspension {
    pub fn total_bytes(&self) -> u64 {
        self.memory_bytes.saturating_add(self.state_bytes)
    }
}

/// Why this host cannot load a snapshot, or `None` when it can. `here` carries this host's
/// facts and the snapshot version of the Firecracker that would load it.
pub fn cannot_load(taken: &SnapshotOrigin, here: &SnapshotOrigin) -> Option<String> {
    let changed = [
        ("host kernel", &taken.host_kernel, &here.host_kernel),
        ("CPU model", &taken.cpu_model, &here.cpu_model),
        (
            "Firecracker snapshot format",
            &taken.format_version,
            &here.format_version,
        ),
    ];
    let differences: Vec<String> = changed
        .iter()
        .filter(|(_, then, now)| then != now)
        .map(|(what, then, now)| {
            format!(
                "{what} {} then, {} now",
                super::values::escaped(then),
                super::values::escaped(now)
            )
        })
        .collect();
    (!differences.is_empty()).then(|| differences.join("; "))
}

/// Free space a suspend needs on the file system of the VMM's dir: the memory file (as big as
/// the guest's memory) and the state.
pub fn room_needed(memory_mib: u64) -> u64 {
    memory_mib
        .saturating_mul(MIB)
        .saturating_add(STATE_ALLOWANCE)
}

/// How the VMM's next start boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmBoot {
    /// From its config file: kernel, disk, network (`--config-file`).
    Cold,
    /// Waiting, API only, for the snapshot load that the VM unit's `vm-resume` sends.
    Load,
}

/// "3d 4h", "5h 12m", "7m", "12s": how long ago, for people.
pub fn age_text(seconds: u64) -> String {
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(kernel: &str, cpu: &str, format: &str) -> SnapshotOrigin {
        SnapshotOrigin {
            format_version: format.into(),
            host_kernel: kernel.into(),
            cpu_model: cpu.into(),
        }
    }

    #[test]
    fn a_snapshot_loads_only_where_kernel_cpu_and_format_are_the_same() {
        let taken = origin("6.1.0-28-amd64", "AMD EPYC 7B13", "v10.0.0");
        assert_eq!(cannot_load(&taken, &taken.clone()), None);
        assert_eq!(
            cannot_load(
                &taken,
                &origin("6.1.0-31-amd64", "AMD EPYC 7B13", "v10.0.0")
            )
            .unwrap(),
            "host kernel 6.1.0-28-amd64 then, 6.1.0-31-amd64 now"
        );
        assert_eq!(
            cannot_load(&taken, &origin("6.1.0-28-amd64", "Intel Xeon", "v11.0.0")).unwrap(),
            "CPU model AMD EPYC 7B13 then, Intel Xeon now; Firecracker snapshot format v10.0.0 then, v11.0.0 now"
        );
    }

    #[test]
    fn a_suspend_needs_room_for_the_whole_memory_and_the_state() {
        assert_eq!(room_needed(256), (256 + 64) << 20);
        assert_eq!(room_needed(u64::MAX), u64::MAX);
    }

    #[test]
    fn the_record_keeps_its_origin_beside_its_sizes() {
        let record = Suspension {
            taken_at: 1_790_000_000,
            memory_bytes: 256 << 20,
            state_bytes: 40_000,
            origin: origin("6.1.0", "cpu", "v10.0.0"),
            loading_since: None,
            disk_modified: None,
            clock_realtime: false,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["format_version"], "v10.0.0");
        assert_eq!(json["host_kernel"], "6.1.0");
        assert_eq!(serde_json::from_value::<Suspension>(json).unwrap(), record);
        assert_eq!(record.total_bytes(), (256 << 20) + 40_000);
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age_text(12), "12s");
        assert_eq!(age_text(7 * 60 + 5), "7m");
        assert_eq!(age_text(5 * 3600 + 12 * 60), "5h 12m");
        assert_eq!(age_text(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
    }
}
