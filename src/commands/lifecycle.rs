//! The lifecycle of an existing instance: loading it, waiting for its SSH and its health, and
//! the verbs `start`, `stop`, `restart`, `provision`, `destroy` and `shell`, each holding the
//! instance's lock so two commands on one instance never interleave. The order of each verb's
//! steps is the one fireclaw 0.2.0 documents.

use std::io::{BufRead, IsTerminal};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::install::teardown_instance;
use crate::cli::{DestroyArgs, ProvisionArgs, ShellArgs, WaitArgs};
use crate::faults::crash_point;
use crate::guest::health::{Health, guest_health, proxy_health};
use crate::guest::provision::provision_guest;
use crate::guest::ssh::{HostKeyPolicy, SshError, SshTarget, sudo_command};
use crate::host::process::run;
use crate::host::systemd::{ServiceManager, UnitState};
use crate::instance::layout::{AssetPaths, UnitNames};
use crate::instance::state::{EnvFile, FireclawState, Phase, VarsFile};
use crate::instance::store::{
    HeldLock, StatePaths, lock_instance, read_env, read_fireclaw_state, set_phase,
    update_fireclaw_state, write_atomic,
};
use crate::instance::values::InstanceId;
use crate::output::Output;
use crate::settings::Settings;

/// Pause between tries of the SSH and health waits.
const POLL: Duration = Duration::from_secs(2);

/// An instance as found on disk.
pub struct Loaded {
    pub id: InstanceId,
    pub paths: StatePaths,
    pub env: EnvFile,
    pub state: Option<FireclawState>,
    pub units: UnitNames,
    pub port: u16,
    pub ssh: SshTarget,
}

impl Loaded {
    pub fn guest_unit(&self) -> String {
        format!("openclaw-{}.service", self.id)
    }
}

/// Reads an instance's state; a missing one is "no instance".
pub fn load(settings: &Settings, id: &InstanceId) -> Result<Loaded> {
    let paths = StatePaths::new(&settings.paths.state_root, id);
    if !paths.dir.exists() {
        bail!(
            "no instance '{id}' ({} does not exist)",
            paths.dir.display()
        );
    }
    let env = read_env(&paths)?;
    let state = read_fireclaw_state(&paths)?;
    let ip = env.vm_ip()?;
    let port = env.host_port()?;
    let key = match env.get("SSH_KEY_PATH").trim() {
        "" => settings.ssh_key_path.clone(),
        saved => PathBuf::from(saved),
    };
    // fireclaw pinned its own instances' keys before first boot; 0.2.0 pinned on first use.
    let policy = if state.is_some() {
        HostKeyPolicy::Pinned
    } else {
        HostKeyPolicy::TrustOnFirstUse
    };
    let ssh = SshTarget {
        id: id.to_string(),
        ip,
        key,
        known_hosts: paths.known_hosts.clone(),
        policy,
        connect_timeout: Duration::from_secs(5),
    };
    Ok(Loaded {
        id: id.clone(),
        units: UnitNames::new(id),
        paths,
        env,
        state,
        port,
        ssh,
    })
}

pub fn lock(settings: &Settings, id: &InstanceId) -> Result<HeldLock> {
    Ok(lock_instance(
        &settings.paths.state_root,
        id,
        settings.lock_wait,
    )?)
}

fn journal_tail(unit: &str) -> String {
    match run(
        "journalctl",
        &["-u", unit, "-n", "5", "--no-pager", "-o", "cat"],
    ) {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" / "),
        Err(_) => String::new(),
    }
}

fn unit_state(services: &dyn ServiceManager, unit: &str) -> Result<UnitState> {
    services
        .states(&[unit])?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("systemd reported nothing for {unit}"))
}

/// Waits until SSH answers. Gives up at once, with the unit's last journal lines, when the VM
/// unit is failed or inactive or restarts. A host key mismatch is retried until the deadline
/// (the base image may show its own keys before cloud-init installs the pinned one) and
/// reported only if it persists.
pub fn wait_for_ssh(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    timeout: Duration,
    output: &mut Output<'_>,
) -> Result<()> {
    let unit = &loaded.units.vm;
    let started = Instant::now();
    let restarts = unit_state(services, unit)?.restarts;
    let last = loop {
        let error = match loaded.ssh.probe() {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let state = unit_state(services, unit)?;
        let gone = matches!(state.active.as_str(), "failed" | "inactive")
            || state.sub == "auto-restart"
            || state.restarts > restarts;
        if gone {
            let journal = journal_tail(unit);
            bail!(
                "the VM of instance '{}' is not running ({} {}, {} restarts) while waiting for SSH; start it with: fireclaw start {}{}",
                loaded.id,
                state.active,
                state.sub,
                state.restarts,
                loaded.id,
                if journal.is_empty() {
                    String::new()
                } else {
                    format!("; {unit}: {journal}")
                }
            );
        }
        if started.elapsed() + POLL > timeout {
            break error;
        }
        output.tick(&format!(
            "{}: waiting for SSH ({}s of {}s)",
            loaded.id,
            started.elapsed().as_secs(),
            timeout.as_secs()
        ));
        std::thread::sleep(POLL);
    };
    match last {
        error @ SshError::HostKeyMismatch { .. } => Err(error.into()),
        error => Err(anyhow!(error).context(format!(
            "SSH to instance '{}' did not answer within {}s",
            loaded.id,
            timeout.as_secs()
        ))),
    }
}

/// Both gates: the guest's own health check and the proxy. Returns both results once both
/// pass; fails with both results at the deadline.
pub fn health_gate(
    loaded: &Loaded,
    timeout: Duration,
    output: &mut Output<'_>,
) -> Result<(Health, Health)> {
    let started = Instant::now();
    loop {
        let guest = guest_health(&loaded.ssh, loaded.id.as_str())?;
        let proxy = proxy_health(loaded.port, Duration::from_secs(5));
        if guest.is_up() && proxy.is_up() {
            return Ok((guest, proxy));
        }
        if started.elapsed() + POLL > timeout {
            let describe = |h: &Health| match h {
                Health::Down(why) => format!("down ({why})"),
                other => other.label().to_owned(),
            };
            bail!(
                "instance '{}' is not healthy after {}s: guest {}, proxy {}",
                loaded.id,
                timeout.as_secs(),
                describe(&guest),
                describe(&proxy)
            );
        }
        output.tick(&format!(
            "{}: waiting for health ({}s of {}s)",
            loaded.id,
            started.elapsed().as_secs(),
            timeout.as_secs()
        ));
        std::thread::sleep(POLL);
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

fn waits(args: &WaitArgs) -> (Duration, Duration) {
    (
        Duration::from_secs(args.ssh_timeout),
        Duration::from_secs(args.health_timeout),
    )
}

fn progress(output: &mut Output<'_>, id: &InstanceId, step: &str) {
    output.progress(&format!("{id}: {step}"));
}

/// Brings a provisioned instance up without reprovisioning: VM, SSH, guest service, proxy,
/// health.
pub fn bring_up(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    wait: &WaitArgs,
    output: &mut Output<'_>,
) -> Result<(Health, Health)> {
    let (ssh_timeout, health_timeout) = waits(wait);
    let vm = loaded.units.vm.as_str();
    services.reset_failed(&[vm])?;
    progress(output, &loaded.id, "starting the VM");
    services.enable_now(&[vm])?;
    progress(output, &loaded.id, "waiting for SSH");
    wait_for_ssh(loaded, services, ssh_timeout, output)?;
    progress(output, &loaded.id, "starting the gateway service");
    let guest_unit = loaded.guest_unit();
    loaded.ssh.run(
        &sudo_command(&["systemctl", "enable", "--now", &guest_unit]),
        b"",
    )?;
    progress(output, &loaded.id, "starting the proxy");
    services.enable_now(&[loaded.units.proxy.as_str()])?;
    progress(output, &loaded.id, "waiting for health");
    health_gate(loaded, health_timeout, output)
}

/// Refuses to bring up an instance whose setup never got through provisioning.
fn ensure_provisioned(loaded: &Loaded) -> Result<()> {
    if let Some(state) = &loaded.state
        && state.phase < Phase::Provisioned
    {
        let id = &loaded.id;
        bail!(
            "instance '{id}' was never provisioned (phase {}); finish it with: fireclaw provision {id}, or remove it with: fireclaw destroy {id} --force",
            state.phase.as_str()
        );
    }
    Ok(())
}

/// A VM unit made by 0.2.0 gets the drop-in that applies the guest network policy before it
/// starts (fireclaw's own units run `vm-net-up`, which applies it).
fn cover_if_made_by_020(
    settings: &Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
) -> Result<()> {
    if is_020_unit(&loaded.units.vm_path(&settings.paths.unit_dir)) {
        super::egress::cover_legacy_units(settings, services)?;
    }
    Ok(())
}

pub fn start(
    settings: &Settings,
    id: &InstanceId,
    wait: &WaitArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let _lock = lock(settings, id)?;
    let loaded = load(settings, id)?;
    ensure_provisioned(&loaded)?;
    cover_if_made_by_020(settings, &loaded, services)?;
    let health = bring_up(&loaded, services, wait, output)?;
    print_summary(&loaded, services, &health, output);
    Ok(())
}

/// proxy → guest service (over SSH when reachable) → VM (clean shutdown) → disable both units.
pub fn stop_locked(
    loaded: &Loaded,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let proxy = loaded.units.proxy.as_str();
    let vm = loaded.units.vm.as_str();
    progress(output, &loaded.id, "stopping the proxy");
    services.stop(&[proxy])?;
    let vm_running = unit_state(services, vm)?.is_active();
    if vm_running {
        progress(output, &loaded.id, "stopping the gateway service");
        let mut quick = loaded.ssh.clone();
        quick.connect_timeout = Duration::from_secs(3);
        let guest_unit = loaded.guest_unit();
        if let Err(error) = quick.run(&sudo_command(&["systemctl", "stop", &guest_unit]), b"") {
            output.warn(&format!(
                "could not stop {guest_unit} in the guest ({error}); the VM shutdown stops it"
            ));
        }
    }
    progress(output, &loaded.id, "shutting the VM down");
    services.stop(&[vm])?;
    crash_point("stop:vm-stopped");
    services.disable(&[vm, proxy])?;
    services.reset_failed(&[vm, proxy])?;
    Ok(())
}

pub fn stop(
    settings: &Settings,
    id: &InstanceId,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let _lock = lock(settings, id)?;
    let loaded = load(settings, id)?;
    stop_locked(&loaded, services, output)?;
    output.line(&format!(
        "Instance {id} is stopped and stays stopped across reboots; start it with: fireclaw start {id}"
    ));
    Ok(())
}

pub fn restart(
    settings: &Settings,
    id: &InstanceId,
    wait: &WaitArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let _lock = lock(settings, id)?;
    let loaded = load(settings, id)?;
    ensure_provisioned(&loaded)?;
    cover_if_made_by_020(settings, &loaded, services)?;
    stop_locked(&loaded, services, output)?;
    let health = bring_up(&loaded, services, wait, output)?;
    print_summary(&loaded, services, &health, output);
    Ok(())
}

/// Updates the saved config and reruns guest provisioning on the existing VM.
pub fn provision(
    settings: &Settings,
    args: &ProvisionArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let id = &args.id;
    let _lock = lock(settings, id)?;
    let loaded = load(settings, id)?;
    let vars_text = std::fs::read_to_string(&loaded.paths.vars)
        .with_context(|| format!("read {}", loaded.paths.vars.display()))?;
    let vars = VarsFile::parse(&vars_text)
        .with_context(|| format!("read {}", loaded.paths.vars.display()))?;
    // Everything is validated before anything is written: a rejected run changes nothing.
    let update = settings.resolve_provision(args, &loaded.env, &vars)?;
    if args.allow_private_egress.is_some() && loaded.state.is_none() {
        bail!(
            "instance '{id}' was made by fireclaw 0.2.0 and has no fireclaw.json to keep a private-egress allowlist in; its guest gets the default policy (the host-wide allowlist still applies)"
        );
    }
    write_atomic(&loaded.paths.env, update.env.render().as_bytes(), 0o600)?;
    write_atomic(&loaded.paths.vars, update.vars.render().as_bytes(), 0o600)?;
    crash_point("provision:saved");
    if let Some(allow) = &args.allow_private_egress {
        update_fireclaw_state(&loaded.paths, |state| {
            state.allow_private_egress = allow.networks().to_vec();
        })?;
        // A running VM gets the new allowlist now; a stopped one at its start below.
        for note in super::egress::reapply_if_present(settings)? {
            output.warn(&note);
        }
    }

    let (ssh_timeout, health_timeout) = waits(&args.waits);
    let vm = loaded.units.vm.as_str();
    cover_if_made_by_020(settings, &loaded, services)?;
    if !unit_state(services, vm)?.is_active() {
        progress(output, id, "starting the VM");
        services.reset_failed(&[vm])?;
        services.enable_now(&[vm])?;
    }
    progress(output, id, "waiting for SSH");
    wait_for_ssh(&loaded, services, ssh_timeout, output)?;
    progress(output, id, "provisioning the guest");
    provision_guest(&loaded.ssh, &update.vars.render())?;
    crash_point("provision:guest-done");
    if loaded.state.is_some() {
        set_phase(&loaded.paths, Phase::Provisioned)?;
    }
    progress(output, id, "starting the proxy");
    services.enable_now(&[loaded.units.proxy.as_str()])?;
    progress(output, id, "waiting for health");
    let health = health_gate(&loaded, health_timeout, output)?;
    print_summary(&loaded, services, &health, output);
    Ok(())
}

fn confirmed(id: &InstanceId, output: &mut Output<'_>) -> Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("destroy '{id}' needs confirmation on a terminal, or --force");
    }
    output.prompt(&format!("Destroy '{id}' and remove VM assets? [y/N] "));
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}

/// The tap an instance uses, from `.env` or, when that is unreadable, its Firecracker config.
fn tap_from_config(settings: &Settings, id: &InstanceId) -> Option<String> {
    let config = AssetPaths::new(&settings.paths.fc_root, id).vm_config;
    let text = std::fs::read_to_string(config).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("network-interfaces")?
        .get(0)?
        .get("host_dev_name")?
        .as_str()
        .map(str::to_owned)
}

pub fn destroy(
    settings: &Settings,
    args: &DestroyArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let id = &args.id;
    let state_dir = StatePaths::new(&settings.paths.state_root, id).dir;
    let assets_dir = AssetPaths::new(&settings.paths.fc_root, id).dir;
    let units = UnitNames::new(id);
    let anything = [
        state_dir.clone(),
        assets_dir.clone(),
        units.vm_path(&settings.paths.unit_dir),
        units.proxy_path(&settings.paths.unit_dir),
    ]
    .iter()
    .any(|p| p.symlink_metadata().is_ok());
    if !anything {
        bail!("no instance '{id}': no state, assets or units exist");
    }
    if !args.force && !confirmed(id, output)? {
        bail!("destroy of '{id}' cancelled; nothing was changed");
    }
    let _lock = lock(settings, id)?;
    let readable = read_env(&StatePaths::new(&settings.paths.state_root, id)).is_ok();
    if !readable && !args.force {
        bail!(
            "the state of instance '{id}' cannot be read; remove what is left with: fireclaw destroy {id} --force"
        );
    }
    let tap = tap_from_config(settings, id);
    teardown_instance(settings, id, None, services)?;
    // An instance whose .env was unreadable: its tap is still known from the VM config.
    if !readable && let Some(tap) = tap {
        crate::host::tap::remove_tap(&tap)?;
    }
    output.line(&format!("Instance {id} is destroyed."));
    Ok(())
}

/// `logs <id> [guest|host]`: follows the guest service's journal over the pinned SSH, or both
/// host units' journal. The process becomes ssh or journalctl, so Ctrl-C ends it cleanly.
pub fn logs(settings: &Settings, args: &crate::cli::LogsArgs) -> Result<()> {
    let loaded = load(settings, &args.id)?;
    let error = match args.source {
        crate::cli::LogSource::Host => std::process::Command::new("journalctl")
            .args([
                "-f",
                "-n",
                "100",
                "--no-hostname",
                "-u",
                &loaded.units.vm,
                "-u",
                &loaded.units.proxy,
            ])
            .exec(),
        crate::cli::LogSource::Guest => {
            let unit = loaded.guest_unit();
            loaded
                .ssh
                .interactive(Some(&sudo_command(&[
                    "journalctl",
                    "-f",
                    "-n",
                    "100",
                    "-u",
                    &unit,
                ])))
                .exec()
        }
    };
    Err(anyhow!(error).context("run the log follower"))
}

/// `shell <id>`: an interactive login, or one command whose output and exit status pass
/// through, exactly as with ssh (the process becomes ssh).
pub fn shell(settings: &Settings, args: &ShellArgs) -> Result<()> {
    let loaded = load(settings, &args.id)?;
    let remote = (!args.command.is_empty()).then(|| args.command.join(" "));
    let error = loaded.ssh.interactive(remote.as_deref()).exec();
    Err(anyhow!(error).context("run ssh"))
}

/// Whether the unit file at `path` was written by fireclaw 0.2.0 (its ExecStart is start-vm.sh).
pub fn is_020_unit(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .any(|l| l.starts_with("ExecStart=") && l.trim_end().ends_with("/start-vm.sh"))
        })
        .unwrap_or(false)
}

/// `adopt <id>`: an instance made by 0.2.0 gets fireclaw's units and wrapper scripts, rendered
/// from its saved state, after the old ones are copied to `<FC_ROOT>/<id>/backup-0.2.0/`. Its
/// state files stay as they are, so 0.2.0 can still read them. A running VM keeps running; the
/// new unit applies from its next start.
pub fn adopt(
    settings: &Settings,
    id: &InstanceId,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    use crate::render::artifacts::pinned_environment;
    use crate::render::units::{
        ProxyUnitConfig, VmUnitConfig, proxy_unit, start_script, stop_script, vm_unit,
    };
    let _lock = lock(settings, id)?;
    let loaded = load(settings, id)?;
    let unit_dir = &settings.paths.unit_dir;
    let vm_path = loaded.units.vm_path(unit_dir);
    let proxy_path = loaded.units.proxy_path(unit_dir);
    if !is_020_unit(&vm_path) {
        output.line(&format!(
            "Instance {id} already runs under fireclaw's units; nothing to do."
        ));
        return Ok(());
    }
    let fireclaw = std::env::current_exe().context("locate the fireclaw binary")?;
    let firecracker =
        crate::host::probe::which("firecracker").context("firecracker is not on PATH")?;
    let socat = crate::host::probe::which("socat").context("socat is not on PATH")?;
    for (what, path) in [
        ("fireclaw binary", &fireclaw),
        ("firecracker binary", &firecracker),
        ("socat binary", &socat),
    ] {
        crate::host::trust::check_trusted(what, path)?;
    }
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let backup = assets.dir.join("backup-0.2.0");
    crate::instance::store::ensure_private_dir(&backup)?;
    for file in [
        &vm_path,
        &proxy_path,
        &assets.start_script,
        &assets.stop_script,
    ] {
        if let (Ok(text), Some(name)) = (std::fs::read(file), file.file_name()) {
            write_atomic(&backup.join(name), &text, 0o600)?;
        }
    }
    let api_sock = loaded
        .env
        .api_sock()
        .unwrap_or_else(|| crate::settings::default_api_sock(&settings.paths.fc_root, id.as_str()));
    let vm = VmUnitConfig {
        id: id.to_string(),
        fireclaw,
        firecracker,
        api_sock,
        vm_config: assets.vm_config.clone(),
        console_log: assets.console_log.clone(),
        environment: pinned_environment(&settings.paths, &settings.network),
    };
    let proxy = ProxyUnitConfig {
        id: id.to_string(),
        vm_unit: loaded.units.vm.clone(),
        socat,
        host_port: loaded.port,
        vm_ip: loaded.ssh.ip,
    };
    // Firecracker before 1.14 refuses to start without its log file; 0.2.0 did not create it.
    if !assets.firecracker_log.exists() {
        write_atomic(&assets.firecracker_log, b"", 0o600)?;
    }
    write_atomic(&assets.start_script, start_script(&vm).as_bytes(), 0o700)?;
    write_atomic(&assets.stop_script, stop_script(&vm).as_bytes(), 0o700)?;
    write_atomic(&vm_path, vm_unit(&vm).as_bytes(), 0o644)?;
    write_atomic(&proxy_path, proxy_unit(&proxy).as_bytes(), 0o644)?;
    services.daemon_reload()?;
    let running = unit_state(services, &loaded.units.vm)?.is_active();
    output.line(&format!(
        "Instance {id} now runs under fireclaw's units; the old ones are in {}.",
        backup.display()
    ));
    if running {
        output.line(&format!("Its VM keeps running; the new unit applies from its next start (fireclaw restart {id})."));
    }
    Ok(())
}
