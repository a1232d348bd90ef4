//! Every user-data and network-config fireclaw can write passes cloud-init's own schema, as
//! the pinned cloud-init (scripts/test-deps) checks it: `cloud-init schema --config-file` for
//! user-data and `--schema-type network-config` for network-config. The variants are the ones
//! setup renders (local-only, Telegram, MiniMax, with an initrd) and the seed an instance made
//! by fireclaw 0.2.0 keeps after `adopt` (adopt never rewrites the seed); and the drop-in
//! `import` writes into an imported guest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use clap::Parser;
use fireclaw::cli::{Cli, Command as CliCommand};
use fireclaw::instance::plan::allocate;
use fireclaw::instance::secrets::{generate_host_key, generate_token};
use fireclaw::render::artifacts::{Body, HostTools, InstancePlan, render_instance};
use fireclaw::render::seed_image::Timestamp;
use fireclaw::settings::Settings;
use support::real_parts::cloud_init;

/// `cloud-init schema` on one file; returns its verdict and what it said.
fn schema(kind: &str, path: &Path) -> (bool, String) {
    let output = cloud_init()
        .args(["schema", "--schema-type", kind, "--config-file"])
        .arg(path)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The user-data and network-config setup writes for these `setup` flags.
fn rendered(flags: &[&str], with_initrd: bool) -> (String, String) {
    let mut args = vec!["fireclaw", "setup", "--instance", "schema-bot"];
    args.extend(flags);
    let cli = Cli::try_parse_from(args).unwrap();
    let CliCommand::Setup(setup) = cli.command else {
        unreachable!()
    };
    let settings = Settings::from_lookup(|_| None).unwrap();
    let spec = settings.resolve_setup(&setup).unwrap();
    let allocation = allocate(
        &spec,
        &settings.network,
        settings.base_port,
        &Default::default(),
    )
    .unwrap();
    let rendered = render_instance(&InstancePlan {
        spec: &spec,
        allocation: &allocation,
        token: &generate_token().unwrap(),
        host_key: &generate_host_key("schema-bot").unwrap(),
        authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJd0Y2xpZW50a2V5Zm9ydGVzdHM client",
        tools: &HostTools {
            fireclaw: "/usr/local/bin/fireclaw".into(),
            firecracker: "/usr/local/bin/firecracker".into(),
            socat: "/usr/bin/socat".into(),
        },
        network: &settings.network,
        paths: &settings.paths,
        with_initrd,
        seed_in_rootfs: true,
        base_has_packages: false,
        time: Timestamp(1_700_000_000),
        vmm_account: &fireclaw::instance::confinement::VmmAccount {
            name: "fcvm-schema-bot".into(),
            uid: fireclaw::instance::confinement::VMM_ID_FIRST,
            gid: fireclaw::instance::confinement::VMM_ID_FIRST,
        },
        uuid: "0b7c4c1e-8a3e-4f9a-9d8e-3c2b1a0f9e8d",
        phase: fireclaw::instance::state::Phase::Allocated,
        managed_by: None,
    })
    .unwrap();
    let text = |name: &str| {
        let artifact = rendered
            .assets
            .iter()
            .find(|a| a.path.ends_with(name))
            .unwrap();
        match &artifact.body {
            Body::Text(text) => text.clone(),
            Body::Binary(_) => unreachable!(),
        }
    };
    (text("config/user-data"), text("config/network-config"))
}

/// The drop-in `import` writes into an imported guest (the network rendered at every boot) is
/// cloud-config too.
#[test]
fn the_imported_guests_network_drop_in_passes_cloud_inits_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("90-fireclaw-imported.cfg");
    let text = format!(
        "#cloud-config\n{}",
        fireclaw::ops::install::NETWORK_EVERY_BOOT
    );
    std::fs::write(&path, &text).unwrap();
    let (ok, said) = schema("cloud-config", &path);
    assert!(ok, "{said}\n{text}");
    assert!(text.contains("updates:\n  network:\n    when: [boot]"));
}

#[test]
fn every_user_data_and_network_config_passes_cloud_inits_schema() {
    let dir = tempfile::tempdir().unwrap();
    let key = ["--openai-api-key", "sk-schema"];
    let variants: Vec<(&str, Vec<&str>, bool)> = vec![
        ("local-only", key.to_vec(), false),
        (
            "telegram",
            [
                &key[..],
                &[
                    "--telegram-token",
                    "123456:AAHschema",
                    "--telegram-users",
                    "5,6",
                ],
            ]
            .concat(),
            false,
        ),
        (
            "minimax",
            vec![
                "--model",
                "minimax/MiniMax-M2.1",
                "--minimax-api-key",
                "mm-schema",
            ],
            false,
        ),
        ("with-initrd", key.to_vec(), true),
    ];
    let mut checked = Vec::new();
    for (name, flags, with_initrd) in variants {
        let (user_data, network_config) = rendered(&flags, with_initrd);
        checked.push((name.to_owned(), user_data, network_config));
    }
    // What fireclaw 0.2.0 wrote: an adopted instance boots from it for the rest of its life.
    checked.push((
        "0.2.0-adopted".to_owned(),
        support::legacy::user_data_020("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJd0Y2xpZW50 client"),
        support::legacy::network_config_020("06:fc:00:10:00:05", "172.16.0.5"),
    ));
    let mut failures = Vec::new();
    for (name, user_data, network_config) in &checked {
        for (kind, text) in [
            ("cloud-config", user_data),
            ("network-config", network_config),
        ] {
            let path = dir.path().join(format!("{name}-{kind}"));
            std::fs::write(&path, text).unwrap();
            let (valid, said) = schema(kind, &path);
            // Exit 0 alone is not enough: cloud-init also exits 0 when it skips a check.
            if !valid || !said.contains("Valid schema") {
                failures.push(format!("{name} {kind}: {said}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_user_data_fireclaw_wrote_before_the_fix_is_refused() {
    // The check is live: today's user-data with the line earlier versions wrote after
    // `ssh_deletekeys` (an empty `ssh_genkeytypes`) fails it, as it failed before the fix.
    let dir = tempfile::tempdir().unwrap();
    let (user_data, _) = rendered(&["--openai-api-key", "sk-schema"], false);
    let old = user_data.replace(
        "ssh_deletekeys: true\n",
        "ssh_deletekeys: true\nssh_genkeytypes: []\n",
    );
    assert_ne!(old, user_data);
    let path = dir.path().join("user-data");
    std::fs::write(&path, old).unwrap();
    let (valid, said) = schema("cloud-config", &path);
    assert!(!valid, "{said}");
    assert!(said.contains("ssh_genkeytypes: [] is too short"), "{said}");
}
