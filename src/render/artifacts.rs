//! Every file `setup` writes for one instance, rendered together from an `InstancePlan`: state
//! files, cloud-init sources, the seed image, the Firecracker config, wrapper scripts and both
//! units, each with its path, mode and a display form in which secrets are redacted. The base
//! images are copied, not rendered; they are listed as `AssetCopy` steps.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::env_vars;
use crate::instance::host::{HostPaths, NetworkSettings};
use crate::instance::layout::StatePaths;
use crate::instance::layout::{AssetPaths, UnitNames, host_key_alias};
use crate::instance::plan::{Allocation, instance_env, provision_vars};
use crate::instance::spec::SetupSpec;
use crate::instance::state::{FireclawState, GatewayToken, Phase, StateError};
use crate::instance::values::InstanceId;

use super::cloud_init::{NetworkConfig, UserDataConfig, meta_data, network_config, user_data};
use super::firecracker::{VmConfigInput, vm_config};
use super::seed_image::{SeedFile, SeedImageError, Timestamp, seed_image};
use super::units::{
    PinnedEnvironment, ProxyUnitConfig, UnitConfinement, VmUnitConfig, proxy_unit, start_script,
    stop_script, vm_unit,
};
use crate::instance::confinement::{VmmAccount, limits};
use crate::instance::secrets::HostKeyPair;

/// Label cloud-init's NoCloud source looks for.
pub const SEED_LABEL: &str = "cidata";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("render state files")]
    State(#[from] StateError),
    #[error("render seed image")]
    Seed(#[from] SeedImageError),
}

/// Absolute paths of the programs the units run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTools {
    pub fireclaw: PathBuf,
    pub firecracker: PathBuf,
    pub socat: PathBuf,
}

/// Everything needed to render an instance's files.
#[derive(Debug, Clone)]
pub struct InstancePlan<'a> {
    pub spec: &'a SetupSpec,
    pub allocation: &'a Allocation,
    pub token: &'a GatewayToken,
    pub host_key: &'a HostKeyPair,
    /// The client public key line (`SSH_KEY_PATH.pub`).
    pub authorized_key: &'a str,
    pub tools: &'a HostTools,
    pub network: &'a NetworkSettings,
    pub paths: &'a HostPaths,
    /// Whether the base initrd exists (it is optional).
    pub with_initrd: bool,
    /// Whether the seed also goes into the rootfs copy (an ext4 base; see `RootfsSeed`).
    pub seed_in_rootfs: bool,
    /// The base has what user-data's `packages:` installs, so the list is left out.
    pub base_has_packages: bool,
    pub time: Timestamp,
    /// The account the VMM runs as.
    pub vmm_account: &'a VmmAccount,
    /// The agent's identity across hosts (new at setup, the archive's at import).
    pub uuid: &'a str,
    /// The phase `fireclaw.json` starts in: `allocated` for setup, `importing` for import.
    pub phase: Phase,
    /// `fireclaw.json`'s `managed_by` (`apply` made the instance).
    pub managed_by: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Text(String),
    Binary(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    pub mode: u32,
    pub body: Body,
    /// What may be shown to a person: the text with secrets replaced, or a description.
    pub display: String,
}

/// A base image copied into the asset dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetCopy {
    pub from: PathBuf,
    pub to: PathBuf,
    /// Grow the copy to this many bytes (the rootfs only).
    pub grow_to: Option<u64>,
}

/// The cloud-init seed as files inside the rootfs copy, for kernels that cannot read the seed
/// image: the same bytes as the `user-data`, `meta-data` and `network-config` written beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsSeed {
    /// The rootfs copy the files go into.
    pub image: PathBuf,
    /// The asset dir: every `host_path` is inside it.
    pub host_dir: PathBuf,
    pub files: Vec<RootfsSeedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsSeedFile {
    /// Its name in the guest's seed dir.
    pub name: String,
    /// The host file written with the same bytes.
    pub host_path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedInstance {
    pub state: Vec<Artifact>,
    pub copies: Vec<AssetCopy>,
    pub assets: Vec<Artifact>,
    /// Written into the rootfs copy once it is made, when the plan asks for it.
    pub rootfs_seed: Option<RootfsSeed>,
    pub units: Vec<Artifact>,
}

fn text(path: PathBuf, mode: u32, body: String) -> Artifact {
    Artifact {
        path,
        mode,
        display: body.clone(),
        body: Body::Text(body),
    }
}

fn secret_text(path: PathBuf, mode: u32, body: String, display: String) -> Artifact {
    Artifact {
        path,
        mode,
        body: Body::Text(body),
        display,
    }
}

/// `user-data` with the guest's private host key replaced, for display.
pub fn redact_private_key(user_data: &str, host_key: &HostKeyPair) -> String {
    let mut shown = user_data.to_owned();
    for line in host_key.private_openssh.lines() {
        let line = line.trim();
        if !line.is_empty() && !line.starts_with("-----") {
            shown = shown.replace(line, "<redacted>");
        }
    }
    shown
}

/// The pinned environment of the units: what the helper commands need to find this instance.
pub fn pinned_environment(paths: &HostPaths, network: &NetworkSettings) -> PinnedEnvironment {
    PinnedEnvironment(vec![
        (
            env_vars::STATE_ROOT,
            paths.state_root.to_string_lossy().into_owned(),
        ),
        (
            env_vars::FC_ROOT,
            paths.fc_root.to_string_lossy().into_owned(),
        ),
        (env_vars::BRIDGE_NAME, network.bridge.to_string()),
        (env_vars::BRIDGE_ADDR, network.bridge_address.to_string()),
        (env_vars::SUBNET_CIDR, network.subnet.to_string()),
    ])
}

/// What the two units and the wrapper scripts are rendered from: `setup` fills it from a new
/// allocation, `adopt` from a 0.2.0 instance's saved state.
#[derive(Debug, Clone)]
pub struct UnitsPlan<'a> {
    pub id: &'a InstanceId,
    pub tools: &'a HostTools,
    /// `API_SOCK`: where Firecracker binds unless it is confined (then it binds in its own dir
    /// and `API_SOCK` is a link there).
    pub api_sock: PathBuf,
    /// The confined VMM's account, and the instance's size its limits follow; `None` renders
    /// the unconfined units of instances made before confinement.
    pub vmm: Option<VmmSize<'a>>,
    pub host_port: u16,
    pub vm_ip: Ipv4Addr,
    pub network: &'a NetworkSettings,
    pub paths: &'a HostPaths,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmSize<'a> {
    pub account: &'a VmmAccount,
    pub vcpus: u8,
    pub memory_mib: u32,
}

/// The wrapper scripts (`start-vm.sh`, `stop-vm.sh`) and the two unit files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFiles {
    pub scripts: Vec<Artifact>,
    pub units: Vec<Artifact>,
}

pub fn unit_files(plan: &UnitsPlan<'_>) -> UnitFiles {
    let id = plan.id.as_str();
    let assets = AssetPaths::new(&plan.paths.fc_root, plan.id);
    let units = UnitNames::new(plan.id);
    let confinement = plan.vmm.map(|vmm| UnitConfinement {
        account: vmm.account.name.clone(),
        instance_dir: assets.dir.clone(),
        limits: limits(vmm.vcpus, vmm.memory_mib),
    });
    let vm = VmUnitConfig {
        id: id.to_owned(),
        fireclaw: plan.tools.fireclaw.clone(),
        firecracker: plan.tools.firecracker.clone(),
        api_sock: if plan.vmm.is_some() {
            assets.vmm_api_sock.clone()
        } else {
            plan.api_sock.clone()
        },
        vm_config: assets.vm_config.clone(),
        console_log: assets.console_log.clone(),
        boot_env: StatePaths::new(&plan.paths.state_root, plan.id).vmm_boot_env,
        environment: pinned_environment(plan.paths, plan.network),
        confinement,
    };
    let proxy = ProxyUnitConfig {
        id: id.to_owned(),
        vm_unit: units.vm.clone(),
        socat: plan.tools.socat.clone(),
        host_port: plan.host_port,
        vm_ip: plan.vm_ip,
    };
    UnitFiles {
        scripts: vec![
            text(assets.start_script, 0o700, start_script(&vm)),
            text(assets.stop_script, 0o700, stop_script(&vm)),
        ],
        units: vec![
            text(units.vm_path(&plan.paths.unit_dir), 0o644, vm_unit(&vm)),
            text(
                units.proxy_path(&plan.paths.unit_dir),
                0o644,
                proxy_unit(&proxy),
            ),
        ],
    }
}

pub fn render_instance(plan: &InstancePlan<'_>) -> Result<RenderedInstance, RenderError> {
    let spec = plan.spec;
    let units = unit_files(&UnitsPlan {
        id: &spec.id,
        tools: plan.tools,
        api_sock: spec.api_sock.clone(),
        vmm: Some(VmmSize {
            account: plan.vmm_account,
            vcpus: spec.vcpu.get(),
            memory_mib: spec.memory.get(),
        }),
        host_port: plan.allocation.host_port.get(),
        vm_ip: plan.allocation.ip,
        network: plan.network,
        paths: plan.paths,
    });
    let mut assets = vm_assets(plan)?;
    let rootfs_seed = plan
        .seed_in_rootfs
        .then(|| rootfs_seed(&AssetPaths::new(&plan.paths.fc_root, &spec.id), &assets));
    assets.extend(units.scripts);
    Ok(RenderedInstance {
        state: state_files(plan)?,
        copies: base_copies(plan),
        assets,
        rootfs_seed,
        units: units.units,
    })
}

/// The seed files for the rootfs, taken from the rendered cloud-init sources so both seeds
/// carry the same bytes. All are root-only: `user-data` holds the guest's private host key.
fn rootfs_seed(paths: &AssetPaths, assets: &[Artifact]) -> RootfsSeed {
    let files = [
        ("meta-data", &paths.meta_data),
        ("user-data", &paths.user_data),
        ("network-config", &paths.network_config),
    ]
    .into_iter()
    .filter_map(|(name, path)| {
        let artifact = assets.iter().find(|a| &a.path == path)?;
        let contents = match &artifact.body {
            Body::Text(text) => text.clone().into_bytes(),
            Body::Binary(bytes) => bytes.clone(),
        };
        Some(RootfsSeedFile {
            name: name.to_owned(),
            host_path: path.clone(),
            contents,
            mode: 0o600,
        })
    })
    .collect();
    RootfsSeed {
        image: paths.rootfs.clone(),
        host_dir: paths.dir.clone(),
        files,
    }
}

/// `.env`, `.token`, `provision.vars`, `known_hosts` (the pinned guest key) and
/// `fireclaw.json`, under `STATE_ROOT/.vm-<id>/`.
fn state_files(plan: &InstancePlan<'_>) -> Result<Vec<Artifact>, RenderError> {
    let spec = plan.spec;
    let id = spec.id.as_str();
    let paths = StatePaths::new(&plan.paths.state_root, &spec.id);
    let env = instance_env(spec, plan.allocation, plan.token)?;
    let vars = provision_vars(spec, plan.token)?;
    let known_hosts = format!(
        "{} {}\n",
        host_key_alias(id),
        plan.host_key.public_openssh.trim()
    );
    let state = FireclawState {
        allow_private_egress: spec.allow_private_egress.networks().to_vec(),
        vmm_account: Some(plan.vmm_account.clone()),
        openclaw_pull: Some(spec.openclaw_pull),
        uuid: Some(plan.uuid.to_owned()),
        managed_by: plan.managed_by.map(str::to_owned),
        ..FireclawState::new(plan.phase)
    };
    Ok(vec![
        secret_text(paths.env, 0o600, env.render(), env.render_redacted()),
        secret_text(
            paths.token,
            0o600,
            plan.token.file_text(),
            format!("<redacted> (print it with: fireclaw token {id})\n"),
        ),
        secret_text(paths.vars, 0o600, vars.render(), vars.render_redacted()),
        text(paths.known_hosts, 0o600, known_hosts),
        text(paths.fireclaw_json, 0o600, state.render()),
    ])
}

/// The cloud-init sources, the seed image made of them, the Firecracker config and its
/// (empty) log file, under `FC_ROOT/<id>/`.
fn vm_assets(plan: &InstancePlan<'_>) -> Result<Vec<Artifact>, RenderError> {
    let spec = plan.spec;
    let paths = AssetPaths::new(&plan.paths.fc_root, &spec.id);
    let user_data_text = user_data(&UserDataConfig {
        authorized_key: plan.authorized_key.to_owned(),
        host_key: plan.host_key.clone(),
        install_packages: !plan.base_has_packages,
    });
    let meta_data_text = meta_data(spec.id.as_str());
    let network_text = network_config(&NetworkConfig {
        mac: plan.allocation.mac.clone(),
        ip: plan.allocation.ip,
        gateway: plan.network.bridge_address.address(),
    });
    let seed = seed_image(
        SEED_LABEL,
        &[
            SeedFile {
                name: "user-data".into(),
                contents: user_data_text.clone().into_bytes(),
            },
            SeedFile {
                name: "meta-data".into(),
                contents: meta_data_text.clone().into_bytes(),
            },
            SeedFile {
                name: "network-config".into(),
                contents: network_text.clone().into_bytes(),
            },
        ],
        plan.time,
    )?;
    let seed_display = format!(
        "ISO 9660 image, label '{SEED_LABEL}', {} bytes: user-data, meta-data, network-config (Rock Ridge and Joliet names)\n",
        seed.len()
    );
    let config = vm_config(&VmConfigInput {
        kernel: paths.kernel.clone(),
        initrd: plan.with_initrd.then(|| paths.initrd.clone()),
        rootfs: paths.rootfs.clone(),
        seed: paths.seed.clone(),
        vcpu: spec.vcpu.get(),
        memory_mib: spec.memory.get(),
        tap: plan.allocation.tap.to_string(),
        mac: plan.allocation.mac.clone(),
        log_path: paths.vmm_log.clone(),
    });
    Ok(vec![
        secret_text(
            paths.user_data,
            0o600,
            user_data_text.clone(),
            redact_private_key(&user_data_text, plan.host_key),
        ),
        text(paths.meta_data, 0o600, meta_data_text),
        text(paths.network_config, 0o600, network_text),
        Artifact {
            path: paths.seed,
            mode: 0o600,
            body: Body::Binary(seed),
            display: seed_display,
        },
        // Its log is made in the VMM's own dir when that dir is handed over (ops::confine).
        text(paths.vm_config, 0o600, config),
    ])
}

/// The base images copied into the asset dir: the rootfs (grown to the disk size), the
/// kernel, and the initrd when there is one.
fn base_copies(plan: &InstancePlan<'_>) -> Vec<AssetCopy> {
    let spec = plan.spec;
    let paths = AssetPaths::new(&plan.paths.fc_root, &spec.id);
    let mut copies = vec![
        AssetCopy {
            from: spec.base.rootfs.clone(),
            to: paths.rootfs,
            grow_to: Some(spec.disk_size.bytes()),
        },
        AssetCopy {
            from: spec.base.kernel.clone(),
            to: paths.kernel,
            grow_to: None,
        },
    ];
    if plan.with_initrd {
        copies.push(AssetCopy {
            from: spec.base.initrd.clone(),
            to: paths.initrd,
            grow_to: None,
        });
    }
    copies
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::instance::plan::allocate;
    use crate::settings::Settings;
    use clap::Parser;

    fn spec_and_settings(extra: &[&str]) -> (SetupSpec, Settings) {
        let settings = Settings::from_lookup(|_| None).unwrap();
        let mut args = vec![
            "fireclaw",
            "setup",
            "--instance",
            "my-bot",
            "--openai-api-key",
            "sk-test-openai",
        ];
        args.extend(extra);
        let Command::Setup(setup) = Cli::try_parse_from(args).unwrap().command else {
            unreachable!()
        };
        (settings.resolve_setup(&setup).unwrap(), settings)
    }

    fn render(extra: &[&str], with_initrd: bool) -> RenderedInstance {
        let (spec, settings) = spec_and_settings(extra);
        let allocation = allocate(
            &spec,
            &settings.network,
            settings.base_port,
            &Default::default(),
        )
        .unwrap();
        let token = GatewayToken::from_random_bytes([0x4f; 32]);
        let host_key = HostKeyPair {
            private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END OPENSSH PRIVATE KEY-----\n".into(),
            public_openssh: "ssh-ed25519 AAAAHOSTPUB fireclaw-host-my-bot".into(),
        };
        render_instance(&InstancePlan {
            spec: &spec,
            allocation: &allocation,
            token: &token,
            host_key: &host_key,
            authorized_key: "ssh-ed25519 AAAACLIENT root@host",
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
            vmm_account: &VmmAccount {
                name: "fcvm-my-bot".into(),
                uid: crate::instance::confinement::VMM_ID_FIRST,
                gid: crate::instance::confinement::VMM_ID_FIRST,
            },
            uuid: "0b7c4c1e-8a3e-4f9a-9d8e-3c2b1a0f9e8d",
            phase: Phase::Allocated,
            managed_by: None,
        })
        .unwrap()
    }

    fn listing(rendered: &RenderedInstance, bodies: bool) -> String {
        let mut out = String::new();
        for copy in &rendered.copies {
            out.push_str(&format!(
                "copy {} -> {} grow {:?}\n",
                copy.from.display(),
                copy.to.display(),
                copy.grow_to
            ));
        }
        if let Some(seed) = &rendered.rootfs_seed {
            for file in &seed.files {
                out.push_str(&format!(
                    "seed {}:/var/lib/cloud/seed/nocloud/{} {:04o} <- {} ({} bytes)\n",
                    seed.image.display(),
                    file.name,
                    file.mode,
                    file.host_path.display(),
                    file.contents.len()
                ));
            }
        }
        for artifact in rendered
            .state
            .iter()
            .chain(&rendered.assets)
            .chain(&rendered.units)
        {
            out.push_str(&format!(
                "=== {} {:04o}\n",
                artifact.path.display(),
                artifact.mode
            ));
            match (&artifact.body, bodies) {
                (Body::Text(text), true) => out.push_str(text),
                (Body::Binary(bytes), true) => out.push_str(&format!("<{} bytes>\n", bytes.len())),
                (_, false) => out.push_str(&artifact.display),
            }
        }
        out
    }

    #[test]
    fn the_rootfs_seed_carries_the_bytes_of_the_cloud_init_sources_beside_it() {
        let rendered = render(&[], false);
        let seed = rendered.rootfs_seed.as_ref().unwrap();
        assert_eq!(seed.files.len(), 3);
        for file in &seed.files {
            assert!(file.host_path.starts_with(&seed.host_dir));
            let artifact = rendered
                .assets
                .iter()
                .find(|a| a.path == file.host_path)
                .unwrap();
            let Body::Text(text) = &artifact.body else {
                panic!("{} is not text", file.name)
            };
            assert_eq!(text.as_bytes(), file.contents.as_slice(), "{}", file.name);
            assert_eq!(file.mode, 0o600);
        }
        assert!(seed.image.ends_with("my-bot/images/rootfs.ext4"));
    }

    #[test]
    fn instance_files_snapshot() {
        insta::assert_snapshot!(listing(&render(&[], false), true));
    }

    #[test]
    fn instance_files_with_telegram_and_initrd_snapshot() {
        let rendered = render(
            &[
                "--telegram-token",
                "123456:AAEsecret",
                "--telegram-users",
                "111, 222",
                "--skip-browser-install",
            ],
            true,
        );
        insta::assert_snapshot!(listing(&rendered, true));
    }

    const TELEGRAM: [&str; 4] = [
        "--telegram-token",
        "123456:AAEsecret",
        "--telegram-users",
        "1",
    ];

    /// Every secret the fixtures hold: keys, bot token, gateway token, host private key.
    fn secrets() -> [String; 4] {
        [
            "sk-test-openai".into(),
            "AAEsecret".into(),
            "4f".repeat(32),
            "SECRETKEYMATERIAL".into(),
        ]
    }

    #[test]
    fn display_form_holds_no_secret() {
        let rendered = render(&TELEGRAM, false);
        let shown = listing(&rendered, false);
        for secret in secrets() {
            assert!(!shown.contains(&secret), "{secret} shown");
        }
        // ...while the files themselves carry them where they belong.
        let written = listing(&rendered, true);
        assert!(written.contains("OPENAI_API_KEY=sk-test-openai"));
        assert!(written.contains("TELEGRAM_TOKEN=123456:AAEsecret"));
    }

    #[test]
    fn secrets_land_only_in_0600_files() {
        let rendered = render(&TELEGRAM, false);
        for artifact in rendered
            .state
            .iter()
            .chain(&rendered.assets)
            .chain(&rendered.units)
        {
            let Body::Text(text) = &artifact.body else {
                continue;
            };
            let secret = secrets().iter().any(|s| text.contains(s.as_str()));
            if secret {
                assert_eq!(
                    artifact.mode,
                    0o600,
                    "{} holds a secret",
                    artifact.path.display()
                );
            }
        }
    }
}
