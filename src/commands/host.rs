//! `fireclaw host cleanup`: when the host is done with fireclaw, remove what the last instance
//! left shared (see `ops::network::remove_shared`) and what an interrupted bake or import left,
//! and say what stays and why.

use anyhow::Result;

use crate::cli::HostCommand;
use crate::host::probe::require_root;
use crate::ops::network::remove_shared;
use crate::output::{Output, error_chain};
use crate::settings::Settings;

pub fn run(
    settings: &Settings,
    command: &HostCommand,
    services: &dyn crate::host::systemd::ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    match command {
        HostCommand::Cleanup => {
            require_root(
                "host cleanup",
                "it removes the bridge, firewall chains and files under STATE_ROOT",
            )?;
            // A bake or fetch at work keeps what it uses (a running bake's builder is an
            // instance on the shared network, so that stays too); the rest of the cleanup goes on.
            let baking = crate::ops::builder::bake_running(settings);
            if baking {
                output.warn(&format!(
                    "an image bake is running: its builder VM ({}) and the shared network it uses stay",
                    crate::instance::baked::BUILDER_ID
                ));
            } else if crate::ops::builder::remove_builder(settings, services, output)? {
                output.line(&format!(
                    "removed the builder VM ({}) an interrupted image bake left",
                    crate::instance::baked::BUILDER_ID
                ));
            }
            match crate::ops::builder::remove_image_leftovers(&settings.base_images_dir) {
                Ok(removed) => {
                    for done in removed {
                        output.line(&done);
                    }
                }
                Err(error) if crate::ops::builder::images_busy(&error) => {
                    output.warn(&format!(
                        "{}: its leftovers stay",
                        error_chain(error.as_ref())
                    ));
                }
                Err(error) => return Err(error),
            }
            // What a killed import left: its staging dir and an instance still `importing`
            // (a live import holds both locks, so its own stay).
            let network = crate::ops::network::HostSystem { settings };
            for done in crate::ops::import::remove_leftovers(settings, services, &network)? {
                output.line(&format!("removed {done}"));
            }
            if baking {
                return Ok(());
            }
            let report = remove_shared(settings)?;
            if report.removed.is_empty() {
                output.line("Nothing of fireclaw's was left on the host network.");
            }
            for removed in &report.removed {
                output.line(&format!("removed {removed}"));
            }
            for left in &report.left {
                output.line(&format!("left {left}"));
            }
            Ok(())
        }
        HostCommand::Facts(args) => {
            let facts = crate::ops::facts::facts(settings, services)?;
            if args.json {
                output.line(&serde_json::to_string_pretty(&facts)?);
                return Ok(());
            }
            let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
            output.line(&format!(
                "fireclaw {}, firecracker {}, KVM {}",
                facts.fireclaw_version,
                facts.firecracker_version.as_deref().unwrap_or("missing"),
                if facts.kvm { "present" } else { "missing" }
            ));
            output.line(&format!(
                "memory: {} MiB total, {} MiB committed to running and suspended instances ({} MiB suspended), {} MiB uncommitted; stopped instances {} MiB",
                facts.memory.total_mib,
                facts.memory.committed_mib,
                facts.memory.suspended_mib,
                facts.memory.uncommitted_mib,
                facts.memory.stopped_mib
            ));
            output.line(&format!(
                "disk: {:.1} GiB free under {}",
                gib(facts.disk.free_bytes),
                facts.disk.fc_root
            ));
            output.line(&format!(
                "addresses: {} free in {}; ports: {} free above {}",
                facts.addresses.free, facts.addresses.subnet, facts.ports.free, facts.ports.base
            ));
            for instance in &facts.instances {
                output.line(&format!(
                    "instance {}: {}, {} MiB{}",
                    instance.id,
                    instance.state,
                    instance.memory_mib,
                    if instance.managed_by_apply {
                        ", made by apply"
                    } else {
                        ""
                    }
                ));
            }
            if !facts.baked_images.is_empty() {
                output.line(&format!("baked images: {}", facts.baked_images.join(", ")));
            }
            Ok(())
        }
    }
}
