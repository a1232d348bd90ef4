//! What the stand-in binaries share (not shipped): the wire between the Firecracker stand-in and
//! the stand-in harness that does, on the test's side, what a confined VMM may not.

pub mod harness_wire;
