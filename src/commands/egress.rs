//! The guest network policy of this host: gathering its inputs (the host-wide allowlist file and
//! each instance's saved `allow_private_egress`), applying it (`egress apply`, and every
//! `vm-net-up`), covering VMs made by 0.2.0 with a unit drop-in, showing it (`egress show`) and
//! auditing it for `doctor`. A broken input never widens the policy: an instance or a host-wide
//! file that cannot be read contributes no allow rule.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use super::doctor::{Check, Level, check};
use super::lifecycle::is_020_unit;
use super::vm_net;
use crate::cli::EgressCommand;
use crate::host::firewall::{ChainAudit, ChainSpec, Hook, audit_chain};
use crate::host::systemd::ServiceManager;
use crate::host::trust::check_trusted;
use crate::instance::layout::UnitNames;
use crate::instance::store::{StatePaths, read_fireclaw_state, scan_instances, write_atomic};
use crate::instance::values::{InstanceId, PrivateCidr};
use crate::output::Output;
use crate::render::artifacts::pinned_environment;
use crate::render::egress::{EgressPolicy, InstanceEgress, egress_chains};
use crate::render::units::legacy_egress_dropin;
use crate::settings::Settings;

/// The host-wide allowlist, one network per line, `#` starting a comment.
pub const HOST_ALLOW_FILE: &str = "private-egress.allow";

/// The drop-in that puts a 0.2.0-made VM unit under the policy.
pub const LEGACY_DROPIN: &str = "fireclaw-egress.conf";

pub fn host_allow_path(settings: &Settings) -> PathBuf {
    settings.paths.state_root.join(HOST_ALLOW_FILE)
}

/// Reads the host-wide allowlist; a missing file is the empty list.
pub fn read_host_allow(path: &Path) -> Result<Vec<PrivateCidr>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let mut networks = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let network: PrivateCidr = line
            .parse()
            .map_err(|e| anyhow!("{} line {}: {e}", path.display(), number + 1))?;
        networks.push(network);
    }
    networks.sort();
    networks.dedup();
    Ok(networks)
}

/// What the policy is built from, and what had to be left out of it.
#[derive(Debug, Default)]
pub struct PolicyInputs {
    pub host_allow: Vec<PrivateCidr>,
    pub instances: Vec<InstanceEgress>,
    /// Why an allowlist was left out (the policy stays closed for it).
    pub skipped: Vec<String>,
}

/// Gathers the inputs. With `strict`, an unreadable host-wide allowlist is an error; without
/// it, the list is skipped with a note, so a VM still starts, under the stricter policy.
pub fn gather(settings: &Settings, strict: bool) -> Result<PolicyInputs> {
    let mut inputs = PolicyInputs::default();
    match read_host_allow(&host_allow_path(settings)) {
        Ok(list) => inputs.host_allow = list,
        Err(e) if strict => return Err(e.context("read the host-wide private-egress allowlist")),
        Err(e) => inputs
            .skipped
            .push(format!("host-wide allowlist not applied: {e:#}")),
    }
    for scanned in scan_instances(&settings.paths.state_root)? {
        let Ok(id) = scanned.name.parse::<InstanceId>() else {
            continue;
        };
        let state = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &id));
        let allow = match state {
            Ok(Some(state)) => state.allow_private_egress,
            Ok(None) => continue,
            Err(e) => {
                inputs.skipped.push(format!("instance '{id}': {e}"));
                continue;
            }
        };
        if allow.is_empty() {
            continue;
        }
        match scanned.env.as_ref().map(|env| env.vm_ip()) {
            Ok(Ok(ip)) => inputs.instances.push(InstanceEgress {
                id: id.to_string(),
                ip,
                allow,
            }),
            Ok(Err(e)) => inputs.skipped.push(format!("instance '{id}': {e}")),
            Err(e) => inputs.skipped.push(format!("instance '{id}': {e}")),
        }
    }
    Ok(inputs)
}

pub fn policy_chains(settings: &Settings, inputs: &PolicyInputs) -> Vec<ChainSpec> {
    egress_chains(&EgressPolicy {
        bridge: settings.network.bridge.as_str(),
        bridge_address: settings.network.bridge_address.address(),
        subnet: settings.network.subnet,
        host_allow: &inputs.host_allow,
        instances: &inputs.instances,
    })
}

fn dropin_path(settings: &Settings, unit: &str) -> PathBuf {
    settings
        .paths
        .unit_dir
        .join(format!("{unit}.d"))
        .join(LEGACY_DROPIN)
}

/// VM units made by 0.2.0, by unit file path.
fn legacy_vm_units(settings: &Settings) -> Result<Vec<(InstanceId, String)>> {
    let mut units = Vec::new();
    for scanned in scan_instances(&settings.paths.state_root)? {
        let Ok(id) = scanned.name.parse::<InstanceId>() else {
            continue;
        };
        let unit = UnitNames::new(&id).vm;
        if is_020_unit(&settings.paths.unit_dir.join(&unit)) {
            units.push((id, unit));
        }
    }
    Ok(units)
}

/// Gives every 0.2.0-made VM unit the drop-in that applies the policy before it starts; returns
/// the units that got one.
pub fn cover_legacy_units(
    settings: &Settings,
    services: &dyn ServiceManager,
) -> Result<Vec<String>> {
    let fireclaw = std::env::current_exe().context("locate the fireclaw binary")?;
    let text = legacy_egress_dropin(
        &fireclaw,
        &pinned_environment(&settings.paths, &settings.network),
    );
    let mut covered = Vec::new();
    for (_, unit) in legacy_vm_units(settings)? {
        let path = dropin_path(settings, &unit);
        if std::fs::read_to_string(&path).is_ok_and(|current| current == text) {
            continue;
        }
        // The drop-in runs this binary as root at every start of that VM.
        check_trusted("fireclaw", &fireclaw)?;
        let dir = path.parent().unwrap_or(&settings.paths.unit_dir);
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        write_atomic(&path, text.as_bytes(), 0o644)?;
        covered.push(unit);
    }
    if !covered.is_empty() {
        services.daemon_reload()?;
    }
    Ok(covered)
}

/// Removes the drop-in of a 0.2.0-made VM unit (on destroy); absent is fine.
pub fn remove_legacy_dropin(settings: &Settings, unit: &str) -> Result<()> {
    let path = dropin_path(settings, unit);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        // Only when empty: an operator's own drop-ins stay.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Re-applies the policy when fireclaw's chains are already on this host (an allowlist changed,
/// or an instance went away); a host with no VM started yet gets them at its first start.
pub fn reapply_if_present(settings: &Settings) -> Result<Vec<String>> {
    let forward = crate::render::egress::forward_chain_name(settings.network.bridge.as_str());
    let present = crate::host::process::run(
        crate::host::firewall::IPTABLES,
        &["-w", "-n", "-L", &forward],
    )
    .is_ok_and(|o| o.status.success());
    if !present {
        return Ok(Vec::new());
    }
    vm_net::apply_shared(settings, false)
}

pub fn run(
    settings: &Settings,
    command: &EgressCommand,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    match command {
        EgressCommand::Apply => {
            if !crate::host::probe::is_root() {
                return Err(super::NeedsRoot {
                    command: "egress apply",
                    why: "it changes the host firewall",
                }
                .into());
            }
            // As the ExecStartPre of a 0.2.0 unit's drop-in, it behaves like vm-net-up: an
            // unreadable allowlist is left out with a warning rather than failing the VM's
            // start, and it does not reload systemd from inside a start job.
            let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
            let notes = vm_net::apply_shared(settings, !under_systemd)?;
            for note in notes {
                output.warn(&note);
            }
            let covered = if under_systemd {
                Vec::new()
            } else {
                cover_legacy_units(settings, services)?
            };
            for unit in &covered {
                output.line(&format!(
                    "{unit}: made by fireclaw 0.2.0; now applies the policy before it starts ({})",
                    dropin_path(settings, unit).display()
                ));
            }
            output.line(&format!(
                "egress policy applied on {}",
                settings.network.bridge
            ));
            Ok(())
        }
        EgressCommand::Show(flag) => show(settings, flag.json, output),
    }
}

#[derive(serde::Serialize)]
struct ShowJson<'a> {
    schema: u32,
    bridge: &'a str,
    host_allowlist_file: String,
    host_allow: Vec<String>,
    instances: Vec<InstanceJson>,
    skipped: &'a [String],
    applied: Option<bool>,
}

#[derive(serde::Serialize)]
struct InstanceJson {
    id: String,
    ip: String,
    allow: Vec<String>,
}

fn show(settings: &Settings, json: bool, output: &mut Output<'_>) -> Result<()> {
    let inputs = gather(settings, true)?;
    // Reading the firewall needs root; without it the comparison is simply not made.
    let applied = if crate::host::probe::is_root() {
        let mut all = true;
        for chain in policy_chains(settings, &inputs) {
            let audit = audit_chain(&chain)?;
            all &= audit.rules_match() && audit.hook == Hook::First;
        }
        Some(all)
    } else {
        None
    };
    let to_strings = |list: &[PrivateCidr]| list.iter().map(ToString::to_string).collect();
    if json {
        let doc = ShowJson {
            schema: 1,
            bridge: settings.network.bridge.as_str(),
            host_allowlist_file: host_allow_path(settings).display().to_string(),
            host_allow: to_strings(&inputs.host_allow),
            instances: inputs
                .instances
                .iter()
                .map(|i| InstanceJson {
                    id: i.id.clone(),
                    ip: i.ip.to_string(),
                    allow: to_strings(&i.allow),
                })
                .collect(),
            skipped: &inputs.skipped,
            applied,
        };
        output.line(&serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    output.line(&format!(
        "Guests on {} reach the internet through NAT. Denied (REJECT): the host itself, 169.254.0.0/16, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 and each other; no IPv6.",
        settings.network.bridge
    ));
    let list = |networks: &[PrivateCidr]| {
        if networks.is_empty() {
            "(none)".to_owned()
        } else {
            networks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    output.line(&format!(
        "Host-wide allowlist ({}): {}",
        host_allow_path(settings).display(),
        list(&inputs.host_allow)
    ));
    for instance in &inputs.instances {
        output.line(&format!(
            "Instance {} ({}): {}",
            instance.id,
            instance.ip,
            list(&instance.allow)
        ));
    }
    for note in &inputs.skipped {
        output.warn(note);
    }
    match applied {
        Some(true) => output.line("Firewall: matches this policy."),
        Some(false) => output.line(
            "Firewall: does not match this policy yet; run fireclaw egress apply (or start a VM).",
        ),
        None => output.line("Firewall: not checked (needs root)."),
    }
    Ok(())
}

fn describe_audit(audit: &ChainAudit) -> Vec<String> {
    let mut problems = Vec::new();
    for comment in &audit.missing {
        problems.push(format!("missing or altered: \"{comment}\""));
    }
    for line in &audit.unexpected {
        problems.push(format!("not in the policy: {line}"));
    }
    if audit.out_of_order {
        problems.push("rules out of order".to_owned());
    }
    problems
}

/// Whether a base-chain rule ahead of fireclaw's jump can let guest traffic through: an ACCEPT
/// (or a jump elsewhere) that is not limited to another input interface or to replies.
fn accepts_guest_traffic(rule: &str, bridge: &str) -> Option<Level> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let target = words
        .iter()
        .position(|w| *w == "-j")
        .and_then(|i| words.get(i + 1))
        .copied()
        .unwrap_or("");
    if matches!(target, "DROP" | "REJECT" | "LOG" | "RETURN" | "") {
        return None;
    }
    let interface = words
        .iter()
        .position(|w| *w == "-i")
        .and_then(|i| words.get(i + 1));
    let negated_interface = words
        .iter()
        .position(|w| *w == "-i")
        .is_some_and(|i| i > 0 && words[i - 1] == "!");
    if let Some(name) = interface
        && !negated_interface
    {
        let matches = match name.strip_suffix('+') {
            Some(prefix) => bridge.starts_with(prefix),
            None => *name == bridge,
        };
        if !matches {
            return None;
        }
    }
    if rule.contains("--ctstate RELATED,ESTABLISHED") && !rule.contains("NEW") {
        return None;
    }
    Some(if target == "ACCEPT" {
        Level::Fail
    } else {
        Level::Warn
    })
}

/// `doctor`'s audit: each chain's rules and order, the jump to it first in its base chain,
/// per-instance rules against the saved state, IPv6 off on the bridge, 0.2.0 units covered.
pub fn audit(settings: &Settings, instances: usize, checks: &mut Vec<Check>) {
    let bridge = settings.network.bridge.as_str();
    let inputs = match gather(settings, true) {
        Ok(inputs) => inputs,
        Err(e) => {
            checks.push(check("egress allowlist", Level::Fail, format!("{e:#}")));
            match gather(settings, false) {
                Ok(inputs) => inputs,
                Err(_) => return,
            }
        }
    };
    for note in &inputs.skipped {
        checks.push(check(
            "egress allowlist",
            Level::Warn,
            format!("{note}; its allow rules are left out"),
        ));
    }
    for chain in policy_chains(settings, &inputs) {
        let name = format!("egress chain {}", chain.name);
        let audit = match audit_chain(&chain) {
            Ok(audit) => audit,
            Err(e) => {
                checks.push(check(&name, Level::Warn, e.to_string()));
                continue;
            }
        };
        if !audit.exists {
            checks.push(if instances == 0 {
                check(
                    &name,
                    Level::Pass,
                    "not present yet; added at the first VM start",
                )
            } else {
                check(
                    &name,
                    Level::Fail,
                    "missing: guests are not filtered; run fireclaw egress apply",
                )
            });
            continue;
        }
        let problems = describe_audit(&audit);
        checks.push(if problems.is_empty() {
            check(
                &name,
                Level::Pass,
                format!(
                    "{} rules, as the policy and saved allowlists say",
                    chain.rules.len()
                ),
            )
        } else {
            check(
                &name,
                Level::Fail,
                format!("{}; run fireclaw egress apply", problems.join("; ")),
            )
        });
        let hook_name = format!("egress hook {} {}", chain.table, chain.base);
        checks.push(match &audit.hook {
            Hook::First => check(&hook_name, Level::Pass, format!("jumps to {} first", chain.name)),
            Hook::Missing => check(
                &hook_name,
                Level::Fail,
                format!("no jump to {}; run fireclaw egress apply", chain.name),
            ),
            Hook::Behind(ahead) => {
                let worst = ahead
                    .iter()
                    .filter_map(|r| accepts_guest_traffic(r, bridge).map(|l| (l, r)))
                    .max_by_key(|(l, _)| *l == Level::Fail);
                match worst {
                    None => check(
                        &hook_name,
                        Level::Pass,
                        format!(
                            "{} rule(s) ahead of the jump to {}, none accepts guest traffic",
                            ahead.len(),
                            chain.name
                        ),
                    ),
                    Some((level, rule)) => check(
                        &hook_name,
                        level,
                        format!(
                            "'{rule}' comes before the jump to {} and may let guest traffic past the policy; run fireclaw egress apply to move the jump first",
                            chain.name
                        ),
                    ),
                }
            }
        });
    }
    let ipv6 = format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6");
    match std::fs::read_to_string(&ipv6) {
        Ok(value) if value.trim() == "1" => {
            checks.push(check(
                "egress IPv6",
                Level::Pass,
                format!("off on {bridge}"),
            ));
        }
        Ok(_) => checks.push(check(
            "egress IPv6",
            Level::Fail,
            format!(
                "on for {bridge}: guests could reach the host over IPv6; run fireclaw egress apply"
            ),
        )),
        // No bridge yet, or no IPv6 in this kernel.
        Err(_) => {}
    }
    match legacy_vm_units(settings) {
        Ok(units) => {
            for (id, unit) in units {
                if !dropin_path(settings, &unit).exists() {
                    checks.push(check(
                        "egress 0.2.0 units",
                        Level::Warn,
                        format!("instance '{id}' (made by 0.2.0) gets the policy only while another VM has applied it; run fireclaw egress apply to cover its unit"),
                    ));
                }
            }
        }
        Err(e) => checks.push(check("egress 0.2.0 units", Level::Warn, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_ahead_of_the_jump_are_judged_by_what_they_can_accept() {
        let br = "fc-br0";
        assert_eq!(
            accepts_guest_traffic("-A FORWARD -j ACCEPT", br),
            Some(Level::Fail)
        );
        assert_eq!(
            accepts_guest_traffic("-A FORWARD -i fc-br0 -j ACCEPT", br),
            Some(Level::Fail)
        );
        assert_eq!(
            accepts_guest_traffic("-A FORWARD -i fc+ -j ACCEPT", br),
            Some(Level::Fail)
        );
        assert_eq!(
            accepts_guest_traffic("-A FORWARD -j DOCKER-USER", br),
            Some(Level::Warn)
        );
        assert_eq!(accepts_guest_traffic("-A INPUT -i lo -j ACCEPT", br), None);
        assert_eq!(
            accepts_guest_traffic("-A FORWARD -i fc-br0 -o fc-br0 -j DROP", br),
            None
        );
        assert_eq!(
            accepts_guest_traffic(
                "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                br
            ),
            None
        );
        assert_eq!(
            accepts_guest_traffic("-A INPUT ! -i lo -j ACCEPT", br),
            Some(Level::Fail)
        );
    }

    #[test]
    fn the_host_allowlist_file_is_parsed_with_comments_and_line_numbers() {
        let dir = std::env::temp_dir().join(format!("fireclaw-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(HOST_ALLOW_FILE);
        assert!(read_host_allow(&path).unwrap().is_empty());
        std::fs::write(
            &path,
            "# registry\n10.20.0.0/16  # vpc\n\n192.168.1.5\n10.20.0.0/16\n",
        )
        .unwrap();
        let list: Vec<String> = read_host_allow(&path)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(list, ["10.20.0.0/16", "192.168.1.5/32"]);
        std::fs::write(&path, "10.0.0.0/8\n8.8.8.8/32\n").unwrap();
        let error = format!("{:#}", read_host_allow(&path).unwrap_err());
        assert!(
            error.contains("line 2") && error.contains("not inside"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
