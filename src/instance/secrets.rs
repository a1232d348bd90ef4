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
}

pub fn generate_token() -> Result<GatewayToken, SecretError> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(GatewayToken::from_random_bytes(bytes))
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
}
