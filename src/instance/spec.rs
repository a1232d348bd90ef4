//! What the user asked for: `SetupSpec` is a fully validated setup request, built by `settings`
//! from flags, environment and defaults. Its constructor enforces the rules that span fields
//! (the model's provider key, Telegram token and users together, path lengths the kernel allows).

use crate::env_vars;
use std::path::PathBuf;

use super::values::{
    DiskSize, HostPort, ImageRef, InstanceId, InvalidValue, MemoryMib, Model, PrivateEgress,
    Provider, PullPolicy, Secret, Skills, TelegramUsers, VcpuCount,
};

/// The kernel's limit for a unix socket path (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{name} (from the environment)")]
    Environment {
        name: &'static str,
        #[source]
        problem: InvalidValue,
    },
    #[error("--telegram-users is required with --telegram-token")]
    TelegramUsersRequired,
    #[error("--telegram-users needs --telegram-token (omit both for a local-only gateway)")]
    TelegramUsersWithoutToken,
    #[error("model {model} needs an API key: {}", self.key_advice())]
    MissingProviderKey {
        model: String,
        flag: &'static str,
        env: &'static str,
        /// Run through sudo, which drops the user's environment unless told to keep a name.
        sudo: bool,
    },
    #[error(
        "API socket path {path} is {length} bytes; the kernel allows {MAX_SOCKET_PATH} (use a shorter instance id, FC_ROOT or --api-sock)"
    )]
    SocketPathTooLong { path: String, length: usize },
    #[error(
        "the VMM's own API socket {path} is {length} bytes; the kernel allows {MAX_SOCKET_PATH} (use a shorter instance id or FC_ROOT)"
    )]
    VmmSocketPathTooLong { path: String, length: usize },
    #[error("saved {key} cannot be used")]
    Saved {
        key: &'static str,
        #[source]
        problem: InvalidValue,
    },
    #[error("{what} path contains a newline, carriage return or NUL")]
    LineBreakInPath { what: &'static str },
}

impl SpecError {
    /// How to give the missing key: through sudo, the environment variable must be kept by
    /// name (a key on the command line shows in `ps` to every user).
    fn key_advice(&self) -> String {
        let Self::MissingProviderKey {
            flag, env, sudo, ..
        } = self
        else {
            return String::new();
        };
        if *sudo {
            format!(
                "sudo does not pass your environment on; export {env} and run: sudo --preserve-env={env} fireclaw ... (or pass {flag}, which ps shows to every user)"
            )
        } else {
            format!("pass {flag} or set {env}")
        }
    }

    /// The same error, saying how to keep the key through sudo when run under it.
    pub fn under_sudo(self, sudo: bool) -> Self {
        match self {
            Self::MissingProviderKey {
                model, flag, env, ..
            } => Self::MissingProviderKey {
                model,
                flag,
                env,
                sudo,
            },
            other => other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramSpec {
    pub token: Secret,
    pub users: TelegramUsers,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderKeys {
    pub anthropic: Option<Secret>,
    pub openai: Option<Secret>,
    pub minimax: Option<Secret>,
}

impl ProviderKeys {
    pub fn for_provider(&self, provider: Provider) -> Option<&Secret> {
        match provider {
            Provider::OpenAi => self.openai.as_ref(),
            Provider::Anthropic => self.anthropic.as_ref(),
            Provider::MiniMax => self.minimax.as_ref(),
        }
    }
}

/// Base image paths; the initrd is used only when the file exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImages {
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub initrd: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupSpec {
    pub id: InstanceId,
    pub telegram: Option<TelegramSpec>,
    pub model: Model,
    pub skills: Skills,
    pub image: ImageRef,
    /// `None`: the first free port above `BASE_PORT`.
    pub host_port: Option<HostPort>,
    pub vcpu: VcpuCount,
    pub memory: MemoryMib,
    pub disk_size: DiskSize,
    pub api_sock: PathBuf,
    pub base: BaseImages,
    pub keys: ProviderKeys,
    pub skip_browser_install: bool,
    /// When provisioning pulls the image.
    pub openclaw_pull: PullPolicy,
    /// Private networks the guest may reach beyond the default policy.
    pub allow_private_egress: PrivateEgress,
    /// The SSH client key this instance is created with (`SSH_KEY_PATH`).
    pub ssh_key_path: PathBuf,
    /// `FC_ROOT` and `STATE_ROOT` in effect, for the path-length rules.
    pub fc_root: PathBuf,
    pub state_root: PathBuf,
}

impl SetupSpec {
    /// Checks the rules that span fields and returns the spec unchanged when they hold.
    pub fn new(spec: Self) -> Result<Self, SpecError> {
        let provider = spec.model.provider();
        if spec.keys.for_provider(provider).is_none() {
            return Err(SpecError::MissingProviderKey {
                model: spec.model.to_string(),
                flag: provider.key_flag(),
                env: provider.key_env(),
                sudo: false,
            });
        }
        let socket = spec.api_sock.as_os_str().len();
        if socket > MAX_SOCKET_PATH {
            return Err(SpecError::SocketPathTooLong {
                path: spec.api_sock.display().to_string(),
                length: socket,
            });
        }
        // The socket the confined VMM binds in its own dir (`API_SOCK` links to it).
        let vmm_socket = super::layout::AssetPaths::new(&spec.fc_root, &spec.id).vmm_api_sock;
        let length = vmm_socket.as_os_str().len();
        if length > MAX_SOCKET_PATH {
            return Err(SpecError::VmmSocketPathTooLong {
                path: vmm_socket.display().to_string(),
                length,
            });
        }
        for (what, path) in [
            (env_vars::FC_ROOT, &spec.fc_root),
            (env_vars::STATE_ROOT, &spec.state_root),
            (env_vars::SSH_KEY_PATH, &spec.ssh_key_path),
        ] {
            if path
                .as_os_str()
                .as_encoded_bytes()
                .iter()
                .any(|b| matches!(b, b'\n' | b'\r' | 0))
            {
                return Err(SpecError::LineBreakInPath { what });
            }
        }
        Ok(spec)
    }
}
