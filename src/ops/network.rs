//! The host network of the VMs: the pieces every VM shares (bridge with its address, IPv4
//! forwarding, IPv6 off, the guest network policy's chains) and each VM's own (its persistent
//! tap as an isolated bridge port, read back; no stale API socket). `net_up` is what the VM
//! unit's `vm-net-up` runs before every start, `net_down` what `vm-net-down` runs after every
//! stop, `shutdown` the clean stop `vm-shutdown` asks for. Each step checks before it changes,
//! so a second run changes nothing. `HostSteps` is the seam the install and teardown
//! operations use, so unit tests can record them instead of touching the kernel.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::env_vars;
use crate::host::firecracker_api::ApiClient;
use crate::host::firewall::{IPTABLES, ensure_chain};
use crate::host::netlink::{Link, Netlink};
use crate::host::probe;
use crate::host::tap::{TapError, create_persistent_tap, remove_tap, tap_owner};
use crate::instance::layout::{AssetPaths, StatePaths, default_api_sock, guest_answered_text};
use crate::instance::values::{InstanceId, escaped};
use crate::output::{Output, error_chain};
use crate::render::egress::forward_chain_name;
use crate::settings::Settings;
use crate::store::{lock_network, read_env, read_fireclaw_state, write_atomic};

use super::instance::load;
use crate::instance::confinement::{VmmAccount, expected_files};

/// The steps of installing and removing an instance that change the host beyond fireclaw's own
/// files (links, firewall, system accounts, file ownership), as a seam: `HostSystem` does them
/// on this host; unit tests record them.
pub trait HostSteps {
    /// Whether an interface with this name exists (a leftover tap would be taken over).
    fn interface_exists(&self, name: &str) -> Result<bool>;
    /// Removes the tap `name`; absent is fine, another kind of link is left alone.
    fn remove_tap(&self, name: &str) -> Result<()>;
    /// Re-applies the guest network policy when fireclaw's chains are on this host; returns
    /// notes on allowlists left out.
    fn reapply_policy_if_present(&self) -> Result<Vec<String>>;
    /// Creates the VMM account of a new instance, with an id no account, group or file of
    /// another instance has; called under the allocation lock.
    fn create_vmm_account(&self, id: &InstanceId) -> Result<VmmAccount>;
    /// Removes a VMM account and its group; absent is fine.
    fn remove_vmm_account(&self, name: &str) -> Result<()>;
    /// Puts an instance's files in the confined shape: `FC_ROOT` reachable, the VMM's own dir
    /// and log made, and each path of `expected_files` given its owner and mode (never through
    /// a link).
    fn confine_files(
        &self,
        assets: &AssetPaths,
        with_initrd: bool,
        account: &VmmAccount,
    ) -> Result<()>;
}

/// This host: its links, firewall, accounts and files.
pub struct HostSystem<'a> {
    pub settings: &'a Settings,
}

impl HostSteps for HostSystem<'_> {
    fn interface_exists(&self, name: &str) -> Result<bool> {
        Ok(Netlink::open()?.link(name)?.is_some())
    }
    fn remove_tap(&self, name: &str) -> Result<()> {
        Ok(remove_tap(name)?)
    }
    fn reapply_policy_if_present(&self) -> Result<Vec<String>> {
        reapply_if_present(self.settings)
    }
    fn create_vmm_account(&self, id: &InstanceId) -> Result<VmmAccount> {
        super::confine::create_account(self.settings, id)
    }
    fn remove_vmm_account(&self, name: &str) -> Result<()> {
        Ok(crate::host::accounts::remove(name)?)
    }
    fn confine_files(
        &self,
        assets: &AssetPaths,
        with_initrd: bool,
        account: &VmmAccount,
    ) -> Result<()> {
        super::confine::make_reachable(
            &self.settings.paths.fc_root,
            &[&self.settings.paths.fc_root, &self.settings.base_images_dir],
        )?;
        super::confine::ensure_vmm_dir(assets, account)?;
        super::confine::hand_over(&expected_files(assets, with_initrd), account)
    }
}

/// Re-applies the policy when fireclaw's chains are already on this host (an allowlist changed,
/// or an instance went away); a host with no VM started yet gets them at its first start.
pub fn reapply_if_present(settings: &Settings) -> Result<Vec<String>> {
    let forward = forward_chain_name(settings.network.bridge.as_str());
    let present = crate::host::process::run(IPTABLES, &["-w", "-n", "-L", &forward])
        .is_ok_and(|o| o.status.success());
    if !present {
        return Ok(Vec::new());
    }
    apply_shared(settings, false)
}

/// How long `vm-shutdown` waits for the VMM to exit after Ctrl-Alt-Del; the unit's
/// TimeoutStopSec (45 s) leaves room for systemd's own SIGTERM after it.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// A problem that retrying cannot fix: the unit should fail instead of restarting in a loop.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PermanentStartError {
    message: String,
    #[source]
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl PermanentStartError {
    pub fn new(message: String) -> Self {
        Self {
            message,
            cause: None,
        }
    }

    pub fn caused_by(message: &str, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message: message.to_owned(),
            cause: Some(Box::new(cause)),
        }
    }
}

/// What `vm-net-*` need of an instance.
struct NetTarget {
    tap: String,
    /// Where the VMM binds its API socket: `API_SOCK`, or for a confined VMM the socket in
    /// its own dir, to which `API_SOCK` is a link.
    api_sock: PathBuf,
    /// The confined VMM: its account, its asset paths and the `API_SOCK` link.
    confined: Option<Confined>,
}

struct Confined {
    account: VmmAccount,
    assets: AssetPaths,
    link: PathBuf,
}

impl NetTarget {
    fn vmm_uid(&self) -> Option<u32> {
        self.confined.as_ref().map(|c| c.account.uid)
    }
}

fn target(settings: &Settings, id: &InstanceId) -> Result<NetTarget> {
    let paths = StatePaths::new(&settings.paths.state_root, id);
    let env = read_env(&paths)
        .map_err(|e| PermanentStartError::caused_by("read the instance's state", e))?;
    let tap = env
        .tap()
        .map_err(|e| PermanentStartError::caused_by("read the instance's tap", e))?
        .to_owned();
    let api_sock = env
        .api_sock()
        .unwrap_or_else(|| default_api_sock(&settings.paths.fc_root, id.as_str()));
    let state = read_fireclaw_state(&paths)
        .map_err(|e| PermanentStartError::caused_by("read the instance's fireclaw.json", e))?;
    let Some(account) = state.and_then(|s| s.vmm_account) else {
        return Ok(NetTarget {
            tap,
            api_sock,
            confined: None,
        });
    };
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    Ok(NetTarget {
        tap,
        api_sock: assets.vmm_api_sock.clone(),
        confined: Some(Confined {
            account,
            assets,
            link: api_sock,
        }),
    })
}

/// Where fireclaw reaches an instance's VMM: its API socket (in its own dir when confined),
/// the uid that must answer there, and its tap.
#[derive(Debug, Clone)]
pub struct VmmEndpoint {
    pub api_sock: PathBuf,
    pub vmm_uid: Option<u32>,
    pub tap: String,
}

pub fn vmm_endpoint(settings: &Settings, id: &InstanceId) -> Result<VmmEndpoint> {
    let target = target(settings, id)?;
    Ok(VmmEndpoint {
        vmm_uid: target.vmm_uid(),
        api_sock: target.api_sock,
        tap: target.tap,
    })
}

/// How long a quick question to a VMM's API may take.
const VMM_API_QUICK: Duration = Duration::from_secs(10);

/// The API client of instance `id`'s VMM, checking that the VMM's own account answers.
pub fn api(settings: &Settings, id: &InstanceId, timeout: Duration) -> Result<ApiClient> {
    let endpoint = vmm_endpoint(settings, id)?;
    Ok(ApiClient::new(&endpoint.api_sock, timeout).expect_peer(endpoint.vmm_uid))
}

/// Whether the running VMM has its guest paused (a suspend or an export cut short).
pub fn vm_paused(settings: &Settings, id: &InstanceId) -> bool {
    api(settings, id, VMM_API_QUICK)
        .ok()
        .and_then(|api| api.instance_info().ok())
        .is_some_and(|info| info.state == "Paused")
}

/// `API_SOCK` is a link to the socket in the confined VMM's dir; a missing link is made again,
/// and a socket left there by the VMM's unconfined days is replaced. Anything else is refused.
fn ensure_socket_link(link: &Path, socket: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if link == socket {
        return Ok(());
    }
    match std::fs::symlink_metadata(link) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            if std::fs::read_link(link).is_ok_and(|target| target == socket) {
                return Ok(());
            }
            std::fs::remove_file(link).with_context(|| format!("remove {}", link.display()))?;
        }
        Ok(metadata) if metadata.file_type().is_socket() => {
            std::fs::remove_file(link).with_context(|| format!("remove {}", link.display()))?;
        }
        Ok(_) => {
            return Err(PermanentStartError::new(format!(
                "{} is in the way of the API socket link and is not a socket; move it away",
                link.display()
            ))
            .into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspect {}", link.display())),
    }
    std::os::unix::fs::symlink(socket, link)
        .with_context(|| format!("link {} to {}", link.display(), socket.display()))
}

fn ensure_bridge(netlink: &mut Netlink, settings: &Settings) -> Result<Link> {
    let network = &settings.network;
    let name = network.bridge.as_str();
    let bridge = match netlink.link(name)? {
        Some(link) if link.is_bridge() => link,
        Some(link) => {
            return Err(PermanentStartError::new(format!(
                "interface {name} exists but is a {} device, not a bridge; remove it (ip link delete {name}) or set {}",
                link.kind.as_deref().unwrap_or("plain"),
                env_vars::BRIDGE_NAME
            ))
            .into());
        }
        None => {
            // Noted first: `host cleanup` removes only a bridge fireclaw made.
            write_atomic(
                &bridge_note(settings),
                format!("{name}\n").as_bytes(),
                0o600,
            )?;
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

fn ensure_tap(
    netlink: &mut Netlink,
    name: &str,
    bridge: &Link,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let tap = match netlink.link(name)? {
        Some(link) if link.is_tap => {
            if let Some((uid, gid)) = owner
                && tap_owner(name).ok() != Some((Some(uid), Some(gid)))
            {
                // A tap of someone else's: take it over only while nothing holds it.
                create_persistent_tap(name, owner).map_err(|e| match e {
                    TapError::Busy { .. } => PermanentStartError::caused_by(
                        &format!(
                            "tap {name} is held by another process and is not owned by this instance's VMM (uid {uid}); stop that process or remove the tap (ip link delete {name})"
                        ),
                        e,
                    )
                    .into(),
                    other => anyhow::Error::from(other),
                })?;
            }
            link
        }
        Some(link) => {
            return Err(PermanentStartError::new(format!(
                "interface {name} exists but is a {} device, not this instance's tap; remove it with: ip link delete {name}",
                link.kind.as_deref().unwrap_or("plain")
            ))
            .into());
        }
        None => {
            create_persistent_tap(name, owner)?;
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
        let reported = match after.isolated {
            Some(false) => "off",
            Some(true) => "on",
            None => "nothing",
        };
        return Err(anyhow!(
            "bridge port {name} did not become isolated (the kernel reports {reported})"
        ));
    }
    if !after.up {
        netlink.set_up(&after)?;
    }
    Ok(())
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns IPv4 forwarding on, noting in `STATE_ROOT` that it was off, so `host cleanup` turns
/// off only what fireclaw turned on (hosts running Docker need it on).
fn enable_ip_forward(settings: &Settings) -> Result<()> {
    if std::fs::read_to_string(IP_FORWARD)
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }
    write_atomic(&forwarding_note(settings), b"0\n", 0o600)?;
    std::fs::write(IP_FORWARD, "1\n")
        .with_context(|| format!("enable IPv4 forwarding ({IP_FORWARD})"))
}

/// Where `ensure_bridge` notes the bridge it created.
fn bridge_note(settings: &Settings) -> PathBuf {
    settings.paths.state_root.join(".bridge-made-by-fireclaw")
}

/// Where `enable_ip_forward` notes that forwarding was off before fireclaw.
fn forwarding_note(settings: &Settings) -> PathBuf {
    settings.paths.state_root.join(".ip_forward-was-off")
}

/// What `host cleanup` did and left.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub removed: Vec<String>,
    pub left: Vec<String>,
}

/// `host cleanup`: removes what instances share once none is left: the policy chains and
/// their jumps, the bridge (only one fireclaw created) and forwarding (only if fireclaw turned
/// it on). Refuses while any instance's state or unit exists. The lock files stay: another
/// command may be waiting on one, and a new file under the same name would split that lock.
pub fn remove_shared(settings: &Settings) -> Result<Cleanup> {
    let root = &settings.paths.state_root;
    if !root.exists() {
        return Ok(Cleanup::default());
    }
    let _allocation = crate::store::lock_allocation(root)?;
    let _network = lock_network(root)?;
    let instances: Vec<String> = crate::store::scan_instances(root)?
        .into_iter()
        .map(|i| escaped(&i.name))
        .collect();
    if !instances.is_empty() {
        anyhow::bail!(
            "{} instance(s) still exist ({}); destroy them first (fireclaw destroy <id>)",
            instances.len(),
            instances.join(", ")
        );
    }
    let units = instance_unit_files(&settings.paths.unit_dir);
    if !units.is_empty() {
        anyhow::bail!(
            "unit files of instances are still installed ({}); remove them with: fireclaw destroy <id> --force",
            units.join(", ")
        );
    }
    let mut report = Cleanup::default();
    // No instance is left, so every account in fireclaw's range is a leftover (0.2.0's destroy
    // and an interrupted setup or destroy can leave one).
    let lone_groups = crate::host::accounts::vmm_range_lone_groups()?;
    for entry in crate::host::accounts::vmm_range_users()?
        .into_iter()
        .chain(lone_groups)
    {
        crate::host::accounts::remove(&entry.name)?;
        report.removed.push(format!(
            "VMM account {} (id {}), which no instance owned",
            entry.name, entry.id
        ));
    }
    let inputs = super::egress::gather(settings, false)?;
    for chain in super::egress::policy_chains(settings, &inputs) {
        if crate::host::firewall::remove_chain(&chain)
            .with_context(|| format!("remove firewall chain {}", chain.name))?
        {
            report
                .removed
                .push(format!("firewall chain {} and its jump", chain.name));
        }
    }
    let mut netlink = Netlink::open()?;
    let bridge = settings.network.bridge.as_str();
    let made_note = bridge_note(settings);
    let made_by_fireclaw =
        std::fs::read_to_string(&made_note).is_ok_and(|made| made.trim() == bridge);
    match netlink.link(bridge)? {
        Some(link) if link.is_bridge() && made_by_fireclaw => {
            netlink.delete_link(&link)?;
            report.removed.push(format!("bridge {bridge}"));
        }
        Some(_) => report.left.push(format!(
            "{bridge}: fireclaw did not create it (it was there before, or made by an older fireclaw); remove it yourself if it is unused: ip link delete {bridge}"
        )),
        None => {}
    }
    let _ = std::fs::remove_file(&made_note);
    let note = forwarding_note(settings);
    if note.exists() {
        std::fs::write(IP_FORWARD, "0\n")
            .with_context(|| format!("turn IPv4 forwarding off ({IP_FORWARD})"))?;
        std::fs::remove_file(&note).with_context(|| format!("remove {}", note.display()))?;
        report
            .removed
            .push("IPv4 forwarding (off again, as fireclaw found it)".to_owned());
    } else if std::fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1") {
        report.left.push(
            "IPv4 forwarding on: it was on before fireclaw (Docker and routers need it)".to_owned(),
        );
    }
    report.left.extend(leftover_files(settings));
    Ok(report)
}

/// Unit files of instances (fireclaw's or 0.2.0's names) in `unit_dir`.
fn instance_unit_files(unit_dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(unit_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            (name.starts_with("firecracker-vmdemo-") || name.starts_with("vmdemo-proxy-"))
                && name.ends_with(".service")
        })
        .collect();
    found.sort();
    found
}

/// What stays under `STATE_ROOT` after a cleanup, and why.
fn leftover_files(settings: &Settings) -> Vec<String> {
    let root = &settings.paths.state_root;
    let mut left = Vec::new();
    for (name, why) in [
        (
            ".alloc.lock",
            "and the other lock files: a command may be waiting on one, and removing it would let two commands hold it",
        ),
        (
            "ssh",
            "the client key; remove it if no instance will be made again",
        ),
        (
            "private-egress.allow",
            "your host-wide private-egress allowlist",
        ),
        (".failed", "evidence of failed setups"),
        (
            ".vmm-id-next",
            "the next VMM account id, so ids of removed instances are not handed out again soon",
        ),
    ] {
        if root.join(name).exists() {
            left.push(format!("{}: {why}", root.join(name).display()));
        }
    }
    left
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
        Ok(_) => Err(PermanentStartError::new(format!(
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
    enable_ip_forward(settings)?;
    let inputs = super::egress::gather(settings, strict)?;
    for chain in super::egress::policy_chains(settings, &inputs) {
        ensure_chain(&chain).with_context(|| format!("apply firewall chain {}", chain.name))?;
    }
    Ok((bridge, inputs.skipped))
}

/// `shared_locked` under `.net.lock`, for `egress apply` and allowlist changes.
pub fn apply_shared(settings: &Settings, strict: bool) -> Result<Vec<String>> {
    let _lock = lock_network(&settings.paths.state_root)?;
    let mut netlink = Netlink::open()?;
    Ok(shared_locked(settings, &mut netlink, strict)?.1)
}

/// What `vm-net-up` does: the shared pieces, then this instance's tap, IPv6 off on it, and no
/// stale API socket. Returns notes on allowlists left out of the policy.
pub fn net_up(settings: &Settings, id: &InstanceId) -> Result<Vec<String>> {
    let target = target(settings, id)?;
    // VMs starting together (boot, concurrent setups) share the bridge and the chains: check-
    // then-create on them is only safe one at a time.
    let _lock = lock_network(&settings.paths.state_root)?;
    let mut netlink = Netlink::open()?;
    // The policy is in place before the tap joins the bridge.
    let (bridge, notes) = shared_locked(settings, &mut netlink, false)?;
    // A tap with no owner takes any process that can open /dev/net/tun, a confined VMM of
    // another instance included: an unconfined VMM's tap is root's.
    let owner = Some(
        target
            .confined
            .as_ref()
            .map_or((0, 0), |c| (c.account.uid, c.account.gid)),
    );
    ensure_tap(&mut netlink, &target.tap, &bridge, owner)?;
    disable_ipv6(&target.tap)?;
    if let Some(confined) = &target.confined {
        // Something the VMM planted there does not go away by retrying.
        super::confine::ensure_vmm_dir(&confined.assets, &confined.account).map_err(|error| {
            PermanentStartError::new(format!(
                "prepare the VMM's own dir: {}",
                error_chain(error.as_ref())
            ))
        })?;
        ensure_socket_link(&confined.link, &target.api_sock)?;
    }
    remove_stale_socket(&target.api_sock)?;
    Ok(notes)
}

/// What `vm-net-down` does: removes the tap and the API socket; absent ones are fine.
pub fn net_down(settings: &Settings, id: &InstanceId) -> Result<()> {
    let target = target(settings, id)?;
    remove_tap(&target.tap)?;
    match std::fs::remove_file(&target.api_sock) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", target.api_sock.display())),
    }
}

/// Whether the guest of the running VMM has come up: it answered SSH since this VMM started
/// (`guest-answered` names it; systemd names the VMM in `$MAINPID`), or answers now. Outside
/// a unit (no `$MAINPID`) it is assumed, as before this check existed.
fn guest_came_up(settings: &Settings, id: &InstanceId) -> bool {
    let Some(vmm_pid) = std::env::var(env_vars::MAINPID)
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
    else {
        return true;
    };
    let answered =
        std::fs::read_to_string(StatePaths::new(&settings.paths.state_root, id).guest_answered)
            .unwrap_or_default();
    if answered == guest_answered_text(&probe::boot_id(), vmm_pid) {
        return true;
    }
    // Restarted by systemd, or started before fireclaw kept this note: ask the guest.
    load(settings, id).is_ok_and(|loaded| loaded.quick_ssh(QUICK_PROBE).probe().is_ok())
}

/// How long `vm-shutdown` gives a guest to answer SSH before it counts as never up.
const QUICK_PROBE: Duration = Duration::from_secs(3);

/// What `vm-shutdown` does: Ctrl-Alt-Del through the API, then wait until the API stops
/// answering (the VMM exits once the guest has gone down), at most `SHUTDOWN_WAIT`. A guest
/// that never came up (`guest_came_up`) cannot be counted on to shut down, so its VMM is left
/// to systemd's SIGTERM at once.
pub fn shutdown(settings: &Settings, id: &InstanceId, output: &mut Output<'_>) -> Result<()> {
    let mut target = target(settings, id)?;
    // A VMM started as root before `adopt` still listens on `API_SOCK` itself (root-owned
    // place): stop that one through it.
    if let Some(confined) = &target.confined
        && std::fs::symlink_metadata(&target.api_sock).is_err()
        && std::fs::symlink_metadata(&confined.link)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        target.api_sock = confined.link.clone();
        target.confined = None;
    }
    // Not `exists()`: in a confined VMM's dir that would follow a link it planted.
    if std::fs::symlink_metadata(&target.api_sock).is_err() {
        return Ok(());
    }
    // A suspend stops a paused VM whose snapshot is written: no guest shutdown, which would
    // run the guest on from its paused state (and a paused guest cannot act on it anyway).
    let suspending = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, id))
        .ok()
        .flatten()
        .is_some_and(|state| state.suspended.is_some());
    let paused = ApiClient::new(&target.api_sock, Duration::from_secs(2))
        .expect_peer(target.vmm_uid())
        .instance_info()
        .is_ok_and(|info| info.state == "Paused");
    if suspending || paused {
        output.progress(&format!(
            "instance '{id}': its VM is paused{}; stopping the VMM without a guest shutdown",
            if suspending { " for a suspend" } else { "" }
        ));
        return Ok(());
    }
    if !guest_came_up(settings, id) {
        output.warn(&format!(
            "instance '{id}': its guest never answered SSH since this VM started; stopping it without waiting for a clean shutdown"
        ));
        return Ok(());
    }
    let api =
        ApiClient::new(&target.api_sock, Duration::from_secs(2)).expect_peer(target.vmm_uid());
    if let Err(error) = api.send_ctrl_alt_del() {
        // No API means no VMM to stop; systemd's SIGTERM covers a hung one.
        output.warn(&format!(
            "instance '{id}': {}; leaving the stop to systemd",
            error_chain(&error)
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
