//! Fresh secrets for a new instance, from the operating system's random source: the gateway
//! token and the guest's SSH host key (generated here so it can be pinned before first boot).

use ssh_key::rand_core::{OsRng, RngCore};
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use super::state::GatewayToken;

/// The guest's own SSH host key, in OpenSSH formats.
#[derive(Clone, PartialEq, Eq)]
pub struct HostKeyPair {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` ... (a secret).
    pub private_openssh: String,
    /// `ssh-ed25519 AAAA...`.
    pub public_openssh: String,
}

impl std::fmt::Debug for HostKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeyPair")
            .field("public_openssh", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("generate the guest SSH host key")]
    HostKey(#[from] ssh_key::Error),
    /// rand_core's error is no `std::error::Error` in this build, so its text is kept.
    #[error("read the system random source: {0}")]
    Random(String),
    #[error("the host key's private and public halves do not match")]
    Mismatch,
}

pub fn generate_token() -> Result<GatewayToken, SecretError> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(GatewayToken::from_random_bytes(bytes))
}

/// A fresh random (version 4) UUID: the agent's identity across hosts (`fireclaw.json`'s
/// `uuid`, carried by `export` and `import`).
pub fn generate_uuid() -> Result<String, SecretError> {
    let mut bytes = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| SecretError::Random(e.to_string()))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// Whether `text` is a UUID as `generate_uuid` writes them (lower-case, hyphenated).
pub fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, len)| {
            group.len() == len
                && group
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// An imported host key pair: the private key must parse as an OpenSSH ed25519 key whose
/// public half is the one given (an archive is untrusted input).
pub fn host_key_from_openssh(private: &str, public: &str) -> Result<HostKeyPair, SecretError> {
    let key = PrivateKey::from_openssh(private)?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(SecretError::HostKey(ssh_key::Error::AlgorithmUnknown));
    }
    let derived = key.public_key().to_openssh()?;
    let given = public.trim();
    // Compare the key itself (type and blob), not the comment.
    let key_part = |line: &str| {
        line.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    if key_part(&derived) != key_part(given) {
        return Err(SecretError::Mismatch);
    }
    Ok(HostKeyPair {
        private_openssh: private.to_owned(),
        public_openssh: given.to_owned(),
    })
}

/// An ed25519 host key for the guest of instance `id`.
pub fn generate_host_key(id: &str) -> Result<HostKeyPair, SecretError> {
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)?;
    key.set_comment(format!("fireclaw-host-{id}"));
    Ok(HostKeyPair {
        private_openssh: key.to_openssh(LineEnding::LF)?.to_string(),
        public_openssh: key.public_key().to_openssh()?,
    })
}

/// The secrets `apply` hands to the `setup` or `provision` it runs, on stdin (never on a
/// command line): `NAME=value` lines, each as if given as its flag.
#[derive(Debug, Default)]
pub struct HandedSecrets {
    pub anthropic_api_key: Option<crate::instance::values::Secret>,
    pub openai_api_key: Option<crate::instance::values::Secret>,
    pub minimax_api_key: Option<crate::instance::values::Secret>,
    pub telegram_token: Option<crate::instance::values::Secret>,
}

/// The names `HandedSecrets` reads.
pub const HANDED_SECRETS: [&str; 4] = [
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "MINIMAX_API_KEY",
    "TELEGRAM_TOKEN",
];

/// Parses handed secrets; an error names the line's key, never its value.
pub fn parse_handed_secrets(
    text: &str,
) -> Result<HandedSecrets, crate::instance::values::InvalidValue> {
    use crate::instance::values::{InvalidValue, Secret, parse_telegram_token};
    let mut handed = HandedSecrets::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((name, value)) = line.split_once('=') else {
            return Err(InvalidValue(
                "a handed secret is a NAME=value line".to_owned(),
            ));
        };
        let slot = match name {
            "ANTHROPIC_API_KEY" => &mut handed.anthropic_api_key,
            "OPENAI_API_KEY" => &mut handed.openai_api_key,
            "MINIMAX_API_KEY" => &mut handed.minimax_api_key,
            "TELEGRAM_TOKEN" => &mut handed.telegram_token,
            other => {
                return Err(InvalidValue(format!(
                    "'{}' is not a secret apply hands over",
                    crate::instance::values::escaped(other)
                )));
            }
        };
        *slot = Some(if name == "TELEGRAM_TOKEN" {
            parse_telegram_token(value)?
        } else {
            Secret::parse(name, value)?
        });
    }
    Ok(handed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_64_hex() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.expose().len() == 64 && a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn uuids_are_fresh_version_4_and_recognised() {
        let a = generate_uuid().unwrap();
        assert!(is_uuid(&a), "{a}");
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, generate_uuid().unwrap());
        for bad in [
            "",
            "0b7c4c1e-8a3e-4f9a-9d8e",
            "0B7C4C1E-8A3E-4F9A-9D8E-3C2B1A0F9E8D",
            "../etc",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn an_imported_host_key_must_be_whole_and_its_own() {
        let pair = generate_host_key("a").unwrap();
        let other = generate_host_key("b").unwrap();
        let back = host_key_from_openssh(&pair.private_openssh, &pair.public_openssh).unwrap();
        assert_eq!(back, pair);
        assert!(matches!(
            host_key_from_openssh(&pair.private_openssh, &other.public_openssh),
            Err(SecretError::Mismatch)
        ));
        assert!(host_key_from_openssh("not a key", &pair.public_openssh).is_err());
    }

    #[test]
    fn host_keys_are_ed25519_in_openssh_format_and_parse_back() {
        let pair = generate_host_key("my-bot").unwrap();
        assert!(pair.public_openssh.starts_with("ssh-ed25519 "));
        assert!(pair.public_openssh.ends_with(" fireclaw-host-my-bot"));
        let parsed = PrivateKey::from_openssh(&pair.private_openssh).unwrap();
        assert_eq!(
            parsed.public_key().to_openssh().unwrap(),
            pair.public_openssh
        );
    }

    #[test]
    fn handed_secrets_fill_their_flags_and_refuse_anything_else_without_echoing_it() {
        let handed =
            parse_handed_secrets("OPENAI_API_KEY=sk-a\nTELEGRAM_TOKEN=123:abc\n\n").unwrap();
        assert_eq!(handed.openai_api_key.unwrap().expose(), "sk-a");
        assert_eq!(handed.telegram_token.unwrap().expose(), "123:abc");
        assert!(handed.anthropic_api_key.is_none());
        let bad = parse_handed_secrets("HOME=/root").unwrap_err().0;
        assert!(bad.contains("'HOME'"), "{bad}");
        let bad = parse_handed_secrets("TELEGRAM_TOKEN=nocolon")
            .unwrap_err()
            .0;
        assert!(!bad.contains("nocolon"), "{bad}");
        assert!(parse_handed_secrets("OPENAI_API_KEY=has space").is_err());
    }
}
