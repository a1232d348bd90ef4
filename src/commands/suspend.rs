//! `fireclaw suspend <id>|--all` and `fireclaw resume <id>|--all`: one instance, or every
//! running (suspend) or suspended (resume) one in turn, each under its own lock, each failure
//! reported and the rest still done. The steps are `ops::suspend`'s.

use anyhow::{Result, bail};

use crate::cli::{ResumeArgs, SuspendArgs};
use crate::host::systemd::ServiceManager;
use crate::instance::layout::UnitNames;
use crate::instance::timing::TimedVerb;
use crate::instance::values::InstanceId;
use crate::ops::instance::lock_and_load;
use crate::ops::lifecycle::{Waits, report_healthy, stop_shell};
use crate::ops::suspend::{
    Suspended, resume as resume_instance, suspend as suspend_instance, vm_paused,
};
use crate::ops::timing::Stopwatch;
use crate::output::{Output, error_chain};
use crate::settings::Settings;
use crate::store::{read_fireclaw_state, scan_instances};

pub fn suspend(
    settings: &Settings,
    args: &SuspendArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    match &args.id {
        Some(id) => suspend_one(settings, id, services, output),
        None => {
            let ids = instances(settings, services, Wanted::Running)?;
            each(&ids, "suspended", output, |id, output| {
                suspend_one(settings, id, services, output)
            })
        }
    }
}

pub fn resume(
    settings: &Settings,
    args: &ResumeArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let waits = Waits::from(&args.waits);
    match &args.id {
        Some(id) => resume_one(settings, id, waits, services, output),
        None => {
            let ids = instances(settings, services, Wanted::Suspended)?;
            each(&ids, "resumed", output, |id, output| {
                resume_one(settings, id, waits, services, output)
            })
        }
    }
}

fn suspend_one(
    settings: &Settings,
    id: &InstanceId,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, id, output)?;
    loaded.ensure_provisioned()?;
    let guest = stop_shell(&loaded);
    match suspend_instance(settings, &loaded, services, &guest, output)? {
        Suspended::Now(record) => output.line(&format!(
            "Instance {id} is suspended: {} MiB of memory and state on disk, units disabled (it stays suspended across reboots); resume it with: fireclaw resume {id}",
            record.total_bytes().div_ceil(1 << 20)
        )),
        Suspended::Already(_) => output.line(&format!(
            "Instance {id} is already suspended; resume it with: fireclaw resume {id}"
        )),
    }
    Ok(())
}

fn resume_one(
    settings: &Settings,
    id: &InstanceId,
    waits: Waits,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, id, output)?;
    loaded.ensure_provisioned()?;
    let mut watch = Stopwatch::new(TimedVerb::Resume);
    let health = resume_instance(
        settings,
        &loaded,
        services,
        &loaded.ssh,
        waits,
        &mut watch,
        output,
    )?;
    report_healthy(
        &loaded,
        services,
        &health,
        &watch.finish(true),
        false,
        output,
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Running,
    Suspended,
}

/// The instances `--all` acts on: those whose VM unit is active (suspend), or that have a
/// snapshot recorded or a paused VM (resume), in name order.
fn instances(
    settings: &Settings,
    services: &dyn ServiceManager,
    wanted: Wanted,
) -> Result<Vec<InstanceId>> {
    let ids: Vec<InstanceId> = scan_instances(&settings.paths.state_root)?
        .into_iter()
        .filter(|scanned| scanned.name != crate::instance::baked::BUILDER_ID)
        .filter_map(|scanned| scanned.name.parse().ok())
        .collect();
    let units: Vec<String> = ids.iter().map(|id| UnitNames::new(id).vm).collect();
    let names: Vec<&str> = units.iter().map(String::as_str).collect();
    let states = services.states(&names)?;
    Ok(ids
        .into_iter()
        .zip(states)
        .filter(|(id, state)| match wanted {
            Wanted::Running => state.is_active(),
            // Recorded, or left paused by a suspend cut short before its record.
            Wanted::Suspended => {
                read_fireclaw_state(&crate::instance::layout::StatePaths::new(
                    &settings.paths.state_root,
                    id,
                ))
                .ok()
                .flatten()
                .is_some_and(|s| s.suspended.is_some())
                    || (state.is_active() && vm_paused(settings, id))
            }
        })
        .map(|(id, _)| id)
        .collect())
}

/// Runs `act` for each instance in turn; one failure does not stop the rest, and the command
/// fails when any did. Ctrl-C stops after the current instance.
fn each(
    ids: &[InstanceId],
    done: &str,
    output: &mut Output<'_>,
    mut act: impl FnMut(&InstanceId, &mut Output<'_>) -> Result<()>,
) -> Result<()> {
    if ids.is_empty() {
        output.line(&format!("No instance to be {done}."));
        return Ok(());
    }
    let mut failed = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        if crate::host::interrupt::check().is_err() {
            bail!(
                "interrupted: {} of {} instances not {done} yet; run the command again to finish",
                ids.len() - index,
                ids.len()
            );
        }
        if let Err(error) = act(id, output) {
            output.error(&error_chain(error.as_ref()));
            failed.push(id.to_string());
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} instances were not {done}: {}",
            failed.len(),
            ids.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
