//! `fireclaw start <id>` and `fireclaw restart <id>`: bring a provisioned instance up without
//! reprovisioning it (VM, SSH, guest service, proxy, both health gates); restart stops it first.
//! A VM unit written by 0.2.0 gets the guest network policy's drop-in before it starts.

use anyhow::Result;

use crate::cli::WaitArgs;
use crate::host::systemd::ServiceManager;
use crate::instance::values::InstanceId;
use crate::ops::egress::cover_if_made_by_020;
use crate::ops::instance::lock_and_load;
use crate::ops::lifecycle::{bring_up, print_summary, stop, stop_shell};
use crate::output::Output;
use crate::settings::Settings;

pub fn start(
    settings: &Settings,
    id: &InstanceId,
    waits: &WaitArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    run(settings, id, waits, services, false, output)
}

pub fn restart(
    settings: &Settings,
    id: &InstanceId,
    waits: &WaitArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    run(settings, id, waits, services, true, output)
}

/// Both verbs: lock, refuse a never-provisioned instance, cover a 0.2.0 unit, then (for
/// restart) stop, and bring it up.
fn run(
    settings: &Settings,
    id: &InstanceId,
    waits: &WaitArgs,
    services: &dyn ServiceManager,
    stop_first: bool,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, id, output)?;
    loaded.ensure_provisioned()?;
    cover_if_made_by_020(settings, &loaded, services)?;
    if stop_first {
        stop(&loaded, services, &stop_shell(&loaded), output)?;
    }
    let health = bring_up(&loaded, services, &loaded.ssh, waits.into(), output)?;
    print_summary(&loaded, services, &health, output);
    Ok(())
}
