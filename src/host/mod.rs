//! Adapters to the host: files and images on disk, and read-only probes of the running system.
//! Later: netlink, taps, iptables, systemd and the Firecracker API.

pub mod assets;
pub mod probe;
