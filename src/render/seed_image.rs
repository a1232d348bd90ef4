//! The NoCloud seed image: an ISO 9660 volume labelled `cidata` holding a few small files in
//! its root, with Rock Ridge names (what Linux and cloud-init read) and a Joliet tree, the shape
//! `cloud-localds` produces through `genisoimage -volid cidata -joliet -rock`. Pure: the same
//! files and timestamp always give the same bytes.
//!
//! Layout, in 2048-byte sectors: 0–15 system area, 16 primary descriptor, 17 Joliet descriptor,
//! 18 terminator, 19–22 path tables (primary L/M, Joliet L/M), 23 primary root directory,
//! 24 Joliet root directory, 25 Rock Ridge continuation area (the `ER` entry), then file data.

use crate::instance::calendar::{Civil, civil_utc};

const SECTOR: usize = 2048;
const PRIMARY_DESCRIPTOR: usize = 16;
const JOLIET_DESCRIPTOR: usize = 17;
const TERMINATOR: usize = 18;
const PATH_TABLES: [usize; 4] = [19, 20, 21, 22];
const PRIMARY_ROOT: usize = 23;
const JOLIET_ROOT: usize = 24;
const CONTINUATION: usize = 25;
const FIRST_DATA: usize = 26;

const PATH_TABLE_LEN: u32 = 10;

const RRIP_ID: &[u8] = b"RRIP_1991A";
const RRIP_DESCRIPTOR: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RRIP_SOURCE: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

/// One file in the root of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    /// The Rock Ridge and Joliet name, e.g. `user-data`: `[a-z0-9._-]`, at most 64 bytes.
    pub name: String,
    pub contents: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedImageError {
    #[error("seed file name '{0}' must be 1–64 characters of a-z, 0-9, '.', '_' and '-'")]
    BadName(String),
    #[error("seed file names '{0}' collide in the 8.3 ISO 9660 namespace")]
    DuplicateName(String),
    #[error("seed volume label must be 1–16 characters of A-Z, a-z, 0-9 and '_'")]
    BadLabel,
    #[error("seed file '{0}' is larger than 4 GiB")]
    TooLarge(String),
}

/// A point in time, seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current time (the epoch if the clock is before it).
    pub fn now() -> Self {
        Self(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }

    fn civil(self) -> Civil {
        civil_utc(self.0)
    }

    /// The 7-byte directory record date (years since 1900, UTC).
    fn record_date(self) -> [u8; 7] {
        let c = self.civil();
        let years = c.year.saturating_sub(1900).min(255) as u8;
        [years, c.month, c.day, c.hour, c.minute, c.second, 0]
    }

    /// The 17-byte volume descriptor date: `YYYYMMDDHHMMSScc` and a zero UTC offset.
    fn descriptor_date(self) -> [u8; 17] {
        let c = self.civil();
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            c.year.min(9999),
            c.month,
            c.day,
            c.hour,
            c.minute,
            c.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(text.as_bytes());
        out
    }
}

const UNSET_DATE: [u8; 17] = *b"0000000000000000\0";

fn both16(value: u16) -> [u8; 4] {
    let [a, b] = value.to_le_bytes();
    [a, b, b, a]
}

fn both32(value: u32) -> [u8; 8] {
    let le = value.to_le_bytes();
    let be = value.to_be_bytes();
    [le[0], le[1], le[2], le[3], be[0], be[1], be[2], be[3]]
}

fn put(buffer: &mut [u8], offset: usize, bytes: &[u8]) {
    buffer[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// `text` in a fixed-width field padded with spaces.
fn padded_ascii(text: &str, width: usize) -> Vec<u8> {
    let mut out = vec![b' '; width];
    let bytes = text.as_bytes();
    out[..bytes.len().min(width)].copy_from_slice(&bytes[..bytes.len().min(width)]);
    out
}

/// `text` as UCS-2 big-endian in a fixed-width field padded with UCS-2 spaces (Joliet).
fn padded_ucs2(text: &str, width: usize) -> Vec<u8> {
    let mut out: Vec<u8> = std::iter::repeat_n([0u8, b' '], width / 2)
        .flatten()
        .collect();
    for (i, unit) in text.encode_utf16().take(width / 2).enumerate() {
        put(&mut out, i * 2, &unit.to_be_bytes());
    }
    out
}

fn ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn sectors_for(length: usize) -> usize {
    length.div_ceil(SECTOR).max(1)
}

/// The 8.3 d-character identifier of a file in the primary tree, e.g. `USER_DAT.;1`.
fn primary_identifier(name: &str) -> String {
    let (stem, extension) = match name.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => (stem, extension),
        _ => (name, ""),
    };
    let clean = |part: &str, limit: usize| -> String {
        part.chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' => c.to_ascii_uppercase(),
                _ => '_',
            })
            .take(limit)
            .collect()
    };
    format!("{}.{};1", clean(stem, 8), clean(extension, 3))
}

struct Entry<'a> {
    file: &'a SeedFile,
    extent: u32,
    primary_name: String,
    joliet_name: Vec<u8>,
}

/// SUSP/RRIP entries.
fn susp_sp() -> Vec<u8> {
    vec![b'S', b'P', 7, 1, 0xBE, 0xEF, 0]
}

fn susp_ce(block: u32, offset: u32, length: u32) -> Vec<u8> {
    let mut out = vec![b'C', b'E', 28, 1];
    out.extend(both32(block));
    out.extend(both32(offset));
    out.extend(both32(length));
    out
}

fn susp_er() -> Vec<u8> {
    let length = 8 + RRIP_ID.len() + RRIP_DESCRIPTOR.len() + RRIP_SOURCE.len();
    let mut out = vec![
        b'E',
        b'R',
        length as u8,
        1,
        RRIP_ID.len() as u8,
        RRIP_DESCRIPTOR.len() as u8,
        RRIP_SOURCE.len() as u8,
        1,
    ];
    out.extend(RRIP_ID);
    out.extend(RRIP_DESCRIPTOR);
    out.extend(RRIP_SOURCE);
    out
}

/// `RR`: which RRIP 1.09 entries follow (PX, NM, TF).
fn rrip_rr(with_name: bool) -> Vec<u8> {
    let flags = 0x01 | 0x80 | if with_name { 0x08 } else { 0 };
    vec![b'R', b'R', 5, 1, flags]
}

/// `PX` in its RRIP 1.09 form (mode, links, uid, gid), as genisoimage writes it.
fn rrip_px(mode: u32, links: u32) -> Vec<u8> {
    let mut out = vec![b'P', b'X', 36, 1];
    out.extend(both32(mode));
    out.extend(both32(links));
    out.extend(both32(0));
    out.extend(both32(0));
    out
}

fn rrip_tf(time: Timestamp) -> Vec<u8> {
    // Modify, access and attribute-change times.
    let mut out = vec![b'T', b'F', 5 + 3 * 7, 1, 0x0E];
    for _ in 0..3 {
        out.extend(time.record_date());
    }
    out
}

fn rrip_nm(name: &str) -> Vec<u8> {
    let mut out = vec![b'N', b'M', (5 + name.len()) as u8, 1, 0];
    out.extend(name.as_bytes());
    out
}

fn directory_record(
    extent: u32,
    size: u32,
    is_directory: bool,
    identifier: &[u8],
    system_use: &[u8],
    time: Timestamp,
) -> Vec<u8> {
    let padding = usize::from(identifier.len().is_multiple_of(2));
    let mut length = 33 + identifier.len() + padding + system_use.len();
    length += length % 2;
    let mut out = vec![0u8; length];
    out[0] = length as u8;
    put(&mut out, 2, &both32(extent));
    put(&mut out, 10, &both32(size));
    put(&mut out, 18, &time.record_date());
    out[25] = if is_directory { 0x02 } else { 0x00 };
    put(&mut out, 28, &both16(1));
    out[32] = identifier.len() as u8;
    put(&mut out, 33, identifier);
    put(&mut out, 33 + identifier.len() + padding, system_use);
    out
}

struct Descriptor<'a> {
    kind: u8,
    system_id: Vec<u8>,
    volume_id: Vec<u8>,
    text_field: &'a dyn Fn(&str, usize) -> Vec<u8>,
    escape: Option<&'static [u8]>,
    path_table_l: u32,
    path_table_m: u32,
    root: u32,
}

fn volume_descriptor(d: &Descriptor<'_>, total_sectors: u32, time: Timestamp) -> [u8; SECTOR] {
    let mut out = [0u8; SECTOR];
    out[0] = d.kind;
    put(&mut out, 1, b"CD001");
    out[6] = 1;
    put(&mut out, 8, &d.system_id);
    put(&mut out, 40, &d.volume_id);
    put(&mut out, 80, &both32(total_sectors));
    if let Some(escape) = d.escape {
        put(&mut out, 88, escape);
    }
    put(&mut out, 120, &both16(1));
    put(&mut out, 124, &both16(1));
    put(&mut out, 128, &both16(SECTOR as u16));
    put(&mut out, 132, &both32(PATH_TABLE_LEN));
    put(&mut out, 140, &d.path_table_l.to_le_bytes());
    put(&mut out, 148, &d.path_table_m.to_be_bytes());
    put(
        &mut out,
        156,
        &directory_record(d.root, SECTOR as u32, true, &[0], &[], time),
    );
    put(&mut out, 190, &(d.text_field)("", 128));
    put(&mut out, 318, &(d.text_field)("", 128));
    put(&mut out, 446, &(d.text_field)("", 128));
    put(&mut out, 574, &(d.text_field)("FIRECLAW", 128));
    put(&mut out, 702, &(d.text_field)("", 37));
    put(&mut out, 739, &(d.text_field)("", 37));
    put(&mut out, 776, &(d.text_field)("", 37));
    put(&mut out, 813, &time.descriptor_date());
    put(&mut out, 830, &time.descriptor_date());
    put(&mut out, 847, &UNSET_DATE);
    put(&mut out, 864, &UNSET_DATE);
    out[881] = 1;
    out
}

fn path_table(root: u32, big_endian: bool) -> [u8; SECTOR] {
    let mut out = [0u8; SECTOR];
    out[0] = 1;
    if big_endian {
        put(&mut out, 2, &root.to_be_bytes());
        put(&mut out, 6, &1u16.to_be_bytes());
    } else {
        put(&mut out, 2, &root.to_le_bytes());
        put(&mut out, 6, &1u16.to_le_bytes());
    }
    out
}

fn validate(label: &str, files: &[SeedFile]) -> Result<(), SeedImageError> {
    let label_ok = !label.is_empty()
        && label.len() <= 16
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !label_ok {
        return Err(SeedImageError::BadLabel);
    }
    let mut seen = std::collections::BTreeSet::new();
    for file in files {
        let ok = !file.name.is_empty()
            && file.name.len() <= 64
            && file
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !ok {
            return Err(SeedImageError::BadName(file.name.clone()));
        }
        if !seen.insert(primary_identifier(&file.name)) {
            return Err(SeedImageError::DuplicateName(file.name.clone()));
        }
        if u32::try_from(file.contents.len()).is_err() {
            return Err(SeedImageError::TooLarge(file.name.clone()));
        }
    }
    Ok(())
}

/// Builds the image.
pub fn seed_image(
    label: &str,
    files: &[SeedFile],
    time: Timestamp,
) -> Result<Vec<u8>, SeedImageError> {
    validate(label, files)?;
    let (entries, total_sectors) = place_files(files);
    let mut image = vec![0u8; total_sectors * SECTOR];
    write_descriptors(&mut image, label, total_sectors, time);
    write_path_tables(&mut image);
    // The ER entry is too long for the root's "." record, so it lives in a continuation area.
    let er = susp_er();
    put(&mut image, CONTINUATION * SECTOR, &er);
    put(
        &mut image,
        PRIMARY_ROOT * SECTOR,
        &primary_root(&entries, er.len(), time),
    );
    put(
        &mut image,
        JOLIET_ROOT * SECTOR,
        &joliet_root(&entries, time),
    );
    for entry in &entries {
        put(
            &mut image,
            entry.extent as usize * SECTOR,
            &entry.file.contents,
        );
    }
    Ok(image)
}

/// Each file's extent (files follow the fixed metadata sectors in order) and both of its
/// names; returns the entries and the image's size in sectors.
fn place_files(files: &[SeedFile]) -> (Vec<Entry<'_>>, usize) {
    let mut entries = Vec::new();
    let mut next = FIRST_DATA;
    for file in files {
        entries.push(Entry {
            file,
            extent: next as u32,
            primary_name: primary_identifier(&file.name),
            // Joliet names carry no ";1" version, as genisoimage writes them.
            joliet_name: ucs2(&file.name),
        });
        next += sectors_for(file.contents.len());
    }
    (entries, next)
}

/// The primary and Joliet volume descriptors and the set terminator.
fn write_descriptors(image: &mut [u8], label: &str, total_sectors: usize, time: Timestamp) {
    let ascii = |text: &str, width: usize| padded_ascii(text, width);
    let joliet = |text: &str, width: usize| padded_ucs2(text, width);
    let descriptors = [
        (
            PRIMARY_DESCRIPTOR,
            Descriptor {
                kind: 1,
                system_id: padded_ascii("LINUX", 32),
                volume_id: padded_ascii(label, 32),
                text_field: &ascii,
                escape: None,
                path_table_l: PATH_TABLES[0] as u32,
                path_table_m: PATH_TABLES[1] as u32,
                root: PRIMARY_ROOT as u32,
            },
        ),
        (
            JOLIET_DESCRIPTOR,
            Descriptor {
                kind: 2,
                system_id: padded_ucs2("LINUX", 32),
                volume_id: padded_ucs2(label, 32),
                text_field: &joliet,
                // UCS-2 level 3.
                escape: Some(b"%/E"),
                path_table_l: PATH_TABLES[2] as u32,
                path_table_m: PATH_TABLES[3] as u32,
                root: JOLIET_ROOT as u32,
            },
        ),
    ];
    for (at, descriptor) in &descriptors {
        put(
            image,
            at * SECTOR,
            &volume_descriptor(descriptor, total_sectors as u32, time),
        );
    }
    let mut terminator = [0u8; 7];
    terminator[0] = 255;
    put(&mut terminator, 1, b"CD001");
    terminator[6] = 1;
    put(image, TERMINATOR * SECTOR, &terminator);
}

/// Little- and big-endian path tables of both trees (each holds only the root).
fn write_path_tables(image: &mut [u8]) {
    for (at, root, big_endian) in [
        (PATH_TABLES[0], PRIMARY_ROOT, false),
        (PATH_TABLES[1], PRIMARY_ROOT, true),
        (PATH_TABLES[2], JOLIET_ROOT, false),
        (PATH_TABLES[3], JOLIET_ROOT, true),
    ] {
        put(image, at * SECTOR, &path_table(root as u32, big_endian));
    }
}

/// The primary root directory: "." (announcing Rock Ridge, with the ER entry continued in
/// its own sector), "..", then each file with its Rock Ridge name, mode and times, sorted by
/// identifier (ECMA-119 9.3).
fn primary_root(entries: &[Entry<'_>], er_len: usize, time: Timestamp) -> Vec<u8> {
    let mut directory = Vec::new();
    let mut dot_use = susp_sp();
    dot_use.extend(rrip_rr(false));
    dot_use.extend(susp_ce(CONTINUATION as u32, 0, er_len as u32));
    dot_use.extend(rrip_px(0o040_555, 2));
    dot_use.extend(rrip_tf(time));
    let mut dotdot_use = rrip_rr(false);
    dotdot_use.extend(rrip_px(0o040_555, 2));
    dotdot_use.extend(rrip_tf(time));
    for (name, system_use) in [(0u8, dot_use), (1u8, dotdot_use)] {
        directory.extend(directory_record(
            PRIMARY_ROOT as u32,
            SECTOR as u32,
            true,
            &[name],
            &system_use,
            time,
        ));
    }
    let mut sorted: Vec<&Entry<'_>> = entries.iter().collect();
    sorted.sort_by(|a, b| a.primary_name.cmp(&b.primary_name));
    for entry in sorted {
        let mut system_use = rrip_rr(true);
        system_use.extend(rrip_px(0o100_444, 1));
        system_use.extend(rrip_tf(time));
        system_use.extend(rrip_nm(&entry.file.name));
        directory.extend(directory_record(
            entry.extent,
            entry.file.contents.len() as u32,
            false,
            entry.primary_name.as_bytes(),
            &system_use,
            time,
        ));
    }
    directory
}

/// The Joliet root directory: ".", "..", then each file under its UCS-2 name, sorted.
fn joliet_root(entries: &[Entry<'_>], time: Timestamp) -> Vec<u8> {
    let mut directory = Vec::new();
    for name in [0u8, 1u8] {
        directory.extend(directory_record(
            JOLIET_ROOT as u32,
            SECTOR as u32,
            true,
            &[name],
            &[],
            time,
        ));
    }
    let mut sorted: Vec<&Entry<'_>> = entries.iter().collect();
    sorted.sort_by(|a, b| a.joliet_name.cmp(&b.joliet_name));
    for entry in sorted {
        directory.extend(directory_record(
            entry.extent,
            entry.file.contents.len() as u32,
            false,
            &entry.joliet_name,
            &[],
            time,
        ));
    }
    directory
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    fn files() -> Vec<SeedFile> {
        vec![
            SeedFile {
                name: "user-data".into(),
                contents: b"#cloud-config\n".to_vec(),
            },
            SeedFile {
                name: "meta-data".into(),
                contents: b"instance-id: \"a\"\n".to_vec(),
            },
            SeedFile {
                name: "network-config".into(),
                contents: b"version: 2\n".to_vec(),
            },
        ]
    }

    /// A hexdump of the image without all-zero rows: readable, and any changed byte shows.
    fn dump(image: &[u8]) -> String {
        let mut out = format!("{} bytes\n", image.len());
        for (row, chunk) in image.chunks(16).enumerate() {
            if chunk.iter().all(|b| *b == 0) {
                continue;
            }
            let _ = write!(out, "{:06x}:", row * 16);
            for b in chunk {
                let _ = write!(out, " {b:02x}");
            }
            out.push_str("  ");
            out.extend(chunk.iter().map(|b| {
                if b.is_ascii_graphic() || *b == b' ' {
                    *b as char
                } else {
                    '.'
                }
            }));
            out.push('\n');
        }
        out
    }

    #[test]
    fn seed_image_snapshot() {
        let image = seed_image("cidata", &files(), Timestamp(1_700_000_000)).unwrap();
        insta::assert_snapshot!(dump(&image));
    }

    #[test]
    fn image_is_deterministic_and_sector_aligned() {
        let a = seed_image("cidata", &files(), Timestamp(0)).unwrap();
        let b = seed_image("cidata", &files(), Timestamp(0)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), (FIRST_DATA + 3) * SECTOR);
        assert_eq!(&a[sector_of(16) + 1..sector_of(16) + 6], b"CD001");
        assert_eq!(&a[sector_of(16) + 40..sector_of(16) + 46], b"cidata");
    }

    fn sector_of(n: usize) -> usize {
        n * SECTOR
    }

    #[test]
    fn dates_are_encoded_in_utc() {
        let t = Timestamp(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!(&t.descriptor_date()[..16], b"2023111422132000");
        assert_eq!(t.record_date(), [123, 11, 14, 22, 13, 20, 0]);
        assert_eq!(&Timestamp(951_782_400).descriptor_date()[..8], b"20000229");
    }

    #[test]
    fn primary_names_are_8_3_d_characters() {
        assert_eq!(primary_identifier("user-data"), "USER_DAT.;1");
        assert_eq!(primary_identifier("network-config"), "NETWORK_.;1");
        assert_eq!(primary_identifier("vendor.data.json"), "VENDOR_D.JSO;1");
    }

    #[test]
    fn bad_names_and_labels_are_refused() {
        let mut bad = files();
        bad[0].name = "User Data".into();
        assert!(matches!(
            seed_image("cidata", &bad, Timestamp(0)),
            Err(SeedImageError::BadName(_))
        ));
        let mut clash = files();
        clash[1].name = "user-data2".into();
        assert!(matches!(
            seed_image("cidata", &clash, Timestamp(0)),
            Err(SeedImageError::DuplicateName(_))
        ));
        assert_eq!(
            seed_image("ci data", &files(), Timestamp(0)),
            Err(SeedImageError::BadLabel)
        );
    }
}
