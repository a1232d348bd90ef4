//! The command line as a user meets it: help for every command, one clear line and a non-zero
//! exit for every bad input with nothing created on disk, `setup --dry-run` as an unprivileged
//! user (no secret in its output, allocation marked provisional), and `token`.
//!
//! Every run starts from an empty environment plus the variables the test names, so nothing
//! from the developer's shell (an `OPENAI_API_KEY`, say) leaks in.

// Tests may panic on a broken fixture; that is their way of failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fireclaw::host::probe::is_root;

#[path = "support/kernel_fixture.rs"]
mod kernel_fixture;

const BIN: &str = env!("CARGO_BIN_EXE_fireclaw");
const SECRET_KEY: &str = "sk-cli-test-do-not-print";
const SECRET_TELEGRAM: &str = "987654:AAHcli-test-bot-secret";

/// A fresh temporary directory, removed when dropped (also when the test panics).
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("fireclaw-cli-{tag}-"))
            .tempdir()
            .unwrap();
        // Readable by the unprivileged user some tests run fireclaw as.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// Runs fireclaw with only `PATH` plus `env` set.
fn fireclaw(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn tree(path: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            found.push(entry.path());
            found.extend(tree(&entry.path()));
        }
    }
    found
}

#[test]
fn help_lists_every_command_and_each_command_has_help() {
    let output = fireclaw(&["--help"], &[]);
    assert!(output.status.success());
    let text = stdout(&output);
    for command in [
        "doctor",
        "setup",
        "provision",
        "list",
        "status",
        "start",
        "stop",
        "restart",
        "logs",
        "shell",
        "token",
        "destroy",
        "image",
        "help",
    ] {
        assert!(text.contains(command), "{command} missing from --help");
        let output = fireclaw(&["help", command], &[]);
        assert!(
            output.status.success(),
            "help {command}: {}",
            stderr(&output)
        );
        assert!(
            stdout(&output).contains("Usage: fireclaw"),
            "help {command}"
        );
    }
    assert!(!text.contains("vm-net-up"), "internal helpers are hidden");
}

#[test]
fn setup_help_documents_every_flag_of_the_spec() {
    let text = stdout(&fireclaw(&["setup", "--help"], &[]));
    for flag in [
        "--instance",
        "--telegram-token",
        "--telegram-users",
        "--model",
        "--skills",
        "--openclaw-image",
        "--host-port",
        "--vm-vcpu",
        "--vm-mem-mib",
        "--disk-size",
        "--api-sock",
        "--base-kernel",
        "--base-rootfs",
        "--base-initrd",
        "--anthropic-api-key",
        "--openai-api-key",
        "--minimax-api-key",
        "--skip-browser-install",
        "--dry-run",
    ] {
        assert!(text.contains(flag), "{flag} missing from setup --help");
    }
    assert!(
        text.contains("openai/gpt-5.5") && text.contains("40G"),
        "defaults shown"
    );
    let text = stdout(&fireclaw(&["provision", "--help"], &[]));
    for flag in [
        "--telegram-token",
        "--no-telegram",
        "--telegram-users",
        "--model",
        "--skills",
        "--openclaw-image",
        "--anthropic-api-key",
        "--openai-api-key",
        "--minimax-api-key",
        "--skip-browser-install",
        "--browser-install",
    ] {
        assert!(text.contains(flag), "{flag} missing from provision --help");
    }
}

/// Arguments, extra environment, and what the one error line must mention.
type Rejection = (Vec<String>, Vec<(&'static str, String)>, &'static str);

#[test]
fn every_bad_input_is_one_line_a_nonzero_exit_and_nothing_on_disk() {
    let scratch = Scratch::new("reject");
    let state = scratch.join("state");
    let fc = scratch.join("fc");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&fc).unwrap();
    let (state_s, fc_s) = (state.to_str().unwrap(), fc.to_str().unwrap());
    let long_fc = format!("/srv/{}", "f".repeat(40));
    let key = format!("--openai-api-key={SECRET_KEY}");
    let ok = ["setup", "--instance", "bot", key.as_str()];
    let with = |extra: &[&'static str]| -> Vec<String> {
        ok.iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    // Guest kernels setup must refuse before it writes anything, dry run or not.
    let images = scratch.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let images_s = images.to_str().unwrap();
    for (name, bytes) in [
        ("vmlinuz", kernel_fixture::bzimage()),
        ("arm64", kernel_fixture::elf_for_machine(183)),
        ("garbage", b"not a kernel at all".to_vec()),
        ("no-blk", kernel_fixture::vmlinux_without("virtio-blk")),
        ("debian", kernel_fixture::stripped_vmlinux_with_modules()),
    ] {
        std::fs::write(images.join(name), bytes).unwrap();
    }
    std::fs::File::create(images.join("big.ext4"))
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let big_rootfs = format!("{images_s}/big.ext4");
    let kernel = |name: &str| -> Vec<String> {
        ["setup", "--instance", "bot", key.as_str(), "--base-kernel"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("{images_s}/{name}")])
            .chain(["--base-initrd".to_owned(), format!("{images_s}/no-initrd")])
            .collect()
    };

    // (arguments, extra environment, what the one line must mention)
    let cases: Vec<Rejection> = vec![
        (
            vec![
                "setup".into(),
                "--instance".into(),
                "My_Bot".into(),
                key.clone(),
            ],
            vec![],
            "instance id",
        ),
        (
            vec![
                "setup".into(),
                "--instance".into(),
                "../etc".into(),
                key.clone(),
            ],
            vec![],
            "instance id",
        ),
        (
            vec![
                "setup".into(),
                "--instance".into(),
                "a".repeat(64),
                key.clone(),
            ],
            vec![],
            "limit is 63",
        ),
        (
            vec![
                "setup".into(),
                "--instance".into(),
                "a".repeat(60),
                key.clone(),
            ],
            vec![("FC_ROOT", long_fc.clone())],
            "API socket path",
        ),
        (
            with(&["--api-sock", "relative.sock"]),
            vec![],
            "absolute path",
        ),
        (with(&["--host-port", "80"]), vec![], "privileged"),
        (with(&["--host-port", "70000"]), vec![], "1024–65535"),
        (with(&["--vm-vcpu", "0"]), vec![], "vCPU"),
        (with(&["--vm-mem-mib", "0"]), vec![], "memory"),
        (with(&["--disk-size", "40 GB"]), vec![], "disk size"),
        (with(&["--skills", "git\nhub"]), vec![], "skill"),
        (
            with(&["--openclaw-pull", "sometimes"]),
            vec![],
            "one of always, missing, never",
        ),
        (
            with(&["--telegram-token", "123:abc"]),
            vec![],
            "--telegram-users is required",
        ),
        (
            with(&["--telegram-users", "1,2"]),
            vec![],
            "needs --telegram-token",
        ),
        (
            with(&["--telegram-token", "123:abc", "--telegram-users", " , "]),
            vec![],
            "at least one",
        ),
        (
            with(&["--telegram-token", "nonsense", "--telegram-users", "1"]),
            vec![],
            "--telegram-token",
        ),
        (
            with(&["--model", "anthropic/claude-opus-4"]),
            vec![],
            "ANTHROPIC_API_KEY",
        ),
        (with(&["--model", "google/gemini"]), vec![], "not supported"),
        (with(&["--openclaw-image", "bad image"]), vec![], "image"),
        (with(&["--no-such-flag"]), vec![], "--no-such-flag"),
        (
            vec!["setup".into(), "--instance".into(), "bot".into()],
            vec![],
            "OPENAI_API_KEY",
        ),
        (with(&[]), vec![("BASE_PORT", "port".into())], "BASE_PORT"),
        (
            with(&[]),
            vec![("BRIDGE_ADDR", "172.16.0.1/16".into())],
            "BRIDGE_ADDR",
        ),
        (
            with(&[]),
            vec![("SUBNET_CIDR", "10.0.0.0/24".into())],
            "BRIDGE_ADDR",
        ),
        (
            with(&[]),
            vec![("BRIDGE_NAME", "a-very-long-bridge-name".into())],
            "BRIDGE_NAME",
        ),
        (with(&[]), vec![("MODEL", "nonsense".into())], "MODEL"),
        (with(&[]), vec![("VM_MEM_MIB", "lots".into())], "VM_MEM_MIB"),
        (with(&[]), vec![("DISK_SIZE", "huge".into())], "DISK_SIZE"),
        (
            vec!["setup".into(), "--instance".into(), "bot".into()],
            vec![("OPENAI_API_KEY", "has space".into())],
            "OPENAI_API_KEY",
        ),
        (
            vec![
                "provision".into(),
                "bot".into(),
                "--no-telegram".into(),
                "--telegram-users".into(),
                "1".into(),
            ],
            vec![],
            "--no-telegram",
        ),
        (
            vec![
                "provision".into(),
                "bot".into(),
                "--model".into(),
                "x".into(),
            ],
            vec![],
            "model",
        ),
        (vec!["start".into(), "Bad".into()], vec![], "instance id"),
        (
            vec!["logs".into(), "bot".into(), "kernel".into()],
            vec![],
            "kernel",
        ),
        (vec!["destroy".into()], vec![], "ID"),
        (
            vec![
                "image".into(),
                "fetch".into(),
                "--kernel".into(),
                "ftp://h/vmlinux".into(),
            ],
            vec![],
            "scheme ftp",
        ),
        (
            vec![
                "image".into(),
                "fetch".into(),
                "--rootfs-sha256".into(),
                "abc".into(),
            ],
            vec![],
            "SHA-256",
        ),
        (
            vec![
                "image".into(),
                "fetch".into(),
                "--kernel-index".into(),
                "/srv/k".into(),
            ],
            vec![],
            "not an http",
        ),
        // Ids that would escape or confuse paths, names and hostnames.
        (
            vec![
                "setup".into(),
                "--instance".into(),
                "a/b".into(),
                key.clone(),
            ],
            vec![],
            "instance id",
        ),
        (
            vec![
                "setup".into(),
                "--instance".into(),
                "..".into(),
                key.clone(),
            ],
            vec![],
            "instance id",
        ),
        (
            vec![
                "setup".into(),
                "--instance".into(),
                "bøt".into(),
                key.clone(),
            ],
            vec![],
            "instance id",
        ),
        (
            vec![
                "setup".into(),
                "--instance".into(),
                "x".repeat(500),
                key.clone(),
            ],
            vec![],
            "limit is 63",
        ),
        (
            vec!["setup".into(), "--instance".into(), "".into(), key.clone()],
            vec![],
            "instance id",
        ),
        // Line breaks and absurd numbers.
        (
            with(&["--telegram-token", "123:abc", "--telegram-users", "1\r2"]),
            vec![],
            "telegram",
        ),
        (with(&["--openclaw-image", "img\nX=1"]), vec![], "image"),
        (with(&["--vm-vcpu", "99999999999999999999"]), vec![], "vCPU"),
        (with(&["--vm-mem-mib=-5"]), vec![], "memory"),
        (with(&["--disk-size", "99999999999T"]), vec![], "disk size"),
        (
            with(&["--allow-private-egress", "169.254.169.254/32"]),
            vec![],
            "not inside",
        ),
        (
            with(&["--allow-private-egress", "10.0.0.0/8,8.8.8.8"]),
            vec![],
            "not inside",
        ),
        (
            with(&["--allow-private-egress", "10.1.2.3/8"]),
            vec![],
            "host bits",
        ),
        // Nonsense in environment overrides.
        (with(&[]), vec![("VM_VCPU", "-1".into())], "VM_VCPU"),
        (with(&[]), vec![("SKILLS", "a b".into())], "SKILLS"),
        (
            with(&[]),
            vec![("STATE_ROOT", "relative/state".into())],
            "STATE_ROOT",
        ),
        (
            with(&[]),
            vec![("SSH_KEY_PATH", "key".into())],
            "SSH_KEY_PATH",
        ),
        (
            with(&[]),
            vec![("FIRECLAW_LOCK_WAIT", "forever".into())],
            "FIRECLAW_LOCK_WAIT",
        ),
        (with(&[]), vec![("BASE_PORT", "99999".into())], "BASE_PORT"),
        (kernel("vmlinuz"), vec![], "scripts/extract-vmlinux"),
        (kernel("arm64"), vec![], "AArch64"),
        (kernel("garbage"), vec![], "not an ELF file"),
        (kernel("no-blk"), vec![], "no built-in virtio-blk"),
        (
            kernel("debian"),
            vec![],
            "no built-in virtio-mmio, virtio-blk, virtio-net",
        ),
        (
            with(&[]),
            vec![("SUBNET_CIDR", "172.16.0.0/16".into())],
            "SUBNET_CIDR",
        ),
        (
            with(&[])
                .into_iter()
                .chain(["--base-rootfs".to_owned(), big_rootfs.clone()])
                .chain(["--disk-size".to_owned(), "4M".to_owned()])
                .collect(),
            vec![],
            "--disk-size 4M is smaller than the base rootfs",
        ),
        // Waits: a negative number is read as one (not as an unknown flag), zero is refused.
        (
            with(&["--ssh-timeout", "-1"]),
            vec![],
            "--ssh-timeout <SECS>: must be between 1 and 86400 seconds",
        ),
        (
            with(&["--ssh-timeout", "0"]),
            vec![],
            "--ssh-timeout <SECS>: must be between 1 and 86400 seconds",
        ),
        (
            with(&["--health-timeout", "soon"]),
            vec![],
            "--health-timeout <SECS>: must be a whole number of seconds",
        ),
        (
            vec![
                "logs".into(),
                "a".into(),
                "--since".into(),
                "1;reboot".into(),
            ],
            vec![],
            "--since <TIME>: must be a time journalctl reads",
        ),
        // Typos get clap's suggestion, still on one line.
        (
            vec!["stup".into()],
            vec![],
            "unrecognized subcommand 'stup'; did you mean 'setup'?",
        ),
        (
            with(&["--skip-browser"]),
            vec![],
            "did you mean '--skip-browser-install'?",
        ),
    ];
    // Every message, as a golden record: a refactor that changes any wording shows up here.
    let mut golden = String::new();
    for (args, extra_env, needle) in cases {
        let mut env: Vec<(&str, &str)> = vec![("STATE_ROOT", state_s), ("FC_ROOT", fc_s)];
        env.extend(extra_env.iter().map(|(k, v)| (*k, v.as_str())));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for dry_run in [false, true] {
            let mut args = args.clone();
            if dry_run && args[0] == "setup" {
                args.push("--dry-run");
            }
            let output = fireclaw(&args, &env);
            let err = stderr(&output);
            assert!(!output.status.success(), "{args:?} was accepted");
            assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
            assert!(err.starts_with("fireclaw: "), "{args:?}: {err}");
            assert!(!err.contains(SECRET_KEY), "{args:?} echoed the key");
            let out = stdout(&output);
            if dry_run && err == "fireclaw: setup would fail: the problems are listed at the top\n"
            {
                // A refusal of the base images is one of the dry run's listed problems.
                let listed = out.split("Notes:").next().unwrap_or_default();
                assert!(
                    listed.contains("Setup would fail:") && listed.contains(needle),
                    "{args:?}: {needle} is not among the problems: {out}"
                );
                assert!(!out.contains(SECRET_KEY), "{args:?} echoed the key");
                continue;
            }
            assert!(
                err.contains(needle),
                "{args:?}: {err} does not mention {needle}"
            );
            assert!(out.is_empty(), "{args:?} printed to stdout");
            let shown_args = args
                .join(" ")
                .replace(SECRET_KEY, "[KEY]")
                .replace(images_s, "[IMAGES]");
            let shown_env: Vec<String> =
                extra_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            golden.push_str(&format!(
                "{}$ fireclaw {}\n  exit {}: {}",
                if shown_env.is_empty() {
                    String::new()
                } else {
                    format!("{} ", shown_env.join(" "))
                },
                shown_args.escape_debug(),
                output.status.code().unwrap_or(-1),
                err.replace(state_s, "[STATE]")
                    .replace(fc_s, "[FC]")
                    .replace(images_s, "[IMAGES]")
            ));
        }
    }
    insta::assert_snapshot!(golden);
    assert!(
        tree(&state).is_empty(),
        "STATE_ROOT changed: {:?}",
        tree(&state)
    );
    assert!(tree(&fc).is_empty(), "FC_ROOT changed: {:?}", tree(&fc));
}

#[test]
fn usage_errors_exit_2_and_command_failures_exit_1() {
    assert_eq!(fireclaw(&["frobnicate"], &[]).status.code(), Some(2));
    let scratch = Scratch::new("codes");
    let state = scratch.join("state");
    let output = fireclaw(
        &["token", "nobody-here"],
        &[("STATE_ROOT", state.to_str().unwrap())],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no instance 'nobody-here'"));
    assert!(!state.exists(), "token created STATE_ROOT");
}

#[test]
fn token_prints_the_token_alone() {
    let scratch = Scratch::new("token");
    let dir = scratch.join("state/.vm-a");
    std::fs::create_dir_all(&dir).unwrap();
    let token = "ab".repeat(32);
    std::fs::write(dir.join(".token"), format!("{token}\n")).unwrap();
    let output = fireclaw(
        &["token", "a"],
        &[("STATE_ROOT", scratch.join("state").to_str().unwrap())],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{token}\n"));
}

#[test]
fn setup_without_firecracker_on_path_fails_and_creates_nothing() {
    let scratch = Scratch::new("notyet");
    let (state, fc) = (scratch.join("state"), scratch.join("fc"));
    let key = format!("--openai-api-key={SECRET_KEY}");
    let output = fireclaw(
        &["setup", "--instance", "a", &key],
        &[
            ("STATE_ROOT", state.to_str().unwrap()),
            ("FC_ROOT", fc.to_str().unwrap()),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    if is_root() {
        assert!(err.contains("firecracker is not on PATH"), "{err}");
    } else {
        assert!(err.contains("needs root"), "{err}");
    }
    assert!(!state.exists() && !fc.exists());
}

/// A copy of the binary that any user can run, wherever the build dir is.
fn world_runnable_binary(scratch: &Scratch) -> PathBuf {
    let dir = scratch.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fireclaw");
    std::fs::copy(BIN, &path).unwrap();
    for p in [scratch.0.path(), &dir, &path] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

/// Runs the dry run as an unprivileged user: as `nobody` through `setpriv` when the test runs as
/// root (as CI does), directly otherwise. Either way the process has no root.
fn dry_run_unprivileged(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary);
        c
    } else {
        Command::new(binary)
    };
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

#[test]
fn dry_run_as_a_user_prints_everything_redacted_and_marks_allocation_provisional() {
    let scratch = Scratch::new("dryrun");
    let binary = world_runnable_binary(&scratch);
    // A root-only STATE_ROOT that already holds an instance on .2 / 18891, as on a real host.
    let state = scratch.join("state");
    std::fs::create_dir_all(state.join(".vm-old")).unwrap();
    std::fs::write(
        state.join(".vm-old/.env"),
        "FIRECLAW_STATE_FORMAT=plain-v1\nINSTANCE_ID=old\nHOST_PORT=18891\nVM_IP=172.16.0.2\nVM_TAP=told2\n",
    )
    .unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let fc = scratch.join("fc");
    let env = [
        ("STATE_ROOT", state.to_str().unwrap()),
        ("FC_ROOT", fc.to_str().unwrap()),
        ("OPENAI_API_KEY", SECRET_KEY),
    ];
    let args = [
        "setup",
        "--instance",
        "my-bot",
        "--telegram-token",
        SECRET_TELEGRAM,
        "--telegram-users",
        "42",
        "--dry-run",
    ];
    let before = tree(scratch.0.path());
    let output = dry_run_unprivileged(&binary, &args, &env);
    let (out, err) = (stdout(&output), stderr(&output));
    // No base images here: the dry run predicts that, first, and exits 1 after the preview.
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines().last().unwrap_or_default(),
        "fireclaw: setup would fail: the problems are listed at the top",
        "{err}"
    );
    let problems = out.find("Setup would fail:").expect(&out);
    let missing = out.find("/vmlinux is missing").expect(&out);
    let notes = out.find("Notes:").expect(&out);
    let preview = out.find("Instance my-bot").expect(&out);
    assert!(
        problems < missing && missing < notes && notes < preview,
        "{out}"
    );
    assert!(
        !out[problems..notes].contains("SSH client key"),
        "a note among the problems: {out}"
    );
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("Verdict: setup would fail (")
            && last.ends_with("listed at the top). Next: fix them, then run this dry run again."),
        "{out}"
    );
    for secret in [SECRET_KEY, SECRET_TELEGRAM, "AAHcli-test-bot-secret"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed"
        );
    }
    assert!(out.contains("Dry run: nothing was created or changed."));
    assert!(out.contains("(provisional)"), "{out}");
    assert!(out.contains("The allocation is provisional"), "{out}");
    for path in [
        "/.vm-my-bot/.env (0600)",
        "/.vm-my-bot/.token (0600)",
        "/.vm-my-bot/provision.vars (0600)",
        "/.vm-my-bot/known_hosts (0600)",
        "/.vm-my-bot/fireclaw.json (0600)",
        "/my-bot/config/user-data (0600)",
        "/my-bot/config/meta-data",
        "/my-bot/config/network-config",
        "/my-bot/images/seed.img",
        "/my-bot/config/vm-config.json",
        "/my-bot/start-vm.sh (0700)",
        "/my-bot/stop-vm.sh (0700)",
        "/etc/systemd/system/firecracker-vmdemo-my-bot.service (0644)",
        "/etc/systemd/system/vmdemo-proxy-my-bot.service (0644)",
    ] {
        assert!(out.contains(path), "{path} missing from the preview");
    }
    assert!(out.contains("OPENAI_API_KEY=<redacted>"));
    assert!(out.contains("TELEGRAM_TOKEN=<redacted>"));
    assert!(out.contains("TELEGRAM_USERS=42"));
    assert!(
        !out.contains("BEGIN OPENSSH PRIVATE KEY-----\n    b3Blbn"),
        "private key body shown"
    );
    assert_eq!(
        tree(scratch.0.path()),
        before,
        "the dry run changed the disk"
    );
    assert!(!fc.exists());

    if is_root() {
        // With root, the same dry run sees the existing instance and gives final values.
        let output = fireclaw(&args, &env);
        let out = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(!out.contains("provisional"), "{out}");
        assert!(out.contains("VM IP       172.16.0.3"), "{out}");
        assert!(out.contains("host port   18892"), "{out}");
        assert_eq!(
            tree(scratch.0.path()),
            before,
            "the dry run changed the disk"
        );
    }
}

#[test]
fn dry_run_refuses_an_id_whose_files_exist() {
    let scratch = Scratch::new("exists");
    let fc = scratch.join("fc");
    std::fs::create_dir_all(fc.join("taken")).unwrap();
    let output = fireclaw(
        &["setup", "--instance", "taken", "--dry-run"],
        &[
            ("STATE_ROOT", scratch.join("state").to_str().unwrap()),
            ("FC_ROOT", fc.to_str().unwrap()),
            ("OPENAI_API_KEY", SECRET_KEY),
        ],
    );
    // Listed among the problems, with the rest of the preview; the exit says it would fail.
    assert_eq!(output.status.code(), Some(1));
    let out = stdout(&output);
    let problems = out.find("Setup would fail:").expect(&out);
    let taken = out
        .find("instance 'taken' already exists: VM asset dir")
        .expect(&out);
    assert!(problems < taken, "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap_or_default()
            .starts_with("Verdict: setup would fail ("),
        "{out}"
    );
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn keys_from_the_environment_and_020_env_defaults_are_used() {
    let scratch = Scratch::new("envdefaults");
    let output = fireclaw(
        &["setup", "--instance", "envbot", "--dry-run"],
        &[
            ("STATE_ROOT", scratch.join("state").to_str().unwrap()),
            ("FC_ROOT", scratch.join("fc").to_str().unwrap()),
            ("ANTHROPIC_API_KEY", SECRET_KEY),
            ("MODEL", "anthropic/claude-opus-4"),
            ("SKILLS", "github, tmux"),
            ("VM_VCPU", "2"),
            ("VM_MEM_MIB", "1024"),
            ("DISK_SIZE", "10G"),
            ("BASE_PORT", "20000"),
        ],
    );
    let out = stdout(&output);
    // No base images or firecracker here: a predicted failure, the preview printed whole.
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(out.contains("MODEL=anthropic/claude-opus-4"));
    assert!(out.contains("SKILLS=github,tmux"));
    assert!(
        out.contains("VM_VCPU=2")
            && out.contains("VM_MEM_MIB=1024")
            && out.contains("DISK_SIZE=10G")
    );
    assert!(out.contains("HOST_PORT=20001"));
    assert!(out.contains("ANTHROPIC_API_KEY=<redacted>") && !out.contains(SECRET_KEY));
}

#[test]
fn completions_and_man_page_cover_every_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = fireclaw(&["completions", shell], &[]);
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        for command in ["setup", "provision", "destroy", "telegram-users"] {
            assert!(
                script.contains(command),
                "{shell} completion lacks {command}"
            );
        }
    }
    assert!(!fireclaw(&["completions", "tcsh"], &[]).status.success());
    let page = stdout(&fireclaw(&["man"], &[]));
    assert!(page.contains(".TH fireclaw 1"), "{page}");
    assert!(page.contains("setup") && page.contains("destroy"));
    // Every page the main one names exists, with the verb's flags, examples, files and
    // environment.
    let setup = fireclaw(&["man", "setup"], &[]);
    assert!(setup.status.success(), "{}", stderr(&setup));
    let setup = stdout(&setup);
    for part in [
        ".TH fireclaw-setup 1",
        "\\-\\-telegram\\-token",
        "Examples:",
        ".SH FILES",
        ".SH ENVIRONMENT",
    ] {
        assert!(setup.contains(part), "{part}: {setup}");
    }
    let scratch = Scratch::new("man");
    let dir = scratch.join("share/man/man1");
    let written = fireclaw(&["man", "--dir", dir.to_str().unwrap()], &[]);
    assert!(written.status.success(), "{}", stderr(&written));
    for named in page
        .lines()
        .filter_map(|l| l.strip_prefix("fireclaw\\-"))
        .filter_map(|l| {
            l.split_once("(1)")
                .map(|(name, _)| name.replace("\\-", "-"))
        })
    {
        let file = dir.join(format!("fireclaw-{named}.1"));
        assert!(
            file.is_file(),
            "{} is named but not written",
            file.display()
        );
    }
    assert!(dir.join("fireclaw-image-fetch.1").is_file());
    let refused = fireclaw(&["man", "stup"], &[]);
    assert_eq!(refused.status.code(), Some(1));
}

#[test]
fn list_and_status_json_have_a_stable_schema_and_an_error_row_for_corrupt_state() {
    let scratch = Scratch::new("listjson");
    let state = scratch.join("state");
    for (id, env) in [
        (
            "good",
            "FIRECLAW_STATE_FORMAT=plain-v1\nINSTANCE_ID=good\nHOST_PORT=18891\nVM_IP=127.0.0.3\nVM_TAP=tgood2\nOPENAI_API_KEY=sk-never-shown\nGATEWAY_TOKEN=never-shown-token\n",
        ),
        ("bad", "this is not plain-v1\n"),
    ] {
        std::fs::create_dir_all(state.join(format!(".vm-{id}"))).unwrap();
        std::fs::write(state.join(format!(".vm-{id}/.env")), env).unwrap();
    }
    let env = [("STATE_ROOT", state.to_str().unwrap())];
    let output = fireclaw(&["list", "--json"], &env);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&output)).expect("stdout is only JSON");
    assert_eq!(json["schema"], 1);
    let rows = json["instances"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let bad = rows.iter().find(|r| r["id"] == "bad").unwrap();
    assert_eq!(bad["health"], "error");
    assert!(bad["error"].as_str().unwrap().contains("line 1"));
    let good = rows.iter().find(|r| r["id"] == "good").unwrap();
    for key in [
        "id",
        "ip",
        "port",
        "tap",
        "phase",
        "vm",
        "proxy",
        "health",
        "proxy_health",
        "gateway_health",
        "error",
    ] {
        assert!(good.get(key).is_some(), "{key} missing from the schema");
    }
    assert_eq!(good["ip"], "127.0.0.3");
    assert_eq!(good["port"], 18891);
    assert_eq!(good["health"], "down");
    assert!(
        stderr(&output).contains("warning: instance 'bad'"),
        "{}",
        stderr(&output)
    );
    let all = format!("{}{}", stdout(&output), stderr(&output));
    assert!(!all.contains("never-shown"), "a secret was printed");

    let table = fireclaw(&["list"], &env);
    let text = stdout(&table);
    assert!(text.starts_with("INSTANCE  "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("bad ") && l.contains("error")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("good ")), "{text}");
    assert!(!text.contains('\u{1b}'), "colour off a terminal");

    let status = fireclaw(&["status", "good", "--json"], &env);
    let json: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(json["id"], "good");
    assert_eq!(json["vm_unit"], "firecracker-vmdemo-good.service");
    assert!(json.get("guest_service").is_some());
    assert!(!fireclaw(&["status", "nope"], &env).status.success());
}

#[test]
fn doctor_reports_failures_with_a_nonzero_exit_and_json() {
    let scratch = Scratch::new("doctor");
    let env = [
        (
            "STATE_ROOT",
            scratch.join("state").to_str().unwrap().to_owned(),
        ),
        (
            "BASE_IMAGES_DIR",
            scratch.join("images").to_str().unwrap().to_owned(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = fireclaw(&["doctor", "--json"], &env);
    assert!(!output.status.success(), "missing base images must fail");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&output)).expect("stdout is only JSON");
    assert_eq!(json["ok"], false);
    let checks = json["checks"].as_array().unwrap();
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(find("base kernel")["status"], "fail");
    assert_eq!(find("base rootfs")["status"], "fail");
    // Every command the README lists under host requirements.
    for command in [
        "systemctl",
        "useradd",
        "userdel",
        "setpriv",
        "iptables",
        "iptables-restore",
        "socat",
        "ssh",
        "debugfs",
        "gpgv",
        "mkfs.ext4",
        "e2fsck",
        "zstd",
        "age",
    ] {
        find(&format!("command {command}"));
    }
    assert_eq!(find("command firecracker")["status"], "fail");
    let text = fireclaw(&["doctor"], &env);
    assert!(
        stdout(&text)
            .lines()
            .any(|l| l.starts_with("FAIL  base kernel"))
    );
    assert!(stderr(&text).contains("check(s) failed"));
}

#[test]
fn version_names_the_build_and_the_firecracker_found() {
    let bin = tempfile::tempdir().unwrap();
    let firecracker = bin.path().join("firecracker");
    std::fs::write(&firecracker, "#!/bin/sh\necho 'Firecracker v1.16.1'\n").unwrap();
    std::fs::set_permissions(
        &firecracker,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    // A bad setting in the environment does not stop it.
    let output = fireclaw(
        &["version", "--json"],
        &[("PATH", &path), ("BASE_PORT", "x")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let view: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(view["version"], env!("CARGO_PKG_VERSION"));
    // Built from this git checkout: its commit, abbreviated.
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.git")).exists() {
        let commit = view["commit"].as_str().unwrap_or_default();
        assert!(
            commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{view}"
        );
    }
    assert_eq!(view["firecracker"]["version"], "v1.16.1");
    assert_eq!(
        view["firecracker"]["path"],
        firecracker.to_str().unwrap(),
        "{view}"
    );
    let text = fireclaw(&["version"], &[("PATH", "/usr/bin:/bin")]);
    let text = stdout(&text);
    assert!(
        text.starts_with(&format!("fireclaw {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains("firecracker not found on PATH (see: fireclaw doctor)"),
        "{text}"
    );
}

#[test]
fn a_missing_instance_is_named_one_way_and_nothing_is_created_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_s = state.to_str().unwrap();
    let expected = format!(
        "fireclaw: no instance 'nosuch' ({state_s}/.vm-nosuch does not exist); list the instances with: fireclaw list\n"
    );
    for args in [
        vec!["start", "nosuch"],
        vec!["stop", "nosuch"],
        vec!["restart", "nosuch"],
        vec!["provision", "nosuch"],
        vec!["token", "nosuch"],
        vec!["status", "nosuch"],
        vec!["destroy", "nosuch", "-y"],
        vec!["logs", "nosuch", "--no-follow"],
        vec!["shell", "nosuch", "true"],
        vec!["adopt", "nosuch"],
    ] {
        let output = fireclaw(&args, &[("STATE_ROOT", state_s)]);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&output), expected, "{args:?}");
        assert!(!state.exists(), "{args:?} created {state_s}");
    }
}

#[test]
#[ignore = "needs root: sandbox"]
fn a_user_without_root_is_told_so_in_one_consistent_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join(".vm-a")).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let state_s = state.to_str().unwrap();
    // Every verb: "cannot see" never reads as "does not exist".
    for (args, verb) in [
        (vec!["list"], "list"),
        (vec!["status", "a"], "status"),
        (vec!["status"], "status"),
        (vec!["token", "a"], "token"),
        (vec!["logs", "a", "--no-follow"], "logs"),
        (vec!["shell", "a", "true"], "shell"),
        (vec!["start", "a"], "start"),
        (vec!["stop", "a"], "stop"),
        (vec!["restart", "a"], "restart"),
        (vec!["suspend", "a"], "suspend"),
        (vec!["suspend", "--all"], "suspend"),
        (vec!["resume", "a"], "resume"),
        (vec!["resume", "--all"], "resume"),
        (vec!["destroy", "a"], "destroy"),
        (vec!["destroy", "a", "-y"], "destroy"),
        (vec!["destroy", "a", "--force"], "destroy"),
        (vec!["provision", "a"], "provision"),
        (vec!["adopt", "a"], "adopt"),
        (vec!["egress", "show"], "egress show"),
        (vec!["egress", "apply"], "egress apply"),
        (vec!["host", "cleanup"], "host cleanup"),
        (
            vec!["setup", "--instance", "b", "--openai-api-key", "sk-x"],
            "setup",
        ),
    ] {
        let output = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("STATE_ROOT", state_s)
            .output()
            .unwrap();
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with(&format!("fireclaw: 'fireclaw {verb}' needs root: ")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn the_dry_run_preview_is_json_for_a_script_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let fc = dir.path().join("fc");
    let output = fireclaw(
        &[
            "setup",
            "--instance",
            "bot",
            "--dry-run",
            "--json",
            &format!("--openai-api-key={SECRET_KEY}"),
        ],
        &[
            ("STATE_ROOT", state.to_str().unwrap()),
            ("FC_ROOT", fc.to_str().unwrap()),
        ],
    );
    // No base images: a predicted failure, in the JSON too.
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("and in \"problems\""));
    let text = stdout(&output);
    assert!(!text.contains(SECRET_KEY), "the key is in the preview");
    let view: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["dry_run"], true);
    assert_eq!(view["id"], "bot");
    assert_eq!(view["ip"], "172.16.0.2");
    assert_eq!(view["tap"], "tbot2");
    assert!(view["port"].as_u64().is_some_and(|p| p > 18890), "{view}");
    let files = view["files"].as_array().unwrap();
    let vars = files
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("/provision.vars"))
        .unwrap();
    assert_eq!(vars["mode"], "0600");
    assert!(
        view["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("base kernel")),
        "{view}"
    );
    assert!(
        view["notes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| !w.as_str().unwrap().contains("base kernel")),
        "{view}"
    );
    assert!(
        !state.exists() && !fc.exists(),
        "the dry run wrote something"
    );
}

#[test]
fn doctor_as_a_user_marks_what_needs_root_and_shows_no_tool_error() {
    let scratch = Scratch::new("userdoctor");
    let binary = world_runnable_binary(&scratch);
    let state = scratch.join("state");
    std::fs::create_dir_all(state.join(".vm-a")).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let output = dry_run_unprivileged(
        &binary,
        &["doctor"],
        &[
            ("STATE_ROOT", state.to_str().unwrap()),
            ("BASE_IMAGES_DIR", scratch.join("images").to_str().unwrap()),
        ],
    );
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(
        out.starts_with("Not root: checks only root can make are marked skip"),
        "{out}"
    );
    for name in ["instances", "guest egress firewall", "FORWARD policy"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("skip  {name:<24} not checked (needs root)"))),
            "{name}: {out}"
        );
    }
    for raw in ["Permission denied", "you must be root", "needs root: "] {
        assert!(
            !out.contains(raw) && !err.contains(raw),
            "{raw}: {out}{err}"
        );
    }
    assert!(!out.contains("not read-write for this user"), "{out}");
}

#[test]
fn a_firecracker_the_vm_unit_cannot_run_is_refused_where_it_is_found() {
    // A scratch dir under /tmp: the VM unit's PrivateTmp= hides it.
    let scratch = Scratch::new("hiddenfc");
    assert!(scratch.0.path().starts_with("/tmp") || scratch.0.path().starts_with("/var/tmp"));
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["firecracker", "socat"] {
        std::fs::write(bin.join(tool), "#!/bin/sh\necho 'Firecracker v1.16.1'\n").unwrap();
        std::fs::set_permissions(bin.join(tool), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    let (state, fc) = (scratch.join("state"), scratch.join("fc"));
    let env = [
        ("PATH", path.as_str()),
        ("STATE_ROOT", state.to_str().unwrap()),
        ("FC_ROOT", fc.to_str().unwrap()),
    ];
    let hidden = format!(
        "the firecracker at {} cannot run in the VM unit",
        bin.join("firecracker").display()
    );
    let dry = fireclaw(
        &[
            "setup",
            "--instance",
            "a",
            "--openai-api-key",
            "k",
            "--dry-run",
        ],
        &env,
    );
    assert_eq!(dry.status.code(), Some(1), "{}", stderr(&dry));
    let out = stdout(&dry);
    let problems = &out[..out.find("Instance a").unwrap()];
    assert!(problems.contains(&hidden), "{out}");
    let doctor = fireclaw(&["doctor", "--json"], &env);
    let view: serde_json::Value = serde_json::from_str(&stdout(&doctor)).unwrap();
    let check = view["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "command firecracker")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["detail"].as_str().unwrap().starts_with(&hidden),
        "{check}"
    );
    assert!(!state.exists() && !fc.exists());
}

#[test]
fn a_relative_base_image_path_is_taken_from_the_working_directory() {
    let scratch = Scratch::new("relative");
    let output = Command::new(BIN)
        .current_dir(scratch.0.path())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("STATE_ROOT", scratch.join("state"))
        .env("FC_ROOT", scratch.join("fc"))
        .args([
            "setup",
            "--instance",
            "a",
            "--openai-api-key",
            "k",
            "--base-kernel",
            "kernels/../junk.bin",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let out = stdout(&output);
    let absolute = scratch.join("junk.bin");
    assert!(
        out.contains(&format!("base kernel {} is missing", absolute.display())),
        "{out}{}",
        stderr(&output)
    );
}
