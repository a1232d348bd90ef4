//! `fireclaw destroy <id>`: after a confirmation on a terminal (`-y` skips it; `--force` too, and
//! cleans up an instance whose state cannot be read), remove the instance's units, tap, API
//! socket, state and assets; what other instances share stays.

use std::io::{BufRead, IsTerminal};

use anyhow::{Result, bail};

use crate::cli::DestroyArgs;
use crate::host::systemd::ServiceManager;
use crate::instance::layout::{AssetPaths, StatePaths, UnitNames};
use crate::instance::values::InstanceId;
use crate::ops::instance::{NoInstance, lock};
use crate::ops::network::{HostSteps, HostSystem};
use crate::ops::teardown::teardown_instance;
use crate::output::Output;
use crate::settings::Settings;
use crate::store::read_env;

pub fn run(
    settings: &Settings,
    args: &DestroyArgs,
    services: &dyn ServiceManager,
    output: &mut Output<'_>,
) -> Result<()> {
    let id = &args.id;
    if !anything_exists(settings, id)? {
        return Err(NoInstance::new(settings, id).into());
    }
    if !(args.force || args.yes || confirmed(id, output)?) {
        bail!("destroy of '{id}' cancelled; nothing was changed");
    }
    let _lock = lock(settings, id, output)?;
    let readable = read_env(&StatePaths::new(&settings.paths.state_root, id)).is_ok();
    if !readable && !args.force {
        bail!(
            "the state of instance '{id}' cannot be read; remove what is left with: fireclaw destroy {id} --force"
        );
    }
    let tap = tap_from_config(settings, id);
    let network = HostSystem { settings };
    output.progress(&format!(
        "{id}: stopping its VM and removing its units, tap, account, state and assets"
    ));
    teardown_instance(settings, id, None, services, &network)?;
    // An instance whose .env was unreadable: its tap is still known from the VM config.
    if !readable && let Some(tap) = tap {
        network.remove_tap(&tap)?;
    }
    output.line(&format!("Instance {id} is destroyed."));
    Ok(())
}

/// Whether any of the instance's state, assets, unit files or VMM account is on the host. A
/// path this user may not look at is an error (it is "needs root", never "no instance").
fn anything_exists(settings: &Settings, id: &InstanceId) -> Result<bool> {
    let units = UnitNames::new(id);
    for path in [
        StatePaths::new(&settings.paths.state_root, id).dir,
        AssetPaths::new(&settings.paths.fc_root, id).dir,
        units.vm_path(&settings.paths.unit_dir),
        units.proxy_path(&settings.paths.unit_dir),
    ] {
        match path.symlink_metadata() {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!("read {}", path.display())));
            }
        }
    }
    // A setup killed before it recorded its VMM account leaves only the account.
    Ok(crate::host::accounts::users()
        .is_ok_and(|users| crate::ops::confine::leftover_account(&users, id).is_some()))
}

fn confirmed(id: &InstanceId, output: &mut Output<'_>) -> Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("destroy '{id}' needs confirmation on a terminal, or -y");
    }
    output.prompt(&format!("Destroy '{id}' and remove VM assets? [y/N] "));
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}

/// The tap an instance uses, from its Firecracker config (for when `.env` is unreadable).
fn tap_from_config(settings: &Settings, id: &InstanceId) -> Option<String> {
    let config = AssetPaths::new(&settings.paths.fc_root, id).vm_config;
    let text = std::fs::read_to_string(config).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("network-interfaces")?
        .get(0)?
        .get("host_dev_name")?
        .as_str()
        .map(str::to_owned)
}
