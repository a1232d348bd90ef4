//! Inspecting a guest kernel image before it is booted: is it an uncompressed x86_64 ELF
//! vmlinux (not a bzImage, another architecture or garbage), and which of the drivers a
//! Firecracker guest needs are built in. The ELF is parsed by hand and every offset is
//! bounds-checked, so a malformed file is an error, never a panic. Drivers are read from the
//! symbol table when the image has one, otherwise from the strings a built-in driver leaves in
//! the image; a driver built as a module (=m) leaves neither, so it counts as missing unless an
//! initrd loads it.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

/// What a Firecracker guest needs from its kernel, plus ISO 9660, which is informational only
/// now that the rootfs carries the NoCloud seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    VirtioMmio,
    VirtioBlk,
    VirtioNet,
    Ext4,
    SerialConsole,
    Iso9660,
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::VirtioMmio,
        Feature::VirtioBlk,
        Feature::VirtioNet,
        Feature::Ext4,
        Feature::SerialConsole,
        Feature::Iso9660,
    ];

    /// The name a person reads in doctor and setup.
    pub fn name(self) -> &'static str {
        match self {
            Feature::VirtioMmio => "virtio-mmio",
            Feature::VirtioBlk => "virtio-blk",
            Feature::VirtioNet => "virtio-net",
            Feature::Ext4 => "ext4",
            Feature::SerialConsole => "serial console",
            Feature::Iso9660 => "iso9660",
        }
    }

    /// Whether the guest cannot work without it: Firecracker exposes its devices on the
    /// virtio-mmio bus, the rootfs is an ext4 virtio-blk disk, the network a virtio-net NIC,
    /// and the console (which the boot arguments send to ttyS0) the 8250 UART.
    pub fn is_required(self) -> bool {
        self != Feature::Iso9660
    }

    /// Symbols (linux 6.1) that exist in the symbol table only when the driver is built in.
    /// Static symbols count: a vmlinux's `.symtab` keeps local symbols too.
    fn symbols(self) -> &'static [&'static str] {
        match self {
            // drivers/virtio/virtio_mmio.c: the platform driver and its probe.
            Feature::VirtioMmio => &["virtio_mmio_probe", "virtio_mmio_driver"],
            // drivers/block/virtio_blk.c: the probe and the `struct virtio_driver virtio_blk`.
            Feature::VirtioBlk => &["virtblk_probe", "virtio_blk"],
            // drivers/net/virtio_net.c: the probe and `virtio_net_driver`.
            Feature::VirtioNet => &["virtnet_probe", "virtio_net_driver"],
            // fs/ext4/super.c: the registered filesystem type and its fill_super.
            Feature::Ext4 => &["ext4_fs_type", "ext4_fill_super"],
            // drivers/tty/serial/8250/8250_core.c registers `univ8250_console` (ttyS); it and
            // 8250_port.c's console writer exist only with CONFIG_SERIAL_8250_CONSOLE.
            Feature::SerialConsole => &["univ8250_console", "serial8250_console_write"],
            // fs/isofs/inode.c: the registered filesystem type and its fill_super.
            Feature::Iso9660 => &["iso9660_fs_type", "isofs_fill_super"],
        }
    }

    /// Strings (linux 6.1) that a built-in driver leaves in the image and a module leaves only
    /// in its `.ko`. Symbol names are no help here: kallsyms stores them compressed.
    fn strings(self) -> &'static [&'static [u8]] {
        match self {
            // The platform driver's `.driver.name`; with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES
            // (how Firecracker describes its devices) also "virtio-mmio-cmdline".
            Feature::VirtioMmio => &[b"virtio-mmio"],
            // `.driver.name = KBUILD_MODNAME` and the block major's name from
            // `register_blkdev(0, "virtblk")`; the NUL keeps "virtio_blk.h"-like text out.
            Feature::VirtioBlk => &[b"virtio_blk\0", b"virtblk\0"],
            // `.driver.name = KBUILD_MODNAME` of `virtio_net_driver`.
            Feature::VirtioNet => &[b"virtio_net\0"],
            // Every ext4_msg() goes through "%sEXT4-fs (%s): %pV\n" in __ext4_msg().
            Feature::Ext4 => &[b"EXT4-fs ("],
            // The 8250 platform driver's name. The console itself leaves no string of its own
            // ("ttyS" is too short to trust), but CONFIG_SERIAL_8250_CONSOLE requires the 8250
            // driver built in, so a built-in 8250 is the best a stripped image can tell.
            Feature::SerialConsole => &[b"serial8250\0"],
            // isofs's messages all start "ISOFS: " (e.g. "ISOFS: Unable to identify CD-ROM
            // format.").
            Feature::Iso9660 => &[b"ISOFS: "],
        }
    }
}

/// How the drivers were read from the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The `.symtab` and `.strtab` sections.
    Symbols,
    /// The whole file's bytes: the image has no symbol table (a vmlinux extracted from a
    /// distribution's bzImage, say).
    Strings,
}

impl ReadFrom {
    pub fn describe(self) -> &'static str {
        match self {
            ReadFrom::Symbols => "read from its symbol table",
            ReadFrom::Strings => "read from its strings: it has no symbol table",
        }
    }
}

/// What an x86_64 ELF vmlinux carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelReport {
    pub read_from: ReadFrom,
    /// The features found built in, in the order of [`Feature::ALL`].
    present: Vec<Feature>,
}

/// The required features a kernel lacks, and whether that stops the guest booting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingDrivers {
    pub features: Vec<Feature>,
    /// No initrd was given: nothing can load the drivers as modules.
    pub fatal: bool,
    pub read_from: ReadFrom,
}

impl MissingDrivers {
    /// One line: what is missing, why it matters and, when nothing can load them, where an
    /// initrd that does would go (`initrd`: the one setup would use).
    pub fn describe(&self, initrd: &std::path::Path) -> String {
        let names: Vec<&str> = self.features.iter().map(|f| f.name()).collect();
        let consequence = if self.fatal {
            format!(
                "a driver built as a module (=m) is missing unless an initrd loads it: put one that does at {} (fireclaw image fetch --initrd FILE installs it there; setup --base-initrd FILE names another), or use a kernel with these built in (fireclaw image fetch)",
                initrd.display()
            )
        } else {
            "the initrd must load them as modules".to_owned()
        };
        format!(
            "no built-in {} ({}); {consequence}",
            names.join(", "),
            self.read_from.describe()
        )
    }
}

impl KernelReport {
    pub fn has(&self, feature: Feature) -> bool {
        self.present.contains(&feature)
    }

    /// The required features the image lacks, or `None` when it has them all. With an initrd
    /// they are a warning (it may load them as modules); without one, the guest cannot boot.
    pub fn missing_required(&self, with_initrd: bool) -> Option<MissingDrivers> {
        let features: Vec<Feature> = Feature::ALL
            .into_iter()
            .filter(|f| f.is_required() && !self.has(*f))
            .collect();
        (!features.is_empty()).then_some(MissingDrivers {
            features,
            fatal: !with_initrd,
            read_from: self.read_from,
        })
    }
}

/// Why bytes are not a vmlinux the guest can boot. Each message is one line that completes
/// "inspect guest kernel <path>: ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelFormatError {
    #[error("the file is empty; the guest needs an uncompressed x86_64 ELF vmlinux")]
    Empty,
    #[error(
        "it is a compressed bzImage (vmlinuz), not an uncompressed vmlinux; extract one with the kernel tree's scripts/extract-vmlinux, or download Firecracker's CI kernel with: fireclaw image fetch"
    )]
    BzImage,
    #[error("it is not an ELF file; the guest needs an uncompressed x86_64 ELF vmlinux")]
    NotElf,
    #[error(
        "it is not a Linux kernel image: an x86_64 ELF with no Linux version string and no kernel entry (start_kernel); the guest needs a vmlinux, e.g. from: fireclaw image fetch"
    )]
    NotKernel,
    #[error("it is a 32-bit ELF; the guest needs a 64-bit x86_64 vmlinux")]
    Elf32,
    #[error("it is a big-endian ELF; the guest needs a little-endian x86_64 vmlinux")]
    BigEndian,
    #[error("it is an ELF for {arch} (e_machine {machine}), not x86_64")]
    WrongArch { arch: &'static str, machine: u16 },
    #[error("it is truncated: its {what} ends past the end of the file ({size} bytes)")]
    Truncated { what: &'static str, size: usize },
    #[error("its ELF headers are corrupt: {what}")]
    Corrupt { what: &'static str },
}

/// Reading or inspecting a kernel file failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("read guest kernel {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("inspect guest kernel {path}")]
    Format {
        path: PathBuf,
        #[source]
        source: KernelFormatError,
    },
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ELFDATA2MSB: u8 = 2;
const EM_X86_64: u16 = 62;
const ELF64_HEADER: usize = 64;
const SECTION_HEADER: usize = 64;
const SYMBOL: usize = 24;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;

/// Reads and inspects the kernel at `path`.
pub fn inspect_file(path: &Path) -> Result<KernelReport, KernelError> {
    let bytes = std::fs::read(path).map_err(|source| KernelError::Read {
        path: path.to_owned(),
        source,
    })?;
    inspect(&bytes).map_err(|source| KernelError::Format {
        path: path.to_owned(),
        source,
    })
}

/// Whether `bytes` are an x86_64 ELF vmlinux, and which features it has built in.
pub fn inspect(bytes: &[u8]) -> Result<KernelReport, KernelFormatError> {
    check_header(bytes)?;
    let names = symbol_names(bytes)?;
    // Any x86_64 program is an ELF like this; a kernel also carries its banner (linux_banner,
    // "Linux version ...") or, when it has a symbol table, its entry.
    let has_entry = names
        .as_ref()
        .is_some_and(|n| n.contains(b"start_kernel".as_slice()));
    if !has_entry && !contains(bytes, LINUX_BANNER) {
        return Err(KernelFormatError::NotKernel);
    }
    let (read_from, present) = match names {
        Some(names) => (
            ReadFrom::Symbols,
            Feature::ALL
                .into_iter()
                .filter(|f| f.symbols().iter().any(|s| names.contains(s.as_bytes())))
                .collect(),
        ),
        None => (ReadFrom::Strings, strings_present(bytes)),
    };
    Ok(KernelReport { read_from, present })
}

/// The boot protocol's signature: the boot sector's 0x55AA at 0x1FE and "HdrS" at 0x202.
fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(0x1FE..0x200) == Some(&[0x55, 0xAA][..]) && bytes.get(0x202..0x206) == Some(b"HdrS")
}

fn check_header(bytes: &[u8]) -> Result<(), KernelFormatError> {
    if bytes.is_empty() {
        return Err(KernelFormatError::Empty);
    }
    if is_bzimage(bytes) {
        return Err(KernelFormatError::BzImage);
    }
    let truncated = |what| KernelFormatError::Truncated {
        what,
        size: bytes.len(),
    };
    if bytes.len() < ELF_MAGIC.len() {
        return Err(if ELF_MAGIC.starts_with(bytes) {
            truncated("ELF header")
        } else {
            KernelFormatError::NotElf
        });
    }
    if !bytes.starts_with(ELF_MAGIC) {
        return Err(KernelFormatError::NotElf);
    }
    let (Some(&class), Some(&data)) = (bytes.get(4), bytes.get(5)) else {
        return Err(truncated("ELF header"));
    };
    match class {
        ELFCLASS64 => {}
        ELFCLASS32 => return Err(KernelFormatError::Elf32),
        _ => {
            return Err(KernelFormatError::Corrupt {
                what: "unknown ELF class",
            });
        }
    }
    match data {
        ELFDATA2LSB => {}
        ELFDATA2MSB => return Err(KernelFormatError::BigEndian),
        _ => {
            return Err(KernelFormatError::Corrupt {
                what: "unknown ELF byte order",
            });
        }
    }
    if bytes.len() < ELF64_HEADER {
        return Err(truncated("ELF header"));
    }
    let machine = u16_at(bytes, 18).ok_or(truncated("ELF header"))?;
    if machine != EM_X86_64 {
        return Err(KernelFormatError::WrongArch {
            arch: arch_name(machine),
            machine,
        });
    }
    Ok(())
}

fn arch_name(machine: u16) -> &'static str {
    match machine {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC 64",
        22 => "s390",
        40 => "ARM",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "another architecture",
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let raw = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([raw[0], raw[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

/// A section header's type and link, with its bytes when it is a table this module reads.
struct Section<'a> {
    kind: u32,
    link: u32,
    data: &'a [u8],
}

/// The section headers, each bounds-checked against the file; empty when the image has none.
fn sections(bytes: &[u8]) -> Result<Vec<Section<'_>>, KernelFormatError> {
    let truncated = |what| KernelFormatError::Truncated {
        what,
        size: bytes.len(),
    };
    let corrupt = |what| KernelFormatError::Corrupt { what };
    let table = u64_at(bytes, 40).ok_or(truncated("ELF header"))?;
    let entry = usize::from(u16_at(bytes, 58).ok_or(truncated("ELF header"))?);
    let count = usize::from(u16_at(bytes, 60).ok_or(truncated("ELF header"))?);
    if table == 0 || count == 0 {
        return Ok(Vec::new());
    }
    if entry != SECTION_HEADER {
        return Err(corrupt("the section header size is not 64"));
    }
    let table = usize::try_from(table).map_err(|_| truncated("section header table"))?;
    let end = count
        .checked_mul(SECTION_HEADER)
        .and_then(|size| size.checked_add(table))
        .ok_or(truncated("section header table"))?;
    if end > bytes.len() {
        return Err(truncated("section header table"));
    }
    let mut found = Vec::with_capacity(count);
    for index in 0..count {
        let at = table + index * SECTION_HEADER;
        let field32 = |offset| u32_at(bytes, at + offset).ok_or(truncated("section header"));
        let field64 = |offset| u64_at(bytes, at + offset).ok_or(truncated("section header"));
        let kind = field32(4)?;
        let offset = field64(24)?;
        let size = field64(32)?;
        let link = field32(40)?;
        // SHT_NOBITS (.bss) occupies no bytes in the file; only sections we read are checked.
        let data = if kind == SHT_SYMTAB || kind == SHT_STRTAB {
            let start = usize::try_from(offset).map_err(|_| truncated("a section"))?;
            let length = usize::try_from(size).map_err(|_| truncated("a section"))?;
            let stop = start.checked_add(length).ok_or(truncated("a section"))?;
            bytes.get(start..stop).ok_or(truncated("a section"))?
        } else {
            &[]
        };
        found.push(Section { kind, link, data });
    }
    Ok(found)
}

/// The names in `.symtab` (through the string table its `sh_link` names), or `None` when the
/// image has no symbol table, or one without a single named symbol.
fn symbol_names(bytes: &[u8]) -> Result<Option<HashSet<&[u8]>>, KernelFormatError> {
    let corrupt = |what| KernelFormatError::Corrupt { what };
    let sections = sections(bytes)?;
    let Some(symtab) = sections.iter().find(|s| s.kind == SHT_SYMTAB) else {
        return Ok(None);
    };
    let strtab = usize::try_from(symtab.link)
        .ok()
        .and_then(|index| sections.get(index))
        .filter(|s| s.kind == SHT_STRTAB)
        .ok_or(corrupt(
            "the symbol table's string table is not a string table",
        ))?;
    let mut names = HashSet::new();
    for symbol in symtab.data.chunks_exact(SYMBOL) {
        let Some(name) = u32_at(symbol, 0) else {
            continue;
        };
        let Some(start) = usize::try_from(name).ok().filter(|n| *n > 0) else {
            continue;
        };
        let tail = strtab
            .data
            .get(start..)
            .ok_or(corrupt("a symbol name lies outside the string table"))?;
        let length = tail
            .iter()
            .position(|b| *b == 0)
            .ok_or(corrupt("a symbol name has no terminating NUL"))?;
        names.insert(&tail[..length]);
    }
    Ok((!names.is_empty()).then_some(names))
}

/// The features whose strings occur anywhere in the file, in one pass over it: a 256-entry
/// table of first bytes skips every position no needle can start at, which matters for a
/// 30 MiB vmlinux.
/// The start of the kernel's banner, which every Linux image holds.
const LINUX_BANNER: &[u8] = b"Linux version ";

/// Whether `needle` occurs in `bytes`.
fn contains(bytes: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    bytes
        .iter()
        .enumerate()
        .any(|(at, &byte)| byte == first && bytes[at..].starts_with(needle))
}

fn strings_present(bytes: &[u8]) -> Vec<Feature> {
    let needles: Vec<(Feature, &[u8])> = Feature::ALL
        .into_iter()
        .flat_map(|f| f.strings().iter().map(move |s| (f, *s)))
        .collect();
    let mut starts = [false; 256];
    for (_, needle) in &needles {
        if let Some(first) = needle.first() {
            starts[usize::from(*first)] = true;
        }
    }
    let mut found: HashSet<Feature> = HashSet::new();
    for (at, byte) in bytes.iter().enumerate() {
        if !starts[usize::from(*byte)] {
            continue;
        }
        for (feature, needle) in &needles {
            if bytes[at..].starts_with(needle) {
                found.insert(*feature);
            }
        }
        if found.len() == Feature::ALL.len() {
            break;
        }
    }
    Feature::ALL
        .into_iter()
        .filter(|f| found.contains(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_fixture as fixture;

    fn names(features: &[Feature]) -> Vec<&'static str> {
        features.iter().map(|f| f.name()).collect()
    }

    #[test]
    fn a_vmlinux_with_everything_has_every_feature_by_symbols() {
        let report = inspect(&fixture::vmlinux_with_everything()).unwrap();
        assert_eq!(report.read_from, ReadFrom::Symbols);
        for feature in Feature::ALL {
            assert!(report.has(feature), "{}", feature.name());
        }
        assert_eq!(report.missing_required(false), None);
        assert_eq!(report.missing_required(true), None);
    }

    #[test]
    fn a_stripped_vmlinux_with_everything_has_every_feature_by_strings() {
        let report = inspect(&fixture::stripped_vmlinux_with_everything()).unwrap();
        assert_eq!(report.read_from, ReadFrom::Strings);
        for feature in Feature::ALL {
            assert!(report.has(feature), "{}", feature.name());
        }
        assert_eq!(report.missing_required(false), None);
    }

    #[test]
    fn each_feature_missing_is_found_missing_by_symbols_and_by_strings() {
        for feature in Feature::ALL {
            for (bytes, read_from) in [
                (fixture::vmlinux_without(feature.name()), ReadFrom::Symbols),
                (
                    fixture::stripped_vmlinux_without(feature.name()),
                    ReadFrom::Strings,
                ),
            ] {
                let report = inspect(&bytes).unwrap();
                assert_eq!(report.read_from, read_from);
                assert!(!report.has(feature), "{} found", feature.name());
                for other in Feature::ALL.into_iter().filter(|f| *f != feature) {
                    assert!(report.has(other), "{} lost", other.name());
                }
                let missing = report.missing_required(false);
                if feature.is_required() {
                    let missing = missing.unwrap();
                    assert_eq!(missing.features, [feature]);
                    assert!(missing.fatal);
                    assert!(!report.missing_required(true).unwrap().fatal);
                } else {
                    assert_eq!(missing, None, "iso9660 is informational");
                }
            }
        }
    }

    #[test]
    fn a_debian_like_kernel_lacks_its_virtio_modules_unless_an_initrd_loads_them() {
        let report = inspect(&fixture::stripped_vmlinux_with_modules()).unwrap();
        let missing = report.missing_required(false).unwrap();
        assert_eq!(
            names(&missing.features),
            ["virtio-mmio", "virtio-blk", "virtio-net"]
        );
        assert_eq!(
            missing.describe(std::path::Path::new(
                "/srv/firecracker/base/images/initrd.img"
            )),
            "no built-in virtio-mmio, virtio-blk, virtio-net (read from its strings: it has no symbol table); a driver built as a module (=m) is missing unless an initrd loads it: put one that does at /srv/firecracker/base/images/initrd.img (fireclaw image fetch --initrd FILE installs it there; setup --base-initrd FILE names another), or use a kernel with these built in (fireclaw image fetch)"
        );
        let with_initrd = report.missing_required(true).unwrap();
        assert!(!with_initrd.fatal);
        assert!(
            with_initrd
                .describe(std::path::Path::new("/x"))
                .ends_with("the initrd must load them as modules")
        );
    }

    #[test]
    fn a_symbol_table_decides_even_when_the_strings_say_otherwise() {
        // Symbols of everything but virtio-net, strings of everything: the table wins.
        let all: Vec<&str> = fixture::FEATURES
            .iter()
            .flat_map(|f| fixture::strings_of(f).iter().copied())
            .chain(["Linux version 6.1.0 (fixture)"])
            .collect();
        let symbols: Vec<&str> = fixture::FEATURES
            .iter()
            .filter(|f| **f != "virtio-net")
            .flat_map(|f| fixture::symbols_of(f).iter().copied())
            .collect();
        let report = inspect(&fixture::elf(&symbols, &all)).unwrap();
        assert_eq!(report.read_from, ReadFrom::Symbols);
        assert!(!report.has(Feature::VirtioNet));
    }

    #[test]
    fn an_x86_64_program_is_no_kernel() {
        // /bin/ls: an x86_64 ELF, but no kernel (the example).
        let program = std::fs::read("/bin/ls").unwrap();
        assert!(matches!(
            inspect(&program),
            Err(KernelFormatError::NotKernel)
        ));
        // Strings of every driver, but no banner and no symbol table.
        let strings: Vec<&str> = fixture::FEATURES
            .iter()
            .flat_map(|f| fixture::strings_of(f).iter().copied())
            .collect();
        assert!(matches!(
            inspect(&fixture::elf(&[], &strings)),
            Err(KernelFormatError::NotKernel)
        ));
        // The banner alone makes it a kernel (a stripped vmlinux).
        assert!(inspect(&fixture::stripped_vmlinux_with_everything()).is_ok());
    }

    #[test]
    fn a_bzimage_is_refused_in_one_line_saying_how_to_get_a_vmlinux() {
        let error = inspect(&fixture::bzimage()).unwrap_err();
        assert_eq!(error, KernelFormatError::BzImage);
        let text = error.to_string();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("scripts/extract-vmlinux"), "{text}");
        assert!(text.contains("fireclaw image fetch"), "{text}");
    }

    #[test]
    fn other_elves_are_refused_naming_what_they_are() {
        assert_eq!(
            inspect(&fixture::elf32()).unwrap_err(),
            KernelFormatError::Elf32
        );
        let error = inspect(&fixture::elf_for_machine(183)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "it is an ELF for AArch64 (e_machine 183), not x86_64"
        );
        let mut big_endian = fixture::vmlinux_with_everything();
        big_endian[5] = ELFDATA2MSB;
        assert_eq!(
            inspect(&big_endian).unwrap_err(),
            KernelFormatError::BigEndian
        );
    }

    #[test]
    fn garbage_empty_and_truncated_files_are_refused() {
        assert_eq!(inspect(b"").unwrap_err(), KernelFormatError::Empty);
        assert_eq!(inspect(b"kernel").unwrap_err(), KernelFormatError::NotElf);
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        assert_eq!(inspect(&garbage).unwrap_err(), KernelFormatError::NotElf);
        assert!(matches!(
            inspect(b"\x7fEL").unwrap_err(),
            KernelFormatError::Truncated { .. }
        ));
        let whole = fixture::vmlinux_with_everything();
        assert!(matches!(
            inspect(&whole[..40]).unwrap_err(),
            KernelFormatError::Truncated { .. }
        ));
        // Cut off inside the section header table at the end of the file.
        let error = inspect(&whole[..whole.len() - 10]).unwrap_err();
        assert_eq!(
            error,
            KernelFormatError::Truncated {
                what: "section header table",
                size: whole.len() - 10
            }
        );
    }

    #[test]
    fn no_prefix_and_no_corruption_of_a_header_field_panics() {
        let whole = fixture::vmlinux_with_everything();
        for length in 0..whole.len() {
            let _ = inspect(&whole[..length]);
        }
        // Every byte of the ELF header and the section headers, set to extremes.
        for at in (0..ELF64_HEADER).chain(whole.len() - 6 * SECTION_HEADER..whole.len()) {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut corrupt = whole.clone();
                corrupt[at] = value;
                let _ = inspect(&corrupt);
            }
        }
        // Offsets and counts that overflow when added or multiplied.
        for (at, width) in [(40, 8), (58, 2), (60, 2)] {
            let mut corrupt = whole.clone();
            corrupt[at..at + width].fill(0xff);
            assert!(inspect(&corrupt).is_err(), "field at {at}");
        }
    }

    #[test]
    fn inspect_file_names_the_path_it_could_not_read_or_use() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("vmlinux");
        let error = inspect_file(&missing).unwrap_err();
        assert!(
            error.to_string().starts_with("read guest kernel ")
                && error.to_string().ends_with("/vmlinux"),
            "{error}"
        );
        let bzimage = dir.path().join("vmlinuz");
        std::fs::write(&bzimage, fixture::bzimage()).unwrap();
        let error = inspect_file(&bzimage).unwrap_err();
        assert_eq!(
            crate::output::error_chain(&error),
            format!(
                "inspect guest kernel {}: {}",
                bzimage.display(),
                KernelFormatError::BzImage
            )
        );
        let good = dir.path().join("good");
        std::fs::write(&good, fixture::vmlinux_with_everything()).unwrap();
        assert!(inspect_file(&good).is_ok());
    }
}
