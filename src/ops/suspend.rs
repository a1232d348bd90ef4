//! Suspend and resume through Firecracker snapshots. `suspend` flushes the guest, pauses it,
//! has its VMM write a full snapshot into the VMM's own dir, flushes the files and the disk,
//! disables the units and records the snapshot in `fireclaw.json`, then stops the VM unit
//! through systemd (its stop path sees the record and the paused VM, and sends no Ctrl-Alt-Del).
//! `resume` checks that this host can load the snapshot and starts the VM unit, whose
//! `vm-net-up` has Firecracker start without a config and whose `vm-resume`
//! (`load_due_snapshot`) loads it paused, removes the record (the snapshot is consumed before
//! the guest runs again, so it is never loaded twice) and resumes it; then the guest clock is
//! stepped and the usual gates run. Each step is safe to repeat, and a kill between any two
//! leaves a running instance, a paused one `resume` continues, or a complete, recorded snapshot
//! (docs/RELIABILITY.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

use super::instance::Loaded;
use super::lifecycle::{Waits, await_ssh, progress, serve_and_gate, unit_state};
use super::network::api;
pub use super::network::vm_paused;
use super::network::{PermanentStartError, vmm_endpoint};
use super::timing::Stopwatch;
use crate::faults::crash_point;
use crate::guest::health::Health;
use crate::guest::ssh::{GuestShell, sudo_command};
use crate::host::firecracker_api::{ApiClient, SnapshotLoad};
use crate::host::interrupt;
use crate::host::snapshot::{
    clock_realtime_supported, described_version, disk_modified, file_size, free_bytes, here,
    remove_file, sync_dir, sync_file, unix_now_secs,
};
use crate::host::systemd::ServiceManager;
use crate::instance::layout::{AssetPaths, StatePaths, UnitNames};
use crate::instance::state::FireclawState;
use crate::instance::suspension::{SnapshotOrigin, Suspension, VmmBoot, cannot_load, room_needed};
use crate::instance::values::InstanceId;
use crate::output::{Output, error_chain};
use crate::render::units::{vm_unit_program, vmm_boot_environment};
use crate::settings::Settings;
use crate::store::{read_fireclaw_state, update_fireclaw_state, write_atomic};

/// The bound of quick API calls (state, pause, resume, logger).
const API_QUICK: Duration = Duration::from_secs(10);
/// The bound of writing or loading a snapshot: a guest's whole memory goes through it.
const API_SNAPSHOT: Duration = Duration::from_secs(600);
/// How long `vm-resume` waits for a starting Firecracker's API socket.
const SOCKET_WAIT: Duration = Duration::from_secs(20);
/// The guest's `sync` before the pause; a guest that does not finish in time is only warned of.
const GUEST_SYNC_SECS: &str = "30";
/// How far the guest's clock may be from the host's after a resume.
const CLOCK_TOLERANCE_SECS: f64 = 2.0;
/// The marker of a VM unit that can resume a snapshot (written by this fireclaw).
pub const RESUME_HELPER: &str = " vm-resume ";

/// The record of a suspended instance, if any.
pub fn suspension(loaded: &Loaded) -> Option<&Suspension> {
    loaded.state.as_ref().and_then(|s| s.suspended.as_ref())
}

/// A load of this snapshot was tried and did not complete.
#[derive(Debug, thiserror::Error)]
#[error(
    "the last load of the snapshot of instance '{id}' did not complete (its journal says why: fireclaw logs {id} host -n 20 --no-follow), so systemd does not try it again; try it once more with: fireclaw resume {id}, or boot it fresh from its disk with: fireclaw start {id} --cold"
)]
pub struct LoadFailedBefore {
    pub id: InstanceId,
}

/// This host cannot load the snapshot.
#[derive(Debug, thiserror::Error)]
#[error(
    "instance '{id}' cannot be resumed on this host ({why}): Firecracker loads a snapshot only on the host kernel, CPU model and snapshot format it was taken with; boot it fresh from its disk with: fireclaw start {id} --cold (what ran in its memory is lost, its disk is kept)"
)]
pub struct CannotLoad {
    pub id: InstanceId,
    pub why: String,
}

/// The Firecracker an instance's VM unit runs (its `ExecStart=`): the one that writes and
/// loads its snapshots.
fn firecracker_binary(settings: &Settings, id: &InstanceId) -> Result<PathBuf> {
    let unit = UnitNames::new(id).vm_path(&settings.paths.unit_dir);
    let text =
        std::fs::read_to_string(&unit).with_context(|| format!("read {}", unit.display()))?;
    vm_unit_program(&text).ok_or_else(|| anyhow!("{} names no Firecracker to run", unit.display()))
}

fn memory_mib(loaded: &Loaded) -> Result<u64> {
    let value = loaded.env.get("VM_MEM_MIB");
    value.trim().parse::<u64>().map_err(|_| {
        anyhow!(
            "instance '{}': VM_MEM_MIB '{}' in its .env is not a number",
            loaded.id,
            crate::instance::values::escaped(value)
        )
    })
}

/// Suspend needs the confined VMM (whose own dir takes the snapshot) and a VM unit that can
/// load one; both come with `setup` and `adopt` of this fireclaw.
fn ensure_unit_can_resume(settings: &Settings, loaded: &Loaded) -> Result<()> {
    let id = &loaded.id;
    let unit = loaded.units.vm_path(&settings.paths.unit_dir);
    let unit_text =
        std::fs::read_to_string(&unit).with_context(|| format!("read {}", unit.display()))?;
    let confined = loaded
        .state
        .as_ref()
        .is_some_and(|s| s.vmm_account.is_some());
    if !confined || !unit_text.contains(RESUME_HELPER) {
        bail!(
            "instance '{id}' has units from before fireclaw could suspend; rewrite them with: fireclaw adopt {id} (then restart it with: fireclaw restart {id})"
        );
    }
    Ok(())
}

/// The snapshot files of an instance, state first.
fn snapshot_files(assets: &AssetPaths) -> [&Path; 2] {
    [&assets.snapshot_state, &assets.snapshot_memory]
}

fn remove_snapshot_files(assets: &AssetPaths) -> Result<()> {
    for file in snapshot_files(assets) {
        remove_file(file)?;
    }
    Ok(())
}

/// What `suspend` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspended {
    /// The snapshot was written (or an interrupted suspend was finished) and the VM stopped.
    Now(Suspension),
    /// It was suspended already.
    Already(Suspension),
}

/// Suspends a running instance. Refuses, changing nothing, an instance that is not running,
/// whose units cannot resume, or whose VMM dir lacks room for the memory and state.
pub fn suspend(
    settings: &Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
    guest: &dyn GuestShell,
    output: &mut Output<'_>,
) -> Result<Suspended> {
    let id = &loaded.id;
    let vm_unit = loaded.units.vm.as_str();
    let proxy_unit = loaded.units.proxy.as_str();
    let running = unit_state(services, vm_unit)?.is_active();
    let record = match suspension(loaded) {
        Some(record) if !running => return Ok(Suspended::Already(record.clone())),
        // Recorded, but the VM unit still runs: a suspend cut short before its stop.
        Some(record) => record.clone(),
        None => {
            if !running {
                bail!(
                    "instance '{id}' is not running, so there is nothing to suspend; start it with: fireclaw start {id}"
                );
            }
            ensure_unit_can_resume(settings, loaded)?;
            write_snapshot(settings, loaded, services, guest, output)?
        }
    };
    progress(output, id, "stopping the paused VM");
    services.stop(&[proxy_unit, vm_unit])?;
    crash_point("suspend:vm-stopped");
    services.disable(&[vm_unit, proxy_unit])?;
    services.reset_failed(&[vm_unit, proxy_unit])?;
    // Firecracker does not flush the disk; the guest's last writes sit in the host's cache.
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    sync_file(&assets.rootfs)?;
    Ok(Suspended::Now(record))
}

/// The snapshot part of `suspend`: checks, guest flush, pause, snapshot, flush, record. A
/// failure before the record resumes the guest and removes the partial files.
fn write_snapshot(
    settings: &Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
    guest: &dyn GuestShell,
    output: &mut Output<'_>,
) -> Result<Suspension> {
    let id = &loaded.id;
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    // Everything that can refuse comes first.
    let firecracker = firecracker_binary(settings, id)?;
    let facts = here(&firecracker)?;
    let needed = room_needed(memory_mib(loaded)?);
    // Files a suspend cut short left are replaced, so their room counts.
    let reclaimable: u64 = snapshot_files(&assets)
        .iter()
        .filter_map(|f| file_size(f))
        .sum();
    let free = free_bytes(&assets.vmm_dir)?.saturating_add(reclaimable);
    if free < needed {
        bail!(
            "not enough room to suspend instance '{id}': its snapshot needs {} MiB (the guest's memory and its state) in {}, and {} MiB are free; free some space there, or stop it instead with: fireclaw stop {id}",
            needed.div_ceil(1 << 20),
            assets.vmm_dir.display(),
            free / (1 << 20)
        );
    }
    let endpoint = vmm_endpoint(settings, id)?;
    let quick = ApiClient::new(&endpoint.api_sock, API_QUICK).expect_peer(endpoint.vmm_uid);
    quick
        .instance_info()
        .with_context(|| format!("reach the VMM of instance '{id}'"))?;
    interrupt::check()?;

    let vm_unit = loaded.units.vm.as_str();
    let proxy_unit = loaded.units.proxy.as_str();
    progress(output, id, "stopping the proxy");
    services.stop(&[proxy_unit])?;
    // From here a failure puts everything back: no record, so the files are not a snapshot.
    let written = (|| -> Result<Suspension> {
        progress(output, id, "flushing the guest's file systems");
        if let Err(error) = guest.run(&sudo_command(&["timeout", GUEST_SYNC_SECS, "sync"]), b"") {
            output.warn(&format!(
                "instance '{id}': the guest did not flush its file systems ({}); its disk holds what it had written so far",
                error_chain(&error)
            ));
        }
        remove_snapshot_files(&assets)?;
        progress(output, id, "pausing the VM");
        quick
            .pause()
            .with_context(|| format!("pause the VM of instance '{id}'"))?;
        crash_point("suspend:paused");
        progress(output, id, "writing the snapshot");
        ApiClient::new(&endpoint.api_sock, API_SNAPSHOT)
            .expect_peer(endpoint.vmm_uid)
            .create_snapshot(&assets.snapshot_state, &assets.snapshot_memory)
            .with_context(|| format!("write the snapshot of instance '{id}'"))?;
        crash_point("suspend:snapshot-written");
        let format_version = described_version(&firecracker, &assets.snapshot_state)?;
        // Firecracker flushes its two files but not the disk, whose last writes from the
        // guest sit in the host's cache.
        for file in [
            &assets.snapshot_state,
            &assets.snapshot_memory,
            &assets.rootfs,
        ] {
            sync_file(file)?;
        }
        sync_dir(&assets.vmm_dir)?;
        let sizes = snapshot_files(&assets).map(file_size);
        let [Some(state_bytes), Some(memory_bytes)] = sizes else {
            bail!(
                "the VMM of instance '{id}' reported a snapshot but its files are not in {}",
                assets.vmm_dir.display()
            );
        };
        // A host reboot must not start it again from its disk while the snapshot waits.
        services.disable(&[vm_unit, proxy_unit])?;
        crash_point("suspend:disabled");
        Ok(Suspension {
            taken_at: unix_now_secs(),
            memory_bytes,
            state_bytes,
            origin: SnapshotOrigin {
                format_version,
                ..facts
            },
            loading_since: None,
            disk_modified: disk_modified(&assets.rootfs),
            clock_realtime: clock_realtime_supported(),
        })
    })();
    let record = match written {
        Ok(record) => record,
        Err(error) => {
            let _ = remove_snapshot_files(&assets);
            // Resuming a running VM changes nothing, so it is asked whatever the failure was.
            let resumed = quick.resume();
            let _ = services.enable_now(&[vm_unit, proxy_unit]);
            return Err(match resumed {
                Ok(()) => error.context(format!(
                    "instance '{id}' was not suspended and runs on"
                )),
                Err(resume_error) => error.context(format!(
                    "instance '{id}' was not suspended, and its VM may stay paused ({}); continue it with: fireclaw resume {id}",
                    error_chain(&resume_error)
                )),
            });
        }
    };
    update_fireclaw_state(&loaded.paths, |state| {
        state.suspended = Some(record.clone());
    })?;
    crash_point("suspend:recorded");
    Ok(record)
}

/// Why `resume` has nothing to resume.
#[derive(Debug, thiserror::Error)]
#[error("instance '{id}' is not suspended ({how}); {hint}")]
pub struct NotSuspended {
    pub id: InstanceId,
    pub how: &'static str,
    pub hint: String,
}

/// Whether `start` must resume rather than boot: a snapshot is recorded, or a suspend cut
/// short left the running VM paused.
pub fn resume_due(settings: &Settings, loaded: &Loaded, services: &dyn ServiceManager) -> bool {
    suspension(loaded).is_some()
        || (unit_state(services, &loaded.units.vm).is_ok_and(|s| s.is_active())
            && vm_paused(settings, &loaded.id))
}

/// Checks that the recorded snapshot can be loaded here: same host kernel, CPU model and
/// snapshot format, and both files as they were written.
pub fn check_loadable(settings: &Settings, id: &InstanceId, record: &Suspension) -> Result<()> {
    let facts = here(&firecracker_binary(settings, id)?)?;
    if let Some(why) = cannot_load(&record.origin, &facts) {
        return Err(CannotLoad {
            id: id.clone(),
            why,
        }
        .into());
    }
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let found = snapshot_files(&assets).map(file_size);
    if found != [Some(record.state_bytes), Some(record.memory_bytes)] {
        bail!(
            "the snapshot files of instance '{id}' in {} are missing or not as written; boot it fresh from its disk with: fireclaw start {id} --cold",
            assets.vmm_dir.display()
        );
    }
    if record
        .disk_modified
        .as_ref()
        .is_some_and(|then| disk_modified(&assets.rootfs).as_ref() != Some(then))
    {
        bail!(
            "the disk of instance '{id}' was written after its snapshot was taken (booted by hand, or by another fireclaw), and its memory no longer matches it; boot it fresh from its disk with: fireclaw start {id} --cold"
        );
    }
    Ok(())
}

/// Resumes a suspended instance (or continues one a suspend left paused), then steps the
/// guest clock and runs the gates `start` runs.
pub fn resume(
    settings: &Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
    guest: &dyn GuestShell,
    waits: Waits,
    watch: &mut Stopwatch,
    output: &mut Output<'_>,
) -> Result<(Health, Health)> {
    watch.time("load to SSH", || {
        load_or_continue(settings, loaded, services, output)?;
        await_ssh(loaded, services, guest, waits.ssh, output)
    })?;
    step_guest_clock(&loaded.id, guest, output);
    serve_and_gate(loaded, services, guest, waits.health, watch, output)
}

/// Starts the VM unit to load the recorded snapshot (finishing a suspend whose stop was cut
/// short first), or continues a VM a suspend left paused before its record.
fn load_or_continue(
    settings: &Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let id = &loaded.id;
    let vm_unit = loaded.units.vm.as_str();
    let running = unit_state(services, vm_unit)?.is_active();
    match suspension(loaded) {
        Some(record) => {
            check_loadable(settings, id, record)?;
            if record.loading_since.is_some() {
                // Loads happen paused and the guest runs only after the record is gone, so
                // one that did not complete can be tried again; systemd never does.
                output.warn(&format!(
                    "instance '{id}': the last load of its snapshot did not complete; trying it once more"
                ));
                update_fireclaw_state(&loaded.paths, |state| {
                    if let Some(suspended) = &mut state.suspended {
                        suspended.loading_since = None;
                    }
                })?;
            }
            if running {
                // Recorded but not yet stopped: finish the stop, then load as usual.
                progress(output, id, "stopping the paused VM");
                services.stop(&[loaded.units.proxy.as_str(), vm_unit])?;
            }
            progress(output, id, "loading the snapshot");
            services.reset_failed(&[vm_unit])?;
            if let Err(error) = services.enable_now(&[vm_unit]) {
                let journal = services.journal_tail(vm_unit, 3);
                let journal = if journal.is_empty() {
                    String::new()
                } else {
                    format!(" ({vm_unit}: {})", journal.replace('\n', "; "))
                };
                let consumed = read_fireclaw_state(&loaded.paths)
                    .ok()
                    .flatten()
                    .is_some_and(|state| state.suspended.is_none());
                let what = if consumed {
                    // Loaded and consumed, then the start failed: systemd boots it from the
                    // disk on its own.
                    format!(
                        "the snapshot of instance '{id}' was loaded, but its VM failed to start{journal}; it boots from its disk now, see: fireclaw status {id}"
                    )
                } else {
                    format!(
                        "the snapshot of instance '{id}' was not loaded{journal}; try it once more with: fireclaw resume {id}, or boot it fresh from its disk with: fireclaw start {id} --cold"
                    )
                };
                return Err(anyhow::Error::from(error).context(what));
            }
            crash_point("resume:started");
        }
        None if loaded.state.as_ref().is_some_and(|s| s.exporting.is_some()) => {
            // An export --pause killed while the VM was paused: continued, and its record
            // and disk clone gone.
            super::export::recover_cut_short(settings, loaded, services, output)?;
            if !running {
                return Err(NotSuspended {
                    id: id.clone(),
                    how: "it is stopped",
                    hint: format!("start it with: fireclaw start {id}"),
                }
                .into());
            }
        }
        None if running && vm_paused(settings, id) => {
            // A suspend cut short before its record: the paused guest is in this VMM.
            progress(output, id, "continuing the paused VM");
            remove_snapshot_files(&AssetPaths::new(&settings.paths.fc_root, id))?;
            api(settings, id, API_QUICK)?
                .resume()
                .with_context(|| format!("resume the VM of instance '{id}'"))?;
            services.enable_now(&[vm_unit])?;
        }
        None => {
            return Err(NotSuspended {
                id: id.clone(),
                how: if running {
                    "it is running"
                } else {
                    "it is stopped"
                },
                hint: if running {
                    format!("see it with: fireclaw status {id}")
                } else {
                    format!("start it with: fireclaw start {id}")
                },
            }
            .into());
        }
    }
    Ok(())
}

/// Discards a snapshot (`start --cold`): a VMM still holding the paused guest is stopped
/// through systemd, then the record goes, then the files. Nothing when there is none.
pub fn discard_snapshot(
    settings: &Settings,
    loaded: &Loaded,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<bool> {
    let id = &loaded.id;
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let recorded = suspension(loaded).is_some();
    let paused = unit_state(services, &loaded.units.vm)?.is_active() && vm_paused(settings, id);
    if !recorded && !paused {
        remove_snapshot_files(&assets)?;
        return Ok(false);
    }
    progress(output, id, "discarding the snapshot");
    if paused {
        services.stop(&[loaded.units.proxy.as_str(), loaded.units.vm.as_str()])?;
    }
    update_fireclaw_state(&loaded.paths, |state| state.suspended = None)?;
    remove_snapshot_files(&assets)?;
    Ok(true)
}

/// The guest's wall clock after a load is behind by the time it was suspended (kvm-clock with
/// `clock_realtime` moves it at load, where the host allows that): read it over SSH and step
/// it to the host's when it is off by more than half the tolerance, so it ends well within it. A failure is a warning: the guest's
/// own time sync may still fix it.
pub fn step_guest_clock(id: &InstanceId, guest: &dyn GuestShell, output: &mut Output<'_>) {
    let offset = || -> Option<f64> {
        let asked = Instant::now();
        let text = guest.run("date +%s.%N", b"").ok()?;
        let guest_time: f64 = text.trim().parse().ok()?;
        // The answer left the guest about halfway through the round trip.
        let host_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs_f64()
            - asked.elapsed().as_secs_f64() / 2.0;
        Some(guest_time - host_time)
    };
    let Some(before) = offset() else {
        output.warn(&format!(
            "instance '{id}': could not read the guest's clock after the resume"
        ));
        return;
    };
    if before.abs() <= CLOCK_TOLERANCE_SECS / 2.0 {
        return;
    }
    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let stepped = guest.run(
        &sudo_command(&["date", "-u", "-s", &format!("@{host_now:.3}")]),
        b"",
    );
    match (stepped, offset()) {
        (Ok(_), Some(after)) if after.abs() <= CLOCK_TOLERANCE_SECS => output.progress(&format!(
            "{id}: stepped the guest clock by {:.1}s to the host's",
            -before
        )),
        (result, after) => output.warn(&format!(
            "instance '{id}': the guest clock is {:.1}s off the host's and could not be stepped ({})",
            after.unwrap_or(before),
            result.err().map_or_else(
                || "it is still off".to_owned(),
                |e| error_chain(&e)
            )
        )),
    }
}

/// The boot of the VM unit's next Firecracker, decided by `vm-net-up` and written where the
/// unit reads it: a recorded snapshot is loaded, anything else boots from the config. Outside
/// the unit (`start-vm.sh`, which can only boot from the disk) a snapshot is refused: booting
/// its disk would leave a snapshot that no longer matches it.
pub fn prepare_boot(settings: &Settings, id: &InstanceId, in_unit: bool) -> Result<()> {
    let paths = StatePaths::new(&settings.paths.state_root, id);
    let state = read_fireclaw_state(&paths)
        .map_err(|e| PermanentStartError::caused_by("read the instance's fireclaw.json", e))?;
    let boot = match state.and_then(|s| s.suspended) {
        Some(_) if !in_unit => {
            return Err(PermanentStartError::new(format!(
                "instance '{id}' is suspended and start-vm.sh can only boot it from its disk; resume it with: fireclaw resume {id}, or discard the snapshot with: fireclaw start {id} --cold"
            ))
            .into());
        }
        Some(record) if record.loading_since.is_some() => {
            return Err(
                PermanentStartError::new(LoadFailedBefore { id: id.clone() }.to_string()).into(),
            );
        }
        Some(_) => VmmBoot::Load,
        None => VmmBoot::Cold,
    };
    write_boot(settings, id, boot)
}

fn write_boot(settings: &Settings, id: &InstanceId, boot: VmmBoot) -> Result<()> {
    let paths = StatePaths::new(&settings.paths.state_root, id);
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    write_atomic(
        &paths.vmm_boot_env,
        vmm_boot_environment(boot, &assets.vm_config).as_bytes(),
        0o600,
    )?;
    Ok(())
}

/// Whether this start of the VM unit runs Firecracker for a load (as `vm-net-up` wrote).
fn load_is_due(settings: &Settings, id: &InstanceId) -> bool {
    let paths = StatePaths::new(&settings.paths.state_root, id);
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    std::fs::read_to_string(&paths.vmm_boot_env)
        .is_ok_and(|text| text == vmm_boot_environment(VmmBoot::Load, &assets.vm_config))
}

/// Waits until the starting VMM answers on its API socket.
fn await_api(api: &ApiClient, id: &InstanceId) -> Result<()> {
    let started = Instant::now();
    loop {
        match api.instance_info() {
            Ok(_) => return Ok(()),
            Err(error) if started.elapsed() >= SOCKET_WAIT => {
                return Err(anyhow::Error::from(error).context(format!(
                    "the VMM of instance '{id}' did not answer within {}s",
                    SOCKET_WAIT.as_secs()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// What `vm-resume` (the VM unit's ExecStartPost) does when a load is due: configure the
/// logger, load the snapshot paused, remove the record (consumed: a crash from here on boots
/// from the disk), resume the guest and remove the files (the VMM keeps its mapping of the
/// memory file until it exits). A load that fails is permanent: Firecracker has ended.
pub fn load_due_snapshot(
    settings: &Settings,
    id: &InstanceId,
    output: &mut Output<'_>,
) -> Result<()> {
    if !load_is_due(settings, id) {
        return Ok(());
    }
    let paths = StatePaths::new(&settings.paths.state_root, id);
    // Every failure before the guest runs again is permanent: a restart by systemd would
    // fail the same way (and a failed load has ended Firecracker).
    let permanent = |what: &str, error: anyhow::Error| -> anyhow::Error {
        PermanentStartError::new(format!(
            "{what}: {}; try it once more with: fireclaw resume {id}, or boot it fresh from its disk with: fireclaw start {id} --cold",
            error_chain(error.as_ref())
        ))
        .into()
    };
    let state: Option<FireclawState> = read_fireclaw_state(&paths)
        .map_err(|e| permanent("read the instance's fireclaw.json", e.into()))?;
    let Some(record) = state.and_then(|s| s.suspended) else {
        return Err(PermanentStartError::new(format!(
            "instance '{id}': this start was to load a snapshot, but none is recorded any more; start it again with: fireclaw start {id}"
        ))
        .into());
    };
    check_loadable(settings, id, &record).map_err(|e| permanent("refusing the load", e))?;
    let endpoint =
        vmm_endpoint(settings, id).map_err(|e| permanent("find the VMM's API socket", e))?;
    let assets = AssetPaths::new(&settings.paths.fc_root, id);
    let quick = ApiClient::new(&endpoint.api_sock, API_QUICK).expect_peer(endpoint.vmm_uid);
    await_api(&quick, id).map_err(|e| permanent("reach the VMM", e))?;
    let log = if endpoint.vmm_uid.is_some() {
        &assets.vmm_log
    } else {
        &assets.firecracker_log
    };
    quick
        .configure_logger(log)
        .map_err(|e| permanent("configure the VMM's logger", e.into()))?;
    // Firecracker ends when a load fails, and systemd may then start this unit again: marked
    // first, a load that did not complete is never tried again by systemd.
    update_fireclaw_state(&paths, |state| {
        if let Some(suspended) = &mut state.suspended {
            suspended.loading_since = Some(unix_now_secs());
        }
    })
    .map_err(|e| permanent("record the load", e.into()))?;
    ApiClient::new(&endpoint.api_sock, API_SNAPSHOT)
        .expect_peer(endpoint.vmm_uid)
        .load_snapshot(&SnapshotLoad {
            state: &assets.snapshot_state,
            memory: &assets.snapshot_memory,
            tap: &endpoint.tap,
            clock_realtime: record.clock_realtime,
        })
        .map_err(|e| permanent(&format!("load the snapshot of instance '{id}'"), e.into()))?;
    crash_point("resume:loaded");
    update_fireclaw_state(&paths, |state| state.suspended = None)?;
    write_boot(settings, id, VmmBoot::Cold)?;
    crash_point("resume:consumed");
    quick
        .resume()
        .with_context(|| format!("resume the VM of instance '{id}' after its load"))?;
    // The guest runs: a failure from here must not fail the start (systemd would kill it).
    if let Err(error) = remove_snapshot_files(&assets) {
        output.warn(&format!(
            "instance '{id}': the consumed snapshot's files stay ({}); they are never loaded again",
            error_chain(error.as_ref())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::ssh::SshError;
    use std::cell::RefCell;

    /// A guest whose clock is `offset` seconds off the host's until `date -s` sets it.
    struct ClockGuest {
        offset: RefCell<f64>,
        commands: RefCell<Vec<String>>,
        can_set: bool,
    }

    impl GuestShell for ClockGuest {
        fn probe(&self) -> Result<(), SshError> {
            Ok(())
        }
        fn run(&self, command: &str, _: &[u8]) -> Result<String, SshError> {
            self.commands.borrow_mut().push(command.to_owned());
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            if let Some(wanted) = command.strip_prefix("sudo date -u -s @") {
                if !self.can_set {
                    return Err(SshError::Unreachable {
                        id: "t".into(),
                        ip: std::net::Ipv4Addr::LOCALHOST,
                        detail: "date: cannot set date: Operation not permitted".into(),
                    });
                }
                let wanted: f64 = wanted.parse().unwrap();
                *self.offset.borrow_mut() = wanted - now;
                return Ok(String::new());
            }
            Ok(format!("{:.9}\n", now + *self.offset.borrow()))
        }
    }

    fn guest(offset: f64, can_set: bool) -> ClockGuest {
        ClockGuest {
            offset: RefCell::new(offset),
            commands: RefCell::default(),
            can_set,
        }
    }

    fn run(guest: &ClockGuest) -> String {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        {
            let mut output = Output::new(&mut out, &mut err);
            step_guest_clock(&"t".parse().unwrap(), guest, &mut output);
        }
        String::from_utf8(err).unwrap()
    }

    #[test]
    fn a_guest_clock_behind_by_the_suspension_is_stepped_to_the_host() {
        let behind = guest(-3600.0, true);
        let said = run(&behind);
        assert!(said.contains("stepped the guest clock by 3600"), "{said}");
        assert!(behind.offset.borrow().abs() < 1.0);
        let commands = behind.commands.borrow();
        assert_eq!(commands.len(), 3, "{commands:?}");
        assert!(commands[1].starts_with("sudo date -u -s @"));
    }

    #[test]
    fn a_guest_clock_within_tolerance_is_left_alone() {
        let close = guest(0.2, true);
        assert_eq!(run(&close), "");
        assert_eq!(close.commands.borrow().len(), 1);
    }

    #[test]
    fn a_clock_that_cannot_be_set_is_a_warning() {
        let stuck = guest(-90.0, false);
        let said = run(&stuck);
        assert!(
            said.contains("warning: instance 't': the guest clock is -90"),
            "{said}"
        );
        assert!(said.contains("Operation not permitted"), "{said}");
    }
}
