//! Baked base images as data: the name a bake installs under ([`BakeName`]), the builder VM's
//! reserved id, the record of what each baked image holds (`fireclaw-baked.json`, a file of its
//! own beside `fireclaw-images.json`, which `image fetch` rewrites and which older builds read
//! with a closed schema), the facts the guest reports after the install phase, and the pure
//! rules: how big the builder's disk is, whether a baked file still matches its record, how old
//! its OpenClaw image is. Nothing here touches the disk; `crate::store` reads and writes the
//! record and `crate::commands::image::bake` does the work.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::values::{InvalidValue, escaped};

/// The baked images' record in the images directory.
pub const BAKED_FILE: &str = "fireclaw-baked.json";
/// Its format version.
pub const BAKED_FORMAT: u32 = 1;
/// The builder VM's instance id. `setup` refuses it, so a builder can never collide with an
/// instance, and `list` does not show it; `doctor` and `host cleanup` do see a leftover one.
pub const BUILDER_ID: &str = "fireclaw-bake";
/// Where the install phase finds the image archive in the builder guest (removed afterwards).
pub const GUEST_ARCHIVE_PATH: &str = "/var/lib/fireclaw-bake/openclaw-image.tar";
/// Where a baked browser lives in the guest, shared by every instance made from the image.
pub const SHARED_BROWSER_DIR: &str = "/opt/fireclaw/playwright";
/// A baked OpenClaw image older than this gets a `doctor` warning: OpenClaw releases often.
pub const STALE_AFTER_DAYS: u64 = 30;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Names the base files use; a bake never installs over them.
const RESERVED_NAMES: [&str; 4] = ["rootfs", "vmlinux", "initrd", "fireclaw-images"];

/// A baked image's name: `<name>.ext4` in `BASE_IMAGES_DIR`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BakeName(String);

impl BakeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The installed file's name.
    pub fn file_name(&self) -> String {
        format!("{}.ext4", self.0)
    }
}

impl fmt::Display for BakeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BakeName {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let refuse = |why: &str| {
            Err(InvalidValue(format!(
                "image name '{}' {why}",
                escaped(value)
            )))
        };
        if value.is_empty() {
            return refuse("is empty");
        }
        if value.contains('/') || value.contains("..") {
            return refuse("must not contain '/' or '..'");
        }
        if value.len() > 64 {
            return refuse("is longer than 64 characters");
        }
        if value.starts_with('.') || value.starts_with('-') {
            return refuse("must not start with '.' or '-'");
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return refuse(&format!(
                "contains '{}'; use only letters, digits, '.', '_' and '-'",
                escaped(&bad.to_string())
            ));
        }
        let stem = value.strip_suffix(".ext4").unwrap_or(value);
        if RESERVED_NAMES.contains(&stem) || value.ends_with(".ext4") {
            return refuse(&format!(
                "is taken by the base files ({}) or ends in .ext4; choose another",
                RESERVED_NAMES.join(", ")
            ));
        }
        Ok(Self(value.to_owned()))
    }
}

/// A file a baked image was made from, with its digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// The OpenClaw image in a baked guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BakedOpenClaw {
    /// The reference instances run (`docker tag`ged to it after a load).
    pub reference: String,
    /// Docker's image ID (`sha256:…`): after a `docker load` there is no repo digest.
    pub image_id: String,
    /// The registry digest Docker reports for a pulled image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_digest: Option<String>,
    /// The archive it was loaded from, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<SourceFile>,
}

/// One baked image, as `fireclaw-baked.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BakedRecord {
    pub name: String,
    /// The file in the images directory (`<name>.ext4`), its size and SHA-256.
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// The base rootfs it was baked from.
    pub base: SourceFile,
    /// The kernel (and initrd) the builder booted: modules in the image match it.
    pub kernel: SourceFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<SourceFile>,
    pub openclaw: BakedOpenClaw,
    pub docker_version: String,
    /// Playwright's Chromium is in [`SHARED_BROWSER_DIR`].
    pub browser: bool,
    /// UTC, RFC 3339.
    pub baked_at: String,
    pub fireclaw_version: String,
}

impl BakedRecord {
    /// Whether the installed file still looks like what was baked (size only: hashing a disk
    /// image is left to a caller that asks for it).
    pub fn size_matches(&self, size: u64) -> bool {
        self.size == size
    }

    /// Days since the bake, counted from `now` (seconds since the epoch); `None` when the
    /// record's date does not parse.
    pub fn age_days(&self, now: u64) -> Option<u64> {
        let baked = parse_rfc3339_utc(&self.baked_at)?;
        Some(now.saturating_sub(baked) / 86_400)
    }
}

/// `fireclaw-baked.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BakedManifest {
    pub format: u32,
    pub images: Vec<BakedRecord>,
}

impl Default for BakedManifest {
    fn default() -> Self {
        Self {
            format: BAKED_FORMAT,
            images: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a fireclaw baked-image record")]
pub struct BakedError(#[source] pub serde_json::Error);

impl BakedManifest {
    pub fn parse(text: &str) -> Result<Self, BakedError> {
        serde_json::from_str(text).map_err(BakedError)
    }

    /// Pretty JSON with a final newline.
    pub fn render(&self) -> String {
        // Serialising plain strings, numbers and booleans cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    pub fn get(&self, name: &str) -> Option<&BakedRecord> {
        self.images.iter().find(|r| r.name == name)
    }

    /// The record of the baked file named `file` in the images directory.
    pub fn by_file(&self, file: &str) -> Option<&BakedRecord> {
        self.images.iter().find(|r| r.file == file)
    }

    /// Adds `record`, replacing the one of the same name; keeps the records sorted by name.
    pub fn record(&mut self, record: BakedRecord) {
        self.images.retain(|r| r.name != record.name);
        self.images.push(record);
        self.images.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// The builder's disk: the base, room to copy the archive in and unpack it beside, and a
/// margin for Docker and the browser; in whole MiB. The baked image is shrunk afterwards.
pub fn builder_disk_bytes(base: u64, archive: u64) -> u64 {
    let wanted = base + archive.saturating_mul(3) + 2 * GIB;
    wanted.div_ceil(MIB) * MIB
}

/// Free space the bake needs: the builder's disk in `FC_ROOT` (sparse, but it fills as the
/// image lands) and the baked copy in the images directory (at most the builder's size).
pub fn space_needed(base: u64, archive: u64) -> u64 {
    builder_disk_bytes(base, archive)
}

/// What the install phase reports on stdout, as `fireclaw-fact: key=value` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallFacts {
    pub image_id: String,
    pub repo_digest: Option<String>,
    pub docker_version: String,
    pub browser: bool,
}

/// The prefix of a fact line: nothing else the script prints starts with it.
pub const FACT_PREFIX: &str = "fireclaw-fact: ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the guest's install phase did not report {0}")]
pub struct MissingFact(pub &'static str);

impl InstallFacts {
    pub fn parse(stdout: &str) -> Result<Self, MissingFact> {
        let facts: BTreeMap<&str, &str> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix(FACT_PREFIX))
            .filter_map(|fact| fact.split_once('='))
            .map(|(key, value)| (key.trim(), value.trim()))
            .collect();
        let required = |key: &'static str| {
            facts
                .get(key)
                .filter(|v| !v.is_empty())
                .map(|v| (*v).to_owned())
                .ok_or(MissingFact(key))
        };
        Ok(Self {
            image_id: required("image_id")?,
            repo_digest: facts
                .get("repo_digest")
                .filter(|v| !v.is_empty())
                .map(|v| (*v).to_owned()),
            docker_version: required("docker_version")?,
            browser: required("browser")? == "true",
        })
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time as `rfc3339_utc` writes it
/// (`YYYY-MM-DDTHH:MM:SSZ`).
fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() != 20 || bytes[4] != b'-' || bytes[10] != b'T' || bytes[19] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), March-based years.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
impl BakedRecord {
    /// A record of `name` (file `<name>.ext4`) with this size and SHA-256, the rest filler.
    pub fn sample(name: &str, size: u64, sha256: &str) -> Self {
        let source = |path: &str| SourceFile {
            path: path.into(),
            sha256: String::new(),
            size: 1,
        };
        Self {
            name: name.into(),
            file: format!("{name}.ext4"),
            size,
            sha256: sha256.into(),
            base: source("/b"),
            kernel: source("/k"),
            initrd: None,
            openclaw: BakedOpenClaw {
                reference: "r".into(),
                image_id: "sha256:1".into(),
                repo_digest: None,
                archive: None,
            },
            docker_version: "26".into(),
            browser: false,
            baked_at: "2026-12-01T00:00:00Z".into(),
            fireclaw_version: "0".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::images::rfc3339_utc;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn names_that_could_escape_or_shadow_a_base_file_are_refused() {
        for good in ["openclaw-2026.9", "bots_v2", "a"] {
            assert_eq!(good.parse::<BakeName>().unwrap().as_str(), good);
        }
        for (bad, why) in [
            ("", "is empty"),
            ("a/b", "'/' or '..'"),
            ("..", "'/' or '..'"),
            ("x..y", "'/' or '..'"),
            ("rootfs", "taken by the base files"),
            ("vmlinux", "taken by the base files"),
            ("initrd", "taken by the base files"),
            ("rootfs.ext4", "taken by the base files"),
            ("mine.ext4", "ends in .ext4"),
            (".hidden", "must not start"),
            ("-x", "must not start"),
            ("a b", "contains ' '"),
            ("ä", "contains"),
        ] {
            let error = bad.parse::<BakeName>().unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert_eq!("bots".parse::<BakeName>().unwrap().file_name(), "bots.ext4");
        // The builder's id is a valid instance id that setup refuses elsewhere.
        assert!(
            BUILDER_ID
                .parse::<crate::instance::values::InstanceId>()
                .is_ok()
        );
    }

    #[test]
    fn the_builder_disk_has_room_for_the_archive_twice_over_and_a_margin() {
        assert_eq!(builder_disk_bytes(GIB, 0), 3 * GIB);
        assert_eq!(builder_disk_bytes(GIB + 1, MIB), 3 * GIB + 4 * MIB);
        assert!(space_needed(GIB, GIB) >= builder_disk_bytes(GIB, GIB));
    }

    #[test]
    fn facts_are_read_from_their_lines_only() {
        let stdout = "noise\nfireclaw-fact: image_id=sha256:abc\nfireclaw-fact: repo_digest=\nfireclaw-fact: docker_version=26.1.5\nfireclaw-fact: browser=false\n";
        assert_eq!(
            InstallFacts::parse(stdout).unwrap(),
            InstallFacts {
                image_id: "sha256:abc".into(),
                repo_digest: None,
                docker_version: "26.1.5".into(),
                browser: false,
            }
        );
        assert_eq!(
            InstallFacts::parse("image_id=sha256:abc\n").unwrap_err(),
            MissingFact("image_id")
        );
    }

    #[test]
    fn the_age_is_counted_from_the_recorded_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let record = |baked_at: String| BakedRecord {
            name: "n".into(),
            file: "n.ext4".into(),
            size: 1,
            sha256: String::new(),
            base: SourceFile {
                path: "/b".into(),
                sha256: String::new(),
                size: 1,
            },
            kernel: SourceFile {
                path: "/k".into(),
                sha256: String::new(),
                size: 1,
            },
            initrd: None,
            openclaw: BakedOpenClaw {
                reference: "r".into(),
                image_id: "sha256:1".into(),
                repo_digest: None,
                archive: None,
            },
            docker_version: "26".into(),
            browser: false,
            baked_at,
            fireclaw_version: "0".into(),
        };
        let secs = 1_780_000_000;
        let then = rfc3339_utc(now - Duration::from_secs(31 * 86_400 + 5));
        assert_eq!(record(then).age_days(secs), Some(31));
        assert_eq!(record(rfc3339_utc(now)).age_days(secs), Some(0));
        assert_eq!(record("yesterday".into()).age_days(secs), None);
        assert!(record("2026-01-01T00:00:00Z".into()).size_matches(1));
        let mut manifest = BakedManifest::default();
        manifest.record(record("2026-01-01T00:00:00Z".into()));
        manifest.record(record("2026-02-01T00:00:00Z".into()));
        assert_eq!(manifest.images.len(), 1);
        let text = manifest.render();
        assert_eq!(BakedManifest::parse(&text).unwrap(), manifest);
        assert!(manifest.by_file("n.ext4").is_some());
    }
}
