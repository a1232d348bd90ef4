//! Adapters to the host: files and images on disk (and what a guest kernel image carries),
//! links (netlink and taps), the firewall, systemd, the Firecracker API, and read-only probes
//! of the running system.

pub mod assets;
pub mod firecracker_api;
pub mod firewall;
pub mod kernel_image;
pub mod netlink;
pub mod probe;
pub mod process;
pub mod rootfs_seed;
pub mod systemd;
pub mod tap;
pub mod trust;
