//! `fireclaw image list`: each base image in the images directory with what the manifest says
//! about it (source, version, digest, how it was verified, when), files fetched by other means,
//! and records whose file is gone or has changed size; then each baked image (`image bake`)
//! with its base, OpenClaw image and digest, Docker version, browser, size and age.

use std::path::Path;

use anyhow::Result;

use crate::instance::baked::BakedRecord;
use crate::instance::images::{ImageManifest, ImageRecord, MANIFEST_FILE, human_bytes};
use crate::instance::layout::{INITRD_FILE, KERNEL_FILE, ROOTFS_FILE};
use crate::instance::values::escaped;
use crate::output::Output;

/// One file as `image list --json` shows it. Stable schema, version 1.
#[derive(Debug, serde::Serialize)]
struct ImageView {
    file: String,
    present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// `null` when the manifest has no record of the file.
    record: Option<ImageRecord>,
    /// Present, recorded, and of the recorded size (no digest is computed here).
    matches_record: bool,
}

/// One baked image as `image list --json` shows it.
#[derive(Debug, serde::Serialize)]
struct BakedView {
    present: bool,
    /// Present and of the recorded size (no digest is computed here).
    matches_record: bool,
    /// Whole days since the bake; `null` when the record's date does not parse.
    age_days: Option<u64>,
    record: BakedRecord,
}

#[derive(Debug, serde::Serialize)]
struct ListView {
    schema: u32,
    dir: String,
    manifest: bool,
    images: Vec<ImageView>,
    /// Baked images, from `fireclaw-baked.json` (added in schema 1 without a bump: a new key).
    baked: Vec<BakedView>,
}

fn gather(dir: &Path) -> Result<ListView> {
    gather_at(dir, crate::host::snapshot::unix_now_secs())
}

fn gather_at(dir: &Path, now: u64) -> Result<ListView> {
    let manifest = crate::store::read_image_manifest(dir)?;
    let has_manifest = manifest.is_some();
    let manifest = manifest.unwrap_or_else(ImageManifest::default);
    let mut files: Vec<String> = [KERNEL_FILE, ROOTFS_FILE, INITRD_FILE]
        .iter()
        .map(|f| (*f).to_owned())
        .collect();
    for record in &manifest.images {
        if !files.contains(&record.file) {
            files.push(record.file.clone());
        }
    }
    let mut images = Vec::new();
    for file in files {
        let size = std::fs::metadata(dir.join(&file))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let record = manifest.get(&file).cloned();
        if size.is_none() && record.is_none() {
            continue;
        }
        images.push(ImageView {
            matches_record: matches!((&record, size), (Some(r), Some(s)) if r.size == s),
            present: size.is_some(),
            file,
            size,
            record,
        });
    }
    let baked = crate::store::read_baked_manifest(dir)?
        .map(|m| m.images)
        .unwrap_or_default()
        .into_iter()
        .map(|record| {
            let size = std::fs::metadata(dir.join(&record.file))
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            BakedView {
                present: size.is_some(),
                matches_record: size.is_some_and(|s| record.size_matches(s)),
                age_days: record.age_days(now),
                record,
            }
        })
        .collect();
    Ok(ListView {
        schema: 1,
        dir: dir.display().to_string(),
        manifest: has_manifest,
        images,
        baked,
    })
}

fn render(view: &ListView) -> String {
    let mut out = String::new();
    if view.images.is_empty() && view.baked.is_empty() {
        out.push_str(&format!(
            "no images in {} (fetch them with 'fireclaw image fetch')\n",
            view.dir
        ));
        return out;
    }
    out.push_str(&format!("images in {}:\n", view.dir));
    for image in &view.images {
        let size = image.size.map(human_bytes);
        let head = match (&image.record, &size) {
            (None, Some(size)) if image.file == INITRD_FILE => format!(
                "{size}, placed by hand (setup uses it; record it with: fireclaw image fetch --initrd <file>)"
            ),
            (None, Some(size)) => {
                format!("{size}, placed by hand (not recorded in {MANIFEST_FILE})")
            }
            (Some(record), None) => format!("missing (recorded {})", record.fetched_at),
            (Some(record), Some(size)) => {
                let mut parts = vec![size.clone()];
                if let Some(version) = &record.version {
                    parts.push(format!("version {}", escaped(version)));
                }
                parts.push(record.verification.as_str().to_owned());
                parts.push(format!("fetched {}", record.fetched_at));
                if !image.matches_record {
                    parts.push("CHANGED since (size differs from the record)".to_owned());
                }
                parts.join(", ")
            }
            (None, None) => continue,
        };
        out.push_str(&format!("{}: {head}\n", image.file));
        if let Some(record) = &image.record {
            out.push_str(&format!("  source  {}\n", record.source));
            out.push_str(&format!("  sha256  {}\n", record.sha256));
        }
    }
    if !view.baked.is_empty() {
        out.push_str("baked images (fireclaw image bake; use with setup --base-image NAME):\n");
    }
    for baked in &view.baked {
        let record = &baked.record;
        let state = match (baked.present, baked.matches_record) {
            (false, _) => " MISSING".to_owned(),
            (true, false) => " CHANGED since (size differs from the record)".to_owned(),
            (true, true) => String::new(),
        };
        let age = baked
            .age_days
            .map_or_else(|| "age unknown".to_owned(), |d| format!("{d} days old"));
        out.push_str(&format!(
            "{} ({}): {}, {age}, baked {}{state}\n",
            escaped(&record.name),
            record.file,
            human_bytes(record.size),
            record.baked_at
        ));
        out.push_str(&format!(
            "  openclaw {} {}\n",
            escaped(&record.openclaw.reference),
            record
                .openclaw
                .repo_digest
                .as_deref()
                .unwrap_or(&record.openclaw.image_id)
        ));
        out.push_str(&format!(
            "  docker   {}, browser {}\n",
            escaped(&record.docker_version),
            if record.browser { "yes" } else { "no" }
        ));
        out.push_str(&format!(
            "  base     {} ({})\n",
            record.base.path, record.base.sha256
        ));
        out.push_str(&format!("  kernel   {}\n", record.kernel.path));
    }
    out
}

pub fn run(dir: &Path, json: bool, output: &mut Output<'_>) -> Result<()> {
    let view = gather(dir)?;
    if json {
        output.line(&serde_json::to_string_pretty(&view)?);
    } else {
        output.text(&render(&view));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::images::Verification;

    #[test]
    fn the_list_shows_records_unrecorded_files_and_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = ImageManifest::default();
        manifest.record(ImageRecord {
            file: KERNEL_FILE.into(),
            source:
                "https://s3.amazonaws.com/spec.ccfc.min/firecracker-ci/v1.16/x86_64/vmlinux-6.1.141"
                    .into(),
            source_sha256: "a".repeat(64),
            sha256: "a".repeat(64),
            size: 3,
            version: Some("6.1.141".into()),
            fetched_at: "2026-08-07T09:05:03Z".into(),
            verification: Verification::Recorded,
        });
        crate::store::write_image_manifest(dir.path(), &manifest).unwrap();
        std::fs::write(dir.path().join(KERNEL_FILE), b"elf").unwrap();
        std::fs::write(dir.path().join(ROOTFS_FILE), vec![0u8; 2048]).unwrap();
        let view = gather(dir.path()).unwrap();
        let text = render(&view).replace(&view.dir, "[DIR]");
        insta::assert_snapshot!(text);
        assert!(view.baked.is_empty());
        std::fs::write(dir.path().join(KERNEL_FILE), b"elf64").unwrap();
        let view = gather(dir.path()).unwrap();
        assert!(render(&view).contains("CHANGED since"));
        assert!(!view.images[0].matches_record);
    }

    #[test]
    fn the_list_shows_each_baked_image_with_its_contents_and_age() {
        use crate::instance::baked::{BakedManifest, BakedOpenClaw, SourceFile};
        let dir = tempfile::tempdir().unwrap();
        let source = |path: &str| SourceFile {
            path: path.into(),
            sha256: "b".repeat(64),
            size: 2,
        };
        let record = |name: &str, size: u64| BakedRecord {
            name: name.into(),
            file: format!("{name}.ext4"),
            size,
            sha256: "c".repeat(64),
            base: source("/srv/firecracker/base/images/rootfs.ext4"),
            kernel: source("/srv/firecracker/base/images/vmlinux"),
            initrd: None,
            openclaw: BakedOpenClaw {
                reference: "ghcr.io/openclaw/openclaw:2026.9.6".into(),
                image_id: "sha256:1234".into(),
                repo_digest: None,
                archive: Some(source("/srv/openclaw.tar")),
            },
            docker_version: "26.1.5".into(),
            browser: true,
            baked_at: "2026-10-01T12:00:00Z".into(),
            fireclaw_version: "0.3.0".into(),
        };
        let mut manifest = BakedManifest::default();
        manifest.record(record("bots", 4));
        manifest.record(record("changed", 4));
        manifest.record(record("gone", 4));
        crate::store::write_baked_manifest(dir.path(), &manifest).unwrap();
        std::fs::write(dir.path().join("bots.ext4"), b"disk").unwrap();
        std::fs::write(dir.path().join("changed.ext4"), b"larger").unwrap();
        // 2026-12-05T00:00:00Z
        let view = gather_at(dir.path(), 1_796_428_800).unwrap();
        let text = render(&view).replace(&view.dir, "[DIR]");
        insta::assert_snapshot!(text);
        assert_eq!(view.baked[0].age_days, Some(64));
        assert!(view.baked[0].matches_record);
        assert!(!view.baked[1].matches_record);
        assert!(!view.baked[2].present);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json["baked"][0]["record"]["openclaw"]["image_id"],
            "sha256:1234"
        );
    }
}
