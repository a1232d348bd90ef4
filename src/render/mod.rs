//! Pure producers of everything fireclaw writes for an instance: cloud-init files, the seed
//! image, the Firecracker config, systemd units and wrapper scripts. Each is a function from
//! typed input to text or bytes, snapshot-tested; none touches the host.

pub mod artifacts;
pub mod cloud_init;
pub mod firecracker;
pub mod seed_image;
pub mod units;
