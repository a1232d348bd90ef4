//! Allocation of an instance's host port, VM IP, tap name and MAC, as pure functions of what is
//! already taken. The caller gathers "taken" (other instances' `.env`, listening sockets) under
//! `STATE_ROOT/.alloc.lock`, so two setups cannot pick the same values.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::values::{BridgeAddress, HostPort, InstanceId, InterfaceName, Subnet24};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("no free host port above {base}: every port up to 65535 is assigned or in use")]
    PortsExhausted { base: u16 },
    #[error("host port {port} is already assigned to instance '{owner}'")]
    PortAssigned { port: u16, owner: String },
    #[error("host port {port} is already in use by another program on this host")]
    PortListening { port: u16 },
    #[error("no free VM IP in {subnet}: all 253 addresses are assigned")]
    IpsExhausted { subnet: String },
}

/// What other instances and programs already hold.
#[derive(Debug, Default, Clone)]
pub struct Taken {
    /// Port → the instance holding it.
    pub ports: std::collections::BTreeMap<u16, String>,
    pub ips: BTreeSet<Ipv4Addr>,
    /// Ports something on the host listens on (TCP, any address).
    pub listening: BTreeSet<u16>,
}

/// The first port above `base` that no instance holds and nothing listens on.
pub fn first_free_port(base: u16, taken: &Taken) -> Result<HostPort, AllocError> {
    let first = base.saturating_add(1).max(HostPort::MIN);
    (first..=u16::MAX)
        .find(|port| !taken.ports.contains_key(port) && !taken.listening.contains(port))
        .and_then(|port| HostPort::new(port).ok())
        .ok_or(AllocError::PortsExhausted { base })
}

/// Checks an explicitly requested port the same way auto-allocation does.
pub fn check_port(port: HostPort, taken: &Taken) -> Result<HostPort, AllocError> {
    if let Some(owner) = taken.ports.get(&port.get()) {
        return Err(AllocError::PortAssigned {
            port: port.get(),
            owner: owner.clone(),
        });
    }
    if taken.listening.contains(&port.get()) {
        return Err(AllocError::PortListening { port: port.get() });
    }
    Ok(port)
}

/// The lowest host address of the /24 that is neither the gateway nor assigned.
pub fn first_free_ip(
    subnet: Subnet24,
    gateway: BridgeAddress,
    taken: &Taken,
) -> Result<Ipv4Addr, AllocError> {
    (1..=254u8)
        .map(|octet| subnet.host(octet))
        .find(|ip| *ip != gateway.address() && !taken.ips.contains(ip))
        .ok_or_else(|| AllocError::IpsExhausted {
            subnet: subnet.to_string(),
        })
}

/// `t` + the first six of the id's `[a-z0-9]` characters (`vm` if none) + the last IP octet, as
/// 0.2.0 derives it. At most 10 characters, so always a valid interface name.
pub fn tap_name(id: &InstanceId, ip: Ipv4Addr) -> InterfaceName {
    let mut stem: String = id
        .as_str()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(6)
        .collect();
    if stem.is_empty() {
        stem.push_str("vm");
    }
    // At most 1 + 6 + 3 = 10 characters of [a-z0-9]: always within the kernel's 15.
    InterfaceName::derived(format!("t{stem}{}", ip.octets()[3]))
}

/// `06:fc:00:10:00:XX`, XX the last IP octet in hex: locally administered and unicast.
pub fn mac_address(ip: Ipv4Addr) -> String {
    format!("06:fc:00:10:00:{:02x}", ip.octets()[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> Subnet24 {
        "172.16.0.0/24".parse().unwrap()
    }
    fn gateway() -> BridgeAddress {
        "172.16.0.1/24".parse().unwrap()
    }

    #[test]
    fn first_port_is_one_above_base() {
        assert_eq!(
            first_free_port(18890, &Taken::default()).unwrap().get(),
            18891
        );
    }

    #[test]
    fn first_free_port_skips_assigned_and_listening_ports() {
        let mut taken = Taken::default();
        taken.ports.insert(18891, "a".into());
        taken.listening.insert(18892);
        taken.ports.insert(18893, "b".into());
        assert_eq!(first_free_port(18890, &taken).unwrap().get(), 18894);
    }

    #[test]
    fn port_pool_exhaustion_is_an_error() {
        let mut taken = Taken::default();
        taken.listening.extend(65530..=65535);
        assert_eq!(
            first_free_port(65529, &taken),
            Err(AllocError::PortsExhausted { base: 65529 })
        );
    }

    #[test]
    fn explicit_port_already_taken_names_the_holder() {
        let mut taken = Taken::default();
        taken.ports.insert(20000, "other-bot".into());
        taken.listening.insert(20001);
        let err = check_port(HostPort::new(20000).unwrap(), &taken).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host port 20000 is already assigned to instance 'other-bot'"
        );
        assert_eq!(
            check_port(HostPort::new(20001).unwrap(), &taken),
            Err(AllocError::PortListening { port: 20001 })
        );
        assert!(check_port(HostPort::new(20002).unwrap(), &taken).is_ok());
    }

    #[test]
    fn first_ip_skips_the_gateway_and_assigned_ips() {
        let mut taken = Taken::default();
        assert_eq!(
            first_free_ip(subnet(), gateway(), &taken).unwrap(),
            Ipv4Addr::new(172, 16, 0, 2)
        );
        taken.ips.insert(Ipv4Addr::new(172, 16, 0, 2));
        taken.ips.insert(Ipv4Addr::new(172, 16, 0, 3));
        assert_eq!(
            first_free_ip(subnet(), gateway(), &taken).unwrap(),
            Ipv4Addr::new(172, 16, 0, 4)
        );
        // A gateway in the middle of the range is skipped too; .1 is then free.
        let mid: BridgeAddress = "172.16.0.100/24".parse().unwrap();
        assert_eq!(
            first_free_ip(subnet(), mid, &Taken::default()).unwrap(),
            Ipv4Addr::new(172, 16, 0, 1)
        );
    }

    #[test]
    fn ip_pool_exhaustion_is_an_error() {
        let mut taken = Taken::default();
        taken.ips.extend((2..=254).map(|o| subnet().host(o)));
        let err = first_free_ip(subnet(), gateway(), &taken).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free VM IP in 172.16.0.0/24: all 253 addresses are assigned"
        );
    }

    #[test]
    fn tap_and_mac_follow_020_derivation() {
        let ip = Ipv4Addr::new(172, 16, 0, 2);
        let id = |s: &str| s.parse::<InstanceId>().unwrap();
        assert_eq!(tap_name(&id("my-bot"), ip).as_str(), "tmybot2");
        assert_eq!(tap_name(&id("___"), ip).as_str(), "tvm2");
        assert_eq!(
            tap_name(&id("abcdefghijk"), Ipv4Addr::new(172, 16, 0, 254)).as_str(),
            "tabcdef254"
        );
        assert_eq!(mac_address(ip), "06:fc:00:10:00:02");
        assert_eq!(
            mac_address(Ipv4Addr::new(172, 16, 0, 254)),
            "06:fc:00:10:00:fe"
        );
    }
}
