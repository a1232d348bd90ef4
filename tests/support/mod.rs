//! Shared support for the root sandbox tests.

#![allow(dead_code)]

pub mod fleet;
pub mod guest;
pub mod legacy;
pub mod sandbox;
