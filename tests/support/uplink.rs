//! An "uplink" network namespace in a host sandbox playing the outside world for the guest
//! network policy tests: a public documentation address, the cloud metadata address and a
//! private address, each serving port 8080, and a server on the host itself (every host
//! address, port 8081). Packets go only between namespaces the test made.

use super::sandbox::Sandbox;

pub const PUBLIC: &str = "198.51.100.2";
pub const METADATA: &str = "169.254.169.254";
pub const PRIVATE: &str = "10.99.0.1";
/// The host sandbox's own address on the uplink: "another host address".
pub const HOST_UPLINK: &str = "198.51.100.1";
pub const BRIDGE: &str = "172.16.0.1";

/// Makes the uplink namespace, its servers, the host's server and the host's routes to it.
pub fn add(host: &Sandbox) {
    host.sh(&format!(
        "ip netns add uplink && ip link add vup0 type veth peer name vup1 netns uplink && \
         ip addr add {HOST_UPLINK}/24 dev vup0 && ip link set vup0 up && \
         ip -n uplink link set lo up && ip -n uplink addr add {PUBLIC}/24 dev vup1 && \
         ip -n uplink addr add {METADATA}/32 dev vup1 && ip -n uplink addr add {PRIVATE}/32 dev vup1 && \
         ip -n uplink link set vup1 up && \
         ip route add {METADATA}/32 via {PUBLIC} && ip route add 10.99.0.0/24 via {PUBLIC} && \
         systemd-run --unit=uplink-server ip netns exec uplink socat TCP-LISTEN:8080,reuseaddr,fork SYSTEM:'read -r _; echo uplink-answer' && \
         systemd-run --unit=host-server socat TCP-LISTEN:8081,reuseaddr,fork SYSTEM:'read -r _; echo host-answer' && \
         for i in $(seq 50); do ip netns exec uplink ss -ltn | grep -q :8080 && ss -ltn | grep -q :8081 && exit 0; sleep 0.1; done; exit 1"
    ));
    // The host itself reaches all three, so a failure from a guest is the policy's doing.
    for address in [PUBLIC, METADATA, PRIVATE] {
        assert!(
            host.sh(&format!(
                "curl -sS --http0.9 --max-time 5 http://{address}:8080/"
            ))
            .contains("uplink-answer")
        );
    }
}

/// What happened when a guest connected to an address.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    /// Refused at once: curl's "couldn't connect" (the REJECT's ICMP reaches the guest), not a
    /// timeout (rc 28); every server here listens, so only the policy refuses.
    RefusedFast,
    /// Anything else: a timeout, an unanswered ARP.
    Failed(String),
}

/// The guest-side command whose output [`Outcome::of`] reads.
pub fn connect_script(address: &str, port: u16) -> String {
    format!("curl -sS --http0.9 --max-time 4 http://{address}:{port}/ 2>&1; echo \" rc=$?\"")
}

/// The default guest policy, seen from one guest through `connect`: the uplink answers; the
/// host (on the bridge and on another of its addresses), the metadata address and a private
/// address are refused at once.
pub fn assert_default_policy(who: &str, connect: impl Fn(&str, u16) -> Outcome) {
    assert_eq!(connect(PUBLIC, 8080), Outcome::Answered, "{who}");
    for (address, port) in [
        (BRIDGE, 8081),
        (HOST_UPLINK, 8081),
        (METADATA, 8080),
        (PRIVATE, 8080),
    ] {
        assert_eq!(
            connect(address, port),
            Outcome::RefusedFast,
            "{who} -> {address}:{port}"
        );
    }
}

impl Outcome {
    pub fn of(output: &str) -> Self {
        if output.contains("-answer") && output.contains("rc=0") {
            Self::Answered
        } else if output.contains("rc=7") {
            Self::RefusedFast
        } else {
            Self::Failed(output.to_owned())
        }
    }
}
