//! fireclaw: a control plane that runs OpenClaw agent gateways in Firecracker microVMs, one VM
//! per instance, supervised by systemd. `main.rs` parses the command line and calls [`run`].

pub mod cli;
pub mod instance;
pub mod render;
pub mod settings;
