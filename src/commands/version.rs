//! `fireclaw version`: this build (version and git commit) and the Firecracker it would run,
//! as text or JSON. Like `man`, it reads no settings, so it works on any host.

use anyhow::Result;
use serde::Serialize;

use crate::host::probe;
use crate::host::process::run as run_program;
use crate::output::Output;

#[derive(Debug, Serialize)]
struct VersionView {
    version: &'static str,
    /// The git commit built from, when known.
    commit: Option<&'static str>,
    /// The `firecracker` on PATH, when there is one.
    firecracker: Option<FirecrackerView>,
}

#[derive(Debug, Serialize)]
struct FirecrackerView {
    path: String,
    /// What `firecracker --version` says (`v1.16.1`), when it says it.
    version: Option<String>,
}

/// The `vX.Y.Z` word of `firecracker --version`'s first line.
fn firecracker_version(text: &str) -> Option<String> {
    text.lines()
        .next()?
        .split_whitespace()
        .find(|word| word.starts_with('v') && word[1..].starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
}

pub fn run(json: bool, output: &mut Output<'_>) -> Result<()> {
    let commit = option_env!("FIRECLAW_GIT_COMMIT").filter(|c| !c.is_empty());
    let firecracker = probe::which("firecracker").map(|path| {
        let version = path
            .to_str()
            .and_then(|program| run_program(program, &["--version"]).ok())
            .filter(|out| out.status.success())
            .and_then(|out| firecracker_version(&String::from_utf8_lossy(&out.stdout)));
        FirecrackerView {
            path: path.display().to_string(),
            version,
        }
    });
    let view = VersionView {
        version: env!("CARGO_PKG_VERSION"),
        commit,
        firecracker,
    };
    if json {
        output.line(&serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    output.line(&format!(
        "fireclaw {} (commit {})",
        view.version,
        view.commit.unwrap_or("unknown")
    ));
    output.line(&match &view.firecracker {
        Some(found) => format!(
            "firecracker {} at {}",
            found.version.as_deref().unwrap_or("(version unknown)"),
            found.path
        ),
        None => "firecracker not found on PATH (see: fireclaw doctor)".to_owned(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_firecracker_version_word_is_found() {
        assert_eq!(
            firecracker_version("Firecracker v1.16.1\n\nSupported snapshot versions: v6.0.0\n"),
            Some("v1.16.1".to_owned())
        );
        assert_eq!(firecracker_version("something else"), None);
        assert_eq!(firecracker_version(""), None);
    }
}
