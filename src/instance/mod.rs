//! The pure domain of an instance: validated values, the setup spec, 0.2.0's state files and
//! `fireclaw.json`, allocation, and every name and path derived from an instance id. Nothing
//! here does I/O except drawing fresh secrets from the system's random source (`secrets`); the
//! state store that reads and writes these files is `crate::store`.

pub mod alloc;
pub mod apply_file;
pub mod archive;
pub mod baked;
pub mod calendar;
pub mod confinement;
pub mod host;
pub mod images;
pub mod layout;
pub mod plain;
pub mod plan;
pub mod secrets;
pub mod spec;
pub mod state;
pub mod suspension;
pub mod timing;
pub mod values;
