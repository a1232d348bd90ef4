//! Recording fakes of the host adapters the operations drive, for unit tests without root:
//! a service manager whose unit states the test sets and which fails a chosen call, a guest
//! shell that answers or refuses, and network steps that only record. Each records every call
//! in one shared log, so a test asserts the order across adapters.

#![allow(clippy::unwrap_used)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;

use super::network::HostSteps;
use crate::env_vars;
use crate::guest::ssh::{GuestShell, SshError};
use crate::host::process::ProcessError;
use crate::host::systemd::{ServiceManager, UnitState};

/// Every call any fake received, in order, as `adapter verb args`.
#[derive(Default)]
pub struct CallLog(RefCell<Vec<String>>);

impl CallLog {
    fn push(&self, call: String) {
        self.0.borrow_mut().push(call);
    }
    pub fn calls(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
}

/// A service manager whose unit states the test sets; the first call of the verb named in
/// `fail_once` fails (a transient failure: the rollback's own call of that verb succeeds).
pub struct FakeServices<'a> {
    pub log: &'a CallLog,
    pub states: RefCell<HashMap<String, UnitState>>,
    pub fail_once: Cell<Option<&'static str>>,
    pub journal: String,
    /// When set, a `stop` is logged with whether the stopped units' files were still there,
    /// so a test sees that units are stopped before their files go.
    pub unit_dir: Option<PathBuf>,
}

impl<'a> FakeServices<'a> {
    pub fn new(log: &'a CallLog) -> Self {
        Self {
            log,
            states: RefCell::new(HashMap::new()),
            fail_once: Cell::new(None),
            journal: String::new(),
            unit_dir: None,
        }
    }

    /// Sets a unit's state: loaded, with this ActiveState and SubState.
    pub fn set(&self, unit: &str, active: &str, sub: &str, restarts: u32) {
        self.states.borrow_mut().insert(
            unit.to_owned(),
            UnitState {
                name: unit.to_owned(),
                load: "loaded".into(),
                active: active.into(),
                sub: sub.into(),
                file: "enabled".into(),
                main_pid: 0,
                restarts,
                ..UnitState::default()
            },
        );
    }

    fn call(&self, verb: &'static str, units: &[&str]) -> Result<(), ProcessError> {
        self.log.push(
            format!("systemctl {verb} {}", units.join(" "))
                .trim_end()
                .to_owned(),
        );
        if self.fail_once.get() == Some(verb) {
            self.fail_once.set(None);
            return Err(ProcessError::CommandFailed {
                program: "systemctl".into(),
                args: verb.into(),
                status: "exit status: 1".into(),
                stderr: format!(": {verb} refused by the test"),
            });
        }
        Ok(())
    }
}

impl ServiceManager for FakeServices<'_> {
    fn daemon_reload(&self) -> Result<(), ProcessError> {
        self.call("daemon-reload", &[])
    }
    fn enable_now(&self, units: &[&str]) -> Result<(), ProcessError> {
        self.call("enable-now", units)?;
        for unit in units {
            self.set(unit, "active", "running", 0);
        }
        Ok(())
    }
    fn stop(&self, units: &[&str]) -> Result<(), ProcessError> {
        if let Some(dir) = &self.unit_dir {
            let present = units.iter().all(|unit| dir.join(unit).exists());
            self.log.push(format!("unit files present: {present}"));
        }
        self.call("stop", units)?;
        for unit in units {
            if let Some(state) = self.states.borrow_mut().get_mut(*unit) {
                state.active = "inactive".into();
                state.sub = "dead".into();
            }
        }
        Ok(())
    }
    fn disable(&self, units: &[&str]) -> Result<(), ProcessError> {
        self.call("disable", units)
    }
    fn reset_failed(&self, units: &[&str]) -> Result<(), ProcessError> {
        self.call("reset-failed", units)
    }
    fn states(&self, units: &[&str]) -> Result<Vec<UnitState>, ProcessError> {
        let states = self.states.borrow();
        Ok(units
            .iter()
            .map(|unit| {
                states.get(*unit).cloned().unwrap_or_else(|| UnitState {
                    name: (*unit).to_owned(),
                    load: "not-found".into(),
                    active: "inactive".into(),
                    sub: "dead".into(),
                    ..UnitState::default()
                })
            })
            .collect())
    }
    fn queue_stop(&self, units: &[&str]) -> Result<(), ProcessError> {
        self.call("queue-stop", units)
    }
    fn journal_tail(&self, unit: &str, _lines: u32) -> String {
        self.log.push(format!("journal {unit}"));
        self.journal.clone()
    }
    fn journal_command(
        &self,
        units: &[&str],
        query: &crate::host::systemd::JournalQuery,
    ) -> std::process::Command {
        self.log
            .push(format!("journalctl {}", query.args(units).join(" ")));
        std::process::Command::new("true")
    }
}

/// A guest that either answers every command or is unreachable.
pub struct FakeGuest<'a> {
    pub log: &'a CallLog,
    pub reachable: bool,
    /// What each command was fed on stdin, in order.
    pub inputs: std::sync::Mutex<Vec<String>>,
}

impl<'a> FakeGuest<'a> {
    /// A guest whose SSH answers every command.
    pub fn answering(log: &'a CallLog) -> Self {
        Self {
            log,
            reachable: true,
            inputs: std::sync::Mutex::default(),
        }
    }

    /// A guest whose SSH never answers.
    pub fn silent(log: &'a CallLog) -> Self {
        Self {
            log,
            reachable: false,
            inputs: std::sync::Mutex::default(),
        }
    }

    fn unreachable() -> SshError {
        SshError::Unreachable {
            id: "t".into(),
            ip: Ipv4Addr::new(127, 0, 0, 9),
            detail: "Connection refused".into(),
        }
    }
}

impl GuestShell for FakeGuest<'_> {
    fn probe(&self) -> Result<(), SshError> {
        self.log.push("ssh probe".into());
        if self.reachable {
            Ok(())
        } else {
            Err(Self::unreachable())
        }
    }
    fn run(&self, remote: &str, stdin: &[u8]) -> Result<String, SshError> {
        self.log.push(format!("ssh {remote}"));
        if let Ok(mut inputs) = self.inputs.lock() {
            inputs.push(String::from_utf8_lossy(stdin).into_owned());
        }
        if self.reachable {
            Ok(String::new())
        } else {
            Err(Self::unreachable())
        }
    }
}

/// Host steps that only record; `existing` names interfaces that already exist.
pub struct FakeHost<'a> {
    pub log: &'a CallLog,
    pub existing: Vec<String>,
}

impl<'a> FakeHost<'a> {
    /// A host where no interface of the test's exists yet.
    pub fn new(log: &'a CallLog) -> Self {
        Self {
            log,
            existing: Vec::new(),
        }
    }
}

impl HostSteps for FakeHost<'_> {
    fn interface_exists(&self, name: &str) -> Result<bool> {
        self.log.push(format!("net exists {name}"));
        Ok(self.existing.iter().any(|e| e == name))
    }
    fn remove_tap(&self, name: &str) -> Result<()> {
        self.log.push(format!("net remove-tap {name}"));
        Ok(())
    }
    fn reapply_policy_if_present(&self) -> Result<Vec<String>> {
        self.log.push("net reapply-policy".into());
        Ok(Vec::new())
    }
    fn create_vmm_account(
        &self,
        id: &crate::instance::values::InstanceId,
    ) -> Result<crate::instance::confinement::VmmAccount> {
        let name = crate::instance::confinement::account_name(id);
        self.log.push(format!("account create {name}"));
        Ok(crate::instance::confinement::VmmAccount {
            name,
            uid: crate::instance::confinement::VMM_ID_FIRST,
            gid: crate::instance::confinement::VMM_ID_FIRST,
        })
    }
    fn remove_vmm_account(&self, name: &str) -> Result<()> {
        self.log.push(format!("account remove {name}"));
        Ok(())
    }
    fn confine_files(
        &self,
        assets: &crate::instance::layout::AssetPaths,
        _with_initrd: bool,
        account: &crate::instance::confinement::VmmAccount,
    ) -> Result<()> {
        self.log.push(format!(
            "account hand-over {} to {}",
            assets.dir.display(),
            account.name
        ));
        Ok(())
    }
}

/// A scratch host: every root fireclaw writes under lives in one temporary directory.
pub struct ScratchHost {
    pub dir: tempfile::TempDir,
    pub settings: crate::settings::Settings,
}

impl ScratchHost {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let path = |name: &str| root.join(name).to_string_lossy().into_owned();
        let vars: HashMap<&str, String> = HashMap::from([
            (env_vars::STATE_ROOT, path("state")),
            (env_vars::FC_ROOT, path("fc")),
            (env_vars::BASE_IMAGES_DIR, path("images")),
            (env_vars::SSH_KEY_PATH, path("keys/client")),
            (env_vars::BASE_PORT, "47400".to_owned()),
        ]);
        let mut settings =
            crate::settings::Settings::from_lookup(|name| vars.get(name).cloned()).unwrap();
        settings.paths.unit_dir = root.join("units");
        // FC_ROOT and STATE_ROOT are shared roots: setup makes them once and teardown leaves
        // them, so they exist before the test's first snapshot of the tree.
        for sub in ["state", "fc", "units", "images", "keys"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(
            root.join("images/vmlinux"),
            crate::kernel_fixture::vmlinux_with_everything(),
        )
        .unwrap();
        std::fs::write(root.join("images/rootfs.ext4"), vec![0u8; 4096]).unwrap();
        // A client key already there: generating one would put the key dir under the
        // trusted-path rule, which a temporary directory cannot pass.
        std::fs::write(
            root.join("keys/client.pub"),
            "ssh-ed25519 AAAAtest client\n",
        )
        .unwrap();
        Self { dir, settings }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Every file and directory under the scratch root, relative to it.
    pub fn tree(&self) -> Vec<String> {
        fn walk(base: &std::path::Path, dir: &std::path::Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                found.push(path.strip_prefix(base).unwrap().display().to_string());
                if path.is_dir() && !path.is_symlink() {
                    walk(base, &path, found);
                }
            }
        }
        let mut found = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut found);
        found.sort();
        found
    }
}
