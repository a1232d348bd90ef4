//! Hostile input, property-style with a fixed seed and a bounded count (fast, repeatable): the
//! plain-v1 parser and every validator never panic on arbitrary text; a parsed document renders
//! back to exactly its input; and nothing accepted carries a newline, CR or NUL into a saved file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;

use fireclaw::instance::plain::PlainDoc;
use fireclaw::instance::state::{ENV_KEYS, EnvFile, VarsFile};
use fireclaw::instance::values::{
    BridgeAddress, DiskSize, HostPort, ImageRef, InstanceId, InterfaceName, MemoryMib, Model,
    Secret, Skills, Subnet24, TelegramUsers, VcpuCount, parse_absolute_path, parse_base_port,
    parse_telegram_token,
};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Text built from pieces that matter to the parsers, plus random characters.
fn hostile(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "=",
        "\n",
        "\r",
        "\0",
        "#",
        " ",
        "/",
        "..",
        ",",
        ":",
        "%",
        "$",
        "\"",
        "'",
        "\\",
        "-",
        "FIRECLAW_STATE_FORMAT=plain-v1",
        "INSTANCE_ID=",
        "HOST_PORT=",
        "VM_IP=",
        "18891",
        "172.16.0.2",
        "/24",
        "40G",
        "openai/",
        "a",
        "Z",
        "9",
        "é",
        "🦀",
        "\u{202e}",
        "0x",
        "-1",
        "99999999999999999999",
    ];
    let mut text = String::new();
    for _ in 0..rng.below(24) {
        if rng.below(4) == 0 {
            text.push(char::from_u32(rng.below(0x2FFF) as u32).unwrap_or('?'));
        } else {
            text.push_str(PIECES[rng.below(PIECES.len())]);
        }
    }
    text
}

fn clean(value: &str) -> bool {
    !value.contains(['\n', '\r', '\0'])
}

#[test]
fn the_plain_v1_parser_never_panics_and_round_trips_exactly() {
    let mut rng = Rng(0x5EED_F1AE_C1A7_0001);
    for _ in 0..20_000 {
        let text = hostile(&mut rng);
        if let Ok(doc) = PlainDoc::parse(&text, &ENV_KEYS) {
            assert_eq!(doc.render(), text);
        }
        if let Ok(env) = EnvFile::parse(&text) {
            let _ = (env.host_port(), env.vm_ip(), env.tap(), env.api_sock());
            assert_eq!(env.render(), text);
        }
        let _ = VarsFile::parse(&text);
    }
}

#[test]
fn setting_a_hostile_value_either_fails_or_keeps_the_file_parseable() {
    let mut rng = Rng(0x5EED_F1AE_C1A7_0002);
    for _ in 0..10_000 {
        let value = hostile(&mut rng);
        let mut env = EnvFile::parse("FIRECLAW_STATE_FORMAT=plain-v1\nINSTANCE_ID=a\n").unwrap();
        match env.set("MODEL", &value) {
            Ok(()) => {
                let reparsed = EnvFile::parse(&env.render()).unwrap();
                assert_eq!(reparsed.get("MODEL"), value);
            }
            Err(_) => assert!(!clean(&value)),
        }
    }
}

/// What would be saved if `text` were accepted (CSV lists are trimmed and re-joined).
fn saved_forms(text: &str) -> Vec<String> {
    let mut saved = Vec::new();
    let mut keep = |value: Option<String>| saved.extend(value);
    keep(InstanceId::from_str(text).ok().map(|v| v.to_string()));
    keep(HostPort::from_str(text).ok().map(|v| v.to_string()));
    keep(VcpuCount::from_str(text).ok().map(|v| v.to_string()));
    keep(MemoryMib::from_str(text).ok().map(|v| v.to_string()));
    keep(DiskSize::from_str(text).ok().map(|v| v.to_string()));
    keep(Model::from_str(text).ok().map(|v| v.to_string()));
    keep(Skills::from_str(text).ok().map(|v| v.to_csv()));
    keep(TelegramUsers::from_str(text).ok().map(|v| v.to_csv()));
    keep(ImageRef::from_str(text).ok().map(|v| v.to_string()));
    keep(InterfaceName::from_str(text).ok().map(|v| v.to_string()));
    keep(Subnet24::from_str(text).ok().map(|v| v.to_string()));
    keep(BridgeAddress::from_str(text).ok().map(|v| v.to_string()));
    keep(
        parse_absolute_path(text)
            .ok()
            .map(|v| v.to_string_lossy().into_owned()),
    );
    keep(parse_base_port(text).ok().map(|v| v.to_string()));
    keep(Secret::parse("s", text).ok().map(|v| v.expose().to_owned()));
    keep(
        parse_telegram_token(text)
            .ok()
            .map(|v| v.expose().to_owned()),
    );
    saved
}

#[test]
fn validators_never_panic_and_never_let_a_line_break_into_a_saved_value() {
    let mut rng = Rng(0x5EED_F1AE_C1A7_0003);
    for _ in 0..20_000 {
        let text = hostile(&mut rng);
        for saved in saved_forms(&text) {
            assert!(clean(&saved), "{text:?} was accepted as {saved:?}");
        }
        if let Ok(id) = InstanceId::from_str(&text) {
            assert!(!id.as_str().contains('/') && id.as_str() != ".." && id.as_str().len() <= 63);
            assert_eq!(
                id.as_str(),
                text,
                "ids are taken as given, never normalised"
            );
        }
    }
}

#[test]
fn absurd_numbers_and_names_are_refused() {
    for text in [
        "99999999999999999999",
        "-1",
        "+5",
        "0x10",
        "1e3",
        " 5",
        "5 ",
    ] {
        assert!(HostPort::from_str(text).is_err(), "{text}");
        assert!(VcpuCount::from_str(text).is_err(), "{text}");
        assert!(MemoryMib::from_str(text).is_err(), "{text}");
    }
    for text in ["../etc", "a/b", "é", &"a".repeat(300), "", "A"] {
        assert!(InstanceId::from_str(text).is_err(), "{text}");
    }
    assert!(DiskSize::from_str("18446744073709551615T").is_err());
}
