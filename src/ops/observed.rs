//! What is on this host, instance by instance, as `apply` and `host facts` need it: each
//! instance's state (running, stopped, suspended, or half-made at its phase), its saved files,
//! whether `apply` made it, and its memory. One `systemctl show` for all VM units.

use anyhow::Result;

use crate::host::systemd::ServiceManager;
use crate::instance::baked::BUILDER_ID;
use crate::instance::layout::{StatePaths, UnitNames};
use crate::instance::state::{EnvFile, FireclawState, MANAGED_BY_APPLY, Phase, VarsFile};
use crate::instance::values::InstanceId;
use crate::settings::Settings;
use crate::store::{read_fireclaw_state, scan_instances};

/// An instance's state as `apply` compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservedState {
    Running,
    Stopped,
    Suspended,
    /// Setup (or an import) stopped short of provisioned, at this phase.
    HalfMade(Phase),
}

impl ObservedState {
    pub fn word(self) -> String {
        match self {
            Self::Running => "running".into(),
            Self::Stopped => "stopped".into(),
            Self::Suspended => "suspended".into(),
            Self::HalfMade(phase) => format!("half-made ({phase})"),
        }
    }
}

/// One instance on this host.
#[derive(Debug, Clone)]
pub struct Observed {
    pub id: InstanceId,
    pub state: ObservedState,
    pub env: EnvFile,
    /// `None` when it cannot be read (a half-made instance may have none yet).
    pub vars: Option<VarsFile>,
    /// `None` for an instance made by 0.2.0.
    pub fireclaw: Option<FireclawState>,
    /// Its VM runs but its proxy does not (a setup or start cut short before the proxy):
    /// `start` brings it up.
    pub proxy_down: bool,
}

impl Observed {
    /// Whether `apply` made it.
    pub fn managed_by_apply(&self) -> bool {
        self.fireclaw
            .as_ref()
            .is_some_and(|s| s.managed_by.as_deref() == Some(MANAGED_BY_APPLY))
    }

    pub fn memory_mib(&self) -> u64 {
        self.env.get("VM_MEM_MIB").trim().parse().unwrap_or(0)
    }
}

/// Every instance with readable state, by id; the builder of a bake and unreadable ones are
/// left out (`doctor` and `list` name those).
pub fn observe(settings: &Settings, services: &dyn ServiceManager) -> Result<Vec<Observed>> {
    let mut found = Vec::new();
    for scanned in scan_instances(&settings.paths.state_root)? {
        if scanned.name == BUILDER_ID {
            continue;
        }
        let (Ok(id), Ok(env)) = (scanned.name.parse::<InstanceId>(), scanned.env) else {
            continue;
        };
        let paths = StatePaths::new(&settings.paths.state_root, &id);
        let fireclaw = read_fireclaw_state(&paths).ok().flatten();
        let vars = std::fs::read_to_string(&paths.vars)
            .ok()
            .and_then(|text| VarsFile::parse(&text).ok());
        found.push((id, env, vars, fireclaw));
    }
    let units: Vec<String> = found
        .iter()
        .flat_map(|(id, ..)| {
            let names = UnitNames::new(id);
            [names.vm, names.proxy]
        })
        .collect();
    let names: Vec<&str> = units.iter().map(String::as_str).collect();
    let states = services.states(&names)?;
    let pairs: Vec<(bool, bool)> = states
        .chunks(2)
        .map(|pair| {
            (
                pair.first().is_some_and(|s| s.is_active()),
                pair.get(1).is_some_and(|s| s.is_active()),
            )
        })
        .collect();
    Ok(found
        .into_iter()
        .zip(pairs)
        .map(|((id, env, vars, fireclaw), (vm_active, proxy_active))| {
            let state = match &fireclaw {
                Some(state) if state.phase < Phase::Provisioned => {
                    ObservedState::HalfMade(state.phase)
                }
                Some(state) if state.suspended.is_some() => ObservedState::Suspended,
                _ if vm_active => ObservedState::Running,
                _ => ObservedState::Stopped,
            };
            Observed {
                id,
                state,
                env,
                vars,
                fireclaw,
                proxy_down: state == ObservedState::Running && !proxy_active,
            }
        })
        .collect())
}
