//! Fleet views: `list` and `status`. Unit states come from one batched `systemctl show`; health
//! probes run concurrently, each with its own short timeout (the proxy on 127.0.0.1, then the
//! gateway on the VM's address), so a fleet of unreachable guests lists in about one timeout.
//! "up" means either answered, as 0.2.0 documents for these views. An unreadable instance
//! becomes an error row with a warning, and every other row still prints. No secret is shown.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::guest::health::{healthy_json, proxy_health};
use crate::host::systemd::{
    CRASH_LOOP_RESTARTS, CRASH_LOOP_WINDOW_SECS, ServiceManager, UnitState,
};
use crate::instance::layout::StatePaths;
use crate::instance::layout::{GUEST_GATEWAY_PORT, UnitNames};
use crate::instance::state::Phase;
use crate::instance::suspension::{Suspension, age_text};
use crate::instance::timing::{RunTimes, seconds};
use crate::instance::values::InstanceId;
use crate::instance::values::escaped;
use crate::ops::instance::{NoInstance, load};
use crate::output::{Output, error_chain, use_colour};
use crate::render::units::shell_word;
use crate::settings::Settings;
use crate::store::{ScannedInstance, read_fireclaw_state, scan_instances};

/// Each probe's bound.
const PROBE_TIMEOUT: Duration = Duration::from_millis(900);
/// The bound of `status`'s SSH question to the guest.
const GUEST_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One row of `list --json` (and the base of `status --json`). Stable schema, version 1.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub tap: Option<String>,
    /// The lifecycle phase from fireclaw.json; `null` for instances made by fireclaw 0.2.0.
    pub phase: Option<Phase>,
    /// ActiveState of the VM unit ("active", "inactive", "failed", ... or "missing").
    pub vm: String,
    /// ActiveState of the proxy unit.
    pub proxy: String,
    /// "up", "down" or "error".
    pub health: String,
    pub proxy_health: Option<String>,
    pub gateway_health: Option<String>,
    /// Why the row is an error row.
    pub error: Option<String>,
    /// The snapshot of a suspended instance (`fireclaw suspend`); `null` otherwise.
    pub suspended: Option<SuspendedView>,
    /// How often systemd restarted the VM since the unit was started (`NRestarts`); `null`
    /// when the unit is missing.
    pub restarts: Option<u32>,
    /// The VM restarted more than 3 times in 10 minutes and lately: it dies as it starts.
    pub crash_looping: bool,
    /// Made by fireclaw and never provisioned (phase below `provisioned`): a setup was cut
    /// short; `provision` finishes it (from phase `units` on), `destroy --force` removes it.
    pub half_made: bool,
}

/// A suspended instance's snapshot in the fleet views.
#[derive(Debug, Clone, Serialize)]
pub struct SuspendedView {
    /// Seconds since the Unix epoch when the snapshot was written.
    pub taken_at: u64,
    pub age_secs: u64,
    /// Apparent size of the memory and state files together.
    pub snapshot_bytes: u64,
}

impl SuspendedView {
    fn of(record: &Suspension) -> Self {
        Self {
            taken_at: record.taken_at,
            age_secs: crate::host::snapshot::unix_now_secs().saturating_sub(record.taken_at),
            snapshot_bytes: record.total_bytes(),
        }
    }

    /// "1024 MiB, taken 3h 5m ago".
    fn text(&self) -> String {
        format!(
            "{} MiB snapshot, taken {} ago",
            self.snapshot_bytes.div_ceil(1 << 20),
            age_text(self.age_secs)
        )
    }
}

#[derive(Debug, Serialize)]
struct ListJson<'a> {
    schema: u32,
    instances: &'a [InstanceView],
}

fn unit_active(state: Option<&UnitState>) -> String {
    match state {
        Some(s) if s.exists() => s.active.clone(),
        _ => "missing".into(),
    }
}

/// One GET to the guest's gateway: `None` when it cannot be reached at all.
fn gateway_get(ip: Ipv4Addr, path: &str) -> Option<bool> {
    use std::io::{Read, Write};
    let address = SocketAddr::from((ip, GUEST_GATEWAY_PORT));
    let mut stream = TcpStream::connect_timeout(&address, PROBE_TIMEOUT).ok()?;
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return Some(false);
    }
    let mut response = Vec::new();
    let _ = stream.take(1 << 20).read_to_end(&mut response);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    Some(match parsed.parse(&response) {
        Ok(httparse::Status::Complete(head)) => {
            parsed.code.is_some_and(|c| (200..300).contains(&c)) && healthy_json(&response[head..])
        }
        _ => false,
    })
}

/// `GET /healthz`, then `/health`, straight at the guest's gateway. An unreachable guest costs
/// one timeout, not two.
fn gateway_health(ip: Ipv4Addr) -> bool {
    match gateway_get(ip, "/healthz") {
        Some(true) => true,
        Some(false) => gateway_get(ip, "/health") == Some(true),
        None => false,
    }
}

/// Reads every instance and its unit states; health is filled in by `probe_all`.
pub fn gather(
    settings: &Settings,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<Vec<InstanceView>> {
    // A bake's builder VM is no instance (doctor and host cleanup see a leftover one).
    let scanned: Vec<_> = scan_instances(&settings.paths.state_root)?
        .into_iter()
        .filter(|s| s.name != crate::instance::baked::BUILDER_ID)
        .collect();
    let units: Vec<String> = scanned
        .iter()
        .flat_map(|s| {
            let names = UnitNames::for_name(&s.name);
            [names.vm, names.proxy]
        })
        .collect();
    let names: Vec<&str> = units.iter().map(String::as_str).collect();
    let states = services.states(&names).unwrap_or_default();
    let now = crate::host::systemd::monotonic_now_us();
    let mut views = Vec::new();
    for (index, instance) in scanned.iter().enumerate() {
        let vm_state = states.get(index * 2).filter(|s| s.exists());
        let vm = unit_active(states.get(index * 2));
        let proxy = unit_active(states.get(index * 2 + 1));
        let state = instance.name.parse::<InstanceId>().ok().and_then(|id| {
            read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, &id))
                .ok()
                .flatten()
        });
        let phase = state.as_ref().map(|s| s.phase);
        let suspended = state
            .as_ref()
            .and_then(|s| s.suspended.as_ref())
            .map(SuspendedView::of);
        if let Err(error) = &instance.env {
            output.warn(&format!(
                "instance '{}': {}",
                escaped(&instance.name),
                error_chain(error)
            ));
        }
        let mut view = view_of(instance, vm, proxy, phase);
        view.suspended = suspended;
        view.restarts = vm_state.map(|s| s.restarts);
        view.crash_looping = vm_state.is_some_and(|s| s.crash_looping(now));
        view.half_made = phase.is_some_and(|p| p < Phase::Provisioned);
        views.push(view);
    }
    Ok(views)
}

/// One instance's row before probing: health "down" until a probe answers, or "error" with
/// the reason when its state cannot be read.
fn view_of(
    instance: &ScannedInstance,
    vm: String,
    proxy: String,
    phase: Option<Phase>,
) -> InstanceView {
    let mut view = InstanceView {
        id: instance.name.clone(),
        ip: None,
        port: None,
        tap: None,
        phase,
        vm,
        proxy,
        health: "down".into(),
        proxy_health: None,
        gateway_health: None,
        error: None,
        suspended: None,
        restarts: None,
        crash_looping: false,
        half_made: false,
    };
    match &instance.env {
        Ok(env) => {
            view.ip = env.vm_ip().ok().map(|ip| ip.to_string());
            view.port = env.host_port().ok();
            view.tap = env.tap().ok().map(str::to_owned);
        }
        Err(error) => {
            view.health = "error".into();
            view.error = Some(error_chain(error));
        }
    }
    view
}

/// Probes every readable instance at once.
pub fn probe_all(views: &mut [InstanceView]) {
    std::thread::scope(|scope| {
        for view in views.iter_mut().filter(|v| v.error.is_none()) {
            scope.spawn(move || {
                let proxy = view
                    .port
                    .map(|port| proxy_health(port, PROBE_TIMEOUT).is_up());
                let gateway = match (&view.ip, proxy) {
                    // The proxy answered: no need to ask the guest directly.
                    (_, Some(true)) => None,
                    (Some(ip), _) => ip.parse().ok().map(gateway_health),
                    _ => None,
                };
                let label = |up: bool| if up { "up" } else { "down" }.to_owned();
                view.proxy_health = proxy.map(label);
                view.gateway_health = gateway.map(label);
                let up = proxy == Some(true) || gateway == Some(true);
                // A half-made instance is never shown as healthy.
                let made = view.phase.is_none_or(|p| p >= Phase::Booted);
                view.health = if up && made { "up" } else { "down" }.into();
            });
        }
    });
}

/// The VM column: a suspended VM is not running, the snapshot is what there is to know; a VM
/// systemd keeps restarting is crash-looping, whatever its state this instant.
fn vm_word(view: &InstanceView) -> String {
    match (&view.suspended, view.vm.as_str()) {
        (Some(_), "inactive" | "failed") => "suspended".into(),
        _ if view.crash_looping => "crash-looping".into(),
        _ => view.vm.clone(),
    }
}

/// What to do about the rows that need something: one line each, after the table.
fn footnotes(views: &[InstanceView]) -> Vec<String> {
    let mut notes = Vec::new();
    for view in views {
        let id = &view.id;
        if view.crash_looping {
            notes.push(format!(
                "{id}: the VM keeps dying as it starts ({} restarts); see why with: fireclaw logs {id} console, stop it with: fireclaw stop {id}",
                view.restarts.unwrap_or_default()
            ));
        }
        if view.half_made {
            notes.push(format!("{id}: {}", half_made_advice(view)));
        }
    }
    notes
}

/// What a half-made instance needs: its setup was cut short before the guest was provisioned.
fn half_made_advice(view: &InstanceView) -> String {
    let id = &view.id;
    match view.phase {
        // Its units exist: the VM can boot and be provisioned.
        Some(phase) if phase >= Phase::Units => format!(
            "half-made (setup stopped at phase {phase}); finish it with: fireclaw provision {id}, or remove it with: fireclaw destroy {id} --force"
        ),
        Some(phase) => format!(
            "half-made (setup stopped at phase {phase}, before its VM could boot); remove it with: fireclaw destroy {id} --force, then run setup again"
        ),
        None => String::new(),
    }
}

fn paint(text: &str, colour: bool) -> String {
    if !colour {
        return text.to_owned();
    }
    let code = match text {
        "up" | "active" => "32",
        "down" | "failed" | "error" | "crash-looping" => "31",
        "suspended" => "33",
        _ => return text.to_owned(),
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn table(views: &[InstanceView], colour: bool) -> String {
    let headers = [
        "INSTANCE", "IP", "PORT", "VM", "RESTARTS", "PROXY", "HEALTH", "PHASE",
    ];
    let rows: Vec<[String; 8]> = views
        .iter()
        .map(|v| {
            [
                v.id.clone(),
                v.ip.clone().unwrap_or_else(|| "error".into()),
                v.port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "error".into()),
                vm_word(v),
                v.restarts
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                v.proxy.clone(),
                v.health.clone(),
                match (&v.phase, &v.error) {
                    (Some(phase), _) if v.half_made => format!("{phase} (half-made)"),
                    (Some(phase), _) => phase.to_string(),
                    (None, Some(_)) => "?".into(),
                    (None, None) => "0.2.0".into(),
                },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, raw: &[String], out: &mut String| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(raw[i].chars().count());
            text.push_str(cell);
            if i + 1 < cells.len() {
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    line(header.clone(), &header, &mut out);
    for row in &rows {
        let shown: Vec<String> = row.iter().map(|c| paint(c, colour)).collect();
        line(shown, row, &mut out);
    }
    out
}

pub fn list(
    settings: &Settings,
    json: bool,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let mut views = gather(settings, services, output)?;
    probe_all(&mut views);
    if json {
        output.line(&serde_json::to_string_pretty(&ListJson {
            schema: 1,
            instances: &views,
        })?);
    } else if views.is_empty() {
        output.line("No instances. Create one with: sudo fireclaw setup --instance <id> ...");
    } else {
        output.text(&table(&views, use_colour()));
        for note in footnotes(&views) {
            output.line(&note);
        }
    }
    Ok(())
}

/// `status <id> --json`.
#[derive(Debug, Serialize)]
struct StatusJson<'a> {
    schema: u32,
    #[serde(flatten)]
    instance: &'a InstanceView,
    vm_unit: String,
    proxy_unit: String,
    /// `systemctl is-active` of the guest service, over SSH; `null` when the guest does not answer.
    guest_service: Option<String>,
    /// Private networks this guest may reach besides the host-wide allowlist; `null` for an
    /// instance made by 0.2.0 (it has no fireclaw.json to hold one).
    allow_private_egress: Option<Vec<String>>,
    /// The last `setup` or `provision`: when, whether it worked, its total and each step's
    /// time; `null` when none was recorded.
    last_provisioning: Option<RunTimes>,
}

pub fn status(
    settings: &Settings,
    id: Option<&InstanceId>,
    json: bool,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let Some(id) = id else {
        return list(settings, json, services, output);
    };
    let mut views = gather(settings, services, output)?;
    views.retain(|v| v.id == id.as_str());
    let Some(mut view) = views.pop() else {
        return Err(NoInstance::new(settings, id).into());
    };
    let units = UnitNames::new(id);
    let (view, guest_service) = output.announce_if_slow(
        &format!("{id}: probing the proxy, the gateway and the guest"),
        || {
            probe_all(std::slice::from_mut(&mut view));
            let guest_service = guest_service_state(settings, id, &view, &units);
            (view, guest_service)
        },
    );
    let state = read_fireclaw_state(&StatePaths::new(&settings.paths.state_root, id))
        .ok()
        .flatten();
    let allow_private_egress = state.as_ref().map(|state| {
        state
            .allow_private_egress
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    });
    let last_provisioning = state.and_then(|state| state.last_provisioning);
    if json {
        output.line(&serde_json::to_string_pretty(&StatusJson {
            schema: 1,
            instance: &view,
            vm_unit: units.vm.clone(),
            proxy_unit: units.proxy.clone(),
            guest_service,
            allow_private_egress,
            last_provisioning,
        })?);
    } else {
        print_status(
            &view,
            &units,
            guest_service.as_deref(),
            allow_private_egress.as_deref(),
            last_provisioning.as_ref(),
            output,
        );
    }
    Ok(())
}

/// `systemctl is-active` of the guest service, asked over SSH with a short bound; `None` when
/// the VM is not running or the guest does not answer.
fn guest_service_state(
    settings: &Settings,
    id: &InstanceId,
    view: &InstanceView,
    units: &UnitNames,
) -> Option<String> {
    if view.vm != "active" {
        return None;
    }
    let loaded = load(settings, id).ok()?;
    loaded
        .quick_ssh(GUEST_PROBE_TIMEOUT)
        .output(
            &format!("systemctl is-active {}", shell_word(&units.guest)),
            b"",
        )
        .ok()
        .filter(|o| o.status.code() != Some(255))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn print_status(
    view: &InstanceView,
    units: &UnitNames,
    guest_service: Option<&str>,
    allow_private_egress: Option<&[String]>,
    last_provisioning: Option<&RunTimes>,
    output: &mut Output<'_>,
) {
    let colour = use_colour();
    let or = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
    output.line(&format!("Instance {}", view.id));
    output.line(&format!("  IP             {}", or(&view.ip, "error")));
    output.line(&format!(
        "  proxy port     {}",
        view.port
            .map(|p| p.to_string())
            .unwrap_or_else(|| "error".into())
    ));
    output.line(&format!(
        "  phase          {}",
        match (&view.phase, &view.error) {
            (Some(_), _) if view.half_made => half_made_advice(view),
            (Some(phase), _) => phase.to_string(),
            // No .env to read: nothing says which fireclaw made it.
            (None, Some(_)) => "unknown: the instance's state is missing or unreadable".to_owned(),
            (None, None) => "made by fireclaw 0.2.0".to_owned(),
        }
    ));
    output.line(&format!(
        "  VM unit        {} {}{}",
        units.vm,
        paint(&view.vm, colour),
        match view.restarts {
            Some(restarts) if view.crash_looping => format!(
                ", {} ({restarts} restarts, more than {CRASH_LOOP_RESTARTS} in {} minutes); see why with: fireclaw logs {} console",
                paint("crash-looping", colour),
                CRASH_LOOP_WINDOW_SECS / 60,
                view.id
            ),
            Some(0) | None => String::new(),
            Some(1) => ", restarted once".to_owned(),
            Some(restarts) => format!(", restarted {restarts} times"),
        }
    ));
    output.line(&format!(
        "  proxy unit     {} {}",
        units.proxy,
        paint(&view.proxy, colour)
    ));
    if let Some(suspended) = &view.suspended {
        output.line(&format!(
            "  suspended      {}; resume it with: fireclaw resume {}",
            suspended.text(),
            view.id
        ));
    }
    output.line(&format!(
        "  guest service  {} {}",
        units.guest,
        guest_service.unwrap_or("unreachable")
    ));
    output.line(&format!(
        "  health         {} (proxy {}, guest {})",
        paint(&view.health, colour),
        or(&view.proxy_health, "not probed"),
        or(
            &view.gateway_health,
            if view.proxy_health.as_deref() == Some("up") {
                "not needed"
            } else {
                "not probed"
            }
        )
    ));
    output.line(&format!(
        "  private egress {}",
        match allow_private_egress {
            Some(list) if !list.is_empty() => list.join(", "),
            _ => "none beyond the host-wide allowlist (fireclaw egress show)".to_owned(),
        }
    ));
    if let Some(run) = last_provisioning {
        output.line(&format!(
            "  last provision {} {} {} (at {}; each step: fireclaw status {} --json)",
            run.verb.as_str(),
            if run.ok { "took" } else { "failed after" },
            seconds(run.total_ms),
            run.finished_at,
            view.id
        ));
    }
    if let Some(error) = &view.error {
        output.line(&format!("  error          {error}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, health: &str) -> InstanceView {
        InstanceView {
            id: id.into(),
            ip: Some("172.16.0.2".into()),
            port: Some(18891),
            tap: Some("ta2".into()),
            phase: Some(Phase::Provisioned),
            vm: "active".into(),
            proxy: "active".into(),
            health: health.into(),
            proxy_health: Some(health.into()),
            gateway_health: None,
            error: None,
            suspended: None,
            restarts: Some(0),
            crash_looping: false,
            half_made: false,
        }
    }

    #[test]
    fn a_crash_looping_or_half_made_instance_says_so_and_what_to_do() {
        let mut looping = view("loop", "down");
        looping.restarts = Some(16);
        looping.crash_looping = true;
        let mut half = view("half", "down");
        half.phase = Some(Phase::Booted);
        half.half_made = true;
        let mut early = view("early", "down");
        early.phase = Some(Phase::Assets);
        early.half_made = true;
        let views = [looping.clone(), half, early];
        let text = table(&views, false);
        assert!(
            text.lines().nth(1).unwrap().contains("crash-looping  16"),
            "{text}"
        );
        assert!(text.contains("booted (half-made)"), "{text}");
        assert_eq!(
            footnotes(&views),
            [
                "loop: the VM keeps dying as it starts (16 restarts); see why with: fireclaw logs loop console, stop it with: fireclaw stop loop",
                "half: half-made (setup stopped at phase booted); finish it with: fireclaw provision half, or remove it with: fireclaw destroy half --force",
                "early: half-made (setup stopped at phase assets, before its VM could boot); remove it with: fireclaw destroy early --force, then run setup again",
            ]
        );
        let json = serde_json::to_value(&looping).unwrap();
        assert_eq!(
            (
                &json["restarts"],
                &json["crash_looping"],
                &json["half_made"]
            ),
            (
                &serde_json::json!(16),
                &serde_json::json!(true),
                &serde_json::json!(false)
            )
        );
    }

    #[test]
    fn a_suspended_instance_shows_as_such_with_its_snapshot() {
        let mut asleep = view("asleep", "down");
        asleep.vm = "inactive".into();
        asleep.proxy = "inactive".into();
        asleep.suspended = Some(SuspendedView {
            taken_at: 1_790_000_000,
            age_secs: 3 * 3600 + 5 * 60,
            snapshot_bytes: (1 << 30) + 40_000,
        });
        let text = table(&[asleep.clone()], false);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.contains("  suspended  0         inactive  down"),
            "{text}"
        );
        assert_eq!(
            asleep.suspended.as_ref().unwrap().text(),
            "1025 MiB snapshot, taken 3h 5m ago"
        );
        let json = serde_json::to_value(&asleep).unwrap();
        assert_eq!(json["suspended"]["snapshot_bytes"], (1u64 << 30) + 40_000);
        assert_eq!(json["vm"], "inactive");
        // A running VM with a record (a suspend cut short) shows its unit's real state.
        asleep.vm = "active".into();
        assert!(table(&[asleep], false).contains("  active  "));
    }

    #[test]
    fn table_has_the_020_columns_and_no_colour_off_a_terminal() {
        let mut broken = view("broken", "error");
        broken.ip = None;
        broken.port = None;
        broken.phase = None;
        let text = table(&[view("a", "up"), broken], false);
        insta::assert_snapshot!(text);
        assert!(!text.contains('\x1b'));
        assert!(table(&[view("a", "up")], true).contains("\x1b[32mup\x1b[0m"));
    }

    #[test]
    fn list_json_schema_is_stable() {
        let json = serde_json::to_value(ListJson {
            schema: 1,
            instances: &[view("a", "up")],
        })
        .unwrap();
        insta::assert_snapshot!(serde_json::to_string_pretty(&json).unwrap());
    }
}
