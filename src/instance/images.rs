//! The guest base images as data: where `fireclaw image fetch` may take them from
//! ([`ImageSource`]), the manifest it keeps beside them (`fireclaw-images.json`), and the pure
//! rules of fetching: which Firecracker CI kernel a listing offers, which digest `SHA256SUMS`
//! names, what a file's first bytes say it is, and how much disk a fetch needs. Nothing here
//! touches the disk or the network; `crate::store` reads and writes the manifest and
//! `crate::host::download` and `crate::host::rootfs_build` do the work.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::values::{InvalidValue, escaped};

/// The manifest's file name in the images directory.
pub const MANIFEST_FILE: &str = "fireclaw-images.json";
/// The manifest's format version.
pub const MANIFEST_FORMAT: u32 = 1;
/// The label Ubuntu's `/etc/fstab` mounts the root filesystem by.
pub const ROOTFS_LABEL: &str = "cloudimg-rootfs";

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// A built rootfs gets this much room beyond its files, in percent of their size, so the
/// guest can install packages before `setup` grows its own copy to the disk size...
pub const ROOTFS_MARGIN_PERCENT: u64 = 50;
/// ...and at least this much.
pub const ROOTFS_MIN_MARGIN: u64 = GIB;
/// How much larger a root tree is than its xz tarball, for the space check made before the
/// download (Ubuntu's root tarballs expand about fivefold; the check errs on the safe side).
/// The check is made again with the real size once the tree is extracted.
pub const XZ_EXPANSION_FACTOR: u64 = 6;
/// Room for the ext4 metadata (inode tables, journal) on top of the files, when the image is
/// built: a tenth of the tree, plus this.
pub const EXT4_METADATA_SLACK: u64 = 64 * MIB;

/// How a file's content was checked, as the manifest records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Verification {
    /// `SHA256SUMS` signed by a key in the keyring, and the file matched it.
    #[serde(rename = "gpg+sha256")]
    SignedSha256,
    /// The file matched a digest given on the command line.
    #[serde(rename = "sha256 pinned")]
    PinnedSha256,
    /// Nothing to check against: the digest is recorded so a later change shows.
    #[serde(rename = "sha256 recorded (unverified source)")]
    Recorded,
}

impl Verification {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignedSha256 => "gpg+sha256",
            Self::PinnedSha256 => "sha256 pinned",
            Self::Recorded => "sha256 recorded (unverified source)",
        }
    }
}

/// One installed image, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// The file name in the images directory (`vmlinux`, `rootfs.ext4`).
    pub file: String,
    /// Where it came from: a URL or a local path.
    pub source: String,
    /// SHA-256 of what was downloaded or copied (for a built rootfs: of its source tarball).
    pub source_sha256: String,
    /// SHA-256 and size of the installed file.
    pub sha256: String,
    pub size: u64,
    /// Kernel version, or the Ubuntu release; absent when the source does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// UTC, RFC 3339.
    pub fetched_at: String,
    pub verification: Verification,
}

/// `fireclaw-images.json`: what `fireclaw image fetch` installed, one record per file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageManifest {
    pub format: u32,
    pub images: Vec<ImageRecord>,
}

impl Default for ImageManifest {
    fn default() -> Self {
        Self {
            format: MANIFEST_FORMAT,
            images: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a fireclaw image manifest")]
pub struct ManifestError(#[source] pub serde_json::Error);

impl ImageManifest {
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        serde_json::from_str(text).map_err(ManifestError)
    }

    /// Pretty JSON with a final newline.
    pub fn render(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    pub fn get(&self, file: &str) -> Option<&ImageRecord> {
        self.images.iter().find(|r| r.file == file)
    }

    /// Adds `record`, replacing the one for the same file; keeps the records sorted by file.
    pub fn record(&mut self, record: ImageRecord) {
        self.images.retain(|r| r.file != record.file);
        self.images.push(record);
        self.images.sort_by(|a, b| a.file.cmp(&b.file));
    }
}

/// One line about the installed images, for `doctor`: each file with its version, how it was
/// verified and the day it was fetched, e.g. `vmlinux 6.1.141 (sha256 pinned, 2026-08-07);
/// rootfs.ext4 Ubuntu 24.04 LTS (gpg+sha256, 2026-08-07)`.
pub fn manifest_summary(manifest: &ImageManifest) -> String {
    if manifest.images.is_empty() {
        return "no images recorded".to_owned();
    }
    manifest
        .images
        .iter()
        .map(|r| {
            let day = r.fetched_at.get(..10).unwrap_or(&r.fetched_at);
            match &r.version {
                Some(version) => format!(
                    "{} {} ({}, {day})",
                    r.file,
                    escaped(version),
                    r.verification.as_str()
                ),
                None => format!("{} ({}, {day})", r.file, r.verification.as_str()),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `time` as UTC RFC 3339 to the second (`2026-08-07T09:05:03Z`).
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let c = crate::instance::calendar::civil_utc(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// A SHA-256 digest as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn from_digest(bytes: &[u8]) -> Self {
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Sha256Hex {
    type Err = InvalidValue;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(value.to_ascii_lowercase()))
        } else {
            Err(InvalidValue(format!(
                "'{}' is not a SHA-256 digest (64 hex digits)",
                escaped(value)
            )))
        }
    }
}

/// Where an image comes from: a URL (`https://`, or `http://` for a mirror) or a local file
/// (`file://` or a plain path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Url(String),
    File(PathBuf),
}

impl FromStr for ImageSource {
    type Err = InvalidValue;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.is_empty() || value.contains(['\n', '\r', '\0']) {
            return Err(InvalidValue(format!(
                "'{}' is not a URL or a path",
                escaped(value)
            )));
        }
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            if url_host(value).is_none_or(str::is_empty) {
                return Err(InvalidValue(format!(
                    "'{}' has no host name",
                    escaped(value)
                )));
            }
            return Ok(Self::Url(value.to_owned()));
        }
        if let Some(path) = value.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(InvalidValue(format!(
                    "'{}': a file:// URL needs an absolute path (file:///media/usb/vmlinux)",
                    escaped(value)
                )));
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = value.split_once("://") {
            return Err(InvalidValue(format!(
                "'{}': scheme {} is not supported (use https://, http://, file:// or a path)",
                escaped(value),
                escaped(scheme)
            )));
        }
        Ok(Self::File(PathBuf::from(value)))
    }
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url) => f.write_str(url),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl ImageSource {
    /// The last path segment: the file's own name.
    pub fn file_name(&self) -> Option<String> {
        match self {
            Self::Url(url) => {
                let path = url.split(['?', '#']).next().unwrap_or(url);
                let name = path.rsplit('/').next()?;
                (!name.is_empty() && !path.ends_with("//")).then(|| name.to_owned())
            }
            Self::File(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
        }
    }

    /// A file named `name` in the same directory (`SHA256SUMS` beside a tarball).
    pub fn sibling(&self, name: &str) -> Self {
        match self {
            Self::Url(url) => {
                let path = url.split(['?', '#']).next().unwrap_or(url);
                let dir = path.rsplit_once('/').map(|(dir, _)| dir).unwrap_or(path);
                Self::Url(format!("{dir}/{name}"))
            }
            Self::File(path) => Self::File(path.with_file_name(name)),
        }
    }

    /// Plain `http://` to a host other than this machine's loopback: anything on the way can
    /// change the bytes, so only a signature or a pinned digest makes it trustworthy.
    pub fn is_plain_http_off_host(&self) -> bool {
        match self {
            Self::Url(url) if url.to_ascii_lowercase().starts_with("http://") => {
                !url_host(url).is_some_and(is_loopback_host)
            }
            _ => false,
        }
    }
}

impl ImageSource {
    /// `name` inside this source taken as a directory (a mirror's base URL or a local dir).
    pub fn join(&self, name: &str) -> Self {
        match self {
            Self::Url(url) => Self::Url(join_url(url, name)),
            Self::File(path) => Self::File(path.join(name)),
        }
    }
}

/// Ubuntu's release directory of the current LTS cloud images.
pub const DEFAULT_UBUNTU_MIRROR: &str = "https://cloud-images.ubuntu.com/releases/noble/release/";
/// The root filesystem tarball in it, and the release it holds.
pub const UBUNTU_ROOT_TARBALL: &str = "ubuntu-24.04-server-cloudimg-amd64-root.tar.xz";
pub const UBUNTU_RELEASE: &str = "Ubuntu 24.04 LTS (noble)";
/// The checksum file beside it and its detached signature.
pub const SUMS_FILE: &str = "SHA256SUMS";
pub const SUMS_SIGNATURE_FILE: &str = "SHA256SUMS.gpg";
/// Firecracker's public bucket of CI artefacts, path-style (listing and downloads).
pub const DEFAULT_KERNEL_INDEX: &str = "https://s3.amazonaws.com/spec.ccfc.min";

/// The S3 ListObjectsV2 URL of the CI kernels under `prefix` in the bucket at `index`.
pub fn kernel_listing_url(index: &str, prefix: &str) -> String {
    format!(
        "{}/?prefix={prefix}&list-type=2",
        index.trim_end_matches('/')
    )
}

/// Which kernel to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChoice {
    /// The newest Firecracker CI kernel for the installed Firecracker, from the bucket at
    /// `index`.
    FirecrackerCi {
        index: String,
    },
    Given(ImageSource),
}

/// What `fireclaw image fetch` was asked to do, resolved from its flags and the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSpec {
    pub dir: PathBuf,
    pub kernel: KernelChoice,
    pub kernel_sha256: Option<Sha256Hex>,
    pub rootfs: ImageSource,
    /// True for the default Ubuntu image: its signed `SHA256SUMS` must be there.
    pub rootfs_sums_required: bool,
    pub rootfs_version: Option<String>,
    pub rootfs_sha256: Option<Sha256Hex>,
    /// Replaces the built-in Ubuntu keyring.
    pub keyring: Option<PathBuf>,
    pub force: bool,
    /// An initrd file to install as `initrd.img` (`--initrd`).
    pub initrd: Option<PathBuf>,
    /// A kernel or rootfs source was named: without one, `--initrd` keeps the images that are
    /// there and adds only the initrd.
    pub images_named: bool,
}

/// Whether `head` (a file's first bytes) starts an initramfs: a newc cpio archive, or one
/// compressed with gzip, zstd, xz, lz4, bzip2 or lzma, as kernels unpack them.
pub fn looks_like_initrd(head: &[u8]) -> bool {
    const MAGICS: [&[u8]; 8] = [
        b"070701",
        b"070702",
        &[0x1f, 0x8b],
        &[0x28, 0xb5, 0x2f, 0xfd],
        &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
        &[0x02, 0x21, 0x4c, 0x18],
        b"BZh",
        &[0x5d, 0x00, 0x00],
    ];
    MAGICS.iter().any(|magic| head.starts_with(magic))
}

/// `base` (a directory URL, with or without its final `/`) joined with `name`.
pub fn join_url(base: &str, name: &str) -> String {
    format!("{}/{name}", base.trim_end_matches('/'))
}

/// The host of an `http(s)://` URL, without user info or port (`[::1]` stays bracketed).
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.starts_with('[') {
        return host_port.find(']').map(|end| &host_port[..=end]);
    }
    Some(host_port.split(':').next().unwrap_or(host_port))
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Firecracker's CI directory for a `firecracker --version` output (`Firecracker v1.16.1` →
/// `v1.16`): its CI kernels are published per minor version.
pub fn firecracker_ci_version(version_output: &str) -> Option<String> {
    let first = version_output.lines().next()?;
    let version = first
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))?;
    let mut parts = version.split('.');
    let (major, minor) = (parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor)).then(|| format!("v{major}.{minor}"))
}

/// The S3 prefix of Firecracker's CI kernels for one CI version.
pub fn kernel_prefix(ci_version: &str) -> String {
    format!("firecracker-ci/{ci_version}/x86_64/vmlinux-")
}

/// The version in a kernel file name `vmlinux-6.1.141` (two or three numbers), if it is one.
pub fn kernel_version_of(name: &str) -> Option<&str> {
    let version = name.strip_prefix("vmlinux-")?;
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()));
    (numeric && (2..=3).contains(&parts.len())).then_some(version)
}

/// The newest kernel in an S3 ListObjectsV2 listing: among the `<Key>`s named exactly
/// `<prefix><digits.digits[.digits]>` (not `.config`, debug builds or anything else), the
/// highest version. Returns the key and the version.
pub fn newest_kernel_key(listing: &str, prefix: &str) -> Option<(String, String)> {
    let dir = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
    listing
        .split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.trim()))
        .filter(|key| key.starts_with(prefix))
        .filter_map(|key| {
            let name = key.strip_prefix(dir)?.strip_prefix('/')?;
            let version = kernel_version_of(name)?;
            let numbers: Vec<u64> = version.split('.').filter_map(|p| p.parse().ok()).collect();
            Some((numbers, key.to_owned(), version.to_owned()))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, key, version)| (key, version))
}

/// The digest `SHA256SUMS` gives for `file` (lines `<hex> *<name>` or `<hex>  <name>`).
pub fn digest_in_sums(sums: &str, file: &str) -> Option<Sha256Hex> {
    sums.lines().find_map(|line| {
        let (digest, name) = line.trim_end().split_once(' ')?;
        let name = name.trim_start().trim_start_matches('*');
        (name == file).then(|| digest.parse().ok()).flatten()
    })
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// An uncompressed ELF kernel, what Firecracker boots on x86_64.
    Elf,
    /// A compressed x86 boot image (`vmlinuz`), which Firecracker cannot boot.
    BzImage,
    XzTarball,
    Tar,
    Ext4,
    Gzip,
    Unknown,
}

impl ImageFormat {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Elf => "an ELF kernel",
            Self::BzImage => "a compressed kernel (bzImage/vmlinuz)",
            Self::XzTarball => "an xz tarball",
            Self::Tar => "a tar archive",
            Self::Ext4 => "an ext4 image",
            Self::Gzip => "a gzip file",
            Self::Unknown => "of an unknown format",
        }
    }
}

/// How many leading bytes [`sniff_format`] and [`ext4_label`] need.
pub const SNIFF_LEN: usize = 2048;

/// The format of a file from its first [`SNIFF_LEN`] bytes.
pub fn sniff_format(head: &[u8]) -> ImageFormat {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"\x7fELF") {
        ImageFormat::Elf
    } else if at(0x202, b"HdrS") {
        ImageFormat::BzImage
    } else if at(0, b"\xfd7zXZ\0") {
        ImageFormat::XzTarball
    } else if at(0, b"\x1f\x8b") {
        ImageFormat::Gzip
    } else if at(1080, &[0x53, 0xef]) {
        ImageFormat::Ext4
    } else if at(257, b"ustar") {
        ImageFormat::Tar
    } else {
        ImageFormat::Unknown
    }
}

/// The volume label in an ext2/3/4 superblock, from the first [`SNIFF_LEN`] bytes.
pub fn ext4_label(head: &[u8]) -> Option<String> {
    let raw = head.get(1024 + 120..1024 + 136)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// Space a fetch needs before anything is downloaded: the kernel, the rootfs download, and for
/// a tarball the tree it unpacks to and the image built from it. Counted as if all of it
/// existed at once (the tarball is in fact deleted once unpacked), so the check errs on the
/// safe side; a raw ext4 image is installed as it is.
pub fn space_before_download(kernel_bytes: u64, rootfs_bytes: u64, rootfs_name: &str) -> u64 {
    let tree = if rootfs_name.ends_with(".xz") {
        Some(rootfs_bytes.saturating_mul(XZ_EXPANSION_FACTOR))
    } else if rootfs_name.ends_with(".tar") {
        Some(rootfs_bytes)
    } else {
        None
    };
    let build = tree.map_or(0, |tree| tree.saturating_add(space_to_build_image(tree)));
    kernel_bytes
        .saturating_add(rootfs_bytes)
        .saturating_add(build)
}

/// Space the ext4 image needs on disk once the tree is unpacked: mkfs writes the files once
/// more, plus the filesystem's own metadata.
pub fn space_to_build_image(tree_bytes: u64) -> u64 {
    tree_bytes
        .saturating_add(tree_bytes / 10)
        .saturating_add(EXT4_METADATA_SLACK)
}

/// The size of the ext4 image for a tree of `tree_bytes`: the tree plus
/// [`ROOTFS_MARGIN_PERCENT`], at least [`ROOTFS_MIN_MARGIN`] more, rounded up to a MiB.
pub fn rootfs_image_size(tree_bytes: u64) -> u64 {
    let margin = (tree_bytes / 100)
        .saturating_mul(ROOTFS_MARGIN_PERCENT)
        .max(ROOTFS_MIN_MARGIN);
    tree_bytes.saturating_add(margin).div_ceil(MIB) * MIB
}

/// Bytes as MiB for a person (`12.3 MiB`), or GiB from 10 GiB on.
pub fn human_bytes(bytes: u64) -> String {
    if bytes >= 10 * GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(rfc3339_utc(leap), "2000-02-29T01:01:01Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_786_000_000);
        assert_eq!(rfc3339_utc(later), "2026-08-06T07:06:40Z");
    }

    #[test]
    fn the_ci_version_is_the_minor_version_of_firecracker() {
        assert_eq!(
            firecracker_ci_version("Firecracker v1.16.1\n\nSupported snapshot versions: 6.0.0\n")
                .as_deref(),
            Some("v1.16")
        );
        assert_eq!(
            firecracker_ci_version("Firecracker v1.7.0-dev").as_deref(),
            Some("v1.7")
        );
        assert_eq!(firecracker_ci_version("firecracker 1.16"), None);
        assert_eq!(firecracker_ci_version(""), None);
    }

    #[test]
    fn the_newest_plain_kernel_in_the_listing_wins() {
        let prefix = kernel_prefix("v1.16");
        let listing = format!(
            "<?xml version=\"1.0\"?><ListBucketResult><Name>spec.ccfc.min</Name>\
             <Contents><Key>{prefix}5.10.239</Key><Size>1</Size></Contents>\
             <Contents><Key>{prefix}6.1.99</Key></Contents>\
             <Contents><Key>{prefix}6.1.141</Key></Contents>\
             <Contents><Key>{prefix}6.1.141.config</Key></Contents>\
             <Contents><Key>{prefix}6.1.200-debug</Key></Contents>\
             <Contents><Key>{prefix}no-acpi-6.1.300</Key></Contents>\
             <Contents><Key>firecracker-ci/v1.16/aarch64/vmlinux-9.9.9</Key></Contents>\
             </ListBucketResult>"
        );
        assert_eq!(
            newest_kernel_key(&listing, &prefix),
            Some((format!("{prefix}6.1.141"), "6.1.141".to_owned()))
        );
        assert_eq!(newest_kernel_key("<ListBucketResult/>", &prefix), None);
    }

    #[test]
    fn sums_give_the_digest_of_the_named_file_only() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let sums = format!("{a} *ubuntu-24.04-server-cloudimg-amd64.img\n{b} *root.tar.xz\n");
        assert_eq!(
            digest_in_sums(&sums, "root.tar.xz").unwrap().as_str(),
            "b".repeat(64)
        );
        assert_eq!(digest_in_sums(&sums, "tar.xz"), None);
        assert_eq!(
            digest_in_sums(&format!("{a}  x.img\n"), "x.img")
                .unwrap()
                .as_str(),
            a
        );
    }

    #[test]
    fn sources_are_urls_file_urls_or_paths() {
        assert_eq!(
            "https://h/x/vmlinux".parse::<ImageSource>().unwrap(),
            ImageSource::Url("https://h/x/vmlinux".into())
        );
        assert_eq!(
            "file:///media/usb/rootfs.ext4"
                .parse::<ImageSource>()
                .unwrap(),
            ImageSource::File("/media/usb/rootfs.ext4".into())
        );
        assert_eq!(
            "rootfs.ext4".parse::<ImageSource>().unwrap(),
            ImageSource::File("rootfs.ext4".into())
        );
        for bad in ["ftp://h/x", "file://relative", "", "https:///x", "a\nb"] {
            assert!(bad.parse::<ImageSource>().is_err(), "{bad}");
        }
        let url: ImageSource = "https://m/r/root.tar.xz?x=1".parse().unwrap();
        assert_eq!(url.file_name().as_deref(), Some("root.tar.xz"));
        assert_eq!(
            url.sibling("SHA256SUMS"),
            ImageSource::Url("https://m/r/SHA256SUMS".into())
        );
    }

    #[test]
    fn only_plain_http_off_this_host_is_untrusted() {
        let off = |s: &str| s.parse::<ImageSource>().unwrap().is_plain_http_off_host();
        assert!(off("http://mirror.example/k"));
        assert!(off("HTTP://127.0.0.1.example/k"));
        assert!(!off("http://127.0.0.1:8080/k"));
        assert!(!off("http://localhost/k"));
        assert!(!off("http://[::1]:80/k"));
        assert!(!off("https://mirror.example/k"));
        assert!(!off("/media/usb/k"));
    }

    #[test]
    fn formats_are_told_by_their_magic() {
        let mut head = vec![0u8; SNIFF_LEN];
        assert_eq!(sniff_format(&head), ImageFormat::Unknown);
        head[1080] = 0x53;
        head[1081] = 0xef;
        head[1024 + 120..1024 + 120 + 15].copy_from_slice(b"cloudimg-rootfs");
        assert_eq!(sniff_format(&head), ImageFormat::Ext4);
        assert_eq!(ext4_label(&head).as_deref(), Some(ROOTFS_LABEL));
        assert_eq!(sniff_format(b"\x7fELF\x02\x01\x01"), ImageFormat::Elf);
        assert_eq!(sniff_format(b"\xfd7zXZ\0\0"), ImageFormat::XzTarball);
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(sniff_format(&bz), ImageFormat::BzImage);
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(sniff_format(&tar), ImageFormat::Tar);
        assert_eq!(sniff_format(b"short"), ImageFormat::Unknown);
    }

    #[test]
    fn space_estimates_cover_the_tree_and_the_image() {
        let mib = MIB;
        // An xz tarball: the tree is six times it, the image the tree again plus metadata.
        let need = space_before_download(10 * mib, 100 * mib, "root.tar.xz");
        assert_eq!(
            need,
            10 * mib + 100 * mib + 600 * mib + (660 * mib + EXT4_METADATA_SLACK)
        );
        // A raw ext4 image is installed as it is.
        assert_eq!(
            space_before_download(0, 100 * mib, "rootfs.ext4"),
            100 * mib
        );
        assert_eq!(
            space_before_download(0, 100 * mib, "root.tar"),
            200 * mib + 110 * mib + EXT4_METADATA_SLACK
        );
        assert_eq!(space_to_build_image(0), EXT4_METADATA_SLACK);
    }

    #[test]
    fn the_image_has_half_again_its_tree_and_at_least_a_gib_spare() {
        assert_eq!(rootfs_image_size(0), GIB);
        assert_eq!(rootfs_image_size(10 * MIB), 10 * MIB + GIB);
        assert_eq!(rootfs_image_size(4 * GIB), 6 * GIB);
        assert_eq!(rootfs_image_size(4 * GIB + 1) % MIB, 0);
    }

    #[test]
    fn the_manifest_round_trips_and_sums_up_in_one_line() {
        let mut manifest = ImageManifest::default();
        assert_eq!(manifest_summary(&manifest), "no images recorded");
        for (file, version, verification) in [
            ("vmlinux", Some("6.1.141"), Verification::Recorded),
            (
                "rootfs.ext4",
                Some("Ubuntu 24.04 LTS"),
                Verification::SignedSha256,
            ),
            ("vmlinux", Some("6.1.142"), Verification::PinnedSha256),
        ] {
            manifest.record(ImageRecord {
                file: file.into(),
                source: format!("https://example/{file}"),
                source_sha256: "0".repeat(64),
                sha256: "1".repeat(64),
                size: 42,
                version: version.map(str::to_owned),
                fetched_at: "2026-08-07T09:05:03Z".into(),
                verification,
            });
        }
        let text = manifest.render();
        assert_eq!(ImageManifest::parse(&text).unwrap(), manifest);
        assert!(text.contains("\"verification\": \"gpg+sha256\""), "{text}");
        assert_eq!(
            manifest_summary(&manifest),
            "rootfs.ext4 Ubuntu 24.04 LTS (gpg+sha256, 2026-08-07); vmlinux 6.1.142 (sha256 \
             pinned, 2026-08-07)"
        );
        assert!(ImageManifest::parse("{}").is_err());
    }
}
