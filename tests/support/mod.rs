//! Shared support for the tests: sandboxes, guests, 0.2.0 instances and the real parts.

#![allow(dead_code)]

pub mod doctor_report;
pub mod fleet;
pub mod guest;
pub mod kernel_fixture;
pub mod legacy;
pub mod real_guest;
pub mod real_parts;
pub mod sandbox;
pub mod secrets;
pub mod uplink;
