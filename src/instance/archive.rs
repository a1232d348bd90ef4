//! The instance archive of `fireclaw export` and `fireclaw import`: a tar stream (compressed
//! with zstd, optionally encrypted with age) whose first member is `manifest.json` and whose
//! last is `checksums.json`. Everything here is the format's pure rules: which member names
//! exist at all (an allow-list: an archive is untrusted input that root acts on), the caps on
//! every size, the manifest's and checksums' schema and checks, and the sparse map of a disk.
//!
//! A disk travels as its data only: the member holds its data extents one after another, and
//! the manifest maps each extent to its offset in a file of the member's logical size, so an
//! 8 GiB disk holding 1.5 GiB is read, sent and written as 1.5 GiB. A member's digest is the
//! SHA-256 of its bytes; a sparse member's covers its map first (`extents <offset> <length>`
//! lines), then its data.

use std::collections::{BTreeMap, BTreeSet};

/// The format this build writes; an archive of a later format is refused, naming it.
pub const FORMAT: u32 = 1;
/// The first member.
pub const MANIFEST: &str = "manifest.json";
/// The last member: the SHA-256 of every other member.
pub const CHECKSUMS: &str = "checksums.json";
/// The archive's file name suffix (`<id>-<UTC time>.fireclaw`).
pub const SUFFIX: &str = ".fireclaw";

/// The manifest's own size cap: it is read whole before anything is trusted.
pub const MANIFEST_CAP: u64 = 1 << 20;
/// The checksums member's cap.
pub const CHECKSUMS_CAP: u64 = 64 << 10;

/// Every member name an archive may hold, with its size cap (the bytes in the tar, for a
/// sparse member its data) and, for the disk, the cap of its logical size.
pub const MEMBERS: [(&str, u64); 11] = [
    (MANIFEST, MANIFEST_CAP),
    ("state/env", 64 << 10),
    ("state/provision.vars", 64 << 10),
    ("state/token", 4 << 10),
    ("state/fireclaw.json", 256 << 10),
    ("state/ssh_host_ed25519_key", 16 << 10),
    ("state/ssh_host_ed25519_key.pub", 4 << 10),
    (DISK, 4 << 40),
    ("boot/vmlinux", 1 << 30),
    ("boot/initrd.img", 2 << 30),
    (CHECKSUMS, CHECKSUMS_CAP),
];
/// Logs travel only with `--with-logs`.
pub const LOG_MEMBERS: [(&str, u64); 2] = [
    ("logs/console.log", 1 << 30),
    ("logs/firecracker.log", 1 << 30),
];
/// The guest's disk, the one sparse member.
pub const DISK: &str = "disk/rootfs.ext4";
/// A disk's logical size cap (a sparse file may be far larger than its data).
pub const DISK_LOGICAL_CAP: u64 = 64 << 40;
/// How many extents a disk's map may list.
pub const EXTENTS_CAP: usize = 1 << 20;

/// Why an archive is refused; each says what was wrong, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive's manifest is not valid JSON of this format: {0}")]
    BadManifest(String),
    #[error(
        "the archive is of format {found}, made by {made_by}; this fireclaw reads format {FORMAT} (upgrade fireclaw on this host)"
    )]
    FutureFormat { found: u32, made_by: String },
    #[error("the archive lists the member '{0}', which no archive of fireclaw holds")]
    UnknownMember(String),
    #[error("the archive lists the member '{0}' twice")]
    DuplicateMember(String),
    #[error("the archive's member '{name}' declares {size} bytes, over its cap of {cap}")]
    TooLarge { name: String, size: u64, cap: u64 },
    #[error("the archive's member '{0}' is missing")]
    MissingMember(String),
    #[error("the archive's disk map is not valid: {0}")]
    BadMap(String),
    #[error("the archive's checksums are not valid JSON: {0}")]
    BadChecksums(String),
}

/// One member as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    pub name: String,
    /// Bytes of the member in the tar (a sparse member's data).
    pub size: u64,
    /// A sparse member's size once its extents are in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_size: Option<u64>,
    /// A sparse member's data extents, `[offset, length]`, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<[u64; 2]>>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `fireclaw <version>` that wrote it.
    pub made_by: String,
    /// The instance id as it was on the source host.
    pub id: String,
    /// The agent's identity across hosts (`fireclaw.json`'s `uuid`).
    pub uuid: String,
    /// The source host's name, for a person.
    pub source_host: String,
    /// UTC, RFC 3339.
    pub created_at: String,
    /// The members after the manifest, in the order they follow it (the checksums last).
    pub members: Vec<MemberEntry>,
}

impl Manifest {
    /// Parses and checks a manifest: a known format (a later one is named), only allowed
    /// member names, each once, every size within its cap, a disk map that is ordered,
    /// inside its logical size and adds up to the member's size, and the members every
    /// archive needs.
    pub fn parse(bytes: &[u8]) -> Result<Self, ArchiveError> {
        // The format alone first, so a later format is named even if the rest changed shape.
        #[derive(serde::Deserialize)]
        struct Head {
            format: u32,
            #[serde(default)]
            made_by: String,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadManifest(e.to_string()))?;
        if head.format != FORMAT {
            return Err(ArchiveError::FutureFormat {
                found: head.format,
                made_by: crate::instance::values::escaped(&head.made_by),
            });
        }
        let manifest: Self =
            serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadManifest(e.to_string()))?;
        let mut seen = BTreeSet::new();
        for member in &manifest.members {
            let Some(cap) = cap_of(&member.name) else {
                return Err(ArchiveError::UnknownMember(
                    crate::instance::values::escaped(&member.name),
                ));
            };
            if member.name == MANIFEST || !seen.insert(member.name.clone()) {
                return Err(ArchiveError::DuplicateMember(member.name.clone()));
            }
            if member.size > cap {
                return Err(ArchiveError::TooLarge {
                    name: member.name.clone(),
                    size: member.size,
                    cap,
                });
            }
            check_map(member)?;
        }
        for needed in [
            "state/env",
            "state/provision.vars",
            "state/token",
            "state/fireclaw.json",
            "state/ssh_host_ed25519_key",
            "state/ssh_host_ed25519_key.pub",
            DISK,
            "boot/vmlinux",
            CHECKSUMS,
        ] {
            if !seen.contains(needed) {
                return Err(ArchiveError::MissingMember(needed.to_owned()));
            }
        }
        if manifest.members.last().map(|m| m.name.as_str()) != Some(CHECKSUMS) {
            return Err(ArchiveError::BadManifest(format!(
                "{CHECKSUMS} must be the last member"
            )));
        }
        Ok(manifest)
    }

    pub fn render(&self) -> Vec<u8> {
        // Plain data: serialising cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn member(&self, name: &str) -> Option<&MemberEntry> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Bytes the members need on disk once unpacked (a sparse disk: its data).
    pub fn unpacked_bytes(&self) -> u64 {
        self.members.iter().map(|m| m.size).sum()
    }
}

/// The size cap of an allowed member name, or `None` for a name no archive holds.
pub fn cap_of(name: &str) -> Option<u64> {
    MEMBERS
        .iter()
        .chain(LOG_MEMBERS.iter())
        .find(|(allowed, _)| *allowed == name)
        .map(|(_, cap)| *cap)
}

/// Only the disk is sparse; its extents are ordered, do not overlap, lie inside its logical
/// size and add up to the member's size.
fn check_map(member: &MemberEntry) -> Result<(), ArchiveError> {
    let bad = |what: String| ArchiveError::BadMap(what);
    match (&member.extents, member.logical_size, member.name == DISK) {
        (None, None, false) => Ok(()),
        (Some(extents), Some(logical), true) => {
            if logical > DISK_LOGICAL_CAP {
                return Err(ArchiveError::TooLarge {
                    name: format!("{} (logical size)", member.name),
                    size: logical,
                    cap: DISK_LOGICAL_CAP,
                });
            }
            if extents.len() > EXTENTS_CAP {
                return Err(bad(format!(
                    "{} extents, over {EXTENTS_CAP}",
                    extents.len()
                )));
            }
            let mut end = 0u64;
            let mut total = 0u64;
            for [offset, length] in extents {
                if *offset < end || *length == 0 {
                    return Err(bad("extents out of order, overlapping or empty".into()));
                }
                end = offset
                    .checked_add(*length)
                    .filter(|e| *e <= logical)
                    .ok_or_else(|| bad("an extent ends past the disk's size".into()))?;
                total = total.saturating_add(*length);
            }
            if total != member.size {
                return Err(bad(format!(
                    "the extents hold {total} bytes, the member {}",
                    member.size
                )));
            }
            Ok(())
        }
        _ => Err(bad(format!(
            "only {DISK} is sparse, and it must have a map and a logical size"
        ))),
    }
}

/// The prefix a sparse member's digest starts with: its map, one extent a line.
pub fn map_digest_prefix(extents: &[[u64; 2]], logical_size: u64) -> Vec<u8> {
    let mut text = format!("size {logical_size}\n");
    for [offset, length] in extents {
        text.push_str(&format!("extent {offset} {length}\n"));
    }
    text.into_bytes()
}

/// `checksums.json`: the SHA-256 (lower-case hex) of every member before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checksums {
    pub sha256: BTreeMap<String, String>,
}

impl Checksums {
    pub fn parse(bytes: &[u8]) -> Result<Self, ArchiveError> {
        serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadChecksums(e.to_string()))
    }

    pub fn render(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// `<id>-<UTC time>.fireclaw`, the time without colons (a plain file name everywhere).
pub fn backup_file_name(id: &str, rfc3339: &str) -> String {
    format!("{id}-{}{SUFFIX}", rfc3339.replace(':', ""))
}

/// Whether `name` is a backup of `id` as `backup_file_name` names them.
pub fn is_backup_of(name: &str, id: &str) -> bool {
    name.strip_prefix(id)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_suffix(SUFFIX))
        .is_some_and(|stamp| {
            stamp.len() == 18
                && stamp.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && stamp.ends_with('Z')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, size: u64) -> MemberEntry {
        MemberEntry {
            name: name.into(),
            size,
            logical_size: None,
            extents: None,
        }
    }

    fn manifest(members: Vec<MemberEntry>) -> Manifest {
        Manifest {
            format: FORMAT,
            made_by: "fireclaw 0.3.0".into(),
            id: "bot".into(),
            uuid: "0b7c4c1e-8a3e-4f9a-9d8e-3c2b1a0f9e8d".into(),
            source_host: "old-host".into(),
            created_at: "2026-12-07T12:00:00Z".into(),
            members,
        }
    }

    fn whole() -> Vec<MemberEntry> {
        let mut disk = member(DISK, 3072);
        disk.logical_size = Some(8 << 30);
        disk.extents = Some(vec![[0, 1024], [1 << 20, 2048]]);
        vec![
            member("state/env", 300),
            member("state/provision.vars", 200),
            member("state/token", 65),
            member("state/fireclaw.json", 100),
            member("state/ssh_host_ed25519_key", 400),
            member("state/ssh_host_ed25519_key.pub", 90),
            disk,
            member("boot/vmlinux", 40 << 20),
            member(CHECKSUMS, 900),
        ]
    }

    #[test]
    fn a_whole_manifest_round_trips_and_counts_the_disk_by_its_data() {
        let manifest = manifest(whole());
        let parsed = Manifest::parse(&manifest.render()).unwrap();
        assert_eq!(parsed, manifest);
        assert_eq!(
            parsed.unpacked_bytes(),
            300 + 200 + 65 + 100 + 400 + 90 + 3072 + (40 << 20) + 900
        );
    }

    #[test]
    fn every_hostile_manifest_is_refused_in_one_line() {
        let refuse = |members: Vec<MemberEntry>| Manifest::parse(&manifest(members).render());
        let with = |extra: MemberEntry| {
            let mut members = whole();
            members.insert(0, extra);
            members
        };
        for name in [
            "../../etc/cron.d/x",
            "/etc/passwd",
            "state/../../x",
            "state/env/",
            "disk/other.ext4",
        ] {
            assert_eq!(
                refuse(with(member(name, 1))),
                Err(ArchiveError::UnknownMember(name.into()))
            );
        }
        assert_eq!(
            refuse(with(member("state/env", 1))),
            Err(ArchiveError::DuplicateMember("state/env".into()))
        );
        assert_eq!(
            refuse(with(member(MANIFEST, 1))),
            Err(ArchiveError::DuplicateMember(MANIFEST.into()))
        );
        assert!(matches!(
            refuse(with(member("logs/console.log", 2 << 30))),
            Err(ArchiveError::TooLarge { .. })
        ));
        // The disk's map: past its end, overlapping, not adding up, or on another member.
        for extents in [
            vec![[0, 1024], [(8 << 30) - 100, 2048]],
            vec![[0, 2048], [1024, 1024]],
            vec![[0, 1024]],
        ] {
            let mut members = whole();
            members[6].extents = Some(extents);
            assert!(matches!(refuse(members), Err(ArchiveError::BadMap(_))));
        }
        let mut members = whole();
        members[0].extents = Some(vec![[0, 300]]);
        members[0].logical_size = Some(300);
        assert!(matches!(refuse(members), Err(ArchiveError::BadMap(_))));
        let mut members = whole();
        members[6].logical_size = Some(DISK_LOGICAL_CAP + 1);
        assert!(matches!(
            refuse(members),
            Err(ArchiveError::TooLarge { .. })
        ));
        // A member every archive needs.
        let mut members = whole();
        members.retain(|m| m.name != "state/token");
        assert_eq!(
            refuse(members),
            Err(ArchiveError::MissingMember("state/token".into()))
        );
        // A later format is named, whatever else it holds.
        assert_eq!(
            Manifest::parse(br#"{"format": 2, "made_by": "fireclaw 9.0.0", "disks": []}"#),
            Err(ArchiveError::FutureFormat {
                found: 2,
                made_by: "fireclaw 9.0.0".into()
            })
        );
        assert!(matches!(
            Manifest::parse(b"\x28\xb5\x2f\xfd garbage"),
            Err(ArchiveError::BadManifest(_))
        ));
    }

    #[test]
    fn backup_names_carry_the_id_and_the_time() {
        let name = backup_file_name("my-bot", "2026-12-07T03:00:00Z");
        assert_eq!(name, "my-bot-2026-12-07T030000Z.fireclaw");
        assert!(is_backup_of(&name, "my-bot"));
        // Another instance whose id starts the same is not this one's.
        assert!(!is_backup_of(&name, "my"));
        assert!(!is_backup_of("my-bot-notes.fireclaw", "my-bot"));
    }
}
