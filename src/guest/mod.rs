//! The guest side: the pinned SSH transport, guest provisioning, and the health gates.

pub mod health;
pub mod provision;
pub mod ssh;
