//! `fireclaw export <ID> [--output FILE|-]` and `export --all --output-dir DIR [--keep N]`:
//! the archive is made by `ops::export`; this checks the arguments, warns when the archive
//! holds secrets in the clear, and prints what was written.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Result, bail};

use crate::cli::ExportArgs;
use crate::host::archive_stream::Recipients;
use crate::host::probe::require_root;
use crate::host::systemd::ServiceManager;
use crate::instance::archive::backup_file_name;
use crate::instance::images::{human_bytes, rfc3339_utc};
use crate::ops::export::{ExportSpec, Exported, Target, export, export_all};
use crate::output::Output;
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    args: &ExportArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let recipients = Recipients {
        keys: args.recipient.clone(),
        files: args.recipients_file.clone(),
    };
    for file in &recipients.files {
        std::fs::metadata(file).map_err(|e| {
            anyhow::anyhow!("the recipients file {} cannot be read: {e}", file.display())
        })?;
    }
    require_root("export", "it reads the instance's root-only state and disk")?;
    if recipients.is_empty() {
        output.warn(
            "the archive holds the agent's secrets (API keys, tokens, its SSH host key) in the clear; keep it like a password, or encrypt it with --recipient",
        );
    }
    let spec = |target: Target| ExportSpec {
        target,
        pause: args.pause,
        with_logs: args.with_logs,
        recipients: recipients.clone(),
    };
    if args.all {
        let Some(dir) = &args.output_dir else {
            bail!("--all needs --output-dir DIR");
        };
        let results = export_all(
            settings,
            dir,
            args.keep.map(|k| k as usize),
            &|path| spec(Target::File(path)),
            services,
            output,
        )?;
        let failed = results.iter().filter(|r| r.error.is_some()).count();
        if args.json {
            output.line(&serde_json::to_string_pretty(&results)?);
        } else {
            for result in &results {
                if let Some(exported) = &result.exported {
                    output.line(&summary(exported));
                }
                for removed in &result.removed {
                    output.line(&format!("  removed the older {}", removed.display()));
                }
            }
            if results.is_empty() {
                output.line("No instances to export.");
            }
        }
        if failed > 0 {
            bail!(
                "{failed} of {} instance(s) were not exported (each is named above)",
                results.len()
            );
        }
        return Ok(());
    }
    let Some(id) = &args.id else {
        bail!("name the instance, or give --all");
    };
    let target = match &args.output {
        Some(path) if path.as_os_str() == "-" => Target::Stdout,
        Some(path) => Target::File(path.clone()),
        None => Target::File(
            std::env::current_dir()
                .unwrap_or_else(|_| PathBuf::from("."))
                .join(backup_file_name(
                    id.as_str(),
                    &rfc3339_utc(SystemTime::now()),
                )),
        ),
    };
    let exported = export(settings, id, &spec(target), services, output)?;
    if args.json {
        output.line(&serde_json::to_string_pretty(&exported)?);
    } else if exported.file.is_some() {
        output.line(&summary(&exported));
    }
    Ok(())
}

fn summary(exported: &Exported) -> String {
    let file = exported
        .file
        .as_ref()
        .map_or_else(|| "stdout".to_owned(), |f| f.display().to_string());
    format!(
        "Exported {} to {file} ({}; its disk: {} of data in {}){}{}.",
        exported.id,
        human_bytes(exported.bytes),
        human_bytes(exported.disk_data_bytes),
        human_bytes(exported.disk_logical_bytes),
        if exported.encrypted {
            ", encrypted"
        } else {
            ""
        },
        exported
            .pause_ms
            .map(|ms| format!(", its VM paused {:.1} s", ms as f64 / 1000.0))
            .unwrap_or_default()
    )
}
