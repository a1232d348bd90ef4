//! fireclaw's iptables chains on the host, through the host's `iptables` (whichever backend it
//! selects): reading one back and comparing it with its spec (content *and* order, by each
//! rule's unique comment), replacing it in one `iptables-restore` commit when it differs, and
//! keeping the jump to it first in its base chain. Docker and UFW set FORWARD policy DROP, and
//! a drop or accept in a base chain ahead of ours is final, so ours must come first.

use super::process::{ProcessError, run, run_checked, run_checked_with_input};
pub use crate::render::egress::ChainSpec;

pub const IPTABLES: &str = "iptables";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("iptables chain {chain} does not hold the policy after it was applied: {found}")]
    NotApplied { chain: String, found: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Applied,
}

/// Where the jump to a fireclaw chain sits in its base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Missing,
    First,
    /// Present, behind these rules (as `iptables -S` prints them).
    Behind(Vec<String>),
}

/// A chain as found, compared with its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainAudit {
    pub exists: bool,
    /// Comments of expected rules that are absent or altered.
    pub missing: Vec<String>,
    /// Rules in the chain that the spec does not have (as `iptables -S` prints them).
    pub unexpected: Vec<String>,
    /// All rules are there, but not in the spec's order.
    pub out_of_order: bool,
    pub hook: Hook,
}

impl ChainAudit {
    pub fn rules_match(&self) -> bool {
        self.exists && self.missing.is_empty() && self.unexpected.is_empty() && !self.out_of_order
    }

    /// What differs from the spec, one phrase each (empty when the rules match).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.exists {
            problems.push("chain missing".to_owned());
        }
        for comment in &self.missing {
            problems.push(format!("missing or altered: \"{comment}\""));
        }
        for line in &self.unexpected {
            problems.push(format!("not in the policy: {line}"));
        }
        if self.out_of_order {
            problems.push("rules out of order".to_owned());
        }
        problems
    }
}

/// The comment of a rule as `iptables -S` prints it (quoted when it holds spaces).
pub fn comment_of(line: &str) -> Option<String> {
    let rest = &line[line.find("--comment ")? + "--comment ".len()..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.find('"').map(|end| quoted[..end].to_owned()),
        None => rest.split_whitespace().next().map(str::to_owned),
    }
}

fn iptables_ok(args: &[&str]) -> Result<bool, ProcessError> {
    Ok(run(IPTABLES, args)?.status.success())
}

fn appended_rules(table: &str, chain: &str) -> Result<Vec<String>, ProcessError> {
    let listed = run_checked(IPTABLES, &["-w", "-t", table, "-S", chain])?;
    let prefix = format!("-A {chain} ");
    Ok(listed
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .map(str::to_owned)
        .collect())
}

fn hook_of(chain: &ChainSpec) -> Result<Hook, ProcessError> {
    let jump = format!("-A {} -j {}", chain.base, chain.name);
    let rules = appended_rules(chain.table, chain.base)?;
    Ok(match rules.iter().position(|r| *r == jump) {
        None => Hook::Missing,
        Some(0) => Hook::First,
        Some(n) => Hook::Behind(rules[..n].to_vec()),
    })
}

/// Reads `chain` back and compares it with its spec; changes nothing.
pub fn audit_chain(chain: &ChainSpec) -> Result<ChainAudit, ProcessError> {
    let table = chain.table;
    let name = chain.name.as_str();
    let hook = hook_of(chain)?;
    if !iptables_ok(&["-w", "-t", table, "-n", "-L", name])? {
        return Ok(ChainAudit {
            exists: false,
            missing: chain.rules.iter().map(|r| r.comment.clone()).collect(),
            unexpected: Vec::new(),
            out_of_order: false,
            hook,
        });
    }
    let listed = appended_rules(table, name)?;
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for rule in &chain.rules {
        let args = rule.args();
        let mut check = vec!["-w", "-t", table, "-C", name];
        check.extend(args.iter().map(String::as_str));
        if iptables_ok(&check)? {
            present.push(rule.comment.as_str());
        } else {
            missing.push(rule.comment.clone());
        }
    }
    let mut seen = Vec::new();
    let mut unexpected = Vec::new();
    for line in &listed {
        match comment_of(line) {
            Some(comment) if present.contains(&comment.as_str()) && !seen.contains(&comment) => {
                seen.push(comment);
            }
            _ => unexpected.push(line.clone()),
        }
    }
    let out_of_order = missing.is_empty() && unexpected.is_empty() && seen != present;
    Ok(ChainAudit {
        exists: true,
        missing,
        unexpected,
        out_of_order,
        hook,
    })
}

/// Makes `chain` hold exactly its spec's rules in order, and its jump the first rule of its base
/// chain. A chain that already matches is left alone, so a second run changes nothing.
pub fn ensure_chain(chain: &ChainSpec) -> Result<Change, FirewallError> {
    let audit = audit_chain(chain)?;
    let mut change = Change::Unchanged;
    if !audit.rules_match() {
        run_checked_with_input(
            "iptables-restore",
            &["-w", "--noflush"],
            &chain.restore_text(),
        )?;
        change = Change::Applied;
    }
    if audit.hook != Hook::First {
        let table = chain.table;
        let jump = ["-j", chain.name.as_str()];
        let delete = [&["-w", "-t", table, "-D", chain.base][..], &jump].concat();
        while iptables_ok(&delete)? {}
        let insert = [&["-w", "-t", table, "-I", chain.base, "1"][..], &jump].concat();
        run_checked(IPTABLES, &insert)?;
        change = Change::Applied;
    }
    if change == Change::Applied {
        // Read back: a policy that did not take must fail the start, not pass silently.
        let after = audit_chain(chain)?;
        if !after.rules_match() || after.hook != Hook::First {
            return Err(FirewallError::NotApplied {
                chain: chain.name.clone(),
                found: {
                    let mut found = after.problems();
                    match &after.hook {
                        Hook::First => {}
                        Hook::Missing => found.push("jump missing".to_owned()),
                        Hook::Behind(rules) => {
                            found.push(format!("jump behind {} rule(s)", rules.len()))
                        }
                    }
                    found.join("; ")
                },
            });
        }
    }
    Ok(change)
}

/// Removes `chain`: every jump to it from its base chain, its rules, the chain. Returns whether
/// there was anything to remove.
pub fn remove_chain(chain: &ChainSpec) -> Result<bool, ProcessError> {
    let table = chain.table;
    let name = chain.name.as_str();
    let mut removed = false;
    let delete_jump = ["-w", "-t", table, "-D", chain.base, "-j", name];
    while iptables_ok(&delete_jump)? {
        removed = true;
    }
    if iptables_ok(&["-w", "-t", table, "-n", "-L", name])? {
        run_checked(IPTABLES, &["-w", "-t", table, "-F", name])?;
        run_checked(IPTABLES, &["-w", "-t", table, "-X", name])?;
        removed = true;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_read_quoted_or_bare() {
        assert_eq!(
            comment_of(r#"-A FC-FWD-fc-br0 -i fc-br0 -m comment --comment "fireclaw: guest egress" -j ACCEPT"#)
                .as_deref(),
            Some("fireclaw: guest egress")
        );
        assert_eq!(
            comment_of("-A X -m comment --comment bare -j ACCEPT").as_deref(),
            Some("bare")
        );
        assert_eq!(comment_of("-A X -i fc-br0 -o fc-br0 -j DROP"), None);
    }
}
