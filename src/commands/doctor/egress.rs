//! `doctor`'s audit of the guest network policy: each chain's rules and order against what the
//! saved allowlists say, the jump to each chain first in its base chain (and whether a rule
//! ahead of it could let guest traffic through), IPv6 off on the bridge, and every 0.2.0-made
//! VM unit covered by the policy drop-in.

use super::checks::{Check, Level, check};
use crate::host::firewall::{ChainAudit, ChainSpec, Hook, audit_chain};
use crate::ops::egress::{PolicyInputs, gather, policy_chains};
use crate::ops::legacy::{dropin_path, legacy_vm_units};
use crate::output::error_chain;
use crate::settings::Settings;

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
    let Some(inputs) = policy_inputs(settings, checks) else {
        return;
    };
    for chain in policy_chains(settings, &inputs) {
        let name = format!("egress chain {}", chain.name);
        let audit = match audit_chain(&chain) {
            Ok(audit) => audit,
            Err(e) => {
                checks.push(check(&name, Level::Warn, error_chain(&e)));
                continue;
            }
        };
        if !audit.exists {
            checks.push(missing_chain(&name, instances));
            continue;
        }
        checks.push(chain_rules(&name, &chain, &audit));
        checks.push(chain_hook(&chain, &audit, bridge));
    }
    ipv6_check(bridge, checks);
    legacy_units_check(settings, checks);
}

/// The policy's inputs; an unreadable host-wide allowlist fails the check and the audit goes
/// on without it (as `vm-net-up` does).
fn policy_inputs(settings: &Settings, checks: &mut Vec<Check>) -> Option<PolicyInputs> {
    let inputs = match gather(settings, true) {
        Ok(inputs) => inputs,
        Err(e) => {
            checks.push(check(
                "egress allowlist",
                Level::Fail,
                error_chain(e.as_ref()),
            ));
            gather(settings, false).ok()?
        }
    };
    for note in &inputs.skipped {
        checks.push(check(
            "egress allowlist",
            Level::Warn,
            format!("{note}; its allow rules are left out"),
        ));
    }
    Some(inputs)
}

/// A chain that is not there: expected before the first VM start, a failure after it.
fn missing_chain(name: &str, instances: usize) -> Check {
    if instances == 0 {
        check(
            name,
            Level::Pass,
            "not present yet; added at the first VM start",
        )
    } else {
        check(
            name,
            Level::Fail,
            "missing: guests are not filtered; run fireclaw egress apply",
        )
    }
}

/// The chain's rules and their order against the policy.
fn chain_rules(name: &str, chain: &ChainSpec, audit: &ChainAudit) -> Check {
    let problems = audit.problems();
    if problems.is_empty() {
        check(
            name,
            Level::Pass,
            format!(
                "{} rules, as the policy and saved allowlists say",
                chain.rules.len()
            ),
        )
    } else {
        check(
            name,
            Level::Fail,
            format!("{}; run fireclaw egress apply", problems.join("; ")),
        )
    }
}

/// The jump to the chain: first in its base chain, or behind rules that cannot let guest
/// traffic past it.
fn chain_hook(chain: &ChainSpec, audit: &ChainAudit, bridge: &str) -> Check {
    let hook_name = format!("egress hook {} {}", chain.table, chain.base);
    match &audit.hook {
        Hook::First => check(
            &hook_name,
            Level::Pass,
            format!("jumps to {} first", chain.name),
        ),
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
    }
}

/// IPv6 must be off on the bridge, or guests reach the host around the IPv4 policy.
fn ipv6_check(bridge: &str, checks: &mut Vec<Check>) {
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
}

/// Every 0.2.0-made VM unit has the drop-in that applies the policy before it starts.
fn legacy_units_check(settings: &Settings, checks: &mut Vec<Check>) {
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
        Err(e) => checks.push(check(
            "egress 0.2.0 units",
            Level::Warn,
            error_chain(e.as_ref()),
        )),
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
}
