//! `fireclaw host facts`: what placement and an inventory need to know about this host, read
//! without changing anything. Memory committed to instances counts running and suspended
//! ones (a suspended instance holds no memory now, but takes its size back when it resumes,
//! so placing another in its room would overbook the host); stopped ones are listed apart.

use std::net::Ipv4Addr;

use anyhow::Result;
use serde::Serialize;

use super::observed::{ObservedState, observe};
use crate::host::probe;
use crate::host::systemd::ServiceManager;
use crate::instance::alloc::Taken;
use crate::settings::Settings;

#[derive(Debug, Serialize)]
pub struct Facts {
    pub fireclaw_version: &'static str,
    /// `firecracker --version`'s `vX.Y.Z`; `None` when it is missing or says nothing.
    pub firecracker_version: Option<String>,
    pub kvm: bool,
    pub memory: MemoryFacts,
    pub disk: DiskFacts,
    pub addresses: AddressFacts,
    pub ports: PortFacts,
    pub instances: Vec<InstanceFacts>,
    pub baked_images: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MemoryFacts {
    pub total_mib: u64,
    pub available_mib: u64,
    /// Running and suspended instances' memory.
    pub committed_mib: u64,
    /// Of that, what suspended instances take back when they resume.
    pub suspended_mib: u64,
    /// Stopped instances' memory (not committed).
    pub stopped_mib: u64,
    /// `total_mib - committed_mib`: what placing another instance may count on.
    pub uncommitted_mib: u64,
}

#[derive(Debug, Serialize)]
pub struct DiskFacts {
    pub fc_root: String,
    pub free_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct AddressFacts {
    pub subnet: String,
    pub free: usize,
    pub next: Option<Ipv4Addr>,
}

#[derive(Debug, Serialize)]
pub struct PortFacts {
    pub base: u16,
    pub free: usize,
    pub next: Option<u16>,
}

#[derive(Debug, Serialize)]
pub struct InstanceFacts {
    pub id: String,
    pub state: String,
    pub memory_mib: u64,
    pub managed_by_apply: bool,
}

fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let kib: u64 = line
                    .strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()?;
                Some(kib / 1024)
            })
        })
        .unwrap_or(0)
}

fn firecracker_version() -> Option<String> {
    let path = probe::which("firecracker")?;
    let out = crate::host::process::run(path.to_str()?, &["--version"]).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()?
        .split_whitespace()
        .find(|word| word.starts_with('v') && word[1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
}

pub fn facts(settings: &Settings, services: &dyn ServiceManager) -> Result<Facts> {
    let observed = observe(settings, services)?;
    let (mut committed, mut suspended, mut stopped) = (0, 0, 0);
    let mut taken = Taken {
        listening: probe::listening_tcp_ports(),
        ..Taken::default()
    };
    let mut instances = Vec::new();
    for instance in &observed {
        let memory = instance.memory_mib();
        match instance.state {
            ObservedState::Running | ObservedState::HalfMade(_) => committed += memory,
            ObservedState::Suspended => {
                committed += memory;
                suspended += memory;
            }
            ObservedState::Stopped => stopped += memory,
        }
        if let Ok(ip) = instance.env.vm_ip() {
            taken.ips.insert(ip);
        }
        if let Ok(port) = instance.env.host_port() {
            taken.ports.insert(port, instance.id.to_string());
        }
        instances.push(InstanceFacts {
            id: instance.id.to_string(),
            state: instance.state.word(),
            memory_mib: memory,
            managed_by_apply: instance.managed_by_apply(),
        });
    }
    let network = &settings.network;
    let free_ips: Vec<Ipv4Addr> = (1..=254u8)
        .map(|octet| network.subnet.host(octet))
        .filter(|ip| *ip != network.bridge_address.address() && !taken.ips.contains(ip))
        .collect();
    let first_port = settings.base_port.saturating_add(1).max(1024);
    let free_ports: Vec<u16> = (first_port..=u16::MAX)
        .filter(|p| !taken.ports.contains_key(p) && !taken.listening.contains(p))
        .collect();
    let total = mem_total_mib();
    let baked_images = crate::store::read_baked_manifest(&settings.base_images_dir)
        .ok()
        .flatten()
        .map(|manifest| manifest.images.iter().map(|i| i.name.clone()).collect())
        .unwrap_or_default();
    Ok(Facts {
        fireclaw_version: env!("CARGO_PKG_VERSION"),
        firecracker_version: firecracker_version(),
        kvm: std::path::Path::new("/dev/kvm").exists(),
        memory: MemoryFacts {
            total_mib: total,
            available_mib: probe::mem_available_mib().unwrap_or(0),
            committed_mib: committed,
            suspended_mib: suspended,
            stopped_mib: stopped,
            uncommitted_mib: total.saturating_sub(committed),
        },
        disk: DiskFacts {
            fc_root: settings.paths.fc_root.display().to_string(),
            free_bytes: crate::host::snapshot::free_bytes(&existing(&settings.paths.fc_root))
                .unwrap_or(0),
        },
        addresses: AddressFacts {
            subnet: network.subnet.to_string(),
            free: free_ips.len(),
            next: free_ips.first().copied(),
        },
        ports: PortFacts {
            base: settings.base_port,
            free: free_ports.len(),
            next: free_ports.first().copied(),
        },
        instances,
        baked_images,
    })
}

/// `path` or its nearest existing parent (FC_ROOT may not exist before the first setup).
fn existing(path: &std::path::Path) -> std::path::PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(std::path::Path::new("/"))
        .to_owned()
}
