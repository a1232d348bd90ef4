//! `fireclaw setup`: validate (the base kernel too) → warn about memory → lock → allocate and write state, assets and
//! units → boot → wait for SSH → provision → proxy → health gate → summary. A failure before
//! provisioning completes removes exactly this instance; after it, the instance is kept and the
//! error says how to inspect and retry. `--dry-run` is `preview`.

mod preview;

use anyhow::{Context, Result, bail};

use crate::cli::SetupArgs;
use crate::faults::crash_point;
use crate::host::probe;
use crate::host::probe::require_root;
use crate::host::systemd::ServiceManager;
use crate::instance::baked::BUILDER_ID;
use crate::instance::spec::SetupSpec;
use crate::instance::timing::TimedVerb;
use crate::instance::values::PullPolicy;
use crate::ops::install::{
    Origin, boot_media, check_disk_size, check_kernel, check_preconditions, first_boot,
    install_from, roll_back,
};
use crate::ops::instance::{load, lock};
use crate::ops::lifecycle::{STEP_HEALTH, Waits, await_health, report_healthy, start_proxy};
use crate::ops::network::HostSystem;
use crate::ops::timing::Stopwatch;
use crate::output::Output;
use crate::render::artifacts::HostTools;
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    args: &SetupArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    if spec_id_is_builder(args) {
        bail!(
            "instance id '{BUILDER_ID}' is reserved for the builder VM of fireclaw image bake; choose another"
        );
    }
    let mut spec = settings.resolve_setup(args)?;
    let baked = use_baked_base(settings, args, &mut spec)?;
    // Before anything is written (the lock file included), and the same as root or as a user:
    // a kernel the guest cannot boot from is refused by setup and listed by its dry run.
    let kernel = check_kernel(&spec).map(|warning| {
        match (
            warning,
            baked.as_ref().and_then(|b| b.kernel_warning.clone()),
        ) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        }
    });
    if args.dry_run {
        let checks = preview::Checks {
            kernel,
            disk_size: check_disk_size(&spec),
            key_flag: key_given_as_flag(args, &spec),
        };
        return preview::dry_run(settings, &spec, checks, args.json, output);
    }
    let kernel_warning = kernel?;
    check_disk_size(&spec)?;
    require_root(
        "setup",
        "it writes under STATE_ROOT, FC_ROOT and /etc/systemd/system (preview with --dry-run)",
    )?;
    create(
        settings,
        &spec,
        baked.map(|b| (b.name, b.file)),
        kernel_warning,
        Waits::from(&args.waits),
        args.json,
        args.managed_by_apply,
        services,
        output,
    )
}

/// The flag the model's provider key was given with, if it was on the command line (where
/// `ps` shows it), so the dry run's next step can say to use the environment instead.
fn key_given_as_flag(args: &SetupArgs, spec: &SetupSpec) -> Option<(&'static str, &'static str)> {
    use crate::instance::values::Provider;
    let provider = spec.model.provider();
    let given = match provider {
        Provider::OpenAi => args.keys.openai_api_key.is_some(),
        Provider::Anthropic => args.keys.anthropic_api_key.is_some(),
        Provider::MiniMax => args.keys.minimax_api_key.is_some(),
    };
    given.then(|| (provider.key_flag(), provider.key_env()))
}

fn spec_id_is_builder(args: &SetupArgs) -> bool {
    args.instance.as_str() == BUILDER_ID
}

/// A baked base, as setup uses it.
struct BakedBase {
    name: String,
    /// The baked file, so `doctor` finds its record wherever it was baked (`--dir`).
    file: std::path::PathBuf,
    kernel_warning: Option<String>,
}

/// When the base rootfs is a baked image: refuses one whose file no longer matches its record,
/// makes its OpenClaw image the default and pulls that image only when missing (unless the
/// flags say otherwise), and warns about a kernel other than the one it was baked with.
/// `--base-image` names an image that must have been baked; `--verify-base-sha256` checks the
/// file's SHA-256 too.
fn use_baked_base(
    settings: &Settings,
    args: &SetupArgs,
    spec: &mut SetupSpec,
) -> Result<Option<BakedBase>> {
    let record = match crate::ops::baked_base::record_of(&spec.base.rootfs) {
        Ok(record) => record,
        // A record that cannot be read matters only when the user asked for a baked image.
        Err(_) if args.base_image.is_none() => None,
        Err(error) => return Err(error),
    };
    let Some(record) = record else {
        if let Some(name) = &args.base_image {
            bail!(
                "no baked image '{name}' in {} (bake it with: fireclaw image bake --name {name}; see fireclaw image list)",
                settings.base_images_dir.display()
            );
        }
        return Ok(None);
    };
    crate::ops::baked_base::check_file(&spec.base.rootfs, &record, args.verify_base_sha256)?;
    let image_given = args.openclaw_image.is_some() || settings.flag_defaults.image.is_some();
    if !image_given {
        spec.image = record
            .openclaw
            .reference
            .parse()
            .map_err(|e: crate::instance::values::InvalidValue| anyhow::anyhow!(e.0))
            .context("the baked image's OpenClaw reference")?;
    }
    if args.openclaw_pull.is_none() {
        spec.openclaw_pull = if spec.image.as_str() == record.openclaw.reference {
            PullPolicy::Missing
        } else {
            PullPolicy::Always
        };
    }
    Ok(Some(BakedBase {
        file: spec.base.rootfs.clone(),
        kernel_warning: crate::ops::baked_base::kernel_warning(&spec.base.kernel, &record),
        name: record.name,
    }))
}

#[allow(clippy::too_many_arguments)]
fn create(
    settings: &Settings,
    spec: &SetupSpec,
    baked: Option<(String, std::path::PathBuf)>,
    kernel_warning: Option<String>,
    waits: Waits,
    json: bool,
    managed_by_apply: bool,
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
    crate::ops::confine::runnable_by_units(&tools.firecracker)?;
    let (media, media_warning) = boot_media(spec)?;
    if let Some(warning) = media_warning {
        output.warn(&warning);
    }
    // Before the lock: a refused setup leaves no lock file or STATE_ROOT behind.
    check_preconditions(settings, spec, &tools)?;
    // Only now: a warning about the kernel is no preface to an unrelated refusal (an id that
    // exists, an untrusted binary).
    if let Some(warning) = &kernel_warning {
        output.warn(warning);
    }
    let network = HostSystem { settings };
    // The lock serialises this setup with any other lifecycle command on the same id.
    let _lock = lock(settings, id, output)?;
    let mut watch = Stopwatch::new(TimedVerb::Setup);
    output.progress(&format!(
        "{id}: allocating and writing state, assets and units"
    ));
    watch.time("state, assets and units", || {
        install_from(
            settings,
            spec,
            &tools,
            services,
            &network,
            media,
            Origin::Setup { managed_by_apply },
        )
    })?;
    if let Some((name, file)) = baked {
        let paths = crate::instance::layout::StatePaths::new(&settings.paths.state_root, id);
        crate::store::update_fireclaw_state(&paths, |state| {
            state.baked_image = Some(name);
            state.baked_file = Some(file);
        })
        .map_err(anyhow::Error::from)
        .map_err(|error| roll_back(settings, spec, services, &network, error, None, output))?;
    }

    // Until provisioning completes, any failure removes this instance entirely.
    let loaded = load(settings, id)
        .map_err(|error| roll_back(settings, spec, services, &network, error, None, output))?;
    first_boot(
        settings,
        spec,
        &loaded,
        services,
        &loaded.ssh,
        &network,
        waits,
        &mut watch,
        output,
    )?;

    // From here on the instance is kept: it is provisioned and can be inspected and retried.
    let health = watch.time(STEP_HEALTH, || {
        start_proxy(&loaded, services, output).and_then(|()| {
            crash_point("setup:proxy-started");
            await_health(&loaded, &loaded.ssh, waits.health, output)
        })
    });
    let run = watch.finish(health.is_ok());
    // For `status`; a record that cannot be written is not worth failing a healthy setup.
    if let Err(error) = crate::store::update_fireclaw_state(&loaded.paths, |state| {
        state.last_provisioning = Some(run.clone());
    }) {
        output.warn(&format!(
            "could not record the setup's step times: {}",
            crate::output::error_chain(&error)
        ));
    }
    let health = health.with_context(|| format!(
        "instance '{id}' was provisioned and is kept; inspect it with: fireclaw status {id}, retry with: fireclaw provision {id}"
    ))?;
    report_healthy(&loaded, services, &health, &run, json, output)
}
