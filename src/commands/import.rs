//! `fireclaw import <FILE|-> [--check] [--start]`: the work is `ops::import`; this picks the
//! input, checks root, and prints the manifest or what was made and how to start it.

use anyhow::{Context, Result};

use crate::cli::ImportArgs;
use crate::host::probe::{self, require_root};
use crate::host::systemd::ServiceManager;
use crate::instance::images::human_bytes;
use crate::ops::import::{ImportSpec, Input, Report, check, import};
use crate::ops::lifecycle::Waits;
use crate::output::Output;
use crate::render::artifacts::HostTools;
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    args: &ImportArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let input = if args.archive.as_os_str() == "-" {
        Input::Stdin
    } else {
        Input::File(args.archive.clone())
    };
    let spec = ImportSpec {
        input,
        identity: args.identity.clone(),
        keep_private_egress: args.keep_private_egress,
        start: args.start,
        waits: Waits::from(&args.waits),
    };
    if args.check {
        let report = check(&spec, output)?;
        print(&report, args.json, true, output)?;
        return Ok(());
    }
    require_root(
        "import",
        "it writes under STATE_ROOT, FC_ROOT and /etc/systemd/system",
    )?;
    let tools = HostTools {
        fireclaw: std::env::current_exe().context("locate the fireclaw binary")?,
        firecracker: probe::which("firecracker")
            .context("firecracker is not on PATH; install it (see fireclaw doctor)")?,
        socat: probe::which("socat").context("socat is not on PATH; install it")?,
    };
    crate::ops::confine::runnable_by_units(&tools.firecracker)?;
    let report = import(settings, &spec, &tools, services, output)?;
    print(&report, args.json, false, output)
}

fn print(report: &Report, json: bool, check: bool, output: &mut Output<'_>) -> Result<()> {
    if json {
        output.line(&serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let id = &report.id;
    if check {
        output.line(&format!(
            "The archive of instance {id} is whole: every member matches its checksum."
        ));
    } else if report.started {
        output.line(&format!("Instance {id} is imported and healthy."));
    } else {
        output.line(&format!("Instance {id} is imported and stopped."));
    }
    output.line(&format!("  uuid        {}", report.uuid));
    output.line(&format!(
        "  made by     {} on {}, {}",
        report.made_by, report.source_host, report.created_at
    ));
    output.line(&format!(
        "  encrypted   {}",
        if report.encrypted { "yes" } else { "no" }
    ));
    for member in &report.members {
        let logical = member
            .logical_size
            .map(|l| format!(" of {}", human_bytes(l)))
            .unwrap_or_default();
        output.line(&format!(
            "  member      {} ({}{logical})",
            member.name,
            human_bytes(member.size)
        ));
    }
    if let (Some(ip), Some(port)) = (&report.ip, report.port) {
        output.line(&format!("  VM IP       {ip}"));
        output.line(&format!("  proxy       http://127.0.0.1:{port}/"));
    }
    if !check && !report.started {
        output.line(&format!("Start it with: fireclaw start {id}"));
    }
    Ok(())
}
