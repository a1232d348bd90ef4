//! The guest network policy as iptables chains, one set per bridge: what guests may reach (the
//! internet through NAT, allowlisted private networks) and what they may not (the host itself,
//! link-local and cloud metadata, private ranges, each other). Every rule carries a comment
//! unique within its chain, so the host adapter can check content *and* order, and `doctor` can
//! name a missing or extra rule. Pure: the same input always renders the same chains.

use std::net::Ipv4Addr;

use crate::instance::values::{PRIVATE_RANGES, PrivateCidr, Subnet24};

/// One rule: its matches, a comment unique within the chain, and its target with options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<String>,
    pub comment: String,
    pub target: Vec<String>,
}

impl Rule {
    fn new(matches: &[&str], comment: impl Into<String>, target: &[&str]) -> Self {
        let owned = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect();
        Self {
            matches: owned(matches),
            comment: comment.into(),
            target: owned(target),
        }
    }

    /// The rule as iptables arguments after `-A <chain>`.
    pub fn args(&self) -> Vec<String> {
        let mut args = self.matches.clone();
        args.extend(["-m", "comment", "--comment"].map(str::to_owned));
        args.push(self.comment.clone());
        args.push("-j".to_owned());
        args.extend(self.target.iter().cloned());
        args
    }
}

/// A fireclaw chain: its table, the base chain that jumps to it first, and its ordered rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub table: &'static str,
    pub base: &'static str,
    pub name: String,
    pub rules: Vec<Rule>,
}

impl ChainSpec {
    /// `iptables-restore --noflush` input that replaces this chain's rules in one commit, so
    /// guests never see a half-written policy.
    pub fn restore_text(&self) -> String {
        let mut text = format!("*{}\n:{} - [0:0]\n", self.table, self.name);
        for rule in &self.rules {
            let words: Vec<String> = rule
                .args()
                .into_iter()
                .map(|w| {
                    if w.contains(' ') {
                        format!("\"{w}\"")
                    } else {
                        w
                    }
                })
                .collect();
            text.push_str(&format!("-A {} {}\n", self.name, words.join(" ")));
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// One instance's private-egress allowlist, by the guest address it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEgress {
    pub id: String,
    pub ip: Ipv4Addr,
    pub allow: Vec<PrivateCidr>,
}

/// Everything the policy depends on.
#[derive(Debug, Clone)]
pub struct EgressPolicy<'a> {
    pub bridge: &'a str,
    pub bridge_address: Ipv4Addr,
    pub subnet: Subnet24,
    pub host_allow: &'a [PrivateCidr],
    pub instances: &'a [InstanceEgress],
}

const REJECT: [&str; 3] = ["REJECT", "--reject-with", "icmp-admin-prohibited"];

/// The comment of an instance's allow rule; `doctor` matches rules to instances by it.
pub fn instance_rule_comment(id: &str, network: PrivateCidr) -> String {
    format!("fireclaw: instance {id} may reach {network}")
}

pub fn input_chain_name(bridge: &str) -> String {
    format!("FC-IN-{bridge}")
}
pub fn forward_chain_name(bridge: &str) -> String {
    format!("FC-FWD-{bridge}")
}
pub fn nat_chain_name(bridge: &str) -> String {
    format!("FC-NAT-{bridge}")
}

/// The three chains for a bridge: INPUT (guests to the host), FORWARD (guests to elsewhere and
/// replies back) and nat POSTROUTING (masquerade). Denials REJECT so a connection fails at once
/// with "no route to host" instead of hanging.
pub fn egress_chains(policy: &EgressPolicy<'_>) -> Vec<ChainSpec> {
    let br = policy.bridge;
    let gateway = format!("{}/32", policy.bridge_address);
    let subnet = policy.subnet.to_string();
    let input = vec![
        Rule::new(
            &[
                "-i",
                br,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
            ],
            "fireclaw: replies on connections the host opened",
            &["ACCEPT"],
        ),
        Rule::new(
            &[
                "-i",
                br,
                "-d",
                &gateway,
                "-p",
                "icmp",
                "-m",
                "icmp",
                "--icmp-type",
                "8",
            ],
            "fireclaw: guests may ping the gateway",
            &["ACCEPT"],
        ),
        Rule::new(
            &["-i", br],
            "fireclaw: guests may not connect to the host",
            &REJECT,
        ),
    ];
    let mut forward = vec![
        Rule::new(
            &[
                "!",
                "-i",
                br,
                "-o",
                br,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
            ],
            "fireclaw: replies to guests",
            &["ACCEPT"],
        ),
        // Behind isolated ports this matters when br_netfilter hands bridged frames to
        // iptables, and for a guest that routes to a neighbour through the gateway.
        Rule::new(
            &["-i", br, "-o", br],
            "fireclaw: guests may not reach each other",
            &["DROP"],
        ),
        Rule::new(
            &["-i", br, "!", "-s", &subnet],
            "fireclaw: guest traffic must come from the guest subnet",
            &["DROP"],
        ),
    ];
    for instance in policy.instances {
        let source = format!("{}/32", instance.ip);
        for network in &instance.allow {
            forward.push(Rule::new(
                &["-i", br, "-s", &source, "-d", &network.to_string()],
                instance_rule_comment(&instance.id, *network),
                &["ACCEPT"],
            ));
        }
    }
    for network in policy.host_allow {
        forward.push(Rule::new(
            &["-i", br, "-d", &network.to_string()],
            format!("fireclaw: every guest may reach {network}"),
            &["ACCEPT"],
        ));
    }
    forward.push(Rule::new(
        &["-i", br, "-d", "169.254.0.0/16"],
        "fireclaw: no link-local or cloud metadata",
        &REJECT,
    ));
    for (range, prefix) in PRIVATE_RANGES {
        let range = format!("{range}/{prefix}");
        forward.push(Rule::new(
            &["-i", br, "-d", &range],
            format!("fireclaw: no private range {range}"),
            &REJECT,
        ));
    }
    forward.push(Rule::new(
        &["-i", br, "!", "-o", br],
        "fireclaw: guest egress",
        &["ACCEPT"],
    ));
    vec![
        ChainSpec {
            table: "filter",
            base: "INPUT",
            name: input_chain_name(br),
            rules: input,
        },
        ChainSpec {
            table: "filter",
            base: "FORWARD",
            name: forward_chain_name(br),
            rules: forward,
        },
        ChainSpec {
            table: "nat",
            base: "POSTROUTING",
            name: nat_chain_name(br),
            rules: vec![Rule::new(
                &["-s", &subnet, "!", "-o", br],
                "fireclaw: guest egress through NAT",
                &["MASQUERADE"],
            )],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(policy: &EgressPolicy<'_>) -> String {
        egress_chains(policy)
            .iter()
            .map(|c| {
                format!(
                    "# hooked first in {} {}\n{}",
                    c.table,
                    c.base,
                    c.restore_text()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_policy_denies_host_metadata_private_and_neighbours_and_allows_the_rest() {
        let host_allow = ["10.53.0.2".parse().unwrap()];
        let instances = [
            InstanceEgress {
                id: "alpha".into(),
                ip: Ipv4Addr::new(172, 16, 0, 2),
                allow: vec!["192.168.7.0/24".parse().unwrap()],
            },
            InstanceEgress {
                id: "beta".into(),
                ip: Ipv4Addr::new(172, 16, 0, 3),
                allow: vec![],
            },
        ];
        let policy = EgressPolicy {
            bridge: "fc-br0",
            bridge_address: Ipv4Addr::new(172, 16, 0, 1),
            subnet: "172.16.0.0/24".parse().unwrap(),
            host_allow: &host_allow,
            instances: &instances,
        };
        insta::assert_snapshot!(render(&policy));
        for chain in egress_chains(&policy) {
            let mut comments: Vec<&str> = chain.rules.iter().map(|r| r.comment.as_str()).collect();
            comments.sort_unstable();
            comments.dedup();
            assert_eq!(comments.len(), chain.rules.len(), "comments are unique");
            // iptables limits chain names to 28 characters; bridge names are at most 15.
            assert!(chain.name.len() <= 28);
        }
    }
}
