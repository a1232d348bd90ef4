//! doctor's checks of the confined VMMs: whether the `kvm` group can open `/dev/kvm`, whether
//! this host enforces the units' resource limits, and for each instance its VMM account, the
//! owner and mode of each file it was handed, its tap's owner, and its VM unit's sandboxing as
//! systemd loaded it (properties, not the exposure score, which changes between systemd
//! versions). Instances whose VMM still runs as root are named, and accounts in fireclaw's
//! range that no instance owns.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::checks::{Check, Level, check};
use crate::host::{accounts, tap};
use crate::instance::confinement::{Kind, VmmAccount, expected_files, in_vmm_range, limits};
use crate::instance::layout::{AssetPaths, StatePaths, UnitNames};
use crate::instance::values::{InstanceId, escaped};
use crate::output::error_chain;
use crate::render::units::{UnitConfinement, vm_hardening};
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
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers");
    checks.push(match controllers {
        Ok(list) if list.split_whitespace().any(|c| c == "memory") => check(
            "resource limits",
            Level::Pass,
            "cgroup v2: systemd enforces the VM units' MemoryMax=, CPUWeight= and CPUQuota=",
        ),
        _ => check(
            "resource limits",
            Level::Warn,
            "this host runs the legacy or hybrid cgroup hierarchy, where systemd does not enforce the VM units' MemoryMax= or CPUWeight=; boot with systemd.unified_cgroup_hierarchy=1 to enforce them",
        ),
    });
}

/// The per-instance checks and the accounts no instance owns.
pub fn instance_checks(settings: &Settings, scanned: &[ScannedInstance], checks: &mut Vec<Check>) {
    let users = accounts::users().unwrap_or_default();
    let mut owned = Vec::new();
    for instance in scanned {
        let Ok(env) = &instance.env else { continue };
        let Ok(id) = instance.name.parse::<InstanceId>() else {
            continue;
        };
        let state = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &id))
            .ok()
            .flatten();
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
        owned.push(account.name.clone());
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
        problems.extend(unit_problems(&id, &assets, &account, size));
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
    }
    for user in users.iter().filter(|u| in_vmm_range(u.id)) {
        if !owned.contains(&user.name) {
            checks.push(check(
                &format!("account {}", user.name),
                Level::Warn,
                format!(
                    "uid {} is in fireclaw's VMM range but no instance owns it (left by 0.2.0's destroy, or an interrupted setup); remove it with: fireclaw destroy <id> --force, or fireclaw host cleanup once no instance is left, or: userdel {}",
                    user.id, user.name
                ),
            ));
        }
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

/// How `systemctl show` spells a sandboxing setting the renderer writes, for the settings
/// whose shown form is the written value.
fn shown_property(name: &str) -> Option<&str> {
    const SAME: [&str; 27] = [
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateMounts",
        "DevicePolicy",
        "ProtectSystem",
        "ReadWritePaths",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "ProtectProc",
        "ProcSubset",
        "RestrictNamespaces",
        "RestrictAddressFamilies",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "SystemCallArchitectures",
        "UMask",
        "RemoveIPC",
        "KeyringMode",
        "MemoryMax",
        "TasksMax",
    ];
    SAME.iter()
        .find(|same| **same == name)
        .copied()
        .or(match name {
            "LimitNOFILE" => Some("LimitNOFILE"),
            "CPUWeight" => Some("CPUWeight"),
            _ => None,
        })
}

/// The VM unit's loaded properties (drop-ins included) against what the renderer writes for
/// this instance.
fn unit_problems(
    id: &InstanceId,
    assets: &AssetPaths,
    account: &VmmAccount,
    (vcpus, memory_mib): (u8, u32),
) -> Vec<String> {
    let unit = UnitNames::new(id).vm;
    let confinement = UnitConfinement {
        account: account.name.clone(),
        instance_dir: assets.dir.clone(),
        limits: limits(vcpus, memory_mib),
    };
    let mut wanted: Vec<(String, String)> = vec![
        ("User".into(), account.name.clone()),
        ("Group".into(), account.name.clone()),
    ];
    for (name, value) in vm_hardening(&confinement) {
        if let Some(shown) = shown_property(name) {
            wanted.push((shown.to_owned(), value));
        }
    }
    let names: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
    let output = crate::host::process::run(
        "systemctl",
        &["show", &unit, &format!("--property={}", names.join(","))],
    );
    let Ok(output) = output else {
        return vec![format!("could not read unit {unit} (systemctl show)")];
    };
    let shown = String::from_utf8_lossy(&output.stdout);
    compare_properties(&unit, &wanted, &shown)
}

/// Each wanted `name=value` that `systemctl show` output lacks.
pub fn compare_properties(unit: &str, wanted: &[(String, String)], shown: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, value) in wanted {
        let found = shown
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")));
        if found != Some(value.as_str()) {
            problems.push(format!(
                "unit {unit} has {name}={}, fireclaw writes {name}={value}",
                found.unwrap_or("<unset>")
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_property_systemd_shows_differently_is_named_with_both_values() {
        let wanted = vec![
            ("User".to_owned(), "fcvm-a".to_owned()),
            ("NoNewPrivileges".to_owned(), "yes".to_owned()),
        ];
        assert!(compare_properties("u", &wanted, "User=fcvm-a\nNoNewPrivileges=yes\n").is_empty());
        assert_eq!(
            compare_properties("u", &wanted, "User=root\nNoNewPrivileges=yes\n"),
            ["unit u has User=root, fireclaw writes User=fcvm-a"]
        );
        assert_eq!(
            compare_properties("u", &wanted, "User=fcvm-a\n"),
            ["unit u has NoNewPrivileges=<unset>, fireclaw writes NoNewPrivileges=yes"]
        );
    }
}
