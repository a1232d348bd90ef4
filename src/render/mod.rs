//! Pure producers of everything fireclaw writes for an instance: cloud-init files, the seed
//! image, the Firecracker config, systemd units, wrapper scripts and the firewall chains. Each is a function from
//! typed input to text or bytes, snapshot-tested; none touches the host.

pub mod artifacts;
pub mod cloud_init;
pub mod egress;
pub mod firecracker;
pub mod guest_fstab;
pub mod man;
pub mod seed_image;
pub mod units;
