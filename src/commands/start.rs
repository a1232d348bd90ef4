//! `fireclaw start <id>` and `fireclaw restart <id>`: bring a provisioned instance up without
//! reprovisioning it (VM, SSH, guest service, proxy, both health gates); restart stops it first.
//! A VM unit written by 0.2.0 gets the guest network policy's drop-in before it starts. `start`
//! of a suspended instance resumes it, and `start --cold` discards its snapshot and boots from
//! the disk; `restart` refuses a suspended one (it would throw the snapshot away unasked).

use anyhow::Result;

use crate::cli::StartArgs;
use crate::guest::health::Health;
use crate::host::systemd::ServiceManager;
use crate::instance::timing::TimedVerb;
use crate::ops::egress::cover_if_made_by_020;
use crate::ops::instance::Loaded;
use crate::ops::instance::lock_and_load;
use crate::ops::lifecycle::{
    Waits, bring_up, explain_unreachable, report_healthy, stop, stop_shell,
};
use crate::ops::suspend::{discard_snapshot, resume, resume_due};
use crate::ops::timing::Stopwatch;
use crate::output::Output;
use crate::settings::Settings;

pub fn start(
    settings: &Settings,
    args: &StartArgs,
    cold: bool,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, &args.id, output)?;
    loaded.ensure_provisioned()?;
    cover_if_made_by_020(settings, &loaded, services)?;
    let waits = (&args.waits).into();
    let (health, watch) = up(settings, &loaded, waits, cold, services, output)
        .map_err(|error| explain_unreachable(settings, &loaded, services, error))?;
    report_healthy(
        &loaded,
        services,
        &health,
        &watch.finish(true),
        args.json,
        output,
    )
}

/// A cold boot, a resume of a suspended instance, or a plain boot, each timed.
fn up(
    settings: &Settings,
    loaded: &Loaded,
    waits: Waits,
    cold: bool,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<((Health, Health), Stopwatch)> {
    if cold {
        discard_snapshot(settings, loaded, services, output)?;
    } else if resume_due(settings, loaded, services) {
        let mut watch = Stopwatch::new(TimedVerb::Resume);
        let health = resume(
            settings,
            loaded,
            services,
            &loaded.ssh,
            waits,
            &mut watch,
            output,
        )?;
        return Ok((health, watch));
    }
    let mut watch = Stopwatch::new(TimedVerb::Start);
    let health = bring_up(loaded, services, &loaded.ssh, waits, &mut watch, output)?;
    Ok((health, watch))
}

/// Lock, refuse a never-provisioned or suspended instance, cover a 0.2.0 unit, stop, and
/// bring it up.
pub fn restart(
    settings: &Settings,
    args: &StartArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, &args.id, output)?;
    loaded.ensure_provisioned()?;
    loaded.ensure_not_suspended()?;
    cover_if_made_by_020(settings, &loaded, services)?;
    stop(&loaded, services, &stop_shell(&loaded), output)?;
    let mut watch = Stopwatch::new(TimedVerb::Start);
    let health = bring_up(
        &loaded,
        services,
        &loaded.ssh,
        (&args.waits).into(),
        &mut watch,
        output,
    )
    .map_err(|error| explain_unreachable(settings, &loaded, services, error))?;
    report_healthy(
        &loaded,
        services,
        &health,
        &watch.finish(true),
        args.json,
        output,
    )
}
