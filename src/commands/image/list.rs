//! `fireclaw image list`: each base image in the images directory with what the manifest says
//! about it (source, version, digest, how it was verified, when), files fetched by other means,
//! and records whose file is gone or has changed size.

use std::path::Path;

use anyhow::Result;

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

#[derive(Debug, serde::Serialize)]
struct ListView {
    schema: u32,
    dir: String,
    manifest: bool,
    images: Vec<ImageView>,
}

fn gather(dir: &Path) -> Result<ListView> {
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
    Ok(ListView {
        schema: 1,
        dir: dir.display().to_string(),
        manifest: has_manifest,
        images,
    })
}

fn render(view: &ListView) -> String {
    let mut out = String::new();
    if view.images.is_empty() {
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
            (None, Some(size)) => {
                format!("{size}, not in {MANIFEST_FILE} (not fetched by fireclaw)")
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
        std::fs::write(dir.path().join(KERNEL_FILE), b"elf64").unwrap();
        let view = gather(dir.path()).unwrap();
        assert!(render(&view).contains("CHANGED since"));
        assert!(!view.images[0].matches_record);
    }
}
