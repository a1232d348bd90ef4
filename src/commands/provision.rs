//! `fireclaw provision <id> [flags]`: validate the effective config (saved values, then flags,
//! then API keys from the environment for keys saved empty) before writing anything, save it,
//! apply a changed private-egress allowlist at once, then rerun guest provisioning on the same
//! VM (same IP, port and disk) and gate on health.

use anyhow::{Context, Result, bail};

use crate::cli::ProvisionArgs;
use crate::faults::crash_point;
use crate::guest::health::Health;
use crate::host::systemd::ServiceManager;
use crate::instance::state::{Phase, VarsFile};
use crate::instance::timing::TimedVerb;
use crate::ops::egress::cover_if_made_by_020;
use crate::ops::instance::{Loaded, lock_and_load};
use crate::ops::lifecycle::{
    STEP_BOOT, STEP_HEALTH, Waits, await_health, await_ssh, ensure_vm_running, explain_unreachable,
    provision, report_healthy, start_proxy, unit_state,
};
use crate::ops::network::reapply_if_present;
use crate::ops::timing::Stopwatch;
use crate::output::Output;
use crate::settings::{ProvisionUpdate, Settings};
use crate::store::{set_phase, update_fireclaw_state, write_atomic};

pub fn run(
    settings: &Settings,
    args: &ProvisionArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let (_lock, loaded) = lock_and_load(settings, &args.id, output)?;
    loaded.ensure_not_suspended()?;
    let update = validated_update(settings, args, &loaded)?;
    let mut watch = Stopwatch::new(TimedVerb::Provision);
    // Until it finishes, the record says it did not: the settings are saved next, and
    // `apply` must not take a provisioning killed from here on for one that went through.
    if loaded.state.is_some() {
        update_fireclaw_state(&loaded.paths, |state| {
            state.last_provisioning = Some(watch.finish(false));
        })?;
    }
    save(settings, args, &loaded, &update, output)?;

    let waits = Waits::from(&args.waits);
    cover_if_made_by_020(settings, &loaded, services)?;
    let result = provision_and_gate(&loaded, &update, args, waits, services, &mut watch, output)
        .map_err(|error| explain_unreachable(settings, &loaded, services, error));
    // Kept for `status` whether it worked or not; an instance made by 0.2.0 has no
    // fireclaw.json to keep it in.
    let run = watch.finish(result.is_ok());
    if loaded.state.is_some() {
        update_fireclaw_state(&loaded.paths, |state| {
            state.last_provisioning = Some(run.clone());
        })?;
    }
    let health = result?;
    report_healthy(&loaded, services, &health, &run, args.json, output)
}

/// SSH (booting the VM first when it is not running), the guest's provisioning, the proxy
/// and both health gates, each timed in `watch`.
fn provision_and_gate(
    loaded: &Loaded,
    update: &ProvisionUpdate,
    args: &ProvisionArgs,
    waits: Waits,
    services: &dyn ServiceManager,
    watch: &mut Stopwatch,
    output: &mut Output<'_>,
) -> Result<(Health, Health)> {
    let booting = !unit_state(services, &loaded.units.vm)?.is_active();
    watch.time(if booting { STEP_BOOT } else { "SSH" }, || {
        ensure_vm_running(loaded, services, output)?;
        await_ssh(loaded, services, &loaded.ssh, waits.ssh, output)
    })?;
    let pull = args
        .openclaw_pull
        .or_else(|| loaded.state.as_ref().map(|state| state.pull_policy()))
        .unwrap_or_default();
    provision(
        loaded,
        &loaded.ssh,
        &update.vars.render(),
        pull,
        watch,
        output,
    )?;
    crash_point("provision:guest-done");
    if loaded.state.is_some() {
        set_phase(&loaded.paths, Phase::Provisioned)?;
    }
    watch.time(STEP_HEALTH, || {
        start_proxy(loaded, services, output)?;
        await_health(loaded, &loaded.ssh, waits.health, output)
    })
}

/// Everything is validated before anything is written: a rejected run changes nothing.
fn validated_update(
    settings: &Settings,
    args: &ProvisionArgs,
    loaded: &Loaded,
) -> Result<ProvisionUpdate> {
    let path = &loaded.paths.vars;
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let vars = VarsFile::parse(&text).with_context(|| format!("read {}", path.display()))?;
    let update = settings.resolve_provision(args, &loaded.env, &vars)?;
    if args.openclaw_pull.is_some() && loaded.state.is_none() {
        bail!(
            "instance '{}' was made by fireclaw 0.2.0 and has no fireclaw.json to keep a pull policy in; run fireclaw adopt {} first",
            loaded.id,
            loaded.id
        );
    }
    if args.allow_private_egress.is_some() && loaded.state.is_none() {
        bail!(
            "instance '{}' was made by fireclaw 0.2.0 and has no fireclaw.json to keep a private-egress allowlist in; its guest gets the default policy (the host-wide allowlist still applies)",
            loaded.id
        );
    }
    Ok(update)
}

/// Saves the new config, and applies a changed allowlist to a running VM at once (a stopped
/// one gets it at its next start).
fn save(
    settings: &Settings,
    args: &ProvisionArgs,
    loaded: &Loaded,
    update: &ProvisionUpdate,
    output: &mut Output<'_>,
) -> Result<()> {
    write_atomic(&loaded.paths.env, update.env.render().as_bytes(), 0o600)?;
    write_atomic(&loaded.paths.vars, update.vars.render().as_bytes(), 0o600)?;
    crash_point("provision:saved");
    if let Some(pull) = args.openclaw_pull {
        update_fireclaw_state(&loaded.paths, |state| state.openclaw_pull = Some(pull))?;
    }
    if let Some(allow) = &args.allow_private_egress {
        update_fireclaw_state(&loaded.paths, |state| {
            state.allow_private_egress = allow.networks().to_vec();
        })?;
        for note in reapply_if_present(settings)? {
            output.warn(&note);
        }
    }
    Ok(())
}
