//! Names and paths derived from an instance id that are not state: the VM asset tree under
//! `FC_ROOT/<id>/` and the two systemd unit names, exactly as 0.2.0 lays them out.

use std::path::{Path, PathBuf};

use super::values::InstanceId;

/// `FC_ROOT/<id>/` and everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetPaths {
    pub dir: PathBuf,
    pub images: PathBuf,
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub seed: PathBuf,
    pub config: PathBuf,
    pub user_data: PathBuf,
    pub meta_data: PathBuf,
    pub network_config: PathBuf,
    pub vm_config: PathBuf,
    pub logs: PathBuf,
    pub firecracker_log: PathBuf,
    pub console_log: PathBuf,
    pub start_script: PathBuf,
    pub stop_script: PathBuf,
}

impl AssetPaths {
    pub fn new(fc_root: &Path, id: &InstanceId) -> Self {
        let dir = fc_root.join(id.as_str());
        let images = dir.join("images");
        let config = dir.join("config");
        let logs = dir.join("logs");
        Self {
            rootfs: images.join("rootfs.ext4"),
            kernel: images.join("vmlinux"),
            initrd: images.join("initrd.img"),
            seed: images.join("seed.img"),
            user_data: config.join("user-data"),
            meta_data: config.join("meta-data"),
            network_config: config.join("network-config"),
            vm_config: config.join("vm-config.json"),
            firecracker_log: logs.join("firecracker.log"),
            console_log: logs.join("console.log"),
            start_script: dir.join("start-vm.sh"),
            stop_script: dir.join("stop-vm.sh"),
            images,
            config,
            logs,
            dir,
        }
    }
}

/// The systemd unit names of an instance (the historical `vmdemo` names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitNames {
    pub vm: String,
    pub proxy: String,
}

impl UnitNames {
    pub fn new(id: &InstanceId) -> Self {
        Self {
            vm: format!("firecracker-vmdemo-{id}.service"),
            proxy: format!("vmdemo-proxy-{id}.service"),
        }
    }

    pub fn vm_path(&self, unit_dir: &Path) -> PathBuf {
        unit_dir.join(&self.vm)
    }

    pub fn proxy_path(&self, unit_dir: &Path) -> PathBuf {
        unit_dir.join(&self.proxy)
    }
}

/// The guest's SSH user, as 0.2.0 creates it.
pub const GUEST_USER: &str = "ubuntu";
/// The port the OpenClaw gateway serves on inside the guest.
pub const GUEST_GATEWAY_PORT: u16 = 18789;
/// Boot arguments 0.2.0 passes to every guest kernel.
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// Resolvers the guest uses.
pub const GUEST_NAMESERVERS: [&str; 2] = ["1.1.1.1", "8.8.8.8"];
