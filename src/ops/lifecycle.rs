//! Bringing an instance up and down, the steps `setup`, `start`, `restart`, `provision` and
//! `stop` share: start the VM unit, wait for SSH (giving up at once when the VM unit fails),
//! provision the guest, start the gateway service and the proxy, gate on both health checks;
//! and the stop order proxy → guest service → VM → disable. Each step reports progress through
//! `Output` and drives the host only through `ServiceManager` and the guest only through
//! `GuestShell`, so unit tests run them against recording fakes.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use super::instance::Loaded;
use super::timing::Stopwatch;
use crate::cli::WaitArgs;
use crate::faults::crash_point;
use crate::guest::health::{Health, guest_health, proxy_health};
use crate::guest::provision::provision_guest;
use crate::guest::ssh::{GuestShell, SshError, sudo_command};
use crate::host::systemd::{ServiceManager, UnitState};
use crate::host::{interrupt, probe};
use crate::instance::layout::{UnitNames, guest_answered_text};
use crate::instance::timing::{guest_fact, guest_steps};
use crate::instance::values::{InstanceId, PullPolicy};
use crate::output::Output;
use crate::store::write_atomic;

/// Pause between tries of the SSH and health waits.
const POLL: Duration = Duration::from_secs(2);
/// How long `stop` tries the guest before leaving its service to the VM shutdown.
const GUEST_STOP_CONNECT: Duration = Duration::from_secs(3);
/// The step names every timed verb shares (`ops::timing`).
pub const STEP_BOOT: &str = "boot to SSH";
pub const STEP_HEALTH: &str = "health";
/// Journal lines quoted when the VM unit dies during the SSH wait.
const JOURNAL_LINES: u32 = 5;

/// The bounds of the two waits, from `--ssh-timeout` and `--health-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    pub ssh: Duration,
    pub health: Duration,
}

impl From<&WaitArgs> for Waits {
    fn from(args: &WaitArgs) -> Self {
        Self {
            ssh: Duration::from_secs(args.ssh_timeout),
            health: Duration::from_secs(args.health_timeout),
        }
    }
}

/// The VM unit stopped, failed or restarted while SSH was awaited. Says only what happened:
/// what to do depends on who waited (a rolled-back setup's instance is gone).
#[derive(Debug, thiserror::Error)]
#[error("the VM of instance '{id}' {} while waiting for SSH", self.what())]
pub struct VmGone {
    pub id: InstanceId,
    pub active: String,
    pub sub: String,
    pub restarts: u32,
    /// The VM unit's last journal lines.
    pub journal: Vec<String>,
}

impl VmGone {
    fn what(&self) -> String {
        match self.active.as_str() {
            "failed" => "failed".to_owned(),
            "inactive" => "stopped".to_owned(),
            _ => format!(
                "is restarting: its VMM exited and systemd starts it again{}",
                match self.restarts {
                    0 => String::new(),
                    1 => " (1 restart so far)".to_owned(),
                    count => format!(" ({count} restarts so far)"),
                }
            ),
        }
    }
}

/// SSH did not answer before the deadline.
#[derive(Debug, thiserror::Error)]
#[error("SSH to instance '{id}' did not answer within {secs}s")]
pub struct SshTimeout {
    pub id: InstanceId,
    pub secs: u64,
    #[source]
    pub last: SshError,
}

/// The health gate's deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("instance '{id}' is not healthy after {secs}s: guest {guest}, proxy {proxy}")]
pub struct Unhealthy {
    pub id: InstanceId,
    pub secs: u64,
    pub guest: String,
    pub proxy: String,
}

/// When SSH never answered a kept instance's VM (`start`, `provision`): what the VMM and the
/// guest said, the state the VM is left in and what to do next, under the error. Any other
/// error passes as it is.
pub fn explain_unreachable(
    settings: &crate::settings::Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
    error: anyhow::Error,
) -> anyhow::Error {
    let unreachable = error.chain().any(|cause| {
        cause.downcast_ref::<SshTimeout>().is_some() || cause.downcast_ref::<VmGone>().is_some()
    });
    if !unreachable {
        return error;
    }
    let id = &loaded.id;
    let mut lines = super::evidence::read(settings, id).lines();
    if let Some(gone) = error.chain().find_map(|c| c.downcast_ref::<VmGone>())
        && !gone.journal.is_empty()
    {
        lines.push(format!(
            "its VM unit {}'s journal ended with:",
            loaded.units.vm
        ));
        lines.extend(gone.journal.iter().map(|line| format!("  {line}")));
    }
    let state = unit_state(services, &loaded.units.vm).ok();
    lines.push(match state {
        Some(state) if state.is_active() || state.sub == "auto-restart" => format!(
            "its VM stays up: the unit is enabled and systemd starts the VM again whenever it exits ({} restarts so far); stop it with: fireclaw stop {id}",
            state.restarts
        ),
        _ => format!(
            "its VM is not running; start it again with: fireclaw start {id}"
        ),
    });
    lines.push(format!(
        "see the whole console with: fireclaw logs {id} console; once the cause is fixed: fireclaw provision {id}"
    ));
    crate::output::Detailed::wrap(format!("instance '{id}' is kept"), lines, error)
}

/// One unit's state, or an error when systemd reports nothing for it.
pub fn unit_state(services: &dyn ServiceManager, unit: &str) -> Result<UnitState> {
    services
        .states(&[unit])?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("systemd reported nothing for {unit}"))
}

pub fn progress(output: &mut Output<'_>, id: &InstanceId, step: &str) {
    output.progress(&format!("{id}: {step}"));
}

/// Waits until SSH answers. Gives up at once, with the unit's last journal lines, when the VM
/// unit is failed or inactive or restarts. A host key mismatch is retried until the deadline
/// (the base image may show its own keys before cloud-init installs the pinned one) and
/// reported only if it persists.
pub fn wait_for_ssh(
    id: &InstanceId,
    units: &UnitNames,
    services: &dyn ServiceManager,
    guest: &dyn GuestShell,
    timeout: Duration,
    output: &mut Output<'_>,
) -> Result<()> {
    let unit = units.vm.as_str();
    let started = Instant::now();
    // Said at once, with its bound: the first probe alone may take seconds.
    output.tick(&format!(
        "{id}: waiting for SSH (0s of {}s)",
        timeout.as_secs()
    ));
    let restarts = unit_state(services, unit)?.restarts;
    let last = loop {
        // A Ctrl-C ends the wait between probes; the caller decides what that means.
        interrupt::check()?;
        let error = match guest.probe() {
            Ok(()) => {
                output.wait_done(&format!(
                    "{id}: SSH answered after {}s",
                    started.elapsed().as_secs()
                ));
                return Ok(());
            }
            Err(error) => error,
        };
        let state = unit_state(services, unit)?;
        let gone = matches!(state.active.as_str(), "failed" | "inactive")
            || state.sub == "auto-restart"
            || state.restarts > restarts;
        if gone {
            let journal = services.journal_tail(unit, JOURNAL_LINES);
            return Err(VmGone {
                id: id.clone(),
                active: state.active,
                sub: state.sub,
                restarts: state.restarts,
                journal: journal.lines().map(str::to_owned).collect(),
            }
            .into());
        }
        if started.elapsed() + POLL > timeout {
            break error;
        }
        pause(output, || {
            format!(
                "{id}: waiting for SSH ({}s of {}s)",
                started.elapsed().as_secs(),
                timeout.as_secs()
            )
        });
    };
    match last {
        error @ SshError::HostKeyMismatch { .. } => Err(error.into()),
        last => Err(SshTimeout {
            id: id.clone(),
            secs: timeout.as_secs(),
            last,
        }
        .into()),
    }
}

/// Both gates: the guest's own health check and the proxy. Returns both results once both
/// pass; fails with both results at the deadline.
pub fn health_gate(
    loaded: &Loaded,
    guest: &dyn GuestShell,
    timeout: Duration,
    output: &mut Output<'_>,
) -> Result<(Health, Health)> {
    let started = Instant::now();
    output.tick(&format!(
        "{}: waiting for health (0s of {}s)",
        loaded.id,
        timeout.as_secs()
    ));
    loop {
        interrupt::check()?;
        let guest_result = guest_health(guest, loaded.id.as_str())?;
        let proxy = proxy_health(loaded.port, Duration::from_secs(5));
        if guest_result.is_up() && proxy.is_up() {
            output.wait_done(&format!(
                "{}: healthy after {}s",
                loaded.id,
                started.elapsed().as_secs()
            ));
            return Ok((guest_result, proxy));
        }
        if started.elapsed() + POLL > timeout {
            let describe = |h: &Health| match h {
                Health::Down(why) => format!("down ({why})"),
                other => other.label().to_owned(),
            };
            return Err(Unhealthy {
                id: loaded.id.clone(),
                secs: timeout.as_secs(),
                guest: describe(&guest_result),
                proxy: describe(&proxy),
            }
            .into());
        }
        pause(output, || {
            format!(
                "{}: waiting for health ({}s of {}s)",
                loaded.id,
                started.elapsed().as_secs(),
                timeout.as_secs()
            )
        });
    }
}

/// The pause between two tries of a wait, in short slices, each giving the progress line its
/// chance: off a terminal a wait's line then comes every 10 s as said, not whenever a try
/// happens to end.
fn pause(output: &mut Output<'_>, text: impl Fn() -> String) {
    const SLICE: Duration = Duration::from_millis(250);
    let until = Instant::now() + POLL;
    loop {
        output.tick(&text());
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(SLICE));
    }
}

/// The summary as JSON, for `--json` of setup, provision and start: what a script needs to
/// reach the instance, and how long each step took.
pub fn summary_json(
    loaded: &Loaded,
    health: &(Health, Health),
    run: &crate::instance::timing::RunTimes,
) -> serde_json::Value {
    serde_json::json!({
        "id": loaded.id.as_str(),
        "healthy": true,
        "ip": loaded.ssh.ip.to_string(),
        "port": loaded.port,
        "proxy": format!("http://127.0.0.1:{}/", loaded.port),
        "health": { "guest": health.0.label(), "proxy": health.1.label() },
        "units": { "vm": loaded.units.vm, "proxy": loaded.units.proxy },
        "token_command": format!("sudo fireclaw token {}", loaded.id),
        "verb": run.verb.as_str(),
        "times": super::timing::times_json(run),
    })
}

/// The end of a healthy setup, provision, start or resume: the run's times into the guest's
/// journal, then the summary as JSON or as lines (with the total and the slowest steps).
pub fn report_healthy(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    health: &(Health, Health),
    run: &crate::instance::timing::RunTimes,
    json: bool,
    output: &mut Output<'_>,
) -> Result<()> {
    super::timing::note_in_guest(&loaded.ssh, run);
    if json {
        output.line(&serde_json::to_string_pretty(&summary_json(
            loaded, health, run,
        ))?);
    } else {
        print_summary(loaded, services, health, output);
        output.line(&format!("  took        {}", run_line(run)));
    }
    Ok(())
}

/// `312.4 s (boot to SSH 52.1 s, openclaw doctor 120.3 s, gateway service 3.0 s)`: the total
/// and the three slowest steps.
fn run_line(run: &crate::instance::timing::RunTimes) -> String {
    use crate::instance::timing::seconds;
    let mut slowest: Vec<&crate::instance::timing::StepTime> = run.steps.iter().collect();
    slowest.sort_by_key(|step| std::cmp::Reverse(step.ms));
    let named: Vec<String> = slowest
        .iter()
        .take(3)
        .map(|step| format!("{} {}", step.name, seconds(step.ms)))
        .collect();
    if named.is_empty() {
        seconds(run.total_ms)
    } else {
        format!("{} ({})", seconds(run.total_ms), named.join(", "))
    }
}

/// The summary printed after a successful setup, provision or start.
pub fn print_summary(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    health: &(Health, Health),
    output: &mut Output<'_>,
) {
    let states = services
        .states(&[loaded.units.vm.as_str(), loaded.units.proxy.as_str()])
        .unwrap_or_default();
    let state_of = |i: usize| {
        states
            .get(i)
            .map(|s| format!("{} ({})", s.active, s.file))
            .unwrap_or_else(|| "unknown".into())
    };
    output.line(&format!("Instance {} is healthy.", loaded.id));
    output.line(&format!("  VM IP       {}", loaded.ssh.ip));
    output.line(&format!("  proxy       http://127.0.0.1:{}/", loaded.port));
    output.line(&format!(
        "  health      guest {}, proxy {}",
        health.0.label(),
        health.1.label()
    ));
    output.line(&format!(
        "  VM unit     {} {}",
        loaded.units.vm,
        state_of(0)
    ));
    output.line(&format!(
        "  proxy unit  {} {}",
        loaded.units.proxy,
        state_of(1)
    ));
    output.line(&format!("  token       sudo fireclaw token {}", loaded.id));
}

/// Starts the VM unit from a clean slate (a failed unit's state is reset first).
pub fn start_vm(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let vm = loaded.units.vm.as_str();
    services.reset_failed(&[vm])?;
    progress(output, &loaded.id, "starting the VM");
    services.enable_now(&[vm])?;
    Ok(())
}

/// Starts the VM unit unless it is already active.
pub fn ensure_vm_running(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    if unit_state(services, &loaded.units.vm)?.is_active() {
        return Ok(());
    }
    start_vm(loaded, services, output)
}

/// Before a session with the guest (`shell`, `logs guest`): the VM must be running and its
/// guest answer SSH, or the error says which of the two is missing and what to run, instead
/// of ssh's bare "No route to host". A guest slow to answer is announced, not waited on in
/// silence.
pub fn ensure_reachable(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let id = &loaded.id;
    loaded.ensure_not_suspended()?;
    let state = unit_state(services, &loaded.units.vm)?;
    if !state.is_active() {
        return Err(anyhow!(
            "instance '{id}' is not running (its VM unit is {} {}); start it with: fireclaw start {id}",
            state.active,
            state.sub
        ));
    }
    let target = loaded.quick_ssh(Duration::from_secs(3));
    output
        .announce_if_slow(
            &format!("{id}: waiting for the guest's SSH (up to 3s)"),
            || target.probe(),
        )
        .map_err(|error| {
            anyhow!(
                "instance '{id}' is running but its guest does not answer SSH ({}); see: fireclaw status {id}, fireclaw logs {id} console",
                crate::output::error_chain(&error)
            )
        })
}

/// The SSH wait with its progress line.
pub fn await_ssh(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    guest: &dyn GuestShell,
    timeout: Duration,
    output: &mut Output<'_>,
) -> Result<()> {
    progress(output, &loaded.id, "waiting for SSH");
    wait_for_ssh(&loaded.id, &loaded.units, services, guest, timeout, output)?;
    // The VMM whose guest answered: a later stop of this very process may wait for a clean
    // shutdown (see `vm-shutdown`). A failure to note it only costs that wait.
    if let Ok(state) = unit_state(services, &loaded.units.vm)
        && state.main_pid != 0
    {
        let _ = write_atomic(
            &loaded.paths.guest_answered,
            guest_answered_text(&probe::boot_id(), state.main_pid).as_bytes(),
            0o600,
        );
    }
    Ok(())
}

/// What one provisioning run reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// How the OpenClaw config was written: `patch` (one `openclaw config patch`) or `set` (a
    /// `config set` per key, for releases without `config patch`); `None` from a script that
    /// does not say (an older fireclaw's, never here).
    pub config_path: Option<String>,
}

/// Runs guest provisioning with the instance's `provision.vars` and its pull policy, which
/// travels with them on stdin but is never saved in `provision.vars` (0.2.0's script refuses
/// keys it does not know). The guest's step times go into `watch`, also those of a run that
/// failed part way.
pub fn provision(
    loaded: &Loaded,
    guest: &dyn GuestShell,
    vars: &str,
    pull: PullPolicy,
    watch: &mut Stopwatch,
    output: &mut Output<'_>,
) -> Result<Provisioned> {
    progress(output, &loaded.id, "provisioning the guest");
    let mut input = vars.to_owned();
    if !input.is_empty() && !input.ends_with('\n') {
        input.push('\n');
    }
    input.push_str(&format!("OPENCLAW_PULL={pull}\n"));
    match provision_guest(guest, &input) {
        Ok(stdout) => {
            watch.extend(guest_steps(&stdout));
            Ok(Provisioned {
                config_path: guest_fact(&stdout, "config_path").map(str::to_owned),
            })
        }
        Err(error) => {
            if let SshError::RemoteFailed { stdout, .. } = &error {
                watch.extend(guest_steps(stdout));
            }
            Err(error.into())
        }
    }
}

/// Starts the localhost proxy unit.
pub fn start_proxy(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    progress(output, &loaded.id, "starting the proxy");
    services.enable_now(&[loaded.units.proxy.as_str()])?;
    Ok(())
}

/// The health gate with its progress line.
pub fn await_health(
    loaded: &Loaded,
    guest: &dyn GuestShell,
    timeout: Duration,
    output: &mut Output<'_>,
) -> Result<(Health, Health)> {
    progress(output, &loaded.id, "waiting for health");
    health_gate(loaded, guest, timeout, output)
}

/// Brings a provisioned instance up without reprovisioning: VM, SSH, guest service, proxy,
/// health, each step timed in `watch`.
pub fn bring_up(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    guest: &dyn GuestShell,
    waits: Waits,
    watch: &mut Stopwatch,
    output: &mut Output<'_>,
) -> Result<(Health, Health)> {
    watch.time(STEP_BOOT, || {
        start_vm(loaded, services, output)?;
        await_ssh(loaded, services, guest, waits.ssh, output)
    })?;
    serve_and_gate(loaded, services, guest, waits.health, watch, output)
}

/// Once the guest answers SSH (after a boot or a resume): the gateway service, the proxy, and
/// both health gates.
pub fn serve_and_gate(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    guest: &dyn GuestShell,
    health_timeout: Duration,
    watch: &mut Stopwatch,
    output: &mut Output<'_>,
) -> Result<(Health, Health)> {
    watch.time("gateway service", || -> Result<()> {
        progress(output, &loaded.id, "starting the gateway service");
        guest.run(
            &sudo_command(&["systemctl", "enable", "--now", &loaded.units.guest]),
            b"",
        )?;
        start_proxy(loaded, services, output)
    })?;
    watch.time(STEP_HEALTH, || {
        await_health(loaded, guest, health_timeout, output)
    })
}

/// The guest shell `stop` uses: a short connection bound, since a guest that does not answer
/// quickly is shut down anyway.
pub fn stop_shell(loaded: &Loaded) -> crate::guest::ssh::SshTarget {
    loaded.quick_ssh(GUEST_STOP_CONNECT)
}

/// proxy → guest service (over SSH when the VM runs) → VM (clean shutdown) → disable both
/// units, so a stopped instance stays stopped across reboots. The proxy goes first so nobody
/// reaches a gateway that is going away; the guest service before the VM so the gateway
/// container stops cleanly even when the guest's shutdown would not wait for it.
pub fn stop(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    guest: &dyn GuestShell,
    output: &mut Output<'_>,
) -> Result<()> {
    let proxy = loaded.units.proxy.as_str();
    let vm = loaded.units.vm.as_str();
    progress(output, &loaded.id, "stopping the proxy");
    services.stop(&[proxy])?;
    interrupt::check()?;
    if unit_state(services, vm)?.is_active() {
        progress(output, &loaded.id, "stopping the gateway service");
        let guest_unit = &loaded.units.guest;
        if let Err(error) = guest.run(&sudo_command(&["systemctl", "stop", guest_unit]), b"") {
            output.warn(&format!(
                "could not stop {guest_unit} in the guest ({}); the VM shutdown stops it",
                crate::output::error_chain(&error)
            ));
        }
    }
    progress(
        output,
        &loaded.id,
        &format!(
            "shutting the VM down (a guest that came up gets up to {}s to shut down cleanly)",
            super::network::SHUTDOWN_WAIT.as_secs()
        ),
    );
    services.stop(&[vm])?;
    crash_point("stop:vm-stopped");
    services.disable(&[vm, proxy])?;
    services.reset_failed(&[vm, proxy])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::ssh::{HostKeyPolicy, SshTarget};
    use crate::instance::layout::StatePaths;
    use crate::instance::state::EnvFile;
    use crate::ops::fakes::{CallLog, FakeGuest, FakeServices};
    use crate::output::error_chain;

    fn loaded(port: u16) -> Loaded {
        let id: InstanceId = "t".parse().unwrap();
        let paths = StatePaths::new(std::path::Path::new("/nonexistent"), &id);
        Loaded {
            units: UnitNames::new(&id),
            env: EnvFile::parse("INSTANCE_ID=t\n").unwrap(),
            state: None,
            port,
            ssh: SshTarget {
                id: "t".into(),
                ip: std::net::Ipv4Addr::LOCALHOST,
                key: "/nonexistent/key".into(),
                known_hosts: paths.known_hosts.clone(),
                policy: HostKeyPolicy::Pinned,
                connect_timeout: Duration::from_secs(1),
            },
            paths,
            id,
        }
    }

    #[test]
    fn a_provisioning_that_fails_part_way_keeps_the_guest_steps_it_finished() {
        struct FailingGuest;
        impl GuestShell for FailingGuest {
            fn probe(&self) -> Result<(), SshError> {
                Ok(())
            }
            fn run(&self, remote: &str, _: &[u8]) -> Result<String, SshError> {
                if !remote.contains("/usr/local/sbin/fireclaw-provision")
                    || remote.contains("cat >")
                {
                    return Ok(String::new());
                }
                Err(SshError::RemoteFailed {
                    id: "t".into(),
                    command: remote.into(),
                    status: "exit status: 1".into(),
                    stderr: ": fireclaw-provision: error: docker pull failed".into(),
                    stdout: "fireclaw-step: cloud-init=4.2\nfireclaw-step: guest packages=0.1\n"
                        .into(),
                })
            }
        }
        let mut watch = Stopwatch::new(crate::instance::timing::TimedVerb::Setup);
        let (result, _) = quiet(|output| {
            provision(
                &loaded(1),
                &FailingGuest,
                "MODEL=openai/gpt-5.5",
                PullPolicy::Always,
                &mut watch,
                output,
            )
        });
        let error = result.unwrap_err();
        assert!(error_chain(error.as_ref()).ends_with("docker pull failed"));
        let run = watch.finish(false);
        assert_eq!(
            run.describe().split(": ").nth(1).unwrap(),
            "cloud-init 4.2 s, guest packages 0.1 s"
        );
    }

    #[test]
    fn provisioning_sends_the_pull_policy_after_the_vars_on_stdin_only() {
        let log = CallLog::default();
        let guest = FakeGuest::answering(&log);
        let mut watch = Stopwatch::new(crate::instance::timing::TimedVerb::Provision);
        let (result, _) = quiet(|output| {
            provision(
                &loaded(1),
                &guest,
                "MODEL=openai/gpt-5.5",
                PullPolicy::Missing,
                &mut watch,
                output,
            )
        });
        result.unwrap();
        let inputs = guest.inputs.lock().unwrap().clone();
        assert_eq!(inputs.len(), 2, "{inputs:?}");
        assert_eq!(inputs[1], "MODEL=openai/gpt-5.5\nOPENCLAW_PULL=missing\n");
        let commands = log.calls();
        assert!(
            commands.iter().all(|c| !c.contains("OPENCLAW_PULL")),
            "the policy is on no command line: {commands:?}"
        );
    }

    /// A loopback port nothing listens on (bound, then released).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn quiet<T>(run: impl FnOnce(&mut Output<'_>) -> T) -> (T, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = {
            let mut output = Output::new(&mut out, &mut err);
            run(&mut output)
        };
        (result, String::from_utf8(err).unwrap())
    }

    #[test]
    fn stop_goes_proxy_then_guest_service_then_vm_then_disables_both() {
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        let instance = loaded(closed_port());
        services.set(&instance.units.vm, "active", "running", 0);
        services.set(&instance.units.proxy, "active", "running", 0);
        let guest = FakeGuest::answering(&log);
        let (result, _) = quiet(|output| stop(&instance, &services, &guest, output));
        result.unwrap();
        assert_eq!(
            log.calls(),
            [
                "systemctl stop vmdemo-proxy-t.service",
                "ssh sudo systemctl stop openclaw-t.service",
                "systemctl stop firecracker-vmdemo-t.service",
                "systemctl disable firecracker-vmdemo-t.service vmdemo-proxy-t.service",
                "systemctl reset-failed firecracker-vmdemo-t.service vmdemo-proxy-t.service",
            ]
        );
    }

    #[test]
    fn stop_of_a_silent_guest_warns_and_still_shuts_the_vm_down() {
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        let instance = loaded(closed_port());
        services.set(&instance.units.vm, "active", "running", 0);
        let guest = FakeGuest::silent(&log);
        let (result, stderr) = quiet(|output| stop(&instance, &services, &guest, output));
        result.unwrap();
        assert!(
            stderr.contains("warning: could not stop openclaw-t.service in the guest"),
            "{stderr}"
        );
        assert!(
            log.calls()
                .contains(&"systemctl stop firecracker-vmdemo-t.service".to_owned())
        );
        assert!(
            log.calls()
                .last()
                .unwrap()
                .starts_with("systemctl reset-failed")
        );
    }

    #[test]
    fn stop_of_a_stopped_vm_does_not_try_the_guest() {
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        let instance = loaded(closed_port());
        let guest = FakeGuest::answering(&log);
        let (result, _) = quiet(|output| stop(&instance, &services, &guest, output));
        result.unwrap();
        assert!(log.calls().iter().all(|call| !call.starts_with("ssh")));
    }

    #[test]
    fn the_ssh_wait_gives_up_at_once_with_the_journal_when_the_vm_unit_fails() {
        let log = CallLog::default();
        let mut services = FakeServices::new(&log);
        services.journal = "tap tt2 is busy".into();
        let instance = loaded(closed_port());
        services.set(&instance.units.vm, "failed", "failed", 0);
        let guest = FakeGuest::silent(&log);
        let (result, _) = quiet(|output| {
            wait_for_ssh(
                &instance.id,
                &instance.units,
                &services,
                &guest,
                Duration::from_secs(600),
                output,
            )
        });
        let error = result.unwrap_err();
        let gone = error.downcast_ref::<VmGone>().expect("VmGone");
        assert_eq!(gone.active, "failed");
        assert_eq!(gone.journal, ["tap tt2 is busy"]);
        // What happened, without advice: who waited says what to do.
        assert_eq!(
            error_chain(error.as_ref()),
            "the VM of instance 't' failed while waiting for SSH"
        );
        // One probe, then the unit's state: no second try of a VM that is gone.
        assert_eq!(
            log.calls(),
            ["ssh probe", "journal firecracker-vmdemo-t.service"]
        );
    }

    #[test]
    fn the_ssh_wait_gives_up_when_the_vm_unit_restarted() {
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        let instance = loaded(closed_port());
        services.set(&instance.units.vm, "active", "running", 1);
        struct RestartingGuest<'a>(&'a FakeServices<'a>, String);
        impl GuestShell for RestartingGuest<'_> {
            fn probe(&self) -> Result<(), SshError> {
                // The VMM crashed and systemd restarted it while we waited.
                self.0.set(&self.1, "active", "running", 2);
                Err(SshError::Unreachable {
                    id: "t".into(),
                    ip: std::net::Ipv4Addr::LOCALHOST,
                    detail: "No route to host".into(),
                })
            }
            fn run(&self, _: &str, _: &[u8]) -> Result<String, SshError> {
                unreachable!("the wait only probes")
            }
        }
        let guest = RestartingGuest(&services, instance.units.vm.clone());
        let (result, _) = quiet(|output| {
            wait_for_ssh(
                &instance.id,
                &instance.units,
                &services,
                &guest,
                Duration::from_secs(600),
                output,
            )
        });
        assert_eq!(
            result.unwrap_err().downcast::<VmGone>().unwrap().restarts,
            2
        );
    }

    #[test]
    fn the_ssh_wait_reports_the_last_ssh_error_once_at_the_deadline() {
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        let instance = loaded(closed_port());
        services.set(&instance.units.vm, "active", "running", 0);
        let guest = FakeGuest::silent(&log);
        let (result, _) = quiet(|output| {
            wait_for_ssh(
                &instance.id,
                &instance.units,
                &services,
                &guest,
                Duration::ZERO,
                output,
            )
        });
        let line = error_chain(result.unwrap_err().as_ref());
        assert_eq!(
            line,
            "SSH to instance 't' did not answer within 0s: ssh to instance 't' (127.0.0.9) failed: Connection refused"
        );
    }

    #[test]
    fn bring_up_starts_vm_then_guest_service_then_proxy_and_gates_on_health() {
        let log = CallLog::default();
        let services = FakeServices::new(&log);
        let instance = loaded(closed_port());
        let guest = FakeGuest::answering(&log);
        let waits = Waits {
            ssh: Duration::from_secs(60),
            health: Duration::ZERO,
        };
        let mut watch = Stopwatch::new(crate::instance::timing::TimedVerb::Start);
        let (result, _) =
            quiet(|output| bring_up(&instance, &services, &guest, waits, &mut watch, output));
        // Every step is timed, the failed gate too.
        let names: Vec<String> = watch
            .finish(false)
            .steps
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["boot to SSH", "gateway service", "health"]);
        // Nothing listens on the proxy port, so the gate fails, naming both results.
        let error = result.unwrap_err();
        let unhealthy = error.downcast_ref::<Unhealthy>().expect("Unhealthy");
        assert_eq!(unhealthy.guest, "up");
        assert!(unhealthy.proxy.starts_with("down ("), "{}", unhealthy.proxy);
        assert_eq!(
            log.calls(),
            [
                "systemctl reset-failed firecracker-vmdemo-t.service",
                "systemctl enable-now firecracker-vmdemo-t.service",
                "ssh probe",
                "ssh sudo systemctl enable --now openclaw-t.service",
                "systemctl enable-now vmdemo-proxy-t.service",
                "ssh sudo /usr/local/bin/openclaw-health-t.sh",
            ]
        );
    }
}
