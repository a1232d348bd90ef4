//! `fireclaw start <id>` and `fireclaw restart <id>`: bring a provisioned instance up without
//! reprovisioning it (VM, SSH, guest service, proxy, both health gates); restart stops it first.
//! A VM unit written by 0.2.0 gets the guest network policy's drop-in before it starts. `start`
//! of a suspended instance resumes it, and `start --cold` discards its snapshot and boots from
//! the disk; `restart` refuses a suspended one (it would throw the snapshot away unasked).

use anyhow::Result;

use crate::cli::WaitArgs;
use crate::host::systemd::ServiceManager;
use crate::instance::values::InstanceId;
use crate::ops::egress::cover_if_made_by_020;
use crate::ops::instance::lock_and_load;
use crate::ops::lifecycle::{bring_up, print_summary, stop, stop_shell};
use crate::ops::suspend::{discard_snapshot, resume, resume_due};
use crate::output::Output;
use crate::settings::Settings;

pub fn start(
    settings: &Settings,
    id: &InstanceId,
    waits: &WaitArgs,
    cold: bool,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, id, output)?;
    loaded.ensure_provisioned()?;
    cover_if_made_by_020(settings, &loaded, services)?;
    let health = if cold {
        discard_snapshot(settings, &loaded, services, output)?;
        bring_up(&loaded, services, &loaded.ssh, waits.into(), output)?
    } else if resume_due(settings, &loaded, services) {
        resume(
            settings,
            &loaded,
            services,
            &loaded.ssh,
            waits.into(),
            output,
        )?
    } else {
        bring_up(&loaded, services, &loaded.ssh, waits.into(), output)?
    };
    print_summary(&loaded, services, &health, output);
    Ok(())
}

/// Lock, refuse a never-provisioned or suspended instance, cover a 0.2.0 unit, stop, and
/// bring it up.
pub fn restart(
    settings: &Settings,
    id: &InstanceId,
    waits: &WaitArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, id, output)?;
    loaded.ensure_provisioned()?;
    loaded.ensure_not_suspended()?;
    cover_if_made_by_020(settings, &loaded, services)?;
    stop(&loaded, services, &stop_shell(&loaded), output)?;
    let health = bring_up(&loaded, services, &loaded.ssh, waits.into(), output)?;
    print_summary(&loaded, services, &health, output);
    Ok(())
}
