//! `fireclaw apply`: makes this host's instances match a declared file (`instance::apply_file`).
//! First a plan, compared against what is on the host (`ops::observed`): for each instance
//! its action (create, start, stop, suspend, resume, reprovision, restart-to-apply, destroy,
//! unchanged, or needs replace, which is refused), the reason, and the steps. Secrets are
//! compared against the instance's root-only files and only ever said to have changed. Then
//! each instance's steps run as fireclaw's own verbs (`setup`, `provision`, `resize`, `start`,
//! `stop`, `suspend`, `resume`, `export`, `destroy`), the same code a person runs, each under
//! its instance's lock, secrets handed over on stdin (`--secrets-stdin`), never on a command
//! line; independent instances run side by side, up to `jobs`. One instance's failure is
//! reported with what its verb said, and the others go on.
//!
//! After a kill, an instance apply made (`managed_by` in `fireclaw.json`) converges: one that
//! never booted is removed and created again, one that booted is provisioned. Removing (a
//! wanted `absent`, or `--prune` of an instance apply made and the file no longer names)
//! exports the instance first unless told not to.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;

use anyhow::{Context, Result};
use serde::Serialize;

use super::observed::{Observed, ObservedState};
use crate::host::interrupt;
use crate::instance::apply_file::{SecretRef, Wanted, WantedSettings, WantedState, WantedTelegram};
use crate::instance::state::{Phase, parse_flag};
use crate::instance::values::{PrivateEgress, PullPolicy};

/// One fireclaw verb an instance's plan runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The verb and its arguments (no secret among them).
    pub args: Vec<String>,
    /// `NAME=value` lines handed on stdin (`--secrets-stdin` is in `args` then).
    pub secrets: Vec<(String, String)>,
}

impl Step {
    fn verb(args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            secrets: Vec::new(),
        }
    }

    /// The step as a person reads it (the verb and its arguments, secrets named only).
    pub fn describe(&self) -> String {
        let mut text = self.args.join(" ");
        if !self.secrets.is_empty() {
            let names: Vec<&str> = self.secrets.iter().map(|(n, _)| n.as_str()).collect();
            text.push_str(&format!(" (with {} on stdin)", names.join(", ")));
        }
        text
    }
}

/// What apply does with one instance.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub id: String,
    pub action: &'static str,
    pub reason: String,
    #[serde(serialize_with = "described")]
    pub steps: Vec<Step>,
    /// Why it cannot be done (the dry run exits 1 on any; apply leaves the instance alone).
    pub problems: Vec<String>,
}

fn described<S: serde::Serializer>(steps: &[Step], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = serializer.serialize_seq(Some(steps.len()))?;
    for step in steps {
        seq.serialize_element(&step.describe())?;
    }
    seq.end()
}

impl Planned {
    pub fn changes(&self) -> bool {
        !self.steps.is_empty()
    }
}

/// How apply reaches a secret's value: the caller resolves references (environment, files).
pub type Resolve<'a> = dyn Fn(&SecretRef) -> Result<String, String> + 'a;

/// Where a removed instance's backup goes; `None`: no backup (`--no-backup`).
#[derive(Debug, Clone)]
pub struct Removal {
    pub backup_dir: Option<PathBuf>,
    pub prune: bool,
}

/// The plan for every declared instance and every instance on the host.
pub fn plan(
    wanted: &[Wanted],
    observed: &[Observed],
    resolve: &Resolve<'_>,
    removal: &Removal,
    backup_time: &str,
) -> Vec<Planned> {
    let on_host: BTreeMap<&str, &Observed> = observed.iter().map(|o| (o.id.as_str(), o)).collect();
    let mut plans: Vec<Planned> = wanted
        .iter()
        .map(|w| {
            plan_one(
                w,
                on_host.get(w.id.as_str()).copied(),
                resolve,
                removal,
                backup_time,
            )
        })
        .collect();
    for instance in observed {
        if wanted.iter().any(|w| w.id == instance.id) {
            continue;
        }
        plans.push(if removal.prune && instance.managed_by_apply() {
            Planned {
                id: instance.id.to_string(),
                action: "destroy",
                reason: "not in the file, made by apply (--prune)".into(),
                steps: removal_steps(instance, removal, backup_time),
                problems: Vec::new(),
            }
        } else {
            Planned {
                id: instance.id.to_string(),
                action: "unmanaged",
                reason: if instance.managed_by_apply() {
                    "not in the file; left alone (--prune removes it: apply made it)".into()
                } else {
                    "not in the file; left alone (not made by apply)".into()
                },
                steps: Vec::new(),
                problems: Vec::new(),
            }
        });
    }
    plans
}

/// The secrets a step hands over: each managed key whose value resolves, or the problem.
struct Handed {
    secrets: Vec<(String, String)>,
    changed: Vec<String>,
    problems: Vec<String>,
}

fn handed(
    id: &str,
    settings: &WantedSettings,
    current: Option<&Observed>,
    resolve: &Resolve<'_>,
) -> Handed {
    let mut out = Handed {
        secrets: Vec::new(),
        changed: Vec::new(),
        problems: Vec::new(),
    };
    let telegram = match &settings.telegram {
        Some(WantedTelegram::On { token, .. }) => Some(token),
        _ => None,
    };
    for (key, name, reference) in [
        (
            "anthropic_api_key",
            "ANTHROPIC_API_KEY",
            settings.anthropic_api_key.as_ref(),
        ),
        (
            "openai_api_key",
            "OPENAI_API_KEY",
            settings.openai_api_key.as_ref(),
        ),
        (
            "minimax_api_key",
            "MINIMAX_API_KEY",
            settings.minimax_api_key.as_ref(),
        ),
        ("telegram_token", "TELEGRAM_TOKEN", telegram),
    ] {
        let Some(reference) = reference else {
            continue;
        };
        match resolve(reference) {
            Ok(value) => {
                let saved = current
                    .and_then(|c| c.vars.as_ref())
                    .map(|vars| vars.get(name).trim().to_owned());
                if saved.as_deref() != Some(value.as_str()) {
                    out.changed.push(key.to_owned());
                    out.secrets.push((name.to_owned(), value));
                }
            }
            Err(problem) => out
                .problems
                .push(format!("instances.{id}.{key}: {problem}")),
        }
    }
    out
}

/// `--flag value` pairs for the settings a new instance is made with.
fn setup_args(wanted: &Wanted) -> Vec<String> {
    let s = &wanted.settings;
    let mut args = vec![
        "setup".to_owned(),
        "--instance".to_owned(),
        wanted.id.to_string(),
        "--managed-by-apply".to_owned(),
    ];
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            args.push(format!("--{name}"));
            args.push(value);
        }
    };
    flag("model", s.model.as_ref().map(ToString::to_string));
    flag("skills", s.skills.as_ref().map(|v| v.to_csv()));
    if let Some(WantedTelegram::On { users, .. }) = &s.telegram {
        flag("telegram-users", Some(users.to_csv()));
    }
    flag(
        "openclaw-image",
        s.openclaw_image.as_ref().map(ToString::to_string),
    );
    flag(
        "openclaw-pull",
        s.openclaw_pull.map(|p| p.as_str().to_owned()),
    );
    flag("host-port", s.host_port.map(|p| p.to_string()));
    flag("vm-vcpu", s.vm_vcpu.map(|v| v.to_string()));
    flag("vm-mem-mib", s.vm_mem_mib.map(|v| v.to_string()));
    flag("disk-size", s.disk_size.as_ref().map(ToString::to_string));
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    flag("api-sock", path(&s.api_sock));
    flag("base-kernel", path(&s.base_kernel));
    flag("base-rootfs", path(&s.base_rootfs));
    flag("base-initrd", path(&s.base_initrd));
    flag("base-image", s.base_image.as_ref().map(ToString::to_string));
    flag(
        "allow-private-egress",
        s.allow_private_egress.as_ref().map(ToString::to_string),
    );
    if s.verify_base_sha256 {
        args.push("--verify-base-sha256".to_owned());
    }
    if s.skip_browser_install == Some(true) {
        args.push("--skip-browser-install".to_owned());
    }
    args.extend(wait_args(s));
    args
}

fn wait_args(settings: &WantedSettings) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(secs) = settings.ssh_timeout {
        args.extend(["--ssh-timeout".to_owned(), secs.to_string()]);
    }
    if let Some(secs) = settings.health_timeout {
        args.extend(["--health-timeout".to_owned(), secs.to_string()]);
    }
    args
}

/// A lifecycle verb with the instance's waits where the verb takes them.
fn lifecycle(verb: &str, id: &str, settings: &WantedSettings) -> Step {
    let mut args = vec![verb.to_owned(), id.to_owned()];
    if matches!(verb, "start" | "resume" | "provision" | "resize") {
        args.extend(wait_args(settings));
    }
    Step {
        args,
        secrets: Vec::new(),
    }
}

/// What an existing instance's saved settings differ in from the wanted ones: `provision`
/// flags, `resize` flags, settings that need a new instance, and the reasons.
#[derive(Default)]
struct Differences {
    provision: Vec<String>,
    resize: Vec<String>,
    replace: Vec<String>,
    reasons: Vec<String>,
}

fn differences(wanted: &WantedSettings, current: &Observed) -> Differences {
    let mut d = Differences::default();
    let vars = |key: &str| {
        current
            .vars
            .as_ref()
            .map(|v| v.get(key).trim().to_owned())
            .unwrap_or_default()
    };
    let env = |key: &str| current.env.get(key).trim().to_owned();
    let provision =
        |d: &mut Differences, key: &str, now: String, then: String, flags: Vec<String>| {
            if now != then {
                d.reasons
                    .push(format!("{key} {} -> {}", shown(&now), shown(&then)));
                d.provision.extend(flags);
            }
        };
    if let Some(model) = &wanted.model {
        provision(
            &mut d,
            "model",
            vars("MODEL"),
            model.to_string(),
            vec!["--model".into(), model.to_string()],
        );
    }
    if let Some(skills) = &wanted.skills {
        provision(
            &mut d,
            "skills",
            vars("SKILLS"),
            skills.to_csv(),
            vec!["--skills".into(), skills.to_csv()],
        );
    }
    match &wanted.telegram {
        Some(WantedTelegram::On { users, .. }) => provision(
            &mut d,
            "telegram_users",
            vars("TELEGRAM_USERS"),
            users.to_csv(),
            vec!["--telegram-users".into(), users.to_csv()],
        ),
        Some(WantedTelegram::Off) if !vars("TELEGRAM_TOKEN").is_empty() => {
            d.reasons.push("telegram on -> off".into());
            d.provision.push("--no-telegram".into());
        }
        _ => {}
    }
    if let Some(image) = &wanted.openclaw_image {
        provision(
            &mut d,
            "openclaw_image",
            vars("OPENCLAW_IMAGE"),
            image.to_string(),
            vec!["--openclaw-image".into(), image.to_string()],
        );
    }
    if let Some(pull) = wanted.openclaw_pull {
        let now = current
            .fireclaw
            .as_ref()
            .map_or(PullPolicy::Always, |s| s.pull_policy());
        provision(
            &mut d,
            "openclaw_pull",
            now.as_str().into(),
            pull.as_str().into(),
            vec!["--openclaw-pull".into(), pull.as_str().into()],
        );
    }
    if let Some(skip) = wanted.skip_browser_install {
        provision(
            &mut d,
            "skip_browser_install",
            parse_flag(&vars("SKIP_BROWSER_INSTALL")).to_string(),
            skip.to_string(),
            vec![
                if skip {
                    "--skip-browser-install"
                } else {
                    "--browser-install"
                }
                .into(),
            ],
        );
    }
    if let Some(egress) = &wanted.allow_private_egress {
        let now = current.fireclaw.as_ref().map_or_else(String::new, |s| {
            PrivateEgress::from_networks(s.allow_private_egress.clone()).to_string()
        });
        provision(
            &mut d,
            "allow_private_egress",
            now,
            egress.to_string(),
            vec!["--allow-private-egress".into(), egress.to_string()],
        );
    }
    // The VM's size: a restart with a re-rendered VM config.
    for (key, env_key, flag, value) in [
        (
            "vm_vcpu",
            "VM_VCPU",
            "--vm-vcpu",
            wanted.vm_vcpu.map(|v| v.to_string()),
        ),
        (
            "vm_mem_mib",
            "VM_MEM_MIB",
            "--vm-mem-mib",
            wanted.vm_mem_mib.map(|v| v.to_string()),
        ),
    ] {
        if let Some(value) = value
            && env(env_key) != value
        {
            d.reasons
                .push(format!("{key} {} -> {value}", shown(&env(env_key))));
            d.resize.extend([flag.to_owned(), value]);
        }
    }
    if let Some(disk) = &wanted.disk_size {
        let now: Option<crate::instance::values::DiskSize> = env("DISK_SIZE").parse().ok();
        match now {
            Some(now) if now.bytes() == disk.bytes() => {}
            Some(now) if now.bytes() > disk.bytes() => d.replace.push(format!(
                "disk_size {now} -> {disk}: a disk is never shrunk; keep {now}, or make a new instance (export and import keep the size)"
            )),
            now => {
                d.reasons.push(format!(
                    "disk_size {} -> {disk} (grown offline)",
                    now.map_or_else(|| "?".to_owned(), |n| n.to_string())
                ));
                d.resize.extend(["--disk-size".to_owned(), disk.to_string()]);
            }
        }
    }
    // What only a new instance can change.
    if let Some(port) = wanted.host_port
        && env("HOST_PORT") != port.to_string()
    {
        d.replace.push(format!(
            "host_port {} -> {port}: an instance keeps its port; leave host_port out or set it to {}, or replace the instance (export, destroy, import)",
            env("HOST_PORT"),
            env("HOST_PORT")
        ));
    }
    if let Some(sock) = &wanted.api_sock
        && env("API_SOCK") != sock.display().to_string()
    {
        d.replace.push(format!(
            "api_sock {} -> {}: the API socket is fixed when the instance is made; set it back, or replace the instance",
            env("API_SOCK"),
            sock.display()
        ));
    }
    if let Some(name) = &wanted.base_image {
        let now = current
            .fireclaw
            .as_ref()
            .and_then(|s| s.baked_image.clone());
        if now.as_deref() != Some(name.as_str()) {
            d.replace.push(format!(
                "base_image {} -> {name}: the disk was made from its base; keep the old name, or make a new instance (pull a new OpenClaw image into this one with openclaw_image)",
                now.as_deref().unwrap_or("(none)")
            ));
        }
    }
    d
}

fn shown(value: &str) -> &str {
    if value.is_empty() { "(none)" } else { value }
}

/// The lifecycle verbs from `now` to `wanted`.
fn converge(
    id: &str,
    now: ObservedState,
    wanted: WantedState,
    settings: &WantedSettings,
) -> Vec<Step> {
    use ObservedState as Now;
    use WantedState as Want;
    let step = |verb: &str| lifecycle(verb, id, settings);
    match (now, wanted) {
        (Now::Running, Want::Stopped) => vec![step("stop")],
        (Now::Running, Want::Suspended) => vec![step("suspend")],
        (Now::Stopped, Want::Running) => vec![step("start")],
        (Now::Stopped, Want::Suspended) => vec![step("start"), step("suspend")],
        (Now::Suspended, Want::Running) => vec![step("resume")],
        (Now::Suspended, Want::Stopped) => vec![step("resume"), step("stop")],
        _ => Vec::new(),
    }
}

/// Export (unless `--no-backup`) and destroy; a running or suspended one is stopped first
/// (an archive is of a stopped or suspended instance; suspended ones export as they are).
/// Setup with its secrets on stdin, then whatever takes the new (running) instance to its
/// wanted state.
fn creation(id: &str, wanted: &Wanted, secrets: Vec<(String, String)>) -> Vec<Step> {
    let mut steps = vec![with_secrets(
        Step {
            args: setup_args(wanted),
            secrets: Vec::new(),
        },
        secrets,
    )];
    steps.extend(converge(
        id,
        ObservedState::Running,
        wanted.state,
        &wanted.settings,
    ));
    steps
}

fn removal_steps(instance: &Observed, removal: &Removal, backup_time: &str) -> Vec<Step> {
    let id = instance.id.as_str();
    let mut steps = Vec::new();
    match instance.state {
        ObservedState::HalfMade(_) => {
            steps.push(Step::verb(&["destroy", id, "--force", "-y"]));
            return steps;
        }
        ObservedState::Running => steps.push(Step::verb(&["stop", id])),
        ObservedState::Stopped | ObservedState::Suspended => {}
    }
    if let Some(dir) = &removal.backup_dir {
        let file = dir.join(crate::instance::archive::backup_file_name(id, backup_time));
        steps.push(Step {
            args: vec![
                "export".into(),
                id.into(),
                "--quiet".into(),
                "--output".into(),
                file.display().to_string(),
            ],
            secrets: Vec::new(),
        });
    }
    steps.push(Step::verb(&["destroy", id, "-y"]));
    steps
}

fn with_secrets(mut step: Step, secrets: Vec<(String, String)>) -> Step {
    if !secrets.is_empty() {
        step.args.push("--secrets-stdin".into());
        step.secrets = secrets;
    }
    step
}

fn plan_one(
    wanted: &Wanted,
    current: Option<&Observed>,
    resolve: &Resolve<'_>,
    removal: &Removal,
    backup_time: &str,
) -> Planned {
    let id = wanted.id.as_str();
    let planned =
        |action: &'static str, reason: String, steps: Vec<Step>, problems: Vec<String>| Planned {
            id: id.to_owned(),
            action,
            reason,
            steps,
            problems,
        };
    if wanted.state == WantedState::Absent {
        return match current {
            None => planned(
                "unchanged",
                "absent, as declared".into(),
                Vec::new(),
                Vec::new(),
            ),
            Some(instance) => planned(
                "destroy",
                format!(
                    "declared absent{}",
                    match (instance.state, &removal.backup_dir) {
                        (ObservedState::HalfMade(phase), _) =>
                            format!(" (half-made at phase {phase}: nothing to back up)"),
                        (_, Some(_)) => "; exported first".to_owned(),
                        (_, None) => "; not exported (--no-backup)".to_owned(),
                    }
                ),
                removal_steps(instance, removal, backup_time),
                Vec::new(),
            ),
        };
    }
    let Some(current) = current else {
        // Created with every secret the file gives; each must resolve.
        let handed = handed(id, &wanted.settings, None, resolve);
        let steps = creation(id, wanted, handed.secrets);
        return planned(
            "create",
            format!("not on this host; made {}", wanted.state.as_str()),
            steps,
            handed.problems,
        );
    };
    if let ObservedState::HalfMade(phase) = current.state {
        if phase == Phase::Importing {
            return planned(
                "needs replace",
                format!("an import of it was interrupted (phase {phase})"),
                Vec::new(),
                vec![format!(
                    "instance '{id}' is half-imported: fireclaw host cleanup (or the next import) removes it; then apply again"
                )],
            );
        }
        if !current.managed_by_apply() {
            return planned(
                "needs replace",
                format!("half-made at phase {phase}, not made by apply"),
                Vec::new(),
                vec![format!(
                    "instance '{id}' is half-made (phase {phase}) and apply did not make it: finish it with fireclaw provision {id}, or remove it with fireclaw destroy {id} --force"
                )],
            );
        }
        let handed = handed(id, &wanted.settings, None, resolve);
        if phase < Phase::Booted {
            let mut steps = vec![Step::verb(&["destroy", id, "--force", "-y"])];
            steps.extend(creation(id, wanted, handed.secrets));
            return planned(
                "create",
                format!(
                    "its setup by apply was cut short at phase {phase}, before it booted: made again"
                ),
                steps,
                handed.problems,
            );
        }
        // Booted: the disk and units are whole; provisioning finishes it with every setting.
        let d = differences(&wanted.settings, current);
        let mut args = vec!["provision".to_owned(), id.to_owned()];
        args.extend(d.provision);
        args.extend(wait_args(&wanted.settings));
        let mut steps = vec![with_secrets(
            Step {
                args,
                secrets: Vec::new(),
            },
            handed.secrets,
        )];
        steps.extend(converge(
            id,
            ObservedState::Running,
            wanted.state,
            &wanted.settings,
        ));
        return planned(
            "reprovision",
            format!(
                "its setup by apply was cut short at phase {phase}, after it booted: provisioned"
            ),
            steps,
            [handed.problems, d.replace].concat(),
        );
    }
    let d = differences(&wanted.settings, current);
    let handed = handed(id, &wanted.settings, Some(current), resolve);
    let mut problems = handed.problems;
    if !d.replace.is_empty() {
        problems.extend(d.replace.iter().map(|r| format!("needs replace: {r}")));
        return planned("needs replace", d.replace.join("; "), Vec::new(), problems);
    }
    let mut reasons = d.reasons;
    reasons.extend(handed.changed.iter().map(|k| format!("{k} changed")));
    // The saved settings are written before the guest is provisioned, so after a failed (or
    // killed) provisioning they match the file while the guest may not: provision again.
    let failed_before = current
        .fireclaw
        .as_ref()
        .and_then(|state| state.last_provisioning.as_ref())
        .is_some_and(|run| !run.ok);
    if failed_before {
        reasons.push("its last provisioning did not finish".into());
    }
    let mut now = current.state;
    let mut steps = Vec::new();
    let mut action = None;
    if !d.resize.is_empty() {
        if now == ObservedState::Suspended {
            steps.push(lifecycle("resume", id, &wanted.settings));
            now = ObservedState::Running;
        }
        let mut step = lifecycle("resize", id, &wanted.settings);
        step.args.splice(2..2, d.resize);
        steps.push(step);
        action = Some("restart-to-apply");
    }
    if !d.provision.is_empty() || !handed.secrets.is_empty() || failed_before {
        if now == ObservedState::Suspended {
            steps.push(lifecycle("resume", id, &wanted.settings));
        }
        let mut step = lifecycle("provision", id, &wanted.settings);
        step.args.splice(2..2, d.provision);
        steps.push(with_secrets(step, handed.secrets));
        // provision boots a stopped VM and leaves it running.
        now = ObservedState::Running;
        action = Some("reprovision");
    }
    let state_steps = converge(id, now, wanted.state, &wanted.settings);
    if state_steps.is_empty()
        && action.is_none()
        && current.proxy_down
        && wanted.state == WantedState::Running
    {
        return planned(
            "start",
            "its VM runs but its proxy does not".into(),
            vec![lifecycle("start", id, &wanted.settings)],
            problems,
        );
    }
    if action.is_none()
        && let Some(first) = state_steps.first()
    {
        action = Some(match first.args[0].as_str() {
            "start" => "start",
            "stop" => "stop",
            "suspend" => "suspend",
            _ => "resume",
        });
        reasons.push(format!(
            "{} -> {}",
            current.state.word(),
            wanted.state.as_str()
        ));
    } else if !state_steps.is_empty() {
        reasons.push(format!("then {}", wanted.state.as_str()));
    }
    steps.extend(state_steps);
    match action {
        None => planned(
            "unchanged",
            format!("{}, as declared", current.state.word()),
            Vec::new(),
            problems,
        ),
        Some(action) => planned(action, reasons.join(", "), steps, problems),
    }
}

/// The values of secret references: an environment variable of this process (set and not
/// empty), or a file that is root's alone (no link, owned by root, no access for others).
pub fn resolve_secret(reference: &SecretRef) -> Result<String, String> {
    match reference {
        SecretRef::Env(name) => match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
            Ok(_) => Err(format!("the environment variable {name} is empty")),
            Err(_) => Err(format!(
                "the environment variable {name} is not set (through sudo, keep it with --preserve-env={name})"
            )),
        },
        SecretRef::File(path) => {
            use std::os::unix::fs::MetadataExt;
            let shown = path.display();
            let meta = std::fs::symlink_metadata(path)
                .map_err(|e| format!("the secret file {shown} cannot be read: {e}"))?;
            if meta.file_type().is_symlink() {
                return Err(format!(
                    "the secret file {shown} is a symbolic link; name the file itself"
                ));
            }
            if !meta.is_file() {
                return Err(format!("the secret file {shown} is not a regular file"));
            }
            if meta.uid() != 0 {
                return Err(format!("the secret file {shown} is not owned by root"));
            }
            if meta.mode() & 0o077 != 0 {
                return Err(format!(
                    "the secret file {shown} is readable or writable by others (mode {:o}); make it 0600",
                    meta.mode() & 0o777
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("the secret file {shown} cannot be read: {e}"))?;
            let value = text.trim();
            if value.is_empty() {
                return Err(format!("the secret file {shown} is empty"));
            }
            Ok(value.to_owned())
        }
    }
}

/// How one instance's steps went.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub id: String,
    pub action: &'static str,
    pub done: bool,
    /// The step that failed and what its verb said.
    pub error: Option<String>,
}

/// A progress line from a worker, for the caller to print.
pub enum Event {
    Step {
        id: String,
        step: String,
        of: String,
    },
    Done(Outcome),
}

/// Runs every plan with changes and no problem, up to `jobs` instances at once; a planned
/// instance with problems is reported failed without being touched. `events` receives
/// progress as it happens.
pub fn execute(
    plans: &[Planned],
    jobs: usize,
    fireclaw: &Path,
    events: &mpsc::Sender<Event>,
) -> Vec<Outcome> {
    let queue: Mutex<Vec<&Planned>> = Mutex::new(
        plans
            .iter()
            .filter(|p| p.changes() || !p.problems.is_empty())
            .rev()
            .collect(),
    );
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some(planned) = next else {
                        return;
                    };
                    let outcome = run_one(planned, fireclaw, events);
                    let _ = events.send(Event::Done(outcome.clone()));
                    if let Ok(mut results) = results.lock() {
                        results.push(outcome);
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by(|a, b| a.id.cmp(&b.id));
    results
}

fn run_one(planned: &Planned, fireclaw: &Path, events: &mpsc::Sender<Event>) -> Outcome {
    let outcome = |error: Option<String>| Outcome {
        id: planned.id.clone(),
        action: planned.action,
        done: error.is_none(),
        error,
    };
    if !planned.problems.is_empty() {
        return outcome(Some(planned.problems.join("; ")));
    }
    for (n, step) in planned.steps.iter().enumerate() {
        if interrupt::check().is_err() {
            return outcome(Some(
                "interrupted before this step; nothing more was done".into(),
            ));
        }
        let _ = events.send(Event::Step {
            id: planned.id.clone(),
            step: step.describe(),
            of: format!("{} of {}", n + 1, planned.steps.len()),
        });
        if let Err(error) = run_step(step, fireclaw) {
            return outcome(Some(format!("fireclaw {} failed: {error}", step.args[0])));
        }
    }
    outcome(None)
}

/// One verb, its output kept: on failure, what it said on stderr is the error.
fn run_step(step: &Step, fireclaw: &Path) -> Result<()> {
    let mut child = Command::new(fireclaw)
        .args(&step.args)
        .stdin(if step.secrets.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", fireclaw.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let text: String = step
            .secrets
            .iter()
            .map(|(name, value)| format!("{name}={value}\n"))
            .collect();
        stdin
            .write_all(text.as_bytes())
            .context("hand the secrets over")?;
    }
    let output = child.wait_with_output().context("wait for fireclaw")?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Its error and the lines under it (the evidence a failed setup keeps); not its progress.
    let said: Vec<&str> = stderr
        .lines()
        .skip_while(|line| !line.starts_with("fireclaw: "))
        .collect();
    let said = if said.is_empty() {
        stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
    } else {
        said
    };
    let status = match output.status.code() {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    };
    anyhow::bail!(
        "{status}: {}",
        said.iter()
            .map(|l| l.trim_start_matches("fireclaw: ").trim())
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// What `setup --dry-run` says would fail for each create step: the problems it lists.
pub fn predict_creates(plans: &mut [Planned], fireclaw: &Path) {
    for planned in plans.iter_mut() {
        // A half-made instance made again: setup's dry run would find the instance it is
        // about to replace (and its port and address) and call that a failure.
        if planned
            .steps
            .first()
            .and_then(|s| s.args.first())
            .map(String::as_str)
            == Some("destroy")
        {
            continue;
        }
        let Some(create) = planned
            .steps
            .iter()
            .find(|s| s.args.first().map(String::as_str) == Some("setup"))
            .cloned()
        else {
            continue;
        };
        let mut step = create;
        step.args.retain(|a| a != "--managed-by-apply");
        step.args.extend(["--dry-run".into(), "--json".into()]);
        let output = Command::new(fireclaw)
            .args(&step.args)
            .stdin(if step.secrets.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut stdin) = child.stdin.take() {
                    let text: String = step
                        .secrets
                        .iter()
                        .map(|(n, v)| format!("{n}={v}\n"))
                        .collect();
                    let _ = stdin.write_all(text.as_bytes());
                }
                child.wait_with_output()
            });
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                let json: Option<serde_json::Value> = serde_json::from_slice(&output.stdout).ok();
                let listed: Vec<String> = json
                    .as_ref()
                    .and_then(|j| j["problems"].as_array())
                    .map(|problems| {
                        problems
                            .iter()
                            .filter_map(|p| p.as_str().map(|p| format!("setup would fail: {p}")))
                            .collect()
                    })
                    .unwrap_or_default();
                if listed.is_empty() {
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    planned.problems.push(format!(
                        "setup would fail: {}",
                        stderr.trim().trim_start_matches("fireclaw: ")
                    ));
                } else {
                    planned.problems.extend(listed);
                }
            }
            Err(error) => planned
                .problems
                .push(format!("setup's dry run could not run: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::apply_file::parse;
    use crate::instance::state::{EnvFile, FireclawState, MANAGED_BY_APPLY, VarsFile};
    use crate::instance::timing::TimedVerb;

    const KEY: &str = "sk-saved-key";

    /// An instance on the host as setup leaves it: openai/gpt-5.5, default skills, 2 vCPUs,
    /// 2048 MiB, 4G disk, port 18891, the saved key `KEY`.
    fn on_host(id: &str, state: ObservedState, managed: bool) -> Observed {
        let env = EnvFile::from_values(|key| {
            Some(
                match key {
                    "INSTANCE_ID" => id,
                    "HOST_PORT" => "18891",
                    "VM_IP" => "172.16.0.2",
                    "VM_TAP" => "ta2",
                    "VM_VCPU" => "2",
                    "VM_MEM_MIB" => "2048",
                    "DISK_SIZE" => "4G",
                    "API_SOCK" => "/srv/firecracker/vm-demo/a/firecracker.socket",
                    "MODEL" => "openai/gpt-5.5",
                    "OPENAI_API_KEY" => KEY,
                    _ => "",
                }
                .to_owned(),
            )
        })
        .unwrap();
        let vars = VarsFile::from_values(|key| {
            Some(
                match key {
                    "INSTANCE_ID" => id,
                    "MODEL" => "openai/gpt-5.5",
                    "SKILLS" => "github,tmux",
                    "OPENCLAW_IMAGE" => "ghcr.io/openclaw/openclaw:latest",
                    "SKIP_BROWSER_INSTALL" => "false",
                    "OPENAI_API_KEY" => KEY,
                    _ => "",
                }
                .to_owned(),
            )
        })
        .unwrap();
        let phase = match state {
            ObservedState::HalfMade(phase) => phase,
            _ => Phase::Provisioned,
        };
        let mut fireclaw = FireclawState::new(phase);
        if managed {
            fireclaw.managed_by = Some(MANAGED_BY_APPLY.into());
        }
        Observed {
            id: id.parse().unwrap(),
            state,
            env,
            vars: Some(vars),
            fireclaw: Some(fireclaw),
            proxy_down: false,
        }
    }

    fn resolve(reference: &SecretRef) -> Result<String, String> {
        match reference {
            SecretRef::Env(name) if name == "SAVED" => Ok(KEY.into()),
            SecretRef::Env(name) if name == "NEW" => Ok("sk-new-key".into()),
            SecretRef::Env(name) => Err(format!("the environment variable {name} is not set")),
            SecretRef::File(_) => Ok("123:tok".into()),
        }
    }

    fn plan_of(toml: &str, observed: &[Observed], prune: bool, backup: bool) -> Vec<Planned> {
        let file = parse(toml).unwrap();
        plan(
            &file.instances,
            observed,
            &resolve,
            &Removal {
                backup_dir: backup.then(|| PathBuf::from("/var/backups/fc")),
                prune,
            },
            "2026-12-07T03:00:00Z",
        )
    }

    fn steps(planned: &Planned) -> Vec<String> {
        planned.steps.iter().map(Step::describe).collect()
    }

    #[test]
    fn a_missing_instance_is_created_in_its_state_with_its_secrets_on_stdin() {
        let plans = plan_of(
            "[instances.a]\nstate = \"suspended\"\nopenai_api_key = { env = \"NEW\" }\nvm_mem_mib = 1024\n",
            &[],
            false,
            true,
        );
        assert_eq!(plans[0].action, "create");
        assert_eq!(
            steps(&plans[0]),
            [
                "setup --instance a --managed-by-apply --vm-mem-mib 1024 --secrets-stdin (with OPENAI_API_KEY on stdin)",
                "suspend a"
            ]
        );
        assert_eq!(
            plans[0].steps[0].secrets,
            [("OPENAI_API_KEY".into(), "sk-new-key".into())]
        );
        assert!(!steps(&plans[0]).concat().contains("sk-new-key"));
    }

    #[test]
    fn each_state_change_is_its_own_action() {
        let cases = [
            (ObservedState::Stopped, "running", "start", vec!["start a"]),
            (ObservedState::Running, "stopped", "stop", vec!["stop a"]),
            (
                ObservedState::Running,
                "suspended",
                "suspend",
                vec!["suspend a"],
            ),
            (
                ObservedState::Suspended,
                "running",
                "resume",
                vec!["resume a"],
            ),
            (
                ObservedState::Suspended,
                "stopped",
                "resume",
                vec!["resume a", "stop a"],
            ),
            (
                ObservedState::Stopped,
                "suspended",
                "start",
                vec!["start a", "suspend a"],
            ),
            (ObservedState::Running, "running", "unchanged", vec![]),
        ];
        for (now, wanted, action, expected) in cases {
            let plans = plan_of(
                &format!("[instances.a]\nstate = \"{wanted}\"\n"),
                &[on_host("a", now, false)],
                false,
                true,
            );
            assert_eq!(plans[0].action, action, "{now:?} -> {wanted}");
            assert_eq!(steps(&plans[0]), expected, "{now:?} -> {wanted}");
        }
    }

    /// The per-setting table of the README: how a change to each setting is applied.
    #[test]
    fn each_setting_is_applied_as_the_readme_table_says() {
        let cases: [(&str, &str, &str); 14] = [
            (
                "model = \"anthropic/claude-opus-4-6\"",
                "reprovision",
                "provision a --model anthropic/claude-opus-4-6",
            ),
            (
                "skills = [\"github\"]",
                "reprovision",
                "provision a --skills github",
            ),
            (
                "telegram_token = { file = \"/etc/t\" }\ntelegram_users = [5]",
                "reprovision",
                "provision a --telegram-users 5 --secrets-stdin (with TELEGRAM_TOKEN on stdin)",
            ),
            (
                "openclaw_image = \"ghcr.io/openclaw/openclaw:2026.9.6\"",
                "reprovision",
                "provision a --openclaw-image ghcr.io/openclaw/openclaw:2026.9.6",
            ),
            (
                "openclaw_pull = \"missing\"",
                "reprovision",
                "provision a --openclaw-pull missing",
            ),
            (
                "openai_api_key = { env = \"NEW\" }",
                "reprovision",
                "provision a --secrets-stdin (with OPENAI_API_KEY on stdin)",
            ),
            (
                "skip_browser_install = true",
                "reprovision",
                "provision a --skip-browser-install",
            ),
            (
                "allow_private_egress = [\"10.1.0.0/16\"]",
                "reprovision",
                "provision a --allow-private-egress 10.1.0.0/16",
            ),
            ("vm_vcpu = 4", "restart-to-apply", "resize a --vm-vcpu 4"),
            (
                "vm_mem_mib = 4096",
                "restart-to-apply",
                "resize a --vm-mem-mib 4096",
            ),
            (
                "disk_size = \"8G\"",
                "restart-to-apply",
                "resize a --disk-size 8G",
            ),
            ("host_port = 18999", "needs replace", ""),
            ("api_sock = \"/run/a.sock\"", "needs replace", ""),
            ("disk_size = \"2G\"", "needs replace", ""),
        ];
        for (setting, action, step) in cases {
            let plans = plan_of(
                &format!("[instances.a]\n{setting}\n"),
                &[on_host("a", ObservedState::Running, false)],
                false,
                true,
            );
            assert_eq!(plans[0].action, action, "{setting}");
            if step.is_empty() {
                assert!(
                    plans[0].steps.is_empty() && !plans[0].problems.is_empty(),
                    "{setting}"
                );
                assert!(
                    plans[0].problems[0].starts_with("needs replace: "),
                    "{setting}"
                );
            } else {
                assert_eq!(steps(&plans[0]), [step.to_owned()], "{setting}");
                assert!(plans[0].problems.is_empty(), "{setting}");
            }
        }
        // The same values as saved: nothing to do, secrets compared without being shown.
        let plans = plan_of(
            "[instances.a]\nmodel = \"openai/gpt-5.5\"\nopenai_api_key = { env = \"SAVED\" }\nvm_vcpu = 2\ndisk_size = \"4G\"\nhost_port = 18891\n",
            &[on_host("a", ObservedState::Running, false)],
            false,
            true,
        );
        assert_eq!(plans[0].action, "unchanged");
        assert_eq!(plans[0].reason, "running, as declared");
    }

    #[test]
    fn an_instance_whose_last_provisioning_failed_is_provisioned_again_though_nothing_changed() {
        let mut failed = on_host("a", ObservedState::Stopped, false);
        if let Some(state) = failed.fireclaw.as_mut() {
            state.last_provisioning =
                Some(crate::ops::timing::Stopwatch::new(TimedVerb::Provision).finish(false));
        }
        let plans = plan_of(
            "[instances.a]\nstate = \"stopped\"\nmodel = \"openai/gpt-5.5\"\n",
            &[failed],
            false,
            true,
        );
        assert_eq!(plans[0].action, "reprovision");
        assert_eq!(
            plans[0].reason,
            "its last provisioning did not finish, then stopped"
        );
        assert_eq!(
            steps(&plans[0]),
            ["provision a".to_owned(), "stop a".to_owned()]
        );
        // Once it went well, the same file changes nothing.
        let mut good = on_host("a", ObservedState::Stopped, false);
        if let Some(state) = good.fireclaw.as_mut() {
            state.last_provisioning =
                Some(crate::ops::timing::Stopwatch::new(TimedVerb::Provision).finish(true));
        }
        let plans = plan_of("[instances.a]\nstate = \"stopped\"\n", &[good], false, true);
        assert_eq!(plans[0].action, "unchanged");
    }

    #[test]
    fn a_change_on_a_suspended_instance_resumes_it_first_and_suspends_it_again() {
        let plans = plan_of(
            "[instances.a]\nstate = \"suspended\"\nmodel = \"anthropic/claude-opus-4-6\"\nvm_vcpu = 4\n",
            &[on_host("a", ObservedState::Suspended, false)],
            false,
            true,
        );
        assert_eq!(
            steps(&plans[0]),
            [
                "resume a",
                "resize a --vm-vcpu 4",
                "provision a --model anthropic/claude-opus-4-6",
                "suspend a"
            ]
        );
        // A stopped one is booted by provision and stopped again.
        let plans = plan_of(
            "[instances.a]\nstate = \"stopped\"\nskills = [\"tmux\"]\n",
            &[on_host("a", ObservedState::Stopped, false)],
            false,
            true,
        );
        assert_eq!(steps(&plans[0]), ["provision a --skills tmux", "stop a"]);
    }

    #[test]
    fn removal_backs_up_first_and_prune_takes_only_what_apply_made() {
        let observed = [
            on_host("gone", ObservedState::Running, false),
            on_host("old", ObservedState::Suspended, true),
            on_host("hand", ObservedState::Running, false),
        ];
        let plans = plan_of(
            "[instances.gone]\nstate = \"absent\"\n",
            &observed,
            true,
            true,
        );
        let by_id = |id: &str| plans.iter().find(|p| p.id == id).unwrap();
        assert_eq!(by_id("gone").action, "destroy");
        assert_eq!(
            steps(by_id("gone")),
            [
                "stop gone",
                "export gone --quiet --output /var/backups/fc/gone-2026-12-07T030000Z.fireclaw",
                "destroy gone -y"
            ]
        );
        assert_eq!(by_id("old").action, "destroy");
        assert_eq!(
            steps(by_id("old")),
            [
                "export old --quiet --output /var/backups/fc/old-2026-12-07T030000Z.fireclaw",
                "destroy old -y"
            ]
        );
        assert_eq!(by_id("hand").action, "unmanaged");
        assert!(by_id("hand").steps.is_empty());
        // Without --prune apply leaves its own too; --no-backup skips the export.
        let plans = plan_of(
            "[instances.gone]\nstate = \"absent\"\n",
            &observed,
            false,
            false,
        );
        assert_eq!(
            plans.iter().find(|p| p.id == "old").unwrap().action,
            "unmanaged"
        );
        assert_eq!(steps(&plans[0]), ["stop gone", "destroy gone -y"]);
        // Absent and not there: nothing.
        let plans = plan_of("[instances.none]\nstate = \"absent\"\n", &[], false, true);
        assert_eq!(plans[0].action, "unchanged");
    }

    #[test]
    fn a_half_made_instance_converges_when_apply_made_it_and_is_refused_otherwise() {
        let file = "[instances.a]\nopenai_api_key = { env = \"SAVED\" }\n";
        let early = plan_of(
            file,
            &[on_host("a", ObservedState::HalfMade(Phase::Units), true)],
            false,
            true,
        );
        assert_eq!(early[0].action, "create");
        assert_eq!(
            steps(&early[0]),
            [
                "destroy a --force -y",
                "setup --instance a --managed-by-apply --secrets-stdin (with OPENAI_API_KEY on stdin)"
            ]
        );
        let booted = plan_of(
            file,
            &[on_host("a", ObservedState::HalfMade(Phase::Booted), true)],
            false,
            true,
        );
        assert_eq!(booted[0].action, "reprovision");
        assert_eq!(
            steps(&booted[0]),
            ["provision a --secrets-stdin (with OPENAI_API_KEY on stdin)"]
        );
        let by_hand = plan_of(
            file,
            &[on_host("a", ObservedState::HalfMade(Phase::Units), false)],
            false,
            true,
        );
        assert_eq!(by_hand[0].action, "needs replace");
        assert!(
            by_hand[0].problems[0].contains("fireclaw destroy a --force"),
            "{:?}",
            by_hand[0].problems
        );
    }

    #[test]
    fn an_unresolvable_secret_is_a_problem_that_names_its_key() {
        let plans = plan_of(
            "[instances.a]\nopenai_api_key = { env = \"UNSET\" }\n",
            &[],
            false,
            true,
        );
        assert_eq!(
            plans[0].problems,
            ["instances.a.openai_api_key: the environment variable UNSET is not set"]
        );
    }

    #[test]
    fn a_secret_file_must_be_roots_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "sk-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reference = SecretRef::File(file.clone());
        let refused = resolve_secret(&reference).unwrap_err();
        let root = crate::host::probe::is_root();
        assert!(
            refused.contains(if root {
                "readable or writable by others"
            } else {
                "not owned by root"
            }),
            "{refused}"
        );
        std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();
        assert!(
            resolve_secret(&SecretRef::File(dir.path().join("link")))
                .unwrap_err()
                .contains("symbolic link")
        );
        assert!(
            resolve_secret(&SecretRef::File(dir.path().join("none")))
                .unwrap_err()
                .contains("cannot be read")
        );
        if root {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(resolve_secret(&reference).unwrap(), "sk-file");
        }
        assert!(
            resolve_secret(&SecretRef::Env("FIRECLAW_TEST_SURELY_UNSET".into()))
                .unwrap_err()
                .contains("not set")
        );
    }
}
