//! The VM unit's hidden helpers: `vm-net-up` (ExecStartPre), `vm-resume` (ExecStartPost),
//! `vm-shutdown` (ExecStop) and `vm-net-down` (ExecStopPost). The work is `ops::network`'s and
//! `ops::suspend`'s; what is decided here is how a helper reports a failure to systemd.

use anyhow::{Context, Result};

use crate::host::systemd::ServiceManager;
use crate::instance::layout::UnitNames;
use crate::instance::values::InstanceId;
use crate::ops::network::{PermanentStartError, net_down, net_up, shutdown as shut_down};
use crate::ops::suspend::{load_due_snapshot, prepare_boot};
use crate::output::{AlreadyReported, Output, error_chain};
use crate::settings::Settings;

/// `fireclaw vm-net-up <id>`. On a permanent error while running as the unit's ExecStartPre,
/// it also queues a stop of its own unit: `Restart=always` would otherwise retry a start that
/// cannot succeed until the start limit, while `systemctl start` already reported the failure.
pub fn net_up_command(
    settings: &Settings,
    id: &InstanceId,
    in_unit: bool,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let result = net_up(settings, id)
        .with_context(|| format!("bring up the network of instance '{id}'"))
        .map(|notes| {
            for note in notes {
                output.warn(&note);
            }
        })
        // Then how Firecracker boots: from its config, or for the load of a snapshot.
        .and_then(|()| prepare_boot(settings, id, in_unit));
    stop_on_permanent_error(result, id, services, output)
}

/// `fireclaw vm-resume <id>` (ExecStartPost): loads a due snapshot. A load that cannot
/// succeed fails the start once, as a permanent `vm-net-up` error does.
pub fn resume_command(
    settings: &Settings,
    id: &InstanceId,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let result = load_due_snapshot(settings, id, output);
    stop_on_permanent_error(result, id, services, output)
}

/// A permanent error of a helper running in the VM unit also queues a stop of that unit.
fn stop_on_permanent_error(
    result: Result<()>,
    id: &InstanceId,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    if let Err(error) = &result
        && error.downcast_ref::<PermanentStartError>().is_some()
        && std::env::var_os(crate::env_vars::INVOCATION_ID).is_some()
    {
        // The stop below kills this process, so the reason goes to the journal first.
        output.error(&error_chain(error.as_ref()));
        let unit = UnitNames::new(id).vm;
        let _ = services.queue_stop(&[unit.as_str()]);
        return Err(AlreadyReported.into());
    }
    result
}

/// `fireclaw vm-shutdown <id>`.
pub fn shutdown(settings: &Settings, id: &InstanceId, output: &mut Output<'_>) -> Result<()> {
    shut_down(settings, id, output)
}

/// `fireclaw vm-net-down <id>`.
pub fn net_down_command(settings: &Settings, id: &InstanceId) -> Result<()> {
    net_down(settings, id)
}
