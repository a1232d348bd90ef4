//! From a validated `SetupSpec` and what is already taken to the values a new instance gets:
//! its allocation (port, IP, tap, MAC) and the contents of its `.env` and `provision.vars`,
//! holding only 0.2.0's keys in 0.2.0's order.

use std::net::Ipv4Addr;

use super::alloc::{
    AllocError, Taken, check_port, first_free_ip, first_free_port, mac_address, tap_name,
};
use super::host::NetworkSettings;
use super::spec::SetupSpec;
use super::state::{EnvFile, GatewayToken, StateError, VarsFile};
use super::values::{HostPort, InterfaceName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub host_port: HostPort,
    pub ip: Ipv4Addr,
    pub tap: InterfaceName,
    pub mac: String,
}

pub fn allocate(
    spec: &SetupSpec,
    network: &NetworkSettings,
    base_port: u16,
    taken: &Taken,
) -> Result<Allocation, AllocError> {
    let host_port = match spec.host_port {
        Some(port) => check_port(port, taken)?,
        None => first_free_port(base_port, taken)?,
    };
    let ip = first_free_ip(network.subnet, network.bridge_address, taken)?;
    Ok(Allocation {
        host_port,
        ip,
        tap: tap_name(&spec.id, ip),
        mac: mac_address(ip),
    })
}

fn secret_or_empty(secret: Option<&crate::instance::values::Secret>) -> Option<String> {
    secret.map(|s| s.expose().to_owned())
}

/// `.env` for a new instance.
pub fn instance_env(
    spec: &SetupSpec,
    allocation: &Allocation,
    token: &GatewayToken,
) -> Result<EnvFile, StateError> {
    EnvFile::from_values(|key| match key {
        "INSTANCE_ID" => Some(spec.id.to_string()),
        "HOST_PORT" => Some(allocation.host_port.to_string()),
        "VM_IP" => Some(allocation.ip.to_string()),
        "VM_TAP" => Some(allocation.tap.to_string()),
        "VM_MAC" => Some(allocation.mac.clone()),
        "GATEWAY_TOKEN" => Some(token.expose().to_owned()),
        "MODEL" => Some(spec.model.to_string()),
        "SKILLS" => Some(spec.skills.to_csv()),
        "TELEGRAM_USERS" => spec.telegram.as_ref().map(|t| t.users.to_csv()),
        "OPENCLAW_IMAGE" => Some(spec.image.to_string()),
        "VM_VCPU" => Some(spec.vcpu.to_string()),
        "VM_MEM_MIB" => Some(spec.memory.to_string()),
        "DISK_SIZE" => Some(spec.disk_size.to_string()),
        "API_SOCK" => Some(spec.api_sock.to_string_lossy().into_owned()),
        "SSH_KEY_PATH" => Some(spec.ssh_key_path.to_string_lossy().into_owned()),
        "SKIP_BROWSER_INSTALL" => Some(spec.skip_browser_install.to_string()),
        "ANTHROPIC_API_KEY" => secret_or_empty(spec.keys.anthropic.as_ref()),
        "OPENAI_API_KEY" => secret_or_empty(spec.keys.openai.as_ref()),
        "MINIMAX_API_KEY" => secret_or_empty(spec.keys.minimax.as_ref()),
        _ => None,
    })
}

/// `provision.vars` for a new instance: the guest provisioning input, secrets included.
pub fn provision_vars(spec: &SetupSpec, token: &GatewayToken) -> Result<VarsFile, StateError> {
    VarsFile::from_values(|key| match key {
        "INSTANCE_ID" => Some(spec.id.to_string()),
        "TELEGRAM_TOKEN" => spec.telegram.as_ref().map(|t| t.token.expose().to_owned()),
        "TELEGRAM_USERS" => spec.telegram.as_ref().map(|t| t.users.to_csv()),
        "MODEL" => Some(spec.model.to_string()),
        "SKILLS" => Some(spec.skills.to_csv()),
        "GATEWAY_TOKEN" => Some(token.expose().to_owned()),
        "OPENCLAW_IMAGE" => Some(spec.image.to_string()),
        "SKIP_BROWSER_INSTALL" => Some(spec.skip_browser_install.to_string()),
        "DISK_SIZE" => Some(spec.disk_size.to_string()),
        "ANTHROPIC_API_KEY" => secret_or_empty(spec.keys.anthropic.as_ref()),
        "OPENAI_API_KEY" => secret_or_empty(spec.keys.openai.as_ref()),
        "MINIMAX_API_KEY" => secret_or_empty(spec.keys.minimax.as_ref()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::instance::state::{ENV_KEYS, VARS_KEYS};
    use crate::settings::Settings;
    use clap::Parser;

    fn spec(args: &[&str]) -> SetupSpec {
        let Command::Setup(setup) = Cli::try_parse_from(args).unwrap().command else {
            unreachable!()
        };
        Settings::from_lookup(|_| None)
            .unwrap()
            .resolve_setup(&setup)
            .unwrap()
    }

    /// 0.2.0 reads `KEY=value` lines, aborting on a key it does not know; a value runs to the end
    /// of its line, so any line break inside one would split it.
    fn accepted_by_020(text: &str, keys: &[&str]) -> bool {
        text.ends_with('\n')
            && !text.contains('\r')
            && !text.contains('\0')
            && text.lines().all(|line| match line.split_once('=') {
                Some((key, _)) => key == "FIRECLAW_STATE_FORMAT" || keys.contains(&key),
                None => false,
            })
    }

    #[test]
    fn files_we_write_pass_the_rules_020_applies() {
        let spec = spec(&[
            "fireclaw",
            "setup",
            "--instance",
            "a",
            "--openai-api-key",
            "sk-x",
            "--anthropic-api-key",
            "sk-y",
            "--telegram-token",
            "1:x",
            "--telegram-users",
            "1,2",
        ]);
        let taken = Taken::default();
        let settings = Settings::from_lookup(|_| None).unwrap();
        let allocation = allocate(&spec, &settings.network, settings.base_port, &taken).unwrap();
        let token = GatewayToken::from_random_bytes([1; 32]);
        let env = instance_env(&spec, &allocation, &token).unwrap().render();
        let vars = provision_vars(&spec, &token).unwrap().render();
        assert!(accepted_by_020(&env, &ENV_KEYS), "{env}");
        assert!(accepted_by_020(&vars, &VARS_KEYS), "{vars}");
        assert!(env.starts_with("FIRECLAW_STATE_FORMAT=plain-v1\n"));
        assert!(vars.starts_with("FIRECLAW_STATE_FORMAT=plain-v1\n"));
        assert!(
            !env.contains("TELEGRAM_TOKEN"),
            "the bot token lives only in provision.vars"
        );
        assert!(vars.contains("TELEGRAM_TOKEN=1:x\n"));
    }

    #[test]
    fn explicit_port_is_checked_and_ip_skips_taken() {
        let spec = spec(&[
            "fireclaw",
            "setup",
            "--instance",
            "a",
            "--openai-api-key",
            "k",
            "--host-port",
            "20000",
        ]);
        let settings = Settings::from_lookup(|_| None).unwrap();
        let mut taken = Taken::default();
        taken.ips.insert("172.16.0.2".parse().unwrap());
        let allocation = allocate(&spec, &settings.network, settings.base_port, &taken).unwrap();
        assert_eq!(allocation.host_port.get(), 20000);
        assert_eq!(allocation.tap.as_str(), "ta3");
        taken.listening.insert(20000);
        assert_eq!(
            allocate(&spec, &settings.network, settings.base_port, &taken),
            Err(AllocError::PortListening { port: 20000 })
        );
    }
}
