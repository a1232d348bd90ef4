//! The confined VMM of an instance, as data: the name and id range of its own system account,
//! which of its files that account owns or may read (and with what mode), and the resource
//! limits its unit gets from the instance's size. Everything else under the instance stays
//! root's, so a guest that escapes Firecracker lands in a process that can touch only its own
//! disk, its API socket and its log. Pure: `host::accounts` creates the accounts and
//! `ops::confine` applies the ownership.

use std::path::{Path, PathBuf};

use super::layout::AssetPaths;
use super::values::InstanceId;

/// The first uid (and gid) fireclaw gives a VMM account. The range lies in what systemd's
/// `UIDS-GIDS.md` lists as unused (1879048192–2147483647): above the container ranges systemd
/// and shadow's subordinate ids (`/etc/subuid`) hand out, where a rootless container's mapped
/// uid could otherwise match a VMM's, and far above what `adduser` and packages allocate.
pub const VMM_ID_FIRST: u32 = 1_950_000_000;
/// How many ids the range holds.
pub const VMM_ID_COUNT: u32 = 100_000;

// shadow's default SUB_UID_MAX (600100000) and systemd's container range (up to 1879048191)
// end below the range; it ends below 2^31, which some tools read as signed.
const _: () = assert!(VMM_ID_FIRST > 1_879_048_191);
const _: () = assert!((VMM_ID_FIRST as u64) + (VMM_ID_COUNT as u64) < 1 << 31);

/// Every VMM account's name starts with this, so one is recognisable in `ps` and `/etc/passwd`.
pub const ACCOUNT_PREFIX: &str = "fcvm-";
/// The longest account name `useradd` accepts.
pub const MAX_ACCOUNT_NAME: usize = 32;
/// The group that may open `/dev/kvm` on Debian and Ubuntu hosts (udev's rule).
pub const KVM_GROUP: &str = "kvm";

/// Whether `id` is in fireclaw's range of VMM ids.
/// Where the VM unit's sandboxing leaves nothing of the host's: `ProtectHome=` hides the homes,
/// `PrivateTmp=` gives the unit empty temporary directories of its own.
pub const HIDDEN_FROM_VM_UNITS: [&str; 5] = ["/home", "/root", "/run/user", "/tmp", "/var/tmp"];

/// The hidden directory `path` lies below, if any.
pub fn hidden_from_vm_units(path: &Path) -> Option<&'static str> {
    HIDDEN_FROM_VM_UNITS
        .into_iter()
        .find(|hidden| path.starts_with(hidden))
}

pub fn in_vmm_range(id: u32) -> bool {
    (VMM_ID_FIRST..VMM_ID_FIRST + VMM_ID_COUNT).contains(&id)
}

/// The VMM account of an instance, as `fireclaw.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmmAccount {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The account name for an instance: `fcvm-<id>` when that fits in 32 characters, otherwise
/// the id's first 18 characters and 8 hex digits of its SHA-256, so two long ids that share a
/// prefix still get different names.
pub fn account_name(id: &InstanceId) -> String {
    let whole = format!("{ACCOUNT_PREFIX}{id}");
    if whole.len() <= MAX_ACCOUNT_NAME {
        return whole;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_str().as_bytes());
    let hash: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // An id is ASCII, so byte slicing is character slicing.
    let keep = MAX_ACCOUNT_NAME - ACCOUNT_PREFIX.len() - 1 - hash.len();
    format!("{ACCOUNT_PREFIX}{}-{hash}", &id.as_str()[..keep])
}

/// Who holds a file of a confined instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// root:root: the VMM can neither read nor change it.
    Root,
    /// root:<vmm group>: the VMM may read it (or traverse it) but not change it.
    RootReadableByVmm,
    /// <vmm>:<vmm>: the VMM's own.
    Vmm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// One path of a confined instance with the owner and mode it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub path: PathBuf,
    pub kind: Kind,
    pub holder: Holder,
    pub mode: u32,
}

impl Expected {
    /// The uid and gid this path must have for `account`.
    pub fn owner(&self, account: &VmmAccount) -> (u32, u32) {
        match self.holder {
            Holder::Root => (0, 0),
            Holder::RootReadableByVmm => (0, account.gid),
            Holder::Vmm => (account.uid, account.gid),
        }
    }
}

/// The paths of a confined instance whose owner matters, parents first. The instance dir and
/// `images/` are root's and only traversable (0711), so the VMM can reach its files but not
/// list, add or replace any; it owns its disk and `vmm/` (API socket and log); it may read the
/// kernel, initrd, seed image and its config; `logs/` (with the console log systemd appends
/// to as root), the cloud-init sources and the wrapper scripts stay root's alone.
pub fn expected_files(assets: &AssetPaths, with_initrd: bool) -> Vec<Expected> {
    let entry = |path: &Path, kind, holder, mode| Expected {
        path: path.to_owned(),
        kind,
        holder,
        mode,
    };
    let mut files = vec![
        entry(&assets.dir, Kind::Dir, Holder::Root, 0o711),
        entry(&assets.images, Kind::Dir, Holder::Root, 0o711),
        entry(&assets.rootfs, Kind::File, Holder::Vmm, 0o600),
        entry(&assets.kernel, Kind::File, Holder::RootReadableByVmm, 0o640),
        entry(&assets.seed, Kind::File, Holder::RootReadableByVmm, 0o640),
        entry(&assets.config, Kind::Dir, Holder::RootReadableByVmm, 0o710),
        entry(
            &assets.vm_config,
            Kind::File,
            Holder::RootReadableByVmm,
            0o640,
        ),
        entry(&assets.logs, Kind::Dir, Holder::Root, 0o700),
        entry(&assets.vmm_dir, Kind::Dir, Holder::Vmm, 0o700),
        entry(&assets.vmm_log, Kind::File, Holder::Vmm, 0o600),
    ];
    if with_initrd {
        files.insert(
            4,
            entry(&assets.initrd, Kind::File, Holder::RootReadableByVmm, 0o640),
        );
    }
    files
}

/// What Firecracker itself uses beyond guest memory (its published overhead is under 5 MiB per
/// microVM; this also covers the root helpers that run in the unit's cgroup: `vm-net-up`'s
/// firewall commands and `vm-shutdown`'s SSH probe).
pub const VMM_OVERHEAD_MIB: u64 = 128;
/// Page cache of the VMM's own writes (the guest's disk writes, and snapshot files later),
/// charged to the unit's cgroup.
pub const PAGE_CACHE_HEADROOM_MIB: u64 = 256;
/// Tasks beyond the vCPU threads: Firecracker's VMM and API threads and the helpers.
pub const TASKS_BEYOND_VCPUS: u64 = 64;
/// Open files: Firecracker holds a few dozen (devices, eventfds, disks, tap, socket).
pub const OPEN_FILES: u64 = 1024;

/// The resource limits of a VM unit, from the instance's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_max_bytes: u64,
    pub tasks_max: u64,
    pub open_files: u64,
    /// Relative share of CPU time: 100 per vCPU (systemd's default weight is 100).
    pub cpu_weight: u64,
    /// Percent of one CPU: each vCPU thread plus one CPU for the VMM's own device threads.
    pub cpu_quota_percent: u64,
}

pub fn limits(vcpus: u8, memory_mib: u32) -> Limits {
    let vcpus = u64::from(vcpus);
    Limits {
        memory_max_bytes: (u64::from(memory_mib) + VMM_OVERHEAD_MIB + PAGE_CACHE_HEADROOM_MIB)
            << 20,
        tasks_max: vcpus + TASKS_BEYOND_VCPUS,
        open_files: OPEN_FILES,
        cpu_weight: (vcpus * 100).clamp(1, 10_000),
        cpu_quota_percent: (vcpus + 1) * 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(value: &str) -> InstanceId {
        value.parse().unwrap()
    }

    #[test]
    fn short_ids_keep_their_name_and_long_ones_get_a_hash() {
        assert_eq!(account_name(&id("my-bot")), "fcvm-my-bot");
        let longest_plain = "a".repeat(MAX_ACCOUNT_NAME - ACCOUNT_PREFIX.len());
        assert_eq!(
            account_name(&id(&longest_plain)),
            format!("fcvm-{longest_plain}")
        );
        let one = account_name(&id(&format!("{}-one", "x".repeat(40))));
        let two = account_name(&id(&format!("{}-two", "x".repeat(40))));
        assert_eq!(one.len(), MAX_ACCOUNT_NAME);
        assert_ne!(one, two);
        assert!(one.starts_with("fcvm-xxxxxxxxxxxxxxxxxx-"), "{one}");
        let longest = account_name(&id(&"z".repeat(63)));
        assert_eq!(longest.len(), MAX_ACCOUNT_NAME);
        // What useradd accepts by default: ^[a-z][-a-z0-9_]*$.
        assert!(
            longest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn the_range_is_above_subordinate_and_container_ids() {
        assert!(in_vmm_range(VMM_ID_FIRST) && !in_vmm_range(VMM_ID_FIRST - 1));
        assert!(!in_vmm_range(VMM_ID_FIRST + VMM_ID_COUNT));
    }

    #[test]
    fn the_vmm_owns_only_its_disk_and_its_own_dir() {
        let assets = AssetPaths::new(Path::new("/srv/fc"), &id("a"));
        let account = VmmAccount {
            name: "fcvm-a".into(),
            uid: VMM_ID_FIRST,
            gid: VMM_ID_FIRST,
        };
        let files = expected_files(&assets, true);
        let owned: Vec<&Path> = files
            .iter()
            .filter(|e| e.owner(&account).0 != 0)
            .map(|e| e.path.as_path())
            .collect();
        assert_eq!(
            owned,
            [
                assets.rootfs.as_path(),
                assets.vmm_dir.as_path(),
                assets.vmm_log.as_path()
            ]
        );
        for entry in &files {
            // Nothing is writable by group or others, and nothing of root's by the VMM.
            assert_eq!(entry.mode & 0o022, 0, "{entry:?}");
        }
        let logs = files.iter().find(|e| e.path == assets.logs).unwrap();
        assert_eq!(logs.holder, Holder::Root);
    }

    #[test]
    fn limits_follow_the_instance_size() {
        let small = limits(1, 512);
        assert_eq!(small.memory_max_bytes, (512 + 128 + 256) << 20);
        assert_eq!(small.tasks_max, 65);
        assert_eq!(small.cpu_weight, 100);
        assert_eq!(small.cpu_quota_percent, 200);
        let big = limits(4, 8192);
        assert_eq!(big.memory_max_bytes, (8192 + 384) << 20);
        assert_eq!(big.cpu_weight, 400);
        assert_eq!(big.cpu_quota_percent, 500);
    }
}
