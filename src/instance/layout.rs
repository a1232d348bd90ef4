//! Names and paths derived from an instance id, exactly as 0.2.0 lays them out: the state files
//! under `STATE_ROOT/.vm-<id>/`, the lock files, the VM asset tree under `FC_ROOT/<id>/`, the
//! systemd unit names and the SSH host-key alias. Pure: nothing here touches the disk.

use std::path::{Path, PathBuf};

use super::values::InstanceId;

/// Where one instance's state files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePaths {
    pub dir: PathBuf,
    pub env: PathBuf,
    pub token: PathBuf,
    pub vars: PathBuf,
    pub known_hosts: PathBuf,
    pub fireclaw_json: PathBuf,
    /// Which VMM process (host boot and PID) last had its guest answer SSH: a stop of any
    /// other skips the wait for a clean shutdown a guest that never came up cannot do.
    pub guest_answered: PathBuf,
    /// How the VMM's next start boots (`FIRECLAW_VMM_BOOT`, read by the VM unit as an
    /// environment file): from its config file, or waiting for a snapshot load. Root's only.
    pub vmm_boot_env: PathBuf,
}

impl StatePaths {
    pub fn new(state_root: &Path, id: &InstanceId) -> Self {
        let dir = state_root.join(format!("{STATE_DIR_PREFIX}{id}"));
        Self {
            env: dir.join(ENV_FILE),
            token: dir.join(".token"),
            vars: dir.join("provision.vars"),
            known_hosts: dir.join("known_hosts"),
            fireclaw_json: dir.join("fireclaw.json"),
            guest_answered: dir.join("guest-answered"),
            vmm_boot_env: dir.join("vmm-boot.env"),
            dir,
        }
    }
}

/// What `guest-answered` holds for a VMM process: the host boot and the VMM's PID.
pub fn guest_answered_text(boot_id: &str, vmm_pid: u32) -> String {
    format!("{boot_id} {vmm_pid}\n")
}

/// The base images' file names, in `BASE_IMAGES_DIR` and in each instance's `images/`.
pub const KERNEL_FILE: &str = "vmlinux";
pub const ROOTFS_FILE: &str = "rootfs.ext4";
pub const INITRD_FILE: &str = "initrd.img";
/// The wrapper script that runs the VM by hand; 0.2.0's VM unit runs it as its `ExecStart`.
pub const START_SCRIPT: &str = "start-vm.sh";

/// 0.2.0's state file with the allocation and settings of an instance.
pub const ENV_FILE: &str = ".env";

/// The prefix of an instance's state dir under `STATE_ROOT` (`.vm-<id>`).
const STATE_DIR_PREFIX: &str = ".vm-";

/// The instance name a directory under `STATE_ROOT` belongs to, if it is a state dir.
pub fn instance_of_state_dir(dir_name: &str) -> Option<&str> {
    dir_name.strip_prefix(STATE_DIR_PREFIX)
}

/// The public half of an SSH key: `<key>.pub` beside it.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut path = key.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// The confined VMM's own dir inside `FC_ROOT/<id>/`.
pub const VMM_DIR: &str = "vmm";
/// The snapshot files in the VMM's dir.
pub const SNAPSHOT_STATE_FILE: &str = "snapshot.vmstate";
pub const SNAPSHOT_MEMORY_FILE: &str = "snapshot.mem";

/// `FC_ROOT/<id>/firecracker.socket`.
pub fn default_api_sock(fc_root: &Path, id: &str) -> PathBuf {
    fc_root.join(id).join("firecracker.socket")
}

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
    /// Where 0.2.0 (and unconfined instances) keep Firecracker's log.
    pub firecracker_log: PathBuf,
    pub console_log: PathBuf,
    /// The confined VMM's own dir (its account owns it): its API socket and its log.
    pub vmm_dir: PathBuf,
    pub vmm_api_sock: PathBuf,
    pub vmm_log: PathBuf,
    /// A suspended VM's device state and memory (`fireclaw suspend`), written by its VMM.
    pub snapshot_state: PathBuf,
    pub snapshot_memory: PathBuf,
    pub start_script: PathBuf,
    pub stop_script: PathBuf,
}

impl AssetPaths {
    pub fn new(fc_root: &Path, id: &InstanceId) -> Self {
        let dir = fc_root.join(id.as_str());
        let images = dir.join("images");
        let config = dir.join("config");
        let logs = dir.join("logs");
        let vmm_dir = dir.join(VMM_DIR);
        Self {
            rootfs: images.join(ROOTFS_FILE),
            kernel: images.join(KERNEL_FILE),
            initrd: images.join(INITRD_FILE),
            seed: images.join("seed.img"),
            user_data: config.join("user-data"),
            meta_data: config.join("meta-data"),
            network_config: config.join("network-config"),
            vm_config: config.join("vm-config.json"),
            firecracker_log: logs.join("firecracker.log"),
            console_log: logs.join("console.log"),
            vmm_api_sock: vmm_dir.join("api.sock"),
            vmm_log: vmm_dir.join("firecracker.log"),
            snapshot_state: vmm_dir.join(SNAPSHOT_STATE_FILE),
            snapshot_memory: vmm_dir.join(SNAPSHOT_MEMORY_FILE),
            vmm_dir,
            start_script: dir.join(START_SCRIPT),
            stop_script: dir.join("stop-vm.sh"),
            images,
            config,
            logs,
            dir,
        }
    }
}

/// Prefix and suffix of the VM unit's name (`firecracker-vmdemo-<id>.service`, 0.2.0's name).
const VM_UNIT_PREFIX: &str = "firecracker-vmdemo-";
const PROXY_UNIT_PREFIX: &str = "vmdemo-proxy-";
const GUEST_UNIT_PREFIX: &str = "openclaw-";
const SERVICE_SUFFIX: &str = ".service";

/// The systemd unit names of an instance (the historical `vmdemo` names): the two host units and
/// the gateway service inside the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitNames {
    pub vm: String,
    pub proxy: String,
    /// The guest's gateway service (inside the VM, driven over SSH).
    pub guest: String,
}

impl UnitNames {
    pub fn new(id: &InstanceId) -> Self {
        Self::for_name(id.as_str())
    }

    /// The names for a directory name that may not be a valid id (a scanned `.vm-<name>`).
    pub fn for_name(name: &str) -> Self {
        Self {
            vm: format!("{VM_UNIT_PREFIX}{name}{SERVICE_SUFFIX}"),
            proxy: format!("{PROXY_UNIT_PREFIX}{name}{SERVICE_SUFFIX}"),
            guest: format!("{GUEST_UNIT_PREFIX}{name}{SERVICE_SUFFIX}"),
        }
    }

    /// The instance name a VM unit file name belongs to, if it is one.
    pub fn instance_of_vm_unit(file_name: &str) -> Option<&str> {
        file_name
            .strip_prefix(VM_UNIT_PREFIX)?
            .strip_suffix(SERVICE_SUFFIX)
    }

    pub fn vm_path(&self, unit_dir: &Path) -> PathBuf {
        unit_dir.join(&self.vm)
    }

    pub fn proxy_path(&self, unit_dir: &Path) -> PathBuf {
        unit_dir.join(&self.proxy)
    }
}

/// The alias fireclaw pins an instance's SSH host key under in its `known_hosts`; the renderer
/// writes it and the SSH client asks for it, so both must come from here.
pub fn host_key_alias(id: &str) -> String {
    format!("fireclaw-{id}")
}

/// The lock files under `STATE_ROOT`. They are never deleted, so a lock can never be held on
/// a file another command has already replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockPaths {
    /// `.alloc.lock`: held while allocating (the same file 0.2.0 uses).
    pub allocation: PathBuf,
    /// `.net.lock`: held while the shared network pieces are checked and created.
    pub network: PathBuf,
    /// `.locks/`: one `<id>.lock` per instance, serialising lifecycle commands on it.
    pub instances: PathBuf,
}

impl LockPaths {
    pub fn new(state_root: &Path) -> Self {
        Self {
            allocation: state_root.join(".alloc.lock"),
            network: state_root.join(".net.lock"),
            instances: state_root.join(".locks"),
        }
    }

    pub fn instance(&self, id: &InstanceId) -> PathBuf {
        self.instances.join(format!("{id}.lock"))
    }
}

/// The guest's SSH user, as 0.2.0 creates it.
pub const GUEST_USER: &str = "ubuntu";
/// The port the OpenClaw gateway serves on inside the guest.
pub const GUEST_GATEWAY_PORT: u16 = 18789;
/// Boot arguments 0.2.0 passes to every guest kernel.
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// What the guest's provisioning needs beyond the base image: installed by cloud-init
/// (user-data `packages:`) unless the base already has each in `/usr/bin`.
pub const GUEST_PACKAGES: [&str; 2] = ["jq", "curl"];
/// Resolvers the guest uses.
pub const GUEST_NAMESERVERS: [&str; 2] = ["1.1.1.1", "8.8.8.8"];
