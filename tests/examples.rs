//! Every example a user may copy: each `Examples:` block of every help text and every
//! `fireclaw setup` line of the README. Each must parse; each setup example must also pass
//! setup's validation, shown by its `--dry-run` (with a stand-in key for a `sk-...`
//! placeholder) printing its preview. So an example can never rot again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use clap::CommandFactory;

const BIN: &str = env!("CARGO_BIN_EXE_fireclaw");
const README: &str = include_str!("../README.md");

/// An example as a person types it: the environment it sets and fireclaw's arguments.
#[derive(Debug)]
struct Example {
    text: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// The shell words of `line` up to a pipe, redirection, `&&`, `;` or comment.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '|' | '>' | ';' | '#' | '&' if !in_word => break,
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `line` (continuations joined) as an example, or `None` when it does not run fireclaw.
fn example(line: &str) -> Option<Example> {
    let mut words = words(line).into_iter().peekable();
    let mut env = Vec::new();
    loop {
        let word = words.next()?;
        if word == "sudo" || word.starts_with("--preserve-env") {
            continue;
        }
        if let Some((name, value)) = word.split_once('=')
            && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            env.push((name.to_owned(), stand_in(value)));
            continue;
        }
        if word != "fireclaw" {
            return None;
        }
        break;
    }
    Some(Example {
        text: line.to_owned(),
        env,
        args: words.map(|w| stand_in(&w)).collect(),
    })
}

/// A placeholder key (`sk-...`) as a key validation accepts.
fn stand_in(value: &str) -> String {
    if value.ends_with("...") {
        format!("{}stand-in-key", value.trim_end_matches("..."))
    } else {
        value.to_owned()
    }
}

/// The lines of a text block with `\` continuations joined.
fn joined_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// Every example in every `Examples:` block of the help, with the verb it belongs to.
fn help_examples() -> Vec<(String, Example)> {
    fn walk(command: &clap::Command, path: &str, out: &mut Vec<(String, Example)>) {
        for help in [command.get_after_help(), command.get_after_long_help()]
            .into_iter()
            .flatten()
        {
            let text = help.to_string();
            if let Some((_, block)) = text.split_once("Examples:") {
                for line in joined_lines(block) {
                    if let Some(example) = example(&line) {
                        out.push((path.to_owned(), example));
                    }
                }
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(&fireclaw::cli::Cli::command(), "fireclaw", &mut out);
    out
}

/// Every `fireclaw setup` command line in the README's code blocks; a synopsis with
/// `<placeholders>` is no example.
fn readme_setup_examples() -> Vec<Example> {
    let mut out = Vec::new();
    let mut in_code = false;
    let mut block = String::new();
    for line in README.lines() {
        if line.trim_start().starts_with("```") {
            if in_code {
                for line in joined_lines(&block) {
                    if line.contains("fireclaw setup")
                        && !line.contains('<')
                        && let Some(example) = example(&line)
                    {
                        out.push(example);
                    }
                }
                block.clear();
            }
            in_code = !in_code;
        } else if in_code {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

/// Runs a setup example as a dry run in a scratch host; it must pass validation and print its
/// preview (setup's own predictions, like missing base images here, may still fail it).
fn assert_setup_example_validates(example: &Example) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = |name: &str| scratch.path().join(name).to_str().unwrap().to_owned();
    let mut args = example.args.clone();
    if !args.iter().any(|a| a == "--dry-run") {
        args.push("--dry-run".into());
    }
    // A baked image the example names is there, as `image bake` records it (its file is no
    // real disk: setup's own prediction may still fail it).
    if let Some(name) = args
        .iter()
        .position(|a| a == "--base-image")
        .and_then(|i| args.get(i + 1))
    {
        let images = scratch.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join(format!("{name}.ext4")), b"disk").unwrap();
        let source = serde_json::json!({"path": "/b", "sha256": "", "size": 1});
        let record = serde_json::json!({"format": 1, "images": [{
            "name": name, "file": format!("{name}.ext4"), "size": 4, "sha256": "",
            "base": source, "kernel": source,
            "openclaw": {"reference": "ghcr.io/openclaw/openclaw:2026.9.6", "image_id": "sha256:1"},
            "docker_version": "26.1.5", "browser": true, "baked_at": "2026-12-01T00:00:00Z",
            "fireclaw_version": "0.3.0"
        }]});
        std::fs::write(images.join("fireclaw-baked.json"), record.to_string()).unwrap();
    }
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("STATE_ROOT", dir("state"))
        .env("FC_ROOT", dir("fc"))
        .env("BASE_IMAGES_DIR", dir("images"))
        .env("SSH_KEY_PATH", dir("key"))
        .env("BASE_PORT", "47510")
        .args(&args);
    for (name, value) in &example.env {
        command.env(name, value);
    }
    // `sudo --preserve-env=<KEY> ...` takes the key from the user's environment.
    for key in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MINIMAX_API_KEY"] {
        if example.text.contains(&format!("--preserve-env={key}")) {
            command.env(key, "sk-stand-in-key");
        }
    }
    let output = command.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    let predicted = output.status.code() == Some(1) && err.contains("setup would fail");
    assert!(
        output.status.success() || predicted,
        "{}\n  exit {:?}: {err}",
        example.text,
        output.status.code()
    );
    assert!(
        out.contains("Dry run: nothing was created or changed."),
        "{}: no preview\n{out}{err}",
        example.text
    );
}

#[test]
fn every_help_example_parses_and_every_setup_example_validates() {
    let examples = help_examples();
    assert!(examples.len() > 20, "{examples:#?}");
    for (verb, example) in &examples {
        let argv = std::iter::once("fireclaw".to_owned()).chain(example.args.iter().cloned());
        if let Err(error) = <fireclaw::cli::Cli as clap::Parser>::try_parse_from(argv) {
            panic!(
                "the example of '{verb}' does not parse: {}\n{error}",
                example.text
            );
        }
        if example.args.first().is_some_and(|a| a == "setup") {
            assert_setup_example_validates(example);
        }
    }
    // The setup help's examples include the dry run, the key from the environment and
    // Telegram.
    let setup: Vec<&Example> = examples
        .iter()
        .filter(|(verb, _)| verb == "fireclaw setup")
        .map(|(_, e)| e)
        .collect();
    assert_eq!(setup.len(), 3, "{setup:#?}");
}

#[test]
fn every_setup_line_of_the_readme_validates() {
    let examples = readme_setup_examples();
    assert!(examples.len() >= 2, "{examples:#?}");
    for example in &examples {
        assert_setup_example_validates(example);
    }
}

#[test]
fn an_example_is_read_as_a_shell_reads_it() {
    let e =
        example("sudo OPENAI_API_KEY=sk-... fireclaw setup --instance 'my bot' # note").unwrap();
    assert_eq!(e.env, [("OPENAI_API_KEY".into(), "sk-stand-in-key".into())]);
    assert_eq!(e.args, ["setup", "--instance", "my bot"]);
    let e = example("sudo fireclaw doctor --json | jq '.checks[]'").unwrap();
    assert_eq!(e.args, ["doctor", "--json"]);
    assert!(example("cargo build --release").is_none());
    assert_eq!(
        joined_lines("  a \\\n   b\nc"),
        ["a  b".to_owned(), "c".to_owned()]
    );
}

/// The README starts with the user: the install section first (the install command, the Rust
/// it needs as `Cargo.toml` pins it, the first command to run), then the quick start, whose
/// code block is the first after the install section, then the one test command.
#[test]
fn the_readme_opens_with_install_then_the_quick_start_then_the_test_command() {
    let headings: Vec<&str> = README.lines().filter(|l| l.starts_with("## ")).collect();
    assert_eq!(
        headings[..3],
        ["## Install", "## Quick start on a bare host", "## Test"],
        "{headings:?}"
    );
    let install = README.split("## Install\n").nth(1).unwrap();
    let (install, after) = install.split_once("\n## ").unwrap();
    assert!(
        install
            .trim_start()
            .starts_with("```sh\ncargo build --release --locked")
    );
    let cargo = include_str!("../Cargo.toml");
    let rust = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        install.contains(&format!("Rust {rust} or later")) && install.contains("rustup"),
        "the install section must name Rust {rust} and rustup"
    );
    assert!(
        install.contains("fireclaw setup --instance my-bot --openai-api-key sk-example --dry-run")
    );
    // The first code block after the install section is the quick start's.
    assert!(after.starts_with("Quick start on a bare host\n"));
    let first_block = after.split("```").nth(1).unwrap();
    let quick_start = after.split("\n## ").next().unwrap();
    assert!(quick_start.contains(first_block));
    assert!(
        first_block.contains("sudo fireclaw image fetch"),
        "{first_block}"
    );
    // Then the test command, alone in its block.
    let test = README.split("## Test\n").nth(1).unwrap();
    assert!(
        test.trim_start()
            .starts_with("```sh\nsudo scripts/test\n```")
    );
    // Test internals live in docs/TESTING.md, not in the user's path.
    let user_part = README.split("## Development").next().unwrap();
    for internal in ["tsc_early_khz", "TCG", "icount"] {
        assert!(
            !user_part.contains(internal),
            "{internal} belongs in docs/TESTING.md"
        );
    }
}
