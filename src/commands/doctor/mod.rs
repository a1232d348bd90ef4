//! `fireclaw doctor`: every preflight check of 0.2.0 (host commands, /dev/kvm, base images,
//! bridge, NAT, state root, capacity) plus what 0.2.0 misses: the Firecracker version, a FORWARD
//! policy of DROP, the guest network policy (see `egress`), firewalld, rules split between
//! iptables backends, untrusted or missing paths in units, orphans and half-made instances, a
//! guest kernel that is no x86_64 vmlinux or lacks a driver the guest needs (and whether it has
//! iso9660), and the tools that units written by 0.2.0 need. Each check is pass, warn or fail;
//! any fail makes the exit non-zero.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::Serialize;

mod baked;
mod checks;
mod confinement;
mod egress;
mod snapshots;

use crate::render::units::systemd_first_word;
use checks::{Check, Level, check};

use crate::host::firewall::IPTABLES;
use crate::host::kernel_image::{Feature, inspect_file};
use crate::host::netlink::Netlink;
use crate::host::probe;
use crate::host::process::run as run_program;
use crate::host::rootfs_seed::{FilesystemKind, filesystem_kind};
use crate::host::systemd::ServiceManager;
use crate::host::trust::check_trusted;
use crate::instance::images::{MANIFEST_FILE, manifest_summary};
use crate::instance::layout::{INITRD_FILE, KERNEL_FILE, ROOTFS_FILE, StatePaths, UnitNames};
use crate::instance::state::Phase;
use crate::instance::values::{InstanceId, escaped};
use crate::ops::legacy::is_020_unit;
use crate::output::Output;
use crate::output::{error_chain, use_colour};
use crate::render::egress::forward_chain_name;
use crate::settings::Settings;
use crate::store::{ScannedInstance, read_fireclaw_state, read_image_manifest, scan_instances};

/// The oldest Firecracker fireclaw was tested with.
pub const MIN_FIRECRACKER: (u32, u32) = (1, 10);

/// Parses `Firecracker v1.16.0` into (1, 16).
pub fn parse_firecracker_version(text: &str) -> Option<(u32, u32)> {
    let word = text.split_whitespace().find(|w| w.starts_with('v'))?;
    let mut parts = word.trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// How to install the Firecracker release fireclaw is tested against, from its GitHub release
/// (the layout Firecracker's getting-started guide documents).
pub const FIRECRACKER_INSTALL: &str = "curl -fsSL https://github.com/firecracker-microvm/firecracker/releases/download/v1.16.1/firecracker-v1.16.1-x86_64.tgz | tar -xz && sudo install -o root -g root -m 0755 release-v1.16.1-x86_64/firecracker-v1.16.1-x86_64 /usr/local/bin/firecracker";

/// The host commands the README lists under host requirements, with what each optional one is
/// needed for.
const HOST_COMMANDS: [(&str, Option<&str>); 16] = [
    ("firecracker", None),
    ("systemctl", None),
    ("useradd", None),
    ("userdel", None),
    ("setpriv", None),
    ("iptables", None),
    ("iptables-restore", None),
    ("socat", None),
    ("ssh", None),
    ("debugfs", None),
    ("journalctl", Some("logs host")),
    ("gpgv", Some("image fetch")),
    ("mkfs.ext4", Some("image fetch")),
    ("e2fsck", Some("image fetch")),
    ("zstd", Some("export and import")),
    ("age", Some("encrypted export and import")),
];

fn tools(root: bool, checks: &mut Vec<Check>) {
    for (tool, needed_by) in HOST_COMMANDS {
        // A plain user's PATH often lacks the sbin directories root's has.
        let found = probe::which(tool).or_else(|| {
            (!root)
                .then(|| probe::find_on_path(tool, Some("/usr/local/sbin:/usr/sbin:/sbin")))
                .flatten()
        });
        checks.push(match found {
            Some(path) if tool == "firecracker" => firecracker_location(&path),
            Some(path) => check(
                &format!("command {tool}"),
                Level::Pass,
                path.display().to_string(),
            ),
            None if tool == "firecracker" => check(
                "command firecracker",
                Level::Fail,
                format!("not found on PATH; install it: {FIRECRACKER_INSTALL}"),
            ),
            None => match needed_by {
                None => check(&format!("command {tool}"), Level::Fail, "not found on PATH"),
                Some(what) => check(
                    &format!("command {tool}"),
                    Level::Warn,
                    format!("not found on PATH (needed by {what})"),
                ),
            },
        });
    }
    if let Some(firecracker) = probe::which("firecracker") {
        let version = run_program(
            firecracker.to_str().unwrap_or("firecracker"),
            &["--version"],
        )
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        checks.push(
            match version.as_deref().and_then(parse_firecracker_version) {
                Some(v) if v >= MIN_FIRECRACKER => check(
                    "firecracker version",
                    Level::Pass,
                    format!("{}.{}", v.0, v.1),
                ),
                Some(v) => check(
                    "firecracker version",
                    Level::Warn,
                    format!(
                        "{}.{} is older than the tested minimum {}.{}",
                        v.0, v.1, MIN_FIRECRACKER.0, MIN_FIRECRACKER.1
                    ),
                ),
                None => check(
                    "firecracker version",
                    Level::Warn,
                    "could not read `firecracker --version`",
                ),
            },
        );
    }
}

/// The Firecracker found on PATH, refused where the VM unit's sandboxing hides it.
fn firecracker_location(path: &Path) -> Check {
    match crate::ops::confine::runnable_by_units(path) {
        Ok(()) => check(
            "command firecracker",
            Level::Pass,
            path.display().to_string(),
        ),
        Err(hidden) => check("command firecracker", Level::Fail, hidden.to_string()),
    }
}

/// A check only root can make.
fn needs_root(name: &str) -> Check {
    check(name, Level::Skip, "not checked (needs root)")
}

/// `/dev/kvm` for root, who runs setup: a plain user's own access to it does not matter (the
/// VMM accounts' access is the kvm group check).
fn kvm(root: bool, checks: &mut Vec<Check>) {
    if !root {
        checks.push(if Path::new("/dev/kvm").exists() {
            check("/dev/kvm", Level::Pass, "present")
        } else {
            check(
                "/dev/kvm",
                Level::Fail,
                "missing: enable KVM (or nested virtualisation)",
            )
        });
        return;
    }
    let path = c"/dev/kvm";
    // SAFETY: access() reads a NUL-terminated path and touches nothing else.
    let ok = unsafe { libc::access(path.as_ptr(), libc::R_OK | libc::W_OK) } == 0;
    checks.push(if ok {
        check("/dev/kvm", Level::Pass, "present, read-write")
    } else if Path::new("/dev/kvm").exists() {
        check(
            "/dev/kvm",
            Level::Fail,
            "present but not read-write for this user",
        )
    } else {
        check(
            "/dev/kvm",
            Level::Fail,
            "missing: enable KVM (or nested virtualisation)",
        )
    });
}

fn images(settings: &Settings, checks: &mut Vec<Check>) {
    let dir = &settings.base_images_dir;
    let kernel = dir.join(KERNEL_FILE);
    for (name, path, required) in [
        ("base kernel", kernel.clone(), true),
        ("base rootfs", dir.join(ROOTFS_FILE), true),
        ("base initrd", dir.join(INITRD_FILE), false),
    ] {
        checks.push(match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => check(name, Level::Pass, path.display().to_string()),
            _ if required => check(
                name,
                Level::Fail,
                format!(
                    "{} is missing (download one with: fireclaw image fetch)",
                    path.display()
                ),
            ),
            _ => check(
                name,
                Level::Pass,
                format!("{} absent (optional)", path.display()),
            ),
        });
    }
    let kernel_reads_iso = if kernel.is_file() {
        kernel_checks(&kernel, &dir.join(INITRD_FILE), checks)
    } else {
        None
    };
    let rootfs = dir.join(ROOTFS_FILE);
    if rootfs.is_file() {
        checks.push(rootfs_check(&rootfs, kernel_reads_iso));
        if let Some(contents) = rootfs_contents_check(&rootfs) {
            checks.push(contents);
        }
    }
    checks.push(manifest_check(dir));
    // A fetch or bake at work holds the directory's lock: its staging dir is no leftover.
    let leftovers = crate::store::staging_dirs(dir);
    if !leftovers.is_empty() && !crate::store::image_dir_lock_held(dir) {
        checks.push(check(
            "base images leftovers",
            Level::Warn,
            format!(
                "{} in {} from a killed image fetch or bake; fireclaw host cleanup (or the next fetch or bake) removes them, or finishes installing a baked image already recorded",
                leftovers
                    .iter()
                    .map(|name| escaped(name))
                    .collect::<Vec<_>>()
                    .join(", "),
                dir.display()
            ),
        ));
    }
}

/// Where the base images came from, as `fireclaw image fetch` recorded it.
fn manifest_check(dir: &Path) -> Check {
    const NAME: &str = "base images source";
    match read_image_manifest(dir) {
        Ok(Some(manifest)) => check(NAME, Level::Pass, manifest_summary(&manifest)),
        Ok(None) => check(
            NAME,
            Level::Pass,
            format!(
                "no {MANIFEST_FILE}: not fetched by fireclaw image fetch, so where they came from is not recorded"
            ),
        ),
        Err(error) => check(NAME, Level::Warn, error_chain(&error)),
    }
}

/// Whether setup can write the cloud-init seed into copies of the base rootfs, and when it
/// cannot, whether the guest could read the seed image instead (`kernel_reads_iso`, when the
/// kernel could be inspected).
fn rootfs_check(rootfs: &Path, kernel_reads_iso: Option<bool>) -> Check {
    const NAME: &str = "base rootfs format";
    match filesystem_kind(rootfs) {
        Ok(FilesystemKind::Ext4 {
            needs_recovery: false,
        }) => check(
            NAME,
            Level::Pass,
            "ext4: setup writes the cloud-init seed into each copy",
        ),
        Ok(FilesystemKind::Ext4 {
            needs_recovery: true,
        }) => check(
            NAME,
            Level::Fail,
            "its ext4 journal needs replaying (copied from a running VM?): run e2fsck -fy on it",
        ),
        Ok(FilesystemKind::Other) if kernel_reads_iso == Some(false) => check(
            NAME,
            Level::Fail,
            "not ext4, and the kernel has no iso9660: a guest could read its cloud-init seed from neither, so setup refuses",
        ),
        Ok(FilesystemKind::Other) => check(
            NAME,
            Level::Warn,
            "not ext4: guests get their cloud-init seed only from seed.img, which needs a kernel with iso9660",
        ),
        Err(error) => check(NAME, Level::Fail, error_chain(&error)),
    }
}

/// Whether an ext4 base has what a guest needs to come up where fireclaw reaches it: an
/// init, cloud-init and sshd (setup refuses a base without them). `None` for a base that is
/// not ext4 (the format check speaks for it) or that cannot be read without root.
fn rootfs_contents_check(rootfs: &Path) -> Option<Check> {
    const NAME: &str = "base rootfs contents";
    if !matches!(filesystem_kind(rootfs), Ok(FilesystemKind::Ext4 { .. })) {
        return None;
    }
    Some(match crate::host::rootfs_seed::missing_boot_parts(rootfs) {
        Ok(missing) if missing.is_empty() => check(NAME, Level::Pass, "init, cloud-init and sshd"),
        Ok(missing) => check(
            NAME,
            Level::Fail,
            format!(
                "lacks {}: no guest could boot from it to where fireclaw reaches it, so setup refuses it; use a cloud image's root (fireclaw image fetch) or a baked image",
                missing.join(", ")
            ),
        ),
        Err(error) => check(NAME, Level::Fail, error_chain(&error)),
    })
}

/// What the guest kernel is and carries: an x86_64 ELF vmlinux or not, the drivers the guest
/// needs (missing ones fail without an initrd, which could load them as modules), and iso9660,
/// which only says whether the seed image would work too. Returns whether it has iso9660, when
/// the kernel could be read.
fn kernel_checks(kernel: &Path, initrd: &Path, checks: &mut Vec<Check>) -> Option<bool> {
    let with_initrd = initrd.is_file();
    let report = match inspect_file(kernel) {
        Ok(report) => report,
        Err(error) => {
            checks.push(check("guest kernel", Level::Fail, error_chain(&error)));
            return None;
        }
    };
    checks.push(check(
        "guest kernel",
        Level::Pass,
        format!("x86_64 ELF vmlinux, {}", report.read_from.describe()),
    ));
    checks.push(match report.missing_required(with_initrd) {
        None => check(
            "guest kernel drivers",
            Level::Pass,
            "virtio-mmio, virtio-blk, virtio-net, ext4 and the serial console built in",
        ),
        Some(missing) => check(
            "guest kernel drivers",
            if missing.fatal {
                Level::Fail
            } else {
                Level::Warn
            },
            missing.describe(initrd),
        ),
    });
    checks.push(if report.has(Feature::Iso9660) {
        check(
            "guest kernel iso9660",
            Level::Pass,
            "iso9660 built in: the seed image works too",
        )
    } else {
        check(
            "guest kernel iso9660",
            Level::Pass,
            "iso9660 not built in: the guest reads its seed from the rootfs (seed.img only if the guest loads isofs as a module itself)",
        )
    });
    Some(report.has(Feature::Iso9660))
}

/// The bridge, the guest network policy, and what else on the host decides whether guest
/// traffic passes: the FORWARD policy, IPv4 forwarding, firewalld, split iptables backends.
fn network(
    settings: &Settings,
    instances: usize,
    services: &dyn ServiceManager,
    checks: &mut Vec<Check>,
) {
    let bridge = settings.network.bridge.as_str();
    bridge_check(settings, checks);
    egress::audit(settings, instances, checks);
    forward_policy_check(bridge, checks);
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if forwarding.trim() != "1" && instances > 0 {
        checks.push(check(
            "IPv4 forwarding",
            Level::Warn,
            "off; the next VM start turns it on",
        ));
    }
    let firewalld = services.states(&["firewalld.service"]).unwrap_or_default();
    if firewalld.first().is_some_and(|state| state.is_active()) {
        checks.push(check(
            "firewalld",
            Level::Warn,
            format!("active: its zones reject forwarded bridge traffic; put {bridge} in the trusted zone (firewall-cmd --permanent --zone=trusted --add-interface={bridge})"),
        ));
    }
    split_backends_check(checks);
}

fn bridge_check(settings: &Settings, checks: &mut Vec<Check>) {
    let bridge = settings.network.bridge.as_str();
    match Netlink::open().and_then(|mut n| n.link(bridge).map(|l| (n, l))) {
        Ok((mut netlink, Some(link))) if link.is_bridge() => {
            let has_address = netlink
                .ipv4_addresses(link.index)
                .map(|a| {
                    a.iter()
                        .any(|(ip, _)| *ip == settings.network.bridge_address.address())
                })
                .unwrap_or(false);
            checks.push(if has_address {
                check(
                    "bridge",
                    Level::Pass,
                    format!("{bridge} with {}", settings.network.bridge_address),
                )
            } else {
                check(
                    "bridge",
                    Level::Warn,
                    format!(
                        "{bridge} lacks {}; the next VM start adds it",
                        settings.network.bridge_address
                    ),
                )
            });
        }
        Ok((_, Some(_))) => checks.push(check(
            "bridge",
            Level::Fail,
            format!("{bridge} exists but is not a bridge"),
        )),
        Ok((_, None)) => checks.push(check(
            "bridge",
            Level::Pass,
            format!("{bridge} absent; created at the first VM start"),
        )),
        Err(e) => checks.push(check("bridge", Level::Warn, error_chain(&e))),
    }
}

/// A FORWARD policy of DROP (Docker, UFW) cuts guest egress unless fireclaw's chain is hooked.
fn forward_policy_check(bridge: &str, checks: &mut Vec<Check>) {
    let forward = run_program(
        IPTABLES,
        &["-w", "-C", "FORWARD", "-j", &forward_chain_name(bridge)],
    )
    .is_ok_and(|o| o.status.success());
    let policy = run_program(IPTABLES, &["-w", "-S", "FORWARD"])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default();
    if policy == "-P FORWARD DROP" {
        checks.push(if forward {
            check(
                "FORWARD policy",
                Level::Pass,
                "DROP, with fireclaw's chain accepting guest traffic ahead of it",
            )
        } else {
            check(
                "FORWARD policy",
                Level::Warn,
                "DROP (Docker or UFW?): guest egress is cut until fireclaw's chain is hooked",
            )
        });
    }
}

/// Rules in both the legacy and the nft backend are evaluated separately.
fn split_backends_check(checks: &mut Vec<Check>) {
    let rules = |tool: &str| {
        run_program(tool, &["-S"])
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .count()
            })
    };
    if let (Some(legacy), Some(nft)) = (rules("iptables-legacy"), rules("iptables-nft"))
        && legacy > 0
        && nft > 0
    {
        checks.push(check(
            "iptables backends",
            Level::Warn,
            format!("rules in both legacy ({legacy}) and nft ({nft}): they are evaluated separately and can override each other"),
        ));
    }
}

fn capacity(settings: &Settings, checks: &mut Vec<Check>) {
    let root = &settings.paths.state_root;
    checks.push(match std::fs::metadata(root) {
        Ok(m) if m.uid() == 0 && m.mode() & 0o077 == 0 => check(
            "state root",
            Level::Pass,
            format!("{} (0700, root)", root.display()),
        ),
        Ok(m) => check(
            "state root",
            Level::Fail,
            format!(
                "{} is mode {:04o}, uid {}: it holds secrets and must be root-only 0700",
                root.display(),
                m.mode() & 0o7777,
                m.uid()
            ),
        ),
        Err(_) => check(
            "state root",
            Level::Pass,
            format!("{} absent; created at the first setup", root.display()),
        ),
    });
    if let Some(mib) = probe::mem_available_mib() {
        checks.push(check(
            "memory",
            if mib < 2048 { Level::Warn } else { Level::Pass },
            format!("{mib} MiB available"),
        ));
    }
    let mut dir = settings.paths.fc_root.clone();
    while !dir.exists() && dir.pop() {}
    if let Some(free) = free_bytes(&dir) {
        let gib = free >> 30;
        checks.push(check(
            "disk",
            if gib < 10 { Level::Warn } else { Level::Pass },
            format!("{gib} GiB free under {}", dir.display()),
        ));
    }
}

fn free_bytes(path: &Path) -> Option<u64> {
    crate::host::snapshot::free_bytes(path).ok()
}

/// Absolute program paths of a unit's Exec lines.
fn unit_programs(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter(|l| l.starts_with("ExecStart") || l.starts_with("ExecStop"))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(_, v)| v.trim_start_matches(['-', '@', '+', '!']))
        })
        .map(systemd_first_word)
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// Units, instances and taps, each checked against the others; returns how many instances
/// there are.
fn units_and_orphans(
    settings: &Settings,
    services: &dyn ServiceManager,
    checks: &mut Vec<Check>,
) -> Result<usize> {
    let scanned = scan_instances(&settings.paths.state_root)?;
    let unit_ids = vm_unit_ids(&settings.paths.unit_dir);
    let uses_020_scripts = unit_checks(settings, &scanned, &unit_ids, checks);
    instance_checks(settings, &scanned, &unit_ids, checks);
    import_staging_checks(settings, checks);
    crash_loop_checks(&scanned, services, checks);
    confinement::instance_checks(settings, &scanned, checks);
    snapshots::instance_checks(settings, &scanned, checks);
    baked::checks(settings, &scanned, checks);
    orphan_taps(&scanned, checks);
    if uses_020_scripts {
        tools_of_020_units(checks);
    }
    Ok(scanned.len())
}

/// The instance names of the VM units in the unit dir.
fn vm_unit_ids(unit_dir: &Path) -> Vec<String> {
    std::fs::read_dir(unit_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            UnitNames::instance_of_vm_unit(&name).map(str::to_owned)
        })
        .collect()
}

/// Each VM unit's programs against the trusted-path rule, and units without state. Returns
/// whether any unit was written by 0.2.0.
fn unit_checks(
    settings: &Settings,
    scanned: &[ScannedInstance],
    unit_ids: &[String],
    checks: &mut Vec<Check>,
) -> bool {
    let unit_dir = &settings.paths.unit_dir;
    let mut uses_020_scripts = false;
    for id in unit_ids {
        let shown = escaped(id);
        let path = UnitNames::for_name(id).vm_path(unit_dir);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if is_020_unit(&path) {
            uses_020_scripts = true;
        }
        let mut problems = Vec::new();
        for program in unit_programs(&text) {
            if let Err(e) = check_trusted("unit program", &program) {
                problems.push(error_chain(&e));
            }
        }
        checks.push(if problems.is_empty() {
            check(
                &format!("unit paths {shown}"),
                Level::Pass,
                "every program is root-owned and not writable by others",
            )
        } else {
            check(
                &format!("unit paths {shown}"),
                Level::Fail,
                problems.join("; "),
            )
        });
        if !scanned.iter().any(|s| &s.name == id) {
            checks.push(check(
                &format!("orphan {shown}"),
                Level::Warn,
                format!("units without state; remove them with: fireclaw destroy {shown} --force"),
            ));
        }
    }
    uses_020_scripts
}

/// Each instance's state: unreadable, half-made (with what it left behind), or without units.
fn instance_checks(
    settings: &Settings,
    scanned: &[ScannedInstance],
    unit_ids: &[String],
    checks: &mut Vec<Check>,
) {
    for instance in scanned {
        let name = &escaped(&instance.name);
        if instance.env.is_err() {
            checks.push(check(
                &format!("instance {name}"),
                Level::Fail,
                format!(
                    "state unreadable; remove what is left with: fireclaw destroy {name} --force"
                ),
            ));
            continue;
        }
        let Ok(id) = name.parse::<InstanceId>() else {
            continue;
        };
        let phase = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &id))
            .ok()
            .flatten()
            .map(|s| s.phase);
        if phase == Some(Phase::Importing) {
            let live = crate::store::instance_lock_held(&settings.paths.state_root, &id);
            checks.push(check(
                &format!("instance {name}"),
                if live { Level::Pass } else { Level::Warn },
                if live {
                    "being imported now".to_owned()
                } else {
                    format!(
                        "an import of it was interrupted, and left on the host: {}; the next fireclaw import or fireclaw host cleanup removes it (or: fireclaw destroy {name} --force)",
                        leftovers(settings, &id, instance.env.as_ref().ok()).join(", ")
                    )
                },
            ));
        } else if let Some(phase) = phase
            && phase < Phase::Provisioned
        {
            let next = if phase >= Phase::Units {
                format!(
                    "finish it with fireclaw provision {name}, or remove it with fireclaw destroy {name} --force"
                )
            } else {
                format!(
                    "setup stopped before its units were written; remove it with fireclaw destroy {name} --force and run setup again"
                )
            };
            checks.push(check(
                &format!("instance {name}"),
                Level::Warn,
                format!(
                    "half-made (phase {}), left on the host: {}; {next}",
                    phase.as_str(),
                    leftovers(settings, &id, instance.env.as_ref().ok()).join(", ")
                ),
            ));
        } else if !unit_ids.contains(name) {
            checks.push(check(
                &format!("instance {name}"),
                Level::Warn,
                format!("state without units; remove it with: fireclaw destroy {name} --force"),
            ));
        }
    }
}

/// Staging dirs under `FC_ROOT` an interrupted import left (a live import's own are locked).
fn import_staging_checks(settings: &Settings, checks: &mut Vec<Check>) {
    for dir in crate::ops::import::staging_leftovers(settings) {
        checks.push(check(
            "import staging",
            Level::Warn,
            format!(
                "{} was left by an interrupted import; the next fireclaw import or fireclaw host cleanup removes it",
                dir.display()
            ),
        ));
    }
}

/// A VM systemd keeps restarting (more than 3 restarts in 10 minutes): it dies as it starts,
/// and only its console says why.
fn crash_loop_checks(
    scanned: &[ScannedInstance],
    services: &dyn ServiceManager,
    checks: &mut Vec<Check>,
) {
    let units: Vec<String> = scanned
        .iter()
        .map(|s| UnitNames::for_name(&s.name).vm)
        .collect();
    let names: Vec<&str> = units.iter().map(String::as_str).collect();
    let Ok(states) = services.states(&names) else {
        return;
    };
    let now = crate::host::systemd::monotonic_now_us();
    for (instance, state) in scanned.iter().zip(states) {
        if state.exists() && state.crash_looping(now) {
            let name = escaped(&instance.name);
            checks.push(check(
                &format!("instance {name} VM"),
                Level::Warn,
                format!(
                    "crash-looping: systemd restarted it {} times, more than {} in {} minutes; see why with: fireclaw logs {name} console, stop it with: fireclaw stop {name}",
                    state.restarts,
                    crate::host::systemd::CRASH_LOOP_RESTARTS,
                    crate::host::systemd::CRASH_LOOP_WINDOW_SECS / 60
                ),
            ));
        }
    }
}

/// Taps that look like fireclaw's (bridged) but belong to no instance.
fn orphan_taps(scanned: &[ScannedInstance], checks: &mut Vec<Check>) {
    let taps: Vec<String> = scanned
        .iter()
        .filter_map(|s| {
            s.env
                .as_ref()
                .ok()
                .and_then(|e| e.tap().ok().map(str::to_owned))
        })
        .collect();
    if let Ok(mut netlink) = Netlink::open()
        && let Ok(links) = netlink.links()
    {
        for link in links.iter().filter(|l| l.is_tap && l.master.is_some()) {
            if !taps.contains(&link.name) {
                checks.push(check(
                    &format!("orphan tap {}", link.name),
                    Level::Warn,
                    format!(
                        "a bridged tap no instance owns; remove it with: ip link delete {}",
                        link.name
                    ),
                ));
            }
        }
    }
}

/// The host tools that units written by 0.2.0 call from their scripts.
fn tools_of_020_units(checks: &mut Vec<Check>) {
    for tool in ["ip", "bridge", "sysctl", "curl"] {
        if probe::which(tool).is_none() {
            checks.push(check(
                &format!("command {tool}"),
                Level::Fail,
                "needed by units written by fireclaw 0.2.0 (start-vm.sh/stop-vm.sh)",
            ));
        }
    }
}

/// What an instance has on the host, for naming the leftovers of an interrupted setup.
fn leftovers(
    settings: &Settings,
    id: &InstanceId,
    env: Option<&crate::instance::state::EnvFile>,
) -> Vec<String> {
    let mut found = vec![format!(
        "state {}",
        StatePaths::new(&settings.paths.state_root, id)
            .dir
            .display()
    )];
    let assets = crate::instance::layout::AssetPaths::new(&settings.paths.fc_root, id).dir;
    if assets.exists() {
        found.push(format!("assets {}", assets.display()));
    }
    let units = UnitNames::new(id);
    for (unit, path) in [
        (&units.vm, units.vm_path(&settings.paths.unit_dir)),
        (&units.proxy, units.proxy_path(&settings.paths.unit_dir)),
    ] {
        if path.exists() {
            found.push(format!("unit {unit}"));
        }
    }
    if let Some(tap) = env.and_then(|e| e.tap().ok())
        && Netlink::open()
            .and_then(|mut n| n.link(tap))
            .is_ok_and(|l| l.is_some())
    {
        found.push(format!("tap {tap}"));
    }
    found
}

#[derive(Serialize)]
struct DoctorJson<'a> {
    schema: u32,
    ok: bool,
    checks: &'a [Check],
}

pub fn run(
    settings: &Settings,
    json: bool,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let root = probe::is_root();
    if !root && !json {
        output.line(
            "Not root: checks only root can make are marked skip (sudo fireclaw doctor checks everything).",
        );
    }
    let mut checks = Vec::new();
    tools(root, &mut checks);
    kvm(root, &mut checks);
    confinement::host_checks(&mut checks);
    images(settings, &mut checks);
    let instances = match units_and_orphans(settings, services, &mut checks) {
        Ok(instances) => instances,
        Err(error) if !root && probe::refused_access(&error) => {
            checks.push(needs_root("instances"));
            0
        }
        Err(error) => return Err(error),
    };
    if root {
        network(settings, instances, services, &mut checks);
    } else {
        // The firewall and the bridge's forwarding rules are readable by root only.
        bridge_check(settings, &mut checks);
        checks.push(needs_root("guest egress firewall"));
        checks.push(needs_root("FORWARD policy"));
    }
    capacity(settings, &mut checks);
    let failed = checks.iter().filter(|c| c.status == Level::Fail).count();
    if json {
        output.line(&serde_json::to_string_pretty(&DoctorJson {
            schema: 1,
            ok: failed == 0,
            checks: &checks,
        })?);
    } else {
        let colour = use_colour();
        for c in &checks {
            let (label, code) = match c.status {
                Level::Pass => ("pass", "32"),
                Level::Warn => ("warn", "33"),
                Level::Fail => ("FAIL", "31"),
                Level::Skip => ("skip", "2"),
            };
            let label = if colour {
                format!("\x1b[{code}m{label}\x1b[0m")
            } else {
                label.to_owned()
            };
            output.line(&format!("{label}  {:<24} {}", c.name, c.detail));
        }
    }
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_fixture;

    #[test]
    fn the_rootfs_check_tells_ext4_from_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs.ext4");
        std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
        let other = rootfs_check(&rootfs, Some(true));
        assert_eq!(other.status, Level::Warn);
        assert!(other.detail.starts_with("not ext4"), "{}", other.detail);
        let neither = rootfs_check(&rootfs, Some(false));
        assert_eq!(neither.status, Level::Fail);
        assert!(
            neither.detail.contains("setup refuses"),
            "{}",
            neither.detail
        );
        std::fs::remove_file(&rootfs).unwrap();
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&rootfs)
            .arg("8M")
            .status()
            .unwrap();
        assert!(made.success());
        let ext4 = rootfs_check(&rootfs, Some(false));
        assert_eq!(ext4.status, Level::Pass, "{}", ext4.detail);
    }

    #[test]
    fn firecracker_versions_are_parsed() {
        assert_eq!(
            parse_firecracker_version("Firecracker v1.16.0\n"),
            Some((1, 16))
        );
        assert_eq!(
            parse_firecracker_version("Firecracker v1.7.0-dev"),
            Some((1, 7))
        );
        assert_eq!(parse_firecracker_version("garbage"), None);
        assert!((1, 7) < MIN_FIRECRACKER && (1, 16) >= MIN_FIRECRACKER);
    }

    fn kernel_checks_of(image: &[u8], with_initrd: bool) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, image).unwrap();
        let mut checks = Vec::new();
        let initrd = dir.path().join("initrd.img");
        if with_initrd {
            std::fs::write(&initrd, b"070701").unwrap();
        }
        kernel_checks(&kernel, &initrd, &mut checks);
        checks
            .iter()
            .map(|c| {
                let level = serde_json::to_value(c.status).unwrap();
                let detail = c.detail.replace(&dir.path().display().to_string(), "[DIR]");
                format!("{} {}: {detail}", level.as_str().unwrap(), c.name)
            })
            .collect()
    }

    #[test]
    fn a_kernel_with_everything_passes_and_says_the_seed_image_works_too() {
        assert_eq!(
            kernel_checks_of(&kernel_fixture::vmlinux_with_everything(), false),
            [
                "pass guest kernel: x86_64 ELF vmlinux, read from its symbol table",
                "pass guest kernel drivers: virtio-mmio, virtio-blk, virtio-net, ext4 and the serial console built in",
                "pass guest kernel iso9660: iso9660 built in: the seed image works too",
            ]
        );
        assert_eq!(
            kernel_checks_of(&kernel_fixture::vmlinux_without_iso9660(), false)[2],
            "pass guest kernel iso9660: iso9660 not built in: the guest reads its seed from the rootfs (seed.img only if the guest loads isofs as a module itself)"
        );
    }

    #[test]
    fn missing_drivers_fail_without_an_initrd_and_warn_with_one() {
        let debian = kernel_fixture::stripped_vmlinux_with_modules();
        let without = kernel_checks_of(&debian, false);
        assert!(
            without[1].starts_with("fail guest kernel drivers: no built-in virtio-mmio, virtio-blk, virtio-net (read from its strings"),
            "{without:?}"
        );
        let with = kernel_checks_of(&debian, true);
        assert!(
            with[1].starts_with("warn guest kernel drivers: no built-in virtio-mmio")
                && with[1].ends_with("the initrd must load them as modules"),
            "{with:?}"
        );
    }

    #[test]
    fn a_bzimage_fails_in_one_line_and_stops_the_other_kernel_checks() {
        let checks = kernel_checks_of(&kernel_fixture::bzimage(), false);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert!(
            checks[0].starts_with(
                "fail guest kernel: inspect guest kernel [DIR]/vmlinux: it is a compressed bzImage"
            ),
            "{checks:?}"
        );
    }

    #[test]
    fn unit_programs_are_read_from_exec_lines() {
        let unit = "[Service]\nExecStartPre=/usr/local/bin/fireclaw vm-net-up a\nExecStart=\"/opt/fc %%/firecracker\" --api-sock x\nExecStop=-/usr/bin/docker stop x\nEnvironment=A=/x\n";
        assert_eq!(
            unit_programs(unit),
            [
                PathBuf::from("/usr/local/bin/fireclaw"),
                PathBuf::from("/opt/fc %/firecracker"),
                PathBuf::from("/usr/bin/docker")
            ]
        );
    }
}
