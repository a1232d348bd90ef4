//! `fireclaw token <id>`: the gateway token alone on stdout, so `$(fireclaw token a)` works.

use anyhow::{Context, Result, bail};

use crate::instance::layout::StatePaths;
use crate::instance::state::GatewayToken;
use crate::instance::values::InstanceId;
use crate::ops::instance::ensure_exists;
use crate::output::Output;
use crate::settings::Settings;

pub fn run(settings: &Settings, id: &InstanceId, output: &mut Output<'_>) -> Result<()> {
    ensure_exists(settings, id)?;
    let paths = StatePaths::new(&settings.paths.state_root, id);
    let text = match std::fs::read_to_string(&paths.token) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "instance '{id}' has no token: {} does not exist",
                paths.token.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!(
                "read {}: permission denied (run as root)",
                paths.token.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", paths.token.display())),
    };
    let token = GatewayToken::from_file_text(&text)
        .with_context(|| format!("read {}", paths.token.display()))?;
    output.line(token.expose());
    Ok(())
}
