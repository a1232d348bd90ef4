//! The pure domain of an instance: validated values, the setup spec, 0.2.0's state files and
//! `fireclaw.json`, allocation, and the state store with its locks. Nothing here touches the
//! host's network, systemd or processes.

pub mod alloc;
pub mod layout;
pub mod plain;
pub mod plan;
pub mod secrets;
pub mod spec;
pub mod state;
pub mod store;
pub mod values;
