//! `fireclaw apply -f FILE [--dry-run] [--prune] [--jobs N] [--json]`: reads the declared
//! instances, prints the plan `ops::apply` makes, and (unless a dry run) carries it out,
//! printing each step as it starts and a line per instance at the end. The dry run exits 1
//! when a planned action would fail, as `setup --dry-run` does; apply exits non-zero when any
//! instance failed.

use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cli::ApplyArgs;
use crate::host::probe::require_root;
use crate::host::systemd::ServiceManager;
use crate::instance::apply_file::parse;
use crate::instance::images::rfc3339_utc;
use crate::ops::apply::{
    Event, Outcome, Planned, Removal, execute, plan, predict_creates, resolve_secret,
};
use crate::ops::observed::observe;
use crate::output::Output;
use crate::settings::Settings;

#[derive(Serialize)]
struct PlanView<'a> {
    file: String,
    dry_run: bool,
    changed: bool,
    instances: &'a [Planned],
    problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcomes: Option<&'a [Outcome]>,
}

pub fn run(
    settings: &Settings,
    args: &ApplyArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("read {}", args.file.display()))?;
    let file = parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    require_root(
        "apply",
        "it compares the declared secrets with the instances' root-only files (a dry run too)",
    )?;
    let removal = Removal {
        backup_dir: if args.no_backup {
            None
        } else {
            Some(
                args.backup_dir
                    .clone()
                    .unwrap_or_else(|| settings.paths.state_root.join("backups")),
            )
        },
        prune: args.prune,
    };
    let observed = observe(settings, services)?;
    let time = rfc3339_utc(std::time::SystemTime::now());
    let mut plans = plan(&file.instances, &observed, &resolve_secret, &removal, &time);
    let fireclaw = std::env::current_exe().context("locate the fireclaw binary")?;
    if args.dry_run {
        predict_creates(&mut plans, &fireclaw);
    }
    let problems: Vec<String> = plans
        .iter()
        .flat_map(|p| {
            p.problems
                .iter()
                .map(move |problem| format!("{}: {problem}", p.id))
        })
        .collect();
    let changed = plans.iter().any(Planned::changes);
    if !args.json {
        print_plan(&args.file, &plans, output);
    }
    if args.dry_run {
        if args.json {
            output.line(&serde_json::to_string_pretty(&PlanView {
                file: args.file.display().to_string(),
                dry_run: true,
                changed,
                instances: &plans,
                problems: problems.clone(),
                outcomes: None,
            })?);
        } else {
            output.line(&verdict(&plans, &problems, true));
        }
        if !problems.is_empty() {
            bail!(
                "apply would fail for {} instance(s): the problems are listed above{}",
                plans.iter().filter(|p| !p.problems.is_empty()).count(),
                if args.json {
                    " and in \"problems\""
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    if !changed && problems.is_empty() {
        if args.json {
            output.line(&serde_json::to_string_pretty(&PlanView {
                file: args.file.display().to_string(),
                dry_run: false,
                changed: false,
                instances: &plans,
                problems,
                outcomes: Some(&[]),
            })?);
        } else {
            output.line(&verdict(&plans, &problems, false));
        }
        return Ok(());
    }
    if let Some(dir) = &removal.backup_dir
        && plans
            .iter()
            .any(|p| p.problems.is_empty() && p.steps.iter().any(|s| s.args[0] == "export"))
    {
        create_backup_dir(dir)?;
    }
    let (sender, receiver) = mpsc::channel();
    let jobs = args.jobs as usize;
    let outcomes = std::thread::scope(|scope| {
        let (plans, fireclaw) = (&plans, &fireclaw);
        // The sender moves into the worker: the channel ends when the work does.
        let worker = scope.spawn(move || execute(plans, jobs, fireclaw, &sender));
        loop {
            match receiver.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(Event::Step { id, step, of }) => {
                    output.progress(&format!("{id}: fireclaw {step} ({of})"));
                }
                Ok(Event::Done(outcome)) => match &outcome.error {
                    None => output.progress(&format!("{}: {} done", outcome.id, outcome.action)),
                    Some(error) => output.warn(&format!(
                        "instance '{}' ({}) failed: {error}",
                        outcome.id, outcome.action
                    )),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        worker.join().unwrap_or_default()
    });
    let failed = outcomes.iter().filter(|o| !o.done).count();
    if args.json {
        output.line(&serde_json::to_string_pretty(&PlanView {
            file: args.file.display().to_string(),
            dry_run: false,
            changed: outcomes.iter().any(|o| o.done),
            instances: &plans,
            problems,
            outcomes: Some(&outcomes),
        })?);
    } else {
        output.line(&format!(
            "Applied: {} changed, {} unchanged, {failed} failed.",
            outcomes.iter().filter(|o| o.done).count(),
            plans
                .iter()
                .filter(|p| !p.changes() && p.problems.is_empty())
                .count()
        ));
    }
    if failed > 0 {
        bail!("{failed} instance(s) did not reach what the file declares (each is named above)");
    }
    Ok(())
}

fn print_plan(file: &std::path::Path, plans: &[Planned], output: &mut Output<'_>) {
    output.line(&format!("Plan for {}:", file.display()));
    let width = plans.iter().map(|p| p.id.len()).max().unwrap_or(0);
    for planned in plans {
        output.line(&format!(
            "  {:width$}  {:16}  {}",
            planned.id, planned.action, planned.reason
        ));
        for step in &planned.steps {
            output.line(&format!("  {:width$}    fireclaw {}", "", step.describe()));
        }
        for problem in &planned.problems {
            output.line(&format!("  {:width$}    problem: {problem}", ""));
        }
    }
}

fn verdict(plans: &[Planned], problems: &[String], dry_run: bool) -> String {
    let changing = plans.iter().filter(|p| p.changes()).count();
    if !problems.is_empty() {
        return format!(
            "Verdict: apply would fail ({} problem(s), listed above); {changing} instance(s) would change.",
            problems.len()
        );
    }
    if changing == 0 {
        let declared = plans.iter().filter(|p| p.action != "unmanaged").count();
        return format!("Nothing to change: {declared} instance(s) as declared.");
    }
    if dry_run {
        format!("Dry run: {changing} instance(s) would change; nothing was changed.")
    } else {
        format!("{changing} instance(s) to change.")
    }
}

fn create_backup_dir(dir: &PathBuf) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create the backup dir {}", dir.display()))
}
