//! What one host's fireclaw installation is configured with, as the domain needs it: the
//! directories it owns and the bridge every VM shares. `settings` fills these from the
//! environment; everything below the command layer takes them as plain values.

use std::path::PathBuf;

use super::values::{BridgeAddress, InterfaceName, Subnet24};

/// Directories fireclaw owns on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// `STATE_ROOT`: per-instance state dirs `.vm-<id>`, the allocation lock, lifecycle locks.
    pub state_root: PathBuf,
    /// `FC_ROOT`: per-instance VM assets.
    pub fc_root: PathBuf,
    pub unit_dir: PathBuf,
}

/// The bridge all VMs share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub bridge: InterfaceName,
    pub bridge_address: BridgeAddress,
    pub subnet: Subnet24,
}
