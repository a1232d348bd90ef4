//! `fireclaw setup`: validate → warn about memory → lock → allocate and write state → assets →
//! units → boot → wait for SSH → provision → proxy → health gate → summary. A failure before
//! provisioning completes removes exactly this instance; after it, the instance is kept and the
//! error says how to inspect and retry. `--dry-run` reads what it can (other instances' state, listening ports, base images, tools on PATH),
//! renders every artifact exactly as setup would, and prints them with secrets redacted. It
//! writes nothing, so it needs no root; without root it cannot read the instances' 0700 state
//! and says its allocation is provisional.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use std::time::Duration;

use super::install::{check_not_existing, install_instance, teardown_instance};
use super::{NeedsRoot, lifecycle};
use crate::cli::{SetupArgs, WaitArgs};
use crate::faults::crash_point;
use crate::guest::provision::provision_guest;
use crate::host::probe;
use crate::host::systemd::{ServiceManager, Systemctl};
use crate::instance::plan::{Allocation, allocate};
use crate::instance::secrets::{generate_host_key, generate_token};
use crate::instance::spec::SetupSpec;
use crate::instance::state::Phase;
use crate::instance::store::{scan_instances, set_phase, taken_by};
use crate::output::Output;
use crate::render::artifacts::{
    Artifact, HostTools, InstancePlan, RenderedInstance, render_instance,
};
use crate::render::seed_image::Timestamp;
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &SetupArgs, output: &mut Output<'_>) -> Result<()> {
    let spec = settings.resolve_setup(args)?;
    if args.dry_run {
        return dry_run(settings, &spec, output);
    }
    if !probe::is_root() {
        return Err(NeedsRoot {
            command: "setup",
            why: "it writes under STATE_ROOT, FC_ROOT and /etc/systemd/system (preview with --dry-run)",
        }
        .into());
    }
    create(settings, &spec, &args.waits, &Systemctl, output)
}

fn create(
    settings: &Settings,
    spec: &SetupSpec,
    waits: &WaitArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let id = &spec.id;
    if let Some(available) = probe::mem_available_mib()
        && u64::from(spec.memory.get()) > available
    {
        output.warn(&format!(
            "the VM asks for {} MiB but the host has only {available} MiB available",
            spec.memory
        ));
    }
    let tools = HostTools {
        fireclaw: std::env::current_exe().context("locate the fireclaw binary")?,
        firecracker: probe::which("firecracker")
            .context("firecracker is not on PATH; install it (see fireclaw doctor)")?,
        socat: probe::which("socat").context("socat is not on PATH; install it")?,
    };
    // The lock serialises this setup with any other lifecycle command on the same id.
    let _lock = lifecycle::lock(settings, id)?;
    output.progress(&format!(
        "{id}: allocating and writing state, assets and units"
    ));
    install_instance(settings, spec, &tools, services)?;

    // Until provisioning completes, any failure removes this instance entirely.
    let before_provisioned = (|| -> Result<lifecycle::Loaded> {
        let loaded = lifecycle::load(settings, id)?;
        output.progress(&format!("{id}: booting the VM"));
        services.enable_now(&[loaded.units.vm.as_str()])?;
        crash_point("setup:vm-started");
        output.progress(&format!("{id}: waiting for SSH"));
        lifecycle::wait_for_ssh(
            &loaded,
            services,
            Duration::from_secs(waits.ssh_timeout),
            output,
        )?;
        set_phase(&loaded.paths, Phase::Booted)?;
        crash_point("setup:booted");
        output.progress(&format!("{id}: provisioning the guest"));
        let vars = std::fs::read_to_string(&loaded.paths.vars)
            .with_context(|| format!("read {}", loaded.paths.vars.display()))?;
        provision_guest(&loaded.ssh, &vars)?;
        set_phase(&loaded.paths, Phase::Provisioned)?;
        crash_point("setup:provisioned");
        Ok(loaded)
    })();
    let loaded = match before_provisioned {
        Ok(loaded) => loaded,
        Err(error) => {
            output.progress(&format!("{id}: setup failed; removing the instance"));
            if let Err(cleanup) = teardown_instance(settings, id, Some(&spec.api_sock), services) {
                return Err(error.context(format!(
                    "removing the half-made instance failed too ({cleanup:#}); clean up with: fireclaw destroy {id} --force"
                )));
            }
            return Err(error.context(format!("setup of '{id}' failed and was rolled back")));
        }
    };

    // From here on the instance is kept: it is provisioned and can be inspected and retried.
    let after = (|| -> Result<_> {
        output.progress(&format!("{id}: starting the proxy"));
        services.enable_now(&[loaded.units.proxy.as_str()])?;
        crash_point("setup:proxy-started");
        output.progress(&format!("{id}: waiting for health"));
        lifecycle::health_gate(&loaded, Duration::from_secs(waits.health_timeout), output)
    })();
    match after {
        Ok(health) => {
            lifecycle::print_summary(&loaded, services, &health, output);
            Ok(())
        }
        Err(error) => Err(error.context(format!(
            "instance '{id}' was provisioned and is kept; inspect it with: fireclaw status {id}, retry with: fireclaw provision {id}"
        ))),
    }
}

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

fn tool_path(name: &str, fallback: &str, warnings: &mut Vec<String>) -> PathBuf {
    probe::which(name).unwrap_or_else(|| {
        warnings.push(format!(
            "{name} is not on PATH; setup would fail until it is installed"
        ));
        PathBuf::from(fallback)
    })
}

fn check_base_image(what: &str, path: &Path, required: bool, warnings: &mut Vec<String>) -> bool {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => true,
        Ok(_) => {
            warnings.push(format!("{what} {} is not a regular file", path.display()));
            false
        }
        Err(_) if !required => false,
        Err(e) => {
            let problem = match e.kind() {
                std::io::ErrorKind::NotFound => "is missing".to_owned(),
                std::io::ErrorKind::PermissionDenied => "is not readable without root".to_owned(),
                _ => format!("cannot be read ({e})"),
            };
            warnings.push(format!(
                "{what} {} {problem}; setup would fail",
                path.display()
            ));
            false
        }
    }
}

fn dry_run(settings: &Settings, spec: &SetupSpec, output: &mut Output<'_>) -> Result<()> {
    check_not_existing(settings, spec)?;
    let (allocation, visibility) = gather_allocation(settings, spec)?;
    let mut warnings = Vec::new();

    check_base_image("base kernel", &spec.base.kernel, true, &mut warnings);
    check_base_image("base rootfs", &spec.base.rootfs, true, &mut warnings);
    let with_initrd = check_base_image("base initrd", &spec.base.initrd, false, &mut warnings);
    if let Some(available) = probe::mem_available_mib()
        && u64::from(spec.memory.get()) > available
    {
        warnings.push(format!(
            "the VM asks for {} MiB but the host has {available} MiB available",
            spec.memory
        ));
    }
    let tools = HostTools {
        fireclaw: std::env::current_exe().context("locate the fireclaw binary")?,
        firecracker: tool_path("firecracker", "/usr/local/bin/firecracker", &mut warnings),
        socat: tool_path("socat", "/usr/bin/socat", &mut warnings),
    };
    let public_key_path = {
        let mut path = spec.ssh_key_path.clone().into_os_string();
        path.push(".pub");
        PathBuf::from(path)
    };
    let authorized_key = match std::fs::read_to_string(&public_key_path) {
        Ok(key) => key.trim().to_owned(),
        Err(_) => {
            warnings.push(format!(
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
        time: Timestamp::now(),
    })?;
    print_preview(settings, spec, &allocation, &visibility, &rendered, output);
    for warning in &warnings {
        output.warn(warning);
    }
    Ok(())
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
    output.line("Dry run: nothing was created or changed.");
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
