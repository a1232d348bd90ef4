//! The per-instance state files and their exact formats: `.env` and `provision.vars` (0.2.0's
//! plain-v1, holding only 0.2.0's keys), `.token`, and `fireclaw.json`, where everything 0.2.0
//! does not know lives. Values read from disk are kept as written so a round trip is lossless;
//! typed accessors interpret them as leniently as 0.2.0 did.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::confinement::VmmAccount;
use super::plain::{PlainDoc, PlainError};
use super::suspension::Suspension;
use super::timing::RunTimes;
use super::values::{PrivateCidr, PullPolicy, escaped};

/// `.env` keys, in the order 0.2.0 writes them (after the format line).
pub const ENV_KEYS: [&str; 19] = [
    "INSTANCE_ID",
    "HOST_PORT",
    "VM_IP",
    "VM_TAP",
    "VM_MAC",
    "GATEWAY_TOKEN",
    "MODEL",
    "SKILLS",
    "TELEGRAM_USERS",
    "OPENCLAW_IMAGE",
    "VM_VCPU",
    "VM_MEM_MIB",
    "DISK_SIZE",
    "API_SOCK",
    "SSH_KEY_PATH",
    "SKIP_BROWSER_INSTALL",
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "MINIMAX_API_KEY",
];

/// `provision.vars` keys, in the order 0.2.0 writes them (after the format line).
pub const VARS_KEYS: [&str; 12] = [
    "INSTANCE_ID",
    "TELEGRAM_TOKEN",
    "TELEGRAM_USERS",
    "MODEL",
    "SKILLS",
    "GATEWAY_TOKEN",
    "OPENCLAW_IMAGE",
    "SKIP_BROWSER_INSTALL",
    "DISK_SIZE",
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "MINIMAX_API_KEY",
];

/// Keys whose values are secrets and are redacted wherever a state file is shown.
pub const SECRET_KEYS: [&str; 5] = [
    "GATEWAY_TOKEN",
    "TELEGRAM_TOKEN",
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "MINIMAX_API_KEY",
];

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Format(#[from] PlainError),
    #[error("{key} is missing")]
    MissingKey { key: &'static str },
    #[error("{key} is '{}', which is not {expected}", escaped(value))]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("fireclaw.json is not valid")]
    Json(#[from] serde_json::Error),
}

/// The key set of one plain-v1 state file.
pub trait KeySet {
    const KEYS: &'static [&'static str];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvKeys;
impl KeySet for EnvKeys {
    const KEYS: &'static [&'static str] = &ENV_KEYS;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarsKeys;
impl KeySet for VarsKeys {
    const KEYS: &'static [&'static str] = &VARS_KEYS;
}

/// A plain-v1 state file with a fixed key set: `.env` or `provision.vars`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedFile<K> {
    doc: PlainDoc,
    keys: std::marker::PhantomData<K>,
}

pub type EnvFile = KeyedFile<EnvKeys>;
pub type VarsFile = KeyedFile<VarsKeys>;

impl<K: KeySet> KeyedFile<K> {
    pub fn parse(text: &str) -> Result<Self, StateError> {
        Ok(Self {
            doc: PlainDoc::parse(text, K::KEYS)?,
            keys: std::marker::PhantomData,
        })
    }

    /// A new file holding every key in 0.2.0's order, values from `value_of` (empty if `None`).
    pub fn from_values(value_of: impl Fn(&str) -> Option<String>) -> Result<Self, StateError> {
        let mut doc = PlainDoc::new();
        for key in K::KEYS {
            doc.set(key, &value_of(key).unwrap_or_default())?;
        }
        Ok(Self {
            doc,
            keys: std::marker::PhantomData,
        })
    }

    /// The value of `key`, or "" when it is absent (0.2.0 treats both alike).
    pub fn get(&self, key: &str) -> &str {
        self.doc.get(key).unwrap_or("")
    }

    pub fn set(&mut self, key: &'static str, value: &str) -> Result<(), StateError> {
        debug_assert!(K::KEYS.contains(&key));
        Ok(self.doc.set(key, value)?)
    }

    pub fn render(&self) -> String {
        self.doc.render()
    }

    /// The file as text with every secret value replaced, for display.
    pub fn render_redacted(&self) -> String {
        let mut shown = self.doc.clone();
        for key in SECRET_KEYS {
            if let Some(value) = shown.get(key)
                && !value.is_empty()
            {
                // A redaction marker has no line break, so this cannot fail.
                let _ = shown.set(key, "<redacted>");
            }
        }
        shown.render()
    }

    fn required(&self, key: &'static str) -> Result<&str, StateError> {
        match self.doc.get(key) {
            Some(value) if !value.trim().is_empty() => Ok(value.trim()),
            _ => Err(StateError::MissingKey { key }),
        }
    }
}

impl EnvFile {
    pub fn instance_id(&self) -> Result<&str, StateError> {
        self.required("INSTANCE_ID")
    }

    pub fn host_port(&self) -> Result<u16, StateError> {
        let value = self.required("HOST_PORT")?;
        value.parse().map_err(|_| StateError::BadValue {
            key: "HOST_PORT",
            value: value.to_owned(),
            expected: "a port number",
        })
    }

    pub fn vm_ip(&self) -> Result<Ipv4Addr, StateError> {
        let value = self.required("VM_IP")?;
        value.parse().map_err(|_| StateError::BadValue {
            key: "VM_IP",
            value: value.to_owned(),
            expected: "an IPv4 address",
        })
    }

    pub fn tap(&self) -> Result<&str, StateError> {
        self.required("VM_TAP")
    }

    pub fn api_sock(&self) -> Option<PathBuf> {
        let value = self.get("API_SOCK").trim();
        (!value.is_empty()).then(|| PathBuf::from(value))
    }

    /// 0.2.0 wrote `true`/`false`; older hand edits used 1/yes.
    pub fn skip_browser_install(&self) -> bool {
        parse_flag(self.get("SKIP_BROWSER_INSTALL"))
    }
}

/// Lenient boolean as 0.2.0's scripts test it.
pub fn parse_flag(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on"
    )
}

/// The gateway token: 32 random bytes as 64 lowercase hex characters.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayToken(String);

impl GatewayToken {
    pub fn from_random_bytes(bytes: [u8; 32]) -> Self {
        use std::fmt::Write;
        let mut hex = String::with_capacity(64);
        for byte in bytes {
            let _ = write!(hex, "{byte:02x}");
        }
        Self(hex)
    }

    /// Reads `.token` as 0.2.0 wrote it; any non-empty single word is accepted.
    pub fn from_file_text(text: &str) -> Result<Self, StateError> {
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(StateError::BadValue {
                key: "GATEWAY_TOKEN",
                value: "<redacted>".into(),
                expected: "a single word",
            });
        }
        Ok(Self(token.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `.token`: the token and a newline.
    pub fn file_text(&self) -> String {
        format!("{}\n", self.0)
    }
}

impl std::fmt::Debug for GatewayToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayToken(<redacted>)")
    }
}

/// How far an instance got. Advanced after each step of `setup` completes, so a crash leaves a
/// state that says what exists.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `fireclaw import` reserved the id, address and port and is writing the instance from
    /// an archive; committed at once to `provisioned`, so a kill leaves this phase, which the
    /// next import and `host cleanup` remove.
    Importing,
    /// `.vm-<id>` and `.env` exist: IP, port and tap are reserved.
    Allocated,
    /// VM assets (disk, kernel, seed, config) are in place.
    Assets,
    /// Both systemd units are written.
    Units,
    /// The VM unit was started and SSH answered.
    Booted,
    /// Guest provisioning completed at least once.
    Provisioned,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Importing => "importing",
            Self::Allocated => "allocated",
            Self::Assets => "assets",
            Self::Units => "units",
            Self::Booted => "booted",
            Self::Provisioned => "provisioned",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `fireclaw.json`: what fireclaw knows about an instance beyond 0.2.0's files. Unknown fields
/// are ignored on read so older binaries tolerate newer files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FireclawState {
    pub format: u32,
    pub phase: Phase,
    /// The fireclaw version that created the instance.
    pub created_by: String,
    /// Private networks this instance's guest may reach (`--allow-private-egress`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_private_egress: Vec<PrivateCidr>,
    /// The system account the VMM runs as; absent for instances whose VMM runs as root (made by
    /// 0.2.0, or by fireclaw before the VMM was confined, and not yet adopted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_account: Option<VmmAccount>,
    /// The snapshot a suspended instance resumes from; absent when the instance is not
    /// suspended (or its snapshot was consumed by a load). Not a phase: see
    /// `instance::suspension`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
    /// When provisioning pulls the OpenClaw image (`--openclaw-pull`); absent means `always`.
    /// Kept here, not in `.env` or `provision.vars`, whose readers (0.2.0's too) refuse
    /// unknown keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openclaw_pull: Option<PullPolicy>,
    /// The baked base image (`fireclaw image bake`) the instance was made from, by name, so
    /// `doctor` can check it and its kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baked_image: Option<String>,
    /// That baked image's file; absent in the first records, which named only an image in
    /// `BASE_IMAGES_DIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baked_file: Option<std::path::PathBuf>,
    /// The step times of the last `setup` or `provision` (`status` shows its total).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_provisioning: Option<RunTimes>,
    /// The agent's identity across hosts: made at setup (and at the first export of an older
    /// instance), carried by `export` and `import`; two instances with one UUID on a host are
    /// one agent twice, which `import` refuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// An `export --pause` under way: set before it pauses the VM, gone once it has resumed
    /// it, so `doctor`, `resume` and `stop` tell a VM it left paused from a suspend's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporting: Option<Exporting>,
    /// `apply` made this instance (`"apply"`): apply may finish or re-create it after a kill,
    /// and `apply --prune` may remove it. Instances made by hand never carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

/// The `managed_by` of instances `apply` made.
pub const MANAGED_BY_APPLY: &str = "apply";

/// An `export --pause` under way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exporting {
    /// Seconds since the Unix epoch when it began.
    pub since: u64,
    /// The exporting process.
    pub pid: u32,
}

/// `created_by` of an instance fireclaw 0.2.0 made.
const CREATED_BY_020: &str = "fireclaw 0.2.0";

impl FireclawState {
    pub const FORMAT: u32 = 1;

    pub fn new(phase: Phase) -> Self {
        Self {
            format: Self::FORMAT,
            phase,
            created_by: format!("fireclaw {}", env!("CARGO_PKG_VERSION")),
            allow_private_egress: Vec::new(),
            vmm_account: None,
            suspended: None,
            openclaw_pull: None,
            baked_image: None,
            baked_file: None,
            last_provisioning: None,
            uuid: None,
            exporting: None,
            managed_by: None,
        }
    }

    /// The pull policy provisioning follows.
    pub fn pull_policy(&self) -> PullPolicy {
        self.openclaw_pull.unwrap_or_default()
    }

    /// What `adopt` writes for an instance fireclaw 0.2.0 made (which had no `fireclaw.json`):
    /// a working instance, whose guest key was pinned on first use, not before its first boot.
    pub fn adopted_from_020() -> Self {
        Self {
            created_by: CREATED_BY_020.to_owned(),
            ..Self::new(Phase::Provisioned)
        }
    }

    /// Whether fireclaw 0.2.0 made the instance (and `adopt` wrote this file later).
    pub fn made_by_020(&self) -> bool {
        self.created_by == CREATED_BY_020
    }

    pub fn parse(text: &str) -> Result<Self, StateError> {
        Ok(serde_json::from_str(text)?)
    }

    pub fn render(&self) -> String {
        // Serialising a struct of plain fields cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `.env` exactly as 0.2.0's setup writes it.
    pub const ENV_020: &str = "FIRECLAW_STATE_FORMAT=plain-v1
INSTANCE_ID=my-bot
HOST_PORT=18891
VM_IP=172.16.0.2
VM_TAP=tmybot2
VM_MAC=06:fc:00:10:00:02
GATEWAY_TOKEN=4f3c2a1b4f3c2a1b4f3c2a1b4f3c2a1b4f3c2a1b4f3c2a1b4f3c2a1b4f3c2a1b
MODEL=openai/gpt-5.5
SKILLS=github,tmux,coding-agent,session-logs,skill-creator
TELEGRAM_USERS=
OPENCLAW_IMAGE=ghcr.io/openclaw/openclaw:latest
VM_VCPU=4
VM_MEM_MIB=8192
DISK_SIZE=40G
API_SOCK=/srv/firecracker/vm-demo/my-bot/firecracker.socket
SSH_KEY_PATH=/home/ubuntu/.ssh/vmdemo_vm
SKIP_BROWSER_INSTALL=false
ANTHROPIC_API_KEY=
OPENAI_API_KEY=sk-test-openai
MINIMAX_API_KEY=
";

    /// `provision.vars` after 0.2.0's `provision` changed MODEL and the OpenAI key: their lines
    /// moved to the end.
    const VARS_REORDERED: &str = "FIRECLAW_STATE_FORMAT=plain-v1
INSTANCE_ID=my-bot
TELEGRAM_TOKEN=
TELEGRAM_USERS=
SKILLS=github
GATEWAY_TOKEN=4f3c
OPENCLAW_IMAGE=ghcr.io/openclaw/openclaw:latest
SKIP_BROWSER_INSTALL=true
DISK_SIZE=40G
ANTHROPIC_API_KEY=sk-ant
MINIMAX_API_KEY=
MODEL=anthropic/claude-opus-4
OPENAI_API_KEY=sk-new
";

    #[test]
    fn env_written_by_020_is_read_and_round_trips() {
        let env = EnvFile::parse(ENV_020).unwrap();
        assert_eq!(env.instance_id().unwrap(), "my-bot");
        assert_eq!(env.host_port().unwrap(), 18891);
        assert_eq!(env.vm_ip().unwrap(), Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(env.tap().unwrap(), "tmybot2");
        assert!(!env.skip_browser_install());
        assert_eq!(env.render(), ENV_020);
    }

    #[test]
    fn reordered_vars_are_read_and_round_trip() {
        let vars = VarsFile::parse(VARS_REORDERED).unwrap();
        assert_eq!(vars.get("MODEL"), "anthropic/claude-opus-4");
        assert_eq!(vars.get("OPENAI_API_KEY"), "sk-new");
        assert_eq!(vars.get("TELEGRAM_TOKEN"), "");
        assert_eq!(vars.render(), VARS_REORDERED);
    }

    #[test]
    fn duplicate_key_last_wins_and_setting_it_rewrites_one_line() {
        let text = format!("{ENV_020}HOST_PORT=18899\n");
        let mut env = EnvFile::parse(&text).unwrap();
        assert_eq!(env.host_port().unwrap(), 18899);
        assert_eq!(env.render(), text);
        env.set("HOST_PORT", "18900").unwrap();
        let rendered = env.render();
        assert_eq!(rendered.matches("HOST_PORT=").count(), 1);
        assert!(rendered.ends_with("HOST_PORT=18900\n"));
    }

    #[test]
    fn unknown_key_is_refused_like_020_does() {
        let text = format!("{ENV_020}EGRESS=open\n");
        let err = EnvFile::parse(&text).unwrap_err();
        assert_eq!(err.to_string(), "line 21: unknown key 'EGRESS'");
    }

    #[test]
    fn a_new_env_has_only_020_keys_in_020_order() {
        let env = EnvFile::from_values(|key| match key {
            "INSTANCE_ID" => Some("a".into()),
            _ => None,
        })
        .unwrap();
        let text = env.render();
        let keys: Vec<&str> = text.lines().map(|l| l.split_once('=').unwrap().0).collect();
        let mut expected = vec!["FIRECLAW_STATE_FORMAT"];
        expected.extend(ENV_KEYS);
        assert_eq!(keys, expected);
        // 0.2.0 rejects unknown keys; re-parsing with its key set is the same check.
        EnvFile::parse(&text).unwrap();
    }

    #[test]
    fn redaction_hides_every_secret_value() {
        let env = EnvFile::parse(ENV_020).unwrap();
        let shown = env.render_redacted();
        assert!(!shown.contains("sk-test-openai"));
        assert!(!shown.contains("4f3c2a1b"));
        assert!(shown.contains("OPENAI_API_KEY=<redacted>\n"));
        assert!(shown.contains("ANTHROPIC_API_KEY=\n"));
    }

    #[test]
    fn lenient_values_and_missing_required_keys() {
        assert!(parse_flag("true") && parse_flag("1") && parse_flag("YES"));
        assert!(!parse_flag("false") && !parse_flag("") && !parse_flag("0"));
        let env = EnvFile::parse("INSTANCE_ID=a\nHOST_PORT=x\n").unwrap();
        assert!(matches!(
            env.host_port(),
            Err(StateError::BadValue {
                key: "HOST_PORT",
                ..
            })
        ));
        assert!(matches!(
            env.vm_ip(),
            Err(StateError::MissingKey { key: "VM_IP" })
        ));
    }

    #[test]
    fn token_is_64_hex_and_its_file_ends_with_a_newline() {
        let token = GatewayToken::from_random_bytes([0xab; 32]);
        assert_eq!(token.expose().len(), 64);
        assert_eq!(token.file_text(), format!("{}\n", "ab".repeat(32)));
        assert_eq!(
            GatewayToken::from_file_text(&token.file_text())
                .unwrap()
                .expose(),
            token.expose()
        );
        assert!(GatewayToken::from_file_text("\n").is_err());
        assert!(!format!("{token:?}").contains("abab"));
    }

    #[test]
    fn an_adopted_020_instance_is_known_as_such_and_a_new_one_is_not() {
        let adopted = FireclawState::parse(&FireclawState::adopted_from_020().render()).unwrap();
        assert!(adopted.made_by_020());
        assert_eq!(adopted.phase, Phase::Provisioned);
        assert!(!FireclawState::new(Phase::Allocated).made_by_020());
    }

    /// `fireclaw.json` as the previous release (before suspend) reads it: the same serde rules,
    /// its own phases and fields, unknown fields ignored.
    mod previous_release {
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum Phase {
            Allocated,
            Assets,
            Units,
            Booted,
            Provisioned,
        }

        #[derive(Debug, serde::Deserialize)]
        pub struct VmmAccount {
            pub name: String,
            pub uid: u32,
            pub gid: u32,
        }

        #[derive(Debug, serde::Deserialize)]
        pub struct FireclawState {
            pub format: u32,
            pub phase: Phase,
            pub created_by: String,
            #[serde(default)]
            pub allow_private_egress: Vec<String>,
            #[serde(default)]
            pub vmm_account: Option<VmmAccount>,
        }
    }

    #[test]
    fn the_previous_release_reads_the_state_of_a_suspended_instance() {
        use crate::instance::suspension::SnapshotOrigin;
        let mut state = FireclawState::new(Phase::Provisioned);
        state.vmm_account = Some(VmmAccount {
            name: "fcvm-a".into(),
            uid: 1_950_000_000,
            gid: 1_950_000_000,
        });
        state.suspended = Some(Suspension {
            taken_at: 1_790_000_000,
            memory_bytes: 1 << 30,
            state_bytes: 50_000,
            origin: SnapshotOrigin {
                format_version: "v10.0.0".into(),
                host_kernel: "6.1.0-28-amd64".into(),
                cpu_model: "AMD EPYC 7B13".into(),
            },
            loading_since: None,
            disk_modified: None,
            clock_realtime: false,
        });
        let text = state.render();
        assert!(text.contains("\"suspended\""), "{text}");
        let previous: previous_release::FireclawState = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            previous.phase,
            previous_release::Phase::Provisioned
        ));
        assert_eq!(previous.format, FireclawState::FORMAT);
        let account = previous.vmm_account.unwrap();
        assert_eq!(
            (account.name.as_str(), account.uid, account.gid),
            ("fcvm-a", 1_950_000_000, 1_950_000_000)
        );
        assert!(previous.created_by.starts_with("fireclaw "));
        assert!(previous.allow_private_egress.is_empty());
        assert_eq!(FireclawState::parse(&text).unwrap(), state);
    }

    #[test]
    fn fireclaw_json_round_trips_and_ignores_unknown_fields() {
        let state = FireclawState::new(Phase::Assets);
        assert_eq!(FireclawState::parse(&state.render()).unwrap(), state);
        let newer = r#"{"format":1,"phase":"booted","created_by":"x","egress":{}}"#;
        assert_eq!(FireclawState::parse(newer).unwrap().phase, Phase::Booted);
        assert!(FireclawState::parse(r#"{"format":1,"phase":"flying","created_by":""}"#).is_err());
    }
}
