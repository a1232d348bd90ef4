//! From a validated `SetupSpec` and what is already taken to the values a new instance gets:
//! its allocation (port, IP, tap, MAC) and the contents of its `.env` and `provision.vars`,
//! holding only 0.2.0's keys in 0.2.0's order.

use std::net::Ipv4Addr;

use super::alloc::{
    AllocError, Taken, check_port, first_free_ip, first_free_port, mac_address, tap_name,
};
use super::spec::SetupSpec;
use super::state::{EnvFile, GatewayToken, StateError, VarsFile};
use super::values::{HostPort, InterfaceName};
use crate::settings::NetworkSettings;

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
