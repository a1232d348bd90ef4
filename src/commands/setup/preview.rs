//! `setup --dry-run`: reads what it can (other instances' state, listening ports, base images,
//! tools on PATH), renders every artifact exactly as setup would, and prints them with secrets
//! redacted. It writes nothing, so it needs no root; without root it cannot read the instances'
//! 0700 state and says its allocation is provisional. What would make setup fail comes
//! first, apart from the notes, and makes the dry run exit 1.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::host::probe;
use crate::host::rootfs_seed::SEED_DIR;
use crate::instance::layout::public_key_path;
use crate::instance::plan::{Allocation, allocate};
use crate::instance::secrets::{generate_host_key, generate_token};
use crate::instance::spec::SetupSpec;
use crate::instance::values::InstanceId;
use crate::ops::install::{boot_media, check_not_existing};
use crate::output::{Output, error_chain};
use crate::render::artifacts::{
    Artifact, HostTools, InstancePlan, RenderedInstance, render_instance,
};
use crate::render::seed_image::Timestamp;
use crate::settings::Settings;
use crate::store::{scan_instances, taken_by};

/// Whether the existing instances could all be read, which decides if an allocation is final.
enum Visibility {
    Complete,
    Partial(String),
}

fn gather_allocation(settings: &Settings, spec: &SetupSpec) -> Result<(Allocation, Visibility)> {
    let (instances, visibility) = match scan_instances(&settings.paths.state_root) {
        Ok(found) => {
            let unreadable = found.iter().filter(|i| i.env.is_err()).count();
            let visibility = if unreadable == 0 {
                Visibility::Complete
            } else {
                Visibility::Partial(format!(
                    "the state of {unreadable} existing instance(s) under {} could not be read{}",
                    settings.paths.state_root.display(),
                    if probe::is_root() {
                        ""
                    } else {
                        " without root"
                    }
                ))
            };
            (found, visibility)
        }
        Err(_) => (
            Vec::new(),
            Visibility::Partial(format!(
                "{} could not be read{}",
                settings.paths.state_root.display(),
                if probe::is_root() {
                    ""
                } else {
                    " without root"
                }
            )),
        ),
    };
    let (mut taken, _) = taken_by(&instances);
    taken.listening = probe::listening_tcp_ports();
    let allocation = allocate(spec, &settings.network, settings.base_port, &taken)?;
    Ok((allocation, visibility))
}

/// What the dry run found: problems (setup would fail on each) and notes (it would go on).
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    notes: Vec<String>,
}

fn tool_path(name: &str, fallback: &str, findings: &mut Findings) -> PathBuf {
    probe::which(name).unwrap_or_else(|| {
        findings
            .problems
            .push(format!("{name} is not on PATH; install it"));
        PathBuf::from(fallback)
    })
}

fn check_base_image(what: &str, path: &Path, required: bool, findings: &mut Findings) -> bool {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => true,
        Ok(_) => {
            findings
                .problems
                .push(format!("{what} {} is not a regular file", path.display()));
            false
        }
        Err(_) if !required => false,
        // Setup runs as root, so what only root may read is no predicted failure.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            findings.notes.push(format!(
                "{what} {} is not readable without root, so it was not checked",
                path.display()
            ));
            false
        }
        Err(e) => {
            let problem = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "is missing (get the base images with: fireclaw image fetch)".to_owned()
                }
                _ => format!("cannot be read ({e})"),
            };
            findings
                .problems
                .push(format!("{what} {} {problem}", path.display()));
            false
        }
    }
}

/// What setup checks before the dry run begins, as it found them: each a problem for the list
/// when it would refuse, rather than the dry run's end.
pub struct Checks {
    /// `check_kernel`: a refusal, or a warning about a kernel it accepts.
    pub kernel: Result<Option<String>>,
    /// `check_disk_size`.
    pub disk_size: Result<()>,
    /// The provider key's flag and variable, when the key was given on the command line.
    pub key_flag: Option<(&'static str, &'static str)>,
}

pub fn dry_run(
    settings: &Settings,
    spec: &SetupSpec,
    checks: Checks,
    json: bool,
    output: &mut Output<'_>,
) -> Result<()> {
    let mut findings = Findings::default();
    for refusal in [
        check_not_existing(settings, spec).err(),
        checks
            .kernel
            .as_ref()
            .err()
            .map(|e| anyhow::anyhow!("{}", error_chain(e.as_ref()))),
        checks.disk_size.err(),
    ]
    .into_iter()
    .flatten()
    {
        findings.problems.push(error_chain(refusal.as_ref()));
    }
    if let Ok(Some(warning)) = checks.kernel {
        findings.notes.push(warning);
    }
    let (allocation, visibility) = gather_allocation(settings, spec)?;

    check_base_image("base kernel", &spec.base.kernel, true, &mut findings);
    check_base_image("base rootfs", &spec.base.rootfs, true, &mut findings);
    let with_initrd = check_base_image("base initrd", &spec.base.initrd, false, &mut findings);
    // What setup would decide; when it would refuse, the preview still shows the rest.
    let (seed_in_rootfs, base_has_packages) = match boot_media(spec) {
        Ok((media, warning)) => {
            findings.notes.extend(warning);
            (media.seed_in_rootfs, media.base_has_packages)
        }
        Err(error) if spec.base.kernel.is_file() && spec.base.rootfs.is_file() => {
            findings.problems.push(error_chain(error.as_ref()));
            (false, false)
        }
        // Already warned about above.
        Err(_) => (false, false),
    };
    if let Some(available) = probe::mem_available_mib()
        && u64::from(spec.memory.get()) > available
    {
        findings.notes.push(format!(
            "the VM asks for {} MiB but the host has {available} MiB available",
            spec.memory
        ));
    }
    let tools = HostTools {
        fireclaw: std::env::current_exe().context("locate the fireclaw binary")?,
        firecracker: tool_path("firecracker", "/usr/local/bin/firecracker", &mut findings),
        socat: tool_path("socat", "/usr/bin/socat", &mut findings),
    };
    if let Err(hidden) = crate::ops::confine::runnable_by_units(&tools.firecracker) {
        findings.problems.push(hidden.to_string());
    }
    let public_key_path = public_key_path(&spec.ssh_key_path);
    let authorized_key = match std::fs::read_to_string(&public_key_path) {
        Ok(key) => key.trim().to_owned(),
        Err(_) => {
            findings.notes.push(format!(
                "SSH client key {} is missing or unreadable; setup generates it",
                public_key_path.display()
            ));
            format!(
                "<public half of {}, generated at setup>",
                spec.ssh_key_path.display()
            )
        }
    };
    let token = generate_token()?;
    let host_key = generate_host_key(spec.id.as_str())?;
    let uuid = crate::instance::secrets::generate_uuid()?;
    let vmm_account = crate::ops::confine::choose_account(settings, &spec.id)?;
    if let Err(error) = crate::ops::confine::check_kvm_access() {
        findings
            .problems
            .push(crate::output::error_chain(error.as_ref()));
    }
    let rendered = render_instance(&InstancePlan {
        spec,
        allocation: &allocation,
        token: &token,
        host_key: &host_key,
        authorized_key: &authorized_key,
        tools: &tools,
        network: &settings.network,
        paths: &settings.paths,
        with_initrd,
        seed_in_rootfs,
        base_has_packages,
        time: Timestamp::now(),
        vmm_account: &vmm_account,
        uuid: &uuid,
        phase: crate::instance::state::Phase::Allocated,
        managed_by: None,
    })?;
    if json {
        let view = PreviewView::new(spec, &allocation, &visibility, &rendered, &findings);
        output.line(&serde_json::to_string_pretty(&view)?);
    } else {
        output.line("Dry run: nothing was created or changed.");
        print_findings(&findings, output);
        print_preview(settings, spec, &allocation, &visibility, &rendered, output);
        output.line("");
        output.line(&next_step(&spec.id, &findings, checks.key_flag));
    }
    if findings.problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "setup would fail: the problems are listed at the top{}",
            if json { " and in \"problems\"" } else { "" }
        )
    }
}

/// The preview's last line: the verdict again, and what to do now. A provider key given as a
/// flag is not to be given that way again: the real run should take it from the environment.
fn next_step(id: &InstanceId, findings: &Findings, key_flag: Option<(&str, &str)>) -> String {
    match findings.problems.len() {
        0 => match key_flag {
            Some((flag, env)) => format!(
                "Verdict: setup would go on. Next: export {env} and run: sudo --preserve-env={env} fireclaw setup ... (without --dry-run and without {flag}, which ps shows to every user) to create '{id}'."
            ),
            None => format!(
                "Verdict: setup would go on. Next: run the same command as root without --dry-run to create '{id}'."
            ),
        },
        1 => "Verdict: setup would fail (1 problem, listed at the top). Next: fix it, then run this dry run again.".to_owned(),
        count => format!(
            "Verdict: setup would fail ({count} problems, listed at the top). Next: fix them, then run this dry run again."
        ),
    }
}

/// The problems first, then the notes, each under its own heading.
fn print_findings(findings: &Findings, output: &mut Output<'_>) {
    for (heading, items) in [
        ("Setup would fail:", &findings.problems),
        ("Notes:", &findings.notes),
    ] {
        if items.is_empty() {
            continue;
        }
        output.line("");
        output.line(heading);
        for item in items {
            output.line(&format!("  - {item}"));
        }
    }
}

/// `setup --dry-run --json`: the same preview for a script, secrets redacted as on screen.
#[derive(serde::Serialize)]
struct PreviewView<'a> {
    dry_run: bool,
    id: &'a str,
    ip: String,
    port: u16,
    tap: String,
    mac: &'a str,
    /// Set when other instances' state could not be read (not root): the values may be taken.
    provisional: Option<&'a str>,
    copies: Vec<CopyView>,
    /// Files written into the rootfs copy (its seed dir), by name.
    rootfs_seed: Vec<String>,
    files: Vec<FileView<'a>>,
    /// Why setup would fail (the dry run then exits 1); empty when it would go on.
    problems: &'a [String],
    /// What setup would say and go on.
    notes: &'a [String],
}

#[derive(serde::Serialize)]
struct CopyView {
    from: String,
    to: String,
    grow_to: Option<u64>,
}

#[derive(serde::Serialize)]
struct FileView<'a> {
    path: String,
    mode: String,
    /// What may be shown: the text with secrets replaced, or a description.
    content: &'a str,
}

impl<'a> PreviewView<'a> {
    fn new(
        spec: &'a SetupSpec,
        allocation: &'a Allocation,
        visibility: &'a Visibility,
        rendered: &'a RenderedInstance,
        findings: &'a Findings,
    ) -> Self {
        Self {
            dry_run: true,
            id: spec.id.as_str(),
            ip: allocation.ip.to_string(),
            port: allocation.host_port.get(),
            tap: allocation.tap.to_string(),
            mac: &allocation.mac,
            provisional: match visibility {
                Visibility::Complete => None,
                Visibility::Partial(why) => Some(why),
            },
            copies: rendered
                .copies
                .iter()
                .map(|copy| CopyView {
                    from: copy.from.display().to_string(),
                    to: copy.to.display().to_string(),
                    grow_to: copy.grow_to,
                })
                .collect(),
            rootfs_seed: rendered
                .rootfs_seed
                .iter()
                .flat_map(|seed| seed.files.iter().map(|f| format!("{SEED_DIR}/{}", f.name)))
                .collect(),
            files: rendered
                .state
                .iter()
                .chain(&rendered.assets)
                .chain(&rendered.units)
                .map(|artifact| FileView {
                    path: artifact.path.display().to_string(),
                    mode: format!("{:04o}", artifact.mode),
                    content: &artifact.display,
                })
                .collect(),
            problems: &findings.problems,
            notes: &findings.notes,
        }
    }
}

fn print_preview(
    settings: &Settings,
    spec: &SetupSpec,
    allocation: &Allocation,
    visibility: &Visibility,
    rendered: &RenderedInstance,
    output: &mut Output<'_>,
) {
    let provisional = match visibility {
        Visibility::Complete => "",
        Visibility::Partial(_) => "  (provisional)",
    };
    output.line("");
    output.line(&format!("Instance {}", spec.id));
    let rows = [
        ("VM IP", format!("{}{provisional}", allocation.ip)),
        (
            "host port",
            format!("{}{provisional}", allocation.host_port),
        ),
        ("tap", format!("{}{provisional}", allocation.tap)),
        ("MAC", format!("{}{provisional}", allocation.mac)),
        (
            "bridge",
            format!(
                "{} ({})",
                settings.network.bridge, settings.network.bridge_address
            ),
        ),
        ("API socket", spec.api_sock.display().to_string()),
        ("vCPU", spec.vcpu.to_string()),
        ("memory", format!("{} MiB", spec.memory)),
        ("disk", spec.disk_size.to_string()),
        ("model", spec.model.to_string()),
        ("skills", spec.skills.to_csv()),
        ("image", spec.image.to_string()),
        (
            "telegram",
            match &spec.telegram {
                Some(t) => format!("enabled for users {}", t.users.to_csv()),
                None => "disabled (local-only gateway)".into(),
            },
        ),
        (
            "browser",
            if spec.skip_browser_install {
                "not installed"
            } else {
                "Playwright Chromium"
            }
            .into(),
        ),
    ];
    for (name, value) in rows {
        output.line(&format!("  {name:<11} {value}"));
    }
    if let Visibility::Partial(why) = visibility {
        output.line("");
        output.line(&format!(
            "The allocation is provisional: {why}, so an IP or port already assigned may be shown. Run as root for the values setup would take now."
        ));
    }
    output.line("");
    output.line("Would copy:");
    for copy in &rendered.copies {
        let grown = copy
            .grow_to
            .map(|_| format!(", grown to {}", spec.disk_size))
            .unwrap_or_default();
        output.line(&format!(
            "  {} -> {} (0600{grown})",
            copy.from.display(),
            copy.to.display()
        ));
    }
    if let Some(seed) = &rendered.rootfs_seed {
        output.line("");
        output.line(&format!(
            "Would write into {} (with debugfs, then read back):",
            seed.image.display()
        ));
        for file in &seed.files {
            output.line(&format!(
                "  {SEED_DIR}/{} ({:04o}, the bytes of {})",
                file.name,
                file.mode,
                file.host_path.display()
            ));
        }
    }
    output.line("");
    output.line("Would write:");
    for artifact in rendered
        .state
        .iter()
        .chain(&rendered.assets)
        .chain(&rendered.units)
    {
        print_artifact(artifact, output);
    }
}

fn print_artifact(artifact: &Artifact, output: &mut Output<'_>) {
    output.line(&format!(
        "--- {} ({:04o})",
        artifact.path.display(),
        artifact.mode
    ));
    if artifact.display.is_empty() {
        output.line("(empty)");
    } else {
        output.text(&artifact.display);
        if !artifact.display.ends_with('\n') {
            output.line("");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_the_verdict_and_the_next_step() {
        let id: InstanceId = "my-bot".parse().unwrap();
        let mut findings = Findings::default();
        assert_eq!(
            next_step(&id, &findings, None),
            "Verdict: setup would go on. Next: run the same command as root without --dry-run to create 'my-bot'."
        );
        // A key typed on the command line is not to be typed there again.
        let next = next_step(&id, &findings, Some(("--openai-api-key", "OPENAI_API_KEY")));
        assert_eq!(
            next,
            "Verdict: setup would go on. Next: export OPENAI_API_KEY and run: sudo --preserve-env=OPENAI_API_KEY fireclaw setup ... (without --dry-run and without --openai-api-key, which ps shows to every user) to create 'my-bot'."
        );
        findings.problems.push("no firecracker".into());
        assert_eq!(
            next_step(&id, &findings, None),
            "Verdict: setup would fail (1 problem, listed at the top). Next: fix it, then run this dry run again."
        );
        findings.problems.push("no kernel".into());
        assert!(
            next_step(&id, &findings, None).starts_with("Verdict: setup would fail (2 problems")
        );
    }
}
