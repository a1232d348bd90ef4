//! The Firecracker configuration file (`config/vm-config.json`, passed with `--config-file`),
//! serialised from typed structs that mirror Firecracker's API objects.

use std::path::PathBuf;

use serde::Serialize;

use crate::instance::layout::BOOT_ARGS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfigInput {
    pub kernel: PathBuf,
    /// Present only when the base initrd exists.
    pub initrd: Option<PathBuf>,
    pub rootfs: PathBuf,
    pub seed: PathBuf,
    pub vcpu: u8,
    pub memory_mib: u32,
    pub tap: String,
    pub mac: String,
    pub log_path: PathBuf,
}

#[derive(Serialize)]
struct VmConfig<'a> {
    #[serde(rename = "boot-source")]
    boot_source: BootSource<'a>,
    drives: [Drive<'a>; 2],
    #[serde(rename = "machine-config")]
    machine_config: MachineConfig,
    #[serde(rename = "network-interfaces")]
    network_interfaces: [NetworkInterface<'a>; 1],
    logger: Logger<'a>,
}

#[derive(Serialize)]
struct BootSource<'a> {
    kernel_image_path: &'a PathBuf,
    boot_args: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    initrd_path: Option<&'a PathBuf>,
}

#[derive(Serialize)]
struct Drive<'a> {
    drive_id: &'static str,
    path_on_host: &'a PathBuf,
    is_root_device: bool,
    is_read_only: bool,
}

#[derive(Serialize)]
struct MachineConfig {
    vcpu_count: u8,
    mem_size_mib: u32,
    smt: bool,
}

#[derive(Serialize)]
struct NetworkInterface<'a> {
    iface_id: &'static str,
    guest_mac: &'a str,
    host_dev_name: &'a str,
}

#[derive(Serialize)]
struct Logger<'a> {
    log_path: &'a PathBuf,
    level: &'static str,
}

/// The guest NIC's id in the config (a snapshot load reattaches its tap by this id).
pub const NET_IFACE_ID: &str = "eth0";
/// Firecracker's log level (a snapshot load configures the logger the config file would).
pub const LOG_LEVEL: &str = "Info";

pub fn vm_config(input: &VmConfigInput) -> String {
    let config = VmConfig {
        boot_source: BootSource {
            kernel_image_path: &input.kernel,
            boot_args: BOOT_ARGS,
            initrd_path: input.initrd.as_ref(),
        },
        drives: [
            Drive {
                drive_id: "rootfs",
                path_on_host: &input.rootfs,
                is_root_device: true,
                is_read_only: false,
            },
            Drive {
                drive_id: "seed",
                path_on_host: &input.seed,
                is_root_device: false,
                is_read_only: true,
            },
        ],
        machine_config: MachineConfig {
            vcpu_count: input.vcpu,
            mem_size_mib: input.memory_mib,
            smt: false,
        },
        network_interfaces: [NetworkInterface {
            iface_id: NET_IFACE_ID,
            guest_mac: &input.mac,
            host_dev_name: &input.tap,
        }],
        logger: Logger {
            log_path: &input.log_path,
            level: LOG_LEVEL,
        },
    };
    // Paths are validated UTF-8 and the structs hold plain fields: serialisation cannot fail.
    let mut text = serde_json::to_string_pretty(&config).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(initrd: bool) -> VmConfigInput {
        let dir = PathBuf::from("/srv/firecracker/vm-demo/my-bot");
        VmConfigInput {
            kernel: dir.join("images/vmlinux"),
            initrd: initrd.then(|| dir.join("images/initrd.img")),
            rootfs: dir.join("images/rootfs.ext4"),
            seed: dir.join("images/seed.img"),
            vcpu: 4,
            memory_mib: 8192,
            tap: "tmybot2".into(),
            mac: "06:fc:00:10:00:02".into(),
            log_path: dir.join("logs/firecracker.log"),
        }
    }

    #[test]
    fn vm_config_snapshot() {
        insta::assert_snapshot!(vm_config(&input(false)));
    }

    #[test]
    fn vm_config_with_initrd_snapshot() {
        insta::assert_snapshot!(vm_config(&input(true)));
    }
}
