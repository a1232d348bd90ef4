//! Test tool (not shipped): creates the host side of an instance inside a sandbox through the
//! same library operation `setup` uses (`ops::install::install_instance`), with the binaries the sandbox binds at
//! /opt/fireclaw-test/bin recorded in the units (`FIRECLAW_TEST_FIRECRACKER` names another
//! firecracker binary). Arguments are `setup`'s, e.g.
//! `sandbox_install --instance a --openai-api-key k --disk-size 64M`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fireclaw::cli::{Cli, Command};
use fireclaw::env_vars;
use fireclaw::host::systemd::Systemctl;
use fireclaw::ops::install::{boot_media, install_instance};
use fireclaw::ops::network::HostSystem;
use fireclaw::render::artifacts::HostTools;
use fireclaw::settings::Settings;

fn main() -> ExitCode {
    let mut args = vec!["fireclaw".to_owned(), "setup".to_owned()];
    args.extend(std::env::args().skip(1));
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Command::Setup(setup) = cli.command else {
        unreachable!()
    };
    let bin = PathBuf::from(
        std::env::var(env_vars::FIRECLAW_TEST_BIN).unwrap_or("/opt/fireclaw-test/bin".into()),
    );
    let result = Settings::from_process_env()
        .map_err(anyhow::Error::from)
        .and_then(|settings| {
            let spec = settings.resolve_setup(&setup)?;
            let tools = HostTools {
                fireclaw: bin.join("fireclaw"),
                firecracker: std::env::var_os(env_vars::FIRECLAW_TEST_FIRECRACKER)
                    .map(PathBuf::from)
                    .unwrap_or_else(|| bin.join("firecracker")),
                socat: PathBuf::from("/usr/bin/socat"),
            };
            boot_media(&spec).and_then(|(media, _)| {
                install_instance(
                    &settings,
                    &spec,
                    &tools,
                    &Systemctl,
                    &HostSystem {
                        settings: &settings,
                    },
                    media,
                )
            })
        });
    match result {
        Ok(installed) => {
            println!(
                "{} {} {} {}",
                installed.allocation.ip,
                installed.allocation.host_port,
                installed.allocation.tap,
                installed.allocation.mac
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sandbox_install: {}", fireclaw::error_line(&e));
            ExitCode::from(1)
        }
    }
}
