//! The file `fireclaw apply` reads: one TOML table per instance (`[instances.<id>]`) with its
//! wanted `state` and any setting `setup` takes, secrets only by reference (`{ env = "NAME" }`
//! or `{ file = "/path" }`). Parsing checks every value with the same newtypes the flags use
//! and names the key and its line in every error: unknown keys, wrong types, a literal
//! secret, duplicate ids, one host port twice, the builder's reserved id. A setting the file
//! leaves out is not managed: apply neither compares nor changes it (and setup's default
//! applies when apply creates the instance). Pure: resolving references is the caller's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

use super::baked::{BUILDER_ID, BakeName};
use super::values::{
    DiskSize, HostPort, ImageRef, InstanceId, InvalidValue, MemoryMib, Model, PrivateEgress,
    PullPolicy, Skills, TelegramUsers, VcpuCount,
};

/// An error in the file, at a line, about a key (the instance's table when no key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct FileError {
    pub line: usize,
    pub what: String,
}

/// What an instance should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WantedState {
    Running,
    Stopped,
    Suspended,
    Absent,
}

impl WantedState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Suspended => "suspended",
            Self::Absent => "absent",
        }
    }
}

/// Where a secret comes from: an environment variable of `apply`, or a root-only file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

/// Telegram as the file wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WantedTelegram {
    On {
        token: SecretRef,
        users: TelegramUsers,
    },
    Off,
}

/// The settings an instance's table gives; `None` is "not managed".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WantedSettings {
    pub model: Option<Model>,
    pub skills: Option<Skills>,
    pub telegram: Option<WantedTelegram>,
    pub openclaw_image: Option<ImageRef>,
    pub openclaw_pull: Option<PullPolicy>,
    pub host_port: Option<HostPort>,
    pub vm_vcpu: Option<VcpuCount>,
    pub vm_mem_mib: Option<MemoryMib>,
    pub disk_size: Option<DiskSize>,
    pub api_sock: Option<PathBuf>,
    pub base_kernel: Option<PathBuf>,
    pub base_rootfs: Option<PathBuf>,
    pub base_initrd: Option<PathBuf>,
    pub base_image: Option<BakeName>,
    pub verify_base_sha256: bool,
    pub anthropic_api_key: Option<SecretRef>,
    pub openai_api_key: Option<SecretRef>,
    pub minimax_api_key: Option<SecretRef>,
    pub skip_browser_install: Option<bool>,
    pub allow_private_egress: Option<PrivateEgress>,
    pub ssh_timeout: Option<u32>,
    pub health_timeout: Option<u32>,
}

/// One declared instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub id: InstanceId,
    /// The line of its table, for errors and the plan.
    pub line: usize,
    pub state: WantedState,
    pub settings: WantedSettings,
}

/// The file's instances, in the file's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyFile {
    pub instances: Vec<Wanted>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    instances: BTreeMap<String, Spanned<RawInstance>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    state: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    skills: Option<Spanned<Vec<String>>>,
    telegram: Option<Spanned<bool>>,
    telegram_token: Option<Spanned<RawSecret>>,
    telegram_users: Option<Spanned<Vec<u64>>>,
    openclaw_image: Option<Spanned<String>>,
    openclaw_pull: Option<Spanned<String>>,
    host_port: Option<Spanned<i64>>,
    vm_vcpu: Option<Spanned<i64>>,
    vm_mem_mib: Option<Spanned<i64>>,
    disk_size: Option<Spanned<String>>,
    api_sock: Option<Spanned<String>>,
    base_kernel: Option<Spanned<String>>,
    base_rootfs: Option<Spanned<String>>,
    base_initrd: Option<Spanned<String>>,
    base_image: Option<Spanned<String>>,
    verify_base_sha256: Option<Spanned<bool>>,
    anthropic_api_key: Option<Spanned<RawSecret>>,
    openai_api_key: Option<Spanned<RawSecret>>,
    minimax_api_key: Option<Spanned<RawSecret>>,
    skip_browser_install: Option<Spanned<bool>>,
    allow_private_egress: Option<Spanned<Vec<String>>>,
    ssh_timeout: Option<Spanned<i64>>,
    health_timeout: Option<Spanned<i64>>,
}

/// A secret reference as written; a literal value is refused while parsing.
struct RawSecret(SecretRef);

const LITERAL_SECRET: &str = "a secret is given by reference only, { env = \"NAME\" } or { file = \"/path\" }: a value written here ends up committed with the file";

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = RawSecret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("{ env = \"NAME\" } or { file = \"/path\" }")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL_SECRET))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL_SECRET))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecret, A::Error> {
                let mut found: Option<SecretRef> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    let reference = match key.as_str() {
                        "env" => SecretRef::Env(value),
                        "file" => SecretRef::File(PathBuf::from(value)),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in a secret reference; use {{ env = \"NAME\" }} or {{ file = \"/path\" }}"
                            )));
                        }
                    };
                    if found.replace(reference).is_some() {
                        return Err(de::Error::custom(
                            "a secret reference names one source: env or file, not both",
                        ));
                    }
                }
                found.map(RawSecret).ok_or_else(|| {
                    de::Error::custom("a secret reference needs env = \"NAME\" or file = \"/path\"")
                })
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parses and checks the whole file.
pub fn parse(text: &str) -> Result<ApplyFile, FileError> {
    let raw: RawFile = toml::from_str(text).map_err(|error| FileError {
        line: error.span().map_or(1, |span| line_of(text, span.start)),
        what: error.message().trim().to_owned(),
    })?;
    let mut instances = Vec::new();
    for (name, table) in raw.instances {
        let line = line_of(text, table.span().start);
        let id: InstanceId = name.parse().map_err(|e: InvalidValue| FileError {
            line,
            what: format!("instance id '{name}': {}", e.0),
        })?;
        if id.as_str() == BUILDER_ID {
            return Err(FileError {
                line,
                what: format!(
                    "instance id '{BUILDER_ID}' is reserved for the builder VM of fireclaw image bake; choose another"
                ),
            });
        }
        let settings = settings_of(text, &id, table.into_inner())?;
        instances.push(Wanted {
            id,
            line,
            state: settings.0,
            settings: settings.1,
        });
    }
    instances.sort_by_key(|wanted| wanted.line);
    // One host port, one instance.
    let mut ports: BTreeMap<u16, (&InstanceId, usize)> = BTreeMap::new();
    for wanted in &instances {
        if let Some(port) = wanted.settings.host_port
            && wanted.state != WantedState::Absent
            && let Some((other, other_line)) = ports.insert(port.get(), (&wanted.id, wanted.line))
        {
            return Err(FileError {
                line: wanted.line,
                what: format!(
                    "instances.{}.host_port: port {port} is also the host_port of instance '{other}' (line {other_line})",
                    wanted.id
                ),
            });
        }
    }
    Ok(ApplyFile { instances })
}

fn settings_of(
    text: &str,
    id: &InstanceId,
    raw: RawInstance,
) -> Result<(WantedState, WantedSettings), FileError> {
    // Each value through the same check as its flag, the error at its line.
    fn checked<T, U>(
        text: &str,
        id: &InstanceId,
        key: &str,
        value: Option<Spanned<T>>,
        check: impl FnOnce(T) -> Result<U, String>,
    ) -> Result<Option<U>, FileError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let line = line_of(text, value.span().start);
        check(value.into_inner())
            .map(Some)
            .map_err(|what| FileError {
                line,
                what: format!("instances.{id}.{key}: {what}"),
            })
    }
    fn parsed<U: std::str::FromStr<Err = InvalidValue>>(value: &str) -> Result<U, String> {
        value.parse().map_err(|e: InvalidValue| e.0)
    }
    fn number<U: std::str::FromStr<Err = InvalidValue>>(value: i64) -> Result<U, String> {
        value.to_string().parse().map_err(|e: InvalidValue| e.0)
    }
    fn path(value: String) -> Result<PathBuf, String> {
        if !value.starts_with('/') {
            return Err(format!("'{value}' must be an absolute path"));
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err("the path contains a newline, carriage return or NUL".to_owned());
        }
        Ok(PathBuf::from(value))
    }
    fn secret(raw: RawSecret) -> Result<SecretRef, String> {
        match &raw.0 {
            SecretRef::Env(name)
                if name.is_empty()
                    || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Err(format!("'{name}' is not an environment variable's name"))
            }
            SecretRef::File(path) if !path.is_absolute() => Err(format!(
                "the secret file '{}' must be an absolute path",
                path.display()
            )),
            _ => Ok(raw.0),
        }
    }
    fn seconds(value: i64) -> Result<u32, String> {
        u32::try_from(value)
            .ok()
            .filter(|s| (1..=86_400).contains(s))
            .ok_or_else(|| "must be between 1 and 86400 seconds".to_owned())
    }
    let state = checked(text, id, "state", raw.state, |s| match s.as_str() {
        "running" => Ok(WantedState::Running),
        "stopped" => Ok(WantedState::Stopped),
        "suspended" => Ok(WantedState::Suspended),
        "absent" => Ok(WantedState::Absent),
        other => Err(format!(
            "'{other}' is not a state: use running, stopped, suspended or absent"
        )),
    })?
    .unwrap_or(WantedState::Running);
    let telegram_line = raw
        .telegram
        .as_ref()
        .map(|t| line_of(text, t.span().start))
        .or_else(|| {
            raw.telegram_token
                .as_ref()
                .map(|t| line_of(text, t.span().start))
        });
    let telegram_off = raw.telegram.as_ref().is_some_and(|t| !*t.get_ref());
    let token = checked(text, id, "telegram_token", raw.telegram_token, |r| {
        secret(r)
    })?;
    let users = checked(text, id, "telegram_users", raw.telegram_users, |users| {
        let csv: Vec<String> = users.iter().map(u64::to_string).collect();
        parsed::<TelegramUsers>(&csv.join(","))
    })?;
    let telegram = match (telegram_off, token, users) {
        (true, None, None) => Some(WantedTelegram::Off),
        (true, _, _) => {
            return Err(FileError {
                line: telegram_line.unwrap_or(1),
                what: format!(
                    "instances.{id}.telegram: false turns Telegram off; give no telegram_token or telegram_users with it"
                ),
            });
        }
        (false, Some(token), Some(users)) => Some(WantedTelegram::On { token, users }),
        (false, Some(_), None) => {
            return Err(FileError {
                line: telegram_line.unwrap_or(1),
                what: format!(
                    "instances.{id}.telegram_token: Telegram needs telegram_users too (the user ids allowed to talk to the bot)"
                ),
            });
        }
        (false, None, Some(_)) => {
            return Err(FileError {
                line: telegram_line.unwrap_or(1),
                what: format!("instances.{id}.telegram_users: give telegram_token too"),
            });
        }
        (false, None, None) => None,
    };
    let settings = WantedSettings {
        model: checked(text, id, "model", raw.model, |v| parsed(&v))?,
        skills: checked(text, id, "skills", raw.skills, |v| parsed(&v.join(",")))?,
        telegram,
        openclaw_image: checked(text, id, "openclaw_image", raw.openclaw_image, |v| {
            parsed(&v)
        })?,
        openclaw_pull: checked(text, id, "openclaw_pull", raw.openclaw_pull, |v| parsed(&v))?,
        host_port: checked(text, id, "host_port", raw.host_port, number)?,
        vm_vcpu: checked(text, id, "vm_vcpu", raw.vm_vcpu, number)?,
        vm_mem_mib: checked(text, id, "vm_mem_mib", raw.vm_mem_mib, number)?,
        disk_size: checked(text, id, "disk_size", raw.disk_size, |v| parsed(&v))?,
        api_sock: checked(text, id, "api_sock", raw.api_sock, path)?,
        base_kernel: checked(text, id, "base_kernel", raw.base_kernel, path)?,
        base_rootfs: checked(text, id, "base_rootfs", raw.base_rootfs, path)?,
        base_initrd: checked(text, id, "base_initrd", raw.base_initrd, path)?,
        base_image: checked(text, id, "base_image", raw.base_image, |v| parsed(&v))?,
        verify_base_sha256: raw.verify_base_sha256.is_some_and(|v| v.into_inner()),
        anthropic_api_key: checked(text, id, "anthropic_api_key", raw.anthropic_api_key, secret)?,
        openai_api_key: checked(text, id, "openai_api_key", raw.openai_api_key, secret)?,
        minimax_api_key: checked(text, id, "minimax_api_key", raw.minimax_api_key, secret)?,
        skip_browser_install: raw.skip_browser_install.map(Spanned::into_inner),
        allow_private_egress: checked(
            text,
            id,
            "allow_private_egress",
            raw.allow_private_egress,
            |v| {
                if v.is_empty() {
                    Ok(PrivateEgress::default())
                } else {
                    parsed(&v.join(","))
                }
            },
        )?,
        ssh_timeout: checked(text, id, "ssh_timeout", raw.ssh_timeout, seconds)?,
        health_timeout: checked(text, id, "health_timeout", raw.health_timeout, seconds)?,
    };
    if settings.base_image.is_some() && settings.base_rootfs.is_some() {
        return Err(FileError {
            line: line_of(text, 0).max(1),
            what: format!(
                "instances.{id}: base_image and base_rootfs name two bases; give one of them"
            ),
        });
    }
    Ok((state, settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_file_parses_in_its_order_with_every_setting() {
        let file = parse(
            r#"
# two bots
[instances.tg]
state = "suspended"
model = "anthropic/claude-opus-4-6"
anthropic_api_key = { env = "TG_ANTHROPIC" }
telegram_token = { file = "/etc/fireclaw/tg.token" }
telegram_users = [111, 222]
skills = ["github", "tmux"]
vm_vcpu = 2
vm_mem_mib = 2048
disk_size = "20G"
host_port = 18900
allow_private_egress = ["10.20.0.0/16"]
skip_browser_install = true

[instances.a]
openai_api_key = { env = "A_KEY" }
telegram = false
"#,
        )
        .unwrap();
        let ids: Vec<&str> = file.instances.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["tg", "a"]);
        let tg = &file.instances[0];
        assert_eq!(tg.line, 3);
        assert_eq!(tg.state, WantedState::Suspended);
        assert_eq!(
            tg.settings.model.as_ref().map(Model::as_str),
            Some("anthropic/claude-opus-4-6")
        );
        assert_eq!(
            tg.settings.anthropic_api_key,
            Some(SecretRef::Env("TG_ANTHROPIC".into()))
        );
        assert!(matches!(
            &tg.settings.telegram,
            Some(WantedTelegram::On { token: SecretRef::File(p), .. }) if p == std::path::Path::new("/etc/fireclaw/tg.token")
        ));
        assert_eq!(tg.settings.vm_mem_mib.map(MemoryMib::get), Some(2048));
        assert_eq!(tg.settings.host_port.map(HostPort::get), Some(18900));
        assert_eq!(tg.settings.skip_browser_install, Some(true));
        let a = &file.instances[1];
        assert_eq!(a.state, WantedState::Running);
        assert_eq!(a.settings.telegram, Some(WantedTelegram::Off));
        assert_eq!(a.settings.model, None, "left out: not managed");
    }

    #[test]
    fn every_bad_input_names_its_key_and_line() {
        let cases = [
            (
                "[instances.a]\nstate = \"running\"\nmodle = \"x\"\n",
                "line 3: unknown field `modle`",
            ),
            ("[instances.a]\nvm_vcpu = \"two\"\n", "line 2: invalid type"),
            (
                "[instances.a]\nopenai_api_key = \"sk-live-123\"\n",
                "line 2: a secret is given by reference only",
            ),
            (
                "[instances.a]\nopenai_api_key = { value = \"x\" }\n",
                "line 2: unknown key `value` in a secret reference",
            ),
            ("[instances.a]\n\n[instances.a]\n", "line 3: duplicate key"),
            (
                "[instances.a]\nhost_port = 18900\n[instances.b]\nhost_port = 18900\n",
                "line 3: instances.b.host_port: port 18900 is also the host_port of instance 'a' (line 1)",
            ),
            (
                "[instances.fireclaw-bake]\n",
                "line 1: instance id 'fireclaw-bake' is reserved",
            ),
            ("[instances.\"Bad Id\"]\n", "line 1: instance id 'Bad Id'"),
            (
                "[instances.a]\nstate = \"paused\"\n",
                "line 2: instances.a.state: 'paused' is not a state",
            ),
            (
                "[instances.a]\nmodel = \"gpt\"\n",
                "line 2: instances.a.model: model 'gpt' must look like",
            ),
            (
                "[instances.a]\nvm_mem_mib = 1\n",
                "line 2: instances.a.vm_mem_mib:",
            ),
            (
                "[instances.a]\ntelegram_token = { env = \"T\" }\n",
                "line 2: instances.a.telegram_token: Telegram needs telegram_users too",
            ),
            (
                "[instances.a]\nbase_kernel = \"vmlinux\"\n",
                "line 2: instances.a.base_kernel: 'vmlinux' must be an absolute path",
            ),
            (
                "[instances.a]\nopenai_api_key = { env = \"A B\" }\n",
                "line 2: instances.a.openai_api_key: 'A B' is not an environment variable's name",
            ),
            ("[other]\nx = 1\n", "line 1: unknown field `other`"),
            ("[instances.a\n", "line 1:"),
        ];
        for (text, expected) in cases {
            let got = error(text);
            assert!(got.starts_with(expected), "{text:?}: {got}");
            assert!(!got.contains("sk-live-123"), "{got}");
            assert_eq!(got.lines().count(), 1, "{got}");
        }
    }

    #[test]
    fn an_absent_instance_does_not_hold_its_port() {
        let file = parse(
            "[instances.a]\nstate = \"absent\"\nhost_port = 18900\n[instances.b]\nhost_port = 18900\n",
        )
        .unwrap();
        assert_eq!(file.instances.len(), 2);
        assert_eq!(parse("").unwrap(), ApplyFile::default());
    }
}
