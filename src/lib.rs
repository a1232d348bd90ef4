//! fireclaw: a control plane that runs OpenClaw agent gateways in Firecracker microVMs, one VM
//! per instance, supervised by systemd. `main.rs` hands the arguments to [`main_with_args`],
//! which parses them, runs the command, and turns any error into one line and an exit code.

pub mod cli;
pub mod commands;
pub mod faults;
pub mod guest;
pub mod host;
pub mod instance;
pub mod output;
pub mod render;
pub mod settings;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

/// Exit code for a command line clap refused.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a command that failed.
pub const EXIT_FAILURE: u8 = 1;

pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    use std::io::IsTerminal;
    let live = std::io::stderr().is_terminal();
    let mut output = output::Output::new(&mut stdout, &mut stderr).with_live_progress(live);
    match commands::run(cli, &mut output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<commands::AlreadyReported>().is_some() => {
            ExitCode::from(EXIT_FAILURE)
        }
        Err(error) => {
            // stderr's lock is reentrant, so printing while `output` holds it is fine.
            eprintln!("fireclaw: {}", error_line(&error));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The error chain on one line: what failed, then why. Typed errors already end with their
/// cause's text (`copy A to B: <io error>`), so a cause the line already ends with is not
/// repeated.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Help and version print in full; a refused command line prints clap's first line only
/// (which names the flag and the reason), so every rejection is one line.
fn usage_error(error: &clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            eprintln!("fireclaw: {} (see 'fireclaw help')", one_line(error));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// A refused command line as one line. For a value our validators refused, their message is
/// used instead of clap's, because clap echoes the raw value: it may hold a line break or a
/// secret.
fn one_line(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if error.kind() == ErrorKind::ValueValidation
        && let (Some(ContextValue::String(arg)), Some(source)) = (
            error.get(ContextKind::InvalidArg),
            std::error::Error::source(error),
        )
    {
        return format!("invalid value for {arg}: {source}");
    }
    let rendered = error.to_string();
    let paragraph = rendered.split("\n\n").next().unwrap_or_default();
    let joined: Vec<&str> = paragraph
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let text = joined.join(" ");
    text.strip_prefix("error: ").unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("copy a to b: {source}")]
    struct Typed {
        source: std::io::Error,
    }

    #[test]
    fn the_error_line_names_each_cause_once() {
        let typed = Typed {
            source: std::io::Error::other("disk on fire"),
        };
        let error = anyhow::Error::from(typed).context("setup of 'x' failed");
        assert_eq!(
            error_line(&error),
            "setup of 'x' failed: copy a to b: disk on fire"
        );
        let plain = anyhow::anyhow!("root cause").context("outer");
        assert_eq!(error_line(&plain), "outer: root cause");
    }
}
