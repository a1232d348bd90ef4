//! fireclaw: a control plane that runs OpenClaw agent gateways in Firecracker microVMs, one VM
//! per instance, supervised by systemd. `main.rs` hands the arguments to [`main_with_args`],
//! which parses them, runs the command, and turns any error into one line and an exit code.

pub mod cli;
pub mod commands;
pub mod env_vars;
pub mod faults;
pub mod guest;
pub mod host;
pub mod instance;
pub mod ops;
pub mod output;
pub mod render;
pub mod settings;
pub mod store;

/// Guest kernel images for the unit tests, shared with the integration tests.
#[cfg(test)]
#[path = "../tests/support/kernel_fixture.rs"]
pub(crate) mod kernel_fixture;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::error::ErrorKind;

/// Exit code for a command line clap refused.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a command that failed.
pub const EXIT_FAILURE: u8 = 1;

pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = help_as_flag(args.into_iter().collect());
    let matches = match <cli::Cli as clap::CommandFactory>::command().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(error) => return usage_error(&error, &args),
    };
    // The verb as typed, a nested one whole ("egress show"), for "'fireclaw <verb>' needs root".
    let verb = match matches.subcommand() {
        Some((name, sub)) => match sub.subcommand_name() {
            Some(nested) => format!("{name} {nested}"),
            None => name.to_owned(),
        },
        None => String::new(),
    };
    let cli = match <cli::Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error, &args),
    };
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    use std::io::IsTerminal;
    let live = std::io::stderr().is_terminal();
    let mut output = output::Output::new(&mut stdout, &mut stderr)
        .with_live_progress(live)
        .quiet(cli.quiet);
    match commands::run(cli, &mut output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<output::AlreadyReported>().is_some() => {
            ExitCode::from(EXIT_FAILURE)
        }
        Err(error) => {
            // The live line goes first, so the error starts a line of its own.
            output.clear_live_line();
            // stderr's lock is reentrant, so printing while `output` holds it is fine.
            eprintln!("fireclaw: {}", report_line(&error, &verb));
            for line in output::detail_lines(error.as_ref()) {
                eprintln!("  {line}");
            }
            if host::interrupt::caused(&error) {
                ExitCode::from(host::interrupt::EXIT_INTERRUPTED)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

/// The error's one line. A command run without root that was refused a file says so the way
/// `setup` does (`'fireclaw list' needs root: run it with sudo (...)`), whatever step met the
/// refusal, naming what was refused in words rather than with the OS's error number.
fn report_line(error: &anyhow::Error, verb: &str) -> String {
    let refused = host::probe::refused_access(error);
    let already = error
        .chain()
        .any(|cause| cause.downcast_ref::<host::probe::NeedsRoot>().is_some());
    if refused && !already && !host::probe::is_root() {
        let what: Vec<String> = error
            .chain()
            .filter(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_none_or(|io| io.kind() != std::io::ErrorKind::PermissionDenied)
            })
            .map(ToString::to_string)
            .filter(|text| !text.is_empty())
            .collect();
        format!(
            "'fireclaw {verb}' needs root: run it with sudo ({}: permission denied)",
            what.join(": ")
        )
    } else {
        error_line(error)
    }
}

/// The error chain on one line: what failed, then why, each cause once (see
/// [`output::error_chain`]).
pub fn error_line(error: &anyhow::Error) -> String {
    output::error_chain(error.as_ref())
}

/// `fireclaw help <verb>...` as `fireclaw <verb>... --help`: the same page, and a mistyped verb
/// gets clap's suggestion as it does without `help`. `help --help` and `help help` are plain
/// `help`.
fn help_as_flag(args: Vec<OsString>) -> Vec<OsString> {
    if args.get(1).is_none_or(|verb| verb != "help") {
        return args;
    }
    let mut rewritten: Vec<OsString> = args[..1].to_vec();
    rewritten.extend(
        args[2..]
            .iter()
            .filter(|a| *a != "--help" && *a != "-h" && *a != "help")
            .cloned(),
    );
    rewritten.push("--help".into());
    rewritten
}

/// The verbs named on a command line, as far as they are verbs of fireclaw's (`["image",
/// "fetch"]`), for pointing a refused command line at its own help.
fn verb_path(args: &[OsString]) -> Vec<String> {
    let mut command = <cli::Cli as clap::CommandFactory>::command();
    let mut path = Vec::new();
    for arg in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if arg.starts_with('-') {
            continue;
        }
        match command.find_subcommand(arg) {
            Some(sub) => {
                path.push(sub.get_name().to_owned());
                command = sub.clone();
            }
            None => break,
        }
    }
    path
}

/// Help and version print in full; a refused command line prints clap's first line only
/// (which names the flag and the reason) and the help to read, so every rejection is one line.
fn usage_error(error: &clap::Error, args: &[OsString]) -> ExitCode {
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
            let verbs = verb_path(args);
            let help = if verbs.is_empty() {
                "fireclaw help".to_owned()
            } else {
                format!("fireclaw help {}", verbs.join(" "))
            };
            eprintln!(
                "fireclaw: {} (see '{help}')",
                setup_hint(error, &verbs).unwrap_or_else(|| one_line(error))
            );
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `fireclaw setup my-bot`, as every other verb takes its id: the flag setup wants instead.
fn setup_hint(error: &clap::Error, verbs: &[String]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    if verbs != ["setup"] || error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(given)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    if given.starts_with('-') {
        return None;
    }
    let id: instance::values::InstanceId = given.parse().ok()?;
    Some(format!(
        "unexpected argument '{id}'; did you mean: fireclaw setup --instance {id}"
    ))
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
    let text = text.strip_prefix("error: ").unwrap_or(&text).to_owned();
    // clap's "a similar subcommand/argument exists" tip is in the paragraphs dropped above.
    // clap lists candidates from the least to the most similar.
    for kind in [ContextKind::SuggestedSubcommand, ContextKind::SuggestedArg] {
        let best = match error.get(kind) {
            Some(ContextValue::String(one)) => Some(one.as_str()),
            Some(ContextValue::Strings(many)) => many.last().map(String::as_str),
            _ => None,
        };
        if let Some(best) = best {
            return format!("{text}; did you mean '{best}'?");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("copy a to b")]
    struct Copy {
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("write the assets of 'x'")]
    struct Assets {
        #[source]
        source: Copy,
    }

    #[test]
    fn the_error_line_names_each_cause_exactly_once() {
        let nested = Assets {
            source: Copy {
                source: std::io::Error::other("disk on fire"),
            },
        };
        let error = anyhow::Error::from(nested).context("setup of 'x' failed");
        let line = error_line(&error);
        assert_eq!(
            line,
            "setup of 'x' failed: write the assets of 'x': copy a to b: disk on fire"
        );
        for cause in [
            "setup of 'x' failed",
            "write the assets",
            "copy a to b",
            "disk on fire",
        ] {
            assert_eq!(line.matches(cause).count(), 1, "{cause} in {line}");
        }
        let plain = anyhow::anyhow!("root cause").context("outer");
        assert_eq!(error_line(&plain), "outer: root cause");
    }

    #[test]
    fn typed_errors_of_every_layer_carry_their_cause_only_as_source() {
        // One error of each layer's typed enums, wrapped as the operations wrap them: if any
        // message embedded its source, the cause would show twice.
        let io = || std::io::Error::other("EIO");
        let errors: Vec<anyhow::Error> = vec![
            crate::store::StoreError::WriteFile {
                path: "/s/.env".into(),
                source: io(),
            }
            .into(),
            crate::host::process::ProcessError::Spawn {
                program: "iptables".into(),
                source: io(),
            }
            .into(),
            crate::host::tap::TapError::Create {
                name: "tx".into(),
                source: io(),
            }
            .into(),
            crate::guest::ssh::SshError::Spawn(io()).into(),
            crate::settings::SettingsError {
                name: "BASE_PORT",
                problem: crate::instance::values::InvalidValue("EIO".into()),
            }
            .into(),
            crate::instance::spec::SpecError::Environment {
                name: "MODEL",
                problem: crate::instance::values::InvalidValue("EIO".into()),
            }
            .into(),
            crate::store::StoreError::Lock {
                path: "/s/.locks/a.lock".into(),
                source: io(),
            }
            .into(),
            crate::host::assets::AssetError::OpenSource {
                path: "/base/rootfs.ext4".into(),
                source: io(),
            }
            .into(),
            crate::host::firecracker_api::ApiError::Io {
                request: "PUT /actions".into(),
                socket: "/fc/a/firecracker.socket".into(),
                source: io(),
            }
            .into(),
            crate::host::netlink::NetlinkError::Request {
                operation: "create bridge fc-br0".into(),
                source: io(),
            }
            .into(),
            crate::host::netlink::NetlinkError::Open(io()).into(),
            crate::host::tap::TapError::OpenTun(io()).into(),
            crate::host::trust::UntrustedPath::Unreadable {
                what: "firecracker".into(),
                path: "/usr/bin/firecracker".into(),
                checked: "/usr/bin/firecracker".into(),
                problem: io(),
            }
            .into(),
            crate::ops::lifecycle::SshTimeout {
                id: "a".parse().unwrap(),
                secs: 5,
                last: crate::guest::ssh::SshError::Spawn(io()),
            }
            .into(),
        ];
        for error in errors {
            let line = error_line(&error.context("outer step"));
            assert_eq!(line.matches("EIO").count(), 1, "{line}");
            assert!(line.starts_with("outer step: "), "{line}");
        }
    }
}
