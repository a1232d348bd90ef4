//! One module per verb: each parses what it was given, calls operations (`crate::ops`) and
//! prints through `Output`. No command imports another; what two verbs share lives in `ops`.

mod adopt;
mod apply;
mod destroy;
mod doctor;
mod egress;
mod export;
mod fleet;
mod host;
mod image;
mod import;
mod logs;
mod provision;
mod resize;
mod setup;
mod shell;
mod start;
mod stop;
mod suspend;
mod token;
mod version;
mod vm_helpers;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command};
use crate::host::systemd::Systemctl;
use crate::ops::instance::explain_interrupt;
use crate::output::Output;
use crate::settings::Settings;

pub fn run(cli: Cli, output: &mut Output<'_>) -> Result<()> {
    // The man page, completions and version describe the command line and the build only: a
    // bad setting in the environment must not keep a person from reading how to fix it.
    match &cli.command {
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut command, "fireclaw", &mut script);
            output.text(&String::from_utf8_lossy(&script));
            return Ok(());
        }
        Command::Man(args) => return man(args, output),
        Command::Version(args) => return version::run(args.json, output),
        _ => {}
    }
    let settings = Settings::from_process_env()?;
    let services = Systemctl;
    // Lifecycle commands finish their current step on Ctrl-C or SIGTERM, then stop: setup
    // before provisioning rolls back, and the others (named here with their instance) say how
    // to finish. What the remaining commands would leave needs no care.
    let finishable = match &cli.command {
        Command::Start(args) => Some(args.start.id.clone()),
        Command::Restart(args) => Some(args.id.clone()),
        Command::Suspend(args) => args.id.clone(),
        Command::Resume(args) => args.id.clone(),
        Command::Stop(args) => Some(args.id.clone()),
        Command::Provision(args) => Some(args.id.clone()),
        Command::Resize(args) => Some(args.id.clone()),
        // Asked on a terminal, a destroy must stay stoppable at its question.
        Command::Destroy(args) if args.yes || args.force => Some(args.id.clone()),
        _ => None,
    };
    let fleet_wide = matches!(&cli.command, Command::Suspend(a) if a.all)
        || matches!(&cli.command, Command::Resume(a) if a.all);
    // A bake, an export and an import clean up after a Ctrl-C: the builder, a paused VM, the
    // partial files. An apply starts no new step, and the verbs it runs finish theirs.
    let baking = matches!(
        &cli.command,
        Command::Image(crate::cli::ImageCommand::Bake(_))
            | Command::Export(_)
            | Command::Import(_)
            | Command::Apply(_)
    );
    if finishable.is_some() || fleet_wide || baking || matches!(cli.command, Command::Setup(_)) {
        crate::host::interrupt::catch().context("catch Ctrl-C and SIGTERM")?;
    }
    let verb = verb_name(&cli.command);
    let result = dispatch(cli, &settings, &services, output);
    match (result, finishable) {
        (Err(error), Some(id)) => Err(explain_interrupt(error, verb, &id)),
        (result, _) => result,
    }
}

/// The verb as typed, for messages.
fn verb_name(command: &Command) -> &'static str {
    match command {
        Command::Start(_) => "start",
        Command::Restart(_) => "restart",
        Command::Stop(_) => "stop",
        Command::Suspend(_) => "suspend",
        Command::Resume(_) => "resume",
        Command::Provision(_) => "provision",
        Command::Resize(_) => "resize",
        Command::Destroy(_) => "destroy",
        _ => "",
    }
}

fn dispatch(
    cli: Cli,
    settings: &Settings,
    services: &Systemctl,
    output: &mut Output<'_>,
) -> Result<()> {
    match cli.command {
        Command::Setup(mut args) => {
            if args.secrets_stdin {
                take_handed_secrets(&mut args.keys, &mut args.telegram_token)?;
            }
            setup::run(settings, &args, services, output)
        }
        Command::Token(args) => token::run(settings, &args.id, output),
        Command::Doctor(args) => doctor::run(settings, args.json, services, output),
        Command::Provision(mut args) => {
            if args.secrets_stdin {
                take_handed_secrets(&mut args.keys, &mut args.telegram_token)?;
            }
            provision::run(settings, &args, services, output)
        }
        Command::Resize(args) => resize::run(settings, &args, services, output),
        Command::Apply(args) => apply::run(settings, &args, services, output),
        Command::List(args) => fleet::list(settings, args.json, services, output),
        Command::Status(args) => {
            fleet::status(settings, args.id.as_ref(), args.json, services, output)
        }
        Command::Start(args) => start::start(settings, &args.start, args.cold, services, output),
        Command::Suspend(args) => suspend::suspend(settings, &args, services, output),
        Command::Resume(args) => suspend::resume(settings, &args, services, output),
        Command::Stop(args) => stop::run(settings, &args.id, services, output),
        Command::Restart(args) => start::restart(settings, &args, services, output),
        Command::Logs(args) => logs::run(settings, &args, services, output),
        Command::Shell(args) => shell::run(settings, &args, services, output),
        Command::Destroy(args) => destroy::run(settings, &args, services, output),
        Command::Egress(command) => egress::run(settings, &command, services, output),
        Command::Image(command) => image::run(settings, &command, services, output),
        Command::Host(command) => host::run(settings, &command, services, output),
        Command::Adopt(args) => adopt::run(settings, &args.id, services, output),
        Command::Export(args) => export::run(settings, &args, services, output),
        Command::Import(args) => import::run(settings, &args, services, output),
        Command::VmNetUp(args) => {
            vm_helpers::net_up_command(settings, &args.id, args.in_unit, services, output)
        }
        Command::VmShutdown(args) => vm_helpers::shutdown(settings, &args.id, output),
        Command::VmResume(args) => vm_helpers::resume_command(settings, &args.id, services, output),
        Command::VmNetDown(args) => vm_helpers::net_down_command(settings, &args.id),
        Command::Completions(_) | Command::Man(_) | Command::Version(_) => Ok(()),
    }
}

/// The secrets `apply` hands to the setup or provision it runs (`--secrets-stdin`), in place
/// of their flags.
fn take_handed_secrets(
    keys: &mut crate::cli::KeyArgs,
    telegram_token: &mut Option<crate::instance::values::Secret>,
) -> Result<()> {
    let handed = handed_secrets()?;
    for (slot, value) in [
        (&mut keys.anthropic_api_key, handed.anthropic_api_key),
        (&mut keys.openai_api_key, handed.openai_api_key),
        (&mut keys.minimax_api_key, handed.minimax_api_key),
        (telegram_token, handed.telegram_token),
    ] {
        if value.is_some() {
            *slot = value;
        }
    }
    Ok(())
}

fn handed_secrets() -> Result<crate::instance::secrets::HandedSecrets> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .take(64 << 10)
        .read_to_string(&mut text)
        .context("read the handed secrets on stdin")?;
    crate::instance::secrets::parse_handed_secrets(&text)
        .map_err(|e| anyhow::anyhow!("--secrets-stdin: {}", e.0))
}

/// A page on a terminal goes through `man -l -`, which renders it for reading, when `man` is
/// there; anywhere else (a pipe, a file, no `man`) the roff itself is printed.
fn show_page(roff: &str, output: &mut Output<'_>) {
    use std::io::{IsTerminal, Write};
    if std::io::stdout().is_terminal()
        && let Some(man) = crate::host::probe::which("man")
        && let Ok(mut child) = std::process::Command::new(man)
            .args(["-l", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
    {
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(roff.as_bytes()));
        if child.wait().is_ok_and(|status| status.success()) && written.is_some_and(|w| w.is_ok()) {
            return;
        }
    }
    output.text(roff);
}

/// `fireclaw man [VERB...]` prints a page; `--dir` writes them all, each in full or not at all.
fn man(args: &crate::cli::ManArgs, output: &mut Output<'_>) -> Result<()> {
    use anyhow::Context;
    let command = <Cli as clap::CommandFactory>::command;
    let Some(dir) = &args.dir else {
        let page = crate::render::man::page(command(), &args.verbs)?.with_context(|| {
            format!(
                "no man page for '{}'; the verbs are listed by: fireclaw help",
                args.verbs.join(" ")
            )
        })?;
        show_page(&page.roff, output);
        return Ok(());
    };
    let pages = crate::render::man::pages(command())?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for page in &pages {
        let path = dir.join(&page.file_name);
        crate::store::write_atomic(&path, page.roff.as_bytes(), 0o644)
            .with_context(|| format!("write {}", path.display()))?;
    }
    output.line(&format!(
        "Wrote {} man pages into {} (fireclaw.1 and one per verb).",
        pages.len(),
        dir.display()
    ));
    Ok(())
}
