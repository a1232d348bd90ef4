//! Every setting fireclaw reads from the environment, resolved once: defaults, then environment,
//! then flags. Host-wide variables (paths, network, base port) are validated eagerly, so nonsense
//! in any of them stops every command. Variables that only supply a flag's default (`MODEL`,
//! `SKILLS`, `VM_VCPU`, `VM_MEM_MIB`, `DISK_SIZE`, `API_SOCK`, the API keys, ...) are validated
//! when a command needs them and the flag was not given, because names like `MODEL` may be set
//! for unrelated programs.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::cli::{ImageBakeArgs, ImageFetchArgs, KeyArgs, SetupArgs};
use crate::env_vars;
use crate::instance::baked::BakeName;
pub use crate::instance::host::{HostPaths, NetworkSettings};
use crate::instance::images::{
    DEFAULT_KERNEL_INDEX, DEFAULT_UBUNTU_MIRROR, FetchSpec, ImageSource, KernelChoice,
    UBUNTU_RELEASE, UBUNTU_ROOT_TARBALL,
};
use crate::instance::layout::{INITRD_FILE, KERNEL_FILE, ROOTFS_FILE, default_api_sock};
use crate::instance::spec::{BaseImages, ProviderKeys, SetupSpec, SpecError, TelegramSpec};
use crate::instance::values::{
    BridgeAddress, DiskSize, ImageRef, InterfaceName, InvalidValue, MemoryMib, Model, Secret,
    Skills, Subnet24, VcpuCount, escaped, parse_absolute_path, parse_base_port,
};

pub const DEFAULT_MODEL: &str = "openai/gpt-5.5";
pub const DEFAULT_SKILLS: &str = "github,tmux,coding-agent,session-logs,skill-creator";
pub const DEFAULT_IMAGE: &str = "ghcr.io/openclaw/openclaw:latest";
pub const DEFAULT_VCPU: &str = "4";
pub const DEFAULT_MEM_MIB: &str = "8192";
pub const DEFAULT_DISK_SIZE: &str = "40G";
/// Where systemd units go; fixed, as 0.2.0 has it.
pub const SYSTEMD_UNIT_DIR: &str = "/etc/systemd/system";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name}")]
pub struct SettingsError {
    pub name: &'static str,
    #[source]
    pub problem: InvalidValue,
}

/// Environment values that only default a flag; kept raw until a command needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagDefaults {
    pub model: Option<String>,
    pub skills: Option<String>,
    pub vm_vcpu: Option<String>,
    pub vm_mem_mib: Option<String>,
    pub disk_size: Option<String>,
    pub api_sock: Option<String>,
    pub image: Option<String>,
    pub base_kernel: Option<String>,
    pub base_rootfs: Option<String>,
    pub base_initrd: Option<String>,
    pub anthropic_api_key: Option<String>,
    pub openai_api_key: Option<String>,
    pub minimax_api_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub paths: HostPaths,
    /// `BASE_PORT`: auto-allocated host ports start one above it.
    pub base_port: u16,
    /// `FIRECLAW_LOCK_WAIT` (seconds, default 30): how long a command waits for another one on
    /// the same instance before it reports the instance busy.
    pub lock_wait: std::time::Duration,
    pub network: NetworkSettings,
    /// `SSH_KEY_PATH`: the client key new instances are created with.
    pub ssh_key_path: PathBuf,
    /// `BASE_IMAGES_DIR`.
    pub base_images_dir: PathBuf,
    pub flag_defaults: FlagDefaults,
}

/// Where the client key goes by default: in the `ubuntu` user's home, as 0.2.0 keeps it.
const UBUNTU_HOME: &str = "/home/ubuntu";

/// The client key on a host without an `ubuntu` user (and `SSH_KEY_PATH` unset): under
/// `STATE_ROOT`, so setup makes no home directory for a user that does not exist. Each
/// instance records its key's path in `.env`, so 0.2.0 finds it too.
pub fn key_path_without_ubuntu_home(state_root: &Path) -> PathBuf {
    state_root.join("ssh").join("vmdemo_vm")
}

impl Settings {
    /// Resolves settings from the process environment.
    pub fn from_process_env() -> Result<Self, SettingsError> {
        let mut settings = Self::from_lookup(|name| std::env::var(name).ok())?;
        let explicit = std::env::var(env_vars::SSH_KEY_PATH).is_ok_and(|v| !v.is_empty());
        if !explicit && !Path::new(UBUNTU_HOME).is_dir() {
            settings.ssh_key_path = key_path_without_ubuntu_home(&settings.paths.state_root);
        }
        Ok(settings)
    }

    /// Resolves settings from any variable lookup (tests pass a map). Empty values count as
    /// unset, as `${VAR:-default}` does in 0.2.0.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let path = |name: &'static str, default: &str| -> Result<PathBuf, SettingsError> {
            let value = get(name).unwrap_or_else(|| default.to_owned());
            parse_absolute_path(&value).map_err(|problem| SettingsError { name, problem })
        };
        let parsed = |name: &'static str, default: &str| -> Result<String, SettingsError> {
            Ok(get(name).unwrap_or_else(|| default.to_owned()))
        };

        let base_port =
            parse_base_port(&parsed(env_vars::BASE_PORT, "18890")?).map_err(|problem| {
                SettingsError {
                    name: env_vars::BASE_PORT,
                    problem,
                }
            })?;
        let lock_wait = {
            let raw = parsed(env_vars::FIRECLAW_LOCK_WAIT, "30")?;
            let secs = raw
                .parse::<u16>()
                .ok()
                .filter(|s| *s <= 3600)
                .ok_or_else(|| SettingsError {
                    name: env_vars::FIRECLAW_LOCK_WAIT,
                    problem: InvalidValue(format!(
                        "'{}' must be a number of seconds from 0 to 3600",
                        escaped(&raw)
                    )),
                })?;
            std::time::Duration::from_secs(u64::from(secs))
        };
        let bridge = parse_env::<InterfaceName>(
            env_vars::BRIDGE_NAME,
            &parsed(env_vars::BRIDGE_NAME, "fc-br0")?,
        )?;
        let bridge_address = parse_env::<BridgeAddress>(
            env_vars::BRIDGE_ADDR,
            &parsed(env_vars::BRIDGE_ADDR, "172.16.0.1/24")?,
        )?;
        let subnet = parse_env::<Subnet24>(
            env_vars::SUBNET_CIDR,
            &parsed(env_vars::SUBNET_CIDR, "172.16.0.0/24")?,
        )?;
        if !subnet.contains(bridge_address.address()) {
            return Err(SettingsError {
                name: env_vars::BRIDGE_ADDR,
                problem: InvalidValue(format!(
                    "{bridge_address} is not inside SUBNET_CIDR {subnet}"
                )),
            });
        }

        Ok(Self {
            paths: HostPaths {
                state_root: path(env_vars::STATE_ROOT, "/var/lib/fireclaw")?,
                fc_root: path(env_vars::FC_ROOT, "/srv/firecracker/vm-demo")?,
                unit_dir: PathBuf::from(SYSTEMD_UNIT_DIR),
            },
            base_port,
            lock_wait,
            network: NetworkSettings {
                bridge,
                bridge_address,
                subnet,
            },
            ssh_key_path: path(env_vars::SSH_KEY_PATH, "/home/ubuntu/.ssh/vmdemo_vm")?,
            base_images_dir: path(env_vars::BASE_IMAGES_DIR, "/srv/firecracker/base/images")?,
            flag_defaults: FlagDefaults {
                model: get(env_vars::MODEL),
                skills: get(env_vars::SKILLS),
                vm_vcpu: get(env_vars::VM_VCPU),
                vm_mem_mib: get(env_vars::VM_MEM_MIB),
                disk_size: get(env_vars::DISK_SIZE),
                api_sock: get(env_vars::API_SOCK),
                image: get(env_vars::OPENCLAW_IMAGE_DEFAULT),
                base_kernel: get(env_vars::BASE_KERNEL),
                base_rootfs: get(env_vars::BASE_ROOTFS),
                base_initrd: get(env_vars::BASE_INITRD),
                anthropic_api_key: get(env_vars::ANTHROPIC_API_KEY),
                openai_api_key: get(env_vars::OPENAI_API_KEY),
                minimax_api_key: get(env_vars::MINIMAX_API_KEY),
            },
        })
    }

    /// The images directory: `--dir`, else `BASE_IMAGES_DIR`.
    pub fn images_dir(&self, flag: Option<&std::path::Path>) -> PathBuf {
        flag.map_or_else(|| self.base_images_dir.clone(), std::path::Path::to_owned)
    }

    /// What `image fetch` is to do: the images directory, and each input given or defaulted
    /// (Firecracker's CI kernel, Ubuntu's root tarball from the release directory or mirror).
    pub fn resolve_image_fetch(&self, args: &ImageFetchArgs) -> FetchSpec {
        let kernel = match &args.kernel {
            Some(source) => KernelChoice::Given(source.clone()),
            None => KernelChoice::FirecrackerCi {
                index: args
                    .kernel_index
                    .clone()
                    .unwrap_or_else(|| DEFAULT_KERNEL_INDEX.to_owned()),
            },
        };
        let (rootfs, rootfs_sums_required, rootfs_version) = match &args.rootfs {
            Some(source) => (source.clone(), false, None),
            None => {
                let mirror = args
                    .ubuntu_mirror
                    .clone()
                    .unwrap_or_else(|| ImageSource::Url(DEFAULT_UBUNTU_MIRROR.to_owned()));
                (
                    mirror.join(UBUNTU_ROOT_TARBALL),
                    true,
                    Some(UBUNTU_RELEASE.to_owned()),
                )
            }
        };
        FetchSpec {
            dir: self.images_dir(args.dir.as_deref()),
            kernel,
            kernel_sha256: args.kernel_sha256.clone(),
            rootfs,
            rootfs_sums_required,
            rootfs_version,
            rootfs_sha256: args.rootfs_sha256.clone(),
            keyring: args.keyring.clone(),
            force: args.force,
            initrd: args.initrd.clone(),
            images_named: args.kernel.is_some()
                || args.rootfs.is_some()
                || args.ubuntu_mirror.is_some()
                || args.kernel_index.is_some(),
        }
    }

    /// Provider keys: each flag, else its environment variable.
    pub fn resolve_keys(&self, flags: &KeyArgs) -> Result<ProviderKeys, SpecError> {
        let env = &self.flag_defaults;
        let pick =
            |flag: &Option<Secret>, name: &'static str, value: &Option<String>| match (flag, value)
            {
                (Some(secret), _) => Ok(Some(secret.clone())),
                (None, Some(value)) => Secret::parse("the value", value)
                    .map(Some)
                    .map_err(|problem| SpecError::Environment { name, problem }),
                (None, None) => Ok(None),
            };
        Ok(ProviderKeys {
            anthropic: pick(
                &flags.anthropic_api_key,
                env_vars::ANTHROPIC_API_KEY,
                &env.anthropic_api_key,
            )?,
            openai: pick(
                &flags.openai_api_key,
                env_vars::OPENAI_API_KEY,
                &env.openai_api_key,
            )?,
            minimax: pick(
                &flags.minimax_api_key,
                env_vars::MINIMAX_API_KEY,
                &env.minimax_api_key,
            )?,
        })
    }

    /// The full setup spec: flag, else environment, else default, then the cross-field rules.
    pub fn resolve_setup(&self, args: &SetupArgs) -> Result<SetupSpec, SpecError> {
        let env = &self.flag_defaults;
        let model: Model =
            flag_env_default(&args.model, env_vars::MODEL, &env.model, DEFAULT_MODEL)?;
        let skills: Skills =
            flag_env_default(&args.skills, env_vars::SKILLS, &env.skills, DEFAULT_SKILLS)?;
        let image: ImageRef = flag_env_default(
            &args.openclaw_image,
            env_vars::OPENCLAW_IMAGE_DEFAULT,
            &env.image,
            DEFAULT_IMAGE,
        )?;
        let vcpu: VcpuCount =
            flag_env_default(&args.vm_vcpu, env_vars::VM_VCPU, &env.vm_vcpu, DEFAULT_VCPU)?;
        let memory: MemoryMib = flag_env_default(
            &args.vm_mem_mib,
            env_vars::VM_MEM_MIB,
            &env.vm_mem_mib,
            DEFAULT_MEM_MIB,
        )?;
        let disk_size: DiskSize = flag_env_default(
            &args.disk_size,
            env_vars::DISK_SIZE,
            &env.disk_size,
            DEFAULT_DISK_SIZE,
        )?;
        let image_path =
            |flag: &Option<PathBuf>, name: &'static str, value: &Option<String>, file: &str| {
                base_image_path(&self.base_images_dir, flag, name, value, file)
            };
        let base = BaseImages {
            kernel: image_path(
                &args.base_kernel,
                env_vars::BASE_KERNEL,
                &env.base_kernel,
                KERNEL_FILE,
            )?,
            rootfs: match &args.base_image {
                Some(name) => self.base_images_dir.join(name.file_name()),
                None => image_path(
                    &args.base_rootfs,
                    env_vars::BASE_ROOTFS,
                    &env.base_rootfs,
                    ROOTFS_FILE,
                )?,
            },
            initrd: image_path(
                &args.base_initrd,
                env_vars::BASE_INITRD,
                &env.base_initrd,
                INITRD_FILE,
            )?,
        };
        let api_sock = match (&args.api_sock, &env.api_sock) {
            (Some(path), _) => path.clone(),
            (None, Some(value)) => {
                parse_absolute_path(value).map_err(|problem| SpecError::Environment {
                    name: env_vars::API_SOCK,
                    problem,
                })?
            }
            (None, None) => default_api_sock(&self.paths.fc_root, args.instance.as_str()),
        };
        let telegram = match (&args.telegram_token, &args.telegram_users) {
            (Some(token), Some(users)) => Some(TelegramSpec {
                token: token.clone(),
                users: users.clone(),
            }),
            (Some(_), None) => return Err(SpecError::TelegramUsersRequired),
            (None, Some(_)) => return Err(SpecError::TelegramUsersWithoutToken),
            (None, None) => None,
        };
        SetupSpec::new(SetupSpec {
            id: args.instance.clone(),
            telegram,
            model,
            skills,
            image,
            host_port: args.host_port,
            vcpu,
            memory,
            disk_size,
            api_sock,
            base,
            keys: self.resolve_keys(&args.keys)?,
            skip_browser_install: args.skip_browser_install,
            openclaw_pull: args.openclaw_pull.unwrap_or_default(),
            allow_private_egress: args.allow_private_egress.clone().unwrap_or_default(),
            ssh_key_path: self.ssh_key_path.clone(),
            fc_root: self.paths.fc_root.clone(),
            state_root: self.paths.state_root.clone(),
        })
        .map_err(|error| error.under_sudo(under_sudo()))
    }
}

/// Whether fireclaw runs through sudo (which sets `SUDO_USER`): its environment is then not the
/// user's, unless kept by name.
fn under_sudo() -> bool {
    std::env::var_os(env_vars::SUDO_USER).is_some_and(|user| !user.is_empty())
}

/// What `image bake` is to do, every input given or defaulted as `setup` defaults it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakeSpec {
    pub name: BakeName,
    pub images_dir: PathBuf,
    pub base: BaseImages,
    pub image: ImageRef,
    pub archive: Option<PathBuf>,
    pub browser: bool,
    pub vcpu: VcpuCount,
    pub memory: MemoryMib,
    pub force: bool,
    pub ssh_timeout: std::time::Duration,
}

impl Settings {
    pub fn resolve_bake(&self, args: &ImageBakeArgs) -> Result<BakeSpec, SpecError> {
        let env = &self.flag_defaults;
        let images_dir = self.images_dir(args.dir.as_deref());
        let image_path =
            |flag: &Option<PathBuf>, name: &'static str, value: &Option<String>, file: &str| {
                base_image_path(&images_dir, flag, name, value, file)
            };
        let base = BaseImages {
            kernel: image_path(
                &args.kernel,
                env_vars::BASE_KERNEL,
                &env.base_kernel,
                KERNEL_FILE,
            )?,
            rootfs: image_path(
                &args.from,
                env_vars::BASE_ROOTFS,
                &env.base_rootfs,
                ROOTFS_FILE,
            )?,
            initrd: image_path(
                &args.initrd,
                env_vars::BASE_INITRD,
                &env.base_initrd,
                INITRD_FILE,
            )?,
        };
        let image: ImageRef = flag_env_default(
            &args.openclaw_image,
            env_vars::OPENCLAW_IMAGE_DEFAULT,
            &env.image,
            DEFAULT_IMAGE,
        )?;
        Ok(BakeSpec {
            name: args.name.clone(),
            images_dir,
            base,
            image,
            archive: args.openclaw_image_archive.clone(),
            browser: !args.skip_browser_install,
            vcpu: args.vm_vcpu,
            memory: args.vm_mem_mib,
            force: args.force,
            ssh_timeout: std::time::Duration::from_secs(args.ssh_timeout),
        })
    }
}

/// A base image's path: the flag, else the environment variable `name` (absolute), else `file`
/// in `images_dir`.
fn base_image_path(
    images_dir: &Path,
    flag: &Option<PathBuf>,
    name: &'static str,
    value: &Option<String>,
    file: &str,
) -> Result<PathBuf, SpecError> {
    match (flag, value) {
        (Some(path), _) => Ok(path.clone()),
        (None, Some(value)) => {
            parse_absolute_path(value).map_err(|problem| SpecError::Environment { name, problem })
        }
        (None, None) => Ok(images_dir.join(file)),
    }
}

fn parse_env<T: FromStr<Err = InvalidValue>>(
    name: &'static str,
    value: &str,
) -> Result<T, SettingsError> {
    value
        .parse()
        .map_err(|problem| SettingsError { name, problem })
}

fn flag_env_default<T: FromStr<Err = InvalidValue> + Clone>(
    flag: &Option<T>,
    name: &'static str,
    env: &Option<String>,
    default: &str,
) -> Result<T, SpecError> {
    if let Some(value) = flag {
        return Ok(value.clone());
    }
    match env {
        Some(value) => value
            .parse()
            .map_err(|problem| SpecError::Environment { name, problem }),
        None => default
            .parse()
            .map_err(|problem| SpecError::Environment { name, problem }),
    }
}

/// The state files after `provision <id> [flags]`, computed in memory and validated before
/// anything is written: saved values, then flags; environment keys fill only empty saved keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionUpdate {
    pub env: crate::instance::state::EnvFile,
    pub vars: crate::instance::state::VarsFile,
}

impl Settings {
    pub fn resolve_provision(
        &self,
        args: &crate::cli::ProvisionArgs,
        env: &crate::instance::state::EnvFile,
        vars: &crate::instance::state::VarsFile,
    ) -> Result<ProvisionUpdate, SpecError> {
        use crate::instance::state::parse_flag;
        let saved =
            |what: &'static str, problem: InvalidValue| SpecError::Saved { key: what, problem };
        let model: Model = match &args.model {
            Some(model) => model.clone(),
            None => vars
                .get("MODEL")
                .parse()
                .map_err(|problem| saved("MODEL", problem))?,
        };
        let skills = match &args.skills {
            Some(skills) => skills.to_csv(),
            None => vars.get("SKILLS").to_owned(),
        };
        let image = match &args.openclaw_image {
            Some(image) => image.to_string(),
            None => vars.get("OPENCLAW_IMAGE").to_owned(),
        };
        let (token, users) = provision_telegram(args, vars)?;
        let skip_browser = if args.skip_browser_install {
            true
        } else if args.browser_install {
            false
        } else {
            parse_flag(vars.get("SKIP_BROWSER_INSTALL"))
        };
        let [anthropic, openai, minimax] = self.provision_keys(args, vars, &model)?;
        let mut env = env.clone();
        let mut vars = vars.clone();
        let skip = skip_browser.to_string();
        let shared: [(&'static str, &str); 8] = [
            ("MODEL", model.as_str()),
            ("SKILLS", &skills),
            ("TELEGRAM_USERS", &users),
            ("OPENCLAW_IMAGE", &image),
            ("SKIP_BROWSER_INSTALL", &skip),
            ("ANTHROPIC_API_KEY", &anthropic),
            ("OPENAI_API_KEY", &openai),
            ("MINIMAX_API_KEY", &minimax),
        ];
        let write_error = |key: &'static str| SpecError::Saved {
            key,
            problem: InvalidValue("contains a line break".into()),
        };
        for (key, value) in shared {
            env.set(key, value).map_err(|_| write_error(key))?;
            vars.set(key, value).map_err(|_| write_error(key))?;
        }
        vars.set("TELEGRAM_TOKEN", &token)
            .map_err(|_| write_error("TELEGRAM_TOKEN"))?;
        Ok(ProvisionUpdate { env, vars })
    }

    /// Provider keys for `provision`: a flag replaces the saved key; the environment only
    /// fills a key saved empty. The model's provider must end up with a key.
    fn provision_keys(
        &self,
        args: &crate::cli::ProvisionArgs,
        vars: &crate::instance::state::VarsFile,
        model: &Model,
    ) -> Result<[String; 3], SpecError> {
        let flags = &args.keys;
        let fill = |flag: &Option<Secret>, key: &'static str, from_env: &Option<String>| {
            if let Some(secret) = flag {
                return Ok(secret.expose().to_owned());
            }
            let current = vars.get(key);
            if !current.is_empty() {
                return Ok(current.to_owned());
            }
            match from_env {
                Some(value) => Secret::parse("the value", value)
                    .map(|s| s.expose().to_owned())
                    .map_err(|problem| SpecError::Environment { name: key, problem }),
                None => Ok(String::new()),
            }
        };
        let d = &self.flag_defaults;
        let anthropic = fill(
            &flags.anthropic_api_key,
            env_vars::ANTHROPIC_API_KEY,
            &d.anthropic_api_key,
        )?;
        let openai = fill(
            &flags.openai_api_key,
            env_vars::OPENAI_API_KEY,
            &d.openai_api_key,
        )?;
        let minimax = fill(
            &flags.minimax_api_key,
            env_vars::MINIMAX_API_KEY,
            &d.minimax_api_key,
        )?;
        let provider = model.provider();
        let key_for_model = match provider {
            crate::instance::values::Provider::OpenAi => &openai,
            crate::instance::values::Provider::Anthropic => &anthropic,
            crate::instance::values::Provider::MiniMax => &minimax,
        };
        if key_for_model.is_empty() {
            return Err(SpecError::MissingProviderKey {
                model: model.to_string(),
                flag: provider.key_flag(),
                env: provider.key_env(),
                sudo: under_sudo(),
            });
        }
        Ok([anthropic, openai, minimax])
    }
}

/// Telegram for `provision`: `--no-telegram` clears it; otherwise each flag replaces its saved
/// value, and a token needs users (and users a token).
fn provision_telegram(
    args: &crate::cli::ProvisionArgs,
    vars: &crate::instance::state::VarsFile,
) -> Result<(String, String), SpecError> {
    if args.no_telegram {
        return Ok((String::new(), String::new()));
    }
    let token = match &args.telegram_token {
        Some(token) => token.expose().to_owned(),
        None => vars.get("TELEGRAM_TOKEN").to_owned(),
    };
    let users = match &args.telegram_users {
        Some(users) => users.to_csv(),
        None => vars.get("TELEGRAM_USERS").to_owned(),
    };
    if args.telegram_users.is_some() && token.is_empty() {
        return Err(SpecError::TelegramUsersWithoutToken);
    }
    if !token.is_empty() && users.trim().is_empty() {
        return Err(SpecError::TelegramUsersRequired);
    }
    Ok((token, users))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_020_readme() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.paths.state_root, Path::new("/var/lib/fireclaw"));
        assert_eq!(s.paths.fc_root, Path::new("/srv/firecracker/vm-demo"));
        assert_eq!(s.base_port, 18890);
        assert_eq!(s.network.bridge.as_str(), "fc-br0");
        assert_eq!(s.network.bridge_address.to_string(), "172.16.0.1/24");
        assert_eq!(s.network.subnet.to_string(), "172.16.0.0/24");
        assert_eq!(s.ssh_key_path, Path::new("/home/ubuntu/.ssh/vmdemo_vm"));
        assert_eq!(s.base_images_dir, Path::new("/srv/firecracker/base/images"));
    }

    #[test]
    fn overrides_are_applied_and_empty_means_unset() {
        let s = settings(&[
            ("STATE_ROOT", "/tmp/state"),
            ("FC_ROOT", ""),
            ("BASE_PORT", "20000"),
            ("BRIDGE_NAME", "br-test"),
            ("BRIDGE_ADDR", "10.9.8.1/24"),
            ("SUBNET_CIDR", "10.9.8.0/24"),
        ])
        .unwrap();
        assert_eq!(s.paths.state_root, Path::new("/tmp/state"));
        assert_eq!(s.paths.fc_root, Path::new("/srv/firecracker/vm-demo"));
        assert_eq!(s.base_port, 20000);
        assert_eq!(s.network.bridge.as_str(), "br-test");
    }

    #[test]
    fn nonsense_in_host_wide_variables_is_refused_naming_the_variable() {
        for (name, value) in [
            ("STATE_ROOT", "relative"),
            ("FC_ROOT", "/a/../b"),
            ("BASE_PORT", "http"),
            ("BRIDGE_NAME", "much-too-long-bridge"),
            ("BRIDGE_ADDR", "172.16.0.1/16"),
            ("SUBNET_CIDR", "172.16.0.0/23"),
            ("SSH_KEY_PATH", "~/.ssh/key"),
            ("BASE_IMAGES_DIR", "images"),
        ] {
            let err = settings(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
    }

    #[test]
    fn bridge_address_must_be_inside_the_subnet() {
        let err = settings(&[("BRIDGE_ADDR", "10.0.0.1/24")]).unwrap_err();
        assert_eq!(
            crate::output::error_chain(&err),
            "environment variable BRIDGE_ADDR: 10.0.0.1/24 is not inside SUBNET_CIDR 172.16.0.0/24"
        );
    }

    #[test]
    fn flag_default_variables_are_not_checked_until_used() {
        let s = settings(&[("MODEL", "not a model"), ("VM_VCPU", "lots")]).unwrap();
        assert_eq!(s.flag_defaults.model.as_deref(), Some("not a model"));
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::collections::HashMap;
    use std::path::Path;

    fn resolve(vars: &[(&str, &str)], args: &[&str]) -> Result<SetupSpec, SpecError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = Settings::from_lookup(|name| map.get(name).cloned()).unwrap();
        let mut all = vec!["fireclaw", "setup"];
        all.extend(args);
        let Command::Setup(setup) = Cli::try_parse_from(all).unwrap().command else {
            unreachable!()
        };
        settings.resolve_setup(&setup)
    }

    #[test]
    fn id_too_long_for_the_socket_path_is_refused() {
        let id = "a".repeat(63);
        let fc_root = format!("/{}", "r".repeat(30));
        // /<30>/<63>/firecracker.socket = 1 + 30 + 1 + 63 + 19 = 114 bytes.
        let err = resolve(
            &[("FC_ROOT", &fc_root), ("OPENAI_API_KEY", "k")],
            &["--instance", &id],
        )
        .unwrap_err();
        assert!(
            matches!(err, SpecError::SocketPathTooLong { length: 114, .. }),
            "{err}"
        );
        // The same id fits under the default FC_ROOT (24 + 1 + 63 + 19 = 107 bytes).
        resolve(&[("OPENAI_API_KEY", "k")], &["--instance", &id]).unwrap();
        // --api-sock moves the socket users see somewhere short, but the confined VMM binds its
        // own in FC_ROOT/<id>/vmm/ (1 + 30 + 1 + 63 + 13 = 108 bytes)...
        let err = resolve(
            &[("FC_ROOT", &fc_root), ("OPENAI_API_KEY", "k")],
            &["--instance", &id, "--api-sock", "/run/fc/a.sock"],
        )
        .unwrap_err();
        assert!(
            matches!(err, SpecError::VmmSocketPathTooLong { length: 108, .. }),
            "{err}"
        );
        // ...which fits one byte shorter.
        resolve(
            &[("FC_ROOT", &fc_root[..30]), ("OPENAI_API_KEY", "k")],
            &["--instance", &id, "--api-sock", "/run/fc/a.sock"],
        )
        .unwrap();
    }

    #[test]
    fn flags_beat_environment_beats_defaults() {
        let spec = resolve(
            &[
                ("MODEL", "anthropic/x"),
                ("ANTHROPIC_API_KEY", "ka"),
                ("OPENAI_API_KEY", "ko"),
                ("VM_VCPU", "2"),
            ],
            &[
                "--instance",
                "a",
                "--model",
                "openai/y",
                "--openai-api-key",
                "flag-key",
            ],
        )
        .unwrap();
        assert_eq!(spec.model.as_str(), "openai/y");
        assert_eq!(spec.keys.openai.as_ref().unwrap().expose(), "flag-key");
        assert_eq!(spec.keys.anthropic.as_ref().unwrap().expose(), "ka");
        assert_eq!(spec.vcpu.get(), 2);
        assert_eq!(spec.memory.get(), 8192);
        assert_eq!(
            spec.base.kernel,
            Path::new("/srv/firecracker/base/images/vmlinux")
        );
        assert_eq!(
            spec.api_sock,
            Path::new("/srv/firecracker/vm-demo/a/firecracker.socket")
        );
    }

    #[test]
    fn telegram_token_and_users_go_together() {
        let base = [("OPENAI_API_KEY", "k")];
        assert_eq!(
            resolve(&base, &["--instance", "a", "--telegram-token", "1:x"]).unwrap_err(),
            SpecError::TelegramUsersRequired
        );
        assert_eq!(
            resolve(&base, &["--instance", "a", "--telegram-users", "1"]).unwrap_err(),
            SpecError::TelegramUsersWithoutToken
        );
        let spec = resolve(
            &base,
            &[
                "--instance",
                "a",
                "--telegram-token",
                "1:x",
                "--telegram-users",
                " 5 ,6",
            ],
        )
        .unwrap();
        assert_eq!(spec.telegram.unwrap().users.to_csv(), "5,6");
    }

    #[test]
    fn missing_provider_key_names_flag_and_variable() {
        let err =
            resolve(&[], &["--instance", "a", "--model", "minimax/MiniMax-M2.1"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "model minimax/MiniMax-M2.1 needs an API key: pass --minimax-api-key or set MINIMAX_API_KEY"
        );
    }
}

#[cfg(test)]
mod provision_tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::instance::state::{EnvFile, VarsFile};
    use clap::Parser;

    const VARS: &str = "FIRECLAW_STATE_FORMAT=plain-v1\nINSTANCE_ID=a\nTELEGRAM_TOKEN=1:tok\nTELEGRAM_USERS=5\nMODEL=openai/gpt-5.5\nSKILLS=github\nGATEWAY_TOKEN=gw\nOPENCLAW_IMAGE=img:1\nSKIP_BROWSER_INSTALL=true\nDISK_SIZE=40G\nANTHROPIC_API_KEY=\nOPENAI_API_KEY=sk-saved\nMINIMAX_API_KEY=\n";
    const ENV: &str = "FIRECLAW_STATE_FORMAT=plain-v1\nINSTANCE_ID=a\nHOST_PORT=18891\nVM_IP=172.16.0.2\nVM_TAP=ta2\nMODEL=openai/gpt-5.5\nSKILLS=github\nTELEGRAM_USERS=5\nOPENCLAW_IMAGE=img:1\nSKIP_BROWSER_INSTALL=true\nANTHROPIC_API_KEY=\nOPENAI_API_KEY=sk-saved\nMINIMAX_API_KEY=\n";

    fn resolve(vars_env: &[(&str, &str)], args: &[&str]) -> Result<ProvisionUpdate, SpecError> {
        let map: std::collections::HashMap<String, String> = vars_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = Settings::from_lookup(|n| map.get(n).cloned()).unwrap();
        let mut all = vec!["fireclaw", "provision", "a"];
        all.extend(args);
        let Command::Provision(provision) = Cli::try_parse_from(all).unwrap().command else {
            unreachable!()
        };
        settings.resolve_provision(
            &provision,
            &EnvFile::parse(ENV).unwrap(),
            &VarsFile::parse(VARS).unwrap(),
        )
    }

    #[test]
    fn no_flags_change_nothing_byte_for_byte() {
        let update = resolve(&[], &[]).unwrap();
        assert_eq!(update.vars.render(), VARS);
        assert_eq!(update.env.render(), ENV);
    }

    #[test]
    fn no_telegram_clears_the_token_and_users() {
        let update = resolve(&[], &["--no-telegram"]).unwrap();
        assert_eq!(update.vars.get("TELEGRAM_TOKEN"), "");
        assert_eq!(update.vars.get("TELEGRAM_USERS"), "");
        assert_eq!(update.env.get("TELEGRAM_USERS"), "");
    }

    #[test]
    fn users_alone_work_when_a_token_is_saved() {
        let update = resolve(&[], &["--telegram-users", "7,8"]).unwrap();
        assert_eq!(update.vars.get("TELEGRAM_USERS"), "7,8");
        assert_eq!(update.vars.get("TELEGRAM_TOKEN"), "1:tok");
        let cleared = resolve(&[], &["--no-telegram"]).unwrap();
        let vars = cleared.vars.render();
        let settings = Settings::from_lookup(|_| None).unwrap();
        let Command::Provision(args) =
            Cli::try_parse_from(["fireclaw", "provision", "a", "--telegram-users", "1"])
                .unwrap()
                .command
        else {
            unreachable!()
        };
        let err = settings
            .resolve_provision(&args, &cleared.env, &VarsFile::parse(&vars).unwrap())
            .unwrap_err();
        assert_eq!(err, SpecError::TelegramUsersWithoutToken);
    }

    #[test]
    fn browser_install_undoes_skip() {
        let update = resolve(&[], &["--browser-install"]).unwrap();
        assert_eq!(update.vars.get("SKIP_BROWSER_INSTALL"), "false");
        assert_eq!(update.env.get("SKIP_BROWSER_INSTALL"), "false");
    }

    #[test]
    fn environment_keys_fill_only_empty_saved_keys() {
        let update = resolve(
            &[
                ("OPENAI_API_KEY", "sk-env"),
                ("ANTHROPIC_API_KEY", "sk-ant-env"),
            ],
            &["--model", "anthropic/claude-opus-4"],
        )
        .unwrap();
        assert_eq!(
            update.vars.get("OPENAI_API_KEY"),
            "sk-saved",
            "a saved key is kept"
        );
        assert_eq!(
            update.vars.get("ANTHROPIC_API_KEY"),
            "sk-ant-env",
            "an empty one is filled"
        );
        assert_eq!(update.env.get("MODEL"), "anthropic/claude-opus-4");
    }

    #[test]
    fn a_model_without_its_key_is_refused() {
        assert!(matches!(
            resolve(&[], &["--model", "minimax/MiniMax-M2.1"]),
            Err(SpecError::MissingProviderKey { .. })
        ));
    }
}
