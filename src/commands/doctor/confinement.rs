//! doctor's checks of the confined VMMs: whether the `kvm` group can open `/dev/kvm`, whether
//! this host enforces the units' resource limits, and for each instance its VMM account, the
//! owner and mode of each file it was handed, its tap's owner, and its VM unit's sandboxing as
//! systemd loaded it (properties, not the exposure score, which changes between systemd
//! versions). Instances whose VMM still runs as root are named, and accounts in fireclaw's
//! range that no instance owns.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::checks::{Check, Level, check};
use crate::host::{accounts, tap};
use crate::instance::confinement::{KVM_GROUP, Kind, VmmAccount, expected_files, limits};
use crate::instance::layout::{AssetPaths, StatePaths, UnitNames};
use crate::instance::state::Phase;
use crate::instance::values::{InstanceId, escaped};
use crate::output::error_chain;
use crate::render::units::{UnitConfinement, proxy_hardening, vm_hardening};
use crate::settings::Settings;
use crate::store::{ScannedInstance, read_fireclaw_state};

pub fn host_checks(checks: &mut Vec<Check>) {
    checks.push(match crate::ops::confine::check_kvm_access() {
        Ok(()) => check(
            "kvm group",
            Level::Pass,
            "the kvm group can open /dev/kvm (0660 root:kvm), as confined VMMs need",
        ),
        Err(error) => check("kvm group", Level::Fail, error_chain(error.as_ref())),
    });
    checks.push(resource_limits_check(
        &std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default(),
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
    ));
}

/// Whether this host can enforce the VM units' limits: a cgroup v2 memory controller, or a
/// writable v1 one (systemd 252 applies `MemoryMax=` as `memory.limit_in_bytes` and
/// `CPUWeight=` as `cpu.shares` there). A container that sees its controllers read-only (as
/// the test sandboxes do) enforces none. Each running VM's applied limit is `limits <id>`.
pub fn resource_limits_check(v2_controllers: &str, mountinfo: &str) -> Check {
    if v2_controllers.split_whitespace().any(|c| c == "memory") {
        return check(
            "resource limits",
            Level::Pass,
            "cgroup v2: systemd enforces the VM units' MemoryMax=, TasksMax=, CPUWeight= and CPUQuota=",
        );
    }
    let writable_v1_memory = mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        let mount_options = fields.get(5).copied().unwrap_or("");
        fields.get(dash + 1) == Some(&"cgroup")
            && fields
                .get(dash + 3)
                .is_some_and(|o| o.split(',').any(|o| o == "memory"))
            && mount_options.split(',').any(|o| o == "rw")
    });
    if writable_v1_memory {
        check(
            "resource limits",
            Level::Pass,
            "cgroup v1 (legacy or hybrid): systemd applies MemoryMax= as memory.limit_in_bytes and CPUWeight= as cpu.shares; each running VM's applied limit is checked as 'limits <id>'",
        )
    } else {
        check(
            "resource limits",
            Level::Warn,
            "no writable memory controller (cgroup v1 controllers mounted read-only, as in a container): the VM units' MemoryMax=, CPUWeight= and CPUQuota= are not enforced here",
        )
    }
}

/// The per-instance checks and the accounts no instance owns.
pub fn instance_checks(settings: &Settings, scanned: &[ScannedInstance], checks: &mut Vec<Check>) {
    let users = accounts::users().unwrap_or_default();
    let mut owned = Vec::new();
    for instance in scanned {
        let Ok(id) = instance.name.parse::<InstanceId>() else {
            continue;
        };
        let state = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &id))
            .ok()
            .flatten();
        // Owned even when the rest of its state cannot be read: never advise removing it.
        if let Some(account) = state.as_ref().and_then(|s| s.vmm_account.as_ref()) {
            owned.push(account.name.clone());
        }
        // A half-made or unreadable instance has its own finding ("instance <id>").
        let Ok(env) = &instance.env else { continue };
        if state.as_ref().is_some_and(|s| s.phase < Phase::Units) {
            continue;
        }
        let name = format!("vmm {}", escaped(&instance.name));
        let Some(account) = state.and_then(|s| s.vmm_account) else {
            checks.push(check(
                &name,
                Level::Warn,
                format!(
                    "its Firecracker runs as root (made by fireclaw 0.2.0 or before confinement); confine it with: fireclaw adopt {id}"
                ),
            ));
            continue;
        };
        let mut problems = Vec::new();
        match users.iter().find(|u| u.name == account.name) {
            Some(user) if user.id == account.uid && user.gid == account.gid => {}
            Some(user) => problems.push(format!(
                "account {} has uid {} gid {}, not {} {} as recorded",
                account.name, user.id, user.gid, account.uid, account.gid
            )),
            None => problems.push(format!("account {} is missing", account.name)),
        }
        let assets = AssetPaths::new(&settings.paths.fc_root, &id);
        problems.extend(file_problems(&assets, &account));
        if let Ok(tap_name) = env.tap()
            && let Ok((uid, gid)) = tap::tap_owner(tap_name)
            && (uid, gid) != (Some(account.uid), Some(account.gid))
        {
            problems.push(format!(
                "tap {tap_name} is owned by {}, not the VMM account (vm-net-up repairs it at the next start when nothing holds it)",
                uid.map_or("nobody".to_owned(), |u| format!("uid {u}"))
            ));
        }
        let size = (
            env.get("VM_VCPU").parse::<u8>().unwrap_or(0),
            env.get("VM_MEM_MIB").parse::<u32>().unwrap_or(0),
        );
        let units = UnitNames::new(&id);
        let mut vm_settings = vec![
            ("User", account.name.clone()),
            ("Group", account.name.clone()),
            ("SupplementaryGroups", KVM_GROUP.to_owned()),
        ];
        vm_settings.extend(vm_hardening(&UnitConfinement {
            account: account.name.clone(),
            instance_dir: assets.dir.clone(),
            limits: limits(size.0, size.1),
        }));
        problems.extend(unit_problems(&units.vm, &expectations(&vm_settings)));
        if let Ok(vm_ip) = env.vm_ip() {
            let mut proxy_settings = vec![("DynamicUser", "yes".to_owned())];
            proxy_settings.extend(proxy_hardening(vm_ip));
            problems.extend(unit_problems(&units.proxy, &expectations(&proxy_settings)));
        }
        checks.push(if problems.is_empty() {
            check(
                &name,
                Level::Pass,
                format!(
                    "runs as {} (uid {}); files, tap and unit sandboxing as fireclaw set them",
                    account.name, account.uid
                ),
            )
        } else {
            check(&name, Level::Fail, problems.join("; "))
        });
        if let Some(applied) = applied_limits(&id, limits(size.0, size.1).memory_max_bytes) {
            checks.push(applied);
        }
    }
    let vmm_users = accounts::vmm_range_users().unwrap_or_default();
    for user in vmm_users.iter().filter(|u| !owned.contains(&u.name)) {
        checks.push(check(
            &format!("account {}", user.name),
            Level::Warn,
            format!(
                "uid {} is in fireclaw's VMM range but no instance owns it (left by an interrupted setup or destroy, or by fireclaw 0.2.0 destroying an adopted instance); remove it with: userdel {} (or fireclaw destroy <id> --force for the instance it was made for, or fireclaw host cleanup once no instance is left)",
                user.id, user.name
            ),
        ));
    }
    for group in accounts::vmm_range_lone_groups().unwrap_or_default() {
        checks.push(check(
            &format!("account {}", group.name),
            Level::Warn,
            format!(
                "group {} (gid {}) is in fireclaw's VMM range without its user (left by a setup killed while creating it); the next setup of that instance takes it up, or remove it with: groupdel {}",
                group.name, group.id, group.name
            ),
        ));
    }
}

/// Each handed-over path whose kind, owner or mode is not what `expected_files` says, read
/// without following links.
fn file_problems(assets: &AssetPaths, account: &VmmAccount) -> Vec<String> {
    let mut problems = Vec::new();
    for entry in expected_files(assets, assets.initrd.exists()) {
        let Ok(metadata) = std::fs::symlink_metadata(&entry.path) else {
            problems.push(format!("{} is missing", entry.path.display()));
            continue;
        };
        let kind_ok = match entry.kind {
            Kind::Dir => metadata.is_dir(),
            Kind::File => metadata.is_file(),
        };
        let (uid, gid) = entry.owner(account);
        let mode = metadata.permissions().mode() & 0o7777;
        if !kind_ok || metadata.uid() != uid || metadata.gid() != gid || mode != entry.mode {
            problems.push(format!(
                "{} is {} {}:{} {mode:04o}, expected {} {uid}:{gid} {:04o}",
                entry.path.display(),
                kind_name(&metadata),
                metadata.uid(),
                metadata.gid(),
                if entry.kind == Kind::Dir {
                    "dir"
                } else {
                    "file"
                },
                entry.mode
            ));
        }
    }
    problems
}

fn kind_name(metadata: &std::fs::Metadata) -> &'static str {
    if metadata.file_type().is_symlink() {
        "link"
    } else if metadata.is_dir() {
        "dir"
    } else {
        "file"
    }
}

/// Whether the kernel holds the running VM unit to its memory limit: what the unit's cgroup
/// says, read from the v2 file or the v1 memory controller's (systemd applies `MemoryMax=` as
/// `memory.limit_in_bytes` there). `None` when the VM is not running.
fn applied_limits(id: &InstanceId, memory_max: u64) -> Option<Check> {
    let unit = UnitNames::new(id).vm;
    let output = crate::host::process::run(
        "systemctl",
        &["show", &unit, "--property=ControlGroup", "--value"],
    )
    .ok()?;
    let group = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if group.is_empty() {
        return None;
    }
    let name = format!("limits {}", escaped(id.as_str()));
    let files = [
        format!("/sys/fs/cgroup{group}/memory.max"),
        format!("/sys/fs/cgroup/memory{group}/memory.limit_in_bytes"),
    ];
    let Some((file, value)) = files.iter().find_map(|file| {
        std::fs::read_to_string(file)
            .ok()
            .map(|v| (file.clone(), v.trim().to_owned()))
    }) else {
        return Some(check(
            &name,
            Level::Warn,
            format!(
                "this host has no memory controller for {unit}'s cgroup, so its MemoryMax= ({memory_max} bytes) is not enforced"
            ),
        ));
    };
    Some(if value == memory_max.to_string() {
        check(
            &name,
            Level::Pass,
            format!("the kernel holds the VM to {memory_max} bytes ({file})"),
        )
    } else {
        check(
            &name,
            Level::Warn,
            format!(
                "MemoryMax= is {memory_max} bytes but {file} says {value}: this host does not enforce the VM unit's limits (a container without its own cgroups, or an older systemd)"
            ),
        )
    })
}

/// What `systemctl show` must print for one setting the renderer writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// `name=value`, exactly.
    Equal(String, String),
    /// Every `name=` line together, as a set (`DeviceAllow=` prints one line per device, and
    /// `ProtectClock=yes` adds `char-rtc r`).
    Lines(String, Vec<String>),
    /// A syscall allow-list is in force (shown expanded; `~` alone means none).
    AllowList(String),
    /// `name=` with these words in any order (address lists come back in no fixed order).
    Words(String, Vec<String>),
}

/// How `systemctl show` (systemd 252, measured) prints `name=value` as the renderer writes it.
pub fn shown(name: &str, value: &str) -> Shown {
    let equal = |name: &str, value: &str| Shown::Equal(name.to_owned(), value.to_owned());
    match name {
        "IPAddressDeny" | "IPAddressAllow" => {
            let words = if value == "any" {
                vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()]
            } else {
                value.split_whitespace().map(str::to_owned).collect()
            };
            Shown::Words(name.to_owned(), words)
        }
        "CPUQuota" => {
            let percent = value.trim_end_matches('%').parse::<u64>().unwrap_or(0);
            // Per second of wall time: 100% is one second of CPU.
            let shown = if percent % 100 == 0 {
                format!("{}s", percent / 100)
            } else {
                format!("{}ms", percent * 10)
            };
            equal("CPUQuotaPerSecUSec", &shown)
        }
        "SystemCallErrorNumber" if value == "EPERM" => equal(name, "1"),
        "SystemCallFilter" => Shown::AllowList(name.to_owned()),
        "DeviceAllow" => Shown::Lines(name.to_owned(), vec![value.to_owned()]),
        _ => equal(name, value),
    }
}

/// The settings `doctor` expects of a unit: the renderer's, in `systemctl show`'s words, with
/// the `DeviceAllow=` lines gathered into one set.
pub fn expectations(settings: &[(&str, String)]) -> Vec<Shown> {
    let mut out: Vec<Shown> = Vec::new();
    for (name, value) in settings {
        match shown(name, value) {
            Shown::Lines(name, lines) => {
                if let Some(Shown::Lines(_, all)) = out
                    .iter_mut()
                    .find(|e| matches!(e, Shown::Lines(n, _) if *n == name))
                {
                    all.extend(lines);
                } else {
                    out.push(Shown::Lines(name, lines));
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn property_name(expected: &Shown) -> &str {
    match expected {
        Shown::Equal(name, _)
        | Shown::Lines(name, _)
        | Shown::AllowList(name)
        | Shown::Words(name, _) => name,
    }
}

/// A unit's loaded properties (drop-ins included) against `expected`.
fn unit_problems(unit: &str, expected: &[Shown]) -> Vec<String> {
    let mut names: Vec<&str> = expected.iter().map(property_name).collect();
    names.dedup();
    let output = crate::host::process::run(
        "systemctl",
        &["show", unit, &format!("--property={}", names.join(","))],
    );
    let Ok(output) = output else {
        return vec![format!("could not read unit {unit} (systemctl show)")];
    };
    compare_properties(unit, expected, &String::from_utf8_lossy(&output.stdout))
}

/// Each expectation that `systemctl show` output does not meet.
pub fn compare_properties(unit: &str, expected: &[Shown], shown: &str) -> Vec<String> {
    let values = |name: &str| -> Vec<&str> {
        shown
            .lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .collect()
    };
    let mut problems = Vec::new();
    for expectation in expected {
        match expectation {
            Shown::Equal(name, value) => {
                let found = values(name);
                if found.last() != Some(&value.as_str()) {
                    problems.push(format!(
                        "unit {unit} has {name}={}, fireclaw writes {name}={value}",
                        found.last().unwrap_or(&"<unset>")
                    ));
                }
            }
            Shown::Lines(name, wanted) => {
                let found = values(name);
                // ProtectClock=yes adds read access to the real-time clock by itself.
                let extra: Vec<&&str> = found
                    .iter()
                    .filter(|f| !wanted.iter().any(|w| w == **f) && **f != "char-rtc r")
                    .collect();
                let missing: Vec<&String> = wanted
                    .iter()
                    .filter(|w| !found.contains(&w.as_str()))
                    .collect();
                if !extra.is_empty() || !missing.is_empty() {
                    problems.push(format!(
                        "unit {unit} has {name}={}, fireclaw writes {name}={}",
                        found.join(", "),
                        wanted.join(", ")
                    ));
                }
            }
            Shown::Words(name, wanted) => {
                let found = values(name);
                let mut have: Vec<&str> = found
                    .last()
                    .map(|v| v.split_whitespace().collect())
                    .unwrap_or_default();
                let mut want: Vec<&str> = wanted.iter().map(String::as_str).collect();
                have.sort_unstable();
                want.sort_unstable();
                if have != want {
                    problems.push(format!(
                        "unit {unit} has {name}={}, fireclaw writes {name}={}",
                        found.last().unwrap_or(&"<unset>"),
                        wanted.join(" ")
                    ));
                }
            }
            Shown::AllowList(name) => {
                let found = values(name);
                if found
                    .last()
                    .is_none_or(|v| v.is_empty() || v.starts_with('~'))
                {
                    problems.push(format!(
                        "unit {unit} has no {name} allow-list, fireclaw writes one"
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `systemctl show` printed for a confined VM unit on systemd 252 (abridged).
    const SHOWN: &str = "User=fcvm-a\nCPUQuotaPerSecUSec=3s\nDeviceAllow=char-rtc r\n\
DeviceAllow=/dev/net/tun rw\nDeviceAllow=/dev/kvm rw\nIPAddressDeny=0.0.0.0/0 ::/0\n\
CapabilityBoundingSet=\nSystemCallFilter=~\n";

    #[test]
    fn the_renderers_settings_match_what_systemd_shows_for_them() {
        let expected = expectations(&[
            ("User", "fcvm-a".to_owned()),
            ("CPUQuota", "300%".to_owned()),
            ("DeviceAllow", "/dev/kvm rw".to_owned()),
            ("DeviceAllow", "/dev/net/tun rw".to_owned()),
            ("IPAddressDeny", "any".to_owned()),
            ("CapabilityBoundingSet", String::new()),
        ]);
        assert!(compare_properties("u", &expected, SHOWN).is_empty());
    }

    #[test]
    fn a_loosened_setting_is_named_with_both_values() {
        let expected = expectations(&[
            ("User", "fcvm-a".to_owned()),
            ("DeviceAllow", "/dev/kvm rw".to_owned()),
            ("DeviceAllow", "/dev/net/tun rw".to_owned()),
            ("CapabilityBoundingSet", String::new()),
            ("SystemCallFilter", "@system-service".to_owned()),
        ]);
        let loosened = SHOWN.replace("User=fcvm-a", "User=root").replace(
            "CapabilityBoundingSet=",
            "CapabilityBoundingSet=cap_sys_admin",
        ) + "DeviceAllow=/dev/sda rw\n";
        assert_eq!(
            compare_properties("u", &expected, &loosened),
            [
                "unit u has User=root, fireclaw writes User=fcvm-a",
                "unit u has DeviceAllow=char-rtc r, /dev/net/tun rw, /dev/kvm rw, /dev/sda rw, fireclaw writes DeviceAllow=/dev/kvm rw, /dev/net/tun rw",
                "unit u has CapabilityBoundingSet=cap_sys_admin, fireclaw writes CapabilityBoundingSet=",
                "unit u has no SystemCallFilter allow-list, fireclaw writes one",
            ]
        );
        assert_eq!(
            compare_properties("u", &expected, "User=fcvm-a\n")[0],
            "unit u has DeviceAllow=, fireclaw writes DeviceAllow=/dev/kvm rw, /dev/net/tun rw"
        );
    }

    #[test]
    fn limits_are_enforceable_with_v2_or_a_writable_v1_memory_controller() {
        let v1 = |mode: &str| {
            format!(
                "57 50 0:32 / /sys/fs/cgroup/memory {mode},nosuid,nodev,noexec,relatime shared:25 - cgroup cgroup rw,memory\n"
            )
        };
        assert_eq!(
            resource_limits_check("cpuset cpu io memory pids\n", "").status,
            Level::Pass
        );
        assert_eq!(resource_limits_check("", &v1("rw")).status, Level::Pass);
        // The test sandboxes: nspawn mounts the v1 controllers read-only.
        assert_eq!(resource_limits_check("", &v1("ro")).status, Level::Warn);
    }

    #[test]
    fn quotas_are_shown_per_second_of_cpu() {
        assert_eq!(
            shown("CPUQuota", "500%"),
            Shown::Equal("CPUQuotaPerSecUSec".into(), "5s".into())
        );
        assert_eq!(
            shown("CPUQuota", "150%"),
            Shown::Equal("CPUQuotaPerSecUSec".into(), "1500ms".into())
        );
    }
}
