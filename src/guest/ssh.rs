//! SSH to a guest through the system OpenSSH client, with every option pinned: no user or system
//! config, batch mode, only the instance's key, strict host key checking against the instance's
//! own `known_hosts` under a per-instance alias. Instances made by fireclaw have their host key
//! pinned before first boot; those made by 0.2.0 are pinned on first successful login
//! (`accept-new`), as 0.2.0 did. Remote commands are shell strings; every argument fireclaw
//! builds itself is quoted.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::instance::layout::{GUEST_USER, host_key_alias};
use crate::render::units::shell_word;

pub const SSH: &str = "ssh";

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("run ssh")]
    Spawn(#[source] std::io::Error),
    #[error(
        "the SSH host key of instance '{id}' does not match the pinned key in {known_hosts}; if the change is expected, remove that file and retry"
    )]
    HostKeyMismatch { id: String, known_hosts: PathBuf },
    #[error("ssh to instance '{id}' ({ip}) failed: {detail}")]
    Unreachable {
        id: String,
        ip: Ipv4Addr,
        detail: String,
    },
    #[error("on instance '{id}': `{command}` failed ({status}){stderr}")]
    RemoteFailed {
        id: String,
        command: String,
        status: String,
        stderr: String,
        /// What the command printed on stdout before it failed (provisioning's step lines);
        /// not part of the message.
        stdout: String,
    },
}

/// What the lifecycle needs of a guest's shell: a login probe and a command run. `SshTarget`
/// is the real one; unit tests supply a recording fake so no packet leaves the machine.
pub trait GuestShell {
    /// One no-op login: distinguishes a host key mismatch from plain unreachability.
    fn probe(&self) -> Result<(), SshError>;
    /// Runs `remote` with `stdin` fed to it; returns stdout on success.
    fn run(&self, remote: &str, stdin: &[u8]) -> Result<String, SshError>;
}

impl GuestShell for SshTarget {
    fn probe(&self) -> Result<(), SshError> {
        SshTarget::probe(self)
    }
    fn run(&self, remote: &str, stdin: &[u8]) -> Result<String, SshError> {
        SshTarget::run(self, remote, stdin)
    }
}

/// How the guest's host key is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// fireclaw generated and pinned the key under the alias `fireclaw-<id>`.
    Pinned,
    /// A 0.2.0 instance: pin on first contact, refuse changes afterwards.
    TrustOnFirstUse,
}

#[derive(Debug, Clone)]
pub struct SshTarget {
    pub id: String,
    pub ip: Ipv4Addr,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub policy: HostKeyPolicy,
    pub connect_timeout: Duration,
}

impl SshTarget {
    /// Options and destination, without the remote command.
    pub fn base_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["-F".into(), "/dev/null".into()];
        let mut option = |o: String| {
            args.push("-o".into());
            args.push(o);
        };
        option("BatchMode=yes".into());
        option("IdentitiesOnly=yes".into());
        option(format!("IdentityFile={}", self.key.display()));
        option(format!("UserKnownHostsFile={}", self.known_hosts.display()));
        option("GlobalKnownHostsFile=/dev/null".into());
        option("LogLevel=ERROR".into());
        option(format!(
            "ConnectTimeout={}",
            self.connect_timeout.as_secs().max(1)
        ));
        option("ServerAliveInterval=15".into());
        match self.policy {
            HostKeyPolicy::Pinned => {
                option("StrictHostKeyChecking=yes".into());
                option(format!("HostKeyAlias={}", host_key_alias(&self.id)));
            }
            HostKeyPolicy::TrustOnFirstUse => option("StrictHostKeyChecking=accept-new".into()),
        }
        args.push(format!("{GUEST_USER}@{}", self.ip));
        args
    }

    fn command(&self, remote: &str, tty: bool) -> Command {
        let mut command = Command::new(SSH);
        command.args(self.base_args());
        if tty {
            command.arg("-t");
        }
        command.arg("--").arg(remote);
        command
    }

    fn classify(&self, remote: &str, output: &Output) -> Result<(), SshError> {
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed")
        {
            return Err(SshError::HostKeyMismatch {
                id: self.id.clone(),
                known_hosts: self.known_hosts.clone(),
            });
        }
        // 255 is ssh's own failure; anything else is the remote command's exit status.
        if output.status.code() == Some(255) {
            return Err(SshError::Unreachable {
                id: self.id.clone(),
                ip: self.ip,
                detail: last_line(&stderr),
            });
        }
        let tail = last_line(&stderr);
        Err(SshError::RemoteFailed {
            id: self.id.clone(),
            command: remote.chars().take(80).collect(),
            status: output.status.to_string(),
            stderr: if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            },
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        })
    }

    /// Runs `remote` with `stdin` fed to it; returns stdout on success.
    pub fn run(&self, remote: &str, stdin: &[u8]) -> Result<String, SshError> {
        let output = self.output(remote, stdin)?;
        self.classify(remote, &output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `remote` and returns its raw output whatever the status (for passing through).
    /// ssh runs in a process group of its own, so a Ctrl-C at the terminal reaches fireclaw
    /// alone, which lets this step finish (see `host::interrupt`).
    pub fn output(&self, remote: &str, stdin: &[u8]) -> Result<Output, SshError> {
        use std::os::unix::process::CommandExt;
        let mut child = self
            .command(remote, false)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(SshError::Spawn)?;
        if let Some(mut pipe) = child.stdin.take() {
            // The remote side may close early; its exit status tells what happened.
            let _ = pipe.write_all(stdin);
        }
        child.wait_with_output().map_err(SshError::Spawn)
    }

    /// A probe: `true` on the guest. Distinguishes a key mismatch from plain unreachability.
    pub fn probe(&self) -> Result<(), SshError> {
        self.run("true", b"").map(|_| ())
    }

    /// The command line for an interactive session or a passed-through command (`shell`).
    pub fn interactive(&self, remote: Option<&str>) -> Command {
        let mut command = Command::new(SSH);
        command.args(self.base_args());
        match remote {
            None => {
                command.arg("-t");
            }
            Some(remote) => {
                command.arg("--").arg(remote);
            }
        }
        command
    }

    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// `sudo <words...>`, each word quoted for the remote shell.
pub fn sudo_command(words: &[&str]) -> String {
    let mut command = String::from("sudo");
    for word in words {
        command.push(' ');
        command.push_str(&shell_word(word));
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(policy: HostKeyPolicy) -> SshTarget {
        SshTarget {
            id: "my-bot".into(),
            ip: Ipv4Addr::new(172, 16, 0, 2),
            key: "/home/ubuntu/.ssh/vmdemo_vm".into(),
            known_hosts: "/var/lib/fireclaw/.vm-my-bot/known_hosts".into(),
            policy,
            connect_timeout: Duration::from_secs(3),
        }
    }

    #[test]
    fn pinned_options_ignore_every_user_and_system_setting() {
        let args = target(HostKeyPolicy::Pinned).base_args().join(" ");
        assert_eq!(
            args,
            "-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/home/ubuntu/.ssh/vmdemo_vm \
             -o UserKnownHostsFile=/var/lib/fireclaw/.vm-my-bot/known_hosts -o GlobalKnownHostsFile=/dev/null \
             -o LogLevel=ERROR -o ConnectTimeout=3 -o ServerAliveInterval=15 -o StrictHostKeyChecking=yes \
             -o HostKeyAlias=fireclaw-my-bot ubuntu@172.16.0.2"
        );
        let tofu = target(HostKeyPolicy::TrustOnFirstUse).base_args().join(" ");
        assert!(
            tofu.contains("StrictHostKeyChecking=accept-new") && !tofu.contains("HostKeyAlias")
        );
    }

    #[test]
    fn remote_words_are_quoted() {
        assert_eq!(
            sudo_command(&["systemctl", "stop", "openclaw-my bot.service"]),
            "sudo systemctl stop 'openclaw-my bot.service'"
        );
    }
}
