//! The man pages: `fireclaw(1)` and one page per verb (`fireclaw-setup(1)`,
//! `fireclaw-image-fetch(1)`, ...), each built from the clap definitions (synopsis, flags,
//! examples) with the FILES and ENVIRONMENT sections that no clap definition holds. Pure: the
//! caller prints a page or writes them all.

use clap::Command;

/// One page: its file name (`fireclaw-setup.1`) and its roff text.
pub struct Page {
    pub file_name: String,
    pub roff: String,
}

/// What fireclaw reads and writes on the host, with 0.2.0's default paths.
const FILES: &[(&str, &str)] = &[
    (
        "/var/lib/fireclaw/.vm-<id>/",
        "an instance's state: .env, fireclaw.json, .token, provision.vars, known_hosts (STATE_ROOT)",
    ),
    (
        "/srv/firecracker/vm-demo/<id>/",
        "an instance's VM assets: disks, cloud-init seed, Firecracker config, wrapper scripts (FC_ROOT)",
    ),
    (
        "/srv/firecracker/base/images/",
        "the base images: vmlinux, rootfs.ext4, an optional initrd.img and their manifest (BASE_IMAGES_DIR)",
    ),
    (
        "/etc/systemd/system/firecracker-vmdemo-<id>.service",
        "the instance's VM unit",
    ),
    (
        "/etc/systemd/system/vmdemo-proxy-<id>.service",
        "the instance's localhost proxy unit",
    ),
    (
        "/var/lib/fireclaw/private-egress.allow",
        "private networks every guest may reach, one CIDR a line",
    ),
];

/// Every environment variable a user may set, with its default.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "STATE_ROOT",
        "per-instance state and locks [/var/lib/fireclaw]",
    ),
    (
        "FC_ROOT",
        "per-instance VM assets [/srv/firecracker/vm-demo]",
    ),
    ("BASE_PORT", "host ports are allocated above it [18890]"),
    ("BRIDGE_NAME", "the host bridge [fc-br0]"),
    ("BRIDGE_ADDR", "the bridge's address [172.16.0.1/24]"),
    ("SUBNET_CIDR", "the guests' subnet [172.16.0.0/24]"),
    (
        "SSH_KEY_PATH",
        "the SSH client key of new instances [/home/ubuntu/.ssh/vmdemo_vm]",
    ),
    (
        "BASE_IMAGES_DIR",
        "the base images [/srv/firecracker/base/images]",
    ),
    (
        "FIRECLAW_LOCK_WAIT",
        "seconds to wait for another command on the same instance [30]",
    ),
    (
        "MODEL, SKILLS, VM_VCPU, VM_MEM_MIB, DISK_SIZE, API_SOCK, OPENCLAW_IMAGE_DEFAULT, BASE_KERNEL, BASE_ROOTFS, BASE_INITRD",
        "defaults of the setup flags of the same meaning",
    ),
    (
        "OPENAI_API_KEY, ANTHROPIC_API_KEY, MINIMAX_API_KEY",
        "API keys for setup and provision; better than the flags, which other users can read in the process list",
    ),
    ("NO_COLOR", "any value turns colour off"),
];

/// Every page: `fireclaw(1)` first, then each visible verb's, nested verbs included.
pub fn pages(command: Command) -> std::io::Result<Vec<Page>> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut pages = Vec::new();
    collect(&command, &mut pages)?;
    Ok(pages)
}

/// The page of the verb named by `verbs` (empty: `fireclaw(1)`), or `None` for no such verb.
pub fn page(command: Command, verbs: &[String]) -> std::io::Result<Option<Page>> {
    let wanted = std::iter::once("fireclaw".to_owned())
        .chain(verbs.iter().cloned())
        .collect::<Vec<_>>()
        .join("-");
    Ok(pages(command)?
        .into_iter()
        .find(|p| p.file_name == format!("{wanted}.1")))
}

fn collect(command: &Command, pages: &mut Vec<Page>) -> std::io::Result<()> {
    pages.push(render(command)?);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, pages)?;
    }
    Ok(())
}

fn render(command: &Command) -> std::io::Result<Page> {
    // The header's source is fireclaw and its version on every page, not the verb's own name.
    let man = clap_mangen::Man::new(command.clone())
        .source(format!("fireclaw {}", env!("CARGO_PKG_VERSION")))
        .manual("fireclaw manual");
    let mut roff = Vec::new();
    man.render(&mut roff)?;
    let mut roff = String::from_utf8_lossy(&roff).into_owned();
    roff.push_str(&section("FILES", FILES));
    roff.push_str(&section("ENVIRONMENT", ENVIRONMENT));
    Ok(Page {
        file_name: man.get_filename(),
        roff,
    })
}

/// A roff section of tagged paragraphs, the tag in bold.
fn section(name: &str, entries: &[(&str, &str)]) -> String {
    let mut out = format!(".SH {name}\n");
    for (tag, text) in entries {
        out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", escape(tag), escape(text)));
    }
    out
}

/// Text safe in roff: backslashes and hyphens escaped, no line starting with a control
/// character.
fn escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_visible_verb_has_a_page_with_flags_examples_files_and_environment() {
        let pages = pages(crate::cli::Cli::command()).unwrap();
        let names: Vec<&str> = pages.iter().map(|p| p.file_name.as_str()).collect();
        for name in [
            "fireclaw.1",
            "fireclaw-setup.1",
            "fireclaw-destroy.1",
            "fireclaw-image-fetch.1",
            "fireclaw-egress-show.1",
            "fireclaw-man.1",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("vm-net-up")), "{names:?}");
        let setup = pages
            .iter()
            .find(|p| p.file_name == "fireclaw-setup.1")
            .unwrap();
        for part in [
            ".TH fireclaw-setup 1",
            ".SH OPTIONS",
            "\\-\\-instance",
            "Examples:",
            ".SH FILES",
            ".SH ENVIRONMENT",
            "OPENAI_API_KEY",
        ] {
            assert!(setup.roff.contains(part), "{part} missing:\n{}", setup.roff);
        }
    }

    #[test]
    fn a_page_is_found_by_its_verbs() {
        let command = crate::cli::Cli::command;
        let fetch = page(command(), &["image".into(), "fetch".into()])
            .unwrap()
            .unwrap();
        assert_eq!(fetch.file_name, "fireclaw-image-fetch.1");
        // The header names the page, then fireclaw and its version, never the bare verb's.
        let header = fetch.roff.lines().find(|l| l.starts_with(".TH ")).unwrap();
        assert_eq!(
            header,
            format!(
                ".TH fireclaw-image-fetch 1  \"fireclaw {}\" \"fireclaw manual\"",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(
            page(command(), &[]).unwrap().unwrap().file_name,
            "fireclaw.1"
        );
        assert!(page(command(), &["stup".into()]).unwrap().is_none());
    }

    #[test]
    fn sections_escape_roff() {
        insta::assert_snapshot!(section(
            "FILES",
            &[(".hidden-\\x", "a-b"), ("STATE_ROOT", "state")]
        ));
    }
}
