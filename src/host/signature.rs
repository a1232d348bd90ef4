//! Checking a detached OpenPGP signature with `gpgv` against a keyring: Ubuntu's cloud-image
//! signing keys are built into the binary (`assets/ubuntu-cloudimage-keyring.gpg`, from
//! Debian's `ubuntu-keyring` package; fingerprints in the README), and a keyring file given
//! with `--keyring` replaces them (a mirror's own key, or a test's).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::host::process::{self, ProcessError};

/// Ubuntu's cloud-image signing keyring: `/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg`
/// of Debian trixie's `ubuntu-keyring` 2023.11.28.1-0.2, holding
/// D2EB 4462 6FDD C30B 513D 5BB7 1A5D 6C4C 7DB8 7C81 (UEC Image Automatic Signing Key) and
/// 4A3C E3CD 565D 7EB5 C810 E2B9 7FF3 F408 476C F100 (Ubuntu Cloud Image Builder).
pub const UBUNTU_CLOUD_IMAGE_KEYRING: &[u8] =
    include_bytes!("../../assets/ubuntu-cloudimage-keyring.gpg");

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("write the keyring {path}")]
    WriteKeyring {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("check the signature of {data} ({signature}) with gpgv")]
    Refused {
        data: String,
        signature: String,
        #[source]
        source: Box<ProcessError>,
    },
}

/// Writes the built-in keyring into `dir` (a private staging dir) for `gpgv --keyring`, which
/// takes a file only.
pub fn write_builtin_keyring(dir: &Path) -> Result<PathBuf, SignatureError> {
    let path = dir.join("ubuntu-cloudimage-keyring.gpg");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(UBUNTU_CLOUD_IMAGE_KEYRING))
        .map_err(|source| SignatureError::WriteKeyring {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// `gpgv` must find a good signature on `data` by a key in `keyring`. `home` (an empty,
/// private dir) keeps gpgv away from root's own `~/.gnupg`. `shown` names the data in
/// messages (its URL rather than the staging path).
pub fn verify_detached(
    keyring: &Path,
    signature: &Path,
    data: &Path,
    home: &Path,
    shown: (&str, &str),
) -> Result<(), SignatureError> {
    // gpgv reads a relative keyring name from its home dir, so the path is made absolute.
    let keyring = std::path::absolute(keyring).unwrap_or_else(|_| keyring.to_owned());
    let args = [
        "--homedir".to_owned(),
        home.to_string_lossy().into_owned(),
        "--keyring".to_owned(),
        keyring.to_string_lossy().into_owned(),
        signature.to_string_lossy().into_owned(),
        data.to_string_lossy().into_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    process::run_checked("gpgv", &args).map_err(|source| SignatureError::Refused {
        data: shown.0.to_owned(),
        signature: shown.1.to_owned(),
        source: Box::new(source),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_keyring_is_the_binary_keyring_with_the_two_ubuntu_keys() {
        // An OpenPGP public-key packet (old format, tag 6) opens a binary keyring.
        assert_eq!(UBUNTU_CLOUD_IMAGE_KEYRING[0] & 0xfc, 0x98);
        let dir = tempfile::tempdir().unwrap();
        let path = write_builtin_keyring(dir.path()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), UBUNTU_CLOUD_IMAGE_KEYRING);
        // Exactly the two keys the README names, read by GnuPG itself.
        let shown = std::process::Command::new("gpg")
            .args(["--batch", "--with-colons", "--show-keys"])
            .arg(&path)
            .env("GNUPGHOME", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&shown.stdout);
        let fingerprints: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("fpr:"))
            .filter_map(|l| l.split(':').nth(9))
            .collect();
        assert_eq!(
            fingerprints,
            [
                "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81",
                "4A3CE3CD565D7EB5C810E2B97FF3F408476CF100"
            ],
            "{text}"
        );
    }
}
