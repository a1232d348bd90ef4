//! Small guest kernel images for tests: a valid little-endian ELF64 x86_64 file with an
//! optional symbol table (`.symtab` + `.strtab`) and an optional `.rodata` of strings, holding
//! the symbols or strings a real linux 6.1 vmlinux carries for each driver it has built in;
//! plus a bzImage's boot header and other ELF classes and machines. Self-contained (no crate
//! imports), so both the unit tests (through `#[path]`) and the integration tests use it.
//! Features are named as `fireclaw::host::kernel_image::Feature::name` names them.

#![allow(dead_code)]

/// Every feature the inspection knows, by name.
pub const FEATURES: [&str; 6] = [
    "virtio-mmio",
    "virtio-blk",
    "virtio-net",
    "ext4",
    "serial console",
    "iso9660",
];

/// The symbols a vmlinux with the feature built in has in its `.symtab`.
pub fn symbols_of(feature: &str) -> &'static [&'static str] {
    match feature {
        "virtio-mmio" => &["virtio_mmio_probe", "virtio_mmio_driver", "vm_notify"],
        "virtio-blk" => &["virtblk_probe", "virtio_blk", "virtblk_getgeo"],
        "virtio-net" => &["virtnet_probe", "virtio_net_driver", "start_xmit"],
        "ext4" => &["ext4_fs_type", "ext4_fill_super", "ext4_iget"],
        "serial console" => &[
            "univ8250_console",
            "serial8250_console_write",
            "serial8250_init",
        ],
        "iso9660" => &["iso9660_fs_type", "isofs_fill_super"],
        other => panic!("no kernel feature {other}"),
    }
}

/// The strings a stripped vmlinux with the feature built in carries (printk strings start
/// with their KERN_ level, "\x01" and a digit).
pub fn strings_of(feature: &str) -> &'static [&'static str] {
    match feature {
        "virtio-mmio" => &["virtio-mmio", "virtio-mmio-cmdline"],
        "virtio-blk" => &["virtio_blk", "virtblk"],
        "virtio-net" => &["virtio_net"],
        "ext4" => &["\x013EXT4-fs (%s): %pV\n", "ext4"],
        "serial console" => &["serial8250", "ttyS"],
        "iso9660" => &["\x014ISOFS: Unable to identify CD-ROM format.\n", "iso9660"],
        other => panic!("no kernel feature {other}"),
    }
}

/// Symbols and strings every kernel has, whatever it was built with.
const COMMON_SYMBOLS: [&str; 3] = ["start_kernel", "printk", "register_filesystem"];
const COMMON_STRINGS: [&str; 2] = ["Linux version 6.1.0 (fixture)", "\x016Serial: 8250/16550"];

const EM_X86_64: u16 = 62;

/// An ELF64 x86_64 vmlinux with these symbols (no symbol table when empty) and these strings
/// in `.rodata` (no `.rodata` when empty).
pub fn elf(symbols: &[&str], strings: &[&str]) -> Vec<u8> {
    elf64(EM_X86_64, symbols, strings)
}

/// All required features and iso9660, by symbols: a kernel built with debugging symbols.
pub fn vmlinux_with_everything() -> Vec<u8> {
    vmlinux_without_any(&[])
}

/// Everything but `feature`, by symbols.
pub fn vmlinux_without(feature: &str) -> Vec<u8> {
    vmlinux_without_any(&[feature])
}

/// Everything but iso9660, by symbols: like Firecracker's CI kernels.
pub fn vmlinux_without_iso9660() -> Vec<u8> {
    vmlinux_without("iso9660")
}

fn vmlinux_without_any(left_out: &[&str]) -> Vec<u8> {
    let symbols: Vec<&str> = FEATURES
        .iter()
        .filter(|f| !left_out.contains(f))
        .flat_map(|f| symbols_of(f).iter().copied())
        .chain(COMMON_SYMBOLS)
        .collect();
    elf(&symbols, &COMMON_STRINGS)
}

/// All features, by strings only: a vmlinux without a symbol table.
pub fn stripped_vmlinux_with_everything() -> Vec<u8> {
    stripped_vmlinux_without_any(&[])
}

/// Everything but `feature`, by strings only.
pub fn stripped_vmlinux_without(feature: &str) -> Vec<u8> {
    stripped_vmlinux_without_any(&[feature])
}

/// Like the vmlinux extracted from Debian's cloud kernel: no symbol table, and virtio-mmio,
/// virtio-blk, virtio-net and iso9660 built as modules, so their strings are not in it.
pub fn stripped_vmlinux_with_modules() -> Vec<u8> {
    stripped_vmlinux_without_any(&["virtio-mmio", "virtio-blk", "virtio-net", "iso9660"])
}

fn stripped_vmlinux_without_any(left_out: &[&str]) -> Vec<u8> {
    let strings: Vec<&str> = FEATURES
        .iter()
        .filter(|f| !left_out.contains(f))
        .flat_map(|f| strings_of(f).iter().copied())
        .chain(COMMON_STRINGS)
        .collect();
    elf(&[], &strings)
}

/// An ELF64 for another machine (183 is AArch64), with everything built in.
pub fn elf_for_machine(machine: u16) -> Vec<u8> {
    let symbols: Vec<&str> = FEATURES
        .iter()
        .flat_map(|f| symbols_of(f).iter().copied())
        .collect();
    elf64(machine, &symbols, &[])
}

/// A 32-bit i386 ELF header (ELFCLASS32, EM_386).
pub fn elf32() -> Vec<u8> {
    let mut bytes = vec![0u8; 52];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[4] = 1; // ELFCLASS32
    bytes[5] = 1; // little-endian
    bytes[6] = 1;
    bytes[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    bytes[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    bytes[20..24].copy_from_slice(&1u32.to_le_bytes());
    bytes[40..42].copy_from_slice(&52u16.to_le_bytes());
    bytes
}

/// The start of a bzImage: a boot sector ending in 0x55AA and the setup header's "HdrS" magic,
/// then compressed data (here bytes that are no ELF).
pub fn bzimage() -> Vec<u8> {
    let mut bytes = vec![0u8; 4096];
    bytes[0x1F1] = 27; // setup_sects
    bytes[0x1FE] = 0x55;
    bytes[0x1FF] = 0xAA;
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    bytes[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes()); // boot protocol 2.15
    for (index, byte) in bytes.iter_mut().enumerate().skip(0x400) {
        *byte = (index * 31 % 253) as u8;
    }
    bytes
}

fn push_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}
fn push_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}
fn push_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}
fn pad_to(out: &mut Vec<u8>, align: usize) {
    while !out.len().is_multiple_of(align) {
        out.push(0);
    }
}

/// A section for the header table: name offset in `.shstrtab`, type, flags, file range, link,
/// info, entry size.
struct Section {
    name: u32,
    kind: u32,
    flags: u64,
    offset: usize,
    size: usize,
    link: u32,
    info: u32,
    align: u64,
    entry: u64,
}

/// The file: ELF header, one PT_LOAD program header over `.rodata`, the section contents, then
/// the section header table (null, [.rodata], [.symtab, .strtab], .shstrtab).
fn elf64(machine: u16, symbols: &[&str], strings: &[&str]) -> Vec<u8> {
    const HEADER: usize = 64;
    const PROGRAM_HEADER: usize = 56;
    const BASE: u64 = 0xffff_ffff_8100_0000;
    let mut body = vec![0u8; HEADER + PROGRAM_HEADER];
    let mut sections = vec![Section {
        name: 0,
        kind: 0,
        flags: 0,
        offset: 0,
        size: 0,
        link: 0,
        info: 0,
        align: 0,
        entry: 0,
    }];
    let mut names = vec![0u8];
    let mut name = |text: &str| {
        let at = names.len() as u32;
        names.extend_from_slice(text.as_bytes());
        names.push(0);
        at
    };

    let rodata_at = body.len();
    if !strings.is_empty() {
        body.push(0);
        for text in strings {
            body.extend_from_slice(text.as_bytes());
            body.push(0);
        }
        sections.push(Section {
            name: name(".rodata"),
            kind: 1,  // SHT_PROGBITS
            flags: 2, // SHF_ALLOC
            offset: rodata_at,
            size: body.len() - rodata_at,
            link: 0,
            info: 0,
            align: 1,
            entry: 0,
        });
    }
    let rodata_size = body.len() - rodata_at;

    if !symbols.is_empty() {
        let mut strtab = vec![0u8];
        let mut entries = vec![0u8; 24];
        for (index, symbol) in symbols.iter().enumerate() {
            push_u32(&mut entries, strtab.len() as u32);
            strtab.extend_from_slice(symbol.as_bytes());
            strtab.push(0);
            entries.push(0x12); // STB_GLOBAL, STT_FUNC
            entries.push(0);
            push_u16(&mut entries, 1);
            push_u64(&mut entries, BASE + 16 * index as u64);
            push_u64(&mut entries, 16);
        }
        pad_to(&mut body, 8);
        let symtab_at = body.len();
        body.extend_from_slice(&entries);
        let strtab_at = body.len();
        body.extend_from_slice(&strtab);
        let strtab_index = sections.len() as u32 + 1;
        sections.push(Section {
            name: name(".symtab"),
            kind: 2, // SHT_SYMTAB
            flags: 0,
            offset: symtab_at,
            size: entries.len(),
            link: strtab_index,
            info: 1,
            align: 8,
            entry: 24,
        });
        sections.push(Section {
            name: name(".strtab"),
            kind: 3, // SHT_STRTAB
            flags: 0,
            offset: strtab_at,
            size: strtab.len(),
            link: 0,
            info: 0,
            align: 1,
            entry: 0,
        });
    }

    let shstrtab_name = name(".shstrtab");
    let shstrtab_at = body.len();
    body.extend_from_slice(&names);
    sections.push(Section {
        name: shstrtab_name,
        kind: 3,
        flags: 0,
        offset: shstrtab_at,
        size: names.len(),
        link: 0,
        info: 0,
        align: 1,
        entry: 0,
    });

    pad_to(&mut body, 8);
    let table_at = body.len();
    for section in &sections {
        push_u32(&mut body, section.name);
        push_u32(&mut body, section.kind);
        push_u64(&mut body, section.flags);
        push_u64(&mut body, 0);
        push_u64(&mut body, section.offset as u64);
        push_u64(&mut body, section.size as u64);
        push_u32(&mut body, section.link);
        push_u32(&mut body, section.info);
        push_u64(&mut body, section.align);
        push_u64(&mut body, section.entry);
    }

    let mut header = Vec::with_capacity(HEADER + PROGRAM_HEADER);
    header.extend_from_slice(b"\x7fELF");
    header.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, little-endian, version 1, SysV
    header.extend_from_slice(&[0; 8]);
    push_u16(&mut header, 2); // ET_EXEC
    push_u16(&mut header, machine);
    push_u32(&mut header, 1);
    push_u64(&mut header, 0x0100_0000); // e_entry
    push_u64(&mut header, HEADER as u64); // e_phoff
    push_u64(&mut header, table_at as u64); // e_shoff
    push_u32(&mut header, 0);
    push_u16(&mut header, HEADER as u16);
    push_u16(&mut header, PROGRAM_HEADER as u16);
    push_u16(&mut header, 1);
    push_u16(&mut header, 64);
    push_u16(&mut header, sections.len() as u16);
    push_u16(&mut header, sections.len() as u16 - 1); // .shstrtab is last
    // PT_LOAD, readable, over .rodata.
    push_u32(&mut header, 1);
    push_u32(&mut header, 4);
    push_u64(&mut header, rodata_at as u64);
    push_u64(&mut header, BASE);
    push_u64(&mut header, 0x0100_0000);
    push_u64(&mut header, rodata_size as u64);
    push_u64(&mut header, rodata_size as u64);
    push_u64(&mut header, 0x20_0000);
    body[..HEADER + PROGRAM_HEADER].copy_from_slice(&header);
    body
}
