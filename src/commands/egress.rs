//! `fireclaw egress show` and `fireclaw egress apply`: the guest network policy of this host,
//! shown from its inputs (the host-wide allowlist and each instance's saved allowlist) and
//! compared with the firewall, or applied now (and every 0.2.0-made VM unit covered by the
//! drop-in that applies it before the VM starts).

use anyhow::Result;

use crate::cli::EgressCommand;
use crate::env_vars;
use crate::host::firewall::{Hook, audit_chain};
use crate::host::probe;
use crate::host::probe::require_root;
use crate::host::systemd::ServiceManager;
use crate::instance::values::PrivateCidr;
use crate::ops::egress::{
    PolicyInputs, cover_legacy_units, gather, host_allow_path, policy_chains,
};
use crate::ops::legacy::dropin_path;
use crate::ops::network::apply_shared;
use crate::output::Output;
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    command: &EgressCommand,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    match command {
        EgressCommand::Apply => {
            require_root("egress apply", "it changes the host firewall")?;
            // As the ExecStartPre of a 0.2.0 unit's drop-in, it behaves like vm-net-up: an
            // unreadable allowlist is left out with a warning rather than failing the VM's
            // start, and it does not reload systemd from inside a start job.
            let under_systemd = std::env::var_os(env_vars::INVOCATION_ID).is_some();
            let notes = apply_shared(settings, !under_systemd)?;
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
    let applied = if probe::is_root() {
        let mut all = true;
        for chain in policy_chains(settings, &inputs) {
            let audit = audit_chain(&chain)?;
            all &= audit.rules_match() && audit.hook == Hook::First;
        }
        Some(all)
    } else {
        None
    };
    if json {
        print_json(settings, &inputs, applied, output)
    } else {
        print_text(settings, &inputs, applied, output);
        Ok(())
    }
}

fn print_json(
    settings: &Settings,
    inputs: &PolicyInputs,
    applied: Option<bool>,
    output: &mut Output<'_>,
) -> Result<()> {
    let to_strings = |list: &[PrivateCidr]| list.iter().map(ToString::to_string).collect();
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
    Ok(())
}

fn print_text(
    settings: &Settings,
    inputs: &PolicyInputs,
    applied: Option<bool>,
    output: &mut Output<'_>,
) {
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
}
