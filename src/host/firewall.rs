//! fireclaw's iptables rules, in its own chains hooked from the base chains, through the host's
//! `iptables` (whichever backend it selects). Docker and UFW set FORWARD policy DROP and a drop
//! in any base chain is final, so guest traffic must be accepted in the host's own ruleset.
//! Every change is check-then-apply: a chain whose rules are all present and nothing more is
//! left alone, so `vm-net-up` on a configured host changes nothing.

use super::process::{ProcessError, run, run_checked};

pub const IPTABLES: &str = "iptables";

/// One rule of a chain, as iptables arguments after `-A <chain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(pub Vec<String>);

/// A fireclaw chain: its table, the base chain that jumps to it, and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub table: &'static str,
    pub base: &'static str,
    pub name: String,
    pub rules: Vec<Rule>,
}

fn rule(words: &[&str]) -> Rule {
    Rule(words.iter().map(|w| (*w).to_owned()).collect())
}

/// The chains for one bridge. Rules in a chain never overlap, so their order does not matter.
pub fn bridge_chains(bridge: &str, subnet: &str) -> Vec<ChainSpec> {
    vec![
        ChainSpec {
            table: "filter",
            base: "FORWARD",
            name: format!("FC-FWD-{bridge}"),
            rules: vec![
                // Defence in depth behind isolated ports, where br_netfilter is active.
                rule(&["-i", bridge, "-o", bridge, "-j", "DROP"]),
                // Guest egress, even under a FORWARD policy of DROP.
                rule(&["-i", bridge, "!", "-o", bridge, "-j", "ACCEPT"]),
                // Replies to guests.
                rule(&[
                    "!",
                    "-i",
                    bridge,
                    "-o",
                    bridge,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-j",
                    "ACCEPT",
                ]),
            ],
        },
        ChainSpec {
            table: "nat",
            base: "POSTROUTING",
            name: format!("FC-NAT-{bridge}"),
            rules: vec![rule(&["-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE"])],
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Applied,
}

fn iptables_ok(args: &[&str]) -> Result<bool, ProcessError> {
    Ok(run(IPTABLES, args)?.status.success())
}

/// Makes `chain` exist, hold exactly its rules, and be jumped to from its base chain.
pub fn ensure_chain(chain: &ChainSpec) -> Result<Change, ProcessError> {
    let table = chain.table;
    let name = chain.name.as_str();
    let mut change = Change::Unchanged;
    if !iptables_ok(&["-w", "-t", table, "-n", "-L", name])? {
        run_checked(IPTABLES, &["-w", "-t", table, "-N", name])?;
        change = Change::Applied;
    }
    let listed = run_checked(IPTABLES, &["-w", "-t", table, "-S", name])?;
    let present = listed
        .lines()
        .filter(|line| line.starts_with(&format!("-A {name} ")))
        .count();
    let mut all_found = present == chain.rules.len();
    if all_found {
        for rule in &chain.rules {
            let mut args = vec!["-w", "-t", table, "-C", name];
            args.extend(rule.0.iter().map(String::as_str));
            if !iptables_ok(&args)? {
                all_found = false;
                break;
            }
        }
    }
    if !all_found {
        run_checked(IPTABLES, &["-w", "-t", table, "-F", name])?;
        for rule in &chain.rules {
            let mut args = vec!["-w", "-t", table, "-A", name];
            args.extend(rule.0.iter().map(String::as_str));
            run_checked(IPTABLES, &args)?;
        }
        change = Change::Applied;
    }
    if !iptables_ok(&["-w", "-t", table, "-C", chain.base, "-j", name])? {
        run_checked(
            IPTABLES,
            &["-w", "-t", table, "-I", chain.base, "1", "-j", name],
        )?;
        change = Change::Applied;
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_chains_cover_isolation_egress_replies_and_nat() {
        let chains = bridge_chains("fc-br0", "172.16.0.0/24");
        let text: Vec<String> = chains
            .iter()
            .flat_map(|c| {
                c.rules
                    .iter()
                    .map(move |r| format!("{} {} -A {} {}", c.table, c.base, c.name, r.0.join(" ")))
            })
            .collect();
        assert_eq!(
            text,
            [
                "filter FORWARD -A FC-FWD-fc-br0 -i fc-br0 -o fc-br0 -j DROP",
                "filter FORWARD -A FC-FWD-fc-br0 -i fc-br0 ! -o fc-br0 -j ACCEPT",
                "filter FORWARD -A FC-FWD-fc-br0 ! -i fc-br0 -o fc-br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "nat POSTROUTING -A FC-NAT-fc-br0 -s 172.16.0.0/24 ! -o fc-br0 -j MASQUERADE",
            ]
        );
        // iptables limits chain names to 28 characters; bridge names are at most 15.
        assert!(chains.iter().all(|c| c.name.len() <= 7 + 15));
    }
}
