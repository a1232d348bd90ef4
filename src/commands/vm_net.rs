//! The VM unit's helpers. `vm-net-up` (ExecStartPre) builds everything the VM needs on the host
//! before every start: bridge with its address, the instance's persistent tap as an isolated
//! bridge port (read back), IPv4 forwarding, IPv6 off, the guest network policy (see
//! `egress`), and no stale API socket. Each step checks before it changes, so a second run changes nothing.
//! `vm-shutdown` (ExecStop) asks the guest to shut down through the API socket and waits a
//! bounded time for the VMM to go. `vm-net-down` (ExecStopPost, also after crashes and failed
//! starts) removes the tap and the socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::egress;
use crate::host::firecracker_api::ApiClient;
use crate::host::firewall::ensure_chain;
use crate::host::netlink::{Link, Netlink};
use crate::host::tap::{create_persistent_tap, remove_tap};
use crate::instance::layout::UnitNames;
use crate::instance::store::{HeldLock, StatePaths, lock_file, read_env};
use crate::instance::values::InstanceId;
use crate::output::Output;
use crate::settings::{Settings, default_api_sock};

/// How long `vm-shutdown` waits for the VMM to exit after Ctrl-Alt-Del; the unit's
/// TimeoutStopSec (45 s) leaves room for systemd's own SIGTERM after it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// A problem that retrying cannot fix: the unit should fail instead of restarting in a loop.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PermanentNetError(pub String);

/// `STATE_ROOT/.net.lock`, held while the shared network pieces are checked and created.
fn lock_network(state_root: &Path) -> Result<HeldLock> {
    Ok(lock_file(&state_root.join(".net.lock"))?)
}

/// What `vm-net-*` need of an instance.
struct NetTarget {
    tap: String,
    api_sock: PathBuf,
}

fn target(settings: &Settings, id: &InstanceId) -> Result<NetTarget> {
    let paths = StatePaths::new(&settings.paths.state_root, id);
    let env = read_env(&paths).map_err(|e| PermanentNetError(format!("instance '{id}': {e}")))?;
    let tap = env
        .tap()
        .map_err(|e| PermanentNetError(format!("instance '{id}': {e}")))?
        .to_owned();
    let api_sock = env
        .api_sock()
        .unwrap_or_else(|| default_api_sock(&settings.paths.fc_root, id.as_str()));
    Ok(NetTarget { tap, api_sock })
}

fn ensure_bridge(netlink: &mut Netlink, settings: &Settings) -> Result<Link> {
    let network = &settings.network;
    let name = network.bridge.as_str();
    let bridge = match netlink.link(name)? {
        Some(link) if link.is_bridge() => link,
        Some(link) => {
            return Err(PermanentNetError(format!(
                "interface {name} exists but is a {} device, not a bridge; remove it (ip link delete {name}) or set BRIDGE_NAME",
                link.kind.as_deref().unwrap_or("plain")
            ))
            .into());
        }
        None => {
            netlink.create_bridge(name)?;
            netlink
                .link(name)?
                .ok_or_else(|| anyhow!("bridge {name} vanished right after it was created"))?
        }
    };
    let address = network.bridge_address.address();
    if !netlink
        .ipv4_addresses(bridge.index)?
        .iter()
        .any(|(a, prefix)| *a == address && *prefix == 24)
    {
        netlink.add_ipv4_address(bridge.index, address, 24)?;
    }
    if !bridge.up {
        netlink.set_up(&bridge)?;
    }
    Ok(bridge)
}

fn ensure_tap(netlink: &mut Netlink, name: &str, bridge: &Link) -> Result<()> {
    let tap = match netlink.link(name)? {
        Some(link) if link.is_tap => link,
        Some(link) => {
            return Err(PermanentNetError(format!(
                "interface {name} exists but is a {} device, not this instance's tap; remove it with: ip link delete {name}",
                link.kind.as_deref().unwrap_or("plain")
            ))
            .into());
        }
        None => {
            create_persistent_tap(name)?;
            netlink
                .link(name)?
                .ok_or_else(|| anyhow!("tap {name} vanished right after it was created"))?
        }
    };
    if tap.master != Some(bridge.index) {
        netlink.set_master(&tap, bridge)?;
    }
    let current = netlink.link(name)?.and_then(|l| l.isolated);
    if current != Some(true) {
        netlink.set_port_isolated(&tap, true)?;
    }
    // Read back: a silently ignored request must not leave VMs able to reach each other.
    let after = netlink
        .link(name)?
        .ok_or_else(|| anyhow!("tap {name} vanished while it was being configured"))?;
    if after.isolated != Some(true) {
        return Err(anyhow!(
            "bridge port {name} did not become isolated (the kernel reports isolated={:?})",
            after.isolated
        ));
    }
    if !after.up {
        netlink.set_up(&after)?;
    }
    Ok(())
}

fn enable_ip_forward() -> Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path)
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }
    std::fs::write(path, "1\n").with_context(|| format!("enable IPv4 forwarding ({path})"))
}

/// Removes the API socket left by a VMM that died (Firecracker never removes it and refuses to
/// start over it). A socket something still accepts on belongs to a running VMM and is kept.
fn remove_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Ok(());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("remove stale API socket {}", path.display()))
        }
        Ok(_) => Err(PermanentNetError(format!(
            "{} is in the way of the API socket and is not a socket; move it away",
            path.display()
        ))
        .into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("inspect {}", path.display())),
    }
}

/// Turns IPv6 off on an interface, so a guest cannot reach the host (or route anywhere) around
/// the IPv4 policy. A kernel without IPv6 has nothing to turn off.
fn disable_ipv6(name: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::read_to_string(&path) {
        Ok(value) if value.trim() == "1" => Ok(()),
        Ok(_) => std::fs::write(&path, "1\n").with_context(|| format!("turn IPv6 off ({path})")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("read {path}")),
    }
}

/// What every VM on the bridge shares: the bridge (address, up, IPv6 off), forwarding, and the
/// policy chains built from the saved allowlists. The caller holds `.net.lock`. Returns notes
/// on allowlists left out (see `egress::gather`).
fn shared_locked(
    settings: &Settings,
    netlink: &mut Netlink,
    strict: bool,
) -> Result<(Link, Vec<String>)> {
    let bridge = ensure_bridge(netlink, settings)?;
    disable_ipv6(settings.network.bridge.as_str())?;
    enable_ip_forward()?;
    let inputs = egress::gather(settings, strict)?;
    for chain in egress::policy_chains(settings, &inputs) {
        ensure_chain(&chain).with_context(|| format!("apply firewall chain {}", chain.name))?;
    }
    Ok((bridge, inputs.skipped))
}

/// `shared_locked` under `.net.lock`, for `egress apply` and allowlist changes.
pub(super) fn apply_shared(settings: &Settings, strict: bool) -> Result<Vec<String>> {
    let _lock = lock_network(&settings.paths.state_root)?;
    let mut netlink = Netlink::open()?;
    Ok(shared_locked(settings, &mut netlink, strict)?.1)
}

fn net_up(settings: &Settings, id: &InstanceId) -> Result<Vec<String>> {
    let target = target(settings, id)?;
    // VMs starting together (boot, concurrent setups) share the bridge and the chains: check-
    // then-create on them is only safe one at a time.
    let _lock = lock_network(&settings.paths.state_root)?;
    let mut netlink = Netlink::open()?;
    // The policy is in place before the tap joins the bridge.
    let (bridge, notes) = shared_locked(settings, &mut netlink, false)?;
    ensure_tap(&mut netlink, &target.tap, &bridge)?;
    disable_ipv6(&target.tap)?;
    remove_stale_socket(&target.api_sock)?;
    Ok(notes)
}

/// `fireclaw vm-net-up <id>`. On a permanent error while running as the unit's ExecStartPre,
/// it also queues a stop of its own unit: `Restart=always` would otherwise retry a start that
/// cannot succeed until the start limit, while `systemctl start` already reported the failure.
pub fn up(settings: &Settings, id: &InstanceId, output: &mut Output<'_>) -> Result<()> {
    let result = net_up(settings, id)
        .with_context(|| format!("bring up the network of instance '{id}'"))
        .map(|notes| {
            for note in notes {
                output.warn(&note);
            }
        });
    if let Err(error) = &result
        && error.downcast_ref::<PermanentNetError>().is_some()
        && std::env::var_os("INVOCATION_ID").is_some()
    {
        // The stop below kills this process, so the reason goes to the journal first.
        output.error(&crate::error_line(error));
        let unit = UnitNames::new(id).vm;
        let _ = crate::host::process::run("systemctl", &["--no-block", "stop", &unit]);
        return Err(super::AlreadyReported.into());
    }
    result
}

/// `fireclaw vm-net-down <id>`: removes the tap and the API socket; absent ones are fine.
pub fn down(settings: &Settings, id: &InstanceId) -> Result<()> {
    let target = target(settings, id)?;
    remove_tap(&target.tap)?;
    match std::fs::remove_file(&target.api_sock) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", target.api_sock.display())),
    }
}

/// `fireclaw vm-shutdown <id>`: Ctrl-Alt-Del through the API, then wait until the API stops
/// answering (the VMM exits once the guest has gone down), at most `SHUTDOWN_WAIT`.
pub fn shutdown(settings: &Settings, id: &InstanceId, output: &mut Output<'_>) -> Result<()> {
    let target = target(settings, id)?;
    if !target.api_sock.exists() {
        return Ok(());
    }
    let api = ApiClient::new(&target.api_sock, Duration::from_secs(2));
    if let Err(error) = api.send_ctrl_alt_del() {
        // No API means no VMM to stop; systemd's SIGTERM covers a hung one.
        output.warn(&format!(
            "instance '{id}': {error}; leaving the stop to systemd"
        ));
        return Ok(());
    }
    let started = Instant::now();
    while started.elapsed() < SHUTDOWN_WAIT {
        if api.instance_info().is_err() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    output.warn(&format!(
        "instance '{id}': the guest did not shut down within {}s; systemd stops the VMM",
        SHUTDOWN_WAIT.as_secs()
    ));
    Ok(())
}
