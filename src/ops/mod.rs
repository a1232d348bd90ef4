//! Operations several verbs share, between `commands` (which parse arguments, call these and
//! print) and the host and guest adapters: finding and locking an instance (`instance`),
//! creating one (`install`) and removing one (`teardown`), bringing it up and stopping it
//! (`lifecycle`), suspending and resuming it through snapshots (`suspend`), the host network and
//! the guest network policy (`network`, `egress`), and
//! recognising what fireclaw 0.2.0 made (`legacy`). Operations reach systemd only through
//! `ServiceManager`, the guest only through `GuestShell`, and the network steps of install and
//! teardown only through `HostSteps`, so unit tests drive them with recording fakes.

pub mod apply;
pub mod bake;
pub mod baked_base;
pub mod builder;
pub mod confine;
pub mod egress;
pub mod evidence;
pub mod export;
pub mod facts;
pub mod import;
pub mod install;
pub mod instance;
pub mod legacy;
pub mod lifecycle;
pub mod network;
pub mod observed;
pub mod resize;
pub mod suspend;
pub mod teardown;
pub mod timing;

#[cfg(test)]
mod fakes;
