//! Finding an existing instance and holding it: its lock, its state as found on disk, the SSH
//! target its guest answers on, and the refusal to bring up an instance that never finished
//! provisioning. Every verb on one instance starts here.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::guest::ssh::{HostKeyPolicy, SshTarget};
use crate::instance::layout::{StatePaths, UnitNames};
use crate::instance::state::{EnvFile, FireclawState, Phase};
use crate::instance::values::{InstanceId, escaped};
use crate::output::Output;
use crate::settings::Settings;
use crate::store::{HeldLock, lock_instance, read_env, read_fireclaw_state};

/// How long one SSH connection attempt may take in the lifecycle waits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// There is no instance by this name (no `.vm-<id>` under `STATE_ROOT`). Every command says
/// it in these words.
#[derive(Debug, thiserror::Error)]
#[error("no instance '{id}' ({dir} does not exist); list the instances with: fireclaw list")]
pub struct NoInstance {
    pub id: InstanceId,
    pub dir: PathBuf,
}

impl NoInstance {
    pub fn new(settings: &Settings, id: &InstanceId) -> Self {
        Self {
            id: id.clone(),
            dir: StatePaths::new(&settings.paths.state_root, id).dir,
        }
    }
}

/// Refuses a name with no instance behind it, before anything (a lock file, `STATE_ROOT`
/// itself) is created for it.
pub fn ensure_exists(settings: &Settings, id: &InstanceId) -> Result<()> {
    let missing = NoInstance::new(settings, id);
    match std::fs::symlink_metadata(&missing.dir) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing.into()),
        // Not readable (STATE_ROOT is root-only): say that, not that it is missing.
        Err(e) => Err(anyhow::Error::from(e).context(format!("read {}", missing.dir.display()))),
    }
}

/// The instance's setup stopped before provisioning completed.
#[derive(Debug, thiserror::Error)]
#[error(
    "instance '{id}' was never provisioned (phase {phase}); finish it with: fireclaw provision {id}, or remove it with: fireclaw destroy {id} --force"
)]
pub struct NeverProvisioned {
    pub id: InstanceId,
    pub phase: Phase,
}

/// A command that needs a running guest was asked of a suspended instance.
#[derive(Debug, thiserror::Error)]
#[error("instance '{id}' is suspended; resume it first with: fireclaw resume {id}")]
pub struct IsSuspended {
    pub id: InstanceId,
}

/// An instance as found on disk.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub id: InstanceId,
    pub paths: StatePaths,
    pub env: EnvFile,
    /// `None` for an instance made by fireclaw 0.2.0 (it has no `fireclaw.json`).
    pub state: Option<FireclawState>,
    pub units: UnitNames,
    pub port: u16,
    pub ssh: SshTarget,
}

impl Loaded {
    /// The SSH target with a shorter connection bound, for steps that only try the guest.
    pub fn quick_ssh(&self, timeout: Duration) -> SshTarget {
        let mut quick = self.ssh.clone();
        quick.connect_timeout = timeout;
        quick
    }

    /// Refuses a suspended instance (`provision`, `shell`, `logs guest`, `restart`): its guest
    /// is not running, and booting its disk would leave the snapshot behind it.
    pub fn ensure_not_suspended(&self) -> Result<(), IsSuspended> {
        match &self.state {
            Some(state) if state.suspended.is_some() => Err(IsSuspended {
                id: self.id.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses to bring up an instance whose setup never got through provisioning.
    pub fn ensure_provisioned(&self) -> Result<(), NeverProvisioned> {
        match &self.state {
            Some(state) if state.phase < Phase::Provisioned => Err(NeverProvisioned {
                id: self.id.clone(),
                phase: state.phase,
            }),
            _ => Ok(()),
        }
    }
}

/// Reads an instance's state; a missing one is [`NoInstance`].
pub fn load(settings: &Settings, id: &InstanceId) -> Result<Loaded> {
    ensure_exists(settings, id)?;
    let paths = StatePaths::new(&settings.paths.state_root, id);
    let env = read_env(&paths)?;
    let state = read_fireclaw_state(&paths)?;
    let ip = env.vm_ip()?;
    let port = env.host_port()?;
    let key = match env.get("SSH_KEY_PATH").trim() {
        "" => settings.ssh_key_path.clone(),
        saved => PathBuf::from(saved),
    };
    // fireclaw pinned its own instances' keys before first boot; 0.2.0 pinned on first use.
    let policy = if state.as_ref().is_some_and(|s| !s.made_by_020()) {
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
        connect_timeout: CONNECT_TIMEOUT,
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

/// The instance's lifecycle lock, waiting up to `FIRECLAW_LOCK_WAIT` for another command, and
/// saying so at once (with who holds it) when it has to wait.
pub fn lock(settings: &Settings, id: &InstanceId, output: &mut Output<'_>) -> Result<HeldLock> {
    let wait = settings.lock_wait;
    Ok(lock_instance(
        &settings.paths.state_root,
        id,
        wait,
        &mut |holder| {
            let holder = if holder.is_empty() {
                "another fireclaw command".to_owned()
            } else {
                escaped(holder)
            };
            output.progress(&format!(
                "{id}: waiting up to {}s for {holder} to finish with this instance",
                wait.as_secs()
            ));
        },
    )?)
}

/// A lifecycle command stopped by Ctrl-C or SIGTERM after its current step: what state that
/// leaves and how to finish (every such command can be run again to finish what it started).
pub fn explain_interrupt(error: anyhow::Error, verb: &str, id: &InstanceId) -> anyhow::Error {
    if crate::host::interrupt::caused(&error) {
        error.context(format!(
            "'fireclaw {verb} {id}' was interrupted after its current step; run it again to finish, or see the instance with: fireclaw status {id}"
        ))
    } else {
        error
    }
}

/// The lock, then the state: what every verb on an existing instance does first. The name is
/// checked before the lock too, so a typo leaves no lock file behind.
pub fn lock_and_load(
    settings: &Settings,
    id: &InstanceId,
    output: &mut Output<'_>,
) -> Result<(HeldLock, Loaded)> {
    ensure_exists(settings, id)?;
    let held = lock(settings, id, output)?;
    let loaded = load(settings, id)?;
    Ok((held, loaded))
}
