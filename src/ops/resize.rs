//! `fireclaw resize`: an instance's vCPUs, memory and disk changed in place. The VM config
//! (`vm-config.json`'s machine-config), the confined unit's limits (which follow the size)
//! and the `.env` are written again, and the disk file is grown; a disk is never shrunk. A
//! running VM is stopped first and brought up again to healthy (a restart applies it); a
//! stopped one stays stopped; a suspended one is refused, since its snapshot holds memory of
//! the old size. Each write is idempotent and the `.env` goes last, so after a kill the next
//! resize compares against the VM config and the disk file themselves and finishes the job.
//! The guest grows its filesystem to the new disk at its next boot (cloud-init's `resizefs`).

use anyhow::{Context, Result, bail};

use super::instance::Loaded;
use super::lifecycle::{Waits, bring_up, stop, stop_shell, unit_state};
use super::timing::Stopwatch;
use crate::faults::crash_point;
use crate::guest::health::Health;
use crate::host::systemd::ServiceManager;
use crate::instance::layout::AssetPaths;
use crate::instance::timing::TimedVerb;
use crate::instance::values::{DiskSize, MemoryMib, VcpuCount};
use crate::output::Output;
use crate::render::artifacts::{HostTools, VmmSize};
use crate::settings::Settings;
use crate::store::write_atomic;

/// The size asked for; `None` keeps that part.
#[derive(Debug, Clone)]
pub struct ResizeSpec {
    pub vcpu: Option<VcpuCount>,
    pub memory: Option<MemoryMib>,
    pub disk: Option<DiskSize>,
    pub waits: Waits,
}

/// What changed, for a person; empty when nothing did.
#[derive(Debug, Default)]
pub struct Resized {
    pub changes: Vec<String>,
    /// The health after a running instance was brought up again.
    pub health: Option<(Health, Health)>,
}

/// The instance's size as its VM config and disk file have it now.
struct Current {
    vcpu: u8,
    memory: u32,
    disk_bytes: u64,
}

fn current(assets: &AssetPaths) -> Result<(serde_json::Value, Current)> {
    let text = std::fs::read_to_string(&assets.vm_config)
        .with_context(|| format!("read {}", assets.vm_config.display()))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("read {} as JSON", assets.vm_config.display()))?;
    let machine = &config["machine-config"];
    let number = |key: &str| {
        machine[key]
            .as_u64()
            .with_context(|| format!("{} has no machine-config.{key}", assets.vm_config.display()))
    };
    let current = Current {
        vcpu: u8::try_from(number("vcpu_count")?).unwrap_or(u8::MAX),
        memory: u32::try_from(number("mem_size_mib")?).unwrap_or(u32::MAX),
        disk_bytes: std::fs::metadata(&assets.rootfs)
            .with_context(|| format!("read {}", assets.rootfs.display()))?
            .len(),
    };
    Ok((config, current))
}

/// Resizes `loaded`; the caller holds its lock.
pub fn resize(
    settings: &Settings,
    loaded: &Loaded,
    spec: &ResizeSpec,
    tools: &HostTools,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<Resized> {
    let id = &loaded.id;
    loaded.ensure_provisioned()?;
    if loaded.state.as_ref().is_some_and(|s| s.suspended.is_some()) {
        bail!(
            "instance '{id}' is suspended, and its snapshot holds memory of its old size: resume it (fireclaw resume {id}) or boot it fresh (fireclaw start {id} --cold), then resize"
        );
    }
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let (mut config, now) = current(&assets)?;
    if let Some(disk) = &spec.disk
        && disk.bytes() < now.disk_bytes
    {
        bail!(
            "instance '{id}': its disk is {} bytes and a disk is never shrunk; --disk-size {disk} is smaller (a smaller disk needs a new instance)",
            now.disk_bytes
        );
    }
    let mut changes = Vec::new();
    let vcpu = spec.vcpu.map_or(now.vcpu, VcpuCount::get);
    let memory = spec.memory.map_or(now.memory, MemoryMib::get);
    if vcpu != now.vcpu {
        changes.push(format!("vCPUs {} -> {vcpu}", now.vcpu));
    }
    if memory != now.memory {
        changes.push(format!("memory {} MiB -> {memory} MiB", now.memory));
    }
    let grow_to = spec
        .disk
        .as_ref()
        .map(DiskSize::bytes)
        .filter(|bytes| *bytes > now.disk_bytes);
    if let (Some(bytes), Some(disk)) = (grow_to, &spec.disk) {
        changes.push(format!(
            "disk {} -> {disk} ({bytes} bytes; the guest grows its filesystem at its next boot)",
            now.disk_bytes
        ));
    }
    let env_behind = [
        ("VM_VCPU", vcpu.to_string()),
        ("VM_MEM_MIB", memory.to_string()),
    ]
    .into_iter()
    .chain(spec.disk.as_ref().map(|d| ("DISK_SIZE", d.to_string())))
    .any(|(key, value)| loaded.env.get(key) != value);
    if changes.is_empty() && !env_behind {
        return Ok(Resized::default());
    }
    let running = unit_state(services, &loaded.units.vm)?.is_active();
    if running && !changes.is_empty() {
        output.progress(&format!("{id}: stopping the VM to apply the new size"));
        stop(loaded, services, &stop_shell(loaded), output)?;
    }
    // The VM config: only its machine-config changes.
    config["machine-config"]["vcpu_count"] = vcpu.into();
    config["machine-config"]["mem_size_mib"] = memory.into();
    let text = serde_json::to_string_pretty(&config).context("render the VM config")?;
    write_atomic(&assets.vm_config, format!("{text}\n").as_bytes(), 0o600)?;
    crash_point("resize:config");
    // A confined unit's limits follow the size; an unconfined (0.2.0) unit has none.
    if let Some(account) = loaded.state.as_ref().and_then(|s| s.vmm_account.as_ref()) {
        super::confine::write_confined_units(
            settings,
            loaded,
            tools,
            VmmSize {
                account,
                vcpus: vcpu,
                memory_mib: memory,
            },
        )?;
        services.daemon_reload()?;
    }
    if let Some(bytes) = grow_to {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&assets.rootfs)
            .with_context(|| format!("open {}", assets.rootfs.display()))?;
        file.set_len(bytes)
            .with_context(|| format!("grow {} to {bytes} bytes", assets.rootfs.display()))?;
        file.sync_all()
            .with_context(|| format!("sync {}", assets.rootfs.display()))?;
    }
    crash_point("resize:disk");
    let mut env = loaded.env.clone();
    env.set("VM_VCPU", &vcpu.to_string())?;
    env.set("VM_MEM_MIB", &memory.to_string())?;
    if let Some(disk) = &spec.disk {
        env.set("DISK_SIZE", &disk.to_string())?;
    }
    write_atomic(&loaded.paths.env, env.render().as_bytes(), 0o600)?;
    let health = if running && !changes.is_empty() {
        let mut watch = Stopwatch::new(TimedVerb::Start);
        Some(bring_up(
            loaded,
            services,
            &loaded.ssh,
            spec.waits,
            &mut watch,
            output,
        )?)
    } else {
        None
    };
    Ok(Resized { changes, health })
}
