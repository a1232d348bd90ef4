//! `fireclaw stop <id>`: proxy, guest service, VM, then both units disabled, so the instance
//! stays stopped across host reboots. A suspended instance keeps its snapshot.

use anyhow::Result;

use crate::host::systemd::ServiceManager;
use crate::instance::values::InstanceId;
use crate::ops::export::recover_cut_short;
use crate::ops::instance::lock_and_load;
use crate::ops::lifecycle::{stop, stop_shell};
use crate::output::Output;
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    id: &InstanceId,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, id, output)?;
    // A VM a killed export left paused cannot shut down cleanly: it runs on first.
    recover_cut_short(settings, &loaded, services, output)?;
    stop(&loaded, services, &stop_shell(&loaded), output)?;
    if loaded.ensure_not_suspended().is_err() {
        // Its snapshot stays: stopping a suspended instance changes nothing it holds.
        output.line(&format!(
            "Instance {id} is suspended and stays so across reboots; resume it with: fireclaw resume {id}, or boot it fresh with: fireclaw start {id} --cold"
        ));
        return Ok(());
    }
    if let Err(never) = loaded.ensure_provisioned() {
        // `start` refuses it: say what does work.
        output.line(&format!(
            "Instance {id} is stopped; its setup was cut short (phase {}): finish it with: fireclaw provision {id}, or remove it with: fireclaw destroy {id} --force",
            never.phase
        ));
        return Ok(());
    }
    output.line(&format!(
        "Instance {id} is stopped and stays stopped across reboots; start it with: fireclaw start {id}"
    ));
    Ok(())
}
