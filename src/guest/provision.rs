//! Guest provisioning from the host: install the embedded script in the guest, then run it as
//! root with `provision.vars` on stdin. Both steps travel over the pinned SSH session, so the
//! secrets are never on a command line, host or guest, and never in a guest file but the 0600
//! env file the script writes.

use super::ssh::{GuestShell, SshError};

/// The provisioning script, embedded so no install path has to be found at run time.
pub const PROVISION_SCRIPT: &str = include_str!("../../assets/provision-guest.sh");
/// Where the script lives in the guest.
pub const GUEST_SCRIPT_PATH: &str = "/usr/local/sbin/fireclaw-provision";

/// The identity cleaning `fireclaw image bake` runs in its builder guest before shutting it down.
pub const BAKE_CLEAN_SCRIPT: &str = include_str!("../../assets/bake-clean-guest.sh");

/// Installs the script (atomically, mode 0755) and runs it with `vars` on stdin; returns what
/// it printed on stdout (the install phase's facts).
pub fn provision_guest(target: &dyn GuestShell, vars: &str) -> Result<String, SshError> {
    let install = format!(
        "sudo sh -c 'umask 022 && cat > {path}.new && chmod 0755 {path}.new && mv -f {path}.new {path}'",
        path = GUEST_SCRIPT_PATH
    );
    target.run(&install, PROVISION_SCRIPT.as_bytes())?;
    target.run(&format!("sudo {GUEST_SCRIPT_PATH}"), vars.as_bytes())
}

/// Runs the bake's identity cleaning as root, the script on stdin, the builder's id its one
/// argument.
pub fn clean_builder_guest(target: &dyn GuestShell, builder_id: &str) -> Result<(), SshError> {
    target.run(
        &format!("sudo bash -s -- {builder_id}"),
        BAKE_CLEAN_SCRIPT.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_scripts_are_shellcheck_clean() {
        for script in [PROVISION_SCRIPT, BAKE_CLEAN_SCRIPT] {
            shellcheck_clean(script);
        }
    }

    fn shellcheck_clean(script: &str) {
        let output = std::process::Command::new("shellcheck")
            .args(["-s", "bash", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(script.as_bytes())?;
                child.wait_with_output()
            })
            .expect("shellcheck is installed by the README's test command");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    #[test]
    fn the_script_reads_secrets_from_stdin_only() {
        // Secrets are read before `exec </dev/null` and never passed as arguments.
        let read_at = PROVISION_SCRIPT.find("read -r line").unwrap();
        let closed_at = PROVISION_SCRIPT.find("exec </dev/null").unwrap();
        assert!(read_at < closed_at);
        let code = PROVISION_SCRIPT
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'));
        assert!(
            code.clone().all(|l| !l.contains("/tmp")),
            "the script must not use /tmp"
        );
        // mktemp always gets a template in a private dir, never its /tmp default.
        assert!(
            code.filter(|l| l.contains("mktemp"))
                .all(|l| l.contains("mktemp \"$(dirname"))
        );
        for reference in [
            "'${OPENCLAW_GATEWAY_TOKEN}'",
            "'${TELEGRAM_BOT_TOKEN}'",
            "\"${MINIMAX_API_KEY}\"",
        ] {
            assert!(PROVISION_SCRIPT.contains(reference), "{reference}");
        }
    }
}
