//! One module per verb; the only place where the domain meets the host adapters. Each command
//! is a linear list of steps.

mod doctor;
mod egress;
mod fleet;
pub mod install;
pub mod lifecycle;
mod setup;
mod token;
mod vm_net;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::host::systemd::Systemctl;
use crate::output::Output;
use crate::settings::Settings;

/// The command already printed its error; `main` only sets the exit code.
#[derive(Debug, thiserror::Error)]
#[error("error already reported")]
pub struct AlreadyReported;

/// A command that needs root was run without it.
#[derive(Debug, thiserror::Error)]
#[error("'fireclaw {command}' needs root: {why}")]
pub struct NeedsRoot {
    pub command: &'static str,
    pub why: &'static str,
}

pub fn run(cli: Cli, output: &mut Output<'_>) -> Result<()> {
    let settings = Settings::from_process_env()?;
    match cli.command {
        Command::Setup(args) => setup::run(&settings, &args, output),
        Command::Token(args) => token::run(&settings, &args.id, output),
        Command::Doctor(args) => doctor::run_doctor(&settings, args.json, output),
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut command, "fireclaw", &mut script);
            output.text(&String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page)?;
            output.text(&String::from_utf8_lossy(&page));
            Ok(())
        }
        Command::Provision(args) => lifecycle::provision(&settings, &args, &Systemctl, output),
        Command::List(args) => fleet::list(&settings, args.json, &Systemctl, output),
        Command::Status(args) => {
            fleet::status(&settings, args.id.as_ref(), args.json, &Systemctl, output)
        }
        Command::Start(args) => {
            lifecycle::start(&settings, &args.id, &args.waits, &Systemctl, output)
        }
        Command::Stop(args) => lifecycle::stop(&settings, &args.id, &Systemctl, output),
        Command::Restart(args) => {
            lifecycle::restart(&settings, &args.id, &args.waits, &Systemctl, output)
        }
        Command::Logs(args) => lifecycle::logs(&settings, &args),
        Command::Shell(args) => lifecycle::shell(&settings, &args),
        Command::Destroy(args) => lifecycle::destroy(&settings, &args, &Systemctl, output),
        Command::Egress(command) => egress::run(&settings, &command, &Systemctl, output),
        Command::Adopt(args) => lifecycle::adopt(&settings, &args.id, &Systemctl, output),
        Command::VmNetUp(args) => vm_net::up(&settings, &args.id, output),
        Command::VmShutdown(args) => vm_net::shutdown(&settings, &args.id, output),
        Command::VmNetDown(args) => vm_net::down(&settings, &args.id),
    }
}
