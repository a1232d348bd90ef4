//! Adapters to the host: files and images on disk (and what a guest kernel image carries, and
//! the cloud-init seed written into a rootfs copy), links (netlink and taps), the firewall,
//! systemd, the Firecracker API, read-only probes of the running system, and fetching and
//! building the guest base images (downloads, signatures, the rootfs).

pub mod accounts;
pub mod archive_stream;
pub mod assets;
pub mod download;
pub mod firecracker_api;
pub mod firewall;
pub mod interrupt;
pub mod kernel_image;
pub mod netlink;
pub mod probe;
pub mod process;
pub mod rootfs_build;
pub mod rootfs_seed;
pub mod signature;
pub mod snapshot;
pub mod sparse;
pub mod systemd;
pub mod tap;
pub mod trust;
