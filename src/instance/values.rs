//! Validated values at the edge: every string a user, the environment or a 0.2.0 state file hands
//! us becomes one of these newtypes before anything else looks at it. Parsing from user input
//! (`FromStr`) is strict; the few `from_saved` constructors accept what fireclaw 0.2.0 wrote.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::env_vars;

/// Why a value was refused. The message is one line and names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(message: impl Into<String>) -> InvalidValue {
    InvalidValue(message.into())
}

/// A value a person typed or a file held, safe inside a one-line message: control characters,
/// quotes and anything outside printable ASCII are escaped (`\n`, `\u{1b}`). Every message
/// that shows a user's value goes through here, never through a type's `Debug`.
pub fn escaped(value: &str) -> String {
    value.escape_default().to_string()
}

/// Refuses characters that would break a plain-v1 line or a unit file when saved.
pub fn reject_line_breaks(what: &str, value: &str) -> Result<(), InvalidValue> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid(format!(
            "{what} must not contain a newline, carriage return or NUL"
        )));
    }
    Ok(())
}

/// Longest instance id: a hostname label is at most 63 characters.
pub const MAX_INSTANCE_ID_LEN: usize = 63;

/// An instance id: `[a-z0-9_-]+`, at most 63 characters. Path-length limits that depend on
/// `FC_ROOT` or `--api-sock` are checked where those are known (see `spec`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InstanceId {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.is_empty() {
            return Err(invalid("instance id must not be empty"));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(invalid(format!(
                "instance id '{}' contains '{}'; use only a-z, 0-9, '_' and '-'",
                escaped(value),
                escaped(&bad.to_string())
            )));
        }
        if value.len() > MAX_INSTANCE_ID_LEN {
            return Err(invalid(format!(
                "instance id is {} characters long; the limit is {MAX_INSTANCE_ID_LEN}",
                value.len()
            )));
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A localhost proxy port, 1024–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct HostPort(u16);

impl HostPort {
    pub const MIN: u16 = 1024;

    pub fn new(port: u16) -> Result<Self, InvalidValue> {
        if port < Self::MIN {
            return Err(invalid(format!(
                "host port {port} is privileged; use 1024–65535"
            )));
        }
        Ok(Self(port))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl FromStr for HostPort {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let port: u16 = parse_decimal(value)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| invalid(format!("host port '{value}' is not a number in 1024–65535")))?;
        Self::new(port)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Strict decimal: digits only, no sign, no spaces, at most 10 digits.
fn parse_decimal(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Number of vCPUs; Firecracker allows 1–32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct VcpuCount(u8);

impl VcpuCount {
    pub const MAX: u8 = 32;
    pub fn get(self) -> u8 {
        self.0
    }
}

impl FromStr for VcpuCount {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match parse_decimal(value) {
            Some(n @ 1..=32) => Ok(Self(n as u8)),
            _ => Err(invalid(format!(
                "vCPU count '{value}' must be a whole number from 1 to {}",
                Self::MAX
            ))),
        }
    }
}

impl fmt::Display for VcpuCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Guest memory in MiB: at least 128 (a guest with Docker needs it), at most 1 TiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct MemoryMib(u32);

impl MemoryMib {
    pub const MIN: u32 = 128;
    pub const MAX: u32 = 1024 * 1024;
    pub fn get(self) -> u32 {
        self.0
    }
}

impl FromStr for MemoryMib {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match parse_decimal(value) {
            Some(n) if (u64::from(Self::MIN)..=u64::from(Self::MAX)).contains(&n) => {
                Ok(Self(n as u32))
            }
            _ => Err(invalid(format!(
                "VM memory '{value}' must be a whole number of MiB from {} to {}",
                Self::MIN,
                Self::MAX
            ))),
        }
    }
}

impl fmt::Display for MemoryMib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A disk size as written by the user (`40G`, `512M`, `10240K`, `1T`, or plain bytes), kept in the
/// spelling given so it round-trips through `.env`, plus its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSize {
    text: String,
    bytes: u64,
}

impl DiskSize {
    /// Smallest accepted size; an Ubuntu cloud rootfs alone is larger.
    pub const MIN_BYTES: u64 = 1 << 20;
    /// Largest accepted size (64 TiB): anything above is a typo.
    pub const MAX_BYTES: u64 = 64 << 40;

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for DiskSize {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let refuse = || {
            invalid(format!(
                "disk size '{}' must be a number with an optional K, M, G or T suffix (e.g. 40G), from 1M to 64T",
                escaped(value)
            ))
        };
        let (digits, shift) = match value.char_indices().last() {
            Some((i, 'k' | 'K')) => (&value[..i], 10),
            Some((i, 'm' | 'M')) => (&value[..i], 20),
            Some((i, 'g' | 'G')) => (&value[..i], 30),
            Some((i, 't' | 'T')) => (&value[..i], 40),
            _ => (value, 0),
        };
        let number = parse_decimal(digits).ok_or_else(refuse)?;
        let bytes = number.checked_shl(shift).filter(|b| b >> shift == number);
        match bytes {
            Some(b) if (Self::MIN_BYTES..=Self::MAX_BYTES).contains(&b) => Ok(Self {
                text: value.to_owned(),
                bytes: b,
            }),
            _ => Err(refuse()),
        }
    }
}

impl fmt::Display for DiskSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The model providers fireclaw can give a key to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    MiniMax,
}

impl Provider {
    pub fn key_env(self) -> &'static str {
        match self {
            Self::OpenAi => env_vars::OPENAI_API_KEY,
            Self::Anthropic => env_vars::ANTHROPIC_API_KEY,
            Self::MiniMax => env_vars::MINIMAX_API_KEY,
        }
    }
    pub fn key_flag(self) -> &'static str {
        match self {
            Self::OpenAi => "--openai-api-key",
            Self::Anthropic => "--anthropic-api-key",
            Self::MiniMax => "--minimax-api-key",
        }
    }
}

/// An OpenClaw model id, `<provider>/<name>`, whose provider fireclaw can supply a key for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    text: String,
    provider: Provider,
}

impl Model {
    pub fn provider(&self) -> Provider {
        self.provider
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Model {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let Some((provider, name)) = value.split_once('/') else {
            return Err(invalid(format!(
                "model '{}' must look like <provider>/<model>, e.g. openai/gpt-5.5",
                escaped(value)
            )));
        };
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:/-".contains(c));
        if !name_ok {
            return Err(invalid(format!(
                "model name '{}' must be non-empty and use only letters, digits and . _ : / -",
                escaped(name)
            )));
        }
        let provider = match provider {
            "openai" => Provider::OpenAi,
            "anthropic" => Provider::Anthropic,
            "minimax" => Provider::MiniMax,
            other => {
                return Err(invalid(format!(
                    "model provider '{}' is not supported; use openai/*, anthropic/* or minimax/*",
                    escaped(other)
                )));
            }
        };
        Ok(Self {
            text: value.to_owned(),
            provider,
        })
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A non-empty comma-separated list of OpenClaw skill names, normalised (trimmed, no empties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skills(Vec<String>);

impl Skills {
    pub fn names(&self) -> &[String] {
        &self.0
    }
    pub fn to_csv(&self) -> String {
        self.0.join(",")
    }
}

impl FromStr for Skills {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let names: Vec<String> = split_csv(value);
        if names.is_empty() {
            return Err(invalid("skills must name at least one skill"));
        }
        if let Some(bad) = names.iter().find(|n| {
            !n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        }) {
            return Err(invalid(format!(
                "skill '{}' must use only letters, digits, '.', '_' and '-'",
                escaped(bad)
            )));
        }
        Ok(Self(names))
    }
}

fn split_csv(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Telegram user ids allowed to DM the bot: at least one, each a positive integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramUsers(Vec<String>);

impl TelegramUsers {
    pub fn ids(&self) -> &[String] {
        &self.0
    }
    pub fn to_csv(&self) -> String {
        self.0.join(",")
    }
}

impl FromStr for TelegramUsers {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let ids = split_csv(value);
        if ids.is_empty() {
            return Err(invalid("the list must hold at least one Telegram user id"));
        }
        if let Some(bad) = ids
            .iter()
            .find(|id| id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid(format!(
                "Telegram user id '{}' must be a number",
                escaped(bad)
            )));
        }
        Ok(Self(ids))
    }
}

/// A secret string (API key, bot token): non-empty, printable ASCII without spaces. Its `Debug`
/// never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Parses a secret and names it in the error, never echoing the value.
    pub fn parse(what: &str, value: &str) -> Result<Self, InvalidValue> {
        if value.is_empty() {
            return Err(invalid(format!("{what} must not be empty")));
        }
        if value.len() > 4096 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(format!(
                "{what} must be printable ASCII without spaces or line breaks"
            )));
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A Telegram bot token, `<bot id>:<secret>`.
pub fn parse_telegram_token(value: &str) -> Result<Secret, InvalidValue> {
    let secret = Secret::parse("the token", value)?;
    match value.split_once(':') {
        Some((bot, rest))
            if !bot.is_empty() && bot.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty() =>
        {
            Ok(secret)
        }
        _ => Err(invalid(
            "the token must look like <bot id>:<secret>, as BotFather prints it",
        )),
    }
}

/// A container image reference such as `ghcr.io/openclaw/openclaw:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(String);

impl ImageRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ImageRef {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let ok = !value.is_empty()
            && value.len() <= 512
            && !value.starts_with(['-', '.', '/', ':', '@'])
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
        if !ok {
            return Err(invalid(format!(
                "image '{}' is not a container image reference (e.g. ghcr.io/openclaw/openclaw:latest)",
                escaped(value)
            )));
        }
        Ok(Self(value.to_owned()))
    }
}

/// When provisioning pulls the OpenClaw image (`--openclaw-pull`): `always` (0.2.0's way and
/// the default), `missing` (an image already in the guest is used as it is), or `never` (the
/// image must already be in the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    #[default]
    Always,
    Missing,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Missing => "missing",
            Self::Never => "never",
        }
    }
}

impl FromStr for PullPolicy {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "always" => Ok(Self::Always),
            "missing" => Ok(Self::Missing),
            "never" => Ok(Self::Never),
            _ => Err(invalid(format!(
                "pull policy '{}' is not one of always, missing, never",
                escaped(value)
            ))),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An absolute path without line breaks, so it can be saved and put in a unit file.
pub fn parse_absolute_path(value: &str) -> Result<PathBuf, InvalidValue> {
    reject_line_breaks("the path", value)?;
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(invalid(format!(
            "'{}' must be an absolute path",
            escaped(value)
        )));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(invalid(format!(
            "'{}' must not contain '..'",
            escaped(value)
        )));
    }
    Ok(path.to_path_buf())
}

/// A Linux network interface name: 1–15 bytes, no '/', ':', whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct InterfaceName(String);

impl InterfaceName {
    pub const MAX_LEN: usize = 15;

    /// A name fireclaw derived itself from characters that are always valid (the tap name).
    pub(crate) fn derived(name: String) -> Self {
        debug_assert!(name.len() <= Self::MAX_LEN);
        Self(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InterfaceName {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value != "."
            && value != ".."
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !ok {
            return Err(invalid(format!(
                "interface name '{}' must be 1–15 characters of a-z, A-Z, 0-9, '_', '-' and '.'",
                escaped(value)
            )));
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IPv4 /24 network given as `a.b.c.0/24` (`SUBNET_CIDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet24 {
    network: Ipv4Addr,
}

impl Subnet24 {
    pub fn network(self) -> Ipv4Addr {
        self.network
    }
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        addr.octets()[..3] == self.network.octets()[..3]
    }
    /// The address with the given last octet.
    pub fn host(self, last_octet: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.network.octets();
        Ipv4Addr::new(a, b, c, last_octet)
    }
}

impl FromStr for Subnet24 {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = parse_cidr("subnet", value)?;
        if prefix != 24 {
            return Err(invalid(format!(
                "subnet '{}' must be a /24 (address allocation only supports /24)",
                escaped(value)
            )));
        }
        if addr.octets()[3] != 0 {
            return Err(invalid(format!(
                "subnet '{}' has host bits set; did you mean {}/24?",
                escaped(value),
                Ipv4Addr::from(u32::from(addr) & 0xffff_ff00)
            )));
        }
        Ok(Self { network: addr })
    }
}

impl fmt::Display for Subnet24 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/24", self.network)
    }
}

/// The bridge address with its prefix (`BRIDGE_ADDR`, e.g. `172.16.0.1/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeAddress {
    address: Ipv4Addr,
}

impl BridgeAddress {
    pub fn address(self) -> Ipv4Addr {
        self.address
    }
}

impl FromStr for BridgeAddress {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = parse_cidr("bridge address", value)?;
        if prefix != 24 {
            return Err(invalid(format!(
                "bridge address '{}' must be a /24 address such as 172.16.0.1/24",
                escaped(value)
            )));
        }
        if matches!(address.octets()[3], 0 | 255) {
            return Err(invalid(format!(
                "bridge address '{}' is the network or broadcast address of its /24",
                escaped(value)
            )));
        }
        Ok(Self { address })
    }
}

impl fmt::Display for BridgeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/24", self.address)
    }
}

/// The ranges a guest may not reach unless an allowlist names a part of them: RFC 1918 and the
/// carrier-grade NAT range (RFC 6598), where operators keep their private services.
pub const PRIVATE_RANGES: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
];

fn prefix_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// A network inside one of the private ranges that a guest is allowed to reach, e.g. a private
/// registry or a VPC resolver. Anything outside those ranges (metadata, public) is refused:
/// public addresses are reachable anyway and link-local never is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrivateCidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl PrivateCidr {
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & prefix_mask(self.prefix) == u32::from(self.network)
    }
}

impl FromStr for PrivateCidr {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        let (addr, prefix) = if value.contains('/') {
            parse_cidr("private egress network", value)?
        } else {
            let addr = value.parse::<Ipv4Addr>().map_err(|_| {
                invalid(format!(
                    "private egress network '{}' must be an IPv4 address or network, like 10.20.0.0/16",
                    escaped(value)
                ))
            })?;
            (addr, 32)
        };
        let network = Ipv4Addr::from(u32::from(addr) & prefix_mask(prefix));
        if network != addr {
            return Err(invalid(format!(
                "private egress network '{value}' has host bits set; did you mean {network}/{prefix}?"
            )));
        }
        let inside = PRIVATE_RANGES.iter().any(|(range, range_prefix)| {
            prefix >= *range_prefix
                && u32::from(network) & prefix_mask(*range_prefix) == u32::from(*range)
        });
        if !inside {
            return Err(invalid(format!(
                "private egress network '{value}' is not inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10; only those ranges are blocked, so only they can be allowed"
            )));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for PrivateCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl serde::Serialize for PrivateCidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PrivateCidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A comma-separated list of private networks (`--allow-private-egress`), sorted and without
/// duplicates. The empty string is the empty list, so `--allow-private-egress ''` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivateEgress(Vec<PrivateCidr>);

impl PrivateEgress {
    pub fn networks(&self) -> &[PrivateCidr] {
        &self.0
    }
    pub fn from_networks(mut networks: Vec<PrivateCidr>) -> Self {
        networks.sort();
        networks.dedup();
        Self(networks)
    }
}

impl FromStr for PrivateEgress {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        reject_line_breaks("--allow-private-egress", value)?;
        let networks = value
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<PrivateCidr>, _>>()?;
        Ok(Self::from_networks(networks))
    }
}

impl fmt::Display for PrivateEgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

fn parse_cidr(what: &str, value: &str) -> Result<(Ipv4Addr, u8), InvalidValue> {
    let refuse = || {
        invalid(format!(
            "{what} '{}' must be an IPv4 address with a prefix, like 172.16.0.0/24",
            escaped(value)
        ))
    };
    let (addr, prefix) = value.split_once('/').ok_or_else(refuse)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| refuse())?;
    let prefix = parse_decimal(prefix)
        .filter(|p| *p <= 32)
        .ok_or_else(refuse)?;
    Ok((addr, prefix as u8))
}

/// A base port for auto-allocation (`BASE_PORT`): the first port handed out is one above it.
pub fn parse_base_port(value: &str) -> Result<u16, InvalidValue> {
    match parse_decimal(value) {
        Some(n) if (u64::from(HostPort::MIN - 1)..65535).contains(&n) => Ok(n as u16),
        _ => Err(invalid(format!(
            "'{}' must be a number from 1023 to 65534",
            escaped(value)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_egress_accepts_only_networks_inside_the_private_ranges() {
        let list: PrivateEgress = "192.168.5.0/24, 10.0.0.7,10.0.0.7/32,100.64.0.0/10"
            .parse()
            .unwrap();
        assert_eq!(list.to_string(), "10.0.0.7/32,100.64.0.0/10,192.168.5.0/24");
        assert!(list.networks()[2].contains(Ipv4Addr::new(192, 168, 5, 9)));
        assert!(!list.networks()[2].contains(Ipv4Addr::new(192, 168, 6, 9)));
        assert_eq!(
            "".parse::<PrivateEgress>().unwrap(),
            PrivateEgress::default()
        );
        for (bad, says) in [
            ("169.254.169.254/32", "not inside"),
            ("8.8.8.8", "not inside"),
            ("10.0.0.0/7", "not inside"),
            ("172.32.0.0/16", "not inside"),
            ("10.1.2.3/16", "did you mean 10.1.0.0/16"),
            ("10.0.0.0/33", "must be an IPv4"),
            ("fd00::/8", "must be an IPv4"),
            ("10.0.0.0/8\n", "newline"),
        ] {
            let error = bad.parse::<PrivateEgress>().unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
        assert!("10.0.0.0/8\n1.1.1.1/32".parse::<PrivateEgress>().is_err());
    }

    #[test]
    fn instance_id_accepts_the_spec_alphabet() {
        for ok in ["my-bot", "a", "bot_2", "0", &"a".repeat(63)] {
            assert_eq!(ok.parse::<InstanceId>().map(|i| i.0), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn instance_id_refuses_everything_else() {
        for bad in [
            "",
            "My-Bot",
            "a/b",
            "..",
            "a.b",
            "a b",
            "bot\n",
            "bø",
            "a\0",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn host_port_must_be_unprivileged_and_numeric() {
        assert_eq!("1024".parse::<HostPort>().map(HostPort::get), Ok(1024));
        assert_eq!("65535".parse::<HostPort>().map(HostPort::get), Ok(65535));
        for bad in [
            "1023",
            "0",
            "65536",
            "-1",
            "+2000",
            " 2000",
            "20a",
            "",
            "99999999999",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn vcpu_and_memory_must_be_positive_and_bounded() {
        assert_eq!("4".parse::<VcpuCount>().map(VcpuCount::get), Ok(4));
        for bad in ["0", "33", "-1", "1.5", ""] {
            assert!(bad.parse::<VcpuCount>().is_err(), "{bad:?}");
        }
        assert_eq!("8192".parse::<MemoryMib>().map(MemoryMib::get), Ok(8192));
        for bad in ["0", "127", "1048577", "8G", ""] {
            assert!(bad.parse::<MemoryMib>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn disk_size_parses_suffixes_and_keeps_spelling() {
        let size: DiskSize = "40G".parse().unwrap();
        assert_eq!((size.as_str(), size.bytes()), ("40G", 40 << 30));
        assert_eq!("512M".parse::<DiskSize>().unwrap().bytes(), 512 << 20);
        assert_eq!("2048k".parse::<DiskSize>().unwrap().bytes(), 2 << 20);
        assert_eq!("1T".parse::<DiskSize>().unwrap().bytes(), 1 << 40);
        assert_eq!("1048576".parse::<DiskSize>().unwrap().bytes(), 1 << 20);
        for bad in [
            "",
            "G",
            "40GB",
            "4.5G",
            "-1G",
            "0G",
            "1K",
            "65T",
            "99999999999G",
            "40 G",
        ] {
            assert!(bad.parse::<DiskSize>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn model_needs_a_supported_provider() {
        let model: Model = "openai/gpt-5.5".parse().unwrap();
        assert_eq!(model.provider(), Provider::OpenAi);
        assert_eq!(
            "anthropic/claude-opus-4"
                .parse::<Model>()
                .unwrap()
                .provider(),
            Provider::Anthropic
        );
        assert_eq!(
            "minimax/MiniMax-M2.1".parse::<Model>().unwrap().provider(),
            Provider::MiniMax
        );
        for bad in [
            "gpt-5",
            "openai/",
            "/gpt",
            "google/gemini",
            "openai/gpt 5",
            "openai/a\nb",
        ] {
            assert!(bad.parse::<Model>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn skills_and_users_are_trimmed_csv() {
        let skills: Skills = " github, tmux ,,coding-agent".parse().unwrap();
        assert_eq!(skills.to_csv(), "github,tmux,coding-agent");
        assert!(" , ".parse::<Skills>().is_err());
        assert!("git hub".parse::<Skills>().is_err());
        let users: TelegramUsers = "123, 456 ,".parse().unwrap();
        assert_eq!(users.ids(), ["123", "456"]);
        assert!(" , ".parse::<TelegramUsers>().is_err());
        assert!("@alice".parse::<TelegramUsers>().is_err());
    }

    #[test]
    fn secrets_never_show_in_errors_or_debug() {
        let err = Secret::parse("--openai-api-key", "sk-abc def").unwrap_err();
        assert!(!err.0.contains("sk-abc"));
        assert!(Secret::parse("--openai-api-key", "").is_err());
        assert!(Secret::parse("x", "a\nb").is_err());
        let secret = Secret::parse("x", "sk-visible").unwrap();
        assert!(!format!("{secret:?}").contains("sk-visible"));
        assert!(parse_telegram_token("123456:AAE-x_y").is_ok());
        for bad in ["123456", ":abc", "abc:def", "123:"] {
            let err = parse_telegram_token(bad).unwrap_err();
            assert!(bad.is_empty() || !err.0.contains(bad), "{bad:?} echoed");
        }
    }

    #[test]
    fn image_refs_and_paths() {
        assert!(
            "ghcr.io/openclaw/openclaw:latest"
                .parse::<ImageRef>()
                .is_ok()
        );
        assert!("repo@sha256:abc".parse::<ImageRef>().is_ok());
        for bad in ["", "-rm", "a b", "a;b", "a\nb"] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?}");
        }
        assert!(parse_absolute_path("/srv/k").is_ok());
        for bad in ["rel/k", "/a/../b", "/a\nb", ""] {
            assert!(parse_absolute_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subnets_and_bridge_addresses_must_be_slash_24() {
        assert_eq!(
            "172.16.0.0/24".parse::<Subnet24>().unwrap().host(7),
            Ipv4Addr::new(172, 16, 0, 7)
        );
        for bad in [
            "172.16.0.0/16",
            "172.16.0.1/24",
            "172.16.0.0",
            "x/24",
            "172.16.0.0/33",
        ] {
            assert!(bad.parse::<Subnet24>().is_err(), "{bad:?}");
        }
        assert!("172.16.0.1/24".parse::<BridgeAddress>().is_ok());
        for bad in [
            "172.16.0.1/16",
            "172.16.0.0/24",
            "172.16.0.255/24",
            "172.16.0.1",
        ] {
            assert!(bad.parse::<BridgeAddress>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        assert!("fc-br0".parse::<InterfaceName>().is_ok());
        for bad in ["", "a234567890123456", "a/b", "a b", "..", "a:b"] {
            assert!(bad.parse::<InterfaceName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base_port_leaves_room_for_one_port_above() {
        assert_eq!(parse_base_port("18890"), Ok(18890));
        assert_eq!(parse_base_port("1023"), Ok(1023));
        for bad in ["1022", "65535", "abc", ""] {
            assert!(parse_base_port(bad).is_err(), "{bad:?}");
        }
    }
}
