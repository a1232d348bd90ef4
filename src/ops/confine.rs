//! Putting an instance's VMM in its confined shape on this host: choosing and creating its
//! account (under the allocation lock), making `FC_ROOT` reachable for it, creating its own
//! dir and log, and handing it exactly the files `instance::confinement` lists. Every change
//! to a file the VMM can reach goes through a descriptor opened with `O_NOFOLLOW`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::host::accounts::{self, AccountError, Entry};
use crate::instance::confinement::{
    Expected, KVM_GROUP, Kind, VMM_ID_FIRST, VmmAccount, account_name, in_vmm_range,
};
use crate::instance::layout::{AssetPaths, VMM_DIR};
use crate::instance::values::InstanceId;
use crate::settings::Settings;
use crate::store::write_atomic;

/// `STATE_ROOT/.vmm-id-next`: the id after the last one handed out, so ids are not reused
/// until the range wraps.
const NEXT_ID_FILE: &str = ".vmm-id-next";

/// Ids that own a file fireclaw hands to a VMM under `FC_ROOT` (its disk, its dir, its log),
/// so an id is never given to a new instance while a file of an old one still has it.
fn ids_owning_files(fc_root: &Path) -> Vec<u32> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(fc_root).into_iter().flatten().flatten() {
        let dir = entry.path();
        for path in [
            dir.join("images")
                .join(crate::instance::layout::ROOTFS_FILE),
            dir.join(VMM_DIR),
        ] {
            if let Ok(metadata) = std::fs::symlink_metadata(&path)
                && in_vmm_range(metadata.uid())
            {
                ids.push(metadata.uid());
            }
        }
    }
    ids
}

/// The account a new instance `id` gets: named by `account_name`, with the lowest free id at or
/// above the last one handed out (`setup --dry-run` shows it; setup chooses again under the
/// allocation lock).
pub fn choose_account(settings: &Settings, id: &InstanceId) -> Result<VmmAccount> {
    let next_file = settings.paths.state_root.join(NEXT_ID_FILE);
    let floor = std::fs::read_to_string(&next_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(VMM_ID_FIRST);
    let users = accounts::users()?;
    let groups = accounts::groups()?;
    let mut reserved = ids_owning_files(&settings.paths.fc_root);
    let mut floor = floor;
    // Ids the name service knows from elsewhere (LDAP, sssd) are taken as well.
    let uid = loop {
        let uid =
            accounts::free_id(&users, &groups, &reserved, floor).ok_or(AccountError::RangeFull)?;
        if !accounts::id_known_to_nss(uid) {
            break uid;
        }
        reserved.push(uid);
        floor = uid;
    };
    Ok(VmmAccount {
        name: account_name(id),
        uid,
        gid: uid,
    })
}

/// Creates the VMM account of `id` (see `choose_account`), once the host can give a VMM
/// `/dev/kvm` at all. The caller holds the allocation lock.
pub fn create_account(settings: &Settings, id: &InstanceId) -> Result<VmmAccount> {
    check_kvm_access()?;
    let account = choose_account(settings, id)?;
    accounts::create(&account, &format!("fireclaw VMM of {id}"))?;
    let next_file = settings.paths.state_root.join(NEXT_ID_FILE);
    write_atomic(
        &next_file,
        format!("{}\n", account.uid + 1).as_bytes(),
        0o600,
    )?;
    Ok(account)
}

/// The fix for a host whose `/dev/kvm` the `kvm` group cannot open (what udev's default rule
/// sets up on Debian and Ubuntu).
pub const KVM_FIX: &str = "groupadd --system kvm; chown root:kvm /dev/kvm; chmod 0660 /dev/kvm (udev's rule KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0660\" keeps it so after a reboot)";

/// A program the VM unit would have to run from a directory its sandboxing hides: systemd
/// would fail at EXEC and restart the unit in a loop.
#[derive(Debug, thiserror::Error)]
#[error(
    "the firecracker at {path} cannot run in the VM unit, whose sandboxing hides {hidden}; install it outside /home, /root, /run/user, /tmp and /var/tmp, e.g. as /usr/local/bin/firecracker"
)]
pub struct HiddenFromUnits {
    pub path: std::path::PathBuf,
    pub hidden: &'static str,
}

/// Refuses a Firecracker binary the VM unit could not execute: one below a directory the
/// unit's sandboxing hides, as given or once its symlinks are resolved.
pub fn runnable_by_units(path: &std::path::Path) -> Result<(), HiddenFromUnits> {
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    match crate::instance::confinement::hidden_from_vm_units(path)
        .or_else(|| crate::instance::confinement::hidden_from_vm_units(&resolved))
    {
        Some(hidden) => Err(HiddenFromUnits {
            path: path.to_owned(),
            hidden,
        }),
        None => Ok(()),
    }
}

/// Whether members of the `kvm` group can open `/dev/kvm`, as a confined VMM must.
pub fn check_kvm_access() -> Result<()> {
    let Some(gid) = accounts::group_id(KVM_GROUP)? else {
        bail!(
            "this host has no '{KVM_GROUP}' group, so a VMM that does not run as root cannot open /dev/kvm; fix: {KVM_FIX}"
        );
    };
    let metadata =
        std::fs::metadata(KVM_DEVICE).with_context(|| format!("inspect {KVM_DEVICE}"))?;
    let mode = metadata.permissions().mode() & 0o777;
    if metadata.gid() != gid || mode & 0o060 != 0o060 {
        bail!(
            "{KVM_DEVICE} is mode {mode:04o} with gid {}, so the '{KVM_GROUP}' group (gid {gid}) cannot open it; fix: {KVM_FIX}",
            metadata.gid()
        );
    }
    Ok(())
}

pub const KVM_DEVICE: &str = "/dev/kvm";

/// The account a VMM of `id` would have, if the host has one under that name in fireclaw's
/// range: what a setup killed before it recorded its account left.
pub fn leftover_account(users: &[Entry], id: &InstanceId) -> Option<String> {
    let name = account_name(id);
    users
        .iter()
        .any(|u| u.name == name && in_vmm_range(u.id))
        .then_some(name)
}

/// Gives every listed path its owner and mode.
pub fn hand_over(files: &[Expected], account: &VmmAccount) -> Result<()> {
    for entry in files {
        let (uid, gid) = entry.owner(account);
        accounts::set_owner_and_mode(&entry.path, entry.kind == Kind::Dir, uid, gid, entry.mode)?;
    }
    Ok(())
}

/// Creates the VMM's own dir and its log when missing (as root, never through a link); the
/// owner and mode are set by `hand_over`.
pub fn ensure_vmm_dir(assets: &AssetPaths, account: &VmmAccount) -> Result<()> {
    match std::fs::symlink_metadata(&assets.vmm_dir) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => bail!(
            "{} is not a directory; refusing to use it as the VMM's dir",
            assets.vmm_dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(&assets.vmm_dir)
                .with_context(|| format!("create {}", assets.vmm_dir.display()))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("inspect {}", assets.vmm_dir.display()));
        }
    }
    accounts::set_owner_and_mode(&assets.vmm_dir, true, account.uid, account.gid, 0o700)?;
    let log_name = assets
        .vmm_log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    accounts::create_vmm_file(&assets.vmm_dir, &log_name, account.uid, account.gid)?;
    Ok(())
}

/// Makes `FC_ROOT` and the dirs above it searchable by the VMM accounts. A root-owned dir of
/// mode 0700 (what fireclaw before confinement created) gets 0711, so it still cannot be
/// listed, when it is `FC_ROOT` itself or holds nothing but the way to fireclaw's own roots
/// (`FC_ROOT`, `BASE_IMAGES_DIR`): searching it then reaches nothing else. Any other dir the
/// accounts cannot search is not fireclaw's to change, and is refused with the fix.
pub fn make_reachable(fc_root: &Path, own_roots: &[&Path]) -> Result<()> {
    reachable(fc_root, own_roots, true)
}

/// What `make_reachable` would refuse, changing nothing (`adopt` checks it first).
pub fn check_reachable(fc_root: &Path, own_roots: &[&Path]) -> Result<()> {
    reachable(fc_root, own_roots, false)
}

fn reachable(fc_root: &Path, own_roots: &[&Path], change: bool) -> Result<()> {
    for dir in fc_root.ancestors() {
        let metadata =
            std::fs::metadata(dir).with_context(|| format!("inspect {}", dir.display()))?;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o001 != 0 {
            continue;
        }
        if metadata.uid() == 0 && mode == 0o700 && (dir == fc_root || only_leads_to(dir, own_roots))
        {
            if change {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                    .with_context(|| format!("make {} searchable (0711)", dir.display()))?;
            }
            continue;
        }
        bail!(
            "the VMM accounts cannot reach FC_ROOT {}: {} is mode {mode:04o} (owner uid {}); give others search permission (chmod o+x {}) or choose another FC_ROOT",
            fc_root.display(),
            dir.display(),
            metadata.uid(),
            dir.display()
        );
    }
    Ok(())
}

/// Whether every entry of `dir` is on the way to one of `roots`.
fn only_leads_to(dir: &Path, roots: &[&Path]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().all(|entry| {
        let path = entry.path();
        roots.iter().any(|root| root.starts_with(&path))
    })
}

/// The fireclaw, firecracker and socat binaries units will name: found, runnable by the
/// units, and on trusted paths (root's, not writable by others).
pub fn trusted_tools() -> anyhow::Result<crate::render::artifacts::HostTools> {
    let tools = crate::render::artifacts::HostTools {
        fireclaw: std::env::current_exe().context("locate the fireclaw binary")?,
        firecracker: crate::host::probe::which("firecracker")
            .context("firecracker is not on PATH")?,
        socat: crate::host::probe::which("socat").context("socat is not on PATH")?,
    };
    runnable_by_units(&tools.firecracker)?;
    for (what, path) in [
        ("fireclaw binary", &tools.fireclaw),
        ("firecracker binary", &tools.firecracker),
        ("socat binary", &tools.socat),
    ] {
        crate::host::trust::check_trusted(what, path)?;
    }
    Ok(tools)
}

/// Writes an instance's confined VM unit and its scripts again at this size: adopt (which
/// confines it) and resize (whose limits follow the size) share it. The caller reloads systemd.
pub fn write_confined_units(
    settings: &Settings,
    loaded: &super::instance::Loaded,
    tools: &crate::render::artifacts::HostTools,
    vmm: crate::render::artifacts::VmmSize<'_>,
) -> Result<()> {
    use crate::render::artifacts::{Body, UnitsPlan, unit_files};
    let id = &loaded.id;
    let files = unit_files(&UnitsPlan {
        id,
        tools,
        api_sock: loaded.env.api_sock().unwrap_or_else(|| {
            crate::instance::layout::default_api_sock(&settings.paths.fc_root, id.as_str())
        }),
        vmm: Some(vmm),
        host_port: loaded.port,
        vm_ip: loaded.ssh.ip,
        network: &settings.network,
        paths: &settings.paths,
    });
    for artifact in files.scripts.iter().chain(&files.units) {
        if let Body::Text(text) = &artifact.body {
            write_atomic(&artifact.path, text.as_bytes(), artifact.mode)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_account_in_range_under_the_derived_name_is_a_leftover() {
        let id: InstanceId = "a".parse().unwrap();
        let in_range = Entry {
            name: "fcvm-a".into(),
            id: VMM_ID_FIRST,
            gid: VMM_ID_FIRST,
        };
        let outside = Entry {
            id: 1000,
            ..in_range.clone()
        };
        assert_eq!(
            leftover_account(std::slice::from_ref(&in_range), &id).as_deref(),
            Some("fcvm-a")
        );
        assert_eq!(leftover_account(&[outside], &id), None);
    }

    #[test]
    fn a_private_dir_becomes_searchable_and_a_foreign_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("fc");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o750)).unwrap();
        let error = make_reachable(&root, &[]).unwrap_err().to_string();
        assert!(error.contains("mode 0750"), "{error}");
        assert!(error.contains("chmod o+x"), "{error}");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_reachable(&root, &[]).unwrap();
    }

    #[test]
    fn only_a_dir_holding_nothing_but_the_way_to_fireclaws_roots_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("srv-firecracker");
        let fc_root = top.join("vm-demo");
        let images = top.join("base/images");
        std::fs::create_dir_all(&fc_root).unwrap();
        std::fs::create_dir_all(&images).unwrap();
        assert!(only_leads_to(&top, &[&fc_root, &images]));
        assert!(!only_leads_to(&top, &[&fc_root]));
        std::fs::write(top.join("secret"), "x").unwrap();
        assert!(!only_leads_to(&top, &[&fc_root, &images]));
    }
}
