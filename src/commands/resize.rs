//! `fireclaw resize <id>`: the work is `ops::resize`; this checks root, locks the instance and
//! says what changed, or that nothing needed to.

use anyhow::Result;

use crate::cli::ResizeArgs;
use crate::host::probe::require_root;
use crate::host::systemd::ServiceManager;
use crate::ops::instance::lock_and_load;
use crate::ops::resize::{ResizeSpec, resize};
use crate::output::Output;
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    args: &ResizeArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let id = &args.id;
    if args.vm_vcpu.is_none() && args.vm_mem_mib.is_none() && args.disk_size.is_none() {
        anyhow::bail!("give what to change: --vm-vcpu, --vm-mem-mib or --disk-size");
    }
    require_root(
        "resize",
        "it rewrites the instance's VM config, units and disk",
    )?;
    let tools = crate::ops::confine::trusted_tools()?;
    let (_lock, loaded) = lock_and_load(settings, id, output)?;
    let spec = ResizeSpec {
        vcpu: args.vm_vcpu,
        memory: args.vm_mem_mib,
        disk: args.disk_size.clone(),
        waits: (&args.waits).into(),
    };
    let resized = resize(settings, &loaded, &spec, &tools, services, output)?;
    if resized.changes.is_empty() {
        output.line(&format!(
            "Instance {id} already has that size; nothing changed."
        ));
        return Ok(());
    }
    output.line(&format!("Instance {id} resized:"));
    for change in &resized.changes {
        output.line(&format!("  - {change}"));
    }
    output.line(&if resized.health.is_some() {
        "It was restarted to apply it and is healthy.".to_owned()
    } else {
        format!("It applies from its next start: fireclaw start {id}")
    });
    Ok(())
}
