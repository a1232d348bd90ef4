//! Golden outputs of the command line: help for every command, `setup --dry-run`, `list` and
//! `status` (table and JSON) over a fixed fleet, and the failures a person meets first. Each
//! case records the exit code, stdout and stderr exactly, with only the scratch directory's
//! path and the values that are random by design (the guest host key) replaced.
//! A refactor that changes any output shows up here as a snapshot diff; an intended change is
//! accepted with `cargo insta review` (or `INSTA_UPDATE=always`) and named in the commit.
//!
//! Every run starts from an empty environment, `PATH` pointing at an empty directory (so no
//! host tool found or missing changes the text) and a high `BASE_PORT`, so the output is the
//! same as root or as a user, on any machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[path = "support/kernel_fixture.rs"]
mod kernel_fixture;

const BIN: &str = env!("CARGO_BIN_EXE_fireclaw");

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fireclaw-golden-")
            .tempdir()
            .unwrap();
        for sub in ["state", "fc", "images", "bin", "home"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// A 0.2.0-style instance with loopback addresses (no probe leaves the machine).
    fn instance(&self, id: &str, env: &str) {
        let dir = Path::new(&self.path("state")).join(format!(".vm-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".env"), env).unwrap();
    }

    fn run(&self, args: &[&str], extra_env: &[(&str, &str)]) -> String {
        let mut command = Command::new(BIN);
        command
            .env_clear()
            .env("PATH", self.path("bin"))
            .env("STATE_ROOT", self.path("state"))
            .env("FC_ROOT", self.path("fc"))
            .env("BASE_IMAGES_DIR", self.path("images"))
            .env(
                "SSH_KEY_PATH",
                format!("{}/.ssh/vmdemo_vm", self.path("home")),
            )
            .env("BASE_PORT", "47310")
            .args(args);
        for (name, value) in extra_env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let text = format!(
            "$ fireclaw {}\nexit: {}\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        self.normalise(&text)
    }

    fn normalise(&self, text: &str) -> String {
        let scratch = self.dir.path().to_str().unwrap();
        let text = text
            .replace(scratch, "[SCRATCH]")
            .replace(BIN, "[FIRECLAW]");
        // The guest host key is random by design; every other value is fixed by the inputs.
        let marker = "AAAAC3NzaC1lZDI1NTE5";
        let mut rest = text.as_str();
        let mut out = String::new();
        while let Some(at) = rest.find(marker) {
            out.push_str(&rest[..at]);
            out.push_str("[HOST KEY]");
            rest = rest[at..].trim_start_matches(|c: char| {
                c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='
            });
        }
        out.push_str(rest);
        // The VMM account's id and whether `/dev/kvm` is ready depend on the host, not the inputs.
        out.lines()
            .filter(|line| {
                !((line.starts_with("warning: ") || line.starts_with("  - "))
                    && line.contains("/dev/kvm"))
            })
            .map(|line| {
                let trimmed = line.trim_start();
                if trimmed.starts_with("\"uuid\": \"") {
                    // Each instance's UUID is random by design.
                    let indent = &line[..line.len() - trimmed.len()];
                    let comma = if trimmed.ends_with(',') { "," } else { "" };
                    format!("{indent}\"uuid\": \"[UUID]\"{comma}\n")
                } else if trimmed.starts_with("\"uid\": 195") || trimmed.starts_with("\"gid\": 195")
                {
                    let indent = &line[..line.len() - trimmed.len()];
                    let (key, _) = trimmed.split_once(':').unwrap();
                    let comma = if trimmed.ends_with(',') { "," } else { "" };
                    format!("{indent}{key}: [VMM ID]{comma}\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect()
    }
}

const SUBCOMMANDS: [&str; 29] = [
    "doctor",
    "setup",
    "provision",
    "list",
    "status",
    "start",
    "stop",
    "restart",
    "suspend",
    "resume",
    "logs",
    "shell",
    "token",
    "destroy",
    "adopt",
    "export",
    "import",
    "resize",
    "apply",
    "egress",
    "egress show",
    "egress apply",
    "image",
    "image fetch",
    "image list",
    "host cleanup",
    "host facts",
    "completions",
    "man",
];

#[test]
fn help_of_every_command_is_unchanged() {
    let fixture = Fixture::new();
    let mut all = fixture.run(&["--help"], &[]);
    for command in SUBCOMMANDS {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        all.push_str(&fixture.run(&args, &[]));
    }
    insta::assert_snapshot!(all);
}

#[test]
fn dry_run_preview_is_unchanged() {
    let fixture = Fixture::new();
    let mut all = fixture.run(
        &[
            "setup",
            "--instance",
            "golden",
            "--openai-api-key",
            "sk-golden-secret",
            "--vm-mem-mib",
            "512",
            "--dry-run",
        ],
        &[],
    );
    all.push_str(&fixture.run(
        &[
            "setup",
            "--instance",
            "tg",
            "--model",
            "anthropic/claude-opus-4-6",
            "--telegram-token",
            "123456:AAHgolden",
            "--telegram-users",
            "5,6",
            "--skip-browser-install",
            "--allow-private-egress",
            "10.20.0.0/16",
            "--vm-mem-mib",
            "512",
            "--dry-run",
        ],
        &[("ANTHROPIC_API_KEY", "sk-ant-golden")],
    ));
    let printed: String = all
        .lines()
        .filter(|l| !l.starts_with("$ fireclaw"))
        .collect();
    assert!(!printed.contains("sk-golden-secret") && !printed.contains("AAHgolden"));
    insta::assert_snapshot!(all);
}

#[test]
fn fleet_views_are_unchanged() {
    let fixture = Fixture::new();
    fixture.instance(
        "good",
        "FIRECLAW_STATE_FORMAT=plain-v1\nINSTANCE_ID=good\nHOST_PORT=47311\nVM_IP=127.0.0.3\nVM_TAP=tgood2\nOPENAI_API_KEY=sk-never-shown\nGATEWAY_TOKEN=never-shown-token\n",
    );
    fixture.instance("bad", "this is not plain-v1\n");
    let mut all = String::new();
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["status"],
        &["status", "good"],
        &["status", "good", "--json"],
        &["status", "nope"],
    ] {
        all.push_str(&fixture.run(args, &[]));
    }
    assert!(!all.contains("never-shown"));
    insta::assert_snapshot!(all);
}

#[test]
fn egress_show_is_unchanged() {
    let fixture = Fixture::new();
    fixture.instance(
        "good",
        "FIRECLAW_STATE_FORMAT=plain-v1\nINSTANCE_ID=good\nHOST_PORT=47311\nVM_IP=127.0.0.3\nVM_TAP=tgood2\n",
    );
    std::fs::write(
        Path::new(&fixture.path("state")).join(".vm-good/fireclaw.json"),
        r#"{"format":1,"phase":"provisioned","created_by":"fireclaw 0.3.0","allow_private_egress":["10.20.0.0/16"]}"#,
    )
    .unwrap();
    std::fs::write(
        Path::new(&fixture.path("state")).join("private-egress.allow"),
        "# registry\n192.168.7.0/24\n",
    )
    .unwrap();
    let mut all = String::new();
    // As root, show reads this machine's firewall (read only), so iptables must be found.
    let path = [("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")];
    for args in [&["egress", "show"][..], &["egress", "show", "--json"]] {
        all.push_str(&fixture.run(args, &path));
    }
    // Whether the firewall matches depends on this machine (and on root); the rest does not.
    let all: String = all
        .lines()
        .map(|line| {
            if line.starts_with("Firewall: ") {
                "Firewall: [AS FOUND]".to_owned()
            } else if line.trim_start().starts_with("\"applied\": ") {
                "  \"applied\": [AS FOUND]".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(all);
}

#[test]
fn first_failures_are_unchanged() {
    let fixture = Fixture::new();
    fixture.instance(
        "good",
        "FIRECLAW_STATE_FORMAT=plain-v1\nINSTANCE_ID=good\nHOST_PORT=47311\nVM_IP=127.0.0.3\nVM_TAP=tgood2\n",
    );
    let mut all = String::new();
    for (args, env) in [
        (&["frobnicate"][..], &[][..]),
        (&["token", "nobody"], &[]),
        (&["start", "nobody"], &[]),
        (&["stop", "nobody"], &[]),
        (&["provision", "nobody"], &[]),
        (&["shell", "nobody"], &[]),
        (&["logs", "nobody"], &[]),
        (&["destroy", "nobody", "--force"], &[]),
        (&["destroy", "good"], &[]),
        (&["adopt", "nobody"], &[]),
        (&["suspend", "nobody"], &[]),
        (&["resume", "nobody"], &[]),
        (&["suspend"], &[]),
        (&["resume", "good", "--all"], &[]),
        (
            &["setup", "--instance", "x", "--openai-api-key", "k"],
            &[("FIRECLAW_LOCK_WAIT", "abc")],
        ),
        (&["man"], &[("FIRECLAW_LOCK_WAIT", "abc")]),
        (&["completions", "bash"], &[("BASE_PORT", "http")]),
        (&["list"], &[("STATE_ROOT", "relative")]),
    ] {
        let text = fixture.run(args, env);
        // The man page and completion script are long; their first lines say enough.
        let text: String = text.lines().take(12).collect::<Vec<_>>().join("\n") + "\n";
        all.push_str(&text);
    }
    // A vmlinuz dropped in as the base kernel: refused before setup writes anything.
    let images = Path::new(&fixture.path("images")).to_owned();
    std::fs::write(images.join("vmlinux"), kernel_fixture::bzimage()).unwrap();
    all.push_str(&fixture.run(
        &[
            "setup",
            "--instance",
            "x",
            "--openai-api-key",
            "k",
            "--dry-run",
        ],
        &[],
    ));
    all.push_str(&fixture.run(&["setup", "--instance", "x", "--openai-api-key", "k"], &[]));
    assert!(
        !Path::new(&fixture.path("state")).join(".vm-x").exists()
            && !Path::new(&fixture.path("fc")).join("x").exists()
            && !Path::new(&fixture.path("home")).join(".ssh").exists(),
        "setup wrote something"
    );
    insta::assert_snapshot!(all);
}

/// What a newcomer typed in the second round (issue 23) and what came back.
#[test]
fn newcomer_messages_are_unchanged() {
    let fixture = Fixture::new();
    // A state dir with nothing in it.
    std::fs::create_dir_all(Path::new(&fixture.path("state")).join(".vm-empty")).unwrap();
    let never_made = fixture.path("never-made/images");
    let mut all = String::new();
    for args in [
        &["setup", "my-bot"][..],
        &["help", "stup"],
        &["help", "image", "fech"],
        &["suspend"],
        &["resume"],
        &["logs", "x", "-n", "abc"],
        &["image", "fetch", "--bogus"],
        &["man", "stup"],
        &["status", "empty"],
        &[
            "setup",
            "--instance",
            "x",
            "--openai-api-key",
            "k",
            "--base-kernel",
            "/bin/ls",
            "--dry-run",
        ],
        &[
            "image",
            "fetch",
            "--kernel",
            "/nonexistent/nokernel",
            "--dir",
            &never_made,
        ],
    ] {
        all.push_str(&fixture.run(args, &[]));
    }
    // Through sudo with no key: keep the variable by name, never on the command line.
    all.push_str(&fixture.run(
        &["setup", "--instance", "x", "--dry-run"],
        &[("SUDO_USER", "alice")],
    ));
    // Offline: the host that cannot be reached, and the way without a network (loopback
    // only: nothing leaves the machine).
    let offline = fixture.path("offline/images");
    all.push_str(&fixture.run(
        &[
            "image",
            "fetch",
            "--dir",
            &offline,
            "--kernel",
            "http://127.0.0.1:1/vmlinux-6.1.141",
            "--rootfs",
            "http://127.0.0.1:1/root.tar.xz",
        ],
        &[],
    ));
    // An initrd that is none.
    all.push_str(&fixture.run(
        &[
            "image",
            "fetch",
            "--initrd",
            "/bin/ls",
            "--dir",
            &fixture.path("images"),
        ],
        &[],
    ));
    // A base rootfs no guest boots from (no init, cloud-init or sshd): the dry run's
    // problems and verdict.
    let empty_tree = fixture.path("empty-tree");
    std::fs::create_dir_all(&empty_tree).unwrap();
    let empty = fixture.path("images/empty.ext4");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", &empty_tree, &empty, "8M"])
        .status()
        .expect("mkfs.ext4 (e2fsprogs; the test command installs it)");
    assert!(made.success());
    let kernel = fixture.path("images/vmlinux-everything");
    std::fs::write(&kernel, kernel_fixture::vmlinux_with_everything()).unwrap();
    // debugfs reads the rootfs: the only tool on this run's PATH.
    let tools = fixture.path("debugfs-only");
    std::fs::create_dir_all(&tools).unwrap();
    let debugfs = ["/usr/sbin/debugfs", "/sbin/debugfs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("debugfs (e2fsprogs; the test command installs it)");
    std::os::unix::fs::symlink(debugfs, Path::new(&tools).join("debugfs")).unwrap();
    let dry = fixture.run(
        &[
            "setup",
            "--instance",
            "x",
            "--openai-api-key",
            "k",
            "--base-kernel",
            &kernel,
            "--base-rootfs",
            &empty,
            "--dry-run",
        ],
        &[("PATH", &tools)],
    );
    // The problems, the verdict and the error; the rest is the preview shown elsewhere.
    let mut in_problems = false;
    for line in dry.lines() {
        if line == "Setup would fail:" {
            in_problems = true;
        } else if line.is_empty() {
            in_problems = false;
        }
        if in_problems
            || line.starts_with("$ ")
            || line.starts_with("exit:")
            || line.starts_with("Verdict")
            || line.starts_with("fireclaw:")
        {
            all.push_str(&format!("{line}\n"));
        }
    }
    // A half-made instance, in the list and in its status.
    fixture.instance(
        "half",
        "FIRECLAW_STATE_FORMAT=plain-v1\nINSTANCE_ID=half\nHOST_PORT=47399\nVM_IP=127.0.0.2\nVM_TAP=th2\nVM_MAC=06:fc:00:10:00:02\nGATEWAY_TOKEN=t\nMODEL=openai/gpt-5.5\nSKILLS=github\nTELEGRAM_USERS=\nOPENCLAW_IMAGE=ghcr.io/openclaw/openclaw:latest\nVM_VCPU=1\nVM_MEM_MIB=512\nDISK_SIZE=4G\nAPI_SOCK=/nonexistent/half.socket\nSKIP_BROWSER_INSTALL=true\nOPENAI_API_KEY=k\n",
    );
    std::fs::write(
        Path::new(&fixture.path("state")).join(".vm-half/fireclaw.json"),
        r#"{"format":1,"phase":"allocated","created_by":"fireclaw 0.3.0"}"#,
    )
    .unwrap();
    all.push_str(&fixture.run(&["list"], &[]));
    all.push_str(&fixture.run(&["status", "half"], &[]));
    // `help --help` is the help of fireclaw itself; its first lines say enough.
    let help = fixture.run(&["help", "--help"], &[]);
    all.push_str(&(help.lines().take(6).collect::<Vec<_>>().join("\n") + "\n"));
    assert!(
        !Path::new(&fixture.path("never-made")).exists(),
        "a refused image fetch created its directory"
    );
    insta::assert_snapshot!(all);
}
